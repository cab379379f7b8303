//! The leases this mount holds from metad, and what the kernel may cache because of them.
//!
//! metad grants a read lease on every inode it tells this mount about (lookups, getattr,
//! listings, layouts, creates) and a write lease on request. While a lease is held the
//! kernel gets long attribute and entry TTLs for the inode; without one it gets zero and
//! asks again. A recall arrives as a push: it is recorded at once, on the connection's
//! reader, so an answer that raced with it is never trusted, and settled by a task that
//! commits buffered writes, drops cached layouts and kernel caches, and releases the lease.
//!
//! The race between a reply to the kernel and a recall is closed by the state lock: replies
//! that hand out a long TTL are written to the kernel under it, and a recall takes the lease
//! out under it before any invalidation, so an invalidation always follows every reply that
//! trusted the lease.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use fuser::{INodeNo, Notifier};
use shardfs_meta_api::SessionEvents;
use shardfs_meta_api::proto::{Access, Attr, DirEntry, Ino, Layout, MetaPush, Timestamp};
use shardfs_rpc::sync::Lock as _;
use tokio::sync::{mpsc, watch};
use tracing::debug;

mod here;
mod listing;

pub use here::NewHere;
use listing::Listing;
pub use listing::Named;

/// Whether `layout` is the content of a file with attributes `attr`: the same size, bytes
/// stored, and change times. (Size and times alone are not enough: two commits of one
/// buffer carry the same mtime, and a truncation up keeps the size.)
fn describes(layout: &Layout, attr: &Attr) -> bool {
    let same = |a: &Attr| (a.size, a.allocated, a.mtime, a.ctime);
    same(attr) == same(&layout.attr)
}

/// How long the kernel may cache what a lease covers. Recalls invalidate it sooner.
pub const LEASE_TTL: Duration = Duration::from_secs(60);

/// Kernel cache TTL without a lease: ask again every time.
const NO_TTL: Duration = Duration::ZERO;

/// Recalls remembered by inode, to spot answers that raced with them; older ones are
/// forgotten under a watermark that treats every answer older than it as raced.
const REMEMBERED_RECALLS: usize = 65_536;

#[derive(Default)]
struct Held {
    write: bool,
    /// Names under this directory the kernel was given with a long TTL.
    names: HashSet<Vec<u8>>,
    /// The inode's attributes as metad last answered them under this lease, dropped by any
    /// change made here that does not answer the new ones: getattr is answered from it.
    attr: Option<Attr>,
    /// Whether the kernel's cached pages of the file are what metad holds: set by an open
    /// that had the kernel drop them under this lease; cleared by changes made here that
    /// bypass the page cache. Later opens then keep the pages.
    pages_valid: bool,
    /// Known to have no `security.capability` attribute, which the kernel asks for before
    /// every write (to drop it); forgotten with `attr`.
    lacks_capability: bool,
    /// Every name in this directory with the inode it names and its readdir cookie, while
    /// this mount knows them all: since it made the directory, kept up to date by the
    /// changes it makes there, and dropped by any whose outcome is unsure. Another mount's
    /// change recalls the lease first, and with it this. A lookup of a name not in it needs
    /// no metad request (the name is not there), nor does a listing.
    listing: Option<Listing>,
    /// Known to have no default ACL (a directory this mount made where there was none), so
    /// what is made in it takes the creator's umask: this mount may make it itself.
    plain: bool,
    /// Known to have no access ACL (made here, where no default ACL was inherited), so a
    /// mode change rewrites nothing else: this mount may change its attributes itself.
    no_acl: bool,
    /// A symlink's target, when this mount made it: readlink needs no request.
    target: Option<Vec<u8>>,
    /// The file's layout as metad answered it under this lease: later opens read through it
    /// while the kept attributes are those it came with (a change made here answers new
    /// ones or drops them; one made elsewhere recalls the lease).
    layout: Option<Arc<Layout>>,
}

