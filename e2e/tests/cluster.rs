//! The product end to end on a real cluster: `helm install`, a NodePort WireGuardRelay with
//! WireGuardPeerKeys, and stock WireGuard peers behind NATs outside the cluster reaching the relay
//! pod through the node.
//!
//! The cluster is chosen by `WPEX_E2E_CLUSTER` (see [`Cluster`]): by default a local single-node
//! cluster brought up here with no Docker; `current` for the current kubeconfig's (kind, via
//! `e2e/kind/run.sh`). Either way this machine is plugged into the peers' internet at
//! [`NODE_LAST`], where the relay's NodePort answers.

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use wpex_e2e::cluster::Cluster;
use wpex_e2e::control_plane::with_temp_ns;
use wpex_e2e::netns::Lab;
use wpex_e2e::tools::{chart, helm, kubectl, run_tool};
use wpex_e2e::wg::{Peer, PeerKind, wait_for_ping};
use wpex_operator::crd::{WireGuardPeerKey, WireGuardRelay};
use wpex_operator::resources::shard_of;
use wpex_testkit::{eventually, sample};

/// This machine on the peers' internet: 198.51.100.10.
const NODE_LAST: u8 = 10;
/// The relay's NodePort; kind maps the same host port to it (`e2e/kind/cluster.yaml`).
const NODE_PORT: u16 = 31820;
const RELEASE: &str = "wpex";
const RELAY: &str = "edge";
const RELAY_SELECTOR: &str = "app.kubernetes.io/name=wpex-relay,app.kubernetes.io/instance=edge";
/// Tunnel MTU: 1500 minus WireGuard's 60 bytes over IPv4 (the relay adds nothing).
const MTU: u16 = 1440;

/// How often a wait on the cluster looks again.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// The relay's scrape period plus a handshake's round trip, with room for a loaded machine.
const HANDSHAKE_STATUS_BOUND: Duration = Duration::from_secs(30);
const GHOST_ADDRESS: &str = "203.0.113.77";

/// A Node object no kubelet runs and nothing may be scheduled on; deleted by [`Self::delete`]
/// (and on drop, best effort).
struct GhostNode {
    api: Api<Node>,
    name: String,
    deleted: bool,
}

impl GhostNode {
    async fn create(client: &Client, name: &str) -> Result<Self> {
        let api: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"unschedulable": true},
        }))?;
        api.create(&PostParams::default(), &node).await?;
        let status = serde_json::json!({"status": {"addresses": [
            {"type": "ExternalIP", "address": GHOST_ADDRESS},
            {"type": "InternalIP", "address": GHOST_ADDRESS},
        ]}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(Self {
            api,
            name: name.to_owned(),
            deleted: false,
        })
    }

    async fn delete(mut self) -> Result<()> {
        self.api
            .delete(&self.name, &DeleteParams::default())
            .await?;
        self.deleted = true;
        Ok(())
    }
}

impl Drop for GhostNode {
    fn drop(&mut self) {
        let (api, name) = (self.api.clone(), self.name.clone());
        if self.deleted {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { api.delete(&name, &DeleteParams::default()).await });
        }
    }
}

struct Suite<'a> {
    cluster: &'a Cluster,
    client: Client,
    ns: String,
}

