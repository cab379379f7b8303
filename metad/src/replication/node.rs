//! A metad replica as a daemon: its database, log and consensus engine, one listener for
//! clients, chunkds and the other replicas, and the metad server it runs while it leads.
//!
//! Only the leader answers clients and chunkds. It answers as a restarted metad would:
//! each time a replica becomes the leader it takes up what the replicated database records
//! (sessions, locks, files held open, the chunkd registry) into a new [`MetadServer`], and
//! runs the background workers while it leads. Every other replica answers `NotLeader`,
//! naming the leader it knows, and clients go there (`shardfs_rpc::Replicas`). An answer
//! is given only once a quorum still follows this leader ([`ReadBarrier`]), so a deposed
//! leader never answers from a state that a newer one has changed.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use openraft::{Raft, ServerState};
use shardfs_chunk_api::membership::{MembershipError, MembershipResponse};
use shardfs_rpc::sync::{Lock as _, ReadWrite as _, blocking};
use shardfs_rpc::{DaemonAuth, Handler, Pusher, Service};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::group::{self, LogProposer, Timing};
use super::membership;
use super::network::{self, Call, Contacts, Refusal, ReplicaState, Reply, Request};
use super::{Group, Replica, ReplicaId};
use crate::daemon::{self, MetadConfig};
use crate::server::MetadServer;
use crate::store::{Mutation, Store};
use shardfs_meta_api::proto::{MetaError, MetaResponse, Timestamp};

/// A replica's id: from its address, so every replica given the same list agrees.
pub fn replica_id(addr: &str) -> ReplicaId {
    let hash = blake3::hash(addr.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&hash.as_bytes()[..8]);
    // Ids start at 1 (openraft's `NodeId::default()` is "none").
    u64::from_le_bytes(id).max(1)
}

/// How often a new replica asks the others whether they are new too.
const SET_UP_PAUSE: Duration = Duration::from_millis(500);

pub struct Node {
    raft: Raft<Group>,
    me: ReplicaId,
    addr: String,
    /// Every replica of the group as first set up, this one included.
    replicas: BTreeMap<ReplicaId, Replica>,
    store: Arc<Store>,
    config: MetadConfig,
    auth: DaemonAuth,
    leading: RwLock<Option<Arc<Leading>>>,
    /// Set when this replica started empty in a group that has had a leader (its data
    /// directory was lost): until the leader has sent it what was committed, it refuses to
    /// vote. Its empty log would let a candidate that lacks committed entries win.
    rejoining: AtomicBool,
    contacts: Arc<Contacts>,
    /// Set when this learner is to become a group of one (`shardfs metad promote`).
    promote: watch::Sender<bool>,
    /// The data directory's lock, held while this replica lives (`crate::backup`).
    _data_lock: std::fs::File,
}

/// Why a replica stopped serving.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It was told to stop.
    Shutdown,
    /// It was a learner and is now a group of one: start it again.
    Promoted,
}

/// What a replica runs while it leads.
struct Leading {
    server: Arc<MetadServer>,
    /// Client connections opened since this replica took the lead: the only ones whose
    /// sessions `server` knows. A client on an older one is sent to reconnect.
    connections: Mutex<HashSet<SocketAddr>>,
    /// Set when the lead is lost: the background workers stop, and requests still being
    /// answered (a lock wait) are sent to the new leader.
    lost: watch::Sender<bool>,
    reads: ReadBarrier,
}

impl Leading {
    /// Completes once the lead is lost.
    async fn lost(&self) {
        let _ = self.lost.subscribe().wait_for(|lost| *lost).await;
    }
}

