//! Bit instructions with a memory operand: the bit tests BT, BTS, BTR and BTC (SDM Vol. 2A
//! "BT", "BTC", "BTR", "BTS") and the bit scans and counts BSF, BSR, POPCNT, LZCNT and TZCNT
//! (Vol. 2A "BSF", "BSR", "LZCNT", Vol. 2B "POPCNT", "TZCNT"; AMD APM Vol. 3 for the same).
//! Each operation is a zero-sized type implementing [`BitTestOp`] or [`ScanOp`], and one
//! generic routine runs each shape.
//!
//! # Bit tests
//!
//! With an immediate bit offset the bit is `imm8` modulo the operand width. With a register
//! offset and a memory operand the offset is a *signed* integer of the operand size that may
//! reach outside the operand: the processor accesses the operand-sized word at
//! effective address + operand size × (offset SAR log2(width)), truncated to the address size
//! (so 16-bit addressing wraps at 64 KiB), and tests bit offset mod width of it. Segment limit,
//! canonical form, alignment and paging are checked at that address, as the processor does.
//! BT only reads; BTS, BTR and BTC are read-modify-write like [`super::alu`] (checked and
//! translated once for reading and writing, faulting as a write, then one read and one write,
//! the write happening even when the bit already had its new value) and accept LOCK, performed
//! as that read and write through the callbacks.
//!
//! Flags: CF receives the bit; ZF is unchanged; OF, SF, AF and PF are undefined and both
//! vendors leave them unchanged (measured on both), as hvemu does.
//!
//! # Scans and counts
//!
//! The source is memory, the destination a register (a 16-bit write keeps the rest of the
//! register, a 32-bit write zero-extends).
//!
//! * BSF, BSR: with a zero source ZF is set and the destination is not written at all (AMD
//!   documents this; both vendors do it, measured; the SDM now says "unmodified" too, while
//!   LLVM notes that some Intel parts clear bits 63:32 of a 32-bit destination, which the Xeon
//!   measured here does not; hvemu leaves all of it). Otherwise the destination receives the
//!   index of the lowest (highest) set bit and ZF is cleared. CF, OF, SF, AF and PF are
//!   undefined. AMD leaves them unchanged. Intel clears CF, OF, SF and AF and sets PF from the
//!   parity of the index; with a zero source it clears the same four and sets PF (the parity
//!   of the zero source).
//! * POPCNT: the number of set bits; ZF when the source is zero; CF, OF, SF, AF, PF cleared.
//! * LZCNT, TZCNT: the number of leading (trailing) zero bits, the width for a zero source; CF
//!   when the source is zero, ZF when the result is zero. OF, SF, AF and PF are undefined: AMD
//!   clears SF, AF and PF and keeps OF; Intel clears all four. (On a processor without LZCNT,
//!   `F3 0F BD` executes as BSR; hvemu decodes and runs LZCNT, the instruction of every
//!   processor since AMD's ABM and Intel's Haswell.)
//!
//! The undefined flags were measured natively: AMD on a Zen 3, Intel on a Xeon of family 6,
//! model 207 (Emerald Rapids), with tens of millions of random sources and flags plus every
//! single-bit source. Other Intel generations were not measured and may differ. The
//! `oracle_integer` test compares them with the host whenever the host's vendor is the
//! configured one.

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::flags::{AF, ARITHMETIC, CF, PF, SF, Update, ZF, flag_if, result_flags};
use super::xchg::{Rmw, read_modify_write};
use super::{read_value, unsupported};
use crate::access::Intent;
use crate::callbacks::EmulatorCallbacks;
use crate::config::Vendor;
use crate::operand::{MemRef, address_mask, memory_address_size};
use crate::rep::Progress;
use crate::state::{Cpu, Res, bit_width, width_mask};

/// One bit test: what it stores in the tested word (BT stores nothing).
pub(crate) trait BitTestOp {
    /// Whether the word is written back (false for BT).
    const WRITES: bool;
    /// The word after the operation on bit `bit` (below the width).
    fn apply(word: u64, bit: u32) -> u64;
}

