//! `shardfs info PATH`: where a file's bytes are: its extents, the chunks they use, and each
//! chunk's shards with the chunkd holding them and whether they are healthy.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;
use shardfs_fs::mountinfo;
use shardfs_meta_api::MetaClient;

#[derive(Debug, Serialize)]
pub struct FileInfo {
    pub path: String,
    pub ino: u64,
    pub size: u64,
    pub extents: Vec<ExtentInfo>,
    pub chunks: Vec<ChunkInfo>,
}

#[derive(Debug, Serialize)]
pub struct ExtentInfo {
    pub offset: u64,
    pub len: u64,
    pub chunk: String,
    pub chunk_offset: u64,
}

#[derive(Debug, Serialize)]
pub struct ChunkInfo {
    pub chunk: String,
    pub len: u64,
    /// Its storage class: `replicas(3)`, `rs(4,2)`, `lrc(6,2,2)`, or `inline` for a small
    /// chunk kept in metad's database.
    pub class: String,
    pub shards: Vec<ShardInfo>,
}

#[derive(Debug, Serialize)]
pub struct ShardInfo {
    pub index: u8,
    pub chunkd: String,
    pub addr: String,
    pub healthy: bool,
}

/// The shardfs mount holding `path`, if it is on one: its mount point and its source in
/// /proc/self/mountinfo (the metad address it was mounted from).
pub fn mount_of(path: &Path) -> anyhow::Result<Option<(PathBuf, String)>> {
    let path = path.canonicalize().with_context(|| format!("cannot resolve {}", path.display()))?;
    let ours = mountinfo::mounts()?
        .into_iter()
        .filter(|m| m.kind == "fuse.shardfs" && path.starts_with(&m.point))
        .max_by_key(|m| m.point.len());
    Ok(ours.map(|m| (PathBuf::from(m.point), m.source)))
}

/// The inode number of the regular file at `path`.
pub fn file_ino(path: &Path) -> anyhow::Result<u64> {
    let stat =
        std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    if !stat.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok(std::os::unix::fs::MetadataExt::ino(&stat))
}

/// What metad says about file `ino` (at `path` on a mount of `meta`'s volume).
pub async fn fetch(meta: &MetaClient, path: &Path, ino: u64) -> anyhow::Result<FileInfo> {
    let layout = meta.layout(ino).await?;
    let mut chunks = Vec::new();
    for location in &layout.chunks {
        let status = meta.chunk_status(location.chunk).await?;
        let healthy = |index: u8| {
            status
                .as_ref()
                .and_then(|s| s.shards.iter().find(|h| h.index == index))
                .is_some_and(|h| h.healthy)
        };
        chunks.push(ChunkInfo {
            chunk: location.chunk.to_hex(),
            len: location.len,
            class: location.encoding.to_string(),
            shards: location
                .shards
                .iter()
                .map(|s| ShardInfo {
                    index: s.index,
                    chunkd: s.chunkd.clone(),
                    addr: s.addr.clone(),
                    healthy: healthy(s.index),
                })
                .collect(),
        });
    }
    let extents = layout
        .extents
        .iter()
        .map(|e| ExtentInfo {
            offset: e.offset,
            len: e.len,
            chunk: e.chunk.to_hex(),
            chunk_offset: e.chunk_offset,
        })
        .collect();
    Ok(FileInfo { path: path.display().to_string(), ino, size: layout.attr.size, extents, chunks })
}

pub fn print(info: &FileInfo) {
    println!("{}: inode {}, {} bytes", info.path, info.ino, info.size);
    println!("extents:");
    for e in &info.extents {
        let end = e.offset + e.len;
        println!("  {:>12}..{:<12} chunk {} at {}", e.offset, end, &e.chunk[..16], e.chunk_offset);
    }
    println!("chunks:");
    for c in &info.chunks {
        println!("  {} {} bytes, {}", c.chunk, c.len, c.class);
        for s in &c.shards {
            let health = if s.healthy { "healthy" } else { "UNHEALTHY" };
            println!("    shard {:>2} on {} ({}) {health}", s.index, s.chunkd, s.addr);
        }
    }
}
