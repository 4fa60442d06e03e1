//! What the relay's, the core's and the end-to-end tests share, in one place: real WireGuard
//! peers ([`peer`], boringtun, an implementation independent of ours), messages with no
//! cryptography ([`fake`]), polling until something holds ([`eventually`]), free ports, binary
//! locators, Prometheus samples, and the child processes a test starts ([`Children`]).
#![warn(unreachable_pub, missing_docs)]

mod children;
pub mod fake;
mod locate;
mod metrics;
pub mod peer;
mod poll;

pub use children::{Children, print_tail};
pub use locate::{binary, binary_in, free_port, target_dir, workspace_binary};
pub use metrics::{counter_deltas, counters, http_get, sample, try_http_get};
pub use poll::{Abort, Eventually, abort, eventually};
