//! Measurements for the attack and roaming tests: a process's CPU time, UDP counters, and pings
//! whose every reply is time-stamped (the relay's counter deltas are `wpex_testkit`'s).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// CPU time (user + system, all threads, live and exited) that process `pid` has used, to the
/// nanosecond: the clock ticks of `/proc/PID/stat` (10 ms) are too coarse for a receiver that
/// needs a few milliseconds of CPU a second.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let pid = libc::pid_t::try_from(pid).with_context(|| format!("pid {pid}"))?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: writes one clockid_t.
    let rc = unsafe { libc::clock_getcpuclockid(pid, &raw mut clock) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc))
            .with_context(|| format!("CPU clock of {pid}"));
    }
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    if unsafe { libc::clock_gettime(clock, &raw mut t) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("CPU time of {pid}"));
    }
    let secs = u64::try_from(t.tv_sec).context("negative CPU time")?;
    let nanos = u32::try_from(t.tv_nsec).context("CPU time nanoseconds")?;
    Ok(Duration::new(secs, nanos))
}

/// CPU time of the live threads of process `pid` named `name` (zero if none), from their
/// `schedstat`, in nanoseconds like [`cpu_time`].
pub fn threads_cpu_time(pid: u32, name: &str) -> Result<Duration> {
    let dir = format!("/proc/{pid}/task");
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path();
        // A thread may end meanwhile; it is then no longer counted.
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("schedstat")) else {
            continue;
        };
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{}: {stat:?}", path.display()))?;
        total += Duration::from_nanos(ns);
    }
    Ok(total)
}

/// An IPv4 UDP counter (`RcvbufErrors`, `InDatagrams`, ...) of the network namespace that
/// process `pid` lives in.
pub fn udp_counter(pid: u32, name: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/net/snmp");
    let snmp = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_udp_counter(&snmp, name).with_context(|| format!("no Udp {name} in {path}"))
}

/// `Udp:` comes as two lines, names then values.
fn parse_udp_counter(snmp: &str, name: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter_map(|l| l.strip_prefix("Udp: "));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Seconds since the UNIX epoch, the clock `ping -D` stamps replies with.
pub fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One echo reply: when it arrived (UNIX seconds) and its sequence number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reply {
    /// `ping -D`'s timestamp.
    pub at: f64,
    /// `icmp_seq`.
    pub seq: u32,
}

/// Parses a `ping -D` reply line: `[1700000000.123456] 64 bytes from ...: icmp_seq=5 ...`.
pub fn parse_reply(line: &str) -> Option<Reply> {
    let at = line.strip_prefix('[')?.split_once(']')?.0.parse().ok()?;
    if !line.contains(" bytes from ") {
        return None;
    }
    let seq = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("icmp_seq="))?
        .parse()
        .ok()?;
    Some(Reply { at, seq })
}

/// A ping running in the background, one echo request every `interval`, that keeps the time
/// of every reply. It stops by itself after its deadline, or when dropped.
pub struct PingStream {
    child: Child,
    replies: Arc<Mutex<Vec<Reply>>>,
    reader: Option<JoinHandle<()>>,
}

impl PingStream {
    /// Pings `target` from interface `iface` in namespace `ns` for at most `deadline`.
    pub fn start(
        ns: &str,
        iface: &str,
        target: std::net::Ipv4Addr,
        interval: Duration,
        deadline: Duration,
    ) -> Result<Self> {
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-n", "-D", "-W", "1", "-I", iface,
            ])
            .args(["-i", &format!("{:.3}", interval.as_secs_f64())])
            .args(["-w", &deadline.as_secs().max(1).to_string()])
            .arg(target.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting ping in {ns}"))?;
        let stdout = child.stdout.take().context("ping stdout")?;
        let replies = Arc::new(Mutex::new(Vec::new()));
        let sink = replies.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(reply) = parse_reply(&line) {
                    sink.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(reply);
                }
            }
        });
        Ok(Self {
            child,
            replies,
            reader: Some(reader),
        })
    }

    /// The replies so far, oldest first.
    pub fn replies(&self) -> Vec<Reply> {
        self.replies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The first reply that arrived after UNIX time `t`.
    pub fn first_reply_after(&self, t: f64) -> Option<Reply> {
        self.replies().into_iter().find(|r| r.at > t)
    }

    /// Stops the ping and returns every reply.
    pub fn stop(mut self) -> Vec<Reply> {
        self.halt();
        self.replies()
    }

    fn halt(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for PingStream {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The longest time between two consecutive replies in `replies` (sorted by arrival).
pub fn longest_gap(replies: &[Reply]) -> Duration {
    replies
        .windows(2)
        .map(|w| Duration::from_secs_f64((w[1].at - w[0].at).max(0.0)))
        .max()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_and_others() {
        let line = "[1796026508.486581] 64 bytes from 192.0.2.2: icmp_seq=2 ttl=64 time=0.039 ms";
        assert_eq!(
            parse_reply(line),
            Some(Reply {
                at: 1_796_026_508.486_581,
                seq: 2
            })
        );
        assert_eq!(
            parse_reply("PING 192.0.2.2 (192.0.2.2) from 192.0.2.1 w1: 56(84) bytes of data."),
            None
        );
        assert_eq!(
            parse_reply("[1796026508.1] From 192.0.2.1 icmp_seq=3 Destination Host Unreachable"),
            None
        );
    }

    #[test]
    fn cpu_time_of_this_process_grows() {
        let pid = std::process::id();
        let before = cpu_time(pid).expect("own stat");
        // Spin until 50 ms of CPU show up; a shared machine may give us little of it.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut now = before;
        while now < before + Duration::from_millis(50) && start.elapsed() < Duration::from_secs(10)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
            now = cpu_time(pid).expect("own stat");
        }
        assert!(
            now >= before + Duration::from_millis(50),
            "{before:?} -> {now:?}"
        );
        // It cannot count more CPU than the spin had wall time, times the threads.
        assert!(
            now.saturating_sub(before) < start.elapsed() * 64,
            "{before:?} -> {now:?}"
        );
    }

    #[test]
    fn udp_counters_by_name() {
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    Udp: 10 0 7 3 5\nUdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 0\n";
        assert_eq!(parse_udp_counter(snmp, "RcvbufErrors"), Some(5));
        assert_eq!(parse_udp_counter(snmp, "InDatagrams"), Some(10));
        assert_eq!(parse_udp_counter(snmp, "Nope"), None);
        let own = udp_counter(std::process::id(), "InDatagrams");
        assert!(own.is_ok(), "{own:?}");
    }

    #[test]
    fn gaps() {
        let r = |at| Reply { at, seq: 0 };
        assert_eq!(
            longest_gap(&[r(1.0), r(1.1), r(3.1), r(3.2)]),
            Duration::from_secs_f64(2.0)
        );
        assert_eq!(longest_gap(&[]), Duration::ZERO);
    }
}
