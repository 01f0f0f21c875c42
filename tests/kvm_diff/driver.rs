//! The differential driver: KVM runs a guest instruction, hvemu emulates the same instruction
//! from the same state, and the two are compared access by access and register by register.
//!
//! Include from a crate that also has `mod kvm;` (the guest harness) at its root:
//!
//! ```ignore
//! mod kvm;
//! #[path = "kvm_diff/driver.rs"]
//! mod driver;
//! ```
//!
//! # How one instruction is compared
//!
//! 1. **Pre-instruction state.** KVM's registers at an MMIO/port exit are *not* the state
//!    before the instruction on this host: Linux's emulator finishes a write before it exits
//!    (RIP already advanced, RCX already decremented by a REP element), and at CPL 3 a read
//!    exit shows RFLAGS.RF set. A hardware hypervisor exits before the instruction, so that
//!    is the state hvemu must be given. The driver therefore takes its snapshot
//!    (KVM_GET_REGS + KVM_GET_SREGS) at an instruction *boundary*: either right after it set
//!    the state up ([`Session::run_case`], which follows every instruction under test with a
//!    marker `out MARKER_PORT, al`), or at each single-step exit ([`Session::run_program`],
//!    CPL 0 only: on kvm-pvm a CPL 3 single-step trap is delivered to the guest as #DB).
//! 2. **hvemu first.** At the instruction's first exit, hvemu runs on a copy of that snapshot
//!    ([`HvMachine`]: registers from the snapshot, guest RAM read-only with a private overlay
//!    for its writes, KVM_TRANSLATE plus a page-table walk for translation, its own copy of
//!    the model devices), with the exit's GPA, direction, port and size. It runs several
//!    variants of the exit context (bytes given / absent / one byte; GVA valid; REP budget 1)
//!    that must all agree with each other.
//! 3. **KVM second.** KVM continues, its reads answered with the data hvemu's reads got, until
//!    the marker exit (or the single-step exit / `immediate_exit` stop) says the instruction
//!    is done, or until the guest's exception handler halts.
//! 4. **Compare** device accesses (per address space, in order; size, direction, data),
//!    hvemu's RAM writes against guest RAM, every GPR, RIP and RFLAGS, or the exception
//!    (vector, error code, CR2) against the record the guest's handler wrote.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use hvemu::{
    AccessDirection, Completion, Config, EmulationError, Emulator, EmulatorCallbacks, Exception,
    ExecutionState, IoAccessInfo, IoPortAccessContext, IoPortAccessInfo, MemoryAccessContext,
    MemoryAccessInfo, MemoryAccessType, RegisterFile, RegisterName, RegisterValue, Segment,
    SegmentAttributes, SegmentRegister, TableRegister, TranslateGvaFlags, TranslateGvaResult,
    Vendor, VpExitContext,
};
use iced_x86::{
    Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic, OpKind, Register,
};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use crate::kvm::{Access, ExceptionRecord, Exit, Guest, Space};

/// The port of the marker `out MARKER_PORT, al` that follows each instruction under test.
/// Tests must not use it.
pub const MARKER_PORT: u8 = 0xEF;
/// Encoded marker: `out 0xEF, al`.
pub const MARKER: [u8; 2] = [0xE6, MARKER_PORT];

const CR0_PE: u64 = 1;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const RFLAGS_AC: u64 = 1 << 18;
const PTE_RW: u64 = 2;
const PTE_US: u64 = 4;
const PTE_NX: u64 = 1 << 63;

