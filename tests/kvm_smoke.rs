//! Proves the KVM harness in `tests/kvm/` works in every supported CPU mode.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod kvm;

use iced_x86::code_asm::*;
use kvm::layout;
use kvm::{Exit, Guest, Mode};

const MMIO_W: u64 = 0x10;
const MMIO_R: u64 = 0x20;
const PORT_OUT: u16 = 0x510;
const PORT_IN: u16 = 0x511;
const PORT_STR: u16 = 0x512;

/// MMIO base reachable from `mode`: real mode uses the low hole via a segment.
fn mmio_base(mode: Mode) -> u64 {
    if mode == Mode::Real {
        layout::LOW_MMIO
    } else {
        layout::HIGH_MMIO
    }
}

/// MMIO write, MMIO read, OUT, IN, REP OUTSB, HLT.
fn io_program(g: &Guest) -> CodeAssembler {
    let mode = g.mode;
    let mut a = g.asm();
    let (mw, mr) = if mode.bitness() == 64 {
        (
            dword_ptr(rbx + MMIO_W as i32),
            dword_ptr(rbx + MMIO_R as i32),
        )
    } else if mode == Mode::Real {
        (
            dword_ptr(ebx + MMIO_W as i32).fs(),
            dword_ptr(ebx + MMIO_R as i32).fs(),
        )
    } else {
        (
            dword_ptr(ebx + MMIO_W as i32),
            dword_ptr(ebx + MMIO_R as i32),
        )
    };
    if mode == Mode::Real {
        a.mov(ax, (layout::LOW_MMIO >> 4) as u32).unwrap();
        a.mov(fs, ax).unwrap();
        a.xor(ebx, ebx).unwrap();
    } else {
        a.mov(ebx, layout::HIGH_MMIO as u32).unwrap();
    }
    a.mov(eax, 0x1122_3344u32).unwrap();
    a.mov(mw, eax).unwrap();
    a.mov(edi, mr).unwrap();
    a.mov(dx, PORT_OUT as u32).unwrap();
    a.mov(al, 0x5A).unwrap();
    a.out(dx, al).unwrap();
    a.mov(dx, PORT_IN as u32).unwrap();
    a.in_(al, dx).unwrap();
    a.mov(esi, layout::LOW_SCRATCH as u32).unwrap();
    a.mov(ecx, 3).unwrap();
    a.mov(dx, PORT_STR as u32).unwrap();
    a.rep().outsb().unwrap();
    end_program(&mut a, mode);
    a
}

/// Every program ends in HLT. At CPL 3 that raises #GP(0), whose ring-0
/// handler records it and halts. (`int n` is no alternative: kvm-pvm cannot
/// emulate software interrupts outside real mode.)
fn end_program(a: &mut CodeAssembler, _mode: Mode) {
    a.hlt().unwrap();
}

fn check_io_program(mode: Mode, test: &str) {
    let Some(kvm) = kvm::require_kvm_or_skip(test) else {
        return;
    };
    let Some(mut g) = kvm::guest_or_skip(&kvm, mode, test) else {
        return;
    };
    g.mem.write(layout::LOW_SCRATCH, b"KVM");
    let code = g.load_asm(&mut io_program(&g));
    let base = mmio_base(mode);

    let e = g.run_until_exit();
    assert_eq!(
        e,
        Exit::Mmio {
            gpa: base + MMIO_W,
            len: 4,
            is_write: true,
            data: [0x44, 0x33, 0x22, 0x11, 0, 0, 0, 0]
        },
        "{mode:?}"
    );
    let e = g.run_until_exit();
    assert_eq!(
        e,
        Exit::Mmio {
            gpa: base + MMIO_R,
            len: 4,
            is_write: false,
            data: [0; 8]
        },
        "{mode:?}"
    );
    g.vcpu.complete_read_value(0xA1B2_C3D4);
    let e = g.run_until_exit();
    assert_eq!(
        e,
        Exit::Io {
            port: PORT_OUT,
            size: 1,
            is_write: true,
            count: 1,
            data: vec![0x5A]
        },
        "{mode:?}"
    );
    let e = g.run_until_exit();
    assert_eq!(
        e,
        Exit::Io {
            port: PORT_IN,
            size: 1,
            is_write: false,
            count: 1,
            data: vec![0]
        },
        "{mode:?}"
    );
    g.vcpu.complete_read(&[0x77]);
    // REP OUTS may be split into any number of exits; collect the elements.
    let mut out = Vec::new();
    let last = loop {
        match g.run_until_exit() {
            Exit::Io {
                port: PORT_STR,
                size: 1,
                is_write: true,
                data,
                ..
            } => out.extend(data),
            other => break other,
        }
    };
    assert_eq!(out, b"KVM", "{mode:?}");
    assert_eq!(last, Exit::Hlt, "{mode:?}");
    let end = mode.code_origin() + code.len() as u64;
    if mode.cpl() == 3 {
        let rec = g.exception_record().expect("#GP record from HLT at CPL 3");
        assert_eq!(
            (rec.vector, rec.error_code, rec.count),
            (13, 0, 1),
            "{mode:?}: {rec:x?}"
        );
        assert_eq!(rec.rip, end - 1, "{mode:?}: #GP points at the HLT");
        assert_eq!(rec.cs, kvm::layout::sel::USER_CS64 | 3, "{mode:?}");
        assert!(g.in_exception_handler());
    } else {
        assert_eq!(g.exception_record(), None, "{mode:?}: unexpected exception");
        assert_eq!(g.vcpu.rip(), end, "{mode:?}: RIP after HLT");
    }

    let r = g.vcpu.regs();
    assert_eq!(r.rax as u32, 0x1122_3377, "{mode:?}: AL from IN");
    assert_eq!(r.rdi, 0xA1B2_C3D4, "{mode:?}: MMIO read value");
    assert_eq!(r.rsi as u32, layout::LOW_SCRATCH as u32 + 3, "{mode:?}");
    assert_eq!(r.rcx as u32, 0, "{mode:?}");
}

macro_rules! io_program_tests {
    ($($name:ident => $mode:expr),* $(,)?) => {$(
        #[test]
        fn $name() {
            check_io_program($mode, stringify!($name));
        }
    )*};
}

io_program_tests! {
    io_program_real => Mode::Real,
    io_program_protected16 => Mode::Protected16,
    io_program_protected32 => Mode::Protected32,
    io_program_paged32 => Mode::Paged32,
    io_program_pae32 => Mode::Pae32,
    io_program_long64 => Mode::Long64,
    io_program_compat32 => Mode::Compat32,
    io_program_compat16 => Mode::Compat16,
    io_program_user64 => Mode::User64,
}
