//! The access layer: the only place that calls `translate_gva_page`, `memory` and `io_port`.
//!
//! Linear addresses become guest-physical spans here, through a small per-call translation
//! cache (a REP string translates each page once) seeded by the exit's own GPA when the exit
//! vouches for the access being made.

use crate::callbacks::{
    AccessDirection, EmulatorCallbacks, IoAccessInfo, MemoryAccessInfo, StringIoAccess,
    TranslateGvaFlags, TranslateGvaResult,
};
use crate::error::{EmulationError, Exception};
use crate::state::{Cpu, Mode, RFLAGS_AC, Res};

const PAGE: u64 = 0x1000;
const PAGE_MASK: u64 = !(PAGE - 1);

/// The largest single memory operand hvemu moves (a ZMM register).
pub(crate) const MAX_ACCESS: usize = 64;

/// What an access does to its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Intent {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Execute,
    /// A read-modify-write data access (`add [mem], …`): checked and translated once, for both
    /// reading and writing, before the read; it faults as a write.
    ReadWrite,
}

impl Intent {
    pub(crate) const fn writes(self) -> bool {
        matches!(self, Intent::Write | Intent::ReadWrite)
    }

    fn validate(self) -> TranslateGvaFlags {
        match self {
            Intent::Read => TranslateGvaFlags::VALIDATE_READ,
            Intent::Write => TranslateGvaFlags::VALIDATE_WRITE,
            Intent::Execute => TranslateGvaFlags::VALIDATE_EXECUTE,
            Intent::ReadWrite => {
                TranslateGvaFlags::VALIDATE_READ.union(TranslateGvaFlags::VALIDATE_WRITE)
            }
        }
    }
}

/// Who makes an access: the instruction at the current CPL, or the processor itself on the
/// supervisor's behalf (TSS, descriptor tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Privilege {
    /// An ordinary access at the current CPL.
    Current,
    /// An implicit supervisor access.
    System,
}

/// What a memory exit says about its access: linear `gva` is at `gpa`, validated for the kind
/// of access the exit reports.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GpaHint {
    pub gva: u64,
    pub gpa: u64,
    pub validated: TranslateGvaFlags,
}

#[derive(Clone, Copy, Debug)]
struct TlbEntry {
    page: u64,
    gpa: u64,
    flags: TranslateGvaFlags,
}

/// Translations made during one call. Four entries cover the pages any one instruction or REP
/// iteration touches (two operands, each possibly split).
const TLB_ENTRIES: usize = 4;

#[derive(Clone, Debug)]
pub(crate) struct Tlb {
    entries: [TlbEntry; TLB_ENTRIES],
    /// How many entries hold a translation (they fill in order, then are reused in turn).
    used: usize,
    next: usize,
}

impl Tlb {
    /// No translations. A constant, so that creating one per exit is a few plain stores.
    pub(crate) const EMPTY: Tlb = Tlb {
        entries: [TlbEntry {
            page: 0,
            gpa: 0,
            flags: TranslateGvaFlags::empty(),
        }; TLB_ENTRIES],
        used: 0,
        next: 0,
    };

    fn valid(&self) -> &[TlbEntry] {
        self.entries.get(..self.used).unwrap_or(&self.entries)
    }

    /// A translation of `page` validated for at least `flags`, made with the same privilege:
    /// a walk for an implicit supervisor access (TSS, descriptor tables) never serves the
    /// instruction's own accesses, nor the other way round (SMAP treats the two differently).
    #[inline]
    fn lookup(&self, page: u64, flags: TranslateGvaFlags) -> Option<u64> {
        self.valid()
            .iter()
            .find(|e| e.page == page && same_privilege(e.flags, flags))
            .filter(|e| e.flags.contains(flags & VALIDATE))
            .map(|e| e.gpa)
    }

