//! `shardfs status`: the chunkds and their state, the catalogue, and the background workers.

use serde::Serialize;
use shardfs_chunk_api::proto::VolumeStat;
use shardfs_meta_api::MetaClient;
use shardfs_meta_api::proto::{CatalogueStats, ChunkdStatus, ClassUsage, WorkerStatus};
use shardfs_metad::replication::network::{self, ReplicaState, Reply, Request};
use shardfs_rpc::ClientOptions;

#[derive(Debug, Serialize)]
pub struct Status {
    pub metad: String,
    /// The replicas of a metad group (none for a lone metad).
    pub replicas: Vec<Replica>,
    pub chunkds: Vec<ChunkdStatus>,
    pub catalogue: CatalogueStats,
    pub workers: WorkerStatus,
}

/// `shardfs df`: the volume's size and use, as `df` shows a mount's.
#[derive(Debug, Serialize)]
pub struct Df {
    pub metad: String,
    /// The class new data is written in, and the one it moves to when cold, as `rs(4,2)`.
    pub hot_class: String,
    pub cold_class: String,
    /// Usable bytes: the up chunkds' disks, scaled by the cold class's overhead.
    pub size_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    /// Bytes of file data stored (each distinct chunk once).
    pub data_bytes: u64,
    /// The disks' own figures, before any class's overhead.
    pub raw_size_bytes: u64,
    pub raw_free_bytes: u64,
    pub inodes: u64,
    pub chunkds_up: usize,
    /// What each storage class holds, and the raw bytes all shards take per byte of data.
    pub classes: Vec<ClassUsage>,
    pub overhead: f64,
    /// Chunks waiting for the lifecycle to move them (at its last complete scan).
    pub lifecycle_backlog: u64,
}

pub async fn fetch_df(meta: &MetaClient) -> anyhow::Result<Df> {
    let volume = meta.volume().await?;
    let raw = meta.stat_fs().await?;
    let usable = raw.usable(volume.cold);
    let catalogue = meta.catalogue_stats().await?;
    let (bytes, raw_bytes) = (catalogue.classes.iter())
        .fold((0, 0), |(b, r), class| (b + class.bytes, r + class.raw_bytes));
    Ok(Df {
        metad: meta.addr().to_string(),
        hot_class: volume.hot.to_string(),
        cold_class: volume.cold.to_string(),
        size_bytes: usable.capacity_bytes,
        free_bytes: usable.free_bytes,
        used_bytes: usable.capacity_bytes.saturating_sub(usable.free_bytes),
        data_bytes: catalogue.chunk_bytes,
        raw_size_bytes: raw.capacity_bytes,
        raw_free_bytes: raw.free_bytes,
        inodes: raw.inodes,
        chunkds_up: meta.chunkds().await?.iter().filter(|c| c.up).count(),
        classes: catalogue.classes,
        overhead: if bytes == 0 { 0.0 } else { raw_bytes as f64 / bytes as f64 },
        lifecycle_backlog: meta.workers().await?.lifecycle_backlog,
    })
}

pub fn print_df(df: &Df) {
    println!(
        "{:<22} {:<8} {:>10} {:>10} {:>10} {:>5} {:>10} {:>8}",
        "metad", "class", "size GiB", "used GiB", "avail GiB", "use%", "data GiB", "inodes"
    );
    let percent = (df.used_bytes * 100).checked_div(df.size_bytes).unwrap_or(0);
    println!(
        "{:<22} {:<8} {:>10.1} {:>10.1} {:>10.1} {:>4}% {:>10.2} {:>8}",
        df.metad,
        match df.hot_class == df.cold_class {
            true => df.hot_class.clone(),
            false => format!("{}>{}", df.hot_class, df.cold_class),
        },
        gib(df.size_bytes),
        gib(df.used_bytes),
        gib(df.free_bytes),
        percent,
        gib(df.data_bytes),
        df.inodes
    );
    println!(
        "{} chunkds up; raw {:.1} GiB, {:.1} GiB free",
        df.chunkds_up,
        gib(df.raw_size_bytes),
        gib(df.raw_free_bytes)
    );
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>9}",
        "class", "chunks", "data GiB", "raw GiB", "overhead"
    );
    for class in &df.classes {
        let overhead = class.raw_bytes as f64 / class.bytes.max(1) as f64;
        println!(
            "{:<12} {:>10} {:>10.2} {:>10.2} {:>8.2}x",
            class.class,
            class.chunks,
            gib(class.bytes),
            gib(class.raw_bytes),
            overhead
        );
    }
    println!(
        "effective overhead {:.2}x; {} chunks waiting to move to their resting class",
        df.overhead, df.lifecycle_backlog
    );
}

