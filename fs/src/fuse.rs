//! The FUSE adapter: converts kernel requests into calls on [`Fs`] and results into replies.
//!
//! Each request is answered from a tokio task, so a slow chunkd never stalls the threads
//! reading from /dev/fuse. Every path replies exactly once: a reply object that is dropped
//! unanswered would itself answer EIO.

use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use shardfs_meta_api::proto::{
    Attr, Cred, FileKind, Ino, LockKind, MAX_NAME_LEN, RenameMode, SetAttr, SetTime, Timestamp,
    XattrMode,
};
use tokio::runtime::Handle;
use tracing::debug;

use crate::core::Fs;
use crate::error::{FsError, FsResult};
use crate::leases::{Leases, Ttls};

/// Largest write the kernel may send in one request.
const MAX_WRITE: u32 = 1024 * 1024;
/// `st_blksize`: the I/O size tools like cp and dd prefer.
const PREFERRED_IO_SIZE: u32 = 128 * 1024;
/// Directory entries fetched from metad per readdir request.
const READDIR_BATCH: u32 = 512;

pub struct FuseAdapter {
    fs: Arc<Fs>,
    runtime: Handle,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, runtime: Handle) -> FuseAdapter {
        FuseAdapter { fs, runtime }
    }

    /// Runs `op` and answers with `ok` or the error's errno: right here on the thread that
    /// read the request if `op` completes without waiting (a getattr from the lease cache,
    /// a buffered write), else on a task, so nothing that waits holds this thread.
    fn spawn<T, R, F>(
        &self,
        name: &'static str,
        reply: R,
        op: impl FnOnce(Arc<Fs>) -> F + Send + 'static,
        ok: impl FnOnce(R, T) + Send + 'static,
    ) where
        T: Send + 'static,
        R: ErrorReply + Send + 'static,
        F: Future<Output = FsResult<T>> + Send + 'static,
    {
        let fs = self.fs.clone();
        let started = std::time::Instant::now();
        let mut answer = Box::pin(async move {
            let result = op(fs.clone()).await;
            fs.metrics().fuse_ops.record(name, result.is_ok(), started.elapsed());
            match result {
                Ok(value) => ok(reply, value),
                Err(e) => {
                    debug!(op = name, "{e}");
                    reply.error(Errno::from(&e));
                }
            }
        });
        // Handing every request to a task cost a thread wake-up per request (see
        // docs/performance.md). A first poll that finds the answer waiting skips it. Its
        // waker is a no-op: a future left pending is polled again by its task, which then
        // registers the task's own waker, so no wake-up is lost.
        let _runtime = self.runtime.enter();
        let mut first = std::task::Context::from_waker(std::task::Waker::noop());
        // A panic answers EIO (the reply is dropped unanswered), as it would on a task,
        // and leaves this thread serving.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            answer.as_mut().poll(&mut first)
        })) {
            Ok(std::task::Poll::Pending) => drop(self.runtime.spawn(answer)),
            Ok(std::task::Poll::Ready(())) => {}
            Err(_) => tracing::error!(op = name, "request handler panicked"),
        }
    }
}

/// The error half shared by every reply type.
trait ErrorReply {
    fn error(self, errno: Errno);
}

macro_rules! error_reply {
    ($($t:ty),*) => {
        $(impl ErrorReply for $t {
            fn error(self, errno: Errno) {
                <$t>::error(self, errno)
            }
        })*
    };
}
error_reply!(
    ReplyAttr,
    ReplyEntry,
    ReplyEmpty,
    ReplyData,
    ReplyOpen,
    ReplyCreate,
    ReplyWrite,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyStatfs,
    ReplyXattr,
    ReplyLseek,
    ReplyLock
);

/// `t` for the kernel. metad refuses invalid times, but what comes over the network is not
/// trusted to be in range: out-of-range nanoseconds count as zero, and a time the system
/// cannot represent as the epoch.
fn system_time(t: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(if t.is_valid() { u64::from(t.nsec) } else { 0 });
    let whole = Duration::from_secs(t.sec.unsigned_abs());
    let time = match t.sec >= 0 {
        true => UNIX_EPOCH.checked_add(whole),
        false => UNIX_EPOCH.checked_sub(whole),
    };
    time.and_then(|time| time.checked_add(nanos)).unwrap_or(UNIX_EPOCH)
}

