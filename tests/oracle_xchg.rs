//! The host CPU as the oracle for the exchange family and the string compares: XCHG, XADD,
//! CMPXCHG at 8, 16, 32 and 64 bits, CMPXCHG8B and CMPXCHG16B, and CMPS/SCAS at every element
//! size with and without REPE/REPNE in both directions — edge values and seeded random cases,
//! run natively (inline assembly on host memory, RFLAGS set by `popfq`) and through hvemu's
//! public API (an MMIO exit in 64-bit mode on the test support's model machine), comparing
//! memory, every register the instruction writes (at full width, so that merging and
//! zero-extension are checked too), and every status flag; no other RFLAGS bit may change.
//!
//! The emulated side varies what the native side cannot observe: the operand in MMIO, in RAM
//! with the monitor's `compare_exchange` or without it, or across a page boundary (the
//! read-then-write path); LOCK or not; for the strings, the REP bound (a small
//! `max_rep_iterations`, the instruction re-run until it completes) and which operand is MMIO.
#![cfg(target_arch = "x86_64")]
#![allow(unsafe_code)]

mod support;

use core::arch::asm;
use core::ptr::addr_of_mut;

use hvemu::*;
use support::native::*;
use support::*;

const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RBX: usize = 3;
const RSI: usize = 6;
const RDI: usize = 7;
const MMIO: u64 = 0xFEE0_0000;
const RAM: u64 = 0x10_0000;

/// Seeded random cases per run (edge cases come on top).
const RANDOM_EXCHANGE_CASES: usize = 20_000;
const RANDOM_STRING_CASES: usize = 12_000;

// ---- generation -------------------------------------------------------------------------

/// Operand generators on top of the shared seeded generator.
impl Rng {
    fn bit(&mut self) -> bool {
        self.next() & 1 != 0
    }

    /// Values that reach the interesting carries: uniform, small, near the edges.
    fn operand(&mut self, size: usize) -> u64 {
        let v = match self.below(4) {
            0 | 1 => self.next(),
            2 => self.next() & 0x3F,
            _ => {
                let edge = self.pick(&edges(size));
                let delta = self.next() & 3;
                if self.bit() {
                    edge.wrapping_add(delta)
                } else {
                    edge.wrapping_sub(delta)
                }
            }
        };
        v & mask(size)
    }
}

fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    }
}

/// 0, 1, 0xF, 0x10, the signed maximum and minimum (and a neighbour), all ones.
fn edges(size: usize) -> [u64; 8] {
    let m = mask(size);
    let smin = 1u64 << (8 * size - 1);
    [0, 1, 0xF, 0x10, smin - 1, smin, m - 1, m]
}

// ---- native execution: the exchange family ----------------------------------------------

/// What the host left: memory, RAX, RCX (the register operand), RDX, RFLAGS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct After {
    mem: u128,
    rax: u64,
    rcx: u64,
    rdx: u64,
    rflags: u64,
}

/// `insn size ptr [mem], reg` (XCHG, XADD) natively.
macro_rules! native_rmw {
    ($insn:literal, $ptr:literal, $ty:ty, $class:ident, $m:literal, $mem:expr, $reg:expr, $flags:expr) => {{
        let mut mem: $ty = $mem as $ty;
        let mut reg: u64 = $reg;
        let out: u64;
        // SAFETY: the instruction reads and writes `mem`, a live local of the operand's size;
        // the stack is balanced (push/popfq, pushfq/pop) and DF stays clear.
        unsafe {
            asm!(
                "push {fin}",
                "popfq",
                concat!($insn, " ", $ptr, " ptr [{m}], {r:", $m, "}"),
                "pushfq",
                "pop {fout}",
                fin = in(reg) $flags,
                m = in(reg) addr_of_mut!(mem),
                r = inout($class) reg,
                fout = lateout(reg) out,
            );
        }
        (mem as u128, reg, out)
    }};
}

