//! End-to-end harness: network namespaces behind NATs ([`netns`]) with real WireGuard peers and
//! the relay ([`wg`]).

pub mod netns;
pub mod wg;
