//! The register snapshot of one emulation: gathered in one `get_registers` batch, changed in
//! place, committed by one `set_registers` on success.

use iced_x86::Register;

use crate::callbacks::EmulatorCallbacks;
use crate::context::{ExecutionState, VpExitContext};
use crate::error::EmulationError;
use crate::registers::{RegisterName, RegisterValue, Segment, SegmentAttributes, SegmentRegister};

/// The result type inside the emulator, carrying the monitor's error type.
pub(crate) type Res<T, C> = Result<T, EmulationError<<C as EmulatorCallbacks>::Error>>;

pub(crate) const RFLAGS_ZF: u64 = 1 << 6;
pub(crate) const RFLAGS_TF: u64 = 1 << 8;
pub(crate) const RFLAGS_DF: u64 = 1 << 10;
pub(crate) const RFLAGS_AC: u64 = 1 << 18;
pub(crate) const RFLAGS_VM: u64 = 1 << 17;
pub(crate) const RFLAGS_RF: u64 = 1 << 16;

/// Hardware numbers of the GPRs that instructions use implicitly.
pub(crate) mod gpr {
    pub(crate) const RAX: u8 = 0;
    pub(crate) const RCX: u8 = 1;
    pub(crate) const RDX: u8 = 2;
    pub(crate) const RBX: u8 = 3;
    pub(crate) const RSP: u8 = 4;
    pub(crate) const RBP: u8 = 5;
    pub(crate) const RSI: u8 = 6;
    pub(crate) const RDI: u8 = 7;
}

/// How the processor forms addresses and checks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// CR0.PE = 0: segments are base + limit only, no paging.
    Real,
    /// RFLAGS.VM under protected mode: real-mode addressing at CPL 3, paging possible.
    Virtual8086,
    /// Protected mode, including compatibility mode under long mode: full segmentation.
    Protected,
    /// 64-bit mode: flat segments (FS/GS bases only), canonical addresses.
    Long,
}

/// A set of registers the snapshot holds in slots: a bit mask over [`Slot`]s. Registers held
/// by name (vector, opmask, x87/MMX registers, XCR0) are asked for through [`WideNames`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RegSet {
    slots: u32,
}

/// Up to [`WIDE_REQUEST`] registers held by name for one batch (see [`Cpu::wide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WideNames {
    names: [RegisterName; WIDE_REQUEST],
    len: u8,
}

impl WideNames {
    pub(crate) const EMPTY: WideNames = WideNames {
        names: [RegisterName(u32::MAX); WIDE_REQUEST],
        len: 0,
    };

    /// Adds a name. Beyond [`WIDE_REQUEST`] names the list is unchanged, and [`Cpu::wide`]
    /// reads the name by itself when asked for it.
    #[inline]
    pub(crate) fn with(mut self, name: RegisterName) -> WideNames {
        if self.names().contains(&name) {
            return self;
        }
        if let Some(entry) = self.names.get_mut(usize::from(self.len)) {
            *entry = name;
            self.len = self.len.saturating_add(1);
        }
        self
    }

    pub(crate) fn names(&self) -> &[RegisterName] {
        self.names.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

/// How many registers held by name one [`RegSet`] can ask for.
pub(crate) const WIDE_REQUEST: usize = 8;

/// How many registers held by name one emulation can hold (read or written). The vector family
/// needs at most ten: the MMX path reads FP_CONTROL_STATUS and, when the x87 TOP is not 0, all
/// eight FP_MMX registers.
const WIDE_HELD: usize = 12;

/// A register held by name, with its value and whether the instruction wrote it.
#[derive(Clone, Copy, Debug)]
struct Wide {
    name: RegisterName,
    value: RegisterValue,
    dirty: bool,
}

/// The registers held by name. Created on first use: most exits hold none, and an empty
/// `heapless::Vec` of this size costs a kilobyte of zeroing to create.
#[derive(Clone, Debug)]
struct WideRegs(Option<heapless::Vec<Wide, WIDE_HELD>>);

impl WideRegs {
    /// Whether any register held is to be written back.
    #[inline]
    fn any_dirty(&self) -> bool {
        // Most exits hold none: settled without a call into the slice iterator.
        self.0
            .as_ref()
            .is_some_and(|held| held.iter().any(|w| w.dirty))
    }

    fn iter(&self) -> core::slice::Iter<'_, Wide> {
        self.0.as_deref().unwrap_or(&[]).iter()
    }

    fn get(&self, i: usize) -> Option<&Wide> {
        self.0.as_ref()?.get(i)
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut Wide> {
        self.0.as_mut()?.get_mut(i)
    }

    /// Adds a register; `None` when all [`WIDE_HELD`] places are taken.
    #[inline]
    fn push(&mut self, w: Wide) -> Option<()> {
        self.0.get_or_insert_with(heapless::Vec::new).push(w).ok()
    }
}

/// Where a register lives in the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// RAX..R15 by hardware number.
    Gpr(u8),
    /// ES..GS.
    Seg(Segment),
    /// The task register (for the I/O permission bitmap).
    Tr,
    /// CR4 (LA57 decides the canonical width).
    Cr4,
    /// EFER (NXE decides the #PF I/D bit).
    Efer,
}

const SLOT_COUNT: usize = 25;

impl Slot {
    const fn index(self) -> u32 {
        match self {
            Slot::Gpr(n) => (n & 15) as u32,
            Slot::Seg(s) => 16 | s as u32,
            Slot::Tr => 22,
            Slot::Cr4 => 23,
            Slot::Efer => 24,
        }
    }

