//! Public keys and the allow-list, with each key's MAC keys precomputed at load time.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::crypto::PeerMacKeys;
use crate::message::Handshake;

/// A WireGuard (Curve25519) public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

/// A string that is not a public key; it holds the string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid wireguard public key: '{0}' (expected the base64 of 32 bytes, as `wg pubkey` prints)"
)]
pub struct KeyError(pub String);

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|_| KeyError(s.to_owned()))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError(s.to_owned()))?;
        Ok(PublicKey(key))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

struct Allowed {
    key: PublicKey,
    macs: PeerMacKeys,
}

/// The public keys a relay in allow-list mode lets through. Empty means nobody.
#[derive(Default)]
pub struct AllowedKeys {
    keys: Vec<Allowed>,
}

impl AllowedKeys {
    /// Deduplicates and derives every key's mac1 and cookie keys once.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut unique: Vec<PublicKey> = keys.into_iter().collect();
        unique.sort();
        unique.dedup();
        Self {
            keys: unique
                .into_iter()
                .map(|key| Allowed {
                    macs: PeerMacKeys::derive(&key.0),
                    key,
                })
                .collect(),
        }
    }

    /// How many distinct keys are allowed.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is allowed, so nobody gets through.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `key` is allowed.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.keys.binary_search_by(|a| a.key.cmp(key)).is_ok()
    }

    /// The allowed keys, in ascending byte order.
    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.iter().map(|a| &a.key)
    }

    /// An allowed key's precomputed MAC keys.
    pub fn get(&self, key: &PublicKey) -> Option<&PeerMacKeys> {
        self.keys
            .binary_search_by(|a| a.key.cmp(key))
            .ok()
            .map(|i| &self.keys[i].macs)
    }

    /// Tries every allowed key's mac1 on a handshake message: the expensive path, which the core
    /// only takes for messages no likely key explains, under a budget, and off the forwarding lock.
    pub fn scan(&self, msg: &Handshake<'_>) -> Scan {
        let mut macs = 0;
        for a in &self.keys {
            macs += 1;
            if a.macs.mac1_matches(msg) {
                return Scan {
                    key: Some(a.key),
                    macs,
                };
            }
        }
        Scan { key: None, macs }
    }
}

/// What a full mac1 scan found, and how many mac1 computations it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// The key whose mac1 the message carries; `None` if no allowed key's does.
    pub key: Option<PublicKey>,
    /// The mac1 computations spent.
    pub macs: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wg_pubkey_output_and_rejects_the_rest() {
        let k: PublicKey = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
            .parse()
            .expect("valid key");
        assert_eq!(
            k.to_string(),
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
        );
        for bad in [
            "",
            "not base64!",
            "AAAA",
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw",
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykwAAAA=",
        ] {
            let err = bad.parse::<PublicKey>().unwrap_err();
            assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[test]
    fn allow_list_dedups_and_answers_membership() {
        let a = PublicKey([1; 32]);
        let b = PublicKey([2; 32]);
        let set = AllowedKeys::new([b, a, b]);
        assert_eq!(set.len(), 2);
        assert!(set.contains(&a) && set.contains(&b));
        assert!(!set.contains(&PublicKey([3; 32])));
        assert!(AllowedKeys::new([]).is_empty());
    }
}
