//! Starting metad: open the store, load the registry, serve until shutdown. Shared by the
//! `shardfs-metad` binary and the embedded local cluster.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardfs_chunk_api::Encoding;
use shardfs_chunk_api::client::ChunkClientPool;
use shardfs_rpc::{ClusterKey, DaemonAuth, DaemonTls};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::gc::{self, GcConfig};
use crate::lifecycle::{self, LifecycleConfig};
use crate::members::Members;
use crate::repair::{self, RepairConfig};
use crate::server::MetadServer;
use crate::sessions::SessionLimits;
use crate::store::{Store, VolumeOverrides, VolumeSettings};

/// Chunk size of a new volume.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 * 1024 * 1024;
/// Class of a new volume's new data: three full copies, fast to write, read and repair.
pub const DEFAULT_HOT: Encoding = Encoding::Replicas { n: 3 };
/// Class data moves to once cold: 4 data + 2 parity shards, half the hot class's overhead.
pub const DEFAULT_COLD: Encoding = Encoding::Rs { k: 4, m: 2 };

/// The storage classes of new data, as `shardfs-metad` and `shardfs local` take them.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClassArgs {
    /// Class new data is written in: replicas(N), rs(K,M) or lrc(K,L,G) (default
    /// replicas(3) on a new volume).
    #[arg(long, value_name = "CLASS", conflicts_with_all = ["class", "k", "m"])]
    pub hot_class: Option<Encoding>,
    /// Class data moves to once it has not been written for the lifecycle age (default
    /// rs(4,2) on a new volume).
    #[arg(long, value_name = "CLASS", conflicts_with_all = ["class", "k", "m"])]
    pub cold_class: Option<Encoding>,
    /// One class for all data, hot and cold: nothing moves.
    #[arg(long, value_name = "CLASS", conflicts_with_all = ["k", "m"])]
    pub class: Option<Encoding>,
    /// Data shards per chunk: --k K --m M is --class rs(K,M).
    #[arg(long, requires = "m")]
    pub k: Option<u8>,
    /// Parity shards per chunk, with --k.
    #[arg(long, requires = "k")]
    pub m: Option<u8>,
}

impl ClassArgs {
    /// The hot and cold classes asked for (`None`: the volume's, or the defaults).
    pub fn classes(&self) -> anyhow::Result<(Option<Encoding>, Option<Encoding>)> {
        let one = match (self.class, self.k, self.m) {
            (Some(class), _, _) => Some(class),
            (None, Some(k), Some(m)) => Some(Encoding::rs(k, m)?),
            _ => None,
        };
        Ok((one.or(self.hot_class), one.or(self.cold_class)))
    }
}
/// Smallest and largest chunk sizes accepted.
pub const CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u64> = 4096..=64 * 1024 * 1024;

/// Threads metad's runtime may start for blocking work: its database requests run a few
/// at a time (`crate::fair`), but each hands its worker's place to a new thread, and on a
/// busy machine the runtime otherwise starts one for many of them rather than wait for an
/// idle one (350 were seen for 1,000 lock requests). Work past it waits for a thread.
pub const MAX_BLOCKING_THREADS: usize = 64;

#[derive(Clone)]
pub struct MetadConfig {
    /// Directory holding the SQLite database.
    pub data: PathBuf,
    /// The cluster secret every connection proves; created (mode 0600) if missing.
    pub secret_file: PathBuf,
    /// Classes and chunk size for data written from now on; `None` keeps the volume's.
    pub volume: VolumeOverrides,
    /// A chunkd silent for longer than this is down: it gets no new shards.
    pub down_after: Duration,
    /// Rebuilding of lost and corrupt shards.
    pub repair: RepairConfig,
    /// Deletion of unreferenced chunks and orphan shards.
    pub gc: GcConfig,
    /// Moving chunks between storage classes.
    pub lifecycle: LifecycleConfig,
    /// How long a client session may stay silent before it expires (and its locks and open
    /// files are released), and how much it may hold.
    pub sessions: SessionLimits,
    /// TLS on every connection, in and out; `None`: plain TCP.
    pub tls: Option<DaemonTls>,
    /// Shards a new chunk needs placed for a write to go on; `None`: k+1.
    pub min_shards: Option<u8>,
    /// The addresses of every replica of the group this metad is one of; empty: it is
    /// alone, with no replicated log.
    pub replicas: Vec<String>,
    /// A replica snapshots its database after this many log entries, and cuts its log
    /// behind the snapshot ([`Timing`](crate::replication::group::Timing)).
    pub snapshot_every: u64,
}

/// Opens the metadata store in `config.data`, creating it on first use.
pub fn open(config: &MetadConfig) -> anyhow::Result<Arc<MetadServer>> {
    let data_lock = lock_data(config)?;
    let path = config.data.join(crate::backup::DATABASE);
    let store = Store::open(&path, config.volume, DEFAULTS)
        .with_context(|| format!("cannot open metadata database {}", path.display()))?;
    let auth = DaemonAuth { key: load_key(config)?, tls: config.tls };
    let server = server_over(Arc::new(store), config, auth)?;
    Ok(Arc::new(server.holding(data_lock)))
}

/// Settings of a new volume.
pub const DEFAULTS: VolumeSettings =
    VolumeSettings { hot: DEFAULT_HOT, cold: DEFAULT_COLD, chunk_size: DEFAULT_CHUNK_SIZE };

