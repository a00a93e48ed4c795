//! The written traces' rows, in append-only segment files beside the span files, with their
//! time index (its newest entries in memory, the rest in files of its own).
//!
//! Each written trace has one row ([`super::open::TraceRow`]): its summary and where its spans
//! are. In sled a row cost about 15 µs of the writer's CPU and 230 bytes of memory (sled's page
//! table and node copies), more than the rest of the store together. Here a batch of rows is
//! appended with one write, and the index, start time + trace id -> where the row is (48
//! bytes a trace, `time_index.rs`: its newest entries in memory, the rest in files of its
//! own), is rebuilt at open by reading the files.
//!
//! A record is a CRC-32 of the rest (4 bytes), the body's length (4; `u32::MAX` for a removal),
//! the key (24) and the body. A row written again under its key supersedes the earlier one; a
//! removal (an evicted trace, or a row whose trace's start moved) is a record too, so the row
//! does not come back at open. A segment is deleted once it and every older segment hold no live
//! row: until then its removals may still be hiding rows in the older ones. Rows are written in
//! about the order their traces start and evicted oldest first, so segments empty in order.
//!
//! At open the segments are read in order; a record that is cut short or fails its CRC (a
//! power loss during an append) ends its segment's reading: what came before it is kept, the
//! rest is not read (logged) and, in the last segment, cut off; appends go to a new segment.
//! A segment is deleted only after the current one is synced, so a row replaced by a newer
//! copy is never lost to a power loss between the two.

use std::{
    collections::BTreeMap,
    fs, io,
    ops::ControlFlow,
    path::Path,
    sync::{Mutex, RwLock},
};

use super::{
    log::{Pointer, SpanLog, segment_ids, segment_path},
    tags::Tags,
    time_index::{Fixed, TimeIndex, Walk},
};

/// A row's key: the trace's start (unix nanos, big-endian) and its id.
pub(super) type Key = [u8; 24];

const HEADER: usize = 4 + 4 + 24;
/// Chunk files of the time index one page reads at most (8 x 48 KiB).
const FILES_PER_PAGE: usize = 8;
const REMOVED: u32 = u32::MAX;

/// One change to the rows: `Some((body, tags))` puts the row under the key, `None` removes it.
pub(super) type Change = (Key, Option<(Vec<u8>, Tags)>);

/// A live row in the index: where it is, and what lists filter it by. 24 bytes (48 with its
/// key): a row segment is at most 16 MiB and one append past it, so its offsets fit in 32
/// bits, where a span [`Pointer`]'s offset takes 64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Entry {
    segment: u32,
    offset: u32,
    len: u32,
    pub tags: Tags,
}

impl Entry {
    /// The entry of a row at `offset` in `segment`; an error past 4 GiB into a segment.
    fn at(segment: u32, offset: u64, len: u32, tags: Tags) -> io::Result<Entry> {
        let offset = u32::try_from(offset).map_err(|_| {
            io::Error::other(format!(
                "trace row segment {segment} holds a row at byte {offset}, past 4 GiB"
            ))
        })?;
        Ok(Entry {
            segment,
            offset,
            len,
            tags,
        })
    }

    pub fn pointer(&self) -> Pointer {
        Pointer {
            segment: self.segment,
            offset: u64::from(self.offset),
            len: self.len,
        }
    }
}

impl Fixed for Entry {
    const SIZE: usize = 24;

