//! POSIX conformance through real syscalls on a real mount: errno values and resulting state.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use shardfs_tests::{Cluster, Mount};

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// The errno of the last failed libc call, asserting that it failed.
fn errno_of(result: libc::c_int) -> i32 {
    assert_eq!(result, -1, "call should have failed");
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

fn io_errno(result: std::io::Result<impl std::fmt::Debug>) -> i32 {
    result.expect_err("call should have failed").raw_os_error().unwrap()
}

fn setup() -> (Cluster, Mount) {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    (cluster, mount)
}

#[test]
fn names_renames_and_links() {
    let (_cluster, mount) = setup();
    let m = &mount.path;
    fs::create_dir(m.join("d1")).unwrap();
    fs::create_dir(m.join("d1/sub")).unwrap();
    fs::write(m.join("d1/a"), b"a").unwrap();
    fs::write(m.join("d1/b"), b"b").unwrap();

    // Names up to 255 bytes work; 256 is ENAMETOOLONG.
    let ok = "x".repeat(255);
    fs::write(m.join(&ok), b"").unwrap();
    assert_eq!(io_errno(fs::write(m.join("y".repeat(256)), b"")), libc::ENAMETOOLONG);

    // RENAME_NOREPLACE over an existing name is EEXIST; RENAME_EXCHANGE swaps.
    let rename2 = |from: &str, to: &str, flags: u32| unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(&m.join(from)).as_ptr(),
            libc::AT_FDCWD,
            c(&m.join(to)).as_ptr(),
            flags,
        )
    };
    assert_eq!(errno_of(rename2("d1/a", "d1/b", libc::RENAME_NOREPLACE)), libc::EEXIST);
    assert_eq!(rename2("d1/a", "d1/b", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.join("d1/a")).unwrap(), b"b");
    assert_eq!(fs::read(m.join("d1/b")).unwrap(), b"a");
    // RENAME_WHITEOUT (overlayfs) leaves a 0/0 character device under the old name.
    fs::write(m.join("d1/w"), b"w").unwrap();
    assert_eq!(rename2("d1/w", "d1/moved", libc::RENAME_WHITEOUT), 0);
    assert_eq!(fs::read(m.join("d1/moved")).unwrap(), b"w");
    let whiteout = fs::symlink_metadata(m.join("d1/w")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    let flags = libc::RENAME_WHITEOUT | libc::RENAME_NOREPLACE;
    assert_eq!(errno_of(rename2("d1/moved", "d1/w", flags)), libc::EEXIST);
    fs::remove_file(m.join("d1/w")).unwrap();
    fs::remove_file(m.join("d1/moved")).unwrap();
    // A directory into its own subtree is EINVAL; over a non-empty directory ENOTEMPTY.
    assert_eq!(io_errno(fs::rename(m.join("d1"), m.join("d1/sub/x"))), libc::EINVAL);
    fs::create_dir(m.join("d2")).unwrap();
    assert_eq!(io_errno(fs::rename(m.join("d2"), m.join("d1"))), libc::ENOTEMPTY);
    assert_eq!(io_errno(fs::remove_dir(m.join("d1"))), libc::ENOTEMPTY);
    // Rename over an existing file replaces it atomically.
    fs::rename(m.join("d1/a"), m.join("d1/b")).unwrap();
    assert!(!m.join("d1/a").exists());
    assert_eq!(fs::read(m.join("d1/b")).unwrap(), b"b");
    // ".." follows a directory across a rename, and link counts follow too.
    fs::rename(m.join("d1/sub"), m.join("d2/sub")).unwrap();
    let d2 = fs::metadata(m.join("d2")).unwrap();
    assert_eq!(fs::metadata(m.join("d2/sub/..")).unwrap().ino(), d2.ino());
    assert_eq!(d2.nlink(), 3);
    assert_eq!(fs::metadata(m.join("d1")).unwrap().nlink(), 2);

    // Hard links share the inode and count nlink.
    fs::hard_link(m.join("d1/b"), m.join("d2/hard")).unwrap();
    let linked = fs::metadata(m.join("d2/hard")).unwrap();
    assert_eq!((linked.ino(), linked.nlink()), (fs::metadata(m.join("d1/b")).unwrap().ino(), 2));
    assert_eq!(io_errno(fs::hard_link(m.join("d1"), m.join("d1-link"))), libc::EPERM);
    fs::remove_file(m.join("d1/b")).unwrap();
    assert_eq!(fs::metadata(m.join("d2/hard")).unwrap().nlink(), 1);
    assert_eq!(io_errno(fs::metadata(m.join("d1/b"))), libc::ENOENT);
    assert_eq!(io_errno(fs::remove_file(m.join("d2"))), libc::EISDIR);
    assert_eq!(io_errno(fs::remove_dir(m.join("d2/hard"))), libc::ENOTDIR);
}

