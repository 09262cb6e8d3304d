//! The `acr` provider: Azure Container Registry.
//!
//! One refresh is two calls:
//! 1. a Microsoft Entra access token for `https://containerregistry.azure.net/.default`,
//!    obtained with `azure_identity` for the configured identity:
//!    - `servicePrincipal`: client id and secret from a Secret (`ClientSecretCredential`);
//!    - `workloadIdentity` with `serviceAccountRef`: a ServiceAccount token from
//!      the TokenRequest API (audience `api://AzureADTokenExchange`) presented as
//!      the client assertion (`ClientAssertionCredential`);
//!    - `workloadIdentity` without it: the operator's own federated token file
//!      (`AZURE_FEDERATED_TOKEN_FILE`, `WorkloadIdentityCredential`), ambient;
//!    - `managedIdentity`: the node's or Pod's managed identity
//!      (`ManagedIdentityCredential`: IMDS, or `IDENTITY_ENDPOINT` +
//!      `IDENTITY_HEADER` where Azure sets them), ambient. `azure_identity`
//!      has IMDS's address built in; regcred sends its requests to
//!      `AZURE_POD_IDENTITY_AUTHORITY_HOST` instead when that is set, as the
//!      other Azure SDKs do (see [`imds_authority`]);
//! 2. `POST https://<registry>/oauth2/exchange` (`grant_type=access_token`,
//!    `service`, `tenant`, `access_token`) for an ACR refresh token.
//!
//! The pull Secret holds username `00000000-0000-0000-0000-000000000000` and
//! the refresh token; its expiry is the refresh token's JWT `exp` claim.
//!
//! Every request, the Entra ones made by `azure_identity` included, goes
//! through [`crate::http::client`] (rustls with `ring`, the platform roots
//! plus `caBundle`) via a small `azure_core` transport, so no second HTTP or
//! TLS stack is linked and private CAs work for the authority host too. The
//! transport also keeps the status and error body of the last answer, which
//! is how Entra's `AADSTS` codes become precise reasons.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential;
use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
use azure_core::http::{AsyncRawResponse, Body, ClientMethodOptions, ClientOptions, HttpClient, RetryOptions};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use k8s_openapi::jiff::Timestamp;
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};

use super::{CredentialProvider, Minted, ProviderError, SourceError, Sources, required_value};
use crate::api::{AcrProvider, AzureCloud};
use crate::http::{BodyError, cause_chain, read_body, response_retry_after};
use crate::hygiene::Kind;
use crate::reasons;
use crate::redact::Redactor;
use crate::render::RegistryAuth;

/// The user name ACR expects with a refresh token.
pub const ACR_USERNAME: &str = "00000000-0000-0000-0000-000000000000";
/// Scope of the Entra token exchanged at the registry.
pub const ACR_SCOPE: &str = "https://containerregistry.azure.net/.default";
/// Audience of ServiceAccount tokens federated with Microsoft Entra.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The environment variable of the operator's own federated token file
/// (set by the AKS workload identity webhook).
const FEDERATED_TOKEN_FILE_ENV: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// The client id Azure's workload identity webhook puts in a Pod's
/// environment.
const CLIENT_ID_ENV: &str = "AZURE_CLIENT_ID";
/// The ServiceAccount annotation naming the client id a ServiceAccount is
/// federated with (Azure workload identity's key).
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// Most characters of a remote error description put into a message.
const MAX_DESCRIPTION: usize = 300;
/// The host of IMDS, where `azure_identity` sends managed identity token
/// requests when no App Service style variables are set
/// (`virtual_machine_managed_identity_credential.rs`).
const IMDS_HOST: &str = "169.254.169.254";
/// The path of IMDS's managed identity token endpoint.
const IMDS_TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
/// The variable the Azure SDKs read to send IMDS requests to another host
/// (Azure/azure-sdk-for-python
/// `sdk/identity/azure-identity/azure/identity/_credentials/imds.py`:
/// `os.environ.get(AZURE_POD_IDENTITY_AUTHORITY_HOST, IMDS_AUTHORITY).strip("/") + IMDS_TOKEN_PATH`;
/// Azure.Identity for .NET reads it too). `azure_identity` does not, so
/// regcred's transport does.
pub const IMDS_AUTHORITY_ENV: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";

pub struct Acr {
    spec: AcrProvider,
}

impl Acr {
    pub fn new(spec: AcrProvider) -> Self {
        Acr { spec }
    }
}

impl fmt::Debug for Acr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acr")
            .field("registry", &self.spec.registry)
            .field("tenant_id", &self.spec.tenant_id)
            .finish_non_exhaustive()
    }
}

