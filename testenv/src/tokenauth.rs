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
//! The answer is `200 {"token", "access_token", "expires_in", "issued_at"}`,
//! or `401` with `WWW-Authenticate: Basic realm="..."` when the credentials
//! are missing or the validator refuses them.
//!
//! What a valid login may access is decided by its [`Grants`]
//! ([`TokenService::start_with_grants`]; [`TokenService::start`] grants
//! everything). As Distribution's token protocol requires, a login that
//! lacks some of the requested access is not an error: the token holds the
//! intersection of the requested and the granted actions, and a resource
//! with none left is not in it (docs/spec/auth/token.md, "Requesting a
//! Token": "If the client only has a subset of the requested access it
//! must not be considered an error"; distribution/distribution
//! `contrib/token-server/main.go`, `filterAccessList`, drops such entries,
//! and goharbor/harbor `src/core/service/token/creator.go`,
//! `repositoryFilter`, empties their actions, which the registry reads
//! alike). The registry then refuses the request itself: the real
//! Distribution behind this service answers `401` with
//! `WWW-Authenticate: Bearer ...,scope="repository:NAME:pull",error="insufficient_scope"`
//! and `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[...]}]}`
//! (`registry/auth/token/accesscontroller.go`, `Authorized` and
//! `challengeParams`).
//!
//! Registries whose refusal looks different are put behind a
//! [`RegistryFront`], which answers as ECR or Artifact Registry do.
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

/// What a login the [`Validator`] accepted may access right now, asked at
/// every token request with its (username, password).
pub type Grants = Arc<dyn Fn(&str, &str) -> Vec<Grant> + Send + Sync>;

/// Actions on the repositories whose names match `pattern`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// A repository name, where `*` stands for any run of characters,
    /// slashes included: `regcred/test`, `regcred/*` (a Harbor project or a
    /// namespace), `*`.
    pub pattern: String,
    /// `pull`, `push`, `delete`, ...; `*` is every action.
    pub actions: Vec<String>,
}

impl Grant {
    /// `actions` on the repositories matching `pattern`.
    pub fn new(pattern: &str, actions: &[&str]) -> Grant {
        Grant { pattern: pattern.to_string(), actions: actions.iter().map(|a| a.to_string()).collect() }
    }

    /// `pull` on the repositories matching `pattern`.
    pub fn pull(pattern: &str) -> Grant {
        Grant::new(pattern, &["pull"])
    }

    /// Everything, including resources that are not repositories
    /// (`registry:catalog:*`): what [`TokenService::start`] grants.
    pub fn everything() -> Grant {
        Grant::new("*", &["*"])
    }

    /// Whether `name` matches the pattern.
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.pattern.as_bytes(), name.as_bytes())
    }

    fn allows(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == "*" || a == action)
    }
}

/// Grants for everyone: every requested access.
pub fn grant_everything() -> Grants {
    Arc::new(|_: &str, _: &str| vec![Grant::everything()])
}

/// `*` matches any run of bytes; everything else matches itself.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob_match(rest, &name[i..])),
        Some((c, rest)) => name.split_first().is_some_and(|(n, name)| n == c && glob_match(rest, name)),
    }
}

/// The part of `requested` that `grants` allow: for each resource the
/// intersection of its actions with the granted ones, resources left with
/// none dropped. Only [`Grant::everything`] grants resources that are not
/// repositories (Harbor gives `registry:catalog` to system admins only;
/// Distribution's contrib token server never).
fn filter_access(requested: &[Access], grants: &[Grant]) -> Vec<Access> {
    let everything = grants.iter().any(|g| *g == Grant::everything());
    requested
        .iter()
        .filter_map(|a| {
            let actions: Vec<String> = if everything {
                a.actions.clone()
            } else if a.kind != "repository" {
                Vec::new()
            } else {
                let matching: Vec<&Grant> = grants.iter().filter(|g| g.matches(&a.name)).collect();
                a.actions.iter().filter(|act| matching.iter().any(|g| g.allows(act))).cloned().collect()
            };
            (!actions.is_empty()).then(|| Access { kind: a.kind.clone(), name: a.name.clone(), actions })
        })
        .collect()
}

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
    tls_ca_pem: Option<String>,
    state: Arc<State>,
    _server: Server,
}

