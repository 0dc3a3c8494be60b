// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The network the daemon builds for its net functions (`io = "net"`), and removes.
//!
//! Everything lives in one network namespace of the daemon's own, `nexus-<pid>`; the host
//! namespace gets one veth end and one route, both gone with the namespace. With the subnet
//! `S/P` (`--net-subnet`, default `10.200.0.0/16`):
//!
//! | address | what |
//! |---|---|
//! | `S+1` | the gateway: the namespace's end of the veth, and the host side of every tap |
//! | `S+2` | the host's end of the veth (`nx<pid>h`); the daemon's connections to guests come from it |
//! | `S+3` | the guest's address while its function's snapshot is taken (never a restored VM's) |
//! | `S+4` … | one per running net VM, written in its generation record after the restore |
//!
//! - **Host namespace**: the veth end `nx<pid>h` with `S+2/32` (peer `S+1`) and the route
//!   `S/P via S+1 src S+2`. Nothing else of the host is touched.
//! - **The namespace**: the veth end `nx<pid>n` with `S+1/32` (peer `S+2`), a default route
//!   back through the veth (so guests reach any address of the host, the S3 server's
//!   included), `unreachable S/P` (an address without a VM fails at once instead of looping),
//!   IPv4 forwarding, proxy ARP (a guest takes the whole subnet for on-link and asks for
//!   `S+2` by ARP: the namespace answers for it), and three policy rules:
//!   traffic from the host or the namespace itself may go anywhere, traffic to `S+2` too, any
//!   other traffic to the subnet is prohibited — so guests never reach one another.
//! - **One tap per VM**, no bridge (no 1,024-port limit): `nxv<n>`, made in the namespace,
//!   up, with the same gateway MAC ([`GATEWAY_MAC`]) and `S+1/32` on every tap (each tap is a
//!   link of its own, so equal addresses and MACs never meet — and a restored guest's cached
//!   gateway MAC stays right), the guest's `/32` route and a permanent neighbour entry for its
//!   MAC (the namespace never asks a freshly restored guest by ARP). These four are one
//!   netlink datagram ([`super::netlink`]), after one sysctl write (the tap's proxy ARP
//!   answers without delay); a VM's network costs no process. Closing the tap
//!   (the VM stops) removes its route and neighbour; its address returns to the pool.
//!
//! The one-time set-up and the tear-down run `ip` (iproute2): `ip netns add`, the veth, two
//! batches. Tear-down deletes the host's veth end (its peer, and the host route, go with it)
//! and the namespace. A daemon killed with SIGKILL leaves its namespace and veth behind:
//! [`remove_stale`] (run at every start) deletes each `nexus-<pid>` namespace whose process is
//! gone.
//!
//! Every step needs root (`CAP_NET_ADMIN`, and `CAP_SYS_ADMIN` for the namespace).

use std::collections::VecDeque;
use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nexus_net::Tap;

use super::netlink::{self, Netlink, Request};

/// The hardware address of the host side of every tap (the guests' gateway).
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x4e, 0x58, 0x47, 0x57, 0x01];
/// Where `ip netns` keeps the namespaces' names.
const NETNS_DIR: &str = "/run/netns";
/// The prefix of the daemon's namespaces' names.
const NAMESPACE_PREFIX: &str = "nexus-";
/// Bound on one `ip` process.
const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// Offsets in the subnet.
const GATEWAY: u32 = 1;
const HOST_END: u32 = 2;
const SNAPSHOT_GUEST: u32 = 3;
const FIRST_VM: u32 = 4;

