//! Data survives unmounting and restarting every process.

use shardfs_tests::{Cluster, sha256, write_random};

/// A close leaves the commit of what it buffered to the background; an unmount waits for
/// every such commit, and another mount reading a just-closed file gets it committed first.
#[test]
fn files_closed_just_before_an_unmount_or_a_read_elsewhere_are_complete() {
    let cluster = Cluster::standard();
    let content = |i: usize| format!("file {i}\n").repeat(64 * (i % 7 + 1));
    let mount = cluster.mount();
    for i in 0..300 {
        std::fs::write(mount.join(&format!("f{i}")), content(i)).unwrap();
    }
    // Last, files big enough that their commits are still under way at the unmount.
    let mut sums = Vec::new();
    for i in 0..6 {
        let source = cluster.dir.path().join(format!("source{i}"));
        write_random(&source, 2 << 20, i);
        sums.push(sha256(&source));
        std::fs::copy(&source, mount.join(&format!("big{i}"))).unwrap();
    }
    mount.unmount();
    let (a, b) = (cluster.mount(), cluster.mount());
    for i in 0..300 {
        assert_eq!(std::fs::read_to_string(a.join(&format!("f{i}"))).unwrap(), content(i));
    }
    for (i, sum) in sums.iter().enumerate() {
        assert_eq!(&sha256(&a.join(&format!("big{i}"))), sum, "big{i}");
    }
    for i in 0..50 {
        std::fs::write(a.join(&format!("g{i}")), content(i)).unwrap();
        assert_eq!(std::fs::read_to_string(b.join(&format!("g{i}"))).unwrap(), content(i));
    }
}

#[test]
fn large_file_survives_full_restart() {
    let mut cluster = Cluster::standard();
    let source = cluster.dir.path().join("random");
    write_random(&source, 256 << 20, 42);
    let expected = sha256(&source);
    {
        let mount = cluster.mount();
        std::fs::copy(&source, mount.join("big")).unwrap();
        assert_eq!(sha256(&mount.join("big")), expected);
        mount.unmount();
    }
    cluster.restart_all();
    let mount = cluster.mount();
    assert_eq!(sha256(&mount.join("big")), expected);
}
