//! The host CPU as the oracle for the ALU family: every operation at every size, over edge
//! values and seeded random operands, run natively (`op size ptr [mem], reg` on a stack slot
//! with RFLAGS set by `popfq`) and through hvemu's public API (an MMIO exit in 64-bit mode on
//! the test support's model machine), comparing the result and the six status flags.
//!
//! Flags the manuals leave undefined (AF after AND, OR, XOR and TEST) are compared only when
//! the emulator is configured for the host's own vendor; each case picks the configured vendor
//! at random, so both settings run.
//!
//! The encoding hvemu decodes is chosen per case among the instruction's forms (`r/m, r`,
//! `r, r/m`, `r/m, imm`, the sign-extended `imm8`, TEST's F6/F7 /1 alias, with and without
//! LOCK, CL or CH as the byte register); the native side always runs the memory-destination
//! register form with the same operand values, which computes the same operation.
#![cfg(target_arch = "x86_64")]
#![allow(unsafe_code)]

mod support;

use core::arch::asm;

use hvemu::*;
use support::native::*;
use support::*;

const RCX: usize = 1;
const RBX: usize = 3;
const MMIO: u64 = 0xFEE0_0000;

/// The number of seeded random cases each run.
const RANDOM_CASES: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Or,
    Adc,
    Sbb,
    And,
    Sub,
    Xor,
    Cmp,
    Test,
    Inc,
    Dec,
    Neg,
    Not,
}

const OPS: [Op; 13] = [
    Op::Add,
    Op::Or,
    Op::Adc,
    Op::Sbb,
    Op::And,
    Op::Sub,
    Op::Xor,
    Op::Cmp,
    Op::Test,
    Op::Inc,
    Op::Dec,
    Op::Neg,
    Op::Not,
];

impl Op {
    /// The /digit of the 80–83 group and the base of the 00–3B opcodes (ADD..CMP).
    fn group1(self) -> Option<u8> {
        Some(match self {
            Op::Add => 0,
            Op::Or => 1,
            Op::Adc => 2,
            Op::Sbb => 3,
            Op::And => 4,
            Op::Sub => 5,
            Op::Xor => 6,
            Op::Cmp => 7,
            _ => return None,
        })
    }

    fn unary(self) -> bool {
        matches!(self, Op::Inc | Op::Dec | Op::Neg | Op::Not)
    }

    fn writes(self) -> bool {
        !matches!(self, Op::Cmp | Op::Test)
    }

    fn logic(self) -> bool {
        matches!(self, Op::And | Op::Or | Op::Xor | Op::Test)
    }

    fn mnemonic(self) -> iced_x86::Mnemonic {
        use iced_x86::Mnemonic as M;
        match self {
            Op::Add => M::Add,
            Op::Or => M::Or,
            Op::Adc => M::Adc,
            Op::Sbb => M::Sbb,
            Op::And => M::And,
            Op::Sub => M::Sub,
            Op::Xor => M::Xor,
            Op::Cmp => M::Cmp,
            Op::Test => M::Test,
            Op::Inc => M::Inc,
            Op::Dec => M::Dec,
            Op::Neg => M::Neg,
            Op::Not => M::Not,
        }
    }
}

/// An encoding of the operation with `[rbx]` as its memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// `op [rbx], cl/ch/cx/ecx/rcx` (`high`: CH).
    MemReg { high: bool },
    /// `op cl/ch/cx/ecx/rcx, [rbx]`.
    RegMem { high: bool },
    /// `op [rbx], imm` at the operand's width (imm32 sign-extended for 64 bits).
    MemImm,
    /// `op [rbx], imm8` sign-extended (83 /r), 16 bits and wider.
    MemImm8,
    /// TEST's F6/F7 /1 alias of F6/F7 /0.
    TestAlias,
    /// The one-operand forms.
    Unary,
}

