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

    /// Called once a connection that completed its handshake has ended, however it ended,
    /// so per-connection state (open files) can be released.
    fn disconnected(&self, _service: Service, _peer: SocketAddr) {}
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
    let writer = tokio::spawn(async move {
        let mut writer = BufWriter::with_capacity(256 * 1024, write_half);
        let result = async {
            while let Some((id, body)) = rx.recv().await {
                frame::write(&mut writer, Kind::Response, id, &body).await?;
                // Batch responses that are already waiting into one flush.
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
