use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{ArgAction, Parser, Subcommand};
use futures::FutureExt;
use futures::future::Shared;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use wpex_daemon::LogFormat;
use wpex_daemon::http::{MetricsServer, Readiness};
use wpex_operator::controller::{self, Scope, Settings};
use wpex_operator::http::HttpClient;
use wpex_operator::metrics::Metrics;
use wpex_operator::resources::PodDefaults;

#[derive(Debug, Parser)]
#[command(
    name = "wpex-operator",
    version,
    about = "Runs wpex WireGuard relays from WireGuardRelay and WireGuardPeerKey resources"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Watch only this namespace (repeat, or comma-separate, for several): Roles in each are
    /// enough. Without it the operator watches every namespace and needs a ClusterRole.
    #[arg(
        long = "namespace",
        env = "WPEX_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// Image pull secret for relay pods (repeatable); it must exist in each relay's namespace.
    #[arg(long = "relay-image-pull-secret", value_delimiter = ',')]
    relay_image_pull_secrets: Vec<String>,
    /// Image of the relay, unless a WireGuardRelay sets its own.
    #[arg(long, env = "WPEX_RELAY_IMAGE", default_value = concat!("ghcr.io/wpex/wpex:", env!("CARGO_PKG_VERSION")))]
    relay_image: String,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Only one replica reconciles at a time, holding a Lease.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease; operators sharing one are replicas of each other.
    #[arg(long, default_value = "wpex-operator")]
    lease_name: String,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity in the Lease and in Events; defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// GET a URL; exit 0 on a 2xx answer within 5 s (`helm test` checks the operator with it).
    Probe { url: String },
}

async fn probe(url: &str) -> anyhow::Result<()> {
    let body = HttpClient::default()
        .get(url, std::time::Duration::from_secs(5))
        .await?;
    println!("{}", body.trim_end());
    Ok(())
}

/// The holder renews 5 s before expiry, every 10 s.
const LEASE_SECONDS: u64 = 15;

/// Completes on SIGINT or SIGTERM; never, if signals cannot be handled.
async fn shutdown_signal() {
    if let Err(e) = wpex_daemon::shutdown_signal().await {
        tracing::error!(%e, "cannot handle signals; stop with SIGKILL");
        std::future::pending::<()>().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Probe { url }) = &args.command {
        return probe(url).await;
    }
    wpex_daemon::init_logging(args.log_format, "info");
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let identity = identity(args.identity.clone());

    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let ready = Arc::new(Readiness::default());
    serve_http(args.metrics_addr, registry, ready.clone()).await?;

    let shutdown = shutdown_signal().shared();
    let leadership = if args.leader_election {
        let lease = Lease {
            name: &args.lease_name,
            namespace: &args.lease_namespace,
            identity: &identity,
        };
        match lead(&client, lease, &ready, shutdown.clone()).await? {
            Some(leadership) => Some(leadership),
            // Shut down while standing by.
            None => return Ok(()),
        }
    } else {
        None
    };
    let stop = stop_reconciling(shutdown, leadership.as_ref().map(|l| l.is_leader.clone()));

    let settings = settings(client, identity, &args, metrics);
    let scope = scope(args.namespaces);
    tracing::info!(?scope, "starting controllers");
    controller::run(settings, scope, stop, || {
        ready.set_ready();
        tracing::info!("caches synced; ready");
    })
    .await;
    step_down(leadership).await
}

/// `--identity`, else the host name, else one made up from the process id.
fn identity(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("wpex-operator-{}", std::process::id()))
}

/// Binds /metrics, /healthz and /readyz and serves them in the background.
async fn serve_http(
    addr: SocketAddr,
    registry: Registry,
    ready: Arc<Readiness>,
) -> anyhow::Result<()> {
    let http = MetricsServer::bind(addr, registry, ready).await?;
    tokio::spawn(async move {
        if let Err(e) = http.serve().await {
            tracing::error!(%e, "metrics endpoint stopped");
        }
    });
    Ok(())
}

/// The Lease replicas compete for, and this replica's name in it.
struct Lease<'a> {
    name: &'a str,
    namespace: &'a str,
    identity: &'a str,
}

/// This replica's hold on the Lease: whether it still leads, and the task renewing it.
struct Leadership {
    is_leader: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

/// Waits to hold the Lease; `None` if `shutdown` came first.
async fn lead(
    client: &Client,
    lease: Lease<'_>,
    ready: &Readiness,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Option<Leadership>> {
    let manager = LeaseManagerBuilder::new(client.clone(), lease.name)
        .with_namespace(lease.namespace)
        .with_identity(lease.identity)
        .with_field_manager(controller::FIELD_MANAGER)
        // A standby only looks again when the holder's Lease would expire, even after a
        // release: a short Lease makes an upgraded pod take over sooner.
        .with_duration(LEASE_SECONDS)
        .build()
        .await
        .context("setting up leader election")?;
    let (mut is_leader, task) = manager.watch().await;
    // A standby replica is ready: it serves and will take over. Waiting for the Lease here
    // would deadlock a rolling update, where the old pod keeps the Lease until the new one
    // is ready.
    ready.set_ready();
    let identity = lease.identity;
    tracing::info!(%identity, namespace = %lease.namespace, "waiting to become leader");
    tokio::select! {
        changed = is_leader.wait_for(|is_leader| *is_leader) => {
            changed.context("leader election stopped")?;
        }
        () = shutdown => return Ok(None),
    }
    tracing::info!(%identity, "became leader");
    Ok(Some(Leadership { is_leader, task }))
}

/// Completes on a signal, or as soon as another replica may have taken over.
fn stop_reconciling(
    shutdown: impl Future<Output = ()>,
    mut is_leader: Option<watch::Receiver<bool>>,
) -> Shared<impl Future<Output = ()>> {
    async move {
        let lost = async {
            match is_leader.as_mut() {
                Some(rx) => {
                    let _ = rx.wait_for(|is_leader| !*is_leader).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown => {}
            () = lost => tracing::error!("lost leadership; stopping"),
        }
    }
    .shared()
}

fn settings(client: Client, identity: String, args: &Args, metrics: Metrics) -> Settings {
    Settings {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "wpex-operator".to_owned(),
                instance: Some(identity),
            },
        ),
        client,
        pods: PodDefaults {
            image: args.relay_image.clone(),
            pull_secrets: args.relay_image_pull_secrets.clone(),
        },
        metrics,
    }
}

fn scope(namespaces: Vec<String>) -> Scope {
    if namespaces.is_empty() {
        Scope::Cluster
    } else {
        Scope::Namespaces(namespaces)
    }
}

/// Gives the Lease back after the controllers stopped; an error if it had been lost.
async fn step_down(leadership: Option<Leadership>) -> anyhow::Result<()> {
    let Some(Leadership { is_leader, task }) = leadership else {
        return Ok(());
    };
    let still_leader = *is_leader.borrow();
    // Closing the channel makes the lease manager release the Lease, so a successor need not
    // wait for it to expire.
    drop(is_leader);
    let _ = task.await;
    anyhow::ensure!(still_leader, "lost leadership");
    Ok(())
}
