//! The forms nearly every MMIO exit is made of, decoded without iced-x86's decoder.
//!
//! Constructing an iced `Decoder` costs about as much as decoding with it, and iced offers no
//! safe way to point an existing decoder at new bytes. The ModRM forms with a memory operand
//! that device drivers use are simple enough to decode here, into exactly the `Instruction`
//! iced would produce:
//!
//! * MOV (88, 89, 8A, 8B, C6 /0, C7 /0), MOVZX (0F B6, 0F B7), the ALU read-modify-write
//!   forms (00–3B, 80, 81, 83) and CMPXCHG (0F B0, 0F B1);
//! * the SSE moves MOVUPS/MOVUPD/MOVSS/MOVSD (0F 10, 11), MOVAPS/MOVAPD (0F 28, 29), MOVDQA/
//!   MOVDQU (66/F3 0F 6F, 7F), MOVQ (F3 0F 7E, 66 0F D6) and the non-temporal stores (0F 2B,
//!   66 0F E7);
//! * the same moves' VEX forms (C4/C5, map 0F, no second source register), when the linked
//!   decoder has VEX tables (so that a lean build refuses them exactly as iced does).
//!
//! Anything else (register forms, other opcodes, a repeated or ignored prefix, more than one
//! mandatory prefix, a LOCK iced would refuse, bytes missing) is left to iced. The tests
//! compare the two bit for bit over every ModRM and SIB byte of every form, under every
//! prefix combination, in all three bitnesses.

use iced_x86::{Code, CodeSize, Instruction, OpKind, Register};

/// Where the operands go.
#[derive(Clone, Copy)]
enum Layout {
    /// `op [mem], reg`.
    MemReg,
    /// `op reg, [mem]`.
    RegMem,
    /// `op [mem], imm`.
    MemImm(Imm),
}

/// The immediate that follows the memory operand.
#[derive(Clone, Copy)]
enum Imm {
    /// One byte.
    Byte,
    /// One byte, sign-extended to the operand size.
    SignedByte,
    /// The operand size's, at most four bytes (sign-extended to 64 bits under REX.W).
    Full,
}

/// One opcode's decoding: its code for byte operands or for 16-, 32- and 64-bit operands.
#[derive(Clone, Copy)]
struct Form {
    /// The code of the 16-bit form (the next two are the 32- and 64-bit forms), or of the only
    /// form when `byte` is set.
    code: Code,
    /// Byte operands: one code whatever the operand size, byte registers.
    byte: bool,
    layout: Layout,
    /// Whether iced accepts a LOCK prefix on it (with a memory destination).
    lockable: bool,
}

impl Form {
    const fn new(code: Code, byte: bool, layout: Layout, lockable: bool) -> Form {
        Form {
            code,
            byte,
            layout,
            lockable,
        }
    }
}

/// The eight ALU operations in opcode order, each as its `rm8, r8` code; iced numbers the
/// other seven forms (`rm16, r16` … `r64, rm64`) consecutively after it.
const ALU: [Code; 8] = [
    Code::Add_rm8_r8,
    Code::Or_rm8_r8,
    Code::Adc_rm8_r8,
    Code::Sbb_rm8_r8,
    Code::And_rm8_r8,
    Code::Sub_rm8_r8,
    Code::Xor_rm8_r8,
    Code::Cmp_rm8_r8,
];

/// `code` moved `by` places on in iced's numbering.
#[inline]
fn offset(code: Code, by: u32) -> Option<Code> {
    Code::try_from((code as usize).checked_add(by as usize)?).ok()
}

/// The form of `opcode` (after 0F when `escaped`) whose ModRM reg field is `reg`.
#[inline(always)]
fn form(escaped: bool, opcode: u8, reg: u8) -> Option<Form> {
    use Layout::{MemImm, MemReg, RegMem};
    let alu = usize::from(opcode >> 3);
    let f = match (escaped, opcode) {
        (false, 0x00..=0x3B) if opcode & 7 < 4 => {
            let base = *ALU.get(alu)?;
            let (layout, from) = if opcode & 2 == 0 {
                (MemReg, 0)
            } else {
                (RegMem, 4)
            };
            // CMP writes nothing, and a LOCK needs a memory destination.
            let lockable = from == 0 && alu != 7;
            if opcode & 1 == 0 {
                Form::new(offset(base, from)?, true, layout, lockable)
            } else {
                Form::new(offset(base, from | 1)?, false, layout, lockable)
            }
        }
        (false, 0x80) => Form::new(
            offset(Code::Add_rm8_imm8, u32::from(reg))?,
            true,
            MemImm(Imm::Byte),
            reg != 7,
        ),
        (false, 0x81) => Form::new(
            offset(Code::Add_rm16_imm16, 3 * u32::from(reg))?,
            false,
            MemImm(Imm::Full),
            reg != 7,
        ),
        (false, 0x83) => Form::new(
            offset(Code::Add_rm16_imm8, 3 * u32::from(reg))?,
            false,
            MemImm(Imm::SignedByte),
            reg != 7,
        ),
        (false, 0x88) => Form::new(Code::Mov_rm8_r8, true, MemReg, false),
        (false, 0x89) => Form::new(Code::Mov_rm16_r16, false, MemReg, false),
        (false, 0x8A) => Form::new(Code::Mov_r8_rm8, true, RegMem, false),
        (false, 0x8B) => Form::new(Code::Mov_r16_rm16, false, RegMem, false),
        (false, 0xC6) if reg == 0 => Form::new(Code::Mov_rm8_imm8, true, MemImm(Imm::Byte), false),
        (false, 0xC7) if reg == 0 => {
            Form::new(Code::Mov_rm16_imm16, false, MemImm(Imm::Full), false)
        }
        (true, 0xB0) => Form::new(Code::Cmpxchg_rm8_r8, true, MemReg, true),
        (true, 0xB1) => Form::new(Code::Cmpxchg_rm16_r16, false, MemReg, true),
        // MOVZX: the memory operand's size is in the code; the register is full-sized.
        (true, 0xB6) => Form::new(Code::Movzx_r16_rm8, false, RegMem, false),
        (true, 0xB7) => Form::new(Code::Movzx_r16_rm16, false, RegMem, false),
        _ => return None,
    };
    Some(f)
}

