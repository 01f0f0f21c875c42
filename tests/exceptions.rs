//! Exception delivery: reporting, injection through the pending-event register, single-step
//! traps, guests that cannot be faulted, and LOCK misuse.

mod support;

use hvemu::*;
use support::*;

const MMIO: u64 = 0xFEE0_0000;
const TF: u64 = 1 << 8;

fn pending_events(m: &Machine) -> Vec<u128> {
    m.log
        .iter()
        .filter_map(|c| match c {
            Call::Set(pairs) => Some(pairs.clone()),
            _ => None,
        })
        .flatten()
        .filter(|(n, _)| *n == RegisterName::PENDING_EVENT)
        .map(|(_, v)| v.as_u128().unwrap())
        .collect()
}

#[test]
fn injection_queues_the_fault_in_one_set_registers_call() {
    let mut m = Machine::long();
    m.regs.idtr = TableRegister {
        base: 0,
        limit: 0xFFF,
    };
    m.identity(0, 4);
    m.set_gpr(0, 0x10_0000); // not mapped
    let config = Config::default().with_exception_injection(true);
    let ctx = MemoryAccessContext::new(&[0x89, 0x18], MemoryAccessType::Write, 0);
    let out = m.mmio_ctx_config(2, &ctx, config);
    assert_eq!(
        out.result,
        Ok(Completion::Injected(Exception::pf(0x10_0000, 0b10)))
    );
    let sets: Vec<_> = m.log.iter().filter(|c| matches!(c, Call::Set(_))).collect();
    assert_eq!(sets.len(), 1);
    assert!(
        matches!(sets[0], Call::Set(p) if p.len() == 1),
        "only the pending event: {sets:?}"
    );
    // Pending, exception type 0, error code delivered, vector 14, error 2, CR2 in the parameter.
    let expected = 1u128 | (1 << 8) | (14 << 16) | (2u128 << 32) | (0x10_0000u128 << 64);
    assert_eq!(pending_events(&m), [expected]);
    assert_eq!(m.regs.rip, 0, "RIP stays on the faulting instruction");
    assert_eq!(m.regs.pending[2], expected);
}

#[test]
fn a_fault_the_idt_cannot_hold_means_the_guest_cannot_be_faulted() {
    let mut m = Machine::long();
    m.regs.idtr = TableRegister {
        base: 0,
        limit: 16 * 13 - 1,
    }; // vectors 0..=12 only
    m.set_gpr(0, 0x8000_0000_0000_0000);
    let config = Config::default().with_exception_injection(true);
    let ctx = MemoryAccessContext::new(&[0x89, 0x18], MemoryAccessType::Write, 0);
    let exit = m.exit(2);
    let status = Emulator::with_config(&mut m, config).try_mmio_emulation(&exit, &ctx);
    assert_eq!(status, Ok(EmulatorStatus::GUEST_CANNOT_BE_FAULTED));
    assert_eq!(m.sets(), 0);
    // Real mode: the IVT holds 4-byte entries.
    let mut m = Machine::real();
    m.regs.idtr = TableRegister {
        base: 0,
        limit: 4 * 13 - 1,
    };
    m.set_gpr(3, 0xFFFF);
    let out = m.mmio_ctx_config(
        2,
        &MemoryAccessContext::new(&[0x8B, 0x07], MemoryAccessType::Read, 0),
        config,
    );
    assert_eq!(
        out.result,
        Err(EmulationError::GuestCannotBeFaulted(Exception::gp(0)))
    );
    m.regs.idtr.limit = 4 * 14 - 1;
    let out = m.mmio_ctx_config(
        2,
        &MemoryAccessContext::new(&[0x8B, 0x07], MemoryAccessType::Read, 0),
        config,
    );
    assert_eq!(out.result, Ok(Completion::Injected(Exception::gp(0))));
}

#[test]
fn single_step_traps_after_the_instruction() {
    let mut m = Machine::long();
    m.regs.rflags |= TF;
    m.set_gpr(0, MMIO);
    m.mmio(&[0x89, 0x18], MemoryAccessType::Write, MMIO)
        .result
        .map(|c| {
            assert_eq!(c, Completion::SingleStepTrap { partial: false });
        })
        .unwrap();
    assert_eq!(m.regs.rip, 2);
    // With injection the trap rides on the commit: DR6.BS in the parameter.
    let mut m = Machine::long();
    m.regs.rflags |= TF;
    m.set_gpr(0, MMIO);
    let config = Config::default().with_exception_injection(true);
    let ctx = MemoryAccessContext::new(&[0x89, 0x18], MemoryAccessType::Write, MMIO);
    let out = m.mmio_ctx_config(2, &ctx, config);
    assert_eq!(out.result, Ok(Completion::Complete));
    assert_eq!(m.sets(), 1);
    assert_eq!(
        pending_events(&m),
        [1u128 | (1 << 16) | ((1u128 << 14) << 64)]
    );
    assert_eq!(m.regs.rip, 2);
}

