//! The host CPU as the oracle for the integer families with a memory operand: shifts and
//! rotates (SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR, SHLD, SHRD), bit tests and scans (BT, BTS,
//! BTR, BTC, BSF, BSR, POPCNT, LZCNT, TZCNT), multiply and divide (MUL, IMUL in its three
//! shapes, DIV, IDIV), and the condition codes (SETcc, CMOVcc). Every case runs natively (the
//! memory form of the instruction on a local buffer, RFLAGS set by `popfq`) and through hvemu's
//! public API (a memory exit in 64-bit mode on the test support's model machine), and the
//! results, the registers and every flag the manuals define are compared.
//!
//! Flags and results the manuals leave undefined are compared only when the configured vendor
//! is the host's own (read with CPUID); each case picks the configured vendor at random, so
//! both settings run, and on this host's vendor the undefined behaviour is checked too.
//!
//! The emulated side is encoded by iced-x86 among the instruction's forms (by 1, by `imm8` or
//! by CL; SAL as well as SHL; register or immediate bit offsets; the three IMUL shapes; LOCK
//! where allowed). The native side runs the memory form with the same operand values: the "by
//! 1" form for by-1 cases and CL otherwise, a register offset for BT (the immediate modulo the
//! width), the two-operand IMUL for the three-operand one.
//!
//! Divide errors are predicted, not executed: the native side is skipped and hvemu must report
//! #DE with no register and no memory changed.
#![cfg(target_arch = "x86_64")]
#![allow(unsafe_code)]

mod support;

use core::arch::asm;
use core::ptr::addr_of_mut;
use std::collections::HashMap;
use std::sync::OnceLock;

use hvemu::*;
use iced_x86::{Code, Encoder, Instruction, MemoryOperand, Register};
use support::native::*;
use support::*;

const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RBX: usize = 3;
const RSI: usize = 6;

/// Where the operands live: guest RAM (paging off, so linear = physical). The region is 4 KiB
/// below a page boundary so that cases can straddle it.
const DATA: u64 = 0x18_0000;

/// Seeded random cases per run, per family (at least 100 000 in all).
const SHIFT_CASES: usize = 60_000;
const BIT_CASES: usize = 25_000;
const MULDIV_CASES: usize = 25_000;

// ---- shared -----------------------------------------------------------------------------

/// An iced-x86 code by its name (`"Shl_rm32_CL"`).
fn code(name: &str) -> Code {
    static CODES: OnceLock<HashMap<String, Code>> = OnceLock::new();
    let codes = CODES.get_or_init(|| Code::values().map(|c| (format!("{c:?}"), c)).collect());
    *codes.get(name).unwrap_or_else(|| panic!("no code {name}"))
}

fn encode(instr: Instruction) -> Vec<u8> {
    let mut encoder = Encoder::new(64);
    encoder.encode(&instr, 0x1000).expect("encodable");
    encoder.take_buffer()
}

fn mem_rbx() -> MemoryOperand {
    MemoryOperand::with_base(Register::RBX)
}

fn mask(size: usize) -> u64 {
    if size == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    }
}

fn sign_extend(v: u64, bytes: usize) -> u64 {
    let shift = 64 - 8 * bytes as u32;
    (((v << shift) as i64) >> shift) as u64
}

/// A general register of `size` bytes: 0 = A, 1 = C, 2 = D, 6 = SI.
fn reg(n: usize, size: usize) -> Register {
    let (b, w, d, q) = match n {
        0 => (Register::AL, Register::AX, Register::EAX, Register::RAX),
        1 => (Register::CL, Register::CX, Register::ECX, Register::RCX),
        2 => (Register::DL, Register::DX, Register::EDX, Register::RDX),
        _ => (Register::SIL, Register::SI, Register::ESI, Register::RSI),
    };
    match size {
        1 => b,
        2 => w,
        4 => d,
        _ => q,
    }
}

/// Operand generators on top of the shared seeded generator.
impl Rng {
    /// Operand values that reach the interesting bits: uniform, small, near the edges, sparse.
    fn operand(&mut self, size: usize) -> u64 {
        let m = mask(size);
        let v = match self.below(5) {
            0 | 1 => self.next(),
            2 => self.next() & 0xFF,
            3 => 1u64 << self.below(8 * size),
            _ => {
                let edge = self.pick(&edges(size));
                edge.wrapping_add(self.next() & 3)
                    .wrapping_sub(self.next() & 3)
            }
        };
        v & m
    }

    /// Incoming flags: random status bits.
    fn flags(&mut self) -> u64 {
        self.next() & STATUS
    }

    fn vendor(&mut self) -> Vendor {
        if self.coin() {
            Vendor::Intel
        } else {
            Vendor::Amd
        }
    }

    /// Offset of a `size`-byte operand in the data page: usually aligned, one case in eight
    /// straddling the page boundary at `DATA + 0x1000`.
    fn offset(&mut self, size: usize) -> u64 {
        if self.below(8) == 0 {
            0x1000 - (self.below(size.max(2) - 1) as u64 + 1)
        } else {
            0x100 + (self.next() & 0xEF8)
        }
    }
}

/// 0, 1, the signed extremes and their neighbours, all ones, a pattern.
fn edges(size: usize) -> [u64; 9] {
    let m = mask(size);
    let smin = 1u64 << (8 * size - 1);
    [
        0,
        1,
        2,
        smin - 1,
        smin,
        smin + 1,
        m - 1,
        m,
        0x5A5A_A5A5_1234_8765 & m,
    ]
}

/// Runs emulated cases on one model machine and counts them.
struct Oracle {
    machine: Machine,
    host: Option<Vendor>,
    cases: usize,
    undefined_compared: usize,
    divide_errors: usize,
}

impl Oracle {
    fn new() -> Self {
        let mut machine = Machine::long();
        machine.regs.rip = 0x1000;
        Oracle {
            machine,
            host: host_vendor(),
            cases: 0,
            undefined_compared: 0,
            divide_errors: 0,
        }
    }

