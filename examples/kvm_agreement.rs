//! hvemu and KVM side by side: boots a small guest under KVM in three CPU modes, lets hvemu
//! emulate every instruction that exits on MMIO or a port (from the same pre-instruction
//! state, with the same device data), and prints a per-instruction agreement report.
//!
//! ```text
//! cargo run --example kvm_agreement
//! ```
//!
//! Needs `/dev/kvm` (run as root); without it the example says so and exits successfully. The
//! differential driver it uses is the one behind `tests/kvm_diff.rs`
//! (`tests/kvm_diff/driver.rs`): the guest is single-stepped so that the state before each
//! instruction is known, hvemu runs at the instruction's first device exit, and KVM's reads
//! are answered with the data hvemu's reads got.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[path = "../tests/kvm/mod.rs"]
mod kvm;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[path = "../tests/kvm_diff/driver.rs"]
mod driver;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() {
    use driver::{KvmOutcome, Options, Session, Verdict};
    use kvm::Mode;

    let kvm = match kvm::Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            println!("kvm_agreement: /dev/kvm is not available ({e}); nothing to compare.");
            println!("Run as root on a Linux host with KVM to see hvemu checked against KVM.");
            return;
        }
    };
    hvemu::warm_up();
    let mut total = 0;
    let mut agree = 0;
    let mut exits = 0;
    for mode in [Mode::Real, Mode::Protected32, Mode::Long64] {
        let mut g = match kvm::Guest::try_new(&kvm, mode) {
            Ok(g) => g,
            Err(e) => {
                println!("{mode:?}: host KVM cannot run this mode ({e}); skipped");
                continue;
            }
        };
        program::load(&mut g);
        let mut session = Session::new(&mut g, Options::default());
        let reports = session.run_program(1000);
        println!();
        println!("== {mode:?} ({}-bit code) ==", mode.bitness());
        for r in &reports {
            let verdict = match &r.verdict {
                Verdict::Agree => "AGREE".to_string(),
                Verdict::Disagree(_) => "DISAGREE".to_string(),
                Verdict::KvmCannotJudge(why) => format!("KVM CANNOT JUDGE ({why})"),
            };
            println!("{:#07x}  {:<34} {verdict}", r.rip, r.text);
            println!(
                "         accesses: {}",
                driver::describe_accesses(&r.kvm_accesses)
            );
            let sets = driver::describe_sets(&r.hv.sets);
            println!(
                "         hvemu set: {}",
                if sets.is_empty() { "-".into() } else { sets }
            );
            if let KvmOutcome::Exception(rec, _) = &r.kvm {
                println!(
                    "         guest took vector {} (error code {:#x})",
                    rec.vector, rec.error_code
                );
            }
            if let Verdict::Disagree(d) = &r.verdict {
                for line in d {
                    println!("         ! {line}");
                }
            }
            for note in &r.notes {
                println!("         note: {note}");
            }
        }
        let st = &session.stats;
        println!(
            "-- {mode:?}: {} instructions with device accesses, {} KVM exits, {} agree",
            st.instructions, st.kvm_exits, st.agree
        );
        total += st.instructions;
        agree += st.agree;
        exits += st.kvm_exits;
    }
    println!();
    println!("{agree} of {total} instructions agree ({exits} KVM device exits compared).");
    if agree != total {
        std::process::exit(1);
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod program {
    //! The guest: a toy device driver. It polls a status register, accumulates it into a
    //! counter (read-modify-write on MMIO), reads a device ID, copies a buffer into the
    //! device with REP MOVSD, prints a greeting through a UART with REP OUTSB, reads a port
    //! into memory with INSW, pokes the POST port, and clears a descriptor ring backwards.
    use crate::kvm::{Guest, Mode, layout};
    use iced_x86::code_asm::*;

    pub fn load(g: &mut Guest) {
        let real = g.mode == Mode::Real;
        // Real mode reaches the low MMIO hole through FS; DS points at the program's data.
        let (mmio, data) = if real {
            (0u32, 0x2000u32)
        } else {
            (layout::HIGH_MMIO as u32, layout::DATA as u32)
        };
        let data_linear = if real { 0x1_2000 } else { layout::DATA };
        g.mem.write(data_linear, b"hello from the guest\n");
        let mut a = g.asm();
        let wide = g.mode.bitness() == 64;
        let m = |size: fn(AsmMemoryOperand) -> AsmMemoryOperand, off: i32| {
            if wide {
                size(rbx + off)
            } else if real {
                size(ebx + off).fs()
            } else {
                size(ebx + off)
            }
        };
        let dw = |x: AsmMemoryOperand| dword_ptr(x);
        let w = |x: AsmMemoryOperand| word_ptr(x);
        let mut step = || -> Result<(), IcedError> {
            if real {
                a.mov(ax, (layout::LOW_MMIO >> 4) as u32)?;
                a.mov(fs, ax)?;
                a.mov(es, ax)?;
                a.mov(ax, 0x1000u32)?;
                a.mov(ds, ax)?;
            }
            a.mov(ebx, mmio)?;
            a.mov(ecx, 3u32)?;
            let mut poll = a.create_label();
            a.set_label(&mut poll)?;
            a.mov(eax, m(dw, 0x10))?; // status
            a.add(m(dw, 0x20), eax)?; // counter += status
            a.dec(ecx)?;
            a.jnz(poll)?;
            a.movzx(edx, m(w, 0x32))?; // device ID
            a.mov(esi, data)?;
            a.mov(edi, mmio + 0x100)?;
            a.mov(ecx, 4u32)?;
            a.cld()?;
            a.rep().movsd()?; // buffer -> device
            a.mov(dx, 0x3F8u32)?;
            a.mov(esi, data)?;
            a.mov(ecx, 21u32)?;
            a.rep().outsb()?; // greeting -> UART
            if real {
                a.push(ds)?;
                a.pop(es)?;
            }
            a.mov(edi, data + 0x100)?;
            a.insw()?; // UART -> memory
            a.out(0x80, al)?; // POST code
            if real {
                a.mov(ax, (layout::LOW_MMIO >> 4) as u32)?;
                a.mov(es, ax)?;
            }
            a.std()?;
            a.mov(edi, mmio + 0x20C)?;
            a.mov(ecx, 3u32)?;
            a.xor(eax, eax)?;
            a.rep().stosd()?; // clear the ring, backwards
            a.cld()?;
            a.hlt()
        };
        step().expect("assemble the guest");
        g.load_asm(&mut a);
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {
    println!("kvm_agreement: needs Linux KVM on x86-64; nothing to compare on this host.");
}
