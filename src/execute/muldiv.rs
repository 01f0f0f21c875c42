//! Multiply and divide with a memory operand: MUL, IMUL (one, two and three operands), DIV
//! and IDIV (SDM Vol. 2A "DIV", "IDIV", "IMUL", Vol. 2B "MUL"; AMD APM Vol. 3 for the same).
//! The one-operand forms are zero-sized types implementing [`WideOp`], run by one generic
//! routine, [`run_wide`]; the truncating IMUL forms have their own.
//!
//! # Operands
//!
//! The one-operand forms work on the accumulator pair of the operand size: AL and AH (the
//! product of an 8-bit MUL is AX; an 8-bit DIV divides AX, leaving the quotient in AL and the
//! remainder in AH), DX:AX, EDX:EAX (both zero-extended into RDX and RAX) and RDX:RAX. The
//! two-operand IMUL multiplies its register by memory, the three-operand IMUL memory by an
//! immediate (sign-extended from 8 bits, or from 32 at 64 bits), both keeping the low half.
//! Memory is only read. No LOCK form exists (iced-x86 rejects it).
//!
//! # Divide errors
//!
//! DIV and IDIV raise #DE when the divisor is 0 or the quotient does not fit the destination
//! (for IDIV that includes the most negative dividend divided by −1). The emulation then fails
//! with [`crate::Vector::DivideError`] after the read of the divisor and before any register
//! changes: nothing is committed.
//!
//! # Flags
//!
//! * MUL, IMUL: CF and OF are set when the product does not fit the low half (MUL: the high
//!   half is not zero; IMUL: the result is not the sign extension of its low half; the
//!   truncating forms: the full product is not the sign extension of the stored result). SF, ZF,
//!   AF and PF are undefined. AMD leaves them unchanged. Intel sets SF from the top bit of the
//!   low half (the stored result) and PF from the parity of its low byte, and clears ZF and AF
//!   even when that half is zero; the same for every size and all three shapes.
//! * DIV, IDIV: all six are undefined. AMD sets AF, clears SF, ZF and PF and keeps CF and OF.
//!   Intel changes none of them.
//!
//! Both columns were measured natively: AMD on a Zen 3, Intel on a Xeon of family 6, model 207
//! (Emerald Rapids), with tens of millions of random operands and flags plus edge values. Other
//! Intel generations were not measured and may differ (the Bochs-derived model hvemu used
//! before, which set ZF from the product, does not describe this core). The `oracle_integer`
//! test compares the undefined flags with the host whenever the host's vendor is the
//! configured one.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::flags::{AF, ARITHMETIC, CF, OF, PF, SF, ZF, flag_if, result_flags};
use super::{read_value, unsupported};
use crate::callbacks::EmulatorCallbacks;
use crate::config::Vendor;
use crate::error::{EmulationError, Exception, Vector};
use crate::state::{Cpu, Res, bit_width, width_mask};

/// The outcome of a one-operand multiply or divide: the new accumulator pair and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Wide {
    /// The low register (AL, AX, EAX, RAX): low half of the product, or the quotient.
    pub low: u64,
    /// The high register (AH, DX, EDX, RDX): high half of the product, or the remainder.
    pub high: u64,
    /// New values of the flags in `changed`.
    pub flags: u64,
    /// Which status flags change.
    pub changed: u64,
}

/// A divide error (#DE): the divisor is 0 or the quotient does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DivideError;

/// One one-operand multiply or divide on the `size`-byte accumulator pair.
pub(crate) trait WideOp {
    /// `low`, `high`: the accumulator pair (masked to `size`); `src` the memory operand.
    fn apply(
        low: u64,
        high: u64,
        src: u64,
        size: usize,
        vendor: Vendor,
    ) -> Result<Wide, DivideError>;
}

/// MUL.
pub(crate) struct Mul;
/// IMUL with one operand.
pub(crate) struct Imul;
/// DIV.
pub(crate) struct Div;
/// IDIV.
pub(crate) struct Idiv;

/// `value`'s low `size` bytes, sign-extended to 128 bits.
fn signed(value: u64, size: usize) -> i128 {
    i128::from(super::mov::sign_extend(value, size) as i64)
}

/// The flags of a multiply: CF = OF = `overflow`; the undefined ones per vendor.
fn product_flags(low: u64, overflow: bool, size: usize, vendor: Vendor) -> (u64, u64) {
    let carry = flag_if(overflow, CF | OF);
    match vendor {
        Vendor::Amd => (carry, CF | OF),
        // SF and PF describe the low half; ZF is cleared even for a zero product, AF too.
        Vendor::Intel => (carry | (result_flags(low, size) & (SF | PF)), ARITHMETIC),
    }
}