/// Errors of the network plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon is not root.
    #[error(
        "net functions need root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to build the node's network \
         namespace, veth and taps; this daemon runs as uid {0}"
    )]
    NotRoot(u32),
    /// No tun driver.
    #[error("net functions need /dev/net/tun (the tun driver), which this host lacks")]
    NoTun,
    /// `ip` could not be started.
    #[error("cannot run `ip` (iproute2), which the node's network needs")]
    Spawn(#[source] std::io::Error),
    /// `ip` failed.
    #[error("`ip {args}` failed: {stderr}")]
    Command {
        /// Its arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
    /// `ip` hung.
    #[error("`ip {0}` did not finish within 10 s and was killed")]
    CommandTimeout(String),
    /// The host's output of `ip -j` could not be read.
    #[error("cannot read `ip -j {0}`'s answer")]
    Json(String, #[source] serde_json::Error),
    /// The subnet is in use on the host.
    #[error(
        "the subnet {subnet} overlaps {what} of the host: give the node another with --net-subnet"
    )]
    SubnetInUse {
        /// The subnet.
        subnet: Subnet,
        /// What it overlaps.
        what: String,
    },
    /// The namespace could not be entered.
    #[error("cannot enter the network namespace {name}")]
    Enter {
        /// The namespace.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A sysctl of the namespace could not be written.
    #[error("cannot set {path} in the node's namespace")]
    Sysctl {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A namespace could not be deleted.
    #[error("cannot delete the network namespace {name}")]
    Delete {
        /// The namespace.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The namespace's thread is gone (the plane was torn down).
    #[error("the node's network is torn down")]
    TornDown,
    /// No address left.
    #[error("the subnet {0} has no address left for another VM")]
    Exhausted(Subnet),
    /// A tap could not be made.
    #[error("cannot make the tap {name}")]
    Tap {
        /// Its name.
        name: String,
        /// The cause.
        #[source]
        source: nexus_net::tap::Error,
    },
    /// A link's index could not be found.
    #[error("cannot find the index of link {name}")]
    Index {
        /// The link.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("a netlink request of the node's network failed")]
    Netlink(#[from] netlink::Error),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a subnet is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// Not `A.B.C.D/P`.
    #[error("{0:?} is not an IPv4 subnet A.B.C.D/P")]
    Syntax(String),
    /// Too small or too large.
    #[error("the prefix length must be 8 to 28 (room for the gateway, the host and VMs), not {0}")]
    Prefix(u8),
    /// Host bits set.
    #[error("{0} is not the first address of its /{1} (use {2}/{1})")]
    NotNetwork(Ipv4Addr, u8, Ipv4Addr),
}

/// The daemon's IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(text: &str) -> std::result::Result<Self, SubnetError> {
        let syntax = || SubnetError::Syntax(text.to_owned());
        let (address, prefix) = text.split_once('/').ok_or_else(syntax)?;
        let network: Ipv4Addr = address.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if !(8..=28).contains(&prefix) {
            return Err(SubnetError::Prefix(prefix));
        }
        let masked = Ipv4Addr::from(u32::from(network) & mask(prefix));
        if masked != network {
            return Err(SubnetError::NotNetwork(network, prefix, masked));
        }
        Ok(Subnet { network, prefix })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The netmask of a prefix length (0 to 32).
fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl Subnet {
    /// The default: `10.200.0.0/16`.
    pub const DEFAULT: Subnet = Subnet {
        network: Ipv4Addr::new(10, 200, 0, 0),
        prefix: 16,
    };

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + offset)
    }

    /// Addresses in the subnet.
    fn size(&self) -> u32 {
        1 << (32 - u32::from(self.prefix))
    }

    /// The gateway of every guest: `S+1`.
    pub fn gateway(&self) -> Ipv4Addr {
        self.at(GATEWAY)
    }

    /// The host's end of the veth: `S+2`.
    pub fn host_address(&self) -> Ipv4Addr {
        self.at(HOST_END)
    }

    /// A guest's address while its snapshot is taken: `S+3`.
    pub fn snapshot_address(&self) -> Ipv4Addr {
        self.at(SNAPSHOT_GUEST)
    }

    /// Whether `address` is in the subnet.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether the two subnets share an address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let shorter = self.prefix.min(other.prefix);
        let m = mask(shorter);
        u32::from(self.network) & m == u32::from(other.network) & m
    }
}

/// The VMs' addresses: offsets never used first, then the longest freed.
#[derive(Debug)]
struct AddressPool {
    next: u32,
    end: u32,
    freed: VecDeque<u32>,
}

impl AddressPool {
    fn new(subnet: &Subnet) -> Self {
        AddressPool {
            next: FIRST_VM,
            // The last address is the broadcast address.
            end: subnet.size() - 1,
            freed: VecDeque::new(),
        }
    }

    fn take(&mut self) -> Option<u32> {
        if self.next < self.end {
            self.next += 1;
            return Some(self.next - 1);
        }
        self.freed.pop_front()
    }

    fn give(&mut self, offset: u32) {
        self.freed.push_back(offset);
    }
}

/// A VM's address, returned to the pool when dropped (after its VM, and so its tap).
#[derive(Debug)]
pub struct Lease {
    address: Ipv4Addr,
    offset: u32,
    pool: Arc<Mutex<AddressPool>>,
}

impl Lease {
    /// The address.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        lock(&self.pool).give(self.offset);
    }
}

/// A job for the namespace's thread.
type Job = Box<dyn FnOnce(&mut NsContext) + Send>;

/// What the namespace's thread holds: sockets made in the namespace.
struct NsContext {
    netlink: Netlink,
    /// For interface ioctls (a name's index) in the namespace.
    inet: std::os::fd::OwnedFd,
}

/// The daemon's network: its namespace, its veth, its taps.
#[derive(Debug)]
pub struct NetPlane {
    subnet: Subnet,
    namespace: String,
    host_link: String,
    pool: Arc<Mutex<AddressPool>>,
    next_tap: AtomicU64,
    /// The namespace's thread (taps are made there); `None` once torn down.
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set by the first [`teardown`](Self::teardown).
    torn_down: AtomicBool,
    /// The host namespace's netlink socket.
    host: Mutex<Netlink>,
}

/// A tap made for a VM, configured for its guest.
#[derive(Debug)]
pub struct VmTap {
    /// The tap (the VM's net device takes it).
    pub tap: Tap,
    /// How long making and configuring it took.
    pub setup: Duration,
}

/// The names of the namespace and veth ends of the daemon with process ID `pid`.
fn names(pid: u32) -> (String, String, String) {
    (
        format!("{NAMESPACE_PREFIX}{pid}"),
        format!("nx{pid}h"),
        format!("nx{pid}n"),
    )
}

/// The process ID in a namespace name of ours (`nexus-<pid>`).
fn namespace_pid(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(NAMESPACE_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// Whether process `pid` exists.
fn is_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        // It exists but is not ours to signal.
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// Deletes every namespace `nexus-<pid>` (and its veth) whose process is gone, or whose pid
/// is this process's (a previous daemon's, the pid reused); returns their names. Nothing
/// else is touched. Needs root if there is anything to delete.
pub fn remove_stale() -> Result<Vec<String>> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Ok(Vec::new());
    };
    let own = std::process::id();
    let mut stale: Vec<(String, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| namespace_pid(&name).map(|pid| (name, pid)))
        .filter(|&(_, pid)| pid == own || !is_alive(pid))
        .collect();
    stale.sort();
    if stale.is_empty() {
        return Ok(Vec::new());
    }
    check_privileges()?;
    let mut host = Netlink::open()?;
    let mut removed = Vec::new();
    for (name, pid) in stale {
        let (_, host_link, _) = names(pid);
        delete_link(&mut host, &host_link)?;
        delete_namespace(&name)?;
        log::info!("removed the stale network namespace {name} of a daemon that is gone");
        removed.push(name);
    }
    Ok(removed)
}

/// Deletes namespace `name` as `ip netns delete` does, without starting a process (the node
/// tears its network down under its seccomp filter, which allows no `execve`): detaches the
/// bind mount that names it — the namespace itself goes once nothing is in it, its taps and
/// veth end with it — and removes the file.
fn delete_namespace(name: &str) -> Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    let deleting = |source: std::io::Error| Error::Delete {
        name: name.to_owned(),
        source,
    };
    match rustix::mount::unmount(&path, rustix::mount::UnmountFlags::DETACH) {
        // EINVAL: not a mount point (a namespace whose creation stopped half-way).
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(deleting(e.into())),
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(deleting(e)),
        _ => Ok(()),
    }
}

