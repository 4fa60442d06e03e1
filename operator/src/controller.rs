//! Reconciliation: dereference -> validate -> build (pure) -> apply (server-side) -> status.
//!
//! Two controllers share one context. The relay controller owns a relay's children and the
//! status of its peer keys (acceptance depends on the whole set, for duplicates). The peer key
//! controller only reports keys whose relay does not exist. Both read keys and relays from their
//! reflector stores; the owned kinds and relay pods are watched by label, so the operator caches
//! its own objects and nothing else of the cluster. Nodes are never cached: a NodePort relay
//! reads the one node its pod runs on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::admission::{self, Candidate, Verdict};
use crate::crd::{
    AccessMode, ServiceType, WireGuardPeerKey, WireGuardPeerKeySpec, WireGuardPeerKeyStatus,
    WireGuardRelay, WireGuardRelaySpec, WireGuardRelayStatus,
};
use crate::endpoint::{RelayNode, endpoints, peer_config};
use crate::error::Error;
use crate::http::HttpClient;
use crate::metrics::Metrics;
use crate::resources::{self, PodDefaults, Relay};

pub const FIELD_MANAGER: &str = "wpex-operator";
/// Re-check even without events: node addresses are not watched.
const RESYNC: Duration = Duration::from_secs(300);
const RETRY: Duration = Duration::from_secs(15);

/// What the operator is started with, shared by every namespace it watches.
#[derive(Clone)]
pub struct Settings {
    pub client: Client,
    pub pods: PodDefaults,
    pub recorder: Recorder,
    pub metrics: Metrics,
}

/// Which namespaces the operator watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace: needs a ClusterRole.
    Cluster,
    /// Only these: Roles in each are enough.
    Namespaces(Vec<String>),
}

/// One watched scope's context: the settings and the reflector stores of its resources.
pub struct Context {
    pub client: Client,
    pub pods: PodDefaults,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub http: HttpClient,
    pub keys: Store<WireGuardPeerKey>,
    pub relays: Store<WireGuardRelay>,
    /// True once both stores have synced. A `Store` wakes only one of several concurrent
    /// `wait_until_ready` callers (its readiness is a oneshot), so everyone else waits here.
    pub synced: tokio::sync::watch::Receiver<bool>,
}

impl Context {
    /// Waits until the key and relay stores hold the whole of their lists.
    pub async fn stores_synced(&self) -> Result<(), Error> {
        self.synced
            .clone()
            .wait_for(|synced| *synced)
            .await
            .map(|_| ())
            .map_err(|_| Error::StoreClosed("WireGuardRelay and WireGuardPeerKey"))
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Server-side applies `obj` in `namespace` and returns what the API server stored.
async fn apply<K>(client: &Client, namespace: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(&name, &apply_params(), &Patch::Apply(obj))
        .await
        .map_err(|source| Error::Apply {
            kind: K::kind(&()).into_owned(),
            name,
            source,
        })
}

/// The annotation on relay pods naming the version of the key ConfigMap they should mount.
pub const KEYS_VERSION_ANNOTATION: &str = "wpex.io/keys-version";

/// The relay's pods, newest first, from a label-selected list.
async fn relay_pods(client: &Client, relay: &Relay) -> Result<Vec<Pod>, Error> {
    let selector = resources::selector(&resources::labels(&relay.name));
    let mut pods = Api::<Pod>::namespaced(client.clone(), &relay.namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Read {
            what: "relay Pods",
            source,
        })?
        .items;
    pods.retain(|p| p.metadata.deletion_timestamp.is_none());
    pods.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
    });
    Ok(pods)
}