/// The flags of a divide: all undefined, per vendor.
fn quotient_flags(vendor: Vendor) -> (u64, u64) {
    match vendor {
        Vendor::Amd => (AF, SF | ZF | AF | PF),
        Vendor::Intel => (0, 0),
    }
}

impl WideOp for Mul {
    fn apply(low: u64, _: u64, src: u64, size: usize, vendor: Vendor) -> Result<Wide, DivideError> {
        let mask = width_mask(size);
        // Two 64-bit factors: the 128-bit product never wraps.
        let product = u128::from(low & mask).wrapping_mul(u128::from(src & mask));
        let low = product as u64 & mask;
        let high = (product >> bit_width(size)) as u64 & mask;
        let (flags, changed) = product_flags(low, high != 0, size, vendor);
        Ok(Wide {
            low,
            high,
            flags,
            changed,
        })
    }
}

impl WideOp for Imul {
    fn apply(low: u64, _: u64, src: u64, size: usize, vendor: Vendor) -> Result<Wide, DivideError> {
        let mask = width_mask(size);
        let product = signed(low, size).wrapping_mul(signed(src, size));
        let low = product as u64 & mask;
        let high = (product >> bit_width(size)) as u64 & mask;
        let (flags, changed) = product_flags(low, product != signed(low, size), size, vendor);
        Ok(Wide {
            low,
            high,
            flags,
            changed,
        })
    }
}

impl WideOp for Div {
    fn apply(
        low: u64,
        high: u64,
        src: u64,
        size: usize,
        vendor: Vendor,
    ) -> Result<Wide, DivideError> {
        let mask = width_mask(size);
        let dividend = (u128::from(high & mask) << bit_width(size)) | u128::from(low & mask);
        let divisor = u128::from(src & mask);
        let quotient = dividend.checked_div(divisor).ok_or(DivideError)?;
        let remainder = dividend.checked_rem(divisor).ok_or(DivideError)?;
        if quotient > u128::from(mask) {
            return Err(DivideError);
        }
        let (flags, changed) = quotient_flags(vendor);
        Ok(Wide {
            low: quotient as u64,
            high: remainder as u64,
            flags,
            changed,
        })
    }
}

impl WideOp for Idiv {
    fn apply(
        low: u64,
        high: u64,
        src: u64,
        size: usize,
        vendor: Vendor,
    ) -> Result<Wide, DivideError> {
        let mask = width_mask(size);
        let bits = bit_width(size);
        // The 2n-bit dividend, sign-extended from bit 2n-1: the high half sign-extended, shifted
        // over the low half.
        let dividend = (signed(high, size) << bits) | i128::from(low & mask);
        let divisor = signed(src, size);
        let quotient = dividend.checked_div(divisor).ok_or(DivideError)?;
        let remainder = dividend.checked_rem(divisor).ok_or(DivideError)?;
        // The quotient must fit the n-bit signed destination.
        if signed(quotient as u64, size) != quotient {
            return Err(DivideError);
        }
        let (flags, changed) = quotient_flags(vendor);
        Ok(Wide {
            low: quotient as u64 & mask,
            high: remainder as u64 & mask,
            flags,
            changed,
        })
    }
}

/// The truncating IMUL (two and three operands): `a × b` kept at `size` bytes, with its flags.
pub(crate) fn imul_truncating(a: u64, b: u64, size: usize, vendor: Vendor) -> (u64, u64, u64) {
    let product = signed(a, size).wrapping_mul(signed(b, size));
    let value = product as u64 & width_mask(size);
    let (flags, changed) = product_flags(value, product != signed(value, size), size, vendor);
    (value, flags, changed)
}

/// Which operation, as [`super::Family::MulDiv`] carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MulDivKind {
    /// MUL r/m.
    Mul,
    /// IMUL r/m.
    Imul,
    /// DIV r/m.
    Div,
    /// IDIV r/m.
    Idiv,
    /// IMUL r, r/m and IMUL r, r/m, imm.
    ImulTruncating,
}

impl MulDivKind {
    /// Whether the operation uses the accumulator pair (so RAX and RDX must be read).
    pub(crate) fn uses_accumulator(self) -> bool {
        !matches!(self, MulDivKind::ImulTruncating)
    }
}

