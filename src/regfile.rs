//! A plain register file that answers `get_registers` and `set_registers` by name.
//!
//! Firmware handlers, #VC/#VE handlers and tests often hold the guest's registers in memory
//! already; [`RegisterFile`] lets them back the two register callbacks with a struct.

use crate::context::{ExecutionState, VpExitContext};
use crate::registers::{
    RegisterName, RegisterValue, Segment, SegmentAttributes, SegmentRegister, TableRegister,
};

/// A name [`RegisterFile`] does not hold, or a value of the wrong kind for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterFileError {
    /// The register is not part of the file.
    UnknownRegister(RegisterName),
    /// The value's kind does not fit the register (a segment value for RAX, say).
    WrongValueKind(RegisterName),
    /// `names` and `values` differ in length.
    LengthMismatch,
}

/// The guest registers hvemu may ask for, held in memory.
///
/// ```
/// use hvemu::{RegisterFile, RegisterName, RegisterValue};
/// let mut regs = RegisterFile::long_mode();
/// regs.set(&[RegisterName::RBX], &[RegisterValue::U64(7)]).unwrap();
/// let mut out = [RegisterValue::default()];
/// regs.get(&[RegisterName::RBX], &mut out).unwrap();
/// assert_eq!(out[0], RegisterValue::U64(7));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RegisterFile {
    /// RAX..R15 by hardware number.
    pub gpr: [u64; 16],
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS.
    pub segments: [SegmentRegister; 6],
    /// LDTR.
    pub ldtr: SegmentRegister,
    /// TR.
    pub tr: SegmentRegister,
    /// GDTR.
    pub gdtr: TableRegister,
    /// IDTR.
    pub idtr: TableRegister,
    /// CR0, CR2, CR3, CR4, CR8.
    pub cr: [u64; 5],
    /// EFER.
    pub efer: u64,
    /// XMM0..XMM15: bits 0–127 of vector registers 0–15.
    pub xmm: [u128; 16],
    /// Bits 128–255 of vector registers 0–15 (the XSAVE AVX component).
    pub ymm_hi128: [u128; 16],
    /// Bits 256–511 of vector registers 0–15 (the XSAVE ZMM_Hi256 component), low lane first.
    pub zmm_hi256: [[u128; 2]; 16],
    /// Vector registers 16–31, all 512 bits (the XSAVE Hi16_ZMM component), low lane first.
    pub hi16_zmm: [[u128; 4]; 16],
    /// The AVX-512 opmask registers K0..K7.
    pub opmask: [u64; 8],
    /// FP_MMX0..7: the x87/MMX registers in the platform's (FXSAVE's) order, ST(0) first.
    pub fp_mmx: [u128; 8],
    /// FP_CONTROL_STATUS (FCW, FSW, abridged FTW, FOP, FIP).
    pub fp_control_status: u128,
    /// XMM_CONTROL_STATUS (FDP, MXCSR, MXCSR mask).
    pub xmm_control_status: u128,
    /// XCR0 ([`real_mode`](Self::real_mode) starts it at its reset value, 1: x87 only).
    pub xcr0: u64,
    /// DR0..DR3, DR6, DR7.
    pub dr: [u64; 6],
    /// The pending-event registers (pending interruption, interrupt state, pending event).
    pub pending: [u128; 3],
}

// Indices into `RegisterFile::cr`.
const CR0: usize = 0;
const CR4: usize = 3;
const CR8: usize = 4;

// Indices into `RegisterFile::segments` (constants: the compiler checks them).
const CS: usize = Segment::Cs as usize;
const SS: usize = Segment::Ss as usize;

const CR0_PE: u64 = 1;
const CR0_AM: u64 = 1 << 18;
const CR0_PG: u64 = 1 << 31;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_VM: u64 = 1 << 17;

