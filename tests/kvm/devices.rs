//! Model devices with access logs, so two executions (KVM and another
//! implementation) can be compared access by access.

use std::ops::Range;

use super::vcpu::{Exit, le};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Mmio,
    Port,
}

/// One device access. String I/O is logged one element per entry, so logs do
/// not depend on how an implementation batches REP INS/OUTS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub space: Space,
    pub addr: u64,
    pub size: u8,
    pub is_write: bool,
    /// Little-endian value written, or value returned for a read.
    pub value: u64,
}

impl Access {
    pub fn mmio_write(addr: u64, size: u8, value: u64) -> Self {
        Access {
            space: Space::Mmio,
            addr,
            size,
            is_write: true,
            value,
        }
    }
    pub fn mmio_read(addr: u64, size: u8, value: u64) -> Self {
        Access {
            space: Space::Mmio,
            addr,
            size,
            is_write: false,
            value,
        }
    }
    pub fn port_write(port: u16, size: u8, value: u64) -> Self {
        Access {
            space: Space::Port,
            addr: port as u64,
            size,
            is_write: true,
            value,
        }
    }
    pub fn port_read(port: u16, size: u8, value: u64) -> Self {
        Access {
            space: Space::Port,
            addr: port as u64,
            size,
            is_write: false,
            value,
        }
    }
}

/// Byte-addressed register file: reads return the stored bytes, writes store
/// them. Used for both an MMIO window and a range of ports.
#[derive(Clone, Debug)]
pub struct ByteDevice {
    pub base: u64,
    pub bytes: Vec<u8>,
}

impl ByteDevice {
    pub fn new(base: u64, len: usize) -> Self {
        ByteDevice {
            base,
            bytes: vec![0; len],
        }
    }
    pub fn range(&self) -> Range<u64> {
        self.base..self.base + self.bytes.len() as u64
    }
    fn contains(&self, addr: u64, len: usize) -> bool {
        addr >= self.base && addr + len as u64 <= self.base + self.bytes.len() as u64
    }
    fn read(&self, addr: u64, buf: &mut [u8]) {
        let o = (addr - self.base) as usize;
        buf.copy_from_slice(&self.bytes[o..o + buf.len()]);
    }
    fn write(&mut self, addr: u64, data: &[u8]) {
        let o = (addr - self.base) as usize;
        self.bytes[o..o + data.len()].copy_from_slice(data);
    }
    pub fn read_value(&self, addr: u64, len: usize) -> u64 {
        let mut b = vec![0; len];
        self.read(addr, &mut b);
        le(&b)
    }
    pub fn write_value(&mut self, addr: u64, len: usize, value: u64) {
        self.write(addr, &value.to_le_bytes()[..len]);
    }
}

/// A FIFO port: IN pops bytes (0xFF when empty), OUT appends to `output`.
#[derive(Clone, Debug, Default)]
pub struct FifoPort {
    pub port: u16,
    pub input: std::collections::VecDeque<u8>,
    pub output: Vec<u8>,
}

/// All model devices of one guest, plus the ordered log of accesses.
/// Accesses that hit no device read as all-ones and are still logged.
#[derive(Clone, Debug, Default)]
pub struct Bus {
    pub mmio: Vec<ByteDevice>,
    pub ports: Vec<ByteDevice>,
    pub fifos: Vec<FifoPort>,
    pub log: Vec<Access>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_mmio(mut self, base: u64, len: usize) -> Self {
        self.mmio.push(ByteDevice::new(base, len));
        self
    }
    pub fn with_ports(mut self, base: u16, len: usize) -> Self {
        self.ports.push(ByteDevice::new(base as u64, len));
        self
    }
    pub fn with_fifo(mut self, port: u16, input: &[u8]) -> Self {
        self.fifos.push(FifoPort {
            port,
            input: input.iter().copied().collect(),
            output: vec![],
        });
        self
    }

    pub fn mmio_device(&mut self, addr: u64) -> &mut ByteDevice {
        self.mmio
            .iter_mut()
            .find(|d| d.contains(addr, 1))
            .expect("no MMIO device there")
    }
    pub fn port_device(&mut self, port: u16) -> &mut ByteDevice {
        self.ports
            .iter_mut()
            .find(|d| d.contains(port as u64, 1))
            .expect("no port device there")
    }
    pub fn fifo(&mut self, port: u16) -> &mut FifoPort {
        self.fifos
            .iter_mut()
            .find(|f| f.port == port)
            .expect("no FIFO on that port")
    }

    pub fn mmio_read(&mut self, addr: u64, buf: &mut [u8]) {
        match self.mmio.iter().find(|d| d.contains(addr, buf.len())) {
            Some(d) => d.read(addr, buf),
            None => buf.fill(0xFF),
        }
        self.log
            .push(Access::mmio_read(addr, buf.len() as u8, le(buf)));
    }

    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        if let Some(d) = self.mmio.iter_mut().find(|d| d.contains(addr, data.len())) {
            d.write(addr, data);
        }
        self.log
            .push(Access::mmio_write(addr, data.len() as u8, le(data)));
    }

    /// One I/O element of `buf.len()` bytes.
    pub fn port_in(&mut self, port: u16, buf: &mut [u8]) {
        if let Some(f) = self.fifos.iter_mut().find(|f| f.port == port) {
            for b in buf.iter_mut() {
                *b = f.input.pop_front().unwrap_or(0xFF);
            }
        } else {
            match self
                .ports
                .iter()
                .find(|d| d.contains(port as u64, buf.len()))
            {
                Some(d) => d.read(port as u64, buf),
                None => buf.fill(0xFF),
            }
        }
        self.log
            .push(Access::port_read(port, buf.len() as u8, le(buf)));
    }

    pub fn port_out(&mut self, port: u16, data: &[u8]) {
        if let Some(f) = self.fifos.iter_mut().find(|f| f.port == port) {
            f.output.extend_from_slice(data);
        } else if let Some(d) = self
            .ports
            .iter_mut()
            .find(|d| d.contains(port as u64, data.len()))
        {
            d.write(port as u64, data);
        }
        self.log
            .push(Access::port_write(port, data.len() as u8, le(data)));
    }

    /// Services an MMIO or I/O exit. Returns the bytes to hand back for a read
    /// (pass to `Vcpu::complete_read`), an empty Vec for a write, or None if
    /// `exit` is not an MMIO/I/O exit.
    pub fn handle(&mut self, exit: &Exit) -> Option<Vec<u8>> {
        match exit {
            Exit::Mmio {
                gpa,
                len,
                is_write: true,
                data,
            } => {
                self.mmio_write(*gpa, &data[..*len]);
                Some(vec![])
            }
            Exit::Mmio {
                gpa,
                len,
                is_write: false,
                ..
            } => {
                let mut buf = vec![0; *len];
                self.mmio_read(*gpa, &mut buf);
                Some(buf)
            }
            Exit::Io {
                port,
                size,
                is_write: true,
                data,
                ..
            } => {
                for chunk in data.chunks(*size as usize) {
                    self.port_out(*port, chunk);
                }
                Some(vec![])
            }
            Exit::Io {
                port,
                size,
                is_write: false,
                count,
                ..
            } => {
                let mut buf = vec![0; *size as usize * *count as usize];
                for chunk in buf.chunks_mut(*size as usize) {
                    self.port_in(*port, chunk);
                }
                Some(buf)
            }
            _ => None,
        }
    }
}
