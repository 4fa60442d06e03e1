//! The session table: which endpoint owns which 32-bit index, and when each entry expires.
//!
//! Expiry uses a heap of deadlines with generation numbers instead of scanning the table: an entry
//! whose deadline changes gets a new heap node and the old node is skipped when it surfaces. Each
//! entry has at most two nodes over its life, and nothing is pushed per transport packet.
//!
//! The table also keeps the lock-free [`Routes`] in step with itself: it is their only writer.

use std::cmp::{Ordering, Reverse};
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::keys::PublicKey;
use crate::routes::Routes;
use crate::stats::DropReason;
use crate::timers::{ENDPOINT_LINGER, HALF_OPEN_TTL, ROAM_QUIET, SESSION_TTL};

/// Which side of the handshake picked an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The sender of the initiation.
    Initiator,
    /// The sender of the response.
    Responder,
}

/// How far the handshake on an index has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Seen in an initiation, not yet answered by a response.
    HalfOpen,
    /// Linked to the other side's index by a handshake response.
    Session {
        /// The other side's index.
        peer: u32,
    },
}

/// One index. Kept small (88 bytes), since a relay holds two per session: keys are named by
/// number (`KeyNames`), and a roam, which almost no entry has, is boxed.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// Where messages addressed to this index are sent.
    pub endpoint: SocketAddr,
    /// How far the handshake on this index has got.
    pub state: State,
    /// Which side of the handshake picked this index.
    pub role: Role,
    /// The initiation was sent to the counterpart's known endpoint only, not broadcast.
    pub unicast: bool,
    /// A transport packet has proved that the handshake on this index completed.
    pub confirmed: bool,
    /// What route for messages addressed to this index is published in [`Table::routes`].
    route: Published,
    /// When this index's owner last sent transport data from `endpoint`, as far as the core saw:
    /// a published route may hold a later time ([`Table::heard`] has the true one).
    heard: Instant,
    timer: u64,
    /// Allow-list mode: the key of the peer that picked this index, once a mac1 named it.
    owner: Option<KeyId>,
    /// Allow-list mode: the key of the peer on the other side.
    counterpart: Option<KeyId>,
    /// Where the owner may have roamed to (see [`Table::admit_source`]). Boxed when a peer
    /// roams, at most once per [`ROAM_QUIET`] per session side.
    roam: Option<Box<Roam>>,
}

/// The route an index has in [`Table::routes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Published {
    None,
    CookieReplies,
    /// Cookie replies, and transport data from the session peer's endpoint.
    Data,
}

/// Where a route takes transport data from, and when that sender was last heard.
type DataSource = (SocketAddr, Instant);

/// A key as index entries name it: 4 bytes instead of 33.
type KeyId = std::num::NonZeroU32;

/// The allow-list keys index entries name, each stored once with a count of the entries that
/// name it. A peer's key is named by both indices of each of its sessions, so 100,000 sessions
/// between a few peers hold a few keys here, not 200,000 copies.
#[derive(Debug, Default)]
struct KeyNames {
    ids: HashMap<PublicKey, KeyId, Hasher>,
    /// By id - 1: the key and how many entries name it; `None` once no entry does.
    slots: Vec<Option<(PublicKey, u32)>>,
    free: Vec<KeyId>,
}

impl KeyNames {
    /// Names `key` for one more entry.
    fn name(&mut self, key: Option<PublicKey>) -> Option<KeyId> {
        let key = key?;
        if let Some(&id) = self.ids.get(&key) {
            if let Some(Some((_, refs))) = self.slots.get_mut(slot(id)) {
                *refs += 1;
            }
            return Some(id);
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                // The slots never outnumber the table's indices, far below 2^32.
                KeyId::new(u32::try_from(self.slots.len()).ok()?)?
            }
        };
        self.slots[slot(id)] = Some((key, 1));
        self.ids.insert(key, id);
        Some(id)
    }

    /// One entry fewer names `id`; the key goes when none does.
    fn release(&mut self, id: Option<KeyId>) {
        let Some(id) = id else { return };
        let Some(entry) = self.slots.get_mut(slot(id)) else {
            return;
        };
        if let Some((key, refs)) = entry {
            *refs -= 1;
            if *refs == 0 {
                self.ids.remove(key);
                *entry = None;
                self.free.push(id);
            }
        }
    }

    fn key(&self, id: Option<KeyId>) -> Option<PublicKey> {
        self.slots.get(slot(id?))?.map(|(key, _)| key)
    }
}