/// BT: test only.
pub(crate) struct Bt;
/// BTS: test and set.
pub(crate) struct Bts;
/// BTR: test and reset.
pub(crate) struct Btr;
/// BTC: test and complement.
pub(crate) struct Btc;

fn one(bit: u32) -> u64 {
    1u64.checked_shl(bit).unwrap_or(0)
}

impl BitTestOp for Bt {
    const WRITES: bool = false;
    fn apply(word: u64, _: u32) -> u64 {
        word
    }
}

impl BitTestOp for Bts {
    const WRITES: bool = true;
    fn apply(word: u64, bit: u32) -> u64 {
        word | one(bit)
    }
}

impl BitTestOp for Btr {
    const WRITES: bool = true;
    fn apply(word: u64, bit: u32) -> u64 {
        word & !one(bit)
    }
}

impl BitTestOp for Btc {
    const WRITES: bool = true;
    fn apply(word: u64, bit: u32) -> u64 {
        word ^ one(bit)
    }
}

/// What a scan or count produces: the destination (`None`: not written) and its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scan {
    /// The new destination value, or `None` to leave the register untouched.
    pub dest: Option<u64>,
    /// New values of the flags in `changed`.
    pub flags: u64,
    /// Which status flags change.
    pub changed: u64,
}

/// One scan or count of a `size`-byte source.
pub(crate) trait ScanOp {
    /// The destination and flags for `src` (masked to `size`).
    fn apply(src: u64, size: usize, vendor: Vendor) -> Scan;
}

/// BSF.
pub(crate) struct Bsf;
/// BSR.
pub(crate) struct Bsr;
/// POPCNT.
pub(crate) struct Popcnt;
/// LZCNT.
pub(crate) struct Lzcnt;
/// TZCNT.
pub(crate) struct Tzcnt;

/// BSF and BSR once the index of the found bit is known.
fn bit_scan(src: u64, index: u32, vendor: Vendor) -> Scan {
    // The index only when there is one; a zero source leaves the destination.
    let dest = (src != 0).then_some(u64::from(index));
    match vendor {
        Vendor::Amd => Scan {
            dest,
            flags: flag_if(src == 0, ZF),
            changed: ZF,
        },
        // ZF as defined, PF the parity of the index (of the zero source when there is none),
        // the other four cleared.
        Vendor::Intel => Scan {
            dest,
            flags: flag_if(src == 0, ZF) | (result_flags(dest.unwrap_or(0), 1) & PF),
            changed: ARITHMETIC,
        },
    }
}

impl ScanOp for Bsf {
    fn apply(src: u64, size: usize, vendor: Vendor) -> Scan {
        let src = src & width_mask(size);
        bit_scan(src, src.trailing_zeros(), vendor)
    }
}

impl ScanOp for Bsr {
    fn apply(src: u64, size: usize, vendor: Vendor) -> Scan {
        let src = src & width_mask(size);
        bit_scan(src, 63u32.saturating_sub(src.leading_zeros()), vendor)
    }
}

impl ScanOp for Popcnt {
    fn apply(src: u64, size: usize, _: Vendor) -> Scan {
        let src = src & width_mask(size);
        Scan {
            dest: Some(u64::from(src.count_ones())),
            flags: flag_if(src == 0, ZF),
            changed: ARITHMETIC,
        }
    }
}

/// LZCNT and TZCNT once the count is known.
fn zero_count(src: u64, count: u32, vendor: Vendor) -> Scan {
    let flags = flag_if(src == 0, CF) | flag_if(count == 0, ZF);
    Scan {
        dest: Some(u64::from(count)),
        flags,
        // Both clear the undefined flags they change; AMD keeps OF.
        changed: match vendor {
            Vendor::Amd => CF | ZF | SF | AF | PF,
            Vendor::Intel => ARITHMETIC,
        },
    }
}

impl ScanOp for Lzcnt {
    fn apply(src: u64, size: usize, vendor: Vendor) -> Scan {
        let src = src & width_mask(size);
        // The 64-bit count includes the bits above the operand (all zero after the mask).
        let above = 64u32.saturating_sub(bit_width(size));
        let count = src.leading_zeros().saturating_sub(above);
        zero_count(src, count, vendor)
    }
}

