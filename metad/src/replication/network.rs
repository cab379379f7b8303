//! Replicas talking consensus to each other over shardfs's own transport (service
//! `Replication`, behind the same cluster-secret handshake as every connection): the calls
//! openraft makes of a peer, each named for the replica it is meant for, and the handler
//! that answers them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::Raft;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use shardfs_rpc::sync::Lock as _;
use shardfs_rpc::{Client, ClientOptions, Service};
use tracing::{info, warn};

use super::{Group, Replica, ReplicaId};

/// A call from one replica to another.
#[derive(Debug, Serialize, Deserialize)]
pub struct Call {
    /// The replica it is meant for: one that finds another id is not it, and refuses.
    pub to: ReplicaId,
    pub request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<Group>),
    Vote(VoteRequest<ReplicaId>),
    InstallSnapshot(InstallSnapshotRequest<Group>),
    /// Whether the replica is new: no log, no vote (`crate::replication::node`, setting up
    /// a group).
    Fresh,
    /// The replica's role and progress (`shardfs status`).
    Status,
    /// To the leader: add the replica at `addr` (new, or already a learner) as a learner,
    /// which copies the log and never votes, and once it has caught up, as a voter if
    /// `voter` (`shardfs metad add`).
    Add {
        addr: String,
        voter: bool,
    },
    /// To the leader: remove the replica at `addr` from the group (`shardfs metad remove`).
    Remove {
        addr: String,
    },
    /// To a learner once every voter is lost: become a new group of one, this learner
    /// alone, with what it has (`shardfs metad promote`).
    Promote,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    AppendEntries(AppendEntriesResponse<ReplicaId>),
    Vote(VoteResponse<ReplicaId>),
    InstallSnapshot(InstallSnapshotResponse<ReplicaId>),
    Fresh(bool),
    Status(ReplicaState),
    /// The group's members once a change of them is committed.
    Members(Vec<Member>),
    /// The learner restarts as a group of one, with the log entries it had applied.
    Promoting {
        applied_index: u64,
    },
}

/// A member of the group, as the leader's committed membership lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub addr: String,
    /// A voter, or a learner (a disaster-recovery copy, or a replica catching up).
    pub voter: bool,
}

/// What the leader knows of one other member: how far its log matches the leader's, and
/// when it last answered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Follower {
    pub addr: String,
    pub matched_index: Option<u64>,
    /// Milliseconds since it last answered the leader (`None`: never, since this lead).
    pub millis_since_contact: Option<u64>,
}

/// A replica's role and progress, as `shardfs status` shows them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaState {
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// The last log entry the newest snapshot covers (installed from the leader, or taken
    /// here), and the last entry cut from the log behind it.
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// The leader's address, as this replica knows it.
    pub leader: Option<String>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// The group's members, as this replica's newest membership lists them.
    pub members: Vec<Member>,
    /// On the leader: each other member's progress and last contact.
    pub followers: Vec<Follower>,
}

/// Why a replica did not answer a call.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("this is replica {me}, not {meant}: the group's addresses are wrong")]
    WrongReplica { me: ReplicaId, meant: ReplicaId },
    #[error("a call of the wrong kind came back")]
    WrongReply,
    #[error(transparent)]
    Raft(RaftError<ReplicaId>),
    #[error(transparent)]
    Snapshot(RaftError<ReplicaId, InstallSnapshotError>),
    #[error("the replica stopped: {0}")]
    Stopped(String),
    /// It lost its data and is being caught up: it does not vote meanwhile.
    #[error("the replica is being caught up and does not vote yet")]
    CatchingUp,
    /// A change of the group's members asked of a replica that does not lead.
    #[error("this replica does not lead the group")]
    NotLeader(Option<String>),
    /// A change of the group's members, or a promotion, that cannot be made.
    #[error("{0}")]
    Members(String),
}

pub type Answer = Result<Reply, Refusal>;

