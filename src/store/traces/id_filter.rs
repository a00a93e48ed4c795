//! Which of the time index's chunks held in files may hold a trace id: a Bloom filter per
//! chunk, stored bit-sliced (for each of the filter's bit positions, one bit per chunk), so a
//! lookup reads [`PROBES`] rows of a few words and ANDs them, whatever the number of chunks.
//!
//! The writer asks for every span of a trace that is not open whether it was written before:
//! nearly always it was not, and the answer must be cheap. With [`BITS`] bits for a chunk of
//! up to 1,024 entries and 16 probes, a chunk that does not hold an id is named for it about
//! once in three million lookups: with 700 chunks (a full default store), one file read a few
//! thousand lookups. Memory: 4 bytes an entry of a full chunk, against 24 for a map of ids.

use super::id_hash::mix;

/// Bits of each chunk's filter (a power of two).
const BITS: usize = 1 << 15;
/// Bit positions an id sets in its chunk's filter.
const PROBES: usize = 16;

#[derive(Debug, Default)]
pub(super) struct IdFilter {
    /// `BITS` rows of `words` words each: row `p`, bit `s` is bit `p` of slot `s`'s filter.
    rows: Vec<u64>,
    words: usize,
    /// Slots given out and returned since.
    slots: usize,
    free: Vec<usize>,
}

/// The positions `id` sets: four 15-bit positions from each of four 64-bit hashes of it
/// (double hashing, cheaper, names a wrong chunk some thirty times as often with this many
/// probes in this few bits).
fn positions(id: &[u8; 16]) -> impl Iterator<Item = usize> {
    const _: () = assert!(BITS == 1 << 15 && PROBES == 16);
    let hi = u64::from_le_bytes(id[..8].try_into().expect("8 bytes"));
    let lo = u64::from_le_bytes(id[8..].try_into().expect("8 bytes"));
    let seed = mix(lo ^ mix(hi));
    (0..4u64).flat_map(move |round| {
        let h = mix(seed.wrapping_add(round.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        (0..4).map(move |i| ((h >> (i * 15)) as usize) & (BITS - 1))
    })
}

impl IdFilter {
    /// A new, empty slot.
    pub fn alloc(&mut self) -> usize {
        if let Some(slot) = self.free.pop() {
            return slot;
        }
        let slot = self.slots;
        self.slots += 1;
        if slot >= self.words * 64 {
            // One word more per row.
            let words = self.words + 1;
            let mut rows = vec![0u64; BITS * words];
            if self.words > 0 {
                for (new, old) in rows
                    .chunks_exact_mut(words)
                    .zip(self.rows.chunks_exact(self.words))
                {
                    new[..self.words].copy_from_slice(old);
                }
            }
            self.rows = rows;
            self.words = words;
        }
        slot
    }

    /// Empties `slot` and gives it back.
    pub fn free(&mut self, slot: usize) {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        for row in self.rows.chunks_exact_mut(self.words) {
            row[word] &= !bit;
        }
        self.free.push(slot);
    }

    pub fn add(&mut self, slot: usize, id: &[u8; 16]) {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        for p in positions(id) {
            self.rows[p * self.words + word] |= bit;
        }
    }

    /// The slots whose filter may hold `id` (without allocating: the writer asks for nearly
    /// every span).
    pub fn candidates(&self, id: &[u8; 16]) -> impl Iterator<Item = usize> + '_ {
        let mut at = [0usize; PROBES];
        for (a, p) in at.iter_mut().zip(positions(id)) {
            *a = p * self.words;
        }
        (0..self.words).flat_map(move |w| {
            let mut bits = at
                .iter()
                .fold(u64::MAX, |acc, &row| acc & self.rows[row + w]);
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let slot = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    slot
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[12..].copy_from_slice(&n.to_be_bytes());
        id
    }

    #[test]
    fn a_slot_names_what_was_added_to_it_and_rarely_anything_else() {
        let mut f = IdFilter::default();
        let slots: Vec<usize> = (0..130).map(|_| f.alloc()).collect();
        assert_eq!(slots, (0..130).collect::<Vec<_>>());
        for (s, &slot) in slots.iter().enumerate() {
            for n in 0..1024u32 {
                f.add(slot, &id(s as u32 * 1024 + n));
            }
        }
        for s in 0..130u32 {
            for n in [0, 511, 1023] {
                assert!(f.candidates(&id(s * 1024 + n)).any(|c| c == s as usize));
            }
        }
        // Ids never added: false candidates are rare (about 3 in 10^7 a slot).
        let false_hits: usize = (0..20_000u32)
            .map(|n| f.candidates(&id(1 << 30 | n)).count())
            .sum();
        assert!(false_hits <= 3, "{false_hits} false candidates");
        // A freed slot names nothing, and is given out again.
        f.free(65);
        assert!(!f.candidates(&id(65 * 1024)).any(|c| c == 65));
        assert_eq!(f.alloc(), 65);
        assert_eq!(f.candidates(&id(65 * 1024)).count(), 0);
    }
}
