//! Token buckets driven by the caller's clock.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

/// A bucket that refills at `rate` tokens a second up to `burst`, starting full.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether `cost` tokens may be taken. A cost above the burst is allowed from a full bucket
    /// and leaves a debt that refilling repays, so the long-run rate holds for any cost.
    fn can_take(&mut self, now: Instant, cost: f64) -> bool {
        self.refill(now);
        self.tokens >= cost.min(self.burst)
    }

    /// Whether `cost` tokens may be taken and leave at least `floor`.
    fn can_take_leaving(&mut self, now: Instant, cost: f64, floor: f64) -> bool {
        self.refill(now);
        self.tokens - cost >= floor
    }

    fn take(&mut self, cost: f64) {
        self.tokens -= cost;
    }
}

/// The wpex rule for a rate in packets per second: burst 5 x rate, and 0 means unlimited.
pub(crate) fn wpex_bucket(rate: u32, now: Instant) -> Option<TokenBucket> {
    (rate > 0).then(|| TokenBucket::new(f64::from(rate), 5.0 * f64::from(rate), now))
}

/// A source as the per-source limits see it: an IPv4 address, or an IPv6 /64, since whoever
/// holds one address of a /64 usually holds all 2^64 of them. A dual-stack socket reports IPv4
/// peers as IPv4-mapped IPv6 addresses, which all lie in one /64: those are keyed as IPv4.
pub(crate) fn source_key(ip: IpAddr) -> u128 {
    let v4 = |v4: std::net::Ipv4Addr| u128::from(u32::from(v4)) | (1 << 64);
    match ip {
        IpAddr::V4(ip) => v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(ip) => v4(ip),
            None => u128::from(ip) & !u128::from(u64::MAX),
        },
    }
}

/// One bucket per source in a fixed table, allocated at first use. A source not in the table
/// takes one of its two slots from whichever holds more tokens (the least limited), with a
/// full bucket. So memory stays fixed however many sources a flood spoofs, and a new source is
/// never refused for want of room: an overflowing table costs the attacker, who sees his own
/// limits forgotten (no use to him: every spoofed source is new anyway), never a peer.
pub(crate) struct SourceBuckets {
    rate: f32,
    burst: f32,
    slots: Vec<Slot>,
    len: usize,
    hasher: foldhash::fast::FixedState,
    epoch: Instant,
}

/// A bucket, 16 bytes: its source's fingerprint (0 when free), its tokens, and when they were
/// last counted, in milliseconds since the table's epoch.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    fingerprint: u32,
    tokens: f32,
    at_ms: u64,
}

impl std::fmt::Debug for SourceBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceBuckets")
            .field("rate", &self.rate)
            .field("slots", &self.len)
            .finish_non_exhaustive()
    }
}

impl SourceBuckets {
    /// Buckets of `rate` a second with the wpex burst (5 x rate), in at least `slots` slots
    /// (a power of two); a rate of 0 is unlimited and allocates nothing.
    pub(crate) fn new(rate: u32, slots: usize, seed: u64, now: Instant) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let rate = rate as f32;
        Self {
            rate,
            burst: 5.0 * rate,
            slots: Vec::new(),
            len: slots.max(2).next_power_of_two(),
            hasher: foldhash::fast::FixedState::with_seed(seed),
            epoch: now,
        }
    }

    /// The two slots `ip`'s source may be in, and its non-zero fingerprint.
    fn place(&self, ip: IpAddr) -> ([usize; 2], u32) {
        let h = self.hasher.hash_one(source_key(ip));
        let mask = self.len - 1;
        // Truncations on purpose: low and middle bits pick the slots, the high bits fingerprint.
        #[allow(clippy::cast_possible_truncation)]
        let slots = [
            (h as usize) & mask,
            ((h >> 16) as usize ^ (h >> 40) as usize) & mask,
        ];
        #[allow(clippy::cast_possible_truncation)]
        let fingerprint = ((h >> 32) as u32) | 1;
        (slots, fingerprint)
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// `slot`'s tokens at `at_ms`.
    fn tokens(&self, slot: &Slot, at_ms: u64) -> f32 {
        #[allow(clippy::cast_precision_loss)]
        let elapsed = at_ms.saturating_sub(slot.at_ms) as f32 / 1000.0;
        (slot.tokens + elapsed * self.rate).min(self.burst)
    }

    /// The slot holding `ip`'s source, if any, else the one a new bucket for it would take.
    fn find(&self, ip: IpAddr, at_ms: u64) -> (usize, u32, bool) {
        let ([a, b], fingerprint) = self.place(ip);
        for i in [a, b] {
            if self
                .slots
                .get(i)
                .is_some_and(|s| s.fingerprint == fingerprint)
            {
                return (i, fingerprint, true);
            }
        }
        let fuller = match (self.slots.get(a), self.slots.get(b)) {
            (Some(sa), Some(sb)) if self.tokens(sb, at_ms) > self.tokens(sa, at_ms) => b,
            _ => a,
        };
        (fuller, fingerprint, false)
    }

    /// Takes a token for `ip`'s source, if it has one.
    pub(crate) fn try_take(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if self.slots.is_empty() {
            self.slots = vec![Slot::default(); self.len];
        }
        let at_ms = self.millis(now);
        let (i, fingerprint, found) = self.find(ip, at_ms);
        let tokens = if found {
            self.tokens(&self.slots[i], at_ms)
        } else {
            self.burst
        };
        let taken = tokens >= 1.0;
        self.slots[i] = Slot {
            fingerprint,
            tokens: if taken { tokens - 1.0 } else { tokens },
            at_ms,
        };
        taken
    }

    /// Whether [`SourceBuckets::try_take`] would succeed, without taking or remembering anything.
    pub(crate) fn can_take(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0.0 || self.slots.is_empty() {
            return true;
        }
        let at_ms = self.millis(now);
        match self.find(ip, at_ms) {
            (i, _, true) => self.tokens(&self.slots[i], at_ms) >= 1.0,
            (_, _, false) => true,
        }
    }

    /// Its slots: fixed, allocated or not.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.len
    }
}

