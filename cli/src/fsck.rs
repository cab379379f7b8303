//! `shardfs fsck`: metad checks its metadata invariants; with `verify_data`, every chunk's
//! shards are read back and verified on their chunkds.

use std::sync::Arc;

use indicatif::ProgressBar;
use serde::Serialize;
use shardfs_chunk_api::client::ChunkClientPool;
use shardfs_chunk_api::{ShardId, codec};
use shardfs_meta_api::MetaClient;
use shardfs_meta_api::proto::{ChunkLocation, FsckReport};
use shardfs_rpc::ClientOptions;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Chunks asked for per catalogue page.
const PAGE: u32 = 1000;
/// Chunks verified at once.
const PARALLEL_CHUNKS: usize = 16;

/// A chunk that is not at full redundancy.
#[derive(Clone, Debug, Serialize)]
pub struct ChunkHealth {
    pub chunk: String,
    /// Shards that read back and verified.
    pub verified: usize,
    /// Whether the verified shards can rebuild the chunk.
    pub readable: bool,
    /// Shards the class has.
    pub total: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct DataReport {
    pub chunks: u64,
    /// Chunks missing verified shards, with enough left to rebuild them.
    pub degraded: Vec<ChunkHealth>,
    /// Chunks whose verified shards cannot rebuild them: their data cannot be read.
    pub unreadable: Vec<ChunkHealth>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub metadata: FsckReport,
    pub data: Option<DataReport>,
}

impl Report {
    /// fsck(8) exit status: 0 clean, 1 problems all repaired, 4 problems left.
    pub fn exit_code(&self) -> u8 {
        let data_bad =
            self.data.as_ref().is_some_and(|d| !d.degraded.is_empty() || !d.unreadable.is_empty());
        let left = self.metadata.problems.len() as u64 > self.metadata.repaired;
        if left || data_bad {
            4
        } else if self.metadata.repaired > 0 {
            1
        } else {
            0
        }
    }
}

/// Runs the checks; `progress` shows a bar while chunks are verified.
pub async fn run(
    meta: &MetaClient,
    rpc: ClientOptions,
    repair: bool,
    verify_data: bool,
    progress: bool,
) -> anyhow::Result<Report> {
    let metadata = meta.fsck(repair).await?;
    let data = if verify_data {
        let bar = crate::progress::bar(metadata.chunks, "chunks verified", progress);
        let report = verify_chunks(meta, rpc, &bar).await?;
        bar.finish_and_clear();
        Some(report)
    } else {
        None
    };
    Ok(Report { metadata, data })
}

async fn verify_chunks(
    meta: &MetaClient,
    rpc: ClientOptions,
    bar: &ProgressBar,
) -> anyhow::Result<DataReport> {
    let pool = Arc::new(ChunkClientPool::new(rpc));
    let limit = Arc::new(Semaphore::new(PARALLEL_CHUNKS));
    let mut report = DataReport::default();
    let mut after = None;
    loop {
        let page = meta.list_chunks(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.chunk);
        let mut checks = JoinSet::new();
        // Inline chunks live in metad's database; its fsck verified them.
        for location in page.into_iter().filter(|l| !l.is_inline()) {
            let permit = limit.clone().acquire_owned().await?;
            let pool = pool.clone();
            checks.spawn(async move {
                let health = verify_chunk(&pool, &location).await;
                drop(permit);
                health
            });
        }
        while let Some(health) = checks.join_next().await {
            let health = health?;
            report.chunks += 1;
            bar.inc(1);
            if !health.readable {
                report.unreadable.push(health);
            } else if health.verified < health.total {
                report.degraded.push(health);
            }
        }
    }
    Ok(report)
}

/// Reads every shard of a chunk; each chunkd verifies its shard's checksum on read.
async fn verify_chunk(pool: &ChunkClientPool, location: &ChunkLocation) -> ChunkHealth {
    let mut reads = JoinSet::new();
    let encoding = location.encoding;
    for place in &location.shards {
        let client = pool.get(&place.addr, &place.chunkd);
        let shard = ShardId { chunk: location.chunk, index: place.index };
        let expected = (encoding, location.len);
        let position = codec::position(place.index);
        reads.spawn(async move {
            let got = client.get(shard).await;
            (position, matches!(got, Ok((encoding, len, _)) if (encoding, len) == expected))
        });
    }
    let mut good = Vec::new();
    while let Some(read) = reads.join_next().await {
        if let Ok((position, true)) = read {
            good.push(position);
        }
    }
    let lost: Vec<usize> = (0..encoding.total()).filter(|p| !good.contains(p)).collect();
    ChunkHealth {
        chunk: location.chunk.to_hex(),
        verified: good.len(),
        readable: encoding.survives(&lost),
        total: encoding.total(),
    }
}

/// The human-readable report.
pub fn print(report: &Report) {
    let m = &report.metadata;
    println!("{} inodes, {} entries, {} chunks", m.inodes, m.entries, m.chunks);
    for problem in &m.problems {
        println!("problem: {problem}");
    }
    if !m.problems.is_empty() {
        println!("{} problems, {} repaired", m.problems.len(), m.repaired);
    }
    if let Some(data) = &report.data {
        for chunk in &data.unreadable {
            println!(
                "unreadable: chunk {} has {} of its {} shards, too few to rebuild it",
                chunk.chunk, chunk.verified, chunk.total
            );
        }
        for chunk in &data.degraded {
            println!(
                "degraded: chunk {} has {} of {} shards",
                chunk.chunk, chunk.verified, chunk.total
            );
        }
        println!(
            "{} chunks verified: {} degraded, {} unreadable",
            data.chunks,
            data.degraded.len(),
            data.unreadable.len()
        );
    }
    if report.exit_code() == 0 {
        println!("clean");
    }
}
