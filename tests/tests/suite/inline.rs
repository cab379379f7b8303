//! Chunks of at most 64 KiB are kept inline in metad's database, not on chunkds.

use std::io::Write;

use shardfs_tests::{Cluster, sh};

#[test]
fn small_files_live_in_metad_and_survive_every_chunkd_down() {
    let mut cluster = Cluster::standard();
    let mount = cluster.mount();
    sh(&format!("cd {} && seq 1 5000 > numbers && printf 'x' > one", mount.path.display()));
    mount.unmount();
    let stats = cluster.query(async |c| c.catalogue_stats().await).unwrap();
    assert_eq!(stats.chunks, 2);
    let shards: usize = (0..6).map(|i| cluster.stored_shards(i).len()).sum();
    assert_eq!(shards, 0, "inline chunks put nothing on chunkds");
    for i in 0..6 {
        cluster.stop_chunkd(i, nix::sys::signal::Signal::SIGKILL);
    }
    let mount = cluster.mount();
    let expected: String = (1..=5000).map(|n| format!("{n}\n")).collect();
    assert_eq!(std::fs::read_to_string(mount.join("numbers")).unwrap(), expected);
    assert_eq!(std::fs::read_to_string(mount.join("one")).unwrap(), "x");
}

/// Appends committed one by one make a file of many small chunks; its layout carries
/// only the first 1 MiB of their content, the rest is read from metad chunk by chunk.
#[test]
fn a_file_of_many_small_commits_reads_back_past_the_layout_budget() {
    let cluster = Cluster::standard();
    let mount = cluster.mount();
    let path = mount.join("log");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let mut expected = Vec::new();
    for i in 0..24u32 {
        let piece: Vec<u8> = (0..60_000u32).map(|j| (j.wrapping_mul(31) ^ i) as u8).collect();
        file.write_all(&piece).unwrap();
        file.sync_all().unwrap();
        expected.extend(piece);
    }
    drop(file);
    let stats = cluster.query(async |c| c.catalogue_stats().await).unwrap();
    assert_eq!(stats.chunks, 24);
    // Another mount has none of it cached.
    let other = cluster.mount();
    assert!(std::fs::read(other.join("log")).unwrap() == expected, "content differs");
}