/// `lock cmpxchg size ptr [mem], reg` natively with RAX.
macro_rules! native_cmpxchg {
    ($ptr:literal, $ty:ty, $class:ident, $m:literal, $mem:expr, $reg:expr, $rax:expr, $flags:expr) => {{
        let mut mem: $ty = $mem as $ty;
        let mut rax: u64 = $rax;
        let out: u64;
        // SAFETY: as in `native_rmw`; RAX is declared.
        unsafe {
            asm!(
                "push {fin}",
                "popfq",
                concat!("lock cmpxchg ", $ptr, " ptr [{m}], {r:", $m, "}"),
                "pushfq",
                "pop {fout}",
                fin = in(reg) $flags,
                m = in(reg) addr_of_mut!(mem),
                r = in($class) $reg,
                inout("rax") rax,
                fout = lateout(reg) out,
            );
        }
        (mem as u128, rax, out)
    }};
}

/// 16-byte-aligned storage for CMPXCHG16B.
#[repr(C, align(16))]
struct Aligned([u64; 2]);

/// Runs one exchange-family case natively.
fn native(op: Op, size: usize, high: bool, mem: u128, regs: [u64; 4], flags: u64) -> After {
    let [rax, rcx, rdx, rbx] = regs;
    let mut after = After {
        mem,
        rax,
        rcx,
        rdx,
        rflags: 0,
    };
    match op {
        Op::Xchg | Op::Xadd => {
            let (m, r, f) = match (op, size, high) {
                (Op::Xchg, 1, false) => {
                    native_rmw!("xchg", "byte", u8, reg_abcd, "l", mem, rcx, flags)
                }
                (Op::Xchg, 1, true) => {
                    native_rmw!("xchg", "byte", u8, reg_abcd, "h", mem, rcx, flags)
                }
                (Op::Xchg, 2, _) => native_rmw!("xchg", "word", u16, reg, "x", mem, rcx, flags),
                (Op::Xchg, 4, _) => native_rmw!("xchg", "dword", u32, reg, "e", mem, rcx, flags),
                (Op::Xchg, _, _) => native_rmw!("xchg", "qword", u64, reg, "r", mem, rcx, flags),
                (_, 1, false) => {
                    native_rmw!("lock xadd", "byte", u8, reg_abcd, "l", mem, rcx, flags)
                }
                (_, 1, true) => {
                    native_rmw!("lock xadd", "byte", u8, reg_abcd, "h", mem, rcx, flags)
                }
                (_, 2, _) => native_rmw!("lock xadd", "word", u16, reg, "x", mem, rcx, flags),
                (_, 4, _) => native_rmw!("lock xadd", "dword", u32, reg, "e", mem, rcx, flags),
                (_, _, _) => native_rmw!("lock xadd", "qword", u64, reg, "r", mem, rcx, flags),
            };
            after.mem = m;
            after.rcx = r;
            after.rflags = f;
        }
        Op::Cmpxchg => {
            let (m, a, f) = match (size, high) {
                (1, false) => native_cmpxchg!("byte", u8, reg_abcd, "l", mem, rcx, rax, flags),
                (1, true) => native_cmpxchg!("byte", u8, reg_abcd, "h", mem, rcx, rax, flags),
                (2, _) => native_cmpxchg!("word", u16, reg, "x", mem, rcx, rax, flags),
                (4, _) => native_cmpxchg!("dword", u32, reg, "e", mem, rcx, rax, flags),
                _ => native_cmpxchg!("qword", u64, reg, "r", mem, rcx, rax, flags),
            };
            after.mem = m;
            after.rax = a;
            after.rflags = f;
        }
        Op::Cmpxchg8b => {
            let mut m: u64 = mem as u64;
            let (mut a, mut d) = (rax, rdx);
            let out: u64;
            // SAFETY: the instruction reads and writes `m`, a live u64; RBX is swapped in and
            // back (LLVM reserves it); the stack is balanced and DF stays clear.
            unsafe {
                asm!(
                    "push {fin}",
                    "popfq",
                    "xchg rbx, {b}",
                    "lock cmpxchg8b qword ptr [{m}]",
                    "xchg rbx, {b}",
                    "pushfq",
                    "pop {fout}",
                    fin = in(reg) flags,
                    m = in(reg) addr_of_mut!(m),
                    b = inout(reg) rbx => _,
                    inout("rax") a,
                    inout("rdx") d,
                    in("rcx") rcx,
                    fout = lateout(reg) out,
                );
            }
            after.mem = u128::from(m);
            after.rax = a;
            after.rdx = d;
            after.rflags = out;
        }
        Op::Cmpxchg16b => {
            let mut m = Aligned([mem as u64, (mem >> 64) as u64]);
            let (mut a, mut d) = (rax, rdx);
            let out: u64;
            // SAFETY: as for CMPXCHG8B, on a 16-byte-aligned live local.
            unsafe {
                asm!(
                    "push {fin}",
                    "popfq",
                    "xchg rbx, {b}",
                    "lock cmpxchg16b xmmword ptr [{m}]",
                    "xchg rbx, {b}",
                    "pushfq",
                    "pop {fout}",
                    fin = in(reg) flags,
                    m = in(reg) addr_of_mut!(m),
                    b = inout(reg) rbx => _,
                    inout("rax") a,
                    inout("rdx") d,
                    in("rcx") rcx,
                    fout = lateout(reg) out,
                );
            }
            after.mem = u128::from(m.0[0]) | (u128::from(m.0[1]) << 64);
            after.rax = a;
            after.rdx = d;
            after.rflags = out;
        }
    }
    after
}

