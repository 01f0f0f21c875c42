//! The exchange family through the public API — XCHG, XADD, CMPXCHG, CMPXCHG8B, CMPXCHG16B —
//! and the monitor's provided `compare_exchange`: used for locked operands when the monitor
//! implements it, the plain read-then-write through `memory` when it does not (or declines),
//! bounded retries when other processors win the race. State, bytes, expected state.
//!
//! (The host CPU checks the values and flags over many more operands in `oracle_xchg.rs`.)

mod support;

use hvemu::*;
use iced_x86::code_asm::*;
use support::*;

const MMIO: u64 = 0xFEE0_0000;
/// A RAM operand, for the monitor's compare-exchange (an exit on RAM: a write-protected page
/// being tracked, say).
const RAM: u64 = 0x8000;
const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RBX: usize = 3;

const CF: u64 = 1;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

fn long(f: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>) -> Vec<u8> {
    asm(64, f)
}

/// A 64-bit machine with RBX pointing at `at`, which holds `mem`; status flags `flags`.
fn machine(at: u64, mem: &[u8], flags: u64) -> Machine {
    let mut m = Machine::long();
    m.regs.rip = 0x1000;
    m.regs.rflags = 0x202 | flags;
    m.set_gpr(RBX, at);
    m.write_phys(at, mem);
    m
}

/// Runs `bytes` as the exit for a write at `at` (linear = physical here).
fn exit(m: &mut Machine, bytes: &[u8], at: u64) -> Outcome {
    let ctx = MemoryAccessContext::new(bytes, MemoryAccessType::Write, at).with_gva(at);
    m.mmio_ctx(bytes.len() as u8, &ctx)
}

fn le32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn set_names(m: &Machine) -> Vec<RegisterName> {
    m.log
        .iter()
        .find_map(|c| match c {
            Call::Set(v) => Some(v.iter().map(|(n, _)| *n).collect()),
            _ => None,
        })
        .expect("one set_registers call")
}

// ---- CMPXCHG -----------------------------------------------------------------------------

#[test]
fn lock_cmpxchg_success_on_mmio_reads_then_writes_the_source() {
    // lock cmpxchg dword [rbx], ecx: the device register holds EAX's value.
    let bytes = long(|a| a.lock().cmpxchg(dword_ptr(rbx), ecx));
    assert_eq!(bytes, [0xF0, 0x0F, 0xB1, 0x0B]);
    let mut m = machine(MMIO, &le32(0x1234_5678), CF | SF | OF | AF);
    m.set_gpr(RAX, 0xFFFF_FFFF_1234_5678);
    m.set_gpr(RCX, 0xAAAA_AAAA_CAFE_F00D);
    exit(&mut m, &bytes, MMIO).ok();
    // Offered to the monitor, which declines for MMIO; then one read and one write.
    assert_eq!(
        m.compare_exchanges(),
        [(MMIO, le32(0x1234_5678), le32(0xCAFE_F00D), None)]
    );
    assert_eq!(
        m.memory_calls(),
        [
            (MMIO, false, le32(0x1234_5678)),
            (MMIO, true, le32(0xCAFE_F00D))
        ]
    );
    // Success: ZF, and the accumulator is not written (RAX keeps its upper half).
    assert_eq!(m.gpr(RAX), 0xFFFF_FFFF_1234_5678);
    assert_eq!(m.regs.rflags, 0x202 | ZF | PF);
    assert_eq!(m.regs.rip, 0x1004);
    assert_eq!(set_names(&m), [RegisterName::RIP, RegisterName::RFLAGS]);
}

#[test]
fn lock_cmpxchg_failure_on_mmio_writes_the_old_value_back_and_loads_the_accumulator() {
    let bytes = long(|a| a.lock().cmpxchg(dword_ptr(rbx), ecx));
    let mut m = machine(MMIO, &le32(2), ZF);
    m.set_gpr(RAX, 0xFFFF_FFFF_0000_0001);
    m.set_gpr(RCX, 0x99);
    exit(&mut m, &bytes, MMIO).ok();
    // The processor's write cycle: the value read goes back (SDM "CMPXCHG").
    assert_eq!(
        m.memory_calls(),
        [(MMIO, false, le32(2)), (MMIO, true, le32(2))]
    );
    // EAX gets the old value; the 32-bit write zero-extends RAX.
    assert_eq!(m.gpr(RAX), 2);
    assert_eq!(m.gpr(RCX), 0x99);
    // CMP EAX, old = 1 - 2.
    assert_eq!(m.regs.rflags, 0x202 | CF | PF | AF | SF);
}

