//! Namespace changes a mount (`-o batch`) answers itself under a directory's write lease
//! and sends to metad in ordered batches (`fs/src/journal.rs`): fewer round trips, the same
//! namespace on every mount, a prefix of them kept when the mount dies, each applied once
//! through a leader's loss.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use shardfs_tests::{Cluster, Mount, Stopped, eventually};

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect()
}

/// A cluster, and a `-o batch` mount of it that made directory `d`.
fn batch_mount_with_dir() -> (Cluster, Mount) {
    let cluster = Cluster::standard();
    let mount = cluster.mount_with(&["-o", "batch"]);
    fs::create_dir(mount.join("d")).unwrap();
    (cluster, mount)
}

/// Creates, writes, removals and subdirectories in a directory the mount made cost a few
/// batches, not a request each, and another mount then sees exactly what was done.
#[test]
fn changes_in_a_directory_made_here_go_to_metad_in_batches() {
    let (cluster, mount) = batch_mount_with_dir();
    let requests = || cluster.mount_requests();
    let before = requests();
    for i in 0..200 {
        fs::write(mount.join(&format!("d/f{i}")), format!("file {i}")).unwrap();
    }
    fs::create_dir(mount.join("d/sub")).unwrap();
    fs::write(mount.join("d/sub/inner"), b"inner").unwrap();
    for i in (0..200).step_by(4) {
        fs::remove_file(mount.join(&format!("d/f{i}"))).unwrap();
    }
    fs::create_dir(mount.join("d/gone")).unwrap();
    fs::remove_dir(mount.join("d/gone")).unwrap();
    // Made durable, which sends what is queued.
    fs::File::open(mount.join("d")).unwrap().sync_all().unwrap();
    let sent = requests() - before;
    assert!(sent < 50, "{sent} metad requests for 500 changes");
    let mut expected: BTreeSet<String> =
        (0..200).filter(|i| i % 4 != 0).map(|i| format!("f{i}")).collect();
    expected.insert("sub".into());
    let other = cluster.mount();
    assert_eq!(names(&other.join("d")), expected);
    assert_eq!(fs::read(other.join("d/f5")).unwrap(), b"file 5");
    assert_eq!(fs::read(other.join("d/sub/inner")).unwrap(), b"inner");
    // Attributes as the first mount showed them.
    for name in ["d", "d/f5", "d/sub"] {
        let (here, there) = (fs::metadata(mount.join(name)), fs::metadata(other.join(name)));
        let (here, there) = (here.unwrap(), there.unwrap());
        use std::os::unix::fs::MetadataExt as _;
        let seen =
            |m: &fs::Metadata| (m.ino(), m.mode(), m.nlink(), m.size(), m.mtime_nsec(), m.uid());
        assert_eq!(seen(&here), seen(&there), "{name}");
    }
    drop((mount, other));
    assert!(cluster.fsck_clean());
}

