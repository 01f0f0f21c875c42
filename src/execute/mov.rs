//! Moves: MOV (SDM Vol. 2B "MOV—Move", including the moffs forms A0–A3 and the segment
//! register store 8C), MOVZX, MOVSX and MOVSXD. No flags are read or written.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::{read_value, unsupported};
use crate::access::Intent;
use crate::callbacks::EmulatorCallbacks;
use crate::state::{Cpu, RegSet, Res, Slot, gpr_index, segment_of};

/// `Some(())` for the moves hvemu emulates.
#[inline]
pub(super) fn classify(instr: &Instruction) -> Option<()> {
    let loads_segment = instr.code() == Code::Mov_Sreg_rm16
        || instr.code() == Code::Mov_Sreg_r32m16
        || instr.code() == Code::Mov_Sreg_r64m16;
    match instr.mnemonic() {
        Mnemonic::Mov if !loads_segment => Some(()),
        Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd => Some(()),
        _ => None,
    }
}

/// Drops a destination register whose old value the move does not need: a 32- or 64-bit
/// write replaces all of it (unless it also forms the address).
#[inline]
pub(super) fn registers(set: RegSet, instr: &Instruction) -> RegSet {
    let dst = instr.op0_register();
    let addresses = [instr.memory_base(), instr.memory_index()];
    if instr.op0_kind() == OpKind::Register
        && dst.size() >= 4
        && !addresses
            .iter()
            .any(|r| r.full_register() == dst.full_register())
    {
        if let Some(n) = gpr_index(dst) {
            return set.without(Slot::Gpr(n));
        }
    }
    set
}

/// `value`'s low `size` bytes, sign-extended to 64 bits.
pub(crate) fn sign_extend(value: u64, size: usize) -> u64 {
    match size {
        1 => value as u8 as i8 as i64 as u64,
        2 => value as u16 as i16 as i64 as u64,
        4 => value as u32 as i32 as i64 as u64,
        _ => value,
    }
}

// Out of line: a frame of its own keeps its accesses inlined into it whatever else grows.
#[inline(never)]
pub(super) fn run<C: EmulatorCallbacks>(cpu: &mut Cpu<'_, C>, instr: &Instruction) -> Res<(), C> {
    let size = instr.memory_size().size();
    if !matches!(size, 1 | 2 | 4 | 8) {
        return Err(unsupported(instr));
    }
    let mem = cpu.effective_address(instr)?;
    if instr.op0_kind() == OpKind::Memory {
        let value = match instr.op1_kind() {
            OpKind::Register => {
                let reg = instr.op1_register();
                match segment_of(reg) {
                    Some(seg) => u64::from(cpu.segment(seg)?.selector),
                    None => cpu.read_reg(reg)?,
                }
            }
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate32to64 => instr.immediate(1),
            _ => return Err(unsupported(instr)),
        };
        let span = cpu.resolve(mem, size, Intent::Write)?;
        return cpu.write_value(&span, value, size);
    }
    let value = read_value(cpu, mem, size)?;
    let value = match instr.mnemonic() {
        Mnemonic::Movsx | Mnemonic::Movsxd => sign_extend(value, size),
        _ => value,
    };
    cpu.write_reg(instr.op0_register(), value)
}
