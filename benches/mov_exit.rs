//! The cost of one emulated exit, next to the cost of just decoding its instruction.
//!
//! Every case hands hvemu an exit that carries the instruction bytes (and, for memory exits,
//! the GPA with a valid GVA), with trivial callbacks: a [`RegisterFile`] and a RAM buffer that
//! `memory` copies into or out of. Each case is measured twice:
//!
//! * `decode`: the floor, `iced_x86::Decoder::new` + `decode_out` of the same bytes;
//! * `hvemu`: the whole emulation (`emulate_mmio` / `emulate_io`), callbacks included. For
//!   the REP forms, criterion's `thrpt` line is the emulation's bytes per second, and a
//!   printed line gives a rough nanoseconds-per-byte figure.
//!
//! After each case, the callbacks one exit makes are printed by kind (outside the timing).
//! Run with `cargo bench --bench mov_exit` (or `-- --quick` for a short run).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use hvemu::{
    AccessDirection, Completion, Emulator, EmulatorCallbacks, IoAccessInfo, IoPortAccessContext,
    IoPortAccessInfo, MemoryAccessContext, MemoryAccessInfo, MemoryAccessType, RegisterFile,
    RegisterFileError, RegisterName, RegisterValue, Segment, TranslateGvaFlags, TranslateGvaResult,
    VpExitContext,
};
use iced_x86::{Decoder, DecoderOptions, Instruction};

/// Guest RAM: 16 KiB at GPA 0, repeated through the whole address space.
const RAM: usize = 0x4000;

/// Callbacks made, by kind.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    get: u64,
    set: u64,
    memory: u64,
    io: u64,
    translate: u64,
}

/// A processor with its registers in a file and RAM in a buffer.
struct Vcpu {
    regs: RegisterFile,
    ram: Vec<u8>,
    counts: Counts,
}

impl Vcpu {
    fn new(regs: RegisterFile) -> Self {
        Vcpu {
            regs,
            // Slack past the end, so an access near the end never needs a bounds split.
            ram: vec![0x5A; RAM + 64],
            counts: Counts::default(),
        }
    }
}

impl EmulatorCallbacks for Vcpu {
    type Error = RegisterFileError;

    fn io_port(&mut self, access: &mut IoAccessInfo) -> Result<(), Self::Error> {
        self.counts.io += 1;
        if access.direction == AccessDirection::Read {
            access.data = 0xFF;
        } else {
            black_box(access.data);
        }
        Ok(())
    }

    fn memory(&mut self, access: &mut MemoryAccessInfo<'_>) -> Result<(), Self::Error> {
        self.counts.memory += 1;
        let start = access.gpa_address as usize & (RAM - 1);
        let ram = &mut self.ram[start..start + access.data.len()];
        match access.direction {
            AccessDirection::Read => access.data.copy_from_slice(ram),
            AccessDirection::Write => ram.copy_from_slice(access.data),
        }
        Ok(())
    }

    fn get_registers(
        &mut self,
        names: &[RegisterName],
        values: &mut [RegisterValue],
    ) -> Result<(), Self::Error> {
        self.counts.get += 1;
        self.regs.get(names, values)
    }

    fn set_registers(
        &mut self,
        names: &[RegisterName],
        values: &[RegisterValue],
    ) -> Result<(), Self::Error> {
        self.counts.set += 1;
        self.regs.set(names, values)
    }

    fn translate_gva_page(
        &mut self,
        gva_page: u64,
        _flags: TranslateGvaFlags,
    ) -> Result<(TranslateGvaResult, u64), Self::Error> {
        self.counts.translate += 1;
        // Identity: linear = physical.
        Ok((TranslateGvaResult::Success, gva_page))
    }
}

/// The exit a case emulates.
enum ExitKind {
    Mmio(MemoryAccessContext),
    Io(IoPortAccessContext),
}

/// One benchmark case: a processor state and its exit.
struct Case {
    /// The group name (the instruction and mode).
    name: &'static str,
    bitness: u32,
    bytes: &'static [u8],
    vcpu: Vcpu,
    vp: VpExitContext,
    exit: ExitKind,
    /// Registers to restore before each emulation (REP forms consume their count).
    reset: &'static [(usize, u64)],
    /// Bytes moved per emulation, for the REP forms.
    bytes_moved: Option<u64>,
}

impl Case {
    fn mmio(
        name: &'static str,
        regs: RegisterFile,
        bytes: &'static [u8],
        access: MemoryAccessType,
        gva: u64,
    ) -> Case {
        let bitness = bitness(&regs);
        let vp = regs.exit_context(bytes.len() as u8);
        // Identity paging: the GPA is the GVA.
        let mmio = MemoryAccessContext::new(bytes, access, gva).with_gva(gva);
        Case {
            name,
            bitness,
            bytes,
            vcpu: Vcpu::new(regs),
            vp,
            exit: ExitKind::Mmio(mmio),
            reset: &[],
            bytes_moved: None,
        }
    }

