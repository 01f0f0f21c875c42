//! A model machine for tests: a register file, RAM, MMIO devices, ports and page tables,
//! recording every callback hvemu makes, so a test reads as "state, bytes, expected state".
#![allow(dead_code)]

#[cfg(target_arch = "x86_64")]
pub mod native;

use std::collections::{BTreeMap, VecDeque};

use hvemu::*;

/// RAM size at GPA 0. Everything above is MMIO.
pub const RAM_SIZE: u64 = 0x20_0000;

/// One callback, as the model saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Get(Vec<RegisterName>),
    Set(Vec<(RegisterName, RegisterValue)>),
    Memory {
        gpa: u64,
        write: bool,
        data: Vec<u8>,
    },
    Io {
        port: u16,
        write: bool,
        size: u8,
        data: u32,
    },
    Translate {
        gva: u64,
        flags: TranslateGvaFlags,
    },
    /// A bulk offer the model accepted: `copy_memory` (`src` is `Some`), `fill_memory` or
    /// `io_port_string` (`port` is `Some`), with the lowest GPA and the length in bytes.
    Bulk {
        dst: u64,
        src: Option<u64>,
        port: Option<u16>,
        len: usize,
    },
    /// A `compare_exchange` offer and the model's answer (`None`: declined).
    CompareExchange {
        gpa: u64,
        expected: Vec<u8>,
        new: Vec<u8>,
        result: Option<bool>,
    },
}

/// One `compare_exchange` call: (gpa, expected, new, the model's answer).
pub type CompareExchangeCall = (u64, Vec<u8>, Vec<u8>, Option<bool>);

/// A page mapping: linear page → GPA page with permission bits.
#[derive(Clone, Copy, Debug)]
pub struct Pte {
    pub gpa: u64,
    pub writable: bool,
    pub user: bool,
    pub executable: bool,
}

/// Which callback to fail, for error-path tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fail {
    Io,
    Memory,
    /// Only memory writes fail (reads succeed), for read-modify-write tests.
    MemoryWrite,
    Get,
    Set,
    Translate,
}

#[derive(Clone, Debug)]
pub struct Machine {
    pub regs: RegisterFile,
    pub ram: Vec<u8>,
    /// MMIO bytes by GPA (reads of unset bytes return `mmio_fill`).
    pub mmio: BTreeMap<u64, u8>,
    pub mmio_fill: u8,
    /// Values IN returns, in order; when empty, IN returns `0xA5A5_A5A5`-ish per port.
    pub port_input: VecDeque<u32>,
    /// `None`: paging off (identity). `Some`: only mapped pages translate.
    pub pages: Option<BTreeMap<u64, Pte>>,
    /// Translation returns this GPA unaligned (for the status-bit test).
    pub misalign_translation: bool,
    pub fail: Option<Fail>,
    pub log: Vec<Call>,
    /// Whether the model performs `compare_exchange` on RAM (it always declines for MMIO).
    /// Off by default: the model then declines every offer, as a monitor without the method.
    pub atomic_ram: bool,
    /// Writes "another processor" makes just before each `compare_exchange`, one per call, so
    /// that the emulator's compare-exchange loses its race.
    pub racing_writes: VecDeque<(u64, Vec<u8>)>,
    /// Whether the model accepts the bulk callbacks (`copy_memory`, `fill_memory`,
    /// `io_port_string`) for RAM; it always declines MMIO. Off by default.
    pub bulk_ram: bool,
}

impl Machine {
    pub fn new(regs: RegisterFile) -> Self {
        Machine {
            regs,
            ram: vec![0; RAM_SIZE as usize],
            mmio: BTreeMap::new(),
            mmio_fill: 0xEE,
            port_input: VecDeque::new(),
            pages: None,
            misalign_translation: false,
            fail: None,
            log: Vec::new(),
            atomic_ram: false,
            racing_writes: VecDeque::new(),
            bulk_ram: false,
        }
    }

    pub fn real() -> Self {
        Self::new(RegisterFile::real_mode())
    }

    pub fn protected32() -> Self {
        Self::new(RegisterFile::protected_mode_32())
    }

    pub fn long() -> Self {
        Self::new(RegisterFile::long_mode())
    }

