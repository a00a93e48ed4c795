//! What the trace lists filter written traces by without reading their rows: the trace's
//! feature, user and session, as 32-bit hashes kept in the time index beside each row.
//!
//! sled kept an index tree per value kind; its inserts (three per trace, and their node copies)
//! halved the store's write rate and held hundreds of MiB while a million spans were written.
//! A filtered list walks the time index newest first and reads only the rows whose hashes
//! match; the list checks each row it reads against the values asked for, so two values that
//! share a hash (about one pair in four billion) cost a row read, never a wrong answer.
//!
//! Hashes rather than ids handed out per value: a table of values held about 40 bytes and
//! the value for every user and session seen since the gateway started, evicted or not, which
//! grew without bound with per-user or per-conversation ids. A hash needs no memory per value.

use super::TraceSummary;

/// A trace's feature, user and session hashes; 0 for none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tags {
    pub feature: u32,
    pub user: u32,
    pub session: u32,
}

/// A value's hash: FNV-1a (64-bit) folded to 32 bits, never 0 (which stands for no value).
/// Fixed, not seeded per process: the same value hashes alike in every run.
fn hash(value: Option<&str>) -> u32 {
    let Some(value) = value else { return 0 };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in value.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    match (h ^ (h >> 32)) as u32 {
        0 => 1,
        h => h,
    }
}

impl Tags {
    pub fn of(feature: Option<&str>, user: Option<&str>, session: Option<&str>) -> Tags {
        Tags {
            feature: hash(feature),
            user: hash(user),
            session: hash(session),
        }
    }

    pub fn of_summary(summary: &TraceSummary) -> Tags {
        Tags::of(
            summary.feature.as_deref(),
            summary.user.as_deref(),
            summary.session.as_deref(),
        )
    }
}

/// Which tags a list wants: `None` for any, `Some(hash)` for that value's.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TagFilter {
    feature: Option<u32>,
    user: Option<u32>,
    session: Option<u32>,
}

impl TagFilter {
    pub fn new(feature: Option<&str>, user: Option<&str>, session: Option<&str>) -> TagFilter {
        TagFilter {
            feature: feature.map(|v| hash(Some(v))),
            user: user.map(|v| hash(Some(v))),
            session: session.map(|v| hash(Some(v))),
        }
    }

    /// Whether a row with `tags` may match (its values are checked when it is read).
    pub fn takes(&self, tags: &Tags) -> bool {
        let ok = |want: Option<u32>, have: u32| want.is_none_or(|w| w == have);
        ok(self.feature, tags.feature) && ok(self.user, tags.user) && ok(self.session, tags.session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_hash_alike_and_filters_take_them() {
        let a = Tags::of(Some("support"), Some("u1"), None);
        let b = Tags::of(Some("support"), Some("u2"), Some("s1"));
        assert_eq!(a.feature, b.feature);
        assert_ne!(a.user, b.user);
        assert_eq!(a.session, 0);
        assert_ne!(b.session, 0);
        let support = TagFilter::new(Some("support"), None, None);
        assert!(support.takes(&a) && support.takes(&b));
        let u2 = TagFilter::new(None, Some("u2"), None);
        assert!(!u2.takes(&a) && u2.takes(&b));
        assert!(!TagFilter::new(Some("billing"), None, None).takes(&a));
        // An empty value is a value, not none.
        assert_ne!(Tags::of(Some(""), None, None).feature, 0);
        // Two values that share a hash: the lists tell them apart when they read the rows
        // (tests/trace_store_model.rs, values_that_share_a_hash_are_told_apart).
        assert_eq!(hash(Some("s38675")), hash(Some("s61566")));
        // Stable across runs: the hash of a known value.
        assert_eq!(hash(Some("support")), hash(Some("support")));
        assert_eq!(hash(Some("a")), {
            let h: u64 = (0xcbf2_9ce4_8422_2325u64 ^ u64::from(b'a')).wrapping_mul(0x100_0000_01b3);
            (h ^ (h >> 32)) as u32
        });
    }
}
