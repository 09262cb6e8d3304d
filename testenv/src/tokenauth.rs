//! A Docker registry token service for tests, and a real CNCF Distribution
//! registry (Debian `docker-registry`) in token-auth mode behind it.
//!
//! [`TokenService`] implements the token side of the Docker registry token
//! protocol: a client that the registry challenged with
//! `Bearer realm=...,service=...,scope=...` asks the realm for a token with
//! HTTP Basic credentials, and gets a JWT signed with a key whose
//! certificate the registry trusts (its `rootcertbundle`). Which credentials
//! are valid is decided by a [`Validator`] at each token request, so tests
//! can expire or rotate a credential and see it really fail: the registry
//! checks the bearer token on every request, and a client without a valid
//! token has to ask for a new one.
//!
//! Supported requests on `/token`:
//! - `GET ?service=S&scope=T:NAME:ACTIONS[&scope=...]` (also `account=`, and
//!   several scopes space-separated in one `scope`) with
//!   `Authorization: Basic ...`, as docker, skopeo and containers/image send;
//! - `POST` with a form body `grant_type=password&username=..&password=..
//!   &service=..&scope=..` (the OAuth2 form that containerd tries first).
//!
//! The answer is `200 {"token", "access_token", "expires_in", "issued_at"}`
//! granting exactly the requested actions, or `401` with
//! `WWW-Authenticate: Basic realm="..."` when the credentials are missing
//! or the validator refuses them.
//!
//! Tokens are ES256 JWTs whose header carries the signing certificate in
//! `x5c`; that certificate is self-signed and is the registry's whole root
//! bundle, which Distribution 2.8 accepts (Go's chain verification takes a
//! leaf that is itself in the root pool as a complete chain).

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;

use crate::free_port;
use crate::operator::http_get;
use crate::registry::{TEST_IMAGE, require_tool};
use crate::standin_http::{Conn, Request, Response, Server, answer_once, parse_form};

/// Decides whether a (username, password) presented to the token service is
/// valid right now.
pub type Validator = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// The `service` name the registry announces and tokens are issued for.
pub const SERVICE: &str = "regcred-test-registry";
/// The `iss` of the tokens.
pub const ISSUER: &str = "regcred-test-token-service";
/// Lifetime of an issued token, in seconds.
pub const TOKEN_LIFETIME_SECS: u64 = 60;

/// The largest request head or body the service reads.
const MAX_REQUEST: usize = 64 * 1024;

/// A running token service on `127.0.0.1`. It serves from its own threads
/// (no async runtime), so tests on any runtime, or none, can share it.
/// Dropping it stops the listener.
pub struct TokenService {
    root_cert_pem: String,
    state: Arc<State>,
    _server: Server,
}

struct State {
    validator: Validator,
    key: EcdsaKeyPair,
    /// Base64 (standard) DER of the signing certificate, for `x5c`.
    cert_b64: String,
    realm: String,
    rng: SystemRandom,
    requests: AtomicUsize,
    rejected: AtomicUsize,
}

impl TokenService {
    /// Generates a signing key and certificate and starts serving on a free
    /// loopback port.
    pub fn start(validator: Validator) -> Result<TokenService> {
        let (cert_der, cert_pem, key_pkcs8) = signing_cert()?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key_pkcs8, &rng)
            .map_err(|e| anyhow!("loading the token signing key: {e}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the token service")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            validator,
            key,
            cert_b64: STANDARD.encode(&cert_der),
            realm: format!("http://127.0.0.1:{port}/token"),
            rng,
            requests: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
        });
        let server = {
            let state = state.clone();
            Server::spawn(listener, "regcred-token-service", "regcred-token-conn", move |tcp| {
                serve_connection(&state, tcp)
            })?
        };
        Ok(TokenService { root_cert_pem: cert_pem, state, _server: server })
    }

    /// `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        self.state.realm.clone()
    }

    /// The `service` name the tokens are issued for ([`SERVICE`]).
    pub fn service(&self) -> &str {
        SERVICE
    }

    /// The `iss` of the tokens ([`ISSUER`]).
    pub fn issuer(&self) -> &str {
        ISSUER
    }

    /// PEM of the self-signed certificate whose key signs the tokens: the
    /// registry's `rootcertbundle`.
    pub fn root_cert_pem(&self) -> &str {
        &self.root_cert_pem
    }

    /// Token requests served, whatever the outcome.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Token requests refused with 401 (missing or invalid credentials).
    pub fn rejected(&self) -> usize {
        self.state.rejected.load(Ordering::SeqCst)
    }
}

