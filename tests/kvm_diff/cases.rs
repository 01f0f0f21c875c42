//! Generated test cases, one instruction each, organised by instruction family.
//!
//! A [`Case`] is one instruction plus the state it runs in (GPRs, RFLAGS, segment overrides,
//! RAM contents). Generators are functions `fn(&Env, &mut Rng) -> Vec<Case>` listed in
//! [`FAMILIES`]; adding a family (say, shifts when hvemu gains them) is one more function and
//! one more line in that table. Addressing forms come from [`Env::mem`], which builds a memory
//! operand of a chosen form and address size that lands on a chosen linear address, and sets
//! up whatever segment base that needs.
#![allow(dead_code)]

use std::ops::Range;

use hvemu::Segment;
use iced_x86::code_asm::CodeAssembler;
use iced_x86::{Code, Instruction, MemoryOperand, Register, RepPrefixKind};
use kvm_bindings::{kvm_segment, kvm_sregs};

use crate::driver::{MARKER, Setup};
use crate::kvm::layout::{self, HIGH_MMIO, LOW_MMIO};
use crate::kvm::{Mode, PageFlags, tables};

// ---------------------------------------------------------------------------------------------
// Randomness (deterministic)
// ---------------------------------------------------------------------------------------------

/// splitmix64: deterministic, seedable, good enough for picking operands.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// A known KVM (kvm-pvm / emulate.c) deviation from the manuals on a case: the test checks
/// hvemu against the case's [`Expect`], requires its accesses to be element-sized, and
/// tolerates only disagreements whose description starts with one of `allow`.
#[derive(Clone, Copy, Debug)]
pub struct KvmBug {
    pub why: &'static str,
    pub allow: &'static [&'static str],
}

pub const KVM_MOVSXD16: KvmBug = KvmBug {
    why: "emulate.c decodes 63 /r as SrcMem32 and reads 4 bytes whatever the operand size; \
          MOVSXD r16, r/m16 reads 2 (SDM Vol. 2B MOVSXD; AMD APM Vol. 3 MOVSXD)",
    allow: &["MMIO accesses"],
};
pub const KVM_SREG_STORE64: KvmBug = KvmBug {
    why: "emulate.c em_mov_rm_sreg narrows only a 4-byte memory destination to 2 bytes, so \
          REX.W 8C /r writes 8 bytes; the memory form always writes 16 bits (SDM Vol. 2B MOV: \
          'MOV r64/m16, Sreg')",
    allow: &["MMIO accesses"],
};
pub const KVM_REP_INS_MMIO: KvmBug = KvmBug {
    why: "emulate.c's PIO read-ahead: with DF=0 it writes several INS elements to MMIO in one \
          access (OP_MEM_STR), with DF=1 it re-reads the port after each MMIO exit and stores \
          stale data; each INS iteration is one port read and one element-sized store (SDM \
          Vol. 2A INS/INSB/INSW/INSD)",
    allow: &["MMIO accesses", "port accesses"],
};
pub const KVM_READS_BEFORE_WRITE_FAULT: KvmBug = KvmBug {
    why: "emulate.c performs the read (MMIO load of an RMW or MOVS source, or the IN of INS) \
          before it finds the #PF on the write; hvemu finds every fault before the first access \
          (DESIGN.md invariant 2), so the device never sees a read whose instruction faults",
    allow: &["MMIO accesses", "port accesses"],
};
pub const KVM_CANONICAL_STRADDLE: KvmBug = KvmBug {
    why: "emulate.c __linearize bounds a 64-bit access by 2^48 - la instead of checking that \
          its last byte is canonical, so an access crossing 0x0000_7FFF_FFFF_FFFF is walked \
          into the non-canonical page and gets #PF (with the lower page present, CR2 = \
          0x0000_8000_0000_0000, an address no processor reports) instead of #GP(0) (SDM \
          Vol. 1 §3.3.7.1; Vol. 3A §6.15 interrupt 13)",
    allow: &["exception:"],
};
pub const KVM_IOPL3_USER64: KvmBug = KvmBug {
    why: "kvm-pvm raises #GP for OUT at CPL 3 with RFLAGS.IOPL = 3 in 64-bit user mode; CPL <= \
          IOPL allows the access without consulting the bitmap (SDM Vol. 1 §19.5.1)",
    allow: &["hvemu Completed, KVM took", "port accesses"],
};
pub const KVM_NO_AC: KvmBug = KvmBug {
    why: "emulate.c has no alignment check: a misaligned access at CPL 3 with CR0.AM and \
          RFLAGS.AC set completes instead of raising #AC(0) (SDM Vol. 3A §6.15, interrupt 17). \
          kvm-pvm raises #AC only where the processor executes the instruction itself (64-bit \
          user mode, but not port instructions, which it emulates)",
    allow: &["MMIO accesses", "port accesses", "hvemu Exception"],
};

pub const KVM_IOPB_LIMIT: KvmBug = KvmBug {
    why: "emulate.c checks only the first of the two bitmap bytes it reads against the TSS \
          limit (io_bitmap_ptr + port/8 > limit); the processor reads two bytes and both must \
          lie within the limit (SDM Vol. 1 §19.5.2: the extra byte 'must be within the segment \
          limit')",
    allow: &["port accesses", "hvemu Exception"],
};
pub const KVM_PVM_USER_CS: KvmBug = KvmBug {
    why: "kvm-pvm runs 64-bit user code natively with the host's user CS: MOV m16, CS to RAM \
          stores 0x33, not the guest's CS selector 0x2B (SDM Vol. 2B MOV: the selector of the \
          segment register is stored)",
    allow: &["RAM "],
};
pub const KVM_TSS16_BITMAP: KvmBug = KvmBug {
    why: "emulate.c consults an I/O bitmap whatever the TSS type; a 16-bit TSS has no I/O map \
          base (SDM Vol. 3A §8.6), so at CPL > IOPL every port access is #GP(0)",
    allow: &["port accesses", "hvemu Exception"],
};

/// What the instruction must do, in both implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Complete (with device accesses).
    Completes,
    /// Raise this exception vector.
    Fault(u8),
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub family: &'static str,
    pub instr: Instruction,
    /// GPR presets by hardware number (others get junk; RSP keeps the mode's stack).
    pub gprs: Vec<(usize, u64)>,
    /// OR-ed into RFLAGS (0x2 is always set).
    pub rflags: u64,
    pub segs: Vec<(Segment, kvm_segment)>,
    pub cr0_or: u64,
    pub ram: Vec<(u64, Vec<u8>)>,
    pub watch: Vec<Range<u64>>,
    /// RIP (offset in CS); default: a slot of the code area.
    pub ip: Option<u64>,
    pub io_deny: Vec<u16>,
    pub expect: Expect,
    /// Set when KVM is known to be wrong here: the test then checks hvemu against `expect`
    /// and only records what KVM did.
    pub kvm_bug: Option<KvmBug>,
    /// Machine code to use instead of encoding `instr` (for prefixes the encoder will not
    /// emit: ignored, redundant or repeated ones).
    pub raw: Option<Vec<u8>>,
    /// A TR value for this case (hidden part: limit, type).
    pub segs_tr: Option<kvm_segment>,
    /// Device bytes preset at these GPAs.
    pub mmio: Vec<(u64, Vec<u8>)>,
    /// Markers placed at these RIPs (branch targets).
    pub targets: Vec<u64>,
    /// The seed of the case's devices (so a generator can know what an MMIO read returns).
    pub seed: Option<u64>,
}

impl Case {
    pub fn new(family: &'static str, name: impl Into<String>, instr: Instruction) -> Self {
        Case {
            name: name.into(),
            family,
            instr,
            gprs: vec![],
            rflags: 0,
            segs: vec![],
            cr0_or: 0,
            ram: vec![],
            watch: vec![],
            ip: None,
            io_deny: vec![],
            expect: Expect::Completes,
            kvm_bug: None,
            raw: None,
            segs_tr: None,
            mmio: vec![],
            targets: vec![],
            seed: None,
        }
    }

    /// A case from raw machine code (decoded for its name and operand size).
    pub fn raw(family: &'static str, name: &str, bits: u32, bytes: &[u8]) -> Self {
        let mut d = iced_x86::Decoder::new(bits, bytes, iced_x86::DecoderOptions::NONE);
        let instr = d.decode();
        assert!(!instr.is_invalid(), "{name}: {bytes:02x?} does not decode");
        assert_eq!(instr.len(), bytes.len(), "{name}: one instruction");
        let mut c = Case::new(family, name, instr);
        c.raw = Some(bytes.to_vec());
        c
    }

    fn with_mem(mut self, m: &Mem) -> Self {
        self.gprs.extend(m.regs.iter().copied());
        self.segs.extend(m.segs.iter().copied());
        self
    }

    fn reg(mut self, n: usize, v: u64) -> Self {
        self.gprs.push((n, v));
        self
    }

    fn fault(mut self, vector: u8) -> Self {
        self.expect = Expect::Fault(vector);
        self
    }

    fn kvm_bug(mut self, bug: KvmBug) -> Self {
        self.kvm_bug = Some(bug);
        self
    }

