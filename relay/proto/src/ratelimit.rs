//! Token buckets driven by the caller's clock.

use std::collections::HashMap;
use std::hash::Hash;
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

    fn take(&mut self, cost: f64) {
        self.tokens -= cost;
    }

    /// Full again: indistinguishable from a fresh bucket, so it can be forgotten.
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// The wpex rule for a rate in packets per second: burst 5 x rate, and 0 means unlimited.
pub(crate) fn wpex_bucket(rate: u32, now: Instant) -> Option<TokenBucket> {
    (rate > 0).then(|| TokenBucket::new(f64::from(rate), 5.0 * f64::from(rate), now))
}

/// One bucket per key (a source IP), bounded in number. Sources beyond the bound share one
/// overflow bucket, so a flood of new sources cannot grow memory nor escape limiting.
#[derive(Debug)]
pub(crate) struct KeyedBuckets<K> {
    rate: u32,
    max_keys: usize,
    buckets: HashMap<K, TokenBucket>,
    overflow: Option<TokenBucket>,
}

impl<K: Hash + Eq> KeyedBuckets<K> {
    pub(crate) fn new(rate: u32, max_keys: usize, now: Instant) -> Self {
        Self {
            rate,
            max_keys,
            buckets: HashMap::new(),
            overflow: wpex_bucket(rate, now),
        }
    }

    pub(crate) fn try_take(&mut self, key: K, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_keys {
            return self.overflow.as_mut().is_none_or(|b| b.try_take(now));
        }
        let rate = self.rate;
        self.buckets
            .entry(key)
            .or_insert_with(|| wpex_bucket(rate, now).expect("rate is non-zero"))
            .try_take(now)
    }

    /// Whether [`KeyedBuckets::try_take`] would succeed, without taking or remembering anything.
    pub(crate) fn can_take(&mut self, key: K, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let full = self.buckets.len() >= self.max_keys;
        match self.buckets.get_mut(&key) {
            Some(b) => b.can_take(now, 1.0),
            None if full => self.overflow.as_mut().is_none_or(|b| b.can_take(now, 1.0)),
            None => true,
        }
    }

    /// Forgets buckets that have refilled; called periodically, never per packet.
    pub(crate) fn prune(&mut self, now: Instant) {
        self.buckets.retain(|_, b| !b.is_full(now));
    }

    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.buckets.is_empty()
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
/// (retry) or 1/16 (other) of the rate, which bounds what a flood of them can burn. So no flood of one class can use up what known and proven
/// sources need, junk cannot crowd out a new peer's first handshake, and a flood of well-formed
/// first handshakes cannot crowd out a new peer's retry.
#[derive(Debug)]
pub(crate) struct ScanBudget {
    all: TokenBucket,
    fresh: TokenBucket,
    retry: TokenBucket,
    other: TokenBucket,
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

    /// Takes `cost` mac1 computations for a scan of `class`, or nothing if any bucket it draws
    /// on is short.
    pub(crate) fn try_take(&mut self, now: Instant, class: ScanClass, cost: u32) -> bool {
        let cost = f64::from(cost);
        let class_bucket = match class {
            ScanClass::Known | ScanClass::Proven => None,
            ScanClass::Fresh => Some(&mut self.fresh),
            ScanClass::Retry => Some(&mut self.retry),
            ScanClass::Other => Some(&mut self.other),
        };
        if !self.all.can_take(now, cost) {
            return false;
        }
        if let Some(b) = class_bucket {
            if !b.can_take(now, cost) {
                return false;
            }
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

    #[test]
    fn keyed_buckets_are_independent_bounded_and_pruned() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::new(1, 2, t0);
        assert_eq!((0..10).filter(|_| k.try_take(1, t0)).count(), 5);
        assert_eq!((0..10).filter(|_| k.try_take(2, t0)).count(), 5);
        // Keys 3 and 4 exceed the bound and share the overflow bucket.
        assert_eq!((0..10).filter(|_| k.try_take(3, t0)).count(), 5);
        assert_eq!((0..10).filter(|_| k.try_take(4, t0)).count(), 0);
        assert_eq!(k.len(), 2);
        k.prune(t0 + Duration::from_secs(60));
        assert!(k.is_empty());

        let mut unlimited = KeyedBuckets::new(0, 1, t0);
        assert!((0..1000).all(|i| unlimited.try_take(i, t0)));
        assert!(unlimited.is_empty());
    }
}