/// Deletes link `name` if it exists.
fn delete_link(netlink: &mut Netlink, name: &str) -> Result<()> {
    match netlink.apply(&[Request::DeleteLink {
        name: name.to_owned(),
    }]) {
        Err(netlink::Error::Refused { source, .. })
            if source.raw_os_error() == Some(libc::ENODEV) =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
}

/// Root, and the tun driver.
fn check_privileges() -> Result<()> {
    let uid = rustix::process::geteuid();
    if !uid.is_root() {
        return Err(Error::NotRoot(uid.as_raw()));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(Error::NoTun);
    }
    Ok(())
}

/// Runs `ip ARGS` (with `input` on its standard input), bounded by [`IP_TIMEOUT`]; returns
/// its standard output.
fn ip(args: &[&str], input: Option<&str>) -> Result<String> {
    let described = args.join(" ");
    let mut child = Command::new("ip")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::Spawn)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).map_err(Error::Spawn)?;
    }
    // Read both pipes on threads of their own while waiting, bounded.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + IP_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(Error::Spawn)? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::CommandTimeout(described));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::Command {
            args: described,
            stderr: stderr.trim().to_owned(),
        });
    }
    Ok(stdout)
}

/// Whether the host uses an address of `subnet`: a route of its main table or an address
/// of its interfaces that overlaps it (the default route aside).
fn check_subnet_free(subnet: &Subnet) -> Result<()> {
    let json = |args: &[&str]| -> Result<serde_json::Value> {
        let text = ip(args, None)?;
        serde_json::from_str(&text).map_err(|e| Error::Json(args.join(" "), e))
    };
    let routes = json(&["-j", "-4", "route", "show", "table", "main"])?;
    for route in routes.as_array().into_iter().flatten() {
        let Some(dst) = route.get("dst").and_then(|d| d.as_str()) else {
            continue;
        };
        if dst == "default" {
            continue;
        }
        let other = if dst.contains('/') {
            dst.parse::<Subnet>().ok().or_else(|| loose_subnet(dst))
        } else {
            loose_subnet(&format!("{dst}/32"))
        };
        if other.is_some_and(|o| o.overlaps(subnet)) {
            return Err(Error::SubnetInUse {
                subnet: *subnet,
                what: format!("the route {dst}"),
            });
        }
    }
    let links = json(&["-j", "-4", "address", "show"])?;
    for link in links.as_array().into_iter().flatten() {
        let name = link.get("ifname").and_then(|n| n.as_str()).unwrap_or("?");
        for info in link
            .get("addr_info")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            let Some(local) = info
                .get("local")
                .and_then(|l| l.as_str())
                .and_then(|l| l.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            if subnet.contains(local) {
                return Err(Error::SubnetInUse {
                    subnet: *subnet,
                    what: format!("the address {local} of {name}"),
                });
            }
        }
    }
    Ok(())
}

