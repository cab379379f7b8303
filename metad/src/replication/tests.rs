//! The log store and the state machine against openraft's own test suite of the storage
//! contract: what openraft relies on of them, on a real database and log on disk.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::{Group, StorageError};
use crate::store::{Store, VolumeOverrides, VolumeSettings};
use shardfs_chunk_api::Encoding;

struct Replica;

impl StoreBuilder<Group, LogStore, StateMachine, TempDir> for Replica {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("temporary directory");
        let store =
            Store::open(&dir.path().join("meta.db"), VolumeOverrides::default(), settings())
                .expect("store");
        let log = LogStore::open(&dir.path().join("raft-log.db"))?;
        let machine = StateMachine::new(Arc::new(store), &dir.path().join("snapshots"))?;
        Ok((dir, log, machine))
    }
}

fn settings() -> VolumeSettings {
    VolumeSettings {
        hot: Encoding::rs(2, 1).expect("2+1"),
        cold: Encoding::rs(2, 1).expect("2+1"),
        chunk_size: 1 << 20,
    }
}

#[test]
fn the_log_and_the_database_keep_openraft_s_storage_contract() {
    Suite::test_all(Replica).expect("the storage suite");
}

/// Replicas of one group in this process, each with its own database, log and listener on
/// loopback, talking over the cluster-secret transport as separate daemons would.
mod group {
    use std::collections::{BTreeMap, HashMap};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use openraft::{Raft, ServerState};
    use shardfs_rpc::{ClientOptions, ClusterKey, ServerConfig};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use crate::replication::group::{self, Endpoint, LogProposer, Timing};
    use crate::replication::network::Contacts;
    use crate::replication::{Answers, Group, Proposal, Replica, ReplicaId};
    use crate::store::{Applied, Change, Mutation, NewInode, Store};
    use shardfs_meta_api::proto::{Cred, FileKind, MetaError, ROOT_INO, Timestamp};
    use shardfs_rpc::sync::blocking;

    const WAIT: Duration = Duration::from_secs(20);

    /// Fast enough for tests: heartbeats every 100 ms, elections after 300-500 ms of silence;
    /// a snapshot every 10 entries, and the log cut right behind it.
    const TIMING: Timing = Timing {
        heartbeat_ms: 100,
        election_min_ms: 300,
        election_max_ms: 500,
        snapshot_every: 10,
        kept_after_snapshot: 0,
        purge_batch: 1,
    };

    fn key() -> ClusterKey {
        ClusterKey::from_secret(b"replication tests")
    }

    struct Member {
        raft: Raft<Group>,
        store: Arc<Store>,
        stop: Option<oneshot::Sender<()>>,
    }

    /// A group whose replicas live in `root/<id>/`, on fixed loopback addresses.
    struct Members {
        root: tempfile::TempDir,
        addrs: HashMap<ReplicaId, String>,
        running: HashMap<ReplicaId, Member>,
    }

    impl Members {
        async fn new(ids: &[ReplicaId]) -> Members {
            let mut addrs = HashMap::new();
            for &id in ids {
                // Bound and let go: a port the kernel just gave out stays free in a test.
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                addrs.insert(id, listener.local_addr().unwrap().to_string());
            }
            Members { root: tempfile::tempdir().unwrap(), addrs, running: HashMap::new() }
        }

        /// A group of `ids`, every one started, set up by the first.
        async fn set_up(ids: &[ReplicaId]) -> Members {
            let mut group = Members::new(ids).await;
            for &id in ids {
                group.start(id).await;
            }
            group.initialize(ids[0]).await;
            group
        }

        fn dir(&self, id: ReplicaId) -> PathBuf {
            self.root.path().join(id.to_string())
        }

        async fn start(&mut self, id: ReplicaId) {
            let dir = self.dir(id);
            std::fs::create_dir_all(&dir).unwrap();
            let store = Arc::new(open_store(&dir));
            let options = ClientOptions::with_key(key());
            let contacts = Arc::new(Contacts::default());
            let raft = group::start(id, &dir, store.clone(), TIMING, options, contacts.clone())
                .await
                .unwrap();
            let runtime = tokio::runtime::Handle::current();
            store.replicate_through(Arc::new(LogProposer { raft: raft.clone(), runtime }));
            let listener = TcpListener::bind(&self.addrs[&id]).await.unwrap();
            let endpoint = Arc::new(Endpoint { raft: raft.clone(), me: id, contacts });
            let (stop, stopped) = oneshot::channel::<()>();
            let shutdown = async move {
                let _ = stopped.await;
            };
            tokio::spawn(shardfs_rpc::serve(
                listener,
                endpoint,
                ServerConfig::new(key()),
                shutdown,
            ));
            self.running.insert(id, Member { raft, store, stop: Some(stop) });
        }

