//! The ALU family on MMIO through the public API: ADD, OR, ADC, SBB, AND, SUB, XOR, CMP, TEST,
//! INC, DEC, NEG and NOT with a memory operand — state, bytes, expected state — plus the
//! read-modify-write contract: one resolution for read and write, all or nothing.
//!
//! (The host CPU checks the arithmetic over many more values in `oracle_alu.rs`.)

mod support;

use hvemu::*;
use iced_x86::code_asm::*;
use support::*;

const MMIO: u64 = 0xFEE0_0000;
const RAX: usize = 0;
const RCX: usize = 1;
const RBX: usize = 3;

const CF: u64 = 1;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

fn long(f: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>) -> Vec<u8> {
    asm(64, f)
}

/// A 64-bit machine with RBX = MMIO holding `mem`, RCX = `rcx` and the status flags `flags`.
fn machine(mem: &[u8], rcx_value: u64, flags: u64) -> Machine {
    let mut m = Machine::long();
    m.regs.rip = 0x1000;
    m.regs.rflags = 0x202 | flags;
    m.set_gpr(RBX, MMIO);
    m.set_gpr(RCX, rcx_value);
    m.write_phys(MMIO, mem);
    m
}

/// Runs `bytes` as the exit for a write (or read) of MMIO whose linear address the exit gives.
fn exit(m: &mut Machine, bytes: &[u8], access: MemoryAccessType) -> Outcome {
    let ctx = MemoryAccessContext::new(bytes, access, MMIO).with_gva(MMIO);
    m.mmio_ctx(bytes.len() as u8, &ctx)
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

#[test]
fn add_to_mmio_is_one_read_one_write_and_one_register_round_trip() {
    // add byte [rbx], cl: 0xFF + 0x01 = 0x00 with CF, PF, AF and ZF.
    let bytes = long(|a| a.add(byte_ptr(rbx), cl));
    assert_eq!(bytes, [0x00, 0x0B]);
    let mut m = machine(&[0xFF], 0x01, 0);
    exit(&mut m, &bytes, MemoryAccessType::Write).ok();
    assert_eq!(
        m.memory_calls(),
        [(MMIO, false, vec![0xFF]), (MMIO, true, vec![0x00])]
    );
    assert_eq!(m.regs.rflags, 0x202 | CF | PF | AF | ZF);
    assert_eq!(m.regs.rip, 0x1002);
    assert_eq!((m.gets(), m.sets()), (1, 1));
    assert!(m.translations().is_empty(), "a write exit vouches for RMW");
    assert_eq!(
        set_names(&m),
        [RegisterName::RIP, RegisterName::RFLAGS],
        "only RIP and RFLAGS change"
    );
}

/// One example per instruction: (what, bytes, memory before, RCX, flags before,
/// memory after, flags after).
type Example = (
    &'static str,
    Vec<u8>,
    &'static [u8],
    u64,
    u64,
    &'static [u8],
    u64,
);

#[test]
fn each_operation_on_a_memory_destination() {
    let examples: Vec<Example> = vec![
        (
            "add dword [rbx], ecx: signed overflow",
            long(|a| a.add(dword_ptr(rbx), ecx)),
            &[0xFF, 0xFF, 0xFF, 0x7F],
            1,
            0,
            &[0x00, 0x00, 0x00, 0x80],
            OF | SF | AF | PF,
        ),
        (
            "or word [rbx], 0x8000 (66 81 /1 iw)",
            long(|a| a.or(word_ptr(rbx), 0x8000)),
            &[0x01, 0x00],
            0,
            CF | OF | AF | ZF,
            &[0x01, 0x80],
            SF,
        ),
        (
            "adc dword [rbx], ecx with CF=1",
            long(|a| a.adc(dword_ptr(rbx), ecx)),
            &[0xFF, 0xFF, 0xFF, 0xFF],
            0,
            CF,
            &[0, 0, 0, 0],
            CF | PF | AF | ZF,
        ),
        (
            "sbb qword [rbx], rcx with CF=1",
            long(|a| a.sbb(qword_ptr(rbx), rcx)),
            &[0; 8],
            0,
            CF,
            &[0xFF; 8],
            CF | PF | AF | SF,
        ),
        (
            "and dword [rbx], -16 (83 /4 ib, sign-extended)",
            long(|a| a.and(dword_ptr(rbx), -16)),
            &[0x78, 0x56, 0x34, 0x12],
            0,
            CF | OF | AF,
            &[0x70, 0x56, 0x34, 0x12],
            0,
        ),
        (
            "sub qword [rbx], -0x10000000 (REX.W 81 /5 id, sign-extended)",
            long(|a| a.sub(qword_ptr(rbx), -0x1000_0000)),
            &[0; 8],
            0,
            0,
            &[0x00, 0x00, 0x00, 0x10, 0, 0, 0, 0],
            CF | PF,
        ),
        (
            "xor byte [rbx], 0x5A",
            long(|a| a.xor(byte_ptr(rbx), 0x5A)),
            &[0x5A],
            0,
            CF | OF,
            &[0x00],
            ZF | PF,
        ),
        (
            "inc word [rbx] keeps CF",
            long(|a| a.inc(word_ptr(rbx))),
            &[0xFF, 0x7F],
            0,
            CF,
            &[0x00, 0x80],
            CF | OF | SF | AF | PF,
        ),
        (
            "dec qword [rbx] keeps CF clear",
            long(|a| a.dec(qword_ptr(rbx))),
            &[1, 0, 0, 0, 0, 0, 0, 0],
            0,
            SF | OF,
            &[0; 8],
            ZF | PF,
        ),
        (
            "neg byte [rbx] of 0: CF clear",
            long(|a| a.neg(byte_ptr(rbx))),
            &[0],
            0,
            CF | SF,
            &[0],
            ZF | PF,
        ),
        (
            "neg byte [rbx] of 0x80: CF and OF",
            long(|a| a.neg(byte_ptr(rbx))),
            &[0x80],
            0,
            0,
            &[0x80],
            CF | OF | SF,
        ),
        (
            "neg dword [rbx] of 1",
            long(|a| a.neg(dword_ptr(rbx))),
            &[1, 0, 0, 0],
            0,
            0,
            &[0xFF, 0xFF, 0xFF, 0xFF],
            CF | SF | AF | PF,
        ),
        (
            "not dword [rbx]: no flag changes",
            long(|a| a.not(dword_ptr(rbx))),
            &[0x0F, 0xF0, 0x00, 0xFF],
            0,
            CF | ZF | AF,
            &[0xF0, 0x0F, 0xFF, 0x00],
            CF | ZF | AF,
        ),
    ];
    for (what, bytes, before, rcx_value, flags, after, flags_after) in examples {
        let mut m = machine(before, rcx_value, flags);
        exit(&mut m, &bytes, MemoryAccessType::Write).ok();
        assert_eq!(m.read_phys(MMIO, after.len()), after, "{what}");
        assert_eq!(m.regs.rflags, 0x202 | flags_after, "{what}");
        let calls = m.memory_calls();
        assert_eq!(calls.len(), 2, "{what}: one read, one write");
        assert_eq!((calls[0].1, calls[1].1), (false, true), "{what}");
        assert_eq!(m.regs.rip, 0x1000 + bytes.len() as u64, "{what}");
        assert_eq!(m.gpr(RCX), rcx_value, "{what}");
        let rflags_written = set_names(&m).contains(&RegisterName::RFLAGS);
        assert_eq!(rflags_written, flags != flags_after, "{what}");
    }
}

#[test]
fn cmp_and_test_only_read() {
    // cmp byte [rbx], 0x80: 0x7F - 0x80 borrows and overflows.
    let bytes = long(|a| a.cmp(byte_ptr(rbx), 0x80));
    let mut m = machine(&[0x7F], 0, ZF);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!(m.memory_calls(), [(MMIO, false, vec![0x7F])]);
    assert_eq!(m.regs.rflags, 0x202 | CF | OF | SF | PF);
    assert!(m.translations().is_empty(), "a read exit vouches for CMP");

    // test dword [rbx], ecx: AND's flags, AF cleared (undefined in the manuals).
    let bytes = long(|a| a.test(dword_ptr(rbx), ecx));
    assert_eq!(bytes, [0x85, 0x0B]);
    let mut m = machine(&[0x00, 0x00, 0x00, 0x80], 0x8000_0001, CF | OF | AF);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!(m.memory_calls(), [(MMIO, false, vec![0, 0, 0, 0x80])]);
    assert_eq!(m.regs.rflags, 0x202 | SF | PF);

    // test byte [rbx], imm8 through F6 /1, the alias of F6 /0.
    let mut m = machine(&[0x0F], 0, 0);
    exit(&mut m, &[0xF6, 0x0B, 0xF0], MemoryAccessType::Read).ok();
    assert_eq!(m.memory_calls().len(), 1);
    assert_eq!(m.regs.rflags, 0x202 | ZF | PF);

    // cmp rcx, [rbx]: equal; the register is not written.
    let bytes = long(|a| a.cmp(rcx, qword_ptr(rbx)));
    let mut m = machine(
        &0x1122_3344_5566_7788u64.to_le_bytes(),
        0x1122_3344_5566_7788,
        0,
    );
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!(m.regs.rflags, 0x202 | ZF | PF);
    assert_eq!(set_names(&m), [RegisterName::RIP, RegisterName::RFLAGS]);
}

#[test]
fn register_destination_forms_read_memory_and_write_the_register() {
    // add eax, [rbx]: the 32-bit result zero-extends into RAX.
    let bytes = long(|a| a.add(eax, dword_ptr(rbx)));
    assert_eq!(bytes, [0x03, 0x03]);
    let mut m = machine(&[0x01, 0, 0, 0], 0, 0);
    m.set_gpr(RAX, 0xDEAD_BEEF_FFFF_FFFF);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!(m.gpr(RAX), 0);
    assert_eq!(m.regs.rflags, 0x202 | CF | PF | AF | ZF);
    assert_eq!(m.memory_calls(), [(MMIO, false, vec![1, 0, 0, 0])]);

    // sub ah, [rbx]: an 8-bit high register merges into RAX.
    let bytes = long(|a| a.sub(ah, byte_ptr(rbx)));
    assert_eq!(bytes, [0x2A, 0x23]);
    let mut m = machine(&[0x01], 0, 0);
    m.set_gpr(RAX, 0x1111_1111_1111_0022);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!(m.gpr(RAX), 0x1111_1111_1111_FF22);
    assert_eq!(m.regs.rflags, 0x202 | CF | SF | AF | PF);

    // or cx, [rbx] (0x66): a 16-bit register merges.
    let bytes = long(|a| a.or(cx, word_ptr(rbx)));
    assert_eq!(bytes, [0x66, 0x0B, 0x0B]);
    let mut m = machine(&[0x00, 0x0F], 0xAAAA_AAAA_AAAA_00F0, 0);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!(m.gpr(RCX), 0xAAAA_AAAA_AAAA_0FF0);
    assert_eq!(m.memory_calls().len(), 1);
}

#[test]
fn byte_high_register_word_and_quadword_encodings() {
    // adc [rbx], ah: AH is bits 8..16 of RAX.
    let bytes = long(|a| a.adc(byte_ptr(rbx), ah));
    assert_eq!(bytes, [0x10, 0x23]);
    let mut m = machine(&[0x10], 0, CF);
    m.set_gpr(RAX, 0x0000_0000_0000_2001);
    exit(&mut m, &bytes, MemoryAccessType::Write).ok();
    assert_eq!(m.read_phys(MMIO, 1), [0x31]);
    assert_eq!(m.regs.rflags, 0x202);

    // add word [rbx], cx: 0x66.
    let bytes = long(|a| a.add(word_ptr(rbx), cx));
    assert_eq!(bytes, [0x66, 0x01, 0x0B]);
    let mut m = machine(&[0xFF, 0xFF, 0x77], 0xFFFF_0001, 0);
    exit(&mut m, &bytes, MemoryAccessType::Write).ok();
    assert_eq!(m.read_phys(MMIO, 3), [0, 0, 0x77], "two bytes only");
    assert_eq!(m.memory_calls()[1], (MMIO, true, vec![0, 0]));

    // add qword [rbx], rcx: REX.W.
    let bytes = long(|a| a.add(qword_ptr(rbx), rcx));
    assert_eq!(bytes, [0x48, 0x01, 0x0B]);
    let mut m = machine(&u64::MAX.to_le_bytes(), 2, 0);
    exit(&mut m, &bytes, MemoryAccessType::Write).ok();
    assert_eq!(m.read_phys(MMIO, 8), 1u64.to_le_bytes());
    assert_eq!(m.regs.rflags, 0x202 | CF | AF);
}

#[test]
fn sign_extended_imm8_at_every_width() {
    // add size [rbx], -1 through 83 /0 ib: 1 + (-1) = 0 with a carry, at each width.
    for (bytes, size) in [
        (long(|a| a.add(word_ptr(rbx), -1)), 2),
        (long(|a| a.add(dword_ptr(rbx), -1)), 4),
        (long(|a| a.add(qword_ptr(rbx), -1)), 8),
    ] {
        assert_eq!(bytes[bytes.len() - 3..], [0x83, 0x03, 0xFF]);
        let mut m = machine(&[1, 0, 0, 0, 0, 0, 0, 0, 0x99], 0, 0);
        exit(&mut m, &bytes, MemoryAccessType::Write).ok();
        assert_eq!(m.memory_calls()[1], (MMIO, true, vec![0; size]));
        assert_eq!(m.regs.rflags, 0x202 | CF | PF | AF | ZF, "{size}");
    }
    // The 32-bit-only alias 82 /0 ib: add byte [ebx], 0x80 in 32-bit code.
    let mut m = Machine::protected32();
    m.set_gpr(RBX, MMIO);
    m.write_phys(MMIO, &[0x80]);
    m.mmio(&[0x82, 0x03, 0x80], MemoryAccessType::Write, MMIO)
        .ok();
    assert_eq!(m.read_phys(MMIO, 1), [0x00]);
    assert_eq!(m.regs.rflags, 0x2 | CF | OF | ZF | PF);
    // ... which 64-bit mode does not have.
    let mut m = machine(&[0x80], 0, 0);
    assert!(matches!(
        exit(&mut m, &[0x82, 0x03, 0x80], MemoryAccessType::Write).result,
        Err(EmulationError::Undecodable { .. })
    ));
}

#[test]
fn lock_prefix_where_the_architecture_allows_it() {
    // lock add [rbx], ecx; lock inc qword [rbx]; lock not byte [rbx].
    let lock_add = long(|a| a.lock().add(dword_ptr(rbx), ecx));
    assert_eq!(lock_add, [0xF0, 0x01, 0x0B]);
    let mut m = machine(&[1, 0, 0, 0], 2, 0);
    exit(&mut m, &lock_add, MemoryAccessType::Write).ok();
    assert_eq!(m.read_phys(MMIO, 4), [3, 0, 0, 0]);
    assert_eq!(m.memory_calls().len(), 2);
    assert_eq!(m.regs.rip, 0x1003);

    let lock_inc = long(|a| a.lock().inc(qword_ptr(rbx)));
    let mut m = machine(&[0xFF; 8], 0, 0);
    exit(&mut m, &lock_inc, MemoryAccessType::Write).ok();
    assert_eq!(m.read_phys(MMIO, 8), [0; 8]);
    assert_eq!(m.regs.rflags, 0x202 | ZF | PF | AF);

    let mut m = machine(&[0x0F], 0, 0);
    exit(&mut m, &[0xF0, 0xF6, 0x13], MemoryAccessType::Write).ok();
    assert_eq!(m.read_phys(MMIO, 1), [0xF0]);

    // LOCK where the ISA forbids it is #UD: no decode, no access, nothing committed.
    for bytes in [
        &[0xF0, 0x39, 0x0B][..], // lock cmp [rbx], ecx
        &[0xF0, 0x85, 0x0B],     // lock test [rbx], ecx
        &[0xF0, 0x03, 0x0B],     // lock add ecx, [rbx]
    ] {
        let mut m = machine(&[0; 4], 0, 0);
        let outcome = exit(&mut m, bytes, MemoryAccessType::Write);
        assert_eq!(outcome.exception(), Exception::ud(), "{bytes:02x?}");
        assert!(m.memory_calls().is_empty());
    }
}

#[test]
fn sixteen_and_thirty_two_bit_code() {
    // Real mode: add [bx+si], al with DS = 0x1000.
    let mut m = Machine::real();
    m.regs
        .set_segment(Segment::Ds, SegmentRegister::real_mode(0x1000));
    m.set_gpr(RBX, 0x10);
    m.set_gpr(6, 0x5);
    m.set_gpr(RAX, 0x7F);
    m.write_phys(0x10015, &[0x01]);
    m.mmio(&[0x00, 0x00], MemoryAccessType::Write, 0x10015).ok();
    assert_eq!(m.read_phys(0x10015, 1), [0x80]);
    assert_eq!(m.regs.rflags, 0x2 | OF | SF | AF);

    // Real mode, 0x66: sub dword [bx], 1 (83 /5 ib) on a 32-bit operand.
    let bytes = asm(16, |a| a.sub(dword_ptr(bx), 1));
    assert_eq!(bytes, [0x66, 0x83, 0x2F, 0x01]);
    let mut m = Machine::real();
    m.set_gpr(RBX, 0x200);
    m.mmio(&bytes, MemoryAccessType::Write, 0x200).ok();
    assert_eq!(m.read_phys(0x200, 4), [0xFF; 4]);
    assert_eq!(m.regs.rflags, 0x2 | CF | SF | AF | PF);

    // 32-bit protected mode: xor word [eax], 0xFFFF (66 83 /6 ib).
    let bytes = asm(32, |a| a.xor(word_ptr(eax), -1));
    assert_eq!(bytes, [0x66, 0x83, 0x30, 0xFF]);
    let mut m = Machine::protected32();
    m.set_gpr(RAX, MMIO);
    m.write_phys(MMIO, &[0x34, 0x12]);
    m.mmio(&bytes, MemoryAccessType::Write, MMIO).ok();
    assert_eq!(m.read_phys(MMIO, 2), [0xCB, 0xED]);
    assert_eq!(m.regs.rflags, 0x2 | SF);
}

fn two_mmio_pages() -> Machine {
    let mut m = Machine::long();
    m.identity(0, 16);
    for (page, gpa) in [(0x7000, 0xFEE0_0000), (0x8000, 0xFEC0_0000)] {
        m.map(
            page,
            Pte {
                gpa,
                writable: true,
                user: false,
                executable: false,
            },
        );
    }
    m
}

#[test]
fn page_crossing_rmw_resolves_both_pages_once_for_read_and_write() {
    let mut m = two_mmio_pages();
    m.set_gpr(RAX, 0x7FFE);
    m.set_gpr(RBX, 1);
    m.write_phys(0xFEE0_0FFE, &[0xFF, 0xFF]);
    m.write_phys(0xFEC0_0000, &[0xFF, 0xFF, 0xFF, 0x7F, 0, 0]);
    // add qword [rax], rbx across 0x7FFE..0x8006.
    m.mmio(&[0x48, 0x01, 0x18], MemoryAccessType::Write, 0xFEE0_0FFE)
        .ok();
    let rw = TranslateGvaFlags::VALIDATE_READ
        | TranslateGvaFlags::VALIDATE_WRITE
        | TranslateGvaFlags::SET_PAGE_TABLE_BITS;
    assert_eq!(m.translations(), [(0x7000, rw), (0x8000, rw)]);
    assert_eq!(
        m.memory_calls(),
        [
            (0xFEE0_0FFE, false, vec![0xFF, 0xFF]),
            (0xFEC0_0000, false, vec![0xFF, 0xFF, 0xFF, 0x7F, 0, 0]),
            (0xFEE0_0FFE, true, vec![0x00, 0x00]),
            (0xFEC0_0000, true, vec![0x00, 0x00, 0x00, 0x80, 0, 0]),
        ]
    );
    assert_eq!(m.regs.rflags & STATUS, AF | PF);
}

#[test]
fn rmw_on_a_read_only_page_faults_as_a_write_before_any_access() {
    let mut m = Machine::long();
    m.identity(0, 16);
    m.map(
        0x20_0000,
        Pte {
            gpa: MMIO,
            writable: false,
            user: false,
            executable: false,
        },
    );
    m.set_gpr(RAX, 0x20_0010);
    // add [rax], ebx: #PF with P=1, W=1; no read happened.
    let e = m
        .mmio(&[0x01, 0x18], MemoryAccessType::Read, MMIO + 0x10)
        .exception();
    assert_eq!(e, Exception::pf(0x20_0010, 0b11));
    assert!(m.memory_calls().is_empty());
    let t = m.translations();
    assert_eq!(t.len(), 1);
    assert!(
        t[0].1
            .contains(TranslateGvaFlags::VALIDATE_READ | TranslateGvaFlags::VALIDATE_WRITE)
    );
    // The same with the exit's GVA for a read: a read permission is not enough.
    let ctx = MemoryAccessContext::new(&[0x01, 0x18], MemoryAccessType::Read, MMIO + 0x10)
        .with_gva(0x20_0010);
    assert_eq!(
        m.mmio_ctx(2, &ctx).exception(),
        Exception::pf(0x20_0010, 0b11)
    );
    // CMP and `add ebx, [rax]` only read: they proceed.
    m.write_phys(MMIO + 0x10, &[5, 0, 0, 0]);
    m.set_gpr(RBX, 5);
    m.mmio(&[0x39, 0x18], MemoryAccessType::Read, MMIO + 0x10)
        .ok();
    assert_eq!(m.regs.rflags & STATUS, ZF | PF);
    m.mmio(&[0x03, 0x18], MemoryAccessType::Read, MMIO + 0x10)
        .ok();
    assert_eq!(m.gpr(RBX), 10);
    assert_eq!(m.memory_calls(), [(MMIO + 0x10, false, vec![5, 0, 0, 0])]);
}

#[test]
fn second_page_fault_stops_a_crossing_rmw_before_its_read() {
    let mut m = two_mmio_pages();
    m.pages.as_mut().unwrap().remove(&0x8000);
    m.set_gpr(RAX, 0x7FFE);
    let e = m
        .mmio(&[0x48, 0x01, 0x18], MemoryAccessType::Write, 0xFEE0_0FFE)
        .exception();
    assert_eq!(e, Exception::pf(0x8000, 0b10));
    assert!(m.memory_calls().is_empty());
}

#[test]
fn read_exit_gpa_needs_a_write_translation_for_rmw() {
    let bytes = long(|a| a.add(dword_ptr(rbx), ecx));
    let mut m = machine(&[0; 4], 1, 0);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    let t = m.translations();
    assert_eq!(t.len(), 1);
    assert!(
        t[0].1
            .contains(TranslateGvaFlags::VALIDATE_READ | TranslateGvaFlags::VALIDATE_WRITE)
    );
    let mut m = machine(&[0; 4], 1, 0);
    exit(&mut m, &bytes, MemoryAccessType::Write).ok();
    assert!(m.translations().is_empty());
}

#[test]
fn segment_checks_treat_rmw_as_a_write() {
    let mut m = Machine::protected32();
    // A read-only data segment.
    m.regs
        .set_segment(Segment::Ds, seg(0, 0xFFFF_FFFF, 0x10, 0xC091));
    m.set_gpr(RAX, 0x100);
    assert_eq!(
        m.mmio(&[0x01, 0x18], MemoryAccessType::Write, 0x100)
            .exception(),
        Exception::gp(0)
    );
    assert!(m.memory_calls().is_empty());
    // CMP only reads.
    m.mmio(&[0x39, 0x18], MemoryAccessType::Read, 0x100).ok();
    // A readable code segment through CS: readable, never writable.
    m.regs
        .set_segment(Segment::Cs, seg(0, 0xFFFF_FFFF, 0x08, 0xC09B));
    assert_eq!(
        m.mmio(&[0x2E, 0xF7, 0x10], MemoryAccessType::Write, 0x100)
            .exception(),
        Exception::gp(0)
    );
    m.mmio(&[0x2E, 0x85, 0x18], MemoryAccessType::Read, 0x100)
        .ok();
}

#[test]
fn a_failed_write_back_commits_no_register() {
    let bytes = long(|a| a.add(dword_ptr(rbx), ecx));
    let mut m = machine(&[0xFF, 0xFF, 0xFF, 0xFF], 1, 0);
    m.fail = Some(Fail::MemoryWrite);
    let outcome = exit(&mut m, &bytes, MemoryAccessType::Write);
    assert_eq!(
        outcome.result,
        Err(EmulationError::Memory("memory write failed"))
    );
    // The support's Outcome already checked: registers and RFLAGS unchanged, no set call.
    assert_eq!(m.regs.rflags, 0x202);
    assert_eq!(m.regs.rip, 0x1000);
}

#[test]
fn register_only_forms_are_not_the_exiting_instruction() {
    let mut m = machine(&[0], 0, 0);
    let outcome = exit(&mut m, &[0x01, 0xC8], MemoryAccessType::Write); // add eax, ecx
    assert!(matches!(
        outcome.result,
        Err(EmulationError::NotTheExitingInstruction { .. })
    ));
}
