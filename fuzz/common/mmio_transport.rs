// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The `mmio_transport` harness: a byte format for a mock device's set-up and a sequence of
//! register accesses, the mock device, and the run that checks the oracles after every step.
//! Shared by the fuzz target and the seed-corpus generator (`examples/gen_mmio_corpus.rs`).
//!
//! Input format (all integers little endian):
//!
//! ```text
//! set-up, 12 bytes:
//!   0       queue count - 1 (mod 3)
//!   1..7    QueueNumMax of queues 0, 1, 2 (u16 each; any value, 0 and non-powers of two too)
//!   7       flags: bit 0 refuse activation; bits 1-3 refuse QueueReady of queue 0-2;
//!           bit 4 do not offer VIRTIO_F_VERSION_1
//!   8..12   the low 32 offered feature bits (u32)
//! then steps, 11 bytes each:
//!   0       op: bits 0-1 kind (0 read, 1 write, 2 save and restore the transport, 3 change
//!           the mock's refusals to the value's low byte, as set-up byte 7); bits 2-3 width
//!           (1, 2, 4, 8 bytes); bit 4 the offset indexes the list of known registers
//!   1..3    offset (u16)
//!   3..11   value (u64; a write writes its first `width` bytes)
//! ```

use nexus_kvm::virtio_mmio::{
    MAGIC, MmioTransport, MmioTransportState, QueueConfig, VERSION, VIRTIO_F_VERSION_1,
    VirtioDevice, regs, status,
};
use nexus_kvm::{BusAction, BusDevice};

/// Size of the set-up block.
pub const SETUP_LEN: usize = 12;
/// Size of one step.
pub const STEP_LEN: usize = 11;
/// Bytes of the mock's configuration space.
pub const CONFIG_LEN: usize = 64;
/// Most steps run from one input.
pub const MAX_STEPS: usize = 512;

/// Where the configuration space starts, as a bus offset.
const CONFIG: u64 = regs::CONFIG as u64;

/// Every register of the map, for steps that pick one by index.
pub const KNOWN_REGS: &[u32] = &[
    regs::MAGIC_VALUE,
    regs::VERSION,
    regs::DEVICE_ID,
    regs::VENDOR_ID,
    regs::DEVICE_FEATURES,
    regs::DEVICE_FEATURES_SEL,
    regs::DRIVER_FEATURES,
    regs::DRIVER_FEATURES_SEL,
    regs::QUEUE_SEL,
    regs::QUEUE_NUM_MAX,
    regs::QUEUE_NUM,
    regs::QUEUE_READY,
    regs::QUEUE_NOTIFY,
    regs::INTERRUPT_STATUS,
    regs::INTERRUPT_ACK,
    regs::STATUS,
    regs::QUEUE_DESC_LOW,
    regs::QUEUE_DESC_HIGH,
    regs::QUEUE_DRIVER_LOW,
    regs::QUEUE_DRIVER_HIGH,
    regs::QUEUE_DEVICE_LOW,
    regs::QUEUE_DEVICE_HIGH,
    regs::SHM_SEL,
    regs::SHM_LEN_LOW,
    regs::SHM_LEN_HIGH,
    regs::SHM_BASE_LOW,
    regs::SHM_BASE_HIGH,
    regs::CONFIG_GENERATION,
    regs::CONFIG,
    regs::CONFIG + 4,
];

/// The mock device's set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// QueueNumMax of each queue (1 to 3 queues).
    pub maxima: [u16; 3],
    /// How many of `maxima` are queues.
    pub queues: usize,
    /// Refusals and offers (set-up byte 7).
    pub flags: u8,
    /// The low 32 offered feature bits.
    pub features_low: u32,
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A driver read.
    Read,
    /// A driver write.
    Write,
    /// `state()` then `from_state()`: go on with the restored transport.
    SaveRestore,
    /// Change the mock's refusals.
    Refusals,
}

/// One step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// What it does.
    pub kind: Kind,
    /// Access width in bytes: 1, 2, 4 or 8.
    pub width: usize,
    /// Offset in the register block.
    pub offset: u64,
    /// Value written (its first `width` bytes), or the new refusal flags.
    pub value: u64,
}

