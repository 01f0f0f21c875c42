//! How an emulation ends when it does not succeed, in the platform's terms and in richer ones.

use core::fmt;

use bitflags::bitflags;

bitflags! {
    /// The platform's status word (`WHV_EMULATOR_STATUS`), bit for bit.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct EmulatorStatus: u32 {
        /// The instruction completed and `set_registers` committed it: resume the processor.
        const EMULATION_SUCCESSFUL = 1 << 0;
        /// The instruction could not be emulated (undecodable, unsupported, or a fault the
        /// monitor must handle).
        const INTERNAL_EMULATION_FAILURE = 1 << 1;
        /// `io_port` returned an error.
        const IO_PORT_CALLBACK_FAILED = 1 << 2;
        /// `memory` returned an error.
        const MEMORY_CALLBACK_FAILED = 1 << 3;
        /// `translate_gva_page` returned an error.
        const TRANSLATE_GVA_PAGE_CALLBACK_FAILED = 1 << 4;
        /// `translate_gva_page` returned a GPA that is not 4 KiB aligned.
        const TRANSLATE_GVA_PAGE_CALLBACK_GPA_IS_NOT_ALIGNED = 1 << 5;
        /// `get_registers` returned an error.
        const GET_VIRTUAL_PROCESSOR_REGISTERS_CALLBACK_FAILED = 1 << 6;
        /// `set_registers` returned an error.
        const SET_VIRTUAL_PROCESSOR_REGISTERS_CALLBACK_FAILED = 1 << 7;
        /// An event delivery (interrupt or fault) caused the exit; hvemu does not emulate it.
        const INTERRUPT_CAUSED_INTERCEPT = 1 << 8;
        /// The guest must take a fault but cannot be faulted: terminate it another way.
        const GUEST_CANNOT_BE_FAULTED = 1 << 9;
    }
}

/// A malformed exit context: the platform's `E_INVALIDARG`.
///
/// Returned before any callback runs; nothing of the guest has been touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidArgument {
    /// `VpExitContext::instruction_length` is 0 or above 15.
    InstructionLength(u8),
    /// `instruction_byte_count` is above 16.
    InstructionByteCount(u8),
    /// The I/O access size is not 1, 2 or 4.
    IoAccessSize(u8),
    /// `VpExitContext::cpl` is above 3.
    Cpl(u8),
}

impl fmt::Display for InvalidArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InstructionLength(n) => write!(f, "instruction length {n} is not 1..=15"),
            Self::InstructionByteCount(n) => write!(f, "instruction byte count {n} exceeds 16"),
            Self::IoAccessSize(n) => write!(f, "I/O access size {n} is not 1, 2 or 4"),
            Self::Cpl(n) => write!(f, "CPL {n} is not 0..=3"),
        }
    }
}

/// An x86 exception vector, with the numbers the CPU uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Vector {
    /// #DE, divide error.
    DivideError = 0,
    /// #DB, debug.
    Debug = 1,
    /// #UD, invalid opcode.
    InvalidOpcode = 6,
    /// #TS, invalid TSS.
    InvalidTss = 10,
    /// #NP, segment not present.
    SegmentNotPresent = 11,
    /// #SS, stack-segment fault.
    StackSegmentFault = 12,
    /// #GP, general protection.
    GeneralProtection = 13,
    /// #PF, page fault.
    PageFault = 14,
    /// #AC, alignment check.
    AlignmentCheck = 17,
}

/// An exception the guest must take instead of completing the instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Exception {
    /// Which exception.
    pub vector: Vector,
    /// The error code pushed with it, for the vectors that push one.
    pub error_code: Option<u32>,
    /// For #PF, the faulting linear address (what CR2 must hold).
    pub cr2: Option<u64>,
}

impl Exception {
    /// #GP with the given error code (usually 0).
    pub const fn gp(error_code: u32) -> Self {
        Self {
            vector: Vector::GeneralProtection,
            error_code: Some(error_code),
            cr2: None,
        }
    }

    /// #SS with the given error code (usually 0).
    pub const fn ss(error_code: u32) -> Self {
        Self {
            vector: Vector::StackSegmentFault,
            error_code: Some(error_code),
            cr2: None,
        }
    }

    /// #UD.
    pub const fn ud() -> Self {
        Self {
            vector: Vector::InvalidOpcode,
            error_code: None,
            cr2: None,
        }
    }

    /// The single-step #DB trap (DR6.BS).
    pub const fn single_step() -> Self {
        Self {
            vector: Vector::Debug,
            error_code: None,
            cr2: None,
        }
    }

    /// The exception as the platform's pending-event register holds it
    /// (`WHV_X64_PENDING_EXCEPTION_EVENT`): event pending (bit 0), type exception (bits 1–3 =
    /// 0), deliver-error-code (bit 8), vector (bits 16–31), error code (bits 32–63), and the
    /// exception parameter in bits 64–127: CR2 for #PF, the DR6 bits to set for #DB (BS).
    pub const fn pending_event(&self) -> u128 {
        let mut low = 1u64 | ((self.vector as u64) << 16);
        if let Some(code) = self.error_code {
            low |= (1 << 8) | ((code as u64) << 32);
        }
        let parameter = match (self.vector, self.cr2) {
            (Vector::PageFault, Some(cr2)) => cr2,
            (Vector::Debug, _) => 1 << 14,
            _ => 0,
        };
        (low as u128) | ((parameter as u128) << 64)
    }