    #[inline]
    fn insert(&mut self, page: u64, gpa: u64, flags: TranslateGvaFlags) {
        // Replace a weaker translation of the same page and privilege in place, so lookups
        // stay unambiguous.
        let same = |e: &TlbEntry| e.page == page && same_privilege(e.flags, flags);
        let slot = match self.valid().iter().position(same) {
            Some(i) => i,
            None if self.used < TLB_ENTRIES => {
                self.used = self.used.wrapping_add(1);
                self.used.wrapping_sub(1)
            }
            None => {
                let i = self.next % TLB_ENTRIES;
                self.next = i.wrapping_add(1) % TLB_ENTRIES;
                i
            }
        };
        if let Some(e) = self.entries.get_mut(slot) {
            *e = TlbEntry { page, gpa, flags };
        }
    }
}

/// The permission bits of a translation (the SMAP modifiers only follow from the privilege).
const VALIDATE: TranslateGvaFlags = TranslateGvaFlags::VALIDATE_READ
    .union(TranslateGvaFlags::VALIDATE_WRITE)
    .union(TranslateGvaFlags::VALIDATE_EXECUTE);

fn same_privilege(a: TranslateGvaFlags, b: TranslateGvaFlags) -> bool {
    a.contains(TranslateGvaFlags::PRIVILEGE_EXEMPT)
        == b.contains(TranslateGvaFlags::PRIVILEGE_EXEMPT)
}

/// A linear range resolved to at most two guest-physical pieces (split at the page boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    first: u64,
    first_len: usize,
    second: u64,
    len: usize,
}

impl Span {
    /// The guest-physical address of the first byte.
    pub(crate) fn gpa(&self) -> u64 {
        self.first
    }

    /// The pieces as (gpa, start offset in the operand, length).
    fn pieces(&self) -> impl Iterator<Item = (u64, core::ops::Range<usize>)> {
        let split = self.first_len.min(self.len);
        [(self.first, 0..split), (self.second, split..self.len)]
            .into_iter()
            .filter(|(_, r)| !r.is_empty())
    }
}

