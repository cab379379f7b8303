//! `shardfs bench` runs its workloads on a mount and on local directories side by side.
//! Speed itself is not asserted here (see docs/performance.md); the command must run every
//! workload, report sane numbers and find the client serving the mount.

use std::process::Command;

use shardfs_tests::{Cluster, binary};

#[test]
fn bench_compares_a_mount_with_a_local_directory() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    let local = cluster.dir.path().join("local");
    let tree = cluster.dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for i in 0..20 {
        std::fs::write(tree.join(format!("sub/h{i}.h")), format!("#define H{i} {i}\n")).unwrap();
    }
    std::fs::create_dir(&local).unwrap();
    let second = cluster.dir.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let output = Command::new(binary("shardfs"))
        .arg("bench")
        .arg(&mount.path)
        .arg("--compare")
        .arg(&local)
        .arg("--compare")
        .arg(&second)
        .args(["--rounds", "1", "--file-size", "8MiB", "--random-reads", "200"])
        .args(["--small-files", "100", "--small-dirs", "4", "--json", "--tree"])
        .arg(&tree)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 13, "{report:#}");
    for row in rows {
        let value = std::iter::once(&row["value"]);
        let compared = ["others", "speed_ratios"].map(|key| row[key].as_array().unwrap());
        assert!(compared.iter().all(|values| values.len() == 2), "{row}");
        for v in value.chain(compared.into_iter().flatten()) {
            let v = v.as_f64().unwrap_or(-1.0);
            assert!(v.is_finite() && v > 0.0, "{row}");
        }
    }
    assert_eq!(report["compare"].as_array().unwrap().len(), 2);
    let rss = report["client_peak_rss_bytes"].as_u64().expect("found the mount's client");
    assert!(rss > 1 << 20, "{rss} bytes");
    // Nothing is left behind in either directory.
    assert_eq!(std::fs::read_dir(&mount.path).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&local).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&second).unwrap().count(), 0);

    // A directory that does not exist is one clear error line.
    let output =
        Command::new(binary("shardfs")).args(["bench", "/nonexistent/dir"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/dir is not a directory"), "{stderr}");
}

/// `--only fio` runs fio's four jobs (scripts/test installs fio) on the mount and a local
/// directory, and says in one line when fio is missing.
#[test]
fn bench_runs_fio_on_a_mount_and_a_local_directory() {
    let cluster = Cluster::start(3, 2, 1);
    let mount = cluster.mount();
    let local = cluster.dir.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let bench = || {
        let mut command = Command::new(binary("shardfs"));
        command.arg("bench").arg(&mount.path).arg("--compare").arg(&local);
        command.args(["--only", "fio", "--rounds", "1", "--file-size", "16MiB"]);
        command.args(["--fio-runtime", "1", "--json"]);
        command
    };
    let output = bench().output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let workloads: Vec<&str> = rows.iter().map(|r| r["workload"].as_str().unwrap()).collect();
    assert_eq!(
        workloads,
        ["fio_seq_write", "fio_seq_read_cold", "fio_random_read", "fio_random_read4_jobs"],
        "{report:#}"
    );
    for row in rows {
        let compared = ["others", "speed_ratios"].map(|key| row[key].as_array().unwrap());
        assert!(compared.iter().all(|values| values.len() == 1), "{row}");
        for v in std::iter::once(&row["value"]).chain(compared.into_iter().flatten()) {
            let v = v.as_f64().unwrap_or(-1.0);
            assert!(v.is_finite() && v > 0.0, "{row}");
        }
    }
    assert!(report["client_peak_rss_bytes"].as_u64().is_some(), "found the mount's client");
    assert_eq!(std::fs::read_dir(&mount.path).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&local).unwrap().count(), 0);

    let output = bench().env("PATH", "").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim(), "shardfs: error: fio is not installed (apt-get install fio)");
}
