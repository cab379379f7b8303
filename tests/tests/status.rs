//! `shardfs status --json`: what an operator or a script reads to know whether data is safe.

use nix::sys::signal::Signal;
use serde_json::Value;
use shardfs_tests::{Cluster, eventually};

fn status(cluster: &Cluster) -> Value {
    let out = cluster.command("shardfs").args(["status", "--json", &cluster.metad_addr]).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn up(status: &Value, id: &str) -> bool {
    let chunkds = status["chunkds"].as_array().unwrap();
    let chunkd = chunkds.iter().find(|c| c["id"] == id).unwrap();
    chunkd["up"].as_bool().unwrap()
}

#[test]
fn status_json_reports_a_killed_chunkd_down_and_counts_degraded_chunks() {
    let mut cluster = Cluster::start(4, 2, 1);
    let mount = cluster.mount();
    shardfs_tests::write_random(&mount.join("data"), 20 << 20, 5);
    std::fs::File::open(mount.join("data")).unwrap().sync_all().unwrap();
    let before = status(&cluster);
    let victim = cluster.chunkds[0].as_ref().unwrap().id.clone();
    assert!(up(&before, &victim));
    assert_eq!(before["catalogue"]["degraded_chunks"], 0, "{before}");
    assert_eq!(before["catalogue"]["chunks"], 5, "{before}");
    assert!(before["workers"]["sessions"].as_u64().unwrap() >= 1, "{before}");
    // One shard per chunk on a chunkd: its shard files are the chunks it degrades.
    let on_victim = cluster.shard_files(0).len() as u64;
    assert!(on_victim > 0);
    cluster.stop_chunkd(0, Signal::SIGKILL);
    eventually("status to report the chunkd down", || !up(&status(&cluster), &victim));
    let after = status(&cluster);
    assert_eq!(after["catalogue"]["degraded_chunks"], on_victim, "{after}");
    // The other chunkds stay up, and the data stays readable from them.
    let others = after["chunkds"].as_array().unwrap().iter().filter(|c| c["id"] != victim.as_str());
    assert!(others.clone().count() == 3 && others.clone().all(|c| c["up"] == true), "{after}");
    assert_eq!(std::fs::read(mount.join("data")).unwrap().len(), 20 << 20);
}

#[test]
fn df_reports_the_volume_as_the_mount_does() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    shardfs_tests::write_random(&mount.join("data"), 3 << 20, 6);
    std::fs::File::open(mount.join("data")).unwrap().sync_all().unwrap();
    let out = cluster.command("shardfs").args(["df", "--json", &cluster.metad_addr]).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let df: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((df["k"].as_u64(), df["m"].as_u64()), (Some(2), Some(1)), "{df}");
    assert_eq!(df["chunkds_up"], 3);
    assert!(df["data_bytes"].as_u64().unwrap() >= 3 << 20, "{df}");
    // Usable size is two thirds of the raw size under RS 2+1, as the mount's statfs says.
    let (size, raw) = (df["size_bytes"].as_u64().unwrap(), df["raw_size_bytes"].as_u64().unwrap());
    assert_eq!(size, raw * 2 / 3);
    let stat = nix::sys::statvfs::statvfs(&mount.path).unwrap();
    let block = stat.fragment_size();
    assert!(
        size.abs_diff(stat.blocks() * block) < block,
        "df {size}, statfs {}",
        stat.blocks() * block
    );
    let text = cluster.command("shardfs").args(["df", &cluster.metad_addr]).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("RS 2+1"));
}
