// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The network's boot arguments: [`BootConfig`].
//!
//! In the baseline's world — as in Firecracker-based platforms, where in-guest SDKs are
//! configured by the environment — the guest's address, the S3 endpoint, bucket and the
//! **credentials** reach the guest in its boot arguments (the boot-info block's `argv`), as
//! `key=value` arguments with the prefixes `net.`, `s3.` and `http.`:
//!
//! | argument | meaning | default |
//! |---|---|---|
//! | `net.ip=A.B.C.D/P` | the guest's IPv4 address and prefix length | required |
//! | `net.gw=A.B.C.D` | the default gateway | none (on-link only) |
//! | `net.seed=N` | extra entropy for the stack's generator (decimal or `0x` hex) | none |
//! | `net.tsc_khz=N` | the TSC frequency in kHz (the guest cannot measure it) | 2 000 000 |
//! | `net.time=S` / `net.time_ms=MS` | wall-clock Unix time at boot (request signing) | unknown |
//! | `net.tcp_buffer=BYTES` | each TCP socket's receive and transmit buffer | 262 144 |
//! | `s3.endpoint=http://A.B.C.D:PORT` | the S3 server (an IPv4 literal: there is no DNS) | required for S3 |
//! | `s3.bucket=NAME` | the bucket | required for S3 |
//! | `s3.region=NAME` | the SigV4 region | `us-east-1` |
//! | `s3.access_key=ID`, `s3.secret_key=KEY` | the credentials | required for S3 |
//! | `s3.session_token=TOKEN` | a session token (`x-amz-security-token`) | none |
//! | `s3.payload=signed\|unsigned` | sign the payload's SHA-256, or send `UNSIGNED-PAYLOAD` | `signed` |
//! | `http.port=N` | the port the invocation server listens on | 8080 |
//!
//! Any other argument is the function's own ([`positional_args`]). TLS is off: the endpoint
//! is plain `http://`.

use alloc::string::{String, ToString};
use core::net::Ipv4Addr;
use core::str::FromStr;

use super::error::{NetError, Result};
use super::s3::{PayloadSigning, S3Config};

/// The default size of each TCP socket's buffers: room for a 256 KiB window, so a
/// MiB-size object streams at the link's pace instead of the round trip's.
pub const DEFAULT_TCP_BUFFER: usize = 256 * 1024;
/// The default port of the invocation server.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// The IP side of the network: address, gateway, timing and entropy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Extra entropy from the VMM.
    pub seed: Option<u64>,
    /// The TSC frequency, kHz.
    pub tsc_khz: Option<u64>,
    /// Wall-clock Unix time at boot, milliseconds.
    pub unix_time_ms: Option<u64>,
    /// Each TCP socket's receive buffer (its window) and transmit buffer, bytes.
    pub tcp_buffer: usize,
}

impl NetConfig {
    /// A configuration with `address/prefix_len` and the defaults.
    pub fn new(address: Ipv4Addr, prefix_len: u8) -> Self {
        Self {
            address,
            prefix_len,
            gateway: None,
            seed: None,
            tsc_khz: None,
            unix_time_ms: None,
            tcp_buffer: DEFAULT_TCP_BUFFER,
        }
    }
}

/// Everything the network takes from the boot arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// The IP side.
    pub net: NetConfig,
    /// The S3 side, if the arguments name an endpoint.
    pub s3: Option<S3Config>,
    /// The invocation server's port.
    pub http_port: u16,
}

/// Whether `arg` is one of the network's (`net.`, `s3.` or `http.` key, with `=`).
pub fn is_network_arg(arg: &str) -> bool {
    arg.split_once('=').is_some_and(|(key, _)| {
        key.starts_with("net.") || key.starts_with("s3.") || key.starts_with("http.")
    })
}

/// The arguments that are not the network's: the function's own, in order.
pub fn positional_args<'a>(args: impl Iterator<Item = &'a str>) -> impl Iterator<Item = &'a str> {
    args.filter(|arg| !is_network_arg(arg))
}

fn bad(key: &str, value: &str) -> NetError {
    NetError::BadArgument {
        key: key.to_string(),
        value: value.to_string(),
    }
}

fn number<T: FromStr>(key: &str, value: &str) -> Result<T> {
    value.parse().map_err(|_| bad(key, value))
}

fn seed(key: &str, value: &str) -> Result<u64> {
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).map_err(|_| bad(key, value)),
        None => number(key, value),
    }
}

/// Parses `http://A.B.C.D[:PORT][/]` into `(address, port)`.
pub fn parse_endpoint(value: &str) -> Option<(Ipv4Addr, u16)> {
    let rest = value.strip_prefix("http://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match rest.split_once(':') {
        Some((host, port)) => (host, port.parse().ok()?),
        None => (rest, 80),
    };
    Some((host.parse().ok()?, port))
}

