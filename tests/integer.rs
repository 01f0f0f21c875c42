//! The integer families on MMIO through the public API — state, bytes, expected state: bit
//! tests and scans, shifts and rotates, multiply and divide, SETcc and CMOVcc, MOVBE and
//! MOVNTI.
//!
//! (The host CPU checks the arithmetic over many more values in `oracle_integer.rs`.)

mod support;

use hvemu::*;
use iced_x86::code_asm::*;
use support::*;

const MMIO: u64 = 0xFEE0_0000;
const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RBX: usize = 3;
const RSI: usize = 6;

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

/// A 64-bit machine with RBX = MMIO holding `mem` and the status flags `flags`.
fn machine(mem: &[u8], flags: u64) -> Machine {
    let mut m = Machine::long();
    m.regs.rip = 0x1000;
    m.regs.rflags = 0x202 | flags;
    m.set_gpr(RBX, MMIO);
    m.write_phys(MMIO, mem);
    m
}

/// Runs `bytes` as the exit for an access at `gva` (linear = physical here) the exit vouches
/// for.
fn exit_at(
    m: &mut Machine,
    bytes: &[u8],
    access: MemoryAccessType,
    gva: u64,
    vendor: Vendor,
) -> Outcome {
    let ctx = MemoryAccessContext::new(bytes, access, gva).with_gva(gva);
    m.mmio_ctx_config(
        bytes.len() as u8,
        &ctx,
        Config::default().with_vendor(vendor),
    )
}

