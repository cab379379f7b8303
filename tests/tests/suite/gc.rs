//! Garbage collection deletes what nothing references, after a grace period, and never
//! anything a committed file needs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use shardfs_chunk_api::client::ChunkClient;
use shardfs_chunk_api::{ChunkId, Encoding, ShardId};
use shardfs_tests::{Cluster, eventually, sh, sha256};

const FAST_GC: [&str; 4] = ["--gc-grace", "0.5", "--gc-interval", "0.1"];

fn shard_count(cluster: &Cluster) -> usize {
    (0..cluster.chunkds.len()).map(|i| cluster.stored_shards(i).len()).sum()
}

#[test]
fn unreferenced_chunks_and_orphan_shards_go_after_the_grace_period() {
    let cluster = Cluster::start_with(3, 2, 1, &FAST_GC);
    let mount = cluster.mount();
    shardfs_tests::write_random(&mount.join("doomed"), 5 << 20, 1);
    // Small enough to be kept inline in metad: it has a chunk but no shards.
    sh(&format!("echo keep > {}/kept", mount.path.display()));
    let chunks = || cluster.query(async |c| c.catalogue_stats().await).unwrap().chunks;
    for name in ["doomed", "kept"] {
        std::fs::File::open(mount.join(name)).unwrap().sync_all().unwrap();
    }
    // Two 4 MiB chunks of 3 shards (more chunks if the kernel's write-back had a part of
    // one committed early), and the inline one.
    let stored = chunks();
    assert!(stored >= 3);
    assert_eq!(shard_count(&cluster) as u64, (stored - 1) * 3);
    // An orphan: a shard put straight onto a chunkd, never committed.
    let orphan = ShardId { chunk: ChunkId::of(b"never committed"), index: 0 };
    let chunkd = cluster.chunkds[0].as_ref().unwrap();
    let rpc = cluster.rpc_options();
    cluster
        .query(async |_| {
            let client = ChunkClient::new(&chunkd.addr, &chunkd.id, rpc);
            let encoding = Encoding::rs(2, 1).unwrap();
            client.put(orphan, encoding, 2, vec![1], &[]).await
        })
        .unwrap();
    std::fs::remove_file(mount.join("doomed")).unwrap();
    eventually("the deleted file's chunks and the orphan to go", || shard_count(&cluster) == 0);
    assert_eq!(chunks(), 1);
    assert_eq!(std::fs::read_to_string(mount.join("kept")).unwrap(), "keep\n");
}

/// A small deterministic generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn randomized_writes_deletes_and_dedup_under_aggressive_gc_lose_nothing() {
    let cluster = Cluster::start_with(3, 2, 1, &FAST_GC);
    let mount = cluster.mount();
    let contents: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 100_000 + i as usize * 70_000]).collect();
    let mut model: HashMap<String, usize> = HashMap::new();
    let mut rng = Rng(0x5eed);
    let started = Instant::now();
    let mut operations = 0;
    while started.elapsed() < Duration::from_secs(15) || operations < 200 {
        let name = format!("f{}", rng.below(12));
        let path = mount.join(&name);
        match rng.below(5) {
            // Write (often a content other files have: a dedup hit).
            0 | 1 => {
                let which = rng.below(contents.len() as u64) as usize;
                std::fs::write(&path, &contents[which]).unwrap();
                model.insert(name, which);
            }
            // Delete: its chunks may become garbage while another file still shares them.
            2 => {
                if model.remove(&name).is_some() {
                    std::fs::remove_file(&path).unwrap();
                }
            }
            // Pause past the grace period, so collection really runs between operations.
            3 => std::thread::sleep(Duration::from_millis(rng.below(700))),
            // Read back and check against the model.
            _ => {
                if let Some(which) = model.get(&name) {
                    assert_eq!(std::fs::read(&path).unwrap(), contents[*which], "{name}");
                }
            }
        }
        operations += 1;
    }
    std::thread::sleep(Duration::from_secs(1));
    // A fresh mount (nothing cached) reads every live file intact.
    let fresh = cluster.mount();
    for (name, which) in &model {
        let expected = {
            let tmp = cluster.dir.path().join("expected");
            std::fs::write(&tmp, &contents[*which]).unwrap();
            sha256(&tmp)
        };
        assert_eq!(sha256(&fresh.join(name)), expected, "{name} after {operations} operations");
    }
    assert!(cluster.fsck_clean());
}

