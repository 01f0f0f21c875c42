//! MOV-family MMIO exits through the public API, in every mode: state, bytes, expected state.

mod support;

use hvemu::*;
use support::*;

const MMIO: u64 = 0xFEE0_0000;
const RAX: usize = 0;
const RCX: usize = 1;
const RBX: usize = 3;
const RSI: usize = 6;
const RDI: usize = 7;

#[test]
fn long_mode_store_register_costs_one_get_one_memory_one_set() {
    let mut m = Machine::long();
    m.regs.rip = 0x1000;
    m.set_gpr(RAX, MMIO);
    m.set_gpr(RBX, 0xDEAD_BEEF_1234_5678);
    // mov [rax+0x10], ebx
    let ctx = MemoryAccessContext::new(&[0x89, 0x58, 0x10], MemoryAccessType::Write, MMIO + 0x10)
        .with_gva(MMIO + 0x10);
    m.mmio_ctx(3, &ctx).ok();
    assert_eq!(
        m.memory_calls(),
        [(MMIO + 0x10, true, vec![0x78, 0x56, 0x34, 0x12])]
    );
    assert_eq!(m.regs.rip, 0x1003);
    assert_eq!((m.gets(), m.sets()), (1, 1));
    assert!(m.translations().is_empty(), "the exit's GPA must be used");
}

#[test]
fn long_mode_store_of_an_immediate_to_an_absolute_address_reads_no_register() {
    let mut m = Machine::long();
    m.regs.rip = 0x1000;
    // mov dword [0xFFFFFFFFFEE00000], 0x12345678 (absolute: SIB with no base and no index,
    // the displacement sign-extended). The exit carries RIP, RFLAGS and CS, and 64-bit mode
    // needs no data segment: nothing to ask for.
    let bytes = [
        0xC7, 0x04, 0x25, 0x00, 0x00, 0xE0, 0xFE, 0x78, 0x56, 0x34, 0x12,
    ];
    let gva = 0xFFFF_FFFF_FEE0_0000;
    let ctx = MemoryAccessContext::new(&bytes, MemoryAccessType::Write, MMIO).with_gva(gva);
    m.mmio_ctx(11, &ctx).ok();
    assert_eq!(
        m.memory_calls(),
        [(MMIO, true, vec![0x78, 0x56, 0x34, 0x12])]
    );
    assert_eq!(m.regs.rip, 0x100B);
    assert_eq!((m.gets(), m.sets()), (0, 1));
}

#[test]
fn exit_gpa_is_not_trusted_for_a_different_linear_address() {
    let mut m = Machine::long();
    m.set_gpr(RAX, MMIO);
    m.set_gpr(RBX, 7);
    // The exit claims gva MMIO+0x20 but the instruction writes MMIO+0x10: translate.
    let ctx = MemoryAccessContext::new(&[0x89, 0x58, 0x10], MemoryAccessType::Write, 0x5000)
        .with_gva(MMIO + 0x20);
    m.mmio_ctx(3, &ctx).ok();
    assert_eq!(m.translations().len(), 1);
    assert_eq!(m.memory_calls(), [(MMIO + 0x10, true, vec![7, 0, 0, 0])]);
}

#[test]
fn read_exit_gpa_is_not_enough_for_a_write() {
    // add [rax], ebx: the read exit's GPA serves the read; the write is translated anew,
    // validated for writing.
    let mut m = Machine::long();
    m.set_gpr(RAX, MMIO);
    let ctx = MemoryAccessContext::new(&[0x01, 0x18], MemoryAccessType::Read, MMIO).with_gva(MMIO);
    m.mmio_ctx(2, &ctx).ok();
    let t = m.translations();
    assert_eq!(t.len(), 1);
    assert!(t[0].1.contains(TranslateGvaFlags::VALIDATE_WRITE));
}