/// What `cp -a` and `tar x` do to each file after writing it (times, owner, mode) is
/// answered by the mount for files it made and sent in batches too; another mount sees the
/// same attributes, and a new owner cleared the set-user-id bit as metad would have.
#[test]
fn attribute_changes_of_files_made_here_go_in_batches() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let (cluster, mount) = batch_mount_with_dir();
    let requests = || cluster.mount_requests();
    let before = requests();
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    for i in 0..100 {
        let path = mount.join(&format!("d/f{i}"));
        let mut file = fs::File::create(&path).unwrap();
        file.write_all(b"content").unwrap();
        file.set_modified(when).unwrap();
        file.set_permissions(fs::Permissions::from_mode(0o4750)).unwrap();
        std::os::unix::fs::fchown(&file, Some(1000), Some(1000)).unwrap();
    }
    // cp -a sets times, owner and a plain access ACL (the mode's bits) on each file.
    let source = cluster.dir.path().join("tree");
    for i in 0..100 {
        let file = source.join(format!("sub{}/s{i}", i % 10));
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, b"copied").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    }
    // And a symlink, with its owner and times.
    std::os::unix::fs::symlink("sub1/s1", source.join("link")).unwrap();
    let old = nix::sys::time::TimeSpec::new(1_200_000_000, 0);
    let at = nix::sys::stat::UtimensatFlags::NoFollowSymlink;
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &source.join("link"), &old, &old, at).unwrap();
    let cp =
        std::process::Command::new("cp").arg("-a").arg(&source).arg(mount.join("d/tree")).status();
    assert!(cp.unwrap().success());
    fs::File::open(mount.join("d")).unwrap().sync_all().unwrap();
    let sent = requests() - before;
    assert!(sent < 60, "{sent} metad requests for 200 files made, written and changed");
    let other = cluster.mount();
    let copied = fs::metadata(other.join("d/tree/sub7/s7")).unwrap();
    assert_eq!((copied.mode() & 0o7777, copied.len()), (0o640, 6));
    let link = other.join("d/tree/link");
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("sub1/s1"));
    let link = fs::symlink_metadata(&link).unwrap();
    assert_eq!((link.mode() & 0o7777, link.len(), link.mtime()), (0o777, 7, 1_200_000_000));
    assert_eq!(fs::read(other.join("d/tree/link")).unwrap(), b"copied");
    for name in ["d/f0", "d/f99"] {
        let (here, there) = (fs::metadata(mount.join(name)), fs::metadata(other.join(name)));
        let (here, there) = (here.unwrap(), there.unwrap());
        let seen = |m: &fs::Metadata| (m.mode(), m.uid(), m.gid(), m.mtime(), m.ctime_nsec());
        assert_eq!(seen(&here), seen(&there), "{name}");
        assert_eq!((there.mode() & 0o7777, there.uid()), (0o750, 1000), "{name}");
        assert_eq!(there.mtime(), 1_000_000_000);
        assert_eq!(fs::read(other.join(name)).unwrap(), b"content");
    }
    drop((mount, other));
    assert!(cluster.fsck_clean());
}

/// A file too big to go inline is stored on the chunkds before its close returns, and its
/// commit joins the queue: no request waits for metad, and a time set after the close (as
/// `cp -a` sets it) is the time every mount sees, after the content.
#[test]
fn commits_of_files_stored_on_chunkds_go_in_batches() {
    use std::os::unix::fs::MetadataExt as _;
    let (cluster, mount) = batch_mount_with_dir();
    let requests = || cluster.mount_requests();
    let before = requests();
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    let content = |i: usize| -> Vec<u8> { (0..300_000).map(|b| (b * 7 + i) as u8).collect() };
    for i in 0..10 {
        let path = mount.join(&format!("d/big{i}"));
        fs::write(&path, content(i)).unwrap();
        fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
    }
    // Read back through the layout the commit left, with nothing asked of metad.
    assert_eq!(fs::read(mount.join("d/big3")).unwrap(), content(3));
    let sent = requests() - before;
    // A `PrepareWrite` each, and the batches sent meanwhile (files come more slowly than
    // the queue gathers); each close used to add a synchronous `CommitWrite` too.
    assert!(sent < 25, "{sent} metad requests for 10 files stored on chunkds");
    let other = cluster.mount();
    for i in [0, 9] {
        let path = other.join(&format!("d/big{i}"));
        assert_eq!(fs::read(&path).unwrap(), content(i));
        assert_eq!(fs::metadata(&path).unwrap().mtime(), 1_500_000_000);
    }
    drop((mount, other));
    assert!(cluster.fsck_clean());
}

/// An open directory stream (`opendir(3)`), closed on drop.
struct DirStream(*mut libc::DIR);

impl DirStream {
    fn open(path: &Path) -> DirStream {
        use std::os::unix::ffi::OsStrExt as _;
        let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let dir = unsafe { libc::opendir(path.as_ptr()) };
        assert!(!dir.is_null(), "opendir: {}", std::io::Error::last_os_error());
        DirStream(dir)
    }

    /// Up to `count` more entries, each with its cookie (`d_off`), "." and ".." left out.
    fn read(&mut self, count: usize) -> Vec<(String, i64)> {
        let mut entries = Vec::new();
        while entries.len() < count {
            let entry = unsafe { libc::readdir64(self.0) };
            if entry.is_null() {
                break;
            }
            let entry = unsafe { &*entry };
            let name = unsafe { std::ffi::CStr::from_ptr(entry.d_name.as_ptr()) };
            let name = name.to_string_lossy().into_owned();
            if name != "." && name != ".." {
                entries.push((name, entry.d_off));
            }
        }
        entries
    }

