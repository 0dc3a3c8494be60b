// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A fake Nexus virtio-net device for host tests: the register block of the contract and a
//! device side that walks the driver's rings in host memory (the driver's DMA blocks, whose
//! "guest-physical" addresses are host addresses), plus a [`Link`] over channels to play
//! the peer, and a `std` clock.

use std::boxed::Box;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::string::String;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration as StdDuration;
use std::vec;
use std::vec::Vec;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::driver::{fold, sum_words};
use super::error::Result;
use super::link::{Clock, Link};
use crate::mmio::Registers;
use nexus_ring::mmio::{self, regs, status};
use nexus_ring::net::{
    self as contract, HDR_F_NEEDS_CSUM, HEADER_LEN, NetHeader, VIRTIO_F_VERSION_1, config,
    wait_value,
};

/// Reads `len` bytes at host address `addr`.
fn read(addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // SAFETY: the addresses come from the driver's rings: its DMA blocks, alive while the
    // queues are live (the fake only walks them then), and the driver holds no reference
    // into buffers it posted.
    unsafe {
        std::ptr::copy_nonoverlapping(
            std::ptr::with_exposed_provenance::<u8>(addr as usize),
            out.as_mut_ptr(),
            len,
        )
    };
    out
}

/// Writes `data` at host address `addr`.
fn write(addr: u64, data: &[u8]) {
    // SAFETY: as for `read`: ring fields and buffers the driver posted to the device.
    unsafe {
        std::ptr::copy_nonoverlapping(
            data.as_ptr(),
            std::ptr::with_exposed_provenance_mut::<u8>(addr as usize),
            data.len(),
        )
    };
}

/// Writes a `u16` at host address `addr` (a ring field).
pub(crate) fn write_u16(addr: u64, value: u16) {
    write(addr, &value.to_le_bytes());
}

fn read_u16(addr: u64) -> u16 {
    u16::from_le_bytes(read(addr, 2).try_into().unwrap())
}

/// A descriptor: `(addr, len, writable)`.
type Segment = (u64, u32, bool);

/// One queue as the device sees it.
#[derive(Debug, Default, Clone)]
pub(crate) struct FakeQueue {
    pub num_max: u32,
    pub num: u32,
    pub ready: u32,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    last_avail: u16,
    pub used_idx: u16,
}

impl FakeQueue {
    fn size(&self) -> u64 {
        u64::from(self.num)
    }

    /// The next available chain: `(head, [(addr, len, writable)])`.
    fn pop(&mut self) -> Option<(u16, Vec<Segment>)> {
        if self.ready != 1 || read_u16(self.avail + 2) == self.last_avail {
            return None;
        }
        let slot = self.avail + 4 + 2 * (u64::from(self.last_avail) % self.size());
        let head = read_u16(slot);
        self.last_avail = self.last_avail.wrapping_add(1);
        let mut chain = Vec::new();
        let mut index = head;
        for _ in 0..16 {
            let at = self.desc + 16 * u64::from(index);
            let bytes = read(at, 16);
            let addr = u64::from_le_bytes(bytes[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes(bytes[12..14].try_into().unwrap());
            chain.push((addr, len, flags & 2 != 0));
            if flags & 1 == 0 {
                break;
            }
            index = u16::from_le_bytes(bytes[14..16].try_into().unwrap());
        }
        Some((head, chain))
    }

    fn push_used(&mut self, head: u16, len: u32) {
        let at = self.used + 4 + 8 * (u64::from(self.used_idx) % self.size());
        write(at, &u32::from(head).to_le_bytes());
        write(at + 4, &len.to_le_bytes());
        self.used_idx = self.used_idx.wrapping_add(1);
        write(self.used + 2, &self.used_idx.to_le_bytes());
    }

    fn used_event(&self) -> u16 {
        read_u16(self.avail + 4 + 2 * self.size())
    }

    /// The driver's `avail.idx`.
    pub(crate) fn avail_idx(&self) -> u16 {
        read_u16(self.avail + 2)
    }

    fn available(&self) -> u16 {
        if self.ready != 1 {
            return 0;
        }
        read_u16(self.avail + 2).wrapping_sub(self.last_avail)
    }
}

/// Where transmitted frames go.
pub(crate) type FrameSink = Box<dyn FnMut(NetHeader, Vec<u8>)>;
/// Where received frames come from when the driver waits: a blocking receive with timeout.
pub(crate) type FrameSource = Box<dyn FnMut(StdDuration) -> Option<Vec<u8>>>;

/// The fake device's state, shared with the test.
pub(crate) struct FakeNetState {
    pub magic: u32,
    pub device_id: u32,
    pub vendor_id: u32,
    pub offered: u64,
    pub driver_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    pub refuse_features_ok: bool,
    pub status: u32,
    pub status_writes: Vec<u32>,
    pub mac: [u8; 6],
    pub mtu: u16,
    pub link_status: u16,
    queue_sel: u32,
    pub queues: [FakeQueue; 2],
    pub notifies: [u32; 2],
    pub wait_reads: u32,
    /// `(rx used_event, tx used_event)` at each WAIT read.
    pub used_event_at_wait: Vec<(u16, u16)>,
    /// The driver's WAIT timeout hint at each WAIT read (receive queue's used ring).
    pub hint_at_wait: Vec<u16>,
    /// What the next WAIT reads return instead (then cleared).
    pub wait_override: Option<u32>,
    /// Sets `VIRTQ_USED_F_NO_NOTIFY` in both used rings when they are placed.
    pub no_notify: bool,
    pub resets: u32,
    /// Frames waiting for a receive buffer.
    pub rx_pending: VecDeque<(NetHeader, Vec<u8>)>,
    /// Frames dropped for want of room in a chain.
    pub rx_dropped: u32,
    /// Transmitted frames, when there is no sink.
    pub transmitted: Vec<(NetHeader, Vec<u8>)>,
    pub sink: Option<FrameSink>,
    pub source: Option<FrameSource>,
    pub unexpected: Vec<String>,
}

/// The fake device's register block; clones share the state.
#[derive(Clone)]
pub(crate) struct FakeNet(pub Rc<RefCell<FakeNetState>>);

impl core::fmt::Debug for FakeNet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FakeNet")
    }
}

