//! `shardfs`: mount a shardfs namespace, or run a whole local cluster.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use shardfs::core::{Fs, FsOptions};
use shardfs::local::{LocalCluster, LocalSettings};
use shardfs::mount::{self, MountOptions};
use shardfs_chunkd::Encoding;
use shardfs_metad::daemon::{self as metad, MetadConfig};

/// Set in the environment of the process `mount --background` starts.
const BACKGROUND_CHILD: &str = "SHARDFS_BACKGROUND_CHILD";
/// What that process prints on stdout once the mount is live.
const READY_LINE: &str = "shardfs-mount-ready";

/// shardfs: a distributed POSIX filesystem with erasure-coded, BLAKE3-addressed chunks.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Mount the namespace served by a metad.
    Mount {
        /// metad address, e.g. 127.0.0.1:7000.
        metad: String,
        /// Existing, empty directory to mount on.
        mountpoint: PathBuf,
        /// Return once mounted and keep serving in the background.
        #[arg(long)]
        background: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run metad and N chunkds on loopback and mount them: a whole cluster in one command.
    Local {
        /// Existing, empty directory to mount on.
        mountpoint: PathBuf,
        /// Where metad and the chunkds keep their data (kept across restarts).
        #[arg(long, default_value = "shardfs-data")]
        data: PathBuf,
        /// Number of chunk daemons.
        #[arg(long, default_value_t = 6)]
        chunkds: usize,
        /// Data shards per chunk (new volume default 4).
        #[arg(long, requires = "m")]
        k: Option<u8>,
        /// Parity shards per chunk (new volume default 2).
        #[arg(long, requires = "k")]
        m: Option<u8>,
        /// Chunk size, e.g. 4MiB (new volume default).
        #[arg(long, value_parser = metad::parse_size)]
        chunk_size: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct ClientArgs {
    /// Memory for cached chunks, e.g. 256MiB.
    #[arg(long, value_parser = metad::parse_size, default_value = "256MiB")]
    cache_size: u64,
    /// Allow other users to access the mount.
    #[arg(long)]
    allow_other: bool,
    /// Mount read-only.
    #[arg(long)]
    read_only: bool,
}

impl ClientArgs {
    fn fs_options(&self) -> FsOptions {
        FsOptions {
            chunk_cache_bytes: self.cache_size as usize,
            ..FsOptions::default()
        }
    }

    fn mount_options(&self, source: String) -> MountOptions {
        MountOptions {
            allow_other: self.allow_other,
            read_only: self.read_only,
            source: Some(source),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardfs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Commands::Mount {
            metad,
            mountpoint,
            background,
            client,
        } => {
            mount::check_mountpoint(&mountpoint)?;
            if background && std::env::var_os(BACKGROUND_CHILD).is_none() {
                return start_in_background();
            }
            let runtime = runtime()?;
            let fs = runtime
                .block_on(Fs::connect(&metad, client.fs_options()))
                .with_context(|| format!("cannot reach metad at {metad}"))?;
            let options = client.mount_options(metad.clone());
            mount::serve(
                &runtime,
                Arc::new(fs),
                &mountpoint,
                &options,
                announce_ready,
            )
        }
        Commands::Local {
            mountpoint,
            data,
            chunkds,
            k,
            m,
            chunk_size,
            client,
        } => {
            mount::check_mountpoint(&mountpoint)?;
            let encoding = match (k, m) {
                (Some(k), Some(m)) => Some(Encoding::new(k, m)?),
                _ => None,
            };
            let needed = encoding.unwrap_or(metad::DEFAULT_ENCODING).total();
            if chunkds < needed {
                bail!(
                    "{chunkds} chunkds cannot hold {needed} shards per chunk on distinct daemons"
                );
            }
            let settings = LocalSettings {
                chunkds,
                metad: MetadConfig {
                    data: data.join("metad"),
                    encoding,
                    chunk_size,
                    down_after: Duration::from_secs(10),
                },
            };
            let runtime = runtime()?;
            let cluster = runtime.block_on(LocalCluster::start(&data, settings))?;
            let served = runtime
                .block_on(Fs::connect(&cluster.metad_addr, client.fs_options()))
                .map_err(anyhow::Error::from)
                .and_then(|fs| {
                    let options = client.mount_options(format!("shardfs-local:{}", data.display()));
                    mount::serve(&runtime, Arc::new(fs), &mountpoint, &options, || {
                        eprintln!(
                            "shardfs: local cluster (metad {}, {chunkds} chunkds, data in {}) \
                             mounted at {}; Ctrl-C to stop",
                            cluster.metad_addr,
                            data.display(),
                            mountpoint.display()
                        );
                        announce_ready();
                    })
                });
            runtime.block_on(cluster.shutdown());
            served
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// In the process started by `--background`, tells the parent the mount is live and
/// detaches from its pipe.
fn announce_ready() {
    if std::env::var_os(BACKGROUND_CHILD).is_none() {
        return;
    }
    println!("{READY_LINE}");
    let _ = std::io::stdout().flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

/// Runs this same command again as a detached process and waits until it has mounted (or
/// failed), so the caller gets a live mount or a one-line error.
fn start_in_background() -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the shardfs executable")?;
    let args: Vec<_> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--background")
        .collect();
    let mut child = Command::new(exe)
        .args(args)
        .env(BACKGROUND_CHILD, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("cannot start the background mount process")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() == READY_LINE {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let status = child.wait()?;
    let reason = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim_start_matches("shardfs: error: ").to_string())
        .unwrap_or_else(|| format!("mount process exited ({status})"));
    bail!("{reason}")
}