/// The operation of a multiply or divide with a memory operand; `None` for anything else.
pub(super) fn classify(instr: &Instruction) -> Option<MulDivKind> {
    let kind = match (instr.mnemonic(), instr.op_count()) {
        (Mnemonic::Mul, 1) => MulDivKind::Mul,
        (Mnemonic::Imul, 1) => MulDivKind::Imul,
        (Mnemonic::Div, 1) => MulDivKind::Div,
        (Mnemonic::Idiv, 1) => MulDivKind::Idiv,
        (Mnemonic::Imul, 2 | 3) => MulDivKind::ImulTruncating,
        _ => return None,
    };
    let memory = (0..instr.op_count()).any(|i| instr.op_kind(i) == OpKind::Memory);
    memory.then_some(kind)
}

/// Runs the operation.
pub(super) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    kind: MulDivKind,
) -> Res<(), C> {
    match kind {
        MulDivKind::Mul => run_wide::<Mul, C>(cpu, instr),
        MulDivKind::Imul => run_wide::<Imul, C>(cpu, instr),
        MulDivKind::Div => run_wide::<Div, C>(cpu, instr),
        MulDivKind::Idiv => run_wide::<Idiv, C>(cpu, instr),
        MulDivKind::ImulTruncating => run_truncating(cpu, instr),
    }
}

/// The accumulator pair of an operand size.
fn accumulators(size: usize) -> Option<(Register, Register)> {
    Some(match size {
        1 => (Register::AL, Register::AH),
        2 => (Register::AX, Register::DX),
        4 => (Register::EAX, Register::EDX),
        8 => (Register::RAX, Register::RDX),
        _ => return None,
    })
}

fn merge_flags<C: EmulatorCallbacks>(cpu: &mut Cpu<'_, C>, flags: u64, changed: u64) {
    let update = super::flags::Update {
        value: 0,
        flags,
        changed,
    };
    cpu.state.rflags = update.rflags(cpu.state.rflags);
}

/// The one-operand routine: read the operand, compute, and only then write the pair.
pub(crate) fn run_wide<O: WideOp, C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
) -> Res<(), C> {
    let size = instr.memory_size().size();
    let (Some((low_reg, high_reg)), OpKind::Memory) = (accumulators(size), instr.op0_kind()) else {
        return Err(unsupported(instr));
    };
    let mem = cpu.effective_address(instr)?;
    let src = read_value(cpu, mem, size)?;
    let low = cpu.read_reg(low_reg)?;
    let high = cpu.read_reg(high_reg)?;
    let wide = O::apply(low, high, src, size, cpu.config.vendor).map_err(|DivideError| {
        EmulationError::Exception(Exception {
            vector: Vector::DivideError,
            error_code: None,
            cr2: None,
        })
    })?;
    cpu.write_reg(low_reg, wide.low)?;
    cpu.write_reg(high_reg, wide.high)?;
    merge_flags(cpu, wide.flags, wide.changed);
    Ok(())
}