/// Answers the calls of the other replicas to replica `me`, and tools' questions of it
/// (changes of members are the daemon's: `super::node`).
pub async fn answer(raft: &Raft<Group>, me: ReplicaId, contacts: &Contacts, call: Call) -> Answer {
    if call.to != me {
        return Err(Refusal::WrongReplica { me, meant: call.to });
    }
    Ok(match call.request {
        Request::AppendEntries(request) => {
            Reply::AppendEntries(raft.append_entries(request).await.map_err(Refusal::Raft)?)
        }
        Request::Vote(request) => Reply::Vote(raft.vote(request).await.map_err(Refusal::Raft)?),
        Request::InstallSnapshot(request) => {
            Reply::InstallSnapshot(raft.install_snapshot(request).await.map_err(Refusal::Snapshot)?)
        }
        Request::Status => Reply::Status(state(raft, contacts)),
        Request::Fresh => {
            let initialized = raft.is_initialized().await;
            Reply::Fresh(!initialized.map_err(|e| Refusal::Stopped(e.to_string()))?)
        }
        Request::Add { .. } | Request::Remove { .. } | Request::Promote => {
            return Err(Refusal::Members("this replica does not change members".into()));
        }
    })
}

/// Asks the replica at `addr` (as named in the group's list) `request`, waiting at most
/// `within` for its answer: how replicas setting up and tools ask one another outside the
/// log.
pub async fn ask(
    addr: &str,
    request: Request,
    options: ClientOptions,
    within: std::time::Duration,
) -> Result<Answer, shardfs_rpc::Error> {
    let client = Client::new(addr, Service::Replication, options);
    let call = Call { to: super::node::replica_id(addr), request };
    client.call_within(&call, within).await
}

/// When each other replica last answered this one (as the leader, every heartbeat).
#[derive(Default)]
pub struct Contacts(Mutex<HashMap<ReplicaId, Instant>>);

impl Contacts {
    fn note(&self, id: ReplicaId) {
        self.0.locked().insert(id, Instant::now());
    }

    fn since(&self, id: ReplicaId) -> Option<std::time::Duration> {
        self.0.locked().get(&id).map(Instant::elapsed)
    }
}

/// Whether `id` votes in `membership`.
pub fn is_voter(membership: &openraft::Membership<ReplicaId, Replica>, id: ReplicaId) -> bool {
    membership.voter_ids().any(|voter| voter == id)
}

/// The members `membership` lists.
pub fn members(membership: &openraft::Membership<ReplicaId, Replica>) -> Vec<Member> {
    (membership.nodes())
        .map(|(id, node)| Member { addr: node.addr.clone(), voter: is_voter(membership, *id) })
        .collect()
}

/// What replica `raft` reports of itself.
pub fn state(raft: &Raft<Group>, contacts: &Contacts) -> ReplicaState {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    let followers = (m.replication.iter().flatten())
        .filter(|(id, _)| **id != m.id)
        .filter_map(|(id, matched)| {
            let node = membership.get_node(id)?;
            Some(Follower {
                addr: node.addr.clone(),
                matched_index: matched.map(|log_id| log_id.index),
                millis_since_contact: contacts.since(*id).map(|d| d.as_millis() as u64),
            })
        })
        .collect();
    let role = match m.state {
        openraft::ServerState::Leader => "leader",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Learner => "learner",
        openraft::ServerState::Shutdown => "stopped",
    };
    let leader = m.current_leader.and_then(|id| membership.get_node(&id).map(|n| n.addr.clone()));
    ReplicaState {
        role: role.to_string(),
        term: m.current_term,
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.map(|id| id.index),
        snapshot_index: m.snapshot.map(|id| id.index),
        purged_index: m.purged.map(|id| id.index),
        leader,
        millis_since_quorum_ack: m.millis_since_quorum_ack,
        members: members(membership),
        followers,
    }
}

/// Clients of the other replicas, by id and address, each with whether its last call
/// failed (logged only when that flips: openraft retries many times a second).
type Clients = HashMap<(ReplicaId, String), (Arc<Client>, Arc<AtomicBool>)>;

/// Connections from replica `me` to the others, one per peer, opened when first used.
pub struct Network {
    me: ReplicaId,
    options: ClientOptions,
    clients: Arc<Mutex<Clients>>,
    contacts: Arc<Contacts>,
}

impl Network {
    /// The network of replica `me`, noting in `contacts` when each peer answers.
    pub fn new(me: ReplicaId, options: ClientOptions, contacts: Arc<Contacts>) -> Network {
        Network { me, options, clients: Arc::default(), contacts }
    }
}

impl RaftNetworkFactory<Group> for Network {
    type Network = Peer;

