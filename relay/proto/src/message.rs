//! WireGuard messages as the relay sees them: typed, borrowed views over a datagram.
//!
//! Only the fields the relay routes on are exposed. Everything else is opaque ciphertext the relay
//! cannot read. Offsets follow the WireGuard paper, section 5.4; integers are little-endian.

/// The type byte of a handshake initiation.
pub const TYPE_INITIATION: u8 = 1;
/// The type byte of a handshake response.
pub const TYPE_RESPONSE: u8 = 2;
/// The type byte of a cookie reply.
pub const TYPE_COOKIE_REPLY: u8 = 3;
/// The type byte of a transport data message.
pub const TYPE_DATA: u8 = 4;

/// The exact size of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// The exact size of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// The exact size of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// A transport message with an empty payload (a keepalive): header, receiver, counter, tag.
pub const DATA_MIN_LEN: usize = 32;

/// The size of mac1, mac2 and a cookie.
pub const MAC_LEN: usize = 16;
const INITIATION_MAC1: usize = 116;
const RESPONSE_MAC1: usize = 60;

/// Why a datagram is not a WireGuard message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the 4-byte header.
    #[error("shorter than a message header")]
    TooShort,
    /// The type byte is none of the four types; it holds the byte.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The 3 reserved header bytes are not all zero.
    #[error("non-zero reserved header bytes")]
    Reserved,
    /// The size is wrong for the type.
    #[error("wrong length {len} for message type {ty}")]
    Length {
        /// The type byte.
        ty: u8,
        /// The datagram's size.
        len: usize,
    },
}

/// One parsed message, borrowing the datagram.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// A handshake initiation (type 1).
    Initiation(Handshake<'a>),
    /// A handshake response (type 2).
    Response(Handshake<'a>),
    /// A cookie reply (type 3).
    CookieReply(Routed<'a>),
    /// Transport data (type 4).
    Data(Routed<'a>),
}

impl<'a> Message<'a> {
    /// Classifies a datagram, checking the header and the exact size of each type.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        if bytes.len() < 4 {
            return Err(ParseError::TooShort);
        }
        let ty = bytes[0];
        if bytes[1..4] != [0, 0, 0] {
            return Err(ParseError::Reserved);
        }
        let len = bytes.len();
        let size_ok = match ty {
            TYPE_INITIATION => len == INITIATION_LEN,
            TYPE_RESPONSE => len == RESPONSE_LEN,
            TYPE_COOKIE_REPLY => len == COOKIE_REPLY_LEN,
            // No alignment check: senders cap the 16-byte padding at the MTU.
            TYPE_DATA => len >= DATA_MIN_LEN,
            other => return Err(ParseError::UnknownType(other)),
        };
        if !size_ok {
            return Err(ParseError::Length { ty, len });
        }
        Ok(match ty {
            TYPE_INITIATION => Message::Initiation(Handshake {
                bytes,
                mac1_at: INITIATION_MAC1,
            }),
            TYPE_RESPONSE => Message::Response(Handshake {
                bytes,
                mac1_at: RESPONSE_MAC1,
            }),
            TYPE_COOKIE_REPLY => Message::CookieReply(Routed { bytes }),
            _ => Message::Data(Routed { bytes }),
        })
    }

    /// Which of the four types this is.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Initiation(_) => Kind::Initiation,
            Message::Response(_) => Kind::Response,
            Message::CookieReply(_) => Kind::CookieReply,
            Message::Data(_) => Kind::Data,
        }
    }
}

crate::labels::labelled_enum! {
    /// The four message types, for counting.
    pub enum Kind {
        /// A handshake initiation.
        Initiation => "handshake_initiation",
        /// A handshake response.
        Response => "handshake_response",
        /// A cookie reply.
        CookieReply => "cookie_reply",
        /// Transport data.
        Data => "transport_data",
    }
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// A handshake initiation or response: both carry a sender index, mac1 and mac2.
#[derive(Debug, Clone, Copy)]
pub struct Handshake<'a> {
    bytes: &'a [u8],
    mac1_at: usize,
}

impl<'a> Handshake<'a> {
    /// The index the sender picked for this handshake.
    pub fn sender_index(&self) -> u32 {
        le_u32(self.bytes, 4)
    }

    /// Whether this is an initiation rather than a response.
    pub fn is_initiation(&self) -> bool {
        self.mac1_at == INITIATION_MAC1
    }

    /// The initiator's index that a response answers. Meaningless on an initiation.
    pub fn receiver_index(&self) -> u32 {
        le_u32(self.bytes, 8)
    }

