//! The REP driver: runs a string instruction's iterations with the count, termination and
//! per-call bound the architecture and the configuration give (SDM Vol. 2B, "REP/REPE/REPZ/
//! REPNE/REPNZ").
//!
//! One iteration is all-or-nothing: its faults are found before its first side effect and its
//! registers change only when it completes. When an iteration fails after others completed,
//! the driver stops before it and reports the progress as a partial completion: the monitor
//! commits RCX/RSI/RDI as after the last completed iteration, RIP stays on the instruction, and
//! the guest's re-execution meets the failure again as its first iteration, where nothing has
//! happened yet and the failure is reported.

use iced_x86::Instruction;

use crate::access::{Intent, Privilege};
use crate::callbacks::{AccessDirection, EmulatorCallbacks, StringIoAccess};
use crate::error::EmulationError;
use crate::operand::address_mask;
use crate::registers::Segment;
use crate::state::{Cpu, RFLAGS_DF, RFLAGS_ZF, Res, gpr, le_value};

/// How far one call got through an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// The instruction completed: RIP moves to the next one.
    Complete,
    /// A REP instruction stopped part way: RIP stays on it.
    Partial,
    /// Nothing happened (a locked operation kept losing its race): RIP stays on the
    /// instruction and the guest runs it again.
    Retry,
}

/// Which prefix governs the repetition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repeat {
    Once,
    /// REP: until RCX is 0.
    Count,
    /// REPE/REPZ: also stop when ZF is 0.
    WhileEqual,
    /// REPNE/REPNZ: also stop when ZF is 1.
    WhileNotEqual,
}

fn repeat_kind(instr: &Instruction, compares: bool) -> Repeat {
    match (instr.has_rep_prefix(), instr.has_repne_prefix(), compares) {
        (false, false, _) => Repeat::Once,
        (true, _, true) => Repeat::WhileEqual,
        (false, true, true) => Repeat::WhileNotEqual,
        // F2 and F3 both mean plain REP for instructions that do not compare.
        (_, _, false) => Repeat::Count,
    }
}

/// Runs `step` once, or as the REP prefix says with `address_size` (bytes) sizing RCX.
/// `compares` is true for CMPS/SCAS, whose REPE/REPNE forms also test ZF.
pub(crate) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    address_size: usize,
    compares: bool,
    mut step: impl FnMut(&mut Cpu<'_, C>) -> Res<(), C>,
) -> Res<Progress, C> {
    let repeat = repeat_kind(instr, compares);
    if repeat == Repeat::Once {
        step(cpu)?;
        return Ok(Progress::Complete);
    }
    let mut count = cpu.gpr(gpr::RCX)? & address_mask(address_size);
    let budget = cpu.rep_budget;
    let mut done = 0u32;
    while let Some(remaining) = count.checked_sub(1) {
        if done >= budget {
            return Ok(Progress::Partial);
        }
        if let Err(e) = step(cpu) {
            return if done == 0 {
                Err(e)
            } else {
                Ok(Progress::Partial)
            };
        }
        // Below `budget`, a u32: cannot saturate.
        done = done.saturating_add(1);
        count = remaining;
        cpu.set_gpr_sized(gpr::RCX, count, address_size)?;
        let zf = cpu.state.rflags & RFLAGS_ZF != 0;
        match repeat {
            Repeat::WhileEqual if !zf => break,
            Repeat::WhileNotEqual if zf => break,
            _ => {}
        }
    }
    Ok(Progress::Complete)
}

/// What a REP MOVS, STOS, INS or OUTS does with each element, for [`run_blocks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Block {
    /// `[ES:rDI] ← [seg:rSI]`.
    Movs { source: Segment },
    /// `[ES:rDI] ← rAX` (the element's bytes).
    Stos { value: u64 },
    /// `[ES:rDI] ← port`.
    Ins { port: u16 },
    /// `port ← [seg:rSI]`.
    Outs { source: Segment, port: u16 },
}

/// One string operand of a block: where it is and how it is accessed.
#[derive(Clone, Copy, Debug)]
struct Walk {
    seg: Segment,
    reg: u8,
    intent: Intent,
}

/// A planned run of a walk: its first element's linear address and GPA.
#[derive(Clone, Copy, Debug)]
struct Placed {
    linear: u64,
    gpa: u64,
}

impl Block {
    /// The memory operands: the source (if any) first.
    fn walks(self) -> ([Option<Walk>; 2], bool) {
        let src = |seg| Walk {
            seg,
            reg: gpr::RSI,
            intent: Intent::Read,
        };
        let dst = Walk {
            seg: Segment::Es,
            reg: gpr::RDI,
            intent: Intent::Write,
        };
        match self {
            Block::Movs { source } => ([Some(src(source)), Some(dst)], true),
            Block::Stos { .. } | Block::Ins { .. } => ([Some(dst), None], false),
            Block::Outs { source, .. } => ([Some(src(source)), None], false),
        }
    }
}

