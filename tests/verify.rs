//! `regcred::verify` against real servers on loopback:
//! - Debian's `docker-registry` (CNCF Distribution) with htpasswd, i.e. the
//!   Basic challenge, over plain HTTP and over HTTPS with a private CA;
//! - an in-test stand-in speaking minimal HTTP/1.1 for the Bearer (token)
//!   flow, which Distribution only offers with an external token service.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use regcred::render::RegistryAuth;
use regcred::verify::{Step, VerifyError, VerifyOptions, verify};
use regcred_testenv::registry::{Registry, require_tool};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const USER: &str = "robot";
const PASS: &str = "right-pass-5d1e";
const WRONG: &str = "wrong-pass-9a7c";
const TOKEN: &str = "stand-in-token-3b8f";

fn auth(registry: &str, user: &str, pass: &str) -> RegistryAuth {
    RegistryAuth { registry: registry.into(), username: user.into(), password: pass.to_string().into() }
}

fn plain() -> VerifyOptions {
    VerifyOptions { ca_bundle: None, plain_http: true, timeout: Duration::from_secs(10) }
}

/// Neither the Display nor the Debug form of `e` contains any of `secrets`.
fn assert_redacted(e: &VerifyError, secrets: &[&str]) {
    for text in [e.to_string(), format!("{e:?}")] {
        for secret in secrets {
            assert!(!text.contains(secret), "{text:?} contains {secret:?}");
        }
    }
}

/// The htpasswd registry of `regcred-testenv`, in its own process group.
async fn htpasswd_registry() -> Registry {
    tokio::task::spawn_blocking(|| Registry::start_htpasswd(0, &[(USER, PASS)]))
        .await
        .unwrap()
        .expect("start docker-registry")
}

#[tokio::test]
async fn basic_registry_accepts_the_right_password_and_rejects_others() {
    let registry = htpasswd_registry().await;
    verify(&auth(&registry.host, USER, PASS), &plain()).await.expect("right password");

    let e = verify(&auth(&registry.host, USER, WRONG), &plain()).await.unwrap_err();
    assert!(e.is_rejected(), "{e}");
    assert_eq!(e.reason(), "Rejected");
    assert!(
        matches!(
            &e,
            VerifyError::Rejected { step: Step::BasicLogin, status, url, .. }
                if *status == StatusCode::UNAUTHORIZED && url.contains(&registry.host)
        ),
        "{e:?}"
    );
    assert_redacted(&e, &[WRONG, PASS]);

    let e = verify(&auth(&registry.host, "nobody", PASS), &plain()).await.unwrap_err();
    assert_eq!(e.reason(), "Rejected", "{e}");
    assert_redacted(&e, &[PASS]);
}

