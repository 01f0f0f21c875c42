//! Instructions decoded, and classified, on earlier exits.
//!
//! Decoding is the largest single cost of a simple exit, and most of it is building an
//! iced-x86 decoder, which cannot be pointed at new bytes safely. A guest takes its MMIO and
//! port exits at a handful of instructions (a driver's register accessors), so a monitor that
//! keeps a [`DecodeCache`] per virtual processor skips decoding on every exit but the first at
//! each of them.

use crate::execute::Plan;

/// Entries held; direct-mapped by RIP.
const ENTRIES: usize = 8;

/// What a decode depends on: the bytes the exit carried, the instruction's address
/// (RIP-relative operands and branch targets come out absolute), the bitness and the decoder
/// options.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Key {
    /// The exit's 16 byte places, little-endian; only the first `count` are the exit's.
    pub bytes: u128,
    pub count: usize,
    pub rip: u64,
    pub bits: u32,
    pub options: u32,
}

/// One remembered instruction.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The instruction's own bytes, zero beyond its length.
    bytes: u128,
    rip: u64,
    options: u32,
    /// The instruction's length, 1..=15.
    len: u8,
    bits: u8,
    plan: Plan,
}

/// The first `len` (at most 15) bytes of `bytes`.
#[inline]
fn prefix(bytes: u128, len: usize) -> u128 {
    // `len` is below 16, so the shift is below 128.
    let shift = u32::try_from(len.min(15)).unwrap_or(15).wrapping_mul(8);
    bytes & 1u128.wrapping_shl(shift).wrapping_sub(1)
}

/// Instructions decoded on earlier exits, keyed by their bytes, address, bitness and decoder
/// options, so that a repeated exit at the same instruction need not decode it again.
///
/// A monitor opts in by keeping one per virtual processor and returning it from
/// [`EmulatorCallbacks::decode_cache`](crate::EmulatorCallbacks::decode_cache). The key holds
/// everything the decoder's result depends on, including the bytes themselves, so a hit is
/// exactly what decoding would give: code rewritten in place, another address space or a
/// mode switch is a miss, never a stale instruction. Each entry also keeps what hvemu derives
/// from the instruction alone (its family, the registers it reads). Only instructions whose
/// bytes all came with the exit are remembered. It is at most a kilobyte, holds no pointers and
/// never allocates.
///
/// ```
/// use hvemu::DecodeCache;
///
/// let mut cache = DecodeCache::new();
/// assert_eq!(cache.len(), 0);
/// cache.clear();
/// ```
#[derive(Clone, Debug, Default)]
pub struct DecodeCache {
    entries: [Option<Entry>; ENTRIES],
}

impl DecodeCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every instruction (never needed for correctness; for a monitor that wants a
    /// cold start, say in a benchmark).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// How many instructions are remembered.
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.is_some()).count()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn slot(rip: u64) -> usize {
        // Accessors tend to sit a few bytes apart: fold the low bits in.
        (rip ^ (rip >> 4) ^ (rip >> 12)) as usize % ENTRIES
    }

    /// The plan of the instruction decoded earlier from a prefix of `key`'s bytes.
    #[inline]
    pub(crate) fn lookup(&self, key: &Key) -> Option<&Plan> {
        let e = self.entries.get(Self::slot(key.rip))?.as_ref()?;
        let len = usize::from(e.len);
        let hit = e.rip == key.rip
            && len <= key.count
            && u32::from(e.bits) == key.bits
            && e.options == key.options
            && prefix(key.bytes, len) == e.bytes;
        hit.then_some(&e.plan)
    }

    /// Remembers `plan`, whose instruction was decoded from the start of `key`'s bytes.
    #[inline]
    pub(crate) fn insert(&mut self, key: &Key, plan: &Plan) {
        let len = plan.instr.len();
        if !(1..=15).contains(&len) || len > key.count {
            return;
        }
        if let Some(e) = self.entries.get_mut(Self::slot(key.rip)) {
            *e = Some(Entry {
                bytes: prefix(key.bytes, len),
                rip: key.rip,
                options: key.options,
                len: len as u8,
                bits: key.bits as u8,
                plan: *plan,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Instruction};
    use std::format;

    fn decode(bits: u32, bytes: &[u8], rip: u64, options: u32) -> Instruction {
        Decoder::with_ip(bits, bytes, rip, options).decode()
    }

    fn key(bytes: &[u8; 16], count: usize, rip: u64, bits: u32, options: u32) -> Key {
        Key {
            bytes: u128::from_le_bytes(*bytes),
            count,
            rip,
            bits,
            options,
        }
    }

    #[test]
    fn a_hit_needs_every_part_of_the_key() {
        let mut raw = [0xEEu8; 16];
        raw[..4].copy_from_slice(&[0x89, 0x58, 0x10, 0x90]); // mov [rax+0x10], ebx; nop
        let (rip, opts) = (0x40_1000, DecoderOptions::NONE);
        let instr = decode(64, &raw, rip, opts);
        assert_eq!(instr.len(), 3);
        let mut cache = DecodeCache::new();
        cache.insert(&key(&raw, 16, rip, 64, opts), &Plan::of(instr));
        assert_eq!(cache.len(), 1);
        assert!(cache.lookup(&key(&raw, 3, rip, 64, opts)).is_some());
        // Bytes beyond the instruction do not matter.
        let mut other_tail = raw;
        other_tail[3..].fill(0x11);
        assert!(cache.lookup(&key(&other_tail, 16, rip, 64, opts)).is_some());
        // Each part of the key does.
        let mut other = raw;
        other[2] = 0x20;
        assert!(cache.lookup(&key(&other, 16, rip, 64, opts)).is_none());
        assert!(cache.lookup(&key(&raw, 2, rip, 64, opts)).is_none());
        assert!(cache.lookup(&key(&raw, 16, rip + 1, 64, opts)).is_none());
        assert!(cache.lookup(&key(&raw, 16, rip, 32, opts)).is_none());
        let amd = DecoderOptions::AMD;
        assert!(cache.lookup(&key(&raw, 16, rip, 64, amd)).is_none());
        cache.clear();
        assert!(cache.is_empty());
        assert!(cache.lookup(&key(&raw, 16, rip, 64, opts)).is_none());
    }

    /// Over pseudo-random bytes, addresses and bitnesses, the plan the cache returns is the
    /// plan of a fresh decode of the same bytes with other trailing bytes, field for field.
    #[test]
    fn hits_equal_fresh_decodes() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut cache = DecodeCache::new();
        let mut hits = 0;
        for _ in 0..20_000 {
            let mut raw = [0u8; 16];
            for b in raw.iter_mut() {
                *b = next() as u8;
            }
            let bits = [16, 32, 64][next() as usize % 3];
            let rip = next() & if bits == 64 { u64::MAX } else { 0xFFFF_FFFF };
            let opts = [DecoderOptions::NONE, DecoderOptions::AMD][next() as usize % 2];
            let instr = decode(bits, &raw[..15], rip, opts);
            if instr.is_invalid() {
                continue;
            }
            cache.insert(&key(&raw, 15, rip, bits, opts), &Plan::of(instr));
            let mut tail = raw;
            for b in tail[instr.len()..].iter_mut() {
                *b = next() as u8;
            }
            let cached = *cache
                .lookup(&key(&tail, 15, rip, bits, opts))
                .expect("just inserted");
            let fresh = Plan::of(decode(bits, &tail[..15], rip, opts));
            assert_eq!(format!("{cached:?}"), format!("{fresh:?}"), "{raw:02x?}");
            hits += 1;
        }
        assert!(hits > 10_000, "{hits} valid decodes");
    }
}
