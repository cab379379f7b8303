//! Inodes and directory entries: create, look up, link, unlink, rename, list.

use rusqlite::{Connection, OptionalExtension, params};

use super::group_commit::{Change, UNNUMBERED};
use super::mutation::{Applied, Effects, Mutation, NewInode};
use super::open_files::Holder;
use super::xattr::{put_xattr, xattr_value};
use super::{ATTR_COLUMNS, Store, attr_at, get_attr, holdings, kind_code, layout, set_ctime};
use crate::acl::{self, Acl};
use crate::store::Sql as _;
use shardfs_meta_api::class_policy::CLASS_XATTR;
use shardfs_meta_api::file_flags::{FileFlags, FlagChange};
use shardfs_meta_api::proto::{
    Access, Attr, Cred, DirEntry, FileKind, GENERATION, Ino, MAX_NAME_LEN, Made, MetaError,
    ROOT_INO, RenameMode, SetAttr, Timestamp, Unlinked,
};

/// Most hard links one inode may have.
const MAX_LINKS: u32 = 65_000;
/// Readdir cookies 1 and 2 belong to "." and ".." (made up by the client); a dentry's
/// cookie is its row id shifted past them.
pub(super) const COOKIE_BASE: u64 = 2;

/// Rejects names no directory entry may have.
pub fn validate_name(name: &[u8]) -> Result<(), MetaError> {
    if name.len() > MAX_NAME_LEN {
        return Err(MetaError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." {
        return Err(MetaError::Invalid("empty, \".\" or \"..\" as a name".into()));
    }
    if name.iter().any(|b| *b == b'/' || *b == 0) {
        return Err(MetaError::Invalid("name contains '/' or NUL".into()));
    }
    Ok(())
}

impl Store {
    /// The inode `name` names in `parent`. "." and ".." are answered too (the kernel asks
    /// for them only to turn an NFS file handle back into an inode): "." is `parent` itself,
    /// whatever its kind, and ".." the directory holding directory `parent`.
    /// `name` in directory `parent`. "." finds inode `parent` by number, as the kernel
    /// does to turn a file handle back into an inode: a nameless inode nobody holds open is
    /// not found (the handle is stale), though it lingers for opens of names looked up
    /// before it lost its last.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr, MetaError> {
        let attr = self.read(|tx| lookup(tx, parent, name))?;
        if name == b"." && attr.nlink == 0 && !self.open_files.held_open(attr.ino) {
            return Err(MetaError::NotFound);
        }
        Ok(attr)
    }

    pub fn get_attr(&self, ino: Ino) -> Result<Attr, MetaError> {
        self.read(|tx| get_attr(tx, ino))
    }

    pub fn set_attr(&self, ino: Ino, changes: &SetAttr) -> Result<Attr, MetaError> {
        let now = Timestamp::now();
        self.apply(Mutation::SetAttr { ino, changes: changes.clone(), now })?.0.into_attr()
    }

    /// chattr: the flags `change` makes of `ino`'s (checked by the caller's rules first).
    pub fn set_flags(&self, ino: Ino, change: FlagChange) -> Result<Attr, MetaError> {
        let attr = self.get_attr(ino)?;
        let flags = attr.flags.changed(attr.kind, change)?;
        self.apply(Mutation::SetFlags { ino, flags, now: Timestamp::now() })?.0.into_attr()
    }

    /// Creates a regular file, fifo, socket or device node.
    pub fn make_node(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
        cred: Cred,
    ) -> Result<Made, MetaError> {
        self.create(parent, name, NewInode::node(mode, rdev, cred)?)
    }

    pub fn make_dir(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        cred: Cred,
    ) -> Result<Made, MetaError> {
        self.create(parent, name, NewInode::dir(mode, cred))
    }

    pub fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        cred: Cred,
    ) -> Result<Made, MetaError> {
        self.create(parent, name, NewInode::symlink(target, cred)?)
    }

    /// Makes `new` as `name` in `parent`, with the next inode number.
    fn create(&self, parent: Ino, name: &[u8], new: NewInode) -> Result<Made, MetaError> {
        let (ino, name, now) = (UNNUMBERED, name.to_vec(), Timestamp::now());
        self.submit(Change::numbered(Mutation::Create { ino, parent, name, new, now }))?
            .0
            .into_made()
    }

    pub fn read_link(&self, ino: Ino) -> Result<Vec<u8>, MetaError> {
        self.read(|tx| {
            let target: Option<Option<Vec<u8>>> = tx
                .prepare_cached("SELECT target FROM inodes WHERE ino = ?1")
                .sql()?
                .query_row([ino], |r| r.get(0))
                .optional()
                .sql()?;
            match target {
                None => Err(MetaError::NotFound),
                Some(None) => Err(MetaError::Invalid("not a symlink".into())),
                Some(Some(target)) => Ok(target),
            }
        })
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<Unlinked, MetaError> {
        let now = Timestamp::now();
        let (applied, effects) =
            self.apply(Mutation::Unlink { parent, name: name.to_vec(), now })?;
        self.let_go(&effects);
        match applied {
            Applied::Unlinked(unlinked) => Ok(unlinked),
            other => Err(other.mismatch("what was unlinked")),
        }
    }

    pub fn remove_dir(&self, parent: Ino, name: &[u8]) -> Result<(), MetaError> {
        let now = Timestamp::now();
        let (_, effects) = self.apply(Mutation::RemoveDir { parent, name: name.to_vec(), now })?;
        self.let_go(&effects);
        Ok(())
    }

    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Made, MetaError> {
        let now = Timestamp::now();
        let link = Mutation::Link { ino, new_parent, new_name: new_name.to_vec(), now };
        self.apply(link)?.0.into_made()
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
        cred: &Cred,
    ) -> Result<Option<Ino>, MetaError> {
        let (name, new_name, now) = (name.to_vec(), new_name.to_vec(), Timestamp::now());
        // A whiteout left at the old name is an inode: numbered as the batch is made.
        let whiteout =
            matches!(mode, RenameMode::Whiteout { .. }).then(|| (UNNUMBERED, cred.clone()));
        let change = match whiteout {
            Some(_) => Change::numbered,
            None => Change::apply,
        };
        let change =
            change(Mutation::Rename { parent, name, new_parent, new_name, mode, whiteout, now });
        let (applied, effects) = self.submit(change)?;
        self.let_go(&effects);
        match applied {
            Applied::Renamed(replaced) => Ok(replaced),
            other => Err(other.mismatch("what a rename replaced")),
        }
    }

    /// After a change took names away: files nobody has open linger for opens on their
    /// way (see `open_files`), then go; directories nobody has open go at once. Those open
    /// live on, nameless, until their last close.
    pub(super) fn let_go(&self, effects: &Effects) {
        let now = std::time::Instant::now();
        for &ino in &effects.nameless {
            if !self.open_files.is_open(ino) {
                self.open_files.linger(ino, now);
            }
        }
        if let Err(e) = self.reclaim_unless_open(effects.removed_dirs.clone()) {
            // Left lingering: housekeeping tries again.
            tracing::warn!("cannot delete removed directories yet: {e}");
            for &ino in &effects.removed_dirs {
                self.open_files.linger(ino, now);
            }
        }
    }

    /// Entries of directory `ino` after cookie `after`, with the directory's parent.
    pub fn read_dir(
        &self,
        ino: Ino,
        after: u64,
        limit: u32,
    ) -> Result<(Ino, Vec<DirEntry>), MetaError> {
        self.read(|tx| {
            require_dir(tx, ino)?;
            let parent = parent_of(tx, ino)?;
            let columns = ATTR_COLUMNS.replace("ino,", "i.ino,");
            let mut statement = tx
                .prepare_cached(&format!(
                    "SELECT d.id, d.name, {columns} FROM dentries d JOIN inodes i ON i.ino = d.ino
                 WHERE d.parent = ?1 AND d.id > ?2 ORDER BY d.id LIMIT ?3"
                ))
                .sql()?;
            let entries = statement
                .query_map(params![ino, after.saturating_sub(COOKIE_BASE), limit], |row| {
                    let id: u64 = row.get(0)?;
                    let name: Vec<u8> = row.get(1)?;
                    let attr = attr_at(row, 2)?;
                    Ok(DirEntry { name, cookie: id + COOKIE_BASE, attr })
                })
                .sql()?
                .collect::<Result<Vec<_>, _>>()
                .sql()?;
            Ok((parent, entries))
        })
    }

    /// Updates the atime of `ino` after a read, as relatime does: only if it is not newer
    /// than the mtime and ctime, or is more than a day old.
    pub fn accessed(&self, ino: Ino, strict: bool) -> Result<Attr, MetaError> {
        let now = Timestamp::now();
        self.apply(Mutation::Accessed { ino, strict, now })?.0.into_attr()
    }

    /// Updates the atime of each file read in `accesses` (see [`Mutation::AccessedAt`]).
    pub fn accessed_at(&self, accesses: Vec<Access>, strict: bool) -> Result<(), MetaError> {
        self.apply(Mutation::AccessedAt { accesses, strict }).map(drop)
    }

    /// Records one open of `ino` by `holder`, which may hold at most `limit` opens. Fails if
    /// `ino` is gone: the open is recorded in the database in the same change that checks
    /// it exists, so it cannot slip in beside the deletion of the file.
    pub fn open_file(&self, ino: Ino, holder: Holder, limit: u64) -> Result<Attr, MetaError> {
        self.open_files.add(ino, holder, limit)?;
        let opened = self.apply(Mutation::Open { ino, holder });
        if opened.is_err() {
            self.open_files.remove(ino, holder);
        }
        opened?.0.into_attr()
    }

    /// Records one close of `ino` by `holder`, deleting the file if that was the last
    /// reference to an unlinked file. A file some session holds a lease on (`leased`) is
    /// not deleted yet but lingers: under the lease a mount may have opened it again without
    /// telling metad (see [`Store::lingered`]).
    pub fn release_file(&self, ino: Ino, holder: Holder, leased: bool) -> Result<(), MetaError> {
        let still_open = self.open_files.remove(ino, holder);
        if let Err(e) = self.apply(Mutation::Close { ino, holder }) {
            // Kept as open until the session ends, which forgets its opens.
            tracing::warn!(ino, holder, "cannot record the close of a file: {e}");
        }
        if still_open {
            return Ok(());
        }
        if leased {
            self.open_files.linger(ino, std::time::Instant::now());
            return Ok(());
        }
        self.reclaim_unless_open(vec![ino]).map(drop)
    }

    /// Drops every open of a holder that went away. The files it had open linger, as at
    /// any last close that other sessions' leases may stand behind.
    pub fn release_holder(&self, holder: Holder) -> Result<(), MetaError> {
        let now = std::time::Instant::now();
        for ino in self.open_files.remove_holder(holder) {
            self.open_files.linger(ino, now);
        }
        self.end_session(holder)
    }

    /// Stops keeping the nameless inodes that have lingered long enough by `now`, and
    /// returns them: the caller deletes them ([`Store::reclaim_unless_open`]), or keeps those
    /// a mount holds a lease on lingering ([`Store::linger_on`]): under its lease it may have
    /// opened the file without telling metad, and tells when the lease is recalled.
    pub fn lingered(&self, now: std::time::Instant) -> Vec<Ino> {
        self.open_files.lingered(now)
    }

    /// Keeps `inos` lingering for another while from `now`.
    pub fn linger_on(&self, inos: &[Ino], now: std::time::Instant) {
        for &ino in inos {
            self.open_files.linger(ino, now);
        }
    }

    /// Deletes those of `inos` that have no name left and nobody has open: the change
    /// itself checks both against the database. Returns how many it deleted.
    pub fn reclaim_unless_open(&self, inos: Vec<Ino>) -> Result<usize, MetaError> {
        let inos: Vec<Ino> =
            inos.into_iter().filter(|&ino| !self.open_files.is_open(ino)).collect();
        if inos.is_empty() {
            return Ok(0);
        }
        let (_, effects) = self.apply(Mutation::Reclaim { inos, now: Timestamp::now() })?;
        Ok(effects.deleted.len())
    }

    /// Deletes every nameless inode nobody has open; returns how many.
    pub(super) fn reclaim_orphans(&self) -> Result<usize, MetaError> {
        let orphans = self.scan(nameless)?;
        self.reclaim_unless_open(orphans)
    }

    pub fn inode_count(&self) -> Result<u64, MetaError> {
        self.scan(|tx| tx.query_row("SELECT COUNT(*) FROM inodes", [], |r| r.get(0)).sql())
    }
}

