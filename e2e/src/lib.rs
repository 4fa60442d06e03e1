//! End-to-end harness: network namespaces behind NATs ([`netns`]) with real WireGuard peers
//! ([`wg`]) and the relay ([`relay`]), and what the attack tests measure there ([`measure`]); a
//! real Kubernetes control plane ([`control_plane`]) and a real node beside it ([`cluster`]);
//! helm and kubectl ([`tools`]). Waiting, child processes, binaries and metric samples come from
//! `wpex-testkit`.

#![warn(unreachable_pub, missing_docs)]

pub mod cluster;
pub mod control_plane;
pub mod measure;
pub mod netns;
pub mod relay;
pub mod tools;
pub mod wg;