impl ScanOp for Tzcnt {
    fn apply(src: u64, size: usize, vendor: Vendor) -> Scan {
        let src = src & width_mask(size);
        zero_count(src, src.trailing_zeros().min(bit_width(size)), vendor)
    }
}

/// Which operation, as [`super::Family::Bits`] carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BitKind {
    /// BT.
    Bt,
    /// BTS.
    Bts,
    /// BTR.
    Btr,
    /// BTC.
    Btc,
    /// BSF.
    Bsf,
    /// BSR.
    Bsr,
    /// POPCNT.
    Popcnt,
    /// LZCNT.
    Lzcnt,
    /// TZCNT.
    Tzcnt,
}

/// The operation of a bit instruction with a memory operand; `None` for anything else.
pub(super) fn classify(instr: &Instruction) -> Option<BitKind> {
    let (kind, mem_op) = match instr.mnemonic() {
        Mnemonic::Bt => (BitKind::Bt, 0),
        Mnemonic::Bts => (BitKind::Bts, 0),
        Mnemonic::Btr => (BitKind::Btr, 0),
        Mnemonic::Btc => (BitKind::Btc, 0),
        Mnemonic::Bsf => (BitKind::Bsf, 1),
        Mnemonic::Bsr => (BitKind::Bsr, 1),
        Mnemonic::Popcnt => (BitKind::Popcnt, 1),
        Mnemonic::Lzcnt => (BitKind::Lzcnt, 1),
        Mnemonic::Tzcnt => (BitKind::Tzcnt, 1),
        _ => return None,
    };
    // The legacy encodings only (Knights Corner's VEX forms have no memory operand).
    (instr.op_count() == 2 && instr.op_kind(mem_op) == OpKind::Memory).then_some(kind)
}

/// Runs the operation.
pub(super) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    kind: BitKind,
) -> Res<Progress, C> {
    let scan = |r: Res<(), C>| r.map(|()| Progress::Complete);
    match kind {
        BitKind::Bt => run_test::<Bt, C>(cpu, instr),
        BitKind::Bts => run_test::<Bts, C>(cpu, instr),
        BitKind::Btr => run_test::<Btr, C>(cpu, instr),
        BitKind::Btc => run_test::<Btc, C>(cpu, instr),
        BitKind::Bsf => scan(run_scan::<Bsf, C>(cpu, instr)),
        BitKind::Bsr => scan(run_scan::<Bsr, C>(cpu, instr)),
        BitKind::Popcnt => scan(run_scan::<Popcnt, C>(cpu, instr)),
        BitKind::Lzcnt => scan(run_scan::<Lzcnt, C>(cpu, instr)),
        BitKind::Tzcnt => scan(run_scan::<Tzcnt, C>(cpu, instr)),
    }
}

/// The word a register bit offset selects (SDM Vol. 2A "BT", "Operation" and Table 3-2):
/// the operand-sized word `size` × (offset SAR log2(width)) bytes from the operand, and the bit
/// within it.
fn bit_base(mem: MemRef, offset: u64, size: usize, instr: &Instruction) -> (MemRef, u32) {
    let bits = bit_width(size);
    let signed = super::mov::sign_extend(offset, size) as i64;
    let words = signed >> bits.trailing_zeros();
    let displacement = words.wrapping_mul(size as i64) as u64;
    let moved = MemRef {
        seg: mem.seg,
        offset: mem.offset.wrapping_add(displacement) & address_mask(memory_address_size(instr)),
    };
    (moved, (offset as u32) & bits.saturating_sub(1))
}

