//! Vector moves between a register and memory: MMX, SSE/SSE2/SSE3/SSE4.1/SSE4a, AVX/AVX2 (VEX)
//! and AVX-512 (EVEX), both directions. No flags are read or written.
//!
//! | forms | manual |
//! |---|---|
//! | MOVUPS, MOVUPD, MOVAPS, MOVAPD, MOVDQU, MOVDQA, LDDQU (and V… VEX/EVEX forms, VMOVDQU8/16/32/64, VMOVDQA32/64) | SDM Vol. 2B pages of the same names |
//! | MOVNTPS, MOVNTPD, MOVNTDQ, MOVNTDQA, MOVNTQ (and VEX/EVEX forms); AMD's MOVNTSS, MOVNTSD | SDM Vol. 2B; AMD APM Vol. 4 |
//! | MOVD, MOVQ (0F 6E/7E, 66 0F 6E/7E, F3 0F 7E, 66 0F D6, 0F 6F/7F MMX), VMOVW | SDM Vol. 2B "MOVD/MOVQ", "MOVQ"; AVX512-FP16 |
//! | MOVSS, MOVSD (the SSE2 one: dispatched on `Code`, never on the mnemonic it shares with the string MOVSD), VMOVSH | SDM Vol. 2B |
//! | MOVLPS, MOVHPS, MOVLPD, MOVHPD (and the three-operand VEX/EVEX loads) | SDM Vol. 2B |
//!
//! Only forms with a memory operand can cause an exit; the register-to-register encodings of
//! the same codes are reported as not the exiting instruction.
//!
//! # Registers
//!
//! * **Loads into XMM** follow SDM Vol. 1 §14.1.3 and the instruction pages. Legacy SSE writes
//!   only bits 0–127 and leaves the rest of the YMM/ZMM register unchanged, so hvemu writes the
//!   platform's XMMn: MOVSS, MOVSD, MOVD and MOVQ zero bits up to 127, MOVLPS/MOVHPS/MOVLPD/MOVHPD
//!   keep the other half, the 16-byte loads fill all of it. A VEX load zeroes every bit above
//!   its destination width up to the widest register the processor has: hvemu writes YMMn with
//!   the zeroes, or ZMMn when XCR0 enables ZMM_Hi256 (AVX-512 state). An EVEX load writes
//!   ZMMn, whatever its vector length. (See the register names' module docs for these views.)
//! * **Stores** read the view of the source register's width (XMM/YMM/ZMM); MOVHPS/MOVHPD
//!   store bits 64–127.
//! * **XCR0** is read for every VEX and EVEX form, to know whether ZMM state exists; a VEX form
//!   without AVX state enabled (XCR0 bits 1–2), or an EVEX form without all AVX-512 state
//!   (bits 1, 2, 5–7), raises #UD, as does any VEX or EVEX form in real or virtual-8086 mode.
//!   The other checks the processor makes before any memory access (CR0.EM and CR0.TS,
//!   CR4.OSFXSR and CR4.OSXSAVE, a pending x87 exception for MMX) passed when it exited on the
//!   access, and hvemu does not repeat them.
//! * **MMX** (SDM Vol. 1 §9.5): an MMX register is the low 64 bits of its x87 register. Every
//!   MMX instruction sets the x87 TOP to 0 and marks all eight registers valid, and a write to
//!   MMn sets bits 64–79 of the x87 register to ones. hvemu models this through the platform's
//!   registers: it reads FP_CONTROL_STATUS and writes it back with FSW.TOP = 0 and the
//!   abridged tag byte 0xFF when either changes. FP_MMX0..7 are in ST order (relative to TOP),
//!   as FXSAVE and the platform hold them, so when TOP was not 0 hvemu reads all eight and
//!   writes them back rotated into the order TOP = 0 gives (MMn = physical register n) before
//!   the move. A written register's bits 80–127 (reserved) are zero. FOP, FIP and FDP are not
//!   changed.
//!
//! # Memory
//!
//! * Alignment (the instruction pages and the exception-class tables of SDM Vol. 2A ch. 2):
//!   MOVAPS, MOVAPD, MOVDQA, MOVNTPS, MOVNTPD, MOVNTDQ, MOVNTDQA and their VEX/EVEX forms
//!   (VMOVDQA32/64 included) raise #GP(0) unless the linear address is a multiple of the
//!   operand size (16, 32 or 64 bytes), before any translation or memory call, masked or not.
//!   #AC applies (CPL 3, CR0.AM, RFLAGS.AC) to the 2-, 4- and 8-byte operands only, as the
//!   exception tables say; a 16-, 32- or 64-byte operand never raises it.
//! * An unmasked access is one operand: segmentation, canonical form and translation of every
//!   page are checked first, then one `memory` call per page (a 32- or 64-byte operand crossing
//!   a page is two calls).
//! * **Opmask** (EVEX `{k}`; SDM Vol. 1 ch. 15, masking and memory fault suppression): the selected
//!   elements are those whose mask bit is set among the first VL/element-size bits of the
//!   opmask register. Masked-out elements are not accessed and cannot fault: each maximal run
//!   of consecutive selected elements is checked (segmentation, canonical form) and translated
//!   on its own, so a page holding only masked-out elements is never translated, and then each
//!   run is one `memory` call (two if it crosses a page). A device therefore sees exactly the
//!   bytes the instruction writes (or reads), as one access per run, never a write of a
//!   masked-out byte. All runs are checked and translated before the first call. A mask of all
//!   zeroes makes no memory call at all (only the alignment check of the aligned forms
//!   remains). A masked load merges (`{k}`: masked-out elements keep the destination's) or
//!   zeroes (`{k}{z}`), and zeroes bits VL and up in either case. iced-x86 rejects zeroing on a
//!   store, a mask on the forms that take none and EVEX broadcast on a move (the processor
//!   raises #UD), so such bytes are reported as undecodable.

use core::num::NonZeroUsize;

use iced_x86::{Code, Instruction, Register};

use super::unsupported;
use crate::access::{Intent, Privilege, Span};
use crate::callbacks::{AccessDirection, EmulatorCallbacks};
use crate::error::{EmulationError, Exception};
use crate::operand::MemRef;
use crate::registers::{RegisterName, RegisterValue, Segment};
use crate::state::{Cpu, Mode, Res, WideNames};

/// Which way the move goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Memory to register.
    Load,
    /// Register to memory.
    Store,
}

impl Dir {
    /// What the move does to its memory operand, for the checks and the translation.
    fn intent(self) -> Intent {
        match self {
            Dir::Load => Intent::Read,
            Dir::Store => Intent::Write,
        }
    }

