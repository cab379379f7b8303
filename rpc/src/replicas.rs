//! A client of a service that a group of replicas serves, only one of which (the leader)
//! answers: calls go to the replica last found leading; one that is unreachable, or answers
//! that it is not the leader, sends the call on to the leader it names or to the next
//! replica, until one answers or the failover time is up. A leader named that is not in the
//! list (a replica added to the group since) joins the list.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Serialize, de::DeserializeOwned};
use tracing::{debug, info};

use crate::sync::ReadWrite as _;
use crate::{Client, ClientOptions, Error, Service};

/// How long calls go on trying other replicas: long enough for a group to elect a new
/// leader after losing one (about 3 s, `metad::replication::group::Timing`) several times.
pub const FAILOVER_WITHIN: Duration = Duration::from_secs(30);

/// Pause between rounds over every replica, while none answers as leader.
const ROUND_PAUSE: Duration = Duration::from_millis(100);

/// Longest a bounded call waits for one replica of a group before trying the others: a
/// leader that stopped (frozen, or cut off without its connections closing) answers
/// nothing, and the group will have elected another by then. A retried request is applied
/// once (its number in the session, `shardfs_meta_api::proto::Seq`).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Clients of every replica of a group, and which one leads.
pub struct Replicas {
    /// As given, then any leader named that was not.
    replicas: RwLock<Vec<Arc<Replica>>>,
    /// The index of the replica calls go to first.
    current: AtomicUsize,
    failover_within: Duration,
    request_timeout: Duration,
    options: ClientOptions,
    service: Service,
    configure: Arc<dyn Fn(Client) -> Client + Send + Sync>,
}

/// The client of one replica.
struct Replica {
    client: Client,
    /// Bumped whenever a call gives up on this replica, so that the calls still waiting
    /// there (a blocking lock) give up too and follow to the leader.
    given_up: tokio::sync::watch::Sender<u64>,
}

impl Replicas {
    /// A client of `addrs`: one address, or several separated by commas. `configure` sets up
    /// the client of each (a hello, a push handler).
    pub fn new(
        addrs: &str,
        service: Service,
        options: ClientOptions,
        configure: impl Fn(Client) -> Client + Send + Sync + 'static,
    ) -> Replicas {
        let mut replicas = Replicas {
            replicas: RwLock::default(),
            current: AtomicUsize::new(0),
            failover_within: FAILOVER_WITHIN,
            request_timeout: options.request_timeout,
            options,
            service,
            configure: Arc::new(configure),
        };
        let given: Vec<Arc<Replica>> =
            split(addrs).into_iter().map(|addr| replicas.replica(addr)).collect();
        replicas.replicas = RwLock::new(given);
        replicas
    }

    fn replica(&self, addr: String) -> Arc<Replica> {
        let client = (self.configure)(Client::new(addr, self.service, self.options));
        Arc::new(Replica { client, given_up: tokio::sync::watch::Sender::new(0) })
    }

    /// The index of the replica at `addr`, added to the list if it is not in it.
    fn index_of(&self, addr: &str) -> usize {
        if let Some(at) = self.replicas.read_locked().iter().position(|r| r.client.addr() == addr) {
            return at;
        }
        let mut replicas = self.replicas.write_locked();
        match replicas.iter().position(|r| r.client.addr() == addr) {
            Some(at) => at,
            None => {
                info!(replica = addr, "a replica not in the list leads: added to it");
                replicas.push(self.replica(addr.to_string()));
                replicas.len() - 1
            }
        }
    }

    fn at(&self, at: usize) -> Arc<Replica> {
        let replicas = self.replicas.read_locked();
        replicas[at % replicas.len()].clone()
    }

    fn count(&self) -> usize {
        self.replicas.read_locked().len()
    }

    /// This client, giving up on a call after trying the replicas for `within`.
    pub fn failing_over_within(self, within: Duration) -> Replicas {
        Replicas { failover_within: within, ..self }
    }

