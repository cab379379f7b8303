//! Reads survive any m of the k+m chunkds being down, and a corrupt shard.

use nix::sys::signal::Signal;
use shardfs_chunkd::shard::HEADER_LEN;
use shardfs_tests::{Cluster, sha256, write_random};

/// Writes files of assorted sizes and returns (name, sha256) pairs.
fn populate(cluster: &Cluster) -> Vec<(String, String)> {
    let mount = cluster.mount();
    let mut files = Vec::new();
    for (i, len) in [0usize, 1, 4095, 1 << 20, (9 << 20) + 12345].into_iter().enumerate() {
        let name = format!("f{i}");
        let source = cluster.dir.path().join(&name);
        write_random(&source, len, i as u64);
        std::fs::copy(&source, mount.join(&name)).unwrap();
        files.push((name, sha256(&source)));
    }
    files
}

#[test]
fn any_two_of_six_chunkds_down() {
    let mut cluster = Cluster::standard();
    let files = populate(&cluster);
    for a in 0..6 {
        for b in a + 1..6 {
            cluster.with_chunkds_down(&[a, b], |mount| {
                for (name, expected) in &files {
                    assert_eq!(&sha256(&mount.join(name)), expected, "{name}, {a} and {b} down");
                }
            });
        }
    }
}

