//! `-o` mount options, as given by `shardfs mount -o …`, mount(8) and /etc/fstab.

use fuser::MountOption;

use crate::core::AtimePolicy;
use nix::mount::MsFlags;

/// Options accepted and ignored: see [`MountFlags::parse`].
const IGNORED: &[&str] = &[
    "defaults",
    "lazytime",
    "nolazytime",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "nofail",
    "_netdev",
    "default_permissions",
    "fsname",
    "subtype",
    "user_id",
    "group_id",
    "rootmode",
    "fd",
    "max_read",
    "blksize",
    // A mount replays no log: metad applies every change it is sent.
    "norecovery",
];

/// Smallest write buffer a mount takes: below it, writes would be stored in pieces smaller
/// than the chunks they belong to.
const MIN_WRITE_BUFFER: u64 = 1 << 20;

/// A `write_buffer` size: a size (`16MiB`) of at least 1 MiB.
pub fn parse_write_buffer(size: &str) -> Result<u64, String> {
    let bytes = shardfs_rpc::size::parse(size)?;
    if bytes < MIN_WRITE_BUFFER {
        return Err(format!("a write buffer of {size} is below the minimum of 1MiB"));
    }
    Ok(bytes)
}

/// What a comma-separated option list asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountFlags {
    /// Options passed to the kernel with the mount.
    pub kernel: Vec<MountOption>,
    pub read_only: bool,
    pub allow_other: bool,
    /// `remount`: change the flags of an existing mount instead of mounting.
    pub remount: bool,
    /// `nonempty`: mount even on a directory that holds something, or on a mount point,
    /// hiding what is there.
    pub nonempty: bool,
    /// `cache_size=32MiB`: memory for cached chunks.
    pub cache_size: Option<u64>,
    /// `write_buffer=16MiB`: bytes an open file buffers before its whole chunks are stored
    /// in the background; as many again may be being stored (see `FsOptions`).
    pub write_buffer: Option<u64>,
    /// `secret_file=PATH`: the cluster secret.
    pub secret_file: Option<std::path::PathBuf>,
    /// `tls_ca=PATH`: connect over TLS, checking daemons against this CA certificate.
    pub tls_ca: Option<std::path::PathBuf>,
    /// `metrics_listen=ADDR`: serve this mount's Prometheus metrics at http://ADDR/metrics.
    pub metrics_listen: Option<String>,
    /// `nobatch`: send every namespace change to metad as it is made, instead of answering
    /// those under a directory's write lease here and sending them in batches (`batch`,
    /// the default; see [`MountFlags::batches`]).
    pub nobatch: bool,
}

