//! Only holders of the cluster secret are served. Mounts, chunkds and raw TCP peers without
//! it are refused, with a log line on both sides, while valid peers go on working.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shardfs_rpc::ClusterKey;
use shardfs_tests::{Cluster, binary, closed_by_peer, eventually, is_mounted, raw_hello};

/// A secret of the right form that is not the cluster's.
fn wrong_secret(cluster: &Cluster) -> std::path::PathBuf {
    let path = cluster.dir.path().join("wrong.key");
    ClusterKey::create(&path).unwrap();
    path
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

const METAD_REFUSES: &str = "did not prove it holds the cluster secret";

/// Work on a mount of the right secret, to show it is served throughout.
fn still_served(mount: &shardfs_tests::Mount, name: &str) {
    std::fs::write(mount.join(name), name).unwrap();
    assert_eq!(std::fs::read_to_string(mount.join(name)).unwrap(), name);
}

#[test]
fn a_mount_with_a_wrong_secret_is_refused_while_the_right_one_works() {
    let cluster = Cluster::start(3, 2, 1);
    let good = cluster.mount();
    still_served(&good, "before");
    let mnt = cluster.dir.path().join("mnt-wrong");
    std::fs::create_dir(&mnt).unwrap();
    let output = Command::new(binary("shardfs"))
        .args(["mount", "--background", "--secret-file"])
        .arg(wrong_secret(&cluster))
        .arg(&cluster.metad_addr)
        .arg(&mnt)
        .arg("--log-file")
        .arg(cluster.dir.path().join("mount-wrong.log"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("refused this process's cluster secret"), "{stderr}");
    assert!(!is_mounted(&mnt));
    eventually("metad to log the refusal", || cluster.metad_logs().contains(METAD_REFUSES));
    still_served(&good, "after");
}

/// Kills a daemon started by the test when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_chunkd_with_a_wrong_secret_never_joins() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    let log = cluster.dir.path().join("impostor-chunkd.log");
    let _impostor = Killed(
        Command::new(binary("shardfs-chunkd"))
            .arg("--data")
            .arg(cluster.dir.path().join("impostor-chunkd"))
            .arg("--secret-file")
            .arg(wrong_secret(&cluster))
            .args(["--listen", "127.0.0.1:0", "--metad", &cluster.metad_addr])
            .args(["--heartbeat-interval", "0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    eventually("the chunkd to log its refusal", || {
        log_of(&log).contains("refused this process's cluster secret")
    });
    eventually("metad to log the refusal", || cluster.metad_logs().contains(METAD_REFUSES));
    let chunkds = cluster.query(async |c| c.chunkds().await).unwrap();
    assert_eq!(chunkds.len(), 3, "the impostor was never registered");
    still_served(&mount, "placed-on-the-three");
}

#[test]
fn raw_peers_without_the_secret_are_refused() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    let chunkd = cluster.chunkds[0].as_ref().unwrap().addr.clone();
    let metad = cluster.one_metad();
    for (addr, service) in [(metad.as_str(), 1), (chunkd.as_str(), 3)] {
        // A made-up proof: refused (verdict 3), then the connection is closed.
        let (mut stream, _) = raw_hello(addr, service);
        stream.write_all(&[0x5a; 64]).unwrap();
        let mut verdict = [0u8; 33];
        stream.read_exact(&mut verdict).unwrap();
        assert_eq!(verdict[0], 3, "{addr}: refused");
        assert_eq!(verdict[1..], [0u8; 32], "{addr}: no proof for a refused peer");
        assert!(closed_by_peer(&mut stream), "{addr}: closed after refusing");
        // A request frame instead of a hello: dropped without an answer.
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let frame = [0, 0, 0, 10, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        stream.write_all(&frame).unwrap();
        assert!(closed_by_peer(&mut stream), "{addr}: closed a peer that skipped the handshake");
        // The right secret is served meanwhile.
        still_served(&mount, &format!("during-{service}"));
    }
    assert!(cluster.metad_logs().contains(METAD_REFUSES), "metad logged the refused peer");
    let chunkd_log = log_of(&cluster.dir.path().join("chunkd-0.log"));
    assert!(chunkd_log.contains(METAD_REFUSES), "chunkd logged the refused peer");
}
