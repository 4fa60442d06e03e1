//! The command line. Flag names and meanings are those of the original Go wpex.

use std::ffi::OsString;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use wpex_daemon::LogFormat;

use wpex_proto::keys::PublicKey;

#[derive(Debug, Parser)]
#[command(
    name = "wpex",
    version,
    about = "A relay for WireGuard peers behind NAT that cannot read or alter their traffic"
)]
/// The relay's command line: the original Go wpex's flags, in its spelling and GNU's.
pub struct Args {
    /// Address to bind to. Empty: every address, IPv4 and IPv6.
    #[arg(long, default_value = "")]
    pub bind: String,

    /// UDP port to listen on.
    #[arg(long, default_value_t = 40000)]
    pub port: u16,

    /// Broadcast copies of handshake initiations per second, burst 5x. 0 = unlimited.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub broadcast_rate: u32,

    /// Handshake initiations per second from one source (an IPv4 address or an IPv6 /64), burst
    /// 5x. 0 = unlimited.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub source_rate: u32,

    /// mac1 computations per second the relay may spend identifying handshakes that no likely
    /// key explains (a full scan costs one per allowed key). 0 = unlimited.
    #[arg(long, default_value_t = wpex_proto::DEFAULT_SCAN_BUDGET, value_name = "N")]
    pub scan_budget: u32,

    /// Allow a WireGuard public key (base64). Repeat for more keys. Without any, the relay is
    /// open to everyone.
    #[arg(long = "allow", value_name = "KEY")]
    pub allow: Vec<PublicKey>,

    /// A file of allowed public keys, one per line (`#` comments allowed), followed as it
    /// changes; or a directory whose files are one list. Combines with --allow. An empty file
    /// allows nobody.
    #[arg(long, value_name = "PATH")]
    pub allow_file: Option<PathBuf>,

    /// Serve /metrics, /healthz and /readyz on this address (for example 0.0.0.0:9090).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Enable debug logs.
    #[arg(long)]
    pub debug: bool,

    /// Receive sockets sharing the port (SO_REUSEPORT). Every datagram is decided under one lock,
    /// so more than one mostly adds contention: under a junk flood two cost half as much CPU
    /// again per datagram as one.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,

    /// Never send several datagrams for one peer as one GSO message: for a network device that
    /// mishandles UDP segmentation offload. The relay turns GSO off by itself if a send fails.
    #[arg(long, env = "WPEX_NO_GSO")]
    pub no_gso: bool,
}

const BOOL_FLAGS: &[&str] = &["debug", "no-gso", "version", "help"];

/// Accepts the Go `flag` package's spellings the original understood: `-port 1`, `-port=1`,
/// `--debug=true`, `-debug=false`, rewriting them to the GNU style clap parses.
pub fn go_style_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    for (i, arg) in args.into_iter().enumerate() {
        let Some(s) = arg.to_str().filter(|_| i > 0) else {
            out.push(arg);
            continue;
        };
        let body = s
            .strip_prefix("--")
            .or_else(|| s.strip_prefix('-').filter(|rest| rest.len() > 1));
        let Some(body) = body else {
            out.push(arg);
            continue;
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        match value {
            Some(v) if BOOL_FLAGS.contains(&name) => match v {
                "true" | "1" | "t" | "T" | "TRUE" | "True" => out.push(format!("--{name}").into()),
                "false" | "0" | "f" | "F" | "FALSE" | "False" => {}
                // Let clap report the odd value.
                _ => out.push(format!("--{name}={v}").into()),
            },
            Some(v) => out.push(format!("--{name}={v}").into()),
            None => out.push(format!("--{name}").into()),
        }
    }
    out
}

impl std::str::FromStr for Args {
    type Err = clap::Error;

    /// Parses a whitespace-separated command line (without the program name); for tests.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let argv = std::iter::once("wpex")
            .chain(s.split_whitespace())
            .map(OsString::from);
        Args::try_parse_from(go_style_args(argv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    #[test]
    fn defaults_match_the_original() {
        let a: Args = "".parse().expect("no flags");
        assert_eq!((a.bind.as_str(), a.port, a.broadcast_rate), ("", 40000, 0));
        assert!(a.allow.is_empty() && !a.debug);
    }

    #[test]
    fn go_and_gnu_spellings_agree() {
        for line in [
            format!("--port 5000 --broadcast-rate 3 --allow {KEY} --allow {KEY} --debug"),
            format!("-port 5000 -broadcast-rate=3 -allow={KEY} -allow {KEY} -debug"),
            format!("-port=5000 --broadcast-rate 3 --allow={KEY} -allow {KEY} -debug=true"),
        ] {
            let a: Args = line.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(
                (a.port, a.broadcast_rate, a.allow.len(), a.debug),
                (5000, 3, 2, true),
                "{line}"
            );
        }
        let a: Args = "-debug=false".parse().expect("parses");
        assert!(!a.debug);
        for (line, no_gso) in [("", false), ("--no-gso", true), ("-no-gso=false", false)] {
            let a: Args = line.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(a.no_gso, no_gso, "{line:?}");
        }
    }

    #[test]
    fn a_malformed_key_is_named_in_the_error() {
        let err = "--allow notakey=".parse::<Args>().unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("invalid wireguard public key: 'notakey='"),
            "{text}"
        );
        assert_ne!(err.exit_code(), 0);
    }
}