/// The host CPU's vendor, for the flags the manuals leave undefined (KVM's emulator computes
/// arithmetic natively, so its undefined flags are the host's).
pub fn host_vendor() -> Vendor {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if cpuinfo.contains("AuthenticAMD") || cpuinfo.contains("HygonGenuine") {
        Vendor::Amd
    } else {
        Vendor::Intel
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots and conversions
// ---------------------------------------------------------------------------------------------

/// KVM_GET_REGS + KVM_GET_SREGS at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
}

/// KVM's GPRs in hardware order (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15).
pub fn gprs(r: &kvm_regs) -> [u64; 16] {
    [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ]
}

/// Sets KVM's GPRs from hardware order.
pub fn set_gprs(r: &mut kvm_regs, v: [u64; 16]) {
    [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ] = v;
}

pub const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// A KVM segment as hvemu's `SegmentRegister`: attributes type 0-3, S 4, DPL 5-6, P 7, AVL 12,
/// L 13, D/B 14, G 15; limit in bytes (KVM already scales it); unusable ⇒ not present.
pub fn segment_register(s: &kvm_segment) -> SegmentRegister {
    let present = s.present != 0 && s.unusable == 0;
    let attributes = (s.type_ as u16 & 0xF)
        | (s.s as u16 & 1) << 4
        | (s.dpl as u16 & 3) << 5
        | (present as u16) << 7
        | (s.avl as u16 & 1) << 12
        | (s.l as u16 & 1) << 13
        | (s.db as u16 & 1) << 14
        | (s.g as u16 & 1) << 15;
    SegmentRegister {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        attributes: SegmentAttributes::from_bits_retain(attributes),
    }
}

/// The kvm_sregs field of a segment.
pub fn sreg_mut(s: &mut kvm_sregs, seg: Segment) -> &mut kvm_segment {
    match seg {
        Segment::Es => &mut s.es,
        Segment::Cs => &mut s.cs,
        Segment::Ss => &mut s.ss,
        Segment::Ds => &mut s.ds,
        Segment::Fs => &mut s.fs,
        Segment::Gs => &mut s.gs,
    }
}

pub fn sreg(s: &kvm_sregs, seg: Segment) -> &kvm_segment {
    match seg {
        Segment::Es => &s.es,
        Segment::Cs => &s.cs,
        Segment::Ss => &s.ss,
        Segment::Ds => &s.ds,
        Segment::Fs => &s.fs,
        Segment::Gs => &s.gs,
    }
}

impl Snapshot {
    pub fn take(g: &Guest) -> Self {
        Snapshot {
            regs: g.vcpu.regs(),
            sregs: g.vcpu.sregs(),
        }
    }

    pub fn protected(&self) -> bool {
        self.sregs.cr0 & CR0_PE != 0
    }

    pub fn paging(&self) -> bool {
        self.sregs.cr0 & CR0_PG != 0
    }

    pub fn long64(&self) -> bool {
        self.sregs.efer & EFER_LMA != 0 && self.sregs.cs.l != 0
    }

    /// Code size: 16, 32 or 64.
    pub fn bitness(&self) -> u32 {
        if self.long64() {
            64
        } else if self.sregs.cs.db != 0 {
            32
        } else {
            16
        }
    }

    /// CPL: SS.DPL in protected mode, 0 in real mode (the harness has no virtual-8086 mode).
    pub fn cpl(&self) -> u8 {
        if self.protected() {
            self.sregs.ss.dpl & 3
        } else {
            0
        }
    }

    /// Linear address of the instruction at RIP.
    pub fn linear_ip(&self) -> u64 {
        if self.long64() {
            self.regs.rip
        } else {
            self.sregs.cs.base.wrapping_add(self.regs.rip) & 0xFFFF_FFFF
        }
    }

    /// Every register hvemu can ask for, from the snapshot.
    pub fn register_file(&self) -> RegisterFile {
        let s = &self.sregs;
        let mut f = RegisterFile {
            gpr: gprs(&self.regs),
            rip: self.regs.rip,
            rflags: self.regs.rflags,
            ..RegisterFile::default()
        };
        f.segments = [&s.es, &s.cs, &s.ss, &s.ds, &s.fs, &s.gs].map(segment_register);
        f.ldtr = segment_register(&s.ldt);
        f.tr = segment_register(&s.tr);
        f.gdtr = TableRegister {
            base: s.gdt.base,
            limit: s.gdt.limit,
        };
        f.idtr = TableRegister {
            base: s.idt.base,
            limit: s.idt.limit,
        };
        f.cr = [s.cr0, s.cr2, s.cr3, s.cr4, s.cr8];
        f.efer = s.efer;
        f
    }
}

/// The exit context a hardware hypervisor would report for the instruction at RIP.
pub fn exit_context(f: &RegisterFile, instruction_length: u8) -> VpExitContext {
    let cr0 = f.cr[0];
    let pe = cr0 & CR0_PE != 0;
    let ss = f.segments[Segment::Ss as usize];
    VpExitContext {
        execution_state: ExecutionState {
            cpl: if pe { ss.dpl() } else { 0 },
            cr0_pe: pe,
            cr0_am: cr0 & (1 << 18) != 0,
            efer_lma: f.efer & EFER_LMA != 0,
            ..ExecutionState::default()
        },
        instruction_length,
        cr8: (f.cr[4] & 0xF) as u8,
        cs: f.segments[Segment::Cs as usize],
        rip: f.rip,
        rflags: f.rflags,
    }
}

/// Translates a linear address the way the vCPU would for a supervisor read:
/// KVM_TRANSLATE when paging is on, identity (32-bit) otherwise.
pub fn linear_to_gpa(g: &Guest, snap: &Snapshot, linear: u64) -> Option<u64> {
    if snap.paging() {
        g.vcpu.translate(linear).map(|t| t.0)
    } else if snap.protected() {
        Some(linear & 0xFFFF_FFFF)
    } else {
        Some(linear)
    }
}

/// Up to `len` bytes of guest RAM at a linear address (stops at unmapped or non-RAM bytes).
pub fn read_linear(g: &Guest, snap: &Snapshot, linear: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for i in 0..len as u64 {
        let mut la = linear.wrapping_add(i);
        if !snap.long64() {
            la &= 0xFFFF_FFFF;
        }
        match linear_to_gpa(g, snap, la) {
            Some(gpa) if g.mem.is_ram(gpa, 1) => out.push(g.mem.read_u8(gpa)),
            _ => break,
        }
    }
    out
}

/// The instruction at RIP, decoded by iced-x86 from guest memory, and the 16 bytes at RIP a
/// hypervisor would capture (fewer if the code ends at unmapped memory).
pub fn decode_at(g: &Guest, snap: &Snapshot) -> Option<(Instruction, Vec<u8>)> {
    let bytes = read_linear(g, snap, snap.linear_ip(), 16);
    let mut d = Decoder::with_ip(snap.bitness(), &bytes, snap.regs.rip, DecoderOptions::NONE);
    let i = d.decode();
    (!i.is_invalid()).then_some((i, bytes))
}

/// Intel-syntax text of an instruction.
pub fn format_instr(i: &Instruction) -> String {
    let mut f = IntelFormatter::new();
    f.options_mut().set_hex_prefix("0x");
    f.options_mut().set_hex_suffix("");
    f.options_mut().set_rip_relative_addresses(false);
    let mut s = String::new();
    f.format(i, &mut s);
    s
}

// ---------------------------------------------------------------------------------------------
// Model devices
// ---------------------------------------------------------------------------------------------

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Deterministic devices behind every non-RAM GPA and every port: an MMIO byte reads as a
/// pattern of its address until written; the n-th read of a port returns a pattern of
/// (port, n). Cheap to clone, so hvemu's variants and KVM each get their own copy.
#[derive(Clone, Debug, Default)]
pub struct Devices {
    pub seed: u64,
    written: HashMap<u64, u8>,
    port_reads: HashMap<u16, u64>,
    /// Every access, one entry per port element and per MMIO piece (≤ 8 bytes).
    pub log: Vec<Access>,
}

fn le(bytes: &[u8]) -> u64 {
    bytes.iter().rev().fold(0, |acc, &b| acc << 8 | b as u64)
}

impl Devices {
    pub fn new(seed: u64) -> Self {
        Devices {
            seed,
            ..Default::default()
        }
    }

    fn mmio_byte(&self, addr: u64) -> u8 {
        match self.written.get(&addr) {
            Some(b) => *b,
            None => mix(self.seed ^ addr.wrapping_mul(0x100_0000_01B3)) as u8,
        }
    }

    /// The value an MMIO read of `len` bytes at `addr` would return now (no side effect).
    pub fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
        (0..len as u64).map(|i| self.mmio_byte(addr + i)).collect()
    }

    pub fn mmio_read(&mut self, addr: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.mmio_byte(addr + i as u64);
        }
        for (k, chunk) in buf.chunks(8).enumerate() {
            self.log.push(Access::mmio_read(
                addr + 8 * k as u64,
                chunk.len() as u8,
                le(chunk),
            ));
        }
    }

    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            self.written.insert(addr + i as u64, *b);
        }
        for (k, chunk) in data.chunks(8).enumerate() {
            self.log.push(Access::mmio_write(
                addr + 8 * k as u64,
                chunk.len() as u8,
                le(chunk),
            ));
        }
    }

    pub fn port_in(&mut self, port: u16, size: u8) -> u32 {
        let n = self.port_reads.entry(port).or_insert(0);
        let v = mix(self.seed ^ (port as u64) << 32 ^ *n) as u32;
        *n += 1;
        let v = v & (u64::MAX >> (64 - 8 * size as u32)) as u32;
        self.log.push(Access::port_read(port, size, v as u64));
        v
    }

    /// Sets device bytes without logging (a register the test wants to hold a given value).
    pub fn preset(&mut self, addr: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            self.written.insert(addr + i as u64, *b);
        }
    }

    /// Counts a port read answered from elsewhere (a replayed value), so that the device's
    /// next read returns the next value.
    fn skip_port_read(&mut self, port: u16) {
        *self.port_reads.entry(port).or_insert(0) += 1;
    }

    pub fn port_out(&mut self, port: u16, size: u8, value: u32) {
        self.log.push(Access::port_write(port, size, value as u64));
    }
}

// ---------------------------------------------------------------------------------------------
// hvemu's side: callbacks backed by the snapshot
// ---------------------------------------------------------------------------------------------

/// hvemu's machine for one emulation: registers from the snapshot, guest RAM (read-only,
/// with a private overlay for writes), translation through KVM, and its own devices.
pub struct HvMachine<'a> {
    pub regs: RegisterFile,
    g: &'a Guest,
    pub devices: Devices,
    /// hvemu's writes to guest RAM, byte by byte (guest RAM itself is not touched).
    pub ram_writes: BTreeMap<u64, u8>,
    /// Every `set_registers` pair, in call order.
    pub sets: Vec<(RegisterName, RegisterValue)>,
    pub set_calls: u32,
    pub get_calls: u32,
    pub memory_calls: u32,
    pub translate_calls: u32,
}

impl<'a> HvMachine<'a> {
    pub fn new(g: &'a Guest, regs: RegisterFile, devices: Devices) -> Self {
        HvMachine {
            regs,
            g,
            devices,
            ram_writes: BTreeMap::new(),
            sets: Vec::new(),
            set_calls: 0,
            get_calls: 0,
            memory_calls: 0,
            translate_calls: 0,
        }
    }

    fn cpl(&self) -> u8 {
        if self.regs.cr[0] & CR0_PE != 0 {
            self.regs.segments[Segment::Ss as usize].dpl()
        } else {
            0
        }
    }
}

