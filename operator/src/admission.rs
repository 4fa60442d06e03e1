//! Which peer keys a relay accepts. Pure domain logic: no Kubernetes types, no IO.

use std::collections::HashMap;

use wpex_proto::keys::PublicKey;

use crate::resources::{KEY_SHARDS, SHARD_KEYS, shard_of};

/// A peer key as the relay controller sees it, borrowed from the resource: a relay may have
/// 100,000 of them, judged on every reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The WireGuardPeerKey's name, unique within the relay's namespace.
    pub name: &'a str,
    /// `spec.publicKey` as written, not yet parsed.
    pub public_key: &'a str,
    /// `spec.disabled`.
    pub disabled: bool,
    /// Orders claims on the same key: the earlier resource keeps it.
    pub created: Option<i64>,
}

/// What a relay makes of one peer key; shown as the key's `Accepted` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// In the allow-list, parsed.
    Accepted(PublicKey),
    /// Valid, but `spec.disabled` keeps it out.
    Disabled,
    /// Another WireGuardPeerKey of the same relay already holds this key.
    Duplicate {
        /// The name of the WireGuardPeerKey that holds it.
        of: String,
    },
    /// Not a WireGuard public key; the API server's rule should have refused it already.
    Invalid,
    /// Its shard already holds [`SHARD_KEYS`] keys of claims older than this one: the relay
    /// fails closed, so it is not allowed until older keys make room.
    KeyLimit {
        /// The full shard.
        shard: usize,
    },
}

impl Verdict {
    /// The condition reason shown in status.
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Accepted(_) => "Accepted",
            Verdict::Disabled => "Disabled",
            Verdict::Duplicate { .. } => "DuplicateKey",
            Verdict::Invalid => "InvalidKey",
            Verdict::KeyLimit { .. } => "KeyLimit",
        }
    }

    /// The condition message shown in status, for people.
    pub fn message(&self) -> String {
        match self {
            Verdict::Accepted(_) => "the key is in the relay's allow-list".into(),
            Verdict::Disabled => "spec.disabled is true; the key is not in the allow-list".into(),
            Verdict::Duplicate { of } => {
                format!("WireGuardPeerKey {of} already allows this public key on the same relay")
            }
            Verdict::Invalid => "publicKey is not the base64 of 32 bytes".into(),
            Verdict::KeyLimit { shard } => format!(
                "the relay's key shard {shard} holds its limit of {SHARD_KEYS} keys, all older \
                 than this one; it is allowed once one of them is removed"
            ),
        }
    }
}

/// Judges every candidate of one relay. The verdicts follow the input order.
pub fn judge(candidates: &[Candidate<'_>]) -> Vec<Verdict> {
    judge_within(candidates, SHARD_KEYS)
}

/// [`judge`] with `per_shard` keys at most in each shard.
fn judge_within(candidates: &[Candidate<'_>], per_shard: usize) -> Vec<Verdict> {
    // The earliest valid, enabled claim on each key wins; ties break by name.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_unstable_by_key(|&i| (candidates[i].created, candidates[i].name));
    let mut owner: HashMap<PublicKey, &str> = HashMap::with_capacity(candidates.len());
    let mut verdicts: Vec<Option<Verdict>> = vec![None; candidates.len()];
    let mut held = [0usize; KEY_SHARDS];
    for i in order {
        let c = &candidates[i];
        let verdict = match c.public_key.parse::<PublicKey>() {
            Err(_) => Verdict::Invalid,
            Ok(_) if c.disabled => Verdict::Disabled,
            Ok(key) => match owner.get(&key) {
                Some(of) => Verdict::Duplicate {
                    of: (*of).to_owned(),
                },
                None => {
                    owner.insert(key, c.name);
                    let shard = shard_of(&key);
                    if held[shard] < per_shard {
                        held[shard] += 1;
                        Verdict::Accepted(key)
                    } else {
                        Verdict::KeyLimit { shard }
                    }
                }
            },
        };
        verdicts[i] = Some(verdict);
    }
    // Every index was in `order` once.
    verdicts.into_iter().flatten().collect()
}

/// The accepted keys, for the relay's key file.
pub fn accepted(verdicts: &[Verdict]) -> Vec<PublicKey> {
    verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Accepted(k) => Some(*k),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    const K2: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn c<'a>(name: &'a str, key: &'a str, disabled: bool, created: i64) -> Candidate<'a> {
        Candidate {
            name,
            public_key: key,
            disabled,
            created: Some(created),
        }
    }

    #[test]
    fn the_oldest_claim_on_a_key_wins() {
        let got = judge(&[
            c("late", K1, false, 20),
            c("early", K1, false, 10),
            c("other", K2, false, 30),
        ]);
        assert_eq!(got[0], Verdict::Duplicate { of: "early".into() });
        assert_eq!(got[1], Verdict::Accepted(K1.parse().expect("key")));
        assert_eq!(got[2], Verdict::Accepted(K2.parse().expect("key")));
        assert_eq!(accepted(&got).len(), 2);
    }

    #[test]
    fn past_a_full_shard_the_newest_keys_wait_and_a_removal_makes_room_at_once() {
        // Keys whose first byte is 0, 16, 32: all of shard 0.
        let in_shard_0: Vec<String> = (0..3u8)
            .map(|i| {
                let mut key = [7u8; 32];
                key[0] = i * 16;
                PublicKey(key).to_string()
            })
            .collect();
        let all = [
            c("newest", &in_shard_0[2], false, 30),
            c("oldest", &in_shard_0[0], false, 10),
            c("middle", &in_shard_0[1], false, 20),
            c("elsewhere", K2, false, 40),
        ];
        let got = judge_within(&all, 2);
        assert_eq!(got[0], Verdict::KeyLimit { shard: 0 });
        assert_eq!(got[0].reason(), "KeyLimit");
        assert!(matches!(got[1], Verdict::Accepted(_)));
        assert!(matches!(got[2], Verdict::Accepted(_)));
        assert!(matches!(got[3], Verdict::Accepted(_)), "another shard");
        // The oldest deleted: the removal takes effect, and the newest takes its place.
        let got = judge_within(&[all[0].clone(), all[2].clone()], 2);
        assert!(got.iter().all(|v| matches!(v, Verdict::Accepted(_))));
    }

    #[test]
    fn a_disabled_claim_does_not_hold_the_key() {
        let got = judge(&[c("old-disabled", K1, true, 1), c("new", K1, false, 2)]);
        assert_eq!(got[0], Verdict::Disabled);
        assert_eq!(got[1], Verdict::Accepted(K1.parse().expect("key")));
    }

    #[test]
    fn ties_break_by_name_and_invalid_keys_are_refused() {
        let got = judge(&[
            c("b", K1, false, 5),
            c("a", K1, false, 5),
            c("bad", "AAAA", false, 1),
        ]);
        assert_eq!(got[0], Verdict::Duplicate { of: "a".into() });
        assert!(matches!(got[1], Verdict::Accepted(_)));
        assert_eq!(got[2], Verdict::Invalid);
        assert_eq!(got[2].reason(), "InvalidKey");
    }

    #[test]
    fn nothing_in_nothing_out() {
        assert!(judge(&[]).is_empty());
    }
}
