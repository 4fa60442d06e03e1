//! The `--allow-file` format: one base64 public key per line, blank lines and `#` comments allowed.
//! The path may also be a directory of such files, read as one list: a ConfigMap volume with
//! several keys, or a projected volume of several ConfigMaps, as the operator mounts past the
//! size of one ConfigMap.
//!
//! A list is accepted whole or not at all: one bad line rejects it, so a half-written or
//! corrupted update can never silently drop (or add) keys.

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

/// Reads and parses a key file, or every file of a directory as one list, following symlinks
/// (kubelet mounts files through two of them). Returns the raw content too, so a watcher can
/// tell when it changes.
pub fn read(path: &Path) -> Result<(Vec<u8>, Vec<PublicKey>), KeyFileError> {
    let is_dir = std::fs::metadata(path).map_err(read_error(path))?.is_dir();
    if !is_dir {
        let bytes = std::fs::read(path).map_err(read_error(path))?;
        let keys = parse_bytes(path, &bytes)?;
        return Ok((bytes, keys));
    }
    // kubelet removes the generation it swapped out: a read that raced the swap is retried
    // once, from the new one.
    match read_dir(path) {
        Err(KeyFileError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            read_dir(path)
        }
        done => done,
    }
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    }
}

/// Every file of `dir` whose name does not start with `.`, in name order, as one list. Names
/// with a dot are kubelet's `..data` machinery and editors' temporary files. Where kubelet's
/// `..data` link is, the files are read from the generation it points at, resolved once, so a
/// list swapped while it is read is read whole from one generation, never half old, half new.
/// The raw content is each file's name and bytes, so a renamed file is a change too.
fn read_dir(dir: &Path) -> Result<(Vec<u8>, Vec<PublicKey>), KeyFileError> {
    let data = dir.join("..data");
    let generation = match std::fs::canonicalize(&data) {
        Ok(generation) => generation,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => dir.to_owned(),
        Err(source) => return Err(read_error(&data)(source)),
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&generation).map_err(read_error(dir))? {
        let name = entry.map_err(read_error(dir))?.file_name();
        if !name.as_encoded_bytes().starts_with(b".") {
            names.push(name);
        }
    }
    names.sort();
    let (mut raw, mut keys) = (Vec::new(), Vec::new());
    for name in names {
        let (file, shown) = (generation.join(&name), dir.join(&name));
        // A ConfigMap key is a file; anything else in the directory is not a key list.
        if std::fs::metadata(&file)
            .map_err(read_error(&shown))?
            .is_dir()
        {
            continue;
        }
        let bytes = std::fs::read(&file).map_err(read_error(&shown))?;
        keys.extend(parse_bytes(&shown, &bytes)?);
        raw.extend_from_slice(name.as_encoded_bytes());
        raw.push(0);
        raw.extend_from_slice(&bytes);
        raw.push(0);
    }
    Ok((raw, keys))
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
    fn a_directory_is_one_list_of_its_files_in_name_order() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("b"), format!("{K2}\n")).expect("file b");
        std::fs::write(tmp.path().join("a"), format!("# shard a\n{K1}\n")).expect("file a");
        std::fs::write(tmp.path().join(".a.swp"), "not a key\n").expect("temp file");
        std::fs::create_dir(tmp.path().join("sub")).expect("subdirectory");
        let (raw, keys) = read(tmp.path()).expect("reads");
        let expected: Vec<PublicKey> = [K1, K2].iter().map(|k| k.parse().expect("key")).collect();
        assert_eq!(keys, expected);
        // Moving a key from one file to another changes the raw content, not the keys.
        std::fs::write(tmp.path().join("a"), format!("# shard a\n{K1}\n{K2}\n")).expect("a");
        std::fs::write(tmp.path().join("b"), "").expect("b");
        let (moved, _) = read(tmp.path()).expect("reads");
        assert_ne!(raw, moved);
        // One bad line in one file rejects the whole list, naming that file.
        std::fs::write(tmp.path().join("b"), "garbage\n").expect("b");
        let err = read(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains(&tmp.path().join("b").display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_kubelet_volume_is_read_from_the_generation_data_points_at() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (old, new) = (tmp.path().join("..2026_01"), tmp.path().join("..2026_02"));
        for (generation, key) in [(&old, K1), (&new, K2)] {
            std::fs::create_dir(generation).expect("generation");
            std::fs::write(generation.join("keys-0"), format!("{key}\n")).expect("payload");
        }
        std::os::unix::fs::symlink("..2026_02", tmp.path().join("..data")).expect("..data");
        std::os::unix::fs::symlink("..data/keys-0", tmp.path().join("keys-0")).expect("link");
        let (_, keys) = read(tmp.path()).expect("reads");
        assert_eq!(keys, vec![K2.parse().expect("key")]);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = read(Path::new("/nonexistent/wpex/keys")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/wpex/keys"), "{err}");
    }
}
