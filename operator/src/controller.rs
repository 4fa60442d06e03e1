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
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::store::WriterDropped;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use wpex_proto::keys::PublicKey;

use crate::admission::{self, Candidate, Verdict};
use crate::apply::{self, Applied, Outcome};
use crate::crd::{
    AccessMode, ServiceType, WireGuardPeerKey, WireGuardPeerKeySpec, WireGuardRelay,
    WireGuardRelaySpec,
};
use crate::endpoint::{RelayNode, endpoints};
use crate::error::Error;
use crate::http::HttpClient;
use crate::judged::Judged;
use crate::metrics::Metrics;
use crate::resources::{self, PodDefaults, Relay};
use crate::status;

// Where they were before the apply step had its own module.
pub use crate::apply::{FIELD_MANAGER, KEYS_VERSION_ANNOTATION};

/// Re-check even without events: node addresses are not watched.
const RESYNC: Duration = Duration::from_secs(300);
const RETRY: Duration = Duration::from_secs(15);
/// Key status writes in flight at once: a relay's 100,000 new keys are written at the pace the
/// API server takes, not all at once.
const KEY_WRITERS: u16 = 16;

/// What the operator is started with, shared by every namespace it watches.
#[derive(Clone)]
pub struct Settings {
    /// The API server connection every watch and write goes through.
    pub client: Client,
    /// What the operator's flags add to every relay pod.
    pub pods: PodDefaults,
    /// Publishes the Warning events of failed reconciles.
    pub recorder: Recorder,
    /// The operator's own metrics.
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
    /// From [`Settings::client`].
    pub client: Client,
    /// From [`Settings::pods`].
    pub pods: PodDefaults,
    /// From [`Settings::recorder`].
    pub recorder: Recorder,
    /// From [`Settings::metrics`].
    pub metrics: Metrics,
    /// Scrapes the relay pods' metrics for the last handshakes.
    pub http: HttpClient,
    /// Every WireGuardPeerKey in the scope.
    pub keys: Store<WireGuardPeerKey>,
    /// Every WireGuardRelay in the scope.
    pub relays: Store<WireGuardRelay>,
    /// Each relay's latest verdicts on its keys, which the key controller writes.
    pub judged: Judged,
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

/// Dereference, validate, build (pure), apply, status: each step a function below.
async fn reconcile_relay(obj: Arc<WireGuardRelay>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Being deleted: re-applying children now would fight the garbage collector.
    if obj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let relay = dereference(&obj)?;
    let admission = validate(&ctx, &relay).await?;
    let children = resources::build(&relay, &admission.accepted, &ctx.pods);
    match apply::children(&ctx.client, &relay, &children).await? {
        Outcome::Applied(applied) => {
            report(&ctx, &obj, &relay, &admission, &applied).await?;
            Ok(Action::requeue(RESYNC))
        }
        Outcome::Conflicts(conflicts) => {
            let status = status::conflict_status(&obj, &conflicts, admission.counts());
            status::write_relay(&ctx.client, &relay.namespace, &obj, &status).await?;
            // The object in the way is not watched: look again soon.
            Ok(Action::requeue(RETRY))
        }
    }
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

/// Validate's outcome for one relay.
struct Admission {
    /// The relay's peer keys.
    keys: Vec<Arc<WireGuardPeerKey>>,
    /// Each key's verdict, in the order of `keys`.
    verdicts: Vec<Verdict>,
    /// The keys for the relay's key file.
    accepted: Vec<PublicKey>,
}

impl Admission {
    /// How many keys are allowed, and how many wait past a full shard.
    fn counts(&self) -> status::Keys {
        status::Keys {
            accepted: self.accepted.len(),
            over_limit: self
                .verdicts
                .iter()
                .filter(|v| matches!(v, Verdict::KeyLimit { .. }))
                .count(),
        }
    }
}

/// Validate: which of this relay's peer keys are accepted. The store is complete before the
/// first reconcile, or a relay could briefly be given an empty allow-list.
async fn validate(ctx: &Context, relay: &Relay) -> Result<Admission, Error> {
    ctx.stores_synced().await?;
    Ok(admit(ctx.keys.state(), relay))
}

/// Judges the relay's keys among `all` together: a duplicate depends on the whole set. Their
/// order does not matter: the key file is rendered sorted.
fn admit(all: Vec<Arc<WireGuardPeerKey>>, relay: &Relay) -> Admission {
    let keys: Vec<Arc<WireGuardPeerKey>> = all
        .into_iter()
        .filter(|k| {
            k.spec.relay == relay.name
                && k.metadata.namespace.as_deref() == Some(relay.namespace.as_str())
                && k.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let candidates: Vec<Candidate<'_>> = keys.iter().map(|k| candidate(k)).collect();
    let verdicts = admission::judge(&candidates);
    let accepted = admission::accepted(&verdicts);
    Admission {
        keys,
        verdicts,
        accepted,
    }
}

fn candidate(key: &WireGuardPeerKey) -> Candidate<'_> {
    Candidate {
        name: key.metadata.name.as_deref().unwrap_or_default(),
        public_key: &key.spec.public_key,
        disabled: key.spec.disabled,
        created: key
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
    }
}

/// Status: the relay's; then its keys' verdicts and endpoint, published for the key
/// controller, which writes each key's status without holding up this reconcile.
async fn report(
    ctx: &Context,
    obj: &WireGuardRelay,
    relay: &Relay,
    admission: &Admission,
    applied: &Applied,
) -> Result<(), Error> {
    let found = relay_endpoints(&ctx.client, relay, applied).await?;
    let available = status::available(&applied.deployment);
    let relay_status = status::relay_status(obj, found, available, admission.counts());
    status::write_relay(&ctx.client, &relay.namespace, obj, &relay_status).await?;
    let verdicts = admission
        .keys
        .iter()
        .cloned()
        .zip(admission.verdicts.iter().cloned());
    ctx.judged.publish(
        &ObjectRef::from_obj(obj),
        relay_status.endpoint.clone(),
        relay.spec.access_mode,
        verdicts,
    );
    Ok(())
}

/// Every address peers can use, from the Service, and for NodePort from the relay pod's node.
async fn relay_endpoints(
    client: &Client,
    relay: &Relay,
    applied: &Applied,
) -> Result<Vec<String>, Error> {
    let (node, host_ips) = if relay.spec.service.type_ == ServiceType::NodePort {
        relay_node(client, &applied.pods).await?
    } else {
        (None, Vec::new())
    };
    let at = RelayNode {
        node: node.as_ref(),
        host_ips: &host_ips,
    };
    Ok(endpoints(relay.spec.service.type_, &applied.service, at))
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

/// Writes a key's status: from its relay's latest judgement, or `RelayNotFound`. A key its
/// relay has not judged yet is written when the relay's reconcile publishes it.
async fn reconcile_key(obj: Arc<WireGuardPeerKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::MissingField {
        kind: "WireGuardPeerKey",
        field: "metadata.namespace",
    })?;
    ctx.stores_synced().await?;
    let relay_ref = ObjectRef::new(&obj.spec.relay).within(&namespace);
    let status = if ctx.relays.get(&relay_ref).is_some() {
        let Some(j) = ctx.judged.get(&relay_ref, &obj.name_any()) else {
            return Ok(Action::await_change());
        };
        status::key_status(&obj, Some(&j.verdict), j.endpoint.as_deref(), j.mode)
    } else {
        ctx.judged.forget(&relay_ref);
        status::key_status(&obj, None, None, AccessMode::AllowList)
    };
    let keys = Api::<WireGuardPeerKey>::namespaced(ctx.client.clone(), &namespace);
    status::write_key(&keys, &obj, &status).await?;
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
    // managedFields are most of a small object's size, and no reconcile reads them: with
    // 100,000 keys they would be most of the operator's memory.
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|obj| obj.managed_fields_mut().clear()),
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

/// Passes `stream` on, and a copy of each object it yields to the second stream, which sees
/// them as the first is polled.
fn tee<K: Clone + Send + 'static, E>(
    stream: impl futures::Stream<Item = Result<K, E>> + Send + 'static,
) -> (
    impl futures::Stream<Item = Result<K, E>> + Send + 'static,
    impl futures::Stream<Item = K> + Send + 'static,
) {
    let (copies, copied) = futures::channel::mpsc::unbounded();
    let stream = stream.inspect(move |item| {
        if let Ok(obj) = item {
            // The copy's reader stops only at shutdown.
            let _ = copies.unbounded_send(obj.clone());
        }
    });
    (stream, copied)
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

/// `K` in `namespace`, or in every namespace.
pub(crate) fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
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
    BoxFuture<'static, ()>,
    BoxFuture<'static, Result<(), WriterDropped>>,
) {
    let client = settings.client.clone();
    let ns = namespace.as_deref();
    let relays = api::<WireGuardRelay>(&client, ns);
    let keys = api::<WireGuardPeerKey>(&client, ns);
    // Each controller's trigger on the other kind fills the store its reconciles read, before
    // it wakes them: a reconcile never reads a store older than the change that woke it, so a
    // deleted key cannot stay allowed until the next resync.
    let everything = WireGuardPeerKeySpec {
        relay: String::new(),
        public_key: String::new(),
        disabled: false,
    };
    let (key_store, key_changes) = changes(keys.clone(), WireGuardPeerKey::new("", everything));
    // One watch and one store of the keys for both controllers: with 100,000 keys a second
    // copy would be most of the operator's memory. The key controller needs no re-list marker:
    // the relay reconcile that follows one publishes whatever changed.
    let (key_changes, keys_changed) = tee(key_changes);
    let keys_changed = keys_changed
        .filter(|k| futures::future::ready(!k.name_any().is_empty()))
        .map(Ok);
    let (relay_store, relay_changes) = changes(
        relays.clone(),
        WireGuardRelay::new("", WireGuardRelaySpec::default()),
    );
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    let (judged, judgements_changed) = Judged::new();
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: settings.pods,
        recorder: settings.recorder,
        metrics: settings.metrics,
        http: HttpClient::default(),
        keys: key_store,
        relays: relay_store,
        judged,
        synced,
    });

