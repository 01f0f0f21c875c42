//! The `emulate` fuzz harness: builds a CPU state, an exit and a model machine from arbitrary
//! bytes, runs one `emulate_mmio` or `emulate_io`, and checks hvemu's contract on what it did.
//!
//! Shared by the libFuzzer target (`fuzz/fuzz_targets/emulate.rs`) and the corpus replay test
//! (`tests/fuzz_corpus.rs`), so it depends on `hvemu`, `arbitrary` and `std` only (no
//! libfuzzer-sys) and builds on stable. A violated invariant panics, which the fuzzer reports
//! as a crash and the replay test as a failure.
//!
//! # Invariants checked after every emulation
//!
//! * (a) hvemu does not panic (implicit).
//! * (b) on `Err(_)`, no `set_registers` call succeeded; the only `Err` that follows a
//!   `set_registers` call is `SetRegisters`, reporting that very (failed) call.
//! * (c) `set_registers` is called at most once, as the last callback; exactly once on `Ok`.
//!   It names each register once, and always RIP (except when it queues an injected
//!   exception: then it writes `PENDING_EVENT` only); RFLAGS differs from the exit's only in
//!   the status flags (CF, PF, AF, ZF, SF, OF) and RF, which is set exactly when RIP stays on
//!   the instruction (`Partial`), and then RIP is the exit's RIP.
//! * (d) every `memory` call is 1..=64 bytes and does not cross a 4 KiB page; every
//!   `compare_exchange` is 1, 2, 4, 8 or 16 bytes within one page.
//! * (e) outside real mode, every `memory` call's page is one that an earlier
//!   `translate_gva_page` in this emulation returned with a usable result code (or the exit's
//!   own GPA page, when the exit had `gva_valid` and the GPA and GVA share their page offset,
//!   which is the only case `src/access.rs` uses it). Writes and `compare_exchange` need a
//!   translation validated for write (or a write exit's own page). In real mode (CR0.PE = 0) there is no translation at
//!   all, and no `translate_gva_page` call may be made. Privilege-exempt translations (the
//!   processor's own accesses to the TSS) must serve only those accesses: the model answers
//!   them with an alias GPA ([`SYSTEM_ALIAS`] set), and at most 4 bytes may be read through
//!   such aliases (the two 2-byte TSS reads of the port permission check), never written. An
//!   instruction operand that reuses such a translation would skip the U/S (and SMAP) check.
//! * (f) the number of callbacks is bounded in the REP bound `N = max(max_rep_iterations, 1)`:
//!   see [`bound`] for the derivation (total ≤ 126 + 8·N, with a bound per kind).
//! * (g) every `io_port` access is 1, 2 or 4 bytes; for a port exit, of the exit's size and
//!   direction.
//!
//! And a few more that the code and docs promise:
//!
//! * `translate_gva_page` is asked for 4 KiB-aligned pages, with `SET_PAGE_TABLE_BITS` and
//!   either `VALIDATE_EXECUTE` alone or `VALIDATE_READ` and/or `VALIDATE_WRITE`.
//! * `get_registers` asks for each register at most once per emulation, never for CS (the exit
//!   carries it), and on a port exit never for RAX/RCX/RSI/RDI/DS/ES (the exit carries them).
//! * an `Err` that no callback caused (a fault, an undecodable or unsupported instruction, a
//!   bad translation answer), and an injected exception, come before any side effect: no
//!   memory write, no successful compare-exchange, no port access.
//! * a port exit for a non-string IN/OUT writes no memory.
//! * fetching: when the exit carries only part of the instruction and guest memory at CS:RIP
//!   holds all of it, a successful emulation has the same result and the same effects
//!   (commit, port accesses, memory writes, compare-exchanges) as the same exit carrying every
//!   byte (unless those bytes alone are not a whole instruction, or the exit is an execute
//!   exit whose GPA the page map contradicts: hvemu fetches through the exit's GPA).
//! * decode cache: the same exit emulated by a monitor that offers a [`DecodeCache`], empty
//!   and then warm from that first emulation, gives the same result and the same callbacks in
//!   the same order as without one.

#![allow(dead_code)]
// The main crate's MSRV (1.85) has no let chains, and the replay test compiles this file.
#![allow(clippy::collapsible_if)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use arbitrary::{Arbitrary, Unstructured};
use hvemu::{
    AccessDirection, Completion, Config, DecodeCache, EmulationError, Emulator, EmulatorCallbacks,
    ExecutionState, IoAccessInfo, IoPortAccessContext, IoPortAccessInfo, MemoryAccessContext,
    MemoryAccessFlags, MemoryAccessInfo, MemoryAccessType, RegisterFile, RegisterName,
    RegisterValue, Segment, SegmentAttributes, SegmentRegister, StringIoAccess, TableRegister,
    TranslateGvaFlags, TranslateGvaResult, Vendor, VpExitContext,
};

const PAGE: u64 = 0x1000;
/// The model answers privilege-exempt translations with this bit flipped in the GPA: an alias
/// of the same memory that tells the checker the access went through a system translation.
pub const SYSTEM_ALIAS: u64 = 1 << 52;
/// The most bytes hvemu reads through system translations in one emulation: the two 2-byte
/// reads of the TSS (I/O map base, then the bitmap bytes) of the port permission check.
const SYSTEM_BYTES: u64 = 4;
const PAGE_MASK: u64 = !(PAGE - 1);
const RFLAGS_RF: u64 = 1 << 16;
const RFLAGS_VM: u64 = 1 << 17;
const RFLAGS_TF: u64 = 1 << 8;
/// CF, PF, AF, ZF, SF, OF: what an arithmetic instruction may write.
const RFLAGS_STATUS: u64 = 0x8D5;
const CR0_PE: u64 = 1;
const CR0_AM: u64 = 1 << 18;
const CR0_PG: u64 = 1 << 31;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// The architecturally defined RFLAGS bits (CF, PF, AF, ZF, SF, TF, IF, DF, OF, IOPL, NT, RF,
/// VM, AC, VIF, VIP, ID).
const RFLAGS_DEFINED: u64 = 0x003F_7FD5;

// ---------------------------------------------------------------------------------------------
// The case: everything one emulation starts from.
// ---------------------------------------------------------------------------------------------

/// The processor mode the case aims for (the segment attributes may still say otherwise: hvemu
/// derives the mode from CR0.PE, EFER.LMA, CS.L and RFLAGS.VM, and so does the harness).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Arbitrary)]
pub enum CpuMode {
    Real,
    Virtual8086,
    Protected16,
    Protected32,
    Compatibility,
    Long64,
}

impl CpuMode {
    fn pe(self) -> bool {
        self != CpuMode::Real
    }

    fn lma(self) -> bool {
        matches!(self, CpuMode::Compatibility | CpuMode::Long64)
    }

    fn code_bits(self) -> u32 {
        match self {
            CpuMode::Real | CpuMode::Virtual8086 | CpuMode::Protected16 => 16,
            CpuMode::Protected32 | CpuMode::Compatibility => 32,
            CpuMode::Long64 => 64,
        }
    }
}

/// The mode hvemu will use, derived exactly as `State::new` derives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EffectiveMode {
    Real,
    Virtual8086,
    Protected,
    Long,
}

/// A callback kind, for failure injection and counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Arbitrary)]
pub enum CallKind {
    Get,
    Set,
    Memory,
    Io,
    Translate,
    CompareExchange,
}

/// How the model answers `compare_exchange`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Arbitrary)]
pub enum CompareExchange {
    /// `Ok(None)`, as the provided method does: hvemu falls back to `memory`.
    Unsupported,
    /// Atomically on the model's memory.
    Atomic,
    /// Atomically, but another agent changes the operand's first byte just before each of the
    /// first `n` calls, so they lose the race.
    Racy(u8),
}

/// The exit handed to the emulator.
#[derive(Clone, Debug)]
pub enum Exit {
    Mmio(MemoryAccessContext),
    Io(IoPortAccessContext),
}

/// One page of a sparse page map: linear page → GPA with a result code and permissions.
#[derive(Clone, Copy, Debug)]
pub struct PageEntry {
    pub linear: u64,
    pub gpa: u64,
    pub result: TranslateGvaResult,
    pub writable: bool,
    pub user: bool,
    pub executable: bool,
}

/// How `translate_gva_page` answers.
#[derive(Clone, Debug)]
pub enum PageMap {
    /// No page map: every page translates to itself, successfully (paging off).
    Off,
    /// Identity map with the same permissions on every page.
    Identity {
        writable: bool,
        user: bool,
        executable: bool,
    },
    /// Only the listed pages translate (first match wins); the others answer `missing` (with
    /// GPA 0, or the page itself for the result codes that carry a GPA).
    Sparse {
        entries: Vec<PageEntry>,
        missing: TranslateGvaResult,
    },
}