/// `A.B.C.D/P` with any prefix from 0 to 32 and host bits allowed (a host's route).
fn loose_subnet(text: &str) -> Option<Subnet> {
    let (address, prefix) = text.split_once('/')?;
    let address: Ipv4Addr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|&p| p <= 32)?;
    Some(Subnet {
        network: Ipv4Addr::from(u32::from(address) & mask(prefix)),
        prefix,
    })
}

/// The commands that configure the host's end: its address, up, the route to the subnet.
fn host_batch(subnet: &Subnet, host_link: &str) -> String {
    let (gw, host) = (subnet.gateway(), subnet.host_address());
    format!(
        "address add {host}/32 peer {gw}/32 dev {host_link}\n\
         link set {host_link} up\n\
         route add {subnet} via {gw} dev {host_link} src {host}\n"
    )
}

/// The commands that configure the namespace: loopback, its veth end, the routes, the
/// policy rules that keep guests apart.
fn namespace_batch(subnet: &Subnet, ns_link: &str) -> String {
    let (gw, host) = (subnet.gateway(), subnet.host_address());
    format!(
        "link set lo up\n\
         address add {gw}/32 peer {host}/32 dev {ns_link}\n\
         link set {ns_link} up\n\
         route add default via {host} dev {ns_link}\n\
         route add unreachable {subnet}\n\
         rule add pref 100 iif {ns_link} lookup main\n\
         rule add pref 105 iif lo lookup main\n\
         rule add pref 110 to {host}/32 lookup main\n\
         rule add pref 120 to {subnet} prohibit\n"
    )
}

