//! The entry points: validate an exit, then drive its one instruction down through decode,
//! operands, execution and (for REP) the repeat driver, and commit.

use crate::access::GpaHint;
use crate::cache::Key;
use crate::callbacks::{EmulatorCallbacks, TranslateGvaFlags};
use crate::config::Config;
use crate::context::{IoPortAccessContext, MemoryAccessContext, MemoryAccessType, VpExitContext};
use crate::error::{EmulationError, EmulatorStatus, Exception, InvalidArgument};
use crate::execute::{self, Family, Plan};
use crate::registers::{RegisterName, RegisterValue, Segment};
use crate::rep::Progress;
use crate::state::{Cpu, RFLAGS_TF, gpr};

/// How a successful emulation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completion {
    /// The instruction completed; RIP points past it.
    Complete,
    /// RIP stays on the instruction, so the guest executes it again (and exits again): a REP
    /// instruction ran [`Config::max_rep_iterations`] iterations (or stopped before one that
    /// failed) with count left, and its progress is committed; or a locked operation kept
    /// losing its race against other processors and nothing was done. RFLAGS.RF is set, as
    /// the processor leaves it for an instruction it will resume.
    Partial,
    /// RFLAGS.TF was set: the instruction completed (or, for a REP instruction, one iteration;
    /// `partial` says which) and its registers are committed; the guest must now take the
    /// single-step #DB trap with DR6.BS set. Returned only without exception injection; with
    /// it, hvemu queued the trap in the same `set_registers` call and answers `Complete` or
    /// `Partial`.
    SingleStepTrap {
        /// Whether a REP instruction stopped with count left (RIP stays on it).
        partial: bool,
    },
    /// Exception injection is configured and the instruction raised `exception`: nothing of
    /// the instruction was committed, and one `set_registers` call queued the exception in the
    /// pending-event register. Resume the processor; it delivers the exception.
    Injected(Exception),
}

/// An instruction emulator for one virtual processor.
///
/// Not shared between processors: like the platform's, one emulation runs at a time, and all
/// callbacks run before the call returns. The emulator holds no guest state between calls.
///
/// ```
/// use hvemu::*;
/// # struct Vcpu(RegisterFile);
/// # impl EmulatorCallbacks for Vcpu {
/// #     type Error = ();
/// #     fn io_port(&mut self, a: &mut IoAccessInfo) -> Result<(), ()> { a.data = 0x5A; Ok(()) }
/// #     fn memory(&mut self, _: &mut MemoryAccessInfo<'_>) -> Result<(), ()> { Err(()) }
/// #     fn get_registers(&mut self, n: &[RegisterName], v: &mut [RegisterValue]) -> Result<(), ()> {
/// #         self.0.get(n, v).map_err(|_| ())
/// #     }
/// #     fn set_registers(&mut self, n: &[RegisterName], v: &[RegisterValue]) -> Result<(), ()> {
/// #         self.0.set(n, v).map_err(|_| ())
/// #     }
/// #     fn translate_gva_page(&mut self, g: u64, _: TranslateGvaFlags)
/// #         -> Result<(TranslateGvaResult, u64), ()> { Ok((TranslateGvaResult::Success, g)) }
/// # }
/// let mut vcpu = Vcpu(RegisterFile::real_mode());
/// // `in al, 0x60` in real mode; the port exit carries RAX, so no register is read.
/// let exit = vcpu.0.exit_context(2);
/// let io = IoPortAccessContext::new(&[0xE4, 0x60], IoPortAccessInfo::new(false, 1), 0x60);
/// let mut emulator = Emulator::new(&mut vcpu);
/// assert_eq!(emulator.emulate_io(&exit, &io), Ok(Completion::Complete));
/// assert_eq!(vcpu.0.gpr(0) & 0xFF, 0x5A);
/// ```
#[derive(Debug)]
pub struct Emulator<C: EmulatorCallbacks> {
    callbacks: C,
    config: Config,
}

impl<C: EmulatorCallbacks> Emulator<C> {
    /// An emulator with the default [`Config`].
    pub fn new(callbacks: C) -> Self {
        Self::with_config(callbacks, Config::default())
    }