/// A decoded input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The mock device's set-up.
    pub setup: Setup,
    /// The accesses.
    pub steps: Vec<Step>,
}

impl Input {
    /// Decodes an input; `None` if it is shorter than the set-up. Trailing bytes that do not
    /// make a whole step are ignored, as are steps past [`MAX_STEPS`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (setup, rest) = bytes.split_at_checked(SETUP_LEN)?;
        let u16_at = |i: usize| u16::from_le_bytes([setup[i], setup[i + 1]]);
        let setup = Setup {
            queues: usize::from(setup[0] % 3) + 1,
            maxima: [u16_at(1), u16_at(3), u16_at(5)],
            flags: setup[7],
            features_low: u32::from_le_bytes(setup[8..12].try_into().unwrap()),
        };
        let steps = rest
            .chunks_exact(STEP_LEN)
            .take(MAX_STEPS)
            .map(|s| {
                let op = s[0];
                let raw_offset = u16::from_le_bytes([s[1], s[2]]);
                let offset = if op & 0x10 != 0 {
                    u64::from(KNOWN_REGS[usize::from(raw_offset) % KNOWN_REGS.len()])
                } else {
                    u64::from(raw_offset)
                };
                Step {
                    kind: [Kind::Read, Kind::Write, Kind::SaveRestore, Kind::Refusals]
                        [usize::from(op & 3)],
                    width: [1, 2, 4, 8][usize::from((op >> 2) & 3)],
                    offset,
                    value: u64::from_le_bytes(s[3..11].try_into().unwrap()),
                }
            })
            .collect();
        Some(Input { setup, steps })
    }

    /// Encodes an input as [`Input::from_bytes`] reads it (offsets as raw offsets).
    pub fn to_bytes(&self) -> Vec<u8> {
        let s = &self.setup;
        let mut out = vec![(s.queues - 1) as u8];
        for m in s.maxima {
            out.extend_from_slice(&m.to_le_bytes());
        }
        out.push(s.flags);
        out.extend_from_slice(&s.features_low.to_le_bytes());
        for step in &self.steps {
            let kind = match step.kind {
                Kind::Read => 0,
                Kind::Write => 1,
                Kind::SaveRestore => 2,
                Kind::Refusals => 3,
            };
            let width = match step.width {
                1 => 0,
                2 => 1,
                4 => 2,
                _ => 3,
            };
            out.push(kind | width << 2);
            out.extend_from_slice(&(step.offset as u16).to_le_bytes());
            out.extend_from_slice(&step.value.to_le_bytes());
        }
        out
    }
}

/// The mock device: records what the transport asks of it and checks, when it is asked,
/// what the transport promises (panicking on a broken promise).
#[derive(Debug, Clone)]
pub struct Mock {
    features: u64,
    maxima: Vec<u16>,
    config: [u8; CONFIG_LEN],
    refuse_activate: bool,
    refuse_queue: u8,
    /// The configuration each queue had when `validate_queue` last accepted it (as ready).
    accepted: Vec<Option<QueueConfig>>,
    /// Activated and not reset since.
    pub active: bool,
    /// Successful activations.
    pub activations: u64,
    /// Refused activations.
    pub activation_failures: u64,
    /// Resets.
    pub resets: u64,
    /// The last configuration-space access: offset and length.
    pub last_config_access: Option<(u64, usize)>,
}

impl Mock {
    /// A mock set up as `setup` says.
    pub fn new(setup: &Setup) -> Self {
        let mut features = u64::from(setup.features_low);
        if setup.flags & 0x10 == 0 {
            features |= VIRTIO_F_VERSION_1;
        }
        let maxima = setup.maxima[..setup.queues].to_vec();
        let mut mock = Mock {
            features,
            accepted: vec![None; maxima.len()],
            maxima,
            config: [0; CONFIG_LEN],
            refuse_activate: false,
            refuse_queue: 0,
            active: false,
            activations: 0,
            activation_failures: 0,
            resets: 0,
            last_config_access: None,
        };
        mock.set_refusals(setup.flags);
        for (i, b) in mock.config.iter_mut().enumerate() {
            *b = i as u8;
        }
        mock
    }

