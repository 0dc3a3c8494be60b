// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The HTTP op end to end: the real `nexus-backend` binary, a guest stand-in sending HTTP
//! requests through its window, and real HTTP servers on loopback. Every way around the
//! allow-list is tried and must be refused without a connection to where it pointed; the
//! backend's bounds (request body, deadline, response body) hold against hostile servers.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::{Answer, BackendProcess, Call, GuestVm, WAIT, pattern};
use nexus_ring::{Command, HttpMethod, LogLevel, Status};

const WINDOW: u64 = 32 << 20;
/// The backend's default bounds (`HttpPolicy::default()`).
const MAX_REQUEST_BYTES: u64 = 8 << 20;
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// What a server does with one request: its path, and the connection to answer on.
type Handler = dyn Fn(&str, &mut TcpStream) + Send + Sync;

/// An HTTP server on loopback, one thread per connection; counts connections and records
/// the request paths.
struct Server {
    port: u16,
    connections: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(handler: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (counted, recorded) = (connections.clone(), paths.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let (handler, recorded) = (handler.clone(), recorded.clone());
                std::thread::spawn(move || {
                    stream.set_read_timeout(Some(WAIT)).unwrap();
                    if let Some(path) = read_request(&mut stream) {
                        recorded.lock().unwrap().push(path.clone());
                        handler(&path, &mut stream);
                    }
                });
            }
        });
        Self {
            port,
            connections,
            paths,
        }
    }

    /// A listener that answers nothing: it only counts who connects.
    fn canary() -> Self {
        Self::start(|_, _| {})
    }

    /// Answers every request with `status` and `body`.
    fn answering(status: &'static str, body: &'static [u8]) -> Self {
        Self::start(move |_, stream| respond(stream, status, &[], body))
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// Reads a request's head and `Content-Length` body; its path.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut request = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let body_at = loop {
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        request.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&request[..body_at]).into_owned();
    let length = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length: ").map(str::to_owned))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    while request.len() < body_at + length {
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        request.extend_from_slice(&buf[..n]);
    }
    head.split(' ').nth(1).map(str::to_owned)
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[String], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn start(dir: &Path, allow: &[String], env: &[(&str, String)]) -> BackendProcess {
    let mut args = vec![
        "--store".to_owned(),
        format!("file://{}", dir.join("objects").display()),
    ];
    for entry in allow {
        args.push("--http-allow".to_owned());
        args.push(entry.clone());
    }
    BackendProcess::start(dir, &args, env)
}

fn attach(backend: &BackendProcess) -> (common::Control, GuestVm) {
    let mut control = backend.connect();
    let connection = control.attach("vm1", "default");
    let vm = GuestVm::connect(connection, WINDOW);
    (control, vm)
}

fn http(vm: &mut GuestVm, method: HttpMethod, url: &str, body: &[u8], timeout_ms: u64) -> Answer {
    let segments: &[&[u8]] = if body.is_empty() { &[] } else { &[body] };
    vm.call(
        &Call::new(Command::Http { method, timeout_ms })
            .key(url.as_bytes())
            .payload(segments)
            .response_meta(1024)
            .buffers(&[4096]),
    )
}

fn get(vm: &mut GuestVm, url: &str) -> Answer {
    http(vm, HttpMethod::Get, url, b"", 10_000)
}

/// Asserts `answer` is `status` with a message containing `text`.
#[track_caller]
fn assert_refused(answer: &Answer, status: Status, text: &str) {
    let message = answer.meta_text();
    assert_eq!(answer.header.status, status, "{message}");
    assert!(message.contains(text), "`{text}` not in: {message}");
}