#[test]
fn unlinked_while_open_stays_usable_until_close() {
    let (cluster, mount) = setup();
    let path = mount.join("doomed");
    let mut file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
    file.write_all(&vec![7u8; 3 << 20]).unwrap();
    file.sync_all().unwrap();
    let chunks_before = cluster.query(async |c| c.catalogue_stats().await).unwrap().chunks;
    assert!(chunks_before > 0);
    fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    // Still readable and writable through the open descriptor.
    assert_eq!(file.metadata().unwrap().nlink(), 0);
    file.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    file.read_to_end(&mut back).unwrap();
    assert_eq!(back, vec![7u8; 3 << 20]);
    file.write_all(b"tail").unwrap();
    file.sync_all().unwrap();
    assert_eq!(file.metadata().unwrap().len(), (3 << 20) + 4);
    // A second descriptor from another open of a different file does not matter; closing the
    // last one lets metad drop the inode and release its chunks.
    let ino = file.metadata().unwrap().ino();
    drop(file);
    let released = || cluster.query(async |c| c.get_attr(ino).await).is_err();
    let deadline = std::time::Instant::now() + shardfs_tests::READY_TIMEOUT;
    while !released() {
        assert!(std::time::Instant::now() < deadline, "inode {ino} not released at last close");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn directories_removed_or_replaced_while_open_live_until_closed() {
    use std::os::fd::AsRawFd;
    let (cluster, mount) = setup();
    for name in ["gone", "replaced", "mover"] {
        fs::create_dir(mount.join(name)).unwrap();
    }
    let gone = File::open(mount.join("gone")).unwrap();
    let replaced = File::open(mount.join("replaced")).unwrap();
    fs::remove_dir(mount.join("gone")).unwrap();
    fs::rename(mount.join("mover"), mount.join("replaced")).unwrap();
    for dir in [&gone, &replaced] {
        let meta = dir.metadata().unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.nlink(), 0);
        // Nothing can be created in a removed directory.
        let name = c(Path::new("new"));
        let fd = unsafe {
            libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644)
        };
        assert_eq!(errno_of(fd), libc::ENOENT);
    }
    let inos = [gone.metadata().unwrap().ino(), replaced.metadata().unwrap().ino()];
    drop((gone, replaced));
    let deadline = std::time::Instant::now() + shardfs_tests::READY_TIMEOUT;
    for ino in inos {
        while cluster.query(async |c| c.get_attr(ino).await).is_ok() {
            assert!(std::time::Instant::now() < deadline, "directory {ino} kept after close");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[test]
fn open_flags_append_excl_trunc() {
    let (_cluster, mount) = setup();
    let path = mount.join("f");
    fs::write(&path, b"0123456789").unwrap();
    // O_EXCL on an existing file.
    let excl = OpenOptions::new().write(true).create_new(true).open(&path);
    assert_eq!(io_errno(excl), libc::EEXIST);
    // O_APPEND writes at the end whatever the offset.
    let mut appender = OpenOptions::new().append(true).open(&path).unwrap();
    appender.write_all(b"ab").unwrap();
    let mut other = OpenOptions::new().append(true).open(&path).unwrap();
    other.write_all(b"cd").unwrap();
    appender.write_all(b"ef").unwrap();
    drop((appender, other));
    assert_eq!(fs::read(&path).unwrap(), b"0123456789abcdef");
    // O_TRUNC empties it.
    OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    // Opening a directory for writing is EISDIR; a missing file without O_CREAT ENOENT.
    assert_eq!(io_errno(OpenOptions::new().write(true).open(&mount.path)), libc::EISDIR);
    assert_eq!(io_errno(File::open(mount.join("missing"))), libc::ENOENT);
}

#[test]
fn sparse_files_read_holes_as_zeros() {
    let (_cluster, mount) = setup();
    let path = mount.join("sparse");
    let mut file = File::create(&path).unwrap();
    file.seek(SeekFrom::Start(10 << 20)).unwrap();
    file.write_all(b"end").unwrap();
    file.sync_all().unwrap();
    let meta = file.metadata().unwrap();
    assert_eq!(meta.len(), (10 << 20) + 3);
    assert!(meta.blocks() * 512 < 1 << 20, "holes are not allocated: {} blocks", meta.blocks());
    let data = fs::read(&path).unwrap();
    assert!(data[..10 << 20].iter().all(|b| *b == 0));
    assert_eq!(&data[10 << 20..], b"end");
}

#[test]
fn xattr_flags_and_limits() {
    let (_cluster, mount) = setup();
    let path = c(&mount.join("x"));
    fs::write(mount.join("x"), b"").unwrap();
    let name = CString::new("user.k").unwrap();
    let set = |value: &[u8], flags: i32| unsafe {
        libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags)
    };
    assert_eq!(errno_of(set(b"v", libc::XATTR_REPLACE)), libc::ENODATA);
    assert_eq!(set(b"v1", libc::XATTR_CREATE), 0);
    assert_eq!(errno_of(set(b"v2", libc::XATTR_CREATE)), libc::EEXIST);
    assert_eq!(set(b"value2", libc::XATTR_REPLACE), 0);
    let mut buf = [0u8; 64];
    let get = |buf: &mut [u8]| unsafe {
        libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    assert_eq!(get(&mut buf), 6);
    assert_eq!(&buf[..6], b"value2");
    assert_eq!(unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) }, 6);
    assert_eq!(errno_of(get(&mut buf[..3]) as i32), libc::ERANGE);
    let missing = CString::new("user.missing").unwrap();
    let got =
        unsafe { libc::getxattr(path.as_ptr(), missing.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    assert_eq!(errno_of(got as i32), libc::ENODATA);
    assert_eq!(
        errno_of(unsafe { libc::removexattr(path.as_ptr(), missing.as_ptr()) }),
        libc::ENODATA
    );
    // Values up to 64 KiB are stored; larger ones are refused.
    assert_eq!(set(&vec![1u8; 65536], 0), 0);
    assert_eq!(errno_of(set(&vec![1u8; 65537], 0)), libc::E2BIG);
}

#[test]
fn special_files_and_setgid_directories() {
    let (_cluster, mount) = setup();
    let m = &mount.path;
    // Device nodes (as root), a fifo and a socket.
    let dev = c(&m.join("null"));
    let rdev = libc::makedev(1, 3);
    assert_eq!(unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o666, rdev) }, 0);
    let meta = fs::metadata(m.join("null")).unwrap();
    assert_eq!(meta.rdev(), rdev);
    assert_eq!(meta.mode() & libc::S_IFMT, libc::S_IFCHR);
    // FUSE mounts are nodev by default, so opening the node is refused.
    assert_eq!(io_errno(fs::write(m.join("null"), b"x")), libc::EACCES);
    let listener = std::os::unix::net::UnixListener::bind(m.join("sock")).unwrap();
    assert_eq!(fs::metadata(m.join("sock")).unwrap().mode() & libc::S_IFMT, libc::S_IFSOCK);
    drop(listener);
    // A setgid directory passes its group, and setgid to subdirectories.
    fs::create_dir(m.join("shared")).unwrap();
    std::os::unix::fs::chown(m.join("shared"), None, Some(4242)).unwrap();
    fs::set_permissions(m.join("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(m.join("shared/file"), b"").unwrap();
    fs::create_dir(m.join("shared/sub")).unwrap();
    assert_eq!(fs::metadata(m.join("shared/file")).unwrap().gid(), 4242);
    let sub = fs::metadata(m.join("shared/sub")).unwrap();
    assert_eq!((sub.gid(), sub.mode() & 0o2000), (4242, 0o2000));
}

#[test]
fn utimensat_now_and_omit() {
    let (_cluster, mount) = setup();
    let path = c(&mount.join("t"));
    fs::write(mount.join("t"), b"").unwrap();
    let set = |atime: libc::timespec, mtime: libc::timespec| unsafe {
        libc::utimensat(libc::AT_FDCWD, path.as_ptr(), [atime, mtime].as_ptr(), 0)
    };
    let at = |sec, nsec| libc::timespec { tv_sec: sec, tv_nsec: nsec };
    assert_eq!(set(at(1_000_000_000, 1), at(1_100_000_000, 999_999_999)), 0);
    // UTIME_OMIT leaves mtime alone; UTIME_NOW sets atime to now.
    assert_eq!(set(at(0, libc::UTIME_NOW), at(0, libc::UTIME_OMIT)), 0);
    let meta = fs::metadata(mount.join("t")).unwrap();
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_100_000_000, 999_999_999));
    assert!(meta.atime() > 1_700_000_000);
    assert!(meta.ctime() >= meta.atime());
}

#[test]
fn fallocate_modes_seek_data_hole_and_copy_file_range() {
    use std::os::fd::AsRawFd;
    let (cluster, mount) = setup();
    let path = mount.join("f");
    let mut file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
    let fd = file.as_raw_fd();
    let mib = 1i64 << 20;
    // Mode 0 grows the file; KEEP_SIZE does not.
    assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 2 * mib) }, 0);
    assert_eq!(file.metadata().unwrap().len(), 2 << 20);
    assert_eq!(unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, 8 * mib) }, 0);
    assert_eq!(file.metadata().unwrap().len(), 2 << 20);
    // Data in [0, 3 MiB); punch [1 MiB, 2 MiB) out of it.
    file.write_all(&vec![0xAB; 3 << 20]).unwrap();
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(unsafe { libc::fallocate(fd, punch, mib, mib) }, 0);
    assert_eq!(file.metadata().unwrap().len(), 3 << 20);
    let data = fs::read(&path).unwrap();
    assert!(data[..1 << 20].iter().all(|b| *b == 0xAB));
    assert!(data[1 << 20..2 << 20].iter().all(|b| *b == 0));
    assert!(data[2 << 20..].iter().all(|b| *b == 0xAB));
    // A punch that would change the size, and collapse range, are not supported.
    assert_eq!(
        errno_of(unsafe { libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE, 0, 1) }),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno_of(unsafe { libc::fallocate(fd, libc::FALLOC_FL_COLLAPSE_RANGE, 0, mib) }),
        libc::EOPNOTSUPP
    );
    // More than the volume has free is refused.
    assert_eq!(errno_of(unsafe { libc::fallocate(fd, 0, 0, 1 << 50) }), libc::ENOSPC);
    // ZERO_RANGE past the end grows the file with zeros.
    assert_eq!(unsafe { libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, 2 * mib + 1, 2 * mib) }, 0);
    assert_eq!(file.metadata().unwrap().len(), (4 << 20) + 1);
    let data = fs::read(&path).unwrap();
    assert_eq!(data[2 << 20], 0xAB);
    assert!(data[(2 << 20) + 1..].iter().all(|b| *b == 0));
    // SEEK_DATA / SEEK_HOLE see the extents in 4 KiB blocks: data [0,1M), hole [1M,2M),
    // data [2M, 2M+1) so the block [2M, 2M+4K), hole to the end.
    let seek = |offset: i64, whence| unsafe { libc::lseek(fd, offset, whence) };
    assert_eq!(seek(0, libc::SEEK_HOLE), mib);
    assert_eq!(seek(mib, libc::SEEK_DATA), 2 * mib);
    assert_eq!(seek(2 * mib, libc::SEEK_HOLE), 2 * mib + 4096);
    assert_eq!(seek(2 * mib + 1, libc::SEEK_DATA), 2 * mib + 1);
    assert_eq!(errno_of(seek(2 * mib + 4096, libc::SEEK_DATA) as i32), libc::ENXIO);
    assert_eq!(errno_of(seek(-1, libc::SEEK_DATA) as i32), libc::ENXIO);
    assert_eq!(seek(3 * mib, libc::SEEK_HOLE), 3 * mib);
    assert_eq!(errno_of(seek(5 * mib, libc::SEEK_HOLE) as i32), libc::ENXIO);

    // copy_file_range shares chunks instead of copying bytes.
    let copy_path = mount.join("copy");
    let copy = File::create(&copy_path).unwrap();
    let chunks_before = cluster.query(async |c| c.catalogue_stats().await).unwrap();
    let (mut off_in, mut off_out) = (0i64, 4096i64);
    let copied = unsafe {
        libc::copy_file_range(fd, &mut off_in, copy.as_raw_fd(), &mut off_out, 3 << 20, 0)
    };
    assert_eq!(copied, 3 << 20);
    drop(copy);
    let copied_data = fs::read(&copy_path).unwrap();
    assert_eq!(copied_data.len(), 4096 + (3 << 20));
    assert!(copied_data[..4096].iter().all(|b| *b == 0));
    assert_eq!(&copied_data[4096..], &data[..3 << 20]);
    let chunks_after = cluster.query(async |c| c.catalogue_stats().await).unwrap();
    assert_eq!(chunks_after, chunks_before, "no new chunk for a copy");
}

