//! Messages with the right type, length and indices but no cryptography: enough for the relay,
//! which never decrypts. Shared by the tests and the benches (`#[path]`).

/// A handshake initiation (`kind` 1) or response (2); `receiver` is used by responses only.
pub fn handshake(kind: u8, sender: u32, receiver: u32) -> Vec<u8> {
    let mut d = vec![0u8; if kind == 1 { 148 } else { 92 }];
    d[0] = kind;
    d[4..8].copy_from_slice(&sender.to_le_bytes());
    if kind == 2 {
        d[8..12].copy_from_slice(&receiver.to_le_bytes());
    }
    d
}

/// Transport data of `len` bytes (at least the 32-byte minimum) for `receiver`.
pub fn transport(receiver: u32, len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len.max(32)];
    d[0] = 4;
    d[4..8].copy_from_slice(&receiver.to_le_bytes());
    d
}
