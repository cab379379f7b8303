//! Changing a group's members while it serves, through openraft's membership changes:
//! adding a replica (first as a learner, which copies the log and never votes; then, once
//! it has caught up, as a voter), removing one, and the disaster-recovery path, promoting a
//! learner into a group of one when every voter is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{
    ChangeMembers, CommittedLeaderId, EntryPayload, LogId, Membership, Raft, ServerState, Vote,
};
use shardfs_rpc::ClientOptions;
use tracing::info;

use super::log_store::LogStore;
use super::network::{self, Member, Refusal, Reply, Request};
use super::node::replica_id;
use super::{Group, Replica, ReplicaId};

/// How long a new replica may go without copying any more of the log before adding it is
/// given up (it stays a learner, shown by `shardfs status`).
const CATCH_UP_STALL: Duration = Duration::from_secs(60);
/// How long a replica has to answer the questions asked before a change.
const ASK_WITHIN: Duration = Duration::from_secs(2);

/// Adds the replica at `addr` to the group `raft` leads: as a learner, and once it has
/// every entry the leader had when asked, as a voter if `voter`. It must answer, share the
/// cluster secret, and be new or a member already (a replica of another group is refused:
/// its data would be overwritten).
pub async fn add(
    raft: &Raft<Group>,
    addr: &str,
    voter: bool,
    options: ClientOptions,
) -> Result<Vec<Member>, Refusal> {
    let id = replica_id(addr);
    let membership = current(raft);
    if membership.get_node(&id).is_none() {
        match network::ask(addr, Request::Fresh, options, ASK_WITHIN).await {
            Ok(Ok(Reply::Fresh(true))) => {}
            Ok(Ok(Reply::Fresh(false))) => {
                return Err(Refusal::Members(format!(
                    "{addr} holds the log of another group: wipe its data directory, start it \
                     again, and add it"
                )));
            }
            Ok(Ok(_)) => return Err(Refusal::WrongReply),
            Ok(Err(refusal)) => return Err(Refusal::Members(format!("{addr}: {refusal}"))),
            Err(e) => return Err(Refusal::Members(format!("cannot reach {addr}: {e}"))),
        }
        raft.add_learner(id, Replica { addr: addr.to_string() }, false).await.map_err(refusal)?;
        info!(replica = %addr, "added a learner");
    }
    if voter && !network::is_voter(&current(raft), id) {
        caught_up(raft, id, addr).await?;
        let changes = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        raft.change_membership(changes, false).await.map_err(refusal)?;
        info!(replica = %addr, "the learner is a voter");
    }
    Ok(network::members(&current(raft)))
}

/// Removes the replica at `addr` from the group `raft` leads (a voter, or a learner).
/// Removing the leader itself makes it step down once the change is committed.
pub async fn remove(raft: &Raft<Group>, addr: &str) -> Result<Vec<Member>, Refusal> {
    let id = replica_id(addr);
    let membership = current(raft);
    let ids = BTreeSet::from([id]);
    let changes = if network::is_voter(&membership, id) {
        ChangeMembers::RemoveVoters(ids)
    } else if membership.get_node(&id).is_some() {
        ChangeMembers::RemoveNodes(ids)
    } else {
        return Err(Refusal::Members(format!("{addr} is not a member of the group")));
    };
    raft.change_membership(changes, false).await.map_err(refusal)?;
    info!(replica = %addr, "removed a replica");
    Ok(network::members(&current(raft)))
}

