//! `nexus-vmm serve`: the node daemon (see [`crate::node`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::embedded::EmbeddedBackend;
use crate::node::auth::{ApiAuth, BearerToken, LambdaKeys};
use crate::node::netplane::{self, Subnet};
use crate::node::netvm::S3Settings;
use crate::node::{NetSettings, Node, NodeConfig, Pick, VcpuThreads, http, registry};

#[derive(Args)]
pub struct ServeArgs {
    /// Address of the HTTP API (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The shared backend's control socket (a running `nexus-backend`).
    #[arg(long, value_name = "SOCKET", required_unless_present = "store")]
    backend: Option<PathBuf>,
    /// Without --backend: run a backend in this process over this local object directory.
    #[arg(long, value_name = "DIR", conflicts_with = "backend")]
    store: Option<PathBuf>,
    /// The function registry: one `NAME.toml` per function (see docs/node.md).
    #[arg(long, value_name = "DIR")]
    functions: PathBuf,
    /// Where snapshots are kept (default: a new directory under the system's temporary one).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// VMs on the node at once, all functions together.
    #[arg(long, default_value_t = 256)]
    max_vms: usize,
    /// Invocations that may wait for a VM; more are answered 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// How long an invocation may wait for a VM before it is answered 503, in ms.
    #[arg(long, default_value_t = 10_000)]
    queue_timeout_ms: u64,
    /// Which parked VM takes an invocation: the most recently used keeps few VMs hot; the
    /// least recently used spreads invocations over every parked VM.
    #[arg(long, value_enum, default_value_t = Pick::Mru)]
    pick: Pick,
    /// How long a parked VM's WAIT may block, in ms: each timeout costs the guest one exit
    /// and a pool worker one wake-up, and does nothing else (a completion, a lost backend or
    /// a stop end the WAIT early), so the default is long: at 4,000 parked VMs, 10 s costs
    /// the daemon 0.065 cores idle and 60 s 0.014 (docs/benchmarks.md).
    #[arg(long, default_value_t = 60_000)]
    wait_timeout_ms: u64,
    /// Where nexus-io VMs' vCPUs run: `pool`, a few worker threads where a parked VM holds no
    /// thread (an entry in the pool's epoll set), or `own`, a thread each that blocks in the
    /// device's WAIT while the VM is parked. Net VMs always have threads of their own.
    #[arg(long, value_enum, default_value_t = VcpuThreads::Pool)]
    vcpu_threads: VcpuThreads,
    /// How long a vCPU pool worker beyond the two spares stays idle before it ends, in ms:
    /// a burst (warming many VMs at once) grows the pool, and its extra threads go after this.
    #[arg(long, default_value_t = 30_000)]
    vcpu_idle_retire_ms: u64,
    /// I/O windows per shared memfd ("slab"): the daemon holds one descriptor per slab rather
    /// than one per VM. 0 gives every window a memfd of its own.
    #[arg(long, default_value_t = nexus_kvm::memory::DEFAULT_WINDOWS_PER_SLAB)]
    windows_per_slab: u32,
    /// Threads of the control plane (HTTP, scheduling, the backend's control socket). One
    /// serves thousands of invocations a second, and hands no request between threads;
    /// vCPUs and restores run on threads of their own whatever this is.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    control_threads: u16,
    /// Snapshot every function before serving (otherwise on its first invocation).
    #[arg(long)]
    prepare: bool,
    /// HTTP connections open at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Longest a client may take to send a request's headers (or idle between requests of
    /// a kept-alive connection), in ms.
    #[arg(long, default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// Longest a client may take to send a request's body, in ms.
    #[arg(long, default_value_t = 30_000)]
    body_timeout_ms: u64,
    /// The node's name, sent in `X-Nexus-Node` on every answer (default: the hostname).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// At SIGTERM or SIGINT, how long the invocations in flight may take to finish while new
    /// ones are refused (`30s`, `500ms`; a second signal ends the drain at once).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// How long to wait at start for the backend to answer on its socket (it may start after
    /// the node: `/readyz` says 503 meanwhile); the node gives up after it.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    backend_wait: Duration,
    /// Share snapshots with other nodes through the backend: the key the nodes share (a
    /// file of hex, or of at least 16 raw bytes) that authenticates the published
    /// manifests. With it, a function without a snapshot here restores the one another node
    /// published (if its manifest verifies and matches this host) rather than booting.
    #[arg(long, value_name = "FILE")]
    snapshot_key_file: Option<PathBuf>,
    /// Publish the snapshots this node takes (of nexus-io functions; net functions' hold
    /// credentials and are never published), unless one is published already. Needs
    /// --snapshot-key-file.
    #[arg(long, requires = "snapshot_key_file")]
    publish_snapshots: bool,
    /// Require `Authorization: Bearer <token>` on every `/v1` request: the token is the
    /// file's first line (the file must be readable by its owner only). `/healthz` and
    /// `/readyz` stay open.
    #[arg(long, value_name = "PATH")]
    auth_token_file: Option<PathBuf>,
    /// Require the bearer token on `/metrics` too. Needs --auth-token-file.
    #[arg(long, requires = "auth_token_file")]
    auth_metrics: bool,
    /// Require a valid AWS Signature Version 4 on the Lambda Invoke API, by one of the keys
    /// of the file: lines `ACCESS_KEY_ID SECRET` (readable by its owner only).
    #[arg(long, value_name = "PATH")]
    lambda_keys_file: Option<PathBuf>,
    #[command(flatten)]
    net: NetArgs,
}

