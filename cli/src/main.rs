//! `shardfs`: mount a shardfs namespace, run a whole local cluster, or look after one.

mod bench;
mod fsck;
mod info;
mod install;
mod progress;
mod status;

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use shardfs::local::{LocalCluster, LocalSettings};
use shardfs_chunk_api::Encoding;
use shardfs_fs::core::{Fs, FsOptions};
use shardfs_fs::mount::{self, MountOptions};
use shardfs_fs::mount_record::{self, MountRecord};
use shardfs_fs::options::MountFlags;
use shardfs_metad::daemon::{self as metad};
use shardfs_rpc::{ClientOptions, ClusterKey, TlsClient};

#[derive(Subcommand)]
enum ChunkdCommands {
    /// Move every shard off chunkd ID: it takes no new shards, and metad's repair worker
    /// rebuilds its shards on the other chunkds (reads go on meanwhile). Waits, with
    /// progress, until the catalogue places nothing on it; then stop the chunkd. Its shard
    /// files are removed by the orphan sweep after the GC grace.
    Drain {
        /// metad address, e.g. 127.0.0.1:7000.
        metad: String,
        /// The chunkd's id (see `shardfs status`).
        id: String,
        /// Stop draining: the chunkd takes new shards again.
        #[arg(long)]
        undo: bool,
        /// Return once the drain is started instead of waiting for it to finish.
        #[arg(long)]
        no_wait: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Remove chunkd ID from the registry for good, so `status` stops listing it: only a
    /// chunkd that is down and holds no shard (drain it first).
    Forget {
        /// metad address, e.g. 127.0.0.1:7000.
        metad: String,
        /// The chunkd's id (see `shardfs status`).
        id: String,
        #[command(flatten)]
        secret: SecretArgs,
    },
}

#[derive(Subcommand)]
enum MetadCommands {
    /// Copy the database of a metad, running or not, to FILE: consistent as of one moment
    /// while metad keeps serving, checked, and synced before it takes its name.
    Backup {
        /// metad's data directory (its --data).
        #[arg(long)]
        data: PathBuf,
        /// Where to write the backup; must not exist yet.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace the database of a stopped metad with a backup. The database it replaces is
    /// kept beside it (meta.db.before-restore-TIME). Run `shardfs fsck --verify-data` once
    /// metad is back.
    Restore {
        /// metad's data directory (its --data); metad must not be running.
        #[arg(long)]
        data: PathBuf,
        /// The backup to restore.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Set in the environment of the process `mount --background` starts: the log file it
/// writes once mounted.
const BACKGROUND_CHILD: &str = "SHARDFS_BACKGROUND_LOG";
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
    /// Show the chunkds (up, suspect, down), the catalogue and the repair and GC counters.
    Status {
        /// metad address, e.g. 127.0.0.1:7000.
        metad: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Install the binaries, the mount(8) helper /sbin/mount.fuse.shardfs, the systemd units
    /// and the operations guide (docs/operations.md).
    Install {
        /// Install under this directory instead of / (a package build).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Where the binaries go (PREFIX/bin) and the guide (PREFIX/share/doc/shardfs).
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a garbage-collection pass now (unreferenced chunks past the GC grace, orphan
    /// shards on every chunkd) and report what it deleted.
    Gc {
        /// metad address, e.g. 127.0.0.1:7000.
        metad: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Run a scrub pass now on every chunkd that is up (each re-reads and verifies all its
    /// shards, quarantining corrupt ones and reporting them for repair) and report what each
    /// found. Passes read at each chunkd's --scrub-rate.
    Scrub {
        /// metad address, e.g. 127.0.0.1:7000.
        metad: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Manage chunkds: drain one before removing it.
    Chunkd {
        #[command(subcommand)]
        command: ChunkdCommands,
    },
    /// Back up or restore metad's database (run on the metad host).
    Metad {
        #[command(subcommand)]
        command: MetadCommands,
    },
    /// Show where a file's bytes are: its extents, their chunks, and each chunk's shards
    /// with the chunkd holding them and their health.
    Info {
        /// A file on a shardfs mount.
        path: PathBuf,
        /// metad address [default: the source of the mount holding PATH].
        #[arg(long)]
        metad: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Show the volume's usable size, use and free space (raw chunkd space scaled by the
    /// encoding), the file data stored, and inodes.
    Df {
        /// metad address, e.g. 127.0.0.1:7000.
        metad: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Measure a fixed set of workloads on a directory (and another, with --compare):
    /// sequential and random I/O, small files, and a real tree.
    Bench(BenchArgs),
    /// Check the namespace's metadata (and with --verify-data, every chunk's shards).
    /// Exit status: 0 clean, 1 problems repaired, 4 problems left.
    Fsck(FsckArgs),
    /// Mount the namespace served by a metad.
    Mount {
        /// metad address, e.g. 127.0.0.1:7000.
        metad: String,
        /// Existing, empty directory to mount on (`-o nonempty` allows others).
        mountpoint: PathBuf,
        /// Return once mounted and keep serving in the background, logging to --log-file.
        #[arg(long)]
        background: bool,
        /// Where a --background mount writes its log (appended) [default:
        /// /var/log/shardfs/mount-PATH.log for root, ~/.local/state/shardfs/mount-PATH.log
        /// for others, PATH being the mount point with `/` as `-`].
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run metad and N chunkds on loopback and mount them: a whole cluster in one command.
    Local {
        /// Existing, empty directory to mount on (`-o nonempty` allows others).
        mountpoint: PathBuf,
        /// Where metad and the chunkds keep their data (kept across restarts).
        #[arg(long, default_value = "shardfs-data")]
        data: PathBuf,
        /// Number of chunk daemons [default: k+m+2, 8 for 4+2, so writes go on at full
        /// redundancy with one or two of them lost].
        #[arg(long)]
        chunkds: Option<usize>,
        /// Data shards per chunk (new volume default 4).
        #[arg(long, requires = "m")]
        k: Option<u8>,
        /// Parity shards per chunk (new volume default 2).
        #[arg(long, requires = "k")]
        m: Option<u8>,
        /// Chunk size, e.g. 4MiB (new volume default).
        #[arg(long, value_parser = shardfs_rpc::size::parse)]
        chunk_size: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// What `shardfs bench` runs.
#[derive(Args)]
struct BenchArgs {
    /// Directory to measure (a shardfs mount, or any other directory).
    dir: PathBuf,
    /// Another directory to measure in the same run, alternating rounds (A B A B …), e.g. a
    /// local ext4 directory; the report adds how fast DIR is relative to it.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Rounds per directory; the report shows medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Size of the sequentially written and read file, e.g. 1GiB.
    #[arg(long, value_parser = shardfs_rpc::size::parse, default_value = "1GiB")]
    file_size: u64,
    /// Random 4 KiB reads per random-read workload.
    #[arg(long, default_value_t = 20_000)]
    random_reads: usize,
    /// Small files to create, stat, read and delete.
    #[arg(long, default_value_t = 5_000)]
    small_files: usize,
    /// Directories the small files are spread over.
    #[arg(long, default_value_t = 50)]
    small_dirs: usize,
    /// A real tree to copy (cp -a), compare (diff -r) and remove (rm -rf).
    #[arg(long, default_value = "/usr/include")]
    tree: PathBuf,
    /// Run only these groups of workloads (comma-separated); all by default.
    #[arg(long, value_delimiter = ',', default_value = "data,random,small,tree")]
    only: Vec<crate::bench::Group>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What `shardfs fsck` checks and how it reports.
#[derive(Args)]
struct FsckArgs {
    /// metad address, e.g. 127.0.0.1:7000.
    metad: String,
    /// Fix what can be fixed safely (link counts, refcounts, dangling entries, …).
    #[arg(long)]
    repair: bool,
    /// Also read back every shard and count the verified ones per chunk.
    #[arg(long)]
    verify_data: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    secret: SecretArgs,
}

/// Where a client finds the cluster secret, and the CA of a cluster that uses TLS.
#[derive(Args)]
struct SecretArgs {
    /// The cluster secret (the file metad created, mode 0600) [default:
    /// /etc/shardfs/cluster.key].
    #[arg(long, env = "SHARDFS_SECRET_FILE", value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// PEM certificate of the cluster CA, for a cluster whose daemons run with --tls-cert:
    /// connect over TLS and check each daemon's certificate against it.
    #[arg(long, env = "SHARDFS_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

/// Where clients look for the cluster secret when not told.
const DEFAULT_SECRET_FILE: &str = "/etc/shardfs/cluster.key";

impl SecretArgs {
    /// Connection options proving the secret at `--secret-file` over TLS to `--tls-ca`'s
    /// cluster; a mount's `-o secret_file=` and `-o tls_ca=` in `flags` win.
    fn rpc(&self, flags: Option<&MountFlags>) -> anyhow::Result<ClientOptions> {
        let (secret, ca) = self.files(flags);
        let tls = match ca {
            Some(ca) => Some(TlsClient::load(&ca)?),
            None => None,
        };
        Ok(ClientOptions { tls, ..ClientOptions::with_key(ClusterKey::load(&secret)?) })
    }

    /// The secret file and TLS CA chosen: a mount's options, else the flags, else (for
    /// the secret) the default.
    fn files(&self, flags: Option<&MountFlags>) -> (PathBuf, Option<PathBuf>) {
        let chosen = |f: fn(&MountFlags) -> Option<&PathBuf>| flags.and_then(f).cloned();
        let secret = chosen(|f| f.secret_file.as_ref())
            .or(self.secret_file.clone())
            .unwrap_or(PathBuf::from(DEFAULT_SECRET_FILE));
        (secret, chosen(|f| f.tls_ca.as_ref()).or(self.tls_ca.clone()))
    }

    /// These flags, with what a mount's record names where they name nothing.
    fn or_recorded(&self, record: &MountRecord) -> SecretArgs {
        SecretArgs {
            secret_file: self.secret_file.clone().or(Some(record.secret_file.clone())),
            tls_ca: self.tls_ca.clone().or(record.tls_ca.clone()),
        }
    }
}

#[derive(Args)]
struct ClientArgs {
    /// Memory for cached chunks, e.g. 256MiB.
    #[arg(long, value_parser = shardfs_rpc::size::parse)]
    cache_size: Option<u64>,
    /// Allow other users to access the mount.
    #[arg(long)]
    allow_other: bool,
    /// Mount read-only.
    #[arg(long)]
    read_only: bool,
    /// Serve this mount's Prometheus metrics at http://ADDR/metrics (port 0 picks one,
    /// logged at start).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Mount options as in fstab: ro, noatime, nosuid, nodev, noexec, sync, dirsync,
    /// allow_other, cache_size=SIZE, secret_file=PATH, tls_ca=PATH, metrics_listen=ADDR,
    /// remount, … (comma-separated).
    #[arg(short = 'o', long = "options", value_parser = MountFlags::parse)]
    options: Option<MountFlags>,
}

impl ClientArgs {
    fn flags(&self) -> MountFlags {
        let mut flags = self.options.clone().unwrap_or_default();
        flags.read_only |= self.read_only;
        flags.allow_other |= self.allow_other;
        flags.cache_size = self.cache_size.or(flags.cache_size);
        flags.metrics_listen = self.metrics_listen.clone().or(flags.metrics_listen);
        flags
    }

    /// Serves `fs`'s metrics in the background, if asked to.
    fn serve_metrics(&self, runtime: &tokio::runtime::Runtime, fs: &Arc<Fs>) -> anyhow::Result<()> {
        let Some(addr) = self.flags().metrics_listen else { return Ok(()) };
        let fs = Arc::downgrade(fs);
        let render: shardfs_rpc::metrics::Render = Arc::new(move || {
            let text = fs.upgrade().map(|fs| fs.render_metrics()).unwrap_or_default();
            Box::pin(async move { text })
        });
        let bound = runtime
            .block_on(shardfs_rpc::metrics::spawn_endpoint(&addr, render))
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        eprintln!("shardfs: metrics at http://{bound}/metrics");
        Ok(())
    }

    fn fs_options(&self, rpc: ClientOptions) -> FsOptions {
        let defaults = FsOptions::default();
        let cache = self.flags().cache_size.map_or(defaults.chunk_cache_bytes, |c| c as usize);
        let (atime, dir_atime) = self.flags().atime();
        FsOptions { chunk_cache_bytes: cache, atime, dir_atime, rpc, ..defaults }
    }

    fn mount_options(&self, source: String) -> MountOptions {
        MountOptions { flags: self.flags(), source: Some(source) }
    }
}

/// glibc malloc arenas per process. Its default (8 per core) lets every thread of the async
/// runtime keep its own arena of freed chunk and shard buffers: writing 1 GiB peaked at
/// 573 MiB of RSS with the default 256 MiB chunk cache, 403 MiB with 2 arenas
/// (docs/performance.md).
const MALLOC_ARENAS: i32 = 2;

fn main() -> ExitCode {
    // SAFETY: mallopt only changes allocator settings; called before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
    let args: Vec<OsString> = mount_helper_args().unwrap_or_else(|| std::env::args_os().collect());
    let cli = Cli::parse_from(&args);
    shardfs_rpc::cli::init_logging("warn");
    match run(cli, &args) {
        Ok(code) => code,
        Err(e) => shardfs_rpc::cli::fail("shardfs", &e),
    }
}

fn run(cli: Cli, args: &[OsString]) -> anyhow::Result<ExitCode> {
    match cli.command {
        Commands::Status { metad, json, secret } => {
            report(&metad, &secret, json, crate::status::fetch, crate::status::print)
        }
        Commands::Info { path, metad, json, secret } => {
            // The mount holding the file, and what it recorded of its cluster, fill in
            // what the flags leave out.
            let mount = crate::info::mount_of(&path)?;
            let record = mount.as_ref().and_then(|(point, _)| mount_record::find(point));
            let secret = match &record {
                Some(record) => secret.or_recorded(record),
                None => secret,
            };
            let metad = metad
                .or(record.map(|r| r.metad))
                .or(mount.map(|(_, source)| source))
                .with_context(|| {
                    format!("{} is not on a shardfs mount (give --metad)", path.display())
                })?;
            let ino = crate::info::file_ino(&path)?;
            let fetch = async |m: &_| crate::info::fetch(m, &path, ino).await;
            report(&metad, &secret, json, fetch, crate::info::print)
        }
        Commands::Df { metad, json, secret } => {
            report(&metad, &secret, json, crate::status::fetch_df, crate::status::print_df)
        }
        Commands::Fsck(fsck) => {
            let runtime = runtime()?;
            let rpc = fsck.secret.rpc(None)?;
            let meta = shardfs_meta_api::MetaClient::new(&fsck.metad, rpc);
            let progress = !fsck.json && std::io::stderr().is_terminal();
            let report = runtime
                .block_on(crate::fsck::run(&meta, rpc, fsck.repair, fsck.verify_data, progress))
                .with_context(|| format!("fsck of {} failed", fsck.metad))?;
            if fsck.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                crate::fsck::print(&report);
            }
            Ok(ExitCode::from(report.exit_code()))
        }
        Commands::Metad { command } => metad_command(command),
        Commands::Scrub { metad, json, secret } => {
            let rpc = secret.rpc(None)?;
            let progress = !json && std::io::stderr().is_terminal();
            let run = async |m: &_| scrub(m, rpc, progress).await;
            report(&metad, &secret, json, run, |all: &Vec<ScrubReport>| {
                for r in all {
                    println!(
                        "chunkd {}: {} shards verified, {} corrupt",
                        r.chunkd, r.shards, r.corrupt
                    );
                }
            })
        }
        Commands::Gc { metad, json, secret } => {
            let progress = !json && std::io::stderr().is_terminal();
            let collect = async |m: &_| gc(m, progress).await;
            report(&metad, &secret, json, collect, |r: &GcReport| {
                println!(
                    "gc pass done: {} chunks collected, {} orphan shards deleted, {} sweeps aborted",
                    r.chunks_collected, r.orphans_deleted, r.sweeps_aborted
                )
            })
        }
        Commands::Chunkd {
            command: ChunkdCommands::Drain { metad, id, undo, no_wait, json, secret },
        } => {
            let meta = shardfs_meta_api::MetaClient::new(&metad, secret.rpc(None)?);
            let progress = !json && std::io::stderr().is_terminal();
            let remaining = runtime()?
                .block_on(drain(&meta, &id, undo, !(undo || no_wait), progress))
                .with_context(|| format!("drain of chunkd {id} through {metad} failed"))?;
            if json {
                let out =
                    serde_json::json!({ "chunkd": id, "draining": !undo, "remaining": remaining });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if undo {
                println!("chunkd {id} is no longer drained; it takes new shards again");
            } else if remaining == 0 {
                println!("chunkd {id} is drained: no shard is placed on it; stop it now");
            } else {
                println!("chunkd {id} is draining: {remaining} shards still to move");
            }
            Ok(ExitCode::SUCCESS)
        }
        Commands::Chunkd { command: ChunkdCommands::Forget { metad, id, secret } } => {
            let meta = shardfs_meta_api::MetaClient::new(&metad, secret.rpc(None)?);
            runtime()?
                .block_on(meta.forget(&id))
                .with_context(|| format!("cannot forget chunkd {id} through {metad}"))?;
            println!("chunkd {id} forgotten");
            Ok(ExitCode::SUCCESS)
        }
        Commands::Install { root, prefix, json } => {
            let exe = std::env::current_exe().context("cannot find the running shardfs")?;
            let from = exe.parent().context("the running shardfs has no directory")?;
            let installed = crate::install::install(&root, &prefix, from)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&installed)?);
            } else {
                for item in &installed {
                    println!("{:<24} {}", item.what, item.path.display());
                }
                println!(
                    "next: systemctl daemon-reload; see {} for the rest",
                    prefix.join("share/doc/shardfs/operations.md").display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Commands::Bench(args) => {
            let config = crate::bench::BenchConfig {
                file_bytes: args.file_size,
                random_reads: args.random_reads,
                small_files: args.small_files,
                small_dirs: args.small_dirs,
                small_file_bytes: 4096,
                tree: args.tree,
                groups: args.only,
            };
            let progress = !args.json && std::io::stderr().is_terminal();
            let report = crate::bench::run(
                &config,
                &args.dir,
                args.compare.as_deref(),
                args.rounds,
                progress,
            )?;
            match args.json {
                true => println!("{}", serde_json::to_string_pretty(&report)?),
                false => crate::bench::print(&report),
            }
            Ok(ExitCode::SUCCESS)
        }
        Commands::Mount { metad, mountpoint, background, log_file, secret, client } => {
            let log = background.then(|| log_file.unwrap_or_else(|| default_log(&mountpoint)));
            mount_command(&metad, &mountpoint, log.as_deref(), (&secret, &client), args)?;
            Ok(ExitCode::SUCCESS)
        }
        Commands::Local { mountpoint, data, chunkds, k, m, chunk_size, client } => {
            let volume = (k, m, chunk_size);
            local_command(&mountpoint, &data, chunkds, volume, &client)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Fetches a report from metad and prints it, as text or as JSON.
fn report<T: serde::Serialize>(
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
struct ScrubReport {
    chunkd: String,
    shards: u64,
    corrupt: u64,
}

/// Asks every chunkd that is up for a scrub pass and waits until each has ended one.
async fn scrub(
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
struct GcReport {
    chunks_collected: u64,
    orphans_deleted: u64,
    sweeps_aborted: u64,
}

/// Asks metad for a garbage-collection pass and waits until it has ended.
async fn gc(meta: &shardfs_meta_api::MetaClient, progress: bool) -> anyhow::Result<GcReport> {
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
const DRAIN_STALL: Duration = Duration::from_secs(120);

/// Starts (or undoes) a drain and, if `wait`, polls until no shard is placed on the chunkd.
/// Returns the shards still placed there.
async fn drain(
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

/// `shardfs metad backup` and `shardfs metad restore`.
fn metad_command(command: MetadCommands) -> anyhow::Result<ExitCode> {
    use shardfs_metad::backup;
    match command {
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

/// `shardfs mount`: mounts and serves in the foreground, or starts that in the background.
fn mount_command(
    metad: &str,
    mountpoint: &Path,
    background: Option<&Path>,
    (secret, client): (&SecretArgs, &ClientArgs),
    args: &[OsString],
) -> anyhow::Result<()> {
    if client.flags().remount {
        mount::check_mountpoint(mountpoint)?;
        return mount::remount(mountpoint, &client.flags());
    }
    mount::check_new_mountpoint(mountpoint, client.flags().nonempty)?;
    // Read before going to the background, so a missing secret fails the mount command.
    let rpc = secret.rpc(Some(&client.flags()))?;
    if let Some(log) = background
        && std::env::var_os(BACKGROUND_CHILD).is_none()
    {
        return start_in_background(args, log);
    }
    let runtime = runtime()?;
    let fs = runtime
        .block_on(Fs::connect(metad, client.fs_options(rpc)))
        .with_context(|| format!("cannot reach metad at {metad}"))?;
    client.serve_metrics(&runtime, &fs)?;
    let options = client.mount_options(metad.to_string());
    let (secret_file, tls_ca) = secret.files(Some(&client.flags()));
    let record =
        MountRecord { mountpoint: PathBuf::new(), metad: metad.into(), secret_file, tls_ca };
    let _record = leave_record(mountpoint, record);
    mount::serve(&runtime, fs, mountpoint, &options, announce_ready)
}

/// Leaves what `shardfs info` needs to reach the mount's cluster (see `mount_record.rs`),
/// while the result lives; a failure only costs `info` its defaults.
fn leave_record(mountpoint: &Path, mut record: MountRecord) -> Option<mount_record::Recorded> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    record.secret_file = absolute(&record.secret_file);
    record.tls_ca = record.tls_ca.as_deref().map(absolute);
    let mountpoint = mountpoint.canonicalize().unwrap_or_else(|_| absolute(mountpoint));
    record.mountpoint = mountpoint.clone();
    mount_record::record(&mountpoint, &record)
        .inspect_err(|e| tracing::warn!("cannot record the mount for shardfs info: {e}"))
        .ok()
}

/// `shardfs local`: a whole cluster on loopback, mounted, until Ctrl-C or SIGTERM.
fn local_command(
    mountpoint: &Path,
    data: &Path,
    chunkds: Option<usize>,
    (k, m, chunk_size): (Option<u8>, Option<u8>, Option<u64>),
    client: &ClientArgs,
) -> anyhow::Result<()> {
    mount::check_new_mountpoint(mountpoint, client.flags().nonempty)?;
    let encoding = match (k, m) {
        (Some(k), Some(m)) => Some(Encoding::new(k, m)?),
        _ => None,
    };
    let needed = encoding.unwrap_or(metad::DEFAULT_ENCODING).total();
    let chunkds = chunkds.unwrap_or(needed + 2);
    if chunkds < needed {
        bail!("{chunkds} chunkds cannot hold {needed} shards per chunk on distinct daemons");
    }
    let settings = LocalSettings::new(data, chunkds, encoding, chunk_size);
    let runtime = runtime()?;
    let cluster = runtime.block_on(LocalCluster::start(data, settings))?;
    let served = runtime
        .block_on(Fs::connect(
            &cluster.metad_addr,
            client.fs_options(ClientOptions::with_key(cluster.key)),
        ))
        .map_err(anyhow::Error::from)
        .and_then(|fs| {
            client.serve_metrics(&runtime, &fs)?;
            let options = client.mount_options(format!("shardfs-local:{}", data.display()));
            let record = MountRecord {
                // Filled in by `leave_record`.
                mountpoint: PathBuf::new(),
                metad: cluster.metad_addr.clone(),
                secret_file: data.join("cluster.key"),
                tls_ca: None,
            };
            let _record = leave_record(mountpoint, record);
            mount::serve(&runtime, fs, mountpoint, &options, || {
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

/// When run as a mount(8) helper (`/sbin/mount.fuse.shardfs SOURCE DIR [-o OPTIONS]
/// [-n] [-s] [-v]`, via a link of that name), the equivalent `shardfs mount --background`
/// command line: the helper must return once the mount is usable, and print nothing.
///
/// mount(8) passes `nodev` and `nosuid` but drops `dev` and `suid` as defaults, so a mount
/// through it starts from `dev,suid` as a local disk does; `nodev`/`nosuid` still win.
fn mount_helper_args() -> Option<Vec<OsString>> {
    let mut args = std::env::args_os();
    let argv0 = args.next()?;
    let name = Path::new(&argv0).file_name()?.to_str()?;
    if !name.starts_with("mount.") {
        return None;
    }
    let mut positional = Vec::new();
    let mut options: Vec<OsString> = vec!["dev,suid".into()];
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-o") => options.extend(args.next()),
            Some(joined) if joined.starts_with("-o") => options.push(joined[2..].into()),
            // No mtab, sloppy, verbose, fake: nothing to do for a FUSE mount.
            Some("-n" | "-s" | "-v" | "-f") => {}
            _ => positional.push(arg),
        }
    }
    let mut rebuilt: Vec<OsString> = vec!["shardfs".into(), "mount".into(), "--background".into()];
    rebuilt.push("-o".into());
    rebuilt.push(options.join(OsStr::new(",")));
    rebuilt.extend(positional);
    Some(rebuilt)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Bounds metad's threads when it runs here (`shardfs local`), as it does alone.
        .max_blocking_threads(shardfs_metad::daemon::MAX_BLOCKING_THREADS)
        .build()
        .context("cannot start the async runtime")
}

/// In the process started by `--background`, tells the parent the mount is live and
/// detaches from its pipes: from here on it logs to its log file.
fn announce_ready() {
    let Some(log) = std::env::var_os(BACKGROUND_CHILD) else {
        return;
    };
    println!("{READY_LINE}");
    let _ = std::io::stdout().flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    if let Ok(log) = std::fs::OpenOptions::new().append(true).open(log) {
        let _ = nix::unistd::dup2_stderr(&log);
    }
}

/// Where a `--background` mount at `mountpoint` logs by default.
fn default_log(mountpoint: &Path) -> PathBuf {
    let absolute = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_owned());
    let name = absolute.to_string_lossy().trim_matches('/').replace('/', "-");
    let dir = match std::env::var_os("HOME") {
        Some(home) if !nix::unistd::geteuid().is_root() => {
            PathBuf::from(home).join(".local/state/shardfs")
        }
        _ => PathBuf::from("/var/log/shardfs"),
    };
    dir.join(format!("mount-{name}.log"))
}

/// Runs this same command again as a detached process and waits until it has mounted (or
/// failed), so the caller gets a live mount or a one-line error. Once mounted, it logs
/// to `log`.
fn start_in_background(args: &[OsString], log: &Path) -> anyhow::Result<()> {
    if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the log directory {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the log file {}", log.display()))?;
    let log = std::path::absolute(log).unwrap_or_else(|_| log.to_owned());
    let exe = std::env::current_exe().context("cannot find the shardfs executable")?;
    let args: Vec<_> = args.iter().skip(1).filter(|a| *a != "--background").collect();
    let mut child = Command::new(exe)
        .args(args)
        .env(BACKGROUND_CHILD, &log)
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
