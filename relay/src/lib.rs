//! wpex: a relay for stock WireGuard peers behind NAT that cannot read or alter their traffic.
//! The protocol core is [`wpex_proto`], which knows no IO; this crate runs it.
//!
//! - [`server`]: tokio UDP sockets around the core, with batched IO, GRO and GSO.
//! - [`shared`]: the core behind its lock, and the counters kept outside it.
//! - [`watch`]: hot reload of the `--allow-file` key file.
//! - [`metrics`]: the Prometheus metrics; [`wpex_daemon::http`] serves them, with health and
//!   readiness.
//! - [`app`]: the process, all of the above put together.
//! - [`cli`]: the command line, compatible with the original Go wpex.

#![warn(unreachable_pub, missing_docs)]

pub mod app;
pub mod cli;
pub mod metrics;
pub mod server;
pub mod shared;
pub mod watch;