// ---- the emulated side: the exchange family ----------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Xchg,
    Xadd,
    Cmpxchg,
    Cmpxchg8b,
    Cmpxchg16b,
}

const OPS: [Op; 5] = [
    Op::Xchg,
    Op::Xadd,
    Op::Cmpxchg,
    Op::Cmpxchg8b,
    Op::Cmpxchg16b,
];

impl Op {
    fn sizes(self) -> &'static [usize] {
        match self {
            Op::Cmpxchg8b => &[8],
            Op::Cmpxchg16b => &[16],
            _ => &[1, 2, 4, 8],
        }
    }
}

/// Where the emulated operand lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// MMIO: the monitor declines the compare-exchange; read, then write.
    Mmio,
    /// RAM, with the monitor's compare-exchange.
    AtomicRam,
    /// RAM, the monitor without compare-exchange.
    PlainRam,
    /// MMIO across a page boundary (never for CMPXCHG16B).
    Split,
}

const PLACES: [Place; 4] = [Place::Mmio, Place::AtomicRam, Place::PlainRam, Place::Split];

#[derive(Clone, Copy, Debug)]
struct Case {
    op: Op,
    size: usize,
    /// CH instead of CL for the byte forms.
    high: bool,
    lock: bool,
    mem: u128,
    /// RAX, RCX, RDX, RBX.
    regs: [u64; 4],
    flags_in: u64,
    place: Place,
}

/// Encodes with `[rsi]` as the memory operand and RCX (CL, CH, CX, ECX) as the register.
fn encode(c: &Case) -> Vec<u8> {
    let mut b = Vec::new();
    if c.lock {
        b.push(0xF0);
    }
    let (reg, rm) = (if c.high { 5 } else { 1 }, 6);
    let modrm = (reg << 3) | rm;
    match c.op {
        Op::Cmpxchg8b => b.extend_from_slice(&[0x0F, 0xC7, (1 << 3) | rm]),
        Op::Cmpxchg16b => b.extend_from_slice(&[0x48, 0x0F, 0xC7, (1 << 3) | rm]),
        _ => {
            if c.size == 2 {
                b.push(0x66);
            }
            if c.size == 8 {
                b.push(0x48);
            }
            let wide = u8::from(c.size != 1);
            match c.op {
                Op::Xchg => b.push(0x86 | wide),
                Op::Xadd => b.extend_from_slice(&[0x0F, 0xC0 | wide]),
                _ => b.extend_from_slice(&[0x0F, 0xB0 | wide]),
            }
            b.push(modrm);
        }
    }
    b
}

