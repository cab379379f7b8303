//! The accept loop shared by metad and chunkd.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, warn};

use crate::frame::{self, Kind};
use crate::sync::Lock as _;
use crate::{ClusterKey, Error, Service, handshake};

/// Requests one connection may have in flight at once; further frames wait to be read.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 128;

/// Bytes of requests one connection may have read and not yet answered: a few of the
/// largest frames. The next frame waits to be read until there is room for it.
const MAX_REQUEST_BYTES_PER_CONNECTION: usize = 4 * frame::MAX_FRAME_LEN;

/// Who may connect and for how long: the cluster key every peer must prove, and bounds on
/// connections so that no peer can use up a daemon's sockets or memory.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    pub key: ClusterKey,
    /// TLS under the handshake; `None`: plain TCP.
    pub tls: Option<&'static crate::TlsServer>,
    /// Connections one IP address may hold open at once; more are closed at once.
    pub max_connections_per_peer: usize,
    /// Connections open at once in all.
    pub max_connections: usize,
    /// A connection that sends nothing for this long while none of its requests is in
    /// flight is closed (its client reconnects when it next needs to).
    pub idle_timeout: Duration,
    /// A peer that takes longer than this to take a response or push off the connection
    /// (it stopped reading) is disconnected, so it cannot pin its requests' permits.
    pub write_timeout: Duration,
    /// Bytes of requests read and not yet answered, on all connections together (at least
    /// one largest frame): frames wait to be read until there is room for them.
    pub max_request_bytes: usize,
}

impl ServerConfig {
    pub fn new(key: ClusterKey) -> ServerConfig {
        ServerConfig {
            key,
            tls: None,
            max_connections_per_peer: 1024,
            max_connections: 16_384,
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(60),
            max_request_bytes: 1 << 30,
        }
    }
}

/// Open connections, by peer address; a [`Slot`] holds one until dropped.
#[derive(Default)]
struct Connections {
    by_peer: HashMap<IpAddr, usize>,
    total: usize,
}

struct Slot {
    connections: Arc<Mutex<Connections>>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut connections = self.connections.locked();
        connections.total -= 1;
        if let Some(n) = connections.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                connections.by_peer.remove(&self.peer);
            }
        }
    }
}

/// Takes a connection slot for `peer`, or says which limit it would pass.
fn admit(
    connections: &Arc<Mutex<Connections>>,
    peer: IpAddr,
    config: &ServerConfig,
) -> Result<Slot, String> {
    let mut open = connections.locked();
    let from_peer = open.by_peer.get(&peer).copied().unwrap_or(0);
    if from_peer >= config.max_connections_per_peer {
        return Err(format!("it already has {from_peer} connections open (the limit)"));
    }
    if open.total >= config.max_connections {
        return Err(format!("{} connections are open (the limit)", open.total));
    }
    open.total += 1;
    *open.by_peer.entry(peer).or_default() += 1;
    Ok(Slot { connections: connections.clone(), peer })
}

/// A daemon's request handler. Bodies are opaque bytes here; the daemon decodes them.
pub trait Handler: Send + Sync + 'static {
    /// Whether this daemon serves `service` at all.
    fn offers(&self, service: Service) -> bool;

    /// Answers one request. An `Err` means the request could not even be decoded: the
    /// connection is dropped, since its peer is broken or hostile.
    fn handle(
        self: Arc<Self>,
        service: Service,
        peer: SocketAddr,
        body: Bytes,
    ) -> impl Future<Output = Result<Vec<u8>, Error>> + Send;

    /// Called once a connection has completed its handshake, before any of its requests,
    /// with the means to push messages to its peer.
    fn connected(&self, _service: Service, _peer: SocketAddr, _pusher: Pusher) {}

    /// Called once a connection that completed its handshake has ended, however it ended,
    /// so per-connection state (open files) can be released.
    fn disconnected(&self, _service: Service, _peer: SocketAddr) {}
}