    /// Emulates `bytes` as a memory exit at `addr` with RFLAGS = `flags`; returns the result.
    fn emulate(
        &mut self,
        bytes: &[u8],
        addr: u64,
        write: bool,
        flags: u64,
        vendor: Vendor,
    ) -> Result<Completion, EmulationError<&'static str>> {
        let m = &mut self.machine;
        m.regs.rip = 0x1000;
        m.regs.rflags = flags;
        let access = if write {
            MemoryAccessType::Write
        } else {
            MemoryAccessType::Read
        };
        let ctx = MemoryAccessContext::new(bytes, access, addr);
        let outcome = m.mmio_ctx_config(
            bytes.len() as u8,
            &ctx,
            Config::default().with_vendor(vendor),
        );
        if outcome.result.is_ok() {
            assert_eq!(m.regs.rip, 0x1000 + bytes.len() as u64);
        }
        outcome.result
    }

    /// Whether this case compares undefined flags and results.
    fn compares_undefined(&mut self, vendor: Vendor) -> bool {
        let yes = self.host == Some(vendor);
        if yes {
            self.undefined_compared += 1;
        }
        yes
    }

    fn read(&self, addr: u64, size: usize) -> u64 {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(&self.machine.read_phys(addr, size));
        u64::from_le_bytes(b)
    }

    #[track_caller]
    fn check_flags(&self, emulated: u64, native: u64, compared: u64, what: &dyn core::fmt::Debug) {
        assert_eq!(
            emulated & compared,
            native & compared,
            "flags (compared {compared:#x}): emulated {emulated:#x} native {native:#x}: {what:x?}"
        );
        assert_eq!(
            emulated & !STATUS,
            native & !STATUS,
            "non-status RFLAGS bits: {what:x?}"
        );
    }
}

// ---- shifts and rotates -----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sh {
    Rol,
    Ror,
    Rcl,
    Rcr,
    Shl,
    Shr,
    Sar,
    Shld,
    Shrd,
}

const SHIFTS: [Sh; 9] = [
    Sh::Rol,
    Sh::Ror,
    Sh::Rcl,
    Sh::Rcr,
    Sh::Shl,
    Sh::Shr,
    Sh::Sar,
    Sh::Shld,
    Sh::Shrd,
];

impl Sh {
    fn double(self) -> bool {
        matches!(self, Sh::Shld | Sh::Shrd)
    }