struct State {
    validator: Validator,
    grants: Grants,
    key: EcdsaKeyPair,
    /// Base64 (standard) DER of the signing certificate, for `x5c`.
    cert_b64: String,
    realm: String,
    rng: SystemRandom,
    requests: AtomicUsize,
    rejected: AtomicUsize,
    /// Token requests that got less than they asked for.
    narrowed: AtomicUsize,
}

impl TokenService {
    /// Generates a signing key and certificate and starts serving on a free
    /// loopback port. Every login the validator accepts gets all it asks
    /// for.
    pub fn start(validator: Validator) -> Result<TokenService> {
        TokenService::start_with_grants(validator, grant_everything())
    }

    /// Like [`TokenService::start`], but a valid login gets only what
    /// `grants` allow it ([`filter_access`]).
    pub fn start_with_grants(validator: Validator, grants: Grants) -> Result<TokenService> {
        TokenService::start_inner(validator, grants, false)
    }

    /// Like [`TokenService::start_with_grants`], serving HTTPS with a
    /// certificate for `127.0.0.1` from a CA of its own
    /// ([`TokenService::tls_ca_pem`]): for registries whose clients send
    /// the password only to an HTTPS realm, as a real registry's token
    /// endpoint is (ACR's `https://NAME.azurecr.io/oauth2/token`).
    pub fn start_https(validator: Validator, grants: Grants) -> Result<TokenService> {
        TokenService::start_inner(validator, grants, true)
    }

    fn start_inner(validator: Validator, grants: Grants, https: bool) -> Result<TokenService> {
        let (cert_der, cert_pem, key_pkcs8) = signing_cert()?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key_pkcs8, &rng)
            .map_err(|e| anyhow!("loading the token signing key: {e}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the token service")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            validator,
            grants,
            key,
            cert_b64: STANDARD.encode(&cert_der),
            realm: format!("{}://127.0.0.1:{port}/token", if https { "https" } else { "http" }),
            rng,
            requests: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
            narrowed: AtomicUsize::new(0),
        });
        let (tls, tls_ca_pem) = match https {
            true => {
                let (config, ca) =
                    crate::standin_http::loopback_tls("regcred-test-token-service-ca", "regcred-test-token-service")?;
                (Some(Arc::new(config)), Some(ca))
            }
            false => (None, None),
        };
        let server = {
            let state = state.clone();
            Server::spawn(listener, "regcred-token-service", "regcred-token-conn", move |tcp| {
                let timeout = Duration::from_secs(10);
                let conn = match &tls {
                    Some(config) => Conn::tls(tcp, timeout, config),
                    None => Some(Conn::plain(tcp, timeout)),
                };
                if let Some(conn) = conn {
                    serve_connection(&state, conn)
                }
            })?
        };
        Ok(TokenService { root_cert_pem: cert_pem, tls_ca_pem, state, _server: server })
    }

    /// PEM of the CA of the HTTPS certificate ([`TokenService::start_https`]).
    pub fn tls_ca_pem(&self) -> Option<&str> {
        self.tls_ca_pem.as_deref()
    }

    /// `http://127.0.0.1:PORT/token` (`https://` with
    /// [`TokenService::start_https`]).
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

    /// Token requests from valid logins that were granted less than they
    /// asked for.
    pub fn narrowed(&self) -> usize {
        self.state.narrowed.load(Ordering::SeqCst)
    }
}

