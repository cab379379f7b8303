//! Mounting: turn a connected [`Fs`] into a live FUSE mount and serve it until it is
//! unmounted or the process is asked to stop.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use fuser::{MountOption, Session, SessionACL};
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, umount2};
use nix::sys::stat::Mode;
use tokio::runtime::Runtime;
use tracing::{info, warn};

use crate::core::Fs;
use crate::fuse::FuseAdapter;
use crate::options::MountFlags;

/// Threads reading requests from /dev/fuse. Requests are answered on tokio tasks, so these
/// threads only read and dispatch.
const FUSE_THREADS: usize = 2;

#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    pub flags: MountFlags,
    /// Shown as the mount's source in /proc/mounts; the metad address by default.
    pub source: Option<String>,
}

/// Filesystem type in /proc/mounts: `fuse.shardfs`, so mount(8) and umount(8) find the
/// `mount.fuse.shardfs` helper for remounts.
const FS_SUBTYPE: &str = "shardfs";

/// Undoes a mount.
type Unmount = Box<dyn FnMut() -> std::io::Result<()> + Send>;

/// Mounts FUSE at `mountpoint` with mount(2) under the type `fuse.shardfs`, returning the
/// /dev/fuse descriptor to serve. Needs root (EPERM otherwise).
fn mount_directly(
    mountpoint: &Path,
    source: &str,
    flags: &MountFlags,
) -> Result<OwnedFd, nix::errno::Errno> {
    let fd = nix::fcntl::open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
    let root_mode = nix::sys::stat::stat(mountpoint)?.st_mode & libc::S_IFMT;
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={},group_id={},default_permissions",
        fd.as_raw_fd(),
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    if flags.allow_other {
        data.push_str(",allow_other");
    }
    let fs_type = format!("fuse.{FS_SUBTYPE}");
    nix::mount::mount(
        Some(source),
        mountpoint,
        Some(fs_type.as_str()),
        flags.ms_flags(),
        Some(data.as_str()),
    )?;
    Ok(fd)
}

/// Changes the flags (ro, nosuid, …) of the shardfs mount at `mountpoint`.
pub fn remount(mountpoint: &Path, flags: &MountFlags) -> anyhow::Result<()> {
    let ms_flags = flags.ms_flags() | MsFlags::MS_REMOUNT;
    nix::mount::mount(None::<&str>, mountpoint, None::<&str>, ms_flags, None::<&str>)
        .with_context(|| format!("cannot remount {}", mountpoint.display()))
}

/// Checks that `mountpoint` is a directory, with a one-line reason if not.
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

/// Checks that mounting on `mountpoint` hides nothing: it is a directory, not a mount point
/// already, and empty unless `nonempty` allows otherwise (as `-o nonempty` does).
pub fn check_new_mountpoint(mountpoint: &Path, nonempty: bool) -> anyhow::Result<()> {
    check_mountpoint(mountpoint)?;
    let shown = mountpoint.display();
    let path = mountpoint.canonicalize().with_context(|| format!("mountpoint {shown}"))?;
    if is_mount_point(&path)? && !nonempty {
        bail!("{shown} is already a mount point (unmount it first, or add -o nonempty)");
    }
    let mut entries = std::fs::read_dir(&path).with_context(|| format!("mountpoint {shown}"))?;
    if entries.next().is_some() && !nonempty {
        bail!("mountpoint {shown} is not empty (the mount would hide it; add -o nonempty)");
    }
    Ok(())
}

/// Whether `path` (canonical) is where a filesystem is mounted, per /proc/self/mountinfo.
pub(crate) fn is_mount_point(path: &Path) -> anyhow::Result<bool> {
    let wanted = path.to_string_lossy();
    Ok(crate::mountinfo::mounts()?.iter().any(|m| m.point == wanted))
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
    check_new_mountpoint(mountpoint, options.flags.nonempty)?;
    let source = options.source.clone().unwrap_or_else(|| "shardfs".into());
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(source.clone()),
        MountOption::Subtype(FS_SUBTYPE.into()),
        MountOption::DefaultPermissions,
    ];
    config.mount_options.extend(options.flags.kernel.iter().cloned());
    if options.flags.read_only {
        config.mount_options.push(MountOption::RO);
    }
    if options.flags.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    let leases = fs.leases();
    let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone(), options.flags.read_only);
    let cannot_mount = || format!("cannot mount at {}", mountpoint.display());
    let (session, mut unmount): (Session<FuseAdapter>, Unmount) =
        match mount_directly(mountpoint, &source, &options.flags) {
            Ok(fd) => {
                let session = Session::from_fd(adapter, fd, config.acl, config.clone())
                    .with_context(cannot_mount)?;
                let path = mountpoint.to_path_buf();
                (session, Box::new(move || Ok(umount2(&path, MntFlags::MNT_DETACH)?)))
            }
            // Not root: fusermount3, which is setuid root, mounts on our behalf.
            Err(nix::errno::Errno::EPERM) => {
                let mut session =
                    Session::new(adapter, mountpoint, &config).with_context(cannot_mount)?;
                let mut unmounter = session.unmount_callable();
                (session, Box::new(move || unmounter.unmount()))
            }
            Err(e) => return Err(std::io::Error::from(e)).with_context(cannot_mount),
        };
    // Recalled leases drop what the kernel caches through it.
    leases.set_notifier(session.notifier());
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    let serving = std::thread::Builder::new().name("fuse-session".into()).spawn(move || {
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
        if let Err(e) = unmount() {
            warn!("unmount failed: {e}");
        }
    }
    match serving.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("FUSE session ended with an error: {e}"),
        Err(_) => bail!("FUSE session thread panicked"),
    }
    // Other mounts need not wait for this one's leases to expire.
    runtime.block_on(fs.close());
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