/// Every inode with no name left.
pub(super) fn nameless(tx: &Connection) -> Result<Vec<Ino>, MetaError> {
    tx.prepare("SELECT ino FROM inodes WHERE nlink = 0")
        .sql()?
        .query_map([], |r| r.get(0))
        .sql()?
        .collect::<Result<_, _>>()
        .sql()
}

/// A new name's answer: `attr`, the attributes of `parent`, which the change touched, and
/// the name's readdir cookie.
pub(super) fn made(
    tx: &Connection,
    attr: Attr,
    parent: Ino,
    name: &[u8],
) -> Result<Made, MetaError> {
    let default_acl = xattr_value(tx, parent, acl::DEFAULT)?.is_some();
    let (id, _) = find_entry(tx, parent, name)?.ok_or(MetaError::NotFound)?;
    Ok(Made { attr, parent: get_attr(tx, parent)?, default_acl, cookie: id + COOKIE_BASE })
}

/// Gives the name `name` in `parent` the readdir cookie `cookie` (one reserved for it).
pub(super) fn set_cookie(
    tx: &Connection,
    parent: Ino,
    name: &[u8],
    cookie: u64,
) -> Result<(), MetaError> {
    tx.prepare_cached("UPDATE dentries SET id = ?1 WHERE parent = ?2 AND name = ?3")
        .sql()?
        .execute(params![cookie - COOKIE_BASE, parent, name])
        .sql()?;
    Ok(())
}

