//! Truncated, oversized and garbage frames from an authenticated peer: the daemon logs,
//! drops that connection, and keeps serving everyone else.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use shardfs_rpc::auth::{Role, nonce};
use shardfs_rpc::frame::MAX_FRAME_LEN;
use shardfs_tests::{Cluster, closed_by_peer, raw_hello};

/// A connection to `addr` for `service` that has passed the handshake with the cluster's
/// secret, so what follows reaches the frame decoder.
fn authenticated(cluster: &Cluster, addr: &str, service: u8) -> TcpStream {
    let key = cluster.rpc_options().key.unwrap();
    let (mut stream, server_nonce) = raw_hello(addr, service);
    let client_nonce = nonce();
    stream.write_all(&client_nonce).unwrap();
    stream.write_all(&key.proof(Role::Client, service, &server_nonce, &client_nonce)).unwrap();
    let mut verdict = [0u8; 33];
    stream.read_exact(&mut verdict).unwrap();
    assert_eq!(verdict[0], 0, "accepted");
    stream
}

fn frame(kind: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut frame = ((1 + 8 + body.len()) as u32).to_be_bytes().to_vec();
    frame.push(kind);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

#[test]
fn bad_frames_drop_only_their_connection() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    let chunkd = cluster.chunkds[0].as_ref().unwrap().addr.clone();
    let targets = [
        (cluster.one_metad(), 1u8, cluster.one_metad_log()),
        (chunkd, 3u8, cluster.dir.path().join("chunkd-0.log")),
    ];
    for (addr, service, log) in &targets {
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("a body that is no message", frame(0, 1, &[0xff; 40]), false),
            ("trailing bytes after a message", frame(0, 2, &[0, 0, 0, 0, 0, 0, 0, 0, 9]), false),
            ("a frame of an unknown kind", frame(7, 3, b"x"), false),
            ("a response sent to a server", frame(1, 4, b"x"), false),
            ("an oversized length", ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec(), false),
            ("a length shorter than a header", 3u32.to_be_bytes().to_vec(), false),
            ("a frame cut short", frame(0, 5, &[1u8; 100])[..50].to_vec(), true),
        ];
        for (what, bytes, then_close) in cases {
            let mut stream = authenticated(&cluster, addr, *service);
            stream.write_all(&bytes).unwrap();
            if then_close {
                stream.shutdown(Shutdown::Write).unwrap();
            }
            assert!(closed_by_peer(&mut stream), "{addr}: {what}: connection not dropped");
            // Everyone else is still served, through both daemons.
            let name = format!("after-{service}-{}", what.replace(' ', "-"));
            std::fs::write(mount.join(&name), vec![7u8; 100_000]).unwrap();
            let read = std::fs::read(mount.join(&name)).unwrap();
            assert!(read == vec![7u8; 100_000], "{what}: content differs");
        }
        let logged = std::fs::read_to_string(log).unwrap();
        let drops = logged.matches("dropping connection").count();
        assert!(drops >= 7, "{addr} logged {drops} dropped connections:\n{logged}");
    }
    // No daemon died on the way.
    let up = cluster.query(async |c| c.chunkds().await).unwrap();
    assert!(up.iter().all(|c| c.up), "{up:?}");
}

#[test]
fn invalid_times_are_refused_and_extreme_ones_do_not_upset_a_mount() {
    use shardfs_meta_api::MetaClientError;
    use shardfs_meta_api::proto::{Cred, MetaError, ROOT_INO, SetAttr, SetTime, Timestamp};
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    let ino = cluster.query(async |c| {
        let made = c.make_node(ROOT_INO, b"f", libc::S_IFREG | 0o644, 0, Cred::ROOT).await;
        let ino = made.unwrap().attr.ino;
        for nsec in [1_000_000_000, u32::MAX] {
            let bad = SetTime::At(Timestamp { sec: 1, nsec });
            for changes in [
                SetAttr { mtime: Some(bad), ..Default::default() },
                SetAttr { atime: Some(bad), ..Default::default() },
            ] {
                let refused = c.set_attr(ino, Cred::ROOT, changes).await;
                assert!(
                    matches!(refused, Err(MetaClientError::Meta(MetaError::Invalid(_)))),
                    "{refused:?}"
                );
            }
        }
        // The edges of what a timestamp holds are valid, and stored.
        let far = |sec| Some(SetTime::At(Timestamp { sec, nsec: 999_999_999 }));
        let edges = SetAttr { atime: far(i64::MIN), mtime: far(i64::MAX), ..Default::default() };
        c.set_attr(ino, Cred::ROOT, edges).await.unwrap();
        ino
    });
    let meta = std::fs::metadata(mount.join("f")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&meta), ino);
    std::fs::write(mount.join("g"), b"still served").unwrap();
    assert_eq!(std::fs::read(mount.join("g")).unwrap(), b"still served");
}
