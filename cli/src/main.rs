//! `shardfs`: mount a shardfs namespace, run a whole local cluster, or look after one.

mod args;
mod bench;
mod class;
mod fsck;
mod group;
mod info;
mod install;
mod maintenance;
mod mounting;
mod progress;
mod status;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use crate::args::{ChunkdCommands, ClassCommands, Cli, Commands};
use crate::maintenance::{GcReport, ScrubReport, drain, gc, metad_command, report, scrub};
use crate::mounting::{default_log, local_command, mount_command, mount_helper_args};
use anyhow::Context;
use clap::Parser;
use shardfs_fs::mount_record::{self};

/// glibc malloc arenas per process. Its default (8 per core) lets every thread of the async
/// runtime keep its own arena of freed chunk and shard buffers: writing 1 GiB peaked at
/// 573 MiB of RSS with a 256 MiB chunk cache, 403 MiB with 2 arenas
/// (docs/performance.md).
const MALLOC_ARENAS: i32 = 2;

fn main() -> ExitCode {
    // SAFETY: mallopt only changes allocator settings; called before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
    let args: Vec<OsString> = mount_helper_args().unwrap_or_else(|| std::env::args_os().collect());
    let cli = Cli::parse_from(&args);
    // `shardfs local --metads N` runs openraft, which warns of every message it drops as
    // stale (RUST_LOG=openraft=warn shows them).
    shardfs_rpc::cli::init_logging("warn,openraft=off");
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
        Commands::Class { command: ClassCommands::Get { path } } => {
            println!("{}: {}", path.display(), class::get(&path)?);
            Ok(ExitCode::SUCCESS)
        }
        Commands::Class { command: ClassCommands::Set { path, policy } } => {
            class::set(&path, &policy)?;
            Ok(ExitCode::SUCCESS)
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
                fio_runtime_secs: args.fio_runtime,
                small_files: args.small_files,
                small_dirs: args.small_dirs,
                small_file_bytes: 4096,
                tree: args.tree,
                groups: args.only,
            };
            let progress = !args.json && std::io::stderr().is_terminal();
            let report =
                crate::bench::run(&config, &args.dir, &args.compare, args.rounds, progress)?;
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
        Commands::Local { mountpoint, data, chunkds, metads, classes, chunk_size, client } => {
            let volume = (&classes, chunk_size);
            local_command(&mountpoint, &data, (chunkds, metads.into()), volume, &client)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How often a serving mount hands memory glibc holds freed back to the system.
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Hands freed memory back to the system every [`TRIM_INTERVAL`] for as long as `runtime`
/// runs. glibc keeps freed chunk and shard buffers in its arenas, where a later phase of work
/// (reads after writes) may not reuse them, so a mount's resident size would add up the
/// peaks of its phases (bench: 204 MiB over three rounds of fio, 139 and 142 MiB for writing
/// and reading alone; docs/performance.md).
pub(crate) fn release_freed_memory(runtime: &tokio::runtime::Runtime) {
    runtime.spawn(async {
        let mut ticks = tokio::time::interval(TRIM_INTERVAL);
        loop {
            ticks.tick().await;
            // SAFETY: malloc_trim only returns free memory to the system; it takes the
            // allocator's own locks.
            let _ = shardfs_rpc::sync::blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Bounds metad's threads when it runs here (`shardfs local`), as it does alone.
        .max_blocking_threads(shardfs_metad::daemon::MAX_BLOCKING_THREADS)
        .build()
        .context("cannot start the async runtime")
}
