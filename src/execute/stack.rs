//! The stack, and near control transfers through memory: PUSH, POP, PUSHF, CALL, JMP, RET and
//! LEAVE (SDM Vol. 2B "PUSH", "POP", "PUSHF/PUSHFD/PUSHFQ", "RET"; Vol. 2A "CALL", "JMP",
//! "LEAVE"; SDM Vol. 1 §6.2 "Stacks", §6.3 "Calling Procedures Using CALL and RET"; AMD APM
//! Vol. 3 for the same instructions). No flag changes.
//!
//! The memory exit may come from either side: the operand (`push [mmio]`, `pop [mmio]`,
//! `call [mmio]`, `jmp [mmio]`) or the stack itself when it lies in emulated memory (any push
//! or pop, the return address of CALL, the one RET reads, LEAVE's pop).
//!
//! Forms: PUSH r/m16/32/64 (FF /6), PUSH r (50+r), PUSH imm8/imm16/imm32 (6A, 68); PUSHF/
//! PUSHFD/PUSHFQ (9C); POP r/m (8F /0), POP r (58+r); CALL rel16/rel32 (E8) and CALL r/m
//! (FF /2); JMP m (FF /4; the register form makes no memory access); RET and RET imm16 (C3,
//! C2); LEAVE (C9). Operand sizes are iced-x86's decoding for the configured vendor (64 bits by
//! default in 64-bit mode, 16 with 66h; AMD's 16-bit CALL/JMP/RET). Not emulated: POPF (it
//! changes IF, IOPL and TF), ENTER, PUSHA/POPA, segment-register pushes and pops, far forms.
//!
//! # The stack
//!
//! Stack accesses go through SS: a limit, type or presence violation is #SS(0), and in 64-bit
//! mode a non-canonical stack address is #SS(0) too (`crate::operand`). The stack-address size
//! is 64 bits in 64-bit mode, otherwise 32 bits when SS.B is set and 16 bits (SP, wrapping
//! within 64 KiB, upper bits of RSP kept) when it is clear. A push writes at `rSP − size`, a pop
//! reads at `rSP`. PUSH rSP pushes the value rSP had before the instruction. POP rSP leaves the
//! popped value in rSP (the increment comes first, SDM "POP"). POP to memory addressed through
//! rSP forms the address with rSP already incremented (SDM "POP"); PUSH from memory with the
//! value before the decrement.
//!
//! # Control transfers
//!
//! The target (read from memory or a register, or IP-relative) is truncated to the operand size
//! and checked before anything is written: in 64-bit mode it must be canonical, otherwise
//! within the CS limit; #GP(0) if not (SDM "CALL", "JMP", "RET" pseudocode). CALL then pushes
//! the address of the next instruction at the operand size. RET releases `imm16` more bytes.
//!
//! # All or nothing
//!
//! Every page of every operand — the memory operand and the stack slot — is checked and
//! translated before the first write. The order of faults is the processor's: PUSH m checks its
//! source before the stack slot, POP m the stack slot before its destination, CALL m reads and
//! checks the target before the stack slot. RSP, RBP and the destination register change only
//! when the instruction completes.

use iced_x86::{Code, Instruction, OpKind, Register};

use super::unsupported;
use crate::access::{Intent, Span};
use crate::callbacks::EmulatorCallbacks;
use crate::error::Exception;
use crate::operand::{MemRef, address_mask};
use crate::registers::{Segment, SegmentAttributes};
use crate::state::gpr::{RBP, RSP};
use crate::state::{Cpu, Mode, RegSet, Res, Slot};

/// What the instruction does with the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StackKind {
    /// PUSH r/m, r or imm.
    Push,
    /// PUSHF, PUSHFD, PUSHFQ.
    PushFlags,
    /// POP r/m or r.
    Pop,
    /// Near CALL, relative or indirect.
    Call,
    /// Near JMP through memory.
    Jmp,
    /// Near RET, with or without a release count.
    Ret,
    /// LEAVE.
    Leave,
}

