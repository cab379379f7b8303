//! A multiplexed client: one TCP connection, many concurrent calls, reconnect on demand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::frame::{self, Kind};
use crate::sync::Lock as _;
use crate::tls::TlsClient;
use crate::{ClusterKey, Error, Service, handshake};

/// The cluster key, TLS and timeouts of a client.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// Proves this client holds the cluster secret; every daemon refuses a client without.
    pub key: Option<ClusterKey>,
    /// TLS to daemons, checked against the cluster's CA; `None`: plain TCP.
    pub tls: Option<&'static TlsClient>,
    /// Time allowed to open a connection and finish the handshake.
    pub connect_timeout: Duration,
    /// Time allowed for one request to be answered.
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            key: None,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl ClientOptions {
    /// The default timeouts, proving `key`.
    pub fn with_key(key: ClusterKey) -> ClientOptions {
        ClientOptions { key: Some(key), ..ClientOptions::default() }
    }
}

/// A request a client sends first on every new connection (to open or resume a session),
/// and what it does with the answer. An error fails the connection attempt.
pub trait Hello: Send + Sync {
    fn request(&self) -> Vec<u8>;
    fn answered(&self, response: &[u8]) -> Result<(), Error>;
    /// The connection this hello opened is gone (closed by either side or failed).
    fn lost(&self) {}
}

/// Receives the messages a server pushes, in the order they arrive, on the task reading
/// the connection: it must not block.
pub type PushHandler = Arc<dyn Fn(Bytes) + Send + Sync>;

/// A client for one daemon address and one service.
pub struct Client {
    addr: String,
    service: Service,
    options: ClientOptions,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    hello: Option<Arc<dyn Hello>>,
    on_push: Option<PushHandler>,
}

struct Connection {
    outgoing: mpsc::Sender<(u64, Vec<u8>)>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Bytes>>,
    /// Set once the connection has failed; no new call may wait on it.
    closed: bool,
}

impl Pending {
    fn close(&mut self) {
        self.closed = true;
        self.waiting.clear();
    }
}

impl Client {
    pub fn new(addr: impl Into<String>, service: Service, options: ClientOptions) -> Client {
        Client {
            addr: addr.into(),
            service,
            options,
            connection: tokio::sync::Mutex::new(None),
            hello: None,
            on_push: None,
        }
    }

    /// This client, handing what the server pushes to `on_push`.
    pub fn with_push(self, on_push: PushHandler) -> Client {
        Client { on_push: Some(on_push), ..self }
    }

    /// This client, sending `hello` first on every connection it opens.
    pub fn with_hello(self, hello: Arc<dyn Hello>) -> Client {
        Client { hello: Some(hello), ..self }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `request` and waits for its response.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        request: &Req,
    ) -> Result<Resp, Error> {
        let body = crate::encode(request);
        let bytes = self.call_raw(body, Some(self.options.request_timeout)).await?;
        crate::decode(&bytes)
    }

    /// Like [`call`](Self::call), waiting at most `timeout` for the answer.
    pub async fn call_within<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, Error> {
        let body = crate::encode(request);
        let bytes = self.call_raw(body, Some(timeout)).await?;
        crate::decode(&bytes)
    }

