//! Several mounts of one namespace behave like one machine: what one mount does is seen
//! by the very next operation on another, with no sleep between, while each mount caches
//! what it holds leases on.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use shardfs_tests::{Cluster, Mount};

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Stats `path` on `mount`, so its kernel caches the answer (and the entry) if it may.
fn warm(mount: &Mount, path: &str) -> Option<fs::Metadata> {
    fs::symlink_metadata(mount.join(path)).ok()
}

#[test]
fn namespace_changes_on_one_mount_are_seen_by_the_next_lookup_on_another() {
    let cluster = Cluster::standard();
    let (a, b) = (cluster.mount(), cluster.mount());
    fs::create_dir(a.join("top")).unwrap();
    fs::write(a.join("top/kept"), b"kept").unwrap();
    // B caches the directory, its listing and a name that does not exist yet.
    assert_eq!(names(&b.join("top")), ["kept"]);
    assert!(warm(&b, "top/kept").is_some());
    assert!(warm(&b, "top/new").is_none());

    fs::write(a.join("top/new"), b"fresh").unwrap();
    assert_eq!(fs::read(b.join("top/new")).unwrap(), b"fresh", "create");
    assert_eq!(names(&b.join("top")), ["kept", "new"], "listing after create");

    fs::create_dir(a.join("top/sub")).unwrap();
    assert!(warm(&b, "top/sub").unwrap().is_dir(), "mkdir");

    assert!(warm(&b, "top/sub/moved").is_none());
    fs::rename(a.join("top/new"), a.join("top/sub/moved")).unwrap();
    assert!(warm(&b, "top/new").is_none(), "rename: old name gone");
    assert_eq!(fs::read(b.join("top/sub/moved")).unwrap(), b"fresh", "rename: new name");

    let before = warm(&b, "top/sub/moved").unwrap();
    fs::set_permissions(a.join("top/sub/moved"), fs::Permissions::from_mode(0o600)).unwrap();
    let after = warm(&b, "top/sub/moved").unwrap();
    assert_eq!(after.mode() & 0o7777, 0o600, "chmod");
    assert!(after.ctime_nsec() != before.ctime_nsec() || after.ctime() != before.ctime());

    fs::remove_file(a.join("top/sub/moved")).unwrap();
    assert!(warm(&b, "top/sub/moved").is_none(), "unlink");
    assert!(names(&b.join("top/sub")).is_empty(), "listing after unlink");

    fs::remove_dir(a.join("top/sub")).unwrap();
    assert!(warm(&b, "top/sub").is_none(), "rmdir");
    assert_eq!(names(&b.join("top")), ["kept"]);

    // And the other way round, for a name A has cached.
    assert!(warm(&a, "top/kept").is_some());
    fs::remove_file(b.join("top/kept")).unwrap();
    assert!(warm(&a, "top/kept").is_none(), "unlink on B seen by A");
    let workers = cluster.query(async |c| c.workers().await).unwrap();
    assert!(workers.leases_recalled > 0, "changes recalled leases: {workers:?}");
}

#[test]
fn data_written_on_one_mount_is_read_by_the_next_read_on_another() {
    let cluster = Cluster::standard();
    let (a, b) = (cluster.mount(), cluster.mount());
    let mut writer =
        OpenOptions::new().create(true).truncate(true).write(true).open(a.join("shared")).unwrap();
    writer.write_all(b"first").unwrap();
    // Not fsynced, not closed: buffered on A under its write lease.
    let mut reader = fs::File::open(b.join("shared")).unwrap();
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    assert_eq!(text, "first");

    // B keeps the file open (and its pages cached); A overwrites and extends.
    writer.write_all_at(b"FIRST, then more", 0).unwrap();
    let mut buf = vec![0; 64];
    let n = reader.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"FIRST, then more");
    assert_eq!(fs::metadata(b.join("shared")).unwrap().len(), 16);

    // B writes; A reads it through the handle it wrote with.
    OpenOptions::new().write(true).open(b.join("shared")).unwrap().write_all_at(b"B", 0).unwrap();
    let mut again = OpenOptions::new().read(true).open(a.join("shared")).unwrap();
    again.seek(SeekFrom::Start(0)).unwrap();
    let mut text = String::new();
    again.read_to_string(&mut text).unwrap();
    assert_eq!(text, "BIRST, then more");
    drop(writer);
    assert_eq!(fs::read(b.join("shared")).unwrap(), b"BIRST, then more");
}