    fn name(self) -> &'static str {
        match self {
            Sh::Rol => "Rol",
            Sh::Ror => "Ror",
            Sh::Rcl => "Rcl",
            Sh::Rcr => "Rcr",
            Sh::Shl => "Shl",
            Sh::Shr => "Shr",
            Sh::Sar => "Sar",
            Sh::Shld => "Shld",
            Sh::Shrd => "Shrd",
        }
    }

    fn sizes(self) -> &'static [usize] {
        if self.double() {
            &[2, 4, 8]
        } else {
            &[1, 2, 4, 8]
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum By {
    One,
    Imm,
    Cl,
}

/// `insn size ptr [mem], cl` (or `, 1`) natively; returns (memory, RFLAGS).
macro_rules! native_shift {
    ($insn:literal, $ptr:literal, $ty:ty, $by:literal, $v:expr, $c:expr, $f:expr) => {{
        let mut mem: $ty = $v as $ty;
        let out: u64;
        // SAFETY: the instruction reads and writes `mem`, a live local of the operand's size;
        // the stack is balanced (push/popfq, pushfq/pop) and DF stays clear.
        unsafe {
            asm!(
                "push {fin}",
                "popfq",
                concat!($insn, " ", $ptr, " ptr [{m}], ", $by),
                "pushfq",
                "pop {fout}",
                fin = in(reg) $f,
                m = in(reg) addr_of_mut!(mem),
                in("cl") $c,
                fout = lateout(reg) out,
            );
        }
        (mem as u64, out)
    }};
}

/// `shld/shrd size ptr [mem], src, cl` natively; returns (memory, RFLAGS).
macro_rules! native_double {
    ($insn:literal, $ptr:literal, $ty:ty, $r:literal, $v:expr, $s:expr, $c:expr, $f:expr) => {{
        let mut mem: $ty = $v as $ty;
        let out: u64;
        // SAFETY: as in `native_shift`.
        unsafe {
            asm!(
                "push {fin}",
                "popfq",
                concat!($insn, " ", $ptr, " ptr [{m}], {s:", $r, "}, cl"),
                "pushfq",
                "pop {fout}",
                fin = in(reg) $f,
                m = in(reg) addr_of_mut!(mem),
                s = in(reg) $s,
                in("cl") $c,
                fout = lateout(reg) out,
            );
        }
        (mem as u64, out)
    }};
}

fn native_shift(op: Sh, size: usize, one: bool, v: u64, src: u64, count: u8, f: u64) -> (u64, u64) {
    macro_rules! single {
        ($insn:literal) => {
            match (size, one) {
                (1, false) => native_shift!($insn, "byte", u8, "cl", v, count, f),
                (1, true) => native_shift!($insn, "byte", u8, "1", v, count, f),
                (2, false) => native_shift!($insn, "word", u16, "cl", v, count, f),
                (2, true) => native_shift!($insn, "word", u16, "1", v, count, f),
                (4, false) => native_shift!($insn, "dword", u32, "cl", v, count, f),
                (4, true) => native_shift!($insn, "dword", u32, "1", v, count, f),
                (_, false) => native_shift!($insn, "qword", u64, "cl", v, count, f),
                (_, true) => native_shift!($insn, "qword", u64, "1", v, count, f),
            }
        };
    }
    macro_rules! double {
        ($insn:literal) => {
            match size {
                2 => native_double!($insn, "word", u16, "x", v, src, count, f),
                4 => native_double!($insn, "dword", u32, "e", v, src, count, f),
                _ => native_double!($insn, "qword", u64, "r", v, src, count, f),
            }
        };
    }
    match op {
        Sh::Rol => single!("rol"),
        Sh::Ror => single!("ror"),
        Sh::Rcl => single!("rcl"),
        Sh::Rcr => single!("rcr"),
        Sh::Shl => single!("shl"),
        Sh::Shr => single!("shr"),
        Sh::Sar => single!("sar"),
        Sh::Shld => double!("shld"),
        Sh::Shrd => double!("shrd"),
    }
}

/// The flags the manuals define for a shift, and whether its result is defined.
fn shift_defined(op: Sh, size: usize, count: u8) -> (u64, bool) {
    let width = 8 * size as u8;
    let masked = count & if size == 8 { 0x3F } else { 0x1F };
    if masked == 0 {
        return (STATUS, true);
    }
    let of = if masked == 1 { OF } else { 0 };
    match op {
        Sh::Shl | Sh::Shr | Sh::Sar => {
            let cf_undefined = matches!(op, Sh::Shl | Sh::Shr) && masked >= width;
            (SF | ZF | PF | of | if cf_undefined { 0 } else { CF }, true)
        }
        // SF, ZF, AF and PF are unaffected, CF receives the bit.
        Sh::Rol | Sh::Ror | Sh::Rcl | Sh::Rcr => ((STATUS & !OF) | of, true),
        Sh::Shld | Sh::Shrd if masked > width => (0, false),
        Sh::Shld | Sh::Shrd => (SF | ZF | PF | CF | of, true),
    }
}

#[derive(Clone, Copy, Debug)]
struct ShiftCase {
    op: Sh,
    /// SAL's encoding instead of SHL's.
    sal: bool,
    size: usize,
    by: By,
    value: u64,
    src: u64,
    count: u8,
    noise: u64,
    offset: u64,
    flags: u64,
    vendor: Vendor,
}

impl Oracle {
    fn shift(&mut self, c: ShiftCase) {
        let ShiftCase {
            op,
            sal,
            size,
            by,
            value,
            src,
            count,
            noise,
            offset,
            flags,
            vendor,
        } = c;
        let count = if by == By::One { 1 } else { count };
        let m = mask(size);
        let (value, src) = (value & m, src & m);
        let host_flags = 0x202 | (flags & STATUS);
        let (native_value, native_flags) =
            native_shift(op, size, by == By::One, value, src, count, host_flags);

        let bits = 8 * size;
        let name = if sal { "Sal" } else { op.name() };
        let instr = if op.double() {
            let base = format!("{name}_rm{bits}_r{bits}");
            let s = reg(6, size);
            match by {
                By::Cl => {
                    Instruction::with3(code(&format!("{base}_CL")), mem_rbx(), s, Register::CL)
                }
                _ => Instruction::with3(
                    code(&format!("{base}_imm8")),
                    mem_rbx(),
                    s,
                    u32::from(count),
                ),
            }
        } else {
            let base = format!("{name}_rm{bits}");
            match by {
                By::One => Instruction::with2(code(&format!("{base}_1")), mem_rbx(), 1u32),
                By::Imm => {
                    Instruction::with2(code(&format!("{base}_imm8")), mem_rbx(), u32::from(count))
                }
                By::Cl => Instruction::with2(code(&format!("{base}_CL")), mem_rbx(), Register::CL),
            }
        };
        let bytes = encode(instr.expect("valid operands"));
        let addr = DATA + offset;
        let rcx = (noise & !0xFF) | u64::from(count);
        let rsi = (noise.rotate_left(17) & !m) | src;
        let mach = &mut self.machine;
        mach.set_gpr(RBX, addr);
        mach.set_gpr(RCX, rcx);
        mach.set_gpr(RSI, rsi);
        mach.write_phys(addr, &value.to_le_bytes()[..size]);
        let result = self.emulate(&bytes, addr, true, host_flags, vendor);
        assert_eq!(result, Ok(Completion::Complete), "{c:x?}");
        assert_eq!(self.machine.gpr(RCX), rcx, "RCX changed: {c:x?}");
        assert_eq!(self.machine.gpr(RSI), rsi, "RSI changed: {c:x?}");

        let (defined, result_defined) = shift_defined(op, size, count);
        let undefined = self.compares_undefined(vendor);
        let compared = if undefined { STATUS } else { defined };
        if result_defined || undefined {
            assert_eq!(self.read(addr, size), native_value, "result: {c:x?}");
        }
        let emulated = self.machine.regs.rflags;
        self.check_flags(emulated, native_flags, compared, &c);
        self.cases += 1;
    }
}

fn random_shift(rng: &mut Rng) -> ShiftCase {
    let op = rng.pick(&SHIFTS);
    let size = rng.pick(op.sizes());
    let by = if op.double() {
        rng.pick(&[By::Imm, By::Cl])
    } else {
        rng.pick(&[By::One, By::Imm, By::Cl])
    };
    // Counts: mostly within 0..=70 (masking, widths, the mod 9/17 of RCL/RCR), some anywhere.
    let count = if rng.below(4) == 0 {
        rng.next() as u8
    } else {
        rng.below(71) as u8
    };
    ShiftCase {
        op,
        sal: op == Sh::Shl && rng.coin(),
        size,
        by,
        value: rng.operand(size),
        src: rng.operand(size),
        count,
        noise: rng.next(),
        offset: rng.offset(size),
        flags: rng.flags(),
        vendor: rng.vendor(),
    }
}

// ---- bit tests and scans ----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BitOp {
    Bt,
    Bts,
    Btr,
    Btc,
    Bsf,
    Bsr,
    Popcnt,
    Lzcnt,
    Tzcnt,
}

const BIT_OPS: [BitOp; 9] = [
    BitOp::Bt,
    BitOp::Bts,
    BitOp::Btr,
    BitOp::Btc,
    BitOp::Bsf,
    BitOp::Bsr,
    BitOp::Popcnt,
    BitOp::Lzcnt,
    BitOp::Tzcnt,
];

impl BitOp {
    fn test(self) -> bool {
        matches!(self, BitOp::Bt | BitOp::Bts | BitOp::Btr | BitOp::Btc)
    }