    /// Like [`call`](Self::call), for requests that may legitimately wait without bound
    /// (a blocking lock): only a lost connection ends the wait.
    pub async fn call_without_timeout<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        request: &Req,
    ) -> Result<Resp, Error> {
        let body = crate::encode(request);
        let bytes = self.call_raw(body, None).await?;
        crate::decode(&bytes)
    }

    async fn call_raw(&self, body: Vec<u8>, timeout: Option<Duration>) -> Result<Bytes, Error> {
        let connection = self.connection().await?;
        self.call_on(&connection, body, timeout).await
    }

    async fn call_on(
        &self,
        connection: &Connection,
        body: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Bytes, Error> {
        let id = connection.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = connection.pending.locked();
            if pending.closed {
                return Err(self.lost());
            }
            pending.waiting.insert(id, tx);
        }
        if connection.outgoing.send((id, body)).await.is_err() {
            return Err(self.lost());
        }
        let Some(timeout) = timeout else {
            return rx.await.map_err(|_| self.lost());
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(_)) => Err(self.lost()),
            Err(_) => {
                connection.pending.locked().waiting.remove(&id);
                Err(Error::Timeout { addr: self.addr.clone(), timeout })
            }
        }
    }

    /// Closes the connection, if one is open: the next call opens a new one (and sends the
    /// hello again).
    pub async fn disconnect(&self) {
        self.connection.lock().await.take();
    }

    fn lost(&self) -> Error {
        Error::ConnectionLost { addr: self.addr.clone() }
    }

    /// The live connection, opening a new one if there is none or the last one failed.
    async fn connection(&self) -> Result<Arc<Connection>, Error> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref()
            && !connection.pending.locked().closed
        {
            return Ok(connection.clone());
        }
        let connection = Arc::new(self.connect().await?);
        if let Some(hello) = &self.hello {
            let timeout = Some(self.options.connect_timeout);
            let response = self.call_on(&connection, hello.request(), timeout).await?;
            hello.answered(&response).map_err(|e| match e {
                Error::NotLeader { leader, .. } => {
                    Error::NotLeader { addr: self.addr.clone(), leader }
                }
                other => other,
            })?;
        }
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn connect(&self) -> Result<Connection, Error> {
        let timeout = self.options.connect_timeout;
        let key = self.options.key.ok_or_else(|| Error::NoKey { addr: self.addr.clone() })?;
        let attempt = async {
            let mut stream = TcpStream::connect(&self.addr)
                .await
                .map_err(|source| Error::Connect { addr: self.addr.clone(), source })?;
            crate::tune(&stream)?;
            let Some(tls) = self.options.tls else {
                handshake::client(&mut stream, &self.addr, self.service, &key).await?;
                return Ok::<_, Error>(crate::Halves::plain(stream));
            };
            let mut stream = tls
                .connect(&self.addr, stream)
                .await
                .map_err(|e| Error::Tls { addr: self.addr.clone(), reason: e.to_string() })?;
            handshake::client(&mut stream, &self.addr, self.service, &key).await?;
            Ok(crate::Halves::of(stream))
        };
        let crate::Halves(read_half, write_half) =
            tokio::time::timeout(timeout, attempt)
                .await
                .map_err(|_| Error::ConnectTimeout { addr: self.addr.clone(), timeout })??;
        debug!(addr = %self.addr, service = self.service.name(), "connected");
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (outgoing, mut queue) = mpsc::channel::<(u64, Vec<u8>)>(256);

        let writer_pending = pending.clone();
        tokio::spawn(async move {
            let mut writer = BufWriter::with_capacity(256 * 1024, write_half);
            let result = async {
                while let Some((id, body)) = queue.recv().await {
                    frame::write(&mut writer, Kind::Request, id, &body).await?;
                    while let Ok((id, body)) = queue.try_recv() {
                        frame::write(&mut writer, Kind::Request, id, &body).await?;
                    }
                    writer.flush().await?;
                }
                Ok::<_, Error>(())
            }
            .await;
            if result.is_err() {
                writer_pending.locked().close();
            }
        });

        let reader_pending = pending.clone();
        let addr = self.addr.clone();
        let on_push = self.on_push.clone();
        let hello = self.hello.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::with_capacity(256 * 1024, read_half);
            loop {
                match frame::read(&mut reader).await {
                    Ok(Some(frame)) if frame.kind == Kind::Response => {
                        let waiter = reader_pending.locked().waiting.remove(&frame.id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(frame.body);
                        }
                    }
                    Ok(Some(frame)) => match &on_push {
                        Some(on_push) if frame.kind == Kind::Push => on_push(frame.body),
                        _ => debug!(%addr, "ignoring {:?} frame", frame.kind),
                    },
                    Ok(None) => break,
                    Err(e) => {
                        debug!(%addr, "connection failed: {e}");
                        break;
                    }
                }
            }
            reader_pending.locked().close();
            if let Some(hello) = hello {
                hello.lost();
            }
        });

        Ok(Connection { outgoing, pending, next_id: AtomicU64::new(1) })
    }
}