    /// The direction of its `memory` calls.
    fn direction(self) -> AccessDirection {
        match self {
            Dir::Load => AccessDirection::Read,
            Dir::Store => AccessDirection::Write,
        }
    }
}

/// Which register file the register operand is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum File {
    /// MM0–MM7 (the x87 registers' low 64 bits).
    Mmx,
    /// XMM/YMM/ZMM 0–31.
    Vector,
}

/// How the instruction is encoded, which decides what happens to the bits above the
/// destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Enc {
    /// No VEX/EVEX prefix: MMX and legacy SSE.
    Legacy,
    /// VEX (AVX, AVX2).
    Vex,
    /// EVEX (AVX-512).
    Evex,
}

/// What a load does to the destination bytes below its width that the memory data does not
/// fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rest {
    /// Zeroed (MOVSS, MOVD, MOVQ …; the full-width loads have no such bytes).
    Zero,
    /// Kept (legacy MOVLPS, MOVHPS, MOVLPD, MOVHPD).
    Keep,
    /// Copied from the second source register's low 128 bits (VEX/EVEX VMOVLPS xmm1, xmm2, m64
    /// and its kin).
    Src2,
}

/// One vector move form: everything hvemu needs to know about a `Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VecMove {
    pub dir: Dir,
    pub file: File,
    pub enc: Enc,
    /// Bytes of the memory operand.
    pub size: u8,
    /// Where in the register the moved bytes are (8 for MOVHPS/MOVHPD, else 0).
    pub at: u8,
    /// For loads: what happens to the other bytes below the destination width.
    pub rest: Rest,
    /// #GP(0) unless the operand is aligned to its size.
    pub aligned: bool,
    /// The element size an opmask selects (EVEX forms that take `{k}`); 0 when the form takes
    /// none.
    pub element: u8,
}

impl VecMove {
    const fn new(dir: Dir, enc: Enc, size: u8) -> VecMove {
        VecMove {
            dir,
            file: File::Vector,
            enc,
            size,
            at: 0,
            rest: Rest::Zero,
            aligned: false,
            element: 0,
        }
    }
    const fn load(enc: Enc, size: u8) -> VecMove {
        VecMove::new(Dir::Load, enc, size)
    }
    const fn store(enc: Enc, size: u8) -> VecMove {
        VecMove::new(Dir::Store, enc, size)
    }
    const fn mmx(mut self) -> VecMove {
        self.file = File::Mmx;
        self
    }
    const fn aligned(mut self) -> VecMove {
        self.aligned = true;
        self
    }
    const fn high(mut self) -> VecMove {
        self.at = 8;
        self
    }
    const fn rest(mut self, rest: Rest) -> VecMove {
        self.rest = rest;
        self
    }
    const fn masked(mut self, element: u8) -> VecMove {
        self.element = element;
        self
    }
}