impl Form {
    fn forms(op: Op, size: usize) -> Vec<Form> {
        if op.unary() {
            return vec![Form::Unary];
        }
        let mut v = vec![Form::MemReg { high: false }, Form::MemImm];
        if size == 1 {
            v.push(Form::MemReg { high: true });
        }
        if op != Op::Test {
            v.push(Form::RegMem { high: false });
            if size == 1 {
                v.push(Form::RegMem { high: true });
            }
            if size > 1 {
                v.push(Form::MemImm8);
            }
        } else {
            v.push(Form::TestAlias);
        }
        v
    }

    /// Bytes of the immediate.
    fn imm_len(self, size: usize) -> usize {
        match self {
            Form::MemImm | Form::TestAlias => size.min(4),
            Form::MemImm8 => 1,
            _ => 0,
        }
    }

    fn lockable(self, op: Op) -> bool {
        op.writes() && !matches!(self, Form::RegMem { .. })
    }
}

/// Encodes by hand (checked against iced-x86 in `encodings_decode_as_intended`).
fn encode(op: Op, size: usize, form: Form, lock: bool, imm: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    if lock {
        b.push(0xF0);
    }
    if size == 2 {
        b.push(0x66);
    }
    if size == 8 {
        b.push(0x48);
    }
    let wide = u8::from(size != 1);
    let modrm = |reg: u8| (reg << 3) | 3; // mod=00, rm=011: [rbx]
    let (opcode, reg) = match (form, op) {
        (Form::MemReg { high }, Op::Test) => (0x84 | wide, if high { 5 } else { 1 }),
        (Form::MemReg { high }, _) => ((op.group1().unwrap() * 8) | wide, if high { 5 } else { 1 }),
        (Form::RegMem { high }, _) => (
            (op.group1().unwrap() * 8) | 2 | wide,
            if high { 5 } else { 1 },
        ),
        (Form::MemImm, Op::Test) => (0xF6 | wide, 0),
        (Form::TestAlias, _) => (0xF6 | wide, 1),
        (Form::MemImm, _) => (0x80 | wide, op.group1().unwrap()),
        (Form::MemImm8, _) => (0x83, op.group1().unwrap()),
        (Form::Unary, Op::Inc) => (0xFE | wide, 0),
        (Form::Unary, Op::Dec) => (0xFE | wide, 1),
        (Form::Unary, Op::Not) => (0xF6 | wide, 2),
        (Form::Unary, Op::Neg) => (0xF6 | wide, 3),
        (Form::Unary, _) => unreachable!(),
    };
    b.push(opcode);
    b.push(modrm(reg));
    b.extend_from_slice(&imm.to_le_bytes()[..form.imm_len(size)]);
    b
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

// ---- native execution -------------------------------------------------------------------

/// `insn size ptr [mem], src` natively with RFLAGS = `flags`; returns (memory, RFLAGS).
macro_rules! native2 {
    ($insn:literal, $ptr:literal, $ty:ty, $m:literal, $dst:expr, $src:expr, $flags:expr) => {{
        let mut mem: $ty = $dst as $ty;
        let out: u64;
        // SAFETY: the instruction reads and writes `mem`, a live local of the operand's size;
        // the stack is balanced (push/popfq, pushfq/pop) and DF stays clear.
        unsafe {
            asm!(
                "push {fin}",
                "popfq",
                concat!($insn, " ", $ptr, " ptr [{m}], {s:", $m, "}"),
                "pushfq",
                "pop {fout}",
                fin = in(reg) $flags,
                m = in(reg) core::ptr::addr_of_mut!(mem),
                s = in(reg) $src,
                fout = lateout(reg) out,
            );
        }
        (mem as u64, out)
    }};
}

/// `insn size ptr [mem]` natively with RFLAGS = `flags`; returns (memory, RFLAGS).
macro_rules! native1 {
    ($insn:literal, $ptr:literal, $ty:ty, $dst:expr, $flags:expr) => {{
        let mut mem: $ty = $dst as $ty;
        let out: u64;
        // SAFETY: as in `native2`.
        unsafe {
            asm!(
                "push {fin}",
                "popfq",
                concat!($insn, " ", $ptr, " ptr [{m}]"),
                "pushfq",
                "pop {fout}",
                fin = in(reg) $flags,
                m = in(reg) core::ptr::addr_of_mut!(mem),
                fout = lateout(reg) out,
            );
        }
        (mem as u64, out)
    }};
}

/// Runs `op` natively on `size`-byte operands.
fn native(op: Op, size: usize, dst: u64, src: u64, flags: u64) -> (u64, u64) {
    macro_rules! two {
        ($insn:literal) => {
            match size {
                1 => native2!($insn, "byte", u8, "l", dst, src, flags),
                2 => native2!($insn, "word", u16, "x", dst, src, flags),
                4 => native2!($insn, "dword", u32, "e", dst, src, flags),
                _ => native2!($insn, "qword", u64, "r", dst, src, flags),
            }
        };
    }
    macro_rules! one {
        ($insn:literal) => {
            match size {
                1 => native1!($insn, "byte", u8, dst, flags),
                2 => native1!($insn, "word", u16, dst, flags),
                4 => native1!($insn, "dword", u32, dst, flags),
                _ => native1!($insn, "qword", u64, dst, flags),
            }
        };
    }
    match op {
        Op::Add => two!("add"),
        Op::Or => two!("or"),
        Op::Adc => two!("adc"),
        Op::Sbb => two!("sbb"),
        Op::And => two!("and"),
        Op::Sub => two!("sub"),
        Op::Xor => two!("xor"),
        Op::Cmp => two!("cmp"),
        Op::Test => two!("test"),
        Op::Inc => one!("inc"),
        Op::Dec => one!("dec"),
        Op::Neg => one!("neg"),
        Op::Not => one!("not"),
    }
}

// ---- the emulated side ------------------------------------------------------------------

/// One case: operation, size, encoding, operand values and flags in.
#[derive(Clone, Copy, Debug)]
struct Case {
    op: Op,
    size: usize,
    form: Form,
    lock: bool,
    dst: u64,
    src: u64,
    /// The other bits of RCX (the register operand lives in CL, CH, CX, ECX or RCX).
    rcx_noise: u64,
    /// Offset of the memory operand in the MMIO page (may cross into the next page).
    offset: u64,
    flags_in: u64,
    vendor: Vendor,
}

struct Oracle {
    machine: Machine,
    host: Option<Vendor>,
    /// Cases run, and how many of them compared the undefined flags too.
    cases: usize,
    undefined_compared: usize,
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
        }
    }

    fn run(&mut self, c: Case) {
        let Case {
            op,
            size,
            form,
            lock,
            dst,
            src,
            rcx_noise,
            offset,
            flags_in,
            vendor,
        } = c;
        let m = mask(size);
        let (dst, src) = (dst & m, src & m);
        let host_flags = 0x202 | (flags_in & STATUS);
        let (native_value, native_flags) = native(op, size, dst, src, host_flags);

        // The same operation through hvemu.
        let high = matches!(
            form,
            Form::MemReg { high: true } | Form::RegMem { high: true }
        );
        let reg_shift = if high { 8 } else { 0 };
        let reg_mask = m << reg_shift;
        let (mem_value, reg_value) = match form {
            Form::RegMem { .. } => (src, dst),
            _ => (dst, src),
        };
        let rcx = (rcx_noise & !reg_mask) | (reg_value << reg_shift);
        let imm = match form {
            Form::MemImm | Form::TestAlias | Form::MemImm8 => src,
            _ => 0,
        };
        let bytes = encode(op, size, form, lock, imm);
        let addr = MMIO + offset;
        let mach = &mut self.machine;
        mach.set_gpr(RBX, addr);
        mach.set_gpr(RCX, rcx);
        mach.regs.rflags = host_flags;
        mach.regs.rip = 0x1000;
        mach.write_phys(addr, &mem_value.to_le_bytes()[..size]);
        let access = if op.writes() && !matches!(form, Form::RegMem { .. }) {
            MemoryAccessType::Write
        } else {
            MemoryAccessType::Read
        };
        let ctx = MemoryAccessContext::new(&bytes, access, addr);
        let outcome = mach.mmio_ctx_config(
            bytes.len() as u8,
            &ctx,
            Config::default().with_vendor(vendor),
        );
        assert_eq!(outcome.result, Ok(Completion::Complete), "{c:x?}");
        assert_eq!(mach.regs.rip, 0x1000 + bytes.len() as u64);

        let (value, expected_rcx, expected_mem) = match form {
            Form::RegMem { .. } => {
                let now = (mach.gpr(RCX) & reg_mask) >> reg_shift;
                // 32-bit writes zero-extend, 8- and 16-bit writes merge; CMP writes nothing.
                let expected = match size {
                    _ if !op.writes() => rcx,
                    4 | 8 => native_value,
                    _ => (rcx & !reg_mask) | (native_value << reg_shift),
                };
                (now, expected, src)
            }
            _ => {
                let now =
                    u64::from_le_bytes(mach.read_phys(addr, 8).try_into().expect("eight bytes"))
                        & m;
                (now, rcx, now)
            }
        };
        let mem_now =
            u64::from_le_bytes(mach.read_phys(addr, 8).try_into().expect("eight bytes")) & m;
        assert_eq!(mem_now, expected_mem, "memory: {c:x?}");
        assert_eq!(value, native_value, "result: {c:x?}");
        assert_eq!(mach.gpr(RCX), expected_rcx, "rcx: {c:x?}");

        let compare_undefined = self.host == Some(vendor);
        let undefined = if op.logic() { AF } else { 0 };
        let compared = if compare_undefined {
            STATUS
        } else {
            STATUS & !undefined
        };
        let emulated = mach.regs.rflags;
        assert_eq!(
            emulated & compared,
            native_flags & compared,
            "flags: emulated {emulated:#x} native {native_flags:#x}: {c:x?}"
        );
        assert_eq!(
            emulated & !STATUS,
            host_flags & !STATUS,
            "non-status RFLAGS bits changed: {c:x?}"
        );
        // Memory stays as it was for CMP and TEST, and for the register-destination forms.
        if !op.writes() && !matches!(form, Form::RegMem { .. }) {
            assert_eq!(mem_now, dst, "CMP/TEST wrote memory: {c:x?}");
        }
        self.cases += 1;
        if compare_undefined && undefined != 0 {
            self.undefined_compared += 1;
        }
    }
}

