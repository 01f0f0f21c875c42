//! vCPU wrapper: owned exit values, read completion, state snapshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_EXIT_IO_IN, kvm_fpu, kvm_regs, kvm_run, kvm_sregs, kvm_xsave};
use kvm_ioctls::{VcpuExit, VcpuFd};

const EINTR: i32 = 4;

/// A vCPU exit, copied out of `kvm_run` so it outlives the next `KVM_RUN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Access to an unbacked GPA. For reads, answer with [`Vcpu::complete_read`].
    Mmio {
        gpa: u64,
        len: usize,
        is_write: bool,
        data: [u8; 8],
    },
    /// Port I/O. `data` holds `size * count` bytes (OUT data; zeros for IN).
    /// For IN, answer with [`Vcpu::complete_read`] (`size * count` bytes).
    Io {
        port: u16,
        size: u8,
        is_write: bool,
        count: u32,
        data: Vec<u8>,
    },
    Hlt,
    InternalError {
        suberror: u32,
        data: Vec<u64>,
    },
    Shutdown,
    FailEntry {
        reason: u64,
    },
    /// KVM_EXIT_DEBUG (e.g. after one instruction with [`Vcpu::set_single_step`]).
    /// `pc` is the linear address of the next instruction.
    Debug {
        pc: u64,
        exception: u32,
    },
    /// KVM_RUN returned EINTR: with [`Vcpu::set_immediate_exit`], the pending
    /// MMIO/port access was completed and the guest did not run further.
    Interrupted,
    /// Anything else, with KVM's description.
    Other(String),
}

impl Exit {
    /// Little-endian value of a write's data (MMIO or single-element I/O).
    pub fn write_value(&self) -> u64 {
        match self {
            Exit::Mmio {
                len,
                data,
                is_write: true,
                ..
            } => le(&data[..*len]),
            Exit::Io {
                data,
                is_write: true,
                ..
            } => le(data),
            other => panic!("not a write exit: {other:?}"),
        }
    }
}

pub fn le(bytes: &[u8]) -> u64 {
    assert!(bytes.len() <= 8);
    bytes.iter().rev().fold(0, |acc, &b| acc << 8 | b as u64)
}

#[derive(Clone, Copy, Debug)]
enum PendingRead {
    Mmio { gpa: u64, len: usize },
    Io { port: u16, bytes: usize },
}

pub struct Vcpu {
    fd: VcpuFd,
    pending: Option<PendingRead>,
    /// Deadline for the current KVM_RUN in ms since [`epoch`]; 0 = not running.
    deadline: Arc<AtomicU64>,
    timeout: Duration,
    last_exit: Option<Exit>,
}

/// Default bound on one KVM_RUN call; see [`Vcpu::set_run_timeout`].
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(10);

impl Vcpu {
    pub fn new(fd: VcpuFd) -> Self {
        let deadline = Arc::new(AtomicU64::new(0));
        watchdog_register(&deadline);
        Vcpu {
            fd,
            pending: None,
            deadline,
            timeout: DEFAULT_RUN_TIMEOUT,
            last_exit: None,
        }
    }

    /// The raw kvm-ioctls handle, for anything not wrapped here.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }
    pub fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// A guest that spins without exiting would block KVM_RUN forever and hang
    /// the test binary; past this limit the watchdog aborts the process.
    pub fn set_run_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    pub fn last_exit(&self) -> Option<&Exit> {
        self.last_exit.as_ref()
    }

