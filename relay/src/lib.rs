//! wpex: a relay for stock WireGuard peers behind NAT that cannot read or alter their traffic.
//!
//! - [`message`]: typed views of the four WireGuard message types.
//! - [`crypto`]: mac1, mac2, cookies and cookie replies, from public keys only.
//! - [`keys`]: public keys and the allow-list.
//! - [`table`]: index and endpoint table with expiry.
//! - [`relay`]: the sans-IO protocol core.
//! - [`routes`]: the core's transport data routes, read by the IO workers without its lock.
//! - [`server`]: tokio UDP sockets around the core.
//! - [`keyfile`] and [`watch`]: the `--allow-file` format and its hot reload.
//! - [`metrics`] and [`http`]: Prometheus metrics, health and readiness.
//! - [`app`]: the process, all of the above put together.
//! - [`cli`]: the command line, compatible with the original Go wpex.

pub mod app;
pub mod cli;
pub mod crypto;
pub mod http;
pub mod keyfile;
pub mod keys;
pub mod message;
pub mod metrics;
pub mod ratelimit;
pub mod relay;
pub mod routes;
pub mod server;
pub mod stats;
pub mod table;
pub mod watch;

pub use relay::{Access, Config, Output, Relay};