    let key_controller = key_controller(
        keys_changed,
        relay_changes,
        judgements_changed,
        ctx.clone(),
        shutdown.clone(),
    );
    let relay_controller = relay_controller(
        &client,
        ns,
        relays,
        key_changes,
        ctx.clone(),
        shutdown.clone(),
    );
    let handshakes = scrape_handshakes(ctx.clone(), api::<Pod>(&client, ns), shutdown);
    let synced = mark_synced(ctx.keys.clone(), ctx.relays.clone(), synced_tx);
    let run = async move {
        futures::join!(key_controller, relay_controller, handshakes);
    };
    (Box::pin(run), Box::pin(synced))
}

/// The handshake scraper, until `shutdown`.
async fn scrape_handshakes(
    ctx: Arc<Context>,
    pods: Api<Pod>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        () = crate::handshakes::run(ctx, pods) => {}
        () = shutdown => {}
    }
}

/// Waits for both stores, then tells `Context::stores_synced`'s waiters.
async fn mark_synced(
    keys: Store<WireGuardPeerKey>,
    relays: Store<WireGuardRelay>,
    synced: tokio::sync::watch::Sender<bool>,
) -> Result<(), WriterDropped> {
    until_ready(&keys).await?;
    until_ready(&relays).await?;
    synced.send_replace(true);
    Ok(())
}