/// A self-signed ECDSA P-256 certificate: (DER, PEM, PKCS#8 DER of the key).
fn signing_cert() -> Result<(Vec<u8>, String, Vec<u8>)> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "regcred-test-token-signer");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key)?;
    Ok((cert.der().to_vec(), cert.pem(), key.serialize_der()))
}

fn serve_connection(state: &State, tcp: TcpStream) {
    answer_once(Conn::plain(tcp, Duration::from_secs(10)), MAX_REQUEST, |req| match req {
        Ok(req) => handle(state, &req),
        Err(e) => Response::text(400, &format!("bad request: {e:#}")),
    });
}

/// One `access` entry of a token.
#[derive(Debug, PartialEq)]
struct Access {
    kind: String,
    name: String,
    actions: Vec<String>,
}

/// Parses `scope` values: each holds one or more space-separated
/// `TYPE:NAME:ACTIONS` (NAME may itself contain `:`, ACTIONS is
/// comma-separated). Entries for the same resource are merged.
fn parse_scopes<'a>(scopes: impl IntoIterator<Item = &'a str>) -> Vec<Access> {
    let mut out: Vec<Access> = Vec::new();
    for scope in scopes.into_iter().flat_map(|s| s.split_whitespace()) {
        let Some((kind, rest)) = scope.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        if kind.is_empty() || name.is_empty() {
            continue;
        }
        let index = match out.iter().position(|a| a.kind == kind && a.name == name) {
            Some(i) => i,
            None => {
                out.push(Access { kind: kind.to_string(), name: name.to_string(), actions: Vec::new() });
                out.len() - 1
            }
        };
        for action in actions.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            if !out[index].actions.iter().any(|a| a == action) {
                out[index].actions.push(action.to_string());
            }
        }
    }
    out
}

fn handle(state: &State, req: &Request) -> Response {
    if req.path != "/token" {
        return Response::text(404, "not found");
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let (credentials, params) = match req.method.as_str() {
        "GET" => (req.basic_credentials(), parse_form(&req.query)),
        "POST" => {
            let mut params = parse_form(&req.query);
            params.extend(parse_form(&String::from_utf8_lossy(&req.body)));
            let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            match param("grant_type").as_deref() {
                Some("password") => {}
                other => {
                    return Response::json(
                        400,
                        &json!({
                            "error": "unsupported_grant_type",
                            "error_description": format!("grant_type {other:?} is not supported; use password"),
                        }),
                    );
                }
            }
            let credentials = match (param("username"), param("password")) {
                (Some(u), Some(p)) => Some((u, p)),
                _ => req.basic_credentials(),
            };
            (credentials, params)
        }
        _ => return Response::text(405, "use GET or POST"),
    };
    let valid = credentials.as_ref().is_some_and(|(u, p)| (state.validator)(u, p));
    let Some((user, _)) = credentials.filter(|_| valid) else {
        state.rejected.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::json(
            401,
            &json!({"errors": [{"code": "UNAUTHORIZED", "message": "invalid or missing credentials"}]}),
        );
        response.headers.push(("WWW-Authenticate", format!("Basic realm=\"{}\"", state.realm)));
        return response;
    };
    if let Some((_, service)) = params.iter().find(|(k, _)| k == "service")
        && service != SERVICE
    {
        return Response::json(
            400,
            &json!({"errors": [{"code": "DENIED", "message": format!("unknown service {service:?}")}]}),
        );
    }
    let access = parse_scopes(params.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.as_str()));
    match issue_token(state, &user, &access) {
        Ok((token, issued_at)) => Response::json(
            200,
            &json!({
                "token": token,
                "access_token": token,
                "expires_in": TOKEN_LIFETIME_SECS,
                "issued_at": issued_at,
            }),
        ),
        Err(e) => Response::text(500, &format!("issuing a token: {e:#}")),
    }
}

