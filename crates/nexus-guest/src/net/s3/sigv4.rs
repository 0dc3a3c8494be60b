// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! AWS Signature Version 4 for S3 requests (header authentication).
//!
//! The canonical request — method, URI, query, the signed headers, the payload hash — is
//! hashed into the string to sign, which is signed with a key derived from the secret by a
//! chain of HMAC-SHA256 over the date, region, service and `aws4_request`.
//!
//! The payload hash: S3 accepts either the body's SHA-256 or the literal
//! `UNSIGNED-PAYLOAD`. Over plain HTTP (TLS is off on this path) the body's hash is what
//! protects it — AWS's SDKs sign the payload when they are not on TLS — and every
//! S3-compatible server checks it (AWS, MinIO, Ceph, s3s), so it is the default
//! ([`PayloadSigning::Signed`](super::PayloadSigning)); `UNSIGNED-PAYLOAD` saves a pass over
//! the body and is accepted by the same servers.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::time::amz_date;

/// `x-amz-content-sha256` for an empty body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// `x-amz-content-sha256` without a payload hash.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Percent-encodes `text` as SigV4 wants: unreserved characters (`A-Z a-z 0-9 - . _ ~`)
/// as they are, `/` too unless `encode_slash`, every other byte `%XX` (upper-case hex).
pub fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let keep = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'.' | b'_' | b'~')
            || (byte == b'/' && !encode_slash);
        if keep {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The canonical query string of `pairs` (raw keys and values): each encoded, sorted by key
/// then value, joined with `&`. Also a valid query to send.
pub fn canonical_query(pairs: &[(&str, &str)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
        .collect();
    encoded.sort();
    let mut out = String::new();
    for (i, (k, v)) in encoded.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        let _ = write!(out, "{k}={v}");
    }
    out
}

/// Credentials and scope.
#[derive(Clone, PartialEq, Eq)]
pub struct Signer {
    /// The access key id.
    pub access_key: String,
    /// The secret access key.
    pub secret_key: String,
    /// A session token (`x-amz-security-token`), signed like the other headers.
    pub session_token: Option<String>,
    /// The region of the scope.
    pub region: String,
}

impl core::fmt::Debug for Signer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Signer")
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// What a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Canonical<'a> {
    /// The method.
    pub method: &'a str,
    /// The path, percent-encoded as sent.
    pub path: &'a str,
    /// The canonical query (from [`canonical_query`]), as sent.
    pub query: &'a str,
    /// The `Host` header's value.
    pub host: &'a str,
    /// Other headers to sign, as sent (names lower case).
    pub headers: &'a [(&'a str, &'a str)],
    /// `x-amz-content-sha256`: the body's hex SHA-256, or [`UNSIGNED_PAYLOAD`].
    pub payload_hash: &'a str,
}

impl Signer {
    /// Signs a request made at `unix_ms`; returns the headers to add to it (`x-amz-date`,
    /// `x-amz-content-sha256`, `x-amz-security-token` if any, `authorization`), lower
    /// case.
    pub fn sign(&self, request: &Canonical<'_>, unix_ms: u64) -> Vec<(String, String)> {
        let (stamp, date) = amz_date(unix_ms);
        let mut signed: Vec<(String, String)> = Vec::with_capacity(request.headers.len() + 4);
        signed.push((String::from("host"), String::from(request.host)));
        signed.push((
            String::from("x-amz-content-sha256"),
            String::from(request.payload_hash),
        ));
        signed.push((String::from("x-amz-date"), stamp.clone()));
        if let Some(token) = &self.session_token {
            signed.push((String::from("x-amz-security-token"), token.clone()));
        }
        for (name, value) in request.headers {
            signed.push((name.to_ascii_lowercase(), String::from(value.trim())));
        }
        signed.sort();
        let mut canonical = String::with_capacity(512);
        let _ = write!(
            canonical,
            "{}\n{}\n{}\n",
            request.method, request.path, request.query
        );
        for (name, value) in &signed {
            let _ = writeln!(canonical, "{name}:{value}");
        }
        let names: Vec<&str> = signed.iter().map(|(n, _)| n.as_str()).collect();
        let signed_names = names.join(";");
        let _ = write!(canonical, "\n{signed_names}\n{}", request.payload_hash);

        let scope = alloc::format!("{date}/{}/s3/aws4_request", self.region);
        let to_sign = alloc::format!(
            "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let mut key = hmac(
            alloc::format!("AWS4{}", self.secret_key).as_bytes(),
            date.as_bytes(),
        );
        for part in [self.region.as_bytes(), b"s3", b"aws4_request"] {
            key = hmac(&key, part);
        }
        let signature = hex(&hmac(&key, to_sign.as_bytes()));
        let authorization = alloc::format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={signature}",
            self.access_key
        );
        let mut out = Vec::with_capacity(4);
        out.push((
            String::from("x-amz-content-sha256"),
            String::from(request.payload_hash),
        ));
        out.push((String::from("x-amz-date"), stamp));
        if let Some(token) = &self.session_token {
            out.push((String::from("x-amz-security-token"), token.clone()));
        }
        out.push((String::from("authorization"), authorization));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documented example: "GET Object" with a range, in the SigV4 for S3 guide
    /// (example credentials `AKIAIOSFODNN7EXAMPLE`, 2013-05-24).
    #[test]
    fn matches_the_aws_documentation_example() {
        let signer = Signer {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
            region: "us-east-1".into(),
        };
        // 20130524T000000Z
        let unix_ms = 1_369_353_600_000;
        let headers = signer.sign(
            &Canonical {
                method: "GET",
                path: "/test.txt",
                query: "",
                host: "examplebucket.s3.amazonaws.com",
                headers: &[("range", "bytes=0-9")],
                payload_hash: EMPTY_SHA256,
            },
            unix_ms,
        );
        let authorization = &headers.last().unwrap().1;
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert_eq!(sha256_hex(b""), EMPTY_SHA256);
    }

    #[test]
    fn encodes_paths_and_queries() {
        assert_eq!(uri_encode("a b/c~d+é", false), "a%20b/c~d%2B%C3%A9");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
        assert_eq!(
            canonical_query(&[
                ("prefix", "x/y"),
                ("list-type", "2"),
                ("continuation-token", "a=b")
            ]),
            "continuation-token=a%3Db&list-type=2&prefix=x%2Fy"
        );
    }
}
