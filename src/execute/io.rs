//! Port I/O: IN, OUT, INS, OUTS (SDM Vol. 2A "IN", "INS", Vol. 2B "OUT", "OUTS"; protection in
//! SDM Vol. 1 §19.5 and §19.5.2, the I/O permission bit map). No flags are written.
//!
//! In protected mode, when CPL > IOPL, and always in virtual-8086 mode, every port byte the
//! access touches must be clear in the TSS's I/O permission bitmap; otherwise #GP(0). The
//! processor reads the two bitmap bytes covering the port, so both must lie within the TSS
//! limit.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::string::{accumulator, advance, string_address_size, string_operand};
use super::{read_value, unsupported};
use crate::access::{Intent, Privilege};
use crate::callbacks::EmulatorCallbacks;
use crate::error::Exception;
use crate::registers::Segment;
use crate::rep::{self, Block, Progress};
use crate::state::gpr::{RAX, RCX, RDI, RDX, RSI};
use crate::state::{Cpu, Mode, RegSet, Res, Slot, segment_of};

/// A port operation: direction, element size and whether it is a string form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortOp {
    /// OUT/OUTS.
    pub is_write: bool,
    /// INS/OUTS.
    pub string: bool,
    /// Bytes per element: 1, 2 or 4.
    pub size: u8,
}

pub(super) fn classify(instr: &Instruction) -> Option<PortOp> {
    let (is_write, string) = match instr.mnemonic() {
        Mnemonic::In => (false, false),
        Mnemonic::Out => (true, false),
        Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd => (false, true),
        Mnemonic::Outsb | Mnemonic::Outsw | Mnemonic::Outsd => (true, true),
        _ => return None,
    };
    let size = if string {
        instr.memory_size().size()
    } else {
        let data = if is_write {
            instr.op1_register()
        } else {
            instr.op0_register()
        };
        data.size()
    };
    let size = u8::try_from(size).ok().filter(|s| matches!(s, 1 | 2 | 4))?;
    Some(PortOp {
        is_write,
        string,
        size,
    })
}

impl PortOp {
    /// Adds the registers the instruction reads beyond its explicit operands.
    pub(crate) fn registers(self, set: RegSet, instr: &Instruction, port_known: bool) -> RegSet {
        let mut set = set;
        if port_known {
            set = set.without(Slot::Gpr(RDX));
        } else if uses_dx(instr) {
            set = set.with(Slot::Gpr(RDX));
        }
        if !self.string {
            // A 32-bit IN replaces all of RAX; the narrower ones merge into it.
            if self.is_write || self.size < 4 {
                set = set.with(Slot::Gpr(RAX));
            } else {
                set = set.without(Slot::Gpr(RAX));
            }
            return set;
        }
        set = set.with(Slot::Gpr(RCX));
        if self.is_write {
            set.with(Slot::Gpr(RSI))
                .with_register(instr.memory_segment())
        } else {
            set.with(Slot::Gpr(RDI)).with(Slot::Seg(Segment::Es))
        }
    }
}

fn uses_dx(instr: &Instruction) -> bool {
    (0..instr.op_count())
        .any(|i| instr.op_kind(i) == OpKind::Register && instr.op_register(i) == Register::DX)
}