impl EmulatorCallbacks for HvMachine<'_> {
    type Error = String;

    fn io_port(&mut self, access: &mut IoAccessInfo) -> Result<(), String> {
        match access.direction {
            AccessDirection::Read => {
                access.data = self.devices.port_in(access.port, access.access_size)
            }
            AccessDirection::Write => {
                self.devices
                    .port_out(access.port, access.access_size, access.data)
            }
        }
        Ok(())
    }

    fn memory(&mut self, access: &mut MemoryAccessInfo<'_>) -> Result<(), String> {
        self.memory_calls += 1;
        let gpa = access.gpa_address;
        let len = access.data.len();
        if (gpa & 0xFFF) as usize + len > 0x1000 {
            return Err(format!("memory access {gpa:#x}+{len} crosses a page"));
        }
        if self.g.mem.is_ram(gpa, len) {
            for (i, b) in access.data.iter_mut().enumerate() {
                let a = gpa + i as u64;
                match access.direction {
                    AccessDirection::Read => {
                        *b = match self.ram_writes.get(&a) {
                            Some(v) => *v,
                            None => self.g.mem.read_u8(a),
                        }
                    }
                    AccessDirection::Write => {
                        self.ram_writes.insert(a, *b);
                    }
                }
            }
            Ok(())
        } else if (0..len as u64).any(|i| self.g.mem.is_ram(gpa + i, 1)) {
            Err(format!("memory access {gpa:#x}+{len} mixes RAM and MMIO"))
        } else {
            match access.direction {
                AccessDirection::Read => self.devices.mmio_read(gpa, access.data),
                AccessDirection::Write => self.devices.mmio_write(gpa, access.data),
            }
            Ok(())
        }
    }

    fn get_registers(
        &mut self,
        names: &[RegisterName],
        values: &mut [RegisterValue],
    ) -> Result<(), String> {
        self.get_calls += 1;
        self.regs.get(names, values).map_err(|e| format!("{e:?}"))
    }

    fn set_registers(
        &mut self,
        names: &[RegisterName],
        values: &[RegisterValue],
    ) -> Result<(), String> {
        self.set_calls += 1;
        self.sets
            .extend(names.iter().copied().zip(values.iter().copied()));
        self.regs.set(names, values).map_err(|e| format!("{e:?}"))
    }

    /// KVM_TRANSLATE for the walk; the leaf entry (the harness makes every upper level
    /// present, writable and user) for R/W, U/S and NX, honouring the flags and the CPL.
    fn translate_gva_page(
        &mut self,
        gva_page: u64,
        flags: TranslateGvaFlags,
    ) -> Result<(TranslateGvaResult, u64), String> {
        self.translate_calls += 1;
        let cr0 = self.regs.cr[0];
        let gpa = if cr0 & CR0_PG == 0 {
            gva_page & 0xFFFF_FFFF
        } else {
            let Some((gpa, _, _)) = self.g.vcpu.translate(gva_page) else {
                return Ok((TranslateGvaResult::PageNotPresent, 0));
            };
            let pte = self
                .g
                .paging
                .as_ref()
                .and_then(|p| p.lookup(&self.g.mem, gva_page))
                .map(|(_, e)| e)
                .ok_or_else(|| {
                    format!("KVM_TRANSLATE maps {gva_page:#x} but the page tables do not")
                })?;
            let user = self.cpl() == 3 && !flags.contains(TranslateGvaFlags::PRIVILEGE_EXEMPT);
            let us = pte & PTE_US != 0;
            let rw = pte & PTE_RW != 0;
            let nx = pte & PTE_NX != 0 && self.regs.efer & EFER_NXE != 0;
            let cr4 = self.regs.cr[3];
            let exec = flags.contains(TranslateGvaFlags::VALIDATE_EXECUTE);
            let write = flags.contains(TranslateGvaFlags::VALIDATE_WRITE);
            let smap = cr4 & CR4_SMAP != 0
                && !user
                && us
                && !exec
                && (flags.contains(TranslateGvaFlags::ENFORCE_SMAP)
                    || (self.regs.rflags & RFLAGS_AC == 0
                        && !flags.contains(TranslateGvaFlags::OVERRIDE_SMAP)));
            let violation = (user && !us)
                || (write && !rw && (user || cr0 & CR0_WP != 0))
                || (exec && nx)
                || (exec && !user && us && cr4 & CR4_SMEP != 0)
                || smap;
            if violation {
                return Ok((TranslateGvaResult::PrivilegeViolation, 0));
            }
            gpa & !0xFFF
        };
        let code = if self.g.mem.is_ram(gpa, 0x1000) {
            TranslateGvaResult::Success
        } else {
            TranslateGvaResult::GpaUnmapped
        };
        Ok((code, gpa))
    }
}

// ---------------------------------------------------------------------------------------------
// Running hvemu
// ---------------------------------------------------------------------------------------------

/// What the exit said about the access (or, when KVM faulted without an exit, what the
/// instruction says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitInfo {
    Mmio {
        gpa: u64,
        is_write: bool,
        /// Linear address of the access, when the driver could tell (see [`exit_gva`]).
        gva: Option<u64>,
    },
    Io {
        port: u16,
        size: u8,
        is_write: bool,
        string: bool,
        rep: bool,
    },
}

/// How the instruction bytes reach hvemu.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bytes {
    /// The 16 bytes at RIP, as a hypervisor captures them.
    Full,
    /// Exactly the instruction.
    Exact,
    /// Only the first byte: hvemu fetches the rest.
    One,
    /// None: hvemu fetches the instruction.
    Absent,
}

/// One way of presenting the exit to hvemu.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    pub name: &'static str,
    pub bytes: Bytes,
    /// Pass the GVA (when known) as valid.
    pub gva: bool,
    /// `instruction_length` = 15 instead of the decoded length (hvemu must ignore it).
    pub len15: bool,
    pub max_rep: u32,
    /// Enter through `emulate_mmio` even for a port instruction (INS/OUTS on MMIO).
    pub force_mmio: bool,
}

pub const PRIMARY: Variant = Variant {
    name: "bytes16",
    bytes: Bytes::Full,
    gva: false,
    len15: false,
    max_rep: 1 << 16,
    force_mmio: false,
};

/// The variants run beside [`PRIMARY`]; each must give the same result.
pub const VARIANTS: [Variant; 5] = [
    Variant {
        name: "fetch+len15",
        bytes: Bytes::Absent,
        len15: true,
        ..PRIMARY
    },
    Variant {
        name: "one-byte",
        bytes: Bytes::One,
        ..PRIMARY
    },
    Variant {
        name: "exact+gva",
        bytes: Bytes::Exact,
        gva: true,
        ..PRIMARY
    },
    Variant {
        name: "rep-budget-1",
        max_rep: 1,
        ..PRIMARY
    },
    Variant {
        name: "via-emulate_mmio",
        force_mmio: true,
        ..PRIMARY
    },
];

/// How hvemu's emulation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HvOutcome {
    Completed,
    Exception(Exception),
    /// Any other error (unsupported instruction, callback failure ...), as text.
    Error(String),
}

/// Everything one hvemu run did.
#[derive(Clone, Debug)]
pub struct HvRun {
    pub variant: &'static str,
    pub outcome: HvOutcome,
    /// Calls that ended `Completion::Partial` before the final one.
    pub partials: u32,
    pub accesses: Vec<Access>,
    pub ram_writes: BTreeMap<u64, u8>,
    pub sets: Vec<(RegisterName, RegisterValue)>,
    pub set_calls: u32,
    /// Registers after every commit.
    pub regs: RegisterFile,
}

/// The operands of a decoded instruction that name memory.
fn memory_operands(i: &Instruction) -> Vec<u32> {
    (0..i.op_count())
        .filter(|&n| {
            matches!(
                i.op_kind(n),
                OpKind::Memory
                    | OpKind::MemorySegSI
                    | OpKind::MemorySegESI
                    | OpKind::MemorySegRSI
                    | OpKind::MemoryESDI
                    | OpKind::MemoryESEDI
                    | OpKind::MemoryESRDI
            )
        })
        .collect()
}

