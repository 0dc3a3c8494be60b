//! `nexus-load s3-server`: an S3-compatible server (s3s-fs: objects as files under a
//! directory, buckets as its subdirectories) in a process of its own, so that the
//! comparison can read its CPU from `/proc/PID/stat`. Plain HTTP (TLS is off on both paths
//! of the comparison), SigV4 checked against one access key. It prints
//! `nexus-load s3-server: listening on ADDR` once it accepts connections, and runs until
//! it is killed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

/// What the server prints once it listens (followed by the address).
pub const LISTENING: &str = "nexus-load s3-server: listening on ";

/// Arguments of `nexus-load s3-server`.
#[derive(Debug, Args)]
pub struct S3ServerArgs {
    /// The directory whose subdirectories are the buckets.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// The address to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The access key ID clients sign with.
    #[arg(long, value_name = "ID")]
    pub access_key: String,
    /// The secret key clients sign with.
    #[arg(long, value_name = "KEY")]
    pub secret_key: String,
}

/// Serves until the process is killed.
pub async fn serve(args: S3ServerArgs) -> Result<()> {
    let fs = s3s_fs::FileSystem::new(&args.root)
        .map_err(|e| anyhow::anyhow!("cannot serve {}: {e:?}", args.root.display()))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(
        args.access_key.as_str(),
        args.secret_key.as_str(),
    ));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    println!("{LISTENING}{address}");
    std::io::stdout().flush()?;
    loop {
        let (socket, _) = listener.accept().await.context("accept failed")?;
        // Small answers go out at once, as the backend's and the guests' requests do.
        let _ = socket.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            if let Err(e) = ConnBuilder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), service)
                .await
            {
                log::debug!("s3-server: connection ended: {e}");
            }
        });
    }
}
