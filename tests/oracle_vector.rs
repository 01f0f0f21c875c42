//! The host CPU as the oracle for the vector moves: each form runs natively on random data
//! (inline assembly on a local buffer, register 1 as the moved register) and through hvemu's
//! public API (an MMIO exit in 64-bit mode on the test support's model machine, with a random
//! register number, offset and page crossing), and the bytes are compared:
//!
//! * loads: the whole YMM register afterwards (native: set YMM1 to random bytes, run the load,
//!   read all of YMM1 back), so the upper-bit rules are checked too: legacy SSE keeps bits
//!   128–255, VEX.128 zeroes them;
//! * stores: the memory around the operand afterwards;
//! * MMX: the whole x87 state (FXSAVE before and after, with 0–8 values pushed first so that
//!   TOP is not always 0), which checks the MMX/x87 aliasing, the tag word, TOP and the
//!   register rotation;
//! * AVX-512 (when the host has AVX512F, BW and VL): EVEX loads and stores with random opmasks,
//!   merging and zeroing, registers 0–31, the whole ZMM register compared.
//!
//! Which parts ran is printed; the parts the host cannot run are skipped with a message on
//! standard error.
#![cfg(target_arch = "x86_64")]
#![allow(unsafe_code)]

mod support;

use core::arch::asm;

use hvemu::*;
use iced_x86::{Code, Encoder, Instruction, MemoryOperand, Register};
use support::*;

const RBX: usize = 3;
const MMIO: u64 = 0xFEE0_0000;
/// Random cases per form.
const CASES: usize = 400;

// ---- host features ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feature {
    Mmx,
    Sse2,
    Sse3,
    Sse41,
    Sse4a,
    Avx,
    Avx2,
}

fn has(feature: Feature) -> bool {
    match feature {
        Feature::Mmx => std::arch::is_x86_feature_detected!("mmx"),
        Feature::Sse2 => std::arch::is_x86_feature_detected!("sse2"),
        Feature::Sse3 => std::arch::is_x86_feature_detected!("sse3"),
        Feature::Sse41 => std::arch::is_x86_feature_detected!("sse4.1"),
        Feature::Sse4a => std::arch::is_x86_feature_detected!("sse4a"),
        Feature::Avx => std::arch::is_x86_feature_detected!("avx"),
        Feature::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
    }
}

fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// The host's XCR0 (0 without OSXSAVE).
fn host_xcr0() -> u64 {
    if !std::arch::is_x86_feature_detected!("xsave") {
        return 0;
    }
    // SAFETY: CPUID.1:ECX.OSXSAVE is set (std's detection checks it for xsave support), so
    // XGETBV with ECX = 0 is allowed at any privilege level.
    let (lo, hi): (u32, u32);
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack));
    }
    u64::from(lo) | u64::from(hi) << 32
}

// ---- random data ------------------------------------------------------------------------

/// xorshift64*: tiny, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        core::array::from_fn(|_| self.next() as u8)
    }

    /// An offset in the MMIO page for an operand of `size` bytes: aligned to `size` when the
    /// form requires it, otherwise anywhere, often across the page boundary.
    fn offset(&mut self, size: usize, aligned: bool) -> u64 {
        let size = size as u64;
        if aligned {
            return self.below(0x1000 / size) * size;
        }
        match self.below(3) {
            0 => 0x1000 - size + 1 + self.below(size.max(2) - 1),
            1 => self.below(0x1000 / size) * size,
            _ => self.below(0x1000),
        }
    }
}

// ---- the forms ----------------------------------------------------------------------------

/// `insn` natively with YMM1 = `init` and YMM2 = `src2` (as far as the host has them);
/// returns YMM1 afterwards (XMM1 and the rest of `init` without AVX).
type LoadFn = fn(&[u8; 32], &[u8; 32], *const u8) -> [u8; 32];
/// `insn` natively with YMM1 = `init`, storing to the pointer.
type StoreFn = fn(&[u8; 32], *mut u8);
/// `insn` natively after pushing `count` 80-bit values: FXSAVE before and after.
type MmxFn = fn(&[[u8; 16]; 8], usize, *mut u8, &mut Fx, &mut Fx);

#[derive(Clone, Copy)]
enum Native {
    Load(LoadFn),
    Store(StoreFn),
    Mmx(MmxFn, bool),
}

#[derive(Clone, Copy)]
struct Form {
    name: &'static str,
    code: Code,
    size: usize,
    aligned: bool,
    feature: Feature,
    native: Native,
}

#[repr(C, align(64))]
struct Fx([u8; 512]);

fn avx() -> bool {
    std::arch::is_x86_feature_detected!("avx")
}

