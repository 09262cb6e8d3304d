//! Stand-ins for Google's authentication endpoints, on loopback, for the
//! `google` provider's tests. One HTTP server answers, like Google does:
//!
//! - `POST /token`: the OAuth2 token endpoint of a service-account key
//!   (`token_uri`). Only the JWT-bearer grant: the assertion must be an RS256
//!   JWT whose signature verifies with the public key of a registered key,
//!   with `iss` = the key's `client_email`, `aud` = this endpoint, a `scope`
//!   holding `cloud-platform` and a sane `iat`/`exp`. Otherwise
//!   `400 invalid_grant`. A key can be made to fail with any status.
//! - `GET /computeMetadata/v1/instance/service-accounts/default/token`: the
//!   metadata server (GKE workload identity); requires `Metadata-Flavor:
//!   Google`. Reached through `GCE_METADATA_HOST`.
//! - `POST /v1/token`: Google STS token exchange (RFC 8693). The subject
//!   token must be a JWT whose `aud` holds the registered pool provider's
//!   token audience and which has not expired; its signature is not checked
//!   (the Kubernetes apiserver signs it). The federated principal is
//!   `principal://iam.googleapis.com/<pool>/subject/<sub>`.
//! - `POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`: IAM
//!   Credentials. The bearer token must be valid now and its principal
//!   allowed to impersonate EMAIL, else `403 PERMISSION_DENIED`.
//!
//! Every issued access token is remembered with its principal and expiry,
//! so a registry token service can accept exactly the tokens that are valid
//! now ([`GoogleStandIn::principal_of`]). Every secret the stand-in sees or
//! issues (keys, assertions, subject tokens, access tokens) is recorded for
//! the leak check ([`crate::operator::record_secret`]).

use std::collections::{HashMap, HashSet};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use serde_json::{Value, json};

use crate::operator::record_secret;
use crate::registry::require_tool;
use crate::standin_http::{Conn, Request, Response, Server, answer_once};

/// The scope every request must ask for.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
const MAX_REQUEST: usize = 256 * 1024;

/// The endpoints, for call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /token` (JWT-bearer grant).
    Token,
    /// The metadata server's token.
    Metadata,
    /// `POST /v1/token` (STS).
    Sts,
    /// `generateAccessToken`.
    GenerateAccessToken,
}

/// A generated service-account key.
pub struct GeneratedKey {
    pub client_email: String,
    /// The key file, as Google's console writes it (`credentials.json`).
    pub json: String,
    /// DER `RSAPublicKey` (PKCS#1) of the key.
    pub public_key_der: Vec<u8>,
}

/// A subject token the STS stand-in accepted.
#[derive(Clone, Debug)]
pub struct Subject {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    /// The pool provider (`audience` of the exchange).
    pub pool_provider: String,
}

/// Generates a 2048-bit RSA service-account key with `openssl` (whose
/// absence fails with how to install it), in Google's key file format with
/// `token_uri`.
pub fn generate_key(client_email: &str, token_uri: &str) -> Result<GeneratedKey> {
    let openssl = require_tool("openssl", "openssl")?;
    let out = Command::new(openssl)
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .context("running openssl genpkey")?;
    if !out.status.success() {
        bail!("openssl genpkey failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let pem = String::from_utf8(out.stdout).context("openssl wrote no text")?;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    for line in pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 8) {
        record_secret(line);
    }
    let der = STANDARD.decode(body).context("decoding the generated key")?;
    let key = RsaKeyPair::from_pkcs8(&der).map_err(|e| anyhow!("the generated key is not PKCS#8 RSA: {e}"))?;
    let mut id = [0u8; 20];
    SystemRandom::new().fill(&mut id).map_err(|_| anyhow!("no randomness"))?;
    let json = json!({
        "type": "service_account",
        "project_id": "regcred-test",
        "private_key_id": hex(&id),
        "private_key": pem,
        "client_email": client_email,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    });
    Ok(GeneratedKey {
        client_email: client_email.to_string(),
        json: serde_json::to_string_pretty(&json)?,
        public_key_der: key.public().as_ref().to_vec(),
    })
}

/// Verifies an RS256 JWT with a DER `RSAPublicKey` and returns its claims.
pub fn verify_rs256(jwt: &str, public_key_der: &[u8]) -> Result<Value> {
    let (header, claims, signing_input, signature) = split_jwt(jwt)?;
    if header["alg"] != "RS256" {
        bail!("alg is {}, not RS256", header["alg"]);
    }
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key_der)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| anyhow!("the RS256 signature does not verify with the key"))?;
    Ok(claims)
}

