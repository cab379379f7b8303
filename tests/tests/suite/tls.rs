//! A cluster run with TLS: every connection (mount → metad and chunkds, chunkd → metad,
//! metad → chunkds, tools) is encrypted, and peers without TLS get a clear error.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use shardfs_rpc::sync::Lock as _;
use shardfs_tests::{Cluster, eventually};

/// Forwards connections on a local port to `upstream`, keeping a copy of every byte that
/// passes in either direction.
struct Recorder {
    addr: String,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start(upstream: &str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (upstream, record) = (upstream.to_owned(), seen.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&upstream) else { return };
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let record = record.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            record.locked().extend_from_slice(&buf[..n]);
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Recorder { addr, seen }
    }

    fn saw(&self, needle: &[u8]) -> bool {
        self.seen.locked().windows(needle.len()).any(|w| w == needle)
    }
}

const MARKER: &[u8] = b"a marker that must not cross the network in the clear";

/// Writes a small file (kept inline: its content goes to metad) through a mount that
/// reaches metad via a recorder; returns the recorder.
fn write_marker_through_recorder(cluster: &Cluster) -> Recorder {
    let recorder = Recorder::start(&cluster.one_metad());
    let mount = cluster.mount_via(&recorder.addr, &[]);
    std::fs::write(mount.join("marked"), MARKER).unwrap();
    std::fs::File::open(mount.join("marked")).unwrap().sync_all().unwrap();
    drop(mount);
    recorder
}

#[test]
fn a_cluster_over_tls_serves_and_nothing_crosses_in_the_clear() {
    let fast_gc = ["--gc-grace", "0.5", "--gc-interval", "0.1"];
    // Registration and heartbeats (chunkd -> metad) over TLS: the cluster comes up.
    let cluster = Cluster::start_tls(3, 2, 1, &fast_gc);
    let mount = cluster.mount();
    // Shards go to chunkds over TLS, and come back on a fresh mount.
    shardfs_tests::write_random(&mount.join("big"), 5 << 20, 7);
    let expected = shardfs_tests::sha256(&mount.join("big"));
    assert_eq!(shardfs_tests::sha256(&cluster.mount().join("big")), expected);
    // fsck reads every shard over TLS.
    assert!(cluster.fsck_clean());
    // metad's garbage collector deletes shards on chunkds over TLS.
    std::fs::remove_file(mount.join("big")).unwrap();
    let shards = || (0..3).map(|i| cluster.stored_shards(i).len()).sum::<usize>();
    eventually("the deleted file's shards to go", || shards() == 0);

    let recorder = write_marker_through_recorder(&cluster);
    assert!(!recorder.saw(MARKER), "file content crossed the network in the clear");
    assert!(!recorder.seen.locked().is_empty(), "nothing went through the recorder");

    // A tool without the CA is told what is missing; so is a plain chunkd's registration.
    let plain = cluster
        .command("shardfs")
        .env_remove("SHARDFS_TLS_CA")
        .args(["status", &cluster.metad_addr])
        .output()
        .unwrap();
    assert!(!plain.status.success());
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(stderr.contains("expects TLS: give the cluster's CA with --tls-ca"), "{stderr}");
}

/// The recorder does see the marker when the cluster runs without TLS: it would catch a
/// cluster that silently fell back to plain TCP.
#[test]
fn without_tls_the_recorder_sees_file_content() {
    let cluster = Cluster::start(3, 2, 1);
    let recorder = write_marker_through_recorder(&cluster);
    assert!(recorder.saw(MARKER));
}
