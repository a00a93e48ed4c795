//! The hasher of the writer's maps keyed by trace id (the open traces, the time index's ids):
//! each span of a new trace looks its id up in both, and each trace is entered and taken out
//! of them, where SipHash (std's default) was about a thousand instructions a call. Trace ids
//! are random, so a keyed mix of their bytes spreads them as well. The key is drawn per map
//! from std's own random keys, so ids an app chose cannot be aimed at one bucket without it.

use std::hash::{BuildHasher, Hasher, RandomState};

/// splitmix64's finalizer: every bit of the result depends on every bit of `x`.
pub(super) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Builds [`IdHasher`]s with one random key.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdHash(u64);

impl Default for IdHash {
    fn default() -> Self {
        IdHash(RandomState::new().hash_one(0u64))
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.0)
    }
}

/// Mixes each eight bytes written into its state.
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = mix(self.0 ^ n);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_differ_in_any_byte_hash_apart_and_keys_differ() {
        let build = IdHash::default();
        let base = [7u8; 16];
        let h = build.hash_one(base);
        for at in 0..16 {
            let mut other = base;
            other[at] ^= 1;
            assert_ne!(build.hash_one(other), h, "byte {at}");
        }
        assert_eq!(build.hash_one(base), h);
        assert_ne!(IdHash::default().hash_one(base), h);
    }
}