#[test]
fn an_exit_in_a_direction_the_instruction_never_accesses_is_refused() {
    for (bytes, access, accepted) in [
        (&[0x89, 0x18][..], MemoryAccessType::Read, false), // mov [rax], ebx
        (&[0x89, 0x18], MemoryAccessType::Write, true),
        (&[0x8B, 0x18], MemoryAccessType::Write, false), // mov ebx, [rax]
        (&[0x8B, 0x18], MemoryAccessType::Read, true),
        (&[0x39, 0x18], MemoryAccessType::Write, false), // cmp [rax], ebx
        (&[0x0F, 0xA3, 0x18], MemoryAccessType::Write, false), // bt [rax], ebx
        (&[0x01, 0x18], MemoryAccessType::Write, true),  // add [rax], ebx
        (&[0x01, 0x18], MemoryAccessType::Read, true),
        (&[0xAC], MemoryAccessType::Write, false), // lodsb
        (&[0xAA], MemoryAccessType::Read, false),  // stosb
        (&[0x51], MemoryAccessType::Read, false),  // push rcx
        (&[0x8F, 0x00], MemoryAccessType::Write, true), // pop qword [rax]
        (&[0x0F, 0x29, 0x00], MemoryAccessType::Read, false), // movaps [rax], xmm0
        // An instruction fetch from MMIO can come from any instruction that accesses memory.
        (&[0x89, 0x18], MemoryAccessType::Execute, true),
    ] {
        let mut m = Machine::long();
        for n in 0..8 {
            m.set_gpr(n, MMIO + 0x100);
        }
        let outcome = m.mmio(bytes, access, MMIO + 0x100);
        if accepted {
            outcome.ok();
        } else {
            assert!(
                matches!(
                    outcome.result,
                    Err(EmulationError::NotTheExitingInstruction { .. })
                ),
                "{bytes:02x?} {access:?}: {:?}",
                outcome.result
            );
            // Refused before anything is read or done.
            assert!(m.log.is_empty(), "{bytes:02x?} {access:?}: {:?}", m.log);
        }
    }
}

#[test]
fn loads_at_every_size_merge_or_zero_extend() {
    for (bytes, reg_after) in [
        (&[0x8A, 0x03][..], 0x1111_1111_1111_11F0u64), // mov al, [rbx]
        (&[0x8A, 0x23][..], 0x1111_1111_1111_F011),    // mov ah, [rbx]
        (&[0x66, 0x8B, 0x03][..], 0x1111_1111_1111_F1F0), // mov ax, [rbx]
        (&[0x8B, 0x03][..], 0x0000_0000_F3F2_F1F0),    // mov eax, [rbx]
        (&[0x48, 0x8B, 0x03][..], 0xF7F6_F5F4_F3F2_F1F0), // mov rax, [rbx]
    ] {
        let mut m = Machine::long();
        m.set_gpr(RAX, 0x1111_1111_1111_1111);
        m.set_gpr(RBX, MMIO);
        m.write_phys(MMIO, &[0xF0, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7]);
        m.mmio(bytes, MemoryAccessType::Read, MMIO).ok();
        assert_eq!(m.gpr(RAX), reg_after, "{bytes:02x?}");
    }
}

#[test]
fn store_immediates_and_sign_extension() {
    let cases: [(&[u8], Vec<u8>); 4] = [
        (&[0xC6, 0x00, 0x80], vec![0x80]), // mov byte [rax], 0x80
        (&[0x66, 0xC7, 0x00, 0x34, 0x12], vec![0x34, 0x12]), // mov word [rax], 0x1234
        (
            &[0xC7, 0x00, 0x78, 0x56, 0x34, 0x92],
            vec![0x78, 0x56, 0x34, 0x92],
        ),
        // mov qword [rax], -0x6dcba988 (imm32 sign-extended to 64 bits)
        (
            &[0x48, 0xC7, 0x00, 0x78, 0x56, 0x34, 0x92],
            vec![0x78, 0x56, 0x34, 0x92, 0xFF, 0xFF, 0xFF, 0xFF],
        ),
    ];
    for (bytes, stored) in cases {
        let mut m = Machine::long();
        m.set_gpr(RAX, MMIO);
        m.mmio(bytes, MemoryAccessType::Write, MMIO).ok();
        assert_eq!(m.memory_calls(), [(MMIO, true, stored)], "{bytes:02x?}");
        assert_eq!(m.regs.rip, bytes.len() as u64);
    }
}