/// A stack instruction with its operand size in bytes (2, 4 or 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StackOp {
    pub kind: StackKind,
    pub size: u8,
}

/// The stack instruction, if this is one hvemu emulates.
pub(super) fn classify(instr: &Instruction) -> Option<StackOp> {
    use StackKind::{Call, Jmp, Leave, Pop, Push, PushFlags, Ret};
    let (kind, size) = match instr.code() {
        Code::Push_rm16 | Code::Push_r16 | Code::Push_imm16 | Code::Pushw_imm8 => (Push, 2),
        Code::Push_rm32 | Code::Push_r32 | Code::Pushd_imm32 | Code::Pushd_imm8 => (Push, 4),
        Code::Push_rm64 | Code::Push_r64 | Code::Pushq_imm32 | Code::Pushq_imm8 => (Push, 8),
        Code::Pushfw => (PushFlags, 2),
        Code::Pushfd => (PushFlags, 4),
        Code::Pushfq => (PushFlags, 8),
        Code::Pop_rm16 | Code::Pop_r16 => (Pop, 2),
        Code::Pop_rm32 | Code::Pop_r32 => (Pop, 4),
        Code::Pop_rm64 | Code::Pop_r64 => (Pop, 8),
        Code::Call_rm16 | Code::Call_rel16 => (Call, 2),
        Code::Call_rm32 | Code::Call_rel32_32 => (Call, 4),
        Code::Call_rm64 | Code::Call_rel32_64 => (Call, 8),
        // A register JMP makes no memory access, so it cannot have made a memory exit.
        Code::Jmp_rm16 if instr.op0_kind() == OpKind::Memory => (Jmp, 2),
        Code::Jmp_rm32 if instr.op0_kind() == OpKind::Memory => (Jmp, 4),
        Code::Jmp_rm64 if instr.op0_kind() == OpKind::Memory => (Jmp, 8),
        Code::Retnw | Code::Retnw_imm16 => (Ret, 2),
        Code::Retnd | Code::Retnd_imm16 => (Ret, 4),
        Code::Retnq | Code::Retnq_imm16 => (Ret, 8),
        Code::Leavew => (Leave, 2),
        Code::Leaved => (Leave, 4),
        Code::Leaveq => (Leave, 8),
        _ => return None,
    };
    Some(StackOp { kind, size })
}

impl StackOp {
    /// Adds the implicit registers: rSP and SS always (SS is dropped in 64-bit mode, where it
    /// has no base or limit), rBP for LEAVE.
    pub(crate) fn registers(self, set: RegSet) -> RegSet {
        let set = set.with(Slot::Gpr(RSP)).with(Slot::Seg(Segment::Ss));
        if self.kind == StackKind::Leave {
            set.with(Slot::Gpr(RBP))
        } else {
            set
        }
    }
}

/// The stack-address size in bytes: 8 in 64-bit mode, else 4 with SS.B set, 2 without.
fn stack_address_size<C: EmulatorCallbacks>(cpu: &mut Cpu<'_, C>) -> Res<usize, C> {
    if cpu.state.is_long() {
        return Ok(8);
    }
    let ss = cpu.segment(Segment::Ss)?;
    Ok(if ss.attributes.contains(SegmentAttributes::DEFAULT_BIG) {
        4
    } else {
        2
    })
}

/// RSP after its stack-address-sized part becomes `sp`: a 16-bit SP keeps the bits above it, a
/// 32-bit ESP zero-extends (as every 32-bit GPR write here does).
fn with_sp(rsp: u64, sp: u64, stack_size: usize) -> u64 {
    match stack_size {
        2 => (rsp & !0xFFFF) | (sp & 0xFFFF),
        4 => sp & 0xFFFF_FFFF,
        _ => sp,
    }
}

/// A stack slot, translated, and RSP as it is once the push or pop completes.
struct StackSlot {
    span: Span,
    rsp_after: u64,
}

