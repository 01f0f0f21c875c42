//! Port I/O and string instructions through the public API: IN/OUT, INS/OUTS, MOVS/STOS/LODS,
//! with and without REP, every address size and both directions, the REP bound, and the I/O
//! permission bitmap.

mod support;

use hvemu::*;
use support::*;

const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RSI: usize = 6;
const RDI: usize = 7;
const MMIO: u64 = 0xFEE0_0000;
const DF: u64 = 1 << 10;

#[test]
fn in_and_out_at_every_size_need_no_register_read() {
    // (bytes, is_write, size, rax before, port, rax after)
    type Case<'a> = (&'a [u8], bool, u8, u64, u16, u64);
    let cases: [Case; 6] = [
        (
            &[0xE4, 0x60],
            false,
            1,
            0x1111_1111_1111_1111,
            0x60,
            0x1111_1111_1111_11C3,
        ),
        (
            &[0x66, 0xE5, 0x60],
            false,
            2,
            0x1111_1111_1111_1111,
            0x60,
            0x1111_1111_1111_B2C3,
        ),
        (
            &[0xED],
            false,
            4,
            0x1111_1111_1111_1111,
            0x3F8,
            0x0000_0000_00A1_B2C3,
        ),
        (&[0xE6, 0x80], true, 1, 0x1234, 0x80, 0x1234),
        (&[0x66, 0xEF], true, 2, 0x1234, 0xCF8, 0x1234),
        (
            &[0xEF],
            true,
            4,
            0xFFFF_FFFF_8765_4321,
            0xCFC,
            0xFFFF_FFFF_8765_4321,
        ),
    ];
    for (bytes, is_write, size, rax, port, after) in cases {
        let mut m = Machine::long();
        m.set_gpr(RAX, rax);
        m.set_gpr(RDX, u64::from(port));
        m.port_input.push_back(0x00A1_B2C3);
        m.io(bytes, IoPortAccessInfo::new(is_write, size), port)
            .ok();
        assert_eq!(m.gpr(RAX), after, "{bytes:02x?}");
        // The model's IN fills all four bytes; hvemu must use only `size` of them.
        let expected_data = if is_write {
            (rax as u32) & ((1u64 << (8 * size)) - 1) as u32
        } else {
            0x00A1_B2C3
        };
        assert_eq!(m.io_calls(), [(port, is_write, size, expected_data)]);
        assert_eq!(m.gets(), 0, "the port exit carries what IN/OUT need");
        assert_eq!(m.sets(), 1);
        assert_eq!(m.regs.rip, bytes.len() as u64);
    }
}

#[test]
fn port_exit_must_match_the_instruction() {
    let mut m = Machine::long();
    // The context says OUT of 1 byte but the bytes are IN AL, 0x60.
    let r = m
        .io(&[0xE4, 0x60], IoPortAccessInfo::new(true, 1), 0x60)
        .result;
    assert!(
        matches!(r, Err(EmulationError::NotTheExitingInstruction { .. })),
        "{r:?}"
    );
    // Not a port instruction at all.
    let r = m
        .io(&[0x89, 0x18], IoPortAccessInfo::new(true, 4), 0x60)
        .result;
    assert!(
        matches!(r, Err(EmulationError::NotTheExitingInstruction { .. })),
        "{r:?}"
    );
    assert_eq!(m.sets(), 0);
}

