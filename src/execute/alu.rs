//! The integer ALU with a memory operand: ADD, OR, ADC, SBB, AND, SUB, XOR, CMP, TEST, INC,
//! DEC, NEG and NOT (SDM Vol. 2A "ADD", "ADC", "AND", "CMP", "DEC", "INC"; Vol. 2B "NEG",
//! "NOT", "OR", "SBB", "SUB", "TEST", "XOR"; AMD APM Vol. 3 §3 for the same instructions).
//!
//! Every encoding with a memory operand at 8, 16, 32 and 64 bits runs here: `r/m, r`,
//! `r, r/m`, `r/m, imm8/imm16/imm32` including the sign-extended `imm8` forms (83 /r and the
//! 32-bit-only alias 82 /r) and the `imm32` sign-extended to 64 bits, and the one-operand
//! forms (FE/FF /0 /1, F6/F7 /2 /3). Each operation is a zero-sized type implementing
//! [`AluOp`], so one generic routine, [`run_op`], runs the whole family.
//!
//! # Memory
//!
//! * A memory destination is read-modify-write, all or nothing: segmentation, canonical form,
//!   alignment and translation of every page are done once, for reading and writing
//!   (`VALIDATE_READ | VALIDATE_WRITE`; a fault is reported as a write, #PF with W=1), before
//!   the read. Then the operand is read, the result computed, and written back to the same
//!   guest-physical pieces: one `memory` call per page for the read, the same for the write.
//! * CMP and TEST only read their memory operand; `r, r/m` forms read memory and write the
//!   register (8- and 16-bit writes merge, 32-bit writes zero-extend).
//! * LOCK is accepted where the decoder accepts it (memory-destination forms of every operation
//!   here except CMP and TEST); elsewhere decode reports #UD, as the processor does.
//!   A locked operand within one page is first offered to the monitor's
//!   [`compare_exchange`](crate::EmulatorCallbacks::compare_exchange) (read, compute,
//!   compare-exchange, bounded retries; [`super::xchg::read_modify_write`]); when the monitor
//!   declines, or the operand crosses a page, it is that same read and write through `memory`:
//!   the monitor, which stops the processor for the exit, decides what other agents may observe
//!   between them.
//!
//! # Flags
//!
//! Computed by [`super::flags`]. ADD, ADC, SUB, SBB, CMP and NEG define all six status flags;
//! NEG sets CF when its operand was not zero. INC and DEC define all but CF, which they keep.
//! AND, OR, XOR and TEST clear CF and OF, define ZF, SF and PF, and leave AF undefined in the
//! manuals: processors clear it (measured on AMD by the `oracle_alu` test; Intel's known
//! behaviour is the same), and so does hvemu, whichever [`crate::Vendor`] is configured. NOT
//! changes no flag. No other RFLAGS bit changes.

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::flags::{self, AF, ARITHMETIC, CF, Outcome};
use super::xchg::{Rmw, read_modify_write};
use super::{read_value, unsupported};
use crate::access::Intent;
use crate::callbacks::EmulatorCallbacks;
use crate::rep::Progress;
use crate::state::{Cpu, Res, width_mask};

/// One ALU operation: `dst ← dst op src`, with the flags it defines.
pub(crate) trait AluOp {
    /// Whether the result is stored (false for CMP and TEST, which only set flags).
    const WRITES: bool;
    /// The status flags the operation defines.
    const DEFINED: u64;
    /// The status flags the manuals leave undefined, which hvemu sets as the processors do.
    const UNDEFINED: u64;
    /// The operation on `size`-byte operands (`src` is 0 for the one-operand forms). `rflags`
    /// is RFLAGS before the instruction (for ADC's and SBB's carry in). Flags of the outcome
    /// outside [`Self::DEFINED`] and [`Self::UNDEFINED`] are ignored.
    fn apply(dst: u64, src: u64, rflags: u64, size: usize) -> Outcome;
}

/// Every flag an arithmetic operation defines except CF (INC and DEC).
const ALL_BUT_CF: u64 = ARITHMETIC & !CF;
/// The flags a logical operation defines: all but AF.
const LOGIC_DEFINED: u64 = ARITHMETIC & !AF;

