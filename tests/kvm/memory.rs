//! Host backing for guest RAM.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ops::Range;
use std::ptr::NonNull;

/// Page-aligned, zeroed host memory backing guest-physical `0..size`.
///
/// Holes (GPA ranges not registered with KVM) still have host backing so that
/// GPA == offset everywhere; the accessors refuse to touch them because the
/// guest would never see those bytes.
pub struct GuestMemory {
    ptr: NonNull<u8>,
    size: usize,
    holes: Vec<Range<u64>>,
}

// The buffer is plain bytes owned by this struct; KVM only touches it while
// KVM_RUN executes on the thread that holds `&mut` to the owning `Guest`.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    const ALIGN: usize = 4096;

    pub fn new(size: usize, holes: Vec<Range<u64>>) -> Self {
        assert!(
            size > 0 && size % Self::ALIGN == 0,
            "RAM size must be whole pages"
        );
        let layout = Layout::from_size_align(size, Self::ALIGN).expect("layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).expect("guest RAM allocation failed");
        GuestMemory { ptr, size, holes }
    }

    pub fn size(&self) -> u64 {
        self.size as u64
    }

    pub fn holes(&self) -> &[Range<u64>] {
        &self.holes
    }

    /// Host virtual address of GPA 0 (for `kvm_userspace_memory_region`).
    pub fn host_base(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// RAM ranges that are backed and registered (RAM minus holes).
    pub fn ram_ranges(&self) -> Vec<Range<u64>> {
        let mut holes = self.holes.clone();
        holes.sort_by_key(|h| h.start);
        let mut out = Vec::new();
        let mut cur = 0;
        for h in holes {
            let (s, e) = (h.start.min(self.size()), h.end.min(self.size()));
            if s > cur {
                out.push(cur..s);
            }
            cur = cur.max(e);
        }
        if cur < self.size() {
            out.push(cur..self.size());
        }
        out
    }

    /// True if `gpa..gpa+len` is entirely guest RAM.
    pub fn is_ram(&self, gpa: u64, len: usize) -> bool {
        let end = gpa.checked_add(len as u64);
        match end {
            Some(end) if end <= self.size() => {
                !self.holes.iter().any(|h| gpa < h.end && h.start < end)
            }
            _ => false,
        }
    }

    fn check(&self, gpa: u64, len: usize) {
        assert!(
            self.is_ram(gpa, len),
            "GPA range {gpa:#x}+{len:#x} is not guest RAM (RAM size {:#x}, holes {:x?})",
            self.size,
            self.holes
        );
    }

    pub fn write(&mut self, gpa: u64, bytes: &[u8]) {
        self.check(gpa, bytes.len());
        // SAFETY: range checked to lie inside the allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(gpa as usize),
                bytes.len(),
            )
        }
    }

    pub fn read_into(&self, gpa: u64, buf: &mut [u8]) {
        self.check(gpa, buf.len());
        // SAFETY: range checked to lie inside the allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(gpa as usize),
                buf.as_mut_ptr(),
                buf.len(),
            )
        }
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.read_into(gpa, &mut v);
        v
    }

    pub fn fill(&mut self, gpa: u64, len: usize, byte: u8) {
        self.write(gpa, &vec![byte; len]);
    }

    pub fn read_u8(&self, gpa: u64) -> u8 {
        self.read(gpa, 1)[0]
    }
    pub fn read_u16(&self, gpa: u64) -> u16 {
        let mut b = [0; 2];
        self.read_into(gpa, &mut b);
        u16::from_le_bytes(b)
    }
    pub fn read_u32(&self, gpa: u64) -> u32 {
        let mut b = [0; 4];
        self.read_into(gpa, &mut b);
        u32::from_le_bytes(b)
    }
    pub fn read_u64(&self, gpa: u64) -> u64 {
        let mut b = [0; 8];
        self.read_into(gpa, &mut b);
        u64::from_le_bytes(b)
    }
    pub fn write_u8(&mut self, gpa: u64, v: u8) {
        self.write(gpa, &[v]);
    }
    pub fn write_u16(&mut self, gpa: u64, v: u16) {
        self.write(gpa, &v.to_le_bytes());
    }
    pub fn write_u32(&mut self, gpa: u64, v: u32) {
        self.write(gpa, &v.to_le_bytes());
    }
    pub fn write_u64(&mut self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes());
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.size, Self::ALIGN).expect("layout");
        // SAFETY: allocated in `new` with this layout. The owning `Guest`
        // declares its VM fd before the memory, so KVM has released the slots.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}