    /// Writes code at the current RIP (in CS) of RAM; returns the linear address.
    pub fn load_code(&mut self, bytes: &[u8]) -> u64 {
        let linear = self.regs.segment(Segment::Cs).base + self.regs.rip;
        let gpa = self.linear_to_gpa(linear).expect("code page mapped");
        self.write_phys(gpa, bytes);
        linear
    }

    pub fn linear_to_gpa(&self, linear: u64) -> Option<u64> {
        match &self.pages {
            None => Some(linear),
            Some(p) => p
                .get(&(linear & !0xFFF))
                .map(|pte| pte.gpa | (linear & 0xFFF)),
        }
    }

    pub fn map(&mut self, linear_page: u64, pte: Pte) {
        self.pages
            .get_or_insert_with(BTreeMap::new)
            .insert(linear_page, pte);
    }

    /// Identity-maps `count` pages from `start` as RW, supervisor, executable.
    pub fn identity(&mut self, start: u64, count: u64) {
        for i in 0..count {
            let page = (start & !0xFFF) + i * 0x1000;
            self.map(
                page,
                Pte {
                    gpa: page,
                    writable: true,
                    user: true,
                    executable: true,
                },
            );
        }
    }

    pub fn write_phys(&mut self, gpa: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let a = gpa + i as u64;
            if a < RAM_SIZE {
                self.ram[a as usize] = *b;
            } else {
                self.mmio.insert(a, *b);
            }
        }
    }

    pub fn read_phys(&self, gpa: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                let a = gpa + i;
                if a < RAM_SIZE {
                    self.ram[a as usize]
                } else {
                    *self.mmio.get(&a).unwrap_or(&self.mmio_fill)
                }
            })
            .collect()
    }

    pub fn gpr(&self, n: usize) -> u64 {
        self.regs.gpr(n)
    }

    pub fn set_gpr(&mut self, n: usize, v: u64) {
        self.regs.set_gpr(n, v)
    }

    /// Exit context for the instruction at RIP (length as the hypervisor reports it).
    pub fn exit(&self, len: u8) -> VpExitContext {
        self.regs.exit_context(len)
    }

    /// Emulates an MMIO exit on `bytes` (placed in the exit context) for an access at `gpa`.
    pub fn mmio(&mut self, bytes: &[u8], access: MemoryAccessType, gpa: u64) -> Outcome {
        let ctx = MemoryAccessContext::new(bytes, access, gpa);
        self.mmio_ctx(bytes.len() as u8, &ctx)
    }

    pub fn mmio_ctx(&mut self, len: u8, ctx: &MemoryAccessContext) -> Outcome {
        self.mmio_ctx_config(len, ctx, Config::default())
    }

    pub fn mmio_ctx_config(
        &mut self,
        len: u8,
        ctx: &MemoryAccessContext,
        config: Config,
    ) -> Outcome {
        let exit = self.exit(len.clamp(1, 15));
        let before = self.regs.clone();
        self.log.clear();
        let result = Emulator::with_config(&mut *self, config).emulate_mmio(&exit, ctx);
        Outcome::new(result, before, self)
    }

    /// Emulates a port exit; the context's registers are filled from the register file.
    pub fn io(&mut self, bytes: &[u8], info: IoPortAccessInfo, port: u16) -> Outcome {
        self.io_config(bytes, info, port, Config::default())
    }

    pub fn io_config(
        &mut self,
        bytes: &[u8],
        info: IoPortAccessInfo,
        port: u16,
        config: Config,
    ) -> Outcome {
        let mut ctx = IoPortAccessContext::new(bytes, info, port);
        ctx.rax = self.gpr(0);
        ctx.rcx = self.gpr(1);
        ctx.rsi = self.gpr(6);
        ctx.rdi = self.gpr(7);
        ctx.ds = self.regs.segment(Segment::Ds);
        ctx.es = self.regs.segment(Segment::Es);
        let exit = self.exit(bytes.len().clamp(1, 15) as u8);
        let before = self.regs.clone();
        self.log.clear();
        let result = Emulator::with_config(&mut *self, config).emulate_io(&exit, &ctx);
        Outcome::new(result, before, self)
    }

    pub fn memory_calls(&self) -> Vec<(u64, bool, Vec<u8>)> {
        self.log
            .iter()
            .filter_map(|c| match c {
                Call::Memory { gpa, write, data } => Some((*gpa, *write, data.clone())),
                _ => None,
            })
            .collect()
    }

    /// The `compare_exchange` calls.
    pub fn compare_exchanges(&self) -> Vec<CompareExchangeCall> {
        self.log
            .iter()
            .filter_map(|c| match c {
                Call::CompareExchange {
                    gpa,
                    expected,
                    new,
                    result,
                } => Some((*gpa, expected.clone(), new.clone(), *result)),
                _ => None,
            })
            .collect()
    }

    pub fn io_calls(&self) -> Vec<(u16, bool, u8, u32)> {
        self.log
            .iter()
            .filter_map(|c| match c {
                Call::Io {
                    port,
                    write,
                    size,
                    data,
                } => Some((*port, *write, *size, *data)),
                _ => None,
            })
            .collect()
    }

    pub fn count(&self, pred: impl Fn(&Call) -> bool) -> usize {
        self.log.iter().filter(|c| pred(c)).count()
    }

    pub fn gets(&self) -> usize {
        self.count(|c| matches!(c, Call::Get(_)))
    }

    pub fn sets(&self) -> usize {
        self.count(|c| matches!(c, Call::Set(_)))
    }

    pub fn translations(&self) -> Vec<(u64, TranslateGvaFlags)> {
        self.log
            .iter()
            .filter_map(|c| match c {
                Call::Translate { gva, flags } => Some((*gva, *flags)),
                _ => None,
            })
            .collect()
    }
}