macro_rules! native_load {
    ($insn:literal) => {
        |init: &[u8; 32], src2: &[u8; 32], mem: *const u8| -> [u8; 32] {
            let mut out = *init;
            if avx() {
                // SAFETY: reads `init`, `src2` and 8–32 bytes at `mem` (a live buffer of 128
                // bytes), writes `out`; only vector registers change, as declared.
                unsafe {
                    asm!(
                        "vmovdqu ymm1, ymmword ptr [{i}]",
                        "vmovdqu ymm2, ymmword ptr [{s}]",
                        $insn,
                        "vmovdqu ymmword ptr [{o}], ymm1",
                        "vzeroupper",
                        i = in(reg) init.as_ptr(),
                        s = in(reg) src2.as_ptr(),
                        m = in(reg) mem,
                        o = in(reg) out.as_mut_ptr(),
                        clobber_abi("C"),
                        options(nostack),
                    );
                }
            } else {
                // SAFETY: as above, with the SSE registers only.
                unsafe {
                    asm!(
                        "movdqu xmm1, xmmword ptr [{i}]",
                        "movdqu xmm2, xmmword ptr [{s}]",
                        $insn,
                        "movdqu xmmword ptr [{o}], xmm1",
                        i = in(reg) init.as_ptr(),
                        s = in(reg) src2.as_ptr(),
                        m = in(reg) mem,
                        o = in(reg) out.as_mut_ptr(),
                        clobber_abi("C"),
                        options(nostack),
                    );
                }
            }
            out
        }
    };
}

macro_rules! native_store {
    ($insn:literal) => {
        |init: &[u8; 32], mem: *mut u8| {
            if avx() {
                // SAFETY: reads `init`, writes 4–32 bytes at `mem` (a live buffer of 128 bytes).
                unsafe {
                    asm!(
                        "vmovdqu ymm1, ymmword ptr [{i}]",
                        $insn,
                        "vzeroupper",
                        i = in(reg) init.as_ptr(),
                        m = in(reg) mem,
                        clobber_abi("C"),
                        options(nostack),
                    );
                }
            } else {
                // SAFETY: as above.
                unsafe {
                    asm!(
                        "movdqu xmm1, xmmword ptr [{i}]",
                        $insn,
                        i = in(reg) init.as_ptr(),
                        m = in(reg) mem,
                        clobber_abi("C"),
                        options(nostack),
                    );
                }
            }
        }
    };
}

macro_rules! native_mmx {
    ($insn:literal) => {
        |values: &[[u8; 16]; 8], count: usize, mem: *mut u8, before: &mut Fx, after: &mut Fx| {
            // SAFETY: FNINIT, then `count` (0..=8) FLDs of 80-bit values from `values`, FXSAVE
            // into `before`, the instruction on 4–8 bytes at `mem`, FXSAVE into `after`, and
            // EMMS + FNINIT to leave the x87 state empty and default for Rust code. Both FXSAVE
            // areas are 512 bytes, 64-byte aligned.
            unsafe {
                asm!(
                    "fninit",
                    "test rcx, rcx",
                    "jz 3f",
                    "2:",
                    "fld tbyte ptr [rsi]",
                    "add rsi, 16",
                    "dec rcx",
                    "jnz 2b",
                    "3:",
                    "fxsave [{b}]",
                    $insn,
                    "fxsave [{a}]",
                    "emms",
                    "fninit",
                    inout("rcx") count => _,
                    inout("rsi") values.as_ptr() => _,
                    b = in(reg) before.0.as_mut_ptr(),
                    a = in(reg) after.0.as_mut_ptr(),
                    m = in(reg) mem,
                    clobber_abi("C"),
                    options(nostack),
                );
            }
        }
    };
}

macro_rules! load {
    ($code:ident, $size:expr, $aligned:expr, $feature:ident, $insn:literal) => {
        Form {
            name: $insn,
            code: Code::$code,
            size: $size,
            aligned: $aligned,
            feature: Feature::$feature,
            native: Native::Load(native_load!($insn)),
        }
    };
}

macro_rules! store {
    ($code:ident, $size:expr, $aligned:expr, $feature:ident, $insn:literal) => {
        Form {
            name: $insn,
            code: Code::$code,
            size: $size,
            aligned: $aligned,
            feature: Feature::$feature,
            native: Native::Store(native_store!($insn)),
        }
    };
}

macro_rules! mmx {
    ($code:ident, $size:expr, $store:expr, $insn:literal) => {
        Form {
            name: $insn,
            code: Code::$code,
            size: $size,
            aligned: false,
            feature: Feature::Mmx,
            native: Native::Mmx(native_mmx!($insn), $store),
        }
    };
}

