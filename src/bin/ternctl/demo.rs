//! The quickstart's demo service (also `ternctl demo-app`, which the tests
//! run): answers every HTTP/1.1 request with a fixed body; with `call`, it
//! first calls that URL, forwarding the W3C `traceparent` header as any
//! traced application does, so spans across services join one trace.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves on `listener` in the background.
pub fn serve(listener: tokio::net::TcpListener, body: String, call: Option<String>) {
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let (call, body) = (call.clone(), body.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let traceparent = head.lines().find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
                        .map(|(_, v)| v.trim().to_string())
                });
                let mut status = "200 OK";
                if let Some(url) = call {
                    let mut req = reqwest::Client::new().get(url);
                    if let Some(tp) = traceparent {
                        req = req.header("traceparent", tp);
                    }
                    if !req.send().await.is_ok_and(|r| r.status().is_success()) {
                        status = "502 Bad Gateway";
                    }
                }
                let reply =
                    format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
}