    const fn from_index(i: u32) -> Slot {
        match i {
            0..=15 => Slot::Gpr(i as u8),
            16 => Slot::Seg(Segment::Es),
            17 => Slot::Seg(Segment::Cs),
            18 => Slot::Seg(Segment::Ss),
            19 => Slot::Seg(Segment::Ds),
            20 => Slot::Seg(Segment::Fs),
            21 => Slot::Seg(Segment::Gs),
            22 => Slot::Tr,
            23 => Slot::Cr4,
            _ => Slot::Efer,
        }
    }

    const fn name(self) -> RegisterName {
        match self {
            Slot::Gpr(n) => RegisterName((n & 15) as u32),
            Slot::Seg(s) => RegisterName::segment(s),
            Slot::Tr => RegisterName::TR,
            Slot::Cr4 => RegisterName::CR4,
            Slot::Efer => RegisterName::EFER,
        }
    }
}

impl RegSet {
    pub(crate) const EMPTY: RegSet = RegSet { slots: 0 };

    pub(crate) const fn with(mut self, slot: Slot) -> RegSet {
        self.slots |= 1 << slot.index();
        self
    }

    pub(crate) const fn without(mut self, slot: Slot) -> RegSet {
        self.slots &= !(1 << slot.index());
        self
    }

    const fn contains(self, slot: Slot) -> bool {
        self.slots & (1 << slot.index()) != 0
    }

    /// Adds the full GPR behind an iced register (AL, AX, EAX and RAX all mean RAX), or the
    /// segment register; other registers are ignored. A table look-up: it runs several times
    /// for every instruction decoded.
    pub(crate) fn with_register(mut self, reg: Register) -> RegSet {
        self.slots |= REGISTER_SLOTS.get(reg as usize).copied().unwrap_or(0);
        self
    }
}

/// The slot bit of every iced register (by number) that [`RegSet::with_register`] adds: its
/// GPR or segment register, or nothing. Built by the compiler, where an index out of range
/// fails the build instead of panicking.
#[allow(clippy::indexing_slicing)]
const REGISTER_SLOTS: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0u32;
    while i < 256 {
        let slot = match gpr_number(i) {
            Some(n) => Some(Slot::Gpr(n)),
            None if i >= Register::ES as u32 && i <= Register::GS as u32 => {
                Some(Slot::from_index(16 + i - Register::ES as u32))
            }
            None => None,
        };
        if let Some(slot) = slot {
            table[i as usize] = 1 << slot.index();
        }
        i += 1;
    }
    table
};

/// The hardware number of the GPR behind `reg`, if it is a GPR (AL, AH, AX, EAX and RAX all
/// mean 0). Arithmetic on iced-x86's register numbering (checked against its
/// `full_register` for every register in the tests), because it runs on every exit.
#[inline]
pub(crate) fn gpr_index(reg: Register) -> Option<u8> {
    gpr_number(reg as u32)
}

/// [`gpr_index`] of iced's register number `r`.
const fn gpr_number(r: u32) -> Option<u8> {
    let n = match r {
        // AL, CL, DL, BL.
        1..=4 => r.wrapping_sub(1),
        // AH, CH, DH, BH are bits 8..15 of RAX..RBX; SPL..R15L follow at 4.
        5..=8 => r.wrapping_sub(5),
        9..=20 => r.wrapping_sub(5),
        // AX..R15W, EAX..R15D, RAX..R15: three blocks of sixteen.
        21..=68 => r.wrapping_sub(21) % 16,
        _ => return None,
    };
    Some(n as u8)
}

/// The segment named by an iced segment register.
#[inline]
pub(crate) fn segment_of(reg: Register) -> Option<Segment> {
    Some(match reg {
        Register::ES => Segment::Es,
        Register::CS => Segment::Cs,
        Register::SS => Segment::Ss,
        Register::DS => Segment::Ds,
        Register::FS => Segment::Fs,
        Register::GS => Segment::Gs,
        _ => return None,
    })
}