/// The form of a vector move hvemu emulates, by its `Code`.
#[rustfmt::skip]
#[inline]
pub(crate) fn form(code: Code) -> Option<VecMove> {
    use Enc::{Evex, Legacy, Vex};
    use VecMove as V;
    Some(match code {
        // ---- MMX ----
        Code::Movd_mm_rm32 => V::load(Legacy, 4).mmx(),
        Code::Movq_mm_rm64 | Code::Movq_mm_mmm64 => V::load(Legacy, 8).mmx(),
        Code::Movd_rm32_mm => V::store(Legacy, 4).mmx(),
        Code::Movq_rm64_mm | Code::Movq_mmm64_mm | Code::Movntq_m64_mm => V::store(Legacy, 8).mmx(),

        // ---- legacy SSE ----
        Code::Movups_xmm_xmmm128 | Code::Movupd_xmm_xmmm128 | Code::Movdqu_xmm_xmmm128
        | Code::Lddqu_xmm_m128 => V::load(Legacy, 16),
        Code::Movaps_xmm_xmmm128 | Code::Movapd_xmm_xmmm128 | Code::Movdqa_xmm_xmmm128
        | Code::Movntdqa_xmm_m128 => V::load(Legacy, 16).aligned(),
        Code::Movss_xmm_xmmm32 | Code::Movd_xmm_rm32 => V::load(Legacy, 4),
        Code::Movsd_xmm_xmmm64 | Code::Movq_xmm_rm64 | Code::Movq_xmm_xmmm64 => V::load(Legacy, 8),
        Code::Movlps_xmm_m64 | Code::Movlpd_xmm_m64 => V::load(Legacy, 8).rest(Rest::Keep),
        Code::Movhps_xmm_m64 | Code::Movhpd_xmm_m64 => V::load(Legacy, 8).rest(Rest::Keep).high(),

        Code::Movups_xmmm128_xmm | Code::Movupd_xmmm128_xmm | Code::Movdqu_xmmm128_xmm => {
            V::store(Legacy, 16)
        }
        Code::Movaps_xmmm128_xmm | Code::Movapd_xmmm128_xmm | Code::Movdqa_xmmm128_xmm
        | Code::Movntps_m128_xmm | Code::Movntpd_m128_xmm | Code::Movntdq_m128_xmm => {
            V::store(Legacy, 16).aligned()
        }
        Code::Movss_xmmm32_xmm | Code::Movd_rm32_xmm | Code::Movntss_m32_xmm => V::store(Legacy, 4),
        Code::Movsd_xmmm64_xmm | Code::Movq_rm64_xmm | Code::Movq_xmmm64_xmm
        | Code::Movlps_m64_xmm | Code::Movlpd_m64_xmm | Code::Movntsd_m64_xmm => V::store(Legacy, 8),
        Code::Movhps_m64_xmm | Code::Movhpd_m64_xmm => V::store(Legacy, 8).high(),

        // ---- VEX ----
        Code::VEX_Vmovups_xmm_xmmm128 | Code::VEX_Vmovupd_xmm_xmmm128
        | Code::VEX_Vmovdqu_xmm_xmmm128 | Code::VEX_Vlddqu_xmm_m128 => V::load(Vex, 16),
        Code::VEX_Vmovups_ymm_ymmm256 | Code::VEX_Vmovupd_ymm_ymmm256
        | Code::VEX_Vmovdqu_ymm_ymmm256 | Code::VEX_Vlddqu_ymm_m256 => V::load(Vex, 32),
        Code::VEX_Vmovaps_xmm_xmmm128 | Code::VEX_Vmovapd_xmm_xmmm128
        | Code::VEX_Vmovdqa_xmm_xmmm128 | Code::VEX_Vmovntdqa_xmm_m128 => V::load(Vex, 16).aligned(),
        Code::VEX_Vmovaps_ymm_ymmm256 | Code::VEX_Vmovapd_ymm_ymmm256
        | Code::VEX_Vmovdqa_ymm_ymmm256 | Code::VEX_Vmovntdqa_ymm_m256 => V::load(Vex, 32).aligned(),
        Code::VEX_Vmovss_xmm_m32 | Code::VEX_Vmovd_xmm_rm32 => V::load(Vex, 4),
        Code::VEX_Vmovsd_xmm_m64 | Code::VEX_Vmovq_xmm_rm64 | Code::VEX_Vmovq_xmm_xmmm64 => {
            V::load(Vex, 8)
        }
        Code::VEX_Vmovlps_xmm_xmm_m64 | Code::VEX_Vmovlpd_xmm_xmm_m64 => {
            V::load(Vex, 8).rest(Rest::Src2)
        }
        Code::VEX_Vmovhps_xmm_xmm_m64 | Code::VEX_Vmovhpd_xmm_xmm_m64 => {
            V::load(Vex, 8).rest(Rest::Src2).high()
        }

        Code::VEX_Vmovups_xmmm128_xmm | Code::VEX_Vmovupd_xmmm128_xmm
        | Code::VEX_Vmovdqu_xmmm128_xmm => V::store(Vex, 16),
        Code::VEX_Vmovups_ymmm256_ymm | Code::VEX_Vmovupd_ymmm256_ymm
        | Code::VEX_Vmovdqu_ymmm256_ymm => V::store(Vex, 32),
        Code::VEX_Vmovaps_xmmm128_xmm | Code::VEX_Vmovapd_xmmm128_xmm
        | Code::VEX_Vmovdqa_xmmm128_xmm | Code::VEX_Vmovntps_m128_xmm
        | Code::VEX_Vmovntpd_m128_xmm | Code::VEX_Vmovntdq_m128_xmm => V::store(Vex, 16).aligned(),
        Code::VEX_Vmovaps_ymmm256_ymm | Code::VEX_Vmovapd_ymmm256_ymm
        | Code::VEX_Vmovdqa_ymmm256_ymm | Code::VEX_Vmovntps_m256_ymm
        | Code::VEX_Vmovntpd_m256_ymm | Code::VEX_Vmovntdq_m256_ymm => V::store(Vex, 32).aligned(),
        Code::VEX_Vmovss_m32_xmm | Code::VEX_Vmovd_rm32_xmm => V::store(Vex, 4),
        Code::VEX_Vmovsd_m64_xmm | Code::VEX_Vmovq_rm64_xmm | Code::VEX_Vmovq_xmmm64_xmm
        | Code::VEX_Vmovlps_m64_xmm | Code::VEX_Vmovlpd_m64_xmm => V::store(Vex, 8),
        Code::VEX_Vmovhps_m64_xmm | Code::VEX_Vmovhpd_m64_xmm => V::store(Vex, 8).high(),

        // ---- EVEX, maskable full-width ----
        Code::EVEX_Vmovdqu8_xmm_k1z_xmmm128 => V::load(Evex, 16).masked(1),
        Code::EVEX_Vmovdqu8_ymm_k1z_ymmm256 => V::load(Evex, 32).masked(1),
        Code::EVEX_Vmovdqu8_zmm_k1z_zmmm512 => V::load(Evex, 64).masked(1),
        Code::EVEX_Vmovdqu16_xmm_k1z_xmmm128 => V::load(Evex, 16).masked(2),
        Code::EVEX_Vmovdqu16_ymm_k1z_ymmm256 => V::load(Evex, 32).masked(2),
        Code::EVEX_Vmovdqu16_zmm_k1z_zmmm512 => V::load(Evex, 64).masked(2),
        Code::EVEX_Vmovups_xmm_k1z_xmmm128 | Code::EVEX_Vmovdqu32_xmm_k1z_xmmm128 => {
            V::load(Evex, 16).masked(4)
        }
        Code::EVEX_Vmovups_ymm_k1z_ymmm256 | Code::EVEX_Vmovdqu32_ymm_k1z_ymmm256 => {
            V::load(Evex, 32).masked(4)
        }
        Code::EVEX_Vmovups_zmm_k1z_zmmm512 | Code::EVEX_Vmovdqu32_zmm_k1z_zmmm512 => {
            V::load(Evex, 64).masked(4)
        }
        Code::EVEX_Vmovupd_xmm_k1z_xmmm128 | Code::EVEX_Vmovdqu64_xmm_k1z_xmmm128 => {
            V::load(Evex, 16).masked(8)
        }
        Code::EVEX_Vmovupd_ymm_k1z_ymmm256 | Code::EVEX_Vmovdqu64_ymm_k1z_ymmm256 => {
            V::load(Evex, 32).masked(8)
        }
        Code::EVEX_Vmovupd_zmm_k1z_zmmm512 | Code::EVEX_Vmovdqu64_zmm_k1z_zmmm512 => {
            V::load(Evex, 64).masked(8)
        }
        Code::EVEX_Vmovaps_xmm_k1z_xmmm128 | Code::EVEX_Vmovdqa32_xmm_k1z_xmmm128 => {
            V::load(Evex, 16).masked(4).aligned()
        }
        Code::EVEX_Vmovaps_ymm_k1z_ymmm256 | Code::EVEX_Vmovdqa32_ymm_k1z_ymmm256 => {
            V::load(Evex, 32).masked(4).aligned()
        }
        Code::EVEX_Vmovaps_zmm_k1z_zmmm512 | Code::EVEX_Vmovdqa32_zmm_k1z_zmmm512 => {
            V::load(Evex, 64).masked(4).aligned()
        }
        Code::EVEX_Vmovapd_xmm_k1z_xmmm128 | Code::EVEX_Vmovdqa64_xmm_k1z_xmmm128 => {
            V::load(Evex, 16).masked(8).aligned()
        }
        Code::EVEX_Vmovapd_ymm_k1z_ymmm256 | Code::EVEX_Vmovdqa64_ymm_k1z_ymmm256 => {
            V::load(Evex, 32).masked(8).aligned()
        }
        Code::EVEX_Vmovapd_zmm_k1z_zmmm512 | Code::EVEX_Vmovdqa64_zmm_k1z_zmmm512 => {
            V::load(Evex, 64).masked(8).aligned()
        }

        Code::EVEX_Vmovdqu8_xmmm128_k1z_xmm => V::store(Evex, 16).masked(1),
        Code::EVEX_Vmovdqu8_ymmm256_k1z_ymm => V::store(Evex, 32).masked(1),
        Code::EVEX_Vmovdqu8_zmmm512_k1z_zmm => V::store(Evex, 64).masked(1),
        Code::EVEX_Vmovdqu16_xmmm128_k1z_xmm => V::store(Evex, 16).masked(2),
        Code::EVEX_Vmovdqu16_ymmm256_k1z_ymm => V::store(Evex, 32).masked(2),
        Code::EVEX_Vmovdqu16_zmmm512_k1z_zmm => V::store(Evex, 64).masked(2),
        Code::EVEX_Vmovups_xmmm128_k1z_xmm | Code::EVEX_Vmovdqu32_xmmm128_k1z_xmm => {
            V::store(Evex, 16).masked(4)
        }
        Code::EVEX_Vmovups_ymmm256_k1z_ymm | Code::EVEX_Vmovdqu32_ymmm256_k1z_ymm => {
            V::store(Evex, 32).masked(4)
        }
        Code::EVEX_Vmovups_zmmm512_k1z_zmm | Code::EVEX_Vmovdqu32_zmmm512_k1z_zmm => {
            V::store(Evex, 64).masked(4)
        }
        Code::EVEX_Vmovupd_xmmm128_k1z_xmm | Code::EVEX_Vmovdqu64_xmmm128_k1z_xmm => {
            V::store(Evex, 16).masked(8)
        }
        Code::EVEX_Vmovupd_ymmm256_k1z_ymm | Code::EVEX_Vmovdqu64_ymmm256_k1z_ymm => {
            V::store(Evex, 32).masked(8)
        }
        Code::EVEX_Vmovupd_zmmm512_k1z_zmm | Code::EVEX_Vmovdqu64_zmmm512_k1z_zmm => {
            V::store(Evex, 64).masked(8)
        }
        Code::EVEX_Vmovaps_xmmm128_k1z_xmm | Code::EVEX_Vmovdqa32_xmmm128_k1z_xmm => {
            V::store(Evex, 16).masked(4).aligned()
        }
        Code::EVEX_Vmovaps_ymmm256_k1z_ymm | Code::EVEX_Vmovdqa32_ymmm256_k1z_ymm => {
            V::store(Evex, 32).masked(4).aligned()
        }
        Code::EVEX_Vmovaps_zmmm512_k1z_zmm | Code::EVEX_Vmovdqa32_zmmm512_k1z_zmm => {
            V::store(Evex, 64).masked(4).aligned()
        }
        Code::EVEX_Vmovapd_xmmm128_k1z_xmm | Code::EVEX_Vmovdqa64_xmmm128_k1z_xmm => {
            V::store(Evex, 16).masked(8).aligned()
        }
        Code::EVEX_Vmovapd_ymmm256_k1z_ymm | Code::EVEX_Vmovdqa64_ymmm256_k1z_ymm => {
            V::store(Evex, 32).masked(8).aligned()
        }
        Code::EVEX_Vmovapd_zmmm512_k1z_zmm | Code::EVEX_Vmovdqa64_zmmm512_k1z_zmm => {
            V::store(Evex, 64).masked(8).aligned()
        }

        // ---- EVEX, non-temporal (no masking) ----
        Code::EVEX_Vmovntdqa_xmm_m128 => V::load(Evex, 16).aligned(),
        Code::EVEX_Vmovntdqa_ymm_m256 => V::load(Evex, 32).aligned(),
        Code::EVEX_Vmovntdqa_zmm_m512 => V::load(Evex, 64).aligned(),
        Code::EVEX_Vmovntps_m128_xmm | Code::EVEX_Vmovntpd_m128_xmm
        | Code::EVEX_Vmovntdq_m128_xmm => V::store(Evex, 16).aligned(),
        Code::EVEX_Vmovntps_m256_ymm | Code::EVEX_Vmovntpd_m256_ymm
        | Code::EVEX_Vmovntdq_m256_ymm => V::store(Evex, 32).aligned(),
        Code::EVEX_Vmovntps_m512_zmm | Code::EVEX_Vmovntpd_m512_zmm
        | Code::EVEX_Vmovntdq_m512_zmm => V::store(Evex, 64).aligned(),

        // ---- EVEX, scalar and partial ----
        Code::EVEX_Vmovsh_xmm_k1z_m16 => V::load(Evex, 2).masked(2),
        Code::EVEX_Vmovss_xmm_k1z_m32 => V::load(Evex, 4).masked(4),
        Code::EVEX_Vmovsd_xmm_k1z_m64 => V::load(Evex, 8).masked(8),
        Code::EVEX_Vmovsh_m16_k1_xmm => V::store(Evex, 2).masked(2),
        Code::EVEX_Vmovss_m32_k1_xmm => V::store(Evex, 4).masked(4),
        Code::EVEX_Vmovsd_m64_k1_xmm => V::store(Evex, 8).masked(8),
        Code::EVEX_Vmovw_xmm_r32m16 | Code::EVEX_Vmovw_xmm_r64m16 => V::load(Evex, 2),
        Code::EVEX_Vmovd_xmm_rm32 => V::load(Evex, 4),
        Code::EVEX_Vmovq_xmm_rm64 | Code::EVEX_Vmovq_xmm_xmmm64 => V::load(Evex, 8),
        Code::EVEX_Vmovw_r32m16_xmm | Code::EVEX_Vmovw_r64m16_xmm => V::store(Evex, 2),
        Code::EVEX_Vmovd_rm32_xmm => V::store(Evex, 4),
        Code::EVEX_Vmovq_rm64_xmm | Code::EVEX_Vmovq_xmmm64_xmm
        | Code::EVEX_Vmovlps_m64_xmm | Code::EVEX_Vmovlpd_m64_xmm => V::store(Evex, 8),
        Code::EVEX_Vmovhps_m64_xmm | Code::EVEX_Vmovhpd_m64_xmm => V::store(Evex, 8).high(),
        Code::EVEX_Vmovlps_xmm_xmm_m64 | Code::EVEX_Vmovlpd_xmm_xmm_m64 => {
            V::load(Evex, 8).rest(Rest::Src2)
        }
        Code::EVEX_Vmovhps_xmm_xmm_m64 | Code::EVEX_Vmovhpd_xmm_xmm_m64 => {
            V::load(Evex, 8).rest(Rest::Src2).high()
        }
        _ => return None,
    })
}