#[rustfmt::skip]
fn forms() -> Vec<Form> {
    vec![
        // MMX (the register is MM1).
        mmx!(Movd_mm_rm32, 4, false, "movd mm1, dword ptr [{m}]"),
        mmx!(Movq_mm_rm64, 8, false, "movq mm1, qword ptr [{m}]"),
        mmx!(Movq_mm_mmm64, 8, false, "movq mm1, qword ptr [{m}]"),
        mmx!(Movd_rm32_mm, 4, true, "movd dword ptr [{m}], mm1"),
        mmx!(Movq_rm64_mm, 8, true, "movq qword ptr [{m}], mm1"),
        mmx!(Movq_mmm64_mm, 8, true, "movq qword ptr [{m}], mm1"),
        mmx!(Movntq_m64_mm, 8, true, "movntq qword ptr [{m}], mm1"),
        // Legacy SSE loads.
        load!(Movups_xmm_xmmm128, 16, false, Sse2, "movups xmm1, xmmword ptr [{m}]"),
        load!(Movupd_xmm_xmmm128, 16, false, Sse2, "movupd xmm1, xmmword ptr [{m}]"),
        load!(Movdqu_xmm_xmmm128, 16, false, Sse2, "movdqu xmm1, xmmword ptr [{m}]"),
        load!(Lddqu_xmm_m128, 16, false, Sse3, "lddqu xmm1, xmmword ptr [{m}]"),
        load!(Movaps_xmm_xmmm128, 16, true, Sse2, "movaps xmm1, xmmword ptr [{m}]"),
        load!(Movapd_xmm_xmmm128, 16, true, Sse2, "movapd xmm1, xmmword ptr [{m}]"),
        load!(Movdqa_xmm_xmmm128, 16, true, Sse2, "movdqa xmm1, xmmword ptr [{m}]"),
        load!(Movntdqa_xmm_m128, 16, true, Sse41, "movntdqa xmm1, xmmword ptr [{m}]"),
        load!(Movss_xmm_xmmm32, 4, false, Sse2, "movss xmm1, dword ptr [{m}]"),
        load!(Movsd_xmm_xmmm64, 8, false, Sse2, "movsd xmm1, qword ptr [{m}]"),
        load!(Movd_xmm_rm32, 4, false, Sse2, "movd xmm1, dword ptr [{m}]"),
        load!(Movq_xmm_rm64, 8, false, Sse2, "movq xmm1, qword ptr [{m}]"),
        load!(Movq_xmm_xmmm64, 8, false, Sse2, "movq xmm1, qword ptr [{m}]"),
        load!(Movlps_xmm_m64, 8, false, Sse2, "movlps xmm1, qword ptr [{m}]"),
        load!(Movlpd_xmm_m64, 8, false, Sse2, "movlpd xmm1, qword ptr [{m}]"),
        load!(Movhps_xmm_m64, 8, false, Sse2, "movhps xmm1, qword ptr [{m}]"),
        load!(Movhpd_xmm_m64, 8, false, Sse2, "movhpd xmm1, qword ptr [{m}]"),
        // Legacy SSE stores.
        store!(Movups_xmmm128_xmm, 16, false, Sse2, "movups xmmword ptr [{m}], xmm1"),
        store!(Movupd_xmmm128_xmm, 16, false, Sse2, "movupd xmmword ptr [{m}], xmm1"),
        store!(Movdqu_xmmm128_xmm, 16, false, Sse2, "movdqu xmmword ptr [{m}], xmm1"),
        store!(Movaps_xmmm128_xmm, 16, true, Sse2, "movaps xmmword ptr [{m}], xmm1"),
        store!(Movapd_xmmm128_xmm, 16, true, Sse2, "movapd xmmword ptr [{m}], xmm1"),
        store!(Movdqa_xmmm128_xmm, 16, true, Sse2, "movdqa xmmword ptr [{m}], xmm1"),
        store!(Movntps_m128_xmm, 16, true, Sse2, "movntps xmmword ptr [{m}], xmm1"),
        store!(Movntpd_m128_xmm, 16, true, Sse2, "movntpd xmmword ptr [{m}], xmm1"),
        store!(Movntdq_m128_xmm, 16, true, Sse2, "movntdq xmmword ptr [{m}], xmm1"),
        store!(Movss_xmmm32_xmm, 4, false, Sse2, "movss dword ptr [{m}], xmm1"),
        store!(Movsd_xmmm64_xmm, 8, false, Sse2, "movsd qword ptr [{m}], xmm1"),
        store!(Movd_rm32_xmm, 4, false, Sse2, "movd dword ptr [{m}], xmm1"),
        store!(Movq_rm64_xmm, 8, false, Sse2, "movq qword ptr [{m}], xmm1"),
        store!(Movq_xmmm64_xmm, 8, false, Sse2, "movq qword ptr [{m}], xmm1"),
        store!(Movlps_m64_xmm, 8, false, Sse2, "movlps qword ptr [{m}], xmm1"),
        store!(Movlpd_m64_xmm, 8, false, Sse2, "movlpd qword ptr [{m}], xmm1"),
        store!(Movhps_m64_xmm, 8, false, Sse2, "movhps qword ptr [{m}], xmm1"),
        store!(Movhpd_m64_xmm, 8, false, Sse2, "movhpd qword ptr [{m}], xmm1"),
        store!(Movntss_m32_xmm, 4, false, Sse4a, "movntss dword ptr [{m}], xmm1"),
        store!(Movntsd_m64_xmm, 8, false, Sse4a, "movntsd qword ptr [{m}], xmm1"),
        // VEX loads.
        load!(VEX_Vmovups_xmm_xmmm128, 16, false, Avx, "vmovups xmm1, xmmword ptr [{m}]"),
        load!(VEX_Vmovups_ymm_ymmm256, 32, false, Avx, "vmovups ymm1, ymmword ptr [{m}]"),
        load!(VEX_Vmovupd_xmm_xmmm128, 16, false, Avx, "vmovupd xmm1, xmmword ptr [{m}]"),
        load!(VEX_Vmovupd_ymm_ymmm256, 32, false, Avx, "vmovupd ymm1, ymmword ptr [{m}]"),
        load!(VEX_Vmovdqu_xmm_xmmm128, 16, false, Avx, "vmovdqu xmm1, xmmword ptr [{m}]"),
        load!(VEX_Vmovdqu_ymm_ymmm256, 32, false, Avx, "vmovdqu ymm1, ymmword ptr [{m}]"),
        load!(VEX_Vlddqu_xmm_m128, 16, false, Avx, "vlddqu xmm1, xmmword ptr [{m}]"),
        load!(VEX_Vlddqu_ymm_m256, 32, false, Avx, "vlddqu ymm1, ymmword ptr [{m}]"),
        load!(VEX_Vmovaps_xmm_xmmm128, 16, true, Avx, "vmovaps xmm1, xmmword ptr [{m}]"),
        load!(VEX_Vmovaps_ymm_ymmm256, 32, true, Avx, "vmovaps ymm1, ymmword ptr [{m}]"),
        load!(VEX_Vmovapd_xmm_xmmm128, 16, true, Avx, "vmovapd xmm1, xmmword ptr [{m}]"),
        load!(VEX_Vmovapd_ymm_ymmm256, 32, true, Avx, "vmovapd ymm1, ymmword ptr [{m}]"),
        load!(VEX_Vmovdqa_xmm_xmmm128, 16, true, Avx, "vmovdqa xmm1, xmmword ptr [{m}]"),
        load!(VEX_Vmovdqa_ymm_ymmm256, 32, true, Avx, "vmovdqa ymm1, ymmword ptr [{m}]"),
        load!(VEX_Vmovntdqa_xmm_m128, 16, true, Avx, "vmovntdqa xmm1, xmmword ptr [{m}]"),
        load!(VEX_Vmovntdqa_ymm_m256, 32, true, Avx2, "vmovntdqa ymm1, ymmword ptr [{m}]"),
        load!(VEX_Vmovss_xmm_m32, 4, false, Avx, "vmovss xmm1, dword ptr [{m}]"),
        load!(VEX_Vmovsd_xmm_m64, 8, false, Avx, "vmovsd xmm1, qword ptr [{m}]"),
        load!(VEX_Vmovd_xmm_rm32, 4, false, Avx, "vmovd xmm1, dword ptr [{m}]"),
        load!(VEX_Vmovq_xmm_rm64, 8, false, Avx, "vmovq xmm1, qword ptr [{m}]"),
        load!(VEX_Vmovq_xmm_xmmm64, 8, false, Avx, "vmovq xmm1, qword ptr [{m}]"),
        load!(VEX_Vmovlps_xmm_xmm_m64, 8, false, Avx, "vmovlps xmm1, xmm2, qword ptr [{m}]"),
        load!(VEX_Vmovlpd_xmm_xmm_m64, 8, false, Avx, "vmovlpd xmm1, xmm2, qword ptr [{m}]"),
        load!(VEX_Vmovhps_xmm_xmm_m64, 8, false, Avx, "vmovhps xmm1, xmm2, qword ptr [{m}]"),
        load!(VEX_Vmovhpd_xmm_xmm_m64, 8, false, Avx, "vmovhpd xmm1, xmm2, qword ptr [{m}]"),
        // VEX stores.
        store!(VEX_Vmovups_xmmm128_xmm, 16, false, Avx, "vmovups xmmword ptr [{m}], xmm1"),
        store!(VEX_Vmovups_ymmm256_ymm, 32, false, Avx, "vmovups ymmword ptr [{m}], ymm1"),
        store!(VEX_Vmovupd_xmmm128_xmm, 16, false, Avx, "vmovupd xmmword ptr [{m}], xmm1"),
        store!(VEX_Vmovupd_ymmm256_ymm, 32, false, Avx, "vmovupd ymmword ptr [{m}], ymm1"),
        store!(VEX_Vmovdqu_xmmm128_xmm, 16, false, Avx, "vmovdqu xmmword ptr [{m}], xmm1"),
        store!(VEX_Vmovdqu_ymmm256_ymm, 32, false, Avx, "vmovdqu ymmword ptr [{m}], ymm1"),
        store!(VEX_Vmovaps_xmmm128_xmm, 16, true, Avx, "vmovaps xmmword ptr [{m}], xmm1"),
        store!(VEX_Vmovaps_ymmm256_ymm, 32, true, Avx, "vmovaps ymmword ptr [{m}], ymm1"),
        store!(VEX_Vmovapd_xmmm128_xmm, 16, true, Avx, "vmovapd xmmword ptr [{m}], xmm1"),
        store!(VEX_Vmovapd_ymmm256_ymm, 32, true, Avx, "vmovapd ymmword ptr [{m}], ymm1"),
        store!(VEX_Vmovdqa_xmmm128_xmm, 16, true, Avx, "vmovdqa xmmword ptr [{m}], xmm1"),
        store!(VEX_Vmovdqa_ymmm256_ymm, 32, true, Avx, "vmovdqa ymmword ptr [{m}], ymm1"),
        store!(VEX_Vmovntps_m128_xmm, 16, true, Avx, "vmovntps xmmword ptr [{m}], xmm1"),
        store!(VEX_Vmovntps_m256_ymm, 32, true, Avx, "vmovntps ymmword ptr [{m}], ymm1"),
        store!(VEX_Vmovntpd_m128_xmm, 16, true, Avx, "vmovntpd xmmword ptr [{m}], xmm1"),
        store!(VEX_Vmovntpd_m256_ymm, 32, true, Avx, "vmovntpd ymmword ptr [{m}], ymm1"),
        store!(VEX_Vmovntdq_m128_xmm, 16, true, Avx, "vmovntdq xmmword ptr [{m}], xmm1"),
        store!(VEX_Vmovntdq_m256_ymm, 32, true, Avx, "vmovntdq ymmword ptr [{m}], ymm1"),
        store!(VEX_Vmovss_m32_xmm, 4, false, Avx, "vmovss dword ptr [{m}], xmm1"),
        store!(VEX_Vmovsd_m64_xmm, 8, false, Avx, "vmovsd qword ptr [{m}], xmm1"),
        store!(VEX_Vmovd_rm32_xmm, 4, false, Avx, "vmovd dword ptr [{m}], xmm1"),
        store!(VEX_Vmovq_rm64_xmm, 8, false, Avx, "vmovq qword ptr [{m}], xmm1"),
        store!(VEX_Vmovq_xmmm64_xmm, 8, false, Avx, "vmovq qword ptr [{m}], xmm1"),
        store!(VEX_Vmovlps_m64_xmm, 8, false, Avx, "vmovlps qword ptr [{m}], xmm1"),
        store!(VEX_Vmovlpd_m64_xmm, 8, false, Avx, "vmovlpd qword ptr [{m}], xmm1"),
        store!(VEX_Vmovhps_m64_xmm, 8, false, Avx, "vmovhps qword ptr [{m}], xmm1"),
        store!(VEX_Vmovhpd_m64_xmm, 8, false, Avx, "vmovhpd qword ptr [{m}], xmm1"),
    ]
}