/// One emulation's view of the processor. In declaration order (`repr(C)`), the register
/// arrays first: after a field with padding, zeroing them was done on the side and copied in
/// by a memcpy whose wide loads stalled on the narrow stores just made.
#[derive(Clone, Debug)]
#[repr(C)]
pub(crate) struct State {
    gpr: [u64; 16],
    seg: [SegmentRegister; 6],
    tr: SegmentRegister,
    cr4: u64,
    efer: u64,
    /// Addressing mode.
    pub mode: Mode,
    /// Default operand/address size of the code segment: 16, 32 or 64.
    pub code_bits: u32,
    /// Current privilege level.
    pub cpl: u8,
    /// The execution state the exit reported.
    pub exec: ExecutionState,
    /// RIP of the instruction.
    pub rip: u64,
    /// RFLAGS as the instruction leaves it.
    pub rflags: u64,
    rflags_at_exit: u64,
    /// Where a control transfer (CALL, JMP, RET) goes, instead of the next instruction.
    branch: Option<u64>,
    loaded: RegSet,
    dirty: RegSet,
    /// Registers held by name (vector, opmask, x87/MMX, XCR0), read or written.
    wide: WideRegs,
}

impl State {
    /// Derives the mode from the exit context alone, so that no register read is needed to
    /// decode.
    #[inline(always)]
    pub(crate) fn new(vp: &VpExitContext) -> State {
        let exec = vp.execution_state;
        let long_code = vp.cs.attributes.contains(SegmentAttributes::LONG);
        let big = vp.cs.attributes.contains(SegmentAttributes::DEFAULT_BIG);
        let (mode, code_bits) = if !exec.cr0_pe {
            (Mode::Real, if big { 32 } else { 16 })
        } else if exec.efer_lma && long_code {
            (Mode::Long, 64)
        } else if !exec.efer_lma && vp.rflags & RFLAGS_VM != 0 {
            (Mode::Virtual8086, 16)
        } else {
            (Mode::Protected, if big { 32 } else { 16 })
        };
        let cpl = match mode {
            Mode::Real => 0,
            Mode::Virtual8086 => 3,
            _ => exec.cpl & 3,
        };
        // Built in place (CS is index 1): a local array patched and then moved was copied by
        // a memcpy whose wide loads stalled on the narrow stores that had just filled it.
        const _: () = assert!(Segment::Cs as usize == 1);
        let none = SegmentRegister::default();
        let seg = [none, vp.cs, none, none, none, none];
        State {
            mode,
            code_bits,
            cpl,
            exec,
            rip: vp.rip,
            rflags: vp.rflags,
            rflags_at_exit: vp.rflags,
            branch: None,
            gpr: [0; 16],
            seg,
            tr: SegmentRegister::default(),
            cr4: 0,
            efer: 0,
            loaded: RegSet::EMPTY.with(Slot::Seg(Segment::Cs)),
            dirty: RegSet::EMPTY,
            wide: WideRegs(None),
        }
    }

    /// Seeds a GPR the exit context already carries.
    pub(crate) fn preload_gpr(&mut self, n: u8, value: u64) {
        if let Some(r) = self.gpr.get_mut(usize::from(n)) {
            *r = value;
            self.loaded = self.loaded.with(Slot::Gpr(n));
        }
    }

    /// Seeds a segment register the exit context already carries.
    pub(crate) fn preload_segment(&mut self, s: Segment, value: SegmentRegister) {
        if let Some(seg) = self.seg.get_mut(s as usize) {
            *seg = value;
        }
        self.loaded = self.loaded.with(Slot::Seg(s));
    }

    /// Whether the processor is in 64-bit mode.
    pub(crate) fn is_long(&self) -> bool {
        self.mode == Mode::Long
    }

    /// Masks an instruction pointer to the code segment's width.
    pub(crate) fn mask_ip(&self, ip: u64) -> u64 {
        match self.code_bits {
            16 => ip & 0xFFFF,
            32 => ip & 0xFFFF_FFFF,
            _ => ip,
        }
    }

    /// Appends to `names` (whose first `from` entries are taken) the names in `wide` not held
    /// yet, once each, as far as `names` has room; returns how many entries are taken.
    #[inline]
    fn unheld(&self, wide: &[RegisterName], names: &mut [RegisterName], from: usize) -> usize {
        let mut n = from;
        // The plan's batch comes first, when nothing is held yet.
        let none_held = self.wide.0.is_none();
        for name in wide {
            let asked = names.get(from..n).unwrap_or(&[]).contains(name);
            if !asked && (none_held || self.wide_index(*name).is_none()) {
                if let Some(slot) = names.get_mut(n) {
                    *slot = *name;
                    n = n.wrapping_add(1);
                }
            }
        }
        n
    }

    #[inline]
    fn wide_index(&self, name: RegisterName) -> Option<usize> {
        self.wide.iter().position(|w| w.name == name)
    }

