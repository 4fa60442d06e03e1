//! Reading the relay's Prometheus text exposition: one sample, every counter, what changed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// [`http_get`], with connection errors returned: a server still starting may refuse or reset.
pub fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: wpex\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of one sample in a Prometheus text exposition, e.g. `wpex_sessions` or
/// `wpex_dropped_packets_total{reason="mac1_invalid"}`.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Every `wpex_*_total` counter in a Prometheus exposition: (series, value).
pub fn counters(exposition: &str) -> Vec<(String, f64)> {
    exposition
        .lines()
        .filter(|l| l.starts_with("wpex_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            name.ends_with("_total")
                .then(|| Some((series.to_owned(), value.parse().ok()?)))?
        })
        .collect()
}

/// The counters that changed from `before` to `after`, as `series +delta`, joined by ", ".
pub fn counter_deltas(before: &str, after: &str) -> String {
    let before = counters(before);
    let changed: Vec<String> = counters(after)
        .into_iter()
        .filter_map(|(series, value)| {
            let old = before
                .iter()
                .find(|(s, _)| *s == series)
                .map_or(0.0, |(_, v)| *v);
            let delta = value - old;
            (delta != 0.0).then(|| format!("{series} {delta:+}"))
        })
        .collect();
    if changed.is_empty() {
        "no counter changed".to_owned()
    } else {
        changed.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sample_by_its_whole_series() {
        let text = "wpex_sessions 3\nwpex_sessions_total 9\n\
                    wpex_dropped_packets_total{reason=\"mac1_invalid\"} 5\n";
        assert_eq!(sample(text, "wpex_sessions"), Some(3.0));
        assert_eq!(
            sample(text, "wpex_dropped_packets_total{reason=\"mac1_invalid\"}"),
            Some(5.0)
        );
        assert_eq!(sample(text, "wpex_session"), None);
    }

    #[test]
    fn counters_and_their_deltas() {
        let before = "# HELP x\nwpex_dropped_packets_total{reason=\"mac1_invalid\"} 5\n\
                      wpex_sessions 1\nwpex_cookie_replies_total 2\n";
        let after = "wpex_dropped_packets_total{reason=\"mac1_invalid\"} 3005\n\
                     wpex_sessions 2\nwpex_cookie_replies_total 2\nwpex_scans_total 7\n";
        assert_eq!(
            counter_deltas(before, after),
            "wpex_dropped_packets_total{reason=\"mac1_invalid\"} +3000, wpex_scans_total +7"
        );
        assert_eq!(counter_deltas(after, after), "no counter changed");
    }
}
