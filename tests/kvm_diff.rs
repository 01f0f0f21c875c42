//! Differential tests: hvemu against KVM, exit by exit (project issue 4).
//!
//! * `diff_<mode>`: a guest in one CPU mode runs generated cases (`kvm_diff/cases.rs`, one
//!   generator per instruction family in `cases::FAMILIES`): one instruction each, in a state
//!   the driver sets up, followed by a marker `out` that tells the driver the instruction is
//!   done. At the instruction's first MMIO or port exit hvemu emulates it from the
//!   pre-instruction snapshot (several presentations of the exit, which must agree); KVM then
//!   finishes it with its reads answered by hvemu's data; device accesses, guest RAM, GPRs,
//!   RIP and RFLAGS (or the exception) are compared (`kvm_diff/driver.rs`). Faulting cases run
//!   hvemu first, from the snapshot, and compare its exception (vector, error code, CR2) with
//!   the record the guest's IDT handler wrote. Families hvemu does not emulate yet are skipped
//!   with a note.
//! * `program_single_step_<mode>`: an ordinary guest program, single-stepped, compared at
//!   every instruction that makes a device access.
//! * `kvm_deviation_*`: where KVM (kvm-pvm, Linux's emulate.c) departs from the manuals, the
//!   cases assert hvemu's behaviour instead and tolerate only the named discrepancy.
//! * hvemu bugs go in `KNOWN_HVEMU_BUGS` (skipped by `diff_<mode>`) with an `#[ignore]`d test
//!   calling `check_named`. None is known.
//!
//! Without `/dev/kvm` the tests print `SKIPPED (no /dev/kvm)` (or fail with
//! `HVEMU_REQUIRE_KVM=1`). Set `HVEMU_DIFF_VERBOSE=1` to print every compared instruction.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod kvm;

#[path = "kvm_diff/cases.rs"]
mod cases;
#[path = "kvm_diff/driver.rs"]
mod driver;

use std::io::Write as _;

use cases::{Case, Env, Expect, FAMILIES, KvmBug, Rng};
use driver::{HvOutcome, KvmOutcome, Options, Session, StepReport, Verdict};
use kvm::{Mode, layout};

/// hvemu bugs found by this harness: (mode or "*", case-name substring, explanation). The
/// main tests skip these cases; the `#[ignore]`d test named in the explanation runs them.
const KNOWN_HVEMU_BUGS: &[(&str, &str, &str)] = &[];

fn loud(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

fn verbose() -> bool {
    std::env::var("HVEMU_DIFF_VERBOSE").as_deref() == Ok("1")
}

fn known_bug(mode: Mode, case: &Case) -> Option<&'static str> {
    KNOWN_HVEMU_BUGS
        .iter()
        .find(|(m, name, _)| (*m == "*" || *m == format!("{mode:?}")) && case.name.contains(name))
        .map(|(_, _, why)| *why)
}

