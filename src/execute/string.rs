//! String moves: MOVS, STOS, LODS (SDM Vol. 2B "MOVS/MOVSB/MOVSW/MOVSD/MOVSQ", "STOS", "LODS";
//! AMD APM Vol. 3). No flags are written; DF chooses the direction. The source segment may be
//! overridden, the destination is always ES. rSI, rDI and rCX are sized by the address size.
//!
//! String compares: CMPS and SCAS (SDM Vol. 2A "CMPS/CMPSB/CMPSW/CMPSD/CMPSQ", Vol. 2B
//! "SCAS/SCASB/SCASW/SCASD"). CMPS sets the six status flags as `CMP [seg:rSI], [ES:rDI]`
//! (the source segment overridable, DS by default), SCAS as `CMP rAX, [ES:rDI]`, both through
//! [`super::flags::sub`]; no other flag changes. CMPS resolves both operands (segmentation,
//! translation) before reading either, then reads rSI's first. With REPE/REPZ (F3) the
//! repetition also stops after an iteration that clears ZF, with REPNE/REPNZ (F2) after one
//! that sets it ([`crate::rep`]); RCX, RSI, RDI and the flags are then those of that last
//! iteration.

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::flags::{self, ARITHMETIC};
use super::{read_value, unsupported};
use crate::access::Intent;
use crate::callbacks::EmulatorCallbacks;
use crate::operand::{MemRef, address_mask};
use crate::registers::Segment;
use crate::rep::{self, Block, Progress};
use crate::state::gpr::{RAX, RCX, RDI, RSI};
use crate::state::{Cpu, RFLAGS_DF, RegSet, Res, Slot, segment_of};

/// Which string move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StringKind {
    /// `[rDI] ← [rSI]`.
    Movs,
    /// `[rDI] ← rAX`.
    Stos,
    /// `rAX ← [rSI]`.
    Lods,
    /// The flags of `[rSI] − [rDI]`.
    Cmps,
    /// The flags of `rAX − [rDI]`.
    Scas,
}

/// A string move with its element size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StringOp {
    pub kind: StringKind,
}

pub(super) fn classify(instr: &Instruction) -> Option<StringOp> {
    let kind = match instr.mnemonic() {
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsq => StringKind::Movs,
        // MOVSD is also the SSE move; only the string form has string operands.
        Mnemonic::Movsd if string_address_size(instr).is_some() => StringKind::Movs,
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => StringKind::Stos,
        Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd | Mnemonic::Lodsq => StringKind::Lods,
        Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsq => StringKind::Cmps,
        // CMPSD is also the SSE compare; only the string form has string operands.
        Mnemonic::Cmpsd if string_address_size(instr).is_some() => StringKind::Cmps,
        Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd | Mnemonic::Scasq => StringKind::Scas,
        _ => return None,
    };
    Some(StringOp { kind })
}

/// The address size of a string instruction, from its rSI/rDI operand kinds, in bytes.
pub(crate) fn string_address_size(instr: &Instruction) -> Option<usize> {
    (0..instr.op_count()).find_map(|i| match instr.op_kind(i) {
        OpKind::MemorySegSI | OpKind::MemoryESDI => Some(2),
        OpKind::MemorySegESI | OpKind::MemoryESEDI => Some(4),
        OpKind::MemorySegRSI | OpKind::MemoryESRDI => Some(8),
        _ => None,
    })
}

/// The accumulator register of the element size (AL, AX, EAX, RAX).
pub(crate) fn accumulator(size: usize) -> iced_x86::Register {
    match size {
        1 => iced_x86::Register::AL,
        2 => iced_x86::Register::AX,
        4 => iced_x86::Register::EAX,
        _ => iced_x86::Register::RAX,
    }
}

/// Moves an address register by one element in the direction DF gives.
pub(crate) fn advance<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    reg: u8,
    element: usize,
    address_size: usize,
) -> Res<(), C> {
    let step = element as u64;
    let old = cpu.gpr(reg)?;
    let new = if cpu.state.rflags & RFLAGS_DF != 0 {
        old.wrapping_sub(step)
    } else {
        old.wrapping_add(step)
    };
    cpu.set_gpr_sized(reg, new, address_size)
}

/// The operand at rSI (source segment, overridable) or rDI (always ES).
pub(crate) fn string_operand<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    seg: Segment,
    reg: u8,
    address_size: usize,
) -> Res<MemRef, C> {
    Ok(MemRef {
        seg,
        offset: cpu.gpr(reg)? & address_mask(address_size),
    })
}

impl StringOp {
    /// Adds the registers the instruction reads beyond its explicit operands.
    pub(crate) fn registers(self, set: RegSet, instr: &Instruction) -> RegSet {
        use StringKind::{Cmps, Lods, Movs, Scas, Stos};
        let mut set = set.with(Slot::Gpr(RCX));
        if matches!(self.kind, Movs | Lods | Cmps) {
            set = set
                .with(Slot::Gpr(RSI))
                .with_register(instr.memory_segment());
        }
        if matches!(self.kind, Movs | Stos | Cmps | Scas) {
            set = set.with(Slot::Gpr(RDI)).with(Slot::Seg(Segment::Es));
        }
        if matches!(self.kind, Stos | Lods | Scas) {
            set = set.with(Slot::Gpr(RAX));
        }
        set
    }
}

