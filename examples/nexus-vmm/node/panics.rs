//! Panics while handling one VM or invocation: the node serves every function's VMs in one
//! process, so a panic is caught where that VM's or invocation's work runs — a vCPU's run step
//! (nexus-kvm's pool and vCPU threads turn it into the vCPU's error, [`nexus_kvm::Error::RunPanicked`]),
//! an invocation's task, a VM's restore, a VM's reset after its answer — and fails that one
//! only: the invocation is answered with an error naming the panic (HTTP 500; a reset's
//! invocation has been answered already), the VM involved is discarded, never parked again,
//! and the panic is counted (`nexus_panics_total{where}`). The node's background work — the
//! keep-alive reaper, stopping the VMs it retires, publishing a snapshot — catches its
//! panics too: the reaper's next tick goes on (a panic there would otherwise end every
//! function's keep-alive for the life of the process), and the panic is counted. The
//! default panic hook has printed its message to the log (stderr) already.
//!
//! For tests only: the environment variable `NEXUS_TEST_PANIC=<where>:<function>` (read once;
//! `where` is `vcpu`, `invocation`, `reset` or `background`; the backend reads
//! `backend:<function>` itself)
//! makes the node panic in the real code path: `vcpu`, in the MMIO handling of the function's
//! VM on its vCPU thread, once an invocation is on its way to it; `invocation`, in the node's
//! handling of the function's invocation once the VM has answered; `reset`, in the reset of
//! the function's VM after each invocation (`isolation = "reset"`); `background`, in the
//! reaper when it reaps one of the function's VMs. Unset (always, outside tests), it does
//! nothing. It is not a command-line flag, so `--help` does not show it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use nexus_io::NexusIoTransport;
use nexus_kvm::{BusAction, BusDevice};

/// Where a panic was caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// On a vCPU's thread: its run (a device's exit handler).
    Vcpu,
    /// In the node's handling of an invocation (or of a VM's restore for one).
    Invocation,
    /// In a VM's reset after its invocation was answered (`isolation = "reset"`).
    Reset,
    /// In the node's background work: the keep-alive reaper, stopping the VMs it retires,
    /// publishing a snapshot.
    Background,
}

impl Site {
    /// Every site, in the order of the metric's series.
    pub const ALL: [Site; 4] = [Site::Vcpu, Site::Invocation, Site::Reset, Site::Background];

    /// The metric's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Site::Vcpu => "vcpu",
            Site::Invocation => "invocation",
            Site::Reset => "reset",
            Site::Background => "background",
        }
    }
}

/// Panics caught since the process started, by [`Site`] (its discriminant).
static COUNTS: [AtomicU64; Site::ALL.len()] = [const { AtomicU64::new(0) }; Site::ALL.len()];

/// Counts a panic caught at `site` (the process's total, read by [`count`]).
pub fn counted(site: Site) {
    COUNTS[site as usize].fetch_add(1, Ordering::Relaxed);
}

/// Panics caught at `site` since the process started.
pub fn count(site: Site) -> u64 {
    COUNTS[site as usize].load(Ordering::Relaxed)
}

/// The message of a panic's payload (`panic!` gives a `&str` or a `String`).
pub fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// The test-only environment variable (see the module docs).
const TEST_PANIC: &str = "NEXUS_TEST_PANIC";

/// The test-only hook: where and for which function (the variable is read once).
fn test_hook_setting() -> Option<&'static (String, String)> {
    static HOOK: OnceLock<Option<(String, String)>> = OnceLock::new();
    HOOK.get_or_init(|| {
        let value = std::env::var(TEST_PANIC).ok()?;
        let (at, function) = value.split_once(':')?;
        if function.is_empty() || !Site::ALL.iter().any(|site| site.as_str() == at) {
            return None;
        }
        log::warn!("{TEST_PANIC}={value}: test-only panic injection is on");
        Some((at.to_owned(), function.to_owned()))
    })
    .as_ref()
}