/// Waits until learner `id` has every entry the leader had when this began, while it
/// keeps making progress.
async fn caught_up(raft: &Raft<Group>, id: ReplicaId, addr: &str) -> Result<(), Refusal> {
    let mut metrics = raft.metrics();
    let target = metrics.borrow().last_log_index.unwrap_or(0);
    let (mut best, mut progressed) = (None, Instant::now());
    loop {
        let matched = {
            let m = metrics.borrow_and_update();
            if m.state != ServerState::Leader {
                return Err(Refusal::NotLeader(None));
            }
            (m.replication.as_ref())
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|log_id| log_id.index)
        };
        if matched.is_some_and(|m| m >= target) {
            return Ok(());
        }
        if matched > best {
            (best, progressed) = (matched, Instant::now());
        }
        let left = CATCH_UP_STALL.saturating_sub(progressed.elapsed());
        if left.is_zero() {
            return Err(Refusal::Members(format!(
                "{addr} copied nothing more of the log in {CATCH_UP_STALL:?} (has {}, needs \
                 {target}): it stays a learner; see shardfs status and its log",
                best.map_or("nothing".to_string(), |i| i.to_string())
            )));
        }
        let _ = tokio::time::timeout(left, metrics.changed()).await;
    }
}

/// The membership `raft` knows last.
fn current(raft: &Raft<Group>) -> Membership<ReplicaId, Replica> {
    raft.metrics().borrow().membership_config.membership().clone()
}

/// Why a change of members failed, as a refusal: another replica leads, or the change
/// cannot be made.
fn refusal(e: RaftError<ReplicaId, ClientWriteError<ReplicaId, Replica>>) -> Refusal {
    if let Some(forward) = e.forward_to_leader::<Replica>() {
        return Refusal::NotLeader(forward.leader_node.as_ref().map(|n| n.addr.clone()));
    }
    Refusal::Members(e.to_string())
}

/// Whether learner `raft` may be promoted: it is a learner of a group, has applied some of
/// its log, and no voter of that group answers. Returns the last entry it applied.
pub async fn promotable(raft: &Raft<Group>, options: ClientOptions) -> Result<u64, Refusal> {
    let (state, membership, applied) = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let applied = m.last_applied.map(|id| id.index);
        (m.state, m.membership_config.membership().clone(), applied)
    };
    if state != ServerState::Learner || membership.voter_ids().next().is_none() {
        return Err(Refusal::Members(
            "only a learner of a group can be promoted (this replica is not one)".into(),
        ));
    }
    let Some(applied) = applied else {
        return Err(Refusal::Members("this learner has applied nothing of the log yet".into()));
    };
    for id in membership.voter_ids() {
        let Some(voter) = membership.get_node(&id) else { continue };
        if let Ok(Ok(Reply::Status(s))) =
            network::ask(&voter.addr, Request::Status, options, ASK_WITHIN).await
        {
            return Err(Refusal::Members(format!(
                "voter {} still answers (as {}): promote a learner only once every voter is \
                 lost; while the group has a leader, use shardfs metad add",
                voter.addr, s.role
            )));
        }
    }
    Ok(applied)
}

/// Rewrites the log of the stopped replica `me` (at `addr`) in `dir` so that it starts as
/// the leader of a group of one: a new term, voted for itself, and a membership entry
/// naming only it after whatever its log holds, which it commits alone. Whatever entries
/// it had and the lost voters had not committed are committed too; entries only the lost
/// voters had are gone (the learner's lag).
pub async fn make_group_of_one(dir: &Path, me: ReplicaId, addr: &str) -> anyhow::Result<u64> {
    let mut log = LogStore::open(&dir.join(super::group::LOG_FILE))?;
    let state = log.get_log_state().await?;
    let vote = log.read_vote().await?;
    let last = state.last_log_id;
    let term = vote.map_or(0, |v| v.leader_id().term).max(last.map_or(0, |l| l.leader_id.term)) + 1;
    let index = last.map_or(0, |l| l.index + 1);
    let membership = Membership::new(
        vec![BTreeSet::from([me])],
        BTreeMap::from([(me, Replica { addr: addr.to_string() })]),
    );
    let entry = openraft::Entry::<Group> {
        log_id: LogId::new(CommittedLeaderId::new(term, me), index),
        payload: EntryPayload::Membership(membership),
    };
    log.write(Some(Vote::new_committed(term, me)), vec![entry]).await?;
    info!(term, index, "promoted: this replica leads a group of one from now on");
    Ok(index)
}
