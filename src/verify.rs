//! Checks a credential against the registry itself before it is published
//! (Docker Registry HTTP API v2 and its token protocol,
//! <https://distribution.github.io/distribution/spec/auth/token/>).
//!
//! [`verify`] does what `docker login` does:
//! 1. `GET /v2/` without credentials; `200` means the registry needs none.
//! 2. On `401`, it reads the `WWW-Authenticate` challenge ([`parse_challenge`]):
//!    - `Basic`: `GET /v2/` again with the username and password;
//!    - `Bearer`: `GET realm?service=..&scope=..` with the username and
//!      password, then `GET /v2/` with the token it returns.
//!
//! A login alone does not show that the credential may pull anything: real
//! registries authorize per repository (Distribution's token service puts
//! only the granted actions in a token, docs/spec/auth/token.md; Harbor by
//! project, ECR by IAM and repository policy, Artifact Registry by role).
//! With [`VerifyPlan::repositories`], each repository is then read as a
//! pull starts ([`check_repository`]): a token scoped
//! `repository:NAME:pull` from the same realm (Bearer registries), and
//! `HEAD /v2/NAME/manifests/latest` with it (or with the Basic login). 2xx
//! and 404 (the manifest or repository is missing, which the registry only
//! says to a reader) pass; 401 and 403 fail with the registry's error code
//! and message, read from a `GET` of the same URL.
//!
//! The HTTP client is built per call with an explicit rustls configuration
//! (the `ring` provider, the platform's roots plus the optional CA bundle),
//! so nothing process-wide has to be installed first. Redirects are followed
//! only within the same scheme, host and port.
//!
//! Secrets: neither the password nor the token ever reaches an error message
//! or `Debug` output, and response bodies are never echoed.

use std::fmt;
use std::time::Duration;

use reqwest::{StatusCode, Url, header};
use secrecy::{ExposeSecret, SecretString};

use crate::api::VerifyPolicy;
use crate::http::{BodyError, MAX_BODY, find_rustls_error, read_body, transport_cause, truncate};
use crate::render::RegistryAuth;

/// How long one HTTP request may take when the caller has no opinion.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most redirects followed for one request (same origin only).
const MAX_REDIRECTS: usize = 5;

/// How to reach the registry.
#[derive(Clone)]
pub struct VerifyOptions {
    /// PEM CA certificates trusted in addition to the platform's roots.
    pub ca_bundle: Option<String>,
    /// Talk plain HTTP to the registry instead of HTTPS.
    pub plain_http: bool,
    /// Connect timeout and whole-request timeout of every HTTP request.
    pub timeout: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { ca_bundle: None, plain_http: false, timeout: DEFAULT_TIMEOUT }
    }
}

/// What [`verify`] checks: the login, then a pull-read of each repository.
/// `&VerifyOptions` converts into a plan without repositories (the login
/// only).
#[derive(Clone, Debug, Default)]
pub struct VerifyPlan {
    /// How to reach the registry.
    pub options: VerifyOptions,
    /// Repositories the login must be allowed to pull, as
    /// `spec.verify.repositories` writes them: `NAME` (checked on every
    /// registry) or `HOST/NAME` (on that registry only).
    pub repositories: Vec<String>,
}

impl VerifyPlan {
    /// The plan a credential's `spec.verify` asks for, with
    /// [`DEFAULT_TIMEOUT`].
    pub fn from_policy(policy: &VerifyPolicy) -> Self {
        VerifyPlan {
            options: VerifyOptions {
                ca_bundle: policy.ca_bundle.clone(),
                plain_http: policy.plain_http.unwrap_or(false),
                timeout: DEFAULT_TIMEOUT,
            },
            repositories: policy.repositories.clone().unwrap_or_default(),
        }
    }

    /// Entries of the form `HOST/NAME` whose host is none of `registries`
    /// (the ones the credential logs in to): nothing would check them, so
    /// the caller refuses them rather than skip them silently.
    pub fn unmatched(&self, registries: &[&str]) -> Vec<String> {
        let hosts: Vec<String> =
            registries.iter().filter_map(|r| v2_url(r, true).ok()).map(|u| u.authority().to_string()).collect();
        self.repositories
            .iter()
            .filter(|entry| match split_repository(entry) {
                Ok((Some(h), _)) => !v2_url(h, true).is_ok_and(|u| hosts.iter().any(|host| host == u.authority())),
                _ => false,
            })
            .cloned()
            .collect()
    }

    /// The repository names to read on `registry`: entries without a host,
    /// and those whose host is `registry`'s (compared as [`v2_url`]
    /// normalises hosts). An entry that is not a repository reference is
    /// an error.
    pub fn repositories_for(&self, registry: &str) -> Result<Vec<String>, VerifyError> {
        let host = v2_url(registry, true)?.authority().to_string();
        let mut out = Vec::new();
        for entry in &self.repositories {
            let (entry_host, name) = split_repository(entry)
                .map_err(|detail| VerifyError::InvalidRepository { repository: truncate(entry, 300), detail })?;
            let matches = match entry_host {
                None => true,
                Some(h) => v2_url(h, true).is_ok_and(|u| u.authority() == host),
            };
            if matches && !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }
}

impl From<&VerifyOptions> for VerifyPlan {
    fn from(options: &VerifyOptions) -> Self {
        VerifyPlan { options: options.clone(), repositories: Vec::new() }
    }
}

impl From<VerifyOptions> for VerifyPlan {
    fn from(options: VerifyOptions) -> Self {
        VerifyPlan { options, repositories: Vec::new() }
    }
}

impl From<&VerifyPlan> for VerifyPlan {
    fn from(plan: &VerifyPlan) -> Self {
        plan.clone()
    }
}

/// Splits `[HOST/]NAME` as Docker reads image references: the first
/// component is a host when it has a `.` or a `:`, or is `localhost`
/// (distribution/reference `normalize.go`, `splitDockerDomain`). NAME must
/// be lower-case path components joined by `/` (the reference grammar,
/// distribution/reference `regexp.go`), at most 255 characters in all
/// (`NameTotalLengthMax`).
fn split_repository(entry: &str) -> Result<(Option<&str>, &str), String> {
    let (host, name) = match entry.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (Some(first), rest),
        _ => (None, entry),
    };
    if entry.len() > 255 {
        return Err("longer than 255 characters".into());
    }
    if name.is_empty() {
        return Err("no repository name".into());
    }
    for component in name.split('/') {
        if !path_component_ok(component) {
            return Err(format!(
                "path component {:?} is not lower-case letters and digits joined by '.', '_', '__' or '-'",
                truncate(component, 100)
            ));
        }
    }
    Ok((host, name))
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
fn path_component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl fmt::Debug for VerifyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("ca_bundle", &self.ca_bundle.as_ref().map(|pem| format!("<{} bytes of PEM>", pem.len())))
            .field("plain_http", &self.plain_http)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The request during which verification failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `GET /v2/` without credentials.
    Probe,
    /// `GET /v2/` with HTTP Basic auth.
    BasicLogin,
    /// `GET realm?service=..&scope=..` at the token service.
    TokenRequest,
    /// `GET /v2/` with the bearer token.
    BearerLogin,
    /// `GET realm?service=..&scope=repository:NAME:pull` at the token
    /// service.
    RepositoryToken,
    /// `HEAD` (then `GET`) `/v2/NAME/manifests/latest`.
    RepositoryRead,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Probe => "probe without credentials",
            Step::BasicLogin => "login with Basic auth",
            Step::TokenRequest => "token request",
            Step::BearerLogin => "login with the bearer token",
            Step::RepositoryToken => "token request for a repository",
            Step::RepositoryRead => "read of a repository",
        })
    }
}

