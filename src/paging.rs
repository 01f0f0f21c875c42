//! A software page walker for monitors without a platform translation service (firmware,
//! #VC/#VE handlers, bare VMX/SVM monitors): plug [`walk`] into
//! [`EmulatorCallbacks::translate_gva_page`](crate::EmulatorCallbacks::translate_gva_page).
//!
//! It follows SDM Vol. 3A chapter 4 (and AMD APM Vol. 2 chapter 5): 32-bit paging (with 4 MiB
//! pages under CR4.PSE), PAE paging, 4-level and 5-level paging (1 GiB and 2 MiB pages);
//! present, R/W, U/S, NX (with EFER.NXE), SMEP, SMAP (RFLAGS.AC and the explicit
//! `ENFORCE_SMAP`/`OVERRIDE_SMAP` flags), CR0.WP, protection keys for user pages (CR4.PKE with
//! PKRU); reserved bits above MAXPHYADDR and the other reserved positions become
//! `InvalidPageTableFlags`. With `SET_PAGE_TABLE_BITS` a successful walk sets the accessed bit
//! of every entry it used and the dirty bit of the final one on a write.
//!
//! ```
//! use hvemu::paging::{walk, GuestPhysical, PagingRegisters};
//! use hvemu::{TranslateGvaFlags, TranslateGvaResult};
//!
//! struct Ram(Vec<u8>);
//! impl GuestPhysical for Ram {
//!     type Error = ();
//!     fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
//!         let s = self.0.get(gpa as usize..gpa as usize + buf.len()).ok_or(())?;
//!         buf.copy_from_slice(s);
//!         Ok(())
//!     }
//!     fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), ()> {
//!         let d = self.0.get_mut(gpa as usize..gpa as usize + buf.len()).ok_or(())?;
//!         d.copy_from_slice(buf);
//!         Ok(())
//!     }
//! }
//!
//! // 4-level paging: PML4 at 0x1000 → PDPT at 0x2000 → a 1 GiB page at 0.
//! let mut ram = Ram(vec![0; 0x3000]);
//! ram.0[0x1000..0x1008].copy_from_slice(&(0x2000u64 | 0x3).to_le_bytes());
//! ram.0[0x2000..0x2008].copy_from_slice(&(0x0u64 | 0x83).to_le_bytes()); // P, RW, PS
//! let regs = PagingRegisters::long_mode(0x1000);
//! let (result, gpa) = walk(&mut ram, &regs, 0x1234_5678, TranslateGvaFlags::VALIDATE_WRITE).unwrap();
//! assert_eq!((result, gpa), (TranslateGvaResult::Success, 0x1234_5000));
//! ```

use crate::callbacks::{TranslateGvaFlags, TranslateGvaResult};

/// Guest-physical memory as the walker reads page tables from it.
pub trait GuestPhysical {
    /// The error a failed access reports; the walk returns it unchanged.
    type Error;
    /// Reads `buf.len()` bytes (4 or 8, naturally aligned) at `gpa`.
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Writes `buf` at `gpa` (accessed/dirty bit updates).
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), Self::Error>;
}

/// The processor state a walk depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PagingRegisters {
    /// CR0 (PG, WP).
    pub cr0: u64,
    /// CR3 (the root table).
    pub cr3: u64,
    /// CR4 (PSE, PAE, LA57, SMEP, SMAP, PKE).
    pub cr4: u64,
    /// EFER (LMA, NXE).
    pub efer: u64,
    /// RFLAGS (AC, for SMAP).
    pub rflags: u64,
    /// The current privilege level.
    pub cpl: u8,
    /// PKRU, for protection keys on user pages.
    pub pkru: u32,
    /// The guest's MAXPHYADDR (physical address width, 36..=52); 0 means 52.
    pub max_phys_bits: u8,
}

const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
const CR4_PKE: u64 = 1 << 22;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const RFLAGS_AC: u64 = 1 << 18;

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;

impl PagingRegisters {
    /// 4-level paging at CPL 0 with CR0.WP and EFER.NXE, rooted at `cr3`.
    pub const fn long_mode(cr3: u64) -> Self {
        Self {
            cr0: CR0_PG | CR0_WP | 1,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LMA | EFER_NXE | (1 << 8),
            rflags: 2,
            cpl: 0,
            pkru: 0,
            max_phys_bits: 0,
        }
    }

