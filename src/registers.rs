//! Register names and values, numbered as the platform numbers them.
//!
//! [`RegisterName`] keeps the `WHV_REGISTER_NAME` values, so a monitor on the Windows Hypervisor
//! Platform can pass names straight through. Names hvemu adds beyond the platform's set are
//! marked as such.

use bitflags::bitflags;

/// A register, by its platform number (`WHV_REGISTER_NAME`).
///
/// A newtype rather than an enum so that a monitor can pass through names hvemu does not know
/// (the pending-event registers, say) without a lossy conversion.
///
/// # hvemu's extension names (0x0001_0000..=0x0001_FFFF)
///
/// The platform names XMM0–XMM15 (0x1000..), the x87/MMX registers FP_MMX0–7 (0x1010..) and the
/// control words, but not the wider vector state. hvemu names it in a range neither the x64 nor
/// the arm64 platform numbering uses (the arm64 names start at 0x0002_0000):
///
/// | names | numbers | value | what |
/// |---|---|---|---|
/// | [`XMM16`](RegisterName::XMM16)..XMM31 | 0x0001_0000 + n | [`RegisterValue::U128`] | bits 0–127 of vector register n (16–31) |
/// | [`YMM0`](RegisterName::YMM0)..YMM31 | 0x0001_0100 + n | [`RegisterValue::U256`] | bits 0–255 of vector register n |
/// | [`ZMM0`](RegisterName::ZMM0)..ZMM31 | 0x0001_0200 + n | [`RegisterValue::U512`] | bits 0–511 of vector register n |
/// | [`K0`](RegisterName::K0)..K7 | 0x0001_0300 + n | [`RegisterValue::U64`] | AVX-512 opmask register n |
///
/// Each vector name is a *view* of the low bits of one register: XMMn ⊂ YMMn ⊂ ZMMn. Reading a
/// view returns those bits; writing one replaces those bits and leaves the bits above it
/// unchanged. So a legacy SSE load (which keeps bits 128 and up) writes the platform's XMMn; a
/// VEX load (which zeroes every bit above its destination) writes the widest view the guest's
/// XCR0 enables, YMMn (AVX) or ZMMn (AVX-512), with the zeroes included; an EVEX load writes
/// ZMMn. hvemu writes at most one view of a register per instruction. A monitor that keeps the
/// guest's XSAVE image serves these names from its components: AVX (YMM_Hi128), ZMM_Hi256,
/// Hi16_ZMM and opmask. One that does not support AVX or AVX-512 guests never sees them asked
/// for: only VEX and EVEX instructions use them, and the processor runs those only when XCR0
/// enables the state.
///
/// ```
/// use hvemu::RegisterName;
/// assert_eq!(RegisterName::RAX.0, 0x00);
/// assert_eq!(RegisterName::RIP.0, 0x10);
/// assert_eq!(RegisterName::gpr(15), Some(RegisterName::R15));
/// assert_eq!(RegisterName::EFER.0, 0x2001);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegisterName(pub u32);

impl core::fmt::Debug for RegisterName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        const LOW: [&str; 0x27] = [
            "RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI", "R8", "R9", "R10", "R11",
            "R12", "R13", "R14", "R15", "RIP", "RFLAGS", "ES", "CS", "SS", "DS", "FS", "GS",
            "LDTR", "TR", "IDTR", "GDTR", "CR0", "CR2", "CR3", "CR4", "CR8", "DR0", "DR1", "DR2",
            "DR3", "DR6", "DR7",
        ];
        // Each numbered block starts at a multiple of its length, so the register's number
        // within the block is the low bits of the name.
        match LOW.get(self.0 as usize) {
            Some(name) => f.write_str(name),
            None if (0x1000..0x1010).contains(&self.0) => write!(f, "XMM{}", self.0 & 0xF),
            None if (0x1010..0x1018).contains(&self.0) => write!(f, "FP_MMX{}", self.0 & 0x7),
            None if *self == Self::XCR0 => f.write_str("XCR0"),
            None if *self == Self::FP_CONTROL_STATUS => f.write_str("FP_CONTROL_STATUS"),
            None if *self == Self::XMM_CONTROL_STATUS => f.write_str("XMM_CONTROL_STATUS"),
            None if (0x1_0010..0x1_0020).contains(&self.0) => write!(f, "XMM{}", self.0 & 0x1F),
            None if (0x1_0100..0x1_0120).contains(&self.0) => write!(f, "YMM{}", self.0 & 0x1F),
            None if (0x1_0200..0x1_0220).contains(&self.0) => write!(f, "ZMM{}", self.0 & 0x1F),
            None if (0x1_0300..0x1_0308).contains(&self.0) => write!(f, "K{}", self.0 & 0x7),
            None if *self == Self::EFER => f.write_str("EFER"),
            None => write!(f, "RegisterName({:#x})", self.0),
        }
    }
}

