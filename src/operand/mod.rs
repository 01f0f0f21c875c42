//! Operands: where an instruction's memory operand lies (effective address, segment, address
//! size) and how it becomes a translated guest-physical span.
//!
//! Effective addresses follow SDM Vol. 1 §3.7.5 (base + index × scale + displacement, truncated
//! to the address size, so 16-bit forms wrap at 64 KiB) and §3.5.1.4 for RIP-relative forms.

mod segment;

pub(crate) use segment::canonical;

use iced_x86::{Instruction, OpKind, Register};

use crate::access::{Intent, Privilege, Span};
use crate::callbacks::EmulatorCallbacks;
use crate::error::EmulationError;
use crate::registers::Segment;
use crate::state::{Cpu, RegSet, Res, gpr_index, segment_of};

/// A memory operand before segmentation: which segment, which offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemRef {
    pub seg: Segment,
    pub offset: u64,
}

/// The address size of an instruction's `OpKind::Memory` operand, in bytes.
#[inline]
pub(crate) fn memory_address_size(instr: &Instruction) -> usize {
    let base = instr.memory_base();
    let index = instr.memory_index();
    if base != Register::None && !matches!(base, Register::RIP | Register::EIP) {
        base.size()
    } else if base == Register::EIP {
        4
    } else if base == Register::RIP {
        8
    } else if index != Register::None {
        index.size()
    } else {
        instr.memory_displ_size() as usize
    }
}

/// All-ones over an address size in bytes.
pub(crate) const fn address_mask(size: usize) -> u64 {
    match size {
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

/// The registers an instruction's explicit operands name: register operands and the base,
/// index and segment of a memory operand.
#[inline]
pub(crate) fn operand_registers(instr: &Instruction) -> RegSet {
    let mut set = RegSet::EMPTY;
    for i in 0..instr.op_count() {
        match instr.op_kind(i) {
            OpKind::Register => set = set.with_register(instr.op_register(i)),
            OpKind::Memory => {
                set = set
                    .with_register(instr.memory_base())
                    .with_register(instr.memory_index())
                    .with_register(instr.memory_segment());
            }
            _ => {}
        }
    }
    set
}

impl<C: EmulatorCallbacks> Cpu<'_, C> {
    /// The segment and offset of the instruction's `OpKind::Memory` operand.
    pub(crate) fn effective_address(&mut self, instr: &Instruction) -> Res<MemRef, C> {
        let unsupported = || EmulationError::Unsupported { code: instr.code() };
        let seg = segment_of(instr.memory_segment()).ok_or_else(unsupported)?;
        let mask = address_mask(memory_address_size(instr));
        let base = instr.memory_base();
        let index = instr.memory_index();
        // RIP-relative: iced has already added the next instruction's address.
        let mut ea = instr.memory_displacement64();
        if base != Register::None && !matches!(base, Register::RIP | Register::EIP) {
            let n = gpr_index(base).ok_or_else(unsupported)?;
            ea = ea.wrapping_add(self.gpr(n)?);
        }
        if index != Register::None {
            // Vector (VSIB) indexes belong to gathers and scatters, not MMIO moves.
            let n = gpr_index(index).ok_or_else(unsupported)?;
            let scale = u64::from(instr.memory_index_scale());
            ea = ea.wrapping_add(self.gpr(n)?.wrapping_mul(scale));
        }
        Ok(MemRef {
            seg,
            offset: ea & mask,
        })
    }

    /// Segmentation checks and translation of `len` bytes at `mem`: afterwards the access can
    /// no longer fault.
    // Inlined for the reason `translate` is: the span stays in registers.
    #[inline(always)]
    pub(crate) fn resolve(&mut self, mem: MemRef, len: usize, intent: Intent) -> Res<Span, C> {
        let linear = self.linearize(mem.seg, mem.offset, len, intent)?;
        self.translate(linear, len, intent, Privilege::Current)
    }
}
