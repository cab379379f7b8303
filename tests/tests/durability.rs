//! Data survives unmounting and restarting every process.

use shardfs_tests::{Cluster, sha256, write_random};

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
