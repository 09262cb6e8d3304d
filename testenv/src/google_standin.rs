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
//! - `POST /v1/token`: Google STS token exchange (RFC 8693) for OIDC
//!   workload identity pool providers ([`OidcPoolProvider`]), checked as
//!   Google checks them: the subject token's `iss` is the provider's issuer
//!   URI, its signature verifies with a key of the provider's uploaded JWK
//!   Set (`oidc.jwksJson`), its `aud` is an allowed audience, `iat`/`exp`
//!   hold, `google.subject` (= `assertion.sub`) fits in 127 bytes and the
//!   attribute condition admits it; refusals carry Google's `error` codes
//!   and `error_description` texts. The federated principal is
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

use crate::ControlPlane;
use crate::oidc::{self, Jwk, parse_jwks};
pub use crate::oidc::{ClusterOidc, JwtSigner, fetch_cluster_oidc};
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

/// An attribute condition of a pool provider (`--attribute-condition`, a
/// CEL expression over the token's claims, `assertion`), of the forms this
/// stand-in evaluates. A token it does not admit is refused: "The given
/// credential is rejected by the attribute condition."
#[derive(Clone, Debug)]
pub enum AttributeCondition {
    /// `assertion.sub in ['a', 'b']`.
    SubjectIn(Vec<String>),
    /// `assertion.sub.startsWith('p') || ...`, e.g. one namespace's
    /// ServiceAccounts: `system:serviceaccount:<ns>:`.
    SubjectStartsWith(Vec<String>),
}

impl AttributeCondition {
    /// Whether the condition holds for a token with this `sub` (a CEL
    /// expression over a missing claim is an error, which refuses).
    fn admits(&self, sub: Option<&str>) -> bool {
        let Some(sub) = sub else { return false };
        match self {
            AttributeCondition::SubjectIn(subjects) => subjects.iter().any(|s| s == sub),
            AttributeCondition::SubjectStartsWith(prefixes) => prefixes.iter().any(|p| sub.starts_with(p.as_str())),
        }
    }

    /// The CEL expression, as `gcloud` would be given it.
    pub fn cel(&self) -> String {
        let quote = |s: &String| format!("'{s}'");
        match self {
            AttributeCondition::SubjectIn(s) => {
                format!("assertion.sub in [{}]", s.iter().map(quote).collect::<Vec<_>>().join(", "))
            }
            AttributeCondition::SubjectStartsWith(p) => {
                p.iter().map(|p| format!("assertion.sub.startsWith({})", quote(p))).collect::<Vec<_>>().join(" || ")
            }
        }
    }
}

/// An OIDC workload identity pool provider, as
/// `gcloud iam workload-identity-pools providers create-oidc` configures one
/// for a cluster whose issuer is not reachable from Google
/// (https://cloud.google.com/iam/docs/workload-identity-federation-with-kubernetes:
/// `--issuer-uri`, `--jwk-json-path` with the cluster's JWK Set,
/// `--attribute-mapping=google.subject=assertion.sub`).
#[derive(Clone, Debug)]
pub struct OidcPoolProvider {
    /// `oidc.issuerUri`: the `iss` its tokens must carry.
    pub issuer_uri: String,
    /// `oidc.jwksJson`: the keys their signatures must verify with.
    pub jwks_json: Value,
    /// `oidc.allowedAudiences`; empty: Google's default, the provider's
    /// resource name with or without the `https:` prefix.
    pub allowed_audiences: Vec<String>,
    /// `attributeCondition`; `None`: every token of the issuer.
    pub attribute_condition: Option<AttributeCondition>,
    /// Lifetime of the federated access tokens it issues.
    pub lifetime: Duration,
}

impl OidcPoolProvider {
    /// A provider for the control plane's ServiceAccount token issuer: its
    /// issuer URI and JWK Set as kube-apiserver publishes them, read with
    /// the admin client ([`fetch_cluster_oidc`]); default audiences, no
    /// condition.
    pub fn for_cluster(cp: &ControlPlane, lifetime: Duration) -> Result<OidcPoolProvider> {
        let ClusterOidc { issuer, jwks } = fetch_cluster_oidc(cp)?;
        Ok(OidcPoolProvider {
            issuer_uri: issuer,
            jwks_json: jwks,
            allowed_audiences: Vec::new(),
            attribute_condition: None,
            lifetime,
        })
    }

