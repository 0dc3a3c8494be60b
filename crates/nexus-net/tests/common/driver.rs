// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A guest driver working the device's registers and its two rings in guest memory, as the
//! micro-guest driver does: WAIT for completions, `used_event` kept per queue, doorbells only
//! when the device has not turned notifications off.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_kvm::BusDevice;
use nexus_kvm::virtio_mmio::{regs, status};
use nexus_net::device::config;
use nexus_net::header::{HEADER_LEN, NetHeader};
use nexus_net::{DEVICE_FEATURES, GuestMemoryMmap, NexusNetTransport, WAIT_NOT_LIVE};
use vm_memory::{Address, Bytes, GuestAddress};

/// Guest RAM of the test VMs.
pub const RAM_SIZE: u64 = 16 << 20;
/// Entries per queue (unless set otherwise: [`Driver::queue_size`]).
pub const QUEUE_SIZE: u16 = 32;
/// Buffers of one chain (slot): the header at +0, the frame at +16.
pub const SLOT: u64 = 0x800;
/// Where the frame goes in a slot.
pub const FRAME_AT: u64 = 16;
const RX_RINGS: u64 = 0x1_0000;
const TX_RINGS: u64 = 0x2_0000;
pub const RX_BUFFERS: u64 = 0x10_0000;
pub const TX_BUFFERS: u64 = 0x20_0000;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;
const USED_F_NO_NOTIFY: u16 = 1;

/// Fresh guest RAM for a test VM.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)]).unwrap()
}

/// One split virtqueue as the driver keeps it.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    pub index: u32,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    /// The driver's available index.
    pub avail_idx: u16,
    /// Completions consumed.
    pub last_used: u16,
}

impl Ring {
    fn new(index: u32, base: u64, size: u16) -> Self {
        Ring {
            index,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            size,
            avail_idx: 0,
            last_used: 0,
        }
    }

    fn used_event(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }
}

/// Which queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q {
    Rx,
    Tx,
}

/// A received frame.
#[derive(Debug, Clone)]
pub struct Received {
    pub header: NetHeader,
    pub frame: Vec<u8>,
    /// The used length the device wrote.
    pub len: u32,
}

/// The driver.
pub struct Driver {
    pub transport: Arc<Mutex<NexusNetTransport>>,
    pub mem: GuestMemoryMmap,
    pub rx: Ring,
    pub tx: Ring,
    tx_free: Vec<u16>,
    /// Bytes of each receive chain's frame buffer.
    pub rx_frame_len: u32,
    /// Entries per queue at the next set-up (at most 256).
    pub queue_size: u16,
}

impl Driver {
    pub fn new(transport: Arc<Mutex<NexusNetTransport>>, mem: GuestMemoryMmap) -> Self {
        Driver {
            transport,
            mem,
            rx: Ring::new(0, RX_RINGS, QUEUE_SIZE),
            tx: Ring::new(1, TX_RINGS, QUEUE_SIZE),
            tx_free: Vec::new(),
            rx_frame_len: 1514,
            queue_size: QUEUE_SIZE,
        }
    }