        /// Stops replica `id` as if its host died: no more answers, no more calls.
        async fn kill(&mut self, id: ReplicaId) {
            let mut member = self.running.remove(&id).expect("running");
            member.raft.shutdown().await.unwrap();
            drop(member.stop.take());
        }

        async fn initialize(&self, by: ReplicaId) {
            let members: BTreeMap<ReplicaId, Replica> = (self.addrs.iter())
                .map(|(&id, addr)| (id, Replica { addr: addr.clone() }))
                .collect();
            self.running[&by].raft.initialize(members).await.unwrap();
            // The group's first entry sets up the volume, as a new leader does.
            let leader = self.leader().await;
            let settings = super::settings();
            let volume = Mutation::Volume { settings, now: Timestamp::now() };
            let proposal = Proposal { changes: vec![Change::apply(volume)] };
            self.running[&leader].raft.client_write(proposal).await.unwrap();
        }

        /// The leader the running replicas agree on.
        async fn leader(&self) -> ReplicaId {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let leaders: Vec<ReplicaId> = (self.running.iter())
                    .filter(|(_, m)| m.raft.metrics().borrow().state == ServerState::Leader)
                    .map(|(&id, _)| id)
                    .collect();
                if let [leader] = leaders[..] {
                    return leader;
                }
                assert!(tokio::time::Instant::now() < deadline, "no single leader: {leaders:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Creates `name` in the root through the leader; returns the log index it took.
        async fn create(&self, leader: ReplicaId, name: &str) -> u64 {
            let new = NewInode {
                kind: FileKind::File,
                perm: 0o644,
                umask: 0,
                cred: Cred::ROOT,
                rdev: 0,
                target: None,
            };
            let create = Mutation::Create {
                ino: crate::store::UNNUMBERED,
                parent: ROOT_INO,
                name: name.as_bytes().to_vec(),
                new,
                now: Timestamp::now(),
            };
            let proposal = Proposal { changes: vec![Change::numbered(create)] };
            let written = self.running[&leader].raft.client_write(proposal).await.unwrap();
            let Answers(outcomes) = written.data;
            assert!(matches!(outcomes[..], [Ok((Applied::Made(_), _))]), "{outcomes:?}");
            written.log_id.index
        }

        /// Waits until every running replica applied entry `index`.
        async fn applied(&self, index: u64) {
            for member in self.running.values() {
                member
                    .raft
                    .wait(Some(WAIT))
                    .applied_index_at_least(Some(index), "applied")
                    .await
                    .unwrap();
            }
        }
    }

    fn open_store(dir: &Path) -> Store {
        Store::open_replica(&dir.join("meta.db"), super::settings()).unwrap()
    }

    fn names(store: &Store) -> Vec<String> {
        let (_, entries) = store.read_dir(ROOT_INO, 0, 10_000).unwrap();
        let mut names: Vec<String> =
            entries.iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect();
        names.retain(|n| n != "." && n != "..");
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_of_three_replicates_and_outlives_its_leader() {
        let mut group = Members::set_up(&[1, 2, 3]).await;
        let first = group.leader().await;
        let index = group.create(first, "before").await;
        group.applied(index).await;
        for member in group.running.values() {
            assert_eq!(names(&member.store), ["before"], "every replica applied the create");
        }
        group.kill(first).await;
        let second = group.leader().await;
        assert_ne!(first, second);
        let index = group.create(second, "after").await;
        group.applied(index).await;
        for member in group.running.values() {
            assert_eq!(names(&member.store), ["after", "before"]);
        }
        for id in group.running.keys().copied().collect::<Vec<_>>() {
            group.kill(id).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wiped_replica_catches_up_from_a_snapshot() {
        let mut group = Members::set_up(&[1, 2, 3]).await;
        let leader = group.leader().await;
        let wiped = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
        group.kill(wiped).await;
        std::fs::remove_dir_all(group.dir(wiped)).unwrap();
        // Enough entries for snapshots, behind which the log is purged: the wiped replica
        // can only be brought up to date with a snapshot.
        let mut last = 0;
        for i in 0..25 {
            last = group.create(leader, &format!("f{i:02}")).await;
        }
        let purged = group.running[&leader].raft.wait(Some(WAIT));
        purged.metrics(|m| m.purged.is_some_and(|p| p.index > 10), "purged").await.unwrap();
        group.start(wiped).await;
        group.applied(last).await;
        let expected: Vec<String> = (0..25).map(|i| format!("f{i:02}")).collect();
        assert_eq!(names(&group.running[&wiped].store), expected);
        let installed = group.running[&wiped].raft.metrics().borrow().snapshot;
        assert!(installed.is_some(), "the wiped replica was brought up by a snapshot");
        for id in group.running.keys().copied().collect::<Vec<_>>() {
            group.kill(id).await;
        }
    }

    /// A replica's store sends its changes to the log: through the leader's, a create
    /// reaches every replica; a follower's refuses, naming the leader.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_s_store_changes_only_through_the_log() {
        let mut group = Members::set_up(&[1, 2, 3]).await;
        let leader = group.leader().await;
        let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
        let file = libc::S_IFREG | 0o644;
        let store = group.running[&leader].store.clone();
        let made = blocking(move || store.make_node(ROOT_INO, b"through", file, 0, Cred::ROOT));
        made.await.unwrap().expect("a create through the leader's store");
        // The leader's metrics may not show the create yet; what it has committed does.
        let committed = group.running[&leader].raft.ensure_linearizable().await.unwrap();
        group.applied(committed.expect("committed").index).await;
        let store = group.running[&follower].store.clone();
        let refused = blocking(move || store.make_node(ROOT_INO, b"refused", file, 0, Cred::ROOT));
        match refused.await.unwrap() {
            Err(MetaError::NotLeader(named)) => {
                assert_eq!(named.as_ref(), Some(&group.addrs[&leader]), "names the leader");
            }
            other => panic!("a follower's store made a change: {other:?}"),
        }
        for member in group.running.values() {
            assert_eq!(names(&member.store), ["through"]);
        }
        for id in group.running.keys().copied().collect::<Vec<_>>() {
            group.kill(id).await;
        }
    }

    /// Leader-only work asks whether its store is current before acting on an absence
    /// (GC before deleting a shard): the leader's is; a follower's is not, naming the leader;
    /// nor is the leader's once it has lost the others, and it says so rather than wait on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_leader_with_a_quorum_is_current() {
        let mut group = Members::set_up(&[1, 2, 3]).await;
        let leader = group.leader().await;
        let current = |store: Arc<Store>| blocking(move || store.confirm_current());
        let store = |id: ReplicaId| group.running[&id].store.clone();
        let leading = store(leader);
        current(leading.clone()).await.unwrap().expect("the leader's store is current");
        let followers: Vec<ReplicaId> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
        match current(store(followers[0])).await.unwrap() {
            Err(MetaError::NotLeader(named)) => {
                assert_eq!(named.as_ref(), Some(&group.addrs[&leader]), "names the leader");
            }
            other => panic!("a follower's store counted as current: {other:?}"),
        }
        for &id in &followers {
            group.kill(id).await;
        }
        let alone = tokio::time::timeout(WAIT, current(leading)).await;
        let alone = alone.expect("an answer, not a wait").unwrap();
        assert!(alone.is_err(), "a leader without a quorum counted as current");
        group.kill(leader).await;
    }

    /// A call meant for another replica (the group's addresses are wrong) is refused and
    /// changes nothing; one from a peer without the cluster secret does not get through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_refuses_calls_meant_for_another_and_strangers() {
        use crate::replication::network::{Answer, Call, Refusal, Request};
        use openraft::raft::VoteRequest;
        use openraft::{LeaderId, Vote};

        let mut group = Members::new(&[1]).await;
        group.start(1).await;
        let vote = VoteRequest { vote: Vote::new(5, 2), last_log_id: None };
        let call = Call { to: 9, request: Request::Vote(vote.clone()) };
        let client = shardfs_rpc::Client::new(
            &group.addrs[&1],
            shardfs_rpc::Service::Replication,
            ClientOptions::with_key(key()),
        );
        let answer: Answer = client.call(&call).await.unwrap();
        assert!(matches!(answer, Err(Refusal::WrongReplica { me: 1, meant: 9 })), "{answer:?}");
        let term = group.running[&1].raft.metrics().borrow().vote.leader_id;
        assert_eq!(term, LeaderId::default(), "a refused vote request changed the vote");
        let stranger = ClientOptions::with_key(ClusterKey::from_secret(b"another cluster"));
        let stranger =
            shardfs_rpc::Client::new(&group.addrs[&1], shardfs_rpc::Service::Replication, stranger);
        let call = Call { to: 1, request: Request::Vote(vote) };
        let refused = stranger.call::<_, Answer>(&call).await;
        assert!(matches!(refused, Err(shardfs_rpc::Error::AuthRefused { .. })), "{refused:?}");
        group.kill(1).await;
    }

    /// A mount's request retried after its first try was committed (say, on a new leader)
    /// is applied once and answers as it did first: the create's second try finds its own
    /// file, not `EEXIST`, and on every replica. Once the session says it has had the
    /// answer, the recorded outcome is forgotten.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retried_request_is_applied_once() {
        use shardfs_meta_api::proto::Seq;
        let mut group = Members::set_up(&[1, 2, 3]).await;
        let leader = group.leader().await;
        let store = group.running[&leader].store.clone();
        let create = move |name: &'static [u8], n: u64, answered_below: u64| {
            let store = store.clone();
            let seq = Some(Seq { n, answered_below });
            blocking(move || {
                crate::store::numbered(7, seq, || {
                    store.make_node(ROOT_INO, name, libc::S_IFREG | 0o644, 0, Cred::ROOT)
                })
            })
        };
        let first = create(b"once", 1, 1).await.unwrap().expect("the first try");
        let again = create(b"once", 1, 1).await.unwrap().expect("the retry answers the same");
        assert_eq!(again.attr.ino, first.attr.ino);
        // The leader's metrics may not show the create yet; what it has committed does.
        let committed = group.running[&leader].raft.ensure_linearizable().await.unwrap();
        group.applied(committed.expect("committed").index).await;
        for member in group.running.values() {
            assert_eq!(names(&member.store), ["once"]);
        }
        // Request 2 says request 1 was answered: request 1's outcome goes, and the name is a
        // conflict like any other.
        create(b"next", 2, 2).await.unwrap().expect("another create");
        match create(b"once", 1, 2).await.unwrap() {
            Err(MetaError::Exists) => {}
            other => panic!("request 1's outcome outlived its answer: {other:?}"),
        }
        for id in group.running.keys().copied().collect::<Vec<_>>() {
            group.kill(id).await;
        }
    }

