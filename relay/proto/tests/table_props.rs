//! Property tests for the table: random operation sequences against a plain model that expires by
//! scanning, checking the table's invariants and its agreement with the model after every step.
//! Transport data from session endpoints and stand-ins, some through the lock-free routes, moves
//! heard times and roams, which the model leaves out; the invariants check the routes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use wpex_proto::Worker;
use wpex_proto::keys::PublicKey;
use wpex_proto::timers::{ENDPOINT_LINGER, HALF_OPEN_TTL, SESSION_TTL};
use wpex_proto::{DropReason, Expired, Role, State, Table};

const INDICES: u32 = 12;
const ENDPOINTS: u8 = 5;
const KEYS: u8 = 4;

fn addr(e: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, e], 51820))
}

fn key(k: u8) -> PublicKey {
    PublicKey([k + 1; 32])
}

#[derive(Debug, Clone)]
enum Op {
    Insert {
        index: u32,
        endpoint: u8,
        counterpart: Option<u8>,
        unicast: bool,
    },
    Establish {
        initiator: u32,
        responder: u32,
        endpoint: u8,
        key: Option<u8>,
    },
    Confirm {
        index: u32,
    },
    SetHome {
        key: u8,
        endpoint: u8,
    },
    Advance {
        ms: u64,
    },
    Expire,
    Revoke {
        keep: u8,
    },
    /// Transport data on behalf of `side`'s owner, from `endpoint` (the core's admission).
    Admit {
        side: u32,
        endpoint: u8,
    },
    /// Transport data addressed to `index` from `endpoint`, through the routes if they take it.
    Route {
        index: u32,
        endpoint: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let index = 0..INDICES;
    let endpoint = 0..ENDPOINTS;
    let some_key = proptest::option::of(0..KEYS);
    prop_oneof![
        4 => (index.clone(), endpoint.clone(), some_key.clone(), any::<bool>()).prop_map(
            |(index, endpoint, counterpart, unicast)| Op::Insert {
                index,
                endpoint,
                counterpart,
                unicast
            }
        ),
        3 => (index.clone(), index.clone(), endpoint.clone(), some_key).prop_map(
            |(initiator, responder, endpoint, key)| Op::Establish {
                initiator,
                responder,
                endpoint,
                key
            }
        ),
        2 => index.prop_map(|index| Op::Confirm { index }),
        2 => (0..KEYS, endpoint).prop_map(|(key, endpoint)| Op::SetHome { key, endpoint }),
        // Small steps, steps around the half-open TTL and linger, and across a session's life.
        3 => prop_oneof![0..2_000u64, 4_000..6_000u64, 55_000..70_000u64, 170_000..190_000u64]
            .prop_map(|ms| Op::Advance { ms }),
        2 => Just(Op::Expire),
        1 => (0..16u8).prop_map(|keep| Op::Revoke { keep }),
        3 => (0..INDICES, 0..ENDPOINTS).prop_map(|(side, endpoint)| Op::Admit { side, endpoint }),
        3 => (0..INDICES, 0..ENDPOINTS).prop_map(|(index, endpoint)| Op::Route { index, endpoint }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct MIndex {
    endpoint: u8,
    state: State,
    role: Role,
    owner: Option<u8>,
    counterpart: Option<u8>,
    unicast: bool,
    confirmed: bool,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct MEndpoint {
    /// When it is forgotten, while no index points at it.
    linger: Option<Instant>,
    key: Option<u8>,
}

/// The table as a plain model: no heap, expiry scans for the earliest due entry.
#[derive(Debug, Default)]
struct Model {
    indices: BTreeMap<u32, MIndex>,
    endpoints: BTreeMap<u8, MEndpoint>,
    homes: BTreeMap<u8, u8>,
}

impl Model {
    fn refs(&self, e: u8) -> usize {
        self.indices.values().filter(|i| i.endpoint == e).count()
    }

    fn ref_endpoint(&mut self, e: u8) {
        self.endpoints.entry(e).or_default().linger = None;
    }

    fn forget_home(&mut self, k: u8, e: u8) {
        if self.homes.get(&k) == Some(&e) {
            self.homes.remove(&k);
            if let Some(ep) = self.endpoints.get_mut(&e) {
                ep.key = None;
            }
        }
    }

    fn remove_index(&mut self, at: Instant, i: u32) {
        let Some(entry) = self.indices.remove(&i) else {
            return;
        };
        if entry.state == State::HalfOpen
            && entry.unicast
            && let Some(k) = entry.counterpart
            && let Some(home) = self.homes.get(&k).copied()
        {
            self.forget_home(k, home);
        }
        if self.refs(entry.endpoint) == 0
            && let Some(ep) = self.endpoints.get_mut(&entry.endpoint)
        {
            ep.linger = Some(at + ENDPOINT_LINGER);
        }
    }

    fn insert(&mut self, now: Instant, i: u32, e: u8, counterpart: Option<u8>, unicast: bool) {
        self.ref_endpoint(e);
        self.indices.insert(
            i,
            MIndex {
                endpoint: e,
                state: State::HalfOpen,
                role: Role::Initiator,
                owner: None,
                counterpart,
                unicast,
                confirmed: false,
                deadline: now + HALF_OPEN_TTL,
            },
        );
    }

    fn establish(&mut self, now: Instant, init: u32, resp: u32, e: u8, k: Option<u8>) {
        let deadline = now + SESSION_TTL;
        let Some(entry) = self.indices.get_mut(&init) else {
            return;
        };
        entry.state = State::Session { peer: resp };
        entry.owner = k;
        entry.deadline = deadline;
        let responder_key = entry.counterpart;
        self.ref_endpoint(e);
        self.indices.insert(
            resp,
            MIndex {
                endpoint: e,
                state: State::Session { peer: init },
                role: Role::Responder,
                owner: responder_key,
                counterpart: k,
                unicast: false,
                confirmed: false,
                deadline,
            },
        );
    }

    fn confirm(&mut self, i: u32) -> bool {
        match self.indices.get_mut(&i) {
            Some(e) if !e.confirmed => {
                e.confirmed = true;
                true
            }
            _ => false,
        }
    }

    fn set_home(&mut self, k: u8, e: u8) {
        let Some(ep) = self.endpoints.get_mut(&e) else {
            return;
        };
        let previous = ep.key.replace(k);
        if let Some(old) = previous.filter(|old| *old != k) {
            self.homes.remove(&old);
        }
        if let Some(old_e) = self.homes.insert(k, e).filter(|old_e| *old_e != e)
            && let Some(old) = self.endpoints.get_mut(&old_e)
        {
            old.key = None;
        }
    }

    fn expire(&mut self, now: Instant) -> Expired {
        let mut expired = Expired::default();
        loop {
            let index = self
                .indices
                .iter()
                .filter(|(_, e)| e.deadline <= now)
                .min_by_key(|(_, e)| e.deadline)
                .map(|(i, e)| (e.deadline, *i));
            let endpoint = self
                .endpoints
                .iter()
                .filter_map(|(a, e)| e.linger.filter(|at| *at <= now).map(|at| (at, *a)))
                .min();
            match (index, endpoint) {
                (Some((at, i)), None) => {
                    self.remove_index(at, i);
                    expired.indices += 1;
                }
                (Some((at, i)), Some((eat, _))) if at <= eat => {
                    self.remove_index(at, i);
                    expired.indices += 1;
                }
                (_, Some((_, a))) => {
                    if let Some(k) = self.endpoints.get(&a).and_then(|e| e.key) {
                        self.forget_home(k, a);
                    }
                    self.endpoints.remove(&a);
                    expired.endpoints += 1;
                }
                (None, None) => return expired,
            }
        }
    }

    fn revoke(&mut self, now: Instant, keep: impl Fn(u8) -> bool) -> usize {
        let doomed: Vec<u32> = self
            .indices
            .iter()
            .filter(|(_, e)| [e.owner, e.counterpart].iter().flatten().any(|k| !keep(*k)))
            .map(|(i, _)| *i)
            .collect();
        for i in &doomed {
            self.remove_index(now, *i);
        }
        let gone: Vec<(u8, u8)> = self
            .homes
            .iter()
            .filter(|(k, _)| !keep(**k))
            .map(|(k, e)| (*k, *e))
            .collect();
        for (k, e) in gone {
            self.forget_home(k, e);
        }
        doomed.len()
    }
}

fn agree(t: &Table, m: &Model, now: Instant) -> Result<(), TestCaseError> {
    t.check_invariants(now).map_err(TestCaseError::fail)?;
    for i in 0..INDICES {
        let got = t.index(i).map(|e| {
            (
                e.endpoint,
                e.state,
                e.role,
                t.owner(i),
                t.counterpart(i),
                e.unicast,
                e.confirmed,
            )
        });
        let want = m.indices.get(&i).map(|e| {
            (
                addr(e.endpoint),
                e.state,
                e.role,
                e.owner.map(key),
                e.counterpart.map(key),
                e.unicast,
                e.confirmed,
            )
        });
        prop_assert_eq!(got, want, "index {}", i);
    }
    prop_assert_eq!(t.index_count(), m.indices.len());
    prop_assert_eq!(t.endpoint_count(), m.endpoints.len());
    let sessions = m
        .indices
        .values()
        .filter(|e| e.state != State::HalfOpen)
        .count();
    prop_assert_eq!(t.session_count() * 2, sessions);
    for e in 0..ENDPOINTS {
        prop_assert_eq!(t.is_known(addr(e)), m.endpoints.contains_key(&e));
    }
    for k in 0..KEYS {
        prop_assert_eq!(t.home(&key(k)), m.homes.get(&k).map(|e| addr(*e)));
    }
    for from in 0..ENDPOINTS {
        for skip_homed in [false, true] {
            let mut got: Vec<SocketAddr> = t
                .broadcast_targets(addr(from), skip_homed)
                .map(|(a, _)| a)
                .collect();
            got.sort();
            let want: Vec<SocketAddr> = m
                .endpoints
                .iter()
                .filter(|(a, e)| **a != from && !(skip_homed && e.key.is_some()))
                .map(|(a, _)| addr(*a))
                .collect();
            prop_assert_eq!(
                got,
                want,
                "broadcast from {} skip_homed {}",
                from,
                skip_homed
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn table_agrees_with_a_scanning_model(ops in proptest::collection::vec(op(), 1..80)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut t = Table::new(t0);
        let mut m = Model::default();
        let mut worker = Worker::new(t.routes().clone());
        for op in ops {
            match op {
                // The table refuses what breaks its preconditions, and changes nothing then.
                Op::Insert { index, endpoint, counterpart, unicast } => {
                    let got = t.try_insert_half_open(now, index, addr(endpoint), counterpart.map(key), unicast);
                    if m.indices.contains_key(&index) {
                        prop_assert_eq!(got, Err(DropReason::IndexInUse));
                    } else {
                        prop_assert_eq!(got, Ok(()));
                        m.insert(now, index, endpoint, counterpart, unicast);
                    }
                }
                Op::Establish { initiator, responder, endpoint, key: k } => {
                    let expected = match m.indices.get(&initiator) {
                        None => Err(DropReason::UnknownReceiver),
                        Some(e) if e.state != State::HalfOpen => Err(DropReason::NotHalfOpen),
                        Some(_) if m.indices.contains_key(&responder) => Err(DropReason::IndexInUse),
                        Some(_) => Ok(()),
                    };
                    let got = t.try_establish(now, initiator, responder, addr(endpoint), k.map(key));
                    prop_assert_eq!(got, expected);
                    if got.is_ok() {
                        m.establish(now, initiator, responder, endpoint, k);
                    }
                }
                Op::Confirm { index } => prop_assert_eq!(t.confirm(index), m.confirm(index)),
                Op::SetHome { key: k, endpoint } => {
                    t.set_home(key(k), addr(endpoint));
                    m.set_home(k, endpoint);
                }
                Op::Advance { ms } => now += Duration::from_millis(ms),
                Op::Expire => {
                    prop_assert_eq!(t.expire(now), m.expire(now));
                    // Nothing due is left, live or stale: nothing outlives its deadline.
                    prop_assert!(t.next_deadline().is_none_or(|d| d > now));
                }
                Op::Revoke { keep } => {
                    let keeps = |k: u8| keep & (1 << k) != 0;
                    let cut = t.revoke(now, |pk| (0..KEYS).any(|k| key(k) == *pk && keeps(k)));
                    prop_assert_eq!(cut, m.revoke(now, keeps));
                }
                Op::Admit { side, endpoint } => {
                    t.admit_source(now, side, addr(endpoint));
                }
                Op::Route { index, endpoint } => {
                    let mut data = vec![4, 0, 0, 0];
                    data.extend_from_slice(&index.to_le_bytes());
                    data.resize(48, 0);
                    let routed = worker.batch(now).forward(addr(endpoint), &data);
                    let Some(e) = t.index(index) else {
                        prop_assert_eq!(routed, None);
                        continue;
                    };
                    if let Some(to) = routed {
                        // The route is the session's: to this index's endpoint, from its peer's.
                        let State::Session { peer } = e.state else {
                            return Err(TestCaseError::fail(format!("routed {index} out of session")));
                        };
                        prop_assert_eq!(to, e.endpoint);
                        prop_assert_eq!(t.heard(peer), Some(now));
                    }
                }
            }
            agree(&t, &m, now)?;
        }
        // Far in the future everything is gone, and the heap with it.
        let end = now + SESSION_TTL + ENDPOINT_LINGER;
        t.expire(end);
        m.expire(end);
        agree(&t, &m, end)?;
        prop_assert_eq!(t.endpoint_count(), 0);
        prop_assert!(t.next_deadline().is_none());
    }
}
