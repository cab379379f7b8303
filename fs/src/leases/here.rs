//! Changes this mount answers itself (see `journal.rs`): in a directory it holds the write
//! lease on, knows whole and knows to have no default ACL, creates, mkdirs, symlinks,
//! unlinks and rmdirs of what it holds the write lease on are checked and made here (unless
//! an attribute flag protects the inodes or asks for synchronous changes), and queued for metad with the lease table locked, so the queue's order is the order they
//! were made in.

use std::sync::Arc;

use shardfs_meta_api::acl::{self, Acl};
use shardfs_meta_api::proto::{
    Attr, ChunkLocation, Cred, Extent, FileKind, GENERATION, Ino, Layout, SetAttr, Timestamp,
};

use super::listing::{Listing, Named};
use super::{Held, Leases, State, describes};

/// An inode to make here: a regular file, a directory or a symlink.
pub struct NewHere {
    pub kind: FileKind,
    /// The mode's permission bits, before the umask (a symlink's are 0o777, which the umask
    /// does not touch).
    pub perm: u32,
    pub cred: Cred,
    /// A symlink's target (empty for the others).
    pub target: Vec<u8>,
}

/// Whether `cred` may add and remove names in directory `dir`, from what this mount knows of
/// it: root, or the owner with write and search permission (the owner's bits decide even
/// under an ACL). Others are left to metad.
fn may_change(dir: &Attr, cred: &Cred) -> bool {
    cred.uid == 0 || (cred.uid == dir.uid && dir.perm & 0o300 == 0o300)
}

/// Whether this mount may answer changes to an inode with these attributes itself: not
/// when its flags refuse some (metad knows the rules) or ask for synchronous changes.
fn unflagged(attr: &Attr) -> bool {
    !attr.flags.guarded() && !attr.flags.dir_sync()
}

/// The directory `dir` if this mount may change its names itself.
fn own_dir<'a>(state: &'a State, dir: Ino, cred: &Cred) -> Option<(&'a Attr, &'a Listing)> {
    let held = state.held.get(&dir)?;
    let (attr, listing) = (held.attr.as_ref()?, held.listing.as_ref()?);
    let own = held.write && held.plain && attr.kind == FileKind::Dir && may_change(attr, cred);
    (own && unflagged(attr)).then_some((attr, listing))
}

impl Leases {
    /// Makes `new` as `name` in `parent` here, if this mount may: `queue(now)` numbers it,
    /// with the readdir cookie of its name, and queues the change (`None`: no number or no
    /// room left, and nothing is made).
    /// Answers the new inode's attributes, as metad will make them.
    pub fn make_here(
        &self,
        parent: Ino,
        name: &[u8],
        new: &NewHere,
        queue: impl FnOnce(Timestamp) -> Option<Named>,
    ) -> Option<Attr> {
        let mut state = self.lock();
        let (dir, listing) = own_dir(&state, parent, &new.cred)?;
        if listing.contains(name) {
            return None;
        }
        let is_dir = new.kind == FileKind::Dir;
        let is_symlink = new.kind == FileKind::Symlink;
        // metad's rules for a new inode in a directory without a default ACL: the umask
        // (not for a symlink), and a set-group-id directory's group (and for a directory,
        // its setgid bit).
        let umask = if is_symlink { 0 } else { new.cred.umask };
        let mut perm = new.perm & 0o7777 & !umask;
        let gid = match u32::from(dir.perm) & libc::S_ISGID {
            0 => new.cred.gid,
            _ => {
                if is_dir {
                    perm |= libc::S_ISGID;
                }
                dir.gid
            }
        };
        let now = Timestamp::now();
        let named = queue(now)?;
        let ino = named.ino;
        let made = Attr {
            ino,
            generation: GENERATION,
            kind: new.kind,
            perm: perm as u16,
            uid: new.cred.uid,
            gid,
            size: new.target.len() as u64,
            allocated: 0,
            nlink: if is_dir { 2 } else { 1 },
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            flags: dir.flags.inherited(new.kind),
        };
        state.mark_changed(&[parent, ino]);
        let dir = state.held.get_mut(&parent).expect("checked above");
        if let Some(attr) = dir.attr.as_mut() {
            (attr.mtime, attr.ctime) = (now, now);
            attr.nlink += u32::from(is_dir);
        }
        dir.listing.get_or_insert_default().insert(name, named);
        let held = Held {
            write: true,
            attr: Some(made.clone()),
            lacks_capability: true,
            listing: is_dir.then(|| Listing::empty(parent)),
            plain: is_dir,
            no_acl: true,
            target: is_symlink.then(|| new.target.clone()),
            ..Held::default()
        };
        state.held.insert(ino, held);
        Some(made)
    }

