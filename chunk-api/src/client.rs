//! The typed client of the chunkd protocol, and a pool of them keyed by chunkd.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shardfs_rpc::{ClientOptions, Service};

use crate::chunk_id::ShardId;
use crate::codec::Encoding;
use crate::hash_tree;
use crate::proto::{
    ChunkdCall, ChunkdError, ChunkdReply, ChunkdRequest, ChunkdResponse, ChunkdStat,
};
use shardfs_rpc::sync::Lock as _;

#[derive(Debug, thiserror::Error)]
pub enum ChunkClientError {
    /// The chunkd could not be reached or the connection failed.
    #[error(transparent)]
    Rpc(#[from] shardfs_rpc::Error),
    /// The chunkd answered with an error.
    #[error(transparent)]
    Chunkd(#[from] ChunkdError),
    /// The chunkd answered with a reply of the wrong kind: it is broken.
    #[error("chunkd sent a reply that does not match the request")]
    UnexpectedReply,
}

impl ChunkClientError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ChunkClientError::Chunkd(ChunkdError::NotFound(_)))
    }

    /// Whether another chunkd than the one meant answered at its address.
    pub fn is_wrong_chunkd(&self) -> bool {
        matches!(self, ChunkClientError::Chunkd(ChunkdError::WrongChunkd { .. }))
    }
}

/// A client for one chunkd, named by its id and reached at an address. Calls may run
/// concurrently over its one connection, which is re-opened on demand after a failure. A
/// chunkd refuses calls meant for another (`ChunkdError::WrongChunkd`).
pub struct ChunkClient {
    rpc: shardfs_rpc::Client,
    chunkd: String,
}

impl ChunkClient {
    pub fn new(
        addr: impl Into<String>,
        chunkd: impl Into<String>,
        options: ClientOptions,
    ) -> ChunkClient {
        let rpc = shardfs_rpc::Client::new(addr, Service::Chunkd, options);
        ChunkClient { rpc, chunkd: chunkd.into() }
    }

    pub fn addr(&self) -> &str {
        self.rpc.addr()
    }

    /// Stores one shard durably. `tree` is the chunk's hash tree (`hash_tree::build`); it
    /// goes with data shards only.
    pub async fn put(
        &self,
        shard: ShardId,
        encoding: Encoding,
        chunk_len: u64,
        data: Vec<u8>,
        tree: &[u8],
    ) -> Result<(), ChunkClientError> {
        // Shards are at most a few MiB and BLAKE3 runs at GB/s, so hashing inline costs
        // about a millisecond: not worth a trip to the blocking pool.
        let checksum = *blake3::hash(&data).as_bytes();
        let tree = hash_tree::for_shard(tree, shard.index, encoding).to_vec();
        let put = ChunkdRequest::Put { shard, encoding, chunk_len, checksum, data, tree };
        match self.call(put).await? {
            ChunkdReply::Stored => Ok(()),
            _ => Err(ChunkClientError::UnexpectedReply),
        }
    }

    /// Bytes `[offset, offset + len)` of a data shard, and the chunk's tree if `with_tree`
    /// (else empty). Neither is verified: see `hash_tree`.
    pub async fn get_range(
        &self,
        shard: ShardId,
        offset: u64,
        len: u32,
        with_tree: bool,
    ) -> Result<(Vec<u8>, Vec<u8>), ChunkClientError> {
        match self.call(ChunkdRequest::GetRange { shard, offset, len, with_tree }).await? {
            // A chunkd answers exactly the bytes asked for, or an error.
            ChunkdReply::Range { data, tree }
                if data.len() == len as usize && (with_tree || tree.is_empty()) =>
            {
                Ok((data, tree))
            }
            _ => Err(ChunkClientError::UnexpectedReply),
        }
    }