/// See [`Store::lookup`].
pub(super) fn lookup(tx: &Connection, parent: Ino, name: &[u8]) -> Result<Attr, MetaError> {
    if name == b"." {
        return get_attr(tx, parent);
    }
    require_dir(tx, parent)?;
    if name == b".." {
        return get_attr(tx, parent_of(tx, parent)?);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(MetaError::NameTooLong);
    }
    let ino = find_entry(tx, parent, name)?.ok_or(MetaError::NotFound)?.1;
    get_attr(tx, ino)
}

/// The inode number the next new inode takes: one past the highest ever used (numbers are
/// never reused, so a client's cached one never names another file).
pub(super) fn next_ino(tx: &Connection) -> Result<Ino, MetaError> {
    next_id(tx, "inodes", "ino")
}

/// The row id the next row of `table` (whose `INTEGER PRIMARY KEY AUTOINCREMENT` column is
/// `column`) takes.
pub(super) fn next_id(tx: &Connection, table: &str, column: &str) -> Result<u64, MetaError> {
    tx.prepare_cached(&format!(
        "SELECT 1 + MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0),
                 (SELECT COALESCE(MAX({column}), 0) FROM {table}))"
    ))
    .sql()?
    .query_row([], |r| r.get(0))
    .sql()
}

/// Makes inode `ino` as `new` describes, named `name` in `parent`.
pub(super) fn create(
    tx: &Connection,
    ino: Ino,
    parent: Ino,
    name: &[u8],
    new: &NewInode,
    now: Timestamp,
) -> Result<Attr, MetaError> {
    validate_name(name)?;
    let dir = require_dir(tx, parent)?;
    if find_entry(tx, parent, name)?.is_some() {
        return Err(MetaError::Exists);
    }
    // A default ACL on the directory replaces the umask and gives the new inode its ACL.
    let default_acl = match new.kind {
        FileKind::Symlink => None,
        _ => xattr_value(tx, parent, acl::DEFAULT)?.and_then(|value| Acl::parse(&value)),
    };
    let (mut perm, inherited) = match &default_acl {
        Some(default) => {
            let (acl, perm) = default.inherit(new.perm);
            (perm, Some(acl))
        }
        None => (new.perm & !new.umask, None),
    };
    let mut gid = new.cred.gid;
    // A set-group-id directory passes its group on, and its setgid bit to subdirectories.
    if u32::from(dir.perm) & libc::S_ISGID != 0 {
        gid = dir.gid;
        if new.kind == FileKind::Dir {
            perm |= libc::S_ISGID;
        }
    }
    let is_dir = new.kind == FileKind::Dir;
    let size = new.target.as_ref().map_or(0, |t| t.len() as u64);
    let flags = dir.flags.inherited(new.kind);
    tx.prepare_cached(
        "INSERT INTO inodes (ino, generation, kind, perm, uid, gid, size, allocated, nlink,
             atime_sec, atime_nsec, mtime_sec, mtime_nsec, ctime_sec, ctime_nsec, rdev, parent,
             target, flags, projid, extsize)
         VALUES (?13, ?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?8, ?9, ?8, ?9, ?10, ?11, ?12,
                 ?14, ?15, ?16)",
    )
    .sql()?
    .execute(params![
        GENERATION,
        kind_code(new.kind),
        perm,
        new.cred.uid,
        gid,
        size,
        if is_dir { 2 } else { 1 },
        now.sec,
        now.nsec,
        new.rdev,
        if is_dir { Some(parent) } else { None },
        new.target,
        ino,
        flags.bits,
        flags.projid,
        flags.extsize,
    ])
    .sql()?;
    insert_entry(tx, parent, name, ino)?;
    if let Some(acl) = inherited.filter(|acl| !acl.is_plain()) {
        put_xattr(tx, ino, acl::ACCESS, &acl.to_bytes())?;
    }
    if let (Some(default), true) = (&default_acl, is_dir) {
        put_xattr(tx, ino, acl::DEFAULT, &default.to_bytes())?;
    }
    // A directory's class policy goes to what is made in it (symlinks have no xattrs).
    if new.kind != FileKind::Symlink
        && let Some(policy) = xattr_value(tx, parent, CLASS_XATTR)?
    {
        put_xattr(tx, ino, CLASS_XATTR, &policy)?;
    }
    if is_dir {
        add_links(tx, parent, 1)?;
    }
    touch(tx, parent, now)?;
    get_attr(tx, ino)
}

