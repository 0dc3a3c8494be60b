// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The in-guest S3 client against a real S3-compatible server (s3s-fs, which verifies
//! SigV4), over real TCP on loopback: the bytes the guest's HTTP client produces, carried by
//! a `std` socket instead of the guest's stack.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::path::Path;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use nexus_guest::Error;
use nexus_guest::io::{IoBuf, ObjectIo};
use nexus_guest::net::{Connector, NetError, PayloadSigning, S3Client, S3Config, Transport};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

const ACCESS_KEY: &str = "guest-test-access";
const SECRET_KEY: &str = "guest-test-secret-key";
const BUCKET: &str = "guest-data";

/// Serves `root` as an S3 endpoint on 127.0.0.1; returns the runtime running it and the port.
fn start_s3(root: &Path) -> (tokio::runtime::Runtime, u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let filesystem = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = S3ServiceBuilder::new(filesystem);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let _ = ConnBuilder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (runtime, port)
}

/// A `std` TCP connection as the HTTP client's transport.
struct StdConnection {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Transport for StdConnection {
    fn send(&mut self, data: &[u8]) -> nexus_guest::net::Result<()> {
        self.stream
            .write_all(data)
            .map_err(|e| NetError::Transport(e.to_string()))
    }

    fn recv(&mut self, consume: &mut dyn FnMut(&[u8]) -> usize) -> nexus_guest::net::Result<usize> {
        if self.start == self.end {
            let n = self
                .stream
                .read(&mut self.buf)
                .map_err(|e| NetError::Transport(e.to_string()))?;
            if n == 0 {
                return Ok(0);
            }
            (self.start, self.end) = (0, n);
        }
        let taken = consume(&self.buf[self.start..self.end]);
        self.start += taken;
        Ok(taken)
    }

    fn is_reusable(&mut self) -> bool {
        // Nothing unread, and the server has not closed (a non-blocking peek).
        if self.start != self.end {
            return false;
        }
        self.stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let open = matches!(self.stream.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        self.stream.set_nonblocking(false).unwrap();
        open
    }
}

impl Drop for StdConnection {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

struct StdConnector {
    port: u16,
    connections: std::rc::Rc<std::cell::Cell<u32>>,
}

impl Connector for StdConnector {
    type Connection = StdConnection;

