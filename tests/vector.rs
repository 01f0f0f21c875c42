//! Vector moves on MMIO through the public API — MMX, SSE, AVX (VEX) and AVX-512 (EVEX), loads
//! and stores — as "state, bytes, expected state": which bytes the device sees, what the
//! register holds afterwards (including the bits above the destination), the alignment and
//! opmask rules, and the register names the monitor is asked for.
//!
//! (The host CPU checks the same forms over random data in `oracle_vector.rs`.)

mod support;

use hvemu::*;
use iced_x86::code_asm::*;
use support::*;

const MMIO: u64 = 0xFEE0_0000;
const RBX: usize = 3;

/// XCR0 with x87, SSE and AVX state.
const XCR0_AVX: u64 = 0x07;
/// XCR0 with x87, SSE, AVX and all AVX-512 state (opmask, ZMM_Hi256, Hi16_ZMM).
const XCR0_AVX512: u64 = 0xE7;

fn long(f: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>) -> Vec<u8> {
    asm(64, f)
}

/// The same, forcing EVEX encodings where VEX would do.
fn evex(f: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>) -> Vec<u8> {
    asm(64, |a| {
        a.set_prefer_vex(false);
        f(a)
    })
}

/// `len` bytes counting up from `start`.
fn seq(start: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| start.wrapping_add(i as u8)).collect()
}

/// A 64-bit machine at RIP 0x1000 with RBX = `addr`, the given XCR0, every vector register
/// filled with 0xAA and the MMIO bytes at `addr` counting up from 0x10.
fn machine(addr: u64, xcr0: u64) -> Machine {
    let mut m = Machine::long();
    m.regs.rip = 0x1000;
    m.regs.xcr0 = xcr0;
    m.set_gpr(RBX, addr);
    for n in 0..32 {
        m.regs.set_vector(n, &[0xAA; 64]);
    }
    m.write_phys(addr, &seq(0x10, 64));
    m
}

/// Emulates `bytes` as the exit of an access at `addr` (its GVA and GPA).
fn exit(m: &mut Machine, bytes: &[u8], access: MemoryAccessType) -> Outcome {
    let addr = m.gpr(RBX);
    let ctx = MemoryAccessContext::new(bytes, access, addr).with_gva(addr);
    m.mmio_ctx(bytes.len() as u8, &ctx)
}

fn load(m: &mut Machine, bytes: &[u8]) -> Outcome {
    exit(m, bytes, MemoryAccessType::Read)
}

fn store(m: &mut Machine, bytes: &[u8]) -> Outcome {
    exit(m, bytes, MemoryAccessType::Write)
}

/// The names the one `set_registers` call wrote, sorted.
fn set_names(m: &Machine) -> Vec<RegisterName> {
    let mut names: Vec<RegisterName> = m
        .log
        .iter()
        .find_map(|c| match c {
            Call::Set(v) => Some(v.iter().map(|(n, _)| *n).collect()),
            _ => None,
        })
        .expect("one set_registers call");
    names.sort();
    names
}