#[test]
fn cmpxchg_at_byte_word_and_quadword() {
    // cmpxchg byte [rbx], ch without LOCK: no compare-exchange offered; AL mismatches.
    let bytes = long(|a| a.cmpxchg(byte_ptr(rbx), ch));
    let mut m = machine(MMIO, &[0x80], 0);
    m.set_gpr(RAX, 0x1111_1111_1111_1100);
    m.set_gpr(RCX, 0x4200);
    exit(&mut m, &bytes, MMIO).ok();
    assert!(m.compare_exchanges().is_empty());
    assert_eq!(
        m.memory_calls(),
        [(MMIO, false, vec![0x80]), (MMIO, true, vec![0x80])]
    );
    assert_eq!(m.gpr(RAX), 0x1111_1111_1111_1180, "AL merges");
    assert_eq!(m.regs.rflags & STATUS, CF | OF | SF);

    // lock cmpxchg word [rbx], cx: AX matches, CX goes to memory.
    let bytes = long(|a| a.lock().cmpxchg(word_ptr(rbx), cx));
    let mut m = machine(MMIO, &[0x34, 0x12, 0x77], 0);
    m.set_gpr(RAX, 0x1234);
    m.set_gpr(RCX, 0xBEEF);
    exit(&mut m, &bytes, MMIO).ok();
    assert_eq!(m.read_phys(MMIO, 3), [0xEF, 0xBE, 0x77]);
    assert_eq!(m.regs.rflags & STATUS, ZF | PF);

    // lock cmpxchg qword [rbx], rcx: RAX mismatches, RAX gets memory.
    let bytes = long(|a| a.lock().cmpxchg(qword_ptr(rbx), rcx));
    let mut m = machine(MMIO, &u64::MAX.to_le_bytes(), 0);
    m.set_gpr(RAX, 0);
    exit(&mut m, &bytes, MMIO).ok();
    assert_eq!(m.gpr(RAX), u64::MAX);
    assert_eq!(m.read_phys(MMIO, 8), u64::MAX.to_le_bytes());
    assert_eq!(m.regs.rflags & STATUS, CF | AF, "0 - all ones = 1");
}

#[test]
fn lock_cmpxchg_on_ram_uses_the_monitors_compare_exchange() {
    let bytes = long(|a| a.lock().cmpxchg(dword_ptr(rbx), ecx));

    // Success: one compare-exchange, no memory call.
    let mut m = machine(RAM, &le32(7), 0);
    m.atomic_ram = true;
    m.set_gpr(RAX, 7);
    m.set_gpr(RCX, 8);
    exit(&mut m, &bytes, RAM).ok();
    assert_eq!(m.compare_exchanges(), [(RAM, le32(7), le32(8), Some(true))]);
    assert!(m.memory_calls().is_empty());
    assert_eq!(m.read_phys(RAM, 4), le32(8));
    assert_eq!(m.regs.rflags & STATUS, ZF | PF);

    // Failure: one compare-exchange reports the value found; that completes the instruction
    // (the processor's write-back of the same value is invisible on RAM).
    let mut m = machine(RAM, &le32(9), 0);
    m.atomic_ram = true;
    m.set_gpr(RAX, 0xFFFF_FFFF_0000_0007);
    m.set_gpr(RCX, 8);
    exit(&mut m, &bytes, RAM).ok();
    assert_eq!(
        m.compare_exchanges(),
        [(RAM, le32(7), le32(8), Some(false))]
    );
    assert!(m.memory_calls().is_empty());
    assert_eq!(m.read_phys(RAM, 4), le32(9));
    assert_eq!(m.gpr(RAX), 9);
    assert_eq!(m.regs.rflags & STATUS, CF | SF | AF);
}

