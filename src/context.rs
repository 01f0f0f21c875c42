//! What the hypervisor reports at an exit: the processor context and the access that caused it.
//!
//! These mirror `WHV_VP_EXIT_CONTEXT`, `WHV_MEMORY_ACCESS_CONTEXT` and
//! `WHV_X64_IO_PORT_ACCESS_CONTEXT` field by field, with bit fields turned into named fields.
//! The `from_bits`/`to_bits` conversions keep the platform's bit positions.

use crate::registers::SegmentRegister;

/// The processor's execution state at the exit (`WHV_X64_VP_EXECUTION_STATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ExecutionState {
    /// Current privilege level (bits 0–1).
    pub cpl: u8,
    /// CR0.PE: protected mode (bit 2).
    pub cr0_pe: bool,
    /// CR0.AM: alignment checking allowed (bit 3).
    pub cr0_am: bool,
    /// EFER.LMA: long mode active (bit 4).
    pub efer_lma: bool,
    /// A debug register is armed (bit 5).
    pub debug_active: bool,
    /// An event delivery was under way when the exit happened (bit 6).
    pub interruption_pending: bool,
    /// The processor was in an interrupt shadow (STI or MOV SS) (bit 12).
    pub interrupt_shadow: bool,
}

impl ExecutionState {
    /// Decodes the platform's 16-bit layout; reserved bits are ignored.
    pub const fn from_bits(bits: u16) -> Self {
        Self {
            cpl: (bits & 3) as u8,
            cr0_pe: bits & (1 << 2) != 0,
            cr0_am: bits & (1 << 3) != 0,
            efer_lma: bits & (1 << 4) != 0,
            debug_active: bits & (1 << 5) != 0,
            interruption_pending: bits & (1 << 6) != 0,
            interrupt_shadow: bits & (1 << 12) != 0,
        }
    }

    /// Encodes into the platform's 16-bit layout.
    pub const fn to_bits(&self) -> u16 {
        (self.cpl & 3) as u16
            | (self.cr0_pe as u16) << 2
            | (self.cr0_am as u16) << 3
            | (self.efer_lma as u16) << 4
            | (self.debug_active as u16) << 5
            | (self.interruption_pending as u16) << 6
            | (self.interrupt_shadow as u16) << 12
    }
}

/// The processor context common to every exit (`WHV_VP_EXIT_CONTEXT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VpExitContext {
    /// Mode, privilege and pending-event state.
    pub execution_state: ExecutionState,
    /// Length of the instruction that exited, 1..=15 (a 4-bit field on the platform).
    pub instruction_length: u8,
    /// CR8 (the task-priority register), 0..=15.
    pub cr8: u8,
    /// The code segment.
    pub cs: SegmentRegister,
    /// RIP of the instruction that exited.
    pub rip: u64,
    /// RFLAGS at the exit.
    pub rflags: u64,
}

/// The kind of memory access that caused an exit (`WHV_MEMORY_ACCESS_TYPE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum MemoryAccessType {
    /// A data read.
    #[default]
    Read = 0,
    /// A data write.
    Write = 1,
    /// An instruction fetch.
    Execute = 2,
}

/// Details of the access behind a memory exit (`WHV_MEMORY_ACCESS_INFO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemoryAccessFlags {
    /// Read, write or execute (bits 0–1).
    pub access_type: MemoryAccessType,
    /// No memory is mapped at the GPA (bit 2).
    pub gpa_unmapped: bool,
    /// The `gva` field holds the linear address of the access (bit 3).
    pub gva_valid: bool,
}

impl MemoryAccessFlags {
    /// Decodes the platform's 32-bit layout. An access type of 3 (reserved) reads as `None`.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        let access_type = match bits & 3 {
            0 => MemoryAccessType::Read,
            1 => MemoryAccessType::Write,
            2 => MemoryAccessType::Execute,
            _ => return None,
        };
        Some(Self {
            access_type,
            gpa_unmapped: bits & (1 << 2) != 0,
            gva_valid: bits & (1 << 3) != 0,
        })
    }

    /// Encodes into the platform's 32-bit layout.
    pub const fn to_bits(&self) -> u32 {
        self.access_type as u32 | (self.gpa_unmapped as u32) << 2 | (self.gva_valid as u32) << 3
    }
}

/// A memory-access exit (`WHV_MEMORY_ACCESS_CONTEXT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemoryAccessContext {
    /// How many of `instruction_bytes` are valid, 0..=16. Missing bytes are fetched.
    pub instruction_byte_count: u8,
    /// The first bytes at RIP, as the hypervisor captured them.
    pub instruction_bytes: [u8; 16],
    /// The access that exited.
    pub access_info: MemoryAccessFlags,
    /// Guest-physical address of the access.
    pub gpa: u64,
    /// Linear address of the access, when `access_info.gva_valid`.
    pub gva: u64,
}

