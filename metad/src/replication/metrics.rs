//! A replica's role and progress as metrics: the same figures `shardfs status` shows, and on
//! the leader each follower's lag and last contact.

use shardfs_rpc::metrics::{Registry, Snapshot, Value};

use super::network::ReplicaState;

/// The metrics text of a replica in `state`, without the closing `# EOF` line: the leader's
/// server metrics follow it.
pub fn render(state: &ReplicaState) -> String {
    let mut registry = Registry::default();
    Snapshot::register(&mut registry).set(values(state));
    let text = shardfs_rpc::metrics::encode(&registry);
    text.strip_suffix("# EOF\n").unwrap_or(&text).to_string()
}

fn values(state: &ReplicaState) -> Vec<Value> {
    let index = |i: Option<u64>| i.unwrap_or(0);
    let last_log = index(state.last_log_index);
    let mut values = vec![
        Value::gauge("shardfs_metad_replica_role", "This replica's role (1 for the one named)", 1)
            .with("role", state.role.clone()),
        Value::gauge("shardfs_metad_replica_term", "The replica's term", state.term),
        Value::gauge("shardfs_metad_replica_last_log_index", "Last entry in the log", last_log),
        Value::gauge(
            "shardfs_metad_replica_applied_index",
            "Last log entry applied to the database",
            index(state.applied_index),
        ),
        Value::gauge(
            "shardfs_metad_replica_snapshot_index",
            "Last log entry the newest snapshot covers",
            index(state.snapshot_index),
        ),
    ];
    for voter in [true, false] {
        let count = state.members.iter().filter(|m| m.voter == voter).count() as u64;
        let kind = if voter { "voter" } else { "learner" };
        values.push(
            Value::gauge("shardfs_metad_group_members", "Members of the group, by kind", count)
                .with("kind", kind),
        );
    }
    for f in &state.followers {
        let lag = last_log.saturating_sub(index(f.matched_index));
        values.push(
            Value::gauge("shardfs_metad_follower_lag_entries", "Entries a member lacks", lag)
                .with("replica", f.addr.clone()),
        );
    }
    for f in &state.followers {
        let Some(millis) = f.millis_since_contact else { continue };
        values.push(
            Value::gauge(
                "shardfs_metad_follower_last_contact_millis",
                "Milliseconds since a member last answered the leader",
                millis,
            )
            .with("replica", f.addr.clone()),
        );
    }
    values
}