#[test]
fn rep_outsb_in_every_address_size_and_direction() {
    for (mode, addr_prefix, addr_size) in [
        ("long", &[][..], 8u32),
        ("long", &[0x67][..], 4),
        ("p32", &[][..], 4),
        ("p32", &[0x67][..], 2),
        ("real", &[][..], 2),
        ("real", &[0x67][..], 4),
    ] {
        for down in [false, true] {
            let mut m = match mode {
                "long" => Machine::long(),
                "p32" => Machine::protected32(),
                _ => Machine::real(),
            };
            let start = 0x2000u64;
            m.write_phys(0x1FFE, b"ABCDEFGH");
            // Bits above the address size are not part of the address.
            let rsi_in = if addr_size == 8 {
                start
            } else {
                0xFFFF_FFFF_0000_0000 | start
            };
            m.set_gpr(RSI, rsi_in);
            // Bits above the address size are not part of the count.
            let rcx_in = if addr_size == 8 {
                4
            } else {
                0xFFFF_FFFF_0000_0004
            };
            m.set_gpr(RCX, rcx_in);
            if down {
                m.regs.rflags |= DF;
            }
            let mut bytes = addr_prefix.to_vec();
            bytes.extend_from_slice(&[0xF3, 0x6E]);
            m.io(&bytes, IoPortAccessInfo::string(true, 1, true), 0x3F8)
                .ok();
            let seen: Vec<u8> = m.io_calls().iter().map(|c| c.3 as u8).collect();
            // Memory below 0x1FFE is zero.
            let expected = if down {
                vec![b'C', b'B', b'A', 0]
            } else {
                b"CDEF".to_vec()
            };
            assert_eq!(seen, expected, "{mode} {addr_size} down={down}");
            let moved = if down {
                start.wrapping_sub(4)
            } else {
                start + 4
            };
            let rsi_out = match addr_size {
                2 => (rsi_in & !0xFFFF) | (moved & 0xFFFF),
                4 => moved & 0xFFFF_FFFF,
                _ => rsi_in.wrapping_add(if down { (-4i64) as u64 } else { 4 }),
            };
            assert_eq!(m.gpr(RSI), rsi_out, "{mode} {addr_size} down={down}");
            let rcx_out = if addr_size == 2 {
                0xFFFF_FFFF_0000_0000
            } else {
                0
            };
            assert_eq!(m.gpr(RCX), rcx_out, "{mode} {addr_size}");
        }
    }
}

#[test]
fn rep_insw_writes_memory_and_translates_before_reading_the_port() {
    let mut m = Machine::long();
    m.identity(0, 8);
    m.set_gpr(RDI, 0x1000);
    m.set_gpr(RCX, 3);
    m.port_input.extend([0x1111, 0x2222, 0x3333]);
    m.io(
        &[0x66, 0xF3, 0x6D],
        IoPortAccessInfo::string(false, 2, true),
        0x1F0,
    )
    .ok();
    assert_eq!(m.read_phys(0x1000, 6), [0x11, 0x11, 0x22, 0x22, 0x33, 0x33]);
    assert_eq!((m.gpr(RDI), m.gpr(RCX)), (0x1006, 0));
    assert_eq!(
        m.translations().len(),
        1,
        "one translation per page per instruction"
    );

    // Destination page not present: #PF before the device is read.
    let mut m = Machine::long();
    m.identity(0, 1);
    m.set_gpr(RDI, 0x5000);
    m.set_gpr(RCX, 3);
    let e = m
        .io(
            &[0x66, 0xF3, 0x6D],
            IoPortAccessInfo::string(false, 2, true),
            0x1F0,
        )
        .exception();
    assert_eq!(e, Exception::pf(0x5000, 0b10));
    assert!(m.io_calls().is_empty());
}

#[test]
fn outs_honours_segment_override_and_ins_always_uses_es() {
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Fs, seg(0x3000, 0xFFFF, 0x18, 0x4093));
    m.regs
        .set_segment(Segment::Es, seg(0x5000, 0xFFFF, 0x20, 0x4093));
    m.write_phys(0x3010, &[0x9A]);
    m.set_gpr(RSI, 0x10);
    m.io(
        &[0x64, 0x6E],
        IoPortAccessInfo::string(true, 1, false),
        0x80,
    )
    .ok(); // outsb fs:[esi]
    assert_eq!(m.io_calls(), [(0x80, true, 1, 0x9A)]);
    m.set_gpr(RDI, 0x20);
    m.port_input.push_back(0x77);
    m.io(
        &[0x64, 0x6C],
        IoPortAccessInfo::string(false, 1, false),
        0x80,
    )
    .ok(); // insb (FS ignored)
    assert_eq!(m.read_phys(0x5020, 1), [0x77]);
}