/// Which cases of a mode to run.
enum Select<'a> {
    /// Everything except known hvemu bugs.
    AllButKnownBugs,
    /// Only the cases whose name contains this (known hvemu bugs included): for the
    /// `#[ignore]`d test of an hvemu bug listed in `KNOWN_HVEMU_BUGS`.
    #[allow(dead_code)]
    Named(&'a str),
    /// Only the cases marked with this KVM deviation.
    KvmDeviation(&'a KvmBug),
}

/// The outcome of a mode's run.
struct ModeRun {
    failures: Vec<String>,
    reports: Vec<StepReport>,
}

fn outcome_kind(r: &StepReport) -> String {
    match (&r.hv.outcome, &r.kvm) {
        (_, KvmOutcome::Failed(w)) => format!("KVM failed: {w}"),
        (HvOutcome::Completed, KvmOutcome::Completed(_)) => "completed".into(),
        (HvOutcome::Exception(e), KvmOutcome::Exception(rec, _)) => {
            format!("hvemu {e}, KVM vector {}", rec.vector)
        }
        (h, _) => format!("hvemu {h:?}"),
    }
}

/// Runs every family's cases in `mode`. Returns None when KVM or the mode is unavailable.
fn run_mode(mode: Mode, select: Select<'_>, test: &str) -> Option<ModeRun> {
    let kvm = kvm::require_kvm_or_skip(test)?;
    let mut g = kvm::guest_or_skip(&kvm, mode, test)?;
    if g.paging.is_some() {
        Env::map_scenarios(&mut g);
    }
    let env = Env::new(mode, g.vcpu.sregs());
    let mut session = Session::new(&mut g, Options::default());
    let mut rng = Rng::new(0x5EED_0000 + mode as u64);
    let mut failures = vec![];
    let mut kvm_bugs = vec![];
    let mut reports = vec![];
    let mut skipped_known = 0;
    let mut n = 0u64;
    for (family, generate, optional) in FAMILIES {
        let mut probed = false;
        for case in generate(&env, &mut rng) {
            n += 1;
            match select {
                Select::AllButKnownBugs if known_bug(mode, &case).is_some() => {
                    skipped_known += 1;
                    continue;
                }
                Select::Named(name) if !case.name.contains(name) => continue,
                Select::KvmDeviation(bug) if case.kvm_bug.map(|b| b.why) != Some(bug.why) => {
                    continue;
                }
                _ => {}
            }
            let slot = mode.code_origin() + 0x100 + (n % 512) * 0x40;
            let setup = match case.setup(&env, slot, n * 0x1_0001) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{family}/{}: cannot assemble: {e}", case.name));
                    continue;
                }
            };
            let r = session.run_case(&setup);
            if optional && !probed {
                probed = true;
                if matches!(&r.hv.outcome, HvOutcome::Error(e) if e.starts_with("unsupported instruction"))
                {
                    loud(&format!(
                        "kvm_diff {mode:?}: family {family} skipped: hvemu does not emulate `{}` yet",
                        r.text
                    ));
                    break;
                }
            }
            if verbose() {
                loud(&format!(
                    "{:?} {:<60} {:<10} {}",
                    mode,
                    r.text,
                    match r.verdict {
                        Verdict::Agree => "AGREE",
                        Verdict::Disagree(_) => "DISAGREE",
                        Verdict::KvmCannotJudge(_) => "NO-JUDGE",
                    },
                    driver::describe_accesses(&r.kvm_accesses)
                ));
            }
            let what = format!(
                "{} [{}] `{}` (rip {:#x})",
                setup.label,
                outcome_kind(&r),
                r.text,
                r.rip
            );
            if let Some(bug) = case.kvm_bug {
                // KVM is wrong here: hvemu must do what the manuals say, and agree with KVM
                // on everything but the deviation.
                let mut bad = vec![];
                let hv_ok = match case.expect {
                    Expect::Completes => r.hv.outcome == HvOutcome::Completed,
                    Expect::Fault(v) => {
                        matches!(&r.hv.outcome, HvOutcome::Exception(e) if e.vector as u8 == v)
                    }
                };
                if !hv_ok {
                    bad.push(format!("hvemu did not {:?}", case.expect));
                }
                let element = case.instr.memory_size().size();
                if element > 0 {
                    for a in r.hv.accesses.iter().filter(|a| a.space == kvm::Space::Mmio) {
                        if a.size as usize > element {
                            bad.push(format!("hvemu access wider than the operand: {a:x?}"));
                        }
                    }
                }
                match &r.verdict {
                    Verdict::Disagree(d) => bad.extend(
                        d.iter()
                            .filter(|l| !bug.allow.iter().any(|p| l.starts_with(p)))
                            .cloned(),
                    ),
                    Verdict::Agree => loud(&format!("note: no KVM deviation in this mode: {what}")),
                    Verdict::KvmCannotJudge(_) => {}
                }
                if !bad.is_empty() {
                    failures.push(format!(
                        "{what} (KVM deviation case):\n      {}",
                        bad.join("\n      ")
                    ));
                }
                kvm_bugs.push(format!("{what}: {}", bug.why));
                reports.push(r);
                continue;
            }
            match &r.verdict {
                Verdict::Agree => {
                    let got = match &r.kvm {
                        KvmOutcome::Exception(rec, _) => Expect::Fault(rec.vector),
                        _ => Expect::Completes,
                    };
                    if got != case.expect {
                        failures.push(format!(
                            "{what}: both agree, but the case expected {:?}",
                            case.expect
                        ));
                    }
                }
                Verdict::Disagree(d) => {
                    failures.push(format!("{what}:\n      {}", d.join("\n      ")));
                }
                Verdict::KvmCannotJudge(why) => {
                    loud(&format!("KVM cannot judge {what}: {why}"));
                }
            }
            reports.push(r);
        }
    }
    let st = &session.stats;
    let forms: std::collections::BTreeSet<_> = st.forms.iter().map(|(c, _)| c.clone()).collect();
    loud(&format!(
        "kvm_diff {mode:?}: {} instructions, {} KVM device exits compared; {} agree, {} disagree, \
         {} faults, {} KVM cannot judge, {} known hvemu bugs skipped; {} forms ({} opcodes)",
        st.instructions,
        st.kvm_exits,
        st.agree,
        st.disagree,
        st.faults,
        st.kvm_cannot_judge,
        skipped_known,
        st.forms.len(),
        forms.len()
    ));
    loud(&format!(
        "  hvemu runs per exit-context variant: {:?}",
        st.variant_runs
    ));
    for b in &kvm_bugs {
        loud(&format!(
            "  KVM deviates (hvemu checked against the manuals): {b}"
        ));
    }
    Some(ModeRun { failures, reports })
}

