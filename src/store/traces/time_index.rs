//! The rows' time index: row keys in order, each with where its row is and what the lists
//! filter by. Only its newest entries are in memory; the rest wait in files.
//!
//! Keys arrive almost in order (a trace's row is written seconds after it starts), and a
//! `BTreeMap` fed keys in order leaves every node it splits half full: about 85 bytes an entry
//! for 40 bytes of data. Here the entries sit in sorted chunks of at most [`CHUNK`]; an entry
//! past the end of a full last chunk begins a new chunk (so appends fill chunks whole), an
//! insert near the end of the full last chunk splits it where it goes (the left part stays
//! nearly full), and one elsewhere splits the chunk in half. A lookup is two binary searches,
//! an insert moves at most one chunk.
//!
//! Held in memory, the entries of a full store (about 700,000 traces in the default 1 GiB)
//! took about 34 MB, most of the gateway's memory. So an index opened with a directory spills
//! its chunks there, each to a file of its own ([`TimeIndex::settle`]), all but the first (where
//! eviction takes from) and the last [`HOT_TAIL`] (where new rows go): what stays in memory is
//! a few thousand entries and, per chunk in a file, its first and last key. Reading a chunk in
//! a file reads the file (48 KiB, from the page cache when it is warm); changing one brings it
//! back into memory until the next settle. The files are a cache of what the row files hold:
//! the directory is emptied at open and the index rebuilt from the rows.

use std::{
    borrow::Cow,
    collections::HashMap,
    fs, io,
    ops::ControlFlow,
    path::{Path, PathBuf},
};

use super::{id_filter::IdFilter, id_hash::IdHash, rows::Key};

/// Entries per chunk at most.
const CHUNK: usize = 1024;
/// Chunks at the end that stay in memory.
pub(super) const HOT_TAIL: usize = 4;

/// Entries newest first, and the key to go on below when the walk stopped at its budget.
pub(super) type Walk<V> = (Vec<(Key, V)>, Option<Key>);

/// A value the index keeps, written to a chunk's file in a fixed number of bytes.
pub(super) trait Fixed: Copy {
    const SIZE: usize;
    fn put(&self, out: &mut Vec<u8>);
    /// From exactly `SIZE` bytes.
    fn get(bytes: &[u8]) -> Self;
}

/// A chunk's entries: in memory, or in a file of the spill directory.
#[derive(Debug)]
enum Chunk<V> {
    Hot(Vec<(Key, V)>),
    Cold {
        first: Key,
        last: Key,
        len: usize,
        file: u64,
        /// Its filter's slot in [`IdFilter`].
        slot: usize,
    },
}

fn id_of(key: &Key) -> [u8; 16] {
    key[8..].try_into().expect("16 bytes")
}

fn start_of(key: &Key) -> u64 {
    u64::from_be_bytes(key[..8].try_into().expect("8 bytes"))
}

fn key_of(start: u64, id: &[u8; 16]) -> Key {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&start.to_be_bytes());
    key[8..].copy_from_slice(id);
    key
}

impl<V> Chunk<V> {
    fn first(&self) -> Option<&Key> {
        match self {
            Chunk::Hot(entries) => entries.first().map(|(k, _)| k),
            Chunk::Cold { first, .. } => Some(first),
        }
    }

    fn last(&self) -> Option<&Key> {
        match self {
            Chunk::Hot(entries) => entries.last().map(|(k, _)| k),
            Chunk::Cold { last, .. } => Some(last),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        match self {
            Chunk::Hot(entries) => entries.len(),
            Chunk::Cold { len, .. } => *len,
        }
    }
}

/// Where chunks spill: a directory of `<n>.chunk` files.
#[derive(Debug)]
struct Spill {
    dir: PathBuf,
    next: u64,
}

impl Spill {
    fn path(&self, file: u64) -> PathBuf {
        self.dir.join(format!("{file}.chunk"))
    }
}

#[derive(Debug)]
pub(super) struct TimeIndex<V> {
    /// Sorted, none empty, each chunk's keys below the next chunk's.
    chunks: Vec<Chunk<V>>,
    /// `None`: every chunk stays in memory.
    spill: Option<Spill>,
    /// The trace id of each key in a chunk in memory, to its start (a key per id: a trace has
    /// one row).
    ids: HashMap<[u8; 16], u64, IdHash>,
    /// The trace ids of the chunks in files.
    filter: IdFilter,
}

impl<V> Default for TimeIndex<V> {
    fn default() -> Self {
        TimeIndex {
            chunks: Vec::new(),
            spill: None,
            ids: HashMap::default(),
            filter: IdFilter::default(),
        }
    }
}

impl<V: Fixed> TimeIndex<V> {
    /// An empty index that spills to `dir` (emptied: what it held is stale).
    pub fn spilling(dir: &Path) -> io::Result<Self> {
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs::create_dir_all(dir)?;
        Ok(TimeIndex {
            spill: Some(Spill {
                dir: dir.to_path_buf(),
                next: 0,
            }),
            ..TimeIndex::default()
        })
    }

