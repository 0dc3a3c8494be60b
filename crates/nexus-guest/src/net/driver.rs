// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-net driver: [`VirtioNet`].
//!
//! Setup: checks the register block (magic, version 2, device ID 1, vendor `"NXUS"`),
//! resets the device, `ACKNOWLEDGE`, `DRIVER`, accepts `VIRTIO_F_VERSION_1` (required) and
//! `MAC`, `MTU`, `STATUS`, `CSUM`, `GUEST_CSUM` when offered, checks `FEATURES_OK`, reads the
//! config space, sets up queue 0 (receive) and queue 1 (transmit) — each the largest power of
//! two up to the device's `QueueNumMax` and the driver's limit — in heap blocks
//! (heap blocks: rings first, then one buffer per descriptor), posts every receive buffer,
//! sets `DRIVER_OK` and rings the receive doorbell.
//!
//! Every packet, both ways, is a `virtio_net_hdr_v1` followed by the Ethernet frame, in one
//! buffer of `align64(12 + 14 + mtu)` bytes (one descriptor: a `VERSION_1` device accepts
//! any layout). When `CSUM` was acknowledged, a transmitted TCP segment carries only the
//! pseudo-header sum and `NEEDS_CSUM` with `csum_start`/`csum_offset`, and the host
//! completes it; when `GUEST_CSUM` was, a received TCP segment flagged `NEEDS_CSUM` or
//! `DATA_VALID` is not checked again, and one flagged neither is checked here (the stack
//! is told not to).
//!
//! Doorbells (`QueueNotify`, an ioeventfd) are batched: reposted receive buffers and queued
//! frames are announced by [`flush`](VirtioNet::flush) after each poll of the stack (and
//! every [`TX_KICK_BATCH`] frames in between), and skipped while the device sets
//! `VIRTQ_USED_F_NO_NOTIFY`. Completions are reaped from the used rings, which moves each
//! queue's `used_event` slot to what was consumed; [`wait`](VirtioNet::wait) then reads the
//! WAIT register, which sleeps on the host until either used ring moves past its
//! `used_event` (or a timeout passes). A WAIT read of `0xFFFF_FFFF` — or a used ring that
//! breaks the protocol — resets the device (`Status` = 0): frames in flight are lost (TCP
//! retransmits) and the device is set up again on next use.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use nexus_ring::ChainDescriptor;

use super::dma::DmaBlock;
use super::error::{NetError, Result};
use super::virtio::{ACCEPTED_FEATURES, MAX_MTU};
use crate::mmio::{Registers, config_register};
use crate::virtqueue::{MAX_QUEUE_SIZE, RING_AREA, SplitQueue};
use nexus_ring::mmio::{self, regs, status};
use nexus_ring::net::{
    self as contract, ETHERNET_HEADER_LEN, HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM, HEADER_LEN, LINK_UP,
    MTU, NetHeader, RX_QUEUE, TX_QUEUE, VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, config,
};

/// The aligned config word holding `mac[4..6]` and `status`.
const STATUS_WORD: u32 = config::STATUS & !3;
/// The aligned config word holding `max_virtqueue_pairs` and `mtu`.
const MTU_WORD: u32 = config::MTU & !3;
const _: () = assert!(config::MAC % 4 == 0 && STATUS_WORD == config::MAC + 4);

/// The 16-bit config field at `offset`, out of the aligned 32-bit word that holds it.
fn half(word: u32, offset: u32) -> u16 {
    (word >> (8 * (offset % 4))) as u16
}

/// Frames queued between two transmit doorbells at most, within one poll.
pub const TX_KICK_BATCH: u16 = 32;

/// The driver's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to the stack.
    pub rx_frames: u64,
    /// Their bytes (Ethernet frames, without the virtio header).
    pub rx_bytes: u64,
    /// Received buffers dropped: too short, longer than the buffer, or a bad checksum.
    pub rx_dropped: u64,
    /// Of those, TCP segments whose checksum was wrong.
    pub rx_bad_checksum: u64,
    /// Frames transmitted.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames the stack produced that did not fit a buffer (dropped).
    pub tx_dropped: u64,
    /// Transmitted TCP segments whose checksum the device completes (`NEEDS_CSUM`).
    pub tx_csum_offloaded: u64,
    /// Doorbell writes (`QueueNotify`), both queues.
    pub notifies: u64,
    /// WAIT register reads.
    pub wait_reads: u64,
    /// Device setups (the first one included).
    pub setups: u64,
    /// Resets after a WAIT read of `0xFFFF_FFFF` or a broken used ring.
    pub resets: u64,
}

