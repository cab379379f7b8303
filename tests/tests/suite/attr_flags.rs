//! File attribute flags (chattr, lsattr): immutable, append-only, noatime, nodump, sync,
//! project id and extent size hint, checked with the tools and syscalls users run, as root
//! and as a user, on the mount that set them and on another mount of the volume; and metad
//! refusing what they forbid when a client skips the kernel.

use std::path::Path;

use shardfs_meta_api::MetaClientError;
use shardfs_meta_api::file_flags::{self, FlagChange};
use shardfs_meta_api::proto::{Cred, MetaError, ROOT_INO, SetAttr};
use shardfs_tests::{Cluster, Mount, as_user, sh};

/// Tries each operation named on the command line on file `path` and prints
/// `name=ok` or `name=ERRNO` for each, in order.
const TRY_OPS: &str = r#"
import errno, os, sys
path, ops = sys.argv[1], sys.argv[2:]
def op(name):
    if name == "read":
        with open(path, "rb") as f: f.read()
    elif name == "write":
        fd = os.open(path, os.O_WRONLY); os.pwrite(fd, b"x", 0); os.close(fd)
    elif name == "append":
        fd = os.open(path, os.O_WRONLY | os.O_APPEND); os.write(fd, b"+"); os.close(fd)
    elif name == "open_trunc":
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_TRUNC))
    elif name == "truncate":
        os.truncate(path, 1)
    elif name == "unlink":
        os.unlink(path)
    elif name == "rename":
        os.rename(path, path + ".moved")
    elif name == "link":
        os.link(path, path + ".link")
    elif name == "chmod":
        os.chmod(path, 0o600)
    elif name == "chown":
        os.chown(path, os.getuid(), os.getgid())
    elif name == "utime":
        os.utime(path, (1000000000, 1000000000))
    elif name == "touch":
        os.utime(path, None)
    elif name == "setxattr":
        os.setxattr(path, "user.k", b"v")
    elif name == "create_in":
        open(os.path.join(path, "new"), "w").close()
    elif name == "remove_in":
        os.unlink(os.path.join(path, "old"))
    else:
        raise SystemExit("unknown op " + name)
out = []
for name in ops:
    try:
        op(name)
        out.append(name + "=ok")
    except OSError as e:
        out.append(name + "=" + errno.errorcode[e.errno])
print(" ".join(out))
"#;

/// A file holding `content`, with mode `mode`, owned by user 1000.
fn user_file(path: &Path, content: &[u8], mode: u32) {
    std::fs::write(path, content).unwrap();
    sh(&format!("chmod {mode:o} {0} && chown 1000:1000 {0}", path.display()));
}

/// The outcome of each of `ops` on `path`, as root (`uid` 0) or as user `uid`.
fn try_ops(path: &Path, uid: u32, ops: &[&str]) -> String {
    let user = as_user(uid);
    let script = TRY_OPS.replace('\'', r"'\''");
    let line = format!("{user}/usr/bin/python3 -c '{script}' {} {}", path.display(), ops.join(" "));
    sh(&line).trim().to_string()
}

/// What lsattr (e2fsprogs 1.47) shows for the flags `letters`: one column per flag.
fn shown(letters: &str) -> String {
    const COLUMNS: &str = "suSDiadAcEjItTeCxFNPVm";
    COLUMNS.chars().map(|c| if letters.contains(c) { c } else { '-' }).collect()
}

/// What [`try_ops`] prints when each of `ops` is refused with EPERM.
fn all_refused(ops: &[&str]) -> String {
    ops.iter().map(|op| format!("{op}=EPERM")).collect::<Vec<_>>().join(" ")
}

/// What lsattr shows of `path`'s flags (its first word).
fn lsattr(path: &Path) -> String {
    let out = sh(&format!("lsattr -d {}", path.display()));
    out.split_whitespace().next().unwrap_or_default().to_string()
}

/// chattr as `uid`: its exit status and what it said.
fn chattr(path: &Path, uid: u32, flags: &str) -> (bool, String) {
    let user = as_user(uid);
    let out = sh(&format!("{user}chattr {flags} {} 2>&1; echo rc=$?", path.display()));
    (out.trim_end().ends_with("rc=0"), out)
}

/// A volume with two mounts that let users in, and a directory `d` anyone may write.
fn two_mounts() -> (Cluster, Mount, Mount) {
    let cluster = Cluster::start(3, 2, 1);
    let (a, b) = (cluster.mount_with(&["--allow-other"]), cluster.mount_with(&["--allow-other"]));
    sh(&format!("chmod 777 {} && mkdir -m 777 {}", a.path.display(), a.join("d").display()));
    (cluster, a, b)
}

