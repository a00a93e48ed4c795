//! Span bodies, in append-only segment files.
//!
//! sled keeps its values inside its B-tree nodes, so every insert of a 1–3 KB span rewrote (and
//! on a cache miss first read back) a node full of other spans: that was most of the store's
//! CPU. Here the writer appends each batch of encoded spans to the current segment with one
//! write, and each trace's row keeps only a 16-byte [`Pointer`] per span.
//!
//! Segments are named `{id:010}.log` and never appended to after a restart (a new one is begun).
//! A batch is appended before any pointer to it is written, and a segment is synced when it is
//! closed and with each flush; after a power loss the rows may still keep pointers to bytes
//! that never reached the disk: such a span reads as missing and is left out of its trace.
//! Each segment's live spans are counted in memory (from the rows at open); eviction lowers
//! the count and deletes the file when it reaches zero, so disk space comes back a segment at a
//! time (traces arrive in time order, so the oldest segments empty first). A segment no row
//! points into and no crash replay reads is left over (its traces were evicted, or a crash
//! came between the append and the rows) and is deleted at open.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// Where one span's encoded bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pointer {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

impl Pointer {
    pub const LEN: usize = 16;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..4].copy_from_slice(&self.segment.to_be_bytes());
        b[4..12].copy_from_slice(&self.offset.to_be_bytes());
        b[12..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// A pointer, or `None` for a span stored inline by an earlier version (its JSON, which is
    /// never 16 bytes long).
    pub fn decode(value: &[u8]) -> Option<Pointer> {
        let b: &[u8; Self::LEN] = value.try_into().ok()?;
        Some(Pointer {
            segment: u32::from_be_bytes(b[..4].try_into().ok()?),
            offset: u64::from_be_bytes(b[4..12].try_into().ok()?),
            len: u32::from_be_bytes(b[12..].try_into().ok()?),
        })
    }
}

struct Current {
    id: u32,
    file: File,
    len: u64,
}

pub(super) struct SpanLog {
    dir: PathBuf,
    /// A segment past this size is closed and the next batch begins a new one.
    segment_bytes: u64,
    /// Only the writer thread appends; the lock is never contended.
    current: Mutex<Current>,
    /// Open segments for reading, shared by the API's readers.
    readers: Mutex<HashMap<u32, Arc<File>>>,
}

pub(super) fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.log"))
}

fn segment_id(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".log")?.parse().ok()
}