/// What the driver reads and negotiates at setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetDeviceInfo {
    /// The negotiated feature bits.
    pub features: u64,
    /// The MAC address (from the config space, or generated when the device has none).
    pub mac: [u8; 6],
    /// The MTU (the config space's with `VIRTIO_NET_F_MTU`, else 1500).
    pub mtu: u16,
    /// Entries of the receive queue.
    pub rx_queue_size: u16,
    /// Entries of the transmit queue.
    pub tx_queue_size: u16,
}

impl NetDeviceInfo {
    /// Whether the device completes transmitted checksums (`VIRTIO_NET_F_CSUM`).
    pub fn tx_checksum_offload(&self) -> bool {
        self.features & VIRTIO_NET_F_CSUM != 0
    }

    /// Whether received packets may come with partial or validated checksums
    /// (`VIRTIO_NET_F_GUEST_CSUM`).
    pub fn rx_checksum_offload(&self) -> bool {
        self.features & VIRTIO_NET_F_GUEST_CSUM != 0
    }
}

/// Driver settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetDriverConfig {
    /// Largest receive queue (a power of two up to 256): that many buffers stay posted.
    pub rx_queue_size: u16,
    /// Largest transmit queue (a power of two up to 256).
    pub tx_queue_size: u16,
    /// The MAC to use when the device offers none (`VIRTIO_NET_F_MAC`); a locally
    /// administered unicast address.
    pub fallback_mac: [u8; 6],
}

impl Default for NetDriverConfig {
    /// 256 entries each way (what Linux's virtio-net keeps posted on such a device).
    fn default() -> Self {
        Self {
            rx_queue_size: MAX_QUEUE_SIZE,
            tx_queue_size: MAX_QUEUE_SIZE,
            fallback_mac: [0x02, 0x4E, 0x58, 0x00, 0x00, 0x01],
        }
    }
}

/// One virtqueue with its buffers: rings at the start of the block, buffer `i` after them.
#[derive(Debug)]
struct Ring {
    index: u16,
    block: DmaBlock,
    queue: SplitQueue,
    buf_len: usize,
    /// By head descriptor: the buffer slot of the chain and its sequence number.
    slot_of_head: Vec<(u16, u64)>,
    /// Buffer slots not posted to the device.
    free_slots: Vec<u16>,
    seq: u64,
    /// Chains made available since the last doorbell.
    unannounced: u16,
    /// Scratch of `reap`: used heads, then completed `(slot, used_len)`.
    heads: Vec<(u16, u32)>,
    completed: Vec<(u16, u32)>,
    /// Frames through this queue, their bytes, doorbells, dropped frames and (transmit)
    /// checksums left to the device.
    counters: RingCounters,
}

/// A queue's counters (folded into the driver's when the queue goes with a reset).
#[derive(Debug, Clone, Copy, Default)]
struct RingCounters {
    frames: u64,
    bytes: u64,
    notifies: u64,
    dropped: u64,
    /// Receive: bad TCP checksums; transmit: TCP checksums left to the device.
    checksums: u64,
}

impl Ring {
    fn new(index: u16, size: u16, buf_len: usize) -> Self {
        let block = DmaBlock::new(RING_AREA + usize::from(size) * buf_len);
        let queue = SplitQueue::new(block.mapping(), size);
        Self {
            index,
            block,
            queue,
            buf_len,
            slot_of_head: vec![(0, 0); usize::from(size)],
            free_slots: (0..size).rev().collect(),
            seq: 0,
            unannounced: 0,
            heads: Vec::with_capacity(size.into()),
            completed: Vec::with_capacity(size.into()),
            counters: RingCounters::default(),
        }
    }

    fn size(&self) -> u16 {
        self.queue.layout().size
    }