impl FakeNet {
    /// A device offering everything the contract lists.
    pub(crate) fn new() -> Self {
        let queue = FakeQueue {
            num_max: u32::from(contract::QUEUE_SIZE_MAX),
            ..FakeQueue::default()
        };
        Self(Rc::new(RefCell::new(FakeNetState {
            magic: mmio::MAGIC,
            device_id: contract::DEVICE_ID,
            vendor_id: contract::VENDOR_ID,
            offered: contract::DEVICE_FEATURES,
            driver_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            refuse_features_ok: false,
            status: 0,
            status_writes: Vec::new(),
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            mtu: 1500,
            link_status: 1,
            queue_sel: 0,
            queues: [queue.clone(), queue],
            notifies: [0; 2],
            wait_reads: 0,
            used_event_at_wait: Vec::new(),
            hint_at_wait: Vec::new(),
            wait_override: None,
            no_notify: false,
            resets: 0,
            rx_pending: VecDeque::new(),
            rx_dropped: 0,
            transmitted: Vec::new(),
            sink: None,
            source: None,
            unexpected: Vec::new(),
        })))
    }

    pub(crate) fn state(&self) -> std::cell::RefMut<'_, FakeNetState> {
        self.0.borrow_mut()
    }
}

impl FakeNetState {
    fn live(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        for queue in &mut self.queues {
            *queue = FakeQueue {
                num_max: queue.num_max,
                ..FakeQueue::default()
            };
        }
        self.resets += 1;
    }

    /// Sends every available transmit chain to the sink.
    pub(crate) fn process_tx(&mut self) {
        if !self.live() {
            return;
        }
        while let Some((head, chain)) = self.queues[1].pop() {
            let mut bytes = Vec::new();
            for (addr, len, _) in &chain {
                bytes.extend_from_slice(&read(*addr, *len as usize));
            }
            self.queues[1].push_used(head, 0);
            let header = NetHeader::parse(&bytes).expect("a header");
            let mut frame = bytes[HEADER_LEN..].to_vec();
            if header.flags & HDR_F_NEEDS_CSUM != 0 {
                // What the host's stack does with a partial checksum.
                let start = usize::from(header.csum_start);
                let at = start + usize::from(header.csum_offset);
                let sum = !fold(sum_words(0, &frame[start..]));
                frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
            }
            match self.sink.as_mut() {
                Some(sink) => sink(header, frame),
                None => self.transmitted.push((header, frame)),
            }
        }
    }

