//! Local stand-ins for Microsoft Entra and Azure Container Registry, for the
//! `acr` provider's tests.
//!
//! One HTTPS server on `127.0.0.1`, with a certificate from a test CA
//! generated here ([`AzureStandIn::ca_pem`]; `azure_identity` insists on
//! https for the authority, and the provider always uses https for the
//! registry). It serves what the real services serve at the same paths, so
//! the provider reaches it only through its spec (`authorityHost`,
//! `registry`, `caBundle`) and Azure's documented environment variables
//! (`IDENTITY_ENDPOINT` / `IDENTITY_HEADER`, and
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST` for the node's IMDS below):
//!
//! - `POST /{tenant}/oauth2/v2.0/token`: the Entra v2.0 token endpoint,
//!   `grant_type=client_credentials` with `client_secret` (service
//!   principals) or `client_assertion` (federated ServiceAccount tokens,
//!   whose `aud`, `iss`, `sub` and `exp` claims are checked without the
//!   signature). Failures answer like Entra: `{"error",
//!   "error_description": "AADSTSnnn: ...", "error_codes": [nnn]}`.
//! - `GET /msi/token?resource=..[&client_id=..]` with `X-IDENTITY-HEADER`: the
//!   managed identity endpoint (App Service style, `IDENTITY_ENDPOINT`).
//! - A second listener, plain HTTP like `http://169.254.169.254`, plays the
//!   node's Instance Metadata Service: `GET /metadata/identity/oauth2/token
//!   ?api-version=..&resource=..[&client_id=..|&object_id=..|&msi_res_id=..]`
//!   with `Metadata: true`, for the user-assigned identities (and the
//!   system-assigned one) given to the node with
//!   [`AzureStandIn::assign_node_identity`], as strict as IMDS (see
//!   [`imds`]).
//! - `POST /oauth2/exchange` (`grant_type=access_token`, `service`,
//!   `tenant`, `access_token`): ACR's exchange, issuing refresh tokens that
//!   are HS256 JWTs with a short `exp` when the Entra token's principal has
//!   been granted AcrPull.
//! - `/v2/...`: proxied to an upstream registry (the real `docker-registry`
//!   in token-auth mode, see [`crate::tokenauth`]), so this host is the
//!   registry's login server as with ACR, and a pull Secret written for it
//!   works with `skopeo` unchanged. [`AzureStandIn::validator`] is the token
//!   service's validator: it accepts [`ACR_USERNAME`] with a refresh token
//!   this stand-in issued and that has not expired yet.
//!
//! Tenants, principals, role assignments, lifetimes and outages are set per
//! tenant, so parallel tests sharing one stand-in do not disturb each other.
//! Every token it issues and every secret it is told is passed to
//! [`crate::operator::record_secret`] for the suite's leak check.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

use crate::operator::record_secret;
use crate::standin_http::{Conn, Request, Response, Server, answer_once, parse_form, read_request};
use crate::tokenauth::Validator;

/// The user name ACR expects with a refresh token.
pub const ACR_USERNAME: &str = "00000000-0000-0000-0000-000000000000";
/// Audience of federated ServiceAccount tokens.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Scopes (and managed identity resources) accepted for ACR.
const ACR_RESOURCES: [&str; 2] = ["https://containerregistry.azure.net", "https://management.azure.com"];
/// Lifetime of an Entra access token.
const ENTRA_TOKEN_LIFETIME: u64 = 3600;
/// Default lifetime of a refresh token.
const DEFAULT_REFRESH_LIFETIME: Duration = Duration::from_secs(3600);
/// Largest request read.
const MAX_REQUEST: usize = 256 * 1024;
/// The managed identity token path of IMDS (`http://169.254.169.254`).
pub const IMDS_TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
/// The oldest `api-version` the IMDS token endpoint takes ("Use API version
/// `2018-02-01` or greater", MicrosoftDocs/entra-docs
/// `docs/identity/managed-identities-azure-resources/how-to-use-vm-token.md`).
const IMDS_MIN_API_VERSION: &str = "2018-02-01";
/// The newest IMDS versions, listed by IMDS when `api-version` is missing
/// (learn.microsoft.com/azure/virtual-machines/instance-metadata-service,
/// "Versioning").
const IMDS_NEWEST_VERSIONS: [&str; 3] = ["2020-10-01", "2020-09-01", "2020-07-15"];
/// The principal name of a system-assigned identity.
pub const SYSTEM_ASSIGNED: &str = "system-assigned";

/// How the exchange answers for a tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExchangeMode {
    /// Refresh tokens for principals with AcrPull, 401 for others.
    #[default]
    Normal,
    /// `503 Service Unavailable`.
    Unavailable,
    /// `429 Too Many Requests`.
    Throttled,
    /// `200` with a refresh token that is not a JWT.
    MalformedToken,
    /// The connection closes without an answer.
    Down,
    /// `500 Internal Server Error`.
    Status500,
    /// `429` with `Retry-After: 1`.
    ThrottledRetryAfter,
    /// No answer for 60 s, then the connection closes.
    Hang,
    /// `200` with a body that is not JSON.
    MalformedJson,
    /// `200` announcing 4096 bytes, sending a few, closing.
    Truncated,
    /// `200` with a 16 MiB body.
    Huge,
    /// Refresh tokens as in `Normal`, but their `exp` was an hour ago (a
    /// registry with a wrong clock).
    Expired,
}

/// Which endpoint a request reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The Entra token endpoint.
    Entra,
    /// The managed identity endpoint (App Service style).
    ManagedIdentity,
    /// The node's IMDS managed identity endpoint.
    Imds,
    /// The registry's `/oauth2/exchange`.
    Exchange,
}

