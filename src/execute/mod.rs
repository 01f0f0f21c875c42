//! Execution: one module per instruction family. Each family says which manual section it
//! follows and which flags it defines.
//!
//! | family | module | instructions |
//! |---|---|---|
//! | moves | [`mov`] | MOV (r/m, moffs, imm, Sreg store), MOVZX, MOVSX, MOVSXD |
//! | strings | [`string`] | MOVS, STOS, LODS (with REP) |
//! | ports | [`io`] | IN, OUT, INS, OUTS (with REP); CPL/IOPL and the TSS I/O bitmap |
//! | ALU | [`alu`] | ADD, OR, ADC, SBB, AND, SUB, XOR, CMP, TEST, INC, DEC, NEG, NOT on memory; flags in [`flags`] |

mod alu;
mod flags;
mod io;
mod mov;
mod string;

use iced_x86::{Instruction, OpKind};

use crate::callbacks::EmulatorCallbacks;
use crate::error::EmulationError;
use crate::operand::{MemRef, operand_registers};
use crate::registers::Segment;
use crate::rep::Progress;
use crate::state::{Cpu, Mode, RegSet, Res, Slot};

/// The family an instruction belongs to, which decides how it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// MOV and its extending forms.
    Move,
    /// MOVS, STOS, LODS.
    String(string::StringOp),
    /// IN, OUT, INS, OUTS.
    Port(io::PortOp),
    /// ADD … NOT with a memory operand.
    Alu(alu::AluKind),
}

impl Family {
    /// The family of a decoded instruction, if hvemu emulates it.
    pub(crate) fn of(instr: &Instruction) -> Option<Family> {
        mov::classify(instr)
            .map(|()| Family::Move)
            .or_else(|| string::classify(instr).map(Family::String))
            .or_else(|| io::classify(instr).map(Family::Port))
            .or_else(|| alu::classify(instr).map(Family::Alu))
    }

    /// Whether the instruction accesses memory (so that a memory exit can come from it).
    pub(crate) fn touches_memory(self, instr: &Instruction) -> bool {
        match self {
            Family::Move => (0..instr.op_count()).any(|i| instr.op_kind(i) == OpKind::Memory),
            Family::String(_) => true,
            Family::Port(op) => op.string,
            Family::Alu(_) => true,
        }
    }

    /// The port operation, if this is one.
    pub(crate) fn port(self) -> Option<io::PortOp> {
        match self {
            Family::Port(op) => Some(op),
            _ => None,
        }
    }
}

/// Every register the instruction will read, so that one `get_registers` call gathers them.
pub(crate) fn registers_needed<C: EmulatorCallbacks>(
    cpu: &Cpu<'_, C>,
    family: Family,
    instr: &Instruction,
) -> RegSet {
    let mut set = operand_registers(instr);
    match family {
        Family::Move => set = mov::registers(set, instr),
        Family::String(op) => set = op.registers(set, instr),
        Family::Port(op) => {
            set = op.registers(set, instr, cpu.port_hint.is_some());
            if cpu.port_permission_checked() {
                set = set.with(Slot::Tr);
            }
        }
        // Its explicit operands are all it reads (RFLAGS comes with the exit).
        Family::Alu(_) => {}
    }
    if cpu.state.mode == Mode::Long {
        // Only FS and GS have bases in 64-bit mode; the others need not be read.
        for s in [Segment::Es, Segment::Ss, Segment::Ds] {
            set = set.without(Slot::Seg(s));
        }
    }
    set
}

/// Runs the instruction.
pub(crate) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    family: Family,
    instr: &Instruction,
) -> Res<Progress, C> {
    match family {
        Family::Move => mov::run(cpu, instr).map(|()| Progress::Complete),
        Family::String(op) => string::run(cpu, instr, op),
        Family::Port(op) => io::run(cpu, instr, op),
        Family::Alu(kind) => alu::run(cpu, instr, kind).map(|()| Progress::Complete),
    }
}

/// Reads a 1-, 2-, 4- or 8-byte value from memory.
pub(crate) fn read_value<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    mem: MemRef,
    size: usize,
) -> Res<u64, C> {
    let mut buf = [0u8; 8];
    cpu.read_mem(mem, buf.get_mut(..size.min(8)).unwrap_or(&mut []))?;
    Ok(u64::from_le_bytes(buf))
}

/// The error for an instruction form hvemu does not emulate.
pub(crate) fn unsupported<E>(instr: &Instruction) -> EmulationError<E> {
    EmulationError::Unsupported { code: instr.code() }
}
