//! wpex: a relay for stock WireGuard peers behind NAT that cannot read or alter their traffic.
//!
//! - [`message`]: typed views of the four WireGuard message types.
//! - [`crypto`]: mac1, mac2, cookies and cookie replies, from public keys only.
//! - [`keys`]: public keys and the allow-list.
//! - [`table`]: index and endpoint table with expiry.
//! - [`relay`]: the sans-IO protocol core.
//! - [`server`]: tokio UDP sockets around the core.
//! - [`cli`]: the command line, compatible with the original Go wpex.

pub mod cli;
pub mod crypto;
pub mod keys;
pub mod message;
pub mod ratelimit;
pub mod relay;
pub mod server;
pub mod stats;
pub mod table;

pub use relay::{Access, Config, Output, Relay};