#[test]
fn appends_from_two_mounts_interleave_without_losing_a_record() {
    const RECORDS: usize = 300;
    const LEN: usize = 32;
    let cluster = Cluster::standard();
    let (a, b) = (cluster.mount(), cluster.mount());
    fs::write(a.join("log"), b"").unwrap();
    let append = |path: std::path::PathBuf, tag: char| {
        std::thread::spawn(move || {
            let mut log = OpenOptions::new().append(true).open(path).unwrap();
            for i in 0..RECORDS {
                let record = format!("{tag}{i:0width$}\n", width = LEN - 2);
                // One write(2) per record: O_APPEND makes each land whole at the end.
                assert_eq!(log.write(record.as_bytes()).unwrap(), LEN);
            }
        })
    };
    let writers = [append(a.join("log"), 'a'), append(b.join("log"), 'b')];
    for writer in writers {
        writer.join().unwrap();
    }
    let text = fs::read_to_string(b.join("log")).unwrap();
    assert_eq!(text.len(), 2 * RECORDS * LEN, "no record lost or overwritten");
    for tag in ['a', 'b'] {
        let mine: Vec<usize> = text
            .lines()
            .filter(|l| l.starts_with(tag))
            .map(|l| l[1..].parse().expect("a whole record"))
            .collect();
        assert_eq!(mine, (0..RECORDS).collect::<Vec<_>>(), "records of {tag} in order");
    }
}

#[test]
fn a_killed_writer_holds_others_up_only_until_its_lease_expires() {
    let cluster = Cluster::start_with(3, 2, 1, &["--session-timeout", "2"]);
    let (a, b) = (cluster.mount(), cluster.mount());
    let synced: Vec<u8> = (0..3 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let mut file =
        OpenOptions::new().create(true).truncate(true).write(true).open(a.join("f")).unwrap();
    file.write_all(&synced).unwrap();
    file.sync_all().unwrap();
    // Buffered under A's write lease when A dies.
    file.write_all(&[0xEE; 1 << 20]).unwrap();
    a.crash();
    let started = std::time::Instant::now();
    let data = fs::read(b.join("f")).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "B waited for expiry only");
    assert_eq!(&data[..synced.len()], &synced[..], "fsynced data intact");
    // What A had not fsynced is there as written or absent, never garbage.
    let rest = &data[synced.len()..];
    assert!(rest.len() <= 1 << 20 && rest.iter().all(|&b| b == 0xEE), "{} bytes", rest.len());
}

#[test]
fn repeated_stats_of_an_unchanged_tree_cost_no_metad_round_trips() {
    let cluster = Cluster::standard();
    let mount = cluster.mount();
    let mut paths = Vec::new();
    for d in 0..5 {
        fs::create_dir(mount.join(&format!("d{d}"))).unwrap();
        for f in 0..10 {
            let path = format!("d{d}/f{f}");
            fs::write(mount.join(&path), b"x").unwrap();
            paths.push(path);
        }
    }
    let requests = || cluster.mount_requests();
    // What `ls -l` does: list each directory, stat each entry.
    let stat_all = || {
        for d in 0..5 {
            assert_eq!(names(&mount.join(&format!("d{d}"))).len(), 10);
        }
        for path in &paths {
            assert_eq!(fs::metadata(mount.join(path)).unwrap().len(), 1);
        }
    };
    // The first listings also update the directories' atimes (relatime), in the background;
    // a second round and an fsync of the root (which sends them) let those land.
    stat_all();
    stat_all();
    fs::File::open(&mount.path).unwrap().sync_all().unwrap();
    let before = requests();
    for _ in 0..3 {
        stat_all();
    }
    assert_eq!(requests() - before, 0, "listings and stats served from leased caches");
    // A change made elsewhere is still seen at once.
    let other = cluster.mount();
    fs::write(other.join("d0/f0"), b"changed").unwrap();
    assert_eq!(fs::metadata(mount.join("d0/f0")).unwrap().len(), 7);
}

