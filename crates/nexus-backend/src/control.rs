// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control socket: JSON lines from the VMM and the node daemon (`docs/nexus-io.md`).
//!
//! | request | reply |
//! |---|---|
//! | `{"op":"attach","vm":"ID","tenant":"NAME"}` | `{"ok":true,"socket":"PATH"}` |
//! | `{"op":"hint","vm":"ID","key":"KEY"}` | `{"ok":true}` |
//! | `{"op":"detach","vm":"ID"}` | `{"ok":true}` |
//! | anything else | `{"ok":false,"error":"MESSAGE"}` |
//!
//! A connection that closes detaches the VMs it attached (and that are still attached by it).

use std::future::Future;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::server::Backend;

/// The longest request line accepted.
pub const MAX_LINE: usize = 64 << 10;

/// One control request.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum ControlRequest {
    /// Create a vhost-user socket for VM `vm`, bound to tenant `tenant`.
    Attach {
        /// The VM's ID.
        vm: String,
        /// The tenant's name.
        tenant: String,
    },
    /// Prefetch object `key` for VM `vm`.
    Hint {
        /// The VM's ID.
        vm: String,
        /// The object key.
        key: String,
    },
    /// Drop VM `vm`'s session.
    Detach {
        /// The VM's ID.
        vm: String,
    },
}

/// One control reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The vhost-user socket (attach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ControlReply {
    /// `{"ok":true}`.
    pub fn ok() -> Self {
        Self {
            ok: true,
            socket: None,
            error: None,
        }
    }

    /// `{"ok":false,"error":MESSAGE}`.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            socket: None,
            error: Some(message.into()),
        }
    }

    /// The reply as one line of JSON, with its `\n`.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"ok":false,"error":"internal error"}"#.to_owned());
        line.push('\n');
        line
    }
}

/// Parses one request line (without its `\n`); the error says what is wrong.
pub fn parse_request(line: &str) -> Result<ControlRequest, String> {
    serde_json::from_str(line.trim_end_matches('\r')).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            format!("malformed line: {e}")
        } else {
            format!("bad request: {e}")
        }
    })
}

impl Backend {
    /// Serves control connections from `listener` until `shutdown` resolves.
    pub async fn serve_control<F>(&self, listener: UnixListener, shutdown: F)
    where
        F: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let backend = self.clone();
                        tokio::spawn(async move { backend.control_connection(stream).await });
                    }
                    Err(e) => {
                        log::warn!("control socket: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    async fn control_connection(self, stream: UnixStream) {
        let (reader, mut writer) = stream.into_split();
        let mut reader = BufReader::new(reader);
        let mut attached: Vec<(String, u64)> = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await;
            let reply = match read {
                Ok(0) => break,
                Err(e) => {
                    log::info!("control connection failed: {e}");
                    break;
                }
                Ok(_) if !line.ends_with(b"\n") && line.len() > MAX_LINE => {
                    let reply = ControlReply::error(format!("line longer than {MAX_LINE} bytes"));
                    let _ = writer.write_all(reply.to_line().as_bytes()).await;
                    break;
                }
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    self.control_request(text.trim_end_matches('\n'), &mut attached)
                        .await
                }
            };
            if writer.write_all(reply.to_line().as_bytes()).await.is_err() {
                break;
            }
        }
        // The VMM's connection closing means its VMs went away.
        for (vm, id) in attached {
            let backend = self.clone();
            let _ = tokio::task::spawn_blocking(move || backend.detach_if(&vm, id)).await;
        }
    }

    async fn control_request(&self, line: &str, attached: &mut Vec<(String, u64)>) -> ControlReply {
        let request = match parse_request(line) {
            Ok(request) => request,
            Err(message) => return ControlReply::error(message),
        };
        log::debug!("control: {request:?}");
        match request {
            ControlRequest::Attach { vm, tenant } => match self.attach_tracked(&vm, &tenant) {
                Ok((path, id)) => {
                    attached.push((vm, id));
                    ControlReply {
                        socket: Some(socket_string(&path)),
                        ..ControlReply::ok()
                    }
                }
                Err(e) => ControlReply::error(e.to_string()),
            },
            ControlRequest::Hint { vm, key } => match self.hint(&vm, &key) {
                Ok(()) => ControlReply::ok(),
                Err(e) => ControlReply::error(e.to_string()),
            },
            ControlRequest::Detach { vm } => {
                let backend = self.clone();
                let name = vm.clone();
                match tokio::task::spawn_blocking(move || backend.detach(&name)).await {
                    Ok(Ok(())) => {
                        attached.retain(|(v, _)| *v != vm);
                        ControlReply::ok()
                    }
                    Ok(Err(e)) => ControlReply::error(e.to_string()),
                    Err(e) => ControlReply::error(format!("detach failed: {e}")),
                }
            }
        }
    }
}

/// The runtime directory was checked to be UTF-8 and VM IDs are ASCII.
fn socket_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse_request(r#"{"op":"attach","vm":"vm1","tenant":"t"}"#),
            Ok(ControlRequest::Attach {
                vm: "vm1".into(),
                tenant: "t".into()
            })
        );
        assert_eq!(
            parse_request(r#"{"vm":"a","key":"in/x","op":"hint"}"#),
            Ok(ControlRequest::Hint {
                vm: "a".into(),
                key: "in/x".into()
            })
        );
        assert_eq!(
            parse_request("{\"op\":\"detach\",\"vm\":\"a\"}\r"),
            Ok(ControlRequest::Detach { vm: "a".into() })
        );
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"op":"launch","vm":"a"}"#,
            r#"{"op":"attach","vm":"a"}"#,
            r#"{"op":"attach","vm":"a","tenant":"t","extra":1}"#,
            r#"{"op":"detach","vm":7}"#,
            r#"["detach"]"#,
            r#"{"op":"detach","vm":"a"} trailing"#,
        ] {
            let error = parse_request(bad).unwrap_err();
            assert!(!error.is_empty(), "{bad}");
        }
        assert!(
            parse_request("{")
                .unwrap_err()
                .starts_with("malformed line")
        );
        assert!(
            parse_request(r#"{"op":"nope"}"#)
                .unwrap_err()
                .starts_with("bad request")
        );
    }

    #[test]
    fn replies() {
        assert_eq!(ControlReply::ok().to_line(), "{\"ok\":true}\n");
        assert_eq!(
            ControlReply::error("Unknown tenant `x`").to_line(),
            "{\"ok\":false,\"error\":\"Unknown tenant `x`\"}\n"
        );
        let attach = ControlReply {
            socket: Some("/run/nexus/vm1.sock".into()),
            ..ControlReply::ok()
        };
        assert_eq!(
            attach.to_line(),
            "{\"ok\":true,\"socket\":\"/run/nexus/vm1.sock\"}\n"
        );
    }
}