pub(super) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    op: StringOp,
) -> Res<Progress, C> {
    let size = instr.memory_size().size();
    let (Some(address_size), true) = (string_address_size(instr), matches!(size, 1 | 2 | 4 | 8))
    else {
        return Err(unsupported(instr));
    };
    let source = segment_of(instr.memory_segment()).unwrap_or(Segment::Ds);
    let compares = matches!(op.kind, StringKind::Cmps | StringKind::Scas);
    let block = match op.kind {
        StringKind::Movs => Some(Block::Movs { source }),
        StringKind::Stos => Some(Block::Stos {
            value: cpu.read_reg(accumulator(size))?,
        }),
        _ => None,
    };
    let step = |cpu: &mut Cpu<'_, C>| {
        let mut buf = [0u8; 8];
        let data = buf.get_mut(..size).unwrap_or(&mut []);
        match op.kind {
            StringKind::Movs => {
                let src = string_operand(cpu, source, RSI, address_size)?;
                let dst = string_operand(cpu, Segment::Es, RDI, address_size)?;
                let src = cpu.resolve(src, size, Intent::Read)?;
                let dst = cpu.resolve(dst, size, Intent::Write)?;
                cpu.read_span(&src, data)?;
                cpu.write_span(&dst, data)?;
                advance(cpu, RSI, size, address_size)?;
                advance(cpu, RDI, size, address_size)
            }
            StringKind::Stos => {
                let dst = string_operand(cpu, Segment::Es, RDI, address_size)?;
                let value = cpu.read_reg(accumulator(size))?;
                let dst = cpu.resolve(dst, size, Intent::Write)?;
                for (d, s) in data.iter_mut().zip(value.to_le_bytes()) {
                    *d = s;
                }
                cpu.write_span(&dst, data)?;
                advance(cpu, RDI, size, address_size)
            }
            StringKind::Lods => {
                let src = string_operand(cpu, source, RSI, address_size)?;
                let value = read_value(cpu, src, size)?;
                cpu.write_reg(accumulator(size), value)?;
                advance(cpu, RSI, size, address_size)
            }
            StringKind::Cmps => {
                let src = string_operand(cpu, source, RSI, address_size)?;
                let dst = string_operand(cpu, Segment::Es, RDI, address_size)?;
                let src = cpu.resolve(src, size, Intent::Read)?;
                let dst = cpu.resolve(dst, size, Intent::Read)?;
                let first = cpu.read_span_value(&src, size)?;
                let second = cpu.read_span_value(&dst, size)?;
                compare(cpu, first, second, size);
                advance(cpu, RSI, size, address_size)?;
                advance(cpu, RDI, size, address_size)
            }
            StringKind::Scas => {
                let dst = string_operand(cpu, Segment::Es, RDI, address_size)?;
                let value = cpu.read_reg(accumulator(size))?;
                let found = read_value(cpu, dst, size)?;
                compare(cpu, value, found, size);
                advance(cpu, RDI, size, address_size)
            }
        }
    };
    match block {
        Some(block) => rep::run_blocks(cpu, instr, address_size, size, block, step),
        None => rep::run(cpu, instr, address_size, compares, step),
    }
}

/// Sets the six status flags as `CMP first, second` at `size` bytes does.
fn compare<C: EmulatorCallbacks>(cpu: &mut Cpu<'_, C>, first: u64, second: u64, size: usize) {
    let outcome = flags::sub(first, second, false, size);
    cpu.state.rflags = (cpu.state.rflags & !ARITHMETIC) | outcome.flags;
}

#[cfg(test)]
mod tests {
    extern crate std;

    use iced_x86::Code;
    use std::vec::Vec;

    use super::*;
    use crate::execute::{Family, tests::decode_all_forms};

    /// The string family accepts exactly iced-x86's MOVS, STOS, LODS, CMPS and SCAS codes (and
    /// not the SSE CMPSD/MOVSD that share a mnemonic).
    #[test]
    fn every_string_code_is_accepted() {
        let forms = decode_all_forms();
        let accepted = |kind: StringKind| -> Vec<Code> {
            Code::values()
                .filter(|c| {
                    forms.get(c).is_some_and(|samples| {
                        samples
                            .iter()
                            .any(|i| Family::of(i) == Some(Family::String(StringOp { kind })))
                    })
                })
                .collect()
        };
        let cmps = accepted(StringKind::Cmps);
        let scas = accepted(StringKind::Scas);
        assert_eq!(
            cmps,
            [
                Code::Cmpsb_m8_m8,
                Code::Cmpsw_m16_m16,
                Code::Cmpsd_m32_m32,
                Code::Cmpsq_m64_m64
            ]
        );
        assert_eq!(
            scas,
            [
                Code::Scasb_AL_m8,
                Code::Scasw_AX_m16,
                Code::Scasd_EAX_m32,
                Code::Scasq_RAX_m64
            ]
        );
        let sse = forms.get(&Code::Cmpsd_xmm_xmmm64_imm8).expect("decoded");
        assert!(sse.iter().all(|i| classify(i).is_none()));
        std::println!(
            "string compares: {} iced-x86 Code values (CMPS {}, SCAS {})",
            cmps.len() + scas.len(),
            cmps.len(),
            scas.len()
        );
    }
}
