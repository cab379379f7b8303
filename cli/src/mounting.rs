//! Mounting: `shardfs mount` (in the foreground or background, and as mount(8)'s helper)
//! and `shardfs local`.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use shardfs::local::{LocalCluster, LocalSettings};
use shardfs_fs::core::Fs;
use shardfs_fs::mount::{self};
use shardfs_fs::mount_record::{self, MountRecord};
use shardfs_metad::daemon::{self as metad, ClassArgs};
use shardfs_metad::store::VolumeOverrides;
use shardfs_rpc::ClientOptions;

use crate::args::{ClientArgs, SecretArgs};
use crate::runtime;

/// Set in the environment of the process `mount --background` starts: the log file it
/// writes once mounted.
pub(crate) const BACKGROUND_CHILD: &str = "SHARDFS_BACKGROUND_LOG";
/// What that process prints on stdout once the mount is live.
pub(crate) const READY_LINE: &str = "shardfs-mount-ready";

/// `shardfs mount`: mounts and serves in the foreground, or starts that in the background.
pub(crate) fn mount_command(
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
    crate::release_freed_memory(&runtime);
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
pub(crate) fn leave_record(
    mountpoint: &Path,
    mut record: MountRecord,
) -> Option<mount_record::Recorded> {
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
pub(crate) fn local_command(
    mountpoint: &Path,
    data: &Path,
    (chunkds, metads): (Option<usize>, usize),
    (classes, chunk_size): (&ClassArgs, Option<u64>),
    client: &ClientArgs,
) -> anyhow::Result<()> {
    mount::check_new_mountpoint(mountpoint, client.flags().nonempty)?;
    let (hot, cold) = classes.classes()?;
    let hot_cold = [hot.unwrap_or(metad::DEFAULT_HOT), cold.unwrap_or(metad::DEFAULT_COLD)];
    let needed = hot_cold.iter().map(|class| class.total()).max().unwrap_or(0);
    let chunkds = chunkds.unwrap_or(needed + 2);
    if chunkds < needed {
        bail!("{chunkds} chunkds cannot hold {needed} shards per chunk on distinct daemons");
    }
    let volume = VolumeOverrides { hot, cold, chunk_size };
    let settings = LocalSettings { metads, ..LocalSettings::new(data, chunkds, volume) };
    let runtime = runtime()?;
    crate::release_freed_memory(&runtime);
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
pub(crate) fn mount_helper_args() -> Option<Vec<OsString>> {
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

/// In the process started by `--background`, tells the parent the mount is live and
/// detaches from its pipes: from here on it logs to its log file.
pub(crate) fn announce_ready() {
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
pub(crate) fn default_log(mountpoint: &Path) -> PathBuf {
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
pub(crate) fn start_in_background(args: &[OsString], log: &Path) -> anyhow::Result<()> {
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