/// The bit-test routine: find the word and bit, read (and for BTS/BTR/BTC write) the word, CF
/// receives the bit. A LOCKed BTS/BTR/BTC goes through the locked read-modify-write of
/// [`super::xchg`] (the monitor's compare-exchange when it offers one).
pub(crate) fn run_test<O: BitTestOp, C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
) -> Res<Progress, C> {
    let size = instr.memory_size().size();
    if !matches!(size, 2 | 4 | 8) || instr.op0_kind() != OpKind::Memory {
        return Err(unsupported(instr));
    }
    let mem = cpu.effective_address(instr)?;
    let (mem, bit) = match instr.op1_kind() {
        OpKind::Register => {
            let offset = cpu.read_reg(instr.op1_register())?;
            bit_base(mem, offset, size, instr)
        }
        OpKind::Immediate8 => (
            mem,
            (instr.immediate(1) as u32) & bit_width(size).saturating_sub(1),
        ),
        _ => return Err(unsupported(instr)),
    };
    let intent = if O::WRITES {
        Intent::ReadWrite
    } else {
        Intent::Read
    };
    // Every fault is found here, before the read.
    let span = cpu.resolve(mem, size, intent)?;
    let word = if O::WRITES {
        let update = |old: u128| u128::from(O::apply(old as u64, bit));
        match read_modify_write(cpu, &span, size, instr.has_lock_prefix(), 0, update)? {
            Rmw::Done { old } => old as u64,
            Rmw::Contended => return Ok(Progress::Retry),
        }
    } else {
        cpu.read_span_value(&span, size)?
    };
    let update = Update {
        value: word,
        flags: flag_if(word.checked_shr(bit).unwrap_or(0) & 1 != 0, CF),
        changed: CF,
    };
    cpu.state.rflags = update.rflags(cpu.state.rflags);
    Ok(Progress::Complete)
}

