//! The server and the typed client together, over real loopback TCP.

use std::time::Duration;

use shardfs_rpc::ClientOptions;
use tokio::sync::oneshot;

use super::*;
use crate::store::tests::flip_byte;
use shardfs_chunk_api::chunk_id::ChunkId;
use shardfs_chunk_api::client::{ChunkClient, ChunkClientError, ChunkClientPool};
use shardfs_chunk_api::codec;
use shardfs_chunk_api::hash_tree;

struct Running {
    dir: tempfile::TempDir,
    addr: String,
    id: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ShardStore::open(dir.path()).await.unwrap());
    let id = store.id().to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(
        listener,
        (store, Default::default()),
        shardfs_rpc::ServerConfig::new(key()),
        async {
            let _ = stopped.await;
        },
    ));
    Running { dir, addr, id, stop: Some(stop), task }
}

fn key() -> shardfs_rpc::ClusterKey {
    shardfs_rpc::ClusterKey::from_secret(b"the chunkd server tests' cluster secret")
}

fn options() -> ClientOptions {
    ClientOptions { request_timeout: Duration::from_secs(30), ..ClientOptions::with_key(key()) }
}

#[tokio::test]
async fn client_and_server_round_trip() {
    let server = start().await;
    let client = Arc::new(ChunkClient::new(&server.addr, &server.id, options()));
    let encoding = Encoding::rs(4, 2).unwrap();
    let chunk: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (id, tree) = hash_tree::build(&chunk);
    let shards = codec::encode(encoding, &chunk);

    // Puts in parallel over the one connection.
    let puts: Vec<_> = (0..6u8)
        .map(|index| {
            let (client, data, tree) =
                (client.clone(), shards[index as usize].clone(), tree.clone());
            let shard = ShardId { chunk: id, index };
            tokio::spawn(async move { client.put(shard, encoding, 100_000, data, &tree).await })
        })
        .collect();
    for put in puts {
        put.await.unwrap().unwrap();
    }

    // Segment 2 of the chunk, bytes 32768..49152, lies in data shard 1 (bytes 25000..50000).
    let data_shard = ShardId { chunk: id, index: 1 };
    let (range, got_tree) = client.get_range(data_shard, 32768 - 25000, 16384, true).await.unwrap();
    assert_eq!((&range[..], &got_tree), (&chunk[32768..49152], &tree));
    assert_eq!(hash_tree::root(&got_tree, 100_000), Some(id));
    assert!(hash_tree::verify_segments(&got_tree, 100_000, 2, &range));
    let (_, no_tree) = client.get_range(data_shard, 0, 10, false).await.unwrap();
    assert!(no_tree.is_empty());
    // Parity shards have no tree, and a range must lie within the shard.
    for (shard, offset, len) in [(ShardId { chunk: id, index: 4 }, 0, 10), (data_shard, 24_990, 11)]
    {
        let error = client.get_range(shard, offset, len, true).await.unwrap_err();
        assert!(matches!(error, ChunkClientError::Chunkd(ChunkdError::Invalid(_))), "{error}");
    }

    let (got_encoding, chunk_len, data) =
        client.get(ShardId { chunk: id, index: 5 }).await.unwrap();
    assert_eq!((got_encoding, chunk_len, &data), (encoding, 100_000, &shards[5]));

    let listed = client.list(None, 100).await.unwrap();
    assert_eq!(listed, (0..6).map(|index| ShardId { chunk: id, index }).collect::<Vec<_>>());
    assert_eq!(client.list(listed.last().copied(), 100).await.unwrap(), vec![]);

    let stat = client.stat().await.unwrap();
    assert_eq!(stat.shard_count, 6);

    assert!(client.delete(ShardId { chunk: id, index: 0 }).await.unwrap());
    let missing = client.get(ShardId { chunk: id, index: 0 }).await.unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
}