#[test]
fn an_immutable_file_refuses_every_change_by_anyone_on_every_mount_until_cleared() {
    let (_cluster, a, b) = two_mounts();
    let file = a.join("d/f");
    user_file(&file, b"original", 0o666);
    let (set, said) = chattr(&file, 0, "+i");
    assert!(set, "{said}");
    assert_eq!(lsattr(&file), shown("i"));
    assert_eq!(lsattr(&b.join("d/f")), shown("i"), "the other mount sees it");

    let changes = [
        "write",
        "append",
        "open_trunc",
        "truncate",
        "unlink",
        "rename",
        "link",
        "chmod",
        "chown",
        "utime",
        "touch",
        "setxattr",
    ];
    let refused = all_refused(&changes);
    for mount in [&a, &b] {
        let path = mount.join("d/f");
        for uid in [0, 1000] {
            let got = try_ops(&path, uid, &changes);
            assert_eq!(got, refused, "uid {uid} on {}", mount.path.display());
            assert_eq!(try_ops(&path, uid, &["read"]), "read=ok");
        }
    }
    assert_eq!(std::fs::read(b.join("d/f")).unwrap(), b"original");

    // Only root may clear it (the owner may not), on either mount.
    let (cleared, said) = chattr(&b.join("d/f"), 1000, "-i");
    assert!(!cleared && said.contains("Operation not permitted"), "{said}");
    let (cleared, said) = chattr(&b.join("d/f"), 0, "-i");
    assert!(cleared, "{said}");
    assert_eq!(lsattr(&file), shown(""));
    assert_eq!(
        try_ops(&file, 1000, &["write", "append", "truncate"]),
        "write=ok append=ok truncate=ok"
    );
    assert_eq!(std::fs::read(b.join("d/f")).unwrap(), b"x");
}

#[test]
fn an_immutable_directory_takes_no_names_and_loses_none() {
    let (_cluster, a, b) = two_mounts();
    let dir = a.join("d/sub");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("old"), b"kept").unwrap();
    sh(&format!("chmod 777 {}", dir.display()));
    assert!(chattr(&dir, 0, "+i").0);
    for mount in [&a, &b] {
        let path = mount.join("d/sub");
        for uid in [0, 1000] {
            let got = try_ops(&path, uid, &["create_in", "remove_in", "rename", "chmod"]);
            assert_eq!(got, "create_in=EPERM remove_in=EPERM rename=EPERM chmod=EPERM");
        }
    }
    // Its files are not immutable: they change as ever.
    std::fs::write(b.join("d/sub/old"), b"changed").unwrap();
    assert_eq!(std::fs::read(a.join("d/sub/old")).unwrap(), b"changed");
    assert!(chattr(&dir, 0, "-i").0);
    assert_eq!(try_ops(&dir, 1000, &["create_in", "remove_in"]), "create_in=ok remove_in=ok");
}

#[test]
fn an_append_only_file_grows_at_its_end_only() {
    let (_cluster, a, b) = two_mounts();
    let file = a.join("d/log");
    user_file(&file, b"start", 0o666);
    assert!(chattr(&file, 0, "+a").0);
    assert_eq!(lsattr(&b.join("d/log")), shown("a"));
    let (set, said) = chattr(&file, 1000, "-a");
    assert!(!set && said.contains("Operation not permitted"), "{said}");

    for (mount, uid) in [(&a, 0), (&b, 1000)] {
        let path = mount.join("d/log");
        let refused = [
            "write",
            "open_trunc",
            "truncate",
            "unlink",
            "rename",
            "link",
            "chmod",
            "chown",
            "utime",
            "setxattr",
        ];
        assert_eq!(try_ops(&path, uid, &refused), all_refused(&refused), "uid {uid}");
        assert_eq!(try_ops(&path, uid, &["append", "touch", "read"]), "append=ok touch=ok read=ok");
    }
    // Both appends landed, at the end, whichever mount made them.
    assert_eq!(std::fs::read(a.join("d/log")).unwrap(), b"start++");
    assert_eq!(std::fs::read(b.join("d/log")).unwrap(), b"start++");

    // An append-only directory takes new names and loses none.
    let dir = a.join("d/spool");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("old"), b"").unwrap();
    sh(&format!("chmod 777 {}", dir.display()));
    assert!(chattr(&dir, 0, "+a").0);
    let got = try_ops(&b.join("d/spool"), 1000, &["create_in", "remove_in"]);
    assert_eq!(got, "create_in=ok remove_in=EPERM");
    assert!(chattr(&dir, 0, "-a").0);
    assert_eq!(try_ops(&b.join("d/spool"), 1000, &["remove_in"]), "remove_in=ok");
}

