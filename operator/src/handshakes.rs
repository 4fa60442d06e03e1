//! "Is my peer connected?": the operator scrapes each relay pod's
//! `wpex_key_last_handshake_timestamp_seconds` from its metrics port and writes it to the peer
//! keys' status. The relay itself never talks to the API server and holds no credentials.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::controller::{self, Context};
use crate::crd::{AccessMode, WireGuardPeerKey};
use crate::http::HttpError;
use crate::owners;
use crate::resources::{self, METRICS_PORT};

/// The relay's gauge of each key's last handshake, labelled by the key in base64.
pub const METRIC: &str = "wpex_key_last_handshake_timestamp_seconds";
/// How often relay pods are scraped: the column lags a handshake by at most this.
pub const POLL: Duration = Duration::from_secs(10);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pods scraped concurrently, so a few unreachable ones do not hold up the rest.
const SCRAPES_AT_ONCE: usize = 8;
/// Its own field manager: the status fields the reconciler applies stay the reconciler's.
const FIELD_MANAGER: &str = "wpex-operator-handshakes";

/// Each key's last handshake (Unix seconds) from a relay's metrics text, by base64 public key.
pub fn parse(metrics: &str) -> HashMap<String, i64> {
    let mut out = HashMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(METRIC) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix("{key=\"") else {
            continue;
        };
        let Some((key, value)) = rest.split_once("\"}") else {
            continue;
        };
        let Ok(at) = value.trim().parse::<f64>() else {
            continue;
        };
        if at.is_finite() && at > 0.0 {
            // Whole seconds: what a Time holds.
            out.insert(key.to_owned(), at as i64);
        }
    }
    out
}

/// A relay by (namespace, name).
type RelayId = (String, String);

/// Scrapes every running relay pod in the scope, then moves each peer key's `lastHandshake`
/// forward; runs until the task is dropped.
pub async fn run(ctx: Arc<Context>, pods: Api<Pod>) {
    let selector = resources::selector(&resources::pod_labels());
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if ctx.stores_synced().await.is_err() {
            return;
        }
        let listed = match list(&pods, &selector).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(error = %e, "listing relay pods to read their handshakes");
                continue;
            }
        };
        let scraped = scrape(&ctx, targets(&ctx, &listed)).await;
        let seen = latest(&ctx, scraped, Timestamp::now().as_second());
        record_all(&ctx, &seen).await;
    }
}

/// The candidates for relay pods in the scope, and the objects that decide which they are.
struct Listed {
    pods: Vec<Pod>,
    replicasets: Vec<ReplicaSet>,
    deployments: Vec<Deployment>,
}

/// Lists what carries the relay labels, in the pods' scope.
async fn list(pods: &Api<Pod>, selector: &str) -> Result<Listed, kube::Error> {
    let lp = ListParams::default().labels(selector);
    let (client, ns) = (pods.clone().into_client(), pods.namespace());
    Ok(Listed {
        pods: pods.list(&lp).await?.items,
        replicasets: controller::api(&client, ns).list(&lp).await?.items,
        deployments: controller::api(&client, ns).list(&lp).await?.items,
    })
}

/// The pods to scrape, with their relay: pods of allow-list relays that exist, run by the
/// relay's own Deployment. The labels alone could be anyone's.
fn targets(ctx: &Context, listed: &Listed) -> Vec<(RelayId, String)> {
    let mut out = Vec::new();
    for relay in ctx.relays.state() {
        let (Some(namespace), Some(uid)) = (relay.namespace(), relay.metadata.uid.clone()) else {
            continue;
        };
        if relay.spec.access_mode != AccessMode::AllowList {
            continue;
        }
        let here = |meta: &kube::api::ObjectMeta| meta.namespace.as_deref() == Some(&namespace);
        let name = relay.name_any();
        let deployments = listed.deployments.iter().filter(|d| here(&d.metadata));
        let pods = listed.pods.iter().filter(|p| here(&p.metadata));
        // ReplicaSets are matched by their Deployment's UID: any namespace's list will do.
        for pod in owners::relay_pods(&uid, &name, deployments, &listed.replicasets, pods) {
            if let Some((_, url)) = metrics_url(pod) {
                out.push(((namespace.clone(), name.clone()), url));
            }
        }
    }
    out
}

/// GETs each target's metrics, a few at a time.
async fn scrape(
    ctx: &Context,
    targets: Vec<(RelayId, String)>,
) -> Vec<(RelayId, Result<String, HttpError>)> {
    futures::stream::iter(targets)
        .map(|(relay, url)| {
            let http = ctx.http.clone();
            async move { (relay, http.get(&url, SCRAPE_TIMEOUT).await) }
        })
        .buffer_unordered(SCRAPES_AT_ONCE)
        .collect()
        .await
}

