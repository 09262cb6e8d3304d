//! AWS stand-ins: `moto_server` (PyPI `moto[server]`) for ECR and STS,
//! behind a front that makes it as strict as AWS ([`aws_front`]), and a
//! small ECR Public stand-in following its JSON API, which moto lacks.

#[path = "aws_front.rs"]
mod aws_front;

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
use serde_json::Value;

pub use aws_front::{ECR_TOKEN_LIFETIME, EcrToken, STS_AUDIENCE, WebIdentityCall};

use crate::operator::http_get;
use crate::registry::require_tool;
use crate::standin_http::Server;
use crate::tokenauth::Validator;
use crate::{ControlPlane, free_port};

/// `moto_server` on an internal loopback port, behind the front that
/// clients reach at [`Moto::endpoint`]. The front can be stopped and
/// started again on the same port, to simulate an AWS outage; what it
/// knows (OIDC providers, trust policies, issued tokens) and moto's state
/// survive the outage.
///
/// What the front adds to moto (see [`aws_front`]):
/// - ECR `GetAuthorizationToken` issues random tokens bound to the region
///   of the request's signature, the caller and an expiry (12 hours, or
///   [`Moto::set_ecr_token_lifetime`]); [`Moto::validator`] and
///   [`Moto::validator_for`] accept exactly those while they live;
/// - STS `AssumeRoleWithWebIdentity` checks the token against the OIDC
///   providers registered with [`Moto::add_oidc_provider`] and the trust
///   policies given with [`Moto::trust_web_identity`], and refuses
///   everything else, as STS does.
pub struct Moto {
    child: Option<Child>,
    binary: PathBuf,
    /// moto's own port, which only the front uses.
    moto_port: u16,
    /// The front's port: the endpoint.
    port: u16,
    process_group: i32,
    front: Arc<aws_front::Front>,
    server: Option<Server>,
}

impl Moto {
    /// Starts `moto_server` in `process_group` (the control plane's, so it
    /// stops with it; 0 puts it in a new group of its own) and the front
    /// before it.
    pub fn start(process_group: i32) -> Result<Moto> {
        let binary = require_tool("moto_server", "python3-pip (then `pip install 'moto[server]'`, or `make deps`)")
            .context("moto_server (PyPI moto[server]) is needed for the AWS tests: run `pip install 'moto[server]'`")?;
        let moto_port = free_port()?;
        let mut moto = Moto {
            child: None,
            binary,
            moto_port,
            port: free_port()?,
            process_group,
            front: Arc::new(aws_front::Front::new(format!("127.0.0.1:{moto_port}"))),
            server: None,
        };
        moto.resume()?;
        Ok(moto)
    }

    /// `http://127.0.0.1:PORT`: the front.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops answering (an outage): the endpoint refuses connections until
    /// [`Moto::resume`].
    pub fn stop(&mut self) {
        // Dropping the server closes its listener.
        self.server = None;
    }

    /// Answers again on the same port (starting moto too if it is not
    /// running).
    pub fn resume(&mut self) -> Result<()> {
        self.stop();
        let running = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if !running {
            self.start_moto()?;
        }
        // The port was ours a moment ago; a socket of the old listener may
        // linger briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(e).with_context(|| format!("binding the AWS front to port {}", self.port)),
            }
        };
        let front = self.front.clone();
        self.server = Some(Server::spawn(listener, "aws-front", "aws-front-conn", move |tcp| front.serve(tcp))?);
        Ok(())
    }

    fn start_moto(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let child = Command::new(&self.binary)
            .args(["-H", "127.0.0.1", "-p", &self.moto_port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(self.process_group)
            .spawn()
            .context("starting moto_server")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(&format!("http://127.0.0.1:{}/moto-api/", self.moto_port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("moto_server did not answer on port {}", self.moto_port)
    }

    /// The lifetime of the ECR tokens issued from now on (default
    /// [`ECR_TOKEN_LIFETIME`], 12 hours, as ECR).
    pub fn set_ecr_token_lifetime(&self, lifetime: Duration) {
        self.front.set_ecr_token_lifetime(lifetime);
    }

    /// Fault knob: while set, ECR tokens are issued already expired (an
    /// hour ago), as a provider with a wrong clock would.
    pub fn set_ecr_expired(&self, expired: bool) {
        self.front.set_ecr_expired(expired);
    }

    /// A token-service validator: user `AWS` and a live token this front's
    /// ECR issued, in any region.
    pub fn validator(&self) -> Validator {
        self.front.validator(None)
    }

    /// A token-service validator for a registry in `region`: user `AWS` and
    /// a live token this front's ECR issued in `region` (an ECR token is
    /// valid only in the region that issued it).
    pub fn validator_for(&self, region: &str) -> Validator {
        self.front.validator(Some(region))
    }

    /// What the ECR token `password` is bound to, if this front issued it
    /// (expired or not).
    pub fn ecr_token(&self, password: &str) -> Option<EcrToken> {
        self.front.ecr_token(password)
    }

    /// ECR `GetAuthorizationToken` calls answered with a token.
    pub fn ecr_calls(&self) -> usize {
        self.front.ecr_calls()
    }

    /// Every STS `AssumeRoleWithWebIdentity` call, accepted or refused, in
    /// order.
    pub fn web_identity_calls(&self) -> Vec<WebIdentityCall> {
        self.front.web_identity_calls()
    }

    /// Registers the control plane's ServiceAccount token issuer as an IAM
    /// OIDC identity provider with client id [`STS_AUDIENCE`], as
    /// `eksctl utils associate-iam-oidc-provider` does for a cluster: its
    /// discovery document (`/.well-known/openid-configuration`) and keys
    /// (`/openid/v1/jwks`) are read from kube-apiserver with the admin
    /// credentials. Returns the issuer.
    pub fn add_oidc_provider(&self, cp: &ControlPlane) -> Result<String> {
        self.add_oidc_provider_with_client_ids(cp, &[STS_AUDIENCE])
    }

    /// [`Moto::add_oidc_provider`] with other client ids (audiences).
    pub fn add_oidc_provider_with_client_ids(&self, cp: &ControlPlane, client_ids: &[&str]) -> Result<String> {
        let cluster = crate::oidc::fetch_cluster_oidc(cp)?;
        self.add_oidc_provider_jwks(&cluster.issuer, &cluster.jwks, client_ids)?;
        Ok(cluster.issuer)
    }

    /// Registers an OIDC identity provider for `issuer` with the keys of the
    /// JWK Set `jwks` and `client_ids` as its audiences (replacing one for
    /// the same issuer).
    pub fn add_oidc_provider_jwks(&self, issuer: &str, jwks: &Value, client_ids: &[&str]) -> Result<()> {
        self.front.add_oidc_provider(issuer, jwks, client_ids)
    }

    /// Adds to the trust policy of `role_arn` a statement allowing
    /// `sts:AssumeRoleWithWebIdentity` to tokens of `issuer`'s provider with
    /// audience `audience` (`<issuer>:aud`, StringEquals) and a subject
    /// matching one of `subjects` (`<issuer>:sub`, StringLike: `*` and `?`
    /// wildcards, e.g. `system:serviceaccount:ns:*`). A role without any
    /// statement refuses every web identity.
    pub fn trust_web_identity(&self, role_arn: &str, issuer: &str, audience: &str, subjects: &[&str]) {
        self.front.trust_web_identity(role_arn, issuer, audience, subjects);
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