/// A chunkd dies and a newcomer with an empty disk takes its address before metad notices
/// (a restart on a reused port, a replaced disk): the orphan sweep reaches the newcomer under
/// the dead chunkd's id. It must not take the newcomer's (empty) shard list for the dead
/// one's and mark all of that chunkd's shards missing, and reads go on from the others.
#[test]
fn a_newcomer_at_a_dead_chunkds_address_is_not_taken_for_it() {
    let mut cluster = Cluster::start_with(3, 2, 1, &FAST_GC);
    let mount = cluster.mount();
    shardfs_tests::write_random(&mount.join("kept"), 5 << 20, 2);
    let expected = sha256(&mount.join("kept"));
    std::fs::File::open(mount.join("kept")).unwrap().sync_all().unwrap();
    let stored = cluster.query(async |c| c.catalogue_stats().await).unwrap().chunks;
    assert_eq!(shard_count(&cluster) as u64, stored * 3, "the file is stored");
    let addr = cluster.chunkds[0].as_ref().unwrap().addr.clone();
    cluster.stop_chunkd(0, nix::sys::signal::Signal::SIGKILL);
    let newcomer = cluster.dir.path().join("newcomer");
    cluster.start_chunkd_at(0, &newcomer, &addr);
    let log = cluster.dir.path().join("chunkd-0.log");
    let unhealthy = || cluster.query(async |c| c.catalogue_stats().await).unwrap().unhealthy_shards;
    eventually("the sweep to reach the newcomer under the dead chunkd's id", || {
        assert_eq!(unhealthy(), 0, "the dead chunkd's shards were marked missing");
        std::fs::read_to_string(&log).unwrap().contains("refused a call meant for another chunkd")
    });
    assert_eq!(unhealthy(), 0, "the dead chunkd's shards were marked missing");
    assert_eq!(sha256(&cluster.mount().join("kept")), expected);
}

/// `shardfs gc` runs a pass now, however long the interval, and returns once it is done.
#[test]
fn gc_command_runs_a_pass_now_and_reports_it() {
    let cluster = Cluster::start_with(3, 2, 1, &["--gc-grace", "0.5", "--gc-interval", "3600"]);
    let mount = cluster.mount();
    shardfs_tests::write_random(&mount.join("doomed"), 5 << 20, 1);
    std::fs::File::open(mount.join("doomed")).unwrap().sync_all().unwrap();
    // Two 4 MiB chunks, or more if the kernel's write-back committed part of a chunk early.
    let chunks = cluster.query(async |c| c.catalogue_stats().await).unwrap().chunks;
    assert!(chunks >= 2);
    std::fs::remove_file(mount.join("doomed")).unwrap();
    assert_eq!(shard_count(&cluster) as u64, chunks * 3, "nothing is collected before the grace");
    // Once the file is gone (it lingers a moment for opens on their way) and its chunks
    // are past the grace: the collector itself would not look again for an hour.
    let mut report = serde_json::Value::Null;
    shardfs_tests::eventually("a pass to collect the file's chunks", || {
        let out = cluster.command("shardfs").args(["gc", "--json", &cluster.metad_addr]).output();
        let out = out.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        report = serde_json::from_slice(&out.stdout).unwrap();
        report["chunks_collected"] != 0
    });
    assert_eq!(report["chunks_collected"], chunks, "{report}");
    assert_eq!(shard_count(&cluster), 0, "the pass had ended when the command returned");
}