/// Why a credential could not be verified. Callers report every variant
/// under the condition reason `VerificationFailed`; [`VerifyError::reason`]
/// tells them apart. Messages name the URL, the step and the status, and
/// never contain the password, the token or an `Authorization` header.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The registry is not a usable `host[:port]`.
    #[error("invalid registry {registry:?}: {detail}")]
    InvalidRegistry { registry: String, detail: String },
    /// The CA bundle is not PEM certificates.
    #[error("invalid caBundle: {0}")]
    InvalidCaBundle(String),
    /// The TLS client could not be set up (for example, no trusted roots).
    #[error("cannot set up TLS: {0}")]
    TlsSetup(String),
    /// No connection: DNS, refused, reset, or an HTTP protocol error.
    #[error("{step}: GET {url}: cannot reach the server: {cause}")]
    Unreachable { step: Step, url: String, cause: String },
    /// The TLS handshake failed (untrusted certificate, wrong name, or a
    /// server that does not speak TLS).
    #[error("{step}: GET {url}: TLS handshake failed: {cause}")]
    TlsHandshake { step: Step, url: String, cause: String },
    /// No complete answer within the timeout.
    #[error("{step}: GET {url}: no answer within {timeout:?}")]
    Timeout { step: Step, url: String, timeout: Duration },
    /// A status the protocol does not expect at this step.
    #[error("{step}: GET {url} returned unexpected HTTP status {status}{hint}")]
    UnexpectedStatus {
        step: Step,
        url: String,
        status: StatusCode,
        /// Extra explanation, empty or starting with a space.
        hint: String,
    },
    /// The `401` carried no usable `WWW-Authenticate` challenge.
    #[error("{step}: GET {url} returned 401 with an unusable WWW-Authenticate challenge: {detail}")]
    BadChallenge { step: Step, url: String, detail: String },
    /// The token service answered `200` without a usable token.
    #[error("{step}: GET {url}: unusable token response: {detail}")]
    BadTokenResponse { step: Step, url: String, detail: String },
    /// The registry or its token service refused the credentials.
    #[error("{step}: GET {url} returned {status}: {}", rejection(*step, username))]
    Rejected { step: Step, url: String, status: StatusCode, username: String },
    /// An entry of `verify.repositories` is not a repository reference.
    #[error("invalid repository {repository:?} in verify.repositories: {detail}")]
    InvalidRepository { repository: String, detail: String },
    /// The login works, but the registry (or its token service) refused to
    /// let it pull `repository`.
    #[error(
        "{step}: {url} answered {status}: user {username:?} may not pull repository {repository:?}; the registry says: {registry_reason}"
    )]
    RepositoryDenied {
        step: Step,
        url: String,
        status: StatusCode,
        username: String,
        repository: String,
        /// The registry's error code and message, cleaned
        /// ([`registry_reason`]).
        registry_reason: String,
    },
}

fn rejection(step: Step, username: &str) -> String {
    match step {
        Step::BearerLogin => format!("the registry refused the token issued for user {username:?}"),
        _ => format!("the credentials of user {username:?} were rejected"),
    }
}

impl VerifyError {
    /// A stable PascalCase name of the failure (the variant's name).
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::InvalidRegistry { .. } => "InvalidRegistry",
            VerifyError::InvalidCaBundle(_) => "InvalidCaBundle",
            VerifyError::TlsSetup(_) => "TlsSetup",
            VerifyError::Unreachable { .. } => "Unreachable",
            VerifyError::TlsHandshake { .. } => "TlsHandshake",
            VerifyError::Timeout { .. } => "Timeout",
            VerifyError::UnexpectedStatus { .. } => "UnexpectedStatus",
            VerifyError::BadChallenge { .. } => "BadChallenge",
            VerifyError::BadTokenResponse { .. } => "BadTokenResponse",
            VerifyError::Rejected { .. } => "Rejected",
            VerifyError::InvalidRepository { .. } => "InvalidRepository",
            VerifyError::RepositoryDenied { .. } => "RepositoryDenied",
        }
    }

    /// Whether the registry said no to these credentials, or to a
    /// repository they were to pull (as opposed to not being reachable or
    /// not making sense).
    pub fn is_rejected(&self) -> bool {
        matches!(self, VerifyError::Rejected { .. } | VerifyError::RepositoryDenied { .. })
    }
}

/// Logs in to `auth.registry` with `auth`'s username and password, then
/// reads each of the plan's repositories on that registry
/// ([`VerifyPlan::repositories_for`]). `plan` is a [`VerifyPlan`], or
/// `&VerifyOptions` for the login only.
pub async fn verify(auth: &RegistryAuth, plan: impl Into<VerifyPlan>) -> Result<Verified, VerifyError> {
    let plan = plan.into();
    let opts = &plan.options;
    let v2 = v2_url(&auth.registry, opts.plain_http)?;
    let repositories = plan.repositories_for(&auth.registry)?;
    let client = build_client(opts)?;
    let ctx = Ctx { client: &client, timeout: opts.timeout };

    let session = login(&ctx, auth, &v2, opts.plain_http).await?;
    let mut verified = Verified::default();
    for repository in &repositories {
        let answer = check_repository(&ctx, auth, &v2, &session, repository, "latest", opts.plain_http).await?;
        if let Some(q) = answer.quota
            && verified.quota.as_ref().is_none_or(|seen| q.remaining < seen.remaining)
        {
            verified.quota = Some(q);
        }
    }
    Ok(verified)
}

/// What [`verify`] learned besides that the login works.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// The pull quota the registry reported while the repositories were
    /// read (the lowest remaining), if it reports one.
    pub quota: Option<PullQuota>,
}

impl PullQuota {
    /// At most a tenth of the limit left.
    pub fn is_low(&self) -> bool {
        self.limit > 0 && self.remaining.saturating_mul(10) <= self.limit
    }
}

/// A registry's pull quota, as Docker Hub reports it on manifest requests
/// (docs.docker.com/docker-hub/usage/pulls/, "View pull rate and limit":
/// `ratelimit-limit: 100;w=21600` and `ratelimit-remaining: 76;w=21600`,
/// the window in seconds). Registries that do not limit pulls send neither.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullQuota {
    pub limit: u64,
    pub remaining: u64,
    /// The window the limit applies to, in seconds, when given.
    pub window_seconds: Option<u64>,
}

/// Reads [`PullQuota`] from a manifest response's headers: both headers,
/// each `N` or `N;w=SECONDS`, or nothing.
pub fn pull_quota(headers: &header::HeaderMap) -> Option<PullQuota> {
    let parse = |name: &str| -> Option<(u64, Option<u64>)> {
        let value = headers.get(name)?.to_str().ok()?;
        let mut parts = value.split(';').map(str::trim);
        let count = parts.next()?.parse().ok()?;
        let window = parts.find_map(|p| p.strip_prefix("w=")).and_then(|w| w.parse().ok());
        Some((count, window))
    };
    let (limit, window) = parse("ratelimit-limit")?;
    let (remaining, remaining_window) = parse("ratelimit-remaining")?;
    Some(PullQuota { limit, remaining, window_seconds: window.or(remaining_window) })
}

/// What the registry answered for an image's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestAnswer {
    /// The manifest exists (2xx); `false` is a 404.
    pub found: bool,
    pub quota: Option<PullQuota>,
}

/// Logs in to `auth.registry` as [`verify`] does and asks for the manifest
/// `reference` (a tag or digest) of `repository` with `HEAD`, as a pull
/// starts, so that a registry counting pulls counts nothing (Docker Hub
/// counts manifest `GET`s, not `HEAD`s). A refusal is the same
/// [`VerifyError::RepositoryDenied`] verification reports.
pub async fn check_manifest(
    auth: &RegistryAuth,
    repository: &str,
    reference: &str,
    opts: &VerifyOptions,
) -> Result<ManifestAnswer, VerifyError> {
    let v2 = v2_url(&auth.registry, opts.plain_http)?;
    let client = build_client(opts)?;
    let ctx = Ctx { client: &client, timeout: opts.timeout };
    let session = login(&ctx, auth, &v2, opts.plain_http).await?;
    check_repository(&ctx, auth, &v2, &session, repository, reference, opts.plain_http).await
}

/// How the login at `/v2/` succeeded, which decides how a repository is
/// then read.
enum Session {
    /// `/v2/` answered 200 without credentials.
    Anonymous,
    /// The registry takes the username and password on every request.
    Basic,
    /// The registry takes tokens from `realm` (for `service`).
    Bearer { realm: String, service: Option<String> },
}

/// `GET /v2/`, and the login its challenge asks for.
async fn login(ctx: &Ctx<'_>, auth: &RegistryAuth, v2: &Url, plain_http: bool) -> Result<Session, VerifyError> {
    let probe = ctx.get(Step::Probe, v2, Auth::None).await?;
    match probe.status() {
        StatusCode::OK => return Ok(Session::Anonymous),
        StatusCode::UNAUTHORIZED => {}
        status => return Err(unexpected(Step::Probe, v2, status)),
    }
    let challenge = challenge_of(&probe).map_err(|detail| VerifyError::BadChallenge {
        step: Step::Probe,
        url: v2.to_string(),
        detail,
    })?;
    drop(probe);

    let basic = Auth::Basic(&auth.username, &auth.password);
    let (step, login, session) = match challenge {
        Challenge::Basic { .. } => (Step::BasicLogin, basic, Session::Basic),
        Challenge::Bearer { realm, service, scope } => {
            let url = token_url(&realm, service.as_deref(), scope.as_deref(), plain_http)
                .map_err(|detail| VerifyError::BadChallenge { step: Step::Probe, url: v2.to_string(), detail })?;
            let token = ctx.fetch_token(&url, basic, &auth.username).await?;
            (Step::BearerLogin, Auth::Bearer(token), Session::Bearer { realm, service })
        }
    };
    let response = ctx.get(step, v2, login).await?;
    match response.status() {
        StatusCode::OK => Ok(session),
        status @ StatusCode::UNAUTHORIZED => {
            Err(VerifyError::Rejected { step, url: v2.to_string(), status, username: auth.username.clone() })
        }
        status => Err(unexpected(step, v2, status)),
    }
}

