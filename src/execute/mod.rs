//! Execution: one module per instruction family. Each family says which manual section it
//! follows and which flags it defines.
//!
//! | family | module | instructions |
//! |---|---|---|
//! | moves | [`mov`] | MOV (r/m, moffs, imm, Sreg store), MOVZX, MOVSX, MOVSXD |
//! | strings | [`string`] | MOVS, STOS, LODS (with REP); CMPS, SCAS (with REPE/REPNE) |
//! | ports | [`io`] | IN, OUT, INS, OUTS (with REP); CPL/IOPL and the TSS I/O bitmap |
//! | ALU | [`alu`] | ADD, OR, ADC, SBB, AND, SUB, XOR, CMP, TEST, INC, DEC, NEG, NOT on memory; flags in [`flags`] |
//! | exchange | [`xchg`] | XCHG, XADD, CMPXCHG, CMPXCHG8B, CMPXCHG16B on memory; the locked read-modify-write (monitor compare-exchange) |
//! | stack | [`stack`] | PUSH, POP, PUSHF, near CALL, JMP m, RET, LEAVE: the operand or the stack in emulated memory |
//! | bits | [`bits`] | BT, BTS, BTR, BTC (immediate and register offsets reaching outside the operand); BSF, BSR, POPCNT, LZCNT, TZCNT from memory |
//! | shifts | [`shift`] | SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR by 1, imm8 and CL; SHLD, SHRD by imm8 and CL; undefined flags per vendor |
//! | multiply/divide | [`muldiv`] | MUL, IMUL (1, 2 and 3 operands), DIV, IDIV with #DE; undefined flags per vendor |
//! | conditional | [`cond`] | SETcc to memory, CMOVcc from memory; conditions from [`flags::condition`] |
//! | byte-order/direct-store moves | [`movx`] | MOVBE (load and store), MOVNTI, MOVDIRI, MOVDIR64B |
//! | vector moves | [`vector`] | MMX, SSE, AVX/AVX2 (VEX) and AVX-512 (EVEX) moves between a register and memory: MOVUPS/UPD, MOVAPS/APD, MOVDQU/DQA (VMOVDQU8/16/32/64, VMOVDQA32/64), LDDQU, MOVNTPS/PD/DQ/DQA, MOVNTQ, MOVNTSS/SD, MOVD, MOVQ, MOVSS, MOVSD, MOVLPS/HPS/LPD/HPD, VMOVSH, VMOVW; opmask merging and zeroing |

mod alu;
mod bits;
mod cond;
mod flags;
mod io;
mod mov;
mod movx;
mod muldiv;
mod shift;
mod stack;
mod string;
mod vector;
mod xchg;

use iced_x86::{Instruction, OpKind};

use crate::callbacks::EmulatorCallbacks;
use crate::context::MemoryAccessType;
use crate::error::EmulationError;
use crate::operand::{MemRef, operand_registers};
use crate::registers::Segment;
use crate::rep::Progress;
use crate::state::{Cpu, Mode, RegSet, Res, Slot, WideNames, gpr};

/// The family an instruction belongs to, which decides how it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// MOV and its extending forms.
    Move,
    /// MOVS, STOS, LODS.
    String(string::StringOp),
    /// IN, OUT, INS, OUTS.
    Port(io::PortOp),
    /// ADD … NOT with a memory operand.
    Alu(alu::AluKind),
    /// XCHG, XADD, CMPXCHG, CMPXCHG8B, CMPXCHG16B with a memory operand.
    Exchange(xchg::ExchangeKind),
    /// PUSH, POP, PUSHF, near CALL, JMP m, RET, LEAVE.
    Stack(stack::StackOp),
    /// BT … BTC, BSF, BSR, POPCNT, LZCNT, TZCNT with a memory operand.
    Bits(bits::BitKind),
    /// Shifts and rotates with a memory destination.
    Shift(shift::ShiftKind),
    /// MUL, IMUL, DIV, IDIV with a memory operand.
    MulDiv(muldiv::MulDivKind),
    /// SETcc to memory, CMOVcc from memory.
    Cond(cond::CondKind),
    /// MOVBE and MOVNTI.
    MovX(movx::MovXKind),
    /// MMX, SSE, AVX and AVX-512 moves between a register and memory.
    Vector(vector::VecMove),
}