/// Why an ACR refresh token could not be minted. Messages name the
/// identity, the endpoint and the status, never a token or a client secret.
#[derive(Debug, thiserror::Error)]
pub enum AcrError {
    /// A source Secret or the ServiceAccount token could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The HTTP client could not be set up (`caBundle`).
    #[error("acr: {0}")]
    Setup(#[source] crate::http::SetupError),
    /// The spec cannot be used.
    #[error("{0}")]
    InvalidSpec(String),
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST` is set but is not an http(s) URL.
    #[error("acr managedIdentity: {IMDS_AUTHORITY_ENV} is set but is not an http or https URL: {reason}")]
    ImdsAuthorityInvalid { reason: String },
    /// The operator's own federated token was asked for and is not there.
    #[error(
        "acr workloadIdentity without serviceAccountRef uses the operator's own federated token, but \
         {FEDERATED_TOKEN_FILE_ENV} is not set: enable Microsoft Entra workload identity on the operator's Pod, \
         or set serviceAccountRef"
    )]
    FederatedTokenFileUnset,
    /// The SDK refused to build the credential.
    #[error("acr {identity}: {}", azure_message(.source))]
    Credential {
        identity: Identity,
        #[source]
        source: azure_core::Error,
    },
    /// The Entra token request failed before any answer came back.
    #[error("getting an Entra token for {identity}: {}", azure_message(.source))]
    Entra {
        identity: Identity,
        #[source]
        source: azure_core::Error,
    },
    /// The Entra (or managed identity) endpoint could not be reached.
    #[error("getting an Entra token for {identity}: {endpoint} {url} could not be reached: {error}")]
    EntraUnreachable {
        identity: Identity,
        endpoint: &'static str,
        url: String,
        error: String,
        #[source]
        source: azure_core::Error,
    },
    /// The endpoint answered a success without a usable token.
    #[error(
        "getting an Entra token for {identity}: {endpoint} {url} answered HTTP {status} without a usable token ({})",
        azure_message(.source)
    )]
    EntraNoToken {
        identity: Identity,
        endpoint: &'static str,
        url: String,
        status: u16,
        #[source]
        source: azure_core::Error,
    },
    /// The endpoint refused: `detail` is its error code and description
    /// and what they mean.
    #[error("getting an Entra token for {identity}: {endpoint} {url} answered HTTP {status}{detail}")]
    EntraRefused {
        identity: Identity,
        endpoint: &'static str,
        url: String,
        status: u16,
        detail: String,
        /// The answer's `Retry-After`, for the pacing.
        retry_after: Option<Duration>,
        #[source]
        source: azure_core::Error,
    },
    /// The registry's exchange endpoint could not be reached.
    #[error("exchanging the Entra token at {url}: {}", cause_chain(.source))]
    ExchangeUnreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The exchange answer could not be read.
    #[error("exchanging the Entra token at {url}: {source}")]
    ExchangeBody {
        url: String,
        #[source]
        source: BodyError,
    },
    /// The exchange answered a success without a refresh token.
    #[error("{url} answered HTTP {status} without a refresh_token")]
    ExchangeNoToken { url: String, status: u16 },
    /// The registry refused the exchange (`detail` and `hint` are empty or
    /// start with a space or a colon).
    #[error("exchanging the Entra token at {url}: HTTP {status}{detail}{hint}")]
    ExchangeRefused { url: String, status: u16, detail: String, hint: String, retry_after: Option<Duration> },
    /// The refresh token's expiry cannot be read.
    #[error("{url}: the refresh token is not a usable JWT: {detail}")]
    UnusableRefreshToken { url: String, detail: String },
}

impl AcrError {
    /// The condition reason ([`crate::reasons`]).
    pub fn reason(&self) -> &'static str {
        match self {
            AcrError::Source(e) => e.reason(),
            AcrError::Setup(_) | AcrError::InvalidSpec(_) => reasons::INVALID_SPEC,
            AcrError::FederatedTokenFileUnset | AcrError::ImdsAuthorityInvalid { .. } => reasons::PROVIDER_AUTH_FAILED,
            // A missing or unreadable federated token file.
            AcrError::Credential { identity: Identity::Federated { service_account: None, .. }, .. } => {
                reasons::PROVIDER_AUTH_FAILED
            }
            AcrError::Credential { .. } => reasons::INVALID_SPEC,
            AcrError::Entra { .. } | AcrError::EntraUnreachable { .. } | AcrError::ExchangeUnreachable { .. } => {
                reasons::PROVIDER_ERROR
            }
            AcrError::EntraNoToken { .. }
            | AcrError::ExchangeNoToken { .. }
            | AcrError::UnusableRefreshToken { .. } => reasons::PROVIDER_RESPONSE_INVALID,
            // A 400 from the managed identity endpoint: not assigned here.
            AcrError::EntraRefused { status, .. } => match status {
                429 => reasons::PROVIDER_THROTTLED,
                400 | 401 | 403 => reasons::PROVIDER_AUTH_FAILED,
                _ => reasons::PROVIDER_ERROR,
            },
            AcrError::ExchangeBody { source: BodyError::TooLarge, .. } => reasons::PROVIDER_RESPONSE_INVALID,
            AcrError::ExchangeBody { .. } => reasons::PROVIDER_ERROR,
            AcrError::ExchangeRefused { status, .. } => match status {
                400 | 401 | 403 => reasons::PROVIDER_AUTH_FAILED,
                429 => reasons::PROVIDER_THROTTLED,
                _ => reasons::PROVIDER_ERROR,
            },
        }
    }
}

impl From<AcrError> for ProviderError {
    fn from(e: AcrError) -> Self {
        let retry_after = match &e {
            AcrError::EntraRefused { retry_after, .. } | AcrError::ExchangeRefused { retry_after, .. } => *retry_after,
            _ => None,
        };
        ProviderError::typed(e.reason(), e).with_retry_after(retry_after)
    }
}

#[async_trait]
impl CredentialProvider for Acr {
    async fn mint(&self, sources: &Sources) -> Result<Minted, ProviderError> {
        Ok(self.refresh_token(sources).await?)
    }
}

impl Acr {
    /// An Entra token exchanged for an ACR refresh token.
    async fn refresh_token(&self, sources: &Sources) -> Result<Minted, AcrError> {
        let http = crate::http::client(self.spec.ca_bundle.as_deref(), crate::http::PROVIDER_TIMEOUT)
            .map_err(AcrError::Setup)?;
        let entra_token = self.entra_token(sources, &http).await?;
        let refresh_token = exchange(&http, &self.spec, &entra_token).await?;
        let expires_at = jwt_expiry(refresh_token.expose_secret())
            .map_err(|detail| AcrError::UnusableRefreshToken { url: exchange_url(&self.spec.registry), detail })?;
        Ok(Minted {
            auths: vec![RegistryAuth {
                registry: self.spec.registry.clone(),
                username: ACR_USERNAME.to_string(),
                password: refresh_token,
            }],
            expires_at: Some(expires_at),
            state: None,
        })
    }
}

/// Which identity asked Entra for a token, for messages.
#[derive(Clone, Debug)]
pub enum Identity {
    ServicePrincipal { client_id: String, secret_name: String },
    Federated { client_id: String, service_account: Option<String> },
    Managed { client_id: Option<String> },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::ServicePrincipal { client_id, secret_name } => {
                write!(f, "service principal {client_id} (from Secret {secret_name})")
            }
            Identity::Federated { client_id, service_account: Some(sa) } => {
                write!(f, "workload identity {client_id} (ServiceAccount {sa})")
            }
            Identity::Federated { client_id, service_account: None } => {
                write!(f, "workload identity {client_id} (the operator's federated token)")
            }
            Identity::Managed { client_id: Some(id) } => write!(f, "managed identity {id}"),
            Identity::Managed { client_id: None } => write!(f, "the node's default managed identity (no clientId)"),
        }
    }
}

impl Acr {
    /// The Entra authority: `authorityHost`, else `cloud`. `None` lets the
    /// SDK read `AZURE_AUTHORITY_HOST` (only for the operator's own identity).
    fn cloud(&self, ambient: bool) -> Option<CloudConfiguration> {
        if let Some(host) = &self.spec.authority_host {
            let mut custom = CustomConfiguration::default();
            custom.authority_host = host.clone();
            return Some(custom.into());
        }
        match self.spec.cloud {
            None if ambient => None,
            None | Some(AzureCloud::AzurePublic) => Some(CloudConfiguration::AzurePublic),
            Some(AzureCloud::AzureChina) => Some(CloudConfiguration::AzureChina),
            Some(AzureCloud::AzureUSGovernment) => Some(CloudConfiguration::AzureGovernment),
        }
    }

    /// A Microsoft Entra access token for [`ACR_SCOPE`].
    async fn entra_token(&self, sources: &Sources, http: &reqwest::Client) -> Result<SecretString, AcrError> {
        let imds = match &self.spec.auth.managed_identity {
            Some(_) => imds_authority(std::env::var(IMDS_AUTHORITY_ENV).ok().as_deref())
                .map_err(|reason| AcrError::ImdsAuthorityInvalid { reason })?,
            None => None,
        };
        let transport = Arc::new(Transport::new(http.clone()).with_imds_authority(imds));
        let client_options = |ambient: bool| ClientOptions {
            transport: Some(azure_core::http::Transport::new(transport.clone())),
            // The controller retries with backoff; one attempt per refresh.
            retry: RetryOptions::none(),
            cloud: self.cloud(ambient).map(Arc::new),
            ..Default::default()
        };
        let tenant = &self.spec.tenant_id;
        let auth = &self.spec.auth;
        let built = if let Some(sp) = &auth.service_principal {
            let secret = sources.secret(&sp.secret_ref).await?;
            let name = format!("{}/{}", sources.namespace(), sp.secret_ref.name);
            const EXPECTED: &str = "client-id and client-secret";
            let client_id = required_value(&secret, &name, "client-id", Kind::Username, EXPECTED)?;
            let client_secret = required_value(&secret, &name, "client-secret", Kind::Secret, EXPECTED)?;
            let identity = Identity::ServicePrincipal { client_id: client_id.clone(), secret_name: name };
            let options = ClientSecretCredentialOptions { client_options: client_options(false) };
            let credential = ClientSecretCredential::new(tenant, client_id, client_secret.into(), Some(options));
            (credential.map(|c| c as Arc<dyn TokenCredential>), identity)
        } else if let Some(wi) = &auth.workload_identity {
            match &wi.service_account_ref {
                Some(sa) => {
                    let audience = sa
                        .audiences
                        .as_ref()
                        .and_then(|a| a.first())
                        .map(String::as_str)
                        .unwrap_or(TOKEN_EXCHANGE_AUDIENCE);
                    let token = sources.service_account_token(&sa.name, sa.namespace.as_deref(), audience).await?;
                    let annotated = token.annotations.get(CLIENT_ID_ANNOTATION).filter(|s| !s.is_empty());
                    let client_id = wi.client_id.clone().or(annotated.cloned()).ok_or_else(|| {
                        AcrError::InvalidSpec(format!(
                            "workloadIdentity has no clientId and ServiceAccount {} has no {CLIENT_ID_ANNOTATION} \
                             annotation: set one of them",
                            sa.name
                        ))
                    })?;
                    let identity = Identity::Federated {
                        client_id: client_id.clone(),
                        service_account: Some(format!("{}/{}", sources.namespace(), sa.name)),
                    };
                    let options = ClientAssertionCredentialOptions { client_options: client_options(false) };
                    let credential = ClientAssertionCredential::new(
                        tenant.clone(),
                        client_id,
                        ServiceAccountAssertion(token.token),
                        Some(options),
                    );
                    (credential.map(|c| c as Arc<dyn TokenCredential>), identity)
                }
                None => {
                    sources.check_ambient("acr workloadIdentity without serviceAccountRef")?;
                    let Some(path) = std::env::var_os(FEDERATED_TOKEN_FILE_ENV).filter(|p| !p.is_empty()) else {
                        return Err(AcrError::FederatedTokenFileUnset);
                    };
                    let client_id = wi
                        .client_id
                        .clone()
                        .or_else(|| std::env::var(CLIENT_ID_ENV).ok().filter(|s| !s.is_empty()))
                        .ok_or_else(|| {
                            AcrError::InvalidSpec(format!(
                                "workloadIdentity has no clientId and {CLIENT_ID_ENV} is not set: set clientId"
                            ))
                        })?;
                    let identity = Identity::Federated { client_id: client_id.clone(), service_account: None };
                    let options = WorkloadIdentityCredentialOptions {
                        credential_options: ClientAssertionCredentialOptions { client_options: client_options(true) },
                        client_id: Some(client_id),
                        tenant_id: Some(tenant.clone()),
                        token_file_path: Some(path.into()),
                    };
                    let credential = WorkloadIdentityCredential::new(Some(options));
                    (credential.map(|c| c as Arc<dyn TokenCredential>), identity)
                }
            }
        } else if let Some(mi) = &auth.managed_identity {
            sources.check_ambient("acr managedIdentity")?;
            let identity = Identity::Managed { client_id: mi.client_id.clone() };
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: mi.client_id.clone().map(UserAssignedId::ClientId),
                client_options: client_options(true),
            };
            let credential = ManagedIdentityCredential::new(Some(options));
            (credential.map(|c| c as Arc<dyn TokenCredential>), identity)
        } else {
            return Err(AcrError::InvalidSpec(
                "acr auth must set one of workloadIdentity, managedIdentity or servicePrincipal".into(),
            ));
        };
        let (credential, identity) = match built {
            (Ok(credential), identity) => (credential, identity),
            (Err(source), identity) => return Err(AcrError::Credential { identity, source }),
        };
        match credential.get_token(&[ACR_SCOPE], None).await {
            Ok(token) => Ok(SecretString::from(token.token.secret().to_string())),
            Err(e) => Err(entra_failure(identity, tenant, transport.last(), e)),
        }
    }
}

/// A ServiceAccount token from the TokenRequest API, presented to Entra as
/// the client assertion.
struct ServiceAccountAssertion(SecretString);

impl fmt::Debug for ServiceAccountAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceAccountAssertion(<redacted>)")
    }
}

#[async_trait]
impl ClientAssertion for ServiceAccountAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        Ok(self.0.expose_secret().to_string())
    }
}

/// What came back from the last request sent through [`Transport`].
#[derive(Clone)]
enum Answer {
    /// A response: where from (scheme, host and path, no query), its status,
    /// and its body when the status is not a success (error bodies carry no
    /// tokens; success bodies do and are never kept).
    Response { url: String, status: u16, error_body: Vec<u8>, retry_after: Option<Duration> },
    /// No response: the request could not be sent or read.
    Failed { url: String, error: String },
}

/// An `azure_core` HTTP transport over regcred's shared reqwest client.
struct Transport {
    client: reqwest::Client,
    last: Mutex<Option<Answer>>,
    /// Where IMDS token requests go instead of [`IMDS_HOST`].
    imds: Option<url::Url>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    fn new(client: reqwest::Client) -> Self {
        Transport { client, last: Mutex::new(None), imds: None }
    }

    /// Sends IMDS token requests to `authority` (see [`imds_authority`]).
    fn with_imds_authority(mut self, authority: Option<url::Url>) -> Self {
        self.imds = authority;
        self
    }

    /// Where a request for `url` goes: an IMDS token request to the IMDS
    /// authority when one is set (its path prefixed, its query kept),
    /// anything else where the SDK sent it.
    fn route(&self, url: &url::Url) -> url::Url {
        match &self.imds {
            Some(base) if url.host_str() == Some(IMDS_HOST) && url.path() == IMDS_TOKEN_PATH => {
                let mut routed = base.clone();
                routed.set_path(&format!("{}{IMDS_TOKEN_PATH}", base.path().trim_end_matches('/')));
                routed.set_query(url.query());
                routed
            }
            _ => url.clone(),
        }
    }

    fn last(&self) -> Option<Answer> {
        self.last.lock().clone()
    }

    fn record(&self, answer: Answer) {
        *self.last.lock() = Some(answer);
    }
}

/// The IMDS authority from `AZURE_POD_IDENTITY_AUTHORITY_HOST` (`value`):
/// `None` when unset or empty, else an http or https URL with a host; the
/// error is why not.
fn imds_authority(value: Option<&str>) -> Result<Option<url::Url>, String> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let url = url::Url::parse(value).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("scheme {} or no host", url.scheme()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("it has a query or a fragment".into());
    }
    Ok(Some(url))
}

/// `scheme://host[:port]/path` of a URL, without query or fragment.
fn url_without_query(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

#[async_trait]
impl HttpClient for Transport {
    async fn execute_request(&self, request: &azure_core::http::Request) -> azure_core::Result<AsyncRawResponse> {
        use azure_core::error::{Error, ErrorKind};
        let url = self.route(request.url());
        let shown = url_without_query(&url);
        let method = reqwest::Method::from_bytes(request.method().as_ref().as_bytes())
            .map_err(|e| Error::with_message(ErrorKind::Other, format!("unsupported method: {e}")))?;
        let mut builder = self.client.request(method.clone(), url);
        for (name, value) in request.headers().iter() {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder = match request.body() {
            Body::Bytes(bytes) => builder.body(bytes.to_vec()),
            Body::SeekableStream(_) => {
                return Err(Error::with_message(ErrorKind::Other, "streamed request bodies are not supported"));
            }
        };
        let failed = |kind: ErrorKind, what: String| {
            self.record(Answer::Failed { url: shown.clone(), error: what.clone() });
            Error::with_message(kind, format!("{method} {shown}: {what}"))
        };
        let mut response = match builder.send().await {
            Ok(r) => r,
            Err(e) => {
                let kind = if e.is_connect() { ErrorKind::Connection } else { ErrorKind::Io };
                return Err(failed(kind, cause_chain(&e)));
            }
        };
        let status = response.status().as_u16();
        let retry_after = response_retry_after(&response);
        let mut headers = Headers::new();
        for (name, value) in response.headers() {
            if let Ok(v) = value.to_str() {
                headers.insert(HeaderName::from(name.as_str().to_string()), HeaderValue::from(v.to_string()));
            }
        }
        let body = match read_body(&mut response).await {
            Ok(b) => b,
            Err(e) => return Err(failed(ErrorKind::Io, e.to_string())),
        };
        let success = (200..300).contains(&status);
        self.record(Answer::Response {
            url: shown,
            status,
            error_body: if success { Vec::new() } else { body.clone() },
            retry_after,
        });
        Ok(AsyncRawResponse::from_bytes(status.into(), headers, body))
    }
}

/// The message of an `azure_core` error, without the SDK's troubleshooting
/// link.
fn azure_message(e: &azure_core::Error) -> String {
    let text = cause_chain(e);
    text.split("\nTo troubleshoot").next().unwrap_or_default().trim().replace('\n', " ")
}

/// At most [`MAX_DESCRIPTION`] characters of a remote description, first
/// line only, without Entra's trace and correlation ids.
fn short(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    let first = first.split(" Trace ID:").next().unwrap_or_default().trim();
    let mut out: String = first.chars().take(MAX_DESCRIPTION).collect();
    if first.chars().count() > MAX_DESCRIPTION {
        out.push_str("...");
    }
    out
}

/// An Entra (OAuth2) error body.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct EntraError {
    error: String,
    error_description: String,
    error_codes: Vec<i64>,
}

/// What a well-known `AADSTS` code means for the user.
fn aadsts_hint(code: i64, tenant: &str, identity: &Identity) -> Option<String> {
    let client = match identity {
        Identity::ServicePrincipal { client_id, .. } | Identity::Federated { client_id, .. } => client_id.as_str(),
        Identity::Managed { client_id } => client_id.as_deref().unwrap_or("system-assigned"),
    };
    Some(match code {
        90002 | 90023 => format!("tenant {tenant} was not found: check tenantId and cloud"),
        700016 => format!("application {client} was not found in tenant {tenant}: check the client id"),
        7000215 | 7000222 => "the client secret is invalid or expired: update the Secret's client-secret".into(),
        70021 => "no federated identity credential matches the ServiceAccount token: check the federated \
                  credential's issuer, subject (system:serviceaccount:NAMESPACE:NAME) and audience"
            .into(),
        700024 | 700027 => "the client assertion was refused (expired or not valid)".into(),
        50034 | 50126 => format!("the identity is not known in tenant {tenant}"),
        _ => return None,
    })
}

/// What a 400 from the managed identity endpoint means. Azure says not to
/// branch on IMDS's error descriptions; this only picks the wording of the
/// hint, and every branch names the fix.
fn managed_identity_hint(client_id_given: bool, description: &str) -> &'static str {
    // IMDS's answer on a node with several user-assigned identities and no
    // system-assigned one, to a request without an identity (captured in
    // Azure/azure-sdk-for-rust#748; MicrosoftDocs/entra-docs
    // how-to-use-vm-token.md: client_id is "Required, if your VM has
    // multiple user-assigned managed identities").
    let several = description.to_ascii_lowercase().contains("multiple user assigned identities");
    match (client_id_given, several) {
        (false, true) => {
            ": several user-assigned managed identities are assigned to this node and no clientId was given, so the \
             managed identity endpoint cannot choose one: set auth.managedIdentity.clientId to the client id of the \
             identity that has AcrPull on the registry"
        }
        (false, false) => {
            ": no clientId was given and the node has no default managed identity (a system-assigned one, or a \
             single user-assigned one): set auth.managedIdentity.clientId to the client id of a user-assigned \
             identity assigned to the node"
        }
        (true, _) => ": the managed identity is not assigned to this node or Pod",
    }
}

/// The error for a failed Entra token request.
fn entra_failure(identity: Identity, tenant: &str, last: Option<Answer>, source: azure_core::Error) -> AcrError {
    let endpoint = match identity {
        Identity::Managed { .. } => "the managed identity endpoint",
        _ => "the Microsoft Entra token endpoint",
    };
    match last {
        None => AcrError::Entra { identity, source },
        Some(Answer::Failed { url, error }) => AcrError::EntraUnreachable { identity, endpoint, url, error, source },
        Some(Answer::Response { url, status, .. }) if (200..300).contains(&status) => {
            AcrError::EntraNoToken { identity, endpoint, url, status, source }
        }
        Some(Answer::Response { url, status, error_body, retry_after }) => {
            let parsed: Option<EntraError> = serde_json::from_slice(&error_body).ok();
            let code_text = parsed
                .as_ref()
                .map(|p| {
                    let mut parts = Vec::new();
                    if !p.error.is_empty() {
                        parts.push(p.error.clone());
                    }
                    if !p.error_description.is_empty() {
                        parts.push(short(&p.error_description));
                    } else if let Some(code) = p.error_codes.first() {
                        parts.push(format!("AADSTS{code}"));
                    }
                    parts.join(": ")
                })
                .filter(|s| !s.is_empty());
            let hint =
                parsed.as_ref().and_then(|p| p.error_codes.iter().find_map(|c| aadsts_hint(*c, tenant, &identity)));
            let mut detail = String::new();
            if let Some(text) = &code_text {
                detail.push_str(&format!(" ({text})"));
            }
            if let Some(hint) = hint {
                detail.push_str(&format!(": {hint}"));
            }
            if let (400, Identity::Managed { client_id }) = (status, &identity) {
                let description = parsed.as_ref().map(|p| p.error_description.as_str()).unwrap_or_default();
                detail.push_str(managed_identity_hint(client_id.is_some(), description));
            }
            AcrError::EntraRefused { identity, endpoint, url, status, detail, retry_after, source }
        }
    }
}

/// `https://<registry>/oauth2/exchange`.
fn exchange_url(registry: &str) -> String {
    format!("https://{registry}/oauth2/exchange")
}

/// An ACR error body (`{"errors":[{"code","message"}]}`) or an OAuth2 one.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct RegistryErrors {
    errors: Vec<RegistryError>,
    error: String,
    error_description: String,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct RegistryError {
    code: String,
    message: String,
}

/// Exchanges the Entra token for an ACR refresh token.
async fn exchange(
    http: &reqwest::Client,
    spec: &AcrProvider,
    entra_token: &SecretString,
) -> Result<SecretString, AcrError> {
    let url = exchange_url(&spec.registry);
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "access_token")
        .append_pair("service", &spec.registry)
        .append_pair("tenant", &spec.tenant_id)
        .append_pair("access_token", entra_token.expose_secret())
        .finish();
    let mut response = http
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(reqwest::header::ACCEPT, "application/json")
        .body(form)
        .send()
        .await
        .map_err(|source| AcrError::ExchangeUnreachable { url: url.clone(), source })?;
    let status = response.status().as_u16();
    let retry_after = response_retry_after(&response);
    let body = read_body(&mut response).await.map_err(|source| AcrError::ExchangeBody { url: url.clone(), source })?;
    let redactor = Redactor::new([entra_token.expose_secret()]);
    if (200..300).contains(&status) {
        #[derive(serde::Deserialize)]
        struct Exchanged {
            refresh_token: Option<String>,
        }
        let token = serde_json::from_slice::<Exchanged>(&body).ok().and_then(|e| e.refresh_token);
        return match token.filter(|t| !t.is_empty()) {
            Some(t) => Ok(SecretString::from(t)),
            None => Err(AcrError::ExchangeNoToken { url, status }),
        };
    }
    let detail = serde_json::from_slice::<RegistryErrors>(&body)
        .ok()
        .map(|e| match e.errors.first() {
            Some(first) => format!("{}: {}", first.code, short(&first.message)),
            None => format!("{}: {}", e.error, short(&e.error_description)),
        })
        .map(|d| d.trim_matches([':', ' ']).to_string())
        .filter(|d| !d.is_empty())
        .map(|d| format!(" ({})", redactor.clean(&d)))
        .unwrap_or_default();
    let hint = match status {
        401 | 403 => format!(
            ": the registry refused the Entra token; the identity may lack the AcrPull role on the registry \
             (or tenant {} is not the registry's tenant)",
            spec.tenant_id
        ),
        404 => format!(": is {} an Azure Container Registry login server?", spec.registry),
        400 => ": the registry refused the exchange".to_string(),
        _ => String::new(),
    };
    Err(AcrError::ExchangeRefused { url, status, detail, hint, retry_after })
}

/// The `exp` claim of a JWT, read without verifying the signature (the
/// registry does that; regcred only needs to know when to refresh).
fn jwt_expiry(token: &str) -> Result<Timestamp, String> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("expected three dot-separated parts".into());
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .or_else(|_| URL_SAFE.decode(payload))
        .map_err(|_| "the payload is not base64url".to_string())?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| "the payload is not a JSON object".to_string())?;
    let exp = claims.get("exp").ok_or("no exp claim")?;
    let seconds = exp.as_i64().or_else(|| exp.as_f64().map(|f| f as i64)).ok_or("the exp claim is not a number")?;
    Timestamp::from_second(seconds).map_err(|_| format!("exp {seconds} is out of range"))
}