/// Header, claims, signing input and signature of a JWT, unverified.
fn split_jwt(jwt: &str) -> Result<(Value, Value, String, Vec<u8>)> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, s] = parts[..] else { bail!("not a JWT (expected three parts, got {})", parts.len()) };
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).context("not base64url");
    let header: Value = serde_json::from_slice(&decode(h)?).context("header is not JSON")?;
    let claims: Value = serde_json::from_slice(&decode(c)?).context("claims are not JSON")?;
    Ok((header, claims, format!("{h}.{c}"), decode(s)?))
}

/// The federated principal STS issues tokens for.
pub fn federated_principal(pool_provider: &str, sub: &str) -> String {
    let pool = pool_provider.trim_start_matches("//iam.googleapis.com/");
    let pool = pool.split("/providers/").next().unwrap_or(pool);
    format!("principal://iam.googleapis.com/{pool}/subject/{sub}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil from days (Howard Hinnant).
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

struct KeyEntry {
    public_key_der: Vec<u8>,
    lifetime: Duration,
    fail_with: Option<u16>,
}

struct Issued {
    principal: String,
    expires: Instant,
    by: Endpoint,
}

#[derive(Default)]
struct Inner {
    keys: HashMap<String, KeyEntry>,
    metadata: Option<(String, Duration)>,
    /// Pool provider audience -> (token audience, lifetime).
    pools: HashMap<String, (String, Duration)>,
    /// Target email -> (allowed source principals, lifetime).
    impersonation: HashMap<String, (HashSet<String>, Duration)>,
    tokens: HashMap<String, Issued>,
    calls: HashMap<Endpoint, usize>,
    token_calls: HashMap<String, usize>,
    grants: HashMap<String, usize>,
    subjects: Vec<Subject>,
    refusals: Vec<String>,
    /// Other URLs accepted as the `aud` of a key's assertion (a proxy in
    /// front of the token endpoint).
    token_uri_aliases: HashSet<String>,
}

struct State {
    base: String,
    rng: SystemRandom,
    inner: Mutex<Inner>,
}

/// The running stand-in. Dropping it stops the listener.
pub struct GoogleStandIn {
    state: Arc<State>,
    server: Server,
}

impl GoogleStandIn {
    /// Starts serving on a free loopback port, from its own threads.
    pub fn start() -> Result<GoogleStandIn> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the Google stand-in")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            base: format!("http://127.0.0.1:{port}"),
            rng: SystemRandom::new(),
            inner: Mutex::default(),
        });
        let server = {
            let state = state.clone();
            Server::spawn(listener, "google-standin", "google-standin-conn", move |tcp| serve_connection(&state, tcp))?
        };
        Ok(GoogleStandIn { state, server })
    }

    /// `http://127.0.0.1:PORT`: also the IAM Credentials endpoint.
    pub fn base_url(&self) -> String {
        self.state.base.clone()
    }

    /// The OAuth2 token endpoint (`token_uri` of generated keys).
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.state.base)
    }

    /// The STS token endpoint.
    pub fn sts_url(&self) -> String {
        format!("{}/v1/token", self.state.base)
    }

    /// `generateAccessToken` URL for `email`.
    pub fn generate_access_token_url(&self, email: &str) -> String {
        format!("{}/v1/projects/-/serviceAccounts/{email}:generateAccessToken", self.state.base)
    }

    /// `127.0.0.1:PORT`, the value of `GCE_METADATA_HOST`.
    pub fn metadata_host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port())
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().expect("not poisoned")
    }

    /// Generates a key whose `token_uri` is this stand-in and registers it:
    /// its tokens live `lifetime`.
    pub fn create_key(&self, client_email: &str, lifetime: Duration) -> Result<GeneratedKey> {
        let key = generate_key(client_email, &self.token_uri())?;
        self.inner().keys.insert(
            client_email.to_string(),
            KeyEntry { public_key_der: key.public_key_der.clone(), lifetime, fail_with: None },
        );
        Ok(key)
    }

    /// Also accepts `uri` as the `aud` of assertions: a key whose
    /// `token_uri` is a proxy in front of this stand-in's token endpoint.
    pub fn accept_token_uri(&self, uri: &str) {
        self.inner().token_uri_aliases.insert(uri.to_string());
    }

    /// Makes the token endpoint answer `status` to grants of `client_email`
    /// (`None`: answer normally again).
    pub fn fail_token_endpoint(&self, client_email: &str, status: Option<u16>) {
        if let Some(k) = self.inner().keys.get_mut(client_email) {
            k.fail_with = status;
        }
    }

    /// The metadata server's identity and the lifetime of its tokens.
    pub fn set_metadata_identity(&self, email: &str, lifetime: Duration) {
        self.inner().metadata = Some((email.to_string(), lifetime));
    }

    /// A workload identity pool provider (`audience` of the exchange) that
    /// accepts subject tokens whose `aud` holds `token_audience`.
    pub fn add_pool_provider(&self, pool_provider: &str, token_audience: &str, lifetime: Duration) {
        self.inner().pools.insert(pool_provider.to_string(), (token_audience.to_string(), lifetime));
    }

    /// Lets `source_principal` (an email or a federated principal) get tokens
    /// for `target_email`, living `lifetime`.
    pub fn allow_impersonation(&self, source_principal: &str, target_email: &str, lifetime: Duration) {
        let mut inner = self.inner();
        let entry = inner.impersonation.entry(target_email.to_string()).or_insert_with(|| (HashSet::new(), lifetime));
        entry.0.insert(source_principal.to_string());
        entry.1 = lifetime;
    }

    /// Requests served by an endpoint, whatever the outcome.
    pub fn calls(&self, endpoint: Endpoint) -> usize {
        self.inner().calls.get(&endpoint).copied().unwrap_or(0)
    }

    /// Token endpoint requests whose assertion named `client_email`, whatever
    /// the outcome.
    pub fn token_calls(&self, client_email: &str) -> usize {
        self.inner().token_calls.get(client_email).copied().unwrap_or(0)
    }

    /// Access tokens issued for `client_email` after a verified assertion.
    pub fn grants(&self, client_email: &str) -> usize {
        self.inner().grants.get(client_email).copied().unwrap_or(0)
    }

    /// The principal of `token` if the stand-in issued it and it has not
    /// expired.
    pub fn principal_of(&self, token: &str) -> Option<String> {
        let inner = self.inner();
        inner.tokens.get(token).filter(|t| t.expires > Instant::now()).map(|t| t.principal.clone())
    }

    /// The principal and endpoint of a token the stand-in issued, expired
    /// or not.
    pub fn issued(&self, token: &str) -> Option<(String, Endpoint)> {
        self.inner().tokens.get(token).map(|t| (t.principal.clone(), t.by))
    }

    /// Subject tokens STS accepted.
    pub fn subjects(&self) -> Vec<Subject> {
        self.inner().subjects.clone()
    }

    /// Why requests were refused, newest last.
    pub fn refusals(&self) -> Vec<String> {
        self.inner().refusals.clone()
    }
}