#[test]
fn movzx_movsx_movsxd() {
    let cases: [(&[u8], u64); 7] = [
        (&[0x0F, 0xB6, 0x03], 0x0000_0000_0000_0081), // movzx eax, byte [rbx]
        (&[0x0F, 0xB7, 0x03], 0x0000_0000_0000_8281), // movzx eax, word [rbx]
        (&[0x0F, 0xBE, 0x03], 0x0000_0000_FFFF_FF81), // movsx eax, byte [rbx]
        (&[0x48, 0x0F, 0xBF, 0x03], 0xFFFF_FFFF_FFFF_8281), // movsx rax, word [rbx]
        (&[0x48, 0x63, 0x03], 0xFFFF_FFFF_8483_8281), // movsxd rax, dword [rbx]
        (&[0x66, 0x0F, 0xBE, 0x03], 0x1111_1111_1111_FF81), // movsx ax, byte [rbx]
        (&[0x63, 0x03], 0x0000_0000_8483_8281),       // movsxd eax, dword [rbx]
    ];
    for (bytes, expected) in cases {
        let mut m = Machine::long();
        m.set_gpr(RAX, 0x1111_1111_1111_1111);
        m.set_gpr(RBX, MMIO);
        m.write_phys(MMIO, &[0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88]);
        m.mmio(bytes, MemoryAccessType::Read, MMIO).ok();
        assert_eq!(m.gpr(RAX), expected, "{bytes:02x?}");
    }
}

#[test]
fn moffs_forms_with_64_32_and_16_bit_offsets() {
    // 64-bit: mov eax, [moffs64]
    let mut m = Machine::long();
    let mut bytes = vec![0xA1];
    bytes.extend_from_slice(&MMIO.to_le_bytes());
    m.write_phys(MMIO, &[1, 2, 3, 4]);
    m.mmio(&bytes, MemoryAccessType::Read, MMIO).ok();
    assert_eq!(m.gpr(RAX), 0x0403_0201);
    assert_eq!(m.regs.rip, 9);

    // 64-bit with 0x67: mov [moffs32], al
    let mut m = Machine::long();
    m.set_gpr(RAX, 0x5A);
    m.mmio(
        &[0x67, 0xA2, 0x00, 0x00, 0xE0, 0xFE],
        MemoryAccessType::Write,
        MMIO,
    )
    .ok();
    assert_eq!(m.memory_calls(), [(MMIO, true, vec![0x5A])]);

    // Real mode: mov ax, [0x1234] with DS = 0xF000 → linear 0xF1234.
    let mut m = Machine::real();
    m.regs
        .set_segment(Segment::Ds, SegmentRegister::real_mode(0xF000));
    m.write_phys(0xF1234, &[0xCD, 0xAB]);
    m.mmio(&[0xA1, 0x34, 0x12], MemoryAccessType::Read, 0xF1234)
        .ok();
    assert_eq!(m.gpr(RAX) & 0xFFFF, 0xABCD);

    // 32-bit: mov [moffs32], eax with an FS override.
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Fs, seg(0x1000_0000, 0xFFFF_FFFF, 0x18, 0xC093));
    m.set_gpr(RAX, 0xCAFE_F00D);
    m.mmio(
        &[0x64, 0xA3, 0x00, 0x00, 0xE0, 0xEE],
        MemoryAccessType::Write,
        0xFEE0_0000,
    )
    .ok();
    assert_eq!(
        m.memory_calls(),
        [(0xFEE0_0000, true, 0xCAFE_F00Du32.to_le_bytes().to_vec())]
    );
}

