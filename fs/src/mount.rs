//! Mounting: turn a connected [`Fs`] into a live FUSE mount and serve it until it is
//! unmounted or the process is asked to stop.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use fuser::{MountOption, Session, SessionACL};
use tokio::runtime::Runtime;
use tracing::{info, warn};

use crate::core::Fs;
use crate::fuse::FuseAdapter;

/// Threads reading requests from /dev/fuse. Requests are answered on tokio tasks, so these
/// threads only read and dispatch.
const FUSE_THREADS: usize = 2;

#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Let users other than the mounting one use the mount (`allow_other`).
    pub allow_other: bool,
    pub read_only: bool,
    /// Shown as the mount's source in /proc/mounts; the metad address by default.
    pub source: Option<String>,
}

/// Checks that `mountpoint` can be mounted on, with a one-line reason if not.
pub fn check_mountpoint(mountpoint: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(mountpoint) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => bail!("mountpoint {} is not a directory", mountpoint.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mountpoint {} does not exist", mountpoint.display())
        }
        Err(e) => bail!("mountpoint {}: {e}", mountpoint.display()),
    }
}

/// Mounts `fs` at `mountpoint`, calls `ready` once the mount is live, and serves until the
/// filesystem is unmounted or SIGINT/SIGTERM arrives (which unmounts it).
pub fn serve(
    runtime: &Runtime,
    fs: Arc<Fs>,
    mountpoint: &Path,
    options: &MountOptions,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    check_mountpoint(mountpoint)?;
    let source = options.source.clone().unwrap_or_else(|| "shardfs".into());
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(source),
        MountOption::Subtype("shardfs".into()),
        MountOption::DefaultPermissions,
    ];
    if options.read_only {
        config.mount_options.push(MountOption::RO);
    }
    if options.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    let adapter = FuseAdapter::new(fs, runtime.handle().clone());
    let mut session = Session::new(adapter, mountpoint, &config)
        .with_context(|| format!("cannot mount at {}", mountpoint.display()))?;
    let mut unmounter = session.unmount_callable();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    let serving = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let result = session.run();
            let _ = ended_tx.send(());
            result
        })?;
    info!(mountpoint = %mountpoint.display(), "mounted");
    ready();
    let stopped_by_signal = runtime.block_on(async {
        tokio::select! {
            _ = shutdown_signal() => true,
            _ = ended_rx => false,
        }
    });
    if stopped_by_signal {
        info!("signal received, unmounting");
        if let Err(e) = unmounter.unmount() {
            warn!("unmount failed: {e}");
        }
    }
    match serving.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("FUSE session ended with an error: {e}"),
        Err(_) => bail!("FUSE session thread panicked"),
    }
    info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            warn!("cannot watch SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
