//! Fake but well-formed WireGuard messages, and the probe the benchmark hides in transport data.
//!
//! A relay routes on the message type, the exact size and the indices, never on the ciphertext
//! (PROTOCOL.md). In open mode nothing checks mac1, so handshakes filled with random bytes are
//! routed like real ones. In allow-list mode [`set_mac1`] makes a real mac1 for the addressee's
//! key, and [`open_cookie_reply`] and [`set_mac2`] answer the relay's cookie round, with the
//! relay's own constructions (`wpex_proto::crypto`).
//!
//! A transport data message here is: type 4, three zero bytes, receiver index, counter (both
//! little-endian, as on the wire), then the payload. The payload starts with the probe: a sequence
//! number whose top bit marks the measured phase, and the send time in nanoseconds on the
//! generator's clock. The rest is random filler standing in for ciphertext.

use rand::RngCore;
use wpex_proto::crypto::{self, Mac};
use wpex_proto::message::{COOKIE_REPLY_LEN, Message};
// The relay's own sizes and types. DATA_MIN_LEN, a keepalive (header and a 16-byte tag), also
// has room for the probe.
pub use wpex_proto::message::{
    DATA_MIN_LEN, INITIATION_LEN, RESPONSE_LEN, TYPE_DATA, TYPE_INITIATION, TYPE_RESPONSE,
};

/// Type, reserved bytes, receiver index, counter.
pub const DATA_HEADER_LEN: usize = 16;
/// The largest UDP payload over IPv4.
pub const DATA_MAX_LEN: usize = 65_507;

const MEASURED: u64 = 1 << 63;

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?))
}

/// A handshake initiation from `sender`: random ephemeral, static, timestamp and mac1; mac2 zero,
/// as in a first handshake without a cookie.
pub fn initiation(sender: u32, rng: &mut impl RngCore) -> [u8; INITIATION_LEN] {
    let mut m = [0u8; INITIATION_LEN];
    rng.fill_bytes(&mut m[8..132]);
    m[0] = TYPE_INITIATION;
    put_u32(&mut m, 4, sender);
    m
}

/// A handshake response from `sender` answering the initiation of `receiver`; mac2 zero.
pub fn response(sender: u32, receiver: u32, rng: &mut impl RngCore) -> [u8; RESPONSE_LEN] {
    let mut m = [0u8; RESPONSE_LEN];
    rng.fill_bytes(&mut m[12..76]);
    m[0] = TYPE_RESPONSE;
    put_u32(&mut m, 4, sender);
    put_u32(&mut m, 8, receiver);
    m
}

/// `(sender, receiver)` of a handshake response.
pub fn parse_response(m: &[u8]) -> Option<(u32, u32)> {
    if m.len() != RESPONSE_LEN || m[..4] != [TYPE_RESPONSE, 0, 0, 0] {
        return None;
    }
    Some((u32_at(m, 4)?, u32_at(m, 8)?))
}

/// Where mac1 and mac2 sit in a handshake message, as the relay reads them.
fn mac_offsets(m: &[u8]) -> Option<(usize, usize)> {
    match Message::parse(m) {
        Ok(Message::Initiation(h) | Message::Response(h)) => {
            Some((h.mac1_input().len(), h.mac2_at()))
        }
        _ => None,
    }
}

/// Writes a handshake's mac1 for the peer it is addressed to (whose mac1 key this is). Returns
/// false, changing nothing, if `m` is not a handshake.
pub fn set_mac1(m: &mut [u8], mac1_key: &[u8; 32]) -> bool {
    let Some((at, _)) = mac_offsets(m) else {
        return false;
    };
    let tag = crypto::mac(mac1_key, &[&m[..at]]);
    m[at..at + tag.len()].copy_from_slice(&tag);
    true
}

/// Writes a handshake's mac2 from a cookie, as a WireGuard peer does while it holds one.
pub fn set_mac2(m: &mut [u8], cookie: &Mac) -> bool {
    let Some((_, at)) = mac_offsets(m) else {
        return false;
    };
    let tag = crypto::mac(cookie, &[&m[..at]]);
    m[at..at + tag.len()].copy_from_slice(&tag);
    true
}

/// A handshake's mac1, which a cookie reply to it is bound to.
pub fn mac1(m: &[u8]) -> Option<Mac> {
    let (at, _) = mac_offsets(m)?;
    m.get(at..at + 16)?.try_into().ok()
}

/// The receiver index of a cookie reply: the sender index of the handshake it answers.
pub fn cookie_reply_receiver(m: &[u8]) -> Option<u32> {
    match Message::parse(m) {
        Ok(Message::CookieReply(r)) => Some(r.receiver_index()),
        _ => None,
    }
}

/// The cookie in a reply to `answered`, a handshake addressed to the peer whose public key is
/// `addressee`; `None` if the reply does not decrypt.
pub fn open_cookie_reply(reply: &[u8], answered: &[u8], addressee: &[u8; 32]) -> Option<Mac> {
    let reply: &[u8; COOKIE_REPLY_LEN] = reply.try_into().ok()?;
    crypto::open_cookie_reply(addressee, reply, &mac1(answered)?)
}

/// A transport message of `len` bytes with its header type set and random filler, to be
/// addressed and stamped by [`stamp`] before each send.
pub fn data_template(len: usize, rng: &mut impl RngCore) -> Vec<u8> {
    let mut m = vec![0u8; len.max(DATA_MIN_LEN)];
    rng.fill_bytes(&mut m[DATA_HEADER_LEN..]);
    m[..4].copy_from_slice(&[TYPE_DATA, 0, 0, 0]);
    m
}