impl RegisterFile {
    /// Real mode at reset-like state: all segments selector 0 (base 0, limit 0xFFFF),
    /// RFLAGS = 0x2.
    pub fn real_mode() -> Self {
        let mut f = Self {
            rflags: 2,
            xcr0: 1,
            ..Self::default()
        };
        f.segments = [SegmentRegister::real_mode(0); 6];
        f.segments[CS].attributes = SegmentAttributes::from_bits_retain(0x9B);
        f.ldtr.attributes = SegmentAttributes::from_bits_retain(0x82);
        f.ldtr.limit = 0xFFFF;
        f.tr.attributes = SegmentAttributes::from_bits_retain(0x8B);
        f.tr.limit = 0xFFFF;
        f.gdtr.limit = 0xFFFF;
        f.idtr.limit = 0x3FF;
        f
    }

    /// 32-bit protected mode, paging off, flat 4 GiB segments at CPL 0
    /// (code selector 0x08, data 0x10).
    pub fn protected_mode_32() -> Self {
        let mut f = Self::real_mode();
        let data = SegmentRegister::flat(0x10, 0xC093);
        f.segments = [data; 6];
        f.segments[CS] = SegmentRegister::flat(0x08, 0xC09B);
        f.cr[CR0] = CR0_PE | 0x10;
        f
    }

    /// 64-bit mode at CPL 0 (code selector 0x08 with L=1, data 0x10), paging on.
    pub fn long_mode() -> Self {
        let mut f = Self::protected_mode_32();
        f.segments[CS] = SegmentRegister::flat(0x08, 0xA09B);
        f.cr[CR0] |= CR0_PG;
        f.cr[CR4] = 1 << 5; // PAE
        f.efer = EFER_LMA | (1 << 8) | (1 << 11);
        f
    }

    /// A general-purpose register by hardware number (0 = RAX); out-of-range reads 0.
    pub fn gpr(&self, n: usize) -> u64 {
        self.gpr.get(n).copied().unwrap_or(0)
    }

    /// Sets a general-purpose register by hardware number; out-of-range is ignored.
    pub fn set_gpr(&mut self, n: usize, value: u64) {
        if let Some(r) = self.gpr.get_mut(n) {
            *r = value;
        }
    }

    /// All 512 bits of vector register `n` (0..=31) as little-endian bytes; out-of-range
    /// reads 0.
    #[inline]
    pub fn vector(&self, n: usize) -> [u8; 64] {
        self.low_bytes(n)
    }

    /// The low `N` bytes (a multiple of 16, at most 64) of vector register `n`, built from its
    /// lanes: a YMM value sliced from all 64 bytes was read back in unaligned pieces before
    /// their stores retired.
    #[inline]
    fn low_bytes<const N: usize>(&self, n: usize) -> [u8; N] {
        let mut bytes = [0u8; N];
        for (chunk, lane) in bytes.chunks_exact_mut(16).zip(self.lanes(n)) {
            chunk.copy_from_slice(&lane.to_le_bytes());
        }
        bytes
    }

    /// The four 128-bit lanes of vector register `n`, low first; out-of-range reads 0.
    #[inline]
    fn lanes(&self, n: usize) -> [u128; 4] {
        match (
            self.xmm.get(n),
            self.ymm_hi128.get(n),
            self.zmm_hi256.get(n),
        ) {
            (Some(&xmm), Some(&ymm_hi), Some(&[z0, z1])) => [xmm, ymm_hi, z0, z1],
            _ => n
                .checked_sub(16)
                .and_then(|hi| self.hi16_zmm.get(hi))
                .copied()
                .unwrap_or([0; 4]),
        }
    }

    /// Sets all 512 bits of vector register `n` (0..=31); out-of-range is ignored.
    pub fn set_vector(&mut self, n: usize, bytes: &[u8; 64]) {
        let mut lanes = [0u128; 4];
        for (lane, chunk) in lanes.iter_mut().zip(bytes.chunks_exact(16)) {
            let mut b = [0u8; 16];
            b.copy_from_slice(chunk);
            *lane = u128::from_le_bytes(b);
        }
        let [l0, l1, l2, l3] = lanes;
        match (
            self.xmm.get_mut(n),
            self.ymm_hi128.get_mut(n),
            self.zmm_hi256.get_mut(n),
        ) {
            (Some(xmm), Some(ymm_hi), Some(zmm_hi)) => {
                *xmm = l0;
                *ymm_hi = l1;
                *zmm_hi = [l2, l3];
            }
            _ => {
                if let Some(hi) = n.checked_sub(16).and_then(|hi| self.hi16_zmm.get_mut(hi)) {
                    *hi = lanes;
                }
            }
        }
    }

