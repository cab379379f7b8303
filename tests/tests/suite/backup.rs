//! `shardfs metad backup` while clients write, and `shardfs metad restore` into a stopped
//! metad: the restored namespace is consistent, fsck-clean, and has every file that was
//! complete when the backup began.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nix::sys::signal::Signal;
use shardfs_tests::{Cluster, eventually};

fn content(i: usize) -> Vec<u8> {
    format!("file {i}\n").repeat(100 + i * 37).into_bytes()
}

#[test]
fn backup_taken_during_writes_restores_to_a_consistent_clean_namespace() {
    // Restored into a lone metad: restoring a group from a backup is not built.
    let mut cluster = Cluster::start_alone(3, 2, 1);
    let backup = cluster.dir.path().join("meta.backup");
    {
        let mount = cluster.mount();
        std::fs::create_dir(mount.join("before")).unwrap();
        for i in 0..50 {
            std::fs::write(mount.join(&format!("before/{i}")), content(i)).unwrap();
        }
        // Written and fsynced: committed before the backup begins.
        for i in 0..50 {
            std::fs::File::open(mount.join(&format!("before/{i}"))).unwrap().sync_all().unwrap();
        }
        // A writer keeps creating, renaming and deleting while the backup runs.
        let busy = Arc::new(AtomicBool::new(true));
        let done = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (dir, busy, done) = (mount.join("during"), busy.clone(), done.clone());
            std::fs::create_dir(&dir).unwrap();
            std::thread::spawn(move || {
                let mut i = 0;
                while busy.load(Ordering::Relaxed) {
                    let path = dir.join(format!("{i}"));
                    std::fs::write(&path, content(i)).unwrap();
                    std::fs::rename(&path, dir.join(format!("renamed-{i}"))).unwrap();
                    if i % 3 == 0 {
                        std::fs::remove_file(dir.join(format!("renamed-{i}"))).unwrap();
                    }
                    i += 1;
                    done.store(i, Ordering::Relaxed);
                }
            })
        };
        eventually("the writer to get going", || done.load(Ordering::Relaxed) > 20);
        let out = cluster
            .command("shardfs")
            .args(["metad", "backup", "--json", "--data"])
            .arg(cluster.metad_dir())
            .arg(&backup)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(report["pages"].as_u64().unwrap() > 0, "{report}");
        // A second backup to the same name is refused, the first left alone.
        let again = cluster
            .command("shardfs")
            .args(["metad", "backup", "--data"])
            .arg(cluster.metad_dir())
            .arg(&backup)
            .output()
            .unwrap();
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
        let writes_before_stop = done.load(Ordering::Relaxed);
        busy.store(false, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(writes_before_stop > 20);
        std::fs::write(mount.join("after"), "after the backup\n").unwrap();
    }
    // A restore is refused while metad runs on the directory.
    let restore = |cluster: &Cluster| {
        cluster
            .command("shardfs")
            .args(["metad", "restore", "--data"])
            .arg(cluster.metad_dir())
            .arg(&backup)
            .output()
            .unwrap()
    };
    let refused = restore(&cluster);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in use by a running metad"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    cluster.stop_metad(Signal::SIGTERM);
    let restored = restore(&cluster);
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    assert!(String::from_utf8_lossy(&restored.stdout).contains("kept as"));
    cluster.resume_metad();
    cluster.wait_chunkds_up();
    let mount = cluster.mount();
    for i in 0..50 {
        assert_eq!(std::fs::read(mount.join(&format!("before/{i}"))).unwrap(), content(i), "{i}");
    }
    assert!(!mount.join("after").exists(), "a file made after the backup survived the restore");
    // What the writer did mid-backup is there as of one moment: each of its files is as
    // created (empty) or as committed (whole), renamed or not; never torn.
    let mut whole = 0;
    for entry in std::fs::read_dir(mount.join("during")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let i: usize = name.trim_start_matches("renamed-").parse().unwrap();
        let data = std::fs::read(entry.path()).unwrap();
        assert!(data.is_empty() || data == content(i), "{name} is torn: {} bytes", data.len());
        whole += usize::from(!data.is_empty());
    }
    assert!(whole > 0, "no file the writer committed before the backup");
    assert!(cluster.fsck_clean());
}