/// The prefixes seen, each at most once.
#[derive(Clone, Copy, Default)]
struct Prefixes {
    operand_size: bool,
    address_size: bool,
    lock: bool,
    /// F2 or F3, or 0.
    rep: u8,
    segment: Option<Register>,
    /// The REX byte (0x40–0x4F), or 0.
    rex: u8,
}

/// The bytes of an instruction, read in order.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at = self.at.checked_add(1)?;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
}

/// What the opcode bytes decide: everything but the memory operand and the immediate.
struct Shape {
    code: Code,
    layout: Layout,
    register: Register,
    /// The operand size, for the immediate (0: 16-bit, 1: 32-bit, 2: 64-bit).
    size: u32,
    /// Bit 0 extends the memory operand's base register, bit 1 its index (REX.B and REX.X, or
    /// VEX's inverted B̄ and X̄ turned back).
    extend: u8,
    modrm: u8,
}

/// The legacy prefixes and REX bytes (REX only in 64-bit code, which the loop checks). Built by
/// the compiler, where an index out of range fails the build instead of panicking.
#[allow(clippy::indexing_slicing)]
const PREFIX_OR_REX: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x40;
    while b <= 0x4F {
        t[b] = true;
        b += 1;
    }
    let legacy = [
        0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3,
    ];
    let mut i = 0;
    while i < legacy.len() {
        t[legacy[i]] = true;
        i += 1;
    }
    t
};

/// Decodes the instruction at the start of `bytes` in `bits`-bit code at `ip` into `out`, if
/// it is one of this module's forms with a memory operand; `false` (and `out` unspecified)
/// leaves it to iced.
#[inline]
pub(crate) fn decode(bytes: &[u8], bits: u32, ip: u64, out: &mut Instruction) -> bool {
    decode_into(bytes, bits, ip, out).is_some()
}

