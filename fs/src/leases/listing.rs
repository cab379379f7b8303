//! The whole listing of a directory this mount knows (see `Held::listing`): each name with
//! the inode it names and its readdir cookie, as metad numbers them, so lookups and
//! listings of the directory can be answered here with what metad would answer.

use std::collections::{BTreeMap, HashMap};

use shardfs_meta_api::proto::Ino;

/// A name in a listing: the inode and the readdir cookie listings resume after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Named {
    pub ino: Ino,
    pub cookie: u64,
}

#[derive(Debug, Default)]
pub struct Listing {
    /// The directory holding this one (its ".."), while known: forgotten when a rename may
    /// have moved it.
    pub parent: Option<Ino>,
    names: HashMap<Vec<u8>, Named>,
    /// The same names by cookie, so a page of a listing is a range, not a sort.
    by_cookie: BTreeMap<u64, Vec<u8>>,
}

impl Listing {
    /// The listing of an empty directory in `parent`.
    pub fn empty(parent: Ino) -> Listing {
        Listing { parent: Some(parent), ..Listing::default() }
    }

    pub fn get(&self, name: &[u8]) -> Option<Named> {
        self.names.get(name).copied()
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.names.contains_key(name)
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn insert(&mut self, name: &[u8], named: Named) {
        self.remove(name);
        self.names.insert(name.to_vec(), named);
        self.by_cookie.insert(named.cookie, name.to_vec());
    }

    pub fn remove(&mut self, name: &[u8]) {
        if let Some(named) = self.names.remove(name) {
            self.by_cookie.remove(&named.cookie);
        }
    }

    /// Up to `limit` names whose cookies come after `after`, in cookie order: the page of a
    /// listing metad would answer.
    pub fn after(&self, after: u64, limit: usize) -> Vec<(&[u8], Named)> {
        let later = self.by_cookie.range(after.saturating_add(1)..);
        later.take(limit).map(|(_, name)| (name.as_slice(), self.names[name])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_cookies_not_names() {
        let mut listing = Listing::empty(1);
        for (name, cookie) in [("c", 7), ("a", 9), ("b", 3), ("d", 12)] {
            listing.insert(name.as_bytes(), Named { ino: cookie + 100, cookie });
        }
        let names = |page: Vec<(&[u8], Named)>| -> Vec<(String, u64)> {
            let shown =
                |(n, named): (&[u8], Named)| (String::from_utf8_lossy(n).into(), named.cookie);
            page.into_iter().map(shown).collect()
        };
        let first = names(listing.after(0, 2));
        assert_eq!(first, [("b".to_string(), 3), ("c".to_string(), 7)]);
        let rest = names(listing.after(7, 10));
        assert_eq!(rest, [("a".to_string(), 9), ("d".to_string(), 12)]);
        assert!(listing.after(12, 10).is_empty());
        listing.remove(b"a");
        assert_eq!(names(listing.after(7, 10)), [("d".to_string(), 12)]);
    }
}
