//! Decoding: the instruction bytes from the exit, or fetched from guest memory when the exit
//! carries too few, decoded in the code segment's bitness: by [`fast`] for the common MMIO
//! forms, by iced-x86 otherwise, into the same iced-x86 `Instruction` either way.
//!
//! Fetching follows the processor's rules (SDM Vol. 3A §5.3): bytes past the CS limit are a
//! #GP(0) only if the instruction needs them, and a page is translated for execute only when a
//! byte on it is needed, so a short instruction at the end of a page never touches the next.

use core::sync::atomic::{AtomicU8, Ordering};

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};

use crate::access::{Intent, Privilege};
use crate::callbacks::EmulatorCallbacks;
use crate::config::Vendor;
use crate::error::{EmulationError, Exception};
use crate::registers::Segment;
use crate::state::{Cpu, Mode, Res};

mod fast;

/// The longest x86 instruction.
pub(crate) const MAX_INSTRUCTION: usize = 15;

/// Builds iced-x86's decoder tables now, so that the first exit does not pay for them.
///
/// iced-x86 allocates its tables on the heap (about 356 KiB) the first time any decoder is
/// created, even under `no_std`; after that, decoding allocates nothing. An embedder therefore
/// needs a global allocator, and should call this once at start-up (before the first exit, and
/// outside any context that must not allocate). Calling it again is cheap and does nothing new.
///
/// ```
/// hvemu::warm_up();
/// ```
pub fn warm_up() {
    // Legacy, VEX and EVEX encodings, so every table family is built.
    const SAMPLES: [&[u8]; 3] = [
        &[0x89, 0x18],                         // mov [rax], ebx
        &[0xC5, 0xFE, 0x6F, 0x00],             // vmovdqu ymm0, [rax]
        &[0x62, 0xF1, 0xFE, 0x48, 0x6F, 0x00], // vmovdqu32 zmm0, [rax]
    ];
    for bytes in SAMPLES {
        let mut decoder = Decoder::new(64, bytes, DecoderOptions::NONE);
        let _ = decoder.decode();
    }
    let _ = decoder_support();
}

/// Which encodings the linked iced-x86 decoder has tables for.
///
/// iced-x86 removes tables through negative features (`no_vex`, `no_evex`, `no_xop`) that
/// Cargo unifies across the whole build: hvemu's `lean-decoder` feature turns them on, and so
/// may any other crate that depends on iced-x86. hvemu therefore asks the decoder itself rather
/// than trusting its own features, and reports an instruction in a missing encoding as
/// [`EmulationError::EncodingUnavailable`] instead of calling it undecodable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecoderSupport {
    /// VEX (AVX, AVX2): `vmovdqu ymm` and the other VEX moves.
    pub vex: bool,
    /// EVEX (AVX-512): the ZMM and opmask moves.
    pub evex: bool,
    /// XOP (AMD): no memory move hvemu emulates, reported for completeness.
    pub xop: bool,
}

/// What the linked iced-x86 decoder can decode (probed once, then remembered).
///
/// ```
/// let support = hvemu::decoder_support();
/// assert_eq!(support.vex, !cfg!(feature = "lean-decoder"));
/// ```
// Inlined: the VEX fast decoder asks on every exit, and only the first call probes.
#[inline]
pub fn decoder_support() -> DecoderSupport {
    let mut bits = PROBED.load(Ordering::Relaxed);
    if bits == 0 {
        bits = probe_decoder();
    }
    DecoderSupport {
        vex: bits & 1 != 0,
        evex: bits & 2 != 0,
        xop: bits & 4 != 0,
    }
}

/// What [`decoder_support`] found. Bit 7: probed; bits 0-2: VEX, EVEX, XOP present.
static PROBED: AtomicU8 = AtomicU8::new(0);

