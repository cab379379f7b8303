//! `/metrics` on metad, a chunkd and a mount: OpenMetrics text that Prometheus' own parser
//! (python3-prometheus-client, strict OpenMetrics) accepts, whose counters move with work.

use std::collections::HashMap;
use std::io::{Read, Write};

use nix::sys::signal::Signal;
use shardfs_tests::{Cluster, metrics_endpoint};

/// Scrapes `addr` and parses the answer with Prometheus' parser: every sample, keyed by
/// name and labels (`name{a="b",…}`, labels sorted; just `name` without labels).
fn scrape(addr: &str) -> HashMap<String, f64> {
    let body = shardfs_tests::scrape(addr);
    let parse = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
samples = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
print(json.dumps(samples))
"#;
    let mut python = std::process::Command::new("/usr/bin/python3")
        .args(["-c", parse])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (scripts/test installs it)");
    python.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not OpenMetrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

#[test]
fn metrics_of_metad_chunkd_and_mount_parse_and_move_with_work() {
    let mut cluster = Cluster::start_with(3, 2, 1, &["--metrics-listen", "127.0.0.1:0"]);
    cluster.chunkd_args = vec!["--metrics-listen".into(), "127.0.0.1:0".into()];
    cluster.stop_chunkd(0, Signal::SIGTERM);
    cluster.start_chunkd(0);
    cluster.wait_chunkds_up();
    let mount = cluster.mount_with(&["--metrics-listen", "127.0.0.1:0"]);
    let metad = metrics_endpoint(&cluster.one_metad_log());
    let chunkd = metrics_endpoint(&cluster.dir.path().join("chunkd-0.log"));
    let client = metrics_endpoint(mount.log().unwrap());

    let before = (scrape(&metad), scrape(&chunkd), scrape(&client));
    shardfs_tests::write_random(&mount.join("data"), 8 << 20, 3);
    std::fs::File::open(mount.join("data")).unwrap().sync_all().unwrap();
    let fresh = cluster.mount();
    assert_eq!(std::fs::read(fresh.join("data")).unwrap().len(), 8 << 20);
    std::fs::read(mount.join("data")).unwrap();
    let after = (scrape(&metad), scrape(&chunkd), scrape(&client));

    // metad: requests by operation, with their latency; the chunkds it knows, up.
    // (A write's commit may travel in a `Batch`; its `PrepareWrite` never does.)
    let prepares = r#"shardfs_metad_requests_total{op="PrepareWrite",outcome="ok"}"#;
    assert!(value(&after.0, prepares) > value(&before.0, prepares), "{:?}", after.0);
    let timed = r#"shardfs_metad_requests_seconds_count{op="PrepareWrite"}"#;
    assert_eq!(value(&after.0, timed), value(&after.0, prepares));
    let up: Vec<_> =
        after.0.iter().filter(|(k, _)| k.starts_with("shardfs_metad_chunkd_up{")).collect();
    assert!(up.len() == 3 && up.iter().all(|(_, v)| **v == 1.0), "{up:?}");
    assert_eq!(value(&after.0, "shardfs_metad_degraded_chunks"), 0.0);
    assert!(value(&after.0, "shardfs_metad_chunks") >= 2.0);
    assert!(value(&after.0, "shardfs_metad_sessions") >= 2.0);
    // chunkd 0: shard puts and their bytes, its disk usage.
    let puts = r#"shardfs_chunkd_requests_total{op="Put",outcome="ok"}"#;
    assert!(value(&after.1, puts) > value(&before.1, puts), "{:?}", after.1);
    let bytes_in = "shardfs_chunkd_bytes_in_total";
    assert!(value(&after.1, bytes_in) > value(&before.1, bytes_in));
    assert!(value(&after.1, "shardfs_chunkd_shards") >= 2.0);
    assert!(value(&after.1, "shardfs_chunkd_volumes") >= 1.0);
    assert!(
        value(&after.1, "shardfs_chunkd_volume_bytes")
            >= value(&after.1, "shardfs_chunkd_used_bytes")
    );
    assert!(value(&after.1, "shardfs_chunkd_capacity_bytes") > 0.0);
    // The mount: FUSE writes and reads, their bytes, and chunk cache use.
    let writes = r#"shardfs_client_fuse_ops_total{op="write",outcome="ok"}"#;
    assert!(value(&after.2, writes) > value(&before.2, writes), "{:?}", after.2);
    let written = "shardfs_client_bytes_written_total";
    assert!(value(&after.2, written) - value(&before.2, written) >= (8 << 20) as f64);
    let read = "shardfs_client_bytes_read_total";
    assert!(value(&after.2, read) - value(&before.2, read) >= (8 << 20) as f64);
    let lookups = "shardfs_client_cache_hits_total";
    let misses = "shardfs_client_cache_misses_total";
    assert!(value(&after.2, lookups) + value(&after.2, misses) > 0.0);

    // Anything but GET /metrics is turned away.
    let mut stream = std::net::TcpStream::connect(&metad).unwrap();
    stream.write_all(b"GET /other HTTP/1.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}

/// Each replica of a group exports its role and progress, and the leader each follower's
/// lag and last contact, beside its server's metrics.
#[test]
fn replicas_export_their_role_lag_and_last_contact() {
    let cluster = Cluster::start_group_with(3, 3, 2, 1, &["--metrics-listen", "127.0.0.1:0"]);
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    let log = |i: usize| cluster.dir.path().join(format!("metad-{i}.log"));
    let (on_leader, on_follower) =
        (scrape(&metrics_endpoint(&log(leader))), scrape(&metrics_endpoint(&log(follower))));
    assert_eq!(value(&on_leader, r#"shardfs_metad_replica_role{role="leader"}"#), 1.0);
    assert_eq!(value(&on_follower, r#"shardfs_metad_replica_role{role="follower"}"#), 1.0);
    assert_eq!(value(&on_leader, r#"shardfs_metad_group_members{kind="voter"}"#), 3.0);
    assert!(value(&on_follower, "shardfs_metad_replica_applied_index") >= 1.0);
    for other in (0..3).filter(|&i| i != leader) {
        let addr = &cluster.replicas[other].addr;
        let lag = format!(r#"shardfs_metad_follower_lag_entries{{replica="{addr}"}}"#);
        let contact = format!(r#"shardfs_metad_follower_last_contact_millis{{replica="{addr}"}}"#);
        assert!(on_leader.contains_key(&lag) && on_leader.contains_key(&contact), "{on_leader:?}");
        assert!(value(&on_leader, &contact) < 5000.0, "{on_leader:?}");
    }
    // Only the leader serves, so only it has the server's metrics.
    assert!(on_leader.contains_key("shardfs_metad_sessions"), "{on_leader:?}");
    assert!(!on_follower.contains_key("shardfs_metad_sessions"), "{on_follower:?}");
}
