//! Status: the conditions the reconcilers report, and how they are written.
//!
//! The builders are pure. Writes are server-side applies of the status subresource under the
//! reconciler's field manager, made only when something changed, so an idle reconcile writes
//! nothing and wakes no watcher.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::Patch;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::admission::Verdict;
use crate::apply;
use crate::crd::{
    AccessMode, WireGuardPeerKey, WireGuardPeerKeyStatus, WireGuardRelay, WireGuardRelayStatus,
};
use crate::endpoint::peer_config;
use crate::error::Error;
use crate::owners::Conflict;

/// A condition that keeps its transition time while its status does not change, so re-applying
/// an unchanged status is a no-op and does not wake the watchers again.
pub(crate) fn condition(
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
        .map_or_else(
            || Time(Timestamp::now()),
            |c| c.last_transition_time.clone(),
        );
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Server-side applies `status` to `obj`'s status subresource.
pub(crate) async fn patch_status<K>(
    api: &Api<K>,
    obj: &K,
    status: impl Serialize,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.name_any();
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&name, &apply::params(), &Patch::Apply(&body))
        .await
        .map(|_| ())
        .map_err(|source| Error::Status {
            kind: K::kind(&()).into_owned(),
            name,
            source,
        })
}

/// Whether the relay's Deployment has a pod that can take traffic.
pub(crate) fn available(deployment: &Deployment) -> bool {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        > 0
}

/// The Ready condition's reason and message.
fn ready_reason(available: bool, endpoint: Option<&str>) -> (&'static str, String) {
    match (available, endpoint) {
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
    }
}

/// A relay's status: its endpoint (`spec.endpoint`, else the best of `endpoints`), how many keys
/// it accepts, and Ready once its pod is available and peers have an endpoint.
pub(crate) fn relay_status(
    relay: &WireGuardRelay,
    endpoints: Vec<String>,
    available: bool,
    keys: Keys,
) -> WireGuardRelayStatus {
    let endpoint = relay
        .spec
        .endpoint
        .clone()
        .or_else(|| endpoints.first().cloned());
    let (reason, message) = ready_reason(available, endpoint.as_deref());
    let ready = available && endpoint.is_some();
    with_ready(relay, endpoint, endpoints, keys, (ready, reason, message))
}

/// A relay none of whose children was applied, since objects it does not control hold their
/// names: not Ready, with reason `NameConflict` naming each.
pub(crate) fn conflict_status(
    relay: &WireGuardRelay,
    conflicts: &[Conflict],
    keys: Keys,
) -> WireGuardRelayStatus {
    let message = conflicts
        .iter()
        .map(Conflict::message)
        .collect::<Vec<_>>()
        .join("; ");
    with_ready(
        relay,
        None,
        Vec::new(),
        keys,
        (false, "NameConflict", message),
    )
}

/// How many of a relay's keys it allows, and how many wait past a full shard.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Keys {
    pub accepted: usize,
    pub over_limit: usize,
}

/// The `KeyLimit` condition: True while keys wait because their shard is full.
fn key_limit(keys: Keys, generation: Option<i64>, previous: &[Condition]) -> Condition {
    let (hit, reason, message) = if keys.over_limit == 0 {
        (
            false,
            "WithinLimit",
            format!(
                "every accepted key is allowed ({} of at most {} a shard)",
                keys.accepted,
                crate::resources::SHARD_KEYS
            ),
        )
    } else {
        (
            true,
            "ShardFull",
            format!(
                "{} keys are not allowed: their shard holds {} older keys; removals still take \
                 effect at once, and each removal admits the oldest waiting key",
                keys.over_limit,
                crate::resources::SHARD_KEYS
            ),
        )
    };
    condition("KeyLimit", hit, reason, message, generation, previous)
}

fn with_ready(
    relay: &WireGuardRelay,
    endpoint: Option<String>,
    endpoints: Vec<String>,
    keys: Keys,
    (ready, reason, message): (bool, &str, String),
) -> WireGuardRelayStatus {
    let generation = relay.metadata.generation;
    let previous = relay
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    WireGuardRelayStatus {
        observed_generation: generation,
        endpoint,
        endpoints,
        keys: u32::try_from(keys.accepted).unwrap_or(u32::MAX),
        conditions: vec![
            condition("Ready", ready, reason, message, generation, previous),
            key_limit(keys, generation, previous),
        ],
    }
}

