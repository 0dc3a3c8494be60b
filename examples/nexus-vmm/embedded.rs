//! A shared backend serving in this process (the library, on its own tokio runtime), for
//! the demo and for `serve` without `--backend`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

/// A backend over a local store, with its control socket in a directory of ours.
pub struct EmbeddedBackend {
    runtime: tokio::runtime::Runtime,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    socket: PathBuf,
}

impl EmbeddedBackend {
    /// Serves objects of the directory `store`; sockets go in `dir`.
    pub fn start(store: &Path, dir: &Path) -> Result<Self> {
        use nexus_backend::{Backend, BackendConfig, S3Options, StoreConfig, StoreUrl};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nexus-backend")
            .on_thread_start(nexus_backend::threads::engine_thread_start())
            .enable_all()
            .build()?;
        let store = StoreConfig {
            url: StoreUrl::File(store.to_path_buf()),
            s3: S3Options::default(),
        };
        let config = BackendConfig::new(store, dir.join("backend-state"));
        let backend = Backend::new(config, runtime.handle().clone())?;
        let socket = dir.join("backend.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(&socket)
                .with_context(|| format!("Cannot listen on {}", socket.display()))?
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            backend
                .serve_control(listener, async {
                    let _ = rx.await;
                })
                .await;
            backend.drain_uploads(Duration::from_secs(30)).await;
            backend.detach_all();
        });
        Ok(EmbeddedBackend {
            runtime,
            shutdown: Some(tx),
            socket,
        })
    }

    /// The control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for EmbeddedBackend {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        std::thread::sleep(Duration::from_millis(50));
        let _ = std::fs::remove_file(&self.socket);
        let _ = &self.runtime;
    }
}
