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
    /// XMM0..XMM15.
    pub xmm: [u128; 16],
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
        use RegisterValue::{Segment as Seg, Table, U64, U128};
        let n = name.0;
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
        let n = name.0;
        match (self.read(name)?, value) {
            (RegisterValue::U64(_), RegisterValue::U64(v)) => match name {
                _ if n < 16 => self.gpr[n as usize] = v,
                RegisterName::RIP => self.rip = v,
                RegisterName::RFLAGS => self.rflags = v,
                RegisterName::EFER => self.efer = v,
                _ if (RegisterName::CR0.0..=RegisterName::CR8.0).contains(&n) => {
                    self.cr[(n - RegisterName::CR0.0) as usize] = v
                }
                _ => self.dr[(n - RegisterName::DR0.0) as usize] = v,
            },
            (RegisterValue::U128(_), RegisterValue::U128(v)) => {
                if n >= RegisterName::PENDING_INTERRUPTION.0 {
                    self.pending[(n - RegisterName::PENDING_INTERRUPTION.0) as usize] = v;
                } else {
                    self.xmm[(n - RegisterName::XMM0.0) as usize] = v;
                }
            }
            (RegisterValue::Segment(_), RegisterValue::Segment(s)) => match name {
                RegisterName::LDTR => self.ldtr = s,
                RegisterName::TR => self.tr = s,
                _ => self.segments[(n - RegisterName::ES.0) as usize] = s,
            },
            (RegisterValue::Table(_), RegisterValue::Table(t)) => match name {
                RegisterName::IDTR => self.idtr = t,
                _ => self.gdtr = t,
            },
            _ => return Err(wrong),
        }
        Ok(())
    }
}