    /// An emulator with the given settings.
    pub fn with_config(callbacks: C, config: Config) -> Self {
        Self { callbacks, config }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The callbacks.
    pub fn callbacks(&self) -> &C {
        &self.callbacks
    }

    /// The callbacks, mutably.
    pub fn callbacks_mut(&mut self) -> &mut C {
        &mut self.callbacks
    }

    /// Gives the callbacks back.
    pub fn into_callbacks(self) -> C {
        self.callbacks
    }

    /// Emulates the instruction behind a port-I/O exit, reporting as the platform does.
    ///
    /// `Err` only for a malformed context; otherwise the status says what happened.
    pub fn try_io_emulation(
        &mut self,
        vp: &VpExitContext,
        io: &IoPortAccessContext,
    ) -> Result<EmulatorStatus, InvalidArgument> {
        status(self.emulate_io(vp, io))
    }

    /// Emulates the instruction behind a memory-access exit, reporting as the platform does.
    ///
    /// `Err` only for a malformed context; otherwise the status says what happened.
    pub fn try_mmio_emulation(
        &mut self,
        vp: &VpExitContext,
        mmio: &MemoryAccessContext,
    ) -> Result<EmulatorStatus, InvalidArgument> {
        status(self.emulate_mmio(vp, mmio))
    }

    /// Emulates the instruction behind a port-I/O exit, saying exactly what went wrong if it
    /// did not complete.
    ///
    /// The registers the context carries (RAX, RCX, RSI, RDI, DS, ES) and its port number are
    /// used as given, so IN and OUT make no `get_registers` call. The decoded instruction must
    /// be a port instruction of the context's direction, size and kind.
    pub fn emulate_io(
        &mut self,
        vp: &VpExitContext,
        io: &IoPortAccessContext,
    ) -> Result<Completion, EmulationError<C::Error>> {
        // Returned as it is unless it is an exception to inject, so that it is built in place:
        // copied, it was read back in wide loads over narrow stores (a store-forwarding stall).
        let result = self.run_io(vp, io);
        if let Err(EmulationError::Exception(e)) = result {
            if self.config.inject_exceptions {
                return self.deliver(vp, e);
            }
        }
        result
    }

    // Inlined so that its result is built where the caller returns it (see `emulate_io`).
    #[inline(always)]
    fn run_io(
        &mut self,
        vp: &VpExitContext,
        io: &IoPortAccessContext,
    ) -> Result<Completion, EmulationError<C::Error>> {
        let count = validate(vp, io.instruction_byte_count)?;
        let info = io.access_info;
        if !matches!(info.access_size, 1 | 2 | 4) {
            return Err(InvalidArgument::IoAccessSize(info.access_size).into());
        }
        let mut cpu = Cpu::new(&mut self.callbacks, &self.config, vp);
        for (n, value) in [
            (gpr::RAX, io.rax),
            (gpr::RCX, io.rcx),
            (gpr::RSI, io.rsi),
            (gpr::RDI, io.rdi),
        ] {
            cpu.state.preload_gpr(n, value);
        }
        cpu.state.preload_segment(Segment::Ds, io.ds);
        cpu.state.preload_segment(Segment::Es, io.es);
        cpu.port_hint = Some(io.port_number);
        let mut plan = Plan::empty();
        find_plan(&mut cpu, &io.instruction_bytes, count, &mut plan)?;
        let not_it = || EmulationError::NotTheExitingInstruction {
            code: plan.instr.code(),
        };
        let family = plan.family.ok_or_else(not_it)?;
        let op = family.port().ok_or_else(not_it)?;
        if op.is_write != info.is_write
            || op.size != info.access_size
            || op.string != info.string_op
        {
            return Err(not_it());
        }
        finish(&mut cpu, family, &plan)
    }

    /// Emulates the instruction behind a memory-access exit, saying exactly what went wrong if
    /// it did not complete.
    ///
    /// When the context marks its GVA valid, the exit's GPA stands in for a translation of
    /// exactly that linear address, for the kind of access the exit reports; every other
    /// address the instruction touches is translated.
    pub fn emulate_mmio(
        &mut self,
        vp: &VpExitContext,
        mmio: &MemoryAccessContext,
    ) -> Result<Completion, EmulationError<C::Error>> {
        // Returned as it is unless it is an exception to inject, so that it is built in place:
        // copied, it was read back in wide loads over narrow stores (a store-forwarding stall).
        let result = self.run_mmio(vp, mmio);
        if let Err(EmulationError::Exception(e)) = result {
            if self.config.inject_exceptions {
                return self.deliver(vp, e);
            }
        }
        result
    }

    // Inlined so that its result is built where the caller returns it (see `emulate_mmio`).
    #[inline(always)]
    fn run_mmio(
        &mut self,
        vp: &VpExitContext,
        mmio: &MemoryAccessContext,
    ) -> Result<Completion, EmulationError<C::Error>> {
        let count = validate(vp, mmio.instruction_byte_count)?;
        let mut cpu = Cpu::new(&mut self.callbacks, &self.config, vp);
        if mmio.access_info.gva_valid {
            let validated = match mmio.access_info.access_type {
                MemoryAccessType::Read => TranslateGvaFlags::VALIDATE_READ,
                // x86 pages are never write-only: a permitted write implies a permitted read.
                MemoryAccessType::Write => {
                    TranslateGvaFlags::VALIDATE_WRITE | TranslateGvaFlags::VALIDATE_READ
                }
                MemoryAccessType::Execute => TranslateGvaFlags::VALIDATE_EXECUTE,
            };
            cpu.hint = Some(GpaHint {
                gva: mmio.gva,
                gpa: mmio.gpa,
                validated,
            });
        }
        let mut plan = Plan::empty();
        find_plan(&mut cpu, &mmio.instruction_bytes, count, &mut plan)?;
        let code = plan.instr.code();
        if !plan.touches_memory {
            return Err(EmulationError::NotTheExitingInstruction { code });
        }
        let family = plan.family.ok_or(EmulationError::Unsupported { code })?;
        if !family
            .memory_use(&plan.instr)
            .allows(mmio.access_info.access_type)
        {
            return Err(EmulationError::NotTheExitingInstruction { code });
        }
        finish(&mut cpu, family, &plan)
    }
}

impl<C: EmulatorCallbacks> Emulator<C> {
    /// Hands an exception to the guest (injection is configured): one `set_registers` call
    /// writes the pending-event register, unless the guest's IDT cannot hold the vector, in
    /// which case delivery would only escalate (#DF, shutdown) and the guest cannot be faulted.
    #[inline(never)]
    fn deliver(
        &mut self,
        vp: &VpExitContext,
        exception: Exception,
    ) -> Result<Completion, EmulationError<C::Error>> {
        let mut idtr = [RegisterValue::default()];
        self.callbacks
            .get_registers(&[RegisterName::IDTR], &mut idtr)
            .map_err(EmulationError::GetRegisters)?;
        let [idtr] = idtr;
        let idtr = idtr
            .as_table()
            .ok_or(EmulationError::BadRegisterValue(RegisterName::IDTR))?;
        let state = vp.execution_state;
        let entry: u32 = if !state.cr0_pe {
            4
        } else if state.efer_lma {
            16
        } else {
            8
        };
        // The vector is below 32: no overflow.
        let last_byte = (u32::from(exception.vector as u8).wrapping_add(1))
            .wrapping_mul(entry)
            .wrapping_sub(1);
        if last_byte > u32::from(idtr.limit) {
            return Err(EmulationError::GuestCannotBeFaulted(exception));
        }
        self.callbacks
            .set_registers(
                &[RegisterName::PENDING_EVENT],
                &[RegisterValue::U128(exception.pending_event())],
            )
            .map_err(EmulationError::SetRegisters)?;
        Ok(Completion::Injected(exception))
    }
}

/// Fills `plan` for the instruction at RIP: from the monitor's [`DecodeCache`] if it keeps one
/// and has seen the instruction, else decoded (from the exit's first `count` bytes in `all`,
/// fetching what is missing) and classified, and then remembered if the exit's bytes held all
/// of it. `plan` is filled in place: a freshly decoded instruction moved by value is read back
/// with wide loads over the decoder's narrow stores, a store-forwarding stall.
#[inline(always)]
fn find_plan<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    all: &[u8; 16],
    count: usize,
    plan: &mut Plan,
) -> Result<(), EmulationError<C::Error>> {
    let key = Key {
        bytes: u128::from_le_bytes(*all),
        count,
        rip: cpu.state.rip,
        bits: cpu.state.code_bits,
        options: cpu.decoder_options(),
    };
    if let Some(cached) = cpu.cb.decode_cache().and_then(|c| c.lookup(&key)) {
        *plan = *cached;
        // A hit skips the decoding, not the checks of the fetch.
        return cpu.check_fetch(&plan.instr);
    }
    let whole = cpu.decode(all, count, &mut plan.instr)?;
    plan.classify();
    if whole {
        if let Some(cache) = cpu.cb.decode_cache() {
            cache.insert(&key, plan);
        }
    }
    Ok(())
}