// ---- the emulated side --------------------------------------------------------------------

/// Encodes `code` with register `reg` (and `src2` for the three-operand loads) and the memory
/// operand `[rbx + displ]`.
fn encode(code: Code, store: bool, reg: Register, src2: Option<Register>, displ: i64) -> Vec<u8> {
    let mem = MemoryOperand::with_base_displ(Register::RBX, displ);
    let instr = match (store, src2) {
        (true, _) => Instruction::with2(code, mem, reg),
        (false, Some(r2)) => Instruction::with3(code, reg, r2, mem),
        (false, None) => Instruction::with2(code, reg, mem),
    }
    .expect("valid operands");
    let mut encoder = Encoder::new(64);
    encoder.encode(&instr, 0x1000).expect("encodable");
    encoder.take_buffer()
}

/// A machine with RBX + `displ` = `addr` holding `mem` (64 bytes), and the host's XCR0.
fn machine(addr: u64, displ: i64, mem: &[u8; 64], xcr0: u64) -> Machine {
    let mut m = Machine::long();
    m.regs.rip = 0x1000;
    m.regs.xcr0 = xcr0;
    m.set_gpr(RBX, addr.wrapping_sub(displ as u64));
    m.write_phys(addr, mem);
    m
}

fn emulate(m: &mut Machine, bytes: &[u8], addr: u64, write: bool) {
    let access = if write {
        MemoryAccessType::Write
    } else {
        MemoryAccessType::Read
    };
    let ctx = MemoryAccessContext::new(bytes, access, addr).with_gva(addr);
    let outcome = m.mmio_ctx(bytes.len() as u8, &ctx);
    assert_eq!(outcome.result, Ok(Completion::Complete), "{bytes:02x?}");
    assert_eq!(m.regs.rip, 0x1000 + bytes.len() as u64);
}