impl Machine {
    /// Whether the model takes a bulk offer over `len` bytes at each of `starts`: only with
    /// `bulk_ram`, only RAM. Each range must lie within one page.
    fn takes_bulk(&self, starts: &[u64], len: usize) -> Result<bool, &'static str> {
        let len = len as u64;
        if !self.bulk_ram || starts.iter().any(|a| a + len > RAM_SIZE) {
            return Ok(false);
        }
        if self.fail == Some(Fail::Memory) {
            return Err("memory failed");
        }
        for a in starts {
            assert_eq!(
                a >> 12,
                (a + len - 1) >> 12,
                "bulk range at {a:#x} crosses a page"
            );
        }
        Ok(true)
    }
}

/// What an emulation returned, with the register file before it.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Completion, EmulationError<&'static str>>,
    pub before: RegisterFile,
}

impl Outcome {
    fn new(
        result: Result<Completion, EmulationError<&'static str>>,
        before: RegisterFile,
        m: &Machine,
    ) -> Self {
        if result.is_err() {
            // All or nothing: a failure commits no register.
            assert_eq!(
                m.regs, before,
                "failed emulation changed registers: {result:?}"
            );
            assert_eq!(m.count(|c| matches!(c, Call::Set(_))), 0);
        }
        Outcome { result, before }
    }

    #[track_caller]
    pub fn ok(&self) {
        assert_eq!(self.result, Ok(Completion::Complete));
    }

    #[track_caller]
    pub fn exception(&self) -> Exception {
        match &self.result {
            Err(EmulationError::Exception(e)) => *e,
            other => panic!("expected an exception, got {other:?}"),
        }
    }
}

impl EmulatorCallbacks for Machine {
    type Error = &'static str;

    fn io_port(&mut self, access: &mut IoAccessInfo) -> Result<(), Self::Error> {
        if self.fail == Some(Fail::Io) {
            return Err("io failed");
        }
        assert!(matches!(access.access_size, 1 | 2 | 4));
        if access.direction == AccessDirection::Read {
            access.data = self
                .port_input
                .pop_front()
                .unwrap_or(0xA5A5_A500 | u32::from(access.port as u8));
        }
        self.log.push(Call::Io {
            port: access.port,
            write: access.direction == AccessDirection::Write,
            size: access.access_size,
            data: access.data,
        });
        Ok(())
    }

