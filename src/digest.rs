//! SHA-256 digests of secrets (admin token, gateway keys) and their constant-time comparison.

/// The SHA-256 digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Equal digests, looking at every byte whatever the first difference. Comparing digests (not
/// the secrets) keeps the time independent of the secret's length and of what a client sent.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lowercase hex (of a digest, say).
pub use crate::trace::context::hex;

/// A digest from 64 hex digits (either case).
pub fn from_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_compare_and_round_trip_through_hex() {
        let a = sha256(b"abc");
        assert_eq!(
            hex(&a),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(from_hex(&hex(&a).to_uppercase()), Some(a));
        assert!(constant_time_eq(&a, &sha256(b"abc")));
        assert!(!constant_time_eq(&a, &sha256(b"abd")));
        assert_eq!(from_hex("ba78"), None);
        assert_eq!(from_hex(&"zz".repeat(32)), None);
    }
}
