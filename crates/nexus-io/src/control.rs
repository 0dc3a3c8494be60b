// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A client of the backend's control socket (`docs/nexus-io.md`, "The backend's control
//! socket"): one JSON object per line, one reply line per request.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Longest reply line accepted (an `invoke` reply carries the function's result).
const MAX_REPLY_LEN: u64 = 192 << 20;

#[derive(Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request<'a> {
    Attach {
        vm: &'a str,
        tenant: &'a str,
    },
    Hint {
        vm: &'a str,
        key: &'a str,
    },
    Detach {
        vm: &'a str,
    },
    Invoke {
        vm: &'a str,
        input: InvokeInput<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        return_output: Option<bool>,
    },
    Parked {
        vm: &'a str,
        timeout_ms: u64,
    },
    Stats,
}

/// The input of an [`ControlClient::invoke`].
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InvokeInput<'a> {
    /// An object of the VM's tenant.
    Key(&'a str),
    /// Inline text.
    Inline(&'a str),
}

/// The backend's answer to `invoke`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InvokeReply {
    /// `success` or `error`.
    pub outcome: String,
    /// Length of the function's result.
    pub output_len: u64,
    /// The result: text, or base64 if `output_encoding` says so.
    pub output: String,
    /// `utf8` or `base64`.
    pub output_encoding: String,
    /// Where the invocation spent its time (microseconds, by name).
    pub timings: std::collections::BTreeMap<String, u64>,
    /// Payload bytes the backend wrote into the VM's window during the invocation (its
    /// input, GET data, …); 0 from a backend that does not report it.
    #[serde(default)]
    pub bytes_in: u64,
    /// Payload bytes the backend read out of the VM's window during the invocation (PUT
    /// data, the result, …); 0 from a backend that does not report it.
    #[serde(default)]
    pub bytes_out: u64,
    /// Ring requests the VM made during the invocation, its `NEXT` and `COMPLETE` included;
    /// 0 from a backend that does not report it.
    #[serde(default)]
    pub requests: u64,
}

/// The backend's answer to `stats`: what it is doing now and has done since it started.
///
/// The backend's own type has the same fields; a field this version does not know is
/// ignored, and one the backend does not send is 0.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct BackendStats {
    /// The backend's process ID.
    pub pid: u32,
    /// VMs attached now.
    pub vms: u64,
    /// Ring requests being served now, over all VMs (a parked `NEXT` counts).
    pub in_flight: u64,
    /// Invocations queued and not yet taken by a `NEXT`, over all VMs.
    pub queued_invocations: u64,
    /// Acknowledged write-behind uploads not yet durable.
    pub uploads_pending: u64,
    /// Payload bytes written into VM windows since the backend started.
    pub bytes_in: u64,
    /// Payload bytes read out of VM windows since the backend started.
    pub bytes_out: u64,
    /// Ring requests served since the backend started.
    pub requests: u64,
    /// The backend's resident set, in bytes.
    pub rss_bytes: u64,
    /// The backend's user plus system CPU time, in seconds.
    pub cpu_seconds: f64,
}

impl Request<'_> {
    fn name(&self) -> &'static str {
        match self {
            Request::Attach { .. } => "attach",
            Request::Hint { .. } => "hint",
            Request::Detach { .. } => "detach",
            Request::Invoke { .. } => "invoke",
            Request::Parked { .. } => "parked",
            Request::Stats => "stats",
        }
    }
}

#[derive(Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default)]
    socket: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    stats: Option<BackendStats>,
    #[serde(flatten)]
    invoked: Option<InvokeReply>,
}

/// The connection, read through a buffer and written directly, one descriptor for both
/// (and shared with the device's backend monitor, which watches it for hang-ups).
#[derive(Debug)]
struct SharedStream(Arc<UnixStream>);

impl Read for SharedStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&*self.0).read(buf)
    }
}

/// A connection to the backend's control socket.
///
/// The device keeps one open for the life of the VM (the backend treats its closing as the
/// VM going away); a node daemon may open its own to send prefetch hints.
#[derive(Debug)]
pub struct ControlClient {
    /// Requests are written through `reader.get_ref()`: the same descriptor.
    reader: BufReader<SharedStream>,
}