impl Family {
    /// The family of a decoded instruction, if hvemu emulates it.
    #[inline]
    pub(crate) fn of(instr: &Instruction) -> Option<Family> {
        // The families claim disjoint sets of instructions (a test checks it), so the order
        // only decides the cost: the commonest MMIO forms first.
        mov::classify(instr)
            .map(|()| Family::Move)
            .or_else(|| alu::classify(instr).map(Family::Alu))
            .or_else(|| xchg::classify(instr).map(Family::Exchange))
            .or_else(|| vector::classify(instr).map(Family::Vector))
            .or_else(|| string::classify(instr).map(Family::String))
            .or_else(|| io::classify(instr).map(Family::Port))
            .or_else(|| stack::classify(instr).map(Family::Stack))
            .or_else(|| bits::classify(instr).map(Family::Bits))
            .or_else(|| shift::classify(instr).map(Family::Shift))
            .or_else(|| muldiv::classify(instr).map(Family::MulDiv))
            .or_else(|| cond::classify(instr).map(Family::Cond))
            .or_else(|| movx::classify(instr).map(Family::MovX))
    }

    /// The port operation, if this is one.
    pub(crate) fn port(self) -> Option<io::PortOp> {
        match self {
            Family::Port(op) => Some(op),
            _ => None,
        }
    }
}

/// Which ways an instruction may access memory, counting its explicit operand, its string
/// operands and the stack. A write that happens only under a condition (CMPXCHG, a masked
/// vector store) counts as a write; so does every locked operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemoryUse {
    /// Some memory is read.
    pub reads: bool,
    /// Some memory is written.
    pub writes: bool,
}

impl MemoryUse {
    const READ: MemoryUse = MemoryUse {
        reads: true,
        writes: false,
    };
    const WRITE: MemoryUse = MemoryUse {
        reads: false,
        writes: true,
    };
    const BOTH: MemoryUse = MemoryUse {
        reads: true,
        writes: true,
    };

    /// Whether an exit reporting an access of kind `access` can have come from the
    /// instruction. An instruction fetch from MMIO can come from any of them.
    pub(crate) fn allows(self, access: MemoryAccessType) -> bool {
        match access {
            MemoryAccessType::Read => self.reads,
            MemoryAccessType::Write => self.writes,
            MemoryAccessType::Execute => true,
        }
    }
}

impl Family {
    /// How the instruction uses memory, so that an exit whose direction the instruction cannot
    /// produce is refused rather than emulated.
    pub(crate) fn memory_use(self, instr: &Instruction) -> MemoryUse {
        let memory_first = instr.op0_kind() == OpKind::Memory;
        // Register or memory destination: a store when the memory operand is the first.
        let store_or_load = if memory_first {
            MemoryUse::WRITE
        } else {
            MemoryUse::READ
        };
        let rmw_or_load = if memory_first {
            MemoryUse::BOTH
        } else {
            MemoryUse::READ
        };
        match self {
            Family::Move => store_or_load,
            Family::String(op) => match op.kind {
                string::StringKind::Movs => MemoryUse::BOTH,
                string::StringKind::Stos => MemoryUse::WRITE,
                string::StringKind::Lods | string::StringKind::Cmps | string::StringKind::Scas => {
                    MemoryUse::READ
                }
            },
            Family::Port(op) => match (op.string, op.is_write) {
                (false, _) => MemoryUse {
                    reads: false,
                    writes: false,
                },
                (true, true) => MemoryUse::READ,
                (true, false) => MemoryUse::WRITE,
            },
            Family::Alu(alu::AluKind::Cmp | alu::AluKind::Test) => MemoryUse::READ,
            Family::Alu(_) => rmw_or_load,
            Family::Exchange(_) | Family::Shift(_) => MemoryUse::BOTH,
            Family::Stack(op) => match op.kind {
                // The operand is read (PUSH m, CALL m) and the stack written.
                stack::StackKind::Push | stack::StackKind::Call => MemoryUse {
                    reads: memory_first,
                    writes: true,
                },
                stack::StackKind::PushFlags => MemoryUse::WRITE,
                // The stack is read and the operand written (POP m).
                stack::StackKind::Pop => MemoryUse {
                    reads: true,
                    writes: memory_first,
                },
                stack::StackKind::Jmp | stack::StackKind::Ret | stack::StackKind::Leave => {
                    MemoryUse::READ
                }
            },
            Family::Bits(bits::BitKind::Bts | bits::BitKind::Btr | bits::BitKind::Btc) => {
                MemoryUse::BOTH
            }
            Family::Bits(_) | Family::MulDiv(_) => MemoryUse::READ,
            Family::Cond(cond::CondKind::Set) => MemoryUse::WRITE,
            Family::Cond(cond::CondKind::Move) => MemoryUse::READ,
            Family::MovX(movx::MovXKind::Movdir64b) => MemoryUse::BOTH,
            Family::MovX(_) => store_or_load,
            Family::Vector(op) => match op.dir {
                vector::Dir::Load => MemoryUse::READ,
                vector::Dir::Store => MemoryUse::WRITE,
            },
        }
    }
}

