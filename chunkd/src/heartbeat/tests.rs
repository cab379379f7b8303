//! The heartbeat loop against a scripted stand-in for metad.

use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use shardfs_rpc::Handler;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::*;
use shardfs_chunk_api::chunk_id::ChunkId;
use shardfs_chunk_api::membership::MembershipReply;
use shardfs_rpc::sync::Lock as _;

/// Records every request and answers `UnknownChunkd` to the first `forget` heartbeats.
struct FakeMetad {
    seen: mpsc::UnboundedSender<MembershipRequest>,
    forget: Mutex<usize>,
}

impl Handler for FakeMetad {
    fn offers(&self, service: Service) -> bool {
        service == Service::Membership
    }

    async fn handle(
        self: Arc<Self>,
        _service: Service,
        _peer: SocketAddr,
        body: Bytes,
    ) -> Result<Vec<u8>, shardfs_rpc::Error> {
        let request: MembershipRequest = shardfs_rpc::decode(&body)?;
        let response: MembershipResponse = match &request {
            MembershipRequest::Heartbeat { id, .. } => {
                let mut forget = self.forget.locked();
                if *forget > 0 {
                    *forget -= 1;
                    Err(MembershipError::UnknownChunkd(id.clone()))
                } else {
                    Ok(MembershipReply::Ok)
                }
            }
            _ => Ok(MembershipReply::Ok),
        };
        let _ = self.seen.send(request);
        Ok(shardfs_rpc::encode(&response))
    }
}

fn key() -> shardfs_rpc::ClusterKey {
    shardfs_rpc::ClusterKey::from_secret(b"the heartbeat tests' cluster secret")
}

fn serve_fake(listener: TcpListener, forget: usize) -> mpsc::UnboundedReceiver<MembershipRequest> {
    let (seen, requests) = mpsc::unbounded_channel();
    let fake = Arc::new(FakeMetad { seen, forget: Mutex::new(forget) });
    let config = shardfs_rpc::ServerConfig::new(key());
    tokio::spawn(shardfs_rpc::serve(listener, fake, config, std::future::pending()));
    requests
}

async fn next(requests: &mut mpsc::UnboundedReceiver<MembershipRequest>) -> MembershipRequest {
    tokio::time::timeout(Duration::from_secs(20), requests.recv())
        .await
        .expect("metad heard nothing")
        .expect("fake metad stopped")
}

struct Beating {
    _dir: tempfile::TempDir,
    store: Arc<ShardStore>,
    reports: mpsc::Sender<ShardId>,
    _stop: oneshot::Sender<()>,
}

async fn start_heartbeat(metad_addr: String) -> Beating {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
    let (reports, corrupt) = mpsc::channel(16);
    let (stop, stopped) = oneshot::channel::<()>();
    let config = HeartbeatConfig {
        metad_addr,
        id: store.id().to_owned(),
        advertise_addr: "127.0.0.1:1".into(),
        zone: Some("z1".into()),
        interval: Duration::from_millis(50),
        auth: shardfs_rpc::DaemonAuth::new(key()),
    };
    tokio::spawn(run(config, store.clone(), corrupt, async {
        let _ = stopped.await;
    }));
    Beating { _dir: dir, store, reports, _stop: stop }
}

#[tokio::test]
async fn registers_heartbeats_re_registers_and_reports() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut requests = serve_fake(listener, 1);
    let beating = start_heartbeat(addr).await;

    match next(&mut requests).await {
        MembershipRequest::Register { id, addr, zone, .. } => {
            assert_eq!(id, beating.store.id());
            assert_eq!((addr.as_str(), zone.as_deref()), ("127.0.0.1:1", Some("z1")));
        }
        other => panic!("expected Register, got {other:?}"),
    }
    // The first heartbeat is refused as unknown: the chunkd must register again.
    assert!(matches!(next(&mut requests).await, MembershipRequest::Heartbeat { .. }));
    assert!(matches!(next(&mut requests).await, MembershipRequest::Register { .. }));
    assert!(matches!(next(&mut requests).await, MembershipRequest::Heartbeat { .. }));

    let shard = ShardId { chunk: ChunkId::of(b"bad"), index: 2 };
    beating.reports.try_send(shard).unwrap();
    loop {
        match next(&mut requests).await {
            MembershipRequest::ReportCorrupt { shard: reported, .. } => {
                assert_eq!(reported, shard);
                break;
            }
            MembershipRequest::Heartbeat { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn waits_for_metad_to_come_up() {
    // Learn a free port, then leave it closed while the chunkd starts.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let _beating = start_heartbeat(addr.to_string()).await;
    // Let a few attempts fail first (the backoff begins at 100 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let listener = TcpListener::bind(addr).await.unwrap();
    let mut requests = serve_fake(listener, 0);
    assert!(matches!(next(&mut requests).await, MembershipRequest::Register { .. }));
    assert!(matches!(next(&mut requests).await, MembershipRequest::Heartbeat { .. }));
}
