//! What the sled-backed stores (the export spool and the cost store) share about their files:
//! closing a database off the async runtime, a small tally file kept beside the tree to notice
//! data sled lost without saying so, and moving a damaged directory aside for inspection.
//!
//! sled 0.34 flushes in `Drop` and waits for its flusher thread; on a failed disk that wait can
//! last forever. [`Detached`] makes the last handle's drop happen on a short-lived thread of its
//! own, so no runtime worker, blocking-pool thread or shutdown path ever waits on it.
//!
//! sled recovers from a torn or damaged log by truncating it at the first bad record, and drops
//! blobs written after that point ("removing N blobs"), without an error. The tally (item and
//! unit counts, e.g. batches and spans) is written beside the tree after changes and compared
//! with what a scan finds on open: fewer items or units than the tally means data was lost.

use std::{
    fmt, io,
    ops::Deref,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// A previous `Db` on the same directory releases its file lock only once sled's threads finish
/// (spacejam/sled#1234), and [`Detached`] closes it on another thread, so a quick reopen waits
/// this long before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(2);
const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// Opens a database, waiting up to [`LOCK_WAIT`] for a closing one to release its lock.
pub fn open_waiting_for_lock(config: &sled::Config) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(error)) if is_lock_held(&error) && Instant::now() < deadline => {
                std::thread::sleep(LOCK_RETRY_INTERVAL);
            }
            opened => return opened,
        }
    }
}

/// sled reports a held file lock only through its message (kind `Other`).
fn is_lock_held(error: &io::Error) -> bool {
    error.to_string().contains("could not acquire lock")
}

/// A sled handle whose drop runs on a detached thread: sled may block forever in `Drop`.
pub struct Detached<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> Detached<T> {
    pub fn new(value: T) -> Self {
        Detached(Some(value))
    }
}

impl<T: Send + 'static> Deref for Detached<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // Invariant: the value is only taken out in `drop`.
        self.0
            .as_ref()
            .expect("a Detached handle is used after drop")
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        let Some(value) = self.0.take() else { return };
        let spawned = std::thread::Builder::new()
            .name("sidetrace-sled-close".to_string())
            .spawn(move || drop(value));
        if let Err(e) = spawned {
            // No thread to wait on it: leaking the handle is better than blocking here.
            tracing::error!(error = %e, "cannot start a thread to close a sled database; leaving it open");
        }
    }
}

/// Counts a store expects to find on open: items (batches, rows) and units (spans, calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub items: u64,
    pub units: u64,
}

/// The tally file's name inside the store's directory (sled ignores files it does not know).
pub const TALLY_FILE: &str = "sidetrace.tally";
const TALLY_HEADER: &str = "sidetrace-tally v1";

impl Tally {
    /// The tally stored in `dir`; `Ok(None)` when there is none yet (a new or older store).
    pub fn read(dir: &Path) -> Result<Option<Tally>, String> {
        let path = dir.join(TALLY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mut words = text.split_whitespace();
        let header = [words.next(), words.next()];
        let numbers: Vec<Option<u64>> = words.map(|w| w.parse().ok()).collect();
        match (header, numbers.as_slice()) {
            ([Some(a), Some(b)], [Some(items), Some(units)])
                if format!("{a} {b}") == TALLY_HEADER =>
            {
                Ok(Some(Tally {
                    items: *items,
                    units: *units,
                }))
            }
            _ => Err(format!("{} does not hold a tally", path.display())),
        }
    }

    /// Replaces the tally in `dir` (write and rename, so a crash leaves the old or the new one).
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let path = dir.join(TALLY_FILE);
        let tmp = dir.join(format!("{TALLY_FILE}.tmp"));
        std::fs::write(
            &tmp,
            format!("{TALLY_HEADER}\n{} {}\n", self.items, self.units),
        )?;
        std::fs::rename(&tmp, &path)
    }

    /// What `found` lacks compared with this tally; `None` when nothing is missing.
    pub fn missing_from(&self, found: Tally) -> Option<Tally> {
        let missing = Tally {
            items: self.items.saturating_sub(found.items),
            units: self.units.saturating_sub(found.units),
        };
        (missing != Tally::default()).then_some(missing)
    }
}

/// A damaged store found on open: what was wrong, what is known to be lost, where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub path: PathBuf,
    pub reason: String,
    /// Items and units known lost (from the tally); zeros when unknown.
    pub lost: Tally,
    /// Where the damaged directory was moved for inspection.
    pub moved_to: Option<PathBuf>,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is damaged: {}", self.path.display(), self.reason)?;
        if let Some(to) = &self.moved_to {
            write!(f, "; kept for inspection in {}", to.display())?;
        }
        Ok(())
    }
}

/// Whether an open error means the files are damaged (rather than the disk refusing service).
pub fn is_damage(error: &sled::Error) -> bool {
    match error {
        // Unsupported: files sled cannot read as one of its databases (garbage, another version).
        sled::Error::Corruption { .. }
        | sled::Error::ReportableBug(_)
        | sled::Error::Unsupported(_) => true,
        sled::Error::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
        ),
        _ => false,
    }
}

/// Renames `dir` to `<dir>.corrupt-<unix seconds>` (with a counter if that exists) and returns
/// the new path; the caller then opens a fresh store in `dir`.
pub fn move_aside(dir: &Path) -> io::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = dir
        .file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
    let mut target = dir.with_file_name(format!("{name}.corrupt-{secs}"));
    let mut n = 1;
    while target.exists() {
        target = dir.with_file_name(format!("{name}.corrupt-{secs}-{n}"));
        n += 1;
    }
    std::fs::rename(dir, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_round_trips_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Tally::read(dir.path()), Ok(None));
        let t = Tally {
            items: 7,
            units: 300,
        };
        t.write(dir.path()).unwrap();
        assert_eq!(Tally::read(dir.path()), Ok(Some(t)));
        std::fs::write(dir.path().join(TALLY_FILE), "7 300").unwrap();
        assert!(Tally::read(dir.path()).is_err());
        assert_eq!(
            t.missing_from(Tally {
                items: 5,
                units: 300
            }),
            Some(Tally { items: 2, units: 0 })
        );
        assert_eq!(t.missing_from(t), None);
    }

    #[test]
    fn a_damaged_directory_is_moved_aside_under_a_new_name() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("spool");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("db"), b"x").unwrap();
        let moved = move_aside(&dir).unwrap();
        assert!(!dir.exists());
        assert!(moved.join("db").exists());
        let name = moved.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("spool.corrupt-"), "{name}");
    }
}