/// What the emulator learns of an instruction before touching the machine: the decoded
/// instruction, its family, whether it has a memory operand and the registers it reads. It
/// depends on the instruction alone, so a [`DecodeCache`](crate::DecodeCache) keeps it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub instr: Instruction,
    /// `None`: an instruction hvemu does not emulate.
    pub family: Option<Family>,
    pub touches_memory: bool,
    /// The registers its operands name and its family reads whatever the machine's state;
    /// [`registers_needed`] adds and removes those that depend on it.
    pub reads: RegSet,
    /// The registers held by name it reads.
    pub wide: WideNames,
}

impl Plan {
    /// A plan to decode into (an invalid instruction, not yet classified).
    #[inline]
    pub(crate) fn empty() -> Plan {
        Plan {
            instr: Instruction::default(),
            family: None,
            touches_memory: false,
            reads: RegSet::EMPTY,
            wide: WideNames::EMPTY,
        }
    }

    /// The plan of `instr`.
    #[cfg(test)]
    pub(crate) fn of(instr: Instruction) -> Plan {
        let mut plan = Plan::empty();
        plan.instr = instr;
        plan.classify();
        plan
    }

    /// Classifies the instruction in place.
    #[inline]
    pub(crate) fn classify(&mut self) {
        let instr = &self.instr;
        self.family = Family::of(instr);
        self.touches_memory = touches_memory(instr);
        (self.reads, self.wide) = match self.family {
            Some(family) => instruction_registers(family, instr),
            None => (RegSet::EMPTY, WideNames::EMPTY),
        };
    }
}

/// Whether the instruction accesses memory, so that a memory exit can have come from it: an
/// explicit memory operand, a string operand, or the stack.
#[inline]
pub(crate) fn touches_memory(instr: &Instruction) -> bool {
    (0..instr.op_count()).any(|i| {
        matches!(
            instr.op_kind(i),
            OpKind::Memory
                | OpKind::MemorySegSI
                | OpKind::MemorySegESI
                | OpKind::MemorySegRSI
                | OpKind::MemorySegDI
                | OpKind::MemorySegEDI
                | OpKind::MemorySegRDI
                | OpKind::MemoryESDI
                | OpKind::MemoryESEDI
                | OpKind::MemoryESRDI
        )
    }) || instr.is_stack_instruction()
}

/// The registers an instruction of `family` reads whatever the machine's state.
#[inline]
fn instruction_registers(family: Family, instr: &Instruction) -> (RegSet, WideNames) {
    let set = operand_registers(instr);
    let set = match family {
        Family::Move => mov::registers(set, instr),
        Family::String(op) => op.registers(set, instr),
        Family::Exchange(kind) => kind.registers(set),
        Family::Stack(op) => op.registers(set),
        // The accumulator pair of the one-operand multiplies and divides.
        Family::MulDiv(kind) if kind.uses_accumulator() => {
            set.with(Slot::Gpr(gpr::RAX)).with(Slot::Gpr(gpr::RDX))
        }
        // MOVDIR64B writes through ES.
        Family::MovX(movx::MovXKind::Movdir64b) => set.with(Slot::Seg(Segment::Es)),
        // Explicit operands only (CL is one when it is the count; RFLAGS comes with the exit).
        // What a port instruction reads beyond them depends on the exit: `registers_needed`.
        Family::Alu(_)
        | Family::Port(_)
        | Family::Bits(_)
        | Family::Shift(_)
        | Family::MulDiv(_)
        | Family::Cond(_)
        | Family::MovX(_) => set,
        Family::Vector(op) => return (set, vector::registers(instr, op)),
    };
    (set, WideNames::EMPTY)
}

