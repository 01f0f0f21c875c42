//! What a monitor tunes: the CPU vendor to imitate and how much work one call may do.

/// Whose processor the guest believes it runs on.
///
/// The vendor decides the decoder's quirks (AMD and Intel disagree on some operand sizes in
/// 64-bit mode) and, where the manuals leave flags undefined, which processor's values hvemu
/// reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Vendor {
    /// GenuineIntel.
    #[default]
    Intel,
    /// AuthenticAMD (and Hygon).
    Amd,
}

/// Emulator settings.
///
/// ```
/// use hvemu::{Config, Vendor};
/// let config = Config::default().with_vendor(Vendor::Amd).with_max_rep_iterations(256);
/// assert_eq!(config.max_rep_iterations, 256);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The vendor to imitate. Default: Intel.
    pub vendor: Vendor,
    /// The most iterations of a REP string instruction one call runs. When the count is not
    /// exhausted by then, the call commits the progress made and leaves RIP on the instruction,
    /// so the guest executes it again (and exits again). Default: 4096; 0 is treated as 1.
    pub max_rep_iterations: u32,
    /// Whether hvemu hands exceptions to the guest itself. When set, an instruction that
    /// faults makes one `set_registers` call writing only [`RegisterName::PENDING_EVENT`]
    /// (`WHV_X64_PENDING_EXCEPTION_EVENT`: vector, error code, and CR2 or the DR6 bits as the
    /// exception parameter) and the emulation answers
    /// [`Completion::Injected`](crate::Completion::Injected); a single-step trap is queued in
    /// the commit itself. When clear (the default), the exception is returned in
    /// [`EmulationError::Exception`](crate::EmulationError::Exception) for the monitor.
    ///
    /// [`RegisterName::PENDING_EVENT`]: crate::RegisterName::PENDING_EVENT
    pub inject_exceptions: bool,
}

impl Config {
    /// The default REP bound.
    pub const DEFAULT_MAX_REP_ITERATIONS: u32 = 4096;

    /// Sets [`Config::vendor`].
    pub const fn with_vendor(mut self, vendor: Vendor) -> Self {
        self.vendor = vendor;
        self
    }

    /// Sets [`Config::inject_exceptions`].
    pub const fn with_exception_injection(mut self, inject: bool) -> Self {
        self.inject_exceptions = inject;
        self
    }

    /// Sets [`Config::max_rep_iterations`].
    pub const fn with_max_rep_iterations(mut self, n: u32) -> Self {
        self.max_rep_iterations = n;
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            vendor: Vendor::Intel,
            max_rep_iterations: Self::DEFAULT_MAX_REP_ITERATIONS,
            inject_exceptions: false,
        }
    }
}
