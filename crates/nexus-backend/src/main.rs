// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `nexus-backend`: the shared I/O backend of the Nexus hypervisor. This binary only parses
//! its arguments; everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nexus_backend::{BackendConfig, S3Options, StoreConfig, StoreUrl, TenantSpec};

const AFTER_HELP: &str = "\
How it is used:
  The VMM (or node daemon) connects to the control socket and sends JSON lines:
    {\"op\":\"attach\",\"vm\":\"vm1\",\"tenant\":\"alpha\"}  -> {\"ok\":true,\"socket\":\"<runtime dir>/vm1.sock\"}
    {\"op\":\"hint\",\"vm\":\"vm1\",\"key\":\"alpha/in/data\"} -> {\"ok\":true}   (prefetch)
    {\"op\":\"detach\",\"vm\":\"vm1\"}                     -> {\"ok\":true}
  then connects to the returned socket as the VM's vhost-user frontend, sharing only the
  VM's I/O window. Closing the control connection detaches the VMs it attached.

Examples:
  # Objects as files under /srv/objects, two tenants confined to their own prefixes:
  nexus-backend --listen /run/nexus/backend.sock --store file:///srv/objects \\
      --tenant alpha=tenants/alpha --tenant beta=tenants/beta

  # An S3-compatible server on loopback (credentials from the usual AWS variables):
  AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... nexus-backend \\
      --listen /run/nexus/backend.sock --store s3://nexus-data \\
      --s3-endpoint http://127.0.0.1:9000 --tenant alpha=nexus-data/alpha \\
      --http-allow api.example.com

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=info) to see them. SIGINT or SIGTERM stops
the backend: VMs are detached, sockets removed, pending write-behind uploads finished.";

/// The shared I/O backend of the Nexus hypervisor: serves object storage, HTTP, logs and
/// invocations to many function VMs at once over vhost-user, through one I/O engine.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, after_help = AFTER_HELP)]
struct Args {
    /// Control socket to listen on (JSON lines: attach, hint, detach).
    #[arg(long, value_name = "SOCKET")]
    listen: PathBuf,

    /// Directory for the per-VM vhost-user sockets [default: `<SOCKET>.vms/` next to the
    /// control socket].
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,

    /// Where objects are stored: file:///DIR (files under DIR) or s3://BUCKET.
    #[arg(
        long,
        value_name = "URL",
        default_value = "file:///var/lib/nexus/objects"
    )]
    store: String,

    /// Endpoint of an S3-compatible service (else AWS_ENDPOINT_URL, else AWS).
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,

    /// S3 region (else AWS_REGION, else us-east-1).
    #[arg(long, value_name = "REGION")]
    s3_region: Option<String>,

    /// S3 access key ID (else AWS_ACCESS_KEY_ID).
    #[arg(long, value_name = "ID")]
    s3_access_key_id: Option<String>,

    /// S3 secret access key (else AWS_SECRET_ACCESS_KEY; prefer the variable: arguments are
    /// visible to other users of the host).
    #[arg(long, value_name = "SECRET")]
    s3_secret_access_key: Option<String>,

    /// Allow a plain-HTTP S3 endpoint that is not on loopback (loopback always is).
    #[arg(long)]
    s3_allow_http: bool,

    /// A tenant and the objects its VMs may touch (repeatable): NAME=PREFIX for a file
    /// store, NAME=BUCKET or NAME=BUCKET/PREFIX for s3://BUCKET. Without any, one tenant
    /// `default` may touch everything.
    #[arg(long = "tenant", value_name = "NAME=BUCKET/PREFIX")]
    tenants: Vec<String>,

    /// A host the HTTP op may reach: HOST (any port) or HOST:PORT (repeatable). Without
    /// any, the HTTP op is refused.
    #[arg(long = "http-allow", value_name = "HOST")]
    http_allow: Vec<String>,

    /// Threads of the shared I/O engine.
    #[arg(long, value_name = "N", default_value_t = 2)]
    io_threads: usize,

    /// Bound of each VM's prefetch cache, in MiB (0 disables prefetching).
    #[arg(long, value_name = "MIB", default_value_t = nexus_backend::DEFAULT_PREFETCH_CACHE_BYTES >> 20)]
    prefetch_cache_mib: u64,

    /// Bound of each VM's pending write-behind bytes, in MiB; beyond it PUTs are synchronous.
    #[arg(long, value_name = "MIB", default_value_t = nexus_backend::DEFAULT_WRITE_BEHIND_BYTES >> 20)]
    write_behind_mib: u64,

    /// Bound of payload bytes staged in the backend's memory over all VMs, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = nexus_backend::DEFAULT_STAGING_BYTES >> 20)]
    staging_mib: u64,
}