/// One replica of a metad group, as it reports itself.
#[derive(Debug, Serialize)]
pub struct Replica {
    pub addr: String,
    /// A voter or a learner, as the group's newest membership any replica reported says
    /// (`None`: no replica lists it, e.g. one removed, or not added yet).
    pub voter: Option<bool>,
    /// `None`: it did not answer (`error` says why).
    pub state: Option<ReplicaState>,
    /// Log entries it has yet to apply that the leader has.
    pub lag: Option<u64>,
    /// Milliseconds since it last answered the leader.
    pub last_contact_ms: Option<u64>,
    pub error: Option<String>,
}

/// Asks each replica of `meta`'s group for its role and progress (none for a lone metad).
async fn replicas(meta: &MetaClient) -> Vec<Replica> {
    let addrs = meta.replicas();
    if addrs.len() < 2 {
        return Vec::new();
    }
    group(&addrs, meta.options()).await
}

/// Asks each replica at `addrs`, and each other member they name, for its role and
/// progress: the leader need not answer.
pub async fn group(addrs: &[String], options: ClientOptions) -> Vec<Replica> {
    let mut replicas: Vec<Replica> = Vec::new();
    let mut queue: Vec<String> = addrs.to_vec();
    while let Some(addr) = queue.pop() {
        if replicas.iter().any(|r| r.addr == addr) {
            continue;
        }
        let answer = network::ask(&addr, Request::Status, options, REPLICA_TIMEOUT).await;
        let (state, error) = match answer {
            Ok(Ok(Reply::Status(state))) => (Some(state), None),
            Ok(Ok(_)) => (None, Some("a reply of the wrong kind".to_string())),
            Ok(Err(refusal)) => (None, Some(refusal.to_string())),
            Err(e) => (None, Some(e.to_string())),
        };
        if let Some(state) = &state {
            queue.extend(state.members.iter().map(|m| m.addr.clone()));
        }
        replicas.push(Replica {
            addr,
            voter: None,
            state,
            lag: None,
            last_contact_ms: None,
            error,
        });
    }
    replicas.sort_by(|a, b| a.addr.cmp(&b.addr));
    // The leader's view, else the newest membership any replica reported.
    let states = || replicas.iter().filter_map(|r| r.state.as_ref());
    let leader = states().find(|s| s.role == "leader").cloned();
    let newest = leader.clone().or_else(|| states().max_by_key(|s| s.last_log_index).cloned());
    for replica in &mut replicas {
        let member = newest.iter().flat_map(|s| &s.members).find(|m| m.addr == replica.addr);
        replica.voter = member.map(|m| m.voter);
        let Some(leader) = &leader else { continue };
        let applied = replica.state.as_ref().map(|s| s.applied_index.unwrap_or(0));
        replica.lag = leader.last_log_index.zip(applied).map(|(log, a)| log.saturating_sub(a));
        let follower = leader.followers.iter().find(|f| f.addr == replica.addr);
        replica.last_contact_ms = follower.and_then(|f| f.millis_since_contact);
    }
    replicas
}

