//! What the benchmark reads from /proc: a process's CPU time and memory, whether a UDP port is
//! bound, and the kernel's UDP drop counters.
//!
//! CPU time is the sum over `/proc/PID/task/*/schedstat` of the first field, the nanoseconds each
//! thread has run (`se.sum_exec_runtime`). `/proc/PID/stat` has it only in clock ticks (10 ms),
//! too coarse for a run of a few seconds. A thread that exits mid-run takes its time with it; the
//! relays under test keep their threads for life.

use std::collections::HashSet;
use std::io;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: cannot parse {content:?}")]
    Parse { path: String, content: String },
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Nanoseconds of CPU that every live thread of `pid` has used.
pub fn cpu_ns(pid: u32) -> Result<u64, ProcError> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|source| ProcError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut total = 0u64;
    for task in tasks {
        let task = task.map_err(|source| ProcError::Read {
            path: dir.clone(),
            source,
        })?;
        let path = task.path().join("schedstat");
        let Ok(text) = std::fs::read_to_string(&path) else {
            // The thread exited between listing and reading.
            continue;
        };
        total += parse_schedstat(&text).ok_or_else(|| ProcError::Parse {
            path: path.display().to_string(),
            content: text.clone(),
        })?;
    }
    Ok(total)
}

fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Resident memory of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    let status = read(&path)?;
    parse_rss(&status).ok_or(ProcError::Parse {
        path,
        content: "no VmRSS line".into(),
    })
}

fn parse_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether any UDP socket (IPv4 or IPv6) in this network namespace is bound to `port`. Reading
/// the tables, unlike trying to bind the port, cannot get in the way of a relay starting up.
pub fn udp_port_bound(port: u16) -> bool {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .any(|table| table_has_port(&table, port))
}

fn table_has_port(table: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        line.split_whitespace()
            .nth(1)
            .is_some_and(|local| local.ends_with(&want))
    })
}

/// Receive-buffer drops (the last column of /proc/net/udp and udp6) of the sockets bound to
/// `target`, and of those bound to any port in `generator`: where a datagram was lost.
pub fn udp_drops(target: u16, generator: &HashSet<u16>) -> Result<(u64, u64), ProcError> {
    let mut drops = (0, 0);
    for path in ["/proc/net/udp", "/proc/net/udp6"] {
        let table = match std::fs::read_to_string(path) {
            Ok(t) => t,
            // No IPv6 in this kernel.
            Err(e) if e.kind() == io::ErrorKind::NotFound && path.ends_with('6') => continue,
            Err(source) => {
                return Err(ProcError::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        let (t, g) = sum_drops(&table, target, generator);
        drops.0 += t;
        drops.1 += g;
    }
    Ok(drops)
}

fn sum_drops(table: &str, target: u16, generator: &HashSet<u16>) -> (u64, u64) {
    let mut drops = (0, 0);
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = fields
            .get(1)
            .and_then(|local| local.rsplit_once(':'))
            .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
        let dropped = fields.last().and_then(|d| d.parse::<u64>().ok());
        match (port, dropped) {
            (Some(p), Some(d)) if p == target => drops.0 += d,
            (Some(p), Some(d)) if generator.contains(&p) => drops.1 += d,
            _ => {}
        }
    }
    drops
}

/// The kernel's UDP counters for this network namespace (`/proc/net/snmp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams dropped because a receive buffer was full.
    pub rcvbuf_errors: u64,
    pub in_errors: u64,
}

pub fn udp_counters() -> Result<UdpCounters, ProcError> {
    let path = "/proc/net/snmp";
    let snmp = read(path)?;
    parse_udp(&snmp).ok_or_else(|| ProcError::Parse {
        path: path.into(),
        content: "no Udp counters".into(),
    })
}

fn parse_udp(snmp: &str) -> Option<UdpCounters> {
    let mut udp = snmp.lines().filter_map(|l| l.strip_prefix("Udp: "));
    let (names, values) = (udp.next()?, udp.next()?);
    let values: Vec<&str> = values.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let at = names.split_whitespace().position(|n| n == name)?;
        values.get(at)?.parse().ok()
    };
    Some(UdpCounters {
        rcvbuf_errors: get("RcvbufErrors")?,
        in_errors: get("InErrors")?,
    })
}

/// A one-line sysfs or procfs value, trimmed.
pub fn read_value(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The first `model name` of /proc/cpuinfo.
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_kernel_writes() {
        assert_eq!(
            parse_schedstat("1002149766 218509 12\n"),
            Some(1_002_149_766)
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(
            parse_rss("Name:\twpex\nVmRSS:\t    5120 kB\nThreads: 3\n"),
            Some(5120)
        );
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 1125 1 3 1127 42 0\n";
        assert_eq!(
            parse_udp(snmp),
            Some(UdpCounters {
                rcvbuf_errors: 42,
                in_errors: 3
            })
        );
        let table = "  sl  local_address rem_address   st\n\
                     12: 0100007F:9C40 00000000:0000 07\n";
        assert!(table_has_port(table, 40000));
        assert!(!table_has_port(table, 4000));
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                     1: 0100007F:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0000000000000000 17\n\
                     2: 0100007F:0FA0 0100007F:9C40 01 00000000:00000000 00:00000000 00000000 0 0 3 2 0000000000000000 5\n\
                     3: 0100007F:0FA1 0100007F:9C40 01 00000000:00000000 00:00000000 00000000 0 0 4 2 0000000000000000 1\n";
        let generator: HashSet<u16> = [4000, 4001].into();
        assert_eq!(sum_drops(table, 40000, &generator), (17, 6));
        assert!(table_has_port(table, 4000) && !table_has_port(table, 4002));
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_ns(me).expect("schedstat") > 0);
        assert!(rss_kib(me).expect("status") > 0);
        assert!(udp_counters().is_ok());
    }
}