#[inline]
fn decode_into(bytes: &[u8], bits: u32, ip: u64, out: &mut Instruction) -> Option<()> {
    let mut r = Reader { bytes, at: 0 };
    let mut p = Prefixes::default();
    // At most one of each prefix: a repeat falls through as the opcode, which no form has.
    let opcode = loop {
        let b = r.u8()?;
        // Most instructions have no prefix: one look-up settles it.
        if !PREFIX_OR_REX.get(usize::from(b)).copied().unwrap_or(false) {
            break b;
        }
        match b {
            0x66 if !p.operand_size => p.operand_size = true,
            0x67 if !p.address_size => p.address_size = true,
            0xF0 if !p.lock => p.lock = true,
            0xF2 | 0xF3 if p.rep == 0 => p.rep = b,
            0x64 | 0x65 if p.segment.is_none() => {
                p.segment = Some(if b == 0x64 {
                    Register::FS
                } else {
                    Register::GS
                });
            }
            // In 64-bit code iced keeps these as ignored prefixes: left to it.
            0x26 | 0x2E | 0x36 | 0x3E if p.segment.is_none() && bits != 64 => {
                p.segment = Some(match b {
                    0x26 => Register::ES,
                    0x2E => Register::CS,
                    0x36 => Register::SS,
                    _ => Register::DS,
                });
            }
            // REX counts only right before the opcode: what follows it must be the opcode.
            0x40..=0x4F if bits == 64 => {
                p.rex = b;
                break r.u8()?;
            }
            _ => break b,
        }
    };
    // Out early on the first byte of anything else (EVEX, strings, …); 0F, the escape, lies
    // in the ALU range.
    let shape = match opcode {
        0x0F => {
            let second = r.u8()?;
            if matches!(second, 0xB0 | 0xB1 | 0xB6 | 0xB7) {
                general(&mut r, &p, true, second, bits)?
            } else {
                sse(&mut r, &p, second)?
            }
        }
        0x00..=0x3B | 0x80 | 0x81 | 0x83 | 0x88..=0x8B | 0xC6 | 0xC7 => {
            general(&mut r, &p, false, opcode, bits)?
        }
        0xC4 | 0xC5 => vex(&mut r, &p, opcode, bits)?,
        _ => return None,
    };
    let address_bits = match (bits, p.address_size) {
        (64, false) => 64,
        (64, true) | (32, false) | (16, true) => 32,
        _ => 16,
    };

    *out = Instruction::default();
    memory_operand(
        &mut r,
        out,
        shape.modrm,
        shape.extend,
        address_bits,
        bits == 64,
    )?;
    out.set_code(shape.code);
    match shape.layout {
        Layout::MemReg => {
            out.set_op0_kind(OpKind::Memory);
            out.set_op1_kind(OpKind::Register);
            out.set_op1_register(shape.register);
        }
        Layout::RegMem => {
            out.set_op0_kind(OpKind::Register);
            out.set_op0_register(shape.register);
            out.set_op1_kind(OpKind::Memory);
        }
        Layout::MemImm(imm) => {
            out.set_op0_kind(OpKind::Memory);
            let kind = match (imm, shape.size) {
                (Imm::Byte, _) => {
                    out.set_immediate8(r.u8()?);
                    OpKind::Immediate8
                }
                (Imm::SignedByte, size) => {
                    // iced keeps the raw byte and sign-extends it when read.
                    out.set_immediate8(r.u8()?);
                    [
                        OpKind::Immediate8to16,
                        OpKind::Immediate8to32,
                        OpKind::Immediate8to64,
                    ]
                    .get(size as usize)
                    .copied()?
                }
                (Imm::Full, 0) => {
                    out.set_immediate16(r.u16()?);
                    OpKind::Immediate16
                }
                (Imm::Full, 1) => {
                    out.set_immediate32(r.u32()?);
                    OpKind::Immediate32
                }
                (Imm::Full, _) => {
                    out.set_immediate32(r.u32()?);
                    OpKind::Immediate32to64
                }
            };
            out.set_op1_kind(kind);
        }
    }
    let len = r.at;
    if len > super::MAX_INSTRUCTION {
        return None;
    }
    out.set_len(len);
    let next = ip.wrapping_add(len as u64);
    out.set_next_ip(next);
    out.set_code_size(match bits {
        16 => CodeSize::Code16,
        32 => CodeSize::Code32,
        _ => CodeSize::Code64,
    });
    out.set_has_lock_prefix(p.lock);
    out.set_segment_prefix(p.segment.unwrap_or(Register::None));
    // RIP- and EIP-relative operands hold the address they name, as iced's do.
    match out.memory_base() {
        Register::RIP => {
            out.set_memory_displacement64(next.wrapping_add(out.memory_displacement64()))
        }
        Register::EIP => out.set_memory_displacement64(u64::from(
            next.wrapping_add(out.memory_displacement64()) as u32,
        )),
        _ => {}
    }
    Some(())
}

/// The general-register forms: `opcode` (after 0F when `escaped`) and its ModRM byte.
// Inlined, as the other two are: the shape then stays in registers.
#[inline(always)]
fn general(
    r: &mut Reader<'_>,
    p: &Prefixes,
    escaped: bool,
    opcode: u8,
    bits: u32,
) -> Option<Shape> {
    // F2/F3 make some of these XACQUIRE/XRELEASE and mean nothing to the rest: left to iced.
    if p.rep != 0 {
        return None;
    }
    let modrm = memory_modrm(r)?;
    let reg = (modrm >> 3) & 7;
    let f = form(escaped, opcode, reg)?;
    if p.lock && !f.lockable {
        return None;
    }
    let rex_w = p.rex & 8 != 0;
    // 0: 16-bit, 1: 32-bit, 2: 64-bit operands.
    let size: u32 = match (bits, rex_w, p.operand_size) {
        (64, true, _) => 2,
        (16, _, false) | (32 | 64, _, true) => 0,
        _ => 1,
    };
    let code = if f.byte {
        f.code
    } else {
        offset(f.code, size)?
    };
    let reg_number = u32::from(reg) | (u32::from(p.rex & 4) << 1);
    let register = if f.byte {
        byte_register(reg_number, p.rex != 0)
    } else {
        full_register(reg_number, size)
    }?;
    Some(Shape {
        code,
        layout: f.layout,
        register,
        size,
        extend: p.rex & 3,
        modrm,
    })
}

/// The legacy SSE moves: `0F opcode` under at most one mandatory prefix (66, F3 or F2).
#[inline(always)]
fn sse(r: &mut Reader<'_>, p: &Prefixes, opcode: u8) -> Option<Shape> {
    // LOCK is #UD on them; 66 beside F2/F3 is a choice between mandatory prefixes left to
    // iced.
    if p.lock || (p.operand_size && p.rep != 0) {
        return None;
    }
    let mandatory = if p.operand_size { 0x66 } else { p.rep };
    let (code, layout) = sse_form(mandatory, opcode)?;
    let modrm = memory_modrm(r)?;
    let n = u32::from((modrm >> 3) & 7) | (u32::from(p.rex & 4) << 1);
    Some(Shape {
        code,
        layout,
        register: register_after(Register::XMM0, n)?,
        size: 0,
        extend: p.rex & 3,
        modrm,
    })
}