    /// Sets the refusals from flags as set-up byte 7 has them.
    pub fn set_refusals(&mut self, flags: u8) {
        self.refuse_activate = flags & 1 != 0;
        self.refuse_queue = (flags >> 1) & 7;
    }

    /// The features offered.
    pub fn features(&self) -> u64 {
        self.features
    }
}

/// Why the mock refused.
#[derive(Debug)]
pub struct Refused(&'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the mock refuses {}", self.0)
    }
}

impl std::error::Error for Refused {}

impl VirtioDevice for Mock {
    type Error = Refused;

    fn device_type(&self) -> u32 {
        0x4e58
    }

    fn vendor_id(&self) -> u32 {
        0x5355_584e
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.maxima
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        self.last_config_access = Some((offset, data.len()));
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok());
            *b = at.and_then(|o| self.config.get(o)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.last_config_access = Some((offset, data.len()));
        for (i, b) in data.iter().enumerate() {
            let at = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok());
            if let Some(slot) = at.and_then(|o| self.config.get_mut(o)) {
                *slot = *b;
            }
        }
    }

    fn validate_queue(&mut self, index: usize, queue: &QueueConfig) -> Result<(), Refused> {
        assert!(index < self.maxima.len(), "validate_queue of queue {index}");
        assert_eq!(
            queue.max_size, self.maxima[index],
            "queue {index}'s maximum"
        );
        assert!(
            queue.check().is_ok(),
            "queue {index} reached validate_queue without passing QueueConfig::check: {queue:?}"
        );
        assert!(!self.active, "validate_queue on a live device");
        if self.refuse_queue & (1 << index) != 0 {
            return Err(Refused("the queue"));
        }
        self.accepted[index] = Some(QueueConfig {
            ready: true,
            ..*queue
        });
        Ok(())
    }

    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), Refused> {
        assert!(!self.active, "activated twice without a reset");
        assert!(
            features & VIRTIO_F_VERSION_1 != 0,
            "activated without VIRTIO_F_VERSION_1: {features:#x}"
        );
        assert_eq!(
            features & !self.features,
            0,
            "activated with features {features:#x} beyond those offered {:#x}",
            self.features
        );
        assert_eq!(
            queues.len(),
            self.maxima.len(),
            "activated with the wrong queue count"
        );
        for (i, q) in queues.iter().enumerate() {
            assert_eq!(q.max_size, self.maxima[i], "queue {i}'s maximum");
            if q.ready {
                assert!(
                    q.check().is_ok(),
                    "activated with a bad ready queue {i}: {q:?}"
                );
                assert_eq!(
                    Some(*q),
                    self.accepted[i],
                    "ready queue {i} differs from what validate_queue accepted"
                );
            }
        }
        if self.refuse_activate {
            self.activation_failures += 1;
            return Err(Refused("activation"));
        }
        self.active = true;
        self.activations += 1;
        Ok(())
    }

    fn reset(&mut self) {
        self.active = false;
        self.accepted.iter_mut().for_each(|a| *a = None);
        self.resets += 1;
    }

    fn queue_notify(&mut self, _value: u32) {
        assert!(
            self.active,
            "QueueNotify delivered to a device that is not live"
        );
    }

    fn interrupt_status(&self) -> u32 {
        1
    }

    fn config_generation(&self) -> u32 {
        3
    }
}

/// What the mock counted, to see what a step made it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    active: bool,
    activations: u64,
    activation_failures: u64,
    resets: u64,
}

fn counts(m: &Mock) -> Counts {
    Counts {
        active: m.active,
        activations: m.activations,
        activation_failures: m.activation_failures,
        resets: m.resets,
    }
}

/// Saves and restores `t` (into a copy of its device): must succeed whatever the driver did,
/// and give back the same state.
fn save_restore(t: &MmioTransport<Mock>) -> MmioTransport<Mock> {
    let saved = t.state();
    let back = MmioTransport::from_state(t.device().clone(), &saved)
        .unwrap_or_else(|e| panic!("a reachable state does not restore ({e}): {saved:?}"));
    assert_eq!(back.state(), saved, "state() after from_state()");
    assert_eq!(back.status(), t.status());
    assert_eq!(back.is_active(), t.is_active());
    back
}

