//! A whole chunkd: shard store, protocol server and membership heartbeat, run together until
//! shutdown. The `shardfs-chunkd` binary and in-process test clusters both start chunkds
//! through here.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shardfs_rpc::{ClusterKey, DaemonAuth};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::heartbeat::{self, HeartbeatConfig};
use crate::metrics::ChunkdMetrics;
use crate::scrub::{self, ScrubConfig};
use crate::server;
use crate::store::{CompactionConfig, ShardStore, StoreError, VolumeConfig};

/// How often a chunkd reports to metad unless configured otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// Settings of one chunkd.
#[derive(Clone, Debug)]
pub struct ChunkdConfig {
    /// Directory holding the shard store (created if missing).
    pub data_dir: PathBuf,
    /// From the cluster secret (and TLS, if configured): authenticates every connection, in
    /// and out.
    pub auth: DaemonAuth,
    /// Address of metad, for registration, heartbeats and corrupt-shard reports.
    pub metad_addr: String,
    /// Failure-domain label (host, rack); metad puts a chunk's shards in distinct zones.
    pub zone: Option<String>,
    /// Address clients should use to reach this chunkd; defaults to the listener's address.
    pub advertise_addr: Option<String>,
    /// Time between heartbeats to metad.
    pub heartbeat_interval: Duration,
    /// Background re-verification of every shard.
    pub scrub: ScrubConfig,
    /// Size of the volume files shards are appended to.
    pub volume: VolumeConfig,
    /// Background reclaiming of dead records' space.
    pub compaction: CompactionConfig,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: not served.
    pub metrics_listen: Option<String>,
}

impl ChunkdConfig {
    pub fn new(
        data_dir: impl Into<PathBuf>,
        metad_addr: impl Into<String>,
        key: ClusterKey,
    ) -> ChunkdConfig {
        ChunkdConfig {
            data_dir: data_dir.into(),
            auth: DaemonAuth::new(key),
            metad_addr: metad_addr.into(),
            zone: None,
            advertise_addr: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            scrub: ScrubConfig::default(),
            volume: VolumeConfig::default(),
            compaction: CompactionConfig::default(),
            metrics_listen: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the listening address: {0}")]
    Listener(io::Error),
    #[error("cannot serve metrics: {0}")]
    Metrics(io::Error),
}

/// Opens the store in `config.data_dir` and runs the chunkd on `listener` until `shutdown`.
pub async fn run_chunkd(
    config: ChunkdConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let store = ShardStore::open_with(&config.data_dir, config.volume).await?;
    run_with_store(config, store, listener, shutdown).await
}

/// Runs the chunkd on an already opened store (`config.data_dir` is not used). Returns once
/// `shutdown` has completed and the server and heartbeat have stopped; the store is closed
/// (its directory unlocked) by then, unless requests still in flight hold it a moment longer.
pub async fn run_with_store(
    config: ChunkdConfig,
    store: ShardStore,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let local_addr = listener.local_addr().map_err(DaemonError::Listener)?;
    let advertise_addr = match config.advertise_addr {
        Some(addr) => addr,
        None => {
            if local_addr.ip().is_unspecified() {
                warn!(
                    "listening on {local_addr} without an advertise address: other hosts \
                     cannot reach this chunkd through it"
                );
            }
            local_addr.to_string()
        }
    };
    let store = Arc::new(store);
    let corrupt_reports = store.subscribe_corrupt_reports();
    let heartbeat_config = HeartbeatConfig {
        metad_addr: config.metad_addr,
        id: store.id().to_owned(),
        advertise_addr,
        zone: config.zone,
        interval: config.heartbeat_interval,
        auth: config.auth,
    };
    info!(id = %store.id(), %local_addr, "chunkd serving");

    // Dropping the sender on shutdown completes every `stopped` future at once.
    let (stop, stop_rx) = watch::channel(());
    let stopped = |mut rx: watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let metrics = Arc::new(ChunkdMetrics::new());
    if let Some(addr) = &config.metrics_listen {
        let (metrics, store) = (metrics.clone(), store.clone());
        let render: shardfs_rpc::metrics::Render = Arc::new(move || {
            let (metrics, store) = (metrics.clone(), store.clone());
            Box::pin(async move { metrics.render(&store).await })
        });
        let listener = TcpListener::bind(addr).await.map_err(DaemonError::Metrics)?;
        tokio::spawn(shardfs_rpc::metrics::serve(listener, render, stopped(stop_rx.clone())));
    }
    let serving = server::run(
        listener,
        (store.clone(), metrics),
        config.auth.server_config(),
        stopped(stop_rx.clone()),
    );
    let scrubbing = scrub::run(store.clone(), config.scrub, stopped(stop_rx.clone()));
    let migrating = crate::store::migrate(store.clone(), stopped(stop_rx.clone()));
    let compacting = store.clone().compact(config.compaction, stopped(stop_rx.clone()));
    let beating = heartbeat::run(heartbeat_config, store, corrupt_reports, stopped(stop_rx));
    let stop_on_shutdown = async move {
        shutdown.await;
        drop(stop);
    };
    tokio::join!(stop_on_shutdown, serving, scrubbing, migrating, compacting, beating);
    info!(%local_addr, "chunkd stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;
    use shardfs_chunk_api::client::ChunkClient;

    /// The way an in-process cluster uses it: start on an ephemeral port, use, stop, restart
    /// on the same directory.
    #[tokio::test]
    async fn runs_in_process_and_releases_its_directory_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        drop(ShardStore::open(dir.path()).await.unwrap());
        let id = crate::store::read_id(dir.path()).unwrap().unwrap();
        for round in 0..2 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            // No metad here: the heartbeat keeps retrying in the background.
            let key = ClusterKey::from_secret(b"a test cluster's secret, 32 bytes");
            let config = ChunkdConfig::new(dir.path(), "127.0.0.1:1", key);
            let (stop, stopped) = oneshot::channel::<()>();
            let chunkd = tokio::spawn(run_chunkd(config, listener, async {
                let _ = stopped.await;
            }));
            let client = ChunkClient::new(addr, &id, shardfs_rpc::ClientOptions::with_key(key));
            let stat = client.stat().await.unwrap();
            assert_eq!(stat.shard_count, round);
            let chunk = vec![round as u8; 10];
            let shard = shardfs_chunk_api::ShardId {
                chunk: shardfs_chunk_api::ChunkId::of(&chunk),
                index: 0,
            };
            let encoding = shardfs_chunk_api::Encoding::rs(1, 1).unwrap();
            client.put(shard, encoding, 10, chunk, &[]).await.unwrap();
            stop.send(()).unwrap();
            chunkd.await.unwrap().unwrap();
        }
    }
}