crate::labels::labelled_enum! {
    /// How trustworthy the sender of a handshake that needs a full mac1 scan looks.
    pub enum ScanClass {
        /// The source is a known endpoint.
        Known => "known",
        /// The source carries a mac2 from this relay's cookie: it receives at its address.
        Proven => "proven",
        /// An unknown source with the all-zero mac2 of a first handshake.
        Fresh => "fresh",
        /// A fresh source that was refused a scan before and is trying again, as a real peer does
        /// every 5 s; a flood of one-off spoofed sources rarely lands here.
        Retry => "retry",
        /// An unknown source with some other mac2: at best the real peer's cookie, usually junk.
        Other => "other",
    }
}

/// The mac1 computations full scans may spend, per second. Every scan draws on one global
/// bucket; scans for unknown sources also draw on a bucket of their class, at 1/4 (fresh), 1/8
/// (retry) or 1/16 (other) of the rate, which bounds what a flood of them can burn. So no flood
/// of one class can use up what known and proven sources need, junk cannot crowd out a new
/// peer's first handshake, and a flood of well-formed first handshakes cannot crowd out a new
/// peer's retry.
///
/// A fresh or retry scan whose class's share is spent may still borrow what the global bucket
/// holds above a reserve of [`RESERVE`] of it, kept for known and proven sources. A budget that
/// sits idle while a new peer is refused protects nobody; and with a few keys, where a scan is
/// a few MACs, the whole budget outlasts any flood this machine can receive, so a new peer's
/// first handshake is answered, not left to WireGuard's retry 5 s later. Junk with another
/// mac2 never borrows: a real first handshake has none.
#[derive(Debug)]
pub(crate) struct ScanBudget {
    all: TokenBucket,
    fresh: TokenBucket,
    retry: TokenBucket,
    other: TokenBucket,
}

/// The share of the global scan budget that fresh and retry scans may not borrow.
const RESERVE: f64 = 0.25;

/// Where a scan's MACs come from.
enum Draw {
    /// The global bucket and, for unknown sources, their class's share.
    Share,
    /// The global bucket alone, above its reserve.
    Borrow,
}

impl ScanBudget {
    /// `None` for 0, meaning unlimited. The burst is one second's worth.
    pub(crate) fn new(macs_per_second: u32, now: Instant) -> Option<Self> {
        let rate = f64::from(macs_per_second);
        let bucket = |share: f64| TokenBucket::new(rate * share, rate * share, now);
        (macs_per_second > 0).then(|| Self {
            all: bucket(1.0),
            fresh: bucket(0.25),
            retry: bucket(0.125),
            other: bucket(0.0625),
        })
    }

    /// The share `class` draws on besides the whole budget, if any.
    fn share(&mut self, class: ScanClass) -> Option<&mut TokenBucket> {
        match class {
            ScanClass::Known | ScanClass::Proven => None,
            ScanClass::Fresh => Some(&mut self.fresh),
            ScanClass::Retry => Some(&mut self.retry),
            ScanClass::Other => Some(&mut self.other),
        }
    }

    /// How a scan of `class` costing `cost` would be paid for, if it can be.
    fn draw(&mut self, now: Instant, class: ScanClass, cost: f64) -> Option<Draw> {
        if !self.all.can_take(now, cost) {
            return None;
        }
        if self.share(class).is_none_or(|b| b.can_take(now, cost)) {
            return Some(Draw::Share);
        }
        let reserve = RESERVE * self.all.burst;
        let may_borrow = matches!(class, ScanClass::Fresh | ScanClass::Retry);
        (may_borrow && self.all.can_take_leaving(now, cost, reserve)).then_some(Draw::Borrow)
    }

