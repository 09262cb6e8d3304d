//! A plain-HTTP proxy in front of a provider stand-in that injects faults,
//! shared by the fault suites (`tests/faults*.rs`).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// How long [`Mode::Hang`] keeps a request unanswered.
pub const HANG: Duration = Duration::from_secs(60);

/// What the fault proxy does with each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward to the stand-in.
    Pass,
    /// Close the connection without an answer.
    Down,
    Status500,
    /// 429 with `Retry-After: 1`.
    Throttled,
    /// Answer nothing for 60 s.
    Hang,
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 announcing 4096 bytes, sending a few, closing.
    Truncated,
    /// 200 with a 16 MiB body.
    Huge,
    /// Forward, with `expires_in` in the answer rewritten to -3600: a token
    /// that expired an hour ago.
    Expired,
}

/// A plain-HTTP proxy in front of a provider stand-in that injects faults.
pub struct FaultProxy {
    mode: Arc<Mutex<Mode>>,
    pub port: u16,
}

impl FaultProxy {
    pub fn start(upstream: String) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let m = mode.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((conn, _)) = listener.accept().await else { continue };
                    let mode = *m.lock().unwrap();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let _ = serve(conn, mode, &upstream).await;
                    });
                }
            })
        });
        FaultProxy { mode, port }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Reads one HTTP/1.1 message (head and Content-Length body).
async fn read_request(conn: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(buf);
        }
    }
}

/// Sets `Connection: close` in an HTTP head, so one exchange uses one connection.
fn connection_close(message: &[u8]) -> Vec<u8> {
    let Some(end) = message.windows(4).position(|w| w == b"\r\n\r\n") else { return message.to_vec() };
    let head = String::from_utf8_lossy(&message[..end]);
    let mut lines: Vec<&str> =
        head.split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
    lines.push("Connection: close");
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(&message[end..]);
    out
}

/// A response whose JSON body has `expires_in` set to -3600, with its
/// Content-Length adjusted.
fn expire(response: &[u8]) -> Vec<u8> {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else { return response.to_vec() };
    let Ok(mut body) = serde_json::from_slice::<Value>(&response[end + 4..]) else { return response.to_vec() };
    if body.get("expires_in").is_none() {
        return response.to_vec();
    }
    body["expires_in"] = json!(-3600);
    let body = body.to_string();
    let head = String::from_utf8_lossy(&response[..end]);
    let mut lines: Vec<String> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("content-length:"))
        .map(str::to_string)
        .collect();
    lines.push(format!("Content-Length: {}", body.len()));
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

async fn serve(mut conn: tokio::net::TcpStream, mode: Mode, upstream: &str) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = read_request(&mut conn).await?;
    let canned = |status: &str, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match mode {
        Mode::Pass | Mode::Expired => {
            let mut up = tokio::net::TcpStream::connect(upstream).await?;
            up.write_all(&connection_close(&request)).await?;
            let mut response = Vec::new();
            up.read_to_end(&mut response).await?;
            let response = if mode == Mode::Expired { expire(&response) } else { response };
            conn.write_all(&connection_close(&response)).await?;
        }
        Mode::Down => {}
        Mode::Status500 => {
            let body = r#"{"error":{"code":500,"message":"injected","status":"INTERNAL"}}"#;
            conn.write_all(canned("500 Internal Server Error", "", body).as_bytes()).await?
        }
        Mode::Throttled => conn.write_all(canned("429 Too Many Requests", "Retry-After: 1\r\n", "{}").as_bytes()).await?,
        Mode::Hang => tokio::time::sleep(HANG).await,
        Mode::Malformed => conn.write_all(canned("200 OK", "", r#"{"access_token": "#).as_bytes()).await?,
        Mode::Truncated => {
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n{\"access_token\":").await?
        }
        Mode::Huge => {
            let size = 16usize << 20;
            conn.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n{{").as_bytes()).await?;
            let block = vec![b' '; 1 << 16];
            for _ in 0..(size >> 16) {
                conn.write_all(&block).await?;
            }
        }
    }
    conn.shutdown().await
}
