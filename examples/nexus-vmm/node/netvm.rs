// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Net function VMs (`io = "net"`): the in-guest networking baseline.
//!
//! The guest carries its own fabric — a virtio-net device (`nexus-net`) on a tap of the node's
//! namespace ([`super::netplane`]), TCP/IP, HTTP and an S3 client — and serves invocations
//! over HTTP (the net functions' contract, section 2):
//!
//! - **Snapshot**: the guest boots with the net device on a tap and its boot arguments
//!   (`net.ip` = the subnet's snapshot-only address, `net.gw`, `net.tsc_khz`, `net.time_ms`,
//!   `http.port`, `s3.*`); once it prints [`LISTENING`] on its console it is stopped, its
//!   device paused, and it is saved with the `nexus-net` device section. Nothing connects to
//!   it first: the snapshot holds a listening socket and no connection.
//! - **Restore**: a fresh tap and address; the device resumes on the new tap; the VM
//!   generation record (`nexus_kvm::micro::write_generation`) gives the guest its address, a new seed and
//!   the clock before its vCPU runs.
//! - **Invocations**: `POST /invoke` to the guest's server on a kept-alive connection of the
//!   node's runtime (one per VM: a guest serves one invocation at a time), the input by key
//!   (`X-Nexus-Input-Key`, the guest GETs it) or inline (the body), the output key in
//!   `X-Nexus-Output-Key`. The answer maps to the same [`CallDone`] as a nexus-io VM's.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_LENGTH, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use nexus_kvm::memory::MemoryConfig;
use nexus_kvm::micro::{Generation, MicroVm, MicroVmConfig};
use nexus_kvm::serial::Console;
use nexus_kvm::{VcpuConfig, VcpuStop};
use nexus_net::{NetStats, NexusNet, NexusNetConfig, NexusNetState};
use nexus_ring::control::InvokeTimings;
use nexus_snapshot::{DeviceState, RestoreMode, Snapshot};

use super::netplane::{Lease, NetPlane, Subnet, VmTap};
use super::vm::{
    Call, CallDone, CallFailure, GuestLog, Input, Restored, SnapshotTaken, describe_stop,
    restore_micro, save_parked,
};

/// The console line a net function's guest prints once its server listens (followed by
/// `A.B.C.D:PORT`).
pub const LISTENING: &str = "nexus-net-function: listening on ";
/// The MAC of every net guest (each VM is alone on its tap: equal MACs never meet).
pub const GUEST_MAC: [u8; 6] = [0x02, 0x4e, 0x58, 0x56, 0x4d, 0x01];
/// The largest result taken from a guest.
pub const MAX_OUTPUT: usize = 64 << 20;
/// How long one connection attempt to a freshly restored guest waits at first (doubling up
/// to [`CONNECT_ATTEMPT_MAX`]): the guest takes its new address at its next turn.
const CONNECT_ATTEMPT: Duration = Duration::from_millis(20);
/// The longest one connection attempt waits.
const CONNECT_ATTEMPT_MAX: Duration = Duration::from_secs(1);

/// The object store the guests reach, from the daemon's flags (all optional: a function
/// that reads and writes no object needs none).
#[derive(Clone, Default)]
pub struct S3Settings {
    /// `http://A.B.C.D:PORT` (TLS is off in the baseline; there is no DNS in the guest).
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: Option<String>,
    /// The access key ID.
    pub access_key: Option<String>,
    /// The secret key.
    pub secret_key: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &self.secret_key.as_ref().map(|_| "…"))
            .finish()
    }
}

/// The boot arguments of a net function's guest, but the clock (`net.time_ms`, added at
/// boot): the network (`net.ip`, `net.gw`, `net.tsc_khz`), the server's port, and the
/// object store.
pub fn boot_args(subnet: &Subnet, s3: &S3Settings, http_port: u16, tsc_khz: u32) -> Vec<String> {
    let mut args = vec![
        format!("net.ip={}/{}", subnet.snapshot_address(), subnet.prefix()),
        format!("net.gw={}", subnet.gateway()),
        format!("net.tsc_khz={tsc_khz}"),
        format!("http.port={http_port}"),
    ];
    for (key, value) in [
        ("s3.endpoint", &s3.endpoint),
        ("s3.bucket", &s3.bucket),
        ("s3.access_key", &s3.access_key),
        ("s3.secret_key", &s3.secret_key),
    ] {
        if let Some(value) = value {
            args.push(format!("{key}={value}"));
        }
    }
    args
}

