//! End-to-end harness: network namespaces behind NATs ([`netns`]) with real WireGuard peers and
//! the relay ([`wg`]); a real Kubernetes control plane ([`control_plane`]).

pub mod control_plane;
pub mod netns;
pub mod wg;