fn check_mode(mode: Mode, test: &str) {
    let Some(run) = run_mode(mode, Select::AllButKnownBugs, test) else {
        return;
    };
    assert!(
        run.failures.is_empty(),
        "{mode:?}: {} disagreements:\n  {}",
        run.failures.len(),
        run.failures.join("\n  ")
    );
}

macro_rules! mode_tests {
    ($($name:ident => $mode:expr),* $(,)?) => {$(
        #[test]
        fn $name() {
            check_mode($mode, stringify!($name));
        }
    )*};
}

mode_tests! {
    diff_real => Mode::Real,
    diff_protected16 => Mode::Protected16,
    diff_protected32 => Mode::Protected32,
    diff_paged32 => Mode::Paged32,
    diff_pae32 => Mode::Pae32,
    diff_long64 => Mode::Long64,
    diff_compat32 => Mode::Compat32,
    diff_compat16 => Mode::Compat16,
    diff_user64 => Mode::User64,
    diff_user32 => Mode::User32,
}

/// Runs the named cases of `mode` and requires agreement (for the `#[ignore]`d test of an
/// hvemu bug: add the bug to `KNOWN_HVEMU_BUGS` and a test calling this with the case name).
#[allow(dead_code)]
fn check_named(mode: Mode, name: &str, test: &str) {
    let Some(run) = run_mode(mode, Select::Named(name), test) else {
        return;
    };
    assert!(
        !run.reports.is_empty(),
        "no case of {mode:?} matches {name:?}"
    );
    assert!(
        run.failures.is_empty(),
        "{mode:?}: {}",
        run.failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// KVM deviations: one test each, asserting hvemu's behaviour (the manuals'), with KVM's
// discrepancy described in the comment and in the `KvmBug` it runs. The same cases also run
// in the per-mode tests above.
// ---------------------------------------------------------------------------------------------

/// Runs the cases of `modes` marked with `bug`: hvemu must do what the case expects (the
/// manuals), and may disagree with KVM only in the way the deviation describes.
fn check_kvm_deviation(modes: &[Mode], bug: &KvmBug, test: &str) {
    let mut ran = 0;
    for &mode in modes {
        let Some(run) = run_mode(mode, Select::KvmDeviation(bug), test) else {
            continue;
        };
        assert!(
            run.failures.is_empty(),
            "{mode:?}: {}",
            run.failures.join("\n  ")
        );
        let deviating = run
            .reports
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Disagree(_)))
            .count();
        if deviating == 0 {
            loud(&format!("{test}: KVM no longer deviates in {mode:?}"));
        }
        ran += run.reports.len();
    }
    if kvm::kvm_available() {
        assert!(ran > 0, "{test}: no case exercises this deviation");
    }
}