/// The host's TSC frequency in kHz, as KVM gives it to a vCPU (asked once, of a throwaway
/// VM). A micro-guest cannot measure it; its stack's timers and clock need it.
pub fn tsc_khz() -> Result<u32> {
    static KHZ: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    if let Some(&khz) = KHZ.get() {
        return Ok(khz);
    }
    let mut vm = nexus_kvm::Vm::new(nexus_kvm::VmConfig {
        memory: MemoryConfig {
            ram_size: nexus_kvm::layout::MIN_RAM_SIZE,
            window_size: 0,
        },
        irqchip: false,
    })?;
    let vcpu = vm.create_vcpu(VcpuConfig { strict_io: true })?;
    let khz = vcpu
        .fd()
        .get_tsc_khz()
        .context("KVM does not tell the TSC frequency")?;
    Ok(*KHZ.get_or_init(|| khz))
}

/// Boots net function `elf` with its net device on a tap of `plane` and `args` (the clock
/// added), waits (at most `ready_timeout`) until it prints [`LISTENING`], stops it and writes
/// the snapshot into `out`. The VM and its tap are gone afterwards.
pub fn take_snapshot(
    elf: &[u8],
    memory: MemoryConfig,
    args: &[String],
    plane: &NetPlane,
    vm_id: &str,
    out: &Path,
    ready_timeout: Duration,
) -> Result<SnapshotTaken> {
    let (log, listening) = GuestLog::watching(vm_id, LISTENING);
    let mut args = args.to_vec();
    args.push(format!("net.time_ms={}", unix_time_ms()));
    let micro = MicroVm::new(
        elf,
        MicroVmConfig {
            memory,
            args,
            device: None,
            net_device: Some(nexus_net::device_info()),
            console: Console::new(log),
        },
    )?;
    let serial = micro.serial().clone();
    // Every snapshot's guest has the same address: two taken at once each route it to their
    // own tap in turn (the route is replaced), which is harmless, as nothing talks to a guest
    // before its snapshot (it only listens).
    let VmTap { tap, .. } = plane.open_tap(plane.subnet().snapshot_address(), GUEST_MAC)?;
    let device = NexusNet::new(NexusNetConfig {
        tap,
        mac: GUEST_MAC,
        memory: nexus_net::guest_ram(micro.vm().memory())?,
    })?;
    let attached = nexus_net::attach(micro.vm(), device)?;
    let (vm, vcpu, _) = micro.into_parts();
    let start = Instant::now();
    let handle = vcpu.spawn(format!("{vm_id}-vcpu"))?;

    let deadline = start + ready_timeout;
    let line = loop {
        match listening.recv_timeout(Duration::from_millis(5)) {
            Ok(line) => break line,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        if handle.is_finished() {
            let (_, result) = handle.join()?;
            bail!(
                "The net function stopped before it listened: {}",
                describe_stop(&result)
            );
        }
        if Instant::now() > deadline {
            let _ = handle.stop();
            bail!(
                "The net function did not print `{}…` within {} s",
                LISTENING.trim_end(),
                ready_timeout.as_secs()
            );
        }
    };
    let listening_after = start.elapsed();
    let (mut vcpu, result) = handle.stop()?;
    match result {
        Ok(VcpuStop::Stopped) => {}
        other => bail!("The vCPU did not stop cleanly: {}", describe_stop(&other)),
    }
    log::debug!("vm {vm_id}: {line}");
    let devices = {
        let serial = serial.lock().unwrap_or_else(|p| p.into_inner());
        let mut transport = attached.transport.lock().unwrap_or_else(|p| p.into_inner());
        transport.device_mut().pause();
        vec![
            DeviceState::save(&*serial),
            DeviceState::save(&NexusNetState::save(&transport)),
        ]
    };
    save_parked(&vm, &mut vcpu, &devices, out, listening_after)
}

/// A restored net VM's network.
#[derive(Debug)]
pub struct NetRestored {
    /// Its address (returned to the pool when the VM is gone).
    pub lease: Lease,
    /// Its server's port.
    pub http_port: u16,
    /// The generation written into it.
    pub generation: u64,
    /// Its device's counters.
    pub stats: Arc<NetStats>,
    /// Making and configuring its tap.
    pub tap_setup: Duration,
}

/// Restores net VM `vm_id` from `snapshot` in `mode` on a new tap and address of `plane`,
/// and writes its generation record; its device's WAIT blocks at most `wait_timeout`.
pub fn restore(
    snapshot: &Snapshot,
    mode: RestoreMode,
    plane: &NetPlane,
    http_port: u16,
    console: Console,
    wait_timeout: Duration,
) -> Result<Restored> {
    let t0 = Instant::now();
    let (restored, recording) = restore_micro(snapshot, mode, console)?;
    let nexus_snapshot::RestoredVm {
        vm,
        mut vcpus,
        devices,
        faults,
        stats,
    } = restored;
    let state: NexusNetState = DeviceState::restore_from(&devices, ())?;
    let lease = plane.lease()?;
    let VmTap { tap, setup } = plane.open_tap(lease.address(), state.device.mac)?;
    let mut transport = state.restore(tap, nexus_net::guest_ram(vm.memory())?)?;
    transport.device_mut().set_wait_timeout(wait_timeout);
    let attached = nexus_net::attach_transport(&vm, transport)?;
    let subnet = plane.subnet();
    let generation = fresh_generation(lease.address(), subnet.prefix(), subnet.gateway())
        .context("Cannot draw the VM's generation")?;
    nexus_kvm::micro::write_generation(vm.memory().guest(), &generation)
        .context("Cannot write the VM generation record")?;
    Ok(Restored {
        vm,
        vcpu: vcpus.remove(0),
        faults,
        recording,
        stats,
        hinted: Duration::ZERO,
        total: t0.elapsed(),
        device: None,
        net: Some(NetRestored {
            lease,
            http_port,
            generation: generation.generation,
            stats: attached.stats,
            tap_setup: setup,
        }),
    })
}

/// A restored VM's generation: random (never 0, the boot's), a fresh seed, and its own
/// address and gateway.
fn fresh_generation(
    address: std::net::Ipv4Addr,
    prefix: u8,
    gateway: std::net::Ipv4Addr,
) -> std::io::Result<Generation> {
    Ok(Generation {
        generation: nexus_kvm::micro::fresh_seed()?.max(1),
        seed: nexus_kvm::micro::fresh_seed()?,
        address: Some((address, prefix)),
        gateway: Some(gateway),
    })
}

/// The host's wall clock in milliseconds since the Unix epoch (a guest's `net.time_ms`).
fn unix_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a net guest did not run an invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetFailure {
    /// The invocation cannot be sent (a key that is no HTTP header value); the VM is fine.
    BadRequest(String),
    /// The input object does not exist (the guest answered 404); the VM is fine.
    InputMissing(String),
    /// The guest's store failed (it answered 502); the VM is fine.
    Store(String),
    /// The exchange broke, or the guest answered what the contract does not say: the VM is
    /// not reused.
    Broken(String),
}

impl NetFailure {
    /// Whether the VM may take the next invocation.
    pub fn keeps_vm(&self) -> bool {
        !matches!(self, NetFailure::Broken(_))
    }
}

impl std::fmt::Display for NetFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetFailure::BadRequest(m)
            | NetFailure::InputMissing(m)
            | NetFailure::Store(m)
            | NetFailure::Broken(m) => f.write_str(m),
        }
    }
}