/// The legacy SSE move of `opcode` (after 0F) under `mandatory` (0, 0x66, 0xF3 or 0xF2).
#[rustfmt::skip]
#[inline(always)]
fn sse_form(mandatory: u8, opcode: u8) -> Option<(Code, Layout)> {
    use Layout::{MemReg, RegMem};
    Some(match (mandatory, opcode) {
        (0x00, 0x10) => (Code::Movups_xmm_xmmm128, RegMem),
        (0x66, 0x10) => (Code::Movupd_xmm_xmmm128, RegMem),
        (0xF3, 0x10) => (Code::Movss_xmm_xmmm32, RegMem),
        (0xF2, 0x10) => (Code::Movsd_xmm_xmmm64, RegMem),
        (0x00, 0x11) => (Code::Movups_xmmm128_xmm, MemReg),
        (0x66, 0x11) => (Code::Movupd_xmmm128_xmm, MemReg),
        (0xF3, 0x11) => (Code::Movss_xmmm32_xmm, MemReg),
        (0xF2, 0x11) => (Code::Movsd_xmmm64_xmm, MemReg),
        (0x00, 0x28) => (Code::Movaps_xmm_xmmm128, RegMem),
        (0x66, 0x28) => (Code::Movapd_xmm_xmmm128, RegMem),
        (0x00, 0x29) => (Code::Movaps_xmmm128_xmm, MemReg),
        (0x66, 0x29) => (Code::Movapd_xmmm128_xmm, MemReg),
        (0x00, 0x2B) => (Code::Movntps_m128_xmm, MemReg),
        (0x66, 0x2B) => (Code::Movntpd_m128_xmm, MemReg),
        (0x66, 0x6F) => (Code::Movdqa_xmm_xmmm128, RegMem),
        (0xF3, 0x6F) => (Code::Movdqu_xmm_xmmm128, RegMem),
        (0xF3, 0x7E) => (Code::Movq_xmm_xmmm64, RegMem),
        (0x66, 0x7F) => (Code::Movdqa_xmmm128_xmm, MemReg),
        (0xF3, 0x7F) => (Code::Movdqu_xmmm128_xmm, MemReg),
        (0x66, 0xD6) => (Code::Movq_xmmm64_xmm, MemReg),
        (0x66, 0xE7) => (Code::Movntdq_m128_xmm, MemReg),
        _ => return None,
    })
}

/// The VEX moves (`escape` is C4 or C5): map 0F, VEX.vvvv unused (1111), no legacy prefix
/// but segment and address size.
#[inline(always)]
fn vex(r: &mut Reader<'_>, p: &Prefixes, escape: u8, bits: u32) -> Option<Shape> {
    // 66, F2, F3, LOCK or REX before VEX is #UD.
    if p.operand_size || p.rep != 0 || p.lock || p.rex != 0 {
        return None;
    }
    let first = r.u8()?;
    // Outside 64-bit code C4 and C5 are LES and LDS unless ModRM.mod would be 3.
    if bits != 64 && first < 0xC0 {
        return None;
    }
    // R̄X̄B̄ (inverted) and the byte holding W, v̄vvv, L and pp.
    let (rxb, last) = if escape == 0xC5 {
        (first >> 5 | 3, first)
    } else {
        if first & 0x1F != 1 {
            return None;
        }
        (first >> 5, r.u8()?)
    };
    // Outside 64-bit code the register extensions are left to iced.
    if last & 0x78 != 0x78 || (bits != 64 && rxb != 7) {
        return None;
    }
    let rxb = !rxb & 7;
    let (code, layout, ymm) = vex_form(last & 3, r.u8()?, last & 4 != 0)?;
    let modrm = memory_modrm(r)?;
    // A decoder built without VEX tables refuses these: so must this one.
    if !super::decoder_support().vex {
        return None;
    }
    let n = u32::from((modrm >> 3) & 7) | (u32::from(rxb & 4) << 1);
    let first_register = if ymm { Register::YMM0 } else { Register::XMM0 };
    Some(Shape {
        code,
        layout,
        register: register_after(first_register, n)?,
        size: 0,
        extend: rxb & 3,
        modrm,
    })
}

