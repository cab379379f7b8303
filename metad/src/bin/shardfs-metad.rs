//! `shardfs-metad`: the metadata daemon.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use shardfs_metad::daemon::{self, ClassArgs, MetadConfig};
use shardfs_metad::gc::GcConfig;
use shardfs_metad::lifecycle::LifecycleConfig;
use shardfs_metad::repair::RepairConfig;
use shardfs_metad::replication::group::Timing;
use shardfs_metad::replication::node::{Node, Stopped};
use shardfs_metad::sessions::{self, SessionLimits};
use shardfs_metad::store::VolumeOverrides;
use shardfs_rpc::{DaemonTlsArgs, cli};
use tokio::net::TcpListener;

/// Serve a shardfs namespace: inodes, directories, file layouts and the chunk catalogue.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Settings from a TOML file, one key per flag below (`listen = "10.0.0.1:7000"`,
    /// `down-after = 10`); environment variables and flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for the metadata database (created if missing).
    #[arg(long)]
    data: PathBuf,
    /// The cluster secret, created (mode 0600) on first start if missing; copy it to every
    /// chunkd and client host [default: DATA/cluster.key].
    #[arg(long, env = "SHARDFS_SECRET_FILE", value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:7000 (port 0 picks a free port, unless this is
    /// one of several replicas).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: String,
    /// Run as one replica of a group: every replica's address, this one's (as given to
    /// --listen) among them, the same list on each, e.g. 10.0.0.1:7000,10.0.0.2:7000,
    /// 10.0.0.3:7000. The group sets itself up once every replica has started with an empty
    /// data directory; clients, chunkds and tools take the same list. A replica whose
    /// --listen is not in the list joins a running group once added (`shardfs metad add`).
    #[arg(long, value_delimiter = ',', value_name = "ADDRS")]
    replicas: Vec<String>,
    #[command(flatten)]
    tls: DaemonTlsArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9700; port 0 picks one,
    /// logged at start). Off unless given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    classes: ClassArgs,
    /// Chunk size for new data, e.g. 4MiB (default on a new volume).
    #[arg(long, value_parser = shardfs_rpc::size::parse)]
    chunk_size: Option<u64>,
    /// Seconds without a heartbeat after which a chunkd counts as down.
    #[arg(long, default_value_t = 10)]
    down_after: u64,
    /// Seconds a chunkd may stay down before its shards are rebuilt elsewhere.
    #[arg(long, default_value_t = RepairConfig::default().grace.as_secs_f64())]
    repair_grace: f64,
    /// Seconds an unreferenced chunk or orphan shard is kept before it is deleted.
    #[arg(long, default_value_t = GcConfig::default().grace.as_secs_f64())]
    gc_grace: f64,
    /// Seconds between garbage-collection sweeps.
    #[arg(long, default_value_t = GcConfig::default().interval.as_secs_f64())]
    gc_interval: f64,
    /// Seconds a file must go unwritten before its chunks move to the cold class.
    #[arg(long, default_value_t = LifecycleConfig::default().age.as_secs_f64())]
    lifecycle_age: f64,
    /// Bytes per second of chunks the lifecycle moves between classes at most, e.g. 32MiB.
    #[arg(long, value_parser = shardfs_rpc::size::parse, default_value = "32MiB")]
    lifecycle_rate: u64,
    /// Seconds between the lifecycle's scans of the catalogue.
    #[arg(long, default_value_t = LifecycleConfig::default().interval.as_secs_f64())]
    lifecycle_interval: f64,
    /// Seconds a client session may stay silent (no request, no heartbeat) before it
    /// expires and its locks and open files are released.
    #[arg(long, default_value_t = sessions::DEFAULT_TIMEOUT.as_secs_f64())]
    session_timeout: f64,
    /// Files one client session may hold open at once; one more open fails with ENFILE.
    #[arg(long, default_value_t = SessionLimits::default().open_files)]
    max_open_files_per_session: u64,
    /// Leases one client session may hold; past it, metad recalls its oldest ones.
    #[arg(long, default_value_t = SessionLimits::default().leases)]
    max_leases_per_session: usize,
    /// Chunks one client session may have prepared to write and not yet committed; a
    /// prepare past it fails (the write gets EIO).
    #[arg(long, default_value_t = SessionLimits::default().prepared_chunks)]
    max_prepared_chunks_per_session: usize,
    /// Shards of a new chunk that must be stored for a write to go on while chunkds are
    /// down (like Ceph's min_size); the rest are added by repair. Between k and k+m;
    /// default k+1.
    #[arg(long)]
    min_shards: Option<u8>,
    /// Seconds between the repair worker's scans of the catalogue.
    #[arg(long, default_value_t = RepairConfig::default().interval.as_secs_f64())]
    repair_interval: f64,
    /// As one of several replicas: log entries after which the database is snapshotted and
    /// the log cut behind the snapshot (a twentieth of them kept, for followers a little
    /// behind; one further behind, or a new one, is sent the snapshot).
    #[arg(long, default_value_t = Timing::default().snapshot_every,
          value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every: u64,
}