#[tokio::test]
async fn errors_travel_to_the_client() {
    let server = start().await;
    let pool = ChunkClientPool::new(options());
    let client = pool.get(&server.addr, &server.id);
    assert!(Arc::ptr_eq(&client, &pool.get(&server.addr, &server.id)));

    let encoding = Encoding::rs(1, 2).unwrap();
    let chunk = b"some chunk".to_vec();
    let shard = ShardId { chunk: ChunkId::of(&chunk), index: 1 };
    client.put(shard, encoding, chunk.len() as u64, chunk.clone(), &[]).await.unwrap();

    // Damage the stored shard: the read is refused as corrupt.
    flip_byte(server.dir.path(), shard, 0);
    let error = client.get(shard).await.unwrap_err();
    assert!(matches!(error, ChunkClientError::Chunkd(ChunkdError::Corrupt(_))), "{error}");

    let bad_index = ShardId { index: 9, ..shard };
    let error = client.put(bad_index, encoding, chunk.len() as u64, chunk, &[]).await.unwrap_err();
    assert!(matches!(error, ChunkClientError::Chunkd(ChunkdError::Invalid(_))), "{error}");

    // A data shard of a chunk of several segments needs the chunk's tree, and the right one.
    let big = vec![3u8; 40_000];
    let (id, mut tree) = hash_tree::build(&big);
    let shard = ShardId { chunk: id, index: 0 };
    tree[5] ^= 1;
    for wrong in [Vec::new(), tree] {
        let error = client.put(shard, encoding, 40_000, big.clone(), &wrong).await.unwrap_err();
        assert!(matches!(error, ChunkClientError::Chunkd(ChunkdError::Invalid(_))), "{error}");
    }
}

/// Another chunkd at the address a caller has for the one it means (a restart on a reused
/// port): every request is refused and changes nothing.
#[tokio::test]
async fn calls_meant_for_another_chunkd_are_refused() {
    let server = start().await;
    let pool = ChunkClientPool::new(options());
    let right = pool.get(&server.addr, &server.id);
    let wrong = pool.get(&server.addr, "an-earlier-chunkd");
    assert!(!Arc::ptr_eq(&right, &wrong));
    let encoding = Encoding::rs(1, 1).unwrap();
    let chunk = b"kept".to_vec();
    let shard = ShardId { chunk: ChunkId::of(&chunk), index: 0 };
    right.put(shard, encoding, chunk.len() as u64, chunk.clone(), &[]).await.unwrap();

    let other = ShardId { index: 1, ..shard };
    let refusals = [
        wrong.put(other, encoding, chunk.len() as u64, chunk.clone(), &[]).await.map(drop),
        wrong.get(shard).await.map(drop),
        wrong.get_range(shard, 0, 1, true).await.map(drop),
        wrong.delete(shard).await.map(drop),
        wrong.list(None, 10).await.map(drop),
        wrong.stat().await.map(drop),
    ];
    for refusal in refusals {
        let error = refusal.unwrap_err();
        assert!(error.is_wrong_chunkd(), "{error}");
        assert!(error.to_string().contains(&server.id), "{error}");
    }
    assert_eq!(right.list(None, 10).await.unwrap(), vec![shard]);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let mut server = start().await;
    let client = ChunkClient::new(&server.addr, &server.id, options());
    client.stat().await.unwrap();
    server.stop.take().unwrap().send(()).unwrap();
    (&mut server.task).await.unwrap();

    // The open connection was dropped with the listener; new connections are refused.
    let error = client.stat().await.unwrap_err();
    assert!(matches!(error, ChunkClientError::Rpc(_)), "{error}");
    let fresh = ChunkClient::new(&server.addr, &server.id, options());
    assert!(matches!(fresh.stat().await, Err(ChunkClientError::Rpc(_))));
    // And the store was released, so the directory can be opened again.
    ShardStore::open(server.dir.path()).await.unwrap();
}

/// A chunkd that answers every ranged read with fewer bytes than asked for.
struct ShortRanges;

impl shardfs_rpc::Handler for ShortRanges {
    fn offers(&self, service: Service) -> bool {
        service == Service::Chunkd
    }

    async fn handle(
        self: Arc<Self>,
        _service: Service,
        _peer: SocketAddr,
        body: Bytes,
    ) -> Result<Vec<u8>, shardfs_rpc::Error> {
        let call: ChunkdCall = shardfs_rpc::decode(&body)?;
        let response: ChunkdResponse = match call.request {
            ChunkdRequest::GetRange { len, .. } => {
                Ok(ChunkdReply::Range { data: vec![0; len as usize / 2], tree: vec![1] })
            }
            _ => Err(ChunkdError::Io("not this test's concern".into())),
        };
        Ok(shardfs_rpc::encode(&response))
    }
}

#[tokio::test]
async fn a_short_ranged_read_is_an_error_not_a_short_buffer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = shardfs_rpc::ServerConfig::new(key());
    let task = tokio::spawn(shardfs_rpc::serve(listener, Arc::new(ShortRanges), config, async {
        let _ = stopped.await;
    }));
    let client = ChunkClient::new(&addr, "liar", options());
    let shard = ShardId { chunk: ChunkId::of(b"x"), index: 0 };
    for with_tree in [true, false] {
        let error = client.get_range(shard, 0, 16384, with_tree).await.unwrap_err();
        assert!(matches!(error, ChunkClientError::UnexpectedReply), "{error}");
    }
    let _ = stop.send(());
    task.await.unwrap();
}