impl Node {
    /// Opens the replica of `config.replicas` at `addr` over `config.data`.
    pub async fn start(config: &MetadConfig, addr: &str) -> anyhow::Result<Arc<Node>> {
        let replicas: BTreeMap<ReplicaId, Replica> = (config.replicas.iter())
            .map(|a| (replica_id(a), Replica { addr: a.clone() }))
            .collect();
        if replicas.len() != config.replicas.len() {
            anyhow::bail!("--replicas names a replica twice: {}", config.replicas.join(","));
        }
        let data_lock = daemon::lock_data(config)?;
        let path = config.data.join(crate::backup::DATABASE);
        let store = Store::open_replica(&path, daemon::DEFAULTS)
            .with_context(|| format!("cannot open metadata database {}", path.display()))?;
        let store = Arc::new(store);
        let auth = DaemonAuth { key: daemon::load_key(config)?, tls: config.tls };
        let me = replica_id(addr);
        let options = auth.client_options();
        let timing = Timing::snapshotting_every(config.snapshot_every);
        let contacts = Arc::new(Contacts::default());
        let raft = group::start(me, &config.data, store.clone(), timing, options, contacts.clone())
            .await
            .context("cannot start the replicated log")?;
        let runtime = tokio::runtime::Handle::current();
        store.replicate_through(Arc::new(LogProposer { raft: raft.clone(), runtime }));
        Ok(Arc::new(Node {
            raft,
            me,
            addr: addr.to_string(),
            replicas,
            store,
            config: config.clone(),
            auth,
            leading: RwLock::new(None),
            rejoining: AtomicBool::new(false),
            contacts,
            promote: watch::Sender::new(false),
            _data_lock: data_lock,
        }))
    }

    /// Serves on `listener` until `shutdown` completes or this learner is promoted, setting
    /// up the group first if every replica is new, and leading whenever elected. Fails if
    /// the group cannot be set up (a replica refuses this one's cluster secret) or the log
    /// stops (its disk failed).
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<Stopped> {
        let (stop, stopped) = watch::channel(());
        let serving = tokio::spawn(shardfs_rpc::serve(
            listener,
            self.clone(),
            self.auth.server_config(),
            daemon::until_stopped(stopped),
        ));
        let set_up = async {
            match self.set_up_group().await {
                Ok(()) => std::future::pending().await,
                Err(e) => e,
            }
        };
        // The log holds every change durably; the database is synced, on every replica,
        // for its checkpoints to keep the WAL short.
        let syncing = async {
            loop {
                tokio::time::sleep(daemon::SYNC_INTERVAL).await;
                daemon::sync(&self.store).await;
            }
        };
        let promoted = async {
            let _ = self.promote.subscribe().wait_for(|promote| *promote).await;
        };
        let ran = tokio::select! {
            _ = shutdown => Ok(Stopped::Shutdown),
            _ = promoted => Ok(Stopped::Promoted),
            never = syncing => never,
            e = set_up => Err(e),
            e = self.follow_roles() => Err(e),
        };
        self.give_up_lead();
        drop(stop);
        let _ = serving.await;
        if let Err(e) = self.raft.shutdown().await {
            warn!("the replicated log did not stop cleanly: {e}");
        }
        daemon::sync(&self.store).await;
        if let Ok(Stopped::Promoted) = ran {
            membership::make_group_of_one(&self.config.data, self.me, &self.addr).await?;
        }
        ran
    }

