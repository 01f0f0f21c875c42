//! Linux KVM guest harness for integration tests (x86-64 hosts only).
//!
//! Include with `mod kvm;` from a test crate that is itself gated with
//! `#![cfg(all(target_os = "linux", target_arch = "x86_64"))]`. It does not
//! use the `hvemu` library: it provides a reference execution (real KVM)
//! that other implementations can be compared against.
//!
//! Typical use:
//!
//! ```ignore
//! let Some(kvm) = kvm::require_kvm_or_skip("my_test") else { return };
//! let Some(mut g) = kvm::guest_or_skip(&kvm, Mode::Long64, "my_test") else { return };
//! let mut a = g.asm();                      // iced CodeAssembler, mode's bitness
//! a.mov(eax, dword_ptr(0xC000_0000u64))?;   // HIGH_MMIO: unbacked, exits
//! a.hlt()?;
//! g.load_asm(&mut a);                       // at layout::CODE, RIP set
//! let mut bus = Bus::new().with_mmio(layout::HIGH_MMIO, 0x1000);
//! assert_eq!(g.run_with(&mut bus), Exit::Hlt);
//! // bus.log: every access; g.vcpu.regs(); g.exception_record() ...
//! ```
//!
//! Or drive exits by hand with `g.run_until_exit()` and answer MMIO reads and
//! IN exits with `g.vcpu.complete_read(..)` before running again.
//!
//! Guest-physical layout: see [`layout`]. RAM is 4 MiB at GPA 0 with an MMIO
//! hole at 0xA0000..0xC0000; everything from 4 MiB up (notably 0xC000_0000)
//! is MMIO too. Every protected/long mode has a GDT, an IDT whose handlers
//! write an [`ExceptionRecord`] at [`layout::EXC_RECORD`] and then HLT, and a
//! TSS; real mode has an IVT with the same handlers.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
// Each test crate uses a different subset of the harness.
#![allow(dead_code, unused_imports)]

pub mod devices;
pub mod guest;
pub mod layout;
pub mod memory;
pub mod paging;
pub mod tables;
pub mod vcpu;

pub use devices::{Access, Bus, ByteDevice, FifoPort, Space};
pub use guest::{ExceptionRecord, Guest, GuestConfig, Mode};
pub use kvm_ioctls::Kvm;
pub use memory::GuestMemory;
pub use paging::{PageFlags, PageTables, PagingKind};
pub use vcpu::{Exit, Vcpu};

/// Set to `1` to turn a missing `/dev/kvm` into a test failure instead of a skip.
pub const REQUIRE_ENV: &str = "HVEMU_REQUIRE_KVM";

/// True if `/dev/kvm` can be opened.
pub fn kvm_available() -> bool {
    Kvm::new().is_ok()
}

/// Opens `/dev/kvm`. If that fails, prints `SKIPPED (no /dev/kvm): <test>` to
/// stderr and returns None, or panics when `HVEMU_REQUIRE_KVM=1`.
pub fn require_kvm_or_skip(test_name: &str) -> Option<Kvm> {
    match Kvm::new() {
        Ok(kvm) => Some(kvm),
        Err(e) => {
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{test_name}: {REQUIRE_ENV}=1 but /dev/kvm cannot be opened: {e}");
            }
            loud(&format!("SKIPPED (no /dev/kvm): {test_name} ({e})"));
            None
        }
    }
}

/// Set to `1` to turn "host KVM cannot run this mode" into a failure.
pub const REQUIRE_MODES_ENV: &str = "HVEMU_REQUIRE_ALL_KVM_MODES";

/// Builds a guest in `mode`, or prints `SKIPPED (host KVM cannot run <mode>)`
/// and returns None when KVM rejects the mode (unless `HVEMU_REQUIRE_ALL_KVM_MODES=1`).
pub fn guest_or_skip(kvm: &Kvm, mode: Mode, test_name: &str) -> Option<Guest> {
    match Guest::try_new(kvm, mode) {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var(REQUIRE_MODES_ENV).as_deref() == Ok("1") {
                panic!("{test_name}: {e}");
            }
            loud(&format!(
                "SKIPPED (host KVM cannot run {mode:?}): {test_name}: {e}"
            ));
            None
        }
    }
}

/// Writes to the real stderr: `eprintln!` output of passing tests is captured
/// by the test harness, and a skip must stay visible.
fn loud(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}