impl<C: EmulatorCallbacks> Cpu<'_, C> {
    /// Whether port accesses must consult the I/O permission bitmap.
    pub(crate) fn port_permission_checked(&self) -> bool {
        let iopl = ((self.state.rflags >> 12) & 3) as u8;
        match self.state.mode {
            Mode::Real => false,
            Mode::Virtual8086 => true,
            Mode::Protected | Mode::Long => self.state.cpl > iopl,
        }
    }

    /// #GP(0) unless the current privilege may access `size` ports at `port`.
    fn check_port_permission(&mut self, port: u16, size: u8) -> Res<(), C> {
        if !self.port_permission_checked() {
            return Ok(());
        }
        let tr = self.tr()?;
        // Only a present 32/64-bit TSS (available 9 or busy 11) has a bitmap.
        let is_tss32 = matches!(tr.segment_type(), 9 | 11) && tr.present();
        let limit = u64::from(tr.limit);
        if !is_tss32 || limit < 0x67 {
            return Err(Exception::gp(0).into());
        }
        let map_base = u64::from(self.read_system_u16(tr.base.wrapping_add(0x66))?);
        // The map's base and the port's byte in it are 16-bit: the sum cannot overflow.
        let byte = map_base.saturating_add(u64::from(port / 8));
        // The bitmap read takes two bytes, `byte` and `byte + 1`: both must be within the limit.
        if byte >= limit {
            return Err(Exception::gp(0).into());
        }
        let bits = self.read_system_u16(tr.base.wrapping_add(byte))?;
        // `size` (1, 2 or 4) ones, at the port's bit.
        let mask = !(u32::MAX << size) << (port % 8);
        if u32::from(bits) & mask != 0 {
            return Err(Exception::gp(0).into());
        }
        Ok(())
    }

    /// Reads two bytes at a linear address as the processor does for its own structures.
    fn read_system_u16(&mut self, linear: u64) -> Res<u16, C> {
        let linear = if self.state.is_long() {
            // LTR only loads canonical bases; a monitor's state that says otherwise gets the
            // #GP(0) a non-canonical reference would.
            if !crate::operand::canonical(linear, 57) {
                return Err(crate::error::Exception::gp(0).into());
            }
            linear
        } else {
            linear & 0xFFFF_FFFF
        };
        let span = self.translate(linear, 2, Intent::Read, Privilege::System)?;
        let mut buf = [0u8; 2];
        self.read_span(&span, &mut buf)?;
        Ok(u16::from_le_bytes(buf))
    }

    fn port_of(&mut self, instr: &Instruction) -> Res<u16, C> {
        if instr.op_kind(0) == OpKind::Immediate8 || instr.op_kind(1) == OpKind::Immediate8 {
            return Ok(u16::from(instr.immediate8()));
        }
        match self.port_hint {
            Some(port) => Ok(port),
            None => Ok(self.gpr(RDX)? as u16),
        }
    }
}

pub(super) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    op: PortOp,
) -> Res<Progress, C> {
    let port = cpu.port_of(instr)?;
    cpu.check_port_permission(port, op.size)?;
    let size = usize::from(op.size);
    if !op.string {
        let data = accumulator(size);
        if op.is_write {
            let value = cpu.read_reg(data)?;
            cpu.port_out(port, op.size, value as u32)?;
        } else {
            let value = cpu.port_in(port, op.size)?;
            cpu.write_reg(data, u64::from(value))?;
        }
        return Ok(Progress::Complete);
    }
    let Some(address_size) = string_address_size(instr) else {
        return Err(unsupported(instr));
    };
    let source = segment_of(instr.memory_segment()).unwrap_or(Segment::Ds);
    let block = if op.is_write {
        Block::Outs { source, port }
    } else {
        Block::Ins { port }
    };
    rep::run_blocks(cpu, instr, address_size, size, block, |cpu| {
        let mut buf = [0u8; 4];
        let data = buf.get_mut(..size).unwrap_or(&mut []);
        if op.is_write {
            let src = string_operand(cpu, source, RSI, address_size)?;
            let value = read_value(cpu, src, size)?;
            cpu.port_out(port, op.size, value as u32)?;
            advance(cpu, RSI, size, address_size)
        } else {
            let dst = string_operand(cpu, Segment::Es, RDI, address_size)?;
            // Translate before the port read: a fault must come before the device sees it.
            let dst = cpu.resolve(dst, size, Intent::Write)?;
            let value = cpu.port_in(port, op.size)?;
            for (d, s) in data.iter_mut().zip(value.to_le_bytes()) {
                *d = s;
            }
            cpu.write_span(&dst, data)?;
            advance(cpu, RDI, size, address_size)
        }
    })
}
