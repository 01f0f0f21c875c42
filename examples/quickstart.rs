//! hvemu end to end: a toy monitor with RAM, a UART-like port device and an MMIO register
//! block emulates four exits a real guest produces, and prints what the devices saw.
//!
//! Run with `cargo run --example quickstart`.

use hvemu::*;

/// The monitor: guest registers, 64 KiB of RAM at GPA 0, an MMIO block at 0xFEB0_0000 and a
/// serial port at 0x3F8. Paging is off in the guest, so translation is the identity.
struct Monitor {
    regs: RegisterFile,
    ram: Vec<u8>,
    mmio_regs: [u32; 4],
    serial: Vec<u8>,
    log: Vec<String>,
}

const MMIO_BASE: u64 = 0xFEB0_0000;

impl EmulatorCallbacks for Monitor {
    type Error = String;

    fn io_port(&mut self, access: &mut IoAccessInfo) -> Result<(), String> {
        match (access.port, access.direction) {
            (0x3F8, AccessDirection::Write) => self.serial.push(access.data as u8),
            (0x3FD, AccessDirection::Read) => access.data = 0x60, // line status: ready
            (port, dir) => return Err(format!("no device at port {port:#x} ({dir:?})")),
        }
        self.log.push(format!(
            "  io_port  {:?} port {:#x} size {} data {:#x}",
            access.direction, access.port, access.access_size, access.data
        ));
        Ok(())
    }

    fn memory(&mut self, access: &mut MemoryAccessInfo<'_>) -> Result<(), String> {
        let gpa = access.gpa_address;
        if gpa >= MMIO_BASE && gpa + access.data.len() as u64 <= MMIO_BASE + 16 {
            let index = ((gpa - MMIO_BASE) / 4) as usize;
            match access.direction {
                AccessDirection::Write => {
                    let mut bytes = [0u8; 4];
                    bytes[..access.data.len()].copy_from_slice(access.data);
                    self.mmio_regs[index] = u32::from_le_bytes(bytes);
                }
                AccessDirection::Read => {
                    let bytes = self.mmio_regs[index].to_le_bytes();
                    let n = access.data.len();
                    access.data.copy_from_slice(&bytes[..n]);
                }
            }
            self.log.push(format!(
                "  memory   {:?} MMIO {gpa:#x} {:02x?}",
                access.direction, access.data
            ));
            return Ok(());
        }
        let ram = self
            .ram
            .get_mut(gpa as usize..gpa as usize + access.data.len())
            .ok_or_else(|| format!("no memory at {gpa:#x}"))?;
        match access.direction {
            AccessDirection::Read => access.data.copy_from_slice(ram),
            AccessDirection::Write => ram.copy_from_slice(access.data),
        }
        self.log.push(format!(
            "  memory   {:?} RAM  {gpa:#x} {:02x?}",
            access.direction, access.data
        ));
        Ok(())
    }

    fn get_registers(
        &mut self,
        names: &[RegisterName],
        values: &mut [RegisterValue],
    ) -> Result<(), String> {
        self.log.push(format!("  get_registers {names:?}"));
        self.regs.get(names, values).map_err(|e| format!("{e:?}"))
    }

    fn set_registers(
        &mut self,
        names: &[RegisterName],
        values: &[RegisterValue],
    ) -> Result<(), String> {
        self.log.push(format!("  set_registers {names:?}"));
        self.regs.set(names, values).map_err(|e| format!("{e:?}"))
    }

    fn translate_gva_page(
        &mut self,
        gva_page: u64,
        flags: TranslateGvaFlags,
    ) -> Result<(TranslateGvaResult, u64), String> {
        self.log
            .push(format!("  translate {gva_page:#x} {flags:?}"));
        Ok((TranslateGvaResult::Success, gva_page))
    }
}

impl Monitor {
    /// Places `code` at RIP and describes it as the exit would (bytes included).
    fn place(&mut self, code: &[u8]) -> (VpExitContext, [u8; 16], u8) {
        let rip = self.regs.rip as usize;
        self.ram[rip..rip + code.len()].copy_from_slice(code);
        let mut bytes = [0u8; 16];
        bytes[..code.len()].copy_from_slice(code);
        (
            self.regs.exit_context(code.len() as u8),
            bytes,
            code.len() as u8,
        )
    }