struct Exchanges {
    machine: Machine,
    cases: usize,
    by_place: [usize; 4],
}

impl Exchanges {
    fn new() -> Self {
        let mut machine = Machine::long();
        machine.regs.rip = 0x1000;
        Exchanges {
            machine,
            cases: 0,
            by_place: [0; 4],
        }
    }

    fn run(&mut self, c: Case) {
        let size = c.size;
        let mem_mask = if size == 16 {
            u128::MAX
        } else {
            u128::from(mask(size))
        };
        let mem = c.mem & mem_mask;
        let flags = 0x202 | (c.flags_in & STATUS);
        let native = native(c.op, size, c.high, mem, c.regs, flags);

        let addr = match c.place {
            Place::Mmio => MMIO + 0x100,
            Place::AtomicRam | Place::PlainRam => RAM + 0x100,
            Place::Split => MMIO + 0x1000 - (size as u64 / 2).max(1),
        };
        let bytes = encode(&c);
        let m = &mut self.machine;
        m.atomic_ram = c.place == Place::AtomicRam;
        m.regs.rip = 0x1000;
        m.regs.rflags = flags;
        let [rax, rcx, rdx, rbx] = c.regs;
        m.set_gpr(RAX, rax);
        m.set_gpr(RCX, rcx);
        m.set_gpr(RDX, rdx);
        m.set_gpr(RBX, rbx);
        m.set_gpr(RSI, addr);
        m.write_phys(addr, &mem.to_le_bytes()[..size]);
        let ctx = MemoryAccessContext::new(&bytes, MemoryAccessType::Write, addr);
        let outcome = m.mmio_ctx(bytes.len() as u8, &ctx);
        assert_eq!(outcome.result, Ok(Completion::Complete), "{c:x?}");
        assert_eq!(m.regs.rip, 0x1000 + bytes.len() as u64);
        let mut buf = [0u8; 16];
        buf[..size].copy_from_slice(&m.read_phys(addr, size));
        let emulated = After {
            mem: u128::from_le_bytes(buf),
            rax: m.gpr(RAX),
            rcx: m.gpr(RCX),
            rdx: m.gpr(RDX),
            rflags: m.regs.rflags,
        };
        assert_eq!(
            emulated,
            After {
                rflags: native.rflags & !DF,
                ..native
            },
            "{c:x?}"
        );
        assert_eq!(m.gpr(RBX), rbx);
        assert_eq!(m.gpr(RSI), addr);
        // Which path ran: the monitor's compare-exchange only when locked, on atomic RAM.
        let locked = c.lock || c.op == Op::Xchg;
        let via_monitor = m.compare_exchanges().iter().any(|(_, _, _, r)| r.is_some());
        assert_eq!(via_monitor, locked && c.place == Place::AtomicRam, "{c:x?}");
        if via_monitor {
            assert!(m.memory_calls().is_empty(), "{c:x?}");
        }
        self.cases += 1;
        self.by_place[PLACES.iter().position(|p| *p == c.place).unwrap()] += 1;
    }
}