    /// Delivers pending frames into posted receive buffers; returns how many.
    pub(crate) fn deliver_rx(&mut self) -> usize {
        let mut delivered = 0;
        while self.live() && !self.rx_pending.is_empty() && self.queues[0].available() > 0 {
            let Some((head, chain)) = self.queues[0].pop() else {
                break;
            };
            let (header, frame) = self.rx_pending.pop_front().unwrap();
            let mut bytes = header.to_bytes().to_vec();
            bytes.extend_from_slice(&frame);
            let room: usize = chain.iter().map(|(_, len, _)| *len as usize).sum();
            if bytes.len() > room {
                self.rx_dropped += 1;
                self.queues[0].last_avail = self.queues[0].last_avail.wrapping_sub(1);
                continue;
            }
            let mut at = 0;
            for (addr, len, _) in chain {
                let n = (len as usize).min(bytes.len() - at);
                write(addr, &bytes[at..at + n]);
                at += n;
            }
            self.queues[0].push_used(head, bytes.len() as u32);
            delivered += 1;
        }
        delivered
    }

    fn changed(&self) -> bool {
        self.queues
            .iter()
            .any(|q| q.ready == 1 && q.used_idx != q.used_event())
    }

    fn wait(&mut self) -> u32 {
        self.wait_reads += 1;
        if self.queues[0].ready == 1 {
            let events = (self.queues[0].used_event(), self.queues[1].used_event());
            self.used_event_at_wait.push(events);
            let rx = &self.queues[0];
            self.hint_at_wait.push(read_u16(
                rx.used + nexus_ring::net::wait_hint_offset(rx.size() as u16),
            ));
        }
        if let Some(value) = self.wait_override.take() {
            return value;
        }
        if !self.live() {
            return contract::WAIT_NOT_LIVE;
        }
        self.process_tx();
        self.deliver_rx();
        if !self.changed() {
            if let Some(source) = self.source.as_mut() {
                if let Some(frame) = source(StdDuration::from_millis(100)) {
                    self.rx_pending.push_back((NetHeader::default(), frame));
                }
            }
            self.deliver_rx();
        }
        wait_value(self.queues[0].used_idx, self.queues[1].used_idx)
    }