/// Every register the instruction will read, so that one `get_registers` call gathers them:
/// the plan's, adjusted to the exit and the processor's mode.
pub(crate) fn registers_needed<C: EmulatorCallbacks>(
    cpu: &Cpu<'_, C>,
    family: Family,
    plan: &Plan,
) -> RegSet {
    let mut set = plan.reads;
    if let Family::Port(op) = family {
        set = op.registers(set, &plan.instr, cpu.port_hint.is_some());
        if cpu.port_permission_checked() {
            set = set.with(Slot::Tr);
        }
    }
    if cpu.state.mode == Mode::Long {
        // Only FS and GS have bases in 64-bit mode; the others need not be read.
        for s in [Segment::Es, Segment::Ss, Segment::Ds] {
            set = set.without(Slot::Seg(s));
        }
    }
    set
}

/// Runs the instruction.
#[inline]
pub(crate) fn run<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    family: Family,
    instr: &Instruction,
) -> Res<Progress, C> {
    match family {
        Family::Move => mov::run(cpu, instr).map(|()| Progress::Complete),
        Family::String(op) => string::run(cpu, instr, op),
        Family::Port(op) => io::run(cpu, instr, op),
        Family::Alu(kind) => alu::run(cpu, instr, kind),
        Family::Exchange(kind) => xchg::run(cpu, instr, kind),
        Family::Stack(op) => stack::run(cpu, instr, op).map(|()| Progress::Complete),
        Family::Bits(kind) => bits::run(cpu, instr, kind),
        Family::Shift(kind) => shift::run(cpu, instr, kind).map(|()| Progress::Complete),
        Family::MulDiv(kind) => muldiv::run(cpu, instr, kind).map(|()| Progress::Complete),
        Family::Cond(kind) => cond::run(cpu, instr, kind).map(|()| Progress::Complete),
        Family::MovX(kind) => movx::run(cpu, instr, kind).map(|()| Progress::Complete),
        Family::Vector(op) => vector::run(cpu, instr, op).map(|()| Progress::Complete),
    }
}

/// Reads a 1-, 2-, 4- or 8-byte value from memory.
pub(crate) fn read_value<C: EmulatorCallbacks>(
    cpu: &mut Cpu<'_, C>,
    mem: MemRef,
    size: usize,
) -> Res<u64, C> {
    let size = size.min(8);
    let span = cpu.resolve(mem, size, crate::access::Intent::Read)?;
    cpu.read_span_value(&span, size)
}

/// The error for an instruction form hvemu does not emulate. Cold (the policy in lib.rs), and
/// given the instruction so that reading its code is off the path too.
#[cold]
#[inline(never)]
pub(crate) fn unsupported<E>(instr: &Instruction) -> EmulationError<E> {
    EmulationError::Unsupported { code: instr.code() }
}

#[cfg(test)]
pub(crate) mod tests {
    extern crate std;

    use iced_x86::{Code, Decoder, DecoderOptions, Instruction, OpKind};
    use std::collections::BTreeMap;
    use std::sync::OnceLock;
    use std::vec::Vec;

    /// No instruction is claimed by two families (so `Family::of` may ask them in any order):
    /// every form of the legacy maps, and every vector move form.
    #[test]
    fn families_are_disjoint() {
        use super::{alu, bits, cond, io, mov, movx, muldiv, shift, stack, string, vector, xchg};
        let claims = |i: &Instruction| {
            [
                mov::classify(i).is_some(),
                alu::classify(i).is_some(),
                xchg::classify(i).is_some(),
                vector::classify(i).is_some(),
                string::classify(i).is_some(),
                io::classify(i).is_some(),
                stack::classify(i).is_some(),
                bits::classify(i).is_some(),
                shift::classify(i).is_some(),
                muldiv::classify(i).is_some(),
                cond::classify(i).is_some(),
                movx::classify(i).is_some(),
            ]
            .into_iter()
            .filter(|&c| c)
            .count()
        };
        let mut claimed = 0;
        for instr in decode_all_forms().values().flatten() {
            let n = claims(instr);
            assert!(
                n <= 1,
                "{instr} ({:?}) is claimed by {n} families",
                instr.code()
            );
            claimed += n;
        }
        for code in Code::values().filter(|c| vector::form(*c).is_some()) {
            let mut instr = Instruction::default();
            instr.set_code(code);
            instr.set_op0_kind(OpKind::Memory);
            assert_eq!(claims(&instr), 1, "{code:?}");
        }
        // Not vacuous: most of the legacy forms hvemu emulates were seen.
        assert!(claimed > 300, "{claimed} claimed");
    }

