//! hvemu allocates nothing of its own: after `warm_up`, an exit costs zero heap allocations.
//! A counting global allocator watches a mix of exits in every mode.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use hvemu::*;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the thread whose allocations count. libtest's own threads allocate too (its
    /// main thread spawns the test and reports it), and on a loaded machine they can do so
    /// while the exits run: counted, they made the test fail now and then.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // A const-initialised thread local without a destructor: reading it never allocates.
        if COUNTED.try_with(Cell::get).unwrap_or(false) {
            ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Callbacks that allocate nothing: registers in a `RegisterFile`, 64 KiB of RAM, MMIO that
/// reads as 0x5A, ports that answer 0x42, identity translation.
struct Fixed {
    regs: RegisterFile,
    ram: [u8; 0x10000],
    decoded: Option<DecodeCache>,
}

impl EmulatorCallbacks for Fixed {
    type Error = ();
    fn decode_cache(&mut self) -> Option<&mut DecodeCache> {
        self.decoded.as_mut()
    }
    fn io_port(&mut self, access: &mut IoAccessInfo) -> Result<(), ()> {
        access.data = 0x42;
        Ok(())
    }
    fn memory(&mut self, access: &mut MemoryAccessInfo<'_>) -> Result<(), ()> {
        let gpa = access.gpa_address as usize;
        match self.ram.get_mut(gpa..gpa + access.data.len()) {
            Some(ram) if access.direction == AccessDirection::Read => {
                access.data.copy_from_slice(ram)
            }
            Some(ram) => ram.copy_from_slice(access.data),
            None if access.direction == AccessDirection::Read => access.data.fill(0x5A),
            None => {}
        }
        Ok(())
    }
    fn get_registers(&mut self, n: &[RegisterName], v: &mut [RegisterValue]) -> Result<(), ()> {
        self.regs.get(n, v).map_err(|_| ())
    }
    fn set_registers(&mut self, n: &[RegisterName], v: &[RegisterValue]) -> Result<(), ()> {
        self.regs.set(n, v).map_err(|_| ())
    }
    fn translate_gva_page(
        &mut self,
        gva: u64,
        _: TranslateGvaFlags,
    ) -> Result<(TranslateGvaResult, u64), ()> {
        Ok((TranslateGvaResult::Success, gva))
    }
}

#[test]
fn exits_allocate_nothing_after_warm_up() {
    hvemu::warm_up();
    let modes = [
        RegisterFile::real_mode(),
        RegisterFile::protected_mode_32(),
        RegisterFile::long_mode(),
    ];
    use MemoryAccessType::{Read, Write};
    let mmio_cases: [(&[u8], MemoryAccessType); 6] = [
        (&[0x89, 0x18], Write),       // mov [eax/bx+si], ebx/bx
        (&[0x8B, 0x03], Read),        // mov eax, [ebx/bp+di]
        (&[0x0F, 0xB7, 0x03], Read),  // movzx
        (&[0xF3, 0xA4], Write),       // rep movsb
        (&[0xF3, 0xAB], Write),       // rep stos
        (&[0xC7, 0x00, 1, 2], Write), // mov [rax], imm16/imm32 (truncated in 64-bit: fetched)
    ];
    let mut vcpu = Box::new(Fixed {
        regs: RegisterFile::real_mode(),
        ram: [0; 0x10000],
        decoded: None,
    });
    let mut exits = 0;
    let mut completed = 0;
    COUNTED.set(true);
    // The counter works: a heap allocation on this thread shows.
    let probe = ALLOCATIONS.load(Ordering::SeqCst);
    drop(std::hint::black_box(vec![0u8; 16]));
    assert!(ALLOCATIONS.load(Ordering::SeqCst) > probe);
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    // Without a decode cache, then with one (the second round all hits).
    for round in 0..3 {
        if round == 1 {
            vcpu.decoded = Some(DecodeCache::new());
        }
        for regs in &modes {
            for (bytes, access) in mmio_cases {
                vcpu.regs = regs.clone();
                vcpu.regs.rip = 0x1000;
                vcpu.regs.set_gpr(0, 0x2000);
                vcpu.regs.set_gpr(3, 0x3000);
                vcpu.regs.set_gpr(1, 16);
                vcpu.regs.set_gpr(6, 0x4000);
                vcpu.regs.set_gpr(7, 0x5000);
                let exit = vcpu.regs.exit_context(bytes.len() as u8);
                let ctx = MemoryAccessContext::new(bytes, access, 0x2000);
                let r = Emulator::new(&mut *vcpu).emulate_mmio(&exit, &ctx);
                completed += usize::from(r.is_ok());
                exits += 1;
            }
            vcpu.regs = regs.clone();
            let exit = vcpu.regs.exit_context(2);
            let io = IoPortAccessContext::new(
                &[0xF3, 0x6E],
                IoPortAccessInfo::string(true, 1, true),
                0x80,
            );
            let r = Emulator::new(&mut *vcpu).emulate_io(&exit, &io);
            completed += usize::from(r.is_ok());
            exits += 1;
        }
    }
    assert!(vcpu.decoded.as_ref().is_some_and(|c| !c.is_empty()));
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    COUNTED.set(false);
    println!(
        "{exits} exits ({completed} completed), {} allocations",
        after - before
    );
    assert_eq!(after - before, 0);
    assert!(
        completed >= 3 * 18,
        "most exits must complete, not fail early: {completed}"
    );
}
