//! What the trace lists filter written traces by without reading their rows: the trace's
//! feature, user and session, as small ids kept in the time index beside each row.
//!
//! sled kept an index tree per value kind; its inserts (three per trace, and their node copies)
//! halved the store's write rate and held hundreds of MiB while a million spans were written.
//! A filtered list now walks the time index in memory, newest first, and reads only the rows
//! whose ids match: a few milliseconds for a million traces in the worst case (a value no
//! trace has). The ids are rebuilt at open from the rows. A value keeps its id until the
//! gateway restarts, also after its last trace is evicted (about 40 bytes and the value).

use std::collections::HashMap;

use super::TraceSummary;

/// A trace's feature, user and session ids; 0 for none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tags {
    pub feature: u32,
    pub user: u32,
    pub session: u32,
}

/// Which tags a list wants: `None` for any, `Some(id)` for that id (0 when the value has no
/// id: no written trace has it).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TagFilter {
    pub feature: Option<u32>,
    pub user: Option<u32>,
    pub session: Option<u32>,
}

impl TagFilter {
    pub fn takes(&self, tags: &Tags) -> bool {
        // Id 0 asked for is a value no written trace has: nothing matches it.
        let ok = |want: Option<u32>, have: u32| want.is_none_or(|w| w != 0 && w == have);
        ok(self.feature, tags.feature) && ok(self.user, tags.user) && ok(self.session, tags.session)
    }

    /// Whether no written trace can match (a value nobody has).
    pub fn matches_none(&self) -> bool {
        [self.feature, self.user, self.session].contains(&Some(0))
    }
}

/// The ids of the values seen, from 1.
#[derive(Debug, Default)]
pub(super) struct Interner {
    ids: HashMap<Box<str>, u32>,
}

impl Interner {
    fn intern(&mut self, value: Option<&str>) -> u32 {
        let Some(value) = value else { return 0 };
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = u32::try_from(self.ids.len() + 1).unwrap_or(u32::MAX);
        self.ids.insert(value.into(), id);
        id
    }

    /// A value's id, 0 when it has none.
    fn id(&self, value: Option<&str>) -> Option<u32> {
        value.map(|v| self.ids.get(v).copied().unwrap_or(0))
    }

    pub fn tags(
        &mut self,
        feature: Option<&str>,
        user: Option<&str>,
        session: Option<&str>,
    ) -> Tags {
        Tags {
            feature: self.intern(feature),
            user: self.intern(user),
            session: self.intern(session),
        }
    }

    pub fn tags_of(&mut self, summary: &TraceSummary) -> Tags {
        self.tags(
            summary.feature.as_deref(),
            summary.user.as_deref(),
            summary.session.as_deref(),
        )
    }

    pub fn filter(
        &self,
        feature: Option<&str>,
        user: Option<&str>,
        session: Option<&str>,
    ) -> TagFilter {
        TagFilter {
            feature: self.id(feature),
            user: self.id(user),
            session: self.id(session),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_get_one_id_each_and_filters_take_them() {
        let mut interner = Interner::default();
        let a = interner.tags(Some("support"), Some("u1"), None);
        let b = interner.tags(Some("support"), Some("u2"), Some("s1"));
        assert_eq!(a.feature, b.feature);
        assert_ne!(a.user, b.user);
        assert_eq!(a.session, 0);
        let support = interner.filter(Some("support"), None, None);
        assert!(support.takes(&a) && support.takes(&b));
        let u2 = interner.filter(None, Some("u2"), None);
        assert!(!u2.takes(&a) && u2.takes(&b));
        let unknown = interner.filter(Some("billing"), None, None);
        assert!(unknown.matches_none() && !unknown.takes(&a));
        assert!(!interner.filter(None, None, None).matches_none());
    }
}
