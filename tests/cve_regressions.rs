//! One regression test per class of bug that has let guests escape or crash instruction
//! emulators before, named after the CVE, showing what hvemu does instead.

mod support;

use hvemu::*;
use support::*;

const RAX: usize = 0;
const MMIO: u64 = 0xFEE0_0000;

fn user_mode_long() -> Machine {
    let mut m = Machine::long();
    m.regs
        .set_segment(Segment::Cs, seg(0, 0xFFFF_FFFF, 0x2B, 0xA0FB));
    m.regs
        .set_segment(Segment::Ss, seg(0, 0xFFFF_FFFF, 0x23, 0xC0F3));
    m
}

/// CVE-2010-0298: emulated memory accesses skipped the CPL check, so user code could reach
/// supervisor pages through an MMIO exit. hvemu translates every access at the guest's CPL.
#[test]
fn cve_2010_0298_user_code_cannot_reach_supervisor_pages() {
    let mut m = user_mode_long();
    m.identity(0, 16);
    m.map(
        0x20_0000,
        Pte {
            gpa: MMIO,
            writable: true,
            user: true,
            executable: false,
        },
    );
    m.map(
        0x30_0000,
        Pte {
            gpa: 0x5000,
            writable: true,
            user: false,
            executable: false,
        },
    );
    // rep movsb from a supervisor page (0x300000) to MMIO.
    m.set_gpr(6, 0x30_0000);
    m.set_gpr(7, 0x20_0000);
    m.set_gpr(1, 4);
    let e = m
        .mmio(&[0xF3, 0xA4], MemoryAccessType::Write, MMIO)
        .exception();
    assert_eq!(
        e,
        Exception::pf(0x30_0000, 0b101),
        "user read of a supervisor page"
    );
    assert!(m.memory_calls().is_empty());
    assert!(
        m.translations()
            .iter()
            .all(|t| !t.1.contains(TranslateGvaFlags::PRIVILEGE_EXEMPT))
    );
}

/// CVE-2010-0306: emulated port instructions skipped the IOPL/I/O-bitmap check. hvemu checks
/// CPL against IOPL and consults the TSS bitmap, whatever kind of exit brought the instruction.
#[test]
fn cve_2010_0306_port_access_checks_iopl_and_the_bitmap() {
    let mut m = user_mode_long();
    m.write_phys(0x8000 + 0x66, &0x68u16.to_le_bytes());
    m.write_phys(0x8000 + 0x68, &[0xFF; 0x20]);
    m.regs.tr = seg(0x8000, 0x68 + 0x20, 0x40, 0x008B);
    // An `out dx, al` port exit at CPL 3, IOPL 0, port denied: #GP(0), the device untouched.
    let e = m
        .io(&[0xEE], IoPortAccessInfo::new(true, 1), 0x70)
        .exception();
    assert_eq!(e, Exception::gp(0));
    assert!(m.io_calls().is_empty());
    // The same instruction arriving through a memory exit (rep insb writing MMIO).
    m.set_gpr(7, MMIO);
    m.set_gpr(1, 1);
    m.regs.set_gpr(2, 0x70);
    let e = m
        .mmio(&[0xF3, 0x6C], MemoryAccessType::Write, MMIO)
        .exception();
    assert_eq!(e, Exception::gp(0));
    assert!(m.io_calls().is_empty());
}

/// CVE-2014-3647: an emulated instruction could run from, or leave RIP at, a non-canonical
/// address without the #GP the processor raises. hvemu checks that every byte of the
/// instruction lies at a canonical address before doing anything.
#[test]
fn cve_2014_3647_instructions_at_non_canonical_addresses_fault() {
    let mut m = Machine::long();
    m.regs.rip = 0x0000_7FFF_FFFF_FFFE; // the third byte is non-canonical
    m.set_gpr(RAX, MMIO);
    let e = m
        .mmio(&[0x89, 0x58, 0x10], MemoryAccessType::Write, MMIO + 0x10)
        .exception();
    assert_eq!(e, Exception::gp(0));
    assert_eq!((m.sets(), m.memory_calls().len()), (0, 0));
    // An instruction ending on the last canonical byte completes, as on the processor: the
    // fetch of the next instruction is what faults, in the guest.
    m.regs.rip = 0x0000_7FFF_FFFF_FFFD;
    m.mmio(&[0x89, 0x58, 0x10], MemoryAccessType::Write, MMIO + 0x10)
        .ok();
    assert_eq!(m.regs.rip, 0x0000_8000_0000_0000);
}

/// CVE-2014-8480 / CVE-2014-8481: decoder table gaps crashed the emulator on unusual
/// encodings. hvemu decodes with iced-x86 and reports what it cannot run; every one- and
/// two-byte opcode with any ModRM byte ends in a result, never a panic.
#[test]
fn cve_2014_8480_8481_every_opcode_ends_in_a_result() {
    let mut outcomes = [0usize; 3];
    for mode in 0..3 {
        for prefix in [&[][..], &[0x0F][..], &[0xF3][..], &[0x66, 0x0F][..]] {
            for op in 0..=255u8 {
                for modrm in [0x00u8, 0x05, 0x18, 0x44, 0xC0, 0xFF] {
                    let mut m = match mode {
                        0 => Machine::real(),
                        1 => Machine::protected32(),
                        _ => Machine::long(),
                    };
                    m.set_gpr(RAX, 0x100);
                    let mut bytes = prefix.to_vec();
                    bytes.extend_from_slice(&[op, modrm, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60]);
                    let r = m.mmio(&bytes, MemoryAccessType::Write, 0x100).result;
                    let i = match r {
                        Ok(_) => 0,
                        Err(EmulationError::Exception(_)) => 1,
                        Err(_) => 2,
                    };
                    outcomes[i] += 1;
                }
            }
        }
    }
    println!(
        "emulated {}, faulted {}, refused {}",
        outcomes[0], outcomes[1], outcomes[2]
    );
    assert!(outcomes[0] > 0 && outcomes[2] > 0);
}

