//! Shared by the integration tests and the benchmark: hand-assembled micro-guests, a console
//! that captures output, and helpers to boot, snapshot and restore them.

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_kvm::layout::{MIN_RAM_SIZE, WINDOW_START};
use nexus_kvm::micro::{MicroVm, MicroVmConfig};
use nexus_kvm::serial::Console;
use nexus_kvm::{BusAction, BusDevice, BusKind, MemoryConfig, Vcpu, VcpuStop, Vm};
use nexus_snapshot::devices::attach_micro_devices;
use nexus_snapshot::{
    DeviceState, FaultStats, PrefetchReport, RestoreMode, RestoreOptions, RestoreStats, RestoredVm,
    SaveReport, Snapshot, SnapshotFiles,
};
use vm_memory::{Bytes, GuestAddress};

/// Where the guests read their parameters (u64 each).
pub const PARAMS: u64 = 0x20_1000;
/// Where the guests' code starts.
pub const ENTRY: u64 = 0x20_0000;
/// Guest buffer base used by the tests.
pub const BUFFER: u64 = 0x40_0000;

/// The counting guest. Parameters: `[0]` iterations, `[8]` buffer base, `[16]` buffer mask.
///
/// ```text
///   mov dx, 0x3f8 ; out "go\n"
///   mov r8, [P]; mov rbx, [P+8]; mov r9, [P+16]
///   xor eax, eax; xor ecx, ecx; pxor xmm1, xmm1
/// 1: mov rdx, rcx; shl rdx, 3; and rdx, r9      ; word k mod buffer
///   mov rsi, [rbx+rdx]                          ; read it
///   imul rax, rax, 0x5851f42d; add rax, rsi; add rax, rcx
///   mov [rbx+rdx], rax                          ; write it back
///   movq xmm2, rsi; paddq xmm1, xmm2            ; an SSE accumulator too
///   inc rcx; cmp rcx, r8; jne 1b
///   movq rsi, xmm1; xor rax, rsi; fold to 32 bits in eax
///   out "ok\n"; mov dx, 0xf4; out dx, eax       ; exit with the result
/// ```
pub const COUNTER_CODE: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x67, 0xee, 0xb0, 0x6f, 0xee, 0xb0, 0x0a, 0xee, 0x4c, 0x8b, 0x04,
    0x25, 0x00, 0x10, 0x20, 0x00, 0x48, 0x8b, 0x1c, 0x25, 0x08, 0x10, 0x20, 0x00, 0x4c, 0x8b, 0x0c,
    0x25, 0x10, 0x10, 0x20, 0x00, 0x31, 0xc0, 0x31, 0xc9, 0x66, 0x0f, 0xef, 0xc9, 0x48, 0x89, 0xca,
    0x48, 0xc1, 0xe2, 0x03, 0x4c, 0x21, 0xca, 0x48, 0x8b, 0x34, 0x13, 0x48, 0x69, 0xc0, 0x2d, 0xf4,
    0x51, 0x58, 0x48, 0x01, 0xf0, 0x48, 0x01, 0xc8, 0x48, 0x89, 0x04, 0x13, 0x66, 0x48, 0x0f, 0x6e,
    0xd6, 0x66, 0x0f, 0xd4, 0xca, 0x48, 0xff, 0xc1, 0x4c, 0x39, 0xc1, 0x75, 0xd0, 0x66, 0x48, 0x0f,
    0x7e, 0xce, 0x48, 0x31, 0xf0, 0x48, 0x89, 0xc6, 0x48, 0xc1, 0xee, 0x20, 0x31, 0xf0, 0x89, 0xc7,
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x6f, 0xee, 0xb0, 0x6b, 0xee, 0xb0, 0x0a, 0xee, 0x89, 0xf8, 0x66,
    0xba, 0xf4, 0x00, 0xef, 0xeb, 0xfe,
];

/// The pausing guest. Parameters: `[8]` buffer base, `[24]` bytes to dirty, `[32]` stride.
///
/// ```text
///   mov rbx, [P+8]; mov r8, [P+24]; xor ecx, ecx
/// 1: lea rax, [rcx+1]; mov [rbx+rcx], rax; add rcx, 4096; cmp rcx, r8; jb 1b
///   mov dx, 0x300; out dx, al                   ; PAUSE: the VMM snapshots here
///   mov dx, 0x301; out dx, al                   ; MARK: first instruction after restore
///   mov r9, [P+32]; xor eax, eax; xor ecx, ecx
/// 2: add rax, [rbx+rcx]; add rcx, r9; cmp rcx, r8; jb 2b   ; read every stride-th page
///   fold rax to 32 bits; mov dx, 0xf4; out dx, eax
/// ```
pub const PAUSE_CODE: &[u8] = &[
    0x48, 0x8b, 0x1c, 0x25, 0x08, 0x10, 0x20, 0x00, 0x4c, 0x8b, 0x04, 0x25, 0x18, 0x10, 0x20, 0x00,
    0x31, 0xc9, 0x48, 0x8d, 0x41, 0x01, 0x48, 0x89, 0x04, 0x0b, 0x48, 0x81, 0xc1, 0x00, 0x10, 0x00,
    0x00, 0x4c, 0x39, 0xc1, 0x72, 0xec, 0x66, 0xba, 0x00, 0x03, 0xee, 0x66, 0xba, 0x01, 0x03, 0xee,
    0x4c, 0x8b, 0x0c, 0x25, 0x20, 0x10, 0x20, 0x00, 0x31, 0xc0, 0x31, 0xc9, 0x48, 0x03, 0x04, 0x0b,
    0x4c, 0x01, 0xc9, 0x4c, 0x39, 0xc1, 0x72, 0xf4, 0x48, 0x89, 0xc6, 0x48, 0xc1, 0xee, 0x20, 0x31,
    0xf0, 0x66, 0xba, 0xf4, 0x00, 0xef, 0xeb, 0xfe,
];