    fn phys_mask(&self) -> u64 {
        let bits = match self.max_phys_bits {
            36..=52 => self.max_phys_bits,
            _ => 52,
        };
        !(u64::MAX << bits) & !0xFFF
    }
}

/// What the access is, as the walker checks it.
#[derive(Clone, Copy)]
struct Access {
    write: bool,
    fetch: bool,
    user: bool,
    /// SMAP applies to this supervisor data access.
    smap: bool,
}

/// Translates the page holding `gva` under `flags`: the walk's result and the 4 KiB-aligned GPA
/// of the page (0 when the walk fails). Paging off (CR0.PG = 0) is the identity.
///
/// The access is a user access when `regs.cpl == 3` and `flags` lacks `PRIVILEGE_EXEMPT`.
pub fn walk<M: GuestPhysical + ?Sized>(
    mem: &mut M,
    regs: &PagingRegisters,
    gva: u64,
    flags: TranslateGvaFlags,
) -> Result<(TranslateGvaResult, u64), M::Error> {
    let page = gva & !0xFFF;
    if regs.cr0 & CR0_PG == 0 {
        return Ok((TranslateGvaResult::Success, page & 0xFFFF_FFFF));
    }
    let user = regs.cpl == 3 && !flags.contains(TranslateGvaFlags::PRIVILEGE_EXEMPT);
    let fetch = flags.contains(TranslateGvaFlags::VALIDATE_EXECUTE);
    let implicit = flags.contains(TranslateGvaFlags::PRIVILEGE_EXEMPT);
    let smap = regs.cr4 & CR4_SMAP != 0
        && !user
        && !fetch
        && !flags.contains(TranslateGvaFlags::OVERRIDE_SMAP)
        && (flags.contains(TranslateGvaFlags::ENFORCE_SMAP)
            || implicit
            || regs.rflags & RFLAGS_AC == 0);
    let access = Access {
        write: flags.contains(TranslateGvaFlags::VALIDATE_WRITE),
        fetch,
        user,
        smap,
    };
    let set_bits = flags.contains(TranslateGvaFlags::SET_PAGE_TABLE_BITS);
    if regs.cr4 & CR4_PAE == 0 {
        walk_32bit(mem, regs, gva, access, set_bits)
    } else {
        walk_pae_or_long(mem, regs, gva, access, set_bits)
    }
}

/// The entries one walk used (at most five levels), for the permission check and A/D updates.
struct Path {
    entries: [(u64, u64, usize); 5],
    len: usize,
}

impl Path {
    fn push(&mut self, gpa: u64, entry: u64, size: usize) {
        if let Some(slot) = self.entries.get_mut(self.len) {
            *slot = (gpa, entry, size);
            self.len = self.len.saturating_add(1);
        }
    }

    fn used(&self) -> impl Iterator<Item = &(u64, u64, usize)> {
        self.entries.iter().take(self.len)
    }
}

fn read_entry<M: GuestPhysical + ?Sized>(
    mem: &mut M,
    gpa: u64,
    size: usize,
) -> Result<u64, M::Error> {
    let mut buf = [0u8; 8];
    mem.read(gpa, buf.get_mut(..size).unwrap_or(&mut []))?;
    Ok(u64::from_le_bytes(buf))
}

fn walk_32bit<M: GuestPhysical + ?Sized>(
    mem: &mut M,
    regs: &PagingRegisters,
    gva: u64,
    access: Access,
    set_bits: bool,
) -> Result<(TranslateGvaResult, u64), M::Error> {
    let gva = gva & 0xFFFF_FFFF;
    let mut path = Path {
        entries: [(0, 0, 0); 5],
        len: 0,
    };
    let pde_gpa = (regs.cr3 & 0xFFFF_F000) | ((gva >> 22) << 2);
    let pde = read_entry(mem, pde_gpa, 4)?;
    if pde & P == 0 {
        return Ok((TranslateGvaResult::PageNotPresent, 0));
    }
    path.push(pde_gpa, pde, 4);
    let gpa = if pde & PS != 0 && regs.cr4 & CR4_PSE != 0 {
        // 4 MiB page: bits 20:13 of the PDE extend the address beyond 4 GiB; bit 21 is
        // reserved.
        if pde & (1 << 21) != 0 {
            return Ok((TranslateGvaResult::InvalidPageTableFlags, 0));
        }
        let high = ((pde >> 13) & 0xFF) << 32;
        (pde & 0xFFC0_0000) | high | (gva & 0x3F_F000)
    } else {
        let pte_gpa = (pde & 0xFFFF_F000) | (((gva >> 12) & 0x3FF) << 2);
        let pte = read_entry(mem, pte_gpa, 4)?;
        if pte & P == 0 {
            return Ok((TranslateGvaResult::PageNotPresent, 0));
        }
        path.push(pte_gpa, pte, 4);
        pte & 0xFFFF_F000
    };
    finish(mem, regs, &path, access, set_bits, gpa, false)
}