fn serve_connection(state: &State, tcp: TcpStream) {
    answer_once(Conn::plain(tcp, Duration::from_secs(10)), MAX_REQUEST, |req| {
        let (status, body) = match req {
            Ok(req) => handle(state, &req),
            Err(e) => (400, json!({"error": "invalid_request", "error_description": format!("{e:#}")})),
        };
        let mut response = Response::json(status, &body);
        response.headers.push(("Metadata-Flavor", "Google".into()));
        response
    });
}

/// An OAuth2 error answer, remembered in `refusals`.
fn oauth_error(inner: &mut Inner, status: u16, code: &str, description: String) -> (u16, Value) {
    inner.refusals.push(format!("{status} {code}: {description}"));
    (status, json!({"error": code, "error_description": description}))
}

/// A Google API error answer, remembered in `refusals`.
fn api_error(inner: &mut Inner, status: u16, code: &str, message: String) -> (u16, Value) {
    inner.refusals.push(format!("{status} {code}: {message}"));
    (status, json!({"error": {"code": status, "message": message, "status": code}}))
}

fn handle(state: &State, req: &Request) -> (u16, Value) {
    let mut inner = state.inner.lock().expect("not poisoned");
    let inner = &mut *inner;
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/token") => {
            *inner.calls.entry(Endpoint::Token).or_default() += 1;
            token_endpoint(state, inner, req)
        }
        ("GET", METADATA_TOKEN_PATH) => {
            *inner.calls.entry(Endpoint::Metadata).or_default() += 1;
            if req.header("metadata-flavor") != Some("Google") {
                return api_error(inner, 403, "FORBIDDEN", "Missing Metadata-Flavor: Google header".into());
            }
            let Some((email, lifetime)) = inner.metadata.clone() else {
                return api_error(inner, 404, "NOT_FOUND", "no service account on this instance".into());
            };
            let token = issue(state, inner, &email, lifetime, Endpoint::Metadata);
            (200, json!({"access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer"}))
        }
        ("POST", "/v1/token") => {
            *inner.calls.entry(Endpoint::Sts).or_default() += 1;
            sts(state, inner, req)
        }
        ("POST", path)
            if path.starts_with("/v1/projects/-/serviceAccounts/") && path.ends_with(":generateAccessToken") =>
        {
            *inner.calls.entry(Endpoint::GenerateAccessToken).or_default() += 1;
            let target = path
                .trim_start_matches("/v1/projects/-/serviceAccounts/")
                .trim_end_matches(":generateAccessToken")
                .to_string();
            generate_access_token(state, inner, req, &target)
        }
        _ => api_error(inner, 404, "NOT_FOUND", format!("{} {} is not served here", req.method, req.path)),
    }
}