impl Suite<'_> {
    fn kubeconfig(&self) -> Option<&Path> {
        self.cluster.kubeconfig()
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["--namespace", &self.ns];
        all.extend_from_slice(args);
        let (ok, out) = run_tool(&kubectl()?, &all, self.kubeconfig())?;
        ensure!(ok, "kubectl {}: {out}", all.join(" "));
        Ok(out)
    }

    fn helm(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["--namespace", &self.ns];
        all.extend_from_slice(args);
        let (ok, out) = run_tool(&helm()?, &all, self.kubeconfig())?;
        ensure!(ok, "helm {}: {out}", all.join(" "));
        Ok(out)
    }

    /// `helm upgrade --wait` of the release with a changed operator pod (a new memory limit) and
    /// `values` set.
    fn upgrade(&self, values: &[&str]) -> Result<String> {
        let chart = chart();
        let mut args = vec![
            "upgrade",
            RELEASE,
            chart.to_str().context("utf-8 path")?,
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "resources.limits.memory=640Mi",
            "--wait",
            "--timeout=3m",
        ];
        for value in values {
            args.extend(["--set", value]);
        }
        self.helm(&args)
    }

    /// `kubectl apply` of a manifest, as a user would.
    fn apply(&self, manifest: &str) -> Result<()> {
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), manifest)?;
        let path = file.path().to_str().context("utf-8 path")?;
        self.kubectl(&["apply", "-f", path])?;
        Ok(())
    }

    async fn relay_pod(&self) -> Result<Pod> {
        let pods = self
            .api::<Pod>()
            .list(&ListParams::default().labels(RELAY_SELECTOR))
            .await?;
        match pods.items.as_slice() {
            [pod] => Ok(pod.clone()),
            other => bail!("expected one relay pod, found {}", other.len()),
        }
    }

    /// The relay pod's /metrics, through the API server's pod proxy (works on kind too).
    async fn relay_metrics(&self) -> Result<String> {
        let pod = self.relay_pod().await?;
        let name = pod.metadata.name.context("pod name")?;
        let request = http::Request::get(format!(
            "/api/v1/namespaces/{}/pods/{name}:9090/proxy/metrics",
            self.ns
        ))
        .body(Vec::new())?;
        Ok(self.client.request_text(request).await?)
    }

    /// The running operator pod's metrics, through the API server's pod proxy.
    async fn operator_metrics(&self) -> Result<String> {
        let pods = self
            .api::<Pod>()
            .list(&ListParams::default().labels("app.kubernetes.io/name=wpex-operator"))
            .await?;
        let running = pods.items.into_iter().find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
        let name = running
            .and_then(|p| p.metadata.name)
            .context("a running operator pod")?;
        let request = http::Request::get(format!(
            "/api/v1/namespaces/{}/pods/{name}:8080/proxy/metrics",
            self.ns
        ))
        .body(Vec::new())?;
        Ok(self.client.request_text(request).await?)
    }

    /// Relay reconciles so far and the seconds they took, from the operator's histogram.
    async fn relay_reconciles(&self) -> Result<(f64, f64)> {
        let text = self.operator_metrics().await?;
        let series = |end: &str| {
            let name = format!(
                "wpex_operator_reconcile_duration_seconds_{end}{{controller=\"wireguardrelay\"}}"
            );
            sample(&text, &name).with_context(|| format!("{name} in the operator's metrics"))
        };
        Ok((series("count")?, series("sum")?))
    }

    async fn metric(&self, series: &str) -> Result<f64> {
        Ok(sample(&self.relay_metrics().await?, series).unwrap_or(0.0))
    }

    /// Waits until the relay pod allows `n` keys: a key change has reached the mounted file and
    /// the relay. Issue 9's bound, with kubelet's default sync period of a minute.
    async fn wait_for_keys(&self, n: u32) -> Result<Duration> {
        const KEY_CHANGE_BOUND: Duration = Duration::from_secs(5);
        let what = format!("the relay allows {n} keys");
        let ((), took) = eventually(what, KEY_CHANGE_BOUND)
            .every(Duration::from_millis(100))
            .until(|| async {
                let allowed = self.metric("wpex_allowed_keys").await?;
                Ok((allowed == f64::from(n)).then_some(()))
            })
            .await?;
        Ok(took)
    }

    /// What a person debugging a failure looks at first.
    fn dump(&self) {
        let what =
            "deployments,replicasets,pods,services,configmaps,wireguardrelays,wireguardpeerkeys";
        // Not every key described: step 5b makes 100,000 of them.
        let described = "deployments,replicasets,pods,services,wireguardrelays";
        for args in [
            vec!["get", what, "-o", "wide"],
            vec!["describe", described],
            vec!["get", "events", "--sort-by=.lastTimestamp"],
            vec![
                "logs",
                "-l",
                "app.kubernetes.io/name=wpex-operator",
                "--tail=100",
            ],
            vec!["logs", "-l", RELAY_SELECTOR, "--tail=100"],
        ] {
            let mut all = vec!["--namespace", &self.ns];
            all.extend_from_slice(&args);
            match kubectl().and_then(|k| run_tool(&k, &all, self.kubeconfig())) {
                Ok((_, out)) => eprintln!("----- kubectl {}\n{out}", all.join(" ")),
                Err(e) => eprintln!("----- kubectl {}: {e:#}", all.join(" ")),
            }
        }
        self.cluster.print_logs();
    }
}