/// The manifest media types a pull accepts (OCI image index and manifest,
/// Docker manifest list and schema 2), so that the registry answers as it
/// would to a pull.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Reads `repository` as a pull starts: a token for `repository:NAME:pull`
/// where the registry uses tokens, then `HEAD /v2/NAME/manifests/REFERENCE`
/// (`latest` for verification).
/// HEAD first, so that a registry counting pulls (Docker Hub's limits
/// count manifest GETs) counts nothing; a refusal is read again with `GET`
/// for the registry's reason. A registry that answered `/v2/` anonymously
/// but challenges here gets the login its challenge asks for, once.
async fn check_repository(
    ctx: &Ctx<'_>,
    auth: &RegistryAuth,
    v2: &Url,
    session: &Session,
    repository: &str,
    reference: &str,
    plain_http: bool,
) -> Result<ManifestAnswer, VerifyError> {
    let url = v2
        .join(&format!("{repository}/manifests/{reference}"))
        .map_err(|e| VerifyError::InvalidRepository { repository: repository.to_string(), detail: e.to_string() })?;
    let scope = format!("repository:{repository}:pull");
    let mut credentials = match session {
        Session::Anonymous => Auth::None,
        Session::Basic => Auth::Basic(&auth.username, &auth.password),
        Session::Bearer { realm, service } => {
            let token_url = token_url(realm, service.as_deref(), Some(&scope), plain_http)
                .map_err(|detail| VerifyError::BadChallenge { step: Step::Probe, url: v2.to_string(), detail })?;
            Auth::Bearer(ctx.fetch_repository_token(&token_url, auth, repository).await?)
        }
    };
    let step = Step::RepositoryRead;
    let mut response = ctx.send(reqwest::Method::HEAD, step, &url, credentials.clone()).await?;
    if response.status() == StatusCode::UNAUTHORIZED && matches!(credentials, Auth::None) {
        let challenge = challenge_of(&response).map_err(|detail| VerifyError::BadChallenge {
            step,
            url: url.to_string(),
            detail,
        })?;
        credentials = match challenge {
            Challenge::Basic { .. } => Auth::Basic(&auth.username, &auth.password),
            Challenge::Bearer { realm, service, .. } => {
                let token_url = token_url(&realm, service.as_deref(), Some(&scope), plain_http)
                    .map_err(|detail| VerifyError::BadChallenge { step, url: url.to_string(), detail })?;
                Auth::Bearer(ctx.fetch_repository_token(&token_url, auth, repository).await?)
            }
        };
        response = ctx.send(reqwest::Method::HEAD, step, &url, credentials.clone()).await?;
    }
    let status = response.status();
    if status.is_success() || status == StatusCode::NOT_FOUND {
        return Ok(ManifestAnswer { found: status.is_success(), quota: pull_quota(response.headers()) });
    }
    if !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Err(unexpected(step, &url, status));
    }
    drop(response);
    // The same request as GET, for the error body HEAD cannot carry.
    let secret = match &credentials {
        Auth::Bearer(token) => Some(token.clone()),
        _ => None,
    };
    let mut response = ctx.send(reqwest::Method::GET, step, &url, credentials).await?;
    let registry_reason = if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        let scope_error = insufficient_scope(&response);
        let body = read_body(&mut response).await.unwrap_or_default();
        registry_reason(&body, scope_error, &[auth.password.expose_secret(), secret_str(&secret)])
    } else {
        format!("HEAD answered {status}, GET answered {}", response.status())
    };
    Err(VerifyError::RepositoryDenied {
        step,
        url: url.to_string(),
        status,
        username: auth.username.clone(),
        repository: repository.to_string(),
        registry_reason,
    })
}

fn secret_str(secret: &Option<SecretString>) -> &str {
    secret.as_ref().map(|s| s.expose_secret()).unwrap_or_default()
}

/// Whether a 401's challenge says `error="insufficient_scope"` (RFC 6750
/// section 3.1), as Distribution's token access controller sends when the
/// token lacks the access (distribution/distribution
/// `registry/auth/token/accesscontroller.go`, `challengeParams`).
fn insufficient_scope(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().replace(' ', "").contains("error=\"insufficient_scope\""))
}

/// The registry's reason for a refusal, for a condition message: the first
/// entry of a Distribution-style `{"errors":[{"code","message"}]}` body (as
/// Distribution, Harbor, ECR, Artifact Registry and ACR answer), or an
/// OAuth `{"error","error_description"}` body, or the first line of a
/// short text body; then ` (insufficient_scope)` when the challenge said
/// so. Control characters become spaces, runs of spaces one, the result is
/// cut after 300 bytes (marked `…`), and any of `secrets` (the password, the token)
/// in it is replaced by `<redacted>`, so a registry that echoes a request
/// cannot leak one.
pub fn registry_reason(body: &[u8], insufficient_scope: bool, secrets: &[&str]) -> String {
    let text = |v: &serde_json::Value, key: &str| v.get(key).and_then(serde_json::Value::as_str).map(str::to_string);
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        if let Some(first) = v.get("errors").and_then(|e| e.as_array()).and_then(|a| a.first()) {
            let code = text(first, "code");
            let message = text(first, "message");
            return match (code, message) {
                (Some(c), Some(m)) if !m.is_empty() => Some(format!("{c}: {m}")),
                (Some(c), _) => Some(c),
                (None, Some(m)) => Some(m),
                (None, None) => None,
            };
        }
        match (text(v, "error"), text(v, "error_description")) {
            (Some(e), Some(d)) if !d.is_empty() => Some(format!("{e}: {d}")),
            (Some(e), _) => Some(e),
            (None, _) => text(v, "message").or_else(|| text(v, "details")),
        }
    });
    let reason = from_json.or_else(|| {
        let body = std::str::from_utf8(body).ok()?;
        let line = body.lines().map(str::trim).find(|l| !l.is_empty())?;
        // An HTML error page says nothing useful in a condition.
        (!line.starts_with('<')).then(|| line.to_string())
    });
    let mut reason = reason.unwrap_or_else(|| "no reason given".to_string());
    if insufficient_scope {
        reason.push_str(" (insufficient_scope)");
    }
    let mut cleaned = String::with_capacity(reason.len());
    for c in reason.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if !(c == ' ' && cleaned.ends_with(' ')) {
            cleaned.push(c);
        }
    }
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        cleaned = cleaned.replace(secret, "<redacted>");
    }
    truncate(cleaned.trim(), 300)
}

/// Credentials of one request.
#[derive(Clone)]
enum Auth<'a> {
    None,
    Basic(&'a str, &'a SecretString),
    Bearer(SecretString),
}

/// The client and the timeout it was built with.
struct Ctx<'a> {
    client: &'a reqwest::Client,
    timeout: Duration,
}

