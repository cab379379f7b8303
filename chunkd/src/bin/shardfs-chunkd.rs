//! `shardfs-chunkd`: serves one data directory's shards and keeps metad informed.
//!
//! Prints `shardfs-chunkd listening on <addr>` on stdout once it accepts connections (test
//! harnesses read it to learn the port of `--listen 127.0.0.1:0`); logs go to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shardfs_chunkd::daemon::{ChunkdConfig, run_with_store};
use shardfs_chunkd::scrub::ScrubConfig;
use shardfs_chunkd::store::{CompactionConfig, ShardStore, VolumeConfig};
use shardfs_rpc::{ClusterKey, DaemonAuth, DaemonTlsArgs};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(name = "shardfs-chunkd", version, about = "shardfs chunk daemon")]
struct Args {
    /// Settings from a TOML file, one key per flag below (`listen = "10.0.0.2:7100"`,
    /// `zone = "rack-a"`); environment variables and flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory holding the shard store (created if missing).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Address to listen on, e.g. 0.0.0.0:7100 or 127.0.0.1:0 for any free port.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    #[command(flatten)]
    tls: DaemonTlsArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9701; port 0 picks one,
    /// logged at start). Off unless given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Address of shardfs-metad, or of its replicas separated by commas.
    #[arg(long, value_name = "ADDR")]
    metad: String,
    /// The cluster secret (the file metad created, mode 0600).
    #[arg(long, env = "SHARDFS_SECRET_FILE", value_name = "FILE")]
    secret_file: PathBuf,
    /// Failure-domain label (host, rack): a chunk's shards go to distinct zones.
    #[arg(long, value_name = "LABEL")]
    zone: Option<String>,
    /// Address clients use to reach this chunkd [default: the bound listen address].
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// Seconds between heartbeats to metad.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    heartbeat_interval: f64,
    /// Scrub: bytes per second re-read to verify stored shards.
    #[arg(long, value_name = "BYTES", default_value_t = ScrubConfig::default().bytes_per_second)]
    scrub_rate: u64,
    /// Scrub: seconds between the end of one pass over all shards and the next.
    #[arg(long, value_name = "SECS", default_value_t = ScrubConfig::default().pass_interval.as_secs_f64())]
    scrub_interval: f64,
    /// Size in bytes of the volume files shards are appended to.
    #[arg(long, value_name = "BYTES", default_value_t = VolumeConfig::default().volume_bytes)]
    volume_size: u64,
    /// Compaction: bytes per second of live shards moved out of mostly dead volumes.
    #[arg(long, value_name = "BYTES", default_value_t = CompactionConfig::default().bytes_per_second)]
    compaction_rate: u64,
    /// Compaction: a sealed volume is compacted once this fraction of it is dead (0 to 1).
    #[arg(long, value_name = "FRACTION", default_value_t = CompactionConfig::default().dead_fraction)]
    compaction_threshold: f64,
    /// Compaction: seconds between looks for a volume worth compacting.
    #[arg(long, value_name = "SECS", default_value_t = CompactionConfig::default().check_interval.as_secs_f64())]
    compaction_interval: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = match shardfs_rpc::config_file::parse(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => return shardfs_rpc::cli::fail("shardfs-chunkd", &e),
    };
    shardfs_rpc::cli::init_logging("info");
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("shardfs-chunkd: error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let heartbeat_interval = Duration::try_from_secs_f64(args.heartbeat_interval)
        .ok()
        .filter(|interval| !interval.is_zero())
        .ok_or_else(|| {
            format!("--heartbeat-interval {} is not a positive number", args.heartbeat_interval)
        })?;
    let key = ClusterKey::load(&args.secret_file).map_err(|e| e.to_string())?;
    let tls = args.tls.load().map_err(|e| e.to_string())?;
    let config = ChunkdConfig {
        data_dir: args.data,
        auth: DaemonAuth { key, tls },
        metad_addr: args.metad,
        zone: args.zone,
        advertise_addr: args.advertise,
        heartbeat_interval,
        metrics_listen: args.metrics_listen,
        scrub: ScrubConfig {
            bytes_per_second: args.scrub_rate.max(1),
            pass_interval: Duration::try_from_secs_f64(args.scrub_interval).map_err(|_| {
                format!("--scrub-interval {} is not a duration", args.scrub_interval)
            })?,
        },
        volume: VolumeConfig { volume_bytes: args.volume_size.max(1) },
        compaction: CompactionConfig {
            dead_fraction: Some(args.compaction_threshold)
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| {
                    format!(
                        "--compaction-threshold {} is not between 0 and 1",
                        args.compaction_threshold
                    )
                })?,
            bytes_per_second: args.compaction_rate.max(1),
            check_interval: Duration::try_from_secs_f64(args.compaction_interval)
                .ok()
                .filter(|interval| !interval.is_zero())
                .ok_or_else(|| {
                    format!(
                        "--compaction-interval {} is not a positive number",
                        args.compaction_interval
                    )
                })?,
        },
    };
    let store =
        ShardStore::open_with(&config.data_dir, config.volume).await.map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let bound =
        listener.local_addr().map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let shutdown = shutdown_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "shardfs-chunkd listening on {bound}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);

    run_with_store(config, store, listener, shutdown).await.map_err(|e| e.to_string())
}

/// Completes on the first SIGINT or SIGTERM.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    })
}