#[test]
fn single_step_runs_one_rep_iteration_per_trap() {
    let mut m = Machine::long();
    m.regs.rflags |= TF;
    m.set_gpr(1, 3);
    m.set_gpr(7, MMIO);
    let out = m.mmio(&[0xF3, 0xAA], MemoryAccessType::Write, MMIO);
    assert_eq!(out.result, Ok(Completion::SingleStepTrap { partial: true }));
    assert_eq!((m.gpr(1), m.gpr(7), m.regs.rip), (2, MMIO + 1, 0));
    assert_eq!(m.memory_calls().len(), 1);
}

#[test]
fn faults_without_injection_are_reported_not_queued() {
    let mut m = Machine::long();
    m.set_gpr(0, 0x8000_0000_0000_0000);
    let e = m
        .mmio(&[0x89, 0x18], MemoryAccessType::Write, 0)
        .exception();
    assert_eq!(e, Exception::gp(0));
    assert!(pending_events(&m).is_empty());
}

#[test]
fn lock_where_it_is_not_allowed_is_invalid_opcode() {
    let mut m = Machine::long();
    m.set_gpr(0, MMIO);
    // lock mov [rax], ebx: MOV does not take LOCK.
    let e = m
        .mmio(&[0xF0, 0x89, 0x18], MemoryAccessType::Write, MMIO)
        .exception();
    assert_eq!(e, Exception::ud());
    // lock add eax, [rax]: a register destination cannot be locked.
    let e = m
        .mmio(&[0xF0, 0x03, 0x00], MemoryAccessType::Read, MMIO)
        .exception();
    assert_eq!(e, Exception::ud());
    assert!(m.memory_calls().is_empty());
    // Bytes that are not an instruction at all stay undecodable.
    let r = m
        .mmio(&[0x0F, 0x04, 0x00], MemoryAccessType::Read, MMIO)
        .result;
    assert!(
        matches!(r, Err(EmulationError::Undecodable { .. })),
        "{r:?}"
    );
}

#[test]
fn resume_flag_is_set_when_rip_stays_and_cleared_when_the_instruction_completes() {
    const RF: u64 = 1 << 16;
    let mut m = Machine::long();
    m.regs.rflags |= RF;
    m.set_gpr(1, 10);
    m.set_gpr(7, MMIO);
    let config = Config::default().with_max_rep_iterations(4);
    let ctx = MemoryAccessContext::new(&[0xF3, 0xAA], MemoryAccessType::Write, MMIO);
    m.regs.rflags &= !RF;
    assert_eq!(
        m.mmio_ctx_config(2, &ctx, config).result,
        Ok(Completion::Partial)
    );
    assert_ne!(
        m.regs.rflags & RF,
        0,
        "a resumed REP must not re-trigger its breakpoint"
    );
    assert_eq!(
        m.mmio_ctx_config(2, &ctx, config).result,
        Ok(Completion::Partial)
    );
    assert_eq!(
        m.mmio_ctx_config(2, &ctx, config).result,
        Ok(Completion::Complete)
    );
    assert_eq!(m.regs.rflags & RF, 0);
    assert_eq!((m.gpr(1), m.regs.rip), (0, 2));
}

#[test]
fn smap_modifiers_are_passed_to_the_translation() {
    const AC: u64 = 1 << 18;
    // A supervisor data access with RFLAGS.AC: OVERRIDE_SMAP.
    let mut m = Machine::long();
    m.regs.rflags |= AC;
    m.set_gpr(0, MMIO);
    m.mmio(&[0x89, 0x18], MemoryAccessType::Write, MMIO).ok();
    assert_eq!(m.translations().len(), 1);
    assert!(
        m.translations()[0]
            .1
            .contains(TranslateGvaFlags::OVERRIDE_SMAP)
    );
    // Without AC, nothing: the platform applies SMAP from the processor state.
    m.regs.rflags &= !AC;
    m.mmio(&[0x89, 0x18], MemoryAccessType::Write, MMIO).ok();
    assert!(
        !m.translations()[0]
            .1
            .intersects(TranslateGvaFlags::OVERRIDE_SMAP | TranslateGvaFlags::ENFORCE_SMAP)
    );
    // The implicit TSS read behind a CPL-3 port access: ENFORCE_SMAP, whatever AC says.
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Cs, seg(0, 0xFFFF_FFFF, 0x1B, 0xC0FB));
    m.regs
        .set_segment(Segment::Ss, seg(0, 0xFFFF_FFFF, 0x23, 0xC0F3));
    m.regs.rflags |= AC;
    m.write_phys(0x8000 + 0x66, &0x68u16.to_le_bytes());
    m.regs.tr = seg(0x8000, 0x68 + 0x20, 0x28, 0x008B);
    m.io(&[0xE4, 0x60], IoPortAccessInfo::new(false, 1), 0x60)
        .ok();
    let t = m.translations();
    assert!(!t.is_empty());
    assert!(t.iter().all(|(_, f)| {
        f.contains(TranslateGvaFlags::PRIVILEGE_EXEMPT | TranslateGvaFlags::ENFORCE_SMAP)
    }));
}
