//! MOVDIRI and MOVDIR64B: direct stores to device memory.

mod support;

use hvemu::*;
use iced_x86::code_asm::*;
use support::*;

const MMIO: u64 = 0xFEE0_0000;

#[test]
fn movdiri_stores_the_register() {
    let bytes = asm(64, |a| a.movdiri(qword_ptr(rax + 8), rcx));
    let mut m = Machine::long();
    m.set_gpr(0, MMIO);
    m.set_gpr(1, 0x1122_3344_5566_7788);
    m.mmio(&bytes, MemoryAccessType::Write, MMIO + 8).ok();
    assert_eq!(
        m.memory_calls(),
        [(
            MMIO + 8,
            true,
            0x1122_3344_5566_7788u64.to_le_bytes().to_vec()
        )]
    );
}

#[test]
fn movdir64b_copies_64_bytes_in_one_write() {
    let bytes = asm(64, |a| a.movdir64b(rdi, zmmword_ptr(rsi)));
    let mut m = Machine::long();
    let src: Vec<u8> = (0..64).collect();
    m.write_phys(0x3000, &src);
    m.set_gpr(6, 0x3000);
    m.set_gpr(7, MMIO + 0x40);
    m.mmio(&bytes, MemoryAccessType::Write, MMIO + 0x40).ok();
    let calls = m.memory_calls();
    assert_eq!(calls.len(), 2, "one read of the source, one 64-byte write");
    assert_eq!(calls[1], (MMIO + 0x40, true, src));
    assert_eq!(m.regs.rip, bytes.len() as u64);
}

#[test]
fn movdir64b_needs_a_64_byte_aligned_destination_and_uses_es() {
    let bytes = asm(64, |a| a.movdir64b(rdi, zmmword_ptr(rsi)));
    let mut m = Machine::long();
    m.set_gpr(6, 0x3000);
    m.set_gpr(7, MMIO + 0x20);
    let e = m
        .mmio(&bytes, MemoryAccessType::Write, MMIO + 0x20)
        .exception();
    assert_eq!(e, Exception::gp(0));
    assert!(m.memory_calls().is_empty(), "nothing read or written");
    // 32-bit code: the destination is ES:[edi] with ES's base.
    let bytes = asm(32, |a| a.movdir64b(edi, zmmword_ptr(esi)));
    let mut m = Machine::protected32();
    m.regs
        .set_segment(Segment::Es, seg(0x10_0000, 0xFFFF_FFFF, 0x18, 0xC093));
    m.write_phys(0x3000, &[0xAB; 64]);
    m.set_gpr(6, 0x3000);
    m.set_gpr(7, 0x40);
    m.mmio(&bytes, MemoryAccessType::Write, 0x10_0040).ok();
    assert_eq!(m.memory_calls()[1], (0x10_0040, true, vec![0xAB; 64]));
}
