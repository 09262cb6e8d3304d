//! The `google` provider: Google Artifact Registry and Container Registry.
//!
//! Once per refresh it gets one OAuth2 access token and writes one login per
//! host in `registries`, with the user name `oauth2accesstoken` (what
//! `gcloud auth configure-docker` and docker-credential-gcr use). The expiry
//! is the one the token endpoint answers with.
//!
//! Identities:
//! - `auth.secretRef`: a Secret whose `credentials.json` is
//!   - a service-account key: the OAuth2 JWT-bearer grant (RFC 7523) at the
//!     key's `token_uri`, which answers with a real access token (never a
//!     self-signed JWT, which the registries' docker login is not documented
//!     to accept);
//!   - an `external_account` configuration (workload identity federation):
//!     its subject token, exchanged at its `token_url` (Google STS), then
//!     its `service_account_impersonation_url` if set. File and URL subject
//!     token sources read the operator's own environment, so they count as
//!     ambient identity;
//! - `auth.serviceAccountRef`: workload identity federation from a
//!   Kubernetes ServiceAccount: a TokenRequest token exchanged at Google STS;
//! - `auth.ambient` (or no `auth`): the metadata server (GKE workload
//!   identity), at `$GCE_METADATA_HOST` when set, as Google's libraries do;
//! - `impersonate.serviceAccount` on top of any of these: IAM Credentials
//!   `generateAccessToken` with the base token.
//!
//! Why no library: `google-cloud-auth` (Google's crate) turns a
//! service-account key into a self-signed JWT and never calls `token_uri`,
//! does not expose a token's expiry (`AccessToken` is the string only), and
//! its impersonation endpoint cannot be set for programmatic sources.
//! `gcp_auth` does the JWT-bearer grant, but covers nothing else here, drops
//! the HTTP status of a failure (every error is "token request failed"), and
//! brings its own HTTP client without timeouts. What is left are four
//! documented HTTP exchanges on the shared client ([`crate::http`]), with
//! RS256 signing by `ring`, the crypto provider rustls already uses here.

use std::fmt;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{CredentialProvider, Minted, ProviderError, SourceError, Sources, required_value};
use crate::api::{GoogleFederation, GoogleProvider};
use crate::http::{BodyError, MAX_BODY, cause_chain, read_body};
use crate::hygiene::Kind;
use crate::reasons;
use crate::render::RegistryAuth;

/// The user name Google's registries expect with an access token.
pub const USERNAME: &str = "oauth2accesstoken";
/// The OAuth2 scope requested: Artifact Registry and GCR accept it.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The key of the source Secret holding the credential JSON.
pub const CREDENTIALS_KEY: &str = "credentials.json";
/// Google's documented override of the metadata server's `host[:port]`.
pub const METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";