/// Runs a REP MOVS, STOS, INS or OUTS in runs: the iterations that stay within one page of
/// each operand (and within its segment and address-size wrap) are checked and translated
/// once, then moved element by element through `memory`/`io_port` — or handed to the
/// monitor's bulk callback in one call. Iterations a run cannot cover (an element straddling a
/// page, a run that would fault somewhere, the single-step budget of one) go through `step`,
/// one at a time, exactly as [`run`] does them; so the outcome, faults included, is the same
/// as running every iteration by itself. Without a REP prefix, `step` runs once.
pub(crate) fn run_blocks<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    instr: &Instruction,
    address_size: usize,
    size: usize,
    block: Block,
    mut step: impl FnMut(&mut Cpu<'_, C>) -> Res<(), C>,
) -> Res<Progress, C> {
    if repeat_kind(instr, false) == Repeat::Once {
        step(cpu)?;
        return Ok(Progress::Complete);
    }
    let mask = address_mask(address_size);
    let mut count = cpu.gpr(gpr::RCX)? & mask;
    let budget = u64::from(cpu.rep_budget);
    let mut done = 0u64;
    while count != 0 {
        if done >= budget {
            return Ok(Progress::Partial);
        }
        let most = count.min(budget.saturating_sub(done));
        // A failure while planning is the failure of the next iteration (see `plan`).
        let planned = match plan(cpu, block, address_size, size, most) {
            Ok(planned) => planned,
            Err(e) if done == 0 => return Err(e),
            Err(_) => return Ok(Progress::Partial),
        };
        let moved = match planned {
            Some((n, placed)) => {
                let (moved, failure) = move_run(cpu, block, size, n, placed);
                advance_by(cpu, block, address_size, size, moved)?;
                if let Some(e) = failure {
                    return if done.saturating_add(moved) == 0 {
                        Err(e)
                    } else {
                        count = count.saturating_sub(moved);
                        cpu.set_gpr_sized(gpr::RCX, count, address_size)?;
                        Ok(Progress::Partial)
                    };
                }
                moved
            }
            None => {
                if let Err(e) = step(cpu) {
                    return if done == 0 {
                        Err(e)
                    } else {
                        Ok(Progress::Partial)
                    };
                }
                1
            }
        };
        done = done.saturating_add(moved);
        count = count.saturating_sub(moved);
        cpu.set_gpr_sized(gpr::RCX, count, address_size)?;
    }
    Ok(Progress::Complete)
}

