//! The stack family through the public API: PUSH and POP of memory, registers and immediates,
//! PUSHF, near CALL (relative and through memory), JMP through memory, RET and LEAVE — with the
//! memory operand or the stack itself in MMIO, in 16-, 32- and 64-bit stacks, with the faults
//! the processor raises (#SS(0) on the stack, #GP(0) for a bad target, #PF before any write)
//! and RSP changed only when the instruction completes. State, bytes, expected state.

mod support;

use hvemu::*;
use iced_x86::code_asm::*;
use support::*;

const MMIO: u64 = 0xFEE0_0000;
const RAX: usize = 0;
const RCX: usize = 1;
const RBX: usize = 3;
const RSP: usize = 4;
const RBP: usize = 5;

fn long(f: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>) -> Vec<u8> {
    asm(64, f)
}

/// A 64-bit machine at RIP 0x1000 with RSP = `rsp`.
fn machine64(stack: u64) -> Machine {
    let mut m = Machine::long();
    m.regs.rip = 0x1000;
    m.set_gpr(RSP, stack);
    m
}

fn set_names(m: &Machine) -> Vec<RegisterName> {
    m.log
        .iter()
        .find_map(|c| match c {
            Call::Set(v) => Some(v.iter().map(|(n, _)| *n).collect()),
            _ => None,
        })
        .expect("one set_registers call")
}

fn le64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

// ---- PUSH m / POP m ----------------------------------------------------------------------

#[test]
fn push_from_mmio_onto_a_ram_stack() {
    // push qword [rbx]: read the device register, write it at RSP - 8.
    let bytes = long(|a| a.push(qword_ptr(rbx)));
    assert_eq!(bytes, [0xFF, 0x33]);
    let mut m = machine64(0x8000);
    m.set_gpr(RBX, MMIO);
    m.write_phys(MMIO, &le64(0x1122_3344_5566_7788));
    m.mmio(&bytes, MemoryAccessType::Read, MMIO).ok();
    assert_eq!(
        m.memory_calls(),
        [
            (MMIO, false, le64(0x1122_3344_5566_7788)),
            (0x7FF8, true, le64(0x1122_3344_5566_7788))
        ]
    );
    assert_eq!(m.gpr(RSP), 0x7FF8);
    assert_eq!(m.regs.rip, 0x1002);
    assert_eq!(set_names(&m), [RegisterName::RSP, RegisterName::RIP]);
}

#[test]
fn pop_from_a_ram_stack_to_mmio() {
    let bytes = long(|a| a.pop(qword_ptr(rbx)));
    assert_eq!(bytes, [0x8F, 0x03]);
    let mut m = machine64(0x7FF8);
    m.set_gpr(RBX, MMIO);
    m.write_phys(0x7FF8, &le64(0xCAFE));
    m.mmio(&bytes, MemoryAccessType::Write, MMIO).ok();
    assert_eq!(
        m.memory_calls(),
        [(0x7FF8, false, le64(0xCAFE)), (MMIO, true, le64(0xCAFE))]
    );
    assert_eq!(m.gpr(RSP), 0x8000);
}

#[test]
fn pop_to_rsp_based_memory_uses_the_incremented_rsp_and_push_the_original() {
    // pop qword [rsp+8]: the address is formed after RSP += 8 (SDM "POP").
    let bytes = long(|a| a.pop(qword_ptr(rsp + 8)));
    let mut m = machine64(MMIO + 0x10);
    m.write_phys(MMIO + 0x10, &le64(0xAB));
    m.mmio(&bytes, MemoryAccessType::Read, MMIO + 0x10).ok();
    assert_eq!(
        m.memory_calls(),
        [
            (MMIO + 0x10, false, le64(0xAB)),
            (MMIO + 0x20, true, le64(0xAB))
        ]
    );
    assert_eq!(m.gpr(RSP), MMIO + 0x18);

    // push qword [rsp]: the address is formed before RSP -= 8.
    let bytes = long(|a| a.push(qword_ptr(rsp)));
    let mut m = machine64(MMIO + 0x10);
    m.write_phys(MMIO + 0x10, &le64(0xCD));
    m.mmio(&bytes, MemoryAccessType::Read, MMIO + 0x10).ok();
    assert_eq!(
        m.memory_calls(),
        [
            (MMIO + 0x10, false, le64(0xCD)),
            (MMIO + 0x08, true, le64(0xCD))
        ]
    );
    assert_eq!(m.gpr(RSP), MMIO + 0x08);
}