#[test]
fn owners_set_the_unprivileged_flags_and_new_files_inherit_them() {
    let (_cluster, a, b) = two_mounts();
    let file = a.join("d/f");
    user_file(&file, b"data", 0o644);
    // The owner sets nodump, noatime and sync; another user sets nothing.
    let (set, said) = chattr(&file, 1000, "+dAS");
    assert!(set, "{said}");
    assert_eq!(lsattr(&b.join("d/f")), shown("SdA"));
    let (set, said) = chattr(&b.join("d/f"), 1001, "-d");
    assert!(!set && said.contains("Operation not permitted"), "{said}");
    // Flags shardfs does not keep are refused, not dropped silently.
    let (set, said) = chattr(&file, 0, "+c");
    assert!(!set && said.contains("Operation not supported"), "{said}");
    // D (dirsync) and P (project inherit) are for directories: dropped from a file, as on
    // ext4.
    assert!(chattr(&file, 0, "+D").0);
    assert_eq!(lsattr(&file), shown("SdA"));

    // A directory passes S, d, A, D and P and its project id on, as ext4 does, to what is
    // made in it on either mount: on the one that made it (which holds its write lease and
    // makes names there itself) and on the other (which asks metad).
    let dir = a.join("d/proj");
    std::fs::create_dir(&dir).unwrap();
    let (set, said) = chattr(&dir, 0, "+dAP -p 42");
    assert!(set, "{said}");
    for (mount, name) in [(&a, "here"), (&b, "there")] {
        std::fs::write(mount.join(&format!("d/proj/{name}.file")), b"x").unwrap();
        std::fs::create_dir(mount.join(&format!("d/proj/{name}.dir"))).unwrap();
    }
    for mount in [&a, &b] {
        for name in ["here", "there"] {
            let file = mount.join(&format!("d/proj/{name}.file"));
            let sub = mount.join(&format!("d/proj/{name}.dir"));
            assert_eq!(lsattr(&file), shown("dA"), "{}", file.display());
            assert_eq!(lsattr(&sub), shown("dAP"), "{}", sub.display());
            let projid = sh(&format!("lsattr -dp {}", sub.display()));
            assert!(projid.trim_start().starts_with("42 "), "{projid}");
        }
    }
    // D is kept, and inherited, too.
    assert!(chattr(&dir, 0, "+D").0);
    std::fs::create_dir(b.join("d/proj/synced")).unwrap();
    assert_eq!(lsattr(&a.join("d/proj/synced")), shown("dADP"));
}

/// FS_IOC_FSSETXATTR through Python: project id and extent size hint, and the flags the
/// two interfaces share.
#[test]
fn project_ids_and_extent_size_hints_round_trip_through_fsxattr() {
    let (_cluster, a, b) = two_mounts();
    let file = a.join("d/f");
    user_file(&file, b"data", 0o644);
    let script = r#"
import fcntl, struct, sys
GET, SET = 0x801c581f, 0x401c5820
def get(path):
    with open(path, "rb") as f:
        return struct.unpack("=5I8x", fcntl.ioctl(f, GET, bytes(28)))
def set(path, xflags, extsize, projid):
    with open(path, "rb") as f:
        try:
            fcntl.ioctl(f, SET, struct.pack("=5I8x", xflags, extsize, 0, projid, 0))
            return "ok"
        except OSError as e:
            return str(e.errno)
if sys.argv[1] == "set":
    print(set(sys.argv[2], *map(int, sys.argv[3:])))
else:
    print(" ".join(map(str, get(sys.argv[2]))))
"#;
    let as_uid = |uid: u32, args: &str| {
        let line = format!("{}/usr/bin/python3 -c '{script}' {args}", as_user(uid));
        sh(&line).trim().to_string()
    };
    let py = |args: &str| as_uid(0, args);
    // Another user may not; the owner may: EXTSIZE (0x800) with 64 KiB, NODUMP (0x80),
    // project 7.
    let set = format!("set {} {} 65536 7", file.display(), 0x800 | 0x80);
    assert_eq!(as_uid(1001, &set), "1", "EPERM");
    assert_eq!(as_uid(1000, &set), "ok");
    let other = b.join("d/f");
    assert_eq!(py(&format!("get {}", other.display())), format!("{} 65536 0 7 0", 0x880));
    assert_eq!(lsattr(&other), shown("d"));
    // A hint that is not a multiple of 4 KiB, or one without its flag: EINVAL.
    assert_eq!(py(&format!("set {} {} 1000 7", file.display(), 0x800)), "22");
    assert_eq!(py(&format!("set {} 0 65536 7", file.display())), "22");
    // A hint of 0 turns the flag off.
    assert_eq!(py(&format!("set {} 0 0 7", file.display())), "ok");
    assert_eq!(py(&format!("get {}", other.display())), "0 0 0 7 0");
}