    fn put(&self, out: &mut Vec<u8>) {
        let Tags {
            feature,
            user,
            session,
        } = self.tags;
        for n in [self.segment, self.offset, self.len, feature, user, session] {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }

    fn get(bytes: &[u8]) -> Self {
        let n = |i: usize| u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        Entry {
            segment: n(0),
            offset: n(1),
            len: n(2),
            tags: Tags {
                feature: n(3),
                user: n(4),
                session: n(5),
            },
        }
    }
}

pub(super) struct Rows {
    log: SpanLog,
    /// Where each live row's body is, in key (time) order.
    index: RwLock<TimeIndex<Entry>>,
    /// Live rows per segment (every segment still on disk has an entry).
    live: Mutex<BTreeMap<u32, u64>>,
}

/// Reads one segment's records into the index. Past a damaged record it reads on from the
/// next whole record (found by its CRC), so damage in the middle of a file loses only the rows
/// it hit; the file is copied aside for inspection first (`<file>.corrupt-<unix time>`). A
/// damaged tail with no whole record after it (a crash during an append) ends the reading;
/// the last segment is cut there, an older one left as it is.
fn read_segment(
    dir: &Path,
    segment: u32,
    last: bool,
    index: &mut TimeIndex<Entry>,
    live: &mut BTreeMap<u32, u64>,
    tags_of: &mut impl FnMut(&[u8]) -> Tags,
) -> io::Result<()> {
    let path = segment_path(dir, segment);
    let bytes = fs::read(&path)?;
    live.entry(segment).or_default();
    let mut at = 0usize;
    let mut copied = false;
    while at < bytes.len() {
        let Some((key, body, next)) = record_at(&bytes, at) else {
            match resync(&bytes, at) {
                AfterDamage::Record(resume) => {
                    let copy = (!copied).then(|| copy_aside(&path)).flatten();
                    copied = true;
                    tracing::error!(
                        path = %path.display(),
                        offset = at,
                        damaged_bytes = resume - at,
                        copy = copy.as_ref().map(|p| p.display().to_string()),
                        "a trace row file is damaged in the middle: the rows in the damaged bytes are lost, the ones after them are read"
                    );
                    at = resume;
                    continue;
                }
                AfterDamage::Unknown => {
                    copy_aside(&path);
                    tracing::error!(
                        path = %path.display(),
                        offset = at,
                        ignored_bytes = bytes.len() - at,
                        "a trace row file is damaged and no whole record was found after the damage: the rest of it is not read"
                    );
                    break;
                }
                AfterDamage::Tail => {
                    tracing::warn!(
                        segment,
                        offset = at,
                        ignored_bytes = bytes.len() - at,
                        "a trace row record is cut short or damaged at the end of its file: the bytes after it are not read"
                    );
                    if last {
                        // A crash during the last append: what follows is garbage, and is cut.
                        fs::OpenOptions::new()
                            .write(true)
                            .open(&path)?
                            .set_len(at as u64)?;
                    }
                    break;
                }
            }
        };
        let put = body
            .map(|(offset, len)| {
                let tags = tags_of(&bytes[offset..offset + len as usize]);
                Entry::at(segment, offset as u64, len, tags)
            })
            .transpose()?;
        apply(index, live, key, put)?;
        at = next;
    }
    index.settle()
}

/// What follows a damaged record.
enum AfterDamage {
    /// The next whole record begins here.
    Record(usize),
    /// No whole record: a damaged tail (a crash during an append), which may be cut.
    Tail,
    /// The search gave up: the rest is not read, and not cut either.
    Unknown,
}

/// Where the next whole record after the damaged one at `at` begins: the first later offset
/// whose header's CRC matches what follows it. Each candidate costs a CRC of its length, so the
/// search gives up past 64 times the file's size in all: a damaged record is found again in far
/// less.
fn resync(bytes: &[u8], at: usize) -> AfterDamage {
    let mut budget = bytes.len().saturating_mul(64);
    for from in at + 1..bytes.len() {
        let checked = bytes
            .get(from + 4..from + HEADER)
            .map(|h| u32::from_be_bytes(h[..4].try_into().expect("4 bytes")))
            .map_or(0, |len| {
                if len == REMOVED {
                    28
                } else {
                    len as usize + 28
                }
            });
        let Some(left) = budget.checked_sub(checked.min(bytes.len())) else {
            return AfterDamage::Unknown;
        };
        budget = left;
        if record_at(bytes, from).is_some() {
            return AfterDamage::Record(from);
        }
    }
    AfterDamage::Tail
}

/// A copy of a damaged file beside it, `<file>.corrupt-<unix time>`, unless an earlier start
/// made one (the file is read past its damage at every start); `None` (logged) when it cannot
/// be made.
fn copy_aside(path: &Path) -> Option<std::path::PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.file_name()?.to_os_string();
    let earlier = format!("{}.corrupt-", name.to_string_lossy());
    if let Some(copy) = fs::read_dir(path.parent()?).ok()?.find_map(|e| {
        let e = e.ok()?;
        e.file_name()
            .to_string_lossy()
            .starts_with(&earlier)
            .then(|| e.path())
    }) {
        return Some(copy);
    }
    name.push(format!(".corrupt-{secs}"));
    let copy = path.with_file_name(name);
    match fs::copy(path, &copy) {
        Ok(_) => Some(copy),
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot copy a damaged trace row file aside");
            None
        }
    }
}