/// The sysctls of the namespace, written from a thread in it before any tap exists.
const NAMESPACE_SYSCTLS: &[(&str, &str)] = &[
    ("/proc/sys/net/ipv4/ip_forward", "1"),
    ("/proc/sys/net/ipv4/conf/all/proxy_arp", "1"),
    ("/proc/sys/net/ipv4/conf/default/proxy_arp", "1"),
    // No IPv6 on the taps: no router solicitations, no duplicate address detection.
    ("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1"),
    ("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"),
];

impl NetPlane {
    /// Builds the daemon's network for `subnet` (after removing stale namespaces of dead
    /// daemons). Blocks for a few `ip` processes: call it before the node's seccomp filter
    /// is installed on the calling thread (the filter allows no `execve`, `setns` or
    /// `mount`); the namespace's thread installs the filter once it is in the namespace.
    pub fn create(subnet: Subnet) -> Result<Arc<NetPlane>> {
        check_privileges()?;
        let t0 = Instant::now();
        remove_stale()?;
        check_subnet_free(&subnet)?;
        let (namespace, host_link, ns_link) = names(std::process::id());
        let host = Netlink::open()?;
        ip(&["netns", "add", &namespace], None)?;
        let plane = NetPlane {
            subnet,
            namespace: namespace.clone(),
            host_link: host_link.clone(),
            pool: Arc::new(Mutex::new(AddressPool::new(&subnet))),
            next_tap: AtomicU64::new(0),
            jobs: Mutex::new(None),
            thread: Mutex::new(None),
            torn_down: AtomicBool::new(false),
            host: Mutex::new(host),
        };
        // From here on, dropping `plane` tears down what was made.
        ip(
            &[
                "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link, "netns",
                &namespace,
            ],
            None,
        )?;
        ip(&["-batch", "-"], Some(&host_batch(&subnet, &host_link)))?;
        plane.start_thread()?;
        ip(
            &["-n", &namespace, "-batch", "-"],
            Some(&namespace_batch(&subnet, &ns_link)),
        )?;
        log::info!(
            "net functions: namespace {namespace}, subnet {subnet} (gateway {}, host {}) built in {:.1} ms",
            subnet.gateway(),
            subnet.host_address(),
            t0.elapsed().as_secs_f64() * 1e3
        );
        Ok(Arc::new(plane))
    }

    /// Starts the thread that lives in the namespace and writes its sysctls.
    fn start_thread(&self) -> Result<()> {
        let path = Path::new(NETNS_DIR).join(&self.namespace);
        let name = self.namespace.clone();
        let (jobs, inbox) = channel::<Job>();
        let (ready, started) = channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("nexus-netns".into())
            .spawn(move || match enter(&path, &name) {
                Ok(mut context) => {
                    // In the namespace: from here on the node's filter, as every thread of
                    // the node's (the plane is built before it is installed).
                    crate::seccomp::node_thread();
                    let _ = ready.send(Ok(()));
                    serve(&mut context, inbox);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|source| Error::Enter {
                name: self.namespace.clone(),
                source,
            })?;
        let entered = started.recv().unwrap_or(Err(Error::TornDown));
        if let Err(e) = entered {
            let _ = thread.join();
            return Err(e);
        }
        *lock(&self.jobs) = Some(jobs);
        *lock(&self.thread) = Some(thread);
        Ok(())
    }

    /// Runs `job` on the namespace's thread and returns its result.
    fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut NsContext) -> R + Send + 'static,
    ) -> Result<R> {
        let (done, result) = channel();
        let job: Job = Box::new(move |context| {
            let _ = done.send(job(context));
        });
        lock(&self.jobs)
            .as_ref()
            .ok_or(Error::TornDown)?
            .send(job)
            .map_err(|_| Error::TornDown)?;
        result.recv().map_err(|_| Error::TornDown)
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// An address for a VM, back in the pool when the lease is dropped.
    pub fn lease(&self) -> Result<Lease> {
        let offset = lock(&self.pool)
            .take()
            .ok_or(Error::Exhausted(self.subnet))?;
        Ok(Lease {
            address: self.subnet.at(offset),
            offset,
            pool: Arc::clone(&self.pool),
        })
    }

    /// Makes a tap in the namespace for a guest at `guest` with hardware address `mac`: up,
    /// the gateway's address and MAC on it, the guest's route and neighbour entry.
    pub fn open_tap(&self, guest: Ipv4Addr, mac: [u8; 6]) -> Result<VmTap> {
        let t0 = Instant::now();
        let name = format!("nxv{}", self.next_tap.fetch_add(1, Ordering::Relaxed));
        let gateway = self.subnet.gateway();
        let tap = self.run(move |context| -> Result<Tap> {
            let tap = Tap::open(Some(&name)).map_err(|source| Error::Tap {
                name: name.clone(),
                source,
            })?;
            let index =
                rustix::net::netdevice::name_to_index(&context.inet, &name).map_err(|e| {
                    Error::Index {
                        name: name.clone(),
                        source: e.into(),
                    }
                })?;
            // Proxy ARP answers at once (by default after a random delay of up to 0.8 s).
            // Only the initial namespace has `neigh/default`: here it is set per link.
            let path = format!("/proc/sys/net/ipv4/neigh/{name}/proxy_delay");
            std::fs::write(&path, "0").map_err(|source| Error::Sysctl { path, source })?;
            context
                .netlink
                .apply(&tap_requests(index, gateway, guest, mac))?;
            Ok(tap)
        })??;
        Ok(VmTap {
            tap,
            setup: t0.elapsed(),
        })
    }

    /// Removes the network: the namespace's thread, the host's veth end (the namespace's end
    /// and the host route go with it), the namespace (its taps go as their VMs stop). Once
    /// only; later calls do nothing.
    pub fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::AcqRel) {
            return;
        }
        drop(lock(&self.jobs).take());
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
        if let Err(e) = delete_link(&mut lock(&self.host), &self.host_link) {
            log::warn!("net functions: cannot delete {}: {e}", self.host_link);
        }
        match delete_namespace(&self.namespace) {
            Ok(()) => log::info!("net functions: namespace {} deleted", self.namespace),
            Err(e) => log::warn!("net functions: {:#}", anyhow::Error::from(e)),
        }
    }
}