    fn seek(&mut self, cookie: i64) {
        unsafe { libc::seekdir(self.0, cookie) };
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        unsafe { libc::closedir(self.0) };
    }
}

/// The directories a mount made are listed by the mount itself, with the cookies metad
/// gives their names: listing them costs no request, another mount (asking metad) lists
/// the same entries in the same order with the same cookies and resumes from the first
/// mount's cookies, and a listing cut short by a recall goes on from metad's answer exactly
/// where it stopped.
#[test]
fn listings_of_directories_made_here_are_answered_by_the_mount() {
    let cluster = Cluster::standard();
    let mount = cluster.mount_with(&["-o", "batch"]);
    let d = mount.join("d");
    fs::create_dir(&d).unwrap();
    // Long names, so a listing takes several of the kernel's pages.
    let name = |j: usize| format!("a-file-with-a-name-long-enough-to-fill-pages-{j:03}");
    for i in 0..10 {
        fs::create_dir(d.join(format!("s{i}"))).unwrap();
        for j in 0..100 {
            fs::write(d.join(format!("s{i}/{}", name(j))), b"x").unwrap();
        }
    }
    // Made by requests metad answers, with their cookies.
    std::os::unix::fs::symlink("target", d.join("s0/symlink")).unwrap();
    fs::hard_link(d.join("s0").join(name(0)), d.join("s0/linked")).unwrap();
    fs::remove_file(d.join("s0").join(name(1))).unwrap();
    fs::File::open(&d).unwrap().sync_all().unwrap();

    let requests = || cluster.mount_requests();
    let before = requests();
    let listings: Vec<Vec<(String, i64)>> =
        (1..10).map(|i| DirStream::open(&d.join(format!("s{i}"))).read(usize::MAX)).collect();
    let sent = requests() - before;
    assert!(sent < 5, "{sent} metad requests to list 9 directories of 100 names");
    assert!(listings.iter().all(|l| l.len() == 100));
    let here = DirStream::open(&d.join("s0")).read(usize::MAX);
    assert_eq!(here.len(), 101);
    assert!(here.iter().any(|(n, _)| n == "symlink") && here.iter().any(|(n, _)| n == "linked"));

    let other = cluster.mount();
    let there = DirStream::open(&other.join("d/s0")).read(usize::MAX);
    assert_eq!(there, here, "metad's listing of s0 differs from the mount's");
    let mut resumed = DirStream::open(&other.join("d/s3"));
    resumed.seek(listings[2][39].1);
    assert_eq!(resumed.read(usize::MAX), listings[2][40..], "resumed from the mount's cookie");

    // A listing of s5 started here; another mount's lookup there recalls the lease, and
    // the listing goes on from metad's answers.
    let mut cut = DirStream::open(&d.join("s5"));
    let mut read = cut.read(10);
    assert!(fs::metadata(other.join("d/s5").join(name(99))).is_ok());
    read.extend(cut.read(usize::MAX));
    assert_eq!(read, listings[4], "a listing cut by a recall");
    drop((cut, resumed, mount, other));
    assert!(cluster.fsck_clean());
}

/// A mount killed with changes it answered itself not yet sent: metad keeps the state after
/// some prefix of them, in order, never a later one without an earlier one, and everything
/// fsynced before the kill.
#[test]
fn a_mount_killed_with_changes_unsent_leaves_a_prefix_of_them() {
    let cluster = Cluster::standard();
    let mount = cluster.mount_with(&["-o", "batch"]);
    fs::create_dir(mount.join("d")).unwrap();
    let mut synced = 0;
    for i in 0..2000 {
        let mut file = fs::File::create(mount.join(&format!("d/f{i}"))).unwrap();
        file.write_all(format!("file {i}").as_bytes()).unwrap();
        if i % 500 == 250 {
            file.sync_all().unwrap();
            synced = i + 1;
        }
    }
    mount.crash();
    let other = cluster.mount();
    let present: BTreeSet<usize> =
        names(&other.join("d")).iter().map(|n| n[1..].parse().unwrap()).collect();
    let kept = present.len();
    println!("{kept} of 2000 files kept, {synced} fsynced");
    assert!(kept >= synced, "{kept} files kept, {synced} were fsynced");
    assert_eq!(present, (0..kept).collect(), "the files kept are the first ones made");
    for i in 0..kept {
        // A file's content is committed at its close, which may come after the next
        // file's create: the last few may be empty, never anything but what was written.
        let content = fs::read(other.join(&format!("d/f{i}"))).unwrap();
        assert!(
            content == format!("file {i}").as_bytes() || (content.is_empty() && i + 16 >= kept),
            "f{i} holds {content:?}"
        );
    }
    for i in 0..synced {
        assert_eq!(
            fs::read(other.join(&format!("d/f{i}"))).unwrap(),
            format!("file {i}").as_bytes()
        );
    }
    drop(other);
    eventually("fsck to find nothing wrong", || cluster.fsck_clean());
}