    /// Whether [`ScanBudget::try_take`] would succeed, without taking anything.
    pub(crate) fn can_take(&mut self, now: Instant, class: ScanClass, cost: u32) -> bool {
        self.draw(now, class, f64::from(cost)).is_some()
    }

    /// Takes `cost` mac1 computations for a scan of `class`, or nothing if the budget cannot
    /// pay for it.
    pub(crate) fn try_take(&mut self, now: Instant, class: ScanClass, cost: u32) -> bool {
        let cost = f64::from(cost);
        let Some(draw) = self.draw(now, class, cost) else {
            return false;
        };
        if let (Draw::Share, Some(b)) = (draw, self.share(class)) {
            b.take(cost);
        }
        self.all.take(cost);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn scans_borrow_the_idle_budget_down_to_the_reserve_kept_for_known_sources() {
        let t0 = Instant::now();
        let mut b = ScanBudget::new(1000, t0).expect("limited");
        // Junk with a mac2 keeps to its sixteenth.
        let other = (0..1000)
            .filter(|_| b.try_take(t0, ScanClass::Other, 1))
            .count();
        assert_eq!(other, 62);
        // Fresh scans take their quarter, then borrow until a quarter of the budget is left.
        let fresh = (0..1000)
            .filter(|_| b.try_take(t0, ScanClass::Fresh, 1))
            .count();
        assert_eq!(other + fresh, 750);
        // The reserve: a new peer's retry still has its own share, and known sources the rest.
        let retry = (0..1000)
            .filter(|_| b.try_take(t0, ScanClass::Retry, 1))
            .count();
        assert_eq!(retry, 125);
        let known = (0..1000)
            .filter(|_| b.try_take(t0, ScanClass::Known, 1))
            .count();
        assert_eq!(known, 125);
        assert!(!b.try_take(t0, ScanClass::Proven, 1), "all spent");
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = wpex_bucket(2, t0).expect("limited");
        let burst = (0..100).filter(|_| b.try_take(t0)).count();
        assert_eq!(burst, 10, "burst is 5 x rate");
        let later = t0 + Duration::from_secs(3);
        let refilled = (0..100).filter(|_| b.try_take(later)).count();
        assert_eq!(refilled, 6, "2 per second for 3 s");
        assert!(wpex_bucket(0, t0).is_none(), "0 means unlimited");
    }

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn source_buckets_limit_each_source_and_ipv6_by_its_64() {
        let t0 = Instant::now();
        let mut k = SourceBuckets::new(1, 1024, 7, t0);
        assert_eq!((0..10).filter(|_| k.try_take(v4(1), t0)).count(), 5);
        assert_eq!((0..10).filter(|_| k.try_take(v4(2), t0)).count(), 5);
        assert!(!k.can_take(v4(1), t0));
        assert!(k.can_take(v4(3), t0), "a source never seen");
        // Two addresses of one /64 are one source; another /64 is another.
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("v6");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("v6");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("v6");
        assert_eq!((0..5).filter(|_| k.try_take(a, t0)).count(), 5);
        assert!(!k.try_take(b, t0), "same /64, same bucket");
        assert!(k.try_take(other, t0));
        // It refills at its rate.
        assert!(k.try_take(v4(1), t0 + Duration::from_secs(1)));

        // A dual-stack socket's IPv4 peers: one bucket each, as for plain IPv4.
        let mapped = |i: u32| match v4(i) {
            IpAddr::V4(ip) => IpAddr::V6(ip.to_ipv6_mapped()),
            IpAddr::V6(ip) => IpAddr::V6(ip),
        };
        assert!(
            !k.can_take(mapped(1), t0 + Duration::from_millis(500)),
            "as v4(1)"
        );
        assert_eq!((0..10).filter(|_| k.try_take(mapped(40), t0)).count(), 5);
        assert_eq!((0..10).filter(|_| k.try_take(mapped(41), t0)).count(), 5);

        let mut unlimited = SourceBuckets::new(0, 1, 7, t0);
        assert!((0..1000).all(|i| unlimited.try_take(v4(i), t0)));
    }

    /// Issue 19: past its size the table never refuses a fresh source, and a source a flood
    /// has not pushed out is still limited.
    #[test]
    fn a_full_table_still_admits_a_fresh_source() {
        let t0 = Instant::now();
        let mut k = SourceBuckets::new(2, 1 << 12, 9, t0);
        // A flood from 16 times as many sources as slots, each spending its whole burst.
        for i in 0..(1u32 << 16) {
            while k.try_take(v4(i), t0) {}
        }
        assert!(
            !k.can_take(v4((1 << 16) - 1), t0),
            "the last flooder is limited"
        );
        let fresh = (1u32 << 20..(1 << 20) + 1000)
            .filter(|&i| k.try_take(v4(i), t0))
            .count();
        assert_eq!(fresh, 1000, "every fresh source admitted");
        assert_eq!(k.capacity(), 1 << 12);
    }
}
