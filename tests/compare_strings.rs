//! CMPS and SCAS through the public API: flags as CMP, REPE/REPNE termination on ZF, both
//! directions, every address size and element size, the source segment override, the REP
//! bound, and both operands resolved before either is read.
//!
//! (The host CPU checks the flags and the termination over many more values in
//! `oracle_xchg.rs`.)

mod support;

use hvemu::*;
use support::*;

const RAX: usize = 0;
const RCX: usize = 1;
const RSI: usize = 6;
const RDI: usize = 7;
const MMIO: u64 = 0xFEE0_0000;

const CF: u64 = 1;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
const DF: u64 = 1 << 10;
const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

#[test]
fn repe_cmpsb_stops_at_the_first_difference() {
    // repe cmpsb: [rsi] in MMIO, [rdi] in RAM; they differ at index 3 ('L' vs 'P').
    let mut m = Machine::long();
    m.regs.rip = 0x1000;
    m.regs.rflags = 0x202 | OF | AF;
    m.write_phys(MMIO, b"HELLO, WORLD");
    m.write_phys(0x3000, b"HELP! WORLD!");
    m.set_gpr(RSI, MMIO);
    m.set_gpr(RDI, 0x3000);
    m.set_gpr(RCX, 12);
    m.mmio(&[0xF3, 0xA6], MemoryAccessType::Read, MMIO).ok();
    // Four iterations: three equal, the fourth different, which ends the repetition.
    assert_eq!(m.gpr(RCX), 8);
    assert_eq!(m.gpr(RSI), MMIO + 4);
    assert_eq!(m.gpr(RDI), 0x3004);
    // CMP 'L', 'P': 0x4C - 0x50 = 0xFC.
    assert_eq!(m.regs.rflags, 0x202 | CF | SF | PF);
    assert_eq!(m.regs.rip, 0x1002, "complete: RIP moves on");
    let reads: Vec<(u64, bool)> = m.memory_calls().iter().map(|c| (c.0, c.1)).collect();
    assert_eq!(
        reads,
        [
            (MMIO, false),
            (0x3000, false),
            (MMIO + 1, false),
            (0x3001, false),
            (MMIO + 2, false),
            (0x3002, false),
            (MMIO + 3, false),
            (0x3003, false),
        ],
        "rSI's operand first, nothing written"
    );
    assert_eq!(m.gets(), 1);
}

#[test]
fn repe_cmps_of_equal_strings_runs_to_the_count() {
    let mut m = Machine::long();
    m.write_phys(MMIO, &[1, 2, 3, 4, 5, 6, 7, 8]);
    m.write_phys(0x3000, &[1, 2, 3, 4, 5, 6, 7, 8]);
    m.set_gpr(RSI, MMIO);
    m.set_gpr(RDI, 0x3000);
    m.set_gpr(RCX, 4);
    // repe cmpsw.
    m.mmio(&[0xF3, 0x66, 0xA7], MemoryAccessType::Read, MMIO)
        .ok();
    assert_eq!((m.gpr(RCX), m.gpr(RSI), m.gpr(RDI)), (0, MMIO + 8, 0x3008));
    assert_eq!(m.regs.rflags & STATUS, ZF | PF);
}

#[test]
fn repne_scasb_finds_a_byte() {
    // repne scasb: look for '\n' in a device FIFO window.
    let mut m = Machine::long();
    m.write_phys(MMIO, b"line one\nline two");
    m.set_gpr(RAX, 0xFFFF_FFFF_FFFF_FF00 | u64::from(b'\n'));
    m.set_gpr(RDI, MMIO);
    m.set_gpr(RCX, 64);
    m.regs.rflags |= CF | SF;
    m.mmio(&[0xF2, 0xAE], MemoryAccessType::Read, MMIO).ok();
    // Found at index 8: nine iterations, RDI one past it.
    assert_eq!(m.gpr(RCX), 64 - 9);
    assert_eq!(m.gpr(RDI), MMIO + 9);
    assert_eq!(m.regs.rflags & STATUS, ZF | PF);
    assert_eq!(m.gpr(RAX), 0xFFFF_FFFF_FFFF_FF00 | u64::from(b'\n'));
    assert_eq!(m.memory_calls().len(), 9);

    // Not found: the count runs out; the flags are the last comparison's.
    let mut m = Machine::long();
    m.write_phys(MMIO, b"abc");
    m.set_gpr(RAX, u64::from(b'z'));
    m.set_gpr(RDI, MMIO);
    m.set_gpr(RCX, 3);
    m.mmio(&[0xF2, 0xAE], MemoryAccessType::Read, MMIO).ok();
    assert_eq!((m.gpr(RCX), m.gpr(RDI)), (0, MMIO + 3));
    // 'z' - 'c' = 0x17: even parity.
    assert_eq!(m.regs.rflags & STATUS, PF);
}