#[test]
fn sixteen_bit_operands_in_64_bit_mode() {
    // push word [rbx] (66 FF /6): two bytes, RSP - 2.
    let bytes = long(|a| a.push(word_ptr(rbx)));
    assert_eq!(bytes, [0x66, 0xFF, 0x33]);
    let mut m = machine64(0x8000);
    m.set_gpr(RBX, MMIO);
    m.write_phys(MMIO, &[0x34, 0x12]);
    m.mmio(&bytes, MemoryAccessType::Read, MMIO).ok();
    assert_eq!(m.memory_calls()[1], (0x7FFE, true, vec![0x34, 0x12]));
    assert_eq!(m.gpr(RSP), 0x7FFE);

    // pop cx (66 59) from an MMIO stack: CX merges into RCX.
    let mut m = machine64(MMIO);
    m.set_gpr(RCX, 0xFFFF_FFFF_FFFF_0000);
    m.write_phys(MMIO, &[0xEF, 0xBE]);
    m.mmio(&[0x66, 0x59], MemoryAccessType::Read, MMIO).ok();
    assert_eq!(m.gpr(RCX), 0xFFFF_FFFF_FFFF_BEEF);
    assert_eq!(m.gpr(RSP), MMIO + 2);
}

// ---- PUSH/POP with the stack in MMIO -----------------------------------------------------

#[test]
fn push_and_pop_registers_and_immediates_on_an_mmio_stack() {
    // push rax
    let mut m = machine64(MMIO + 0x100);
    m.set_gpr(RAX, 0x0102_0304_0506_0708);
    m.mmio(&[0x50], MemoryAccessType::Write, MMIO + 0xF8).ok();
    assert_eq!(
        m.memory_calls(),
        [(MMIO + 0xF8, true, le64(0x0102_0304_0506_0708))]
    );
    assert_eq!(m.gpr(RSP), MMIO + 0xF8);

    // pop r12 (41 5C)
    m.mmio(&[0x41, 0x5C], MemoryAccessType::Read, MMIO + 0xF8)
        .ok();
    assert_eq!(m.gpr(12), 0x0102_0304_0506_0708);
    assert_eq!(m.gpr(RSP), MMIO + 0x100);

    // push -2 (6A FE): sign-extended to 64 bits.
    m.mmio(&[0x6A, 0xFE], MemoryAccessType::Write, MMIO + 0xF8)
        .ok();
    assert_eq!(m.read_phys(MMIO + 0xF8, 8), le64(-2i64 as u64));

    // push 0x12345678 (68 id), sign-extended; and the 16-bit push imm16 (66 68 iw).
    m.mmio(
        &[0x68, 0x78, 0x56, 0x34, 0x92],
        MemoryAccessType::Write,
        MMIO + 0xF0,
    )
    .ok();
    assert_eq!(m.read_phys(MMIO + 0xF0, 8), le64(0xFFFF_FFFF_9234_5678));
    m.mmio(
        &[0x66, 0x68, 0x34, 0x12],
        MemoryAccessType::Write,
        MMIO + 0xEE,
    )
    .ok();
    assert_eq!(m.read_phys(MMIO + 0xEE, 2), [0x34, 0x12]);
    assert_eq!(m.gpr(RSP), MMIO + 0xEE);
}