/// The invariants of the status register that hold in every state.
fn check_status(t: &MmioTransport<Mock>, state: &MmioTransportState) {
    let st = state.status;
    let has = |bit: u32| st & bit != 0;
    let defined = status::ACKNOWLEDGE
        | status::DRIVER
        | status::FEATURES_OK
        | status::DRIVER_OK
        | status::DEVICE_NEEDS_RESET
        | status::FAILED;
    assert_eq!(st & !defined, 0, "undefined status bits: {st:#x}");
    assert!(
        !has(status::DRIVER) || has(status::ACKNOWLEDGE),
        "DRIVER without ACKNOWLEDGE: {st:#x}"
    );
    assert!(
        !has(status::FEATURES_OK) || has(status::DRIVER),
        "FEATURES_OK without DRIVER: {st:#x}"
    );
    assert!(
        !has(status::DRIVER_OK) || has(status::FEATURES_OK),
        "DRIVER_OK without FEATURES_OK: {st:#x}"
    );
    if has(status::FEATURES_OK) {
        let f = state.driver_features;
        assert!(
            f & VIRTIO_F_VERSION_1 != 0 && f & !t.device().features() == 0,
            "FEATURES_OK with driver features {f:#x} (offered {:#x})",
            t.device().features()
        );
    }
    let live = has(status::DRIVER_OK) && !has(status::DEVICE_NEEDS_RESET) && !has(status::FAILED);
    assert_eq!(t.is_active(), live);
    if live {
        assert!(
            t.device().active,
            "live ({st:#x}) but the device was never activated"
        );
    }
    if t.device().active {
        assert!(
            has(status::DRIVER_OK),
            "the device is active but DRIVER_OK is clear: {st:#x}"
        );
    }
    for (q, max) in state.queues.iter().zip(t.device().queue_max_sizes()) {
        assert_eq!(q.max_size, *max);
        if q.ready {
            assert!(q.check().is_ok(), "a ready queue fails its check: {q:?}");
        }
    }
}

fn is_register(step: &Step, offset: u32) -> bool {
    step.offset == u64::from(offset) && step.width == 4
}

/// What a run went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Every status bit that was set at some point.
    pub status_seen: u32,
    /// Successful activations.
    pub activations: u64,
    /// Refused activations.
    pub activation_failures: u64,
    /// Resets.
    pub resets: u64,
}

/// Runs `input`, checking every oracle after every step.
pub fn run(input: &Input) -> Outcome {
    let mock = Mock::new(&input.setup);
    let mut t = MmioTransport::new(mock);
    let fresh = t.state();
    check_status(&t, &fresh);
    let mut status_seen = 0;
    for step in &input.steps {
        let before = t.state();
        let counts_before = counts(t.device());
        match step.kind {
            Kind::Read => read(&mut t, step, &before),
            Kind::Write => {
                let bytes = step.value.to_le_bytes();
                assert_eq!(
                    t.write(step.offset, &bytes[..step.width]),
                    BusAction::Continue
                );
            }
            Kind::SaveRestore => t = save_restore(&t),
            Kind::Refusals => t.device_mut().set_refusals(step.value as u8),
        }
        let after = t.state();
        let counts_after = counts(t.device());
        check_status(&t, &after);
        check_step(
            step,
            &before,
            &after,
            counts_before,
            counts_after,
            &fresh,
            &t,
        );
        // Saving and restoring works at any point.
        save_restore(&t);
        status_seen |= after.status;
    }
    let m = t.device();
    Outcome {
        status_seen,
        activations: m.activations,
        activation_failures: m.activation_failures,
        resets: m.resets,
    }
}