#[test]
fn real_mode_16_bit_addressing_forms() {
    // mov al, [bx+si+0x10] with DS=0x1000; BX+SI+0x10 wraps at 64 KiB.
    let mut m = Machine::real();
    m.regs
        .set_segment(Segment::Ds, SegmentRegister::real_mode(0x1000));
    m.set_gpr(RBX, 0xFFF0);
    m.set_gpr(RSI, 0x0005);
    m.write_phys(0x10000 + 0x0005, &[0x77]);
    m.mmio(&[0x8A, 0x40, 0x10], MemoryAccessType::Read, 0x10005)
        .ok();
    assert_eq!(m.gpr(RAX) & 0xFF, 0x77);

    // mov [bp+2], cl defaults to SS.
    let mut m = Machine::real();
    m.regs
        .set_segment(Segment::Ss, SegmentRegister::real_mode(0x2000));
    m.regs
        .set_segment(Segment::Ds, SegmentRegister::real_mode(0x3000));
    m.set_gpr(5, 0x100);
    m.set_gpr(RCX, 0x42);
    m.mmio(&[0x88, 0x4E, 0x02], MemoryAccessType::Write, 0x20102)
        .ok();
    assert_eq!(m.memory_calls(), [(0x20102, true, vec![0x42])]);

    // A word at offset 0xFFFF exceeds the 64 KiB limit: #GP(0) (or #SS(0) through SS).
    let mut m = Machine::real();
    m.set_gpr(RBX, 0xFFFF);
    let e = m
        .mmio(&[0x8B, 0x07], MemoryAccessType::Read, 0xFFFF)
        .exception();
    assert_eq!(e, Exception::gp(0));
    assert!(m.memory_calls().is_empty());
    m.set_gpr(5, 0xFFFF);
    let e = m
        .mmio(&[0x8B, 0x46, 0x00], MemoryAccessType::Read, 0xFFFF)
        .exception();
    assert_eq!(e, Exception::ss(0));
}

#[test]
fn rip_relative_and_eip_relative() {
    let mut m = Machine::long();
    m.regs.rip = 0x40_0000;
    m.set_gpr(RCX, 0x99);
    // mov [rip+0x100], ecx: target = next rip (0x400006) + 0x100
    m.mmio(
        &[0x89, 0x0D, 0x00, 0x01, 0x00, 0x00],
        MemoryAccessType::Write,
        0x40_0106,
    )
    .ok();
    assert_eq!(m.memory_calls(), [(0x40_0106, true, vec![0x99, 0, 0, 0])]);
    assert_eq!(m.regs.rip, 0x40_0006);

    let mut m = Machine::long();
    m.regs.rip = 0x1_0000_1000;
    // mov [eip+0x10], ecx (0x67): the address is truncated to 32 bits.
    m.mmio(
        &[0x67, 0x89, 0x0D, 0x10, 0, 0, 0],
        MemoryAccessType::Write,
        0x1017,
    )
    .ok();
    assert_eq!(m.memory_calls()[0].0, 0x1017);
}

#[test]
fn fs_gs_bases_apply_in_64_bit_mode_others_do_not() {
    let mut m = Machine::long();
    m.regs
        .set_segment(Segment::Gs, seg(0xFFFF_8000_0000_0000, 0, 0, 0x93));
    m.regs
        .set_segment(Segment::Ds, seg(0x1234_0000, 0, 0, 0x93));
    m.set_gpr(RAX, 0x10);
    m.pages = None;
    // mov [gs:rax], al  → linear GS.base + 0x10 (translated, identity here)
    m.mmio(&[0x65, 0x88, 0x00], MemoryAccessType::Write, 0).ok();
    assert_eq!(m.memory_calls()[0].0, 0xFFFF_8000_0000_0010);
    // mov [ds:rax], al → DS base ignored
    m.mmio(&[0x3E, 0x88, 0x00], MemoryAccessType::Write, 0).ok();
    assert_eq!(m.memory_calls()[0].0, 0x10);
}

#[test]
fn non_canonical_address_is_gp_or_ss() {
    let mut m = Machine::long();
    m.set_gpr(RAX, 0x0000_8000_0000_0000);
    let e = m
        .mmio(&[0x88, 0x00], MemoryAccessType::Write, 0)
        .exception();
    assert_eq!(e, Exception::gp(0));
    // mov [rsp], al where rsp is non-canonical → #SS(0)
    m.set_gpr(4, 0x0000_8000_0000_0000);
    let e = m
        .mmio(&[0x88, 0x04, 0x24], MemoryAccessType::Write, 0)
        .exception();
    assert_eq!(e, Exception::ss(0));
    // An 8-byte access whose last byte crosses the canonical boundary.
    m.set_gpr(RAX, 0x0000_7FFF_FFFF_FFFC);
    let e = m
        .mmio(&[0x48, 0x89, 0x18], MemoryAccessType::Write, 0)
        .exception();
    assert_eq!(e, Exception::gp(0));
    assert!(m.memory_calls().is_empty());
}

