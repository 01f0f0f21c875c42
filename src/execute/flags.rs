//! The six arithmetic flags (CF, PF, AF, ZF, SF, OF), computed in one place for every family
//! that sets them (SDM Vol. 1 §3.4.3.1 "Status Flags" and Appendix A "EFLAGS Cross-Reference";
//! AMD APM Vol. 1 §3.1.4 "Flags Register").
//!
//! Three shapes of result cover the integer ALU:
//!
//! * [`add`]: ADD, ADC, INC. CF is the carry out of the operand's top bit, OF the signed
//!   overflow, AF the carry out of bit 3.
//! * [`sub`]: SUB, SBB, CMP, DEC, NEG. CF is the borrow into the top bit, OF the signed
//!   overflow, AF the borrow from bit 4.
//! * [`logic`]: AND, OR, XOR, TEST. CF and OF are cleared. AF is *undefined* in the manuals;
//!   processors of both vendors clear it, so hvemu clears it whatever [`crate::Vendor`] is
//!   configured. The `oracle_alu` test compares AF with the host whenever the host's vendor is
//!   the configured one, so each vendor's behaviour is measured on that vendor's machines
//!   (measured on an AMD Zen 3 and on an Intel Xeon of family 6, model 207).
//!
//! In all three, ZF, SF and PF describe the result at the operand's width: ZF when it is zero,
//! SF its top bit, PF when its low byte has an even number of set bits.
//!
//! The carry and borrow vectors are computed bit-parallel from the operands and the result, so
//! no wider integer type is needed: for an addition the carry out of bit *i* is
//! `(a & b) | ((a | b) & !r)`, for a subtraction the borrow out of bit *i* is
//! `(!a & b) | ((!a | b) & r)`, both with the carry (borrow) in already folded into `r`.
//!
//! For the families whose flags depend on more than the result (shifts and rotates, multiply
//! and divide, bit tests and scans), this module gives the shared pieces — [`result_flags`]
//! (ZF, SF and PF of a result), [`Update`] (a result with the flags it changes, merged into
//! RFLAGS in one place) — and each family's module documents which flags it defines and what
//! it produces for the flags the manuals leave undefined, per [`crate::Vendor`].
//!
//! [`condition`] evaluates the sixteen condition codes (`cc` of Jcc, SETcc and CMOVcc) from
//! RFLAGS (SDM Vol. 1 Appendix B "EFLAGS Condition Codes").

use iced_x86::ConditionCode;

use crate::state::width_mask;

/// RFLAGS.CF, carry.
pub(crate) const CF: u64 = 1 << 0;
/// RFLAGS.PF, parity of the result's low byte.
pub(crate) const PF: u64 = 1 << 2;
/// RFLAGS.AF, auxiliary (BCD) carry out of bit 3.
pub(crate) const AF: u64 = 1 << 4;
/// RFLAGS.ZF, zero result.
pub(crate) const ZF: u64 = 1 << 6;
/// RFLAGS.SF, sign of the result.
pub(crate) const SF: u64 = 1 << 7;
/// RFLAGS.OF, signed overflow.
pub(crate) const OF: u64 = 1 << 11;
/// The six status flags the ALU defines.
pub(crate) const ARITHMETIC: u64 = CF | PF | AF | ZF | SF | OF;

/// A result at its operand width and the status flags it produces (only bits of
/// [`ARITHMETIC`] are ever set in `flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The result, masked to the operand size.
    pub value: u64,
    /// CF, PF, AF, ZF, SF and OF as the operation leaves them.
    pub flags: u64,
}

/// The top bit of a `size`-byte operand.
const fn sign_bit(size: usize) -> u64 {
    match size {
        1 => 0x80,
        2 => 0x8000,
        4 => 0x8000_0000,
        _ => 0x8000_0000_0000_0000,
    }
}

const fn bit(condition: bool, flag: u64) -> u64 {
    if condition { flag } else { 0 }
}

/// ZF, SF and PF of a `size`-byte result (already masked).
const fn zsp(value: u64, size: usize) -> u64 {
    bit(value == 0, ZF) | bit(value & sign_bit(size) != 0, SF) | bit(even_parity(value as u8), PF)
}

/// Whether `b` has an even number of bits set (PF). Folded to a nibble and looked up in
/// 0x6996, whose bit i is the parity of i: `count_ones` is a dozen instructions on the
/// baseline x86-64 target, which has no POPCNT.
const fn even_parity(b: u8) -> bool {
    let nibble = (b ^ (b >> 4)) & 0xF;
    (0x6996u16 >> nibble) & 1 == 0
}

