//! The process under test: the relay, the minimal forwarder or a baseline binary, each started
//! as a child on a free loopback port so its CPU time and memory can be read from /proc alone,
//! apart from the generator's.
//!
//! Every child gets `--bind 127.0.0.1 --port N`, flags the original Go wpex has too, so traffic
//! stays on loopback and nothing listens on other interfaces. Children are killed when the
//! benchmark drops them, and by the kernel if the benchmark dies (`PR_SET_PDEATHSIG`).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procfs;

/// How long a target may take to bind its port.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The relay of this workspace.
    Ours,
    /// `wpex-bench forwarder`, the machine's yardstick.
    Forwarder,
    /// A binary with the original's flags, such as a hand-built Go wpex.
    Baseline,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Forwarder => "forwarder",
            Kind::Baseline => "baseline",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no free loopback UDP port: {0}")]
    Port(io::Error),
    #[error("cannot create the log file {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    #[error("cannot start {program}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("{name} exited ({status}); its log {log}:\n{tail}")]
    Exited {
        name: &'static str,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} did not bind UDP port {port} within {waited:?}; its log {log}:\n{tail}")]
    NotListening {
        name: &'static str,
        port: u16,
        waited: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("checking on {name}: {source}")]
    Wait {
        name: &'static str,
        source: io::Error,
    },
}

/// How to start one target.
#[derive(Debug, Clone)]
pub struct Spec {
    pub kind: Kind,
    pub program: PathBuf,
    /// Arguments before `--bind 127.0.0.1 --port N` (a subcommand).
    pub before: Vec<OsString>,
    /// Arguments after them.
    pub after: Vec<OsString>,
}

impl Spec {
    pub fn args(&self, port: u16) -> Vec<OsString> {
        let mut args = self.before.clone();
        args.extend(["--bind", "127.0.0.1", "--port"].map(OsString::from));
        args.push(port.to_string().into());
        args.extend(self.after.iter().cloned());
        args
    }

    /// The command line, for the report; repeated `--allow KEY` (the baseline's allow-list)
    /// shown once with the count, not as thousands of keys.
    pub fn display(&self, port: u16) -> String {
        let args = self.args(port);
        let allowed = args.iter().filter(|a| *a == "--allow").count();
        let mut words = vec![self.program.display().to_string()];
        let mut rest = args.iter();
        while let Some(a) = rest.next() {
            if a == "--allow" && allowed > 1 {
                rest.next();
                if !words.iter().any(|w| w.starts_with("--allow <")) {
                    words.push(format!("--allow <{allowed} keys>"));
                }
                continue;
            }
            words.push(a.to_string_lossy().into_owned());
        }
        words.join(" ")
    }
}

fn free_port() -> Result<u16, TargetError> {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(TargetError::Port)
}

/// The last few lines of a log, for an error message.
fn tail(path: &Path) -> String {
    const TAIL: u64 = 2048;
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    if text.trim().is_empty() {
        "(empty)".into()
    } else {
        text
    }
}

/// Makes the child `command` starts die with this process (`PR_SET_PDEATHSIG`).
fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (prctl, getppid, _exit); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // Die with the benchmark, even if it is killed before it can clean up.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody will ever kill us.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// A started target; killed when dropped.
pub struct Running {
    pub kind: Kind,
    pub pid: u32,
    pub addr: SocketAddrV4,
    pub command: String,
    pub log: PathBuf,
    child: Child,
}

impl Running {
    /// Starts `spec` on a free port, logging to `log_dir/<name>.log`, and waits until it has
    /// bound the port.
    pub fn start(spec: &Spec, log_dir: &Path) -> Result<Self, TargetError> {
        let port = free_port()?;
        let log = log_dir.join(format!("{}.log", spec.kind.name()));
        let log_err = |source| TargetError::Log {
            path: log.clone(),
            source,
        };
        let out = File::create(&log).map_err(log_err)?;
        let err = out.try_clone().map_err(log_err)?;
        let mut command = Command::new(&spec.program);
        command
            .args(spec.args(port))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|source| TargetError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
        let running = Running {
            kind: spec.kind,
            pid: child.id(),
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            command: spec.display(port),
            log,
            child,
        };
        running.bound()
    }

    /// Waits until the target has bound its port, at most [`START_TIMEOUT`].
    fn bound(mut self) -> Result<Self, TargetError> {
        let port = self.addr.port();
        let started = Instant::now();
        loop {
            self.check_alive()?;
            if procfs::udp_port_bound(port) {
                return Ok(self);
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(TargetError::NotListening {
                    name: self.kind.name(),
                    port,
                    waited: START_TIMEOUT,
                    tail: tail(&self.log),
                    log: self.log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// An error if the target has exited.
    pub fn check_alive(&mut self) -> Result<(), TargetError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(TargetError::Exited {
                name: self.kind.name(),
                status,
                log: self.log.clone(),
                tail: tail(&self.log),
            }),
            Err(source) => Err(TargetError::Wait {
                name: self.kind.name(),
                source,
            }),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGKILL: nothing of the target's shutdown is measured, and it cannot hang.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline(after: &[&str]) -> Spec {
        Spec {
            kind: Kind::Baseline,
            program: "/bin/wpex".into(),
            before: vec![],
            after: after.iter().map(OsString::from).collect(),
        }
    }

    #[test]
    fn a_long_allow_list_is_shown_as_a_count_but_passed_whole() {
        let spec = baseline(&["--allow", "K1", "--broadcast-rate", "1", "--allow", "K2"]);
        assert_eq!(
            spec.display(5),
            "/bin/wpex --bind 127.0.0.1 --port 5 --allow <2 keys> --broadcast-rate 1"
        );
        assert_eq!(spec.args(5).len(), 10);
        assert_eq!(
            baseline(&["--allow", "K1"]).display(5),
            "/bin/wpex --bind 127.0.0.1 --port 5 --allow K1"
        );
    }
}