fn is_port_instruction(i: &Instruction) -> bool {
    matches!(
        i.mnemonic(),
        Mnemonic::In
            | Mnemonic::Out
            | Mnemonic::Insb
            | Mnemonic::Insw
            | Mnemonic::Insd
            | Mnemonic::Outsb
            | Mnemonic::Outsw
            | Mnemonic::Outsd
    )
}

/// Linear addresses of the instruction's memory operands (first element for strings).
pub fn operand_linears(snap: &Snapshot, i: &Instruction) -> Vec<u64> {
    let f = snap.register_file();
    let long = snap.long64();
    memory_operands(i)
        .into_iter()
        .filter_map(|op| {
            i.virtual_address(op, 0, |reg, _, _| {
                let seg = match reg {
                    Register::ES => Some(Segment::Es),
                    Register::CS => Some(Segment::Cs),
                    Register::SS => Some(Segment::Ss),
                    Register::DS => Some(Segment::Ds),
                    Register::FS => Some(Segment::Fs),
                    Register::GS => Some(Segment::Gs),
                    _ => None,
                };
                if let Some(s) = seg {
                    let base = f.segments[s as usize].base;
                    return Some(if long && !matches!(s, Segment::Fs | Segment::Gs) {
                        0
                    } else {
                        base
                    });
                }
                let full = reg.full_register();
                let n = (full as u32).checked_sub(Register::RAX as u32)? as usize;
                if n >= 16 {
                    return None;
                }
                let v = f.gpr[n];
                Some(match reg.size() {
                    1 if matches!(
                        reg,
                        Register::AH | Register::CH | Register::DH | Register::BH
                    ) =>
                    {
                        (v >> 8) & 0xFF
                    }
                    1 => v & 0xFF,
                    2 => v & 0xFFFF,
                    4 => v & 0xFFFF_FFFF,
                    _ => v,
                })
            })
            .map(|la| if long { la } else { la & 0xFFFF_FFFF })
        })
        .collect()
}

/// The linear address of the access at `exit_gpa`, if it is the first element of one of the
/// instruction's memory operands (or the part of one that starts a page).
pub fn exit_gva(g: &Guest, snap: &Snapshot, i: &Instruction, exit_gpa: u64) -> Option<u64> {
    let size = (i.memory_size().size() as u64).max(1);
    for la in operand_linears(snap, i) {
        let mut cands = vec![la];
        let next_page = (la & !0xFFF).wrapping_add(0x1000);
        if (la & 0xFFF) + size > 0x1000 {
            cands.push(if snap.long64() {
                next_page
            } else {
                next_page & 0xFFFF_FFFF
            });
        }
        for c in cands {
            if linear_to_gpa(g, snap, c) == Some(exit_gpa) {
                return Some(c);
            }
        }
    }
    None
}

/// The exit info a fault-free instruction would give, for when KVM faulted without one.
pub fn synthesized_exit(g: &Guest, snap: &Snapshot, i: &Instruction) -> ExitInfo {
    if is_port_instruction(i) {
        let string = !memory_operands(i).is_empty();
        let size = if string {
            i.memory_size().size()
        } else if i.mnemonic() == Mnemonic::In {
            i.op0_register().size()
        } else {
            i.op1_register().size()
        } as u8;
        let port = if i.op_kind(0) == OpKind::Immediate8 || i.op_kind(1) == OpKind::Immediate8 {
            i.immediate8() as u16
        } else {
            snap.regs.rdx as u16
        };
        return ExitInfo::Io {
            port,
            size,
            is_write: matches!(
                i.mnemonic(),
                Mnemonic::Out | Mnemonic::Outsb | Mnemonic::Outsw | Mnemonic::Outsd
            ),
            string,
            rep: i.has_rep_prefix() || i.has_repne_prefix(),
        };
    }
    // The first device access of an instruction that reads memory is a read (the read of a
    // read-modify-write comes first); an instruction that only writes exits on a write.
    let is_write = !iced_x86::InstructionInfoFactory::new()
        .info(i)
        .used_memory()
        .iter()
        .any(|m| {
            matches!(
                m.access(),
                iced_x86::OpAccess::Read
                    | iced_x86::OpAccess::CondRead
                    | iced_x86::OpAccess::ReadWrite
                    | iced_x86::OpAccess::ReadCondWrite
            )
        });
    let gpa = operand_linears(snap, i)
        .first()
        .and_then(|&la| linear_to_gpa(g, snap, la))
        .unwrap_or(0);
    ExitInfo::Mmio {
        gpa,
        is_write,
        gva: None,
    }
}

/// The decoded instruction under test, with its bytes and the exit to present.
pub struct Ctx {
    pub instr: Instruction,
    pub bytes: Vec<u8>,
    pub exit: ExitInfo,
}

/// Runs hvemu on the snapshot as `variant` says, re-running after each partial completion
/// (as the guest would re-execute the instruction) until it completes or fails.
pub fn run_hvemu(
    g: &Guest,
    pre: &Snapshot,
    devices: &Devices,
    ctx: &Ctx,
    variant: Variant,
    vendor: Vendor,
) -> HvRun {
    let mut m = HvMachine::new(g, pre.register_file(), devices.clone());
    m.devices.log.clear();
    let config = Config::default()
        .with_vendor(vendor)
        .with_max_rep_iterations(variant.max_rep);
    let len = ctx.instr.len() as u8;
    let mut partials = 0;
    let outcome = loop {
        let first = partials == 0;
        let vp = exit_context(&m.regs, if variant.len15 { 15 } else { len });
        let bytes: &[u8] = match (first, variant.bytes) {
            (false, _) | (_, Bytes::Absent) => &[],
            (true, Bytes::Full) => &ctx.bytes,
            (true, Bytes::Exact) => &ctx.bytes[..ctx.bytes.len().min(len as usize)],
            (true, Bytes::One) => &ctx.bytes[..ctx.bytes.len().min(1)],
        };
        let port = is_port_instruction(&ctx.instr);
        let use_io = port && !variant.force_mmio;
        if variant.force_mmio && !(port && matches!(ctx.exit, ExitInfo::Mmio { .. })) {
            // Only meaningful for INS/OUTS whose first exit was the memory side.
            break HvOutcome::Error("variant not applicable".into());
        }
        let result = if use_io {
            let (port_number, access_info) = match ctx.exit {
                ExitInfo::Io {
                    port,
                    size,
                    is_write,
                    string,
                    rep,
                } => (
                    port,
                    if string {
                        IoPortAccessInfo::string(is_write, size, rep)
                    } else {
                        IoPortAccessInfo::new(is_write, size)
                    },
                ),
                ExitInfo::Mmio { .. } => match synthesized_exit(g, pre, &ctx.instr) {
                    ExitInfo::Io {
                        port,
                        size,
                        is_write,
                        rep,
                        ..
                    } => (port, IoPortAccessInfo::string(is_write, size, rep)),
                    ExitInfo::Mmio { .. } => unreachable!(),
                },
            };
            let mut io = IoPortAccessContext::new(bytes, access_info, port_number);
            io.rax = m.regs.gpr[0];
            io.rcx = m.regs.gpr[1];
            io.rsi = m.regs.gpr[6];
            io.rdi = m.regs.gpr[7];
            io.ds = m.regs.segments[Segment::Ds as usize];
            io.es = m.regs.segments[Segment::Es as usize];
            Emulator::with_config(&mut m, config).emulate_io(&vp, &io)
        } else {
            let (gpa, is_write, gva) = match ctx.exit {
                ExitInfo::Mmio { gpa, is_write, gva } => (gpa, is_write, gva),
                ExitInfo::Io { .. } => (0, false, None),
            };
            let access = if is_write {
                MemoryAccessType::Write
            } else {
                MemoryAccessType::Read
            };
            let mut mmio = MemoryAccessContext::new(bytes, access, gpa);
            if let (true, true, Some(gva)) = (first, variant.gva, gva) {
                mmio = mmio.with_gva(gva);
            }
            Emulator::with_config(&mut m, config).emulate_mmio(&vp, &mmio)
        };
        match result {
            Ok(Completion::Complete) => break HvOutcome::Completed,
            Ok(Completion::Partial) => {
                partials += 1;
                if partials > 100_000 {
                    break HvOutcome::Error("no progress after 100000 partial completions".into());
                }
            }
            Err(EmulationError::Exception(e)) => break HvOutcome::Exception(e),
            Err(e) => break HvOutcome::Error(format!("{e}")),
            // The harness neither single-steps through hvemu nor configures injection.
            Ok(other) => break HvOutcome::Error(format!("unexpected completion {other:?}")),
        }
    };
    HvRun {
        variant: variant.name,
        outcome,
        partials,
        accesses: m.devices.log.clone(),
        ram_writes: m.ram_writes.clone(),
        sets: m.sets.clone(),
        set_calls: m.set_calls,
        regs: m.regs.clone(),
    }
}