/// Creates `config.data` if missing and takes its lock, after checking the settings given.
pub(crate) fn lock_data(config: &MetadConfig) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("cannot create data directory {}", config.data.display()))?;
    let data_lock = crate::backup::lock_data_dir(&config.data)?;
    if let Some(size) = config.volume.chunk_size
        && !CHUNK_SIZE_RANGE.contains(&size)
    {
        anyhow::bail!(
            "chunk size {size} is outside {}..={} bytes",
            CHUNK_SIZE_RANGE.start(),
            CHUNK_SIZE_RANGE.end()
        );
    }
    Ok(data_lock)
}

/// The cluster secret, created if missing.
pub(crate) fn load_key(config: &MetadConfig) -> anyhow::Result<ClusterKey> {
    let new_secret = !config.secret_file.exists();
    let key = ClusterKey::load_or_create(&config.secret_file)?;
    if new_secret {
        info!(
            path = %config.secret_file.display(),
            "created the cluster secret: copy it (mode 0600) to every chunkd and client host"
        );
    }
    Ok(key)
}

/// A server answering for `store`, taking up the chunkds, sessions and locks it records:
/// at start-up, and on a replica each time it becomes the leader.
pub(crate) fn server_over(
    store: Arc<Store>,
    config: &MetadConfig,
    auth: DaemonAuth,
) -> anyhow::Result<MetadServer> {
    let members = Members::load(store.clone(), config.down_after)
        .context("cannot load the chunkd registry")?;
    let encoding = store.settings().hot;
    if let Some(min) = config.min_shards
        && !(encoding.needed()..=encoding.total()).contains(&usize::from(min))
    {
        anyhow::bail!(
            "--min-shards {min} is outside {}..={} for the volume's hot class {encoding}",
            encoding.needed(),
            encoding.total(),
        );
    }
    let holdings = store.holdings().context("cannot read what sessions held before")?;
    if !holdings.sessions.is_empty() {
        info!(
            sessions = holdings.sessions.len(),
            locks = holdings.locks.len(),
            "mount sessions from before may resume, with their locks"
        );
    }
    let server = MetadServer::new(store, members, (config.sessions, holdings), auth)
        .with_min_shards(config.min_shards);
    Ok(server)
}

/// Serves clients and chunkds on `listener`, and runs the background workers, until
/// `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    server: Arc<MetadServer>,
    workers: (RepairConfig, GcConfig, LifecycleConfig),
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(());
    let store = server.store.clone();
    let config = server.auth.server_config();
    let working = work(server.clone(), workers, until_stopped(stopped.clone()));
    let serving = shardfs_rpc::serve(listener, server, config, until_stopped(stopped));
    let stop_on_shutdown = async move {
        shutdown.await;
        drop(stop);
    };
    tokio::join!(stop_on_shutdown, serving, working);
    sync(&store).await;
}

/// Completes once `stopped`'s sender is gone.
pub(crate) async fn until_stopped(mut stopped: tokio::sync::watch::Receiver<()>) {
    let _ = stopped.changed().await;
}

/// Runs what metad does besides answering requests, until `stop` completes: repair,
/// garbage collection, the lifecycle, session expiry and housekeeping, and syncing the
/// database. A
/// replica's leader runs them while it leads.
pub(crate) async fn work(
    server: Arc<MetadServer>,
    (repair, gc, lifecycle): (RepairConfig, GcConfig, LifecycleConfig),
    stop: impl Future<Output = ()>,
) {
    let (stopping, stopped) = tokio::sync::watch::channel(());
    let chunkds = || Arc::new(ChunkClientPool::new(server.auth.client_options()));
    let repairing = repair::run(
        chunkds(),
        server.store.clone(),
        server.members.clone(),
        repair,
        server.repair.clone(),
        until_stopped(stopped.clone()),
    );
    let collecting = gc::run(
        chunkds(),
        server.store.clone(),
        server.members.clone(),
        server.intents.clone(),
        gc,
        server.gc.clone(),
        until_stopped(stopped.clone()),
    );
    let moving = lifecycle::run(
        chunkds(),
        (server.store.clone(), server.members.clone(), server.intents.clone()),
        lifecycle,
        server.lifecycle.clone(),
        until_stopped(stopped.clone()),
    );
    let expiring = {
        let (server, stopped) = (server.clone(), until_stopped(stopped));
        async move {
            let every_second = async {
                loop {
                    tokio::time::sleep(SYNC_INTERVAL).await;
                    server.expire_sessions();
                    housekeeping(&server).await;
                    server.forget_deleted();
                    sync(&server.store).await;
                }
            };
            tokio::select! {
                _ = stopped => {}
                _ = every_second => {}
            }
        }
    };
    let stop = async move {
        stop.await;
        drop(stopping);
    };
    tokio::join!(stop, repairing, collecting, moving, expiring);
}

/// How often metad makes recent metadata changes durable against power loss when no client
/// asked for it sooner (fsync), and how often it expires sessions.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) async fn sync(store: &Arc<Store>) {
    let store = store.clone();
    match shardfs_rpc::sync::blocking(move || store.sync()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("cannot sync the metadata database: {e}"),
        Err(e) => warn!("metadata sync task failed: {e}"),
    }
}

/// Deletes the files that lingered long enough, and reserves room for changes that free
/// space again if it was used.
async fn housekeeping(server: &Arc<MetadServer>) {
    let server = server.clone();
    let done = shardfs_rpc::sync::blocking(move || {
        server.store.replenish_reserve();
        server.reclaim_lingered()
    });
    match done.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("cannot delete files that lost their last name: {e}"),
        Err(e) => warn!("housekeeping task failed: {e}"),
    }
}
