//! The chunkd side of the `Chunkd` service: decodes requests, runs them against the
//! [`ShardStore`], encodes the answers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use shardfs_rpc::{Handler, ServerConfig, Service};
use tokio::net::TcpListener;
use tracing::{debug, instrument, warn};

use crate::metrics::ChunkdMetrics;
use crate::store::ShardStore;
use shardfs_chunk_api::chunk_id::ShardId;
use shardfs_chunk_api::codec::Encoding;
use shardfs_chunk_api::proto::{
    ChunkdCall, ChunkdError, ChunkdReply, ChunkdRequest, ChunkdResponse,
};
use shardfs_rpc::sync::ReadWrite as _;

/// Serves the chunkd protocol for `store` on `listener`, to peers holding the cluster secret
/// behind `config.key` (over TLS if `config` has it), until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    (store, metrics): (Arc<ShardStore>, Arc<ChunkdMetrics>),
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let server = Arc::new(ChunkdServer::new(store, metrics));
    shardfs_rpc::serve(listener, server.clone(), config, shutdown).await;
    server.close();
}

pub struct ChunkdServer {
    /// `None` once closed. `shardfs_rpc::serve` stops accepting on shutdown but leaves open
    /// connections running; closing makes them answer errors and drops our reference to the
    /// store, so the store (and its directory lock) is released when its owner drops it.
    store: RwLock<Option<Arc<ShardStore>>>,
    metrics: Arc<ChunkdMetrics>,
}

impl ChunkdServer {
    pub fn new(store: Arc<ShardStore>, metrics: Arc<ChunkdMetrics>) -> ChunkdServer {
        ChunkdServer { store: RwLock::new(Some(store)), metrics }
    }

    /// Stops serving: every later request is answered with an error.
    pub fn close(&self) {
        *self.store.write_locked() = None;
    }

    /// Answers one decoded call, if it is meant for this chunkd, and counts it.
    pub async fn answer(&self, call: ChunkdCall) -> ChunkdResponse {
        let (op, started): (&'static str, _) = ((&call.request).into(), std::time::Instant::now());
        if let ChunkdRequest::Put { data, .. } = &call.request {
            self.metrics.bytes_in.inc_by(data.len() as u64);
        }
        let response = self.answer_call(call).await;
        if let Ok(ChunkdReply::Shard { data, .. } | ChunkdReply::Range { data, .. }) = &response {
            self.metrics.bytes_out.inc_by(data.len() as u64);
        }
        self.metrics.requests.record(op, response.is_ok(), started.elapsed());
        response
    }

    async fn answer_call(&self, call: ChunkdCall) -> ChunkdResponse {
        let store = self.store.read_locked().clone();
        let Some(store) = store else {
            return Err(ChunkdError::Io("chunkd is shutting down".into()));
        };
        if call.chunkd != store.id() {
            warn!(expected = %call.chunkd, "refused a call meant for another chunkd");
            return Err(ChunkdError::WrongChunkd {
                expected: call.chunkd,
                actual: store.id().to_owned(),
            });
        }
        match call.request {
            ChunkdRequest::Put { shard, encoding, chunk_len, checksum, data, tree } => {
                put(&store, shard, encoding, chunk_len, checksum, data, tree).await
            }
            ChunkdRequest::Get { shard } => get(&store, shard).await,
            ChunkdRequest::GetRange { shard, offset, len, with_tree } => {
                let result = store.get_range(shard, offset, len, with_tree).await;
                log_outcome(&result);
                result.map(|(data, tree)| ChunkdReply::Range { data, tree })
            }
            ChunkdRequest::Delete { shard } => delete(&store, shard).await,
            ChunkdRequest::List { after, limit } => {
                store.list(after, limit).await.map(|shards| ChunkdReply::Listed { shards })
            }
            ChunkdRequest::Stat => store.stat().await.map(ChunkdReply::Stat),
            ChunkdRequest::Scrub => {
                Ok(ChunkdReply::Scrubbing { done_after: store.scrub_progress().passes.request() })
            }
        }
    }
}

impl Handler for ChunkdServer {
    fn offers(&self, service: Service) -> bool {
        service == Service::Chunkd
    }

    async fn handle(
        self: Arc<Self>,
        _service: Service,
        peer: SocketAddr,
        body: Bytes,
    ) -> Result<Vec<u8>, shardfs_rpc::Error> {
        let call: ChunkdCall = shardfs_rpc::decode(&body).inspect_err(|e| {
            warn!(%peer, "undecodable chunkd request: {e}");
        })?;
        Ok(shardfs_rpc::encode(&self.answer(call).await))
    }
}

#[instrument(skip_all, fields(shard = %shard, len = data.len()))]
async fn put(
    store: &Arc<ShardStore>,
    shard: ShardId,
    encoding: Encoding,
    chunk_len: u64,
    checksum: [u8; 32],
    data: Vec<u8>,
    tree: Vec<u8>,
) -> ChunkdResponse {
    let result = store.put(shard, encoding, chunk_len, checksum, data, tree).await;
    log_outcome(&result);
    result.map(|()| ChunkdReply::Stored)
}

#[instrument(skip_all, fields(shard = %shard))]
async fn get(store: &Arc<ShardStore>, shard: ShardId) -> ChunkdResponse {
    let result = store.get(shard).await;
    log_outcome(&result);
    result.map(|stored| ChunkdReply::Shard {
        encoding: stored.encoding,
        chunk_len: stored.chunk_len,
        data: stored.data,
    })
}

#[instrument(skip_all, fields(shard = %shard))]
async fn delete(store: &Arc<ShardStore>, shard: ShardId) -> ChunkdResponse {
    let result = store.delete(shard).await;
    log_outcome(&result);
    result.map(|existed| ChunkdReply::Deleted { existed })
}

/// Failures of the disk are worth an operator's attention; a client's mistakes are not.
fn log_outcome<T>(result: &Result<T, ChunkdError>) {
    match result {
        Ok(_) => debug!("ok"),
        Err(e @ (ChunkdError::Io(_) | ChunkdError::NoSpace(_))) => warn!("{e}"),
        Err(e) => debug!("{e}"),
    }
}

#[cfg(test)]
mod tests;