/// A net VM's side of the node: its address, the kept-alive connection to its server, its
/// counters.
#[derive(Debug)]
pub struct NetChannel {
    vm: String,
    address: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
    stats: Arc<NetStats>,
    generation: u64,
    /// The guest's store reconnects as it last reported them (cumulative).
    reconnects_seen: u64,
    /// Reconnects not yet taken by [`take_store_reconnects`](Self::take_store_reconnects).
    reconnects_new: u64,
    /// Whether a generation mismatch was logged already.
    warned: bool,
    // Last: the address goes back to the pool after everything else of the VM.
    _lease: Lease,
}

impl NetChannel {
    /// The channel of VM `vm`, restored with `net` (it connects on first use).
    pub fn new(vm: &str, net: NetRestored) -> Self {
        let address = SocketAddr::V4(SocketAddrV4::new(net.lease.address(), net.http_port));
        NetChannel {
            vm: vm.to_owned(),
            address,
            sender: None,
            stats: net.stats,
            generation: net.generation,
            reconnects_seen: 0,
            reconnects_new: 0,
            warned: false,
            _lease: net.lease,
        }
    }

    /// The store reconnects the guest reported since the last call.
    pub fn take_store_reconnects(&mut self) -> u64 {
        std::mem::take(&mut self.reconnects_new)
    }

