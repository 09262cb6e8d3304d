//! AWS stand-ins: `moto_server` (PyPI `moto[server]`) for ECR and STS, and a
//! small ECR Public stand-in following its JSON API, which moto lacks.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine;

use crate::free_port;
use crate::operator::http_get;
use crate::registry::require_tool;
use crate::tokenauth::Validator;

/// A `moto_server` process on loopback. It can be stopped and started again
/// on the same port, to simulate an AWS outage.
pub struct Moto {
    child: Option<Child>,
    binary: PathBuf,
    port: u16,
    process_group: i32,
}

impl Moto {
    /// Starts `moto_server` in `process_group` (the control plane's, so it
    /// stops with it).
    pub fn start(process_group: i32) -> Result<Moto> {
        let binary = require_tool("moto_server", "python3-pip (then `pip install 'moto[server]'`, or `make deps`)")
            .context("moto_server (PyPI moto[server]) is needed for the AWS tests: run `pip install 'moto[server]'`")?;
        let mut moto = Moto { child: None, binary, port: free_port()?, process_group };
        moto.resume()?;
        Ok(moto)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server (an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port. moto keeps no state across
    /// restarts; ECR and STS need none for these tests.
    pub fn resume(&mut self) -> Result<()> {
        self.stop();
        let child = Command::new(&self.binary)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(self.process_group)
            .spawn()
            .context("starting moto_server")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(&format!("{}/moto-api/", self.endpoint())).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("moto_server did not answer on port {}", self.port)
    }

    /// The password moto's ECR issues for an account: `<account>-auth-token`.
    pub fn ecr_password(account: &str) -> String {
        format!("{account}-auth-token")
    }

    /// A token-service validator accepting what moto's ECR issues: user
    /// `AWS` with `<12-digit account>-auth-token`.
    pub fn validator(&self) -> Validator {
        Arc::new(|user: &str, pass: &str| {
            user == "AWS"
                && pass
                    .strip_suffix("-auth-token")
                    .is_some_and(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// ECR Public's `GetAuthorizationToken` (awsJson1.1, target
/// `SpencerFrontendService.GetAuthorizationToken`), issuing random tokens
/// that live `lifetime`.
pub struct EcrPublicStandIn {
    pub port: u16,
    issued: Arc<Mutex<HashMap<String, Instant>>>,
    calls: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    expired: Arc<AtomicBool>,
}

impl EcrPublicStandIn {
    pub fn start(lifetime: Duration) -> Result<EcrPublicStandIn> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let issued: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let expired = Arc::new(AtomicBool::new(false));
        let (i, c, s, x) = (issued.clone(), calls.clone(), stop.clone(), expired.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(stream) = stream {
                    let (i, c, x) = (i.clone(), c.clone(), x.clone());
                    std::thread::spawn(move || {
                        let lifetime = if x.load(Ordering::Relaxed) { None } else { Some(lifetime) };
                        let _ = serve(stream, &i, &c, lifetime);
                    });
                }
            }
        });
        Ok(EcrPublicStandIn { port, issued, calls, stop, expired })
    }

    /// Fault knob: while set, tokens are issued already expired (an hour
    /// ago), as a provider with a wrong clock would.
    pub fn set_expired(&self, expired: bool) {
        self.expired.store(expired, Ordering::Relaxed);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// GetAuthorizationToken calls served.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// Accepts user `AWS` with a token this stand-in issued that has not
    /// expired.
    pub fn validator(&self) -> Validator {
        let issued = self.issued.clone();
        Arc::new(move |user: &str, pass: &str| {
            user == "AWS" && issued.lock().unwrap().get(pass).is_some_and(|exp| Instant::now() < *exp)
        })
    }
}

impl Drop for EcrPublicStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    stream: TcpStream,
    issued: &Mutex<HashMap<String, Instant>>,
    calls: &AtomicUsize,
    lifetime: Option<Duration>,
) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut target = String::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "x-amz-target" => target = v.trim().to_string(),
                "content-length" => length = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let (status, payload) = if target == "SpencerFrontendService.GetAuthorizationToken" {
        calls.fetch_add(1, Ordering::Relaxed);
        let token = format!("ecr-public-{:032x}", rand_u128());
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
        let expires = match lifetime {
            Some(lifetime) => {
                issued.lock().unwrap().insert(token.clone(), Instant::now() + lifetime);
                now + lifetime.as_secs_f64()
            }
            None => now - 3600.0,
        };
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{token}"));
        (200, format!(r#"{{"authorizationData":{{"authorizationToken":"{auth}","expiresAt":{expires}}}}}"#))
    } else {
        (400, r#"{"__type":"UnknownOperationException","message":"unknown operation"}"#.to_string())
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: regcred-test\r\nDate: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        http_date(SystemTime::now()),
        payload.len()
    )?;
    Ok(())
}

/// An HTTP `Date` (RFC 9110 IMF-fixdate), as AWS sends with every answer.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let ts = k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    ts.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn rand_u128() -> u128 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 16];
    SystemRandom::new().fill(&mut b).expect("system randomness");
    u128::from_le_bytes(b)
}