/// The group's leader dies while a mount keeps making changes it answers itself: batches
/// on their way are sent again to the new leader and applied once, so every change is
/// there once and none fails.
#[test]
fn batches_on_their_way_through_a_leaders_loss_are_applied_once() {
    let mut cluster = Cluster::start_group(3, 6, 4, 2);
    let mount = cluster.mount_with(&["-o", "batch"]);
    fs::create_dir(mount.join("d")).unwrap();
    let (stop, made) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let worker = {
        let (dir, stop, made) = (mount.join("d"), stop.clone(), made.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) || i < 300 {
                fs::write(dir.join(format!("f{i}")), format!("file {i}")).unwrap();
                fs::create_dir(dir.join(format!("s{i}"))).unwrap();
                if i % 2 == 1 {
                    fs::remove_dir(dir.join(format!("s{}", i - 1))).unwrap();
                }
                i += 1;
                made.store(i, Ordering::SeqCst);
            }
            i
        })
    };
    eventually("the changes to get going", || made.load(Ordering::SeqCst) > 50);
    let leader = cluster.leader();
    cluster.stop_replica(leader, nix::sys::signal::Signal::SIGKILL);
    let at_kill = made.load(Ordering::SeqCst);
    eventually("the changes to go on", || made.load(Ordering::SeqCst) > at_kill + 100);
    stop.store(true, Ordering::SeqCst);
    let total = worker.join().unwrap();
    fs::File::open(mount.join("d")).unwrap().sync_all().unwrap();
    let other = cluster.mount();
    let mut expected: BTreeSet<String> = (0..total).map(|i| format!("f{i}")).collect();
    expected.extend((0..total).filter(|i| i % 2 == 1 || *i == total - 1).map(|i| format!("s{i}")));
    assert_eq!(names(&other.join("d")), expected);
    assert_eq!(fs::read(other.join("d/f7")).unwrap(), b"file 7");
    drop((mount, other));
    cluster.start_replica(leader);
    eventually("fsck to find nothing wrong", || cluster.fsck_clean());
}

/// A group of three, a `-o batch` mount that made `d/f` (synced), another mount that has
/// not looked at it, and the group's leader frozen: the first mount's next changes are
/// answered there and stuck on their way to the leader.
fn leader_frozen_under_a_batch_mount() -> (Cluster, Mount, Mount, Stopped) {
    let cluster = Cluster::start_group(3, 3, 2, 1);
    let (a, b) = (cluster.mount_with(&["-o", "batch"]), cluster.mount());
    fs::create_dir(a.join("d")).unwrap();
    fs::write(a.join("d/f"), "before").unwrap();
    fs::File::open(a.join("d")).unwrap().sync_all().unwrap();
    let leader = cluster.replicas[cluster.leader()].process.as_ref().unwrap().pid();
    let frozen = Stopped::stop(leader);
    (cluster, a, b, frozen)
}

/// Overwrites `d/f` (same length, no truncation) and makes `d/g` on `mount`: both answered
/// there under its write leases.
fn change_here(mount: &Mount, content: &str) {
    let mut f = fs::OpenOptions::new().write(true).open(mount.join("d/f")).unwrap();
    f.write_all(content.as_bytes()).unwrap();
    drop(f);
    fs::write(mount.join("d/g"), content).unwrap();
}