#[allow(missing_docs)]
impl RegisterName {
    pub const RAX: Self = Self(0x00);
    pub const RCX: Self = Self(0x01);
    pub const RDX: Self = Self(0x02);
    pub const RBX: Self = Self(0x03);
    pub const RSP: Self = Self(0x04);
    pub const RBP: Self = Self(0x05);
    pub const RSI: Self = Self(0x06);
    pub const RDI: Self = Self(0x07);
    pub const R8: Self = Self(0x08);
    pub const R9: Self = Self(0x09);
    pub const R10: Self = Self(0x0A);
    pub const R11: Self = Self(0x0B);
    pub const R12: Self = Self(0x0C);
    pub const R13: Self = Self(0x0D);
    pub const R14: Self = Self(0x0E);
    pub const R15: Self = Self(0x0F);
    pub const RIP: Self = Self(0x10);
    pub const RFLAGS: Self = Self(0x11);
    pub const ES: Self = Self(0x12);
    pub const CS: Self = Self(0x13);
    pub const SS: Self = Self(0x14);
    pub const DS: Self = Self(0x15);
    pub const FS: Self = Self(0x16);
    pub const GS: Self = Self(0x17);
    pub const LDTR: Self = Self(0x18);
    pub const TR: Self = Self(0x19);
    pub const IDTR: Self = Self(0x1A);
    pub const GDTR: Self = Self(0x1B);
    pub const CR0: Self = Self(0x1C);
    pub const CR2: Self = Self(0x1D);
    pub const CR3: Self = Self(0x1E);
    pub const CR4: Self = Self(0x1F);
    pub const CR8: Self = Self(0x20);
    pub const DR0: Self = Self(0x21);
    pub const DR1: Self = Self(0x22);
    pub const DR2: Self = Self(0x23);
    pub const DR3: Self = Self(0x24);
    pub const DR6: Self = Self(0x25);
    pub const DR7: Self = Self(0x26);
    /// XCR0, the enabled XSAVE state components (x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM …).
    pub const XCR0: Self = Self(0x27);
    pub const XMM0: Self = Self(0x1000);
    /// x87/MMX register 0 ([`RegisterValue::U128`]): the platform's and FXSAVE's order, ST(0)
    /// first (relative to the x87 TOP), an 80-bit value in the low bits; an MMX register is the
    /// low 64 bits of its x87 register. FP_MMX1..7 follow.
    pub const FP_MMX0: Self = Self(0x1010);
    /// The x87 control and status words ([`RegisterValue::U128`], the platform's layout): FCW in
    /// bits 0–15, FSW in 16–31 (TOP in bits 27–29), the abridged FXSAVE tag byte in 32–39 (one
    /// bit per physical register, 1 = valid), FOP in 48–63, the last instruction pointer in
    /// 64–127.
    pub const FP_CONTROL_STATUS: Self = Self(0x1018);
    pub const XMM_CONTROL_STATUS: Self = Self(0x1019);
    /// hvemu extension: XMM16 (bits 0–127 of vector register 16; AVX-512 only). XMM17..31
    /// follow. See [`RegisterName`] for the extension range.
    pub const XMM16: Self = Self(0x1_0010);
    /// hvemu extension: YMM0, bits 0–255 of vector register 0 ([`RegisterValue::U256`]).
    /// YMM1..31 follow.
    pub const YMM0: Self = Self(0x1_0100);
    /// hvemu extension: ZMM0, bits 0–511 of vector register 0 ([`RegisterValue::U512`]).
    /// ZMM1..31 follow.
    pub const ZMM0: Self = Self(0x1_0200);
    /// hvemu extension: the AVX-512 opmask register K0 ([`RegisterValue::U64`]). K1..7 follow.
    pub const K0: Self = Self(0x1_0300);
    pub const TSC: Self = Self(0x2000);
    pub const EFER: Self = Self(0x2001);
    pub const KERNEL_GS_BASE: Self = Self(0x2002);
    pub const APIC_BASE: Self = Self(0x2003);
    pub const PAT: Self = Self(0x2004);
    pub const SYSENTER_CS: Self = Self(0x2005);
    pub const SYSENTER_EIP: Self = Self(0x2006);
    pub const SYSENTER_ESP: Self = Self(0x2007);
    pub const STAR: Self = Self(0x2008);
    pub const LSTAR: Self = Self(0x2009);
    pub const CSTAR: Self = Self(0x200A);
    pub const SFMASK: Self = Self(0x200B);
    /// The platform's pending-interruption register (used for exception injection).
    pub const PENDING_INTERRUPTION: Self = Self(0x8000_0000);
    pub const INTERRUPT_STATE: Self = Self(0x8000_0001);
    pub const PENDING_EVENT: Self = Self(0x8000_0002);