    /// A connection to the guest's server, opened if there is none (or it closed): attempts
    /// get longer and longer, until one is answered (the caller bounds the whole).
    async fn connection(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, NetFailure> {
        let alive = match &mut self.sender {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if alive {
            return Ok(self.sender.as_mut().expect("just checked"));
        }
        self.sender = None;
        let stream = connect(self.address).await;
        stream
            .set_nodelay(true)
            .map_err(|e| NetFailure::Broken(format!("cannot set TCP_NODELAY: {e}")))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| NetFailure::Broken(format!("the HTTP handshake failed: {e}")))?;
        let vm = self.vm.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("vm {vm}: the connection to its server ended: {e}");
            }
        });
        Ok(self.sender.insert(sender))
    }

    /// Checks that the guest's server answers (`GET /ready`), connecting first if needed.
    pub async fn ready(&mut self) -> Result<(), NetFailure> {
        let host = self.address.to_string();
        let sender = self.connection().await?;
        let request = Request::get("/ready")
            .header(HOST, host)
            .body(Full::new(Bytes::new()))
            .map_err(|e| NetFailure::Broken(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| NetFailure::Broken(format!("GET /ready failed: {e}")))?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        if status != StatusCode::OK {
            return Err(NetFailure::Broken(format!("GET /ready answered {status}")));
        }
        Ok(())
    }

    /// Runs one invocation on the guest's server (the caller bounds it with the function's
    /// timeout).
    pub async fn invoke(&mut self, call: &Call) -> Result<CallDone, CallFailure> {
        let t0 = Instant::now();
        let frames_before = self.stats.snapshot();
        let request = invocation_request(call, self.address).map_err(CallFailure::Net)?;
        let sender = self.connection().await.map_err(CallFailure::Net)?;
        let connected = t0.elapsed();
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                // The connection closed before the request went out: once more, anew.
                Some(request) => {
                    self.sender = None;
                    let sender = self.connection().await.map_err(CallFailure::Net)?;
                    sender.send_request(request).await.map_err(|e| {
                        CallFailure::Net(NetFailure::Broken(format!("the request failed: {e}")))
                    })?
                }
                None => {
                    self.sender = None;
                    return Err(CallFailure::Net(NetFailure::Broken(format!(
                        "the request failed: {}",
                        e.into_error()
                    ))));
                }
            },
        };
        let (head, body) = response.into_parts();
        let body = Limited::new(body, MAX_OUTPUT)
            .collect()
            .await
            .map_err(|e| {
                self.sender = None;
                CallFailure::Net(NetFailure::Broken(format!(
                    "the answer's body failed (at most {MAX_OUTPUT} bytes): {e}"
                )))
            })?
            .to_bytes();
        let answered = t0.elapsed();
        let frames_after = self.stats.snapshot();
        self.note_headers(&head.headers);
        let answer = Answer::read(head.status, &head.headers, body).map_err(|failure| {
            if !failure.keeps_vm() {
                self.sender = None;
            }
            CallFailure::Net(failure)
        })?;
        let us = |d: Duration| d.as_micros() as u64;
        Ok(CallDone {
            outcome: answer.outcome.into(),
            output_len: answer.output_len,
            output: answer.output,
            bytes_in: frames_after.rx_bytes.saturating_sub(frames_before.rx_bytes),
            bytes_out: frames_after.tx_bytes.saturating_sub(frames_before.tx_bytes),
            requests: 0,
            timings: InvokeTimings {
                next_served_us: us(connected),
                function_us: us(answered.saturating_sub(connected)),
                durable_us: 0,
                output_store_us: 0,
                total_us: us(answered),
            },
            exits: 0,
        })
    }

    /// Takes the headers every answer carries: the guest's store reconnects and its
    /// generation.
    fn note_headers(&mut self, headers: &hyper::HeaderMap) {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(reconnects) = number("x-nexus-reconnects") {
            self.reconnects_new += reconnects.saturating_sub(self.reconnects_seen);
            self.reconnects_seen = self.reconnects_seen.max(reconnects);
        }
        match number("x-nexus-generation") {
            Some(g) if g == self.generation => {}
            seen if !self.warned => {
                self.warned = true;
                log::warn!(
                    "vm {}: its guest reports generation {seen:?}, not {}: it did not take the \
                     restored VM's identity (address, seed) from the generation record",
                    self.vm,
                    self.generation
                );
            }
            _ => {}
        }
    }
}