#[test]
fn a_monitor_without_compare_exchange_gets_read_then_write() {
    // The same LOCK CMPXCHG on RAM, through a monitor implementing only the five required
    // callbacks: the default `compare_exchange` declines and `memory` does the work.
    let bytes = long(|a| a.lock().cmpxchg(dword_ptr(rbx), ecx));
    let mut m = machine(RAM, &le32(7), 0);
    m.atomic_ram = true; // not reachable through `Basic`
    m.set_gpr(RAX, 7);
    m.set_gpr(RCX, 8);
    let exit_ctx = m.exit(bytes.len() as u8);
    let ctx = MemoryAccessContext::new(&bytes, MemoryAccessType::Write, RAM).with_gva(RAM);
    m.log.clear();
    let result = Emulator::new(Basic(&mut m)).emulate_mmio(&exit_ctx, &ctx);
    assert_eq!(result, Ok(Completion::Complete));
    assert!(m.compare_exchanges().is_empty());
    assert_eq!(
        m.memory_calls(),
        [(RAM, false, le32(7)), (RAM, true, le32(8))]
    );
    assert_eq!(m.regs.rflags & STATUS, ZF | PF);
}

#[test]
fn a_failing_compare_exchange_is_a_memory_callback_failure() {
    let bytes = long(|a| a.lock().cmpxchg(dword_ptr(rbx), ecx));
    let mut m = machine(RAM, &le32(7), 0);
    m.atomic_ram = true;
    m.fail = Some(Fail::Memory);
    let outcome = exit(&mut m, &bytes, RAM);
    assert_eq!(
        outcome.result,
        Err(EmulationError::Memory("compare_exchange failed"))
    );
    assert_eq!(
        outcome.result.unwrap_err().status(),
        EmulatorStatus::MEMORY_CALLBACK_FAILED
    );
}

// ---- CMPXCHG8B / CMPXCHG16B --------------------------------------------------------------

#[test]
fn cmpxchg16b_success_and_failure_on_mmio() {
    let bytes = long(|a| a.lock().cmpxchg16b(xmmword_ptr(rbx)));
    assert_eq!(bytes, [0xF0, 0x48, 0x0F, 0xC7, 0x0B]);
    let old: u128 = 0x0011_2233_4455_6677_8899_AABB_CCDD_EEFF;

    // RDX:RAX equals memory: RCX:RBX is stored, ZF set, no other flag touched.
    let mut m = machine(MMIO, &old.to_le_bytes(), CF | SF);
    m.set_gpr(RBX, MMIO); // the address register is also the new value's low half
    m.set_gpr(RDX, (old >> 64) as u64);
    m.set_gpr(RAX, old as u64);
    m.set_gpr(RCX, 0xC1C1_C1C1_C1C1_C1C1);
    exit(&mut m, &bytes, MMIO).ok();
    let mut stored = MMIO.to_le_bytes().to_vec();
    stored.extend_from_slice(&0xC1C1_C1C1_C1C1_C1C1u64.to_le_bytes());
    assert_eq!(
        m.memory_calls(),
        [
            (MMIO, false, old.to_le_bytes().to_vec()),
            (MMIO, true, stored)
        ]
    );
    assert_eq!(m.regs.rflags, 0x202 | CF | SF | ZF);
    assert_eq!((m.gpr(RAX), m.gpr(RDX)), (old as u64, (old >> 64) as u64));

    // Mismatch: RDX:RAX get memory, the old value is written back, ZF clear.
    let mut m = machine(MMIO, &old.to_le_bytes(), ZF | PF);
    m.set_gpr(RDX, 1);
    m.set_gpr(RAX, 2);
    exit(&mut m, &bytes, MMIO).ok();
    assert_eq!(m.gpr(RAX), old as u64);
    assert_eq!(m.gpr(RDX), (old >> 64) as u64);
    assert_eq!(
        m.memory_calls()[1],
        (MMIO, true, old.to_le_bytes().to_vec())
    );
    assert_eq!(m.regs.rflags, 0x202 | PF);
}

#[test]
fn cmpxchg16b_needs_a_16_byte_aligned_operand() {
    let bytes = long(|a| a.lock().cmpxchg16b(xmmword_ptr(rbx)));
    let mut m = machine(MMIO + 8, &[0; 16], 0);
    m.atomic_ram = true;
    let outcome = exit(&mut m, &bytes, MMIO + 8);
    assert_eq!(outcome.exception(), Exception::gp(0));
    assert!(m.memory_calls().is_empty());
    assert!(m.compare_exchanges().is_empty());
    assert!(m.translations().is_empty());

    // The linear address counts: with an FS base of 8, fs:[rbx] is MMIO + 8, misaligned...
    let mut m = machine(MMIO, &[0; 16], 0);
    let mut fs_seg = m.regs.segment(Segment::Fs);
    fs_seg.base = 8;
    m.regs.set_segment(Segment::Fs, fs_seg);
    let fs_bytes = long(|a| a.lock().cmpxchg16b(xmmword_ptr(rbx).fs()));
    let outcome = exit(&mut m, &fs_bytes, MMIO + 8);
    assert_eq!(outcome.exception(), Exception::gp(0));
    // ... while an FS base of 16 keeps it aligned.
    fs_seg.base = 16;
    m.regs.set_segment(Segment::Fs, fs_seg);
    m.write_phys(MMIO + 16, &[0; 16]);
    exit(&mut m, &fs_bytes, MMIO + 16).ok();
}