fn random_displ(rng: &mut Rng) -> i64 {
    match rng.below(3) {
        0 => 0,
        1 => rng.below(256) as i64 - 128,
        _ => rng.below(0x1_0000) as i64 - 0x8000,
    }
}

/// 128 bytes, 64-byte aligned, for the native operand.
#[repr(C, align(64))]
struct Buffer([u8; 128]);

struct Tally {
    cases: usize,
    forms: usize,
}

fn run_vector_form(form: &Form, rng: &mut Rng, xcr0: u64, tally: &mut Tally) {
    let store = matches!(form.native, Native::Store(_));
    let three = matches!(
        form.code,
        Code::VEX_Vmovlps_xmm_xmm_m64
            | Code::VEX_Vmovlpd_xmm_xmm_m64
            | Code::VEX_Vmovhps_xmm_xmm_m64
            | Code::VEX_Vmovhpd_xmm_xmm_m64
    );
    let ymm = form.size == 32;
    for _ in 0..CASES {
        let init: [u8; 32] = rng.bytes();
        let upper: [u8; 32] = rng.bytes();
        let src2: [u8; 32] = rng.bytes();
        let data: [u8; 64] = rng.bytes();
        let offset = rng.offset(form.size, form.aligned);
        let addr = MMIO + offset;
        let displ = random_displ(rng);
        let n = rng.below(16) as usize;
        let n2 = (n + 1 + rng.below(15) as usize) % 16;
        let base = if ymm { Register::YMM0 } else { Register::XMM0 };
        let reg = Register::try_from(base as usize + n).expect("register");
        let reg2 = Register::try_from(Register::XMM0 as usize + n2).expect("register");
        let bytes = encode(form.code, store, reg, three.then_some(reg2), displ);

        // Natively, on a buffer at the same offset modulo 64.
        let mut buf = Buffer([0; 128]);
        let at = (offset % 64) as usize;
        buf.0[at..at + 64].copy_from_slice(&data);
        let ptr = buf.0[at..].as_mut_ptr();

        let mut m = machine(addr, displ, &data, xcr0);
        let mut full = [0u8; 64];
        full[..32].copy_from_slice(&init);
        full[32..].copy_from_slice(&upper);
        m.regs.set_vector(n, &full);
        let mut full2 = [0u8; 64];
        full2[..32].copy_from_slice(&src2);
        m.regs.set_vector(n2, &full2);

        match form.native {
            Native::Load(f) => {
                let native = f(&init, &src2, ptr);
                emulate(&mut m, &bytes, addr, false);
                let emulated = m.regs.vector(n);
                assert_eq!(
                    emulated[..32],
                    native[..],
                    "{}: offset {offset:#x} {bytes:02x?}",
                    form.name
                );
                // The host has no state beyond what XCR0 enables; hvemu leaves it alone.
                if xcr0 & (1 << 6) == 0 {
                    assert_eq!(emulated[32..], upper[..], "{}: bits 256+", form.name);
                }
                assert_eq!(m.read_phys(addr, 64), data, "{}: a load wrote", form.name);
            }
            Native::Store(f) => {
                f(&init, ptr);
                emulate(&mut m, &bytes, addr, true);
                assert_eq!(
                    m.read_phys(addr, 64),
                    buf.0[at..at + 64].to_vec(),
                    "{}: offset {offset:#x} {bytes:02x?}",
                    form.name
                );
                let written: usize = m
                    .memory_calls()
                    .iter()
                    .filter(|c| c.1)
                    .map(|c| c.2.len())
                    .sum();
                assert_eq!(written, form.size, "{}", form.name);
                assert_eq!(m.regs.vector(n), full, "{}: a store changed", form.name);
            }
            Native::Mmx(..) => unreachable!(),
        }
        tally.cases += 1;
    }
    tally.forms += 1;
}