/// `a + b + carry` at `size` bytes (ADD, ADC, INC).
pub(crate) const fn add(a: u64, b: u64, carry: bool, size: usize) -> Outcome {
    let mask = width_mask(size);
    let (a, b) = (a & mask, b & mask);
    let value = a.wrapping_add(b).wrapping_add(carry as u64) & mask;
    let carries = (a & b) | ((a | b) & !value);
    let overflow = (a ^ value) & (b ^ value);
    let sign = sign_bit(size);
    Outcome {
        value,
        flags: bit(carries & sign != 0, CF)
            | bit(overflow & sign != 0, OF)
            | bit((a ^ b ^ value) & 0x10 != 0, AF)
            | zsp(value, size),
    }
}

/// `a - b - borrow` at `size` bytes (SUB, SBB, CMP, DEC, NEG).
pub(crate) const fn sub(a: u64, b: u64, borrow: bool, size: usize) -> Outcome {
    let mask = width_mask(size);
    let (a, b) = (a & mask, b & mask);
    let value = a.wrapping_sub(b).wrapping_sub(borrow as u64) & mask;
    let borrows = (!a & b) | ((!a | b) & value);
    let overflow = (a ^ b) & (a ^ value);
    let sign = sign_bit(size);
    Outcome {
        value,
        flags: bit(borrows & sign != 0, CF)
            | bit(overflow & sign != 0, OF)
            | bit((a ^ b ^ value) & 0x10 != 0, AF)
            | zsp(value, size),
    }
}

/// A bitwise result at `size` bytes (AND, OR, XOR, TEST): CF = OF = 0, AF = 0 (undefined in
/// the manuals; what the processors do), ZF/SF/PF from the value.
pub(crate) const fn logic(value: u64, size: usize) -> Outcome {
    let value = value & width_mask(size);
    Outcome {
        value,
        flags: zsp(value, size),
    }
}

/// ZF, SF and PF of a `size`-byte result (masked to the size here): the flags every
/// result-describing instruction sets the same way.
pub(crate) const fn result_flags(value: u64, size: usize) -> u64 {
    zsp(value & width_mask(size), size)
}

/// The top bit of a `size`-byte operand, as a mask.
pub(crate) const fn top_bit(size: usize) -> u64 {
    sign_bit(size)
}

/// `flag` when `condition` holds, else 0.
pub(crate) const fn flag_if(condition: bool, flag: u64) -> u64 {
    bit(condition, flag)
}

/// A result and the status flags an instruction changes: `flags` holds their new values,
/// `changed` says which of the six they are (flags outside it keep their old values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Update {
    /// The result, masked to the operand size.
    pub value: u64,
    /// New values of the flags in `changed` (other bits are ignored).
    pub flags: u64,
    /// Which status flags change.
    pub changed: u64,
}

impl Update {
    /// The value unchanged and no flag changed (a count of zero, for instance).
    pub(crate) const fn nothing(value: u64) -> Update {
        Update {
            value,
            flags: 0,
            changed: 0,
        }
    }

    /// RFLAGS after the update: the changed status flags replaced, every other bit kept.
    pub(crate) const fn rflags(&self, rflags: u64) -> u64 {
        let changed = self.changed & ARITHMETIC;
        (rflags & !changed) | (self.flags & changed)
    }
}

