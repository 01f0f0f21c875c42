//! Shifts and rotates with a memory destination: SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR by 1,
//! by `imm8` and by CL, and the double shifts SHLD and SHRD by `imm8` and by CL (SDM Vol. 2B
//! "RCL/RCR/ROL/ROR", "SAL/SAR/SHL/SHR", "SHLD", "SHRD"; AMD APM Vol. 3 for the same
//! instructions). Each operation is a zero-sized type implementing [`ShiftOp`], so one generic
//! routine, [`run_op`], runs the family.
//!
//! # Count
//!
//! The count (1, `imm8` or CL) is masked to 5 bits, or 6 with a 64-bit operand. RCL and RCR
//! at 8 and 16 bits rotate through CF by the masked count modulo 9 and 17; ROL and ROR rotate
//! by the masked count modulo the operand width.
//!
//! # Memory
//!
//! The destination is read-modify-write, all or nothing, as in [`super::alu`]: segmentation,
//! canonical form, alignment and translation of every page are checked once for reading and
//! writing (a fault is reported as a write) before the read; then one read, one write of the
//! same bytes. The write happens for every count, 0 included, with the unchanged value when
//! nothing moves. The SDM does not say whether the processor stores when the count is 0 (RAM
//! cannot tell), but the access is a read-modify-write checked for writing either way; hvemu
//! writes as KVM's emulator does (`writeback()` in arch/x86/kvm/emulate.c), so a device sees
//! the same accesses under both. No LOCK form exists (iced-x86 rejects it).
//!
//! # Flags
//!
//! A masked count of 0 changes no flag. Otherwise, as the manuals define them:
//!
//! * SHL/SAL, SHR, SAR: CF is the last bit shifted out; SF, ZF and PF describe the result; OF
//!   at a count of 1 is MSB(result) XOR CF for SHL, the original MSB for SHR, 0 for SAR.
//! * ROL, ROR, RCL, RCR: only CF (the bit rotated into the LSB for ROL, the MSB for ROR, the bit
//!   rotated out for RCL/RCR) and OF; OF at a count of 1 is MSB(result) XOR CF for ROL and
//!   RCL, the two top bits of the result XORed for ROR and RCR. A ROL/ROR masked count that is
//!   a multiple of 8 (16) at 8 (16) bits rotates nothing but still sets CF and OF so.
//! * SHLD, SHRD: CF the last bit shifted out of the destination; SF, ZF, PF from the result; OF
//!   at a count of 1 as for SHL and SHR. A 16-bit operand shifted by 16 receives the source.
//!
//! Where the manuals leave a flag (or the result) undefined, hvemu produces, per
//! [`crate::Vendor`] (*n* is the operand width, "expression" the count-1 OF above):
//!
//! | case | undefined | `Vendor::Amd` (Zen 3) | `Vendor::Intel` (Xeon, family 6 model 207) |
//! |---|---|---|---|
//! | SHL/SAL, SHR, SAR, count > 1 | OF | the expression: SHL MSB(result) XOR CF; SHR and SAR 0 | the OF of a count of 1 on the operand: SHL its two top bits XORed, SHR its MSB, SAR 0 |
//! | SHL/SAL, SHR, SAR, any count | AF | 1 | 0 |
//! | SHL, SHR at 8/16 bits, count ≥ *n* | CF | the iterative definition's last bit out (0 beyond *n*) | the same |
//! | ROL, ROR, RCL, RCR, count > 1 | OF | the expression | the OF of a count of 1: ROL and RCL the operand's two top bits XORed, ROR its MSB XOR its LSB, RCR its MSB XOR CF |
//! | RCL, RCR, masked count a multiple of 9 (8-bit) or 17 (16-bit) | OF | the expression on the unchanged value; nothing else changes | nothing changes |
//! | SHLD, SHRD, count > 1 | OF | SHLD: CF XOR bit *n*−1 of (destination << count); SHRD: the expression | the OF of a count of 1: SHLD the destination's two top bits XORed, SHRD its MSB XOR the source's LSB |
//! | SHLD, SHRD, any count | AF | 1 | 0 |
//! | SHLD, SHRD at 16 bits, count 17..31 | result, all flags | the source rotated by count−16, CF 0 (so SHLD's OF 0) | destination:source:destination shifted, CF the last bit out |
//!
//! So on Intel the OF of every shift and rotate, whatever the count, is the one its first
//! one-bit step produces; hvemu computes it so ([`ShiftOp::update`]).
//!
//! Both columns were measured natively with tens of millions of random operands, counts and
//! flags, plus every count 0..=255 on edge values, in the CL, `imm8` and by-1 forms: AMD on a
//! Zen 3, Intel on a Xeon of family 6, model 207 (Emerald Rapids). Other Intel generations
//! were not measured and may differ (the Bochs-derived model hvemu used before, which takes
//! OF from the result, does not describe this core). The `oracle_integer` test compares them
//! with the host whenever the host's vendor is the configured one.

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::flags::{AF, ARITHMETIC, CF, OF, Update, flag_if, result_flags, top_bit};
use super::unsupported;
use crate::access::Intent;
use crate::callbacks::EmulatorCallbacks;
use crate::config::Vendor;
use crate::state::{Cpu, Res, bit_width, width_mask};