/// Connects to a guest's server: attempts of growing length until one is answered.
async fn connect(address: SocketAddr) -> tokio::net::TcpStream {
    let mut attempt = CONNECT_ATTEMPT;
    loop {
        match tokio::time::timeout(attempt, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return stream,
            Ok(Err(e)) => {
                log::trace!("connecting to {address}: {e}");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(_) => log::trace!("connecting to {address}: no answer within {attempt:?}"),
        }
        attempt = (attempt * 2).min(CONNECT_ATTEMPT_MAX);
    }
}

/// The `POST /invoke` request of `call` (contract, section 2).
fn invocation_request(
    call: &Call,
    address: SocketAddr,
) -> Result<Request<Full<Bytes>>, NetFailure> {
    let value = |what: &str, text: &str| {
        HeaderValue::from_bytes(text.as_bytes()).map_err(|_| {
            NetFailure::BadRequest(format!(
                "the {what} {text:?} cannot be sent to a net function (it holds control characters)"
            ))
        })
    };
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/invoke")
        .header(HOST, address.to_string())
        .header("x-nexus-request-id", value("request id", &call.request_id)?);
    let body = match &call.input {
        Input::Key(key) => {
            request = request.header("x-nexus-input-key", value("input key", key)?);
            Bytes::new()
        }
        Input::Inline(bytes) => bytes.clone(),
    };
    if let Some(key) = &call.output_key {
        request = request.header("x-nexus-output-key", value("output key", key)?);
    }
    request
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(body))
        .map_err(|e| NetFailure::BadRequest(e.to_string()))
}

/// A guest's answer to `POST /invoke`, read.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    outcome: &'static str,
    output: Bytes,
    output_len: u64,
}