/// `66 63 /r` (MOVSXD r16, r/m16) reads 2 bytes; KVM's emulate.c reads 4 (SrcMem32).
#[test]
fn kvm_deviation_movsxd_r16_reads_two_bytes() {
    check_kvm_deviation(
        &[Mode::Long64, Mode::User64],
        &cases::KVM_MOVSXD16,
        "kvm_deviation_movsxd_r16_reads_two_bytes",
    );
}

/// `REX.W 8C /r` to memory writes 16 bits; KVM's emulate.c writes 8 bytes.
#[test]
fn kvm_deviation_sreg_store_with_rex_w_writes_two_bytes() {
    check_kvm_deviation(
        &[Mode::Long64, Mode::User64],
        &cases::KVM_SREG_STORE64,
        "kvm_deviation_sreg_store_with_rex_w_writes_two_bytes",
    );
}

/// REP INS into MMIO: one port read and one element-sized store per iteration; KVM merges
/// stores (DF=0) or re-reads the port and stores stale data (DF=1).
#[test]
fn kvm_deviation_rep_ins_into_mmio() {
    check_kvm_deviation(
        &[
            Mode::Real,
            Mode::Protected16,
            Mode::Protected32,
            Mode::Long64,
            Mode::Compat32,
            Mode::Compat16,
            Mode::User64,
            Mode::User32,
        ],
        &cases::KVM_REP_INS_MMIO,
        "kvm_deviation_rep_ins_into_mmio",
    );
}

/// A write fault is found before the device sees the read (RMW, MOVS, INS); KVM reads first.
#[test]
fn kvm_deviation_no_read_before_a_write_fault() {
    check_kvm_deviation(
        &[Mode::Long64, Mode::Compat32, Mode::User64],
        &cases::KVM_READS_BEFORE_WRITE_FAULT,
        "kvm_deviation_no_read_before_a_write_fault",
    );
}

/// An access crossing the canonical boundary is #GP(0); KVM walks the non-canonical page.
#[test]
fn kvm_deviation_canonical_straddle_is_gp() {
    check_kvm_deviation(
        &[Mode::Long64, Mode::User64],
        &cases::KVM_CANONICAL_STRADDLE,
        "kvm_deviation_canonical_straddle_is_gp",
    );
}

/// CPL 3 with IOPL 3 may use any port; kvm-pvm raises #GP in 64-bit user mode.
#[test]
fn kvm_deviation_iopl3_allows_ports_at_cpl3() {
    check_kvm_deviation(
        &[Mode::User64],
        &cases::KVM_IOPL3_USER64,
        "kvm_deviation_iopl3_allows_ports_at_cpl3",
    );
}

/// #AC at CPL 3 with CR0.AM and RFLAGS.AC; emulate.c never raises it.
#[test]
fn kvm_deviation_alignment_check() {
    check_kvm_deviation(
        &[Mode::User32, Mode::User64],
        &cases::KVM_NO_AC,
        "kvm_deviation_alignment_check",
    );
}

/// Both I/O bitmap bytes must lie within the TSS limit; KVM checks only the first.
#[test]
fn kvm_deviation_io_bitmap_second_byte_within_limit() {
    check_kvm_deviation(
        &[Mode::User32, Mode::User64],
        &cases::KVM_IOPB_LIMIT,
        "kvm_deviation_io_bitmap_second_byte_within_limit",
    );
}

