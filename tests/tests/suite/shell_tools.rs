//! Everyday shell tools on a real mount behave as on a local disk.

use shardfs_tests::{Cluster, as_user, sh, sha256, write_random};

#[test]
fn copy_a_real_tree_and_diff_it() {
    let cluster = Cluster::standard();
    let mount = cluster.mount();
    let m = mount.path.display();
    sh(&format!("cp -a /usr/include {m}/include"));
    sh(&format!("diff -r /usr/include {m}/include"));
    // Ownership, modes and times came along with cp -a.
    // Directory sizes differ by design (shardfs reports 0), so sizes are compared for files.
    let listing = r"find . -printf '%p %y %m %U %G %T@\n' -type f -printf '%p %s\n' | sort";
    let local = sh(&format!("cd /usr/include && {listing}"));
    let mounted = sh(&format!("cd {m}/include && {listing}"));
    for (a, b) in local.lines().zip(mounted.lines()) {
        assert_eq!(a, b, "metadata preserved by cp -a");
    }
    assert_eq!(local.lines().count(), mounted.lines().count());
    // tar round trip through the mount.
    sh(&format!("cd {m} && tar cf - include | (mkdir {m}/untar && cd {m}/untar && tar xf -)"));
    sh(&format!("diff -r /usr/include {m}/untar/include"));
    sh(&format!("rm -rf {m}/include {m}/untar"));
    assert_eq!(sh(&format!("ls -A {m}")), "");
}

#[test]
fn dd_at_odd_offsets_and_truncate_match_a_local_file() {
    let cluster = Cluster::standard();
    let mount = cluster.mount();
    let local = cluster.dir.path().join("reference");
    let remote = mount.join("f");
    let seed_file = cluster.dir.path().join("seed");
    write_random(&seed_file, 9 << 20, 7);
    // The same sequence of writes and truncations on both files.
    for target in [&local, &remote] {
        let t = target.display();
        let s = seed_file.display();
        sh(&format!("dd if={s} of={t} bs=1M count=9 status=none"));
        sh(&format!("dd if=/dev/zero of={t} bs=1 seek=4194303 count=3 conv=notrunc status=none"));
        sh(&format!("dd if={s} of={t} bs=4096 skip=3 seek=1001 count=7 conv=notrunc status=none"));
        sh(&format!("dd if={s} of={t} bs=777 skip=1 seek=13000 count=5 conv=notrunc status=none"));
        sh(&format!("truncate -s 5000001 {t}"));
        sh(&format!("truncate -s 12345678 {t}"));
        sh(&format!("dd if={s} of={t} bs=1 seek=20000000 count=10 conv=notrunc status=none"));
        sh(&format!("truncate -s 19999999 {t}"));
    }
    assert_eq!(sha256(&local), sha256(&remote));
    assert_eq!(std::fs::metadata(&remote).unwrap().len(), 19_999_999);
    // The hole reads as zeros and is not counted as allocated.
    let blocks = sh(&format!("stat -c %b {}", remote.display()));
    assert!(blocks.trim().parse::<u64>().unwrap() * 512 < 19_999_999);
}

#[test]
fn links_moves_permissions_times_fifos_and_xattrs() {
    let cluster = Cluster::standard();
    let mount = cluster.mount();
    let m = mount.path.display();
    sh(&format!("mkdir -p {m}/a/b {m}/c && echo hello > {m}/a/f"));
    // Hard and symbolic links.
    sh(&format!("ln {m}/a/f {m}/a/hard && ln -s ../a/f {m}/c/sym"));
    assert_eq!(sh(&format!("stat -c %h {m}/a/f")).trim(), "2");
    assert_eq!(sh(&format!("readlink {m}/c/sym")).trim(), "../a/f");
    assert_eq!(sh(&format!("cat {m}/c/sym")), "hello\n");
    // mv within and across directories, including a directory.
    sh(&format!("mv {m}/a/hard {m}/a/renamed && mv {m}/a/renamed {m}/c/moved"));
    sh(&format!("mv {m}/a/b {m}/c/b"));
    assert_eq!(sh(&format!("cat {m}/c/moved")), "hello\n");
    assert_eq!(sh(&format!("ls {m}/c")), "b\nmoved\nsym\n");
    assert_eq!(sh(&format!("stat -c %h {m}/a {m}/c")), "2\n3\n");
    // chmod, chown, touch -d.
    sh(&format!("chmod 640 {m}/a/f && chown 1234:5678 {m}/a/f"));
    assert_eq!(sh(&format!("stat -c '%a %u %g' {m}/a/f")).trim(), "640 1234 5678");
    sh(&format!("touch -d '2001-02-03 04:05:06.123456789 UTC' {m}/a/f"));
    assert_eq!(sh(&format!("stat -c %y {m}/a/f")).trim(), "2001-02-03 04:05:06.123456789 +0000");
    // A fifo works as a fifo.
    sh(&format!("mkfifo {m}/fifo && test -p {m}/fifo"));
    assert_eq!(sh(&format!("(echo through > {m}/fifo &) ; cat {m}/fifo")), "through\n");
    // Extended attributes.
    sh(&format!("setfattr -n user.color -v blue {m}/a/f"));
    assert!(sh(&format!("getfattr -d {m}/a/f")).contains("user.color=\"blue\""));
    sh(&format!("setfattr -x user.color {m}/a/f"));
    assert!(!sh(&format!("getfattr -d {m}/a/f")).contains("user.color"));
    // rm -rf of the lot.
    sh(&format!("rm -rf {m}/a {m}/c {m}/fifo"));
    assert_eq!(sh(&format!("ls -A {m}")), "");
}

