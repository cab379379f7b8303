//! The `shardfs` command's ways of running: `mount --background` and `local`.

use std::process::{Command, Stdio};

use shardfs_tests::{Cluster, binary, eventually, is_mounted, sh};

/// Unmounts `path` on drop if a test left it mounted.
struct Unmount<'a>(&'a std::path::Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        if is_mounted(self.0) {
            let _ = Command::new("fusermount3").arg("-uz").arg(self.0).status();
        }
    }
}

#[test]
fn background_mount_returns_once_mounted_and_exits_on_unmount() {
    let cluster = Cluster::start(3, 2, 1);
    let mnt = cluster.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _guard = Unmount(&mnt);
    let log = cluster.dir.path().join("logs/mount.log");
    let status = cluster
        .command("shardfs")
        .args(["mount", "--background", &cluster.metad_addr, "--log-file"])
        .args([&log, &mnt])
        .env("RUST_LOG", "info")
        .status()
        .unwrap();
    assert!(status.success());
    // Mounted by the time the command returned: no waiting needed.
    assert!(is_mounted(&mnt));
    std::fs::write(mnt.join("f"), b"background").unwrap();
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"background");
    sh(&format!("fusermount3 -u {}", mnt.display()));
    assert!(!is_mounted(&mnt));
    // What it logged once detached went to its log file, as plain text.
    eventually("the unmount to be logged", || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("unmounted")
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\x1b'), "colour codes in the log file:\n{text}");
}

#[test]
fn local_cluster_serves_stops_on_sigterm_and_keeps_data() {
    local_cluster_keeps_data(&[]);
}

/// The same with metad as a group of three replicas (`--metads 3`): they listen where they
/// did when started again, so the group is the same group.
#[test]
fn a_local_group_of_three_metads_serves_and_keeps_data() {
    let data = local_cluster_keeps_data(&["--metads", "3"]);
    let replicas = std::fs::read_to_string(data.path().join("data/metad-replicas")).unwrap();
    assert_eq!(replicas.lines().count(), 3, "{replicas}");
    for i in 0..3 {
        assert!(data.path().join(format!("data/metad-{i}/raft-log.db")).exists());
    }
}

/// Runs `shardfs local` twice on one data directory; returns the directory.
fn local_cluster_keeps_data(args: &[&str]) -> tempfile::TempDir {
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
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        eventually("the local cluster to mount", || is_mounted(&mnt));
        if round == 0 {
            sh(&format!("seq 1 100000 > {}/numbers", mnt.display()));
        }
        assert_eq!(sh(&format!("tail -n1 {}/numbers", mnt.display())), "100000\n");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let mut exit = None;
        eventually("shardfs local to exit", || {
            exit = child.try_wait().unwrap();
            exit.is_some()
        });
        assert!(exit.unwrap().success(), "exit status {exit:?}");
        assert!(!is_mounted(&mnt));
    }
    drop(_guard);
    dir
}

#[test]
fn mount_t_fuse_shardfs_remount_and_fstab() {
    let cluster = Cluster::start(3, 2, 1);
    let mnt = cluster.dir.path().join("mnt");
    let fstab = cluster.dir.path().join("fstab");
    std::fs::create_dir(&mnt).unwrap();
    let (m, metad, key) = (mnt.display(), &cluster.metad_addr, cluster.secret_file());
    let key = key.display();
    std::fs::write(
        &fstab,
        format!(
            "{metad} {m} fuse.shardfs defaults,_netdev,cache_size=64MiB,secret_file={key} 0 0\n"
        ),
    )
    .unwrap();
    // mount(8) finds its helper at /sbin/mount.fuse.shardfs. The test installs the binary
    // under test there in a private mount namespace, so nothing outside it changes; the
    // mount's log (/var/log/shardfs) and record (/run/shardfs) go to tmpfs there too.
    let script = format!(
        r#"
        set -eu
        trap 'umount -l {m} 2>/dev/null || true' EXIT
        mount -t tmpfs shardfs-test-sbin /usr/sbin
        mount -t tmpfs shardfs-test-log /var/log
        mkdir -p /run/shardfs
        mount -t tmpfs shardfs-test-run /run/shardfs
        ln -s {bin} /usr/sbin/mount.fuse.shardfs
        # The helper prints nothing and returns once the mount is usable.
        out=$(mount -t fuse.shardfs -o noatime,nosuid,secret_file={key} {metad} {m} 2>&1)
        [ -z "$out" ] || {{ echo "helper printed: $out"; exit 1; }}
        grep " {m} " /proc/mounts
        echo data > {m}/f
        mount -o remount,ro {m}
        if echo x 2>/dev/null > {m}/g; then echo "wrote to a read-only mount"; exit 1; fi
        mount -o remount,rw {m}
        echo more > {m}/g
        umount {m}
        if grep -q " {m} " /proc/mounts; then echo "still mounted"; exit 1; fi
        mount -T {fstab} {m}
        cat {m}/f {m}/g
        umount {m}
        echo done
        "#,
        bin = binary("shardfs").display(),
        fstab = fstab.display(),
    );
    let output = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let mut lines = stdout.lines();
    let fields: Vec<_> = lines.next().unwrap().split(' ').collect();
    assert_eq!((fields[0], fields[2]), (metad.as_str(), "fuse.shardfs"));
    assert!(fields[3].contains("noatime") && fields[3].contains("nosuid"), "{fields:?}");
    // mount(8) drops `dev` as a default; the helper keeps the local-disk default of dev.
    assert!(!fields[3].contains("nodev"), "{fields:?}");
    assert_eq!(lines.collect::<Vec<_>>(), ["data", "more", "done"]);
    assert!(!is_mounted(&mnt));
}