    /// Holds `name`'s value (replacing what is held), marking it written if `dirty`.
    fn hold_wide<E>(
        &mut self,
        name: RegisterName,
        value: &RegisterValue,
        dirty: bool,
    ) -> Result<(), EmulationError<E>> {
        let value = value.copied();
        match self.wide_index(name).and_then(|i| self.wide.get_mut(i)) {
            Some(w) => {
                w.value = value;
                w.dirty |= dirty;
                Ok(())
            }
            // No family holds more than WIDE_HELD names; should one try, it is a form hvemu
            // does not emulate rather than a panic.
            None => self.wide.push(Wide { name, value, dirty }).ok_or_else(|| {
                EmulationError::Unsupported {
                    code: iced_x86::Code::INVALID,
                }
            }),
        }
    }

    /// Stores `values` into the slots of `set` (a [`RegSet`]'s bits), in the order
    /// [`list_slots`] named them.
    #[inline]
    fn store_slots<E>(
        &mut self,
        set: u32,
        values: &[RegisterValue],
    ) -> Result<(), EmulationError<E>> {
        for (value, i) in values.iter().zip(SetBits(set)) {
            self.store(Slot::from_index(i), value)
                .map_err(EmulationError::BadRegisterValue)?;
        }
        Ok(())
    }

    /// Takes `value` by reference: the monitor has just written it in narrow stores, and
    /// copying the whole 80-byte value reads it back in wide loads (a store-forwarding stall);
    /// only the variant's own bytes are read here.
    #[inline]
    fn store(&mut self, slot: Slot, value: &RegisterValue) -> Result<(), RegisterName> {
        let bad = slot.name();
        match slot {
            Slot::Gpr(n) => {
                let value = value.as_u64().ok_or(bad)?;
                if let Some(r) = self.gpr.get_mut(usize::from(n & 15)) {
                    *r = value;
                }
            }
            Slot::Seg(s) => {
                let value = value.as_segment().ok_or(bad)?;
                if let Some(r) = self.seg.get_mut(s as usize) {
                    *r = value;
                }
            }
            Slot::Tr => self.tr = value.as_segment().ok_or(bad)?,
            Slot::Cr4 => self.cr4 = value.as_u64().ok_or(bad)?,
            Slot::Efer => self.efer = value.as_u64().ok_or(bad)?,
        }
        Ok(())
    }
}

/// The emulation in progress: the monitor's callbacks plus everything gathered so far.
pub(crate) struct Cpu<'a, C: EmulatorCallbacks> {
    /// The monitor.
    pub cb: &'a mut C,
    /// Registers.
    pub state: State,
    /// Settings.
    pub config: &'a crate::Config,
    /// Translations made during this call.
    pub tlb: crate::access::Tlb,
    /// What the exit already says about the faulting access, if anything.
    pub hint: Option<crate::access::GpaHint>,
    /// The port of a port exit (the value DX held), so a DX form needs no register read.
    pub port_hint: Option<u16>,
    /// The most REP iterations this call runs: the configured bound, or 1 under single-step
    /// (the trap follows every iteration).
    pub rep_budget: u32,
}

impl<'a, C: EmulatorCallbacks> Cpu<'a, C> {
    #[inline(always)]
    pub(crate) fn new(cb: &'a mut C, config: &'a crate::Config, vp: &VpExitContext) -> Self {
        Cpu {
            cb,
            state: State::new(vp),
            config,
            tlb: crate::access::Tlb::EMPTY,
            hint: None,
            port_hint: None,
            rep_budget: if vp.rflags & RFLAGS_TF != 0 {
                1
            } else {
                config.max_rep_iterations.max(1)
            },
        }
    }

    /// Reads every register in `set` not yet held, in one `get_registers` call.
    pub(crate) fn fetch(&mut self, set: RegSet) -> Res<(), C> {
        self.fetch_with(set, &[])
    }

    /// Reads every register in `set` and every name in `wide` not yet held, in one
    /// `get_registers` call.
    #[inline]
    pub(crate) fn fetch_with(&mut self, set: RegSet, wide: &[RegisterName]) -> Res<(), C> {
        const BATCH: usize = SLOT_COUNT + WIDE_REQUEST;
        let missing = set.slots & !self.state.loaded.slots;
        if wide.is_empty() && at_most(missing, SMALL_BATCH) {
            return self.fetch_few(missing);
        }
        let mut names = [RegisterName::RIP; BATCH];
        let slot_count = list_slots(missing, &mut names);
        // Beyond the array's room the rest are left out; `Cpu::wide` reads them singly.
        let n = self.state.unheld(wide, &mut names, slot_count);
        if n == 0 {
            return Ok(());
        }
        let names = names.get(..n).unwrap_or(&[]);
        with_values(n, |values| {
            self.cb
                .get_registers(names, values)
                .map_err(EmulationError::GetRegisters)?;
            // Split rather than skipped: `skip` on a zip walks it element by element.
            let (slot_values, wide_values) = values.split_at(slot_count.min(values.len()));
            let wide_names = names.get(slot_count..).unwrap_or(&[]);
            self.state.store_slots(missing, slot_values)?;
            for (name, value) in wide_names.iter().zip(wide_values) {
                self.state.hold_wide(*name, value, false)?;
            }
            self.state.loaded.slots |= missing;
            Ok(())
        })
    }

