//! Consistency checks over the table's internals, for tests, property tests and the fuzzer.
//!
//! Always compiled (they cost nothing unless called) so that integration tests and the fuzz crate,
//! which link the library as it ships, can call them after every step. A linear pass over the
//! table and its timer heap: cheap on the small tables those drivers build.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::{IndexEntry, KeyId, Published, Role, State, Subject, Table, Timer, slot};
use crate::keys::PublicKey;
use crate::timers::{ENDPOINT_LINGER, HALF_OPEN_TTL, SESSION_TTL};

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

impl Table {
    /// Checks the table's invariants; `now` is the latest instant given to the table.
    ///
    /// - every index has exactly one live timer, due no later than `now` plus its TTL;
    /// - session links are symmetric (each side names the other, with the other role) and both
    ///   sides share one deadline, so neither outlives the other; the session count matches;
    /// - each endpoint's reference count is the number of indices pointing at it; an endpoint
    ///   with no reference has a live linger timer and one with references has none;
    /// - `homes` and each endpoint's key agree both ways;
    /// - timer generations are unique and every live timer belongs to an existing entry;
    /// - the routes are exactly the table's: one to its endpoint for each index with no roam,
    ///   none for any other; it takes transport data from the session peer's endpoint exactly when
    ///   such data would be forwarded with no change but the sender being heard (a session, no
    ///   roam on either side, confirmed if the responder's); no heard time in the future;
    /// - the routes' known endpoints are exactly the table's.
    ///
    /// That nothing outlives its deadline is [`Table::next_deadline`] being after `now` once
    /// [`Table::expire`]`(now)` has run: expiry pops every timer due, live or stale.
    pub fn check_invariants(&self, now: Instant) -> Result<(), String> {
        let by_generation = self.timers_by_generation()?;
        let mut refs: HashMap<SocketAddr, u32> = HashMap::new();
        let mut session_sides = 0;
        for (&i, e) in &self.indices {
            *refs.entry(e.endpoint).or_default() += 1;
            ensure!(
                self.endpoints.contains_key(&e.endpoint),
                "index {i} points at unknown endpoint {}",
                e.endpoint
            );
            let timer = self.check_index_timer(now, i, e, &by_generation)?;
            self.check_index_route(now, i, e)?;
            if matches!(e.state, State::Session { .. }) {
                session_sides += 1;
            }
            self.check_index_state(i, e, timer, &by_generation)?;
        }
        self.check_routes_known()?;
        ensure!(
            self.sessions == session_sides,
            "session side count {} but {session_sides} indices are in a session",
            self.sessions
        );
        let lingering = self.check_endpoints(now, &refs, &by_generation)?;
        self.check_names()?;

        // Live timers are exactly one per index and one per lingering endpoint.
        let live = by_generation
            .values()
            .filter(|t| match t.subject {
                Subject::Index(i) => self
                    .indices
                    .get(&i)
                    .is_some_and(|e| e.timer == t.generation),
                Subject::Endpoint(a) => self
                    .endpoints
                    .get(&a)
                    .is_some_and(|e| e.refs == 0 && e.timer == t.generation),
            })
            .count();
        ensure!(
            live == self.indices.len() + lingering,
            "{live} live timers for {} indices and {lingering} lingering endpoints",
            self.indices.len()
        );
        Ok(())
    }

    /// The pending timers by generation, each generation armed once and none beyond the last.
    fn timers_by_generation(&self) -> Result<HashMap<u64, Timer<Subject>>, String> {
        let mut by_generation: HashMap<u64, Timer<Subject>> = HashMap::new();
        for t in self.timers() {
            ensure!(
                t.generation > 0 && t.generation <= self.generation,
                "timer generation {} outside 1..={}",
                t.generation,
                self.generation
            );
            ensure!(
                by_generation.insert(t.generation, t).is_none(),
                "timer generation {} used twice",
                t.generation
            );
        }
        Ok(by_generation)
    }

