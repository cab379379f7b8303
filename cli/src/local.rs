//! The embedded local cluster behind `shardfs local`: one metad (or a group of metad
//! replicas) and N chunkds as tasks of this process, on loopback, with their data in one
//! directory.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shardfs_chunkd::daemon::{ChunkdConfig, run_with_store};
use shardfs_chunkd::store::ShardStore;
use shardfs_meta_api::MetaClient;
use shardfs_metad::daemon::{self as metad, MetadConfig};
use shardfs_metad::gc::GcConfig;
use shardfs_metad::lifecycle::LifecycleConfig;
use shardfs_metad::repair::RepairConfig;
use shardfs_metad::replication::group::Timing;
use shardfs_metad::replication::node::Node;
use shardfs_metad::sessions::SessionLimits;
use shardfs_metad::store::VolumeOverrides;
use shardfs_rpc::{ClientOptions, ClusterKey};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Heartbeat interval of embedded chunkds: short, so the cluster is ready quickly.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long to wait for every chunkd to register.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

pub struct LocalCluster {
    pub metad_addr: String,
    /// The cluster's key, from the secret metad created in the data directory.
    pub key: ClusterKey,
    stop: watch::Sender<()>,
    tasks: JoinSet<()>,
}

pub struct LocalSettings {
    pub chunkds: usize,
    pub metad: MetadConfig,
    /// metad replicas: 1 runs metad alone; 3 or 5 run a group of replicas.
    pub metads: usize,
}

impl LocalSettings {
    /// `chunkds` chunkds and a metad keeping its database under `data`, with the volume's
    /// classes and chunk size (`None`: the volume's, or the defaults), and every worker at
    /// its default pace.
    pub fn new(data: &Path, chunkds: usize, volume: VolumeOverrides) -> LocalSettings {
        let metad = MetadConfig {
            data: data.join("metad"),
            secret_file: data.join("cluster.key"),
            volume,
            down_after: Duration::from_secs(10),
            repair: RepairConfig::default(),
            gc: GcConfig::default(),
            lifecycle: LifecycleConfig::default(),
            sessions: SessionLimits::default(),
            // Loopback only: nothing to encrypt against.
            tls: None,
            min_shards: None,
            replicas: Vec::new(),
            snapshot_every: Timing::default().snapshot_every,
        };
        LocalSettings { chunkds, metad, metads: 1 }
    }
}

/// Where a local group's replica addresses are kept: a replica's id comes from its address,
/// so a group restarted on the same data listens where it did.
const REPLICAS_FILE: &str = "metad-replicas";

impl LocalCluster {
    /// Starts metad and the chunkds under `data` and waits until all chunkds are up.
    pub async fn start(data: &Path, settings: LocalSettings) -> anyhow::Result<LocalCluster> {
        let (stop, stopped) = watch::channel(());
        let until_stopped = |mut rx: watch::Receiver<()>| async move {
            let _ = rx.changed().await;
        };
        let mut tasks = JoinSet::new();
        let (metad_addr, key) = if settings.metads > 1 {
            start_group(data, &settings, &mut tasks, &stopped).await?
        } else {
            if data.join(REPLICAS_FILE).exists() {
                bail!("{} holds a group of metad replicas: give --metads", data.display());
            }
            let server = metad::open(&settings.metad)?;
            let key = server.key();
            let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot bind metad")?;
            let metad_addr = listener.local_addr()?.to_string();
            let workers = (settings.metad.repair, settings.metad.gc, settings.metad.lifecycle);
            tasks.spawn(metad::run(listener, server, workers, until_stopped(stopped.clone())));
            (metad_addr, key)
        };
        for i in 0..settings.chunkds {
            let dir = data.join(format!("chunkd-{i}"));
            let store = ShardStore::open(&dir)
                .await
                .with_context(|| format!("cannot open chunkd store {}", dir.display()))?;
            let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot bind chunkd")?;
            let mut config = ChunkdConfig::new(&dir, &metad_addr, key);
            config.heartbeat_interval = HEARTBEAT;
            let stopped = until_stopped(stopped.clone());
            tasks.spawn(async move {
                if let Err(e) = run_with_store(config, store, listener, stopped).await {
                    tracing::error!("chunkd {i} failed: {e}");
                }
            });
        }
        let cluster = LocalCluster { metad_addr, key, stop, tasks };
        cluster.wait_ready(settings.chunkds).await?;
        Ok(cluster)
    }

    async fn wait_ready(&self, chunkds: usize) -> anyhow::Result<()> {
        let client = MetaClient::new(&self.metad_addr, ClientOptions::with_key(self.key));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let up = client.chunkds().await?.iter().filter(|c| c.up).count();
            if up >= chunkds {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {up} of {chunkds} chunkds came up within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every daemon and waits for them.
    pub async fn shutdown(mut self) {
        drop(self.stop);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts `settings.metads` metad replicas as one group, each in `data/metad-N`; returns
/// their addresses (comma-separated) and the cluster key.
async fn start_group(
    data: &Path,
    settings: &LocalSettings,
    tasks: &mut JoinSet<()>,
    stopped: &watch::Receiver<()>,
) -> anyhow::Result<(String, ClusterKey)> {
    if data.join("metad").exists() {
        bail!("{} holds a lone metad's database: give --metads 1", data.display());
    }
    let recorded = data.join(REPLICAS_FILE);
    let mut listeners = Vec::new();
    let addrs: Vec<String> = match std::fs::read_to_string(&recorded) {
        Ok(text) => {
            let addrs: Vec<String> = text.lines().map(str::to_string).collect();
            if addrs.len() != settings.metads {
                bail!("{} holds a group of {} metad replicas", data.display(), addrs.len());
            }
            for addr in &addrs {
                let listener = TcpListener::bind(addr).await.with_context(|| {
                    format!("cannot listen on {addr}, where the group's replica was")
                })?;
                listeners.push(listener);
            }
            addrs
        }
        Err(_) => {
            for _ in 0..settings.metads {
                listeners
                    .push(TcpListener::bind("127.0.0.1:0").await.context("cannot bind metad")?);
            }
            let addrs: Vec<String> = (listeners.iter())
                .map(|l| l.local_addr().map(|a| a.to_string()))
                .collect::<Result<_, _>>()?;
            std::fs::create_dir_all(data)?;
            std::fs::write(&recorded, addrs.join("\n"))
                .with_context(|| format!("cannot write {}", recorded.display()))?;
            addrs
        }
    };
    let mut key = None;
    for (i, listener) in listeners.into_iter().enumerate() {
        let mut config = settings.metad.clone();
        config.data = data.join(format!("metad-{i}"));
        config.replicas = addrs.clone();
        let node = Node::start(&config, &addrs[i]).await?;
        key = Some(node.key());
        let stopped = stopped.clone();
        tasks.spawn(async move {
            let stopped = async move {
                let mut stopped = stopped;
                let _ = stopped.changed().await;
            };
            if let Err(e) = node.run(listener, stopped).await {
                tracing::error!("metad replica {i} failed: {e:#}");
            }
        });
    }
    let key = key.context("a group needs at least one replica")?;
    Ok((addrs.join(","), key))
}