impl MountFlags {
    /// Parses `list`; unknown options are an error so a typo in fstab is not ignored.
    pub fn parse(list: &str) -> Result<MountFlags, String> {
        let mut flags = MountFlags::default();
        for option in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (name, value) = match option.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (option, None),
            };
            match (name, value) {
                ("ro", None) => flags.read_only = true,
                ("rw", None) => flags.read_only = false,
                ("remount", None) => flags.remount = true,
                ("nonempty", None) => flags.nonempty = true,
                ("batch", None) => flags.nobatch = false,
                ("nobatch", None) => flags.nobatch = true,
                ("allow_other", None) => flags.allow_other = true,
                ("secret_file", Some(path)) => flags.secret_file = Some(path.into()),
                ("tls_ca", Some(path)) => flags.tls_ca = Some(path.into()),
                ("metrics_listen", Some(addr)) => flags.metrics_listen = Some(addr.into()),
                ("cache_size", Some(size)) => {
                    flags.cache_size = Some(shardfs_rpc::size::parse(size)?)
                }
                ("write_buffer", Some(size)) => {
                    flags.write_buffer = Some(parse_write_buffer(size)?)
                }
                ("noatime", None) => flags.kernel.push(MountOption::NoAtime),
                ("atime", None) => flags.kernel.push(MountOption::Atime),
                ("nosuid", None) => flags.kernel.push(MountOption::NoSuid),
                ("suid", None) => flags.kernel.push(MountOption::Suid),
                ("nodev", None) => flags.kernel.push(MountOption::NoDev),
                ("dev", None) => flags.kernel.push(MountOption::Dev),
                ("noexec", None) => flags.kernel.push(MountOption::NoExec),
                ("exec", None) => flags.kernel.push(MountOption::Exec),
                ("sync", None) => flags.kernel.push(MountOption::Sync),
                ("async", None) => flags.kernel.push(MountOption::Async),
                ("dirsync", None) => flags.kernel.push(MountOption::DirSync),
                ("nodiratime" | "diratime" | "relatime" | "norelatime" | "strictatime", None) => {
                    flags.kernel.push(MountOption::CUSTOM(name.into()))
                }
                // The kernel's defaults, userspace-only markers, options shardfs always
                // applies (default_permissions) or chooses itself (fsname, subtype), the
                // FUSE kernel options mount(8) copies from /proc/mounts into a remount, and
                // norecovery (nothing to recover on a mount).
                (name, _) if IGNORED.contains(&name) => {}
                (name, _) if name.starts_with("x-") => {}
                _ => return Err(format!("unknown mount option {option:?}")),
            }
        }
        Ok(flags)
    }

    /// Whether namespace changes go to metad in batches: unless `nobatch`, or `sync` or
    /// `dirsync` asks for every directory change to be durable when it returns.
    pub fn batches(&self) -> bool {
        let synchronous =
            self.kernel.iter().any(|o| matches!(o, MountOption::Sync | MountOption::DirSync));
        !self.nobatch && !synchronous
    }

    /// When reads update atime, and whether listing a directory does; the last word wins.
    pub fn atime(&self) -> (AtimePolicy, bool) {
        let (mut policy, mut dirs) = (AtimePolicy::Relative, true);
        for option in &self.kernel {
            match option {
                MountOption::NoAtime => policy = AtimePolicy::Never,
                MountOption::Atime => policy = AtimePolicy::Relative,
                MountOption::CUSTOM(name) => match name.as_str() {
                    "relatime" => policy = AtimePolicy::Relative,
                    "strictatime" | "norelatime" => policy = AtimePolicy::Always,
                    "nodiratime" => dirs = false,
                    "diratime" => dirs = true,
                    _ => {}
                },
                _ => {}
            }
        }
        (policy, dirs)
    }

    /// The `mount(2)` flags these options ask for. Like every FUSE mount, shardfs is
    /// nosuid and nodev unless `suid` or `dev` is given.
    pub fn ms_flags(&self) -> MsFlags {
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if self.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        for option in &self.kernel {
            match option {
                MountOption::Suid => flags.remove(MsFlags::MS_NOSUID),
                MountOption::Dev => flags.remove(MsFlags::MS_NODEV),
                MountOption::Atime => flags.remove(MsFlags::MS_NOATIME),
                MountOption::Exec => flags.remove(MsFlags::MS_NOEXEC),
                MountOption::Async => flags.remove(MsFlags::MS_SYNCHRONOUS),
                MountOption::NoSuid => flags |= MsFlags::MS_NOSUID,
                MountOption::NoDev => flags |= MsFlags::MS_NODEV,
                MountOption::NoAtime => flags |= MsFlags::MS_NOATIME,
                MountOption::NoExec => flags |= MsFlags::MS_NOEXEC,
                MountOption::Sync => flags |= MsFlags::MS_SYNCHRONOUS,
                MountOption::DirSync => flags |= MsFlags::MS_DIRSYNC,
                MountOption::CUSTOM(name) => match name.as_str() {
                    "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
                    "diratime" => flags.remove(MsFlags::MS_NODIRATIME),
                    "relatime" => {
                        flags.remove(MsFlags::MS_NOATIME | MsFlags::MS_STRICTATIME);
                        flags |= MsFlags::MS_RELATIME;
                    }
                    "strictatime" | "norelatime" => {
                        flags.remove(MsFlags::MS_NOATIME | MsFlags::MS_RELATIME);
                        flags |= MsFlags::MS_STRICTATIME;
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_options_translate() {
        let flags =
            MountFlags::parse("rw,ro,noatime,nosuid,_netdev,x-systemd.automount,cache_size=64MiB")
                .unwrap();
        assert!(flags.read_only && !flags.remount && !flags.allow_other);
        assert_eq!(flags.kernel, [MountOption::NoAtime, MountOption::NoSuid]);
        assert_eq!(flags.cache_size, Some(64 << 20));
        let remount = MountFlags::parse("remount,ro,nodev").unwrap();
        assert_eq!(remount.ms_flags(), MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID);
        let open = MountFlags::parse("dev,suid,sync").unwrap();
        assert_eq!(open.ms_flags(), MsFlags::MS_SYNCHRONOUS);
        // The last word wins, as with mount(8).
        let helper = MountFlags::parse("dev,suid,rw,nosuid").unwrap();
        assert_eq!(helper.ms_flags(), MsFlags::MS_NOSUID);
        let strict = MountFlags::parse("noatime,strictatime,nodiratime").unwrap();
        assert_eq!(strict.atime(), (AtimePolicy::Always, false));
        assert_eq!(MountFlags::parse("").unwrap().atime(), (AtimePolicy::Relative, true));
        let dirs = MountFlags::parse("noatime,nodiratime").unwrap();
        assert_eq!(
            dirs.ms_flags(),
            MsFlags::MS_NOATIME | MsFlags::MS_NODIRATIME | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        );
        let files = MountFlags::parse("secret_file=/etc/k,tls_ca=/etc/ca.pem").unwrap();
        assert_eq!(files.secret_file.as_deref(), Some(std::path::Path::new("/etc/k")));
        assert_eq!(files.tls_ca.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        assert!(MountFlags::parse("colour=blue").is_err());
        assert!(MountFlags::parse("cache_size=lots").is_err());
        assert_eq!(MountFlags::parse("write_buffer=32MiB").unwrap().write_buffer, Some(32 << 20));
        let small = MountFlags::parse("write_buffer=64KiB").unwrap_err();
        assert!(small.contains("below the minimum of 1MiB"), "{small}");
    }

    #[test]
    fn batches_unless_told_not_to_or_synchronous() {
        let batches = |list| MountFlags::parse(list).unwrap().batches();
        assert!(batches("") && batches("batch") && batches("nobatch,batch") && batches("async"));
        assert!(!batches("nobatch") && !batches("batch,nobatch"));
        assert!(!batches("batch,sync") && !batches("dirsync,batch"));
    }
}