impl BootConfig {
    /// Parses the network's arguments out of `args` (others are ignored). Unknown keys under
    /// the network's prefixes are refused, so a typo does not pass silently.
    pub fn from_args<'a>(args: impl Iterator<Item = &'a str>) -> Result<Self> {
        let mut ip = None;
        let mut net = NetConfig::new(Ipv4Addr::UNSPECIFIED, 0);
        let mut http_port = DEFAULT_HTTP_PORT;
        let mut endpoint = None;
        let mut bucket = None;
        let mut access_key = None;
        let mut secret_key = None;
        let mut region = String::from("us-east-1");
        let mut session_token = None;
        let mut payload = PayloadSigning::Signed;
        for arg in args.filter(|arg| is_network_arg(arg)) {
            let Some((key, value)) = arg.split_once('=') else {
                continue;
            };
            match key {
                "net.ip" => {
                    let (address, prefix) = value.split_once('/').ok_or_else(|| bad(key, value))?;
                    let address: Ipv4Addr = number(key, address)?;
                    let prefix: u8 = number(key, prefix)?;
                    if prefix > 32 || address.is_unspecified() {
                        return Err(bad(key, value));
                    }
                    ip = Some((address, prefix));
                }
                "net.gw" => net.gateway = Some(number(key, value)?),
                "net.seed" => net.seed = Some(seed(key, value)?),
                "net.tsc_khz" => net.tsc_khz = Some(number(key, value)?),
                "net.time" => {
                    let seconds: u64 = number(key, value)?;
                    net.unix_time_ms = Some(seconds.saturating_mul(1000));
                }
                "net.time_ms" => net.unix_time_ms = Some(number(key, value)?),
                "net.tcp_buffer" => {
                    let bytes: usize = number(key, value)?;
                    if !(4096..=(64 << 20)).contains(&bytes) {
                        return Err(bad(key, value));
                    }
                    net.tcp_buffer = bytes;
                }
                "s3.endpoint" => {
                    endpoint = Some(parse_endpoint(value).ok_or_else(|| bad(key, value))?);
                }
                "s3.bucket" => bucket = Some(value.to_string()),
                "s3.region" => region = value.to_string(),
                "s3.access_key" => access_key = Some(value.to_string()),
                "s3.secret_key" => secret_key = Some(value.to_string()),
                "s3.session_token" => session_token = Some(value.to_string()),
                "s3.payload" => {
                    payload = match value {
                        "signed" => PayloadSigning::Signed,
                        "unsigned" => PayloadSigning::Unsigned,
                        _ => return Err(bad(key, value)),
                    }
                }
                "http.port" => http_port = number(key, value)?,
                _ => return Err(bad(key, value)),
            }
        }
        let (address, prefix_len) = ip.ok_or(NetError::MissingArgument("net.ip"))?;
        net.address = address;
        net.prefix_len = prefix_len;
        let s3 = match endpoint {
            None => None,
            Some((host, port)) => {
                let mut config = S3Config::new(
                    host,
                    port,
                    bucket.ok_or(NetError::MissingArgument("s3.bucket"))?,
                    access_key.ok_or(NetError::MissingArgument("s3.access_key"))?,
                    secret_key.ok_or(NetError::MissingArgument("s3.secret_key"))?,
                );
                config.region = region;
                config.session_token = session_token;
                config.payload = payload;
                Some(config)
            }
        };
        Ok(Self { net, s3, http_port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_arguments() {
        let args = [
            "input-key",
            "net.ip=10.0.0.2/24",
            "net.gw=10.0.0.1",
            "net.seed=0x2a",
            "net.tsc_khz=2596094",
            "net.time=1700000000",
            "net.tcp_buffer=131072",
            "s3.endpoint=http://10.0.0.1:9000",
            "s3.bucket=data",
            "s3.region=eu-west-1",
            "s3.access_key=AK",
            "s3.secret_key=SK",
            "s3.payload=unsigned",
            "http.port=9090",
            "output=key",
        ];
        let config = BootConfig::from_args(args.iter().copied()).unwrap();
        assert_eq!(config.net.address, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(config.net.prefix_len, 24);
        assert_eq!(config.net.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(config.net.seed, Some(42));
        assert_eq!(config.net.tsc_khz, Some(2_596_094));
        assert_eq!(config.net.unix_time_ms, Some(1_700_000_000_000));
        assert_eq!(config.net.tcp_buffer, 131_072);
        assert_eq!(config.http_port, 9090);
        let s3 = config.s3.unwrap();
        assert_eq!((s3.host, s3.port), (Ipv4Addr::new(10, 0, 0, 1), 9000));
        assert_eq!(s3.bucket, "data");
        assert_eq!(s3.region, "eu-west-1");
        assert_eq!(
            (s3.access_key.as_str(), s3.secret_key.as_str()),
            ("AK", "SK")
        );
        assert_eq!(s3.payload, PayloadSigning::Unsigned);
        let own: alloc::vec::Vec<&str> = positional_args(args.iter().copied()).collect();
        assert_eq!(own, ["input-key", "output=key"]);
    }

    #[test]
    fn refuses_missing_and_bad_arguments() {
        let parse = |args: &[&str]| BootConfig::from_args(args.iter().copied());
        assert_eq!(parse(&[]), Err(NetError::MissingArgument("net.ip")));
        assert!(matches!(
            parse(&["net.ip=10.0.0.2"]),
            Err(NetError::BadArgument { .. })
        ));
        assert!(matches!(
            parse(&["net.ip=10.0.0.2/33"]),
            Err(NetError::BadArgument { .. })
        ));
        assert!(matches!(
            parse(&["net.ip=10.0.0.2/8", "net.typo=1"]),
            Err(NetError::BadArgument { .. })
        ));
        assert_eq!(
            parse(&["net.ip=10.0.0.2/8", "s3.endpoint=http://10.0.0.1"]),
            Err(NetError::MissingArgument("s3.bucket"))
        );
        assert!(matches!(
            parse(&["net.ip=10.0.0.2/8", "s3.endpoint=https://10.0.0.1"]),
            Err(NetError::BadArgument { .. })
        ));
        let config = parse(&["net.ip=10.0.0.2/8"]).unwrap();
        assert_eq!(config.s3, None);
        assert_eq!(config.http_port, DEFAULT_HTTP_PORT);
        assert_eq!(
            parse_endpoint("http://1.2.3.4/"),
            Some((Ipv4Addr::new(1, 2, 3, 4), 80))
        );
    }
}
