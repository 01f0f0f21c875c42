//! Descriptor tables, TSS and exception stubs written into guest RAM.
//!
//! The hidden segment state given to KVM is always decoded from the same
//! descriptors that sit in the GDT, so anything that reloads a segment
//! (IRET, far jumps, exception delivery) sees consistent values.

use iced_x86::BlockEncoderOptions;
use iced_x86::code_asm::*;
use kvm_bindings::kvm_segment;

use super::layout::{self, sel};
use super::memory::GuestMemory;

/// Access byte bits.
const P: u8 = 0x80;
const S: u8 = 0x10;
const CODE_XR_A: u8 = 0x0B; // execute/read, accessed
const DATA_RW_A: u8 = 0x03; // read/write, accessed
const TSS_BUSY: u8 = 0x0B; // 32/64-bit TSS, busy
/// Flags nibble bits.
const G: u8 = 0x8;
const DB: u8 = 0x4;
const L: u8 = 0x2;

/// Encodes an 8-byte code/data or system descriptor.
pub fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    (limit & 0xFFFF)
        | (base & 0xFF_FFFF) << 16
        | (access as u64) << 40
        | ((limit >> 16) & 0xF) << 48
        | ((flags & 0xF) as u64) << 52
        | (base >> 24 & 0xFF) << 56
}

/// Decodes descriptor `desc` loaded through `selector` into KVM's hidden form.
pub fn segment_from_descriptor(selector: u16, desc: u64) -> kvm_segment {
    let access = (desc >> 40) as u8;
    let flags = (desc >> 52) as u8 & 0xF;
    let raw_limit = ((desc & 0xFFFF) | ((desc >> 48) & 0xF) << 16) as u32;
    let g = flags & G != 0;
    kvm_segment {
        base: ((desc >> 16) & 0xFF_FFFF) | ((desc >> 56) & 0xFF) << 24,
        limit: if g {
            raw_limit << 12 | 0xFFF
        } else {
            raw_limit
        },
        selector,
        type_: access & 0xF,
        present: (access & P != 0) as u8,
        dpl: (access >> 5) & 3,
        db: (flags & DB != 0) as u8,
        s: (access & S != 0) as u8,
        l: (flags & L != 0) as u8,
        g: g as u8,
        avl: flags & 1,
        unusable: 0,
        padding: 0,
    }
}