    fn buffer_offset(&self, slot: u16) -> usize {
        RING_AREA + usize::from(slot) * self.buf_len
    }

    /// Makes buffer `slot` (its first `len` bytes) available to the device.
    fn post(&mut self, slot: u16, len: usize, writable: bool) -> Result<()> {
        let descriptor = ChainDescriptor {
            addr: self.block.mapping().gpa(self.buffer_offset(slot)),
            // `len <= buf_len`, a few KiB.
            len: len as u32,
            writable,
        };
        self.seq += 1;
        let head = self
            .queue
            .add(self.block.mapping(), &[descriptor], self.seq)
            .map_err(|_| NetError::DeviceReset("virtqueue full"))?;
        self.slot_of_head[usize::from(head)] = (slot, self.seq);
        self.unannounced += 1;
        Ok(())
    }

    /// Consumes the used ring: every completed chain's `(slot, used_len)`, in order, into
    /// `completed`.
    fn reap(&mut self) -> Result<()> {
        self.completed.clear();
        let heads = &mut self.heads;
        heads.clear();
        self.queue
            .reap_each(self.block.mapping(), |head, len| heads.push((head, len)))
            .map_err(|_| NetError::DeviceReset("used index jumped"))?;
        for &(head, len) in heads.iter() {
            let (slot, seq) = self.slot_of_head[usize::from(head)];
            if self.queue.take(head, seq).is_some() {
                self.completed.push((slot, len));
            }
        }
        Ok(())
    }

    /// Rings the doorbell if chains were made available since the last one and the device
    /// wants it; returns whether it did.
    fn announce<R: Registers>(&mut self, regs: &mut R) {
        if self.unannounced == 0 {
            return;
        }
        self.unannounced = 0;
        if self.queue.notification_suppressed(self.block.mapping()) {
            return;
        }
        regs.write(regs::QUEUE_NOTIFY, self.index.into());
        self.counters.notifies += 1;
    }

    /// The bytes of buffer `slot`.
    fn buffer(&self, slot: u16, len: usize) -> &[u8] {
        let offset = self.buffer_offset(slot);
        // SAFETY: the slot is not posted (the device returned it, or it was never posted), so
        // the driver owns its bytes; `len <= buf_len` keeps the range inside the slot, and the
        // borrow of `self` keeps it from being posted meanwhile.
        unsafe { self.block.mapping().bytes(offset, len.min(self.buf_len)) }
    }

    /// The bytes of buffer `slot`, mutable.
    fn buffer_mut(&mut self, slot: u16, len: usize) -> &mut [u8] {
        let offset = self.buffer_offset(slot);
        // SAFETY: as for `buffer`, and the `&mut self` borrow makes this the only reference.
        unsafe {
            self.block
                .mapping()
                .bytes_mut(offset, len.min(self.buf_len))
        }
    }
}

/// The live queues of a set-up device.
#[derive(Debug)]
struct Queues {
    rx: Ring,
    tx: Ring,
    /// Received frames reaped and not yet handed to the stack: `(slot, used_len)`.
    received: VecDeque<(u16, u32)>,
}

/// The Nexus virtio-net device and its two queues.
#[derive(Debug)]
pub struct VirtioNet<R: Registers> {
    regs: R,
    config: NetDriverConfig,
    info: NetDeviceInfo,
    /// `None` until set up, and after a reset until the next use.
    queues: Option<Queues>,
    link_up: bool,
    stats: NetStats,
}

const fn align64(value: usize) -> usize {
    (value + 63) & !63
}

impl<R: Registers> VirtioNet<R> {
    /// Finds and sets up the device behind `regs`.
    pub fn new(regs: R, config: NetDriverConfig) -> Result<Self> {
        let mut driver = Self {
            regs,
            config,
            info: NetDeviceInfo {
                features: 0,
                mac: config.fallback_mac,
                mtu: MTU,
                rx_queue_size: 0,
                tx_queue_size: 0,
            },
            queues: None,
            link_up: false,
            stats: NetStats::default(),
        };
        driver.check_identity()?;
        driver.setup()?;
        Ok(driver)
    }

    /// What was negotiated and read at the last setup.
    pub fn info(&self) -> NetDeviceInfo {
        self.info
    }

