//! The command line: its commands and their arguments.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use shardfs_fs::core::{Fs, FsOptions};
use shardfs_fs::mount::MountOptions;
use shardfs_fs::mount_record::MountRecord;
use shardfs_fs::options::MountFlags;
use shardfs_rpc::{ClientOptions, ClusterKey, TlsClient};

#[derive(Subcommand)]
pub(crate) enum ClassCommands {
    /// Print the policy PATH states, or that it follows the volume's default.
    Get { path: PathBuf },
    /// Set PATH's policy: hot (never moved to the cold class), cold (written straight to
    /// it), a class (written in and kept in it), or default (the volume's hot class, then
    /// its cold class after the lifecycle age).
    Set { path: PathBuf, policy: String },
}

#[derive(Subcommand)]
pub(crate) enum ChunkdCommands {
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
pub(crate) enum MetadCommands {
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
    /// Add a replica to a metad group while it serves: start shardfs-metad on the new host
    /// with an empty --data, --listen ADDR and --replicas naming the group (not ADDR), then
    /// run this. It joins as a learner, copies the log, and once caught up votes.
    Add {
        /// The new replica's address, as its --listen.
        addr: String,
        /// Keep it a learner: a copy that never votes, e.g. for disaster recovery in another
        /// zone (see `shardfs metad promote`).
        #[arg(long)]
        learner: bool,
        #[command(flatten)]
        group: GroupArgs,
    },
    /// Remove a replica (voter or learner) from a metad group while it serves; stop it
    /// afterwards.
    Remove {
        /// The replica's address.
        addr: String,
        #[command(flatten)]
        group: GroupArgs,
    },
    /// Disaster recovery: when every voter of a group is lost for good, make the learner at
    /// ADDR a new group of one, with what it had applied (shown as its lag beforehand by
    /// `shardfs metad members`). Refused while any voter answers.
    Promote {
        /// The learner's address.
        addr: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Every replica of a metad group: role, membership, log, applied entries, lag and last
    /// contact, asked of each (no leader needed; exits 1 when none leads).
    Members {
        #[command(flatten)]
        group: GroupArgs,
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

/// shardfs: a distributed POSIX filesystem with erasure-coded, BLAKE3-addressed chunks.
#[derive(Parser)]
#[command(version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Commands,
}

#[derive(Subcommand)]
pub(crate) enum Commands {
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
    /// A metad group's members (add, remove, promote, members), and metad's database
    /// (backup, restore: run on the metad host).
    Metad {
        #[command(subcommand)]
        command: MetadCommands,
    },
    /// Show or set the storage class policy of a file or directory (what is made in a
    /// directory inherits it): hot, cold, or a class as replicas(3), rs(4,2), lrc(6,2,2).
    Class {
        #[command(subcommand)]
        command: ClassCommands,
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
    /// sequential and random I/O, small files, and a real tree; with `--only fio`, fio's
    /// sequential and random jobs.
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
        /// Number of chunk daemons [default: the most shards a class has + 2, 8 for
        /// rs(4,2), so writes go on at full redundancy with one or two of them lost].
        #[arg(long)]
        chunkds: Option<usize>,
        /// metad replicas: 1 runs metad alone; 3 or 5 run a group of replicas that fails
        /// over when one (two) is lost.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=7))]
        metads: u8,
        #[command(flatten)]
        classes: shardfs_metad::daemon::ClassArgs,
        /// Chunk size, e.g. 4MiB (new volume default).
        #[arg(long, value_parser = shardfs_rpc::size::parse)]
        chunk_size: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// What `shardfs bench` runs.
#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Directory to measure (a shardfs mount, or any other directory).
    pub(crate) dir: PathBuf,
    /// Another directory to measure in the same run, alternating rounds (A B A B …), e.g. a
    /// local ext4 directory; the report adds how fast DIR is relative to it. May be given
    /// again, e.g. for a FUSE passthrough of the same ext4 directory (`bindfs
    /// --multithreaded`): each is compared with DIR.
    #[arg(long)]
    pub(crate) compare: Vec<PathBuf>,
    /// Rounds per directory; the report shows medians.
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Size of the sequentially written and read file (fio's too), e.g. 1GiB.
    #[arg(long, value_parser = shardfs_rpc::size::parse, default_value = "1GiB")]
    pub(crate) file_size: u64,
    /// Random 4 KiB reads per random-read workload.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) random_reads: usize,
    /// Seconds each of fio's random-read jobs runs (`--only fio`).
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    pub(crate) fio_runtime: u64,
    /// Small files to create, stat, read and delete.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) small_files: usize,
    /// Directories the small files are spread over.
    #[arg(long, default_value_t = 50)]
    pub(crate) small_dirs: usize,
    /// A real tree to copy (cp -a), compare (diff -r) and remove (rm -rf).
    #[arg(long, default_value = "/usr/include")]
    pub(crate) tree: PathBuf,
    /// Run only these groups of workloads (comma-separated). `fio` is not run by default:
    /// with fio installed, `--only fio` runs fio's jobs on a file of --file-size: a 1 MiB
    /// sequential write ending in one fsync and a cold sequential read (MiB/s), then cold
    /// random 4 KiB reads for --fio-runtime seconds by 1 job and by 4 (IOPS).
    #[arg(long, value_delimiter = ',', default_value = "data,random,small,tree")]
    pub(crate) only: Vec<crate::bench::Group>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What `shardfs fsck` checks and how it reports.
#[derive(Args)]
pub(crate) struct FsckArgs {
    /// metad address, e.g. 127.0.0.1:7000.
    pub(crate) metad: String,
    /// Fix what can be fixed safely (link counts, refcounts, dangling entries, …).
    #[arg(long)]
    pub(crate) repair: bool,
    /// Also read back every shard and count the verified ones per chunk.
    #[arg(long)]
    pub(crate) verify_data: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

/// A metad group's replicas, as a command about the group takes them.
#[derive(Args)]
pub(crate) struct GroupArgs {
    /// The group's replicas, e.g. 10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000.
    #[arg(long, value_delimiter = ',', value_name = "ADDRS", required = true)]
    pub(crate) metad: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

/// Where a client finds the cluster secret, and the CA of a cluster that uses TLS.
#[derive(Args)]
pub(crate) struct SecretArgs {
    /// The cluster secret (the file metad created, mode 0600) [default:
    /// /etc/shardfs/cluster.key].
    #[arg(long, env = "SHARDFS_SECRET_FILE", value_name = "FILE")]
    pub(crate) secret_file: Option<PathBuf>,
    /// PEM certificate of the cluster CA, for a cluster whose daemons run with --tls-cert:
    /// connect over TLS and check each daemon's certificate against it.
    #[arg(long, env = "SHARDFS_TLS_CA", value_name = "FILE")]
    pub(crate) tls_ca: Option<PathBuf>,
}

/// Where clients look for the cluster secret when not told.
pub(crate) const DEFAULT_SECRET_FILE: &str = "/etc/shardfs/cluster.key";

impl SecretArgs {
    /// Connection options proving the secret at `--secret-file` over TLS to `--tls-ca`'s
    /// cluster; a mount's `-o secret_file=` and `-o tls_ca=` in `flags` win.
    pub(crate) fn rpc(&self, flags: Option<&MountFlags>) -> anyhow::Result<ClientOptions> {
        let (secret, ca) = self.files(flags);
        let tls = match ca {
            Some(ca) => Some(TlsClient::load(&ca)?),
            None => None,
        };
        Ok(ClientOptions { tls, ..ClientOptions::with_key(ClusterKey::load(&secret)?) })
    }

    /// The secret file and TLS CA chosen: a mount's options, else the flags, else (for
    /// the secret) the default.
    pub(crate) fn files(&self, flags: Option<&MountFlags>) -> (PathBuf, Option<PathBuf>) {
        let chosen = |f: fn(&MountFlags) -> Option<&PathBuf>| flags.and_then(f).cloned();
        let secret = chosen(|f| f.secret_file.as_ref())
            .or(self.secret_file.clone())
            .unwrap_or(PathBuf::from(DEFAULT_SECRET_FILE));
        (secret, chosen(|f| f.tls_ca.as_ref()).or(self.tls_ca.clone()))
    }

    /// These flags, with what a mount's record names where they name nothing.
    pub(crate) fn or_recorded(&self, record: &MountRecord) -> SecretArgs {
        SecretArgs {
            secret_file: self.secret_file.clone().or(Some(record.secret_file.clone())),
            tls_ca: self.tls_ca.clone().or(record.tls_ca.clone()),
        }
    }
}

#[derive(Args)]
pub(crate) struct ClientArgs {
    /// Memory for cached chunks [default: 32MiB].
    #[arg(long, value_parser = shardfs_rpc::size::parse)]
    pub(crate) cache_size: Option<u64>,
    /// Bytes an open file buffers before its whole chunks are stored in the background (as
    /// many again may be being stored), at least 1MiB [default: 16MiB].
    #[arg(long, value_parser = shardfs_fs::options::parse_write_buffer)]
    pub(crate) write_buffer: Option<u64>,
    /// Allow other users to access the mount.
    #[arg(long)]
    pub(crate) allow_other: bool,
    /// Mount read-only.
    #[arg(long)]
    pub(crate) read_only: bool,
    /// Serve this mount's Prometheus metrics at http://ADDR/metrics (port 0 picks one,
    /// logged at start).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_listen: Option<String>,
    /// Mount options as in fstab: ro, noatime, nosuid, nodev, noexec, sync, dirsync,
    /// allow_other, cache_size=SIZE, write_buffer=SIZE, secret_file=PATH, tls_ca=PATH,
    /// metrics_listen=ADDR,
    /// remount, … (comma-separated).
    #[arg(short = 'o', long = "options", value_parser = MountFlags::parse)]
    pub(crate) options: Option<MountFlags>,
}

impl ClientArgs {
    pub(crate) fn flags(&self) -> MountFlags {
        let mut flags = self.options.clone().unwrap_or_default();
        flags.read_only |= self.read_only;
        flags.allow_other |= self.allow_other;
        flags.cache_size = self.cache_size.or(flags.cache_size);
        flags.write_buffer = self.write_buffer.or(flags.write_buffer);
        flags.metrics_listen = self.metrics_listen.clone().or(flags.metrics_listen);
        flags
    }

    /// Serves `fs`'s metrics in the background, if asked to.
    pub(crate) fn serve_metrics(
        &self,
        runtime: &tokio::runtime::Runtime,
        fs: &Arc<Fs>,
    ) -> anyhow::Result<()> {
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

    pub(crate) fn fs_options(&self, rpc: ClientOptions) -> FsOptions {
        let defaults = FsOptions::default();
        let cache = self.flags().cache_size.map_or(defaults.chunk_cache_bytes, |c| c as usize);
        let buffer = self.flags().write_buffer.map_or(defaults.dirty_flush_bytes, |b| b as usize);
        let (atime, dir_atime) = self.flags().atime();
        let batch = self.flags().batches();
        FsOptions {
            chunk_cache_bytes: cache,
            dirty_flush_bytes: buffer,
            atime,
            dir_atime,
            batch,
            rpc,
        }
    }

    pub(crate) fn mount_options(&self, source: String) -> MountOptions {
        MountOptions { flags: self.flags(), source: Some(source) }
    }
}