/// Signs a token for `user` granting `access`; returns it and its
/// `issued_at` (RFC 3339).
fn issue_token(state: &State, user: &str, access: &[Access]) -> Result<(String, String)> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut jti = [0u8; 16];
    state.rng.fill(&mut jti).map_err(|_| anyhow!("no randomness"))?;
    let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [state.cert_b64]});
    let claims = json!({
        "iss": ISSUER,
        "sub": user,
        "aud": SERVICE,
        "exp": now + TOKEN_LIFETIME_SECS,
        "nbf": now,
        "iat": now,
        "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "access": access
            .iter()
            .map(|a| json!({"type": a.kind, "name": a.name, "actions": a.actions}))
            .collect::<Vec<_>>(),
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
    );
    // FIXED signing gives the JWS form of an ECDSA signature: r || s.
    let signature = state.key.sign(&state.rng, signing_input.as_bytes()).map_err(|_| anyhow!("signing failed"))?;
    Ok((format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())), rfc3339(now)))
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time.
fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// A running registry in token-auth mode. Dropping it stops the process and
/// removes its files.
pub struct TokenRegistry {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:PORT`.
    pub host: String,
}

impl TokenRegistry {
    /// `HOST/regcred/test:v1`.
    pub fn test_image(&self) -> String {
        format!("{}/{TEST_IMAGE}", self.host)
    }

    /// The registry's log so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Starts `docker-registry` in token-auth mode trusting `tokens`, and pushes
/// [`TEST_IMAGE`] with `push_user`/`push_pass`, which `tokens`' validator
/// must accept. `process_group` is the control plane's, so the registry
/// stops with it (0 puts the registry in a new group of its own).
pub fn start_token_registry(
    process_group: i32,
    tokens: &TokenService,
    push_user: &str,
    push_pass: &str,
) -> Result<TokenRegistry> {
    let binary = require_tool("docker-registry", "docker-registry")?;
    require_tool("skopeo", "skopeo")?;
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("regcred-token-registry-{}-{port}", std::process::id()));
    fs::create_dir_all(dir.join("data"))?;
    let bundle = dir.join("token-root.crt");
    fs::write(&bundle, tokens.root_cert_pem())?;
    let config = json!({
        "version": "0.1",
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": dir.join("data")}},
        "http": {"addr": format!("127.0.0.1:{port}")},
        "auth": {"token": {
            "realm": tokens.realm(),
            "service": tokens.service(),
            "issuer": tokens.issuer(),
            "rootcertbundle": bundle,
        }},
    });
    fs::write(dir.join("config.yml"), serde_yaml::to_string(&config)?)?;
    let log = fs::File::create(dir.join("registry.log"))?;
    let child = Command::new(binary)
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(process_group)
        .spawn()
        .context("starting docker-registry")?;
    let mut registry = TokenRegistry { child, dir, host: format!("127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = registry.child.try_wait()? {
            bail!("docker-registry exited with {status}: {}", registry.log());
        }
        // 401 means it is up and asking for a token.
        if http_get(&format!("http://{}/v2/", registry.host)).is_ok_and(|(code, _)| code == 401) {
            break;
        }
        if Instant::now() > deadline {
            bail!("docker-registry did not come up: {}", registry.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    push_test_image(&registry, push_user, push_pass)?;
    Ok(registry)
}

fn push_test_image(registry: &TokenRegistry, user: &str, pass: &str) -> Result<()> {
    let layout = registry.dir.join("oci");
    crate::images::write_test_image(&layout)?;
    let policy = registry.dir.join("policy.json");
    fs::write(&policy, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)?;
    let out = Command::new("skopeo")
        .arg(format!("--policy={}", policy.display()))
        .args(["copy", "--dest-tls-verify=false", "--dest-creds"])
        .arg(format!("{user}:{pass}"))
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{}", registry.test_image()))
        .output()?;
    if !out.status.success() {
        bail!(
            "pushing the test image failed: {}\nregistry log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            registry.log()
        );
    }
    Ok(())
}

/// Writes a docker config JSON (`{"auths":{HOST:{username,password,auth}}}`)
/// for `--authfile` of skopeo and friends.
pub fn write_authfile(path: &Path, host: &str, user: &str, pass: &str) -> Result<()> {
    let config = json!({"auths": {host: {
        "username": user,
        "password": pass,
        "auth": STANDARD.encode(format!("{user}:{pass}")),
    }}});
    fs::write(path, serde_json::to_vec_pretty(&config)?).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_parsed_and_merged() {
        let got = parse_scopes([
            "repository:regcred/test:pull,push",
            "repository:other:pull repository:regcred/test:pull,delete",
            "registry:catalog:*",
            "repository(plugin):localhost:5000/x:pull",
            "garbage",
        ]);
        let want = |k: &str, n: &str, a: &[&str]| Access {
            kind: k.into(),
            name: n.into(),
            actions: a.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            got,
            vec![
                want("repository", "regcred/test", &["pull", "push", "delete"]),
                want("repository", "other", &["pull"]),
                want("registry", "catalog", &["*"]),
                want("repository(plugin)", "localhost:5000/x", &["pull"]),
            ]
        );
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