    /// Called for every vote and read barrier: hands out the cached client, dials nothing.
    async fn new_client(&mut self, target: ReplicaId, node: &Replica) -> Peer {
        let key = (target, node.addr.clone());
        let (client, failing) = self
            .clients
            .locked()
            .entry(key)
            .or_insert_with(|| {
                let client = Client::new(node.addr.clone(), Service::Replication, self.options);
                (Arc::new(client), Arc::default())
            })
            .clone();
        let contacts = self.contacts.clone();
        Peer { me: self.me, target, node: node.clone(), client, failing, contacts }
    }
}

/// The way from one replica to another.
pub struct Peer {
    me: ReplicaId,
    target: ReplicaId,
    node: Replica,
    client: Arc<Client>,
    failing: Arc<AtomicBool>,
    contacts: Arc<Contacts>,
}

type CallError<E = RaftError<ReplicaId>> = RPCError<ReplicaId, Replica, E>;

impl Peer {
    /// Sends `request`, waiting at most `option`'s deadline; a refusal comes back as the
    /// remote error `refused` picks from it.
    async fn call<E: std::error::Error>(
        &self,
        request: Request,
        action: RPCTypes,
        option: RPCOption,
        refused: impl FnOnce(Refusal) -> Result<E, NetworkError>,
    ) -> Result<Reply, CallError<E>> {
        let timeout = option.hard_ttl();
        let call = Call { to: self.target, request };
        let answered = self.client.call_within(&call, timeout).await;
        self.note(&answered);
        let answer: Answer = match answered {
            Ok(answer) => answer,
            Err(shardfs_rpc::Error::Timeout { .. }) => {
                let timeout = Timeout { action, id: self.me, target: self.target, timeout };
                return Err(RPCError::Timeout(timeout));
            }
            Err(e @ (shardfs_rpc::Error::Decode(_) | shardfs_rpc::Error::BadFrame(_))) => {
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
        };
        answer.map_err(|refusal| match refused(refusal) {
            Ok(remote) => RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                remote,
            )),
            Err(network) => RPCError::Network(network),
        })
    }
}

impl Peer {
    /// Logs a peer becoming unreachable, and reachable again.
    fn note<T>(&self, answered: &Result<T, shardfs_rpc::Error>) {
        let failed = answered.is_err();
        if !failed {
            self.contacts.note(self.target);
        }
        if self.failing.swap(failed, Ordering::Relaxed) == failed {
            return;
        }
        match answered {
            Err(e) => warn!(replica = %self.node.addr, "cannot reach a replica: {e}"),
            Ok(_) => info!(replica = %self.node.addr, "a replica is reachable again"),
        }
    }
}

/// The raft error a refusal carries, or the refusal as a network failure.
fn raft_error(refusal: Refusal) -> Result<RaftError<ReplicaId>, NetworkError> {
    match refusal {
        Refusal::Raft(e) => Ok(e),
        other => Err(NetworkError::new(&other)),
    }
}

fn snapshot_error(
    refusal: Refusal,
) -> Result<RaftError<ReplicaId, InstallSnapshotError>, NetworkError> {
    match refusal {
        Refusal::Snapshot(e) => Ok(e),
        other => Err(NetworkError::new(&other)),
    }
}

fn wrong_reply<E: std::error::Error>() -> CallError<E> {
    RPCError::Network(NetworkError::new(&Refusal::WrongReply))
}

impl RaftNetwork<Group> for Peer {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<Group>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<ReplicaId>, CallError> {
        let request = Request::AppendEntries(request);
        match self.call(request, RPCTypes::AppendEntries, option, raft_error).await? {
            Reply::AppendEntries(response) => Ok(response),
            _ => Err(wrong_reply()),
        }
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<Group>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<ReplicaId>,
        CallError<RaftError<ReplicaId, InstallSnapshotError>>,
    > {
        let request = Request::InstallSnapshot(request);
        match self.call(request, RPCTypes::InstallSnapshot, option, snapshot_error).await? {
            Reply::InstallSnapshot(response) => Ok(response),
            _ => Err(wrong_reply()),
        }
    }

    async fn vote(
        &mut self,
        request: VoteRequest<ReplicaId>,
        option: RPCOption,
    ) -> Result<VoteResponse<ReplicaId>, CallError> {
        match self.call(Request::Vote(request), RPCTypes::Vote, option, raft_error).await? {
            Reply::Vote(response) => Ok(response),
            _ => Err(wrong_reply()),
        }
    }
}