#[test]
fn repe_scas_and_repne_cmps_stop_on_the_other_condition() {
    // repe scasd: skip matching dwords, stop at the first different one.
    let mut m = Machine::long();
    let mut data = Vec::new();
    for v in [7u32, 7, 7, 8, 7] {
        data.extend_from_slice(&v.to_le_bytes());
    }
    m.write_phys(MMIO, &data);
    m.set_gpr(RAX, 7);
    m.set_gpr(RDI, MMIO);
    m.set_gpr(RCX, 5);
    m.mmio(&[0xF3, 0xAF], MemoryAccessType::Read, MMIO).ok();
    assert_eq!((m.gpr(RCX), m.gpr(RDI)), (1, MMIO + 16));
    // 7 - 8 = 0xFFFFFFFF.
    assert_eq!(m.regs.rflags & STATUS, CF | PF | AF | SF);

    // repne cmpsq: stop at the first equal pair.
    let mut m = Machine::long();
    for (i, (a, b)) in [(1u64, 2u64), (3, 4), (5, 5), (6, 6)].iter().enumerate() {
        m.write_phys(MMIO + 8 * i as u64, &a.to_le_bytes());
        m.write_phys(0x3000 + 8 * i as u64, &b.to_le_bytes());
    }
    m.set_gpr(RSI, MMIO);
    m.set_gpr(RDI, 0x3000);
    m.set_gpr(RCX, 4);
    m.mmio(&[0xF2, 0x48, 0xA7], MemoryAccessType::Read, MMIO)
        .ok();
    assert_eq!((m.gpr(RCX), m.gpr(RSI), m.gpr(RDI)), (1, MMIO + 24, 0x3018));
    assert_eq!(m.regs.rflags & STATUS, ZF | PF);
}

#[test]
fn backwards_with_df_and_16_bit_wrap() {
    // std; repe cmpsw in 32-bit protected mode: ESI and EDI go down by 2.
    let mut m = Machine::protected32();
    m.regs.rflags |= DF;
    m.write_phys(MMIO, &[0x11, 0x11, 0x22, 0x22, 0x33, 0x33]);
    m.write_phys(0x5000, &[0x00, 0x11, 0x22, 0x22, 0x33, 0x33]);
    m.set_gpr(RSI, MMIO + 4);
    m.set_gpr(RDI, 0x5004);
    m.set_gpr(RCX, 0xFFFF_FFFF_0000_0010);
    m.mmio(&[0xF3, 0x66, 0xA7], MemoryAccessType::Read, MMIO + 4)
        .ok();
    // 0x3333, 0x2222 equal; 0x1111 vs 0x1100 differ.
    assert_eq!(m.gpr(RSI), MMIO - 2);
    assert_eq!(m.gpr(RDI), 0x4FFE);
    assert_eq!(
        m.gpr(RCX),
        0x0000_0000_0000_000D,
        "ECX written, zero-extended"
    );
    assert_eq!(m.regs.rflags & STATUS, PF, "0x1111 - 0x1100 = 0x0011");
    assert_eq!(m.regs.rflags & DF, DF);

    // Real mode, 16-bit addresses: SI and DI wrap within 64 KiB and keep the upper bits.
    let mut m = Machine::real();
    m.regs
        .set_segment(Segment::Ds, SegmentRegister::real_mode(0x1000));
    m.regs
        .set_segment(Segment::Es, SegmentRegister::real_mode(0x2000));
    m.write_phys(0x1FFFF, &[0xAA]);
    m.write_phys(0x10000, &[0xBB]);
    m.write_phys(0x2FFFF, &[0xAA]);
    m.write_phys(0x20000, &[0xBC]);
    m.set_gpr(RSI, 0x1234_FFFF);
    m.set_gpr(RDI, 0x5678_FFFF);
    m.set_gpr(RCX, 0xABCD_0005);
    m.mmio(&[0xF3, 0xA6], MemoryAccessType::Read, 0x1FFFF).ok();
    assert_eq!(m.gpr(RSI), 0x1234_0001);
    assert_eq!(m.gpr(RDI), 0x5678_0001);
    assert_eq!(m.gpr(RCX), 0xABCD_0003, "CX only");
    // 0xBB - 0xBC.
    assert_eq!(m.regs.rflags & STATUS, CF | PF | AF | SF);
}

