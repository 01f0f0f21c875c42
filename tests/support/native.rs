//! What the host-CPU oracles share: RFLAGS bits, the host's vendor, a seeded generator.
#![allow(dead_code)]

use hvemu::Vendor;

pub const CF: u64 = 1;
pub const PF: u64 = 1 << 2;
pub const AF: u64 = 1 << 4;
pub const ZF: u64 = 1 << 6;
pub const SF: u64 = 1 << 7;
pub const DF: u64 = 1 << 10;
pub const OF: u64 = 1 << 11;
/// The six status flags.
pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// The host's vendor, if it is one hvemu imitates.
pub fn host_vendor() -> Option<Vendor> {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 0 exists on every x86-64 processor.
    let r = unsafe { core::arch::x86_64::__cpuid(0) };
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&r.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&r.edx.to_le_bytes());
    id[8..].copy_from_slice(&r.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Some(Vendor::Intel),
        b"AuthenticAMD" | b"HygonGenuine" => Some(Vendor::Amd),
        _ => None,
    }
}

/// xorshift64*: seeded, so every run checks the same cases. Oracles add their own
/// generators for operands in `impl Rng` blocks of their own.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub fn coin(&mut self) -> bool {
        self.next() & 1 == 0
    }
}