/// Differences between two hvemu runs (for variants, which must agree with the primary).
fn diff_runs(a: &HvRun, b: &HvRun) -> Option<String> {
    let mut d = Vec::new();
    if a.outcome != b.outcome {
        d.push(format!("outcome {:?} vs {:?}", a.outcome, b.outcome));
    }
    if a.accesses != b.accesses {
        d.push(format!("accesses {:x?} vs {:x?}", a.accesses, b.accesses));
    }
    if a.ram_writes != b.ram_writes {
        d.push("RAM writes differ".into());
    }
    if a.regs.gpr != b.regs.gpr || a.regs.rip != b.regs.rip || a.regs.rflags != b.regs.rflags {
        d.push(format!(
            "registers differ: rip {:#x} vs {:#x}, rflags {:#x} vs {:#x}, gpr {:x?} vs {:x?}",
            a.regs.rip, b.regs.rip, a.regs.rflags, b.regs.rflags, a.regs.gpr, b.regs.gpr
        ));
    }
    (!d.is_empty()).then(|| format!("variant {} vs {}: {}", b.variant, a.variant, d.join("; ")))
}

// ---------------------------------------------------------------------------------------------
// KVM's side
// ---------------------------------------------------------------------------------------------

/// How KVM's execution of the instruction ended.
#[derive(Clone, Debug)]
pub enum KvmOutcome {
    /// Completed; registers after the instruction (RIP corrected for the marker).
    Completed(Snapshot),
    /// The guest took an exception (its handler halted); GPRs as the handler left them.
    Exception(ExceptionRecord, Snapshot),
    /// KVM could not run it (internal error: emulate.c lacks the instruction, ...).
    Failed(String),
}

/// Answers KVM's reads with the data hvemu's reads got, in order, per address space.
#[derive(Clone, Copy, Debug, Default)]
struct Replay {
    mmio: usize,
    port: usize,
}

impl Replay {
    /// The value of hvemu's next access in `space`, if it is this one.
    fn next(
        &mut self,
        log: &[Access],
        space: Space,
        addr: u64,
        size: u8,
        is_write: bool,
    ) -> Option<u64> {
        let cursor = match space {
            Space::Mmio => &mut self.mmio,
            Space::Port => &mut self.port,
        };
        let pos = log[*cursor..]
            .iter()
            .position(|a| a.space == space)
            .map(|p| p + *cursor)?;
        let a = log[pos];
        if a.addr == addr && a.size == size && a.is_write == is_write {
            *cursor = pos + 1;
            Some(a.value)
        } else {
            None
        }
    }
}

/// Services one KVM device exit: logs it in `dev` and, for reads, answers with the replayed
/// value (or the device's own when hvemu made no such read). Returns false for the marker.
fn kvm_service(
    g: &mut Guest,
    exit: &Exit,
    dev: &mut Devices,
    log: &[Access],
    replay: &mut Replay,
) -> bool {
    match exit {
        Exit::Io {
            port,
            is_write: true,
            size: 1,
            ..
        } if *port == MARKER_PORT as u16 => false,
        Exit::Mmio {
            gpa,
            len,
            is_write: true,
            data,
        } => {
            let _ = replay.next(log, Space::Mmio, *gpa, *len as u8, true);
            dev.mmio_write(*gpa, &data[..*len]);
            true
        }
        Exit::Mmio {
            gpa,
            len,
            is_write: false,
            ..
        } => {
            let mut buf = vec![0; *len];
            match replay.next(log, Space::Mmio, *gpa, *len as u8, false) {
                Some(v) => {
                    buf.copy_from_slice(&v.to_le_bytes()[..*len]);
                    dev.log.push(Access::mmio_read(*gpa, *len as u8, le(&buf)));
                }
                None => dev.mmio_read(*gpa, &mut buf),
            }
            g.vcpu.complete_read(&buf);
            true
        }
        Exit::Io {
            port,
            size,
            is_write: true,
            data,
            ..
        } => {
            for chunk in data.chunks(*size as usize) {
                let _ = replay.next(log, Space::Port, *port as u64, *size, true);
                dev.port_out(*port, *size, le(chunk) as u32);
            }
            true
        }
        Exit::Io {
            port,
            size,
            is_write: false,
            count,
            ..
        } => {
            let mut buf = Vec::new();
            for _ in 0..*count {
                let v = match replay.next(log, Space::Port, *port as u64, *size, false) {
                    Some(v) => {
                        dev.skip_port_read(*port);
                        dev.log.push(Access::port_read(*port, *size, v));
                        v as u32
                    }
                    None => dev.port_in(*port, *size),
                };
                buf.extend_from_slice(&v.to_le_bytes()[..*size as usize]);
            }
            g.vcpu.complete_read(&buf);
            true
        }
        _ => unreachable!("not a device exit"),
    }
}

fn is_device_exit(e: &Exit) -> bool {
    matches!(e, Exit::Mmio { .. } | Exit::Io { .. })
}

fn is_marker(e: &Exit) -> bool {
    matches!(e, Exit::Io { port, is_write: true, size: 1, .. } if *port == MARKER_PORT as u16)
}

// ---------------------------------------------------------------------------------------------
// One compared instruction
// ---------------------------------------------------------------------------------------------

/// The verdict on one instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Agree,
    Disagree(Vec<String>),
    /// KVM could not execute the instruction: no judgement.
    KvmCannotJudge(String),
}

/// Everything about one compared instruction.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub label: String,
    pub rip: u64,
    pub bitness: u32,
    pub text: String,
    pub code: iced_x86::Code,
    pub address_size: u32,
    /// KVM exits for device accesses made by this instruction (marker excluded).
    pub kvm_exits: usize,
    pub kvm_accesses: Vec<Access>,
    pub hv: HvRun,
    pub kvm: KvmOutcome,
    /// Registers hvemu changed (name, value), in commit order.
    pub verdict: Verdict,
    /// Observations that are not disagreements (KVM quirks).
    pub notes: Vec<String>,
}

impl StepReport {
    pub fn agrees(&self) -> bool {
        self.verdict == Verdict::Agree
    }
}

/// The address size of an instruction's memory operand, in bits (0 if none).
pub fn address_size(i: &Instruction) -> u32 {
    let Some(&op) = memory_operands(i).first() else {
        return 0;
    };
    match i.op_kind(op) {
        OpKind::MemorySegSI | OpKind::MemoryESDI => 16,
        OpKind::MemorySegESI | OpKind::MemoryESEDI => 32,
        OpKind::MemorySegRSI | OpKind::MemoryESRDI => 64,
        _ => {
            let b = i.memory_base();
            let x = i.memory_index();
            if b == Register::RIP {
                64
            } else if b == Register::EIP {
                32
            } else if b != Register::None {
                8 * b.size() as u32
            } else if x != Register::None {
                8 * x.size() as u32
            } else {
                8 * i.memory_displ_size()
            }
        }
    }
}

