//! `shardfs status`: the chunkds and their state, the catalogue, and the background workers.

use serde::Serialize;
use shardfs_metad::MetaClient;
use shardfs_metad::proto::{CatalogueStats, ChunkdStatus, WorkerStatus};

#[derive(Debug, Serialize)]
pub struct Status {
    pub metad: String,
    pub chunkds: Vec<ChunkdStatus>,
    pub catalogue: CatalogueStats,
    pub workers: WorkerStatus,
}

pub async fn fetch(meta: &MetaClient) -> anyhow::Result<Status> {
    Ok(Status {
        metad: meta.addr().to_string(),
        chunkds: meta.chunkds().await?,
        catalogue: meta.catalogue_stats().await?,
        workers: meta.workers().await?,
    })
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

pub fn print(status: &Status) {
    println!("metad {}", status.metad);
    println!(
        "{:<34} {:<22} {:<8} {:<7} {:>9} {:>9} {:>9} {:>8}",
        "chunkd", "address", "zone", "state", "size GiB", "free GiB", "used GiB", "shards"
    );
    for c in &status.chunkds {
        let state = match (c.up, c.suspect, c.draining) {
            (true, false, false) => "up",
            (true, false, true) => "drain",
            (true, true, _) => "suspect",
            (false, _, _) => "down",
        };
        println!(
            "{:<34} {:<22} {:<8} {:<7} {:>9.1} {:>9.1} {:>9.2} {:>8}",
            c.id,
            c.addr,
            c.zone.as_deref().unwrap_or("-"),
            state,
            gib(c.capacity_bytes),
            gib(c.free_bytes),
            gib(c.used_bytes),
            c.shard_count
        );
    }
    let cat = &status.catalogue;
    println!(
        "{} chunks, {:.2} GiB of data, {} degraded chunks, {} unhealthy shards",
        cat.chunks,
        gib(cat.chunk_bytes),
        cat.degraded_chunks,
        cat.unhealthy_shards
    );
    let w = &status.workers;
    println!(
        "repair: {} shards rebuilt, {} chunks failed, backlog {}; gc: {} chunks collected, {} orphans deleted, {} sweeps aborted",
        w.shards_rebuilt,
        w.chunks_failed_repair,
        w.repair_backlog,
        w.chunks_collected,
        w.orphans_deleted,
        w.sweeps_aborted
    );
    println!(
        "mounts: {} sessions, {} requests; leases: {} held, {} granted, {} recalled, {} revoked",
        w.sessions,
        w.mount_requests,
        w.leases_held,
        w.leases_granted,
        w.leases_recalled,
        w.leases_revoked
    );
}