    fn memory(&mut self, access: &mut MemoryAccessInfo<'_>) -> Result<(), Self::Error> {
        if self.fail == Some(Fail::Memory) {
            return Err("memory failed");
        }
        if self.fail == Some(Fail::MemoryWrite) && access.direction == AccessDirection::Write {
            return Err("memory write failed");
        }
        let len = access.data.len();
        assert!((1..=64).contains(&len), "access size {len}");
        let gpa = access.gpa_address;
        assert_eq!(
            gpa >> 12,
            (gpa + (len as u64 - 1)) >> 12,
            "access crosses a page"
        );
        let write = access.direction == AccessDirection::Write;
        if write {
            let data = access.data.to_vec();
            self.write_phys(gpa, &data);
        } else {
            let data = self.read_phys(gpa, len);
            access.data.copy_from_slice(&data);
        }
        self.log.push(Call::Memory {
            gpa,
            write,
            data: access.data.to_vec(),
        });
        Ok(())
    }

    fn get_registers(
        &mut self,
        names: &[RegisterName],
        values: &mut [RegisterValue],
    ) -> Result<(), Self::Error> {
        self.log.push(Call::Get(names.to_vec()));
        if self.fail == Some(Fail::Get) {
            return Err("get failed");
        }
        self.regs.get(names, values).map_err(|_| "unknown register")
    }

    fn set_registers(
        &mut self,
        names: &[RegisterName],
        values: &[RegisterValue],
    ) -> Result<(), Self::Error> {
        if self.fail == Some(Fail::Set) {
            return Err("set failed");
        }
        self.log.push(Call::Set(
            names.iter().copied().zip(values.iter().copied()).collect(),
        ));
        self.regs.set(names, values).map_err(|_| "unknown register")
    }

    fn translate_gva_page(
        &mut self,
        gva_page: u64,
        flags: TranslateGvaFlags,
    ) -> Result<(TranslateGvaResult, u64), Self::Error> {
        assert_eq!(gva_page & 0xFFF, 0, "unaligned page asked for");
        self.log.push(Call::Translate {
            gva: gva_page,
            flags,
        });
        if self.fail == Some(Fail::Translate) {
            return Err("translate failed");
        }
        let Some(pages) = &self.pages else {
            let gpa = if self.misalign_translation {
                gva_page | 4
            } else {
                gva_page
            };
            return Ok((TranslateGvaResult::Success, gpa));
        };
        let Some(pte) = pages.get(&gva_page) else {
            return Ok((TranslateGvaResult::PageNotPresent, 0));
        };
        let user = self.regs.exit_context(1).execution_state.cpl == 3
            && !flags.contains(TranslateGvaFlags::PRIVILEGE_EXEMPT);
        let denied = (flags.contains(TranslateGvaFlags::VALIDATE_WRITE) && !pte.writable)
            || (flags.contains(TranslateGvaFlags::VALIDATE_EXECUTE) && !pte.executable)
            || (user && !pte.user);
        if denied {
            return Ok((TranslateGvaResult::PrivilegeViolation, 0));
        }
        let result = if pte.gpa >= RAM_SIZE {
            TranslateGvaResult::GpaUnmapped
        } else {
            TranslateGvaResult::Success
        };
        Ok((result, pte.gpa))
    }

    fn copy_memory(&mut self, dst: u64, src: u64, len: usize) -> Result<bool, Self::Error> {
        if !self.takes_bulk(&[dst, src], len)? {
            return Ok(false);
        }
        assert!(dst.abs_diff(src) >= len as u64, "overlapping copy offered");
        let data = self.read_phys(src, len);
        self.write_phys(dst, &data);
        self.log.push(Call::Bulk {
            dst,
            src: Some(src),
            port: None,
            len,
        });
        Ok(true)
    }

    fn fill_memory(&mut self, dst: u64, element: &[u8], count: usize) -> Result<bool, Self::Error> {
        let len = element.len() * count;
        if !self.takes_bulk(&[dst], len)? {
            return Ok(false);
        }
        let data: Vec<u8> = element.iter().copied().cycle().take(len).collect();
        self.write_phys(dst, &data);
        self.log.push(Call::Bulk {
            dst,
            src: None,
            port: None,
            len,
        });
        Ok(true)
    }