/// The slot a push of `size` bytes writes: at `rSP − size`.
fn push_slot<C: EmulatorCallbacks>(cpu: &mut Cpu<'_, C>, size: usize) -> Res<StackSlot, C> {
    let stack_size = stack_address_size(cpu)?;
    let rsp = cpu.gpr(RSP)?;
    let sp = rsp.wrapping_sub(size as u64) & address_mask(stack_size);
    let span = cpu.resolve(
        MemRef {
            seg: Segment::Ss,
            offset: sp,
        },
        size,
        Intent::Write,
    )?;
    Ok(StackSlot {
        span,
        rsp_after: with_sp(rsp, sp, stack_size),
    })
}

/// The slot a pop of `size` bytes reads: at `base` (rSP, or rBP for LEAVE), after which the
/// stack pointer is `base + size + release`.
fn pop_slot<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    base: u64,
    size: usize,
    release: u64,
) -> Res<StackSlot, C> {
    let stack_size = stack_address_size(cpu)?;
    let rsp = cpu.gpr(RSP)?;
    let mask = address_mask(stack_size);
    let sp = base & mask;
    let span = cpu.resolve(
        MemRef {
            seg: Segment::Ss,
            offset: sp,
        },
        size,
        Intent::Read,
    )?;
    let after = sp.wrapping_add(size as u64).wrapping_add(release) & mask;
    Ok(StackSlot {
        span,
        rsp_after: with_sp(rsp, after, stack_size),
    })
}

/// Whether `addr` is canonical for a `width`-bit linear address space.
fn canonical(addr: u64, width: u32) -> bool {
    // Callers pass 48 or 57 (a shift of 16 or 7); the saturating and wrapping forms keep
    // any other width from panicking.
    let shift = 64u32.saturating_sub(width);
    (addr.wrapping_shl(shift) as i64).wrapping_shr(shift) as u64 == addr
}

/// A near branch target truncated to the operand size, or #GP(0) if the processor would refuse
/// it: not canonical in 64-bit mode, beyond the CS limit elsewhere.
fn check_target<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    target: u64,
    size: usize,
) -> Res<u64, C> {
    let target = target & crate::state::width_mask(size);
    let ok = if cpu.state.is_long() {
        let width = if cpu.cr4()? & (1 << 12) != 0 { 57 } else { 48 };
        canonical(target, width)
    } else {
        target <= u64::from(cpu.segment(Segment::Cs)?.limit)
    };
    if ok {
        Ok(target)
    } else {
        Err(Exception::gp(0).into())
    }
}

fn write_span_value<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    span: &Span,
    size: usize,
    value: u64,
) -> Res<(), C> {
    cpu.write_value(span, value, size)
}

/// Runs the instruction.
pub(super) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    op: StackOp,
) -> Res<(), C> {
    let size = usize::from(op.size);
    match op.kind {
        StackKind::Push => push(cpu, instr, size),
        StackKind::PushFlags => push_flags(cpu, instr, size),
        StackKind::Pop => pop(cpu, instr, size),
        StackKind::Call => call(cpu, instr, size),
        StackKind::Jmp => {
            let mem = cpu.effective_address(instr)?;
            let span = cpu.resolve(mem, size, Intent::Read)?;
            let target = cpu.read_span_value(&span, size)?;
            let target = check_target(cpu, target, size)?;
            cpu.branch_to(target);
            Ok(())
        }
        StackKind::Ret => {
            let release = match instr.op_count() {
                0 => 0,
                _ => u64::from(instr.immediate16()),
            };
            let rsp = cpu.gpr(RSP)?;
            let slot = pop_slot(cpu, rsp, size, release)?;
            let target = cpu.read_span_value(&slot.span, size)?;
            let target = check_target(cpu, target, size)?;
            cpu.set_gpr(RSP, slot.rsp_after);
            cpu.branch_to(target);
            Ok(())
        }
        StackKind::Leave => {
            let rbp = cpu.gpr(RBP)?;
            let slot = pop_slot(cpu, rbp, size, 0)?;
            let value = cpu.read_span_value(&slot.span, size)?;
            cpu.set_gpr(RSP, slot.rsp_after);
            let frame = match size {
                2 => Register::BP,
                4 => Register::EBP,
                _ => Register::RBP,
            };
            cpu.write_reg(frame, value)
        }
    }
}