    fn name(self) -> &'static str {
        match self {
            BitOp::Bt => "Bt",
            BitOp::Bts => "Bts",
            BitOp::Btr => "Btr",
            BitOp::Btc => "Btc",
            BitOp::Bsf => "Bsf",
            BitOp::Bsr => "Bsr",
            BitOp::Popcnt => "Popcnt",
            BitOp::Lzcnt => "Lzcnt",
            BitOp::Tzcnt => "Tzcnt",
        }
    }

    /// Whether the host has the instruction.
    fn native(self) -> bool {
        match self {
            BitOp::Popcnt => std::is_x86_feature_detected!("popcnt"),
            BitOp::Lzcnt => std::is_x86_feature_detected!("lzcnt"),
            BitOp::Tzcnt => std::is_x86_feature_detected!("bmi1"),
            _ => true,
        }
    }
}

/// The native buffer for the bit tests: the operand sits `BT_MIDDLE` bytes in, so register
/// offsets of ±2000 bits stay inside.
const BT_BUFFER: usize = 528;
const BT_MIDDLE: usize = 264;

/// `bt* size ptr [mem], offset` natively on `buf` (the operand at `at`); returns RFLAGS.
macro_rules! native_bt {
    ($insn:literal, $ptr:literal, $r:literal, $buf:expr, $at:expr, $o:expr, $f:expr) => {{
        let out: u64;
        // SAFETY: the offset is chosen so that the word the instruction addresses lies inside
        // `buf`, a live local; the stack is balanced.
        unsafe {
            asm!(
                "push {fin}",
                "popfq",
                concat!($insn, " ", $ptr, " ptr [{m}], {o:", $r, "}"),
                "pushfq",
                "pop {fout}",
                fin = in(reg) $f,
                m = in(reg) $buf.as_mut_ptr().add($at),
                o = in(reg) $o,
                fout = lateout(reg) out,
            );
        }
        out
    }};
}

/// `scan dst, size ptr [mem]` natively with the full destination register preset; returns
/// (destination, RFLAGS).
macro_rules! native_scan {
    ($insn:literal, $ptr:literal, $ty:ty, $r:literal, $src:expr, $d:expr, $f:expr) => {{
        let mut mem: $ty = $src as $ty;
        let mut dst: u64 = $d;
        let out: u64;
        // SAFETY: the instruction reads `mem`, a live local; the stack is balanced.
        unsafe {
            asm!(
                "push {fin}",
                "popfq",
                concat!($insn, " {d:", $r, "}, ", $ptr, " ptr [{m}]"),
                "pushfq",
                "pop {fout}",
                fin = in(reg) $f,
                m = in(reg) addr_of_mut!(mem),
                d = inout(reg) dst,
                fout = lateout(reg) out,
            );
        }
        let _ = &mut mem;
        (dst, out)
    }};
}

fn native_bit_test(
    op: BitOp,
    size: usize,
    buf: &mut [u8; BT_BUFFER],
    at: usize,
    offset: u64,
    f: u64,
) -> u64 {
    macro_rules! sized {
        ($insn:literal) => {
            match size {
                2 => native_bt!($insn, "word", "x", buf, at, offset, f),
                4 => native_bt!($insn, "dword", "e", buf, at, offset, f),
                _ => native_bt!($insn, "qword", "r", buf, at, offset, f),
            }
        };
    }
    match op {
        BitOp::Bt => sized!("bt"),
        BitOp::Bts => sized!("bts"),
        BitOp::Btr => sized!("btr"),
        _ => sized!("btc"),
    }
}

fn native_scan(op: BitOp, size: usize, src: u64, dst: u64, f: u64) -> (u64, u64) {
    macro_rules! sized {
        ($insn:literal) => {
            match size {
                2 => native_scan!($insn, "word", u16, "x", src, dst, f),
                4 => native_scan!($insn, "dword", u32, "e", src, dst, f),
                _ => native_scan!($insn, "qword", u64, "r", src, dst, f),
            }
        };
    }
    match op {
        BitOp::Bsf => sized!("bsf"),
        BitOp::Bsr => sized!("bsr"),
        BitOp::Popcnt => sized!("popcnt"),
        BitOp::Lzcnt => sized!("lzcnt"),
        _ => sized!("tzcnt"),
    }
}

#[derive(Clone, Copy, Debug)]
struct BitCase {
    op: BitOp,
    size: usize,
    /// Immediate bit offset (else the register form).
    imm: bool,
    lock: bool,
    /// The bit offset (register form: signed, within ±2000) or `imm8`.
    offset: i64,
    /// Seed of the buffer contents (bit tests) or the source value (scans).
    value: u64,
    /// The other register bits (offset register, scan destination).
    noise: u64,
    /// Misalignment of the operand and whether the buffer straddles the page boundary.
    skew: u64,
    flags: u64,
    vendor: Vendor,
}

impl Oracle {
    fn bit(&mut self, c: BitCase) {
        if !c.op.native() {
            return;
        }
        if c.op.test() {
            self.bit_test(c);
        } else {
            self.scan(c);
        }
    }