/// Reads the test-only hook's variable (once: later calls do nothing).
pub fn read_test_hook() {
    let _ = test_hook_setting();
}

/// The function the test-only hook names for `site`, if any.
fn hooked(site: Site) -> Option<&'static str> {
    let (at, function) = test_hook_setting()?;
    (at == site.as_str()).then_some(function.as_str())
}

/// Whether the test-only hook asks for a panic at `site` for `function`.
pub fn test_hook(site: Site, function: &str) -> bool {
    hooked(site) == Some(function)
}

/// Whether the test-only hook asks for a panic on the vCPU of VM `vm_id` (the node names
/// its VMs `<function>-vm-…`).
pub fn hooks_vm(vm_id: &str) -> bool {
    hooks_vm_at(Site::Vcpu, vm_id)
}

/// Whether the test-only hook asks for a panic at `site` in the handling of VM `vm_id`.
pub fn hooks_vm_at(site: Site, vm_id: &str) -> bool {
    hooked(site).is_some_and(|function| {
        vm_id
            .strip_prefix(function)
            .is_some_and(|rest| rest.starts_with("-vm-"))
    })
}

/// A [`Probe`]'s flags.
#[derive(Debug, Default)]
struct ProbeFlags {
    /// The guest has accessed the device since the VM started.
    accessed: AtomicBool,
    /// The next access panics.
    armed: AtomicBool,
}

/// The flags of the VMs whose device is wrapped in a [`Probe`] and not armed yet, by VM ID.
fn probes() -> &'static Mutex<HashMap<String, Arc<ProbeFlags>>> {
    static PROBES: OnceLock<Mutex<HashMap<String, Arc<ProbeFlags>>>> = OnceLock::new();
    PROBES.get_or_init(Mutex::default)
}

/// The test-only wrapper of VM `vm_id`'s nexus-io transport (for a VM [`hooks_vm`] names):
/// it hands every access to the transport, and panics on the first one after [`arm`] (an
/// invocation on its way to the VM).
pub fn probe(vm_id: &str, transport: Arc<Mutex<NexusIoTransport>>) -> Probe {
    let flags = Arc::new(ProbeFlags::default());
    probes()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(vm_id.to_owned(), Arc::clone(&flags));
    Probe {
        vm: vm_id.to_owned(),
        transport,
        flags,
    }
}

/// Arms VM `vm_id`'s [`Probe`], if it has one, once its guest has reached its device (a
/// VM just restored may not have yet): from then on the guest cannot take an invocation
/// without another access — its `WAIT` read's answer — which panics, before the function
/// runs.
pub async fn arm(vm_id: &str) {
    if hooked(Site::Vcpu).is_none() {
        return;
    }
    let flags = probes()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(vm_id);
    let Some(flags) = flags else {
        return;
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !flags.accessed.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    flags.armed.store(true, Ordering::Release);
}

/// See [`probe`].
#[derive(Debug)]
pub struct Probe {
    vm: String,
    transport: Arc<Mutex<NexusIoTransport>>,
    flags: Arc<ProbeFlags>,
}

impl Probe {
    fn check(&self) {
        self.flags.accessed.store(true, Ordering::Release);
        if self.flags.armed.load(Ordering::Acquire) {
            panic!(
                "test hook {TEST_PANIC}: a panic in the MMIO handling of vm {}",
                self.vm
            );
        }
    }
}

impl BusDevice for Probe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.check();
        self.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        self.check();
        self.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_counts() {
        let payload = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(message(&*payload), "plain");
        let before = count(Site::Vcpu);
        counted(Site::Vcpu);
        assert_eq!(count(Site::Vcpu), before + 1);
        assert_eq!(Site::Invocation.as_str(), "invocation");
        // The counters are indexed by discriminant, in `ALL`'s order.
        for (i, site) in Site::ALL.into_iter().enumerate() {
            assert_eq!(site as usize, i);
        }
    }
}