#[derive(Default)]
struct State {
    /// Bumped by every recall; requests note it before they are sent.
    epoch: u64,
    /// Bumped by every change this mount makes to kept attributes.
    changes: u64,
    /// The count of changes as of the latest change made here to each inode (those older
    /// than `all_changed` forgotten): an answer about the inode from a request started
    /// before it may predate it, and is not kept.
    changed: HashMap<Ino, u64>,
    /// The count of changes as of the latest change made here that may have reached any
    /// inode (one this mount cannot name), or as of which `changed` was last emptied.
    all_changed: u64,
    held: HashMap<Ino, Held>,
    /// The epoch of the latest recall of each inode.
    recalled: HashMap<Ino, u64>,
    /// Answers older than this epoch are treated as raced with a recall.
    forgotten: u64,
    /// Recalls not yet settled.
    pending: HashMap<Ino, Recall>,
    /// Reads answered here whose atime update metad has not acknowledged yet (see
    /// `core/accesses.rs`): replies to the kernel show each file's atime as at least this.
    accessed: HashMap<Ino, Accessed>,
}

/// A read's atime update on its way to metad.
#[derive(Clone, Copy)]
struct Accessed {
    at: Timestamp,
    /// Taken into a batch being sent.
    sending: bool,
}

impl State {
    /// `attr` with the atime of a read answered here that metad has not recorded yet.
    fn shown(&self, attr: &Attr) -> Attr {
        let mut shown = attr.clone();
        if let Some(accessed) = self.accessed.get(&attr.ino) {
            shown.atime = shown.atime.max(accessed.at);
        }
        shown
    }

    /// Whether this mount changed `ino` since a request that started at `epoch`.
    fn changed_since(&self, ino: Ino, epoch: Epoch) -> bool {
        self.all_changed > epoch.changes
            || self.changed.get(&ino).is_some_and(|&at| at > epoch.changes)
    }

    /// A change made here to `inos`: answers about them from requests started before are
    /// not kept.
    fn mark_changed(&mut self, inos: &[Ino]) {
        self.changes += 1;
        if self.changed.len() >= REMEMBERED_RECALLS {
            self.changed.clear();
            self.all_changed = self.changes;
        }
        for &ino in inos {
            self.changed.insert(ino, self.changes);
        }
    }

    /// A change made here that may have reached any inode.
    fn mark_all_changed(&mut self) {
        self.changes += 1;
        self.all_changed = self.changes;
        self.changed.clear();
    }

    fn recalled_since(&self, ino: Ino, epoch: u64) -> bool {
        epoch < self.forgotten || self.recalled.get(&ino).is_some_and(|&at| at > epoch)
    }

    /// Starts a new epoch in which `ino` counts as recalled: answers about it from requests
    /// sent before are not trusted.
    fn mark_recalled(&mut self, ino: Ino) {
        self.epoch += 1;
        let epoch = self.epoch;
        if self.recalled.len() >= REMEMBERED_RECALLS {
            self.forgotten = epoch;
            self.recalled.clear();
        }
        self.recalled.insert(ino, epoch);
    }
}

/// Chooses the TTLs of one reply to the kernel.
pub struct Ttls<'a> {
    state: &'a mut State,
}

impl Ttls<'_> {
    /// How long the kernel may cache the attributes of `ino`, and the directory entry
    /// (parent, name) if the reply hands it one: long while both are leased.
    pub fn of(&mut self, ino: Ino, entry: Option<(Ino, &[u8])>) -> Duration {
        let held = &mut self.state.held;
        if !held.contains_key(&ino) {
            return NO_TTL;
        }
        match entry {
            None => LEASE_TTL,
            Some((parent, name)) => match held.get_mut(&parent) {
                Some(dir) => {
                    dir.names.insert(name.to_vec());
                    LEASE_TTL
                }
                None => NO_TTL,
            },
        }
    }

    /// `attr` as the kernel is to see it: with the atime of a read answered here that metad
    /// has not recorded yet.
    pub fn shown(&self, attr: &Attr) -> Attr {
        self.state.shown(attr)
    }

    /// Whether an open of `ino` may keep the kernel's cached pages (`FOPEN_KEEP_CACHE`).
    /// An open that may not makes the kernel drop them, so under a lease the next open may.
    pub fn keep_pages(&mut self, ino: Ino) -> bool {
        let Some(held) = self.state.held.get_mut(&ino) else { return false };
        std::mem::replace(&mut held.pages_valid, true)
    }
}