    /// Removes `name` from `parent` here, if this mount may: unlinks a file (`dir` false) it
    /// holds the write lease on and does not have open (`open`), or removes an empty
    /// directory (`dir` true) it holds the write lease on. `queue(now)` queues the change
    /// (false: no room left, and nothing is removed), given the inode whose name goes.
    /// Answers that inode.
    pub fn remove_here(
        &self,
        parent: Ino,
        name: &[u8],
        cred: &Cred,
        dir: bool,
        open: impl Fn(Ino) -> bool,
        queue: impl FnOnce(Timestamp, Ino) -> bool,
    ) -> Option<Ino> {
        let mut state = self.lock();
        let (parent_attr, listing) = own_dir(&state, parent, cred)?;
        // The sticky rule needs the victim's owner compared: left to metad.
        if u32::from(parent_attr.perm) & libc::S_ISVTX != 0 {
            return None;
        }
        let ino = listing.get(name)?.ino;
        let target = state.held.get(&ino).filter(|held| held.write)?;
        let attr = target.attr.as_ref().filter(|attr| unflagged(attr))?;
        let removable = match dir {
            true => {
                attr.kind == FileKind::Dir && target.listing.as_ref().is_some_and(|l| l.is_empty())
            }
            false => attr.kind != FileKind::Dir && !open(ino),
        };
        if !removable {
            return None;
        }
        let now = Timestamp::now();
        if !queue(now, ino) {
            return None;
        }
        state.mark_changed(&[parent, ino]);
        let parent_held = state.held.get_mut(&parent).expect("checked above");
        if let Some(attr) = parent_held.attr.as_mut() {
            (attr.mtime, attr.ctime) = (now, now);
            attr.nlink -= u32::from(dir);
        }
        if let Some(listing) = parent_held.listing.as_mut() {
            listing.remove(name);
        }
        let target = state.held.get_mut(&ino).expect("checked above");
        let attr = target.attr.as_mut().expect("checked above");
        attr.nlink = attr.nlink.saturating_sub(1);
        attr.ctime = now;
        if dir || attr.nlink == 0 {
            // Gone with its last name: as after a removal metad answered (`name_removed`).
            state.mark_recalled(ino);
            state.held.remove(&ino);
        }
        Some(ino)
    }

    /// Changes the mode, owner or times of `ino` here (`changes` has no size), as
    /// [`Leases::change_here`] says.
    pub fn set_attr_here(
        &self,
        ino: Ino,
        changes: &SetAttr,
        queue: impl FnOnce(Timestamp) -> bool,
    ) -> Option<Attr> {
        let set = |attr: &Attr, now| changes.size.is_none().then(|| attr.with_set(changes, now));
        self.change_here(ino, set, queue)
    }

    /// Sets `ino`'s access ACL `value` here if it is a plain one (what `cp -a` copies from a
    /// file without an ACL: nothing but the mode's bits, which it sets, and stored as
    /// nothing), as [`Leases::change_here`] says.
    pub fn set_acl_here(
        &self,
        ino: Ino,
        (name, value): (&[u8], &[u8]),
        cred: &Cred,
        queue: impl FnOnce(Timestamp) -> bool,
    ) -> Option<Attr> {
        let acl = Acl::parse(value).filter(|acl| name == acl::ACCESS && acl.is_plain())?;
        let set = |attr: &Attr, now| {
            Some(Attr {
                perm: acl.access_perm(attr.perm, attr.gid, cred),
                ctime: now,
                ..attr.clone()
            })
        };
        self.change_here(ino, set, queue)
    }