/// Whether condition `cc` holds for `rflags` (SDM Vol. 1 Appendix B, Table B-1); `None` for
/// [`ConditionCode::None`]. The one evaluator for Jcc, SETcc and CMOVcc.
pub(crate) const fn condition(cc: ConditionCode, rflags: u64) -> Option<bool> {
    let cf = rflags & CF != 0;
    let pf = rflags & PF != 0;
    let zf = rflags & ZF != 0;
    let sf = rflags & SF != 0;
    let of = rflags & OF != 0;
    Some(match cc {
        ConditionCode::None => return None,
        ConditionCode::o => of,
        ConditionCode::no => !of,
        ConditionCode::b => cf,
        ConditionCode::ae => !cf,
        ConditionCode::e => zf,
        ConditionCode::ne => !zf,
        ConditionCode::be => cf || zf,
        ConditionCode::a => !cf && !zf,
        ConditionCode::s => sf,
        ConditionCode::ns => !sf,
        ConditionCode::p => pf,
        ConditionCode::np => !pf,
        ConditionCode::l => sf != of,
        ConditionCode::ge => sf == of,
        ConditionCode::le => zf || sf != of,
        ConditionCode::g => !zf && sf == of,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_parity_counts_bits() {
        for b in 0..=255u8 {
            assert_eq!(even_parity(b), b.count_ones() % 2 == 0, "{b:#04x}");
        }
    }

    /// A reference over `u128`, checked against the bit-parallel formulas.
    fn reference(a: u64, b: u64, c: bool, size: usize, subtract: bool) -> Outcome {
        let bits = 8 * size as u32;
        let mask = width_mask(size);
        let (a, b) = (a & mask, b & mask);
        let wide = if subtract {
            u128::from(a)
                .wrapping_sub(u128::from(b))
                .wrapping_sub(u128::from(c))
        } else {
            u128::from(a) + u128::from(b) + u128::from(c)
        };
        let value = wide as u64 & mask;
        let cf = (wide >> bits) & 1 != 0;
        let sx = |v: u64| ((v << (64 - bits)) as i64 >> (64 - bits)) as i128;
        let exact = if subtract {
            sx(a) - sx(b) - i128::from(c)
        } else {
            sx(a) + sx(b) + i128::from(c)
        };
        let of = exact != sx(value);
        let low = if subtract {
            (a & 0xF) < (b & 0xF) + u64::from(c)
        } else {
            (a & 0xF) + (b & 0xF) + u64::from(c) > 0xF
        };
        Outcome {
            value,
            flags: bit(cf, CF) | bit(of, OF) | bit(low, AF) | zsp(value, size),
        }
    }

    #[test]
    fn formulas_match_wide_arithmetic() {
        let edges = [
            0u64,
            1,
            0xF,
            0x10,
            0x7F,
            0x80,
            0xFF,
            0x7FFF,
            0x8000,
            0xFFFF,
            0x7FFF_FFFF,
            0x8000_0000,
            0xFFFF_FFFF,
            i64::MAX as u64,
            i64::MIN as u64,
            u64::MAX,
        ];
        for size in [1, 2, 4, 8] {
            for a in edges {
                for b in edges {
                    for c in [false, true] {
                        assert_eq!(add(a, b, c, size), reference(a, b, c, size, false));
                        assert_eq!(sub(a, b, c, size), reference(a, b, c, size, true));
                    }
                }
            }
        }
    }

    #[test]
    fn examples() {
        // 0x7F + 1: signed overflow, half carry, negative.
        assert_eq!(add(0x7F, 1, false, 1).flags, OF | AF | SF);
        // 0xFF + 1: carry, zero, even parity.
        assert_eq!(add(0xFF, 1, false, 1).flags, CF | AF | ZF | PF);
        // 0 - 1: borrow, all ones.
        assert_eq!(sub(0, 1, false, 4).flags, CF | AF | SF | PF);
        assert_eq!(sub(0, 1, false, 4).value, 0xFFFF_FFFF);
        // 0x8000 - 1: signed overflow.
        assert_eq!(sub(0x8000, 1, false, 2).flags, OF | AF | PF);
        assert_eq!(logic(0x100, 1).flags, ZF | PF);
        assert_eq!(logic(u64::MAX, 8).flags, SF | PF);
    }

    #[test]
    fn conditions_pair_up_and_follow_the_table() {
        use ConditionCode as C;
        let pairs = [
            (C::o, C::no),
            (C::b, C::ae),
            (C::e, C::ne),
            (C::be, C::a),
            (C::s, C::ns),
            (C::p, C::np),
            (C::l, C::ge),
            (C::le, C::g),
        ];
        // Every combination of the five flags the conditions read.
        for bits in 0u64..32 {
            let rflags = [CF, PF, ZF, SF, OF]
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .fold(0x2, |acc, (_, f)| acc | f);
            for (holds, negated) in pairs {
                assert_eq!(
                    condition(holds, rflags).map(|b| !b),
                    condition(negated, rflags)
                );
            }
            let (cf, zf) = (rflags & CF != 0, rflags & ZF != 0);
            let (sf, of) = (rflags & SF != 0, rflags & OF != 0);
            assert_eq!(condition(C::a, rflags), Some(!cf && !zf));
            assert_eq!(condition(C::l, rflags), Some(sf ^ of));
            assert_eq!(condition(C::g, rflags), Some(!zf && sf == of));
        }
        assert_eq!(condition(C::None, 0), None);
    }

    #[test]
    fn update_changes_only_its_flags() {
        let u = Update {
            value: 0,
            flags: CF | ZF | OF,
            changed: CF | SF,
        };
        // CF set, SF cleared, ZF and OF not changed (and non-status bits kept).
        assert_eq!(u.rflags(0x202 | SF | OF), 0x202 | CF | OF);
        assert_eq!(Update::nothing(5).rflags(0x2D7), 0x2D7);
        assert_eq!(result_flags(0x1_00, 1), ZF | PF);
        assert_eq!(top_bit(2), 0x8000);
    }
}