/// Gathers the registers, runs the instruction, commits.
#[inline(always)]
fn finish<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    family: Family,
    plan: &Plan,
) -> Result<Completion, EmulationError<C::Error>> {
    let instr = &plan.instr;
    let needed = execute::registers_needed(cpu, family, plan);
    cpu.fetch_with(needed, plan.wide.names())?;
    let progress = execute::run(cpu, family, instr)?;
    let completed = progress == Progress::Complete;
    let rip = if completed {
        cpu.state
            .mask_ip(cpu.state.rip.wrapping_add(instr.len() as u64))
    } else {
        cpu.state.rip
    };
    // Single-step traps after the instruction, or after each REP iteration (SDM Vol. 3B
    // §18.3.1.4), but not when nothing happened: queue it with the commit when injecting, or
    // tell the monitor.
    let single_step = cpu.exit_rflags() & RFLAGS_TF != 0 && progress != Progress::Retry;
    let inject = single_step && cpu.config.inject_exceptions;
    cpu.commit(
        rip,
        inject.then(|| Exception::single_step().pending_event()),
        completed,
    )?;
    Ok(match (single_step && !inject, completed) {
        (true, completed) => Completion::SingleStepTrap {
            partial: !completed,
        },
        (false, false) => Completion::Partial,
        (false, true) => Completion::Complete,
    })
}