/// The record at `at`: its key, its body's offset and length (`None` for a removal), and where
/// the next record begins. `None` when it is cut short or its CRC does not match.
#[allow(clippy::type_complexity)]
fn record_at(bytes: &[u8], at: usize) -> Option<(Key, Option<(usize, u32)>, usize)> {
    let header = bytes.get(at..at + HEADER)?;
    let crc = u32::from_be_bytes(header[..4].try_into().ok()?);
    let len = u32::from_be_bytes(header[4..8].try_into().ok()?);
    let key: Key = header[8..].try_into().ok()?;
    let body_len = if len == REMOVED { 0 } else { len as usize };
    let end = (at + HEADER).checked_add(body_len)?;
    let checked = bytes.get(at + 4..end)?;
    if crc32fast::hash(checked) != crc {
        return None;
    }
    let body = (len != REMOVED).then_some((at + HEADER, len));
    Some((key, body, end))
}

/// Puts (`Some`) or removes (`None`) one row in the index, keeping the live counts.
fn apply(
    index: &mut TimeIndex<Entry>,
    live: &mut BTreeMap<u32, u64>,
    key: Key,
    put: Option<Entry>,
) -> io::Result<()> {
    let old = match put {
        Some(e) => {
            let old = index.insert(key, e)?;
            *live.entry(e.segment).or_default() += 1;
            old
        }
        None => index.remove(&key)?,
    };
    if let Some(old) = old
        && let Some(count) = live.get_mut(&old.segment)
    {
        *count = count.saturating_sub(1);
    }
    Ok(())
}

#[allow(clippy::type_complexity)]
fn encode(changes: &[Change], buf: &mut Vec<u8>) -> Vec<(Key, Option<(usize, u32, Tags)>)> {
    buf.clear();
    let mut placed = Vec::with_capacity(changes.len());
    for (key, body) in changes {
        let at = buf.len();
        let len = match body {
            Some((b, _)) => u32::try_from(b.len()).unwrap_or(REMOVED - 1),
            None => REMOVED,
        };
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(key);
        if let Some((b, _)) = body {
            buf.extend_from_slice(&b[..len as usize]);
        }
        let crc = crc32fast::hash(&buf[at + 4..]);
        buf[at..at + 4].copy_from_slice(&crc.to_be_bytes());
        placed.push((
            *key,
            body.as_ref().map(|(_, tags)| (at + HEADER, len, *tags)),
        ));
    }
    placed
}