    /// The chunk that holds `key` or the first key after it (`chunks.len()` when none does).
    fn chunk_of(&self, key: &Key) -> usize {
        self.chunks
            .partition_point(|c| c.last().is_some_and(|k| k < key))
    }

    /// Chunk `c`'s entries, read from its file when it is in one.
    fn entries(&self, c: usize) -> io::Result<Cow<'_, [(Key, V)]>> {
        match &self.chunks[c] {
            Chunk::Hot(entries) => Ok(Cow::Borrowed(entries)),
            Chunk::Cold { len, file, .. } => {
                let spill = self
                    .spill
                    .as_ref()
                    .expect("a chunk in a file has a directory");
                let path = spill.path(*file);
                let bytes = fs::read(&path)?;
                let size = 24 + V::SIZE;
                if bytes.len() != len * size {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "time index chunk {} holds {} bytes, not {} ({len} entries)",
                            path.display(),
                            bytes.len(),
                            len * size
                        ),
                    ));
                }
                Ok(Cow::Owned(
                    bytes
                        .chunks_exact(size)
                        .map(|e| {
                            let key: Key = e[..24].try_into().expect("24 bytes");
                            (key, V::get(&e[24..]))
                        })
                        .collect(),
                ))
            }
        }
    }

    /// Chunk `c`'s entries in memory, to change: read back from its file (which goes) if
    /// it is in one.
    fn hot(&mut self, c: usize) -> io::Result<&mut Vec<(Key, V)>> {
        if let Chunk::Cold { .. } = self.chunks[c] {
            let entries = self.entries(c)?.into_owned();
            self.bring_back(c, entries)?;
        }
        match &mut self.chunks[c] {
            Chunk::Hot(entries) => Ok(entries),
            Chunk::Cold { .. } => unreachable!("made hot above"),
        }
    }

    /// Puts cold chunk `c`'s `entries`, read from its file, back in memory; the file goes.
    fn bring_back(&mut self, c: usize, entries: Vec<(Key, V)>) -> io::Result<()> {
        let Chunk::Cold { file, slot, .. } = self.chunks[c] else {
            return Ok(());
        };
        let spill = self
            .spill
            .as_ref()
            .expect("a chunk in a file has a directory");
        fs::remove_file(spill.path(file))?;
        self.filter.free(slot);
        for (k, _) in &entries {
            // Should the id have another key in memory, that one stays (a trace has one row).
            self.ids.entry(id_of(k)).or_insert(start_of(k));
        }
        self.chunks[c] = Chunk::Hot(entries);
        Ok(())
    }

    pub fn get(&self, key: &Key) -> io::Result<Option<V>> {
        let c = self.chunk_of(key);
        if c == self.chunks.len() || self.chunks[c].first().is_none_or(|first| key < first) {
            return Ok(None);
        }
        let entries = self.entries(c)?;
        Ok(entries
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|at| entries[at].1))
    }

    /// Puts `p` under `key`; returns what was there.
    pub fn insert(&mut self, key: Key, p: V) -> io::Result<Option<V>> {
        if self.chunks.is_empty() {
            self.chunks.push(Chunk::Hot(Vec::with_capacity(CHUNK)));
        }
        let last = self.chunks.len() - 1;
        let mut c = self.chunk_of(&key).min(last);
        let chunk = self.hot(c)?;
        let mut at = match chunk.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(at) => return Ok(Some(std::mem::replace(&mut chunk[at].1, p))),
            Err(at) => at,
        };
        if chunk.len() >= CHUNK {
            if c == last && at == CHUNK {
                self.chunks.push(Chunk::Hot(Vec::with_capacity(CHUNK)));
                c += 1;
                at = 0;
            } else {
                // Rows come a little out of order near the end: there, split where the entry
                // goes, so the chunk left behind stays full.
                let split = if c == last {
                    at.max(CHUNK / 2)
                } else {
                    CHUNK / 2
                };
                let tail = chunk.split_off(split);
                self.chunks.insert(c + 1, Chunk::Hot(tail));
                if at >= split && split > 0 {
                    c += 1;
                    at -= split;
                }
            }
        }
        self.hot(c)?.insert(at, (key, p));
        self.ids.insert(id_of(&key), start_of(&key));
        Ok(None)
    }

    /// Takes `key` out; returns where its row was.
    pub fn remove(&mut self, key: &Key) -> io::Result<Option<V>> {
        let c = self.chunk_of(key);
        if c == self.chunks.len() || self.chunks[c].first().is_none_or(|first| key < first) {
            return Ok(None);
        }
        // A chunk in a file is read once: left there when it does not hold the key.
        let entries = self.entries(c)?;
        let Ok(at) = entries.binary_search_by(|(k, _)| k.cmp(key)) else {
            return Ok(None);
        };
        if let Cow::Owned(entries) = entries {
            self.bring_back(c, entries)?;
        }
        let chunk = self.hot(c)?;
        let (_, p) = chunk.remove(at);
        if chunk.is_empty() {
            self.chunks.remove(c);
        }
        let id = id_of(key);
        if self.ids.get(&id) == Some(&start_of(key)) {
            self.ids.remove(&id);
        }
        Ok(Some(p))
    }

    /// The key of trace `id`'s entry, if it has one.
    pub fn find(&self, id: &[u8; 16]) -> io::Result<Option<Key>> {
        if let Some(&start) = self.ids.get(id) {
            return Ok(Some(key_of(start, id)));
        }
        for slot in self.filter.candidates(id) {
            let Some(c) = self
                .chunks
                .iter()
                .position(|chunk| matches!(chunk, Chunk::Cold { slot: s, .. } if *s == slot))
            else {
                continue;
            };
            if let Some((k, _)) = self.entries(c)?.iter().find(|(k, _)| k[8..] == id[..]) {
                return Ok(Some(*k));
            }
        }
        Ok(None)
    }

    pub fn first_key(&self) -> Option<Key> {
        self.chunks.first()?.first().copied()
    }

    /// Calls `f` with every entry, oldest first, until it breaks.
    pub fn for_each(&self, mut f: impl FnMut(&Key, &V) -> ControlFlow<()>) -> io::Result<()> {
        for c in 0..self.chunks.len() {
            for (k, v) in self.entries(c)?.iter() {
                if f(k, v).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// At most `n` entries with keys in `low..high` that `keep` takes, newest first, reading
    /// at most `files` chunks from their files. Past that budget, it stops with what it has
    /// and the key to go on below (`Some`): every entry from it up to `high` was looked at. A
    /// caller holding a lock over the index lets the writer in between calls.
    pub fn newest_before(
        &self,
        low: &Key,
        high: &Key,
        n: usize,
        files: usize,
        keep: impl Fn(&V) -> bool,
    ) -> io::Result<Walk<V>> {
        let mut out = Vec::new();
        let mut read = 0;
        // Every entry in `looked_below..high` was looked at.
        let mut looked_below = *high;
        // Chunks before `end` hold keys below `high`, and some of chunk `end` may.
        let end = self.chunk_of(high).min(self.chunks.len().saturating_sub(1));
        for c in (0..=end).rev() {
            if out.len() >= n || c >= self.chunks.len() {
                break;
            }
            if self.chunks[c].last().is_some_and(|k| k < low) {
                break;
            }
            if self.chunks[c].first().is_some_and(|k| k >= high) {
                continue;
            }
            if matches!(self.chunks[c], Chunk::Cold { .. }) {
                if read == files {
                    return Ok((out, Some(looked_below)));
                }
                read += 1;
            }
            let entries = self.entries(c)?;
            let below = entries.partition_point(|(k, _)| k < high);
            for entry in entries[..below].iter().rev() {
                if &entry.0 < low || out.len() >= n {
                    break;
                }
                if keep(&entry.1) {
                    out.push(*entry);
                }
            }
            if let Some(&(first, _)) = entries.first() {
                looked_below = looked_below.min(first);
            }
        }
        Ok((out, None))
    }

    /// At most `n` entries with keys from `from` on that `keep` takes, oldest first, reading
    /// at most `files` chunks from their files. Past that budget, it stops with what it has
    /// and the key to go on from (`Some`): every entry from `from` up to it was looked at.
    pub fn oldest_from(
        &self,
        from: &Key,
        n: usize,
        files: usize,
        keep: impl Fn(&V) -> bool,
    ) -> io::Result<Walk<V>> {
        let mut out = Vec::new();
        let mut read = 0;
        for c in self.chunk_of(from)..self.chunks.len() {
            if out.len() >= n {
                break;
            }
            if let Chunk::Cold { first, .. } = self.chunks[c] {
                if read == files {
                    return Ok((out, Some(first.max(*from))));
                }
                read += 1;
            }
            let entries = self.entries(c)?;
            let start = entries.partition_point(|(k, _)| k < from);
            for entry in &entries[start..] {
                if out.len() >= n {
                    break;
                }
                if keep(&entry.1) {
                    out.push(*entry);
                }
            }
        }
        Ok((out, None))
    }

    /// Writes every chunk in memory but the first and the last [`HOT_TAIL`] to a file of its
    /// own (a no-op without a directory). What fails to be written stays in memory.
    pub fn settle(&mut self) -> io::Result<()> {
        let Some(spill) = &mut self.spill else {
            return Ok(());
        };
        let end = self.chunks.len().saturating_sub(HOT_TAIL);
        let mut buf = Vec::new();
        for chunk in self.chunks.iter_mut().take(end).skip(1) {
            let Chunk::Hot(entries) = chunk else { continue };
            let (Some(&(first, _)), Some(&(last, _))) = (entries.first(), entries.last()) else {
                continue;
            };
            buf.clear();
            for (k, v) in entries.iter() {
                buf.extend_from_slice(k);
                v.put(&mut buf);
            }
            let file = spill.next;
            fs::write(spill.path(file), &buf)?;
            spill.next += 1;
            let slot = self.filter.alloc();
            for (k, _) in entries.iter() {
                let id = id_of(k);
                self.filter.add(slot, &id);
                if self.ids.get(&id) == Some(&start_of(k)) {
                    self.ids.remove(&id);
                }
            }
            *chunk = Chunk::Cold {
                first,
                last,
                len: entries.len(),
                file,
                slot,
            };
        }
        self.ids.shrink_to(self.ids.len() * 2);
        Ok(())
    }

    /// Entries held in memory (for tests).
    #[cfg(test)]
    fn in_memory(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| match c {
                Chunk::Hot(e) => e.len(),
                Chunk::Cold { .. } => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::store::traces::log::Pointer;

    impl Fixed for Pointer {
        const SIZE: usize = Pointer::LEN;

        fn put(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.encode());
        }

        fn get(bytes: &[u8]) -> Self {
            Pointer::decode(bytes).expect("16 bytes")
        }
    }

    /// Key `n`: start `n`, and a trace id of its own.
    fn key(n: u16) -> Key {
        let mut k = [0u8; 24];
        k[6..8].copy_from_slice(&n.to_be_bytes());
        k[22..].copy_from_slice(&n.to_be_bytes());
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

    fn all(index: &TimeIndex<Pointer>) -> Vec<(Key, Pointer)> {
        let mut out = Vec::new();
        index
            .for_each(|k, p| {
                out.push((*k, *p));
                ControlFlow::Continue(())
            })
            .unwrap();
        out
    }

    /// [`TimeIndex::oldest_from`] called again from where it stopped, `files` at a time.
    fn oldest(
        index: &TimeIndex<Pointer>,
        n: usize,
        files: usize,
        keep: impl Fn(&Pointer) -> bool,
    ) -> Vec<(Key, Pointer)> {
        let mut out = Vec::new();
        let mut from = [0u8; 24];
        while out.len() < n {
            let (page, resume) = index
                .oldest_from(&from, n - out.len(), files, &keep)
                .unwrap();
            out.extend(page);
            match resume {
                Some(next) => {
                    assert!(next > from || out.is_empty() && next >= from, "no progress");
                    from = next;
                }
                None => break,
            }
        }
        out
    }

    /// [`TimeIndex::newest_before`] called again from where it stopped, `files` at a time.
    fn newest(
        index: &TimeIndex<Pointer>,
        low: &Key,
        high: &Key,
        n: usize,
        files: usize,
        keep: impl Fn(&Pointer) -> bool,
    ) -> Vec<(Key, Pointer)> {
        let mut out = Vec::new();
        let mut high = *high;
        loop {
            let (page, resume) = index
                .newest_before(low, &high, n - out.len(), files, &keep)
                .unwrap();
            out.extend(page);
            match resume {
                Some(below) if out.len() < n => {
                    assert!(below < high, "no progress");
                    high = below;
                }
                _ => return out,
            }
        }
    }

    proptest! {
        /// Every operation and every query answers as a BTreeMap would, with the chunks in
        /// memory and with them spilled to files after each operation.
        #[test]
        fn answers_as_a_btreemap_does(ops in proptest::collection::vec(op(), 1..40), low in 0..5000u16, high in 0..5000u16, n in 0..3000usize, spilled in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let mut index = if spilled {
                TimeIndex::<Pointer>::spilling(&dir.path().join("index")).unwrap()
            } else {
                TimeIndex::<Pointer>::default()
            };
            let mut model = BTreeMap::new();
            let mut next = 4000u16;
            for op in ops {
                match op {
                    Op::Insert(k, p) => prop_assert_eq!(index.insert(key(k), pointer(p)).unwrap(), model.insert(key(k), pointer(p))),
                    Op::Append(count) => {
                        for _ in 0..count {
                            next = next.saturating_add(1);
                            prop_assert_eq!(index.insert(key(next), pointer(1)).unwrap(), model.insert(key(next), pointer(1)));
                        }
                    }
                    Op::Remove(k) => prop_assert_eq!(index.remove(&key(k)).unwrap(), model.remove(&key(k))),
                }
                index.settle().unwrap();
                prop_assert!(index.chunks.iter().all(|c| c.len() > 0 && c.len() <= CHUNK));
                prop_assert!(!spilled || index.in_memory() <= (1 + HOT_TAIL) * CHUNK);
            }
            prop_assert_eq!(&all(&index), &model.iter().map(|(k, p)| (*k, *p)).collect::<Vec<_>>());
            prop_assert_eq!(index.first_key(), model.keys().next().copied());
            for k in [low, high] {
                prop_assert_eq!(index.get(&key(k)).unwrap(), model.get(&key(k)).copied());
                let id = id_of(&key(k));
                prop_assert_eq!(index.find(&id).unwrap(), model.contains_key(&key(k)).then_some(key(k)));
            }
            for k in model.keys().step_by(97) {
                prop_assert_eq!(index.find(&id_of(k)).unwrap(), Some(*k));
            }
            let (low, high) = (key(low), key(high));
            let expected: Vec<_> = if low < high {
                model.range(low..high).rev().take(n).map(|(k, p)| (*k, *p)).collect()
            } else {
                Vec::new()
            };
            prop_assert_eq!(index.newest_before(&low, &high, n, usize::MAX, |_| true).unwrap(), (expected.clone(), None));
            prop_assert_eq!(newest(&index, &low, &high, n, 1, |_| true), expected);
            let even = |p: &Pointer| p.segment.is_multiple_of(2);
            let expected: Vec<_> = if low < high {
                model.range(low..high).rev().filter(|(_, p)| even(p)).take(n).map(|(k, p)| (*k, *p)).collect()
            } else {
                Vec::new()
            };
            prop_assert_eq!(index.newest_before(&low, &high, n, usize::MAX, even).unwrap(), (expected.clone(), None));
            prop_assert_eq!(newest(&index, &low, &high, n, 1, even), expected);
            let expected: Vec<_> = model.iter().filter(|(_, p)| even(p)).take(n).map(|(k, p)| (*k, *p)).collect();
            prop_assert_eq!(oldest(&index, n, 1, even), expected.clone());
            prop_assert_eq!(oldest(&index, n, usize::MAX, even), expected);
        }
    }

    #[test]
    fn rows_a_little_out_of_order_leave_chunks_nearly_full() {
        let mut index = TimeIndex::<Pointer>::default();
        for n in (0..(4 * CHUNK as u16)).step_by(2) {
            index.insert(key(n + 1), pointer(1)).unwrap();
            index.insert(key(n), pointer(1)).unwrap();
        }
        let entries: usize = index.chunks.iter().map(Chunk::len).sum();
        assert_eq!(entries, 4 * CHUNK);
        assert!(index.chunks.len() <= 5, "{} chunks", index.chunks.len());
    }

    #[test]
    fn appends_fill_chunks_whole() {
        let mut index = TimeIndex::<Pointer>::default();
        for n in 0..(3 * CHUNK as u16) {
            index.insert(key(n), pointer(1)).unwrap();
        }
        assert_eq!(index.chunks.len(), 3);
        assert!(index.chunks.iter().all(|c| c.len() == CHUNK));
    }

    #[test]
    fn a_spilling_index_keeps_the_first_and_last_chunks_in_memory_and_the_rest_in_files() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("index");
        let mut index = TimeIndex::<Pointer>::spilling(&spill).unwrap();
        let chunks = 3 * HOT_TAIL as u16;
        for n in 0..(chunks * CHUNK as u16) {
            index.insert(key(n), pointer(u32::from(n))).unwrap();
        }
        index.settle().unwrap();
        assert_eq!(index.in_memory(), (1 + HOT_TAIL) * CHUNK);
        let files = fs::read_dir(&spill).unwrap().count();
        assert_eq!(files, usize::from(chunks) - 1 - HOT_TAIL);
        // A change to a chunk in a file brings it back until the next settle.
        let middle = (usize::from(chunks) / 2 * CHUNK) as u16;
        assert_eq!(
            index.remove(&key(middle)).unwrap(),
            Some(pointer(u32::from(middle)))
        );
        assert_eq!(fs::read_dir(&spill).unwrap().count(), files - 1);
        assert_eq!(
            index.get(&key(middle + 1)).unwrap(),
            Some(pointer(u32::from(middle) + 1))
        );
        index.settle().unwrap();
        assert_eq!(fs::read_dir(&spill).unwrap().count(), files);
        assert_eq!(index.in_memory(), (1 + HOT_TAIL) * CHUNK);
        // A walk reading one file at a time stops with what it has and where to go on.
        let (page, below) = index
            .newest_before(&key(0), &key(u16::MAX), usize::MAX, 1, |_| true)
            .unwrap();
        let below = below.expect("stopped at the second file");
        assert!(page.len() >= HOT_TAIL * CHUNK && page.iter().all(|(k, _)| *k >= below));
        let everything = newest(&index, &key(0), &key(u16::MAX), usize::MAX, 1, |_| true);
        assert_eq!(everything.len(), usize::from(chunks) * CHUNK - 1);
        // Opening the directory again empties it.
        drop(index);
        let again = TimeIndex::<Pointer>::spilling(&spill).unwrap();
        assert_eq!(fs::read_dir(&spill).unwrap().count(), 0);
        assert_eq!(again.first_key(), None);
    }

    #[test]
    fn a_chunk_file_cut_short_is_an_error_not_a_wrong_answer() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("index");
        let mut index = TimeIndex::<Pointer>::spilling(&spill).unwrap();
        for n in 0..((2 + HOT_TAIL) * CHUNK) as u16 {
            index.insert(key(n), pointer(1)).unwrap();
        }
        index.settle().unwrap();
        let file = fs::read_dir(&spill)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        fs::write(&file, b"short").unwrap();
        let e = index.get(&key(CHUNK as u16 + 5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("holds 5 bytes"), "{e}");
    }
}
