//! wpex-proto: the protocol core of the wpex relay, with no IO. It knows no sockets, no runtime
//! and no clock: every input comes with the instant it happened, and every decision is returned
//! for the caller to carry out (quinn-proto's split; the `wpex` crate holds the IO).
//!
//! - [`message`]: typed views of the four WireGuard message types.
//! - [`crypto`]: mac1, mac2, cookies and cookie replies, from public keys only.
//! - [`keys`] and [`keyfile`]: public keys, the allow-list and its file format.
//! - [`Relay`]: the sans-IO core: [`Relay::handle_input`], [`Relay::handle_timeout`].
//! - [`Table`]: the index and endpoint table it keeps, with expiry.
//! - [`Routes`]: the table's routes for transport data and cookie replies, read by IO workers
//!   without the core's lock ([`Worker`], [`Batch`]).
//! - [`Stats`]: what the core counted, by message kind and [`DropReason`].

#![warn(unreachable_pub, missing_docs)]
// A wire-format crate: a length or index silently cut short is a bug, so casts that may
// truncate are refused unless allowed where they are meant.
#![warn(clippy::cast_possible_truncation)]

pub mod crypto;
pub mod keyfile;
pub mod keys;
mod labels;
pub mod message;
mod ratelimit;
mod relay;
mod routes;
mod stats;
mod table;
pub mod timers;

pub use ratelimit::ScanClass;
pub use relay::{
    Access, Config, DEFAULT_SCAN_BUDGET, Output, Relay, SCAN_SOURCE_RATE, ScanDone, ScanRequest,
};
pub use routes::{Batch, Forwarded, RouteView, Routes, Worker};
pub use stats::{DropReason, Stats, Traffic};
pub use table::{
    BROADCAST_CREDIT, Expired, IndexEntry, ROAM_CREDIT, ROAM_CREDIT_MAX, Reach, Roam, Role, Source,
    StandIn, State, Table,
};

/// Checks for tests and fuzzing: every step keeps the core's invariants
/// ([`Relay::check_invariants`], [`Table::check_invariants`]).
pub mod invariants {
    pub use crate::relay::invariants::check_step;
}