impl Ctx<'_> {
    async fn get(&self, step: Step, url: &Url, auth: Auth<'_>) -> Result<reqwest::Response, VerifyError> {
        self.send(reqwest::Method::GET, step, url, auth).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        step: Step,
        url: &Url,
        auth: Auth<'_>,
    ) -> Result<reqwest::Response, VerifyError> {
        let mut request = self.client.request(method, url.clone());
        if step == Step::RepositoryRead {
            request = request.header(header::ACCEPT, MANIFEST_ACCEPT);
        }
        // reqwest marks both Authorization headers as sensitive.
        let request = match auth {
            Auth::None => request,
            Auth::Basic(user, pass) => request.basic_auth(user, Some(pass.expose_secret())),
            Auth::Bearer(token) => request.bearer_auth(token.expose_secret()),
        };
        request.send().await.map_err(|e| self.transport_error(step, url, &e))
    }

    async fn fetch_token(&self, url: &Url, auth: Auth<'_>, username: &str) -> Result<SecretString, VerifyError> {
        let step = Step::TokenRequest;
        let mut response = self.get(step, url, auth).await?;
        match response.status() {
            StatusCode::OK => {}
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(VerifyError::Rejected {
                    step,
                    url: url.to_string(),
                    status,
                    username: username.to_string(),
                });
            }
            status => return Err(unexpected(step, url, status)),
        }
        let bad = |detail: String| VerifyError::BadTokenResponse { step, url: url.to_string(), detail };
        let body = read_body(&mut response).await.map_err(|e| match e {
            BodyError::Read(e) => self.transport_error(step, url, &e),
            BodyError::TooLarge => bad(format!("larger than {} KiB", MAX_BODY / 1024)),
        })?;
        parse_token_response(&body).map_err(bad)
    }

    /// A token scoped to `repository`. A token service that refuses the
    /// scope outright (401 or 403; Distribution's own answers with a token
    /// holding less instead, docs/spec/auth/token.md) is a refusal of the
    /// repository, with its reason.
    async fn fetch_repository_token(
        &self,
        url: &Url,
        auth: &RegistryAuth,
        repository: &str,
    ) -> Result<SecretString, VerifyError> {
        let step = Step::RepositoryToken;
        let mut response = self.get(step, url, Auth::Basic(&auth.username, &auth.password)).await?;
        let status = response.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            let body = read_body(&mut response).await.unwrap_or_default();
            return Err(VerifyError::RepositoryDenied {
                step,
                url: url.to_string(),
                status,
                username: auth.username.clone(),
                repository: repository.to_string(),
                registry_reason: registry_reason(&body, false, &[auth.password.expose_secret()]),
            });
        }
        if status != StatusCode::OK {
            return Err(unexpected(step, url, status));
        }
        let bad = |detail: String| VerifyError::BadTokenResponse { step, url: url.to_string(), detail };
        let body = read_body(&mut response).await.map_err(|e| match e {
            BodyError::Read(e) => self.transport_error(step, url, &e),
            BodyError::TooLarge => bad(format!("larger than {} KiB", MAX_BODY / 1024)),
        })?;
        parse_token_response(&body).map_err(bad)
    }

    fn transport_error(&self, step: Step, url: &Url, e: &reqwest::Error) -> VerifyError {
        let url = url.to_string();
        if e.is_timeout() {
            return VerifyError::Timeout { step, url, timeout: self.timeout };
        }
        if let Some(tls) = find_rustls_error(e) {
            let hint = match tls {
                rustls::Error::InvalidMessage(_) => " (the server may speak plain HTTP; see verify.plainHttp)",
                _ => "",
            };
            return VerifyError::TlsHandshake { step, url, cause: format!("{tls}{hint}") };
        }
        VerifyError::Unreachable { step, url, cause: transport_cause(e) }
    }
}

fn unexpected(step: Step, url: &Url, status: StatusCode) -> VerifyError {
    let hint = if status.is_redirection() {
        " (redirects are followed only to the same scheme, host and port)"
    } else if status == StatusCode::BAD_REQUEST && url.scheme() == "http" {
        " (the server may expect HTTPS)"
    } else {
        ""
    };
    VerifyError::UnexpectedStatus { step, url: url.to_string(), status, hint: hint.to_string() }
}

/// The challenge of a `401`, from all its `WWW-Authenticate` headers.
fn challenge_of(response: &reqwest::Response) -> Result<Challenge, String> {
    let mut values = Vec::new();
    for value in response.headers().get_all(header::WWW_AUTHENTICATE) {
        values.push(value.to_str().map_err(|_| "WWW-Authenticate is not visible ASCII".to_string())?);
    }
    if values.is_empty() {
        return Err("no WWW-Authenticate header".into());
    }
    parse_challenge(&values.join(", ")).map_err(|e| e.to_string())
}

/// `token`, or else `access_token`, of a token service's JSON answer.
fn parse_token_response(body: &[u8]) -> Result<SecretString, String> {
    // serde_json's messages can quote input (the token), so only its
    // category and position are reported.
    let parsed: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        let what = match e.classify() {
            Category::Io => "I/O error",
            Category::Syntax => "not JSON",
            Category::Data => "unexpected JSON structure",
            Category::Eof => "truncated JSON",
        };
        format!("{what} at line {} column {}", e.line(), e.column())
    })?;
    let object = parsed.as_object().ok_or("not a JSON object")?;
    let token = ["token", "access_token"]
        .into_iter()
        .filter_map(|key| object.get(key).and_then(serde_json::Value::as_str))
        .find(|t| !t.is_empty())
        .ok_or("neither token nor access_token is a non-empty string")?;
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token contains characters not allowed in a header".into());
    }
    Ok(token.into())
}

/// `{scheme}://{host}/v2/` for a registry written as `host[:port]` (a scheme
/// or path in it is ignored; `docker.io` means `registry-1.docker.io`).
fn v2_url(registry: &str, plain_http: bool) -> Result<Url, VerifyError> {
    let invalid =
        |detail: &str| VerifyError::InvalidRegistry { registry: registry.to_string(), detail: detail.to_string() };
    let mut host = registry.trim();
    for prefix in ["https://", "http://"] {
        if host.len() >= prefix.len()
            && host.is_char_boundary(prefix.len())
            && host[..prefix.len()].eq_ignore_ascii_case(prefix)
        {
            host = &host[prefix.len()..];
        }
    }
    let host = host.split('/').next().unwrap_or_default().to_ascii_lowercase();
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '?' | '#' | '\\')) {
        return Err(invalid("expected host[:port]"));
    }
    let host = match host.as_str() {
        "docker.io" | "index.docker.io" => "registry-1.docker.io".to_string(),
        _ => host,
    };
    let scheme = if plain_http { "http" } else { "https" };
    let url = Url::parse(&format!("{scheme}://{host}/v2/")).map_err(|e| invalid(&e.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) || url.path() != "/v2/" {
        return Err(invalid("expected host[:port]"));
    }
    Ok(url)
}