    /// Sets up the group if this replica is new and so is every other: a group's log is
    /// begun once, and never by a replica that lost its data while the others kept theirs
    /// (it waits for the leader to send it everything instead).
    async fn set_up_group(&self) -> anyhow::Result<()> {
        let mut waiting_logged = false;
        loop {
            if self.raft.is_initialized().await? {
                return Ok(());
            }
            if !self.replicas.contains_key(&self.me) {
                info!(
                    "this replica is not one of --replicas: it joins once added (shardfs metad \
                     add {} --metad {})",
                    self.addr,
                    self.config.replicas.join(",")
                );
                return Ok(());
            }
            let mut all_new = true;
            for (_, replica) in self.replicas.iter().filter(|(id, _)| **id != self.me) {
                match self.ask_new(&replica.addr).await {
                    Ok(true) => {}
                    Ok(false) => {
                        if self.has_led(&replica.addr).await {
                            self.rejoining.store(true, Ordering::SeqCst);
                        }
                        info!(
                            replica = %replica.addr,
                            "the group is set up already: waiting for its leader to catch this \
                             replica up"
                        );
                        return Ok(());
                    }
                    Err(
                        e @ (shardfs_rpc::Error::AuthRefused { .. }
                        | shardfs_rpc::Error::AuthServer { .. }),
                    ) => {
                        return Err(anyhow::anyhow!(
                            "replica {} does not share this replica's cluster secret: {e}",
                            replica.addr
                        ));
                    }
                    Err(e) => {
                        all_new = false;
                        if !waiting_logged {
                            info!(replica = %replica.addr, "waiting for every replica to start: {e}");
                            waiting_logged = true;
                        }
                    }
                }
            }
            if all_new {
                match self.raft.initialize(self.replicas.clone()).await {
                    Ok(()) => info!(replicas = self.replicas.len(), "set up the replica group"),
                    Err(e) => debug!("the group was set up meanwhile: {e}"),
                }
                return Ok(());
            }
            tokio::time::sleep(SET_UP_PAUSE).await;
        }
    }

    /// Whether the replica at `addr` has applied an entry a leader committed: the group
    /// has had a leader (the first entry, the membership, is written before any election).
    async fn has_led(&self, addr: &str) -> bool {
        let options = self.auth.client_options();
        let answer = network::ask(addr, Request::Status, options, SET_UP_PAUSE * 4).await;
        // Unsure counts as yes: refusing votes until caught up only delays this one.
        !matches!(answer, Ok(Ok(Reply::Status(state))) if state.applied_index.is_none_or(|i| i < 1))
    }

    /// Promotes this learner, if it may be, into a group of one: `run` stops, rewrites the
    /// log, and returns [`Stopped::Promoted`].
    async fn promote(&self) -> network::Answer {
        let applied_index = membership::promotable(&self.raft, self.auth.client_options()).await?;
        warn!(applied_index, "promoted by shardfs metad promote: restarting as a group of one");
        self.promote.send_replace(true);
        Ok(Reply::Promoting { applied_index })
    }