    /// Writes the low `bytes.len()` bytes (at most 64) of vector register `n`, keeping the rest.
    fn set_vector_low(&mut self, n: usize, bytes: &[u8]) {
        let mut v = self.vector(n);
        for (dst, src) in v.iter_mut().zip(bytes) {
            *dst = *src;
        }
        self.set_vector(n, &v);
    }

    /// RIP.
    pub fn rip(&self) -> u64 {
        self.rip
    }

    /// A segment register.
    pub fn segment(&self, seg: Segment) -> SegmentRegister {
        let [es, cs, ss, ds, fs, gs] = self.segments;
        match seg {
            Segment::Es => es,
            Segment::Cs => cs,
            Segment::Ss => ss,
            Segment::Ds => ds,
            Segment::Fs => fs,
            Segment::Gs => gs,
        }
    }

    /// Sets a segment register.
    pub fn set_segment(&mut self, seg: Segment, value: SegmentRegister) {
        let [es, cs, ss, ds, fs, gs] = &mut self.segments;
        let slot = match seg {
            Segment::Es => es,
            Segment::Cs => cs,
            Segment::Ss => ss,
            Segment::Ds => ds,
            Segment::Fs => fs,
            Segment::Gs => gs,
        };
        *slot = value;
    }

    /// The exit context the hypervisor would report for an instruction of `instruction_length`
    /// bytes at RIP in this state. The CPL is SS.DPL in protected mode (3 in virtual-8086 mode,
    /// 0 in real mode).
    pub fn exit_context(&self, instruction_length: u8) -> VpExitContext {
        let pe = self.cr[CR0] & CR0_PE != 0;
        let cpl = if !pe {
            0
        } else if self.rflags & RFLAGS_VM != 0 {
            3
        } else {
            self.segments[SS].dpl()
        };
        VpExitContext {
            execution_state: ExecutionState {
                cpl,
                cr0_pe: pe,
                cr0_am: self.cr[CR0] & CR0_AM != 0,
                efer_lma: self.efer & EFER_LMA != 0,
                ..ExecutionState::default()
            },
            instruction_length,
            cr8: (self.cr[CR8] & 0xF) as u8,
            cs: self.segments[CS],
            rip: self.rip,
            rflags: self.rflags,
        }
    }

    /// Reads `names` into `values`.
    #[inline]
    pub fn get(
        &self,
        names: &[RegisterName],
        values: &mut [RegisterValue],
    ) -> Result<(), RegisterFileError> {
        if names.len() != values.len() {
            return Err(RegisterFileError::LengthMismatch);
        }
        for (name, value) in names.iter().zip(values.iter_mut()) {
            self.read_into(*name, value)?;
        }
        Ok(())
    }

    /// Writes `values` to `names`. Checks every pair before writing any, so a bad name leaves
    /// the file unchanged.
    #[inline]
    pub fn set(
        &mut self,
        names: &[RegisterName],
        values: &[RegisterValue],
    ) -> Result<(), RegisterFileError> {
        if names.len() != values.len() {
            return Err(RegisterFileError::LengthMismatch);
        }
        // Check every pair before writing any (what `write` itself checks), so a bad pair
        // leaves the file unchanged without copying it.
        for (name, value) in names.iter().zip(values) {
            if matches!(value, RegisterValue::U64(_)) && self.common_u64(*name).is_some() {
                continue;
            }
            let kind = core::mem::discriminant(&self.read(*name)?);
            if kind != core::mem::discriminant(value) {
                return Err(RegisterFileError::WrongValueKind(*name));
            }
        }
        for (name, value) in names.iter().zip(values) {
            self.write_from(*name, value)?;
        }
        Ok(())
    }