    /// [`Cpu::fetch_with`] for at most [`SMALL_BATCH`] slots and nothing held by name, the
    /// common exit: fixed arrays on the stack, no list to build.
    #[inline(always)]
    fn fetch_few(&mut self, missing: u32) -> Res<(), C> {
        if missing == 0 {
            return Ok(());
        }
        let mut names = [RegisterName::RIP; SMALL_BATCH];
        let mut values = [RegisterValue::U64(0); SMALL_BATCH];
        let n = list_slots(missing, &mut names);
        let (names, values) = (
            names.get(..n).unwrap_or(&[]),
            values.get_mut(..n).unwrap_or(&mut []),
        );
        self.cb
            .get_registers(names, values)
            .map_err(EmulationError::GetRegisters)?;
        self.state.store_slots(missing, values)?;
        self.state.loaded.slots |= missing;
        Ok(())
    }

    /// A register held by name (a vector view, an opmask, an x87/MMX register, XCR0 …), as
    /// the instruction has left it so far. Normally gathered with the plan's batch; otherwise
    /// read by itself here. Lent, not copied: an 80-byte value returned by value goes through
    /// memory in pieces.
    pub(crate) fn wide(&mut self, name: RegisterName) -> Res<&RegisterValue, C> {
        let bad = || EmulationError::BadRegisterValue(name);
        // One search when it is held, as it usually is.
        let i = match self.state.wide_index(name) {
            Some(i) => i,
            None => {
                self.fetch_with(RegSet::EMPTY, &[name])?;
                self.state.wide_index(name).ok_or_else(bad)?
            }
        };
        self.state.wide.get(i).map(|w| &w.value).ok_or_else(bad)
    }

    /// Reads the registers held by name in `names` that are not held yet, in one
    /// `get_registers` call (at most [`WIDE_REQUEST`] of them).
    pub(crate) fn fetch_wide(&mut self, names: &[RegisterName]) -> Res<(), C> {
        self.fetch_with(RegSet::EMPTY, names.get(..WIDE_REQUEST).unwrap_or(names))
    }

    /// Writes a register held by name; the commit passes it to `set_registers`.
    pub(crate) fn set_wide(&mut self, name: RegisterName, value: RegisterValue) -> Res<(), C> {
        self.state.hold_wide(name, &value, true)
    }

    fn ensure(&mut self, slot: Slot) -> Res<(), C> {
        if self.state.loaded.contains(slot) {
            Ok(())
        } else {
            self.fetch(RegSet::EMPTY.with(slot))
        }
    }

    /// A full 64-bit GPR by hardware number.
    pub(crate) fn gpr(&mut self, n: u8) -> Res<u64, C> {
        self.ensure(Slot::Gpr(n & 15))?;
        Ok(self
            .state
            .gpr
            .get(usize::from(n & 15))
            .copied()
            .unwrap_or(0))
    }

    /// Writes a full 64-bit GPR.
    pub(crate) fn set_gpr(&mut self, n: u8, value: u64) {
        let n = n & 15;
        if let Some(r) = self.state.gpr.get_mut(usize::from(n)) {
            *r = value;
        }
        self.state.loaded = self.state.loaded.with(Slot::Gpr(n));
        self.state.dirty = self.state.dirty.with(Slot::Gpr(n));
    }

    /// A segment register.
    pub(crate) fn segment(&mut self, s: Segment) -> Res<SegmentRegister, C> {
        self.ensure(Slot::Seg(s))?;
        Ok(self.state.seg.get(s as usize).copied().unwrap_or_default())
    }

    /// The task register.
    pub(crate) fn tr(&mut self) -> Res<SegmentRegister, C> {
        self.ensure(Slot::Tr)?;
        Ok(self.state.tr)
    }

    /// CR4.
    pub(crate) fn cr4(&mut self) -> Res<u64, C> {
        self.ensure(Slot::Cr4)?;
        Ok(self.state.cr4)
    }

    /// EFER.
    pub(crate) fn efer(&mut self) -> Res<u64, C> {
        self.ensure(Slot::Efer)?;
        Ok(self.state.efer)
    }