/// One shift or rotate: the destination value after a masked, non-zero count, with its flags.
pub(crate) trait ShiftOp {
    /// Whether a register supplies the bits shifted in (SHLD, SHRD).
    const DOUBLE: bool;
    /// `value` (the `size`-byte destination) shifted by `count` (already masked, 1..=63);
    /// `src` is the register shifted in by SHLD and SHRD (0 otherwise), `rflags` RFLAGS before
    /// (for RCL's and RCR's carry in).
    fn apply(value: u64, src: u64, count: u32, rflags: u64, size: usize, vendor: Vendor) -> Update;

    /// [`ShiftOp::apply`] with the vendor's OF: Intel gives, at every count, the OF of the
    /// first one-bit step (the count-1 OF, which the manuals define, of the same operands).
    fn update(
        value: u64,
        src: u64,
        count: u32,
        rflags: u64,
        size: usize,
        vendor: Vendor,
    ) -> Update {
        let update = Self::apply(value, src, count, rflags, size, vendor);
        if vendor != Vendor::Intel || count == 1 || update.changed & OF == 0 {
            return update;
        }
        let first = Self::apply(value, src, 1, rflags, size, vendor);
        Update {
            flags: (update.flags & !OF) | (first.flags & OF),
            ..update
        }
    }
}

/// SHL and SAL.
pub(crate) struct Shl;
/// SHR.
pub(crate) struct Shr;
/// SAR.
pub(crate) struct Sar;
/// ROL.
pub(crate) struct Rol;
/// ROR.
pub(crate) struct Ror;
/// RCL.
pub(crate) struct Rcl;
/// RCR.
pub(crate) struct Rcr;
/// SHLD.
pub(crate) struct Shld;
/// SHRD.
pub(crate) struct Shrd;

// Shift amounts below are differences of counts and widths, computed with `wrapping_sub`: each
// is either in range by its branch's condition, or goes to `bit`, `checked_shl` or
// `checked_shr`, which take an amount beyond the width (a wrapped one included) as shifting
// every bit out.

/// Bit `i` of `v` (false beyond bit 63).
fn bit(v: u64, i: u32) -> bool {
    v.checked_shr(i).is_some_and(|x| x & 1 != 0)
}

/// The period of RCL and RCR: the operand width plus CF.
fn carry_period(size: usize) -> u32 {
    match size {
        1 => 9,
        2 => 17,
        4 => 33,
        _ => 65,
    }
}

/// `count` modulo `period` (a width or a carry period, never 0).
fn modulo(count: u32, period: u32) -> u32 {
    count.checked_rem(period).unwrap_or(0)
}

/// The two top bits of a result XORed: OF of SHR, ROR, RCR and SHRD.
fn top_two_differ(result: u64, size: usize) -> bool {
    let msb = top_bit(size);
    (result & msb != 0) != (result & (msb >> 1) != 0)
}

/// AF after a shift: undefined; AMD sets it, Intel clears it (both measured).
fn shift_af(vendor: Vendor) -> u64 {
    match vendor {
        Vendor::Amd => AF,
        Vendor::Intel => 0,
    }
}

/// The update of a shift: CF and OF as given, SF/ZF/PF from the result, AF per vendor.
fn shifted(result: u64, cf: bool, of: bool, size: usize, vendor: Vendor) -> Update {
    Update {
        value: result,
        flags: result_flags(result, size) | flag_if(cf, CF) | flag_if(of, OF) | shift_af(vendor),
        changed: ARITHMETIC,
    }
}

/// The update of a rotate: only CF and OF change.
fn rotated(result: u64, cf: bool, of: bool) -> Update {
    Update {
        value: result,
        flags: flag_if(cf, CF) | flag_if(of, OF),
        changed: CF | OF,
    }
}

impl ShiftOp for Shl {
    const DOUBLE: bool = false;
    fn apply(v: u64, _: u64, count: u32, _: u64, size: usize, vendor: Vendor) -> Update {
        let n = bit_width(size);
        let result = v.checked_shl(count).unwrap_or(0) & width_mask(size);
        let cf = count <= n && bit(v, n.wrapping_sub(count));
        let of = cf != (result & top_bit(size) != 0);
        shifted(result, cf, of, size, vendor)
    }
}

impl ShiftOp for Shr {
    const DOUBLE: bool = false;
    fn apply(v: u64, _: u64, count: u32, _: u64, size: usize, vendor: Vendor) -> Update {
        let v = v & width_mask(size);
        let result = v.checked_shr(count).unwrap_or(0);
        let cf = bit(v, count.wrapping_sub(1));
        shifted(result, cf, top_two_differ(result, size), size, vendor)
    }
}

impl ShiftOp for Sar {
    const DOUBLE: bool = false;
    fn apply(v: u64, _: u64, count: u32, _: u64, size: usize, vendor: Vendor) -> Update {
        let signed = super::mov::sign_extend(v, size) as i64;
        let result = (signed >> count.min(63)) as u64 & width_mask(size);
        let cf = (signed >> count.wrapping_sub(1).min(63)) & 1 != 0;
        shifted(result, cf, false, size, vendor)
    }
}

