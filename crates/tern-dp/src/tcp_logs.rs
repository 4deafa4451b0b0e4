//! MeshAccessLog `tcp` backends. Envoy writes each record to a FIFO in the
//! work directory as one JSON line, `{"address": "host:port", "message":
//! <line or object>}`; this part reads them and sends each message as a line
//! to its address: one connection and one bounded queue per address,
//! reconnecting with backoff. A record that finds its queue full, or whose
//! write fails, is dropped and counted (`/metrics`, and a warning once per
//! outage). Reading never waits for a destination, so a slow or dead one
//! never pushes back on Envoy.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// Records waiting per address while its connection is down or slow.
const QUEUE: usize = 10_000;
/// The longest one record line may be; longer ones are dropped.
const MAX_RECORD: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Records sent and dropped, per destination address.
#[derive(Debug, Default)]
pub struct TcpLogCounts {
    by_address: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl TcpLogCounts {
    fn add(&self, address: &str, sent: u64, dropped: u64) {
        let mut map = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        let slot = map.entry(address.to_string()).or_default();
        slot.0 += sent;
        slot.1 += dropped;
    }

    /// The counts in Prometheus' text format.
    pub fn prometheus(&self) -> String {
        let map = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if map.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "# HELP tern_dp_tcp_access_log_records_total MeshAccessLog tcp records, by destination and outcome.\n# TYPE tern_dp_tcp_access_log_records_total counter\n",
        );
        for (address, (sent, dropped)) in map.iter() {
            let address = address.replace('\\', "\\\\").replace('"', "\\\"");
            out.push_str(&format!(
                "tern_dp_tcp_access_log_records_total{{address=\"{address}\",outcome=\"sent\"}} {sent}\n"
            ));
            out.push_str(&format!(
                "tern_dp_tcp_access_log_records_total{{address=\"{address}\",outcome=\"dropped\"}} {dropped}\n"
            ));
        }
        out
    }
}

/// One record as Envoy writes it.
#[derive(Debug, Deserialize)]
struct Record {
    address: String,
    message: serde_json::Value,
}

impl Record {
    /// The line sent to the address: a string message as written (Kuma's
    /// formats end in a newline), an object as compact JSON plus a newline.
    fn line(&self) -> Vec<u8> {
        let mut line = match &self.message {
            serde_json::Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        };
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        line
    }
}

/// Creates the FIFO at `path` (replacing whatever was there), so that it
/// exists before Envoy opens it.
pub fn create_fifo(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing the old access log FIFO {}: {e}", path.display())),
    }
    rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0)
        .map_err(|e| format!("creating the access log FIFO {}: {e}", path.display()))
}

/// Reads records from the FIFO at `path` until the task is dropped, handing
/// each to its address' sender.
pub async fn forward(path: std::path::PathBuf, counts: Arc<TcpLogCounts>) -> Result<(), String> {
    // Opened for reading and writing: the open never waits for Envoy, and
    // the FIFO never reports end of file when Envoy restarts.
    let fifo = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(|e| format!("opening the access log FIFO {}: {e}", path.display()))?;
    info!(fifo = %path.display(), "reading MeshAccessLog tcp records");
    let mut reader = BufReader::new(fifo);
    let mut senders: BTreeMap<String, mpsc::Sender<Vec<u8>>> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).await.map_err(|e| format!("reading {}: {e}", path.display()))?;
        if n == 0 {
            return Err(format!("{} reached its end", path.display()));
        }
        if buf.len() > MAX_RECORD {
            warn!(bytes = buf.len(), "dropping an access log record longer than {MAX_RECORD} bytes");
            continue;
        }
        let record: Record = match serde_json::from_slice(&buf) {
            Ok(r) => r,
            Err(e) => {
                warn!("dropping an access log record that is not the expected JSON object: {e}");
                continue;
            }
        };
        let sender = senders.entry(record.address.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tasks.spawn(send(record.address.clone(), rx, counts.clone()));
            tx
        });
        if sender.try_send(record.line()).is_err() {
            counts.add(&record.address, 0, 1);
        }
    }
}

/// Sends the lines queued for `address` over one connection, reconnecting
/// with backoff; a line whose write fails is dropped and counted.
async fn send(address: String, mut lines: mpsc::Receiver<Vec<u8>>, counts: Arc<TcpLogCounts>) {
    let mut conn: Option<TcpStream> = None;
    let mut backoff = Duration::from_millis(100);
    let mut outage_drops = 0u64;
    while let Some(line) = lines.recv().await {
        if conn.is_none() {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address)).await {
                Ok(Ok(c)) => {
                    if outage_drops > 0 {
                        info!(address = %address, dropped = outage_drops, "MeshAccessLog tcp destination reachable again");
                    }
                    conn = Some(c);
                    backoff = Duration::from_millis(100);
                    outage_drops = 0;
                }
                Ok(Err(_)) | Err(_) => {
                    if outage_drops == 0 {
                        warn!(address = %address, "MeshAccessLog tcp destination unreachable; dropping its records until it is back");
                    }
                    // What queued during the wait is dropped with this one.
                    let mut dropped = 1 + drain(&mut lines);
                    tokio::time::sleep(backoff).await;
                    dropped += drain(&mut lines);
                    counts.add(&address, 0, dropped);
                    outage_drops += dropped;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.write_all(&line).await {
            Ok(()) => counts.add(&address, 1, 0),
            Err(_) => {
                conn = None;
                counts.add(&address, 0, 1);
                outage_drops += 1;
            }
        }
    }
}

/// Empties the queue, returning how many lines it held.
fn drain(lines: &mut mpsc::Receiver<Vec<u8>>) -> u64 {
    let mut n = 0;
    while lines.try_recv().is_ok() {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines() {
        let r: Record = serde_json::from_str(r#"{"address":"a:1","message":"GET / 200\n"}"#).expect("record");
        assert_eq!(r.line(), b"GET / 200\n");
        let r: Record =
            serde_json::from_str(r#"{"address":"a:1","message":{"path":"/","status":200}}"#).expect("record");
        assert_eq!(r.line(), b"{\"path\":\"/\",\"status\":200}\n");
        assert!(serde_json::from_str::<Record>(r#"{"message":"x"}"#).is_err());
    }

    #[test]
    fn counts_render_escaped() {
        let counts = TcpLogCounts::default();
        counts.add("a\"b:1", 2, 1);
        let text = counts.prometheus();
        assert!(text.contains("address=\"a\\\"b:1\",outcome=\"sent\"} 2"), "{text}");
        assert!(text.contains("address=\"a\\\"b:1\",outcome=\"dropped\"} 1"), "{text}");
    }
}