/// Port of the pausing guest's PAUSE write.
pub const PAUSE_PORT: u64 = 0x300;
/// What the pause device returns as an exit code.
pub const PAUSE_CODE_EXIT: u32 = 0x5a5a_5a5a;

/// A static ELF with one RWX segment: `code` at [`ENTRY`], `params` at [`PARAMS`].
pub fn elf(code: &[u8], params: &[u64]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let mut b = vec![0u8; 0x3000];
    b[..4].copy_from_slice(&[0x7f, b'E', b'L', b'F']);
    b[4] = 2; // 64-bit
    b[5] = 1; // little endian
    b[6] = 1; // version
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&ENTRY.to_le_bytes());
    b[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes());
    b[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    b[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    b[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = &mut b[EHDR..EHDR + PHDR];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&7u32.to_le_bytes()); // RWX
    ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
    ph[16..24].copy_from_slice(&ENTRY.to_le_bytes());
    ph[24..32].copy_from_slice(&ENTRY.to_le_bytes());
    ph[32..40].copy_from_slice(&0x2000u64.to_le_bytes());
    ph[40..48].copy_from_slice(&0x2000u64.to_le_bytes());
    b[0x1000..0x1000 + code.len()].copy_from_slice(code);
    for (i, p) in params.iter().enumerate() {
        b[0x2000 + 8 * i..0x2008 + 8 * i].copy_from_slice(&p.to_le_bytes());
    }
    b
}

/// The counting guest: `iterations` over a buffer of `buffer_bytes` (a power of two).
pub fn counter_elf(iterations: u64, buffer_bytes: u64) -> Vec<u8> {
    elf(COUNTER_CODE, &[iterations, BUFFER, buffer_bytes - 8])
}

/// The pausing guest: dirties `dirty` bytes (one word per page), pauses, then reads every
/// `stride`-th byte offset (a multiple of 4096) of them.
pub fn pause_elf(dirty: u64, stride: u64) -> Vec<u8> {
    elf(PAUSE_CODE, &[0, BUFFER, 0, dirty, stride])
}

/// The exit code the pausing guest ends with.
pub fn pause_expected(dirty: u64, stride: u64) -> u32 {
    let mut sum = 0u64;
    let mut off = 0;
    while off < dirty {
        sum = sum.wrapping_add(off + 1);
        off += stride;
    }
    (sum ^ (sum >> 32)) as u32
}

/// A writer that keeps what is written.
pub use nexus_kvm::serial::ConsoleBuffer as Output;

/// The pausing guest's ports: PAUSE (`0x300`) stops the vCPU, MARK (`0x301`) records when
/// the guest got there.
#[derive(Default, Clone)]
pub struct PausePorts {
    pub mark: Arc<Mutex<Option<Instant>>>,
}

impl BusDevice for PausePorts {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, _data: &[u8]) -> BusAction {
        match offset {
            0 => BusAction::Exit(PAUSE_CODE_EXIT),
            _ => {
                *self.mark.lock().unwrap() = Some(Instant::now());
                BusAction::Continue
            }
        }
    }
}

/// A booted micro-VM split into its parts.
pub struct Booted {
    pub vm: Vm,
    pub vcpu: Vcpu,
    pub serial: Arc<Mutex<nexus_kvm::serial::SerialDevice>>,
    pub output: Output,
}

/// Boots `elf` with `ram` bytes of RAM and `window` bytes of window (with the pause ports).
pub fn boot(elf: &[u8], ram: u64, window: u64) -> Booted {
    let output = Output::default();
    let micro = MicroVm::new(
        elf,
        MicroVmConfig {
            memory: MemoryConfig {
                ram_size: ram.max(MIN_RAM_SIZE),
                window_size: window,
            },
            args: vec![],
            device: None,
            net_device: None,
            console: Console::new(output.clone()),
        },
    )
    .expect("boot the micro-guest");
    let serial = Arc::clone(micro.serial());
    let (vm, vcpu, _) = micro.into_parts();
    vm.add_device(
        BusKind::Pio,
        Arc::new(Mutex::new(PausePorts::default())),
        PAUSE_PORT,
        2,
    )
    .unwrap();
    Booted {
        vm,
        vcpu,
        serial,
        output,
    }
}