/// `v` rotated left by `r` within `n` bits (`r < n`).
fn rotate_left(v: u64, r: u32, size: usize) -> u64 {
    let n = bit_width(size);
    let v = v & width_mask(size);
    if r == 0 {
        return v;
    }
    (v.checked_shl(r).unwrap_or(0) | v.checked_shr(n.wrapping_sub(r)).unwrap_or(0))
        & width_mask(size)
}

impl ShiftOp for Rol {
    const DOUBLE: bool = false;
    fn apply(v: u64, _: u64, count: u32, _: u64, size: usize, _: Vendor) -> Update {
        let n = bit_width(size);
        let result = rotate_left(v, modulo(count, n), size);
        let cf = result & 1 != 0;
        rotated(result, cf, cf != (result & top_bit(size) != 0))
    }
}

impl ShiftOp for Ror {
    const DOUBLE: bool = false;
    fn apply(v: u64, _: u64, count: u32, _: u64, size: usize, _: Vendor) -> Update {
        let n = bit_width(size);
        // Right by r is left by (n − r) mod n.
        let result = rotate_left(v, modulo(n.wrapping_sub(modulo(count, n)), n), size);
        let cf = result & top_bit(size) != 0;
        rotated(result, cf, top_two_differ(result, size))
    }
}

/// The (n+1)-bit quantity CF:value rotated left by `r` (`r` ≤ n); returns (value, CF).
fn rotate_through_carry(v: u64, carry: bool, r: u32, size: usize) -> (u64, bool) {
    let n = bit_width(size);
    let period = carry_period(size);
    let all = !(u128::MAX << period);
    let x = (u128::from(carry) << n) | u128::from(v & width_mask(size));
    let x = if r == 0 {
        x
    } else {
        ((x << r) | x.checked_shr(period.wrapping_sub(r)).unwrap_or(0)) & all
    };
    ((x as u64) & width_mask(size), (x >> n) & 1 != 0)
}

/// RCL and RCR: `left` rotates left. The rotation is the masked count modulo width+1.
fn rotate_carry(
    v: u64,
    count: u32,
    rflags: u64,
    size: usize,
    vendor: Vendor,
    left: bool,
) -> Update {
    let period = carry_period(size);
    let r = modulo(count, period);
    if r == 0 && vendor == Vendor::Intel {
        return Update::nothing(v & width_mask(size));
    }
    let r = if left {
        r
    } else {
        modulo(period.wrapping_sub(r), period)
    };
    let (result, cf) = rotate_through_carry(v, rflags & CF != 0, r, size);
    let of = if left {
        cf != (result & top_bit(size) != 0)
    } else {
        top_two_differ(result, size)
    };
    rotated(result, cf, of)
}

impl ShiftOp for Rcl {
    const DOUBLE: bool = false;
    fn apply(v: u64, _: u64, count: u32, rflags: u64, size: usize, vendor: Vendor) -> Update {
        rotate_carry(v, count, rflags, size, vendor, true)
    }
}

impl ShiftOp for Rcr {
    const DOUBLE: bool = false;
    fn apply(v: u64, _: u64, count: u32, rflags: u64, size: usize, vendor: Vendor) -> Update {
        rotate_carry(v, count, rflags, size, vendor, false)
    }
}

impl ShiftOp for Shld {
    const DOUBLE: bool = true;
    fn apply(v: u64, src: u64, count: u32, _: u64, size: usize, vendor: Vendor) -> Update {
        let n = bit_width(size);
        let mask = width_mask(size);
        let (v, src) = (v & mask, src & mask);
        let (result, cf) = if count < n {
            let result = (v.checked_shl(count).unwrap_or(0)
                | src.checked_shr(n.wrapping_sub(count)).unwrap_or(0))
                & mask;
            (result, bit(v, n.wrapping_sub(count)))
        } else if count == n {
            // Only a 16-bit operand gets here (count ≤ 31): the source replaces it.
            (src, bit(v, 0))
        } else {
            let k = count.wrapping_sub(16);
            match vendor {
                // The source rotated by count-16; CF cleared.
                Vendor::Amd => (rotate_left(src, k % 16, 2), false),
                // destination:source:destination shifted left, the top 16 bits kept.
                Vendor::Intel => (
                    (src.checked_shl(k).unwrap_or(0)
                        | v.checked_shr(32u32.wrapping_sub(count)).unwrap_or(0))
                        & mask,
                    bit(src, 32u32.wrapping_sub(count)),
                ),
            }
        };
        // CF XOR bit n-1 of the destination shifted left by the count (AMD's OF; Intel's is
        // the count-1 OF, see `ShiftOp::update`).
        let of = cf != (count < n && result & top_bit(size) != 0);
        shifted(result, cf, of, size, vendor)
    }
}