    /// The bytes mac1 covers.
    pub fn mac1_input(&self) -> &'a [u8] {
        &self.bytes[..self.mac1_at]
    }

    /// The mac1 the message carries.
    pub fn mac1(&self) -> &'a [u8; MAC_LEN] {
        fixed(&self.bytes[self.mac1_at..self.mac1_at + MAC_LEN])
    }

    /// The bytes mac2 covers: everything up to and including mac1.
    pub fn mac2_input(&self) -> &'a [u8] {
        &self.bytes[..self.mac2_at()]
    }

    /// The mac2 the message carries.
    pub fn mac2(&self) -> &'a [u8; MAC_LEN] {
        fixed(&self.bytes[self.mac2_at()..])
    }

    /// A first handshake carries no cookie, hence an all-zero mac2.
    pub fn mac2_is_zero(&self) -> bool {
        self.mac2().iter().all(|b| *b == 0)
    }

    /// Offset of mac2, where a caller holding the datagram mutably can zero it.
    pub fn mac2_at(&self) -> usize {
        self.mac1_at + MAC_LEN
    }
}

/// A cookie reply or a transport message: routed by receiver index only.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    bytes: &'a [u8],
}

impl Routed<'_> {
    /// The index of the peer the message is addressed to.
    pub fn receiver_index(&self) -> u32 {
        le_u32(self.bytes, 4)
    }
}

fn fixed(slice: &[u8]) -> &[u8; MAC_LEN] {
    // Callers slice exactly MAC_LEN bytes at offsets fixed by the checked message length.
    slice.try_into().expect("slice is MAC_LEN long")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u8, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        v[0] = ty;
        v
    }

    #[test]
    fn exact_sizes_are_accepted() {
        assert!(matches!(
            Message::parse(&msg(1, 148)),
            Ok(Message::Initiation(_))
        ));
        assert!(matches!(
            Message::parse(&msg(2, 92)),
            Ok(Message::Response(_))
        ));
        assert!(matches!(
            Message::parse(&msg(3, 64)),
            Ok(Message::CookieReply(_))
        ));
        assert!(matches!(Message::parse(&msg(4, 32)), Ok(Message::Data(_))));
        assert!(matches!(Message::parse(&msg(4, 48)), Ok(Message::Data(_))));
        // A full-size packet under an MTU that is not a multiple of 16.
        assert!(matches!(
            Message::parse(&msg(4, 1452)),
            Ok(Message::Data(_))
        ));
    }

    #[test]
    fn every_malformed_shape_is_rejected() {
        assert_eq!(Message::parse(&[]).unwrap_err(), ParseError::TooShort);
        assert_eq!(
            Message::parse(&[1, 0, 0]).unwrap_err(),
            ParseError::TooShort
        );
        for ty in [0u8, 5, 0xff] {
            assert_eq!(
                Message::parse(&msg(ty, 148)).unwrap_err(),
                ParseError::UnknownType(ty)
            );
        }
        let mut reserved = msg(1, 148);
        reserved[2] = 1;
        assert_eq!(Message::parse(&reserved).unwrap_err(), ParseError::Reserved);
        for (ty, len) in [
            (1, 147),
            (1, 149),
            (2, 91),
            (2, 93),
            (3, 63),
            (3, 65),
            (4, 31),
        ] {
            assert_eq!(
                Message::parse(&msg(ty, len)).unwrap_err(),
                ParseError::Length { ty, len },
                "type {ty} len {len}"
            );
        }
    }

    #[test]
    fn fields_are_read_at_their_offsets() {
        let mut init = msg(1, 148);
        init[4..8].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
        init[116..132].fill(0xaa);
        init[132..148].fill(0xbb);
        let Ok(Message::Initiation(h)) = Message::parse(&init) else {
            panic!("not an initiation")
        };
        assert_eq!(h.sender_index(), 0xdead_beef);
        assert_eq!(h.mac1(), &[0xaa; 16]);
        assert_eq!(h.mac2(), &[0xbb; 16]);
        assert_eq!(h.mac1_input().len(), 116);
        assert_eq!(h.mac2_input().len(), 132);

        let mut resp = msg(2, 92);
        resp[4..8].copy_from_slice(&7u32.to_le_bytes());
        resp[8..12].copy_from_slice(&9u32.to_le_bytes());
        resp[60..76].fill(0xcc);
        let Ok(Message::Response(h)) = Message::parse(&resp) else {
            panic!("not a response")
        };
        assert_eq!((h.sender_index(), h.receiver_index()), (7, 9));
        assert_eq!(h.mac1(), &[0xcc; 16]);
        assert_eq!(h.mac2_at(), 76);

        let mut data = msg(4, 32);
        data[4..8].copy_from_slice(&42u32.to_le_bytes());
        let Ok(Message::Data(r)) = Message::parse(&data) else {
            panic!("not data")
        };
        assert_eq!(r.receiver_index(), 42);
    }
}
