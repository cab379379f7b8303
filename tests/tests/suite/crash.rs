//! Processes dying at bad moments, and full disks: nothing committed is lost or damaged.

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use shardfs_tests::{Cluster, eventually, sh, sha256, write_random};

fn shard_count(cluster: &Cluster) -> u64 {
    (0..cluster.chunkds.len()).map(|i| cluster.stored_shards(i).len() as u64).sum()
}

#[test]
fn client_killed_mid_write_leaves_only_orphans_that_the_sweep_removes() {
    // The dead client's write intents end with its session, one second after it died.
    let workers = ["--gc-grace", "1", "--gc-interval", "0.2", "--session-timeout", "1"];
    let cluster = Cluster::start_with(3, 2, 1, &workers);
    let source = cluster.dir.path().join("source");
    shardfs_tests::write_random(&source, 200 << 20, 9);
    let mount = cluster.mount();
    let target = mount.join("big");
    let mut writer = Command::new("dd")
        .arg(format!("if={}", source.display()))
        .arg(format!("of={}", target.display()))
        .args(["bs=1M", "status=none"])
        .spawn()
        .unwrap();
    // Let some chunks get committed (early write-back) and more be in flight, then crash.
    eventually("the write to get going", || shard_count(&cluster) >= 30);
    mount.crash();
    let _ = writer.wait();
    // Every shard left on disk ends up referenced by the catalogue: the orphans of the
    // write that never committed are swept, committed ones stay.
    eventually("the orphan sweep", || {
        let chunks = cluster.query(async |c| c.catalogue_stats().await).unwrap().chunks;
        shard_count(&cluster) == chunks * 3
    });
    assert!(cluster.fsck_clean());
    // What was committed reads back as the source's prefix.
    let mount = cluster.mount();
    let committed = std::fs::metadata(mount.join("big")).map(|m| m.len()).unwrap_or(0);
    if committed > 0 {
        let mut got = vec![0u8; committed as usize];
        std::fs::File::open(mount.join("big")).unwrap().read_exact(&mut got).unwrap();
        let mut want = vec![0u8; committed as usize];
        std::fs::File::open(&source).unwrap().read_exact(&mut want).unwrap();
        assert!(got == want, "committed prefix of {committed} bytes differs");
    }
}