/// The VEX move of `opcode` under `pp` (0: none, 1: 66, 2: F3, 3: F2) and vector length `l`
/// (set for 256 bits), and whether its register is a YMM one.
#[rustfmt::skip]
#[inline(always)]
fn vex_form(pp: u8, opcode: u8, l: bool) -> Option<(Code, Layout, bool)> {
    use Layout::{MemReg, RegMem};
    let (xmm, ymm, layout) = match (pp, opcode) {
        (0, 0x10) => (Code::VEX_Vmovups_xmm_xmmm128, Code::VEX_Vmovups_ymm_ymmm256, RegMem),
        (1, 0x10) => (Code::VEX_Vmovupd_xmm_xmmm128, Code::VEX_Vmovupd_ymm_ymmm256, RegMem),
        // The scalar forms ignore VEX.L.
        (2, 0x10) => return Some((Code::VEX_Vmovss_xmm_m32, RegMem, false)),
        (3, 0x10) => return Some((Code::VEX_Vmovsd_xmm_m64, RegMem, false)),
        (0, 0x11) => (Code::VEX_Vmovups_xmmm128_xmm, Code::VEX_Vmovups_ymmm256_ymm, MemReg),
        (1, 0x11) => (Code::VEX_Vmovupd_xmmm128_xmm, Code::VEX_Vmovupd_ymmm256_ymm, MemReg),
        (2, 0x11) => return Some((Code::VEX_Vmovss_m32_xmm, MemReg, false)),
        (3, 0x11) => return Some((Code::VEX_Vmovsd_m64_xmm, MemReg, false)),
        (0, 0x28) => (Code::VEX_Vmovaps_xmm_xmmm128, Code::VEX_Vmovaps_ymm_ymmm256, RegMem),
        (1, 0x28) => (Code::VEX_Vmovapd_xmm_xmmm128, Code::VEX_Vmovapd_ymm_ymmm256, RegMem),
        (0, 0x29) => (Code::VEX_Vmovaps_xmmm128_xmm, Code::VEX_Vmovaps_ymmm256_ymm, MemReg),
        (1, 0x29) => (Code::VEX_Vmovapd_xmmm128_xmm, Code::VEX_Vmovapd_ymmm256_ymm, MemReg),
        (0, 0x2B) => (Code::VEX_Vmovntps_m128_xmm, Code::VEX_Vmovntps_m256_ymm, MemReg),
        (1, 0x2B) => (Code::VEX_Vmovntpd_m128_xmm, Code::VEX_Vmovntpd_m256_ymm, MemReg),
        (1, 0x6F) => (Code::VEX_Vmovdqa_xmm_xmmm128, Code::VEX_Vmovdqa_ymm_ymmm256, RegMem),
        (2, 0x6F) => (Code::VEX_Vmovdqu_xmm_xmmm128, Code::VEX_Vmovdqu_ymm_ymmm256, RegMem),
        (1, 0x7F) => (Code::VEX_Vmovdqa_xmmm128_xmm, Code::VEX_Vmovdqa_ymmm256_ymm, MemReg),
        (2, 0x7F) => (Code::VEX_Vmovdqu_xmmm128_xmm, Code::VEX_Vmovdqu_ymmm256_ymm, MemReg),
        (1, 0xE7) => (Code::VEX_Vmovntdq_m128_xmm, Code::VEX_Vmovntdq_m256_ymm, MemReg),
        _ => return None,
    };
    Some((if l { ymm } else { xmm }, layout, l))
}

/// The ModRM byte, if it names a memory operand (mod is not 3).
#[inline]
fn memory_modrm(r: &mut Reader<'_>) -> Option<u8> {
    let modrm = r.u8()?;
    (modrm >> 6 != 3).then_some(modrm)
}

/// Reads the rest of a memory operand (SIB, displacement) after `modrm` and records it.
#[inline]
fn memory_operand(
    r: &mut Reader<'_>,
    out: &mut Instruction,
    modrm: u8,
    extend: u8,
    address_bits: u32,
    long: bool,
) -> Option<()> {
    let mode = modrm >> 6;
    let rm = modrm & 7;
    if address_bits == 16 {
        const BASE_INDEX: [(Register, Register); 8] = [
            (Register::BX, Register::SI),
            (Register::BX, Register::DI),
            (Register::BP, Register::SI),
            (Register::BP, Register::DI),
            (Register::SI, Register::None),
            (Register::DI, Register::None),
            (Register::BP, Register::None),
            (Register::BX, Register::None),
        ];
        let (mut base, index) = *BASE_INDEX.get(usize::from(rm))?;
        match mode {
            0 if rm == 6 => {
                base = Register::None;
                out.set_memory_displ_size(2);
                out.set_memory_displacement64(u64::from(r.u16()?));
            }
            0 => {}
            1 => {
                out.set_memory_displ_size(1);
                out.set_memory_displacement64(u64::from(r.u8()? as i8 as u16));
            }
            _ => {
                out.set_memory_displ_size(2);
                out.set_memory_displacement64(u64::from(r.u16()?));
            }
        }
        out.set_memory_base(base);
        out.set_memory_index(index);
        return Some(());
    }
    let wide = address_bits == 64;
    // The first register of the address size; REX.B and REX.X extend base and index.
    let first = if wide { Register::RAX } else { Register::EAX };
    let gpr = |n: u32| register_after(first, n);
    let rex_b = u32::from(extend & 1) << 3;
    let rex_x = u32::from(extend & 2) << 2;
    // A 32-bit displacement is sign-extended to the address size; iced records its size as
    // 8 bytes under 64-bit addressing.
    let disp32 = |out: &mut Instruction, d: u32| {
        if wide {
            out.set_memory_displ_size(8);
            out.set_memory_displacement64(d as i32 as i64 as u64);
        } else {
            out.set_memory_displ_size(4);
            out.set_memory_displacement64(u64::from(d));
        }
    };
    let disp8 = |out: &mut Instruction, d: u8| {
        out.set_memory_displ_size(1);
        let d = d as i8 as i64 as u64;
        out.set_memory_displacement64(if wide { d } else { d & 0xFFFF_FFFF });
    };
    if rm == 4 {
        let sib = r.u8()?;
        out.set_memory_index_scale(1 << (sib >> 6));
        let index = u32::from((sib >> 3) & 7) | rex_x;
        if index != 4 {
            out.set_memory_index(gpr(index)?);
        }
        let base = u32::from(sib & 7);
        if mode == 0 && base == 5 {
            disp32(out, r.u32()?);
        } else {
            out.set_memory_base(gpr(base | rex_b)?);
        }
    } else if mode == 0 && rm == 5 {
        // RIP- (or, with 67, EIP-) relative in 64-bit code; an absolute offset otherwise.
        disp32(out, r.u32()?);
        if long {
            out.set_memory_base(if wide { Register::RIP } else { Register::EIP });
        }
        return Some(());
    } else {
        out.set_memory_base(gpr(u32::from(rm) | rex_b)?);
    }
    match mode {
        1 => disp8(out, r.u8()?),
        2 => disp32(out, r.u32()?),
        _ => {}
    }
    Some(())
}