fn issue(state: &State, inner: &mut Inner, principal: &str, lifetime: Duration, by: Endpoint) -> String {
    let mut bytes = [0u8; 24];
    state.rng.fill(&mut bytes).expect("randomness");
    let token = format!("ya29.standin-{}", hex(&bytes));
    record_secret(&token);
    inner
        .tokens
        .insert(token.clone(), Issued { principal: principal.to_string(), expires: Instant::now() + lifetime, by });
    token
}

fn token_endpoint(state: &State, inner: &mut Inner, req: &Request) -> (u16, Value) {
    let form = req.body_form();
    if form.get("grant_type").map(String::as_str) != Some(JWT_BEARER) {
        let got = form.get("grant_type").cloned().unwrap_or_default();
        return oauth_error(inner, 400, "unsupported_grant_type", format!("grant_type {got:?}; only {JWT_BEARER}"));
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error(inner, 400, "invalid_request", "no assertion".into());
    };
    record_secret(assertion);
    let claims = match split_jwt(assertion) {
        Ok((_, claims, _, _)) => claims,
        Err(e) => return oauth_error(inner, 400, "invalid_grant", format!("the assertion is {e:#}")),
    };
    let iss = claims["iss"].as_str().unwrap_or_default().to_string();
    *inner.token_calls.entry(iss.clone()).or_default() += 1;
    let Some(key) = inner.keys.get(&iss) else {
        return oauth_error(inner, 400, "invalid_grant", format!("unknown or deleted key for iss {iss:?}"));
    };
    if let Some(status) = key.fail_with {
        return api_error(inner, status, "INTERNAL", "the stand-in was told to fail".into());
    }
    let lifetime = key.lifetime;
    let claims = match verify_rs256(assertion, &key.public_key_der.clone()) {
        Ok(c) => c,
        Err(e) => return oauth_error(inner, 400, "invalid_grant", format!("Invalid JWT Signature ({e:#})")),
    };
    let token_uri = format!("{}/token", state.base);
    let now = unix_now();
    let scope = claims["scope"].as_str().unwrap_or_default();
    let (iat, exp) = (claims["iat"].as_i64().unwrap_or(0), claims["exp"].as_i64().unwrap_or(0));
    let aliased = claims["aud"].as_str().is_some_and(|a| inner.token_uri_aliases.contains(a));
    let problem = if claims["aud"] != token_uri.as_str() && !aliased {
        Some(format!("aud is {}, not {token_uri}", claims["aud"]))
    } else if !scope.split_whitespace().any(|s| s == CLOUD_PLATFORM) {
        Some(format!("scope {scope:?} lacks {CLOUD_PLATFORM}"))
    } else if iat > now + 60 || exp <= now || exp - iat > 3600 {
        Some(format!("Invalid JWT: iat {iat} / exp {exp} not valid at {now}"))
    } else if claims.get("target_audience").is_some() {
        Some("an ID token was asked for, not an access token".into())
    } else {
        None
    };
    if let Some(problem) = problem {
        return oauth_error(inner, 400, "invalid_grant", problem);
    }
    *inner.grants.entry(iss.clone()).or_default() += 1;
    let token = issue(state, inner, &iss, lifetime, Endpoint::Token);
    (200, json!({"access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer"}))
}