// ---- generation -------------------------------------------------------------------------

/// Operand generators on top of the shared seeded generator.
impl Rng {
    /// Operand values that reach the interesting carries: uniform, small, near the edges.
    fn operand(&mut self, size: usize) -> u64 {
        let m = mask(size);
        let v = match self.below(4) {
            0 | 1 => self.next(),
            2 => self.next() & 0x3F,
            _ => {
                let edge = self.pick(&edges(size));
                let delta = self.next() & 3;
                if self.next() & 1 == 0 {
                    edge.wrapping_add(delta)
                } else {
                    edge.wrapping_sub(delta)
                }
            }
        };
        v & m
    }
}

/// 0, 1, 0xF, 0x10, the signed maximum and minimum (and their neighbours), all ones.
fn edges(size: usize) -> [u64; 9] {
    let m = mask(size);
    let smin = 1u64 << (8 * size - 1);
    [0, 1, 0xF, 0x10, smin - 1, smin, smin + 1, m - 1, m]
}

/// The operand value an immediate form can carry, derived from `v`.
fn representable(form: Form, size: usize, v: u64) -> u64 {
    match form {
        Form::MemImm8 => sign_extend(v, 1),
        Form::MemImm | Form::TestAlias if size == 8 => sign_extend(v, 4),
        _ => v,
    }
}