/// The vector move hvemu emulates, if this is one.
#[inline]
pub(super) fn classify(instr: &Instruction) -> Option<VecMove> {
    form(instr.code())
}

/// XCR0 bits: SSE and AVX state.
const XCR0_AVX: u64 = 0b110;
/// XCR0 bits: SSE, AVX, opmask, ZMM_Hi256 and Hi16_ZMM state.
const XCR0_AVX512: u64 = 0b1110_0110;
/// XCR0 bit: ZMM_Hi256 state (bits 256–511 of registers 0–15).
const XCR0_ZMM_HI256: u64 = 1 << 6;
/// Bits 64–79 of an x87 register an MMX write sets (exponent and sign all ones).
const MMX_HIGH_ONES: u128 = 0xFFFF << 64;
/// FP_CONTROL_STATUS: FSW.TOP (FSW bits 11–13) and the abridged tag byte.
const FPCS_TOP: u128 = 0b111 << (16 + 11);
const FPCS_TAGS: u128 = 0xFF << 32;
/// FP_MMX0..7, the x87/MMX registers in physical order.
const FP_MMX: [RegisterName; 8] = {
    let first = RegisterName::FP_MMX0.0;
    [
        RegisterName(first),
        RegisterName(first + 1),
        RegisterName(first + 2),
        RegisterName(first + 3),
        RegisterName(first + 4),
        RegisterName(first + 5),
        RegisterName(first + 6),
        RegisterName(first + 7),
    ]
};