/// A request the stand-in answered, without secrets.
#[derive(Clone, Debug)]
pub struct Seen {
    pub endpoint: Endpoint,
    /// The tenant in the path (Entra), of the managed identity, or the
    /// `tenant` form field (exchange).
    pub tenant: String,
    /// `client_id` (Entra, managed identity, IMDS: as requested, empty when
    /// none was) or the token's principal (exchange).
    pub client_id: String,
    /// `api-version` of a managed identity request.
    pub api_version: String,
    /// `scope` (Entra) or `resource` (managed identity).
    pub scope: String,
    /// `service` of an exchange.
    pub service: String,
    /// `client_secret`, `client_assertion`, `managed_identity` or `access_token`.
    pub grant: String,
    /// The claims of a client assertion (`iss`, `sub`, `aud`, `exp`).
    pub assertion_claims: Option<Value>,
    pub status: u16,
}

#[derive(Clone, Debug)]
struct Tenant {
    service_principals: HashMap<String, String>,
    /// client id → (issuer, subject) pairs.
    federated: HashMap<String, Vec<(String, String)>>,
    acr_pull: HashSet<String>,
    refresh_lifetime: Duration,
    entra_down: bool,
    exchange: ExchangeMode,
}

impl Default for Tenant {
    fn default() -> Self {
        Tenant {
            service_principals: HashMap::new(),
            federated: HashMap::new(),
            acr_pull: HashSet::new(),
            refresh_lifetime: DEFAULT_REFRESH_LIFETIME,
            entra_down: false,
            exchange: ExchangeMode::Normal,
        }
    }
}

/// A user-assigned identity assigned to the node.
#[derive(Clone, Debug)]
struct NodeIdentity {
    client_id: String,
    tenant: String,
}

/// The managed identities of the node behind the IMDS listener.
#[derive(Default)]
struct Node {
    /// The tenant of the system-assigned identity, when it is enabled.
    system_assigned: Option<String>,
    user_assigned: Vec<NodeIdentity>,
}

struct EntraToken {
    tenant: String,
    principal: String,
    exp: u64,
}

#[derive(Default)]
struct Inner {
    tenants: HashMap<String, Tenant>,
    /// Managed identities: client id ("" for the system-assigned one) → tenant.
    managed: HashMap<String, String>,
    /// The node IMDS answers for.
    node: Node,
    entra_tokens: HashMap<String, EntraToken>,
    upstream: Option<String>,
    seen: Vec<Seen>,
    refresh_tokens_issued: usize,
}

struct State {
    tls: Arc<rustls::ServerConfig>,
    host: String,
    /// `127.0.0.1:PORT` of the IMDS listener.
    imds_host: String,
    identity_header: String,
    key: hmac::Key,
    rng: SystemRandom,
    inner: Mutex<Inner>,
}

/// The running stand-in. Dropping it stops the listener.
pub struct AzureStandIn {
    ca_pem: String,
    state: Arc<State>,
    _server: Server,
    _imds: Server,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn random_hex(rng: &SystemRandom, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rng.fill(&mut buf).expect("randomness");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A test CA and a serving certificate for 127.0.0.1 and localhost:
/// (CA PEM, serving chain DER, serving key PKCS#8 DER).
fn make_certificates() -> Result<(String, Vec<Vec<u8>>, Vec<u8>)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params.distinguished_name.push(DnType::CommonName, "regcred-test-azure-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])?;
    params.distinguished_name.push(DnType::CommonName, "regcred-test-azure");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), vec![cert.der().to_vec(), ca_cert.der().to_vec()], key.serialize_der()))
}