fn walk_pae_or_long<M: GuestPhysical + ?Sized>(
    mem: &mut M,
    regs: &PagingRegisters,
    gva: u64,
    access: Access,
    set_bits: bool,
) -> Result<(TranslateGvaResult, u64), M::Error> {
    let long = regs.efer & EFER_LMA != 0;
    let nxe = regs.efer & EFER_NXE != 0;
    let phys = regs.phys_mask();
    // Bits above MAXPHYADDR (up to 51) are reserved, and so is NX without EFER.NXE.
    let mut reserved = !phys & 0x000F_FFFF_FFFF_F000;
    if !nxe {
        reserved |= NX;
    }
    let mut path = Path {
        entries: [(0, 0, 0); 5],
        len: 0,
    };
    // The linear-address bit each level's index starts at, root first: one level per entry,
    // the last (12) the page table's.
    let (mut table, shifts): (u64, &[u32]) = if long {
        let shifts: &[u32] = if regs.cr4 & CR4_LA57 != 0 {
            &[48, 39, 30, 21, 12]
        } else {
            &[39, 30, 21, 12]
        };
        (regs.cr3 & phys, shifts)
    } else {
        // PAE: the four PDPTEs (cached by the processor at CR3 load; read here).
        let pdpte_gpa = (regs.cr3 & 0xFFFF_FFE0) | (((gva >> 30) & 3) << 3);
        let pdpte = read_entry(mem, pdpte_gpa, 8)?;
        if pdpte & P == 0 {
            return Ok((TranslateGvaResult::PageNotPresent, 0));
        }
        // PAE PDPTEs reserve bits 2:1, 8:5 and 63 as well.
        if pdpte & (reserved | 0x1E6 | NX) != 0 {
            return Ok((TranslateGvaResult::InvalidPageTableFlags, 0));
        }
        // PDPTEs carry no R/W, U/S or A bits: they do not take part in the checks.
        (pdpte & phys, &[21, 12])
    };
    for &shift in shifts {
        let index = (gva >> shift) & 0x1FF;
        let entry_gpa = table | (index << 3);
        let entry = read_entry(mem, entry_gpa, 8)?;
        if entry & P == 0 {
            return Ok((TranslateGvaResult::PageNotPresent, 0));
        }
        let large = entry & PS != 0;
        // PS is reserved at the PML5E/PML4E levels; 1 GiB pages only in long mode.
        let bad_ps = large && (shift >= 39 || (shift == 30 && !long));
        if entry & reserved != 0 || bad_ps {
            return Ok((TranslateGvaResult::InvalidPageTableFlags, 0));
        }
        path.push(entry_gpa, entry, 8);
        if shift == 12 || large {
            // The offset bits within the page.
            let offset = !(u64::MAX << shift);
            let base = entry & phys & !offset;
            // A large page's address bits below its size (bit 12 is PAT) must be zero.
            if large && entry & phys & offset & !0x1FFF != 0 {
                return Ok((TranslateGvaResult::InvalidPageTableFlags, 0));
            }
            let gpa = base | (gva & offset & !0xFFF);
            return finish(mem, regs, &path, access, set_bits, gpa, nxe);
        }
        table = entry & phys;
    }
    // Not reached: the page table's entries (the last level) always end the walk.
    Ok((TranslateGvaResult::PageNotPresent, 0))
}