const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const DEFAULT_STS_URL: &str = "https://sts.googleapis.com/v1/token";
const DEFAULT_IAM_CREDENTIALS: &str = "https://iamcredentials.googleapis.com";
const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Lifetime of the signed assertion (Google's maximum).
const ASSERTION_LIFETIME_SECS: i64 = 3600;
/// Lifetime asked of `generateAccessToken` (Google's default maximum).
const IMPERSONATION_LIFETIME_SECS: u64 = 3600;

/// The `google` provider.
pub struct Google {
    spec: GoogleProvider,
}

/// Why a Google access token could not be minted. Messages name the call
/// and its URL (without user info) and the HTTP status, never a token, an
/// assertion or a key.
#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    /// The credentials Secret or the ServiceAccount token could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The HTTP client could not be set up.
    #[error("setting up HTTP: {0}")]
    Setup(#[source] crate::http::SetupError),
    /// `credentials.json` is not a usable credential (the detail names the
    /// field at fault, never a value).
    #[error("Secret {secret} key {CREDENTIALS_KEY} {detail}")]
    InvalidCredentials { secret: String, detail: String },
    /// The spec cannot be used.
    #[error("{0}")]
    InvalidSpec(String),
    /// Signing the JWT-bearer assertion failed.
    #[error("signing the service-account assertion failed")]
    Signing,
    /// An external_account's subject token file could not be read.
    #[error("reading the external_account subject token file {path}: {}", .source.kind())]
    SubjectTokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An external_account's subject token is not what its format says.
    #[error("the external_account subject token is not JSON with a string field \"{0}\"")]
    SubjectTokenField(String),
    /// An external_account's subject token is empty.
    #[error("the external_account subject token is empty")]
    EmptySubjectToken,
    /// A call got no answer.
    #[error("{what} to {url}: {}", cause_chain(.source))]
    Unreachable {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The answer could not be read to its end.
    #[error("{what} to {url}: reading the answer: {}", cause_chain(.source))]
    ReadAnswer {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// An answer too large to be a token answer.
    #[error("{what} to {url}: the answer is larger than {} KiB", MAX_BODY / 1024)]
    TooLarge { what: &'static str, url: String },
    /// A call answered with an error status (`detail`: the status, and the
    /// OAuth2 error code and description when there are).
    #[error("{what} to {url}: {detail}")]
    Status { what: &'static str, url: String, status: u16, code: Option<String>, detail: String },
    /// A successful answer without a usable token.
    #[error("{what} to {url}: {problem}")]
    InvalidAnswer { what: &'static str, url: String, problem: &'static str },
}

impl GoogleError {
    /// The condition reason ([`crate::reasons`]).
    pub fn reason(&self) -> &'static str {
        match self {
            GoogleError::Source(e) => e.reason(),
            GoogleError::Setup(_)
            | GoogleError::Signing
            | GoogleError::SubjectTokenFile { .. }
            | GoogleError::Unreachable { .. }
            | GoogleError::ReadAnswer { .. } => reasons::PROVIDER_ERROR,
            GoogleError::InvalidCredentials { .. } => reasons::SOURCE_SECRET_INVALID,
            GoogleError::InvalidSpec(_) => reasons::INVALID_SPEC,
            GoogleError::SubjectTokenField(_)
            | GoogleError::EmptySubjectToken
            | GoogleError::TooLarge { .. }
            | GoogleError::InvalidAnswer { .. } => reasons::PROVIDER_RESPONSE_INVALID,
            GoogleError::Status { status, code, .. } => reason_for(*status, code.as_deref()),
        }
    }
}

impl From<GoogleError> for ProviderError {
    fn from(e: GoogleError) -> Self {
        ProviderError::typed(e.reason(), e)
    }
}

impl Google {
    pub fn new(spec: GoogleProvider) -> Self {
        Google { spec }
    }
}

/// An access token and its expiry.
struct AccessToken {
    token: SecretString,
    expires_at: Timestamp,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken").field("token", &"<redacted>").field("expires_at", &self.expires_at).finish()
    }
}

/// What minted the base token, for `status.providerState` (never secret).
#[derive(Default)]
struct Identity {
    kind: &'static str,
    service_account: Option<String>,
    /// A service account to impersonate that the identity itself names (an
    /// external_account's `service_account_impersonation_url`).
    impersonate: Option<Impersonation>,
    /// The federated ServiceAccount's `iam.gke.io/gcp-service-account`
    /// annotation, for `impersonate` without a `serviceAccount`.
    annotated_target: Option<String>,
}

/// The ServiceAccount annotation that names the Google service account a
/// Kubernetes ServiceAccount acts as (GKE workload identity's key).
pub const GSA_ANNOTATION: &str = "iam.gke.io/gcp-service-account";

/// An external_account's exact `service_account_impersonation_url`.
struct Impersonation {
    url: String,
    lifetime_secs: u64,
}

#[async_trait]
impl CredentialProvider for Google {
    async fn mint(&self, sources: &Sources) -> Result<Minted, ProviderError> {
        Ok(self.token(sources).await?)
    }
}

impl Google {
    /// The access token, for every registry of the spec.
    async fn token(&self, sources: &Sources) -> Result<Minted, GoogleError> {
        // A bad impersonation target fails before any call is made.
        if let Some(i) = &self.spec.impersonate
            && let Some(email) = &i.service_account
        {
            impersonation_url(i.endpoint.as_deref(), email)?;
        }
        let http = crate::http::client(None, crate::http::PROVIDER_TIMEOUT).map_err(GoogleError::Setup)?;
        let auth = self.spec.auth.clone().unwrap_or_default();
        let (base, identity) = if let Some(secret_ref) = &auth.secret_ref {
            let secret = sources.secret(secret_ref).await?;
            let name = format!("{}/{}", sources.namespace(), secret_ref.name);
            let text = required_value(
                &secret,
                &name,
                CREDENTIALS_KEY,
                Kind::Document,
                "a service-account key or an external_account configuration",
            )?;
            let credentials =
                Credentials::parse(&text).map_err(|detail| GoogleError::InvalidCredentials { secret: name, detail })?;
            match credentials {
                Credentials::ServiceAccount(key) => {
                    let token = key.access_token(&http).await?;
                    let identity = Identity {
                        kind: "serviceAccountKey",
                        service_account: Some(key.client_email.clone()),
                        ..Default::default()
                    };
                    (token, identity)
                }
                Credentials::ExternalAccount(config) => {
                    let subject = config.subject_token(sources, &http).await?;
                    let token =
                        sts_exchange(&http, &config.token_url, &config.audience, &config.subject_token_type, &subject)
                            .await?;
                    let impersonate = config.impersonation_url.map(|url| Impersonation {
                        url,
                        lifetime_secs: config.impersonation_lifetime_secs.unwrap_or(IMPERSONATION_LIFETIME_SECS),
                    });
                    (token, Identity { kind: "externalAccount", impersonate, ..Default::default() })
                }
            }
        } else if let Some(federation) = &auth.service_account_ref {
            federate(sources, federation, &http).await?
        } else {
            sources.check_ambient("provider.google without secretRef or serviceAccountRef (the metadata server)")?;
            let token = metadata_token(&http, std::env::var(METADATA_HOST_ENV).ok().as_deref()).await?;
            (token, Identity { kind: "metadataServer", ..Default::default() })
        };

        let mut state = json!({"identity": identity.kind});
        if let Some(sa) = &identity.service_account {
            state["serviceAccount"] = sa.clone().into();
        }
        // The spec's impersonation wins over one the identity names.
        let impersonation = match &self.spec.impersonate {
            Some(i) => {
                let email = i.service_account.clone().or(identity.annotated_target.clone()).ok_or_else(|| {
                    GoogleError::InvalidSpec(format!(
                        "impersonate has no serviceAccount, and the identity names none: set \
                         impersonate.serviceAccount, or the ServiceAccount's {GSA_ANNOTATION} annotation \
                         (with auth.serviceAccountRef)"
                    ))
                })?;
                let url = impersonation_url(i.endpoint.as_deref(), &email)?;
                Some((Some(email), url, IMPERSONATION_LIFETIME_SECS))
            }
            None => identity.impersonate.map(|i| (email_in_impersonation_url(&i.url), i.url, i.lifetime_secs)),
        };
        let token = match impersonation {
            None => base,
            Some((email, url, lifetime_secs)) => {
                if let Some(email) = email {
                    state["impersonated"] = email.into();
                }
                generate_access_token(&http, &url, &base, lifetime_secs).await?
            }
        };

        let auths = self
            .spec
            .registries
            .iter()
            .map(|registry| RegistryAuth {
                registry: registry.clone(),
                username: USERNAME.into(),
                password: token.token.clone(),
            })
            .collect();
        Ok(Minted { auths, expires_at: Some(token.expires_at), state: Some(state) })
    }
}

/// Workload identity federation from a Kubernetes ServiceAccount.
async fn federate(
    sources: &Sources,
    federation: &GoogleFederation,
    http: &reqwest::Client,
) -> Result<(AccessToken, Identity), GoogleError> {
    let audience = federation.token_audience.clone().unwrap_or_else(|| default_token_audience(&federation.audience));
    let sa = sources.service_account_token(&federation.name, federation.namespace.as_deref(), &audience).await?;
    let token_url = federation.token_url.as_deref().unwrap_or(DEFAULT_STS_URL);
    let token = sts_exchange(http, token_url, &federation.audience, JWT_TOKEN_TYPE, &sa.token).await?;
    let annotated_target = sa.annotations.get(GSA_ANNOTATION).cloned().filter(|s| !s.is_empty());
    Ok((token, Identity { kind: "workloadIdentityFederation", annotated_target, ..Default::default() }))
}

/// The audience of the Kubernetes token when `tokenAudience` is unset: the
/// default allowed audience of a workload identity pool provider, which is
/// its resource name as an `https:` URL.
fn default_token_audience(pool_provider: &str) -> String {
    if pool_provider.starts_with("//") { format!("https:{pool_provider}") } else { pool_provider.to_string() }
}

/// The credential JSON of a source Secret.
enum Credentials {
    ServiceAccount(ServiceAccountKey),
    ExternalAccount(ExternalAccount),
}

impl Credentials {
    /// Parses the JSON. Errors name the field at fault, never a value.
    fn parse(text: &str) -> Result<Credentials, String> {
        let json: Value = serde_json::from_str(text)
            .map_err(|e| format!("is not JSON (line {}, column {})", e.line(), e.column()))?;
        match json.get("type").and_then(Value::as_str) {
            Some("service_account") => ServiceAccountKey::parse(&json).map(Credentials::ServiceAccount),
            Some("external_account") => ExternalAccount::parse(&json).map(Credentials::ExternalAccount),
            Some(_) => Err("has a type other than service_account or external_account".into()),
            None => Err("has no field \"type\" (expected service_account or external_account)".into()),
        }
    }
}

fn string_field<'a>(json: &'a Value, field: &str) -> Result<Option<&'a str>, String> {
    match json.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(format!("has a field \"{field}\" that is not a string")),
    }
}