/// Changes a mount answered under its write leases just before its leader froze reach the
/// new leader before any other mount is answered (the new leader's grace period), even when
/// the mount is slower to come back than the other (its process stopped for a while): the
/// other mount sees them, changes the file after them, and the first mount then reads that.
#[test]
fn changes_made_before_a_leaders_loss_reach_the_new_leader_before_other_mounts() {
    let (cluster, a, b, frozen) = leader_frozen_under_a_batch_mount();
    change_here(&a, "QUEUED");
    let stopped = Stopped::stop(a.pid().unwrap());
    let seen = std::thread::scope(|scope| {
        let seen = scope.spawn(|| ["d/f", "d/g"].map(|name| fs::read_to_string(b.join(name))));
        // Long enough for the other mount to find the new leader and ask it (without the
        // grace period it would read the old content meanwhile), well inside the period.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        drop(stopped);
        seen.join().unwrap()
    });
    assert_eq!(seen.map(Result::unwrap), ["QUEUED", "QUEUED"]);
    fs::write(b.join("d/f"), "from b").unwrap();
    assert_eq!(fs::read_to_string(a.join("d/f")).unwrap(), "from b");
    fs::File::open(a.join("d")).unwrap().sync_all().expect("nothing refused");
    drop((a, b, frozen));
    eventually("fsck to find nothing wrong", || cluster.fsck_clean());
}

/// A mount that cannot send what it changed before its leader froze until the new leader's
/// grace period is over (its own process stopped meanwhile) has those changes refused: the
/// next fsync reports EIO, and it then shows what other mounts did instead of its own
/// changes, which never reach metad after another mount's.
#[test]
fn changes_sent_after_the_grace_period_are_refused_and_reported() {
    let (cluster, a, b, frozen) = leader_frozen_under_a_batch_mount();
    change_here(&a, "LATE!!");
    let stopped = Stopped::stop(a.pid().unwrap());
    assert_eq!(fs::read_to_string(b.join("d/f")).unwrap(), "before");
    assert!(!b.join("d/g").exists());
    fs::write(b.join("d/f"), "from b").unwrap();
    drop(stopped);
    let synced = fs::File::open(a.join("d")).unwrap().sync_all();
    assert_eq!(synced.map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
    assert_eq!(fs::read_to_string(a.join("d/f")).unwrap(), "from b");
    assert!(!a.join("d/g").exists());
    assert_eq!(fs::read_to_string(b.join("d/f")).unwrap(), "from b");
    drop((a, b, frozen));
    eventually("fsck to find nothing wrong", || cluster.fsck_clean());
}

/// Two mounts creating, renaming and removing names in one directory (made by the first, so
/// it starts out answering changes there itself) at once: every change succeeds, a listing
/// on either mount never shows a name after its removal returned on the other, and both end
/// with the same (empty) directory.
#[test]
fn two_mounts_changing_one_directory_see_one_namespace() {
    let cluster = Cluster::standard();
    let (a, b) = (cluster.mount_with(&["-o", "batch"]), cluster.mount_with(&["-o", "batch"]));
    fs::create_dir(a.join("d")).unwrap();
    const ROUNDS: usize = 150;
    let removed = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        // However the writers end, the listers stop.
        let _stop = StopOnDrop(done.clone());
        for mount in [&a, &b] {
            let (dir, removed, done) = (mount.join("d"), removed.clone(), done.clone());
            scope.spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    let gone =
                        [removed[0].load(Ordering::SeqCst), removed[1].load(Ordering::SeqCst)];
                    for name in names(&dir) {
                        let (side, rest) = name.split_once('-').unwrap();
                        let side: usize = side.parse().unwrap();
                        let i: usize = rest.trim_end_matches(".moved").parse().unwrap();
                        assert!(i >= gone[side], "{name} listed after its removal");
                    }
                }
            });
        }
        let writers: Vec<_> = [&a, &b]
            .into_iter()
            .enumerate()
            .map(|(side, mount)| {
                let (dir, removed) = (mount.join("d"), removed[side].clone());
                scope.spawn(move || {
                    for i in 0..ROUNDS {
                        let name = dir.join(format!("{side}-{i}"));
                        fs::write(&name, b"x").unwrap();
                        let moved = dir.join(format!("{side}-{i}.moved"));
                        fs::rename(&name, &moved).unwrap();
                        fs::remove_file(&moved).unwrap();
                        removed.store(i + 1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("a writer failed");
        }
    });
    assert!(names(&a.join("d")).is_empty());
    assert!(names(&b.join("d")).is_empty());
    drop((a, b));
    assert!(cluster.fsck_clean());
}

/// Sets its flag when dropped, panics included.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