/// The point in the recall sequence, and in this mount's own changes, a request started at
/// (see [`Leases::epoch`]).
#[derive(Clone, Copy, Debug)]
pub struct Epoch {
    recalls: u64,
    changes: u64,
}

/// How long a recall that could not be settled waits before it is tried again.
const RECALL_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// A lease taken away, to be settled: buffered writes committed, caches dropped, and the
/// lease released.
#[derive(Default)]
pub struct Recall {
    /// The grant to release; `None` when metad already dropped the lease (a new session).
    pub seq: Option<u64>,
    /// A write lease: buffered writes must be committed first.
    pub write: bool,
    /// Directory entries the kernel may still cache.
    names: HashSet<Vec<u8>>,
}

/// Whether an answer with `attr` is about a file with no name left, on which metad grants no
/// read lease: opens of it are always told to metad, and a mount that keeps looking at it
/// cannot keep it from going.
pub fn nameless_read_lease(attr: &Attr) -> bool {
    attr.nlink == 0
}

pub struct Leases {
    state: Mutex<State>,
    notifier: OnceLock<Notifier>,
    recalls: mpsc::UnboundedSender<Ino>,
    /// The metad that granted the leases held (its incarnation, 0 before the first session):
    /// changed under the table's lock, as changes are queued under it (`crate::journal`).
    incarnation: watch::Sender<u64>,
    /// Whether the connection to metad was lost and no session started on another since.
    disconnected: AtomicBool,
}

impl Leases {
    /// Stops trusting the read leases held, as when the connection to metad is lost:
    /// nothing is served from them any more, and they are settled as recalls are (the
    /// kernel's caches dropped, the leases given back). See `core/trust.rs`.
    pub fn distrust(&self) {
        let mut state = self.lock();
        let reads: Vec<Ino> =
            state.held.iter().filter(|(_, held)| !held.write).map(|(ino, _)| *ino).collect();
        for ino in reads {
            state.mark_recalled(ino);
            self.take_away(&mut state, ino, None);
        }
    }

    /// Takes away every lease held, write leases too: metad may no longer keep other mounts
    /// from what they cover (see `core/trust.rs`). What they buffered stays buffered, to be
    /// committed when metad answers again.
    pub fn distrust_all(&self) {
        self.forget_all(&mut self.lock());
    }

    /// The lease table and the receiver of inodes whose recall must be settled.
    pub fn new() -> (Leases, mpsc::UnboundedReceiver<Ino>) {
        let (recalls, receiver) = mpsc::unbounded_channel();
        let leases = Leases {
            state: Mutex::default(),
            notifier: OnceLock::new(),
            recalls,
            incarnation: watch::Sender::new(0),
            disconnected: AtomicBool::new(false),
        };
        (leases, receiver)
    }

    /// The incarnation of the metad that granted the leases held now; read under the
    /// table's lock, it is that of the leases a change queued there was made under.
    pub fn incarnation(&self) -> u64 {
        *self.incarnation.borrow()
    }

    /// Follows the incarnation of the metad that grants the leases.
    pub fn incarnations(&self) -> watch::Receiver<u64> {
        self.incarnation.subscribe()
    }