fn required_field<'a>(json: &'a Value, field: &str) -> Result<&'a str, String> {
    string_field(json, field)?.ok_or_else(|| format!("has no field \"{field}\""))
}

fn http_url(url: &str, field: &str) -> Result<String, String> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url.to_string())
    } else {
        Err(format!("has a field \"{field}\" that is not an http(s) URL"))
    }
}

/// A service-account key.
struct ServiceAccountKey {
    client_email: String,
    private_key_id: Option<String>,
    token_uri: String,
    key: RsaKeyPair,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl ServiceAccountKey {
    fn parse(json: &Value) -> Result<ServiceAccountKey, String> {
        let client_email = required_field(json, "client_email")?.to_string();
        let private_key_id = string_field(json, "private_key_id")?.map(str::to_string);
        let token_uri = http_url(string_field(json, "token_uri")?.unwrap_or(DEFAULT_TOKEN_URI), "token_uri")?;
        let pem = required_field(json, "private_key")?;
        let key = match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
            Ok(PrivateKeyDer::Pkcs8(der)) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            Ok(PrivateKeyDer::Pkcs1(der)) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            _ => return Err("has a private_key that is not a PEM RSA private key".into()),
        }
        .map_err(|_| "has a private_key that is not a usable RSA key (2048 to 8192 bits)".to_string())?;
        Ok(ServiceAccountKey { client_email, private_key_id, token_uri, key })
    }

    /// The signed assertion of the JWT-bearer grant (RFC 7523): `aud` is
    /// the token endpoint and `scope` is set, so the endpoint answers with an
    /// access token. (A self-signed JWT, which some libraries send to APIs
    /// directly, would have the API as `aud` and is never published here.)
    fn assertion(&self, now: i64) -> Result<SecretString, GoogleError> {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = kid.clone().into();
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signing_input.as_bytes(), &mut signature)
            .map_err(|_| GoogleError::Signing)?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)).into())
    }

    /// An access token through the JWT-bearer grant at `token_uri`.
    async fn access_token(&self, http: &reqwest::Client) -> Result<AccessToken, GoogleError> {
        let assertion = self.assertion(Timestamp::now().as_second())?;
        let body = form(&[("grant_type", JWT_BEARER_GRANT), ("assertion", assertion.expose_secret())]);
        let call = Call { what: "service-account token request", url: &self.token_uri };
        let request = http.post(&self.token_uri).header(CONTENT_TYPE, FORM).body(body);
        let response = call.send(request, &[assertion.expose_secret()]).await?;
        call.oauth_token(&response)
    }
}