/// Everything one emulation starts from.
#[derive(Clone)]
pub struct Case {
    pub mode: CpuMode,
    pub config: Config,
    pub regs: RegisterFile,
    pub vp: VpExitContext,
    pub exit: Exit,
    pub pages: PageMap,
    /// Guest-physical bytes present before the emulation (code, TSS, data).
    pub memory: BTreeMap<u64, u8>,
    /// What reads of any other guest-physical byte return.
    pub fill: u8,
    /// What every IN returns (masked to the access size by hvemu).
    pub port_input: u32,
    /// Fail the n-th (0-based) call of this kind with an error.
    pub fail: Option<(CallKind, u8)>,
    /// Answer the n-th value of `get_registers` with a value of the wrong kind.
    pub bad_value: Option<u8>,
    /// The instruction bytes the case was built from (the exit carries the first
    /// `instruction_byte_count` of them).
    pub code: Vec<u8>,
    /// Whether guest memory at CS:RIP holds `code` (so fetching finds the same bytes).
    pub code_in_memory: bool,
    /// How `compare_exchange` answers.
    pub compare_exchange: CompareExchange,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (bytes, count) = match &self.exit {
            Exit::Mmio(m) => (m.instruction_bytes, m.instruction_byte_count),
            Exit::Io(io) => (io.instruction_bytes, io.instruction_byte_count),
        };
        let shown = &bytes[..usize::from(count).min(16)];
        writeln!(f, "Case {{")?;
        writeln!(
            f,
            "  mode: {:?} (hvemu sees {:?}), {:?}",
            self.mode,
            effective_mode(&self.vp),
            self.config
        )?;
        writeln!(
            f,
            "  exit bytes ({count}): {shown:02x?}; code {:02x?}{}",
            self.code,
            if self.code_in_memory {
                " (also at CS:RIP)"
            } else {
                ""
            }
        )?;
        writeln!(f, "  vp: {:x?}", self.vp)?;
        match &self.exit {
            Exit::Mmio(m) => writeln!(
                f,
                "  mmio exit: {:?}, gpa {:#x}, gva {:#x}",
                m.access_info, m.gpa, m.gva
            )?,
            Exit::Io(io) => writeln!(
                f,
                "  io exit: {:?}, port {:#x}, rax {:#x}, rcx {:#x}, rsi {:#x}, rdi {:#x}\n    ds {:x?}\n    es {:x?}",
                io.access_info, io.port_number, io.rax, io.rcx, io.rsi, io.rdi, io.ds, io.es
            )?,
        }
        writeln!(f, "  gpr: {:x?}", self.regs.gpr)?;
        for (seg, reg) in Segment::ALL.iter().zip(&self.regs.segments) {
            writeln!(f, "  {seg:?}: {reg:x?}")?;
        }
        writeln!(f, "  TR: {:x?}", self.regs.tr)?;
        writeln!(
            f,
            "  cr0 {:#x}, cr4 {:#x}, efer {:#x}",
            self.regs.cr[0], self.regs.cr[3], self.regs.efer
        )?;
        writeln!(f, "  pages: {:x?}", self.pages)?;
        writeln!(f, "  memory: {:?}", MemoryDump(&self.memory))?;
        writeln!(
            f,
            "  fill {:#x}, port_input {:#x}, fail {:?}, bad_value {:?}, compare_exchange {:?}",
            self.fill, self.port_input, self.fail, self.bad_value, self.compare_exchange
        )?;
        writeln!(
            f,
            "  xcr0 {:#x}, idtr {:x?}, k {:x?}, fp_control_status {:#x}",
            self.regs.xcr0, self.regs.idtr, self.regs.opmask, self.regs.fp_control_status
        )?;
        write!(f, "}}")
    }
}

/// Prints sparse memory as runs of consecutive bytes.
struct MemoryDump<'a>(&'a BTreeMap<u64, u8>);

impl fmt::Debug for MemoryDump<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
        for (&a, &b) in self.0 {
            match runs.last_mut() {
                Some((start, bytes)) if start.wrapping_add(bytes.len() as u64) == a => {
                    bytes.push(b)
                }
                _ => runs.push((a, vec![b])),
            }
        }
        let mut list = f.debug_list();
        for (start, bytes) in &runs {
            list.entry(&format_args!("{start:#x}: {bytes:02x?}"));
        }
        list.finish()
    }
}

pub fn effective_mode(vp: &VpExitContext) -> EffectiveMode {
    let exec = vp.execution_state;
    if !exec.cr0_pe {
        EffectiveMode::Real
    } else if exec.efer_lma && vp.cs.attributes.contains(SegmentAttributes::LONG) {
        EffectiveMode::Long
    } else if !exec.efer_lma && vp.rflags & RFLAGS_VM != 0 {
        EffectiveMode::Virtual8086
    } else {
        EffectiveMode::Protected
    }
}

fn effective_cpl(vp: &VpExitContext) -> u8 {
    match effective_mode(vp) {
        EffectiveMode::Real => 0,
        EffectiveMode::Virtual8086 => 3,
        _ => vp.execution_state.cpl & 3,
    }
}

/// True with probability 1/`n`, and false once the input is exhausted (so that short inputs,
/// which libFuzzer favours, take the common paths rather than the rare ones).
fn rarely(u: &mut Unstructured<'_>, n: u8) -> arbitrary::Result<bool> {
    Ok(!u.ratio(n - 1, n)?)
}

/// Up to `max` bytes from the input (fewer, never an error, when it runs out).
fn some_bytes(u: &mut Unstructured<'_>, max: usize) -> arbitrary::Result<Vec<u8>> {
    let n = u.int_in_range(0..=max)?.min(u.len());
    Ok(u.bytes(n)?.to_vec())
}

fn gpr_value(u: &mut Unstructured<'_>) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 => u64::from(u16::arbitrary(u)?),
        1 => u64::from(u32::arbitrary(u)?),
        2 => u64::arbitrary(u)?,
        // Near the end of a page, for operands that split.
        3 => {
            (u64::from(u32::arbitrary(u)?) & PAGE_MASK) | (PAGE - u64::from(u8::arbitrary(u)? % 16))
        }
        // Small counts, for REP.
        _ => u64::from(u8::arbitrary(u)? % 8),
    })
}

