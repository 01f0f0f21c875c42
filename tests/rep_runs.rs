//! REP MOVS, STOS, INS and OUTS run in page-sized runs, and hand RAM runs to the monitor's bulk
//! callbacks. Both must be invisible: the result, the device-visible accesses and the faults
//! must be those of running every iteration by itself (a call bounded to one iteration, the
//! path the KVM comparison checks).

mod support;

use hvemu::*;
use proptest::prelude::*;
use support::*;

const RCX: usize = 1;
const RSI: usize = 6;
const RDI: usize = 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Movs,
    Stos,
    Ins,
    Outs,
}

#[derive(Clone, Debug)]
struct Case {
    mode: u8,
    kind: Kind,
    size: usize,
    flip_address_size: bool,
    down: bool,
    rcx: u64,
    rsi: u64,
    rdi: u64,
}

impl Case {
    fn machine(&self) -> Machine {
        let mut m = match self.mode {
            0 => Machine::real(),
            1 => Machine::protected32(),
            _ => Machine::long(),
        };
        m.regs.rip = 0x100;
        m.set_gpr(RCX, self.rcx);
        m.set_gpr(RSI, self.rsi);
        m.set_gpr(RDI, self.rdi);
        m.set_gpr(0, 0x8877_6655_4433_2211);
        m.set_gpr(2, 0x60);
        if self.down {
            m.regs.rflags |= 1 << 10;
        }
        // Recognisable RAM and MMIO contents around every address the cases use.
        for (i, b) in m.ram.iter_mut().enumerate().take(0x2_0000) {
            *b = (i as u8).wrapping_mul(7) ^ (i >> 8) as u8;
        }
        for a in [support::RAM_SIZE - 0x40, support::RAM_SIZE] {
            for i in 0..0x200u64 {
                m.mmio.insert(a + i, (i as u8) ^ 0x5A);
            }
        }
        m.port_input = (0..4096u32).map(|i| i.wrapping_mul(0x0101_0101)).collect();
        m
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0xF3];
        if self.flip_address_size {
            b.push(0x67);
        }
        let default16 = self.mode == 0;
        match self.size {
            2 if !default16 => b.push(0x66),
            4 if default16 => b.push(0x66),
            8 => b.push(0x48),
            _ => {}
        }
        let (byte_op, word_op) = match self.kind {
            Kind::Movs => (0xA4, 0xA5),
            Kind::Stos => (0xAA, 0xAB),
            Kind::Ins => (0x6C, 0x6D),
            Kind::Outs => (0x6E, 0x6F),
        };
        b.push(if self.size == 1 { byte_op } else { word_op });
        b
    }

    /// Emulates until the instruction completes or fails; the last result.
    fn run(
        &self,
        m: &mut Machine,
        config: Config,
    ) -> Result<Completion, EmulationError<&'static str>> {
        let bytes = self.bytes();
        let mut device_log = Vec::new();
        let mut result;
        let mut calls = 0;
        loop {
            result = match self.kind {
                Kind::Ins | Kind::Outs => {
                    m.io_config(
                        &bytes,
                        IoPortAccessInfo::string(self.kind == Kind::Outs, self.size as u8, true),
                        0x60,
                        config,
                    )
                    .result
                }
                Kind::Movs | Kind::Stos => {
                    let ctx = MemoryAccessContext::new(&bytes, MemoryAccessType::Write, 0);
                    m.mmio_ctx_config(bytes.len() as u8, &ctx, config).result
                }
            };
            device_log.extend(
                m.log
                    .iter()
                    .filter(|c| !matches!(c, Call::Get(_) | Call::Set(_) | Call::Translate { .. }))
                    .cloned(),
            );
            calls += 1;
            if result != Ok(Completion::Partial) || calls > 5000 {
                break;
            }
        }
        m.log = device_log;
        result
    }
}