/// An `external_account` credential configuration (workload identity
/// federation), as `gcloud iam workload-identity-pools create-cred-config`
/// writes it.
struct ExternalAccount {
    audience: String,
    subject_token_type: String,
    token_url: String,
    impersonation_url: Option<String>,
    impersonation_lifetime_secs: Option<u64>,
    source: SubjectTokenSource,
}

enum SubjectTokenSource {
    File { path: String, json_field: Option<String> },
    Url { url: String, headers: Vec<(String, String)>, json_field: Option<String> },
}

impl ExternalAccount {
    fn parse(json: &Value) -> Result<ExternalAccount, String> {
        let audience = required_field(json, "audience")?.to_string();
        let subject_token_type = required_field(json, "subject_token_type")?.to_string();
        let token_url = http_url(string_field(json, "token_url")?.unwrap_or(DEFAULT_STS_URL), "token_url")?;
        let impersonation_url = string_field(json, "service_account_impersonation_url")?
            .map(|u| http_url(u, "service_account_impersonation_url"))
            .transpose()?;
        let impersonation_lifetime_secs = json
            .get("service_account_impersonation")
            .and_then(|i| i.get("token_lifetime_seconds"))
            .and_then(Value::as_u64)
            .filter(|s| *s > 0);
        let source = json.get("credential_source").ok_or("has no field \"credential_source\"")?;
        let json_field = match source.get("format") {
            None | Some(Value::Null) => None,
            Some(format) => match string_field(format, "type")? {
                None | Some("text") => None,
                Some("json") => Some(required_field(format, "subject_token_field_name")?.to_string()),
                Some(_) => return Err("has a credential_source.format.type other than text or json".into()),
            },
        };
        let source = if let Some(path) = string_field(source, "file")? {
            SubjectTokenSource::File { path: path.to_string(), json_field }
        } else if let Some(url) = string_field(source, "url")? {
            let headers = match source.get("headers") {
                Some(Value::Object(map)) => map
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(v) => Ok((k.clone(), v.clone())),
                        _ => Err("has a credential_source.headers value that is not a string".to_string()),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                None | Some(Value::Null) => Vec::new(),
                Some(_) => return Err("has a credential_source.headers that is not an object".into()),
            };
            SubjectTokenSource::Url { url: http_url(url, "credential_source.url")?, headers, json_field }
        } else if source.get("executable").is_some() {
            return Err("has an executable credential_source, which regcred does not run: \
                 use auth.serviceAccountRef for a Kubernetes ServiceAccount token, or a file source"
                .into());
        } else if source.get("environment_id").is_some() {
            return Err("has an AWS credential_source, which regcred does not support: \
                 use auth.serviceAccountRef for a Kubernetes ServiceAccount token, or a file source"
                .into());
        } else {
            return Err("has a credential_source without file or url".into());
        };
        Ok(ExternalAccount {
            audience,
            subject_token_type,
            token_url,
            impersonation_url,
            impersonation_lifetime_secs,
            source,
        })
    }

    /// The subject token. File and URL sources are the operator's own
    /// environment (its files, its network position), so they count as
    /// ambient identity.
    async fn subject_token(&self, sources: &Sources, http: &reqwest::Client) -> Result<SecretString, GoogleError> {
        let (text, json_field) = match &self.source {
            SubjectTokenSource::File { path, json_field } => {
                sources.check_ambient("an external_account credential_source file (a file of the operator)")?;
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| GoogleError::SubjectTokenFile { path: path.clone(), source })?;
                (SecretString::from(text), json_field)
            }
            SubjectTokenSource::Url { url, headers, json_field } => {
                sources.check_ambient("an external_account credential_source url (fetched by the operator)")?;
                let call = Call { what: "external_account subject token request", url };
                let mut request = http.get(url);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let body = call.send(request, &[]).await?;
                (SecretString::from(String::from_utf8_lossy(&body).into_owned()), json_field)
            }
        };
        let token = match json_field {
            None => text.expose_secret().trim().to_string(),
            Some(field) => serde_json::from_str::<Value>(text.expose_secret())
                .ok()
                .and_then(|v| v.get(field).and_then(Value::as_str).map(str::to_string))
                .ok_or_else(|| GoogleError::SubjectTokenField(field.clone()))?,
        };
        if token.is_empty() {
            return Err(GoogleError::EmptySubjectToken);
        }
        Ok(token.into())
    }
}

/// Google STS token exchange (RFC 8693).
async fn sts_exchange(
    http: &reqwest::Client,
    token_url: &str,
    audience: &str,
    subject_token_type: &str,
    subject_token: &SecretString,
) -> Result<AccessToken, GoogleError> {
    let body = form(&[
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("audience", audience),
        ("scope", SCOPE),
        ("requested_token_type", ACCESS_TOKEN_TYPE),
        ("subject_token_type", subject_token_type),
        ("subject_token", subject_token.expose_secret()),
    ]);
    let call = Call { what: "STS token exchange", url: token_url };
    let request = http.post(token_url).header(CONTENT_TYPE, FORM).body(body);
    let response = call.send(request, &[subject_token.expose_secret()]).await?;
    call.oauth_token(&response)
}

