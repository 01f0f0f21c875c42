//! VM + one vCPU + guest RAM, put into a chosen CPU mode.

use std::ops::Range;

use iced_x86::code_asm::CodeAssembler;
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_dtable, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};

use super::devices::Bus;
use super::layout::{self, sel};
use super::memory::GuestMemory;
use super::paging::{PageFlags, PageTables, PagingKind};
use super::tables::{self, rec};
use super::vcpu::{Exit, Vcpu};

/// CPU modes the harness can start a guest in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Real mode; CS = 0x1000 (base [`layout::CODE`]), DS = ES = SS = 0, IVT handlers.
    Real,
    /// 16-bit protected mode: CS D=0 based at [`layout::CODE`], flat DS, 16-bit SS.
    Protected16,
    /// 32-bit protected mode, flat segments, no paging.
    Protected32,
    /// 32-bit protected mode with 2-level 4 KiB paging.
    Paged32,
    /// 32-bit protected mode with PAE paging (EFER.NXE set).
    Pae32,
    /// 64-bit long mode, 4-level paging.
    Long64,
    /// Compatibility mode, 32-bit code segment (L=0, D=1).
    Compat32,
    /// Compatibility mode, 16-bit code segment (L=0, D=0) based at [`layout::CODE`].
    Compat16,
    /// 64-bit mode at CPL 3 (ring-3 CS/SS; exceptions go to ring 0 via TSS/IST).
    User64,
    /// 32-bit protected mode (flat, no paging) at CPL 3; exceptions switch to
    /// the ring-0 stack from the 32-bit TSS.
    User32,
}

impl Mode {
    pub const ALL: [Mode; 10] = [
        Mode::Real,
        Mode::Protected16,
        Mode::Protected32,
        Mode::Paged32,
        Mode::Pae32,
        Mode::Long64,
        Mode::Compat32,
        Mode::Compat16,
        Mode::User64,
        Mode::User32,
    ];

    /// Code size: 16, 32 or 64 (for `CodeAssembler::new`).
    pub fn bitness(self) -> u32 {
        match self {
            Mode::Real | Mode::Protected16 | Mode::Compat16 => 16,
            Mode::Protected32 | Mode::Paged32 | Mode::Pae32 | Mode::Compat32 | Mode::User32 => 32,
            Mode::Long64 | Mode::User64 => 64,
        }
    }

    /// IP/RIP the program at [`layout::CODE`] must be assembled for: 16-bit
    /// modes use a code segment based at `CODE`, so their IP starts at 0.
    pub fn code_origin(self) -> u64 {
        if self.bitness() == 16 {
            0
        } else {
            layout::CODE
        }
    }

    /// Linear address of the first byte of the program.
    pub fn code_linear(self) -> u64 {
        layout::CODE
    }

    pub fn long_mode_active(self) -> bool {
        matches!(
            self,
            Mode::Long64 | Mode::Compat32 | Mode::Compat16 | Mode::User64
        )
    }

    pub fn paging(self) -> Option<PagingKind> {
        match self {
            Mode::Paged32 => Some(PagingKind::TwoLevel),
            Mode::Pae32 => Some(PagingKind::Pae),
            m if m.long_mode_active() => Some(PagingKind::FourLevel),
            _ => None,
        }
    }

    pub fn cpl(self) -> u8 {
        if matches!(self, Mode::User64 | Mode::User32) {
            3
        } else {
            0
        }
    }

    /// Initial stack pointer value (relative to SS base).
    pub fn initial_sp(self) -> u64 {
        match self {
            Mode::Real | Mode::Protected16 | Mode::Compat16 => layout::STACK16_TOP,
            _ => layout::STACK_TOP,
        }
    }
}

/// RAM size and MMIO holes; everything outside RAM is MMIO as well.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    pub ram_size: u64,
    pub holes: Vec<Range<u64>>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            ram_size: layout::RAM_SIZE,
            holes: vec![layout::LOW_MMIO_RANGE],
        }
    }
}

/// Exception record filled by the IDT/IVT handlers (see [`layout::EXC_RECORD`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExceptionRecord {
    /// Number of handler entries since the record was cleared (>1: nested).
    pub count: u64,
    pub vector: u8,
    /// Zero for vectors without an error code.
    pub error_code: u64,
    /// Return RIP/EIP/IP from the frame (faulting instruction for faults).
    pub rip: u64,
    pub cs: u16,
    pub rflags: u64,
    /// Interrupted stack pointer (pushed in long mode; computed otherwise).
    pub rsp: u64,
    pub ss: u16,
    /// CR2 when the handler ran (0 in real mode).
    pub cr2: u64,
}

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// A VM with guest RAM and one vCPU in a chosen mode.
///
/// Field order matters: the vCPU and VM are dropped before the RAM they map.
pub struct Guest {
    pub vcpu: Vcpu,
    pub vm: VmFd,
    pub mem: GuestMemory,
    pub mode: Mode,
    pub paging: Option<PageTables>,
    ran: bool,
}

