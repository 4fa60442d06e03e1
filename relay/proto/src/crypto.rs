//! The WireGuard primitives the relay needs: mac1, mac2, cookies and cookie replies.
//!
//! None of this touches a private key or session key: the relay only ever holds public keys, so
//! it can authenticate *who a handshake is for* and *who owns a source address*, never read or
//! forge traffic.

use std::net::{IpAddr, SocketAddr};

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use subtle::ConstantTimeEq;

use crate::message::{
    COOKIE_REPLY_LEN, Handshake, MAC_LEN, TYPE_COOKIE_REPLY, TYPE_INITIATION, TYPE_RESPONSE,
};

const LABEL_MAC1: &[u8; 8] = b"mac1----";
const LABEL_COOKIE: &[u8; 8] = b"cookie--";

/// A 16-byte MAC: mac1, mac2 or a cookie.
pub type Mac = [u8; MAC_LEN];

/// HASH(label || public key), the derivation of both the mac1 key and the cookie key.
fn hash_label(label: &[u8; 8], public_key: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, label);
    Digest::update(&mut h, public_key);
    h.finalize().into()
}

/// The key a handshake addressed to `public_key` has its mac1 made with.
pub fn mac1_key(public_key: &[u8; 32]) -> [u8; 32] {
    hash_label(LABEL_MAC1, public_key)
}

/// A peer's side of a cookie reply: the cookie, if `reply` decrypts with the cookie key of
/// `public_key` (the key the answered handshake was addressed to) and `mac1`, the answered
/// handshake's. The relay never opens one; tests and the benchmark play peers with it.
pub fn open_cookie_reply(
    public_key: &[u8; 32],
    reply: &[u8; COOKIE_REPLY_LEN],
    mac1: &Mac,
) -> Option<Mac> {
    let aead = XChaCha20Poly1305::new((&hash_label(LABEL_COOKIE, public_key)).into());
    let mut cookie: Mac = reply[32..48].try_into().ok()?;
    aead.decrypt_in_place_detached(
        XNonce::from_slice(&reply[8..32]),
        mac1,
        &mut cookie,
        Tag::from_slice(&reply[48..64]),
    )
    .ok()?;
    Some(cookie)
}

/// Keyed BLAKE2s with a 16-byte output. `key` is at most 32 bytes by construction at every caller.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> Mac {
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(key)
        .expect("keys passed here are 16 or 32 bytes");
    for part in parts {
        Update::update(&mut m, part);
    }
    m.finalize_fixed().into()
}

/// Constant-time equality, so timing does not leak how many MAC bytes matched.
pub fn mac_eq(a: &Mac, b: &Mac) -> bool {
    a.ct_eq(b).into()
}

/// What the relay derives from one peer's public key, once, when the key is loaded.
///
/// mac1 is keyed BLAKE2s over a message whose first 4 bytes are fixed per type. The states below
/// have already absorbed the key block and those 4 bytes, so checking a mac1 costs the two
/// compressions of the remaining 112 (initiation) or 56 (response) bytes, not three or more.
#[derive(Clone)]
pub struct PeerMacKeys {
    mac1_initiation: Blake2sMac<U16>,
    mac1_response: Blake2sMac<U16>,
    cookie: [u8; 32],
}

/// The header every message of one type starts with: type byte, 3 reserved zero bytes.
const HEADER_LEN: usize = 4;

fn mac1_state(mac1_key: &[u8; 32], message_type: u8) -> Blake2sMac<U16> {
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(mac1_key)
        .expect("a 32-byte key is a valid BLAKE2s key");
    Update::update(&mut m, &[message_type, 0, 0, 0]);
    m
}

impl PeerMacKeys {
    /// Derives the mac1 states and the cookie key for `public_key`.
    pub fn derive(public_key: &[u8; 32]) -> Self {
        let mac1 = hash_label(LABEL_MAC1, public_key);
        Self {
            mac1_initiation: mac1_state(&mac1, TYPE_INITIATION),
            mac1_response: mac1_state(&mac1, TYPE_RESPONSE),
            cookie: hash_label(LABEL_COOKIE, public_key),
        }
    }

    /// Whether the handshake's mac1 was made for this public key.
    pub fn mac1_matches(&self, msg: &Handshake<'_>) -> bool {
        let mut m = if msg.is_initiation() {
            self.mac1_initiation.clone()
        } else {
            self.mac1_response.clone()
        };
        // Parsing checked the header, so the prefix absorbed at load time is this message's.
        Update::update(&mut m, &msg.mac1_input()[HEADER_LEN..]);
        mac_eq(&m.finalize_fixed().into(), msg.mac1())
    }

    /// A cookie reply the sender of `msg` can decrypt with the public key it was talking to.
    pub fn cookie_reply(
        &self,
        msg: &Handshake<'_>,
        cookie: &Mac,
        nonce: [u8; 24],
    ) -> [u8; COOKIE_REPLY_LEN] {
        let mut out = [0u8; COOKIE_REPLY_LEN];
        out[0] = TYPE_COOKIE_REPLY;
        out[4..8].copy_from_slice(&msg.sender_index().to_le_bytes());
        out[8..32].copy_from_slice(&nonce);
        out[32..48].copy_from_slice(cookie);
        let aead = XChaCha20Poly1305::new((&self.cookie).into());
        let tag = aead
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), msg.mac1(), &mut out[32..48])
            .expect("a 16-byte plaintext is far below the AEAD length limit");
        out[48..64].copy_from_slice(&tag);
        out
    }
}