/// `30s`, `1.5s`, `500ms`, or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .and_then(|n| Duration::try_from_secs_f64(n * scale).ok())
        .ok_or_else(|| format!("{text:?} is not a duration (`30s`, `500ms`)"))
}

/// The host's name, or `nexus-node` if it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "nexus-node".into())
}

/// Net functions (`io = "net"`): the network the daemon builds for them (root only), and
/// the object store their guests reach.
#[derive(Args)]
#[command(next_help_heading = "Net functions (io = \"net\")")]
pub struct NetArgs {
    /// The net VMs' IPv4 subnet (prefix 8 to 28): the daemon's namespace `nexus-<pid>`, its
    /// veth and one tap per VM use it, and the host gets one route to it. It must not
    /// overlap a route or an address of the host.
    #[arg(long, value_name = "A.B.C.D/P", default_value = "10.200.0.0/16")]
    net_subnet: Subnet,
    /// The S3 server the guests reach, `http://A.B.C.D:PORT` (no TLS, no DNS in the guest):
    /// an address of the host (the guests' traffic leaves the namespace through the veth),
    /// for example the host's end of the veth, the subnet's second address.
    #[arg(long, value_name = "URL", value_parser = parse_s3_endpoint)]
    net_s3_endpoint: Option<String>,
    /// The bucket the guests read and write.
    #[arg(long, value_name = "BUCKET")]
    net_s3_bucket: Option<String>,
    /// The access key the guests sign with (it reaches them in their boot arguments).
    #[arg(long, value_name = "ID")]
    net_s3_access_key: Option<String>,
    /// The secret key the guests sign with (it reaches them in their boot arguments, and so
    /// the snapshots in --state-dir).
    #[arg(long, value_name = "KEY")]
    net_s3_secret_key: Option<String>,
    /// The longest a net VM's WAIT read may block, in ms. The guest's driver asks for less
    /// whenever a timer of its TCP/IP stack is due sooner (a retransmission, say), so this
    /// bounds only an idle guest's sleep, as --wait-timeout-ms does for nexus-io VMs (the
    /// same default, so that both kinds of parked VMs wake as rarely).
    #[arg(long, default_value_t = 60_000)]
    net_wait_timeout_ms: u64,
}