fn slot(id: KeyId) -> usize {
    id.get() as usize - 1
}

impl IndexEntry {
    fn new(endpoint: SocketAddr, state: State, role: Role, now: Instant, timer: u64) -> Self {
        Self {
            endpoint,
            state,
            role,
            unicast: false,
            confirmed: false,
            route: Published::None,
            heard: now,
            timer,
            owner: None,
            counterpart: None,
            roam: None,
        }
    }

    /// Where the owner may have roamed to (see [`Table::admit_source`]).
    pub fn roam(&self) -> Option<Roam> {
        self.roam.as_deref().copied()
    }
}

/// A source that spoke for a session side while its endpoint was silent: a NAT rebinding, or a
/// forger. Traffic for the side goes to the endpoint, and copies to the stand-in, until the
/// endpoint speaks again or the session ends, so neither case loses a packet.
///
/// A stand-in has not shown that it receives: its address may be a spoofed victim's. So it is
/// sent at most [`ROAM_CREDIT`] datagrams per datagram it sent, never more than
/// [`ROAM_CREDIT_MAX`] ahead: a forged packet reflects a bounded number of datagrams, while a
/// rebound peer that talks keeps its traffic. Its next handshake re-homes it for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roam {
    /// The source standing in for the side.
    pub addr: SocketAddr,
    /// When that source last sent transport data for the side.
    pub heard: Instant,
    /// How many more copies it may be sent.
    pub credit: u8,
}

/// Copies a stand-in may be sent per datagram it sent: a ping's request and reply, or two TCP
/// segments per ACK.
pub const ROAM_CREDIT: u8 = 2;
/// The most copies a stand-in may have in hand.
pub const ROAM_CREDIT_MAX: u8 = 8;

/// Whether a message to a session side is copied to a stand-in (see [`Roam`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandIn {
    /// The side has none.
    None,
    /// Send a copy there.
    Copy(SocketAddr),
    /// It has one, whose credit is spent: no copy.
    Withheld,
}

/// Whether transport data from a source may be forwarded for a session side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The side's endpoint; any roam candidate is dropped, since the peer is evidently there.
    Endpoint,
    /// The side's current roam candidate.
    Roam,
    /// A new roam candidate, accepted because the endpoint and any older candidate went quiet.
    NewRoam,
    /// Someone else while the side is active: dropped.
    Rejected,
}

#[derive(Debug)]
struct EndpointEntry {
    refs: u32,
    /// Allow-list mode: the key proven to live at this endpoint by a completed handshake.
    key: Option<PublicKey>,
    /// It has shown that it receives what the relay sends it: it answered an initiation, sent
    /// data on a session it was sent the response of, or passed the allow-list address check.
    proven: bool,
    /// Unproven: how many more broadcast copies it may be sent (see [`Reach`]).
    credit: u8,
    /// Generation of the linger timer; 0 while the endpoint has indices.
    timer: u64,
}

/// What a timer is for, as the invariant checks see both heaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Index(u32),
    Endpoint(SocketAddr),
}

/// A deadline in one of the heaps. Index timers are kept apart from endpoint ones so that the
/// heap a relay holds two nodes per session in has 32-byte nodes, not 64.
#[derive(Debug, Clone, Copy)]
struct Timer<S> {
    at: Instant,
    generation: u64,
    subject: S,
}

impl<S> PartialEq for Timer<S> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<S> Eq for Timer<S> {}
impl<S> PartialOrd for Timer<S> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<S> Ord for Timer<S> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Generations are unique, so this is a total order.
        (self.at, self.generation).cmp(&(other.at, other.generation))
    }
}

/// Whether a broadcast copy may go to an endpoint. In open mode anyone can register any
/// address, a spoofed victim's included, with one initiation; so an endpoint that has not shown
/// it receives gets [`BROADCAST_CREDIT`] copies per initiation it sent, not every initiation for
/// as long as it lingers. A copy `--broadcast-rate` withholds spends the credit too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// It has shown it receives: every copy.
    Proven,
    /// Not shown, with credit left: this copy, which spends it.
    Credit,
    /// Not shown, and its credit is spent: none.
    Spent,
}

