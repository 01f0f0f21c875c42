//! The one trait through which hvemu reaches the machine.

use bitflags::bitflags;

use crate::registers::{RegisterName, RegisterValue};

/// Which way data moves in a memory or port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AccessDirection {
    /// Memory read, or IN from a port: the monitor fills `data`.
    Read = 0,
    /// Memory write, or OUT to a port: the monitor consumes `data`.
    Write = 1,
}

/// One guest-physical access (`WHV_EMULATOR_MEMORY_ACCESS_INFO`, widened to 64 bytes).
///
/// The access is 1..=64 bytes long and never crosses a 4 KiB page; `data` holds the bytes in
/// memory order. hvemu splits a page-crossing operand into two accesses.
#[derive(Debug, PartialEq, Eq)]
pub struct MemoryAccessInfo<'a> {
    /// Guest-physical address of the first byte.
    pub gpa_address: u64,
    /// Read (fill `data`) or write (consume `data`).
    pub direction: AccessDirection,
    /// The bytes; its length is the access size.
    pub data: &'a mut [u8],
}

impl MemoryAccessInfo<'_> {
    /// The access size in bytes.
    pub fn access_size(&self) -> usize {
        self.data.len()
    }
}

/// One port access (`WHV_EMULATOR_IO_ACCESS_INFO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoAccessInfo {
    /// IN (`Read`, fill `data`) or OUT (`Write`, consume `data`).
    pub direction: AccessDirection,
    /// The port number.
    pub port: u16,
    /// 1, 2 or 4.
    pub access_size: u8,
    /// The data, in the low `access_size` bytes (little-endian). For IN, hvemu ignores the
    /// bytes above `access_size`.
    pub data: u32,
}

bitflags! {
    /// What a translation must validate (`WHV_TRANSLATE_GVA_FLAGS`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct TranslateGvaFlags: u32 {
        /// The page must be readable.
        const VALIDATE_READ = 0x1;
        /// The page must be writable.
        const VALIDATE_WRITE = 0x2;
        /// The page must be executable.
        const VALIDATE_EXECUTE = 0x4;
        /// Skip the user/supervisor check: an implicit supervisor access (TSS, descriptor
        /// tables) made on behalf of code at any CPL.
        const PRIVILEGE_EXEMPT = 0x8;
        /// Set the accessed (and, for writes, dirty) bits as the walk goes.
        const SET_PAGE_TABLE_BITS = 0x10;
        /// Apply SMAP to this supervisor access regardless of RFLAGS.AC.
        const ENFORCE_SMAP = 0x100;
        /// Do not apply SMAP to this access.
        const OVERRIDE_SMAP = 0x200;
    }
}

/// The outcome of a page walk (`WHV_TRANSLATE_GVA_RESULT_CODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum TranslateGvaResult {
    /// The walk succeeded.
    Success = 0,
    /// A paging-structure entry was not present.
    PageNotPresent = 1,
    /// The access is not allowed by the R/W, U/S, NX, SMEP or SMAP bits.
    PrivilegeViolation = 2,
    /// A reserved bit was set in a paging-structure entry.
    InvalidPageTableFlags = 3,
    /// The walk succeeded but no memory is mapped at the GPA (typically MMIO).
    GpaUnmapped = 4,
    /// The walk succeeded but the GPA is not readable by the guest.
    GpaNoReadAccess = 5,
    /// The walk succeeded but the GPA is not writable by the guest.
    GpaNoWriteAccess = 6,
    /// The walk succeeded but the GPA is an overlay page the access may not use.
    GpaIllegalOverlayAccess = 7,
    /// The walk itself hit an intercept (a paging structure in unmapped memory).
    Intercept = 8,
}

impl TranslateGvaResult {
    /// Maps the platform's numeric code; unknown codes read as `None`.
    pub const fn from_u32(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::Success,
            1 => Self::PageNotPresent,
            2 => Self::PrivilegeViolation,
            3 => Self::InvalidPageTableFlags,
            4 => Self::GpaUnmapped,
            5 => Self::GpaNoReadAccess,
            6 => Self::GpaNoWriteAccess,
            7 => Self::GpaIllegalOverlayAccess,
            8 => Self::Intercept,
            _ => return None,
        })
    }
}