/// Byte register `n` (with REX, 4–7 are SPL–DIL rather than AH–BH).
#[inline]
fn byte_register(n: u32, rex: bool) -> Option<Register> {
    let index = if rex && n >= 4 { n.wrapping_add(4) } else { n };
    register_after(Register::AL, index)
}

/// General register `n` of the operand size (0: 16-bit, 1: 32-bit, 2: 64-bit).
#[inline]
fn full_register(n: u32, size: u32) -> Option<Register> {
    let first = match size {
        0 => Register::AX,
        1 => Register::EAX,
        _ => Register::RAX,
    };
    register_after(first, n)
}

/// The register `n` places after `first` in iced's numbering (its GPRs of one size, and the
/// byte registers, are numbered consecutively).
#[inline]
fn register_after(first: Register, n: u32) -> Option<Register> {
    Register::try_from((first as usize).checked_add(n as usize)?).ok()
}

#[cfg(test)]
mod tests {
    extern crate std;

    use iced_x86::{Decoder, DecoderOptions, Instruction};
    use std::vec;
    use std::vec::Vec;

    use super::decode;

    /// Every prefix combination the fast path accepts, plus some it must leave to iced.
    const PREFIXES: &[&[u8]] = &[
        &[],
        &[0x66],
        &[0x67],
        &[0xF0],
        &[0x64],
        &[0x65],
        &[0x26],
        &[0x2E],
        &[0x36],
        &[0x3E],
        &[0x66, 0x67],
        &[0xF0, 0x66],
        &[0x67, 0x65, 0xF0],
        &[0x66, 0x66],
        &[0x64, 0x65],
        &[0xF0, 0xF0],
        &[0xF3],
        &[0xF2, 0xF0],
        &[0x66, 0x64, 0x67, 0xF0],
    ];

    /// REX bytes tried in 64-bit code (none, and the bits one at a time and together).
    const REX: &[Option<u8>] = &[
        None,
        Some(0x40),
        Some(0x41),
        Some(0x42),
        Some(0x44),
        Some(0x48),
        Some(0x4F),
    ];