async fn gone<K>(api: &Api<K>, name: &str) -> Result<Option<()>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?.is_none().then_some(()))
}

/// Fails if `api` still lists objects matching `selector` (the release's label).
async fn none_left<K>(api: Api<K>, selector: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let left = api.list(&ListParams::default().labels(selector)).await?;
    let names: Vec<String> = left
        .items
        .iter()
        .filter_map(|o| o.meta().name.clone())
        .collect();
    ensure!(
        names.is_empty(),
        "{} {names:?} of the release left after helm uninstall",
        K::kind(&Default::default())
    );
    Ok(())
}

fn peer_key(name: &str, public_key: &str) -> String {
    format!(
        "apiVersion: wpex.io/v1alpha1
kind: WireGuardPeerKey
metadata:
  name: {name}
spec:
  relay: {RELAY}
  publicKey: {public_key}
"
    )
}

/// Pings `from` -> `to` until it fails three times in a row; fails if that takes over `bound`.
fn wait_until_cut(from: &Peer, to: &Peer, bound: Duration) -> Result<Duration> {
    let what = format!("{} cut off from {}", from.iface, to.iface);
    let mut failures = 0;
    // Back to back: each ping takes up to a second, and the time it took is reported.
    let ((), took) = eventually(what, bound)
        .every(Duration::ZERO)
        .until_blocking(|| {
            failures = if from.ping_once(to.tunnel_ip, None) {
                0
            } else {
                failures + 1
            };
            Ok((failures >= 3).then_some(()))
        })?;
    Ok(took)
}

/// The three peers outside the cluster, each behind its own NAT. A and B get keys at once, C
/// only later.
struct Peers {
    a: Peer,
    b: Peer,
    c: Peer,
}

impl Peers {
    fn start(lab: &mut Lab) -> Result<Self> {
        let a = lab.natted_host("a")?;
        let b = lab.natted_host("b")?;
        let c = lab.natted_host("c")?;
        Ok(Self {
            a: Peer::start(lab, &a, PeerKind::BoringTun, 1, MTU)?,
            b: Peer::start(lab, &b, PeerKind::WireGuardGo, 2, MTU)?,
            c: Peer::start(lab, &c, PeerKind::BoringTun, 3, MTU)?,
        })
    }
}

async fn scenario(suite: &Suite<'_>, lab: &mut Lab, node: std::net::Ipv4Addr) -> Result<()> {
    install(suite).await?;
    helm_test(suite)?;
    let peers = Peers::start(lab)?;
    let relay_uid = relay_ready(suite, &peers, node).await?;
    peers_ping(suite, &peers, SocketAddrV4::new(node, NODE_PORT)).await?;
    handshakes_in_status(suite).await?;
    peer_without_key_blocked(suite, &peers).await?;
    operator_upgrade(suite).await?;
    key_added(suite, &peers, relay_uid).await?;
    // Issue 19's scale, on the local cluster only: kind runs the same operator and relay.
    let bulk = if matches!(suite.cluster, Cluster::Local(_)) {
        many_keys(suite).await?
    } else {
        0
    };
    key_deleted(suite, &peers, bulk).await?;
    relay_image_upgrade(suite, &peers).await?;
    relay_deleted(suite).await?;
    uninstall(suite).await
}