fn some_result(u: &mut Unstructured<'_>) -> arbitrary::Result<TranslateGvaResult> {
    Ok(TranslateGvaResult::from_u32(u.int_in_range(0..=8u32)?)
        .unwrap_or(TranslateGvaResult::Success))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SegRole {
    Code,
    Stack,
    Data,
}

fn segment(
    u: &mut Unstructured<'_>,
    mode: CpuMode,
    role: SegRole,
    cpl: u8,
    wide_base: bool,
) -> arbitrary::Result<SegmentRegister> {
    let selector = u16::arbitrary(u)?;
    let dpl = match role {
        SegRole::Code | SegRole::Stack => cpl,
        SegRole::Data => u.int_in_range(0..=3u8)?,
    };
    let dpl_bits = u16::from(dpl) << 5;
    let (code, data) = match mode {
        CpuMode::Real => (0x9B, 0x93),
        CpuMode::Virtual8086 => (0xFB, 0xF3),
        CpuMode::Protected16 => (0x9B | dpl_bits, 0x93 | dpl_bits),
        CpuMode::Protected32 => (0xC09B | dpl_bits, 0xC093 | dpl_bits),
        CpuMode::Compatibility => (
            if bool::arbitrary(u)? { 0xC09B } else { 0x009B } | dpl_bits,
            0xC093 | dpl_bits,
        ),
        CpuMode::Long64 => (0xA09B | dpl_bits, 0xC093 | dpl_bits),
    };
    let attributes = if role == SegRole::Code { code } else { data };
    let typical = match mode {
        CpuMode::Real | CpuMode::Virtual8086 => SegmentRegister {
            attributes: SegmentAttributes::from_bits_retain(attributes),
            ..SegmentRegister::real_mode(selector)
        },
        CpuMode::Protected16 => SegmentRegister {
            base: u64::from(u16::arbitrary(u)?) << 4,
            limit: 0xFFFF,
            selector,
            attributes: SegmentAttributes::from_bits_retain(attributes),
        },
        _ => SegmentRegister::flat(selector, attributes),
    };
    Ok(match u.int_in_range(0..=7u8)? {
        0..=3 => typical,
        4 if wide_base => SegmentRegister {
            base: u64::arbitrary(u)?,
            ..typical
        },
        // "Big real mode" and its kin: the typical segment with a 4 GiB limit.
        4 => SegmentRegister {
            limit: u32::MAX,
            ..typical
        },
        5 => SegmentRegister {
            base: u64::from(u32::arbitrary(u)?),
            limit: u32::arbitrary(u)?,
            ..typical
        },
        6 => SegmentRegister {
            base: u64::arbitrary(u)?,
            limit: u32::arbitrary(u)?,
            selector,
            attributes: SegmentAttributes::from_bits_retain(u16::arbitrary(u)?),
        },
        // A null (unusable) selector.
        _ => SegmentRegister::default(),
    })
}

/// Linear addresses worth mapping or pointing at: where the code, the operands and the TSS are.
fn interesting_linears(regs: &RegisterFile, vp: &VpExitContext, exit: &Exit) -> Vec<u64> {
    let ds = regs.segment(Segment::Ds).base;
    let es = regs.segment(Segment::Es).base;
    let (rsi, rdi, port) = match exit {
        Exit::Io(io) => (io.rsi, io.rdi, io.port_number),
        Exit::Mmio(_) => (regs.gpr(6), regs.gpr(7), regs.gpr(2) as u16),
    };
    let mut v = vec![
        code_base(vp).wrapping_add(vp.rip),
        code_base(vp).wrapping_add(vp.rip).wrapping_add(15),
        ds.wrapping_add(rsi),
        es.wrapping_add(rdi),
        regs.segment(Segment::Ss).base.wrapping_add(regs.gpr(4)),
        regs.segment(Segment::Ss)
            .base
            .wrapping_add(regs.gpr(4))
            .wrapping_sub(8),
        regs.tr.base,
        regs.tr.base.wrapping_add(0x66),
        regs.tr.base.wrapping_add(0x68 + u64::from(port / 8)),
    ];
    if let Exit::Mmio(m) = exit {
        v.push(m.gva);
    }
    for n in 0..16 {
        v.push(ds.wrapping_add(regs.gpr(n)));
    }
    v
}

fn pick_linear(
    u: &mut Unstructured<'_>,
    interesting: &[u64],
    long: bool,
) -> arbitrary::Result<u64> {
    let linear = if rarely(u, 8)? || interesting.is_empty() {
        u64::arbitrary(u)?
    } else {
        let i = u.choose_index(interesting.len())?;
        let page_delta = i64::from(u.int_in_range(-1..=1i8)?) * PAGE as i64;
        interesting[i].wrapping_add(page_delta as u64)
    };
    Ok(if long { linear } else { linear & 0xFFFF_FFFF })
}

impl Case {
    /// Builds a case from fuzz input. Never fails for lack of data (missing bytes read as 0).
    pub fn build(u: &mut Unstructured<'_>) -> arbitrary::Result<Case> {
        let mode = CpuMode::arbitrary(u)?;
        let vendor = if bool::arbitrary(u)? {
            Vendor::Amd
        } else {
            Vendor::Intel
        };
        let max_rep = u32::from(u.int_in_range(0..=16u8)?);
        let config = Config::default()
            .with_vendor(vendor)
            .with_max_rep_iterations(max_rep);

        // The instruction: the bytes in the exit, and what guest memory holds at RIP.
        let code = some_bytes(u, 16)?;
        let count = if u.ratio(3, 4)? {
            code.len() as u8
        } else {
            u.int_in_range(0..=17u8)?
        };
        let mut instruction_bytes = [0u8; 16];
        instruction_bytes[..code.len()].copy_from_slice(&code);
        let choice = u.int_in_range(0..=3u8)?;
        let memory_code = match choice {
            0..=1 => Some(code.clone()),
            2 => Some(some_bytes(u, 16)?),
            _ => None,
        };
        let instruction_length = if u.ratio(15, 16)? {
            (code.len() as u8).clamp(1, 15)
        } else {
            u.int_in_range(0..=16u8)?
        };

        let cpl = match mode {
            CpuMode::Real => 0,
            CpuMode::Virtual8086 => 3,
            _ => u.int_in_range(0..=3u8)?,
        };
        let mut rflags = if rarely(u, 16)? {
            u64::arbitrary(u)?
        } else {
            let mut f = (u64::from(u32::arbitrary(u)?) & RFLAGS_DEFINED) | 2;
            f &= !RFLAGS_VM;
            if mode == CpuMode::Virtual8086 {
                f |= RFLAGS_VM;
            }
            f
        };
        if mode == CpuMode::Virtual8086 {
            rflags |= RFLAGS_VM;
        }

        let mut regs = RegisterFile::real_mode();
        regs.rflags = rflags;
        for n in 0..16 {
            regs.gpr[n] = gpr_value(u)?;
        }
        let long = mode == CpuMode::Long64;
        let roles = [
            SegRole::Data,
            SegRole::Code,
            SegRole::Stack,
            SegRole::Data,
            SegRole::Data,
            SegRole::Data,
        ];
        for (i, role) in roles.into_iter().enumerate() {
            let wide = long && i >= Segment::Fs as usize;
            regs.segments[i] = segment(u, mode, role, cpl, wide)?;
        }
        regs.tr = if u.ratio(7, 8)? {
            SegmentRegister {
                base: if long {
                    gpr_value(u)?
                } else {
                    gpr_value(u)? & 0xFFFF_FFFF
                },
                limit: 0x67 + u32::from(u16::arbitrary(u)? % 0x2100),
                selector: 0x28,
                attributes: SegmentAttributes::from_bits_retain(if bool::arbitrary(u)? {
                    0x8B
                } else {
                    0x89
                }),
            }
        } else {
            SegmentRegister {
                base: u64::arbitrary(u)?,
                limit: u32::arbitrary(u)?,
                selector: u16::arbitrary(u)?,
                attributes: SegmentAttributes::from_bits_retain(u16::arbitrary(u)?),
            }
        };
        regs.gdtr = TableRegister {
            base: 0x1000,
            limit: 0xFFFF,
        };
        regs.cr[0] = 0x10
            | if mode.pe() { CR0_PE } else { 0 }
            | if bool::arbitrary(u)? { CR0_AM } else { 0 }
            | if mode.lma() || (mode.pe() && bool::arbitrary(u)?) {
                CR0_PG
            } else {
                0
            };
        regs.cr[3] = (1 << 5)
            | if long && bool::arbitrary(u)? {
                1 << 12
            } else {
                0
            };
        regs.efer = if mode.lma() {
            EFER_LMA | EFER_LME | (1 << 11)
        } else {
            0
        };
        regs.rip = match mode.code_bits() {
            16 => u64::from(u16::arbitrary(u)?),
            32 => u64::from(u32::arbitrary(u)?),
            _ => gpr_value(u)?,
        };
        if rarely(u, 4)? {
            // Close to the end of a page, so the fetch may split.
            regs.rip = (regs.rip & PAGE_MASK) | (0x1000 - u64::from(u8::arbitrary(u)? % 16));
            if mode.code_bits() == 16 {
                regs.rip &= 0xFFFF;
            }
        }

        let vp = VpExitContext {
            execution_state: ExecutionState {
                cpl: if rarely(u, 64)? {
                    u8::arbitrary(u)?
                } else {
                    cpl
                },
                cr0_pe: mode.pe(),
                cr0_am: regs.cr[0] & CR0_AM != 0,
                efer_lma: mode.lma(),
                debug_active: bool::arbitrary(u)?,
                interruption_pending: rarely(u, 64)?,
                interrupt_shadow: bool::arbitrary(u)?,
            },
            instruction_length,
            cr8: u8::arbitrary(u)? & 0xF,
            cs: regs.segment(Segment::Cs),
            rip: regs.rip,
            rflags: regs.rflags,
        };

        let is_io = rarely(u, 3)?;
        let mut exit = if is_io {
            let access_size = if u.ratio(15, 16)? {
                *u.choose(&[1u8, 2, 4])?
            } else {
                u8::arbitrary(u)?
            };
            let access_info = IoPortAccessInfo {
                is_write: bool::arbitrary(u)?,
                access_size,
                string_op: bool::arbitrary(u)?,
                rep_prefix: bool::arbitrary(u)?,
            };
            let mut io = IoPortAccessContext {
                instruction_byte_count: count,
                instruction_bytes,
                access_info,
                port_number: if bool::arbitrary(u)? {
                    regs.gpr(2) as u16
                } else {
                    u16::arbitrary(u)?
                },
                rax: regs.gpr(0),
                rcx: regs.gpr(1),
                rsi: regs.gpr(6),
                rdi: regs.gpr(7),
                ds: regs.segment(Segment::Ds),
                es: regs.segment(Segment::Es),
            };
            if rarely(u, 8)? {
                // The exit's registers disagree with the register file.
                io.rax = gpr_value(u)?;
                io.rcx = gpr_value(u)?;
                io.rsi = gpr_value(u)?;
                io.rdi = gpr_value(u)?;
                io.ds = segment(u, mode, SegRole::Data, cpl, false)?;
                io.es = segment(u, mode, SegRole::Data, cpl, false)?;
            }
            Exit::Io(io)
        } else {
            let access_type = match u.int_in_range(0..=2u8)? {
                0 => MemoryAccessType::Read,
                1 => MemoryAccessType::Write,
                _ => MemoryAccessType::Execute,
            };
            Exit::Mmio(MemoryAccessContext {
                instruction_byte_count: count,
                instruction_bytes,
                access_info: MemoryAccessFlags {
                    access_type,
                    gpa_unmapped: bool::arbitrary(u)?,
                    gva_valid: bool::arbitrary(u)?,
                },
                gpa: 0,
                gva: 0,
            })
        };

        // The GVA of a memory exit points at something interesting; its GPA is chosen once the
        // page map is known.
        let interesting = interesting_linears(&regs, &vp, &exit);
        if let Exit::Mmio(m) = &mut exit {
            let base = pick_linear(u, &interesting, long)?;
            let displacement = i64::from(i8::arbitrary(u)?) as u64;
            m.gva = if u.ratio(3, 4)? {
                base.wrapping_add(displacement)
            } else {
                base
            };
            if !long {
                m.gva &= 0xFFFF_FFFF;
            }
        }
        let interesting = interesting_linears(&regs, &vp, &exit);

        let pages = match u.int_in_range(0..=3u8)? {
            0 => PageMap::Off,
            1 => PageMap::Identity {
                writable: u.ratio(3, 4)?,
                user: u.ratio(3, 4)?,
                executable: u.ratio(3, 4)?,
            },
            _ => {
                let n = u.int_in_range(0..=6u8)?;
                let mut entries = Vec::new();
                for _ in 0..n {
                    let linear = pick_linear(u, &interesting, long)? & PAGE_MASK;
                    let gpa = match u.int_in_range(0..=5u8)? {
                        0..=1 => linear,
                        2..=3 => u64::from(u32::arbitrary(u)?) & PAGE_MASK,
                        4 => u64::arbitrary(u)? & PAGE_MASK,
                        _ => u64::arbitrary(u)?,
                    };
                    let result = if u.ratio(3, 4)? {
                        TranslateGvaResult::Success
                    } else {
                        some_result(u)?
                    };
                    entries.push(PageEntry {
                        linear,
                        gpa,
                        result,
                        writable: u.ratio(3, 4)?,
                        user: u.ratio(3, 4)?,
                        executable: u.ratio(3, 4)?,
                    });
                }
                let missing = if bool::arbitrary(u)? {
                    TranslateGvaResult::PageNotPresent
                } else {
                    some_result(u)?
                };
                PageMap::Sparse { entries, missing }
            }
        };

        let mut case = Case {
            mode,
            config,
            regs,
            vp,
            exit,
            pages,
            memory: BTreeMap::new(),
            fill: u8::arbitrary(u)?,
            port_input: u32::arbitrary(u)?,
            fail: None,
            bad_value: None,
            code: code.clone(),
            code_in_memory: choice <= 1,
            compare_exchange: CompareExchange::Unsupported,
        };

        if let Exit::Mmio(m) = &case.exit {
            let gva = m.gva;
            let gpa = match u.int_in_range(0..=3u8)? {
                0 => case.linear_to_gpa(gva).unwrap_or(gva),
                1 => gva,
                2 => (u64::from(u32::arbitrary(u)?) & PAGE_MASK) | (gva & !PAGE_MASK),
                _ => u64::arbitrary(u)?,
            };
            if let Exit::Mmio(m) = &mut case.exit {
                m.gpa = gpa;
            }
        }

        // Guest memory: the TSS's I/O map base and bitmap, a few blobs at interesting places,
        // and the code at CS:RIP (last, so that it is intact; byte by byte, through the page
        // map).
        if u.ratio(3, 4)? {
            let map_base = if u.ratio(3, 4)? {
                0x68
            } else {
                u16::arbitrary(u)?
            };
            let tr = case.regs.tr.base;
            case.put(tr.wrapping_add(0x66), &map_base.to_le_bytes());
            let port = match &case.exit {
                Exit::Io(io) => io.port_number,
                Exit::Mmio(_) => case.regs.gpr(2) as u16,
            };
            let bitmap = some_bytes(u, 4)?;
            case.put(
                tr.wrapping_add(u64::from(map_base))
                    .wrapping_add(u64::from(port / 8)),
                &bitmap,
            );
        }
        for _ in 0..u.int_in_range(0..=3u8)? {
            let at = pick_linear(u, &interesting, long)?;
            let at = at.wrapping_add(i64::from(i8::arbitrary(u)?) as u64);
            let bytes = some_bytes(u, 24)?;
            case.put(at, &bytes);
        }
        if let Some(bytes) = memory_code {
            // As the processor fetches: CS.base + EIP + i, the offset not wrapped at 64 KiB
            // within an instruction (IP wraps only between instructions; an instruction
            // that crosses the CS limit is a #GP).
            // (RIP itself is taken at the code segment's width, as hvemu takes it.)
            let start = mask_ip(effective_code_bits(&case.vp), case.vp.rip);
            for (i, b) in bytes.iter().enumerate() {
                let offset = start.wrapping_add(i as u64);
                let linear = case.wrap_linear(code_base(&case.vp).wrapping_add(offset));
                case.put(linear, &[*b]);
            }
        }

        if rarely(u, 8)? {
            case.fail = Some((CallKind::arbitrary(u)?, u8::arbitrary(u)? % 8));
        }
        if rarely(u, 32)? {
            case.bad_value = Some(u8::arbitrary(u)? % 8);
        }

        // Read last, so that the layout of everything above stays stable: exception
        // injection, compare-exchange, and the state that vector, x87 and fault delivery read.
        case.config = case.config.with_exception_injection(bool::arbitrary(u)?);
        case.compare_exchange = CompareExchange::arbitrary(u)?;
        let regs = &mut case.regs;
        regs.xcr0 = match u.int_in_range(0..=3u8)? {
            0 => 7,
            1 => 0xE7,
            2 => 1,
            _ => u64::arbitrary(u)?,
        };
        let cr4 = u8::arbitrary(u)?;
        // OSFXSR, OSXMMEXCPT and OSXSAVE unless cleared; SMEP, SMAP when set.
        for (bit, cr4_bit, set_when) in [
            (0, 9, false),
            (1, 10, false),
            (2, 18, false),
            (3, 20, true),
            (4, 21, true),
        ] {
            if (cr4 >> bit) & 1 == u8::from(set_when) {
                regs.cr[3] |= 1 << cr4_bit;
            }
        }
        // CR0.MP, EM, TS, NE, WP.
        let cr0 = u8::arbitrary(u)?;
        for (bit, cr0_bit) in [(0, 1), (1, 2), (2, 3), (3, 5), (4, 16)] {
            if (cr0 >> bit) & 1 != 0 {
                regs.cr[0] |= 1 << cr0_bit;
            }
        }
        regs.idtr = TableRegister {
            base: u64::from(u32::arbitrary(u)?),
            limit: match u.int_in_range(0..=2u8)? {
                0 => 0xFFF,
                1 => 0x3FF,
                _ => u16::arbitrary(u)?,
            },
        };
        let seed = u64::arbitrary(u)?;
        for i in 0..16u64 {
            let lane = u128::from(seed.wrapping_mul(i + 1));
            regs.xmm[i as usize] = lane | lane << 64;
            regs.ymm_hi128[i as usize] = !lane;
        }
        for k in regs.opmask.iter_mut() {
            *k = gpr_value(u)?;
        }
        regs.fp_control_status = u128::from(u64::arbitrary(u)?);
        regs.xmm_control_status = u128::from(0x1F80u32 | (u32::arbitrary(u)? & 0x3F)) << 32;
        Ok(case)
    }

    fn wrap_linear(&self, linear: u64) -> u64 {
        if effective_mode(&self.vp) == EffectiveMode::Long {
            linear
        } else {
            linear & 0xFFFF_FFFF
        }
    }

    /// The GPA the page map gives `linear`, ignoring permissions (for placing memory).
    pub fn linear_to_gpa(&self, linear: u64) -> Option<u64> {
        if effective_mode(&self.vp) == EffectiveMode::Real {
            return Some(linear);
        }
        match &self.pages {
            PageMap::Off | PageMap::Identity { .. } => Some(linear),
            PageMap::Sparse { entries, .. } => entries
                .iter()
                .find(|e| e.linear == linear & PAGE_MASK)
                .filter(|e| usable(e.result) && e.gpa & !PAGE_MASK == 0)
                .map(|e| e.gpa | (linear & !PAGE_MASK)),
        }
    }

    /// The page map's answer to a walk of `gva_page` for `flags`, as the translation callback
    /// gives it (before the system alias).
    fn walk_page(&self, gva_page: u64, flags: TranslateGvaFlags) -> (TranslateGvaResult, u64) {
        let user =
            effective_cpl(&self.vp) == 3 && !flags.contains(TranslateGvaFlags::PRIVILEGE_EXEMPT);
        let denied = |w: bool, us: bool, x: bool| {
            (flags.contains(TranslateGvaFlags::VALIDATE_WRITE) && !w)
                || (flags.contains(TranslateGvaFlags::VALIDATE_EXECUTE) && !x)
                || (user && !us)
        };
        match &self.pages {
            PageMap::Off => (TranslateGvaResult::Success, gva_page),
            PageMap::Identity {
                writable,
                user: us,
                executable,
            } => {
                if denied(*writable, *us, *executable) {
                    (TranslateGvaResult::PrivilegeViolation, 0)
                } else {
                    (TranslateGvaResult::Success, gva_page)
                }
            }
            PageMap::Sparse { entries, missing } => {
                match entries.iter().find(|e| e.linear == gva_page) {
                    Some(e) if e.result == TranslateGvaResult::Success => {
                        if denied(e.writable, e.user, e.executable) {
                            (TranslateGvaResult::PrivilegeViolation, 0)
                        } else {
                            (TranslateGvaResult::Success, e.gpa)
                        }
                    }
                    Some(e) => (e.result, e.gpa),
                    None if usable(*missing) => (*missing, gva_page),
                    None => (*missing, 0),
                }
            }
        }
    }

    /// Writes `bytes` at `linear` (byte by byte through the page map; unmapped bytes go to the
    /// identity GPA).
    fn put(&mut self, linear: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let l = self.wrap_linear(linear.wrapping_add(i as u64));
            let gpa = self.linear_to_gpa(l).unwrap_or(l);
            self.memory.insert(gpa & !SYSTEM_ALIAS, *b);
        }
    }

    /// The REP bound as hvemu applies it (0 means 1).
    pub fn rep_bound(&self) -> u64 {
        u64::from(self.config.max_rep_iterations.max(1))
    }
}