/// noatime: a read leaves the atime as it was, on either mount, where it would move without
/// the flag (relatime: the atime is older than the mtime).
#[test]
fn noatime_files_keep_their_access_time() {
    let (cluster, a, b) = two_mounts();
    let (flagged, plain) = (a.join("d/flagged"), a.join("d/plain"));
    std::fs::write(&flagged, b"data").unwrap();
    std::fs::write(&plain, b"data").unwrap();
    assert!(chattr(&flagged, 0, "+A").0);
    // An atime set explicitly is set all the same; reads after it do not move it.
    sh(&format!("touch -a -d 2001-01-01 {} {}", flagged.display(), plain.display()));
    // Read by root on one mount, by a user on the other.
    for (mount, uid) in [(&a, 0), (&b, 1000)] {
        let (f, p) = (mount.join("d/flagged"), mount.join("d/plain"));
        sh(&format!("{}cat {} {} > /dev/null", as_user(uid), f.display(), p.display()));
    }
    // Seen from a fresh mount, after both mounts sent their atime updates.
    drop((a, b));
    let c = cluster.mount();
    let atime = |path: &Path| sh(&format!("stat -c %X {}", path.display())).trim().to_string();
    assert_eq!(atime(&c.join("d/flagged")), "978307200");
    assert_ne!(atime(&c.join("d/plain")), "978307200", "the plain file's atime moved");
}

/// sync: each write is committed and durable when write(2) returns, so a mount killed with
/// the file still open loses none of it; the owner set the flag, and wrote, as a user.
#[test]
fn writes_to_a_sync_file_survive_the_mount_being_killed() {
    // The killed mount's leases go with its session, soon.
    let cluster = Cluster::start_with(3, 2, 1, &["--session-timeout", "2"]);
    let a = cluster.mount_with(&["--allow-other"]);
    sh(&format!("chmod 777 {}", a.path.display()));
    let file = a.join("journal");
    user_file(&file, b"", 0o644);
    assert!(chattr(&file, 1000, "+S").0);
    // Writes 20 records through one descriptor, says so, and keeps it open.
    let writer = r#"
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
for i in range(20):
    os.write(fd, b"record %d\n" % i)
print("written", flush=True)
time.sleep(60)
"#;
    let mut child = std::process::Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "/usr/bin/python3", "-c"])
        .args([writer, file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut said).unwrap();
    assert_eq!(said, "written\n");
    a.crash();
    child.kill().unwrap();
    child.wait().unwrap();
    let b = cluster.mount();
    let expected: String = (0..20).map(|i| format!("record {i}\n")).collect();
    assert_eq!(std::fs::read_to_string(b.join("journal")).unwrap(), expected);
}

/// metad holds the rules itself: a client that skips the kernel's checks is refused too.
#[test]
fn metad_refuses_what_the_flags_forbid_from_any_client() {
    let cluster = Cluster::start(3, 2, 1);
    let alice = Cred { uid: 1000, gid: 1000, umask: 0o022, groups: Vec::new() };
    let refused = |result: Result<_, MetaClientError>| match result {
        Err(MetaClientError::Meta(e)) => e,
        Ok(attr) => panic!("expected a refusal, got {attr:?}"),
        Err(e) => panic!("expected a refusal, got {e}"),
    };
    cluster.query(async |c| {
        let root = Cred::ROOT;
        let made = c.make_node(ROOT_INO, b"f", libc::S_IFREG | 0o666, 0, root.clone());
        let file = made.await.unwrap().attr;
        let to_alice = SetAttr { uid: Some(1000), ..SetAttr::default() };
        c.set_attr(file.ino, root.clone(), to_alice).await.unwrap();
        // Only root sets immutable, even on the owner's file.
        let immutable = FlagChange::Flags(file_flags::IMMUTABLE);
        let by_alice = c.set_flags(file.ino, alice.clone(), immutable).await;
        assert_eq!(refused(by_alice.map(drop)), MetaError::NotPermitted);
        let set = c.set_flags(file.ino, root.clone(), immutable).await.unwrap();
        assert!(set.flags.immutable());
        // Root is refused every change while it lasts.
        let unlink = c.unlink(ROOT_INO, b"f", &root).await.map(drop);
        assert_eq!(refused(unlink), MetaError::NotPermitted);
        let nodump = FlagChange::Flags(file_flags::IMMUTABLE | file_flags::NODUMP);
        let other = c.set_flags(file.ino, root.clone(), nodump).await.map(drop);
        assert_eq!(refused(other), MetaError::NotPermitted);
        let unknown = c.set_flags(file.ino, root.clone(), FlagChange::Flags(0x4)).await.map(drop);
        assert!(matches!(refused(unknown), MetaError::Unsupported(_)));
        c.set_flags(file.ino, root.clone(), FlagChange::Flags(0)).await.unwrap();
        c.unlink(ROOT_INO, b"f", &root).await.unwrap();
    });
}