impl Answer {
    /// Reads an answer (contract, section 2): 200 with the result, or with an empty body
    /// and `X-Nexus-Output-Len` when it was stored, or with `X-Nexus-Function-Error` and the
    /// error document; 404 (input missing); 502 (the store failed).
    fn read(
        status: StatusCode,
        headers: &hyper::HeaderMap,
        body: Bytes,
    ) -> Result<Self, NetFailure> {
        let message = || String::from_utf8_lossy(&body).trim().to_owned();
        match status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(NetFailure::InputMissing(message())),
            StatusCode::BAD_GATEWAY => {
                return Err(NetFailure::Store(format!(
                    "the function's object store failed: {}",
                    message()
                )));
            }
            other => {
                return Err(NetFailure::Broken(format!(
                    "the guest's server answered {other}: {}",
                    message()
                )));
            }
        }
        let outcome = if headers.contains_key("x-nexus-function-error") {
            "error"
        } else {
            "success"
        };
        let stored = headers.get("x-nexus-output-len").map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| NetFailure::Broken(format!("X-Nexus-Output-Len is {v:?}")))
        });
        let output_len = match stored {
            Some(len) if body.is_empty() => len?,
            Some(_) => {
                return Err(NetFailure::Broken(
                    "an answer with X-Nexus-Output-Len has a body".into(),
                ));
            }
            None => body.len() as u64,
        };
        Ok(Answer {
            outcome,
            output: body,
            output_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(input: Input, output_key: Option<&str>) -> Call {
        Call {
            input,
            output_key: output_key.map(str::to_owned),
            request_id: "r-1".into(),
            timeout: Duration::from_secs(1),
            return_output: false,
        }
    }

    #[test]
    fn an_invocation_is_a_post_with_the_contracts_headers() {
        let address: SocketAddr = "10.200.0.9:8080".parse().unwrap();
        let request = invocation_request(
            &call(Input::Key("inputs/words.txt".into()), Some("out/1")),
            address,
        )
        .unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/invoke");
        let h = request.headers();
        assert_eq!(h["host"], "10.200.0.9:8080");
        assert_eq!(h["x-nexus-request-id"], "r-1");
        assert_eq!(h["x-nexus-input-key"], "inputs/words.txt");
        assert_eq!(h["x-nexus-output-key"], "out/1");
        assert_eq!(h["content-length"], "0");

        let request = invocation_request(
            &call(Input::Inline(Bytes::from_static(b"27")), None),
            address,
        )
        .unwrap();
        let h = request.headers();
        assert!(!h.contains_key("x-nexus-input-key"));
        assert!(!h.contains_key("x-nexus-output-key"));
        assert_eq!(h["content-length"], "2");

        // UTF-8 keys go as their bytes; control characters cannot be sent.
        assert!(invocation_request(&call(Input::Key("données/é".into()), None), address).is_ok());
        let bad = invocation_request(&call(Input::Key("a\nb".into()), None), address);
        assert!(matches!(bad, Err(NetFailure::BadRequest(m)) if m.contains("input key")));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> hyper::HeaderMap {
        let mut map = hyper::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn answers_map_to_results_and_failures() {
        let ok = Answer::read(StatusCode::OK, &headers(&[]), Bytes::from_static(b"3\n")).unwrap();
        assert_eq!(
            (ok.outcome, ok.output_len, &ok.output[..]),
            ("success", 2, &b"3\n"[..])
        );

        let stored = Answer::read(
            StatusCode::OK,
            &headers(&[("x-nexus-output-len", "12345")]),
            Bytes::new(),
        )
        .unwrap();
        assert_eq!((stored.outcome, stored.output_len), ("success", 12345));
        assert!(stored.output.is_empty());

        let failed = Answer::read(
            StatusCode::OK,
            &headers(&[("x-nexus-function-error", "Unhandled")]),
            Bytes::from_static(b"{\"errorMessage\":\"no\"}"),
        )
        .unwrap();
        assert_eq!(failed.outcome, "error");
        assert_eq!(failed.output_len, 21);

        let missing = Answer::read(StatusCode::NOT_FOUND, &headers(&[]), "no such key\n".into());
        assert_eq!(missing, Err(NetFailure::InputMissing("no such key".into())));
        let store = Answer::read(StatusCode::BAD_GATEWAY, &headers(&[]), "refused".into());
        assert!(matches!(&store, Err(NetFailure::Store(m)) if m.ends_with("refused")));
        assert!(store.unwrap_err().keeps_vm());
        for (status, h, body) in [
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                headers(&[]),
                Bytes::new(),
            ),
            (
                StatusCode::OK,
                headers(&[("x-nexus-output-len", "x")]),
                Bytes::new(),
            ),
            (
                StatusCode::OK,
                headers(&[("x-nexus-output-len", "3")]),
                Bytes::from_static(b"abc"),
            ),
        ] {
            let broken = Answer::read(status, &h, body).unwrap_err();
            assert!(!broken.keeps_vm(), "{broken:?}");
        }
    }

    #[test]
    fn the_boot_arguments_give_the_network_and_the_store() {
        let s3 = S3Settings {
            endpoint: Some("http://10.200.0.2:9000".into()),
            bucket: Some("data".into()),
            access_key: None,
            secret_key: Some("hidden".into()),
        };
        let args = boot_args(&Subnet::DEFAULT, &s3, 9090, 2_500_000);
        assert_eq!(
            args,
            [
                "net.ip=10.200.0.3/16",
                "net.gw=10.200.0.1",
                "net.tsc_khz=2500000",
                "http.port=9090",
                "s3.endpoint=http://10.200.0.2:9000",
                "s3.bucket=data",
                "s3.secret_key=hidden",
            ]
        );
        // The secret stays out of logs.
        assert!(!format!("{s3:?}").contains("hidden"));
    }
}