/// The scan routine: read the source, write the destination register (unless the operation
/// leaves it), merge the flags.
pub(crate) fn run_scan<O: ScanOp, C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
) -> Res<(), C> {
    let size = instr.memory_size().size();
    if !matches!(size, 2 | 4 | 8)
        || instr.op0_kind() != OpKind::Register
        || instr.op1_kind() != OpKind::Memory
    {
        return Err(unsupported(instr));
    }
    let mem = cpu.effective_address(instr)?;
    let src = read_value(cpu, mem, size)?;
    let scan = O::apply(src, size, cpu.config.vendor);
    if let Some(value) = scan.dest {
        cpu.write_reg(instr.op0_register(), value)?;
    }
    let update = Update {
        value: 0,
        flags: scan.flags,
        changed: scan.changed,
    };
    cpu.state.rflags = update.rflags(cpu.state.rflags);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_and_counts() {
        for vendor in [Vendor::Intel, Vendor::Amd] {
            assert_eq!(Bsf::apply(0x0100, 2, vendor).dest, Some(8));
            assert_eq!(Bsr::apply(0x0100_0001, 4, vendor).dest, Some(24));
            assert_eq!(Bsr::apply(u64::MAX, 8, vendor).dest, Some(63));
            assert_eq!(Bsf::apply(0, 8, vendor).dest, None);
            assert_eq!(
                Bsf::apply(0x1_0000, 2, vendor).dest,
                None,
                "masked to 16 bits"
            );
            assert_eq!(Lzcnt::apply(1, 2, vendor).dest, Some(15));
            assert_eq!(Lzcnt::apply(0, 4, vendor).flags, CF);
            assert_eq!(Lzcnt::apply(0, 4, vendor).dest, Some(32));
            assert_eq!(Lzcnt::apply(1 << 63, 8, vendor).flags, ZF);
            assert_eq!(Tzcnt::apply(0, 2, vendor).dest, Some(16));
            assert_eq!(Tzcnt::apply(0x8000, 2, vendor).dest, Some(15));
            assert_eq!(Popcnt::apply(0xF0F0, 2, vendor).dest, Some(8));
            assert_eq!(Popcnt::apply(0, 8, vendor).flags, ZF);
        }
        assert_eq!(Bsf::apply(0x1, 4, Vendor::Amd).changed, ZF);
        assert_eq!(Bsf::apply(0, 4, Vendor::Amd), scan(None, ZF, ZF));
    }

    fn scan(dest: Option<u64>, flags: u64, changed: u64) -> Scan {
        Scan {
            dest,
            flags,
            changed,
        }
    }

    /// Intel's BSF and BSR, measured natively on a Xeon of family 6, model 207: CF, OF, SF
    /// and AF cleared, PF the parity of the index.
    #[test]
    fn intel_bit_scans_set_pf_from_the_index() {
        let v = Vendor::Intel;
        // Index 3 (two bits set): even parity.
        assert_eq!(Bsf::apply(0x8, 4, v), scan(Some(3), PF, ARITHMETIC));
        // Index 4: odd parity.
        assert_eq!(Bsf::apply(0x10, 4, v), scan(Some(4), 0, ARITHMETIC));
        assert_eq!(Bsf::apply(0x1, 2, v), scan(Some(0), PF, ARITHMETIC));
        assert_eq!(Bsr::apply(u64::MAX, 8, v), scan(Some(63), PF, ARITHMETIC));
        assert_eq!(Bsr::apply(0x8000_0000, 4, v), scan(Some(31), 0, ARITHMETIC));
    }

    /// Intel's BSF and BSR of zero, measured natively on a Xeon of family 6, model 207 (16,
    /// 32 and 64 bits, every incoming flag state): ZF and PF set, CF, OF, SF and AF cleared,
    /// the destination register (all 64 bits) untouched.
    #[test]
    fn intel_bit_scans_of_zero_set_zf_and_pf() {
        for size in [2, 4, 8] {
            assert_eq!(
                Bsf::apply(0, size, Vendor::Intel),
                scan(None, ZF | PF, ARITHMETIC)
            );
            assert_eq!(
                Bsr::apply(0, size, Vendor::Intel),
                scan(None, ZF | PF, ARITHMETIC)
            );
        }
    }

    /// Intel's LZCNT and TZCNT clear OF, SF, AF and PF (measured natively on a Xeon of family
    /// 6, model 207); AMD keeps OF.
    #[test]
    fn zero_counts_clear_the_undefined_flags() {
        // 0x2DD8_F0A6 has two leading zeros; the host left 0x202 from 0x810 (OF and AF in).
        assert_eq!(
            Lzcnt::apply(0x2DD8_F0A6, 4, Vendor::Intel),
            scan(Some(2), 0, ARITHMETIC)
        );
        assert_eq!(
            Tzcnt::apply(0x10, 2, Vendor::Intel),
            scan(Some(4), 0, ARITHMETIC)
        );
        assert_eq!(
            Tzcnt::apply(0, 8, Vendor::Intel),
            scan(Some(64), CF, ARITHMETIC)
        );
        assert_eq!(
            Lzcnt::apply(0, 2, Vendor::Amd).changed,
            ARITHMETIC & !crate::execute::flags::OF
        );
    }

    #[test]
    fn bit_offsets_reach_outside_the_operand() {
        let mem = MemRef {
            seg: crate::registers::Segment::Ds,
            offset: 0x1000,
        };
        let mut decoder = iced_x86::Decoder::new(64, &[0x0F, 0xA3, 0x03], 0); // bt [rbx], eax
        let instr = decoder.decode();
        // +35 → next dword, bit 3; -1 → previous dword, bit 31.
        assert_eq!(
            bit_base(mem, 35, 4, &instr),
            (
                MemRef {
                    offset: 0x1004,
                    ..mem
                },
                3
            )
        );
        assert_eq!(
            bit_base(mem, 0xFFFF_FFFF, 4, &instr),
            (
                MemRef {
                    offset: 0xFFC,
                    ..mem
                },
                31
            )
        );
        // A 64-bit offset of -2^63 moves 2^60 bytes down.
        assert_eq!(
            bit_base(mem, 1 << 63, 8, &instr).0.offset,
            0x1000u64.wrapping_sub(1 << 60)
        );
        // 16-bit: the offset is a signed word.
        assert_eq!(
            bit_base(mem, 0x8000, 2, &instr),
            (
                MemRef {
                    offset: 0x1000 - 0x1000,
                    ..mem
                },
                0
            )
        );
    }
}