/// Step 1: helm install; the operator becomes ready.
async fn install(suite: &Suite<'_>) -> Result<()> {
    let chart = chart();
    let started = Instant::now();
    suite.helm(&[
        "install",
        RELEASE,
        chart.to_str().context("utf-8 path")?,
        // The images were imported (local) or loaded (kind); never pull them.
        "--set",
        "image.pullPolicy=Never",
        "--wait",
        "--timeout=3m",
    ])?;
    let operator: Deployment = suite.api().get("wpex-operator").await?;
    let ready = operator.status.and_then(|s| s.ready_replicas).unwrap_or(0);
    ensure!(ready == 1, "the operator is ready after helm --wait");
    eprintln!(
        "1. helm install: operator ready in {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// Step 1b: helm test: the chart's test pod reaches the operator's /readyz.
fn helm_test(suite: &Suite<'_>) -> Result<()> {
    let tested = Instant::now();
    let out = suite.helm(&["test", RELEASE, "--timeout=2m"])?;
    ensure!(out.contains("Succeeded"), "helm test: {out}");
    eprintln!(
        "1b. helm test: the operator answers /readyz ({:.1?})",
        tested.elapsed()
    );
    Ok(())
}

/// Step 2: A NodePort relay and the keys of peers A and B; `kubectl get wgr` shows the endpoint.
/// A second Node object, with no kubelet and a name that sorts first, must not be taken for
/// the relay pod's node. Returns the relay pod's UID.
async fn relay_ready(
    suite: &Suite<'_>,
    peers: &Peers,
    node: std::net::Ipv4Addr,
) -> Result<Option<String>> {
    let ghost = GhostNode::create(&suite.client, &format!("aaa-{}", suite.ns)).await?;
    suite.apply(&format!(
        "apiVersion: wpex.io/v1alpha1
kind: WireGuardRelay
metadata:
  name: {RELAY}
spec:
  service:
    type: NodePort
    nodePort: {NODE_PORT}
---
{}---
{}",
        peer_key("peer-a", &peers.a.public_key),
        peer_key("peer-b", &peers.b.public_key),
    ))?;
    let relays: Api<WireGuardRelay> = suite.api();
    let (endpoint, took) = eventually(
        "the relay reports an endpoint and is Ready",
        Duration::from_secs(120),
    )
    .every(LOOK_EVERY)
    .until(|| async {
        let relay = relays.get(RELAY).await?;
        let status = relay.status.unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Ok(status.endpoint.filter(|_| ready && status.keys == 2))
    })
    .await?;
    let table = suite.kubectl(&["get", "wgr", RELAY])?;
    ensure!(table.contains(&endpoint), "kubectl get wgr:\n{table}");
    ensure!(
        endpoint.ends_with(&format!(":{NODE_PORT}")),
        "endpoint {endpoint} is the NodePort"
    );
    if suite.cluster.is_local() {
        ensure!(
            endpoint == format!("{node}:{NODE_PORT}"),
            "endpoint {endpoint}"
        );
    }
    ensure!(
        !endpoint.starts_with(GHOST_ADDRESS),
        "endpoint {endpoint} is the node without the relay pod"
    );
    ghost.delete().await?;
    eprintln!(
        "2. relay Ready with endpoint {endpoint} (the relay pod's node, not the other of 2) in {took:.1?}:\n{table}"
    );
    Ok(suite.relay_pod().await?.metadata.uid)
}

/// Step 3: A and B ping each other through the relay pod.
async fn peers_ping(suite: &Suite<'_>, peers: &Peers, relay: SocketAddrV4) -> Result<()> {
    let Peers { a, b, c } = peers;
    a.connect(b, relay)?;
    b.connect(a, relay)?;
    a.connect(c, relay)?;
    c.connect(a, relay)?;
    // Pings block; the runtime has a second worker for the kube client.
    let took = wait_for_ping(a, b, Duration::from_secs(60))?;
    let forwarded = suite
        .metric(r#"wpex_forwarded_packets_total{type="transport_data"}"#)
        .await?;
    ensure!(forwarded > 0.0, "the relay pod forwarded the pings");
    eprintln!("3. A <-> B through the relay pod in {took:.1?} ({forwarded} data packets relayed)");
    Ok(())
}

/// Step 3b: "Is my peer connected?": each key's last handshake reaches its status.
async fn handshakes_in_status(suite: &Suite<'_>) -> Result<()> {
    let keys: Api<WireGuardPeerKey> = suite.api();
    let last_handshake = |name: &'static str| {
        let keys = keys.clone();
        async move {
            Ok::<_, anyhow::Error>(keys.get(name).await?.status.and_then(|s| s.last_handshake))
        }
    };
    let (at, took) = eventually(
        "peer-a's status shows its last handshake",
        HANDSHAKE_STATUS_BOUND,
    )
    .every(LOOK_EVERY)
    .until(|| async {
        let a = last_handshake("peer-a").await?;
        let b = last_handshake("peer-b").await?;
        Ok(a.zip(b))
    })
    .await?;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(at.0.0);
    ensure!(
        age.as_secs() < 120,
        "peer-a's last handshake is {age:?} old"
    );
    let table = suite.kubectl(&["get", "wgpk"])?;
    ensure!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("HANDSHAKE")),
        "kubectl get wgpk has a Handshake column:\n{table}"
    );
    eprintln!("3b. last handshakes in the keys' status {took:.1?} after the first ping:\n{table}");
    Ok(())
}

