//! Allow-list mode: the keys a target lets in, and which peer holds which.
//!
//! The relay uses public keys for nothing but mac1 and cookie keys, so random 32-byte strings
//! stand in for Curve25519 keys. Pair p's A holds key 2p and its B key 2p + 1; the keys no peer
//! holds pad the list to the size asked for, as allowed peers that are offline. Our relay reads
//! the list from a key file (`--allow-file`), as a deployment with many keys would; the original
//! wpex only takes `--allow KEY`, repeated.

use std::io;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use rand::RngCore;
use serde::Serialize;
use wpex_proto::crypto::mac1_key;
use wpex_proto::keyfile;
use wpex_proto::keys::PublicKey;

/// Who a target lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone: the relay checks no mac1 and sends no cookie reply.
    Open,
    /// An allow-list: handshakes need a valid mac1, and each new address a cookie round.
    Allow,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Allow => "allow",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot write the key file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// One simulated peer's identity.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub public: PublicKey,
    /// What a handshake addressed to this peer has its mac1 made with.
    pub mac1_key: [u8; 32],
}

impl Peer {
    fn new(public: PublicKey) -> Self {
        Self {
            public,
            mac1_key: mac1_key(&public.0),
        }
    }
}

/// The keys of one pair: A initiates to B, B responds to A.
#[derive(Debug, Clone, Copy)]
pub struct PairKeys {
    pub a: Peer,
    pub b: Peer,
}

/// The allow-list of one matrix cell.
#[derive(Debug, Clone)]
pub struct AllowList {
    keys: Vec<PublicKey>,
}

impl AllowList {
    /// Two keys per pair, and random padding up to `len` in all.
    pub fn random(len: usize, pairs: usize, rng: &mut impl RngCore) -> Self {
        let keys = (0..len.max(pairs * 2))
            .map(|_| {
                let mut k = [0u8; 32];
                rng.fill_bytes(&mut k);
                PublicKey(k)
            })
            .collect();
        Self { keys }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys of pair `pair`; `random` made room for every pair asked for.
    pub fn pair(&self, pair: usize) -> Option<PairKeys> {
        Some(PairKeys {
            a: Peer::new(*self.keys.get(pair * 2)?),
            b: Peer::new(*self.keys.get(pair * 2 + 1)?),
        })
    }

    /// Writes the key file for `--allow-file`. The relay re-reads it on any change in its
    /// directory, so give it a directory of its own (not the one the targets log to).
    pub fn write(&self, path: &Path) -> Result<(), AccessError> {
        let fail = |source| AccessError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let text = keyfile::render("wpex-bench allow-list", self.keys.iter().copied());
        std::fs::write(path, text).map_err(fail)
    }

    /// The original wpex's flags for this list: `--allow KEY` for each key.
    pub fn allow_args(&self) -> Vec<String> {
        self.keys
            .iter()
            .flat_map(|k| ["--allow".to_owned(), k.to_string()])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn every_pair_gets_two_keys_of_the_list_and_the_rest_pads_it() {
        let mut rng = StdRng::seed_from_u64(1);
        let list = AllowList::random(10, 3, &mut rng);
        assert_eq!(list.len(), 10);
        let held: Vec<PublicKey> = (0..3)
            .filter_map(|p| list.pair(p))
            .flat_map(|k| [k.a.public, k.b.public])
            .collect();
        assert_eq!(held, list.keys[..6]);
        assert!(list.pair(5).is_none(), "no keys beyond the list");
        let k = list.pair(0).expect("pair 0");
        assert_eq!(k.a.mac1_key, mac1_key(&k.a.public.0));
        assert_ne!(k.a.mac1_key, k.b.mac1_key);
        assert_eq!(
            AllowList::random(1, 4, &mut rng).len(),
            8,
            "grown to two keys per pair"
        );
    }

    #[test]
    fn the_key_file_is_what_the_relay_reads_and_the_flags_what_the_original_takes() {
        let mut rng = StdRng::seed_from_u64(2);
        let list = AllowList::random(5, 1, &mut rng);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys/allowed");
        list.write(&path).expect("written");
        let (_, mut read) = keyfile::read(&path).expect("the relay's parser accepts it");
        let mut want = list.keys.clone();
        read.sort();
        want.sort();
        assert_eq!(read, want);
        let args = list.allow_args();
        assert_eq!(args.len(), 10);
        assert_eq!(args[0], "--allow");
        assert_eq!(args[1].parse::<PublicKey>().ok(), Some(list.keys[0]));
    }
}
