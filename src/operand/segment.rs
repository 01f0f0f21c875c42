//! Segmentation, canonical form and alignment: offset → linear address, or the fault the
//! processor raises instead (SDM Vol. 3A §5.3 limit checking, §5.4 type checking, §3.3.7.1
//! canonical addressing; AMD APM Vol. 2 §4.12 for the same checks).

use crate::access::Intent;
use crate::callbacks::EmulatorCallbacks;
use crate::error::{EmulationError, Exception};
use crate::registers::{Segment, SegmentAttributes};
use crate::state::{Cpu, Mode, RFLAGS_AC, Res};

impl<C: EmulatorCallbacks> Cpu<'_, C> {
    /// The linear address of `len` bytes at `offset` in `seg`, after every segmentation,
    /// canonical-form and alignment check the processor makes for `intent`.
    ///
    /// Faults on a reference through SS are #SS(0), the others #GP(0).
    pub(crate) fn linearize(
        &mut self,
        seg: Segment,
        offset: u64,
        len: usize,
        intent: Intent,
    ) -> Res<u64, C> {
        self.linearize_elements(seg, offset, len, len, intent)
    }

    /// [`linearize`](Self::linearize) for `len` bytes made of consecutive `element`-byte
    /// accesses (a run of string iterations): the segment and canonical checks cover the whole
    /// range, the alignment check one element (they all share its alignment).
    #[inline]
    pub(crate) fn linearize_elements(
        &mut self,
        seg: Segment,
        offset: u64,
        len: usize,
        element: usize,
        intent: Intent,
    ) -> Res<u64, C> {
        let fault = || -> EmulationError<C::Error> {
            if seg == Segment::Ss {
                Exception::ss(0)
            } else {
                Exception::gp(0)
            }
            .into()
        };
        let last = u64::try_from(len.saturating_sub(1)).unwrap_or(0);
        let linear = if self.state.mode == Mode::Long {
            let base = match seg {
                Segment::Fs | Segment::Gs => self.segment(seg)?.base,
                _ => 0,
            };
            let linear = base.wrapping_add(offset);
            if !self.canonical_range(linear, linear.wrapping_add(last))? {
                return Err(fault());
            }
            linear
        } else {
            let desc = self.segment(seg)?;
            let attrs = desc.attributes;
            let real_like = matches!(self.state.mode, Mode::Real | Mode::Virtual8086);
            if !real_like {
                // A null or unusable selector reads as not present.
                if !desc.present() {
                    return Err(fault());
                }
                let code = attrs.contains(SegmentAttributes::CODE);
                let rw = attrs.contains(SegmentAttributes::WRITABLE_OR_READABLE);
                let allowed = match intent {
                    Intent::Execute => code,
                    Intent::Read => !code || rw,
                    Intent::Write | Intent::ReadWrite => !code && rw,
                };
                if !allowed {
                    return Err(fault());
                }
            }
            let end = offset.checked_add(last).ok_or_else(fault)?;
            let limit = u64::from(desc.limit);
            let expand_down = !attrs.contains(SegmentAttributes::CODE)
                && attrs.contains(SegmentAttributes::EXPAND_DOWN_OR_CONFORMING)
                && attrs.contains(SegmentAttributes::NON_SYSTEM);
            let in_limit = if expand_down {
                let upper = if attrs.contains(SegmentAttributes::DEFAULT_BIG) {
                    0xFFFF_FFFF
                } else {
                    0xFFFF
                };
                offset > limit && end <= upper
            } else {
                end <= limit
            };
            if !in_limit {
                return Err(fault());
            }
            desc.base.wrapping_add(offset) & 0xFFFF_FFFF
        };
        self.check_alignment(linear, element, intent)?;
        Ok(linear)
    }

    /// Whether `linear..=end` is canonical in 64-bit mode. CR4.LA57 matters only for
    /// addresses that are not 48-bit canonical, so the common exit never reads CR4.
    #[inline(always)]
    fn canonical_range(&mut self, linear: u64, end: u64) -> Res<bool, C> {
        if canonical(linear, 48) && canonical(end, 48) {
            return Ok(true);
        }
        let width = if self.cr4()? & (1 << 12) != 0 { 57 } else { 48 };
        Ok(canonical(linear, width) && canonical(end, width))
    }

    /// #AC(0) for a misaligned 2-, 4- or 8-byte data access at CPL 3 with CR0.AM and
    /// RFLAGS.AC set (SDM Vol. 3A §6.15, interrupt 17): 16-byte operands have their own
    /// alignment rules (#GP) where they have any.
    fn check_alignment(&self, linear: u64, len: usize, intent: Intent) -> Res<(), C> {
        let armed = self.state.exec.cr0_am
            && self.state.rflags & RFLAGS_AC != 0
            && self.state.cpl == 3
            && self.state.mode != Mode::Real;
        if !armed || intent == Intent::Execute || !matches!(len, 2 | 4 | 8) {
            return Ok(());
        }
        let misaligned = linear & u64::try_from(len).unwrap_or(1).saturating_sub(1) != 0;
        if misaligned {
            Err(Exception {
                vector: crate::error::Vector::AlignmentCheck,
                error_code: Some(0),
                cr2: None,
            }
            .into())
        } else {
            Ok(())
        }
    }
}

/// Whether `addr` is canonical for a `width`-bit linear address space.
pub(crate) fn canonical(addr: u64, width: u32) -> bool {
    // Callers pass 48 or 57 (a shift of 16 or 7); the saturating and wrapping forms keep
    // any other width from panicking.
    let shift = 64u32.saturating_sub(width);
    (addr.wrapping_shl(shift) as i64).wrapping_shr(shift) as u64 == addr
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn canonical_boundaries() {
        assert!(canonical(0x0000_7FFF_FFFF_FFFF, 48));
        assert!(!canonical(0x0000_8000_0000_0000, 48));
        assert!(canonical(0xFFFF_8000_0000_0000, 48));
        assert!(!canonical(0xFFFF_7FFF_FFFF_FFFF, 48));
        assert!(canonical(0x00FF_FFFF_FFFF_FFFF, 57));
        assert!(!canonical(0x0100_0000_0000_0000, 57));
    }
}