fn run_mmx_form(form: &Form, rng: &mut Rng, tally: &mut Tally) {
    let Native::Mmx(f, store) = form.native else {
        unreachable!()
    };
    for _ in 0..CASES {
        let count = rng.below(9) as usize;
        let values: [[u8; 16]; 8] = core::array::from_fn(|_| {
            let mut v = [0u8; 16];
            v[..10].copy_from_slice(&rng.bytes::<10>());
            v
        });
        let data: [u8; 64] = rng.bytes();
        let offset = rng.offset(form.size, false);
        let addr = MMIO + offset;
        let displ = random_displ(rng);
        let bytes = encode(form.code, store, Register::MM1, None, displ);

        let mut buf = Buffer([0; 128]);
        let at = (offset % 64) as usize;
        buf.0[at..at + 64].copy_from_slice(&data);
        let mut before = Fx([0; 512]);
        let mut after = Fx([0; 512]);
        f(
            &values,
            count,
            buf.0[at..].as_mut_ptr(),
            &mut before,
            &mut after,
        );

        let slot = |fx: &Fx, i: usize| {
            u128::from_le_bytes(fx.0[32 + 16 * i..48 + 16 * i].try_into().expect("16 bytes"))
        };
        let header = |fx: &Fx| u128::from_le_bytes(fx.0[..16].try_into().expect("16 bytes"));
        let mut m = machine(addr, displ, &data, 0x3);
        m.regs.fp_control_status = header(&before);
        m.regs.fp_mmx = core::array::from_fn(|i| slot(&before, i));
        emulate(&mut m, &bytes, addr, store);
        let expected: [u128; 8] = core::array::from_fn(|i| slot(&after, i));
        assert_eq!(
            m.regs.fp_mmx, expected,
            "{}: x87 registers after {count} pushes",
            form.name
        );
        assert_eq!(
            m.regs.fp_control_status,
            header(&after),
            "{}: FCW/FSW/FTW/FOP/FIP after {count} pushes",
            form.name
        );
        assert_eq!(
            m.read_phys(addr, 64),
            buf.0[at..at + 64].to_vec(),
            "{}",
            form.name
        );
        tally.cases += 1;
    }
    tally.forms += 1;
}

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn mmx_sse_and_avx_moves_match_the_host() {
    let xcr0 = host_xcr0();
    let mut rng = Rng(0x5EED_7EC7_0000_0001);
    let mut tally = Tally { cases: 0, forms: 0 };
    let mut skipped = Vec::new();
    for form in forms() {
        if !has(form.feature) || (form.feature == Feature::Avx2 && !has(Feature::Avx)) {
            skipped.push(form.name);
            continue;
        }
        match form.native {
            Native::Mmx(..) => run_mmx_form(&form, &mut rng, &mut tally),
            _ => run_vector_form(&form, &mut rng, xcr0, &mut tally),
        }
    }
    println!(
        "oracle_vector: {} forms, {} cases against the host (XCR0 {xcr0:#x}; AVX {}, AVX2 {}, SSE4a {})",
        tally.forms,
        tally.cases,
        has(Feature::Avx),
        has(Feature::Avx2),
        has(Feature::Sse4a)
    );
    if !skipped.is_empty() {
        eprintln!(
            "oracle_vector: SKIPPED {} forms the host lacks: {skipped:?}",
            skipped.len()
        );
    }
    assert!(tally.forms > 0);
}