/// Step 4: C has no WireGuardPeerKey: its handshakes are dropped and it never reaches A.
async fn peer_without_key_blocked(suite: &Suite<'_>, peers: &Peers) -> Result<()> {
    let Peers { a, c, .. } = peers;
    let dropped = r#"wpex_dropped_packets_total{reason="mac1_invalid"}"#;
    let before = suite.metric(dropped).await?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        ensure!(
            !c.ping_once(a.tunnel_ip, None),
            "C got through without a key"
        );
    }
    let after = suite.metric(dropped).await?;
    ensure!(
        after > before,
        "the relay dropped C's initiations as mac1_invalid"
    );
    ensure!(
        c.handshake_age(a)?.is_none(),
        "C never completed a handshake"
    );
    eprintln!("4. C blocked: {} initiations dropped", after - before);
    Ok(())
}

/// Step 4b: helm upgrade rolls the operator and finishes under --wait; the new pod takes the Lease.
async fn operator_upgrade(suite: &Suite<'_>) -> Result<()> {
    let started = Instant::now();
    suite.upgrade(&[])?;
    let rolled = started.elapsed();
    let (holder, took) = eventually(
        "the upgraded operator pod holds the Lease",
        Duration::from_secs(120),
    )
    .every(LOOK_EVERY)
    .until(|| async {
        let holder = suite
            .api::<Lease>()
            .get("wpex-operator")
            .await?
            .spec
            .and_then(|s| s.holder_identity);
        let pods = suite
            .api::<Pod>()
            .list(&ListParams::default().labels("app.kubernetes.io/name=wpex-operator"))
            .await?;
        let upgraded = pods
            .items
            .iter()
            .any(|p| p.metadata.name == holder && is_upgraded_operator(p));
        Ok(holder.filter(|_| upgraded))
    })
    .await?;
    eprintln!(
        "4b. helm upgrade --wait: finished in {rolled:.1?}; the new operator pod {holder} led {took:.1?} later"
    );
    Ok(())
}