    /// The driver's counters.
    pub fn stats(&self) -> NetStats {
        let mut stats = self.stats;
        if let Some(queues) = &self.queues {
            fold_counters(&mut stats, &queues.rx.counters, &queues.tx.counters);
        }
        stats
    }

    /// Whether the queues are live (false after a reset, until the next use sets them up).
    pub fn is_live(&self) -> bool {
        self.queues.is_some()
    }

    /// The link status read at the last setup (always up without `VIRTIO_NET_F_STATUS`).
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Frames received and not yet handed to the stack.
    pub fn pending_frames(&self) -> usize {
        self.queues.as_ref().map_or(0, |q| q.received.len())
    }

    fn check_identity(&mut self) -> Result<()> {
        let magic = self.regs.read(regs::MAGIC_VALUE);
        let version = self.regs.read(regs::VERSION);
        let device_id = self.regs.read(regs::DEVICE_ID);
        let vendor_id = self.regs.read(regs::VENDOR_ID);
        if magic != mmio::MAGIC
            || version != mmio::VERSION
            || device_id != contract::DEVICE_ID
            || vendor_id != contract::VENDOR_ID
        {
            return Err(NetError::NotNetDevice {
                magic,
                version,
                device_id,
                vendor_id,
            });
        }
        Ok(())
    }

    fn fail(&mut self, device_status: u32, error: NetError) -> Result<()> {
        self.regs
            .write(regs::STATUS, device_status | status::FAILED);
        Err(error)
    }

    /// Resets the device, negotiates, and sets up both queues with every receive buffer
    /// posted.
    fn setup(&mut self) -> Result<()> {
        self.stats.setups += 1;
        if let Some(queues) = self.queues.take() {
            fold_counters(&mut self.stats, &queues.rx.counters, &queues.tx.counters);
        }
        self.regs.write(regs::STATUS, 0);
        let mut device_status = status::ACKNOWLEDGE | status::DRIVER;
        self.regs.write(regs::STATUS, status::ACKNOWLEDGE);
        self.regs.write(regs::STATUS, device_status);

        self.regs.write(regs::DEVICE_FEATURES_SEL, 1);
        let high = u64::from(self.regs.read(regs::DEVICE_FEATURES));
        self.regs.write(regs::DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.regs.read(regs::DEVICE_FEATURES));
        let offered = high << 32 | low;
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return self.fail(device_status, NetError::FeatureNegotiation { offered });
        }
        let accepted = offered & ACCEPTED_FEATURES;
        self.regs.write(regs::DRIVER_FEATURES_SEL, 0);
        self.regs.write(regs::DRIVER_FEATURES, accepted as u32);
        self.regs.write(regs::DRIVER_FEATURES_SEL, 1);
        self.regs
            .write(regs::DRIVER_FEATURES, (accepted >> 32) as u32);
        device_status |= status::FEATURES_OK;
        self.regs.write(regs::STATUS, device_status);
        if self.regs.read(regs::STATUS) & status::FEATURES_OK == 0 {
            return self.fail(device_status, NetError::FeatureNegotiation { offered });
        }