/// Broadcast copies an unproven endpoint may be sent per initiation it sent: one, so a spoofed
/// registration reflects at most the bytes it cost.
pub const BROADCAST_CREDIT: u8 = 1;

/// What a call to [`Table::expire`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Indices whose deadline had passed.
    pub indices: usize,
    /// Endpoints whose linger had passed.
    pub endpoints: usize,
}

/// The table's hasher: fast, and seeded per process, because indices and addresses are chosen
/// by whoever sends (SipHash's cost was a measurable share of forwarding one packet).
type Hasher = foldhash::fast::RandomState;

/// Which endpoint owns which index, the endpoints known, and the routes published from them.
#[derive(Debug)]
pub struct Table {
    indices: HashMap<u32, IndexEntry, Hasher>,
    endpoints: HashMap<SocketAddr, EndpointEntry, Hasher>,
    /// Allow-list mode: where each key was last proven to live.
    homes: HashMap<PublicKey, SocketAddr, Hasher>,
    index_timers: BinaryHeap<Reverse<Timer<u32>>>,
    endpoint_timers: BinaryHeap<Reverse<Timer<SocketAddr>>>,
    /// Of the last timer armed, in either heap.
    generation: u64,
    sessions: usize,
    /// Data routes the IO workers read without the core's lock; written here alone.
    routes: Arc<Routes>,
    /// The keys entries name.
    names: KeyNames,
}

impl Table {
    /// An empty table; `epoch` is an instant no later than any the table will be given.
    pub fn new(epoch: Instant) -> Self {
        Self {
            indices: HashMap::default(),
            endpoints: HashMap::default(),
            homes: HashMap::default(),
            index_timers: BinaryHeap::new(),
            endpoint_timers: BinaryHeap::new(),
            generation: 0,
            sessions: 0,
            routes: Arc::new(Routes::new(epoch)),
            names: KeyNames::default(),
        }
    }

    /// Allow-list mode: the key of the peer that picked `index`, once a mac1 named it.
    pub fn owner(&self, index: u32) -> Option<PublicKey> {
        self.names.key(self.indices.get(&index)?.owner)
    }

    /// Allow-list mode: the key of the peer on the other side of `index`.
    pub fn counterpart(&self, index: u32) -> Option<PublicKey> {
        self.names.key(self.indices.get(&index)?.counterpart)
    }

    /// The routes for the forwarding path, kept in step with this table.
    pub fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    /// When the owner of `index` last sent transport data from its endpoint, through the core or
    /// a published route.
    pub fn heard(&self, index: u32) -> Option<Instant> {
        let e = self.indices.get(&index)?;
        Some(match e.state {
            // Data from this side is addressed to the peer: the peer's route carries the time.
            State::Session { peer }
                if self
                    .indices
                    .get(&peer)
                    .is_some_and(|p| p.route == Published::Data) =>
            {
                self.routes.heard(peer, e.heard)
            }
            _ => e.heard,
        })
    }

    /// The route the core would take for messages addressed to `index`: to its endpoint, if it
    /// forwards them there alone with no change (a roam means two copies); and `(from, heard)` if
    /// it also forwards transport data from `from` that way with no change but the sender being
    /// heard, whose heard time the core has as `heard`.
    fn wanted_route(&self, index: u32) -> Option<(SocketAddr, Option<DataSource>)> {
        let e = self.indices.get(&index)?;
        if e.roam.is_some() {
            return None;
        }
        let data = match e.state {
            State::Session { peer } => self
                .indices
                .get(&peer)
                // A roam on the sender's side is cleared by its data; the first data to a
                // responder's index confirms it.
                .filter(|p| p.roam.is_none() && (e.role == Role::Initiator || e.confirmed))
                .map(|p| (p.endpoint, p.heard)),
            State::HalfOpen => None,
        };
        Some((e.endpoint, data))
    }