/// The view of vector register `n` that is `width` bytes wide.
#[inline]
fn view(n: u8, width: usize) -> Option<RegisterName> {
    match width {
        16 => RegisterName::xmm(n),
        32 => RegisterName::ymm(n),
        64 => RegisterName::zmm(n),
        _ => None,
    }
}

/// The register operand (the XMM/YMM/ZMM or MM register moved), and the second source of the
/// three-operand loads.
#[inline]
fn register_operands(instr: &Instruction, op: VecMove) -> (Register, Option<Register>) {
    // Every form is `op [mem], reg`, `op reg, [mem]` or (the three-operand VEX/EVEX loads)
    // `op reg, src2, [mem]`; what is not a vector or MMX register here is refused by the caller.
    match op.dir {
        Dir::Store => (instr.op1_register(), None),
        Dir::Load if op.rest == Rest::Src2 => (instr.op0_register(), Some(instr.op1_register())),
        Dir::Load => (instr.op0_register(), None),
    }
}

#[inline]
fn number(reg: Register) -> u8 {
    u8::try_from(reg.number()).unwrap_or(u8::MAX)
}

/// Adds the registers the move reads to the batch (the address registers are there already).
#[inline]
pub(super) fn registers(instr: &Instruction, op: VecMove) -> WideNames {
    let mut set = WideNames::EMPTY;
    let (reg, src2) = register_operands(instr, op);
    let n = number(reg);
    if op.file == File::Mmx {
        set = set.with(RegisterName::FP_CONTROL_STATUS);
        if op.dir == Dir::Store {
            if let Some(name) = RegisterName::fp_mmx(n) {
                set = set.with(name);
            }
        }
        return set;
    }
    if op.enc != Enc::Legacy {
        set = set.with(RegisterName::XCR0);
    }
    if let Some(k) = mask_register(instr, op) {
        set = set.with(k);
    }
    let width = reg.size();
    let read = match op.dir {
        Dir::Store => view(n, width),
        Dir::Load if op.rest == Rest::Keep => view(n, 16),
        Dir::Load if op.rest == Rest::Src2 => src2.and_then(|r| view(number(r), 16)),
        Dir::Load if mask_register(instr, op).is_some() && !instr.zeroing_masking() => {
            view(n, width)
        }
        Dir::Load => None,
    };
    if let Some(name) = read {
        set = set.with(name);
    }
    set
}

/// The opmask register selecting the elements, when the form takes one and K1–K7 is given.
#[inline]
fn mask_register(instr: &Instruction, op: VecMove) -> Option<RegisterName> {
    if op.element == 0 {
        return None;
    }
    match instr.op_mask() {
        Register::None => None,
        k => RegisterName::opmask(number(k)),
    }
}

/// Puts the bytes of a vector view's value, checked against the width asked for, at the
/// start of `out` (already zero). Written in place: a 64-byte array returned inside a
/// `Result` is read back unaligned across the stores that built it.
fn view_bytes<E>(
    name: RegisterName,
    width: usize,
    value: &RegisterValue,
    out: &mut [u8; 64],
) -> Result<(), EmulationError<E>> {
    match (width, value) {
        (16, RegisterValue::U128(v)) => out[..16].copy_from_slice(&v.to_le_bytes()),
        (32, RegisterValue::U256(b)) => out[..32].copy_from_slice(b),
        (64, RegisterValue::U512(b)) => *out = *b,
        _ => return Err(EmulationError::BadRegisterValue(name)),
    }
    Ok(())
}

/// A 64-bit or 128-bit register's value, checked.
fn u64_of<E>(name: RegisterName, value: &RegisterValue) -> Result<u64, EmulationError<E>> {
    value.as_u64().ok_or(EmulationError::BadRegisterValue(name))
}

fn u128_of<E>(name: RegisterName, value: &RegisterValue) -> Result<u128, EmulationError<E>> {
    value
        .as_u128()
        .ok_or(EmulationError::BadRegisterValue(name))
}

/// One maximal run of selected bytes of the operand: `start..start + len`. Bytes, not
/// words: the run lists are moved by value, and a 64-byte operand needs no more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: u8,
    len: u8,
}

impl Run {
    /// A run within an operand of at most 64 bytes (larger values saturate).
    fn new(start: usize, len: usize) -> Run {
        let byte = |v: usize| u8::try_from(v).unwrap_or(u8::MAX);
        Run {
            start: byte(start),
            len: byte(len),
        }
    }

    fn start(self) -> usize {
        usize::from(self.start)
    }

    fn len(self) -> usize {
        usize::from(self.len)
    }

    /// The operand bytes it covers.
    fn range(self) -> core::ops::Range<usize> {
        self.start()..self.start().saturating_add(self.len())
    }
}

/// The most runs a 64-byte operand can hold (alternate bytes selected).
const MAX_RUNS: usize = 32;

/// The runs of consecutive selected elements of `element`-byte elements over `size` bytes
/// under `mask` (bit i selects element i), found as they are asked for: a list built up
/// front and returned by value is read back wide across the narrow stores that wrote it.
#[derive(Clone, Copy, Debug)]
struct Runs {
    element: usize,
    count: usize,
    mask: u64,
    /// The first element not looked at yet.
    next: usize,
}

fn runs(size: usize, element: usize, mask: u64) -> Runs {
    Runs {
        element,
        count: size.checked_div(element).unwrap_or(0).min(64),
        mask,
        next: 0,
    }
}

impl Runs {
    fn selected(&self, i: usize) -> bool {
        i < self.count && self.mask >> i & 1 != 0
    }
}

impl Iterator for Runs {
    type Item = Run;