/// The monitor's side of an emulation: ports, guest-physical memory, registers, translation.
///
/// Each method reports failure with the monitor's own `Error`; hvemu stops at the first failure,
/// commits no register change and returns the error in
/// [`EmulationError`](crate::EmulationError). One exception: when an iteration of a REP
/// instruction fails after earlier iterations completed, hvemu commits those iterations and
/// answers [`Completion::Partial`](crate::Completion::Partial) with RIP left on the
/// instruction; the guest's re-execution meets the failure at its first iteration, where it is
/// reported.
///
/// ```
/// use hvemu::*;
///
/// struct Vcpu {
///     regs: RegisterFile,
///     ram: [u8; 0x2000],
///     device_log: Vec<(u64, Vec<u8>)>,
/// }
///
/// impl EmulatorCallbacks for Vcpu {
///     type Error = &'static str;
///     fn io_port(&mut self, _access: &mut IoAccessInfo) -> Result<(), Self::Error> {
///         Err("no ports here")
///     }
///     fn memory(&mut self, access: &mut MemoryAccessInfo<'_>) -> Result<(), Self::Error> {
///         let gpa = access.gpa_address as usize;
///         match (access.direction, self.ram.get_mut(gpa..gpa + access.data.len())) {
///             (AccessDirection::Read, Some(ram)) => access.data.copy_from_slice(ram),
///             (AccessDirection::Write, Some(ram)) => ram.copy_from_slice(access.data),
///             (AccessDirection::Read, None) => access.data.fill(0xFF),
///             (AccessDirection::Write, None) => {
///                 self.device_log.push((access.gpa_address, access.data.to_vec()))
///             }
///         }
///         Ok(())
///     }
///     fn get_registers(
///         &mut self,
///         names: &[RegisterName],
///         values: &mut [RegisterValue],
///     ) -> Result<(), Self::Error> {
///         self.regs.get(names, values).map_err(|_| "unknown register")
///     }
///     fn set_registers(
///         &mut self,
///         names: &[RegisterName],
///         values: &[RegisterValue],
///     ) -> Result<(), Self::Error> {
///         self.regs.set(names, values).map_err(|_| "unknown register")
///     }
///     fn translate_gva_page(
///         &mut self,
///         gva_page: u64,
///         _flags: TranslateGvaFlags,
///     ) -> Result<(TranslateGvaResult, u64), Self::Error> {
///         Ok((TranslateGvaResult::Success, gva_page)) // paging off
///     }
/// }
///
/// // A 64-bit guest stored EBX to an MMIO register: `mov [rax+0x10], ebx`.
/// let mut vcpu = Vcpu { regs: RegisterFile::long_mode(), ram: [0; 0x2000], device_log: vec![] };
/// vcpu.regs.set_gpr(0, 0xFEE0_0000);
/// vcpu.regs.set_gpr(3, 0x1234_5678);
/// let exit = vcpu.regs.exit_context(3);
/// let mmio = MemoryAccessContext::new(&[0x89, 0x58, 0x10], MemoryAccessType::Write, 0xFEE0_0010);
/// let mut emu = Emulator::new(&mut vcpu);
/// assert_eq!(emu.try_mmio_emulation(&exit, &mmio), Ok(EmulatorStatus::EMULATION_SUCCESSFUL));
/// assert_eq!(vcpu.device_log, [(0xFEE0_0010, vec![0x78, 0x56, 0x34, 0x12])]);
/// assert_eq!(vcpu.regs.rip(), exit.rip + 3);
/// ```
pub trait EmulatorCallbacks {
    /// The monitor's error type, handed back unchanged inside `EmulationError`.
    type Error;

    /// One port access: OUT consumes `access.data`, IN fills it.
    fn io_port(&mut self, access: &mut IoAccessInfo) -> Result<(), Self::Error>;