// ---- AVX-512 ------------------------------------------------------------------------------

/// `insn` natively with ZMM1 = `init`, K1 = `mask` and the operand at `mem`; returns ZMM1.
type EvexFn = unsafe fn(&[u8; 64], u64, *mut u8) -> [u8; 64];

macro_rules! native_evex {
    ($insn:literal) => {{
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn f(init: &[u8; 64], mask: u64, mem: *mut u8) -> [u8; 64] {
            let mut out = [0u8; 64];
            // SAFETY: reads `init` and `mask`, reads or writes at most 64 bytes at `mem` (a
            // live 128-byte buffer, aligned as the form needs), writes `out`.
            unsafe {
                asm!(
                    "vmovdqu64 zmm1, zmmword ptr [{i}]",
                    "kmovq k1, {k}",
                    $insn,
                    "vmovdqu64 zmmword ptr [{o}], zmm1",
                    "vzeroupper",
                    i = in(reg) init.as_ptr(),
                    k = in(reg) mask,
                    m = in(reg) mem,
                    o = in(reg) out.as_mut_ptr(),
                    clobber_abi("C"),
                    options(nostack),
                );
            }
            out
        }
        f as EvexFn
    }};
}

struct EvexForm {
    name: &'static str,
    code: Code,
    store: bool,
    zeroing: bool,
    size: usize,
    aligned: bool,
    native: EvexFn,
}

macro_rules! evex {
    ($code:ident, $store:expr, $zeroing:expr, $size:expr, $aligned:expr, $insn:literal) => {
        EvexForm {
            name: $insn,
            code: Code::$code,
            store: $store,
            zeroing: $zeroing,
            size: $size,
            aligned: $aligned,
            native: native_evex!($insn),
        }
    };
}

