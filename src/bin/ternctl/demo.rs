//! The quickstart's demo service (also `ternctl demo-app`, which the tests
//! run): answers every HTTP/1.1 request with a fixed body; with `call`, it
//! first calls that URL, forwarding the W3C `traceparent` header as any
//! traced application does, so spans across services join one trace.
//! `GET /metrics` answers the application's own metrics (requests served,
//! in Prometheus' text format), as an instrumented application would.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves on `listener` in the background. Connections are kept alive
/// (HTTP/1.1), so a load tool through Envoy measures the proxies, not
/// connection setup.
pub fn serve(listener: tokio::net::TcpListener, body: String, call: Option<String>) {
    let client = reqwest::Client::new();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else { return };
            tokio::spawn(connection(conn, client.clone(), call.clone(), body.clone(), served.clone()));
        }
    });
}

/// The application's own metrics.
fn metrics(served: u64) -> String {
    format!("# HELP demo_requests_total Requests the demo application served.\n# TYPE demo_requests_total counter\ndemo_requests_total{{handler=\"orders\"}} {served}\n")
}

/// The value of header `name` in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .skip(1)
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

async fn connection(
    mut conn: tokio::net::TcpStream,
    client: reqwest::Client,
    call: Option<String>,
    body: String,
    served: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request head, then its body (if it announces one), which is ignored.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        let length: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while buf.len() < length {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let close = header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || head.lines().next().is_some_and(|l| l.ends_with("HTTP/1.0"));
        let connection = if close { "Connection: close\r\n" } else { "" };
        if head.starts_with("GET /metrics ") {
            let text = metrics(served.load(std::sync::atomic::Ordering::Relaxed));
            let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n{connection}\r\n{text}", text.len());
            if conn.write_all(reply.as_bytes()).await.is_err() || close {
                return;
            }
            continue;
        }
        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut status = "200 OK";
        if let Some(url) = &call {
            let mut req = client.get(url);
            if let Some(tp) = header(&head, "traceparent") {
                req = req.header("traceparent", tp);
            }
            if !req.send().await.is_ok_and(|r| r.status().is_success()) {
                status = "502 Bad Gateway";
            }
        }
        let reply = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n{connection}\r\n{body}", body.len());
        if conn.write_all(reply.as_bytes()).await.is_err() || close {
            return;
        }
    }
}