    fn bit_test(&mut self, c: BitCase) {
        let BitCase {
            op,
            size,
            imm,
            lock,
            offset,
            value,
            noise,
            skew,
            flags,
            vendor,
        } = c;
        let width = 8 * size as i64;
        let mut buf = [0u8; BT_BUFFER];
        let mut seed = Rng(value | 1);
        for b in buf.iter_mut() {
            *b = seed.next() as u8;
        }
        let before = buf;
        let at = BT_MIDDLE + (skew & 7) as usize;
        let host_flags = 0x202 | (flags & STATUS);
        // The immediate form tests bit imm8 mod width of the operand itself.
        let native_offset = if imm { offset & (width - 1) } else { offset };
        let native_flags =
            native_bit_test(op, size, &mut buf, at, native_offset as u64, host_flags);

        // The buffer straddles the page boundary at DATA + 0x1000 (from 0x...F00).
        let region = DATA + 0xF00 + (skew >> 3 & 0x38);
        let addr = region + at as u64;
        let mach = &mut self.machine;
        mach.write_phys(region, &before);
        mach.set_gpr(RBX, addr);
        let m = mask(size);
        let rsi = (noise & !m) | (offset as u64 & m);
        mach.set_gpr(RSI, rsi);
        let bits = 8 * size;
        let name = op.name();
        let mut instr = if imm {
            Instruction::with2(
                code(&format!("{name}_rm{bits}_imm8")),
                mem_rbx(),
                (offset as u8) as u32,
            )
        } else {
            Instruction::with2(
                code(&format!("{name}_rm{bits}_r{bits}")),
                mem_rbx(),
                reg(6, size),
            )
        }
        .expect("valid operands");
        instr.set_has_lock_prefix(lock);
        let bytes = encode(instr);
        let result = self.emulate(&bytes, addr, op != BitOp::Bt, host_flags, vendor);
        assert_eq!(result, Ok(Completion::Complete), "{c:x?}");
        assert_eq!(
            self.machine.read_phys(region, BT_BUFFER),
            buf.to_vec(),
            "memory: {c:x?}"
        );
        assert_eq!(self.machine.gpr(RSI), rsi, "RSI changed: {c:x?}");
        let undefined = self.compares_undefined(vendor);
        let compared = if undefined { STATUS } else { CF | ZF };
        self.check_flags(self.machine.regs.rflags, native_flags, compared, &c);
        self.cases += 1;
    }

    fn scan(&mut self, c: BitCase) {
        let BitCase {
            op,
            size,
            value,
            noise,
            skew,
            flags,
            vendor,
            ..
        } = c;
        let m = mask(size);
        let src = value & m;
        let host_flags = 0x202 | (flags & STATUS);
        let (native_dst, native_flags) = native_scan(op, size, src, noise, host_flags);

        let addr = DATA
            + if skew & 8 != 0 {
                0x1000 - (skew & 7) - 1
            } else {
                0x200 + (skew & 0x1F8)
            };
        let mach = &mut self.machine;
        mach.set_gpr(RBX, addr);
        mach.set_gpr(RDX, noise);
        mach.write_phys(addr, &src.to_le_bytes()[..size]);
        let bits = 8 * size;
        let instr = Instruction::with2(
            code(&format!("{}_r{bits}_rm{bits}", op.name())),
            reg(2, size),
            mem_rbx(),
        )
        .expect("valid operands");
        let bytes = encode(instr);
        let result = self.emulate(&bytes, addr, false, host_flags, vendor);
        assert_eq!(result, Ok(Completion::Complete), "{c:x?}");
        let undefined = self.compares_undefined(vendor);
        let scan_of_zero = matches!(op, BitOp::Bsf | BitOp::Bsr) && src == 0;
        if undefined || !scan_of_zero {
            assert_eq!(self.machine.gpr(RDX), native_dst, "destination: {c:x?}");
        }
        let defined = match op {
            BitOp::Bsf | BitOp::Bsr => ZF,
            BitOp::Popcnt => STATUS,
            _ => CF | ZF,
        };
        let compared = if undefined { STATUS } else { defined };
        self.check_flags(self.machine.regs.rflags, native_flags, compared, &c);
        self.cases += 1;
    }
}

fn random_bit(rng: &mut Rng) -> BitCase {
    let op = rng.pick(&BIT_OPS);
    let size = rng.pick(&[2usize, 4, 8]);
    let width = 8 * size as i64;
    let imm = op.test() && rng.coin();
    // Register offsets anywhere the buffer reaches: ±(BT_MIDDLE - 8) bytes.
    let reach = (BT_MIDDLE as i64 - 16) * 8;
    let offset = if imm {
        rng.below(256) as i64
    } else {
        match rng.below(3) {
            0 => rng.below(width as usize) as i64,
            _ => rng.below(2 * reach as usize) as i64 - reach,
        }
    };
    let value = match rng.below(6) {
        0 => 0,
        _ => rng.operand(size),
    };
    BitCase {
        op,
        size,
        imm,
        lock: op.test() && op != BitOp::Bt && rng.coin(),
        offset,
        value,
        noise: rng.next(),
        skew: rng.next(),
        flags: rng.flags(),
        vendor: rng.vendor(),
    }
}

// ---- multiply and divide ----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Md {
    Mul,
    Imul,
    Div,
    Idiv,
    /// IMUL r, r/m.
    Imul2,
    /// IMUL r, r/m, imm (imm8 or the full immediate).
    Imul3,
}

const MULDIVS: [Md; 6] = [Md::Mul, Md::Imul, Md::Div, Md::Idiv, Md::Imul2, Md::Imul3];

/// `op size ptr [mem]` natively on RAX and RDX; returns (RAX, RDX, RFLAGS).
macro_rules! native_wide {
    ($insn:literal, $ptr:literal, $ty:ty, $src:expr, $a:expr, $d:expr, $f:expr) => {{
        let mut mem: $ty = $src as $ty;
        let (mut a, mut d): (u64, u64) = ($a, $d);
        let out: u64;
        // SAFETY: the instruction reads `mem`, a live local; divide errors are predicted and
        // never reach here; the stack is balanced.
        unsafe {
            asm!(
                "push {fin}",
                "popfq",
                concat!($insn, " ", $ptr, " ptr [{m}]"),
                "pushfq",
                "pop {fout}",
                fin = in(reg) $f,
                m = in(reg) addr_of_mut!(mem),
                inout("rax") a,
                inout("rdx") d,
                fout = lateout(reg) out,
            );
        }
        let _ = &mut mem;
        (a, d, out)
    }};
}

fn native_wide(op: Md, size: usize, src: u64, a: u64, d: u64, f: u64) -> (u64, u64, u64) {
    macro_rules! sized {
        ($insn:literal) => {
            match size {
                1 => native_wide!($insn, "byte", u8, src, a, d, f),
                2 => native_wide!($insn, "word", u16, src, a, d, f),
                4 => native_wide!($insn, "dword", u32, src, a, d, f),
                _ => native_wide!($insn, "qword", u64, src, a, d, f),
            }
        };
    }
    match op {
        Md::Mul => sized!("mul"),
        Md::Imul => sized!("imul"),
        Md::Div => sized!("div"),
        _ => sized!("idiv"),
    }
}