#[test]
fn df_reports_real_capacity() {
    let cluster = Cluster::standard();
    let mount = cluster.mount();
    let out = sh(&format!("df -B1 --output=size,avail {}", mount.path.display()));
    let numbers: Vec<u64> =
        out.lines().nth(1).unwrap().split_whitespace().map(|n| n.parse().unwrap()).collect();
    let (size, avail) = (numbers[0], numbers[1]);
    // Six chunkds share this machine's disk, which counts once; 4+2 coding leaves 4/6 of
    // it usable.
    let disk = sh(&format!("df -B1 --output=size,avail {}", cluster.dir.path().display()));
    let disk: Vec<u64> =
        disk.lines().nth(1).unwrap().split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert!(size > 0 && avail > 0 && avail <= size);
    let expected = disk[0] * 4 / 6;
    assert!(size.abs_diff(expected) < expected / 100, "size {size}, expected about {expected}");
}

/// fstrim has nothing to trim, and says so; as on ext4, only root may ask.
#[test]
fn fstrim_trims_nothing_and_is_for_root() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount_with(&["--allow-other"]);
    std::fs::write(mount.join("f"), vec![7u8; 1 << 20]).unwrap();
    let said = sh(&format!("fstrim -v {} 2>&1; echo rc=$?", mount.path.display()));
    assert!(said.contains("0 B (0 bytes) trimmed") && said.ends_with("rc=0\n"), "{said}");
    let user = format!("{}fstrim {} 2>&1; echo rc=$?", as_user(1000), mount.path.display());
    let said = sh(&user);
    assert!(said.contains("Operation not permitted") && !said.ends_with("rc=0\n"), "{said}");
}

/// SQLite in rollback-journal mode, with writers on two mounts of one volume: every
/// transaction reads the row count and inserts it, so a lost update or a torn commit shows
/// as a missing row or a repeated count. (WAL mode cannot work across hosts: its index is
/// shared memory; see docs/SEMANTICS.md.)
#[test]
fn sqlite_with_writers_on_two_mounts_loses_nothing() {
    let cluster = Cluster::standard();
    let (a, b) = (cluster.mount(), cluster.mount());
    let writer = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=120, isolation_level=None)
assert db.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
db.execute("CREATE TABLE IF NOT EXISTS t (who TEXT, seen INTEGER)")
for _ in range(int(sys.argv[3])):
    db.execute("BEGIN IMMEDIATE")
    (count,) = db.execute("SELECT COUNT(*) FROM t").fetchone()
    db.execute("INSERT INTO t VALUES (?, ?)", (sys.argv[2], count))
    db.execute("COMMIT")
"#;
    let run = |mount: &shardfs_tests::Mount, who: &str, n: &str| {
        std::process::Command::new("python3")
            .args(["-c", writer, mount.join("db").to_str().unwrap(), who, n])
            .spawn()
            .unwrap()
    };
    assert!(run(&a, "setup", "0").wait().unwrap().success());
    let mut writers = [run(&a, "a", "150"), run(&b, "b", "150")];
    for w in &mut writers {
        assert!(w.wait().unwrap().success(), "a writer failed");
    }
    let check = "import sqlite3, sys\n\
        db = sqlite3.connect(sys.argv[1])\n\
        print(db.execute('PRAGMA integrity_check').fetchone()[0])\n\
        rows = db.execute('SELECT who, seen FROM t ORDER BY seen').fetchall()\n\
        print(len(rows), sorted(r[1] for r in rows) == list(range(len(rows))))\n\
        print(sum(r[0] == 'a' for r in rows), sum(r[0] == 'b' for r in rows))";
    for mount in [&a, &b] {
        let db = mount.join("db");
        let out = sh(&format!("python3 -c \"{check}\" {}", db.display()));
        assert_eq!(out.trim(), "ok\n300 True\n150 150", "seen from {}", mount.path.display());
    }
}