#[test]
fn mmap_shared_writes_and_o_direct() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let (_cluster, mount) = setup();
    let path = mount.join("mapped");
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
    file.set_len(3 * 4096).unwrap();
    let len = 3 * 4096;
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    let bytes = unsafe { std::slice::from_raw_parts_mut(map.cast::<u8>(), len) };
    bytes[..5].copy_from_slice(b"hello");
    bytes[8192..8197].copy_from_slice(b"world");
    assert_eq!(unsafe { libc::msync(map, len, libc::MS_SYNC) }, 0);
    assert_eq!(unsafe { libc::munmap(map, len) }, 0);
    drop(file);
    let data = fs::read(&path).unwrap();
    assert_eq!((&data[..5], &data[8192..8197]), (&b"hello"[..], &b"world"[..]));

    // O_DIRECT is accepted for aligned I/O, and reads see what it wrote.
    let mut direct =
        OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&path).unwrap();
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    let buf = unsafe { std::slice::from_raw_parts_mut(std::alloc::alloc(layout), 4096) };
    buf.fill(b'd');
    direct.seek(SeekFrom::Start(4096)).unwrap();
    direct.write_all(buf).unwrap();
    direct.sync_all().unwrap();
    unsafe { std::alloc::dealloc(buf.as_mut_ptr(), layout) };
    drop(direct);
    let data = fs::read(&path).unwrap();
    assert!(data[4096..8192].iter().all(|b| *b == b'd'));
    assert_eq!(&data[8192..8197], b"world");
}