impl<C: EmulatorCallbacks> Cpu<'_, C> {
    /// Translates every page of `len` bytes at `linear` for `intent`, so that the access can
    /// no longer fault. `len` is 1..=64.
    // Inlined so that the span stays in registers: returned through memory, it was read back
    // in wide loads over narrow stores (a store-forwarding stall on every access).
    #[inline(always)]
    pub(crate) fn translate(
        &mut self,
        linear: u64,
        len: usize,
        intent: Intent,
        privilege: Privilege,
    ) -> Res<Span, C> {
        let len = len.clamp(1, MAX_ACCESS);
        let offset = linear & !PAGE_MASK;
        // `offset` is below PAGE: no wrap.
        let first_len = usize::try_from(PAGE.wrapping_sub(offset))
            .unwrap_or(len)
            .min(len);
        // Outside 64-bit mode linear addresses wrap at 4 GiB.
        let wrap = if self.state.is_long() {
            u64::MAX
        } else {
            0xFFFF_FFFF
        };
        let second_linear = (linear & PAGE_MASK).wrapping_add(PAGE) & wrap;
        let first = self.translate_page(linear, intent, privilege)?;
        let second = if first_len < len {
            self.translate_page(second_linear, intent, privilege)?
        } else {
            0
        };
        Ok(Span {
            first: first | offset,
            first_len,
            second,
            len,
        })
    }

    /// The GPA of the page holding `linear` (its address with the offset cleared).
    fn translate_page(&mut self, linear: u64, intent: Intent, privilege: Privilege) -> Res<u64, C> {
        let page = linear & PAGE_MASK;
        if self.state.mode == Mode::Real {
            return Ok(page);
        }
        let mut flags = intent.validate();
        if privilege == Privilege::System {
            // Implicit supervisor accesses are subject to SMAP whatever RFLAGS.AC says.
            flags |= TranslateGvaFlags::PRIVILEGE_EXEMPT | TranslateGvaFlags::ENFORCE_SMAP;
        } else if self.state.cpl < 3 && self.state.rflags & RFLAGS_AC != 0 {
            // A supervisor data access with RFLAGS.AC set is exempt from SMAP.
            flags |= TranslateGvaFlags::OVERRIDE_SMAP;
        }
        if let Some(gpa) = self.tlb.lookup(page, flags) {
            return Ok(gpa);
        }
        if let Some(hint) = self.hint {
            // The exit vouches only for the access it reports: the same linear address, a
            // permission at least as strong, and a GPA on the same page offset.
            if hint.gva == linear
                && privilege == Privilege::Current
                && hint.validated.contains(flags & VALIDATE)
                && hint.gpa & !PAGE_MASK == hint.gva & !PAGE_MASK
            {
                let gpa = hint.gpa & PAGE_MASK;
                self.tlb.insert(page, gpa, hint.validated);
                return Ok(gpa);
            }
        }
        let (result, gpa) = self
            .cb
            .translate_gva_page(page, flags | TranslateGvaFlags::SET_PAGE_TABLE_BITS)
            .map_err(EmulationError::TranslateGva)?;
        let (present, reserved) = match result {
            TranslateGvaResult::PageNotPresent => (false, false),
            TranslateGvaResult::PrivilegeViolation => (true, false),
            TranslateGvaResult::InvalidPageTableFlags => (true, true),
            TranslateGvaResult::Intercept => {
                return Err(EmulationError::TranslationIntercept { gva_page: page });
            }
            // The walk succeeded; whether the GPA is RAM, MMIO or protected is the memory
            // callback's business.
            TranslateGvaResult::Success
            | TranslateGvaResult::GpaUnmapped
            | TranslateGvaResult::GpaNoReadAccess
            | TranslateGvaResult::GpaNoWriteAccess
            | TranslateGvaResult::GpaIllegalOverlayAccess => {
                if gpa & !PAGE_MASK != 0 {
                    return Err(EmulationError::TranslateGpaNotAligned {
                        gva_page: page,
                        gpa,
                    });
                }
                self.tlb.insert(page, gpa, flags);
                return Ok(gpa);
            }
        };
        let mut code = u32::from(present);
        if intent.writes() {
            code |= 1 << 1;
        }
        if self.state.cpl == 3 && privilege == Privilege::Current {
            code |= 1 << 2;
        }
        if reserved {
            code |= 1 << 3;
        }
        if intent == Intent::Execute && self.fetch_faults_report_id()? {
            code |= 1 << 4;
        }
        Err(EmulationError::Exception(Exception::pf(linear, code)))
    }

    /// Whether a #PF on an instruction fetch sets the I/D bit: only with SMEP, or with NX
    /// available (PAE or 4-level paging with EFER.NXE) (SDM Vol. 3A §4.7). Read only on this
    /// rare path, so the common exit never pays for CR4 and EFER.
    fn fetch_faults_report_id(&mut self) -> Res<bool, C> {
        const CR4_PAE: u64 = 1 << 5;
        const CR4_SMEP: u64 = 1 << 20;
        const EFER_NXE: u64 = 1 << 11;
        let cr4 = self.cr4()?;
        Ok(cr4 & CR4_SMEP != 0 || (cr4 & CR4_PAE != 0 && self.efer()? & EFER_NXE != 0))
    }

    /// Reads a translated span into `buf` (whose length is the span's).
    pub(crate) fn read_span(&mut self, span: &Span, buf: &mut [u8]) -> Res<(), C> {
        self.span_access(span, buf, AccessDirection::Read)
    }

    /// Writes `buf` to a translated span. (`buf` is mutable only because the callback's
    /// access record is; its contents are not read back.)
    pub(crate) fn write_span(&mut self, span: &Span, buf: &mut [u8]) -> Res<(), C> {
        self.span_access(span, buf, AccessDirection::Write)
    }

    /// Reads a 1-, 2-, 4- or 8-byte value from a translated span.
    pub(crate) fn read_span_value(&mut self, span: &Span, size: usize) -> Res<u64, C> {
        let mut buf = [0u8; 8];
        let data = buf.get_mut(..size).unwrap_or(&mut []);
        self.read_span(span, data)?;
        Ok(crate::state::le_value(data) as u64)
    }

    /// Reads or writes `buf` (whose length is the span's) at a translated span: one `memory`
    /// call per page.
    #[inline]
    pub(crate) fn span_access(
        &mut self,
        span: &Span,
        buf: &mut [u8],
        direction: AccessDirection,
    ) -> Res<(), C> {
        // Nearly every access lies within one page: one call, no pieces to walk.
        if span.first_len >= span.len {
            return match buf.get_mut(..span.len) {
                Some(data) if !data.is_empty() => self.gpa_access(span.first, data, direction),
                _ => Ok(()),
            };
        }
        for (gpa, range) in span.pieces() {
            if let Some(data) = buf.get_mut(range) {
                self.gpa_access(gpa, data, direction)?;
            }
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes (within one page) at a guest-physical address.
    pub(crate) fn read_gpa(&mut self, gpa: u64, buf: &mut [u8]) -> Res<(), C> {
        self.gpa_access(gpa, buf, AccessDirection::Read)
    }

    /// Writes `buf` (within one page) at a guest-physical address.
    pub(crate) fn write_gpa(&mut self, gpa: u64, buf: &mut [u8]) -> Res<(), C> {
        self.gpa_access(gpa, buf, AccessDirection::Write)
    }

    /// One `memory` call.
    fn gpa_access(&mut self, gpa: u64, data: &mut [u8], direction: AccessDirection) -> Res<(), C> {
        let mut access = MemoryAccessInfo {
            gpa_address: gpa,
            direction,
            data,
        };
        self.cb.memory(&mut access).map_err(EmulationError::Memory)
    }

    /// Offers a block copy to the monitor ([`EmulatorCallbacks::copy_memory`]).
    pub(crate) fn copy_block(&mut self, dst: u64, src: u64, len: usize) -> Res<bool, C> {
        self.cb
            .copy_memory(dst, src, len)
            .map_err(EmulationError::Memory)
    }

    /// Offers a block fill to the monitor ([`EmulatorCallbacks::fill_memory`]).
    pub(crate) fn fill_block(&mut self, dst: u64, element: &[u8], count: usize) -> Res<bool, C> {
        self.cb
            .fill_memory(dst, element, count)
            .map_err(EmulationError::Memory)
    }

    /// Offers a batch of string port I/O to the monitor
    /// ([`EmulatorCallbacks::io_port_string`]).
    pub(crate) fn string_io(&mut self, batch: &StringIoAccess) -> Res<bool, C> {
        self.cb
            .io_port_string(batch)
            .map_err(EmulationError::IoPort)
    }

    /// Writes the low `size` bytes (at most 8) of `value` to a translated span.
    pub(crate) fn write_value(&mut self, span: &Span, value: u64, size: usize) -> Res<(), C> {
        let mut bytes = value.to_le_bytes();
        self.write_span(span, bytes.get_mut(..size).unwrap_or(&mut []))
    }

    /// Offers an atomic compare-exchange of a translated span to the monitor
    /// ([`EmulatorCallbacks::compare_exchange`]); `expected`, `new` and `current` have the
    /// span's length. `Ok(None)` when the monitor declines, or without asking it when the span
    /// crosses a page.
    pub(crate) fn compare_exchange_span(
        &mut self,
        span: &Span,
        expected: &[u8],
        new: &[u8],
        current: &mut [u8],
    ) -> Res<Option<bool>, C> {
        let len = span.len;
        let (Some(expected), Some(new), Some(current)) =
            (expected.get(..len), new.get(..len), current.get_mut(..len))
        else {
            return Ok(None);
        };
        if span.first_len < len {
            return Ok(None);
        }
        self.cb
            .compare_exchange(span.first, expected, new, current)
            .map_err(EmulationError::Memory)
    }

    /// IN: one port read of 1, 2 or 4 bytes.
    pub(crate) fn port_in(&mut self, port: u16, size: u8) -> Res<u32, C> {
        let mut access = IoAccessInfo {
            direction: AccessDirection::Read,
            port,
            access_size: size,
            data: 0,
        };
        self.cb
            .io_port(&mut access)
            .map_err(EmulationError::IoPort)?;
        Ok(access.data & crate::state::width_mask(usize::from(size)) as u32)
    }

    /// OUT: one port write of 1, 2 or 4 bytes.
    pub(crate) fn port_out(&mut self, port: u16, size: u8, value: u32) -> Res<(), C> {
        let mask = crate::state::width_mask(usize::from(size)) as u32;
        let mut access = IoAccessInfo {
            direction: AccessDirection::Write,
            port,
            access_size: size,
            data: value & mask,
        };
        self.cb.io_port(&mut access).map_err(EmulationError::IoPort)
    }
}