    /// Whether the connection to metad was lost and no session has started since.
    pub fn disconnected(&self) -> bool {
        self.disconnected.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Where the FUSE session's notifier goes once the session exists.
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    pub fn notifier(&self) -> Option<&Notifier> {
        self.notifier.get()
    }

    /// Noted before a request that grants leases is sent.
    pub fn epoch(&self) -> Epoch {
        let state = self.lock();
        Epoch { recalls: state.epoch, changes: state.changes }
    }

    /// Records the leases an answer to a request sent at `epoch` granted, except on inodes
    /// recalled since: that recall may be for this very grant.
    pub fn granted(&self, epoch: Epoch, inos: &[Ino], write: bool) {
        let mut state = self.lock();
        for &ino in inos {
            if !state.recalled_since(ino, epoch.recalls) {
                state.held.entry(ino).or_default().write |= write;
            }
        }
    }

    /// Records the lease an answer with `attr` granted, as [`Leases::granted`] does, and
    /// keeps the attributes while the lease lasts, unless this mount changed something since
    /// the request started: the answer may predate that change. An answer about a file with
    /// no name left grants no read lease (see [`nameless_read_lease`]).
    pub fn granted_attr(&self, epoch: Epoch, attr: &Attr, write: bool) {
        if !write && nameless_read_lease(attr) {
            return;
        }
        let mut state = self.lock();
        if !state.recalled_since(attr.ino, epoch.recalls) {
            let current = !state.changed_since(attr.ino, epoch);
            let held = state.held.entry(attr.ino).or_default();
            held.write |= write;
            if current {
                held.attr = Some(attr.clone());
            }
        }
    }

    /// After a change made here that answered `attr`: keeps it if the lease is still held
    /// and nothing else changed since the request started at `epoch`, else forgets it.
    pub fn update_attr(&self, epoch: Epoch, attr: &Attr) {
        self.update_attrs(epoch, &[attr]);
    }

    /// [`Leases::update_attr`] for every inode one change answered about.
    pub fn update_attrs(&self, epoch: Epoch, attrs: &[&Attr]) {
        let mut state = self.lock();
        let current: Vec<bool> =
            attrs.iter().map(|attr| !state.changed_since(attr.ino, epoch)).collect();
        state.mark_changed(&attrs.iter().map(|attr| attr.ino).collect::<Vec<_>>());
        for (attr, current) in attrs.iter().zip(current) {
            if let Some(held) = state.held.get_mut(&attr.ino) {
                held.attr = current.then(|| (*attr).clone());
            }
        }
    }

    /// An answer from a request started at `epoch` showed `ino` without a
    /// `security.capability` attribute: kept while the lease is and nothing changes here.
    pub fn lacks_capability_since(&self, epoch: Epoch, ino: Ino) {
        let mut state = self.lock();
        if !state.recalled_since(ino, epoch.recalls)
            && !state.changed_since(ino, epoch)
            && let Some(held) = state.held.get_mut(&ino)
        {
            held.lacks_capability = true;
        }
    }

    /// Whether `ino` is known, under its lease, to have no `security.capability`.
    pub fn lacks_capability(&self, ino: Ino) -> bool {
        self.lock().held.get(&ino).is_some_and(|h| h.lacks_capability)
    }

    /// `attr` as this mount shows it (see [`Ttls::shown`]).
    pub fn shown(&self, attr: &Attr) -> Attr {
        self.lock().shown(attr)
    }

    /// A read of `ino` at `at` moved its atime: shown here at once, sent to metad later (see
    /// `core/accesses.rs`). Returns how many such updates wait to be sent.
    pub fn accessed(&self, ino: Ino, at: Timestamp) -> usize {
        let mut state = self.lock();
        let accessed = state.accessed.entry(ino).or_insert(Accessed { at, sending: false });
        if at >= accessed.at {
            *accessed = Accessed { at, sending: false };
        }
        state.accessed.values().filter(|a| !a.sending).count()
    }

    /// Takes the atime updates waiting to be sent (of `only`, or all) into a batch.
    pub fn accesses_to_send(&self, only: Option<Ino>) -> Vec<Access> {
        let mut state = self.lock();
        let waiting = state
            .accessed
            .iter_mut()
            .filter(|(ino, a)| !a.sending && only.is_none_or(|only| only == **ino));
        waiting
            .map(|(&ino, accessed)| {
                accessed.sending = true;
                Access { ino, at: accessed.at }
            })
            .collect()
    }

    /// A batch from [`Leases::accesses_to_send`] was answered (`recorded`, or given up on):
    /// its updates are no longer waiting, except those overtaken by a later read. What metad
    /// recorded is kept in the attributes held under the leases, as metad now has them:
    /// otherwise the next read would find the atime due again (relatime), move it once more
    /// and have the kernel ask for the attributes again.
    pub fn accesses_sent(&self, sent: &[Access], recorded: bool) {
        let mut state = self.lock();
        for access in sent {
            if state.accessed.get(&access.ino).is_some_and(|a| a.sending && a.at == access.at) {
                state.accessed.remove(&access.ino);
            }
            if recorded
                && let Some(attr) = state.held.get_mut(&access.ino).and_then(|h| h.attr.as_mut())
            {
                attr.atime = attr.atime.max(access.at);
            }
        }
    }

    /// The attributes kept under the lease on `ino`.
    pub fn cached_attr(&self, ino: Ino) -> Option<Attr> {
        self.lock().held.get(&ino).and_then(|h| h.attr.clone())
    }

    /// Leases this mount holds now.
    pub fn held_count(&self) -> u64 {
        self.lock().held.len() as u64
    }

    /// A change made here took a name of `ino` away, perhaps its last: nothing is served
    /// from its lease any more (an open of it asks metad, and learns whether it is gone), and
    /// answers about it that raced with the change are not trusted. The kernel saw the
    /// change, so its caches need no invalidation.
    pub fn name_removed(&self, ino: Ino) {
        let mut state = self.lock();
        state.mark_recalled(ino);
        state.held.remove(&ino);
    }

    /// Forgets kept attributes after a change made here: of `ino`, or of every inode when
    /// the change may reach inodes this mount cannot name (unlink, rename).
    pub fn forget_attrs(&self, ino: Option<Ino>) {
        let mut state = self.lock();
        // Answers to requests started before are not kept either.
        match ino {
            Some(ino) => state.mark_changed(&[ino]),
            None => state.mark_all_changed(),
        }
        match ino {
            Some(ino) => {
                if let Some(held) = state.held.get_mut(&ino) {
                    held.attr = None;
                    held.lacks_capability = false;
                }
            }
            None => state.held.values_mut().for_each(|h| {
                h.attr = None;
                h.lacks_capability = false;
            }),
        }
    }

    /// Starts the listing of directory `dir` in `parent`, made here by a request sent at
    /// `epoch`: it is empty, unless the lease on it was recalled since (another mount may
    /// have used it). `plain`: it has no default ACL.
    pub fn listed_empty(&self, epoch: Epoch, dir: Ino, parent: Ino, plain: bool) {
        let mut state = self.lock();
        if !state.recalled_since(dir, epoch.recalls)
            && let Some(held) = state.held.get_mut(&dir)
        {
            held.listing = Some(Listing::empty(parent));
            held.plain = plain;
        }
    }

    /// Whether `name` is known not to be in directory `dir`.
    pub fn known_absent(&self, dir: Ino, name: &[u8]) -> bool {
        let state = self.lock();
        let listing = state.held.get(&dir).and_then(|h| h.listing.as_ref());
        listing.is_some_and(|names| !names.contains(name)) && name != b"." && name != b".."
    }

    /// The attributes of what `name` names in `dir`, known here: the name is in the listing
    /// kept under the directory's lease and the inode's attributes under its own, so a
    /// lookup needs no metad request (the kernel has checked the search permission).
    pub fn known_entry(&self, dir: Ino, name: &[u8]) -> Option<Attr> {
        let state = self.lock();
        let named = state.held.get(&dir)?.listing.as_ref()?.get(name)?;
        state.held.get(&named.ino)?.attr.clone()
    }

    /// Up to `limit` entries of directory `dir` after readdir cookie `after`, with the
    /// directory's parent, as metad would answer them, if this mount knows them: the whole
    /// listing, the parent, and the attributes of each entry listed.
    pub fn listed(&self, dir: Ino, after: u64, limit: usize) -> Option<(Ino, Vec<DirEntry>)> {
        let state = self.lock();
        let listing = state.held.get(&dir)?.listing.as_ref()?;
        let entry = |(name, named): (&[u8], Named)| {
            let attr = state.held.get(&named.ino)?.attr.clone()?;
            Some(DirEntry { name: name.to_vec(), cookie: named.cookie, attr })
        };
        let page = listing.after(after, limit).into_iter().map(entry).collect::<Option<_>>()?;
        Some((listing.parent?, page))
    }

    /// A change made here added `name` for `ino` in `dir`, with readdir cookie `cookie`.
    pub fn listing_added(&self, dir: Ino, name: &[u8], ino: Ino, cookie: u64) {
        let mut state = self.lock();
        if let Some(names) = state.held.get_mut(&dir).and_then(|h| h.listing.as_mut()) {
            names.insert(name, Named { ino, cookie });
        }
    }

    /// A change made here removed `name` in `dir`.
    pub fn listing_removed(&self, dir: Ino, name: &[u8]) {
        let mut state = self.lock();
        if let Some(names) = state.held.get_mut(&dir).and_then(|h| h.listing.as_mut()) {
            names.remove(name);
        }
    }

    /// A rename made here may have moved directories out of `dir`: their parents are no
    /// longer known.
    pub fn moved_from(&self, dir: Ino) {
        let mut state = self.lock();
        let listings = state.held.values_mut().filter_map(|h| h.listing.as_mut());
        for listing in listings.filter(|l| l.parent == Some(dir)) {
            listing.parent = None;
        }
    }

    /// The target of symlink `ino`, if this mount made it.
    pub fn known_target(&self, ino: Ino) -> Option<Vec<u8>> {
        self.lock().held.get(&ino)?.target.clone()
    }

    /// Whether `ino` is known to have no ACL (see `Held::no_acl`).
    pub fn known_without_acl(&self, ino: Ino) -> bool {
        self.lock().held.get(&ino).is_some_and(|held| held.no_acl)
    }

    /// `ino` may have gained an ACL: an access ACL, or with `default` a default ACL (which
    /// changes what is made in the directory from now on).
    pub fn acl_changed(&self, ino: Ino, default: bool) {
        if let Some(held) = self.lock().held.get_mut(&ino) {
            held.no_acl = false;
            held.plain &= !default;
        }
    }

    /// A change made here may have changed the names in `dir` in ways it cannot tell.
    pub fn forget_listing(&self, dir: Ino) {
        if let Some(held) = self.lock().held.get_mut(&dir) {
            held.listing = None;
        }
    }

    /// A layout fetched by a request sent at `epoch`: kept under the file's lease, with its
    /// attributes, unless the lease was recalled or this mount changed something since.
    pub fn keep_layout(&self, epoch: Epoch, layout: &Arc<Layout>) {
        let mut state = self.lock();
        let ino = layout.attr.ino;
        if state.changed_since(ino, epoch) || state.recalled_since(ino, epoch.recalls) {
            return;
        }
        if let Some(held) = state.held.get_mut(&ino) {
            held.attr = Some(layout.attr.clone());
            held.layout = Some(layout.clone());
        }
    }

    /// The layout kept under the lease on `ino`, if the file is as it was when it came.
    pub fn cached_layout(&self, ino: Ino) -> Option<Arc<Layout>> {
        let state = self.lock();
        let held = state.held.get(&ino)?;
        let (layout, attr) = (held.layout.as_ref()?, held.attr.as_ref()?);
        describes(layout, attr).then(|| layout.clone())
    }

    /// Forgets the layout kept for `ino`: it named shards that could not be read.
    pub fn drop_layout(&self, ino: Ino) {
        if let Some(held) = self.lock().held.get_mut(&ino) {
            held.layout = None;
        }
    }

    /// Whether the next open of `ino` keeps the kernel's cached pages (as things stand).
    pub fn pages_valid(&self, ino: Ino) -> bool {
        self.lock().held.get(&ino).is_some_and(|h| h.pages_valid)
    }

    /// The file's data changed here by a path that bypasses the kernel's page cache.
    pub fn pages_changed(&self, ino: Ino) {
        if let Some(held) = self.lock().held.get_mut(&ino) {
            held.pages_valid = false;
        }
    }

    pub fn holds_write(&self, ino: Ino) -> bool {
        self.lock().held.get(&ino).is_some_and(|h| h.write)
    }

    pub fn holds(&self, ino: Ino) -> bool {
        self.lock().held.contains_key(&ino)
    }

    /// Runs `reply`, which answers the kernel with TTLs from [`Ttls::of`], under the state
    /// lock (see the module docs).
    pub fn reply<R>(&self, reply: impl FnOnce(&mut Ttls) -> R) -> R {
        let mut state = self.lock();
        reply(&mut Ttls { state: &mut state })
    }

    /// Whether a recall of a write lease on `ino` waits to be settled.
    pub fn write_recall_pending(&self, ino: Ino) -> bool {
        self.lock().pending.get(&ino).is_some_and(|r| r.write)
    }

    /// Takes the pending recall of `ino`, if any, out of the table.
    pub fn take_recall(&self, ino: Ino) -> Option<Recall> {
        self.lock().pending.remove(&ino)
    }

    /// Puts back a recall that cannot be settled yet (its buffered writes cannot be
    /// committed), to be tried again after [`RECALL_RETRY`].
    pub fn recall_again(&self, ino: Ino, recall: Recall) {
        {
            let mut state = self.lock();
            let pending = state.pending.entry(ino).or_default();
            pending.seq = pending.seq.max(recall.seq);
            pending.write |= recall.write;
            pending.names.extend(recall.names);
        }
        let recalls = self.recalls.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RECALL_RETRY).await;
            let _ = recalls.send(ino);
        });
    }

    /// Drops what the kernel caches of `ino` under a recalled lease: attributes, data pages
    /// and, for a directory, the entries it was given. Must not run inside a request on the
    /// inode (the kernel may hold its pages or its lock while it waits for the answer).
    pub fn invalidate(&self, ino: Ino, recall: &Recall) {
        let Some(notifier) = self.notifier.get() else { return };
        if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
            debug!(ino, "kernel inode invalidation: {e}");
        }
        for name in &recall.names {
            let _ = notifier.inval_entry(INodeNo(ino), OsStr::from_bytes(name));
        }
    }

    /// Makes the kernel forget the attributes it cached of `ino` after a change it did not
    /// see (set-id bits cleared here, an atime update for reads it served from its pages).
    /// Pages stay, so this never waits on a request of the kernel's.
    pub fn forget_kernel_attrs(&self, ino: Ino) {
        if let Some(notifier) = self.notifier.get() {
            let _ = notifier.inval_inode(INodeNo(ino), -1, 0);
        }
    }

    /// Stops trusting every answer and lease so far: each lease is taken away (to be
    /// settled without a release: metad dropped it, or recalls it if not).
    fn forget_all(&self, state: &mut State) {
        state.epoch += 1;
        state.forgotten = state.epoch;
        state.recalled.clear();
        let inos: Vec<Ino> = state.held.keys().copied().collect();
        for ino in inos {
            self.take_away(state, ino, None);
        }
    }

    /// Takes the lease on `ino` away, to be settled by the recall task.
    fn take_away(&self, state: &mut State, ino: Ino, seq: Option<u64>) {
        let held = state.held.remove(&ino).unwrap_or_default();
        let recall = state.pending.entry(ino).or_default();
        recall.seq = recall.seq.max(seq);
        recall.write |= held.write;
        recall.names.extend(held.names);
        let _ = self.recalls.send(ino);
    }
}

impl SessionEvents for Leases {
    fn pushed(&self, push: MetaPush) {
        let MetaPush::Recall { ino, seq } = push;
        let mut state = self.lock();
        state.mark_recalled(ino);
        // Nothing may be served from the lease from here on.
        self.take_away(&mut state, ino, Some(seq));
    }

    fn session_started(&self, incarnation: u64) {
        // metad dropped every read lease of this mount, and if it took over from another,
        // every lease: the kernel's caches go, and what the mount changed under its write
        // leases is committed as they are settled.
        let mut state = self.lock();
        self.forget_all(&mut state);
        self.incarnation.send_replace(incarnation);
        self.disconnected.store(false, Ordering::SeqCst);
    }

    fn connection_lost(&self) {
        // metad dropped the read leases: nothing may be served from them any more.
        self.disconnected.store(true, Ordering::SeqCst);
        self.distrust();
    }
}