#[test]
fn install_puts_binaries_helper_units_and_guide_in_place() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let install = || {
        let out = Command::new(binary("shardfs"))
            .args(["install", "--json", "--root"])
            .arg(root.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    install();
    // Again, as an upgrade would: every file is replaced, nothing fails.
    let listed = install();
    assert_eq!(listed.as_array().unwrap().len(), 9, "{listed}");
    let at = |path: &str| root.path().join(path);
    for name in ["shardfs", "shardfs-metad", "shardfs-chunkd"] {
        let installed = at(&format!("usr/local/bin/{name}"));
        assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(binary(name)).unwrap());
        assert_eq!(std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777, 0o755);
    }
    let helper = std::fs::read_link(at("sbin/mount.fuse.shardfs")).unwrap();
    assert_eq!(helper, std::path::Path::new("/usr/local/bin/shardfs"));
    let metad = std::fs::read_to_string(at("etc/systemd/system/shardfs-metad.service")).unwrap();
    assert!(metad.contains("ExecStart=/usr/local/bin/shardfs-metad --data"), "{metad}");
    assert!(at("usr/local/share/doc/shardfs/operations.md").exists());
    let config = std::fs::metadata(at("etc/shardfs")).unwrap();
    assert_eq!(config.permissions().mode() & 0o777, 0o700);
    // systemd's own check of the units, with the binaries where the units expect them (in a
    // private mount namespace, so nothing outside the test changes).
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        println!("systemd-analyze is not installed: units not verified by systemd");
        return;
    }
    let script = format!(
        r#"
        set -eu
        mount -t tmpfs shardfs-test-bin /usr/local
        mkdir /usr/local/bin
        ln -s {root}/usr/local/bin/* /usr/local/bin/
        mkdir -p /tmp/units-$$
        cp {root}/etc/systemd/system/shardfs-metad.service /tmp/units-$$/
        cp {root}/etc/systemd/system/shardfs-chunkd@.service /tmp/units-$$/shardfs-chunkd@disk1.service
        systemd-analyze verify /tmp/units-$$/shardfs-metad.service /tmp/units-$$/shardfs-chunkd@disk1.service
        rm -r /tmp/units-$$
        "#,
        root = root.path().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c", &script])
        .output()
        .unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn daemons_take_settings_from_a_toml_file_under_their_flags() {
    let dir = tempfile::tempdir().unwrap();
    let metad = dir.path().join("metad.toml");
    // GC settings the harness does not pass: they come from the file.
    std::fs::write(&metad, "gc-grace = 0.5\ngc_interval = 0.1\n").unwrap();
    let chunkd = dir.path().join("chunkd.toml");
    // The harness passes --heartbeat-interval 0.3, which must win over the file's 30 s
    // (with which metad would count the chunkds down after 2 s).
    std::fs::write(&chunkd, "zone = \"rack-z\"\nheartbeat-interval = 30\n").unwrap();
    let mut cluster = Cluster::start_with(3, 2, 1, &["--config", metad.to_str().unwrap()]);
    cluster.chunkd_args = vec!["--config".into(), chunkd.display().to_string()];
    for i in 0..3 {
        cluster.stop_chunkd(i, nix::sys::signal::Signal::SIGTERM);
        cluster.start_chunkd(i);
    }
    cluster.wait_chunkds_up();
    let zones = cluster.query(async |c| c.chunkds().await.unwrap());
    let up: Vec<_> = zones.iter().filter(|c| c.up).collect();
    assert!(up.len() == 3 && up.iter().all(|c| c.zone.as_deref() == Some("rack-z")), "{zones:?}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let still = cluster.query(async |c| c.chunkds().await.unwrap());
    assert_eq!(still.iter().filter(|c| c.up).count(), 3, "the file's heartbeat interval won");
    // The file's GC settings took effect: a deleted file's shards go within seconds.
    let mount = cluster.mount();
    shardfs_tests::write_random(&mount.join("doomed"), 3 << 20, 1);
    std::fs::File::open(mount.join("doomed")).unwrap().sync_all().unwrap();
    std::fs::remove_file(mount.join("doomed")).unwrap();
    let shards = || (0..3).map(|i| cluster.stored_shards(i).len()).sum::<usize>();
    eventually("GC with the file's settings", || shards() == 0);
}
