//! A mount's batches of changes (`BatchRequest::Batch`), and the inode numbers reserved for
//! the inodes they make (`ReserveInos`).
//!
//! A batch is one mutation, so one transaction and, on a replica group, one log entry. Its
//! changes are applied in order, each in a savepoint of its own and checked (permissions,
//! then the change's own rules) against the database as the changes before it left it; the
//! first that fails is rolled back and ends the batch, and those before it stay applied, so
//! the database never holds a later change of a mount without the earlier ones. A new inode
//! takes the number its mount gave it, which must be one the session reserved and has not
//! used: each reserved block is used in order, and numbers skipped are never used. Its name
//! takes the readdir cookie reserved with the number, so the mount can answer listings of
//! what it made with the cookies metad's answers would carry.

use rusqlite::{Connection, OptionalExtension, params};

use super::mutation::{Applied, Effects, Mutation, apply_in};
use super::open_files::Holder;
use super::{Store, namespace};
use crate::store::Sql as _;
use shardfs_meta_api::proto::{Ino, MAX_RESERVED_INOS, MetaError, Queued};

impl Store {
    /// Hands `session` the next `count` inode numbers and readdir cookies; answers the
    /// first of each.
    pub fn reserve_inos(&self, session: Holder, count: u32) -> Result<(Ino, u64), MetaError> {
        match self.apply(Mutation::ReserveInos { session, count })?.0 {
            Applied::Inos(first, first_cookie) => Ok((first, first_cookie)),
            other => Err(other.mismatch("inode numbers")),
        }
    }

    /// Applies `session`'s batch: how many of its changes were applied, the error of the
    /// one that failed, the inodes made that still have a name, and the inodes that lost
    /// their last name.
    pub fn batch(&self, session: Holder, changes: Vec<Queued>) -> Result<Batched, MetaError> {
        let (applied, effects) = self.apply(Mutation::Batch { session, changes })?;
        self.let_go(&effects);
        let Applied::Batched { applied, failed, mut made } = applied else {
            return Err(applied.mismatch("a batch's outcome"));
        };
        let nameless: Vec<Ino> =
            effects.nameless.iter().chain(&effects.removed_dirs).copied().collect();
        made.retain(|ino| !nameless.contains(ino));
        Ok(Batched { applied, failed, made, nameless })
    }
}

/// What applying a batch came to.
#[derive(Debug, PartialEq, Eq)]
pub struct Batched {
    /// How many of its changes were applied, from the first.
    pub applied: u32,
    /// The error of the change that failed, which ended the batch.
    pub failed: Option<MetaError>,
    /// The inodes it made that still have a name.
    pub made: Vec<Ino>,
    /// The inodes that lost their last name.
    pub nameless: Vec<Ino>,
}

/// See [`Mutation::ReserveInos`]: answers the first inode number and readdir cookie.
pub(super) fn reserve(
    tx: &Connection,
    session: Holder,
    count: u32,
) -> Result<(Ino, u64), MetaError> {
    if count == 0 || count > MAX_RESERVED_INOS {
        return Err(MetaError::Invalid(format!("reserve 1 to {MAX_RESERVED_INOS} inode numbers")));
    }
    let first = take_ids(tx, "inodes", "ino", count)?;
    let first_entry = take_ids(tx, "dentries", "id", count)?;
    // Entry ids follow inode numbers at a fixed distance within the block.
    let entry_offset = first_entry as i64 - first as i64;
    tx.prepare_cached(
        "INSERT INTO ino_ranges (session, next, end, entry_offset) VALUES (?1, ?2, ?3, ?4)",
    )
    .sql()?
    .execute(params![session as i64, first, first + u64::from(count), entry_offset])
    .sql()?;
    Ok((first, first_entry + namespace::COOKIE_BASE))
}

/// Takes the next `count` row ids of `table` (see [`namespace::next_id`]): rows made
/// elsewhere are numbered past them. Answers the first.
fn take_ids(tx: &Connection, table: &str, column: &str, count: u32) -> Result<u64, MetaError> {
    let first = namespace::next_id(tx, table, column)?;
    let last = first + u64::from(count) - 1;
    let moved = tx
        .prepare_cached("UPDATE sqlite_sequence SET seq = ?1 WHERE name = ?2")
        .sql()?
        .execute(params![last, table])
        .sql()?;
    if moved == 0 {
        tx.prepare_cached("INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)")
            .sql()?
            .execute(params![table, last])
            .sql()?;
    }
    Ok(first)
}

