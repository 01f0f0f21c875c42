//! The one trait through which hvemu reaches the machine.

use bitflags::bitflags;

use crate::cache::DecodeCache;
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

    /// Provided: a block copy within guest-physical memory, for REP MOVS.
    ///
    /// hvemu offers the iterations of a REP MOVS that stay within one source page and one
    /// destination page, after translating and checking both: copy `len` bytes from `src` to
    /// `dst` and return `Ok(true)`. The ranges do not overlap (overlapping iterations, whose
    /// result depends on their order, go element by element) and neither crosses a 4 KiB
    /// page, so the monitor decides per page whether a range is RAM.
    ///
    /// Return `Ok(false)` — what the default does — to decline, having done nothing: hvemu then
    /// moves the elements one by one through `memory`, as the processor's accesses to MMIO
    /// must be (a device sees each element at its own size). Decline unless both ranges are
    /// plain RAM. An `Err` stops the emulation as a failed `memory` call does.
    ///
    /// ```
    /// # use hvemu::*;
    /// struct Ram(Vec<u8>);
    /// impl Ram {
    ///     fn is_ram(&self, gpa: u64, len: usize) -> bool {
    ///         gpa as usize + len <= self.0.len()
    ///     }
    /// }
    /// # impl EmulatorCallbacks for Ram {
    /// #     type Error = ();
    /// #     fn io_port(&mut self, _: &mut IoAccessInfo) -> Result<(), ()> { Err(()) }
    /// #     fn memory(&mut self, _: &mut MemoryAccessInfo<'_>) -> Result<(), ()> { Err(()) }
    /// #     fn get_registers(&mut self, _: &[RegisterName], _: &mut [RegisterValue]) -> Result<(), ()> { Err(()) }
    /// #     fn set_registers(&mut self, _: &[RegisterName], _: &[RegisterValue]) -> Result<(), ()> { Err(()) }
    /// #     fn translate_gva_page(&mut self, _: u64, _: TranslateGvaFlags)
    /// #         -> Result<(TranslateGvaResult, u64), ()> { Err(()) }
    ///     fn copy_memory(&mut self, dst: u64, src: u64, len: usize) -> Result<bool, ()> {
    ///         if !(self.is_ram(dst, len) && self.is_ram(src, len)) {
    ///             return Ok(false); // MMIO: element by element through `memory`
    ///         }
    ///         let src = src as usize;
    ///         self.0.copy_within(src..src + len, dst as usize);
    ///         Ok(true)
    ///     }
    /// # }
    /// ```
    fn copy_memory(&mut self, dst: u64, src: u64, len: usize) -> Result<bool, Self::Error> {
        let _ = (dst, src, len);
        Ok(false)
    }

    /// Provided: a block fill of guest-physical memory, for REP STOS.
    ///
    /// hvemu offers the iterations of a REP STOS that stay within one page, after translating
    /// and checking it: write `count` copies of `element` (1, 2, 4 or 8 bytes, in memory
    /// order) one after another from `dst` upwards, and return `Ok(true)`. (With RFLAGS.DF set
    /// the processor stores them downwards; the result in RAM is the same, and `dst` is then
    /// the lowest address written.) The range does not cross a 4 KiB page.
    ///
    /// Return `Ok(false)` — what the default does — to decline, having done nothing: hvemu then
    /// stores the elements one by one through `memory`. Decline unless the range is plain RAM.
    /// An `Err` stops the emulation as a failed `memory` call does.
    fn fill_memory(&mut self, dst: u64, element: &[u8], count: usize) -> Result<bool, Self::Error> {
        let _ = (dst, element, count);
        Ok(false)
    }

    /// Provided: a batch of string port I/O, for REP INS and REP OUTS.
    ///
    /// hvemu offers the iterations of a REP INS or REP OUTS whose memory operands stay within
    /// one page, after translating and checking it and the port's permission: perform
    /// `access.count` port accesses of `access.access_size` bytes at `access.port`, each
    /// moving one element between the port and guest-physical memory, and return `Ok(true)`.
    /// Element `i` lies at `access.gpa + i × access_size`, or, when `access.descending`,
    /// element `i` is the `i`-th from the top (`access.gpa` is always the lowest address):
    /// OUTS (`direction` [`AccessDirection::Write`]) reads each element from memory and writes
    /// it to the port; INS (`Read`) reads the port and stores the element.
    ///
    /// Return `Ok(false)` — what the default does — to decline, having done nothing: hvemu then
    /// makes one `io_port` and one `memory` call per element. Decline unless the memory range
    /// is plain RAM (an MMIO range must see each element between the port accesses). An `Err`
    /// stops the emulation as a failed `io_port` call does; return it only if no element was
    /// moved.
    fn io_port_string(&mut self, access: &StringIoAccess) -> Result<bool, Self::Error> {
        let _ = access;
        Ok(false)
    }

    /// The monitor's [`DecodeCache`] for this virtual processor, if it keeps one: repeated
    /// exits at the same instruction then skip decoding it (the largest single cost of a
    /// simple exit). The default keeps none, and every exit decodes.
    ///
    /// ```
    /// use hvemu::{DecodeCache, EmulatorCallbacks};
    /// # use hvemu::*;
    ///
    /// struct Vcpu {
    ///     decoded: DecodeCache,
    ///     // registers, memory map …
    /// }
    ///
    /// impl EmulatorCallbacks for Vcpu {
    ///     // … the five required callbacks …
    /// #   type Error = ();
    /// #   fn io_port(&mut self, _: &mut IoAccessInfo) -> Result<(), ()> { Err(()) }
    /// #   fn memory(&mut self, _: &mut MemoryAccessInfo<'_>) -> Result<(), ()> { Err(()) }
    /// #   fn get_registers(&mut self, _: &[RegisterName], _: &mut [RegisterValue]) -> Result<(), ()> { Err(()) }
    /// #   fn set_registers(&mut self, _: &[RegisterName], _: &[RegisterValue]) -> Result<(), ()> { Err(()) }
    /// #   fn translate_gva_page(&mut self, _: u64, _: TranslateGvaFlags) -> Result<(TranslateGvaResult, u64), ()> { Err(()) }
    ///     fn decode_cache(&mut self) -> Option<&mut DecodeCache> {
    ///         Some(&mut self.decoded)
    ///     }
    /// }
    /// ```
    #[inline]
    fn decode_cache(&mut self) -> Option<&mut DecodeCache> {
        None
    }
}