    /// The same provider with an attribute condition.
    pub fn with_condition(mut self, condition: AttributeCondition) -> OidcPoolProvider {
        self.attribute_condition = Some(condition);
        self
    }
}

/// A registered pool provider, its keys parsed.
struct Pool {
    issuer: String,
    keys: Vec<Jwk>,
    allowed_audiences: Vec<String>,
    condition: Option<AttributeCondition>,
    lifetime: Duration,
}

/// The clock skew STS tolerates on `exp` and `iat`: about a minute either
/// way. No Google page states it; a user's published measurements against
/// sts.googleapis.com (Sep 2026) found an `exp` 59 s past accepted and 61 s
/// past refused, an `iat` 60 s ahead accepted and 119 s ahead refused.
const STS_SKEW_SECS: i64 = 60;

/// The longest `google.subject` Google maps, in bytes.
const MAX_SUBJECT_BYTES: usize = 127;

/// Why STS refuses a subject token: status, OAuth2 `error`,
/// `error_description`.
type Refusal = (u16, &'static str, String);

/// The checks Google STS makes on the subject token of an exchange at
/// `pool_provider`, at `now` (Unix seconds). Returns the token's `sub`
/// (`google.subject`). The texts are Google's, each cited below; the order
/// of the checks is the stand-in's (Google's is not documented, and only
/// matters for a token wrong in several ways).
fn check_subject_token(pool_provider: &str, pool: &Pool, token: &str, now: i64) -> Result<String, Refusal> {
    let grant = |d: String| (400, "invalid_grant", d);
    // Not a JWT: the text of Google's OIDC token verifier (Identity
    // Platform's `signInWithIdp` answers "Unable to parse the ID Token.");
    // STS's own text for this case has not been seen.
    let Some(jwt) = oidc::split_jwt(token) else {
        return Err(grant("Unable to parse the ID Token.".into()));
    };
    let claims = &jwt.claims;
    // `iss` must be the provider's `issuerUri`: "The issuer in ID Token
    // <iss> does not match the expected one in config: <issuerUri>"
    // (invalid_grant; older answers read "... the expected ones: <uri>",
    // google-github-actions/auth docs/TROUBLESHOOTING.md, "Issuer in ID
    // Token does not match the expected ones"). A missing `iss` prints as
    // `null`. The IAM reference of `Oidc.issuerUri` (https://cloud.google.com/iam/docs/reference/rest/v1/projects.locations.workloadIdentityPools.providers#oidc)
    // says it is compared with the token's `iss`.
    let iss = claims.get("iss").and_then(Value::as_str);
    if iss != Some(pool.issuer.as_str()) {
        return Err(grant(format!(
            "The issuer in ID Token {} does not match the expected one in config: {}",
            iss.unwrap_or("null"),
            pool.issuer
        )));
    }
    // The signature, by a key of the uploaded JWK Set. A `kid` the set
    // does not hold makes Google look the keys up at the issuer, which
    // fails for an issuer it cannot reach: "Error connecting to the given
    // credential's issuer." (invalid_grant; Troubleshoot Workload Identity
    // Federation, https://cloud.google.com/iam/docs/troubleshooting-workload-identity-federation).
    // A listed `kid` whose key does not verify: "Unable to verify the ID
    // Token signature." (invalid_grant, in the same published measurements
    // as the skew above; Identity Platform's verifier gives the same text).
    // Google accepts RS256 and ES256 tokens (RSA and EC P-256 keys).
    let alg = jwt.header.get("alg").and_then(Value::as_str).unwrap_or_default();
    let candidates: Vec<&Jwk> = match jwt.header.get("kid").and_then(Value::as_str) {
        Some(kid) => pool.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
        None => pool.keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err(grant("Error connecting to the given credential's issuer.".into()));
    }
    if !candidates.iter().any(|k| k.verifies(alg, jwt.signing_input.as_bytes(), &jwt.signature)) {
        return Err(grant("Unable to verify the ID Token signature.".into()));
    }
    // `aud` must be an allowed audience; with none configured, the
    // provider's resource name with or without `https:` (IAM reference,
    // `Oidc.allowedAudiences`). Otherwise "The audience in ID Token [<aud>]
    // does not match the expected audience." (invalid_grant; the older
    // "The audience in JWT does not match the expected values.",
    // google-github-actions/auth issue #29).
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let default_audiences = [pool_provider.to_string(), format!("https:{pool_provider}")];
    let allowed: &[String] =
        if pool.allowed_audiences.is_empty() { &default_audiences } else { &pool.allowed_audiences };
    if !audiences.iter().any(|a| allowed.iter().any(|x| x == a)) {
        return Err(grant(format!(
            "The audience in ID Token [{}] does not match the expected audience.",
            audiences.join(", ")
        )));
    }
    // `iat` and `exp`, with about a minute of skew: a missing `iat`, a
    // missing or past `exp`, and an `iat` in the future all read "ID Token
    // issued at <iat> is stale to sign-in." (invalid_grant; Config Sync
    // known issues, https://cloud.google.com/kubernetes-engine/config-sync/docs/how-to/known-issues,
    // "Unable to generate access token for OCI source", quotes it for an
    // expired federated token; Identity Platform gives the same text for a
    // future `iat`).
    let iat = claims.get("iat").and_then(Value::as_i64);
    let exp = claims.get("exp").and_then(Value::as_i64);
    let stale = match (iat, exp) {
        (Some(iat), Some(exp)) => exp < now - STS_SKEW_SECS || iat > now + STS_SKEW_SECS,
        _ => true,
    };
    if stale {
        let iat = iat.map_or_else(|| "null".to_string(), |i| i.to_string());
        return Err(grant(format!("ID Token issued at {iat} is stale to sign-in.")));
    }
    // The attribute mapping `google.subject=assertion.sub`: at most 127
    // bytes, else invalid_request "The size of mapped attribute
    // google.subject exceeds the 127 bytes limit. ..." (Troubleshoot
    // Workload Identity Federation, "Mapped google.subject claim exceeds
    // the 127 bytes limit"). A Kubernetes `sub` can be longer: a 63-byte
    // namespace and a 253-byte ServiceAccount name.
    let sub = claims.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty());
    if sub.is_some_and(|s| s.len() > MAX_SUBJECT_BYTES) {
        return Err((
            400,
            "invalid_request",
            "The size of mapped attribute google.subject exceeds the 127 bytes limit. Either modify your attribute mapping or the incoming assertion to produce a mapped attribute that is less than 127 bytes.".into(),
        ));
    }
    // The attribute condition: unauthorized_client, "The given credential
    // is rejected by the attribute condition." (the answer users of
    // sts.googleapis.com quote; google-github-actions/auth
    // docs/TROUBLESHOOTING.md: a failed federated token "means admission
    // into the Workload Identity Pool failed. Check your Attribute
    // Conditions").
    if pool.condition.as_ref().is_some_and(|c| !c.admits(sub)) {
        return Err((
            400,
            "unauthorized_client",
            "The given credential is rejected by the attribute condition.".into(),
        ));
    }
    // No subject to map: refused (the stand-in's text; Google's for a
    // provider without a condition has not been seen).
    let Some(sub) = sub else {
        return Err(grant("The ID Token has no sub claim to map to google.subject.".into()));
    };
    Ok(sub.to_string())
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

/// Whether `name` has the shape of a pool provider's full resource name.
fn is_provider_name(name: &str) -> bool {
    name.strip_prefix("//iam.googleapis.com/projects/")
        .and_then(|rest| rest.split_once("/locations/"))
        .and_then(|(_, rest)| rest.split_once("/workloadIdentityPools/"))
        .and_then(|(_, rest)| rest.split_once("/providers/"))
        .is_some_and(|(pool, provider)| !pool.is_empty() && !provider.is_empty() && !provider.contains('/'))
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
    /// Pool provider resource name -> provider.
    pools: HashMap<String, Pool>,
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

    /// Registers an OIDC workload identity pool provider named
    /// `pool_provider` (`//iam.googleapis.com/projects/<number>/locations/
    /// global/workloadIdentityPools/<pool>/providers/<provider>`, the
    /// `audience` of exchanges), replacing one of that name. Refused as
    /// `create-oidc` refuses it: an issuer URI that is not `https`, a JWK
    /// Set without a usable key or with a key that is neither RSA nor EC
    /// P-256 (Google answers "Invalid JWKs ... Only RSA, EC key types are
    /// supported." for P-384).
    pub fn add_oidc_pool_provider(&self, pool_provider: &str, provider: OidcPoolProvider) -> Result<()> {
        if !is_provider_name(pool_provider) {
            bail!("{pool_provider} is not a workload identity pool provider's full resource name");
        }
        if !provider.issuer_uri.starts_with("https://") {
            bail!("Invalid OIDC issuer URI. The scheme must be https.");
        }
        let keys = parse_jwks(&provider.jwks_json).context("Invalid JWKs")?;
        if keys.is_empty() {
            bail!("Invalid JWKs: no signing key");
        }
        let pool = Pool {
            issuer: provider.issuer_uri,
            keys,
            allowed_audiences: provider.allowed_audiences,
            condition: provider.attribute_condition,
            lifetime: provider.lifetime,
        };
        self.inner().pools.insert(pool_provider.to_string(), pool);
        Ok(())
    }

    /// Registers `pool_provider` for the control plane's ServiceAccount
    /// tokens ([`OidcPoolProvider::for_cluster`]): default audiences, no
    /// attribute condition. Returns the issuer.
    pub fn add_pool_provider_for_cluster(
        &self,
        pool_provider: &str,
        lifetime: Duration,
        cp: &ControlPlane,
    ) -> Result<String> {
        let provider = OidcPoolProvider::for_cluster(cp, lifetime)?;
        let issuer = provider.issuer_uri.clone();
        self.add_oidc_pool_provider(pool_provider, provider)?;
        Ok(issuer)
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
    // The `audience` parameter names the provider: "Invalid value for
    // \"audience\". ..." (invalid_request) when it is not a provider's
    // full resource name, "The target service indicated by the
    // \"audience\" parameters is invalid. ..." (invalid_target) when no
    // such provider is enabled (google-github-actions/auth issues #60 and
    // #161 quote both answers).
    let pool_provider = get("audience").to_string();
    if !is_provider_name(&pool_provider) {
        return oauth_error(
            inner,
            400,
            "invalid_request",
            "Invalid value for \"audience\". This value should be the full resource name of the Identity Provider. See https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token for the list of possible formats.".into(),
        );
    }
    if !inner.pools.contains_key(&pool_provider) {
        return oauth_error(
            inner,
            400,
            "invalid_target",
            "The target service indicated by the \"audience\" parameters is invalid. This might either be because the pool or provider is disabled or deleted or because it doesn't exist.".into(),
        );
    }
    let subject_token = get("subject_token");
    if subject_token.is_empty() {
        return oauth_error(inner, 400, "invalid_request", "no subject_token".into());
    }
    record_secret(subject_token);
    let pool = &inner.pools[&pool_provider];
    let (lifetime, issuer) = (pool.lifetime, pool.issuer.clone());
    let sub = match check_subject_token(&pool_provider, pool, subject_token, unix_now()) {
        Ok(sub) => sub,
        Err((status, code, description)) => return oauth_error(inner, status, code, description),
    };
    let aud = match oidc::split_jwt(subject_token).map(|j| j.claims["aud"].clone()) {
        Some(Value::String(a)) => vec![a],
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    };
    inner.subjects.push(Subject { iss: issuer, sub: sub.clone(), aud, pool_provider: pool_provider.clone() });
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

    const PROVIDER: &str = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s";
    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
    const NOW: i64 = 1_800_000_000;

    fn pool(signer: &JwtSigner, condition: Option<AttributeCondition>) -> Pool {
        Pool {
            issuer: ISSUER.into(),
            keys: parse_jwks(&signer.jwks()).unwrap(),
            allowed_audiences: Vec::new(),
            condition,
            lifetime: Duration::from_secs(3600),
        }
    }

    fn claims(sub: &str) -> Value {
        json!({"iss": ISSUER, "sub": sub, "aud": [format!("https:{PROVIDER}")], "iat": NOW - 10, "exp": NOW + 590})
    }

    fn refusal(code: &'static str, description: &str) -> Result<String, Refusal> {
        Err((400, code, description.to_string()))
    }

    #[test]
    fn sts_checks_the_subject_token_as_google_does() {
        let cluster = JwtSigner::generate_es256(Some("cluster-kid")).unwrap();
        let p = pool(&cluster, None);
        let check = |token: &str| check_subject_token(PROVIDER, &p, token, NOW);
        let sign = |claims: &Value| cluster.sign(claims).unwrap();
        let sub = "system:serviceaccount:ns:puller";
        assert_eq!(check(&sign(&claims(sub))), Ok(sub.to_string()));

        // Another key: under the cluster's kid, under another kid, without one.
        let same_kid = JwtSigner::generate_es256(Some("cluster-kid")).unwrap();
        let bad_signature = "Unable to verify the ID Token signature.";
        assert_eq!(check(&same_kid.sign(&claims(sub)).unwrap()), refusal("invalid_grant", bad_signature));
        let other_kid = JwtSigner::generate_rs256(Some("someone-else")).unwrap();
        assert_eq!(
            check(&other_kid.sign(&claims(sub)).unwrap()),
            refusal("invalid_grant", "Error connecting to the given credential's issuer.")
        );
        let no_kid = JwtSigner::generate_es256(None).unwrap();
        assert_eq!(check(&no_kid.sign(&claims(sub)).unwrap()), refusal("invalid_grant", bad_signature));
        // The cluster's token with its signature cut or its claims changed.
        let good = sign(&claims(sub));
        let (input, _) = good.rsplit_once('.').unwrap();
        assert_eq!(check(&format!("{input}.AAAA")), refusal("invalid_grant", bad_signature));
        let forged_claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("system:serviceaccount:ns:x")).unwrap());
        let parts: Vec<&str> = good.split('.').collect();
        assert_eq!(check(&[parts[0], &forged_claims, parts[2]].join(".")), refusal("invalid_grant", bad_signature));
        // `alg: none` with the cluster's kid.
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"cluster-kid"}"#), parts[1]);
        assert_eq!(check(&none), refusal("invalid_grant", bad_signature));

        // The issuer, checked before the signature (a token of another
        // issuer signed by the cluster's own key is still refused).
        let mut other_issuer = claims(sub);
        other_issuer["iss"] = json!("https://other.example");
        assert_eq!(
            check(&sign(&other_issuer)),
            refusal(
                "invalid_grant",
                &format!(
                    "The issuer in ID Token https://other.example does not match the expected one in config: {ISSUER}"
                )
            )
        );
        let mut no_issuer = claims(sub);
        no_issuer.as_object_mut().unwrap().remove("iss");
        assert!(check(&sign(&no_issuer)).unwrap_err().2.starts_with("The issuer in ID Token null does not match"));

        // Audiences: both forms of the resource name by default, nothing else.
        let mut plain = claims(sub);
        plain["aud"] = json!(PROVIDER);
        assert!(check(&sign(&plain)).is_ok());
        let mut wrong = claims(sub);
        wrong["aud"] = json!(["sts.amazonaws.com", "api://AzureADTokenExchange"]);
        assert_eq!(
            check(&sign(&wrong)),
            refusal(
                "invalid_grant",
                "The audience in ID Token [sts.amazonaws.com, api://AzureADTokenExchange] does not match the expected audience."
            )
        );
        let mut custom = pool(&cluster, None);
        custom.allowed_audiences = vec!["sts.googleapis.com".into()];
        assert!(check_subject_token(PROVIDER, &custom, &sign(&claims(sub)), NOW).is_err());
        let mut theirs = claims(sub);
        theirs["aud"] = json!("sts.googleapis.com");
        assert!(check_subject_token(PROVIDER, &custom, &sign(&theirs), NOW).is_ok());

        // Times, with a minute of skew.
        let at = |iat: Option<i64>, exp: Option<i64>| {
            let mut c = claims(sub);
            c["iat"] = json!(iat);
            c["exp"] = json!(exp);
            check(&sign(&c))
        };
        assert!(at(Some(NOW - 700), Some(NOW - 59)).is_ok());
        let stale = |iat: &str| refusal("invalid_grant", &format!("ID Token issued at {iat} is stale to sign-in."));
        assert_eq!(at(Some(NOW - 700), Some(NOW - 61)), stale(&(NOW - 700).to_string()));
        assert!(at(Some(NOW + 60), Some(NOW + 600)).is_ok());
        assert_eq!(at(Some(NOW + 120), Some(NOW + 600)), stale(&(NOW + 120).to_string()));
        assert_eq!(at(None, Some(NOW + 600)), stale("null"));
        assert_eq!(at(Some(NOW), None), stale(&NOW.to_string()));

        // google.subject: at most 127 bytes.
        let long = format!("system:serviceaccount:ns:{}", "a".repeat(103));
        assert_eq!(long.len(), 128);
        assert_eq!(check(&sign(&claims(&long))).unwrap_err().1, "invalid_request");
        assert!(check(&sign(&claims(&long[..127]))).is_ok());

        // Not a JWT.
        assert_eq!(check("not-a-jwt"), refusal("invalid_grant", "Unable to parse the ID Token."));
    }

    #[test]
    fn the_attribute_condition_admits_only_its_subjects() {
        let cluster = JwtSigner::generate_es256(Some("k")).unwrap();
        let rejected = refusal("unauthorized_client", "The given credential is rejected by the attribute condition.");
        let ns = AttributeCondition::SubjectStartsWith(vec!["system:serviceaccount:team-a:".into()]);
        assert_eq!(ns.cel(), "assertion.sub.startsWith('system:serviceaccount:team-a:')");
        let p = pool(&cluster, Some(ns));
        let check = |sub: &str| check_subject_token(PROVIDER, &p, &cluster.sign(&claims(sub)).unwrap(), NOW);
        assert!(check("system:serviceaccount:team-a:puller").is_ok());
        assert_eq!(check("system:serviceaccount:team-b:puller"), rejected);
        assert_eq!(check("system:serviceaccount:team-a"), rejected);
        let mut no_sub = claims("x");
        no_sub.as_object_mut().unwrap().remove("sub");
        assert_eq!(check_subject_token(PROVIDER, &p, &cluster.sign(&no_sub).unwrap(), NOW), rejected);

        let one =
            AttributeCondition::SubjectIn(vec!["system:serviceaccount:a:x".into(), "system:serviceaccount:a:y".into()]);
        assert_eq!(one.cel(), "assertion.sub in ['system:serviceaccount:a:x', 'system:serviceaccount:a:y']");
        let p = pool(&cluster, Some(one));
        let check = |sub: &str| check_subject_token(PROVIDER, &p, &cluster.sign(&claims(sub)).unwrap(), NOW);
        assert!(check("system:serviceaccount:a:y").is_ok());
        assert_eq!(check("system:serviceaccount:a:z"), rejected);
    }

    #[test]
    fn providers_are_registered_as_create_oidc_accepts_them() {
        let g = GoogleStandIn::start().unwrap();
        let signer = JwtSigner::generate_es256(Some("k")).unwrap();
        let provider = |issuer: &str, jwks: Value| OidcPoolProvider {
            issuer_uri: issuer.into(),
            jwks_json: jwks,
            allowed_audiences: Vec::new(),
            attribute_condition: None,
            lifetime: Duration::from_secs(60),
        };
        assert!(g.add_oidc_pool_provider(PROVIDER, provider(ISSUER, signer.jwks())).is_ok());
        let http = g.add_oidc_pool_provider(PROVIDER, provider("http://issuer", signer.jwks())).unwrap_err();
        assert!(http.to_string().contains("scheme must be https"), "{http}");
        let p384 = json!({"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]});
        assert!(g.add_oidc_pool_provider(PROVIDER, provider(ISSUER, p384)).is_err());
        assert!(g.add_oidc_pool_provider(PROVIDER, provider(ISSUER, json!({"keys": []}))).is_err());
        let pool_only = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p";
        assert!(g.add_oidc_pool_provider(pool_only, provider(ISSUER, signer.jwks())).is_err());
        assert!(is_provider_name(PROVIDER));
        assert!(!is_provider_name(&format!("https:{PROVIDER}")));
        assert!(!is_provider_name("projects/1/locations/global/workloadIdentityPools/p/providers/k"));
    }
}