/// Fuzzing entry point (`fuzz/`): the JWT expiry parser on arbitrary input.
pub(super) fn fuzz_parse(data: &[u8]) {
    let _ = jwt_expiry(&String::from_utf8_lossy(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        )
    }

    #[test]
    fn expiry_comes_from_the_exp_claim() {
        let t = jwt(serde_json::json!({"exp": 1_800_000_000, "grant_type": "refresh_token"}));
        assert_eq!(jwt_expiry(&t).unwrap(), Timestamp::from_second(1_800_000_000).unwrap());
        let padded = format!(
            "e30.{}.c2ln",
            URL_SAFE.encode(serde_json::to_vec(&serde_json::json!({"exp": 1_800_000_001.0})).unwrap())
        );
        assert_eq!(jwt_expiry(&padded).unwrap(), Timestamp::from_second(1_800_000_001).unwrap());
    }

    #[test]
    fn malformed_jwts_are_refused() {
        assert!(jwt_expiry("not-a-jwt").is_err());
        assert!(jwt_expiry("a.b").is_err());
        assert!(jwt_expiry("a.!!!.c").is_err());
        assert!(jwt_expiry(&format!("a.{}.c", URL_SAFE_NO_PAD.encode("[1]"))).unwrap_err().contains("exp"));
        assert!(jwt_expiry(&jwt(serde_json::json!({"exp": "soon"}))).is_err());
        assert!(jwt_expiry(&jwt(serde_json::json!({"sub": "x"}))).is_err());
    }

    fn spec(json: serde_json::Value) -> AcrProvider {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_authority_follows_cloud_and_authority_host() {
        let base = serde_json::json!({"registry": "r.azurecr.io", "tenantId": "t",
            "auth": {"managedIdentity": {}}});
        let acr = Acr::new(spec(base.clone()));
        assert_eq!(acr.cloud(false), Some(CloudConfiguration::AzurePublic));
        assert_eq!(acr.cloud(true), None, "the operator's own identity may use AZURE_AUTHORITY_HOST");
        let mut china = base.clone();
        china["cloud"] = "AzureChina".into();
        assert_eq!(Acr::new(spec(china)).cloud(true), Some(CloudConfiguration::AzureChina));
        let mut gov = base.clone();
        gov["cloud"] = "AzureUSGovernment".into();
        assert_eq!(Acr::new(spec(gov)).cloud(false), Some(CloudConfiguration::AzureGovernment));
        let mut custom = base;
        custom["cloud"] = "AzureChina".into();
        custom["authorityHost"] = "https://login.example.internal".into();
        match Acr::new(spec(custom)).cloud(false) {
            Some(CloudConfiguration::Custom(c)) => assert_eq!(c.authority_host, "https://login.example.internal"),
            other => panic!("{other:?}"),
        }
    }

    fn entra_error(status: u16, body: &str, identity: &Identity) -> ProviderError {
        let e = azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, "failed");
        let last = Answer::Response {
            url: "https://login/t/oauth2/v2.0/token".into(),
            status,
            error_body: body.into(),
            retry_after: None,
        };
        entra_failure(identity.clone(), "t", Some(last), e).into()
    }

    #[test]
    fn entra_errors_become_precise_reasons() {
        let sp = Identity::ServicePrincipal { client_id: "app".into(), secret_name: "ns/sp".into() };
        let e = entra_error(
            400,
            r#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 't' not found. Trace ID: 1\r\nCorrelation ID: 2","error_codes":[90002]}"#,
            &sp,
        );
        assert_eq!(e.reason, reasons::PROVIDER_AUTH_FAILED);
        assert!(e.message.contains("AADSTS90002") && e.message.contains("tenant t was not found"), "{}", e.message);
        assert!(!e.message.contains("Trace ID"), "{}", e.message);

        let e = entra_error(
            400,
            r#"{"error":"unauthorized_client","error_description":"AADSTS700016: Application not found","error_codes":[700016]}"#,
            &sp,
        );
        assert_eq!(e.reason, reasons::PROVIDER_AUTH_FAILED);
        assert!(e.message.contains("AADSTS700016") && e.message.contains("application app"), "{}", e.message);

        let e = entra_error(
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#,
            &sp,
        );
        assert_eq!(e.reason, reasons::PROVIDER_AUTH_FAILED);
        assert!(e.message.contains("AADSTS7000215") && e.message.contains("client secret is invalid"));

        assert_eq!(entra_error(429, "{}", &sp).reason, reasons::PROVIDER_THROTTLED);
        let outage = entra_error(503, "<html>Service Unavailable</html>", &sp);
        assert_eq!(outage.reason, reasons::PROVIDER_ERROR);
        assert!(outage.message.contains("HTTP 503"), "{}", outage.message);
        assert_eq!(entra_error(200, "", &sp).reason, reasons::PROVIDER_RESPONSE_INVALID);

        let mi = Identity::Managed { client_id: Some("mi".into()) };
        let e = entra_error(400, "identity not found", &mi);
        assert_eq!(e.reason, reasons::PROVIDER_AUTH_FAILED);
        assert!(e.message.contains("not assigned") && e.message.contains("managed identity endpoint"));

        let unreachable = Answer::Failed { url: "https://login/t".into(), error: "connection refused".into() };
        let e = ProviderError::from(entra_failure(
            sp.clone(),
            "t",
            Some(unreachable),
            azure_core::Error::with_message(azure_core::error::ErrorKind::Connection, "x"),
        ));
        assert_eq!(e.reason, reasons::PROVIDER_ERROR);
        assert!(e.message.contains("could not be reached: connection refused"));
    }

    #[test]
    fn imds_400s_name_their_cause_and_the_fix() {
        let several = r#"{"error":"invalid_request","error_description":"Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"}"#;
        let not_found = r#"{"error":"invalid_request","error_description":"Identity not found"}"#;
        let default = Identity::Managed { client_id: None };
        let e = entra_error(400, several, &default);
        assert_eq!(e.reason, reasons::PROVIDER_AUTH_FAILED);
        for needle in [
            "the node's default managed identity (no clientId)",
            "HTTP 400 (invalid_request: Multiple user assigned identities exist",
            "several user-assigned managed identities are assigned to this node",
            "set auth.managedIdentity.clientId",
        ] {
            assert!(e.message.contains(needle), "{needle:?} not in {}", e.message);
        }
        assert!(!e.message.contains("not assigned to this node"), "{}", e.message);
        let e = entra_error(400, not_found, &default);
        assert!(e.message.contains("Identity not found") && e.message.contains("no default managed identity"));
        assert!(e.message.contains("auth.managedIdentity.clientId"), "{}", e.message);
        let e = entra_error(400, not_found, &Identity::Managed { client_id: Some("mi".into()) });
        assert!(e.message.contains("managed identity mi") && e.message.contains("not assigned"), "{}", e.message);
        assert!(!e.message.contains("several"), "{}", e.message);
    }

    #[test]
    fn the_imds_authority_override_is_an_http_url() {
        assert!(imds_authority(None).unwrap().is_none());
        assert!(imds_authority(Some("  ")).unwrap().is_none());
        let url = imds_authority(Some("http://127.0.0.1:2579")).unwrap().unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:2579/");
        assert!(imds_authority(Some("https://nmi.internal/prefix/")).unwrap().is_some());
        for bad in ["127.0.0.1:2579", "ftp://x", "http://x/?a=b", "not a url"] {
            let e = AcrError::ImdsAuthorityInvalid { reason: imds_authority(Some(bad)).unwrap_err() };
            assert_eq!(e.reason(), reasons::PROVIDER_AUTH_FAILED, "{bad}");
            assert!(e.to_string().contains(IMDS_AUTHORITY_ENV), "{e}");
        }
    }

    #[test]
    fn imds_token_requests_go_to_the_override_with_their_query() {
        let client = crate::http::client(None, crate::http::PROVIDER_TIMEOUT).unwrap();
        let sdk = url::Url::parse(
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2019-08-01&resource=r&client_id=c",
        )
        .unwrap();
        let plain = Transport::new(client.clone());
        assert_eq!(plain.route(&sdk), sdk, "no override: IMDS itself");
        let routed = Transport::new(client.clone())
            .with_imds_authority(imds_authority(Some("http://127.0.0.1:2579")).unwrap())
            .route(&sdk);
        assert_eq!(
            routed.as_str(),
            "http://127.0.0.1:2579/metadata/identity/oauth2/token?api-version=2019-08-01&resource=r&client_id=c"
        );
        let prefixed = Transport::new(client.clone())
            .with_imds_authority(imds_authority(Some("https://nmi.internal/prefix/")).unwrap());
        assert_eq!(
            prefixed.route(&sdk).as_str(),
            "https://nmi.internal/prefix/metadata/identity/oauth2/token?api-version=2019-08-01&resource=r&client_id=c"
        );
        // Entra, App Service and other IMDS paths are left alone.
        for other in [
            "https://login.microsoftonline.com/t/oauth2/v2.0/token",
            "http://169.254.169.254/metadata/instance?api-version=2021-02-01",
            "http://localhost:8081/msi/token?api-version=2019-08-01",
        ] {
            let u = url::Url::parse(other).unwrap();
            assert_eq!(prefixed.route(&u), u);
        }
    }

    #[test]
    fn remote_text_is_shortened_and_secrets_scrubbed() {
        assert_eq!(short("AADSTS1: x Trace ID: abc\r\nmore"), "AADSTS1: x");
        assert_eq!(short(&"y".repeat(400)).len(), MAX_DESCRIPTION + 3);
        assert_eq!(Redactor::new(["abcdef"]).clean("token abcdef leaked"), "token <redacted> leaked");
    }

    #[test]
    fn debug_output_is_redacted() {
        let a = ServiceAccountAssertion(SecretString::from("eyJhbGciOi.secret.sig".to_string()));
        assert!(!format!("{a:?}").contains("secret"));
        let t = Transport::new(crate::http::client(None, crate::http::PROVIDER_TIMEOUT).unwrap());
        t.record(Answer::Response { url: "u".into(), status: 400, error_body: b"body".to_vec(), retry_after: None });
        assert!(!format!("{t:?}").contains("body"));
    }

    #[tokio::test]
    async fn acr_error_reasons() {
        let azure = || azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, "failed");
        let sp = Identity::ServicePrincipal { client_id: "app".into(), secret_name: "ns/sp".into() };
        let own = Identity::Federated { client_id: "app".into(), service_account: None };
        let endpoint = "the Microsoft Entra token endpoint";
        let url = || "https://r.azurecr.io/oauth2/exchange".to_string();
        let refused = crate::http::client(None, crate::http::PROVIDER_TIMEOUT)
            .unwrap()
            .get("http://127.0.0.1:1/")
            .send()
            .await
            .unwrap_err();
        let entra = |status: u16| AcrError::EntraRefused {
            identity: sp.clone(),
            endpoint,
            url: url(),
            status,
            detail: String::new(),
            retry_after: None,
            source: azure(),
        };
        let exchange = |status: u16| AcrError::ExchangeRefused {
            url: url(),
            status,
            detail: String::new(),
            hint: String::new(),
            retry_after: None,
        };
        for (e, reason) in [
            (AcrError::Source(SourceError::NoTokenSource { name: "sa".into() }), reasons::SERVICE_ACCOUNT_NOT_FOUND),
            (AcrError::Setup(crate::http::SetupError::InvalidCaBundle("x".into())), reasons::INVALID_SPEC),
            (AcrError::InvalidSpec("x".into()), reasons::INVALID_SPEC),
            (AcrError::FederatedTokenFileUnset, reasons::PROVIDER_AUTH_FAILED),
            (AcrError::ImdsAuthorityInvalid { reason: "x".into() }, reasons::PROVIDER_AUTH_FAILED),
            (AcrError::Credential { identity: own.clone(), source: azure() }, reasons::PROVIDER_AUTH_FAILED),
            (AcrError::Credential { identity: sp.clone(), source: azure() }, reasons::INVALID_SPEC),
            (AcrError::Entra { identity: sp.clone(), source: azure() }, reasons::PROVIDER_ERROR),
            (
                AcrError::EntraUnreachable {
                    identity: sp.clone(),
                    endpoint,
                    url: url(),
                    error: "x".into(),
                    source: azure(),
                },
                reasons::PROVIDER_ERROR,
            ),
            (
                AcrError::EntraNoToken { identity: sp.clone(), endpoint, url: url(), status: 200, source: azure() },
                reasons::PROVIDER_RESPONSE_INVALID,
            ),
            (entra(400), reasons::PROVIDER_AUTH_FAILED),
            (entra(401), reasons::PROVIDER_AUTH_FAILED),
            (entra(403), reasons::PROVIDER_AUTH_FAILED),
            (entra(429), reasons::PROVIDER_THROTTLED),
            (entra(503), reasons::PROVIDER_ERROR),
            (AcrError::ExchangeUnreachable { url: url(), source: refused }, reasons::PROVIDER_ERROR),
            (AcrError::ExchangeBody { url: url(), source: BodyError::TooLarge }, reasons::PROVIDER_RESPONSE_INVALID),
            (AcrError::ExchangeNoToken { url: url(), status: 200 }, reasons::PROVIDER_RESPONSE_INVALID),
            (exchange(400), reasons::PROVIDER_AUTH_FAILED),
            (exchange(401), reasons::PROVIDER_AUTH_FAILED),
            (exchange(403), reasons::PROVIDER_AUTH_FAILED),
            (exchange(404), reasons::PROVIDER_ERROR),
            (exchange(429), reasons::PROVIDER_THROTTLED),
            (exchange(500), reasons::PROVIDER_ERROR),
            (AcrError::UnusableRefreshToken { url: url(), detail: "x".into() }, reasons::PROVIDER_RESPONSE_INVALID),
        ] {
            assert_eq!(e.reason(), reason, "{e:?}");
            assert_eq!(ProviderError::from(e).reason, reason);
        }
        let e = AcrError::ExchangeBody { url: url(), source: BodyError::TooLarge };
        assert_eq!(
            e.to_string(),
            "exchanging the Entra token at https://r.azurecr.io/oauth2/exchange: response larger than 1048576 bytes"
        );
    }
}