    /// Publishes, replaces or withdraws the route for `index` to match the table.
    fn sync_route(&mut self, index: u32) {
        let wanted = self.wanted_route(index);
        let Some(e) = self.indices.get_mut(&index) else {
            return;
        };
        let peer = match e.state {
            State::Session { peer } => Some(peer),
            State::HalfOpen => None,
        };
        let kind = match wanted {
            None => Published::None,
            Some((_, None)) => Published::CookieReplies,
            Some((_, Some(_))) => Published::Data,
        };
        let was = std::mem::replace(&mut e.route, kind);
        if was == kind {
            return;
        }
        // A data route's heard time goes back to the table before the route does.
        if was == Published::Data {
            self.unpublish(index, peer);
        }
        match wanted {
            Some((to, data)) => self.routes.publish(index, to, data),
            None if was == Published::CookieReplies => {
                self.routes.withdraw(index);
            }
            None => {}
        }
    }

    /// Both directions of the session `index` is in.
    fn sync_session(&mut self, index: u32) {
        self.sync_route(index);
        if let Some(State::Session { peer }) = self.indices.get(&index).map(|e| e.state) {
            self.sync_route(peer);
        }
    }

    /// Withdraws the route for `index`, keeping the heard time it carried for `peer`, its sender.
    fn unpublish(&mut self, index: u32, peer: Option<u32>) {
        let stored = self.routes.withdraw(index);
        if let (Some(nanos), Some(p)) = (stored, peer.and_then(|p| self.indices.get_mut(&p))) {
            p.heard = self.routes.later(p.heard, nanos);
        }
    }

    /// The entry for `index`, if the table holds it.
    pub fn index(&self, index: u32) -> Option<&IndexEntry> {
        self.indices.get(&index)
    }

    /// Whether the table holds `index`.
    pub fn contains_index(&self, index: u32) -> bool {
        self.indices.contains_key(&index)
    }

    /// Whether `endpoint` is known: it has indices, or lingers after its last one.
    pub fn is_known(&self, endpoint: SocketAddr) -> bool {
        self.endpoints.contains_key(&endpoint)
    }

    /// How many indices the table holds.
    pub fn index_count(&self) -> usize {
        self.indices.len()
    }

    /// How many endpoints are known.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Established sessions (each has two indices).
    pub fn session_count(&self) -> usize {
        self.sessions / 2
    }

    /// Where `key` was last proven to live, if that endpoint is still known.
    pub fn home(&self, key: &PublicKey) -> Option<SocketAddr> {
        self.homes.get(key).copied()
    }

