//! The rows' time index in memory: row keys in order, each with where its row is and what
//! the lists filter by.
//!
//! Keys arrive almost in order (a trace's row is written seconds after it starts), and a
//! `BTreeMap` fed keys in order leaves every node it splits half full: about 85 bytes an entry
//! for 40 bytes of data. Here the entries sit in sorted chunks of at most [`CHUNK`]; an entry
//! past the end of a full last chunk begins a new chunk (so appends fill chunks whole), an
//! insert near the end of the full last chunk splits it where it goes (the left part stays
//! nearly full), and one elsewhere splits the chunk in half. Close to the entries' own size
//! (48 bytes with the rows' entries); a lookup is two binary searches, an insert moves at most
//! one chunk.

use std::ops::RangeInclusive;

use super::rows::Key;

/// Entries per chunk at most.
const CHUNK: usize = 1024;

#[derive(Debug)]
pub(super) struct TimeIndex<V> {
    /// Sorted, none empty, each chunk's keys below the next chunk's.
    chunks: Vec<Vec<(Key, V)>>,
}

impl<V> Default for TimeIndex<V> {
    fn default() -> Self {
        TimeIndex { chunks: Vec::new() }
    }
}

impl<V: Copy> TimeIndex<V> {
    /// The chunk that holds `key` or the first key after it (`chunks.len()` when none does).
    fn chunk_of(&self, key: &Key) -> usize {
        self.chunks
            .partition_point(|c| c.last().is_some_and(|(k, _)| k < key))
    }

    pub fn get(&self, key: &Key) -> Option<V> {
        let chunk = self.chunks.get(self.chunk_of(key))?;
        let at = chunk.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        Some(chunk[at].1)
    }

    /// Puts `p` under `key`; returns what was there.
    pub fn insert(&mut self, key: Key, p: V) -> Option<V> {
        if self.chunks.is_empty() {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let mut c = self.chunk_of(&key).min(self.chunks.len() - 1);
        let mut at = match self.chunks[c].binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(at) => return Some(std::mem::replace(&mut self.chunks[c][at].1, p)),
            Err(at) => at,
        };
        if self.chunks[c].len() >= CHUNK {
            if c == self.chunks.len() - 1 && at == CHUNK {
                self.chunks.push(Vec::with_capacity(CHUNK));
                c += 1;
                at = 0;
            } else {
                // Rows come a little out of order near the end: there, split where the entry
                // goes, so the chunk left behind stays full.
                let split = if c == self.chunks.len() - 1 {
                    at.max(CHUNK / 2)
                } else {
                    CHUNK / 2
                };
                let tail = self.chunks[c].split_off(split);
                self.chunks.insert(c + 1, tail);
                if at >= split && split > 0 {
                    c += 1;
                    at -= split;
                }
            }
        }
        self.chunks[c].insert(at, (key, p));
        None
    }

    /// Takes `key` out; returns where its row was.
    pub fn remove(&mut self, key: &Key) -> Option<V> {
        let c = self.chunk_of(key);
        let chunk = self.chunks.get_mut(c)?;
        let at = chunk.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        let (_, p) = chunk.remove(at);
        if chunk.is_empty() {
            self.chunks.remove(c);
        }
        Some(p)
    }

    pub fn first_key(&self) -> Option<Key> {
        self.chunks.first()?.first().map(|(k, _)| *k)
    }