fn timestamp(t: SystemTime) -> Timestamp {
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

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(timestamp(t)),
    }
}

fn file_type(kind: FileKind) -> FileType {
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

fn file_attr(attr: &Attr) -> FileAttr {
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

fn lock_kind(typ: i32) -> Option<LockKind> {
    match typ {
        libc::F_RDLCK => Some(LockKind::Read),
        libc::F_WRLCK => Some(LockKind::Write),
        _ => None,
    }
}

fn lock_type(kind: LockKind) -> i32 {
    match kind {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
    }
}

/// The caller; `umask` where the kernel passes one (new inodes), else 0. Supplementary
/// groups are read from /proc for callers other than root (root passes every check
/// without them).
fn cred(req: &Request, umask: u32) -> Cred {
    let groups = if req.uid() == 0 { Vec::new() } else { supplementary_groups(req.pid()) };
    Cred { uid: req.uid(), gid: req.gid(), umask, groups }
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
fn fopen_flags(flags: i32) -> FopenFlags {
    match flags & libc::O_APPEND {
        0 => FopenFlags::empty(),
        _ => FopenFlags::FOPEN_DIRECT_IO,
    }
}

/// `flags` for an open of `ino`, plus `FOPEN_KEEP_CACHE` where the lease vouches for the
/// kernel's cached pages (see [`crate::leases::Ttls::keep_pages`]).
fn with_kept_pages(ttls: &mut Ttls, ino: Ino, flags: FopenFlags) -> FopenFlags {
    match !flags.contains(FopenFlags::FOPEN_DIRECT_IO) && ttls.keep_pages(ino) {
        true => flags | FopenFlags::FOPEN_KEEP_CACHE,
        false => flags,
    }
}

/// Answers with a directory entry, cached by the kernel while leased.
fn reply_entry(leases: &Leases, (parent, name): (Ino, &[u8]), reply: ReplyEntry, attr: &Attr) {
    leases.reply(|ttls| {
        let ttl = ttls.of(attr.ino, Some((parent, name)));
        reply.entry(&ttl, &file_attr(attr), Generation(attr.generation))
    })
}

/// Answers with attributes, cached by the kernel while leased.
fn reply_attr(leases: &Leases, reply: ReplyAttr, attr: &Attr) {
    leases.reply(|ttls| reply.attr(&ttls.of(attr.ino, None), &file_attr(attr)))
}

fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            // Locks go to metad, so they hold across mounts.
            | InitFlags::FUSE_POSIX_LOCKS
            | InitFlags::FUSE_FLOCK_LOCKS
            // The kernel enforces POSIX ACLs; metad keeps them consistent with the mode and
            // applies the umask itself, since a default ACL replaces it.
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DONT_MASK
            // File handles (name_to_handle_at, NFS export): inode numbers are stable and
            // lookups of "." and ".." find an inode and a directory's parent by number.
            | InitFlags::FUSE_EXPORT_SUPPORT;
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_bytes(name);
        let cred = cred(req, 0);
        let (leases, entry_name) = (self.fs.leases(), name.clone());
        self.spawn(
            "lookup",
            reply,
            move |fs| async move { fs.lookup(parent.0, &name, &cred).await },
            move |reply, attr| reply_entry(&leases, (parent.0, &entry_name), reply, &attr),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let leases = self.fs.leases();
        self.spawn(
            "getattr",
            reply,
            move |fs| async move { fs.get_attr(ino.0).await },
            move |reply, attr| reply_attr(&leases, reply, &attr),
        );
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        let cred = cred(req, 0);
        let leases = self.fs.leases();
        self.spawn(
            "setattr",
            reply,
            move |fs| async move { fs.set_attr(ino.0, cred, changes).await },
            move |reply, attr| reply_attr(&leases, reply, &attr),
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(
            "readlink",
            reply,
            move |fs| async move { fs.read_link(ino.0).await },
            |reply, target| reply.data(&target),
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (name, cred) = (name_bytes(name), cred(req, umask));
        let (leases, entry_name) = (self.fs.leases(), name.clone());
        self.spawn(
            "mknod",
            reply,
            move |fs| async move { fs.make_node(parent.0, &name, mode, rdev, cred).await },
            move |reply, attr| reply_entry(&leases, (parent.0, &entry_name), reply, &attr),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (name, cred) = (name_bytes(name), cred(req, umask));
        let (leases, entry_name) = (self.fs.leases(), name.clone());
        self.spawn(
            "mkdir",
            reply,
            move |fs| async move { fs.make_dir(parent.0, &name, mode, cred).await },
            move |reply, attr| reply_entry(&leases, (parent.0, &entry_name), reply, &attr),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        let cred = cred(req, 0);
        self.spawn(
            "unlink",
            reply,
            move |fs| async move { fs.unlink(parent.0, &name, &cred).await },
            |reply, ()| reply.ok(),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        let cred = cred(req, 0);
        self.spawn(
            "rmdir",
            reply,
            move |fs| async move { fs.remove_dir(parent.0, &name, &cred).await },
            |reply, ()| reply.ok(),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, cred) = (name_bytes(link_name), cred(req, 0));
        let (leases, entry_name) = (self.fs.leases(), name.clone());
        let target = target.as_os_str().as_bytes().to_vec();
        self.spawn(
            "symlink",
            reply,
            move |fs| async move { fs.symlink(parent.0, &name, &target, cred).await },
            move |reply, attr| reply_entry(&leases, (parent.0, &entry_name), reply, &attr),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else if flags == RenameFlags::RENAME_WHITEOUT {
            RenameMode::Whiteout { no_replace: false }
        } else if flags == RenameFlags::RENAME_WHITEOUT | RenameFlags::RENAME_NOREPLACE {
            RenameMode::Whiteout { no_replace: true }
        } else {
            return reply.error(Errno::EINVAL);
        };
        let (name, new_name) = (name_bytes(name), name_bytes(newname));
        let cred = cred(req, 0);
        self.spawn(
            "rename",
            reply,
            move |fs| async move {
                fs.rename(parent.0, &name, newparent.0, &new_name, mode, &cred).await
            },
            |reply, ()| reply.ok(),
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = name_bytes(newname);
        let (leases, entry_name) = (self.fs.leases(), name.clone());
        let cred = cred(req, 0);
        self.spawn(
            "link",
            reply,
            move |fs| async move { fs.link(ino.0, newparent.0, &name, &cred).await },
            move |reply, attr| reply_entry(&leases, (newparent.0, &entry_name), reply, &attr),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let open_flags = fopen_flags(flags.0);
        let reading = flags.0 & libc::O_ACCMODE != libc::O_WRONLY;
        let leases = self.fs.leases();
        self.spawn(
            "open",
            reply,
            move |fs| async move { fs.open(ino.0, reading).await },
            move |reply, fh| {
                leases.reply(|ttls| {
                    reply.opened(FileHandle(fh), with_kept_pages(ttls, ino.0, open_flags))
                })
            },
        );
    }

    /// Directories are opened like files, so metad keeps one that is removed while open
    /// alive until it is closed. Under a lease the kernel keeps the listing it read; a
    /// recall drops it.
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let leases = self.fs.leases();
        self.spawn(
            "opendir",
            reply,
            move |fs| async move { fs.open(ino.0, false).await },
            move |reply, fh| {
                leases.reply(|ttls| {
                    let flags = match ttls.of(ino.0, None).is_zero() {
                        true => FopenFlags::empty(),
                        false => FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                    };
                    reply.opened(FileHandle(fh), flags)
                })
            },
        );
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.release(req, ino, fh, flags, None, false, reply);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(
            "read",
            reply,
            move |fs| async move {
                let data = fs.read(fh.0, offset, size).await?;
                fs.metrics().bytes_read.inc_by(data.len() as u64);
                Ok(data)
            },
            |reply, data| reply.data(&data),
        );
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        let writer = (flags.0 & libc::O_APPEND != 0).then(|| cred(req, 0));
        let leases = self.fs.leases();
        self.spawn(
            "write",
            reply,
            move |fs| async move {
                let written = fs.write(fh.0, offset, &data, writer.as_ref()).await?;
                fs.metrics().bytes_written.inc_by(u64::from(written.0));
                Ok(written)
            },
            move |reply, (written, mode_changed)| {
                reply.written(written);
                if mode_changed {
                    leases.forget_kernel_attrs(ino.0);
                }
            },
        );
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.spawn(
            "flush",
            reply,
            move |fs| async move {
                fs.closed_by(fh.0, ino.0, lock_owner.0).await?;
                fs.flush(fh.0).await
            },
            |reply, ()| reply.ok(),
        );
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        flock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(
            "release",
            reply,
            move |fs| async move {
                // The last close of an open file drops its flock lock.
                if let Some(owner) = flock_owner {
                    fs.release_locks(ino.0, owner.0).await?;
                }
                fs.release(fh.0).await
            },
            |reply, ()| reply.ok(),
        );
    }

    /// No ioctls are supported; ENOTTY is what tools probing a regular file (isatty, FS_IOC_*)
    /// expect, and answering it here keeps those probes out of the log.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let Some(kind) = lock_kind(typ) else { return reply.error(Errno::EINVAL) };
        self.spawn(
            "getlk",
            reply,
            move |fs| async move { fs.test_lock(ino.0, lock_owner.0, (start, end), kind).await },
            move |reply, conflict| match conflict {
                Some(held) => reply.locked(held.start, held.end, lock_type(held.kind), held.pid),
                None => reply.locked(start, end, libc::F_UNLCK, 0),
            },
        );
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let lock = match typ {
            libc::F_UNLCK => None,
            other => match lock_kind(other) {
                Some(kind) => Some((kind, pid)),
                None => return reply.error(Errno::EINVAL),
            },
        };
        self.spawn(
            "setlk",
            reply,
            move |fs| async move {
                fs.set_lock(fh.0, ino.0, lock_owner.0, (start, end), lock, sleep).await
            },
            |reply, ()| reply.ok(),
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(
            "fsync",
            reply,
            move |fs| async move { fs.fsync(fh.0).await },
            |reply, ()| reply.ok(),
        );
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(
            "fsyncdir",
            reply,
            move |fs| async move { fs.sync().await },
            |reply, ()| reply.ok(),
        );
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let cred = cred(req, 0);
        self.spawn(
            "readdir",
            reply,
            move |fs| async move { fs.read_dir(ino.0, offset, READDIR_BATCH, &cred).await },
            move |mut reply, (parent, entries)| {
                let dots = [(1, ino.0, "."), (2, parent, "..")];
                for (cookie, dot_ino, name) in dots {
                    if offset < cookie
                        && reply.add(INodeNo(dot_ino), cookie, FileType::Directory, name)
                    {
                        return reply.ok();
                    }
                }
                for entry in entries {
                    let name = OsStr::from_bytes(&entry.name);
                    let kind = file_type(entry.attr.kind);
                    if reply.add(INodeNo(entry.attr.ino), entry.cookie, kind, name) {
                        break;
                    }
                }
                reply.ok();
            },
        );
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let leases = self.fs.leases();
        let cred = cred(req, 0);
        self.spawn(
            "readdirplus",
            reply,
            move |fs| async move {
                let dir = fs.get_attr(ino.0).await?;
                let (parent, entries) = fs.read_dir(ino.0, offset, READDIR_BATCH, &cred).await?;
                Ok((dir, parent, entries))
            },
            move |mut reply, (dir, parent, entries)| {
                leases.reply(|ttls| {
                    // The kernel ignores the attributes of "." and "..".
                    let dir_attr = file_attr(&dir);
                    let dots = [(1, ino.0, "."), (2, parent, "..")];
                    for (cookie, dot_ino, name) in dots {
                        let attr = FileAttr { ino: INodeNo(dot_ino), ..dir_attr };
                        let ttl = ttls.of(dot_ino, None);
                        if offset < cookie
                            && reply.add(INodeNo(dot_ino), cookie, name, &ttl, &attr, Generation(0))
                        {
                            return reply.ok();
                        }
                    }
                    for entry in entries {
                        let ttl = ttls.of(entry.attr.ino, Some((ino.0, &entry.name)));
                        let name = OsStr::from_bytes(&entry.name);
                        let attr = file_attr(&entry.attr);
                        let generation = Generation(entry.attr.generation);
                        if reply.add(
                            INodeNo(entry.attr.ino),
                            entry.cookie,
                            name,
                            &ttl,
                            &attr,
                            generation,
                        ) {
                            break;
                        }
                    }
                    reply.ok();
                })
            },
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(
            "statfs",
            reply,
            |fs| async move { fs.stat_fs().await },
            |reply, stat| {
                const BLOCK: u64 = 4096;
                // Inodes are rows in metad: report a large pool, as btrfs and XFS do.
                const INODE_POOL: u64 = 1 << 32;
                reply.statfs(
                    stat.capacity_bytes / BLOCK,
                    stat.free_bytes / BLOCK,
                    stat.free_bytes / BLOCK,
                    INODE_POOL,
                    INODE_POOL.saturating_sub(stat.inodes),
                    BLOCK as u32,
                    MAX_NAME_LEN as u32,
                    BLOCK as u32,
                )
            },
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mode = match flags {
            0 => XattrMode::Any,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        let (name, value) = (name_bytes(name), value.to_vec());
        let cred = cred(req, 0);
        self.spawn(
            "setxattr",
            reply,
            move |fs| async move { fs.set_xattr(ino.0, &name, &value, mode, &cred).await },
            |reply, ()| reply.ok(),
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name_bytes(name);
        let cred = cred(req, 0);
        self.spawn(
            "getxattr",
            reply,
            move |fs| async move { fs.get_xattr(ino.0, &name, &cred).await },
            move |reply, value| answer_xattr(reply, size, &value),
        );
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let cred = cred(req, 0);
        self.spawn(
            "listxattr",
            reply,
            move |fs| async move { fs.list_xattr(ino.0, &cred).await },
            move |reply, names| {
                let mut list = Vec::new();
                for name in names {
                    list.extend_from_slice(&name);
                    list.push(0);
                }
                answer_xattr(reply, size, &list)
            },
        );
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        let cred = cred(req, 0);
        self.spawn(
            "removexattr",
            reply,
            move |fs| async move { fs.remove_xattr(ino.0, &name, &cred).await },
            |reply, ()| reply.ok(),
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission bits are checked by the kernel (default_permissions); here only
        // existence is left to answer.
        self.spawn(
            "access",
            reply,
            move |fs| async move { fs.get_attr(ino.0).await },
            |reply, _| reply.ok(),
        );
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let caller = cred(req, 0);
        let leases = self.fs.leases();
        self.spawn(
            "fallocate",
            reply,
            move |fs| async move { fs.allocate(fh.0, offset, length, mode, &caller).await },
            move |reply, mode_changed| {
                reply.ok();
                if mode_changed {
                    leases.forget_kernel_attrs(ino.0);
                }
            },
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.spawn(
            "lseek",
            reply,
            move |fs| async move { fs.seek(fh.0, offset, whence).await },
            |reply, offset| reply.offset(offset),
        );
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        self.spawn(
            "copy_file_range",
            reply,
            move |fs| async move {
                fs.copy_range((fh_in.0, offset_in), (fh_out.0, offset_out), len).await
            },
            |reply, copied| reply.written(copied),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let open_flags = fopen_flags(flags);
        let (name, cred) = (name_bytes(name), cred(req, umask));
        let (leases, entry_name) = (self.fs.leases(), name.clone());
        self.spawn(
            "create",
            reply,
            move |fs| async move { fs.create(parent.0, &name, mode, cred).await },
            move |reply, (attr, fh)| {
                leases.reply(|ttls| {
                    let ttl = ttls.of(attr.ino, Some((parent.0, &entry_name)));
                    let flags = with_kept_pages(ttls, attr.ino, open_flags);
                    reply.created(
                        &ttl,
                        &file_attr(&attr),
                        Generation(attr.generation),
                        FileHandle(fh),
                        flags,
                    )
                })
            },
        );
    }
}

/// getxattr/listxattr protocol: size 0 asks for the length; a short buffer is ERANGE.
fn answer_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from(&FsError::Range));
    } else {
        reply.data(value);
    }
}