    /// Known endpoints an initiation from `from` may be broadcast to, and whether each may be
    /// sent a copy. With `skip_homed`, endpoints already proven to hold some key are left out:
    /// the initiation names a key with no known home, and a WireGuard endpoint holds exactly one
    /// key.
    pub fn broadcast_targets(
        &self,
        from: SocketAddr,
        skip_homed: bool,
    ) -> impl Iterator<Item = (SocketAddr, Reach)> + '_ {
        self.endpoints
            .iter()
            .filter(move |(addr, e)| **addr != from && !(skip_homed && e.key.is_some()))
            .map(|(addr, e)| {
                let reach = match (e.proven, e.credit) {
                    (true, _) => Reach::Proven,
                    (false, 0) => Reach::Spent,
                    (false, _) => Reach::Credit,
                };
                (*addr, reach)
            })
    }

    /// Spends one broadcast copy of an unproven endpoint's credit.
    pub fn spend_credit(&mut self, endpoint: SocketAddr) {
        if let Some(e) = self.endpoints.get_mut(&endpoint) {
            e.credit = e.credit.saturating_sub(1);
        }
    }

    /// Records that `endpoint` has shown it receives what the relay sends it.
    pub fn prove(&mut self, endpoint: SocketAddr) {
        if let Some(e) = self.endpoints.get_mut(&endpoint) {
            e.proven = true;
        }
    }

    fn arm(&mut self, at: Instant, subject: Subject) -> u64 {
        self.generation += 1;
        let generation = self.generation;
        match subject {
            Subject::Index(subject) => self.index_timers.push(Reverse(Timer {
                at,
                generation,
                subject,
            })),
            Subject::Endpoint(subject) => self.endpoint_timers.push(Reverse(Timer {
                at,
                generation,
                subject,
            })),
        }
        generation
    }

    /// Every pending timer of both heaps, live or stale, in no particular order.
    fn timers(&self) -> impl Iterator<Item = Timer<Subject>> + '_ {
        let index = self.index_timers.iter().map(|Reverse(t)| Timer {
            at: t.at,
            generation: t.generation,
            subject: Subject::Index(t.subject),
        });
        let endpoint = self.endpoint_timers.iter().map(|Reverse(t)| Timer {
            at: t.at,
            generation: t.generation,
            subject: Subject::Endpoint(t.subject),
        });
        index.chain(endpoint)
    }

    fn ref_endpoint(&mut self, endpoint: SocketAddr) {
        let e = self.endpoints.entry(endpoint).or_insert_with(|| {
            self.routes.know(endpoint);
            EndpointEntry {
                refs: 0,
                key: None,
                proven: false,
                credit: 0,
                timer: 0,
            }
        });
        e.refs += 1;
        // Disarm the linger timer: its heap node no longer matches.
        e.timer = 0;
    }

    fn unref_endpoint(&mut self, now: Instant, endpoint: SocketAddr) {
        let Some(e) = self.endpoints.get_mut(&endpoint) else {
            return;
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0 {
            let generation = self.arm(now + ENDPOINT_LINGER, Subject::Endpoint(endpoint));
            if let Some(e) = self.endpoints.get_mut(&endpoint) {
                e.timer = generation;
            }
        }
    }

    /// Registers the sender index of an initiation; refused if the index is taken.
    pub fn try_insert_half_open(
        &mut self,
        now: Instant,
        index: u32,
        endpoint: SocketAddr,
        counterpart: Option<PublicKey>,
        unicast: bool,
    ) -> Result<(), DropReason> {
        if self.indices.contains_key(&index) {
            return Err(DropReason::IndexInUse);
        }
        self.ref_endpoint(endpoint);
        if let Some(e) = self.endpoints.get_mut(&endpoint) {
            e.credit = e.credit.max(BROADCAST_CREDIT);
        }
        let timer = self.arm(now + HALF_OPEN_TTL, Subject::Index(index));
        let mut entry = IndexEntry::new(endpoint, State::HalfOpen, Role::Initiator, now, timer);
        entry.unicast = unicast;
        entry.counterpart = self.names.name(counterpart);
        self.indices.insert(index, entry);
        self.sync_route(index);
        Ok(())
    }

    /// Links a response's sender index to the half-open initiator index it answers; refused
    /// unless `initiator` is half-open and `responder` is free.
    pub fn try_establish(
        &mut self,
        now: Instant,
        initiator: u32,
        responder: u32,
        responder_endpoint: SocketAddr,
        initiator_key: Option<PublicKey>,
    ) -> Result<(), DropReason> {
        match self.indices.get(&initiator) {
            None => return Err(DropReason::UnknownReceiver),
            Some(e) if e.state != State::HalfOpen => return Err(DropReason::NotHalfOpen),
            Some(_) if self.indices.contains_key(&responder) => {
                return Err(DropReason::IndexInUse);
            }
            Some(_) => {}
        }
        let deadline = now + SESSION_TTL;
        let timer = self.arm(deadline, Subject::Index(initiator));
        let owner = self.names.name(initiator_key);
        let Some(init) = self.indices.get_mut(&initiator) else {
            self.names.release(owner);
            return Err(DropReason::UnknownReceiver);
        };
        init.state = State::Session { peer: responder };
        let previous = std::mem::replace(&mut init.owner, owner);
        let responder_key = init.counterpart;
        init.heard = now;
        init.timer = timer;
        self.names.release(previous);

        self.ref_endpoint(responder_endpoint);
        // It answered an initiation, which went to it.
        self.prove(responder_endpoint);
        let timer = self.arm(deadline, Subject::Index(responder));
        let mut entry = IndexEntry::new(
            responder_endpoint,
            State::Session { peer: initiator },
            Role::Responder,
            now,
            timer,
        );
        entry.owner = self.names.name(self.names.key(responder_key));
        entry.counterpart = self.names.name(initiator_key);
        self.indices.insert(responder, entry);
        self.sessions += 2;
        // Data to the initiator's index needs no confirmation: it is routed from now on.
        self.sync_session(initiator);
        Ok(())
    }

    /// Judges transport data from `src` on behalf of the owner of `side`, a session index: its
    /// endpoint, or a stand-in while the endpoint is quiet. Nothing here moves the endpoint: a
    /// stand-in is added beside it, never in its place, and handshakes alone re-home peers.
    ///
    /// A roam withdraws the session's routes and its end publishes them again, so data that
    /// involves a roam always reaches the core.
    pub fn admit_source(&mut self, now: Instant, side: u32, src: SocketAddr) -> Source {
        let Some(e) = self.indices.get_mut(&side) else {
            return Source::Rejected;
        };
        if e.endpoint == src {
            e.heard = now;
            if e.roam.take().is_some() {
                self.sync_session(side);
            }
            return Source::Endpoint;
        }
        match e.roam.as_deref_mut() {
            Some(r) if r.addr == src => {
                r.heard = now;
                r.credit = r.credit.saturating_add(ROAM_CREDIT).min(ROAM_CREDIT_MAX);
                return Source::Roam;
            }
            Some(r) if now.saturating_duration_since(r.heard) < ROAM_QUIET => {
                return Source::Rejected;
            }
            _ => {}
        }
        // Including data the forwarding path took: a busy peer is never quiet.
        let heard = self.heard(side).unwrap_or(now);
        if now.saturating_duration_since(heard) < ROAM_QUIET {
            return Source::Rejected;
        }
        if let Some(e) = self.indices.get_mut(&side) {
            e.roam = Some(Box::new(Roam {
                addr: src,
                heard: now,
                credit: ROAM_CREDIT,
            }));
        }
        self.sync_session(side);
        Source::NewRoam
    }

    /// Whether a copy of a message addressed to `index` goes to a stand-in besides its
    /// endpoint; a copy sent spends the stand-in's credit.
    pub fn stand_in_copy(&mut self, index: u32) -> StandIn {
        let Some(r) = self
            .indices
            .get_mut(&index)
            .and_then(|e| e.roam.as_deref_mut())
        else {
            return StandIn::None;
        };
        if r.credit == 0 {
            return StandIn::Withheld;
        }
        r.credit -= 1;
        StandIn::Copy(r.addr)
    }

    /// `None` if `endpoint` is not known; otherwise the key proven to live there, if any.
    pub fn endpoint_key(&self, endpoint: SocketAddr) -> Option<Option<PublicKey>> {
        self.endpoints.get(&endpoint).map(|e| e.key)
    }

    /// Records that the handshake on `index` completed. Returns true the first time.
    pub fn confirm(&mut self, index: u32) -> bool {
        match self.indices.get_mut(&index) {
            Some(e) if !e.confirmed => {
                e.confirmed = true;
                self.sync_route(index);
                true
            }
            _ => false,
        }
    }

    /// Records that `key` lives at `endpoint`, replacing whatever either was bound to before.
    pub fn set_home(&mut self, key: PublicKey, endpoint: SocketAddr) {
        let Some(e) = self.endpoints.get_mut(&endpoint) else {
            return;
        };
        let previous_key = e.key.replace(key);
        if let Some(old) = previous_key.filter(|old| *old != key) {
            self.homes.remove(&old);
        }
        if let Some(old_endpoint) = self.homes.insert(key, endpoint).filter(|a| *a != endpoint)
            && let Some(old) = self.endpoints.get_mut(&old_endpoint)
        {
            old.key = None;
        }
    }

    fn forget_home(&mut self, key: &PublicKey, endpoint: SocketAddr) {
        if let Entry::Occupied(home) = self.homes.entry(*key)
            && *home.get() == endpoint
        {
            home.remove();
            if let Some(e) = self.endpoints.get_mut(&endpoint) {
                e.key = None;
            }
        }
    }

    fn remove_index(&mut self, now: Instant, index: u32) {
        let Some(entry) = self.indices.remove(&index) else {
            return;
        };
        let counterpart = self.names.key(entry.counterpart);
        self.names.release(entry.owner);
        self.names.release(entry.counterpart);
        match entry.state {
            State::Session { peer } => {
                self.sessions -= 1;
                // Both directions end with either side: the peer's route named this endpoint.
                if entry.route == Published::Data {
                    self.unpublish(index, Some(peer));
                }
                self.sync_route(peer);
            }
            // An initiation sent to a key's known home went unanswered: the home is stale, so
            // the next initiation for that key is broadcast again.
            State::HalfOpen if entry.unicast => {
                if let Some(key) = counterpart
                    && let Some(home) = self.homes.get(&key).copied()
                {
                    self.forget_home(&key, home);
                }
            }
            State::HalfOpen => {}
        }
        if entry.route == Published::CookieReplies {
            self.routes.withdraw(index);
        }
        self.unref_endpoint(now, entry.endpoint);
    }

    /// Removes every entry whose deadline is at or before `now`. Indices first: removing one
    /// may arm its endpoint's linger, which may be due too.
    pub fn expire(&mut self, now: Instant) -> Expired {
        let mut expired = Expired::default();
        while let Some(&Reverse(timer)) = self.index_timers.peek() {
            if timer.at > now {
                break;
            }
            self.index_timers.pop();
            let i = timer.subject;
            if self
                .indices
                .get(&i)
                .is_some_and(|e| e.timer == timer.generation)
            {
                // Linger from the deadline, not from whenever this call ran.
                self.remove_index(timer.at, i);
                expired.indices += 1;
            }
        }
        while let Some(&Reverse(timer)) = self.endpoint_timers.peek() {
            if timer.at > now {
                break;
            }
            self.endpoint_timers.pop();
            let addr = timer.subject;
            let current = self
                .endpoints
                .get(&addr)
                .is_some_and(|e| e.refs == 0 && e.timer == timer.generation);
            if current {
                if let Some(key) = self.endpoints.get(&addr).and_then(|e| e.key) {
                    self.forget_home(&key, addr);
                }
                self.endpoints.remove(&addr);
                self.routes.forget(addr);
                expired.endpoints += 1;
            }
        }
        expired
    }

    /// The earliest pending deadline, possibly of a superseded timer (harmless: waking early).
    pub fn next_deadline(&self) -> Option<Instant> {
        let index = self.index_timers.peek().map(|Reverse(t)| t.at);
        let endpoint = self.endpoint_timers.peek().map(|Reverse(t)| t.at);
        index.into_iter().chain(endpoint).min()
    }

    /// Cuts every session and half-open index that involves a key `keep` rejects, and forgets
    /// those keys' homes. Returns how many indices were removed. A full scan: reloads are rare.
    pub fn revoke(&mut self, now: Instant, keep: impl Fn(&PublicKey) -> bool) -> usize {
        let doomed: Vec<u32> = self
            .indices
            .iter()
            .filter(|(_, e)| {
                [e.owner, e.counterpart]
                    .into_iter()
                    .filter_map(|id| self.names.key(id))
                    .any(|k| !keep(&k))
            })
            .map(|(i, _)| *i)
            .collect();
        for i in &doomed {
            self.remove_index(now, *i);
        }
        let gone: Vec<(PublicKey, SocketAddr)> = self
            .homes
            .iter()
            .filter(|(k, _)| !keep(k))
            .map(|(k, a)| (*k, *a))
            .collect();
        for (key, addr) in gone {
            self.forget_home(&key, addr);
        }
        doomed.len()
    }
}

