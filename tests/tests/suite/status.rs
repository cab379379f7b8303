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

/// Whether chunkd `id` is listed, and up: a chunkd just started is listed once it has
/// registered.
fn up(status: &Value, id: &str) -> bool {
    let chunkds = status["chunkds"].as_array().unwrap();
    chunkds.iter().any(|c| c["id"] == id && c["up"] == true)
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
    // At least five 4 MiB chunks (more if the kernel's write-back delivered the pages out of
    // order and a partial chunk was committed early).
    assert!(before["catalogue"]["chunks"].as_u64().unwrap() >= 5, "{before}");
    assert!(before["workers"]["sessions"].as_u64().unwrap() >= 1, "{before}");
    // One shard per chunk on a chunkd: its shard files are the chunks it degrades.
    let on_victim = cluster.stored_shards(0).len() as u64;
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
    assert_eq!(
        (&df["hot_class"], &df["cold_class"]),
        (&"rs(2,1)".into(), &"rs(2,1)".into()),
        "{df}"
    );
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
    assert!(String::from_utf8_lossy(&text.stdout).contains("rs(2,1)"));
}

#[test]
fn info_shows_where_a_files_bytes_are() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    shardfs_tests::write_random(&mount.join("big"), 6 << 20, 4);
    std::fs::write(mount.join("small"), "small\n").unwrap();
    for name in ["big", "small"] {
        std::fs::File::open(mount.join(name)).unwrap().sync_all().unwrap();
    }
    // The metad address comes from the mount holding the path.
    let info = |name: &str| -> Value {
        let out =
            cluster.command("shardfs").arg("info").arg("--json").arg(mount.join(name)).output();
        let out = out.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let big = info("big");
    assert_eq!(big["size"], 6 << 20);
    let extents = big["extents"].as_array().unwrap();
    assert_eq!(extents.iter().map(|e| e["len"].as_u64().unwrap()).sum::<u64>(), 6 << 20);
    // Two 4 MiB chunks, or more if the kernel's write-back committed part of one early.
    let chunks = big["chunks"].as_array().unwrap();
    assert!(chunks.len() >= 2, "{big}");
    let ids: Vec<String> = cluster.chunkds.iter().flatten().map(|c| c.id.clone()).collect();
    for chunk in chunks {
        assert_eq!(chunk["class"], "rs(2,1)");
        let shards = chunk["shards"].as_array().unwrap();
        let mut on: Vec<&str> = shards.iter().map(|s| s["chunkd"].as_str().unwrap()).collect();
        on.sort();
        on.dedup();
        assert_eq!(on.len(), 3, "each shard on its own chunkd: {chunk}");
        assert!(on.iter().all(|c| ids.iter().any(|id| id == c)));
        assert!(shards.iter().all(|s| s["healthy"] == true));
    }
    let small = info("small");
    assert_eq!(small["chunks"][0]["class"], "inline", "{small}");
    // The secret too is the mount's: neither a flag nor the environment names it.
    let out = std::process::Command::new(shardfs_tests::binary("shardfs"))
        .arg("info")
        .arg(mount.join("small"))
        .env_remove("SHARDFS_SECRET_FILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("inline"));
    // A directory, or a path on no shardfs mount, gets one clear line.
    let out = cluster.command("shardfs").arg("info").arg(&mount.path).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a regular file"));
    let out = cluster.command("shardfs").args(["info", "/etc/hostname"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not on a shardfs mount"));
}

/// Lazily unmounts a filesystem a test mounted, even if the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn chunkd<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["chunkds"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap()
}

fn status_text(cluster: &Cluster) -> String {
    let out = cluster.command("shardfs").args(["status", &cluster.metad_addr]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn full_forgotten_and_unheard_chunkds_show_as_such() {
    let mut cluster = Cluster::start(4, 2, 1);
    let replaced = cluster.chunkds[3].as_ref().unwrap().id.clone();
    // Chunkd 3 comes back on a 32 MiB filesystem: less than the 64 MiB free a chunkd needs
    // to take shards, so it is up but full.
    let small = cluster.dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    shardfs_tests::sh(&format!("mount -t tmpfs -o size=32m shardfs-test {}", small.display()));
    let _unmount = Unmount(small.clone());
    cluster.stop_chunkd(3, Signal::SIGTERM);
    cluster.start_chunkd_at(3, &small, "127.0.0.1:0");
    let full = cluster.chunkds[3].as_ref().unwrap().id.clone();
    eventually("the small chunkd to report", || up(&status(&cluster), &full));
    assert_eq!(chunkd(&status(&cluster), &full)["full"], true);
    let line = |text: &str, id: &str| text.lines().find(|l| l.starts_with(id)).unwrap().to_owned();
    assert!(line(&status_text(&cluster), &full).contains(" full "), "{}", status_text(&cluster));
    // The chunkd it replaced is gone for good: forgotten once down, it is no longer listed.
    eventually("the replaced chunkd to be down", || !up(&status(&cluster), &replaced));
    let forget = |id: &str| {
        let mut command = cluster.command("shardfs");
        command.args(["chunkd", "forget", &cluster.metad_addr, id]).output().unwrap()
    };
    let refused = forget(&full);
    assert!(!refused.status.success(), "an up chunkd was forgotten");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is up: stop it first"));
    assert!(forget(&replaced).status.success());
    let listed = status(&cluster)["chunkds"].as_array().unwrap().len();
    assert_eq!(listed, 4, "{}", status(&cluster));
    // After a restart of metad, a chunkd not heard from since shows no stale figures.
    let silent = cluster.chunkds[0].as_ref().unwrap().id.clone();
    cluster.stop_chunkd(0, Signal::SIGKILL);
    cluster.restart_metad(Signal::SIGTERM);
    let after = status(&cluster);
    assert_eq!(chunkd(&after, &silent)["reported"], false, "{after}");
    let row = line(&status_text(&cluster), &silent);
    assert!(row.contains(" down ") && row.trim_end().ends_with('-'), "{row}");
}