    /// #PF at `address` with `error_code`.
    pub const fn pf(address: u64, error_code: u32) -> Self {
        Self {
            vector: Vector::PageFault,
            error_code: Some(error_code),
            cr2: Some(address),
        }
    }
}

/// What stopped an emulation, in detail.
///
/// `E` is the monitor's callback error. [`EmulationError::status`] maps each case onto the
/// platform's [`EmulatorStatus`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmulationError<E> {
    /// The exit context was malformed.
    InvalidArgument(InvalidArgument),
    /// `io_port` failed.
    IoPort(E),
    /// `memory` failed.
    Memory(E),
    /// `get_registers` failed.
    GetRegisters(E),
    /// `set_registers` failed (the commit; the guest's registers are in the monitor's hands).
    SetRegisters(E),
    /// `translate_gva_page` failed.
    TranslateGva(E),
    /// `translate_gva_page` returned a GPA that is not 4 KiB aligned.
    TranslateGpaNotAligned {
        /// The page asked for.
        gva_page: u64,
        /// The GPA returned.
        gpa: u64,
    },
    /// `translate_gva_page` answered with a result code hvemu cannot turn into a guest fault
    /// (`Intercept`).
    TranslationIntercept {
        /// The page asked for.
        gva_page: u64,
    },
    /// `get_registers` returned a value of the wrong kind for a register.
    BadRegisterValue(crate::RegisterName),
    /// The bytes at RIP do not decode to an instruction.
    Undecodable {
        /// The bytes that were available, up to 15.
        bytes: [u8; 15],
        /// How many of `bytes` are valid.
        len: u8,
    },
    /// The bytes use an encoding (VEX, EVEX or XOP) whose tables the linked iced-x86 decoder
    /// was built without: hvemu's `lean-decoder` feature, or any crate in the build enabling
    /// iced-x86's `no_vex`, `no_evex` or `no_xop` ([`decoder_support`](crate::decoder_support)
    /// says which). The guest's instruction may well be valid; this build cannot emulate it.
    EncodingUnavailable {
        /// The bytes that were available, up to 15.
        bytes: [u8; 15],
        /// How many of `bytes` are valid.
        len: u8,
    },
    /// The instruction decodes but hvemu does not emulate it.
    Unsupported {
        /// iced-x86's code for the instruction.
        code: iced_x86::Code,
    },
    /// The instruction cannot be the one that exited: it makes no memory access (for a memory
    /// exit), never accesses memory in the direction the exit reports (a write exit from an
    /// instruction that only reads, or the reverse), or makes no port access of the exit's
    /// direction, size and kind (for a port exit). The guest changed the bytes, or the monitor
    /// passed the wrong context. Nothing was done.
    NotTheExitingInstruction {
        /// iced-x86's code for the instruction.
        code: iced_x86::Code,
    },
    /// The exit happened during event delivery; hvemu does not emulate that.
    InterruptPending,
    /// The instruction raises an exception; the monitor injects it (vector, error code, CR2).
    Exception(Exception),
    /// Exception injection is configured, but the guest's IDT does not reach the vector, so
    /// delivering the exception would only escalate to a double fault or shutdown. Nothing
    /// was committed; the monitor must end the guest another way.
    GuestCannotBeFaulted(Exception),
}

impl<E> EmulationError<E> {
    /// The platform status bits for this outcome.
    ///
    /// An exception maps to `INTERNAL_EMULATION_FAILURE`: without injection the monitor decides
    /// what the guest sees.
    pub fn status(&self) -> EmulatorStatus {
        match self {
            Self::IoPort(_) => EmulatorStatus::IO_PORT_CALLBACK_FAILED,
            Self::Memory(_) => EmulatorStatus::MEMORY_CALLBACK_FAILED,
            Self::GetRegisters(_) => {
                EmulatorStatus::GET_VIRTUAL_PROCESSOR_REGISTERS_CALLBACK_FAILED
            }
            Self::SetRegisters(_) => {
                EmulatorStatus::SET_VIRTUAL_PROCESSOR_REGISTERS_CALLBACK_FAILED
            }
            Self::TranslateGva(_) => EmulatorStatus::TRANSLATE_GVA_PAGE_CALLBACK_FAILED,
            Self::TranslateGpaNotAligned { .. } => {
                EmulatorStatus::TRANSLATE_GVA_PAGE_CALLBACK_GPA_IS_NOT_ALIGNED
            }
            Self::InterruptPending => EmulatorStatus::INTERRUPT_CAUSED_INTERCEPT,
            Self::GuestCannotBeFaulted(_) => EmulatorStatus::GUEST_CANNOT_BE_FAULTED,
            Self::InvalidArgument(_)
            | Self::TranslationIntercept { .. }
            | Self::BadRegisterValue(_)
            | Self::Undecodable { .. }
            | Self::EncodingUnavailable { .. }
            | Self::Unsupported { .. }
            | Self::NotTheExitingInstruction { .. }
            | Self::Exception(_) => EmulatorStatus::INTERNAL_EMULATION_FAILURE,
        }
    }