impl State {
    /// For a login the validator accepted: a token with the part of
    /// `requested` its grants allow, its `issued_at`, and that part.
    fn token_for_valid(&self, user: &str, pass: &str, requested: &[Access]) -> Result<(String, String, Vec<Access>)> {
        let granted = filter_access(requested, &(self.grants)(user, pass));
        if granted != requested {
            self.narrowed.fetch_add(1, Ordering::SeqCst);
        }
        issue_token(self, user, &granted).map(|(token, issued_at)| (token, issued_at, granted))
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

fn serve_connection(state: &State, conn: Conn) {
    answer_once(conn, MAX_REQUEST, |req| match req {
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
    let unauthorized = || {
        state.rejected.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::json(
            401,
            &json!({"errors": [{"code": "UNAUTHORIZED", "message": "invalid or missing credentials"}]}),
        );
        response.headers.push(("WWW-Authenticate", format!("Basic realm=\"{}\"", state.realm)));
        response
    };
    let Some((user, pass)) = credentials.filter(|(u, p)| (state.validator)(u, p)) else { return unauthorized() };
    if let Some((_, service)) = params.iter().find(|(k, _)| k == "service")
        && service != SERVICE
    {
        return Response::json(
            400,
            &json!({"errors": [{"code": "DENIED", "message": format!("unknown service {service:?}")}]}),
        );
    }
    let access = parse_scopes(params.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.as_str()));
    match state.token_for_valid(&user, &pass, &access) {
        Ok((token, issued_at, _)) => Response::json(
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

/// How a [`RegistryFront`] answers: as which registry.
#[derive(Clone, Debug)]
pub enum FrontKind {
    /// Amazon ECR: HTTP Basic on every request (`AWS` and the
    /// `GetAuthorizationToken` password), challenge
    /// `Basic realm="https://HOST/",service="ecr.amazonaws.com"` (as the
    /// challenge test in regcred's `src/verify.rs` records it), and a
    /// repository the principal may not pull answered `403` with
    /// `{"errors":[{"code":"DENIED","message":"User: PRINCIPAL is not
    /// authorized to perform: ecr:BatchGetImage on resource:
    /// arn:aws:ecr:REGION:ACCOUNT:repository/NAME because no resource-based
    /// policy allows the ecr:BatchGetImage action"}]}`: the IAM denial
    /// text (Amazon ECR user guide, "Troubleshooting Amazon ECR identity and
    /// access"; IAM user guide, "Troubleshooting access denied error
    /// messages"), on the manifest request as clients see it
    /// (`unexpected status from HEAD request to .../v2/NAME/manifests/TAG:
    /// 403 Forbidden`, the form containerd prints). Account and region come
    /// from the host the request was addressed to
    /// (`ACCOUNT.dkr.ecr.REGION.amazonaws.com`).
    Ecr {
        /// The principal the denial names, e.g.
        /// `arn:aws:iam::123456789012:user/ci`.
        principal: String,
    },
    /// Google Artifact Registry: a Bearer challenge with the realm
    /// `http://HOST/v2/token` and no `service` (as AR sends,
    /// `Bearer realm="https://LOCATION-docker.pkg.dev/v2/token"`), tokens
    /// from that realm for the `oauth2accesstoken` login, and a repository
    /// the identity may not read answered `403` with
    /// `{"errors":[{"code":"DENIED","message":"Permission
    /// \"artifactregistry.repositories.downloadArtifacts\" denied on resource
    /// \"projects/P/locations/L/repositories/R\" (or it may not exist)"}]}`,
    /// on the manifest request (kubelet events show `failed with status code
    /// [manifests TAG]: 403 Forbidden`, `docker pull` shows `denied:
    /// Permission "artifactregistry.repositories.downloadArtifacts" denied on
    /// resource ...`; Google Cloud's Artifact Registry troubleshooting docs,
    /// and e.g. googleapis/google-cloud-python issue 10663). P and R are the
    /// first two components of the repository name (`P/R/IMAGE`).
    ArtifactRegistry {
        /// The location the denial names, e.g. `europe`.
        location: String,
    },
    /// Docker Hub's pull limit: requests pass through with the client's own
    /// `Authorization` (the registry's Bearer token protocol, as
    /// registry-1.docker.io and auth.docker.io), and every manifest answer
    /// carries `ratelimit-limit: LIMIT;w=WINDOW` and `ratelimit-remaining:
    /// N;w=WINDOW`. Only manifest `GET`s count as pulls; `HEAD`s do not
    /// (docs.docker.com/docker-hub/usage/pulls/: a pull is a manifest
    /// `GET`, and "view pull rate and limit" uses `HEAD`). Past the limit a
    /// manifest `GET` is answered `429` `TOOMANYREQUESTS` ("You have reached
    /// your pull rate limit...").
    DockerHub {
        limit: u64,
        /// The window, in seconds (Docker Hub: 21600).
        window: u64,
    },
}

/// A registry front on `127.0.0.1` that answers as another registry
/// ([`FrontKind`]) and keeps the content in a real [`TokenRegistry`]
/// behind it: reads (`GET`/`HEAD` under `/v2/`) it allows are passed to
/// that registry with a token from the [`TokenService`] (whose validator
/// and grants decide, as at the token endpoint), and the registry's answer
/// is passed back. It also takes requests in absolute form
/// (`GET http://HOST/v2/... HTTP/1.1`), so that a client whose
/// `HTTP_PROXY` is [`RegistryFront::proxy_url`] reaches it under a real
/// registry's host name (`ACCOUNT.dkr.ecr.REGION.amazonaws.com`) with
/// plain HTTP. Pushes go to the registry directly.
pub struct RegistryFront {
    state: Arc<FrontState>,
    server: Server,
}

struct FrontState {
    kind: FrontKind,
    tokens: Arc<State>,
    upstream: String,
    refused: AtomicUsize,
    /// Manifest `GET`s counted as pulls ([`FrontKind::DockerHub`]).
    pulls: AtomicUsize,
}

impl RegistryFront {
    /// Starts a front for `registry`, whose tokens `tokens` issues.
    pub fn start(kind: FrontKind, tokens: &TokenService, registry: &TokenRegistry) -> Result<RegistryFront> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the registry front")?;
        let state = Arc::new(FrontState {
            kind,
            tokens: tokens.state.clone(),
            upstream: registry.host.clone(),
            refused: AtomicUsize::new(0),
            pulls: AtomicUsize::new(0),
        });
        let server = {
            let state = state.clone();
            Server::spawn(listener, "regcred-registry-front", "regcred-front-conn", move |tcp| {
                answer_once(Conn::plain(tcp, Duration::from_secs(30)), MAX_REQUEST, |req| match req {
                    Ok(req) => front_handle(&state, &req),
                    Err(e) => Response::text(400, &format!("bad request: {e:#}")),
                })
            })?
        };
        Ok(RegistryFront { state, server })
    }

    /// `127.0.0.1:PORT`: the registry host when the front is used directly.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port())
    }

    /// `http://127.0.0.1:PORT`, for `HTTP_PROXY`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// Requests refused because the login may not pull the repository.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Manifest `GET`s counted against the pull limit.
    pub fn pulls(&self) -> usize {
        self.state.pulls.load(Ordering::SeqCst)
    }
}

/// `/v2/NAME/(manifests|blobs|tags)/...` → NAME.
fn repository_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/", "/tags/"].iter().filter_map(|m| rest.find(m)).min().map(|i| &rest[..i])
}

/// The front's answer: a body only for GET (a HEAD answer has none).
fn front_error(req: &Request, status: u16, code: &str, message: &str) -> Response {
    let mut response = Response::json(status, &json!({"errors": [{"code": code, "message": message}]}));
    if req.method == "HEAD" {
        response.body.clear();
    }
    response
}

fn front_handle(state: &FrontState, req: &Request) -> Response {
    // Absolute form (through a proxy) or origin form.
    let (host, path) = match req.path.strip_prefix("http://") {
        Some(rest) => match rest.split_once('/') {
            Some((host, path)) => (host.to_string(), format!("/{path}")),
            None => (rest.to_string(), "/".to_string()),
        },
        None => (req.header("host").unwrap_or_default().to_string(), req.path.clone()),
    };
    let target = if req.query.is_empty() { path.clone() } else { format!("{path}?{}", req.query) };
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return Response::text(405, "this front only reads; push to the registry directly");
    }
    match &state.kind {
        FrontKind::Ecr { principal } => front_ecr(state, req, &host, &path, &target, principal),
        FrontKind::ArtifactRegistry { location } => front_ar(state, req, &host, &path, &target, location),
        FrontKind::DockerHub { limit, window } => front_docker_hub(state, req, &path, &target, *limit, *window),
    }
}

fn front_docker_hub(state: &FrontState, req: &Request, path: &str, target: &str, limit: u64, window: u64) -> Response {
    let manifest = path.starts_with("/v2/") && path.contains("/manifests/");
    let counted = manifest && req.method == "GET";
    if counted && state.pulls.load(Ordering::SeqCst) as u64 >= limit {
        let mut r = front_error(
            req,
            429,
            "TOOMANYREQUESTS",
            "You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: \
             https://www.docker.com/increase-rate-limit",
        );
        r.headers.push(("ratelimit-limit", format!("{limit};w={window}")));
        r.headers.push(("ratelimit-remaining", format!("0;w={window}")));
        return r;
    }
    let answer = match forward(&state.upstream, req, target, req.header("authorization")) {
        Ok(answer) => answer,
        Err(e) => return Response::text(502, &format!("registry unreachable: {e:#}")),
    };
    let ok = (200..300).contains(&answer.status);
    if counted && ok {
        state.pulls.fetch_add(1, Ordering::SeqCst);
    }
    let mut response = answer.into_response();
    if manifest {
        let remaining = limit.saturating_sub(state.pulls.load(Ordering::SeqCst) as u64);
        response.headers.push(("ratelimit-limit", format!("{limit};w={window}")));
        response.headers.push(("ratelimit-remaining", format!("{remaining};w={window}")));
    }
    response
}

fn front_ecr(state: &FrontState, req: &Request, host: &str, path: &str, target: &str, principal: &str) -> Response {
    if !path.starts_with("/v2/") {
        return Response::text(404, "not found");
    }
    let challenge = || {
        let mut r = front_error(req, 401, "UNAUTHORIZED", "authentication required");
        r.headers.push(("WWW-Authenticate", format!("Basic realm=\"https://{host}/\",service=\"ecr.amazonaws.com\"")));
        r
    };
    let Some((user, pass)) = req.basic_credentials().filter(|(u, p)| (state.tokens.validator)(u, p)) else {
        return challenge();
    };
    let repository = repository_of(path);
    let requested: Vec<Access> = repository
        .map(|name| Access { kind: "repository".into(), name: name.into(), actions: vec!["pull".into()] })
        .into_iter()
        .collect();
    let (token, _, granted) = match state.tokens.token_for_valid(&user, &pass, &requested) {
        Ok(t) => t,
        Err(e) => return Response::text(500, &format!("issuing a token: {e:#}")),
    };
    if let Some(name) = repository
        && granted.is_empty()
    {
        state.refused.fetch_add(1, Ordering::SeqCst);
        // ACCOUNT.dkr.ecr.REGION.amazonaws.com
        let labels: Vec<&str> = host.split(':').next().unwrap_or_default().split('.').collect();
        let (account, region) = match labels.as_slice() {
            [account, "dkr", ecr, region, ..] if ecr.starts_with("ecr") => (*account, *region),
            _ => ("000000000000", "us-east-1"),
        };
        let message = format!(
            "User: {principal} is not authorized to perform: ecr:BatchGetImage on resource: \
             arn:aws:ecr:{region}:{account}:repository/{name} because no resource-based policy allows the \
             ecr:BatchGetImage action"
        );
        return front_error(req, 403, "DENIED", &message);
    }
    match forward(&state.upstream, req, target, Some(&format!("Bearer {token}"))) {
        Ok(answer) => answer.into_response(),
        Err(e) => Response::text(502, &format!("registry unreachable: {e:#}")),
    }
}

fn front_ar(state: &FrontState, req: &Request, host: &str, path: &str, target: &str, location: &str) -> Response {
    if path == "/v2/token" {
        let Some((user, pass)) = req.basic_credentials().filter(|(u, p)| (state.tokens.validator)(u, p)) else {
            return front_error(req, 401, "UNAUTHORIZED", "authentication failed");
        };
        let scopes = parse_form(&req.query);
        let access = parse_scopes(scopes.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.as_str()));
        return match state.tokens.token_for_valid(&user, &pass, &access) {
            Ok((token, issued_at, _)) => {
                Response::json(200, &json!({"token": token, "expires_in": TOKEN_LIFETIME_SECS, "issued_at": issued_at}))
            }
            Err(e) => Response::text(500, &format!("issuing a token: {e:#}")),
        };
    }
    if !path.starts_with("/v2/") {
        return Response::text(404, "not found");
    }
    let answer = match forward(&state.upstream, req, target, req.header("authorization")) {
        Ok(a) => a,
        Err(e) => return Response::text(502, &format!("registry unreachable: {e:#}")),
    };
    if answer.status != 401 {
        return answer.into_response();
    }
    let upstream_challenge = answer.header("www-authenticate").unwrap_or_default().to_string();
    if upstream_challenge.contains("error=\"insufficient_scope\"")
        && let Some(name) = repository_of(path)
    {
        state.refused.fetch_add(1, Ordering::SeqCst);
        let mut parts = name.split('/');
        let (project, repository) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let message = format!(
            "Permission \"artifactregistry.repositories.downloadArtifacts\" denied on resource \
             \"projects/{project}/locations/{location}/repositories/{repository}\" (or it may not exist)"
        );
        return front_error(req, 403, "DENIED", &message);
    }
    // The registry's challenge, pointed at this front's token endpoint.
    let mut challenge = format!("Bearer realm=\"http://{host}/v2/token\"");
    if let Some(scope) = upstream_challenge.split("scope=\"").nth(1).and_then(|s| s.split('"').next()) {
        challenge.push_str(&format!(",scope=\"{scope}\""));
    }
    let mut response = answer.into_response();
    response.headers.retain(|(n, _)| *n != "WWW-Authenticate");
    response.headers.push(("WWW-Authenticate", challenge));
    response
}

/// An answer of the registry behind a front.
struct Forwarded {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Forwarded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The answer with the headers a registry client reads.
    fn into_response(self) -> Response {
        const KEPT: [&str; 5] = [
            "Content-Type",
            "Docker-Content-Digest",
            "Docker-Distribution-Api-Version",
            "WWW-Authenticate",
            "Location",
        ];
        let mut response = Response::empty(self.status);
        for name in KEPT {
            if let Some(v) = self.header(name) {
                response.headers.push((name, v.to_string()));
            }
        }
        response.body = self.body;
        response
    }
}

/// Sends `req`'s method, `target` and `Accept` header to `upstream` with
/// `authorization`, and reads the whole answer (one request per
/// connection).
fn forward(upstream: &str, req: &Request, target: &str, authorization: Option<&str>) -> Result<Forwarded> {
    use std::io::{Read, Write};
    let mut up = TcpStream::connect(upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{} {target} HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n", req.method);
    if let Some(accept) = req.header("accept") {
        head.push_str(&format!("Accept: {accept}\r\n"));
    }
    if let Some(a) = authorization {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    up.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw)?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no answer head from the registry")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status from the registry")?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked"));
    if req.method == "HEAD" {
        body.clear();
    } else if chunked {
        body = dechunk(&body).context("a malformed chunked answer from the registry")?;
    } else if let Some(len) =
        headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse().ok())
    {
        body.truncate(len);
    }
    Ok(Forwarded { status, headers, body })
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
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
    fn grants_narrow_the_requested_access() {
        let want = |k: &str, n: &str, a: &[&str]| Access {
            kind: k.into(),
            name: n.into(),
            actions: a.iter().map(|s| s.to_string()).collect(),
        };
        let requested = parse_scopes([
            "repository:regcred/test:pull,push",
            "repository:regcred:pull",
            "repository:other/app:pull",
            "registry:catalog:*",
        ]);
        assert_eq!(filter_access(&requested, &[Grant::everything()]), requested);
        assert_eq!(filter_access(&requested, &[]), vec![]);
        assert_eq!(
            filter_access(&requested, &[Grant::pull("regcred/*")]),
            vec![want("repository", "regcred/test", &["pull"])],
            "a project prefix: not the bare name, no push, no catalog"
        );
        assert_eq!(
            filter_access(
                &requested,
                &[Grant::pull("regcred/*"), Grant::new("regcred/test", &["*"]), Grant::pull("*/app")]
            ),
            vec![want("repository", "regcred/test", &["pull", "push"]), want("repository", "other/app", &["pull"])]
        );
        assert!(
            Grant::pull("*").matches("a/b/c") && Grant::pull("a*c").matches("ac") && !Grant::pull("a*c").matches("ab")
        );
        assert!(Grant::pull("p/*/x").matches("p/a/b/x") && !Grant::pull("p/*").matches("q/a"));
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk(b"4\r\nWiki\r\n6;x=y\r\npedia \r\n0\r\n\r\n").unwrap(), b"Wikipedia ");
        assert!(dechunk(b"zz\r\n").is_none());
        assert!(dechunk(b"9\r\nshort\r\n").is_none());
        assert_eq!(repository_of("/v2/a/b/manifests/latest"), Some("a/b"));
        assert_eq!(repository_of("/v2/a/blobs/sha256:1"), Some("a"));
        assert_eq!(repository_of("/v2/a/b/tags/list"), Some("a/b"));
        assert_eq!(repository_of("/v2/"), None);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