/// Checks `http://A.B.C.D:PORT` (what the guests' S3 client understands).
fn parse_s3_endpoint(text: &str) -> Result<String, String> {
    let address = text
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .ok_or("the guests speak plain HTTP: give http://A.B.C.D:PORT")?;
    address
        .parse::<std::net::SocketAddrV4>()
        .map_err(|_| format!("{address:?} is not A.B.C.D:PORT (the guests have no DNS)"))?;
    Ok(format!("http://{address}"))
}

/// Raises this process's open-file limit to its hard limit: every parked nexus-io VM holds
/// five descriptors (its vCPU, kick and call eventfds, vhost-user connection, and the
/// snapshot's memory file its RAM maps), besides what all share (the control connection,
/// window slabs).
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; lowering or raising up to the hard limit is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            log::debug!("open-file limit raised to {}", limit.rlim_max);
        }
    }
}

/// `nexus-vmm serve`.
pub fn serve(args: ServeArgs) -> Result<()> {
    raise_file_limit();
    if args.windows_per_slab > 0 {
        let slabs = nexus_kvm::memory::WindowSlabs::new(args.windows_per_slab);
        nexus_kvm::memory::WindowSlabs::install(slabs);
    }
    // The API's secrets first: a bad file stops the node before it starts anything.
    let auth = ApiAuth {
        bearer: args
            .auth_token_file
            .as_deref()
            .map(BearerToken::load)
            .transpose()
            .context("--auth-token-file")?,
        metrics: args.auth_metrics,
        lambda: args
            .lambda_keys_file
            .as_deref()
            .map(LambdaKeys::load)
            .transpose()
            .context("--lambda-keys-file")?
            .map(Arc::new),
    };
    let functions = registry::load_dir(&args.functions)?;
    // A previous daemon killed with SIGKILL left its namespace and veth: remove them.
    if let Err(e) = netplane::remove_stale() {
        log::warn!(
            "cannot remove stale network namespaces of dead daemons: {:#}",
            anyhow::Error::from(e)
        );
    }
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("nexus-node-{}", std::process::id())));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("Cannot create {}", state_dir.display()))?;
    let embedded = match (&args.backend, &args.store) {
        (Some(_), _) => None,
        (None, Some(store)) => {
            if !store.is_dir() {
                bail!("--store {} is not a directory", store.display());
            }
            Some(EmbeddedBackend::start(store, &state_dir.join("backend"))?)
        }
        (None, None) => bail!("Give --backend SOCKET or --store DIR"),
    };
    let backend = match (&args.backend, &embedded) {
        (Some(socket), _) => socket.clone(),
        (None, Some(e)) => e.socket().to_path_buf(),
        (None, None) => unreachable!("checked above"),
    };
    let node_name = args.node_name.clone().unwrap_or_else(hostname);
    let publish = match &args.snapshot_key_file {
        None => None,
        Some(path) => Some(crate::node::publish::PublishConfig {
            key: crate::node::publish::PublishConfig::read_key(path)?,
            publish: args.publish_snapshots,
            node: node_name.clone(),
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.control_threads))
        .max_blocking_threads(args.max_vms + 64)
        .thread_name("nexus-node")
        .on_thread_start(crate::seccomp::node_thread)
        .enable_all()
        .build()?;
    let config = NodeConfig {
        backend: backend.clone(),
        snapshot_dir: state_dir.join("snapshots"),
        max_vms: args.max_vms,
        max_queue: args.max_queue,
        queue_timeout: Duration::from_millis(args.queue_timeout_ms),
        pick: args.pick,
        wait_timeout: Duration::from_millis(args.wait_timeout_ms),
        vcpu_threads: args.vcpu_threads,
        vcpu_idle_retire: Duration::from_millis(args.vcpu_idle_retire_ms),
        net: NetSettings {
            subnet: args.net.net_subnet,
            s3: S3Settings {
                endpoint: args.net.net_s3_endpoint.clone(),
                bucket: args.net.net_s3_bucket.clone(),
                access_key: args.net.net_s3_access_key.clone(),
                secret_key: args.net.net_s3_secret_key.clone(),
            },
            wait_timeout: Duration::from_millis(args.net.net_wait_timeout_ms.max(1)),
        },
        publish,
    };
    // The network of net functions first: building it starts `ip` processes and enters a
    // namespace, which the node's filter does not allow.
    let net = crate::node::net_plane(&functions, &config.net);
    // Everything this thread starts from here on is the node's (or stacks a filter of its
    // own kind on the node's).
    crate::seccomp::node_thread();
    let node = Node::new(config, functions, net, runtime.handle().clone())?;
    let agent = Arc::new(
        http::Agent::new(&node_name)
            .with_context(|| format!("--node-name {node_name:?} cannot be a header's value"))?,
    );
    // Signals are caught from here on: one starts the drain, a second ends it.
    let signals = {
        let _entered = runtime.enter();
        signals()?
    };
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| format!("Cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    // The API answers from now on (`/readyz` is 503 until the node is ready), so that a
    // balancer or a kubelet sees a node that starts rather than one that is down.
    eprintln!("nexus-vmm serve: node {node_name} bound to http://{address}, starting");
    let limits = http::HttpLimits {
        max_connections: args.max_connections,
        header_timeout: Duration::from_millis(args.header_timeout_ms),
        body_timeout: Duration::from_millis(args.body_timeout_ms),
    };
    let server = runtime.spawn(http::serve(
        node.clone(),
        listener,
        limits,
        Arc::clone(&agent),
        http::Drain {
            timeout: args.drain_timeout,
        },
        signals,
        auth,
    ));
    agent.starting(format!("waiting for the backend on {}", backend.display()));
    let waited = std::time::Instant::now();
    loop {
        match runtime.block_on(node.backend_stats()) {
            Ok(_) => break,
            Err(_) if agent.draining() => break,
            Err(e) if waited.elapsed() >= args.backend_wait => {
                return Err(anyhow::Error::from(e)).with_context(|| {
                    format!(
                        "The backend does not answer on {} (waited {:.1} s)",
                        backend.display(),
                        waited.elapsed().as_secs_f64()
                    )
                });
            }
            Err(e) => {
                if waited.elapsed() < Duration::from_millis(100) {
                    log::warn!("waiting for the backend on {}: {e}", backend.display());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    if args.prepare {
        agent.starting("taking the functions' snapshots");
        for name in node.function_names() {
            if agent.draining() {
                break;
            }
            let start = std::time::Instant::now();
            node.prepare(&name)?;
            eprintln!(
                "nexus-vmm serve: snapshot of {name} ready ({:.0} ms)",
                start.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    agent.ready();
    if !agent.draining() {
        println!(
            "nexus-vmm serve: listening on http://{address} — node {node_name}; functions: {}; \
             backend: {}; state: {}",
            node.function_names().join(", "),
            backend.display(),
            state_dir.display()
        );
    }
    let cut = runtime.block_on(server).unwrap_or_default();
    eprintln!("nexus-vmm serve: shutting down (stopping the VMs)");
    runtime.block_on(node.shutdown());
    drop(runtime);
    drop(embedded);
    if cut > 0 {
        eprintln!(
            "nexus-vmm serve: stopped; {cut} invocation(s) were cut short by the drain's deadline"
        );
    } else {
        eprintln!("nexus-vmm serve: stopped");
    }
    Ok(())
}

/// SIGTERM and SIGINT, each as a message (its name), for the drain; registered in the
/// current runtime's context, forwarded by a task of it.
fn signals() -> Result<tokio::sync::mpsc::Receiver<&'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("Cannot catch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("Cannot catch SIGINT")?;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            if sender.send(name).await.is_err() {
                break;
            }
        }
    });
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1s", "1m", "inf", "NaNs", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