/// Checks what every exit shares; returns the instruction bytes it carries.
fn validate<E>(vp: &VpExitContext, byte_count: u8) -> Result<usize, EmulationError<E>> {
    let state = &vp.execution_state;
    if vp.instruction_length == 0
        || vp.instruction_length > 15
        || state.cpl > 3
        || byte_count > 16
        || state.interruption_pending
    {
        return Err(invalid_exit(vp, byte_count));
    }
    Ok(usize::from(byte_count))
}

/// What is wrong with an exit [`validate`] refused, in the order it checks. Out of line: built
/// in the common path, the error's bytes were read back in wide loads over narrow stores.
#[cold]
#[inline(never)]
fn invalid_exit<E>(vp: &VpExitContext, byte_count: u8) -> EmulationError<E> {
    if vp.instruction_length == 0 || vp.instruction_length > 15 {
        InvalidArgument::InstructionLength(vp.instruction_length).into()
    } else if vp.execution_state.cpl > 3 {
        InvalidArgument::Cpl(vp.execution_state.cpl).into()
    } else if byte_count > 16 {
        InvalidArgument::InstructionByteCount(byte_count).into()
    } else {
        EmulationError::InterruptPending
    }
}

fn status<E>(
    result: Result<Completion, EmulationError<E>>,
) -> Result<EmulatorStatus, InvalidArgument> {
    match result {
        // A single-step trap the monitor must deliver itself is not expressible in the
        // platform's status word; monitors that single-step guests use `emulate_*`.
        Ok(_) => Ok(EmulatorStatus::EMULATION_SUCCESSFUL),
        Err(EmulationError::InvalidArgument(e)) => Err(e),
        Err(e) => Ok(e.status()),
    }
}
