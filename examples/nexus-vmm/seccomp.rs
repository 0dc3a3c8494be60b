//! The seccomp filters of nexus-vmm's threads (docs/security.md, "Seccomp filters"), on
//! unless `--no-seccomp`: each thread the libraries start gets its kind's filter through
//! their thread-start hooks, the node's runtime threads through its `on_thread_start`, and
//! `serve`'s main thread the node's once its runtime is built.

use std::sync::atomic::{AtomicBool, Ordering};

use nexus_seccomp::{ThreadKind, thread_start};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Sets every library's thread-start hooks to install the filter of the thread's kind.
pub fn enable() {
    use nexus_backend::threads as backend;
    use nexus_kvm::threads::{ThreadRole, set_thread_start};
    set_thread_start(ThreadRole::Vcpu, Some(thread_start(ThreadKind::Vcpu)));
    set_thread_start(
        ThreadRole::PoolMonitor,
        Some(thread_start(ThreadKind::VcpuMonitor)),
    );
    set_thread_start(ThreadRole::Device, Some(thread_start(ThreadKind::Device)));
    // The backend a `serve --store` or the demo embeds.
    backend::set_thread_start(
        backend::ThreadRole::Engine,
        Some(thread_start(ThreadKind::BackendEngine)),
    );
    backend::set_thread_start(
        backend::ThreadRole::EventLoop,
        Some(thread_start(ThreadKind::BackendEventLoop)),
    );
    ENABLED.store(true, Ordering::SeqCst);
}

/// The node's control-plane filter on the calling thread, if filters are on: the node's
/// runtime's `on_thread_start`, and `serve`'s main thread.
pub fn node_thread() {
    if ENABLED.load(Ordering::SeqCst) {
        thread_start(ThreadKind::NodeApi)();
    }
}