pub(super) fn set_attr(
    tx: &Connection,
    ino: Ino,
    changes: &SetAttr,
    now: Timestamp,
) -> Result<Attr, MetaError> {
    let attr = get_attr(tx, ino)?;
    if let Some(size) = changes.size {
        if attr.kind == FileKind::Dir {
            return Err(MetaError::IsDir);
        }
        if attr.kind != FileKind::File {
            return Err(MetaError::Invalid("truncate of a special file".into()));
        }
        layout::truncate(tx, ino, size, now)?;
    }
    if let Some(mode) = changes.mode {
        // chmod rewrites the access ACL's base entries to match.
        if let Some(mut acl) =
            xattr_value(tx, ino, acl::ACCESS)?.and_then(|value| Acl::parse(&value))
        {
            acl.chmod(mode & 0o7777);
            put_xattr(tx, ino, acl::ACCESS, &acl.to_bytes())?;
        }
    }
    let set = get_attr(tx, ino)?.with_set(changes, now);
    tx.prepare_cached(
        "UPDATE inodes SET perm = ?2, uid = ?3, gid = ?4,
             atime_sec = ?5, atime_nsec = ?6, mtime_sec = ?7, mtime_nsec = ?8,
             ctime_sec = ?9, ctime_nsec = ?10
         WHERE ino = ?1",
    )
    .sql()?
    .execute(params![
        ino,
        set.perm,
        set.uid,
        set.gid,
        set.atime.sec,
        set.atime.nsec,
        set.mtime.sec,
        set.mtime.nsec,
        set.ctime.sec,
        set.ctime.nsec,
    ])
    .sql()?;
    get_attr(tx, ino)
}