    fn next(&mut self) -> Option<Run> {
        // Each step moves `next` up by one towards `count` (at most 64).
        while self.next < self.count && !self.selected(self.next) {
            self.next = self.next.saturating_add(1);
        }
        let first = self.next;
        while self.selected(self.next) {
            self.next = self.next.saturating_add(1);
        }
        (self.next > first).then(|| {
            let e = self.element;
            // Cannot overflow: first < next ≤ count, and count × element ≤ size.
            #[allow(clippy::arithmetic_side_effects)]
            Run::new(first * e, (self.next - first) * e)
        })
    }
}

/// The checks the processor makes on the register operands before any access.
fn check_encoding<C: EmulatorCallbacks>(cpu: &mut Cpu<'_, C>, op: VecMove) -> Res<u64, C> {
    if op.enc == Enc::Legacy {
        return Ok(0);
    }
    if matches!(cpu.state.mode, Mode::Real | Mode::Virtual8086) {
        return Err(Exception::ud().into());
    }
    let xcr0 = u64_of(RegisterName::XCR0, cpu.wide(RegisterName::XCR0)?)?;
    let needed = if op.enc == Enc::Vex {
        XCR0_AVX
    } else {
        XCR0_AVX512
    };
    if xcr0 & needed != needed {
        return Err(Exception::ud().into());
    }
    Ok(xcr0)
}

/// The linear address of the operand's first byte, for the alignment check.
fn operand_linear<C: EmulatorCallbacks>(cpu: &mut Cpu<'_, C>, mem: MemRef) -> Res<u64, C> {
    Ok(if cpu.state.is_long() {
        let base = match mem.seg {
            Segment::Fs | Segment::Gs => cpu.segment(mem.seg)?.base,
            _ => 0,
        };
        base.wrapping_add(mem.offset)
    } else {
        cpu.segment(mem.seg)?.base.wrapping_add(mem.offset) & 0xFFFF_FFFF
    })
}

/// Checks and translates one run of the operand, so that accessing it can no longer fault.
/// `whole` marks a whole operand of 2, 4 or 8 bytes, the only accesses #AC applies to; any
/// other run is checked as bytes (the same limit and canonical checks over the whole run,
/// without #AC).
// Inlined, as `translate` is: a span returned through memory was read back in wide loads over
// narrow stores (a store-forwarding stall on every vector move).
#[inline(always)]
fn resolve_run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    mem: MemRef,
    run: Run,
    whole: bool,
    intent: Intent,
) -> Res<Span, C> {
    let offset = mem.offset.wrapping_add(run.start() as u64);
    let element = if whole { run.len() } else { 1 };
    let linear = cpu.linearize_elements(mem.seg, offset, run.len(), element, intent)?;
    cpu.translate(linear, run.len(), intent, Privilege::Current)
}

/// The opmask's value when the form is masked (`{k1}`–`{k7}`); `None` when every element is
/// accessed.
fn opmask<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    op: VecMove,
) -> Res<Option<u64>, C> {
    match mask_register(instr, op) {
        Some(k) => Ok(Some(u64_of(k, cpu.wide(k)?)?)),
        None => Ok(None),
    }
}

/// Checks and translates every run of selected elements, then accesses each: a store writes
/// the runs' bytes of `operand` (the operand's bytes, from its first), a load reads them into
/// it.
fn masked_access<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    mem: MemRef,
    op: VecMove,
    mask: u64,
    operand: &mut [u8],
) -> Res<(), C> {
    let size = usize::from(op.size);
    let intent = op.dir.intent();
    let runs = runs(size, usize::from(op.element), mask);
    // #AC applies to a 2-, 4- or 8-byte operand accessed whole.
    let whole = matches!(size, 2 | 4 | 8) && {
        let mut all = runs;
        all.next() == Some(Run::new(0, size)) && all.next().is_none()
    };
    let mut spans: heapless::Vec<(Span, Run), MAX_RUNS> = heapless::Vec::new();
    for r in runs {
        let span = resolve_run(cpu, mem, r, whole, intent)?;
        // As many spans as runs: the push cannot fail.
        let _ = spans.push((span, r));
    }
    for (span, r) in &spans {
        if let Some(bytes) = operand.get_mut(r.range()) {
            cpu.span_access(span, bytes, op.dir.direction())?;
        }
    }
    Ok(())
}

