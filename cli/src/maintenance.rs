//! Looking after a cluster: scrub, garbage collection, draining a chunkd, and backing up
//! and restoring metad's database.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use shardfs_rpc::ClientOptions;

use crate::args::{MetadCommands, SecretArgs};
use crate::runtime;

/// Fetches a report from metad and prints it, as text or as JSON.
pub(crate) fn report<T: serde::Serialize>(
    metad: &str,
    secret: &SecretArgs,
    json: bool,
    fetch: impl AsyncFnOnce(&shardfs_meta_api::MetaClient) -> anyhow::Result<T>,
    print: fn(&T),
) -> anyhow::Result<ExitCode> {
    let meta = shardfs_meta_api::MetaClient::new(metad, secret.rpc(None)?);
    let report = runtime()?
        .block_on(fetch(&meta))
        .with_context(|| format!("cannot reach metad at {metad}"))?;
    match json {
        true => println!("{}", serde_json::to_string_pretty(&report)?),
        false => print(&report),
    }
    Ok(ExitCode::SUCCESS)
}

/// What one chunkd's scrub pass found.
#[derive(serde::Serialize)]
pub(crate) struct ScrubReport {
    pub(crate) chunkd: String,
    pub(crate) shards: u64,
    pub(crate) corrupt: u64,
}

/// Asks every chunkd that is up for a scrub pass and waits until each has ended one.
pub(crate) async fn scrub(
    meta: &shardfs_meta_api::MetaClient,
    rpc: ClientOptions,
    progress: bool,
) -> anyhow::Result<Vec<ScrubReport>> {
    let pool = shardfs_chunk_api::client::ChunkClientPool::new(rpc);
    let mut waiting = Vec::new();
    for chunkd in meta.chunkds().await?.into_iter().filter(|c| c.up) {
        let client = pool.get(&chunkd.addr, &chunkd.id);
        let done_after = client.scrub().await.with_context(|| format!("chunkd {}", chunkd.id))?;
        waiting.push((chunkd.id, client, done_after));
    }
    let bar = crate::progress::bar(waiting.len() as u64, "chunkds scrubbed", progress);
    let mut reports = Vec::new();
    for (id, client, done_after) in waiting {
        let stat = loop {
            let stat = client.stat().await.with_context(|| format!("chunkd {id}"))?;
            if stat.scrub_passes >= done_after {
                break stat;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        bar.inc(1);
        let (shards, corrupt) = (stat.last_scrub_shards, stat.last_scrub_corrupt);
        reports.push(ScrubReport { chunkd: id, shards, corrupt });
    }
    bar.finish_and_clear();
    Ok(reports)
}

/// What one `shardfs gc` pass deleted.
#[derive(serde::Serialize)]
pub(crate) struct GcReport {
    pub(crate) chunks_collected: u64,
    pub(crate) orphans_deleted: u64,
    pub(crate) sweeps_aborted: u64,
}

/// Asks metad for a garbage-collection pass and waits until it has ended.
pub(crate) async fn gc(
    meta: &shardfs_meta_api::MetaClient,
    progress: bool,
) -> anyhow::Result<GcReport> {
    let before = meta.workers().await?;
    let done_after = meta.collect().await?;
    let spinner = crate::progress::bar(0, "collecting garbage", progress);
    let after = loop {
        let now = meta.workers().await?;
        if now.gc_passes >= done_after {
            break now;
        }
        spinner.tick();
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    spinner.finish_and_clear();
    Ok(GcReport {
        chunks_collected: after.chunks_collected - before.chunks_collected,
        orphans_deleted: after.orphans_deleted - before.orphans_deleted,
        sweeps_aborted: after.sweeps_aborted - before.sweeps_aborted,
    })
}

/// How long a drain may go without moving a shard before `drain` gives up waiting.
pub(crate) const DRAIN_STALL: Duration = Duration::from_secs(120);

/// Starts (or undoes) a drain and, if `wait`, polls until no shard is placed on the chunkd.
/// Returns the shards still placed there.
pub(crate) async fn drain(
    meta: &shardfs_meta_api::MetaClient,
    id: &str,
    undo: bool,
    wait: bool,
    progress: bool,
) -> anyhow::Result<u64> {
    let mut remaining = meta.drain(id, undo).await?;
    let bar = crate::progress::bar(remaining, "shards moved", progress && wait);
    let mut moved_at = std::time::Instant::now();
    while wait && remaining > 0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Asking again is harmless: the drain is already on.
        let now = meta.drain(id, false).await?;
        if now < remaining {
            moved_at = std::time::Instant::now();
        } else if moved_at.elapsed() > DRAIN_STALL {
            bail!(
                "no shard moved in {DRAIN_STALL:?}, {now} remain: repair needs k+m other \
                 chunkds up with room (see shardfs status); the drain stays on"
            );
        }
        remaining = now;
        bar.set_position(bar.length().unwrap_or(0).saturating_sub(remaining));
    }
    bar.finish_and_clear();
    Ok(remaining)
}

/// `shardfs metad ...`.
pub(crate) fn metad_command(command: MetadCommands) -> anyhow::Result<ExitCode> {
    use shardfs_metad::backup;
    use shardfs_metad::replication::network::Request;
    match command {
        MetadCommands::Add { addr, learner, group } => {
            let (options, json) = (group.secret.rpc(None)?, group.json);
            let add = || Request::Add { addr: addr.clone(), voter: !learner };
            return runtime()?.block_on(crate::group::change(&group.metad, add, options, json));
        }
        MetadCommands::Remove { addr, group } => {
            let (options, json) = (group.secret.rpc(None)?, group.json);
            let remove = || Request::Remove { addr: addr.clone() };
            return runtime()?.block_on(crate::group::change(&group.metad, remove, options, json));
        }
        MetadCommands::Promote { addr, json, secret } => {
            let options = secret.rpc(None)?;
            return runtime()?.block_on(crate::group::promote(&addr, options, json));
        }
        MetadCommands::Members { group } => {
            let (options, json) = (group.secret.rpc(None)?, group.json);
            return runtime()?.block_on(crate::group::members(&group.metad, options, json));
        }
        MetadCommands::Backup { data, file, json } => {
            let bar = crate::progress::bar(0, "pages", !json && std::io::stderr().is_terminal());
            let pages = backup::backup(&data, &file, |p| {
                bar.set_length(p.pages_total);
                bar.set_position(p.pages_done);
            })?;
            bar.finish_and_clear();
            let bytes = std::fs::metadata(&file)?.len();
            if json {
                let out = serde_json::json!({ "file": file, "pages": pages, "bytes": bytes });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "backed up {} ({pages} pages, {bytes} bytes) to {}",
                    data.display(),
                    file.display()
                );
            }
        }
        MetadCommands::Restore { data, file, json } => {
            let kept = backup::restore(&data, &file)?;
            if json {
                let out = serde_json::json!({ "data": data, "restored": file, "kept": kept });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("restored {} into {}", file.display(), data.display());
                if let Some(kept) = kept {
                    println!("the database it replaced is kept as {}", kept.display());
                }
                println!("start metad, then check with: shardfs fsck METAD --verify-data");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
