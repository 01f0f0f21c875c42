//! Exchange and atomics with a memory operand: XCHG, XADD, CMPXCHG, CMPXCHG8B and CMPXCHG16B
//! (SDM Vol. 2D "XCHG—Exchange Register/Memory With Register", "XADD—Exchange and Add";
//! Vol. 2A "CMPXCHG—Compare and Exchange", "CMPXCHG8B/CMPXCHG16B—Compare and Exchange Bytes";
//! AMD APM Vol. 3 for the same instructions), and the locked read-modify-write that LOCKed
//! instructions of other families share ([`read_modify_write`]).
//!
//! Forms: `XCHG r/m, r` at 8, 16, 32 and 64 bits (86/87 /r; `xchg r, m` assembles to the same
//! bytes), `XADD r/m, r` (0F C0/C1), `CMPXCHG r/m, r` (0F B0/B1), `CMPXCHG8B m64` (0F C7 /1)
//! and, in 64-bit mode, `CMPXCHG16B m128` (REX.W 0F C7 /1), each with or without LOCK. Register
//! destinations cannot make a memory exit and are not this family's.
//!
//! # Memory
//!
//! The operand is a read-modify-write, all or nothing: segmentation, canonical form, alignment
//! and translation of every page, for reading and writing, come before the first access (a
//! fault reports as a write). CMPXCHG16B first requires a 16-byte-aligned linear address,
//! #GP(0) otherwise. CMPXCHG always makes its write cycle: on a failed comparison the processor
//! writes the old value back, and so does hvemu when it goes through `memory` (one read, then
//! one write of the new or the old value).
//!
//! XCHG is locked whether or not it carries the prefix; the others are locked with LOCK. A
//! locked operand within one page is first offered to the monitor's
//! [`compare_exchange`](crate::EmulatorCallbacks::compare_exchange): guess the old value (the
//! accumulator for CMPXCHG, EDX:EAX / RDX:RAX for CMPXCHG8B/16B, 0 otherwise), compute the new
//! value, compare-exchange; on a mismatch compute again from the value found. A mismatch whose
//! new value would equal the value found (a failed CMPXCHG) completes at once: the comparison
//! saw that value atomically and the write-back changes nothing. After [`LOCKED_ATTEMPTS`]
//! lost races the instruction is left undone (nothing written, no register changed, RIP on it)
//! for the guest to execute again, so one call stays bounded however hard other processors
//! write. A monitor that declines (`Ok(None)`, the default) gets the plain read and write.
//!
//! # Registers and flags
//!
//! * XCHG: the register gets the old memory value; no flag changes.
//! * XADD: memory gets `old + register`, the register gets `old`; the six status flags are
//!   ADD's ([`super::flags::add`]).
//! * CMPXCHG: the six status flags are those of `CMP accumulator, old` ([`super::flags::sub`]),
//!   so ZF says whether they were equal. Equal: memory gets the source register, the
//!   accumulator is not written (a 32-bit accumulator keeps `RAX[63:32]`). Not equal: the
//!   accumulator gets the old value (a 32-bit write, zero-extending RAX in 64-bit mode).
//! * CMPXCHG8B/16B: only ZF changes (set when EDX:EAX or RDX:RAX equalled memory, which then
//!   gets ECX:EBX or RCX:RBX); on a mismatch EDX:EAX or RDX:RAX get memory (EAX and EDX
//!   zero-extend), on a match they are not written.
//!
//! The `oracle_xchg` test checks all of this against the host processor.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::flags::{self, ARITHMETIC, ZF};
use super::string::accumulator;
use super::unsupported;
use crate::access::{Intent, Span};
use crate::callbacks::EmulatorCallbacks;
use crate::error::Exception;
use crate::registers::Segment;
use crate::rep::Progress;
use crate::state::gpr::{RAX, RBX, RCX, RDX};
use crate::state::{Cpu, RegSet, Res, Slot, le_value};

/// How many compare-exchange attempts one locked read-modify-write makes before it gives the
/// instruction back to the guest undone.
pub(crate) const LOCKED_ATTEMPTS: u32 = 8;

/// Which instruction of the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExchangeKind {
    /// XCHG r/m, r.
    Xchg,
    /// XADD r/m, r.
    Xadd,
    /// CMPXCHG r/m, r.
    Cmpxchg,
    /// CMPXCHG8B m64 and CMPXCHG16B m128.
    CmpxchgPair,
}

/// The instruction of the family with a memory operand; `None` for anything else.
#[inline]
pub(super) fn classify(instr: &Instruction) -> Option<ExchangeKind> {
    let kind = match instr.mnemonic() {
        Mnemonic::Xchg => ExchangeKind::Xchg,
        Mnemonic::Xadd => ExchangeKind::Xadd,
        Mnemonic::Cmpxchg => ExchangeKind::Cmpxchg,
        Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b => ExchangeKind::CmpxchgPair,
        _ => return None,
    };
    (instr.op0_kind() == OpKind::Memory).then_some(kind)
}

