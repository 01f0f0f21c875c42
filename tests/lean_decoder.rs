//! The `lean-decoder` feature compiles iced-x86's VEX/EVEX/XOP tables out. Whatever the build,
//! hvemu asks the linked decoder what it has, and an instruction it cannot decode for that
//! reason fails as `EncodingUnavailable`, not as undecodable bytes. `.ci/run` runs this file
//! in both configurations.

mod support;

use hvemu::*;
use support::*;

const MMIO: u64 = 0xFEE0_0000;

fn avx_machine() -> Machine {
    let mut m = Machine::long();
    m.regs.xcr0 = 0xE7; // x87, SSE, AVX and AVX-512 state enabled
    m.regs.cr[3] |= 1 << 18; // CR4.OSXSAVE
    m.set_gpr(0, MMIO);
    m
}

#[test]
fn the_decoder_reports_what_this_build_has() {
    let support = decoder_support();
    let lean = cfg!(feature = "lean-decoder");
    assert_eq!(support.vex, !lean);
    assert_eq!(support.evex, !lean);
    assert_eq!(support.xop, !lean);
    println!("decoder support in this build: {support:?}");
}

#[test]
fn vex_and_evex_moves_need_their_tables() {
    for bytes in [
        &[0xC5, 0xFE, 0x7F, 0x00][..],             // vmovdqu [rax], ymm0
        &[0x62, 0xF1, 0xFE, 0x48, 0x7F, 0x00][..], // vmovdqu32 [rax], zmm0
        &[0x67, 0xC4, 0xE1, 0x7A, 0x7F, 0x00][..], // prefixed VEX3 vmovdqu [eax], xmm0
    ] {
        let mut m = avx_machine();
        let r = m.mmio(bytes, MemoryAccessType::Write, MMIO).result;
        if cfg!(feature = "lean-decoder") {
            assert!(
                matches!(r, Err(EmulationError::EncodingUnavailable { .. })),
                "{bytes:02x?}: {r:?}"
            );
            assert!(m.log.is_empty(), "nothing may happen: {:?}", m.log);
        } else {
            assert_eq!(r, Ok(Completion::Complete), "{bytes:02x?}");
        }
    }
}

#[test]
fn legacy_forms_sharing_the_escape_bytes_still_decode() {
    // In 32-bit code C5 with a memory ModRM is LDS and 62 is BOUND: not VEX/EVEX, so never
    // `EncodingUnavailable` (hvemu does not emulate them: `Unsupported`).
    for bytes in [&[0xC5, 0x03][..], &[0x62, 0x03][..]] {
        let mut m = Machine::protected32();
        m.set_gpr(3, 0x1000);
        let r = m.mmio(bytes, MemoryAccessType::Read, 0x1000).result;
        assert!(
            matches!(r, Err(EmulationError::Unsupported { .. })),
            "{bytes:02x?}: {r:?}"
        );
    }
    // And every legacy MOV still works.
    let mut m = avx_machine();
    m.mmio(&[0x89, 0x18], MemoryAccessType::Write, MMIO).ok();
}
