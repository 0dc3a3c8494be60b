//! Saving a paused VM.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nexus_kvm::{Vcpu, Vm};

use crate::limits::{MAX_DEVICE_NAME_LEN, MAX_DEVICE_STATE_LEN, MAX_DEVICES, MAX_VCPUS};
use crate::memfile::{self, temp_path};
use crate::persist::{DeviceState, check_unique};
use crate::state::SnapshotState;
use crate::vcpu::VcpuState;
use crate::vm_state::VmState;
use crate::{Error, Result, SnapshotFiles};

/// What saving wrote and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveReport {
    /// The snapshot's identifier.
    pub id: u64,
    /// Size of the state file.
    pub state_file_size: u64,
    /// Apparent size of the memory file (holes included).
    pub memory_file_size: u64,
    /// Pages stored in the memory file: the pages anonymous RAM holds (those the guest
    /// touched) and the non-zero pages of the regions that were read whole.
    pub nonzero_pages: u64,
    /// Pages read to find the non-zero ones: the regions whose written pages the kernel
    /// cannot tell (file-backed ones such as the window, RAM a userfaultfd restore
    /// registered, every region on kernels without `PAGEMAP_SCAN`). Zero when only anonymous
    /// RAM was saved.
    pub pages_scanned: u64,
    /// Reading the vCPU and VM state from KVM.
    pub capture: Duration,
    /// Finding the guest's pages and writing the memory file.
    pub memory: Duration,
    /// The whole save.
    pub total: Duration,
}

fn new_id() -> u64 {
    // RandomState is seeded from the OS's randomness once per process (and differs per
    // instance); mixing in the time and pid keeps ids of different processes apart as well.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// Fails unless `vcpus` vCPUs and `devices` fit the format's bounds ([`crate::limits`]).
fn check_limits(vcpus: usize, devices: &[DeviceState]) -> Result<()> {
    let check = |what, found: usize, max: usize| {
        if found > max {
            Err(Error::LimitExceeded {
                what,
                found: found as u64,
                max: max as u64,
            })
        } else {
            Ok(())
        }
    };
    check("vCPUs", vcpus, MAX_VCPUS)?;
    check("device sections", devices.len(), MAX_DEVICES)?;
    for d in devices {
        check(
            "bytes of name in one device section",
            d.name.len(),
            MAX_DEVICE_NAME_LEN,
        )?;
        check(
            "bytes of state in one device section",
            d.data.len(),
            MAX_DEVICE_STATE_LEN,
        )?;
    }
    Ok(())
}

/// Saves a paused VM — `vm`, its stopped `vcpus` (all of them, by index) and its devices'
/// sections — to `files`: the memory file first, then the state file, each written to a
/// temporary file and renamed into place, so that a state file is only ever found next to
/// its complete memory file. An older working-set file at `files.working_set` is removed
/// (it belongs to the previous snapshot).
///
/// The vCPUs must not be running; any port or MMIO access KVM is still completing is
/// finished first ([`Vcpu::complete_pending_io`]). More vCPUs or device sections than the
/// format holds, or a longer device name or state, are refused
/// ([`Error::LimitExceeded`], [`crate::limits`]) before anything is written.
pub fn save(
    vm: &Vm,
    vcpus: &mut [Vcpu],
    devices: &[DeviceState],
    files: &SnapshotFiles,
) -> Result<SaveReport> {
    let start = Instant::now();
    let ids: Vec<u64> = vcpus.iter().map(Vcpu::id).collect();
    if ids.is_empty() || ids.iter().enumerate().any(|(i, &id)| id != i as u64) {
        return Err(Error::VcpuIds(ids));
    }
    check_limits(vcpus.len(), devices)?;
    check_unique(devices)?;
    let vcpu_states = vcpus
        .iter_mut()
        .map(|v| VcpuState::capture(v, vm.has_irqchip()))
        .collect::<Result<Vec<_>>>()?;
    let vm_state = VmState::capture(vm.fd(), vm.has_irqchip())?;
    let capture = start.elapsed();

    for path in [&files.state, &files.memory, &files.working_set] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        }
    }
    match std::fs::remove_file(&files.working_set) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io("remove the old", &files.working_set, e));
        }
        _ => {}
    }
    let t = Instant::now();
    let id = new_id();
    let (memory, _, pages_scanned) = memfile::write(&files.memory, id, vm.memory())?;
    let memory_time = t.elapsed();

    let state = SnapshotState {
        id,
        created_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64,
        creator: concat!("nexus-snapshot ", env!("CARGO_PKG_VERSION")).to_string(),
        memory,
        vm: vm_state,
        vcpus: vcpu_states,
        devices: devices.to_vec(),
    };
    let bytes = state.to_file_bytes();
    let tmp = temp_path(&files.state);
    std::fs::write(&tmp, &bytes).map_err(|e| Error::io("write", &tmp, e))?;
    memfile::move_into_place(&tmp, &files.state)?;
    let report = SaveReport {
        id,
        state_file_size: bytes.len() as u64,
        memory_file_size: state.memory.file_size,
        nonzero_pages: state.memory.nonzero_pages,
        pages_scanned,
        capture,
        memory: memory_time,
        total: start.elapsed(),
    };
    log::info!(
        "Saved snapshot {id:#018x} to {}: {} of {} pages stored, {:?}",
        files.state.display(),
        report.nonzero_pages,
        state.memory.data_pages(),
        report.total
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{MAX_DEVICE_NAME_LEN, MAX_DEVICE_STATE_LEN, MAX_DEVICES, MAX_VCPUS};

    fn device(name: &str, len: usize) -> DeviceState {
        DeviceState {
            name: name.into(),
            version: 1,
            data: vec![0; len],
        }
    }

    #[test]
    fn saving_past_a_bound_of_the_format_is_refused() {
        let exceeded = |r: Result<()>| match r {
            Err(Error::LimitExceeded { what, found, max }) => (what, found, max),
            other => panic!("expected LimitExceeded, got {other:?}"),
        };
        let at_bounds = vec![device(
            &"n".repeat(MAX_DEVICE_NAME_LEN),
            MAX_DEVICE_STATE_LEN,
        )];
        check_limits(MAX_VCPUS, &at_bounds).unwrap();
        assert_eq!(
            exceeded(check_limits(MAX_VCPUS + 1, &[])),
            ("vCPUs", 257, 256)
        );
        let many: Vec<_> = (0..=MAX_DEVICES)
            .map(|i| device(&format!("d{i}"), 0))
            .collect();
        assert_eq!(
            exceeded(check_limits(1, &many)),
            ("device sections", 65, 64)
        );
        let long_name = [device(&"n".repeat(MAX_DEVICE_NAME_LEN + 1), 0)];
        assert_eq!(exceeded(check_limits(1, &long_name)).1, 256);
        let big = [device("big", MAX_DEVICE_STATE_LEN + 1)];
        let err = check_limits(1, &big).unwrap_err();
        assert_eq!(
            err.to_string(),
            "A snapshot holds at most 65536 bytes of state in one device section; this one has 65537"
        );
    }
}