/// Sends unsolicited messages (push frames) to one connected peer, in order with the
/// responses sent after them.
#[derive(Clone, Debug)]
pub struct Pusher {
    outgoing: mpsc::Sender<Vec<u8>>,
}

/// Pushes queued for one peer at most: past that its pushes are dropped (it is not reading
/// them; a lease recall that goes unheard ends with the lease's expiry).
pub const MAX_QUEUED_PUSHES: usize = 4096;

impl Pusher {
    /// Queues `body` for the peer; false if the connection has ended, or if the peer has
    /// [`MAX_QUEUED_PUSHES`] pushes not yet sent.
    pub fn push(&self, body: Vec<u8>) -> bool {
        self.outgoing.try_send(body).is_ok()
    }
}

/// Serves connections from `listener` until `shutdown` completes, then drops every connection. Only peers that prove
/// they hold the cluster secret behind `config.key` are served, within `config`'s limits.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let connections = Arc::new(Mutex::new(Connections::default()));
    let budget = Arc::new(Semaphore::new(config.max_request_bytes.max(frame::MAX_FRAME_LEN)));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            // Every connection goes with the listener, as when the process ends: a peer
            // finds the daemon gone rather than talking to what is left of it.
            _ = &mut shutdown => return tasks.shutdown().await,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let slot = match admit(&connections, peer.ip(), &config) {
                        Ok(slot) => slot,
                        Err(why) => {
                            warn!(%peer, "refusing connection: {why}");
                            continue;
                        }
                    };
                    let (handler, budget) = (handler.clone(), budget.clone());
                    tasks.spawn(async move {
                        let _slot = slot;
                        if let Err(e) = connection(stream, peer, handler, config, budget).await {
                            warn!(%peer, "dropping connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn connection<H: Handler>(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    config: ServerConfig,
    budget: Arc<Semaphore>,
) -> Result<(), Error> {
    crate::tune(&stream)?;
    let offers = |s| handler.offers(s);
    let (service, crate::Halves(read_half, write_half)) = match config.tls {
        None => {
            let service = handshake::server(&mut stream, offers, &config.key).await?;
            (service, crate::Halves::plain(stream))
        }
        Some(tls) => {
            let mut stream = tokio::time::timeout(handshake::HANDSHAKE_TIMEOUT, tls.accept(stream))
                .await
                .map_err(|_| Error::BadFrame("TLS handshake timed out".into()))?
                .map_err(|e| {
                    Error::BadFrame(format!("TLS handshake failed: {e} (a client without TLS?)"))
                })?;
            let service = handshake::server(&mut stream, offers, &config.key).await?;
            (service, crate::Halves::of(stream))
        }
    };
    debug!(%peer, service = service.name(), "connection accepted");
    let mut reader = BufReader::with_capacity(256 * 1024, read_half);
    // Each response carries its request's admission, given back once it is written.
    let (tx, mut rx) = mpsc::channel::<(u64, Vec<u8>, Admitted)>(MAX_IN_FLIGHT_PER_CONNECTION);
    // A handler that cannot decode its request, or a writer that cannot send, reports here,
    // and the connection is dropped: its peer then reconnects instead of waiting forever.
    let (bad_tx, mut bad_rx) = mpsc::channel::<Error>(1);
    let writer_failed = bad_tx.clone();
    let (push_tx, mut push_rx) = mpsc::channel::<Vec<u8>>(MAX_QUEUED_PUSHES);
    let write_timeout = config.write_timeout;
    handler.connected(service, peer, Pusher { outgoing: push_tx });
    let writer = tokio::spawn(async move {
        let mut writer = BufWriter::with_capacity(256 * 1024, write_half);
        let result = async {
            let mut pushing = true;
            loop {
                // Waiting pushes go before waiting responses, so a push is never overtaken
                // by a response queued after it. The handler's pusher may outlive the
                // connection, so only the end of responses ends the loop.
                let (kind, id, body) = tokio::select! {
                    biased;
                    push = push_rx.recv(), if pushing => match push {
                        Some(body) => (Kind::Push, 0, body),
                        None => {
                            pushing = false;
                            continue;
                        }
                    },
                    response = rx.recv() => match response {
                        Some((id, body, _admitted)) => (Kind::Response, id, body),
                        None => break,
                    },
                };
                let round = async {
                    frame::write(&mut writer, kind, id, &body).await?;
                    // Batch frames that are already waiting into one flush.
                    while let Ok(body) = push_rx.try_recv() {
                        frame::write(&mut writer, Kind::Push, 0, &body).await?;
                    }
                    while let Ok((id, body, _admitted)) = rx.try_recv() {
                        frame::write(&mut writer, Kind::Response, id, &body).await?;
                    }
                    writer.flush().await?;
                    Ok::<_, Error>(())
                };
                tokio::time::timeout(write_timeout, round)
                    .await
                    .map_err(|_| Error::WriteTimeout { after: write_timeout })??;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            let _ = writer_failed.try_send(e);
        }
    });
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let own_budget = Arc::new(Semaphore::new(MAX_REQUEST_BYTES_PER_CONNECTION));
    let result = loop {
        let len = tokio::select! {
            read = frame::read_len(&mut reader) => match read {
                Ok(Some(len)) => len,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            },
            Some(e) = bad_rx.recv() => break Err(e),
            () = idle(&in_flight, config.idle_timeout) => {
                break Err(Error::Idle { after: config.idle_timeout })
            }
        };
        // Room for the frame before it is read: the connection's share, then the server's.
        let bytes = u32::try_from(len).expect("frames are far below 4 GiB");
        let room = async {
            let own = own_budget.clone().acquire_many_owned(bytes).await;
            let all = budget.clone().acquire_many_owned(bytes).await;
            (own.expect("semaphore never closed"), all.expect("semaphore never closed"))
        };
        let room = tokio::select! {
            room = room => room,
            Some(e) = bad_rx.recv() => break Err(e),
        };
        let frame = match frame::read_rest(&mut reader, len).await {
            Ok(frame) => frame,
            Err(e) => break Err(e),
        };
        if frame.kind != Kind::Request {
            break Err(Error::BadFrame(format!("unexpected {:?} frame from a client", frame.kind)));
        }
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore never closed");
        let handler = handler.clone();
        let tx = tx.clone();
        let bad_tx = bad_tx.clone();
        let admitted = Admitted { _in_flight: permit, _room: room };
        tokio::spawn(async move {
            match handler.handle(service, peer, frame.body).await {
                Ok(body) => {
                    let _ = tx.send((frame.id, body, admitted)).await;
                }
                Err(e) => {
                    let _ = bad_tx.try_send(e);
                }
            }
        });
    };
    drop(tx);
    let _ = writer.await;
    handler.disconnected(service, peer);
    result
}

/// What a request took to be read: its place among the connection's requests in flight and
/// its bytes' room in the budgets. Held until its response is written.
struct Admitted {
    _in_flight: OwnedSemaphorePermit,
    _room: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// Completes once `timeout` has passed with none of the connection's requests in flight.
async fn idle(in_flight: &Semaphore, timeout: Duration) {
    loop {
        tokio::time::sleep(timeout).await;
        if in_flight.available_permits() == MAX_IN_FLIGHT_PER_CONNECTION {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{Client, ClientOptions};

    /// Pushes every request body back to its sender before answering it; with `stall`,
    /// takes requests and never answers them.
    #[derive(Default)]
    struct Echo {
        pushers: Mutex<Vec<Pusher>>,
        stall: bool,
        taken: std::sync::atomic::AtomicUsize,
    }

    impl Handler for Echo {
        fn offers(&self, service: Service) -> bool {
            service == Service::Metad
        }

        async fn handle(
            self: Arc<Self>,
            _service: Service,
            _peer: SocketAddr,
            body: Bytes,
        ) -> Result<Vec<u8>, Error> {
            self.taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.stall {
                std::future::pending::<()>().await;
            }
            let request: String = crate::decode(&body)?;
            for pusher in self.pushers.locked().iter() {
                pusher.push(crate::encode(&format!("pushed {request}")));
            }
            Ok(crate::encode(&format!("answered {request}")))
        }

        fn connected(&self, _service: Service, _peer: SocketAddr, pusher: Pusher) {
            self.pushers.locked().push(pusher);
        }
    }

    fn key(secret: &str) -> ClusterKey {
        ClusterKey::from_secret(format!("{secret:-<32}").as_bytes())
    }

    fn options(key: Option<ClusterKey>) -> ClientOptions {
        ClientOptions { key, ..ClientOptions::default() }
    }

    async fn echo_server_with(config: ServerConfig) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let echo = Arc::new(Echo::default());
        (addr, tokio::spawn(serve(listener, echo, config, std::future::pending())))
    }

    /// An echo server with `config`, and a connection to it past the handshake.
    async fn raw_connection(
        config: ServerConfig,
    ) -> (String, tokio::task::JoinHandle<()>, TcpStream) {
        let (addr, server) = echo_server_with(config).await;
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        handshake::client(&mut stream, &addr, Service::Metad, &key("cluster")).await.unwrap();
        (addr, server, stream)
    }

    async fn echo_server() -> (String, tokio::task::JoinHandle<()>) {
        echo_server_with(ServerConfig::new(key("cluster"))).await
    }

    #[tokio::test]
    async fn pushes_reach_the_client_before_the_response_queued_after_them() {
        let (addr, server) = echo_server().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let client = Client::new(addr, Service::Metad, options(Some(key("cluster")))).with_push(
            Arc::new(move |body: Bytes| {
                let _ = tx.send(crate::decode::<String>(&body).unwrap());
            }),
        );
        let answer: String = client.call(&"one".to_string()).await.unwrap();
        assert_eq!(answer, "answered one");
        // The push was read before the response that followed it.
        assert_eq!(rx.try_recv().unwrap(), "pushed one");
        server.abort();
    }

    #[tokio::test]
    async fn only_peers_holding_the_cluster_secret_are_served() {
        let (addr, server) = echo_server().await;
        let good = Client::new(addr.clone(), Service::Metad, options(Some(key("cluster"))));
        let wrong = Client::new(addr.clone(), Service::Metad, options(Some(key("other"))));
        let none = Client::new(addr.clone(), Service::Metad, options(None));
        let refused = wrong.call::<_, String>(&"x".to_string()).await.unwrap_err();
        assert!(matches!(refused, Error::AuthRefused { .. }), "{refused}");
        assert!(refused.to_string().contains("refused this process's cluster secret"));
        let missing = none.call::<_, String>(&"x".to_string()).await.unwrap_err();
        assert!(matches!(missing, Error::NoKey { .. }), "{missing}");
        // The valid peer is served meanwhile, on a connection opened before and after.
        let answer: String = good.call(&"one".to_string()).await.unwrap();
        assert_eq!(answer, "answered one");
        assert!(matches!(
            wrong.call::<_, String>(&"y".to_string()).await,
            Err(Error::AuthRefused { .. })
        ));
        let answer: String = good.call(&"two".to_string()).await.unwrap();
        assert_eq!(answer, "answered two");
        server.abort();
    }

    #[tokio::test]
    async fn connections_past_a_peers_limit_are_closed_at_once() {
        use tokio::io::AsyncReadExt;
        let config =
            ServerConfig { max_connections_per_peer: 2, ..ServerConfig::new(key("cluster")) };
        let (addr, server) = echo_server_with(config).await;
        let first = TcpStream::connect(&addr).await.unwrap();
        let _second = TcpStream::connect(&addr).await.unwrap();
        let mut third = TcpStream::connect(&addr).await.unwrap();
        // At once: not after the 10 s a silent peer gets for its handshake.
        let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut [0u8; 8])).await;
        assert_eq!(read.expect("closed at once").unwrap_or(0), 0, "closed unanswered");
        // A slot frees when its connection ends: a client gets in again.
        drop(first);
        let client = Client::new(addr, Service::Metad, options(Some(key("cluster"))));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match client.call::<_, String>(&"in".to_string()).await {
                Ok(answer) => break assert_eq!(answer, "answered in"),
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "never let in: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.abort();
    }

    #[tokio::test]
    async fn idle_connections_are_closed_busy_ones_are_not() {
        use tokio::io::AsyncReadExt;
        let idle_timeout = Duration::from_millis(300);
        let config = ServerConfig { idle_timeout, ..ServerConfig::new(key("cluster")) };
        let (addr, server, mut stream) = raw_connection(config).await;
        let started = tokio::time::Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut [0u8; 8])).await;
        assert_eq!(read.expect("closed when idle").unwrap_or(0), 0);
        assert!(started.elapsed() >= idle_timeout, "closed after {:?}", started.elapsed());
        // A client that keeps asking stays connected past the timeout.
        let client = Client::new(addr, Service::Metad, options(Some(key("cluster"))));
        for i in 0..6 {
            let answer: String = client.call(&i.to_string()).await.unwrap();
            assert_eq!(answer, format!("answered {i}"));
            tokio::time::sleep(idle_timeout / 3).await;
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_is_disconnected() {
        use tokio::io::AsyncReadExt;
        let write_timeout = Duration::from_millis(200);
        let config = ServerConfig { write_timeout, ..ServerConfig::new(key("cluster")) };
        let (_, server, mut stream) = raw_connection(config).await;
        // Requests whose answers (and pushes) are far more than the socket buffers hold,
        // sent without reading any of them.
        let big = crate::encode(&"x".repeat(256 << 10));
        for id in 0..64 {
            frame::write(&mut stream, Kind::Request, id, &big).await.unwrap();
        }
        stream.flush().await.unwrap();
        tokio::time::sleep(write_timeout * 3).await;
        // The server gave up on it: what it had sent drains, then the connection ends.
        let drained = async {
            let mut buf = vec![0u8; 1 << 20];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        };
        tokio::time::timeout(Duration::from_secs(10), drained).await.expect("disconnected");
        server.abort();
    }

    #[tokio::test]
    async fn requests_read_and_unanswered_stay_within_the_memory_budget() {
        let config = ServerConfig {
            max_request_bytes: frame::MAX_FRAME_LEN,
            ..ServerConfig::new(key("cluster"))
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stall = Arc::new(Echo { stall: true, ..Echo::default() });
        let server = tokio::spawn(serve(listener, stall.clone(), config, std::future::pending()));
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        handshake::client(&mut stream, &addr, Service::Metad, &key("cluster")).await.unwrap();
        // 1 MiB requests, far more than the budget holds, on a peer that sends without
        // waiting: the server takes as many as fit, then reads no further.
        let sending = tokio::spawn(async move {
            let body = vec![7u8; 1 << 20];
            for id in 0..200 {
                frame::write(&mut stream, Kind::Request, id, &body).await.unwrap();
            }
            stream
        });
        let fit = frame::MAX_FRAME_LEN / ((1 << 20) + frame::HEADER_LEN);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stall.taken.load(std::sync::atomic::Ordering::SeqCst) < fit {
            assert!(tokio::time::Instant::now() < deadline, "the budget's worth never taken");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(stall.taken.load(std::sync::atomic::Ordering::SeqCst), fit);
        assert!(!sending.is_finished(), "the server read past its budget");
        sending.abort();
        server.abort();
    }

    #[tokio::test]
    async fn a_server_without_the_secret_is_not_trusted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // An impostor that accepts any client and answers with a made-up proof.
        let impostor = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 8];
            stream.read_exact(&mut hello).await.unwrap();
            hello[6] = 0;
            stream.write_all(&hello).await.unwrap();
            stream.write_all(&[7u8; 32]).await.unwrap();
            let mut proof = [0u8; 64];
            stream.read_exact(&mut proof).await.unwrap();
            stream.write_all(&[0u8; 33]).await.unwrap();
            // The client hangs up without sending a frame.
            assert_eq!(stream.read(&mut [0u8; 1]).await.unwrap(), 0);
        });
        let client = Client::new(addr, Service::Metad, options(Some(key("cluster"))));
        let e = client.call::<_, String>(&"x".to_string()).await.unwrap_err();
        assert!(matches!(e, Error::AuthServer { .. }), "{e}");
        impostor.await.unwrap();
    }

    async fn tls_echo_server(dir: &std::path::Path) -> (String, &'static crate::TlsClient) {
        let [ca, cert, key_file] = crate::testing::tls_files(dir, &["127.0.0.1"]);
        let tls = Some(crate::TlsServer::load(&cert, &key_file).unwrap());
        let (addr, _server) =
            echo_server_with(ServerConfig { tls, ..ServerConfig::new(key("cluster")) }).await;
        (addr, crate::TlsClient::load(&ca).unwrap())
    }

    #[tokio::test]
    async fn tls_carries_the_protocol_and_each_mismatch_has_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, ca) = tls_echo_server(dir.path()).await;
        let tls_options = ClientOptions { tls: Some(ca), ..options(Some(key("cluster"))) };
        let client = Client::new(&addr, Service::Metad, tls_options);
        let answer: String = client.call(&"over tls".to_string()).await.unwrap();
        assert_eq!(answer, "answered over tls");
        // The certificate must name the host dialled: it names 127.0.0.1, not localhost.
        let port = addr.rsplit_once(':').unwrap().1;
        let by_other_name = Client::new(format!("localhost:{port}"), Service::Metad, tls_options);
        let e = by_other_name.call::<_, String>(&"x".to_string()).await.unwrap_err();
        assert!(
            matches!(&e, Error::Tls { reason, .. } if reason.contains("not valid for name")),
            "{e}"
        );
        // A client without TLS is told the daemon expects it.
        let plain = Client::new(&addr, Service::Metad, options(Some(key("cluster"))));
        let e = plain.call::<_, String>(&"x".to_string()).await.unwrap_err();
        assert!(matches!(e, Error::TlsExpected { .. }), "{e}");
        // A CA that did not sign the daemon's certificate is refused.
        let other = tempfile::tempdir().unwrap();
        let [other_ca, ..] = crate::testing::tls_files(other.path(), &["127.0.0.1"]);
        let wrong =
            ClientOptions { tls: Some(crate::TlsClient::load(&other_ca).unwrap()), ..tls_options };
        let e = Client::new(&addr, Service::Metad, wrong)
            .call::<_, String>(&"x".to_string())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Tls { reason, .. } if reason.contains("invalid peer certificate")),
            "{e}"
        );
        // The secret is still checked inside TLS.
        let no_secret = ClientOptions { tls: Some(ca), ..options(Some(key("another"))) };
        let e = Client::new(&addr, Service::Metad, no_secret)
            .call::<_, String>(&"x".to_string())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::AuthRefused { .. }), "{e}");
        // A TLS client reaching a daemon without TLS fails at the TLS handshake.
        let (plain_addr, _plain_server) = echo_server().await;
        let e = Client::new(plain_addr, Service::Metad, tls_options)
            .call::<_, String>(&"x".to_string())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Tls { .. }), "{e}");
        // A key others can read is refused, like the cluster secret.
        let [_, cert, key_file] = crate::testing::tls_files(other.path(), &["127.0.0.1"]);
        std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let e = crate::TlsServer::load(&cert, &key_file).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // Unreadable or empty files get one clear error each.
        let e = crate::TlsClient::load(&dir.path().join("missing.pem")).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let e = crate::TlsClient::load(&dir.path().join("empty.pem")).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
    }
}