/// A size-limited tmpfs inside a cluster's directory, unmounted (lazily: its daemon may
/// still run) on drop, which must come before the cluster's: a directory with a mount in it
/// cannot be removed, and the cluster's would be left behind half removed.
struct SmallDisk(std::path::PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_chunkd_gives_enospc_and_keeps_what_it_has() {
    let mut cluster = Cluster::start(3, 2, 1);
    let mut disk = None;
    // Chunkd 2 moves onto a 96 MiB disk (empty, so it comes back as a new chunkd).
    cluster.stop_chunkd(2, Signal::SIGTERM);
    let dir = cluster.chunkd_dir(2);
    sh(&format!("mount -t tmpfs -o size=96m shardfs-test-small {}", dir.display()));
    disk.replace(SmallDisk(dir));
    cluster.start_chunkd(2);
    // The old chunkd 2 must count as down first, or writes may still be placed on it.
    eventually("the replaced chunkd to count as down", || {
        let all = cluster.query(async |c| c.chunkds().await).unwrap();
        all.len() == 4 && all.iter().filter(|c| c.up).count() == 3
    });
    let mount = cluster.mount();
    // Distinct content per file, so dedup cannot save the day.
    let block = |i: usize| {
        let mut block = vec![7u8; 1 << 20];
        block[..8].copy_from_slice(&i.to_le_bytes());
        block
    };
    let mut written = 0;
    let errno = loop {
        let mut file = std::fs::File::create(mount.join(&format!("f{written}"))).unwrap();
        let result = file.write_all(&block(written)).and_then(|()| file.sync_all());
        match result {
            Ok(()) => written += 1,
            Err(e) => {
                eprintln!("write {written} failed: {e}");
                break e.raw_os_error().unwrap();
            }
        }
        assert!(written < 200, "the small disk never filled");
    };
    assert_eq!(errno, libc::ENOSPC);
    assert!(written > 0);
    for i in 0..written {
        assert_eq!(std::fs::read(mount.join(&format!("f{i}"))).unwrap(), block(i), "f{i}");
    }
    drop(mount);
    drop(disk);
}

#[test]
fn a_full_metad_disk_refuses_what_needs_room_and_still_deletes_and_reads() {
    // One metad's disk: a replica whose disk fills is another story (it stops, and another
    // leads), not tested yet.
    let mut cluster = Cluster::start_alone(3, 2, 1);
    let mut disk = None;
    let mount = cluster.mount();
    std::fs::write(mount.join("kept"), b"kept").unwrap();
    // metad's database moves onto a 16 MiB disk of its own.
    cluster.stop_metad(Signal::SIGTERM);
    let dir = cluster.metad_dir();
    let saved = cluster.dir.path().join("metad-saved");
    std::fs::rename(&dir, &saved).unwrap();
    std::fs::create_dir(&dir).unwrap();
    sh(&format!("mount -t tmpfs -o size=16m shardfs-test-metad {}", dir.display()));
    disk.replace(SmallDisk(dir.clone()));
    sh(&format!("cp -a {}/. {}/", saved.display(), dir.display()));
    cluster.resume_metad();
    assert_eq!(std::fs::read(mount.join("kept")).unwrap(), b"kept");
    // Filled up, by something else.
    sh(&format!("dd if=/dev/zero of={}/filler bs=64k 2>/dev/null || true", dir.display()));
    let mut made = 0;
    let errno = loop {
        match std::fs::create_dir(mount.join(&format!("d{made}"))) {
            Ok(()) => made += 1,
            Err(e) => break e.raw_os_error().unwrap(),
        }
        assert!(made < 20_000, "the full disk took every change");
    };
    // Not EIO: the user can tell the disk is full, and make room.
    assert_eq!(errno, libc::ENOSPC);
    let refused = std::fs::write(mount.join("new"), b"x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(std::fs::read(mount.join("kept")).unwrap(), b"kept", "reads go on");
    for i in 0..made {
        std::fs::remove_dir(mount.join(&format!("d{i}"))).unwrap();
    }
    std::fs::remove_file(mount.join("kept")).unwrap();
    // Once the disk has room again, so does metad.
    std::fs::remove_file(dir.join("filler")).unwrap();
    eventually("metad to take changes again", || std::fs::write(mount.join("new"), b"x").is_ok());
    drop(mount);
    drop(disk);
}

#[test]
fn metad_killed_mid_workload_keeps_every_acknowledged_operation() {
    let mut cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    let log = cluster.dir.path().join("acknowledged");
    // Each step is logged (outside the mount) only after it returned: mkdir, write+fsync,
    // rename. The loop stops at the first failure.
    let script = format!(
        "set -e; for i in $(seq 1 100000); do \
           mkdir {m}/d$i; \
           echo $i | dd of={m}/d$i/f conv=fsync status=none; \
           mv {m}/d$i {m}/e$i; \
           echo $i >> {log}; \
         done",
        m = mount.path.display(),
        log = log.display()
    );
    let mut workload = Command::new("bash").args(["-c", &script]).spawn().unwrap();
    eventually("the workload to get going", || {
        std::fs::read_to_string(&log).map(|l| l.lines().count() >= 20).unwrap_or(false)
    });
    cluster.restart_metad(Signal::SIGKILL);
    let _ = workload.kill();
    let _ = workload.wait();
    let done: Vec<u64> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert!(done.len() >= 20);
    // A fresh mount of the restarted metad sees every acknowledged step.
    cluster.wait_chunkds_up();
    let fresh = cluster.mount();
    for i in &done {
        let content = std::fs::read_to_string(fresh.join(&format!("e{i}/f")))
            .unwrap_or_else(|e| panic!("e{i}/f after the crash: {e}"));
        assert_eq!(content, format!("{i}\n"));
        assert!(!fresh.join(&format!("d{i}")).exists());
    }
    assert!(cluster.fsck_clean());
}

#[test]
fn chunkds_dying_mid_write_are_routed_around() {
    let repair = ["--repair-grace", "1", "--repair-interval", "0.2"];
    let mut cluster = Cluster::start_with(8, 4, 2, &repair);
    let source = cluster.dir.path().join("source");
    shardfs_tests::write_random(&source, 120 << 20, 3);
    let mount = cluster.mount();
    let target = mount.join("big");
    let writer = {
        let (source, target) = (source.clone(), target.clone());
        std::thread::spawn(move || std::fs::copy(source, target))
    };
    eventually("the write to get going", || shard_count(&cluster) >= 24);
    // Two chunkds die while the copy runs; metad has not noticed yet when the next puts go
    // out, so those fail and the client asks for a placement without them.
    cluster.stop_chunkd(6, Signal::SIGKILL);
    cluster.stop_chunkd(7, Signal::SIGKILL);
    writer.join().unwrap().expect("the write completes on the remaining chunkds");
    assert_eq!(shardfs_tests::sha256(&target), shardfs_tests::sha256(&source));
    // Chunks written before the failure are rebuilt to full redundancy too.
    eventually("full redundancy", || cluster.fsck_clean());
    let fresh = cluster.mount();
    assert_eq!(shardfs_tests::sha256(&fresh.join("big")), shardfs_tests::sha256(&source));
}

#[test]
fn chunkds_dying_mid_read_do_not_disturb_the_reader() {
    let mut cluster = Cluster::start(6, 4, 2);
    let source = cluster.dir.path().join("source");
    shardfs_tests::write_random(&source, 120 << 20, 4);
    std::fs::copy(&source, cluster.mount().join("big")).unwrap();
    // A fresh mount has nothing cached: every read below goes to the chunkds.
    let mount = cluster.mount();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let (path, progress) = (mount.join("big"), progress.clone());
        std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
            let mut file = std::fs::File::open(path)?;
            let mut all = Vec::new();
            let mut piece = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut piece)?;
                if n == 0 {
                    return Ok(all);
                }
                all.extend_from_slice(&piece[..n]);
                progress.store(all.len(), std::sync::atomic::Ordering::Relaxed);
                // Slow enough that the kills land in the middle of the file.
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    eventually("the read to get going", || {
        progress.load(std::sync::atomic::Ordering::Relaxed) >= 20 << 20
    });
    cluster.stop_chunkd(0, Signal::SIGKILL);
    cluster.stop_chunkd(3, Signal::SIGKILL);
    let at_kill = progress.load(std::sync::atomic::Ordering::Relaxed);
    assert!(at_kill < 100 << 20, "the kills came too late: {at_kill} bytes already read");
    let got = reader.join().unwrap().expect("the read completes from the surviving shards");
    assert!(got == std::fs::read(&source).unwrap(), "the data read differs from the source");
    // The dead chunkds come back with their shards: fully redundant again.
    cluster.start_chunkd(0);
    cluster.start_chunkd(3);
    cluster.wait_chunkds_up();
    assert!(cluster.fsck_clean());
}

/// A chunkd SIGKILLed again and again, while the puts of files being written share its
/// group commits and while it compacts volumes emptied by deletes, loses nothing that was
/// acknowledged: every file reads back, `fsck --verify-data` is clean once it is back, and
/// its store indexes no record it cannot verify.
#[test]
fn a_chunkd_killed_during_group_commits_and_compaction_loses_nothing() {
    let workers = ["--gc-grace", "0.5", "--gc-interval", "0.2", "--repair-grace", "1"];
    let mut cluster =
        Cluster::start_with(4, 2, 1, &[&workers[..], &["--repair-interval", "0.2"]].concat());
    // Volumes of 1 MiB, compacted once a fifth is dead, slowly enough to be caught at it.
    cluster.chunkd_args = ["--volume-size", "1048576", "--compaction-threshold", "0.2"]
        .into_iter()
        .chain(["--compaction-interval", "0.1", "--compaction-rate", "1048576"])
        .map(String::from)
        .collect();
    for i in 0..4 {
        cluster.stop_chunkd(i, Signal::SIGTERM);
        cluster.start_chunkd(i);
    }
    cluster.wait_chunkds_up();
    let mount = cluster.mount();
    let log = cluster.dir.path().join("chunkd-0.log");
    let count =
        |needle: &str| std::fs::read_to_string(&log).unwrap_or_default().matches(needle).count();
    let scratch = cluster.dir.path().to_path_buf();
    let expected = |seed: u64| {
        let path = scratch.join(format!("expected-{seed}"));
        write_random(&path, 600 << 10, seed);
        sha256(&path)
    };
    let mut kept = Vec::new();
    for round in 0..6u64 {
        // The files of the round before go, so volumes die and get compacted.
        for j in 0..6 {
            let _ = std::fs::remove_file(mount.join(&format!("f{}-{j}", round.wrapping_sub(1))));
        }
        let writer = {
            let dir = mount.path.clone();
            std::thread::spawn(move || {
                for j in 0..6 {
                    write_random(&dir.join(format!("f{round}-{j}")), 600 << 10, round * 10 + j);
                }
            })
        };
        if round % 2 == 0 {
            // During the puts' group commits.
            let before = cluster.stored_shards(0).len();
            eventually("puts to reach chunkd 0", || cluster.stored_shards(0).len() > before);
        } else {
            let before = count("compacting a volume");
            eventually("chunkd 0 to compact", || count("compacting a volume") > before);
        }
        cluster.stop_chunkd(0, Signal::SIGKILL);
        writer.join().expect("the writes complete around the dead chunkd");
        cluster.start_chunkd(0);
        kept.extend((0..6).map(|j| (format!("f{round}-{j}"), round * 10 + j)));
        kept.retain(|(name, _)| !name.starts_with(&format!("f{}-", round.wrapping_sub(1))));
    }
    assert!(count("volume compacted") > 0, "chunkd 0 never finished a compaction");
    // The others compacted too, and status says so.
    eventually("status to show compactions", || {
        let mut status = cluster.command("shardfs");
        let out = status.args(["status", "--json", &cluster.metad_addr]).output().unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let compacted = |c: &serde_json::Value| c["volumes"]["compacted"].as_u64().unwrap_or(0);
        status["chunkds"].as_array().is_some_and(|all| all.iter().map(compacted).sum::<u64>() > 0)
    });
    eventually("full redundancy, verified", || cluster.fsck_clean());
    let fresh = cluster.mount();
    for (name, seed) in &kept {
        assert_eq!(sha256(&fresh.join(name)), expected(*seed), "{name}");
    }
    assert_eq!(count("failed verification"), 0, "a record chunkd 0 acknowledged was damaged");
}
