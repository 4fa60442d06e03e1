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

/// `name` in the directory `env` names, else in `default_dir` (tools installed side by side);
/// fails, saying how to get it, when it is not there.
pub fn binary_in(
    env: &str,
    default_dir: impl Into<PathBuf>,
    name: &str,
    hint: &str,
) -> Result<PathBuf> {
    let path = std::env::var_os(env)
        .map_or_else(|| default_dir.into(), PathBuf::from)
        .join(name);
    if !path.exists() {
        bail!(
            "{} not found; {hint} or set {env} to its directory",
            path.display()
        );
    }
    Ok(path)
}

/// Where this workspace's builds go: `CARGO_TARGET_DIR`, else `target` at its root.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")),
        PathBuf::from,
    )
}

/// A binary of this workspace's debug build (`cargo build -p <package>`), or `env`'s value.
pub fn workspace_binary(env: &str, name: &str) -> Result<PathBuf> {
    binary(
        env,
        target_dir().join("debug").join(name),
        &format!("build it with cargo build --bin {name}"),
    )
}

/// A TCP port on 127.0.0.1 that was free a moment ago (another process may take it first).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