/// The base the processor adds to RIP: CS.base, except in 64-bit mode (0).
fn code_base(vp: &VpExitContext) -> u64 {
    if effective_mode(vp) == EffectiveMode::Long {
        0
    } else {
        vp.cs.base
    }
}

fn effective_code_bits(vp: &VpExitContext) -> u32 {
    let big = vp.cs.attributes.contains(SegmentAttributes::DEFAULT_BIG);
    match effective_mode(vp) {
        EffectiveMode::Long => 64,
        EffectiveMode::Virtual8086 => 16,
        _ if big => 32,
        _ => 16,
    }
}

fn mask_ip(bits: u32, ip: u64) -> u64 {
    match bits {
        16 => ip & 0xFFFF,
        32 => ip & 0xFFFF_FFFF,
        _ => ip,
    }
}

impl<'a> Arbitrary<'a> for Case {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Case::build(u)
    }
}

/// Whether hvemu goes on with a translation answered with `result` (a walk that succeeded).
fn usable(result: TranslateGvaResult) -> bool {
    !matches!(
        result,
        TranslateGvaResult::PageNotPresent
            | TranslateGvaResult::PrivilegeViolation
            | TranslateGvaResult::InvalidPageTableFlags
            | TranslateGvaResult::Intercept
    )
}