#[test]
fn rep_bound_leaves_rip_on_the_instruction_with_exact_registers() {
    let mut m = Machine::long();
    m.write_phys(0x3000, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    m.set_gpr(RSI, 0x3000);
    m.set_gpr(RCX, 10);
    m.regs.rip = 0x100;
    let config = Config::default().with_max_rep_iterations(4);
    let out = m.io_config(
        &[0xF3, 0x6E],
        IoPortAccessInfo::string(true, 1, true),
        0x3F8,
        config,
    );
    assert_eq!(out.result, Ok(Completion::Partial));
    assert_eq!((m.gpr(RSI), m.gpr(RCX), m.regs.rip), (0x3004, 6, 0x100));
    assert_eq!(m.io_calls().len(), 4);
    // Running again continues where it stopped, then completes.
    let out = m.io_config(
        &[0xF3, 0x6E],
        IoPortAccessInfo::string(true, 1, true),
        0x3F8,
        config,
    );
    assert_eq!(out.result, Ok(Completion::Partial));
    let out = m.io_config(
        &[0xF3, 0x6E],
        IoPortAccessInfo::string(true, 1, true),
        0x3F8,
        config,
    );
    assert_eq!(out.result, Ok(Completion::Complete));
    assert_eq!((m.gpr(RSI), m.gpr(RCX), m.regs.rip), (0x300A, 0, 0x102));
}

#[test]
fn rep_fault_part_way_commits_completed_iterations_only() {
    let mut m = Machine::long();
    m.identity(0, 4); // pages 0..0x3FFF
    m.set_gpr(RSI, 0x3FFE);
    m.set_gpr(RCX, 4);
    m.regs.rip = 0x100;
    // Two bytes come from 0x3FFE..0x3FFF, the third faults on the unmapped 0x4000.
    let out = m.io(
        &[0xF3, 0x6E],
        IoPortAccessInfo::string(true, 1, true),
        0x3F8,
    );
    assert_eq!(out.result, Ok(Completion::Partial));
    assert_eq!((m.gpr(RSI), m.gpr(RCX), m.regs.rip), (0x4000, 2, 0x100));
    // Re-execution faults at its first iteration: reported, nothing committed.
    let e = m
        .io(
            &[0xF3, 0x6E],
            IoPortAccessInfo::string(true, 1, true),
            0x3F8,
        )
        .exception();
    assert_eq!(e, Exception::pf(0x4000, 0));
    assert!(m.io_calls().is_empty());
}

#[test]
fn rep_with_zero_count_does_nothing_but_advance() {
    let mut m = Machine::long();
    m.set_gpr(RCX, 0);
    m.set_gpr(RDI, MMIO);
    m.mmio(&[0xF3, 0xAA], MemoryAccessType::Write, MMIO).ok();
    assert!(m.memory_calls().is_empty());
    assert_eq!(m.regs.rip, 2);
}

#[test]
fn rep_movs_stos_lods_to_and_from_mmio() {
    // rep movsd from RAM to MMIO, forward.
    let mut m = Machine::long();
    m.write_phys(0x1000, &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
    m.set_gpr(RSI, 0x1000);
    m.set_gpr(RDI, MMIO);
    m.set_gpr(RCX, 3);
    m.mmio(&[0xF3, 0xA5], MemoryAccessType::Write, MMIO).ok();
    assert_eq!(m.read_phys(MMIO, 12), [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
    assert_eq!((m.gpr(RSI), m.gpr(RDI), m.gpr(RCX)), (0x100C, MMIO + 12, 0));

    // rep stosw backwards in 16-bit real mode: ES:DI, DI wraps within 64 KiB.
    let mut m = Machine::real();
    m.regs
        .set_segment(Segment::Es, SegmentRegister::real_mode(0x2000));
    m.regs.rflags |= DF;
    m.set_gpr(RAX, 0xABCD);
    m.set_gpr(RDI, 0x0002);
    m.set_gpr(RCX, 3);
    m.mmio(&[0xF3, 0xAB], MemoryAccessType::Write, 0x20002).ok();
    let writes: Vec<u64> = m.memory_calls().iter().map(|c| c.0).collect();
    assert_eq!(writes, [0x20002, 0x20000, 0x2FFFE]);
    assert_eq!((m.gpr(RDI), m.gpr(RCX)), (0xFFFC, 0));

    // lodsq without REP from MMIO.
    let mut m = Machine::long();
    m.write_phys(MMIO, &0x0102_0304_0506_0708u64.to_le_bytes());
    m.set_gpr(RSI, MMIO);
    m.mmio(&[0x48, 0xAD], MemoryAccessType::Read, MMIO).ok();
    assert_eq!((m.gpr(RAX), m.gpr(RSI)), (0x0102_0304_0506_0708, MMIO + 8));

    // movsb with a segment override on the source in 32-bit protected mode.
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Gs, seg(0x4000, 0xFFFF, 0x18, 0x4093));
    m.write_phys(0x4005, &[0x42]);
    m.set_gpr(RSI, 5);
    m.set_gpr(RDI, 0x6000);
    m.mmio(&[0x65, 0xA4], MemoryAccessType::Read, 0x4005).ok();
    assert_eq!(m.read_phys(0x6000, 1), [0x42]);
}

#[test]
fn rep_movs_crossing_pages_translates_each_page_once() {
    let mut m = Machine::long();
    m.identity(0, 16);
    m.set_gpr(RSI, 0x1F00);
    m.set_gpr(RDI, 0x5F80);
    m.set_gpr(RCX, 0x200);
    m.mmio(&[0xF3, 0xA4], MemoryAccessType::Write, 0x5F80).ok();
    let mut pages: Vec<u64> = m.translations().iter().map(|t| t.0).collect();
    let n = pages.len();
    pages.sort();
    pages.dedup();
    assert_eq!(
        n,
        pages.len(),
        "a page was translated twice: {:x?}",
        m.translations()
    );
    assert_eq!(pages, [0x1000, 0x2000, 0x5000, 0x6000]);
}

fn tss_with_bitmap(m: &mut Machine, base: u64, map_offset: u16, bitmap: &[u8], limit: u32) {
    m.write_phys(base + 0x66, &map_offset.to_le_bytes());
    m.write_phys(base + u64::from(map_offset), bitmap);
    m.regs.tr = seg(base, limit, 0x28, 0x008B);
}

#[test]
fn io_permission_bitmap_at_cpl3() {
    let setup = |bitmap: &[u8], limit: u32| {
        let mut m = Machine::protected32();
        m.regs
            .set_segment(Segment::Cs, seg(0, 0xFFFF_FFFF, 0x1B, 0xC0FB));
        m.regs
            .set_segment(Segment::Ss, seg(0, 0xFFFF_FFFF, 0x23, 0xC0F3));
        tss_with_bitmap(&mut m, 0x8000, 0x68, bitmap, limit);
        m
    };
    // Ports 0x60..0x67 allowed (byte 0x0C = 0), 0x68..0x6F denied.
    let mut bitmap = vec![0xFF; 0x10];
    bitmap[0x0C] = 0x00;
    let mut m = setup(&bitmap, 0x68 + 0x10);
    m.io(&[0xE4, 0x60], IoPortAccessInfo::new(false, 1), 0x60)
        .ok();
    assert_eq!(m.io_calls().len(), 1);
    // The TSS is read as an implicit supervisor access.
    assert!(
        m.translations()
            .iter()
            .all(|t| t.1.contains(TranslateGvaFlags::PRIVILEGE_EXEMPT))
    );
    // A 4-byte access at 0x66 straddles into denied 0x68.
    let e = m
        .io(&[0xE5, 0x66], IoPortAccessInfo::new(false, 4), 0x66)
        .exception();
    assert_eq!(e, Exception::gp(0));
    assert!(m.io_calls().is_empty());
    // The second bitmap byte beyond the TSS limit: #GP(0) even for a permitted port.
    let mut m = setup(&bitmap, 0x68 + 0x0C);
    let e = m
        .io(&[0xE4, 0x60], IoPortAccessInfo::new(false, 1), 0x60)
        .exception();
    assert_eq!(e, Exception::gp(0));
    // IOPL 3 skips the bitmap.
    let mut m = setup(&bitmap, 0x68 + 0x10);
    m.regs.rflags |= 3 << 12;
    m.io(&[0xE4, 0x68], IoPortAccessInfo::new(false, 1), 0x68)
        .ok();
    // Virtual-8086 mode consults the bitmap even with IOPL 3.
    let mut m = setup(&bitmap, 0x68 + 0x10);
    m.regs.rflags |= (3 << 12) | (1 << 17);
    let e = m
        .io(&[0xE4, 0x68], IoPortAccessInfo::new(false, 1), 0x68)
        .exception();
    assert_eq!(e, Exception::gp(0));
    // A 16-bit TSS has no bitmap: #GP(0).
    let mut m = setup(&bitmap, 0x68 + 0x10);
    m.regs.tr.attributes = SegmentAttributes::from_bits_retain(0x0083);
    let e = m
        .io(&[0xE4, 0x60], IoPortAccessInfo::new(false, 1), 0x60)
        .exception();
    assert_eq!(e, Exception::gp(0));
}

#[test]
fn malformed_contexts_are_invalid_arguments() {
    let mut m = Machine::long();
    let exit = m.exit(0);
    let io = IoPortAccessContext::new(&[0xE4, 0x60], IoPortAccessInfo::new(false, 1), 0x60);
    let mut emu = Emulator::new(&mut m);
    assert_eq!(
        emu.try_io_emulation(&exit, &io),
        Err(InvalidArgument::InstructionLength(0))
    );
    let mut exit16 = exit;
    exit16.instruction_length = 16;
    assert_eq!(
        emu.try_io_emulation(&exit16, &io),
        Err(InvalidArgument::InstructionLength(16))
    );
    let exit = {
        let mut e = exit;
        e.instruction_length = 2;
        e
    };
    let bad_size = IoPortAccessContext::new(&[0xE4, 0x60], IoPortAccessInfo::new(false, 3), 0x60);
    assert_eq!(
        emu.try_io_emulation(&exit, &bad_size),
        Err(InvalidArgument::IoAccessSize(3))
    );
    let mut many = MemoryAccessContext::new(&[0x89, 0x18], MemoryAccessType::Write, 0);
    many.instruction_byte_count = 17;
    assert_eq!(
        emu.try_mmio_emulation(&exit, &many),
        Err(InvalidArgument::InstructionByteCount(17))
    );
    // Undecodable bytes and instructions without memory operands: failure status, no panic.
    let ud = MemoryAccessContext::new(&[0x0F, 0x0B], MemoryAccessType::Write, 0);
    assert_eq!(
        emu.try_mmio_emulation(&exit, &ud),
        Ok(EmulatorStatus::INTERNAL_EMULATION_FAILURE)
    );
    // LOCK on a register MOV: #UD, reported as an exception.
    let bad = MemoryAccessContext::new(&[0xF0, 0x89, 0xD8], MemoryAccessType::Write, 0);
    assert_eq!(
        emu.emulate_mmio(&exit, &bad),
        Err(EmulationError::Exception(Exception::ud()))
    );
    let regs_only = MemoryAccessContext::new(&[0x89, 0xD8], MemoryAccessType::Write, 0);
    assert!(matches!(
        emu.emulate_mmio(&exit, &regs_only),
        Err(EmulationError::NotTheExitingInstruction { .. })
    ));
    let _ = emu.into_callbacks();
    assert_eq!(m.sets(), 0);
}

#[test]
fn callback_failures_map_to_their_status_bits() {
    let cases = [
        (
            Fail::Get,
            EmulatorStatus::GET_VIRTUAL_PROCESSOR_REGISTERS_CALLBACK_FAILED,
        ),
        (Fail::Memory, EmulatorStatus::MEMORY_CALLBACK_FAILED),
        (
            Fail::Translate,
            EmulatorStatus::TRANSLATE_GVA_PAGE_CALLBACK_FAILED,
        ),
        (
            Fail::Set,
            EmulatorStatus::SET_VIRTUAL_PROCESSOR_REGISTERS_CALLBACK_FAILED,
        ),
    ];
    for (fail, status) in cases {
        let mut m = Machine::long();
        m.set_gpr(RAX, MMIO);
        m.fail = Some(fail);
        let exit = m.exit(2);
        let ctx = MemoryAccessContext::new(&[0x89, 0x18], MemoryAccessType::Write, MMIO);
        let got = Emulator::new(&mut m).try_mmio_emulation(&exit, &ctx);
        assert_eq!(got, Ok(status), "{fail:?}");
    }
    let mut m = Machine::long();
    m.fail = Some(Fail::Io);
    let exit = m.exit(2);
    let io = IoPortAccessContext::new(&[0xE6, 0x80], IoPortAccessInfo::new(true, 1), 0x80);
    assert_eq!(
        Emulator::new(&mut m).try_io_emulation(&exit, &io),
        Ok(EmulatorStatus::IO_PORT_CALLBACK_FAILED)
    );
    // An unaligned GPA from translation sets its own bit.
    let mut m = Machine::long();
    m.misalign_translation = true;
    m.set_gpr(RAX, MMIO);
    let exit = m.exit(2);
    let ctx = MemoryAccessContext::new(&[0x89, 0x18], MemoryAccessType::Write, MMIO);
    assert_eq!(
        Emulator::new(&mut m).try_mmio_emulation(&exit, &ctx),
        Ok(EmulatorStatus::TRANSLATE_GVA_PAGE_CALLBACK_GPA_IS_NOT_ALIGNED)
    );
    assert_eq!(m.sets(), 0);
}

#[test]
fn pending_interruption_is_not_emulated() {
    let mut m = Machine::long();
    let mut exit = m.exit(2);
    exit.execution_state.interruption_pending = true;
    let ctx = MemoryAccessContext::new(&[0x89, 0x18], MemoryAccessType::Write, MMIO);
    assert_eq!(
        Emulator::new(&mut m).try_mmio_emulation(&exit, &ctx),
        Ok(EmulatorStatus::INTERRUPT_CAUSED_INTERCEPT)
    );
    assert!(m.log.is_empty());
}