    /// The value of a GPR operand at its own width (AL, AH, AX, EAX or RAX).
    pub(crate) fn read_reg(&mut self, reg: Register) -> Res<u64, C> {
        let Some(n) = gpr_index(reg) else {
            return Err(EmulationError::Unsupported {
                code: iced_x86::Code::INVALID,
            });
        };
        let full = self.gpr(n)?;
        Ok(if is_high_byte(reg) {
            (full >> 8) & 0xFF
        } else {
            full & width_mask(reg.size())
        })
    }

    /// Writes a GPR operand at its own width: 8- and 16-bit writes merge, 32-bit writes
    /// zero-extend, as the processor does.
    pub(crate) fn write_reg(&mut self, reg: Register, value: u64) -> Res<(), C> {
        let Some(n) = gpr_index(reg) else {
            return Err(EmulationError::Unsupported {
                code: iced_x86::Code::INVALID,
            });
        };
        let new = match reg.size() {
            1 | 2 => {
                let old = self.gpr(n)?;
                let (shift, mask) = if is_high_byte(reg) {
                    (8, 0xFF)
                } else {
                    (0, width_mask(reg.size()))
                };
                (old & !(mask << shift)) | ((value & mask) << shift)
            }
            4 => value & 0xFFFF_FFFF,
            _ => value,
        };
        self.set_gpr(n, new);
        Ok(())
    }

    /// Makes the instruction a control transfer: the commit writes `target` to RIP instead of
    /// the address of the next instruction.
    pub(crate) fn branch_to(&mut self, target: u64) {
        self.state.branch = Some(target);
    }

    /// RFLAGS as the exit reported it.
    pub(crate) fn exit_rflags(&self) -> u64 {
        self.state.rflags_at_exit
    }

    /// Commits the changed registers (and RIP, and RFLAGS if it changed) in one
    /// `set_registers` call. RF is cleared when the instruction `completed`; when it stopped
    /// part way (or made no progress) and RIP stays on it, RF is set, as the processor sets it
    /// for an event after a REP iteration other than the last, so that an instruction
    /// breakpoint does not fire again when the guest resumes it (SDM Vol. 3B §18.3.1.1).
    /// A control transfer's target (see [`Cpu::branch_to`]) replaces `new_rip`.
    ///
    /// `event`, when given, is written to the pending-event register in the same call (a
    /// single-step trap queued by exception injection).
    #[inline(always)]
    pub(crate) fn commit(
        &mut self,
        new_rip: u64,
        event: Option<u128>,
        completed: bool,
    ) -> Res<(), C> {
        let new_rip = self.state.branch.unwrap_or(new_rip);
        let rflags = if completed {
            self.state.rflags & !RFLAGS_RF
        } else {
            self.state.rflags | RFLAGS_RF
        };
        let rflags = (rflags != self.state.rflags_at_exit).then_some(rflags);
        let gprs = self.state.dirty.slots & 0xFFFF;
        if event.is_none()
            && !self.state.wide.any_dirty()
            && at_most(gprs, SMALL_BATCH.saturating_sub(2))
        {
            return self.commit_few(gprs, new_rip, rflags);
        }
        let wide = self.state.wide.iter().filter(|w| w.dirty);
        let count = (gprs.count_ones() as usize)
            .saturating_add(1)
            .saturating_add(usize::from(rflags.is_some()))
            .saturating_add(wide.clone().count())
            .saturating_add(usize::from(event.is_some()));
        // 16 GPRs, RIP, RFLAGS, the registers held by name and the event: at most
        // `MOST_VALUES`, so nothing below is dropped.
        let mut names = [RegisterName::RIP; MOST_VALUES];
        let state = &self.state;
        let cb = &mut *self.cb;
        with_values(count, |values| {
            let mut n = 0usize;
            let mut put = |name: RegisterName, value: RegisterValue| {
                if let (Some(slot), Some(v)) = (names.get_mut(n), values.get_mut(n)) {
                    *slot = name;
                    *v = value;
                }
                n = n.wrapping_add(1);
            };
            for i in SetBits(gprs) {
                let value = state.gpr.get(i as usize).copied().unwrap_or(0);
                put(RegisterName(i), RegisterValue::U64(value));
            }
            put(RegisterName::RIP, RegisterValue::U64(new_rip));
            if let Some(r) = rflags {
                put(RegisterName::RFLAGS, RegisterValue::U64(r));
            }
            for w in wide {
                put(w.name, w.value.copied());
            }
            if let Some(e) = event {
                put(RegisterName::PENDING_EVENT, RegisterValue::U128(e));
            }
            cb.set_registers(names.get(..values.len()).unwrap_or(&[]), values)
                .map_err(EmulationError::SetRegisters)
        })
    }
}