    /// Every entry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &(Key, V)> {
        self.chunks.iter().flatten()
    }

    /// Whether any key is in `range`.
    pub fn any_in(&self, range: RangeInclusive<Key>) -> bool {
        let Some(chunk) = self.chunks.get(self.chunk_of(range.start())) else {
            return false;
        };
        chunk
            .get(chunk.partition_point(|(k, _)| k < range.start()))
            .is_some_and(|(k, _)| k <= range.end())
    }

    /// At most `n` entries with keys in `low..high` that `keep` takes, newest first.
    pub fn newest_before(
        &self,
        low: &Key,
        high: &Key,
        n: usize,
        keep: impl Fn(&V) -> bool,
    ) -> Vec<(Key, V)> {
        let mut out = Vec::new();
        let mut c = self.chunk_of(high);
        // Entries before (c, at) are below `high`.
        let mut at = self
            .chunks
            .get(c)
            .map_or(0, |chunk| chunk.partition_point(|(k, _)| k < high));
        while out.len() < n {
            if at == 0 {
                if c == 0 {
                    break;
                }
                c -= 1;
                at = self.chunks[c].len();
                continue;
            }
            at -= 1;
            let entry = self.chunks[c][at];
            if &entry.0 < low {
                break;
            }
            if keep(&entry.1) {
                out.push(entry);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::store::traces::log::Pointer;

    fn key(n: u16) -> Key {
        let mut k = [0u8; 24];
        k[6..8].copy_from_slice(&n.to_be_bytes());
        k
    }

    fn pointer(n: u32) -> Pointer {
        Pointer {
            segment: n,
            offset: u64::from(n),
            len: n,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        /// Inserts the next `n` keys after the largest, as rows usually come.
        Append(u16),
        Remove(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4000u16, any::<u32>()).prop_map(|(k, p)| Op::Insert(k, p)),
            (1..3000u16).prop_map(Op::Append),
            (0..4000u16).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Every operation and every query answers as a BTreeMap would.
        #[test]
        fn answers_as_a_btreemap_does(ops in proptest::collection::vec(op(), 1..40), low in 0..5000u16, high in 0..5000u16, n in 0..3000usize) {
            let mut index = TimeIndex::<Pointer>::default();
            let mut model = BTreeMap::new();
            let mut next = 4000u16;
            for op in ops {
                match op {
                    Op::Insert(k, p) => prop_assert_eq!(index.insert(key(k), pointer(p)), model.insert(key(k), pointer(p))),
                    Op::Append(count) => {
                        for _ in 0..count {
                            next = next.saturating_add(1);
                            prop_assert_eq!(index.insert(key(next), pointer(1)), model.insert(key(next), pointer(1)));
                        }
                    }
                    Op::Remove(k) => prop_assert_eq!(index.remove(&key(k)), model.remove(&key(k))),
                }
                prop_assert!(index.chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK));
            }
            let all: Vec<_> = index.iter().copied().collect();
            prop_assert_eq!(&all, &model.iter().map(|(k, p)| (*k, *p)).collect::<Vec<_>>());
            prop_assert_eq!(index.first_key(), model.keys().next().copied());
            for k in [low, high] {
                prop_assert_eq!(index.get(&key(k)), model.get(&key(k)).copied());
            }
            let (low, high) = (key(low), key(high));
            let expected: Vec<_> = if low < high {
                model.range(low..high).rev().take(n).map(|(k, p)| (*k, *p)).collect()
            } else {
                Vec::new()
            };
            prop_assert_eq!(index.newest_before(&low, &high, n, |_| true), expected);
            let even = |p: &Pointer| p.segment.is_multiple_of(2);
            let expected: Vec<_> = if low < high {
                model.range(low..high).rev().filter(|(_, p)| even(p)).take(n).map(|(k, p)| (*k, *p)).collect()
            } else {
                Vec::new()
            };
            prop_assert_eq!(index.newest_before(&low, &high, n, even), expected);
            if low <= high {
                prop_assert_eq!(index.any_in(low..=high), model.range(low..=high).next().is_some());
            }
        }
    }

    #[test]
    fn rows_a_little_out_of_order_leave_chunks_nearly_full() {
        let mut index = TimeIndex::<Pointer>::default();
        for n in (0..(4 * CHUNK as u16)).step_by(2) {
            index.insert(key(n + 1), pointer(1));
            index.insert(key(n), pointer(1));
        }
        let entries: usize = index.chunks.iter().map(Vec::len).sum();
        assert_eq!(entries, 4 * CHUNK);
        assert!(index.chunks.len() <= 5, "{} chunks", index.chunks.len());
    }

    #[test]
    fn appends_fill_chunks_whole() {
        let mut index = TimeIndex::<Pointer>::default();
        for n in 0..(3 * CHUNK as u16) {
            index.insert(key(n), pointer(1));
        }
        assert_eq!(index.chunks.len(), 3);
        assert!(index.chunks.iter().all(|c| c.len() == CHUNK));
    }
}