fn flags_from(bits: u64) -> u64 {
    bits & STATUS
}

fn vendors() -> [Vendor; 2] {
    [Vendor::Intel, Vendor::Amd]
}

// ---- tests ------------------------------------------------------------------------------

#[test]
fn encodings_decode_as_intended() {
    use iced_x86::{Decoder, DecoderOptions, OpKind};
    let mut count = 0;
    for op in OPS {
        for size in [1, 2, 4, 8] {
            for form in Form::forms(op, size) {
                for lock in [false, true] {
                    if lock && !form.lockable(op) {
                        continue;
                    }
                    let bytes = encode(op, size, form, lock, 0x12);
                    let mut d = Decoder::new(64, &bytes, DecoderOptions::NONE);
                    let i = d.decode();
                    assert_eq!(i.len(), bytes.len(), "{op:?} {size} {form:?}");
                    assert_eq!(i.mnemonic(), op.mnemonic(), "{op:?} {size} {form:?}");
                    assert_eq!(i.memory_size().size(), size, "{op:?} {size} {form:?}");
                    assert_eq!(i.has_lock_prefix(), lock);
                    let mem_op = if matches!(form, Form::RegMem { .. }) {
                        1
                    } else {
                        0
                    };
                    assert_eq!(i.op_kind(mem_op), OpKind::Memory, "{op:?} {form:?}");
                    count += 1;
                }
            }
        }
    }
    println!("{count} encodings checked");
}

