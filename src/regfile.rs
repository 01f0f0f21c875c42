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
        f.segments[Segment::Cs as usize].attributes = SegmentAttributes::from_bits_retain(0x9B);
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
        f.segments[Segment::Cs as usize] = SegmentRegister::flat(0x08, 0xC09B);
        f.cr[CR0] = CR0_PE | 0x10;
        f
    }

    /// 64-bit mode at CPL 0 (code selector 0x08 with L=1, data 0x10), paging on.
    pub fn long_mode() -> Self {
        let mut f = Self::protected_mode_32();
        f.segments[Segment::Cs as usize] = SegmentRegister::flat(0x08, 0xA09B);
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
    pub fn vector(&self, n: usize) -> [u8; 64] {
        let lanes = match n {
            0..16 => [
                self.xmm[n],
                self.ymm_hi128[n],
                self.zmm_hi256[n][0],
                self.zmm_hi256[n][1],
            ],
            16..32 => self.hi16_zmm[n - 16],
            _ => [0; 4],
        };
        let mut bytes = [0u8; 64];
        for (chunk, lane) in bytes.chunks_exact_mut(16).zip(lanes) {
            chunk.copy_from_slice(&lane.to_le_bytes());
        }
        bytes
    }

    /// Sets all 512 bits of vector register `n` (0..=31); out-of-range is ignored.
    pub fn set_vector(&mut self, n: usize, bytes: &[u8; 64]) {
        let mut lanes = [0u128; 4];
        for (lane, chunk) in lanes.iter_mut().zip(bytes.chunks_exact(16)) {
            let mut b = [0u8; 16];
            b.copy_from_slice(chunk);
            *lane = u128::from_le_bytes(b);
        }
        match n {
            0..16 => {
                self.xmm[n] = lanes[0];
                self.ymm_hi128[n] = lanes[1];
                self.zmm_hi256[n] = [lanes[2], lanes[3]];
            }
            16..32 => self.hi16_zmm[n - 16] = lanes,
            _ => {}
        }
    }

    /// Writes the low `bytes.len()` bytes (at most 64) of vector register `n`, keeping the rest.
    fn set_vector_low(&mut self, n: usize, bytes: &[u8]) {
        let mut v = self.vector(n);
        let len = bytes.len().min(64);
        v[..len].copy_from_slice(&bytes[..len]);
        self.set_vector(n, &v);
    }

    /// RIP.
    pub fn rip(&self) -> u64 {
        self.rip
    }

    /// A segment register.
    pub fn segment(&self, seg: Segment) -> SegmentRegister {
        self.segments[seg as usize]
    }

    /// Sets a segment register.
    pub fn set_segment(&mut self, seg: Segment, value: SegmentRegister) {
        self.segments[seg as usize] = value;
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
            self.segments[Segment::Ss as usize].dpl()
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
            cs: self.segments[Segment::Cs as usize],
            rip: self.rip,
            rflags: self.rflags,
        }
    }

    /// Reads `names` into `values`.
    pub fn get(
        &self,
        names: &[RegisterName],
        values: &mut [RegisterValue],
    ) -> Result<(), RegisterFileError> {
        if names.len() != values.len() {
            return Err(RegisterFileError::LengthMismatch);
        }
        for (name, value) in names.iter().zip(values.iter_mut()) {
            *value = self.read(*name)?;
        }
        Ok(())
    }

    /// Writes `values` to `names`. Checks every pair before writing any, so a bad name leaves
    /// the file unchanged.
    pub fn set(
        &mut self,
        names: &[RegisterName],
        values: &[RegisterValue],
    ) -> Result<(), RegisterFileError> {
        if names.len() != values.len() {
            return Err(RegisterFileError::LengthMismatch);
        }
        let mut scratch = self.clone();
        for (name, value) in names.iter().zip(values) {
            scratch.write(*name, *value)?;
        }
        *self = scratch;
        Ok(())
    }

    /// One register's value.
    pub fn read(&self, name: RegisterName) -> Result<RegisterValue, RegisterFileError> {
        use RegisterValue::{Segment as Seg, Table, U64, U128, U256, U512};
        let n = name.0;
        let vector = |base: RegisterName| (n - base.0) as usize;
        Ok(match name {
            _ if n < 16 => U64(self.gpr[n as usize]),
            RegisterName::RIP => U64(self.rip),
            RegisterName::RFLAGS => U64(self.rflags),
            _ if (RegisterName::ES.0..=RegisterName::GS.0).contains(&n) => {
                Seg(self.segments[(n - RegisterName::ES.0) as usize])
            }
            RegisterName::LDTR => Seg(self.ldtr),
            RegisterName::TR => Seg(self.tr),
            RegisterName::IDTR => Table(self.idtr),
            RegisterName::GDTR => Table(self.gdtr),
            _ if (RegisterName::CR0.0..=RegisterName::CR8.0).contains(&n) => {
                U64(self.cr[(n - RegisterName::CR0.0) as usize])
            }
            _ if (RegisterName::DR0.0..=RegisterName::DR7.0).contains(&n) => {
                U64(self.dr[(n - RegisterName::DR0.0) as usize])
            }
            _ if (RegisterName::XMM0.0..RegisterName::XMM0.0 + 16).contains(&n) => {
                U128(self.xmm[(n - RegisterName::XMM0.0) as usize])
            }
            _ if (RegisterName::XMM16.0..RegisterName::XMM16.0 + 16).contains(&n) => {
                U128(self.hi16_zmm[vector(RegisterName::XMM16)][0])
            }
            _ if (RegisterName::YMM0.0..RegisterName::YMM0.0 + 32).contains(&n) => {
                let mut b = [0u8; 32];
                b.copy_from_slice(&self.vector(vector(RegisterName::YMM0))[..32]);
                U256(b)
            }
            _ if (RegisterName::ZMM0.0..RegisterName::ZMM0.0 + 32).contains(&n) => {
                U512(self.vector(vector(RegisterName::ZMM0)))
            }
            _ if (RegisterName::K0.0..RegisterName::K0.0 + 8).contains(&n) => {
                U64(self.opmask[vector(RegisterName::K0)])
            }
            _ if (RegisterName::FP_MMX0.0..RegisterName::FP_MMX0.0 + 8).contains(&n) => {
                U128(self.fp_mmx[vector(RegisterName::FP_MMX0)])
            }
            RegisterName::FP_CONTROL_STATUS => U128(self.fp_control_status),
            RegisterName::XMM_CONTROL_STATUS => U128(self.xmm_control_status),
            RegisterName::XCR0 => U64(self.xcr0),
            RegisterName::EFER => U64(self.efer),
            _ if (RegisterName::PENDING_INTERRUPTION.0..=RegisterName::PENDING_EVENT.0)
                .contains(&n) =>
            {
                U128(self.pending[(n - RegisterName::PENDING_INTERRUPTION.0) as usize])
            }
            _ => return Err(RegisterFileError::UnknownRegister(name)),
        })
    }

    /// Writes one register.
    pub fn write(
        &mut self,
        name: RegisterName,
        value: RegisterValue,
    ) -> Result<(), RegisterFileError> {
        let wrong = RegisterFileError::WrongValueKind(name);
        if core::mem::discriminant(&self.read(name)?) != core::mem::discriminant(&value) {
            return Err(wrong);
        }
        let n = name.0;
        let index = |base: RegisterName| (n - base.0) as usize;
        let in_block = |base: RegisterName, count: u32| (base.0..base.0 + count).contains(&n);
        match value {
            RegisterValue::U64(v) => match name {
                _ if n < 16 => self.gpr[n as usize] = v,
                RegisterName::RIP => self.rip = v,
                RegisterName::RFLAGS => self.rflags = v,
                RegisterName::EFER => self.efer = v,
                RegisterName::XCR0 => self.xcr0 = v,
                _ if in_block(RegisterName::K0, 8) => self.opmask[index(RegisterName::K0)] = v,
                _ if (RegisterName::CR0.0..=RegisterName::CR8.0).contains(&n) => {
                    self.cr[(n - RegisterName::CR0.0) as usize] = v
                }
                _ => self.dr[(n - RegisterName::DR0.0) as usize] = v,
            },
            RegisterValue::U128(v) => match name {
                RegisterName::FP_CONTROL_STATUS => self.fp_control_status = v,
                RegisterName::XMM_CONTROL_STATUS => self.xmm_control_status = v,
                _ if n >= RegisterName::PENDING_INTERRUPTION.0 => {
                    self.pending[(n - RegisterName::PENDING_INTERRUPTION.0) as usize] = v;
                }
                _ if in_block(RegisterName::FP_MMX0, 8) => {
                    self.fp_mmx[index(RegisterName::FP_MMX0)] = v
                }
                _ if in_block(RegisterName::XMM16, 16) => {
                    self.hi16_zmm[index(RegisterName::XMM16)][0] = v
                }
                _ => self.xmm[(n - RegisterName::XMM0.0) as usize] = v,
            },
            RegisterValue::U256(b) => self.set_vector_low(index(RegisterName::YMM0), &b),
            RegisterValue::U512(b) => self.set_vector(index(RegisterName::ZMM0), &b),
            RegisterValue::Segment(s) => match name {
                RegisterName::LDTR => self.ldtr = s,
                RegisterName::TR => self.tr = s,
                _ => self.segments[(n - RegisterName::ES.0) as usize] = s,
            },
            RegisterValue::Table(t) => match name {
                RegisterName::IDTR => self.idtr = t,
                _ => self.gdtr = t,
            },
        }
        Ok(())
    }
}