    /// Opcodes (one byte, or 0F and one) with a ModRM byte, the fast path's and neighbours.
    fn opcodes() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = (0x00..=0x3Fu8)
            .filter(|o| o & 7 < 4)
            .map(|o| vec![o])
            .collect();
        for o in [
            0x80, 0x81, 0x82, 0x83, 0x84, 0x86, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x8D, 0xC6, 0xC7,
        ] {
            v.push(vec![o]);
        }
        for o in [0xB0, 0xB1, 0xB6, 0xB7, 0xBE, 0xC0] {
            v.push(vec![0x0F, o]);
        }
        v
    }

    /// A byte pattern for the displacement and immediate that follow, varied by `seed`.
    fn tail(seed: u32) -> [u8; 8] {
        let x = seed.wrapping_mul(0x9E37_79B9).rotate_left(7);
        let mut t = [0u8; 8];
        for (i, b) in t.iter_mut().enumerate() {
            *b = (x >> ((i % 4) * 8)) as u8 ^ (i as u8).wrapping_mul(0x5B);
        }
        // Some displacements negative, some not.
        if seed % 2 == 0 {
            t[0] |= 0x80;
            t[3] |= 0x80;
        }
        t
    }

    /// Compares the fast path with iced on `bytes`: where it decodes, bit for bit the same
    /// instruction (for both vendors' options); returns whether it decoded.
    fn agrees(bytes: &[u8], bits: u32, ip: u64) -> bool {
        let mut fast = Instruction::default();
        let decoded = decode(bytes, bits, ip, &mut fast);
        for options in [DecoderOptions::NONE, DecoderOptions::AMD] {
            let mut iced = Instruction::default();
            Decoder::with_ip(bits, bytes, ip, options).decode_out(&mut iced);
            if decoded {
                assert!(
                    fast.eq_all_bits(&iced),
                    "{bits}-bit {bytes:02X?}: fast {fast:?} ({:?}), iced {iced:?} ({:?})",
                    fast.code(),
                    iced.code()
                );
            }
        }
        decoded
    }

    /// The IP tried in `bits`-bit code: near the top, so that RIP-relative addresses wrap.
    fn ip_of(bits: u32) -> u64 {
        match bits {
            16 => 0xFFF0,
            32 => 0xFFFF_FFF0,
            _ => 0xFFFF_FFFF_FFFF_FFF0,
        }
    }

    /// `head` followed by each of `modrms`, then (where the ModRM byte takes one) every SIB
    /// byte when `every_sib` or a spread of them, then displacement and immediate bytes; each
    /// also cut short. Compares each with iced ([`agrees`]); returns (decoded, tried).
    fn sweep(
        head: &[u8],
        bits: u32,
        modrms: impl IntoIterator<Item = u8>,
        every_sib: bool,
    ) -> (u64, u64) {
        let (mut decoded, mut tried) = (0, 0);
        for modrm in modrms {
            let sibs: Vec<u8> = if modrm >> 6 == 3 || modrm & 7 != 4 {
                vec![0x24]
            } else if every_sib {
                (0..=255u8).collect()
            } else {
                vec![0x00, 0x25, 0x65, 0xA4, 0xCD, 0xE5, 0x1C, 0x7F]
            };
            for sib in sibs {
                let mut bytes = head.to_vec();
                bytes.push(modrm);
                bytes.push(sib);
                let seed = u32::from(modrm) << 8 | u32::from(sib);
                bytes.extend(tail(seed));
                tried += 1;
                if agrees(&bytes, bits, ip_of(bits)) {
                    decoded += 1;
                }
                // Cut short: missing bytes are iced's to fetch.
                let cut = 7 + (seed as usize % 4);
                if let Some(short) = bytes.get(..bytes.len().saturating_sub(cut)) {
                    agrees(short, bits, ip_of(bits));
                }
            }
        }
        (decoded, tried)
    }

    /// Every general-register form, prefix combination, REX byte, ModRM byte and (where there
    /// is one) SIB byte, in 16-, 32- and 64-bit code: wherever the fast path decodes, iced
    /// agrees; and it does decode the memory forms it is for.
    #[test]
    fn agrees_with_iced_on_every_modrm_and_sib() {
        let (mut decoded, mut tried) = (0, 0);
        for bits in [16u32, 32, 64] {
            for prefix in PREFIXES {
                for rex in REX.iter().filter(|r| bits == 64 || r.is_none()) {
                    for opcode in opcodes() {
                        let mut head = prefix.to_vec();
                        head.extend(rex.iter());
                        head.extend(&opcode);
                        // Every SIB byte without prefixes or with 67 alone (the address size
                        // is what changes its meaning); a spread of them otherwise.
                        let every_sib = prefix.is_empty() || **prefix == [0x67];
                        let (d, t) = sweep(&head, bits, 0..=255, every_sib);
                        decoded += d;
                        tried += t;
                    }
                }
            }
        }
        std::eprintln!("fast path: decoded {decoded} of {tried} encodings, each as iced does");
        // A fast path that declined everything would agree vacuously.
        assert!(decoded * 3 > tried, "decoded {decoded} of {tried}");
    }

    /// The second bytes after 0F tried for the SSE moves: the fast path's and neighbours.
    const SSE_OPCODES: [u8; 17] = [
        0x10, 0x11, 0x12, 0x13, 0x16, 0x28, 0x29, 0x2A, 0x2B, 0x6E, 0x6F, 0x7E, 0x7F, 0xC3, 0xD6,
        0xE6, 0xE7,
    ];

    /// The legacy SSE moves under every mandatory prefix and their combinations, with REX, in
    /// all three bitnesses, over every ModRM byte: wherever the fast path decodes, iced agrees.
    #[test]
    fn sse_moves_agree_with_iced() {
        const SSE_PREFIXES: &[&[u8]] = &[
            &[],
            &[0x66],
            &[0xF3],
            &[0xF2],
            &[0x67, 0xF3],
            &[0x66, 0xF3],
            &[0xF3, 0x66],
            &[0xF2, 0xF3],
            &[0xF3, 0xF3],
            &[0xF0, 0xF3],
            &[0xF3, 0xF0],
            &[0x66, 0x66],
            &[0x65, 0x66],
            &[0x2E, 0xF2],
            &[0xF3, 0x64, 0x67],
        ];
        let (mut decoded, mut tried) = (0, 0);
        for bits in [16u32, 32, 64] {
            for prefix in SSE_PREFIXES {
                for rex in REX.iter().filter(|r| bits == 64 || r.is_none()) {
                    for opcode in SSE_OPCODES {
                        let mut head = prefix.to_vec();
                        head.extend(rex.iter());
                        head.extend([0x0F, opcode]);
                        let every_sib = matches!(**prefix, [0x66] | [0x67, 0xF3]);
                        let (d, t) = sweep(&head, bits, 0..=255, every_sib);
                        decoded += d;
                        tried += t;
                    }
                }
            }
        }
        std::eprintln!("SSE: decoded {decoded} of {tried} encodings, each as iced does");
        assert!(decoded * 5 > tried, "decoded {decoded} of {tried}");
    }

    /// The VEX moves: every value of the VEX bytes' fields (R̄X̄B̄, map, W, v̄vvv, L, pp) under
    /// a few ModRM bytes, and every ModRM byte under a few VEX prefixes, with the legacy
    /// prefixes VEX allows and some it forbids, in all three bitnesses.
    #[test]
    fn vex_moves_agree_with_iced() {
        const FEW_MODRMS: [u8; 9] = [0x00, 0x04, 0x05, 0x45, 0x84, 0xBF, 0xC0, 0x18, 0x3C];
        const LEGACY: &[&[u8]] = &[&[], &[0x67], &[0x65], &[0x66], &[0xF3], &[0xF0], &[0x48]];
        let (mut decoded, mut tried) = (0, 0);
        let mut add = |(d, t): (u64, u64)| {
            decoded += d;
            tried += t;
        };
        for bits in [16u32, 32, 64] {
            for opcode in SSE_OPCODES {
                for field in 0..=255u8 {
                    add(sweep(&[0xC5, field, opcode], bits, FEW_MODRMS, false));
                    // Three-byte VEX: each field value as the first byte under a few second
                    // bytes, and as the second under a few first bytes.
                    let firsts = [0x78, 0x7C, 0x7E, 0xF9, 0xFD, 0x38, 0x00].map(|b| [field, b]);
                    let seconds = [0xE1, 0x61, 0xA1, 0xC1, 0x01, 0xE2, 0x21].map(|b| [b, field]);
                    for [one, two] in firsts.into_iter().chain(seconds) {
                        add(sweep(&[0xC4, one, two, opcode], bits, FEW_MODRMS, false));
                    }
                }
                for legacy in LEGACY {
                    if bits != 64 && legacy.first().is_some_and(|b| b & 0xF0 == 0x40) {
                        continue;
                    }
                    for vex in [&[0xC5, 0xF8][..], &[0xC5, 0x7E], &[0xC4, 0x41, 0x7D]] {
                        let mut head = legacy.to_vec();
                        head.extend(vex);
                        head.push(opcode);
                        add(sweep(&head, bits, 0..=255, legacy.is_empty()));
                    }
                }
            }
        }
        std::eprintln!("VEX: decoded {decoded} of {tried} encodings, each as iced does");
        // Most values of the VEX fields are other instructions or invalid: about 3 % decode.
        if crate::decoder_support().vex {
            assert!(decoded * 50 > tried, "decoded {decoded} of {tried}");
        } else {
            assert_eq!(decoded, 0, "VEX decoded without the tables");
        }
    }

    /// The benchmarked single-instruction exits (BENCHMARKS.md) all take the fast path, so
    /// the figures measure it.
    #[test]
    fn the_benchmarked_forms_take_the_fast_path() {
        let cases: [(u32, &[u8]); 9] = [
            (64, &[0x89, 0x58, 0x10]),       // mov [rax+0x10], ebx
            (64, &[0x8B, 0x03]),             // mov eax, [rbx]
            (64, &[0x0F, 0xB7, 0x03]),       // movzx eax, word [rbx]
            (64, &[0xF3, 0x0F, 0x7F, 0x00]), // movdqu [rax], xmm0
            (64, &[0x01, 0x18]),             // add [rax], ebx
            (64, &[0x08, 0x18]),             // or [rax], bl
            (64, &[0xF0, 0x0F, 0xB1, 0x18]), // lock cmpxchg [rax], ebx
            (16, &[0x89, 0x07]),             // mov [bx], ax
            (32, &[0x89, 0x03]),             // mov [ebx], eax
        ];
        for (bits, bytes) in cases {
            assert!(agrees(bytes, bits, 0x1000), "{bits}-bit {bytes:02X?}");
        }
        // vmovdqu [rax], ymm0: when the linked decoder has VEX tables.
        let ymm = [0xC5, 0xFE, 0x7F, 0x00];
        assert_eq!(agrees(&ymm, 64, 0x1000), crate::decoder_support().vex);
    }

    /// Random prefix soups (any order, repeats, REX anywhere) before the fast path's opcodes
    /// and random bytes: wherever it decodes, iced agrees.
    #[test]
    fn agrees_with_iced_on_random_prefix_orders() {
        const PREFIX: [u8; 16] = [
            0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x40, 0x44, 0x48,
            0x4B, 0x4F,
        ];
        const OPCODE: [&[u8]; 14] = [
            &[0x01],
            &[0x08],
            &[0x2B],
            &[0x38],
            &[0x80],
            &[0x81],
            &[0x83],
            &[0x88],
            &[0x8B],
            &[0xC6],
            &[0xC7],
            &[0x0F, 0xB1],
            &[0x0F, 0xB6],
            &[0x0F, 0xB7],
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut decoded = 0u32;
        for _ in 0..200_000 {
            let mut bytes = Vec::new();
            for _ in 0..next() % 5 {
                bytes.push(PREFIX[(next() % 16) as usize]);
            }
            bytes.extend(OPCODE[(next() % 14) as usize]);
            bytes.extend(next().to_le_bytes());
            bytes.extend(next().to_le_bytes());
            let bits = [16, 32, 64][(next() % 3) as usize];
            if agrees(&bytes, bits, next()) {
                decoded += 1;
            }
        }
        assert!(decoded > 30_000, "decoded {decoded}");
    }
}