fn bytes_out(control: &mut common::Control) -> u64 {
    let reply = control.send(r#"{"op":"stats"}"#);
    reply["stats"]["bytes_out"]
        .as_u64()
        .unwrap_or_else(|| panic!("no bytes_out in {reply}"))
}

#[test]
fn ways_around_the_allow_list_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = Server::answering("200 OK", b"ok");
    let named = Server::answering("200 OK", b"named");
    let canary = Server::canary();
    let (a, n, c) = (allowed.port, named.port, canary.port);
    let backend = start(
        dir.path(),
        &[
            format!("http://127.0.0.1:{a}"),
            format!("http://localhost:{n}"),
            "http://allowed.example".to_owned(),
            format!("https://127.0.0.1:{c}"),
        ],
        &[],
    );
    let (_control, mut vm) = attach(&backend);

    for (url, status, why) in [
        // The host is what follows `@`: user info is refused outright.
        (
            format!("http://allowed.example@127.0.0.1:{c}/"),
            Status::PermissionDenied,
            "user info",
        ),
        (
            format!("http://allowed.example@127.0.0.1:{a}/"),
            Status::PermissionDenied,
            "user info",
        ),
        // Parsers disagree on backslashes: refused.
        (
            format!("http://allowed.example\\@127.0.0.1:{c}/"),
            Status::PermissionDenied,
            "backslash",
        ),
        (
            "http://allowed.example\\@evil/".to_owned(),
            Status::PermissionDenied,
            "backslash",
        ),
        // Another port of a listed host.
        (
            format!("http://127.0.0.1:{c}/"),
            Status::PermissionDenied,
            "scheme and port must match",
        ),
        // The same place spelled as a number is the same (unlisted) place.
        (
            format!("http://2130706433:{c}/"),
            Status::PermissionDenied,
            "scheme and port must match",
        ),
        // The scheme must match too.
        (
            format!("https://127.0.0.1:{a}/"),
            Status::PermissionDenied,
            "scheme and port must match",
        ),
        // `localhost` is listed by name, but resolves to loopback, which only an IP-literal
        // entry opens.
        (
            format!("http://localhost:{n}/"),
            Status::PermissionDenied,
            "which is loopback",
        ),
        (
            format!("http://LocalHost:{n}/"),
            Status::PermissionDenied,
            "which is loopback",
        ),
        // An IPv4-mapped IPv6 form of a listed address is another host.
        (
            format!("http://[::ffff:127.0.0.1]:{a}/"),
            Status::PermissionDenied,
            "not on the backend's HTTP allow-list",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            Status::PermissionDenied,
            "host `169.254.169.254` is not on the backend's HTTP allow-list",
        ),
        (
            "file:///etc/passwd".to_owned(),
            Status::InvalidRequest,
            "only http:// and https://",
        ),
    ] {
        let answer = get(&mut vm, &url);
        assert_refused(&answer, status, why);
    }
    assert_eq!(canary.connections(), 0, "a refused request connected");
    assert_eq!(allowed.connections(), 0, "a refused request connected");
    assert_eq!(named.connections(), 0, "a refused request connected");

    // The listed origin itself works.
    let answer = get(&mut vm, &format!("http://127.0.0.1:{a}/fine"));
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(answer.payload, b"ok");
    assert_eq!(allowed.paths(), vec!["/fine".to_owned()]);
    assert_eq!(canary.connections(), 0);
}

#[test]
fn a_name_reaches_loopback_where_its_addresses_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::answering("200 OK", b"by name");
    let port = server.port;
    // `localhost` may resolve to 127.0.0.1, ::1 or both: both are listed with the name's
    // scheme and port.
    let backend = start(
        dir.path(),
        &[
            format!("http://localhost:{port}"),
            format!("http://127.0.0.1:{port}"),
            format!("http://[::1]:{port}"),
        ],
        &[],
    );
    let (_control, mut vm) = attach(&backend);
    let answer = get(&mut vm, &format!("http://localhost:{port}/"));
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(answer.payload, b"by name");
}