/// [`Mutation::SetFlags`]: the flags become `flags`, and the change time `now`.
pub(super) fn set_flags(
    tx: &Connection,
    ino: Ino,
    flags: &FileFlags,
    now: Timestamp,
) -> Result<Attr, MetaError> {
    get_attr(tx, ino)?;
    tx.prepare_cached("UPDATE inodes SET flags = ?2, projid = ?3, extsize = ?4 WHERE ino = ?1")
        .sql()?
        .execute(params![ino, flags.bits, flags.projid, flags.extsize])
        .sql()?;
    set_ctime(tx, ino, now)?;
    get_attr(tx, ino)
}

/// An atime update of a read (never on a `noatime` inode).
pub(super) fn accessed(
    tx: &Connection,
    ino: Ino,
    strict: bool,
    now: Timestamp,
) -> Result<Attr, MetaError> {
    let attr = get_attr(tx, ino)?;
    if !attr.flags.noatime() && (strict || attr.atime_due(now)) {
        set_atime(tx, ino, now)?;
    }
    get_attr(tx, ino)
}

/// [`Mutation::AccessedAt`] of one read: the atime moves forward to the read's time (under
/// the relatime rule as of then unless `strict`); a file gone since is skipped. The mount
/// left out reads of files it knew to be `noatime` then; one flagged since was read before.
pub(super) fn accessed_at(tx: &Connection, access: &Access, strict: bool) -> Result<(), MetaError> {
    let attr = match get_attr(tx, access.ino) {
        Ok(attr) => attr,
        Err(MetaError::NotFound) => return Ok(()),
        Err(e) => return Err(e),
    };
    if access.at > attr.atime && (strict || attr.atime_due(access.at)) {
        set_atime(tx, access.ino, access.at)?;
    }
    Ok(())
}

fn set_atime(tx: &Connection, ino: Ino, at: Timestamp) -> Result<(), MetaError> {
    tx.prepare_cached("UPDATE inodes SET atime_sec = ?2, atime_nsec = ?3 WHERE ino = ?1")
        .sql()?
        .execute(params![ino, at.sec, at.nsec])
        .sql()?;
    Ok(())
}