/// Decodes one instruction of each encoding and remembers which the decoder knows.
#[cold]
#[inline(never)]
fn probe_decoder() -> u8 {
    let decodes = |bytes: &[u8]| {
        !Decoder::new(64, bytes, DecoderOptions::NONE)
            .decode()
            .is_invalid()
    };
    let bits = 0x80
        | u8::from(decodes(&[0xC5, 0xFE, 0x6F, 0x00]))
        | u8::from(decodes(&[0x62, 0xF1, 0xFE, 0x48, 0x6F, 0x00])) << 1
        | u8::from(decodes(&[0x8F, 0xE9, 0x78, 0xC1, 0xC0])) << 2;
    PROBED.store(bits, Ordering::Relaxed);
    bits
}

/// Whether `bytes` (in `bits`-bit code) begin an instruction in an encoding the linked decoder
/// has no tables for: after the legacy (and, in 64-bit code, REX) prefixes, a VEX (C4, C5),
/// EVEX (62) or XOP (8F) escape that outside 64-bit code is not LES, LDS, BOUND or POP.
fn encoding_unavailable(bytes: &[u8], bits: u32) -> bool {
    let is_prefix = |b: u8| {
        matches!(
            b,
            0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3
        ) || (bits == 64 && (0x40..=0x4F).contains(&b))
    };
    let mut rest = bytes.iter().copied().skip_while(|b| is_prefix(*b));
    let (Some(escape), Some(next)) = (rest.next(), rest.next()) else {
        return false;
    };
    let register_form = bits == 64 || next >= 0xC0;
    let support = decoder_support();
    match escape {
        0xC4 | 0xC5 => register_form && !support.vex,
        0x62 => register_form && !support.evex,
        0x8F => next & 0x1F >= 8 && !support.xop,
        _ => false,
    }
}