#[test]
fn flipped_byte_in_a_shard_is_quarantined_and_reported() {
    let cluster = Cluster::standard();
    let files = populate(&cluster);
    // Damage the data shard 0 of some chunk: data shards are what a healthy read fetches.
    let (chunkd, victim) = (0..6)
        .flat_map(|i| cluster.stored_shards(i).into_iter().map(move |at| (i, at)))
        .find(|(_, at)| at.shard.index == 0)
        .expect("some chunkd holds a data shard 0");
    cluster.damage_shard(&victim, victim.len - 1);
    let chunk_hex = victim.shard.chunk.to_hex();

    let mount = cluster.mount();
    for (name, expected) in &files {
        assert_eq!(&sha256(&mount.join(name)), expected, "{name}");
    }
    // The shard left the store for quarantine...
    assert!(!cluster.stored_shards(chunkd).contains(&victim));
    let quarantined = std::fs::read_dir(cluster.chunkd_dir(chunkd).join("quarantine")).unwrap();
    assert_eq!(quarantined.count(), 1);
    // ...and metad knows it is bad.
    let chunk = chunk_hex.parse().unwrap();
    let deadline = std::time::Instant::now() + shardfs_tests::READY_TIMEOUT;
    loop {
        let status = cluster.query(async |c| c.chunk_status(chunk).await).unwrap().unwrap();
        let bad: Vec<_> = status.shards.iter().filter(|s| !s.healthy).map(|s| s.index).collect();
        if bad == [0] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "corrupt shard not reported: {status:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Unhealthy shards in the catalogue: on chunkds found bad, or never placed.
fn unhealthy(cluster: &Cluster) -> u64 {
    cluster.query(async |c| c.catalogue_stats().await).unwrap().unhealthy_shards
}

#[test]
fn a_copy_goes_on_while_a_chunkd_is_killed_and_repair_completes_it() {
    use std::io::Write;
    let mut cluster = Cluster::start_with(6, 4, 2, &["--repair-interval", "0.2"]);
    let (a, b) = (cluster.mount(), cluster.mount());
    let source = cluster.dir.path().join("source");
    write_random(&source, 40 << 20, 17);
    let bytes = std::fs::read(&source).unwrap();
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    let mut copy = std::fs::File::create(a.join("copy")).unwrap();
    copy.write_all(first).unwrap();
    // One chunkd of six dies mid-copy: 4+2 chunks go on being written with 5 shards (k+1),
    // degraded, until repair adds the sixth.
    cluster.stop_chunkd(5, Signal::SIGKILL);
    copy.write_all(rest).unwrap();
    drop(copy);
    // Whole at once on another mount, right after the close.
    assert_eq!(sha256(&b.join("copy")), sha256(&source));
    assert!(unhealthy(&cluster) > 0, "degraded chunks are counted, not silent");
    // Back up: repair places and rebuilds the missing shards, and every byte verifies.
    cluster.start_chunkd(5);
    cluster.wait_chunkds_up();
    shardfs_tests::eventually("repair to complete the degraded chunks", || {
        unhealthy(&cluster) == 0
    });
    assert!(cluster.fsck_clean(), "fsck --verify-data after repair");
    assert_eq!(sha256(&b.join("copy")), sha256(&source));
}

#[test]
fn writes_below_k_plus_1_shards_fail_with_eio_at_once() {
    let mut cluster = Cluster::standard();
    let files = populate(&cluster);
    let (a, b) = (cluster.mount(), cluster.mount());
    // Two of six down: four left, fewer than the five shards (k+1) a 4+2 chunk needs.
    cluster.stop_chunkd(3, Signal::SIGKILL);
    cluster.stop_chunkd(4, Signal::SIGKILL);
    let started = std::time::Instant::now();
    let script = format!("head -c 8M /dev/urandom > {}", a.join("x").display());
    let out = std::process::Command::new("bash").args(["-c", &script]).output().unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Not ENOSPC: the volume is not full. Reported by the close, not left to a commit
    // after it that nobody hears of.
    assert!(!out.status.success(), "the write was acknowledged: {stderr}");
    assert!(stderr.contains("Input/output error"), "{stderr}");
    assert!(took < std::time::Duration::from_secs(5), "the error took {took:?}");
    // No mount sees a state the writer was told is done.
    assert_eq!(std::fs::metadata(b.join("x")).unwrap().len(), 0);
    let log = cluster.metad_logs();
    assert!(log.contains("class rs(4,2) needs 5 usable chunkds to store a chunk, 4 are"), "{log}");
    // What was stored before is intact, and the volume takes writes again once they are back.
    for (name, expected) in &files {
        assert_eq!(&sha256(&a.join(name)), expected, "{name}");
    }
    cluster.start_chunkd(3);
    cluster.start_chunkd(4);
    cluster.wait_chunkds_up();
    std::fs::write(a.join("after"), vec![2u8; 1 << 20]).unwrap();
    assert_eq!(std::fs::read(b.join("after")).unwrap(), vec![2u8; 1 << 20]);
}

#[test]
fn scrub_finds_a_flipped_byte_without_any_read() {
    let mut cluster = Cluster::standard();
    populate(&cluster);
    // Damage a parity shard's data (past its header): no normal read would ever touch it.
    // Placement depends on the chunkds' random ids, so look for one on any chunkd.
    let (holder, victim) = (0..cluster.chunkds.len())
        .find_map(|i| {
            let parity = cluster
                .stored_shards(i)
                .into_iter()
                .filter(|at| at.len > 200)
                .find(|at| at.shard.index >= 4);
            parity.map(|at| (i, at))
        })
        .expect("some chunkd holds a parity shard of a large chunk");
    cluster.damage_shard(&victim, 200);
    let (chunk, index) = (victim.shard.chunk, victim.shard.index);
    // Restart that chunkd with frequent scrub passes.
    cluster.stop_chunkd(holder, Signal::SIGTERM);
    cluster.chunkd_args = vec!["--scrub-interval".into(), "0.2".into()];
    cluster.start_chunkd(holder);
    let deadline = std::time::Instant::now() + shardfs_tests::READY_TIMEOUT;
    loop {
        let status = cluster.query(async |c| c.chunk_status(chunk).await).unwrap().unwrap();
        if status.shards.iter().any(|s| s.index == index && !s.healthy) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "scrub did not report {victim:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !cluster.stored_shards(holder).contains(&victim),
        "the corrupt shard went to quarantine"
    );
}

/// `shardfs scrub` runs a pass on every chunkd now (their own passes are a day apart) and
/// reports what each found.
#[test]
fn scrub_command_runs_a_pass_everywhere_and_reports_corruption() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    write_random(&mount.join("data"), 6 << 20, 2);
    std::fs::File::open(mount.join("data")).unwrap().sync_all().unwrap();
    let total: usize = (0..3).map(|i| cluster.stored_shards(i).len()).sum();
    let victim = cluster.stored_shards(0).into_iter().next().expect("chunkd 0 holds a shard");
    cluster.damage_shard(&victim, 200);
    let out = cluster.command("shardfs").args(["scrub", "--json", &cluster.metad_addr]).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 3);
    let damaged = cluster.chunkds[0].as_ref().unwrap().id.as_str();
    for report in reports {
        let expected = u64::from(report["chunkd"] == damaged);
        assert_eq!(report["corrupt"], expected, "{report}");
    }
    let verified: u64 = reports.iter().map(|r| r["shards"].as_u64().unwrap()).sum();
    assert_eq!(verified as usize, total - 1, "every other shard verified");
    // The corrupt shard is reported to metad (with the next heartbeat), for repair.
    shardfs_tests::eventually("metad to mark the corrupt shard", || {
        cluster.query(async |c| c.catalogue_stats().await.unwrap()).unhealthy_shards == 1
    });
    // status shows each chunkd's scrub passes (its own at start, and this one) and what
    // the damaged one quarantined, from their heartbeats.
    shardfs_tests::eventually("status to show the scrub", || {
        let chunkds = cluster.query(async |c| c.chunkds().await.unwrap());
        chunkds.iter().all(|c| c.scrub_passes >= 2 && c.quarantined == u64::from(c.id == damaged))
    });
}

