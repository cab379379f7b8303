//! The `shardfs` command's ways of running: `mount --background` and `local`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shardfs_tests::{Cluster, READY_TIMEOUT, binary, is_mounted, sh};

/// Unmounts `path` on drop if a test left it mounted.
struct Unmount<'a>(&'a std::path::Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        if is_mounted(self.0) {
            let _ = Command::new("fusermount3").arg("-uz").arg(self.0).status();
        }
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn background_mount_returns_once_mounted_and_exits_on_unmount() {
    let cluster = Cluster::start(3, 2, 1);
    let mnt = cluster.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _guard = Unmount(&mnt);
    let status = Command::new(binary("shardfs"))
        .args(["mount", "--background", &cluster.metad_addr])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success());
    // Mounted by the time the command returned: no waiting needed.
    assert!(is_mounted(&mnt));
    std::fs::write(mnt.join("f"), b"background").unwrap();
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"background");
    sh(&format!("fusermount3 -u {}", mnt.display()));
    assert!(!is_mounted(&mnt));
}

#[test]
fn local_cluster_serves_stops_on_sigterm_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let data = dir.path().join("data");
    std::fs::create_dir(&mnt).unwrap();
    let _guard = Unmount(&mnt);
    for round in 0..2 {
        let mut child = Command::new(binary("shardfs"))
            .arg("local")
            .arg(&mnt)
            .arg("--data")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the local cluster to mount", || is_mounted(&mnt));
        if round == 0 {
            sh(&format!("seq 1 100000 > {}/numbers", mnt.display()));
        }
        assert_eq!(sh(&format!("tail -n1 {}/numbers", mnt.display())), "100000\n");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let mut exit = None;
        wait_for("shardfs local to exit", || {
            exit = child.try_wait().unwrap();
            exit.is_some()
        });
        assert!(exit.unwrap().success(), "exit status {exit:?}");
        assert!(!is_mounted(&mnt));
    }
}

/// Links `/sbin/mount.fuse.shardfs` to the built binary for the test's duration, as
/// `shardfs install` would, unless something is installed there already.
struct MountHelper(Option<std::path::PathBuf>);

impl MountHelper {
    fn install() -> MountHelper {
        let link = std::path::PathBuf::from("/sbin/mount.fuse.shardfs");
        if link.symlink_metadata().is_ok() {
            return MountHelper(None);
        }
        std::os::unix::fs::symlink(binary("shardfs"), &link).unwrap();
        MountHelper(Some(link))
    }
}

impl Drop for MountHelper {
    fn drop(&mut self) {
        if let Some(link) = &self.0 {
            let _ = std::fs::remove_file(link);
        }
    }
}

fn mount_line(mnt: &std::path::Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let wanted = mnt.to_string_lossy().to_string();
    mounts.lines().find(|l| l.split(' ').nth(1) == Some(wanted.as_str())).map(str::to_owned)
}

#[test]
fn mount_t_fuse_shardfs_remount_and_fstab() {
    let _helper = MountHelper::install();
    let cluster = Cluster::start(3, 2, 1);
    let mnt = cluster.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _guard = Unmount(&mnt);
    let m = mnt.display();
    let metad = &cluster.metad_addr;
    // mount(8) with generic options; the helper prints nothing and returns once mounted.
    let out = sh(&format!("mount -t fuse.shardfs -o noatime,nosuid {metad} {m} 2>&1"));
    assert_eq!(out, "");
    let line = mount_line(&mnt).expect("mounted");
    let fields: Vec<_> = line.split(' ').collect();
    assert_eq!((fields[0], fields[2]), (metad.as_str(), "fuse.shardfs"));
    assert!(fields[3].contains("noatime"), "{line}");
    sh(&format!("echo data > {m}/f"));
    // Remount read-only and back.
    sh(&format!("mount -o remount,ro {m}"));
    let err = std::fs::write(mnt.join("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    sh(&format!("mount -o remount,rw {m}"));
    sh(&format!("echo more > {m}/g"));
    sh(&format!("umount {m}"));
    assert!(mount_line(&mnt).is_none());
    // An fstab line, through a private fstab.
    let fstab = cluster.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!("{metad} {m} fuse.shardfs defaults,_netdev,cache_size=64MiB 0 0\n"),
    )
    .unwrap();
    sh(&format!("mount -T {} {m}", fstab.display()));
    assert_eq!(sh(&format!("cat {m}/f {m}/g")), "data\nmore\n");
    sh(&format!("umount {m}"));
    assert!(mount_line(&mnt).is_none());
}