    /// The GPRs, RIP and RFLAGS: what nearly every commit writes, found without a search.
    #[inline]
    fn common_u64(&mut self, name: RegisterName) -> Option<&mut u64> {
        match name {
            RegisterName::RIP => Some(&mut self.rip),
            RegisterName::RFLAGS => Some(&mut self.rflags),
            _ => entry_mut(&mut self.gpr, RegisterName::RAX, name),
        }
    }

    /// One register's value.
    pub fn read(&self, name: RegisterName) -> Result<RegisterValue, RegisterFileError> {
        let mut value = RegisterValue::U64(0);
        self.read_into(name, &mut value)?;
        Ok(value)
    }

    /// [`RegisterFile::read`] into `out`, which `get` hands straight to the caller's array: an
    /// 80-byte value returned by value and copied there was read back before its stores
    /// retired.
    #[inline]
    fn read_into(
        &self,
        name: RegisterName,
        out: &mut RegisterValue,
    ) -> Result<(), RegisterFileError> {
        use RegisterValue::{Segment as Seg, U64, U128, U256};
        // The GPRs, then the segment registers: most of what an exit asks for.
        if let Some(&v) = entry(&self.gpr, RegisterName::RAX, name) {
            *out = U64(v);
            return Ok(());
        }
        if let Some(&s) = entry(&self.segments, RegisterName::ES, name) {
            *out = Seg(s);
            return Ok(());
        }
        // Then what the vector moves read: XMM and YMM registers, and XCR0 for every AVX move.
        if let Some(&v) = entry(&self.xmm, RegisterName::XMM0, name) {
            *out = U128(v);
            return Ok(());
        }
        if let Some(n) = index_in(RegisterName::YMM0, 32, name) {
            *out = U256(self.low_bytes(n));
            return Ok(());
        }
        if name == RegisterName::XCR0 {
            *out = U64(self.xcr0);
            return Ok(());
        }
        self.read_rare(name, out)
    }

    /// [`RegisterFile::read_into`] for the registers an exit seldom asks for. Out of line:
    /// inlined, the compiler hoisted their loads (segment caches, tables) in front of
    /// `get`'s loop, about 50 instructions paid on every call.
    #[inline(never)]
    fn read_rare(
        &self,
        name: RegisterName,
        out: &mut RegisterValue,
    ) -> Result<(), RegisterFileError> {
        use RegisterValue::{Segment as Seg, Table, U64, U128, U512};
        *out = match name {
            RegisterName::RIP => U64(self.rip),
            RegisterName::RFLAGS => U64(self.rflags),
            RegisterName::LDTR => Seg(self.ldtr),
            RegisterName::TR => Seg(self.tr),
            RegisterName::IDTR => Table(self.idtr),
            RegisterName::GDTR => Table(self.gdtr),
            RegisterName::FP_CONTROL_STATUS => U128(self.fp_control_status),
            RegisterName::XMM_CONTROL_STATUS => U128(self.xmm_control_status),
            RegisterName::EFER => U64(self.efer),
            _ => {
                if let Some(&v) = entry(&self.cr, RegisterName::CR0, name) {
                    U64(v)
                } else if let Some(&v) = entry(&self.dr, RegisterName::DR0, name) {
                    U64(v)
                } else if let Some(&[low, ..]) = entry(&self.hi16_zmm, RegisterName::XMM16, name) {
                    U128(low)
                } else if let Some(n) = index_in(RegisterName::ZMM0, 32, name) {
                    U512(self.vector(n))
                } else if let Some(&v) = entry(&self.opmask, RegisterName::K0, name) {
                    U64(v)
                } else if let Some(&v) = entry(&self.fp_mmx, RegisterName::FP_MMX0, name) {
                    U128(v)
                } else if let Some(&v) =
                    entry(&self.pending, RegisterName::PENDING_INTERRUPTION, name)
                {
                    U128(v)
                } else {
                    return Err(RegisterFileError::UnknownRegister(name));
                }
            }
        };
        Ok(())
    }