    /// `Family::memory_use` agrees with iced-x86's own account of each form's memory
    /// accesses (explicit, string and stack), for every emulated form of the legacy maps.
    #[test]
    fn memory_use_matches_iced() {
        use iced_x86::{InstructionInfoFactory, OpAccess};
        let mut factory = InstructionInfoFactory::new();
        let mut checked = 0;
        for instr in decode_all_forms().values().flatten() {
            let Some(family) = super::Family::of(instr) else {
                continue;
            };
            if !super::touches_memory(instr) {
                continue;
            }
            let info = factory.info(instr);
            let mut expected = super::MemoryUse {
                reads: false,
                writes: false,
            };
            for m in info.used_memory() {
                let (r, w) = match m.access() {
                    OpAccess::Read | OpAccess::CondRead => (true, false),
                    OpAccess::Write | OpAccess::CondWrite => (false, true),
                    OpAccess::ReadWrite | OpAccess::ReadCondWrite => (true, true),
                    _ => (false, false),
                };
                expected.reads |= r;
                expected.writes |= w;
            }
            assert_eq!(family.memory_use(instr), expected, "{:?}", instr.code());
            checked += 1;
        }
        assert!(checked > 400, "only {checked} forms checked");
    }

    /// Samples of every instruction the one- and two-byte opcode maps decode to, in 16-, 32-
    /// and 64-bit code, with the operand-size, REX.W, LOCK and REP prefixes and both a memory
    /// and a register ModRM: per iced-x86 code, the first sample with a memory operand and the
    /// first without one. Built once per test binary.
    pub(crate) fn decode_all_forms() -> &'static BTreeMap<Code, Vec<Instruction>> {
        static FORMS: OnceLock<BTreeMap<Code, Vec<Instruction>>> = OnceLock::new();
        FORMS.get_or_init(|| {
            let mut found: BTreeMap<Code, Vec<Instruction>> = BTreeMap::new();
            let prefixes: [&[u8]; 12] = [
                &[],
                &[0x66],
                &[0x48],
                &[0xF0],
                &[0xF0, 0x66],
                &[0xF0, 0x48],
                &[0xF3],
                &[0xF3, 0x66],
                &[0xF3, 0x48],
                &[0xF2],
                &[0xF2, 0x66],
                &[0xF2, 0x48],
            ];
            for bitness in [16, 32, 64] {
                for prefix in prefixes {
                    if bitness != 64 && prefix.contains(&0x48) {
                        continue;
                    }
                    for map in [&[][..], &[0x0F][..]] {
                        for opcode in 0..=0xFFu8 {
                            if map.is_empty() && opcode == 0x0F {
                                continue;
                            }
                            for modrm in (0..8u8).flat_map(|reg| [reg << 3, 0xC0 | reg << 3]) {
                                let mut bytes = Vec::from(prefix);
                                bytes.extend_from_slice(map);
                                bytes.extend_from_slice(&[opcode, modrm, 0, 0, 0, 0, 0, 0]);
                                let mut decoder =
                                    Decoder::new(bitness, &bytes, DecoderOptions::NONE);
                                let instr = decoder.decode();
                                if instr.is_invalid() {
                                    continue;
                                }
                                let memory = |i: &Instruction| {
                                    (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory)
                                };
                                let samples = found.entry(instr.code()).or_default();
                                if !samples.iter().any(|s| memory(s) == memory(&instr)) {
                                    samples.push(instr);
                                }
                            }
                        }
                    }
                }
            }
            found
        })
    }
}