/// What the receiver reads back from a transport message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub receiver: u32,
    /// Unique per generator run, without the phase bit.
    pub seq: u64,
    /// Sent during the measured phase (not the warm-up).
    pub measured: bool,
    /// Send time, nanoseconds on the generator's clock.
    pub sent_ns: u64,
}

/// Addresses a [`data_template`] buffer and writes the probe. The counter field gets the
/// sequence number, so it grows like a real session's.
pub fn stamp(m: &mut [u8], receiver: u32, seq: u64, measured: bool) {
    put_u32(m, 4, receiver);
    put_u64(m, 8, seq);
    put_u64(
        m,
        DATA_HEADER_LEN,
        seq | if measured { MEASURED } else { 0 },
    );
}

/// Writes the send time, the last thing done before the batch goes out.
pub fn stamp_time(m: &mut [u8], sent_ns: u64) {
    put_u64(m, DATA_HEADER_LEN + 8, sent_ns);
}

/// Reads a transport message of exactly `len` bytes back.
pub fn parse_data(m: &[u8], len: usize) -> Option<Probe> {
    if m.len() != len || m[..4] != [TYPE_DATA, 0, 0, 0] {
        return None;
    }
    let tagged = u64_at(m, DATA_HEADER_LEN)?;
    Some(Probe {
        receiver: u32_at(m, 4)?,
        seq: tagged & !MEASURED,
        measured: tagged & MEASURED != 0,
        sent_ns: u64_at(m, DATA_HEADER_LEN + 8)?,
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn handshakes_have_the_wire_layout() {
        let mut rng = StdRng::seed_from_u64(1);
        let i = initiation(0x0102_0304, &mut rng);
        assert_eq!(i[..8], [1, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(i[132..], [0; 16], "mac2 is zero");
        assert_ne!(i[116..132], [0; 16], "mac1 is filled");
        let r = response(7, 0x0102_0304, &mut rng);
        assert_eq!(r.len(), 92);
        assert_eq!(r[76..], [0; 16]);
        assert_eq!(parse_response(&r), Some((7, 0x0102_0304)));
        assert_eq!(parse_response(&i), None);
    }

    #[test]
    fn a_probe_survives_the_round_trip() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut m = data_template(128, &mut rng);
        stamp(&mut m, 99, 12345, true);
        stamp_time(&mut m, 777);
        assert_eq!(m[..4], [4, 0, 0, 0]);
        assert_eq!(
            parse_data(&m, 128),
            Some(Probe {
                receiver: 99,
                seq: 12345,
                measured: true,
                sent_ns: 777
            })
        );
        stamp(&mut m, 99, 3, false);
        assert_eq!(
            parse_data(&m, 128).map(|p| (p.seq, p.measured)),
            Some((3, false))
        );
        assert_eq!(
            parse_data(&m, 129),
            None,
            "a datagram of another size is not ours"
        );
        assert_eq!(data_template(10, &mut rng).len(), DATA_MIN_LEN);
    }

    fn handshake(bytes: &[u8]) -> wpex_proto::message::Handshake<'_> {
        match Message::parse(bytes) {
            Ok(Message::Initiation(h) | Message::Response(h)) => h,
            other => panic!("not a handshake: {other:?}"),
        }
    }

    #[test]
    fn macs_are_what_the_relay_checks_and_its_cookie_reply_opens() {
        let mut rng = StdRng::seed_from_u64(3);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut i = initiation(5, &mut rng);
        assert!(set_mac1(&mut i, &crypto::mac1_key(&b)));
        let mut r = response(6, 5, &mut rng);
        assert!(set_mac1(&mut r, &crypto::mac1_key(&a)));
        let (ka, kb) = (
            crypto::PeerMacKeys::derive(&a),
            crypto::PeerMacKeys::derive(&b),
        );
        assert!(kb.mac1_matches(&handshake(&i)) && !ka.mac1_matches(&handshake(&i)));
        assert!(ka.mac1_matches(&handshake(&r)) && !kb.mac1_matches(&handshake(&r)));
        assert_eq!(i[132..], [0; 16], "no mac2 without a cookie");

        // The relay's cookie round: a reply to the initiation, opened with B's key.
        let reply = kb.cookie_reply(&handshake(&i), &[9; 16], [4; 24]);
        assert_eq!(cookie_reply_receiver(&reply), Some(5));
        assert_eq!(open_cookie_reply(&reply, &r, &b), None, "bound to the mac1");
        assert_eq!(open_cookie_reply(&reply, &i, &a), None, "bound to the key");
        let cookie = open_cookie_reply(&reply, &i, &b).expect("opens");
        assert_eq!(cookie, [9; 16]);
        assert!(set_mac2(&mut i, &cookie));
        let secrets = crypto::CookieSecrets::new([7; 32]);
        let src = "127.1.0.1:4000".parse().expect("address");
        let cookie = secrets.cookie(src);
        assert!(set_mac2(&mut r, &cookie));
        assert!(
            secrets.mac2_valid(src, &handshake(&r)),
            "the relay accepts the mac2"
        );
        assert!(!set_mac1(&mut [4u8; 40], &[0; 32]), "not a handshake");
    }
}