/// Whether `pod` is a live operator pod with the memory limit [`Suite::upgrade`] sets.
fn is_upgraded_operator(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.spec.as_ref().is_some_and(|s| {
            s.containers.iter().any(|c| {
                c.resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .and_then(|l| l.get("memory"))
                    .is_some_and(|m| m.0 == "640Mi")
            })
        })
}

/// Step 5: C's key: in the relay within seconds on a default kubelet, then C gets through after
/// one cookie round; same relay pod.
async fn key_added(suite: &Suite<'_>, peers: &Peers, relay_uid: Option<String>) -> Result<()> {
    let Peers { a, c, .. } = peers;
    suite.apply(&peer_key("peer-c", &c.public_key))?;
    let in_relay = suite.wait_for_keys(3).await?;
    let took = wait_for_ping(c, a, Duration::from_secs(120))?;
    let pod = suite.relay_pod().await?;
    ensure!(
        pod.metadata.uid == relay_uid,
        "the relay pod was not replaced"
    );
    let restarts: i32 = pod
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .iter()
        .map(|s| s.restart_count)
        .sum();
    ensure!(restarts == 0, "the relay container never restarted");
    ensure!(suite.metric("wpex_allowed_keys").await? == 3.0, "3 keys");
    eprintln!(
        "5. C's key applied: in the relay after {in_relay:.1?}, C <-> A in {took:.1?}, same relay pod, 0 restarts"
    );
    Ok(())
}

/// Keys added in step 5b, besides the peers'.
const BULK_KEYS: u32 = 100_000;
/// Key creations in flight at once in step 5b.
const CREATORS: usize = 32;

/// The operator process's resident memory and its peak, in KiB: the local cluster runs it on
/// this machine.
fn operator_memory() -> Result<(u64, u64)> {
    let pids = std::process::Command::new("pgrep")
        .args(["-x", "wpex-operator"])
        .output()
        .context("pgrep")?;
    let pids = String::from_utf8_lossy(&pids.stdout);
    let mut pids = pids.split_whitespace();
    let (Some(pid), None) = (pids.next(), pids.next()) else {
        bail!("not exactly one wpex-operator process: {pids:?}");
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .with_context(|| format!("{field} in /proc/{pid}/status"))
    };
    Ok((kib("VmRSS:")?, kib("VmHWM:")?))
}

/// Step 5b: 100,000 more keys, from random public keys, reach the relay pod, spread over its
/// key shards. Prints how long that takes and the operator's memory; returns the count.
async fn many_keys(suite: &Suite<'_>) -> Result<u32> {
    use futures::{StreamExt, TryStreamExt};
    use rand::RngCore;
    let keys: Api<WireGuardPeerKey> = suite.api();
    let (rss_before, _) = operator_memory()?;
    let started = Instant::now();
    futures::stream::iter(0..BULK_KEYS)
        .map(|i| {
            let keys = keys.clone();
            async move {
                let mut raw = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut raw);
                let spec = wpex_operator::crd::WireGuardPeerKeySpec {
                    relay: RELAY.to_owned(),
                    public_key: wpex_proto::keys::PublicKey(raw).to_string(),
                    disabled: false,
                };
                let key = WireGuardPeerKey::new(&format!("bulk-{i}"), spec);
                keys.create(&PostParams::default(), &key).await.map(|_| ())
            }
        })
        .buffer_unordered(CREATORS)
        .try_collect::<()>()
        .await
        .context("creating the keys")?;
    let created = started.elapsed();
    eprintln!("5b. {BULK_KEYS} WireGuardPeerKeys created in {created:.1?}");
    let want = BULK_KEYS + 3;
    let told = std::sync::Mutex::new(Instant::now());
    let ((), _) = eventually(
        format!("the relay allows {want} keys"),
        Duration::from_secs(1200),
    )
    .every(Duration::from_secs(1))
    .until(|| async {
        let allowed = suite.metric("wpex_allowed_keys").await?;
        let mut last = told.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if last.elapsed() >= Duration::from_secs(30) {
            *last = Instant::now();
            eprintln!(
                "    ... the relay allows {allowed} keys, {:.0?} after the first was created",
                started.elapsed()
            );
        }
        Ok((allowed == f64::from(want)).then_some(()))
    })
    .await?;
    let reached = started.elapsed();
    let (rss, peak) = operator_memory()?;
    let shards = suite
        .api::<ConfigMap>()
        .list(&ListParams::default().labels(RELAY_SELECTOR))
        .await?
        .items
        .into_iter()
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.contains("-keys-"))
        })
        .count();
    eprintln!(
        "5b. all {want} keys in the relay pod {reached:.1?} after the first was created, from \
         {shards} key shards; operator RSS {rss_before} KiB before, {rss} KiB after, peak {peak} KiB"
    );
    Ok(BULK_KEYS)
}