    pub fn read(&self, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        self.transport.lock().unwrap().read(offset.into(), &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write(&self, offset: u32, value: u32) {
        self.transport
            .lock()
            .unwrap()
            .write(offset.into(), &value.to_le_bytes());
    }

    pub fn status(&self) -> u32 {
        self.read(regs::STATUS)
    }

    /// Config space bytes.
    pub fn config_bytes(&self, offset: u32, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.transport
            .lock()
            .unwrap()
            .read((regs::CONFIG + offset).into(), &mut b);
        b
    }

    /// One WAIT read.
    pub fn wait(&self) -> u32 {
        self.read(regs::CONFIG + config::WAIT)
    }

    fn ring(&mut self, q: Q) -> &mut Ring {
        match q {
            Q::Rx => &mut self.rx,
            Q::Tx => &mut self.tx,
        }
    }

    /// Resets the device and negotiates `features`, up to (not including) the queues.
    pub fn negotiate(&mut self, features: u64) {
        self.write(regs::STATUS, 0);
        assert_eq!(self.status(), 0);
        self.mem
            .write_slice(&[0u8; 0x3000], GuestAddress(RX_RINGS))
            .unwrap();
        self.mem
            .write_slice(&[0u8; 0x3000], GuestAddress(TX_RINGS))
            .unwrap();
        self.rx = Ring::new(0, RX_RINGS, self.queue_size);
        self.tx = Ring::new(1, TX_RINGS, self.queue_size);
        self.write(regs::STATUS, status::ACKNOWLEDGE);
        self.write(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write(regs::DEVICE_FEATURES_SEL, 1);
        let high = self.read(regs::DEVICE_FEATURES);
        self.write(regs::DEVICE_FEATURES_SEL, 0);
        let low = self.read(regs::DEVICE_FEATURES);
        assert_eq!((u64::from(high) << 32) | u64::from(low), DEVICE_FEATURES);
        self.write(regs::DRIVER_FEATURES_SEL, 0);
        self.write(regs::DRIVER_FEATURES, features as u32);
        self.write(regs::DRIVER_FEATURES_SEL, 1);
        self.write(regs::DRIVER_FEATURES, (features >> 32) as u32);
        self.write(regs::STATUS, 0b1011);
        assert_eq!(self.status(), 0b1011, "FEATURES_OK for {features:#x}");
    }

    /// Sets queue `q` up and ready.
    pub fn setup_queue(&mut self, q: Q) {
        let ring = *self.ring(q);
        self.write(regs::QUEUE_SEL, ring.index);
        assert_eq!(self.read(regs::QUEUE_NUM_MAX), 256);
        self.write(regs::QUEUE_NUM, u32::from(ring.size));
        for (low, addr) in [
            (regs::QUEUE_DESC_LOW, ring.desc),
            (regs::QUEUE_DRIVER_LOW, ring.avail),
            (regs::QUEUE_DEVICE_LOW, ring.used),
        ] {
            self.write(low, addr as u32);
            self.write(low + 4, (addr >> 32) as u32);
        }
        self.write(regs::QUEUE_READY, 1);
        assert_eq!(self.read(regs::QUEUE_READY), 1);
    }

    /// The whole set-up with `features`: both queues, every receive buffer posted, DRIVER_OK.
    /// Returns the status.
    pub fn init(&mut self, features: u64) -> u32 {
        self.init_with(features, self.queue_size / 2)
    }

    /// [`init`](Self::init) with only `rx_chains` receive chains posted.
    pub fn init_with(&mut self, features: u64, rx_chains: u16) -> u32 {
        self.negotiate(features);
        self.setup_queue(Q::Rx);
        self.setup_queue(Q::Tx);
        for slot in 0..rx_chains {
            self.post_rx(slot);
        }
        self.tx_free = (0..self.queue_size / 2).rev().collect();
        self.write(regs::STATUS, 0b1111);
        self.status()
    }

    /// Writes descriptor `index` of queue `q`.
    pub fn write_desc(&self, q: Q, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let ring = match q {
            Q::Rx => self.rx,
            Q::Tx => self.tx,
        };
        let at = GuestAddress(ring.desc + 16 * u64::from(index));
        self.mem.write_obj(addr, at).unwrap();
        self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        self.mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }

    /// Makes the chain at `head` available in queue `q` (no doorbell).
    pub fn publish(&mut self, q: Q, head: u16) {
        let mem = self.mem.clone();
        let ring = self.ring(q);
        let slot = ring.avail + 4 + 2 * u64::from(ring.avail_idx % ring.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        mem.store(
            ring.avail_idx,
            GuestAddress(ring.avail + 2),
            Ordering::Release,
        )
        .unwrap();
    }

    /// Rings the doorbell for `q` (as the ioeventfd would: the device's kick eventfd).
    pub fn kick(&self, q: Q) {
        let index = match q {
            Q::Rx => 0,
            Q::Tx => 1,
        };
        self.write(regs::QUEUE_NOTIFY, index);
    }

    /// Whether the device wants a doorbell for `q` (`VRING_USED_F_NO_NOTIFY` clear).
    pub fn wants_kick(&self, q: Q) -> bool {
        let ring = match q {
            Q::Rx => self.rx,
            Q::Tx => self.tx,
        };
        let flags: u16 = self
            .mem
            .load(GuestAddress(ring.used), Ordering::SeqCst)
            .unwrap();
        flags & USED_F_NO_NOTIFY == 0
    }

    fn kick_if_wanted(&self, q: Q) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.wants_kick(q) {
            self.kick(q);
        }
    }

    /// Posts receive chain `slot`: a 12-byte header buffer, then the frame buffer.
    pub fn post_rx(&mut self, slot: u16) {
        let base = RX_BUFFERS + u64::from(slot) * SLOT;
        let head = 2 * slot;
        self.write_desc(
            Q::Rx,
            head,
            base,
            HEADER_LEN as u32,
            F_WRITE | F_NEXT,
            head + 1,
        );
        self.write_desc(
            Q::Rx,
            head + 1,
            base + FRAME_AT,
            self.rx_frame_len,
            F_WRITE,
            0,
        );
        self.publish(Q::Rx, head);
    }

    /// The used ring's index of `q`.
    pub fn used_idx(&self, q: Q) -> u16 {
        let ring = match q {
            Q::Rx => self.rx,
            Q::Tx => self.tx,
        };
        self.mem
            .load(GuestAddress(ring.used + 2), Ordering::Acquire)
            .unwrap()
    }

    /// The next used element of `q`, if any: `(id, len)`; records it consumed.
    fn take_used(&mut self, q: Q) -> Option<(u16, u32)> {
        let used = self.used_idx(q);
        let mem = self.mem.clone();
        let ring = self.ring(q);
        if used == ring.last_used {
            return None;
        }
        let at = ring.used + 4 + 8 * u64::from(ring.last_used % ring.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        ring.last_used = ring.last_used.wrapping_add(1);
        mem.store(
            ring.last_used,
            GuestAddress(ring.used_event()),
            Ordering::Release,
        )
        .unwrap();
        Some((id as u16, len))
    }

    /// Takes back every transmit chain the device finished.
    pub fn reclaim_tx(&mut self) -> usize {
        let mut n = 0;
        while let Some((id, len)) = self.take_used(Q::Tx) {
            assert_eq!(len, 0, "transmit chains are returned with no bytes written");
            self.tx_free.push(id / 2);
            n += 1;
        }
        n
    }

    /// Makes every transmit chain the device finished available again as it is (same
    /// descriptors, same frame), ringing if the device asks: a guest that floods its transmit
    /// queue from a polling loop. Returns the chains made available.
    pub fn republish_tx(&mut self) -> usize {
        let mut n = 0;
        while let Some((id, _)) = self.take_used(Q::Tx) {
            self.publish(Q::Tx, id);
            n += 1;
        }
        if n > 0 {
            self.kick_if_wanted(Q::Tx);
        }
        n
    }

    /// Free transmit slots.
    pub fn tx_free(&self) -> usize {
        self.tx_free.len()
    }

    /// Queues `frame` with `header` for transmission and rings if the device asks for it.
    /// Returns false if every transmit slot is in flight.
    pub fn try_send(&mut self, header: NetHeader, frame: &[u8]) -> bool {
        self.reclaim_tx();
        let Some(slot) = self.tx_free.pop() else {
            return false;
        };
        let base = TX_BUFFERS + u64::from(slot) * SLOT;
        self.mem
            .write_slice(&header.to_bytes(), GuestAddress(base))
            .unwrap();
        self.mem
            .write_slice(frame, GuestAddress(base + FRAME_AT))
            .unwrap();
        let head = 2 * slot;
        self.write_desc(Q::Tx, head, base, HEADER_LEN as u32, F_NEXT, head + 1);
        self.write_desc(Q::Tx, head + 1, base + FRAME_AT, frame.len() as u32, 0, 0);
        self.publish(Q::Tx, head);
        self.kick_if_wanted(Q::Tx);
        true
    }

    /// [`try_send`](Self::try_send), waiting for a free slot.
    pub fn send(&mut self, header: NetHeader, frame: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.try_send(header, frame) {
            assert!(Instant::now() < deadline, "no transmit slot came back");
            assert_ne!(self.wait(), WAIT_NOT_LIVE, "the device is not live");
        }
    }

    /// [`send`](Self::send) with a plain header.
    pub fn send_plain(&mut self, frame: &[u8]) {
        self.send(NetHeader::default(), frame);
    }

    /// The next received frame (its chain goes back to the device), sleeping in WAIT; `None`
    /// after `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reclaim_tx();
            if let Some((head, len)) = self.take_used(Q::Rx) {
                let slot = head / 2;
                let base = RX_BUFFERS + u64::from(slot) * SLOT;
                let mut header = [0u8; HEADER_LEN];
                self.mem
                    .read_slice(&mut header, GuestAddress(base))
                    .unwrap();
                let frame_len = (len as usize).saturating_sub(HEADER_LEN);
                let mut frame = vec![0u8; frame_len];
                self.mem
                    .read_slice(&mut frame, GuestAddress(base + FRAME_AT))
                    .unwrap();
                self.post_rx(slot);
                self.kick_if_wanted(Q::Rx);
                return Some(Received {
                    header: NetHeader::from_bytes(&header),
                    frame,
                    len,
                });
            }
            if Instant::now() > deadline {
                return None;
            }
            assert_ne!(self.wait(), WAIT_NOT_LIVE, "the device is not live");
        }
    }

    /// The first received frame `accept` takes (others are dropped); fails the test after
    /// 10 s.
    pub fn recv_matching<T>(
        &mut self,
        what: &str,
        mut accept: impl FnMut(&Received) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(received) = self.recv(left) else {
                panic!("no {what} within 10 s");
            };
            assert_eq!(received.header.num_buffers, 1, "num_buffers");
            if let Some(t) = accept(&received) {
                return t;
            }
        }
    }
}