fn case() -> impl Strategy<Value = Case> {
    let addresses = prop::sample::select(vec![
        0x1FF0u64,
        0x1FFF,
        0x2000,
        0x2FFC,
        0x3001,
        0xFFF0,
        0xFFFE,
        0x1_0000,
        support::RAM_SIZE - 0x20,
        support::RAM_SIZE + 0x10,
    ]);
    (
        0u8..3,
        prop::sample::select(vec![Kind::Movs, Kind::Stos, Kind::Ins, Kind::Outs]),
        prop::sample::select(vec![1usize, 2, 4, 8]),
        any::<bool>(),
        any::<bool>(),
        0u64..300,
        (addresses.clone(), -24i64..24),
        (addresses, -24i64..24),
        any::<bool>(),
    )
        .prop_map(
            |(mode, kind, size, flip, down, rcx, (si, sd), (di, dd), overlap)| {
                let size = if size == 8 && (mode != 2 || matches!(kind, Kind::Ins | Kind::Outs)) {
                    4
                } else {
                    size
                };
                let rsi = si.wrapping_add_signed(sd);
                // Overlapping moves: the destination a few bytes from the source.
                let rdi = if overlap {
                    rsi.wrapping_add_signed(dd / 4)
                } else {
                    di.wrapping_add_signed(dd)
                };
                Case {
                    mode,
                    kind,
                    size,
                    flip_address_size: flip,
                    down,
                    rcx,
                    rsi,
                    rdi,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// Runs through `memory`/`io_port` are exactly the iterations one by one: the same device
    /// accesses in the same order, the same memory, registers and outcome.
    #[test]
    fn runs_are_the_iterations_one_by_one(c in case()) {
        let mut reference = c.machine();
        let expected = c.run(&mut reference, Config::default().with_max_rep_iterations(1));
        let mut m = c.machine();
        let got = c.run(&mut m, Config::default());
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(&m.regs, &reference.regs);
        prop_assert!(m.ram == reference.ram, "RAM differs");
        prop_assert_eq!(&m.mmio, &reference.mmio);
        prop_assert_eq!(&m.log, &reference.log);
    }

    /// With the bulk callbacks taken for RAM, memory, registers and outcome are still those of
    /// the iterations one by one; MMIO still sees each element.
    #[test]
    fn bulk_callbacks_change_nothing_visible(c in case()) {
        let mut reference = c.machine();
        let expected = c.run(&mut reference, Config::default().with_max_rep_iterations(1));
        let mut m = c.machine();
        m.bulk_ram = true;
        let got = c.run(&mut m, Config::default());
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(&m.regs, &reference.regs);
        prop_assert!(m.ram == reference.ram, "RAM differs");
        prop_assert_eq!(&m.mmio, &reference.mmio);
        let mmio_accesses = |log: &[Call]| -> Vec<Call> {
            log.iter()
                .filter(|c| matches!(c, Call::Memory { gpa, .. } if *gpa >= support::RAM_SIZE))
                .cloned()
                .collect()
        };
        prop_assert_eq!(mmio_accesses(&m.log), mmio_accesses(&reference.log));
    }
}

/// The common REP MOVSB from RAM to RAM costs one bulk call per page pair, not two `memory`
/// calls per byte; the same copy into MMIO is declined and goes byte by byte.
#[test]
fn a_page_sized_copy_is_one_bulk_call() {
    let c = Case {
        mode: 2,
        kind: Kind::Movs,
        size: 1,
        flip_address_size: false,
        down: false,
        rcx: 0x1000,
        rsi: 0x4000,
        rdi: 0x8000,
    };
    let mut m = c.machine();
    m.bulk_ram = true;
    let before = m.read_phys(0x4000, 0x1000);
    assert_eq!(c.run(&mut m, Config::default()), Ok(Completion::Complete));
    assert_eq!(m.read_phys(0x8000, 0x1000), before);
    assert_eq!(
        m.log,
        [Call::Bulk {
            dst: 0x8000,
            src: Some(0x4000),
            port: None,
            len: 0x1000
        }]
    );
    // Misaligned by 0x10: two runs, split where the destination page ends.
    let c = Case { rdi: 0x8010, ..c };
    let mut m = c.machine();
    m.bulk_ram = true;
    assert_eq!(c.run(&mut m, Config::default()), Ok(Completion::Complete));
    assert_eq!(
        m.log,
        [
            Call::Bulk {
                dst: 0x8010,
                src: Some(0x4000),
                port: None,
                len: 0xFF0
            },
            Call::Bulk {
                dst: 0x9000,
                src: Some(0x4FF0),
                port: None,
                len: 0x10
            },
        ]
    );
    // Into MMIO: declined, so 64 reads and 64 writes of one byte each.
    let c = Case {
        rcx: 64,
        rdi: support::RAM_SIZE + 0x10,
        ..c
    };
    let mut m = c.machine();
    m.bulk_ram = true;
    assert_eq!(c.run(&mut m, Config::default()), Ok(Completion::Complete));
    assert_eq!(m.memory_calls().len(), 128);
    assert!(m.memory_calls().iter().all(|(_, _, d)| d.len() == 1));
}

/// A fill and a port batch are offered whole too, with DF=1 naming the lowest address.
#[test]
fn fills_and_port_batches_are_offered_whole() {
    let c = Case {
        mode: 2,
        kind: Kind::Stos,
        size: 4,
        flip_address_size: false,
        down: true,
        rcx: 16,
        rsi: 0,
        rdi: 0x5000 + 15 * 4,
    };
    let mut m = c.machine();
    m.bulk_ram = true;
    assert_eq!(c.run(&mut m, Config::default()), Ok(Completion::Complete));
    assert_eq!(
        m.log,
        [Call::Bulk {
            dst: 0x5000,
            src: None,
            port: None,
            len: 64
        }]
    );
    assert_eq!(
        m.read_phys(0x5000, 8),
        [0x11, 0x22, 0x33, 0x44, 0x11, 0x22, 0x33, 0x44]
    );
    assert_eq!(m.gpr(RDI), 0x5000 - 4);
    let c = Case {
        kind: Kind::Ins,
        size: 2,
        down: false,
        rdi: 0x6000,
        ..c
    };
    let mut m = c.machine();
    m.bulk_ram = true;
    assert_eq!(c.run(&mut m, Config::default()), Ok(Completion::Complete));
    let bulk = m
        .log
        .iter()
        .filter(|c| matches!(c, Call::Bulk { .. }))
        .count();
    assert_eq!(bulk, 1);
    assert_eq!(m.io_calls().len(), 16);
    assert_eq!(m.gpr(RDI), 0x6000 + 32);
    assert_eq!(m.gpr(RCX), 0);
}