/// Per-space access lists.
fn split(log: &[Access]) -> (Vec<Access>, Vec<Access>) {
    (
        log.iter()
            .copied()
            .filter(|a| a.space == Space::Mmio)
            .collect(),
        log.iter()
            .copied()
            .filter(|a| a.space == Space::Port)
            .collect(),
    )
}

/// Compares hvemu's run with KVM's execution.
fn judge(
    g: &Guest,
    pre: &Snapshot,
    hv: &HvRun,
    kvm: &KvmOutcome,
    kvm_log: &[Access],
    watch: &[(u64, Vec<u8>)],
    notes: &mut Vec<String>,
) -> Verdict {
    let mut d = Vec::new();
    let (hm, hp) = split(&hv.accesses);
    let (km, kp) = split(kvm_log);
    if hm != km {
        d.push(format!("MMIO accesses: hvemu {hm:x?}, KVM {km:x?}"));
    }
    if hp != kp {
        d.push(format!("port accesses: hvemu {hp:x?}, KVM {kp:x?}"));
    }
    if d.is_empty() && hv.accesses != kvm_log {
        notes.push(format!(
            "same accesses per space, different interleaving: hvemu {:x?}, KVM {:x?}",
            hv.accesses, kvm_log
        ));
    }
    // Guest RAM: hvemu's writes must be there; watched bytes hvemu did not write unchanged.
    for (&a, &v) in &hv.ram_writes {
        let now = g.mem.read_u8(a);
        if now != v {
            d.push(format!(
                "RAM {a:#x}: hvemu wrote {v:#04x}, KVM left {now:#04x}"
            ));
            break;
        }
    }
    for (start, before) in watch {
        for (k, &b) in before.iter().enumerate() {
            let a = start + k as u64;
            if !hv.ram_writes.contains_key(&a) && g.mem.read_u8(a) != b {
                d.push(format!(
                    "RAM {a:#x}: KVM wrote {:#04x}, hvemu did not write it",
                    g.mem.read_u8(a)
                ));
                break;
            }
        }
    }
    let compare_gprs = |post: &Snapshot, skip_rsp: bool, d: &mut Vec<String>| {
        let k = gprs(&post.regs);
        for n in 0..16 {
            if skip_rsp && n == 4 {
                continue;
            }
            if hv.regs.gpr[n] != k[n] {
                let set = hv.sets.iter().any(|(r, _)| r.0 == n as u32);
                d.push(format!(
                    "{}: hvemu {:#x}{}, KVM {:#x} (before {:#x})",
                    GPR_NAMES[n],
                    hv.regs.gpr[n],
                    if set { " (set)" } else { " (untouched)" },
                    k[n],
                    gprs(&pre.regs)[n]
                ));
            }
        }
    };
    match (&hv.outcome, kvm) {
        (_, KvmOutcome::Failed(why)) => return Verdict::KvmCannotJudge(why.clone()),
        (HvOutcome::Completed, KvmOutcome::Completed(post)) => {
            compare_gprs(post, false, &mut d);
            if hv.regs.rip != post.regs.rip {
                d.push(format!(
                    "rip: hvemu {:#x}, KVM {:#x}",
                    hv.regs.rip, post.regs.rip
                ));
            }
            if hv.regs.rflags != post.regs.rflags {
                d.push(format!(
                    "rflags: hvemu {:#x}, KVM {:#x} (before {:#x}, differing bits {:#x})",
                    hv.regs.rflags,
                    post.regs.rflags,
                    pre.regs.rflags,
                    hv.regs.rflags ^ post.regs.rflags
                ));
            }
        }
        (HvOutcome::Exception(e), KvmOutcome::Exception(rec, now)) => {
            let real = !pre.protected();
            if rec.vector != e.vector as u8 {
                d.push(format!(
                    "exception: hvemu {e}, KVM vector {} error code {:#x}",
                    rec.vector, rec.error_code
                ));
            } else {
                if !real && crate::kvm::tables::has_error_code(rec.vector) {
                    let code = e.error_code.unwrap_or(0) as u64;
                    if code != rec.error_code {
                        d.push(format!(
                            "error code: hvemu {code:#x}, KVM {:#x}",
                            rec.error_code
                        ));
                    }
                }
                if rec.vector == 14 && e.cr2 != Some(rec.cr2) {
                    d.push(format!("CR2: hvemu {:x?}, KVM {:#x}", e.cr2, rec.cr2));
                }
            }
            if rec.rip != pre.regs.rip {
                notes.push(format!(
                    "KVM's exception frame RIP {:#x} is not the instruction's {:#x}",
                    rec.rip, pre.regs.rip
                ));
            }
            if rec.count != 1 {
                d.push(format!("KVM took {} exceptions (nested)", rec.count));
            }
            compare_gprs(now, true, &mut d);
        }
        (h, k) => {
            let kd = match k {
                KvmOutcome::Completed(_) => "completed".to_string(),
                KvmOutcome::Exception(rec, _) => format!(
                    "took vector {} error code {:#x} cr2 {:#x}",
                    rec.vector, rec.error_code, rec.cr2
                ),
                KvmOutcome::Failed(w) => w.clone(),
            };
            d.push(format!("hvemu {h:?}, KVM {kd}"));
        }
    }
    if d.is_empty() {
        Verdict::Agree
    } else {
        Verdict::Disagree(d)
    }
}

/// Settings of a session.
#[derive(Clone, Debug)]
pub struct Options {
    /// Also run the [`VARIANTS`] and require them to agree with the primary run.
    pub variants: bool,
    pub vendor: Vendor,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            variants: true,
            vendor: host_vendor(),
        }
    }
}

/// What a case hands to [`Session::run_case`]: the state to set up before the instruction.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub label: String,
    /// Where the instruction (followed by the marker) is placed: RIP, i.e. an offset in CS.
    pub rip: u64,
    /// Machine code: the instruction under test followed by [`MARKER`].
    pub code: Vec<u8>,
    pub gprs: [u64; 16],
    pub rflags: u64,
    pub segs: Vec<(Segment, kvm_segment)>,
    /// TR override.
    pub tr: Option<kvm_segment>,
    pub cr0_or: u64,
    pub ram: Vec<(u64, Vec<u8>)>,
    /// RAM ranges whose bytes hvemu did not write must be left unchanged by KVM.
    pub watch: Vec<Range<u64>>,
    /// MMIO bytes preset in the devices (not logged).
    pub mmio: Vec<(u64, Vec<u8>)>,
    /// More code: (RIP, bytes), e.g. a marker at a branch target.
    pub extra_code: Vec<(u64, Vec<u8>)>,
    /// Ports denied in the TSS I/O bitmap for this case.
    pub io_deny: Vec<u16>,
    /// Run hvemu before KVM (for instructions expected to fault).
    pub hvemu_first: bool,
    pub seed: u64,
}

/// Totals over a session.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub instructions: usize,
    pub agree: usize,
    pub disagree: usize,
    pub kvm_cannot_judge: usize,
    pub faults: usize,
    pub kvm_exits: usize,
    pub forms: std::collections::BTreeSet<(String, u32)>,
    /// hvemu runs per variant of the exit context.
    pub variant_runs: BTreeMap<&'static str, usize>,
}

/// A guest under comparison.
pub struct Session<'g> {
    pub g: &'g mut Guest,
    base_regs: kvm_regs,
    base_sregs: kvm_sregs,
    pub options: Options,
    pub stats: Stats,
    /// The devices of [`Session::run_program`], kept from one instruction to the next.
    program_devices: Devices,
}

