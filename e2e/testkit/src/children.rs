//! Long-running processes a test starts: each has a name and a log, and none outlives the test.
//!
//! [`Children`] starts a prepared [`Command`] (the caller adds arguments, environment, an
//! `ip netns exec` prefix), sends its stdout and stderr to `<dir>/<name>.log`, and kills and
//! reaps it on [`Children::stop`] or on drop. A child also gets SIGKILL when the thread that
//! started it exits, so a test process killed before Drop runs leaves nothing behind: start
//! children from a thread that lives as long as they should (the test's own thread).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::poll::{abort, eventually};

/// How long [`Children::stop`] lets a child exit on SIGTERM before it kills it.
const GRACE: Duration = Duration::from_secs(10);

/// Named child processes, each logging to `<dir>/<name>.log`; all are killed on drop.
#[derive(Debug)]
pub struct Children {
    dir: PathBuf,
    // Behind a lock so that `&Children` can ask "still running?" (`try_wait` needs `&mut`),
    // also from a check that [`crate::eventually`] runs while the owner is borrowed.
    running: Mutex<Vec<(String, Child)>>,
}

impl Children {
    /// No children yet; their logs will go to `dir`, which must exist and outlive them.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            running: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(String, Child)>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where the logs go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `name`'s stdout and stderr go.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// `name`'s log so far (empty if there is none).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Starts `command` as `name` with no stdin and its output in [`Children::log_path`];
    /// returns its PID. A name may be used again once its child has exited (a retry): the old
    /// child is forgotten and its log overwritten.
    pub fn spawn(&mut self, name: &str, mut command: Command) -> Result<u32> {
        self.forget_exited(name)?;
        let log = File::create(self.log_path(name))
            .with_context(|| format!("creating {}", self.log_path(name).display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        let pid = child.id();
        self.lock().push((name.to_owned(), child));
        Ok(pid)
    }

    /// Fails if `name` is still running; else forgets it, so that the name can be used again.
    fn forget_exited(&self, name: &str) -> Result<()> {
        let mut running = self.lock();
        if let Some(i) = running.iter().position(|(n, _)| n == name) {
            if matches!(running[i].1.try_wait(), Ok(None)) {
                bail!("a child named {name} is already running");
            }
            running.remove(i);
        }
        Ok(())
    }

    /// The PID of `name`, while it is one of these children (even if it has exited).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.lock()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// Whether `name` was started and has not exited.
    pub fn is_running(&self, name: &str) -> bool {
        self.lock()
            .iter_mut()
            .find(|(n, _)| n == name)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// How `name` exited, once it has (`None` while it runs, or if there is no such child).
    pub fn exit_status(&self, name: &str) -> Option<ExitStatus> {
        self.lock()
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|(_, c)| c.try_wait().ok().flatten())
    }

    /// Whether every child is still running.
    pub fn all_running(&self) -> bool {
        self.exited().is_none()
    }

    /// The first child that has exited, with its status, if any.
    pub fn exited(&self) -> Option<String> {
        self.lock()
            .iter_mut()
            .find_map(|(name, c)| match c.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(format!("{name} exited ({status})")),
                Err(e) => Some(format!("{name}: {e}")),
            })
    }

    /// Fails with an [`crate::Abort`] once a child has exited: for a check in
    /// [`crate::eventually`], where waiting on cannot help.
    pub fn ensure_running(&self) -> Result<()> {
        match self.exited() {
            Some(exited) => Err(abort(exited)),
            None => Ok(()),
        }
    }

    /// Stops `name` (SIGTERM, then SIGKILL after a grace period) and reaps it; its log stays.
    pub fn stop(&self, name: &str) {
        let taken = {
            let mut running = self.lock();
            let at = running.iter().position(|(n, _)| n == name);
            at.map(|i| running.remove(i).1)
        };
        let Some(mut child) = taken else {
            return;
        };
        // Only while it runs: once reaped, its PID may belong to someone else.
        if let (Ok(None), Ok(pid)) = (child.try_wait(), i32::try_from(child.id())) {
            // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = eventually(format!("{name} exits on SIGTERM"), GRACE)
            .until_blocking(|| Ok(child.try_wait()?.map(drop)));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills `name` at once (SIGKILL) and reaps it; its exit status stays readable.
    pub fn kill(&self, name: &str) {
        if let Some((_, child)) = self.lock().iter_mut().find(|(n, _)| n == name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills and reaps every child, the last started first.
    pub fn kill_all(&mut self) {
        let mut running = self.lock();
        for (_, child) in running.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        running.clear();
    }

    /// Prints the last `lines` lines of every child's log to stderr.
    pub fn print_logs(&self, lines: usize) {
        let names: Vec<String> = self.lock().iter().map(|(n, _)| n.clone()).collect();
        for name in names {
            print_tail(&self.log_path(&name), lines);
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Prints the last `lines` lines of the file at `path` to stderr, under a header naming it.
pub fn print_tail(path: &Path, lines: usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    eprintln!("----- {} (last {} lines)", path.display(), tail.len());
    for line in tail.into_iter().rev() {
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn logs_reports_and_stops_its_children() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut children = Children::new(dir.path());
        let pid = children
            .spawn("talker", sh("echo out; echo err >&2; exec sleep 60"))
            .expect("spawn");
        children.spawn("quitter", sh("exit 3")).expect("spawn");
        assert_eq!(children.pid("talker"), Some(pid));
        let (exited, _) = eventually("quitter exits", Duration::from_secs(10))
            .until_blocking(|| Ok(children.exited()))
            .expect("quitter exits");
        assert!(exited.starts_with("quitter exited"), "{exited}");
        let error = children.ensure_running().expect_err("one exited");
        assert!(error.is::<crate::Abort>());
        assert!(children.is_running("talker") && !children.all_running());
        eventually("talker's log", Duration::from_secs(10))
            .until_blocking(|| Ok(children.log("talker").contains("err").then_some(())))
            .expect("both streams in the log");
        assert!(children.log("talker").contains("out"));
        children.stop("talker");
        assert!(!children.is_running("talker") && children.pid("talker").is_none());
        // Reaped: the PID is no longer a child of ours.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn exit_status_kill_and_a_name_used_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut children = Children::new(dir.path());
        children.spawn("once", sh("exit 3")).expect("spawn");
        let (status, _) = eventually("once exits", Duration::from_secs(10))
            .until_blocking(|| Ok(children.exit_status("once")))
            .expect("exits");
        assert_eq!(status.code(), Some(3));
        let pid = children.spawn("once", sh("exec sleep 60")).expect("again");
        assert_eq!(children.pid("once"), Some(pid));
        assert!(children.exit_status("once").is_none());
        let error = children
            .spawn("once", sh("true"))
            .expect_err("still running");
        assert!(format!("{error}").contains("already running"), "{error}");
        children.kill("once");
        assert!(!children.is_running("once"));
        assert!(
            children
                .exit_status("once")
                .is_some_and(|s| s.code().is_none())
        );
    }

    #[test]
    fn drop_kills_what_still_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut children = Children::new(dir.path());
        let pid = children
            .spawn("sleeper", sh("exec sleep 60"))
            .expect("spawn");
        drop(children);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