#[test]
fn push_rsp_pushes_the_old_value_and_pop_rsp_keeps_the_popped_one() {
    let mut m = machine64(MMIO + 0x40);
    m.mmio(&[0x54], MemoryAccessType::Write, MMIO + 0x38).ok();
    assert_eq!(m.read_phys(MMIO + 0x38, 8), le64(MMIO + 0x40));
    assert_eq!(m.gpr(RSP), MMIO + 0x38);

    m.write_phys(MMIO + 0x38, &le64(0x5000));
    m.mmio(&[0x5C], MemoryAccessType::Read, MMIO + 0x38).ok();
    assert_eq!(m.gpr(RSP), 0x5000, "the popped value, not RSP + 8");
}

#[test]
fn pushf_pushes_rflags_without_rf_and_vm() {
    let mut m = machine64(MMIO + 0x40);
    m.regs.rflags = 0x1_0246; // RF, IF, ZF, PF
    m.mmio(&[0x9C], MemoryAccessType::Write, MMIO + 0x38).ok();
    assert_eq!(m.read_phys(MMIO + 0x38, 8), le64(0x246));
    assert_eq!(m.gpr(RSP), MMIO + 0x38);

    // In virtual-8086 mode with IOPL < 3, PUSHF is #GP(0).
    let mut m = Machine::protected32();
    m.regs.rflags = 0x2_0202;
    for s in Segment::ALL {
        m.regs.set_segment(s, SegmentRegister::real_mode(0x1000));
    }
    m.set_gpr(RSP, 0x100);
    let out = m.mmio(&[0x9C], MemoryAccessType::Write, 0x100FE);
    assert_eq!(out.exception(), Exception::gp(0));
    // With IOPL 3 it pushes FLAGS.
    m.regs.rflags = 0x2_3202;
    m.mmio(&[0x9C], MemoryAccessType::Write, 0x100FE).ok();
    assert_eq!(m.read_phys(0x100FE, 2), [0x02, 0x32]);
    assert_eq!(m.gpr(RSP), 0xFE);
}

#[test]
fn leave_pops_the_frame_pointer_from_an_mmio_stack() {
    let mut m = machine64(0x7000);
    m.set_gpr(RBP, MMIO + 0x40);
    m.write_phys(MMIO + 0x40, &le64(0x6000));
    m.mmio(&[0xC9], MemoryAccessType::Read, MMIO + 0x40).ok();
    assert_eq!(m.gpr(RSP), MMIO + 0x48);
    assert_eq!(m.gpr(RBP), 0x6000);
    assert_eq!(m.memory_calls(), [(MMIO + 0x40, false, le64(0x6000))]);
}

// ---- 16- and 32-bit stacks ---------------------------------------------------------------