/// A reader jumping about fetches just the 16 KiB segments holding what it asks for, from
/// one data shard, and checks them against the chunk's hash tree: damage elsewhere in that
/// shard goes unseen by it, while damage in what it fetches is caught, read around from the
/// other shards, and quarantined.
#[test]
fn random_reads_fetch_and_verify_only_the_segments_they_need() {
    use std::os::unix::fs::FileExt;

    let cluster = Cluster::standard();
    let source = cluster.dir.path().join("source");
    write_random(&source, 8 << 20, 11);
    let content = std::fs::read(&source).unwrap();
    let writer = cluster.mount();
    std::fs::copy(&source, writer.join("f")).unwrap();

    // Damage one byte of the file, at `damaged`, in the data shard that holds it (data
    // shard 1 of the first chunk when the chunks are cut at 4 MiB, as usual: file bytes
    // [1 MiB, 2 MiB)). Where it is comes from `shardfs info`.
    let damaged = (1 << 20) + 100_000;
    let out = cluster.command("shardfs").args(["info", "--json"]).arg(writer.join("f")).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    writer.unmount();
    let extent = info["extents"].as_array().unwrap().iter().find(|e| {
        let (offset, len) = (e["offset"].as_u64().unwrap(), e["len"].as_u64().unwrap());
        (offset..offset + len).contains(&(damaged as u64))
    });
    let extent = extent.expect("an extent holds the damaged byte");
    let chunk = extent["chunk"].as_str().unwrap();
    let chunk_len = info["chunks"].as_array().unwrap().iter().find(|c| c["chunk"] == chunk);
    let chunk_len = chunk_len.unwrap()["len"].as_u64().unwrap() as usize;
    let in_chunk = extent["chunk_offset"].as_u64().unwrap() as usize
        + (damaged - extent["offset"].as_u64().unwrap() as usize);
    let shard_len = chunk_len.div_ceil(4);
    let index = (in_chunk / shard_len) as u8;
    let victim = (0..6)
        .flat_map(|i| cluster.stored_shards(i))
        .find(|at| at.shard.chunk.to_hex() == chunk && at.shard.index == index)
        .expect("a chunkd holds the data shard");
    cluster.damage_shard(&victim, (HEADER_LEN + in_chunk % shard_len) as u64);

    // A fresh mount (nothing cached), reading without the kernel's read-ahead.
    let mount = cluster.mount();
    let file = std::fs::File::open(mount.join("f")).unwrap();
    let advice = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM;
    nix::fcntl::posix_fadvise(&file, 0, 0, advice).unwrap();
    let read_at = |offset: usize| {
        let mut buf = vec![0u8; 4096];
        file.read_exact_at(&mut buf, offset as u64).unwrap();
        assert!(buf == content[offset..offset + 4096], "4 KiB at {offset}");
    };
    for offset in [(1 << 20) + 300_000, (1 << 20) + 800_000, 4096, 3_000_000, 6_000_000] {
        read_at(offset);
    }
    let held = || (0..6).flat_map(|i| cluster.stored_shards(i)).any(|at| at == victim);
    assert!(held(), "whole-shard reads would have found the damage");
    read_at(damaged - 1000);
    assert!(!held(), "the damaged shard went to quarantine");
    // The damage is behind the reader now: reads of that chunk come from the others.
    read_at((1 << 20) + 300_000);
    read_at(damaged - 1000);
}
