//! Fake but well-formed WireGuard messages, and the probe the benchmark hides in transport data.
//!
//! A relay routes on the message type, the exact size and the indices, never on the ciphertext
//! (PROTOCOL.md). In open mode nothing checks mac1, so handshakes filled with random bytes are
//! routed like real ones; allow-list mode would need real mac1 values and a cookie round, which
//! this first slice does not do.
//!
//! A transport data message here is: type 4, three zero bytes, receiver index, counter (both
//! little-endian, as on the wire), then the payload. The payload starts with the probe: a sequence
//! number whose top bit marks the measured phase, and the send time in nanoseconds on the
//! generator's clock. The rest is random filler standing in for ciphertext.

use rand::RngCore;

pub const TYPE_INITIATION: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
pub const TYPE_DATA: u8 = 4;

pub const INITIATION_LEN: usize = 148;
pub const RESPONSE_LEN: usize = 92;
/// Type, reserved bytes, receiver index, counter.
pub const DATA_HEADER_LEN: usize = 16;
/// The smallest transport message (a keepalive: header and a 16-byte tag), which also has room
/// for the probe.
pub const DATA_MIN_LEN: usize = 32;
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
}