/// A batch of string port accesses offered to [`EmulatorCallbacks::io_port_string`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StringIoAccess {
    /// The port.
    pub port: u16,
    /// Bytes per element and per port access: 1, 2 or 4.
    pub access_size: u8,
    /// `Write` for OUTS (memory to port), `Read` for INS (port to memory).
    pub direction: AccessDirection,
    /// The guest-physical address of the lowest element.
    pub gpa: u64,
    /// How many elements (at least 1); they all lie within one 4 KiB page.
    pub count: u32,
    /// RFLAGS.DF was set: the first element is the highest one.
    pub descending: bool,
}

impl StringIoAccess {
    /// The guest-physical address of the `i`-th element moved.
    pub fn element_gpa(&self, i: u32) -> u64 {
        let size = u64::from(self.access_size);
        let index = if self.descending {
            u64::from(self.count.saturating_sub(1).saturating_sub(i))
        } else {
            u64::from(i)
        };
        self.gpa.wrapping_add(index.wrapping_mul(size))
    }
}

impl<T: EmulatorCallbacks + ?Sized> EmulatorCallbacks for &mut T {
    type Error = T::Error;

    #[inline]
    fn io_port(&mut self, access: &mut IoAccessInfo) -> Result<(), Self::Error> {
        (**self).io_port(access)
    }

    #[inline]
    fn memory(&mut self, access: &mut MemoryAccessInfo<'_>) -> Result<(), Self::Error> {
        (**self).memory(access)
    }

    #[inline]
    fn get_registers(
        &mut self,
        names: &[RegisterName],
        values: &mut [RegisterValue],
    ) -> Result<(), Self::Error> {
        (**self).get_registers(names, values)
    }

    #[inline]
    fn set_registers(
        &mut self,
        names: &[RegisterName],
        values: &[RegisterValue],
    ) -> Result<(), Self::Error> {
        (**self).set_registers(names, values)
    }

    #[inline]
    fn translate_gva_page(
        &mut self,
        gva_page: u64,
        flags: TranslateGvaFlags,
    ) -> Result<(TranslateGvaResult, u64), Self::Error> {
        (**self).translate_gva_page(gva_page, flags)
    }

    #[inline]
    fn copy_memory(&mut self, dst: u64, src: u64, len: usize) -> Result<bool, Self::Error> {
        (**self).copy_memory(dst, src, len)
    }

    #[inline]
    fn fill_memory(&mut self, dst: u64, element: &[u8], count: usize) -> Result<bool, Self::Error> {
        (**self).fill_memory(dst, element, count)
    }

    #[inline]
    fn io_port_string(&mut self, access: &StringIoAccess) -> Result<bool, Self::Error> {
        (**self).io_port_string(access)
    }

    #[inline]
    fn decode_cache(&mut self) -> Option<&mut DecodeCache> {
        (**self).decode_cache()
    }

    #[inline]
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