pub(super) fn link(
    tx: &Connection,
    ino: Ino,
    new_parent: Ino,
    new_name: &[u8],
    now: Timestamp,
) -> Result<Made, MetaError> {
    validate_name(new_name)?;
    require_dir(tx, new_parent)?;
    let attr = get_attr(tx, ino)?;
    if attr.kind == FileKind::Dir {
        return Err(MetaError::NotPermitted);
    }
    if attr.nlink >= MAX_LINKS {
        return Err(MetaError::TooManyLinks);
    }
    if find_entry(tx, new_parent, new_name)?.is_some() {
        return Err(MetaError::Exists);
    }
    insert_entry(tx, new_parent, new_name, ino)?;
    add_links(tx, ino, 1)?;
    set_ctime(tx, ino, now)?;
    touch(tx, new_parent, now)?;
    made(tx, get_attr(tx, ino)?, new_parent, new_name)
}

pub(super) fn unlink(
    tx: &Connection,
    parent: Ino,
    name: &[u8],
    now: Timestamp,
    effects: &mut Effects,
) -> Result<Unlinked, MetaError> {
    require_dir(tx, parent)?;
    let (id, ino) = find_entry(tx, parent, name)?.ok_or(MetaError::NotFound)?;
    if get_attr(tx, ino)?.kind == FileKind::Dir {
        return Err(MetaError::IsDir);
    }
    tx.prepare_cached("DELETE FROM dentries WHERE id = ?1").sql()?.execute([id]).sql()?;
    drop_link(tx, ino, now, effects)?;
    touch(tx, parent, now)?;
    let target = get_attr(tx, ino)?;
    Ok(Unlinked { parent: get_attr(tx, parent)?, ino, target: Some(target) })
}

pub(super) fn remove_dir(
    tx: &Connection,
    parent: Ino,
    name: &[u8],
    now: Timestamp,
    effects: &mut Effects,
) -> Result<(), MetaError> {
    require_dir(tx, parent)?;
    let (id, ino) = find_entry(tx, parent, name)?.ok_or(MetaError::NotFound)?;
    if get_attr(tx, ino)?.kind != FileKind::Dir {
        return Err(MetaError::NotDir);
    }
    if has_entries(tx, ino)? {
        return Err(MetaError::NotEmpty);
    }
    tx.prepare_cached("DELETE FROM dentries WHERE id = ?1").sql()?.execute([id]).sql()?;
    drop_dir(tx, ino, now, effects)?;
    add_links(tx, parent, -1)?;
    touch(tx, parent, now)
}

/// The names a rename moves from and to.
pub(super) struct Names<'a> {
    pub parent: Ino,
    pub name: &'a [u8],
    pub new_parent: Ino,
    pub new_name: &'a [u8],
}

/// Renames; `whiteout` (for `RenameMode::Whiteout`) numbers the device left at the old
/// name and says who made it. Returns the inode replaced, if any.
pub(super) fn rename(
    tx: &Connection,
    names: Names<'_>,
    mode: RenameMode,
    whiteout: &Option<(Ino, Cred)>,
    now: Timestamp,
    effects: &mut Effects,
) -> Result<Option<Ino>, MetaError> {
    let Names { parent, name, new_parent, new_name } = names;
    validate_name(new_name)?;
    let (mode, whiteout) = match (mode, whiteout) {
        (RenameMode::Whiteout { no_replace }, Some(whiteout)) => {
            (if no_replace { RenameMode::NoReplace } else { RenameMode::Replace }, Some(whiteout))
        }
        (RenameMode::Whiteout { .. }, None) => {
            return Err(MetaError::Invalid("a whiteout rename without its inode".into()));
        }
        (mode, _) => (mode, None),
    };
    require_dir(tx, parent)?;
    require_dir(tx, new_parent)?;
    let (src_id, src_ino) = find_entry(tx, parent, name)?.ok_or(MetaError::NotFound)?;
    let src = get_attr(tx, src_ino)?;
    let dst = find_entry(tx, new_parent, new_name)?;
    if mode == RenameMode::Exchange {
        let (dst_id, dst_ino) = dst.ok_or(MetaError::NotFound)?;
        let dst = get_attr(tx, dst_ino)?;
        exchange(tx, (parent, src_id, &src), (new_parent, dst_id, &dst), now)?;
        return Ok(None);
    }
    let replaced = dst.map(|(_, ino)| ino);
    if let Some((dst_id, dst_ino)) = dst {
        if mode == RenameMode::NoReplace {
            return Err(MetaError::Exists);
        }
        if dst_ino == src_ino {
            return Ok(None);
        }
        let dst = get_attr(tx, dst_ino)?;
        match (src.kind == FileKind::Dir, dst.kind == FileKind::Dir) {
            (true, false) => return Err(MetaError::NotDir),
            (false, true) => return Err(MetaError::IsDir),
            (true, true) if has_entries(tx, dst_ino)? => return Err(MetaError::NotEmpty),
            _ => {}
        }
        if src.kind == FileKind::Dir {
            refuse_move_into_itself(tx, src_ino, new_parent)?;
        }
        tx.prepare_cached("DELETE FROM dentries WHERE id = ?1").sql()?.execute([dst_id]).sql()?;
        if dst.kind == FileKind::Dir {
            drop_dir(tx, dst_ino, now, effects)?;
            add_links(tx, new_parent, -1)?;
        } else {
            drop_link(tx, dst_ino, now, effects)?;
        }
    } else if src.kind == FileKind::Dir {
        refuse_move_into_itself(tx, src_ino, new_parent)?;
    }
    tx.prepare_cached("UPDATE dentries SET parent = ?2, name = ?3 WHERE id = ?1")
        .sql()?
        .execute(params![src_id, new_parent, new_name])
        .sql()?;
    if src.kind == FileKind::Dir && parent != new_parent {
        move_dir(tx, src_ino, parent, new_parent)?;
    }
    set_ctime(tx, src_ino, now)?;
    touch(tx, parent, now)?;
    touch(tx, new_parent, now)?;
    if let Some((ino, cred)) = whiteout {
        let device = NewInode {
            kind: FileKind::CharDevice,
            perm: 0,
            umask: 0,
            cred: cred.clone(),
            rdev: 0,
            target: None,
        };
        create(tx, *ino, parent, name, &device, now)?;
    }
    Ok(replaced)
}