fn carry(rflags: u64) -> bool {
    rflags & CF != 0
}

/// ADD: `dst + src`.
pub(crate) struct Add;
/// OR: `dst | src`.
pub(crate) struct Or;
/// ADC: `dst + src + CF`.
pub(crate) struct Adc;
/// SBB: `dst - src - CF`.
pub(crate) struct Sbb;
/// AND: `dst & src`.
pub(crate) struct And;
/// SUB: `dst - src`.
pub(crate) struct Sub;
/// XOR: `dst ^ src`.
pub(crate) struct Xor;
/// CMP: the flags of `dst - src`, nothing stored.
pub(crate) struct Cmp;
/// TEST: the flags of `dst & src`, nothing stored.
pub(crate) struct Test;
/// INC: `dst + 1`, CF kept.
pub(crate) struct Inc;
/// DEC: `dst - 1`, CF kept.
pub(crate) struct Dec;
/// NEG: `0 - dst`.
pub(crate) struct Neg;
/// NOT: `!dst`, no flag changed.
pub(crate) struct Not;

impl AluOp for Add {
    const WRITES: bool = true;
    const DEFINED: u64 = ARITHMETIC;
    const UNDEFINED: u64 = 0;
    fn apply(dst: u64, src: u64, _: u64, size: usize) -> Outcome {
        flags::add(dst, src, false, size)
    }
}

impl AluOp for Or {
    const WRITES: bool = true;
    const DEFINED: u64 = LOGIC_DEFINED;
    const UNDEFINED: u64 = AF;
    fn apply(dst: u64, src: u64, _: u64, size: usize) -> Outcome {
        flags::logic(dst | src, size)
    }
}

impl AluOp for Adc {
    const WRITES: bool = true;
    const DEFINED: u64 = ARITHMETIC;
    const UNDEFINED: u64 = 0;
    fn apply(dst: u64, src: u64, rflags: u64, size: usize) -> Outcome {
        flags::add(dst, src, carry(rflags), size)
    }
}

impl AluOp for Sbb {
    const WRITES: bool = true;
    const DEFINED: u64 = ARITHMETIC;
    const UNDEFINED: u64 = 0;
    fn apply(dst: u64, src: u64, rflags: u64, size: usize) -> Outcome {
        flags::sub(dst, src, carry(rflags), size)
    }
}

impl AluOp for And {
    const WRITES: bool = true;
    const DEFINED: u64 = LOGIC_DEFINED;
    const UNDEFINED: u64 = AF;
    fn apply(dst: u64, src: u64, _: u64, size: usize) -> Outcome {
        flags::logic(dst & src, size)
    }
}

impl AluOp for Sub {
    const WRITES: bool = true;
    const DEFINED: u64 = ARITHMETIC;
    const UNDEFINED: u64 = 0;
    fn apply(dst: u64, src: u64, _: u64, size: usize) -> Outcome {
        flags::sub(dst, src, false, size)
    }
}

impl AluOp for Xor {
    const WRITES: bool = true;
    const DEFINED: u64 = LOGIC_DEFINED;
    const UNDEFINED: u64 = AF;
    fn apply(dst: u64, src: u64, _: u64, size: usize) -> Outcome {
        flags::logic(dst ^ src, size)
    }
}

impl AluOp for Cmp {
    const WRITES: bool = false;
    const DEFINED: u64 = ARITHMETIC;
    const UNDEFINED: u64 = 0;
    fn apply(dst: u64, src: u64, _: u64, size: usize) -> Outcome {
        flags::sub(dst, src, false, size)
    }
}

impl AluOp for Test {
    const WRITES: bool = false;
    const DEFINED: u64 = LOGIC_DEFINED;
    const UNDEFINED: u64 = AF;
    fn apply(dst: u64, src: u64, _: u64, size: usize) -> Outcome {
        flags::logic(dst & src, size)
    }
}