#[test]
fn address_size_override_in_64_bit_mode_uses_esi_and_edi() {
    // a32 repne scasb (67 F2 AE): EDI addresses, ECX counts; both zero-extend when written.
    let mut m = Machine::long();
    m.write_phys(0x4000, &[1, 2, 3]);
    m.set_gpr(RAX, 2);
    m.set_gpr(RDI, 0xFFFF_FFFF_0000_4000);
    m.set_gpr(RCX, 0xFFFF_FFFF_0000_0010);
    m.mmio(&[0x67, 0xF2, 0xAE], MemoryAccessType::Read, 0x4000)
        .ok();
    assert_eq!(m.gpr(RDI), 0x4002);
    assert_eq!(m.gpr(RCX), 0xE);
    assert_eq!(m.regs.rflags & STATUS, ZF | PF);
}

#[test]
fn cmps_source_segment_is_overridable_and_scas_always_uses_es() {
    // fs cmpsb in real mode: FS:SI against ES:DI.
    let mut m = Machine::real();
    m.regs
        .set_segment(Segment::Es, SegmentRegister::real_mode(0x2000));
    m.regs
        .set_segment(Segment::Fs, SegmentRegister::real_mode(0x3000));
    m.write_phys(0x30010, &[0x80]);
    m.write_phys(0x20020, &[0x01]);
    m.set_gpr(RSI, 0x10);
    m.set_gpr(RDI, 0x20);
    m.mmio(&[0x64, 0xA6], MemoryAccessType::Read, 0x30010).ok();
    let reads: Vec<u64> = m.memory_calls().iter().map(|c| c.0).collect();
    assert_eq!(reads, [0x30010, 0x20020]);
    // 0x80 - 0x01 = 0x7F: signed overflow.
    assert_eq!(m.regs.rflags & STATUS, OF | AF);
    assert_eq!((m.gpr(RSI), m.gpr(RDI)), (0x11, 0x21));

    // cs scasb: the destination is ES:DI whatever the prefix says.
    let mut m = Machine::real();
    m.regs
        .set_segment(Segment::Es, SegmentRegister::real_mode(0x2000));
    m.write_phys(0x20020, &[0x42]);
    m.set_gpr(RAX, 0x42);
    m.set_gpr(RDI, 0x20);
    m.mmio(&[0x2E, 0xAE], MemoryAccessType::Read, 0x20020).ok();
    assert_eq!(m.memory_calls()[0].0, 0x20020);
    assert_eq!(m.regs.rflags & STATUS, ZF | PF);
}

#[test]
fn the_rep_bound_with_repe_leaves_exact_registers_and_rip_on_the_instruction() {
    let mut m = Machine::long();
    m.regs.rip = 0x1000;
    let data: Vec<u8> = (0..40).collect();
    m.write_phys(MMIO, &data);
    m.write_phys(0x3000, &data);
    m.set_gpr(RSI, MMIO);
    m.set_gpr(RDI, 0x3000);
    m.set_gpr(RCX, 10);
    let config = Config::default().with_max_rep_iterations(3);
    let ctx = MemoryAccessContext::new(&[0xF3, 0xA7], MemoryAccessType::Read, MMIO);
    // repe cmpsd: 10 equal dwords, 3 per call.
    let out = m.mmio_ctx_config(2, &ctx, config);
    assert_eq!(out.result, Ok(Completion::Partial));
    assert_eq!(
        (m.gpr(RCX), m.gpr(RSI), m.gpr(RDI), m.regs.rip),
        (7, MMIO + 12, 0x300C, 0x1000)
    );
    assert_eq!(m.regs.rflags & STATUS, ZF | PF);
    assert_eq!(m.memory_calls().len(), 6);
    // Make the 5th dword differ, then continue: the repetition stops there, complete.
    m.write_phys(0x3010, &[0xFF]);
    let out = m.mmio_ctx_config(2, &ctx, config);
    assert_eq!(out.result, Ok(Completion::Complete));
    assert_eq!(
        (m.gpr(RCX), m.gpr(RSI), m.gpr(RDI), m.regs.rip),
        (5, MMIO + 20, 0x3014, 0x1002)
    );
    // 0x13121110 - 0x131211FF = 0xFFFFFF11.
    assert_eq!(m.regs.rflags & STATUS, CF | SF | AF | PF);
}