/// `imul dst, size ptr [mem]` natively; returns (destination, RFLAGS).
fn native_imul2(size: usize, src: u64, dst: u64, f: u64) -> (u64, u64) {
    match size {
        2 => native_scan!("imul", "word", u16, "x", src, dst, f),
        4 => native_scan!("imul", "dword", u32, "e", src, dst, f),
        _ => native_scan!("imul", "qword", u64, "r", src, dst, f),
    }
}

/// Whether DIV or IDIV of the accumulator pair by `src` raises #DE.
fn divide_error(op: Md, size: usize, low: u64, high: u64, src: u64) -> bool {
    let bits = 8 * size as u32;
    let m = mask(size);
    let raw = (u128::from(high & m) << bits) | u128::from(low & m);
    match op {
        Md::Div => {
            let divisor = u128::from(src & m);
            divisor == 0 || raw / divisor > u128::from(m)
        }
        Md::Idiv => {
            let dividend = ((raw << (128 - 2 * bits)) as i128) >> (128 - 2 * bits);
            let divisor = i128::from(sign_extend(src, size) as i64);
            let limit = 1i128 << (bits - 1);
            match dividend.checked_div(divisor) {
                None => true,
                Some(q) => q >= limit || q < -limit,
            }
        }
        _ => false,
    }
}

#[derive(Clone, Copy, Debug)]
struct MdCase {
    op: Md,
    size: usize,
    src: u64,
    /// RAX (or the IMUL destination) and RDX, full width.
    rax: u64,
    rdx: u64,
    /// The three-operand immediate, and whether it is the 8-bit form.
    imm: u64,
    imm8: bool,
    offset: u64,
    flags: u64,
    vendor: Vendor,
}

impl Oracle {
    fn muldiv(&mut self, c: MdCase) {
        let MdCase {
            op,
            size,
            src,
            rax,
            rdx,
            imm,
            imm8,
            offset,
            flags,
            vendor,
        } = c;
        let m = mask(size);
        let src = src & m;
        let host_flags = 0x202 | (flags & STATUS);
        let bits = 8 * size;
        let addr = DATA + offset;
        let (instr, dst) = match op {
            Md::Mul | Md::Imul | Md::Div | Md::Idiv => {
                let name = format!("{op:?}_rm{bits}");
                (Instruction::with1(code(&name), mem_rbx()), None)
            }
            Md::Imul2 => (
                Instruction::with2(
                    code(&format!("Imul_r{bits}_rm{bits}")),
                    reg(2, size),
                    mem_rbx(),
                ),
                Some(RDX),
            ),
            Md::Imul3 => {
                let suffix = match (imm8, size) {
                    (true, _) => "imm8".to_string(),
                    (false, 2) => "imm16".to_string(),
                    _ => "imm32".to_string(),
                };
                let name = format!("Imul_r{bits}_rm{bits}_{suffix}");
                let instr = if imm8 || size == 8 {
                    Instruction::with3(code(&name), reg(2, size), mem_rbx(), imm as i64 as i32)
                } else {
                    Instruction::with3(code(&name), reg(2, size), mem_rbx(), (imm & m) as u32)
                };
                (instr, Some(RDX))
            }
        };
        let bytes = encode(instr.expect("valid operands"));
        let mach = &mut self.machine;
        mach.set_gpr(RBX, addr);
        mach.set_gpr(RAX, rax);
        mach.set_gpr(RDX, rdx);
        mach.write_phys(addr, &src.to_le_bytes()[..size]);
        let (low, high) = if size == 1 {
            (rax, rax >> 8)
        } else {
            (rax, rdx)
        };

        if divide_error(op, size, low, high, src) {
            let result = self.emulate(&bytes, addr, false, host_flags, vendor);
            match result {
                Err(EmulationError::Exception(e)) => {
                    assert_eq!(e.vector, Vector::DivideError, "{c:x?}");
                    assert_eq!((e.error_code, e.cr2), (None, None));
                }
                other => panic!("expected #DE, got {other:?}: {c:x?}"),
            }
            // The support asserts that a failure commits no register; memory is unchanged.
            assert_eq!(self.read(addr, size), src);
            assert_eq!((self.machine.gpr(RAX), self.machine.gpr(RDX)), (rax, rdx));
            self.divide_errors += 1;
            self.cases += 1;
            return;
        }

        let result = self.emulate(&bytes, addr, false, host_flags, vendor);
        assert_eq!(result, Ok(Completion::Complete), "{c:x?}");
        let (expected_rax, expected_rdx, native_flags) = match op {
            Md::Imul2 => {
                let (d, f) = native_imul2(size, src, rdx, host_flags);
                (rax, d, f)
            }
            Md::Imul3 => {
                // The same product: the immediate (sign-extended) times memory.
                let (d, f) = native_imul2(size, src, imm & m, host_flags);
                // A 16-bit destination keeps RDX's other bits; the native register held imm.
                let d = if size == 2 {
                    (rdx & !0xFFFF) | (d & 0xFFFF)
                } else {
                    d
                };
                (rax, d, f)
            }
            _ => native_wide(op, size, src, rax, rdx, host_flags),
        };
        assert_eq!(self.machine.gpr(RAX), expected_rax, "RAX: {c:x?}");
        assert_eq!(self.machine.gpr(RDX), expected_rdx, "RDX: {c:x?}");
        let _ = dst;
        let defined = match op {
            Md::Div | Md::Idiv => 0,
            _ => CF | OF,
        };
        let undefined = self.compares_undefined(vendor);
        let compared = if undefined { STATUS } else { defined };
        self.check_flags(self.machine.regs.rflags, native_flags, compared, &c);
        self.cases += 1;
    }
}