#[test]
fn cmpxchg8b_in_32_bit_code_and_on_ram_with_the_monitors_compare_exchange() {
    // lock cmpxchg8b [ebx] in 32-bit protected mode on MMIO.
    let bytes = asm(32, |a| a.lock().cmpxchg8b(qword_ptr(ebx)));
    assert_eq!(bytes, [0xF0, 0x0F, 0xC7, 0x0B]);
    let mut m = Machine::protected32();
    m.set_gpr(RBX, MMIO);
    m.set_gpr(RAX, 0x5555_5555);
    m.set_gpr(RDX, 0x6666_6666);
    m.write_phys(MMIO, &0x1234_5678_9ABC_DEF0u64.to_le_bytes());
    m.mmio(&bytes, MemoryAccessType::Write, MMIO).ok();
    assert_eq!((m.gpr(RDX), m.gpr(RAX)), (0x1234_5678, 0x9ABC_DEF0));
    assert_eq!(m.regs.rflags & ZF, 0);

    // In 64-bit mode, on RAM the monitor makes atomic: EDX:EAX match, ECX:EBX stored; the
    // upper halves of RAX and RDX stay.
    let bytes = long(|a| a.lock().cmpxchg8b(qword_ptr(rsi)));
    let mut m = machine(0, &[], 0);
    m.atomic_ram = true;
    m.set_gpr(6, RAM);
    m.write_phys(RAM, &0x0000_0002_0000_0001u64.to_le_bytes());
    m.set_gpr(RAX, 0xAAAA_AAAA_0000_0001);
    m.set_gpr(RDX, 0xBBBB_BBBB_0000_0002);
    m.set_gpr(RBX, 0xFFFF_FFFF_0000_0003);
    m.set_gpr(RCX, 0xFFFF_FFFF_0000_0004);
    exit(&mut m, &bytes, RAM).ok();
    assert_eq!(
        m.compare_exchanges(),
        [(
            RAM,
            0x0000_0002_0000_0001u64.to_le_bytes().to_vec(),
            0x0000_0004_0000_0003u64.to_le_bytes().to_vec(),
            Some(true)
        )]
    );
    assert!(m.memory_calls().is_empty());
    assert_eq!(m.gpr(RAX), 0xAAAA_AAAA_0000_0001);
    assert_eq!(m.gpr(RDX), 0xBBBB_BBBB_0000_0002);
    assert_eq!(m.regs.rflags & STATUS, ZF);
}

// ---- XCHG and XADD -----------------------------------------------------------------------

#[test]
fn xchg_is_locked_without_the_prefix() {
    // xchg [rbx], ecx; assemblers write `xchg ecx, [rbx]` with the same bytes.
    let bytes = long(|a| a.xchg(dword_ptr(rbx), ecx));
    assert_eq!(bytes, [0x87, 0x0B]);

    // MMIO: offered, declined, read then write; ECX gets the old value, zero-extended.
    let mut m = machine(MMIO, &le32(0xDEAD_BEEF), 0);
    m.set_gpr(RCX, 0xFFFF_FFFF_0000_0001);
    exit(&mut m, &bytes, MMIO).ok();
    assert_eq!(m.compare_exchanges().len(), 1);
    assert_eq!(
        m.memory_calls(),
        [(MMIO, false, le32(0xDEAD_BEEF)), (MMIO, true, le32(1))]
    );
    assert_eq!(m.gpr(RCX), 0xDEAD_BEEF);
    assert_eq!(m.regs.rflags, 0x202, "no flag changes");

    // RAM with the monitor's compare-exchange: a guess, then the swap from the value found.
    let mut m = machine(RAM, &le32(0xDEAD_BEEF), 0);
    m.atomic_ram = true;
    m.set_gpr(RCX, 1);
    exit(&mut m, &bytes, RAM).ok();
    assert_eq!(
        m.compare_exchanges(),
        [
            (RAM, le32(0), le32(1), Some(false)),
            (RAM, le32(0xDEAD_BEEF), le32(1), Some(true))
        ]
    );
    assert!(m.memory_calls().is_empty());
    assert_eq!(m.gpr(RCX), 0xDEAD_BEEF);
    assert_eq!(m.read_phys(RAM, 4), le32(1));

    // Byte form with a high register: xchg [rbx], ah.
    let bytes = long(|a| a.xchg(byte_ptr(rbx), ah));
    let mut m = machine(MMIO, &[0x5A], 0);
    m.set_gpr(RAX, 0x1234);
    exit(&mut m, &bytes, MMIO).ok();
    assert_eq!(m.gpr(RAX), 0x5A34);
    assert_eq!(m.read_phys(MMIO, 1), [0x12]);
}

