//! The cost of one emulated exit, next to the cost of just decoding its instruction.
//!
//! Every case hands hvemu an exit that carries the instruction bytes (and, for memory exits,
//! the GPA with a valid GVA equal to it: identity paging) to callbacks that do as little as a
//! monitor can: registers in a [`RegisterFile`], guest RAM in a `Vec`, a port that answers a
//! constant, `translate_gva_page` the identity. Each case is a criterion group with these
//! functions:
//!
//! * `decode`: the floor, `iced_x86::Decoder::new` + `decode_out` of the same bytes (the
//!   decoder is constructed every iteration, as hvemu does per exit);
//! * `hvemu`: the whole `Emulator::emulate_mmio` / `emulate_io`, callbacks included, for a
//!   monitor that keeps no [`DecodeCache`]: every exit decodes;
//! * `hvemu-cached` (single instructions only): the same for a monitor that keeps one, so that
//!   every exit but the first finds its instruction decoded (`RATIO-CACHED` lines).
//!
//! Before its group, each case is emulated once outside the timing: it must complete, and the
//! callbacks it made are printed by kind (`CALLBACKS` lines). After each group the ratio of
//! the medians is printed (`RATIO` lines), read back from criterion's
//! `target/criterion/<group>/<function>/new/estimates.json`. The REP cases also print the
//! median per element (`PER-ELEMENT`); the element-by-element REP cases are compared with
//! their callbacks alone (group `callbacks-only`, `BEYOND-CALLBACKS`), and the bulk REP MOVSB
//! with a plain `copy_from_slice` of the same size (group `memcpy-64k`, `BANDWIDTH`). Lines
//! are printed only for groups this run measured (under `--profile-time` or a filter, fewer).
//!
//! ```sh
//! cargo bench --bench exits
//! cargo bench --bench exits --features lean-decoder   # no VEX/EVEX: the YMM case is skipped
//! python3 benches/table.py bench.log                   # the markdown table (see BENCHMARKS.md)
//! ```

use std::fmt;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hvemu::{
    AccessDirection, Completion, Config, DecodeCache, EmulationError, Emulator, EmulatorCallbacks,
    IoAccessInfo, IoPortAccessContext, IoPortAccessInfo, MemoryAccessContext, MemoryAccessInfo,
    MemoryAccessType, RegisterFile, RegisterFileError, RegisterName, RegisterValue, Segment,
    StringIoAccess, TranslateGvaFlags, TranslateGvaResult, VpExitContext,
};
use iced_x86::{Decoder, DecoderOptions, Instruction};

/// Guest RAM: 256 KiB at GPA 0, plus a page of slack. Addresses are not folded: an access
/// outside the buffer is an error.
const RAM_SIZE: usize = 0x4_0000 + 0x1000;

/// What the port answers to IN.
const PORT_VALUE: u32 = 0xA5A5_A5A5;

// General-purpose register numbers.
const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RBX: usize = 3;
const RSI: usize = 6;
const RDI: usize = 7;

/// Callbacks made, by kind. The bulk kinds count every offer, accepted or declined.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    get: u64,
    set: u64,
    memory: u64,
    io: u64,
    translate: u64,
    copy: u64,
    fill: u64,
    io_string: u64,
    /// Bulk offers declined (`Ok(false)`).
    declined: u64,
    /// Bytes moved by accepted bulk offers.
    bulk_bytes: u64,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "get {}, set {}, memory {}, io {}, translate {}, copy {}, fill {}, io_string {}",
            self.get,
            self.set,
            self.memory,
            self.io,
            self.translate,
            self.copy,
            self.fill,
            self.io_string
        )?;
        if self.copy + self.fill + self.io_string != 0 {
            write!(
                f,
                " ({} B bulk, {} declined)",
                self.bulk_bytes, self.declined
            )?;
        }
        Ok(())
    }
}

/// What the callbacks report.
enum VcpuError {
    Registers(RegisterFileError),
    /// A memory access outside the RAM buffer.
    Unmapped {
        gpa: u64,
        len: usize,
    },
}

impl fmt::Debug for VcpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VcpuError::Registers(e) => write!(f, "register file: {e:?}"),
            VcpuError::Unmapped { gpa, len } => write!(f, "{len} bytes at GPA {gpa:#x} unmapped"),
        }
    }
}