impl Rows {
    /// Reads the rows in `dir` (created if missing), each row's tags by `tags_of`, and begins
    /// a new segment; segments older than the oldest live row are deleted. The time index
    /// spills to `dir/index`.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        mut tags_of: impl FnMut(&[u8]) -> Tags,
    ) -> io::Result<Rows> {
        fs::create_dir_all(dir)?;
        let mut index = TimeIndex::spilling(&dir.join("index"))?;
        let mut live = BTreeMap::new();
        let segments = segment_ids(dir)?;
        for (n, &segment) in segments.iter().enumerate() {
            let last = n + 1 == segments.len();
            read_segment(dir, segment, last, &mut index, &mut live, &mut tags_of)?;
        }
        // Keep every segment from the oldest one with a live row on.
        let first_live = live.iter().find(|&(_, &n)| n > 0).map(|(&s, _)| s);
        live.retain(|&s, _| first_live.is_some_and(|first| s >= first));
        let log = SpanLog::open(dir, segment_bytes, &live)?;
        live.entry(log.current_segment()).or_default();
        Ok(Rows {
            log,
            index: RwLock::new(index),
            live: Mutex::new(live),
        })
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, TimeIndex<Entry>> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The key of trace `id`'s row, if it has one.
    pub fn find(&self, id: &[u8; 16]) -> io::Result<Option<Key>> {
        self.index().find(id)
    }

    /// The oldest row's key.
    pub fn first_key(&self) -> Option<Key> {
        self.index().first_key()
    }

    /// Calls `f` with every row's key and entry, oldest first; stops at its first error.
    pub fn for_each(&self, mut f: impl FnMut(&Key, &Entry) -> io::Result<()>) -> io::Result<()> {
        let mut failed = Ok(());
        self.index().for_each(|k, e| match f(k, e) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Err(e);
                ControlFlow::Break(())
            }
        })?;
        failed
    }

    /// Every row's key, oldest first.
    #[cfg(test)]
    fn keys(&self) -> Vec<Key> {
        let mut keys = Vec::new();
        self.for_each(|k, _| {
            keys.push(*k);
            Ok(())
        })
        .unwrap();
        keys
    }

    /// At most `n` rows with keys in `low..high` whose tags `keep` takes, newest first: a page
    /// of the time index. It reads at most [`FILES_PER_PAGE`] of the index's chunk files with
    /// the index locked; past them it stops with what it has and the key to go on below
    /// (`Some`), so that a list matching few rows lets the writer in as it goes.
    pub fn newest_before(
        &self,
        low: &Key,
        high: &Key,
        n: usize,
        keep: impl Fn(&Tags) -> bool,
    ) -> io::Result<Walk<Pointer>> {
        if low >= high {
            return Ok((Vec::new(), None));
        }
        let (page, resume) = self
            .index()
            .newest_before(low, high, n, FILES_PER_PAGE, |e| keep(&e.tags))?;
        let page = page.into_iter().map(|(k, e)| (k, e.pointer())).collect();
        Ok((page, resume))
    }

    /// The keys of at most `n` rows whose tags `keep` takes, oldest first.
    /// Like [`Rows::newest_before`], it reads at most [`FILES_PER_PAGE`] chunk files with the
    /// index locked at a time.
    pub fn oldest(&self, n: usize, keep: impl Fn(&Tags) -> bool) -> io::Result<Vec<Key>> {
        let mut out = Vec::new();
        let mut from = [0u8; 24];
        while out.len() < n {
            let (page, resume) =
                self.index()
                    .oldest_from(&from, n - out.len(), FILES_PER_PAGE, |e| keep(&e.tags))?;
            out.extend(page.into_iter().map(|(k, _)| k));
            match resume {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(out)
    }

    /// The row under `key`, if any.
    pub fn get(&self, key: &Key) -> io::Result<Option<Vec<u8>>> {
        let Some(e) = self.index().get(key)? else {
            return Ok(None);
        };
        self.read(e.pointer())
    }

    /// A row's body; `None` when its file went meanwhile (the writer evicted the row after a
    /// reader found it in the index).
    pub fn read(&self, p: Pointer) -> io::Result<Option<Vec<u8>>> {
        match self.log.read(p) {
            Ok(row) => Ok(Some(row)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Appends `changes` with one write, then applies them to the index in order.
    pub fn write(&self, changes: &[Change], buf: &mut Vec<u8>) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let placed = encode(changes, buf);
        let (segment, base) = self.log.append(buf)?;
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.entry(segment).or_default();
        for (key, body) in placed {
            let put = body
                .map(|(at, len, tags)| Entry::at(segment, base + at as u64, len, tags))
                .transpose()?;
            apply(&mut index, &mut live, key, put)?;
        }
        index.settle()?;
        drop(index);
        // Segments empty in order; one with live rows keeps the newer ones (their removals).
        let current = self.log.current_segment();
        let mut synced = false;
        while let Some((&oldest, &count)) = live.first_key_value() {
            if count > 0 || oldest == current {
                break;
            }
            if !synced {
                // The rows that replaced the ones in it reach the disk before it goes: a power
                // loss must not find neither.
                self.log.sync()?;
                synced = true;
            }
            self.log.remove(oldest)?;
            live.pop_first();
        }
        Ok(())
    }

    /// Makes what was appended durable.
    pub fn sync(&self) -> io::Result<()> {
        self.log.sync()
    }

    /// How many segment files the rows take (for tests).
    #[cfg(test)]
    fn segments(&self) -> usize {
        self.live.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_entry_takes_48_bytes_with_its_key() {
        // The time index holds one per written trace: with a full store (1 GiB, about 700,000
        // traces) each byte here is 0.7 MB of the gateway's memory.
        assert_eq!(std::mem::size_of::<(Key, Entry)>(), 48);
    }

    #[test]
    fn a_row_past_4_gib_into_its_segment_is_an_error_not_a_wrong_pointer() {
        let tags = Tags::default();
        let e = Entry::at(3, u64::from(u32::MAX), 10, tags).unwrap();
        assert_eq!(
            e.pointer(),
            Pointer {
                segment: 3,
                offset: u64::from(u32::MAX),
                len: 10
            }
        );
        assert!(Entry::at(3, 1 << 32, 10, tags).is_err());
    }

    fn key(start: u64, id: u8) -> Key {
        let mut k = [0u8; 24];
        k[..8].copy_from_slice(&start.to_be_bytes());
        k[23] = id;
        k
    }

    fn put(k: Key, body: &str) -> Change {
        (k, Some((body.as_bytes().to_vec(), tags(body))))
    }

    /// Tags that tell bodies apart by their length.
    fn tags(body: &str) -> Tags {
        Tags {
            feature: body.len() as u32,
            ..Tags::default()
        }
    }

    fn open(dir: &Path, segment_bytes: u64) -> Rows {
        Rows::open(dir, segment_bytes, |b| {
            tags(std::str::from_utf8(b).unwrap())
        })
        .unwrap()
    }

    #[test]
    fn rows_are_put_replaced_removed_and_read_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        {
            let rows = open(dir.path(), 1 << 20);
            rows.write(
                &[
                    put(key(1, 1), "one"),
                    put(key(2, 2), "two"),
                    put(key(3, 3), "three"),
                ],
                &mut buf,
            )
            .unwrap();
            rows.write(&[put(key(2, 2), "two again"), (key(1, 1), None)], &mut buf)
                .unwrap();
            assert_eq!(rows.get(&key(2, 2)).unwrap().unwrap(), b"two again");
            assert_eq!(rows.get(&key(1, 1)).unwrap(), None);
        }
        let rows = open(dir.path(), 1 << 20);
        assert_eq!(rows.keys(), vec![key(2, 2), key(3, 3)]);
        assert_eq!(rows.get(&key(2, 2)).unwrap().unwrap(), b"two again");
        assert_eq!(rows.get(&key(3, 3)).unwrap().unwrap(), b"three");
        let page = rows
            .newest_before(&key(0, 0), &key(3, 3), 10, |_| true)
            .unwrap()
            .0;
        assert_eq!(
            page.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [key(2, 2)]
        );
        // The tags of each row, as written and as read back at open.
        let long = |t: &Tags| t.feature == "two again".len() as u32;
        let page = rows
            .newest_before(&key(0, 0), &[0xff; 24], 10, long)
            .unwrap()
            .0;
        assert_eq!(
            page.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [key(2, 2)]
        );
        assert_eq!(
            rows.find(&key(2, 2)[8..].try_into().unwrap()).unwrap(),
            Some(key(2, 2))
        );
        assert_eq!(
            rows.find(&key(1, 1)[8..].try_into().unwrap()).unwrap(),
            None
        );
        assert_eq!(rows.first_key(), Some(key(2, 2)));
    }

    /// Garbage in the middle of a row file (flipped bytes, a bad sector) loses the rows it hit,
    /// not the ones after it; the file is copied aside for inspection.
    #[test]
    fn damage_in_the_middle_of_a_row_file_loses_only_the_rows_it_hit() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        {
            let rows = open(dir.path(), 1 << 20);
            for i in 1..=5u8 {
                let body = format!("row number {i} of five");
                rows.write(&[put(key(u64::from(i), i), &body)], &mut buf)
                    .unwrap();
            }
        }
        let file = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&file).unwrap();
        // Inside the second record's body (each record: 32 bytes of header, 20 of body).
        let record = bytes.len() / 5;
        bytes[record + HEADER + 3..record + HEADER + 9].copy_from_slice(b"GARBAG");
        fs::write(&file, &bytes).unwrap();
        let rows = open(dir.path(), 1 << 20);
        assert_eq!(
            rows.keys(),
            vec![key(1, 1), key(3, 3), key(4, 4), key(5, 5)]
        );
        assert_eq!(
            rows.get(&key(5, 5)).unwrap().unwrap(),
            b"row number 5 of five"
        );
        let copies = || {
            fs::read_dir(file.parent().unwrap())
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("0000000001.log.corrupt-"))
                .count()
        };
        assert_eq!(copies(), 1, "the damaged file is copied aside");
        // The file itself is not cut: the rows after the damage are still read at the next
        // start, which makes no second copy, whenever it comes.
        drop(rows);
        let rows = open(dir.path(), 1 << 20);
        assert_eq!(rows.keys().len(), 4);
        assert_eq!(copies(), 1);
    }

    #[test]
    fn a_damaged_tail_loses_only_what_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        {
            let rows = open(dir.path(), 1 << 20);
            rows.write(&[put(key(1, 1), "kept")], &mut buf).unwrap();
            rows.write(&[put(key(2, 2), "cut short")], &mut buf)
                .unwrap();
        }
        let file = segment_path(dir.path(), 1);
        let len = fs::metadata(&file).unwrap().len();
        let f = fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(len - 3).unwrap();
        // And a zeroed tail, as a power loss may leave.
        drop(f);
        let mut bytes = fs::read(&file).unwrap();
        bytes.extend_from_slice(&[0; 64]);
        fs::write(&file, bytes).unwrap();
        let rows = open(dir.path(), 1 << 20);
        assert_eq!(rows.keys(), vec![key(1, 1)]);
        assert_eq!(rows.get(&key(1, 1)).unwrap().unwrap(), b"kept");
        // Appends go on in a new segment, and the row written there is read back.
        rows.write(&[put(key(3, 3), "after")], &mut buf).unwrap();
        drop(rows);
        let rows = open(dir.path(), 1 << 20);
        assert_eq!(rows.keys(), vec![key(1, 1), key(3, 3)]);
    }

    #[test]
    fn segments_go_once_they_and_the_older_ones_hold_no_live_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        // Tiny segments: every write begins a new one.
        let rows = open(dir.path(), 1);
        for i in 1..=4u8 {
            rows.write(&[put(key(u64::from(i), i), "row")], &mut buf)
                .unwrap();
        }
        // Removing the second row leaves its segment: the first still has a live row, and a
        // removal's record must outlive the row it hides.
        rows.write(&[(key(2, 2), None)], &mut buf).unwrap();
        let before = rows.segments();
        rows.write(&[(key(1, 1), None)], &mut buf).unwrap();
        assert!(
            rows.segments() < before,
            "the two oldest segments are deleted"
        );
        drop(rows);
        let rows = open(dir.path(), 1);
        assert_eq!(rows.keys(), vec![key(3, 3), key(4, 4)]);
    }
}