impl<'g> Session<'g> {
    /// Starts a session on a freshly built guest (its current state is the base every case
    /// starts from).
    pub fn new(g: &'g mut Guest, options: Options) -> Self {
        let base_regs = g.vcpu.regs();
        let base_sregs = g.vcpu.sregs();
        Session {
            g,
            base_regs,
            base_sregs,
            options,
            stats: Stats::default(),
            program_devices: Devices::new(0x5EED),
        }
    }

    pub fn base_sregs(&self) -> &kvm_sregs {
        &self.base_sregs
    }

    pub fn base_regs(&self) -> &kvm_regs {
        &self.base_regs
    }

    /// Sets the state up, lets KVM run the instruction and hvemu emulate it, and compares.
    pub fn run_case(&mut self, s: &Setup) -> StepReport {
        // State.
        let code_linear = if self.g.mode.bitness() == 64 {
            s.rip
        } else {
            self.base_sregs.cs.base + s.rip
        };
        // Through the page tables: code may sit on aliased or partly unmapped pages.
        let base = Snapshot {
            regs: self.base_regs,
            sregs: self.base_sregs,
        };
        let cs_base = code_linear - s.rip;
        for (rip, code) in
            std::iter::once((s.rip, &s.code)).chain(s.extra_code.iter().map(|(r, c)| (*r, c)))
        {
            for (i, b) in code.iter().enumerate() {
                let la = cs_base + rip + i as u64;
                if let Some(gpa) = linear_to_gpa(self.g, &base, la) {
                    if self.g.mem.is_ram(gpa, 1) {
                        self.g.mem.write_u8(gpa, *b);
                    }
                }
            }
        }
        let saved: Vec<(u64, Vec<u8>)> = s
            .ram
            .iter()
            .map(|(a, bytes)| (*a, self.g.mem.read(*a, bytes.len())))
            .collect();
        for (a, bytes) in &s.ram {
            self.g.mem.write(*a, bytes);
        }
        let watch: Vec<(u64, Vec<u8>)> = s
            .watch
            .iter()
            .map(|r| {
                (
                    r.start,
                    self.g.mem.read(r.start, (r.end - r.start) as usize),
                )
            })
            .collect();
        for &p in &s.io_deny {
            self.g.set_io_permission(p, false);
        }
        let mut sregs = self.base_sregs;
        for (seg, v) in &s.segs {
            *sreg_mut(&mut sregs, *seg) = *v;
        }
        if let Some(tr) = s.tr {
            sregs.tr = tr;
        }
        sregs.cr0 |= s.cr0_or;
        self.g.vcpu.set_sregs(&sregs);
        let mut regs = self.base_regs;
        set_gprs(&mut regs, s.gprs);
        regs.rip = s.rip;
        regs.rflags = 0x2 | s.rflags;
        self.g.vcpu.set_regs(&regs);
        self.g.clear_exception_record();
        let pre = Snapshot::take(self.g);

        let report = self.step(&pre, s, &watch);
        for &p in &s.io_deny {
            self.g.set_io_permission(p, true);
        }
        for (a, bytes) in saved.iter().rev() {
            self.g.mem.write(*a, bytes);
        }
        report
    }

    fn step(&mut self, pre: &Snapshot, s: &Setup, watch: &[(u64, Vec<u8>)]) -> StepReport {
        let (instr, bytes) = decode_at(self.g, pre).unwrap_or_else(|| {
            // The code runs into unmapped memory (a fetch fault): decode what was placed, and
            // give hvemu only the bytes that are there.
            let mut d =
                Decoder::with_ip(pre.bitness(), &s.code, pre.regs.rip, DecoderOptions::NONE);
            let bytes = read_linear(self.g, pre, pre.linear_ip(), 16);
            (d.decode(), bytes)
        });
        let mut devices = Devices::new(s.seed);
        for (a, bytes) in &s.mmio {
            devices.preset(*a, bytes);
        }
        let devices = devices;
        let mut runs: Option<Vec<HvRun>> = None;
        let vendor = self.options.vendor;
        let variants = self.options.variants;
        let run_all = |g: &Guest, ctx: &Ctx| -> Vec<HvRun> {
            let mut v = vec![run_hvemu(g, pre, &devices, ctx, PRIMARY, vendor)];
            if variants {
                for var in VARIANTS {
                    if var.gva && !matches!(ctx.exit, ExitInfo::Mmio { gva: Some(_), .. }) {
                        continue;
                    }
                    if var.max_rep == 1 && !(instr.has_rep_prefix() || instr.has_repne_prefix()) {
                        continue;
                    }
                    if var.force_mmio
                        && !(is_port_instruction(&instr)
                            && matches!(ctx.exit, ExitInfo::Mmio { .. }))
                    {
                        continue;
                    }
                    v.push(run_hvemu(g, pre, &devices, ctx, var, vendor));
                }
            }
            v
        };
        if s.hvemu_first {
            let ctx = Ctx {
                instr,
                bytes: bytes.clone(),
                exit: synthesized_exit(self.g, pre, &instr),
            };
            runs = Some(run_all(self.g, &ctx));
        }

        // KVM runs the instruction; hvemu runs at its first device exit.
        let mut kvm_dev = devices.clone();
        let mut notes = Vec::new();
        let mut kvm_exits = 0;
        let mut exit = self.g.run_until_exit();
        let mut first_exit = true;
        let mut replay = Replay::default();
        let outcome = loop {
            if is_device_exit(&exit) && !is_marker(&exit) {
                if runs.is_none() {
                    let info = match &exit {
                        Exit::Mmio { gpa, is_write, .. } => ExitInfo::Mmio {
                            gpa: *gpa,
                            is_write: *is_write,
                            gva: exit_gva(self.g, pre, &instr, *gpa),
                        },
                        Exit::Io {
                            port,
                            size,
                            is_write,
                            ..
                        } => {
                            let string = !memory_operands(&instr).is_empty();
                            ExitInfo::Io {
                                port: *port,
                                size: *size,
                                is_write: *is_write,
                                string,
                                rep: instr.has_rep_prefix() || instr.has_repne_prefix(),
                            }
                        }
                        _ => unreachable!(),
                    };
                    let ctx = Ctx {
                        instr,
                        bytes: bytes.clone(),
                        exit: info,
                    };
                    runs = Some(run_all(self.g, &ctx));
                }
                if first_exit {
                    first_exit = false;
                    let at_exit = self.g.vcpu.regs();
                    if matches!(
                        exit,
                        Exit::Mmio {
                            is_write: false,
                            ..
                        }
                    ) && (at_exit.rip != pre.regs.rip || at_exit.rflags != pre.regs.rflags)
                    {
                        notes.push(format!(
                            "KVM at the read exit: rip {:#x} rflags {:#x} (before: {:#x} {:#x})",
                            at_exit.rip, at_exit.rflags, pre.regs.rip, pre.regs.rflags
                        ));
                    }
                }
                let hv_log = &runs.as_ref().unwrap()[0].accesses;
                kvm_service(self.g, &exit, &mut kvm_dev, hv_log, &mut replay);
                kvm_exits += 1;
                exit = self.g.run_until_exit();
                continue;
            }
            match exit {
                ref e if is_marker(e) => {
                    let mut post = Snapshot::take(self.g);
                    // Let KVM finish the marker before anyone touches the state.
                    self.g.vcpu.set_immediate_exit(true);
                    let fin = self.g.run_until_exit();
                    self.g.vcpu.set_immediate_exit(false);
                    assert_eq!(fin, Exit::Interrupted, "finishing the marker");
                    post.regs.rip = post.regs.rip.wrapping_sub(MARKER.len() as u64);
                    break KvmOutcome::Completed(post);
                }
                Exit::Hlt if self.g.in_exception_handler() => {
                    let now = Snapshot::take(self.g);
                    match self.g.exception_record() {
                        Some(rec) => break KvmOutcome::Exception(rec, now),
                        None => break KvmOutcome::Failed("halted in a handler, no record".into()),
                    }
                }
                Exit::InternalError { suberror, ref data } => {
                    break KvmOutcome::Failed(format!(
                        "KVM_EXIT_INTERNAL_ERROR suberror {suberror} data {data:x?}"
                    ));
                }
                ref other => {
                    break KvmOutcome::Failed(format!(
                        "unexpected exit {other:?} at rip {:#x}",
                        self.g.vcpu.rip()
                    ));
                }
            }
        };
        let runs = runs.unwrap_or_else(|| {
            // KVM made no device access: let hvemu tell what it would do.
            let ctx = Ctx {
                instr,
                bytes: bytes.clone(),
                exit: synthesized_exit(self.g, pre, &instr),
            };
            run_all(self.g, &ctx)
        });
        let hv = runs[0].clone();
        for r in &runs {
            *self.stats.variant_runs.entry(r.variant).or_insert(0) += 1;
        }
        let mut verdict = judge(self.g, pre, &hv, &outcome, &kvm_dev.log, watch, &mut notes);
        let variant_diffs: Vec<String> = runs[1..]
            .iter()
            .filter(|r| r.outcome != HvOutcome::Error("variant not applicable".into()))
            .filter_map(|r| diff_runs(&hv, r))
            .collect();
        if !variant_diffs.is_empty() {
            match &mut verdict {
                Verdict::Disagree(d) => d.extend(variant_diffs),
                _ => verdict = Verdict::Disagree(variant_diffs),
            }
        }
        let report = StepReport {
            label: s.label.clone(),
            rip: pre.regs.rip,
            bitness: pre.bitness(),
            text: format_instr(&instr),
            code: instr.code(),
            address_size: address_size(&instr),
            kvm_exits,
            kvm_accesses: kvm_dev.log.clone(),
            hv,
            kvm: outcome,
            verdict,
            notes,
        };
        self.account(&report);
        report
    }