fn random_muldiv(rng: &mut Rng) -> MdCase {
    let op = rng.pick(&MULDIVS);
    let size = match op {
        Md::Imul2 | Md::Imul3 => rng.pick(&[2usize, 4, 8]),
        _ => rng.pick(&[1usize, 2, 4, 8]),
    };
    let m = mask(size);
    let imm8 = rng.coin();
    let imm = if imm8 {
        sign_extend(rng.next(), 1)
    } else if size == 8 {
        sign_extend(rng.operand(4), 4)
    } else {
        rng.operand(size)
    };
    let mut src = rng.operand(size);
    let mut rax = rng.next();
    let mut rdx = rng.next();
    if matches!(op, Md::Div | Md::Idiv) {
        // Mostly quotients that fit: a small high half (sign-extended for IDIV); some
        // divide errors, some zero divisors.
        match rng.below(8) {
            0 => src = 0,
            1 => {}
            _ => {
                let high = if op == Md::Idiv && rng.coin() { m } else { 0 };
                if size == 1 {
                    rax = (rax & !0xFF00) | (high & 0xFF) << 8;
                } else {
                    rdx = (rdx & !m) | high;
                }
                if src == 0 {
                    src = 1;
                }
            }
        }
    }
    MdCase {
        op,
        size,
        src,
        rax,
        rdx,
        imm,
        imm8,
        offset: rng.offset(size),
        flags: rng.flags(),
        vendor: rng.vendor(),
    }
}

// ---- tests ------------------------------------------------------------------------------