/// CVE-2017-2583: emulating MOV SS with a null selector in 64-bit mode at CPL 3 let a guest
/// crash the host. hvemu does not load segment registers: it refuses cleanly and changes
/// nothing.
#[test]
fn cve_2017_2583_segment_loads_are_refused_cleanly() {
    let mut m = user_mode_long();
    m.set_gpr(RAX, MMIO);
    m.write_phys(MMIO, &[0, 0]);
    let r = m.mmio(&[0x8E, 0x10], MemoryAccessType::Read, MMIO).result; // mov ss, [rax]
    assert!(
        matches!(r, Err(EmulationError::Unsupported { .. })),
        "{r:?}"
    );
    assert!(m.memory_calls().is_empty());
    assert_eq!(m.sets(), 0);
}

/// CVE-2016-9756 / CVE-2019-7222: uninitialised emulator state (a stack buffer, an exception
/// record) reached the guest. hvemu hands the device exactly the operand's bytes, masks what a
/// device returns to the access size, and reports exceptions with only the fields the vector
/// defines.
#[test]
fn cve_2016_9756_2019_7222_no_stale_bytes_reach_guest_or_device() {
    let mut m = Machine::long();
    m.set_gpr(RAX, MMIO);
    m.set_gpr(3, 0x1122_3344_5566_7788);
    m.mmio(&[0x88, 0x18], MemoryAccessType::Write, MMIO).ok(); // mov [rax], bl
    assert_eq!(m.memory_calls(), [(MMIO, true, vec![0x88])]);
    // The model's IN fills all 32 bits; `in al` takes only 8 of them.
    m.set_gpr(RAX, 0);
    m.port_input.push_back(0xDEAD_BEEF);
    m.io(&[0xE4, 0x60], IoPortAccessInfo::new(false, 1), 0x60)
        .ok();
    assert_eq!(m.gpr(RAX), 0xEF);
    // A #GP carries error code 0 and no CR2.
    m.set_gpr(RAX, 0x8000_0000_0000_0000);
    let e = m
        .mmio(&[0x88, 0x18], MemoryAccessType::Write, 0)
        .exception();
    assert_eq!((e.error_code, e.cr2), (Some(0), None));
}

/// CVE-2022-1852: a NULL dereference when the emulator met an instruction it had not decoded
/// completely. hvemu's decode either yields a whole instruction or an error: bytes cut short
/// and past the fetchable range are a clean fault or error.
#[test]
fn cve_2022_1852_truncated_instructions_fail_cleanly() {
    let mut m = Machine::long();
    m.identity(0, 1); // only page 0 is mapped: fetching the rest faults
    m.regs.rip = 0xFFD;
    m.load_code(&[0x48, 0xC7, 0x80]);
    let ctx = MemoryAccessContext::new(&[0x48, 0xC7, 0x80], MemoryAccessType::Write, 0);
    let e = m.mmio_ctx(11, &ctx).exception();
    assert_eq!(e.vector, Vector::PageFault);
    assert_eq!(e.cr2, Some(0x1000));
    assert_eq!(m.sets(), 0);
}

/// Found by fuzzing (the CVE-2010-0298 class again): the TSS read for the I/O bitmap is an
/// implicit supervisor access; its translation must not then serve the user-mode instruction's
/// own read of the same page. Here `outsb` at CPL 3 reads its source from the supervisor page
/// that holds the TSS: #PF, and the port never sees the byte.
#[test]
fn cve_2010_0298_system_translations_never_serve_user_accesses() {
    let mut m = user_mode_long();
    m.identity(0, 16);
    m.map(
        0x8000,
        Pte {
            gpa: 0x8000,
            writable: true,
            user: false,
            executable: false,
        },
    );
    m.write_phys(0x8000 + 0x66, &0x68u16.to_le_bytes());
    m.write_phys(0x8000 + 0x68, &[0x00; 0x20]); // every port allowed
    m.regs.tr = seg(0x8000, 0x68 + 0x20, 0x40, 0x008B);
    m.set_gpr(6, 0x8010);
    let e = m
        .io(&[0x6E], IoPortAccessInfo::string(true, 1, false), 0x70)
        .exception();
    assert_eq!(e, Exception::pf(0x8010, 0b101));
    assert!(m.io_calls().is_empty());
    let flags: Vec<_> = m.translations().iter().map(|t| t.1).collect();
    assert!(
        flags[0].contains(TranslateGvaFlags::PRIVILEGE_EXEMPT),
        "{flags:?}"
    );
    assert!(
        !flags
            .last()
            .unwrap()
            .contains(TranslateGvaFlags::PRIVILEGE_EXEMPT),
        "{flags:?}"
    );
}
