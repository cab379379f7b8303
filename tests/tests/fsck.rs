//! `shardfs fsck` on a live cluster: clean after real work, and it counts lost shards.

use std::process::Command;

use nix::sys::signal::Signal;
use shardfs_tests::{Cluster, binary, sh};

fn fsck(cluster: &Cluster, args: &[&str]) -> (i32, serde_json::Value) {
    let output = Command::new(binary("shardfs"))
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
    let victim = cluster.shard_files(1).into_iter().next().unwrap();
    std::fs::remove_file(&victim).unwrap();
    let (code, report) = fsck(&cluster, &["--verify-data"]);
    assert_eq!(code, 4, "{report:#}");
    let degraded = report["data"]["degraded"].as_array().unwrap();
    assert!(!degraded.is_empty());
    assert_eq!(report["data"]["unreadable"], serde_json::json!([]));
    let victim_chunk = victim.file_stem().unwrap().to_string_lossy().to_string();
    let entry =
        degraded.iter().find(|c| c["chunk"] == victim_chunk.as_str()).expect("victim listed");
    assert!(entry["verified"].as_u64().unwrap() <= 5);
    // Metadata alone is still clean, and the human-readable form says so.
    let text =
        Command::new(binary("shardfs")).args(["fsck", &cluster.metad_addr]).output().unwrap();
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("clean"));
}