impl<C: EmulatorCallbacks> Cpu<'_, C> {
    /// [`Cpu::commit`] of at most [`SMALL_BATCH`] - 2 GPRs, RIP and RFLAGS, no register held
    /// by name to write back and no event: the common exit, in fixed arrays on the stack,
    /// every entry starting as RIP.
    #[inline(always)]
    fn commit_few(&mut self, gprs: u32, rip: u64, rflags: Option<u64>) -> Res<(), C> {
        let mut names = [RegisterName::RIP; SMALL_BATCH];
        let mut values = [RegisterValue::U64(rip); SMALL_BATCH];
        // The same order as the general path: the GPRs, RIP, then RFLAGS.
        let mut n = 0usize;
        for i in SetBits(gprs) {
            if let (Some(name), Some(value)) = (names.get_mut(n), values.get_mut(n)) {
                *name = RegisterName(i);
                *value = RegisterValue::U64(self.state.gpr.get(i as usize).copied().unwrap_or(0));
            }
            n = n.wrapping_add(1);
        }
        // RIP is already in place at `n` (every entry was made RIP).
        n = n.wrapping_add(1);
        if let Some(r) = rflags {
            if let (Some(name), Some(value)) = (names.get_mut(n), values.get_mut(n)) {
                *name = RegisterName::RFLAGS;
                *value = RegisterValue::U64(r);
            }
            n = n.wrapping_add(1);
        }
        let n = n.min(SMALL_BATCH);
        self.cb
            .set_registers(
                names.get(..n).unwrap_or(&[]),
                values.get(..n).unwrap_or(&[]),
            )
            .map_err(EmulationError::SetRegisters)
    }
}

/// The register values the common exit moves in one call, at most: what the small stack
/// arrays hold (a value is 80 bytes; the largest batch would be kilobytes).
const SMALL_BATCH: usize = 6;

/// The most register values one `get_registers` or `set_registers` call carries.
const MOST_VALUES: usize = SLOT_COUNT + WIDE_HELD;

/// Runs `f` over `n` (at most [`MOST_VALUES`]) placeholder register values on the stack. The
/// common exit moves a handful, and a value is 80 bytes: a small array for them keeps the
/// common exit from initialising kilobytes.
fn with_values<R>(n: usize, f: impl FnOnce(&mut [RegisterValue]) -> R) -> R {
    if n <= SMALL_BATCH {
        let mut values = [RegisterValue::U64(0); SMALL_BATCH];
        f(values.get_mut(..n).unwrap_or(&mut []))
    } else {
        with_many_values(n, f)
    }
}

/// [`with_values`] for a large batch, in a frame of its own so that the common exit's stack
/// does not carry three kilobytes it never uses.
#[inline(never)]
fn with_many_values<R>(n: usize, f: impl FnOnce(&mut [RegisterValue]) -> R) -> R {
    let mut values = [RegisterValue::U64(0); MOST_VALUES];
    let n = n.min(MOST_VALUES);
    f(values.get_mut(..n).unwrap_or(&mut []))
}

/// The indices of the set bits of a `u32`, lowest first.
struct SetBits(u32);

impl Iterator for SetBits {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let i = self.0.trailing_zeros();
        self.0 &= self.0.wrapping_sub(1);
        Some(i)
    }
}

/// Lists the names of the slots in `set` (a [`RegSet`]'s bits) at the start of `names`, as
/// many as it holds; returns how many it listed.
#[inline]
fn list_slots(set: u32, names: &mut [RegisterName]) -> usize {
    let mut n = 0usize;
    for (name, i) in names.iter_mut().zip(SetBits(set)) {
        *name = Slot::from_index(i).name();
        n = n.wrapping_add(1);
    }
    n
}

/// Whether `bits` has at most `n` bits set. Cheaper than `count_ones`, which is a dozen
/// instructions on the baseline x86-64 target (it has no POPCNT), for the small `n` used.
#[inline(always)]
fn at_most(mut bits: u32, n: usize) -> bool {
    for _ in 0..n {
        bits &= bits.wrapping_sub(1);
    }
    bits == 0
}

fn is_high_byte(reg: Register) -> bool {
    matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    )
}

/// The width in bits of a `bytes`-byte operand (1, 2, 4 or 8; anything else reads as 8).
pub(crate) const fn bit_width(bytes: usize) -> u32 {
    match bytes {
        1 => 8,
        2 => 16,
        4 => 32,
        _ => 64,
    }
}

