//! The `shardfs-chunkd` binary as an operator or test harness sees it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shardfs_chunk_api::client::ChunkClient;
use shardfs_chunk_api::{ChunkId, Encoding, ShardId};
use shardfs_rpc::{ClientOptions, ClusterKey};

const BINARY: &str = env!("CARGO_BIN_EXE_shardfs-chunkd");

/// The daemon with a new cluster secret (in `dir`) and a metad nobody answers at; returns
/// the command and the secret's key.
fn chunkd(dir: &std::path::Path) -> (Command, ClusterKey) {
    let secret = dir.join("cluster.key");
    let key = ClusterKey::create(&secret).unwrap();
    let mut command = Command::new(BINARY);
    command.arg("--secret-file").arg(secret);
    command.args(["--listen", "127.0.0.1:0", "--metad", "127.0.0.1:1"]);
    (command, key)
}

/// Kills the daemon if a test fails before stopping it.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn announces_its_port_serves_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut guard = KillOnDrop(None);
    let (mut command, key) = chunkd(dir.path());
    let child = guard.0.insert(
        command
            .args(["--data", dir.path().join("data").to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .trim_end()
        .strip_prefix("shardfs-chunkd listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let id = shardfs_chunkd::store::read_id(&dir.path().join("data")).unwrap().unwrap();
    let client = ChunkClient::new(addr, id, ClientOptions::with_key(key));
    let chunk = b"binary test chunk".to_vec();
    let shard = ShardId { chunk: ChunkId::of(&chunk), index: 0 };
    let encoding = Encoding::rs(1, 1).unwrap();
    client.put(shard, encoding, chunk.len() as u64, chunk.clone(), &[]).await.unwrap();
    assert_eq!(client.get(shard).await.unwrap(), (encoding, chunk.len() as u64, chunk));

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let mut child = guard.0.take().unwrap();
    let status = shardfs_rpc::sync::blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn unusable_data_directory_is_one_error_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let output = chunkd(dir.path())
        .0
        .args(["--data", file.to_str().unwrap()])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("shardfs-chunkd: error: "), "{stderr}");
}

#[test]
fn heartbeat_interval_must_be_positive() {
    let dir = tempfile::tempdir().unwrap();
    let output = chunkd(dir.path())
        .0
        .args(["--data", dir.path().to_str().unwrap(), "--heartbeat-interval", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--heartbeat-interval 0 is not a positive number"), "{stderr}");
}

#[test]
fn a_missing_or_open_cluster_secret_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let (mut command, _) = chunkd(dir.path());
    let secret = dir.path().join("cluster.key");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let output = command.args(["--data", dir.path().to_str().unwrap()]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("may be read by other users"), "{stderr}");
    std::fs::remove_file(&secret).unwrap();
    let output = command.output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("cannot read the cluster secret"), "{stderr}");
}