        let (mac, link_up, mtu) = self.read_config(accepted);
        if !(68..=MAX_MTU).contains(&mtu) {
            return self.fail(device_status, NetError::BadMtu { mtu, max: MAX_MTU });
        }
        let buf_len = align64(HEADER_LEN + ETHERNET_HEADER_LEN + usize::from(mtu));
        let rx_size = match self.queue_size(RX_QUEUE, self.config.rx_queue_size) {
            Ok(size) => size,
            Err(error) => return self.fail(device_status, error),
        };
        let mut rx = Ring::new(RX_QUEUE, rx_size, buf_len);
        let tx_size = match self.queue_size(TX_QUEUE, self.config.tx_queue_size) {
            Ok(size) => size,
            Err(error) => return self.fail(device_status, error),
        };
        let tx = Ring::new(TX_QUEUE, tx_size, buf_len);
        for ring in [&rx, &tx] {
            self.place(ring);
        }
        while let Some(slot) = rx.free_slots.pop() {
            rx.post(slot, buf_len, true)?;
        }
        device_status |= status::DRIVER_OK;
        self.regs.write(regs::STATUS, device_status);
        let now = self.regs.read(regs::STATUS);
        if now & (status::DEVICE_NEEDS_RESET | status::FAILED) != 0 {
            self.regs.write(regs::STATUS, 0);
            return Err(NetError::DeviceNeedsReset { status: now });
        }
        self.info = NetDeviceInfo {
            features: accepted,
            mac,
            mtu,
            rx_queue_size: rx_size,
            tx_queue_size: tx_size,
        };
        self.link_up = link_up;
        rx.announce(&mut self.regs);
        self.queues = Some(Queues {
            rx,
            tx,
            received: VecDeque::new(),
        });
        Ok(())
    }

    /// `(mac, link up, mtu)` from the config space, for the features accepted.
    fn read_config(&mut self, accepted: u64) -> ([u8; 6], bool, u16) {
        loop {
            let generation = self.regs.read(regs::CONFIG_GENERATION);
            // Three aligned words: mac[0..4]; mac[4..6] and status; the pairs and mtu.
            let mac_low = self.regs.read(config_register(config::MAC)).to_le_bytes();
            let mac_high = self.regs.read(config_register(STATUS_WORD));
            let mtu_word = self.regs.read(config_register(MTU_WORD));
            if self.regs.read(regs::CONFIG_GENERATION) != generation {
                continue;
            }
            let mac = if accepted & VIRTIO_NET_F_MAC != 0 {
                let high = mac_high.to_le_bytes();
                [
                    mac_low[0], mac_low[1], mac_low[2], mac_low[3], high[0], high[1],
                ]
            } else {
                self.config.fallback_mac
            };
            let link_up = accepted & VIRTIO_NET_F_STATUS == 0
                || half(mac_high, config::STATUS) & LINK_UP != 0;
            let mtu = if accepted & VIRTIO_NET_F_MTU != 0 {
                half(mtu_word, config::MTU)
            } else {
                MTU
            };
            return (mac, link_up, mtu);
        }
    }

    /// The size of queue `index`: the largest power of two up to `QueueNumMax` and `limit`.
    fn queue_size(&mut self, index: u16, limit: u16) -> Result<u16> {
        self.regs.write(regs::QUEUE_SEL, index.into());
        let ready = self.regs.read(regs::QUEUE_READY);
        let max = self.regs.read(regs::QUEUE_NUM_MAX);
        let limit = max.min(limit.min(MAX_QUEUE_SIZE).into());
        if ready != 0 || limit == 0 {
            return Err(NetError::QueueUnavailable {
                queue: index,
                max,
                ready,
            });
        }
        // `limit <= 256` fits a u16.
        Ok(1u16 << (31 - limit.leading_zeros()))
    }

    /// Tells the device where `ring`'s areas are, and enables the queue.
    fn place(&mut self, ring: &Ring) {
        let layout = ring.queue.layout();
        let mapping = ring.block.mapping();
        self.regs.write(regs::QUEUE_SEL, ring.index.into());
        self.regs.write(regs::QUEUE_NUM, ring.size().into());
        for (register, offset) in [
            (regs::QUEUE_DESC_LOW, layout.desc),
            (regs::QUEUE_DRIVER_LOW, layout.avail),
            (regs::QUEUE_DEVICE_LOW, layout.used),
        ] {
            let gpa = mapping.gpa(offset);
            self.regs.write(register, gpa as u32);
            self.regs.write(register + 4, (gpa >> 32) as u32);
        }
        self.regs.write(regs::QUEUE_READY, 1);
    }

    /// Resets the device after a WAIT read of `0xFFFF_FFFF` or a broken ring: frames in
    /// flight are lost, and the next use sets it up again.
    fn reset(&mut self, why: &'static str) -> NetError {
        self.regs.write(regs::STATUS, 0);
        // The device stops using the rings on reset; only now may their memory go.
        if let Some(queues) = self.queues.take() {
            fold_counters(&mut self.stats, &queues.rx.counters, &queues.tx.counters);
        }
        self.stats.resets += 1;
        NetError::DeviceReset(why)
    }

    /// Sets the device up again if it was reset.
    pub fn ensure_live(&mut self) -> Result<()> {
        if self.queues.is_none() {
            self.setup()?;
        }
        Ok(())
    }

    /// Reaps both used rings: received frames are queued for the stack, transmit buffers
    /// freed. A broken ring resets the device.
    fn reap(&mut self) -> Result<()> {
        let Some(queues) = self.queues.as_mut() else {
            return Ok(());
        };
        let result = queues.rx.reap().and_then(|()| queues.tx.reap());
        if let Err(NetError::DeviceReset(why)) = result {
            return Err(self.reset(why));
        }
        queues.received.extend(queues.rx.completed.drain(..));
        let tx = &mut queues.tx;
        tx.free_slots
            .extend(tx.completed.drain(..).map(|(slot, _)| slot));
        result
    }

    /// Rings the doorbells for buffers and frames made available since the last time.
    pub fn flush(&mut self) -> Result<()> {
        self.ensure_live()?;
        if let Some(queues) = self.queues.as_mut() {
            queues.rx.announce(&mut self.regs);
            queues.tx.announce(&mut self.regs);
        }
        Ok(())
    }

    /// Tells the device how long the next [`wait`](Self::wait)s may sleep at most, in
    /// milliseconds, before a timer of the stack is due (`None`: no timer is due; the device's
    /// own timeout alone). Written into the receive queue's used ring, where the WAIT register
    /// reads it ([`nexus_ring::net::wait_hint_offset`]): a memory store, no exit.
    pub fn hint_wait(&mut self, within_ms: Option<u64>) {
        let Some(queues) = self.queues.as_ref() else {
            return;
        };
        let hint = match within_ms {
            None => 0,
            Some(ms) => ms.clamp(1, u64::from(u16::MAX)) as u16,
        };
        let rx = &queues.rx;
        let layout = rx.queue.layout();
        let offset = layout.used + nexus_ring::net::wait_hint_offset(layout.size) as usize;
        rx.block
            .mapping()
            .store_u16(offset, hint, core::sync::atomic::Ordering::Release);
    }

    /// Blocks until the device has something new — a received frame, a completed transmit —
    /// or the WAIT register's timeout passes (100 ms by default, or sooner as
    /// [`hint_wait`](Self::hint_wait) asked). Returns at once if frames
    /// are already waiting. [`NetError::DeviceReset`] if the device is not live or needs a
    /// reset (it was reset; the next use sets it up again).
    pub fn wait(&mut self) -> Result<()> {
        self.flush()?;
        self.reap()?;
        if self.pending_frames() > 0 {
            return Ok(());
        }
        self.stats.wait_reads += 1;
        let value = self.regs.read(config_register(config::WAIT));
        if value == contract::WAIT_NOT_LIVE {
            return Err(self.reset("the WAIT register read 0xFFFF_FFFF"));
        }
        self.reap()
    }

    /// The next received frame, checked: `(slot, frame length)`. Buffers that fail the
    /// checks are reposted at once.
    fn next_frame(&mut self) -> Option<(u16, usize)> {
        if self.reap().is_err() {
            return None;
        }
        let checks_tcp = self.info.rx_checksum_offload();
        let queues = self.queues.as_mut()?;
        while let Some((slot, used_len)) = queues.received.pop_front() {
            let used = used_len as usize;
            let ok = used >= HEADER_LEN + ETHERNET_HEADER_LEN && used <= queues.rx.buf_len;
            let bytes = queues.rx.buffer(slot, used);
            let good = ok
                && match NetHeader::parse(bytes) {
                    Some(header) if checks_tcp => {
                        let trusted = header.flags & (HDR_F_NEEDS_CSUM | HDR_F_DATA_VALID) != 0;
                        trusted || tcp_checksum_ok(&bytes[HEADER_LEN..])
                    }
                    Some(_) => true,
                    None => false,
                };
            if good {
                return Some((slot, used - HEADER_LEN));
            }
            queues.rx.counters.dropped += 1;
            if ok {
                queues.rx.counters.checksums += 1;
            }
            let buf_len = queues.rx.buf_len;
            if queues.rx.post(slot, buf_len, true).is_err() {
                return None;
            }
        }
        None
    }

    /// A free transmit slot, reaping completions if none is free; `None` when every buffer
    /// is in flight (the doorbell is rung so the device gets on with them).
    fn free_tx_slot(&mut self) -> Option<u16> {
        let has_free = |this: &Self| {
            this.queues
                .as_ref()
                .is_some_and(|q| !q.tx.free_slots.is_empty())
        };
        if !has_free(self) {
            let _ = self.reap();
        }
        if !has_free(self) {
            if let Some(queues) = self.queues.as_mut() {
                queues.tx.announce(&mut self.regs);
            }
            return None;
        }
        self.queues.as_ref()?.tx.free_slots.last().copied()
    }
}