impl ExchangeKind {
    /// Adds the implicit registers to the explicit operands' set.
    pub(crate) fn registers(self, set: RegSet) -> RegSet {
        match self {
            ExchangeKind::Xchg | ExchangeKind::Xadd => set,
            ExchangeKind::Cmpxchg => set.with(Slot::Gpr(RAX)),
            ExchangeKind::CmpxchgPair => set
                .with(Slot::Gpr(RAX))
                .with(Slot::Gpr(RCX))
                .with(Slot::Gpr(RDX))
                .with(Slot::Gpr(RBX)),
        }
    }
}

/// All-ones over `size` bytes (1..=16).
const fn mask(size: usize) -> u128 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        8 => 0xFFFF_FFFF_FFFF_FFFF,
        _ => u128::MAX,
    }
}

/// What a read-modify-write achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rmw {
    /// Memory went from `old` to `update(old)`, atomically when locked.
    Done {
        /// The value memory held.
        old: u128,
    },
    /// Every locked attempt lost its race: nothing was written.
    Contended,
}

/// The read-modify-write of a translated `size`-byte operand (1..=16): memory goes from `old`
/// to `update(old)`, and `old` is returned.
///
/// Locked and within one page: offered to the monitor's compare-exchange, starting from
/// `guess`, for at most [`LOCKED_ATTEMPTS`] attempts (see the module documentation). Otherwise,
/// or when the monitor declines: one `memory` read, then one `memory` write of the result,
/// even when it equals the old value (the processor's write cycle).
pub(crate) fn read_modify_write<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    span: &Span,
    size: usize,
    locked: bool,
    guess: u128,
    update: impl Fn(u128) -> u128,
) -> Res<Rmw, C> {
    let size = size.clamp(1, 16);
    let m = mask(size);
    if locked {
        let mut expected = guess & m;
        let mut attempts = 0..LOCKED_ATTEMPTS;
        loop {
            if attempts.next().is_none() {
                return Ok(Rmw::Contended);
            }
            let new = update(expected) & m;
            let (expected_bytes, new_bytes) = (expected.to_le_bytes(), new.to_le_bytes());
            let mut current = [0u8; 16];
            let swapped = cpu.compare_exchange_span(
                span,
                expected_bytes.get(..size).unwrap_or(&[]),
                new_bytes.get(..size).unwrap_or(&[]),
                current.get_mut(..size).unwrap_or(&mut []),
            )?;
            match swapped {
                Some(true) => return Ok(Rmw::Done { old: expected }),
                Some(false) => {
                    let found = le_value(current.get(..size).unwrap_or(&[])) & m;
                    if update(found) & m == found {
                        return Ok(Rmw::Done { old: found });
                    }
                    expected = found;
                }
                None => break,
            }
        }
    }
    let mut buf = [0u8; 16];
    let data = buf.get_mut(..size).unwrap_or(&mut []);
    cpu.read_span(span, data)?;
    let old = le_value(data) & m;
    let new = update(old) & m;
    let mut bytes = new.to_le_bytes();
    cpu.write_span(span, bytes.get_mut(..size).unwrap_or(&mut []))?;
    Ok(Rmw::Done { old })
}