fn read(t: &mut MmioTransport<Mock>, step: &Step, before: &MmioTransportState) {
    let mut data = [0xa5u8; 8];
    let data = &mut data[..step.width];
    t.read(step.offset, data);
    if step.offset >= CONFIG {
        assert_eq!(
            t.device().last_config_access,
            Some((step.offset - CONFIG, step.width)),
            "configuration read forwarded wrongly"
        );
        return;
    }
    if step.width != 4 || !step.offset.is_multiple_of(4) {
        assert!(
            data.iter().all(|&b| b == 0),
            "a {}-byte register read gave {data:?}",
            step.width
        );
        return;
    }
    let value = u32::from_le_bytes(data[..4].try_into().unwrap());
    // Below CONFIG: the offset fits the register map's u32.
    let expected = match step.offset as u32 {
        regs::MAGIC_VALUE => Some(MAGIC),
        regs::VERSION => Some(VERSION),
        regs::STATUS => Some(before.status),
        regs::QUEUE_NUM_MAX => Some(
            before
                .queues
                .get(before.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size)),
        ),
        regs::QUEUE_READY => Some(
            before
                .queues
                .get(before.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready)),
        ),
        regs::DEVICE_FEATURES => Some(match before.device_features_sel {
            0 => t.device().features() as u32,
            1 => (t.device().features() >> 32) as u32,
            _ => 0,
        }),
        _ => None,
    };
    if let Some(expected) = expected {
        assert_eq!(value, expected, "read of register {:#x}", step.offset);
    }
}

fn check_step(
    step: &Step,
    before: &MmioTransportState,
    after: &MmioTransportState,
    was: Counts,
    now: Counts,
    fresh: &MmioTransportState,
    t: &MmioTransport<Mock>,
) {
    let write = step.kind == Kind::Write;
    let register_write =
        write && step.offset < CONFIG && step.width == 4 && step.offset.is_multiple_of(4);
    let value = step.value as u32;
    let status_write = register_write && is_register(step, regs::STATUS);
    let ready_write = register_write && is_register(step, regs::QUEUE_READY);

    if status_write && value == 0 {
        assert_eq!(after, fresh, "a reset must clear everything");
        assert_eq!(now.resets, was.resets + 1, "a reset must reset the device");
        assert!(!now.active);
        return;
    }
    assert_eq!(
        now.resets, was.resets,
        "a device reset without a reset of the status"
    );
    if !register_write {
        // Reads, narrow or misaligned accesses, configuration space, save/restore and the
        // mock's refusals change nothing of the transport.
        assert_eq!(after, before, "{step:?} changed the transport's state");
        assert_eq!(
            (now.activations, now.activation_failures),
            (was.activations, was.activation_failures)
        );
        return;
    }
    let (old, new) = (before.status, after.status);
    assert_eq!(
        old & !new,
        0,
        "status bits cleared without a reset: {old:#x} -> {new:#x}"
    );
    let added = new & !old;
    if status_write {
        assert_eq!(
            added & !(value | status::DEVICE_NEEDS_RESET),
            0,
            "status {old:#x} -> {new:#x} on a write of {value:#x}"
        );
        if added & status::DEVICE_NEEDS_RESET != 0 {
            assert_eq!(
                now.activation_failures,
                was.activation_failures + 1,
                "DEVICE_NEEDS_RESET set by a status write without a failed activation"
            );
        }
        let attempted = (now.activations - was.activations)
            + (now.activation_failures - was.activation_failures);
        let should = added & status::DRIVER_OK != 0 && new & status::FAILED == 0;
        assert_eq!(
            attempted,
            u64::from(should),
            "activation attempts on {old:#x} -> {new:#x}"
        );
    } else if ready_write {
        assert_eq!(
            added & !status::DEVICE_NEEDS_RESET,
            0,
            "QueueReady set status bits {added:#x}"
        );
    } else {
        assert_eq!(added, 0, "a write to {:#x} changed the status", step.offset);
    }
    if !status_write {
        assert_eq!(
            (now.activations, now.activation_failures),
            (was.activations, was.activation_failures)
        );
    }
    for (i, (b, a)) in before.queues.iter().zip(&after.queues).enumerate() {
        if b.ready && a.ready {
            assert_eq!(a, b, "ready queue {i} changed");
        }
        if !b.ready && a.ready {
            assert!(
                ready_write && before.queue_sel as usize == i,
                "queue {i} became ready on {step:?}"
            );
            assert!(a.check().is_ok());
            assert!(
                old & (status::DRIVER_OK | status::FAILED | status::DEVICE_NEEDS_RESET) == 0
                    && old & status::FEATURES_OK != 0,
                "queue {i} became ready in status {old:#x}"
            );
        }
        if b.ready && !a.ready {
            assert!(
                ready_write && value == 0 && !t.is_active(),
                "queue {i} un-readied by {step:?}"
            );
        }
    }
}