/// IMUL r, r/m and IMUL r, r/m, imm with the r/m in memory.
fn run_truncating<C: EmulatorCallbacks>(cpu: &mut Cpu<'_, C>, instr: &Instruction) -> Res<(), C> {
    let size = instr.memory_size().size();
    if !matches!(size, 2 | 4 | 8)
        || instr.op0_kind() != OpKind::Register
        || instr.op1_kind() != OpKind::Memory
    {
        return Err(unsupported(instr));
    }
    let dst = instr.op0_register();
    let mem = cpu.effective_address(instr)?;
    let (a, b) = if instr.op_count() == 3 {
        let imm = match instr.op2_kind() {
            OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate32to64 => instr.immediate(2),
            _ => return Err(unsupported(instr)),
        };
        (read_value(cpu, mem, size)?, imm)
    } else {
        let a = cpu.read_reg(dst)?;
        (a, read_value(cpu, mem, size)?)
    };
    let (value, flags, changed) = imul_truncating(a, b, size, cpu.config.vendor);
    cpu.write_reg(dst, value)?;
    merge_flags(cpu, flags, changed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(result: Result<Wide, DivideError>) -> Wide {
        match result {
            Ok(w) => w,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn products() {
        let v = Vendor::Amd;
        // 8-bit: AX = AL × src.
        let w = ok(Mul::apply(0x80, 0, 0x02, 1, v));
        assert_eq!((w.low, w.high, w.flags), (0x00, 0x01, CF | OF));
        let w = ok(Imul::apply(0xFF, 0, 0xFF, 1, v));
        assert_eq!((w.low, w.high, w.flags), (0x01, 0x00, 0));
        let w = ok(Imul::apply(0x80, 0, 0x02, 1, v));
        assert_eq!((w.low, w.high, w.flags), (0x00, 0xFF, CF | OF));
        let w = ok(Mul::apply(u64::MAX, 0, u64::MAX, 8, v));
        assert_eq!((w.low, w.high), (1, u64::MAX - 1));
        assert_eq!(imul_truncating(0x4000, 2, 2, v), (0x8000, CF | OF, CF | OF));
        assert_eq!(imul_truncating(u64::MAX, u64::MAX, 8, v).0, 1);
    }

    /// Intel's undefined flags of the multiplies, measured natively on a Xeon of family 6,
    /// model 207: SF and PF from the low half, ZF and AF cleared, at every size and shape.
    #[test]
    fn intel_products_set_sf_and_pf_and_clear_zf_and_af() {
        let v = Vendor::Intel;
        // A zero product still clears ZF (measured: `mul byte` of 0 by 0 leaves ZF clear).
        let w = ok(Mul::apply(0, 0, 0, 1, v));
        assert_eq!((w.flags, w.changed), (PF, ARITHMETIC));
        assert_eq!(imul_truncating(0, 5, 4, v), (0, PF, ARITHMETIC));
        // SF is the low half's top bit, whatever the high half holds.
        let w = ok(Mul::apply(0xC0, 0, 0x03, 1, v)); // 0x240: low 0x40, high 0x02
        assert_eq!(w.flags, CF | OF);
        let w = ok(Mul::apply(0x8000, 0, 1, 2, v)); // low 0x8000: its low byte 0 has even parity
        assert_eq!(w.flags, SF | PF);
        let w = ok(Imul::apply(0xFFFF_FFFF, 0, 0xFFFF_FFFF, 4, v)); // -1 × -1 = 1
        assert_eq!(w.flags, 0);
        let w = ok(Imul::apply(u64::MAX, 0, 3, 8, v)); // -3: low byte 0xFD, seven bits set
        assert_eq!(w.flags, SF);
        assert_eq!(
            imul_truncating(0x4000_0000_0000_0000, 2, 8, v),
            (0x8000_0000_0000_0000, CF | OF | SF | PF, ARITHMETIC)
        );
        // AMD keeps all four.
        assert_eq!(ok(Mul::apply(0, 0, 0, 1, Vendor::Amd)).changed, CF | OF);
    }

    /// Intel's DIV and IDIV change no status flag (measured natively on a Xeon of family 6,
    /// model 207); AMD's set AF and clear SF, ZF and PF.
    #[test]
    fn divides_change_flags_per_vendor() {
        for (low, high, src) in [(100, 0, 7), (0, 0, 1), (0xFE, 0, 0x7F)] {
            assert_eq!(ok(Div::apply(low, high, src, 1, Vendor::Intel)).changed, 0);
            assert_eq!(ok(Idiv::apply(low, high, src, 1, Vendor::Intel)).changed, 0);
        }
        let w = ok(Div::apply(100, 0, 7, 1, Vendor::Amd));
        assert_eq!((w.flags, w.changed), (AF, SF | ZF | AF | PF));
    }

    #[test]
    fn quotients_and_divide_errors() {
        let v = Vendor::Intel;
        let w = ok(Div::apply(100, 0, 7, 1, v));
        assert_eq!((w.low, w.high), (14, 2));
        // AX = 0x1000 / 0x10 = 0x100: does not fit AL.
        assert_eq!(Div::apply(0x00, 0x10, 0x10, 1, v), Err(DivideError));
        assert_eq!(Div::apply(5, 0, 0, 4, v), Err(DivideError));
        // -7 / 2 = -3 rem -1 (truncation toward zero).
        let w = ok(Idiv::apply(0xFFF9, 0xFFFF, 2, 2, v));
        assert_eq!((w.low, w.high), (0xFFFD, 0xFFFF));
        // The most negative dividend by -1 overflows at every size.
        assert_eq!(Idiv::apply(0x00, 0x80, 0xFF, 1, v), Err(DivideError));
        assert_eq!(
            Idiv::apply(0, 0x8000_0000_0000_0000, u64::MAX, 8, v),
            Err(DivideError)
        );
        assert_eq!(
            Idiv::apply(0x8000_0000, 0xFFFF_FFFF, 0xFFFF_FFFF, 4, v),
            Err(DivideError)
        );
        // -128 / 1 fits; 128 / 1 does not.
        assert!(Idiv::apply(0x80, 0xFF, 1, 1, v).is_ok());
        assert_eq!(Idiv::apply(0x80, 0x00, 1, 1, v), Err(DivideError));
        let w = ok(Idiv::apply(0, 0xFFFF_FFFF_FFFF_FFFF, 2, 8, v));
        assert_eq!((w.low, w.high), (0x8000_0000_0000_0000, 0));
        assert_eq!(
            Idiv::apply(0, 0x4000_0000_0000_0000, 1, 8, v),
            Err(DivideError)
        );
    }
}