// ---------------------------------------------------------------------------------------------
// The model machine: answers every callback from the case and records it.
// ---------------------------------------------------------------------------------------------

/// One callback as the model saw it; `ok` is false when the model failed it on purpose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Get {
        names: Vec<RegisterName>,
        ok: bool,
    },
    Set {
        names: Vec<RegisterName>,
        values: Vec<RegisterValue>,
        ok: bool,
    },
    Memory {
        gpa: u64,
        len: usize,
        write: bool,
        ok: bool,
        /// The bytes written (empty for reads).
        data: Vec<u8>,
    },
    Io {
        port: u16,
        size: u8,
        write: bool,
        ok: bool,
        /// The value written (0 for reads).
        data: u32,
    },
    Translate {
        gva_page: u64,
        flags: TranslateGvaFlags,
        /// `None` when the model failed the call.
        answer: Option<(TranslateGvaResult, u64)>,
    },
    CompareExchange {
        gpa: u64,
        len: usize,
        ok: bool,
        /// The bytes offered as the new value.
        new: Vec<u8>,
        /// What the model answered (`Some(true)`: swapped, memory written).
        answer: Option<bool>,
    },
    /// A bulk offer the model took (`copy_memory`: `src` is `Some`; `fill_memory`;
    /// `io_port_string`: `port` is `Some`): `len` bytes from the lowest GPA `dst`. Failure
    /// injection counts it as a `memory` (copy, fill) or `io_port` (string I/O) call.
    Bulk {
        dst: u64,
        src: Option<u64>,
        port: Option<(u16, u8, bool)>,
        len: u64,
        ok: bool,
    },
}

impl Call {
    fn kind(&self) -> CallKind {
        match self {
            Call::Get { .. } => CallKind::Get,
            Call::Set { .. } => CallKind::Set,
            Call::Memory { .. } => CallKind::Memory,
            Call::Io { .. } => CallKind::Io,
            Call::Translate { .. } => CallKind::Translate,
            Call::CompareExchange { .. } => CallKind::CompareExchange,
            Call::Bulk { port: None, .. } => CallKind::Memory,
            Call::Bulk { port: Some(_), .. } => CallKind::Io,
        }
    }
}

/// The machine the callbacks reach.
pub struct Model<'c> {
    case: &'c Case,
    pub regs: RegisterFile,
    pub memory: BTreeMap<u64, u8>,
    pub calls: Vec<Call>,
    counts: [u8; 6],
    races: u8,
    /// The decode cache the monitor offers, if any.
    pub decoded: Option<DecodeCache>,
}

impl<'c> Model<'c> {
    pub fn new(case: &'c Case) -> Self {
        Model {
            case,
            regs: case.regs.clone(),
            memory: case.memory.clone(),
            calls: Vec::new(),
            counts: [0; 6],
            races: 0,
            decoded: None,
        }
    }

    /// Whether this call of `kind` is the one to fail.
    fn should_fail(&mut self, kind: CallKind) -> bool {
        let i = kind as usize;
        let n = self.counts[i];
        self.counts[i] = n.saturating_add(1);
        self.case.fail == Some((kind, n))
    }

    /// The page walk. A privilege-exempt walk (a system-structure access) that succeeds
    /// answers the page's alias with [`SYSTEM_ALIAS`] set, so the checker can tell which memory
    /// accesses went through such a translation.
    fn walk(&self, gva_page: u64, flags: TranslateGvaFlags) -> (TranslateGvaResult, u64) {
        let (result, gpa) = self.case.walk_page(gva_page, flags);
        if flags.contains(TranslateGvaFlags::PRIVILEGE_EXEMPT)
            && usable(result)
            && gpa & !PAGE_MASK == 0
        {
            (result, gpa ^ SYSTEM_ALIAS)
        } else {
            (result, gpa)
        }
    }
}

impl EmulatorCallbacks for Model<'_> {
    type Error = CallKind;

    fn decode_cache(&mut self) -> Option<&mut DecodeCache> {
        self.decoded.as_mut()
    }

    fn io_port(&mut self, access: &mut IoAccessInfo) -> Result<(), CallKind> {
        let ok = !self.should_fail(CallKind::Io);
        let write = access.direction == AccessDirection::Write;
        self.calls.push(Call::Io {
            port: access.port,
            size: access.access_size,
            write,
            ok,
            data: if write { access.data } else { 0 },
        });
        if !ok {
            return Err(CallKind::Io);
        }
        if !write {
            // Garbage above the access size, which hvemu must ignore.
            access.data = self.case.port_input;
        }
        Ok(())
    }

    fn memory(&mut self, access: &mut MemoryAccessInfo<'_>) -> Result<(), CallKind> {
        let ok = !self.should_fail(CallKind::Memory);
        let write = access.direction == AccessDirection::Write;
        let gpa = access.gpa_address;
        self.calls.push(Call::Memory {
            gpa,
            len: access.data.len(),
            write,
            ok,
            data: if write {
                access.data.to_vec()
            } else {
                Vec::new()
            },
        });
        if !ok {
            return Err(CallKind::Memory);
        }
        for (i, b) in access.data.iter_mut().enumerate() {
            let a = gpa.wrapping_add(i as u64) & !SYSTEM_ALIAS;
            if write {
                self.memory.insert(a, *b);
            } else {
                *b = self.memory.get(&a).copied().unwrap_or(self.case.fill);
            }
        }
        Ok(())
    }

    fn get_registers(
        &mut self,
        names: &[RegisterName],
        values: &mut [RegisterValue],
    ) -> Result<(), CallKind> {
        let ok = !self.should_fail(CallKind::Get);
        self.calls.push(Call::Get {
            names: names.to_vec(),
            ok,
        });
        assert_eq!(
            names.len(),
            values.len(),
            "get_registers: names and values differ in length"
        );
        if !ok {
            return Err(CallKind::Get);
        }
        if self.regs.get(names, values).is_err() {
            panic!("get_registers asked for a register the file does not hold: {names:?}");
        }
        if let Some(i) = self.case.bad_value {
            if let Some(v) = values.get_mut(usize::from(i)) {
                *v = match v {
                    RegisterValue::U64(_) => RegisterValue::U128(0),
                    _ => RegisterValue::U64(0),
                };
            }
        }
        Ok(())
    }

    fn set_registers(
        &mut self,
        names: &[RegisterName],
        values: &[RegisterValue],
    ) -> Result<(), CallKind> {
        let ok = !self.should_fail(CallKind::Set);
        self.calls.push(Call::Set {
            names: names.to_vec(),
            values: values.to_vec(),
            ok,
        });
        assert_eq!(
            names.len(),
            values.len(),
            "set_registers: names and values differ in length"
        );
        if !ok {
            return Err(CallKind::Set);
        }
        if let Err(e) = self.regs.set(names, values) {
            panic!("set_registers with a register or value the file rejects: {e:?}");
        }
        Ok(())
    }

    fn translate_gva_page(
        &mut self,
        gva_page: u64,
        flags: TranslateGvaFlags,
    ) -> Result<(TranslateGvaResult, u64), CallKind> {
        let ok = !self.should_fail(CallKind::Translate);
        let answer = ok.then(|| self.walk(gva_page, flags));
        self.calls.push(Call::Translate {
            gva_page,
            flags,
            answer,
        });
        answer.ok_or(CallKind::Translate)
    }

    fn compare_exchange(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
        current: &mut [u8],
    ) -> Result<Option<bool>, CallKind> {
        let ok = !self.should_fail(CallKind::CompareExchange);
        assert!(
            expected.len() == new.len() && new.len() == current.len(),
            "compare_exchange: expected, new and current differ in length"
        );
        let mut answer = None;
        if ok && self.case.compare_exchange != CompareExchange::Unsupported {
            let at = |i: usize| gpa.wrapping_add(i as u64) & !SYSTEM_ALIAS;
            if let CompareExchange::Racy(n) = self.case.compare_exchange {
                if self.races < n {
                    self.races += 1;
                    let old = self.memory.get(&at(0)).copied().unwrap_or(self.case.fill);
                    self.memory.insert(at(0), old.wrapping_add(1));
                }
            }
            for (i, c) in current.iter_mut().enumerate() {
                *c = self.memory.get(&at(i)).copied().unwrap_or(self.case.fill);
            }
            let swapped = current == expected;
            if swapped {
                for (i, b) in new.iter().enumerate() {
                    self.memory.insert(at(i), *b);
                }
            }
            answer = Some(swapped);
        }
        self.calls.push(Call::CompareExchange {
            gpa,
            len: new.len(),
            ok,
            new: new.to_vec(),
            answer,
        });
        if ok {
            Ok(answer)
        } else {
            Err(CallKind::CompareExchange)
        }
    }

    // A monitor with atomic RAM also takes the bulk fast paths (keyed on the same field, so
    // that the input format, and the corpus, keep their meaning).
    fn copy_memory(&mut self, dst: u64, src: u64, len: usize) -> Result<bool, CallKind> {
        if self.case.compare_exchange == CompareExchange::Unsupported {
            return Ok(false);
        }
        let ok = !self.should_fail(CallKind::Memory);
        self.calls.push(Call::Bulk {
            dst,
            src: Some(src),
            port: None,
            len: len as u64,
            ok,
        });
        if !ok {
            return Err(CallKind::Memory);
        }
        for i in 0..len as u64 {
            let from = src.wrapping_add(i) & !SYSTEM_ALIAS;
            let b = self.memory.get(&from).copied().unwrap_or(self.case.fill);
            self.memory.insert(dst.wrapping_add(i) & !SYSTEM_ALIAS, b);
        }
        Ok(true)
    }

    fn fill_memory(&mut self, dst: u64, element: &[u8], count: usize) -> Result<bool, CallKind> {
        if self.case.compare_exchange == CompareExchange::Unsupported {
            return Ok(false);
        }
        let ok = !self.should_fail(CallKind::Memory);
        let len = element.len() as u64 * count as u64;
        self.calls.push(Call::Bulk {
            dst,
            src: None,
            port: None,
            len,
            ok,
        });
        if !ok {
            return Err(CallKind::Memory);
        }
        for (i, b) in element.iter().cycle().take(len as usize).enumerate() {
            self.memory
                .insert(dst.wrapping_add(i as u64) & !SYSTEM_ALIAS, *b);
        }
        Ok(true)
    }

    fn io_port_string(&mut self, access: &StringIoAccess) -> Result<bool, CallKind> {
        if self.case.compare_exchange == CompareExchange::Unsupported {
            return Ok(false);
        }
        let ok = !self.should_fail(CallKind::Io);
        let write = access.direction == AccessDirection::Write;
        let size = u64::from(access.access_size);
        self.calls.push(Call::Bulk {
            dst: access.gpa,
            src: None,
            port: Some((access.port, access.access_size, write)),
            len: size * u64::from(access.count),
            ok,
        });
        if !ok {
            return Err(CallKind::Io);
        }
        if !write {
            for i in 0..access.count {
                let at = access.element_gpa(i);
                for (k, b) in self
                    .case
                    .port_input
                    .to_le_bytes()
                    .iter()
                    .take(size as usize)
                    .enumerate()
                {
                    self.memory
                        .insert(at.wrapping_add(k as u64) & !SYSTEM_ALIAS, *b);
                }
            }
        }
        Ok(true)
    }
}