#[test]
fn thirty_two_and_sixteen_bit_stacks_follow_ss_b() {
    // 32-bit protected mode, SS.B = 1: ESP.
    let mut m = Machine::protected32();
    m.set_gpr(RSP, 0x2000);
    m.set_gpr(RAX, 0xAABB_CCDD);
    m.mmio(&[0x50], MemoryAccessType::Write, 0x1FFC).ok();
    assert_eq!(
        m.memory_calls(),
        [(0x1FFC, true, vec![0xDD, 0xCC, 0xBB, 0xAA])]
    );
    assert_eq!(m.gpr(RSP), 0x1FFC);

    // SS.B = 0: a 16-bit SP under a 32-bit code segment; ESP's upper half stays, SP wraps.
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Ss, seg(0x20000, 0xFFFF, 0x18, 0x0093));
    m.set_gpr(RSP, 0xABCD_0000);
    m.set_gpr(RAX, 0x1234);
    // push ax (66 50): SP 0 - 2 = 0xFFFE.
    m.mmio(&[0x66, 0x50], MemoryAccessType::Write, 0x2FFFE).ok();
    assert_eq!(m.memory_calls(), [(0x2FFFE, true, vec![0x34, 0x12])]);
    assert_eq!(m.gpr(RSP), 0xABCD_FFFE);
    // pop ecx: SP 0xFFFE + 4 wraps to 2; the four bytes at 0xFFFE.. exceed the 0xFFFF limit.
    let out = m.mmio(&[0x59], MemoryAccessType::Read, 0x2FFFE);
    assert_eq!(out.exception(), Exception::ss(0));
    // pop cx works, and SP wraps to 0.
    m.mmio(&[0x66, 0x59], MemoryAccessType::Read, 0x2FFFE).ok();
    assert_eq!(m.gpr(RCX) & 0xFFFF, 0x1234);
    assert_eq!(m.gpr(RSP), 0xABCD_0000);

    // Real mode: SS:SP, call word [bx] pushes IP.
    let mut m = Machine::real();
    m.regs
        .set_segment(Segment::Ss, SegmentRegister::real_mode(0x3000));
    m.regs.rip = 0x0100;
    m.set_gpr(RSP, 0);
    m.set_gpr(RBX, 0x40);
    m.write_phys(0x40, &[0x00, 0x20]);
    m.mmio(&[0xFF, 0x17], MemoryAccessType::Read, 0x40).ok();
    assert_eq!(m.regs.rip, 0x2000);
    assert_eq!(m.gpr(RSP), 0xFFFE);
    assert_eq!(m.read_phys(0x3FFFE, 2), [0x02, 0x01], "return IP 0x0102");
}

#[test]
fn stack_limit_violations_are_ss_faults() {
    // 32-bit stack with limit 0x0FFF: a push at ESP 0x2000 writes at 0x1FFC, beyond it.
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Ss, seg(0, 0x0FFF, 0x18, 0x4093));
    m.set_gpr(RSP, 0x2000);
    m.set_gpr(RBX, MMIO);
    let out = m.mmio(&[0xFF, 0x33], MemoryAccessType::Read, MMIO);
    assert_eq!(out.exception(), Exception::ss(0));
    assert!(
        m.memory_calls().is_empty(),
        "found before the source is read"
    );

    // Expand-down stack (limit 0x0FFF, B = 1: valid offsets 0x1000..=0xFFFFFFFF): a push at
    // ESP 0x1002 writes at 0x0FFE, below the lower bound.
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Ss, seg(0, 0x0FFF, 0x18, 0x4097));
    m.set_gpr(RSP, 0x1002);
    let out = m.mmio(&[0x50], MemoryAccessType::Write, 0x0FFE);
    assert_eq!(out.exception(), Exception::ss(0));
    m.set_gpr(RSP, 0x1004);
    m.mmio(&[0x50], MemoryAccessType::Write, 0x1000).ok();

    // 64-bit mode: a push whose slot is not canonical is #SS(0).
    let mut m = machine64(0x0000_8000_0000_0004);
    let out = m.mmio(&[0x50], MemoryAccessType::Write, MMIO);
    assert_eq!(out.exception(), Exception::ss(0));
}

// ---- CALL, JMP, RET ----------------------------------------------------------------------

#[test]
fn call_through_mmio_pushes_the_return_address_and_branches() {
    let bytes = long(|a| a.call(qword_ptr(rbx)));
    assert_eq!(bytes, [0xFF, 0x13]);
    let mut m = machine64(0x8000);
    m.set_gpr(RBX, MMIO);
    m.write_phys(MMIO, &le64(0x4000));
    m.mmio(&bytes, MemoryAccessType::Read, MMIO).ok();
    assert_eq!(
        m.memory_calls(),
        [(MMIO, false, le64(0x4000)), (0x7FF8, true, le64(0x1002))]
    );
    assert_eq!(m.regs.rip, 0x4000);
    assert_eq!(m.gpr(RSP), 0x7FF8);
}