    /// Reads one shard, verified by the chunkd: `(encoding, chunk_len, data)`.
    pub async fn get(&self, shard: ShardId) -> Result<(Encoding, u64, Vec<u8>), ChunkClientError> {
        match self.call(ChunkdRequest::Get { shard }).await? {
            ChunkdReply::Shard { encoding, chunk_len, data } => Ok((encoding, chunk_len, data)),
            _ => Err(ChunkClientError::UnexpectedReply),
        }
    }

    /// Removes one shard; `Ok(false)` if the chunkd did not have it.
    pub async fn delete(&self, shard: ShardId) -> Result<bool, ChunkClientError> {
        match self.call(ChunkdRequest::Delete { shard }).await? {
            ChunkdReply::Deleted { existed } => Ok(existed),
            _ => Err(ChunkClientError::UnexpectedReply),
        }
    }

    /// Up to `limit` shards after `after`, in order. The chunkd may return fewer than asked
    /// (it caps pages); only an empty page marks the end.
    pub async fn list(
        &self,
        after: Option<ShardId>,
        limit: u32,
    ) -> Result<Vec<ShardId>, ChunkClientError> {
        match self.call(ChunkdRequest::List { after, limit }).await? {
            ChunkdReply::Listed { shards } => Ok(shards),
            _ => Err(ChunkClientError::UnexpectedReply),
        }
    }

    pub async fn stat(&self) -> Result<ChunkdStat, ChunkClientError> {
        match self.call(ChunkdRequest::Stat).await? {
            ChunkdReply::Stat(stat) => Ok(stat),
            _ => Err(ChunkClientError::UnexpectedReply),
        }
    }

    /// Starts a scrub pass now; answers the `scrub_passes` count at which it has ended.
    pub async fn scrub(&self) -> Result<u64, ChunkClientError> {
        match self.call(ChunkdRequest::Scrub).await? {
            ChunkdReply::Scrubbing { done_after } => Ok(done_after),
            _ => Err(ChunkClientError::UnexpectedReply),
        }
    }

    async fn call(&self, request: ChunkdRequest) -> Result<ChunkdReply, ChunkClientError> {
        let call = ChunkdCall { chunkd: self.chunkd.clone(), request };
        let response: ChunkdResponse = self.rpc.call(&call).await?;
        Ok(response?)
    }
}

/// One `ChunkClient` per chunkd and address, created on first use and shared after that.
pub struct ChunkClientPool {
    options: ClientOptions,
    clients: Mutex<HashMap<(String, String), Arc<ChunkClient>>>,
}

impl ChunkClientPool {
    pub fn new(options: ClientOptions) -> ChunkClientPool {
        ChunkClientPool { options, clients: Mutex::new(HashMap::new()) }
    }

    /// The client for chunkd `chunkd` at `addr`. A chunkd that moves gets a new client, and
    /// its old one leaves the pool, as does that of a chunkd that was at `addr` before: the
    /// pool holds one client per chunkd and address in use, however often they move.
    pub fn get(&self, addr: &str, chunkd: &str) -> Arc<ChunkClient> {
        let mut clients = self.clients.locked();
        let key = (addr.to_owned(), chunkd.to_owned());
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        clients.retain(|(a, c), _| a != addr && c != chunkd);
        let client = Arc::new(ChunkClient::new(addr, chunkd, self.options));
        clients.insert(key, client.clone());
        client
    }
}

impl Default for ChunkClientPool {
    fn default() -> Self {
        ChunkClientPool::new(ClientOptions::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_keeps_one_client_per_chunkd_and_address() {
        let pool = ChunkClientPool::default();
        let first = pool.get("127.0.0.1:1", "a");
        assert!(Arc::ptr_eq(&first, &pool.get("127.0.0.1:1", "a")));
        // Chunkd a restarts on another port, then chunkd b takes a's old port.
        pool.get("127.0.0.1:2", "a");
        pool.get("127.0.0.1:1", "b");
        for restart in 3..100 {
            pool.get(&format!("127.0.0.1:{restart}"), "a");
        }
        let held = pool.clients.locked().len();
        assert_eq!(held, 2, "one client for a (its latest address), one for b");
    }
}
