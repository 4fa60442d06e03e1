//! Where the binaries under test are, and ports nobody listens on.

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// `env`'s value when set, else `default`; fails, saying how to get it, when neither exists.
pub fn binary(env: &str, default: impl Into<PathBuf>, hint: &str) -> Result<PathBuf> {
    let path = std::env::var_os(env).map_or_else(|| default.into(), PathBuf::from);
    if !path.exists() {
        bail!("{} not found; {hint} or set {env}", path.display());
    }
    Ok(path)
}

/// A binary of this workspace's debug build (`cargo build -p <package>`), or `env`'s value.
pub fn workspace_binary(env: &str, name: &str) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")),
        PathBuf::from,
    );
    binary(
        env,
        target.join("debug").join(name),
        &format!("build it with cargo build --bin {name}"),
    )
}

/// A TCP port on 127.0.0.1 that was free a moment ago (another process may take it first).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