impl<R: Registers> Drop for VirtioNet<R> {
    fn drop(&mut self) {
        // The device must stop using the rings and buffers before their memory is freed.
        self.regs.write(regs::STATUS, 0);
    }
}

/// A received frame, handed to the stack; its buffer is reposted when consumed.
#[derive(Debug)]
pub struct NetRxToken<'a> {
    rx: &'a mut Ring,
    slot: u16,
    len: usize,
}

impl smoltcp::phy::RxToken for NetRxToken<'_> {
    fn consume<T, F>(self, f: F) -> T
    where
        F: FnOnce(&[u8]) -> T,
    {
        let result = f(&self.rx.buffer(self.slot, HEADER_LEN + self.len)[HEADER_LEN..]);
        self.rx.counters.frames += 1;
        self.rx.counters.bytes += self.len as u64;
        let buf_len = self.rx.buf_len;
        // Cannot fail: the slot's descriptor was freed when it was reaped.
        let _ = self.rx.post(self.slot, buf_len, true);
        result
    }
}

/// A frame to transmit, in a free transmit buffer.
#[derive(Debug)]
pub struct NetTxToken<'a, R> {
    tx: &'a mut Ring,
    regs: &'a mut R,
    csum_offload: bool,
}

impl<R: Registers> smoltcp::phy::TxToken for NetTxToken<'_, R> {
    fn consume<T, F>(self, len: usize, f: F) -> T
    where
        F: FnOnce(&mut [u8]) -> T,
    {
        let total = HEADER_LEN + len;
        let slot = match self.tx.free_slots.pop() {
            Some(slot) if total <= self.tx.buf_len => slot,
            other => {
                // The stack never builds frames over the MTU it was given, and the device
                // only hands out tokens with a free slot; stay correct anyway.
                if let Some(slot) = other {
                    self.tx.free_slots.push(slot);
                }
                self.tx.counters.dropped += 1;
                let mut scratch = vec![0u8; len];
                return f(&mut scratch);
            }
        };
        let buffer = self.tx.buffer_mut(slot, total);
        let (header_bytes, frame) = buffer.split_at_mut(HEADER_LEN);
        let result = f(frame);
        let mut header = NetHeader::default();
        let mut offloaded = false;
        if self.csum_offload {
            if let Some((start, offset)) = prepare_tcp_checksum_offload(frame) {
                header.flags = HDR_F_NEEDS_CSUM;
                header.csum_start = start;
                header.csum_offset = offset;
                offloaded = true;
            }
        }
        header_bytes.copy_from_slice(&header.to_bytes());
        if self.tx.post(slot, total, false).is_err() {
            self.tx.free_slots.push(slot);
            self.tx.counters.dropped += 1;
            return result;
        }
        let counters = &mut self.tx.counters;
        counters.frames += 1;
        counters.bytes += len as u64;
        counters.checksums += u64::from(offloaded);
        if self.tx.unannounced >= TX_KICK_BATCH {
            self.tx.announce(self.regs);
        }
        result
    }
}