#[test]
fn redirects_are_checked_at_every_hop() {
    let dir = tempfile::tempdir().unwrap();
    let canary = Server::canary();
    let named = Server::answering("200 OK", b"named");
    let (c, n) = (canary.port, named.port);
    let server = Server::start(move |path, stream| {
        let location = |to: String| vec![format!("Location: {to}")];
        match path {
            "/metadata" => respond(
                stream,
                "302 Found",
                &location("http://169.254.169.254/latest/meta-data/?token=x".into()),
                b"",
            ),
            "/other-port" => respond(
                stream,
                "307 Temporary Redirect",
                &location(format!("http://127.0.0.1:{c}/")),
                b"",
            ),
            "/by-name" => respond(
                stream,
                "301 Moved Permanently",
                &location(format!("http://localhost:{n}/")),
                b"",
            ),
            "/user-info" => {
                let port = stream.local_addr().unwrap().port();
                respond(
                    stream,
                    "302 Found",
                    &location(format!("http://x@127.0.0.1:{port}/ok")),
                    b"",
                )
            }
            "/hop" => respond(stream, "302 Found", &location("/ok".into()), b""),
            "/loop" => respond(stream, "302 Found", &location("/loop".into()), b""),
            "/ok" => respond(stream, "200 OK", &[], b"arrived"),
            _ => respond(stream, "404 Not Found", &[], b""),
        }
    });
    let a = server.port;
    let backend = start(
        dir.path(),
        &[
            format!("http://127.0.0.1:{a}"),
            format!("http://localhost:{n}"),
        ],
        &[],
    );
    let (_control, mut vm) = attach(&backend);
    let url = |path: &str| format!("http://127.0.0.1:{a}{path}");

    let answer = get(&mut vm, &url("/metadata"));
    assert_refused(
        &answer,
        Status::PermissionDenied,
        "redirect to http://169.254.169.254:80 refused: host `169.254.169.254` is not on the \
         backend's HTTP allow-list",
    );
    assert!(
        !answer.meta_text().contains("token"),
        "{}",
        answer.meta_text()
    );
    let answer = get(&mut vm, &url("/other-port"));
    assert_refused(
        &answer,
        Status::PermissionDenied,
        &format!("redirect to http://127.0.0.1:{c} refused"),
    );
    let answer = get(&mut vm, &url("/by-name"));
    assert_refused(&answer, Status::PermissionDenied, "which is loopback");
    let answer = get(&mut vm, &url("/user-info"));
    assert_refused(&answer, Status::PermissionDenied, "user info");
    assert_eq!(canary.connections(), 0);
    assert_eq!(named.connections(), 0);

    // Hops to allowed places are followed, ten at most.
    let answer = get(&mut vm, &url("/hop"));
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(answer.payload, b"arrived");
    let answer = get(&mut vm, &url("/loop"));
    assert_refused(
        &answer,
        Status::BackendUnavailable,
        "more than 10 redirects",
    );
    let loops = server.paths().iter().filter(|p| *p == "/loop").count();
    assert_eq!(loops, 11, "the request and ten redirects");
    // Nothing ever reached `/ok` through a refused hop.
    let oks = server.paths().iter().filter(|p| *p == "/ok").count();
    assert_eq!(oks, 1);
}

#[test]
fn proxy_variables_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = Server::answering("200 OK", b"direct");
    let proxy = Server::answering("200 OK", b"proxied");
    let via = format!("http://127.0.0.1:{}", proxy.port);
    let env: Vec<(&str, String)> = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .map(|name| (name, via.clone()))
    .chain([("NO_PROXY", String::new()), ("no_proxy", String::new())])
    .collect();
    let backend = start(
        dir.path(),
        &[format!("http://127.0.0.1:{}", allowed.port)],
        &env,
    );
    let (_control, mut vm) = attach(&backend);
    let answer = get(&mut vm, &format!("http://127.0.0.1:{}/", allowed.port));
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(answer.payload, b"direct");
    assert_eq!(allowed.connections(), 1);
    assert_eq!(proxy.connections(), 0, "the request went through the proxy");
}

#[test]
fn an_empty_allow_list_refuses_before_copying_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::answering("200 OK", b"");
    let backend = start(dir.path(), &[], &[]);
    let (mut control, mut vm) = attach(&backend);
    let body = pattern(4 << 20, 7);
    let before = bytes_out(&mut control);
    let answer = http(
        &mut vm,
        HttpMethod::Post,
        &format!("http://127.0.0.1:{}/upload", server.port),
        &body,
        10_000,
    );
    assert_refused(
        &answer,
        Status::PermissionDenied,
        "host `127.0.0.1` is not on the backend's HTTP allow-list",
    );
    assert_eq!(bytes_out(&mut control), before, "the body was copied");
    assert_eq!(server.connections(), 0);
    // The counter does move when payload is read (a LOG line).
    let answer = vm.call(
        &Call::new(Command::Log {
            level: LogLevel::Info,
        })
        .payload(&[b"counted\n"]),
    );
    assert_eq!(answer.header.status, Status::Ok);
    assert_eq!(bytes_out(&mut control), before + 8);
}