/// PUSH r/m, r, imm.
fn push<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    size: usize,
) -> Res<(), C> {
    let value = match instr.op0_kind() {
        OpKind::Memory => {
            // The address uses rSP before the decrement; the source's faults come first.
            let mem = cpu.effective_address(instr)?;
            let source = cpu.resolve(mem, size, Intent::Read)?;
            let slot = push_slot(cpu, size)?;
            let value = cpu.read_span_value(&source, size)?;
            write_span_value(cpu, &slot.span, size, value)?;
            cpu.set_gpr(RSP, slot.rsp_after);
            return Ok(());
        }
        // PUSH rSP pushes rSP as it was before the instruction.
        OpKind::Register => cpu.read_reg(instr.op0_register())?,
        OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate32to64 => instr.immediate(0),
        _ => return Err(unsupported(instr)),
    };
    let slot = push_slot(cpu, size)?;
    write_span_value(cpu, &slot.span, size, value)?;
    cpu.set_gpr(RSP, slot.rsp_after);
    Ok(())
}

/// PUSHF/PUSHFD/PUSHFQ: RFLAGS with VM and RF read as 0 (SDM "PUSHF").
fn push_flags<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    size: usize,
) -> Res<(), C> {
    const IOPL: u64 = 3 << 12;
    const CR4_VME: u64 = 1;
    if cpu.state.mode == Mode::Virtual8086 && cpu.state.rflags & IOPL != IOPL {
        // With CR4.VME a 16-bit PUSHF pushes VIF in IF's place; hvemu does not model that.
        if size == 2 && cpu.cr4()? & CR4_VME != 0 {
            return Err(unsupported(instr));
        }
        return Err(Exception::gp(0).into());
    }
    let value = cpu.state.rflags & 0x00FC_FFFF;
    let slot = push_slot(cpu, size)?;
    write_span_value(cpu, &slot.span, size, value)?;
    cpu.set_gpr(RSP, slot.rsp_after);
    Ok(())
}

/// POP r/m, r.
fn pop<C: EmulatorCallbacks>(cpu: &mut Cpu<'_, C>, instr: &Instruction, size: usize) -> Res<(), C> {
    let rsp = cpu.gpr(RSP)?;
    let slot = pop_slot(cpu, rsp, size, 0)?;
    match instr.op0_kind() {
        OpKind::Memory => {
            let mut mem = cpu.effective_address(instr)?;
            let base = instr.memory_base();
            if base.full_register() == Register::RSP {
                // The destination's address is formed with rSP already incremented: move the
                // base's contribution from the old rSP to the new one.
                mem.offset = mem.offset.wrapping_sub(rsp).wrapping_add(slot.rsp_after)
                    & address_mask(base.size());
            }
            let destination = cpu.resolve(mem, size, Intent::Write)?;
            let value = cpu.read_span_value(&slot.span, size)?;
            write_span_value(cpu, &destination, size, value)?;
            cpu.set_gpr(RSP, slot.rsp_after);
            Ok(())
        }
        OpKind::Register => {
            let value = cpu.read_span_value(&slot.span, size)?;
            // The increment comes first, so POP rSP keeps the popped value.
            cpu.set_gpr(RSP, slot.rsp_after);
            cpu.write_reg(instr.op0_register(), value)
        }
        _ => Err(unsupported(instr)),
    }
}