impl<R: Registers> smoltcp::phy::Device for VirtioNet<R> {
    type RxToken<'a>
        = NetRxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = NetTxToken<'a, R>
    where
        Self: 'a;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // A reply may be sent for the frame: only hand it out with a transmit buffer free.
        self.free_tx_slot()?;
        let (slot, len) = self.next_frame()?;
        let csum_offload = self.info.tx_checksum_offload();
        let queues = self.queues.as_mut()?;
        Some((
            NetRxToken {
                rx: &mut queues.rx,
                slot,
                len,
            },
            NetTxToken {
                tx: &mut queues.tx,
                regs: &mut self.regs,
                csum_offload,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        self.free_tx_slot()?;
        let csum_offload = self.info.tx_checksum_offload();
        let queues = self.queues.as_mut()?;
        Some(NetTxToken {
            tx: &mut queues.tx,
            regs: &mut self.regs,
            csum_offload,
        })
    }

    fn capabilities(&self) -> smoltcp::phy::DeviceCapabilities {
        use smoltcp::phy::{Checksum, DeviceCapabilities, Medium};
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ETHERNET_HEADER_LEN + usize::from(self.info.mtu);
        caps.checksum.tcp = match (
            self.info.tx_checksum_offload(),
            self.info.rx_checksum_offload(),
        ) {
            (true, true) => Checksum::None,
            (true, false) => Checksum::Rx,
            (false, true) => Checksum::Tx,
            (false, false) => Checksum::Both,
        };
        caps
    }
}

/// The internet checksum's one's-complement sum of `data` added to `sum` (not folded).
pub(crate) fn sum_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

/// Folds a 32-bit sum to 16 bits (one's complement addition).
pub(crate) fn fold(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// Where the TCP segment of an unfragmented IPv4 Ethernet frame is:
/// `(ip header offset, tcp offset, tcp length, pseudo-header sum)`.
fn tcp_in_frame(frame: &[u8]) -> Option<(usize, usize, usize, u32)> {
    const IPV4: [u8; 2] = [0x08, 0x00];
    const TCP: u8 = 6;
    let ip = ETHERNET_HEADER_LEN;
    if frame.get(12..14)? != IPV4 {
        return None;
    }
    let version_ihl = *frame.get(ip)?;
    let ihl = usize::from(version_ihl & 0x0F) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let header = frame.get(ip..ip + ihl)?;
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let fragment = u16::from_be_bytes([header[6], header[7]]);
    // More fragments, or a fragment offset: not a whole segment.
    if header[9] != TCP || fragment & 0x3FFF != 0 || total_len < ihl {
        return None;
    }
    let tcp = ip + ihl;
    let tcp_len = total_len - ihl;
    frame.get(tcp..tcp + tcp_len)?;
    let mut pseudo = sum_words(0, &header[12..20]);
    pseudo += u32::from(TCP);
    pseudo += tcp_len as u32;
    Some((ip, tcp, tcp_len, pseudo))
}

/// For `NEEDS_CSUM`: puts the pseudo-header sum in a TCP segment's checksum field and
/// returns `(csum_start, csum_offset)`; `None` for anything but an unfragmented IPv4 TCP
/// segment (whose checksum the stack then computed itself: it only leaves TCP's out).
fn prepare_tcp_checksum_offload(frame: &mut [u8]) -> Option<(u16, u16)> {
    let (_, tcp, _, pseudo) = tcp_in_frame(frame)?;
    let field = frame.get_mut(tcp + 16..tcp + 18)?;
    field.copy_from_slice(&fold(pseudo).to_be_bytes());
    Some((u16::try_from(tcp).ok()?, 16))
}

/// Whether the frame's TCP checksum is right (true for anything that is not IPv4 TCP: the
/// stack checks those itself).
fn tcp_checksum_ok(frame: &[u8]) -> bool {
    match tcp_in_frame(frame) {
        None => true,
        Some((_, tcp, tcp_len, pseudo)) => {
            fold(sum_words(pseudo, &frame[tcp..tcp + tcp_len])) == 0xFFFF
        }
    }
}

/// Adds a queue pair's counters to the driver's.
fn fold_counters(stats: &mut NetStats, rx: &RingCounters, tx: &RingCounters) {
    stats.rx_frames += rx.frames;
    stats.rx_bytes += rx.bytes;
    stats.rx_dropped += rx.dropped;
    stats.rx_bad_checksum += rx.checksums;
    stats.tx_frames += tx.frames;
    stats.tx_bytes += tx.bytes;
    stats.tx_dropped += tx.dropped;
    stats.tx_csum_offloaded += tx.checksums;
    stats.notifies += rx.notifies + tx.notifies;
}
