// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The network runtime end to end over the fakes: the guest's stack over the fake virtio-net
//! device, its invocation server and runtime on this thread; a peer stack on a thread as the
//! platform sending invocations (and, for the S3 client, as the store); the VM generation
//! record rewritten between invocations as the VMM does after a restore.

use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::sync::mpsc;
use std::vec;
use std::vec::Vec;

use core::net::Ipv4Addr;
use smoltcp::time::Duration;

use super::*;
use crate::client::{ListPage, ObjectInfo};
use crate::generation::Generation;
use crate::generation::tests::FakeGeneration;
use crate::io::IoBuf;
use crate::net::fake::ChannelLink;
use crate::net::http::{HttpClient, Method, Request};
use crate::net::tests::{GUEST_IP, PEER_IP, wire};
use crate::net::{S3Config, StackConnector};

/// How long one wait of either side may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);
const PORT: u16 = 8080;

/// An in-memory store with one pretend connection, kept and dropped as the S3 client keeps
/// and drops its own.
#[derive(Debug, Default)]
struct MemStore {
    objects: BTreeMap<String, Vec<u8>>,
    /// Reads fail as a store that is down would.
    down: bool,
    connected: bool,
    dropped: u64,
}

impl MemStore {
    fn touch(&mut self) -> crate::Result<()> {
        if self.down {
            return Err(Error::BackendUnavailable("the store is down".to_string()));
        }
        self.connected = true;
        Ok(())
    }
}

impl ObjectIo for MemStore {
    type Buf = Vec<u8>;

    fn alloc(&self, capacity: usize) -> crate::Result<Vec<u8>> {
        Ok(Vec::with_capacity(capacity))
    }

    fn get(&mut self, key: &str) -> crate::Result<Vec<u8>> {
        self.touch()?;
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no object {key}")))
    }

    fn get_range(&mut self, key: &str, offset: u64, len: usize) -> crate::Result<Vec<u8>> {
        let all = self.get(key)?;
        let start = (offset as usize).min(all.len());
        Ok(all[start..(start + len).min(all.len())].to_vec())
    }

    fn get_into(&mut self, key: &str, offset: u64, buf: &mut Vec<u8>) -> crate::Result<u64> {
        let all = self.get(key)?;
        let part = self.get_range(key, offset, buf.capacity())?;
        buf.clear();
        buf.extend_from_slice(&part);
        Ok(all.len() as u64)
    }

    fn put(&mut self, key: &str, data: &[u8]) -> crate::Result<()> {
        self.touch()?;
        if key.starts_with("refused/") {
            return Err(Error::PermissionDenied(format!("{key} is not yours")));
        }
        self.objects.insert(key.to_string(), data.to_vec());
        Ok(())
    }

    fn put_buf(&mut self, key: &str, buf: &Vec<u8>) -> crate::Result<()> {
        self.put(key, buf)
    }

    fn head(&mut self, key: &str) -> crate::Result<ObjectInfo> {
        let size = self.get(key)?.len() as u64;
        Ok(ObjectInfo {
            key: String::new(),
            size,
            last_modified_ms: 0,
            etag: String::new(),
        })
    }

    fn delete(&mut self, key: &str) -> crate::Result<()> {
        self.touch()?;
        self.objects.remove(key);
        Ok(())
    }

    fn list(&mut self, _prefix: &str, _token: Option<&[u8]>) -> crate::Result<ListPage> {
        self.touch()?;
        Ok(ListPage {
            entries: Vec::new(),
            next_token: None,
        })
    }
}

impl NetStore for MemStore {
    fn drop_connections(&mut self) -> u64 {
        let had = core::mem::take(&mut self.connected);
        self.dropped += u64::from(had);
        u64::from(had)
    }

    fn reconnects(&self) -> u64 {
        self.dropped
    }
}

/// A function written once, for any path: upper-cases its input in place; `fail` fails,
/// `id` answers the request id, `big` answers a result allocated from the path.
fn shout<Io: ObjectIo>(
    io: &mut Io,
    mut invocation: Invocation<Io::Buf>,
) -> Result<Output<Io::Buf>, FunctionError> {
    match &invocation.input[..] {
        b"fail" => return Err("no \"fail\"\nallowed".into()),
        b"id" => return Ok(invocation.request_id.into()),
        b"big" => {
            let mut out = io.alloc(3000)?;
            out.resize_for_overwrite(3000)?;
            out.fill(b'Z');
            return Ok(Output::buf(out));
        }
        _ => {}
    }
    invocation.input.make_ascii_uppercase();
    let summary = format!("shouted {} bytes", invocation.input.len());
    Ok(Output::buf(invocation.input).with_summary(summary))
}