impl AzureStandIn {
    /// Generates the CA and starts serving on a free loopback port.
    pub fn start() -> Result<AzureStandIn> {
        let (ca_pem, chain, key) = make_certificates()?;
        #[allow(deprecated)] // the ring provider, as src/http.rs
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                chain.into_iter().map(rustls::pki_types::CertificateDer::from).collect(),
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
            )?;
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the Azure stand-in")?;
        let port = listener.local_addr()?.port();
        let imds_listener = TcpListener::bind("127.0.0.1:0").context("binding the IMDS stand-in")?;
        let imds_port = imds_listener.local_addr()?.port();
        let rng = SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| anyhow!("no randomness"))?;
        let identity_header = format!("identity-header-{}", random_hex(&rng, 16));
        record_secret(&identity_header);
        let state = Arc::new(State {
            tls: Arc::new(tls),
            host: format!("127.0.0.1:{port}"),
            imds_host: format!("127.0.0.1:{imds_port}"),
            identity_header,
            key,
            rng,
            inner: Mutex::default(),
        });
        let server = {
            let state = state.clone();
            Server::spawn(listener, "regcred-azure-standin", "regcred-azure-conn", move |tcp| {
                serve_connection(&state, tcp)
            })?
        };
        let imds = {
            let state = state.clone();
            Server::spawn(imds_listener, "regcred-imds-standin", "regcred-imds-conn", move |tcp| {
                answer_once(Conn::plain(tcp, Duration::from_secs(10)), MAX_REQUEST, |req| match req {
                    Ok(req) => imds(&state, &req),
                    Err(_) => Response::empty(400),
                })
            })?
        };
        Ok(AzureStandIn { ca_pem, state, _server: server, _imds: imds })
    }

    /// `127.0.0.1:PORT`: the registry's login server (`spec.registry`).
    pub fn host(&self) -> String {
        self.state.host.clone()
    }

    /// `https://127.0.0.1:PORT`: the Entra authority host (`spec.authorityHost`).
    pub fn authority_host(&self) -> String {
        format!("https://{}", self.state.host)
    }

    /// PEM of the CA that signed the serving certificate (`spec.caBundle`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The managed identity endpoint, for `IDENTITY_ENDPOINT`.
    pub fn managed_identity_endpoint(&self) -> String {
        format!("https://{}/msi/token", self.state.host)
    }

    /// `http://127.0.0.1:PORT`: the node's IMDS, for
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST` (plain HTTP, as IMDS is).
    pub fn imds_authority(&self) -> String {
        format!("http://{}", self.state.imds_host)
    }

    /// Assigns a managed identity to the node IMDS answers for: a
    /// user-assigned one by client id (principal: the client id), or the
    /// system-assigned one (`None`, principal [`SYSTEM_ASSIGNED`]).
    pub fn assign_node_identity(&self, tenant: &str, client_id: Option<&str>) {
        self.add_tenant(tenant);
        let mut inner = self.state.inner.lock().expect("not poisoned");
        match client_id {
            None => inner.node.system_assigned = Some(tenant.to_string()),
            Some(id) => {
                inner.node.user_assigned.retain(|n| n.client_id != id);
                inner.node.user_assigned.push(NodeIdentity { client_id: id.into(), tenant: tenant.into() });
            }
        }
    }

    /// The value the managed identity endpoint expects in
    /// `X-IDENTITY-HEADER`, for `IDENTITY_HEADER`.
    pub fn identity_header(&self) -> &str {
        &self.state.identity_header
    }

    fn with_tenant<T>(&self, tenant: &str, f: impl FnOnce(&mut Tenant) -> T) -> T {
        let mut inner = self.state.inner.lock().expect("not poisoned");
        f(inner.tenants.entry(tenant.to_string()).or_default())
    }

    /// Creates the tenant if it does not exist yet.
    pub fn add_tenant(&self, tenant: &str) {
        self.with_tenant(tenant, |_| ());
    }

    /// Registers an application with a client secret.
    pub fn add_service_principal(&self, tenant: &str, client_id: &str, secret: &str) {
        record_secret(secret);
        self.with_tenant(tenant, |t| t.service_principals.insert(client_id.into(), secret.into()));
    }

    /// Adds a federated identity credential to `client_id`: tokens from
    /// `issuer` for `subject` (`system:serviceaccount:NS:NAME`) with audience
    /// [`TOKEN_EXCHANGE_AUDIENCE`].
    pub fn add_federated_credential(&self, tenant: &str, client_id: &str, issuer: &str, subject: &str) {
        self.with_tenant(tenant, |t| {
            t.federated.entry(client_id.into()).or_default().push((issuer.into(), subject.into()))
        });
    }

    /// Assigns a managed identity to the App Service style endpoint: a
    /// user-assigned one by client id, or the system-assigned one (`None`,
    /// principal [`SYSTEM_ASSIGNED`]).
    pub fn add_managed_identity(&self, tenant: &str, client_id: Option<&str>) {
        self.add_tenant(tenant);
        let mut inner = self.state.inner.lock().expect("not poisoned");
        inner.managed.insert(client_id.unwrap_or_default().to_string(), tenant.to_string());
    }

    /// Gives `principal` (a client id, or `system-assigned`) the AcrPull
    /// role on the registry.
    pub fn grant_acr_pull(&self, tenant: &str, principal: &str) {
        self.with_tenant(tenant, |t| t.acr_pull.insert(principal.into()));
    }

    /// Lifetime of the refresh tokens issued for the tenant's principals.
    pub fn set_refresh_lifetime(&self, tenant: &str, lifetime: Duration) {
        self.with_tenant(tenant, |t| t.refresh_lifetime = lifetime);
    }

    /// While `down`, the Entra token endpoint (and the managed identity
    /// endpoint) answer `503` for the tenant, IMDS `500`.
    pub fn set_entra_outage(&self, tenant: &str, down: bool) {
        self.with_tenant(tenant, |t| t.entra_down = down);
    }

    /// How the exchange answers tokens of the tenant.
    pub fn set_exchange_mode(&self, tenant: &str, mode: ExchangeMode) {
        self.with_tenant(tenant, |t| t.exchange = mode);
    }

    /// The registry `/v2/` requests are proxied to (`127.0.0.1:PORT`, plain HTTP).
    pub fn set_upstream_registry(&self, host: &str) {
        self.state.inner.lock().expect("not poisoned").upstream = Some(host.to_string());
    }

    /// Requests answered so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.inner.lock().expect("not poisoned").seen.clone()
    }

    /// Refresh tokens issued so far.
    pub fn refresh_tokens_issued(&self) -> usize {
        self.state.inner.lock().expect("not poisoned").refresh_tokens_issued
    }

    /// Whether `password` is a refresh token this stand-in issued, presented
    /// with [`ACR_USERNAME`], and not expired.
    pub fn refresh_token_valid(&self, username: &str, password: &str) -> bool {
        self.state.refresh_token_valid(username, password)
    }

    /// The claims of a refresh token this stand-in issued (expired or not).
    pub fn refresh_token_claims(&self, token: &str) -> Option<Value> {
        self.state.verified_claims(token)
    }

    /// A [`Validator`] for [`crate::tokenauth::TokenService`]: valid refresh
    /// tokens (see [`AzureStandIn::refresh_token_valid`]).
    pub fn validator(&self) -> Validator {
        let state = self.state.clone();
        Arc::new(move |u: &str, p: &str| state.refresh_token_valid(u, p))
    }
}

impl State {
    fn verified_claims(&self, token: &str) -> Option<Value> {
        let (signing_input, signature) = token.rsplit_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        hmac::verify(&self.key, signing_input.as_bytes(), &signature).ok()?;
        let payload = signing_input.split('.').nth(1)?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    fn refresh_token_valid(&self, username: &str, password: &str) -> bool {
        username == ACR_USERNAME
            && self
                .verified_claims(password)
                .and_then(|c| c["exp"].as_u64())
                .is_some_and(|exp| SystemTime::now() < UNIX_EPOCH + Duration::from_secs(exp))
    }

    fn log(&self, seen: Seen) {
        self.inner.lock().expect("not poisoned").seen.push(seen);
    }

    fn refresh_token(&self, tenant: &str, principal: &str, lifetime: Duration) -> String {
        let now = now_secs();
        let header = json!({"alg": "HS256", "typ": "JWT"});
        let claims = json!({
            "jti": random_hex(&self.rng, 16),
            "sub": principal,
            "tenant": tenant,
            "iss": "Azure Container Registry",
            "aud": self.host,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime.as_secs().max(1),
            "grant_type": "refresh_token",
            "version": "1.0",
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        record_secret(&token);
        token
    }

    /// A refresh token that expired an hour ago.
    fn expired_refresh_token(&self, tenant: &str, principal: &str) -> String {
        let now = now_secs();
        let header = json!({"alg": "HS256", "typ": "JWT"});
        let claims = json!({
            "jti": random_hex(&self.rng, 16),
            "sub": principal,
            "tenant": tenant,
            "iss": "Azure Container Registry",
            "aud": self.host,
            "iat": now - 7200,
            "nbf": now - 7200,
            "exp": now - 3600,
            "grant_type": "refresh_token",
            "version": "1.0",
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        record_secret(&token);
        token
    }

    fn entra_token(&self, inner: &mut Inner, tenant: &str, principal: &str) -> String {
        let token = format!("entra-{}", random_hex(&self.rng, 24));
        record_secret(&token);
        inner.entra_tokens.insert(
            token.clone(),
            EntraToken { tenant: tenant.into(), principal: principal.into(), exp: now_secs() + ENTRA_TOKEN_LIFETIME },
        );
        token
    }
}

impl Response {
    /// `text` as it is, as `text/html`.
    fn html(status: u16, text: &str) -> Response {
        Response::new(status, "text/html", text.as_bytes().to_vec())
    }

    /// An Entra error: `{"error", "error_description", "error_codes"}`.
    fn entra(status: u16, error: &str, code: u32, description: &str) -> Response {
        Response::json(
            status,
            &json!({
                "error": error,
                "error_description": format!("AADSTS{code}: {description} Trace ID: 00000000-0000-0000-0000-000000000001\r\nCorrelation ID: 00000000-0000-0000-0000-000000000002\r\nTimestamp: 2026-01-01 00:00:00Z"),
                "error_codes": [code],
                "timestamp": "2026-01-01 00:00:00Z",
                "trace_id": "00000000-0000-0000-0000-000000000001",
                "correlation_id": "00000000-0000-0000-0000-000000000002",
            }),
        )
    }

    /// An ACR error: `{"errors":[{"code","message"}]}`.
    fn acr(status: u16, code: &str, message: &str) -> Response {
        Response::json(status, &json!({"errors": [{"code": code, "message": message}]}))
    }
}

fn serve_connection(state: &State, tcp: TcpStream) {
    let Some(mut conn) = Conn::tls(tcp, Duration::from_secs(10), &state.tls) else { return };
    let bytes = match read_request(&mut conn, MAX_REQUEST) {
        Ok(req) if req.path.starts_with("/v2") => match proxy(state, &req) {
            Ok(raw) => raw,
            Err(e) => Response::html(502, &format!("proxying to the registry: {e:#}")).to_bytes(),
        },
        Ok(req) => match raw_fault(state, &req) {
            Some(Some(raw)) => raw,
            Some(None) => return,
            None => handle(state, &req).to_bytes(),
        },
        Err(_) => return,
    };
    let _ = conn.write_all(&bytes);
    conn.close();
}

/// An exchange fault a [`Response`] cannot express, for the request's
/// `tenant`: `Some(Some(raw))` to send, `Some(None)` to close without an
/// answer, `None` to answer normally.
fn raw_fault(state: &State, req: &Request) -> Option<Option<Vec<u8>>> {
    if req.path != "/oauth2/exchange" {
        return None;
    }
    let tenant = req.form().get("tenant").cloned().unwrap_or_default();
    let mode = state.inner.lock().expect("not poisoned").tenants.get(&tenant).map(|t| t.exchange)?;
    let head = |status: &str, extra: &str, len: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n{extra}Connection: close\r\n\r\n"
        )
        .into_bytes()
    };
    match mode {
        ExchangeMode::Down => Some(None),
        ExchangeMode::Hang => {
            std::thread::sleep(Duration::from_secs(60));
            Some(None)
        }
        ExchangeMode::ThrottledRetryAfter => {
            let body = json!({"errors": [{"code": "TOOMANYREQUESTS", "message": "too many requests"}]}).to_string();
            let mut raw = head("429 Too Many Requests", "Retry-After: 1\r\n", body.len());
            raw.extend_from_slice(body.as_bytes());
            Some(Some(raw))
        }
        ExchangeMode::MalformedJson => {
            let body = br#"{"refresh_token": "#;
            let mut raw = head("200 OK", "", body.len());
            raw.extend_from_slice(body);
            Some(Some(raw))
        }
        ExchangeMode::Truncated => {
            let mut raw = head("200 OK", "", 4096);
            raw.extend_from_slice(br#"{"refresh_token":"#);
            Some(Some(raw))
        }
        ExchangeMode::Huge => {
            let size = 16usize << 20;
            let mut raw = head("200 OK", "", size);
            raw.push(b'{');
            raw.resize(raw.len() + size - 1, b' ');
            Some(Some(raw))
        }
        ExchangeMode::Normal | ExchangeMode::Unavailable | ExchangeMode::Throttled | ExchangeMode::MalformedToken => {
            None
        }
        ExchangeMode::Status500 | ExchangeMode::Expired => None,
    }
}

/// Forwards a registry request to the upstream registry and returns its raw
/// response.
fn proxy(state: &State, req: &Request) -> Result<Vec<u8>> {
    let upstream = state.inner.lock().expect("not poisoned").upstream.clone().context("no upstream registry set")?;
    crate::standin_http::forward(&upstream, req, Duration::from_secs(20))
}

fn handle(state: &State, req: &Request) -> Response {
    let path = req.path.as_str();
    if path == "/oauth2/exchange" {
        return if req.method == "POST" { exchange(state, req) } else { Response::html(405, "use POST") };
    }
    if path == "/msi/token" {
        return if req.method == "GET" { managed_identity(state, req) } else { Response::html(405, "use GET") };
    }
    if let Some(tenant) = path.strip_prefix('/').and_then(|p| p.strip_suffix("/oauth2/v2.0/token")) {
        return if req.method == "POST" { entra(state, req, tenant) } else { Response::html(405, "use POST") };
    }
    Response::html(404, "not found")
}

fn accepted_scope(scope: &str) -> bool {
    ACR_RESOURCES.iter().any(|r| scope == format!("{r}/.default"))
}

/// The claims of a JWT, without verifying its signature.
fn unverified_claims(jwt: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?).ok()
}

fn entra(state: &State, req: &Request, tenant: &str) -> Response {
    let form = req.form();
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let client_id = field("client_id");
    let mut seen = Seen {
        endpoint: Endpoint::Entra,
        tenant: tenant.to_string(),
        client_id: client_id.clone(),
        api_version: String::new(),
        scope: field("scope"),
        service: String::new(),
        grant: String::new(),
        assertion_claims: None,
        status: 0,
    };
    let response = (|| {
        let mut inner = state.inner.lock().expect("not poisoned");
        let Some(t) = inner.tenants.get(tenant).cloned() else {
            return Response::entra(
                400,
                "invalid_request",
                90002,
                &format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
                ),
            );
        };
        if t.entra_down {
            return Response::html(503, "<html><body>Service Unavailable</body></html>");
        }
        if field("grant_type") != "client_credentials" {
            return Response::entra(
                400,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            );
        }
        if !accepted_scope(&field("scope")) {
            return Response::entra(
                400,
                "invalid_scope",
                70011,
                "The provided value for the input parameter 'scope' is not valid.",
            );
        }
        if client_id.is_empty() {
            return Response::entra(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_id'.",
            );
        }
        if let Some(secret) = form.get("client_secret") {
            seen.grant = "client_secret".into();
            let Some(want) = t.service_principals.get(&client_id) else {
                return Response::entra(
                    400,
                    "unauthorized_client",
                    700016,
                    &format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
                );
            };
            if want != secret {
                return Response::entra(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
                );
            }
        } else if let Some(assertion) = form.get("client_assertion") {
            seen.grant = "client_assertion".into();
            record_secret(assertion);
            if field("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
                return Response::entra(400, "invalid_request", 700023, "The client assertion type is not supported.");
            }
            let Some(records) = t.federated.get(&client_id) else {
                return Response::entra(
                    400,
                    "unauthorized_client",
                    700016,
                    &format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
                );
            };
            let Some(claims) = unverified_claims(assertion) else {
                return Response::entra(400, "invalid_client", 50027, "JWT token is invalid or malformed.");
            };
            seen.assertion_claims = Some(json!({
                "iss": claims["iss"], "sub": claims["sub"], "aud": claims["aud"], "exp": claims["exp"],
            }));
            let audiences: Vec<&str> = match &claims["aud"] {
                Value::String(a) => vec![a.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if !audiences.contains(&TOKEN_EXCHANGE_AUDIENCE) {
                return Response::entra(
                    400,
                    "invalid_request",
                    700212,
                    "No matching federated identity record found for presented assertion audience.",
                );
            }
            if claims["exp"].as_u64().is_none_or(|exp| exp <= now_secs()) {
                return Response::entra(
                    400,
                    "invalid_client",
                    700024,
                    "Client assertion is not within its valid time range.",
                );
            }
            let (iss, sub) = (claims["iss"].as_str().unwrap_or_default(), claims["sub"].as_str().unwrap_or_default());
            if !records.iter().any(|(i, s)| i == iss && s == sub) {
                return Response::entra(
                    400,
                    "invalid_request",
                    70021,
                    &format!(
                        "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'."
                    ),
                );
            }
        } else {
            return Response::entra(
                401,
                "invalid_client",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
            );
        }
        let token = state.entra_token(&mut inner, tenant, &client_id);
        Response::json(
            200,
            &json!({"token_type": "Bearer", "expires_in": ENTRA_TOKEN_LIFETIME, "ext_expires_in": ENTRA_TOKEN_LIFETIME, "access_token": token}),
        )
    })();
    seen.status = response.status;
    state.log(seen);
    response
}

fn managed_identity(state: &State, req: &Request) -> Response {
    let form: HashMap<String, String> = parse_form(&req.query).into_iter().collect();
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let resource = form.get("resource").cloned().unwrap_or_default();
    let mut seen = Seen {
        endpoint: Endpoint::ManagedIdentity,
        tenant: String::new(),
        client_id: client_id.clone(),
        api_version: form.get("api-version").cloned().unwrap_or_default(),
        scope: resource.clone(),
        service: String::new(),
        grant: "managed_identity".into(),
        assertion_claims: None,
        status: 0,
    };
    let response = (|| {
        if req.header("x-identity-header") != Some(state.identity_header.as_str()) {
            return Response::json(
                401,
                &json!({"error": "unauthorized", "error_description": "missing or wrong X-IDENTITY-HEADER"}),
            );
        }
        let mut inner = state.inner.lock().expect("not poisoned");
        let Some(tenant) = inner.managed.get(&client_id).cloned() else {
            return Response::json(
                400,
                &json!({"error": "invalid_request", "error_description": "Identity not found"}),
            );
        };
        seen.tenant = tenant.clone();
        if inner.tenants.get(&tenant).is_some_and(|t| t.entra_down) {
            return Response::html(503, "<html><body>Service Unavailable</body></html>");
        }
        if !ACR_RESOURCES.contains(&resource.trim_end_matches('/')) {
            return Response::json(
                400,
                &json!({"error": "invalid_resource", "error_description": "AADSTS500011: The resource principal was not found."}),
            );
        }
        let principal = if client_id.is_empty() { SYSTEM_ASSIGNED.to_string() } else { client_id.clone() };
        let token = state.entra_token(&mut inner, &tenant, &principal);
        Response::json(
            200,
            &json!({
                "access_token": token,
                "expires_on": (now_secs() + ENTRA_TOKEN_LIFETIME).to_string(),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": principal,
            }),
        )
    })();
    seen.status = response.status;
    state.log(seen);
    response
}

/// An IMDS error answer: `{"error", "error_description"}`, JSON with the
/// charset IMDS names (as captured in Hexadite/acs-keyvault-agent#43).
fn imds_error(status: u16, error: &str, description: &str) -> Response {
    let mut response = Response::json(status, &json!({"error": error, "error_description": description}));
    response.headers[0].1 = "application/json; charset=utf-8".into();
    response
}

/// Whether `v` is an IMDS `api-version` the token endpoint takes: a date
/// `YYYY-MM-DD` no older than [`IMDS_MIN_API_VERSION`].
fn imds_api_version_ok(v: &str) -> bool {
    let b = v.as_bytes();
    let shape = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() });
    shape && v >= IMDS_MIN_API_VERSION
}

/// The node's IMDS managed identity token endpoint. What it refuses, in
/// IMDS's order and words:
/// - anything but `GET` (405), a request with `X-Forwarded-For` or without
///   `Metadata: true` (lower case) (400, "Required metadata header not
///   specified"): learn.microsoft.com/azure/virtual-machines/instance-metadata-service
///   ("Security and authentication", "Errors") and MicrosoftDocs/entra-docs
///   `how-to-use-vm-token.md` ("Metadata ... must be set to "true", in all
///   lower case", error table `bad_request_102`); the JSON shape
///   `{"error":"invalid_request","error_description":...}` is the one
///   Azure/azure-sdk-for-net `sdk/identity/Azure.Identity/tests/ImdsManagedIdentityProbeSourceTests.cs`
///   and `ManagedIdentityCredentialTests.cs` replay;
/// - no `api-version` (400 with the newest versions, the documented body of
///   instance-metadata-service "Versioning"), or one older than
///   `2018-02-01` (how-to-use-vm-token.md);
/// - no `resource` (400, "Required query variable 'resource' is missing",
///   as ImdsManagedIdentityProbeSourceTests.cs replays it);
/// - an identity not on the node (400, "Identity not found":
///   Azure/azure-sdk-for-go `sdk/azidentity/managed_identity_client_test.go`
///   `TestManagedIdentityClient_IMDSErrors`); without `client_id`,
///   `object_id` or `msi_res_id` the system-assigned identity, else the only
///   user-assigned one, else with several of them 400 "Multiple user
///   assigned identities exist, please specify the clientId / resourceId of
///   the identity in the token request" (answer captured from IMDS in
///   Azure/azure-sdk-for-rust#748 and Hexadite/acs-keyvault-agent#43; the
///   defaults are MicrosoftDocs managed-identities-faq.md "What identity will
///   IMDS default to");
/// - a resource Entra does not know (400 `invalid_resource`, `AADSTS50001`,
///   how-to-use-vm-token.md's error table); an Entra outage of the
///   identity's tenant is its 500 `unknown`.
///
/// A token for the identity is what the exchange accepts for that principal
/// (the client id, or [`SYSTEM_ASSIGNED`]).
fn imds(state: &State, req: &Request) -> Response {
    let query: HashMap<String, String> = parse_form(&req.query).into_iter().collect();
    let param = |k: &str| query.get(k).cloned().unwrap_or_default();
    let resource = param("resource");
    let mut seen = Seen {
        endpoint: Endpoint::Imds,
        tenant: String::new(),
        client_id: param("client_id"),
        api_version: param("api-version"),
        scope: resource.clone(),
        service: String::new(),
        grant: "managed_identity".into(),
        assertion_claims: None,
        status: 0,
    };
    let response = (|| {
        if req.path != IMDS_TOKEN_PATH {
            return Response::text(404, "Not found");
        }
        if req.method != "GET" {
            return imds_error(405, "invalid_request", "Only GET requests are supported");
        }
        if req.header("x-forwarded-for").is_some() || req.header("metadata") != Some("true") {
            return imds_error(400, "invalid_request", "Required metadata header not specified");
        }
        let api_version = param("api-version");
        if api_version.is_empty() || !imds_api_version_ok(&api_version) {
            let error = if api_version.is_empty() {
                "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds".to_string()
            } else {
                format!(
                    "Bad request. api-version {api_version} is not supported. For more information refer to aka.ms/azureimds"
                )
            };
            let mut response = Response::json(400, &json!({"error": error, "newest-versions": IMDS_NEWEST_VERSIONS}));
            response.headers[0].1 = "application/json; charset=utf-8".into();
            return response;
        }
        if resource.is_empty() {
            return imds_error(400, "invalid_request", "Required query variable 'resource' is missing");
        }
        let mut inner = state.inner.lock().expect("not poisoned");
        let node = &inner.node;
        let chosen: Vec<(&str, &str)> = ["client_id", "object_id", "msi_res_id"]
            .into_iter()
            .filter_map(|k| query.get(k).map(|v| (k, v.as_str())))
            .collect();
        let (principal, tenant) = match chosen.as_slice() {
            [] => match (&node.system_assigned, node.user_assigned.as_slice()) {
                (Some(tenant), _) => (SYSTEM_ASSIGNED.to_string(), tenant.clone()),
                (None, [only]) => (only.client_id.clone(), only.tenant.clone()),
                (None, []) => return imds_error(400, "invalid_request", "Identity not found"),
                (None, _) => {
                    return imds_error(
                        400,
                        "invalid_request",
                        "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request",
                    );
                }
            },
            [(kind, id)] => {
                let found = node.user_assigned.iter().find(|n| match *kind {
                    "client_id" => n.client_id.eq_ignore_ascii_case(id),
                    "object_id" => node_object_id(&n.client_id).eq_ignore_ascii_case(id),
                    _ => node_resource_id(&n.client_id).eq_ignore_ascii_case(id),
                });
                match found {
                    Some(n) => (n.client_id.clone(), n.tenant.clone()),
                    None => return imds_error(400, "invalid_request", "Identity not found"),
                }
            }
            // The SDKs treat the three as exclusive (Azure/msrestazure-for-python#83).
            _ => {
                return imds_error(
                    400,
                    "invalid_request",
                    "Only one of client_id, object_id and msi_res_id may be specified",
                );
            }
        };
        seen.tenant = tenant.clone();
        if inner.tenants.get(&tenant).is_some_and(|t| t.entra_down) {
            return imds_error(500, "unknown", "Failed to retrieve token from the Active directory.");
        }
        if !ACR_RESOURCES.contains(&resource.trim_end_matches('/')) {
            return imds_error(
                400,
                "invalid_resource",
                &format!(
                    "AADSTS50001: The application named {resource} was not found in the tenant named {tenant}. \
                     This can happen if the application has not been installed by the administrator of the tenant \
                     or consented to by any user in the tenant. You might have sent your authentication request to \
                     the wrong tenant."
                ),
            );
        }
        let token = state.entra_token(&mut inner, &tenant, &principal);
        let now = now_secs();
        let mut response = Response::json(
            200,
            &json!({
                "access_token": token,
                "refresh_token": "",
                "expires_in": (ENTRA_TOKEN_LIFETIME - 1).to_string(),
                "expires_on": (now + ENTRA_TOKEN_LIFETIME - 1).to_string(),
                "not_before": now.to_string(),
                "resource": resource,
                "token_type": "Bearer",
            }),
        );
        response.headers[0].1 = "application/json; charset=utf-8".into();
        response
    })();
    seen.status = response.status;
    state.log(seen);
    response
}

/// The object (principal) id of a node identity, for `object_id`.
pub fn node_object_id(client_id: &str) -> String {
    format!("{client_id}-object")
}

/// The Azure resource id of a node identity, for `msi_res_id`.
pub fn node_resource_id(client_id: &str) -> String {
    format!(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/regcred-test/providers/\
         Microsoft.ManagedIdentity/userAssignedIdentities/{client_id}"
    )
}

fn exchange(state: &State, req: &Request) -> Response {
    let form = req.form();
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let mut seen = Seen {
        endpoint: Endpoint::Exchange,
        tenant: field("tenant"),
        client_id: String::new(),
        api_version: String::new(),
        scope: String::new(),
        service: field("service"),
        grant: field("grant_type"),
        assertion_claims: None,
        status: 0,
    };
    let response = (|| {
        let mut inner = state.inner.lock().expect("not poisoned");
        if field("grant_type") != "access_token" {
            return Response::acr(400, "UNSUPPORTED", "grant_type must be access_token");
        }
        if field("service") != state.host {
            return Response::acr(400, "DENIED", "unknown service");
        }
        let token = field("access_token");
        let Some((tenant, principal)) = inner
            .entra_tokens
            .get(&token)
            .filter(|t| t.exp > now_secs())
            .map(|t| (t.tenant.clone(), t.principal.clone()))
        else {
            return Response::acr(401, "UNAUTHORIZED", "the access token is invalid or expired");
        };
        seen.client_id = principal.clone();
        let Some(t) = inner.tenants.get(&tenant).cloned() else {
            return Response::acr(401, "UNAUTHORIZED", "unknown tenant");
        };
        match t.exchange {
            ExchangeMode::Normal | ExchangeMode::Expired => {}
            ExchangeMode::Unavailable => return Response::html(503, "<html><body>Service Unavailable</body></html>"),
            ExchangeMode::Throttled => return Response::acr(429, "TOOMANYREQUESTS", "too many requests"),
            ExchangeMode::MalformedToken => return Response::json(200, &json!({"refresh_token": "not-a-jwt"})),
            ExchangeMode::Status500 => return Response::acr(500, "INTERNAL", "injected failure"),
            // Answered by `raw_fault` before `handle`.
            ExchangeMode::Down
            | ExchangeMode::ThrottledRetryAfter
            | ExchangeMode::Hang
            | ExchangeMode::MalformedJson
            | ExchangeMode::Truncated
            | ExchangeMode::Huge => return Response::html(500, "unexpected fault mode"),
        }
        if field("tenant") != tenant {
            return Response::acr(401, "UNAUTHORIZED", "the access token was not issued for this tenant");
        }
        if !t.acr_pull.contains(&principal) {
            return Response::acr(
                401,
                "UNAUTHORIZED",
                "authentication required, visit https://aka.ms/acr/authorization for more information.",
            );
        }
        inner.refresh_tokens_issued += 1;
        drop(inner);
        let refresh = if t.exchange == ExchangeMode::Expired {
            state.expired_refresh_token(&tenant, &principal)
        } else {
            state.refresh_token(&tenant, &principal, t.refresh_lifetime)
        };
        Response::json(200, &json!({"refresh_token": refresh}))
    })();
    seen.status = response.status;
    state.log(seen);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn refresh_tokens_verify_and_expire() {
        let s = AzureStandIn::start().unwrap();
        let token = s.state.refresh_token("t", "p", Duration::from_secs(60));
        assert!(s.refresh_token_valid(ACR_USERNAME, &token));
        assert!(!s.refresh_token_valid("someone", &token));
        let mut forged = token.clone();
        forged.pop();
        forged.push('x');
        if forged != token {
            assert!(!s.refresh_token_valid(ACR_USERNAME, &forged));
        }
        assert_eq!(s.refresh_token_claims(&token).unwrap()["sub"], "p");
        let expired = s.state.refresh_token("t", "p", Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(2100));
        assert!(!s.refresh_token_valid(ACR_USERNAME, &expired));
    }

    /// One raw HTTP/1.1 request to the IMDS listener: (status, JSON body).
    fn imds_call(s: &AzureStandIn, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut tcp = TcpStream::connect(&s.state.imds_host).unwrap();
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: 169.254.169.254\r\n");
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        tcp.write_all(head.as_bytes()).unwrap();
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).unwrap();
        let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = raw.split_once("\r\n\r\n").unwrap().1;
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    const ACR: &str = "https%3A%2F%2Fcontainerregistry.azure.net";

    #[test]
    fn imds_is_as_strict_as_imds() {
        let s = AzureStandIn::start().unwrap();
        let md = [("Metadata", "true")];
        let ok = format!("{IMDS_TOKEN_PATH}?api-version=2018-02-01&resource={ACR}");
        let error =
            |(status, body): (u16, Value)| (status, body["error_description"].as_str().unwrap_or("").to_string());

        // No identity on the node at all.
        assert_eq!(error(imds_call(&s, "GET", &ok, &md)), (400, "Identity not found".into()));
        s.assign_node_identity("t-node", Some("kubelet-id"));
        s.assign_node_identity("t-node", Some("addon-id"));

        // Request shape.
        assert_eq!(imds_call(&s, "POST", &ok, &md).0, 405);
        let header = (400, "Required metadata header not specified".to_string());
        assert_eq!(error(imds_call(&s, "GET", &ok, &[])), header);
        assert_eq!(error(imds_call(&s, "GET", &ok, &[("Metadata", "True")])), header, "lower case only");
        assert_eq!(error(imds_call(&s, "GET", &ok, &[("Metadata", "true"), ("X-Forwarded-For", "10.0.0.1")])), header);
        let (status, body) =
            imds_call(&s, "GET", &format!("{IMDS_TOKEN_PATH}?resource={ACR}&client_id=kubelet-id"), &md);
        assert_eq!(status, 400);
        assert!(body["error"].as_str().unwrap().contains("api-version was not specified"), "{body}");
        assert!(body["newest-versions"].is_array());
        let old = format!("{IMDS_TOKEN_PATH}?api-version=2017-12-01&resource={ACR}&client_id=kubelet-id");
        assert_eq!(imds_call(&s, "GET", &old, &md).0, 400);
        let no_resource = format!("{IMDS_TOKEN_PATH}?api-version=2019-08-01&client_id=kubelet-id");
        assert_eq!(error(imds_call(&s, "GET", &no_resource, &md)).1, "Required query variable 'resource' is missing");
        assert_eq!(imds_call(&s, "GET", "/metadata/instance?api-version=2021-02-01", &md).0, 404);

        // Which identity: several user-assigned and no system-assigned.
        let (status, body) = imds_call(&s, "GET", &ok, &md);
        assert_eq!(status, 400);
        assert_eq!(
            body,
            json!({"error": "invalid_request", "error_description": "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"})
        );
        let with = |q: &str| format!("{ok}&{q}");
        assert_eq!(error(imds_call(&s, "GET", &with("client_id=nobody"), &md)), (400, "Identity not found".into()));
        let (status, body) = imds_call(&s, "GET", &with("client_id=kubelet-id"), &md);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["resource"], "https://containerregistry.azure.net");
        assert!(body["expires_on"].as_str().unwrap().parse::<u64>().unwrap() > now_secs());
        let token = body["access_token"].as_str().unwrap().to_string();
        {
            let inner = s.state.inner.lock().unwrap();
            let t = &inner.entra_tokens[&token];
            assert_eq!((t.tenant.as_str(), t.principal.as_str()), ("t-node", "kubelet-id"));
        }
        let object = format!("object_id={}", node_object_id("addon-id"));
        assert_eq!(imds_call(&s, "GET", &with(&object), &md).0, 200);
        let resource_id = format!("msi_res_id={}", node_resource_id("addon-id").replace('/', "%2F"));
        assert_eq!(imds_call(&s, "GET", &with(&resource_id), &md).0, 200);
        assert_eq!(imds_call(&s, "GET", &with(&format!("client_id=kubelet-id&{object}")), &md).0, 400);
        let (status, body) =
            imds_call(&s, "GET", &with("client_id=kubelet-id").replace(ACR, "https%3A%2F%2Fvault.azure.net"), &md);
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_resource")));

        // The system-assigned identity is the default when it is enabled.
        s.assign_node_identity("t-node", None);
        let (status, body) = imds_call(&s, "GET", &ok, &md);
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap();
        assert_eq!(s.state.inner.lock().unwrap().entra_tokens[token].principal, SYSTEM_ASSIGNED);

        // An Entra outage of the identity's tenant.
        s.set_entra_outage("t-node", true);
        assert_eq!(imds_call(&s, "GET", &with("client_id=kubelet-id"), &md).0, 500);

        let seen: Vec<Seen> = s.seen().into_iter().filter(|x| x.endpoint == Endpoint::Imds).collect();
        assert!(seen.iter().any(|x| x.client_id == "kubelet-id" && x.tenant == "t-node" && x.status == 200));
        assert!(seen.iter().any(|x| x.client_id.is_empty() && x.api_version == "2018-02-01" && x.status == 400));
    }

    #[test]
    fn a_single_user_assigned_identity_is_the_default() {
        let s = AzureStandIn::start().unwrap();
        s.assign_node_identity("t1", Some("only-id"));
        let target = format!("{IMDS_TOKEN_PATH}?api-version=2019-08-01&resource={ACR}");
        let (status, body) = imds_call(&s, "GET", &target, &[("metadata", "true")]);
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap();
        assert_eq!(s.state.inner.lock().unwrap().entra_tokens[token].principal, "only-id");
    }
}
