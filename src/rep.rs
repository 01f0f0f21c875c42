//! The REP driver: runs a string instruction's iterations with the count, termination and
//! per-call bound the architecture and the configuration give (SDM Vol. 2B, "REP/REPE/REPZ/
//! REPNE/REPNZ").
//!
//! One iteration is all-or-nothing: its faults are found before its first side effect and its
//! registers change only when it completes. When an iteration fails after others completed,
//! the driver stops before it and reports the progress as a partial completion: the monitor
//! commits RCX/RSI/RDI as after the last completed iteration, RIP stays on the instruction, and
//! the guest's re-execution meets the failure again as its first iteration, where nothing has
//! happened yet and the failure is reported.

use iced_x86::Instruction;

use crate::callbacks::EmulatorCallbacks;
use crate::operand::address_mask;
use crate::state::{Cpu, RFLAGS_ZF, Res, gpr};

/// How far one call got through an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// The instruction completed: RIP moves to the next one.
    Complete,
    /// A REP instruction stopped part way: RIP stays on it.
    Partial,
    /// Nothing happened (a locked operation kept losing its race): RIP stays on the
    /// instruction and the guest runs it again.
    Retry,
}

/// Which prefix governs the repetition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repeat {
    Once,
    /// REP: until RCX is 0.
    Count,
    /// REPE/REPZ: also stop when ZF is 0.
    WhileEqual,
    /// REPNE/REPNZ: also stop when ZF is 1.
    WhileNotEqual,
}

fn repeat_kind(instr: &Instruction, compares: bool) -> Repeat {
    match (instr.has_rep_prefix(), instr.has_repne_prefix(), compares) {
        (false, false, _) => Repeat::Once,
        (true, _, true) => Repeat::WhileEqual,
        (false, true, true) => Repeat::WhileNotEqual,
        // F2 and F3 both mean plain REP for instructions that do not compare.
        (_, _, false) => Repeat::Count,
    }
}

/// Runs `step` once, or as the REP prefix says with `address_size` (bytes) sizing RCX.
/// `compares` is true for CMPS/SCAS, whose REPE/REPNE forms also test ZF.
pub(crate) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    address_size: usize,
    compares: bool,
    mut step: impl FnMut(&mut Cpu<'_, C>) -> Res<(), C>,
) -> Res<Progress, C> {
    let repeat = repeat_kind(instr, compares);
    if repeat == Repeat::Once {
        step(cpu)?;
        return Ok(Progress::Complete);
    }
    let mut count = cpu.gpr(gpr::RCX)? & address_mask(address_size);
    let budget = cpu.rep_budget;
    let mut done = 0u32;
    while let Some(remaining) = count.checked_sub(1) {
        if done >= budget {
            return Ok(Progress::Partial);
        }
        if let Err(e) = step(cpu) {
            return if done == 0 {
                Err(e)
            } else {
                Ok(Progress::Partial)
            };
        }
        // Below `budget`, a u32: cannot saturate.
        done = done.saturating_add(1);
        count = remaining;
        cpu.set_gpr_sized(gpr::RCX, count, address_size)?;
        let zf = cpu.state.rflags & RFLAGS_ZF != 0;
        match repeat {
            Repeat::WhileEqual if !zf => break,
            Repeat::WhileNotEqual if zf => break,
            _ => {}
        }
    }
    Ok(Progress::Complete)
}
