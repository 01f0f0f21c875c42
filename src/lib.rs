//! hvemu: an x86 instruction emulator for virtual machine monitors.
//!
//! When a virtual processor exits on an MMIO access or a port instruction, hand the exit to an
//! [`Emulator`]: it decodes the instruction (fetching its bytes if the exit lacks them), makes
//! its memory and port accesses through your [`EmulatorCallbacks`], updates the registers and
//! RFLAGS as the processor would, and advances RIP. It is a portable counterpart of the Windows
//! Hypervisor Platform's instruction emulator, with the same callbacks and status bits.
//!
//! * `#![no_std]`, `#![forbid(unsafe_code)]`, no allocation of its own. iced-x86 builds its
//!   decoder tables on the heap once (about 356 KiB): provide a global allocator and call
//!   [`warm_up`] at start-up to keep that off the exit path.
//! * All or nothing: every fault that can be known before the first side effect is found
//!   before it, and a failed emulation commits no register.
//! * Bounded: a REP instruction runs at most [`Config::max_rep_iterations`] iterations per call.
//!
//! The data flows one way: [`Emulator`] → state (registers) / decode → operand (addresses,
//! segmentation, translation) → execute (one module per instruction family) → rep.
//! See [`EmulatorCallbacks`] for a complete monitor.

#![no_std]
#![forbid(unsafe_code)]
// Guest input must not be able to panic the monitor: no unwrap, expect, panic, panicking index
// or unchecked arithmetic. The few justified exceptions carry a local `allow` with a proof.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
// Unit tests index, unwrap and compute freely on values they chose; the library itself is
// still held to the rule above by the non-test build that clippy also checks.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]
#![warn(missing_docs)]

// Inlining. The exit path is generic over the callbacks, so it is compiled in the monitor's
// crate, split across that crate's codegen units by source module. Without LTO, rustc offers a
// function to the inliner outside its own unit only when it is `#[inline]`: the non-generic
// functions the exit calls, and the generic ones a hot caller in another module needs, carry
// it (BENCHMARKS.md, fifth round). `#[inline(never)]` marks the few kept apart on purpose.
// `#[cold]` on the error constructors that faults and refusals go through (`From<Exception>`,
// `execute::unsupported`) makes their branches the unlikely ones, which keeps those paths off
// the exit's straight line (sixth round). `#[inline(always)]` marks the exit's stages that
// have one caller (`find_plan`, `finish`, the small register fetch and commit, the canonical
// check), which LLVM kept out of line once both entry points were compiled; with one caller
// each, inlining them duplicates no code (eighth round). A second caller would copy them.

mod access;
mod cache;
mod callbacks;
mod config;
mod context;
mod decode;
mod emulator;
mod error;
mod execute;
mod operand;
pub mod paging;
mod regfile;
mod registers;
mod rep;
mod state;

pub use cache::DecodeCache;
pub use callbacks::{
    AccessDirection, EmulatorCallbacks, IoAccessInfo, MemoryAccessInfo, StringIoAccess,
    TranslateGvaFlags, TranslateGvaResult,
};
pub use config::{Config, Vendor};
pub use context::{
    ExecutionState, IoPortAccessContext, IoPortAccessInfo, MemoryAccessContext, MemoryAccessFlags,
    MemoryAccessType, VpExitContext,
};
pub use decode::{DecoderSupport, decoder_support, warm_up};
pub use emulator::{Completion, Emulator};
pub use error::{EmulationError, EmulatorStatus, Exception, InvalidArgument, Vector};
pub use regfile::{RegisterFile, RegisterFileError};
pub use registers::{
    RegisterName, RegisterValue, Segment, SegmentAttributes, SegmentRegister, TableRegister,
};

/// The README's code, compiled and run as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