impl MemoryAccessContext {
    /// A context carrying `bytes` (up to 16) and an access at `gpa`, without a valid GVA.
    pub fn new(bytes: &[u8], access_type: MemoryAccessType, gpa: u64) -> Self {
        let (instruction_bytes, instruction_byte_count) = copy_bytes(bytes);
        Self {
            instruction_byte_count,
            instruction_bytes,
            access_info: MemoryAccessFlags {
                access_type,
                gpa_unmapped: true,
                gva_valid: false,
            },
            gpa,
            gva: 0,
        }
    }

    /// The same context, with `gva` marked valid as the linear address of the access.
    pub fn with_gva(mut self, gva: u64) -> Self {
        self.gva = gva;
        self.access_info.gva_valid = true;
        self
    }
}

fn copy_bytes(bytes: &[u8]) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    let n = bytes.len().min(16);
    if let (Some(dst), Some(src)) = (out.get_mut(..n), bytes.get(..n)) {
        dst.copy_from_slice(src);
    }
    (out, n as u8)
}

/// Details of a port access (`WHV_X64_IO_PORT_ACCESS_INFO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IoPortAccessInfo {
    /// OUT/OUTS (bit 0).
    pub is_write: bool,
    /// Bytes per element: 1, 2 or 4 (bits 1–3).
    pub access_size: u8,
    /// INS/OUTS (bit 4).
    pub string_op: bool,
    /// A REP prefix is present (bit 5).
    pub rep_prefix: bool,
}

impl IoPortAccessInfo {
    /// A non-string access of `access_size` bytes.
    pub const fn new(is_write: bool, access_size: u8) -> Self {
        Self {
            is_write,
            access_size,
            string_op: false,
            rep_prefix: false,
        }
    }

    /// An INS/OUTS access of `access_size` bytes per element.
    pub const fn string(is_write: bool, access_size: u8, rep_prefix: bool) -> Self {
        Self {
            is_write,
            access_size,
            string_op: true,
            rep_prefix,
        }
    }

    /// Decodes the platform's 32-bit layout.
    pub const fn from_bits(bits: u32) -> Self {
        Self {
            is_write: bits & 1 != 0,
            access_size: ((bits >> 1) & 7) as u8,
            string_op: bits & (1 << 4) != 0,
            rep_prefix: bits & (1 << 5) != 0,
        }
    }

    /// Encodes into the platform's 32-bit layout.
    pub const fn to_bits(&self) -> u32 {
        self.is_write as u32
            | ((self.access_size & 7) as u32) << 1
            | (self.string_op as u32) << 4
            | (self.rep_prefix as u32) << 5
    }
}

/// A port-I/O exit (`WHV_X64_IO_PORT_ACCESS_CONTEXT`).
///
/// The hypervisor hands over the registers a port instruction uses, so the common IN/OUT needs
/// no register read at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IoPortAccessContext {
    /// How many of `instruction_bytes` are valid, 0..=16. Missing bytes are fetched.
    pub instruction_byte_count: u8,
    /// The first bytes at RIP, as the hypervisor captured them.
    pub instruction_bytes: [u8; 16],
    /// Direction, size and kind of the access.
    pub access_info: IoPortAccessInfo,
    /// The port.
    pub port_number: u16,
    /// RAX at the exit.
    pub rax: u64,
    /// RCX at the exit.
    pub rcx: u64,
    /// RSI at the exit.
    pub rsi: u64,
    /// RDI at the exit.
    pub rdi: u64,
    /// DS at the exit.
    pub ds: SegmentRegister,
    /// ES at the exit.
    pub es: SegmentRegister,
}

impl IoPortAccessContext {
    /// A context carrying `bytes` (up to 16), the access and the port; the register fields are
    /// zero and the segments default: fill them as the exit reports them.
    pub fn new(bytes: &[u8], access_info: IoPortAccessInfo, port_number: u16) -> Self {
        let (instruction_bytes, instruction_byte_count) = copy_bytes(bytes);
        Self {
            instruction_byte_count,
            instruction_bytes,
            access_info,
            port_number,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_state_keeps_platform_bit_positions() {
        let bits = 0b1_0000_0111_1111u16 & !(1 << 7) | 3;
        let s = ExecutionState::from_bits(bits);
        assert_eq!(s.cpl, 3);
        assert!(s.cr0_pe && s.cr0_am && s.efer_lma && s.debug_active);
        assert!(s.interruption_pending && s.interrupt_shadow);
        assert_eq!(s.to_bits(), bits & 0x107F);
        assert_eq!(ExecutionState::from_bits(1 << 12).to_bits(), 1 << 12);
    }

    #[test]
    fn access_info_layouts() {
        let io = IoPortAccessInfo::from_bits(0b11_1001);
        assert_eq!(io, IoPortAccessInfo::string(true, 4, true));
        assert_eq!(io.to_bits(), 0b11_1001);
        let mem = MemoryAccessFlags::from_bits(0b1101).unwrap();
        assert_eq!(mem.access_type, MemoryAccessType::Write);
        assert!(mem.gpa_unmapped && mem.gva_valid);
        assert_eq!(mem.to_bits(), 0b1101);
        assert_eq!(MemoryAccessFlags::from_bits(3), None);
    }
}