#[tokio::test]
async fn https_to_a_plain_http_registry_is_a_tls_error() {
    let registry = htpasswd_registry().await;
    let opts = VerifyOptions { plain_http: false, ..plain() };
    let e = verify(&auth(&registry.host, USER, PASS), &opts).await.unwrap_err();
    assert_eq!(e.reason(), "TlsHandshake", "{e}");
    assert!(e.to_string().contains(&format!("https://{}/v2/", registry.host)), "{e}");
    assert!(e.to_string().contains("plainHttp"), "{e}");
    assert_redacted(&e, &[PASS]);
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let port = regcred_testenv::free_port().unwrap();
    let e = verify(&auth(&format!("127.0.0.1:{port}"), USER, PASS), &plain()).await.unwrap_err();
    assert!(matches!(&e, VerifyError::Unreachable { step: Step::Probe, .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and then says nothing.
    let _server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let opts = VerifyOptions { timeout: Duration::from_millis(300), ..plain() };
    let started = Instant::now();
    let e = verify(&auth(&addr.to_string(), USER, PASS), &opts).await.unwrap_err();
    assert_eq!(e.reason(), "Timeout", "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------------------
// HTTPS: docker-registry with a certificate from a private CA (openssl).

/// A docker-registry serving HTTPS with htpasswd. Dropping it stops it.
struct TlsRegistry {
    child: Child,
    dir: PathBuf,
    host: String,
    ca_pem: String,
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn start_tls_registry() -> TlsRegistry {
    let binary = require_tool("docker-registry", "docker-registry").unwrap();
    let htpasswd = require_tool("htpasswd", "apache2-utils").unwrap();
    let openssl = require_tool("openssl", "openssl").unwrap();
    let port = regcred_testenv::free_port().unwrap();
    let dir = std::env::temp_dir().join(format!("regcred-verify-tls-{}-{port}", std::process::id()));
    fs::create_dir_all(dir.join("data")).unwrap();
    let p = |name: &str| dir.join(name);
    run(Command::new(&openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=regcred verify test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt")));
    run(Command::new(&openssl)
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new(&openssl)
        .args(["x509", "-req", "-days", "1", "-set_serial", "2"])
        .arg("-in")
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.crt")));
    let out = Command::new(htpasswd).args(["-Bbn", USER, PASS]).output().unwrap();
    assert!(out.status.success());
    fs::write(p("htpasswd"), out.stdout).unwrap();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {crt}\n    key: {key}\nauth:\n  htpasswd:\n    realm: regcred-test\n    path: {htpasswd}\n",
        data = p("data").display(),
        crt = p("server.crt").display(),
        key = p("server.key").display(),
        htpasswd = p("htpasswd").display(),
    );
    fs::write(p("config.yml"), config).unwrap();
    let log = fs::File::create(p("registry.log")).unwrap();
    let child = Command::new(binary)
        .arg("serve")
        .arg(p("config.yml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap();
    let mut registry =
        TlsRegistry { child, ca_pem: fs::read_to_string(p("ca.crt")).unwrap(), dir, host: format!("127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&registry.host).is_err() {
        if let Some(status) = registry.child.try_wait().unwrap() {
            panic!(
                "docker-registry exited with {status}: {}",
                fs::read_to_string(registry.dir.join("registry.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "docker-registry did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    registry
}

#[tokio::test]
async fn https_registry_is_trusted_through_the_ca_bundle() {
    let registry = tokio::task::spawn_blocking(start_tls_registry).await.unwrap();
    let with_ca =
        VerifyOptions { ca_bundle: Some(registry.ca_pem.clone()), plain_http: false, timeout: Duration::from_secs(10) };
    verify(&auth(&registry.host, USER, PASS), &with_ca).await.expect("trusted through caBundle");

    let e = verify(&auth(&registry.host, USER, WRONG), &with_ca).await.unwrap_err();
    assert!(
        matches!(&e, VerifyError::Rejected { step: Step::BasicLogin, url, .. } if url.starts_with("https://")),
        "{e:?}"
    );
    assert_redacted(&e, &[WRONG, PASS]);

    // Without the CA the certificate is not trusted.
    let without_ca = VerifyOptions { ca_bundle: None, ..with_ca.clone() };
    let e = verify(&auth(&registry.host, USER, PASS), &without_ca).await.unwrap_err();
    assert!(matches!(&e, VerifyError::TlsHandshake { step: Step::Probe, .. }), "{e:?}");
    assert!(e.to_string().contains("certificate"), "{e}");

    // Plain HTTP to the HTTPS port: Go answers 400.
    let e = verify(&auth(&registry.host, USER, PASS), &plain()).await.unwrap_err();
    assert!(matches!(&e, VerifyError::UnexpectedStatus { status, .. } if *status == StatusCode::BAD_REQUEST), "{e:?}");

    let bad_ca = VerifyOptions { ca_bundle: Some("not PEM".into()), ..with_ca };
    let e = verify(&auth(&registry.host, USER, PASS), &bad_ca).await.unwrap_err();
    assert_eq!(e.reason(), "InvalidCaBundle", "{e}");
}

// ---------------------------------------------------------------------------
// Bearer: an in-test registry and token service speaking minimal HTTP/1.1.

/// One request as the stand-in saw it.
#[derive(Clone, Debug)]
struct Request {
    /// Path and query.
    target: String,
    /// `Authorization`, if sent.
    authorization: Option<String>,
}

impl Request {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap()
    }

    fn query_string(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    fn query(&self) -> Vec<(String, String)> {
        let url = reqwest::Url::parse(&format!("http://x{}", self.target)).unwrap();
        url.query_pairs().into_owned().collect()
    }
}

/// An answer: status, extra headers, body.
type Answer = (u16, Vec<(String, String)>, String);

fn answer(status: u16, body: &str) -> Answer {
    (status, Vec::new(), body.to_string())
}

type Handler = Arc<dyn Fn(&Request) -> Answer + Send + Sync>;

/// A stand-in server on 127.0.0.1. Its task ends with the test's runtime.
struct StandIn {
    host: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl StandIn {
    /// Starts a server answering with `make(port)`.
    async fn start(make: impl FnOnce(u16) -> Handler) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handler = make(port);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let handler = handler.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut socket).await else {
                        return;
                    };
                    seen.lock().unwrap().push(request.clone());
                    let (status, headers, body) = handler(&request);
                    let mut out = format!(
                        "HTTP/1.1 {status} Stand-In\r\nContent-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n",
                        body.len()
                    );
                    for (k, v) in headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    out.push_str(&body);
                    let _ = socket.write_all(out.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        StandIn { host: format!("127.0.0.1:{port}"), requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads a request head (GET requests have no body).
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_string();
    let authorization = lines.find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.eq_ignore_ascii_case("authorization").then(|| v.trim().to_string())
    });
    Some(Request { target, authorization })
}

fn basic_header(user: &str, pass: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")))
}

/// A registry whose `/v2/` wants `Bearer TOKEN` and whose `/token` wants
/// USER:PASS and answers `token_body`.
fn token_registry(token_body: &'static str) -> impl FnOnce(u16) -> Handler {
    move |port| {
        Arc::new(move |req: &Request| match req.path() {
            "/v2/" if req.authorization.as_deref() == Some(&format!("Bearer {TOKEN}")) => answer(200, "{}"),
            "/v2/" => (
                401,
                vec![(
                    "WWW-Authenticate".into(),
                    format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="stand-in registry""#),
                )],
                r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.into(),
            ),
            "/token" if req.authorization.as_deref() == Some(&basic_header(USER, PASS)) => answer(200, token_body),
            "/token" => answer(401, r#"{"details":"incorrect username or password"}"#),
            _ => answer(404, "{}"),
        })
    }
}

#[tokio::test]
async fn bearer_flow_fetches_a_token_and_logs_in_with_it() {
    let server = StandIn::start(token_registry(r#"{"token":"stand-in-token-3b8f","expires_in":300}"#)).await;
    verify(&auth(&server.host, USER, PASS), &plain()).await.expect("bearer login");
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(requests[0].target, "/v2/");
    assert_eq!(requests[0].authorization, None);
    assert_eq!(requests[1].path(), "/token");
    assert_eq!(requests[1].query(), [("service".to_string(), "stand-in registry".to_string())]);
    assert_eq!(requests[1].authorization.as_deref(), Some(basic_header(USER, PASS).as_str()));
    assert_eq!(requests[2].target, "/v2/");
    assert_eq!(requests[2].authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
}

#[tokio::test]
async fn bearer_flow_accepts_access_token() {
    let server = StandIn::start(token_registry(r#"{"access_token":"stand-in-token-3b8f"}"#)).await;
    verify(&auth(&server.host, USER, PASS), &plain()).await.expect("bearer login with access_token");
}

#[tokio::test]
async fn bearer_flow_wrong_password_is_rejected_by_the_token_service() {
    let server = StandIn::start(token_registry(r#"{"token":"stand-in-token-3b8f"}"#)).await;
    let e = verify(&auth(&server.host, USER, WRONG), &plain()).await.unwrap_err();
    assert!(
        matches!(
            &e,
            VerifyError::Rejected { step: Step::TokenRequest, status, url, username }
                if *status == StatusCode::UNAUTHORIZED
                    && url.contains("/token?service=stand-in+registry")
                    && username == USER
        ),
        "{e:?}"
    );
    assert_eq!(e.reason(), "Rejected");
    assert_redacted(&e, &[WRONG, PASS, TOKEN]);
    // No login was attempted without a token.
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn bearer_flow_token_refused_by_the_registry_is_rejected() {
    let server = StandIn::start(token_registry(r#"{"token":"some-other-token-77"}"#)).await;
    let e = verify(&auth(&server.host, USER, PASS), &plain()).await.unwrap_err();
    assert!(matches!(&e, VerifyError::Rejected { step: Step::BearerLogin, .. }), "{e:?}");
    assert_redacted(&e, &[PASS, "some-other-token-77"]);
}

#[tokio::test]
async fn bearer_flow_unusable_token_responses() {
    for body in ["not json", r#"{"token": 7}"#, r#"{"expires_in": 300}"#, r#"["stand-in-token-3b8f"]"#] {
        let server = StandIn::start(token_registry(body)).await;
        let e = verify(&auth(&server.host, USER, PASS), &plain()).await.unwrap_err();
        assert!(matches!(&e, VerifyError::BadTokenResponse { step: Step::TokenRequest, .. }), "{body}: {e:?}");
        assert_redacted(&e, &[PASS, TOKEN]);
    }
}

/// A server whose `/v2/` (and everything else) answers `answer`.
fn fixed(a: Answer) -> impl FnOnce(u16) -> Handler {
    move |_| Arc::new(move |_: &Request| a.clone())
}

fn challenge(value: &str) -> Answer {
    (401, vec![("WWW-Authenticate".into(), value.into())], "{}".into())
}

#[tokio::test]
async fn unusable_challenges_are_bad_challenges() {
    for a in [
        answer(401, "{}"),
        challenge(r#"Bearer service="no realm""#),
        challenge(r#"Bearer realm="unterminated"#),
        challenge(r#"Digest realm="x", nonce="y""#),
        challenge(r#"Bearer realm="/relative/token""#),
    ] {
        let server = StandIn::start(fixed(a.clone())).await;
        let e = verify(&auth(&server.host, USER, PASS), &plain()).await.unwrap_err();
        assert!(matches!(&e, VerifyError::BadChallenge { step: Step::Probe, .. }), "{a:?}: {e:?}");
        // Nothing was sent with credentials.
        assert_eq!(server.requests().len(), 1);
    }
}

#[tokio::test]
async fn unexpected_statuses_name_the_step() {
    let server = StandIn::start(fixed(answer(503, "{}"))).await;
    let e = verify(&auth(&server.host, USER, PASS), &plain()).await.unwrap_err();
    assert!(
        matches!(&e, VerifyError::UnexpectedStatus { step: Step::Probe, status, .. } if status.as_u16() == 503),
        "{e:?}"
    );
    assert!(e.to_string().contains("503"), "{e}");

    let server = StandIn::start(|port| {
        Arc::new(move |req: &Request| match req.path() {
            "/v2/" => challenge(&format!(r#"Bearer realm="http://127.0.0.1:{port}/token""#)),
            _ => answer(500, "{}"),
        })
    })
    .await;
    let e = verify(&auth(&server.host, USER, PASS), &plain()).await.unwrap_err();
    assert!(
        matches!(&e, VerifyError::UnexpectedStatus { step: Step::TokenRequest, status, url, .. }
            if status.as_u16() == 500 && url.ends_with("/token")),
        "{e:?}"
    );
}

#[tokio::test]
async fn anonymous_registry_needs_no_credentials() {
    let server = StandIn::start(fixed(answer(200, "{}"))).await;
    verify(&auth(&server.host, USER, PASS), &plain()).await.unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].authorization, None);
}

#[tokio::test]
async fn redirects_are_followed_only_on_the_same_origin() {
    let elsewhere = StandIn::start(fixed(answer(200, "{}"))).await;
    let target = format!("http://{}/v2/", elsewhere.host);
    // A token service that redirects to another host: credentials must not
    // follow.
    let server = StandIn::start(move |port| {
        Arc::new(move |req: &Request| match req.path() {
            "/v2/" => challenge(&format!(r#"Bearer realm="http://127.0.0.1:{port}/token""#)),
            "/token" => (307, vec![("Location".into(), target.clone())], String::new()),
            _ => answer(404, "{}"),
        })
    })
    .await;
    let e = verify(&auth(&server.host, USER, PASS), &plain()).await.unwrap_err();
    assert!(
        matches!(&e, VerifyError::UnexpectedStatus { step: Step::TokenRequest, status, .. } if status.as_u16() == 307),
        "{e:?}"
    );
    assert!(elsewhere.requests().is_empty());

    // On the same origin, a redirect is followed with the credentials.
    let server = StandIn::start(|port| {
        Arc::new(move |req: &Request| match req.path() {
            "/v2/" if req.authorization.as_deref() == Some(&format!("Bearer {TOKEN}")) => answer(200, "{}"),
            "/v2/" => challenge(&format!(r#"Bearer realm="http://127.0.0.1:{port}/auth",service="s""#)),
            "/auth" => (302, vec![("Location".into(), format!("/token?{}", req.query_string()))], String::new()),
            "/token" if req.authorization.as_deref() == Some(&basic_header(USER, PASS)) => {
                answer(200, r#"{"token":"stand-in-token-3b8f"}"#)
            }
            _ => answer(401, "{}"),
        })
    })
    .await;
    verify(&auth(&server.host, USER, PASS), &plain()).await.expect("token obtained through a same-origin redirect");
    let targets: Vec<String> = server.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, ["/v2/", "/auth?service=s", "/token?service=s", "/v2/"]);
}