/// Runs a shell command as an unprivileged user, returning whether it succeeded.
fn as_user(uid: u32, script: &str) -> bool {
    std::process::Command::new("setpriv")
        .args([&format!("--reuid={uid}"), &format!("--regid={uid}"), "--clear-groups"])
        .args(["bash", "-c", script])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn posix_acls_are_enforced_follow_chmod_and_are_inherited() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount_with(&["--allow-other"]);
    let m = mount.path.display();
    shardfs_tests::sh(&format!("chmod 755 {m} && echo secret > {m}/f && chmod 600 {m}/f"));
    assert!(!as_user(1000, &format!("cat {m}/f")));
    // A named-user entry lets 1000 read; the mask shows in the group bits.
    shardfs_tests::sh(&format!("setfacl -m u:1000:r {m}/f"));
    assert!(as_user(1000, &format!("cat {m}/f > /dev/null")));
    assert!(!as_user(1001, &format!("cat {m}/f > /dev/null")));
    assert!(!as_user(1000, &format!("echo x >> {m}/f")));
    let acl = shardfs_tests::sh(&format!("getfacl -cpn {m}/f"));
    assert!(acl.contains("user:1000:r--"), "{acl}");
    assert_eq!(shardfs_tests::sh(&format!("stat -c %a {m}/f")).trim(), "640");
    // chmod rewrites the mask: group bits 0 revoke the named entry's access.
    shardfs_tests::sh(&format!("chmod 600 {m}/f"));
    assert!(!as_user(1000, &format!("cat {m}/f > /dev/null")));
    // Removing the ACL leaves plain mode bits.
    shardfs_tests::sh(&format!("setfacl -b {m}/f"));
    assert!(!shardfs_tests::sh(&format!("getfacl -cpn {m}/f")).contains("user:1000"));

    // A default ACL is inherited, and replaces the umask.
    shardfs_tests::sh(&format!("mkdir {m}/d && setfacl -d -m u:1000:rwx {m}/d"));
    shardfs_tests::sh(&format!("cd {m}/d && umask 022 && touch new && mkdir sub"));
    assert_eq!(shardfs_tests::sh(&format!("stat -c %a {m}/d/new")).trim(), "664");
    let inherited = shardfs_tests::sh(&format!("getfacl -cpn {m}/d/new"));
    assert!(inherited.contains("user:1000:rwx"), "{inherited}");
    let sub = shardfs_tests::sh(&format!("getfacl -cpn {m}/d/sub"));
    assert!(sub.contains("default:user:1000:rwx"), "{sub}");
    assert!(as_user(1000, &format!("echo ok > {m}/d/new")));
    // Without a default ACL, the umask applies.
    shardfs_tests::sh(&format!("cd {m} && umask 027 && touch plain"));
    assert_eq!(shardfs_tests::sh(&format!("stat -c %a {m}/plain")).trim(), "640");
    // An owner outside the file's group setting its ACL drops set-group-id, as chmod does.
    shardfs_tests::sh(&format!("chown 1000:1001 {m}/plain && chmod 2755 {m}/plain"));
    assert!(as_user(1000, &format!("setfacl -m u::rwx,g::rwx,o::rwx {m}/plain")));
    assert_eq!(shardfs_tests::sh(&format!("stat -c %a {m}/plain")).trim(), "777");
}