#[test]
fn xadd_adds_and_returns_the_old_value() {
    // xadd word [rbx], cx without LOCK: not offered to the monitor.
    let bytes = long(|a| a.xadd(word_ptr(rbx), cx));
    let mut m = machine(MMIO, &[0xFF, 0x7F], 0);
    m.set_gpr(RCX, 0xAAAA_0001);
    exit(&mut m, &bytes, MMIO).ok();
    assert!(m.compare_exchanges().is_empty());
    assert_eq!(m.read_phys(MMIO, 2), [0x00, 0x80]);
    assert_eq!(m.gpr(RCX), 0xAAAA_7FFF, "CX merges");
    assert_eq!(m.regs.rflags & STATUS, OF | SF | AF | PF);

    // lock xadd qword [rbx], rcx on RAM with the monitor's compare-exchange.
    let bytes = long(|a| a.lock().xadd(qword_ptr(rbx), rcx));
    let mut m = machine(RAM, &u64::MAX.to_le_bytes(), 0);
    m.atomic_ram = true;
    m.set_gpr(RCX, 1);
    exit(&mut m, &bytes, RAM).ok();
    assert_eq!(m.compare_exchanges().len(), 2);
    assert_eq!(m.compare_exchanges()[1].3, Some(true));
    assert_eq!(m.read_phys(RAM, 8), [0; 8]);
    assert_eq!(m.gpr(RCX), u64::MAX);
    assert_eq!(m.regs.rflags & STATUS, CF | ZF | PF | AF);
}

#[test]
fn locked_operations_that_keep_losing_the_race_are_left_for_the_guest_to_retry() {
    // lock xadd [rbx], ecx while another processor writes the operand before every
    // compare-exchange: after eight lost races nothing is written, no register but RIP and
    // RFLAGS.RF is committed, RIP stays on the instruction.
    let bytes = long(|a| a.lock().xadd(dword_ptr(rbx), ecx));
    let mut m = machine(RAM, &le32(100), CF);
    m.atomic_ram = true;
    m.set_gpr(RCX, 5);
    for i in 0..8u32 {
        m.racing_writes.push_back((RAM, le32(1000 + i)));
    }
    let outcome = exit(&mut m, &bytes, RAM);
    assert_eq!(outcome.result, Ok(Completion::Partial));
    assert_eq!(m.compare_exchanges().len(), 8);
    assert!(m.compare_exchanges().iter().all(|c| c.3 == Some(false)));
    assert!(m.memory_calls().is_empty());
    assert_eq!(
        m.read_phys(RAM, 4),
        le32(1007),
        "only the other processor wrote"
    );
    assert_eq!(m.gpr(RCX), 5);
    // RF set: the instruction will be resumed, so its breakpoint must not fire again.
    assert_eq!(m.regs.rflags, 0x202 | CF | (1 << 16));
    assert_eq!(m.regs.rip, 0x1000);
    assert_eq!(set_names(&m), [RegisterName::RIP, RegisterName::RFLAGS]);

    // The guest executes it again; this time the race is won on the second attempt.
    m.racing_writes.push_back((RAM, le32(2000)));
    exit(&mut m, &bytes, RAM).ok();
    assert_eq!(m.read_phys(RAM, 4), le32(2005));
    assert_eq!(m.gpr(RCX), 2000);
    assert_eq!(m.regs.rip, 0x1000 + bytes.len() as u64);
}