/// `realm?service=..&scope=..` (absent parameters omitted, the realm's own
/// query kept). The realm must be HTTPS unless `plain_http` allows HTTP:
/// the password is sent there.
fn token_url(realm: &str, service: Option<&str>, scope: Option<&str>, plain_http: bool) -> Result<Url, String> {
    let mut url = Url::parse(realm).map_err(|e| format!("realm {:?} is not a URL: {e}", truncate(realm, 200)))?;
    match url.scheme() {
        "https" => {}
        "http" if plain_http => {}
        "http" => {
            return Err(format!(
                "realm {url} is plain HTTP; the password is only sent there when verify.plainHttp is set"
            ));
        }
        other => return Err(format!("realm scheme {other:?} is not http(s)")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("realm {url} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("realm must not contain user information".into());
    }
    url.set_fragment(None);
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = service {
            query.append_pair("service", service);
        }
        if let Some(scope) = scope {
            query.append_pair("scope", scope);
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(url)
}

fn build_client(opts: &VerifyOptions) -> Result<reqwest::Client, VerifyError> {
    let tls = tls_config(opts)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("regcred/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(opts.timeout)
        .timeout(opts.timeout)
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt.previous().first().is_none_or(|first| first.origin() == attempt.url().origin());
            if !same_origin {
                attempt.stop()
            } else if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(|e| VerifyError::TlsSetup(transport_cause(&e)))
}

/// rustls with the `ring` provider, the platform's roots and the CA bundle.
fn tls_config(opts: &VerifyOptions) -> Result<rustls::ClientConfig, VerifyError> {
    crate::http::tls_config(opts.ca_bundle.as_deref(), opts.plain_http).map_err(|e| match e {
        crate::http::SetupError::InvalidCaBundle(m) => VerifyError::InvalidCaBundle(m),
        crate::http::SetupError::Tls(m) => VerifyError::TlsSetup(m),
    })
}

/// An authentication challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP Basic. `realm` is empty when the server sent none.
    Basic { realm: String },
    /// The Docker registry token protocol.
    Bearer {
        /// Token service URL.
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Why a `WWW-Authenticate` header could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// No challenge at all.
    #[error("empty challenge")]
    Empty,
    /// Not RFC 7235 syntax.
    #[error("malformed challenge: {detail}")]
    Malformed {
        /// What is wrong and at which byte.
        detail: String,
    },
    /// A Bearer challenge without (or with an empty) `realm`.
    #[error("Bearer challenge has no realm")]
    MissingRealm,
    /// Neither Basic nor Bearer was offered.
    #[error("unsupported authentication scheme(s): {0}")]
    Unsupported(String),
}

/// Parses a `WWW-Authenticate` value: one or more RFC 7235 challenges, each
/// a scheme and comma-separated `key=value` parameters with token or quoted
/// values, parsed by the `http-auth` crate. Prefers Bearer over Basic when
/// both are offered; schemes and parameter names are case-insensitive,
/// unknown parameters are ignored, and a repeated parameter keeps its first
/// value. Several `WWW-Authenticate` headers are one list, joined with
/// commas. Never panics.
///
/// No fallback for non-RFC syntax: every registry checked (Distribution,
/// Docker Hub, Harbor, ACR, ECR, GAR, GHCR, Quay, Nexus) sends RFC syntax,
/// and Docker's and containerd's own parsers would not accept more (an
/// unquoted URL realm, for example).
pub fn parse_challenge(header: &str) -> Result<Challenge, ChallengeError> {
    // A field value has no leading or trailing whitespace (RFC 9110 5.5):
    // HTTP stacks strip it, and so does this.
    let header = header.trim_matches([' ', '\t']);
    if header.split(',').all(|element| element.trim_matches([' ', '\t']).is_empty()) {
        return Err(ChallengeError::Empty);
    }
    let header = normalize(header);
    let challenges = http_auth::parse_challenges(&header).map_err(|e| {
        // "invalid byte at byte 7: <the header>": the header is not repeated.
        let text = e.to_string();
        let detail = text.split(": ").next().unwrap_or_default();
        ChallengeError::Malformed { detail: truncate(detail, 100) }
    })?;
    let find = |scheme: &str| challenges.iter().find(|c| c.scheme.eq_ignore_ascii_case(scheme));
    let param = |c: &http_auth::ChallengeRef<'_>, name: &str| {
        c.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.to_unescaped())
    };
    if let Some(bearer) = find("bearer") {
        let realm = param(bearer, "realm").filter(|r| !r.is_empty()).ok_or(ChallengeError::MissingRealm)?;
        return Ok(Challenge::Bearer { realm, service: param(bearer, "service"), scope: param(bearer, "scope") });
    }
    if let Some(basic) = find("basic") {
        return Ok(Challenge::Basic { realm: param(basic, "realm").unwrap_or_default() });
    }
    let schemes: Vec<&str> = challenges.iter().map(|c| c.scheme).collect();
    Err(ChallengeError::Unsupported(truncate(&schemes.join(", "), 100)))
}

/// `header` in the shape http-auth 0.1.10 reads, where it refuses what
/// RFC 7235 allows or what the hand-written parser before it accepted:
/// - whitespace (`SP`/`HTAB`) outside quoted strings becomes one space, and
///   none around `=` (RFC 7235 allows `1*SP` after a scheme, `BWS` around
///   `=` and `OWS` around commas; http-auth takes exactly one space);
/// - a challenge with a token68 instead of parameters (`Negotiate YIIB…==`,
///   sent by SPNEGO proxies in front of registries) keeps only its scheme,
///   which is all regcred needs of a scheme it does not use;
/// - an unquoted parameter value that is not a token (an unquoted URL such
///   as `realm=https://auth.example/token`) is quoted.
///
/// Anything else is left as it is, so malformed input stays malformed.
fn normalize(header: &str) -> String {
    let mut elements = Vec::new();
    let (mut current, mut quoted, mut escaped) = (String::new(), false, false);
    for c in header.chars() {
        if quoted {
            current.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                current.push(c);
            }
            ',' => elements.push(normalize_element(&std::mem::take(&mut current))),
            ' ' | '\t' => {
                if !current.is_empty() && !current.ends_with([' ', '=']) {
                    current.push(' ');
                }
            }
            '=' => {
                if current.ends_with(' ') {
                    current.pop();
                }
                current.push('=');
            }
            c => current.push(c),
        }
    }
    elements.push(normalize_element(&current));
    elements.join(",")
}

/// One comma-separated element: `scheme`, `scheme token68`,
/// `scheme name=value` or `name=value`, whitespace already normalised.
fn normalize_element(element: &str) -> String {
    let element = element.trim_end();
    let (scheme, rest) = match element.split_once(' ') {
        Some((scheme, rest)) if !scheme.contains('=') => (Some(scheme), rest),
        _ => (None, element),
    };
    let is_token68 = |s: &str| {
        let body = s.trim_end_matches('=');
        !body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
    };
    if let Some(scheme) = scheme
        && is_token68(rest)
    {
        return scheme.to_string();
    }
    let rest = match rest.split_once('=') {
        Some((name, value))
            if !value.is_empty()
                && !value.starts_with('"')
                && !value.bytes().all(is_tchar)
                && value.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') =>
        {
            format!("{name}=\"{value}\"")
        }
        _ => rest.to_string(),
    };
    match scheme {
        Some(scheme) => format!("{scheme} {rest}"),
        None => rest,
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Fuzzing entry point (`fuzz/`): the registry token answer parser on
/// arbitrary input. Not an API.
#[doc(hidden)]
pub fn fuzz_token_response(data: &[u8]) {
    let _ = parse_token_response(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer { realm: realm.into(), service: service.map(Into::into), scope: scope.map(Into::into) }
    }

    fn basic(realm: &str) -> Challenge {
        Challenge::Basic { realm: realm.into() }
    }

    #[test]
    fn parses_a_docker_hub_bearer_challenge() {
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#),
            Ok(bearer("https://auth.docker.io/token", Some("registry.docker.io"), None))
        );
    }

    #[test]
    fn parses_scope_with_colons_and_commas_inside_quotes() {
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://a.example/token",service="reg",scope="repository:a/b:pull,push""#),
            Ok(bearer("https://a.example/token", Some("reg"), Some("repository:a/b:pull,push")))
        );
    }

    #[test]
    fn parses_basic() {
        assert_eq!(parse_challenge(r#"Basic realm="regcred-test""#), Ok(basic("regcred-test")));
        assert_eq!(parse_challenge("Basic"), Ok(basic("")));
        assert_eq!(parse_challenge(r#"Basic realm="x", charset="UTF-8""#), Ok(basic("x")));
    }

    #[test]
    fn schemes_and_names_are_case_insensitive() {
        assert_eq!(
            parse_challenge(r#"bEaReR REALM="https://t.example/",Service="s""#),
            Ok(bearer("https://t.example/", Some("s"), None))
        );
        assert_eq!(parse_challenge(r#"BASIC Realm="r""#), Ok(basic("r")));
    }

    #[test]
    fn spaces_collapse_outside_quoted_strings_only() {
        assert_eq!(normalize("Bearer   realm=\"a  b\",  x=\"\\\"  \""), "Bearer realm=\"a  b\",x=\"\\\"  \"");
        assert_eq!(
            parse_challenge(r#"Basic   realm="two  spaces""#),
            Ok(basic("two  spaces")),
            "1*SP after the scheme, spaces inside the value kept"
        );
    }

    #[test]
    fn values_keep_their_case() {
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://T.example/Token",service=Reg"#),
            Ok(bearer("https://T.example/Token", Some("Reg"), None))
        );
    }

    #[test]
    fn unescapes_quoted_strings() {
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://t.example/a\"b\\c\d",scope="x\,y""#),
            Ok(bearer("https://t.example/a\"b\\cd", None, Some("x,y")))
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="with \"quotes\" and, commas""#),
            Ok(basic("with \"quotes\" and, commas"))
        );
    }

    #[test]
    fn tolerates_whitespace_and_empty_list_elements() {
        let want = bearer("https://t.example/", Some("s"), Some("p"));
        for header in [
            r#"Bearer realm="https://t.example/",service="s",scope="p""#,
            r#"  Bearer   realm = "https://t.example/" ,  service= "s",scope ="p"  "#,
            "Bearer\trealm=\"https://t.example/\",\tservice=\"s\" ,\tscope=\"p\"",
            r#", Bearer realm="https://t.example/",, service="s", ,scope="p" ,"#,
        ] {
            assert_eq!(parse_challenge(header), Ok(want.clone()), "{header}");
        }
    }

    #[test]
    fn parses_what_real_registries_send() {
        let cases = [
            (
                "Distribution (token auth spec example)",
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
                bearer(
                    "https://auth.docker.io/token",
                    Some("registry.docker.io"),
                    Some("repository:samalba/my-app:pull,push"),
                ),
            ),
            (
                "Docker Hub",
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
                bearer("https://auth.docker.io/token", Some("registry.docker.io"), None),
            ),
            (
                "Harbor",
                r#"Bearer realm="https://harbor.example/service/token",service="harbor-registry""#,
                bearer("https://harbor.example/service/token", Some("harbor-registry"), None),
            ),
            (
                "ACR",
                r#"Bearer realm="https://x.azurecr.io/oauth2/token",service="x.azurecr.io""#,
                bearer("https://x.azurecr.io/oauth2/token", Some("x.azurecr.io"), None),
            ),
            (
                "ECR",
                r#"Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",service="ecr.amazonaws.com""#,
                basic("https://123456789012.dkr.ecr.us-east-1.amazonaws.com/"),
            ),
            (
                "GAR (Artifact Registry)",
                r#"Bearer realm="https://europe-docker.pkg.dev/v2/token""#,
                bearer("https://europe-docker.pkg.dev/v2/token", None, None),
            ),
            (
                "GHCR",
                r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull""#,
                bearer("https://ghcr.io/token", Some("ghcr.io"), Some("repository:user/image:pull")),
            ),
            (
                "Quay",
                r#"Bearer realm="https://quay.io/v2/auth",service="quay.io""#,
                bearer("https://quay.io/v2/auth", Some("quay.io"), None),
            ),
            (
                "Nexus (upper-case scheme)",
                r#"BASIC realm="Sonatype Nexus Repository Manager""#,
                basic("Sonatype Nexus Repository Manager"),
            ),
            (
                "lower-case scheme",
                r#"bearer realm="https://quay.io/v2/auth",service="quay.io""#,
                bearer("https://quay.io/v2/auth", Some("quay.io"), None),
            ),
            (
                "Distribution error challenge",
                r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull",error="insufficient_scope""#,
                bearer("https://ghcr.io/token", Some("ghcr.io"), Some("repository:a/b:pull")),
            ),
            (
                "two challenges in one header (Basic and Distribution Bearer)",
                r#"Basic realm="Registry", Bearer realm="https://harbor.example/service/token",service="harbor-registry""#,
                bearer("https://harbor.example/service/token", Some("harbor-registry"), None),
            ),
            (
                "two WWW-Authenticate headers, joined as challenge_of does",
                r#"Bearer realm="https://x.azurecr.io/oauth2/token",service="x.azurecr.io", Basic realm="x.azurecr.io""#,
                bearer("https://x.azurecr.io/oauth2/token", Some("x.azurecr.io"), None),
            ),
        ];
        for (registry, header, want) in cases {
            assert_eq!(parse_challenge(header), Ok(want), "{registry}: {header}");
        }
    }

    #[test]
    fn accepts_token_values_and_unquoted_urls() {
        assert_eq!(
            parse_challenge("Bearer realm=https://t.example/token?x=1,service=reg,scope=a:b:pull"),
            Ok(bearer("https://t.example/token?x=1", Some("reg"), Some("a:b:pull")))
        );
    }

    #[test]
    fn a_missing_comma_is_malformed_and_the_header_is_not_repeated() {
        assert_eq!(
            parse_challenge(r#"Bearer realm="a" service="b""#).unwrap_err().to_string(),
            "malformed challenge: invalid byte at byte 24"
        );
    }

    #[test]
    fn ignores_unknown_params_and_keeps_the_first_of_repeats() {
        assert_eq!(
            parse_challenge(
                r#"Bearer error="invalid_token",realm="https://one.example/",realm="https://two.example/",error_description="x""#
            ),
            Ok(bearer("https://one.example/", None, None))
        );
    }

    #[test]
    fn prefers_bearer_among_several_challenges() {
        let want = bearer("https://t.example/", Some("s"), None);
        for header in [
            r#"Basic realm="b", Bearer realm="https://t.example/",service="s""#,
            r#"Bearer realm="https://t.example/",service="s", Basic realm="b""#,
            r#"Negotiate, Basic realm="b",Bearer realm="https://t.example/", service="s""#,
            r#"Negotiate YIIBhwYGKwYBBQUCoIIB==, Bearer realm="https://t.example/",service="s""#,
        ] {
            assert_eq!(parse_challenge(header), Ok(want.clone()), "{header}");
        }
        assert_eq!(parse_challenge(r#"Negotiate abc=, Basic realm="b""#), Ok(basic("b")));
    }

    #[test]
    fn bearer_needs_a_realm() {
        for header in
            ["Bearer", r#"Bearer service="s""#, r#"Bearer realm="",service="s""#, r#"Bearer realm="", Basic realm="b""#]
        {
            assert_eq!(parse_challenge(header), Err(ChallengeError::MissingRealm), "{header}");
        }
    }

    #[test]
    fn rejects_unsupported_schemes_and_garbage() {
        assert_eq!(parse_challenge(""), Err(ChallengeError::Empty));
        assert_eq!(parse_challenge("  , ,"), Err(ChallengeError::Empty));
        assert_eq!(
            parse_challenge(r#"Digest realm="x", nonce="y""#),
            Err(ChallengeError::Unsupported("Digest".into()))
        );
        for header in [
            r#"Bearer realm="https://t.example/"#, // unterminated
            r#"Bearer realm="x\"#,                 // escape at the end
            r#"Bearer realm="a"b"#,                // junk after a quoted value
            r#"Bearer realm="a" service="b""#,     // missing comma
            r#"="x""#,                             // no scheme
            r#"Bearer ="x""#,                      // no name
            r#""Bearer" realm="x""#,               // quoted scheme
            "Bear(er realm=x",                     // bad scheme character
            "Bearer realm=a=\"b\"",                // quote inside a token value
            "Negotiate abc def",                   // two token68s
            "Bearer realm=\u{1}",                  // control character
            "Bearer \u{e9}t\u{e9}=1",              // non-token name
            "\u{0}",
        ] {
            assert!(
                matches!(parse_challenge(header), Err(ChallengeError::Malformed { .. })),
                "{header:?} gave {:?}",
                parse_challenge(header)
            );
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        let pieces = [
            "Bearer",
            "Basic",
            " ",
            "\t",
            ",",
            "=",
            "\"",
            "\\",
            "realm",
            "x",
            "é",
            "==",
            "\u{0}",
            "\u{7f}",
            "a/b",
            "\u{1F600}",
        ];
        // Every string of up to four pieces.
        let mut inputs = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for s in &inputs {
                for p in pieces {
                    next.push(format!("{s}{p}"));
                }
            }
            for s in &next {
                let _ = parse_challenge(s);
            }
            inputs = next;
        }
        // And every prefix of a realistic header, cut at any char.
        let h = r#"Bearer realm="https://é.example/t\"x",service="s",scope="a,b", Basic realm="b""#;
        for (i, _) in h.char_indices() {
            let _ = parse_challenge(&h[..i]);
            let _ = parse_challenge(&h[i..]);
        }
    }

    #[test]
    fn token_url_appends_service_and_scope() {
        let url = token_url("https://auth.example/token", Some("registry.example"), Some("repository:a/b:pull"), false)
            .unwrap();
        assert_eq!(url.as_str(), "https://auth.example/token?service=registry.example&scope=repository%3Aa%2Fb%3Apull");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            [("service".into(), "registry.example".into()), ("scope".into(), "repository:a/b:pull".into())]
        );
    }

    #[test]
    fn token_url_omits_absent_params_and_keeps_the_realms_query() {
        assert_eq!(
            token_url("https://auth.example/token", None, None, false).unwrap().as_str(),
            "https://auth.example/token"
        );
        assert_eq!(
            token_url("https://auth.example/token", Some("a b&c"), None, false).unwrap().as_str(),
            "https://auth.example/token?service=a+b%26c"
        );
        assert_eq!(
            token_url("https://auth.example/t?v=2#frag", None, Some("s"), false).unwrap().as_str(),
            "https://auth.example/t?v=2&scope=s"
        );
    }

    #[test]
    fn token_url_refuses_plain_http_unless_allowed_and_odd_realms() {
        assert!(token_url("http://auth.example/token", None, None, false).is_err());
        assert_eq!(
            token_url("http://127.0.0.1:9/token", Some("s"), None, true).unwrap().as_str(),
            "http://127.0.0.1:9/token?service=s"
        );
        for realm in
            ["/token", "auth.example/token", "ftp://auth.example/token", "https://user:pw@auth.example/token", ""]
        {
            assert!(token_url(realm, None, None, true).is_err(), "{realm}");
        }
    }

    #[test]
    fn pull_quota_is_read_from_docker_hubs_headers() {
        let mut h = header::HeaderMap::new();
        assert_eq!(pull_quota(&h), None, "registries that do not limit send nothing");
        h.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        assert_eq!(pull_quota(&h), None, "both headers or none");
        h.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        assert_eq!(pull_quota(&h), Some(PullQuota { limit: 100, remaining: 76, window_seconds: Some(21600) }));
        h.insert("ratelimit-limit", "200".parse().unwrap());
        h.insert("ratelimit-remaining", "0".parse().unwrap());
        assert_eq!(pull_quota(&h), Some(PullQuota { limit: 200, remaining: 0, window_seconds: None }));
        h.insert("ratelimit-remaining", "lots".parse().unwrap());
        assert_eq!(pull_quota(&h), None);
    }

    #[test]
    fn v2_url_from_registry_spellings() {
        let u = |r: &str, plain: bool| v2_url(r, plain).map(|u| u.to_string());
        assert_eq!(u("registry.example.com:5000", false).unwrap(), "https://registry.example.com:5000/v2/");
        assert_eq!(u("127.0.0.1:5000", true).unwrap(), "http://127.0.0.1:5000/v2/");
        assert_eq!(u("docker.io", false).unwrap(), "https://registry-1.docker.io/v2/");
        assert_eq!(u("https://index.docker.io/v1/", false).unwrap(), "https://registry-1.docker.io/v2/");
        assert_eq!(u("GHCR.io", false).unwrap(), "https://ghcr.io/v2/");
        assert_eq!(u("[::1]:5000", false).unwrap(), "https://[::1]:5000/v2/");
        for bad in ["", " ", "evil.example@good.example", "a b", "host:port", "h?x", "https://"] {
            assert!(matches!(v2_url(bad, false), Err(VerifyError::InvalidRegistry { .. })), "{bad:?}");
        }
    }

    #[test]
    fn token_responses() {
        let t = |b: &str| parse_token_response(b.as_bytes()).map(|s| s.expose_secret().to_string());
        assert_eq!(t(r#"{"token":"abc","expires_in":60}"#).unwrap(), "abc");
        assert_eq!(t(r#"{"access_token":"xyz"}"#).unwrap(), "xyz");
        assert_eq!(t(r#"{"token":"","access_token":"xyz"}"#).unwrap(), "xyz");
        assert!(t(r#"{"expires_in":60}"#).is_err());
        assert!(t("not json").is_err());
        assert!(t(r#"{"token":"a b"}"#).is_err());
        // serde_json would quote the string; the message must not.
        let e = t(r#"{"token":["hunter2-token"]}"#).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let e = t(r#"["hunter2-token"]"#).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn ca_bundle_must_be_pem_certificates() {
        let with = |pem: &str| VerifyOptions { ca_bundle: Some(pem.into()), ..VerifyOptions::default() };
        assert!(matches!(tls_config(&with("not a certificate")), Err(VerifyError::InvalidCaBundle(_))));
        assert!(matches!(
            tls_config(&with("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")),
            Err(VerifyError::InvalidCaBundle(_))
        ));
    }

    #[test]
    fn tls_config_builds_without_a_global_provider() {
        let config = tls_config(&VerifyOptions { plain_http: true, ..VerifyOptions::default() }).unwrap();
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
        build_client(&VerifyOptions { plain_http: true, ..VerifyOptions::default() }).unwrap();
    }

    #[test]
    fn debug_output_is_redacted() {
        let opts = VerifyOptions { ca_bundle: Some("-----BEGIN CERTIFICATE-----".into()), ..VerifyOptions::default() };
        let s = format!("{opts:?}");
        assert!(!s.contains("BEGIN"), "{s}");
        assert!(s.contains("27 bytes of PEM"), "{s}");
        let e = VerifyError::Rejected {
            step: Step::BasicLogin,
            url: "https://r.example/v2/".into(),
            status: StatusCode::UNAUTHORIZED,
            username: "bot".into(),
        };
        assert_eq!(e.reason(), "Rejected");
        assert!(e.is_rejected());
        assert_eq!(
            e.to_string(),
            "login with Basic auth: GET https://r.example/v2/ returned 401 Unauthorized: the credentials of user \"bot\" were rejected"
        );
    }

    // -----------------------------------------------------------------------
    // Repositories.

    fn plan(repositories: &[&str]) -> VerifyPlan {
        VerifyPlan {
            options: VerifyOptions { plain_http: true, timeout: Duration::from_secs(5), ..VerifyOptions::default() },
            repositories: repositories.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn repository_entries_split_like_docker_references() {
        assert_eq!(split_repository("team/app"), Ok((None, "team/app")));
        assert_eq!(split_repository("app"), Ok((None, "app")));
        assert_eq!(split_repository("proj/repo/img"), Ok((None, "proj/repo/img")));
        assert_eq!(split_repository("europe-docker.pkg.dev/p/r/i"), Ok((Some("europe-docker.pkg.dev"), "p/r/i")));
        assert_eq!(split_repository("127.0.0.1:5000/a_b/c.d__e--f"), Ok((Some("127.0.0.1:5000"), "a_b/c.d__e--f")));
        assert_eq!(split_repository("localhost/x"), Ok((Some("localhost"), "x")));
        for bad in [
            "",
            "Team/app",
            "team//app",
            "team/app/",
            "/app",
            "a/-b",
            "a/b-",
            "a/b..c",
            "a/b___c",
            "a b",
            "a/b:v1",
            "host.example/",
        ] {
            assert!(split_repository(bad).is_err(), "{bad:?} accepted");
        }
        assert!(split_repository(&format!("a/{}", "b".repeat(254))).is_err(), "over 255 characters");
        assert!(path_component_ok("a-----b") && path_component_ok("a.b_c__d") && path_component_ok("0"));
    }

    #[test]
    fn repositories_apply_to_every_registry_or_to_the_named_one() {
        let p =
            plan(&["team/app", "ghcr.io/org/tool", "127.0.0.1:5000/local/x", "docker.io/library/alpine", "team/app"]);
        assert_eq!(p.repositories_for("registry.example").unwrap(), ["team/app"]);
        assert_eq!(p.repositories_for("GHCR.io").unwrap(), ["team/app", "org/tool"]);
        assert_eq!(p.repositories_for("127.0.0.1:5000").unwrap(), ["team/app", "local/x"]);
        assert_eq!(p.repositories_for("127.0.0.1:5001").unwrap(), ["team/app"]);
        assert_eq!(
            p.repositories_for("https://index.docker.io/v1/").unwrap(),
            ["team/app", "library/alpine"],
            "docker.io and index.docker.io are one registry"
        );
        let e = plan(&["team/App"]).repositories_for("r.example").unwrap_err();
        assert_eq!(e.reason(), "InvalidRepository");
        assert!(e.to_string().contains("\"team/App\""), "{e}");
        assert!(VerifyPlan::from(&VerifyOptions::default()).repositories.is_empty());
        // An entry for a registry the credential does not log in to would
        // be checked nowhere: named, so the caller refuses it.
        assert_eq!(p.unmatched(&["ghcr.io", "127.0.0.1:5000", "index.docker.io"]), Vec::<String>::new());
        assert_eq!(p.unmatched(&["ghcr.io"]), ["127.0.0.1:5000/local/x", "docker.io/library/alpine"]);
        let policy = VerifyPolicy {
            enabled: true,
            plain_http: Some(true),
            repositories: Some(vec!["team/app".into()]),
            ..VerifyPolicy::default()
        };
        let from_policy = VerifyPlan::from_policy(&policy);
        assert!(from_policy.options.plain_http);
        assert_eq!(from_policy.repositories, ["team/app"]);
    }

    #[test]
    fn registry_reasons_are_read_cleaned_and_redacted() {
        let distribution = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository","Name":"team/app","Action":"pull"}]}]}"#;
        assert_eq!(
            registry_reason(distribution, true, &[]),
            "UNAUTHORIZED: authentication required (insufficient_scope)"
        );
        let ecr = br#"{"errors":[{"code":"DENIED","message":"User: arn:aws:iam::123456789012:user/ci is not authorized to perform: ecr:BatchGetImage on resource: arn:aws:ecr:us-east-1:123456789012:repository/team/app because no resource-based policy allows the ecr:BatchGetImage action"}]}"#;
        let reason = registry_reason(ecr, false, &[]);
        assert!(reason.starts_with("DENIED: User: arn:aws:iam::123456789012:user/ci is not authorized"), "{reason}");
        assert!(reason.len() <= 303);
        assert_eq!(
            registry_reason(br#"{"error":"invalid_grant","error_description":"no access"}"#, false, &[]),
            "invalid_grant: no access"
        );
        assert_eq!(registry_reason(br#"{"errors":[{"code":"DENIED"}]}"#, false, &[]), "DENIED");
        assert_eq!(registry_reason(b"\n  Not Authorized\nmore\n", false, &[]), "Not Authorized");
        assert_eq!(registry_reason(b"<html><body>403</body></html>", false, &[]), "no reason given");
        assert_eq!(registry_reason(b"", true, &[]), "no reason given (insufficient_scope)");
        assert_eq!(
            registry_reason(b"{\"errors\":[{\"code\":\"DENIED\",\"message\":\"a\\u0000\\n\\tb   c\"}]}", false, &[]),
            "DENIED: a b c"
        );
        let echoed = br#"{"errors":[{"code":"DENIED","message":"bad token hunter2-token for pw hunter2-pass"}]}"#;
        let reason = registry_reason(echoed, false, &["hunter2-pass", "hunter2-token", ""]);
        assert_eq!(reason, "DENIED: bad token <redacted> for pw <redacted>");
        let long = format!(r#"{{"errors":[{{"code":"DENIED","message":"{}"}}]}}"#, "x".repeat(1000));
        let cut = registry_reason(long.as_bytes(), false, &[]);
        assert!(cut.len() <= 303 && cut.ends_with('…'), "{cut}");
    }

    /// A registry on loopback answering as `answer` says.
    struct Mock {
        addr: std::net::SocketAddr,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Mock {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// (method, path and query, Authorization header) -> (status, WWW-Authenticate, body).
    type Answer = dyn Fn(&str, &str, &str, &str) -> (u16, Option<String>, String) + Send + Sync;

    async fn mock(answer: std::sync::Arc<Answer>) -> Mock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let host = addr.to_string();
        let router = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let answer = answer.clone();
            let host = host.clone();
            async move {
                let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
                let authorization =
                    req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let (status, challenge, body) = answer(&host, req.method().as_str(), &target, &authorization);
                let mut response = axum::http::Response::builder().status(status);
                if let Some(c) = challenge {
                    response = response.header("WWW-Authenticate", c);
                }
                response.header("Content-Type", "application/json").body(axum::body::Body::from(body)).unwrap()
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Mock { addr, task }
    }

    const PASS: &str = "mock-password-7f3a";
    const TOKEN: &str = "mock-token-for";

    fn basic_header(user: &str, pass: &str) -> String {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
    }

    /// A Distribution-style registry and token service in one: tokens name
    /// the repositories they grant (`mock-token-for:a/b,c/d`); `granted` are
    /// the repositories user `u` may pull; `refuse_at_token` makes the
    /// token service answer 403 for a scope it does not grant.
    fn bearer_registry(granted: &'static [&'static str], refuse_at_token: bool) -> std::sync::Arc<Answer> {
        std::sync::Arc::new(move |host: &str, method: &str, target: &str, authorization: &str| {
            let challenge = |scope: Option<&str>, error: bool| {
                let mut c = format!(r#"Bearer realm="http://{host}/token",service="mock""#);
                if let Some(s) = scope {
                    c.push_str(&format!(r#",scope="{s}""#));
                }
                if error {
                    c.push_str(r#",error="insufficient_scope""#);
                }
                Some(c)
            };
            if let Some(query) = target.strip_prefix("/token?") {
                if authorization != basic_header("u", PASS) {
                    return (401, None, r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad login"}]}"#.into());
                }
                let scopes: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v.to_string())
                    .collect();
                let mut names = Vec::new();
                for scope in &scopes {
                    let name = scope.trim_start_matches("repository:").trim_end_matches(":pull");
                    if granted.contains(&name) {
                        names.push(name.to_string());
                    } else if refuse_at_token {
                        let body =
                            r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
                        return (403, None, body.into());
                    }
                }
                return (200, None, format!(r#"{{"token":"{TOKEN}:{}"}}"#, names.join(",")));
            }
            let token = authorization
                .strip_prefix("Bearer ")
                .and_then(|t| t.strip_prefix(TOKEN))
                .map(|t| t.trim_start_matches(':'));
            if target == "/v2/" {
                return match token {
                    Some(_) => (200, None, "{}".into()),
                    None => (401, challenge(None, false), "{}".into()),
                };
            }
            let name =
                target.strip_prefix("/v2/").and_then(|p| p.strip_suffix("/manifests/latest")).unwrap_or_default();
            let scope = format!("repository:{name}:pull");
            match token {
                Some(t) if t.split(',').any(|n| n == name) => {
                    (404, None, r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.into())
                }
                Some(_) => {
                    let body = if method == "HEAD" {
                        String::new()
                    } else {
                        format!(
                            r#"{{"errors":[{{"code":"UNAUTHORIZED","message":"authentication required","detail":[{{"Type":"repository","Name":"{name}","Action":"pull"}}]}}]}}"#
                        )
                    };
                    (401, challenge(Some(&scope), true), body)
                }
                None => (401, challenge(Some(&scope), false), "{}".into()),
            }
        })
    }

    fn assert_no_secrets(e: &VerifyError) {
        for text in [e.to_string(), format!("{e:?}")] {
            assert!(!text.contains(PASS) && !text.contains(TOKEN), "{text}");
        }
    }

    #[tokio::test]
    async fn a_bearer_registry_grants_one_repository_and_refuses_another() {
        let m = mock(bearer_registry(&["team/app"], false)).await;
        let auth =
            RegistryAuth { registry: m.addr.to_string(), username: "u".into(), password: PASS.to_string().into() };
        verify(&auth, plan(&[])).await.expect("the login alone");
        verify(&auth, plan(&["team/app"])).await.expect("a granted repository (404 manifest unknown) passes");
        let e = verify(&auth, plan(&["team/app", "other/app"])).await.unwrap_err();
        let VerifyError::RepositoryDenied { step, status, repository, registry_reason, url, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!((*step, *status), (Step::RepositoryRead, StatusCode::UNAUTHORIZED));
        assert_eq!(repository, "other/app");
        assert!(url.ends_with("/v2/other/app/manifests/latest"), "{url}");
        assert_eq!(registry_reason, "UNAUTHORIZED: authentication required (insufficient_scope)");
        assert_eq!(e.reason(), "RepositoryDenied");
        assert!(e.is_rejected());
        let message = e.to_string();
        assert!(
            message.contains("user \"u\" may not pull repository \"other/app\"")
                && message.contains("the registry says: UNAUTHORIZED: authentication required"),
            "{message}"
        );
        assert_no_secrets(&e);
        // A wrong password still fails at the login, as before.
        let wrong = RegistryAuth { password: "nope-nope".to_string().into(), ..auth.clone() };
        let e = verify(&wrong, plan(&["team/app"])).await.unwrap_err();
        assert!(matches!(e, VerifyError::Rejected { step: Step::TokenRequest, .. }), "{e:?}");
    }

    #[tokio::test]
    async fn a_token_service_that_refuses_the_scope_is_a_refusal_with_its_reason() {
        let m = mock(bearer_registry(&["team/app"], true)).await;
        let auth =
            RegistryAuth { registry: m.addr.to_string(), username: "u".into(), password: PASS.to_string().into() };
        verify(&auth, plan(&["team/app"])).await.unwrap();
        let e = verify(&auth, plan(&["other/app"])).await.unwrap_err();
        let VerifyError::RepositoryDenied { step, status, registry_reason, .. } = &e else { panic!("{e:?}") };
        assert_eq!((*step, *status), (Step::RepositoryToken, StatusCode::FORBIDDEN));
        assert_eq!(registry_reason, "DENIED: requested access to the resource is denied");
        assert_no_secrets(&e);
    }

    #[tokio::test]
    async fn a_basic_registry_answering_403_denied_is_a_refusal() {
        // ECR's way: Basic auth on every request, 403 DENIED for a
        // repository the principal may not pull.
        let m = mock(std::sync::Arc::new(|host: &str, method: &str, target: &str, authorization: &str| {
            if authorization != basic_header("AWS", PASS) {
                return (401, Some(format!(r#"Basic realm="https://{host}/",service="ecr.amazonaws.com""#)), "{}".into());
            }
            match target {
                "/v2/" | "/v2/team/app/manifests/latest" => (200, None, "{}".into()),
                _ if method == "HEAD" => (403, None, String::new()),
                _ => (
                    403,
                    None,
                    r#"{"errors":[{"code":"DENIED","message":"User: arn:aws:iam::123456789012:user/ci is not authorized to perform: ecr:BatchGetImage"}]}"#.into(),
                ),
            }
        }))
        .await;
        let auth =
            RegistryAuth { registry: m.addr.to_string(), username: "AWS".into(), password: PASS.to_string().into() };
        verify(&auth, plan(&["team/app"])).await.unwrap();
        let e = verify(&auth, plan(&["team/app", "secret/app"])).await.unwrap_err();
        let VerifyError::RepositoryDenied { status, registry_reason, repository, .. } = &e else { panic!("{e:?}") };
        assert_eq!(*status, StatusCode::FORBIDDEN);
        assert_eq!(repository, "secret/app");
        assert_eq!(
            registry_reason,
            "DENIED: User: arn:aws:iam::123456789012:user/ci is not authorized to perform: ecr:BatchGetImage"
        );
        assert_no_secrets(&e);
    }

    #[tokio::test]
    async fn an_open_v2_with_private_repositories_follows_the_repository_challenge() {
        let m = mock(std::sync::Arc::new(|host: &str, _method: &str, target: &str, authorization: &str| {
            match (target, authorization) {
                ("/v2/", _) => (200, None, "{}".into()),
                (_, "") => (401, Some(format!(r#"Basic realm="{host}""#)), "{}".into()),
                ("/v2/team/app/manifests/latest", a) if a == basic_header("u", PASS) => (200, None, "{}".into()),
                ("/v2/broken/manifests/latest", a) if a == basic_header("u", PASS) => (500, None, "{}".into()),
                (_, _) => (403, None, r#"{"errors":[{"code":"DENIED","message":"no"}]}"#.into()),
            }
        }))
        .await;
        let auth =
            RegistryAuth { registry: m.addr.to_string(), username: "u".into(), password: PASS.to_string().into() };
        verify(&auth, plan(&["team/app"])).await.unwrap();
        let e = verify(&auth, plan(&["x/y"])).await.unwrap_err();
        assert!(
            matches!(&e, VerifyError::RepositoryDenied { registry_reason, .. } if registry_reason == "DENIED: no"),
            "{e:?}"
        );
        // A server error is not taken for a refusal.
        let e = verify(&auth, plan(&["broken"])).await.unwrap_err();
        assert!(
            matches!(&e, VerifyError::UnexpectedStatus { step: Step::RepositoryRead, status, .. } if status.as_u16() == 500),
            "{e:?}"
        );
    }
}