    /// The driver's setup for this case, placed at `slot_ip` unless the case says where.
    pub fn setup(&self, env: &Env, slot_ip: u64, seed: u64) -> Result<Setup, String> {
        let ip = self.ip.unwrap_or(slot_ip);
        let mut a = CodeAssembler::new(env.bits).map_err(|e| e.to_string())?;
        match &self.raw {
            Some(bytes) => a.db(bytes).map_err(|e| e.to_string())?,
            None => a.add_instruction(self.instr).map_err(|e| e.to_string())?,
        }
        a.db(&MARKER).map_err(|e| e.to_string())?;
        let code = a.assemble(ip).map_err(|e| format!("{}: {e}", self.name))?;
        let mut junk = Rng::new(seed ^ 0xA5A5);
        let mut gprs = [0u64; 16];
        for (n, g) in gprs.iter_mut().enumerate() {
            let v = junk.next();
            *g = if env.bits == 64 { v } else { v & 0xFFFF_FFFF };
            if n >= 8 && env.bits != 64 {
                *g = 0;
            }
        }
        gprs[4] = env.mode.initial_sp();
        for &(n, v) in &self.gprs {
            gprs[n] = v;
        }
        Ok(Setup {
            label: format!("{:?}/{}/{}", env.mode, self.family, self.name),
            rip: ip,
            code,
            gprs,
            rflags: self.rflags,
            segs: self.segs.clone(),
            tr: self.segs_tr,
            mmio: self.mmio.clone(),
            extra_code: self.targets.iter().map(|&t| (t, MARKER.to_vec())).collect(),
            cr0_or: self.cr0_or,
            ram: self.ram.clone(),
            watch: self.watch.clone(),
            io_deny: self.io_deny.clone(),
            hvemu_first: matches!(self.expect, Expect::Fault(_)),
            seed: self.seed.unwrap_or(seed),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The mode's environment and addressing
// ---------------------------------------------------------------------------------------------

/// Virtual pages the paged modes map for the cases (see [`Env::map_scenarios`]).
pub mod va {
    /// Not mapped.
    pub const NOT_PRESENT: u64 = 0x7000_0000;
    /// Read-only, user: an MMIO page (the page before it is a writable MMIO page).
    pub const READ_ONLY: u64 = 0x6000_0000;
    /// Supervisor-only, writable: an MMIO page.
    pub const SUPERVISOR: u64 = 0x6100_0000;
    /// Two adjacent pages mapped to distant MMIO pages.
    pub const SPLIT: u64 = 0x5000_0000;
    /// An MMIO page followed by a not-present page.
    pub const EDGE: u64 = 0x5100_0000;
    /// The last page below the non-canonical hole (64-bit modes), an MMIO page.
    pub const LAST_CANONICAL: u64 = 0x0000_7FFF_FFFF_F000;
    /// A RAM page followed by an MMIO page.
    pub const RAM_THEN_MMIO: u64 = 0x5200_0000;
    /// Two code pages mapped to non-adjacent RAM pages.
    pub const CODE_SPLIT: u64 = 0x5300_0000;
    /// A code page followed by a not-present page.
    pub const CODE_EDGE: u64 = 0x5400_0000;
}

/// GPAs behind the [`va`] pages.
pub mod gpa {
    use super::HIGH_MMIO;
    pub const READ_ONLY: u64 = HIGH_MMIO + 0x1_0000;
    pub const BEFORE_READ_ONLY: u64 = HIGH_MMIO + 0xF000;
    pub const SUPERVISOR: u64 = HIGH_MMIO + 0x1_1000;
    pub const SPLIT_LO: u64 = HIGH_MMIO + 0x2_0000;
    pub const SPLIT_HI: u64 = HIGH_MMIO + 0x3_5000;
    pub const EDGE: u64 = HIGH_MMIO + 0x4_0000;
    /// A RAM page inside [`crate::kvm::layout::DATA`].
    pub const RAM_PAGE: u64 = crate::kvm::layout::DATA + 0x8000;
    pub const AFTER_RAM: u64 = HIGH_MMIO + 0x5_0000;
    pub const CODE_LO: u64 = crate::kvm::layout::DATA + 0xA000;
    pub const CODE_HI: u64 = crate::kvm::layout::DATA + 0xC000;
    pub const CODE_EDGE: u64 = crate::kvm::layout::DATA + 0xE000;
}

/// Scratch RAM for string sources/destinations: [`layout::DATA`].
pub const RAM_BUF: u64 = layout::DATA;

pub struct Env {
    pub mode: Mode,
    /// Code size.
    pub bits: u32,
    pub sregs: kvm_sregs,
    pub paged: bool,
}

/// A memory operand and the state it needs.
#[derive(Clone, Debug)]
pub struct Mem {
    pub op: MemoryOperand,
    pub regs: Vec<(usize, u64)>,
    pub segs: Vec<(Segment, kvm_segment)>,
    pub desc: String,
    /// Registers the address uses (hardware numbers).
    pub uses: Vec<usize>,
}

/// Addressing forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// 16-bit: base (BX/BP/none) + index (SI/DI/none) + disp (0/8/16).
    A16 {
        base: Option<Register>,
        index: Option<Register>,
        disp: u8,
    },
    /// 32/64-bit: base + index*scale + disp (disp 0/8/32 bits).
    Sib {
        base: Option<usize>,
        index: Option<usize>,
        scale: u32,
        disp: u8,
    },
    /// RIP/EIP-relative (64-bit mode).
    RipRel,
}

pub const A16_FORMS: [(Option<Register>, Option<Register>); 9] = [
    (Some(Register::BX), Some(Register::SI)),
    (Some(Register::BX), Some(Register::DI)),
    (Some(Register::BP), Some(Register::SI)),
    (Some(Register::BP), Some(Register::DI)),
    (None, Some(Register::SI)),
    (None, Some(Register::DI)),
    (Some(Register::BP), None),
    (Some(Register::BX), None),
    (None, None),
];

pub fn reg_of(n: usize, size: usize) -> Register {
    use Register::*;
    const T8: [Register; 16] = [
        AL, CL, DL, BL, SPL, BPL, SIL, DIL, R8L, R9L, R10L, R11L, R12L, R13L, R14L, R15L,
    ];
    const T16: [Register; 16] = [
        AX, CX, DX, BX, SP, BP, SI, DI, R8W, R9W, R10W, R11W, R12W, R13W, R14W, R15W,
    ];
    const T32: [Register; 16] = [
        EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI, R8D, R9D, R10D, R11D, R12D, R13D, R14D, R15D,
    ];
    const T64: [Register; 16] = [
        RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15,
    ];
    match size {
        1 => T8[n],
        2 => T16[n],
        4 => T32[n],
        _ => T64[n],
    }
}

pub fn hw(reg: Register) -> usize {
    reg.full_register() as usize - Register::RAX as usize
}

fn seg_reg(s: Segment) -> Register {
    match s {
        Segment::Es => Register::ES,
        Segment::Cs => Register::CS,
        Segment::Ss => Register::SS,
        Segment::Ds => Register::DS,
        Segment::Fs => Register::FS,
        Segment::Gs => Register::GS,
    }
}

fn mask(bits: u32) -> u64 {
    if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

impl Env {
    pub fn new(mode: Mode, sregs: kvm_sregs) -> Self {
        Env {
            mode,
            bits: mode.bitness(),
            sregs,
            paged: mode.paging().is_some(),
        }
    }

    pub fn long(&self) -> bool {
        self.bits == 64
    }

    pub fn real(&self) -> bool {
        self.mode == Mode::Real
    }

    /// Address sizes available: the default first.
    pub fn address_sizes(&self) -> [u32; 2] {
        match self.bits {
            64 => [64, 32],
            32 => [32, 16],
            _ => [16, 32],
        }
    }

    /// GPR numbers usable as data registers.
    pub fn gpr_count(&self) -> usize {
        if self.long() { 16 } else { 8 }
    }

    /// A data segment register value with `base` (selector base/16 in real mode).
    pub fn data_seg(&self, base: u64) -> kvm_segment {
        if self.real() {
            assert_eq!(base & 0xF, 0);
            return tables::real_mode_segment((base >> 4) as u16, false);
        }
        let mut s = self.sregs.ds;
        s.base = base;
        s
    }

    /// The stack segment with `base` (same limit and size as the mode's).
    pub fn stack_seg(&self, base: u64) -> kvm_segment {
        if self.real() {
            return tables::real_mode_segment((base >> 4) as u16, false);
        }
        let mut s = self.sregs.ss;
        s.base = base;
        s
    }

    /// Base of `seg` after `segs` are applied (0 for ES/CS/SS/DS in 64-bit mode).
    fn seg_base(&self, seg: Segment, segs: &[(Segment, kvm_segment)]) -> u64 {
        if self.long() && !matches!(seg, Segment::Fs | Segment::Gs) {
            return 0;
        }
        segs.iter()
            .rev()
            .find(|(s, _)| *s == seg)
            .map(|(_, v)| v.base)
            .unwrap_or_else(|| crate::driver::sreg(&self.sregs, seg).base)
    }

    /// A memory operand of `form` with `addr_bits` addressing through `seg` (None: the
    /// default segment) that reaches linear address `target` for an access of `size` bytes.
    ///
    /// For 16-bit addressing, and in real mode, the segment's base is moved so that the
    /// target is within 64 KiB of it (`seg_base`, rounded to 16 bytes).
    #[allow(clippy::too_many_arguments)]
    pub fn mem(
        &self,
        rng: &mut Rng,
        form: Form,
        addr_bits: u32,
        seg: Option<Segment>,
        target: u64,
        size: usize,
    ) -> Mem {
        let mut segs = vec![];
        let default_ss = match form {
            Form::A16 { base, .. } => base == Some(Register::BP),
            Form::Sib { base, .. } => matches!(base, Some(4) | Some(5)),
            Form::RipRel => false,
        };
        let eff = seg.unwrap_or(if default_ss { Segment::Ss } else { Segment::Ds });
        // Segment base so that the offset fits the address size (and real-mode limits).
        let needs_base = !self.long() && (addr_bits == 16 || self.bits == 16);
        if needs_base {
            let room = 0x1_0000 - size as u64;
            let lo = target.saturating_sub(room.min(0x8000)) & !0xF;
            let base = if self.real() { lo & 0xF_FFF0 } else { lo };
            let s = if eff == Segment::Ss {
                self.stack_seg(base)
            } else {
                self.data_seg(base)
            };
            segs.push((eff, s));
        }
        let sbase = self.seg_base(eff, &segs);
        let offset = target.wrapping_sub(sbase) & mask(if self.long() { 64 } else { 32 });
        let mut m = self.mem_offset(rng, form, addr_bits, seg, offset, target);
        m.segs = segs;
        m
    }

    /// A memory operand of `form` whose effective address (offset in its segment) is
    /// `offset`; `target` is only used by RIP-relative forms. Sets up no segment.
    pub fn mem_offset(
        &self,
        rng: &mut Rng,
        form: Form,
        addr_bits: u32,
        seg: Option<Segment>,
        offset: u64,
        target: u64,
    ) -> Mem {
        let am = mask(addr_bits);
        let mut regs = vec![];
        let mut uses = vec![];
        let seg_prefix = seg.map(seg_reg).unwrap_or(Register::None);
        let (op, desc) = match form {
            Form::A16 { base, index, disp } => {
                let dispv: i64 = match (base, index, disp) {
                    (None, None, _) => offset as i64 & 0xFFFF,
                    (_, _, 0) => 0,
                    (_, _, 1) => rng.below(256) as i64 - 128,
                    _ => rng.below(0x1_0000) as i64 - 0x8000,
                };
                let iv = if index.is_some() { rng.below(0x400) } else { 0 };
                let bv = offset.wrapping_sub(iv).wrapping_sub(dispv as u64) & 0xFFFF;
                let (b, i) = match (base, index) {
                    // A lone SI/DI is encoded as the base in iced's model.
                    (None, Some(x)) => (x, Register::None),
                    _ => (
                        base.unwrap_or(Register::None),
                        index.unwrap_or(Register::None),
                    ),
                };
                let (iv, bv) = if base.is_none() && index.is_some() {
                    (offset.wrapping_sub(dispv as u64) & 0xFFFF, 0)
                } else {
                    (iv, bv)
                };
                if let Some(b) = base {
                    regs.push((hw(b), bv));
                    uses.push(hw(b));
                }
                if let Some(i) = index {
                    regs.push((hw(i), iv));
                    uses.push(hw(i));
                }
                let dsize = match (base, index, disp) {
                    (None, None, _) => 2,
                    (_, _, 0) => 0,
                    (_, _, 1) => 1,
                    _ => 2,
                };
                let dispv = if dsize == 0 { 0 } else { dispv };
                (
                    MemoryOperand::new(b, i, 1, dispv, dsize, false, seg_prefix),
                    format!("[{b:?}+{i:?}+{dispv:#x}]"),
                )
            }
            Form::Sib {
                base,
                index,
                scale,
                disp,
            } => {
                let size_reg = if addr_bits == 64 { 8 } else { 4 };
                let mut dispv: i64 = match disp {
                    0 => 0,
                    1 => rng.below(256) as i64 - 128,
                    _ => (rng.next() as u32 as i32) as i64 / 4,
                };
                let mut iv = if index.is_some() {
                    rng.below(0x1000)
                } else {
                    0
                };
                if base.is_none() {
                    // disp32 (sign-extended in 64-bit addressing) plus the index make it.
                    let d = offset.wrapping_sub(iv.wrapping_mul(scale as u64)) & am;
                    let fits = addr_bits != 64 || (d as i64) == (d as i32 as i64);
                    if fits {
                        dispv = if addr_bits == 64 {
                            d as i32 as i64
                        } else {
                            d as u32 as i64
                        };
                    } else if index.is_some() {
                        dispv = (offset % scale as u64) as i64 + 8 * rng.below(16) as i64;
                        iv = offset.wrapping_sub(dispv as u64) / scale as u64;
                    } else {
                        panic!("absolute disp32 cannot reach {target:#x}");
                    }
                }
                let bv = offset
                    .wrapping_sub(iv.wrapping_mul(scale as u64))
                    .wrapping_sub(dispv as u64)
                    & am;
                let b = base.map(|n| reg_of(n, size_reg)).unwrap_or(Register::None);
                let i = index.map(|n| reg_of(n, size_reg)).unwrap_or(Register::None);
                if let Some(n) = base {
                    regs.push((n, bv));
                    uses.push(n);
                }
                if let Some(n) = index {
                    regs.push((n, iv & am));
                    uses.push(n);
                }
                let dsize = if base.is_none() {
                    if addr_bits == 64 { 8 } else { 4 }
                } else {
                    match disp {
                        0 => 0,
                        1 => 1,
                        _ if addr_bits == 64 => 8,
                        _ => 4,
                    }
                };
                (
                    MemoryOperand::new(b, i, scale, dispv, dsize, false, seg_prefix),
                    format!("[{b:?}+{i:?}*{scale}+{dispv:#x}]"),
                )
            }
            Form::RipRel => {
                let rip = if addr_bits == 64 {
                    Register::RIP
                } else {
                    Register::EIP
                };
                (
                    MemoryOperand::new(rip, Register::None, 1, offset as i64, 8, false, seg_prefix),
                    format!("[{rip:?} -> {offset:#x}]"),
                )
            }
        };
        Mem {
            op,
            regs,
            segs: vec![],
            desc,
            uses,
        }
    }

    /// A random addressing form for `addr_bits`, avoiding the registers in `avoid`.
    pub fn random_form(&self, rng: &mut Rng, addr_bits: u32, avoid: &[usize]) -> Form {
        if addr_bits == 16 {
            loop {
                let (b, i) = rng.pick(&A16_FORMS);
                let clash = [b, i].iter().flatten().any(|r| avoid.contains(&hw(*r)));
                if clash {
                    continue;
                }
                let disp = match (b, i) {
                    (Some(Register::BP), None) => 1 + rng.below(2) as u8,
                    (None, None) => 2,
                    _ => rng.below(3) as u8,
                };
                return Form::A16 {
                    base: b,
                    index: i,
                    disp,
                };
            }
        }
        let n = if addr_bits == 64 { 16 } else { 8 };
        let free: Vec<usize> = (0..n).filter(|r| !avoid.contains(r)).collect();
        let base = if rng.chance(8) {
            None
        } else {
            Some(rng.pick(&free))
        };
        let index = if rng.chance(2) {
            let f: Vec<usize> = free
                .iter()
                .copied()
                .filter(|&r| r != 4 && Some(r) != base)
                .collect();
            Some(rng.pick(&f))
        } else {
            None
        };
        let base = if base.is_none() && index.is_none() {
            Some(rng.pick(&free))
        } else {
            base
        };
        Form::Sib {
            base,
            index,
            scale: rng.pick(&[1, 2, 4, 8]),
            disp: rng.below(3) as u8,
        }
    }

    /// A linear MMIO address for an access of `size` bytes that does not cross a page,
    /// reachable in this mode with `addr_bits` addressing.
    pub fn mmio_target(&self, rng: &mut Rng, size: usize, addr_bits: u32) -> u64 {
        // The low hole (reachable from real mode and with 16-bit offsets) a third of the
        // time, the high MMIO window otherwise.
        let low = self.real() || rng.chance(3);
        let _ = addr_bits;
        let base = if low {
            LOW_MMIO + 0x1000 * rng.below(16)
        } else {
            HIGH_MMIO + 0x1000 * rng.below(16)
        };
        base + rng.below(0x1000 - size as u64 + 1)
    }

    /// Maps the [`va`] scenario pages (paged modes; before the first run).
    pub fn map_scenarios(g: &mut crate::kvm::Guest) {
        let user = PageFlags::RW.user();
        g.map_page(va::READ_ONLY, gpa::READ_ONLY, PageFlags::RO.user());
        g.map_page(va::READ_ONLY - 0x1000, gpa::BEFORE_READ_ONLY, user);
        g.map_page(va::SUPERVISOR, gpa::SUPERVISOR, PageFlags::RW);
        g.map_page(va::SPLIT, gpa::SPLIT_LO, user);
        g.map_page(va::SPLIT + 0x1000, gpa::SPLIT_HI, user);
        g.map_page(va::EDGE, gpa::EDGE, user);
        g.map_page(va::RAM_THEN_MMIO, gpa::RAM_PAGE, user);
        g.map_page(va::RAM_THEN_MMIO + 0x1000, gpa::AFTER_RAM, user);
        g.map_page(va::CODE_SPLIT, gpa::CODE_LO, user);
        g.map_page(va::CODE_SPLIT + 0x1000, gpa::CODE_HI, user);
        g.map_page(va::CODE_EDGE, gpa::CODE_EDGE, user);
        g.map_page(va::LAST_CANONICAL, gpa::EDGE + 0x1000, user);
    }

    /// Segment overrides worth testing for an explicit memory operand: none (default), and
    /// one of ES/SS/CS/DS/FS/GS with whatever base that needs.
    pub fn random_override(&self, rng: &mut Rng) -> Option<Segment> {
        if rng.chance(2) {
            None
        } else {
            Some(rng.pick(&[
                Segment::Es,
                Segment::Ds,
                Segment::Fs,
                Segment::Gs,
                Segment::Ss,
            ]))
        }
    }

    /// FS/GS bases (so that an FS/GS-relative operand reaches `target`) and, in 64-bit
    /// mode, a junk DS base (which must be ignored).
    pub fn override_segs(
        &self,
        rng: &mut Rng,
        seg: Option<Segment>,
        target: u64,
        addr_bits: u32,
    ) -> Vec<(Segment, kvm_segment)> {
        let mut out = vec![];
        match seg {
            Some(s @ (Segment::Fs | Segment::Gs)) if !(addr_bits == 16 || self.bits == 16) => {
                // Base below the target so the offset is positive and small.
                let delta = 0x1000 * (1 + rng.below(64)) + rng.below(0x100);
                let mut v = self.data_seg(0);
                v.base = target.wrapping_sub(delta);
                if !self.long() {
                    v.base &= 0xFFFF_FFFF;
                }
                out.push((s, v));
            }
            _ => {}
        }
        if self.long() && rng.chance(3) {
            let mut v = self.sregs.ds;
            v.base = 0x1234_5000;
            out.push((Segment::Ds, v));
        }
        out
    }

    /// A junk value for a 32- or 64-bit register.
    pub fn value(&self, rng: &mut Rng) -> u64 {
        let v = rng.next();
        if self.long() { v } else { v & 0xFFFF_FFFF }
    }
}

macro_rules! with2 {
    ($code:expr, $a:expr, $b:expr) => {
        Instruction::with2($code, $a, $b).unwrap_or_else(|e| panic!("{:?}: {e}", $code))
    };
}

macro_rules! with1 {
    ($code:expr, $a:expr) => {
        Instruction::with1($code, $a).unwrap_or_else(|e| panic!("{:?}: {e}", $code))
    };
}

/// One memory operand of a chosen kind: target, form, address size, override, with its
/// state; the building block of the MOV and ALU families.
fn random_mem(env: &Env, rng: &mut Rng, size: usize, avoid: &[usize]) -> (Mem, u64) {
    let addr_bits = if rng.chance(4) {
        env.address_sizes()[1]
    } else {
        env.address_sizes()[0]
    };
    let rip_rel = env.long() && rng.chance(10);
    let seg = env.random_override(rng);
    let target = if rip_rel {
        LOW_MMIO + rng.below(0x1_0000 - size as u64)
    } else {
        env.mmio_target(rng, size, addr_bits)
    };
    let form = if rip_rel {
        Form::RipRel
    } else {
        env.random_form(rng, addr_bits, avoid)
    };
    // Real mode: SS-relative forms need SS moved; keep the default stack otherwise.
    let mut m = env.mem(rng, form, addr_bits, seg, target, size);
    let extra = env.override_segs(rng, seg, target, addr_bits);
    if !extra.is_empty() {
        // Recompute with the new FS/GS base in place.
        let mut e2 = Env {
            mode: env.mode,
            bits: env.bits,
            sregs: env.sregs,
            paged: env.paged,
        };
        for (s, v) in &extra {
            *crate::driver::sreg_mut(&mut e2.sregs, *s) = *v;
        }
        m = e2.mem(rng, form, addr_bits, seg, target, size);
        m.segs.splice(0..0, extra);
    }
    (m, target)
}

/// Data register `n` at `size` bytes; in legacy modes 8-bit numbers 4..7 are AH..BH.
fn data_reg(env: &Env, n: usize, size: usize) -> Register {
    if size == 1 && !env.long() && n >= 4 {
        [Register::AH, Register::CH, Register::DH, Register::BH][n - 4]
    } else {
        reg_of(n, size)
    }
}

fn sizes(env: &Env) -> &'static [usize] {
    if env.long() {
        &[1, 2, 4, 8]
    } else {
        &[1, 2, 4]
    }
}

// ---------------------------------------------------------------------------------------------
// Families
// ---------------------------------------------------------------------------------------------

pub type Generator = fn(&Env, &mut Rng) -> Vec<Case>;

/// Every family: (name, generator, optional). Add a family here. An optional family is run
/// only when hvemu emulates it: if hvemu answers its first case with "unsupported", the tests
/// skip the family and say so (so this harness runs against older and newer hvemu alike).
pub const FAMILIES: [(&str, Generator, bool); 12] = [
    ("mov", mov_cases, false),
    ("mov-special", mov_special_cases, false),
    ("straddle", straddle_cases, false),
    ("string", string_cases, false),
    ("port", port_cases, false),
    ("alu", alu_cases, false),
    ("fault", fault_cases, false),
    ("edge", edge_cases, false),
    ("fetch+tss", fetch_and_tss_cases, false),
    ("cmps/scas", compare_string_cases, true),
    ("xchg", exchange_cases, true),
    ("stack", stack_cases, true),
];

/// MOV r/m↔r, MOV r/m←imm at every size, over random addressing forms.
pub fn mov_cases(env: &Env, rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for k in 0..72 {
        let size = sizes(env)[k % sizes(env).len()];
        let data_n = rng.below(env.gpr_count() as u64) as usize;
        // The data register's full register must not be an address register.
        let avoid = [
            data_n,
            if size == 1 && !env.long() {
                data_n & 3
            } else {
                data_n
            },
        ];
        let (m, target) = random_mem(env, rng, size, &avoid);
        let r = data_reg(env, data_n, size);
        let kind = k / 4 % 3;
        let (instr, what) = match kind {
            0 => {
                let code = [
                    Code::Mov_rm8_r8,
                    Code::Mov_rm16_r16,
                    Code::Mov_rm32_r32,
                    Code::Mov_rm64_r64,
                ][size.trailing_zeros() as usize];
                (with2!(code, m.op, r), "store")
            }
            1 => {
                let code = [
                    Code::Mov_r8_rm8,
                    Code::Mov_r16_rm16,
                    Code::Mov_r32_rm32,
                    Code::Mov_r64_rm64,
                ][size.trailing_zeros() as usize];
                (with2!(code, r, m.op), "load")
            }
            _ => {
                let imm = rng.next();
                let i = match size {
                    1 => with2!(Code::Mov_rm8_imm8, m.op, imm as u8 as u32),
                    2 => with2!(Code::Mov_rm16_imm16, m.op, imm as u16 as u32),
                    4 => with2!(Code::Mov_rm32_imm32, m.op, imm as u32),
                    // Sign-extended imm32: negative half the time.
                    _ => with2!(Code::Mov_rm64_imm32, m.op, imm as i32),
                };
                (i, "imm")
            }
        };
        let c = Case::new(
            "mov",
            format!("{what}{} {} -> {target:#x}", 8 * size, m.desc),
            instr,
        )
        .with_mem(&m)
        .reg(hw(r), env.value(rng));
        // The address registers win over the data register's junk.
        let mut c = c;
        let addr: Vec<(usize, u64)> = m.regs.clone();
        c.gprs.extend(addr);
        out.push(c);
    }
    out
}

/// MOV moffs (A0–A3), MOVZX/MOVSX/MOVSXD, MOV m←Sreg, sign-extended imm32, and a load into
/// the address register itself.
pub fn mov_special_cases(env: &Env, rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    // moffs, every size and both address sizes.
    for addr_bits in env.address_sizes() {
        for (k, size) in sizes(env).iter().copied().enumerate() {
            for store in [false, true] {
                let target = if addr_bits == 16 || env.bits == 16 || env.real() {
                    env.mmio_target(rng, size, 16) // placed through the segment base
                } else if addr_bits == 32 && env.long() {
                    HIGH_MMIO + rng.below(0x1000 - size as u64)
                } else {
                    env.mmio_target(rng, size, addr_bits)
                };
                let seg = if k % 2 == 1 {
                    Some(rng.pick(&[Segment::Es, Segment::Fs, Segment::Gs, Segment::Ss]))
                } else {
                    None
                };
                let mut segs = env.override_segs(rng, seg, target, addr_bits);
                let eff = seg.unwrap_or(Segment::Ds);
                let mut sbase = if env.long() && !matches!(eff, Segment::Fs | Segment::Gs) {
                    0
                } else {
                    segs.iter()
                        .find(|(s, _)| *s == eff)
                        .map(|(_, v)| v.base)
                        .unwrap_or(crate::driver::sreg(&env.sregs, eff).base)
                };
                if !env.long() && (addr_bits == 16 || env.bits == 16) {
                    sbase = (target - 0x100) & !0xF;
                    let v = if eff == Segment::Ss {
                        env.stack_seg(sbase)
                    } else {
                        env.data_seg(sbase)
                    };
                    segs.push((eff, v));
                }
                let off = target.wrapping_sub(sbase) & mask(addr_bits);
                let dsize = addr_bits / 8;
                let mo = MemoryOperand::new(
                    Register::None,
                    Register::None,
                    1,
                    off as i64,
                    dsize,
                    false,
                    seg.map(seg_reg).unwrap_or(Register::None),
                );
                let acc = reg_of(0, size);
                let code = match (store, size) {
                    (false, 1) => Code::Mov_AL_moffs8,
                    (false, 2) => Code::Mov_AX_moffs16,
                    (false, 4) => Code::Mov_EAX_moffs32,
                    (false, _) => Code::Mov_RAX_moffs64,
                    (true, 1) => Code::Mov_moffs8_AL,
                    (true, 2) => Code::Mov_moffs16_AX,
                    (true, 4) => Code::Mov_moffs32_EAX,
                    (true, _) => Code::Mov_moffs64_RAX,
                };
                let i = if store {
                    with2!(code, mo, acc)
                } else {
                    with2!(code, acc, mo)
                };
                let mut c = Case::new(
                    "mov",
                    format!("moffs{addr_bits} {code:?} {seg:?} -> {target:#x}"),
                    i,
                )
                .reg(0, env.value(rng));
                c.segs = segs;
                out.push(c);
            }
        }
    }
    // MOVZX / MOVSX / MOVSXD.
    let mut ext = vec![
        (Code::Movzx_r16_rm8, 2, 1),
        (Code::Movzx_r32_rm8, 4, 1),
        (Code::Movzx_r16_rm16, 2, 2),
        (Code::Movzx_r32_rm16, 4, 2),
        (Code::Movsx_r16_rm8, 2, 1),
        (Code::Movsx_r32_rm8, 4, 1),
        (Code::Movsx_r16_rm16, 2, 2),
        (Code::Movsx_r32_rm16, 4, 2),
    ];
    if env.long() {
        ext.extend([
            (Code::Movzx_r64_rm8, 8, 1),
            (Code::Movzx_r64_rm16, 8, 2),
            (Code::Movsx_r64_rm8, 8, 1),
            (Code::Movsx_r64_rm16, 8, 2),
            (Code::Movsxd_r64_rm32, 8, 4),
            (Code::Movsxd_r32_rm32, 4, 4),
            (Code::Movsxd_r16_rm16, 2, 2),
        ]);
    }
    for (code, dsize, ssize) in ext {
        for _ in 0..3 {
            let n = rng.below(env.gpr_count() as u64) as usize;
            let (m, target) = random_mem(env, rng, ssize, &[n, 4]);
            let r = reg_of(n, dsize);
            let mut c = Case::new(
                "mov",
                format!("{code:?} {} -> {target:#x}", m.desc),
                with2!(code, r, m.op),
            )
            .reg(n, env.value(rng));
            c.gprs.extend(m.regs.iter().copied());
            c.segs.extend(m.segs.iter().copied());
            if code == Code::Movsxd_r16_rm16 {
                c.kvm_bug = Some(KVM_MOVSXD16);
            }
            out.push(c);
        }
    }
    // MOV m16 ← Sreg, through each encoding that has a memory form.
    let mut codes = vec![Code::Mov_rm16_Sreg, Code::Mov_r32m16_Sreg];
    if env.long() {
        codes.push(Code::Mov_r64m16_Sreg);
    }
    for code in codes {
        for s in [
            Register::ES,
            Register::CS,
            Register::SS,
            Register::DS,
            Register::FS,
            Register::GS,
        ] {
            let (m, target) = random_mem(env, rng, 2, &[4]);
            let mut c = Case::new(
                "mov",
                format!("{code:?} {s:?} -> {target:#x}"),
                with2!(code, m.op, s),
            )
            .with_mem(&m);
            if code == Code::Mov_r64m16_Sreg {
                c.kvm_bug = Some(KVM_SREG_STORE64);
            }
            // A recognisable FS selector (the hidden part is what the CPU uses).
            if s == Register::FS && !c.segs.iter().any(|(x, _)| *x == Segment::Fs) {
                let mut v = env.sregs.fs;
                if !env.real() {
                    v.selector = 0x1234 | (env.sregs.ds.selector & 3);
                    c.segs.push((Segment::Fs, v));
                }
            }
            out.push(c);
        }
    }
    // mov qword [mem], imm32: sign extension with the sign bit set and clear.
    if env.long() {
        for imm in [-1i64, -0x8000_0000, 0x7FFF_FFFF, -2] {
            let (m, target) = random_mem(env, rng, 8, &[4]);
            out.push(
                Case::new(
                    "mov",
                    format!("mov qword imm32 {imm:#x} -> {target:#x}"),
                    with2!(Code::Mov_rm64_imm32, m.op, imm as i32),
                )
                .with_mem(&m),
            );
        }
    }
    // A load into a register the address uses: mov eax, [eax] (hvemu must read it first).
    for size in [2usize, 4] {
        let addr_bits = env.address_sizes()[0];
        if addr_bits == 16 {
            continue;
        }
        let target = env.mmio_target(rng, size, addr_bits);
        let form = Form::Sib {
            base: Some(0),
            index: Some(1),
            scale: 2,
            disp: 1,
        };
        let m = env.mem(rng, form, addr_bits, None, target, size);
        let code = if size == 2 {
            Code::Mov_r16_rm16
        } else {
            Code::Mov_r32_rm32
        };
        out.push(
            Case::new(
                "mov",
                format!("load into address register {size}"),
                with2!(code, reg_of(0, size), m.op),
            )
            .with_mem(&m),
        );
    }
    out
}

/// Accesses that straddle a page boundary: RAM→MMIO, MMIO→RAM, MMIO→MMIO, and (paged modes)
/// two virtual pages mapped to distant MMIO pages or a RAM page then an MMIO page.
pub fn straddle_cases(env: &Env, rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    let mut edges: Vec<(&str, u64)> = vec![
        ("ram->mmio", LOW_MMIO),
        ("mmio->ram", LOW_MMIO + layout::LOW_MMIO_SIZE),
    ];
    if !env.real() {
        edges.push(("mmio->mmio", HIGH_MMIO + 0x1000));
    }
    if env.paged {
        edges.push(("split va", va::SPLIT + 0x1000));
        edges.push(("ram->mmio va", va::RAM_THEN_MMIO + 0x1000));
    }
    for (what, edge) in edges {
        for size in sizes(env).iter().copied().filter(|&s| s > 1) {
            for before in 1..size as u64 {
                if !rng.chance(2) && before != 1 {
                    continue;
                }
                let target = edge - before;
                let addr_bits = env.address_sizes()[0];
                let form = env.random_form(rng, addr_bits, &[0, 4]);
                let m = env.mem(rng, form, addr_bits, None, target, size);
                let store = rng.chance(2);
                let r = reg_of(0, size);
                let code = match (store, size) {
                    (true, 2) => Code::Mov_rm16_r16,
                    (true, 4) => Code::Mov_rm32_r32,
                    (true, _) => Code::Mov_rm64_r64,
                    (false, 2) => Code::Mov_r16_rm16,
                    (false, 4) => Code::Mov_r32_rm32,
                    (false, _) => Code::Mov_r64_rm64,
                };
                let i = if store {
                    with2!(code, m.op, r)
                } else {
                    with2!(code, r, m.op)
                };
                let mut c = Case::new(
                    "straddle",
                    format!(
                        "{what} {size}@-{before} {}",
                        if store { "store" } else { "load" }
                    ),
                    i,
                )
                .reg(0, env.value(rng))
                .with_mem(&m);
                // The RAM side of the straddle is watched.
                let ram_side = if what.starts_with("ram") {
                    Some(edge - 8..edge)
                } else if what.starts_with("mmio->ram") {
                    Some(edge..edge + 8)
                } else {
                    None
                };
                if let Some(r) = ram_side {
                    let r = if what == "ram->mmio va" {
                        gpa::RAM_PAGE + 0xFF8..gpa::RAM_PAGE + 0x1000
                    } else {
                        r
                    };
                    c.ram.push((r.start, vec![0xCC; 8]));
                    c.watch.push(r);
                }
                out.push(c);
            }
        }
    }
    // Read-modify-write straddling MMIO pages (ALU family).
    if !env.real() {
        let target = HIGH_MMIO + 0x2000 - 2;
        let addr_bits = env.address_sizes()[0];
        let m = env.mem(
            rng,
            Form::Sib {
                base: Some(3),
                index: None,
                scale: 1,
                disp: 0,
            },
            addr_bits,
            None,
            target,
            4,
        );
        let m = if addr_bits == 16 || env.bits == 16 {
            env.mem(
                rng,
                Form::A16 {
                    base: Some(Register::BX),
                    index: None,
                    disp: 0,
                },
                16,
                None,
                target,
                4,
            )
        } else {
            m
        };
        out.push(
            Case::new(
                "straddle",
                "add dword mmio->mmio",
                with2!(Code::Add_rm32_r32, m.op, Register::ECX),
            )
            .reg(1, env.value(rng))
            .with_mem(&m),
        );
    }
    out
}

/// MOVS/STOS/LODS with and without REP, both DF directions, every element and address size,
/// segment overrides on the source, RAM and MMIO on either side, and REPs crossing pages.
pub fn string_cases(env: &Env, rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for k in 0..60 {
        let size = sizes(env)[k % sizes(env).len()];
        let kind = (k / 4) % 3; // 0 movs, 1 stos, 2 lods
        let addr_bits = env.address_sizes()[(k / 12) % 2];
        let rep = k % 5 != 0;
        let df = rng.chance(3);
        let count = if rep { 1 + rng.below(6) } else { 1 };
        let need_base = !env.long() && (addr_bits == 16 || env.bits == 16);
        let seg = if kind != 1 && rng.chance(3) {
            Some(rng.pick(&[
                Segment::Es,
                Segment::Fs,
                Segment::Gs,
                Segment::Ss,
                Segment::Cs,
            ]))
        } else {
            None
        };
        // With 16-bit offsets an ES source and the ES destination would need one base.
        let seg = if need_base && kind == 0 && seg == Some(Segment::Es) {
            None
        } else {
            seg
        };
        // Where the source and destination lie (a CS source is the code, in RAM).
        let src_mmio = seg != Some(Segment::Cs) && kind != 1 && (kind == 2 || rng.chance(2));
        let dst_mmio = kind == 1 || (kind == 0 && (!src_mmio || rng.chance(2)));
        let rp = if rep {
            RepPrefixKind::Repe
        } else {
            RepPrefixKind::None
        };
        let sp = seg.map(seg_reg).unwrap_or(Register::None);
        let i = match (kind, size) {
            (0, 1) => Instruction::with_movsb(addr_bits, sp, rp),
            (0, 2) => Instruction::with_movsw(addr_bits, sp, rp),
            (0, 4) => Instruction::with_movsd(addr_bits, sp, rp),
            (0, _) => Instruction::with_movsq(addr_bits, sp, rp),
            (1, 1) => Instruction::with_stosb(addr_bits, rp),
            (1, 2) => Instruction::with_stosw(addr_bits, rp),
            (1, 4) => Instruction::with_stosd(addr_bits, rp),
            (1, _) => Instruction::with_stosq(addr_bits, rp),
            (_, 1) => Instruction::with_lodsb(addr_bits, sp, rp),
            (_, 2) => Instruction::with_lodsw(addr_bits, sp, rp),
            (_, 4) => Instruction::with_lodsd(addr_bits, sp, rp),
            (_, _) => Instruction::with_lodsq(addr_bits, sp, rp),
        }
        .unwrap();
        let span = size as u64 * count;
        let mut c = Case::new(
            "string",
            format!(
                "{:?} a{addr_bits} x{count} df{} {seg:?} src {} dst {}",
                i.code(),
                df as u8,
                if src_mmio { "mmio" } else { "ram" },
                if dst_mmio { "mmio" } else { "ram" }
            ),
            i,
        );
        if df {
            c.rflags |= 1 << 10;
        }
        let place = |rng: &mut Rng, mmio: bool, extra: u64| -> u64 {
            let lo = if mmio {
                if env.real() || (addr_bits == 16) || rng.chance(3) {
                    LOW_MMIO + 0x1000 * rng.below(8)
                } else {
                    HIGH_MMIO + 0x1000 * rng.below(8)
                }
            } else {
                RAM_BUF + extra
            };
            // Leave room in both directions; start mid-page (no page crossing here).
            lo + 0x400 + rng.below(0x200) * size as u64
        };
        let src = place(rng, src_mmio, 0);
        let dst = place(rng, dst_mmio, 0x2000);
        // Segment bases and registers: offsets relative to the segments.
        let (src_seg, dst_seg) = (seg.unwrap_or(Segment::Ds), Segment::Es);
        let mut segs = vec![];
        let mut seg_base =
            |s: Segment, target: u64, segs: &mut Vec<(Segment, kvm_segment)>| -> u64 {
                if env.long() && !matches!(s, Segment::Fs | Segment::Gs) {
                    return 0;
                }
                if let Some((_, v)) = segs.iter().find(|(x, _)| *x == s) {
                    return v.base;
                }
                if need_base || matches!(s, Segment::Fs | Segment::Gs | Segment::Cs) {
                    let base = if s == Segment::Cs {
                        // CS cannot move (the code is there): read code bytes as the source.
                        return crate::driver::sreg(&env.sregs, Segment::Cs).base;
                    } else if need_base {
                        (target - 0x1000) & !0xFFF
                    } else {
                        target.wrapping_sub(0x3000 + 0x1000 * rng.below(4)) & 0xFFFF_FFFF
                    };
                    let v = if s == Segment::Ss {
                        env.stack_seg(base)
                    } else {
                        env.data_seg(base)
                    };
                    segs.push((s, v));
                    return base;
                }
                crate::driver::sreg(&env.sregs, s).base
            };
        let cs_src = src_seg == Segment::Cs;
        let src = if cs_src {
            // Source bytes from the code segment (the program itself is there).
            let cs_base = crate::driver::sreg(&env.sregs, Segment::Cs).base;
            if env.long() {
                layout::CODE + 0x10
            } else {
                cs_base + 0x10
            }
        } else {
            src
        };
        if kind != 1 {
            let b = seg_base(src_seg, src, &mut segs);
            let off = (src - b) & mask(addr_bits);
            c.gprs.push((6, off));
        }
        if kind != 2 {
            let b = seg_base(dst_seg, dst, &mut segs);
            let off = (dst.wrapping_sub(b)) & mask(addr_bits);
            c.gprs.push((7, off));
        }
        c.segs = segs;
        c.gprs
            .push((1, count | (env.value(rng) & !mask(addr_bits))));
        if kind == 1 {
            c.gprs.push((0, env.value(rng)));
        }
        if !src_mmio && kind != 1 && !cs_src {
            let lo = src - span;
            let bytes: Vec<u8> = (0..3 * span).map(|_| rng.next() as u8).collect();
            c.ram.push((lo, bytes));
        }
        if !dst_mmio && kind != 2 {
            let lo = dst - span - 8;
            c.ram.push((lo, vec![0xCC; (2 * span + 16) as usize]));
            c.watch.push(lo..lo + 2 * span + 16);
        }
        // Cases whose MMIO side is never reached would not exit: skip them.
        if (kind == 0 && !src_mmio && !dst_mmio) || (kind == 2 && !src_mmio) {
            continue;
        }
        out.push(c);
    }
    // REP STOS crossing from RAM into MMIO (up) and from MMIO into RAM (down), and REP MOVS
    // across MMIO pages; in paged modes across discontiguous MMIO pages.
    let mut crossings: Vec<(&str, u64, bool)> = vec![
        ("ram->mmio up", LOW_MMIO - 16, false),
        ("mmio->ram down", LOW_MMIO + 8, true),
    ];
    if !env.real() {
        crossings.push(("mmio page up", HIGH_MMIO + 0x1000 - 12, false));
    }
    if env.paged {
        crossings.push(("split va up", va::SPLIT + 0x1000 - 8, false));
        crossings.push(("ram->mmio va up", va::RAM_THEN_MMIO + 0x1000 - 8, false));
    }
    for (what, start, df) in crossings {
        let addr_bits = env.address_sizes()[0];
        let rp = RepPrefixKind::Repe;
        for size in [2usize, 4] {
            let i = if size == 2 {
                Instruction::with_stosw(addr_bits, rp)
            } else {
                Instruction::with_stosd(addr_bits, rp)
            }
            .unwrap();
            let count = 8;
            let mut c = Case::new("string", format!("rep stos{size} {what}"), i);
            if df {
                c.rflags |= 1 << 10;
            }
            let mut segs = vec![];
            let base = if !env.long() && (addr_bits == 16 || env.bits == 16) {
                let b = (start & !0xFFF) - 0x1000;
                segs.push((Segment::Es, env.data_seg(b)));
                b
            } else {
                0
            };
            c.segs = segs;
            c.gprs.push((7, start - base));
            c.gprs.push((1, count));
            c.gprs.push((0, env.value(rng)));
            let ram = if what.starts_with("ram->mmio va") {
                Some(gpa::RAM_PAGE + 0x1000 - 16..gpa::RAM_PAGE + 0x1000)
            } else if what.starts_with("ram") {
                Some(LOW_MMIO - 32..LOW_MMIO)
            } else if what.starts_with("mmio->ram") {
                Some(LOW_MMIO - 64..LOW_MMIO)
            } else {
                None
            };
            if let Some(r) = ram {
                c.ram
                    .push((r.start, vec![0xCC; (r.end - r.start) as usize]));
                c.watch.push(r);
            }
            out.push(c);
        }
    }
    // An element straddling RAM and MMIO inside a REP MOVS (MMIO source).
    {
        let addr_bits = env.address_sizes()[0];
        let i = Instruction::with_movsd(addr_bits, Register::None, RepPrefixKind::Repe).unwrap();
        let mut c = Case::new("string", "rep movsd dst straddles ram->mmio", i);
        let (dst, src) = (LOW_MMIO - 6, LOW_MMIO + 0x800);
        if !env.long() && (addr_bits == 16 || env.bits == 16) {
            let b = LOW_MMIO - 0x1000;
            c.segs.push((Segment::Es, env.data_seg(b)));
            c.segs.push((Segment::Ds, env.data_seg(b)));
            c.gprs.push((7, dst - b));
            c.gprs.push((6, src - b));
        } else {
            c.gprs.push((7, dst));
            c.gprs.push((6, src));
        }
        c.gprs.push((1, 3));
        c.ram.push((LOW_MMIO - 16, vec![0xCC; 16]));
        c.watch.push(LOW_MMIO - 16..LOW_MMIO);
        out.push(c);
    }
    out
}

/// IN/OUT (imm8 and DX, 1/2/4 bytes), INS/OUTS with and without REP, both directions,
/// address sizes, OUTS source overrides, RAM and MMIO memory sides.
pub fn port_cases(env: &Env, rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    let ports_imm: [u8; 6] = [0x60, 0x80, 0x21, 0x70, 0xE9, 0x92];
    let ports_dx: [u16; 7] = [0x3F8, 0x510, 0xCF8, 0xCFC, 0x1F0, 0xFFFF, 0x4000];
    for (k, size) in [1usize, 2, 4].into_iter().cycle().take(24).enumerate() {
        let dx = k % 2 == 1;
        let out_dir = (k / 2) % 2 == 1;
        let r = reg_of(0, size);
        let (i, port) = if dx {
            let p = rng.pick(&ports_dx);
            let code = match (out_dir, size) {
                (false, 1) => Code::In_AL_DX,
                (false, 2) => Code::In_AX_DX,
                (false, _) => Code::In_EAX_DX,
                (true, 1) => Code::Out_DX_AL,
                (true, 2) => Code::Out_DX_AX,
                (true, _) => Code::Out_DX_EAX,
            };
            let i = if out_dir {
                with2!(code, Register::DX, r)
            } else {
                with2!(code, r, Register::DX)
            };
            (i, p)
        } else {
            let p = rng.pick(&ports_imm);
            let code = match (out_dir, size) {
                (false, 1) => Code::In_AL_imm8,
                (false, 2) => Code::In_AX_imm8,
                (false, _) => Code::In_EAX_imm8,
                (true, 1) => Code::Out_imm8_AL,
                (true, 2) => Code::Out_imm8_AX,
                (true, _) => Code::Out_imm8_EAX,
            };
            let i = if out_dir {
                with2!(code, p as u32, r)
            } else {
                with2!(code, r, p as u32)
            };
            (i, p as u16)
        };
        let mut c = Case::new("port", format!("{:?} port {port:#x}", i.code()), i)
            .reg(0, env.value(rng))
            .reg(
                2,
                if dx {
                    (env.value(rng) & !0xFFFF) | port as u64
                } else {
                    env.value(rng)
                },
            );
        if beyond_bitmap(env, port, size) {
            c = c.fault(13);
        }
        out.push(c);
    }
    for k in 0..36 {
        let size = [1usize, 2, 4][k % 3];
        let outs = (k / 3) % 2 == 1;
        let addr_bits = env.address_sizes()[(k / 6) % 2];
        let rep = k % 4 != 0;
        let df = rng.chance(3);
        let count = if rep { 1 + rng.below(5) } else { 1 };
        let mmio = rng.chance(3);
        let seg = if outs && rng.chance(3) {
            Some(rng.pick(&[Segment::Es, Segment::Fs, Segment::Gs, Segment::Ss]))
        } else {
            None
        };
        let rp = if rep {
            RepPrefixKind::Repe
        } else {
            RepPrefixKind::None
        };
        let sp = seg.map(seg_reg).unwrap_or(Register::None);
        let i = match (outs, size) {
            (false, 1) => Instruction::with_insb(addr_bits, rp),
            (false, 2) => Instruction::with_insw(addr_bits, rp),
            (false, _) => Instruction::with_insd(addr_bits, rp),
            (true, 1) => Instruction::with_outsb(addr_bits, sp, rp),
            (true, 2) => Instruction::with_outsw(addr_bits, sp, rp),
            (true, _) => Instruction::with_outsd(addr_bits, sp, rp),
        }
        .unwrap();
        let port = rng.pick(&ports_dx);
        let span = size as u64 * count;
        let linear = if mmio {
            if env.real() || addr_bits == 16 || rng.chance(2) {
                LOW_MMIO + 0x1000 * rng.below(8) + 0x400 + rng.below(0x100)
            } else {
                HIGH_MMIO + 0x1000 * rng.below(8) + 0x400 + rng.below(0x100)
            }
        } else {
            RAM_BUF + 0x4000 + rng.below(0x100) * 4
        };
        let eff = if outs {
            seg.unwrap_or(Segment::Ds)
        } else {
            Segment::Es
        };
        let mut c = Case::new(
            "port",
            format!(
                "{:?} a{addr_bits} x{count} df{} {seg:?} {}",
                i.code(),
                df as u8,
                if mmio { "mmio" } else { "ram" }
            ),
            i,
        );
        if df {
            c.rflags |= 1 << 10;
        }
        let base = if env.long() && !matches!(eff, Segment::Fs | Segment::Gs) {
            0
        } else if !env.long() && (addr_bits == 16 || env.bits == 16) {
            let b = (linear - 0x1000) & !0xFFF;
            c.segs.push((
                eff,
                if eff == Segment::Ss {
                    env.stack_seg(b)
                } else {
                    env.data_seg(b)
                },
            ));
            b
        } else if matches!(eff, Segment::Fs | Segment::Gs) {
            let b = (linear - 0x2000) & 0xFFFF_FFFF;
            c.segs.push((eff, env.data_seg(b)));
            b
        } else {
            crate::driver::sreg(&env.sregs, eff).base
        };
        let off = (linear - base) & mask(addr_bits);
        c.gprs.push((if outs { 6 } else { 7 }, off));
        if beyond_bitmap(env, port, size) {
            c = c.fault(13);
        } else if !outs && mmio && count > 1 {
            c.kvm_bug = Some(KVM_REP_INS_MMIO);
        }
        c.gprs
            .push((1, count | (env.value(rng) & !mask(addr_bits))));
        c.gprs.push((2, (env.value(rng) & !0xFFFF) | port as u64));
        if !mmio {
            let lo = linear - span - 8;
            if outs {
                let bytes: Vec<u8> = (0..2 * span + 16).map(|_| rng.next() as u8).collect();
                c.ram.push((lo, bytes));
            } else {
                c.ram.push((lo, vec![0xCC; (2 * span + 16) as usize]));
                c.watch.push(lo..lo + 2 * span + 16);
            }
        }
        out.push(c);
    }
    // At CPL 3 with IOPL 3 the bitmap is not consulted (a denied port is fine).
    if env.mode.cpl() == 3 {
        let mut c = Case::new(
            "port",
            "out dx, al with IOPL 3 (bitmap denies)",
            with2!(Code::Out_DX_AL, Register::DX, Register::AL),
        )
        .reg(2, 0x3F8);
        c.rflags |= 3 << 12;
        c.io_deny.push(0x3F8);
        if env.mode == Mode::User64 {
            c.kvm_bug = Some(KVM_IOPL3_USER64);
        }
        out.push(c);
    }
    out
}

/// ADD, OR, ADC, SBB, AND, SUB, XOR, CMP, TEST, INC, DEC, NEG, NOT on MMIO at every size and
/// form; random starting flags (carry in for ADC/SBB), some with LOCK.
pub fn alu_cases(env: &Env, rng: &mut Rng) -> Vec<Case> {
    use Code::*;
    // (rm,r), (r,rm), (rm,imm), (rm,imm8 sign-extended) per operation and size.
    let binary: [(&str, [[Code; 4]; 4]); 8] = [
        (
            "add",
            [
                [Add_rm8_r8, Add_rm16_r16, Add_rm32_r32, Add_rm64_r64],
                [Add_r8_rm8, Add_r16_rm16, Add_r32_rm32, Add_r64_rm64],
                [Add_rm8_imm8, Add_rm16_imm16, Add_rm32_imm32, Add_rm64_imm32],
                [Add_rm8_imm8, Add_rm16_imm8, Add_rm32_imm8, Add_rm64_imm8],
            ],
        ),
        (
            "or",
            [
                [Or_rm8_r8, Or_rm16_r16, Or_rm32_r32, Or_rm64_r64],
                [Or_r8_rm8, Or_r16_rm16, Or_r32_rm32, Or_r64_rm64],
                [Or_rm8_imm8, Or_rm16_imm16, Or_rm32_imm32, Or_rm64_imm32],
                [Or_rm8_imm8, Or_rm16_imm8, Or_rm32_imm8, Or_rm64_imm8],
            ],
        ),
        (
            "adc",
            [
                [Adc_rm8_r8, Adc_rm16_r16, Adc_rm32_r32, Adc_rm64_r64],
                [Adc_r8_rm8, Adc_r16_rm16, Adc_r32_rm32, Adc_r64_rm64],
                [Adc_rm8_imm8, Adc_rm16_imm16, Adc_rm32_imm32, Adc_rm64_imm32],
                [Adc_rm8_imm8, Adc_rm16_imm8, Adc_rm32_imm8, Adc_rm64_imm8],
            ],
        ),
        (
            "sbb",
            [
                [Sbb_rm8_r8, Sbb_rm16_r16, Sbb_rm32_r32, Sbb_rm64_r64],
                [Sbb_r8_rm8, Sbb_r16_rm16, Sbb_r32_rm32, Sbb_r64_rm64],
                [Sbb_rm8_imm8, Sbb_rm16_imm16, Sbb_rm32_imm32, Sbb_rm64_imm32],
                [Sbb_rm8_imm8, Sbb_rm16_imm8, Sbb_rm32_imm8, Sbb_rm64_imm8],
            ],
        ),
        (
            "and",
            [
                [And_rm8_r8, And_rm16_r16, And_rm32_r32, And_rm64_r64],
                [And_r8_rm8, And_r16_rm16, And_r32_rm32, And_r64_rm64],
                [And_rm8_imm8, And_rm16_imm16, And_rm32_imm32, And_rm64_imm32],
                [And_rm8_imm8, And_rm16_imm8, And_rm32_imm8, And_rm64_imm8],
            ],
        ),
        (
            "sub",
            [
                [Sub_rm8_r8, Sub_rm16_r16, Sub_rm32_r32, Sub_rm64_r64],
                [Sub_r8_rm8, Sub_r16_rm16, Sub_r32_rm32, Sub_r64_rm64],
                [Sub_rm8_imm8, Sub_rm16_imm16, Sub_rm32_imm32, Sub_rm64_imm32],
                [Sub_rm8_imm8, Sub_rm16_imm8, Sub_rm32_imm8, Sub_rm64_imm8],
            ],
        ),
        (
            "xor",
            [
                [Xor_rm8_r8, Xor_rm16_r16, Xor_rm32_r32, Xor_rm64_r64],
                [Xor_r8_rm8, Xor_r16_rm16, Xor_r32_rm32, Xor_r64_rm64],
                [Xor_rm8_imm8, Xor_rm16_imm16, Xor_rm32_imm32, Xor_rm64_imm32],
                [Xor_rm8_imm8, Xor_rm16_imm8, Xor_rm32_imm8, Xor_rm64_imm8],
            ],
        ),
        (
            "cmp",
            [
                [Cmp_rm8_r8, Cmp_rm16_r16, Cmp_rm32_r32, Cmp_rm64_r64],
                [Cmp_r8_rm8, Cmp_r16_rm16, Cmp_r32_rm32, Cmp_r64_rm64],
                [Cmp_rm8_imm8, Cmp_rm16_imm16, Cmp_rm32_imm32, Cmp_rm64_imm32],
                [Cmp_rm8_imm8, Cmp_rm16_imm8, Cmp_rm32_imm8, Cmp_rm64_imm8],
            ],
        ),
    ];
    let unary: [(&str, [Code; 4]); 4] = [
        ("inc", [Inc_rm8, Inc_rm16, Inc_rm32, Inc_rm64]),
        ("dec", [Dec_rm8, Dec_rm16, Dec_rm32, Dec_rm64]),
        ("neg", [Neg_rm8, Neg_rm16, Neg_rm32, Neg_rm64]),
        ("not", [Not_rm8, Not_rm16, Not_rm32, Not_rm64]),
    ];
    let test: [[Code; 4]; 2] = [
        [Test_rm8_r8, Test_rm16_r16, Test_rm32_r32, Test_rm64_r64],
        [
            Test_rm8_imm8,
            Test_rm16_imm16,
            Test_rm32_imm32,
            Test_rm64_imm32,
        ],
    ];
    let status = [1u64, 4, 0x10, 0x40, 0x80, 0x800];
    let flags = |rng: &mut Rng| -> u64 {
        status
            .iter()
            .filter(|_| rng.chance(2))
            .fold(0, |a, b| a | b)
    };
    let mut out = vec![];
    let nsizes = sizes(env).len();
    for (name, forms) in binary {
        for (f, codes) in forms.iter().enumerate() {
            for _ in 0..2 {
                let si = rng.below(nsizes as u64) as usize;
                let size = 1usize << si;
                let code = codes[si];
                let n = rng.below(env.gpr_count() as u64) as usize;
                let (m, target) = random_mem(env, rng, size, &[n, n & 3, 4]);
                let r = data_reg(env, n, size);
                let imm = rng.next();
                let i = match f {
                    0 => with2!(code, m.op, r),
                    1 => with2!(code, r, m.op),
                    2 => match size {
                        1 => with2!(code, m.op, imm as u8 as u32),
                        2 => with2!(code, m.op, imm as u16 as u32),
                        4 => with2!(code, m.op, imm as u32),
                        _ => with2!(code, m.op, imm as i32),
                    },
                    _ => match size {
                        1 => with2!(code, m.op, imm as u8 as u32),
                        8 => with2!(code, m.op, imm as i8 as i32),
                        _ => with2!(code, m.op, imm as i8 as i32),
                    },
                };
                let mut i = i;
                let lock = f != 1 && name != "cmp" && rng.chance(5);
                if lock {
                    i.set_has_lock_prefix(true);
                }
                let mut c = Case::new(
                    "alu",
                    format!(
                        "{}{name} {code:?} {} -> {target:#x}",
                        if lock { "lock " } else { "" },
                        m.desc
                    ),
                    i,
                )
                .reg(hw(r), env.value(rng));
                c.gprs.extend(m.regs.iter().copied());
                c.segs.extend(m.segs.iter().copied());
                c.rflags = flags(rng);
                out.push(c);
            }
        }
    }
    for (name, codes) in unary {
        for _ in 0..4 {
            let si = rng.below(nsizes as u64) as usize;
            let (m, target) = random_mem(env, rng, 1 << si, &[4]);
            let mut i = with1!(codes[si], m.op);
            if rng.chance(5) {
                i.set_has_lock_prefix(true);
            }
            let mut c = Case::new(
                "alu",
                format!("{name} {:?} {} -> {target:#x}", codes[si], m.desc),
                i,
            )
            .with_mem(&m);
            c.rflags = flags(rng);
            out.push(c);
        }
    }
    for (f, codes) in test.iter().enumerate() {
        for _ in 0..3 {
            let si = rng.below(nsizes as u64) as usize;
            let size = 1usize << si;
            let n = rng.below(env.gpr_count() as u64) as usize;
            let (m, target) = random_mem(env, rng, size, &[n, n & 3, 4]);
            let r = data_reg(env, n, size);
            let imm = rng.next();
            let i = if f == 0 {
                with2!(codes[si], m.op, r)
            } else {
                match size {
                    1 => with2!(codes[si], m.op, imm as u8 as u32),
                    2 => with2!(codes[si], m.op, imm as u16 as u32),
                    4 => with2!(codes[si], m.op, imm as u32),
                    _ => with2!(codes[si], m.op, imm as i32),
                }
            };
            let mut c = Case::new(
                "alu",
                format!("test {:?} {} -> {target:#x}", codes[si], m.desc),
                i,
            )
            .reg(hw(r), env.value(rng));
            c.gprs.extend(m.regs.iter().copied());
            c.segs.extend(m.segs.iter().copied());
            c.rflags = flags(rng);
            out.push(c);
        }
    }
    out
}

/// Faults on MMIO and port instructions: #PF, #GP (non-canonical, limits, read-only data,
/// null segment, I/O bitmap), #SS, #AC; all-or-nothing straddles and REPs that fault part way.
pub fn fault_cases(env: &Env, rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    let store32 = |m: &Mem| with2!(Code::Mov_rm32_r32, m.op, Register::ECX);
    let load32 = |m: &Mem| with2!(Code::Mov_r32_rm32, Register::ECX, m.op);
    let ab = env.address_sizes()[0];
    let bx = bx_or_a16(env, ab);
    let bp = Form::Sib {
        base: Some(5),
        index: None,
        scale: 1,
        disp: 1,
    };
    if env.paged {
        // #PF: not present (read, write), read-only (write), all-or-nothing straddles.
        let np = env.mem(rng, bx, ab, None, va::NOT_PRESENT + 0x123, 4);
        out.push(
            Case::new("fault", "#PF read not present", load32(&np))
                .with_mem(&np)
                .fault(14),
        );
        out.push(
            Case::new("fault", "#PF write not present", store32(&np))
                .with_mem(&np)
                .fault(14),
        );
        let ro = env.mem(rng, bx, ab, None, va::READ_ONLY + 0x40, 4);
        out.push(
            Case::new("fault", "#PF write read-only", store32(&ro))
                .with_mem(&ro)
                .fault(14),
        );
        out.push(Case::new("fault", "read of read-only page", load32(&ro)).with_mem(&ro));
        let rmw = env.mem(rng, bx, ab, None, va::READ_ONLY + 0x80, 4);
        out.push(
            Case::new(
                "fault",
                "#PF add to read-only",
                with2!(Code::Add_rm32_r32, rmw.op, Register::ECX),
            )
            .with_mem(&rmw)
            .fault(14)
            .kvm_bug(KVM_READS_BEFORE_WRITE_FAULT),
        );
        let edge = env.mem(rng, bx, ab, None, va::EDGE + 0xFFE, 4);
        out.push(
            Case::new(
                "fault",
                "#PF store straddling into not present",
                store32(&edge),
            )
            .with_mem(&edge)
            .fault(14),
        );
        out.push(
            Case::new(
                "fault",
                "#PF load straddling into not present",
                load32(&edge),
            )
            .with_mem(&edge)
            .fault(14),
        );
        // REP STOSD running into a not-present page after three MMIO elements.
        let (segs, di) = place(env, Segment::Es, va::EDGE + 0x1000 - 12, ab);
        let mut c = Case::new(
            "fault",
            "#PF rep stosd part way",
            Instruction::with_stosd(ab, RepPrefixKind::Repe).unwrap(),
        )
        .reg(7, di)
        .reg(1, 6)
        .reg(0, 0x1122_3344)
        .fault(14);
        c.segs = segs;
        out.push(c);
        // REP MOVSB, MMIO to MMIO, the destination running into a read-only page after two
        // elements; and a MOVSB whose first destination is read-only.
        for (what, dst, count) in [
            ("part way", va::READ_ONLY - 2, 4),
            ("first element", va::READ_ONLY + 0x10, 1),
        ] {
            let (mut segs, si) = place(env, Segment::Ds, HIGH_MMIO + 0x800, ab);
            let (segs2, di) = place(env, Segment::Es, dst, ab);
            segs.extend(segs2);
            let mut c = Case::new(
                "fault",
                format!("#PF rep movsb dst into read-only {what}"),
                Instruction::with_movsb(ab, Register::None, RepPrefixKind::Repe).unwrap(),
            )
            .reg(6, si)
            .reg(7, di)
            .reg(1, count)
            .fault(14)
            .kvm_bug(KVM_READS_BEFORE_WRITE_FAULT);
            c.segs = segs;
            out.push(c);
        }
        // INS into a not-present page: the port must not be read.
        let (segs, di) = place(env, Segment::Es, va::NOT_PRESENT, ab);
        let mut c = Case::new(
            "fault",
            "#PF insb into not present",
            Instruction::with_insb(ab, RepPrefixKind::None).unwrap(),
        )
        .reg(7, di)
        .reg(2, 0x3F8)
        .fault(14)
        .kvm_bug(KVM_READS_BEFORE_WRITE_FAULT);
        c.segs = segs;
        out.push(c);
        let (segs, si) = place(env, Segment::Ds, va::NOT_PRESENT + 0x10, ab);
        let mut c = Case::new(
            "fault",
            "#PF outsb from not present",
            Instruction::with_outsb(ab, Register::None, RepPrefixKind::None).unwrap(),
        )
        .reg(6, si)
        .reg(2, 0x3F8)
        .fault(14);
        c.segs = segs;
        out.push(c);
    }
    if env.mode.cpl() == 3 && env.paged {
        // User access to a supervisor page.
        let sup = env.mem(rng, bx, ab, None, va::SUPERVISOR + 0x20, 4);
        out.push(
            Case::new("fault", "#PF user read of supervisor page", load32(&sup))
                .with_mem(&sup)
                .fault(14),
        );
        out.push(
            Case::new("fault", "#PF user write of supervisor page", store32(&sup))
                .with_mem(&sup)
                .fault(14),
        );
    }
    if env.mode.cpl() == 0 && env.paged {
        // Supervisor may write a read-only page only if CR0.WP = 0 (the harness sets WP).
        let sup = env.mem(rng, bx, ab, None, va::SUPERVISOR + 0x20, 4);
        out.push(
            Case::new(
                "fault",
                "supervisor write of supervisor page",
                store32(&sup),
            )
            .with_mem(&sup),
        );
    }
    if env.long() {
        // #GP: non-canonical; #SS: non-canonical through RSP/RBP.
        let c = Case::new(
            "fault",
            "#GP non-canonical store",
            with2!(
                Code::Mov_rm32_r32,
                MemoryOperand::with_base(Register::RAX),
                Register::ECX
            ),
        )
        .reg(0, 0x8000_0000_0000_0000)
        .fault(13);
        out.push(c);
        let c = Case::new(
            "fault",
            "#GP straddling the canonical boundary",
            with2!(
                Code::Mov_r32_rm32,
                Register::ECX,
                MemoryOperand::with_base(Register::RAX)
            ),
        )
        .reg(0, 0x0000_7FFF_FFFF_FFFE)
        .fault(13)
        .kvm_bug(KVM_CANONICAL_STRADDLE);
        out.push(c);
        if env.paged {
            // The same with the last canonical page present (an MMIO page).
            let c = Case::new(
                "fault",
                "#GP straddling the canonical boundary from a present page",
                with2!(
                    Code::Mov_r64_rm64,
                    Register::RCX,
                    MemoryOperand::with_base(Register::RAX)
                ),
            )
            .reg(0, va::LAST_CANONICAL + 0xFF8 + 2)
            .fault(13)
            .kvm_bug(KVM_CANONICAL_STRADDLE);
            out.push(c);
        }
        let mut fs = env.data_seg(0);
        fs.base = 0x0000_7FFF_FFFF_F000;
        let mut c = Case::new(
            "fault",
            "#GP fs base + offset non-canonical",
            with2!(
                Code::Mov_r32_rm32,
                Register::ECX,
                MemoryOperand::with_base_displ_size_bcst_seg(
                    Register::RAX,
                    0,
                    0,
                    false,
                    Register::FS
                )
            ),
        )
        .reg(0, 0x2000)
        .fault(13);
        c.segs.push((Segment::Fs, fs));
        out.push(c);
        let c = Case::new(
            "fault",
            "#SS non-canonical rbp",
            with2!(
                Code::Mov_rm32_r32,
                MemoryOperand::with_base(Register::RBP),
                Register::ECX
            ),
        )
        .reg(5, 0xFFFF_0000_0000_0000)
        .fault(12);
        out.push(c);
        let c = Case::new(
            "fault",
            "#SS non-canonical rsp+disp",
            with2!(
                Code::Mov_r32_rm32,
                Register::ECX,
                MemoryOperand::with_base_displ(Register::RSP, 0x7FFF_0000)
            ),
        )
        .reg(4, 0x7FFF_FFFF_0000_0000)
        .fault(12);
        out.push(c);
        let c = Case::new(
            "fault",
            "#GP stosb non-canonical rdi",
            Instruction::with_stosb(64, RepPrefixKind::Repe).unwrap(),
        )
        .reg(7, 0x8000_0000_0000_0000)
        .reg(1, 3)
        .fault(13);
        out.push(c);
    }
    if !env.long() && !env.real() {
        // Segment limit, read-only data segment, null segment, expand-down, SS limit.
        let base = HIGH_MMIO;
        let mut ds = env.data_seg(base);
        ds.limit = 0xFFF;
        ds.g = 0;
        let m_ok = env.mem_offset(rng, bx, ab, None, 0xFFC, 0);
        let m_bad = env.mem_offset(rng, bx, ab, None, 0xFFE, 0);
        let mut c = Case::new("fault", "#GP ds limit (last byte beyond)", store32(&m_bad))
            .with_mem(&m_bad)
            .fault(13);
        c.segs.push((Segment::Ds, ds));
        out.push(c);
        let mut c =
            Case::new("fault", "ds limit: last dword inside", load32(&m_ok)).with_mem(&m_ok);
        c.segs.push((Segment::Ds, ds));
        out.push(c);
        let mut ro = env.data_seg(base);
        ro.type_ = 1; // read-only, accessed
        let m = env.mem_offset(rng, bx, ab, None, 0x40, 0);
        let mut c = Case::new("fault", "#GP write to read-only data segment", store32(&m))
            .with_mem(&m)
            .fault(13);
        c.segs.push((Segment::Ds, ro));
        out.push(c);
        let mut c =
            Case::new("fault", "read through read-only data segment", load32(&m)).with_mem(&m);
        c.segs.push((Segment::Ds, ro));
        out.push(c);
        let mut null = env.data_seg(0);
        null.selector = 0;
        null.present = 0;
        null.unusable = 1;
        let mut c = Case::new(
            "fault",
            "#GP null ES for stosb",
            Instruction::with_stosb(ab, RepPrefixKind::None).unwrap(),
        )
        .reg(7, 0x40)
        .fault(13);
        c.segs.push((Segment::Es, null));
        out.push(c);
        // Expand-down: valid offsets are limit+1 ..= 0xFFFF_FFFF (B=1).
        let mut ed = env.data_seg(base - 0x1_0000);
        ed.type_ = 7; // read/write, expand-down, accessed
        ed.limit = 0xFFFF;
        ed.g = 0;
        ed.db = 1;
        for (off, ok) in [(0x1_0000u64, true), (0xFFFE, false)] {
            let form = Form::Sib {
                base: Some(3),
                index: None,
                scale: 1,
                disp: 0,
            };
            let m = env.mem_offset(rng, form, 32, None, off, 0);
            let mut c = Case::new(
                "fault",
                format!("expand-down ds offset {off:#x}"),
                with2!(Code::Mov_rm16_r16, m.op, Register::CX),
            )
            .with_mem(&m);
            c.segs.push((Segment::Ds, ed));
            if !ok {
                c = c.fault(13);
            }
            out.push(c);
        }
        // #SS: SS-relative beyond the SS limit (the limit still covers the stack in use).
        if env.bits == 32 {
            let mut ss = env.sregs.ss;
            ss.limit = 0x3_FFFF;
            ss.g = 0;
            let m = env.mem_offset(rng, bp, 32, None, 0x4_0000 + 0x10, 0);
            let mut c = Case::new("fault", "#SS ss limit", store32(&m))
                .with_mem(&m)
                .fault(12);
            c.segs.push((Segment::Ss, ss));
            out.push(c);
        }
    }
    if env.bits == 16 && !env.long() {
        // A word at offset 0xFFFF runs past the 64 KiB limit: #GP, or #SS through BP.
        let seg = env.data_seg(LOW_MMIO);
        let c = Case::new(
            "fault",
            "#GP word at offset 0xffff",
            with2!(
                Code::Mov_rm16_r16,
                MemoryOperand::with_base(Register::BX),
                Register::CX
            ),
        )
        .reg(3, 0xFFFF);
        let mut c = c;
        let mut lim = seg;
        lim.limit = 0xFFFF;
        lim.g = 0;
        c.segs.push((Segment::Ds, lim));
        out.push(c.fault(13));
        if env.real() {
            let c = Case::new(
                "fault",
                "#SS word at bp 0xffff",
                with2!(
                    Code::Mov_r16_rm16,
                    Register::CX,
                    MemoryOperand::with_base_displ(Register::BP, 0)
                ),
            )
            .reg(5, 0xFFFF);
            // SS in RAM: the exception frame is pushed there.
            let mut c = c;
            c.segs.push((Segment::Ss, env.stack_seg(layout::DATA)));
            out.push(c.fault(12));
        }
    }
    if env.mode.cpl() == 3 {
        // I/O bitmap denial at CPL 3 (IOPL 0).
        let deny = 0x2F8u16;
        let mk = |name: &str, i: Instruction, port: u16, deny: u16| {
            let mut c = Case::new("fault", name.to_string(), i)
                .reg(2, port as u64)
                .fault(13);
            c.io_deny.push(deny);
            c
        };
        out.push(mk(
            "#GP out dx,al denied",
            with2!(Code::Out_DX_AL, Register::DX, Register::AL),
            deny,
            deny,
        ));
        out.push(mk(
            "#GP in al,dx denied",
            with2!(Code::In_AL_DX, Register::AL, Register::DX),
            deny,
            deny,
        ));
        out.push(mk(
            "#GP out dx,eax upper port denied",
            with2!(Code::Out_DX_EAX, Register::DX, Register::EAX),
            deny - 3,
            deny,
        ));
        out.push(mk(
            "#GP in eax imm8 denied",
            with2!(Code::In_EAX_imm8, Register::EAX, 0x42u32),
            0,
            0x43,
        ));
        let mut c = mk(
            "#GP rep outsb denied",
            Instruction::with_outsb(ab, Register::None, RepPrefixKind::Repe).unwrap(),
            deny,
            deny,
        );
        c.gprs.push((6, RAM_BUF));
        c.gprs.push((1, 3));
        out.push(c);
        let mut c = mk(
            "#GP insw denied",
            Instruction::with_insw(ab, RepPrefixKind::None).unwrap(),
            deny,
            deny + 1,
        );
        c.gprs.push((7, RAM_BUF + 0x100));
        out.push(c);
        out.push(mk(
            "#GP out dx,ax at 0xffff (bitmap terminator)",
            with2!(Code::Out_DX_AX, Register::DX, Register::AX),
            0xFFFF,
            0x2F0,
        ));
        // Allowed neighbour: only the denied port faults.
        let mut c = Case::new(
            "fault",
            "out dx,al next to a denied port",
            with2!(Code::Out_DX_AL, Register::DX, Register::AL),
        )
        .reg(2, deny as u64 + 1);
        c.io_deny.push(deny);
        out.push(c);
        // #AC: CR0.AM and RFLAGS.AC at CPL 3, misaligned MMIO access.
        for (size, off) in [(4usize, 1u64), (2, 1), (8, 4)] {
            if size == 8 && !env.long() {
                continue;
            }
            let m = env.mem(rng, bx, ab, None, HIGH_MMIO + 0x100 + off, size);
            let code = match size {
                2 => Code::Mov_r16_rm16,
                4 => Code::Mov_r32_rm32,
                _ => Code::Mov_r64_rm64,
            };
            let mut c = Case::new(
                "fault",
                format!("#AC misaligned {size}-byte load"),
                with2!(code, reg_of(1, size), m.op),
            )
            .with_mem(&m)
            .fault(17);
            c.cr0_or |= 1 << 18;
            c.rflags |= 1 << 18;
            if env.mode == Mode::User32 {
                c.kvm_bug = Some(KVM_NO_AC);
            }
            out.push(c);
        }
        // More #AC: string elements, a read-modify-write, a segment-register store, port
        // strings. (In User64 kvm-pvm runs the instruction on the processor, which raises
        // #AC before the MMIO fault: a hardware oracle.)
        let ac = |c: Case| -> Case {
            let mut c = c.fault(17);
            c.cr0_or |= 1 << 18;
            c.rflags |= 1 << 18;
            if env.mode == Mode::User32 {
                c.kvm_bug = Some(KVM_NO_AC);
            }
            c
        };
        let mis = HIGH_MMIO + 0x201;
        let (segs, di) = place(env, Segment::Es, mis, ab);
        let mut c = ac(Case::new(
            "fault",
            "#AC misaligned rep stosd",
            Instruction::with_stosd(ab, RepPrefixKind::Repe).unwrap(),
        )
        .reg(7, di)
        .reg(1, 2));
        c.segs.extend(segs);
        out.push(c);
        let (segs, si) = place(env, Segment::Ds, mis + 0x10, ab);
        let mut c = ac(Case::new(
            "fault",
            "#AC misaligned movsw source",
            Instruction::with_movsw(ab, Register::None, RepPrefixKind::None).unwrap(),
        )
        .reg(6, si)
        .reg(7, RAM_BUF));
        c.segs.extend(segs);
        out.push(c);
        let m = env.mem(rng, bx, ab, None, mis + 0x20, 4);
        out.push(ac(Case::new(
            "fault",
            "#AC misaligned add",
            with2!(Code::Add_rm32_r32, m.op, Register::ECX),
        )
        .with_mem(&m)));
        let m = env.mem(rng, bx, ab, None, mis + 0x30, 2);
        out.push(ac(Case::new(
            "fault",
            "#AC misaligned mov m16, ds",
            with2!(Code::Mov_rm16_Sreg, m.op, Register::DS),
        )
        .with_mem(&m)));
        let (segs, di) = place(env, Segment::Es, mis + 0x40, ab);
        let mut c = ac(Case::new(
            "fault",
            "#AC misaligned insw",
            Instruction::with_insw(ab, RepPrefixKind::None).unwrap(),
        )
        .reg(7, di)
        .reg(2, 0x3F8));
        c.kvm_bug = Some(KVM_NO_AC);
        c.segs.extend(segs);
        out.push(c);
        // A misaligned byte access never faults.
        let m = env.mem(rng, bx, ab, None, mis + 0x50, 1);
        let mut c = Case::new(
            "fault",
            "byte access with AC armed",
            with2!(Code::Mov_r8_rm8, Register::CL, m.op),
        )
        .with_mem(&m);
        c.cr0_or |= 1 << 18;
        c.rflags |= 1 << 18;
        out.push(c);
        // Aligned: no #AC.
        let m = env.mem(rng, bx, ab, None, HIGH_MMIO + 0x100, 4);
        let mut c = Case::new("fault", "aligned load with AC armed", load32(&m)).with_mem(&m);
        c.cr0_or |= 1 << 18;
        c.rflags |= 1 << 18;
        out.push(c);
    }
    out
}

/// At CPL 3 (IOPL 0) an access to ports beyond 0xFFFF reads the bitmap's terminating 0xFF
/// byte: #GP (SDM Vol. 1 §19.5.2).
fn beyond_bitmap(env: &Env, port: u16, size: usize) -> bool {
    env.mode.cpl() == 3 && port as usize + size > 0x1_0000
}

fn bx_or_a16(env: &Env, addr_bits: u32) -> Form {
    if addr_bits == 16 || env.bits == 16 {
        Form::A16 {
            base: Some(Register::BX),
            index: None,
            disp: 0,
        }
    } else {
        Form::Sib {
            base: Some(3),
            index: None,
            scale: 1,
            disp: 0,
        }
    }
}

/// Segment set-up and offset so that `seg`:offset (with `addr_bits` addressing) is the linear
/// address `linear`: a moved segment base where 16-bit offsets need one, FS/GS bases below the
/// target, the mode's own segments otherwise.
pub fn place(
    env: &Env,
    seg: Segment,
    linear: u64,
    addr_bits: u32,
) -> (Vec<(Segment, kvm_segment)>, u64) {
    let mut segs = vec![];
    let base = if env.long() && !matches!(seg, Segment::Fs | Segment::Gs) {
        0
    } else if !env.long() && (addr_bits == 16 || env.bits == 16) {
        let b = linear.saturating_sub(0x1000) & !0xFFF;
        segs.push((
            seg,
            if seg == Segment::Ss {
                env.stack_seg(b)
            } else {
                env.data_seg(b)
            },
        ));
        b
    } else if matches!(seg, Segment::Fs | Segment::Gs) {
        let b = linear.wrapping_sub(0x2000) & if env.long() { u64::MAX } else { 0xFFFF_FFFF };
        segs.push((seg, env.data_seg(b)));
        b
    } else {
        crate::driver::sreg(&env.sregs, seg).base
    };
    (segs, linear.wrapping_sub(base) & mask(addr_bits))
}

/// Corners: 16-bit offset wraparound inside a REP, REP with count 0, 4 GiB linear wraparound,
/// a REP running past a segment limit, CS as a data segment, ignored and redundant prefixes,
/// RIP/EIP-relative operands followed by an immediate, null segments in 64-bit mode.
pub fn edge_cases(env: &Env, rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    let ab = env.address_sizes()[0];
    // REP STOSD with DI wrapping at 64 KiB (16-bit addressing), both directions.
    if !env.long() {
        for (df, di) in [(false, 0xFFF8u64), (true, 0x0004)] {
            let i = Instruction::with_stosd(16, RepPrefixKind::Repe).unwrap();
            let mut c = Case::new("edge", format!("rep stosd a16 di wraps df{}", df as u8), i)
                .reg(7, di | (env.value(rng) & 0xFFFF_0000))
                .reg(1, 4)
                .reg(0, env.value(rng));
            c.segs.push((Segment::Es, env.data_seg(LOW_MMIO)));
            if df {
                c.rflags |= 1 << 10;
            }
            out.push(c);
        }
        // REP MOVSW with SI wrapping, source MMIO, destination RAM.
        let i = Instruction::with_movsw(16, Register::None, RepPrefixKind::Repe).unwrap();
        let mut c = Case::new("edge", "rep movsw a16 si wraps", i)
            .reg(6, 0xFFFC)
            .reg(7, 0x100)
            .reg(1, 4);
        c.segs.push((Segment::Ds, env.data_seg(LOW_MMIO)));
        c.segs.push((Segment::Es, env.data_seg(RAM_BUF)));
        c.ram.push((RAM_BUF + 0xF8, vec![0xCC; 24]));
        c.watch.push(RAM_BUF + 0xF8..RAM_BUF + 0x110);
        out.push(c);
        // A word at offset 0xFFFF: beyond the 64 KiB limit.
        let i = Instruction::with_stosw(16, RepPrefixKind::None).unwrap();
        let mut c = Case::new("edge", "stosw a16 at di 0xffff", i)
            .reg(7, 0xFFFF)
            .fault(13);
        let mut es = env.data_seg(LOW_MMIO);
        es.limit = 0xFFFF;
        es.g = 0;
        c.segs.push((Segment::Es, es));
        out.push(c);
    }
    // REP with count 0: no access, RIP moves on.
    for (name, i) in [
        (
            "rep movsd count 0",
            Instruction::with_movsd(ab, Register::None, RepPrefixKind::Repe).unwrap(),
        ),
        (
            "rep stosb count 0",
            Instruction::with_stosb(ab, RepPrefixKind::Repe).unwrap(),
        ),
        (
            "rep insw count 0",
            Instruction::with_insw(ab, RepPrefixKind::Repe).unwrap(),
        ),
        (
            "rep outsb count 0",
            Instruction::with_outsb(ab, Register::None, RepPrefixKind::Repe).unwrap(),
        ),
    ] {
        let (segs, di) = place(env, Segment::Es, LOW_MMIO + 0x100, ab);
        let mut c = Case::new("edge", name, i)
            .reg(1, env.value(rng) & !mask(ab))
            .reg(6, di)
            .reg(7, di)
            .reg(2, 0x3F8);
        c.segs = segs;
        out.push(c);
    }
    if !env.long() && !env.real() {
        // 32-bit linear wraparound: FS base + offset beyond 4 GiB.
        if env.bits == 32 {
            let mut fs = env.data_seg(0);
            fs.base = 0xFFFF_F000;
            let m = env.mem_offset(
                rng,
                Form::Sib {
                    base: Some(3),
                    index: None,
                    scale: 1,
                    disp: 0,
                },
                32,
                Some(Segment::Fs),
                HIGH_MMIO + 0x1000 + 0x40,
                0,
            );
            let mut c = Case::new(
                "edge",
                "fs base wraps at 4 GiB",
                with2!(Code::Mov_rm32_r32, m.op, Register::ECX),
            )
            .with_mem(&m);
            c.segs.push((Segment::Fs, fs));
            out.push(c);
        }
        // A REP STOSD that runs past the ES limit after two elements: #GP part way.
        let mut es = env.data_seg(HIGH_MMIO);
        es.limit = 0xFFF;
        es.g = 0;
        let i = Instruction::with_stosd(ab, RepPrefixKind::Repe).unwrap();
        let mut c = Case::new("edge", "rep stosd runs past the es limit", i)
            .reg(7, 0xFF8)
            .reg(1, 4)
            .reg(0, env.value(rng))
            .fault(13);
        c.segs.push((Segment::Es, es));
        out.push(c);
        // CS as a data segment: readable code is readable, never writable.
        let m = env.mem_offset(rng, bx_or_a16(env, ab), ab, Some(Segment::Cs), 0x80, 0);
        out.push(
            Case::new(
                "edge",
                "write through cs",
                with2!(Code::Mov_rm32_r32, m.op, Register::ECX),
            )
            .with_mem(&m)
            .fault(13),
        );
        // Expand-down with B = 0: the upper bound is 0xFFFF.
        let mut ed = env.data_seg(HIGH_MMIO);
        ed.type_ = 7;
        ed.limit = 0x0FFF;
        ed.g = 0;
        ed.db = 0;
        for (off, ok) in [
            (0x1000u64, true),
            (0xFFFC, true),
            (0xFFFE, false),
            (0x10000, false),
        ] {
            let m = env.mem_offset(
                rng,
                Form::Sib {
                    base: Some(3),
                    index: None,
                    scale: 1,
                    disp: 0,
                },
                32,
                None,
                off,
                0,
            );
            let mut c = Case::new(
                "edge",
                format!("expand-down b=0 offset {off:#x}"),
                with2!(Code::Mov_r32_rm32, Register::ECX, m.op),
            )
            .with_mem(&m);
            c.segs.push((Segment::Ds, ed));
            if !ok {
                c = c.fault(13);
            }
            out.push(c);
        }
    }
    if env.real() {
        // Real mode: a 32-bit offset above 0xFFFF is beyond the limit.
        let c = Case::new(
            "edge",
            "real mode offset above 0xffff",
            with2!(
                Code::Mov_r32_rm32,
                Register::ECX,
                MemoryOperand::with_base(Register::EBX)
            ),
        )
        .reg(3, 0x1_0000)
        .fault(13);
        out.push(c);
    }
    if env.long() {
        // RIP- and EIP-relative operands followed by an immediate.
        for (name, code, imm) in [
            (
                "mov dword [rip], imm32",
                Code::Mov_rm32_imm32,
                0x1234_5678u32,
            ),
            ("add byte [rip], imm8", Code::Add_rm8_imm8, 0x7F),
            ("cmp word [rip], imm16", Code::Cmp_rm16_imm16, 0xBEEF),
        ] {
            for base in [Register::RIP, Register::EIP] {
                let target = LOW_MMIO + 0x2000 + rng.below(0x800);
                let m = MemoryOperand::new(
                    base,
                    Register::None,
                    1,
                    target as i64,
                    8,
                    false,
                    Register::None,
                );
                let mut c = Case::new("edge", format!("{name} via {base:?}"), with2!(code, m, imm));
                c.rflags = rng.below(2) * 0x8D5;
                out.push(c);
            }
        }
        // Null DS is fine in 64-bit mode; a null FS still has its base.
        let mut null = env.sregs.ds;
        null.selector = 0;
        null.unusable = 1;
        null.present = 0;
        let c = Case::new(
            "edge",
            "null ds in 64-bit mode",
            with2!(
                Code::Mov_r32_rm32,
                Register::ECX,
                MemoryOperand::with_base(Register::RBX)
            ),
        )
        .reg(3, HIGH_MMIO + 0x10);
        let mut c = c;
        c.segs.push((Segment::Ds, null));
        out.push(c);
        let mut fs = null;
        fs.base = HIGH_MMIO;
        let mut c = Case::new(
            "edge",
            "null fs keeps its base in 64-bit mode",
            with2!(
                Code::Mov_r32_rm32,
                Register::ECX,
                MemoryOperand::with_base_displ_size_bcst_seg(
                    Register::RBX,
                    0,
                    0,
                    false,
                    Register::FS
                )
            ),
        )
        .reg(3, 0x20);
        c.segs.push((Segment::Fs, fs));
        out.push(c);
    }
    // A segment-register store to RAM at CPL 3 (no exit; hvemu runs from the snapshot).
    if env.mode.cpl() == 3 {
        let (segs, off) = place(env, Segment::Ds, RAM_BUF + 0x600, ab);
        let m = env.mem_offset(rng, bx_or_a16(env, ab), ab, None, off, 0);
        let mut c = Case::new(
            "edge",
            "mov [ram], cs at cpl 3",
            with2!(Code::Mov_rm16_Sreg, m.op, Register::CS),
        )
        .with_mem(&m);
        c.segs.extend(segs);
        c.ram.push((RAM_BUF + 0x600, vec![0xCC; 2]));
        c.watch.push(RAM_BUF + 0x600..RAM_BUF + 0x602);
        if env.mode == Mode::User64 {
            c.kvm_bug = Some(KVM_PVM_USER_CS);
        }
        out.push(c);
    }
    // Prefixes the encoder will not emit.
    let edi = |c: Case, linear: u64| -> Case {
        let (segs, off) = place(env, Segment::Es, linear, ab);
        let mut c = c.reg(7, off).reg(6, off).reg(1, 3).reg(0, 0x5566_7788);
        c.segs.extend(segs);
        c
    };
    let dst = if env.real() {
        LOW_MMIO + 0x300
    } else {
        HIGH_MMIO + 0x300
    };
    // FS prefix on STOSB is ignored: the destination is always ES.
    out.push(edi(
        Case::raw(
            "edge",
            "fs-prefixed stosb (ignored)",
            env.bits,
            &[0x64, 0xAA],
        ),
        dst,
    ));
    // F2 (REPNE) on MOVSB repeats like REP.
    let mut c = edi(
        Case::raw("edge", "repne movsb (F2 = REP)", env.bits, &[0xF2, 0xA4]),
        dst,
    );
    let (segs, si) = place(env, Segment::Ds, dst + 0x80, ab);
    c.segs.extend(segs);
    c.gprs.push((6, si));
    out.push(c);
    // REP on a non-string instruction is ignored; redundant segment and size prefixes.
    let (segs, off) = place(env, Segment::Ds, dst + 0x40, ab);
    let modrm_bx: &[u8] = if ab == 16 {
        &[0x89, 0x07]
    } else {
        &[0x89, 0x03]
    };
    let a16_bx = ab == 16;
    let mut bytes = vec![0xF3];
    bytes.extend_from_slice(modrm_bx);
    let mut c = Case::raw(
        "edge",
        "rep-prefixed mov store (prefix ignored)",
        env.bits,
        &bytes,
    )
    .reg(3, off)
    .reg(0, 0x1122_3344);
    c.segs.extend(segs.clone());
    out.push(c);
    let mut bytes = vec![0x26, 0x3E];
    bytes.extend_from_slice(modrm_bx);
    let mut c = Case::raw(
        "edge",
        "es then ds prefix: the last one wins",
        env.bits,
        &bytes,
    )
    .reg(3, off)
    .reg(0, 0x99AA_BBCC);
    c.segs.extend(segs.clone());
    out.push(c);
    let mut bytes = vec![0x66, 0x66];
    bytes.extend_from_slice(modrm_bx);
    let mut c = Case::raw("edge", "doubled operand-size prefix", env.bits, &bytes)
        .reg(3, off)
        .reg(0, 0xDDEE_FF00);
    c.segs.extend(segs);
    out.push(c);
    let _ = a16_bx;
    out
}

/// Instruction fetch across pages (contiguous, aliased to distant RAM pages, or running into a
/// not-present page) and the TSS's I/O permission bitmap at its limits.
pub fn fetch_and_tss_cases(env: &Env, rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    let ab = env.address_sizes()[0];
    // mov dword [bx/ebx/rbx + disp], imm32: long enough to straddle.
    let m = |rng: &mut Rng, target: u64| -> Mem {
        let form = if ab == 16 {
            Form::A16 {
                base: Some(Register::BX),
                index: None,
                disp: 2,
            }
        } else {
            Form::Sib {
                base: Some(3),
                index: None,
                scale: 1,
                disp: 2,
            }
        };
        env.mem(rng, form, ab, None, target, 4)
    };
    let target = if env.real() {
        LOW_MMIO + 0x500
    } else {
        HIGH_MMIO + 0x500
    };
    let mut places: Vec<(&str, u64)> = vec![("code page boundary", env.mode.code_origin() + 0xFFB)];
    if env.paged && env.bits != 16 {
        places.push(("aliased code pages", va::CODE_SPLIT + 0xFFB));
    }
    for (what, ip) in places {
        let mm = m(rng, target);
        let mut c = Case::new(
            "fetch",
            format!("instruction across a {what}"),
            with2!(Code::Mov_rm32_imm32, mm.op, 0xA1B2_C3D4u32),
        )
        .with_mem(&mm);
        c.ip = Some(ip);
        out.push(c);
    }
    if env.paged && env.bits != 16 {
        let mm = m(rng, target);
        let mut c = Case::new(
            "fetch",
            "#PF fetching the rest of the instruction",
            with2!(Code::Mov_rm32_imm32, mm.op, 0xA1B2_C3D4u32),
        )
        .with_mem(&mm)
        .fault(14);
        c.ip = Some(va::CODE_EDGE + 0xFFD);
        out.push(c);
    }
    if env.mode.cpl() == 3 {
        // The bitmap byte for port 0x3F8 is TSS + 0x68 + 0x7F = 0xE7; the processor reads two
        // bytes, so both must lie within the TSS limit (SDM Vol. 1 §19.5.2).
        let byte = layout::TSS_IOPB_OFFSET + 0x3F8 / 8;
        for (limit, ok) in [(byte + 1, true), (byte, false), (0x60, false)] {
            let mut c = Case::new(
                "tss",
                format!("out dx,al with TR limit {limit:#x}"),
                with2!(Code::Out_DX_AL, Register::DX, Register::AL),
            )
            .reg(2, 0x3F8);
            let mut tr = env.sregs.tr;
            tr.limit = limit as u32;
            tr.g = 0;
            c.segs_tr = Some(tr);
            if !ok {
                c = c.fault(13);
            }
            if limit == byte {
                c.kvm_bug = Some(KVM_IOPB_LIMIT);
            }
            out.push(c);
        }
        // A 16-bit TSS has no bitmap.
        let mut c = Case::new(
            "tss",
            "in al,dx with a 16-bit busy TSS",
            with2!(Code::In_AL_DX, Register::AL, Register::DX),
        )
        .reg(2, 0x3F8)
        .fault(13)
        .kvm_bug(KVM_TSS16_BITMAP);
        let mut tr = env.sregs.tr;
        tr.type_ = 3;
        c.segs_tr = Some(tr);
        out.push(c);
        // The map base beyond the limit: no bitmap at all.
        let mut c = Case::new(
            "tss",
            "out dx,al with the map base beyond the TSS limit",
            with2!(Code::Out_DX_AL, Register::DX, Register::AL),
        )
        .reg(2, 0x80)
        .fault(13);
        c.ram
            .push((layout::TSS + 0x66, 0xFFF0u16.to_le_bytes().to_vec()));
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Families hvemu gained later: CMPS/SCAS, the exchange family, the stack. The tests run them
// only if hvemu emulates them (see `OPTIONAL`).
// ---------------------------------------------------------------------------------------------

fn code_mask_of(os: usize) -> u64 {
    mask(8 * os as u32)
}

/// Little-endian bytes of the low `size` bytes of `v`.
fn bytes(v: u64, size: usize) -> Vec<u8> {
    v.to_le_bytes()[..size].to_vec()
}

/// CMPS and SCAS, with and without REPE/REPNE, both directions, every element and address
/// size: the device data is preset so that the repeat stops where the case says (ZF).
pub fn compare_string_cases(env: &Env, rng: &mut Rng) -> Vec<Case> {
    let mut out = vec![];
    for k in 0..30 {
        let size = sizes(env)[k % sizes(env).len()];
        let scas = (k / 4) % 2 == 0;
        let addr_bits = env.address_sizes()[(k / 8) % 2];
        let rep = [
            RepPrefixKind::None,
            RepPrefixKind::Repe,
            RepPrefixKind::Repne,
        ][k % 3];
        let df = rng.chance(3);
        let count = if rep == RepPrefixKind::None {
            1
        } else {
            2 + rng.below(5)
        };
        let stop = rng.below(count);
        let step = size as u64;
        let window = |rng: &mut Rng| -> u64 {
            let lo = if env.real() || addr_bits == 16 || rng.chance(2) {
                LOW_MMIO
            } else {
                HIGH_MMIO
            };
            lo + 0x1000 * rng.below(8) + 0x400 + rng.below(0x40) * step
        };
        let elem = |base: u64, i: u64| if df { base - i * step } else { base + i * step };
        let m = mask(8 * size as u32);
        let reference = rng.next() & m;
        // Values of the compared elements: REPE runs while equal, REPNE while different.
        let value = |i: u64| -> (u64, u64) {
            let equal = match rep {
                RepPrefixKind::Repe => i < stop,
                RepPrefixKind::Repne => i == stop,
                _ => i % 2 == 0,
            };
            let a = reference ^ (i * 0x1111) & m;
            (a, if equal { a } else { a ^ (1 + i) & m })
        };
        let seg = if !scas && rng.chance(3) {
            Some(rng.pick(&[Segment::Es, Segment::Fs, Segment::Gs]))
        } else {
            None
        };
        let sp = seg.map(seg_reg).unwrap_or(Register::None);
        let i = match (scas, size) {
            (true, 1) => Instruction::with_scasb(addr_bits, rep),
            (true, 2) => Instruction::with_scasw(addr_bits, rep),
            (true, 4) => Instruction::with_scasd(addr_bits, rep),
            (true, _) => Instruction::with_scasq(addr_bits, rep),
            (false, 1) => Instruction::with_cmpsb(addr_bits, sp, rep),
            (false, 2) => Instruction::with_cmpsw(addr_bits, sp, rep),
            (false, 4) => Instruction::with_cmpsd(addr_bits, sp, rep),
            (false, _) => Instruction::with_cmpsq(addr_bits, sp, rep),
        }
        .unwrap();
        let mut c = Case::new(
            "cmps/scas",
            format!(
                "{:?} a{addr_bits} x{count} stop {stop} df{} {seg:?}",
                i.code(),
                df as u8
            ),
            i,
        );
        if df {
            c.rflags |= 1 << 10;
        }
        c.rflags |= rng.below(2) * 0x8D5;
        let dst = window(rng);
        let (segs, di) = place(env, Segment::Es, dst, addr_bits);
        c.segs.extend(segs);
        c.gprs.push((7, di));
        c.gprs
            .push((1, count | (env.value(rng) & !mask(addr_bits))));
        if scas {
            // SCAS compares rAX with ES:[rDI]: every element is compared with the reference.
            c.gprs.push((0, (env.value(rng) & !m) | reference));
            for n in 0..count {
                let (_, b) = value(n);
                let b = if matches!(rep, RepPrefixKind::Repe | RepPrefixKind::Repne) {
                    let equal = if rep == RepPrefixKind::Repe {
                        n < stop
                    } else {
                        n == stop
                    };
                    if equal {
                        reference
                    } else {
                        reference ^ (1 + n) & m
                    }
                } else {
                    b
                };
                c.mmio.push((elem(dst, n), bytes(b, size)));
            }
        } else {
            // CMPS compares [rSI] (source, overridable) with ES:[rDI].
            let src_in_ram = rng.chance(2) && seg.is_none();
            let src = if src_in_ram {
                RAM_BUF + 0x3000 + rng.below(0x40) * step
            } else {
                window(rng)
            };
            let (segs, si) = place(env, seg.unwrap_or(Segment::Ds), src, addr_bits);
            if seg != Some(Segment::Es) || !c.segs.iter().any(|(s, _)| *s == Segment::Es) {
                c.segs.extend(segs);
            } else {
                continue;
            }
            c.gprs.push((6, si));
            for n in 0..count {
                let (a, b) = value(n);
                if src_in_ram {
                    c.ram.push((elem(src, n), bytes(a, size)));
                } else {
                    c.mmio.push((elem(src, n), bytes(a, size)));
                }
                c.mmio.push((elem(dst, n), bytes(b, size)));
            }
        }
        out.push(c);
    }
    out
}

/// XCHG, XADD, CMPXCHG (equal and not), CMPXCHG8B, CMPXCHG16B on MMIO, with and without LOCK.
pub fn exchange_cases(env: &Env, rng: &mut Rng) -> Vec<Case> {
    use Code::*;
    let mut out = vec![];
    let ops: [(&str, [Code; 4]); 3] = [
        (
            "xchg",
            [Xchg_rm8_r8, Xchg_rm16_r16, Xchg_rm32_r32, Xchg_rm64_r64],
        ),
        (
            "xadd",
            [Xadd_rm8_r8, Xadd_rm16_r16, Xadd_rm32_r32, Xadd_rm64_r64],
        ),
        (
            "cmpxchg",
            [
                Cmpxchg_rm8_r8,
                Cmpxchg_rm16_r16,
                Cmpxchg_rm32_r32,
                Cmpxchg_rm64_r64,
            ],
        ),
    ];
    let nsizes = sizes(env).len();
    for (name, codes) in ops {
        for k in 0..8 {
            let si = k % nsizes;
            let size = 1usize << si;
            // Not RAX (the accumulator of CMPXCHG) as the source register.
            let n = 1 + rng.below(env.gpr_count() as u64 - 1) as usize;
            let n = if n == 4 { 3 } else { n };
            let (m, target) = random_mem(env, rng, size, &[0, n, n & 3, 4]);
            let r = data_reg(env, n, size);
            if hw(r) == 0 {
                continue;
            }
            let mut i = with2!(codes[si], m.op, r);
            let lock = rng.chance(2);
            i.set_has_lock_prefix(lock);
            let old = rng.next() & mask(8 * size as u32);
            let equal = k % 2 == 0;
            let mut c = Case::new(
                "xchg",
                format!(
                    "{}{name}{} {} -> {target:#x}{}",
                    if lock { "lock " } else { "" },
                    8 * size,
                    m.desc,
                    if name == "cmpxchg" {
                        if equal { " (equal)" } else { " (not equal)" }
                    } else {
                        ""
                    }
                ),
                i,
            )
            .reg(hw(r), env.value(rng));
            c.gprs.extend(m.regs.iter().copied());
            c.segs.extend(m.segs.iter().copied());
            c.mmio.push((target, bytes(old, size)));
            let acc = if equal { old } else { old ^ 0x5A };
            c.gprs
                .push((0, (env.value(rng) & !mask(8 * size as u32)) | acc));
            c.rflags = rng.below(2) * 0x8D5;
            out.push(c);
        }
    }
    // #AC at CPL 3: XCHG and CMPXCHG8B on misaligned operands (CMPXCHG8B checks 8 bytes).
    if env.mode.cpl() == 3 {
        for (name, i, size) in [
            ("#AC misaligned xchg", 0, 4usize),
            ("#AC cmpxchg8b at a 4-byte boundary", 1, 8),
        ] {
            let ab = env.address_sizes()[0];
            let m = env.mem(
                rng,
                bx_or_a16(env, ab),
                ab,
                None,
                HIGH_MMIO + 0x304 + (size as u64 == 4) as u64,
                size,
            );
            let instr = if i == 0 {
                with2!(Xchg_rm32_r32, m.op, Register::ECX)
            } else {
                with1!(Cmpxchg8b_m64, m.op)
            };
            let mut c = Case::new("xchg", name, instr).with_mem(&m).fault(17);
            c.cr0_or |= 1 << 18;
            c.rflags |= 1 << 18;
            if env.mode == Mode::User32 {
                c.kvm_bug = Some(KVM_NO_AC);
            }
            out.push(c);
        }
    }
    // CMPXCHG8B (and CMPXCHG16B in 64-bit mode): equal and not, locked or not.
    for (k, equal) in [true, false, true, false].into_iter().enumerate() {
        let wide = env.long() && k >= 2;
        let size = if wide { 16 } else { 8 };
        let (m, target) = random_mem(env, rng, size, &[0, 1, 2, 3, 4]);
        let target_aligned = target & !(size as u64 - 1);
        let m = if wide {
            // CMPXCHG16B needs a 16-byte-aligned operand: aim at the aligned address.
            let (m2, _) = (
                env.mem(
                    rng,
                    Form::Sib {
                        base: Some(6),
                        index: None,
                        scale: 1,
                        disp: 0,
                    },
                    64,
                    None,
                    target_aligned,
                    16,
                ),
                0,
            );
            m2
        } else {
            m
        };
        let target = if wide { target_aligned } else { target };
        let code = if wide { Cmpxchg16b_m128 } else { Cmpxchg8b_m64 };
        let mut i = with1!(code, m.op);
        i.set_has_lock_prefix(k % 2 == 0);
        let lo = rng.next();
        let hi = rng.next();
        let half = if wide { u64::MAX } else { 0xFFFF_FFFF };
        let mut c = Case::new(
            "xchg",
            format!(
                "{code:?} {} ({})",
                m.desc,
                if equal { "equal" } else { "not equal" }
            ),
            i,
        )
        .with_mem(&m);
        let mut old = bytes(lo & half, size / 2);
        old.extend(bytes(hi & half, size / 2));
        c.mmio.push((target, old));
        let (a, d) = if equal {
            (lo & half, hi & half)
        } else {
            (lo & half, (hi ^ 1) & half)
        };
        c.gprs.push((0, a | (env.value(rng) & !half)));
        c.gprs.push((2, d | (env.value(rng) & !half)));
        c.gprs.push((1, env.value(rng)));
        c.gprs.push((3, env.value(rng)));
        if !wide {
            // The address registers win.
            c.gprs.extend(m.regs.iter().copied());
        }
        out.push(c);
        if wide {
            // Misaligned: #GP(0).
            let mm = env.mem(
                rng,
                Form::Sib {
                    base: Some(6),
                    index: None,
                    scale: 1,
                    disp: 0,
                },
                64,
                None,
                target_aligned + 8,
                16,
            );
            out.push(
                Case::new(
                    "xchg",
                    "cmpxchg16b misaligned",
                    with1!(Cmpxchg16b_m128, mm.op),
                )
                .with_mem(&mm)
                .fault(13),
            );
        }
    }
    out
}

/// PUSH/POP with a memory operand in MMIO, and the stack itself in MMIO: PUSH r/imm, PUSHF,
/// POP r, near CALL (relative and through memory), JMP through memory, RET (and RET imm16),
/// LEAVE. Branch targets hold a marker.
pub fn stack_cases(env: &Env, rng: &mut Rng) -> Vec<Case> {
    use Code::*;
    let mut out = vec![];
    let os = if env.long() {
        8usize
    } else if env.bits == 32 {
        4
    } else {
        2
    };
    let (
        push_m,
        pop_m,
        push_r,
        pop_r,
        call_m,
        jmp_m,
        ret,
        ret_imm,
        leave,
        pushf,
        call_rel,
        push_imm,
    ) = match os {
        8 => (
            Push_rm64,
            Pop_rm64,
            Push_r64,
            Pop_r64,
            Call_rm64,
            Jmp_rm64,
            Retnq,
            Retnq_imm16,
            Leaveq,
            Pushfq,
            Call_rel32_64,
            Pushq_imm32,
        ),
        4 => (
            Push_rm32,
            Pop_rm32,
            Push_r32,
            Pop_r32,
            Call_rm32,
            Jmp_rm32,
            Retnd,
            Retnd_imm16,
            Leaved,
            Pushfd,
            Call_rel32_32,
            Pushd_imm32,
        ),
        _ => (
            Push_rm16,
            Pop_rm16,
            Push_r16,
            Pop_r16,
            Call_rm16,
            Jmp_rm16,
            Retnw,
            Retnw_imm16,
            Leavew,
            Pushfw,
            Call_rel16,
            Push_imm16,
        ),
    };
    // The stack's linear address and width.
    let sp0 = env.mode.initial_sp();
    let ss_base = crate::driver::sreg(&env.sregs, Segment::Ss).base;
    let stack_linear = if env.long() { sp0 } else { ss_base + sp0 };
    let stack_watch = stack_linear - 32..stack_linear + 16;
    let mut branch_ip = env.mode.code_origin() + 0xC000;
    let mut next_branch = || {
        branch_ip += 0x40;
        branch_ip
    };
    // PUSH m / POP m with the operand in MMIO, the stack in RAM.
    for _ in 0..4 {
        let (m, target) = random_mem(env, rng, os, &[4]);
        let mut c = Case::new(
            "stack",
            format!("push m{} {} -> {target:#x}", 8 * os, m.desc),
            with1!(push_m, m.op),
        )
        .with_mem(&m);
        c.watch.push(stack_watch.clone());
        out.push(c);
        let (m, target) = random_mem(env, rng, os, &[4]);
        let mut c = Case::new(
            "stack",
            format!("pop m{} {} -> {target:#x}", 8 * os, m.desc),
            with1!(pop_m, m.op),
        )
        .with_mem(&m);
        c.ram
            .push((stack_linear - os as u64, bytes(rng.next(), os)));
        c.gprs.push((4, sp0 - os as u64));
        out.push(c);
    }
    // The stack in MMIO.
    let mmio_stack = |rng: &mut Rng, c: &mut Case, top: u64| {
        if env.long() {
            c.gprs.push((4, top));
        } else {
            let base = if env.bits == 16 || env.real() {
                (top - 0x800) & !0xFFF
            } else {
                0
            };
            let mut ss = env.stack_seg(base);
            if env.real() {
                ss = tables::real_mode_segment((base >> 4) as u16, false);
            }
            if base != 0 || env.bits == 16 {
                c.segs.push((Segment::Ss, ss));
            }
            let sp = top - base;
            c.gprs.push((
                4,
                sp | (env.value(rng)
                    & !if env.bits == 16 && env.sregs.ss.db == 0 {
                        0xFFFF
                    } else {
                        u64::MAX
                    }),
            ));
        }
    };
    let top = |rng: &mut Rng| -> u64 {
        (if env.real() || rng.chance(2) {
            LOW_MMIO
        } else {
            HIGH_MMIO
        }) + 0x1000 * (1 + rng.below(8))
            + 0x400
            + rng.below(0x40) * os as u64
    };
    for n in [0usize, 3, 5, 7] {
        let t = top(rng);
        let mut c = Case::new(
            "stack",
            format!("push r{} onto an mmio stack", 8 * os),
            with1!(push_r, reg_of(n, os)),
        )
        .reg(n, env.value(rng));
        mmio_stack(rng, &mut c, t);
        out.push(c);
        let t = top(rng);
        let mut c = Case::new(
            "stack",
            format!("pop r{} from an mmio stack", 8 * os),
            with1!(pop_r, reg_of(n, os)),
        );
        mmio_stack(rng, &mut c, t);
        out.push(c);
    }
    let t = top(rng);
    let mut c = Case::new(
        "stack",
        "push imm onto an mmio stack",
        if os == 2 {
            with1!(push_imm, rng.next() as u16 as u32)
        } else {
            with1!(push_imm, rng.next() as i32)
        },
    );
    mmio_stack(rng, &mut c, t);
    out.push(c);
    let t = top(rng);
    let mut c = Case::new(
        "stack",
        "pushf onto an mmio stack",
        Instruction::with(pushf),
    );
    c.rflags = 0x8D5;
    mmio_stack(rng, &mut c, t);
    out.push(c);
    // LEAVE: rSP ← rBP, then pop rBP, from an MMIO frame.
    let t = top(rng);
    let mut c = Case::new(
        "stack",
        "leave with the frame in mmio",
        Instruction::with(leave),
    );
    mmio_stack(rng, &mut c, t);
    let sp = c.gprs.iter().rev().find(|(r, _)| *r == 4).unwrap().1;
    c.gprs.push((5, sp));
    c.gprs.push((4, env.value(rng) & 0xFFFF_0000));
    out.push(c);
    // rSP-relative operands: PUSH [rSP+d] reads with rSP before the decrement, POP [rSP+d]
    // writes with rSP after the increment (SDM Vol. 2B PUSH, POP), CALL [rSP] reads its target
    // before pushing; the stack in MMIO.
    let sp_reg = reg_of(
        4,
        if env.long() {
            8
        } else if env.sregs.ss.db != 0 {
            4
        } else {
            2
        },
    );
    let sp_mem = |disp: i64| -> MemoryOperand {
        if sp_reg == Register::SP {
            // No [sp] form in 16-bit addressing: use 32-bit addressing through ESP.
            MemoryOperand::with_base_displ(Register::ESP, disp)
        } else {
            MemoryOperand::with_base_displ(sp_reg, disp)
        }
    };
    if env.sregs.ss.db != 0 || env.long() {
        for (name, i) in [
            ("push [rsp+8]", with1!(push_m, sp_mem(8))),
            ("pop [rsp+8]", with1!(pop_m, sp_mem(8))),
            ("pop [rsp]", with1!(pop_m, sp_mem(0))),
        ] {
            let t = top(rng);
            let mut c = Case::new("stack", format!("{name} on an mmio stack"), i);
            mmio_stack(rng, &mut c, t);
            out.push(c);
        }
        let ip = next_branch();
        let target = ip + 0x20;
        let t = top(rng);
        let mut c = Case::new(
            "stack",
            "call [rsp] on an mmio stack",
            with1!(call_m, sp_mem(0)),
        );
        c.ip = Some(ip);
        c.targets.push(target);
        c.mmio.push((t, bytes(target & code_mask_of(os), os)));
        mmio_stack(rng, &mut c, t);
        out.push(c);
    }
    // PUSH imm8, sign-extended to the operand size.
    let push_imm8 = match os {
        8 => Pushq_imm8,
        4 => Pushd_imm8,
        _ => Pushw_imm8,
    };
    for v in [-1i32, 0x7F, -0x80] {
        let t = top(rng);
        let mut c = Case::new(
            "stack",
            format!("push imm8 {v:#x}"),
            if os == 2 {
                with1!(push_imm8, v as i16 as u16 as u32)
            } else {
                with1!(push_imm8, v)
            },
        );
        mmio_stack(rng, &mut c, t);
        out.push(c);
    }
    // A 16-bit stack wraps within 64 KiB: SP = 0 pushes at SS:0xFFFE.
    if env.sregs.ss.db == 0 && !env.long() {
        let base = LOW_MMIO;
        let mut c = Case::new(
            "stack",
            "push with sp = 0 wraps to 0xfffe",
            with1!(Push_r16, Register::CX),
        )
        .reg(4, env.value(rng) & !0xFFFF);
        c.segs.push((Segment::Ss, env.stack_seg(base)));
        out.push(c);
        let mut c = Case::new(
            "stack",
            "pop with sp = 0xfffe wraps to 0",
            with1!(Pop_r16, Register::CX),
        )
        .reg(4, (env.value(rng) & !0xFFFF) | 0xFFFE);
        c.segs.push((Segment::Ss, env.stack_seg(base)));
        out.push(c);
    }
    // #AC at CPL 3: a push onto a misaligned stack.
    if env.mode.cpl() == 3 {
        let mut c = Case::new(
            "stack",
            "#AC push onto a misaligned stack",
            with1!(push_r, reg_of(1, os)),
        )
        .reg(4, sp0 - 3)
        .fault(17);
        c.cr0_or |= 1 << 18;
        c.rflags |= 1 << 18;
        if env.mode == Mode::User32 {
            c.kvm_bug = Some(KVM_NO_AC);
        }
        out.push(c);
    }
    // Control transfers: targets hold markers.
    let code_mask = mask(8 * os as u32);
    for with_imm in [false, true] {
        let ip = next_branch();
        let target = ip + 0x20;
        let t = top(rng);
        let i = if with_imm {
            with1!(ret_imm, 0x10u32)
        } else {
            Instruction::with(ret)
        };
        let mut c = Case::new(
            "stack",
            format!(
                "ret{} from an mmio stack",
                if with_imm { " imm16" } else { "" }
            ),
            i,
        );
        c.ip = Some(ip);
        c.targets.push(target);
        c.mmio.push((t, bytes(target & code_mask, os)));
        mmio_stack(rng, &mut c, t);
        out.push(c);
    }
    let ip = next_branch();
    let target = ip + 0x20;
    let t = top(rng);
    let mut c = Case::new(
        "stack",
        "call rel onto an mmio stack",
        Instruction::with_branch(call_rel, target).unwrap(),
    );
    c.ip = Some(ip);
    c.targets.push(target);
    mmio_stack(rng, &mut c, t);
    out.push(c);
    for (name, code) in [("call", call_m), ("jmp", jmp_m)] {
        let ip = next_branch();
        let target = ip + 0x20;
        let (m, at) = random_mem(env, rng, os, &[4]);
        let mut c = Case::new(
            "stack",
            format!("{name} through m{} {} -> {at:#x}", 8 * os, m.desc),
            with1!(code, m.op),
        )
        .with_mem(&m);
        c.ip = Some(ip);
        c.targets.push(target);
        c.mmio.push((at, bytes(target & code_mask, os)));
        c.watch.push(stack_watch.clone());
        out.push(c);
    }
    out
}