/// Permission checks over the whole path, then the accessed/dirty updates.
fn finish<M: GuestPhysical + ?Sized>(
    mem: &mut M,
    regs: &PagingRegisters,
    path: &Path,
    access: Access,
    set_bits: bool,
    gpa: u64,
    nxe: bool,
) -> Result<(TranslateGvaResult, u64), M::Error> {
    let all = |bit: u64| path.used().all(|(_, e, _)| e & bit != 0);
    let writable = all(RW);
    let user_page = all(US);
    let executable = !nxe || path.used().all(|(_, e, _)| e & NX == 0);
    let wp = regs.cr0 & CR0_WP != 0;
    let denied = if access.user {
        !user_page
            || (access.write && !writable)
            || (access.fetch && !executable)
            || pkey_denies(regs, path, access)
    } else {
        (access.write && !writable && wp)
            || (access.fetch && (!executable || (user_page && regs.cr4 & CR4_SMEP != 0)))
            || (access.smap && user_page)
            || (user_page && pkey_denies(regs, path, access))
    };
    if denied {
        return Ok((TranslateGvaResult::PrivilegeViolation, 0));
    }
    if set_bits {
        let last = path.len.saturating_sub(1);
        for (i, (entry_gpa, entry, size)) in path.used().enumerate() {
            let mut new = entry | ACCESSED;
            if i == last && access.write {
                new |= DIRTY;
            }
            if new != *entry {
                let bytes = new.to_le_bytes();
                mem.write(*entry_gpa, bytes.get(..*size).unwrap_or(&[]))?;
            }
        }
    }
    Ok((TranslateGvaResult::Success, gpa & !0xFFF))
}

