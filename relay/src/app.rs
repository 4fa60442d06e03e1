//! The relay process: the UDP server, the key file watcher and the metrics endpoint, put together.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::cli::Args;
use crate::metrics;
use crate::server::{Server, ServerError};
use crate::shared::{Counters, SharedRelay, lock};
use crate::watch::{self, KeyWatcher, Update, WatchError};
use wpex_daemon::http::{HttpError, MetricsServer, Readiness};
use wpex_daemon::shutdown_signal;
use wpex_proto::keyfile::{self, KeyFileError};
use wpex_proto::keys::{AllowedKeys, PublicKey};
use wpex_proto::{Access, Config};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// `--allow-file` could not be read or parsed.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The key file's directory could not be watched.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// The UDP sockets could not be bound.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The metrics and health server could not listen.
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// Open mode only when no key source is given at all: an empty file allows nobody.
fn initial_access(args: &Args) -> Result<(Access, Option<Vec<u8>>), KeyFileError> {
    let Some(path) = &args.allow_file else {
        if args.allow.is_empty() {
            return Ok((Access::Open, None));
        }
        return Ok((
            Access::AllowList(AllowedKeys::new(args.allow.iter().copied())),
            None,
        ));
    };
    let (content, from_file) = keyfile::read(path)?;
    let keys = AllowedKeys::new(args.allow.iter().copied().chain(from_file));
    Ok((Access::AllowList(keys), Some(content)))
}

/// Applies a re-read key file to the running relay.
fn apply(
    relay: &SharedRelay,
    static_keys: &[PublicKey],
    counters: &Counters,
    path: &Path,
    update: Update,
) {
    match update {
        Update::Loaded(from_file) => {
            let keys = AllowedKeys::new(static_keys.iter().copied().chain(from_file));
            let count = keys.len();
            let mut relay = lock(relay);
            let before: BTreeSet<PublicKey> = relay
                .allowed_keys()
                .map(|k| k.iter().copied().collect())
                .unwrap_or_default();
            let after: BTreeSet<PublicKey> = keys.iter().copied().collect();
            let cut = relay.set_allowed_keys(Instant::now(), keys);
            drop(relay);
            counters.reload(true);
            tracing::info!(
                path = %path.display(),
                keys = count,
                added = after.difference(&before).count(),
                removed = before.difference(&after).count(),
                indices_cut = cut,
                "allowed keys reloaded"
            );
        }
        Update::Rejected(error) => {
            counters.reload(false);
            let kept = lock(relay).allowed_keys().map_or(0, AllowedKeys::len);
            tracing::error!(%error, kept, "key file rejected; keeping the last good key set");
        }
    }
}

/// Says who may use the relay: a warning when anyone may, the allowed keys otherwise.
fn log_access(access: &Access) {
    match access {
        Access::Open => {
            tracing::warn!(
                "no --allow or --allow-file: the relay is open to anyone (see --broadcast-rate)"
            );
        }
        Access::AllowList(keys) => {
            for key in keys.iter() {
                tracing::debug!(%key, "allow wireguard public key");
            }
            tracing::info!(keys = keys.len(), "allow-list mode");
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` from a task of its own.
async fn serve_metrics(
    addr: SocketAddr,
    registry: Registry,
    ready: Arc<Readiness>,
) -> Result<(), HttpError> {
    let http = MetricsServer::bind(addr, registry, ready).await?;
    tracing::info!(addr = ?http.local_addr().ok(), "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        if let Err(e) = http.serve().await {
            tracing::error!(%e, "metrics endpoint stopped");
        }
    });
    Ok(())
}

/// Follows the `--allow-file`, if there is one, applying each new key set to `relay`;
/// `file_content` is what [`initial_access`] read. Watching stops when the watcher is dropped.
fn watch_keys(
    args: &Args,
    file_content: Option<Vec<u8>>,
    relay: &SharedRelay,
    counters: &Arc<Counters>,
) -> Result<Option<KeyWatcher>, WatchError> {
    let Some(path) = args.allow_file.clone() else {
        return Ok(None);
    };
    let (relay, counters, static_keys) = (relay.clone(), counters.clone(), args.allow.clone());
    let shown = path.clone();
    let watcher = watch::watch(path, file_content, watch::DEFAULT_POLL, move |update| {
        apply(&relay, &static_keys, &counters, &shown, update);
    })?;
    Ok(Some(watcher))
}

/// Completes when `signals` sees SIGTERM or SIGINT, or its task fails; never when signals
/// cannot be handled at all.
async fn until_signalled(signals: JoinHandle<io::Result<()>>) {
    match signals.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(%e, "no signal handling; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
        Err(e) => tracing::error!(%e, "signal task failed; shutting down"),
    }
}

/// Runs the relay until SIGTERM or SIGINT.
pub async fn run(args: Args, workers: usize) -> Result<(), AppError> {
    let (access, file_content) = initial_access(&args)?;
    log_access(&access);
    let config = Config {
        access,
        broadcast_rate: args.broadcast_rate,
        source_rate: args.source_rate,
        scan_budget: args.scan_budget,
        ..Config::default()
    };
    let signals = tokio::spawn(shutdown_signal());
    if args.no_gso {
        crate::server::disable_gso();
    }
    let server = Server::bind(config, &args.bind, args.port, workers)?;
    let relay = server.relay();
    let ready = Arc::new(Readiness::default());
    let counters = server.counters();

    if let Some(addr) = args.metrics_addr {
        let registry = metrics::registry(relay.clone(), counters.clone());
        serve_metrics(addr, registry, ready.clone()).await?;
    }
    let _watcher = watch_keys(&args, file_content, &relay, &counters)?;

    ready.set_ready();
    tracing::info!(addr = ?server.local_addr().ok(), workers, no_gso = args.no_gso, "server listening");
    server.serve(until_signalled(signals)).await;
    Ok(())
}