    /// Register `n` of the `count` consecutively numbered ones from `first`.
    const fn nth(first: Self, count: u8, n: u8) -> Option<Self> {
        if n >= count {
            return None;
        }
        match first.0.checked_add(n as u32) {
            Some(name) => Some(Self(name)),
            None => None,
        }
    }

    /// The general-purpose register with hardware number `n` (0 = RAX … 15 = R15).
    pub const fn gpr(n: u8) -> Option<Self> {
        Self::nth(Self::RAX, 16, n)
    }

    /// XMM register `n`: 0..=15 are the platform's names, 16..=31 hvemu's extension.
    ///
    /// ```
    /// use hvemu::RegisterName;
    /// assert_eq!(RegisterName::xmm(15), Some(RegisterName(0x100F)));
    /// assert_eq!(RegisterName::xmm(16), Some(RegisterName::XMM16));
    /// assert_eq!(RegisterName::xmm(32), None);
    /// ```
    pub const fn xmm(n: u8) -> Option<Self> {
        match n.checked_sub(16) {
            None => Self::nth(Self::XMM0, 16, n),
            Some(upper) => Self::nth(Self::XMM16, 16, upper),
        }
    }

    /// YMM register `n` (0..=31; hvemu extension).
    pub const fn ymm(n: u8) -> Option<Self> {
        Self::nth(Self::YMM0, 32, n)
    }

    /// ZMM register `n` (0..=31; hvemu extension).
    pub const fn zmm(n: u8) -> Option<Self> {
        Self::nth(Self::ZMM0, 32, n)
    }

    /// Opmask register `n` (0..=7; hvemu extension).
    pub const fn opmask(n: u8) -> Option<Self> {
        Self::nth(Self::K0, 8, n)
    }

    /// x87/MMX register `n` (0..=7), the platform's FP_MMX0..7.
    pub const fn fp_mmx(n: u8) -> Option<Self> {
        Self::nth(Self::FP_MMX0, 8, n)
    }

    /// The segment register for `seg` (ES, CS, SS, DS, FS, GS).
    pub const fn segment(seg: Segment) -> Self {
        match seg {
            Segment::Es => Self::ES,
            Segment::Cs => Self::CS,
            Segment::Ss => Self::SS,
            Segment::Ds => Self::DS,
            Segment::Fs => Self::FS,
            Segment::Gs => Self::GS,
        }
    }
}

/// The six segment registers, in the hardware (and platform) order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Segment {
    /// ES, the string destination segment.
    Es = 0,
    /// CS, the code segment.
    Cs = 1,
    /// SS, the stack segment.
    Ss = 2,
    /// DS, the default data segment.
    Ds = 3,
    /// FS.
    Fs = 4,
    /// GS.
    Gs = 5,
}

impl Segment {
    /// All six, in hardware order.
    pub const ALL: [Segment; 6] = [
        Segment::Es,
        Segment::Cs,
        Segment::Ss,
        Segment::Ds,
        Segment::Fs,
        Segment::Gs,
    ];
}

/// The value of one register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterValue {
    /// A 64-bit register (GPRs, RIP, RFLAGS, control registers, MSRs).
    U64(u64),
    /// A 128-bit register (XMM, the x87/MMX registers, the FP/XMM control-status blocks).
    U128(u128),
    /// A 256-bit register (YMM, an hvemu extension), as little-endian bytes: byte `i` holds
    /// bits `8i..8i+8`.
    U256([u8; 32]),
    /// A 512-bit register (ZMM, an hvemu extension), as little-endian bytes: byte `i` holds
    /// bits `8i..8i+8`.
    U512([u8; 64]),
    /// A segment register with its hidden descriptor cache.
    Segment(SegmentRegister),
    /// A descriptor-table register (GDTR, IDTR).
    Table(TableRegister),
}

impl RegisterValue {
    /// The value as a 64-bit integer, if it is one.
    pub const fn as_u64(&self) -> Option<u64> {
        match self {
            Self::U64(v) => Some(*v),
            _ => None,
        }
    }

    /// The value as a segment register, if it is one.
    pub const fn as_segment(&self) -> Option<SegmentRegister> {
        match self {
            Self::Segment(s) => Some(*s),
            _ => None,
        }
    }

    /// The value as a 128-bit integer, if it is one.
    pub const fn as_u128(&self) -> Option<u128> {
        match self {
            Self::U128(v) => Some(*v),
            _ => None,
        }
    }