fn random_case(rng: &mut Rng, op: Op) -> Case {
    let size = rng.pick(op.sizes());
    let places: &[Place] = if op == Op::Cmpxchg16b {
        &PLACES[..3]
    } else {
        &PLACES
    };
    let wide = |rng: &mut Rng| -> u128 {
        match size {
            16 => u128::from(rng.operand(8)) | (u128::from(rng.operand(8)) << 64),
            _ => u128::from(rng.operand(size)),
        }
    };
    let mem = wide(rng);
    let mut regs = [rng.next(), rng.next(), rng.next(), rng.next()];
    // Half the compare-exchanges compare equal (and some differ in one half only).
    let equal = rng.bit();
    match op {
        Op::Cmpxchg if equal => {
            regs[RAX] = (regs[RAX] & !mask(size)) | mem as u64;
        }
        Op::Cmpxchg8b | Op::Cmpxchg16b => {
            let half = size * 4;
            let lo_mask = if half == 64 {
                u64::MAX
            } else {
                (1u64 << half) - 1
            };
            let (lo, hi) = ((mem as u64) & lo_mask, (mem >> half) as u64 & lo_mask);
            if equal {
                regs[RAX] = (regs[RAX] & !lo_mask) | lo;
                regs[RDX] = (regs[RDX] & !lo_mask) | hi;
            } else if rng.bit() {
                regs[RAX] = (regs[RAX] & !lo_mask) | lo;
            }
        }
        _ => {
            let v = rng.operand(size);
            regs[RCX] = (regs[RCX] & !mask(size)) | v;
        }
    }
    let high = size == 1 && rng.bit();
    if high {
        regs[RCX] = (regs[RCX] & !0xFF00) | ((regs[RCX] & 0xFF) << 8);
    }
    Case {
        op,
        size,
        high,
        lock: op == Op::Xchg && rng.bit() || op != Op::Xchg && rng.below(4) != 0,
        mem,
        regs,
        flags_in: rng.next(),
        place: rng.pick(places),
    }
}

#[test]
fn exchange_edge_values_match_the_host_cpu() {
    let mut oracle = Exchanges::new();
    let mut rng = Rng(0x0C3C_0000_5EED_0001);
    for op in OPS {
        for &size in op.sizes() {
            let value_size = size.min(8);
            for a in edges(value_size) {
                for b in edges(value_size) {
                    for flags_in in [0, STATUS] {
                        let (mem, regs) = match op {
                            // mem = a; RCX (or RAX for CMPXCHG) = b, RCX's upper bits noise.
                            Op::Xchg | Op::Xadd => (
                                u128::from(a),
                                [rng.next(), (rng.next() & !mask(size)) | b, rng.next(), 0],
                            ),
                            Op::Cmpxchg => (
                                u128::from(a),
                                [(rng.next() & !mask(size)) | b, rng.next(), 0, 0],
                            ),
                            Op::Cmpxchg8b => {
                                // memory = b:a; EDX:EAX = b:a or (b ^ 1):a.
                                let m = u128::from((a & 0xFFFF_FFFF) | (b << 32));
                                let edx = (b & 0xFFFF_FFFF) ^ u64::from(rng.bit());
                                let rax = (rng.next() << 32) | (a & 0xFFFF_FFFF);
                                let rdx = (rng.next() << 32) | edx;
                                (m, [rax, rng.next(), rdx, rng.next()])
                            }
                            _ => {
                                let m = u128::from(a) | (u128::from(b) << 64);
                                let rdx = if rng.bit() { b } else { rng.next() };
                                (m, [a, rng.next(), rdx, rng.next()])
                            }
                        };
                        for place in PLACES {
                            if op == Op::Cmpxchg16b && place == Place::Split {
                                continue;
                            }
                            oracle.run(Case {
                                op,
                                size,
                                high: false,
                                lock: op != Op::Xchg || rng.bit(),
                                mem,
                                regs,
                                flags_in,
                                place,
                            });
                        }
                    }
                }
            }
        }
    }
    println!(
        "exchange oracle: {} edge cases agree with the host CPU (by placement {:?})",
        oracle.cases, oracle.by_place
    );
}

