//! The `Filesystem` implementation: one method per kernel request, each a call into the
//! core ([`Fs`]) and its reply, run through [`FuseAdapter::spawn`].

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use shardfs_meta_api::proto::{MAX_NAME_LEN, RenameMode, SetAttr, XattrMode};

use super::convert::{
    answer_xattr, cred, file_attr, file_type, fopen_flags, lock_kind, lock_type, name_bytes,
    reply_attr, reply_entry, set_time, with_kept_pages,
};
use super::ioctls::{self, Ioctl};
use super::{FuseAdapter, MAX_WRITE, READDIR_BATCH};
use crate::core::{Flush, OpenIntent};
use tracing::warn;

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
            | InitFlags::FUSE_EXPORT_SUPPORT
            // A symlink's target never changes: the kernel keeps it with the inode.
            | InitFlags::FUSE_CACHE_SYMLINKS
            // ioctls on directories too: fstrim's FITRIM goes to the mount point.
            | InitFlags::FUSE_HAS_IOCTL_DIR;
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
        // An open for reading only counts as a read for atime when the kernel keeps the
        // file's pages (its reads may never reach the mount); one that may write, for an
        // fsync say, does not (see `Fs::open`).
        let reading = flags.0 & libc::O_ACCMODE == libc::O_RDONLY;
        let intent = OpenIntent::of(flags.0);
        let leases = self.fs.leases();
        self.spawn(
            "open",
            reply,
            move |fs| async move {
                fs.check_open(ino.0, intent).await?;
                fs.open(ino.0, reading).await
            },
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

    /// FITRIM (fstrim) is answered, as ext4 answers it, for root only, on a writable mount,
    /// with the range checked as ext4 checks it: there is nothing to discard, since
    /// chunkds keep shards in volume files whose dead records compaction reclaims, so the
    /// range comes back with length 0 (nothing trimmed). The attribute
    /// flags (chattr, lsattr) are metad's (`core/flags.rs`); a shutdown is root's
    /// (`core/shutdown.rs`). Any other ioctl is ENOTTY, what
    /// tools probing a file (isatty, FS_IOC_*) expect; answering it here keeps those probes
    /// out of the log.
    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let ioctl = match ioctls::decode(cmd, in_data) {
            Ok(ioctl) => ioctl,
            Err(errno) => return reply.error(errno),
        };
        let cred = cred(req, 0);
        match ioctl {
            Ioctl::Trim(_) if cred.uid != 0 => reply.error(Errno::EPERM),
            Ioctl::Trim(_) if self.read_only => reply.error(Errno::EROFS),
            Ioctl::Trim(range) => self.spawn(
                "fitrim",
                reply,
                |fs| async move { fs.stat_fs().await },
                move |reply, stat| match ioctls::trimmed(&range, stat.capacity_bytes) {
                    Ok(trimmed) => reply.ioctl(0, &trimmed),
                    Err(errno) => reply.error(errno),
                },
            ),
            Ioctl::GetFlags | Ioctl::FsGetXattr => {
                let answer = match ioctl {
                    Ioctl::GetFlags => ioctls::flags_bytes,
                    _ => ioctls::fsxattr_bytes,
                };
                self.spawn(
                    "getflags",
                    reply,
                    move |fs| async move { fs.get_attr(ino.0).await },
                    move |reply, attr| reply.ioctl(0, &answer(&attr)),
                );
            }
            Ioctl::SetFlags(change) => self.spawn(
                "setflags",
                reply,
                move |fs| async move { fs.set_flags(ino.0, cred, change).await },
                |reply, _| reply.ioctl(0, &[]),
            ),
            Ioctl::Shutdown if cred.uid != 0 => reply.error(Errno::EPERM),
            Ioctl::Shutdown => {
                // The flag comes back to the caller as it was (the kernel copies the answer
                // over it, the ioctl being numbered as one that returns it).
                let (flag, flush) = match ioctls::caller_flag(req.pid(), cmd) {
                    Ok(flag) => match Flush::from_flag(flag) {
                        Some(flush) => (flag, flush),
                        None => return reply.error(Errno::EINVAL),
                    },
                    Err(e) => {
                        warn!("shutdown: cannot read the caller's flag, flushing everything: {e}");
                        (0, Flush::Everything)
                    }
                };
                self.spawn(
                    "shutdown",
                    reply,
                    move |fs| async move { fs.shut_down(flush).await },
                    move |reply, ()| reply.ioctl(0, &flag.to_ne_bytes()),
                );
            }
        }
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
                    let dir_attr = file_attr(ttls, &dir);
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
                        let attr = file_attr(ttls, &entry.attr);
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
                        &file_attr(ttls, &attr),
                        Generation(attr.generation),
                        FileHandle(fh),
                        flags,
                    )
                })
            },
        );
    }
}