    fn report(&mut self, title: &str, status: Result<EmulatorStatus, InvalidArgument>) {
        println!("{title}");
        for line in self.log.drain(..) {
            println!("{line}");
        }
        let r = &self.regs;
        println!(
            "  -> {status:?}; rax={:#x} rcx={:#x} rsi={:#x} rip={:#x}\n",
            r.gpr(0),
            r.gpr(1),
            r.gpr(6),
            r.rip
        );
    }
}

fn main() {
    hvemu::warm_up(); // build iced-x86's tables now, not on the first exit

    let mut monitor = Monitor {
        regs: RegisterFile::protected_mode_32(),
        ram: vec![0; 0x10000],
        mmio_regs: [0; 4],
        serial: Vec::new(),
        log: Vec::new(),
    };
    monitor.regs.rip = 0x1000;

    // 1. MMIO write: `mov dword [ebx+8], 0x12345678`, the exit carries bytes and GPA.
    monitor.regs.set_gpr(3, MMIO_BASE);
    let (exit, bytes, n) = monitor.place(&[0xC7, 0x43, 0x08, 0x78, 0x56, 0x34, 0x12]);
    let mmio = MemoryAccessContext {
        instruction_byte_count: n,
        instruction_bytes: bytes,
        access_info: MemoryAccessFlags {
            access_type: MemoryAccessType::Write,
            gpa_unmapped: true,
            gva_valid: true,
        },
        gpa: MMIO_BASE + 8,
        gva: MMIO_BASE + 8,
    };
    let status = Emulator::new(&mut monitor).try_mmio_emulation(&exit, &mmio);
    monitor.report("mov dword [ebx+8], 0x12345678   (MMIO write)", status);

    // 2. MMIO read: `movzx eax, word [ebx+8]`, with no bytes in the exit: hvemu fetches them.
    let (exit, _, _) = monitor.place(&[0x0F, 0xB7, 0x43, 0x08]);
    let mmio = MemoryAccessContext::new(&[], MemoryAccessType::Read, MMIO_BASE + 8);
    let status = Emulator::new(&mut monitor).try_mmio_emulation(&exit, &mmio);
    monitor.report(
        "movzx eax, word [ebx+8]          (MMIO read, bytes fetched)",
        status,
    );

    // 3. Port OUT: `out dx, al` with DX = 0x3F8. The port exit carries RAX: no register read.
    monitor.regs.set_gpr(0, u64::from(b'>'));
    let (exit, bytes, n) = monitor.place(&[0xEE]);
    let mut io = IoPortAccessContext::new(
        &bytes[..usize::from(n)],
        IoPortAccessInfo::new(true, 1),
        0x3F8,
    );
    io.rax = monitor.regs.gpr(0);
    let status = Emulator::new(&mut monitor).try_io_emulation(&exit, &io);
    monitor.report("out dx, al                       (port write)", status);

    // 4. REP OUTSB: `rep outsb` sends a string from RAM to the serial port.
    let text = b"hello from hvemu\n";
    monitor.ram[0x2000..0x2000 + text.len()].copy_from_slice(text);
    monitor.regs.set_gpr(6, 0x2000);
    monitor.regs.set_gpr(1, text.len() as u64);
    let (exit, bytes, n) = monitor.place(&[0xF3, 0x6E]);
    let mut io = IoPortAccessContext::new(
        &bytes[..usize::from(n)],
        IoPortAccessInfo::string(true, 1, true),
        0x3F8,
    );
    (io.rcx, io.rsi, io.ds, io.es) = (
        monitor.regs.gpr(1),
        monitor.regs.gpr(6),
        monitor.regs.segment(Segment::Ds),
        monitor.regs.segment(Segment::Es),
    );
    let status = Emulator::new(&mut monitor).try_io_emulation(&exit, &io);
    let log_len = monitor.log.len();
    monitor.log.truncate(4);
    monitor
        .log
        .push(format!("  ... ({} callbacks in all)", log_len));
    monitor.report(
        "rep outsb                        (string port write)",
        status,
    );

    println!("MMIO registers: {:#010x?}", monitor.mmio_regs);
    println!(
        "serial port received: {:?}",
        String::from_utf8_lossy(&monitor.serial)
    );
    assert_eq!(monitor.mmio_regs[2], 0x1234_5678);
    assert_eq!(monitor.serial, b">hello from hvemu\n");
}