#[test]
fn page_crossing_store_is_split_and_both_pages_translated_first() {
    let mut m = Machine::long();
    m.identity(0, 16);
    m.map(
        0x7000,
        Pte {
            gpa: 0xFEE0_0000,
            writable: true,
            user: false,
            executable: false,
        },
    );
    m.map(
        0x8000,
        Pte {
            gpa: 0xFEC0_0000,
            writable: true,
            user: false,
            executable: false,
        },
    );
    m.set_gpr(RAX, 0x7FFE);
    m.set_gpr(RBX, 0x1122_3344_5566_7788);
    m.mmio(&[0x48, 0x89, 0x18], MemoryAccessType::Write, 0xFEE0_0FFE)
        .ok();
    assert_eq!(
        m.memory_calls(),
        [
            (0xFEE0_0FFE, true, vec![0x88, 0x77]),
            (0xFEC0_0000, true, vec![0x66, 0x55, 0x44, 0x33, 0x22, 0x11])
        ]
    );
    // Second page not present: #PF with CR2 at that page, nothing written.
    let mut m = Machine::long();
    m.identity(0, 16);
    m.pages.as_mut().unwrap().remove(&0x8000);
    m.set_gpr(RAX, 0x7FFE);
    let e = m
        .mmio(&[0x48, 0x89, 0x18], MemoryAccessType::Write, 0x7FFE)
        .exception();
    assert_eq!(e, Exception::pf(0x8000, 0b10));
    assert!(m.memory_calls().is_empty());
}

#[test]
fn page_faults_carry_error_codes() {
    let mut m = Machine::long();
    m.identity(0, 16);
    m.map(
        0x20_0000,
        Pte {
            gpa: 0xFEE0_0000,
            writable: false,
            user: false,
            executable: false,
        },
    );
    m.set_gpr(RAX, 0x20_0010);
    // Write to a read-only page: P=1, W=1.
    let e = m
        .mmio(&[0x89, 0x18], MemoryAccessType::Write, 0xFEE0_0010)
        .exception();
    assert_eq!(e, Exception::pf(0x20_0010, 0b11));
    // Read of a page that is not mapped: P=0.
    m.set_gpr(RAX, 0x30_0000);
    let e = m.mmio(&[0x8B, 0x18], MemoryAccessType::Read, 0).exception();
    assert_eq!(e, Exception::pf(0x30_0000, 0));
}

#[test]
fn compatibility_mode_16_and_32_bit_code() {
    // 32-bit code segment under long mode: mov [ebx], eax with a 0x67-free 32-bit address.
    let mut m = Machine::long();
    m.regs
        .set_segment(Segment::Cs, seg(0, 0xFFFF_FFFF, 0x18, 0xC09B));
    m.regs
        .set_segment(Segment::Ds, seg(0x1000, 0xFFFF_FFFF, 0x10, 0xC093));
    m.set_gpr(RBX, 0xFFFF_FFFF_0000_0010);
    m.set_gpr(RAX, 0xAABB_CCDD);
    m.mmio(&[0x89, 0x03], MemoryAccessType::Write, 0x1010).ok();
    assert_eq!(
        m.memory_calls(),
        [(0x1010, true, vec![0xDD, 0xCC, 0xBB, 0xAA])]
    );
    // 16-bit code segment under long mode: mov [bx], ax.
    let mut m = Machine::long();
    m.regs
        .set_segment(Segment::Cs, seg(0, 0xFFFF, 0x18, 0x009B));
    m.regs.rip = 0xFFFE;
    m.set_gpr(RBX, 0x20);
    m.set_gpr(RAX, 0xBEEF);
    m.mmio(&[0x89, 0x07], MemoryAccessType::Write, 0x20).ok();
    assert_eq!(m.memory_calls(), [(0x20, true, vec![0xEF, 0xBE])]);
    assert_eq!(m.regs.rip, 0, "IP wraps at 64 KiB in 16-bit code");
}