/// Bytes of a source address as the cookie covers them: IP then port.
fn address_bytes(src: SocketAddr) -> ([u8; 18], usize) {
    let mut buf = [0u8; 18];
    let n = match src.ip() {
        IpAddr::V4(ip) => {
            buf[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            buf[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    buf[n..n + 2].copy_from_slice(&src.port().to_be_bytes());
    (buf, n + 2)
}

/// The relay's cookie secrets: a cookie proves its holder receives datagrams at a source address.
///
/// The secret is replaced every [`crate::timers::COOKIE_ROTATION`]; the previous one is still accepted, so
/// a cookie is good for at least that long, which is as long as a peer keeps using it.
pub struct CookieSecrets {
    current: [u8; 32],
    previous: Option<[u8; 32]>,
}

impl CookieSecrets {
    /// Starts with `secret` as the current secret and no previous one.
    pub fn new(secret: [u8; 32]) -> Self {
        Self {
            current: secret,
            previous: None,
        }
    }

    /// Makes `fresh` the current secret; the current one becomes the previous, still accepted.
    pub fn rotate(&mut self, fresh: [u8; 32]) {
        self.previous = Some(std::mem::replace(&mut self.current, fresh));
    }

    /// The cookie for `src` under the current secret.
    pub fn cookie(&self, src: SocketAddr) -> Mac {
        Self::cookie_with(&self.current, src)
    }

    fn cookie_with(secret: &[u8; 32], src: SocketAddr) -> Mac {
        let (buf, n) = address_bytes(src);
        mac(secret, &[&buf[..n]])
    }

    /// Whether `msg` carries a mac2 made with a cookie this relay gave to `src`.
    pub fn mac2_valid(&self, src: SocketAddr, msg: &Handshake<'_>) -> bool {
        let check = |secret: &[u8; 32]| {
            let cookie = Self::cookie_with(secret, src);
            mac_eq(&mac(&cookie, &[msg.mac2_input()]), msg.mac2())
        };
        // Evaluate both so the time taken does not say which secret matched.
        let current = check(&self.current);
        let previous = self.previous.as_ref().is_some_and(check);
        current | previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn initiation_for(public_key: &[u8; 32]) -> Vec<u8> {
        let mut m = vec![0u8; 148];
        m[0] = 1;
        m[4..8].copy_from_slice(&77u32.to_le_bytes());
        m[8..116].fill(0x5a);
        let tag = mac(&hash_label(LABEL_MAC1, public_key), &[&m[..116]]);
        m[116..132].copy_from_slice(&tag);
        m
    }

    fn handshake(bytes: &[u8]) -> Handshake<'_> {
        match Message::parse(bytes) {
            Ok(Message::Initiation(h)) => h,
            other => panic!("not an initiation: {other:?}"),
        }
    }

    #[test]
    fn mac1_matches_only_its_key() {
        let a = PeerMacKeys::derive(&[1; 32]);
        let b = PeerMacKeys::derive(&[2; 32]);
        let m = initiation_for(&[1; 32]);
        assert!(a.mac1_matches(&handshake(&m)));
        assert!(!b.mac1_matches(&handshake(&m)));
        let mut flipped = m.clone();
        flipped[20] ^= 1;
        assert!(!a.mac1_matches(&handshake(&flipped)));
    }

    #[test]
    fn a_cookie_reply_opens_only_with_the_addressed_key_and_mac1() {
        let m = initiation_for(&[1; 32]);
        let h = handshake(&m);
        let reply = PeerMacKeys::derive(&[1; 32]).cookie_reply(&h, &[7; 16], [3; 24]);
        assert_eq!(
            reply[4..8],
            77u32.to_le_bytes(),
            "addressed to the sender index"
        );
        assert_eq!(open_cookie_reply(&[1; 32], &reply, h.mac1()), Some([7; 16]));
        assert_eq!(open_cookie_reply(&[2; 32], &reply, h.mac1()), None);
        assert_eq!(open_cookie_reply(&[1; 32], &reply, &[0; 16]), None);
        assert_eq!(mac1_key(&[1; 32]), hash_label(LABEL_MAC1, &[1; 32]));
    }

    #[test]
    fn cookies_bind_the_address_and_survive_one_rotation() {
        let mut secrets = CookieSecrets::new([9; 32]);
        let src: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let other: SocketAddr = "198.51.100.7:5001".parse().unwrap();
        assert_ne!(secrets.cookie(src), secrets.cookie(other));

        let mut m = initiation_for(&[1; 32]);
        let cookie = secrets.cookie(src);
        let tag = mac(&cookie, &[&m[..132]]);
        m[132..148].copy_from_slice(&tag);
        assert!(secrets.mac2_valid(src, &handshake(&m)));
        assert!(!secrets.mac2_valid(other, &handshake(&m)));

        secrets.rotate([10; 32]);
        assert!(secrets.mac2_valid(src, &handshake(&m)), "previous secret");
        secrets.rotate([11; 32]);
        assert!(!secrets.mac2_valid(src, &handshake(&m)), "two rotations");
    }
}