#[test]
fn shift_edges_match_the_host_cpu() {
    let mut oracle = Oracle::new();
    let mut rng = Rng(0x5EED_5417_0000_0001);
    for op in SHIFTS {
        for &size in op.sizes() {
            let width = 8 * size as u8;
            let counts = [
                0u8,
                1,
                2,
                3,
                width - 1,
                width,
                width + 1,
                16,
                17,
                18,
                31,
                32,
                33,
                63,
                64,
                65,
                255,
            ];
            for value in edges(size) {
                for count in counts {
                    for cf in [0, CF] {
                        for by in [By::Imm, By::Cl, By::One] {
                            if by == By::One && (op.double() || count != 1) {
                                continue;
                            }
                            for vendor in [Vendor::Intel, Vendor::Amd] {
                                oracle.shift(ShiftCase {
                                    op,
                                    sal: op == Sh::Shl && rng.coin(),
                                    size,
                                    by,
                                    value,
                                    src: rng.operand(size),
                                    count,
                                    noise: rng.next(),
                                    offset: 0x100,
                                    // All status flags in opposite states, so kept ones show.
                                    flags: cf | if cf == 0 { STATUS & !CF } else { 0 },
                                    vendor,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    println!(
        "shift oracle: {} edge cases agree with the host CPU ({:?}); undefined flags compared in {}",
        oracle.cases, oracle.host, oracle.undefined_compared
    );
}

#[test]
fn random_shifts_match_the_host_cpu() {
    let mut oracle = Oracle::new();
    let mut rng = Rng(0x0A1C_5417_D00D_F00D);
    for _ in 0..SHIFT_CASES {
        let case = random_shift(&mut rng);
        oracle.shift(case);
    }
    println!(
        "shift oracle: {} random cases agree with the host CPU ({:?}); undefined flags compared in {}",
        oracle.cases, oracle.host, oracle.undefined_compared
    );
    assert_eq!(oracle.cases, SHIFT_CASES);
}

#[test]
fn bit_edges_match_the_host_cpu() {
    let mut oracle = Oracle::new();
    let mut rng = Rng(0x5EED_B175_0000_0001);
    for op in BIT_OPS {
        for size in [2usize, 4, 8] {
            let width = 8 * size as i64;
            let offsets: Vec<(bool, i64)> = if op.test() {
                let reach = (BT_MIDDLE as i64 - 16) * 8;
                [
                    0,
                    1,
                    width - 1,
                    width,
                    width + 1,
                    -1,
                    -width,
                    -width - 1,
                    reach,
                    -reach,
                ]
                .iter()
                .map(|&o| (false, o))
                .chain([0, 1, width - 1, width, 255].iter().map(|&o| (true, o)))
                .collect()
            } else {
                vec![(false, 0)]
            };
            for value in edges(size) {
                for &(imm, offset) in &offsets {
                    for vendor in [Vendor::Intel, Vendor::Amd] {
                        oracle.bit(BitCase {
                            op,
                            size,
                            imm,
                            lock: false,
                            offset,
                            value,
                            noise: rng.next(),
                            skew: rng.next(),
                            flags: rng.flags(),
                            vendor,
                        });
                    }
                }
            }
        }
    }
    println!(
        "bit oracle: {} edge cases agree with the host CPU ({:?}); undefined flags compared in {}",
        oracle.cases, oracle.host, oracle.undefined_compared
    );
}

#[test]
fn random_bit_operations_match_the_host_cpu() {
    let mut oracle = Oracle::new();
    let mut rng = Rng(0x0A1C_B175_D00D_F00D);
    for _ in 0..BIT_CASES {
        let case = random_bit(&mut rng);
        oracle.bit(case);
    }
    println!(
        "bit oracle: {} random cases agree with the host CPU ({:?}); undefined flags compared in {}",
        oracle.cases, oracle.host, oracle.undefined_compared
    );
    assert!(oracle.cases > BIT_CASES * 9 / 10);
}

#[test]
fn muldiv_edges_match_the_host_cpu() {
    let mut oracle = Oracle::new();
    let mut rng = Rng(0x5EED_3D1F_0000_0001);
    for op in MULDIVS {
        let sizes: &[usize] = if matches!(op, Md::Imul2 | Md::Imul3) {
            &[2, 4, 8]
        } else {
            &[1, 2, 4, 8]
        };
        for &size in sizes {
            for src in edges(size) {
                for low in edges(size) {
                    for high in [0, 1, mask(size), mask(size) >> 1, 1 << (8 * size - 1)] {
                        let (rax, rdx) = if size == 1 {
                            (0xAAAA_0000 | (high & 0xFF) << 8 | low, rng.next())
                        } else {
                            (
                                (rng.next() & !mask(size)) | low,
                                (rng.next() & !mask(size)) | high,
                            )
                        };
                        for vendor in [Vendor::Intel, Vendor::Amd] {
                            oracle.muldiv(MdCase {
                                op,
                                size,
                                src,
                                rax,
                                rdx,
                                imm: sign_extend(low, if size == 8 { 4 } else { size }),
                                imm8: false,
                                offset: 0x100,
                                flags: rng.flags(),
                                vendor,
                            });
                        }
                    }
                }
            }
        }
    }
    println!(
        "multiply/divide oracle: {} edge cases ({} #DE) agree with the host CPU ({:?}); undefined flags compared in {}",
        oracle.cases, oracle.divide_errors, oracle.host, oracle.undefined_compared
    );
    assert!(oracle.divide_errors > 0);
}

#[test]
fn random_multiplies_and_divides_match_the_host_cpu() {
    let mut oracle = Oracle::new();
    let mut rng = Rng(0x0A1C_3D1F_D00D_F00D);
    for _ in 0..MULDIV_CASES {
        let case = random_muldiv(&mut rng);
        oracle.muldiv(case);
    }
    println!(
        "multiply/divide oracle: {} random cases ({} #DE) agree with the host CPU ({:?}); undefined flags compared in {}",
        oracle.cases, oracle.divide_errors, oracle.host, oracle.undefined_compared
    );
    assert_eq!(oracle.cases, MULDIV_CASES);
}

/// `set<cc> byte ptr [mem]` natively for each condition code (in iced-x86's order).
fn native_setcc(cc: usize, f: u64) -> u8 {
    macro_rules! set {
        ($cc:literal) => {{
            let mut mem: u8 = 0xEE;
            // SAFETY: writes `mem`, a live local; the stack is balanced.
            unsafe {
                asm!(
                    "push {fin}",
                    "popfq",
                    concat!("set", $cc, " byte ptr [{m}]"),
                    fin = in(reg) f,
                    m = in(reg) addr_of_mut!(mem),
                );
            }
            mem
        }};
    }
    match cc {
        0 => set!("o"),
        1 => set!("no"),
        2 => set!("b"),
        3 => set!("ae"),
        4 => set!("e"),
        5 => set!("ne"),
        6 => set!("be"),
        7 => set!("a"),
        8 => set!("s"),
        9 => set!("ns"),
        10 => set!("p"),
        11 => set!("np"),
        12 => set!("l"),
        13 => set!("ge"),
        14 => set!("le"),
        _ => set!("g"),
    }
}

/// `cmov<cc> edx, dword ptr [mem]` natively with RDX preset; returns RDX.
fn native_cmovcc(cc: usize, src: u32, rdx: u64, f: u64) -> u64 {
    macro_rules! cmov {
        ($cc:literal) => {{
            let mut mem: u32 = src;
            let mut d = rdx;
            // SAFETY: reads `mem`, a live local; the stack is balanced.
            unsafe {
                asm!(
                    "push {fin}",
                    "popfq",
                    concat!("cmov", $cc, " {d:e}, dword ptr [{m}]"),
                    fin = in(reg) f,
                    m = in(reg) addr_of_mut!(mem),
                    d = inout(reg) d,
                );
            }
            let _ = &mut mem;
            d
        }};
    }
    match cc {
        0 => cmov!("o"),
        1 => cmov!("no"),
        2 => cmov!("b"),
        3 => cmov!("ae"),
        4 => cmov!("e"),
        5 => cmov!("ne"),
        6 => cmov!("be"),
        7 => cmov!("a"),
        8 => cmov!("s"),
        9 => cmov!("ns"),
        10 => cmov!("p"),
        11 => cmov!("np"),
        12 => cmov!("l"),
        13 => cmov!("ge"),
        14 => cmov!("le"),
        _ => cmov!("g"),
    }
}

/// SETcc and 32-bit CMOVcc (whose false case still clears RDX's upper half) over all 16
/// conditions and all 64 combinations of the status flags.
#[test]
fn condition_codes_match_the_host_cpu() {
    const NAMES: [&str; 16] = [
        "o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g",
    ];
    let mut oracle = Oracle::new();
    let mut cases = 0;
    for (cc, name) in NAMES.iter().enumerate() {
        for combo in 0..64u64 {
            let flags = [CF, PF, AF, ZF, SF, OF]
                .iter()
                .enumerate()
                .filter(|(i, _)| combo & (1 << i) != 0)
                .fold(0x202, |acc, (_, f)| acc | f);
            let addr = DATA + 0x300 + combo;
            // SETcc.
            let expected = native_setcc(cc, flags);
            let bytes = encode(
                Instruction::with1(code(&format!("Set{name}_rm8")), mem_rbx()).expect("valid"),
            );
            oracle.machine.set_gpr(RBX, addr);
            oracle.machine.write_phys(addr, &[0xEE]);
            let result = oracle.emulate(&bytes, addr, true, flags, Vendor::Amd);
            assert_eq!(result, Ok(Completion::Complete));
            assert_eq!(
                oracle.machine.read_phys(addr, 1),
                vec![expected],
                "set{name} {flags:#x}"
            );
            assert_eq!(oracle.machine.regs.rflags, flags);
            // CMOVcc r32, m32.
            let rdx = 0xDEAD_BEEF_0000_0000 | combo;
            let src = 0x1234_5678 ^ combo as u32;
            let expected = native_cmovcc(cc, src, rdx, flags);
            let bytes = encode(
                Instruction::with2(
                    code(&format!("Cmov{name}_r32_rm32")),
                    Register::EDX,
                    mem_rbx(),
                )
                .expect("valid"),
            );
            oracle.machine.set_gpr(RDX, rdx);
            oracle.machine.write_phys(addr, &src.to_le_bytes());
            let result = oracle.emulate(&bytes, addr, false, flags, Vendor::Intel);
            assert_eq!(result, Ok(Completion::Complete));
            assert_eq!(oracle.machine.gpr(RDX), expected, "cmov{name} {flags:#x}");
            cases += 2;
        }
    }
    println!("condition-code oracle: {cases} SETcc/CMOVcc cases agree with the host CPU");
}