impl Drop for NetPlane {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The requests that configure a VM's tap `index`.
fn tap_requests(index: u32, gateway: Ipv4Addr, guest: Ipv4Addr, mac: [u8; 6]) -> [Request; 4] {
    [
        Request::LinkUp {
            index,
            mac: Some(GATEWAY_MAC),
        },
        Request::AddAddress {
            index,
            address: gateway,
            prefix: 32,
        },
        Request::SetNeighbour {
            index,
            address: guest,
            mac,
        },
        Request::SetRoute {
            index,
            destination: guest,
            prefix: 32,
        },
    ]
}

/// Moves the calling thread into the namespace at `path`, writes its sysctls and opens its
/// sockets.
fn enter(path: &Path, name: &str) -> Result<NsContext> {
    let entering = |source: std::io::Error| Error::Enter {
        name: name.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(entering)?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&file),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| entering(e.into()))?;
    for (path, value) in NAMESPACE_SYSCTLS {
        match std::fs::write(path, value) {
            Ok(()) => {}
            // No IPv6 in the kernel: nothing to turn off.
            Err(e) if path.contains("ipv6") && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Sysctl {
                    path: (*path).to_owned(),
                    source,
                });
            }
        }
    }
    let inet = rustix::net::socket_with(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| entering(e.into()))?;
    Ok(NsContext {
        netlink: Netlink::open()?,
        inet,
    })
}