/// The names the first `get_registers` call asked for.
fn got_names(m: &Machine) -> Vec<RegisterName> {
    m.log
        .iter()
        .find_map(|c| match c {
            Call::Get(v) => Some(v.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// The vector, x87 and extension registers among them (what the vector family adds to the
/// address registers).
fn vector_names(m: &Machine) -> Vec<RegisterName> {
    got_names(m)
        .into_iter()
        .filter(|n| n.0 >= 0x1000 || *n == RegisterName::XCR0)
        .collect()
}

fn xmm(n: u8) -> RegisterName {
    RegisterName::xmm(n).unwrap()
}

fn sorted(mut names: Vec<RegisterName>) -> Vec<RegisterName> {
    names.sort();
    names
}

/// `low` followed by `fill` up to 64 bytes.
fn padded(low: &[u8], fill: u8) -> Vec<u8> {
    let mut v = low.to_vec();
    v.resize(64, fill);
    v
}

// ---- legacy SSE ---------------------------------------------------------------------------

#[test]
fn movups_load_fills_xmm_keeps_the_bits_above_and_costs_one_get_one_memory_one_set() {
    let mut m = machine(MMIO, XCR0_AVX512);
    let bytes = long(|a| a.movups(xmm3, xmmword_ptr(rbx)));
    assert_eq!(bytes, [0x0F, 0x10, 0x1B]);
    load(&mut m, &bytes).ok();
    assert_eq!(m.memory_calls(), [(MMIO, false, seq(0x10, 16))]);
    assert_eq!(m.regs.vector(3).to_vec(), padded(&seq(0x10, 16), 0xAA));
    assert_eq!(set_names(&m), sorted(vec![RegisterName::RIP, xmm(3)]));
    // Nothing vector is read: the 16 bytes replace all of XMM3.
    assert_eq!(vector_names(&m), []);
    assert!(got_names(&m).contains(&RegisterName::RBX));
    assert_eq!((m.gets(), m.sets()), (1, 1));
    assert_eq!(m.regs.rip, 0x1003);
    assert!(m.translations().is_empty(), "the exit's GPA must be used");
}

#[test]
fn sixteen_byte_legacy_loads_and_stores() {
    let loads: [(&str, Vec<u8>); 8] = [
        ("movups", long(|a| a.movups(xmm5, xmmword_ptr(rbx)))),
        ("movupd", long(|a| a.movupd(xmm5, xmmword_ptr(rbx)))),
        ("movdqu", long(|a| a.movdqu(xmm5, xmmword_ptr(rbx)))),
        ("lddqu", long(|a| a.lddqu(xmm5, xmmword_ptr(rbx)))),
        ("movaps", long(|a| a.movaps(xmm5, xmmword_ptr(rbx)))),
        ("movapd", long(|a| a.movapd(xmm5, xmmword_ptr(rbx)))),
        ("movdqa", long(|a| a.movdqa(xmm5, xmmword_ptr(rbx)))),
        ("movntdqa", long(|a| a.movntdqa(xmm5, xmmword_ptr(rbx)))),
    ];
    for (name, bytes) in loads {
        let mut m = machine(MMIO, XCR0_AVX);
        load(&mut m, &bytes).ok();
        assert_eq!(
            m.regs.vector(5).to_vec(),
            padded(&seq(0x10, 16), 0xAA),
            "{name}"
        );
    }
    let stores: [(&str, Vec<u8>); 6] = [
        ("movups", long(|a| a.movups(xmmword_ptr(rbx), xmm5))),
        ("movupd", long(|a| a.movupd(xmmword_ptr(rbx), xmm5))),
        ("movdqu", long(|a| a.movdqu(xmmword_ptr(rbx), xmm5))),
        ("movaps", long(|a| a.movaps(xmmword_ptr(rbx), xmm5))),
        ("movntps", long(|a| a.movntps(xmmword_ptr(rbx), xmm5))),
        ("movntdq", long(|a| a.movntdq(xmmword_ptr(rbx), xmm5))),
    ];
    for (name, bytes) in stores {
        let mut m = machine(MMIO, XCR0_AVX);
        m.regs.set_vector(5, &seq(0x80, 64).try_into().unwrap());
        store(&mut m, &bytes).ok();
        assert_eq!(m.memory_calls(), [(MMIO, true, seq(0x80, 16))], "{name}");
        assert_eq!(set_names(&m), [RegisterName::RIP], "{name}");
    }
}

#[test]
fn movss_movsd_movd_movq_loads_zero_to_bit_127_and_keep_the_bits_above() {
    let cases: [(&str, Vec<u8>, usize); 6] = [
        ("movss", long(|a| a.movss(xmm3, dword_ptr(rbx))), 4),
        // The SSE2 MOVSD, not the string instruction of the same mnemonic.
        ("movsd", vec![0xF2, 0x0F, 0x10, 0x1B], 8),
        ("movd xmm, m32", long(|a| a.movd(xmm3, dword_ptr(rbx))), 4),
        (
            "movq xmm, m64 (66 REX.W 0F 6E)",
            vec![0x66, 0x48, 0x0F, 0x6E, 0x1B],
            8,
        ),
        ("movq xmm, m64 (F3 0F 7E)", vec![0xF3, 0x0F, 0x7E, 0x1B], 8),
        (
            "movq xmm, m64 (code_asm)",
            long(|a| a.movq(xmm3, qword_ptr(rbx))),
            8,
        ),
    ];
    for (name, bytes, size) in cases {
        let mut m = machine(MMIO, XCR0_AVX512);
        load(&mut m, &bytes).ok();
        let mut expected = seq(0x10, size);
        expected.resize(16, 0);
        expected.resize(64, 0xAA);
        assert_eq!(m.regs.vector(3).to_vec(), expected, "{name}");
        assert_eq!(m.memory_calls(), [(MMIO, false, seq(0x10, size))], "{name}");
        assert_eq!(
            set_names(&m),
            sorted(vec![RegisterName::RIP, xmm(3)]),
            "{name}"
        );
    }
}

#[test]
fn partial_legacy_stores_write_only_their_bytes() {
    let cases: [(&str, Vec<u8>, Vec<u8>); 9] = [
        (
            "movss",
            long(|a| a.movss(dword_ptr(rbx), xmm3)),
            seq(0x80, 4),
        ),
        ("movsd", vec![0xF2, 0x0F, 0x11, 0x1B], seq(0x80, 8)),
        (
            "movd m32, xmm",
            long(|a| a.movd(dword_ptr(rbx), xmm3)),
            seq(0x80, 4),
        ),
        (
            "movq m64, xmm (66 REX.W 0F 7E)",
            vec![0x66, 0x48, 0x0F, 0x7E, 0x1B],
            seq(0x80, 8),
        ),
        (
            "movq m64, xmm (66 0F D6)",
            vec![0x66, 0x0F, 0xD6, 0x1B],
            seq(0x80, 8),
        ),
        (
            "movlps",
            long(|a| a.movlps(qword_ptr(rbx), xmm3)),
            seq(0x80, 8),
        ),
        (
            "movlpd",
            long(|a| a.movlpd(qword_ptr(rbx), xmm3)),
            seq(0x80, 8),
        ),
        (
            "movhps",
            long(|a| a.movhps(qword_ptr(rbx), xmm3)),
            seq(0x88, 8),
        ),
        (
            "movhpd",
            long(|a| a.movhpd(qword_ptr(rbx), xmm3)),
            seq(0x88, 8),
        ),
    ];
    for (name, bytes, stored) in cases {
        let mut m = machine(MMIO, XCR0_AVX);
        m.regs.set_vector(3, &seq(0x80, 64).try_into().unwrap());
        store(&mut m, &bytes).ok();
        assert_eq!(m.memory_calls(), [(MMIO, true, stored)], "{name}");
        // The source is read as the platform's XMM3, nothing wider.
        assert!(got_names(&m).contains(&xmm(3)), "{name}");
    }
}

#[test]
fn movlps_movhps_loads_keep_the_other_half() {
    let low = long(|a| a.movlps(xmm3, qword_ptr(rbx)));
    let high = long(|a| a.movhps(xmm3, qword_ptr(rbx)));
    let mut m = machine(MMIO, XCR0_AVX);
    m.regs.set_vector(3, &seq(0x80, 64).try_into().unwrap());
    load(&mut m, &low).ok();
    let mut expected = seq(0x10, 8);
    expected.extend(seq(0x88, 56));
    assert_eq!(m.regs.vector(3).to_vec(), expected, "movlps");

    let mut m = machine(MMIO, XCR0_AVX);
    m.regs.set_vector(3, &seq(0x80, 64).try_into().unwrap());
    load(&mut m, &high).ok();
    let mut expected = seq(0x80, 8);
    expected.extend(seq(0x10, 8));
    expected.extend(seq(0x90, 48));
    assert_eq!(m.regs.vector(3).to_vec(), expected, "movhps");
    assert_eq!(vector_names(&m), [xmm(3)]);
}

// ---- VEX ------------------------------------------------------------------------------------

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn vex_128_load_zeroes_everything_above_bit_127_as_far_as_xcr0_enables_state() {
    let bytes = long(|a| a.vmovups(xmm3, xmmword_ptr(rbx)));
    assert_eq!(bytes, [0xC5, 0xF8, 0x10, 0x1B]);

    // AVX only: the YMM view is written (bits 128–255 zero); ZMM_Hi256 is not state.
    let mut m = machine(MMIO, XCR0_AVX);
    load(&mut m, &bytes).ok();
    let mut expected = padded(&seq(0x10, 16), 0);
    expected[32..].fill(0xAA);
    assert_eq!(m.regs.vector(3).to_vec(), expected);
    assert_eq!(
        set_names(&m),
        sorted(vec![RegisterName::RIP, RegisterName::ymm(3).unwrap()])
    );
    assert!(got_names(&m).contains(&RegisterName::XCR0));

    // AVX-512 enabled: the ZMM view, all zero above bit 127.
    let mut m = machine(MMIO, XCR0_AVX512);
    load(&mut m, &bytes).ok();
    assert_eq!(m.regs.vector(3).to_vec(), padded(&seq(0x10, 16), 0));
    assert_eq!(
        set_names(&m),
        sorted(vec![RegisterName::RIP, RegisterName::zmm(3).unwrap()])
    );
}

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn vex_256_load_and_store() {
    let mut m = machine(MMIO, XCR0_AVX);
    load(&mut m, &long(|a| a.vmovdqu(ymm3, ymmword_ptr(rbx)))).ok();
    let mut expected = seq(0x10, 32);
    expected.resize(64, 0xAA);
    assert_eq!(m.regs.vector(3).to_vec(), expected);
    assert_eq!(m.memory_calls(), [(MMIO, false, seq(0x10, 32))]);

    let mut m = machine(MMIO, XCR0_AVX);
    m.regs.set_vector(12, &seq(0x40, 64).try_into().unwrap());
    store(&mut m, &long(|a| a.vmovaps(ymmword_ptr(rbx), ymm12))).ok();
    assert_eq!(m.memory_calls(), [(MMIO, true, seq(0x40, 32))]);
    assert!(got_names(&m).contains(&RegisterName::ymm(12).unwrap()));
}

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn vex_scalar_and_three_operand_loads() {
    // vmovsd xmm3, [rbx]: 8 bytes, zero up to the top.
    let mut m = machine(MMIO, XCR0_AVX);
    load(&mut m, &long(|a| a.vmovsd(xmm3, qword_ptr(rbx)))).ok();
    let mut expected = padded(&seq(0x10, 8), 0);
    expected[32..].fill(0xAA);
    assert_eq!(m.regs.vector(3).to_vec(), expected);

    // vmovhps xmm1, xmm2, [rbx]: low half from XMM2, high half from memory, zero above.
    let mut m = machine(MMIO, XCR0_AVX512);
    m.regs.set_vector(2, &seq(0x60, 64).try_into().unwrap());
    let bytes = long(|a| a.vmovhps_3(xmm1, xmm2, qword_ptr(rbx)));
    assert_eq!(bytes, [0xC5, 0xE8, 0x16, 0x0B]);
    load(&mut m, &bytes).ok();
    let mut expected = seq(0x60, 8);
    expected.extend(seq(0x10, 8));
    assert_eq!(m.regs.vector(1).to_vec(), padded(&expected, 0));
    assert_eq!(
        m.regs.vector(2).to_vec(),
        seq(0x60, 64),
        "the source is unchanged"
    );

    // vmovlpd xmm1, xmm2, [rbx]: the other way round.
    let mut m = machine(MMIO, XCR0_AVX);
    m.regs.set_vector(2, &seq(0x60, 64).try_into().unwrap());
    load(&mut m, &long(|a| a.vmovlpd_3(xmm1, xmm2, qword_ptr(rbx)))).ok();
    let mut expected = seq(0x10, 8);
    expected.extend(seq(0x68, 8));
    expected.resize(32, 0);
    expected.resize(64, 0xAA);
    assert_eq!(m.regs.vector(1).to_vec(), expected);
}

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn vex_and_evex_need_their_state_in_xcr0_and_protected_mode() {
    let vex = long(|a| a.vmovups(xmm3, xmmword_ptr(rbx)));
    let evex = evex(|a| a.vmovups(xmm3, xmmword_ptr(rbx)));
    for (bytes, xcr0) in [(&vex, 0x3), (&evex, XCR0_AVX), (&evex, 0x67)] {
        let mut m = machine(MMIO, xcr0);
        assert_eq!(
            load(&mut m, bytes).exception(),
            Exception::ud(),
            "{xcr0:#x}"
        );
        assert!(m.memory_calls().is_empty());
    }
    // Real mode: VEX is #UD whatever XCR0 holds.
    let mut m = Machine::real();
    m.regs.xcr0 = XCR0_AVX512;
    m.set_gpr(RBX, 0x2000);
    let bytes = asm(16, |a| a.vmovups(xmm3, xmmword_ptr(bx)));
    let ctx = MemoryAccessContext::new(&bytes, MemoryAccessType::Read, 0x2000);
    assert_eq!(
        m.mmio_ctx(bytes.len() as u8, &ctx).exception(),
        Exception::ud()
    );
}

// ---- page crossing and alignment --------------------------------------------------------

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn page_crossing_32_and_64_byte_accesses_are_split_in_two_memory_calls() {
    // vmovdqu [rbx], ymm3 with RBX 16 bytes before a page boundary.
    let addr = MMIO + 0xFF0;
    let mut m = machine(addr, XCR0_AVX);
    m.regs.set_vector(3, &seq(0x80, 64).try_into().unwrap());
    store(&mut m, &long(|a| a.vmovdqu(ymmword_ptr(rbx), ymm3))).ok();
    assert_eq!(
        m.memory_calls(),
        [
            (addr, true, seq(0x80, 16)),
            (MMIO + 0x1000, true, seq(0x90, 16))
        ]
    );
    // Both pages were resolved before the first write: the second one by translation.
    assert_eq!(m.translations().len(), 1);

    // vmovdqu64 zmm3, [rbx] with RBX 56 bytes before a page boundary.
    let addr = MMIO + 0xFC8;
    let mut m = machine(addr, XCR0_AVX512);
    load(&mut m, &evex(|a| a.vmovdqu64(zmm3, zmmword_ptr(rbx)))).ok();
    assert_eq!(
        m.memory_calls(),
        [
            (addr, false, seq(0x10, 56)),
            (MMIO + 0x1000, false, seq(0x48, 8))
        ]
    );
    assert_eq!(m.regs.vector(3).to_vec(), seq(0x10, 64));
}

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn aligned_forms_raise_gp0_on_a_misaligned_operand_before_any_memory_call() {
    let cases: [(&str, Vec<u8>, u64); 8] = [
        ("movaps load", long(|a| a.movaps(xmm3, xmmword_ptr(rbx))), 8),
        (
            "movdqa store",
            long(|a| a.movdqa(xmmword_ptr(rbx), xmm3)),
            4,
        ),
        ("movntdq", long(|a| a.movntdq(xmmword_ptr(rbx), xmm3)), 1),
        (
            "movntdqa",
            long(|a| a.movntdqa(xmm3, xmmword_ptr(rbx))),
            0x808,
        ),
        (
            "vmovapd ymm",
            long(|a| a.vmovapd(ymm3, ymmword_ptr(rbx))),
            16,
        ),
        (
            "vmovntps ymm",
            long(|a| a.vmovntps(ymmword_ptr(rbx), ymm3)),
            16,
        ),
        (
            "vmovdqa64 zmm",
            evex(|a| a.vmovdqa64(zmm3, zmmword_ptr(rbx))),
            32,
        ),
        // Masking does not suppress the alignment check, even with no element selected.
        (
            "vmovaps zmm {k1}",
            evex(|a| a.vmovaps(zmmword_ptr(rbx).k1(), zmm3)),
            32,
        ),
    ];
    for (name, bytes, misalign) in cases {
        let mut m = machine(MMIO + misalign, XCR0_AVX512);
        m.regs.opmask[1] = 0;
        // The stores' exits are writes; a read exit for one is refused untouched.
        let mut outcome = exit(&mut m, &bytes, MemoryAccessType::Read);
        if let Err(EmulationError::NotTheExitingInstruction { .. }) = outcome.result {
            outcome = exit(&mut m, &bytes, MemoryAccessType::Write);
        }
        assert_eq!(
            outcome.result,
            Err(EmulationError::Exception(Exception::gp(0))),
            "{name}"
        );
        assert!(m.memory_calls().is_empty(), "{name}");
        assert!(m.translations().is_empty(), "{name}");
    }
    // The unaligned forms do not care, and the aligned ones pass when aligned.
    let mut m = machine(MMIO + 8, XCR0_AVX512);
    load(&mut m, &long(|a| a.movups(xmm3, xmmword_ptr(rbx)))).ok();
    let mut m = machine(MMIO + 0x40, XCR0_AVX512);
    load(&mut m, &evex(|a| a.vmovdqa32(zmm3, zmmword_ptr(rbx)))).ok();
}

#[test]
fn every_byte_of_a_vector_operand_is_checked_against_the_limit_and_canonical_form() {
    // 64-bit: a 16-byte store whose last byte is past the lower canonical half is #GP(0),
    // with no callback; one that ends on the last canonical byte is made.
    let movups_store = long(|a| a.movups(xmmword_ptr(rbx), xmm3));
    let mut m = machine(0x7FFF_FFFF_FFF8, XCR0_AVX);
    assert_eq!(store(&mut m, &movups_store).exception(), Exception::gp(0));
    assert!(m.memory_calls().is_empty());
    assert!(m.translations().is_empty());
    let mut m = machine(0x7FFF_FFFF_FFF0, XCR0_AVX);
    store(&mut m, &movups_store).ok();
    assert_eq!(m.memory_calls().len(), 1);

    // 32-bit: against DS's limit, byte-granular, as an expand-up and as an expand-down
    // (B=1: offsets above the limit up to 0xFFFFFFFF) data segment.
    let movups_load = asm(32, |a| a.movups(xmm3, xmmword_ptr(ebx)));
    let run = |attributes: u16, offset: u64| {
        let mut m = Machine::protected32();
        m.regs.xcr0 = XCR0_AVX;
        m.regs.cr[4] |= 1 << 9;
        m.regs
            .set_segment(Segment::Ds, seg(0, 0xFFF, 0x10, attributes));
        m.set_gpr(RBX, offset);
        m.write_phys(offset, &seq(0x10, 16));
        let ctx =
            MemoryAccessContext::new(&movups_load, MemoryAccessType::Read, offset).with_gva(offset);
        let outcome = m.mmio_ctx(movups_load.len() as u8, &ctx);
        (outcome, m.memory_calls().len())
    };
    let (up, down) = (0x4093, 0x4097);
    assert_eq!(run(up, 0xFF8).0.exception(), Exception::gp(0));
    assert_eq!(run(up, 0xFF8).1, 0);
    run(up, 0xFF0).0.ok();
    assert_eq!(run(down, 0xFF8).0.exception(), Exception::gp(0));
    assert_eq!(run(down, 0xFF8).1, 0);
    run(down, 0x1000).0.ok();
    assert_eq!(run(down, 0x1000).1, 1);
}

#[test]
fn alignment_check_applies_to_small_operands_only() {
    // CPL 3 with CR0.AM and RFLAGS.AC: a misaligned 8-byte MOVQ faults #AC(0), a misaligned
    // 16-byte MOVUPS does not.
    let user = |addr: u64| {
        let mut m = machine(addr, XCR0_AVX);
        m.regs.cr[0] |= 1 << 18;
        m.regs.rflags |= 1 << 18;
        m.regs.segments[Segment::Ss as usize] = seg(0, u32::MAX, 0x2B, 0xC0F3);
        m.regs.segments[Segment::Cs as usize] = seg(0, u32::MAX, 0x33, 0xA0FB);
        m
    };
    let mut m = user(MMIO + 4);
    let e = load(&mut m, &long(|a| a.movq(xmm3, qword_ptr(rbx)))).exception();
    assert_eq!(e.vector, Vector::AlignmentCheck);
    let mut m = user(MMIO + 4);
    load(&mut m, &long(|a| a.movups(xmm3, xmmword_ptr(rbx)))).ok();
}

// ---- EVEX and opmasks ---------------------------------------------------------------------

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn evex_loads_write_the_zmm_view_with_zeroes_above_the_vector_length() {
    let mut m = machine(MMIO, XCR0_AVX512);
    let bytes = evex(|a| a.vmovdqu32(ymm3, ymmword_ptr(rbx)));
    assert_eq!(bytes[0], 0x62, "EVEX");
    load(&mut m, &bytes).ok();
    assert_eq!(m.regs.vector(3).to_vec(), padded(&seq(0x10, 32), 0));
    assert_eq!(
        set_names(&m),
        sorted(vec![RegisterName::RIP, RegisterName::zmm(3).unwrap()])
    );
}

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn registers_16_to_31_are_hvemu_extension_names() {
    // vmovdqu32 xmm17, [rbx]: the ZMM17 view; vmovups [rbx], xmm30: read through XMM30.
    let mut m = machine(MMIO, XCR0_AVX512);
    load(&mut m, &evex(|a| a.vmovdqu32(xmm17, xmmword_ptr(rbx)))).ok();
    assert_eq!(m.regs.vector(17).to_vec(), padded(&seq(0x10, 16), 0));
    assert_eq!(m.regs.hi16_zmm[1][1], 0);
    assert_eq!(
        set_names(&m),
        sorted(vec![RegisterName::RIP, RegisterName(0x1_0211)])
    );

    let mut m = machine(MMIO, XCR0_AVX512);
    m.regs.set_vector(30, &seq(0x40, 64).try_into().unwrap());
    store(&mut m, &evex(|a| a.vmovups(xmmword_ptr(rbx), xmm30))).ok();
    assert_eq!(m.memory_calls(), [(MMIO, true, seq(0x40, 16))]);
    assert!(got_names(&m).contains(&RegisterName(0x1_001E)));
    assert_eq!(format!("{:?}", RegisterName(0x1_001E)), "XMM30");
}

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn masked_load_merges_or_zeroes_and_reads_only_selected_runs() {
    // vmovdqu32 zmm3 {k1}, [rbx] with k1 = 0b1111_0011: elements 0–1 and 4–7 (bytes 0–7 and
    // 16–31) are read, as two accesses; the rest keep ZMM3's bytes.
    let mut m = machine(MMIO, XCR0_AVX512);
    m.regs.opmask[1] = 0x00F3;
    load(&mut m, &evex(|a| a.vmovdqu32(zmm3.k1(), zmmword_ptr(rbx)))).ok();
    assert_eq!(
        m.memory_calls(),
        [
            (MMIO, false, seq(0x10, 8)),
            (MMIO + 16, false, seq(0x20, 16))
        ]
    );
    let mut expected = vec![0xAA; 64];
    expected[..8].copy_from_slice(&seq(0x10, 8));
    expected[16..32].copy_from_slice(&seq(0x20, 16));
    assert_eq!(m.regs.vector(3).to_vec(), expected);
    // The opmask and the merged destination are read in the one batch.
    assert_eq!(m.gets(), 1);
    let got = got_names(&m);
    assert!(got.contains(&RegisterName::opmask(1).unwrap()));
    assert!(got.contains(&RegisterName::zmm(3).unwrap()));

    // {z}: the masked-out elements are zero, and the destination is not read.
    let mut m = machine(MMIO, XCR0_AVX512);
    m.regs.opmask[1] = 0x00F3;
    load(
        &mut m,
        &evex(|a| a.vmovdqu32(zmm3.k1().z(), zmmword_ptr(rbx))),
    )
    .ok();
    let mut expected = vec![0; 64];
    expected[..8].copy_from_slice(&seq(0x10, 8));
    expected[16..32].copy_from_slice(&seq(0x20, 16));
    assert_eq!(m.regs.vector(3).to_vec(), expected);
    assert!(!got_names(&m).contains(&RegisterName::zmm(3).unwrap()));

    // A 128-bit merge keeps only the low 128 bits' masked-out elements; bits 128 and up are
    // zero in any case. Only the first VL/16 = 8 mask bits count.
    let mut m = machine(MMIO, XCR0_AVX512);
    m.regs.opmask[2] = 0xFF0F;
    load(&mut m, &evex(|a| a.vmovdqu16(xmm3.k2(), xmmword_ptr(rbx)))).ok();
    let mut expected = seq(0x10, 8);
    expected.extend([0xAA; 8]);
    assert_eq!(m.regs.vector(3).to_vec(), padded(&expected, 0));
    assert_eq!(m.memory_calls(), [(MMIO, false, seq(0x10, 8))]);
}

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn masked_store_writes_only_the_selected_bytes_one_access_per_run() {
    // vmovdqu8 [rbx] {k1}, zmm3 with k1 selecting bytes 0–3, 8–11, 62 and 63.
    let mut m = machine(MMIO, XCR0_AVX512);
    m.write_phys(MMIO, &[0x55; 64]);
    m.regs.set_vector(3, &seq(0x80, 64).try_into().unwrap());
    m.regs.opmask[1] = 0xC000_0000_0000_0F0F;
    store(&mut m, &evex(|a| a.vmovdqu8(zmmword_ptr(rbx).k1(), zmm3))).ok();
    assert_eq!(
        m.memory_calls(),
        [
            (MMIO, true, seq(0x80, 4)),
            (MMIO + 8, true, seq(0x88, 4)),
            (MMIO + 62, true, seq(0xBE, 2)),
        ]
    );
    let mut expected = vec![0x55; 64];
    expected[..4].copy_from_slice(&seq(0x80, 4));
    expected[8..12].copy_from_slice(&seq(0x88, 4));
    expected[62..].copy_from_slice(&seq(0xBE, 2));
    assert_eq!(m.read_phys(MMIO, 64), expected);

    // vmovapd [rbx] {k3}, ymm3: qword elements 1 and 3.
    let mut m = machine(MMIO, XCR0_AVX512);
    m.regs.set_vector(3, &seq(0x80, 64).try_into().unwrap());
    m.regs.opmask[3] = 0b1010;
    store(&mut m, &evex(|a| a.vmovapd(ymmword_ptr(rbx).k3(), ymm3))).ok();
    assert_eq!(
        m.memory_calls(),
        [
            (MMIO + 8, true, seq(0x88, 8)),
            (MMIO + 24, true, seq(0x98, 8))
        ]
    );
}

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn an_all_zero_mask_accesses_no_memory() {
    let mut m = machine(MMIO, XCR0_AVX512);
    m.regs.opmask[1] = 0xFFFF_0000; // only bits beyond the 8 qword elements
    store(&mut m, &evex(|a| a.vmovdqu64(zmmword_ptr(rbx).k1(), zmm3))).ok();
    assert!(m.memory_calls().is_empty());
    assert!(m.translations().is_empty());
    assert_eq!(set_names(&m), [RegisterName::RIP]);

    // A merging load of a YMM with nothing selected keeps bits 0–255 and zeroes the rest.
    let mut m = machine(MMIO, XCR0_AVX512);
    m.regs.opmask[1] = 0;
    load(&mut m, &evex(|a| a.vmovups(ymm3.k1(), ymmword_ptr(rbx)))).ok();
    assert!(m.memory_calls().is_empty());
    assert_eq!(m.regs.vector(3).to_vec(), padded(&[0xAA; 32], 0));
}

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn masked_out_elements_do_not_fault_and_their_pages_are_not_translated() {
    // Linear page 0x4000_0000 maps the MMIO page; the next page is not present. The ZMM
    // operand starts 32 bytes before the boundary.
    const PAGE: u64 = 0x4000_0000;
    let setup = |mask: u64| {
        let mut m = machine(PAGE + 0xFE0, XCR0_AVX512);
        m.map(
            PAGE,
            Pte {
                gpa: MMIO,
                writable: true,
                user: true,
                executable: false,
            },
        );
        m.write_phys(MMIO + 0xFE0, &seq(0x10, 32));
        m.regs.opmask[1] = mask;
        m
    };
    let bytes = evex(|a| a.vmovdqu32(zmm3.k1().z(), zmmword_ptr(rbx)));
    let run = |m: &mut Machine| {
        let ctx = MemoryAccessContext::new(&bytes, MemoryAccessType::Read, MMIO + 0xFE0)
            .with_gva(PAGE + 0xFE0);
        m.mmio_ctx(bytes.len() as u8, &ctx)
    };

    // Elements 0–7 are all on the mapped page: no fault, no translation of the next page.
    let mut m = setup(0x00FF);
    run(&mut m).ok();
    assert!(m.translations().is_empty());
    assert_eq!(m.memory_calls(), [(MMIO + 0xFE0, false, seq(0x10, 32))]);
    assert_eq!(m.regs.vector(3).to_vec(), padded(&seq(0x10, 32), 0));

    // Element 8 is selected: #PF on the next page (not present, read), before any access.
    let mut m = setup(0x01FF);
    let e = run(&mut m).exception();
    assert_eq!(e, Exception::pf(PAGE + 0x1000, 0));
    assert!(m.memory_calls().is_empty());

    // Only elements on the unmapped page: the fault is there too, and it is reported at the
    // first selected element's address.
    let mut m = setup(0x0400);
    assert_eq!(run(&mut m).exception(), Exception::pf(PAGE + 0x1008, 0));
}

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn masked_scalar_moves_use_mask_bit_zero() {
    // vmovss xmm3 {k1}, [rbx] with k1[0] = 0: nothing read; bits 0–31 kept, 32 and up zero.
    let mut m = machine(MMIO, XCR0_AVX512);
    m.regs.opmask[1] = 0xFFFE;
    load(&mut m, &evex(|a| a.vmovss(xmm3.k1(), dword_ptr(rbx)))).ok();
    assert!(m.memory_calls().is_empty());
    assert_eq!(m.regs.vector(3).to_vec(), padded(&[0xAA; 4], 0));

    // vmovsd [rbx] {k1}, xmm3 with k1[0] = 1: the 8 bytes.
    let mut m = machine(MMIO, XCR0_AVX512);
    m.regs.set_vector(3, &seq(0x80, 64).try_into().unwrap());
    m.regs.opmask[1] = 1;
    store(&mut m, &evex(|a| a.vmovsd(qword_ptr(rbx).k1(), xmm3))).ok();
    assert_eq!(m.memory_calls(), [(MMIO, true, seq(0x80, 8))]);
}

#[test]
#[cfg_attr(
    feature = "lean-decoder",
    ignore = "assembles VEX/EVEX code, which the lean build's iced-x86 cannot encode"
)]
fn evex_zeroing_on_a_store_and_broadcast_on_a_move_do_not_decode() {
    // vmovups [rax] {k1}{z}, zmm0 and vmovups zmm0, [rax]{1to16}.
    for bytes in [
        [0x62, 0xF1, 0x7C, 0xC9, 0x11, 0x00],
        [0x62, 0xF1, 0x7C, 0x58, 0x10, 0x00],
    ] {
        let mut m = machine(MMIO, XCR0_AVX512);
        m.set_gpr(0, MMIO);
        let outcome = load(&mut m, &bytes);
        assert!(
            matches!(outcome.result, Err(EmulationError::Undecodable { .. })),
            "{bytes:02x?}: {:?}",
            outcome.result
        );
    }
}

// ---- MMX ----------------------------------------------------------------------------------

/// FP_CONTROL_STATUS with FCW 0x37F, the given TOP and abridged tag byte.
fn fpcs(top: u16, tags: u8) -> u128 {
    0x37F | (u128::from(top << 11) << 16) | (u128::from(tags) << 32)
}

#[test]
fn mmx_movq_load_sets_the_x87_register_and_the_tags() {
    let mut m = machine(MMIO, XCR0_AVX);
    m.regs.fp_control_status = fpcs(0, 0x00);
    let bytes = long(|a| a.movq(mm2, qword_ptr(rbx)));
    assert_eq!(bytes, [0x0F, 0x6F, 0x13]);
    load(&mut m, &bytes).ok();
    let value = u64::from_le_bytes(seq(0x10, 8).try_into().unwrap());
    // The MMX value in the mantissa, exponent and sign all ones.
    assert_eq!(m.regs.fp_mmx[2], u128::from(value) | 0xFFFF << 64);
    // TOP = 0 and every register valid.
    assert_eq!(m.regs.fp_control_status, fpcs(0, 0xFF));
    assert_eq!(
        set_names(&m),
        sorted(vec![
            RegisterName::RIP,
            RegisterName::fp_mmx(2).unwrap(),
            RegisterName::FP_CONTROL_STATUS
        ])
    );

    // MOVD zero-extends; with the tags already valid FP_CONTROL_STATUS is not written.
    let mut m = machine(MMIO, XCR0_AVX);
    m.regs.fp_control_status = fpcs(0, 0xFF);
    m.regs.fp_mmx[5] = u128::MAX;
    load(&mut m, &long(|a| a.movd(mm5, dword_ptr(rbx)))).ok();
    assert_eq!(m.regs.fp_mmx[5], 0x1312_1110 | 0xFFFF << 64);
    assert_eq!(
        set_names(&m),
        sorted(vec![RegisterName::RIP, RegisterName::fp_mmx(5).unwrap()])
    );
}

#[test]
fn mmx_stores() {
    for (name, bytes, stored) in [
        ("movq", long(|a| a.movq(qword_ptr(rbx), mm1)), seq(0x80, 8)),
        (
            "movntq",
            long(|a| a.movntq(qword_ptr(rbx), mm1)),
            seq(0x80, 8),
        ),
        ("movd", long(|a| a.movd(dword_ptr(rbx), mm1)), seq(0x80, 4)),
        ("movq r/m64", vec![0x48, 0x0F, 0x7E, 0x0B], seq(0x80, 8)),
    ] {
        let mut m = machine(MMIO, XCR0_AVX);
        m.regs.fp_control_status = fpcs(0, 0x80);
        m.regs.fp_mmx[1] = u128::from_le_bytes(seq(0x80, 16).try_into().unwrap());
        store(&mut m, &bytes).ok();
        assert_eq!(m.memory_calls(), [(MMIO, true, stored)], "{name}");
        assert_eq!(m.regs.fp_control_status, fpcs(0, 0xFF), "{name}");
        assert_eq!(
            m.regs.fp_mmx[1],
            u128::from_le_bytes(seq(0x80, 16).try_into().unwrap())
        );
    }
}

#[test]
fn mmx_with_a_nonzero_top_rotates_the_registers_into_physical_order() {
    // TOP = 6: FP_MMX slot j (ST(j)) is physical register (6 + j) mod 8. After any MMX
    // instruction TOP = 0 and slot i holds physical register i, the old slot (i + 2) mod 8.
    let st: [u128; 8] = core::array::from_fn(|j| 0x1000 + j as u128);
    let mut m = machine(MMIO, XCR0_AVX);
    m.regs.fp_control_status = fpcs(6, 0xC0);
    m.regs.fp_mmx = st;
    m.regs.fp_mmx[3] = 0xDEAD_BEEF; // ST(3) = physical R1
    store(&mut m, &long(|a| a.movq(qword_ptr(rbx), mm1))).ok();
    assert_eq!(
        m.memory_calls(),
        [(MMIO, true, 0xDEAD_BEEFu64.to_le_bytes().to_vec())]
    );
    let rotated: [u128; 8] = core::array::from_fn(|i| {
        let j = (i + 2) % 8;
        if j == 3 { 0xDEAD_BEEF } else { st[j] }
    });
    assert_eq!(m.regs.fp_mmx, rotated);
    assert_eq!(m.regs.fp_control_status, fpcs(0, 0xFF));
    // One batch for FP_CONTROL_STATUS (and the guessed FP_MMX1), one for the rest.
    assert_eq!(m.gets(), 2);

    // A load after the rotation replaces physical register 2.
    let mut m = machine(MMIO, XCR0_AVX);
    m.regs.fp_control_status = fpcs(6, 0xC0);
    m.regs.fp_mmx = st;
    load(&mut m, &long(|a| a.movq(mm2, qword_ptr(rbx)))).ok();
    let value = u64::from_le_bytes(seq(0x10, 8).try_into().unwrap());
    let expected: [u128; 8] = core::array::from_fn(|i| {
        if i == 2 {
            u128::from(value) | 0xFFFF << 64
        } else {
            st[(i + 2) % 8]
        }
    });
    assert_eq!(m.regs.fp_mmx, expected);
}

// ---- failures -------------------------------------------------------------------------------

#[test]
fn register_forms_are_not_the_exiting_instruction() {
    let mut m = machine(MMIO, XCR0_AVX512);
    let outcome = load(&mut m, &long(|a| a.movups(xmm3, xmm4)));
    assert!(matches!(
        outcome.result,
        Err(EmulationError::NotTheExitingInstruction { .. })
    ));
}

#[test]
fn a_wrong_kind_of_vector_value_fails_before_any_memory_access() {
    // A monitor answering XMM3 with a 64-bit value: no memory call, no commit.
    struct Liar(Machine);
    impl EmulatorCallbacks for Liar {
        type Error = &'static str;
        fn io_port(&mut self, a: &mut IoAccessInfo) -> Result<(), Self::Error> {
            self.0.io_port(a)
        }
        fn memory(&mut self, a: &mut MemoryAccessInfo<'_>) -> Result<(), Self::Error> {
            self.0.memory(a)
        }
        fn get_registers(
            &mut self,
            n: &[RegisterName],
            v: &mut [RegisterValue],
        ) -> Result<(), Self::Error> {
            self.0.get_registers(n, v)?;
            for (name, value) in n.iter().zip(v.iter_mut()) {
                if *name == RegisterName::xmm(3).unwrap() {
                    *value = RegisterValue::U64(0);
                }
            }
            Ok(())
        }
        fn set_registers(
            &mut self,
            n: &[RegisterName],
            v: &[RegisterValue],
        ) -> Result<(), Self::Error> {
            self.0.set_registers(n, v)
        }
        fn translate_gva_page(
            &mut self,
            g: u64,
            f: TranslateGvaFlags,
        ) -> Result<(TranslateGvaResult, u64), Self::Error> {
            self.0.translate_gva_page(g, f)
        }
    }
    let mut liar = Liar(machine(MMIO, XCR0_AVX));
    let bytes = long(|a| a.movlps(xmm3, qword_ptr(rbx)));
    let exit = liar.0.exit(bytes.len() as u8);
    let ctx = MemoryAccessContext::new(&bytes, MemoryAccessType::Read, MMIO).with_gva(MMIO);
    let result = Emulator::new(&mut liar).emulate_mmio(&exit, &ctx);
    assert_eq!(
        result,
        Err(EmulationError::BadRegisterValue(
            RegisterName::xmm(3).unwrap()
        ))
    );
    assert!(liar.0.memory_calls().is_empty());
    assert_eq!(liar.0.sets(), 0);
}