/// What the arguments mean.
#[derive(Debug)]
struct Configuration {
    listen: PathBuf,
    io_threads: usize,
    backend: BackendConfig,
}

impl TryFrom<Args> for Configuration {
    type Error = nexus_backend::Error;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        let url = StoreUrl::parse(&args.store)?;
        let runtime_dir = args.runtime_dir.unwrap_or_else(|| {
            let mut dir = args.listen.clone().into_os_string();
            dir.push(".vms");
            PathBuf::from(dir)
        });
        let tenants = args
            .tenants
            .iter()
            .map(|spec| spec.parse::<TenantSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        let s3 = S3Options {
            endpoint: args.s3_endpoint,
            region: args.s3_region,
            access_key_id: args.s3_access_key_id,
            secret_access_key: args.s3_secret_access_key,
            session_token: None,
            allow_http: args.s3_allow_http,
        };
        let mut backend = BackendConfig::new(StoreConfig { url, s3 }, runtime_dir);
        backend.tenants = tenants;
        backend.http.allow = args.http_allow;
        backend.limits.prefetch_cache_bytes = args.prefetch_cache_mib << 20;
        backend.limits.write_behind_bytes = args.write_behind_mib << 20;
        backend.staging_bytes = args.staging_mib << 20;
        // Tenants are checked against the store now, so a typo fails at start.
        nexus_backend::Tenants::from_specs(&backend.tenants, &backend.store.url)?;
        Ok(Self {
            listen: args.listen,
            io_threads: args.io_threads,
            backend,
        })
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Configuration::try_from(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    match nexus_backend::run(config.backend, &config.listen, config.io_threads) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            log::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Configuration, nexus_backend::Error> {
        let mut argv = vec!["nexus-backend"];
        argv.extend_from_slice(args);
        Configuration::try_from(Args::try_parse_from(argv).unwrap())
    }

    #[test]
    fn defaults() {
        let config = parse(&["--listen", "/run/nexus/backend.sock"]).unwrap();
        assert_eq!(config.listen, PathBuf::from("/run/nexus/backend.sock"));
        assert_eq!(
            config.backend.runtime_dir,
            PathBuf::from("/run/nexus/backend.sock.vms")
        );
        assert_eq!(
            config.backend.store.url,
            StoreUrl::File("/var/lib/nexus/objects".into())
        );
        assert!(config.backend.tenants.is_empty());
        assert_eq!(config.io_threads, 2);
    }

    #[test]
    fn s3_with_tenants() {
        let config = parse(&[
            "--listen",
            "/tmp/b.sock",
            "--runtime-dir",
            "/tmp/vms",
            "--store",
            "s3://nexus-data",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--tenant",
            "a=nexus-data/a",
            "--tenant",
            "b=nexus-data/b",
            "--http-allow",
            "example.com",
            "--prefetch-cache-mib",
            "8",
        ])
        .unwrap();
        assert_eq!(config.backend.runtime_dir, PathBuf::from("/tmp/vms"));
        assert_eq!(config.backend.tenants.len(), 2);
        assert_eq!(config.backend.limits.prefetch_cache_bytes, 8 << 20);
        assert_eq!(
            config.backend.store.s3.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(config.backend.http.allow, vec!["example.com".to_owned()]);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["--listen", "s", "--store", "ftp://x"]).is_err());
        assert!(parse(&["--listen", "s", "--tenant", "novalue"]).is_err());
        assert!(
            parse(&[
                "--listen",
                "s",
                "--store",
                "s3://bucket",
                "--tenant",
                "a=other/x"
            ])
            .is_err()
        );
        assert!(
            Args::try_parse_from(["nexus-backend"]).is_err(),
            "--listen is required"
        );
    }
}
