//! Prometheus metrics: what every component counts, and the HTTP endpoint (`GET /metrics`,
//! OpenMetrics text) that serves them.
//!
//! Each process keeps one [`Registry`]. Counts and latencies of operations are recorded as
//! they happen ([`OpMetrics`]); values kept in the component's own state (leases held, disk
//! usage, degraded chunks) are read at each scrape into a [`Snapshot`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync::Lock as _;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
pub use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Latency buckets: 50 µs doubling up to about 6.5 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

type OpLabel = [(&'static str, &'static str); 1];
type OpOutcomeLabel = [(&'static str, &'static str); 2];

/// Counts and latencies of one component's operations, by operation name.
#[derive(Clone)]
pub struct OpMetrics {
    count: Family<OpOutcomeLabel, Counter>,
    seconds: Family<OpLabel, Histogram, fn() -> Histogram>,
}

impl OpMetrics {
    /// Registers `PREFIX_total{op,outcome}` and `PREFIX_seconds{op}` in `registry`.
    pub fn register(registry: &mut Registry, prefix: &str, what: &str) -> OpMetrics {
        let metrics = OpMetrics {
            count: Family::default(),
            seconds: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            prefix,
            format!("{what}, by operation and outcome"),
            metrics.count.clone(),
        );
        registry.register(
            format!("{prefix}_seconds"),
            format!("Time to answer {what}, by operation"),
            metrics.seconds.clone(),
        );
        metrics
    }

    /// Records one `op` that took `elapsed`.
    pub fn record(&self, op: &'static str, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.count.get_or_create(&[("op", op), ("outcome", outcome)]).inc();
        self.seconds.get_or_create(&[("op", op)]).observe(elapsed.as_secs_f64());
    }
}

/// Whether a snapshot value only grows (a counter) or goes up and down (a gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One value read from a component's state at a scrape.
#[derive(Clone, Debug)]
pub struct Value {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}

impl Value {
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Value {
        Value { name, help, kind: Kind::Counter, labels: Vec::new(), value }
    }

    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Value {
        Value { name, help, kind: Kind::Gauge, labels: Vec::new(), value }
    }

    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.kind {
            Kind::Counter => ConstCounter::new(self.value).encode(encoder),
            Kind::Gauge => ConstGauge::new(self.value as i64).encode(encoder),
        }
    }

    /// This value with one more label.
    pub fn with(mut self, label: &'static str, value: impl Into<String>) -> Value {
        self.labels.push((label, value.into()));
        self
    }
}

/// A counter registered in `registry` as `name`.
pub fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

/// Values read at the latest scrape, encoded with the registry's own metrics.
#[derive(Debug, Default)]
pub struct Snapshot(Mutex<Vec<Value>>);

impl Snapshot {
    /// Registers a snapshot in `registry`; [`set`](Self::set) it before each encoding.
    pub fn register(registry: &mut Registry) -> Arc<Snapshot> {
        let snapshot = Arc::new(Snapshot::default());
        registry.register_collector(Box::new(snapshot.clone()));
        snapshot
    }

    pub fn set(&self, values: Vec<Value>) {
        *self.0.locked() = values;
    }
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let values = self.0.locked().clone();
        let mut rest = values.as_slice();
        // Values of one name are consecutive: one descriptor, then each labelled value.
        while let Some(first) = rest.first() {
            let n = rest.iter().take_while(|v| v.name == first.name).count();
            let (family, after) = rest.split_at(n);
            let kind = match first.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(first.name, first.help, None, kind)?;
            match family {
                [single] if single.labels.is_empty() => single.encode(metric)?,
                _ => {
                    for value in family {
                        let labels: Vec<(&str, &str)> =
                            value.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                        value.encode(metric.encode_family(&labels)?)?;
                    }
                }
            }
            rest = after;
        }
        Ok(())
    }
}

/// Renders the metrics text at a scrape (reading state first, which may wait on I/O).
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// The OpenMetrics text of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

/// Binds `addr` and serves `GET /metrics` from `render` in the background, for the life of
/// the process.
pub async fn spawn_endpoint(addr: &str, render: Render) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, render, std::future::pending()));
    Ok(bound)
}

/// Largest request head read from a scraper.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a scraper has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` with what `render` returns, until `shutdown`.
pub async fn serve(listener: TcpListener, render: Render, shutdown: impl Future<Output = ()>) {
    if let Ok(addr) = listener.local_addr() {
        info!("metrics at http://{addr}/metrics");
    }
    tokio::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!("metrics accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let render = render.clone();
        tokio::spawn(async move {
            let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await;
            let response = match head {
                Ok(Some(head)) if head.starts_with("GET /metrics ") => {
                    let body = render().await;
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; \
                         version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                Ok(Some(_)) => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\
                               Connection: close\r\n\r\n"
                    .to_string(),
                _ => {
                    warn!(%peer, "metrics request malformed, too long or too slow");
                    return;
                }
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Reads an HTTP request head (up to the blank line); `None` if it is not one.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(head).ok()
}