impl<C: EmulatorCallbacks> Cpu<'_, C> {
    /// The decoder options of the configured vendor.
    pub(crate) fn decoder_options(&self) -> u32 {
        match self.config.vendor {
            Vendor::Intel => DecoderOptions::NONE,
            Vendor::Amd => DecoderOptions::AMD,
        }
    }

    /// Decodes the instruction at RIP into `instr`, starting from the first `count` bytes of
    /// `all` (the bytes the exit carried) and fetching any that are missing. Returns whether
    /// the exit's bytes held the whole instruction.
    pub(crate) fn decode(
        &mut self,
        all: &[u8; 16],
        count: usize,
        instr: &mut Instruction,
    ) -> Res<bool, C> {
        let exit_bytes = all.get(..count.min(MAX_INSTRUCTION)).unwrap_or(&[]);
        // The common exit carries the whole instruction, usually a form simple enough to
        // decode without constructing iced's decoder; otherwise iced decodes it in place.
        let whole = fast::decode(exit_bytes, self.state.code_bits, self.state.rip, instr)
            || self.decode_with_iced(exit_bytes, instr)?;
        self.check_fetch(instr)?;
        Ok(whole)
    }

    /// [`Cpu::decode`] by iced-x86, fetching what the exit's bytes lack; returns whether they
    /// held the whole instruction.
    fn decode_with_iced(&mut self, exit_bytes: &[u8], instr: &mut Instruction) -> Res<bool, C> {
        let options = self.decoder_options();
        let mut decoder = self.decoder(exit_bytes, options);
        decoder.decode_out(instr);
        if !instr.is_invalid() {
            return Ok(true);
        }
        let error = decoder.last_error();
        let mut buf = [0u8; MAX_INSTRUCTION];
        let len = exit_bytes.len();
        if let Some(dst) = buf.get_mut(..len) {
            dst.copy_from_slice(exit_bytes);
        }
        self.decode_fetching(buf, len, error, options, instr)?;
        Ok(false)
    }

    /// The processor fetched every byte: the whole instruction lies within the CS limit and,
    /// in 64-bit mode, at canonical addresses (even when the exit supplied the bytes and
    /// nothing was fetched here).
    #[inline]
    pub(crate) fn check_fetch(&mut self, instr: &Instruction) -> Res<(), C> {
        let ip = self.state.mask_ip(self.state.rip);
        // Not a shortcut for 64-bit mode: one (CS base 0, canonical check alone) took fewer
        // instructions but made the uncached MOV exit 10 ns slower in the bench.
        self.linearize(Segment::Cs, ip, instr.len(), Intent::Execute)?;
        Ok(())
    }

    /// A decoder over `bytes` at RIP in the code segment's bitness.
    fn decoder<'b>(&self, bytes: &'b [u8], options: u32) -> Decoder<'b> {
        // `code_bits` is 16, 32 or 64 by construction (`State::new`), the only bitnesses
        // `with_ip` refuses; it avoids moving a `Result<Decoder>` (about 400 bytes) per exit.
        Decoder::with_ip(self.state.code_bits, bytes, self.state.rip, options)
    }

    /// The rare path: the exit's `len` bytes in `buf` did not decode. Fetches what is missing
    /// from guest memory, or says why the bytes are not an instruction.
    fn decode_fetching(
        &mut self,
        mut buf: [u8; MAX_INSTRUCTION],
        mut len: usize,
        mut error: DecoderError,
        options: u32,
        instr: &mut Instruction,
    ) -> Res<(), C> {
        // Each round either decodes, fails, or fetches at least one more byte, and at most
        // 15 bytes can be fetched: the loop ends.
        loop {
            let bytes = buf.get(..len).unwrap_or(&[]);
            if error != DecoderError::NoMoreBytes || len >= MAX_INSTRUCTION {
                // LOCK where the instruction or its operand does not allow it is #UD (SDM Vol.
                // 2A "LOCK"); iced-x86 calls such bytes invalid unless told not to check.
                let relaxed = options | DecoderOptions::NO_INVALID_CHECK;
                let lax = self.decoder(bytes, relaxed).decode();
                if !lax.is_invalid() && lax.has_lock_prefix() {
                    return Err(Exception::ud().into());
                }
                if encoding_unavailable(bytes, self.state.code_bits) {
                    return Err(EmulationError::EncodingUnavailable {
                        bytes: buf,
                        len: len as u8,
                    });
                }
                return Err(EmulationError::Undecodable {
                    bytes: buf,
                    len: len as u8,
                });
            }
            let fetched = self.fetch_code(len, buf.get_mut(len..).unwrap_or(&mut []))?;
            len = len.saturating_add(fetched);
            let mut decoder = self.decoder(buf.get(..len).unwrap_or(&[]), options);
            decoder.decode_out(instr);
            if !instr.is_invalid() {
                return Ok(());
            }
            error = decoder.last_error();
        }
    }

    /// Fetches the code bytes that follow the first `have` bytes of the instruction into
    /// `out`, up to the end of their page and the CS limit; returns how many it fetched (≥ 1).
    fn fetch_code(&mut self, have: usize, out: &mut [u8]) -> Res<usize, C> {
        // Bytes of one instruction do not wrap with IP: past 0xFFFF they meet the CS limit.
        let offset = self.state.mask_ip(self.state.rip).wrapping_add(have as u64);
        let mut want = out.len();
        if self.state.mode != Mode::Long {
            let limit = u64::from(self.segment(Segment::Cs)?.limit);
            let room = limit.checked_sub(offset).map_or(0, |r| r.saturating_add(1));
            want = want.min(usize::try_from(room).unwrap_or(usize::MAX));
            if want == 0 {
                return Err(Exception::gp(0).into());
            }
        }
        let first_linear = self.linearize(Segment::Cs, offset, 1, Intent::Execute)?;
        // At least one byte is left on the page.
        let page_room = 0x1000usize.wrapping_sub((first_linear & 0xFFF) as usize);
        want = want.min(page_room);
        let linear = self.linearize(Segment::Cs, offset, want, Intent::Execute)?;
        let span = self.translate(linear, want, Intent::Execute, Privilege::Current)?;
        let dst = out.get_mut(..want).unwrap_or(&mut []);
        self.read_span(&span, dst)?;
        Ok(dst.len().max(1))
    }
}