/// Runs the move.
pub(super) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    op: VecMove,
) -> Res<(), C> {
    let (reg, src2) = register_operands(instr, op);
    let valid = match op.file {
        File::Mmx => reg.is_mm(),
        File::Vector => reg.is_xmm() || reg.is_ymm() || reg.is_zmm(),
    } && src2.is_none_or(|r| r.is_xmm());
    let size = usize::from(op.size);
    let at = usize::from(op.at);
    if !valid || instr.memory_size().size() != size || instr.is_broadcast() {
        return Err(unsupported(instr));
    }
    let xcr0 = check_encoding(cpu, op)?;
    let n = number(reg);
    let width = reg.size();
    let mem = cpu.effective_address(instr)?;

    // Every register input, checked, before the first memory access.
    let mut mmx = None;
    let mut reg_bytes = [0u8; 64];
    let mut src2_bytes = [0u8; 64];
    if op.file == File::Mmx {
        let (fpcs, physical) = mmx_state(cpu)?;
        if op.dir == Dir::Store {
            let value = match physical {
                Some(p) => p.get(usize::from(n)).copied().unwrap_or(0),
                None => {
                    let name = RegisterName::fp_mmx(n).ok_or_else(|| unsupported(instr))?;
                    u128_of(name, cpu.wide(name)?)?
                }
            };
            reg_bytes[..16].copy_from_slice(&value.to_le_bytes());
        }
        mmx = Some((fpcs, physical));
    } else {
        let read = match op.dir {
            Dir::Store => Some(width),
            Dir::Load if op.rest == Rest::Keep => Some(16),
            Dir::Load if mask_register(instr, op).is_some() && !instr.zeroing_masking() => {
                Some(width)
            }
            Dir::Load => None,
        };
        if let Some(w) = read {
            let name = view(n, w).ok_or_else(|| unsupported(instr))?;
            view_bytes(name, w, cpu.wide(name)?, &mut reg_bytes)?;
        }
        if let Some(r) = src2 {
            let name = view(number(r), 16).ok_or_else(|| unsupported(instr))?;
            view_bytes(name, 16, cpu.wide(name)?, &mut src2_bytes)?;
        }
    }
    let mask = opmask(cpu, instr, op)?;

    // Alignment, then segmentation and translation of every run, then the accesses.
    if op.aligned && operand_linear(cpu, mem)?.checked_rem(u64::from(op.size)) != Some(0) {
        return Err(Exception::gp(0).into());
    }
    let intent = op.dir.intent();
    // A store writes the register's own bytes, where they are (no copy); a load reads into
    // `data`.
    let mut data = [0u8; 64];
    let operand = match op.dir {
        Dir::Store => reg_bytes.get_mut(at..).and_then(|b| b.get_mut(..size)),
        Dir::Load => data.get_mut(..size),
    }
    .unwrap_or(&mut []);
    match mask {
        Some(mask) => masked_access(cpu, mem, op, mask, operand)?,
        // Unmasked, the common case: the whole operand is one access, and #AC applies to it
        // when it is 2, 4 or 8 bytes.
        None => {
            let whole = Run::new(0, size);
            let span = resolve_run(cpu, mem, whole, matches!(size, 2 | 4 | 8), intent)?;
            cpu.span_access(&span, operand, op.dir.direction())?;
        }
    }

    // The registers.
    if let Some((fpcs, physical)) = mmx {
        return finish_mmx(cpu, op, n, fpcs, physical, &data);
    }
    if op.dir == Dir::Store {
        return Ok(());
    }
    let mut new = match op.rest {
        Rest::Zero => [0u8; 64],
        Rest::Keep => reg_bytes,
        Rest::Src2 => src2_bytes,
    };
    let zeroing = instr.zeroing_masking();
    let element = NonZeroUsize::new(usize::from(op.element)).unwrap_or(NonZeroUsize::MIN);
    // Byte i of the operand goes to byte at + i of the register (those within it).
    let bytes = new.iter_mut().zip(reg_bytes).skip(at).zip(data).take(size);
    for (i, ((b, old), loaded)) in bytes.enumerate() {
        let selected = mask.is_none_or(|m| (i / element) < 64 && m >> (i / element) & 1 != 0);
        *b = if selected {
            loaded
        } else if zeroing {
            0
        } else {
            old
        };
    }
    // Bits from the destination width (or 128 for the partial forms) up are zero here.
    let dest_width = width.max(16);
    for b in new.iter_mut().skip(dest_width) {
        *b = 0;
    }
    let (name, value) = match op.enc {
        Enc::Legacy => {
            let mut low = [0u8; 16];
            low.copy_from_slice(&new[..16]);
            (
                RegisterName::xmm(n),
                RegisterValue::U128(u128::from_le_bytes(low)),
            )
        }
        Enc::Vex if xcr0 & XCR0_ZMM_HI256 == 0 => {
            let mut low = [0u8; 32];
            low.copy_from_slice(&new[..32]);
            (RegisterName::ymm(n), RegisterValue::U256(low))
        }
        Enc::Vex | Enc::Evex => (RegisterName::zmm(n), RegisterValue::U512(new)),
    };
    let name = name.ok_or_else(|| unsupported(instr))?;
    cpu.set_wide(name, value)
}

/// FP_CONTROL_STATUS and the eight x87/MMX registers in physical order (index n is MMn), as
/// the MMX instruction sees them after it sets TOP to 0. Reads all eight only when TOP was not
/// 0 (they must be rotated); otherwise only those in the batch, and the rest read as 0 and are
/// not written back.
fn mmx_state<C: EmulatorCallbacks>(cpu: &mut Cpu<'_, C>) -> Res<(u128, Option<[u128; 8]>), C> {
    let name = RegisterName::FP_CONTROL_STATUS;
    let fpcs = u128_of(name, cpu.wide(name)?)?;
    let top = ((fpcs & FPCS_TOP) >> (16 + 11)) as usize;
    if top == 0 {
        return Ok((fpcs, None));
    }
    cpu.fetch_wide(&FP_MMX)?;
    let mut st = [0u128; 8];
    for (slot, name) in st.iter_mut().zip(FP_MMX) {
        *slot = u128_of(name, cpu.wide(name)?)?;
    }
    // ST(j) is physical register (TOP + j) mod 8: physical register i is ST((i − TOP) mod 8),
    // so the registers move up by TOP places.
    let mut physical = st;
    physical.rotate_right(top % 8);
    Ok((fpcs, Some(physical)))
}