    /// Index `i`'s live timer, due within its TTL; and nothing about it heard in the future.
    fn check_index_timer<'t>(
        &self,
        now: Instant,
        i: u32,
        e: &IndexEntry,
        by_generation: &'t HashMap<u64, Timer<Subject>>,
    ) -> Result<&'t Timer<Subject>, String> {
        let timer = by_generation
            .get(&e.timer)
            .filter(|t| t.subject == Subject::Index(i))
            .ok_or_else(|| format!("index {i} has no live timer (generation {})", e.timer))?;
        let ttl = match e.state {
            State::HalfOpen => HALF_OPEN_TTL,
            State::Session { .. } => SESSION_TTL,
        };
        ensure!(
            timer.at <= now + ttl,
            "index {i} ({:?}) is due {:?} after now, beyond its TTL {ttl:?}",
            e.state,
            timer.at - now
        );
        ensure!(
            e.heard <= now && self.heard(i).is_some_and(|h| h <= now),
            "index {i} heard from in the future"
        );
        Ok(timer)
    }

    /// Index `i`'s route is the one the table implies, and marked as such; its roam, if any,
    /// is elsewhere and not heard in the future.
    fn check_index_route(&self, now: Instant, i: u32, e: &IndexEntry) -> Result<(), String> {
        // Stated afresh rather than through the table's own function, so a slip there shows.
        let data_from = match e.state {
            State::Session { peer } => self
                .indices
                .get(&peer)
                .filter(|p| p.roam.is_none() && (e.role == Role::Initiator || e.confirmed))
                .map(|p| p.endpoint),
            State::HalfOpen => None,
        };
        let wanted = e.roam.is_none().then_some((e.endpoint, data_from));
        let published = self.routes.get(i);
        ensure!(
            wanted == published.map(|r| (r.to, r.from)),
            "index {i} ({:?}, {:?}, roam {:?}, confirmed {}): route {published:?}, but the \
             table says (to, from) {wanted:?}",
            e.state,
            e.role,
            e.roam,
            e.confirmed
        );
        let marked = match published {
            None => Published::None,
            Some(r) if r.from.is_none() => Published::CookieReplies,
            Some(_) => Published::Data,
        };
        ensure!(
            e.route == marked,
            "index {i} marked {:?} with route {published:?}",
            e.route
        );
        if let Some(roam) = e.roam() {
            ensure!(
                roam.addr != e.endpoint && roam.heard <= now,
                "index {i}: roam {roam:?} is its own endpoint or heard in the future"
            );
        }
        Ok(())
    }

    /// A half-open index is an initiator's; a session's two sides name each other, have the
    /// two roles and expire together (`timer` is index `i`'s).
    fn check_index_state(
        &self,
        i: u32,
        e: &IndexEntry,
        timer: &Timer<Subject>,
        by_generation: &HashMap<u64, Timer<Subject>>,
    ) -> Result<(), String> {
        match e.state {
            State::HalfOpen => {
                ensure!(
                    e.role == Role::Initiator,
                    "half-open index {i} is a responder's"
                );
            }
            State::Session { peer } => {
                let p = self
                    .indices
                    .get(&peer)
                    .ok_or_else(|| format!("session index {i} names missing peer {peer}"))?;
                ensure!(
                    peer != i && p.state == State::Session { peer: i },
                    "session index {i} -> {peer}, but {peer} is {:?}",
                    p.state
                );
                ensure!(
                    p.role != e.role,
                    "both sides of session {i}/{peer} are {:?}",
                    e.role
                );
                let peer_at = by_generation.get(&p.timer).map(|t| t.at);
                ensure!(
                    peer_at == Some(timer.at),
                    "session {i}/{peer} sides expire apart: {:?} vs {peer_at:?}",
                    timer.at
                );
            }
        }
        Ok(())
    }

    /// The routes know exactly the table's endpoints and route no index the table lacks.
    fn check_routes_known(&self) -> Result<(), String> {
        let mut known = self.routes.known();
        known.sort();
        let mut endpoints: Vec<SocketAddr> = self.endpoints.keys().copied().collect();
        endpoints.sort();
        ensure!(
            known == endpoints,
            "the routes know endpoints {known:?}, the table {endpoints:?}"
        );
        for i in self.routes.indices() {
            ensure!(
                self.indices.contains_key(&i),
                "a route for index {i}, which the table does not hold"
            );
        }
        Ok(())
    }

    /// Each endpoint's reference count is `refs`'s; an unreferenced one lingers on a live timer
    /// and a referenced one has none; endpoints' keys and `homes` agree both ways. Returns how
    /// many endpoints linger.
    fn check_endpoints(
        &self,
        now: Instant,
        refs: &HashMap<SocketAddr, u32>,
        by_generation: &HashMap<u64, Timer<Subject>>,
    ) -> Result<usize, String> {
        let mut lingering = 0;
        for (addr, ep) in &self.endpoints {
            let counted = refs.get(addr).copied().unwrap_or(0);
            ensure!(
                ep.refs == counted,
                "endpoint {addr} has refs {} but {counted} indices point at it",
                ep.refs
            );
            if ep.refs == 0 {
                lingering += 1;
                let timer = by_generation
                    .get(&ep.timer)
                    .filter(|t| t.subject == Subject::Endpoint(*addr))
                    .ok_or_else(|| format!("unreferenced endpoint {addr} has no linger timer"))?;
                ensure!(
                    timer.at <= now + ENDPOINT_LINGER,
                    "endpoint {addr} lingers {:?} past now",
                    timer.at - now
                );
            } else {
                ensure!(
                    ep.timer == 0,
                    "endpoint {addr} with {} refs has a linger timer",
                    ep.refs
                );
            }
            if let Some(key) = ep.key {
                ensure!(
                    self.homes.get(&key) == Some(addr),
                    "endpoint {addr} holds {key:?} whose home is {:?}",
                    self.homes.get(&key)
                );
            }
        }
        for (key, addr) in &self.homes {
            let held = self.endpoints.get(addr).map(|e| e.key);
            ensure!(
                held == Some(Some(*key)),
                "{key:?} lives at {addr}, which holds {held:?}"
            );
        }
        Ok(lingering)
    }

    /// Each named key is counted once per naming entry, and nothing else is held.
    fn check_names(&self) -> Result<(), String> {
        let mut named: HashMap<KeyId, u32> = HashMap::new();
        for e in self.indices.values() {
            for id in [e.owner, e.counterpart].into_iter().flatten() {
                *named.entry(id).or_default() += 1;
            }
        }
        let held: Vec<_> = self.names.slots.iter().flatten().collect();
        ensure!(
            held.len() == named.len() && self.names.ids.len() == named.len(),
            "{} keys held and {} indexed for {} named",
            held.len(),
            self.names.ids.len(),
            named.len()
        );
        for (id, count) in &named {
            let slot = self.names.slots.get(slot(*id)).copied().flatten();
            let key = slot.map(|(key, _)| key);
            ensure!(
                slot.map(|(_, refs)| refs) == Some(*count)
                    && key.is_some_and(|k| self.names.ids.get(&k) == Some(id)),
                "key {id} named {count} times, held as {slot:?}"
            );
        }
        Ok(())
    }

    /// Checks that `other` holds the same state as this table: the same entries with the same
    /// heard times (wherever they are kept), deadlines, endpoints, homes, routes and pending
    /// timers. Timers are compared by deadline and subject, not by generation number: two tables
    /// hash with different seeds, so a revocation may arm the same timers in another order.
    pub fn check_same(&self, other: &Table) -> Result<(), String> {
        let deadlines = |t: &Table| -> HashMap<u64, Instant> {
            t.timers().map(|x| (x.generation, x.at)).collect()
        };
        let (mine, theirs) = (deadlines(self), deadlines(other));
        self.same_indices(other, &mine, &theirs)?;
        self.same_endpoints(other, &mine, &theirs)?;
        ensure!(self.homes == other.homes, "homes differ");
        ensure!(
            (self.sessions, self.generation) == (other.sessions, other.generation),
            "sessions and timers armed: {:?} against {:?}",
            (self.sessions, self.generation),
            (other.sessions, other.generation)
        );
        let pending = |t: &Table| {
            let mut v: Vec<(Instant, Option<u32>, Option<SocketAddr>)> = t
                .timers()
                .map(|x| match x.subject {
                    Subject::Index(i) => (x.at, Some(i), None),
                    Subject::Endpoint(a) => (x.at, None, Some(a)),
                })
                .collect();
            v.sort();
            v
        };
        ensure!(
            pending(self) == pending(other),
            "pending timers differ: {:?} against {:?}",
            pending(self),
            pending(other)
        );
        let routes = |t: &Table| {
            let mut v = t.routes.indices();
            v.sort_unstable();
            v
        };
        ensure!(
            routes(self) == routes(other),
            "routes {:?} against {:?}",
            routes(self),
            routes(other)
        );
        Ok(())
    }

    /// [`Table::check_same`] for the indices: entries, heard times and routes; `mine` and
    /// `theirs` are each table's timer deadlines by generation.
    fn same_indices(
        &self,
        other: &Table,
        mine: &HashMap<u64, Instant>,
        theirs: &HashMap<u64, Instant>,
    ) -> Result<(), String> {
        // Everything but the timer generation and where the heard time is kept.
        let view = |t: &Table, e: &IndexEntry, at: &HashMap<u64, Instant>| {
            (
                e.endpoint,
                e.state,
                e.role,
                t.names.key(e.owner),
                t.names.key(e.counterpart),
                e.unicast,
                e.confirmed,
                e.roam(),
                e.route,
                at.get(&e.timer).copied(),
            )
        };
        ensure!(
            self.indices.len() == other.indices.len(),
            "{} indices against {}",
            self.indices.len(),
            other.indices.len()
        );
        for (&i, e) in &self.indices {
            let o = other
                .indices
                .get(&i)
                .ok_or_else(|| format!("index {i} only in one table"))?;
            let (a, b) = (view(self, e, mine), view(other, o, theirs));
            ensure!(a == b, "index {i}: {a:?} against {b:?}");
            let (a, b) = (self.heard(i), other.heard(i));
            ensure!(a == b, "index {i} heard at {a:?} against {b:?}");
            let route = |t: &Table| t.routes.get(i).map(|r| (r.to, r.from));
            let (a, b) = (route(self), route(other));
            ensure!(a == b, "index {i} routed {a:?} against {b:?}");
        }
        Ok(())
    }

    /// [`Table::check_same`] for the endpoints: references, keys and linger deadlines.
    fn same_endpoints(
        &self,
        other: &Table,
        mine: &HashMap<u64, Instant>,
        theirs: &HashMap<u64, Instant>,
    ) -> Result<(), String> {
        ensure!(
            self.endpoints.len() == other.endpoints.len(),
            "{} endpoints against {}",
            self.endpoints.len(),
            other.endpoints.len()
        );
        for (addr, e) in &self.endpoints {
            let o = other
                .endpoints
                .get(addr)
                .ok_or_else(|| format!("endpoint {addr} only in one table"))?;
            let (a, b) = (
                (e.refs, e.key, mine.get(&e.timer)),
                (o.refs, o.key, theirs.get(&o.timer)),
            );
            ensure!(a == b, "endpoint {addr}: {a:?} against {b:?}");
        }
        Ok(())
    }

    /// Checks that every key the table holds (on an index or as a home) passes `allowed`, and,
    /// for keys on sessions, `handshaken` too. Open mode passes `|_| false`: no key anywhere.
    pub fn check_keys(
        &self,
        allowed: impl Fn(&PublicKey) -> bool,
        handshaken: impl Fn(&PublicKey) -> bool,
    ) -> Result<(), String> {
        for (i, e) in &self.indices {
            for key in [e.owner, e.counterpart]
                .into_iter()
                .filter_map(|id| self.names.key(id))
            {
                ensure!(allowed(&key), "index {i} holds key {key:?}, not allowed");
                if matches!(e.state, State::Session { .. }) {
                    ensure!(
                        handshaken(&key),
                        "session index {i} holds {key:?}, with no handshake recorded"
                    );
                }
            }
        }
        for key in self.homes.keys() {
            ensure!(allowed(key), "{key:?} has a home but is not allowed");
        }
        Ok(())
    }
}