/// Runs `elf` to its end without interruption: exit code and console output.
pub fn run_uninterrupted(elf: &[u8], ram: u64) -> (u32, String) {
    let mut b = boot(elf, ram, 0);
    match b.vcpu.run().expect("the guest runs") {
        VcpuStop::Exit(code) => (code, b.output.text()),
        other => panic!("the guest stopped with {other:?}"),
    }
}

/// Saves a booted, stopped VM.
pub fn save(b: &mut Booted, files: &SnapshotFiles) -> SaveReport {
    let serial = DeviceState::save(&*b.serial.lock().unwrap());
    nexus_snapshot::save(&b.vm, std::slice::from_mut(&mut b.vcpu), &[serial], files)
        .expect("save the snapshot")
}

/// Boots the counting guest, stops it after `after`, and snapshots it into `dir`. Returns
/// the files and the console output before the snapshot.
pub fn snapshot_counter(
    elf: &[u8],
    ram: u64,
    window: u64,
    after: Duration,
    dir: &Path,
) -> (SnapshotFiles, String) {
    let b = boot(elf, ram, window);
    let Booted {
        vm,
        vcpu,
        serial,
        output,
    } = b;
    let handle = vcpu.spawn("counter".into()).unwrap();
    std::thread::sleep(after);
    let (vcpu, result) = handle.stop().unwrap();
    assert_eq!(
        result.unwrap(),
        VcpuStop::Stopped,
        "the guest must be stopped mid-computation"
    );
    if window > 0 {
        // Something in the window for the restore to bring back.
        vm.memory()
            .guest()
            .write_slice(b"window bytes", GuestAddress(WINDOW_START + 0x1000))
            .unwrap();
    }
    let mut b = Booted {
        vm,
        vcpu,
        serial,
        output: output.clone(),
    };
    let files = SnapshotFiles::in_dir(dir);
    save(&mut b, &files);
    (files, output.text())
}

/// What running a restored VM to its end gave.
#[derive(Debug)]
pub struct RunResult {
    pub code: u32,
    pub console: String,
    pub faults: FaultStats,
    pub stats: RestoreStats,
    pub first_instruction: Option<Duration>,
    pub to_exit: Duration,
    pub recorded: Option<nexus_snapshot::WorkingSetReport>,
    /// How far the background prefetch had got when the guest exited.
    pub prefetch: Option<PrefetchReport>,
    /// The restored VM, still alive (its memory can be read).
    pub restored: RestoredVm,
}

/// Restores from `snapshot` in `mode`, runs to the guest's exit, and (when `record`) writes
/// the working set.
pub fn restore_and_run(snapshot: &Snapshot, mode: RestoreMode, record: bool) -> RunResult {
    restore_and_run_with(snapshot, mode, record, false)
}

/// [`restore_and_run`]; with `wait_prefetch`, waits for the whole working set to be
/// installed before the vCPU runs (what prefetch restores did before the prefetch moved to
/// the background).
pub fn restore_and_run_with(
    snapshot: &Snapshot,
    mode: RestoreMode,
    record: bool,
    wait_prefetch: bool,
) -> RunResult {
    let start = Instant::now();
    let mut restored = snapshot
        .restore(&RestoreOptions {
            mode,
            record_working_set: record,
            vcpu: nexus_kvm::VcpuConfig { strict_io: true },
        })
        .unwrap_or_else(|e| panic!("restore ({mode:?}): {e}"));
    let output = Output::default();
    attach_micro_devices(
        &restored.vm,
        &restored.devices,
        Console::new(output.clone()),
    )
    .unwrap();
    let pause = PausePorts::default();
    restored
        .vm
        .add_device(
            BusKind::Pio,
            Arc::new(Mutex::new(pause.clone())),
            PAUSE_PORT,
            2,
        )
        .unwrap();
    if wait_prefetch {
        let report = restored.faults.as_ref().and_then(|f| f.wait_prefetch());
        assert!(report.is_some(), "{mode:?} restores do not prefetch");
    }
    let stop = restored.vcpus[0]
        .run()
        .unwrap_or_else(|e| panic!("run ({mode:?}): {e}"));
    let to_exit = start.elapsed();
    let code = match stop {
        VcpuStop::Exit(code) => code,
        other => panic!("the restored guest stopped with {other:?}"),
    };
    let first_instruction = pause.mark.lock().unwrap().map(|t| t - start);
    let prefetch = restored.faults.as_ref().and_then(|f| f.prefetch());
    let recorded = record.then(|| {
        restored
            .faults
            .as_ref()
            .unwrap()
            .write_working_set()
            .expect("write the working set")
    });
    RunResult {
        code,
        console: output.text(),
        faults: restored.fault_stats(),
        stats: restored.stats,
        first_instruction,
        to_exit,
        recorded,
        prefetch,
        restored,
    }
}