impl AluOp for Inc {
    const WRITES: bool = true;
    const DEFINED: u64 = ALL_BUT_CF;
    const UNDEFINED: u64 = 0;
    fn apply(dst: u64, _: u64, _: u64, size: usize) -> Outcome {
        flags::add(dst, 1, false, size)
    }
}

impl AluOp for Dec {
    const WRITES: bool = true;
    const DEFINED: u64 = ALL_BUT_CF;
    const UNDEFINED: u64 = 0;
    fn apply(dst: u64, _: u64, _: u64, size: usize) -> Outcome {
        flags::sub(dst, 1, false, size)
    }
}

impl AluOp for Neg {
    const WRITES: bool = true;
    const DEFINED: u64 = ARITHMETIC;
    const UNDEFINED: u64 = 0;
    fn apply(dst: u64, _: u64, _: u64, size: usize) -> Outcome {
        // The borrow of 0 - dst is set exactly when dst != 0, which is NEG's CF.
        flags::sub(0, dst, false, size)
    }
}

impl AluOp for Not {
    const WRITES: bool = true;
    const DEFINED: u64 = 0;
    const UNDEFINED: u64 = 0;
    fn apply(dst: u64, _: u64, _: u64, size: usize) -> Outcome {
        Outcome {
            value: !dst & width_mask(size),
            flags: 0,
        }
    }
}

/// Which operation, as [`super::Family::Alu`] carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AluKind {
    /// ADD.
    Add,
    /// OR.
    Or,
    /// ADC.
    Adc,
    /// SBB.
    Sbb,
    /// AND.
    And,
    /// SUB.
    Sub,
    /// XOR.
    Xor,
    /// CMP.
    Cmp,
    /// TEST.
    Test,
    /// INC.
    Inc,
    /// DEC.
    Dec,
    /// NEG.
    Neg,
    /// NOT.
    Not,
}

/// The operation of an ALU instruction with a memory operand; `None` for anything else
/// (register-only forms cannot have made a memory exit).
// Inlined: `Family::of` asks it second for every instruction, and left to itself the compiler
// made it a call once the vector classification changed.
#[inline]
pub(super) fn classify(instr: &Instruction) -> Option<AluKind> {
    let kind = match instr.mnemonic() {
        Mnemonic::Add => AluKind::Add,
        Mnemonic::Or => AluKind::Or,
        Mnemonic::Adc => AluKind::Adc,
        Mnemonic::Sbb => AluKind::Sbb,
        Mnemonic::And => AluKind::And,
        Mnemonic::Sub => AluKind::Sub,
        Mnemonic::Xor => AluKind::Xor,
        Mnemonic::Cmp => AluKind::Cmp,
        Mnemonic::Test => AluKind::Test,
        Mnemonic::Inc => AluKind::Inc,
        Mnemonic::Dec => AluKind::Dec,
        Mnemonic::Neg => AluKind::Neg,
        Mnemonic::Not => AluKind::Not,
        _ => return None,
    };
    let memory = (0..instr.op_count()).any(|i| instr.op_kind(i) == OpKind::Memory);
    memory.then_some(kind)
}

/// Runs the operation.
pub(super) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    kind: AluKind,
) -> Res<Progress, C> {
    match kind {
        AluKind::Add => run_op::<Add, C>(cpu, instr),
        AluKind::Or => run_op::<Or, C>(cpu, instr),
        AluKind::Adc => run_op::<Adc, C>(cpu, instr),
        AluKind::Sbb => run_op::<Sbb, C>(cpu, instr),
        AluKind::And => run_op::<And, C>(cpu, instr),
        AluKind::Sub => run_op::<Sub, C>(cpu, instr),
        AluKind::Xor => run_op::<Xor, C>(cpu, instr),
        AluKind::Cmp => run_op::<Cmp, C>(cpu, instr),
        AluKind::Test => run_op::<Test, C>(cpu, instr),
        AluKind::Inc => run_op::<Inc, C>(cpu, instr),
        AluKind::Dec => run_op::<Dec, C>(cpu, instr),
        AluKind::Neg => run_op::<Neg, C>(cpu, instr),
        AluKind::Not => run_op::<Not, C>(cpu, instr),
    }
}

