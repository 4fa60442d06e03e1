//! Counters kept by the core. Bad packets are counted here, never logged one by one.

use crate::message::Kind;
use crate::ratelimit::ScanClass;

crate::labels::labelled_enum! {
    /// Why a datagram was not forwarded.
    pub enum DropReason {
        /// Shorter than a message header.
        TooShort => "too_short",
        /// Not one of the four message types.
        UnknownType => "unknown_type",
        /// Non-zero reserved header bytes.
        Reserved => "reserved_bytes",
        /// The wrong size for its message type.
        BadLength => "bad_length",
        /// Allow-list mode: mac1 matches no allowed key.
        Mac1Invalid => "mac1_invalid",
        /// Too many initiations from one source (an IPv4 address or an IPv6 /64) (`--source-rate`).
        SourceRateLimited => "source_rate_limited",
        /// The receiver index is not in the table.
        UnknownReceiver => "unknown_receiver",
        /// A response to an index that is not waiting for one.
        NotHalfOpen => "not_half_open",
        /// The sender index is already used by another handshake.
        IndexInUse => "index_in_use",
        /// Transport data for an index whose handshake has not completed.
        NoSession => "no_session",
        /// Transport data from an address other than the session peer's endpoint.
        UnexpectedSource => "unexpected_source",
        /// A cookie reply from an address the relay does not know.
        UnknownSource => "unknown_source",
        /// The table is at its bound.
        TableFull => "table_full",
        /// No likely key explained a handshake and the scan budget for its class was spent.
        ScanBudget => "scan_budget",
        /// No likely key explained a handshake and its source IP had used its share of scans.
        ScanSourceLimited => "scan_source_limited",
    }
}

impl DropReason {
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
    forwarded: [Traffic; Kind::ALL.len()],
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
    /// Copies not sent to an address that has not shown it receives: a roaming stand-in, or an
    /// open-mode broadcast target, past its credit.
    pub withheld: u64,
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