#[rustfmt::skip]
fn evex_forms() -> Vec<EvexForm> {
    vec![
        evex!(EVEX_Vmovdqu8_zmm_k1z_zmmm512, false, false, 64, false, "vmovdqu8 zmm1 {{k1}}, zmmword ptr [{m}]"),
        evex!(EVEX_Vmovdqu8_zmm_k1z_zmmm512, false, true, 64, false, "vmovdqu8 zmm1 {{k1}} {{z}}, zmmword ptr [{m}]"),
        evex!(EVEX_Vmovdqu8_zmmm512_k1z_zmm, true, false, 64, false, "vmovdqu8 zmmword ptr [{m}] {{k1}}, zmm1"),
        evex!(EVEX_Vmovdqu16_ymm_k1z_ymmm256, false, false, 32, false, "vmovdqu16 ymm1 {{k1}}, ymmword ptr [{m}]"),
        evex!(EVEX_Vmovdqu16_ymmm256_k1z_ymm, true, false, 32, false, "vmovdqu16 ymmword ptr [{m}] {{k1}}, ymm1"),
        evex!(EVEX_Vmovdqu32_zmm_k1z_zmmm512, false, false, 64, false, "vmovdqu32 zmm1 {{k1}}, zmmword ptr [{m}]"),
        evex!(EVEX_Vmovdqu32_xmm_k1z_xmmm128, false, true, 16, false, "vmovdqu32 xmm1 {{k1}} {{z}}, xmmword ptr [{m}]"),
        evex!(EVEX_Vmovdqu32_zmmm512_k1z_zmm, true, false, 64, false, "vmovdqu32 zmmword ptr [{m}] {{k1}}, zmm1"),
        evex!(EVEX_Vmovdqu64_zmm_k1z_zmmm512, false, false, 64, false, "vmovdqu64 zmm1 {{k1}}, zmmword ptr [{m}]"),
        evex!(EVEX_Vmovdqu64_xmmm128_k1z_xmm, true, false, 16, false, "vmovdqu64 xmmword ptr [{m}] {{k1}}, xmm1"),
        evex!(EVEX_Vmovups_ymm_k1z_ymmm256, false, false, 32, false, "vmovups ymm1 {{k1}}, ymmword ptr [{m}]"),
        evex!(EVEX_Vmovups_zmmm512_k1z_zmm, true, false, 64, false, "vmovups zmmword ptr [{m}] {{k1}}, zmm1"),
        evex!(EVEX_Vmovapd_zmm_k1z_zmmm512, false, true, 64, true, "vmovapd zmm1 {{k1}} {{z}}, zmmword ptr [{m}]"),
        evex!(EVEX_Vmovdqa32_ymmm256_k1z_ymm, true, false, 32, true, "vmovdqa32 ymmword ptr [{m}] {{k1}}, ymm1"),
        evex!(EVEX_Vmovdqa64_xmm_k1z_xmmm128, false, false, 16, true, "vmovdqa64 xmm1 {{k1}}, xmmword ptr [{m}]"),
        evex!(EVEX_Vmovss_xmm_k1z_m32, false, false, 4, false, "vmovss xmm1 {{k1}}, dword ptr [{m}]"),
        evex!(EVEX_Vmovsd_m64_k1_xmm, true, false, 8, false, "vmovsd qword ptr [{m}] {{k1}}, xmm1"),
        evex!(EVEX_Vmovntdq_m512_zmm, true, false, 64, true, "vmovntdq zmmword ptr [{m}], zmm1"),
        evex!(EVEX_Vmovntdqa_zmm_m512, false, false, 64, true, "vmovntdqa zmm1, zmmword ptr [{m}]"),
    ]
}

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn avx512_masked_moves_match_the_host() {
    if !has_avx512() {
        eprintln!(
            "oracle_vector: SKIPPED the AVX-512 oracle: this host lacks AVX512F/BW/VL \
             (EVEX forms are covered by the model tests in tests/vector.rs only)"
        );
        return;
    }
    let xcr0 = host_xcr0();
    let mut rng = Rng(0x5EED_7EC7_0000_0512);
    let mut cases = 0;
    let forms = evex_forms();
    for form in &forms {
        let masked = !matches!(
            form.code,
            Code::EVEX_Vmovntdq_m512_zmm | Code::EVEX_Vmovntdqa_zmm_m512
        );
        for _ in 0..CASES {
            let init: [u8; 64] = rng.bytes();
            let data: [u8; 64] = rng.bytes();
            let mask = if masked {
                match rng.below(4) {
                    0 => u64::MAX,
                    1 => 0,
                    _ => rng.next(),
                }
            } else {
                0
            };
            let offset = rng.offset(form.size, form.aligned);
            let addr = MMIO + offset;
            let displ = random_displ(&mut rng);
            let n = rng.below(32) as usize;
            let base = match form.size {
                64 => Register::ZMM0,
                32 => Register::YMM0,
                _ => Register::XMM0,
            };
            let reg = Register::try_from(base as usize + n).expect("register");
            let mem = MemoryOperand::with_base_displ(Register::RBX, displ);
            let mut instr = if form.store {
                Instruction::with2(form.code, mem, reg)
            } else {
                Instruction::with2(form.code, reg, mem)
            }
            .expect("operands");
            if masked {
                instr.set_op_mask(Register::K1);
                instr.set_zeroing_masking(form.zeroing);
            }
            let mut encoder = Encoder::new(64);
            encoder.encode(&instr, 0x1000).expect("encodable");
            let bytes = encoder.take_buffer();

            let mut buf = Buffer([0; 128]);
            let at = (offset % 64) as usize;
            buf.0[at..at + 64].copy_from_slice(&data);
            // SAFETY: the host has AVX512F, BW and VL (checked above).
            let native = unsafe { (form.native)(&init, mask, buf.0[at..].as_mut_ptr()) };

            let mut m = machine(addr, displ, &data, xcr0);
            m.regs.set_vector(n, &init);
            m.regs.opmask[1] = mask;
            emulate(&mut m, &bytes, addr, form.store);
            assert_eq!(
                m.regs.vector(n),
                native,
                "{}: mask {mask:#x} {bytes:02x?}",
                form.name
            );
            assert_eq!(
                m.read_phys(addr, 64),
                buf.0[at..at + 64].to_vec(),
                "{}: mask {mask:#x}",
                form.name
            );
            cases += 1;
        }
    }
    println!(
        "oracle_vector: AVX-512: {} forms, {cases} cases against the host",
        forms.len()
    );
}