/// Prints the replicas of a group, one a line.
pub fn print_replicas(replicas: &[Replica]) {
    println!(
        "{:<22} {:<10} {:<8} {:>6} {:>10} {:>10} {:>6} {:>10} {:>13}",
        "replica",
        "role",
        "member",
        "term",
        "last log",
        "applied",
        "lag",
        "snapshot",
        "last contact"
    );
    for r in replicas {
        let member = match r.voter {
            Some(true) => "voter",
            Some(false) => "learner",
            None => "-",
        };
        let Some(s) = &r.state else {
            let error = r.error.as_deref().unwrap_or("-");
            println!("{:<22} {:<10} {member:<8} {error}", r.addr, "unreachable");
            continue;
        };
        let index = |i: Option<u64>| i.map_or("-".to_string(), |i| i.to_string());
        let contact = match (s.role.as_str(), r.last_contact_ms) {
            ("leader", _) => "(leader)".to_string(),
            (_, Some(ms)) => format!("{ms} ms ago"),
            (_, None) => "-".to_string(),
        };
        println!(
            "{:<22} {:<10} {member:<8} {:>6} {:>10} {:>10} {:>6} {:>10} {:>13}",
            r.addr,
            s.role,
            s.term,
            index(s.last_log_index),
            index(s.applied_index),
            index(r.lag),
            index(s.snapshot_index),
            contact
        );
    }
}

/// How long a replica has to say how it is.
const REPLICA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn fetch(meta: &MetaClient) -> anyhow::Result<Status> {
    let chunkds = meta.chunkds().await?;
    Ok(Status {
        // The leader, once a call has found it.
        metad: meta.addr().to_string(),
        replicas: replicas(meta).await,
        chunkds,
        catalogue: meta.catalogue_stats().await?,
        workers: meta.workers().await?,
    })
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

pub fn print(status: &Status) {
    println!("metad {}", status.metad);
    if !status.replicas.is_empty() {
        print_replicas(&status.replicas);
    }
    println!(
        "{:<34} {:<22} {:<8} {:<7} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7}",
        "chunkd",
        "address",
        "zone",
        "state",
        "size GiB",
        "free GiB",
        "used GiB",
        "shards",
        "scrubs",
        "corrupt"
    );
    for c in &status.chunkds {
        let state = match (c.up, c.suspect, c.draining, c.full) {
            (true, false, false, false) => "up",
            (true, false, false, true) => "full",
            (true, false, true, _) => "drain",
            (true, true, _, _) => "suspect",
            (false, _, _, _) => "down",
        };
        // Figures recorded before metad's restart by a chunkd not heard from since would
        // be stale: none are shown.
        let figures = if c.reported {
            format!(
                "{:>9.1} {:>9.1} {:>9.2} {:>8} {:>7} {:>7}",
                gib(c.capacity_bytes),
                gib(c.free_bytes),
                gib(c.used_bytes),
                c.shard_count,
                c.scrub_passes,
                c.quarantined
            )
        } else {
            format!("{:>9} {:>9} {:>9} {:>8} {:>7} {:>7}", "-", "-", "-", "-", "-", "-")
        };
        println!(
            "{:<34} {:<22} {:<8} {:<7} {figures}",
            c.id,
            c.addr,
            c.zone.as_deref().unwrap_or("-"),
            state,
        );
    }
    let reported = status.chunkds.iter().filter(|c| c.reported).map(|c| c.volumes);
    let volumes = reported.fold(VolumeStat::default(), |all, v| VolumeStat {
        count: all.count + v.count,
        bytes: all.bytes + v.bytes,
        dead_bytes: all.dead_bytes + v.dead_bytes,
        compacted: all.compacted + v.compacted,
        reclaimed_bytes: all.reclaimed_bytes + v.reclaimed_bytes,
    });
    println!(
        "volumes: {} files, {:.2} GiB of records, {:.2} GiB dead; compaction since the chunkds \
         started: {} volumes, {:.2} GiB freed",
        volumes.count,
        gib(volumes.bytes),
        gib(volumes.dead_bytes),
        volumes.compacted,
        gib(volumes.reclaimed_bytes)
    );
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
        "lifecycle: {} chunks moved ({:.2} GiB), {} moves failed, backlog {}",
        w.chunks_moved,
        gib(w.bytes_moved),
        w.chunks_failed_move,
        w.lifecycle_backlog
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