// Invariant checks for tests and the fuzzer (table/invariants.rs).
mod invariants;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, 1], port))
    }

    /// A relay holds two entries and two heap nodes per session: 100,000 sessions fit in the
    /// relay's memory budget only while these stay this small.
    #[test]
    fn entries_and_timers_stay_small() {
        assert!(std::mem::size_of::<IndexEntry>() <= 88);
        assert!(std::mem::size_of::<Timer<u32>>() <= 32);
    }

    #[test]
    fn half_open_index_lives_five_seconds() {
        let t0 = Instant::now();
        let mut t = Table::new(t0);
        t.try_insert_half_open(t0, 1, addr(1), None, false)
            .expect("free index");
        assert_eq!(
            t.expire(t0 + Duration::from_millis(4999)),
            Expired::default()
        );
        assert!(t.contains_index(1));
        assert_eq!(t.expire(t0 + HALF_OPEN_TTL).indices, 1);
        assert!(!t.contains_index(1));
        // The endpoint lingers a minute after its last index.
        assert!(t.is_known(addr(1)));
        let gone = t.expire(t0 + HALF_OPEN_TTL + ENDPOINT_LINGER);
        assert_eq!(gone.endpoints, 1);
        assert!(!t.is_known(addr(1)));
        assert!(t.next_deadline().is_none());
    }

    #[test]
    fn session_lives_three_minutes_from_the_response() {
        let t0 = Instant::now();
        let mut t = Table::new(t0);
        t.try_insert_half_open(t0, 1, addr(1), None, false)
            .expect("free index");
        let t1 = t0 + Duration::from_secs(2);
        t.try_establish(t1, 1, 2, addr(2), None)
            .expect("half-open initiator, free responder");
        assert_eq!(t.session_count(), 1);
        // The half-open timer no longer applies.
        t.expire(t0 + Duration::from_secs(10));
        assert!(t.contains_index(1) && t.contains_index(2));
        t.expire(t1 + SESSION_TTL.saturating_sub(Duration::from_millis(1)));
        assert_eq!(t.session_count(), 1);
        assert_eq!(t.expire(t1 + SESSION_TTL).indices, 2);
        assert_eq!(t.session_count(), 0);
        assert_eq!(t.index_count(), 0);
    }

    #[test]
    fn endpoint_with_a_new_index_does_not_expire_on_the_old_timer() {
        let t0 = Instant::now();
        let mut t = Table::new(t0);
        t.try_insert_half_open(t0, 1, addr(1), None, false)
            .expect("free index");
        t.expire(t0 + HALF_OPEN_TTL); // endpoint linger armed until t0+65
        let t1 = t0 + Duration::from_secs(63);
        t.try_insert_half_open(t1, 2, addr(1), None, false)
            .expect("free index");
        t.expire(t0 + HALF_OPEN_TTL + ENDPOINT_LINGER);
        assert!(t.is_known(addr(1)), "old linger timer was disarmed");
        // Expiry running late still lingers from the index's own deadline.
        let late = t1 + HALF_OPEN_TTL + Duration::from_secs(30);
        t.expire(late);
        assert!(t.is_known(addr(1)));
        t.expire(t1 + HALF_OPEN_TTL + ENDPOINT_LINGER);
        assert!(!t.is_known(addr(1)));
    }

    #[test]
    fn unanswered_unicast_forgets_the_home() {
        let t0 = Instant::now();
        let (ka, kb) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let mut t = Table::new(t0);
        t.try_insert_half_open(t0, 1, addr(1), Some(kb), false)
            .expect("free index");
        t.try_establish(t0, 1, 2, addr(2), Some(ka))
            .expect("half-open initiator, free responder");
        t.set_home(kb, addr(2));
        t.set_home(ka, addr(1));
        assert_eq!(t.home(&kb), Some(addr(2)));
        // An initiation unicast to B's home goes unanswered.
        t.try_insert_half_open(t0, 3, addr(1), Some(kb), true)
            .expect("free index");
        t.expire(t0 + HALF_OPEN_TTL);
        assert_eq!(t.home(&kb), None);
        assert_eq!(t.home(&ka), Some(addr(1)));
        let targets: Vec<_> = t.broadcast_targets(addr(9), true).map(|(a, _)| a).collect();
        assert_eq!(
            targets,
            vec![addr(2)],
            "B's endpoint is a broadcast target again"
        );
    }

    #[test]
    fn revoke_cuts_only_sessions_of_removed_keys() {
        let t0 = Instant::now();
        let (ka, kb, kc) = (PublicKey([1; 32]), PublicKey([2; 32]), PublicKey([3; 32]));
        let mut t = Table::new(t0);
        t.try_insert_half_open(t0, 1, addr(1), Some(kb), false)
            .expect("free index");
        t.try_establish(t0, 1, 2, addr(2), Some(ka))
            .expect("half-open initiator, free responder");
        t.try_insert_half_open(t0, 3, addr(3), Some(ka), false)
            .expect("free index");
        t.try_establish(t0, 3, 4, addr(1), Some(kc))
            .expect("half-open initiator, free responder");
        t.set_home(kc, addr(3));
        assert_eq!(t.session_count(), 2);
        let removed = t.revoke(t0, |k| *k != kc);
        assert_eq!(removed, 2);
        assert!(t.contains_index(1) && t.contains_index(2));
        assert!(!t.contains_index(3) && !t.contains_index(4));
        assert_eq!(t.home(&kc), None);
        assert_eq!(t.session_count(), 1);
    }
}
