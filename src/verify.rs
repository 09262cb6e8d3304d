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

impl VerifyOptions {
    /// The options a credential's `spec.verify` asks for, with
    /// [`DEFAULT_TIMEOUT`].
    pub fn from_policy(policy: &VerifyPolicy) -> Self {
        VerifyOptions {
            ca_bundle: policy.ca_bundle.clone(),
            plain_http: policy.plain_http.unwrap_or(false),
            timeout: DEFAULT_TIMEOUT,
        }
    }
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
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Probe => "probe without credentials",
            Step::BasicLogin => "login with Basic auth",
            Step::TokenRequest => "token request",
            Step::BearerLogin => "login with the bearer token",
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
        }
    }

    /// Whether the registry said no to these credentials (as opposed to not
    /// being reachable or not making sense).
    pub fn is_rejected(&self) -> bool {
        matches!(self, VerifyError::Rejected { .. })
    }
}

/// Logs in to `auth.registry` with `auth`'s username and password.
pub async fn verify(auth: &RegistryAuth, opts: &VerifyOptions) -> Result<(), VerifyError> {
    let v2 = v2_url(&auth.registry, opts.plain_http)?;
    let client = build_client(opts)?;
    let ctx = Ctx { client: &client, timeout: opts.timeout };

    let probe = ctx.get(Step::Probe, &v2, Auth::None).await?;
    match probe.status() {
        StatusCode::OK => return Ok(()),
        StatusCode::UNAUTHORIZED => {}
        status => return Err(unexpected(Step::Probe, &v2, status)),
    }
    let challenge = challenge_of(&probe).map_err(|detail| VerifyError::BadChallenge {
        step: Step::Probe,
        url: v2.to_string(),
        detail,
    })?;
    drop(probe);

    let basic = Auth::Basic(&auth.username, &auth.password);
    let (step, login) = match challenge {
        Challenge::Basic { .. } => (Step::BasicLogin, basic),
        Challenge::Bearer { realm, service, scope } => {
            let url = token_url(&realm, service.as_deref(), scope.as_deref(), opts.plain_http)
                .map_err(|detail| VerifyError::BadChallenge { step: Step::Probe, url: v2.to_string(), detail })?;
            let token = ctx.fetch_token(&url, basic, &auth.username).await?;
            (Step::BearerLogin, Auth::Bearer(token))
        }
    };
    let response = ctx.get(step, &v2, login).await?;
    match response.status() {
        StatusCode::OK => Ok(()),
        status @ StatusCode::UNAUTHORIZED => {
            Err(VerifyError::Rejected { step, url: v2.to_string(), status, username: auth.username.clone() })
        }
        status => Err(unexpected(step, &v2, status)),
    }
}

/// Credentials of one request.
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
        let request = self.client.get(url.clone());
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
}
