//! Conditional instructions with a memory operand: SETcc to memory and CMOVcc from memory, all
//! sixteen conditions (SDM Vol. 2B "SETcc", Vol. 2A "CMOVcc"; AMD APM Vol. 3 for the same).
//! The condition comes from [`super::flags::condition`], the one evaluator of the `cc` codes.
//!
//! * SETcc writes one byte, 1 when the condition holds and 0 otherwise: always a write (the
//!   byte is never read).
//! * CMOVcc reads its memory source whatever the condition (the SDM's "Operation" loads the
//!   source into a temporary before testing the condition, so the read, and any fault on it,
//!   happens either way) and moves it to the register only when the condition holds. With a
//!   32-bit operand in IA-32e mode (EFER.LMA, so 64-bit and compatibility mode) the
//!   destination's bits 63:32 are cleared even when the condition is false (the same
//!   "Operation": `ELSE IF OperandSize = 32 and IA-32e mode active THEN DEST[63:32] ← 0`).
//!   Otherwise a false condition leaves the register alone.
//!
//! No flag is changed. No LOCK form exists (iced-x86 rejects it).

use iced_x86::{Code, Instruction, OpKind};

use super::flags::condition;
use super::{read_value, unsupported};
use crate::access::Intent;
use crate::callbacks::EmulatorCallbacks;
use crate::state::{Cpu, Res};

/// Which instruction, as [`super::Family::Cond`] carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CondKind {
    /// SETcc r/m8 with a memory operand.
    Set,
    /// CMOVcc r, r/m with a memory source.
    Move,
}

fn in_range(code: Code, first: Code, last: Code) -> bool {
    (first as u32..=last as u32).contains(&(code as u32))
}

/// The kind of a SETcc or CMOVcc with a memory operand; `None` for anything else.
pub(super) fn classify(instr: &Instruction) -> Option<CondKind> {
    let code = instr.code();
    let (kind, mem_op) = if in_range(code, Code::Seto_rm8, Code::Setg_rm8) {
        (CondKind::Set, 0)
    } else if in_range(code, Code::Cmovo_r16_rm16, Code::Cmovg_r64_rm64) {
        (CondKind::Move, 1)
    } else {
        return None;
    };
    (instr.op_kind(mem_op) == OpKind::Memory).then_some(kind)
}

/// Runs the instruction.
pub(super) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    kind: CondKind,
) -> Res<(), C> {
    let holds =
        condition(instr.condition_code(), cpu.state.rflags).ok_or_else(|| unsupported(instr))?;
    let size = instr.memory_size().size();
    let mem = cpu.effective_address(instr)?;
    match kind {
        CondKind::Set => {
            if size != 1 || instr.op0_kind() != OpKind::Memory {
                return Err(unsupported(instr));
            }
            let span = cpu.resolve(mem, 1, Intent::Write)?;
            cpu.write_value(&span, u64::from(holds), 1)
        }
        CondKind::Move => {
            if !matches!(size, 2 | 4 | 8) || instr.op0_kind() != OpKind::Register {
                return Err(unsupported(instr));
            }
            let dst = instr.op0_register();
            let value = read_value(cpu, mem, size)?;
            if holds {
                cpu.write_reg(dst, value)
            } else if size == 4 && cpu.state.exec.efer_lma {
                // Written with its own low half: bits 63:32 cleared.
                let low = cpu.read_reg(dst)?;
                cpu.write_reg(dst, low)
            } else {
                Ok(())
            }
        }
    }
}