#[test]
fn exchange_random_operands_match_the_host_cpu() {
    let mut oracle = Exchanges::new();
    let mut rng = Rng(0x0A70_C202_50DD_BA11);
    for _ in 0..RANDOM_EXCHANGE_CASES {
        let op = rng.pick(&OPS);
        let case = random_case(&mut rng, op);
        oracle.run(case);
    }
    println!(
        "exchange oracle: {} random cases agree with the host CPU (by placement {:?})",
        oracle.cases, oracle.by_place
    );
    assert_eq!(oracle.cases, RANDOM_EXCHANGE_CASES);
}

// ---- native execution: CMPS and SCAS -------------------------------------------------------

/// What a string compare left: RCX, RSI, RDI, RFLAGS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StringAfter {
    rcx: u64,
    rsi: u64,
    rdi: u64,
    rflags: u64,
}

/// `insn` (a CMPS or SCAS with its prefix) natively on host pointers.
macro_rules! native_string {
    ($insn:literal, $rax:expr, $rcx:expr, $rsi:expr, $rdi:expr, $flags:expr) => {{
        let (mut rcx, mut rsi, mut rdi) = ($rcx, $rsi, $rdi);
        let out: u64;
        // SAFETY: RSI and RDI point into live buffers large enough for RCX elements in the
        // direction DF gives (the caller sizes them); the instruction only reads. DF is
        // cleared again before the block ends; the stack is balanced.
        unsafe {
            asm!(
                "push {fin}",
                "popfq",
                $insn,
                "pushfq",
                "pop {fout}",
                "cld",
                fin = in(reg) $flags,
                in("rax") $rax,
                inout("rcx") rcx,
                inout("rsi") rsi,
                inout("rdi") rdi,
                fout = lateout(reg) out,
            );
        }
        StringAfter {
            rcx,
            rsi,
            rdi,
            rflags: out,
        }
    }};
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rep {
    None,
    E,
    Ne,
}

/// Runs one CMPS/SCAS natively; `regs` are RAX, RCX, RSI and RDI.
fn native_string(scas: bool, size: usize, rep: Rep, regs: [u64; 4], flags: u64) -> StringAfter {
    let [rax, rcx, rsi, rdi] = regs;
    macro_rules! go {
        ($insn:literal) => {
            native_string!($insn, rax, rcx, rsi, rdi, flags)
        };
    }
    match (scas, size, rep) {
        (false, 1, Rep::None) => go!("cmpsb"),
        (false, 1, Rep::E) => go!("repe cmpsb"),
        (false, 1, Rep::Ne) => go!("repne cmpsb"),
        (false, 2, Rep::None) => go!("cmpsw"),
        (false, 2, Rep::E) => go!("repe cmpsw"),
        (false, 2, Rep::Ne) => go!("repne cmpsw"),
        (false, 4, Rep::None) => go!("cmpsd"),
        (false, 4, Rep::E) => go!("repe cmpsd"),
        (false, 4, Rep::Ne) => go!("repne cmpsd"),
        (false, _, Rep::None) => go!("cmpsq"),
        (false, _, Rep::E) => go!("repe cmpsq"),
        (false, _, Rep::Ne) => go!("repne cmpsq"),
        (true, 1, Rep::None) => go!("scasb"),
        (true, 1, Rep::E) => go!("repe scasb"),
        (true, 1, Rep::Ne) => go!("repne scasb"),
        (true, 2, Rep::None) => go!("scasw"),
        (true, 2, Rep::E) => go!("repe scasw"),
        (true, 2, Rep::Ne) => go!("repne scasw"),
        (true, 4, Rep::None) => go!("scasd"),
        (true, 4, Rep::E) => go!("repe scasd"),
        (true, 4, Rep::Ne) => go!("repne scasd"),
        (true, _, Rep::None) => go!("scasq"),
        (true, _, Rep::E) => go!("repe scasq"),
        (true, _, Rep::Ne) => go!("repne scasq"),
    }
}

// ---- the emulated side: CMPS and SCAS ------------------------------------------------------

/// The most elements a case compares.
const MAX_ELEMENTS: usize = 24;

#[derive(Clone, Debug)]
struct StringCase {
    scas: bool,
    size: usize,
    rep: Rep,
    backwards: bool,
    /// Elements at rSI (CMPS) and at rDI, MAX_ELEMENTS each.
    source: Vec<u64>,
    destination: Vec<u64>,
    rax: u64,
    count: u64,
    flags_in: u64,
    /// Which operand is MMIO (the other is RAM): rSI's when true.
    source_in_mmio: bool,
    max_rep: u32,
}

struct Strings {
    machine: Machine,
    cases: usize,
    iterations: u64,
    partial_calls: usize,
}

fn to_bytes(elements: &[u64], size: usize) -> Vec<u8> {
    elements
        .iter()
        .flat_map(|e| e.to_le_bytes()[..size].to_vec())
        .collect()
}

impl Strings {
    fn new() -> Self {
        let mut machine = Machine::long();
        machine.regs.rip = 0x1000;
        Strings {
            machine,
            cases: 0,
            iterations: 0,
            partial_calls: 0,
        }
    }

    fn run(&mut self, c: &StringCase) {
        let size = c.size;
        let n = MAX_ELEMENTS;
        let source = to_bytes(&c.source, size);
        let destination = to_bytes(&c.destination, size);
        // The first element the instruction compares: the lowest forwards, the highest
        // backwards.
        let first = if c.backwards { (n - 1) * size } else { 0 };
        let flags = 0x202 | (c.flags_in & STATUS) | if c.backwards { DF } else { 0 };
        let native = native_string(
            c.scas,
            size,
            c.rep,
            [
                c.rax,
                c.count,
                source.as_ptr() as u64 + first as u64,
                destination.as_ptr() as u64 + first as u64,
            ],
            flags,
        );

        let (src_base, dst_base) = if c.source_in_mmio {
            (MMIO + 0x800, RAM + 0x3000)
        } else {
            (RAM + 0x800, MMIO + 0x3000)
        };
        let m = &mut self.machine;
        m.write_phys(src_base, &source);
        m.write_phys(dst_base, &destination);
        m.regs.rip = 0x1000;
        m.regs.rflags = flags;
        m.set_gpr(RAX, c.rax);
        m.set_gpr(RCX, c.count);
        let (rsi, rdi) = (src_base + first as u64, dst_base + first as u64);
        m.set_gpr(RSI, rsi);
        m.set_gpr(RDI, rdi);
        let mut bytes = Vec::new();
        match c.rep {
            Rep::None => {}
            Rep::E => bytes.push(0xF3),
            Rep::Ne => bytes.push(0xF2),
        }
        match size {
            2 => bytes.push(0x66),
            8 => bytes.push(0x48),
            _ => {}
        }
        let wide = u8::from(size != 1);
        bytes.push(if c.scas { 0xAE } else { 0xA6 } | wide);
        let exit_at = if c.scas { rdi } else { rsi };
        let ctx = MemoryAccessContext::new(&bytes, MemoryAccessType::Read, exit_at);
        let config = Config::default().with_max_rep_iterations(c.max_rep);
        // Re-run a partial instruction as the guest would, until it completes.
        let mut calls = 0;
        loop {
            let outcome = m.mmio_ctx_config(bytes.len() as u8, &ctx, config);
            calls += 1;
            match outcome.result {
                Ok(Completion::Complete) => break,
                Ok(Completion::Partial) => {
                    assert_eq!(m.regs.rip, 0x1000, "{c:x?}");
                    self.partial_calls += 1;
                }
                other => panic!("{other:?}: {c:x?}"),
            }
            assert!(calls <= MAX_ELEMENTS + 1, "no progress: {c:x?}");
        }
        assert_eq!(m.regs.rip, 0x1000 + bytes.len() as u64);
        let emulated = StringAfter {
            rcx: m.gpr(RCX),
            rsi: m.gpr(RSI).wrapping_sub(rsi),
            rdi: m.gpr(RDI).wrapping_sub(rdi),
            rflags: m.regs.rflags,
        };
        let base = |p: &[u8]| p.as_ptr() as u64 + first as u64;
        let expected = StringAfter {
            rcx: native.rcx,
            rsi: native.rsi.wrapping_sub(base(&source)),
            rdi: native.rdi.wrapping_sub(base(&destination)),
            rflags: native.rflags,
        };
        assert_eq!(emulated, expected, "{c:x?}");
        assert_eq!(m.gpr(RAX), c.rax);
        self.cases += 1;
        self.iterations += c.count - m.gpr(RCX);
    }
}

fn random_string_case(rng: &mut Rng) -> StringCase {
    let size = rng.pick(&[1, 2, 4, 8]);
    let scas = rng.bit();
    let rep = rng.pick(&[Rep::None, Rep::E, Rep::E, Rep::Ne, Rep::Ne]);
    // A small alphabet makes equal elements common; edges make the flags interesting.
    let alphabet: Vec<u64> = (0..rng.below(4) + 1).map(|_| rng.operand(size)).collect();
    let element = |rng: &mut Rng| rng.pick(&alphabet);
    let source: Vec<u64> = (0..MAX_ELEMENTS).map(|_| element(rng)).collect();
    let mut destination: Vec<u64> = (0..MAX_ELEMENTS).map(|_| element(rng)).collect();
    // REPE runs longer over mostly equal strings.
    if rep == Rep::E && !scas && rng.bit() {
        destination = source.clone();
        let k = rng.below(MAX_ELEMENTS);
        destination[k] = rng.operand(size);
    }
    StringCase {
        scas,
        size,
        rep,
        backwards: rng.below(3) == 0,
        source,
        destination,
        rax: (rng.next() & !mask(size)) | rng.pick(&alphabet),
        count: if rep == Rep::None {
            rng.next() & 0xFF
        } else {
            rng.below(MAX_ELEMENTS + 1) as u64
        },
        flags_in: rng.next(),
        source_in_mmio: rng.bit(),
        max_rep: if rng.below(4) == 0 {
            rng.below(4) as u32 + 1
        } else {
            4096
        },
    }
}

#[test]
fn string_compare_edge_values_match_the_host_cpu() {
    let mut oracle = Strings::new();
    let mut rng = Rng(0x5CA5_0000_0000_0001);
    for size in [1, 2, 4, 8] {
        for scas in [false, true] {
            for a in edges(size) {
                for b in edges(size) {
                    for rep in [Rep::None, Rep::E, Rep::Ne] {
                        // Element 0 is a (CMPS) and b is at rDI; then equal pairs.
                        let mut source = vec![a; MAX_ELEMENTS];
                        let mut destination = vec![a; MAX_ELEMENTS];
                        destination[0] = b;
                        source[1] = b;
                        destination[1] = b;
                        oracle.run(&StringCase {
                            scas,
                            size,
                            rep,
                            backwards: false,
                            source,
                            destination,
                            rax: (rng.next() & !mask(size)) | a,
                            count: 3,
                            flags_in: if rng.bit() { STATUS } else { 0 },
                            source_in_mmio: rng.bit(),
                            max_rep: 4096,
                        });
                    }
                }
            }
        }
    }
    println!(
        "string oracle: {} edge cases agree with the host CPU",
        oracle.cases
    );
}

#[test]
fn string_compare_random_cases_match_the_host_cpu() {
    let mut oracle = Strings::new();
    let mut rng = Rng(0x0C0F_FEE0_5CA5_F00D);
    for _ in 0..RANDOM_STRING_CASES {
        let case = random_string_case(&mut rng);
        oracle.run(&case);
    }
    println!(
        "string oracle: {} random cases ({} iterations, {} partial calls) agree with the host CPU",
        oracle.cases, oracle.iterations, oracle.partial_calls
    );
    assert_eq!(oracle.cases, RANDOM_STRING_CASES);
}
