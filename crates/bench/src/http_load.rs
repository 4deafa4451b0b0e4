//! `tern-bench http`: HTTP/1.1 GETs over a fixed number of keep-alive
//! connections, at a fixed rate (open loop) or flat out.
//!
//! At a fixed rate, request `k` is due at `start + k / rate`; a connection
//! takes the next due request as soon as it is free, and a request's
//! latency runs from when it was due, not from when it could be sent, so a
//! target that falls behind shows it in the percentiles instead of slowing
//! the load down (no coordinated omission). Flat out, latency runs from the
//! send.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What to send.
pub struct Load {
    pub url: hyper::Uri,
    /// Requests per second across all connections; flat out when `None`.
    pub rate: Option<u64>,
    pub connections: usize,
    pub seconds: u64,
}

/// What one run measured; printed as one JSON line.
#[derive(serde::Serialize)]
pub struct Report {
    pub requests: u64,
    pub failed: u64,
    pub requests_per_sec: f64,
    pub target_rate: Option<u64>,
    /// Requests sent more than 10 ms after they were due: the target (or the
    /// load generator) did not keep up with the rate.
    pub sent_late: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Runs the load; fails only when the URL cannot be reached at all.
pub async fn run(load: Load) -> Result<Report, String> {
    let authority = load.url.authority().ok_or("--url needs a host and port")?.clone();
    let addr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
    connect(&addr).await?; // fail early and clearly on a wrong address
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs(load.seconds);
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..load.connections.max(1))
        .map(|_| {
            let worker = Worker { addr: addr.clone(), url: load.url.clone(), rate: load.rate, start, end };
            tokio::spawn(worker.run(next.clone()))
        })
        .collect();
    let mut total = Tally::default();
    for w in workers {
        total.merge(w.await.map_err(|e| format!("load worker failed: {e}"))?);
    }
    Ok(total.report(load.rate, load.seconds))
}

struct Worker {
    addr: String,
    url: hyper::Uri,
    rate: Option<u64>,
    start: Instant,
    end: Instant,
}

impl Worker {
    async fn run(self, next: Arc<AtomicU64>) -> Tally {
        let mut tally = Tally::default();
        let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let due = match self.rate {
                Some(rate) => self.start + Duration::from_secs_f64(k as f64 / rate.max(1) as f64),
                None => Instant::now().max(self.start),
            };
            if due >= self.end {
                return tally;
            }
            tokio::time::sleep_until(due).await;
            if Instant::now().duration_since(due) > Duration::from_millis(10) {
                tally.late += 1;
            }
            let ok = self.get(&mut conn).await;
            tally.record(ok, Instant::now().duration_since(due));
        }
    }

    /// One GET on the worker's connection, (re)connecting when it has none.
    async fn get(&self, conn: &mut Option<SendRequest<Empty<Bytes>>>) -> bool {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            *conn = connect(&self.addr).await.ok();
        }
        let Some(sender) = conn.as_mut() else { return false };
        let request = hyper::Request::get(self.url.clone())
            .header(hyper::header::HOST, self.url.authority().map(|a| a.as_str()).unwrap_or_default())
            .body(Empty::new());
        let Ok(request) = request else { return false };
        let answered = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                response.into_body().collect().await.is_ok() && status.is_success()
            }
            Err(_) => false,
        };
        if !answered {
            *conn = None;
        }
        answered
    }
}

async fn connect(addr: &str) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake with {addr}: {e}"))?;
    // The connection task ends when its sender is dropped or the peer closes.
    tokio::spawn(connection);
    Ok(sender)
}

/// Latencies (microseconds) of answered requests, and the counts.
#[derive(Default)]
struct Tally {
    micros: Vec<u64>,
    failed: u64,
    late: u64,
}

impl Tally {
    fn record(&mut self, ok: bool, latency: Duration) {
        if ok {
            self.micros.push(latency.as_micros() as u64);
        } else {
            self.failed += 1;
        }
    }

    fn merge(&mut self, other: Tally) {
        self.micros.extend(other.micros);
        self.failed += other.failed;
        self.late += other.late;
    }

    fn report(mut self, rate: Option<u64>, seconds: u64) -> Report {
        self.micros.sort_unstable();
        let ms = |q: f64| quantile(&self.micros, q) as f64 / 1000.0;
        Report {
            requests: self.micros.len() as u64,
            failed: self.failed,
            requests_per_sec: self.micros.len() as f64 / seconds.max(1) as f64,
            target_rate: rate,
            sent_late: self.late,
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: ms(1.0),
        }
    }
}

/// The `q` quantile of sorted values (nearest rank); 0 when empty.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&v, 0.0), 1);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    /// A real server answering every GET: at a fixed rate, every due
    /// request is sent and counted, and none fails.
    #[tokio::test]
    async fn sends_every_due_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let url = format!("http://{addr}/").parse().unwrap();
        let report = run(Load { url, rate: Some(200), connections: 2, seconds: 1 }).await.unwrap();
        assert_eq!(report.requests, 200);
        assert_eq!(report.failed, 0);
        assert!(report.p50_ms <= report.p99_ms && report.p99_ms <= report.max_ms);
    }

    #[tokio::test]
    async fn an_unreachable_target_is_an_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let err = run(Load { url, rate: Some(10), connections: 1, seconds: 1 }).await.err().unwrap();
        assert!(err.contains("connecting to 127.0.0.1"), "{err}");
    }
}