#[test]
fn protected_mode_segment_checks() {
    // Write to a read-only data segment: #GP(0).
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Ds, seg(0, 0xFFFF_FFFF, 0x10, 0xC091));
    m.set_gpr(RAX, 0x100);
    assert_eq!(
        m.mmio(&[0x89, 0x18], MemoryAccessType::Write, 0x100)
            .exception(),
        Exception::gp(0)
    );
    // Null (not present) segment: #GP(0).
    m.regs.set_segment(Segment::Ds, seg(0, 0, 0, 0));
    assert_eq!(
        m.mmio(&[0x8B, 0x18], MemoryAccessType::Read, 0x100)
            .exception(),
        Exception::gp(0)
    );
    // Beyond the limit: #GP(0); through SS: #SS(0).
    m.regs.set_segment(Segment::Ds, seg(0, 0xFFF, 0x10, 0x4093));
    m.set_gpr(RAX, 0xFFE);
    assert_eq!(
        m.mmio(&[0x8B, 0x18], MemoryAccessType::Read, 0xFFE)
            .exception(),
        Exception::gp(0)
    );
    m.regs.set_segment(Segment::Ss, seg(0, 0xFFF, 0x10, 0x4093));
    assert_eq!(
        m.mmio(&[0x36, 0x8B, 0x18], MemoryAccessType::Read, 0xFFE)
            .exception(),
        Exception::ss(0)
    );
    // Expand-down: offsets above the limit up to 0xFFFFFFFF (B=1) are valid.
    m.regs.set_segment(Segment::Ds, seg(0, 0xFFF, 0x10, 0x4097));
    m.set_gpr(RAX, 0x1000);
    m.mmio(&[0x8B, 0x18], MemoryAccessType::Read, 0x1000).ok();
    m.set_gpr(RAX, 0xFFF);
    assert_eq!(
        m.mmio(&[0x8B, 0x18], MemoryAccessType::Read, 0xFFF)
            .exception(),
        Exception::gp(0)
    );
    // Execute-only code segment via CS override cannot be read; readable code can.
    m.regs
        .set_segment(Segment::Cs, seg(0, 0xFFFF_FFFF, 0x08, 0xC099));
    m.set_gpr(RAX, 0x100);
    assert_eq!(
        m.mmio(&[0x2E, 0x8B, 0x18], MemoryAccessType::Read, 0x100)
            .exception(),
        Exception::gp(0)
    );
    m.regs
        .set_segment(Segment::Cs, seg(0, 0xFFFF_FFFF, 0x08, 0xC09B));
    m.mmio(&[0x2E, 0x8B, 0x18], MemoryAccessType::Read, 0x100)
        .ok();
    // A write through CS is never allowed.
    assert_eq!(
        m.mmio(&[0x2E, 0x89, 0x18], MemoryAccessType::Write, 0x100)
            .exception(),
        Exception::gp(0)
    );
}

#[test]
fn sixteen_bit_protected_mode_and_address_size_prefix() {
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Cs, seg(0, 0xFFFF, 0x08, 0x009B));
    m.regs
        .set_segment(Segment::Ds, seg(0x10_0000, 0xF_FFFF, 0x10, 0x0093));
    m.set_gpr(RBX, 0x1234_5678);
    m.set_gpr(RAX, 0x66);
    // 16-bit code: mov [bx], al uses BX only.
    m.mmio(&[0x88, 0x07], MemoryAccessType::Write, 0x10_5678)
        .ok();
    assert_eq!(m.memory_calls()[0].0, 0x10_5678);
    // With 0x67: mov [ebx], al uses EBX (beyond the limit here → #GP).
    assert_eq!(
        m.mmio(&[0x67, 0x88, 0x03], MemoryAccessType::Write, 0)
            .exception(),
        Exception::gp(0)
    );
    m.set_gpr(RBX, 0x0008_0000);
    m.mmio(&[0x67, 0x88, 0x03], MemoryAccessType::Write, 0x18_0000)
        .ok();
    assert_eq!(m.memory_calls()[0].0, 0x18_0000);
}

#[test]
fn virtual_8086_mode_uses_real_mode_addressing_at_cpl3() {
    let mut m = Machine::protected32();
    m.regs.rflags = 0x2 | (1 << 17);
    for s in Segment::ALL {
        m.regs.set_segment(s, SegmentRegister::real_mode(0x1000));
    }
    m.set_gpr(RDI, 0x10);
    m.set_gpr(RAX, 0x3C);
    m.mmio(&[0x88, 0x05], MemoryAccessType::Write, 0x10010).ok();
    assert_eq!(m.memory_calls(), [(0x10010, true, vec![0x3C])]);
    assert_eq!(
        m.translations().len(),
        1,
        "paging may be on in virtual-8086 mode"
    );
}