    /// Every replica's address: as given, and any leader named since that was not.
    pub fn list(&self) -> Vec<String> {
        self.replicas.read_locked().iter().map(|r| r.client.addr().to_string()).collect()
    }

    /// The options the replicas are called with.
    pub fn options(&self) -> ClientOptions {
        self.options
    }

    /// How long a call waits for one replica's answer, unless told otherwise.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The address calls go to first: the leader's, as far as this client knows.
    pub fn leader(&self) -> String {
        self.at(self.current.load(Ordering::Relaxed)).client.addr().to_string()
    }

    /// Sends `request` to the leader, waiting for each replica's answer as long as the
    /// options' request timeout. `redirect` reads an answer that says "not the leader":
    /// `Some(leader)` then, with the leader's address if the replica knew it. With one
    /// replica, its answer or error is the call's, as with a plain [`Client`].
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        request: &Req,
        redirect: impl Fn(&Resp) -> Option<Option<String>>,
    ) -> Result<Resp, Error> {
        self.call_within(request, Some(self.request_timeout), redirect).await
    }

    /// Like [`call`](Self::call), waiting for each replica's answer at most `timeout`
    /// (`None`: without bound, for requests that may legitimately wait, as a blocking lock).
    pub async fn call_within<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        request: &Req,
        timeout: Option<Duration>,
        redirect: impl Fn(&Resp) -> Option<Option<String>>,
    ) -> Result<Resp, Error> {
        let started = Instant::now();
        let mut tried = 0;
        let group = self.count() > 1;
        let timeout = timeout.map(|t| if group { t.min(ATTEMPT_TIMEOUT) } else { t });
        loop {
            let at = self.current.load(Ordering::Relaxed) % self.count();
            let replica = self.at(at);
            let client = &replica.client;
            let mut given_up = replica.given_up.subscribe();
            let attempt = async {
                match timeout {
                    Some(timeout) => client.call_within(request, timeout).await,
                    None => client.call_without_timeout(request).await,
                }
            };
            let answered = tokio::select! {
                answered = attempt => answered,
                _ = given_up.changed() => Err(Error::ConnectionLost { addr: client.addr().to_string() }),
            };
            let failed = match answered {
                Ok(response) => match redirect(&response) {
                    None => return Ok(response),
                    Some(leader) => Error::NotLeader { addr: client.addr().to_string(), leader },
                },
                Err(e) => e,
            };
            let leader = match &failed {
                Error::NotLeader { leader, .. } if group => leader.clone(),
                // A replica naming itself: the connection predates its lead (a group of one
                // that was starting). A client of one address asks it again, and follows
                // no redirect elsewhere.
                Error::NotLeader { addr, leader: Some(leader) } if leader == addr => {
                    Some(leader.clone())
                }
                e if group && unreachable(e) => None,
                _ => return Err(failed),
            };
            replica.given_up.send_modify(|n| *n += 1);
            // A replica that does not lead keeps no session for this client: the next
            // connection to it says hello again.
            client.disconnect().await;
            if started.elapsed() >= self.failover_within {
                return Err(Error::NoLeader {
                    replicas: self.list().join(","),
                    within: self.failover_within,
                    last: failed.to_string(),
                });
            }
            // The leader named may be this replica itself, when the connection predates its
            // lead: it is called again on a new connection.
            let next = match leader {
                Some(leader) => self.index_of(&leader),
                None => (at + 1) % self.count(),
            };
            debug!(
                from = client.addr(),
                to = self.at(next).client.addr(),
                "looking for the leader"
            );
            let _ = self.current.compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed);
            if tried == 0 {
                info!(from = client.addr(), "the leader moved or is down; failing over");
            }
            tried += 1;
            if tried % self.count() == 0 {
                tokio::time::sleep(ROUND_PAUSE).await;
            }
        }
    }
}