/// Near CALL: rel, r/m.
fn call<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    size: usize,
) -> Res<(), C> {
    let target = match instr.op0_kind() {
        OpKind::Memory => {
            let mem = cpu.effective_address(instr)?;
            let span = cpu.resolve(mem, size, Intent::Read)?;
            cpu.read_span_value(&span, size)?
        }
        OpKind::Register => cpu.read_reg(instr.op0_register())?,
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
            instr.near_branch_target()
        }
        _ => return Err(unsupported(instr)),
    };
    let target = check_target(cpu, target, size)?;
    let next = cpu
        .state
        .mask_ip(cpu.state.rip.wrapping_add(instr.len() as u64));
    let slot = push_slot(cpu, size)?;
    write_span_value(cpu, &slot.span, size, next)?;
    cpu.set_gpr(RSP, slot.rsp_after);
    cpu.branch_to(target);
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;

    use iced_x86::Code;
    use std::vec::Vec;

    use super::*;
    use crate::execute::{Family, tests::decode_all_forms};

    fn accepted() -> Vec<(Code, StackOp)> {
        let forms = decode_all_forms();
        Code::values()
            .filter_map(|c| {
                forms.get(&c)?.iter().find_map(|i| match Family::of(i) {
                    Some(Family::Stack(op)) => Some((c, op)),
                    _ => None,
                })
            })
            .collect()
    }

    /// The forms the family accepts, enumerated over iced-x86's codes: the sizes agree with
    /// iced-x86's own stack-pointer increments, and none of the excluded forms slips in.
    #[test]
    fn every_stack_form_is_accepted_with_its_size() {
        let forms = decode_all_forms();
        let accepted = accepted();
        for (code, op) in &accepted {
            for instr in forms.get(code).into_iter().flatten() {
                let size = i32::from(op.size);
                let expected = match op.kind {
                    StackKind::Push | StackKind::PushFlags | StackKind::Call => -size,
                    StackKind::Pop => size,
                    StackKind::Ret => size + i32::from(instr.immediate16()),
                    StackKind::Jmp | StackKind::Leave => continue,
                };
                assert_eq!(instr.stack_pointer_increment(), expected, "{code:?}");
            }
        }
        let codes: Vec<Code> = accepted.iter().map(|(c, _)| *c).collect();
        for excluded in [
            Code::Popfw,
            Code::Popfd,
            Code::Popfq,
            Code::Enterq_imm16_imm8,
            Code::Pushad,
            Code::Popad,
            Code::Pushw_ES,
            Code::Popq_FS,
            Code::Call_m1664,
            Code::Jmp_m1632,
            Code::Retfq,
            Code::Jmp_rel32_64,
        ] {
            assert!(!codes.contains(&excluded), "{excluded:?}");
        }
        // PUSH r/m, r (6) and imm8, imm16/32 (6); PUSHF (3); POP r/m, r (6); CALL rel, r/m
        // (6); JMP m (3); RET, RET imm16 (6); LEAVE (3).
        assert_eq!(codes.len(), 12 + 3 + 6 + 6 + 3 + 6 + 3);
        std::println!("stack family: {} iced-x86 Code values", codes.len());
    }

    /// The register form of JMP cannot make a memory exit and is not taken; CALL's is (its
    /// push can).
    #[test]
    fn register_jmp_is_not_a_stack_instruction() {
        let forms = decode_all_forms();
        let jmp = forms.get(&Code::Jmp_rm64).expect("decoded");
        assert!(jmp.iter().any(|i| i.op0_kind() == OpKind::Register));
        for instr in jmp {
            assert_eq!(
                classify(instr).is_some(),
                instr.op0_kind() == OpKind::Memory
            );
        }
        let call = forms.get(&Code::Call_rm64).expect("decoded");
        assert!(call.iter().all(|i| classify(i).is_some()));
    }

    #[test]
    fn sp_updates() {
        assert_eq!(
            with_sp(0x1234_5678_9ABC_DEF0, 0x1_0002, 2),
            0x1234_5678_9ABC_0002
        );
        assert_eq!(with_sp(0x1234_5678_9ABC_DEF0, 0xFFFF_FFFC, 4), 0xFFFF_FFFC);
        assert_eq!(with_sp(0, 0xFFFF_8000_0000_0000, 8), 0xFFFF_8000_0000_0000);
        assert!(canonical(0x0000_7FFF_FFFF_FFFF, 48));
        assert!(!canonical(0x0000_8000_0000_0000, 48));
    }
}