/// The kernel drops file pages under memory pressure (here: drop_caches); the files this
/// mount read under leases it still holds are then read again through the layouts kept
/// under them, without metad, and a change made elsewhere meanwhile is still seen.
#[test]
fn rereads_after_the_kernel_dropped_its_pages_cost_no_metad_round_trips() {
    let cluster = Cluster::standard();
    let mount = cluster.mount();
    let paths: Vec<String> =
        (0..3).flat_map(|d| (0..10).map(move |f| format!("d{d}/f{f}"))).collect();
    for d in 0..3 {
        fs::create_dir(mount.join(&format!("d{d}"))).unwrap();
    }
    for path in &paths {
        // Synced, so no commit left to the background adds a request below.
        let mut file = fs::File::create(mount.join(path)).unwrap();
        file.write_all(b"x").unwrap();
        file.sync_all().unwrap();
    }
    let requests = || cluster.mount_requests();
    let drop_pages = || fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    // Their bytes are inline in the layout.
    let read_all = || paths.iter().for_each(|p| assert_eq!(fs::read(mount.join(p)).unwrap(), b"x"));
    read_all();
    // The reads' atime updates go to metad before this returns.
    fs::File::open(&mount.path).unwrap().sync_all().unwrap();
    let before = requests();
    drop_pages();
    read_all();
    assert_eq!(requests() - before, 0, "rereads served from the leased layouts");
    // Bytes written elsewhere are seen at once.
    let other = cluster.mount();
    fs::write(other.join("d1/f1"), b"changed").unwrap();
    assert_eq!(fs::read(mount.join("d1/f1")).unwrap(), b"changed");
}

#[test]
fn rereads_and_stats_after_writes_are_served_locally_until_another_mount_writes() {
    let cluster = Cluster::standard();
    let (a, b) = (cluster.mount(), cluster.mount());
    let requests = || cluster.mount_requests();
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    for name in &names {
        // Synced, so no commit left to the background after the close adds a request below.
        let mut file = fs::File::create(b.join(name)).unwrap();
        file.write_all(name.repeat(100).as_bytes()).unwrap();
        file.sync_all().unwrap();
    }
    // Written, closed, then stat'ed and read twice: the first read of each file updates
    // its atime (relatime); after that nothing needs metad, neither the stats (answered
    // from the attributes kept under the lease) nor the reads (from the kernel's pages).
    let read_all = || {
        for name in &names {
            assert_eq!(fs::metadata(b.join(name)).unwrap().len(), 100 * name.len() as u64);
            assert_eq!(fs::read_to_string(b.join(name)).unwrap(), name.repeat(100));
        }
    };
    read_all();
    let before = requests();
    read_all();
    read_all();
    assert_eq!(requests() - before, 0, "rereads and stats served without metad");
    // A write elsewhere, same size, no fsync: B's next open and read see it.
    fs::write(a.join("f3"), "F3".repeat(100)).unwrap();
    assert_eq!(fs::read_to_string(b.join("f3")).unwrap(), "F3".repeat(100));
    // And an in-place change of a few bytes through a handle A keeps open.
    let open = OpenOptions::new().write(true).open(a.join("f5")).unwrap();
    open.write_all_at(b"XY", 10).unwrap();
    let mut expected = "f5".repeat(100).into_bytes();
    expected[10..12].copy_from_slice(b"XY");
    assert_eq!(fs::read(b.join("f5")).unwrap(), expected);
}

#[test]
fn a_file_unlinked_on_one_mount_stays_usable_where_it_is_open() {
    let cluster = Cluster::standard();
    let (a, b) = (cluster.mount(), cluster.mount());
    fs::write(a.join("doomed"), b"still here").unwrap();
    // B opens it under a lease, so metad has not heard of that open yet.
    assert!(warm(&b, "doomed").is_some());
    let mut open = OpenOptions::new().read(true).write(true).open(b.join("doomed")).unwrap();
    fs::remove_file(a.join("doomed")).unwrap();
    assert!(warm(&b, "doomed").is_none(), "the name is gone on B too");
    let mut text = String::new();
    open.read_to_string(&mut text).unwrap();
    assert_eq!(text, "still here");
    open.write_all_at(b"STILL", 0).unwrap();
    let mut buf = [0u8; 10];
    open.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"STILL here");
}