impl ShiftOp for Shrd {
    const DOUBLE: bool = true;
    fn apply(v: u64, src: u64, count: u32, _: u64, size: usize, vendor: Vendor) -> Update {
        let n = bit_width(size);
        let mask = width_mask(size);
        let (v, src) = (v & mask, src & mask);
        let (result, cf) = if count < n {
            let result = (v.checked_shr(count).unwrap_or(0)
                | src.checked_shl(n.wrapping_sub(count)).unwrap_or(0))
                & mask;
            (result, bit(v, count.wrapping_sub(1)))
        } else if count == n {
            (src, bit(v, n.wrapping_sub(1)))
        } else {
            let k = count.wrapping_sub(16);
            match vendor {
                Vendor::Amd => (rotate_left(src, 16u32.wrapping_sub(k % 16) % 16, 2), false),
                // destination:source:destination shifted right, the low 16 bits kept.
                Vendor::Intel => (
                    (src.checked_shr(k).unwrap_or(0)
                        | v.checked_shl(32u32.wrapping_sub(count)).unwrap_or(0))
                        & mask,
                    bit(src, count.wrapping_sub(17)),
                ),
            }
        };
        shifted(result, cf, top_two_differ(result, size), size, vendor)
    }
}

/// Which operation, as [`super::Family::Shift`] carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShiftKind {
    /// SHL and SAL.
    Shl,
    /// SHR.
    Shr,
    /// SAR.
    Sar,
    /// ROL.
    Rol,
    /// ROR.
    Ror,
    /// RCL.
    Rcl,
    /// RCR.
    Rcr,
    /// SHLD.
    Shld,
    /// SHRD.
    Shrd,
}

/// The operation of a shift or rotate with a memory destination; `None` for anything else.
pub(super) fn classify(instr: &Instruction) -> Option<ShiftKind> {
    let kind = match instr.mnemonic() {
        Mnemonic::Shl | Mnemonic::Sal => ShiftKind::Shl,
        Mnemonic::Shr => ShiftKind::Shr,
        Mnemonic::Sar => ShiftKind::Sar,
        Mnemonic::Rol => ShiftKind::Rol,
        Mnemonic::Ror => ShiftKind::Ror,
        Mnemonic::Rcl => ShiftKind::Rcl,
        Mnemonic::Rcr => ShiftKind::Rcr,
        Mnemonic::Shld => ShiftKind::Shld,
        Mnemonic::Shrd => ShiftKind::Shrd,
        _ => return None,
    };
    (instr.op0_kind() == OpKind::Memory).then_some(kind)
}

/// Runs the operation.
pub(super) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    kind: ShiftKind,
) -> Res<(), C> {
    match kind {
        ShiftKind::Shl => run_op::<Shl, C>(cpu, instr),
        ShiftKind::Shr => run_op::<Shr, C>(cpu, instr),
        ShiftKind::Sar => run_op::<Sar, C>(cpu, instr),
        ShiftKind::Rol => run_op::<Rol, C>(cpu, instr),
        ShiftKind::Ror => run_op::<Ror, C>(cpu, instr),
        ShiftKind::Rcl => run_op::<Rcl, C>(cpu, instr),
        ShiftKind::Rcr => run_op::<Rcr, C>(cpu, instr),
        ShiftKind::Shld => run_op::<Shld, C>(cpu, instr),
        ShiftKind::Shrd => run_op::<Shrd, C>(cpu, instr),
    }
}

/// The count operand: CL, or an immediate (the "by 1" forms carry an immediate 1).
fn count<C: EmulatorCallbacks>(cpu: &mut Cpu<'_, C>, instr: &Instruction, op: u32) -> Res<u32, C> {
    let raw = match instr.op_kind(op) {
        OpKind::Register => cpu.read_reg(instr.op_register(op))?,
        OpKind::Immediate8 => instr.immediate(op),
        _ => return Err(unsupported(instr)),
    };
    Ok((raw & 0xFF) as u32)
}