fn sts(state: &State, inner: &mut Inner, req: &Request) -> (u16, Value) {
    let form = req.body_form();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if get("grant_type") != TOKEN_EXCHANGE {
        return oauth_error(inner, 400, "unsupported_grant_type", format!("grant_type {:?}", get("grant_type")));
    }
    if get("requested_token_type") != ACCESS_TOKEN_TYPE {
        return oauth_error(inner, 400, "invalid_request", "requested_token_type must be access_token".into());
    }
    if !get("scope").split_whitespace().any(|s| s == CLOUD_PLATFORM) {
        return oauth_error(inner, 400, "invalid_scope", format!("scope {:?} lacks {CLOUD_PLATFORM}", get("scope")));
    }
    let subject_type = get("subject_token_type");
    if !matches!(subject_type, "urn:ietf:params:oauth:token-type:jwt" | "urn:ietf:params:oauth:token-type:id_token") {
        return oauth_error(inner, 400, "invalid_request", format!("subject_token_type {subject_type:?}"));
    }
    let pool_provider = get("audience").to_string();
    let Some((token_audience, lifetime)) = inner.pools.get(&pool_provider).cloned() else {
        return oauth_error(inner, 400, "invalid_target", format!("unknown pool provider {pool_provider:?}"));
    };
    let subject_token = get("subject_token");
    if subject_token.is_empty() {
        return oauth_error(inner, 400, "invalid_request", "no subject_token".into());
    }
    record_secret(subject_token);
    let claims = match split_jwt(subject_token) {
        Ok((_, claims, _, _)) => claims,
        Err(e) => return oauth_error(inner, 400, "invalid_grant", format!("the subject token is {e:#}")),
    };
    let aud: Vec<String> = match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    };
    if !aud.contains(&token_audience) {
        return oauth_error(
            inner,
            400,
            "invalid_grant",
            format!("The audience {aud:?} does not match {token_audience}"),
        );
    }
    if claims["exp"].as_i64().unwrap_or(0) <= unix_now() {
        return oauth_error(inner, 400, "invalid_grant", "the subject token has expired".into());
    }
    let sub = claims["sub"].as_str().unwrap_or_default().to_string();
    let iss = claims["iss"].as_str().unwrap_or_default().to_string();
    inner.subjects.push(Subject { iss, sub: sub.clone(), aud, pool_provider: pool_provider.clone() });
    let principal = federated_principal(&pool_provider, &sub);
    let token = issue(state, inner, &principal, lifetime, Endpoint::Sts);
    (
        200,
        json!({"access_token": token, "issued_token_type": ACCESS_TOKEN_TYPE, "token_type": "Bearer", "expires_in": lifetime.as_secs()}),
    )
}

fn generate_access_token(state: &State, inner: &mut Inner, req: &Request, target: &str) -> (u16, Value) {
    let bearer = req.header("authorization").and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
    let source = inner.tokens.get(bearer).filter(|t| t.expires > Instant::now()).map(|t| t.principal.clone());
    let Some(source) = source else {
        return api_error(inner, 401, "UNAUTHENTICATED", "Request had invalid authentication credentials.".into());
    };
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let scopes: Vec<&str> = body["scope"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !scopes.contains(&CLOUD_PLATFORM) {
        return api_error(inner, 400, "INVALID_ARGUMENT", format!("scope {scopes:?} lacks {CLOUD_PLATFORM}"));
    }
    let requested = body["lifetime"]
        .as_str()
        .and_then(|l| l.strip_suffix('s'))
        .and_then(|l| l.parse::<f64>().ok())
        .filter(|l| *l > 0.0 && *l <= 43_200.0);
    let Some(requested) = requested else {
        return api_error(inner, 400, "INVALID_ARGUMENT", format!("lifetime {} is not valid", body["lifetime"]));
    };
    let allowed = inner.impersonation.get(target).filter(|(sources, _)| sources.contains(&source)).map(|(_, l)| *l);
    let Some(lifetime) = allowed else {
        return api_error(
            inner,
            403,
            "PERMISSION_DENIED",
            format!(
                "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist): {source} may not impersonate {target}"
            ),
        );
    };
    let lifetime = lifetime.min(Duration::from_secs_f64(requested));
    let token = issue(state, inner, target, lifetime, Endpoint::GenerateAccessToken);
    let expire = unix_now() + lifetime.as_secs() as i64;
    (200, json!({"accessToken": token, "expireTime": rfc3339(expire)}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_and_dates() {
        assert_eq!(
            federated_principal(
                "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s",
                "system:serviceaccount:ns:sa"
            ),
            "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/subject/system:serviceaccount:ns:sa"
        );
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