/// Step 6: Delete C's key: C is cut off while A and B keep talking; `bulk` more keys stay.
async fn key_deleted(suite: &Suite<'_>, peers: &Peers, bulk: u32) -> Result<()> {
    let Peers { a, b, c } = peers;
    let keys: Api<WireGuardPeerKey> = suite.api();
    // Where the time goes: the operator's part ends when C's shard no longer holds the key.
    let key: wpex_proto::keys::PublicKey = c.public_key.parse()?;
    let shard = wpex_operator::resources::keys_config_map_name(RELAY, shard_of(&key));
    let config_maps: Api<ConfigMap> = suite.api();
    let reconciled = suite.relay_reconciles().await?;
    let started = Instant::now();
    keys.delete("peer-c", &DeleteParams::default()).await?;
    let rewritten = async {
        loop {
            let cm = config_maps.get(&shard).await?;
            let holds = cm
                .data
                .unwrap_or_default()
                .values()
                .any(|text| text.contains(&c.public_key));
            if !holds {
                return Ok::<_, anyhow::Error>(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (out_of_relay, rewritten) = tokio::join!(suite.wait_for_keys(2 + bulk), rewritten);
    let (out_of_relay, rewritten) = (out_of_relay?, rewritten?);
    let (count, sum) = suite.relay_reconciles().await?;
    let (count, sum) = (count - reconciled.0, sum - reconciled.1);
    let mean = if count > 0.0 { sum / count } else { 0.0 };
    eprintln!(
        "6. meanwhile {count} relay reconciles, {mean:.2} s each on average ({} keys)",
        2 + bulk
    );
    let took = wait_until_cut(c, a, Duration::from_secs(120))?;
    wait_for_ping(a, b, Duration::from_secs(10))?;
    ensure!(!c.ping_once(a.tunnel_ip, None), "C stays cut off");
    eprintln!(
        "6. C's key deleted: its shard rewritten after {rewritten:.1?}, out of the relay after \
         {out_of_relay:.1?}, C cut off within {took:.1?}; A <-> B still ping"
    );
    Ok(())
}

/// Step 6b: helm upgrade with another relay image: the relay pod is replaced and the peers
/// reconnect on their own.
async fn relay_image_upgrade(suite: &Suite<'_>, peers: &Peers) -> Result<()> {
    let old_uid = suite.relay_pod().await?.metadata.uid;
    let started = Instant::now();
    // build-images.sh tags each image with the version and with `dev`.
    suite.upgrade(&["relayImage.tag=dev"])?;
    let rolled = started.elapsed();
    let ((), replaced) = eventually(
        "a relay pod with the new image is ready",
        Duration::from_secs(120),
    )
    .every(LOOK_EVERY)
    .until(|| async {
        let Ok(pod) = suite.relay_pod().await else {
            return Ok(None);
        };
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Ok((pod.metadata.uid != old_uid && image.ends_with(":dev") && ready).then_some(()))
    })
    .await?;
    let reconnected = wait_for_ping(&peers.a, &peers.b, Duration::from_secs(180))?;
    eprintln!(
        "6b. helm upgrade to relay image :dev: --wait finished in {rolled:.1?}, new relay pod ready {replaced:.1?} later, A <-> B pinging again {reconnected:.1?} after that ({:.1?} in all)",
        started.elapsed()
    );
    Ok(())
}

/// Step 7: Delete the relay: everything it owned goes with it.
async fn relay_deleted(suite: &Suite<'_>) -> Result<()> {
    let relays: Api<WireGuardRelay> = suite.api();
    relays.delete(RELAY, &DeleteParams::default()).await?;
    let deployments: Api<Deployment> = suite.api();
    let services: Api<Service> = suite.api();
    let config_maps: Api<ConfigMap> = suite.api();
    let ((), took) = eventually(
        "the relay's Deployment, Service, ConfigMap and pod are gone",
        Duration::from_secs(120),
    )
    .every(LOOK_EVERY)
    .until(|| async {
        let pods = suite
            .api::<Pod>()
            .list(&ListParams::default().labels(RELAY_SELECTOR))
            .await?;
        Ok((gone(&deployments, RELAY).await?.is_some()
            && gone(&services, RELAY).await?.is_some()
            && gone(
                &config_maps,
                &wpex_operator::resources::keys_config_map_name(RELAY, 0),
            )
            .await?
            .is_some()
            && pods.items.is_empty())
        .then_some(()))
    })
    .await?;
    eprintln!("7. relay deleted: its objects garbage-collected in {took:.1?}");
    Ok(())
}

/// Step 8: helm uninstall leaves nothing of the release (CRDs stay, as Helm does with crds/).
async fn uninstall(suite: &Suite<'_>) -> Result<()> {
    suite.helm(&["uninstall", RELEASE, "--wait", "--timeout=2m"])?;
    let release = format!("app.kubernetes.io/instance={RELEASE}");
    none_left(suite.api::<Deployment>(), &release).await?;
    none_left(suite.api::<ServiceAccount>(), &release).await?;
    none_left(suite.api::<Role>(), &release).await?;
    none_left(suite.api::<RoleBinding>(), &release).await?;
    none_left(Api::<ClusterRole>::all(suite.client.clone()), &release).await?;
    none_left(
        Api::<ClusterRoleBinding>::all(suite.client.clone()),
        &release,
    )
    .await?;
    let ((), pods_gone) = eventually("the operator pod is gone", Duration::from_secs(60))
        .every(LOOK_EVERY)
        .until(|| async {
            let pods = suite
                .api::<Pod>()
                .list(&ListParams::default().labels("app.kubernetes.io/name=wpex-operator"))
                .await?;
            Ok(pods.items.is_empty().then_some(()))
        })
        .await?;
    let list = suite.helm(&["list", "--short"])?;
    ensure!(list.trim().is_empty(), "no release left: {list}");
    eprintln!("8. helm uninstall: nothing left ({pods_gone:.1?} for the operator pod)");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, the Kubernetes binaries, containerd and the images (e2e/test-all.sh)"]
async fn helm_install_then_peers_through_the_relay_pod() -> Result<()> {
    // Declared first so it is dropped last: the node's address lives on the lab's bridge.
    let mut lab = Lab::new()?;
    let (_, node) = lab.attach_root(NODE_LAST)?;
    let started = Instant::now();
    let cluster = Cluster::from_env(node).await?;
    eprintln!("cluster ready in {:.1?}", started.elapsed());
    let client = cluster.client();
    let (lab_ref, cluster_ref) = (&mut lab, &cluster);
    let result = with_temp_ns(&client, |ns| async move {
        let suite = Suite {
            cluster: cluster_ref,
            client: cluster_ref.client(),
            ns,
        };
        let result = scenario(&suite, lab_ref, node).await;
        if result.is_err() {
            suite.dump();
        }
        result
    })
    .await;
    if result.is_ok() {
        lab.pass();
    }
    result
}