/// A 16-bit TSS has no I/O bitmap; KVM consults one anyway.
#[test]
fn kvm_deviation_16bit_tss_has_no_io_bitmap() {
    check_kvm_deviation(
        &[Mode::User32, Mode::User64],
        &cases::KVM_TSS16_BITMAP,
        "kvm_deviation_16bit_tss_has_no_io_bitmap",
    );
}

/// MOV m16, CS at CPL 3 stores the guest's selector; kvm-pvm stores the host's (0x33).
#[test]
fn kvm_deviation_user_cs_selector() {
    check_kvm_deviation(
        &[Mode::User64],
        &cases::KVM_PVM_USER_CS,
        "kvm_deviation_user_cs_selector",
    );
}

// ---------------------------------------------------------------------------------------------
// A natural program, single-stepped (CPL 0): the driver finds the instruction boundaries.
// ---------------------------------------------------------------------------------------------

/// A small "driver" loop: polls an MMIO status register, copies a buffer to MMIO with
/// REP MOVSD, prints through a port with REP OUTSB, reads a port into memory with INSW,
/// bumps an MMIO counter with ADD, and reads a device ID with MOVZX.
fn natural_program(g: &kvm::Guest) -> iced_x86::code_asm::CodeAssembler {
    use iced_x86::code_asm::*;
    let mut a = g.asm();
    let mmio = if g.mode == Mode::Real {
        0
    } else {
        layout::HIGH_MMIO as u32
    };
    if g.mode == Mode::Real {
        a.mov(ax, (layout::LOW_MMIO >> 4) as u32).unwrap();
        a.mov(es, ax).unwrap();
        a.mov(fs, ax).unwrap();
    }
    let sixty_four = g.mode.bitness() == 64;
    macro_rules! m {
        ($size:ident, $off:expr) => {
            if sixty_four {
                $size(rbx + $off)
            } else if g.mode == Mode::Real {
                $size(ebx + $off).fs()
            } else {
                $size(ebx + $off)
            }
        };
    }
    a.mov(ebx, mmio).unwrap();
    let mut poll = a.create_label();
    a.mov(ecx, 3u32).unwrap();
    a.set_label(&mut poll).unwrap();
    a.mov(eax, m!(dword_ptr, 0x10)).unwrap(); // status
    a.add(m!(dword_ptr, 0x20), eax).unwrap(); // counter += status
    a.dec(ecx).unwrap();
    a.jnz(poll).unwrap();
    a.movzx(edx, m!(word_ptr, 0x32)).unwrap();
    a.mov(m!(qword_ptr_or_dword, 0x40), eax).ok();
    a.mov(
        esi,
        if g.mode == Mode::Real {
            0x2000
        } else {
            layout::DATA as u32
        },
    )
    .unwrap();
    a.mov(edi, mmio + 0x100).unwrap();
    a.mov(ecx, 4u32).unwrap();
    a.cld().unwrap();
    a.rep().movsd().unwrap();
    a.mov(dx, 0x3F8u32).unwrap();
    a.mov(
        esi,
        if g.mode == Mode::Real {
            0x2000
        } else {
            layout::DATA as u32
        },
    )
    .unwrap();
    a.mov(ecx, 5u32).unwrap();
    a.rep().outsb().unwrap();
    a.mov(
        edi,
        if g.mode == Mode::Real {
            0x2100
        } else {
            layout::DATA as u32 + 0x100
        },
    )
    .unwrap();
    a.insw().unwrap();
    a.out(0x80, al).unwrap();
    a.in_(al, 0x61).unwrap();
    a.std().unwrap();
    a.mov(edi, mmio + 0x20C).unwrap();
    a.mov(ecx, 3u32).unwrap();
    a.rep().stosd().unwrap();
    a.cld().unwrap();
    a.hlt().unwrap();
    a
}