/// The addresses in a comma-separated list, without blanks.
pub fn split(addrs: &str) -> Vec<String> {
    let list: Vec<String> =
        addrs.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
    if list.is_empty() { vec![addrs.to_string()] } else { list }
}

/// Whether `e` says the replica could not be reached or did not answer, so another may.
/// A replica stopping or starting may close a connection in the middle of its handshake
/// (`NotShardfs`), or stop reading it (`WriteTimeout`).
fn unreachable(e: &Error) -> bool {
    matches!(
        e,
        Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::NotShardfs { .. }
            | Error::ConnectionLost { .. }
            | Error::Timeout { .. }
            | Error::WriteTimeout { .. }
            | Error::Io(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_splits_on_commas_and_one_address_stays_one() {
        assert_eq!(split("a:1, b:2,,c:3"), ["a:1", "b:2", "c:3"]);
        assert_eq!(split("a:1"), ["a:1"]);
    }

    #[test]
    fn a_leader_named_outside_the_list_joins_it() {
        let options = ClientOptions::with_key(crate::ClusterKey::from_secret(b"test"));
        let replicas = Replicas::new("a:1,b:2", Service::Metad, options, |c| c);
        assert_eq!(replicas.index_of("b:2"), 1);
        assert_eq!(replicas.index_of("c:3"), 2);
        assert_eq!(replicas.index_of("c:3"), 2, "added once");
        assert_eq!(replicas.list(), ["a:1", "b:2", "c:3"]);
    }

    /// Answers its first `refusals` requests "not the leader", naming `leader` (its own
    /// address when `None`), and the rest "answered".
    struct Refusing {
        addr: std::sync::OnceLock<String>,
        leader: Option<String>,
        refusals: AtomicUsize,
    }

    impl crate::Handler for Refusing {
        fn offers(&self, service: Service) -> bool {
            service == Service::Metad
        }

        async fn handle(
            self: Arc<Self>,
            _service: Service,
            _peer: std::net::SocketAddr,
            _body: bytes::Bytes,
        ) -> Result<Vec<u8>, Error> {
            let refuse = self
                .refusals
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            let answer = match refuse {
                Ok(_) => {
                    let leader = self.leader.clone().or_else(|| self.addr.get().cloned());
                    format!("not the leader: {}", leader.unwrap_or_default())
                }
                Err(_) => "answered".to_string(),
            };
            Ok(crate::encode(&answer))
        }
    }

    /// A client of one replica that refuses `refusals` requests naming `leader`; the answer
    /// to one call.
    async fn one_address_call(leader: Option<&str>, refusals: usize) -> Result<String, Error> {
        let key = crate::ClusterKey::from_secret(b"replicas test secret, 32 bytes..");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handler = Arc::new(Refusing {
            addr: std::sync::OnceLock::from(addr.clone()),
            leader: leader.map(String::from),
            refusals: AtomicUsize::new(refusals),
        });
        let config = crate::ServerConfig::new(key);
        let server = tokio::spawn(crate::serve(listener, handler, config, std::future::pending()));
        let replicas = Replicas::new(&addr, Service::Metad, ClientOptions::with_key(key), |c| c);
        let redirect = |answer: &String| {
            answer.strip_prefix("not the leader: ").map(|leader| Some(leader.to_string()))
        };
        let answered = replicas.call(&"hello".to_string(), redirect).await;
        server.abort();
        answered
    }

    #[tokio::test]
    async fn a_client_of_one_address_asks_again_a_replica_that_names_itself() {
        assert_eq!(one_address_call(None, 2).await.unwrap(), "answered");
    }

    #[tokio::test]
    async fn a_client_of_one_address_follows_no_redirect_elsewhere() {
        match one_address_call(Some("127.0.0.1:9"), 1).await {
            Err(Error::NotLeader { leader, .. }) => {
                assert_eq!(leader.as_deref(), Some("127.0.0.1:9"))
            }
            other => panic!("expected \"not the leader\", got {other:?}"),
        }
    }
}