    /// Runs until the next exit. Panics if the previous exit was a read that
    /// was not answered with [`Vcpu::complete_read`].
    pub fn run_until_exit(&mut self) -> Exit {
        if let Some(p) = self.pending {
            panic!("previous exit {p:?} was a read; call complete_read before running again");
        }
        let ms = (epoch().elapsed() + self.timeout).as_millis() as u64;
        self.deadline.store(ms.max(1), Ordering::SeqCst);
        let res = self.fd.run();
        self.deadline.store(0, Ordering::SeqCst);
        let exit = match res {
            Ok(VcpuExit::MmioRead(gpa, data)) => {
                self.pending = Some(PendingRead::Mmio {
                    gpa,
                    len: data.len(),
                });
                Exit::Mmio {
                    gpa,
                    len: data.len(),
                    is_write: false,
                    data: [0; 8],
                }
            }
            Ok(VcpuExit::MmioWrite(gpa, d)) => {
                let mut data = [0; 8];
                data[..d.len()].copy_from_slice(d);
                Exit::Mmio {
                    gpa,
                    len: d.len(),
                    is_write: true,
                    data,
                }
            }
            Ok(VcpuExit::IoOut(port, d)) => {
                let data = d.to_vec();
                let (size, count) = self.io_shape();
                Exit::Io {
                    port,
                    size,
                    is_write: true,
                    count,
                    data,
                }
            }
            Ok(VcpuExit::IoIn(port, d)) => {
                let bytes = d.len();
                let (size, count) = self.io_shape();
                self.pending = Some(PendingRead::Io { port, bytes });
                Exit::Io {
                    port,
                    size,
                    is_write: false,
                    count,
                    data: vec![0; bytes],
                }
            }
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::FailEntry(reason, _)) => Exit::FailEntry { reason },
            Ok(VcpuExit::InternalError) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the live member.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                Exit::InternalError {
                    suberror: internal.suberror,
                    data: internal.data[..n].to_vec(),
                }
            }
            Ok(VcpuExit::Debug(d)) => Exit::Debug {
                pc: d.pc,
                exception: d.exception,
            },
            Ok(other) => Exit::Other(format!("{other:?}")),
            Err(e) if e.errno() == EINTR => Exit::Interrupted,
            Err(e) => Exit::Other(format!("KVM_RUN failed: {e}")),
        };
        self.last_exit = Some(exit.clone());
        exit
    }

    /// KVM_SET_GUEST_DEBUG single-stepping: a [`Exit::Debug`] after each
    /// instruction. On kvm-pvm this works at CPL 0 only (at CPL 3 the trap is
    /// delivered to the guest as #DB), and an instruction that ends in an MMIO
    /// or port *write* exit gets no Debug exit (KVM skips the single-step trap
    /// when it leaves for userspace); use [`Vcpu::set_immediate_exit`] to
    /// finish such an instruction.
    pub fn set_single_step(&self, on: bool) {
        let control = if on {
            kvm_bindings::KVM_GUESTDBG_ENABLE | kvm_bindings::KVM_GUESTDBG_SINGLESTEP
        } else {
            0
        };
        let dbg = kvm_bindings::kvm_guest_debug {
            control,
            pad: 0,
            arch: Default::default(),
        };
        self.fd.set_guest_debug(&dbg).expect("KVM_SET_GUEST_DEBUG");
    }

    /// `kvm_run.immediate_exit`: the next KVM_RUN completes the pending MMIO
    /// or port access (which may produce further exits of the same
    /// instruction), then returns [`Exit::Interrupted`] without running the
    /// guest further. This is how to stop exactly at the end of the
    /// instruction that exited.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(on as u8);
    }

    fn io_shape(&mut self) -> (u8, u32) {
        let run = self.fd.get_kvm_run();
        // SAFETY: only called for KVM_EXIT_IO, where `io` is the live member.
        let io = unsafe { run.__bindgen_anon_1.io };
        (io.size, io.count)
    }

    /// Supplies the data for the pending MMIO read or IN exit; it is handed to
    /// the guest by the next run. `data.len()` must equal the exit's length.
    pub fn complete_read(&mut self, data: &[u8]) {
        let pending = self
            .pending
            .take()
            .expect("no MMIO read or IN exit is pending");
        let run: &mut kvm_run = self.fd.get_kvm_run();
        match pending {
            PendingRead::Mmio { gpa, len } => {
                assert_eq!(data.len(), len, "MMIO read at {gpa:#x} wants {len} bytes");
                // SAFETY: the last exit was KVM_EXIT_MMIO; `mmio` is the live member.
                unsafe { run.__bindgen_anon_1.mmio.data[..len].copy_from_slice(data) };
            }
            PendingRead::Io { port, bytes } => {
                assert_eq!(
                    data.len(),
                    bytes,
                    "IN from port {port:#x} wants {bytes} bytes"
                );
                // SAFETY: the last exit was KVM_EXIT_IO/IN; KVM placed its data
                // buffer `data_offset` bytes into the mapped kvm_run area, which is
                // larger than `kvm_run` itself (kvm-ioctls relies on the same).
                unsafe {
                    let io = run.__bindgen_anon_1.io;
                    debug_assert_eq!(io.direction as u32, KVM_EXIT_IO_IN);
                    let dst = (run as *mut kvm_run as *mut u8).add(io.data_offset as usize);
                    std::ptr::copy_nonoverlapping(data.as_ptr(), dst, bytes);
                }
            }
        }
    }

    /// [`Vcpu::complete_read`] with the low `len` bytes of `value`, little-endian.
    pub fn complete_read_value(&mut self, value: u64) {
        let len = match self.pending {
            Some(PendingRead::Mmio { len, .. }) => len,
            Some(PendingRead::Io { bytes, .. }) => bytes,
            None => panic!("no MMIO read or IN exit is pending"),
        };
        assert!(len <= 8);
        self.complete_read(&value.to_le_bytes()[..len]);
    }

    pub fn has_pending_read(&self) -> bool {
        self.pending.is_some()
    }

    pub fn regs(&self) -> kvm_regs {
        self.fd.get_regs().expect("KVM_GET_REGS")
    }
    pub fn set_regs(&self, r: &kvm_regs) {
        self.fd.set_regs(r).expect("KVM_SET_REGS")
    }
    pub fn sregs(&self) -> kvm_sregs {
        self.fd.get_sregs().expect("KVM_GET_SREGS")
    }
    pub fn set_sregs(&self, s: &kvm_sregs) {
        self.fd.set_sregs(s).expect("KVM_SET_SREGS")
    }
    pub fn fpu(&self) -> kvm_fpu {
        self.fd.get_fpu().expect("KVM_GET_FPU")
    }
    pub fn set_fpu(&self, f: &kvm_fpu) {
        self.fd.set_fpu(f).expect("KVM_SET_FPU")
    }
    pub fn xsave(&self) -> kvm_xsave {
        self.fd.get_xsave().expect("KVM_GET_XSAVE")
    }
    pub fn rip(&self) -> u64 {
        self.regs().rip
    }
    pub fn set_rip(&self, rip: u64) {
        let mut r = self.regs();
        r.rip = rip;
        self.set_regs(&r);
    }

    /// KVM_TRANSLATE of a linear address with the current paging state:
    /// `Some((gpa, writeable, usermode))`, or None if not mapped. KVM does
    /// not compute `usermode` (always false), so check U/S via
    /// [`super::PageTables::lookup`] instead.
    pub fn translate(&self, gva: u64) -> Option<(u64, bool, bool)> {
        let t = self.fd.translate_gva(gva).expect("KVM_TRANSLATE");
        (t.valid != 0).then_some((t.physical_address, t.writeable != 0, t.usermode != 0))
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// One background thread checks every registered vCPU's deadline. KVM_RUN
/// cannot be interrupted without signals, so the only remedy is to abort.
fn watchdog_register(deadline: &Arc<AtomicU64>) {
    static LIST: OnceLock<Mutex<Vec<Weak<AtomicU64>>>> = OnceLock::new();
    let mut started = false;
    let list = LIST.get_or_init(|| {
        started = true;
        Mutex::new(Vec::new())
    });
    {
        let mut l = list.lock().unwrap();
        l.retain(|w| w.strong_count() > 0);
        l.push(Arc::downgrade(deadline));
    }
    if started {
        epoch();
        std::thread::Builder::new()
            .name("kvm-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    let now = epoch().elapsed().as_millis() as u64;
                    let l = list.lock().unwrap();
                    for w in l.iter() {
                        if let Some(d) = w.upgrade() {
                            let d = d.load(Ordering::SeqCst);
                            if d != 0 && now > d {
                                eprintln!(
                                    "kvm harness watchdog: a KVM_RUN call exceeded its time limit \
                                     (guest spinning without exits?); aborting the test process"
                                );
                                std::process::abort();
                            }
                        }
                    }
                }
            })
            .expect("spawn watchdog");
    }
}