#[allow(non_snake_case)]
fn qword_ptr_or_dword<M: Into<iced_x86::code_asm::AsmMemoryOperand>>(
    m: M,
) -> iced_x86::code_asm::AsmMemoryOperand {
    iced_x86::code_asm::dword_ptr(m)
}

fn check_program(mode: Mode, test: &str) {
    let Some(kvm) = kvm::require_kvm_or_skip(test) else {
        return;
    };
    let Some(mut g) = kvm::guest_or_skip(&kvm, mode, test) else {
        return;
    };
    let data = if mode == Mode::Real {
        0x2_0000
    } else {
        layout::DATA
    };
    g.mem.write(data, b"hello, MMIO!....");
    let mut a = natural_program(&g);
    g.load_asm(&mut a);
    if mode == Mode::Real {
        // DS = 0x1000 would put DATA out of reach: use DS = 0x1000 base 0x10000, SI 0x2000.
        let mut s = g.vcpu.sregs();
        s.ds = kvm::tables::real_mode_segment(0x1000, false);
        g.vcpu.set_sregs(&s);
        g.mem.write(0x1_2000, b"hello, MMIO!....");
    }
    let mut session = Session::new(&mut g, Options::default());
    let reports = session.run_program(500);
    let failures: Vec<String> = reports
        .iter()
        .filter(|r| !r.agrees())
        .map(|r| format!("`{}` at {:#x}: {:?}", r.text, r.rip, r.verdict))
        .collect();
    loud(&format!(
        "kvm_diff program {mode:?}: {} instructions with device accesses, {} KVM exits compared",
        reports.len(),
        session.stats.kvm_exits
    ));
    assert!(
        reports.len() >= 12,
        "{mode:?}: only {} compared",
        reports.len()
    );
    assert!(
        failures.is_empty(),
        "{mode:?}:\n  {}",
        failures.join("\n  ")
    );
    // The program ran to its HLT.
    assert!(!g.in_exception_handler(), "{mode:?}: faulted");
}

#[test]
fn program_single_step_long64() {
    check_program(Mode::Long64, "program_single_step_long64");
}

#[test]
fn program_single_step_protected32() {
    check_program(Mode::Protected32, "program_single_step_protected32");
}

#[test]
fn program_single_step_real() {
    check_program(Mode::Real, "program_single_step_real");
}

// ---------------------------------------------------------------------------------------------
// Driver self-checks (no KVM needed)
// ---------------------------------------------------------------------------------------------

#[test]
fn segment_conversion_follows_the_platform_layout() {
    let mut s = kvm::tables::segment(layout::sel::USER_CS64 | 3);
    let r = driver::segment_register(&s);
    // type 11, S, DPL 3, P, L, G.
    assert_eq!(
        r.attributes.bits(),
        0xB | 1 << 4 | 3 << 5 | 1 << 7 | 1 << 13 | 1 << 15
    );
    assert_eq!(r.limit, 0xFFFF_FFFF);
    s.unusable = 1;
    assert!(!driver::segment_register(&s).present());
}

#[test]
fn generators_assemble_in_every_mode() {
    // Every generated case assembles (cases are built from the mode's base registers).
    let Some(kvm) = kvm::require_kvm_or_skip("generators_assemble_in_every_mode") else {
        return;
    };
    for mode in Mode::ALL {
        let Ok(g) = kvm::Guest::try_new(&kvm, mode) else {
            continue;
        };
        let env = Env::new(mode, g.vcpu.sregs());
        let mut rng = Rng::new(1);
        for (family, generate, _) in FAMILIES {
            for (k, c) in generate(&env, &mut rng).into_iter().enumerate() {
                c.setup(&env, mode.code_origin() + 0x100, k as u64)
                    .unwrap_or_else(|e| panic!("{mode:?}/{family}: {e}"));
            }
        }
    }
}
