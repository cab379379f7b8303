//! `shardfs install`: puts the three binaries, the mount(8) helper, the systemd units and the
//! operations guide in place, under an optional root (a package build, a test).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;

/// The binaries, found beside the running `shardfs`.
const BINARIES: [&str; 3] = ["shardfs", "shardfs-metad", "shardfs-chunkd"];

/// Unit files, with `@BINDIR@` standing for where the binaries go.
const UNITS: [(&str, &str); 2] = [
    ("shardfs-metad.service", include_str!("../../deploy/systemd/shardfs-metad.service")),
    ("shardfs-chunkd@.service", include_str!("../../deploy/systemd/shardfs-chunkd@.service")),
];

/// An example mount unit, and the guide the units point to.
const DOCS: [(&str, &str); 2] = [
    ("examples/mnt-shardfs.mount", include_str!("../../deploy/systemd/mnt-shardfs.mount")),
    ("operations.md", include_str!("../../docs/operations.md")),
];

/// One file or link put in place.
#[derive(Debug, Serialize)]
pub struct Installed {
    pub path: PathBuf,
    pub what: &'static str,
}

/// Installs under `root` (`/` for the running system) with binaries in `prefix/bin`, copying
/// them from `from` (the directory of the running `shardfs`). Safe to run again: every file
/// is replaced whole (written aside, then renamed), so running daemons keep their binary.
pub fn install(root: &Path, prefix: &Path, from: &Path) -> anyhow::Result<Vec<Installed>> {
    if !prefix.is_absolute() {
        bail!("--prefix {} is not an absolute path", prefix.display());
    }
    let under_root = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
    let bindir = prefix.join("bin");
    let mut done = Vec::new();
    for name in BINARIES {
        let source = from.join(name);
        let bytes = std::fs::read(&source).with_context(|| {
            format!(
                "cannot read {} (install runs from the directory the build left)",
                source.display()
            )
        })?;
        let target = under_root(&bindir.join(name));
        put(&target, &bytes, 0o755)?;
        done.push(Installed { path: target, what: "binary" });
    }
    // mount(8) runs /sbin/mount.fuse.shardfs for `-t fuse.shardfs` and fstab lines.
    let helper = under_root(Path::new("/sbin/mount.fuse.shardfs"));
    link(&bindir.join("shardfs"), &helper)?;
    done.push(Installed { path: helper, what: "mount helper" });
    let bin = bindir.display().to_string();
    for (name, text) in UNITS {
        let target = under_root(Path::new("/etc/systemd/system")).join(name);
        put(&target, text.replace("@BINDIR@", &bin).as_bytes(), 0o644)?;
        done.push(Installed { path: target, what: "systemd unit" });
    }
    for (name, text) in DOCS {
        let target = under_root(&prefix.join("share/doc/shardfs")).join(name);
        put(&target, text.as_bytes(), 0o644)?;
        done.push(Installed { path: target, what: "documentation" });
    }
    // Where the secret and per-daemon settings live; only root may read it.
    let config = under_root(Path::new("/etc/shardfs"));
    std::fs::create_dir_all(&config)
        .and_then(|()| std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o700)))
        .with_context(|| format!("cannot create {}", config.display()))?;
    done.push(Installed { path: config, what: "configuration directory" });
    Ok(done)
}

/// Writes `bytes` to `target` with `mode`, replacing it whole.
fn put(target: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = target.parent().expect("an installed file has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let aside = dir.join(format!(
        ".{}.installing",
        target.file_name().expect("a file name").to_string_lossy()
    ));
    std::fs::write(&aside, bytes)
        .and_then(|()| std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&aside, target))
        .with_context(|| format!("cannot install {}", target.display()))
}

/// Makes `link` a symbolic link to `to`, replacing whatever is there.
fn link(to: &Path, link: &Path) -> anyhow::Result<()> {
    let dir = link.parent().expect("a link has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let aside = dir.join(".mount.fuse.shardfs.installing");
    let _ = std::fs::remove_file(&aside);
    std::os::unix::fs::symlink(to, &aside)
        .and_then(|()| std::fs::rename(&aside, link))
        .with_context(|| format!("cannot link {} to {}", link.display(), to.display()))
}