    fn emulate(&mut self) -> Completion {
        for &(n, v) in self.reset {
            self.vcpu.regs.set_gpr(n, v);
        }
        let mut emulator = Emulator::new(&mut self.vcpu);
        let result = match &self.exit {
            ExitKind::Mmio(mmio) => emulator.emulate_mmio(&self.vp, mmio),
            ExitKind::Io(io) => emulator.emulate_io(&self.vp, io),
        };
        match result {
            Ok(c) => c,
            Err(e) => panic!("{}: emulation failed: {e:?}", self.name),
        }
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

fn cases() -> Vec<Case> {
    let long = || {
        let mut r = RegisterFile::long_mode();
        r.rip = 0x10_0000;
        r
    };
    let mut v = Vec::new();

    // mov [rax+0x10], ebx
    let mut r = long();
    r.set_gpr(0, 0x1000);
    r.set_gpr(3, 0x1234_5678);
    v.push(Case::mmio(
        "mov [rax+0x10], ebx (64-bit)",
        r,
        &[0x89, 0x58, 0x10],
        MemoryAccessType::Write,
        0x1010,
    ));

    // mov eax, [rbx]
    let mut r = long();
    r.set_gpr(3, 0x1000);
    v.push(Case::mmio(
        "mov eax, [rbx] (64-bit)",
        r,
        &[0x8B, 0x03],
        MemoryAccessType::Read,
        0x1000,
    ));

    // movzx eax, word [rbx]
    let mut r = long();
    r.set_gpr(3, 0x1000);
    v.push(Case::mmio(
        "movzx eax, word [rbx] (64-bit)",
        r,
        &[0x0F, 0xB7, 0x03],
        MemoryAccessType::Read,
        0x1000,
    ));

    // mov [bx], ax in real mode
    let mut r = RegisterFile::real_mode();
    r.rip = 0x7C00;
    r.set_gpr(0, 0xBEEF);
    r.set_gpr(3, 0x0100);
    v.push(Case::mmio(
        "mov [bx], ax (16-bit real)",
        r,
        &[0x89, 0x07],
        MemoryAccessType::Write,
        0x0100,
    ));

    // mov [ebx], eax in 32-bit protected mode
    let mut r = RegisterFile::protected_mode_32();
    r.rip = 0x10_0000;
    r.set_gpr(0, 0xDEAD_BEEF);
    r.set_gpr(3, 0x1000);
    v.push(Case::mmio(
        "mov [ebx], eax (32-bit protected)",
        r,
        &[0x89, 0x03],
        MemoryAccessType::Write,
        0x1000,
    ));

    // rep movsb of 4 KiB, from RAM at 0x1000 to MMIO at 0x2000 (the exit is the first write).
    let mut r = long();
    r.set_gpr(1, 0x1000);
    r.set_gpr(6, 0x1000);
    r.set_gpr(7, 0x2000);
    let mut c = Case::mmio(
        "rep movsb 4 KiB (64-bit)",
        r,
        &[0xF3, 0xA4],
        MemoryAccessType::Write,
        0x2000,
    );
    c.reset = &[(1, 0x1000), (6, 0x1000), (7, 0x2000)];
    c.bytes_moved = Some(0x1000);
    v.push(c);

    // rep outsb of 256 bytes to port 0x80 (a port exit carries RCX, RSI, RDI, DS and ES).
    let mut r = long();
    r.set_gpr(1, 256);
    r.set_gpr(2, 0x80);
    r.set_gpr(6, 0x3000);
    let vp = r.exit_context(2);
    let mut io =
        IoPortAccessContext::new(&[0xF3, 0x6E], IoPortAccessInfo::string(true, 1, true), 0x80);
    io.rcx = 256;
    io.rsi = 0x3000;
    io.ds = r.segment(Segment::Ds);
    io.es = r.segment(Segment::Es);
    v.push(Case {
        name: "rep outsb 256 B (64-bit)",
        bitness: 64,
        bytes: &[0xF3, 0x6E],
        vcpu: Vcpu::new(r),
        vp,
        exit: ExitKind::Io(io),
        reset: &[],
        bytes_moved: Some(256),
    });
    v
}

fn decode_floor(bitness: u32, bytes: &[u8]) -> Instruction {
    let mut decoder = Decoder::new(bitness, black_box(bytes), DecoderOptions::NONE);
    let mut instr = Instruction::default();
    decoder.decode_out(&mut instr);
    instr
}

fn bench_case(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, case: &mut Case) {
    // One emulation outside the timing: it must succeed and complete, and its callbacks are
    // what every timed emulation makes.
    case.vcpu.counts = Counts::default();
    assert_eq!(case.emulate(), Completion::Complete, "{}", case.name);
    let c = case.vcpu.counts;
    println!(
        "{}: callbacks per exit: get {}, set {}, memory {}, io {}, translate {}",
        case.name, c.get, c.set, c.memory, c.io, c.translate
    );
    let (bitness, bytes) = (case.bitness, case.bytes);
    group.bench_function("decode", |b| b.iter(|| decode_floor(bitness, bytes)));
    if let Some(n) = case.bytes_moved {
        // Throughput for the emulation only (set after the decode floor is registered).
        group.throughput(Throughput::Bytes(n));
        // A quick per-byte figure (criterion's throughput line gives the precise one).
        let runs = 20;
        let start = Instant::now();
        for _ in 0..runs {
            black_box(case.emulate());
        }
        let per_byte = start.elapsed().as_nanos() as f64 / (runs as f64 * n as f64);
        println!("{}: about {per_byte:.1} ns per byte", case.name);
    }
    group.bench_function("hvemu", |b| b.iter(|| black_box(case.emulate())));
}

fn mov_exit(c: &mut Criterion) {
    hvemu::warm_up();
    for mut case in cases() {
        let name = case.name;
        let mut group = c.benchmark_group(name);
        if case.bytes_moved.is_some() {
            group.measurement_time(Duration::from_secs(3));
        }
        bench_case(&mut group, &mut case);
        group.finish();
    }
}

criterion_group!(benches, mov_exit);
criterion_main!(benches);