/// Writes what an MMX instruction leaves in the x87 state: the registers rotated into TOP = 0
/// order when TOP was not 0, the loaded register, and FSW.TOP = 0 with every tag valid.
fn finish_mmx<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    op: VecMove,
    n: u8,
    fpcs: u128,
    physical: Option<[u128; 8]>,
    data: &[u8; 64],
) -> Res<(), C> {
    if let Some(p) = physical {
        for (i, value) in (0u8..).zip(p) {
            if let Some(name) = RegisterName::fp_mmx(i) {
                cpu.set_wide(name, RegisterValue::U128(value))?;
            }
        }
    }
    if op.dir == Dir::Load {
        let mut low = [0u8; 8];
        low.copy_from_slice(&data[..8]);
        // MOVD's bytes 4–7 are zero here: the 32-bit load zero-extends.
        let value = u128::from(u64::from_le_bytes(low)) | MMX_HIGH_ONES;
        if let Some(name) = RegisterName::fp_mmx(n) {
            cpu.set_wide(name, RegisterValue::U128(value))?;
        }
    }
    let new = (fpcs & !FPCS_TOP) | FPCS_TAGS;
    if new != fpcs {
        cpu.set_wide(RegisterName::FP_CONTROL_STATUS, RegisterValue::U128(new))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::format;
    use std::vec::Vec;

    use iced_x86::{
        Code, Decoder, DecoderOptions, Encoder, EncodingKind, Instruction, MemoryOperand, Mnemonic,
        Register,
    };

    use super::{Dir, Enc, File, MAX_RUNS, Rest, Run, form, runs};

    /// The mnemonics of the moves this family covers.
    const MNEMONICS: [Mnemonic; 49] = [
        Mnemonic::Movups,
        Mnemonic::Movupd,
        Mnemonic::Movaps,
        Mnemonic::Movapd,
        Mnemonic::Movdqu,
        Mnemonic::Movdqa,
        Mnemonic::Lddqu,
        Mnemonic::Movntps,
        Mnemonic::Movntpd,
        Mnemonic::Movntdq,
        Mnemonic::Movntdqa,
        Mnemonic::Movntq,
        Mnemonic::Movntss,
        Mnemonic::Movntsd,
        Mnemonic::Movd,
        Mnemonic::Movq,
        Mnemonic::Movss,
        Mnemonic::Movsd,
        Mnemonic::Movlps,
        Mnemonic::Movhps,
        Mnemonic::Movlpd,
        Mnemonic::Movhpd,
        Mnemonic::Vmovups,
        Mnemonic::Vmovupd,
        Mnemonic::Vmovaps,
        Mnemonic::Vmovapd,
        Mnemonic::Vmovdqu,
        Mnemonic::Vmovdqa,
        Mnemonic::Vlddqu,
        Mnemonic::Vmovntps,
        Mnemonic::Vmovntpd,
        Mnemonic::Vmovntdq,
        Mnemonic::Vmovntdqa,
        Mnemonic::Vmovd,
        Mnemonic::Vmovq,
        Mnemonic::Vmovss,
        Mnemonic::Vmovsd,
        Mnemonic::Vmovlps,
        Mnemonic::Vmovhps,
        Mnemonic::Vmovlpd,
        Mnemonic::Vmovhpd,
        Mnemonic::Vmovdqu8,
        Mnemonic::Vmovdqu16,
        Mnemonic::Vmovdqu32,
        Mnemonic::Vmovdqu64,
        Mnemonic::Vmovdqa32,
        Mnemonic::Vmovdqa64,
        Mnemonic::Vmovsh,
        Mnemonic::Vmovw,
    ];

    /// Whether a code's name says it has a memory operand (`m32`, `xmmm128`, `rm64`,
    /// `r32m16` …): one operand token ending in `m` and digits.
    fn names_memory(code: Code) -> bool {
        let name = format!("{code:?}");
        name.split('_').skip(1).any(|token| {
            let digits = token.trim_end_matches(|c: char| c.is_ascii_digit());
            digits.len() < token.len() && digits.ends_with('m')
        })
    }

    /// The memory form of `code` with register 1 of the right file and width, `[rbx]`.
    fn memory_form(code: Code, op: super::VecMove) -> Instruction {
        let reg = match (op.file, op.size) {
            (File::Mmx, _) => Register::MM1,
            (File::Vector, 32) => Register::YMM1,
            (File::Vector, 64) => Register::ZMM1,
            (File::Vector, _) => Register::XMM1,
        };
        let mem = MemoryOperand::with_base(Register::RBX);
        match (op.dir, op.rest) {
            (Dir::Store, _) => Instruction::with2(code, mem, reg),
            (Dir::Load, Rest::Src2) => Instruction::with3(code, reg, Register::XMM2, mem),
            (Dir::Load, _) => Instruction::with2(code, reg, mem),
        }
        .unwrap_or_else(|e| panic!("{code:?}: {e}"))
    }

    #[test]
    fn every_code_with_a_memory_operand_of_these_moves_is_accepted_and_agrees_with_iced() {
        let mut accepted = [0usize; 3];
        let mut without_tables = 0;
        let support = crate::decoder_support();
        let mut missing: Vec<Code> = Vec::new();
        for code in Code::values() {
            let ours = MNEMONICS.contains(&code.mnemonic())
                && names_memory(code)
                && code != Code::Movsd_m32_m32
                && !format!("{code:?}").starts_with("MVEX_");
            let Some(op) = form(code) else {
                if ours {
                    missing.push(code);
                }
                continue;
            };
            assert!(ours, "{code:?} is accepted but is not one of the moves");
            // The encoding, from the instruction itself (what the decoder is told to expect).
            let instr = memory_form(code, op);
            let enc = match instr.encoding() {
                EncodingKind::Legacy => Enc::Legacy,
                EncodingKind::VEX => Enc::Vex,
                EncodingKind::EVEX => Enc::Evex,
                other => panic!("{code:?}: {other:?}"),
            };
            assert_eq!(enc, op.enc, "{code:?}");
            // Encode the memory form, decode it back: the same code, and iced's memory size
            // and element size are ours. A build whose iced-x86 lacks the encoding's tables
            // (`lean-decoder`) can do neither: those codes are checked by the rest alone, and
            // counted apart.
            let tables = match enc {
                Enc::Legacy => true,
                Enc::Vex => support.vex,
                Enc::Evex => support.evex,
            };
            if !tables {
                without_tables += 1;
                accepted[enc as usize] += 1;
                continue;
            }
            let mut encoder = Encoder::new(64);
            encoder
                .encode(&instr, 0)
                .unwrap_or_else(|e| panic!("{code:?}: {e}"));
            let bytes = encoder.take_buffer();
            let decoded = Decoder::new(64, &bytes, DecoderOptions::NONE).decode();
            assert_eq!(decoded.code(), code);
            assert_eq!(
                decoded.memory_size().size(),
                usize::from(op.size),
                "{code:?}"
            );
            if op.element != 0 {
                assert_eq!(op.enc, Enc::Evex, "{code:?}");
                assert_eq!(
                    decoded.memory_size().element_size(),
                    usize::from(op.element),
                    "{code:?}"
                );
            }
            assert!(usize::from(op.at) + usize::from(op.size) <= 64, "{code:?}");
            assert!(!op.aligned || op.size >= 16, "{code:?}");
            let name = format!("{code:?}").to_ascii_lowercase();
            let aligned_name = ["movap", "movdqa", "movnt"]
                .iter()
                .any(|p| name.contains(p))
                && !name.contains("movntq")
                && !name.contains("movnts");
            assert_eq!(op.aligned, aligned_name, "{code:?}");
            accepted[enc as usize] += 1;
        }
        assert_eq!(
            missing,
            [],
            "moves with a memory operand hvemu does not accept"
        );
        let total: usize = accepted.iter().sum();
        std::println!(
            "vector moves: {total} codes accepted ({} legacy MMX/SSE, {} VEX, {} EVEX); \
             {without_tables} not round-tripped for want of decoder tables",
            accepted[0],
            accepted[1],
            accepted[2]
        );
        // Exactly the codes of the encodings the linked decoder lacks (all of them when it
        // has every table).
        let lacking = |has: bool, n: usize| if has { 0 } else { n };
        assert_eq!(
            without_tables,
            lacking(support.vex, accepted[1]) + lacking(support.evex, accepted[2])
        );
        assert_eq!(accepted, [44, 52, 96]);
    }

    #[test]
    fn opmask_runs() {
        let r = Run::new;
        let list = |size, element, mask| runs(size, element, mask).collect::<Vec<_>>();
        assert_eq!(list(64, 4, 0), []);
        assert_eq!(list(64, 4, u64::MAX), [r(0, 64)]);
        assert_eq!(list(16, 4, 0b1011), [r(0, 8), r(12, 4)]);
        assert_eq!(list(16, 16, 1), [r(0, 16)]);
        assert_eq!(list(16, 0, 1), []);
        // Only the first size/element bits count.
        assert_eq!(list(16, 8, 0b1110), [r(8, 8)]);
        let alternate = list(64, 1, 0x5555_5555_5555_5555);
        assert_eq!(alternate.len(), MAX_RUNS);
        assert_eq!(alternate.last(), Some(&r(62, 1)));
        assert_eq!(list(64, 1, 0xAAAA_AAAA_AAAA_AAAA).first(), Some(&r(1, 1)));
    }
}
