//! Identical content is stored once.

use shardfs_tests::{Cluster, sha256, write_random};

#[test]
fn same_64_mib_twice_is_stored_once() {
    let cluster = Cluster::standard();
    let mount = cluster.mount();
    let source = cluster.dir.path().join("data");
    write_random(&source, 64 << 20, 3);
    // Copied by another process: a file open in this one would also be open in every child
    // another test starts meanwhile, until the child execs, and that close commits what was
    // buffered, cutting a chunk wherever the writes had got to (SEMANTICS.md, "Chunks").
    let copy = |name: &str| {
        let status = std::process::Command::new("cp").arg(&source).arg(mount.join(name)).status();
        assert!(status.unwrap().success(), "cp to {name}");
    };
    copy("one");
    let after_one = cluster.query(async |c| c.catalogue_stats().await).unwrap();
    let used_one: u64 = (0..6).map(|i| shard_bytes(&cluster, i)).sum();
    copy("two");
    let after_two = cluster.query(async |c| c.catalogue_stats().await).unwrap();
    assert_eq!(after_one.chunk_bytes, 64 << 20);
    let cut = |name| extents(&cluster, &mount, name);
    assert_eq!(after_one.chunks, 16, "one 4 MiB chunk per window: {}", cut("one"));
    assert_eq!(after_two, after_one, "no chunk added: one {}, two {}", cut("one"), cut("two"));
    let used_two: u64 = (0..6).map(|i| shard_bytes(&cluster, i)).sum();
    assert_eq!(used_two, used_one, "the second copy added no shard bytes");
    // 4+2 coding: 1.5x the data, plus small shard headers.
    let expected = (96 << 20)..(97 << 20);
    assert!(expected.contains(&used_one), "{used_one} bytes of shards");
    assert_eq!(sha256(&mount.join("two")), sha256(&source));
}

/// Where the bytes of file `name` are (offset and length of each extent), for a failure's
/// message.
fn extents(cluster: &Cluster, mount: &shardfs_tests::Mount, name: &str) -> String {
    let out = cluster.command("shardfs").arg("info").arg("--json").arg(mount.join(name)).output();
    let info: serde_json::Value = serde_json::from_slice(&out.unwrap().stdout).unwrap_or_default();
    let extents = info["extents"].as_array().cloned().unwrap_or_default();
    let spans: Vec<String> =
        extents.iter().map(|e| format!("{}+{}", e["offset"], e["len"])).collect();
    spans.join(" ")
}

fn shard_bytes(cluster: &Cluster, i: usize) -> u64 {
    cluster.stored_shards(i).iter().map(|at| at.len).sum()
}