    /// Writes one register.
    pub fn write(
        &mut self,
        name: RegisterName,
        value: RegisterValue,
    ) -> Result<(), RegisterFileError> {
        self.write_from(name, &value)
    }

    /// [`RegisterFile::write`] by reference: `set` passes the caller's values through
    /// without copying them, as each was just written in narrow stores that an 80-byte copy
    /// would read back in wide loads (a store-forwarding stall per value).
    #[inline]
    fn write_from(
        &mut self,
        name: RegisterName,
        value: &RegisterValue,
    ) -> Result<(), RegisterFileError> {
        if let (RegisterValue::U64(v), Some(slot)) = (value, self.common_u64(name)) {
            *slot = *v;
            return Ok(());
        }
        let wrong = RegisterFileError::WrongValueKind(name);
        if core::mem::discriminant(&self.read(name)?) != core::mem::discriminant(value) {
            return Err(wrong);
        }
        // `read` found the name, and of this kind: one of the slots below holds it.
        match *value {
            RegisterValue::U64(v) => {
                let slot = match name {
                    RegisterName::RIP => Some(&mut self.rip),
                    RegisterName::RFLAGS => Some(&mut self.rflags),
                    RegisterName::EFER => Some(&mut self.efer),
                    RegisterName::XCR0 => Some(&mut self.xcr0),
                    _ => entry_mut(&mut self.gpr, RegisterName::RAX, name)
                        .or(entry_mut(&mut self.opmask, RegisterName::K0, name))
                        .or(entry_mut(&mut self.cr, RegisterName::CR0, name))
                        .or(entry_mut(&mut self.dr, RegisterName::DR0, name)),
                };
                if let Some(slot) = slot {
                    *slot = v;
                }
            }
            RegisterValue::U128(v) => {
                let slot = match name {
                    RegisterName::FP_CONTROL_STATUS => Some(&mut self.fp_control_status),
                    RegisterName::XMM_CONTROL_STATUS => Some(&mut self.xmm_control_status),
                    _ => entry_mut(&mut self.pending, RegisterName::PENDING_INTERRUPTION, name)
                        .or(entry_mut(&mut self.fp_mmx, RegisterName::FP_MMX0, name))
                        .or(entry_mut(&mut self.hi16_zmm, RegisterName::XMM16, name)
                            .map(|[low, ..]| low))
                        .or(entry_mut(&mut self.xmm, RegisterName::XMM0, name)),
                };
                if let Some(slot) = slot {
                    *slot = v;
                }
            }
            RegisterValue::U256(b) => {
                if let Some(n) = index_in(RegisterName::YMM0, 32, name) {
                    self.set_vector_low(n, &b);
                }
            }
            RegisterValue::U512(b) => {
                if let Some(n) = index_in(RegisterName::ZMM0, 32, name) {
                    self.set_vector(n, &b);
                }
            }
            RegisterValue::Segment(s) => {
                let slot = match name {
                    RegisterName::LDTR => Some(&mut self.ldtr),
                    RegisterName::TR => Some(&mut self.tr),
                    _ => entry_mut(&mut self.segments, RegisterName::ES, name),
                };
                if let Some(slot) = slot {
                    *slot = s;
                }
            }
            RegisterValue::Table(t) => match name {
                RegisterName::IDTR => self.idtr = t,
                _ => self.gdtr = t,
            },
        }
        Ok(())
    }
}

/// `name`'s position in the `count` consecutive names from `first`, if it is one of them.
fn index_in(first: RegisterName, count: usize, name: RegisterName) -> Option<usize> {
    let index = usize::try_from(name.0.checked_sub(first.0)?).ok()?;
    (index < count).then_some(index)
}

/// The entry of `block`, which holds the registers named from `first` on, that `name` names.
fn entry<T>(block: &[T], first: RegisterName, name: RegisterName) -> Option<&T> {
    block.get(index_in(first, block.len(), name)?)
}

/// [`entry`], for writing.
fn entry_mut<T>(block: &mut [T], first: RegisterName, name: RegisterName) -> Option<&mut T> {
    block.get_mut(index_in(first, block.len(), name)?)
}