/// A processor with its registers in a file and RAM in a buffer.
struct Vcpu {
    regs: RegisterFile,
    ram: Vec<u8>,
    /// Whether `copy_memory`, `fill_memory` and `io_port_string` do the work; when clear they
    /// decline, as the trait's defaults do.
    bulk: bool,
    /// The decode cache offered to hvemu, when the case runs warm.
    decoded: Option<DecodeCache>,
}

impl Vcpu {
    fn new(regs: RegisterFile) -> Self {
        Vcpu {
            regs,
            ram: vec![0x5A; RAM_SIZE],
            bulk: false,
            decoded: None,
        }
    }

    /// The RAM behind `len` bytes at `gpa`, if all of it is RAM.
    fn ram_range(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.ram.len()).then_some(start..end)
    }

    /// The device behind every port: reads a constant, swallows writes.
    #[inline(always)]
    fn port_read(_port: u16) -> u32 {
        PORT_VALUE
    }

    #[inline(always)]
    fn port_write(port: u16, data: u32) {
        black_box((port, data));
    }
}

/// Copies `src` into `dst` (same length) with a fixed-size copy for the common sizes.
#[inline(always)]
fn copy_small(dst: &mut [u8], src: &[u8]) {
    #[inline(always)]
    fn fixed<const N: usize>(dst: &mut [u8], src: &[u8]) {
        if let (Ok(d), Ok(s)) = (<&mut [u8; N]>::try_from(dst), <&[u8; N]>::try_from(src)) {
            *d = *s;
        }
    }
    match dst.len() {
        1 => fixed::<1>(dst, src),
        2 => fixed::<2>(dst, src),
        4 => fixed::<4>(dst, src),
        8 => fixed::<8>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// A port element (1, 2 or 4 bytes, little-endian) as the port sees it.
#[inline(always)]
fn load_le(bytes: &[u8]) -> u32 {
    match *bytes {
        [a] => u32::from(a),
        [a, b] => u32::from(u16::from_le_bytes([a, b])),
        [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// Stores the low `dst.len()` bytes (1, 2 or 4) of a port value.
#[inline(always)]
fn store_le(dst: &mut [u8], value: u32) {
    match dst {
        [a] => *a = value as u8,
        [a, b] => [*a, *b] = (value as u16).to_le_bytes(),
        [a, b, c, d] => [*a, *b, *c, *d] = value.to_le_bytes(),
        _ => {}
    }
}

impl EmulatorCallbacks for Vcpu {
    type Error = VcpuError;

    fn decode_cache(&mut self) -> Option<&mut DecodeCache> {
        self.decoded.as_mut()
    }

    fn io_port(&mut self, access: &mut IoAccessInfo) -> Result<(), Self::Error> {
        match access.direction {
            AccessDirection::Read => access.data = Self::port_read(access.port),
            AccessDirection::Write => Self::port_write(access.port, access.data),
        }
        Ok(())
    }

    #[inline]
    fn memory(&mut self, access: &mut MemoryAccessInfo<'_>) -> Result<(), Self::Error> {
        let (gpa, len) = (access.gpa_address, access.data.len());
        let Some(ram) = self.ram_range(gpa, len).and_then(|r| self.ram.get_mut(r)) else {
            return Err(VcpuError::Unmapped { gpa, len });
        };
        match access.direction {
            AccessDirection::Read => copy_small(access.data, ram),
            AccessDirection::Write => copy_small(ram, access.data),
        }
        Ok(())
    }

    fn get_registers(
        &mut self,
        names: &[RegisterName],
        values: &mut [RegisterValue],
    ) -> Result<(), Self::Error> {
        self.regs.get(names, values).map_err(VcpuError::Registers)
    }

    fn set_registers(
        &mut self,
        names: &[RegisterName],
        values: &[RegisterValue],
    ) -> Result<(), Self::Error> {
        self.regs.set(names, values).map_err(VcpuError::Registers)
    }

    fn translate_gva_page(
        &mut self,
        gva_page: u64,
        _flags: TranslateGvaFlags,
    ) -> Result<(TranslateGvaResult, u64), Self::Error> {
        // Identity: linear = physical.
        Ok((TranslateGvaResult::Success, gva_page))
    }

    fn copy_memory(&mut self, dst: u64, src: u64, len: usize) -> Result<bool, Self::Error> {
        match (
            self.bulk,
            self.ram_range(dst, len),
            self.ram_range(src, len),
        ) {
            (true, Some(d), Some(s)) => {
                self.ram.copy_within(s, d.start);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn fill_memory(&mut self, dst: u64, element: &[u8], count: usize) -> Result<bool, Self::Error> {
        let len = element.len().saturating_mul(count);
        match (self.bulk, self.ram_range(dst, len)) {
            (true, Some(range)) => {
                let ram = &mut self.ram[range];
                match element {
                    [byte] => ram.fill(*byte),
                    _ => ram
                        .chunks_exact_mut(element.len())
                        .for_each(|e| e.copy_from_slice(element)),
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn io_port_string(&mut self, access: &StringIoAccess) -> Result<bool, Self::Error> {
        let size = usize::from(access.access_size);
        let len = size.saturating_mul(access.count as usize);
        if !self.bulk || self.ram_range(access.gpa, len).is_none() {
            return Ok(false);
        }
        for i in 0..access.count {
            // In range: the whole batch was checked above.
            let at = access.element_gpa(i) as usize;
            let element = &mut self.ram[at..at + size];
            match access.direction {
                AccessDirection::Read => store_le(element, Self::port_read(access.port)),
                AccessDirection::Write => Self::port_write(access.port, load_le(element)),
            }
        }
        Ok(true)
    }
}

/// A [`Vcpu`] seen through a tally of the callbacks made, by kind. Only the untimed emulation
/// of each case goes through it: the timed ones call the `Vcpu` itself, so that the figures
/// carry no bookkeeping a monitor would not do.
struct Counting<'a> {
    vcpu: &'a mut Vcpu,
    counts: Counts,
}

impl Counting<'_> {
    /// Tallies a bulk offer's outcome: `bytes` moved if accepted.
    fn bulk(&mut self, accepted: &Result<bool, VcpuError>, bytes: usize) {
        match accepted {
            Ok(true) => self.counts.bulk_bytes += bytes as u64,
            _ => self.counts.declined += 1,
        }
    }
}

impl EmulatorCallbacks for Counting<'_> {
    type Error = VcpuError;

    fn decode_cache(&mut self) -> Option<&mut DecodeCache> {
        self.vcpu.decode_cache()
    }

    fn io_port(&mut self, access: &mut IoAccessInfo) -> Result<(), Self::Error> {
        self.counts.io += 1;
        self.vcpu.io_port(access)
    }

    fn memory(&mut self, access: &mut MemoryAccessInfo<'_>) -> Result<(), Self::Error> {
        self.counts.memory += 1;
        self.vcpu.memory(access)
    }

    fn get_registers(
        &mut self,
        names: &[RegisterName],
        values: &mut [RegisterValue],
    ) -> Result<(), Self::Error> {
        self.counts.get += 1;
        self.vcpu.get_registers(names, values)
    }

    fn set_registers(
        &mut self,
        names: &[RegisterName],
        values: &[RegisterValue],
    ) -> Result<(), Self::Error> {
        self.counts.set += 1;
        self.vcpu.set_registers(names, values)
    }

    fn translate_gva_page(
        &mut self,
        gva_page: u64,
        flags: TranslateGvaFlags,
    ) -> Result<(TranslateGvaResult, u64), Self::Error> {
        self.counts.translate += 1;
        self.vcpu.translate_gva_page(gva_page, flags)
    }

    fn copy_memory(&mut self, dst: u64, src: u64, len: usize) -> Result<bool, Self::Error> {
        self.counts.copy += 1;
        let accepted = self.vcpu.copy_memory(dst, src, len);
        self.bulk(&accepted, len);
        accepted
    }

    fn fill_memory(&mut self, dst: u64, element: &[u8], count: usize) -> Result<bool, Self::Error> {
        self.counts.fill += 1;
        let accepted = self.vcpu.fill_memory(dst, element, count);
        self.bulk(&accepted, element.len().saturating_mul(count));
        accepted
    }

    fn io_port_string(&mut self, access: &StringIoAccess) -> Result<bool, Self::Error> {
        self.counts.io_string += 1;
        let accepted = self.vcpu.io_port_string(access);
        let bytes = usize::from(access.access_size).saturating_mul(access.count as usize);
        self.bulk(&accepted, bytes);
        accepted
    }
}

/// The exit a case emulates.
enum Exit {
    Mmio(MemoryAccessContext),
    Io(IoPortAccessContext),
}

/// One benchmark case: a processor state and its exit.
struct Case {
    /// The criterion group name.
    name: &'static str,
    bitness: u32,
    bytes: &'static [u8],
    vcpu: Vcpu,
    vp: VpExitContext,
    exit: Exit,
    config: Config,
    /// Registers restored before each emulation (REP forms consume their count).
    reset: Vec<(usize, u64)>,
    /// Elements moved per emulation, for the REP forms.
    elements: Option<u64>,
    /// Needs iced-x86's VEX tables (absent under the `lean-decoder` feature).
    vex: bool,
    /// Timed emulations that did not complete (checked after the group).
    failures: u64,
}

impl Case {
    fn new(name: &'static str, regs: RegisterFile, bytes: &'static [u8], exit: Exit) -> Case {
        Case {
            name,
            bitness: bitness(&regs),
            bytes,
            vp: regs.exit_context(bytes.len() as u8),
            vcpu: Vcpu::new(regs),
            exit,
            config: Config::default(),
            reset: Vec::new(),
            elements: None,
            vex: false,
            failures: 0,
        }
    }

    /// A memory exit of `access` at `gpa`, with the GVA valid and equal to it.
    fn mmio(
        name: &'static str,
        regs: RegisterFile,
        bytes: &'static [u8],
        access: MemoryAccessType,
        gpa: u64,
    ) -> Case {
        let mmio = MemoryAccessContext::new(bytes, access, gpa).with_gva(gpa);
        Case::new(name, regs, bytes, Exit::Mmio(mmio))
    }

    /// A `rep outsb` (`out`) or `rep insb` exit of `count` bytes at port 0x80, from or to RAM
    /// at 0x3_0000.
    fn string_io(name: &'static str, mut regs: RegisterFile, out: bool, count: u64) -> Case {
        let (bytes, addr_reg): (&'static [u8], usize) = if out {
            (&[0xF3, 0x6E], RSI) // rep outsb
        } else {
            (&[0xF3, 0x6C], RDI) // rep insb
        };
        let addr = 0x3_0000;
        let reset = vec![(RCX, count), (RDX, 0x80), (addr_reg, addr)];
        for &(n, v) in &reset {
            regs.set_gpr(n, v);
        }
        // A port exit carries RAX, RCX, RSI, RDI, DS and ES.
        let mut io = IoPortAccessContext::new(bytes, IoPortAccessInfo::string(out, 1, true), 0x80);
        io.rax = regs.gpr(RAX);
        io.rcx = regs.gpr(RCX);
        io.rsi = regs.gpr(RSI);
        io.rdi = regs.gpr(RDI);
        io.ds = regs.segment(Segment::Ds);
        io.es = regs.segment(Segment::Es);
        let mut case = Case::new(name, regs, bytes, Exit::Io(io));
        case.rep(reset, count);
        case
    }

    /// Makes this a REP case of `count` elements, run whole by one emulation.
    fn rep(&mut self, reset: Vec<(usize, u64)>, count: u64) {
        self.reset = reset;
        self.elements = Some(count);
        let bound = u32::try_from(count).expect("REP count fits the bound");
        self.config = Config::default().with_max_rep_iterations(bound);
    }

    fn with_bulk(mut self) -> Case {
        self.vcpu.bulk = true;
        self
    }

    /// Restores the registers a REP form consumes.
    fn reset(&mut self) {
        for &(n, v) in &self.reset {
            self.vcpu.regs.set_gpr(n, v);
        }
    }

    /// One timed emulation, straight to the `Vcpu` (callbacks a monitor would write: no tally).
    #[inline(always)]
    fn emulate(&mut self) -> Result<Completion, EmulationError<VcpuError>> {
        self.reset();
        run_exit(
            Emulator::with_config(&mut self.vcpu, self.config),
            &self.vp,
            &self.exit,
        )
    }

    /// One emulation outside the timing: it must complete; prints the callbacks it made.
    fn check(&mut self) {
        self.reset();
        let mut counting = Counting {
            vcpu: &mut self.vcpu,
            counts: Counts::default(),
        };
        let emulator = Emulator::with_config(&mut counting, self.config);
        match run_exit(emulator, &self.vp, &self.exit) {
            Ok(Completion::Complete) => {}
            other => panic!("{}: emulation did not complete: {other:?}", self.name),
        }
        println!("CALLBACKS {}: {}", self.name, counting.counts);
    }
}

/// Emulates `exit` with `emulator`.
#[inline(always)]
fn run_exit<C: EmulatorCallbacks>(
    mut emulator: Emulator<C>,
    vp: &VpExitContext,
    exit: &Exit,
) -> Result<Completion, EmulationError<C::Error>> {
    match exit {
        Exit::Mmio(mmio) => emulator.emulate_mmio(vp, mmio),
        Exit::Io(io) => emulator.emulate_io(vp, io),
    }
}

fn bitness(regs: &RegisterFile) -> u32 {
    let cs = regs.segment(Segment::Cs).attributes.bits();
    if regs.efer & (1 << 10) != 0 && cs & (1 << 13) != 0 {
        64
    } else if cs & (1 << 14) != 0 {
        32
    } else {
        16
    }
}

/// 64-bit mode, code at 0x10_0000 (never touched: the exits carry the bytes).
fn long() -> RegisterFile {
    let mut r = RegisterFile::long_mode();
    r.rip = 0x10_0000;
    r
}

/// Long mode with `regs` set.
fn long_with(regs: &[(usize, u64)]) -> RegisterFile {
    let mut r = long();
    for &(n, v) in regs {
        r.set_gpr(n, v);
    }
    r
}

/// The single-instruction cases.
fn exit_cases() -> Vec<Case> {
    use MemoryAccessType::{Read, Write};
    let mut v = Vec::new();

    let r = long_with(&[(RAX, 0x1000), (RBX, 0x1234_5678)]);
    v.push(Case::mmio(
        "mov-store-64",
        r,
        &[0x89, 0x58, 0x10],
        Write,
        0x1010,
    ));

    let r = long_with(&[(RBX, 0x1000)]);
    v.push(Case::mmio("mov-load-64", r, &[0x8B, 0x03], Read, 0x1000));

    let r = long_with(&[(RBX, 0x1000)]);
    v.push(Case::mmio(
        "movzx-load-64",
        r,
        &[0x0F, 0xB7, 0x03],
        Read,
        0x1000,
    ));

    let mut r = long_with(&[(RAX, 0x1000)]);
    r.cr[3] |= 1 << 9; // CR4.OSFXSR
    r.set_vector(0, &[0xC3; 64]);
    v.push(Case::mmio(
        "movdqu-store-64",
        r,
        &[0xF3, 0x0F, 0x7F, 0x00],
        Write,
        0x1000,
    ));

    let mut r = long_with(&[(RAX, 0x1000)]);
    r.cr[3] |= (1 << 9) | (1 << 18); // CR4.OSFXSR, CR4.OSXSAVE
    r.xcr0 = 0x7; // x87, SSE, AVX
    r.set_vector(0, &[0xC3; 64]);
    let mut c = Case::mmio(
        "vmovdqu-ymm-store-64",
        r,
        &[0xC5, 0xFE, 0x7F, 0x00],
        Write,
        0x1000,
    );
    c.vex = true;
    v.push(c);

    let r = long_with(&[(RAX, 0x1000), (RBX, 3)]);
    v.push(Case::mmio("add-rmw-64", r, &[0x01, 0x18], Read, 0x1000));

    let r = long_with(&[(RAX, 0x1000), (RBX, 0x40)]);
    v.push(Case::mmio("or-byte-rmw-64", r, &[0x08, 0x18], Read, 0x1000));

    // RAX is both the address and the comparand: the dword at 0x1000 holds 0x1000 and EBX is
    // 0x1000 too, so every run is a successful exchange that leaves memory as it was.
    let r = long_with(&[(RAX, 0x1000), (RBX, 0x1000)]);
    let mut c = Case::mmio(
        "lock-cmpxchg-64",
        r,
        &[0xF0, 0x0F, 0xB1, 0x18],
        Read,
        0x1000,
    );
    c.vcpu.ram[0x1000..0x1004].copy_from_slice(&0x1000u32.to_le_bytes());
    v.push(c);

    let mut r = RegisterFile::real_mode();
    r.rip = 0x7C00;
    r.set_gpr(RAX, 0xBEEF);
    r.set_gpr(RBX, 0x0100);
    v.push(Case::mmio("mov-store-16", r, &[0x89, 0x07], Write, 0x0100));

    let mut r = RegisterFile::protected_mode_32();
    r.rip = 0x10_0000;
    r.set_gpr(RAX, 0xDEAD_BEEF);
    r.set_gpr(RBX, 0x1000);
    v.push(Case::mmio("mov-store-32", r, &[0x89, 0x03], Write, 0x1000));
    v
}

/// `rep movsb` of `n` bytes from RAM at 0x1_0000 to RAM at 0x2_0000; the exit is its first
/// write.
fn rep_movsb(name: &'static str, n: u64) -> Case {
    let reset = vec![(RCX, n), (RSI, 0x1_0000), (RDI, 0x2_0000)];
    let r = long_with(&reset);
    let mut c = Case::mmio(name, r, &[0xF3, 0xA4], MemoryAccessType::Write, 0x2_0000);
    c.rep(reset, n);
    c
}

/// `rep stosb` of `n` bytes to RAM at 0x2_0000; the exit is its first write.
fn rep_stosb(name: &'static str, n: u64) -> Case {
    let reset = vec![(RCX, n), (RDI, 0x2_0000)];
    let r = long_with(&[(RAX, 0xE7), (RCX, n), (RDI, 0x2_0000)]);
    let mut c = Case::mmio(name, r, &[0xF3, 0xAA], MemoryAccessType::Write, 0x2_0000);
    c.rep(reset, n);
    c
}

fn decode_floor(bitness: u32, bytes: &[u8]) -> Instruction {
    let mut decoder = Decoder::new(bitness, black_box(bytes), DecoderOptions::NONE);
    let mut instr = Instruction::default();
    decoder.decode_out(&mut instr);
    instr
}

/// Where criterion writes its results, found as criterion finds it.
fn criterion_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(home) = std::env::var_os("CRITERION_HOME") {
            return PathBuf::from(home);
        }
        if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
            return PathBuf::from(target).join("criterion");
        }
        let metadata = std::env::var_os("CARGO").and_then(|cargo| {
            Command::new(cargo)
                .args(["metadata", "--format-version", "1", "--no-deps"])
                .output()
                .ok()
        });
        let target = metadata.and_then(|out| {
            let text = String::from_utf8(out.stdout).ok()?;
            let key = "\"target_directory\":\"";
            let rest = &text[text.find(key)? + key.len()..];
            Some(rest[..rest.find('"')?].replace("\\\\", "\\"))
        });
        match target {
            Some(t) => PathBuf::from(t).join("criterion"),
            None => PathBuf::from("target/criterion"),
        }
    })
}

/// The median (ns) criterion wrote for `group/function`, if it wrote it after `since`.
fn median_ns(group: &str, function: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(function)
        .join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None; // left by an earlier run
    }
    let text = std::fs::read_to_string(path).ok()?;
    let median = &text[text.find("\"median\"")?..];
    let key = "\"point_estimate\"";
    let value = median[median.find(key)? + key.len()..]
        .trim_start()
        .strip_prefix(':')?;
    let end = value.find([',', '}'])?;
    value[..end].trim().parse().ok()
}

/// The two functions of one case's group, then its `RATIO` (and `PER-ELEMENT`) lines.
/// Returns hvemu's median.
fn bench_case(c: &mut Criterion, case: &mut Case) -> Option<f64> {
    if case.vex && cfg!(feature = "lean-decoder") {
        println!(
            "SKIPPED (lean-decoder) {}: no VEX decoder tables",
            case.name
        );
        return None;
    }
    case.check();
    let since = SystemTime::now();
    let mut group = c.benchmark_group(case.name);
    let (bitness, bytes) = (case.bitness, case.bytes);
    group.bench_function("decode", |b| b.iter(|| decode_floor(bitness, bytes)));
    if let Some(n) = case.elements {
        // For the emulation only (set after the decode floor is registered).
        group.throughput(Throughput::Elements(n));
    }
    case.failures = 0;
    group.bench_function("hvemu", |b| {
        b.iter(|| {
            let done = matches!(case.emulate(), Ok(Completion::Complete));
            case.failures += u64::from(!done);
        })
    });
    if case.elements.is_none() {
        // The same exits for a monitor that keeps a decode cache: every one after the first
        // is a hit.
        case.vcpu.decoded = Some(DecodeCache::new());
        group.bench_function("hvemu-cached", |b| {
            b.iter(|| {
                let done = matches!(case.emulate(), Ok(Completion::Complete));
                case.failures += u64::from(!done);
            })
        });
        case.vcpu.decoded = None;
    }
    group.finish();
    assert_eq!(case.failures, 0, "{}: timed emulations failed", case.name);
    let hvemu = median_ns(case.name, "hvemu", since);
    let cached = median_ns(case.name, "hvemu-cached", since);
    if let (Some(h), Some(d)) = (cached, median_ns(case.name, "decode", since)) {
        println!(
            "RATIO-CACHED {}: hvemu with a decode cache {h:.1} ns / floor {d:.1} ns = {:.2}x",
            case.name,
            h / d
        );
    }
    if let (Some(h), Some(d)) = (hvemu, median_ns(case.name, "decode", since)) {
        println!(
            "RATIO {}: hvemu {h:.1} ns / floor {d:.1} ns = {:.2}x",
            case.name,
            h / d
        );
    }
    if let (Some(h), Some(n)) = (hvemu, case.elements) {
        println!("PER-ELEMENT {}: {:.3} ns", case.name, h / n as f64);
    }
    hvemu
}

/// The callbacks one REP iteration makes, in hvemu's order.
#[derive(Clone, Copy)]
enum Element {
    /// INSB: port read, then memory write.
    In,
    /// OUTSB: memory read, then port write.
    Out,
    /// MOVSB: memory read, then memory write.
    Movs,
    /// STOSB: memory write.
    Stos,
}

/// One byte-sized `memory` call at `gpa`.
fn memory_byte(v: &mut Vcpu, gpa: u64, direction: AccessDirection, data: &mut [u8; 1]) {
    let mut m = MemoryAccessInfo {
        gpa_address: gpa,
        direction,
        data,
    };
    let _ = v.memory(&mut m);
}

/// One byte-sized `io_port` call at port 0x80; returns what a read gave.
fn port_byte(v: &mut Vcpu, direction: AccessDirection, data: u8) -> u8 {
    let mut io = IoAccessInfo {
        direction,
        port: 0x80,
        access_size: 1,
        data: u32::from(data),
    };
    let _ = v.io_port(&mut io);
    io.data as u8
}

/// What the element-by-element REP forms cost beyond their callbacks: `n` iterations' worth
/// of callbacks made directly, at the addresses hvemu uses (`src` for reads, `dst` for
/// writes).
fn bench_callbacks_only(c: &mut Criterion, cases: &[(&'static str, Element, u64, Option<f64>)]) {
    use AccessDirection::{Read, Write};
    let since = SystemTime::now();
    let mut group = c.benchmark_group("callbacks-only");
    let mut vcpu = Vcpu::new(long());
    for &(name, element, n, _) in cases {
        let (src, dst) = match element {
            Element::In | Element::Out => (0x3_0000, 0x3_0000),
            Element::Movs | Element::Stos => (0x1_0000, 0x2_0000),
        };
        group.throughput(Throughput::Elements(n));
        group.bench_function(name, |b| {
            b.iter(|| {
                for i in 0..n {
                    // black_box: the compiler must not merge the calls into a memcpy.
                    let v = black_box(&mut vcpu);
                    let i = black_box(i);
                    let mut data = [0u8; 1];
                    match element {
                        Element::In => {
                            data[0] = port_byte(v, Read, 0);
                            memory_byte(v, dst + i, Write, &mut data);
                        }
                        Element::Out => {
                            memory_byte(v, src + i, Read, &mut data);
                            port_byte(v, Write, data[0]);
                        }
                        Element::Movs => {
                            memory_byte(v, src + i, Read, &mut data);
                            memory_byte(v, dst + i, Write, &mut data);
                        }
                        Element::Stos => {
                            data[0] = 0xE7;
                            memory_byte(v, dst + i, Write, &mut data);
                        }
                    }
                }
            })
        });
    }
    group.finish();
    for &(name, _, n, hvemu) in cases {
        let Some(callbacks) = median_ns("callbacks-only", name, since) else {
            continue;
        };
        let per = callbacks / n as f64;
        println!("CALLBACKS-ONLY {name}: {per:.2} ns per element");
        if let Some(h) = hvemu {
            println!(
                "BEYOND-CALLBACKS {name}: {:.2} ns per element",
                (h - callbacks) / n as f64
            );
        }
    }
}

/// The first `len` bytes of `buf` from a 4 KiB boundary on.
fn page_aligned(buf: &mut [u8], len: usize) -> &mut [u8] {
    let skip = buf.as_ptr().align_offset(0x1000);
    &mut buf[skip..skip + len]
}

/// A plain 64 KiB copy between two buffers, against the bulk REP MOVSB.
fn bench_memcpy(c: &mut Criterion, rep_movsb_bulk: Option<f64>) {
    const N: usize = 0x1_0000;
    let since = SystemTime::now();
    // Both buffers page-aligned, as the guest RAM ranges of the REP MOVSB case are to each
    // other. (On AMD Zen 3, the `rep movsb` glibc uses for this size runs at a tenth of its
    // speed when the destination sits 16 bytes past the source modulo 64, as two fresh `Vec`s
    // of 64 KiB do.)
    let mut src_buf = vec![0x5Au8; N + 0x1000];
    let mut dst_buf = vec![0u8; N + 0x1000];
    let src: &[u8] = page_aligned(&mut src_buf, N);
    let dst = page_aligned(&mut dst_buf, N);
    let mut group = c.benchmark_group("memcpy-64k");
    group.throughput(Throughput::Bytes(N as u64));
    group.bench_function("copy_from_slice", |b| {
        b.iter(|| black_box(&mut *dst).copy_from_slice(black_box(&*src)))
    });
    group.finish();
    if let (Some(h), Some(m)) = (
        rep_movsb_bulk,
        median_ns("memcpy-64k", "copy_from_slice", since),
    ) {
        // Bytes per nanosecond is GB/s.
        let (hvemu_gbs, memcpy_gbs) = (N as f64 / h, N as f64 / m);
        println!(
            "BANDWIDTH rep movsb 64 KiB bulk: {hvemu_gbs:.2} GB/s vs memcpy {memcpy_gbs:.2} GB/s = {:.1}%",
            100.0 * hvemu_gbs / memcpy_gbs
        );
    }
}

fn exits(c: &mut Criterion) {
    hvemu::warm_up();

    for mut case in exit_cases() {
        bench_case(c, &mut case);
    }

    // REP strings element by element: the bulk callbacks decline.
    let movsb = bench_case(c, &mut rep_movsb("rep-movsb-4k", 0x1000));
    let stosb = bench_case(c, &mut rep_stosb("rep-stosb-4k", 0x1000));
    let insb = bench_case(c, &mut Case::string_io("rep-insb-256", long(), false, 256));
    let outsb = bench_case(c, &mut Case::string_io("rep-outsb-256", long(), true, 256));
    bench_callbacks_only(
        c,
        &[
            ("rep-movsb-4k", Element::Movs, 0x1000, movsb),
            ("rep-stosb-4k", Element::Stos, 0x1000, stosb),
            ("rep-insb-256", Element::In, 256, insb),
            ("rep-outsb-256", Element::Out, 256, outsb),
        ],
    );

    // REP strings with the bulk callbacks implemented.
    let movsb = bench_case(
        c,
        &mut rep_movsb("rep-movsb-64k-bulk", 0x1_0000).with_bulk(),
    );
    bench_case(
        c,
        &mut rep_stosb("rep-stosb-64k-bulk", 0x1_0000).with_bulk(),
    );
    bench_case(
        c,
        &mut Case::string_io("rep-insb-4k-bulk", long(), false, 0x1000).with_bulk(),
    );
    bench_case(
        c,
        &mut Case::string_io("rep-outsb-4k-bulk", long(), true, 0x1000).with_bulk(),
    );
    bench_memcpy(c, movsb);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = exits
}
criterion_main!(benches);