    /// A 32-bit read of the config space at `offset`: the WAIT register, or the aligned word
    /// of the fields laid out as the contract says.
    fn read_config(&mut self, offset: u32) -> u32 {
        if offset == config::WAIT {
            return self.wait();
        }
        let mut image = [0u8; config::SIZE as usize];
        let mut put = |at: u32, bytes: &[u8]| {
            image[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        };
        put(config::MAC, &self.mac);
        put(config::STATUS, &self.link_status.to_le_bytes());
        put(config::MAX_VIRTQUEUE_PAIRS, &1u16.to_le_bytes());
        put(config::MTU, &self.mtu.to_le_bytes());
        let at = offset as usize;
        match image.get(at..at + 4) {
            Some(word) if offset % 4 == 0 => u32::from_le_bytes(word.try_into().unwrap()),
            _ => {
                self.unexpected
                    .push(std::format!("read config {offset:#x}"));
                0
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        self.status_writes.push(value);
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        if value & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let ok = !self.refuse_features_ok
                && self.driver_features & VIRTIO_F_VERSION_1 != 0
                && self.driver_features & !self.offered == 0;
            if !ok {
                value &= !status::FEATURES_OK;
            }
        }
        self.status = value | (self.status & status::DEVICE_NEEDS_RESET);
    }

    fn queue_ready(&mut self, value: u32) {
        let index = self.queue_sel as usize;
        let no_notify = self.no_notify;
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        queue.ready = u32::from(value == 1 && queue.num > 0 && queue.num <= queue.num_max);
        if queue.ready == 1 && no_notify {
            write(queue.used, &1u16.to_le_bytes());
        }
    }
}

impl Registers for FakeNet {
    fn read(&mut self, offset: u32) -> u32 {
        let mut s = self.state();
        let queue = s.queue_sel as usize;
        match offset {
            regs::MAGIC_VALUE => s.magic,
            regs::VERSION => mmio::VERSION,
            regs::DEVICE_ID => s.device_id,
            regs::VENDOR_ID => s.vendor_id,
            regs::DEVICE_FEATURES => match s.device_features_sel {
                0 => s.offered as u32,
                1 => (s.offered >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => s.queues.get(queue).map_or(0, |q| q.num_max),
            regs::QUEUE_READY => s.queues.get(queue).map_or(0, |q| q.ready),
            regs::STATUS => s.status,
            regs::CONFIG_GENERATION => 0,
            o if o >= regs::CONFIG => s.read_config(o - regs::CONFIG),
            other => {
                s.unexpected.push(std::format!("read {other:#x}"));
                0
            }
        }
    }

    fn write(&mut self, offset: u32, value: u32) {
        let mut s = self.state();
        let queue = s.queue_sel as usize;
        let set_low = |field: &mut u64| *field = (*field & !0xFFFF_FFFF) | u64::from(value);
        let set_high = |field: &mut u64| *field = (*field & 0xFFFF_FFFF) | u64::from(value) << 32;
        match offset {
            regs::DEVICE_FEATURES_SEL => s.device_features_sel = value,
            regs::DRIVER_FEATURES_SEL => s.driver_features_sel = value,
            regs::DRIVER_FEATURES => {
                let shift = 32 * u64::from(s.driver_features_sel.min(1));
                s.driver_features =
                    (s.driver_features & !(0xFFFF_FFFF << shift)) | (u64::from(value) << shift);
            }
            regs::QUEUE_SEL => s.queue_sel = value,
            regs::QUEUE_NUM => s.queues[queue].num = value,
            regs::QUEUE_READY => s.queue_ready(value),
            regs::QUEUE_NOTIFY => {
                if let Some(count) = s.notifies.get_mut(value as usize) {
                    *count += 1;
                }
                s.process_tx();
                s.deliver_rx();
            }
            regs::STATUS => s.write_status(value),
            regs::QUEUE_DESC_LOW => set_low(&mut s.queues[queue].desc),
            o if o == regs::QUEUE_DESC_LOW + 4 => set_high(&mut s.queues[queue].desc),
            regs::QUEUE_DRIVER_LOW => set_low(&mut s.queues[queue].avail),
            o if o == regs::QUEUE_DRIVER_LOW + 4 => set_high(&mut s.queues[queue].avail),
            regs::QUEUE_DEVICE_LOW => set_low(&mut s.queues[queue].used),
            o if o == regs::QUEUE_DEVICE_LOW + 4 => set_high(&mut s.queues[queue].used),
            other => s
                .unexpected
                .push(std::format!("write {other:#x} = {value:#x}")),
        }
    }
}

/// A clock from `std`.
#[derive(Debug)]
pub(crate) struct StdClock(std::time::Instant);

impl StdClock {
    pub(crate) fn new() -> Box<Self> {
        Box::new(Self(std::time::Instant::now()))
    }
}

impl Clock for StdClock {
    fn now(&self) -> Instant {
        Instant::from_micros(self.0.elapsed().as_micros() as i64)
    }

    fn unix_time_ms(&self) -> Option<u64> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.ok().map(|d| d.as_millis() as u64)
    }
}

/// A link over two channels (the peer of a test): frames out on `tx`, in from `rx`.
pub(crate) struct ChannelLink {
    pub tx: Sender<Vec<u8>>,
    pub rx: Receiver<Vec<u8>>,
    pub queued: VecDeque<Vec<u8>>,
    pub mac: [u8; 6],
}

pub(crate) struct ChannelRx(Vec<u8>);
pub(crate) struct ChannelTx<'a>(&'a Sender<Vec<u8>>);

impl phy::RxToken for ChannelRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for ChannelTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let result = f(&mut frame);
        let _ = self.0.send(frame);
        result
    }
}

impl phy::Device for ChannelLink {
    type RxToken<'a> = ChannelRx;
    type TxToken<'a> = ChannelTx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(ChannelRx, ChannelTx<'_>)> {
        let frame = self
            .queued
            .pop_front()
            .or_else(|| self.rx.try_recv().ok())?;
        Some((ChannelRx(frame), ChannelTx(&self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<ChannelTx<'_>> {
        Some(ChannelTx(&self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

impl Link for ChannelLink {
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn wait(&mut self) -> Result<()> {
        if self.queued.is_empty() {
            match self.rx.recv_timeout(StdDuration::from_millis(100)) {
                Ok(frame) => self.queued.push_back(frame),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
        }
        Ok(())
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }
}