fn main() -> ExitCode {
    let args: Args = match shardfs_rpc::config_file::parse(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => return cli::fail("shardfs-metad", &e),
    };
    // openraft logs each failed call to an unreachable replica, many a second: the group
    // logs a replica becoming unreachable and reachable again instead (RUST_LOG=openraft=info
    // shows openraft's own).
    cli::init_logging("info,openraft=off");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(daemon::MAX_BLOCKING_THREADS)
        .build();
    let ran = match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::fail("shardfs-metad", &e),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (hot, cold) = args.classes.classes()?;
    let config = MetadConfig {
        secret_file: args.secret_file.unwrap_or_else(|| args.data.join("cluster.key")),
        data: args.data,
        volume: VolumeOverrides { hot, cold, chunk_size: args.chunk_size },
        down_after: Duration::from_secs(args.down_after),
        repair: RepairConfig {
            grace: seconds("--repair-grace", args.repair_grace)?,
            interval: seconds("--repair-interval", args.repair_interval)?,
            ..RepairConfig::default()
        },
        gc: GcConfig {
            grace: seconds("--gc-grace", args.gc_grace)?,
            interval: seconds("--gc-interval", args.gc_interval)?,
        },
        lifecycle: LifecycleConfig {
            age: seconds("--lifecycle-age", args.lifecycle_age)?,
            rate: args.lifecycle_rate,
            interval: seconds("--lifecycle-interval", args.lifecycle_interval)?,
        },
        sessions: SessionLimits {
            timeout: seconds("--session-timeout", args.session_timeout)?,
            open_files: args.max_open_files_per_session,
            leases: args.max_leases_per_session,
            prepared_chunks: args.max_prepared_chunks_per_session,
        },
        tls: args.tls.load()?,
        min_shards: args.min_shards,
        replicas: args.replicas.iter().map(|a| a.trim().to_string()).collect(),
        snapshot_every: args.snapshot_every,
    };
    if !config.replicas.is_empty() {
        return run_replica(config, &args.listen, args.metrics_listen.as_deref()).await;
    }
    let server = daemon::open(&config)?;
    if let Some(addr) = &args.metrics_listen {
        let metrics = server.clone();
        serve_metrics(addr, Arc::new(move || Box::pin(metrics.clone().render_metrics()))).await?;
    }
    let listener = listen(&args.listen).await?;
    let workers = (config.repair, config.gc, config.lifecycle);
    daemon::run(listener, server, workers, shutdown_signal()).await;
    tracing::info!("metad stopped");
    Ok(())
}

async fn run_replica(
    config: MetadConfig,
    listen_addr: &str,
    metrics: Option<&str>,
) -> anyhow::Result<()> {
    let node = Node::start(&config, listen_addr).await?;
    if let Some(addr) = metrics {
        let node = node.clone();
        serve_metrics(addr, Arc::new(move || Box::pin(node.clone().render_metrics()))).await?;
    }
    let listener = listen(listen_addr).await?;
    match node.run(listener, shutdown_signal()).await? {
        Stopped::Shutdown => {
            tracing::info!("metad replica stopped");
            Ok(())
        }
        // The process starts again as it was started (same pid, same flags): its log now
        // makes it the leader of a group of one.
        Stopped::Promoted => Err(restart().into()),
    }
}

/// Replaces this process with a new run of the same program and arguments; returns only
/// if that fails.
fn restart() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let args: Vec<_> = std::env::args_os().collect();
    let program = std::env::current_exe().map(|p| p.into_os_string());
    let program = program.unwrap_or_else(|_| args.first().cloned().unwrap_or_default());
    std::process::Command::new(program).args(args.iter().skip(1)).exec()
}

async fn serve_metrics(addr: &str, render: shardfs_rpc::metrics::Render) -> anyhow::Result<()> {
    shardfs_rpc::metrics::spawn_endpoint(addr, render)
        .await
        .map(drop)
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))
}

/// Binds `addr` and says where metad listens, on stdout (for scripts) and in the log.
async fn listen(addr: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    // Said once more by a promoted learner, which starts again: whoever read the first
    // announcement may have closed the pipe since, and that is no failure.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "shardfs-metad listening on {addr}").and_then(|()| stdout.flush());
    tracing::info!(%addr, "metad serving");
    Ok(listener)
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("{flag} {value} is not a duration"))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