// ---------------------------------------------------------------------------------------------
// Running and checking.
// ---------------------------------------------------------------------------------------------

/// The callback bounds for REP bound `n` (`max(max_rep_iterations, 1)`), derived from the code
/// (as of the ALU, exchange, stack, vector and exception-delivery families):
///
/// * decode (`src/decode`): at most 15 fetch rounds (each fetches ≥ 1 of the ≤ 15 bytes), each
///   within one page: ≤ 1 translation + 1 memory read per round → 15 + 15.
/// * registers: every `get_registers` call asks for ≥ 1 register not asked for before in the
///   emulation (the checker verifies that none is asked for twice). `src/state.rs` holds 25
///   register slots (16 GPRs, 6 segments, TR, CR4, EFER) and at most 12 registers by name
///   (`WIDE_HELD`: vector, opmask, x87/MMX, XCR0), and exception delivery reads IDTR →
///   ≤ 25 + 12 + 1 = 38 gets; ≤ 1 set (the commit, or the queued exception).
/// * the I/O permission check (`src/execute/io.rs`), once per instruction: two 2-byte system
///   reads, each ≤ 2 pages → ≤ 4 translations + 4 memory reads.
/// * a non-REP instruction, once: ≤ 2 memory operands (PUSH/CALL m: the operand and the
///   stack) of ≤ 64 bytes, each over ≤ 2 pages → ≤ 8 translations (the 4-entry translation
///   cache keeps the pages of one operand); memory accesses ≤ 33 (an AVX-512 masked move makes
///   ≤ 32 runs, one of which may split at the page boundary; a read-modify-write makes ≤ 2 + 2);
///   ≤ 8 `compare_exchange` attempts (`LOCKED_ATTEMPTS`).
/// * a string instruction: ≤ n iterations (`src/rep.rs`: it stops when `done >= budget`, and a
///   failing iteration is one of them; without REP, one). One iteration touches ≤ 2 operands of
///   ≤ 8 bytes, each over ≤ 2 pages: ≤ 4 translations + 4 memory accesses (MOVS, CMPS), or
///   ≤ 2 + 2 + 1 port access (INS/OUTS) → ≤ 8 callbacks, ≤ 1 of them `io_port`.
///
/// Total ≤ 30 + 38 + 1 + 8 + (8 + 33 + 8) + 8·n = 126 + 8·n.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub total: u64,
    pub get: u64,
    pub set: u64,
    pub io: u64,
    pub translate: u64,
    pub memory: u64,
    pub compare_exchange: u64,
}

pub fn bound(n: u64) -> Bounds {
    Bounds {
        total: 126 + 8 * n,
        get: 38,
        set: 1,
        io: n,
        translate: 15 + 4 + 8 + 4 * n,
        memory: 15 + 4 + 33 + 4 * n,
        compare_exchange: 8,
    }
}

/// What one run did, for statistics.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub result: Result<Completion, EmulationError<CallKind>>,
    pub calls: Vec<Call>,
    pub bound: Bounds,
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

type EmuResult = Result<Completion, EmulationError<CallKind>>;

/// One emulation of `case` on a fresh model.
fn emulate(case: &Case) -> (EmuResult, Vec<Call>) {
    let (result, calls, _) = emulate_cached(case, None);
    (result, calls)
}

/// One emulation of `case` on a fresh model that offers `decoded` as its decode cache;
/// returns the cache as the emulation left it.
fn emulate_cached(
    case: &Case,
    decoded: Option<DecodeCache>,
) -> (EmuResult, Vec<Call>, Option<DecodeCache>) {
    let mut model = Model::new(case);
    model.decoded = decoded;
    let result = {
        let mut emulator = Emulator::with_config(&mut model, case.config);
        match &case.exit {
            Exit::Mmio(m) => emulator.emulate_mmio(&case.vp, m),
            Exit::Io(io) => emulator.emulate_io(&case.vp, io),
        }
    };
    (result, model.calls, model.decoded)
}

/// The decode cache changes nothing but speed: the same exit emulated by a monitor that
/// offers a cache, first empty and then holding what that first emulation decoded, gives the
/// same result with the same callbacks, in the same order, as without one.
fn check_cached(case: &Case, result: &EmuResult, calls: &[Call]) -> Result<(), String> {
    let (cold, cold_calls, cache) = emulate_cached(case, Some(DecodeCache::new()));
    let (warm, warm_calls, _) = emulate_cached(case, cache);
    for (what, r, c) in [("empty", &cold, &cold_calls), ("warm", &warm, &warm_calls)] {
        ensure!(
            r == result && c.as_slice() == calls,
            "decode cache ({what}): {r:?} with calls {c:#x?}\nwithout a cache: {result:?} with \
             calls {calls:#x?}"
        );
    }
    Ok(())
}

/// Runs the case and checks every invariant; panics when one is violated.
pub fn run_case(case: &Case) -> Outcome {
    let (result, calls) = emulate(case);
    let bound = bound(case.rep_bound());
    if let Err(violation) = check(case, &result, &calls, &bound) {
        panic!(
            "invariant violated: {violation}\nresult: {result:?}\ncalls ({}): {calls:#x?}",
            calls.len()
        );
    }
    if let Err(violation) = check_fetch(case, &result, &calls) {
        panic!("invariant violated: {violation}");
    }
    if let Err(violation) = check_cached(case, &result, &calls) {
        panic!("invariant violated: {violation}");
    }
    Outcome {
        result,
        calls,
        bound,
    }
}