    /// Whether this replica refuses to vote: it is rejoining and has nothing yet.
    fn refuses_votes(&self) -> bool {
        if !self.rejoining.load(Ordering::SeqCst) {
            return false;
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.last_log_index.is_some() || m.snapshot.is_some() {
            self.rejoining.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Whether the replica at `addr` is new (no log, no vote).
    async fn ask_new(&self, addr: &str) -> Result<bool, shardfs_rpc::Error> {
        let options = self.auth.client_options();
        match network::ask(addr, Request::Fresh, options, SET_UP_PAUSE * 4).await? {
            Ok(Reply::Fresh(fresh)) => Ok(fresh),
            Ok(_) => Err(shardfs_rpc::Error::BadFrame("a reply of the wrong kind".into())),
            Err(refusal) => Err(shardfs_rpc::Error::BadFrame(refusal.to_string())),
        }
    }

    /// Leads while elected: takes up the database into a server when this replica becomes
    /// the leader, and drops it (stopping its workers) when it stops being one. Returns only
    /// if the replicated log stops for good (a failure of this replica's disk).
    async fn follow_roles(&self) -> anyhow::Error {
        let mut metrics = self.raft.metrics();
        loop {
            let (elected, running) = {
                let now = metrics.borrow_and_update();
                (now.state == ServerState::Leader, now.running_state.clone())
            };
            if let Err(fatal) = running {
                return anyhow::anyhow!("the replicated log stopped: {fatal}");
            }
            let leads = self.leading.read_locked().is_some();
            let mut retry = false;
            if elected && !leads {
                match self.take_lead().await {
                    Ok(leading) => {
                        info!(addr = %self.addr, "leading the metadata group");
                        *self.leading.write_locked() = Some(leading);
                    }
                    Err(e) => {
                        warn!("cannot take the lead: {e:#}");
                        retry = true;
                    }
                }
            } else if !elected && leads {
                self.give_up_lead();
                info!(addr = %self.addr, "no longer the leader");
            }
            if retry {
                tokio::time::sleep(SET_UP_PAUSE).await;
            } else if metrics.changed().await.is_err() {
                return anyhow::anyhow!("the replicated log stopped");
            }
        }
    }

    /// Becomes the group's server: once every entry of earlier terms is applied, sets the
    /// volume's settings if the group has none or this replica was given others, takes up
    /// what the database records, and starts the background workers.
    async fn take_lead(&self) -> anyhow::Result<Arc<Leading>> {
        self.raft.ensure_linearizable().await.context("not confirmed as the leader")?;
        let (store, config, auth) = (self.store.clone(), self.config.clone(), self.auth);
        let server = blocking(move || -> anyhow::Result<MetadServer> {
            let current = store.is_set_up()?.then(|| store.settings());
            let wanted = config.volume.over(current.unwrap_or(daemon::DEFAULTS));
            if current != Some(wanted) {
                let now = Timestamp::now();
                store.apply(Mutation::Volume { settings: wanted, now })?;
            }
            store.take_up()?;
            daemon::server_over(store, &config, auth)
        })
        .await??;
        let server = Arc::new(server);
        let leading = Arc::new(Leading {
            server,
            connections: Mutex::default(),
            lost: watch::Sender::new(false),
            reads: ReadBarrier::default(),
        });
        let work = (self.config.repair, self.config.gc, self.config.lifecycle);
        let stop = {
            let leading = leading.clone();
            async move { leading.lost().await }
        };
        tokio::spawn(daemon::work(leading.server.clone(), work, stop));
        Ok(leading)
    }

    /// Stops leading: the workers stop, and requests being answered are refused.
    fn give_up_lead(&self) {
        if let Some(leading) = self.leading.write_locked().take() {
            leading.lost.send_replace(true);
        }
    }

    /// The address of the leader as this replica knows it.
    fn leader_addr(&self) -> Option<String> {
        self.state().leader
    }

    /// This replica's role and progress.
    pub fn state(&self) -> ReplicaState {
        network::state(&self.raft, &self.contacts)
    }

    /// The refusal a replica that does not lead answers `service` with.
    fn refusal(&self, service: Service, leader: Option<String>) -> Vec<u8> {
        match service {
            Service::Membership => {
                let refused: MembershipResponse = Err(MembershipError::NotLeader(leader));
                shardfs_rpc::encode(&refused)
            }
            _ => shardfs_rpc::encode(&MetaResponse::Err(MetaError::NotLeader(leader))),
        }
    }

    /// The server, while this replica leads and (for a client) knows `peer`'s connection.
    fn leading_for(&self, service: Service, peer: SocketAddr) -> Option<Arc<Leading>> {
        let leading = self.leading.read_locked().clone()?;
        let known = service != Service::Metad || leading.connections.locked().contains(&peer);
        known.then_some(leading)
    }

    /// The key connections to this replica are authenticated with.
    pub fn key(&self) -> shardfs_rpc::ClusterKey {
        self.auth.key
    }

    /// The text of the metrics endpoint: this replica's role and progress, and on the
    /// leader its server's.
    pub async fn render_metrics(self: Arc<Self>) -> String {
        let mut text = super::metrics::render(&self.state());
        let leading = self.leading.read_locked().clone();
        match leading {
            Some(leading) => text.push_str(&leading.server.clone().render_metrics().await),
            None => text.push_str("# EOF\n"),
        }
        text
    }
}

impl Handler for Node {
    fn offers(&self, service: Service) -> bool {
        matches!(service, Service::Metad | Service::Membership | Service::Replication)
    }

    async fn handle(
        self: Arc<Self>,
        service: Service,
        peer: SocketAddr,
        body: Bytes,
    ) -> Result<Vec<u8>, shardfs_rpc::Error> {
        if service == Service::Replication {
            let call: Call = shardfs_rpc::decode(&body)?;
            let answer = match call.request {
                Request::Vote(_) if self.refuses_votes() => Err(Refusal::CatchingUp),
                Request::Add { addr, voter } if call.to == self.me => {
                    let options = self.auth.client_options();
                    membership::add(&self.raft, &addr, voter, options).await.map(Reply::Members)
                }
                Request::Remove { addr } if call.to == self.me => {
                    membership::remove(&self.raft, &addr).await.map(Reply::Members)
                }
                Request::Promote if call.to == self.me => self.promote().await,
                _ => network::answer(&self.raft, self.me, &self.contacts, call).await,
            };
            return Ok(shardfs_rpc::encode(&answer));
        }
        let Some(leading) = self.leading_for(service, peer) else {
            // A client whose connection predates this lead reconnects here (and says hello
            // again, so that its session is known).
            let leading = self.leading.read_locked().is_some();
            let leader = if leading { Some(self.addr.clone()) } else { self.leader_addr() };
            return Ok(self.refusal(service, leader));
        };
        if let Err(e) = leading.reads.confirm(&self.raft).await {
            debug!("not answering as the leader: {e}");
            return Ok(self.refusal(service, self.leader_addr().filter(|a| *a != self.addr)));
        }
        tokio::select! {
            answered = leading.server.clone().handle(service, peer, body) => answered,
            _ = leading.lost() => Ok(self.refusal(service, self.leader_addr())),
        }
    }

    fn connected(&self, service: Service, peer: SocketAddr, pusher: Pusher) {
        let Some(leading) = self.leading.read_locked().clone() else { return };
        if service == Service::Metad {
            leading.connections.locked().insert(peer);
        }
        leading.server.connected(service, peer, pusher);
    }

    fn disconnected(&self, service: Service, peer: SocketAddr) {
        let Some(leading) = self.leading.read_locked().clone() else { return };
        if service == Service::Metad && !leading.connections.locked().remove(&peer) {
            return;
        }
        leading.server.disconnected(service, peer);
    }
}

/// Confirms that this replica still leads before it answers: a quorum acknowledges it
/// (openraft's read index), and everything committed is applied. A confirmation begun at
/// time S holds for [`LEASE_READ`] after S: its heartbeat round, sent after S, made a quorum
/// refuse to vote for anyone else until at least S plus openraft's leader lease (the
/// election timeout's maximum, 0.9 s), so no other replica can lead, and commit, before
/// then; and every change this replica answered was applied here first. Requests that
/// arrive while none holds share one confirmation begun after they arrived. Kept per lead.
#[derive(Default)]
pub struct ReadBarrier {
    /// Confirmations begun.
    begun: AtomicU64,
    /// The number of the last confirmation that succeeded, and when it began.
    confirmed: tokio::sync::Mutex<(u64, Option<Instant>)>,
}

/// How long a confirmation holds. With the mount trusting its leases 0.5 s from sending a
/// request (`fs/src/core/trust.rs`), the request may have been answered under a
/// confirmation begun up to this long before it was sent: 0.3 + 0.5 s stays inside the
/// 0.9 s lease, with 0.1 s to spare for clocks that run at different rates.
pub const LEASE_READ: Duration = Duration::from_millis(300);

impl ReadBarrier {
    pub async fn confirm(&self, raft: &Raft<Group>) -> Result<(), String> {
        let arrived = self.begun.load(Ordering::SeqCst);
        let mut confirmed = self.confirmed.lock().await;
        let (number, began) = *confirmed;
        if number > arrived || began.is_some_and(|began| began.elapsed() < LEASE_READ) {
            return Ok(());
        }
        let this = self.begun.fetch_add(1, Ordering::SeqCst) + 1;
        let began = Instant::now();
        match raft.ensure_linearizable().await {
            Ok(_) => {
                *confirmed = (this, Some(began));
                Ok(())
            }
            Err(e) => {
                warn!("cannot confirm the lead: {e}");
                Err(e.to_string())
            }
        }
    }
}