    /// The value as a 256-bit register's bytes, if it is one.
    pub const fn as_u256(&self) -> Option<[u8; 32]> {
        match self {
            Self::U256(v) => Some(*v),
            _ => None,
        }
    }

    /// The value as a 512-bit register's bytes, if it is one.
    pub const fn as_u512(&self) -> Option<[u8; 64]> {
        match self {
            Self::U512(v) => Some(*v),
            _ => None,
        }
    }

    /// The value as a descriptor-table register, if it is one.
    pub const fn as_table(&self) -> Option<TableRegister> {
        match self {
            Self::Table(t) => Some(*t),
            _ => None,
        }
    }

    /// A copy made variant by variant. A value a monitor has just written (a tag and a
    /// 16-byte payload, say) copied whole reads its 80 bytes back in wide loads that wait for
    /// the narrow stores to retire; this reads only the bytes the variant has.
    #[inline]
    pub(crate) const fn copied(&self) -> RegisterValue {
        match self {
            Self::U64(v) => Self::U64(*v),
            Self::U128(v) => Self::U128(*v),
            Self::U256(v) => Self::U256(*v),
            Self::U512(v) => Self::U512(*v),
            Self::Segment(v) => Self::Segment(*v),
            Self::Table(v) => Self::Table(*v),
        }
    }
}

impl Default for RegisterValue {
    fn default() -> Self {
        Self::U64(0)
    }
}

bitflags! {
    /// The flag bits of a segment's attributes (`WHV_X64_SEGMENT_REGISTER.Attributes`).
    ///
    /// The 4-bit type (bits 0–3) and the DPL (bits 5–6) are fields, not flags: read them with
    /// [`SegmentRegister::segment_type`] and [`SegmentRegister::dpl`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct SegmentAttributes: u16 {
        /// Bit 0 of the type: accessed.
        const ACCESSED = 1 << 0;
        /// Bit 1 of the type: writable (data) or readable (code).
        const WRITABLE_OR_READABLE = 1 << 1;
        /// Bit 2 of the type: expand-down (data) or conforming (code).
        const EXPAND_DOWN_OR_CONFORMING = 1 << 2;
        /// Bit 3 of the type: code segment.
        const CODE = 1 << 3;
        /// S: a code or data segment rather than a system segment.
        const NON_SYSTEM = 1 << 4;
        /// P: present. A segment that is not present is unusable (a null selector).
        const PRESENT = 1 << 7;
        /// AVL: available to software.
        const AVAILABLE = 1 << 12;
        /// L: 64-bit code segment.
        const LONG = 1 << 13;
        /// D/B: default operand size 32 (code), big (stack, expand-down upper bound).
        const DEFAULT_BIG = 1 << 14;
        /// G: the limit counts 4 KiB pages.
        const GRANULARITY = 1 << 15;
        // Type and DPL bits are fields; keep them when converting.
        const _ = !0;
    }
}

/// A segment register with its hidden part (`WHV_X64_SEGMENT_REGISTER`).
///
/// `limit` is in bytes, already scaled by the granularity bit, as the platform reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SegmentRegister {
    /// Linear base address.
    pub base: u64,
    /// Limit in bytes (the last valid offset for expand-up segments).
    pub limit: u32,
    /// Visible selector.
    pub selector: u16,
    /// Attribute bits: type, S, DPL, P, AVL, L, D/B, G.
    pub attributes: SegmentAttributes,
}

impl SegmentRegister {
    /// A present, writable, accessed data segment as real mode loads it: base = selector × 16,
    /// limit 0xFFFF.
    pub const fn real_mode(selector: u16) -> Self {
        Self {
            base: (selector as u64) << 4,
            limit: 0xFFFF,
            selector,
            attributes: SegmentAttributes::from_bits_retain(0x93),
        }
    }

    /// A flat (base 0, 4 GiB) segment with the given attribute bits.
    pub const fn flat(selector: u16, attributes: u16) -> Self {
        Self {
            base: 0,
            limit: u32::MAX,
            selector,
            attributes: SegmentAttributes::from_bits_retain(attributes),
        }
    }

    /// The 4-bit descriptor type.
    pub const fn segment_type(&self) -> u8 {
        (self.attributes.bits() & 0xF) as u8
    }

    /// The descriptor privilege level.
    pub const fn dpl(&self) -> u8 {
        ((self.attributes.bits() >> 5) & 3) as u8
    }

    /// Whether the segment is present (usable).
    pub const fn present(&self) -> bool {
        self.attributes.contains(SegmentAttributes::PRESENT)
    }
}

/// A descriptor-table register, GDTR or IDTR (`WHV_X64_TABLE_REGISTER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TableRegister {
    /// Linear base address.
    pub base: u64,
    /// Limit in bytes.
    pub limit: u16,
}