#[test]
fn a_non_canonical_target_is_gp_before_anything_is_written() {
    for bytes in [
        long(|a| a.call(qword_ptr(rbx))),
        long(|a| a.jmp(qword_ptr(rbx))),
    ] {
        let mut m = machine64(0x8000);
        m.set_gpr(RBX, MMIO);
        m.write_phys(MMIO, &le64(0x0000_8000_0000_0000));
        let out = m.mmio(&bytes, MemoryAccessType::Read, MMIO);
        assert_eq!(out.exception(), Exception::gp(0));
        assert_eq!(
            m.memory_calls(),
            [(MMIO, false, le64(0x0000_8000_0000_0000))]
        );
    }
    // Canonical upper-half targets are fine.
    let mut m = machine64(0x8000);
    m.set_gpr(RBX, MMIO);
    m.write_phys(MMIO, &le64(0xFFFF_8000_0000_1000));
    m.mmio(
        &long(|a| a.jmp(qword_ptr(rbx))),
        MemoryAccessType::Read,
        MMIO,
    )
    .ok();
    assert_eq!(m.regs.rip, 0xFFFF_8000_0000_1000);
    assert_eq!(m.gpr(RSP), 0x8000, "JMP leaves the stack alone");
}

#[test]
fn a_target_beyond_the_cs_limit_is_gp_in_legacy_modes() {
    // 32-bit code segment with limit 0xFFFF.
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Cs, seg(0, 0xFFFF, 0x08, 0x409B));
    m.regs.rip = 0x1000;
    m.set_gpr(RSP, 0x8000);
    m.set_gpr(RBX, MMIO);
    m.write_phys(MMIO, &0x0001_0000u32.to_le_bytes());
    let jmp = asm(32, |a| a.jmp(dword_ptr(ebx)));
    let out = m.mmio(&jmp, MemoryAccessType::Read, MMIO);
    assert_eq!(out.exception(), Exception::gp(0));
    let call = asm(32, |a| a.call(dword_ptr(ebx)));
    let out = m.mmio(&call, MemoryAccessType::Read, MMIO);
    assert_eq!(out.exception(), Exception::gp(0));
    // At the limit it goes.
    m.write_phys(MMIO, &0x0000_FFFFu32.to_le_bytes());
    m.mmio(&call, MemoryAccessType::Read, MMIO).ok();
    assert_eq!(m.regs.rip, 0xFFFF);
    assert_eq!(m.gpr(RSP), 0x7FFC);
    assert_eq!(m.read_phys(0x7FFC, 4), 0x1002u32.to_le_bytes());
}

#[test]
fn call_rel_and_ret_with_the_stack_in_mmio() {
    // call rel32 at 0x1000 to 0x1100: the exit is the push of the return address.
    let mut m = machine64(MMIO + 0x100);
    let call = [0xE8, 0xFB, 0x00, 0x00, 0x00];
    m.mmio(&call, MemoryAccessType::Write, MMIO + 0xF8).ok();
    assert_eq!(m.regs.rip, 0x1100);
    assert_eq!(m.read_phys(MMIO + 0xF8, 8), le64(0x1005));
    assert_eq!(m.gpr(RSP), MMIO + 0xF8);

    // ret: back to 0x1005.
    m.mmio(&[0xC3], MemoryAccessType::Read, MMIO + 0xF8).ok();
    assert_eq!(m.regs.rip, 0x1005);
    assert_eq!(m.gpr(RSP), MMIO + 0x100);

    // ret 0x10 releases 16 more bytes.
    let mut m = machine64(MMIO);
    m.write_phys(MMIO, &le64(0x2000));
    m.mmio(&[0xC2, 0x10, 0x00], MemoryAccessType::Read, MMIO)
        .ok();
    assert_eq!((m.regs.rip, m.gpr(RSP)), (0x2000, MMIO + 0x18));

    // A non-canonical return address is #GP(0), RSP unchanged.
    let mut m = machine64(MMIO);
    m.write_phys(MMIO, &le64(0x0001_0000_0000_0000));
    let out = m.mmio(&[0xC3], MemoryAccessType::Read, MMIO);
    assert_eq!(out.exception(), Exception::gp(0));
}

