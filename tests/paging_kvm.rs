//! hvemu's software page walker against KVM's own walk (KVM_TRANSLATE) on real guest page
//! tables: the same presence and the same GPA, page by page. KVM_TRANSLATE reports no
//! permissions (its `writeable` is always 1, `usermode` always 0), so write, user and execute
//! permission are checked against the leaf entry the harness wrote.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod kvm;

use hvemu::paging::{GuestPhysical, PagingRegisters, walk};
use hvemu::{TranslateGvaFlags, TranslateGvaResult};
use kvm::{GuestMemory, Mode, PageFlags};

struct Ram<'a>(&'a mut GuestMemory);

impl GuestPhysical for Ram<'_> {
    type Error = ();
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        self.0.read_into(gpa, buf);
        Ok(())
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), ()> {
        self.0.write(gpa, buf);
        Ok(())
    }
}

#[test]
fn walker_agrees_with_kvm_translate() {
    let test = "walker_agrees_with_kvm_translate";
    let Some(kvm) = kvm::require_kvm_or_skip(test) else {
        return;
    };
    for mode in [Mode::Long64, Mode::User64, Mode::Paged32, Mode::Pae32] {
        let Some(mut g) = kvm::guest_or_skip(&kvm, mode, test) else {
            continue;
        };
        // A spread of leaf permissions at otherwise unused addresses, some aliasing MMIO.
        let base = 0x0100_0000u64;
        let flags = [
            PageFlags::RW,
            PageFlags::RO,
            PageFlags::RW.user(),
            PageFlags::RO.user(),
            PageFlags::NOT_PRESENT,
        ];
        let nx = mode != Mode::Paged32;
        for i in 0..64u64 {
            let mut f = flags[(i % 5) as usize];
            if nx && i % 3 == 0 {
                f = f.no_exec();
            }
            let gpa = if i % 4 == 0 {
                0xC000_0000 + i * 0x1000
            } else {
                0x20_0000 + i * 0x1000
            };
            g.map_page(base + i * 0x1000, gpa, f);
        }
        let s = g.vcpu.sregs();
        let regs = PagingRegisters {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            rflags: 2,
            cpl: 0,
            pkru: 0,
            max_phys_bits: 0,
        };
        let mut compared = 0;
        let probes = (0..64u64).map(|i| base + i * 0x1000 + 0x123).chain([
            0x1_0000,    // code
            0x2_0456,    // data
            0xC000_0010, // identity-mapped MMIO
            0x7FFF_0000, // unmapped
            0x0200_0000, // unmapped
        ]);
        for gva in probes {
            let kvm_view = g.vcpu.translate(gva);
            let mut ram = Ram(&mut g.mem);
            let read = TranslateGvaFlags::VALIDATE_READ;
            let write = TranslateGvaFlags::VALIDATE_WRITE;
            let ours = walk(&mut ram, &regs, gva, read).unwrap();
            let user = PagingRegisters { cpl: 3, ..regs };
            let exec = TranslateGvaFlags::VALIDATE_EXECUTE;
            let ok = |r: (TranslateGvaResult, u64)| r.0 == TranslateGvaResult::Success;
            let ours_w = ok(walk(&mut ram, &regs, gva, write).unwrap());
            let ours_u = ok(walk(&mut ram, &user, gva, read).unwrap());
            let ours_x = ok(walk(&mut ram, &regs, gva, exec).unwrap());
            let at = format!("{mode:?} {gva:#x}");
            match kvm_view {
                None => assert_eq!(ours.0, TranslateGvaResult::PageNotPresent, "{at}"),
                Some((gpa, _, _)) => {
                    assert_eq!(ours, (TranslateGvaResult::Success, gpa & !0xFFF), "{at}");
                    let pt = g.paging.as_ref().unwrap();
                    let (_, leaf) = pt.lookup(&g.mem, gva).unwrap();
                    assert_eq!(ours_w, leaf & 2 != 0, "{at}: write with CR0.WP");
                    assert_eq!(ours_u, leaf & 4 != 0, "{at}: user read");
                    assert_eq!(ours_x, leaf >> 63 == 0, "{at}: execute");
                }
            }
            compared += 1;
        }
        println!("{mode:?}: {compared} addresses agree with KVM_TRANSLATE");
        assert!(compared > 60);
    }
}