#[test]
fn store_segment_selector() {
    let mut m = Machine::protected32();
    m.set_gpr(RAX, 0x200);
    // mov [eax], ds
    m.mmio(&[0x8C, 0x18], MemoryAccessType::Write, 0x200).ok();
    assert_eq!(m.memory_calls(), [(0x200, true, vec![0x10, 0x00])]);
}

#[test]
fn instruction_bytes_are_fetched_when_missing() {
    let mut m = Machine::long();
    m.identity(0, 16);
    m.map(
        0x20_0000,
        Pte {
            gpa: 0xFEE0_0000,
            writable: true,
            user: false,
            executable: false,
        },
    );
    m.regs.rip = 0x2FFE;
    // mov dword [rax+0x10], 0x11223344 = C7 40 10 44 33 22 11 (7 bytes) across 0x3000.
    m.load_code(&[0xC7, 0x40, 0x10, 0x44, 0x33, 0x22, 0x11]);
    m.set_gpr(RAX, 0x20_0000);
    let ctx = MemoryAccessContext::new(&[], MemoryAccessType::Write, 0xFEE0_0010);
    m.mmio_ctx(7, &ctx).ok();
    assert_eq!(
        m.memory_calls().last().unwrap(),
        &(0xFEE0_0010, true, vec![0x44, 0x33, 0x22, 0x11])
    );
    let fetches: Vec<_> = m
        .translations()
        .into_iter()
        .filter(|(_, f)| f.contains(TranslateGvaFlags::VALIDATE_EXECUTE))
        .map(|(g, _)| g)
        .collect();
    assert_eq!(fetches, [0x2000, 0x3000]);
    assert_eq!(m.regs.rip, 0x3005);

    // A short instruction at the end of a page does not touch the next page.
    let mut m = Machine::long();
    m.identity(0, 3);
    m.regs.rip = 0x2FFE;
    m.load_code(&[0x89, 0x18]);
    m.set_gpr(RAX, 0x1000);
    let ctx = MemoryAccessContext::new(&[], MemoryAccessType::Write, 0x1000);
    m.mmio_ctx(2, &ctx).ok();

    // The bytes needed lie beyond the CS limit: #GP(0).
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Cs, seg(0, 0x1001, 0x08, 0x409B));
    m.regs.rip = 0x1000;
    m.load_code(&[0xC7, 0x00, 1, 2, 3, 4]);
    let ctx = MemoryAccessContext::new(&[], MemoryAccessType::Write, 0);
    assert_eq!(m.mmio_ctx(6, &ctx).exception(), Exception::gp(0));
    // With partial bytes in the exit, the rest is fetched.
    let mut m = Machine::protected32();
    m.regs.rip = 0x1000;
    m.load_code(&[0xC7, 0x00, 1, 2, 3, 4]);
    m.set_gpr(RAX, MMIO);
    let ctx = MemoryAccessContext::new(&[0xC7, 0x00], MemoryAccessType::Write, MMIO);
    m.mmio_ctx(6, &ctx).ok();
    assert_eq!(
        m.memory_calls().last().unwrap(),
        &(MMIO, true, vec![1, 2, 3, 4])
    );
}

#[test]
fn fetch_page_fault_sets_id_only_when_nx_or_smep_is_in_use() {
    // 64-bit mode with EFER.NXE: a fetch fault reports I/D (bit 4).
    let mut m = Machine::long();
    m.identity(0, 3);
    m.regs.rip = 0x2FFF;
    m.load_code(&[0xC7]);
    let ctx = MemoryAccessContext::new(&[], MemoryAccessType::Write, 0);
    assert_eq!(
        m.mmio_ctx(6, &ctx).exception(),
        Exception::pf(0x3000, 0b1_0000)
    );
    // 32-bit paging without PAE and without SMEP: I/D stays clear.
    let mut m = Machine::protected32();
    m.regs.cr[0] |= 1 << 31;
    m.identity(0, 3);
    m.regs.rip = 0x2FFF;
    m.load_code(&[0xC7]);
    assert_eq!(m.mmio_ctx(6, &ctx).exception(), Exception::pf(0x3000, 0));
    // ... unless SMEP is on.
    m.regs.cr[3] |= 1 << 20;
    assert_eq!(
        m.mmio_ctx(6, &ctx).exception(),
        Exception::pf(0x3000, 0b1_0000)
    );
}