    fn account(&mut self, r: &StepReport) {
        self.stats.instructions += 1;
        self.stats.kvm_exits += r.kvm_exits;
        match r.verdict {
            Verdict::Agree => self.stats.agree += 1,
            Verdict::Disagree(_) => self.stats.disagree += 1,
            Verdict::KvmCannotJudge(_) => self.stats.kvm_cannot_judge += 1,
        }
        if matches!(r.kvm, KvmOutcome::Exception(..)) {
            self.stats.faults += 1;
        }
        self.stats
            .forms
            .insert((format!("{:?}", r.code), r.address_size));
    }

    /// Runs the loaded guest program from its current state with single-stepping (CPL 0
    /// only), comparing every instruction that makes a device access, until HLT (which is
    /// not executed), a fault, or `max_steps` instructions.
    pub fn run_program(&mut self, max_steps: usize) -> Vec<StepReport> {
        let mut out = Vec::new();
        self.g.vcpu.set_single_step(true);
        let mut pre = Snapshot::take(self.g);
        for _ in 0..max_steps {
            let Some((instr, bytes)) = decode_at(self.g, &pre) else {
                break;
            };
            if instr.mnemonic() == Mnemonic::Hlt {
                break;
            }
            let exit = self.g.run_until_exit();
            match exit {
                Exit::Debug { .. } => {
                    pre = Snapshot::take(self.g);
                    continue;
                }
                ref e if is_device_exit(e) => {
                    let r = self.program_step(&pre, instr, bytes, e.clone());
                    let done = !matches!(r.kvm, KvmOutcome::Completed(_));
                    out.push(r);
                    if done {
                        break;
                    }
                    pre = Snapshot::take(self.g);
                }
                _ => break,
            }
        }
        self.g.vcpu.set_single_step(false);
        out
    }

    /// One instruction of [`Session::run_program`], from its first device exit.
    fn program_step(
        &mut self,
        pre: &Snapshot,
        instr: Instruction,
        bytes: Vec<u8>,
        first: Exit,
    ) -> StepReport {
        let info = match &first {
            Exit::Mmio { gpa, is_write, .. } => ExitInfo::Mmio {
                gpa: *gpa,
                is_write: *is_write,
                gva: exit_gva(self.g, pre, &instr, *gpa),
            },
            Exit::Io {
                port,
                size,
                is_write,
                ..
            } => ExitInfo::Io {
                port: *port,
                size: *size,
                is_write: *is_write,
                string: !memory_operands(&instr).is_empty(),
                rep: instr.has_rep_prefix() || instr.has_repne_prefix(),
            },
            _ => unreachable!(),
        };
        let mut devices = self.program_devices.clone();
        devices.log.clear();
        let ctx = Ctx {
            instr,
            bytes,
            exit: info,
        };
        let hv = run_hvemu(self.g, pre, &devices, &ctx, PRIMARY, self.options.vendor);
        let mut kvm_dev = devices.clone();
        let mut exit = first;
        let mut kvm_exits = 0;
        let mut replay = Replay::default();
        let outcome = loop {
            if is_device_exit(&exit) {
                kvm_service(self.g, &exit, &mut kvm_dev, &hv.accesses, &mut replay);
                kvm_exits += 1;
                // Finish the instruction without starting the next one.
                self.g.vcpu.set_immediate_exit(true);
                exit = self.g.run_until_exit();
                self.g.vcpu.set_immediate_exit(false);
                continue;
            }
            match exit {
                Exit::Interrupted if self.g.vcpu.rip() == pre.regs.rip => {
                    // A REP between elements (or done with RCX = 0 but not yet past it):
                    // one more single step continues it.
                    exit = self.g.run_until_exit();
                }
                Exit::Interrupted | Exit::Debug { .. } => {
                    break KvmOutcome::Completed(Snapshot::take(self.g));
                }
                Exit::Hlt if self.g.in_exception_handler() => {
                    let now = Snapshot::take(self.g);
                    match self.g.exception_record() {
                        Some(rec) => break KvmOutcome::Exception(rec, now),
                        None => break KvmOutcome::Failed("halted in a handler, no record".into()),
                    }
                }
                ref other => break KvmOutcome::Failed(format!("unexpected exit {other:?}")),
            }
        };
        let mut notes = Vec::new();
        let verdict = judge(self.g, pre, &hv, &outcome, &kvm_dev.log, &[], &mut notes);
        // KVM's side of the devices is what the guest really did.
        self.program_devices = kvm_dev.clone();
        let report = StepReport {
            label: format!("rip {:#x}", pre.regs.rip),
            rip: pre.regs.rip,
            bitness: pre.bitness(),
            text: format_instr(&instr),
            code: instr.code(),
            address_size: address_size(&instr),
            kvm_exits,
            kvm_accesses: kvm_dev.log.clone(),
            hv,
            kvm: outcome,
            verdict,
            notes,
        };
        self.account(&report);
        report
    }
}

/// A one-line description of the registers hvemu set.
pub fn describe_sets(sets: &[(RegisterName, RegisterValue)]) -> String {
    let mut last: BTreeMap<u32, (RegisterName, RegisterValue)> = BTreeMap::new();
    for (n, v) in sets {
        last.insert(n.0, (*n, *v));
    }
    last.values()
        .map(|(n, v)| match v {
            RegisterValue::U64(x) => format!("{n:?}={x:#x}"),
            other => format!("{n:?}={other:?}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A one-line description of device accesses.
pub fn describe_accesses(log: &[Access]) -> String {
    if log.is_empty() {
        return "none".into();
    }
    log.iter()
        .map(|a| {
            format!(
                "{}{} {:#x}/{} {:#x}",
                match a.space {
                    Space::Mmio => "mmio",
                    Space::Port => "port",
                },
                if a.is_write { "W" } else { "R" },
                a.addr,
                a.size,
                a.value
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