impl Guest {
    /// Panics if the host KVM cannot run `mode` (see [`Guest::try_new`]).
    pub fn new(kvm: &Kvm, mode: Mode) -> Guest {
        Self::with_config(kvm, mode, GuestConfig::default())
    }

    pub fn with_config(kvm: &Kvm, mode: Mode, cfg: GuestConfig) -> Guest {
        Self::try_with_config(kvm, mode, cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Guest::new`], but returns an error if KVM did not accept the
    /// mode's control-register state (kvm-pvm, for one, silently drops
    /// CR0.PG outside long mode and then shuts the vCPU down).
    pub fn try_new(kvm: &Kvm, mode: Mode) -> Result<Guest, String> {
        Self::try_with_config(kvm, mode, GuestConfig::default())
    }

    pub fn try_with_config(kvm: &Kvm, mode: Mode, cfg: GuestConfig) -> Result<Guest, String> {
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        let mem = GuestMemory::new(cfg.ram_size as usize, cfg.holes);
        for (slot, r) in mem.ram_ranges().into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: r.start,
                memory_size: r.end - r.start,
                userspace_addr: mem.host_base() + r.start,
            };
            // SAFETY: the region lies inside `mem`, which outlives `vm` (field order).
            unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
        }
        let fd = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        // Without CPUID, KVM treats features such as NX/LM/FXSR as absent.
        fd.set_cpuid2(&supported_cpuid(kvm))
            .expect("KVM_SET_CPUID2");
        let mut g = Guest {
            vcpu: Vcpu::new(fd),
            vm,
            mem,
            mode,
            paging: None,
            ran: false,
        };
        g.setup_mode()?;
        Ok(g)
    }

    fn setup_mode(&mut self) -> Result<(), String> {
        let mode = self.mode;
        let mem = &mut self.mem;
        tables::write_gdt(mem);
        tables::write_ivt(mem);

        let mut s = self.vcpu.sregs();
        s.gdt = kvm_dtable {
            base: layout::GDT,
            limit: sel::GDT_BYTES - 1,
            padding: [0; 3],
        };
        s.cr4 = CR4_OSFXSR | CR4_OSXMMEXCPT;
        s.efer = 0;
        s.cr0 = CR0_ET | CR0_NE;

        if mode == Mode::Real {
            s.idt = kvm_dtable {
                base: layout::IVT,
                limit: 0x3FF,
                padding: [0; 3],
            };
            s.cs = tables::real_mode_segment((layout::CODE >> 4) as u16, true);
            let d = tables::real_mode_segment(0, false);
            (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
        } else {
            s.cr0 |= CR0_PE | CR0_MP;
            let idt_limit = if mode.long_mode_active() {
                tables::write_tss64(mem);
                s.tr = tables::segment(sel::TSS64);
                tables::write_idt64(mem)
            } else {
                tables::write_tss32(mem);
                s.tr = tables::segment(sel::TSS32);
                tables::write_idt32(mem)
            };
            s.idt = kvm_dtable {
                base: layout::IDT,
                limit: idt_limit,
                padding: [0; 3],
            };

            let (cs, ss, data) = match mode {
                Mode::Protected16 | Mode::Compat16 => {
                    (sel::KERNEL_CS16, sel::KERNEL_SS16, sel::KERNEL_DS)
                }
                Mode::Protected32 | Mode::Paged32 | Mode::Pae32 | Mode::Compat32 => {
                    (sel::KERNEL_CS32, sel::KERNEL_DS, sel::KERNEL_DS)
                }
                Mode::Long64 => (sel::KERNEL_CS64, sel::KERNEL_DS, sel::KERNEL_DS),
                Mode::User64 => (sel::USER_CS64 | 3, sel::USER_DS | 3, sel::USER_DS | 3),
                Mode::User32 => (sel::USER_CS32 | 3, sel::USER_DS | 3, sel::USER_DS | 3),
                Mode::Real => unreachable!(),
            };
            s.cs = tables::segment(cs);
            s.ss = tables::segment(ss);
            let d = tables::segment(data);
            (s.ds, s.es, s.fs, s.gs) = (d, d, d, d);

            if let Some(kind) = mode.paging() {
                let mut pt = PageTables::new(mem, kind);
                identity_map(&mut pt, mem);
                s.cr3 = pt.root;
                s.cr0 |= CR0_PG | CR0_WP;
                if kind != PagingKind::TwoLevel {
                    s.cr4 |= CR4_PAE;
                    s.efer |= EFER_NXE;
                }
                if mode.long_mode_active() {
                    s.efer |= EFER_LME | EFER_LMA;
                }
                self.paging = Some(pt);
            }
        }
        self.vcpu.set_sregs(&s);
        let got = self.vcpu.sregs();
        let key = |s: &kvm_bindings::kvm_sregs| (s.cr0, s.cr3, s.cr4, s.efer, s.cs.l, s.cs.db);
        if key(&got) != key(&s) {
            return Err(format!(
                "host KVM cannot run {mode:?}: requested (cr0, cr3, cr4, efer, cs.l, cs.db) = {:x?}, \
                 KVM has {:x?}",
                key(&s),
                key(&got)
            ));
        }

        let mut r = self.vcpu.regs();
        r.rflags = 0x2;
        r.rip = mode.code_origin();
        r.rsp = mode.initial_sp();
        self.vcpu.set_regs(&r);
        Ok(())
    }

    /// A fresh assembler for this mode's code size.
    pub fn asm(&self) -> CodeAssembler {
        CodeAssembler::new(self.mode.bitness()).expect("bitness")
    }

    /// Assembles `a` at the mode's code origin, loads it at [`layout::CODE`] and
    /// points RIP at it. Returns the machine code.
    pub fn load_asm(&mut self, a: &mut CodeAssembler) -> Vec<u8> {
        let code = a
            .assemble(self.mode.code_origin())
            .expect("assemble guest program");
        self.load_code(&code);
        code
    }

    /// Loads machine code at [`layout::CODE`] and points RIP at it.
    pub fn load_code(&mut self, code: &[u8]) {
        assert!(code.len() as u64 <= layout::CODE_SIZE, "program too large");
        self.mem.write(layout::CODE, code);
        self.vcpu.set_rip(self.mode.code_origin());
    }

    /// Maps one 4 KiB page (paged modes only). Best done before the first run:
    /// afterwards CR3 is reloaded via KVM_SET_SREGS, but KVM's cached
    /// translations of the old entry may survive (like a real TLB).
    pub fn map_page(&mut self, gva: u64, gpa: u64, flags: PageFlags) {
        let pt = self.paging.as_mut().expect("map_page needs a paged mode");
        pt.map(&mut self.mem, gva, gpa, flags);
        if self.ran {
            let s = self.vcpu.sregs();
            self.vcpu.set_sregs(&s);
        }
    }

    /// Allows/denies a port in the TSS I/O bitmap (matters at CPL > IOPL).
    pub fn set_io_permission(&mut self, port: u16, allowed: bool) {
        assert!(self.mode != Mode::Real, "real mode has no TSS");
        tables::set_io_permission(&mut self.mem, port, allowed);
    }

    /// One exit, as [`Vcpu::run_until_exit`].
    pub fn run_until_exit(&mut self) -> Exit {
        self.ran = true;
        self.vcpu.run_until_exit()
    }

    /// Runs, servicing MMIO and port exits from `bus`, until any other exit.
    pub fn run_with(&mut self, bus: &mut Bus) -> Exit {
        const MAX_IO_EXITS: usize = 1_000_000;
        for _ in 0..MAX_IO_EXITS {
            let exit = self.run_until_exit();
            match bus.handle(&exit) {
                Some(data) if !data.is_empty() => self.vcpu.complete_read(&data),
                Some(_) => {}
                None => return exit,
            }
        }
        panic!("guest made more than {MAX_IO_EXITS} device accesses without another exit");
    }

    /// The record written by the last exception handler entry, if any.
    pub fn exception_record(&self) -> Option<ExceptionRecord> {
        let f = |off| self.mem.read_u64(layout::EXC_RECORD + off);
        if f(rec::MAGIC) as u32 != rec::MAGIC_VALUE {
            return None;
        }
        Some(ExceptionRecord {
            count: f(rec::COUNT),
            vector: f(rec::VECTOR) as u8,
            error_code: f(rec::ERROR_CODE),
            rip: f(rec::RIP),
            cs: f(rec::CS) as u16,
            rflags: f(rec::RFLAGS),
            rsp: f(rec::RSP),
            ss: f(rec::SS) as u16,
            cr2: f(rec::CR2),
        })
    }

    pub fn clear_exception_record(&mut self) {
        self.mem.fill(layout::EXC_RECORD, rec::SIZE as usize, 0);
    }

    /// True if RIP is inside the harness's exception handlers (linear address,
    /// real mode included since its stubs run with CS = 0).
    pub fn in_exception_handler(&self) -> bool {
        let rip = self.vcpu.rip();
        let cs_base = self.vcpu.sregs().cs.base;
        let lin = if self.mode.bitness() == 64 {
            rip
        } else {
            cs_base + rip
        };
        (layout::STUBS16..layout::EXC_RECORD).contains(&lin)
    }
}

/// Identity map: system area and kernel stack/page tables supervisor-only;
/// low scratch, program, data, user stack, the rest of RAM and the MMIO
/// windows user-accessible.
fn identity_map(pt: &mut PageTables, mem: &mut GuestMemory) {
    let user = PageFlags::RW.user();
    pt.identity(mem, 0, layout::LOW_SCRATCH, PageFlags::RW);
    pt.identity(mem, layout::LOW_SCRATCH, layout::STACK_TOP, user);
    pt.identity(mem, layout::STACK_TOP, layout::PT_POOL_END, PageFlags::RW);
    pt.identity(mem, layout::PT_POOL_END, mem.size(), user);
    pt.identity(
        mem,
        layout::HIGH_MMIO,
        layout::HIGH_MMIO + layout::HIGH_MMIO_SIZE,
        user,
    );
}

fn supported_cpuid(kvm: &Kvm) -> CpuId {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_SUPPORTED_CPUID")
}