#[test]
fn the_instruction_itself_must_lie_within_cs_and_canonical_space() {
    // 64-bit: a 3-byte instruction whose last byte is past the canonical boundary.
    let mut m = Machine::long();
    m.regs.rip = 0x0000_7FFF_FFFF_FFFE;
    m.set_gpr(RAX, MMIO);
    let e = m
        .mmio(&[0x89, 0x58, 0x10], MemoryAccessType::Write, MMIO + 0x10)
        .exception();
    assert_eq!(e, Exception::gp(0));
    assert!(m.memory_calls().is_empty());
    // Legacy mode: bytes supplied by the exit but extending past the CS limit.
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Cs, seg(0, 0x1001, 0x08, 0x409B));
    m.regs.rip = 0x1000;
    m.set_gpr(RAX, MMIO);
    let e = m
        .mmio(&[0x89, 0x58, 0x10], MemoryAccessType::Write, MMIO + 0x10)
        .exception();
    assert_eq!(e, Exception::gp(0));
}

#[test]
fn common_64_bit_exit_reads_only_the_operand_registers() {
    let mut m = Machine::long();
    m.set_gpr(RAX, MMIO);
    let ctx = MemoryAccessContext::new(&[0x89, 0x58, 0x10], MemoryAccessType::Write, MMIO + 0x10)
        .with_gva(MMIO + 0x10);
    m.mmio_ctx(3, &ctx).ok();
    let gets: Vec<_> = m
        .log
        .iter()
        .filter_map(|c| match c {
            Call::Get(names) => Some(names.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(gets, [vec![RegisterName::RAX, RegisterName::RBX]]);
}

#[test]
fn instruction_bytes_do_not_wrap_at_64_kib() {
    // Real mode, IP = 0xFFFF, `mov [bx], al` (88 07): its second byte lies past the CS limit.
    // Bytes supplied by the exit or fetched, the answer is the same #GP(0).
    for supplied in [&[0x88u8, 0x07][..], &[0x88][..], &[][..]] {
        let mut m = Machine::real();
        m.regs.rip = 0xFFFF;
        m.write_phys(0xFFFF, &[0x88]);
        m.write_phys(0x0000, &[0x07]); // what a wrap would wrongly fetch
        let ctx = MemoryAccessContext::new(supplied, MemoryAccessType::Write, 0);
        assert_eq!(
            m.mmio_ctx(2, &ctx).exception(),
            Exception::gp(0),
            "{supplied:02x?}"
        );
        assert!(m.memory_calls().iter().all(|c| !c.1), "nothing written");
    }
}

#[test]
fn instruction_bytes_past_0xffff_come_from_beyond_it_when_the_limit_allows() {
    // 16-bit code with a 1 MiB CS limit ("unreal" mode): the instruction at IP 0xFFFF continues
    // at offset 0x10000, not at 0. 88 0F = mov [bx], cl; 88 07 would be mov [bx], al.
    for supplied in [&[0x88u8, 0x0F][..], &[0x88][..], &[][..]] {
        let mut m = Machine::real();
        m.regs.set_segment(Segment::Cs, seg(0, 0xF_FFFF, 0, 0x9B));
        m.regs.rip = 0xFFFF;
        m.write_phys(0xFFFF, &[0x88, 0x0F]);
        m.write_phys(0x0000, &[0x07]);
        m.set_gpr(RAX, 0x11);
        m.set_gpr(RCX, 0x22);
        m.set_gpr(RBX, 0x500);
        let ctx = MemoryAccessContext::new(supplied, MemoryAccessType::Write, 0x500);
        m.mmio_ctx(2, &ctx).ok();
        assert_eq!(
            m.memory_calls().last().unwrap(),
            &(0x500, true, vec![0x22]),
            "{supplied:02x?}"
        );
        assert_eq!(m.regs.rip, 0x0001, "IP itself wraps at 64 KiB");
    }
}
