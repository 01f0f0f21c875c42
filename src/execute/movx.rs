//! Moves with a twist: MOVBE, which swaps the byte order on the way (SDM Vol. 2B "MOVBE"),
//! MOVNTI, a store with a non-temporal hint (Vol. 2B "MOVNTI"), and the direct stores MOVDIRI
//! and MOVDIR64B (Vol. 2B "MOVDIRI", "MOVDIR64B").
//!
//! * `MOVBE r, m16/m32/m64` reads memory and writes the register with the bytes reversed (a
//!   16-bit load keeps the rest of the register, a 32-bit load zero-extends it).
//! * `MOVBE m, r` writes the register's bytes to memory in reverse order; the memory is only
//!   written.
//! * `MOVNTI m32/m64, r` is an ordinary store here: the hint concerns caches, and the write
//!   reaches the monitor's `memory` callback as any other.
//!
//! * `MOVDIRI m32/m64, r` is a store, like MOVNTI.
//! * `MOVDIR64B r, m512` copies 64 bytes from memory to ES:[r] (r sized by the address size,
//!   64-byte aligned or #GP(0)), the destination written in one 64-byte `memory` access.
//!
//! No flag is read or changed. No LOCK form exists (iced-x86 rejects it).

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::{read_value, unsupported};
use crate::access::{Intent, Privilege};
use crate::callbacks::EmulatorCallbacks;
use crate::error::Exception;
use crate::registers::Segment;
use crate::state::{Cpu, Res};

/// Which instruction, as [`super::Family::MovX`] carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MovXKind {
    /// MOVBE, either direction.
    Movbe,
    /// MOVNTI.
    Movnti,
    /// MOVDIRI: a direct store of a GPR (no flags, no byte swap).
    Movdiri,
    /// MOVDIR64B: 64 bytes from memory to the 64-byte-aligned ES:[reg] as one write.
    Movdir64b,
}

/// The kind of a MOVBE or MOVNTI with a memory operand; `None` for anything else.
pub(super) fn classify(instr: &Instruction) -> Option<MovXKind> {
    let kind = match instr.mnemonic() {
        Mnemonic::Movbe => MovXKind::Movbe,
        Mnemonic::Movnti => MovXKind::Movnti,
        Mnemonic::Movdiri => MovXKind::Movdiri,
        Mnemonic::Movdir64b => MovXKind::Movdir64b,
        _ => return None,
    };
    let memory = (0..instr.op_count()).any(|i| instr.op_kind(i) == OpKind::Memory);
    memory.then_some(kind)
}

/// `value`'s low `size` bytes in reverse order.
fn swap(value: u64, size: usize) -> u64 {
    match size {
        2 => u64::from((value as u16).swap_bytes()),
        4 => u64::from((value as u32).swap_bytes()),
        _ => value.swap_bytes(),
    }
}

/// Runs the instruction.
pub(super) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    kind: MovXKind,
) -> Res<(), C> {
    if kind == MovXKind::Movdir64b {
        return movdir64b(cpu, instr);
    }
    let size = instr.memory_size().size();
    if !matches!(size, 2 | 4 | 8) {
        return Err(unsupported(instr));
    }
    let mem = cpu.effective_address(instr)?;
    match (instr.op0_kind(), instr.op1_kind()) {
        (OpKind::Memory, OpKind::Register) => {
            let value = cpu.read_reg(instr.op1_register())?;
            let value = match kind {
                MovXKind::Movbe => swap(value, size),
                MovXKind::Movnti | MovXKind::Movdiri | MovXKind::Movdir64b => value,
            };
            let span = cpu.resolve(mem, size, Intent::Write)?;
            cpu.write_value(&span, value, size)
        }
        (OpKind::Register, OpKind::Memory) if kind == MovXKind::Movbe => {
            let value = read_value(cpu, mem, size)?;
            cpu.write_reg(instr.op0_register(), swap(value, size))
        }
        _ => Err(unsupported(instr)),
    }
}

/// MOVDIR64B (SDM Vol. 2B "MOVDIR64B"): the 64-byte source operand is written to ES:[reg],
/// where the register's size is the address size and the destination must be 64-byte aligned
/// (#GP(0) otherwise). Both operands are checked and translated before the single 64-byte
/// write, which a device sees as one access.
fn movdir64b<C: EmulatorCallbacks>(cpu: &mut Cpu<'_, C>, instr: &Instruction) -> Res<(), C> {
    const SIZE: usize = 64;
    if instr.op0_kind() != OpKind::Register || instr.op1_kind() != OpKind::Memory {
        return Err(unsupported(instr));
    }
    let src = cpu.effective_address(instr)?;
    // The register operand at its own width is the destination offset.
    let offset = cpu.read_reg(instr.op0_register())?;
    let src = cpu.resolve(src, SIZE, Intent::Read)?;
    let linear = cpu.linearize(Segment::Es, offset, SIZE, Intent::Write)?;
    if linear % 64 != 0 {
        return Err(Exception::gp(0).into());
    }
    let dst = cpu.translate(linear, SIZE, Intent::Write, Privilege::Current)?;
    let mut data = [0u8; SIZE];
    cpu.read_span(&src, &mut data)?;
    cpu.write_span(&dst, &mut data)
}