/// What the peer got back.
#[derive(Debug, Clone)]
struct Answered {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answered {
    fn header(&self, name: &str) -> Option<&str> {
        crate::net::http::head::find_header(&self.headers, name)
    }
}

type PeerClient = HttpClient<StackConnector<ChannelLink>>;

fn call(
    client: &mut PeerClient,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answered {
    let exchange = client
        .send(&Request {
            method,
            target,
            headers,
            body,
        })
        .unwrap();
    let status = exchange.status();
    let headers = exchange.head().headers.clone();
    let mut body = Vec::new();
    exchange.read_to_vec(&mut body, 1 << 20).unwrap();
    Answered {
        status,
        headers,
        body,
    }
}

fn post(client: &mut PeerClient, headers: &[(&str, &str)], body: &[u8]) -> Answered {
    call(client, Method::Post, INVOKE_PATH, headers, body)
}

#[test]
fn invocations_over_http_inputs_by_key_results_at_keys_and_errors() {
    let (moved_tx, moved_rx) = mpsc::channel::<Ipv4Addr>();
    let (net, peer) = wire(move |net| {
        let mut client = HttpClient::new(StackConnector::new(&net, GUEST_IP, PORT), "guest");
        let mut answers = vec![
            call(&mut client, Method::Get, READY_PATH, &[], b""),
            post(&mut client, &[], b"hello"),
            post(&mut client, &[(header::INPUT_KEY, "in")], b""),
            post(&mut client, &[(header::INPUT_KEY, "missing")], b""),
            post(&mut client, &[(header::INPUT_KEY, "in")], b"and a body"),
            post(&mut client, &[], b"fail"),
            post(&mut client, &[(header::OUTPUT_KEY, "out/1")], b"data"),
            post(&mut client, &[(header::OUTPUT_KEY, "refused/x")], b"x"),
            post(&mut client, &[(header::REQUEST_ID, "req-7")], b"id"),
            post(&mut client, &[], b"big"),
            call(&mut client, Method::Get, "/nope", &[], b""),
            call(&mut client, Method::Put, INVOKE_PATH, &[], b""),
            // The guest's store is down now.
            post(&mut client, &[(header::INPUT_KEY, "in")], b""),
        ];
        let first = client.stats();
        // The VM is restored with a new address: the platform connects there.
        let address = moved_rx.recv().unwrap();
        let mut client = HttpClient::new(StackConnector::new(&net, address, PORT), "guest");
        answers.push(post(&mut client, &[(header::INPUT_KEY, "in")], b""));
        answers.push(call(&mut client, Method::Get, READY_PATH, &[], b""));
        (answers, first)
    });
    let mut store = MemStore::default();
    store.objects.insert("in".to_string(), b"quiet".to_vec());
    let generation = FakeGeneration::new(Generation::BOOT);
    net.with(|stack| stack.watch_generation(Box::new(generation.clone())));
    let mut runtime = NetRuntime::new(&net, PORT, store, Options::new("shout")).unwrap();
    assert_eq!(
        runtime.listening_line(),
        "nexus-net-function: listening on 10.0.0.2:8080"
    );
    let mut console = String::new();
    let mut handler = shout::<MemStore>;
    for _ in 0..12 {
        runtime
            .serve_one(Some(WAIT), &mut console, &mut handler)
            .unwrap();
    }
    runtime.store().down = true;
    runtime
        .serve_one(Some(WAIT), &mut console, &mut handler)
        .unwrap();
    runtime.store().down = false;

    // The VMM restores the VM as generation 1 at 10.0.0.9, behind a new gateway.
    let new_address = Ipv4Addr::new(10, 0, 0, 9);
    generation.set(Generation {
        generation: 1,
        seed: 0x5eed,
        address: Some((new_address, 24)),
        gateway: Some(Ipv4Addr::new(10, 0, 0, 254)),
    });
    let epoch = net.with(|stack| stack.epoch());
    // The first poll takes it (and does nothing else); then the platform is told.
    assert!(net.poll().unwrap());
    net.with(|stack| {
        assert_eq!(stack.generation(), 1);
        assert_eq!(stack.epoch(), epoch + 1, "reseeded: every socket dropped");
        assert_eq!(stack.config().address, new_address);
        assert_eq!(stack.config().gateway, Some(Ipv4Addr::new(10, 0, 0, 254)));
        assert_eq!(stack.stats().renewals, 1);
    });
    moved_tx.send(new_address).unwrap();
    runtime
        .serve_one(Some(WAIT), &mut console, &mut handler)
        .unwrap();
    runtime
        .serve_one(Some(WAIT), &mut console, &mut handler)
        .unwrap();
    assert_eq!(
        runtime.listening_line(),
        "nexus-net-function: listening on 10.0.0.9:8080"
    );

    let (answers, first_client) = peer.join().unwrap();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [
            200, 200, 200, 404, 400, 200, 200, 200, 200, 200, 404, 405, 502, 200, 200
        ]
    );
    // Every answer: keep-alive, generation and reconnects.
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer.header("connection"), Some("keep-alive"), "{i}");
        let generation = if i < 13 { "0" } else { "1" };
        assert_eq!(answer.header(header::GENERATION), Some(generation), "{i}");
        let reconnects = if i < 13 { "0" } else { "1" };
        assert_eq!(answer.header(header::RECONNECTS), Some(reconnects), "{i}");
    }
    assert_eq!(first_client.connections, 1, "one kept-alive connection");
    assert_eq!(answers[1].body, b"HELLO");
    assert_eq!(answers[2].body, b"QUIET");
    let missing = String::from_utf8(answers[3].body.clone()).unwrap();
    assert!(
        missing.starts_with("input missing: Not found") && missing.ends_with('\n'),
        "{missing}"
    );
    assert_eq!(missing.lines().count(), 1);
    assert_eq!(answers[5].header(header::FUNCTION_ERROR), Some("Unhandled"));
    assert_eq!(answers[5].header("content-type"), Some("application/json"));
    assert_eq!(answers[5].body, br#"{"error":"no \"fail\"\nallowed"}"#);
    // Stored: an empty body and the length.
    assert_eq!(answers[6].body, b"");
    assert_eq!(answers[6].header(header::OUTPUT_LEN), Some("4"));
    assert_eq!(answers[6].header(header::FUNCTION_ERROR), None);
    let refused = String::from_utf8(answers[7].body.clone()).unwrap();
    assert!(
        refused.starts_with(r#"{"error":"storing the result at refused/x: "#),
        "{refused}"
    );
    assert_eq!(answers[7].header(header::FUNCTION_ERROR), Some("Unhandled"));
    assert_eq!(answers[7].header(header::OUTPUT_LEN), None);
    assert_eq!(answers[8].body, b"req-7");
    assert_eq!(answers[9].body, vec![b'Z'; 3000]);
    let down = String::from_utf8(answers[12].body.clone()).unwrap();
    assert!(down.starts_with("input in: "), "{down}");
    // After the restore: the new address answers, the pooled connection was dropped.
    assert_eq!(answers[13].body, b"QUIET");
    assert_eq!(runtime.store().objects["out/1"], b"DATA");
    assert!(!runtime.store().objects.contains_key("refused/x"));
    assert_eq!(
        runtime.invocations(),
        8,
        "ready, bad requests and bad inputs are none"
    );
    // Errors only on the console: the two failed invocations.
    assert_eq!(
        console.lines().collect::<Vec<_>>(),
        [
            "shout: invocation 3: no \"fail\"",
            "allowed",
            "shout: invocation 5: storing the result at refused/x: Permission denied: refused/x is not yours",
        ]
    );
}

#[test]
fn a_connection_waiting_on_the_restored_address_finds_the_port_listening() {
    // A second restore at the address of the first: the platform already knows the MAC
    // behind it (no ARP), so its SYN is waiting in the device when the guest's first poll
    // takes the new generation. That poll handles no frame: the port listens again first.
    let address = Ipv4Addr::new(10, 0, 0, 12);
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (net, peer) = wire(move |net| {
        let mut answers = Vec::new();
        for _ in 0..2 {
            go_rx.recv().unwrap();
            let mut client = HttpClient::new(StackConnector::new(&net, address, PORT), "vm");
            let answered = post(&mut client, &[], b"early");
            let stats = client.stats();
            answers.push((answered, (stats.connections, stats.retries)));
        }
        answers
    });
    let generation = FakeGeneration::new(Generation::BOOT);
    net.with(|stack| stack.watch_generation(Box::new(generation.clone())));
    let mut runtime =
        NetRuntime::new(&net, PORT, MemStore::default(), Options::new("early")).unwrap();
    let mut console = String::new();
    for restore in [1u64, 2] {
        generation.set(Generation {
            generation: restore,
            seed: restore,
            address: Some((address, 24)),
            gateway: None,
        });
        go_tx.send(()).unwrap();
        if restore == 2 {
            // The SYN reaches the receive ring before the guest polls at all (as the device
            // fills it while a restored vCPU has not run yet).
            std::thread::sleep(std::time::Duration::from_millis(200));
            net.with(|stack| {
                stack.link_mut().wait().unwrap();
                assert_eq!(stack.link().pending_frames(), 1, "the SYN, waiting");
            });
        }
        runtime
            .serve_one(Some(WAIT), &mut console, &mut shout::<MemStore>)
            .unwrap();
    }
    let answers = peer.join().unwrap();
    assert_eq!(answers.len(), 2);
    for (i, (answered, (connections, retries))) in answers.iter().enumerate() {
        assert_eq!(answered.body, b"EARLY");
        assert_eq!(
            answered.header(header::GENERATION),
            Some(if i == 0 { "1" } else { "2" })
        );
        assert_eq!((*connections, *retries), (1, 0), "not refused, not retried");
    }
    net.with(|stack| {
        assert_eq!(stack.stats().renewals, 2);
        // The boot gateway stays when the record names none.
        assert_eq!(stack.config().gateway, Some(PEER_IP));
    });
}

#[test]
fn the_same_generation_again_changes_nothing() {
    let (net, peer) = wire(|_net| ());
    let generation = FakeGeneration::new(Generation {
        generation: 3,
        ..Generation::BOOT
    });
    net.with(|stack| stack.watch_generation(Box::new(generation.clone())));
    // Watching takes the generation as the stack's own: no renewal.
    net.poll().unwrap();
    net.with(|stack| {
        assert_eq!(stack.generation(), 3);
        assert_eq!((stack.epoch(), stack.stats().renewals), (0, 0));
    });
    // A record that is not valid (no record written) is ignored.
    generation.0.set(None);
    net.poll().unwrap();
    net.with(|stack| assert_eq!(stack.stats().renewals, 0));
    // Without an address: the boot address stays, the stack reseeds.
    generation.set(Generation {
        generation: 4,
        seed: 9,
        address: None,
        gateway: None,
    });
    net.poll().unwrap();
    net.poll().unwrap();
    net.with(|stack| {
        assert_eq!(stack.config().address, GUEST_IP);
        assert_eq!((stack.epoch(), stack.stats().renewals), (1, 1));
        assert_eq!(stack.stats().reseeds, 1);
    });
    peer.join().unwrap();
}

/// A peer playing the S3 server: answers GETs of `/bucket/key` from its objects and PUTs
/// into them, counting connections; `requests` in all.
fn fake_s3(net: &Net<ChannelLink>, requests: usize) -> (Vec<String>, u64) {
    let mut server = HttpServer::new(net, 9000).unwrap();
    let mut objects: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    objects.insert("/bucket/in".to_string(), b"stored input".to_vec());
    let mut seen = Vec::new();
    while seen.len() < requests {
        let request = match server.next_request(Some(WAIT)) {
            Ok(request) => request,
            Err(_) => continue,
        };
        seen.push(format!("{} {}", request.method, request.target));
        match request.method.as_str() {
            "GET" => match objects.get(&request.target) {
                Some(body) => server.respond(200, "application/octet-stream", body),
                None => server.respond(
                    404,
                    "application/xml",
                    b"<Error><Code>NoSuchKey</Code><Message>none</Message></Error>",
                ),
            },
            _ => {
                objects.insert(request.target.clone(), request.body.clone());
                server.respond(200, "text/plain", b"")
            }
        }
        .unwrap();
    }
    (seen, server.stats().connections)
}

#[test]
fn the_s3_client_as_the_store_drops_its_connection_when_the_vm_is_restored() {
    let (net, peer) = wire(|net| fake_s3(&net, 3));
    let generation = FakeGeneration::new(Generation::BOOT);
    net.with(|stack| stack.watch_generation(Box::new(generation.clone())));
    let config = S3Config::new(
        PEER_IP,
        9000,
        "bucket".to_string(),
        "AK".to_string(),
        "SK".to_string(),
    );
    let mut s3 = S3Client::over(&net, config);
    assert_eq!(s3.get("in").unwrap(), b"stored input");
    assert_eq!(NetStore::reconnects(&s3), 0);
    s3.put("out", b"result").unwrap();
    assert_eq!(s3.http().stats().connections, 1, "kept alive");
    // A restore: the stack renews at its next poll; the runtime then drops the pooled
    // connection, which the next request opens anew from the new address.
    generation.set(Generation {
        generation: 1,
        seed: 2,
        address: Some((Ipv4Addr::new(10, 0, 0, 40), 24)),
        gateway: None,
    });
    net.poll().unwrap();
    assert_eq!(s3.drop_connections(), 1);
    assert_eq!(s3.drop_connections(), 0, "one to drop");
    assert_eq!(NetStore::reconnects(&s3), 1);
    assert_eq!(s3.get("in").unwrap(), b"stored input");
    assert_eq!(s3.http().stats().connections, 2);
    let (seen, connections) = peer.join().unwrap();
    assert_eq!(
        seen,
        ["GET /bucket/in", "PUT /bucket/out", "GET /bucket/in"]
    );
    assert_eq!(connections, 2);
}