    /// Changes the attributes of `ino` here to what `change(attributes, now)` makes of them
    /// (`None`: not here), if this mount holds its write lease, knows its attributes and
    /// knows it has no ACL (it made it): `queue(now)` queues the change for metad (false: no
    /// room left). Answers the attributes as metad will make them; a kept layout that
    /// described the file stays (the content is the same). The kernel checked the caller may
    /// make the change (`default_permissions`), by the rules metad checks again.
    fn change_here(
        &self,
        ino: Ino,
        change: impl FnOnce(&Attr, Timestamp) -> Option<Attr>,
        queue: impl FnOnce(Timestamp) -> bool,
    ) -> Option<Attr> {
        let mut state = self.lock();
        let held = state.held.get(&ino).filter(|held| held.write && held.no_acl)?;
        let now = Timestamp::now();
        let set = change(held.attr.as_ref().filter(|attr| unflagged(attr))?, now)?;
        if !queue(now) {
            return None;
        }
        state.mark_changed(&[ino]);
        let held = state.held.get_mut(&ino).expect("checked above");
        let before = held.attr.replace(set.clone());
        // A kept layout that described the file before the change describes it after; one
        // that no longer did (a commit since) must not be made to look current.
        let current = |layout: &Arc<Layout>| before.as_ref().is_some_and(|a| describes(layout, a));
        held.layout = (held.layout.take().filter(current))
            .map(|layout| Arc::new(Layout { attr: set.clone(), ..Layout::clone(&layout) }));
        Some(set)
    }

    /// The content a closed file buffered (`bytes` bytes, ending at `end`), committed here
    /// under its write lease: `queue(now)` queues the commit (false: no room left). When the
    /// file had no content yet, the kept attributes take what metad will make of them and
    /// `content` (its extents and where their chunks are), if known, becomes the kept
    /// layout, so reading it back asks metad nothing; otherwise both are dropped.
    pub fn commit_here(
        &self,
        ino: Ino,
        (end, bytes): (u64, u64),
        mtime: Timestamp,
        content: Option<(Vec<Extent>, Vec<ChunkLocation>)>,
        queue: impl FnOnce(Timestamp) -> bool,
    ) -> bool {
        let mut state = self.lock();
        let flagged = |held: &Held| held.attr.as_ref().is_some_and(|attr| !unflagged(attr));
        if !state.held.get(&ino).is_some_and(|held| held.write && !flagged(held)) {
            return false;
        }
        let now = Timestamp::now();
        if !queue(now) {
            return false;
        }
        state.mark_changed(&[ino]);
        let held = state.held.get_mut(&ino).expect("checked above");
        held.attr = held.attr.take().filter(|a| a.size == 0 && a.allocated == 0).map(|mut a| {
            (a.size, a.allocated, a.mtime, a.ctime) = (end, bytes, mtime, now.max(mtime));
            a
        });
        held.layout = held
            .attr
            .clone()
            .zip(content)
            .map(|(attr, (extents, chunks))| Arc::new(Layout { attr, extents, chunks }));
        true
    }

    /// Drops everything this mount caches under its leases, and with it the kernel's caches,
    /// after metad refused a change the mount had answered itself (`journal.rs`): what the
    /// mount believed and what metad holds may differ. `drop_queue` runs with the lease
    /// table locked, so no change is answered from what is being dropped.
    pub fn reset<R>(&self, drop_queue: impl FnOnce() -> R) -> R {
        let mut state = self.lock();
        let dropped = drop_queue();
        self.forget_all(&mut state);
        dropped
    }
}
