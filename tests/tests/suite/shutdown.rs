//! Shutting a mount down (`FS_IOC_SHUTDOWN`, what xfstests' `godown` calls) with each of
//! its three flags: what it flushes first, EIO for everything after, other mounts let go
//! at once, and a remount that shows exactly what had reached metad.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use shardfs_tests::{Cluster, as_user, eventually, sh};

/// Calls FS_IOC_SHUTDOWN on the mount at `path` with `flag`, as `uid`: its errno name, or
/// "ok".
fn shut_down(path: &Path, flag: u32, uid: u32) -> String {
    let script = r#"
import errno, fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.ioctl(fd, 0x8004587d, struct.pack("I", int(sys.argv[2])))
    print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])
"#;
    let line = format!("{}/usr/bin/python3 -c '{script}' {} {flag}", as_user(uid), path.display());
    sh(&line).trim().to_string()
}

/// The errno name a command on `path` fails with (`stat`, `ls`, `cat`, `touch`), or "ok".
fn errno_of(command: &str, path: &Path) -> String {
    let out = sh(&format!("{command} {} >/dev/null 2>&1; echo $?", path.display()));
    match out.trim() {
        "0" => "ok".to_string(),
        _ => {
            let said = sh(&format!("{command} {} 2>&1 >/dev/null || true", path.display()));
            match said.contains("Input/output error") {
                true => "EIO".to_string(),
                false => said,
            }
        }
    }
}

#[test]
fn each_shutdown_flag_flushes_what_it_says_and_a_remount_shows_what_was_durable() {
    let cluster = Cluster::start(3, 2, 1);
    // (flag, buffered writes kept, namespace changes answered here kept)
    for (flag, data_kept, names_kept) in [(0, true, true), (1, false, true), (2, false, false)] {
        let a = cluster.mount_with(&["--allow-other"]);
        let b = cluster.mount();
        let dir = format!("flag{flag}");
        std::fs::create_dir(a.join(&dir)).unwrap();
        // Durable before the shutdown: written and fsynced.
        let mut synced = std::fs::File::create(a.join(&format!("{dir}/synced"))).unwrap();
        synced.write_all(b"synced").unwrap();
        synced.sync_all().unwrap();
        drop(synced);
        // Buffered on the mount, in a file still open: only a full flush keeps it.
        let mut buffered = std::fs::File::create(a.join(&format!("{dir}/buffered"))).unwrap();
        buffered.write_all(b"buffered").unwrap();
        // A name made under the mount's own lease, answered here and queued.
        std::fs::write(a.join(&format!("{dir}/made")), b"").unwrap();

        // Only root shuts a mount down; an unknown flag is refused.
        assert_eq!(shut_down(&a.path, flag, 1000), "EPERM");
        assert_eq!(shut_down(&a.path, 7, 0), "EINVAL");
        assert_eq!(shut_down(&a.path, flag, 0), "ok", "flag {flag}");

        // Nothing answers any more: not the kernel's caches, not the open file.
        let synced = a.join(&format!("{dir}/synced"));
        eventually("the kernel's caches dropped", || errno_of("stat", &synced) == "EIO");
        assert_eq!(errno_of("cat", &synced), "EIO");
        assert_eq!(errno_of("ls", &a.path), "EIO");
        assert_eq!(errno_of("touch", &a.join(&format!("{dir}/new"))), "EIO");
        assert!(buffered.write_all(b"more").is_err());
        drop(buffered);

        // The other mount gets the shut mount's write leases back: it writes the file the
        // shut mount had open and buffered.
        std::fs::write(b.join(&format!("{dir}/after")), b"b").unwrap();
        // (Without a log flush, its making may have been lost with the log.)
        let took = b.join(&format!("{dir}/buffered"));
        match std::fs::read(&took) {
            Ok(seen) => {
                assert_eq!(seen, if data_kept { &b"buffered"[..] } else { b"" }, "flag {flag}")
            }
            Err(e) => assert!(!names_kept && e.kind() == std::io::ErrorKind::NotFound, "{e}"),
        }

        a.unmount();
        drop(b);
        let c = cluster.mount();
        assert_eq!(std::fs::read(c.join(&format!("{dir}/synced"))).unwrap(), b"synced");
        match std::fs::metadata(c.join(&format!("{dir}/buffered"))) {
            Ok(buffered) => assert_eq!(buffered.size(), if data_kept { 8 } else { 0 }),
            Err(e) => assert!(!names_kept && e.kind() == std::io::ErrorKind::NotFound, "{e}"),
        }
        if names_kept {
            assert!(c.join(&format!("{dir}/made")).exists(), "flag {flag}");
        }
        assert_eq!(std::fs::read(c.join(&format!("{dir}/after"))).unwrap(), b"b");
    }
    assert!(cluster.fsck_clean());
}

#[test]
fn a_full_flush_that_cannot_store_an_open_files_writes_fails_the_shutdown() {
    let mut cluster = Cluster::start(3, 2, 1);
    let a = cluster.mount();
    std::fs::write(a.join("made"), b"").unwrap();
    // Too big to keep in metad: its chunk needs all three chunkds (k + 1 for 2+1).
    let mut buffered = std::fs::File::create(a.join("buffered")).unwrap();
    buffered.write_all(&vec![7u8; 1 << 20]).unwrap();
    cluster.stop_chunkd(2, nix::sys::signal::Signal::SIGKILL);

    // Flag 0 promised the buffered writes: not stored, the caller hears it. The mount is
    // down all the same.
    assert_eq!(shut_down(&a.path, 0, 0), "EIO");
    let made = a.join("made");
    eventually("the kernel's caches dropped", || errno_of("stat", &made) == "EIO");
    assert!(buffered.write_all(b"more").is_err());
    drop(buffered);
    a.unmount();

    // What was flushed is there, what could not be is not: no bytes claimed that were never
    // stored.
    cluster.start_chunkd(2);
    cluster.wait_chunkds_up();
    let b = cluster.mount();
    assert!(b.join("made").exists());
    assert_eq!(std::fs::metadata(b.join("buffered")).unwrap().size(), 0);
    assert!(cluster.fsck_clean());
}