impl ControlClient {
    /// Connects to `path`. Every later request fails rather than wait longer than `timeout`
    /// for the backend.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let connect_error = |source| Error::ControlConnect {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_error)?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(connect_error)?;
        Ok(ControlClient {
            reader: BufReader::new(SharedStream(Arc::new(stream))),
        })
    }

    /// `attach`: asks for a vhost-user socket for VM `vm` of tenant `tenant`; returns its path.
    pub fn attach(&mut self, vm: &str, tenant: &str) -> Result<PathBuf> {
        let reply = self.request(&Request::Attach { vm, tenant })?;
        reply
            .socket
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .ok_or(Error::ControlReply {
                op: "attach",
                source: None,
            })
    }

    /// `hint`: the next invocation of VM `vm` will read object `key`.
    pub fn hint(&mut self, vm: &str, key: &str) -> Result<()> {
        self.request(&Request::Hint { vm, key }).map(drop)
    }

    /// `detach`: drops VM `vm`'s session.
    pub fn detach(&mut self, vm: &str) -> Result<()> {
        self.request(&Request::Detach { vm }).map(drop)
    }

    /// `invoke`: runs one invocation on VM `vm` and waits for it to complete (give the
    /// connection a timeout long enough). `output` stores the result there; `request_id`
    /// is passed in the invocation context.
    pub fn invoke(
        &mut self,
        vm: &str,
        input: InvokeInput<'_>,
        output: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<InvokeReply> {
        self.invoke_request(Request::Invoke {
            vm,
            input,
            output,
            request_id,
            return_output: None,
        })
    }

    /// `invoke` with the result stored at `output` and left out of the reply (which still
    /// carries its length, and the error document if the function failed): for a caller
    /// that needs the result stored, not sent back. A large result then costs no encoding
    /// and no copy through the control socket.
    pub fn invoke_stored(
        &mut self,
        vm: &str,
        input: InvokeInput<'_>,
        output: &str,
        request_id: Option<&str>,
    ) -> Result<InvokeReply> {
        self.invoke_request(Request::Invoke {
            vm,
            input,
            output: Some(output),
            request_id,
            return_output: Some(false),
        })
    }

    fn invoke_request(&mut self, request: Request<'_>) -> Result<InvokeReply> {
        let reply = self.request(&request)?;
        reply.invoked.ok_or(Error::ControlReply {
            op: "invoke",
            source: None,
        })
    }

    /// `parked`: waits (at most `timeout`) until VM `vm` has a `NEXT` parked.
    pub fn parked(&mut self, vm: &str, timeout: Duration) -> Result<()> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.request(&Request::Parked { vm, timeout_ms }).map(drop)
    }

    /// `stats`: the backend's figures (VMs, queue depth, traffic totals, memory, CPU time).
    pub fn stats(&mut self) -> Result<BackendStats> {
        let reply = self.request(&Request::Stats)?;
        reply.stats.ok_or(Error::ControlReply {
            op: "stats",
            source: None,
        })
    }

    /// The connection (to watch it for hang-ups).
    pub(crate) fn stream(&self) -> &Arc<UnixStream> {
        &self.reader.get_ref().0
    }

    fn request(&mut self, request: &Request<'_>) -> Result<Reply> {
        let op = request.name();
        let mut line = serde_json::to_vec(request).map_err(|e| Error::ControlReply {
            op,
            source: Some(e),
        })?;
        line.push(b'\n');
        (&**self.stream())
            .write_all(&line)
            .map_err(Error::ControlIo)?;
        let mut reply = String::new();
        let n = (&mut self.reader)
            .take(MAX_REPLY_LEN)
            .read_line(&mut reply)
            .map_err(Error::ControlIo)?;
        if n == 0 {
            return Err(Error::ControlClosed);
        }
        if !reply.ends_with('\n') {
            return Err(Error::ControlReply { op, source: None });
        }
        let reply: Reply = serde_json::from_str(&reply).map_err(|e| Error::ControlReply {
            op,
            source: Some(e),
        })?;
        if !reply.ok {
            return Err(Error::ControlRefused {
                op,
                message: reply.error.unwrap_or_default(),
            });
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    fn serve(
        replies: &'static [&'static str],
    ) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<Vec<String>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut seen = Vec::new();
            for reply in replies {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                seen.push(line);
                writer.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        (dir, path, handle)
    }

    #[test]
    fn invoke_stored_asks_for_no_output() {
        let (_dir, path, server) = serve(&[
            "{\"ok\":true,\"outcome\":\"success\",\"output_len\":4096,\"output\":\"\",\"output_encoding\":\"none\",\"timings\":{}}\n",
        ]);
        let mut c = ControlClient::connect(&path, Duration::from_secs(5)).unwrap();
        let reply = c
            .invoke_stored("1", InvokeInput::Key("in/x"), "out/y", Some("r"))
            .unwrap();
        assert_eq!(
            (
                reply.output_len,
                reply.output.as_str(),
                reply.output_encoding.as_str()
            ),
            (4096, "", "none")
        );
        assert_eq!(
            server.join().unwrap()[0],
            "{\"op\":\"invoke\",\"vm\":\"1\",\"input\":{\"key\":\"in/x\"},\"output\":\"out/y\",\"request_id\":\"r\",\"return_output\":false}\n"
        );
    }

    #[test]
    fn invoke_and_parked() {
        let (_dir, path, server) = serve(&[
            "{\"ok\":true}\n",
            "{\"ok\":true,\"outcome\":\"success\",\"output_len\":3,\"output\":\"42\\n\",\"output_encoding\":\"utf8\",\"timings\":{\"function_us\":7},\"bytes_in\":105,\"bytes_out\":3,\"requests\":4}\n",
            "{\"ok\":true}\n",
        ]);
        let mut c = ControlClient::connect(&path, Duration::from_secs(5)).unwrap();
        c.parked("1", Duration::from_millis(250)).unwrap();
        let reply = c
            .invoke("1", InvokeInput::Key("in/x"), Some("out/y"), None)
            .unwrap();
        assert_eq!(reply.outcome, "success");
        assert_eq!(reply.output, "42\n");
        assert_eq!(reply.output_len, 3);
        assert_eq!(reply.timings["function_us"], 7);
        assert_eq!(
            (reply.bytes_in, reply.bytes_out, reply.requests),
            (105, 3, 4)
        );
        // A bare `ok` is not an invoke reply.
        assert!(matches!(
            c.invoke("1", InvokeInput::Inline("hi"), None, Some("r")),
            Err(Error::ControlReply { op: "invoke", .. })
        ));
        let seen = server.join().unwrap();
        assert_eq!(
            seen[0],
            "{\"op\":\"parked\",\"vm\":\"1\",\"timeout_ms\":250}\n"
        );
        assert_eq!(
            seen[1],
            "{\"op\":\"invoke\",\"vm\":\"1\",\"input\":{\"key\":\"in/x\"},\"output\":\"out/y\"}\n"
        );
        assert_eq!(
            seen[2],
            "{\"op\":\"invoke\",\"vm\":\"1\",\"input\":{\"inline\":\"hi\"},\"request_id\":\"r\"}\n"
        );
    }

    #[test]
    fn stats_and_older_backends() {
        let (_dir, path, server) = serve(&[
            "{\"ok\":true,\"stats\":{\"pid\":4242,\"vms\":2,\"in_flight\":1,\"queued_invocations\":3,\"uploads_pending\":4,\"bytes_in\":5000,\"bytes_out\":600,\"requests\":70,\"rss_bytes\":8192,\"cpu_seconds\":1.25,\"a_later_field\":[1]}}\n",
            "{\"ok\":true,\"stats\":{\"pid\":9}}\n",
            "{\"ok\":true}\n",
            "{\"ok\":true,\"outcome\":\"error\",\"output_len\":0,\"output\":\"\",\"output_encoding\":\"utf8\",\"timings\":{}}\n",
        ]);
        let mut c = ControlClient::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(
            c.stats().unwrap(),
            BackendStats {
                pid: 4242,
                vms: 2,
                in_flight: 1,
                queued_invocations: 3,
                uploads_pending: 4,
                bytes_in: 5000,
                bytes_out: 600,
                requests: 70,
                rss_bytes: 8192,
                cpu_seconds: 1.25,
            }
        );
        // Fields the backend does not send are 0.
        assert_eq!(
            c.stats().unwrap(),
            BackendStats {
                pid: 9,
                ..BackendStats::default()
            }
        );
        assert!(matches!(
            c.stats(),
            Err(Error::ControlReply { op: "stats", .. })
        ));
        // An invoke reply without the traffic fields (an older backend) still parses.
        let reply = c.invoke("1", InvokeInput::Inline("x"), None, None).unwrap();
        assert_eq!(reply.outcome, "error");
        assert_eq!((reply.bytes_in, reply.bytes_out, reply.requests), (0, 0, 0));
        let seen = server.join().unwrap();
        assert_eq!(seen[0], "{\"op\":\"stats\"}\n");
        assert_eq!(seen[2], "{\"op\":\"stats\"}\n");
    }

    #[test]
    fn speaks_json_lines() {
        let (_dir, path, server) = serve(&[
            "{\"ok\":true,\"socket\":\"/run/vm-1.sock\"}\n",
            "{\"ok\":true}\n",
            "{\"ok\":false,\"error\":\"VM 1 is not attached\"}\n",
            "{\"ok\":true}\n",
            "not json\n",
        ]);
        let mut c = ControlClient::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(c.attach("1", "t").unwrap(), PathBuf::from("/run/vm-1.sock"));
        c.hint("1", "in/x").unwrap();
        let e = c.detach("1").unwrap_err();
        assert!(
            matches!(&e, Error::ControlRefused { op: "detach", message } if message == "VM 1 is not attached")
        );
        // An attach reply without a socket is malformed.
        assert!(matches!(
            c.attach("1", "t"),
            Err(Error::ControlReply { op: "attach", .. })
        ));
        assert!(matches!(c.detach("1"), Err(Error::ControlReply { .. })));
        let seen = server.join().unwrap();
        assert_eq!(
            seen[0],
            "{\"op\":\"attach\",\"vm\":\"1\",\"tenant\":\"t\"}\n"
        );
        assert_eq!(seen[1], "{\"op\":\"hint\",\"vm\":\"1\",\"key\":\"in/x\"}\n");
        assert_eq!(seen[2], "{\"op\":\"detach\",\"vm\":\"1\"}\n");
        // The server is gone.
        assert!(matches!(
            c.hint("1", "k"),
            Err(Error::ControlClosed | Error::ControlIo(_))
        ));
    }
}