/// Runs the instruction.
pub(super) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    kind: ExchangeKind,
) -> Res<Progress, C> {
    let size = instr.memory_size().size();
    let pair = kind == ExchangeKind::CmpxchgPair;
    if !(matches!(size, 1 | 2 | 4 | 8) || (pair && size == 16)) {
        return Err(unsupported(instr));
    }
    let mem = cpu.effective_address(instr)?;
    if instr.code() == Code::Cmpxchg16b_m128 {
        // 64-bit mode only: the linear address is the offset plus an FS or GS base.
        let base = match mem.seg {
            Segment::Fs | Segment::Gs => cpu.segment(mem.seg)?.base,
            _ => 0,
        };
        if base.wrapping_add(mem.offset) & 15 != 0 {
            return Err(Exception::gp(0).into());
        }
    }
    let locked = kind == ExchangeKind::Xchg || instr.has_lock_prefix();
    let rflags = cpu.state.rflags;
    // Every fault is found here, before the first access.
    let span = cpu.resolve(mem, size, Intent::ReadWrite)?;
    match kind {
        ExchangeKind::Xchg => {
            let reg = instr.op1_register();
            let src = u128::from(cpu.read_reg(reg)?);
            let Rmw::Done { old } = read_modify_write(cpu, &span, size, locked, 0, |_| src)? else {
                return Ok(Progress::Retry);
            };
            cpu.write_reg(reg, old as u64)?;
        }
        ExchangeKind::Xadd => {
            let reg = instr.op1_register();
            let src = cpu.read_reg(reg)?;
            let sum = |old: u128| u128::from(flags::add(old as u64, src, false, size).value);
            let Rmw::Done { old } = read_modify_write(cpu, &span, size, locked, 0, sum)? else {
                return Ok(Progress::Retry);
            };
            let outcome = flags::add(old as u64, src, false, size);
            cpu.write_reg(reg, old as u64)?;
            cpu.state.rflags = (rflags & !ARITHMETIC) | outcome.flags;
        }
        ExchangeKind::Cmpxchg => {
            let acc_reg = accumulator(size);
            let acc = u128::from(cpu.read_reg(acc_reg)?);
            let src = u128::from(cpu.read_reg(instr.op1_register())?);
            let exchange = |old: u128| if old == acc { src } else { old };
            let Rmw::Done { old } = read_modify_write(cpu, &span, size, locked, acc, exchange)?
            else {
                return Ok(Progress::Retry);
            };
            let outcome = flags::sub(acc as u64, old as u64, false, size);
            if old != acc {
                cpu.write_reg(acc_reg, old as u64)?;
            }
            cpu.state.rflags = (rflags & !ARITHMETIC) | outcome.flags;
        }
        ExchangeKind::CmpxchgPair => {
            let half = size / 2;
            let regs = if half == 8 {
                [Register::RAX, Register::RDX, Register::RBX, Register::RCX]
            } else {
                [Register::EAX, Register::EDX, Register::EBX, Register::ECX]
            };
            let [lo, hi, new_lo, new_hi] = regs;
            // The high half sits above the low one: 64 bits for CMPXCHG16B, 32 for CMPXCHG8B.
            let shift = if half == 8 { 64 } else { 32 };
            let join = |low: u64, high: u64| u128::from(low) | (u128::from(high) << shift);
            let expected = join(cpu.read_reg(lo)?, cpu.read_reg(hi)?);
            let new = join(cpu.read_reg(new_lo)?, cpu.read_reg(new_hi)?);
            let exchange = |old: u128| if old == expected { new } else { old };
            let Rmw::Done { old } =
                read_modify_write(cpu, &span, size, locked, expected, exchange)?
            else {
                return Ok(Progress::Retry);
            };
            let equal = old == expected;
            if !equal {
                cpu.write_reg(lo, old as u64)?;
                cpu.write_reg(hi, (old >> shift) as u64)?;
            }
            cpu.state.rflags = (rflags & !ZF) | if equal { ZF } else { 0 };
        }
    }
    Ok(Progress::Complete)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use iced_x86::Code;
    use std::vec::Vec;

    use super::*;
    use crate::execute::{Family, tests::decode_all_forms};

    /// The forms the family accepts are exactly iced-x86's memory-capable codes of XCHG r/m,
    /// XADD, CMPXCHG, CMPXCHG8B and CMPXCHG16B: none missing, none extra, none taken by another
    /// family.
    #[test]
    fn every_memory_form_of_the_family_is_accepted() {
        let forms = decode_all_forms();
        let accepted: Vec<Code> = Code::values()
            .filter(|c| {
                forms.get(c).is_some_and(|samples| {
                    samples
                        .iter()
                        .any(|i| matches!(Family::of(i), Some(Family::Exchange(_))))
                })
            })
            .collect();
        let expected = [
            Code::Xchg_rm8_r8,
            Code::Xchg_rm16_r16,
            Code::Xchg_rm32_r32,
            Code::Xchg_rm64_r64,
            Code::Cmpxchg_rm8_r8,
            Code::Cmpxchg_rm16_r16,
            Code::Cmpxchg_rm32_r32,
            Code::Cmpxchg_rm64_r64,
            Code::Xadd_rm8_r8,
            Code::Xadd_rm16_r16,
            Code::Xadd_rm32_r32,
            Code::Xadd_rm64_r64,
            Code::Cmpxchg8b_m64,
            Code::Cmpxchg16b_m128,
        ];
        assert_eq!(accepted, expected);
        std::println!("exchange family: {} iced-x86 Code values", accepted.len());
    }

    /// Register-only forms (XCHG r, r and the 90+r short forms) are not this family's.
    #[test]
    fn register_forms_are_rejected() {
        let forms = decode_all_forms();
        for code in [Code::Xchg_r16_AX, Code::Xchg_r32_EAX, Code::Xchg_r64_RAX] {
            for instr in forms.get(&code).expect("decoded") {
                assert_eq!(classify(instr), None, "{code:?}");
            }
        }
    }
}