/// The value of a non-memory source operand: a register, or an immediate (iced-x86 has
/// already sign-extended the `imm8` and 64-bit `imm32` forms).
fn source<C: EmulatorCallbacks>(cpu: &mut Cpu<'_, C>, instr: &Instruction) -> Res<u64, C> {
    match instr.op1_kind() {
        OpKind::Register => cpu.read_reg(instr.op1_register()),
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => Ok(instr.immediate(1)),
        _ => Err(unsupported(instr)),
    }
}

/// The one routine of the family: read the operands, apply `O`, store the result (if `O`
/// writes) and merge the flags `O` defines into RFLAGS.
pub(crate) fn run_op<O: AluOp, C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
) -> Res<Progress, C> {
    let size = instr.memory_size().size();
    if !matches!(size, 1 | 2 | 4 | 8) {
        return Err(unsupported(instr));
    }
    let mem = cpu.effective_address(instr)?;
    let rflags = cpu.state.rflags;
    let outcome = match instr.op0_kind() {
        OpKind::Memory => {
            let src = if instr.op_count() > 1 {
                source(cpu, instr)?
            } else {
                0
            };
            let intent = if O::WRITES {
                Intent::ReadWrite
            } else {
                Intent::Read
            };
            // Every fault is found here, before the read.
            let span = cpu.resolve(mem, size, intent)?;
            if O::WRITES && instr.has_lock_prefix() {
                // Through the monitor's compare-exchange when it offers one (`super::xchg`).
                let update = |old: u128| u128::from(O::apply(old as u64, src, rflags, size).value);
                let Rmw::Done { old } = read_modify_write(cpu, &span, size, true, 0, update)?
                else {
                    return Ok(Progress::Retry);
                };
                let outcome = O::apply(old as u64, src, rflags, size);
                let changed = O::DEFINED | O::UNDEFINED;
                cpu.state.rflags = (rflags & !changed) | (outcome.flags & changed);
                return Ok(Progress::Complete);
            }
            let old = cpu.read_span_value(&span, size)?;
            let outcome = O::apply(old, src, rflags, size);
            if O::WRITES {
                cpu.write_value(&span, outcome.value, size)?;
            }
            outcome
        }
        OpKind::Register if instr.op1_kind() == OpKind::Memory => {
            let reg = instr.op0_register();
            let dst = cpu.read_reg(reg)?;
            let src = read_value(cpu, mem, size)?;
            let outcome = O::apply(dst, src, rflags, size);
            if O::WRITES {
                cpu.write_reg(reg, outcome.value)?;
            }
            outcome
        }
        _ => return Err(unsupported(instr)),
    };
    let changed = O::DEFINED | O::UNDEFINED;
    cpu.state.rflags = (rflags & !changed) | (outcome.flags & changed);
    Ok(Progress::Complete)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use iced_x86::{Code, Decoder, DecoderOptions, RflagsBits};
    use std::collections::BTreeMap;
    use std::vec::Vec;

    use super::*;
    use crate::execute::flags::{OF, PF, SF, ZF};

    /// Every legacy encoding whose opcode could be an ALU form with a memory operand, decoded
    /// in each mode with each operand-size and LOCK prefix, and classified.
    fn accepted() -> BTreeMap<Code, (AluKind, Instruction)> {
        let mut found = BTreeMap::new();
        let prefixes: [&[u8]; 6] = [&[], &[0x66], &[0x48], &[0xF0], &[0xF0, 0x66], &[0xF0, 0x48]];
        for bitness in [16, 32, 64] {
            for prefix in prefixes {
                if bitness != 64 && prefix.contains(&0x48) {
                    continue;
                }
                for opcode in 0..=0xFFu8 {
                    for reg in 0..8u8 {
                        let mut bytes = Vec::from(prefix);
                        // ModRM mod=00: [bx+si], [eax] or [rax].
                        bytes.extend_from_slice(&[opcode, reg << 3, 0, 0, 0, 0]);
                        let mut decoder = Decoder::new(bitness, &bytes, DecoderOptions::NONE);
                        let instr = decoder.decode();
                        if instr.is_invalid() {
                            continue;
                        }
                        if let Some(kind) = classify(&instr) {
                            found.insert(instr.code(), (kind, instr));
                        }
                    }
                }
            }
        }
        found
    }

    /// iced-x86's flag bits in RFLAGS layout (status flags only).
    fn rflags_of(iced: u32) -> u64 {
        [
            (RflagsBits::CF, CF),
            (RflagsBits::PF, PF),
            (RflagsBits::AF, AF),
            (RflagsBits::ZF, ZF),
            (RflagsBits::SF, SF),
            (RflagsBits::OF, OF),
        ]
        .iter()
        .filter(|(i, _)| iced & i != 0)
        .fold(0, |acc, (_, f)| acc | f)
    }

    fn declared(kind: AluKind) -> (u64, u64, bool) {
        fn of<O: AluOp>() -> (u64, u64, bool) {
            (O::DEFINED, O::UNDEFINED, O::WRITES)
        }
        match kind {
            AluKind::Add => of::<Add>(),
            AluKind::Or => of::<Or>(),
            AluKind::Adc => of::<Adc>(),
            AluKind::Sbb => of::<Sbb>(),
            AluKind::And => of::<And>(),
            AluKind::Sub => of::<Sub>(),
            AluKind::Xor => of::<Xor>(),
            AluKind::Cmp => of::<Cmp>(),
            AluKind::Test => of::<Test>(),
            AluKind::Inc => of::<Inc>(),
            AluKind::Dec => of::<Dec>(),
            AluKind::Neg => of::<Neg>(),
            AluKind::Not => of::<Not>(),
        }
    }

    /// The forms the family accepts are exactly iced-x86's `r/m` codes of these mnemonics:
    /// none missing, none extra.
    #[test]
    fn every_rm_code_of_the_family_is_accepted() {
        let found = accepted();
        let expected: Vec<Code> = Code::values()
            .filter(|c| {
                matches!(
                    c.mnemonic(),
                    Mnemonic::Add
                        | Mnemonic::Or
                        | Mnemonic::Adc
                        | Mnemonic::Sbb
                        | Mnemonic::And
                        | Mnemonic::Sub
                        | Mnemonic::Xor
                        | Mnemonic::Cmp
                        | Mnemonic::Test
                        | Mnemonic::Inc
                        | Mnemonic::Dec
                        | Mnemonic::Neg
                        | Mnemonic::Not
                ) && std::format!("{c:?}").contains("rm")
            })
            .collect();
        let got: Vec<Code> = found.keys().copied().collect();
        assert_eq!(got, expected);
        std::println!("ALU family: {} iced-x86 Code values", got.len());
        // Eight two-operand operations × 16 forms (r/m,r; r,r/m; r/m,imm; 82 and 83 /r imm8 at
        // four sizes), TEST × 12 (r/m,r; r/m,imm and its F6/F7 /1 alias), four unary × 4.
        assert_eq!(got.len(), 8 * 16 + 12 + 4 * 4);
    }

    /// The flags each operation defines and leaves undefined are iced-x86's, and CMP/TEST are
    /// the only ones that do not write.
    #[test]
    fn declared_flags_match_iced() {
        for (code, (kind, instr)) in accepted() {
            let (defined, undefined, writes) = declared(kind);
            let iced_defined =
                rflags_of(instr.rflags_written() | instr.rflags_cleared() | instr.rflags_set());
            assert_eq!(defined, iced_defined, "{code:?} defined");
            assert_eq!(undefined, rflags_of(instr.rflags_undefined()), "{code:?}");
            let reads_cf = matches!(kind, AluKind::Adc | AluKind::Sbb);
            assert_eq!(
                rflags_of(instr.rflags_read()),
                if reads_cf { CF } else { 0 }
            );
            assert_eq!(
                writes,
                !matches!(kind, AluKind::Cmp | AluKind::Test),
                "{code:?}"
            );
        }
    }
}