fn exit(m: &mut Machine, bytes: &[u8], access: MemoryAccessType) -> Outcome {
    exit_at(m, bytes, access, MMIO, Vendor::Intel)
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

// ---- bit tests ----------------------------------------------------------------------------

#[test]
fn bt_with_an_immediate_tests_a_bit_of_the_operand_itself() {
    // bt word [rbx], 19: 19 mod 16 = bit 3 of the word at RBX.
    let bytes = long(|a| a.bt(word_ptr(rbx), 19));
    assert_eq!(bytes, [0x66, 0x0F, 0xBA, 0x23, 0x13]);
    let mut m = machine(&[0x08, 0x00], SF | OF);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!(
        m.memory_calls(),
        [(MMIO, false, vec![0x08, 0x00])],
        "read only"
    );
    // CF receives the bit; ZF, SF, OF, AF, PF (undefined) keep their values.
    assert_eq!(m.regs.rflags, 0x202 | CF | SF | OF);
    assert_eq!(set_names(&m), [RegisterName::RIP, RegisterName::RFLAGS]);
}

#[test]
fn bt_register_offsets_are_signed_and_reach_outside_the_operand() {
    let bytes = long(|a| a.bt(dword_ptr(rbx), esi));
    assert_eq!(bytes, [0x0F, 0xA3, 0x33]);
    // Offset 35: the next dword, bit 3.
    let mut m = machine(&[0, 0, 0, 0, 0x08, 0, 0, 0], 0);
    m.set_gpr(RSI, 35);
    exit_at(
        &mut m,
        &bytes,
        MemoryAccessType::Read,
        MMIO + 4,
        Vendor::Intel,
    )
    .ok();
    assert_eq!(m.memory_calls(), [(MMIO + 4, false, vec![0x08, 0, 0, 0])]);
    assert_eq!(m.regs.rflags & CF, CF);

    // Offset -1 (ESI = 0xFFFFFFFF; the upper half of RSI is ignored): bit 31 of the dword
    // below.
    let mut m = machine(&[], 0);
    m.write_phys(MMIO - 4, &[0, 0, 0, 0x80]);
    m.set_gpr(RSI, 0x1234_5678_FFFF_FFFF);
    exit_at(
        &mut m,
        &bytes,
        MemoryAccessType::Read,
        MMIO - 4,
        Vendor::Intel,
    )
    .ok();
    assert_eq!(m.memory_calls(), [(MMIO - 4, false, vec![0, 0, 0, 0x80])]);
    assert_eq!(m.regs.rflags & CF, CF);

    // 16-bit: the offset is the signed word -32768: 4096 bytes below, bit 0.
    let bytes = long(|a| a.bt(word_ptr(rbx), si));
    let mut m = machine(&[], 0);
    m.write_phys(MMIO - 0x1000, &[0x01, 0x00]);
    m.set_gpr(RSI, 0x8000);
    exit_at(
        &mut m,
        &bytes,
        MemoryAccessType::Read,
        MMIO - 0x1000,
        Vendor::Intel,
    )
    .ok();
    assert_eq!(m.memory_calls(), [(MMIO - 0x1000, false, vec![0x01, 0x00])]);
    assert_eq!(m.regs.rflags & CF, CF);
}

#[test]
fn bt_offsets_far_away_are_translated_where_they_point_even_across_a_page() {
    // bts qword [rbx], rsi with RBX on one page and the offset 2^40 + 64 bits away:
    // 2^37 + 8 bytes further, a word that straddles two pages, each translated for writing.
    let bytes = long(|a| a.bts(qword_ptr(rbx), rsi));
    let mut m = Machine::long();
    m.regs.rip = 0x1000;
    m.identity(0, 16);
    let base = 0x7FF4;
    let target = base + (1u64 << 37) + 8; // 0x20_0000_7FFC
    for (page, gpa) in [
        (target & !0xFFF, 0xFEE0_0000),
        ((target & !0xFFF) + 0x1000, 0xFEC0_0000),
    ] {
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
    m.set_gpr(RBX, base);
    m.set_gpr(RSI, (1u64 << 40) + 64 + 33);
    m.write_phys(0xFEE0_0FFC, &[0, 0, 0, 0]);
    m.write_phys(0xFEC0_0000, &[0, 0, 0, 0]);
    let outcome = m.mmio(&bytes, MemoryAccessType::Write, 0xFEE0_0FFC);
    outcome.ok();
    let rw = TranslateGvaFlags::VALIDATE_READ
        | TranslateGvaFlags::VALIDATE_WRITE
        | TranslateGvaFlags::SET_PAGE_TABLE_BITS;
    assert_eq!(
        m.translations(),
        [(target & !0xFFF, rw), ((target & !0xFFF) + 0x1000, rw)]
    );
    // Bit 33 of the qword: byte 4 bit 1, on the second page.
    assert_eq!(
        m.memory_calls(),
        [
            (0xFEE0_0FFC, false, vec![0; 4]),
            (0xFEC0_0000, false, vec![0; 4]),
            (0xFEE0_0FFC, true, vec![0; 4]),
            (0xFEC0_0000, true, vec![0x02, 0, 0, 0]),
        ]
    );
    assert_eq!(m.regs.rflags & CF, 0);
}

#[test]
fn bt_offset_out_of_the_segment_is_a_fault_at_the_address_it_names() {
    // 32-bit code, DS limit 0xFFFF: bt [eax], ecx with EAX = 0xFFF0 and ECX = 1024 bits
    // (128 bytes): the dword at 0x10070 is beyond the limit: #GP(0), nothing read.
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Ds, seg(0, 0xFFFF, 0x10, 0x4093));
    m.set_gpr(RAX, 0xFFF0);
    m.set_gpr(RCX, 1024);
    let bytes = asm(32, |a| a.bt(dword_ptr(eax), ecx));
    assert_eq!(
        m.mmio(&bytes, MemoryAccessType::Read, 0x10070).exception(),
        Exception::gp(0)
    );
    assert!(m.memory_calls().is_empty());
    // Offset -1024 bits reaches 0xFF70, inside.
    m.set_gpr(RCX, (-1024i64) as u64);
    m.mmio(&bytes, MemoryAccessType::Read, 0xFF70).ok();
    assert_eq!(m.memory_calls().len(), 1);
    assert_eq!(m.memory_calls()[0].0, 0xFF70);
}

#[test]
fn bt_offsets_wrap_at_the_address_size() {
    // Real mode: bt word [bx], ax with BX = 0xFFF0 and AX = 0x100 bits (32 bytes): the
    // effective address wraps at 64 KiB to 0x0010 (DS base 0x1000 × 16).
    let mut m = Machine::real();
    m.regs
        .set_segment(Segment::Ds, SegmentRegister::real_mode(0x1000));
    m.set_gpr(RBX, 0xFFF0);
    m.set_gpr(RAX, 0x0100);
    m.write_phys(0x10010, &[0x01, 0x00]);
    let bytes = asm(16, |a| a.bt(word_ptr(bx), ax));
    m.mmio(&bytes, MemoryAccessType::Read, 0x10010).ok();
    assert_eq!(m.memory_calls(), [(0x10010, false, vec![0x01, 0x00])]);
    assert_eq!(m.regs.rflags & CF, CF);

    // 64-bit code with a 32-bit address (0x67): bt dword [ebx], esi wraps at 4 GiB.
    let mut m = machine(&[], 0);
    m.set_gpr(RBX, 0xFFFF_FFF0);
    m.set_gpr(RSI, 0x100);
    m.write_phys(0x10, &[0x01, 0, 0, 0]);
    let bytes = long(|a| a.bt(dword_ptr(ebx), esi));
    assert_eq!(bytes[0], 0x67);
    m.mmio(&bytes, MemoryAccessType::Read, 0x10).ok();
    assert_eq!(m.memory_calls(), [(0x10, false, vec![0x01, 0, 0, 0])]);
}

#[test]
fn bts_btr_btc_write_back_and_take_lock() {
    // (bytes, memory before, memory after, CF after)
    type Case = (Vec<u8>, [u8; 4], [u8; 4], u64);
    let cases: [Case; 4] = [
        (
            long(|a| a.bts(dword_ptr(rbx), 9)),
            [0, 0, 0, 0],
            [0, 0x02, 0, 0],
            0,
        ),
        (
            long(|a| a.lock().btr(dword_ptr(rbx), esi)),
            [0xFF; 4],
            [0xFF, 0xFD, 0xFF, 0xFF],
            CF,
        ),
        (
            long(|a| a.lock().btc(dword_ptr(rbx), 31)),
            [0, 0, 0, 0x80],
            [0, 0, 0, 0],
            CF,
        ),
        // BTS of a bit already set still writes (the same value).
        (
            long(|a| a.lock().bts(dword_ptr(rbx), esi)),
            [0, 0x02, 0, 0],
            [0, 0x02, 0, 0],
            CF,
        ),
    ];
    for (bytes, before, after, cf) in cases {
        let mut m = machine(&before, CF ^ cf);
        m.set_gpr(RSI, 9);
        exit(&mut m, &bytes, MemoryAccessType::Write).ok();
        assert_eq!(
            m.memory_calls(),
            [(MMIO, false, before.to_vec()), (MMIO, true, after.to_vec())],
            "{bytes:02x?}"
        );
        assert_eq!(m.regs.rflags, 0x202 | cf, "{bytes:02x?}");
    }
    // LOCK BT does not exist: #UD, nothing touched.
    let mut m = machine(&[0; 4], 0);
    let outcome = exit(&mut m, &[0xF0, 0x0F, 0xA3, 0x33], MemoryAccessType::Read);
    // (#UD, or undecodable bytes for an emulator that leaves #UD to the monitor.)
    assert!(
        matches!(
            outcome.result,
            Err(EmulationError::Undecodable { .. })
                | Err(EmulationError::Exception(Exception {
                    vector: Vector::InvalidOpcode,
                    ..
                }))
        ),
        "{:?}",
        outcome.result
    );
    assert!(m.memory_calls().is_empty());
}

// ---- scans and counts ---------------------------------------------------------------------

#[test]
fn bsf_and_bsr_of_zero_leave_the_destination_and_set_zf() {
    // AMD keeps the undefined flags; Intel (measured) sets PF and clears CF, OF, SF and AF.
    for (vendor, after) in [(Vendor::Intel, ZF | PF), (Vendor::Amd, ZF | CF | SF | OF)] {
        for bytes in [
            long(|a| a.bsf(edx, dword_ptr(rbx))),
            long(|a| a.bsr(rdx, qword_ptr(rbx))),
        ] {
            let mut m = machine(&[0; 8], CF | SF | OF);
            m.set_gpr(RDX, 0xDEAD_BEEF_CAFE_F00D);
            exit_at(&mut m, &bytes, MemoryAccessType::Read, MMIO, vendor).ok();
            assert_eq!(
                m.gpr(RDX),
                0xDEAD_BEEF_CAFE_F00D,
                "all 64 bits kept ({vendor:?})"
            );
            assert_eq!(m.regs.rflags, 0x202 | after, "{vendor:?}");
            assert_eq!(set_names(&m), [RegisterName::RIP, RegisterName::RFLAGS]);
        }
    }
}

#[test]
fn scans_and_counts_from_memory() {
    // (what, bytes, memory, RDX after, flags after with AMD, with Intel), RDX = all ones before
    // and the status flags all set before.
    type Example = (&'static str, Vec<u8>, [u8; 8], u64, u64, u64);
    let all = u64::MAX;
    let examples: [Example; 7] = [
        (
            "bsf edx, [rbx]: index 8, upper half cleared",
            long(|a| a.bsf(edx, dword_ptr(rbx))),
            [0, 1, 0, 0, 0, 0, 0, 0],
            8,
            STATUS & !ZF,
            0,
        ),
        (
            "bsr dx, [rbx]: index 15, a 16-bit write merges",
            long(|a| a.bsr(dx, word_ptr(rbx))),
            [0x00, 0x80, 0, 0, 0, 0, 0, 0],
            all & !0xFFF0,
            STATUS & !ZF,
            0,
        ),
        (
            "popcnt rdx, [rbx]",
            long(|a| a.popcnt(rdx, qword_ptr(rbx))),
            [0xFF, 0x0F, 0, 0, 0, 0, 0, 0x80],
            13,
            0,
            0,
        ),
        (
            "popcnt of zero: ZF",
            long(|a| a.popcnt(edx, dword_ptr(rbx))),
            [0; 8],
            0,
            ZF,
            ZF,
        ),
        (
            "lzcnt edx, [rbx] of zero: the width, CF",
            long(|a| a.lzcnt(edx, dword_ptr(rbx))),
            [0; 8],
            32,
            CF | OF,
            CF,
        ),
        (
            "lzcnt rdx, [rbx] with the top bit set: 0, ZF",
            long(|a| a.lzcnt(rdx, qword_ptr(rbx))),
            [0, 0, 0, 0, 0, 0, 0, 0x80],
            0,
            ZF | OF,
            ZF,
        ),
        (
            "tzcnt dx, [rbx]: 4",
            long(|a| a.tzcnt(dx, word_ptr(rbx))),
            [0x10, 0, 0, 0, 0, 0, 0, 0],
            all & !0xFFFF | 4,
            OF,
            0,
        ),
    ];
    for (what, bytes, mem, rdx_after, amd, intel) in examples {
        for (vendor, flags) in [(Vendor::Amd, amd), (Vendor::Intel, intel)] {
            let mut m = machine(&mem, STATUS);
            m.set_gpr(RDX, all);
            exit_at(&mut m, &bytes, MemoryAccessType::Read, MMIO, vendor).ok();
            assert_eq!(m.gpr(RDX), rdx_after, "{what}");
            if what.starts_with("bs") && vendor == Vendor::Intel {
                // Intel: CF, OF, SF, AF cleared, PF from the index.
                let index = rdx_after & 0xFF;
                let pf = if index.count_ones() % 2 == 0 { PF } else { 0 };
                assert_eq!(m.regs.rflags, 0x202 | pf, "{what} ({vendor:?})");
            } else {
                assert_eq!(m.regs.rflags, 0x202 | flags, "{what} ({vendor:?})");
            }
        }
    }
}

// ---- shifts and rotates -----------------------------------------------------------------

#[test]
fn each_shift_and_rotate_on_a_memory_destination() {
    // (what, bytes, memory before, CL, flags before, memory after, flags after), Intel setting.
    type Example = (
        &'static str,
        Vec<u8>,
        &'static [u8],
        u8,
        u64,
        &'static [u8],
        u64,
    );
    let examples: Vec<Example> = vec![
        (
            "shl byte [rbx], 1: CF out of bit 7, OF = MSB ^ CF",
            long(|a| a.shl(byte_ptr(rbx), 1)),
            &[0x81],
            0,
            0,
            &[0x02],
            CF | OF,
        ),
        (
            "sal word [rbx], cl (the /6 alias decodes as SAL): CL = 4; Intel's OF is the first \
             step's, bits 15 and 14 of 0x1001 XORed",
            vec![0x66, 0xD3, 0x33],
            &[0x01, 0x10],
            4,
            0,
            &[0x10, 0x00],
            CF,
        ),
        (
            "shr dword [rbx], 31: Intel's OF is the operand's MSB, as at a count of 1",
            long(|a| a.shr(dword_ptr(rbx), 31)),
            &[0, 0, 0, 0xC0],
            0,
            0,
            &[1, 0, 0, 0],
            CF | OF,
        ),
        (
            "sar qword [rbx], cl with CL = 65: masked to 1",
            long(|a| a.sar(qword_ptr(rbx), cl)),
            &[0x01, 0, 0, 0, 0, 0, 0, 0x80],
            65,
            OF,
            &[0x00, 0, 0, 0, 0, 0, 0, 0xC0],
            CF | SF | PF,
        ),
        (
            "rol word [rbx], 4: only CF and OF change (Intel's OF at every count: bits 15 and 14 \
             of the operand XORed)",
            long(|a| a.rol(word_ptr(rbx), 4)),
            &[0x34, 0x12],
            0,
            ZF | SF,
            &[0x41, 0x23],
            CF | ZF | SF,
        ),
        (
            "ror byte [rbx], 1",
            long(|a| a.ror(byte_ptr(rbx), 1)),
            &[0x01],
            0,
            0,
            &[0x80],
            CF | OF,
        ),
        (
            "rcl byte [rbx], cl with CL = 9: a full turn through CF, nothing changes",
            long(|a| a.rcl(byte_ptr(rbx), cl)),
            &[0x81],
            9,
            CF,
            &[0x81],
            CF,
        ),
        (
            "rcr dword [rbx], 1 with CF = 1: CF enters at the top",
            long(|a| a.rcr(dword_ptr(rbx), 1)),
            &[0x01, 0, 0, 0],
            0,
            CF,
            &[0, 0, 0, 0x80],
            CF | OF,
        ),
        (
            "shld dword [rbx], esi, 8: the top byte of ESI comes in",
            long(|a| a.shld(dword_ptr(rbx), esi, 8)),
            &[0x78, 0x56, 0x34, 0x12],
            0,
            0,
            &[0xFF, 0x78, 0x56, 0x34],
            PF,
        ),
        (
            "shrd qword [rbx], rsi, cl with CL = 4",
            long(|a| a.shrd(qword_ptr(rbx), rsi, cl)),
            &[0x10, 0, 0, 0, 0, 0, 0, 0],
            4,
            0,
            &[0x01, 0, 0, 0, 0, 0, 0, 0xB0],
            SF | OF,
        ),
    ];
    for (what, bytes, before, count, flags, after, flags_after) in examples {
        let mut m = machine(before, flags);
        m.set_gpr(RCX, 0xFFFF_FF00 | u64::from(count));
        m.set_gpr(RSI, 0xFFFF_FFFF_FFFF_FFAB);
        exit(&mut m, &bytes, MemoryAccessType::Write).ok();
        assert_eq!(m.read_phys(MMIO, after.len()), after, "{what}");
        assert_eq!(m.regs.rflags, 0x202 | flags_after, "{what}");
        let calls = m.memory_calls();
        assert_eq!(calls.len(), 2, "{what}: one read, one write");
        assert_eq!((calls[0].1, calls[1].1), (false, true), "{what}");
        assert_eq!(m.gpr(RCX), 0xFFFF_FF00 | u64::from(count), "{what}");
    }
}

#[test]
fn a_zero_count_reads_and_writes_back_the_same_value_and_changes_no_flag() {
    for bytes in [
        long(|a| a.shl(dword_ptr(rbx), cl)),
        long(|a| a.rcr(dword_ptr(rbx), 0)),
        long(|a| a.shrd(dword_ptr(rbx), esi, 32)), // masked to 0
    ] {
        let mut m = machine(&[0x78, 0x56, 0x34, 0x12], CF | ZF | OF);
        m.set_gpr(RCX, 0x20); // masked to 0
        exit(&mut m, &bytes, MemoryAccessType::Write).ok();
        let value = vec![0x78, 0x56, 0x34, 0x12];
        assert_eq!(
            m.memory_calls(),
            [(MMIO, false, value.clone()), (MMIO, true, value)]
        );
        assert_eq!(m.regs.rflags, 0x202 | CF | ZF | OF);
        assert_eq!(
            set_names(&m),
            [RegisterName::RIP],
            "RFLAGS unchanged, not written"
        );
    }
}

#[test]
fn undefined_shift_flags_and_results_follow_the_configured_vendor() {
    // shl dword [rbx], 4: AF undefined, AMD sets it, the Intel setting clears it.
    let bytes = long(|a| a.shl(dword_ptr(rbx), 4));
    for (vendor, af) in [(Vendor::Intel, 0), (Vendor::Amd, AF)] {
        let mut m = machine(&[1, 0, 0, 0], 0);
        exit_at(&mut m, &bytes, MemoryAccessType::Write, MMIO, vendor).ok();
        assert_eq!(m.read_phys(MMIO, 4), [0x10, 0, 0, 0]);
        assert_eq!(m.regs.rflags, 0x202 | af, "{vendor:?}");
    }
    // shld word [rbx], si, 24: a count above 16 leaves the result undefined. AMD rotates the
    // source by 8; the Intel setting shifts destination:source:destination.
    let bytes = long(|a| a.shld(word_ptr(rbx), si, 24));
    for (vendor, after) in [(Vendor::Amd, [0xAB, 0xCD]), (Vendor::Intel, [0x12, 0xCD])] {
        let mut m = machine(&[0x34, 0x12], 0);
        m.set_gpr(RSI, 0xABCD);
        exit_at(&mut m, &bytes, MemoryAccessType::Write, MMIO, vendor).ok();
        assert_eq!(m.read_phys(MMIO, 2), after, "{vendor:?}");
    }
    // rcl byte [rbx], 9 with CF = 0: AMD still sets OF (MSB ^ CF), Intel changes nothing.
    let bytes = long(|a| a.rcl(byte_ptr(rbx), 9));
    for (vendor, of) in [(Vendor::Intel, 0), (Vendor::Amd, OF)] {
        let mut m = machine(&[0x81], 0);
        exit_at(&mut m, &bytes, MemoryAccessType::Write, MMIO, vendor).ok();
        assert_eq!(m.read_phys(MMIO, 1), [0x81]);
        assert_eq!(m.regs.rflags, 0x202 | of, "{vendor:?}");
    }
}

fn two_mmio_pages() -> Machine {
    let mut m = Machine::long();
    m.regs.rip = 0x1000;
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
fn a_page_crossing_shift_resolves_both_pages_for_read_and_write_before_the_read() {
    let mut m = two_mmio_pages();
    m.set_gpr(RAX, 0x7FFE);
    m.write_phys(0xFEE0_0FFE, &[0x01, 0x80]);
    m.write_phys(0xFEC0_0000, &[0x00, 0x80]);
    // ror dword [rax], 1 across 0x7FFE..0x8002: 0x8000_8001 -> 0xC000_4000, CF = 1.
    let bytes = long(|a| a.ror(dword_ptr(rax), 1));
    m.mmio(&bytes, MemoryAccessType::Write, 0xFEE0_0FFE).ok();
    let rw = TranslateGvaFlags::VALIDATE_READ
        | TranslateGvaFlags::VALIDATE_WRITE
        | TranslateGvaFlags::SET_PAGE_TABLE_BITS;
    assert_eq!(m.translations(), [(0x7000, rw), (0x8000, rw)]);
    assert_eq!(
        m.memory_calls(),
        [
            (0xFEE0_0FFE, false, vec![0x01, 0x80]),
            (0xFEC0_0000, false, vec![0x00, 0x80]),
            (0xFEE0_0FFE, true, vec![0x00, 0x40]),
            (0xFEC0_0000, true, vec![0x00, 0xC0]),
        ]
    );
    assert_eq!(m.regs.rflags & STATUS, CF);

    // With the second page read-only, the same shift faults as a write before any access.
    m.map(
        0x8000,
        Pte {
            gpa: 0xFEC0_0000,
            writable: false,
            user: false,
            executable: false,
        },
    );
    let e = m
        .mmio(&bytes, MemoryAccessType::Write, 0xFEE0_0FFE)
        .exception();
    assert_eq!(e, Exception::pf(0x8000, 0b11));
    assert!(m.memory_calls().is_empty());
}

// ---- multiply and divide ----------------------------------------------------------------

#[test]
fn multiplies_write_the_accumulator_pair() {
    // mul byte [rbx]: AX = AL × 0x02 = 0x0100 (RDX untouched): CF = OF = 1.
    let bytes = long(|a| a.mul(byte_ptr(rbx)));
    let mut m = machine(&[0x02], 0);
    m.set_gpr(RAX, 0x1111_1111_1111_2280);
    m.set_gpr(RDX, 0x5555);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!((m.gpr(RAX), m.gpr(RDX)), (0x1111_1111_1111_0100, 0x5555));
    assert_eq!(m.regs.rflags & (CF | OF), CF | OF);

    // imul dword [rbx]: EDX:EAX = -2 × 3 = -6, both zero-extended; fits: CF = OF = 0.
    let bytes = long(|a| a.imul(dword_ptr(rbx)));
    let mut m = machine(&[3, 0, 0, 0], CF | OF);
    m.set_gpr(RAX, 0xAAAA_AAAA_FFFF_FFFE);
    m.set_gpr(RDX, 0xBBBB_BBBB_0000_0000);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!((m.gpr(RAX), m.gpr(RDX)), (0xFFFF_FFFA, 0xFFFF_FFFF));
    assert_eq!(m.regs.rflags & (CF | OF), 0);

    // imul dx, [rbx]: 0x4000 × 2 overflows 16 bits; the rest of RDX kept.
    let bytes = long(|a| a.imul_2(dx, word_ptr(rbx)));
    let mut m = machine(&[2, 0], 0);
    m.set_gpr(RDX, 0x1234_4000);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!(m.gpr(RDX), 0x1234_8000);
    assert_eq!(m.regs.rflags & (CF | OF), CF | OF);

    // imul rdx, [rbx], -3 (imm8 sign-extended to 64 bits).
    let bytes = long(|a| a.imul_3(rdx, qword_ptr(rbx), -3));
    let mut m = machine(&7u64.to_le_bytes(), 0);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!(m.gpr(RDX), (-21i64) as u64);
    assert_eq!(m.regs.rflags & (CF | OF), 0);
}

#[test]
fn undefined_multiply_flags_follow_the_configured_vendor() {
    // mul dword [rbx] with a zero product: AMD keeps SF, ZF, AF, PF; Intel (measured) sets SF
    // and PF from the low half and clears ZF and AF, even for a zero product.
    let bytes = long(|a| a.mul(dword_ptr(rbx)));
    for (vendor, flags) in [(Vendor::Amd, SF | AF), (Vendor::Intel, PF)] {
        let mut m = machine(&[0, 0, 0, 0], SF | AF);
        m.set_gpr(RAX, 5);
        exit_at(&mut m, &bytes, MemoryAccessType::Read, MMIO, vendor).ok();
        assert_eq!(m.regs.rflags, 0x202 | flags, "{vendor:?}");
    }
    // div byte [rbx]: all flags undefined; AMD sets AF and clears SF, ZF, PF; Intel (measured)
    // changes none.
    let bytes = long(|a| a.div(byte_ptr(rbx)));
    for (vendor, flags) in [(Vendor::Amd, CF | OF | AF), (Vendor::Intel, STATUS)] {
        let mut m = machine(&[7], STATUS);
        m.set_gpr(RAX, 100);
        exit_at(&mut m, &bytes, MemoryAccessType::Read, MMIO, vendor).ok();
        assert_eq!(m.gpr(RAX), 2 << 8 | 14, "AH = remainder, AL = quotient");
        assert_eq!(m.regs.rflags, 0x202 | flags, "{vendor:?}");
    }
}

#[test]
fn divides_leave_quotient_and_remainder() {
    // div dword [rbx]: EDX:EAX = 0x1_0000_0005 / 0x10 = 0x1000_0000 rem 5, zero-extended.
    let bytes = long(|a| a.div(dword_ptr(rbx)));
    let mut m = machine(&[0x10, 0, 0, 0], 0);
    m.set_gpr(RAX, 0xFFFF_FFFF_0000_0005);
    m.set_gpr(RDX, 0xFFFF_FFFF_0000_0001);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!((m.gpr(RAX), m.gpr(RDX)), (0x1000_0000, 5));

    // idiv word [rbx]: DX:AX = -7 / 2 = -3 rem -1 (truncating); the upper bits kept.
    let bytes = long(|a| a.idiv(word_ptr(rbx)));
    let mut m = machine(&[2, 0], 0);
    m.set_gpr(RAX, 0x7777_FFF9);
    m.set_gpr(RDX, 0x8888_FFFF);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!((m.gpr(RAX), m.gpr(RDX)), (0x7777_FFFD, 0x8888_FFFF));
}

#[test]
fn divide_errors_commit_nothing() {
    let de = |m: &mut Machine, bytes: &[u8]| {
        let outcome = exit(m, bytes, MemoryAccessType::Read);
        // The support checks that registers did not change and no set_registers was made.
        assert_eq!(
            outcome.exception(),
            Exception {
                vector: Vector::DivideError,
                error_code: None,
                cr2: None
            }
        );
        assert_eq!(
            outcome.result.as_ref().unwrap_err().status(),
            EmulatorStatus::INTERNAL_EMULATION_FAILURE
        );
        assert_eq!(
            m.memory_calls().len(),
            1,
            "the divisor was read, nothing written"
        );
    };
    // Divide by zero.
    let mut m = machine(&[0, 0, 0, 0], 0);
    m.set_gpr(RAX, 1);
    de(&mut m, &long(|a| a.div(dword_ptr(rbx))));
    // Quotient overflow: AX = 0x1000 / 0x10 = 0x100 does not fit AL.
    let mut m = machine(&[0x10], 0);
    m.set_gpr(RAX, 0x1000);
    de(&mut m, &long(|a| a.div(byte_ptr(rbx))));
    // The most negative dividend by -1: RDX:RAX = -2^127 / -1.
    let mut m = machine(&u64::MAX.to_le_bytes(), 0);
    m.set_gpr(RAX, 0);
    m.set_gpr(RDX, 1 << 63);
    de(&mut m, &long(|a| a.idiv(qword_ptr(rbx))));
    // ... and at 32 bits: EDX:EAX = -2^31 (sign-extended) / -1 = 2^31 does not fit.
    let mut m = machine(&[0xFF; 4], 0);
    m.set_gpr(RAX, 0x8000_0000);
    m.set_gpr(RDX, 0xFFFF_FFFF);
    de(&mut m, &long(|a| a.idiv(dword_ptr(rbx))));
}

// ---- SETcc and CMOVcc ---------------------------------------------------------------------

#[test]
fn setcc_writes_one_or_zero() {
    // sete byte [rbx] with ZF set, then clear; setl with SF != OF; setbe with CF.
    for (bytes, flags, value) in [
        (long(|a| a.sete(byte_ptr(rbx))), ZF, 1u8),
        (long(|a| a.sete(byte_ptr(rbx))), 0, 0),
        (long(|a| a.setl(byte_ptr(rbx))), SF, 1),
        (long(|a| a.setl(byte_ptr(rbx))), SF | OF, 0),
        (long(|a| a.setbe(byte_ptr(rbx))), CF, 1),
        (long(|a| a.setg(byte_ptr(rbx))), OF | SF, 1),
        (long(|a| a.setnp(byte_ptr(rbx))), PF, 0),
    ] {
        let mut m = machine(&[0xEE], flags);
        exit(&mut m, &bytes, MemoryAccessType::Write).ok();
        assert_eq!(
            m.memory_calls(),
            [(MMIO, true, vec![value])],
            "{bytes:02x?} {flags:#x}"
        );
        assert_eq!(m.regs.rflags, 0x202 | flags);
        assert_eq!(set_names(&m), [RegisterName::RIP]);
    }
}

#[test]
fn cmovcc_reads_memory_whatever_the_condition() {
    // cmovne edx, [rbx]: true moves and zero-extends.
    let bytes = long(|a| a.cmovne(edx, dword_ptr(rbx)));
    let mut m = machine(&[0x44, 0x33, 0x22, 0x11], 0);
    m.set_gpr(RDX, 0xFFFF_FFFF_FFFF_FFFF);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!(m.gpr(RDX), 0x1122_3344);
    // False: memory is still read, and a 32-bit destination in 64-bit mode still loses its
    // upper half.
    let mut m = machine(&[0x44, 0x33, 0x22, 0x11], ZF);
    m.set_gpr(RDX, 0xFFFF_FFFF_5555_5555);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!(
        m.memory_calls(),
        [(MMIO, false, vec![0x44, 0x33, 0x22, 0x11])]
    );
    assert_eq!(m.gpr(RDX), 0x5555_5555);
    // 64- and 16-bit destinations are left alone when false.
    for bytes in [
        long(|a| a.cmova(rdx, qword_ptr(rbx))),
        long(|a| a.cmova(dx, word_ptr(rbx))),
    ] {
        let mut m = machine(&[0x11; 8], CF);
        m.set_gpr(RDX, 0xFFFF_FFFF_5555_5555);
        exit(&mut m, &bytes, MemoryAccessType::Read).ok();
        assert_eq!(m.memory_calls().len(), 1);
        assert_eq!(m.gpr(RDX), 0xFFFF_FFFF_5555_5555);
    }
    // True at 16 bits merges.
    let bytes = long(|a| a.cmovge(dx, word_ptr(rbx)));
    let mut m = machine(&[0x34, 0x12], SF | OF);
    m.set_gpr(RDX, 0xFFFF_FFFF_5555_5555);
    exit(&mut m, &bytes, MemoryAccessType::Read).ok();
    assert_eq!(m.gpr(RDX), 0xFFFF_FFFF_5555_1234);
    // A false CMOV still faults on its source.
    let mut m = Machine::long();
    m.identity(0, 16);
    m.set_gpr(RBX, 0x40_0000);
    let bytes = long(|a| a.cmove(edx, dword_ptr(rbx)));
    assert_eq!(
        m.mmio(&bytes, MemoryAccessType::Read, MMIO).exception(),
        Exception::pf(0x40_0000, 0)
    );
}

#[test]
fn cmovcc_false_outside_ia32e_keeps_the_register() {
    // 32-bit protected mode: cmovz eax, [ebx] with ZF clear leaves RAX whole.
    let mut m = Machine::protected32();
    m.set_gpr(RBX, MMIO);
    m.set_gpr(RAX, 0xABCD_0000_1234_5678);
    m.write_phys(MMIO, &[1, 2, 3, 4]);
    let bytes = asm(32, |a| a.cmovz(eax, dword_ptr(ebx)));
    m.mmio(&bytes, MemoryAccessType::Read, MMIO).ok();
    assert_eq!(m.gpr(RAX), 0xABCD_0000_1234_5678);
}

// ---- MOVBE and MOVNTI ---------------------------------------------------------------------

#[test]
fn movbe_swaps_bytes_both_ways() {
    // Loads: 16 bits merge, 32 bits zero-extend, 64 bits replace.
    for (bytes, after) in [
        (
            long(|a| a.movbe(dx, word_ptr(rbx))),
            0xFFFF_FFFF_FFFF_0102u64,
        ),
        (long(|a| a.movbe(edx, dword_ptr(rbx))), 0x0102_0304),
        (
            long(|a| a.movbe(rdx, qword_ptr(rbx))),
            0x0102_0304_0506_0708,
        ),
    ] {
        let mut m = machine(&[1, 2, 3, 4, 5, 6, 7, 8], 0);
        m.set_gpr(RDX, u64::MAX);
        exit(&mut m, &bytes, MemoryAccessType::Read).ok();
        assert_eq!(m.gpr(RDX), after, "{bytes:02x?}");
    }
    // Stores: only written, reversed.
    for (bytes, after) in [
        (long(|a| a.movbe(word_ptr(rbx), dx)), vec![0x07, 0x08]),
        (
            long(|a| a.movbe(dword_ptr(rbx), edx)),
            vec![0x05, 0x06, 0x07, 0x08],
        ),
        (
            long(|a| a.movbe(qword_ptr(rbx), rdx)),
            vec![1, 2, 3, 4, 5, 6, 7, 8],
        ),
    ] {
        let mut m = machine(&[0xEE; 8], 0);
        m.set_gpr(RDX, 0x0102_0304_0506_0708);
        exit(&mut m, &bytes, MemoryAccessType::Write).ok();
        assert_eq!(m.memory_calls(), [(MMIO, true, after)], "{bytes:02x?}");
        assert_eq!(set_names(&m), [RegisterName::RIP]);
    }
}

#[test]
fn movnti_is_a_plain_store() {
    let bytes = long(|a| a.movnti(qword_ptr(rbx), rsi));
    let mut m = machine(&[0; 8], 0);
    m.set_gpr(RSI, 0x1122_3344_5566_7788);
    exit(&mut m, &bytes, MemoryAccessType::Write).ok();
    assert_eq!(
        m.memory_calls(),
        [(MMIO, true, 0x1122_3344_5566_7788u64.to_le_bytes().to_vec())]
    );
}

#[test]
fn register_only_forms_are_not_the_exiting_instruction() {
    for bytes in [
        long(|a| a.bt(eax, ecx)),
        long(|a| a.shl(eax, cl)),
        long(|a| a.mul(ecx)),
        long(|a| a.sete(al)),
        long(|a| a.cmove(eax, ecx)),
        long(|a| a.popcnt(eax, ecx)),
    ] {
        let mut m = machine(&[0], 0);
        let outcome = exit(&mut m, &bytes, MemoryAccessType::Write);
        assert!(
            matches!(
                outcome.result,
                Err(EmulationError::NotTheExitingInstruction { .. })
            ),
            "{bytes:02x?}: {:?}",
            outcome.result
        );
    }
}