    fn io_port_string(&mut self, access: &StringIoAccess) -> Result<bool, Self::Error> {
        let size = u64::from(access.access_size);
        let len = size * u64::from(access.count);
        if !self.bulk_ram || access.gpa + len > RAM_SIZE {
            return Ok(false);
        }
        assert_eq!(
            access.gpa >> 12,
            (access.gpa + len - 1) >> 12,
            "batch crosses a page"
        );
        for i in 0..access.count {
            let gpa = access.element_gpa(i);
            let mut io = IoAccessInfo {
                direction: access.direction,
                port: access.port,
                access_size: access.access_size,
                data: 0,
            };
            if access.direction == AccessDirection::Write {
                let mut word = [0u8; 4];
                word[..size as usize].copy_from_slice(&self.read_phys(gpa, size as usize));
                io.data = u32::from_le_bytes(word);
                self.io_port(&mut io)?;
            } else {
                self.io_port(&mut io)?;
                self.write_phys(gpa, &io.data.to_le_bytes()[..size as usize]);
            }
        }
        self.log.push(Call::Bulk {
            dst: access.gpa,
            src: None,
            port: Some(access.port),
            len: len as usize,
        });
        Ok(true)
    }

    fn compare_exchange(
        &mut self,
        gpa: u64,
        expected: &[u8],
        new: &[u8],
        current: &mut [u8],
    ) -> Result<Option<bool>, Self::Error> {
        if self.fail == Some(Fail::Memory) {
            return Err("compare_exchange failed");
        }
        let len = expected.len();
        assert!(
            matches!(len, 1 | 2 | 4 | 8 | 16),
            "compare_exchange size {len}"
        );
        assert_eq!(new.len(), len);
        assert_eq!(current.len(), len);
        assert_eq!(
            gpa >> 12,
            (gpa + (len as u64 - 1)) >> 12,
            "compare_exchange crosses a page"
        );
        if let Some((at, bytes)) = self.racing_writes.pop_front() {
            self.write_phys(at, &bytes);
        }
        let result = if self.atomic_ram && gpa < RAM_SIZE && RAM_SIZE - gpa >= len as u64 {
            let found = self.read_phys(gpa, len);
            current.copy_from_slice(&found);
            if found == expected {
                self.write_phys(gpa, new);
                Some(true)
            } else {
                Some(false)
            }
        } else {
            None
        };
        self.log.push(Call::CompareExchange {
            gpa,
            expected: expected.to_vec(),
            new: new.to_vec(),
            result,
        });
        Ok(result)
    }
}

/// A monitor with only the five required callbacks (no `compare_exchange`), backed by a
/// [`Machine`]: what hvemu sees from a monitor that predates the provided methods.
pub struct Basic<'a>(pub &'a mut Machine);

impl EmulatorCallbacks for Basic<'_> {
    type Error = &'static str;

    fn io_port(&mut self, access: &mut IoAccessInfo) -> Result<(), Self::Error> {
        self.0.io_port(access)
    }

    fn memory(&mut self, access: &mut MemoryAccessInfo<'_>) -> Result<(), Self::Error> {
        self.0.memory(access)
    }

    fn get_registers(
        &mut self,
        names: &[RegisterName],
        values: &mut [RegisterValue],
    ) -> Result<(), Self::Error> {
        self.0.get_registers(names, values)
    }

    fn set_registers(
        &mut self,
        names: &[RegisterName],
        values: &[RegisterValue],
    ) -> Result<(), Self::Error> {
        self.0.set_registers(names, values)
    }

    fn translate_gva_page(
        &mut self,
        gva_page: u64,
        flags: TranslateGvaFlags,
    ) -> Result<(TranslateGvaResult, u64), Self::Error> {
        self.0.translate_gva_page(gva_page, flags)
    }
}

/// Segment attribute helpers.
pub fn seg(base: u64, limit: u32, selector: u16, attributes: u16) -> SegmentRegister {
    SegmentRegister {
        base,
        limit,
        selector,
        attributes: SegmentAttributes::from_bits_retain(attributes),
    }
}

/// Assembles one instruction with iced's code assembler at `bitness`.
pub fn asm(
    bitness: u32,
    f: impl FnOnce(&mut iced_x86::code_asm::CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Vec<u8> {
    let mut a = iced_x86::code_asm::CodeAssembler::new(bitness).unwrap();
    f(&mut a).unwrap();
    a.assemble(0).unwrap()
}