/// A directory that still has its name: a removed one kept alive by an open handle can be
/// neither listed nor searched nor added to (Linux: ENOENT).
fn require_dir(tx: &Connection, ino: Ino) -> Result<Attr, MetaError> {
    let attr = get_attr(tx, ino)?;
    if attr.kind != FileKind::Dir {
        return Err(MetaError::NotDir);
    }
    if attr.nlink == 0 {
        return Err(MetaError::NotFound);
    }
    Ok(attr)
}

/// The directory holding directory `dir` (the root holds itself).
fn parent_of(tx: &Connection, dir: Ino) -> Result<Ino, MetaError> {
    tx.prepare_cached("SELECT parent FROM inodes WHERE ino = ?1")
        .sql()?
        .query_row([dir], |r| r.get(0))
        .sql()
}

/// `(dentry id, ino)` of `name` in `parent`.
fn find_entry(tx: &Connection, parent: Ino, name: &[u8]) -> Result<Option<(u64, Ino)>, MetaError> {
    tx.prepare_cached("SELECT id, ino FROM dentries WHERE parent = ?1 AND name = ?2")
        .sql()?
        .query_row(params![parent, name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .sql()
}

fn insert_entry(tx: &Connection, parent: Ino, name: &[u8], ino: Ino) -> Result<(), MetaError> {
    tx.prepare_cached("INSERT INTO dentries (parent, name, ino) VALUES (?1, ?2, ?3)")
        .sql()?
        .execute(params![parent, name, ino])
        .sql()?;
    Ok(())
}

fn has_entries(tx: &Connection, dir: Ino) -> Result<bool, MetaError> {
    tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM dentries WHERE parent = ?1)")
        .sql()?
        .query_row([dir], |r| r.get(0))
        .sql()
}

fn add_links(tx: &Connection, ino: Ino, delta: i64) -> Result<(), MetaError> {
    tx.prepare_cached("UPDATE inodes SET nlink = nlink + ?2 WHERE ino = ?1")
        .sql()?
        .execute(params![ino, delta])
        .sql()?;
    Ok(())
}

/// A directory's content changed: its mtime and ctime move.
fn touch(tx: &Connection, dir: Ino, now: Timestamp) -> Result<(), MetaError> {
    tx.prepare_cached(
        "UPDATE inodes SET mtime_sec = ?2, mtime_nsec = ?3, ctime_sec = ?2, ctime_nsec = ?3
         WHERE ino = ?1",
    )
    .sql()?
    .execute(params![dir, now.sec, now.nsec])
    .sql()?;
    Ok(())
}

/// One name of `ino` went away. With its last name the inode is to go, once nobody has
/// it open (the caller decides, see `Store::let_go`): it lives on, nameless, until then.
fn drop_link(
    tx: &Connection,
    ino: Ino,
    now: Timestamp,
    effects: &mut Effects,
) -> Result<(), MetaError> {
    let nlink: u32 = tx
        .prepare_cached(
            "UPDATE inodes SET nlink = nlink - 1, ctime_sec = ?2, ctime_nsec = ?3
             WHERE ino = ?1 RETURNING nlink",
        )
        .sql()?
        .query_row(params![ino, now.sec, now.nsec], |r| r.get(0))
        .sql()?;
    if nlink == 0 {
        effects.nameless.push(ino);
    }
    Ok(())
}

/// Empty directory `dir` lost its name: it goes once nobody has it open, and lives on with
/// no links until then.
fn drop_dir(
    tx: &Connection,
    dir: Ino,
    now: Timestamp,
    effects: &mut Effects,
) -> Result<(), MetaError> {
    tx.prepare_cached(
        "UPDATE inodes SET nlink = 0, ctime_sec = ?2, ctime_nsec = ?3 WHERE ino = ?1",
    )
    .sql()?
    .execute(params![dir, now.sec, now.nsec])
    .sql()?;
    effects.removed_dirs.push(dir);
    Ok(())
}

/// Deletes `ino` if it has no name left. Returns whether it did.
pub(super) fn reclaim_if_nameless(
    tx: &Connection,
    ino: Ino,
    now: Timestamp,
) -> Result<bool, MetaError> {
    let nlink: Option<u32> = tx
        .prepare_cached("SELECT nlink FROM inodes WHERE ino = ?1")
        .sql()?
        .query_row([ino], |r| r.get(0))
        .optional()
        .sql()?;
    let gone = nlink == Some(0) && !holdings::is_open(tx, ino)?;
    if gone {
        delete_inode(tx, ino, now)?;
    }
    Ok(gone)
}

fn delete_inode(tx: &Connection, ino: Ino, now: Timestamp) -> Result<(), MetaError> {
    layout::release_all(tx, ino, now)?;
    tx.prepare_cached("DELETE FROM xattrs WHERE ino = ?1").sql()?.execute([ino]).sql()?;
    tx.prepare_cached("DELETE FROM inodes WHERE ino = ?1").sql()?.execute([ino]).sql()?;
    Ok(())
}

/// A directory may not move below itself.
fn refuse_move_into_itself(tx: &Connection, dir: Ino, new_parent: Ino) -> Result<(), MetaError> {
    let mut cursor = new_parent;
    loop {
        if cursor == dir {
            return Err(MetaError::Invalid("cannot move a directory into itself".into()));
        }
        if cursor == ROOT_INO {
            return Ok(());
        }
        cursor = tx
            .prepare_cached("SELECT parent FROM inodes WHERE ino = ?1")
            .sql()?
            .query_row([cursor], |r| r.get::<_, Option<Ino>>(0))
            .sql()?
            .ok_or_else(|| MetaError::Store(format!("directory {cursor} has no parent")))?;
    }
}

/// Directory `dir` moved from `from` to `to`: ".." and the parents' link counts follow.
fn move_dir(tx: &Connection, dir: Ino, from: Ino, to: Ino) -> Result<(), MetaError> {
    tx.prepare_cached("UPDATE inodes SET parent = ?2 WHERE ino = ?1")
        .sql()?
        .execute(params![dir, to])
        .sql()?;
    add_links(tx, from, -1)?;
    add_links(tx, to, 1)
}

/// RENAME_EXCHANGE: the two names swap the inodes they point at.
fn exchange(
    tx: &Connection,
    (parent, src_id, src): (Ino, u64, &Attr),
    (new_parent, dst_id, dst): (Ino, u64, &Attr),
    now: Timestamp,
) -> Result<(), MetaError> {
    if src.ino == dst.ino {
        return Ok(());
    }
    if parent != new_parent {
        if src.kind == FileKind::Dir {
            refuse_move_into_itself(tx, src.ino, new_parent)?;
        }
        if dst.kind == FileKind::Dir {
            refuse_move_into_itself(tx, dst.ino, parent)?;
        }
    }
    let point = |id: u64, ino: Ino| -> Result<(), MetaError> {
        tx.prepare_cached("UPDATE dentries SET ino = ?2 WHERE id = ?1")
            .sql()?
            .execute(params![id, ino])
            .sql()?;
        Ok(())
    };
    point(src_id, dst.ino)?;
    point(dst_id, src.ino)?;
    if parent != new_parent {
        if src.kind == FileKind::Dir {
            move_dir(tx, src.ino, parent, new_parent)?;
        }
        if dst.kind == FileKind::Dir {
            move_dir(tx, dst.ino, new_parent, parent)?;
        }
    }
    set_ctime(tx, src.ino, now)?;
    set_ctime(tx, dst.ino, now)?;
    touch(tx, parent, now)?;
    touch(tx, new_parent, now)
}
