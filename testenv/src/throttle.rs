//! A rate-limited front for a stand-in: forwards at most `rate` requests in
//! any one second to the stand-in behind it and answers the others `429 Too
//! Many Requests` (with `Retry-After: 1` and an AWS-style
//! `ThrottlingException` body, which every provider reads as throttling),
//! as ECR, Entra and Harbor do above their quotas. It stamps every request
//! it receives, so a test can check how many reached the endpoint in any
//! second.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::standin_http::{Conn, Response, Server, answer_once};

/// What the front saw.
#[derive(Default)]
struct Log {
    /// Arrival of every request, in order, and its caller (see
    /// [`ThrottlingFront::arrivals`]).
    arrivals: Vec<(Instant, String)>,
    /// Arrivals of the requests forwarded in the last second.
    window: VecDeque<Instant>,
    throttled: usize,
}

/// See the module documentation. Dropping it stops it.
pub struct ThrottlingFront {
    server: Server,
    log: Arc<Mutex<Log>>,
}

impl ThrottlingFront {
    /// Listens on a free loopback port, forwarding to `upstream`
    /// (`host:port`) at most `rate` requests per second.
    pub fn start(upstream: &str, rate: usize) -> Result<ThrottlingFront> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let log: Arc<Mutex<Log>> = Arc::default();
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let l = log.clone();
        let server = Server::spawn(listener, "throttling-front", "throttling-conn", move |tcp| {
            let arrived = Instant::now();
            let conn = Conn::plain(tcp, Duration::from_secs(10));
            let forward = {
                let mut log = l.lock().unwrap();
                log.arrivals.push((arrived, String::new()));
                while log.window.front().is_some_and(|t| *t + Duration::from_secs(1) <= arrived) {
                    log.window.pop_front();
                }
                if log.window.len() < rate {
                    log.window.push_back(arrived);
                    true
                } else {
                    log.throttled += 1;
                    false
                }
            };
            if forward {
                let _ = relay(conn, &upstream, &l, arrived);
            } else {
                answer_once(conn, 1 << 20, |_| {
                    let mut r = Response::new(
                        429,
                        "application/x-amz-json-1.1",
                        br#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_vec(),
                    );
                    r.headers.push(("Retry-After", "1".to_string()));
                    r.headers.push(("x-amzn-RequestId", "regcred-throttled".to_string()));
                    r
                });
            }
        })?;
        Ok(ThrottlingFront { server, log })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port())
    }

    /// Requests received (forwarded or not).
    pub fn requests(&self) -> usize {
        self.log.lock().unwrap().arrivals.len()
    }

    /// Requests answered 429.
    pub fn throttled(&self) -> usize {
        self.log.lock().unwrap().throttled
    }

    /// The most requests received in any window of `len`.
    pub fn max_in_any(&self, len: Duration) -> usize {
        let times: Vec<Instant> = self.log.lock().unwrap().arrivals.iter().map(|a| a.0).collect();
        max_in_window(&times, len)
    }

    /// Every request received: when, and who sent it (the access key id of
    /// an AWS Signature Version 4 `Authorization` header's `Credential=`,
    /// empty for requests answered 429 or without one).
    pub fn arrivals(&self) -> Vec<(Instant, String)> {
        self.log.lock().unwrap().arrivals.clone()
    }
}

/// The most of the sorted `times` in any window of `len` (half-open).
pub fn max_in_window(times: &[Instant], len: Duration) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] >= times[lo] + len {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// The access key id in an AWS SigV4 `Authorization` header.
fn caller(authorization: &str) -> Option<&str> {
    let rest = &authorization[authorization.find("Credential=")? + "Credential=".len()..];
    rest.split('/').next()
}

/// Sends the request read from `conn` to `upstream` and its answer back,
/// and records its caller.
fn relay(mut conn: Conn, upstream: &str, log: &Mutex<Log>, arrived: Instant) -> Result<()> {
    let request = crate::standin_http::read_request(&mut conn, 1 << 20)?;
    if let Some(who) = request.header("authorization").and_then(caller) {
        let mut log = log.lock().unwrap();
        if let Some(entry) = log.arrivals.iter_mut().rev().find(|a| a.0 == arrived && a.1.is_empty()) {
            entry.1 = who.to_string();
        }
    }
    let mut up = TcpStream::connect(upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
    for (name, value) in &request.headers {
        if !name.eq_ignore_ascii_case("connection") {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(&request.body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    conn.write_all(&answer)?;
    conn.close();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_counted_half_open() {
        let t = Instant::now();
        let s = |ms: u64| t + Duration::from_millis(ms);
        let times = [s(0), s(100), s(999), s(1000), s(1500), s(1600)];
        assert_eq!(max_in_window(&times, Duration::from_secs(1)), 4);
        assert_eq!(max_in_window(&[], Duration::from_secs(1)), 0);
    }

    #[test]
    fn callers_come_from_sigv4_credentials() {
        let h =
            "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20260101/us-east-1/ecr-public/aws4_request, SignedHeaders=host";
        assert_eq!(caller(h), Some("AKIAEXAMPLE"));
        assert_eq!(caller("Basic dXNlcjpwYXNz"), None);
    }
}