#[test]
fn relatime_and_noatime() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    let path = mount.join("f");
    fs::write(&path, b"data").unwrap();
    shardfs_tests::sh(&format!("touch -a -d '2001-01-01 UTC' {}", path.display()));
    let atime = || fs::metadata(&path).unwrap().atime();
    assert!(atime() < 1_000_000_000);
    // A read updates an atime that is older than the mtime (relatime), visibly at once.
    fs::read(&path).unwrap();
    assert!(atime() > 1_700_000_000, "atime not updated by a read");
    // Another read leaves the now recent atime alone.
    let precise = |path: &Path| {
        let meta = fs::metadata(path).unwrap();
        (meta.atime(), meta.atime_nsec())
    };
    let first = precise(&path);
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::read(&path).unwrap();
    assert_eq!(precise(&path), first);
    // So does one after metad recorded it (an fsync sends the mount's atime updates), the
    // attributes the mount keeps included.
    fs::File::open(&path).unwrap().sync_all().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::read(&path).unwrap();
    assert_eq!(precise(&path), first, "a recorded atime was moved again");
    shardfs_tests::sh("echo 2 > /proc/sys/vm/drop_caches");
    assert_eq!(precise(&path), first, "the mount shows the atime metad recorded");
    // A read that reaches the mount (another mount's first, with no pages kept) shows its
    // atime at once too.
    shardfs_tests::sh(&format!("touch -a -d '2001-01-01 UTC' {}", path.display()));
    let reader = cluster.mount();
    let read_there = reader.join("f");
    assert!(fs::metadata(&read_there).unwrap().atime() < 1_000_000_000);
    fs::read(&read_there).unwrap();
    assert!(
        fs::metadata(&read_there).unwrap().atime() > 1_700_000_000,
        "atime not updated by a read the mount served"
    );
    // Mounted strictatime, every read (open and read) updates it.
    let strict = cluster.mount_with(&["-o", "strictatime"]);
    fs::read(strict.join("f")).unwrap();
    let before = precise(&strict.join("f"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::read(strict.join("f")).unwrap();
    assert!(precise(&strict.join("f")) > before, "strictatime read left atime alone");
    // Mounted noatime, reads leave it alone.
    let quiet = cluster.mount_with(&["-o", "noatime"]);
    let other = quiet.join("f");
    shardfs_tests::sh(&format!("touch -a -d '2001-01-01 UTC' {}", other.display()));
    fs::read(&other).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(fs::metadata(&other).unwrap().atime() < 1_000_000_000);
}

/// A read's atime is shown on its mount at once and sent to metad in a batch: metad has it
/// within about a second, or at once after an fsync; an atime set explicitly afterwards,
/// on the reading mount or another, is never overwritten by the batch.
#[test]
fn a_reads_atime_reaches_metad_in_order() {
    let cluster = Cluster::start(3, 2, 1);
    let (reader, writer) = (cluster.mount(), cluster.mount());
    let atime = |path: &Path| fs::metadata(path).unwrap().atime();
    let ino = |name: &str| fs::metadata(writer.join(name)).unwrap().ino();
    // As metad has it: a mount may show what its lease let it keep.
    let at_metad =
        |name: &str| cluster.query(async |c| c.get_attr(ino(name)).await.unwrap().atime.sec);
    let read_old = |name: &str| {
        fs::write(writer.join(name), b"data").unwrap();
        let path = writer.join(name);
        shardfs_tests::sh(&format!("touch -a -d '2001-01-01 UTC' {}", path.display()));
        fs::read(reader.join(name)).unwrap();
        assert!(atime(&reader.join(name)) > 1_700_000_000, "{name}: atime not shown at once");
    };
    read_old("synced");
    read_old("later");
    // fsync sends the file's update before it returns.
    File::open(reader.join("synced")).unwrap().sync_all().unwrap();
    assert!(at_metad("synced") > 1_700_000_000, "fsync did not send the atime");
    // Without one, the batch goes within a second.
    shardfs_tests::eventually("the atime to reach metad", || at_metad("later") > 1_700_000_000);
    // An atime set right after the read, on the reading mount or another, stays.
    let set = |mount: &Mount, name: &str, date: &str| {
        let path = mount.join(name);
        shardfs_tests::sh(&format!("touch -a -d '{date} UTC' {}", path.display()));
    };
    read_old("set_here");
    set(&reader, "set_here", "2002-01-01");
    read_old("set_there");
    set(&writer, "set_there", "2003-01-01");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(at_metad("set_here"), 1_009_843_200, "an explicit atime was overwritten");
    assert_eq!(at_metad("set_there"), 1_041_379_200, "an explicit atime was overwritten");
    assert_eq!(atime(&reader.join("set_there")), 1_041_379_200);
}

#[test]
fn sticky_directories_and_privilege_bits_for_other_users() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount_with(&["--allow-other"]);
    let m = mount.path.display();
    shardfs_tests::sh(&format!("chmod 755 {m} && mkdir -m 1777 {m}/tmp"));
    assert!(as_user(1000, &format!("echo mine > {m}/tmp/owned")));
    // In a sticky directory only the owner (or root) may remove or rename an entry.
    assert!(!as_user(1001, &format!("rm -f {m}/tmp/owned")));
    assert!(!as_user(1001, &format!("mv {m}/tmp/owned {m}/tmp/stolen")));
    assert!(as_user(1000, &format!("mv {m}/tmp/owned {m}/tmp/moved")));
    // A write by another user clears set-user-id and set-group-id.
    shardfs_tests::sh(&format!("echo x > {m}/tmp/prog && chown 1000:1000 {m}/tmp/prog"));
    shardfs_tests::sh(&format!("chmod 6777 {m}/tmp/prog"));
    assert!(as_user(1001, &format!("echo y >> {m}/tmp/prog")));
    assert_eq!(shardfs_tests::sh(&format!("stat -c %a {m}/tmp/prog")).trim(), "777");
    // So does fallocate (which the kernel leaves to the filesystem); sgid without group
    // execute stays when the caller is in the file's group, and root keeps both bits.
    let stat = |name: &str| shardfs_tests::sh(&format!("stat -c %a {m}/tmp/{name}"));
    shardfs_tests::sh(&format!("chmod 6666 {m}/tmp/prog"));
    assert!(as_user(1001, &format!("fallocate -o 0 -l 8192 {m}/tmp/prog")));
    assert_eq!(stat("prog").trim(), "666");
    shardfs_tests::sh(&format!("chmod 6666 {m}/tmp/prog"));
    assert!(as_user(1000, &format!("fallocate -p -o 0 -l 4096 {m}/tmp/prog")));
    assert_eq!(stat("prog").trim(), "2666");
    shardfs_tests::sh(&format!("chmod 6777 {m}/tmp/prog && fallocate -z -l 4096 {m}/tmp/prog"));
    assert_eq!(stat("prog").trim(), "6777");
    // Only root may give a file away.
    assert!(!as_user(1000, &format!("chown 1001 {m}/tmp/moved")));
    assert_eq!(shardfs_tests::sh(&format!("stat -c %u {m}/tmp/moved")).trim(), "1000");
}

