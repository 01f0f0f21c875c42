//! Fixed guest-physical layout shared by every mode.
//!
//! Everything the harness itself needs lives below 1 MiB so real mode and
//! 16-bit code can reach it; system structures sit below 64 KiB so 16-bit
//! offsets with a flat (base 0) data segment can address them.

/// Real-mode interrupt vector table (256 × seg:off).
pub const IVT: u64 = 0x0000;
/// Global descriptor table (one page).
pub const GDT: u64 = 0x1000;
/// Protected/long-mode IDT (256 gates; 16 bytes each in long mode).
pub const IDT: u64 = 0x2000;
/// Task-state segment; the 32- or 64-bit format is written depending on mode.
pub const TSS: u64 = 0x3000;
/// Offset of the I/O permission bitmap inside the TSS.
pub const TSS_IOPB_OFFSET: u64 = 0x68;
/// Bytes in the I/O permission bitmap (65536 ports), followed by one 0xFF byte.
pub const IOPB_BYTES: u64 = 0x2000;
/// TSS limit: covers the bitmap and its terminating byte.
pub const TSS_LIMIT: u32 = (TSS_IOPB_OFFSET + IOPB_BYTES) as u32;
/// Exception stubs for real mode (16-bit code, reached through the IVT).
pub const STUBS16: u64 = 0x6000;
/// Exception stubs for legacy protected modes (32-bit code, 32-bit gates).
pub const STUBS32: u64 = 0x7000;
/// Exception stubs for long mode (64-bit code, 64-bit gates).
pub const STUBS64: u64 = 0x8000;
/// Exception record written by every handler; see [`super::ExceptionRecord`].
pub const EXC_RECORD: u64 = 0x9000;
/// Free RAM reachable with 16-bit offsets from a base-0 segment.
pub const LOW_SCRATCH: u64 = 0xA000;
/// Size of [`LOW_SCRATCH`].
pub const LOW_SCRATCH_SIZE: u64 = 0x4000;
/// Initial SP of 16-bit modes (SS base 0; the stack occupies 0xE000..0xFFF0).
/// Base 0 because kvm-pvm pushes exception frames at linear ESP, ignoring
/// SS.base, in legacy protected mode.
pub const STACK16_TOP: u64 = 0xFFF0;
/// Guest program is loaded here. 16-bit modes use a code segment based here.
pub const CODE: u64 = 0x1_0000;
/// Maximum program size.
pub const CODE_SIZE: u64 = 0x1_0000;
/// Free RAM for test data.
pub const DATA: u64 = 0x2_0000;
/// Size of [`DATA`].
pub const DATA_SIZE: u64 = 0x1_0000;
/// Initial stack pointer of 32/64-bit guest programs (linear address).
pub const STACK_TOP: u64 = 0x3_8000;
/// Ring-0 stack used by exception delivery (TSS RSP0/ESP0 and IST1).
pub const KERNEL_STACK_TOP: u64 = 0x4_0000;
/// Pool of pages for paging structures.
pub const PT_POOL: u64 = 0x4_0000;
/// End of [`PT_POOL`] (exclusive).
pub const PT_POOL_END: u64 = 0x8_0000;
/// Low MMIO hole left unmapped inside RAM (reachable from real mode).
pub const LOW_MMIO: u64 = 0xA_0000;
/// Size of [`LOW_MMIO`].
pub const LOW_MMIO_SIZE: u64 = 0x2_0000;
/// [`LOW_MMIO`] as a range.
pub const LOW_MMIO_RANGE: std::ops::Range<u64> = LOW_MMIO..LOW_MMIO + LOW_MMIO_SIZE;
/// Default RAM size (GPA 0 up to here, minus holes).
pub const RAM_SIZE: u64 = 4 << 20;
/// High MMIO window; nothing is mapped here, and page tables identity-map it.
pub const HIGH_MMIO: u64 = 0xC000_0000;
/// Size of the identity-mapped part of [`HIGH_MMIO`] in paged modes.
pub const HIGH_MMIO_SIZE: u64 = 2 << 20;

/// GDT selectors (RPL 0; OR in 3 for user selectors).
pub mod sel {
    pub const KERNEL_CS64: u16 = 0x08;
    pub const KERNEL_DS: u16 = 0x10;
    /// SYSRET-compatible order: user CS32, user DS, user CS64.
    pub const USER_CS32: u16 = 0x18;
    pub const USER_DS: u16 = 0x20;
    pub const USER_CS64: u16 = 0x28;
    pub const KERNEL_CS32: u16 = 0x30;
    /// 16-bit code, base [`super::CODE`], limit 0xFFFF.
    pub const KERNEL_CS16: u16 = 0x38;
    /// 16-bit stack/data, base 0, limit 0xFFFF, B=0.
    pub const KERNEL_SS16: u16 = 0x40;
    pub const TSS32: u16 = 0x48;
    /// 16-byte system descriptor (occupies 0x50 and 0x58).
    pub const TSS64: u16 = 0x50;
    /// Number of bytes of GDT in use.
    pub const GDT_BYTES: u16 = 0x60;
}
