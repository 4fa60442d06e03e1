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

/// One relay's judgements: its verdicts by key name, and what all its keys share.
#[derive(Debug, Default)]
struct Judgements {
    endpoint: Option<String>,
    mode: AccessMode,
    verdicts: HashMap<String, Verdict>,
}

/// Every relay's latest judgements; and the key controller's trigger.
pub struct Judged {
    relays: Mutex<HashMap<ObjectRef<WireGuardRelay>, Arc<Judgements>>>,
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

    /// Records `relay`'s verdicts on its keys, with its endpoint and mode, and wakes the key
    /// controller for each key whose judgement is new or changed. Returns how many were.
    pub fn publish(
        &self,
        relay: &ObjectRef<WireGuardRelay>,
        endpoint: Option<String>,
        mode: AccessMode,
        verdicts: impl ExactSizeIterator<Item = (Arc<WireGuardPeerKey>, Verdict)>,
    ) -> usize {
        let before = self.judgements(relay).unwrap_or_default();
        // The endpoint and mode are in every key's status: a change to either changes all.
        let shared_changed = before.endpoint != endpoint || before.mode != mode;
        let mut changed = 0;
        let mut now = Judgements {
            endpoint,
            mode,
            verdicts: HashMap::with_capacity(verdicts.len()),
        };
        for (key, verdict) in verdicts {
            let name = key.name_any();
            if shared_changed || before.verdicts.get(&name) != Some(&verdict) {
                changed += 1;
                // Closed only when the key controller has stopped, at shutdown.
                let _ = self.trigger.unbounded_send(key);
            }
            now.verdicts.insert(name, verdict);
        }
        let mut relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        relays.insert(relay.clone(), Arc::new(now));
        changed
    }

    /// The judgement of key `name` by `relay`, if the relay has judged it.
    pub fn get(&self, relay: &ObjectRef<WireGuardRelay>, name: &str) -> Option<Judgement> {
        let judgements = self.judgements(relay)?;
        Some(Judgement {
            verdict: judgements.verdicts.get(name)?.clone(),
            endpoint: judgements.endpoint.clone(),
            mode: judgements.mode,
        })
    }

    /// Drops what is known of a relay that is gone.
    pub fn forget(&self, relay: &ObjectRef<WireGuardRelay>) {
        let mut relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        relays.remove(relay);
    }

    /// The lock is held only to clone the `Arc`: key status writers read while a relay
    /// publishes.
    fn judgements(&self, relay: &ObjectRef<WireGuardRelay>) -> Option<Arc<Judgements>> {
        let relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        relays.get(relay).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::WireGuardPeerKeySpec;
    use futures::StreamExt;

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
        let verdicts = |bob: Verdict| vec![(key("alice"), Verdict::Disabled), (key("bob"), bob)];
        let endpoint = || Some("192.0.2.1:1".to_owned());
        let mode = AccessMode::AllowList;
        let publish = |endpoint, verdicts: Vec<_>| {
            judged.publish(&relay, endpoint, mode, verdicts.into_iter())
        };
        assert_eq!(publish(endpoint(), verdicts(Verdict::Disabled)), 2);
        assert_eq!(
            publish(endpoint(), verdicts(Verdict::Disabled)),
            0,
            "nothing changed"
        );
        assert_eq!(
            publish(endpoint(), verdicts(Verdict::Invalid)),
            1,
            "bob's verdict"
        );
        let moved = Some("192.0.2.9:1".to_owned());
        assert_eq!(
            publish(moved, verdicts(Verdict::Invalid)),
            2,
            "everyone's endpoint"
        );
        let woken: Vec<Arc<WireGuardPeerKey>> =
            futures::executor::block_on(changed.by_ref().take(5).collect());
        let names: Vec<String> = woken.iter().map(|k| k.name_any()).collect();
        assert_eq!(names.iter().filter(|n| *n == "bob").count(), 3, "{names:?}");
        let bob = judged.get(&relay, "bob").expect("judged");
        assert_eq!(bob.verdict, Verdict::Invalid);
        assert_eq!(bob.endpoint.as_deref(), Some("192.0.2.9:1"));
        assert_eq!(judged.get(&relay, "carol"), None, "never judged");
        judged.forget(&relay);
        assert_eq!(judged.get(&relay, "bob"), None);
    }
}