/// A file handle from name_to_handle_at(2), as raw bytes (header and handle).
fn file_handle(path: &Path) -> Vec<u8> {
    const MAX_HANDLE: usize = 128;
    let mut buf = vec![0u8; std::mem::size_of::<libc::file_handle>() + MAX_HANDLE];
    let handle = buf.as_mut_ptr().cast::<libc::file_handle>();
    let mut mount_id = 0;
    unsafe { (*handle).handle_bytes = MAX_HANDLE as u32 };
    let result = unsafe {
        libc::name_to_handle_at(libc::AT_FDCWD, c(path).as_ptr(), handle, &mut mount_id, 0)
    };
    assert_eq!(
        result,
        0,
        "name_to_handle_at {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    buf
}

fn open_by_handle(mount: &Path, handle: &mut [u8]) -> Result<File, i32> {
    use std::os::fd::FromRawFd;
    let root = File::open(mount).unwrap();
    let fd = unsafe {
        libc::open_by_handle_at(
            std::os::fd::AsRawFd::as_raw_fd(&root),
            handle.as_mut_ptr().cast(),
            libc::O_RDONLY,
        )
    };
    if fd < 0 { Err(errno_of(fd)) } else { Ok(unsafe { File::from_raw_fd(fd) }) }
}

fn drop_kernel_caches() {
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
}

#[test]
fn file_handles_survive_cache_eviction_and_go_stale_on_delete() {
    let (cluster, mount) = setup();
    fs::create_dir_all(mount.join("d/sub")).unwrap();
    fs::write(mount.join("d/sub/f"), b"by handle").unwrap();
    let mut file = file_handle(&mount.join("d/sub/f"));
    let mut dir = file_handle(&mount.join("d/sub"));
    // With the kernel's inodes and dentries gone, the handles are resolved by inode number.
    drop_kernel_caches();
    let mut content = String::new();
    open_by_handle(&mount.path, &mut file).unwrap().read_to_string(&mut content).unwrap();
    assert_eq!(content, "by handle");
    drop_kernel_caches();
    let opened = open_by_handle(&mount.path, &mut dir).unwrap();
    assert!(opened.metadata().unwrap().is_dir());
    // The directory's path is found again through "..".
    let fd = std::os::fd::AsRawFd::as_raw_fd(&opened);
    let path = fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    assert_eq!(path, mount.join("d/sub"));
    drop(opened);
    // A deleted file's handle goes stale at once, though the file lingers a moment for
    // opens of its name looked up just before it went (see docs/SEMANTICS.md, "Atomic
    // replace"), whether the mount removed it itself (under its lease on a directory it
    // made) or through metad.
    fs::remove_file(mount.join("d/sub/f")).unwrap();
    drop_kernel_caches();
    assert_eq!(open_by_handle(&mount.path, &mut file).err(), Some(libc::ESTALE));
    let other = cluster.mount();
    fs::write(other.join("d/sub/g"), b"made elsewhere").unwrap();
    let mut elsewhere = file_handle(&mount.join("d/sub/g"));
    fs::remove_file(mount.join("d/sub/g")).unwrap();
    drop_kernel_caches();
    assert_eq!(open_by_handle(&mount.path, &mut elsewhere).err(), Some(libc::ESTALE));
    // One still open opens by its handle until its last close.
    fs::write(mount.join("d/sub/h"), b"open").unwrap();
    let mut open = file_handle(&mount.join("d/sub/h"));
    let held = File::open(mount.join("d/sub/h")).unwrap();
    fs::remove_file(mount.join("d/sub/h")).unwrap();
    drop_kernel_caches();
    let mut content = String::new();
    open_by_handle(&mount.path, &mut open).unwrap().read_to_string(&mut content).unwrap();
    assert_eq!(content, "open");
    drop(held);
}

#[test]
fn fallocated_space_counts_in_st_blocks_and_reads_as_zeros() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let (_cluster, mount) = setup();
    let path = mount.join("prealloc");
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
    let fd = file.as_raw_fd();
    assert_eq!(unsafe { libc::fallocate(fd, 0, 4095, 2) }, 0);
    let before = file.metadata().unwrap();
    assert_eq!(before.len(), 4097);
    assert!(before.blocks() > 0, "fallocated bytes are allocated");
    // Writing into the allocated range does not allocate more.
    file.write_all_at(b"ab", 4095).unwrap();
    file.sync_all().unwrap();
    assert!(file.metadata().unwrap().blocks() <= before.blocks());
    // KEEP_SIZE past the end leaves the size alone; allocated space reads as zeros.
    assert_eq!(unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, 3 << 20) }, 0);
    assert_eq!(file.metadata().unwrap().len(), 4097);
    let mut head = vec![1u8; 4097];
    file.read_exact_at(&mut head, 0).unwrap();
    assert!(head[..4095].iter().all(|b| *b == 0));
    assert_eq!(&head[4095..], b"ab");
    // SEEK_DATA treats allocated but unwritten space as a hole.
    let empty = File::create(mount.join("allocated-only")).unwrap();
    assert_eq!(unsafe { libc::fallocate(empty.as_raw_fd(), 0, 0, 16384) }, 0);
    let seek = unsafe { libc::lseek(empty.as_raw_fd(), 0, libc::SEEK_DATA) };
    assert_eq!(errno_of(seek as i32), libc::ENXIO);
    assert!(empty.metadata().unwrap().blocks() >= 32);
}