/// kubelet refreshes a mounted ConfigMap when it syncs the pod, which by default happens once a
/// minute; an update of the pod object makes it sync at once. So every relay pod is annotated
/// with the key ConfigMap's version. Pods only: a change to the Deployment's pod template would
/// restart the relay.
async fn refresh_key_volumes(
    client: &Client,
    relay: &Relay,
    pods: &[Pod],
    keys: &ConfigMap,
) -> Result<(), Error> {
    let Some(version) = keys.metadata.resource_version.as_deref() else {
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(client.clone(), &relay.namespace);
    for pod in pods {
        if pod
            .annotations()
            .get(KEYS_VERSION_ANNOTATION)
            .map(String::as_str)
            == Some(version)
        {
            continue;
        }
        let name = pod.name_any();
        let patch = serde_json::json!({
            "metadata": {"annotations": {KEYS_VERSION_ANNOTATION: version}}
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Gone since the list: its replacement mounts the current keys anyway.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::Apply {
                    kind: "Pod".to_owned(),
                    name,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The node running the relay's newest scheduled pod, if it can be read, and the pod's host IPs.
/// Nodes are read one by name, never listed or watched; without RBAC for Nodes, the hostIP
/// (the node's InternalIP) still names the right node.
async fn relay_node(client: &Client, pods: &[Pod]) -> Result<(Option<Node>, Vec<String>), Error> {
    let Some((pod, node_name)) = pods.iter().find_map(|p| {
        // A pod that has finished (evicted, say) names a node where no relay runs.
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Failed" | "Succeeded")) {
            return None;
        }
        let name = p.spec.as_ref()?.node_name.clone()?;
        Some((p, name))
    }) else {
        return Ok((None, Vec::new()));
    };
    let host_ips: Vec<String> = pod
        .status
        .as_ref()
        .map(|s| {
            s.host_ips
                .as_ref()
                .map(|ips| ips.iter().map(|i| i.ip.clone()).collect())
                .or_else(|| s.host_ip.clone().map(|ip| vec![ip]))
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let node = match Api::<Node>::all(client.clone()).get_opt(&node_name).await {
        Ok(node) => node,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::debug!(node = %node_name, "no RBAC to read Nodes; using the pod's hostIP");
            None
        }
        Err(source) => {
            return Err(Error::Read {
                what: "the relay pod's Node",
                source,
            });
        }
    };
    Ok((node, host_ips))
}

/// A condition that keeps its transition time while its status does not change, so re-applying
/// an unchanged status is a no-op and does not wake the watchers again.
fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(Timestamp::now()));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

async fn patch_status<K>(api: &Api<K>, obj: &K, status: impl Serialize) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.name_any();
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&name, &apply_params(), &Patch::Apply(&body))
        .await
        .map(|_| ())
        .map_err(|source| Error::Status {
            kind: K::kind(&()).into_owned(),
            name,
            source,
        })
}

/// Dereference: the identity a relay's children need, or why it cannot be had.
fn dereference(relay: &WireGuardRelay) -> Result<Relay, Error> {
    let missing = |field| Error::MissingField {
        kind: "WireGuardRelay",
        field,
    };
    Ok(Relay {
        name: relay
            .metadata
            .name
            .clone()
            .ok_or(missing("metadata.name"))?,
        namespace: relay.namespace().ok_or(missing("metadata.namespace"))?,
        owner: relay
            .controller_owner_ref(&())
            .ok_or(missing("metadata.uid"))?,
        spec: relay.spec.clone(),
    })
}

fn candidate(key: &WireGuardPeerKey) -> Candidate {
    Candidate {
        name: key.name_any(),
        public_key: key.spec.public_key.clone(),
        disabled: key.spec.disabled,
        created: key
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
    }
}

async fn reconcile_relay(obj: Arc<WireGuardRelay>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Being deleted: re-applying children now would fight the garbage collector.
    if obj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let relay = dereference(&obj)?;
    let client = &ctx.client;

    // Validate: which of this relay's peer keys are accepted. The store is complete before the
    // first reconcile, or a relay could briefly be given an empty allow-list.
    ctx.stores_synced().await?;
    let mut keys: Vec<Arc<WireGuardPeerKey>> = ctx
        .keys
        .state()
        .into_iter()
        .filter(|k| {
            k.spec.relay == relay.name
                && k.namespace().as_deref() == Some(relay.namespace.as_str())
                && k.metadata.deletion_timestamp.is_none()
        })
        .collect();
    keys.sort_by_key(|k| k.name_any());
    let candidates: Vec<Candidate> = keys.iter().map(|k| candidate(k)).collect();
    let verdicts = admission::judge(&candidates);
    let accepted = admission::accepted(&verdicts);

    // Build and apply. The ConfigMap first, so a new pod mounts the current keys.
    let keys_config_map = apply(
        client,
        &relay.namespace,
        &resources::config_map(&relay, &accepted),
    )
    .await?;
    let pods = relay_pods(client, &relay).await?;
    refresh_key_volumes(client, &relay, &pods, &keys_config_map).await?;
    let deployment = apply(
        client,
        &relay.namespace,
        &resources::deployment(&relay, &ctx.pods),
    )
    .await?;
    let service = apply(client, &relay.namespace, &resources::service(&relay)).await?;

    // Status.
    let (node, host_ips) = if relay.spec.service.type_ == ServiceType::NodePort {
        relay_node(client, &pods).await?
    } else {
        (None, Vec::new())
    };
    let at = RelayNode {
        node: node.as_ref(),
        host_ips: &host_ips,
    };
    let endpoints = endpoints(relay.spec.service.type_, &service, at);
    let endpoint = relay
        .spec
        .endpoint
        .clone()
        .or_else(|| endpoints.first().cloned());
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        > 0;
    let generation = obj.metadata.generation;
    let previous = obj
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let (reason, message) = match (available, &endpoint) {
        (true, Some(e)) => (
            "Available",
            format!("relay is running; peers use Endpoint = {e}"),
        ),
        (false, _) => (
            "DeploymentUnavailable",
            "the relay pod is not available yet".to_owned(),
        ),
        (true, None) => (
            "EndpointPending",
            "the Service has no reachable address yet".to_owned(),
        ),
    };
    let status = WireGuardRelayStatus {
        observed_generation: generation,
        endpoint: endpoint.clone(),
        endpoints,
        keys: u32::try_from(accepted.len()).unwrap_or(u32::MAX),
        conditions: vec![condition(
            "Ready",
            available && endpoint.is_some(),
            reason,
            message,
            generation,
            previous,
        )],
    };
    let relays = Api::<WireGuardRelay>::namespaced(client.clone(), &relay.namespace);
    if obj.status.as_ref() != Some(&status) {
        patch_status(&relays, &obj, &status).await?;
    }

    let keys_api = Api::<WireGuardPeerKey>::namespaced(client.clone(), &relay.namespace);
    for (key, (_, verdict)) in keys.iter().zip(&verdicts) {
        let status = key_status(
            key,
            Some(verdict),
            endpoint.as_deref(),
            relay.spec.access_mode,
        );
        if !same_key_status(key.status.as_ref(), &status) {
            patch_status(&keys_api, key.as_ref(), &status).await?;
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Whether `current` already says what `wanted` does, `lastHandshake` aside: the scraper owns
/// that field, and re-applying a stale copy of it here would move it back.
fn same_key_status(
    current: Option<&WireGuardPeerKeyStatus>,
    wanted: &WireGuardPeerKeyStatus,
) -> bool {
    current.is_some_and(|c| {
        let mut c = c.clone();
        c.last_handshake = None;
        c == *wanted
    })
}

/// A peer key's status, `lastHandshake` aside; `verdict` is `None` when its relay does not exist.
fn key_status(
    key: &WireGuardPeerKey,
    verdict: Option<&Verdict>,
    endpoint: Option<&str>,
    mode: AccessMode,
) -> WireGuardPeerKeyStatus {
    let generation = key.metadata.generation;
    let previous = key
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let (ok, reason, mut message) = match verdict {
        None => (
            false,
            "RelayNotFound",
            format!("no WireGuardRelay {} in this namespace", key.spec.relay),
        ),
        Some(v) => (matches!(v, Verdict::Accepted(_)), v.reason(), v.message()),
    };
    if mode == AccessMode::Open && verdict.is_some() {
        message.push_str(" (the relay is in Open mode and lets every key in)");
    }
    let accepted = ok && verdict.is_some();
    WireGuardPeerKeyStatus {
        // The handshake scraper's field, applied by its own field manager.
        last_handshake: None,
        observed_generation: generation,
        endpoint: endpoint.filter(|_| verdict.is_some()).map(str::to_owned),
        peer_config: endpoint
            .filter(|_| accepted)
            .map(|e| peer_config(&key.spec.public_key, e)),
        conditions: vec![condition(
            "Accepted", ok, reason, message, generation, previous,
        )],
    }
}

async fn reconcile_key(obj: Arc<WireGuardPeerKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::MissingField {
        kind: "WireGuardPeerKey",
        field: "metadata.namespace",
    })?;
    ctx.stores_synced().await?;
    let relay = ctx
        .relays
        .get(&ObjectRef::new(&obj.spec.relay).within(&namespace));
    // An existing relay's controller writes this key's status.
    if relay.is_none() {
        let status = key_status(&obj, None, None, AccessMode::AllowList);
        if !same_key_status(obj.status.as_ref(), &status) {
            let keys = Api::<WireGuardPeerKey>::namespaced(ctx.client.clone(), &namespace);
            patch_status(&keys, &obj, &status).await?;
        }
    }
    Ok(Action::await_change())
}

/// Times a reconcile, counts it, and turns a failure into a Warning event on the object.
async fn observed<K, F>(
    controller: &'static str,
    obj: Arc<K>,
    ctx: Arc<Context>,
    reconcile: impl FnOnce(Arc<K>, Arc<Context>) -> F,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: std::future::Future<Output = Result<Action, Error>>,
{
    let start = Instant::now();
    let reference = obj.object_ref(&());
    tracing::debug!(controller, object = ?reference.name, "reconciling");
    let result = reconcile(obj, ctx.clone()).await;
    tracing::debug!(controller, object = ?reference.name, took = ?start.elapsed(), ok = result.is_ok(), "reconciled");
    ctx.metrics.observe(
        controller,
        start.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    if let Err(e) = &result {
        tracing::warn!(controller, object = ?reference.name, error = %e, "reconcile failed");
        let event = Event {
            type_: EventType::Warning,
            reason: "ReconcileFailed".to_owned(),
            note: Some(e.to_string()),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(publish) = ctx.recorder.publish(&event, &reference).await {
            tracing::debug!(%publish, "could not publish event");
        }
    }
    result
}

fn retry<K>(_obj: Arc<K>, _error: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(RETRY)
}

/// Runs both controllers and the handshake scraper for each namespace in `scope` until
/// `shutdown` completes. `ready` is called once every cache has synced.
pub async fn run(
    settings: Settings,
    scope: Scope,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
    ready: impl FnOnce(),
) {
    let namespaces = match scope {
        Scope::Cluster => vec![None],
        Scope::Namespaces(list) => list.into_iter().map(Some).collect(),
    };
    let mut runs = Vec::new();
    let mut stores = Vec::new();
    for namespace in namespaces {
        let (run, synced) = run_scope(settings.clone(), namespace, shutdown.clone());
        runs.push(run);
        stores.push(synced);
    }
    let sync = async move {
        if futures::future::try_join_all(stores).await.is_ok() {
            ready();
        }
    };
    futures::join!(futures::future::join_all(runs), sync);
}

/// A watch of `api` whose store is written before each change is passed on: a spec change or a
/// deletion as the object itself, and the end of a (re)list as `marker` (a nameless object the
/// mapper reads as "everything"). Status-only updates are not passed on: nothing the other
/// controller builds depends on them, and each would cost a reconcile.
fn changes<K>(
    api: Api<K>,
    marker: K,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = kube::runtime::reflector::store();
    let mut generations: std::collections::HashMap<ObjectRef<K>, Option<i64>> =
        std::collections::HashMap::new();
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .flat_map(move |event| {
        let out: Vec<Result<K, watcher::Error>> = match event {
            Ok(watcher::Event::Apply(obj)) => {
                let seen = generations.insert(ObjectRef::from_obj(&obj), obj.meta().generation);
                if seen == Some(obj.meta().generation) {
                    Vec::new()
                } else {
                    vec![Ok(obj)]
                }
            }
            Ok(watcher::Event::Delete(obj)) => {
                generations.remove(&ObjectRef::from_obj(&obj));
                vec![Ok(obj)]
            }
            Ok(watcher::Event::Init) => {
                generations.clear();
                Vec::new()
            }
            // The store swaps in the new list only at InitDone.
            Ok(watcher::Event::InitApply(obj)) => {
                generations.insert(ObjectRef::from_obj(&obj), obj.meta().generation);
                Vec::new()
            }
            Ok(watcher::Event::InitDone) => vec![Ok(marker.clone())],
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(out)
    });
    (store, stream)
}

/// `Store::wait_until_ready`, re-polled: the controller waits on its own store too, and a store
/// wakes only the last of its concurrent waiters.
async fn until_ready<K>(
    store: &Store<K>,
) -> Result<(), kube::runtime::reflector::store::WriterDropped>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(ready) =
            tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await
        {
            return ready;
        }
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The controllers of one namespace (or of the cluster), and a future that resolves once their
/// stores have synced.
fn run_scope(
    settings: Settings,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) -> (
    futures::future::BoxFuture<'static, ()>,
    futures::future::BoxFuture<'static, Result<(), kube::runtime::reflector::store::WriterDropped>>,
) {
    let client = settings.client.clone();
    let ns = namespace.as_deref();
    let relays = api::<WireGuardRelay>(&client, ns);
    let keys = api::<WireGuardPeerKey>(&client, ns);
    let config = watcher::Config::default();
    // Only the operator's own children and relay pods: never every ConfigMap in the cluster.
    let owned = watcher::Config::default().labels(&resources::selector(&resources::pod_labels()));

    let key_controller = Controller::new(keys.clone(), config.clone());
    let relay_controller = Controller::new(relays.clone(), config.clone());
    // Each controller's trigger on the other kind fills the store its reconciles read, before
    // it wakes them: a reconcile never reads a store older than the change that woke it, so a
    // deleted key cannot stay allowed until the next resync.
    let everything = WireGuardPeerKeySpec {
        relay: String::new(),
        public_key: String::new(),
        disabled: false,
    };
    let (key_store, key_changes) = changes(keys, WireGuardPeerKey::new("", everything));
    let (relay_store, relay_changes) = changes(
        relays,
        WireGuardRelay::new("", WireGuardRelaySpec::default()),
    );
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: settings.pods,
        recorder: settings.recorder,
        metrics: settings.metrics,
        http: HttpClient::default(),
        keys: key_store,
        relays: relay_store,
        synced,
    });

    let keys_of_relay = {
        let store = ctx.keys.clone();
        move |relay: WireGuardRelay| {
            let (name, namespace) = (relay.name_any(), relay.namespace());
            store
                .state()
                .into_iter()
                // The nameless marker: the relays were re-listed, so every key may be stale.
                .filter(|k| name.is_empty() || (k.spec.relay == name && k.namespace() == namespace))
                .map(|k| ObjectRef::from_obj(k.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let key_controller = key_controller
        .watches_stream(relay_changes, keys_of_relay)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            |obj, ctx| observed("wireguardpeerkey", obj, ctx, reconcile_key),
            retry,
            ctx.clone(),
        )
        .for_each(|_| async {});

    let relay_of_key = {
        let relays = ctx.relays.clone();
        move |key: WireGuardPeerKey| {
            if key.name_any().is_empty() {
                // The keys were re-listed: deletions in the gap were not seen one by one.
                return relays
                    .state()
                    .iter()
                    .map(|r| ObjectRef::from_obj(r.as_ref()))
                    .collect::<Vec<_>>();
            }
            let relay = ObjectRef::<WireGuardRelay>::new(&key.spec.relay);
            vec![match key.namespace() {
                Some(ns) => relay.within(&ns),
                None => relay,
            }]
        }
    };
    // A relay pod that starts, moves or gets an IP changes the endpoint and needs the keys.
    let relay_of_pod = |pod: Pod| {
        let relay = pod.labels().get(resources::INSTANCE_LABEL)?;
        let relay = ObjectRef::<WireGuardRelay>::new(relay);
        Some(match pod.namespace() {
            Some(ns) => relay.within(&ns),
            None => relay,
        })
    };
    let relay_controller = relay_controller
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .watches(api::<Pod>(&client, ns), owned, relay_of_pod)
        .watches_stream(key_changes, relay_of_key)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            |obj, ctx| observed("wireguardrelay", obj, ctx, reconcile_relay),
            retry,
            ctx.clone(),
        )
        .for_each(|_| async {});

    let handshakes = {
        let scraper = crate::handshakes::run(ctx.clone(), api::<Pod>(&client, ns));
        async move {
            tokio::select! {
                _ = scraper => {}
                _ = shutdown => {}
            }
        }
    };
    let synced = {
        let (keys, relays) = (ctx.keys.clone(), ctx.relays.clone());
        async move {
            until_ready(&keys).await?;
            until_ready(&relays).await?;
            synced_tx.send_replace(true);
            Ok(())
        }
    };
    let run = async move {
        futures::join!(key_controller, relay_controller, handshakes);
    };
    (Box::pin(run), Box::pin(synced))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::WireGuardPeerKeySpec;

    fn key(disabled: bool) -> WireGuardPeerKey {
        let mut k = WireGuardPeerKey::new(
            "laptop",
            WireGuardPeerKeySpec {
                relay: "edge".into(),
                public_key: "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=".into(),
                disabled,
            },
        );
        k.metadata.generation = Some(3);
        k
    }

    #[test]
    fn accepted_key_status_carries_the_peer_hint() {
        let k = key(false);
        let verdict = Verdict::Accepted(k.spec.public_key.parse().expect("key"));
        let s = key_status(
            &k,
            Some(&verdict),
            Some("198.51.100.1:31820"),
            AccessMode::AllowList,
        );
        assert_eq!(s.endpoint.as_deref(), Some("198.51.100.1:31820"));
        let hint = s.peer_config.expect("hint");
        assert!(
            hint.contains("Endpoint = 198.51.100.1:31820")
                && hint.contains("PersistentKeepalive = 25"),
            "{hint}"
        );
        let c = &s.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Accepted", "True", "Accepted")
        );
        assert_eq!(c.observed_generation, Some(3));
    }

    #[test]
    fn missing_relay_and_duplicates_are_not_accepted() {
        let k = key(false);
        let s = key_status(&k, None, None, AccessMode::AllowList);
        assert_eq!(
            (
                s.conditions[0].status.as_str(),
                s.conditions[0].reason.as_str()
            ),
            ("False", "RelayNotFound")
        );
        assert_eq!(s.peer_config, None);
        let dup = Verdict::Duplicate { of: "older".into() };
        let s = key_status(&k, Some(&dup), Some("e:1"), AccessMode::AllowList);
        assert_eq!(s.conditions[0].reason, "DuplicateKey");
        assert!(s.conditions[0].message.contains("older"));
        assert_eq!(s.peer_config, None, "no hint for a key the relay refuses");
    }

    #[test]
    fn the_scrapers_last_handshake_neither_forces_nor_blocks_a_status_write() {
        let k = key(false);
        let verdict = Verdict::Accepted(k.spec.public_key.parse().expect("key"));
        let wanted = key_status(&k, Some(&verdict), Some("e:1"), AccessMode::AllowList);
        assert_eq!(
            wanted.last_handshake, None,
            "never applied by the reconciler"
        );
        let scraped = WireGuardPeerKeyStatus {
            last_handshake: Some(Time(Timestamp::from_second(1_764_500_000).expect("ts"))),
            ..wanted.clone()
        };
        assert!(same_key_status(Some(&scraped), &wanted));
        let moved = key_status(&k, Some(&verdict), Some("e:2"), AccessMode::AllowList);
        assert!(!same_key_status(Some(&scraped), &moved));
        assert!(!same_key_status(None, &wanted));
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let first = condition("Ready", true, "Available", "m".into(), Some(1), &[]);
        let old = Time(Timestamp::from_second(1_700_000_000).expect("timestamp"));
        let previous = [Condition {
            last_transition_time: old.clone(),
            ..first.clone()
        }];
        let again = condition("Ready", true, "Available", "m".into(), Some(2), &previous);
        assert_eq!(again.last_transition_time, old);
        let flipped = condition(
            "Ready",
            false,
            "DeploymentUnavailable",
            "m".into(),
            Some(2),
            &previous,
        );
        assert_ne!(flipped.last_transition_time, old);
    }
}