    /// One guest-physical access of 1..=64 bytes that never crosses a 4 KiB page.
    /// Serves RAM as well as MMIO (instruction fetch, string operands, descriptor reads).
    fn memory(&mut self, access: &mut MemoryAccessInfo<'_>) -> Result<(), Self::Error>;

    /// Reads `names` into `values` (same length, same order).
    fn get_registers(
        &mut self,
        names: &[RegisterName],
        values: &mut [RegisterValue],
    ) -> Result<(), Self::Error>;

    /// Commits the instruction's register changes: at most once per emulation, and only when it
    /// succeeded.
    fn set_registers(
        &mut self,
        names: &[RegisterName],
        values: &[RegisterValue],
    ) -> Result<(), Self::Error>;

    /// Translates the page holding `gva_page` (4 KiB aligned) under `flags`; returns the walk's
    /// result code and the 4 KiB-aligned GPA of the page.
    fn translate_gva_page(
        &mut self,
        gva_page: u64,
        flags: TranslateGvaFlags,
    ) -> Result<(TranslateGvaResult, u64), Self::Error>;

    /// Provided: an atomic compare-exchange on guest-physical memory, for LOCKed instructions.
    ///
    /// hvemu offers this for the memory operand of a locked read-modify-write — XCHG (always
    /// locked), and LOCK-prefixed XADD, CMPXCHG, CMPXCHG8B, CMPXCHG16B, ADD, ADC, AND, OR, SBB,
    /// SUB, XOR, INC, DEC, NEG and NOT — when the operand lies within one 4 KiB page. The
    /// operand has already been translated and checked for reading and writing.
    ///
    /// `expected`, `new` and `current` have the same length: 1, 2, 4, 8 or 16 bytes, in memory
    /// order; `gpa` need not be aligned to it. Atomically with respect to every other agent:
    ///
    /// * if the bytes at `gpa` equal `expected`, replace them with `new`, copy `expected` into
    ///   `current` and return `Ok(Some(true))`;
    /// * otherwise leave memory as it is, copy the bytes found into `current` and return
    ///   `Ok(Some(false))`. (The processor writes the old value back on a failed LOCK CMPXCHG;
    ///   on memory that is not observable, so the monitor need not do it.)
    ///
    /// Return `Ok(None)` — what the default does — when the access cannot be done atomically
    /// here (MMIO, an unaligned operand the host cannot lock, no support at all). hvemu then
    /// makes the access the way it makes every other one: a `memory` read of the operand,
    /// then a `memory` write of the result (for a failed CMPXCHG, the old value), with nothing
    /// in between. Who else may observe memory between the two is then up to the monitor,
    /// which has stopped this processor for the exit. Operands that cross a page always take
    /// this path, without a call here.
    ///
    /// When the new value depends on the old one (XADD, the ALU, XCHG's old value), hvemu calls
    /// this with its best guess of the old value, and on a mismatch retries with the value
    /// `current` reported, at most 8 attempts per instruction. A call that fails only because
    /// the new value would equal the value found (a failed CMPXCHG) completes the instruction
    /// without another call. If every attempt loses the race to other writers, nothing has
    /// been written: hvemu commits no change but RIP unchanged (the instruction is reported as
    /// [`Completion::Partial`](crate::Completion::Partial)) and the guest executes it again.
    /// Returning `Ok(None)` after `Ok(Some(false))` within one instruction is allowed; hvemu
    /// then falls back as above. An `Err` stops the emulation as a failed `memory` call does
    /// ([`EmulationError::Memory`](crate::EmulationError::Memory)).
    ///
    /// A monitor that implements only the five methods above still emulates every locked
    /// instruction, through `memory`.
    fn compare_exchange(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
        current: &mut [u8],
    ) -> Result<Option<bool>, Self::Error> {
        let _ = (gpa, expected, new, current);
        Ok(None)
    }
}

impl<T: EmulatorCallbacks + ?Sized> EmulatorCallbacks for &mut T {
    type Error = T::Error;

    fn io_port(&mut self, access: &mut IoAccessInfo) -> Result<(), Self::Error> {
        (**self).io_port(access)
    }

    fn memory(&mut self, access: &mut MemoryAccessInfo<'_>) -> Result<(), Self::Error> {
        (**self).memory(access)
    }

    fn get_registers(
        &mut self,
        names: &[RegisterName],
        values: &mut [RegisterValue],
    ) -> Result<(), Self::Error> {
        (**self).get_registers(names, values)
    }

    fn set_registers(
        &mut self,
        names: &[RegisterName],
        values: &[RegisterValue],
    ) -> Result<(), Self::Error> {
        (**self).set_registers(names, values)
    }

    fn translate_gva_page(
        &mut self,
        gva_page: u64,
        flags: TranslateGvaFlags,
    ) -> Result<(TranslateGvaResult, u64), Self::Error> {
        (**self).translate_gva_page(gva_page, flags)
    }

    fn compare_exchange(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
        current: &mut [u8],
    ) -> Result<Option<bool>, Self::Error> {
        (**self).compare_exchange(gpa, expected, new, current)
    }
}