/// Removals on one mount do not fail because of files that other processes of the mount open,
/// close and remove meanwhile. Before it removes a name, the mount tells metad of the opens it
/// kept to itself under leases; a file among them may have been closed (its release runs after
/// close(2) returns) and removed since, which once failed the removal with ENOENT (`rm -rf`,
/// which ignores ENOENT, then left the name behind: xfstests generic/631), and a file closed
/// since stays closed: metad must not be told of an open nobody will release.
#[test]
fn removals_ignore_other_files_closed_and_removed_meanwhile() {
    use std::time::{Duration, Instant};
    let (cluster, mount) = setup();
    let inodes = || cluster.query(async |c| c.stat_fs().await).unwrap().inodes;
    let before = inodes();
    let deadline = Instant::now() + Duration::from_secs(10);
    std::thread::scope(|s| {
        for worker in 0..6 {
            let root = &mount.path;
            s.spawn(move || {
                let mut round = 0;
                while Instant::now() < deadline {
                    let dir = root.join(format!("w{worker}-{round}"));
                    fs::create_dir(&dir).unwrap();
                    fs::write(dir.join("f"), b"x").unwrap();
                    // Listing opens the directory (under its lease: metad does not hear of it).
                    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
                    let removed = fs::remove_file(dir.join("f"));
                    removed.unwrap_or_else(|e| panic!("unlink in {}: {e}", dir.display()));
                    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
                    let removed = fs::remove_dir(&dir);
                    removed.unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
                    round += 1;
                }
            });
        }
    });
    assert_eq!(fs::read_dir(&mount.path).unwrap().count(), 0);
    // Every file was closed and removed: metad keeps no nameless inode for this mount (the
    // last releases may still be on their way).
    let settled = Instant::now() + Duration::from_secs(5);
    while inodes() != before && Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(inodes(), before, "inodes left behind by opens metad was told of too late");
}

