//! `shardfs fsck` on a live cluster: clean after real work, and it counts lost shards.

use nix::sys::signal::Signal;
use shardfs_tests::{Cluster, sh};

fn fsck(cluster: &Cluster, args: &[&str]) -> (i32, serde_json::Value) {
    let output = cluster
        .command("shardfs")
        .args(["fsck", &cluster.metad_addr, "--json"])
        .args(args)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code().unwrap(), report)
}

#[test]
fn clean_after_work_and_counts_lost_shards() {
    let mut cluster = Cluster::standard();
    {
        let mount = cluster.mount();
        let m = mount.path.display();
        sh(&format!(
            "mkdir -p {m}/a/b && seq 1 300000 > {m}/a/numbers && cp {m}/a/numbers {m}/a/b/"
        ));
        sh(&format!("ln {m}/a/numbers {m}/hard && mv {m}/a/b {m}/moved && rm {m}/a/numbers"));
        sh(&format!("dd if=/dev/urandom of={m}/big bs=1M count=9 status=none"));
    }
    let (code, report) = fsck(&cluster, &["--verify-data"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["metadata"]["problems"], serde_json::json!([]));
    let chunks = report["data"]["chunks"].as_u64().unwrap();
    assert!(chunks >= 4, "{report:#}");
    // Lose one chunkd and one more shard of some chunk: degraded, still readable.
    cluster.stop_chunkd(0, Signal::SIGKILL);
    let victim = cluster.stored_shards(1).into_iter().next().unwrap();
    cluster.lose_shard(1, victim.shard);
    let (code, report) = fsck(&cluster, &["--verify-data"]);
    assert_eq!(code, 4, "{report:#}");
    let degraded = report["data"]["degraded"].as_array().unwrap();
    assert!(!degraded.is_empty());
    assert_eq!(report["data"]["unreadable"], serde_json::json!([]));
    let victim_chunk = victim.shard.chunk.to_hex();
    let entry =
        degraded.iter().find(|c| c["chunk"] == victim_chunk.as_str()).expect("victim listed");
    assert!(entry["verified"].as_u64().unwrap() <= 5);
    // Metadata alone is still clean, and the human-readable form says so.
    let text = cluster.command("shardfs").args(["fsck", &cluster.metad_addr]).output().unwrap();
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("clean"));
}

/// Polls `fsck --verify-data` until every chunk is at full redundancy.
fn wait_fully_redundant(cluster: &Cluster) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (code, report) = fsck(cluster, &["--verify-data"]);
        if code == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "repair did not finish: {report:#}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn repair_rebuilds_lost_chunkds_and_a_wiped_disk() {
    let repair = ["--repair-grace", "1", "--repair-interval", "0.2"];
    let mut cluster = Cluster::start_with(8, 4, 2, &repair);
    let source = cluster.dir.path().join("source");
    shardfs_tests::write_random(&source, (13 << 20) + 17, 5);
    let expected = shardfs_tests::sha256(&source);
    {
        let mount = cluster.mount();
        for name in ["a", "b"] {
            std::fs::copy(&source, mount.join(name)).unwrap();
        }
        sh(&format!("seq 1 1000 > {}/small", mount.path.display()));
    }
    // Two chunkds die for good: after the grace period their shards are rebuilt elsewhere.
    cluster.stop_chunkd(0, Signal::SIGKILL);
    cluster.stop_chunkd(1, Signal::SIGKILL);
    wait_fully_redundant(&cluster);
    // A third loses its whole disk and comes back empty, under a new identity.
    cluster.stop_chunkd(2, Signal::SIGKILL);
    std::fs::remove_dir_all(cluster.chunkd_dir(2)).unwrap();
    cluster.start_chunkd(2);
    wait_fully_redundant(&cluster);
    // Everything reads back byte for byte, with 0 and 1 still gone.
    let mount = cluster.mount();
    for name in ["a", "b"] {
        assert_eq!(shardfs_tests::sha256(&mount.join(name)), expected, "{name}");
    }
    assert_eq!(sh(&format!("tail -n1 {}/small", mount.path.display())), "1000\n");
    // status shows the dead chunkds as down and what repair did.
    let out = cluster
        .command("shardfs")
        .args(["status", &cluster.metad_addr, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let down = status["chunkds"].as_array().unwrap().iter().filter(|c| c["up"] == false).count();
    assert_eq!(down, 3, "chunkds 0, 1 and the wiped 2's old identity: {status:#}");
    assert!(status["workers"]["shards_rebuilt"].as_u64().unwrap() > 0, "{status:#}");
    assert_eq!(status["catalogue"]["unhealthy_shards"], 0);
}

#[test]
fn corrupt_and_missing_shards_are_found_and_rebuilt_without_any_read() {
    let workers = [
        "--repair-grace",
        "1",
        "--repair-interval",
        "0.2",
        "--gc-grace",
        "1",
        "--gc-interval",
        "0.2",
    ];
    let mut cluster = Cluster::start_with(4, 2, 1, &workers);
    cluster.chunkd_args = vec!["--scrub-interval".into(), "0.3".into()];
    for i in 0..4 {
        cluster.stop_chunkd(i, Signal::SIGTERM);
        cluster.start_chunkd(i);
    }
    cluster.wait_chunkds_up();
    {
        let mount = cluster.mount();
        for i in 0..4 {
            shardfs_tests::write_random(&mount.join(&format!("f{i}")), 3 << 20, i);
        }
    }
    // One damaged shard per chunk (any more and 2+1 could not rebuild it): delete the first
    // outright, flip a byte in the others.
    let mut chunks_hit = std::collections::HashSet::new();
    let mut damaged = 0;
    for (i, at) in (0..4).flat_map(|i| cluster.stored_shards(i).into_iter().map(move |at| (i, at)))
    {
        if !chunks_hit.insert(at.shard.chunk) {
            continue;
        }
        if damaged == 0 {
            cluster.lose_shard(i, at.shard);
        } else {
            cluster.damage_shard(&at, 100);
        }
        damaged += 1;
    }
    // At least one chunk per file; a file may be stored as more than one chunk.
    assert!(damaged >= 4, "{damaged} chunks");
    // Scrub finds the flipped bytes, the sweep finds the missing shard, repair rebuilds all.
    wait_fully_redundant(&cluster);
    let mount = cluster.mount();
    for i in 0..4u64 {
        let expected = cluster.dir.path().join("expected");
        shardfs_tests::write_random(&expected, 3 << 20, i);
        assert_eq!(
            shardfs_tests::sha256(&mount.join(&format!("f{i}"))),
            shardfs_tests::sha256(&expected)
        );
    }
}
