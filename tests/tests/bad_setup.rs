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
}

#[test]
fn mount_with_metad_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    fails_fast(
        Command::new(binary("shardfs")).args(["mount", &addr]).arg(dir.path()),
        &format!("cannot reach metad at {addr}"),
    );
    fails_fast(
        Command::new(binary("shardfs")).args(["mount", "--background", &addr]).arg(dir.path()),
        &format!("cannot reach metad at {addr}"),
    );
}

#[test]
fn mount_on_a_missing_mountpoint() {
    let cluster = Cluster::start(3, 2, 1);
    let missing = cluster.dir.path().join("no-such-dir");
    fails_fast(
        Command::new(binary("shardfs")).args(["mount", &cluster.metad_addr]).arg(&missing),
        "does not exist",
    );
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
    fails_fast(
        Command::new(binary("shardfs-chunkd")).arg("--data").arg(dir.0.path()).args([
            "--listen",
            "127.0.0.1:0",
            "--metad",
            "127.0.0.1:1",
        ]),
        "not writable",
    );
}