    /// A mount's batch retried after its first try was committed is applied once: the
    /// retry answers what the first try did (every change applied), and no replica holds
    /// any change of it twice or refuses it for finding the first try's names.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retried_batch_is_applied_once() {
        use shardfs_meta_api::proto::{NameRequest, Queued, Seq, Timestamp};
        let mut group = Members::set_up(&[1, 2, 3]).await;
        let leader = group.leader().await;
        let store = group.running[&leader].store.clone();
        let reserving = store.clone();
        let (first, first_cookie) =
            blocking(move || reserving.reserve_inos(7, 4)).await.unwrap().unwrap();
        let now = Timestamp::now();
        let mkdir = NameRequest::MakeDir {
            parent: ROOT_INO,
            name: "d".into(),
            mode: 0o755,
            cred: Cred::ROOT,
        };
        let mode = libc::S_IFREG | 0o644;
        let create = NameRequest::MakeNode {
            parent: first,
            name: "f".into(),
            mode,
            rdev: 0,
            cred: Cred::ROOT,
        };
        let changes = vec![
            Queued { request: mkdir.into(), ino: first, now },
            Queued { request: create.into(), ino: first + 1, now },
        ];
        let batch = move || {
            let (store, changes) = (store.clone(), changes.clone());
            let seq = Some(Seq { n: 1, answered_below: 1 });
            blocking(move || crate::store::numbered(7, seq, || store.batch(7, changes)))
        };
        let answered = batch().await.unwrap().expect("the first try");
        assert_eq!((answered.applied, &answered.made), (2, &vec![first, first + 1]));
        assert_eq!(batch().await.unwrap().expect("the retry"), answered);
        // The leader's metrics may not show the create yet; what it has committed does.
        let committed = group.running[&leader].raft.ensure_linearizable().await.unwrap();
        group.applied(committed.expect("committed").index).await;
        for member in group.running.values() {
            assert_eq!(names(&member.store), ["d"]);
            assert_eq!(member.store.lookup(first, b"f").unwrap().ino, first + 1);
            // Every replica lists the names with the cookies reserved for them.
            let (_, listed) = member.store.read_dir(first, 0, 10).unwrap();
            assert_eq!(listed.iter().map(|e| e.cookie).collect::<Vec<_>>(), [first_cookie + 1]);
        }
        for id in group.running.keys().copied().collect::<Vec<_>>() {
            group.kill(id).await;
        }
    }
}