/// Writes the relay's status unless it already says the same.
pub(crate) async fn write_relay(
    client: &Client,
    namespace: &str,
    relay: &WireGuardRelay,
    status: &WireGuardRelayStatus,
) -> Result<(), Error> {
    if relay.status.as_ref() != Some(status) {
        let relays = Api::<WireGuardRelay>::namespaced(client.clone(), namespace);
        patch_status(&relays, relay, status).await?;
    }
    Ok(())
}

/// Writes a key's status unless it already says the same, `lastHandshake` aside.
pub(crate) async fn write_key(
    api: &Api<WireGuardPeerKey>,
    key: &WireGuardPeerKey,
    status: &WireGuardPeerKeyStatus,
) -> Result<(), Error> {
    if !same_key_status(key.status.as_ref(), status) {
        patch_status(api, key, status).await?;
    }
    Ok(())
}

/// Whether `current` already says what `wanted` does, `lastHandshake` aside: the scraper owns
/// that field, and re-applying a stale copy of it here would move it back.
pub(crate) fn same_key_status(
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
pub(crate) fn key_status(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{WireGuardPeerKeySpec, WireGuardRelaySpec};

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

    fn two() -> Keys {
        Keys {
            accepted: 2,
            over_limit: 0,
        }
    }

    #[test]
    fn keys_past_a_full_shard_show_as_key_limit_and_the_relay_stays_ready() {
        let relay = WireGuardRelay::new("edge", WireGuardRelaySpec::default());
        let found = vec!["198.51.100.1:40000".to_owned()];
        let s = relay_status(&relay, found.clone(), true, two());
        let limit = |s: &WireGuardRelayStatus| {
            let c = s.conditions.iter().find(|c| c.type_ == "KeyLimit").cloned();
            c.map(|c| (c.status, c.reason, c.message))
        };
        let (status, reason, _) = limit(&s).expect("a KeyLimit condition");
        assert_eq!((status.as_str(), reason.as_str()), ("False", "WithinLimit"));
        let over = Keys {
            accepted: 2,
            over_limit: 3,
        };
        let s = relay_status(&relay, found, true, over);
        let (status, reason, message) = limit(&s).expect("a KeyLimit condition");
        assert_eq!((status.as_str(), reason.as_str()), ("True", "ShardFull"));
        assert!(message.starts_with("3 keys are not allowed"), "{message}");
        assert_eq!(
            s.conditions[0].status, "True",
            "the allowed keys still work"
        );
    }

    #[test]
    fn relay_is_ready_with_an_available_pod_and_an_endpoint_the_spec_may_set() {
        let mut relay = WireGuardRelay::new("edge", WireGuardRelaySpec::default());
        relay.metadata.generation = Some(4);
        let found = vec![
            "198.51.100.1:40000".to_owned(),
            "[2001:db8::1]:40000".to_owned(),
        ];

        let s = relay_status(&relay, found.clone(), true, two());
        assert_eq!(s.endpoint.as_deref(), Some("198.51.100.1:40000"));
        assert_eq!((s.keys, s.observed_generation), (2, Some(4)));
        let c = &s.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Ready", "True", "Available")
        );

        let s = relay_status(&relay, found.clone(), false, two());
        assert_eq!(s.conditions[0].reason, "DeploymentUnavailable");
        let s = relay_status(&relay, Vec::new(), true, two());
        assert_eq!(
            (s.endpoint, s.conditions[0].reason.as_str()),
            (None, "EndpointPending")
        );

        relay.spec.endpoint = Some("relay.example.org:40000".into());
        let s = relay_status(&relay, found, true, two());
        assert_eq!(s.endpoint.as_deref(), Some("relay.example.org:40000"));
        assert_eq!(s.endpoints.len(), 2, "what was found is still listed");

        let taken = Conflict {
            kind: "Service".into(),
            name: "edge".into(),
            controller: None,
        };
        let s = conflict_status(&relay, &[taken], two());
        let c = &s.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), s.endpoint),
            ("False", "NameConflict", None)
        );
        assert!(c.message.contains("Service edge"), "{}", c.message);
    }
}