#[test]
fn a_body_over_the_limit_is_refused_before_copying() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::answering("200 OK", b"stored");
    let url = format!("http://127.0.0.1:{}/upload", server.port);
    let backend = start(
        dir.path(),
        &[format!("http://127.0.0.1:{}", server.port)],
        &[],
    );
    let (mut control, mut vm) = attach(&backend);
    let before = bytes_out(&mut control);
    let body = pattern(MAX_REQUEST_BYTES as usize + 1, 3);
    let answer = http(&mut vm, HttpMethod::Put, &url, &body, 10_000);
    assert_refused(&answer, Status::TooLarge, "at most 8388608");
    assert_eq!(answer.header.total, MAX_REQUEST_BYTES);
    assert_eq!(bytes_out(&mut control), before);
    assert_eq!(server.connections(), 0);
    // At the limit it goes.
    let answer = http(
        &mut vm,
        HttpMethod::Put,
        &url,
        &body[..MAX_REQUEST_BYTES as usize],
        10_000,
    );
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(answer.payload, b"stored");
    assert_eq!(bytes_out(&mut control), before + MAX_REQUEST_BYTES);
}

/// A server that sends a response head, then `chunk` over and over until the connection
/// breaks; reports the bytes of body it sent once it does.
fn endless(head: &'static str, chunk: Vec<u8>, pause: Duration) -> (Server, mpsc::Receiver<u64>) {
    let (ended, ends) = mpsc::channel();
    let ended = Mutex::new(ended);
    let server = Server::start(move |_, stream| {
        let _ = stream.write_all(head.as_bytes());
        let mut sent = 0u64;
        while stream.write_all(&chunk).is_ok() {
            sent += chunk.len() as u64;
            std::thread::sleep(pause);
        }
        let _ = ended.lock().unwrap().send(sent);
    });
    (server, ends)
}

#[test]
fn a_slow_endless_body_ends_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ends) = endless(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"1\r\nx\r\n".to_vec(),
        Duration::from_millis(20),
    );
    let backend = start(
        dir.path(),
        &[format!("http://127.0.0.1:{}", server.port)],
        &[],
    );
    let (_control, mut vm) = attach(&backend);
    let answer = http(
        &mut vm,
        HttpMethod::Get,
        &format!("http://127.0.0.1:{}/drip", server.port),
        b"",
        1_000,
    );
    assert_eq!(
        answer.header.status,
        Status::Timeout,
        "{}",
        answer.meta_text()
    );
    assert_eq!(answer.header.payload_len, 0);
    // The backend hung up: the server's writes fail.
    ends.recv_timeout(WAIT)
        .expect("the backend kept the connection open");
}

#[test]
fn a_long_body_is_cut_at_the_response_limit() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = pattern(64 << 10, 9);
    let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
    framed.extend_from_slice(&chunk);
    framed.extend_from_slice(b"\r\n");
    // Length not announced: the backend reads up to its limit, then stops.
    let (unannounced, unannounced_ends) = endless(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        framed,
        Duration::ZERO,
    );
    // Announced (and far longer than anyone reads): the backend stops once the buffers are
    // full, and says how long the body is.
    let (announced, announced_ends) = endless(
        "HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n",
        chunk.clone(),
        Duration::ZERO,
    );
    let backend = start(
        dir.path(),
        &[
            format!("http://127.0.0.1:{}", unannounced.port),
            format!("http://127.0.0.1:{}", announced.port),
        ],
        &[],
    );
    let (_control, mut vm) = attach(&backend);

    let answer = http(
        &mut vm,
        HttpMethod::Get,
        &format!("http://127.0.0.1:{}/", unannounced.port),
        b"",
        20_000,
    );
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(answer.payload, chunk[..4096]);
    assert_eq!(answer.header.total, u64::MAX, "cut, length unknown");
    let sent = unannounced_ends
        .recv_timeout(WAIT)
        .expect("the backend kept reading");
    assert!(sent >= MAX_RESPONSE_BYTES, "stopped after {sent} bytes");

    let answer = http(
        &mut vm,
        HttpMethod::Get,
        &format!("http://127.0.0.1:{}/", announced.port),
        b"",
        20_000,
    );
    assert_eq!(answer.header.status, Status::Ok, "{}", answer.meta_text());
    assert_eq!(answer.payload, chunk[..4096]);
    assert_eq!(answer.header.total, 1 << 40);
    announced_ends
        .recv_timeout(WAIT)
        .expect("the backend kept reading");
}
