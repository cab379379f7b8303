//! Misconfiguration ends in one clear error line and a non-zero exit, quickly.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use shardfs_tests::{Cluster, binary, sh};

/// Runs `command`, requiring it to fail within a few seconds with a one-line error.
fn fails_fast(command: &mut Command, expected: &str) {
    let started = Instant::now();
    let output: Output = command.output().expect("run");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "should fail: {stderr}");
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got:\n{stderr}");
    assert!(lines[0].contains(expected), "{:?} lacks {expected:?}", lines[0]);
    // Each cause is said once, not once by a message and again after it.
    assert!(lines[0].matches("os error").count() <= 1, "{}", lines[0]);
}

/// `binary` with a freshly made cluster secret (in `dir`) in its environment.
fn with_secret(binary_name: &str, dir: &std::path::Path) -> Command {
    let secret = dir.join("cluster.key");
    if !secret.exists() {
        shardfs_rpc::ClusterKey::create(&secret).unwrap();
    }
    let mut command = Command::new(binary(binary_name));
    command.env("SHARDFS_SECRET_FILE", secret);
    command
}

#[test]
fn mount_with_metad_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    fails_fast(
        with_secret("shardfs", dir.path()).args(["mount", &addr]).arg(&mnt),
        &format!("cannot reach metad at {addr}"),
    );
    fails_fast(
        with_secret("shardfs", dir.path())
            .args(["mount", "--background", &addr, "--log-file"])
            .arg(dir.path().join("mount.log"))
            .arg(&mnt),
        &format!("cannot reach metad at {addr}"),
    );
}

#[test]
fn mount_without_the_cluster_secret() {
    let cluster = Cluster::start(3, 2, 1);
    let mnt = cluster.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let missing = cluster.dir.path().join("no-such.key");
    fails_fast(
        Command::new(binary("shardfs"))
            .args(["mount", "--background", "--secret-file"])
            .arg(&missing)
            .arg(&cluster.metad_addr)
            .arg(&mnt),
        &format!("cannot read the cluster secret {}", missing.display()),
    );
    // World-readable: refused before anything is sent.
    let open = cluster.dir.path().join("open.key");
    std::fs::copy(cluster.secret_file(), &open).unwrap();
    sh(&format!("chmod 644 {}", open.display()));
    fails_fast(
        Command::new(binary("shardfs"))
            .args(["mount", "--secret-file"])
            .arg(&open)
            .arg(&cluster.metad_addr)
            .arg(&mnt),
        "may be read by other users",
    );
}

#[test]
fn mount_on_a_missing_mountpoint() {
    let cluster = Cluster::start(3, 2, 1);
    let missing = cluster.dir.path().join("no-such-dir");
    fails_fast(
        cluster.command("shardfs").args(["mount", &cluster.metad_addr]).arg(&missing),
        "does not exist",
    );
}

#[test]
fn mount_over_files_or_another_mount_is_refused_unless_nonempty() {
    let cluster = Cluster::start(3, 2, 1);
    let full = cluster.dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), b"mine").unwrap();
    let mount = |args: &[&str], on: &std::path::Path| {
        let mut command = cluster.command("shardfs");
        command.arg("mount").args(args).arg(&cluster.metad_addr).arg(on);
        command
    };
    fails_fast(&mut mount(&[], &full), "is not empty");
    fails_fast(&mut mount(&["--background"], &full), "is not empty");
    let mounted = cluster.mount();
    fails_fast(&mut mount(&[], &mounted.path), "already a mount point");
    assert!(std::fs::read_dir(&mounted.path).unwrap().next().is_none(), "still served");
    // -o nonempty asks for it: the files are hidden while mounted, and there after.
    let over = cluster.mount_at(&full, &cluster.metad_addr, &["-o", "nonempty"]);
    assert!(!full.join("keep").exists(), "hidden by the mount");
    drop(over);
    assert_eq!(std::fs::read(full.join("keep")).unwrap(), b"mine");
}

/// A read-only tmpfs, unmounted on drop.
struct ReadOnlyDir(tempfile::TempDir);

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn chunkd_on_a_read_only_directory() {
    let dir = ReadOnlyDir(tempfile::tempdir().unwrap());
    sh(&format!("mount -t tmpfs -o ro,size=1m shardfs-test-ro {}", dir.0.path().display()));
    let secrets = tempfile::tempdir().unwrap();
    fails_fast(
        with_secret("shardfs-chunkd", secrets.path()).arg("--data").arg(dir.0.path()).args([
            "--listen",
            "127.0.0.1:0",
            "--metad",
            "127.0.0.1:1",
        ]),
        "not writable",
    );
}