/// The namespace's thread: runs jobs until the plane is torn down.
fn serve(context: &mut NsContext, inbox: Receiver<Job>) {
    for job in inbox {
        job(context);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_parsed_and_checked() {
        let s: Subnet = "10.200.0.0/16".parse().unwrap();
        assert_eq!(s, Subnet::DEFAULT);
        assert_eq!(s.to_string(), "10.200.0.0/16");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(s.host_address(), Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(s.snapshot_address(), Ipv4Addr::new(10, 200, 0, 3));
        assert!(s.contains(Ipv4Addr::new(10, 200, 255, 255)));
        assert!(!s.contains(Ipv4Addr::new(10, 201, 0, 1)));
        for (text, why) in [
            ("10.200.0.0", "not an IPv4 subnet"),
            ("10.200.0/16", "not an IPv4 subnet"),
            ("10.200.0.0/x", "not an IPv4 subnet"),
            ("10.200.0.0/29", "8 to 28"),
            ("10.0.0.0/7", "8 to 28"),
            ("10.200.0.1/16", "use 10.200.0.0/16"),
        ] {
            let e = text.parse::<Subnet>().unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
        let small: Subnet = "192.168.7.16/28".parse().unwrap();
        assert_eq!(small.size(), 16);
    }

    #[test]
    fn overlaps_are_seen_both_ways() {
        let s = Subnet::DEFAULT;
        let wide = loose_subnet("10.0.0.0/8").unwrap();
        let inside = loose_subnet("10.200.3.0/24").unwrap();
        let host = loose_subnet("10.200.9.9/32").unwrap();
        let beside = loose_subnet("10.201.0.0/16").unwrap();
        assert!(s.overlaps(&wide) && wide.overlaps(&s));
        assert!(s.overlaps(&inside) && inside.overlaps(&s));
        assert!(s.overlaps(&host));
        assert!(!s.overlaps(&beside) && !beside.overlaps(&s));
        assert_eq!(
            loose_subnet("192.0.2.7/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert!(loose_subnet("1.2.3.4/33").is_none());
    }

    #[test]
    fn addresses_are_handed_out_fresh_first_then_oldest_freed() {
        let subnet: Subnet = "192.168.7.0/28".parse().unwrap();
        let mut pool = AddressPool::new(&subnet);
        // .4 to .14: .0 network, .1 gateway, .2 host, .3 snapshot, .15 broadcast.
        let taken: Vec<u32> = std::iter::from_fn(|| pool.take()).collect();
        assert_eq!(taken, (4..15).collect::<Vec<_>>());
        pool.give(9);
        pool.give(5);
        assert_eq!(pool.take(), Some(9));
        assert_eq!(pool.take(), Some(5));
        assert_eq!(pool.take(), None);
    }

    #[test]
    fn a_lease_goes_back_when_dropped() {
        let subnet: Subnet = "192.168.7.0/28".parse().unwrap();
        let pool = Arc::new(Mutex::new(AddressPool::new(&subnet)));
        let lease = Lease {
            address: subnet.at(4),
            offset: 4,
            pool: Arc::clone(&pool),
        };
        assert_eq!(lease.address(), Ipv4Addr::new(192, 168, 7, 4));
        drop(lease);
        assert_eq!(lock(&pool).freed, VecDeque::from([4]));
    }

    #[test]
    fn only_our_namespace_names_carry_a_pid() {
        assert_eq!(namespace_pid("nexus-1234"), Some(1234));
        for other in [
            "nexus-",
            "nexus-12a",
            "nexus-0123",
            "nexus-x",
            "other-12",
            "nexus--1",
        ] {
            assert_eq!(namespace_pid(other), None, "{other}");
        }
        assert_eq!(
            names(42),
            ("nexus-42".into(), "nx42h".into(), "nx42n".into())
        );
        // The longest pid (2^22) still fits an interface name (15 bytes).
        assert!(names(4_194_304).1.len() <= 15);
        assert!(is_alive(std::process::id()));
    }

    #[test]
    fn the_batches_configure_both_ends_and_keep_guests_apart() {
        let s = Subnet::DEFAULT;
        let host = host_batch(&s, "nx1h");
        assert!(host.contains("address add 10.200.0.2/32 peer 10.200.0.1/32 dev nx1h"));
        assert!(host.contains("route add 10.200.0.0/16 via 10.200.0.1 dev nx1h src 10.200.0.2"));
        let ns = namespace_batch(&s, "nx1n");
        assert!(ns.contains("route add default via 10.200.0.2 dev nx1n"));
        assert!(ns.contains("route add unreachable 10.200.0.0/16"));
        assert!(ns.contains("rule add pref 120 to 10.200.0.0/16 prohibit"));
        let requests = tap_requests(
            7,
            s.gateway(),
            Ipv4Addr::new(10, 200, 0, 9),
            [2, 0, 0, 0, 0, 9],
        );
        assert!(matches!(
            requests[0],
            Request::LinkUp {
                index: 7,
                mac: Some(GATEWAY_MAC)
            }
        ));
        assert!(matches!(
            requests[3],
            Request::SetRoute {
                index: 7,
                prefix: 32,
                ..
            }
        ));
    }
}