    /// The exception the guest must take, if that is what stopped the emulation.
    ///
    /// Includes an exception that could not be delivered ([`Self::GuestCannotBeFaulted`]).
    pub fn exception(&self) -> Option<Exception> {
        match self {
            Self::Exception(e) | Self::GuestCannotBeFaulted(e) => Some(*e),
            _ => None,
        }
    }
}

impl<E> From<Exception> for EmulationError<E> {
    // Cold: the crate's policy in lib.rs.
    #[cold]
    #[inline(never)]
    fn from(e: Exception) -> Self {
        Self::Exception(e)
    }
}

impl<E> From<InvalidArgument> for EmulationError<E> {
    fn from(e: InvalidArgument) -> Self {
        Self::InvalidArgument(e)
    }
}

impl<E: fmt::Debug> fmt::Display for EmulationError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidArgument(e) => write!(f, "invalid argument: {e}"),
            Self::IoPort(e) => write!(f, "io_port callback failed: {e:?}"),
            Self::Memory(e) => write!(f, "memory callback failed: {e:?}"),
            Self::GetRegisters(e) => write!(f, "get_registers callback failed: {e:?}"),
            Self::SetRegisters(e) => write!(f, "set_registers callback failed: {e:?}"),
            Self::TranslateGva(e) => write!(f, "translate_gva_page callback failed: {e:?}"),
            Self::TranslateGpaNotAligned { gva_page, gpa } => {
                write!(
                    f,
                    "translation of {gva_page:#x} returned unaligned GPA {gpa:#x}"
                )
            }
            Self::TranslationIntercept { gva_page } => {
                write!(f, "translation of {gva_page:#x} hit an intercept")
            }
            Self::BadRegisterValue(name) => {
                write!(
                    f,
                    "get_registers returned the wrong kind of value for {name:?}"
                )
            }
            Self::Undecodable { bytes, len } => {
                write!(f, "undecodable instruction bytes")?;
                for b in bytes.iter().take(usize::from(*len)) {
                    write!(f, " {b:02x}")?;
                }
                Ok(())
            }
            Self::EncodingUnavailable { len, .. } => write!(
                f,
                "{len} instruction bytes use an encoding this build's decoder lacks (lean-decoder)"
            ),
            Self::Unsupported { code } => write!(f, "unsupported instruction {code:?}"),
            Self::NotTheExitingInstruction { code } => {
                write!(f, "{code:?} cannot have caused this exit")
            }
            Self::InterruptPending => write!(f, "the exit happened during event delivery"),
            Self::Exception(e) => write!(f, "guest exception {e}"),
            Self::GuestCannotBeFaulted(e) => write!(f, "guest cannot take {e}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for EmulationError<E> {}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.vector)?;
        if let Some(code) = self.error_code {
            write!(f, "({code:#x})")?;
        }
        if let Some(cr2) = self.cr2 {
            write!(f, " at {cr2:#x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bits_are_the_platform_positions() {
        let all = [
            EmulatorStatus::EMULATION_SUCCESSFUL,
            EmulatorStatus::INTERNAL_EMULATION_FAILURE,
            EmulatorStatus::IO_PORT_CALLBACK_FAILED,
            EmulatorStatus::MEMORY_CALLBACK_FAILED,
            EmulatorStatus::TRANSLATE_GVA_PAGE_CALLBACK_FAILED,
            EmulatorStatus::TRANSLATE_GVA_PAGE_CALLBACK_GPA_IS_NOT_ALIGNED,
            EmulatorStatus::GET_VIRTUAL_PROCESSOR_REGISTERS_CALLBACK_FAILED,
            EmulatorStatus::SET_VIRTUAL_PROCESSOR_REGISTERS_CALLBACK_FAILED,
            EmulatorStatus::INTERRUPT_CAUSED_INTERCEPT,
            EmulatorStatus::GUEST_CANNOT_BE_FAULTED,
        ];
        for (bit, status) in all.iter().enumerate() {
            assert_eq!(status.bits(), 1 << bit);
        }
    }

    #[test]
    fn every_error_maps_to_one_status_bit() {
        let errors: [EmulationError<()>; 6] = [
            EmulationError::IoPort(()),
            EmulationError::Memory(()),
            EmulationError::Exception(Exception::gp(0)),
            EmulationError::InterruptPending,
            EmulationError::TranslateGpaNotAligned {
                gva_page: 0,
                gpa: 1,
            },
            EmulationError::Unsupported {
                code: iced_x86::Code::INVALID,
            },
        ];
        for e in errors {
            assert_eq!(e.status().bits().count_ones(), 1, "{e:?}");
            assert!(!e.status().contains(EmulatorStatus::EMULATION_SUCCESSFUL));
        }
    }
}
