//! Guest page-table builder for 2-level, PAE and 4-level paging.
//!
//! Tables are allocated from [`layout::PT_POOL`] and written straight into
//! guest RAM. Upper levels are always present/writable/user so only the leaf
//! entry decides permissions.

use super::layout;
use super::memory::GuestMemory;

/// Leaf permissions for [`PageTables::map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFlags {
    pub present: bool,
    pub writable: bool,
    pub user: bool,
    /// Needs PAE or long mode (EFER.NXE is set there); rejected for 2-level paging.
    pub no_exec: bool,
}

impl PageFlags {
    pub const RW: PageFlags = PageFlags {
        present: true,
        writable: true,
        user: false,
        no_exec: false,
    };
    pub const RO: PageFlags = PageFlags {
        present: true,
        writable: false,
        user: false,
        no_exec: false,
    };
    pub const NOT_PRESENT: PageFlags = PageFlags {
        present: false,
        writable: false,
        user: false,
        no_exec: false,
    };
    pub fn user(self) -> Self {
        PageFlags { user: true, ..self }
    }
    pub fn no_exec(self) -> Self {
        PageFlags {
            no_exec: true,
            ..self
        }
    }
}

const PTE_P: u64 = 1;
const PTE_RW: u64 = 2;
const PTE_US: u64 = 4;
const PTE_NX: u64 = 1 << 63;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingKind {
    /// 32-bit, 2 levels of 1024 four-byte entries.
    TwoLevel,
    /// PAE: 4-entry PDPT, then 2 levels of 512 eight-byte entries.
    Pae,
    /// 4-level long-mode paging.
    FourLevel,
}

impl PagingKind {
    /// (shift, index mask) per level, root first; entry size in bytes.
    fn levels(self) -> (&'static [(u32, u64)], u64) {
        match self {
            PagingKind::TwoLevel => (&[(22, 0x3FF), (12, 0x3FF)], 4),
            PagingKind::Pae => (&[(30, 0x3), (21, 0x1FF), (12, 0x1FF)], 8),
            PagingKind::FourLevel => (&[(39, 0x1FF), (30, 0x1FF), (21, 0x1FF), (12, 0x1FF)], 8),
        }
    }
}

pub struct PageTables {
    pub kind: PagingKind,
    /// Value for CR3 (page directory / PDPT / PML4 address).
    pub root: u64,
    next_free: u64,
}

impl PageTables {
    pub fn new(mem: &mut GuestMemory, kind: PagingKind) -> Self {
        let mut pt = PageTables {
            kind,
            root: 0,
            next_free: layout::PT_POOL,
        };
        pt.root = pt.alloc(mem);
        pt
    }

    fn alloc(&mut self, mem: &mut GuestMemory) -> u64 {
        assert!(
            self.next_free < layout::PT_POOL_END,
            "page-table pool exhausted"
        );
        let page = self.next_free;
        self.next_free += 0x1000;
        mem.fill(page, 0x1000, 0);
        page
    }

    fn read_entry(mem: &GuestMemory, at: u64, size: u64) -> u64 {
        if size == 4 {
            mem.read_u32(at) as u64
        } else {
            mem.read_u64(at)
        }
    }

    fn write_entry(mem: &mut GuestMemory, at: u64, size: u64, v: u64) {
        if size == 4 {
            mem.write_u32(at, v as u32)
        } else {
            mem.write_u64(at, v)
        }
    }

    /// Maps the 4 KiB page containing `gva` to `gpa` (page-aligned) with `flags`,
    /// replacing any previous mapping. `gpa` may be MMIO (unbacked).
    ///
    /// KVM caches translations (shadow paging); change mappings before the
    /// first run, or expect stale translations until the guest flushes its TLB.
    pub fn map(&mut self, mem: &mut GuestMemory, gva: u64, gpa: u64, flags: PageFlags) {
        assert_eq!(gpa & 0xFFF, 0, "gpa must be page aligned");
        let (levels, esize) = self.kind.levels();
        match self.kind {
            PagingKind::TwoLevel => {
                assert!(
                    gva >> 32 == 0 && gpa >> 32 == 0,
                    "2-level paging is 32-bit only"
                );
                assert!(!flags.no_exec, "2-level paging has no NX bit");
            }
            PagingKind::Pae => assert!(gva >> 32 == 0, "PAE linear addresses are 32-bit"),
            PagingKind::FourLevel => {
                let top = (gva as i64) >> 47;
                assert!(top == 0 || top == -1, "non-canonical gva {gva:#x}");
            }
        }
        let mut table = self.root;
        for (depth, &(shift, mask)) in levels.iter().enumerate() {
            let at = table + ((gva >> shift) & mask) * esize;
            if depth == levels.len() - 1 {
                let mut e = gpa;
                if flags.present {
                    e |= PTE_P;
                }
                if flags.writable {
                    e |= PTE_RW;
                }
                if flags.user {
                    e |= PTE_US;
                }
                if flags.no_exec {
                    e |= PTE_NX;
                }
                Self::write_entry(mem, at, esize, e);
                return;
            }
            let e = Self::read_entry(mem, at, esize);
            table = if e & PTE_P != 0 {
                e & 0x000F_FFFF_FFFF_F000
            } else {
                let t = self.alloc(mem);
                // PAE PDPTEs only allow P (RW/US are reserved there).
                let upper = if self.kind == PagingKind::Pae && depth == 0 {
                    PTE_P
                } else {
                    PTE_P | PTE_RW | PTE_US
                };
                Self::write_entry(mem, at, esize, t | upper);
                t
            };
        }
    }

    /// Identity-maps `start..end` (page-aligned) with `flags`.
    pub fn identity(&mut self, mem: &mut GuestMemory, start: u64, end: u64, flags: PageFlags) {
        let mut a = start & !0xFFF;
        while a < end {
            self.map(mem, a, a, flags);
            a += 0x1000;
        }
    }

    /// Software walk of the tables (ignores TLB state); returns (gpa, leaf entry).
    pub fn lookup(&self, mem: &GuestMemory, gva: u64) -> Option<(u64, u64)> {
        let (levels, esize) = self.kind.levels();
        let mut table = self.root;
        for (depth, &(shift, mask)) in levels.iter().enumerate() {
            let e = Self::read_entry(mem, table + ((gva >> shift) & mask) * esize, esize);
            if e & PTE_P == 0 {
                return None;
            }
            if depth == levels.len() - 1 {
                return Some(((e & 0x000F_FFFF_FFFF_F000) | (gva & 0xFFF), e));
            }
            table = e & 0x000F_FFFF_FFFF_F000;
        }
        None
    }
}