/// The little-endian value of up to 16 bytes, each of the usual widths (1, 2, 4, 8, 16)
/// loaded at exactly that width. The bytes were usually just stored by a callback at their
/// own width; reading them back through a wider load (`u64::from_le_bytes` of a buffer
/// partly filled) defeats store-to-load forwarding, a stall of a dozen or more cycles on
/// current cores on every memory read. Bytes past the 16th are ignored.
#[inline]
pub(crate) fn le_value(bytes: &[u8]) -> u128 {
    match *bytes {
        [a] => u128::from(a),
        [a, b] => u128::from(u16::from_le_bytes([a, b])),
        [a, b, c, d] => u128::from(u32::from_le_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => u128::from(u64::from_le_bytes([a, b, c, d, e, f, g, h])),
        _ => match <[u8; 16]>::try_from(bytes) {
            Ok(all) => u128::from_le_bytes(all),
            Err(_) => bytes
                .iter()
                .take(16)
                .rev()
                .fold(0, |acc, b| acc.wrapping_shl(8) | u128::from(*b)),
        },
    }
}

/// All-ones in the low `bytes` bytes.
pub(crate) const fn width_mask(bytes: usize) -> u64 {
    match bytes {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

impl<C: EmulatorCallbacks> Cpu<'_, C> {
    /// Writes a GPR used as an address or count of `size` bytes: a 16-bit update keeps the
    /// upper bits, a 32-bit one zero-extends (SDM Vol. 1 §3.4.1.1).
    pub(crate) fn set_gpr_sized(&mut self, n: u8, value: u64, size: usize) -> Res<(), C> {
        let new = match size {
            2 => (self.gpr(n)? & !0xFFFF) | (value & 0xFFFF),
            4 => value & 0xFFFF_FFFF,
            _ => value,
        };
        self.set_gpr(n, new);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use iced_x86::Register;

    use super::{gpr_index, le_value};

    /// Every length reads as the little-endian number it spells, the usual widths and the
    /// odd ones alike; bytes past the 16th are ignored.
    #[test]
    fn le_value_reads_any_length() {
        let bytes: [u8; 17] = core::array::from_fn(|i| 0x11u8.wrapping_mul(i as u8 + 1));
        for len in 0..=17 {
            let mut want = 0u128;
            for (i, b) in bytes.iter().take(len.min(16)).enumerate() {
                want |= u128::from(*b) << (8 * i);
            }
            assert_eq!(le_value(&bytes[..len]), want, "{len} bytes");
        }
    }

    /// The sizes README.md quotes: one emulation's snapshot and the emulator's settings.
    #[test]
    fn documented_sizes() {
        use core::mem::size_of;
        struct NoCallbacks;
        impl crate::EmulatorCallbacks for NoCallbacks {
            type Error = ();
            fn io_port(&mut self, _: &mut crate::IoAccessInfo) -> Result<(), ()> {
                Err(())
            }
            fn memory(&mut self, _: &mut crate::MemoryAccessInfo<'_>) -> Result<(), ()> {
                Err(())
            }
            fn get_registers(
                &mut self,
                _: &[crate::RegisterName],
                _: &mut [crate::RegisterValue],
            ) -> Result<(), ()> {
                Err(())
            }
            fn set_registers(
                &mut self,
                _: &[crate::RegisterName],
                _: &[crate::RegisterValue],
            ) -> Result<(), ()> {
                Err(())
            }
            fn translate_gva_page(
                &mut self,
                _: u64,
                _: crate::TranslateGvaFlags,
            ) -> Result<(crate::TranslateGvaResult, u64), ()> {
                Err(())
            }
        }
        let cpu = size_of::<super::Cpu<'_, NoCallbacks>>();
        assert!((1536..=2048).contains(&cpu), "Cpu is {cpu} bytes");
        assert_eq!(size_of::<crate::Config>(), 8);
        assert_eq!(size_of::<crate::Emulator<NoCallbacks>>(), 8);
        assert_eq!(size_of::<super::RegSet>(), 4);
        // Documented as at most a kilobyte (README, `DecodeCache`).
        let cache = size_of::<crate::DecodeCache>();
        assert!(cache <= 1024, "DecodeCache is {cache} bytes");
    }

    /// The slot table adds what the GPR numbering and the segment names say, for every
    /// register.
    #[test]
    fn register_slots_agree_with_gpr_index_and_segment_of() {
        use super::{RegSet, Slot, segment_of};
        for reg in Register::values() {
            let want = match (gpr_index(reg), segment_of(reg)) {
                (Some(n), _) => RegSet::EMPTY.with(Slot::Gpr(n)),
                (None, Some(s)) => RegSet::EMPTY.with(Slot::Seg(s)),
                (None, None) => RegSet::EMPTY,
            };
            assert_eq!(RegSet::EMPTY.with_register(reg), want, "{reg:?}");
        }
    }

    /// The arithmetic GPR numbering agrees with iced-x86's own register tables.
    #[test]
    fn gpr_index_matches_iced() {
        for reg in Register::values() {
            let expected = if reg.is_gpr() {
                let full = reg.full_register() as u32 - Register::RAX as u32;
                Some(full as u8)
            } else {
                None
            };
            assert_eq!(gpr_index(reg), expected, "{reg:?}");
        }
    }
}