    fn connect(&mut self) -> nexus_guest::net::Result<StdConnection> {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
            .map_err(|e| NetError::Transport(e.to_string()))?;
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        self.connections.set(self.connections.get() + 1);
        Ok(StdConnection {
            stream,
            buf: vec![0u8; 64 * 1024],
            start: 0,
            end: 0,
        })
    }
}

fn wall_clock() -> Option<u64> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.ok().map(|d| d.as_millis() as u64)
}

fn client(
    port: u16,
    secret: &str,
    payload: PayloadSigning,
) -> (S3Client<StdConnector>, std::rc::Rc<std::cell::Cell<u32>>) {
    let connections = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut config = S3Config::new(
        Ipv4Addr::LOCALHOST,
        port,
        BUCKET.into(),
        ACCESS_KEY.into(),
        secret.into(),
    );
    config.payload = payload;
    let connector = StdConnector {
        port,
        connections: connections.clone(),
    };
    (
        S3Client::new(connector, config, Box::new(wall_clock)),
        connections,
    )
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

#[test]
fn sigv4_requests_are_accepted_by_a_real_s3_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s3");
    let bucket_dir = root.join(BUCKET);
    std::fs::create_dir_all(&bucket_dir).unwrap();
    let (_server, port) = start_s3(&root);

    for (payload, prefix) in [
        (PayloadSigning::Signed, "signed"),
        (PayloadSigning::Unsigned, "unsigned"),
    ] {
        let (mut s3, connections) = client(port, SECRET_KEY, payload);
        let big = pattern(4 << 20, 7);
        let key = format!("{prefix}/dir/big object+1.bin");
        s3.put(&key, &big).unwrap();
        assert!(
            std::fs::read(bucket_dir.join(&key)).unwrap() == big,
            "stored bytes"
        );
        s3.put(&format!("{prefix}/small"), b"hello").unwrap();
        s3.put(&format!("{prefix}/empty"), b"").unwrap();

        assert!(s3.get(&key).unwrap() == big);
        assert_eq!(s3.get(&format!("{prefix}/empty")).unwrap(), b"");
        let info = s3.head(&key).unwrap();
        assert_eq!(info.size, big.len() as u64);
        assert!(info.last_modified_ms > 1_600_000_000_000);
        assert!(!info.etag.is_empty());

        // Ranges, through the trait: inside, at the end, past the end.
        assert_eq!(
            ObjectIo::get_range(&mut s3, &key, 1000, 10).unwrap(),
            &big[1000..1010]
        );
        assert_eq!(
            ObjectIo::get_range(&mut s3, &key, (4 << 20) - 3, 10).unwrap(),
            &big[(4 << 20) - 3..]
        );
        assert!(
            ObjectIo::get_range(&mut s3, &key, 5 << 20, 10)
                .unwrap()
                .is_empty()
        );
        let mut buf = s3.alloc(4096).unwrap();
        assert_eq!(s3.get_into(&key, 8192, &mut buf).unwrap(), big.len() as u64);
        assert_eq!(&buf[..], &big[8192..8192 + buf.capacity()]);
        let mut out = s3.alloc(3).unwrap();
        out.append_slice(b"abc").unwrap();
        s3.put_buf(&format!("{prefix}/buf"), &out).unwrap();
        assert_eq!(s3.get(&format!("{prefix}/buf")).unwrap(), b"abc");

        // LIST with pages.
        for i in 0..5 {
            s3.put(&format!("{prefix}/many/{i}"), &[i]).unwrap();
        }
        let page = s3.list(&format!("{prefix}/"), None).unwrap();
        let keys: Vec<&str> = page.entries.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&key.as_str()), "{keys:?}");
        assert!(keys.contains(&format!("{prefix}/many/4").as_str()));
        assert_eq!(
            page.entries.iter().find(|e| e.key == key).unwrap().size,
            big.len() as u64
        );
        assert_eq!(page.next_token, None);

        // DELETE, then the errors the Nexus client would give.
        s3.delete(&format!("{prefix}/small")).unwrap();
        assert!(matches!(
            s3.get(&format!("{prefix}/small")),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            s3.head(&format!("{prefix}/small")),
            Err(Error::NotFound(_))
        ));
        s3.delete(&format!("{prefix}/small")).unwrap();

        // Everything went over one kept-alive connection.
        assert_eq!(connections.get(), 1, "{:?}", s3.http().stats());
        assert!(s3.http().stats().reused >= 15);
    }

    // A wrong secret is refused, as the Nexus client's PermissionDenied.
    let (mut wrong, _) = client(port, "not-the-secret", PayloadSigning::Signed);
    match wrong.put("signed/evil", b"x") {
        Err(Error::PermissionDenied(message)) => {
            assert!(message.contains("SignatureDoesNotMatch"), "{message}")
        }
        other => panic!("wrong secret: {other:?}"),
    }
    assert!(matches!(
        wrong.get("signed/small"),
        Err(Error::PermissionDenied(_))
    ));
    assert!(!bucket_dir.join("signed/evil").exists());

    // A clock far off is corrected from the server's Date, once.
    let connections = std::rc::Rc::new(std::cell::Cell::new(0));
    let config = S3Config::new(
        Ipv4Addr::LOCALHOST,
        port,
        BUCKET.into(),
        ACCESS_KEY.into(),
        SECRET_KEY.into(),
    );
    let connector = StdConnector { port, connections };
    let mut skewed = S3Client::new(connector, config, Box::new(|| Some(1_000_000_000_000)));
    assert_eq!(skewed.get("signed/buf").unwrap(), b"abc");
    assert_eq!(skewed.stats().skew_retries, 1);
    assert_eq!(skewed.get("signed/buf").unwrap(), b"abc");
    assert_eq!(skewed.stats().skew_retries, 1);
}
