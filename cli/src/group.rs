//! `shardfs metad add|remove|promote|members`: a metad group's members, changed online.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use shardfs_metad::replication::network::{self, Member, Refusal, Reply, Request};
use shardfs_rpc::ClientOptions;

use crate::status::{self, Replica};

/// How long the group may go without a leader before a change is given up.
const NO_LEADER: Duration = Duration::from_secs(30);
/// How long one replica has to answer a change (adding waits for the new replica to copy
/// the log; it reports a stall itself).
const CHANGE_WITHIN: Duration = Duration::from_secs(600);

/// Asks the leader of the group at `addrs` to make `request`, following redirects and
/// waiting out an election.
async fn ask_leader(
    addrs: &[String],
    request: impl Fn() -> Request,
    options: ClientOptions,
) -> anyhow::Result<Reply> {
    let started = Instant::now();
    let mut last = String::from("no replica answered");
    loop {
        let mut queue: Vec<String> = addrs.iter().rev().cloned().collect();
        let mut asked = Vec::new();
        while let Some(addr) = queue.pop() {
            if asked.contains(&addr) {
                continue;
            }
            asked.push(addr.clone());
            match network::ask(&addr, request(), options, CHANGE_WITHIN).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(Refusal::NotLeader(leader))) => {
                    last = format!("{addr} does not lead");
                    queue.extend(leader);
                }
                Ok(Err(refusal)) => bail!("{refusal}"),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        if started.elapsed() > NO_LEADER {
            bail!(
                "no replica of {} answered as the leader within {NO_LEADER:?} (last: {last})",
                addrs.join(",")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn print_members(members: &[Member], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(members)?);
        return Ok(());
    }
    for m in members {
        println!("{:<22} {}", m.addr, if m.voter { "voter" } else { "learner" });
    }
    Ok(())
}

/// `shardfs metad add` (`Request::Add`: the replica, started with `--replicas` naming the
/// group and not itself, joins as a voter or a learner) and `shardfs metad remove`
/// (`Request::Remove`): prints the members once the change is committed.
pub(crate) async fn change(
    metad: &[String],
    request: impl Fn() -> Request,
    options: ClientOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match ask_leader(metad, request, options).await? {
        Reply::Members(members) => print_members(&members, json)?,
        other => bail!("a reply of the wrong kind: {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `shardfs metad promote`: makes the learner at `addr` a group of one, once every voter
/// is lost, and waits until it leads.
pub(crate) async fn promote(
    addr: &str,
    options: ClientOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let applied = match network::ask(addr, Request::Promote, options, NO_LEADER).await? {
        Ok(Reply::Promoting { applied_index }) => applied_index,
        Ok(other) => bail!("a reply of the wrong kind: {other:?}"),
        Err(refusal) => bail!("{addr} cannot be promoted: {refusal}"),
    };
    let started = Instant::now();
    loop {
        let answer = network::ask(addr, Request::Status, options, Duration::from_secs(2)).await;
        if let Ok(Ok(Reply::Status(state))) = answer
            && state.role == "leader"
        {
            break;
        }
        if started.elapsed() > NO_LEADER {
            bail!("{addr} was promoted but does not lead within {NO_LEADER:?}: see its log");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if json {
        let out = serde_json::json!({ "leader": addr, "applied_index": applied });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{addr} leads a group of one, with the log applied up to entry {applied}");
        println!("check with: shardfs fsck {addr} --verify-data");
    }
    Ok(ExitCode::SUCCESS)
}

/// `shardfs metad members`: every replica's role and progress, asked of each; exits 1 if
/// none leads.
pub(crate) async fn members(
    metad: &[String],
    options: ClientOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let replicas: Vec<Replica> = status::group(metad, options).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&replicas)?);
    } else {
        status::print_replicas(&replicas);
    }
    let led = replicas.iter().filter_map(|r| r.state.as_ref()).any(|s| s.role == "leader");
    Ok(if led { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
