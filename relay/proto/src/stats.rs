//! Counters kept by the core. Bad packets are counted here, never logged one by one.

use crate::message::Kind;
use crate::ratelimit::ScanClass;

/// Why a datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than a message header.
    TooShort,
    /// Not one of the four message types.
    UnknownType,
    /// Non-zero reserved header bytes.
    Reserved,
    /// The wrong size for its message type.
    BadLength,
    /// Allow-list mode: mac1 matches no allowed key.
    Mac1Invalid,
    /// Too many initiations from one source IP (`--source-rate`).
    SourceRateLimited,
    /// The receiver index is not in the table.
    UnknownReceiver,
    /// A response to an index that is not waiting for one.
    NotHalfOpen,
    /// The sender index is already used by another handshake.
    IndexInUse,
    /// Transport data for an index whose handshake has not completed.
    NoSession,
    /// Transport data from an address other than the session peer's endpoint.
    UnexpectedSource,
    /// A cookie reply from an address the relay does not know.
    UnknownSource,
    /// The table is at its bound.
    TableFull,
    /// No likely key explained a handshake and the scan budget for its class was spent.
    ScanBudget,
    /// No likely key explained a handshake and its source IP had used its share of scans.
    ScanSourceLimited,
}

impl DropReason {
    /// Every reason, in declaration order.
    pub const ALL: [DropReason; 15] = [
        DropReason::TooShort,
        DropReason::UnknownType,
        DropReason::Reserved,
        DropReason::BadLength,
        DropReason::Mac1Invalid,
        DropReason::SourceRateLimited,
        DropReason::UnknownReceiver,
        DropReason::NotHalfOpen,
        DropReason::IndexInUse,
        DropReason::NoSession,
        DropReason::UnexpectedSource,
        DropReason::UnknownSource,
        DropReason::TableFull,
        DropReason::ScanBudget,
        DropReason::ScanSourceLimited,
    ];

    /// A stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::UnknownType => "unknown_type",
            DropReason::Reserved => "reserved_bytes",
            DropReason::BadLength => "bad_length",
            DropReason::Mac1Invalid => "mac1_invalid",
            DropReason::SourceRateLimited => "source_rate_limited",
            DropReason::UnknownReceiver => "unknown_receiver",
            DropReason::NotHalfOpen => "not_half_open",
            DropReason::IndexInUse => "index_in_use",
            DropReason::NoSession => "no_session",
            DropReason::UnexpectedSource => "unexpected_source",
            DropReason::UnknownSource => "unknown_source",
            DropReason::TableFull => "table_full",
            DropReason::ScanBudget => "scan_budget",
            DropReason::ScanSourceLimited => "scan_source_limited",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// A count of datagrams and of their bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// How many datagrams.
    pub packets: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// What the core counted since it was created.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    forwarded: [Traffic; 4],
    dropped: [u64; DropReason::ALL.len()],
    /// Cookie replies the relay made itself, challenging handshakes from unknown sources.
    pub cookie_replies: u64,
    /// Copies of initiations sent by broadcast (unicast initiations are not counted here).
    pub broadcast_copies: u64,
    /// Broadcast copies not sent because `broadcast_rate` was spent.
    pub broadcast_limited: u64,
    /// Indices removed by expiry.
    pub expired_indices: u64,
    /// Endpoints forgotten by expiry, after their linger.
    pub expired_endpoints: u64,
    /// mac1 computations, on likely keys and in full scans alike.
    pub mac1_computations: u64,
    scans: [u64; ScanClass::ALL.len()],
    /// Sources that began standing in for a quiet session side (roaming, see the table).
    pub roams: u64,
}

impl Stats {
    pub(crate) fn forward(&mut self, kind: Kind, packets: u64, bytes: u64) {
        let t = &mut self.forwarded[kind as usize];
        t.packets += packets;
        t.bytes += bytes;
    }

    pub(crate) fn drop(&mut self, reason: DropReason) {
        self.dropped[reason.slot()] += 1;
    }

    pub(crate) fn scanned(&mut self, class: ScanClass, macs: u32) {
        self.scans[class as usize] += 1;
        self.mac1_computations += u64::from(macs);
    }

    /// Full mac1 scans over the allow-list, by the class of their source.
    pub fn scans(&self, class: ScanClass) -> u64 {
        self.scans[class as usize]
    }

    /// Datagrams sent on, counting each copy of a broadcast.
    pub fn forwarded(&self, kind: Kind) -> Traffic {
        self.forwarded[kind as usize]
    }

    /// Datagrams dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.slot()]
    }

    /// Datagrams dropped, for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_label() {
        let mut s = Stats::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.slot(), i);
            for _ in 0..=i {
                s.drop(*r);
            }
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(s.dropped(*r), i as u64 + 1, "{}", r.as_str());
        }
        let labels: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }
}