/// The effects an emulation has on the machine: the commit, the port accesses and the memory
/// writes, in order.
fn effects(calls: &[Call]) -> Vec<&Call> {
    calls
        .iter()
        .filter(|c| match c {
            Call::Set { .. } | Call::Io { .. } => true,
            Call::Memory { write, .. } => *write,
            Call::CompareExchange { .. } | Call::Bulk { .. } => true,
            Call::Get { .. } | Call::Translate { .. } => false,
        })
        .collect()
}

/// An execute exit that vouches for what the page map denies: a GPA it does not give the
/// exit's GVA, or execute permission for that page. hvemu fetches instruction bytes at the
/// exit's GVA through the exit's GPA without a walk (a fetch from an MMIO page is such an
/// exit), and bytes anywhere else through a walk; so with a lying exit, fetching from the GVA
/// and carrying those bytes while fetching the rest differ (in the bytes read, or in a #PF),
/// and cannot be compared. Outside real mode only: there is no translation, and no hint, in
/// real mode.
fn lying_execute_exit(case: &Case) -> bool {
    let Exit::Mmio(m) = &case.exit else {
        return false;
    };
    let denied = || {
        let (result, _) = case.walk_page(m.gva & PAGE_MASK, TranslateGvaFlags::VALIDATE_EXECUTE);
        !usable(result)
    };
    m.access_info.access_type == MemoryAccessType::Execute
        && m.access_info.gva_valid
        && effective_mode(&case.vp) != EffectiveMode::Real
        && (case.linear_to_gpa(m.gva) != Some(m.gpa) || denied())
}

/// Fetching: when the exit carries only part of the instruction and guest memory holds all of
/// it, a successful emulation must do what the same exit carrying every byte does.
fn check_fetch(case: &Case, result: &EmuResult, calls: &[Call]) -> Result<(), String> {
    let count = match &case.exit {
        Exit::Mmio(m) => m.instruction_byte_count,
        Exit::Io(io) => io.instruction_byte_count,
    };
    let full = case.code.len().min(16) as u8;
    if !case.code_in_memory
        || count >= full
        || case.fail.is_some()
        || case.bad_value.is_some()
        || result.is_err()
        // An injected exception may come from the fetch itself.
        || matches!(result, Ok(Completion::Injected(_)))
        || lying_execute_exit(case)
    {
        return Ok(());
    }
    let mut reference = case.clone();
    match &mut reference.exit {
        Exit::Mmio(m) => m.instruction_byte_count = full,
        Exit::Io(io) => io.instruction_byte_count = full,
    }
    let (ref_result, ref_calls) = emulate(&reference);
    match &ref_result {
        // The bytes alone are not a whole instruction: the fetch read past them.
        Err(EmulationError::Undecodable { .. }) => return Ok(()),
        Err(e) => {
            return Err(format!(
                "fetch: with {count} of {full} bytes in the exit the emulation gives \
                 {result:?}, with all of them {e:?}\nfetching calls: {calls:#x?}\n\
                 reference calls: {ref_calls:#x?}"
            ));
        }
        Ok(_) => {}
    }
    let (mine, theirs) = (effects(calls), effects(&ref_calls));
    ensure!(
        *result == ref_result && mine == theirs,
        "fetch: with {count} of {full} bytes in the exit the emulation gives {result:?} and \
         {mine:#x?}\nwith all of them {ref_result:?} and {theirs:#x?}"
    );
    Ok(())
}

/// Builds a case from raw fuzz input and runs it, as the fuzz target does. `None` if the
/// input does not build a case (libFuzzer skips such inputs too).
pub fn run_bytes(data: &[u8]) -> Option<Outcome> {
    let case = Case::arbitrary_take_rest(Unstructured::new(data)).ok()?;
    Some(run_case(&case))
}

/// Checks to skip, named in `HVEMU_FUZZ_SKIP` (comma-separated), for fuzzing on past a known
/// bug: `system-alias`.
fn skipped(check: &str) -> bool {
    static SKIP: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SKIP.get_or_init(|| {
        std::env::var("HVEMU_FUZZ_SKIP")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    })
    .iter()
    .any(|s| s == check)
}

fn caused_by_callback<E>(e: &EmulationError<E>) -> bool {
    matches!(
        e,
        EmulationError::IoPort(_)
            | EmulationError::Memory(_)
            | EmulationError::GetRegisters(_)
            | EmulationError::SetRegisters(_)
            | EmulationError::TranslateGva(_)
            | EmulationError::BadRegisterValue(_)
    )
}