#[test]
fn a_name_over_255_bytes_is_too_long_in_a_directory_made_or_listed_here() {
    let (_cluster, mount) = setup();
    let m = &mount.path;
    fs::create_dir(m.join("made")).unwrap();
    fs::create_dir(m.join("listed")).unwrap();
    fs::read_dir(m.join("listed")).unwrap().for_each(drop);
    let long = "x".repeat(300);
    for dir in ["made", "listed", "."] {
        let path = m.join(dir).join(&long);
        assert_eq!(io_errno(fs::metadata(&path)), libc::ENAMETOOLONG, "stat in {dir}");
        let chmod = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
        assert_eq!(io_errno(chmod), libc::ENAMETOOLONG, "chmod in {dir}");
        let truncate = unsafe { libc::truncate(c(&path).as_ptr(), 0) };
        assert_eq!(errno_of(truncate), libc::ENAMETOOLONG, "truncate in {dir}");
        let chown = unsafe { libc::chown(c(&path).as_ptr(), 1, 1) };
        assert_eq!(errno_of(chown), libc::ENAMETOOLONG, "chown in {dir}");
    }
}

#[test]
fn a_directory_renamed_over_ones_own_empty_directory_in_a_sticky_directory() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount_with(&["--allow-other"]);
    let m = mount.path.display();
    // Sticky, world-writable directories of root's and of another user's; a home of 1000's.
    shardfs_tests::sh(&format!(
        "chmod 755 {m} && mkdir -m 1777 {m}/tmp {m}/shared && chown 2000:2000 {m}/shared \
         && mkdir -m 755 {m}/home && chown 1000:1000 {m}/home"
    ));
    for sticky in ["tmp", "shared"] {
        for victim_mode in ["755", "555"] {
            let script = format!(
                "mkdir {m}/home/src && mkdir -m {victim_mode} {m}/{sticky}/dst \
                 && mv -T {m}/home/src {m}/{sticky}/dst && test ! -e {m}/home/src \
                 && rmdir {m}/{sticky}/dst"
            );
            assert!(as_user(1000, &script), "in {sticky}, over a {victim_mode} directory");
        }
        // Another user's directory there is not 1000's to replace.
        shardfs_tests::sh(&format!("mkdir {m}/{sticky}/theirs && chown 2001 {m}/{sticky}/theirs"));
        let script = format!("mkdir {m}/home/src && mv -T {m}/home/src {m}/{sticky}/theirs");
        assert!(!as_user(1000, &script), "replacing another's directory in {sticky}");
        shardfs_tests::sh(&format!("rmdir {m}/home/src"));
    }
}