/// The mount adding or removing a name keeps its directory's new attributes from the
/// change's own answer, so the stat the kernel asks for right after needs no metad request,
/// and in a directory it made, its names, so a lookup of a missing one needs none either;
/// a change another mount makes in the directory still shows at once.
#[test]
fn a_directory_changed_here_is_stated_without_metad_and_changes_elsewhere_show() {
    let cluster = Cluster::standard();
    let (a, b) = (cluster.mount(), cluster.mount());
    let requests = || cluster.mount_requests();
    let dir = b.join("d");
    fs::create_dir(&dir).unwrap();
    let mut last = fs::metadata(&dir).unwrap();
    // Changes the mount made itself are sent in batches in the background: synced before
    // counting.
    let sync = || fs::File::open(&dir).unwrap().sync_all().unwrap();
    for round in 0..5 {
        let name = format!("s{round}");
        std::os::unix::fs::symlink("target", dir.join(&name)).unwrap();
        sync();
        let before = requests();
        let after_add = fs::metadata(&dir).unwrap();
        assert_eq!(requests() - before, 0, "stat after a symlink served without metad");
        assert!(after_add.mtime_nsec() != last.mtime_nsec() || after_add.mtime() != last.mtime());
        fs::remove_file(dir.join(&name)).unwrap();
        sync();
        let before = requests();
        last = fs::metadata(&dir).unwrap();
        assert_eq!(requests() - before, 0, "stat after an unlink served without metad");
        assert_eq!(last.nlink(), 2);
    }
    // This mount made the directory, so it knows every name in it: a lookup of a missing
    // one costs no request, and a name it added is found after the kernel forgot it.
    std::os::unix::fs::symlink("target", dir.join("kept")).unwrap();
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    assert!(fs::symlink_metadata(dir.join("kept")).is_ok());
    sync();
    let before = requests();
    for i in 0..10 {
        assert!(fs::symlink_metadata(dir.join(format!("missing{i}"))).is_err());
    }
    assert_eq!(requests() - before, 0, "lookups of missing names in a directory made here");
    // Names another mount adds show all the same.
    fs::write(a.join("d/missing3"), "late").unwrap();
    assert_eq!(fs::read(dir.join("missing3")).unwrap(), b"late", "another mount's new name");
    fs::create_dir(a.join("d/sub")).unwrap();
    assert_eq!(fs::metadata(&dir).unwrap().nlink(), 3, "another mount's mkdir shows");
}

/// Opens of `name` in `reader_dir` while a writer replaces it in `writer_dir` by rename, as
/// editors and config reloaders do (`echo $i > f.tmp; mv f.tmp f`), until `opens` were
/// made. Returns the opens that failed, by error.
fn opens_during_atomic_replace(writer_dir: &Path, reader_dir: &Path, opens: usize) -> Vec<String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    fs::write(writer_dir.join("f"), b"0").unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let (tmp, f) = (writer_dir.join("f.tmp"), writer_dir.join("f"));
            let mut replaced = 0u64;
            while !stop.load(Ordering::Relaxed) {
                replaced += 1;
                fs::write(&tmp, replaced.to_string()).unwrap();
                fs::rename(&tmp, &f).unwrap();
            }
            replaced
        });
        // Stops the writer however the reads end, a failed assertion included, so the scope
        // can end.
        struct StopWhenDone<'a>(&'a AtomicBool);
        impl Drop for StopWhenDone<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let reading = StopWhenDone(&stop);
        let mut failed = Vec::new();
        for _ in 0..opens {
            match read_naming_the_step(&reader_dir.join("f")) {
                Ok(text) => assert!(!text.is_empty(), "a reader saw a file half written"),
                Err(e) => failed.push(e),
            }
        }
        drop(reading);
        assert!(writer.join().unwrap() > 0, "the writer replaced nothing");
        failed
    })
}

/// The file's content, or the error and the step (open or read) that failed.
fn read_naming_the_step(path: &Path) -> Result<Vec<u8>, String> {
    let mut file = fs::File::open(path).map_err(|e| format!("open: {e}"))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(|e| format!("read: {e}"))?;
    Ok(text)
}

/// How many opens the cross-mount stress test makes: `SHARDFS_SOAK=1` makes the 10,000
/// the defects issue asks for.
fn soak(ci: usize, full: usize) -> usize {
    if std::env::var_os("SHARDFS_SOAK").is_some() { full } else { ci }
}

/// Files the mount at `metrics` (its metrics address) has open.
fn open_files(metrics: &str) -> Option<f64> {
    shardfs_tests::sample(&shardfs_tests::scrape(metrics), "shardfs_client_open_files")
}

/// Every open was closed again, failed ones included: none is left behind on `mount` to be
/// sent to metad again before each later removal.
fn nothing_left_open(mount: &Mount) {
    let metrics = shardfs_tests::metrics_endpoint(mount.log().unwrap());
    shardfs_tests::eventually("nothing open", || open_files(&metrics) == Some(0.0));
}

