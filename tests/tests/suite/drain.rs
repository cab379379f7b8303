//! `shardfs chunkd drain`: a chunkd's shards move to the others while the data stays
//! readable, and it takes no new ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use shardfs_tests::{Cluster, eventually, sha256};

#[test]
fn drain_empties_a_chunkd_while_data_stays_readable() {
    let workers = ["--repair-interval", "0.2", "--gc-grace", "0.5", "--gc-interval", "0.1"];
    let cluster = Cluster::start_with(4, 2, 1, &workers);
    let mount = cluster.mount();
    shardfs_tests::write_random(&mount.join("data"), 24 << 20, 8);
    let expected = sha256(&mount.join("data"));
    std::fs::File::open(mount.join("data")).unwrap().sync_all().unwrap();
    let victim = cluster.chunkds[0].as_ref().unwrap().id.clone();
    assert!(!cluster.stored_shards(0).is_empty(), "the victim holds shards to move");

    // A reader keeps reading the whole file while the drain runs, through a mount whose
    // chunk cache holds one chunk and with the page cache dropped before each pass, so
    // every pass fetches shards from the chunkds.
    let reading = Arc::new(AtomicBool::new(true));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let fresh = cluster.mount_with(&["--cache-size", "4MiB"]);
        let (reading, reads, expected) = (reading.clone(), reads.clone(), expected.clone());
        std::thread::spawn(move || {
            while reading.load(Ordering::Relaxed) {
                std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
                assert_eq!(sha256(&fresh.join("data")), expected, "read during the drain");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let out = cluster
        .command("shardfs")
        .args(["chunkd", "drain", &cluster.metad_addr, &victim, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["remaining"], 0, "{report}");
    eventually("a read to finish after the drain", || reads.load(Ordering::Relaxed) >= 2);
    reading.store(false, Ordering::Relaxed);
    reader.join().expect("every read during the drain returned the data");

    // Nothing is placed on it; the orphan sweep removes its files; new data avoids it.
    eventually("the drained chunkd's files to go", || cluster.stored_shards(0).is_empty());
    shardfs_tests::write_random(&mount.join("after"), 8 << 20, 9);
    std::fs::File::open(mount.join("after")).unwrap().sync_all().unwrap();
    assert!(cluster.stored_shards(0).is_empty(), "new shards went to a drained chunkd");
    let status =
        cluster.command("shardfs").args(["status", "--json", &cluster.metad_addr]).output();
    let status: serde_json::Value = serde_json::from_slice(&status.unwrap().stdout).unwrap();
    let listed = status["chunkds"].as_array().unwrap().iter().find(|c| c["id"] == victim.as_str());
    assert_eq!(listed.unwrap()["draining"], true);
    assert_eq!(status["catalogue"]["degraded_chunks"], 0, "{status}");
    assert_eq!(sha256(&cluster.mount().join("data")), expected);
    assert!(cluster.fsck_clean());

    // A drain of an unknown chunkd is refused with a clear line.
    let out = cluster
        .command("shardfs")
        .args(["chunkd", "drain", &cluster.metad_addr, "no-such-chunkd"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no chunkd no-such-chunkd"));
}