/// Takes number `ino` from `session`'s reserved blocks, with those below it in its block.
/// Answers the readdir cookie reserved with it (none in a block reserved before cookies
/// were).
fn claim(tx: &Connection, session: Holder, ino: Ino) -> Result<Option<u64>, MetaError> {
    let block: Option<(u64, u64, Option<i64>)> = tx
        .prepare_cached(
            "SELECT next, end, entry_offset FROM ino_ranges
             WHERE session = ?1 AND next <= ?2 AND ?2 < end",
        )
        .sql()?
        .query_row(params![session as i64, ino], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()
        .sql()?;
    let Some((next, end, entry_offset)) = block else {
        return Err(MetaError::Invalid(format!(
            "inode number {ino} is not one this session reserved and has not used"
        )));
    };
    tx.prepare_cached("DELETE FROM ino_ranges WHERE session = ?1 AND next = ?2")
        .sql()?
        .execute(params![session as i64, next])
        .sql()?;
    if ino + 1 < end {
        tx.prepare_cached(
            "INSERT INTO ino_ranges (session, next, end, entry_offset) VALUES (?1, ?2, ?3, ?4)",
        )
        .sql()?
        .execute(params![session as i64, ino + 1, end, entry_offset])
        .sql()?;
    }
    Ok(entry_offset.map(|offset| (ino as i64 + offset) as u64 + namespace::COOKIE_BASE))
}

/// See [`Mutation::Batch`]. The changes are applied one after another in one savepoint,
/// not one savepoint each (a savepoint per change cost a third of metad's time applying
/// batches of small files, docs/performance.md); if one fails, the savepoint is rolled back
/// and the changes before it are applied again, which comes to the same (they are applied
/// to the same state, with the times and numbers the mount gave them).
pub(super) fn apply(
    tx: &Connection,
    session: Holder,
    changes: &[Queued],
    effects: &mut Effects,
) -> Result<Applied, MetaError> {
    let before = effects.clone();
    tx.execute_batch("SAVEPOINT batch").sql()?;
    let failed = apply_all(tx, session, changes, effects);
    let (applied, made, failed) = match failed {
        Ok(made) => (changes.len(), made, None),
        // A full disk fails the whole transaction, which may be tried again with the room
        // kept for changes that free space.
        Err((_, MetaError::MetadataFull)) => return Err(MetaError::MetadataFull),
        Err((at, e)) => {
            tx.execute_batch("ROLLBACK TO batch").sql()?;
            *effects = before;
            let made = apply_all(tx, session, &changes[..at], effects).map_err(|(_, e)| e)?;
            (at, made, Some(e))
        }
    };
    tx.execute_batch("RELEASE batch").sql()?;
    Ok(Applied::Batched { applied: applied as u32, failed, made })
}

/// Applies `changes` in order: the inodes they made, or where the first that failed is and
/// its error.
fn apply_all(
    tx: &Connection,
    session: Holder,
    changes: &[Queued],
    effects: &mut Effects,
) -> Result<Vec<Ino>, (usize, MetaError)> {
    let mut made = Vec::new();
    for (at, queued) in changes.iter().enumerate() {
        made.extend(apply_one(tx, session, queued, effects).map_err(|e| (at, e))?);
    }
    Ok(made)
}

/// Applies one change of a batch; answers the inode it made, if any.
fn apply_one(
    tx: &Connection,
    session: Holder,
    queued: &Queued,
    effects: &mut Effects,
) -> Result<Option<Ino>, MetaError> {
    let mutation = crate::requests::batch::checked(tx, queued)?;
    let cookie = match &mutation {
        Mutation::Create { ino, .. } => claim(tx, session, *ino)?,
        _ => None,
    };
    apply_in(tx, &mutation, effects)?;
    match &mutation {
        Mutation::Create { ino, parent, name, .. } => {
            if let Some(cookie) = cookie {
                namespace::set_cookie(tx, *parent, name, cookie)?;
            }
            Ok(Some(*ino))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use crate::store::tests::open;
    use shardfs_meta_api::proto::{
        Cred, FileKind, Ino, MetaError, NameRequest, Queued, ROOT_INO, Timestamp,
    };

    const SESSION: u64 = 7;

    fn at(sec: i64) -> Timestamp {
        Timestamp { sec, nsec: 0 }
    }

    fn mkdir(parent: Ino, name: &str, ino: Ino, mode: u32, cred: &Cred) -> Queued {
        let cred = cred.clone();
        let request = NameRequest::MakeDir { parent, name: name.into(), mode, cred };
        Queued { request: request.into(), ino, now: at(100) }
    }

    fn create(parent: Ino, name: &str, ino: Ino, cred: &Cred) -> Queued {
        let (mode, cred) = (libc::S_IFREG | 0o644, cred.clone());
        let request = NameRequest::MakeNode { parent, name: name.into(), mode, rdev: 0, cred };
        Queued { request: request.into(), ino, now: at(200) }
    }

    fn unlink(parent: Ino, name: &str) -> Queued {
        let request = NameRequest::Unlink { parent, name: name.into(), cred: Cred::ROOT };
        Queued { request: request.into(), ino: 0, now: at(300) }
    }

    #[test]
    fn a_batch_applies_its_changes_in_order_and_stops_at_the_first_that_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let (first, _) = store.reserve_inos(SESSION, 16).unwrap();
        let root = Cred::ROOT;
        let changes = vec![
            mkdir(ROOT_INO, "d", first, 0o755, &root),
            create(first, "f", first + 1, &root),
            unlink(first, "f"),
            create(first, "f", first + 2, &root),
            // Taken by the change before: the batch ends here.
            create(first, "f", first + 3, &root),
            create(first, "g", first + 4, &root),
        ];
        let batched = store.batch(SESSION, changes).unwrap();
        assert_eq!((batched.applied, batched.failed), (4, Some(MetaError::Exists)));
        assert_eq!(batched.made, vec![first, first + 2], "first + 1 lost its name");
        assert_eq!(batched.nameless, vec![first + 1]);
        let d = store.lookup(ROOT_INO, b"d").unwrap();
        // With the times the mount gave: the last change in `d` was a create.
        assert_eq!((d.ino, d.kind, d.ctime), (first, FileKind::Dir, at(200)));
        assert_eq!(store.lookup(first, b"f").unwrap().ino, first + 2);
        assert_eq!(store.lookup(first, b"g"), Err(MetaError::NotFound));
        // Numbers passed over by the failed change stay unused; the next ones are there.
        let more = vec![create(first, "g", first + 5, &root)];
        assert_eq!(store.batch(SESSION, more).unwrap().applied, 1);
    }

    #[test]
    fn a_batch_numbers_inodes_only_from_its_sessions_reserved_blocks_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let (first, first_cookie) = store.reserve_inos(SESSION, 4).unwrap();
        // Inodes and names made elsewhere meanwhile are numbered past the block.
        let other = store.make_dir(ROOT_INO, b"other", 0o755, Cred::ROOT).unwrap();
        assert_eq!((other.attr.ino, other.cookie), (first + 4, first_cookie + 4));
        let root = Cred::ROOT;
        let refused = |store: &crate::store::Store, session, change| {
            let batched = store.batch(session, vec![change]).unwrap();
            assert_eq!(batched.applied, 0);
            assert!(matches!(batched.failed, Some(MetaError::Invalid(_))), "{batched:?}");
        };
        refused(&store, SESSION + 1, create(ROOT_INO, "theirs", first, &root));
        refused(&store, SESSION, create(ROOT_INO, "past", first + 4, &root));
        assert_eq!(
            store.batch(SESSION, vec![create(ROOT_INO, "a", first + 1, &root)]).unwrap().applied,
            1
        );
        // Used, and so is every number below it in the block.
        refused(&store, SESSION, create(ROOT_INO, "again", first + 1, &root));
        refused(&store, SESSION, create(ROOT_INO, "below", first, &root));
        assert_eq!(
            store.batch(SESSION, vec![create(ROOT_INO, "b", first + 3, &root)]).unwrap().applied,
            1
        );
        refused(&store, SESSION, create(ROOT_INO, "spent", first + 3, &root));
        // Each name made takes the cookie reserved with its inode, whatever came between:
        // listings follow them.
        let (_, listed) = store.read_dir(ROOT_INO, 0, 10).unwrap();
        let cookies: Vec<(&[u8], u64)> =
            listed.iter().map(|e| (e.name.as_slice(), e.cookie)).collect();
        let expected: [(&[u8], u64); 3] =
            [(b"a", first_cookie + 1), (b"b", first_cookie + 3), (b"other", first_cookie + 4)];
        assert_eq!(cookies, expected);
        let fsck = store.fsck(false).unwrap();
        assert!(fsck.problems.is_empty(), "{:?}", fsck.problems);
    }

    #[test]
    fn each_change_is_checked_as_the_changes_before_it_left_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let (first, _) = store.reserve_inos(SESSION, 8).unwrap();
        let user = Cred { uid: 1000, gid: 1000, umask: 0o022, groups: Vec::new() };
        let shared = store.make_dir(ROOT_INO, b"shared", 0o777, Cred::ROOT).unwrap().attr.ino;
        let changes = vec![
            // The user's own directory, which the umask leaves writable by the user only.
            mkdir(shared, "mine", first, 0o777, &user),
            create(first, "f", first + 1, &user),
            // Made by the user, unwritable from then on: the next create is refused.
            mkdir(first, "closed", first + 2, 0o500, &user),
            create(first + 2, "g", first + 3, &user),
        ];
        let batched = store.batch(SESSION, changes).unwrap();
        assert_eq!((batched.applied, batched.failed), (3, Some(MetaError::AccessDenied)));
        let mine = store.get_attr(first).unwrap();
        assert_eq!((mine.uid, mine.perm), (1000, 0o755));
        assert_eq!(store.lookup(first, b"f").unwrap().uid, 1000);
    }
}