/// The peer key controller, woken by its keys, by every relay change (a relay that appears or
/// goes away decides whether its keys have a relay) and by each new judgement of a key.
fn key_controller(
    keys_changed: impl futures::Stream<Item = Result<WireGuardPeerKey, watcher::Error>> + Send + 'static,
    relay_changes: impl futures::Stream<Item = Result<WireGuardRelay, watcher::Error>> + Send + 'static,
    judgements_changed: impl futures::Stream<Item = Arc<WireGuardPeerKey>> + Send + 'static,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> BoxFuture<'static, ()> {
    let run = Controller::for_stream(keys_changed, ctx.keys.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(KEY_WRITERS))
        .watches_stream(relay_changes, keys_of_relay(ctx.keys.clone()))
        .watches_stream(
            judgements_changed.map(|key| Ok((*key).clone())),
            |key: WireGuardPeerKey| Some(ObjectRef::from_obj(&key)),
        )
        .graceful_shutdown_on(shutdown)
        .run(
            |obj, ctx| observed("wireguardpeerkey", obj, ctx, reconcile_key),
            retry,
            ctx,
        )
        .for_each(|_| async {});
    Box::pin(run)
}

/// The relay controller, woken by its relays, their children, their pods and their keys.
fn relay_controller(
    client: &Client,
    ns: Option<&str>,
    relays: Api<WireGuardRelay>,
    key_changes: impl futures::Stream<Item = Result<WireGuardPeerKey, watcher::Error>> + Send + 'static,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> BoxFuture<'static, ()> {
    // Only the operator's own children and relay pods: never every ConfigMap in the cluster.
    let owned = watcher::Config::default().labels(&resources::selector(&resources::pod_labels()));
    let run = Controller::new(relays, watcher::Config::default())
        .owns(api::<ConfigMap>(client, ns), owned.clone())
        .owns(api::<Deployment>(client, ns), owned.clone())
        .owns(api::<Service>(client, ns), owned.clone())
        .watches(api::<Pod>(client, ns), owned, relay_of_pod)
        .watches_stream(key_changes, relay_of_key(ctx.relays.clone()))
        .graceful_shutdown_on(shutdown)
        .run(
            |obj, ctx| observed("wireguardrelay", obj, ctx, reconcile_relay),
            retry,
            ctx,
        )
        .for_each(|_| async {});
    Box::pin(run)
}

/// The keys of a changed relay, from the key store.
fn keys_of_relay(
    store: Store<WireGuardPeerKey>,
) -> impl Fn(WireGuardRelay) -> Vec<ObjectRef<WireGuardPeerKey>> + Send + Sync + 'static {
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
}

/// The relay a changed key names; every relay in the store after a re-list of the keys.
fn relay_of_key(
    relays: Store<WireGuardRelay>,
) -> impl Fn(WireGuardPeerKey) -> Vec<ObjectRef<WireGuardRelay>> + Send + Sync + 'static {
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
}

/// A relay pod that starts, moves or gets an IP changes the endpoint and needs the keys.
fn relay_of_pod(pod: Pod) -> Option<ObjectRef<WireGuardRelay>> {
    let relay = pod.labels().get(resources::INSTANCE_LABEL)?;
    let relay = ObjectRef::<WireGuardRelay>::new(relay);
    Some(match pod.namespace() {
        Some(ns) => relay.within(&ns),
        None => relay,
    })
}