/// The metadata server's token for the default service account (GKE
/// workload identity, or the node's service account).
async fn metadata_token(http: &reqwest::Client, host_override: Option<&str>) -> Result<AccessToken, GoogleError> {
    let url = metadata_token_url(host_override);
    let call = Call { what: "metadata server token request", url: &url };
    let request = http.get(&url).header("Metadata-Flavor", "Google");
    let response = call.send(request, &[]).await?;
    call.oauth_token(&response)
}

fn metadata_token_url(host_override: Option<&str>) -> String {
    let host = host_override.map(str::trim).filter(|h| !h.is_empty()).unwrap_or(DEFAULT_METADATA_HOST);
    let base = if host.contains("://") { host.trim_end_matches('/').to_string() } else { format!("http://{host}") };
    format!("{base}{METADATA_TOKEN_PATH}")
}

/// `generateAccessToken` of the IAM Service Account Credentials API for
/// `email`, at `endpoint` (default `https://iamcredentials.googleapis.com`).
fn impersonation_url(endpoint: Option<&str>, email: &str) -> Result<String, GoogleError> {
    let valid = email.contains('@')
        && email.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '-' | '_' | '+'));
    if !valid {
        return Err(GoogleError::InvalidSpec(format!(
            "the service account to impersonate ({email:?}) is not a service account email"
        )));
    }
    let endpoint = endpoint.unwrap_or(DEFAULT_IAM_CREDENTIALS).trim_end_matches('/');
    Ok(format!("{endpoint}/v1/projects/-/serviceAccounts/{email}:generateAccessToken"))
}

fn email_in_impersonation_url(url: &str) -> Option<String> {
    let rest = url.split("/serviceAccounts/").nth(1)?;
    Some(rest.trim_end_matches(":generateAccessToken").to_string()).filter(|e| e.contains('@'))
}

async fn generate_access_token(
    http: &reqwest::Client,
    url: &str,
    base: &AccessToken,
    lifetime_secs: u64,
) -> Result<AccessToken, GoogleError> {
    let body = json!({"scope": [SCOPE], "lifetime": format!("{lifetime_secs}s")}).to_string();
    let call = Call { what: "IAM generateAccessToken", url };
    let request = http
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, format!("Bearer {}", base.token.expose_secret()))
        .body(body);
    let response = call.send(request, &[base.token.expose_secret()]).await?;
    call.iam_token(&response)
}

const FORM: &str = "application/x-www-form-urlencoded";

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// One HTTP exchange, for precise error messages: the call, its URL and
/// the HTTP status, never a token.
struct Call<'a> {
    what: &'static str,
    url: &'a str,
}

impl Call<'_> {
    fn url(&self) -> String {
        display_url(self.url)
    }

    fn invalid(&self, problem: &'static str) -> GoogleError {
        GoogleError::InvalidAnswer { what: self.what, url: self.url(), problem }
    }

    /// Sends the request; a non-2xx answer becomes an error whose reason
    /// follows the status. `sent` are the secrets in the request: an error
    /// description that echoes one is dropped.
    async fn send(&self, request: reqwest::RequestBuilder, sent: &[&str]) -> Result<Vec<u8>, GoogleError> {
        let mut response = request.send().await.map_err(|e| GoogleError::Unreachable {
            what: self.what,
            url: self.url(),
            source: e.without_url(),
        })?;
        let status = response.status();
        let body = read_body(&mut response).await.map_err(|e| match e {
            BodyError::Read(source) => GoogleError::ReadAnswer { what: self.what, url: self.url(), source },
            BodyError::TooLarge => GoogleError::TooLarge { what: self.what, url: self.url() },
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let (code, description) = error_detail(&body, sent);
        let mut detail = format!("HTTP {status}");
        for part in [code.as_deref(), description.as_deref()].into_iter().flatten() {
            detail.push_str(": ");
            detail.push_str(part);
        }
        Err(GoogleError::Status { what: self.what, url: self.url(), status: status.as_u16(), code, detail })
    }

    /// `{"access_token", "expires_in"}` (OAuth2 token endpoint, STS and the
    /// metadata server).
    fn oauth_token(&self, body: &[u8]) -> Result<AccessToken, GoogleError> {
        let invalid = |problem| self.invalid(problem);
        let json: Value = serde_json::from_slice(body).map_err(|_| invalid("the answer is not JSON"))?;
        let token = json
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid("the answer has no access_token"))?;
        let expires_in = match json.get("expires_in") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|secs| *secs > 0)
        .ok_or_else(|| invalid("the answer has no positive expires_in"))?;
        let expires_at = Timestamp::now()
            .checked_add(SignedDuration::from_secs(expires_in))
            .map_err(|_| invalid("the answer's expires_in is out of range"))?;
        Ok(AccessToken { token: token.to_string().into(), expires_at })
    }

    /// `{"accessToken", "expireTime"}` (IAM Credentials).
    fn iam_token(&self, body: &[u8]) -> Result<AccessToken, GoogleError> {
        let invalid = |problem| self.invalid(problem);
        let json: Value = serde_json::from_slice(body).map_err(|_| invalid("the answer is not JSON"))?;
        let token = json
            .get("accessToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid("the answer has no accessToken"))?;
        let expires_at = json
            .get("expireTime")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .ok_or_else(|| invalid("the answer has no RFC 3339 expireTime"))?;
        Ok(AccessToken { token: token.to_string().into(), expires_at })
    }
}