#[test]
fn amd_honours_the_16_bit_operand_size_of_near_branches_in_64_bit_mode() {
    // 66 FF 13: call qword [rbx] on Intel (the prefix is ignored), call word [rbx] on AMD.
    let bytes = [0x66, 0xFF, 0x13];
    let run = |vendor: Vendor| {
        let mut m = machine64(0x8000);
        m.set_gpr(RBX, MMIO);
        m.write_phys(MMIO, &le64(0xFFFF_FFFF_FFFF_3000));
        let ctx = MemoryAccessContext::new(&bytes, MemoryAccessType::Read, MMIO);
        m.mmio_ctx_config(3, &ctx, Config::default().with_vendor(vendor))
            .ok();
        m
    };
    let intel = run(Vendor::Intel);
    assert_eq!(intel.regs.rip, 0xFFFF_FFFF_FFFF_3000);
    assert_eq!(intel.gpr(RSP), 0x7FF8);
    let amd = run(Vendor::Amd);
    assert_eq!(
        amd.regs.rip, 0x3000,
        "IP = the 16-bit target, zero-extended"
    );
    assert_eq!(amd.gpr(RSP), 0x7FFE);
    assert_eq!(amd.read_phys(0x7FFE, 2), [0x03, 0x10]);
}

// ---- all or nothing ----------------------------------------------------------------------

#[test]
fn every_page_is_translated_before_the_first_write() {
    let mut m = Machine::long();
    m.regs.rip = 0x1000;
    m.identity(0, 16);
    m.map(
        0x20_0000,
        Pte {
            gpa: MMIO,
            writable: true,
            user: false,
            executable: false,
        },
    );
    // push qword [rbx] with the stack page not present: #PF (write), the source not read.
    m.set_gpr(RBX, 0x20_0000);
    m.set_gpr(RSP, 0x40_0000);
    let out = m.mmio(&[0xFF, 0x33], MemoryAccessType::Read, MMIO);
    assert_eq!(out.exception(), Exception::pf(0x3F_FFF8, 0b10));
    assert!(m.memory_calls().is_empty());

    // pop qword [rbx] with the destination page not present: the stack is not read.
    m.set_gpr(RBX, 0x50_0000);
    m.set_gpr(RSP, 0x8000);
    let out = m.mmio(&[0x8F, 0x03], MemoryAccessType::Read, 0x8000);
    assert_eq!(out.exception(), Exception::pf(0x50_0000, 0b10));
    assert!(m.memory_calls().is_empty());

    // A push straddling two stack pages, the lower one missing: neither half written.
    m.set_gpr(RSP, 0x1_0004);
    m.set_gpr(RAX, 7);
    m.identity(0x1_0000, 1);
    m.pages.as_mut().unwrap().remove(&0xF000);
    let out = m.mmio(&[0x50], MemoryAccessType::Write, 0x1_0000);
    assert_eq!(out.exception(), Exception::pf(0xFFFC, 0b10));
    assert!(m.memory_calls().is_empty());

    // call qword [rbx]: the target is read and checked first (the processor's order), then
    // the stack slot faults; nothing is written, RSP and RIP stay.
    m.set_gpr(RBX, 0x20_0000);
    m.set_gpr(RSP, 0x40_0000);
    m.write_phys(MMIO, &le64(0x3000));
    let out = m.mmio(&[0xFF, 0x13], MemoryAccessType::Read, MMIO);
    assert_eq!(out.exception(), Exception::pf(0x3F_FFF8, 0b10));
    assert_eq!(m.memory_calls(), [(MMIO, false, le64(0x3000))]);
}