/// The one routine of the family: resolve the destination for read and write, read it, apply
/// `O` (or nothing for a masked count of 0), write it back and merge the flags.
pub(crate) fn run_op<O: ShiftOp, C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
) -> Res<(), C> {
    let size = instr.memory_size().size();
    if !matches!(size, 1 | 2 | 4 | 8) || instr.op0_kind() != OpKind::Memory {
        return Err(unsupported(instr));
    }
    let (src, count) = if O::DOUBLE {
        if instr.op1_kind() != OpKind::Register {
            return Err(unsupported(instr));
        }
        (cpu.read_reg(instr.op1_register())?, count(cpu, instr, 2)?)
    } else {
        (0, count(cpu, instr, 1)?)
    };
    let masked = count & if size == 8 { 0x3F } else { 0x1F };
    let mem = cpu.effective_address(instr)?;
    // Every fault is found here, before the read.
    let span = cpu.resolve(mem, size, Intent::ReadWrite)?;
    let value = cpu.read_span_value(&span, size)?;
    let rflags = cpu.state.rflags;
    let update = if masked == 0 {
        Update::nothing(value)
    } else {
        O::update(value, src, masked, rflags, size, cpu.config.vendor)
    };
    cpu.write_value(&span, update.value, size)?;
    cpu.state.rflags = update.rflags(rflags);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execute::flags::{PF, SF, ZF};

    const VENDORS: [Vendor; 2] = [Vendor::Intel, Vendor::Amd];

    /// Calls `f` for every operation and size it has, every count below the width's mask
    /// (1..=31, or 1..=63 for 64-bit), every value and both incoming CFs.
    fn each_case(values: &[u64], mut f: impl FnMut(ShiftKind, usize, u32, u64, bool)) {
        let kinds = [
            ShiftKind::Shl,
            ShiftKind::Shr,
            ShiftKind::Sar,
            ShiftKind::Rol,
            ShiftKind::Ror,
            ShiftKind::Rcl,
            ShiftKind::Rcr,
            ShiftKind::Shld,
            ShiftKind::Shrd,
        ];
        for kind in kinds {
            for size in [1usize, 2, 4, 8] {
                if matches!(kind, ShiftKind::Shld | ShiftKind::Shrd) && size == 1 {
                    continue;
                }
                let limit = if size == 8 { 63 } else { 31 };
                for count in 1..=limit {
                    for &v in values {
                        for cf_in in [false, true] {
                            f(kind, size, count, v, cf_in);
                        }
                    }
                }
            }
        }
    }

    /// The SDM's iterative pseudo-code, one bit at a time: the reference for the results and
    /// CF of every count (and OF at count 1).
    fn iterate(
        kind: ShiftKind,
        v: u64,
        src: u64,
        count: u32,
        cf_in: bool,
        size: usize,
    ) -> (u64, bool) {
        let n = bit_width(size);
        let mask = width_mask(size);
        let msb = top_bit(size);
        let (mut v, mut cf) = (v & mask, cf_in);
        let steps = match kind {
            ShiftKind::Rol | ShiftKind::Ror => count % n,
            ShiftKind::Rcl | ShiftKind::Rcr => count % (n + 1),
            _ => count,
        };
        for i in 0..steps {
            match kind {
                ShiftKind::Shl => {
                    cf = v & msb != 0;
                    v = (v << 1) & mask;
                }
                ShiftKind::Shr => {
                    cf = v & 1 != 0;
                    v >>= 1;
                }
                ShiftKind::Sar => {
                    cf = v & 1 != 0;
                    v = (v >> 1) | (v & msb);
                }
                ShiftKind::Rol => {
                    let top = v & msb != 0;
                    v = ((v << 1) & mask) | u64::from(top);
                    cf = top;
                }
                ShiftKind::Ror => {
                    let low = v & 1 != 0;
                    v = (v >> 1) | if low { msb } else { 0 };
                    cf = low;
                }
                ShiftKind::Rcl => {
                    let top = v & msb != 0;
                    v = ((v << 1) & mask) | u64::from(cf);
                    cf = top;
                }
                ShiftKind::Rcr => {
                    let low = v & 1 != 0;
                    v = (v >> 1) | if cf { msb } else { 0 };
                    cf = low;
                }
                ShiftKind::Shld => {
                    cf = v & msb != 0;
                    let incoming = (src >> (n - 1 - (i % n))) & 1;
                    v = ((v << 1) & mask) | incoming;
                }
                ShiftKind::Shrd => {
                    cf = v & 1 != 0;
                    let incoming = (src >> (i % n)) & 1;
                    v = (v >> 1) | if incoming != 0 { msb } else { 0 };
                }
            }
        }
        if matches!(kind, ShiftKind::Rol) && count % n == 0 {
            cf = v & 1 != 0;
        }
        if matches!(kind, ShiftKind::Ror) && count % n == 0 {
            cf = v & msb != 0;
        }
        (v, cf)
    }

    fn apply(
        kind: ShiftKind,
        v: u64,
        src: u64,
        count: u32,
        rflags: u64,
        size: usize,
        vendor: Vendor,
    ) -> Update {
        match kind {
            ShiftKind::Shl => Shl::update(v, src, count, rflags, size, vendor),
            ShiftKind::Shr => Shr::update(v, src, count, rflags, size, vendor),
            ShiftKind::Sar => Sar::update(v, src, count, rflags, size, vendor),
            ShiftKind::Rol => Rol::update(v, src, count, rflags, size, vendor),
            ShiftKind::Ror => Ror::update(v, src, count, rflags, size, vendor),
            ShiftKind::Rcl => Rcl::update(v, src, count, rflags, size, vendor),
            ShiftKind::Rcr => Rcr::update(v, src, count, rflags, size, vendor),
            ShiftKind::Shld => Shld::update(v, src, count, rflags, size, vendor),
            ShiftKind::Shrd => Shrd::update(v, src, count, rflags, size, vendor),
        }
    }

    /// The OF the manuals define for a count of 1, from the operand `v` and the one-step
    /// result and CF.
    fn count_one_of(kind: ShiftKind, v: u64, result: u64, cf: bool, size: usize) -> bool {
        let msb = top_bit(size);
        match kind {
            ShiftKind::Shl | ShiftKind::Rol | ShiftKind::Rcl | ShiftKind::Shld => {
                (result & msb != 0) != cf
            }
            ShiftKind::Shr => v & width_mask(size) & msb != 0,
            ShiftKind::Sar => false,
            _ => (result & msb != 0) != (result & (msb >> 1) != 0),
        }
    }

    /// Where the manuals define them (counts below the width, and RCL/RCR rotations that move
    /// something), results and CF are the iterative definition's, for both vendors.
    #[test]
    fn defined_results_follow_the_iterative_definition() {
        let values = [
            0u64,
            1,
            0x80,
            0x8001,
            0x1234_5678_9ABC_DEF0,
            u64::MAX,
            0x7FFF_FFFF,
        ];
        each_case(&values, |kind, size, count, v, cf_in| {
            let n = bit_width(size);
            let double = matches!(kind, ShiftKind::Shld | ShiftKind::Shrd);
            if double && count >= n {
                return;
            }
            let src = v.rotate_left(13) ^ 0xA5A5;
            let (want, want_cf) = iterate(kind, v, src & width_mask(size), count, cf_in, size);
            for vendor in VENDORS {
                let u = apply(
                    kind,
                    v,
                    src,
                    count,
                    if cf_in { CF } else { 0 },
                    size,
                    vendor,
                );
                if u.changed == 0 {
                    // Intel's RCL/RCR by a multiple of width+1.
                    assert_eq!(want, v & width_mask(size));
                    continue;
                }
                assert_eq!(u.value, want, "{kind:?} {size} {v:#x} by {count}");
                let undefined_cf = matches!(kind, ShiftKind::Shl | ShiftKind::Shr) && count >= n;
                if !undefined_cf {
                    assert_eq!(
                        u.flags & CF != 0,
                        want_cf,
                        "{kind:?} {size} {v:#x} by {count} CF"
                    );
                }
                if count == 1 {
                    let of = count_one_of(kind, v, want, want_cf, size);
                    assert_eq!(u.flags & OF != 0, of, "{kind:?} {size} {v:#x} OF");
                }
            }
        });
    }

    #[test]
    fn examples() {
        // shl byte 0x81 by 1: CF from bit 7, OF = MSB ^ CF, AF per vendor.
        let u = Shl::apply(0x81, 0, 1, 0, 1, Vendor::Amd);
        assert_eq!((u.value, u.flags), (0x02, CF | OF | AF));
        let u = Shl::apply(0x81, 0, 1, 0, 1, Vendor::Intel);
        assert_eq!((u.value, u.flags), (0x02, CF | OF));
        // sar word 0x8000 by 15: all ones.
        let u = Sar::apply(0x8000, 0, 15, 0, 2, Vendor::Intel);
        assert_eq!((u.value, u.flags), (0xFFFF, SF | PF));
        // shr dword 1 by 1: zero with CF.
        let u = Shr::apply(1, 0, 1, 0, 4, Vendor::Intel);
        assert_eq!((u.value, u.flags), (0, CF | ZF | PF));
        // rcl byte 0x80 by 1 with CF=1: 0x01, CF=1.
        let u = Rcl::apply(0x80, 0, 1, CF, 1, Vendor::Intel);
        assert_eq!((u.value, u.flags & CF), (0x01, CF));
        // rcl byte by 9 (a full turn through CF): Intel changes nothing, AMD only OF.
        assert_eq!(Rcl::apply(0x81, 0, 9, CF, 1, Vendor::Intel).changed, 0);
        let u = Rcl::apply(0x81, 0, 9, 0, 1, Vendor::Amd);
        assert_eq!((u.value, u.flags), (0x81, OF));
        // 16-bit SHLD by 24: AMD rotates the source, Intel shifts dst:src:dst.
        assert_eq!(
            Shld::apply(0x1234, 0xABCD, 24, 0, 2, Vendor::Amd).value,
            0xCDAB
        );
        assert_eq!(
            Shld::apply(0x1234, 0xABCD, 24, 0, 2, Vendor::Intel).value,
            0xCD12
        );
        assert_eq!(
            Shrd::apply(0x1234, 0xABCD, 24, 0, 2, Vendor::Amd).value,
            0xCDAB
        );
        assert_eq!(
            Shrd::apply(0x1234, 0xABCD, 24, 0, 2, Vendor::Intel).value,
            0x34AB
        );
    }

    /// Intel's OF at every count, measured natively on a Xeon of family 6, model 207 (all nine
    /// operations at every size, counts 0..=255, CL, `imm8` and by-1 forms): the OF of the
    /// first one-bit step on the original operands, whatever the count.
    #[test]
    fn intel_of_is_the_first_steps_at_every_count() {
        let values = [
            0u64,
            1,
            0x40,
            0x80,
            0xC0,
            0x4001,
            0x8000_0001,
            u64::MAX,
            0x6000_0000,
        ];
        each_case(&values, |kind, size, count, v, cf_in| {
            let src = v.rotate_right(7) ^ 0x5A5A;
            let rflags = if cf_in { CF } else { 0 };
            let u = apply(kind, v, src, count, rflags, size, Vendor::Intel);
            if u.changed == 0 {
                return;
            }
            let mask = width_mask(size);
            let (first, first_cf) = iterate(kind, v, src & mask, 1, cf_in, size);
            let of = count_one_of(kind, v, first, first_cf, size);
            assert_eq!(u.flags & OF != 0, of, "{kind:?} {size} {v:#x} by {count}");
        });
    }

    /// Single cases run natively on a Xeon of family 6, model 207 (RFLAGS in by POPFQ, out by
    /// PUSHFQ), where Intel's undefined flags differ from AMD's.
    #[test]
    fn intel_examples_measured_natively() {
        let intel = |kind, v, src, count, rflags, size| {
            let u = apply(kind, v, src, count, rflags, size, Vendor::Intel);
            (u.value, u.flags & u.changed)
        };
        // rol byte 0x01 by 7: 0x80; OF clear (bits 7 and 6 of 0x01 agree).
        assert_eq!(intel(ShiftKind::Rol, 0x01, 0, 7, 0, 1), (0x80, 0));
        // shl byte 0xC0 by 2: zero, CF from bit 6; OF clear (bits 7 and 6 agree); AF clear.
        assert_eq!(intel(ShiftKind::Shl, 0xC0, 0, 2, 0, 1), (0, CF | ZF | PF));
        // shr word 0x8000 by 4: OF is the operand's MSB.
        assert_eq!(intel(ShiftKind::Shr, 0x8000, 0, 4, 0, 2), (0x0800, OF | PF));
        // sar dword 0x8000_0000 by 31: all ones, OF clear.
        assert_eq!(
            intel(ShiftKind::Sar, 0x8000_0000, 0, 31, 0, 4),
            (0xFFFF_FFFF, SF | PF)
        );
        // ror dword 1 by 4: OF = MSB XOR LSB of the operand.
        assert_eq!(intel(ShiftKind::Ror, 1, 0, 4, 0, 4), (0x1000_0000, OF));
        // rcl word 0x4000 by 3, CF clear: OF = bit 15 XOR bit 14 of the operand.
        assert_eq!(intel(ShiftKind::Rcl, 0x4000, 0, 3, 0, 2), (0x0001, OF));
        // rcr byte 0x01 by 2, CF set: OF = CF XOR the operand's MSB.
        assert_eq!(intel(ShiftKind::Rcr, 0x01, 0, 2, CF, 1), (0xC0, OF));
        // shld dword 0xC000_0000 by 2: zero, CF from bit 30, OF clear.
        assert_eq!(
            intel(ShiftKind::Shld, 0xC000_0000, 0, 2, 0, 4),
            (0, CF | ZF | PF)
        );
        // shrd dword 0, source 1, by 0x3E (masked to 30 by the caller): OF = the
        // destination's MSB XOR the source's LSB.
        assert_eq!(intel(ShiftKind::Shrd, 0, 1, 0x3E & 0x1F, 0, 4), (4, OF));
        // 16-bit double shifts by 24 (destination:source:destination).
        assert_eq!(
            intel(ShiftKind::Shld, 0x1234, 0xABCD, 24, 0, 2),
            (0xCD12, CF | SF | PF)
        );
        assert_eq!(
            intel(ShiftKind::Shrd, 0x1234, 0xABCD, 24, 0, 2),
            (0x34AB, CF | OF)
        );
        // The same operands where AMD takes OF from the result instead.
        let amd = |kind, v, src, count, rflags, size| {
            apply(kind, v, src, count, rflags, size, Vendor::Amd).flags & OF
        };
        assert_eq!(amd(ShiftKind::Rol, 0x01, 0, 7, 0, 1), OF);
        assert_eq!(amd(ShiftKind::Shl, 0xC0, 0, 2, 0, 1), OF);
        assert_eq!(amd(ShiftKind::Ror, 1, 0, 4, 0, 4), 0);
    }
}