/// The reason for a failed HTTP answer.
fn reason_for(status: u16, code: Option<&str>) -> &'static str {
    const AUTH_CODES: [&str; 5] =
        ["invalid_grant", "invalid_client", "unauthorized_client", "access_denied", "unauthorized"];
    match status {
        401 | 403 => reasons::PROVIDER_AUTH_FAILED,
        400 if code.is_some_and(|c| AUTH_CODES.contains(&c)) => reasons::PROVIDER_AUTH_FAILED,
        429 => reasons::PROVIDER_THROTTLED,
        _ => reasons::PROVIDER_ERROR,
    }
}

/// The error code and description of an OAuth2 (`{"error",
/// "error_description"}`) or Google API (`{"error": {"status",
/// "message"}}`) error answer. A description that contains anything that was
/// sent is dropped; both are cut short and stripped of control characters.
fn error_detail(body: &[u8], sent: &[&str]) -> (Option<String>, Option<String>) {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let (code, description) = match json.get("error") {
        Some(Value::String(code)) => (Some(code.as_str()), json.get("error_description").and_then(Value::as_str)),
        Some(Value::Object(e)) => (e.get("status").and_then(Value::as_str), e.get("message").and_then(Value::as_str)),
        _ => (None, None),
    };
    let code = code
        .filter(|c| !c.is_empty() && c.len() <= 64)
        .filter(|c| c.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.')))
        .map(str::to_string);
    let description = description
        .filter(|d| !sent.iter().any(|s| !s.is_empty() && d.contains(s)))
        .map(|d| d.chars().filter(|c| !c.is_control()).take(300).collect::<String>())
        .filter(|d| !d.trim().is_empty());
    (code, description)
}

/// A URL without user info, for messages.
fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => "(invalid URL)".into(),
    }
}