#[test]
fn both_operands_are_resolved_before_either_is_read() {
    // cmpsb with the destination page not present: #PF for the read of [rdi], and the MMIO
    // source has not been read.
    let mut m = Machine::long();
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
    m.set_gpr(RSI, 0x20_0000);
    m.set_gpr(RDI, 0x40_0000);
    let ctx = MemoryAccessContext::new(&[0xA6], MemoryAccessType::Read, MMIO).with_gva(0x20_0000);
    let out = m.mmio_ctx(1, &ctx);
    assert_eq!(out.exception(), Exception::pf(0x40_0000, 0));
    assert!(m.memory_calls().is_empty());

    // The same fault after two completed iterations of repe cmpsb: those are committed, RIP
    // stays on the instruction, and the guest's re-execution takes the fault.
    let mut m = Machine::long();
    m.identity(0, 16);
    m.set_gpr(RSI, 0x3000);
    m.set_gpr(RDI, 0xFFFE);
    m.set_gpr(RCX, 5);
    m.write_phys(0x3000, &[9, 9, 9]);
    m.write_phys(0xFFFE, &[9, 9]);
    let out = m.mmio(&[0xF3, 0xA6], MemoryAccessType::Read, 0x3000);
    assert_eq!(out.result, Ok(Completion::Partial));
    assert_eq!((m.gpr(RCX), m.gpr(RSI), m.gpr(RDI)), (3, 0x3002, 0x10000));
    assert_eq!(m.regs.rflags & STATUS, ZF | PF);
    let out = m.mmio(&[0xF3, 0xA6], MemoryAccessType::Read, 0x3002);
    assert_eq!(out.exception(), Exception::pf(0x10000, 0));
}

#[test]
fn a_zero_count_compares_nothing_and_keeps_the_flags() {
    let mut m = Machine::long();
    m.regs.rflags |= CF | OF;
    m.set_gpr(RCX, 0);
    m.set_gpr(RDI, MMIO);
    m.mmio(&[0xF3, 0xAE], MemoryAccessType::Read, MMIO).ok();
    assert!(m.memory_calls().is_empty());
    assert_eq!(m.regs.rflags & STATUS, CF | OF);
    assert_eq!(m.regs.rip, 2);
}

#[test]
fn each_element_size() {
    // (bytes, element, memory at RDI, RAX, flags after)
    type Case = (&'static [u8], u64, &'static [u8], u64, u64);
    let cases: [Case; 4] = [
        (&[0xAE], 1, &[0x01], 0x100, CF | AF | SF | PF),
        (&[0x66, 0xAF], 2, &[0x00, 0x80], 0x7FFF, CF | OF | SF | PF),
        (
            &[0xAF],
            4,
            &[0x01, 0x00, 0x00, 0x00],
            0xFFFF_FFFF_0000_0001,
            ZF | PF,
        ),
        (
            &[0x48, 0xAF],
            8,
            &[0, 0, 0, 0, 0, 0, 0, 0x80],
            0,
            CF | OF | SF | PF,
        ),
    ];
    for (bytes, element, mem, rax, flags) in cases {
        let mut m = Machine::long();
        m.write_phys(MMIO, mem);
        m.set_gpr(RAX, rax);
        m.set_gpr(RDI, MMIO);
        m.mmio(bytes, MemoryAccessType::Read, MMIO).ok();
        assert_eq!(m.regs.rflags & STATUS, flags, "{bytes:02x?}");
        assert_eq!(m.gpr(RDI), MMIO + element, "{bytes:02x?}");
        assert_eq!(m.memory_calls(), [(MMIO, false, mem.to_vec())]);
        assert_eq!(m.gpr(RAX), rax, "SCAS does not write rAX");
    }
}
