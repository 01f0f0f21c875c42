//! How much of x86 hvemu emulates, counted through the public API: every legacy, VEX and EVEX
//! opcode with a memory operand is decoded in 16-, 32- and 64-bit code, and each distinct
//! iced-x86 `Code` is offered to the emulator as an MMIO exit. A form counts as supported when
//! the emulator does not answer `Unsupported`.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use hvemu::*;
use iced_x86::{Code, Decoder, DecoderOptions, OpKind};
use support::*;

fn has_memory(instr: &iced_x86::Instruction) -> bool {
    (0..instr.op_count()).any(|i| {
        !matches!(
            instr.op_kind(i),
            OpKind::Register
                | OpKind::NearBranch16
                | OpKind::NearBranch32
                | OpKind::NearBranch64
                | OpKind::FarBranch16
                | OpKind::FarBranch32
                | OpKind::Immediate8
                | OpKind::Immediate8_2nd
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate64
                | OpKind::Immediate8to16
                | OpKind::Immediate8to32
                | OpKind::Immediate8to64
                | OpKind::Immediate32to64
        )
    }) || instr.is_stack_instruction()
}

/// Candidate encodings: legacy maps with prefixes, VEX (2- and 3-byte) and EVEX, each with a
/// ModRM byte that names memory ([rax]/[bx+si]) and every reg field.
fn candidates(bitness: u32) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let tail = [0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
    let mut prefixes: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x66],
        vec![0xF2],
        vec![0xF3],
        vec![0xF0],
        vec![0x67],
    ];
    if bitness == 64 {
        prefixes.extend([
            vec![0x48],
            vec![0x66, 0x48],
            vec![0xF0, 0x48],
            vec![0xF3, 0x48],
        ]);
    }
    let maps: [&[u8]; 4] = [&[], &[0x0F], &[0x0F, 0x38], &[0x0F, 0x3A]];
    for p in &prefixes {
        for map in maps {
            for op in 0..=255u8 {
                for reg in 0..8u8 {
                    let mut b = p.clone();
                    b.extend_from_slice(map);
                    b.extend([op, reg << 3]);
                    b.extend(tail);
                    out.push(b);
                }
            }
        }
    }
    if bitness == 16 {
        return out; // VEX/EVEX bytes are LES/LDS/BOUND in real mode
    }
    for map in 1..=3u8 {
        for w in 0..2u8 {
            for l in 0..2u8 {
                for pp in 0..4u8 {
                    for op in 0..=255u8 {
                        for reg in 0..8u8 {
                            // C4: R̄X̄B̄ = 111, mmmmm; W vvvv̄ = 1111, L, pp.
                            let byte2 = (w << 7) | (0xF << 3) | (l << 2) | pp;
                            let mut b = vec![0xC4, 0xE0 | map, byte2, op, reg << 3];
                            b.extend(tail);
                            out.push(b);
                        }
                    }
                }
            }
        }
    }
    for map in 1..=3u8 {
        for w in 0..2u8 {
            for ll in 0..3u8 {
                for pp in 0..4u8 {
                    for (z, aaa) in [(0u8, 0u8), (0, 1), (1, 1)] {
                        for op in 0..=255u8 {
                            let p0 = 0xF0 | map; // R X B R' = 1111, 0, mm
                            let p1 = (w << 7) | (0xF << 3) | 0x04 | pp;
                            let p2 = (z << 7) | (ll << 5) | 0x08 | aaa; // V' = 1
                            let mut b = vec![0x62, p0, p1, p2, op, 0x00];
                            b.extend(tail);
                            out.push(b);
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn supported_forms_are_counted_through_the_public_api() {
    let mut seen: BTreeMap<Code, (u32, Vec<u8>)> = BTreeMap::new();
    for bitness in [16u32, 32, 64] {
        for bytes in candidates(bitness) {
            let mut d = Decoder::new(bitness, &bytes, DecoderOptions::NONE);
            let instr = d.decode();
            if instr.is_invalid() || !has_memory(&instr) {
                continue;
            }
            seen.entry(instr.code())
                .or_insert((bitness, bytes[..instr.len()].to_vec()));
        }
    }
    let mut supported = BTreeSet::new();
    let mut by_mnemonic: BTreeMap<String, usize> = BTreeMap::new();
    for (code, (bitness, bytes)) in &seen {
        let mut m = match bitness {
            16 => Machine::real(),
            32 => Machine::protected32(),
            _ => Machine::long(),
        };
        m.regs.xcr0 = 0xE7; // x87, SSE, AVX and AVX-512 state enabled
        m.regs.cr[3] |= 1 << 18; // CR4.OSXSAVE
        for n in 0..16 {
            m.set_gpr(n, 0x1000 + (n as u64) * 0x100);
        }
        // The exit's direction must be one the instruction can produce: a store's exit is a
        // write, a load's a read.
        let mut r = Err(EmulationError::NotTheExitingInstruction { code: *code });
        for access in [MemoryAccessType::Write, MemoryAccessType::Read] {
            if matches!(r, Err(EmulationError::NotTheExitingInstruction { .. })) {
                let ctx = MemoryAccessContext::new(bytes, access, 0x1000);
                r = m.mmio_ctx(bytes.len() as u8, &ctx).result;
            }
        }
        if !matches!(
            r,
            Err(EmulationError::Unsupported { .. }
                | EmulationError::NotTheExitingInstruction { .. })
        ) {
            supported.insert(*code);
            *by_mnemonic
                .entry(format!("{:?}", code.mnemonic()))
                .or_default() += 1;
        }
    }
    println!(
        "hvemu emulates {} of the {} iced-x86 forms with a memory operand found by the scan",
        supported.len(),
        seen.len()
    );
    for (mnemonic, n) in &by_mnemonic {
        print!("{mnemonic}:{n} ");
    }
    println!();
    // Floors, so that losing a family is a failure. Without VEX and EVEX tables (the
    // `lean-decoder` build) those forms cannot be decoded, so they cannot count.
    let support = hvemu::decoder_support();
    let every_table = support.vex && support.evex;
    let floor = if every_table { 700 } else { 550 };
    assert!(supported.len() >= floor, "only {} forms", supported.len());
    let mut expected = vec![
        Code::Mov_rm32_r32,
        Code::Movzx_r32_rm16,
        Code::Add_rm64_imm8,
        Code::Cmpxchg_rm64_r64,
        Code::Movsb_m8_m8,
        Code::Outsb_DX_m8,
        Code::Movdqu_xmmm128_xmm,
        Code::Push_rm64,
    ];
    if support.vex {
        expected.push(Code::VEX_Vmovdqu_ymm_ymmm256);
    }
    if support.evex {
        expected.push(Code::EVEX_Vmovdqu8_zmm_k1z_zmmm512);
    }
    for code in expected {
        assert!(supported.contains(&code), "{code:?} not supported");
    }
    // And none of a missing encoding's forms is counted.
    let decodable = |code: &Code| {
        let name = format!("{code:?}");
        let missing = (name.starts_with("VEX_") && !support.vex)
            || (name.starts_with("EVEX_") && !support.evex);
        !missing
    };
    assert!(supported.iter().all(decodable));
}