/// The segments in `dir`, in order.
pub(super) fn segment_ids(dir: &Path) -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        if let Some(id) = segment_id(&entry?.path()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

impl SpanLog {
    /// Opens `dir` (created if missing) and begins a new segment. Segments not in `live` (no
    /// live span points into them) are deleted.
    pub fn open(dir: &Path, segment_bytes: u64, live: &BTreeMap<u32, u64>) -> io::Result<SpanLog> {
        fs::create_dir_all(dir)?;
        let mut last = 0;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(id) = segment_id(&path) else {
                continue;
            };
            last = last.max(id);
            if !live.contains_key(&id) {
                fs::remove_file(&path)?;
            }
        }
        let id = last.max(live.keys().next_back().copied().unwrap_or(0)) + 1;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(dir, id))?;
        Ok(SpanLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            current: Mutex::new(Current { id, file, len: 0 }),
            readers: Mutex::new(HashMap::new()),
        })
    }

    /// Appends one batch of encoded spans with one write; returns its segment and offset.
    /// Begins a new segment first when the current one is full.
    pub fn append(&self, bytes: &[u8]) -> io::Result<(u32, u64)> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.len >= self.segment_bytes {
            // The closed segment is made durable now: `sync` only sees the current one.
            current.file.sync_data()?;
            let id = current.id + 1;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(segment_path(&self.dir, id))?;
            *current = Current { id, file, len: 0 };
        }
        // Where the file really ends (one fstat per batch): appends land there even if the
        // file was cut or a write failed half-way.
        let at = current.file.metadata()?.len();
        current.len = at;
        current.file.write_all(bytes)?;
        current.len = at + bytes.len() as u64;
        Ok((current.id, at))
    }

    /// Where the next append goes: the current segment and its length.
    pub fn end(&self) -> (u32, u64) {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        (current.id, current.len)
    }

    /// The segments from `first` on, in order: what a replay after a crash reads.
    pub fn segments_from(&self, first: u32) -> Vec<u32> {
        let mut ids = segment_ids(&self.dir).unwrap_or_default();
        ids.retain(|&id| id >= first);
        ids
    }

    /// A segment's bytes from `offset` on; `None` when it cannot be read.
    pub fn read_segment(&self, id: u32, offset: u64) -> Option<Vec<u8>> {
        let mut bytes = fs::read(segment_path(&self.dir, id)).ok()?;
        let from = usize::try_from(offset).ok()?.min(bytes.len());
        bytes.drain(..from);
        Some(bytes)
    }

    /// The segment being appended to (never deleted while current).
    pub fn current_segment(&self) -> u32 {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).id
    }

    /// Makes what was appended durable.
    pub fn sync(&self) -> io::Result<()> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .file
            .sync_data()
    }

    /// One span's bytes.
    pub fn read(&self, p: Pointer) -> io::Result<Vec<u8>> {
        let file = {
            let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
            match readers.get(&p.segment) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(File::open(segment_path(&self.dir, p.segment))?);
                    readers.insert(p.segment, f.clone());
                    f
                }
            }
        };
        let mut buf = vec![0u8; p.len as usize];
        file.read_exact_at(&mut buf, p.offset)?;
        Ok(buf)
    }

    /// Deletes a segment no live span points into (not the current one).
    pub fn remove(&self, id: u32) -> io::Result<()> {
        if id == self.current_segment() {
            return Ok(());
        }
        // Unlinked under the readers' lock, so no reader opens it again in between (a handle
        // kept open would keep the deleted file's space).
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        readers.remove(&id);
        match fs::remove_file(segment_path(&self.dir, id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_round_trip_and_inline_json_is_not_one() {
        let p = Pointer {
            segment: 7,
            offset: 1 << 40,
            len: 1500,
        };
        assert_eq!(Pointer::decode(&p.encode()), Some(p));
        assert_eq!(Pointer::decode(br#"{"span":{"trace_id":[1]}}"#), None);
    }

    #[test]
    fn batches_are_read_back_and_segments_roll_over_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let log = SpanLog::open(dir.path(), 10, &BTreeMap::new()).unwrap();
        let (s1, o1) = log.append(b"hello world").unwrap();
        let (s2, o2) = log.append(b"second").unwrap();
        assert_eq!((o1, o2), (0, 0));
        assert_eq!(s2, s1 + 1, "a full segment is closed");
        let read = |segment, offset, len| {
            log.read(Pointer {
                segment,
                offset,
                len,
            })
        };
        assert_eq!(read(s1, 6, 5).unwrap(), b"world");
        assert_eq!(read(s2, 0, 6).unwrap(), b"second");
        assert!(read(s2, 4, 6).is_err(), "past the end is an error");
        log.remove(s1).unwrap();
        assert!(read(s1, 0, 5).is_err());
        log.remove(s2).unwrap();
        assert_eq!(read(s2, 0, 6).unwrap(), b"second", "the current one stays");
    }

    #[test]
    fn a_reopened_log_begins_a_new_segment_and_drops_dead_ones() {
        let dir = tempfile::tempdir().unwrap();
        let log = SpanLog::open(dir.path(), 1 << 20, &BTreeMap::new()).unwrap();
        let (live, _) = log.append(b"kept").unwrap();
        drop(log);
        fs::write(segment_path(dir.path(), 99), b"orphan").unwrap();
        let log = SpanLog::open(dir.path(), 1 << 20, &BTreeMap::from([(live, 1)])).unwrap();
        assert!(log.current_segment() > 99);
        assert!(
            !segment_path(dir.path(), 99).exists(),
            "no live span: deleted"
        );
        assert_eq!(
            log.read(Pointer {
                segment: live,
                offset: 0,
                len: 4
            })
            .unwrap(),
            b"kept"
        );
    }
}