#[test]
fn a_name_replaced_by_rename_never_goes_missing_on_another_mount() {
    let cluster = Cluster::standard();
    let metrics = ["--metrics-listen", "127.0.0.1:0"];
    let (a, b) = (cluster.mount_with(&metrics), cluster.mount_with(&metrics));
    let failed = opens_during_atomic_replace(&a.path, &b.path, soak(1_000, 10_000));
    assert_eq!(failed.len(), 0, "on another mount: {:?}", &failed[..failed.len().min(5)]);
    nothing_left_open(&a);
    nothing_left_open(&b);
}

/// 100,000 opens on the mount that renames, as the defects issue asks. The kernel opens
/// what its cache named just before the rename reached it: without the lingering of a
/// nameless file's last close while this mount holds a lease on it, some of those opens
/// found the file gone at their first read (`ENOENT`), and without keeping a closed file's
/// buffered bytes while their commit runs, some read it empty.
#[test]
fn a_name_replaced_by_rename_never_goes_missing_on_the_renaming_mount() {
    let cluster = Cluster::standard();
    let a = cluster.mount_with(&["--metrics-listen", "127.0.0.1:0"]);
    let failed = opens_during_atomic_replace(&a.path, &a.path, 100_000);
    assert_eq!(failed.len(), 0, "on the renaming mount: {:?}", &failed[..failed.len().min(5)]);
    nothing_left_open(&a);
}

#[test]
fn a_crashed_mount_holds_no_one_up_over_what_it_only_read() {
    let cluster = Cluster::start_with(3, 2, 1, &["--session-timeout", "60"]);
    let (a, b) = (cluster.mount(), cluster.mount());
    fs::create_dir(a.join("d")).unwrap();
    fs::write(a.join("d/f"), b"before").unwrap();
    // B reads the file and lists the directory: it holds read leases on both.
    assert_eq!(fs::read(b.join("d/f")).unwrap(), b"before");
    assert_eq!(names(&b.join("d")), ["f"]);
    b.crash();
    // Its connection closed with it: metad gives its read leases back at once rather than
    // at the end of its session.
    let started = std::time::Instant::now();
    fs::write(a.join("d/f"), b"after").unwrap();
    fs::write(a.join("d/g"), b"new").unwrap();
    let waited = started.elapsed();
    assert!(waited < std::time::Duration::from_secs(30), "A waited {waited:?} for B's session");
    assert_eq!(names(&a.join("d")), ["f", "g"]);
}

#[test]
fn leases_on_deleted_files_are_given_back() {
    let cluster = Cluster::standard();
    let mount = cluster.mount();
    let held = || cluster.query(async |c| c.workers().await).unwrap().leases_held;
    for _round in 0..2 {
        for i in 0..500 {
            fs::write(mount.join(&format!("f{i}")), b"x").unwrap();
        }
        for i in 0..500 {
            fs::remove_file(mount.join(&format!("f{i}"))).unwrap();
        }
    }
    // Once the files are gone for good (after lingering for opens on their way), metad
    // holds no lease on them: only the few on what is left.
    shardfs_tests::eventually("leases on deleted files to go", || held() < 10);
}

/// A file this mount made and wrote in two commits, its attributes changed here after
/// them: reads see both commits' bytes (the layout kept from the first commit, which the
/// second made stale, used to be made to look current by the attribute change, and the
/// second commit's bytes read as zeros; xfstests generic/251 found it through cp -a).
#[test]
fn a_layout_kept_from_an_earlier_commit_is_not_revived_by_a_change_made_here() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    fs::create_dir(mount.join("d")).unwrap();
    let path = mount.join("d/f");
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
    file.write_all_at(&[1; 4096], 0).unwrap();
    file.sync_all().unwrap();
    file.write_all_at(&[2; 4096], 1 << 20).unwrap();
    file.sync_all().unwrap();
    file.set_permissions(fs::Permissions::from_mode(0o600)).unwrap();
    drop(file);
    // Read through a fresh open, from what the mount keeps (not the kernel's pages).
    fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    let mut tail = vec![0; 4096];
    fs::File::open(&path).unwrap().read_exact_at(&mut tail, 1 << 20).unwrap();
    assert!(tail.iter().all(|&b| b == 2), "the second commit's bytes read back");
    let content = fs::read(&path).unwrap();
    assert_eq!(content.len(), (1 << 20) + 4096);
    assert!(content[..4096].iter().all(|&b| b == 1));
}