/// Fuzzing entry point (`fuzz/`): the credential file parser and the token
/// answer parsers on arbitrary input.
pub(super) fn fuzz_parse(data: &[u8]) {
    let _ = Credentials::parse(&String::from_utf8_lossy(data));
    let call = Call { what: "fuzz", url: "https://oauth2.googleapis.com/token" };
    let _ = call.oauth_token(data);
    let _ = call.iam_token(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(json: Value) -> String {
        match Credentials::parse(&json.to_string()) {
            Err(e) => e,
            Ok(_) => panic!("{json} was accepted"),
        }
    }

    #[test]
    fn oauth_token_answers_are_parsed_with_their_expiry() {
        let call = Call { what: "token request", url: "http://127.0.0.1:1/token" };
        let before = Timestamp::now();
        let t =
            call.oauth_token(br#"{"access_token":"ya29.abcdefgh","expires_in":3599,"token_type":"Bearer"}"#).unwrap();
        assert_eq!(t.token.expose_secret(), "ya29.abcdefgh");
        let lifetime = t.expires_at.duration_since(before).as_secs();
        assert!((3598..=3600).contains(&lifetime), "{lifetime}");
        let t = call.oauth_token(br#"{"access_token":"ya29.abcdefgh","expires_in":"60"}"#).unwrap();
        assert!(t.expires_at.duration_since(before).as_secs() <= 61);

        for (body, want) in [
            (&b"<html>oops</html>"[..], "not JSON"),
            (br#"{"expires_in":60}"#, "no access_token"),
            (br#"{"access_token":"ya29.abcdefgh"}"#, "no positive expires_in"),
            (br#"{"access_token":"ya29.abcdefgh","expires_in":0}"#, "no positive expires_in"),
        ] {
            let e = ProviderError::from(call.oauth_token(body).unwrap_err());
            assert_eq!(e.reason, reasons::PROVIDER_RESPONSE_INVALID);
            assert!(e.message.contains(want) && e.message.contains("http://127.0.0.1:1/token"), "{e}");
            assert!(!e.message.contains("ya29"), "{e}");
        }
    }

    #[test]
    fn iam_answers_are_parsed_with_their_expiry() {
        let call = Call { what: "IAM generateAccessToken", url: "https://iamcredentials.googleapis.com/x" };
        let t = call
            .iam_token(br#"{"accessToken":"ya29.impersonated","expireTime":"2030-01-02T03:04:05.123456Z"}"#)
            .unwrap();
        assert_eq!(t.token.expose_secret(), "ya29.impersonated");
        assert_eq!(t.expires_at.as_second(), "2030-01-02T03:04:05Z".parse::<Timestamp>().unwrap().as_second());
        let e = ProviderError::from(
            call.iam_token(br#"{"accessToken":"ya29.impersonated","expireTime":"soon"}"#).unwrap_err(),
        );
        assert_eq!(e.reason, reasons::PROVIDER_RESPONSE_INVALID);
        assert!(!e.message.contains("ya29"), "{e}");
    }

    #[test]
    fn failed_answers_map_to_reasons_and_never_echo_what_was_sent() {
        assert_eq!(reason_for(400, Some("invalid_grant")), reasons::PROVIDER_AUTH_FAILED);
        assert_eq!(reason_for(400, Some("invalid_request")), reasons::PROVIDER_ERROR);
        assert_eq!(reason_for(401, None), reasons::PROVIDER_AUTH_FAILED);
        assert_eq!(reason_for(403, Some("PERMISSION_DENIED")), reasons::PROVIDER_AUTH_FAILED);
        assert_eq!(reason_for(429, None), reasons::PROVIDER_THROTTLED);
        assert_eq!(reason_for(500, None), reasons::PROVIDER_ERROR);
        assert_eq!(reason_for(503, None), reasons::PROVIDER_ERROR);

        let oauth = br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#;
        assert_eq!(
            error_detail(oauth, &["assertion-value"]),
            (Some("invalid_grant".into()), Some("Invalid JWT Signature.".into()))
        );
        let google =
            br#"{"error":{"code":403,"message":"Permission denied on sa@p.iam","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(
            error_detail(google, &[]),
            (Some("PERMISSION_DENIED".into()), Some("Permission denied on sa@p.iam".into()))
        );
        let echo = br#"{"error":"invalid_request","error_description":"bad subject_token eyJsecret-subject"}"#;
        assert_eq!(error_detail(echo, &["eyJsecret-subject"]), (Some("invalid_request".into()), None));
        let weird = br#"{"error":"not a code\n with spaces"}"#;
        assert_eq!(error_detail(weird, &[]), (None, None));
        assert_eq!(error_detail(b"Internal Server Error", &[]), (None, None));
    }

    #[test]
    fn urls_in_messages_lose_their_user_info() {
        assert_eq!(
            display_url("https://user:pw-12345678@sts.example.com/v1/token"),
            "https://sts.example.com/v1/token"
        );
        assert_eq!(display_url("not a url"), "(invalid URL)");
    }

    #[test]
    fn metadata_host_follows_gce_metadata_host() {
        let path = METADATA_TOKEN_PATH;
        assert_eq!(metadata_token_url(None), format!("http://metadata.google.internal{path}"));
        assert_eq!(metadata_token_url(Some("")), format!("http://metadata.google.internal{path}"));
        assert_eq!(metadata_token_url(Some("127.0.0.1:8080")), format!("http://127.0.0.1:8080{path}"));
        assert_eq!(metadata_token_url(Some("http://169.254.169.254/")), format!("http://169.254.169.254{path}"));
    }

    #[test]
    fn impersonation_urls() {
        assert_eq!(
            impersonation_url(None, "puller@proj.iam.gserviceaccount.com").unwrap(),
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/puller@proj.iam.gserviceaccount.com:generateAccessToken"
        );
        assert_eq!(
            impersonation_url(Some("http://127.0.0.1:9/"), "a@b.c").unwrap(),
            "http://127.0.0.1:9/v1/projects/-/serviceAccounts/a@b.c:generateAccessToken"
        );
        let e = ProviderError::from(impersonation_url(None, "a@b.c/../../x").unwrap_err());
        assert_eq!(e.reason, reasons::INVALID_SPEC);
        assert_eq!(
            email_in_impersonation_url(
                "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/x@p.iam.gserviceaccount.com:generateAccessToken"
            )
            .as_deref(),
            Some("x@p.iam.gserviceaccount.com")
        );
    }

    #[test]
    fn federation_token_audience_defaults_to_the_pool_provider_url() {
        let pool = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s";
        assert_eq!(default_token_audience(pool), format!("https:{pool}"));
        assert_eq!(default_token_audience("my-audience"), "my-audience");
    }

    #[test]
    fn credential_json_errors_name_the_field_never_the_value() {
        assert!(Credentials::parse("{not json").err().expect("rejected").contains("is not JSON (line 1"));
        assert!(parse_err(json!({"private_key": "s3cret-value"})).contains("no field \"type\""));
        assert!(parse_err(json!({"type": "authorized_user", "refresh_token": "s3cret-value"})).contains("type other"));
        let e = parse_err(json!({"type": "service_account", "private_key": "s3cret-value"}));
        assert!(e.contains("client_email"), "{e}");
        let e = parse_err(json!({"type": "service_account", "client_email": "a@b.c", "private_key": "s3cret-value"}));
        assert!(e.contains("not a PEM RSA private key") && !e.contains("s3cret"), "{e}");
        let e = parse_err(json!({"type": "service_account", "client_email": "a@b.c", "private_key": 12345678}));
        assert!(e.contains("\"private_key\" that is not a string") && !e.contains("12345678"), "{e}");
        let e = parse_err(json!({
            "type": "service_account", "client_email": "a@b.c", "token_uri": "file:///etc/passwd",
            "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        }));
        assert!(e.contains("token_uri"), "{e}");
    }

    #[test]
    fn external_account_sources() {
        let base = json!({
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": "https://sts.googleapis.com/v1/token",
        });
        let with_source = |source: Value| {
            let mut j = base.clone();
            j["credential_source"] = source;
            j
        };
        let Credentials::ExternalAccount(ea) =
            Credentials::parse(&with_source(json!({"file": "/var/run/token"})).to_string()).unwrap()
        else {
            panic!("not an external account")
        };
        assert!(matches!(&ea.source, SubjectTokenSource::File { path, json_field: None } if path == "/var/run/token"));
        let Credentials::ExternalAccount(ea) = Credentials::parse(
            &with_source(json!({
                "url": "http://169.254.169.254/token", "headers": {"Metadata": "True"},
                "format": {"type": "json", "subject_token_field_name": "access_token"}
            }))
            .to_string(),
        )
        .unwrap() else {
            panic!("not an external account")
        };
        assert!(
            matches!(&ea.source, SubjectTokenSource::Url { headers, json_field: Some(f), .. } if f == "access_token" && headers.len() == 1)
        );
        assert!(parse_err(with_source(json!({"executable": {"command": "/bin/sh"}}))).contains("does not run"));
        assert!(parse_err(with_source(json!({"environment_id": "aws1"}))).contains("AWS"));
        assert!(parse_err(base.clone()).contains("credential_source"));
    }

    #[test]
    fn debug_output_is_redacted() {
        let token = AccessToken { token: "ya29.very-secret-token".to_string().into(), expires_at: Timestamp::now() };
        assert!(!format!("{token:?}").contains("very-secret"));
        let assertion = SecretString::from("eyJ.assertion.value");
        assert!(!format!("{assertion:?}").contains("assertion.value"));
    }

    #[test]
    fn the_assertion_is_an_rs256_jwt_bearer_grant_signed_by_the_key() {
        let key = regcred_testenv::google_standin::generate_key(
            "signer@proj.iam.gserviceaccount.com",
            "https://oauth2.example.com/token",
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let Credentials::ServiceAccount(sa) = Credentials::parse(&key.json).unwrap() else {
            panic!("not a service-account key")
        };
        let debug = format!("{sa:?}");
        assert!(!debug.contains("PRIVATE KEY") && debug.contains("signer@proj"), "{debug}");
        let now = Timestamp::now().as_second();
        let jwt = sa.assertion(now).unwrap();
        let claims = regcred_testenv::google_standin::verify_rs256(jwt.expose_secret(), &key.public_key_der)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(claims["iss"], "signer@proj.iam.gserviceaccount.com");
        assert_eq!(claims["aud"], "https://oauth2.example.com/token");
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["iat"], now);
        assert_eq!(claims["exp"], now + 3600);
    }

    #[tokio::test]
    async fn google_error_reasons() {
        let refused = || async {
            crate::http::client(None, std::time::Duration::from_secs(5))
                .unwrap()
                .get("http://127.0.0.1:1/")
                .send()
                .await
                .unwrap_err()
        };
        let url = || "https://oauth2.googleapis.com/token".to_string();
        let what = "token request";
        let status = |status: u16, code: Option<&str>| GoogleError::Status {
            what,
            url: url(),
            status,
            code: code.map(Into::into),
            detail: String::new(),
        };
        for (e, reason) in [
            (
                GoogleError::Source(SourceError::AmbientForbidden { what: "x".into() }),
                reasons::AMBIENT_IDENTITY_FORBIDDEN,
            ),
            (GoogleError::Setup(crate::http::SetupError::Tls("x".into())), reasons::PROVIDER_ERROR),
            (
                GoogleError::InvalidCredentials { secret: "ns/s".into(), detail: "is not JSON".into() },
                reasons::SOURCE_SECRET_INVALID,
            ),
            (GoogleError::InvalidSpec("x".into()), reasons::INVALID_SPEC),
            (GoogleError::Signing, reasons::PROVIDER_ERROR),
            (
                GoogleError::SubjectTokenFile { path: "/x".into(), source: std::io::ErrorKind::NotFound.into() },
                reasons::PROVIDER_ERROR,
            ),
            (GoogleError::SubjectTokenField("f".into()), reasons::PROVIDER_RESPONSE_INVALID),
            (GoogleError::EmptySubjectToken, reasons::PROVIDER_RESPONSE_INVALID),
            (GoogleError::Unreachable { what, url: url(), source: refused().await }, reasons::PROVIDER_ERROR),
            (GoogleError::ReadAnswer { what, url: url(), source: refused().await }, reasons::PROVIDER_ERROR),
            (GoogleError::TooLarge { what, url: url() }, reasons::PROVIDER_RESPONSE_INVALID),
            (status(400, Some("invalid_grant")), reasons::PROVIDER_AUTH_FAILED),
            (status(400, Some("invalid_request")), reasons::PROVIDER_ERROR),
            (status(403, None), reasons::PROVIDER_AUTH_FAILED),
            (status(429, None), reasons::PROVIDER_THROTTLED),
            (status(503, None), reasons::PROVIDER_ERROR),
            (
                GoogleError::InvalidAnswer { what, url: url(), problem: "the answer is not JSON" },
                reasons::PROVIDER_RESPONSE_INVALID,
            ),
        ] {
            assert_eq!(e.reason(), reason, "{e:?}");
            assert_eq!(ProviderError::from(e).reason, reason);
        }
        let e = GoogleError::SubjectTokenFile { path: "/t".into(), source: std::io::ErrorKind::NotFound.into() };
        assert_eq!(e.to_string(), "reading the external_account subject token file /t: entity not found");
        let e = GoogleError::Unreachable { what, url: url(), source: refused().await.without_url() };
        assert!(
            e.to_string().starts_with("token request to https://oauth2.googleapis.com/token: error sending request"),
            "{e}"
        );
    }
}
