//! Storage classes: chunks kept as full replicas or in a local reconstruction code, read
//! back whole and by range, degraded, and checked by fsck; directory policies; and the
//! lifecycle that moves chunks from the hot class to the cold one, through crashes.

use nix::sys::signal::Signal;
use serde_json::Value;
use shardfs_chunk_api::Encoding;
use shardfs_chunkd::shard::{HEADER_LEN, ShardHeader};
use shardfs_tests::{
    Cluster, Mount, StoredAt, eventually, metrics_endpoint, sample, scrape, sh, sha256,
    write_random,
};

/// Writes files of assorted sizes through `mount` and returns (name, sha256) pairs.
fn populate(cluster: &Cluster, mount: &Mount) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for (i, len) in [0usize, 4095, 1 << 20, (9 << 20) + 12345].into_iter().enumerate() {
        let name = format!("f{i}");
        let source = cluster.dir.path().join(&name);
        write_random(&source, len, i as u64 + 40);
        std::fs::copy(&source, mount.join(&name)).unwrap();
        std::fs::File::open(mount.join(&name)).unwrap().sync_all().unwrap();
        files.push((name, sha256(&source)));
    }
    files
}

fn info(cluster: &Cluster, mount: &Mount, name: &str) -> Value {
    let out = cluster.command("shardfs").arg("info").arg("--json").arg(mount.join(name)).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The chunks of `name` kept on chunkds (not inline: a piece the kernel's write-back cut
/// small goes to metad).
fn stored_chunks(info: &Value) -> Vec<&Value> {
    info["chunks"].as_array().unwrap().iter().filter(|c| c["class"] != "inline").collect()
}

/// Every stored chunk of `name` is in `class`, with `shards` shards on distinct chunkds.
fn assert_class(cluster: &Cluster, mount: &Mount, name: &str, class: &str, shards: usize) {
    let info = info(cluster, mount, name);
    let chunks = stored_chunks(&info);
    assert!(!chunks.is_empty(), "{info}");
    for chunk in chunks {
        assert_eq!(chunk["class"], class, "{info}");
        let mut on: Vec<&str> = chunk["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["chunkd"].as_str().unwrap())
            .collect();
        on.sort();
        on.dedup();
        assert_eq!(on.len(), shards, "each shard on its own chunkd: {chunk}");
    }
}

/// Restarts every chunkd with a metrics endpoint.
fn serve_chunkd_metrics(cluster: &mut Cluster) {
    cluster.chunkd_args = vec!["--metrics-listen".into(), "127.0.0.1:0".into()];
    for i in 0..cluster.chunkds.len() {
        cluster.stop_chunkd(i, Signal::SIGTERM);
        cluster.start_chunkd(i);
    }
    cluster.wait_chunkds_up();
}

/// Shard bytes the chunkds that are up have sent since they started.
fn bytes_sent(cluster: &Cluster) -> f64 {
    (0..cluster.chunkds.len())
        .filter(|&i| cluster.chunkds[i].is_some())
        .map(|i| {
            let log = cluster.dir.path().join(format!("chunkd-{i}.log"));
            sample(&scrape(&metrics_endpoint(&log)), "shardfs_chunkd_bytes_out_total").unwrap()
        })
        .sum()
}

#[test]
fn a_replicated_volume_reads_one_copy_and_survives_two_lost_chunkds() {
    let mut cluster = Cluster::start_class(4, "replicas(3)", &[]);
    serve_chunkd_metrics(&mut cluster);
    let mount = cluster.mount();
    let files = populate(&cluster, &mount);
    assert_class(&cluster, &mount, "f3", "replicas(3)", 3);
    assert_class(&cluster, &mount, "f2", "replicas(3)", 3);
    assert_eq!(info(&cluster, &mount, "f1")["chunks"][0]["class"], "inline");
    mount.unmount();

    // A fresh mount reads each chunk from one copy: about the file's bytes leave the
    // chunkds, not three times them.
    let before = bytes_sent(&cluster);
    let mount = cluster.mount();
    for (name, expected) in &files {
        assert_eq!(&sha256(&mount.join(name)), expected, "{name}");
    }
    let sent = bytes_sent(&cluster) - before;
    let data = ((9 << 20) + 12345 + (1 << 20)) as f64;
    // (A little less if the write-back cut a piece small enough to go inline.)
    assert!(sent >= 0.95 * data && sent < 1.2 * data, "{sent} bytes sent to read {data}");
    mount.unmount();

    for (a, b) in [(0, 1), (2, 3)] {
        cluster.with_chunkds_down(&[a, b], |mount| {
            // A ranged read first, of a chunk not cached, from whichever copy is left.
            let mut buf = vec![0u8; 4096];
            let file = std::fs::File::open(mount.join("f3")).unwrap();
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 5 << 20).unwrap();
            drop(file);
            for (name, expected) in &files {
                assert_eq!(&sha256(&mount.join(name)), expected, "{name}, {a} and {b} down");
            }
            let bytes = std::fs::read(mount.join("f3")).unwrap();
            assert_eq!(buf, bytes[5 << 20..(5 << 20) + 4096]);
        });
    }
    cluster.wait_chunkds_up();
    assert!(cluster.fsck_clean());
}

#[test]
fn an_lrc_volume_survives_two_lost_chunkds_and_fsck_checks_it() {
    let mut cluster = Cluster::start_class(7, "lrc(4,2,1)", &[]);
    let mount = cluster.mount();
    let files = populate(&cluster, &mount);
    assert_class(&cluster, &mount, "f3", "lrc(4,2,1)", 7);
    mount.unmount();
    for (a, b) in [(0, 1), (2, 6), (4, 5)] {
        cluster.with_chunkds_down(&[a, b], |mount| {
            for (name, expected) in &files {
                assert_eq!(&sha256(&mount.join(name)), expected, "{name}, {a} and {b} down");
            }
        });
    }
    cluster.wait_chunkds_up();
    assert!(cluster.fsck_clean());
    // Three chunkds down is more than lrc(4,2,1) promises: fsck finds unreadable exactly
    // the chunks whose lost shards break the documented rule, the others degraded.
    let class: Encoding = "lrc(4,2,1)".parse().unwrap();
    let down: Vec<String> =
        (0..3).map(|i| cluster.chunkds[i].as_ref().unwrap().id.clone()).collect();
    let mount = cluster.mount();
    let (mut expect_unreadable, mut chunks) = (Vec::new(), 0);
    for name in ["f2", "f3"] {
        let info = info(&cluster, &mount, name);
        for chunk in stored_chunks(&info) {
            let lost: Vec<usize> = (chunk["shards"].as_array().unwrap().iter())
                .filter(|s| down.iter().any(|d| s["chunkd"] == d.as_str()))
                .map(|s| s["index"].as_u64().unwrap() as usize)
                .collect();
            assert_eq!(lost.len(), 3, "{chunk}");
            chunks += 1;
            if !class.survives(&lost) {
                expect_unreadable.push(chunk["chunk"].as_str().unwrap().to_string());
            }
        }
    }
    mount.unmount();
    for i in 0..3 {
        cluster.stop_chunkd(i, Signal::SIGKILL);
    }
    let out = cluster
        .command("shardfs")
        .args(["fsck", &cluster.metad_addr, "--verify-data", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = |key: &str| -> Vec<String> {
        let mut ids: Vec<String> = (report["data"][key].as_array().unwrap().iter())
            .map(|c| c["chunk"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    expect_unreadable.sort();
    assert_eq!(listed("unreadable"), expect_unreadable, "{report}");
    assert_eq!(listed("degraded").len() + expect_unreadable.len(), chunks, "{report}");
}

#[test]
fn a_directory_class_goes_to_what_is_made_in_it_and_dedup_spans_classes() {
    let cluster = Cluster::start_hot_cold(10, "replicas(3)", "rs(4,2)", &[]);
    let mount = cluster.mount();
    let class =
        |args: &[&str]| cluster.command("shardfs").arg("class").args(args).output().unwrap();
    for dir in ["plain", "archive", "pinned", "lrc"] {
        std::fs::create_dir(mount.join(dir)).unwrap();
    }
    for (dir, policy) in [("archive", "cold"), ("pinned", "hot"), ("lrc", "lrc(6,2,2)")] {
        let out = class(&["set", mount.join(dir).to_str().unwrap(), policy]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Inherited by a subdirectory made after, and by the files made in it.
    std::fs::create_dir(mount.join("lrc/sub")).unwrap();
    let out = class(&["get", mount.join("lrc/sub").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": lrc(6,2,2)\n"), "{out:?}");
    let out = class(&["get", mount.join("plain").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("default"), "{out:?}");
    for (file, seed) in [("plain/f", 1), ("archive/f", 2), ("pinned/f", 3), ("lrc/sub/f", 4)] {
        write_random(&mount.join(file), 5 << 20, seed);
        std::fs::File::open(mount.join(file)).unwrap().sync_all().unwrap();
    }
    assert_class(&cluster, &mount, "plain/f", "replicas(3)", 3);
    assert_class(&cluster, &mount, "archive/f", "rs(4,2)", 6);
    assert_class(&cluster, &mount, "pinned/f", "replicas(3)", 3);
    assert_class(&cluster, &mount, "lrc/sub/f", "lrc(6,2,2)", 10);
    // A chunk stored in any class is not stored again.
    std::fs::copy(mount.join("plain/f"), mount.join("lrc/copy")).unwrap();
    std::fs::File::open(mount.join("lrc/copy")).unwrap().sync_all().unwrap();
    assert_class(&cluster, &mount, "lrc/copy", "replicas(3)", 3);
    // Bad policies are refused, by the tool and by metad for any other writer.
    let out = class(&["set", mount.join("plain").to_str().unwrap(), "warm"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a storage class"), "{out:?}");
    let setfattr = format!(
        "setfattr -n user.shardfs.class -v 'rs(0,2)' {} 2>&1; echo $?",
        mount.join("plain").display()
    );
    let said = sh(&setfattr);
    assert!(said.contains("Invalid argument") && !said.ends_with("0\n"), "{said}");
    // Back to the default.
    let out = class(&["set", mount.join("pinned").to_str().unwrap(), "default"]);
    assert!(out.status.success());
    let out = class(&["get", mount.join("pinned").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("default"), "{out:?}");
}

fn df(cluster: &Cluster) -> Value {
    let out = cluster.command("shardfs").args(["df", "--json", &cluster.metad_addr]).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The chunk ids of `name`'s chunks stored on chunkds.
fn chunks_of(cluster: &Cluster, mount: &Mount, name: &str) -> Vec<String> {
    let info = info(cluster, mount, name);
    stored_chunks(&info).iter().map(|c| c["chunk"].as_str().unwrap().to_string()).collect()
}

/// Whether every chunk of `name` stored on chunkds is in `class`.
fn all_in(cluster: &Cluster, mount: &Mount, name: &str, class: &str) -> bool {
    stored_chunks(&info(cluster, mount, name)).iter().all(|c| c["class"] == class)
}

/// The shard indexes the chunkds hold of `chunk`.
fn stored_indexes(cluster: &Cluster, chunk: &str) -> Vec<u8> {
    let mut indexes: Vec<u8> = (0..cluster.chunkds.len())
        .filter(|&i| cluster.chunkds[i].is_some())
        .flat_map(|i| cluster.stored_shards(i))
        .filter(|at| at.shard.chunk.to_hex() == chunk)
        .map(|at| at.shard.index)
        .collect();
    indexes.sort();
    indexes
}

const FAST_LIFECYCLE: [&str; 8] = [
    "--lifecycle-age",
    "3",
    "--lifecycle-interval",
    "0.5",
    "--gc-grace",
    "2",
    "--gc-interval",
    "0.5",
];

#[test]
fn new_data_is_replicated_then_erasure_coded_and_a_pinned_directory_stays_hot() {
    let cluster = Cluster::start_hot_cold(6, "replicas(3)", "rs(4,2)", &FAST_LIFECYCLE);
    let mount = cluster.mount();
    let source = cluster.dir.path().join("a");
    write_random(&source, (9 << 20) + 4, 7);
    std::fs::copy(&source, mount.join("a")).unwrap();
    std::fs::File::open(mount.join("a")).unwrap().sync_all().unwrap();
    assert_class(&cluster, &mount, "a", "replicas(3)", 3);
    assert_eq!(df(&cluster)["overhead"], 3.0);

    eventually("a's chunks moving to rs(4,2)", || all_in(&cluster, &mount, "a", "rs(4,2)"));
    assert_class(&cluster, &mount, "a", "rs(4,2)", 6);
    // Every chunk's length is a multiple of 4: 1.5 exactly.
    let after = df(&cluster);
    assert_eq!(after["overhead"], 1.5, "{after}");
    assert_eq!(after["classes"][0]["class"], "rs(4,2)", "{after}");
    // The old copies are gone after the GC grace; the new shards sit in the second slots.
    for chunk in chunks_of(&cluster, &mount, "a") {
        eventually("the old replicas deleted", || {
            stored_indexes(&cluster, &chunk) == [32, 33, 34, 35, 36, 37]
        });
    }
    let fresh = cluster.mount();
    assert_eq!(sha256(&fresh.join("a")), sha256(&source));

    // A pinned directory's data stays hot past the age and a few scans.
    std::fs::create_dir(mount.join("pinned")).unwrap();
    let out = cluster
        .command("shardfs")
        .args(["class", "set"])
        .arg(mount.join("pinned"))
        .arg("hot")
        .output();
    assert!(out.unwrap().status.success());
    write_random(&mount.join("pinned/b"), 5 << 20, 8);
    std::fs::File::open(mount.join("pinned/b")).unwrap().sync_all().unwrap();
    let moved = || cluster.query(async |meta| meta.workers().await.unwrap().chunks_moved);
    let before = moved();
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_class(&cluster, &mount, "pinned/b", "replicas(3)", 3);
    assert_eq!(moved(), before);
    drop((mount, fresh));
    assert!(cluster.fsck_clean());
}

#[test]
fn a_lifecycle_cut_short_by_killed_chunkds_and_metad_loses_nothing() {
    let mut args = FAST_LIFECYCLE.to_vec();
    args.extend(["--chunk-size", "1MiB", "--lifecycle-rate", "4MiB"]);
    let mut cluster = Cluster::start_hot_cold(7, "replicas(3)", "rs(4,2)", &args);
    let mount = cluster.mount();
    let source = cluster.dir.path().join("big");
    write_random(&source, 24 << 20, 9);
    std::fs::copy(&source, mount.join("big")).unwrap();
    std::fs::File::open(mount.join("big")).unwrap().sync_all().unwrap();
    drop(mount);
    let moved = |cluster: &Cluster| {
        cluster.query(async |meta| meta.workers().await.map(|w| w.chunks_moved).unwrap_or(0))
    };
    // Kill a chunkd, then metad, while the 24 chunks move (4 MiB/s: six seconds of work).
    eventually("the lifecycle under way", || moved(&cluster) >= 2);
    cluster.stop_chunkd(3, Signal::SIGKILL);
    let at_kill = moved(&cluster);
    assert!(at_kill < 24, "all {at_kill} chunks moved before the kills");
    std::thread::sleep(std::time::Duration::from_millis(700));
    cluster.restart_metad(Signal::SIGKILL);
    std::thread::sleep(std::time::Duration::from_millis(700));
    cluster.start_chunkd(3);
    cluster.wait_chunkds_up();
    let mount = cluster.mount();
    eventually("every chunk in rs(4,2)", || all_in(&cluster, &mount, "big", "rs(4,2)"));
    assert_class(&cluster, &mount, "big", "rs(4,2)", 6);
    assert_eq!(sha256(&mount.join("big")), sha256(&source));
    // Each chunk ends in exactly one class: its six shards, nothing of the old copies or of
    // moves cut short left once the sweep has run.
    for chunk in chunks_of(&cluster, &mount, "big") {
        eventually("one class's shards left", || {
            let indexes = stored_indexes(&cluster, &chunk);
            indexes.len() == 6
                && (indexes == [0, 1, 2, 3, 4, 5] || indexes == [32, 33, 34, 35, 36, 37])
        });
    }
    drop(mount);
    assert!(cluster.fsck_clean());
}

#[test]
fn a_lost_lrc_shard_is_rebuilt_from_its_local_group_alone() {
    let args = ["--repair-grace", "1", "--repair-interval", "0.5"];
    let mut cluster = Cluster::start_class(8, "lrc(4,2,1)", &args);
    serve_chunkd_metrics(&mut cluster);
    let mount = cluster.mount();
    let source = cluster.dir.path().join("f");
    write_random(&source, 32 << 20, 11);
    std::fs::copy(&source, mount.join("f")).unwrap();
    std::fs::File::open(mount.join("f")).unwrap().sync_all().unwrap();
    drop(mount);
    let lost = cluster.stored_shards(0);
    assert!(!lost.is_empty());
    let shard_bytes: u64 = lost.iter().map(|at| at.len).sum();
    cluster.stop_chunkd(0, Signal::SIGKILL);
    let before = bytes_sent(&cluster);
    let rebuilt = |cluster: &Cluster| {
        cluster.query(async |meta| meta.workers().await.unwrap().shards_rebuilt)
    };
    eventually("the lost shards rebuilt", || rebuilt(&cluster) >= lost.len() as u64);
    // The two other shards of its group read for each lost data shard or local parity
    // (positions 0 to 5), the four data shards for a lost global parity (position 6): a
    // full decode would read four for every one. Every shard of a chunk is as long as the
    // lost one (as its record's header says); the tree a data shard's rebuild takes from
    // its group comes with a 1-byte range.
    let payload = |at: &StoredAt| -> u64 {
        let mut header = [0u8; HEADER_LEN];
        let file = std::fs::File::open(&at.path).unwrap();
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, at.offset).unwrap();
        ShardHeader::parse_any(&header).unwrap().payload_len
    };
    let reads = |at: &StoredAt| if at.shard.index % 32 < 6 { 2 } else { 4 };
    let expected: u64 = lost.iter().map(|at| reads(at) * payload(at)).sum();
    let read = bytes_sent(&cluster) - before;
    let slack = (lost.len() * (8 << 10)) as f64;
    assert!(
        read >= expected as f64 && read <= expected as f64 + slack,
        "{read} bytes read to rebuild {} shards ({shard_bytes} bytes), {expected} expected",
        lost.len()
    );
    assert!(lost.iter().any(|at| reads(at) == 2), "no shard to rebuild locally");
    assert!(cluster.fsck_clean());
    let mount = cluster.mount();
    assert_eq!(sha256(&mount.join("f")), sha256(&source));
}