/// Protection keys (CR4.PKE) on a user page's data access: PKRU's access-disable bit denies
/// every access, write-disable denies writes (for supervisor writes only with CR0.WP).
fn pkey_denies(regs: &PagingRegisters, path: &Path, access: Access) -> bool {
    if regs.cr4 & CR4_PKE == 0 || regs.efer & EFER_LMA == 0 || access.fetch {
        return false;
    }
    let Some((_, leaf, _)) = path.used().last() else {
        return false;
    };
    let key = ((leaf >> 59) & 0xF) as u32;
    // PKRU holds two bits per key: AD at bit 2·key, WD at bit 2·key + 1.
    let rights = regs.pkru >> (key << 1);
    let ad = rights & 1 != 0;
    let wd = rights & 2 != 0;
    let wd_applies = access.user || regs.cr0 & CR0_WP != 0;
    ad || (access.write && wd && wd_applies)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    struct Ram(Vec<u8>);

    impl GuestPhysical for Ram {
        type Error = u64;
        fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), u64> {
            let s = self
                .0
                .get(gpa as usize..gpa as usize + buf.len())
                .ok_or(gpa)?;
            buf.copy_from_slice(s);
            Ok(())
        }
        fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), u64> {
            let d = self
                .0
                .get_mut(gpa as usize..gpa as usize + buf.len())
                .ok_or(gpa)?;
            d.copy_from_slice(buf);
            Ok(())
        }
    }

    impl Ram {
        fn set64(&mut self, gpa: u64, v: u64) {
            self.0[gpa as usize..gpa as usize + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn set32(&mut self, gpa: u64, v: u32) {
            self.0[gpa as usize..gpa as usize + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn get64(&self, gpa: u64) -> u64 {
            u64::from_le_bytes(self.0[gpa as usize..gpa as usize + 8].try_into().unwrap())
        }
    }

    const R: TranslateGvaFlags = TranslateGvaFlags::VALIDATE_READ;
    const W: TranslateGvaFlags = TranslateGvaFlags::VALIDATE_WRITE;
    const X: TranslateGvaFlags = TranslateGvaFlags::VALIDATE_EXECUTE;
    use TranslateGvaResult::*;

    /// 4-level: PML4 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000; gva 0x40_1000 → 0x9000 with
    /// the given leaf flags (upper levels RW+US).
    fn four_level(leaf_flags: u64) -> (Ram, PagingRegisters) {
        let mut ram = Ram(vec![0; 0x10000]);
        ram.set64(0x1000, 0x2000 | 7);
        ram.set64(0x2000, 0x3000 | 7);
        ram.set64(0x3000 + 2 * 8, 0x4000 | 7);
        ram.set64(0x4000 + 8, 0x9000 | leaf_flags);
        (ram, PagingRegisters::long_mode(0x1000))
    }

    #[test]
    fn four_level_walk_and_accessed_dirty_bits() {
        let (mut ram, regs) = four_level(P | RW);
        let flags = W | TranslateGvaFlags::SET_PAGE_TABLE_BITS;
        assert_eq!(
            walk(&mut ram, &regs, 0x40_1ABC, flags),
            Ok((Success, 0x9000))
        );
        assert_eq!(ram.get64(0x4008), 0x9000 | P | RW | ACCESSED | DIRTY);
        assert_eq!(ram.get64(0x1000), 0x2000 | 7 | ACCESSED);
        // Without SET_PAGE_TABLE_BITS nothing changes.
        let (mut ram, regs) = four_level(P | RW);
        walk(&mut ram, &regs, 0x40_1000, R).unwrap();
        assert_eq!(ram.get64(0x4008), 0x9000 | P | RW);
    }

    #[test]
    fn permissions() {
        let (mut ram, mut regs) = four_level(P);
        // Supervisor write to a read-only page: allowed only without CR0.WP.
        assert_eq!(
            walk(&mut ram, &regs, 0x40_1000, W),
            Ok((PrivilegeViolation, 0))
        );
        regs.cr0 &= !CR0_WP;
        assert_eq!(walk(&mut ram, &regs, 0x40_1000, W), Ok((Success, 0x9000)));
        // User access to a supervisor page.
        regs.cpl = 3;
        assert_eq!(
            walk(&mut ram, &regs, 0x40_1000, R),
            Ok((PrivilegeViolation, 0))
        );
        // ... unless the access is an implicit supervisor one.
        let exempt = R | TranslateGvaFlags::PRIVILEGE_EXEMPT;
        assert_eq!(
            walk(&mut ram, &regs, 0x40_1000, exempt),
            Ok((Success, 0x9000))
        );
        // NX.
        let (mut ram, regs) = four_level(P | NX);
        assert_eq!(
            walk(&mut ram, &regs, 0x40_1000, X),
            Ok((PrivilegeViolation, 0))
        );
        assert_eq!(walk(&mut ram, &regs, 0x40_1000, R), Ok((Success, 0x9000)));
        // NX without EFER.NXE is a reserved bit.
        let mut no_nxe = regs;
        no_nxe.efer &= !EFER_NXE;
        assert_eq!(
            walk(&mut ram, &no_nxe, 0x40_1000, R),
            Ok((InvalidPageTableFlags, 0))
        );
    }

    #[test]
    fn smep_smap_and_protection_keys() {
        let (mut ram, mut regs) = four_level(P | RW | US);
        regs.cr4 |= CR4_SMEP | CR4_SMAP;
        assert_eq!(
            walk(&mut ram, &regs, 0x40_1000, X),
            Ok((PrivilegeViolation, 0))
        );
        assert_eq!(
            walk(&mut ram, &regs, 0x40_1000, R),
            Ok((PrivilegeViolation, 0))
        );
        regs.rflags |= RFLAGS_AC;
        assert_eq!(walk(&mut ram, &regs, 0x40_1000, R), Ok((Success, 0x9000)));
        let enforce = R | TranslateGvaFlags::ENFORCE_SMAP;
        assert_eq!(
            walk(&mut ram, &regs, 0x40_1000, enforce),
            Ok((PrivilegeViolation, 0))
        );
        regs.rflags &= !RFLAGS_AC;
        let overridden = R | TranslateGvaFlags::OVERRIDE_SMAP;
        assert_eq!(
            walk(&mut ram, &regs, 0x40_1000, overridden),
            Ok((Success, 0x9000))
        );
        // Protection key 1 write-disabled for user writes.
        let (mut ram, mut regs) = four_level(P | RW | US | (1 << 59));
        regs.cr4 |= CR4_PKE;
        regs.cpl = 3;
        regs.pkru = 0b10 << 2;
        assert_eq!(walk(&mut ram, &regs, 0x40_1000, R), Ok((Success, 0x9000)));
        assert_eq!(
            walk(&mut ram, &regs, 0x40_1000, W),
            Ok((PrivilegeViolation, 0))
        );
        regs.pkru = 0b01 << 2;
        assert_eq!(
            walk(&mut ram, &regs, 0x40_1000, R),
            Ok((PrivilegeViolation, 0))
        );
    }

    #[test]
    fn large_pages_and_five_levels() {
        // 2 MiB page at PD level.
        let mut ram = Ram(vec![0; 0x10000]);
        ram.set64(0x1000, 0x2000 | 3);
        ram.set64(0x2000, 0x3000 | 3);
        ram.set64(0x3000 + 8, 0x60_0000 | 3 | PS);
        let regs = PagingRegisters::long_mode(0x1000);
        assert_eq!(
            walk(&mut ram, &regs, 0x2A_B000, R),
            Ok((Success, 0x6A_B000))
        );
        // A 2 MiB PDE with address bits below 2 MiB set is reserved.
        ram.set64(0x3000 + 8, 0x61_0000 | 3 | PS);
        assert_eq!(
            walk(&mut ram, &regs, 0x2A_B000, R),
            Ok((InvalidPageTableFlags, 0))
        );
        // 5-level: PML5 at 0x5000 → the same PML4.
        ram.set64(0x3000 + 8, 0x60_0000 | 3 | PS);
        ram.set64(0x5000, 0x1000 | 3);
        let mut la57 = PagingRegisters::long_mode(0x5000);
        la57.cr4 |= CR4_LA57;
        assert_eq!(
            walk(&mut ram, &la57, 0x2A_B000, R),
            Ok((Success, 0x6A_B000))
        );
        // Bits above MAXPHYADDR are reserved.
        let mut narrow = regs;
        narrow.max_phys_bits = 36;
        ram.set64(0x2000, (1 << 40) | 0x3000 | 3);
        assert_eq!(
            walk(&mut ram, &narrow, 0x2A_B000, R),
            Ok((InvalidPageTableFlags, 0))
        );
        // Not present.
        assert_eq!(
            walk(&mut ram, &regs, 0x8000_0000, R),
            Ok((PageNotPresent, 0))
        );
    }

    #[test]
    fn legacy_32_bit_and_pae() {
        // 32-bit: PD at 0x1000, PT at 0x2000, and a 4 MiB page with PSE.
        let mut ram = Ram(vec![0; 0x10000]);
        ram.set32(0x1000, 0x2000 | 7);
        ram.set32(0x2000 + 3 * 4, 0x7000 | 3);
        ram.set32(0x1000 + 4, 0x0040_0000 | 3 | PS as u32);
        let mut regs = PagingRegisters {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            ..Default::default()
        };
        assert_eq!(walk(&mut ram, &regs, 0x3123, W), Ok((Success, 0x7000)));
        regs.cr4 = CR4_PSE;
        assert_eq!(
            walk(&mut ram, &regs, 0x0045_6789, R),
            Ok((Success, 0x0045_6000))
        );
        // PAE: PDPT at 0x3000 (32-byte aligned), PD 0x4000, PT 0x5000.
        let mut ram = Ram(vec![0; 0x10000]);
        ram.set64(0x3000 + 8, 0x4000 | 1);
        ram.set64(0x4000, 0x5000 | 3);
        ram.set64(0x5000 + 2 * 8, 0x8000 | 3);
        let regs = PagingRegisters {
            cr0: CR0_PG | CR0_WP | 1,
            cr3: 0x3000,
            cr4: CR4_PAE,
            efer: EFER_NXE,
            ..Default::default()
        };
        assert_eq!(walk(&mut ram, &regs, 0x4000_2000, W), Ok((Success, 0x8000)));
        // A PDPTE with a reserved bit (R/W is reserved in PAE PDPTEs).
        ram.set64(0x3000 + 8, 0x4000 | 3);
        assert_eq!(
            walk(&mut ram, &regs, 0x4000_2000, R),
            Ok((InvalidPageTableFlags, 0))
        );
        // A table outside memory is the memory's error.
        ram.set64(0x3000 + 8, 0x10_0000 | 1);
        assert_eq!(walk(&mut ram, &regs, 0x4000_2000, R), Err(0x10_0000));
    }

    #[test]
    fn paging_off_is_identity() {
        let mut ram = Ram(vec![]);
        let regs = PagingRegisters::default();
        assert_eq!(
            walk(&mut ram, &regs, 0x1234_5678, W),
            Ok((Success, 0x1234_5000))
        );
    }
}