fn check(
    case: &Case,
    result: &Result<Completion, EmulationError<CallKind>>,
    calls: &[Call],
    b: &Bounds,
) -> Result<(), String> {
    let mode = effective_mode(&case.vp);
    let count = |k: CallKind| calls.iter().filter(|c| c.kind() == k).count() as u64;

    // (b), (c): the commit.
    let sets: Vec<_> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Set { names, values, ok } => Some((names, values, *ok)),
            _ => None,
        })
        .collect();
    ensure!(
        sets.len() <= 1,
        "(c) set_registers called {} times",
        sets.len()
    );
    match result {
        Ok(_) => ensure!(
            sets.len() == 1 && sets[0].2,
            "(c) Ok without exactly one successful set_registers"
        ),
        Err(EmulationError::SetRegisters(_)) => ensure!(
            sets.len() == 1 && !sets[0].2,
            "(b) SetRegisters error without one failed set_registers call"
        ),
        Err(e) => ensure!(sets.is_empty(), "(b) {e:?} after a set_registers call"),
    }
    if let Some((names, values, _)) = sets.first() {
        ensure!(
            matches!(calls.last(), Some(Call::Set { .. })),
            "(c) a callback after the commit"
        );
        if let Ok(Completion::Injected(_)) = result {
            // The exception is queued and nothing of the instruction is committed.
            ensure!(
                names.as_slice() == [RegisterName::PENDING_EVENT],
                "(c) Injected, but set_registers writes {names:?}"
            );
            ensure!(case.config.inject_exceptions, "Injected without injection");
        }
        let trap_queued = case.config.inject_exceptions && case.vp.rflags & RFLAGS_TF != 0;
        let mut seen = BTreeSet::new();
        let mut rip = None;
        let mut rflags = None;
        for (name, value) in names.iter().zip(values.iter()) {
            ensure!(seen.insert(*name), "(c) set_registers names {name:?} twice");
            if *name == RegisterName::PENDING_EVENT {
                // The exception queued (`Injected`, or the failed attempt to queue it), or
                // the single-step trap queued with the commit.
                let queued = matches!(
                    result,
                    Ok(Completion::Injected(_)) | Err(EmulationError::SetRegisters(_))
                ) && case.config.inject_exceptions;
                ensure!(
                    queued || trap_queued,
                    "(c) set_registers writes PENDING_EVENT without an exception to deliver"
                );
            }
            let v = value.as_u64();
            if *name == RegisterName::RFLAGS {
                let Some(v) = v else {
                    return Err(format!("(c) RFLAGS = {value:?}"));
                };
                rflags = Some(v);
            }
            if *name == RegisterName::RIP {
                rip = v;
            }
        }
        // RFLAGS: only the status flags may change, and RF is set when RIP stays on the
        // instruction (it will resume) and clear when it completed.
        if !matches!(result, Ok(Completion::Injected(_)) | Err(_)) {
            let resumes = matches!(
                result,
                Ok(Completion::Partial | Completion::SingleStepTrap { partial: true })
            );
            let new = rflags.unwrap_or(case.vp.rflags);
            ensure!(
                (new ^ case.vp.rflags) & !(RFLAGS_STATUS | RFLAGS_RF) == 0,
                "(c) RFLAGS changed from {:#x} to {new:#x} outside the status flags",
                case.vp.rflags
            );
            ensure!(
                (new & RFLAGS_RF != 0) == resumes,
                "(c) RFLAGS.RF is {} after {result:?}",
                u8::from(new & RFLAGS_RF != 0)
            );
        }
        // Queuing an exception writes PENDING_EVENT alone; a commit always writes RIP.
        let queues_exception = names.as_slice() == [RegisterName::PENDING_EVENT];
        let rip = match rip {
            Some(rip) => rip,
            None if queues_exception => case.vp.rip,
            None => return Err("(c) the commit does not write RIP".into()),
        };
        if matches!(
            result,
            Ok(Completion::Partial | Completion::SingleStepTrap { partial: true })
        ) {
            ensure!(
                rip == case.vp.rip,
                "(c) Partial completion moved RIP from {:#x} to {rip:#x}",
                case.vp.rip
            );
        }
    }

    // (d), (e): memory accesses, in order with the translations that justify them.
    let hint = match &case.exit {
        Exit::Mmio(m)
            if m.access_info.gva_valid && (m.gpa & !PAGE_MASK) == (m.gva & !PAGE_MASK) =>
        {
            Some((m.gpa & PAGE_MASK, m.access_info.access_type))
        }
        _ => None,
    };
    // GPA page → whether some translation validated it for write.
    let mut translated: BTreeMap<u64, bool> = BTreeMap::new();
    // GPA pages that only privilege-exempt translations returned (see `SYSTEM_ALIAS`).
    let mut system_pages: BTreeSet<u64> = BTreeSet::new();
    let mut ordinary_pages: BTreeSet<u64> = BTreeSet::new();
    let mut system_bytes = 0u64;
    let mut memory_writes = 0u64;
    for call in calls {
        match call {
            Call::Translate {
                gva_page,
                flags,
                answer,
            } => {
                ensure!(mode != EffectiveMode::Real, "(e) translation in real mode");
                ensure!(
                    gva_page & !PAGE_MASK == 0,
                    "translate_gva_page({gva_page:#x}) is not page-aligned"
                );
                ensure!(
                    flags.contains(TranslateGvaFlags::SET_PAGE_TABLE_BITS),
                    "translation without SET_PAGE_TABLE_BITS: {flags:?}"
                );
                let data = TranslateGvaFlags::VALIDATE_READ | TranslateGvaFlags::VALIDATE_WRITE;
                let execute = flags.contains(TranslateGvaFlags::VALIDATE_EXECUTE);
                ensure!(
                    execute != flags.intersects(data),
                    "translation validating {flags:?}"
                );
                if let Some((result, gpa)) = answer {
                    if usable(*result) && gpa & !PAGE_MASK == 0 {
                        let w = translated.entry(*gpa).or_insert(false);
                        *w |= flags.contains(TranslateGvaFlags::VALIDATE_WRITE);
                        if flags.contains(TranslateGvaFlags::PRIVILEGE_EXEMPT) {
                            system_pages.insert(*gpa);
                        } else {
                            ordinary_pages.insert(*gpa);
                        }
                    }
                }
            }
            Call::Memory {
                gpa, len, write, ..
            } => {
                let len = *len as u64;
                ensure!(
                    (1..=64).contains(&len),
                    "(d) memory access of {len} bytes at {gpa:#x}"
                );
                let last = gpa.checked_add(len - 1);
                ensure!(
                    last.is_some_and(|l| l & PAGE_MASK == gpa & PAGE_MASK),
                    "(d) memory access of {len} bytes at {gpa:#x} crosses a page"
                );
                if *write {
                    memory_writes += 1;
                }
                if mode != EffectiveMode::Real {
                    let page = gpa & PAGE_MASK;
                    let by_hint = hint.is_some_and(|(p, t)| {
                        p == page && (!*write || t == MemoryAccessType::Write)
                    });
                    let by_walk = translated.get(&page).is_some_and(|w| !*write || *w);
                    ensure!(
                        by_hint || by_walk,
                        "(e) memory {} at {gpa:#x}: page not translated{} before",
                        if *write { "write" } else { "read" },
                        if *write { " for write" } else { "" }
                    );
                    let system =
                        system_pages.contains(&page) && !ordinary_pages.contains(&page) && !by_hint;
                    if system && !skipped("system-alias") {
                        system_bytes += len;
                        ensure!(
                            !*write && system_bytes <= SYSTEM_BYTES,
                            "(e) memory {} of {len} bytes at {gpa:#x} through a \
                             privilege-exempt translation ({system_bytes} bytes so far): \
                             an instruction operand reused a system-structure translation",
                            if *write { "write" } else { "read" }
                        );
                    }
                }
            }
            Call::Io { size, write, .. } => {
                ensure!(matches!(size, 1 | 2 | 4), "(g) port access of {size} bytes");
                if let Exit::Io(io) = &case.exit {
                    ensure!(
                        *size == io.access_info.access_size && *write == io.access_info.is_write,
                        "(g) port access ({size} bytes, write {write}) unlike the exit's {:?}",
                        io.access_info
                    );
                }
            }
            Call::CompareExchange {
                gpa, len, answer, ..
            } => {
                let len = *len as u64;
                ensure!(
                    matches!(len, 1 | 2 | 4 | 8 | 16),
                    "(d) compare_exchange of {len} bytes at {gpa:#x}"
                );
                let last = gpa.checked_add(len - 1);
                ensure!(
                    last.is_some_and(|l| l & PAGE_MASK == gpa & PAGE_MASK),
                    "(d) compare_exchange of {len} bytes at {gpa:#x} crosses a page"
                );
                if *answer == Some(true) {
                    memory_writes += 1;
                }
                if mode != EffectiveMode::Real {
                    let page = gpa & PAGE_MASK;
                    let by_hint =
                        hint.is_some_and(|(p, t)| p == page && t == MemoryAccessType::Write);
                    let by_walk = translated.get(&page).is_some_and(|w| *w);
                    ensure!(
                        by_hint || by_walk,
                        "(e) compare_exchange at {gpa:#x}: page not translated for write before"
                    );
                    let system =
                        system_pages.contains(&page) && !ordinary_pages.contains(&page) && !by_hint;
                    ensure!(
                        !system || skipped("system-alias"),
                        "(e) compare_exchange at {gpa:#x} through a privilege-exempt translation"
                    );
                }
            }
            Call::Bulk {
                dst,
                src,
                port,
                len,
                ok,
            } => {
                ensure!(*len >= 2, "(d) bulk offer of {len} bytes at {dst:#x}");
                let within = |a: u64| {
                    a.checked_add(len - 1)
                        .is_some_and(|l| l & PAGE_MASK == a & PAGE_MASK)
                };
                ensure!(
                    within(*dst),
                    "(d) bulk range of {len} bytes at {dst:#x} crosses a page"
                );
                if let Some(src) = src {
                    ensure!(within(*src), "(d) bulk copy source {src:#x} crosses a page");
                    ensure!(
                        src.abs_diff(*dst) >= *len,
                        "(d) overlapping bulk copy {src:#x} -> {dst:#x}"
                    );
                }
                if let (Some((_, size, write)), Exit::Io(io)) = (port, &case.exit) {
                    ensure!(
                        *size == io.access_info.access_size && *write == io.access_info.is_write,
                        "(g) string port batch unlike the exit's {:?}",
                        io.access_info
                    );
                }
                // Which pages it writes and reads: a copy writes `dst` and reads `src`, a fill
                // and INS write `dst`, OUTS reads it.
                let writes_dst = !matches!(port, Some((_, _, true)));
                if *ok && writes_dst {
                    memory_writes += 1;
                }
                if mode != EffectiveMode::Real {
                    for (a, write) in [(Some(*dst), writes_dst), (*src, false)] {
                        let Some(a) = a else { continue };
                        let page = a & PAGE_MASK;
                        let by_hint = hint.is_some_and(|(p, t)| {
                            p == page && (!write || t == MemoryAccessType::Write)
                        });
                        let by_walk = translated.get(&page).is_some_and(|w| !write || *w);
                        ensure!(
                            by_hint || by_walk,
                            "(e) bulk {} at {a:#x}: page not translated{} before",
                            if write { "write" } else { "read" },
                            if write { " for write" } else { "" }
                        );
                        ensure!(
                            !system_pages.contains(&page)
                                || ordinary_pages.contains(&page)
                                || by_hint,
                            "(e) bulk access at {a:#x} through a privilege-exempt translation"
                        );
                    }
                }
            }
            Call::Get { .. } | Call::Set { .. } => {}
        }
    }

    // (f): bounded work.
    let total = calls.len() as u64;
    ensure!(total <= b.total, "(f) {total} callbacks, bound {}", b.total);
    for (kind, limit) in [
        (CallKind::Get, b.get),
        (CallKind::Set, b.set),
        (CallKind::Io, b.io),
        (CallKind::Translate, b.translate),
        (CallKind::Memory, b.memory),
        (CallKind::CompareExchange, b.compare_exchange),
    ] {
        let n = count(kind);
        ensure!(n <= limit, "(f) {n} {kind:?} callbacks, bound {limit}");
    }

    // Register reads: each register once, never what the exit carries.
    let mut asked = BTreeSet::new();
    for call in calls {
        if let Call::Get { names, .. } = call {
            for name in names {
                ensure!(asked.insert(*name), "get_registers asks for {name:?} again");
                ensure!(*name != RegisterName::CS, "get_registers asks for CS");
                if matches!(case.exit, Exit::Io(_)) {
                    let carried = [
                        RegisterName::RAX,
                        RegisterName::RCX,
                        RegisterName::RSI,
                        RegisterName::RDI,
                        RegisterName::DS,
                        RegisterName::ES,
                    ];
                    ensure!(
                        !carried.contains(name),
                        "port exit: get_registers asks for {name:?}, which the exit carries"
                    );
                }
            }
        }
    }

    // All or nothing: a failure no callback caused (or an exception hvemu injects) comes
    // before any side effect.
    let failure = match result {
        Err(e) if !caused_by_callback(e) => Some(format!("{e:?}")),
        Ok(Completion::Injected(e)) => Some(format!("injected {e:?}")),
        _ => None,
    };
    if let Some(e) = failure {
        {
            ensure!(
                memory_writes == 0 && count(CallKind::Io) == 0,
                "{e:?} after a side effect ({memory_writes} memory writes, {} port accesses)",
                count(CallKind::Io)
            );
        }
    }
    if let Exit::Io(io) = &case.exit {
        if !io.access_info.string_op {
            ensure!(memory_writes == 0, "IN/OUT exit wrote memory");
        }
    }
    Ok(())
}
