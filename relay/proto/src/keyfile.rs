//! The `--allow-file` format: one base64 public key per line, blank lines and `#` comments allowed.
//!
//! A file is accepted whole or not at all: one bad line rejects it, so a half-written or corrupted
//! update can never silently drop (or add) keys.

use std::path::{Path, PathBuf};

use crate::keys::{KeyError, PublicKey};

/// Why a key file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The read error.
        source: std::io::Error,
    },
    /// A line is not a public key.
    #[error("key file {path}, line {line}: {source}")]
    Line {
        /// The key file.
        path: PathBuf,
        /// The bad line's number, from 1.
        line: usize,
        /// What is wrong with the line.
        source: KeyError,
    },
}

/// Parses the text of a key file. Keys may repeat; the allow-list deduplicates them.
pub fn parse(path: &Path, text: &str) -> Result<Vec<PublicKey>, KeyFileError> {
    let mut keys = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let key = line.parse().map_err(|source| KeyFileError::Line {
            path: path.to_owned(),
            line: n + 1,
            source,
        })?;
        keys.push(key);
    }
    Ok(keys)
}

/// Writes keys in this format, sorted and deduplicated, after a `#` comment header.
pub fn render(header: &str, keys: impl IntoIterator<Item = PublicKey>) -> String {
    let keys: std::collections::BTreeSet<PublicKey> = keys.into_iter().collect();
    let mut text: String = header.lines().map(|l| format!("# {l}\n")).collect();
    for key in keys {
        text.push_str(&key.to_string());
        text.push('\n');
    }
    text
}

/// Parses raw file content; bytes that are not UTF-8 make their line invalid.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<PublicKey>, KeyFileError> {
    parse(path, &String::from_utf8_lossy(bytes))
}

/// Reads and parses a key file, following symlinks (kubelet mounts files through two of them).
/// Returns the raw content too, so a watcher can tell when it changes.
pub fn read(path: &Path) -> Result<(Vec<u8>, Vec<PublicKey>), KeyFileError> {
    let bytes = std::fs::read(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let keys = parse_bytes(path, &bytes)?;
    Ok((bytes, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    const K2: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn parse_str(text: &str) -> Result<Vec<PublicKey>, KeyFileError> {
        parse(Path::new("keys"), text)
    }

    #[test]
    fn keys_comments_and_blank_lines() {
        let text = format!("# peers of team A\n\n{K1}\n   {K2}   # laptop\n\t\n# end\n");
        let keys = parse_str(&text).expect("valid file");
        let expected: Vec<PublicKey> = [K1, K2].iter().map(|k| k.parse().expect("key")).collect();
        assert_eq!(keys, expected);
    }

    #[test]
    fn render_sorts_dedups_and_parses_back() {
        let (a, b): (PublicKey, PublicKey) = (K1.parse().expect("key"), K2.parse().expect("key"));
        let text = render("managed by a test\nsecond line", [b, a, b]);
        assert!(
            text.starts_with("# managed by a test\n# second line\n"),
            "{text}"
        );
        let mut sorted = vec![a, b];
        sorted.sort();
        assert_eq!(parse_str(&text).expect("round trip"), sorted);
        assert_eq!(parse_str(&render("empty", [])).expect("parses"), vec![]);
    }

    #[test]
    fn an_empty_file_allows_nobody() {
        assert!(parse_str("").expect("empty is valid").is_empty());
        assert!(
            parse_str("# nobody yet\n\n")
                .expect("only comments")
                .is_empty()
        );
    }

    #[test]
    fn one_bad_line_rejects_the_file_and_names_the_line() {
        let text = format!("{K1}\n# fine\n{K2}x\n{K1}\n");
        let err = parse_str(&text).unwrap_err();
        let KeyFileError::Line { line, .. } = &err else {
            panic!("expected a line error, got {err}")
        };
        assert_eq!(*line, 3);
        let message = err.to_string();
        assert!(
            message.contains("line 3") && message.contains(&format!("'{K2}x'")),
            "{message}"
        );
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = read(Path::new("/nonexistent/wpex/keys")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/wpex/keys"), "{err}");
    }
}
