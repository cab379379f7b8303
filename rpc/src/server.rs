//! The accept loop shared by metad and chunkd.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use crate::frame::{self, Kind};
use crate::{Error, Service, handshake};

/// Requests one connection may have in flight at once; further frames wait to be read.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 128;

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
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
}

impl Pusher {
    /// Queues `body` for the peer; false if the connection has ended.
    pub fn push(&self, body: Vec<u8>) -> bool {
        self.outgoing.send(body).is_ok()
    }
}

/// Serves connections from `listener` until `shutdown` completes.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, peer, handler).await {
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
) -> Result<(), Error> {
    stream.set_nodelay(true)?;
    let service = handshake::server(&mut stream, |s| handler.offers(s)).await?;
    debug!(%peer, service = service.name(), "connection accepted");
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(256 * 1024, read_half);
    let (tx, mut rx) = mpsc::channel::<(u64, Vec<u8>)>(MAX_IN_FLIGHT_PER_CONNECTION);
    // A handler that cannot decode its request, or a writer that cannot send, reports here,
    // and the connection is dropped: its peer then reconnects instead of waiting forever.
    let (bad_tx, mut bad_rx) = mpsc::channel::<Error>(1);
    let writer_failed = bad_tx.clone();
    let (push_tx, mut push_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    handler.connected(service, peer, Pusher { outgoing: push_tx });
    let writer = tokio::spawn(async move {
        let mut writer = BufWriter::with_capacity(256 * 1024, write_half);
        let result = async {
            let mut pushing = true;
            loop {
                // Waiting pushes go before waiting responses, so a push is never overtaken
                // by a response queued after it. The handler's pusher may outlive the
                // connection, so only the end of responses ends the loop.
                tokio::select! {
                    biased;
                    push = push_rx.recv(), if pushing => match push {
                        Some(body) => frame::write(&mut writer, Kind::Push, 0, &body).await?,
                        None => pushing = false,
                    },
                    response = rx.recv() => match response {
                        Some((id, body)) => frame::write(&mut writer, Kind::Response, id, &body).await?,
                        None => break,
                    },
                }
                // Batch frames that are already waiting into one flush.
                while let Ok(body) = push_rx.try_recv() {
                    frame::write(&mut writer, Kind::Push, 0, &body).await?;
                }
                while let Ok((id, body)) = rx.try_recv() {
                    frame::write(&mut writer, Kind::Response, id, &body).await?;
                }
                writer.flush().await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            let _ = writer_failed.try_send(e);
        }
    });
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let result = loop {
        let frame = tokio::select! {
            read = frame::read(&mut reader) => match read {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            },
            Some(e) = bad_rx.recv() => break Err(e),
        };
        if frame.kind != Kind::Request {
            break Err(Error::BadFrame(format!("unexpected {:?} frame from a client", frame.kind)));
        }
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore never closed");
        let handler = handler.clone();
        let tx = tx.clone();
        let bad_tx = bad_tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match handler.handle(service, peer, frame.body).await {
                Ok(body) => {
                    let _ = tx.send((frame.id, body)).await;
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{Client, ClientOptions};

    /// Pushes every request body back to its sender before answering it.
    #[derive(Default)]
    struct Echo {
        pushers: Mutex<Vec<Pusher>>,
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
            let request: String = crate::decode(&body)?;
            for pusher in self.pushers.lock().unwrap().iter() {
                pusher.push(crate::encode(&format!("pushed {request}")));
            }
            Ok(crate::encode(&format!("answered {request}")))
        }

        fn connected(&self, _service: Service, _peer: SocketAddr, pusher: Pusher) {
            self.pushers.lock().unwrap().push(pusher);
        }
    }

    #[tokio::test]
    async fn pushes_reach_the_client_before_the_response_queued_after_them() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server =
            tokio::spawn(serve(listener, Arc::new(Echo::default()), std::future::pending()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let client = Client::new(addr, Service::Metad, ClientOptions::default()).with_push(
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
}
