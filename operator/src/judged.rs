//! Each relay's latest verdicts on its keys, from the relay controller to the key controller.
//!
//! The relay reconcile judges all of a relay's keys at once (a duplicate or a full shard depends
//! on the whole set) and publishes the result here; the key controller writes each key's status
//! from it. So a relay with 100,000 keys applies its key shards without waiting on 100,000
//! status writes, and a deleted key is cut off by the next relay reconcile, not after them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::mpsc;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::admission::Verdict;
use crate::crd::{AccessMode, WireGuardPeerKey, WireGuardRelay};

/// What a key's status is made of, as its relay last judged it.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// The verdict on the key.
    pub verdict: Verdict,
    /// The relay's endpoint, if it has one yet.
    pub endpoint: Option<String>,
    /// The relay's access mode.
    pub mode: AccessMode,
}

/// One relay's judgements, by key name.
type Judgements = Arc<HashMap<String, Judgement>>;

/// Every relay's latest judgements; and the key controller's trigger.
pub struct Judged {
    relays: Mutex<HashMap<ObjectRef<WireGuardRelay>, Judgements>>,
    trigger: mpsc::UnboundedSender<Arc<WireGuardPeerKey>>,
}

impl Judged {
    /// An empty record, and the stream of keys whose judgement changed, for the key controller.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Arc<WireGuardPeerKey>>) {
        let (trigger, changed) = mpsc::unbounded();
        let judged = Self {
            relays: Mutex::default(),
            trigger,
        };
        (judged, changed)
    }

    /// Records `relay`'s judgements of its keys and wakes the key controller for each key
    /// whose judgement is new or changed. Returns how many were.
    pub fn publish(
        &self,
        relay: &ObjectRef<WireGuardRelay>,
        judgements: Vec<(Arc<WireGuardPeerKey>, Judgement)>,
    ) -> usize {
        let mut relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        let before = relays.get(relay).cloned().unwrap_or_default();
        let mut changed = 0;
        let mut now = HashMap::with_capacity(judgements.len());
        for (key, judgement) in judgements {
            let name = key.name_any();
            if before.get(&name) != Some(&judgement) {
                changed += 1;
                // Closed only when the key controller has stopped, at shutdown.
                let _ = self.trigger.unbounded_send(key);
            }
            now.insert(name, judgement);
        }
        relays.insert(relay.clone(), Arc::new(now));
        changed
    }

    /// The judgement of key `name` by `relay`, if the relay has judged it.
    pub fn get(&self, relay: &ObjectRef<WireGuardRelay>, name: &str) -> Option<Judgement> {
        let relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        relays.get(relay)?.get(name).cloned()
    }

    /// Drops what is known of a relay that is gone.
    pub fn forget(&self, relay: &ObjectRef<WireGuardRelay>) {
        let mut relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        relays.remove(relay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::WireGuardPeerKeySpec;
    use futures::StreamExt;

    fn judgement(endpoint: &str) -> Judgement {
        Judgement {
            verdict: Verdict::Disabled,
            endpoint: Some(endpoint.to_owned()),
            mode: AccessMode::AllowList,
        }
    }

    #[test]
    fn only_new_and_changed_judgements_wake_their_keys() {
        let (judged, mut changed) = Judged::new();
        let relay = ObjectRef::<WireGuardRelay>::new("edge").within("ns");
        let key = |name: &str| {
            let spec = WireGuardPeerKeySpec {
                relay: "edge".into(),
                public_key: String::new(),
                disabled: true,
            };
            Arc::new(WireGuardPeerKey::new(name, spec))
        };
        let first = vec![
            (key("alice"), judgement("192.0.2.1:1")),
            (key("bob"), judgement("192.0.2.1:1")),
        ];
        assert_eq!(judged.publish(&relay, first.clone()), 2);
        assert_eq!(judged.publish(&relay, first), 0, "nothing changed");
        let second = vec![
            (key("alice"), judgement("192.0.2.1:1")),
            (key("bob"), judgement("192.0.2.9:1")),
        ];
        assert_eq!(judged.publish(&relay, second), 1);
        let woken: Vec<Arc<WireGuardPeerKey>> =
            futures::executor::block_on(changed.by_ref().take(3).collect());
        let names: Vec<String> = woken.iter().map(|k| k.name_any()).collect();
        assert_eq!(names.iter().filter(|n| *n == "bob").count(), 2, "{names:?}");
        assert_eq!(
            judged
                .get(&relay, "bob")
                .and_then(|j| j.endpoint)
                .as_deref(),
            Some("192.0.2.9:1")
        );
        judged.forget(&relay);
        assert_eq!(judged.get(&relay, "bob"), None);
    }
}