#[test]
fn edge_values_match_the_host_cpu() {
    let mut oracle = Oracle::new();
    let mut rng = Rng(0x5EED_0000_0000_0001);
    for op in OPS {
        for size in [1, 2, 4, 8] {
            let forms = Form::forms(op, size);
            let srcs: Vec<u64> = if op.unary() {
                vec![0]
            } else {
                edges(size).to_vec()
            };
            for dst in edges(size) {
                for &src in &srcs {
                    for cf in [0, CF] {
                        // All status flags in opposite states, so kept flags are visible.
                        let rest = if cf == 0 { STATUS & !CF } else { 0 };
                        let form = forms[rng.below(forms.len())];
                        let src = representable(form, size, src);
                        let lock = form.lockable(op) && rng.next() & 1 == 0;
                        for vendor in vendors() {
                            oracle.run(Case {
                                op,
                                size,
                                form,
                                lock,
                                dst,
                                src,
                                rcx_noise: rng.next(),
                                offset: 0x100,
                                flags_in: cf | rest,
                                vendor,
                            });
                        }
                    }
                }
            }
        }
    }
    println!(
        "ALU oracle: {} edge cases agree with the host CPU ({:?}); undefined AF compared in {}",
        oracle.cases, oracle.host, oracle.undefined_compared
    );
}

#[test]
fn random_operands_match_the_host_cpu() {
    let mut oracle = Oracle::new();
    let mut rng = Rng(0x0A1C_2024_D00D_F00D);
    for _ in 0..RANDOM_CASES {
        let op = rng.pick(&OPS);
        let size = rng.pick(&[1, 2, 4, 8]);
        let forms = Form::forms(op, size);
        let form = rng.pick(&forms);
        let dst = rng.operand(size);
        let src = representable(form, size, rng.operand(size));
        let lock = form.lockable(op) && rng.next() & 1 == 0;
        // One case in sixteen straddles the page boundary.
        let offset = if rng.below(16) == 0 {
            0x1000 - (rng.below(size.max(2) - 1) as u64 + 1)
        } else {
            rng.next() & 0xFF8
        };
        oracle.run(Case {
            op,
            size,
            form,
            lock,
            dst,
            src,
            rcx_noise: rng.next(),
            offset,
            flags_in: flags_from(rng.next()),
            vendor: rng.pick(&vendors()),
        });
    }
    println!(
        "ALU oracle: {} random cases agree with the host CPU ({:?}); undefined AF compared in {}",
        oracle.cases, oracle.host, oracle.undefined_compared
    );
    assert_eq!(oracle.cases, RANDOM_CASES);
}