/// A handshake time this far past the operator's clock is a lie, or a clock gone wrong: either
/// way, recording it would freeze `lastHandshake`, which only moves forward.
const SKEW: i64 = 60;

/// Relay -> key -> last handshake, the latest over the relay's pods; counts each scrape.
/// Times later than `now` (Unix seconds) plus [`SKEW`] are ignored.
fn latest(
    ctx: &Context,
    scraped: Vec<(RelayId, Result<String, HttpError>)>,
    now: i64,
) -> HashMap<RelayId, HashMap<String, i64>> {
    let mut seen: HashMap<RelayId, HashMap<String, i64>> = HashMap::new();
    for (relay, answer) in scraped {
        match answer {
            Ok(text) => {
                ctx.metrics.scraped(true);
                let by_key = seen.entry(relay).or_default();
                for (key, at) in parse(&text) {
                    if at > now.saturating_add(SKEW) {
                        continue;
                    }
                    let slot = by_key.entry(key).or_insert(at);
                    *slot = (*slot).max(at);
                }
            }
            Err(e) => {
                ctx.metrics.scraped(false);
                tracing::debug!(error = %e, "scraping a relay pod");
            }
        }
    }
    seen
}

/// Records what was seen on every peer key in the store that it concerns.
async fn record_all(ctx: &Context, seen: &HashMap<RelayId, HashMap<String, i64>>) {
    for key in ctx.keys.state() {
        let namespace = key.namespace().unwrap_or_default();
        let Some(at) = seen
            .get(&(namespace.clone(), key.spec.relay.clone()))
            .and_then(|by_key| by_key.get(&key.spec.public_key))
        else {
            continue;
        };
        if let Err(e) = record(ctx, &key, &namespace, *at).await {
            tracing::warn!(key = %key.name_any(), error = %e, "writing lastHandshake");
        }
    }
}

/// The relay a pod belongs to and its metrics URL, if it is running with an IP.
fn metrics_url(pod: &Pod) -> Option<(String, String)> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let relay = pod.labels().get(resources::INSTANCE_LABEL)?.clone();
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let at = SocketAddr::new(ip, u16::try_from(METRICS_PORT).ok()?);
    Some((relay, format!("http://{at}/metrics")))
}

/// Writes `at` as the key's last handshake unless the status already has it or a later one.
async fn record(
    ctx: &Context,
    key: &WireGuardPeerKey,
    namespace: &str,
    at: i64,
) -> Result<(), kube::Error> {
    let known = key
        .status
        .as_ref()
        .and_then(|s| s.last_handshake.as_ref())
        .map(|t| t.0.as_second());
    if known.is_some_and(|k| k >= at) {
        return Ok(());
    }
    let Ok(at) = Timestamp::from_second(at) else {
        return Ok(());
    };
    let body = serde_json::json!({
        "apiVersion": "wpex.io/v1alpha1",
        "kind": "WireGuardPeerKey",
        "status": {"lastHandshake": Time(at)},
    });
    Api::<WireGuardPeerKey>::namespaced(ctx.client.clone(), namespace)
        .patch_status(
            &key.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_keys_last_handshake_and_nothing_else() {
        let text = "# HELP wpex_key_last_handshake_timestamp_seconds Unix time\n\
# TYPE wpex_key_last_handshake_timestamp_seconds gauge\n\
wpex_key_last_handshake_timestamp_seconds{key=\"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=\"} 1764500000.75\n\
wpex_key_last_handshake_timestamp_seconds{key=\"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"} 1.7645e9\n\
wpex_key_last_handshake_timestamp_seconds{key=\"bad\"} NaN\n\
wpex_key_last_handshake_timestamp_seconds_other{key=\"x\"} 5\n\
wpex_allowed_keys 3\n";
        let parsed = parse(text);
        assert_eq!(parsed.len(), 2, "{parsed:?}");
        assert_eq!(
            parsed["HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="],
            1_764_500_000
        );
        assert_eq!(
            parsed["xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="],
            1_764_500_000
        );
    }

    #[test]
    fn only_running_pods_with_an_ip_are_scraped() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "edge-1", "namespace": "net",
                "labels": {"app.kubernetes.io/instance": "edge"}},
            "status": {"phase": "Running", "podIP": "fd00::5"}
        }))
        .expect("pod");
        assert_eq!(
            metrics_url(&pod),
            Some(("edge".into(), "http://[fd00::5]:9090/metrics".into()))
        );
        if let Some(s) = pod.status.as_mut() {
            s.phase = Some("Pending".into());
        }
        assert_eq!(metrics_url(&pod), None);
    }
}
