//! Kernel types to the core's and back: times, attributes, credentials, flags, and the
//! replies several requests share.

use std::ffi::OsStr;
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileType, FopenFlags, Generation, INodeNo, ReplyAttr, ReplyEntry, ReplyXattr,
    Request, TimeOrNow,
};
use shardfs_meta_api::proto::{Attr, Cred, FileKind, Ino, LockKind, SetTime, Timestamp};

use super::PREFERRED_IO_SIZE;
use crate::error::FsError;
use crate::leases::{Leases, Ttls};
use shardfs_rpc::sync::Lock as _;

/// `t` for the kernel. metad refuses invalid times, but what comes over the network is not
/// trusted to be in range: out-of-range nanoseconds count as zero, and a time the system
/// cannot represent as the epoch.
pub(super) fn system_time(t: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(if t.is_valid() { u64::from(t.nsec) } else { 0 });
    let whole = Duration::from_secs(t.sec.unsigned_abs());
    let time = match t.sec >= 0 {
        true => UNIX_EPOCH.checked_add(whole),
        false => UNIX_EPOCH.checked_sub(whole),
    };
    time.and_then(|time| time.checked_add(nanos)).unwrap_or(UNIX_EPOCH)
}

pub(super) fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
        Err(e) => {
            let before = e.duration();
            let (sec, nsec) = if before.subsec_nanos() == 0 {
                (-(before.as_secs() as i64), 0)
            } else {
                (-(before.as_secs() as i64) - 1, 1_000_000_000 - before.subsec_nanos())
            };
            Timestamp { sec, nsec }
        }
    }
}

pub(super) fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(timestamp(t)),
    }
}

pub(super) fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// `attr` as the kernel is to see it (see [`Ttls::shown`]).
pub(super) fn file_attr(ttls: &Ttls, attr: &Attr) -> FileAttr {
    let attr = &ttls.shown(attr);
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.allocated.div_ceil(512),
        atime: system_time(attr.atime),
        mtime: system_time(attr.mtime),
        ctime: system_time(attr.ctime),
        crtime: system_time(attr.ctime),
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: PREFERRED_IO_SIZE,
        flags: 0,
    }
}

pub(super) fn lock_kind(typ: i32) -> Option<LockKind> {
    match typ {
        libc::F_RDLCK => Some(LockKind::Read),
        libc::F_WRLCK => Some(LockKind::Write),
        _ => None,
    }
}

pub(super) fn lock_type(kind: LockKind) -> i32 {
    match kind {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
    }
}

/// The caller; `umask` where the kernel passes one (new inodes), else 0. Supplementary
/// groups are read from /proc for callers other than root (root passes every check
/// without them), and kept for [`GROUPS_KEPT`] per process and ids.
pub(super) fn cred(req: &Request, umask: u32) -> Cred {
    let (uid, gid) = (req.uid(), req.gid());
    let groups = if uid == 0 { Vec::new() } else { caller_groups((req.pid(), uid, gid)) };
    Cred { uid, gid, umask, groups }
}

/// How long a process's supplementary groups are used without reading /proc again: a tool
/// making thousands of calls (`cp -a`, `tar x`) reads them once, and a process whose groups
/// change (setgroups(2) without changing its ids, which is rare) is seen with its new ones
/// this soon. A process id reused by another program with the same ids within it gets the
/// old one's groups for the rest of it.
const GROUPS_KEPT: Duration = Duration::from_secs(1);

/// Processes whose groups are kept.
const GROUPS_CACHED: usize = 1024;

/// Supplementary groups read lately, by process id, uid and gid.
type GroupCache = lru::LruCache<(u32, u32, u32), (Instant, Vec<u32>)>;

static GROUPS: LazyLock<Mutex<GroupCache>> = LazyLock::new(|| {
    let capacity = NonZeroUsize::new(GROUPS_CACHED).expect("nonzero");
    Mutex::new(lru::LruCache::new(capacity))
});

/// The supplementary groups of the process and ids `caller`, read lately or now.
fn caller_groups(caller: (u32, u32, u32)) -> Vec<u32> {
    if let Some((read, groups)) = GROUPS.locked().get(&caller)
        && read.elapsed() < GROUPS_KEPT
    {
        return groups.clone();
    }
    let groups = supplementary_groups(caller.0);
    GROUPS.locked().put(caller, (Instant::now(), groups.clone()));
    groups
}

/// The supplementary groups of process `pid`, as /proc reports them (none if it is gone).
fn supplementary_groups(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| groups.split_whitespace().filter_map(|g| g.parse().ok()).collect())
        .unwrap_or_default()
}

/// How the kernel treats a file opened with `flags`. O_APPEND writes land where this client
/// finds the end (another mount may have appended since the kernel last learned the size),
/// so they bypass the page cache, which would hold them where the kernel thought the end
/// was.
pub(super) fn fopen_flags(flags: i32) -> FopenFlags {
    match flags & libc::O_APPEND {
        0 => FopenFlags::empty(),
        _ => FopenFlags::FOPEN_DIRECT_IO,
    }
}

/// `flags` for an open of `ino`, plus `FOPEN_KEEP_CACHE` where the lease vouches for the
/// kernel's cached pages (see [`crate::leases::Ttls::keep_pages`]).
pub(super) fn with_kept_pages(ttls: &mut Ttls, ino: Ino, flags: FopenFlags) -> FopenFlags {
    match !flags.contains(FopenFlags::FOPEN_DIRECT_IO) && ttls.keep_pages(ino) {
        true => flags | FopenFlags::FOPEN_KEEP_CACHE,
        false => flags,
    }
}

/// Answers with a directory entry, cached by the kernel while leased.
pub(super) fn reply_entry(
    leases: &Leases,
    (parent, name): (Ino, &[u8]),
    reply: ReplyEntry,
    attr: &Attr,
) {
    leases.reply(|ttls| {
        let ttl = ttls.of(attr.ino, Some((parent, name)));
        reply.entry(&ttl, &file_attr(ttls, attr), Generation(attr.generation))
    })
}

/// Answers with attributes, cached by the kernel while leased.
pub(super) fn reply_attr(leases: &Leases, reply: ReplyAttr, attr: &Attr) {
    leases.reply(|ttls| reply.attr(&ttls.of(attr.ino, None), &file_attr(ttls, attr)))
}

pub(super) fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

/// getxattr/listxattr protocol: size 0 asks for the length; a short buffer is ERANGE.
pub(super) fn answer_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from(&FsError::Range));
    } else {
        reply.data(value);
    }
}