/// The five integer families of this change (bits, shifts, multiply/divide, conditional,
/// MOVBE/MOVNTI) over iced-x86's codes.
#[cfg(test)]
mod forms {
    extern crate std;

    use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};
    use std::collections::BTreeMap;
    use std::format;
    use std::vec::Vec;

    use crate::execute::{Family, bits, cond, movx, muldiv, shift};

    fn memory(instr: &Instruction) -> bool {
        (0..instr.op_count()).any(|i| instr.op_kind(i) == OpKind::Memory)
    }

    /// Which of the five families takes the instruction.
    fn family(instr: &Instruction) -> Option<&'static str> {
        if bits::classify(instr).is_some() {
            Some("bits")
        } else if shift::classify(instr).is_some() {
            Some("shift")
        } else if muldiv::classify(instr).is_some() {
            Some("muldiv")
        } else if cond::classify(instr).is_some() {
            Some("cond")
        } else if movx::classify(instr).is_some() {
            Some("movx")
        } else {
            None
        }
    }

    /// Every legacy encoding in the one-byte, 0F and 0F 38 maps, in 16-, 32- and 64-bit code,
    /// with the operand-size, REX.W, LOCK and REP prefixes, with a memory and a register ModRM.
    fn samples() -> Vec<Instruction> {
        let mut out = Vec::new();
        let prefixes: [&[u8]; 9] = [
            &[],
            &[0x66],
            &[0x48],
            &[0xF0],
            &[0xF0, 0x66],
            &[0xF0, 0x48],
            &[0xF3],
            &[0xF3, 0x66],
            &[0xF3, 0x48],
        ];
        for bitness in [16, 32, 64] {
            for prefix in prefixes {
                if bitness != 64 && prefix.contains(&0x48) {
                    continue;
                }
                for map in [&[][..], &[0x0F][..], &[0x0F, 0x38][..]] {
                    for opcode in 0..=0xFFu8 {
                        for modrm in (0..8u8).flat_map(|reg| [reg << 3, 0xC0 | reg << 3]) {
                            let mut bytes = Vec::from(prefix);
                            bytes.extend_from_slice(map);
                            bytes.extend_from_slice(&[opcode, modrm, 0x21, 0, 0, 0, 0, 0]);
                            let mut decoder = Decoder::new(bitness, &bytes, DecoderOptions::NONE);
                            let instr = decoder.decode();
                            if !instr.is_invalid() {
                                out.push(instr);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// The memory-capable codes of the families' mnemonics, by iced-x86's names.
    fn expected() -> BTreeMap<Code, ()> {
        Code::values()
            .filter(|c| {
                let name = format!("{c:?}");
                let legacy = !name.starts_with("VEX_") && !name.starts_with("EVEX_");
                let memory = name.contains("rm") || name.contains("_m");
                let ours = matches!(
                    c.mnemonic(),
                    Mnemonic::Bt
                        | Mnemonic::Bts
                        | Mnemonic::Btr
                        | Mnemonic::Btc
                        | Mnemonic::Bsf
                        | Mnemonic::Bsr
                        | Mnemonic::Popcnt
                        | Mnemonic::Lzcnt
                        | Mnemonic::Tzcnt
                        | Mnemonic::Rol
                        | Mnemonic::Ror
                        | Mnemonic::Rcl
                        | Mnemonic::Rcr
                        | Mnemonic::Shl
                        | Mnemonic::Sal
                        | Mnemonic::Shr
                        | Mnemonic::Sar
                        | Mnemonic::Shld
                        | Mnemonic::Shrd
                        | Mnemonic::Mul
                        | Mnemonic::Imul
                        | Mnemonic::Div
                        | Mnemonic::Idiv
                        | Mnemonic::Movbe
                        | Mnemonic::Movnti
                        | Mnemonic::Movdiri
                        | Mnemonic::Movdir64b
                ) || name.starts_with("Set") && name.ends_with("_rm8")
                    || name.starts_with("Cmov") && name.contains("_rm");
                legacy && memory && ours
            })
            .map(|c| (c, ()))
            .collect()
    }

    #[test]
    fn every_form_has_a_memory_operand_and_none_is_missing() {
        let expected = expected();
        let mut accepted: BTreeMap<Code, &'static str> = BTreeMap::new();
        let mut register_forms = 0;
        for instr in samples() {
            match family(&instr) {
                Some(name) => {
                    assert!(
                        memory(&instr),
                        "{:?} accepted without a memory operand",
                        instr.code()
                    );
                    // Nothing earlier in the dispatch takes it instead.
                    let dispatched = Family::of(&instr);
                    assert!(
                        matches!(
                            dispatched,
                            Some(
                                Family::Bits(_)
                                    | Family::Shift(_)
                                    | Family::MulDiv(_)
                                    | Family::Cond(_)
                                    | Family::MovX(_)
                            )
                        ),
                        "{:?} dispatched to {dispatched:?}",
                        instr.code()
                    );
                    accepted.insert(instr.code(), name);
                }
                None if expected.contains_key(&instr.code()) => {
                    // The same code with a register operand: no memory exit can come from it.
                    assert!(!memory(&instr), "{:?} with memory refused", instr.code());
                    register_forms += 1;
                }
                None => {}
            }
        }
        let got: Vec<Code> = accepted.keys().copied().collect();
        let want: Vec<Code> = expected.keys().copied().collect();
        assert_eq!(got, want);
        let count = |family: &str| accepted.values().filter(|f| **f == family).count();
        std::println!(
            "integer families: {} iced-x86 Code values (bits {}, shifts {}, multiply/divide {}, conditional {}, MOVBE/MOVNTI {}); {} register-only samples refused",
            got.len(),
            count("bits"),
            count("shift"),
            count("muldiv"),
            count("cond"),
            count("movx"),
            register_forms,
        );
        // BT/BTS/BTR/BTC × (r/m,r; r/m,imm8) × 3 sizes, five scans × 3 sizes.
        assert_eq!(count("bits"), 4 * 2 * 3 + 5 * 3);
        // Seven shifts and SAL's /6 alias × (1, imm8, CL) × 4 sizes; SHLD/SHRD × 2 × 3.
        assert_eq!(count("shift"), 8 * 3 * 4 + 2 * 2 * 3);
        // MUL/IMUL/DIV/IDIV × 4 sizes; IMUL r,r/m × 3; IMUL r,r/m,imm × (imm8, imm) × 3.
        assert_eq!(count("muldiv"), 4 * 4 + 3 + 2 * 3);
        // SETcc × 16; CMOVcc × 16 × 3 sizes.
        assert_eq!(count("cond"), 16 + 16 * 3);
        // MOVBE × 2 directions × 3 sizes; MOVNTI and MOVDIRI × 2 sizes; MOVDIR64B × 3
        // address sizes.
        assert_eq!(count("movx"), 6 + 2 + 2 + 3);
        assert_eq!(got.len(), 249);
    }
}