/// Real-mode style segment: selector × 16 as base, 64 KiB limit.
pub fn real_mode_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: (selector as u64) << 4,
        limit: 0xFFFF,
        selector,
        type_: if code { CODE_XR_A } else { DATA_RW_A },
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The 8-byte descriptors of the GDT, indexed by selector / 8 (the 64-bit
/// TSS descriptor's upper half is included as its own entry).
pub fn gdt_entries() -> Vec<u64> {
    let flat = 0xF_FFFF;
    let mut gdt = vec![0u64; (sel::GDT_BYTES / 8) as usize];
    let mut set = |s: u16, d: u64| gdt[(s / 8) as usize] = d;
    set(
        sel::KERNEL_CS64,
        descriptor(0, flat, P | S | CODE_XR_A, G | L),
    );
    set(
        sel::KERNEL_DS,
        descriptor(0, flat, P | S | DATA_RW_A, G | DB),
    );
    set(
        sel::USER_CS32,
        descriptor(0, flat, P | 0x60 | S | CODE_XR_A, G | DB),
    );
    set(
        sel::USER_DS,
        descriptor(0, flat, P | 0x60 | S | DATA_RW_A, G | DB),
    );
    set(
        sel::USER_CS64,
        descriptor(0, flat, P | 0x60 | S | CODE_XR_A, G | L),
    );
    set(
        sel::KERNEL_CS32,
        descriptor(0, flat, P | S | CODE_XR_A, G | DB),
    );
    set(
        sel::KERNEL_CS16,
        descriptor(layout::CODE as u32, 0xFFFF, P | S | CODE_XR_A, 0),
    );
    set(
        sel::KERNEL_SS16,
        descriptor(0, 0xFFFF, P | S | DATA_RW_A, 0),
    );
    set(
        sel::TSS32,
        descriptor(layout::TSS as u32, layout::TSS_LIMIT, P | TSS_BUSY, 0),
    );
    set(
        sel::TSS64,
        descriptor(layout::TSS as u32, layout::TSS_LIMIT, P | TSS_BUSY, 0),
    );
    // Upper half of the 16-byte TSS64 descriptor: base bits 63:32 (zero).
    set(sel::TSS64 + 8, 0);
    gdt
}

/// Hidden state for `selector` (RPL bits ignored for the lookup, kept in the selector).
pub fn segment(selector: u16) -> kvm_segment {
    let gdt = gdt_entries();
    segment_from_descriptor(selector, gdt[(selector >> 3) as usize])
}

pub fn write_gdt(mem: &mut GuestMemory) {
    for (i, d) in gdt_entries().iter().enumerate() {
        mem.write_u64(layout::GDT + 8 * i as u64, *d);
    }
}

/// Vectors for which the CPU pushes an error code.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Gate DPL: software `int n` from ring 3 is allowed for #BP, #OF and 32..255.
fn gate_dpl(vector: u8) -> u8 {
    if vector == 3 || vector == 4 || vector >= 32 {
        3
    } else {
        0
    }
}

/// Writes a 32-bit TSS (ESP0/SS0 for ring transitions) plus the I/O bitmap.
pub fn write_tss32(mem: &mut GuestMemory) {
    mem.fill(layout::TSS, layout::TSS_IOPB_OFFSET as usize, 0);
    mem.write_u32(layout::TSS + 4, layout::KERNEL_STACK_TOP as u32);
    mem.write_u32(layout::TSS + 8, sel::KERNEL_DS as u32);
    write_iopb(mem);
}

/// Writes a 64-bit TSS: RSP0 and IST1 both point at the kernel stack, and
/// every gate uses IST1 so delivery never depends on the interrupted stack
/// (e.g. a 16-bit SS with a non-zero base in compatibility mode).
pub fn write_tss64(mem: &mut GuestMemory) {
    mem.fill(layout::TSS, layout::TSS_IOPB_OFFSET as usize, 0);
    mem.write_u64(layout::TSS + 4, layout::KERNEL_STACK_TOP);
    mem.write_u64(layout::TSS + 0x24, layout::KERNEL_STACK_TOP);
    write_iopb(mem);
}

fn write_iopb(mem: &mut GuestMemory) {
    mem.write_u16(layout::TSS + 0x66, layout::TSS_IOPB_OFFSET as u16);
    // All ports allowed; the byte after the bitmap must be 0xFF.
    mem.fill(
        layout::TSS + layout::TSS_IOPB_OFFSET,
        layout::IOPB_BYTES as usize,
        0,
    );
    mem.write_u8(
        layout::TSS + layout::TSS_IOPB_OFFSET + layout::IOPB_BYTES,
        0xFF,
    );
}

/// Allows or denies `port` for CPL > IOPL code via the TSS I/O bitmap.
pub fn set_io_permission(mem: &mut GuestMemory, port: u16, allowed: bool) {
    let at = layout::TSS + layout::TSS_IOPB_OFFSET + (port / 8) as u64;
    let bit = 1u8 << (port % 8);
    let old = mem.read_u8(at);
    mem.write_u8(at, if allowed { old & !bit } else { old | bit });
}

/// Byte offsets of the fields of the exception record at [`layout::EXC_RECORD`].
pub mod rec {
    pub const MAGIC: u64 = 0;
    pub const COUNT: u64 = 8;
    pub const VECTOR: u64 = 16;
    pub const ERROR_CODE: u64 = 24;
    pub const RIP: u64 = 32;
    pub const CS: u64 = 40;
    pub const RFLAGS: u64 = 48;
    pub const RSP: u64 = 56;
    pub const SS: u64 = 64;
    pub const CR2: u64 = 72;
    pub const SIZE: u64 = 80;
    /// Written last by a handler so a torn record is recognisable.
    pub const MAGIC_VALUE: u32 = 0x4558_4321;
}

fn field(off: u64) -> u64 {
    layout::EXC_RECORD + off
}

/// Assembles 256 stubs plus a common body; returns (code, entry address per vector).
fn assemble_stubs(
    bitness: u32,
    base: u64,
    body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (Vec<u8>, Vec<u64>) {
    let mut a = CodeAssembler::new(bitness).unwrap();
    let mut common = a.create_label();
    let mut entries = Vec::with_capacity(256);
    for v in 0..=255u8 {
        let mut l = a.create_label();
        a.set_label(&mut l).unwrap();
        // Uniform frame: [vector][error code][CPU frame...].
        if !has_error_code(v) || bitness == 16 {
            a.push(0i32).unwrap();
        }
        a.push(v as i32).unwrap();
        a.jmp(common).unwrap();
        entries.push(l);
    }
    a.set_label(&mut common).unwrap();
    body(&mut a).unwrap();
    let res = a
        .assemble_options(base, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
        .unwrap();
    let addrs = entries.iter().map(|l| res.label_ip(l).unwrap()).collect();
    (res.inner.code_buffer, addrs)
}

/// Long-mode handler: copies the frame to the record, preserves every GPR,
/// then halts forever (re-running the vCPU halts again).
fn body64(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.push(rax)?;
    // Stack now: +8 vector, +16 error, +24 rip, +32 cs, +40 rflags, +48 rsp, +56 ss.
    let frame = [
        (8, rec::VECTOR),
        (16, rec::ERROR_CODE),
        (24, rec::RIP),
        (32, rec::CS),
        (40, rec::RFLAGS),
        (48, rec::RSP),
        (56, rec::SS),
    ];
    for (off, f) in frame {
        a.mov(rax, qword_ptr(rsp + off))?;
        a.mov(qword_ptr(field(f)), rax)?;
    }
    a.mov(rax, cr2)?;
    a.mov(qword_ptr(field(rec::CR2)), rax)?;
    a.inc(qword_ptr(field(rec::COUNT)))?;
    a.mov(qword_ptr(field(rec::MAGIC)), rec::MAGIC_VALUE as i32)?;
    a.pop(rax)?;
    halt_forever(a)
}

/// Legacy protected-mode handler (32-bit gates to ring 0).
fn body32(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.push(ds)?;
    a.push(eax)?;
    a.mov(ax, sel::KERNEL_DS as u32)?;
    a.mov(ds, ax)?;
    // Stack: +8 vector, +12 error, +16 eip, +20 cs, +24 eflags.
    let frame = [
        (8, rec::VECTOR),
        (12, rec::ERROR_CODE),
        (16, rec::RIP),
        (20, rec::CS),
        (24, rec::RFLAGS),
    ];
    for (off, f) in frame {
        a.mov(eax, dword_ptr(esp + off))?;
        store32(a, f)?;
    }
    // From ring 3 the CPU also pushed ESP and SS; otherwise the interrupted
    // stack is the current one, just above the frame.
    let mut same_ring = a.create_label();
    let mut done = a.create_label();
    a.test(byte_ptr(esp + 20), 3)?;
    a.jz(same_ring)?;
    a.mov(eax, dword_ptr(esp + 28))?;
    store32(a, rec::RSP)?;
    a.movzx(eax, word_ptr(esp + 32))?;
    store32(a, rec::SS)?;
    a.jmp(done)?;
    a.set_label(&mut same_ring)?;
    a.lea(eax, ptr(esp + 28))?;
    store32(a, rec::RSP)?;
    a.xor(eax, eax)?;
    a.mov(ax, ss)?;
    store32(a, rec::SS)?;
    a.set_label(&mut done)?;
    a.mov(eax, cr2)?;
    store32(a, rec::CR2)?;
    a.inc(dword_ptr(field(rec::COUNT)))?;
    a.mov(dword_ptr(field(rec::MAGIC)), rec::MAGIC_VALUE)?;
    a.pop(eax)?;
    a.pop(ds)?;
    halt_forever(a)
}

fn store32(a: &mut CodeAssembler, f: u64) -> Result<(), IcedError> {
    a.mov(dword_ptr(field(f)), eax)?;
    a.mov(dword_ptr(field(f) + 4), 0u32)
}

/// Real-mode handler (IVT): frame is IP, CS, FLAGS; no error codes.
fn body16(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.push(ds)?;
    a.push(eax)?;
    a.push(bp)?;
    a.mov(bp, sp)?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    // bp+0 bp, +2 eax, +6 ds, +8 vector, +10 error, +12 ip, +14 cs, +16 flags.
    let frame = [
        (8, rec::VECTOR),
        (10, rec::ERROR_CODE),
        (12, rec::RIP),
        (14, rec::CS),
        (16, rec::RFLAGS),
    ];
    for (off, f) in frame {
        a.movzx(eax, word_ptr(bp + off))?;
        store32(a, f)?;
    }
    a.lea(ax, ptr(bp + 18))?;
    a.movzx(eax, ax)?;
    store32(a, rec::RSP)?;
    a.xor(eax, eax)?;
    a.mov(ax, ss)?;
    store32(a, rec::SS)?;
    a.mov(dword_ptr(field(rec::CR2)), 0u32)?;
    a.mov(dword_ptr(field(rec::CR2) + 4), 0u32)?;
    a.inc(dword_ptr(field(rec::COUNT)))?;
    a.mov(dword_ptr(field(rec::MAGIC)), rec::MAGIC_VALUE)?;
    a.pop(bp)?;
    a.pop(eax)?;
    a.pop(ds)?;
    halt_forever(a)
}

fn halt_forever(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut l = a.create_label();
    a.set_label(&mut l)?;
    a.hlt()?;
    a.jmp(l)
}

/// Bytes reserved for each stub set (256 entry stubs plus the common body).
pub const STUB_REGION: u64 = 0x1000;

/// Real-mode IVT pointing at 16-bit stubs (segment 0).
pub fn write_ivt(mem: &mut GuestMemory) {
    let (code, entries) = assemble_stubs(16, layout::STUBS16, body16);
    assert!(code.len() as u64 <= STUB_REGION, "16-bit stubs too large");
    mem.write(layout::STUBS16, &code);
    for (v, e) in entries.iter().enumerate() {
        mem.write_u16(layout::IVT + 4 * v as u64, *e as u16);
        mem.write_u16(layout::IVT + 4 * v as u64 + 2, 0);
    }
}

/// 32-bit interrupt gates to [`sel::KERNEL_CS32`]; returns the IDT limit.
pub fn write_idt32(mem: &mut GuestMemory) -> u16 {
    let (code, entries) = assemble_stubs(32, layout::STUBS32, body32);
    assert!(code.len() as u64 <= STUB_REGION, "32-bit stubs too large");
    mem.write(layout::STUBS32, &code);
    for (v, e) in entries.iter().enumerate() {
        let attr = P | gate_dpl(v as u8) << 5 | 0x0E;
        let gate = (e & 0xFFFF)
            | (sel::KERNEL_CS32 as u64) << 16
            | (attr as u64) << 40
            | (e >> 16 & 0xFFFF) << 48;
        mem.write_u64(layout::IDT + 8 * v as u64, gate);
    }
    256 * 8 - 1
}

/// 64-bit interrupt gates to [`sel::KERNEL_CS64`] using IST1; returns the IDT limit.
pub fn write_idt64(mem: &mut GuestMemory) -> u16 {
    let (code, entries) = assemble_stubs(64, layout::STUBS64, body64);
    assert!(code.len() as u64 <= STUB_REGION, "64-bit stubs too large");
    mem.write(layout::STUBS64, &code);
    for (v, e) in entries.iter().enumerate() {
        let attr = P | gate_dpl(v as u8) << 5 | 0x0E;
        let lo = (e & 0xFFFF)
            | (sel::KERNEL_CS64 as u64) << 16
            | 1u64 << 32 // IST1
            | (attr as u64) << 40
            | (e >> 16 & 0xFFFF) << 48;
        let hi = e >> 32;
        mem.write_u64(layout::IDT + 16 * v as u64, lo);
        mem.write_u64(layout::IDT + 16 * v as u64 + 8, hi);
    }
    256 * 16 - 1
}
