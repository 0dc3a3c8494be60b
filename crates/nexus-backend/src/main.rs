// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `nexus-backend`: the shared I/O backend of the Nexus hypervisor. This binary only parses
//! its arguments; everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use nexus_backend::{BackendConfig, ConfigFile, DropTo, RunOptions, StoreUrl, TenantSpec};

/// `--help`'s epilogue, its list of control operations taken from the protocol's own.
fn after_help() -> String {
    let ops: String = nexus_ring::control::OPS
        .iter()
        .map(|(op, what)| format!("    {op:<8} {what}\n"))
        .collect();
    format!(
        "How it is used:
  The VMM (or node daemon) connects to the control socket and sends JSON lines
  ({{\"op\":\"attach\",\"vm\":\"vm1\",\"tenant\":\"alpha\"}}); docs/nexus-io.md has each one:
{ops}  After attach it is the VM's vhost-user frontend on the connection that came with the
  reply (SCM_RIGHTS), sharing only the VM's I/O window. Closing the control connection
  detaches the VMs it attached. Only the backend's user, and the users and groups allowed in
  the config file's [control] section, may connect.

{AFTER_HELP}"
    )
}

const AFTER_HELP: &str = "\
Examples:
  # Objects as files under /srv/objects, two tenants confined to their own prefixes:
  nexus-backend --listen /run/nexus/backend.sock --store file:///srv/objects \\
      --tenant alpha=tenants/alpha --tenant beta=tenants/beta

  # An S3-compatible server on loopback (credentials from the usual AWS variables):
  AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... nexus-backend \\
      --listen /run/nexus/backend.sock --store s3://nexus-data \\
      --s3-endpoint http://127.0.0.1:9000 --tenant alpha=nexus-data/alpha \\
      --http-allow https://api.example.com --http-allow http://10.0.0.5:8080

Configuration file:
  --config FILE reads a TOML file with the store, the tenants, the per-VM limits ([limits]:
  requests in flight, prefetch cache, write-behind bytes and requests, staging share, LOG
  rate and burst, LIST scan budget; a tenant may set its own in [tenants.NAME.limits]), the
  HTTP policy and who may use the control socket. crates/nexus-backend/backend.example.toml
  in the Nexus sources shows every key. Flags given on the command line override the file;
  --tenant and --http-allow replace its whole list. S3 secrets never go in the file: use
  AWS_SECRET_ACCESS_KEY or the file's store.secret_access_key_file.
    nexus-backend --config /etc/nexus/backend.toml
    nexus-backend --config /etc/nexus/backend.toml --listen /tmp/test.sock --io-threads 1

Tenants of their own:
  A [tenants.NAME] table may give the tenant its own store (url = \"s3://BUCKET/PREFIX\" or
  \"file:///DIR\", with its own endpoint, region, access_key_id, secret_access_key_file,
  allow_http), its own HTTP allow-list ([tenants.NAME.http] allow = [...], replacing the
  global one for its VMs) and quotas over all its VMs ([tenants.NAME.quota]: bytes,
  objects, requests_per_second, burst). A request over quota is refused: THROTTLED for the
  request rate, PERMISSION_DENIED naming the quota for bytes and objects.

Reloading:
  SIGHUP, or {\"op\":\"reload\"} on the control socket (the backend's own user or root),
  re-reads the config file (with the same command-line overrides) and replaces the
  tenants' stores, allow-lists, quotas, per-VM limits (for VMs attached from then on) and
  control access, without detaching VMs. A bad file, or one that removes a tenant with
  attached VMs, is refused (logged; the control op returns the error) and the old
  configuration stays. The socket, state directory, I/O threads and staging budget need a
  restart.

Dropping privileges:
  --user and --group make the backend become that user and group once it has read its
  secrets, opened its state directory (given to that user) and bound its control socket;
  it checks that root cannot be regained. Allow the VMM's user on the socket in [control]
  (uids/gids): the backend's own user is then no longer the VMM's. The file store's
  directories must be writable by the new user, and a reload re-reads the config and
  secret files as that user.
    nexus-backend --config /etc/nexus/backend.toml --user nexus-backend --group nexus

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=info) to see them. SIGINT or SIGTERM stops
the backend: VMs are detached, sockets removed, pending write-behind uploads finished.";

/// The shared I/O backend of the Nexus hypervisor: serves object storage, HTTP, logs and
/// invocations to many function VMs at once over vhost-user, through one I/O engine.
#[derive(Parser, Debug, Clone)]
#[command(version, about, long_about = None, after_help = after_help())]
struct Args {
    /// Configuration file (TOML): store, tenants, per-VM limits, HTTP policy, control
    /// access. Flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Control socket to listen on (JSON lines: attach, hint, detach). Required unless the
    /// config file sets `listen`.
    #[arg(long, value_name = "SOCKET")]
    listen: Option<PathBuf>,

    /// The backend's own state (its record of acknowledged write-behind uploads, so that a
    /// restart can tell which were lost) [default: `<SOCKET>.state/` next to the control
    /// socket].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Where objects are stored: file:///DIR (files under DIR) or s3://BUCKET [default:
    /// file:///var/lib/nexus/objects].
    #[arg(long, value_name = "URL")]
    store: Option<String>,

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
    /// `default` may touch everything. Prefixes must not overlap.
    #[arg(long = "tenant", value_name = "NAME=BUCKET/PREFIX")]
    tenants: Vec<String>,

    /// Where the HTTP op may go (repeatable): http://HOST or https://HOST, plus :PORT for
    /// another port than the scheme's default (80/443). HOST is a DNS name, an IPv4 address
    /// or [IPv6]. Loopback, private, link-local and other special addresses are reached only
    /// when listed as IP literals, even through a name that resolves to them. Without any,
    /// the HTTP op is refused.
    #[arg(long = "http-allow", value_name = "SCHEME://HOST[:PORT]")]
    http_allow: Vec<String>,

    /// Threads of the shared I/O engine [default: 2].
    #[arg(long, value_name = "N")]
    io_threads: Option<usize>,

    /// Bound of each VM's prefetch cache, in MiB (0 disables prefetching) [default: 64].
    #[arg(long, value_name = "MIB")]
    prefetch_cache_mib: Option<u64>,

    /// Bound of each VM's pending write-behind bytes, in MiB; beyond it PUTs are synchronous
    /// [default: 256].
    #[arg(long, value_name = "MIB")]
    write_behind_mib: Option<u64>,

    /// Bound of payload bytes staged in the backend's memory over all VMs, in MiB
    /// [default: 1024].
    #[arg(long, value_name = "MIB")]
    staging_mib: Option<u64>,

    /// Become this user (a name, or a number) once secrets are read, the state directory is
    /// opened and the control socket is bound; without --group, a named user's primary
    /// group. Allow the VMM's user in the config file's [control] section.
    #[arg(long, value_name = "NAME|UID")]
    user: Option<String>,

    /// Become this group (a name, or a number), as --user does.
    #[arg(long, value_name = "NAME|GID")]
    group: Option<String>,

    /// Run without the seccomp filters each kind of thread gets (docs/security.md).
    #[arg(long)]
    no_seccomp: bool,
}

/// Why the arguments cannot be used.
#[derive(Debug, thiserror::Error)]
enum ArgsError {
    /// The backend refused them.
    #[error(transparent)]
    Backend(#[from] nexus_backend::Error),
    /// No control socket anywhere.
    #[error("No control socket: give --listen SOCKET, or `listen` in the config file")]
    NoListen,
}

/// What the arguments mean.
#[derive(Debug)]
struct Configuration {
    listen: PathBuf,
    io_threads: usize,
    backend: BackendConfig,
}

impl TryFrom<Args> for Configuration {
    type Error = ArgsError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        let mut file = match &args.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        // Flags given explicitly override the file.
        if let Some(url) = &args.store {
            file.store = Some(StoreUrl::parse(url)?);
        }
        let s3 = &mut file.s3;
        for (flag, option) in [
            (args.s3_endpoint, &mut s3.endpoint),
            (args.s3_region, &mut s3.region),
            (args.s3_access_key_id, &mut s3.access_key_id),
            (args.s3_secret_access_key, &mut s3.secret_access_key),
        ] {
            if flag.is_some() {
                *option = flag;
            }
        }
        s3.allow_http |= args.s3_allow_http;
        let tenants = args
            .tenants
            .iter()
            .map(|spec| spec.parse::<TenantSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        if !tenants.is_empty() {
            file.tenants.clear();
        }
        if !args.http_allow.is_empty() {
            file.http.allow = args.http_allow;
        }
        let mib = |flag: Option<u64>| flag.map(|mib| mib << 20);
        if let Some(bytes) = mib(args.prefetch_cache_mib) {
            file.limits.prefetch_cache_bytes = Some(bytes);
        }
        if let Some(bytes) = mib(args.write_behind_mib) {
            file.limits.write_behind_bytes = Some(bytes);
        }
        if let Some(bytes) = mib(args.staging_mib) {
            file.staging_bytes = Some(bytes);
        }
        let listen = args
            .listen
            .or(file.listen.take())
            .ok_or(ArgsError::NoListen)?;
        let state_dir = args.state_dir.or(file.state_dir.take()).unwrap_or_else(|| {
            let mut dir = listen.clone().into_os_string();
            dir.push(".state");
            PathBuf::from(dir)
        });
        // Tenants are checked against the store (and each other) now, so a typo fails at start.
        let mut backend = file.backend_config(state_dir)?;
        if !tenants.is_empty() {
            backend.tenants = tenants;
            nexus_backend::Tenants::from_specs(&backend.tenants, &backend.store.url)?;
        }
        Ok(Self {
            listen,
            io_threads: args.io_threads.or(file.io_threads).unwrap_or(2),
            backend,
        })
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if !args.no_seccomp {
        install_seccomp_hooks();
    }
    let reload_args = args.clone();
    let drop_to = DropTo::resolve(args.user.as_deref(), args.group.as_deref());
    let config = match (Configuration::try_from(args), drop_to) {
        (Ok(config), Ok(drop_to)) => (config, drop_to),
        (Err(e), _) => {
            log::error!("{}", report(&e));
            return ExitCode::from(2);
        }
        (_, Err(e)) => {
            log::error!("{}", report(&e));
            return ExitCode::from(2);
        }
    };
    let (config, drop_to) = config;
    let options = RunOptions {
        reloader: Some(reloader(reload_args)),
        drop_to,
    };
    match nexus_backend::run_with(config.backend, &config.listen, config.io_threads, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// What a reload applies: the file read again with the same flags, which keep overriding it.
fn reloader(args: Args) -> nexus_backend::Reloader {
    Arc::new(move || {
        Configuration::try_from(args.clone())
            .map(|c| c.backend)
            .map_err(|e| match e {
                ArgsError::Backend(e) => e,
                other => nexus_backend::Error::ReloadRefused(other.to_string()),
            })
    })
}

/// Gives each of the backend's threads its seccomp filter as it starts: the engine's (its
/// runtime, and the main thread once it serves the control socket) and the event loops'.
fn install_seccomp_hooks() {
    use nexus_backend::threads::{ThreadRole, set_thread_start};
    use nexus_seccomp::{ThreadKind, thread_start};
    set_thread_start(
        ThreadRole::Engine,
        Some(thread_start(ThreadKind::BackendEngine)),
    );
    set_thread_start(
        ThreadRole::EventLoop,
        Some(thread_start(ThreadKind::BackendEventLoop)),
    );
}

/// The error and its causes, `error: cause: …`.
fn report(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Configuration, ArgsError> {
        let mut argv = vec!["nexus-backend"];
        argv.extend_from_slice(args);
        Configuration::try_from(Args::try_parse_from(argv).unwrap())
    }

    #[test]
    fn defaults() {
        let config = parse(&["--listen", "/run/nexus/backend.sock"]).unwrap();
        assert_eq!(config.listen, PathBuf::from("/run/nexus/backend.sock"));
        assert_eq!(
            config.backend.state_dir,
            PathBuf::from("/run/nexus/backend.sock.state")
        );
        assert_eq!(
            config.backend.store.url,
            StoreUrl::File("/var/lib/nexus/objects".into())
        );
        assert!(config.backend.tenants.is_empty());
        assert_eq!(config.io_threads, 2);
        assert_eq!(config.backend.limits, nexus_backend::VmLimits::default());
        assert_eq!(
            config.backend.staging_bytes,
            nexus_backend::DEFAULT_STAGING_BYTES
        );
    }

    #[test]
    fn s3_with_tenants() {
        let config = parse(&[
            "--listen",
            "/tmp/b.sock",
            "--state-dir",
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
            "https://example.com",
            "--prefetch-cache-mib",
            "8",
        ])
        .unwrap();
        assert_eq!(config.backend.state_dir, PathBuf::from("/tmp/vms"));
        assert_eq!(config.backend.tenants.len(), 2);
        assert_eq!(config.backend.limits.prefetch_cache_bytes, 8 << 20);
        assert_eq!(
            config.backend.store.s3.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(
            config.backend.http.allow,
            vec!["https://example.com".to_owned()]
        );
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
            matches!(parse(&[]), Err(ArgsError::NoListen)),
            "--listen is required without a config file"
        );
        // Overlapping tenants are refused at start, naming both.
        let error = parse(&[
            "--listen",
            "s",
            "--store",
            "s3://nexus-data",
            "--tenant",
            "a=nexus-data/a",
            "--tenant",
            "all=nexus-data",
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("`a`") && error.contains("`all`"), "{error}");
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backend.toml");
        std::fs::write(
            &path,
            "listen = \"control.sock\"\nio_threads = 3\nstaging_bytes = \"64MiB\"\n\
             [store]\nurl = \"file:///srv/objects\"\n\
             [limits]\nprefetch_cache_bytes = \"1MiB\"\nlog_burst = 9\n\
             [http]\nallow = [\"https://a.example.com\"]\n\
             [tenants.a]\nprefix = \"a\"\n[tenants.a.limits]\nlog_burst = 1\n\
             [tenants.b]\nprefix = \"b\"\n",
        )
        .unwrap();
        let config_arg = path.to_str().unwrap();
        let config = parse(&["--config", config_arg]).unwrap();
        assert_eq!(config.listen, dir.path().join("control.sock"));
        assert_eq!(config.io_threads, 3);
        assert_eq!(config.backend.staging_bytes, 64 << 20);
        assert_eq!(
            config.backend.store.url,
            StoreUrl::File("/srv/objects".into())
        );
        assert_eq!(config.backend.limits.prefetch_cache_bytes, 1 << 20);
        assert_eq!(config.backend.limits.log_burst, 9);
        assert_eq!(config.backend.tenants.len(), 2);
        assert_eq!(
            config.backend.tenants[0].limits.as_ref().unwrap().log_burst,
            1
        );

        let config = parse(&[
            "--config",
            config_arg,
            "--listen",
            "/run/other.sock",
            "--io-threads",
            "1",
            "--prefetch-cache-mib",
            "8",
            "--staging-mib",
            "16",
            "--http-allow",
            "b.example.com",
        ])
        .unwrap();
        assert_eq!(config.listen, PathBuf::from("/run/other.sock"));
        assert_eq!(
            config.backend.state_dir,
            PathBuf::from("/run/other.sock.state")
        );
        assert_eq!(config.io_threads, 1);
        assert_eq!(config.backend.staging_bytes, 16 << 20);
        assert_eq!(config.backend.limits.prefetch_cache_bytes, 8 << 20);
        assert_eq!(config.backend.limits.log_burst, 9, "not overridden");
        // A tenant's own limits still win; the rest follow the overridden defaults.
        let a = config.backend.tenants[0].limits.clone().unwrap();
        assert_eq!((a.log_burst, a.prefetch_cache_bytes), (1, 8 << 20));
        assert_eq!(config.backend.http.allow, vec!["b.example.com".to_owned()]);

        // --tenant replaces the file's tenants.
        let config = parse(&["--config", config_arg, "--tenant", "c=c"]).unwrap();
        assert_eq!(config.backend.tenants.len(), 1);
        assert_eq!(config.backend.tenants[0].name, "c");

        // A reload reads the file again, and the flags still override it.
        let args = Args::try_parse_from([
            "nexus-backend",
            "--config",
            config_arg,
            "--prefetch-cache-mib",
            "8",
            "--user",
            "nobody",
            "--group",
            "65534",
        ])
        .unwrap();
        assert_eq!(args.user.as_deref(), Some("nobody"));
        assert_eq!(args.group.as_deref(), Some("65534"));
        let reload = reloader(args);
        std::fs::write(
            &path,
            "listen = \"control.sock\"\n[limits]\nprefetch_cache_bytes = \"1MiB\"\nlog_burst = 4\n",
        )
        .unwrap();
        let reloaded = reload().unwrap();
        assert_eq!(reloaded.limits.log_burst, 4, "the file's change");
        assert_eq!(reloaded.limits.prefetch_cache_bytes, 8 << 20, "the flag's");
        assert!(reloaded.tenants.is_empty());

        // Errors in the file name it.
        std::fs::write(&path, "[limits]\nlog_burst = \"x\"\n").unwrap();
        let error = parse(&["--config", config_arg]).err().unwrap().to_string();
        assert!(
            error.contains(config_arg) && error.contains("line 2"),
            "{error}"
        );
    }
}