/// Plans the next run of at most `most` iterations: how many, and where each operand's first
/// element is. `None` when fewer than two iterations fit or a segmentation, canonical or
/// alignment check of the run would fail: the caller then runs one iteration by itself, which
/// meets the fault (if it is the next iteration's) exactly. An `Err` is the next iteration's
/// own failure: a callback that failed, or the translation of its operands, which the
/// iteration would make in the same order.
fn plan<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    block: Block,
    address_size: usize,
    size: usize,
    most: u64,
) -> Res<Option<(u64, [Placed; 2])>, C> {
    let mask = address_mask(address_size);
    let down = cpu.state.rflags & RFLAGS_DF != 0;
    let step = size as u64;
    let (walks, _) = block.walks();
    let mut n = most;
    let mut offsets = [0u64; 2];
    let mut placed = [Placed { linear: 0, gpa: 0 }; 2];
    for ((walk, offset), place) in walks.iter().zip(&mut offsets).zip(&mut placed) {
        let Some(walk) = walk else { continue };
        let off = cpu.gpr(walk.reg)? & mask;
        *offset = off;
        let linear = match cpu.linearize(walk.seg, off, size, walk.intent) {
            Ok(linear) => linear,
            Err(EmulationError::Exception(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        place.linear = linear;
        // The first element must not wrap the address size; then count the whole elements
        // before the page ends and before the offset wraps, in the direction of travel.
        let Some(room_to_wrap) = mask
            .checked_sub(off)
            .and_then(|r| r.checked_sub(step.saturating_sub(1)))
        else {
            return Ok(None);
        };
        let in_page = linear & 0xFFF;
        let per = |bytes: u64| bytes.checked_div(step).unwrap_or(0);
        let (page_fit, wrap_fit) = if down {
            if in_page.saturating_add(step) > 0x1000 {
                return Ok(None);
            }
            (per(in_page).saturating_add(1), per(off).saturating_add(1))
        } else {
            (
                per(0x1000u64.saturating_sub(in_page)),
                per(room_to_wrap).saturating_add(1),
            )
        };
        n = n.min(page_fit).min(wrap_fit);
    }
    if n < 2 {
        return Ok(None);
    }
    // `n` elements fit in one page and, going down, above offset 0: no overflow below.
    let span_bytes = n.saturating_mul(step) as usize;
    for ((walk, off), place) in walks.iter().zip(offsets).zip(&mut placed) {
        let Some(walk) = walk else { continue };
        let low = if down {
            off.wrapping_sub(n.wrapping_sub(1).wrapping_mul(step))
        } else {
            off
        };
        match cpu.linearize_elements(walk.seg, low, span_bytes, size, walk.intent) {
            Ok(_) => {}
            Err(EmulationError::Exception(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
        place.gpa = cpu
            .translate(place.linear, size, walk.intent, Privilege::Current)?
            .gpa();
    }
    Ok(Some((n, placed)))
}

/// Moves the `n` iterations of a planned run. Returns how many completed and, if one failed,
/// its error (the failed iteration's registers are not advanced, as in [`run`]).
fn move_run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    block: Block,
    size: usize,
    n: u64,
    placed: [Placed; 2],
) -> (u64, Option<EmulationError<C::Error>>) {
    // One copy per element size (string elements are 1, 2, 4 or 8 bytes), so that the
    // callbacks, inlined into the element loops, see buffers of a fixed size.
    match size {
        1 => move_elements::<C, 1>(cpu, block, n, placed),
        2 => move_elements::<C, 2>(cpu, block, n, placed),
        4 => move_elements::<C, 4>(cpu, block, n, placed),
        _ => move_elements::<C, 8>(cpu, block, n, placed),
    }
}

/// [`move_run`] for elements of `N` bytes.
fn move_elements<C: EmulatorCallbacks, const N: usize>(
    cpu: &mut Cpu<'_, C>,
    block: Block,
    n: u64,
    placed: [Placed; 2],
) -> (u64, Option<EmulationError<C::Error>>) {
    let size = N;
    let down = cpu.state.rflags & RFLAGS_DF != 0;
    let step = size as u64;
    // `n` elements of `size` bytes fit in one page: none of these products overflow.
    let bytes = n.wrapping_mul(step);
    let at = |base: u64, k: u64| {
        let delta = k.wrapping_mul(step);
        if down {
            base.wrapping_sub(delta)
        } else {
            base.wrapping_add(delta)
        }
    };
    let lowest = |base: u64| at(base, if down { n.wrapping_sub(1) } else { 0 });
    // Element by element, each address moves by `stride` (the element size, negated when
    // descending) from the first.
    let stride = if down { step.wrapping_neg() } else { step };
    let [first, second] = placed;
    let mut buf = [0u8; N];
    let data = &mut buf;
    let mut k = 0u64;
    let result = (|| -> Res<(), C> {
        match block {
            Block::Movs { .. } => {
                let (src, dst) = (first.gpa, second.gpa);
                // Overlapping operands depend on the order of the iterations: element by element.
                if lowest(src).abs_diff(lowest(dst)) >= bytes
                    && cpu.copy_block(lowest(dst), lowest(src), bytes as usize)?
                {
                    k = n;
                    return Ok(());
                }
                let (mut src, mut dst) = (src, dst);
                while k < n {
                    cpu.read_gpa(src, data)?;
                    cpu.write_gpa(dst, data)?;
                    src = src.wrapping_add(stride);
                    dst = dst.wrapping_add(stride);
                    k = k.wrapping_add(1);
                }
            }
            Block::Stos { value } => {
                for (d, s) in data.iter_mut().zip(value.to_le_bytes()) {
                    *d = s;
                }
                if cpu.fill_block(lowest(first.gpa), data, n as usize)? {
                    k = n;
                    return Ok(());
                }
                let mut dst = first.gpa;
                while k < n {
                    cpu.write_gpa(dst, data)?;
                    dst = dst.wrapping_add(stride);
                    k = k.wrapping_add(1);
                }
            }
            Block::Ins { port } | Block::Outs { port, .. } => {
                let writes_port = matches!(block, Block::Outs { .. });
                let batch = StringIoAccess {
                    port,
                    access_size: size as u8,
                    direction: if writes_port {
                        AccessDirection::Write
                    } else {
                        AccessDirection::Read
                    },
                    gpa: lowest(first.gpa),
                    count: u32::try_from(n).unwrap_or(u32::MAX),
                    descending: down,
                };
                if u64::from(batch.count) == n && cpu.string_io(&batch)? {
                    k = n;
                    return Ok(());
                }
                let mut gpa = first.gpa;
                while k < n {
                    if writes_port {
                        cpu.read_gpa(gpa, data)?;
                        cpu.port_out(port, size as u8, le_value(data) as u32)?;
                    } else {
                        let value = cpu.port_in(port, size as u8)?;
                        for (d, s) in data.iter_mut().zip(value.to_le_bytes()) {
                            *d = s;
                        }
                        cpu.write_gpa(gpa, data)?;
                    }
                    gpa = gpa.wrapping_add(stride);
                    k = k.wrapping_add(1);
                }
            }
        }
        Ok(())
    })();
    (k, result.err())
}

/// Advances rSI/rDI past `moved` iterations.
fn advance_by<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    block: Block,
    address_size: usize,
    size: usize,
    moved: u64,
) -> Res<(), C> {
    let delta = moved.wrapping_mul(size as u64);
    let down = cpu.state.rflags & RFLAGS_DF != 0;
    for walk in block.walks().0.into_iter().flatten() {
        let old = cpu.gpr(walk.reg)?;
        let new = if down {
            old.wrapping_sub(delta)
        } else {
            old.wrapping_add(delta)
        };
        cpu.set_gpr_sized(walk.reg, new, address_size)?;
    }
    Ok(())
}