// ---- LOCKed ALU --------------------------------------------------------------------------

#[test]
fn locked_alu_on_ram_uses_the_monitors_compare_exchange_unless_it_crosses_a_page() {
    let bytes = long(|a| a.lock().add(dword_ptr(rbx), ecx));
    let mut m = machine(RAM, &le32(0xFFFF_FFFF), 0);
    m.atomic_ram = true;
    m.set_gpr(RCX, 1);
    exit(&mut m, &bytes, RAM).ok();
    assert_eq!(
        m.compare_exchanges(),
        [
            (RAM, le32(0), le32(1), Some(false)),
            (RAM, le32(0xFFFF_FFFF), le32(0), Some(true))
        ]
    );
    assert!(m.memory_calls().is_empty());
    assert_eq!(m.read_phys(RAM, 4), le32(0));
    assert_eq!(m.regs.rflags & STATUS, CF | ZF | PF | AF);

    // Across a page boundary there is no single-page compare-exchange: read, then write,
    // each split in two.
    let at = RAM + 0xFFE;
    let mut m = machine(at, &le32(0x0001_FFFF), 0);
    m.atomic_ram = true;
    m.set_gpr(RCX, 1);
    exit(&mut m, &bytes, at).ok();
    assert!(m.compare_exchanges().is_empty());
    assert_eq!(
        m.memory_calls(),
        [
            (at, false, vec![0xFF, 0xFF]),
            (RAM + 0x1000, false, vec![0x01, 0x00]),
            (at, true, vec![0x00, 0x00]),
            (RAM + 0x1000, true, vec![0x02, 0x00]),
        ]
    );

    // Unlocked ALU never asks.
    let bytes = long(|a| a.add(dword_ptr(rbx), ecx));
    let mut m = machine(RAM, &le32(1), 0);
    m.atomic_ram = true;
    m.set_gpr(RCX, 1);
    exit(&mut m, &bytes, RAM).ok();
    assert!(m.compare_exchanges().is_empty());
    assert_eq!(m.memory_calls().len(), 2);
}

// ---- faults ------------------------------------------------------------------------------

#[test]
fn a_read_only_page_faults_as_a_write_before_any_access() {
    let mut m = Machine::long();
    m.identity(0, 16);
    m.map(
        0x20_0000,
        Pte {
            gpa: MMIO,
            writable: false,
            user: false,
            executable: false,
        },
    );
    m.atomic_ram = true;
    m.set_gpr(RBX, 0x20_0010);
    for bytes in [
        long(|a| a.xchg(dword_ptr(rbx), ecx)),
        long(|a| a.cmpxchg(dword_ptr(rbx), ecx)),
        long(|a| a.lock().xadd(dword_ptr(rbx), ecx)),
    ] {
        let outcome = m.mmio(&bytes, MemoryAccessType::Read, MMIO + 0x10);
        // P=1 (present, protection), W=1.
        assert_eq!(outcome.exception(), Exception::pf(0x20_0010, 0b11));
        assert!(m.memory_calls().is_empty());
        assert!(m.compare_exchanges().is_empty());
    }
}

#[test]
fn locked_bit_test_and_set_uses_the_compare_exchange() {
    // lock bts dword [rbx], 3 on RAM the monitor can update atomically.
    let bytes = long(|a| a.lock().bts(dword_ptr(rbx), 3));
    let mut m = machine(RAM, &le32(0x0000_0001), 0x202);
    m.atomic_ram = true;
    exit(&mut m, &bytes, RAM).ok();
    assert_eq!(m.read_phys(RAM, 4), le32(0x0000_0009));
    let calls = m.compare_exchanges();
    assert_eq!(
        calls.len(),
        2,
        "first from the guess 0, then from the value found"
    );
    assert_eq!(calls[1].3, Some(true));
    assert!(m.memory_calls().is_empty());
    assert_eq!(m.regs.rflags & CF, 0, "CF receives the old bit 3");
    // Without LOCK: a plain read and write.
    let bytes = long(|a| a.bts(dword_ptr(rbx), 0));
    exit(&mut m, &bytes, RAM).ok();
    assert_eq!(m.compare_exchanges().len(), 0);
    assert_eq!(m.memory_calls().len(), 2);
    assert_eq!(m.regs.rflags & CF, CF);
}
