//! Amazon ECR and ECR Public: `GetAuthorizationToken`, once per refresh,
//! with every AWS identity a cluster uses.
//!
//! Identity, in order:
//! 1. the base identity: `auth.secretRef` (static keys), `auth.serviceAccountRef`
//!    (a TokenRequest token exchanged through `sts:AssumeRoleWithWebIdentity`),
//!    or the operator's default credential chain (ambient: IRSA web identity,
//!    EKS Pod Identity / container credentials, environment, IMDS);
//! 2. `assumeRole` on top (`sts:AssumeRole`), except with `serviceAccountRef`,
//!    where the role is the web identity's role.
//!
//! Endpoints follow the AWS SDKs' own configuration (`AWS_ENDPOINT_URL`,
//! `AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL_ECR`, ...) plus the spec's
//! `endpoint` for the ECR API (VPC endpoints, FIPS).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::jiff::Timestamp;
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};

use super::{
    CredentialProvider, Minted, ProviderError, SourceError, Sources, optional_value, required_value, token_subject,
};
use crate::api::{AssumeRole, AwsAuth, EcrProvider, EcrPublicProvider};
use crate::hygiene::Kind;
use crate::reasons;
use crate::redact::{Redactor, Scrubbed};
use crate::render::RegistryAuth;

/// Audience of ServiceAccount tokens for `AssumeRoleWithWebIdentity` (as IRSA).
const STS_AUDIENCE: &str = "sts.amazonaws.com";
/// The ServiceAccount annotation IRSA uses for the role.
const ROLE_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
const DEFAULT_SESSION_NAME: &str = "regcred";
/// ECR Public's API lives in us-east-1 only.
const ECR_PUBLIC_REGION: &str = "us-east-1";
const ECR_PUBLIC_REGISTRY: &str = "public.ecr.aws";

/// `provider.ecr`.
pub struct Ecr {
    spec: EcrProvider,
}

impl Ecr {
    pub fn new(spec: EcrProvider) -> Self {
        Ecr { spec }
    }
}

/// `provider.ecrPublic`.
pub struct EcrPublic {
    spec: EcrPublicProvider,
}

impl EcrPublic {
    pub fn new(spec: EcrPublicProvider) -> Self {
        EcrPublic { spec }
    }
}

async fn sdk_config(region: &str) -> SdkConfig {
    use aws_smithy_http_client::tls;
    // One HTTP stack for every AWS call: hyper 1 and rustls with `ring`, as
    // the rest of regcred (no second hyper or rustls generation).
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    // A hanging endpoint must fail the refresh (retried on the backoff),
    // not stall it: the SDK sets no read or operation timeout by default.
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(10))
        .operation_timeout(crate::http::PROVIDER_TIMEOUT)
        .build();
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .http_client(http)
        .timeout_config(timeouts)
        .load()
        .await
}

/// Why an ECR token could not be minted. Messages name the AWS call and
/// AWS's error code; AWS's own text has every key and token regcred knows
/// removed, and so have the causes kept ([`Scrubbed`]: the SDK's errors
/// themselves are not kept, their messages may quote a request).
#[derive(Debug, thiserror::Error)]
pub enum EcrError {
    /// The keys Secret or the ServiceAccount token could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// `serviceAccountRef` without a role to assume.
    #[error(
        "serviceAccountRef {service_account}: no role: set assumeRole.roleArn or annotate the ServiceAccount with {ROLE_ANNOTATION}"
    )]
    NoRole { service_account: String },
    /// No region to mint in (the schema requires one).
    #[error("no region: set region or regions")]
    NoRegion,
    /// sts:AssumeRoleWithWebIdentity refused a ServiceAccount's token.
    #[error(
        "{source} (web identity {subject}, audience {audience}, role {role}: the role's trust policy must allow them)"
    )]
    WebIdentity {
        subject: String,
        audience: String,
        role: String,
        #[source]
        source: Box<EcrError>,
    },
    /// The operator's default credential chain found nothing.
    #[error("the operator has no ambient AWS credentials")]
    NoAmbientCredentials,
    /// A provider of the operator's default credential chain failed (the
    /// container credentials endpoint of EKS Pod Identity refused, a web
    /// identity token file is missing, ...): `detail` is the SDK's cause
    /// chain, cleaned.
    #[error("the operator's ambient AWS credentials could not be loaded: {detail}")]
    AmbientCredentials { detail: String, timed_out: bool },
    /// AWS answered with an error code (`detail`: its message, cleaned;
    /// `hint`: empty or what to check, starting with a space).
    #[error("{call}: {code}: {detail}{hint}")]
    Service {
        call: &'static str,
        code: String,
        detail: String,
        hint: &'static str,
        #[source]
        source: Scrubbed,
    },
    /// An answer without AWS's error format, described by its HTTP status.
    #[error("{call}: {}", status_text(*status))]
    Status {
        call: &'static str,
        status: u16,
        /// The answer's `Retry-After`, for the pacing.
        retry_after: Option<std::time::Duration>,
        #[source]
        source: Scrubbed,
    },
    /// The request was not answered (`what`: timed out, could not connect,
    /// failed).
    #[error("{call}: the request {what} (is the region right, and the endpoint reachable?)")]
    Dispatch {
        call: &'static str,
        what: &'static str,
        #[source]
        source: Scrubbed,
    },
    /// The SDK gave up waiting.
    #[error("{call}: timed out")]
    Timeout {
        call: &'static str,
        #[source]
        source: Scrubbed,
    },
    /// The request could not be built, typically for want of credentials.
    #[error("{call}: the request could not be built (no usable AWS credentials?)")]
    Construction {
        call: &'static str,
        #[source]
        source: Scrubbed,
    },
    /// Any other SDK failure.
    #[error("{call}: failed")]
    Other {
        call: &'static str,
        #[source]
        source: Scrubbed,
    },
    /// A successful answer without a usable token or credentials.
    #[error("{call}: {problem}")]
    InvalidResponse { call: &'static str, problem: &'static str },
}

/// What an HTTP status alone says about a failed call.
fn status_text(status: u16) -> String {
    match status {
        429 => "throttled (HTTP 429)".to_string(),
        500..=599 => format!("the endpoint answered HTTP {status}"),
        _ => format!("the response (HTTP {status}) could not be understood"),
    }
}

impl EcrError {
    /// The condition reason ([`crate::reasons`]).
    pub fn reason(&self) -> &'static str {
        match self {
            EcrError::Source(e) => e.reason(),
            EcrError::WebIdentity { source, .. } => source.reason(),
            EcrError::NoRole { .. } | EcrError::NoRegion => reasons::INVALID_SPEC,
            EcrError::NoAmbientCredentials | EcrError::Construction { .. } => reasons::PROVIDER_AUTH_FAILED,
            EcrError::AmbientCredentials { timed_out: true, .. } => reasons::PROVIDER_ERROR,
            EcrError::AmbientCredentials { .. } => reasons::PROVIDER_AUTH_FAILED,
            EcrError::Service { code, .. } => match code.as_str() {
                "AccessDenied"
                | "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
                | "InvalidSignatureException"
                | "ExpiredToken"
                | "ExpiredTokenException"
                | "InvalidIdentityToken"
                | "IDPRejectedClaim"
                | "IDPCommunicationError" => reasons::PROVIDER_AUTH_FAILED,
                "Throttling" | "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => {
                    reasons::PROVIDER_THROTTLED
                }
                "RegionDisabledException" | "InvalidParameterException" | "ValidationError" | "ValidationException" => {
                    reasons::INVALID_SPEC
                }
                _ => reasons::PROVIDER_ERROR,
            },
            EcrError::Status { status: 429, .. } => reasons::PROVIDER_THROTTLED,
            EcrError::Status { status: 500..=599, .. } => reasons::PROVIDER_ERROR,
            EcrError::Status { .. } | EcrError::InvalidResponse { .. } => reasons::PROVIDER_RESPONSE_INVALID,
            EcrError::Dispatch { .. } | EcrError::Timeout { .. } | EcrError::Other { .. } => reasons::PROVIDER_ERROR,
        }
    }
}

impl From<EcrError> for ProviderError {
    fn from(e: EcrError) -> Self {
        let retry_after = match &e {
            EcrError::Status { retry_after, .. } => *retry_after,
            _ => None,
        };
        ProviderError::typed(e.reason(), e).with_retry_after(retry_after)
    }
}

/// Maps an AWS SDK error to a precise reason. The message names the call.
fn aws_error<E>(
    call: &'static str,
    err: &SdkError<E, aws_sdk_ecr::config::http::HttpResponse>,
    redactor: &Redactor,
) -> EcrError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let source = Scrubbed::new(err, redactor);
    match err {
        SdkError::ServiceError(ctx) => {
            let e = ctx.err();
            // No AWS error code: the body is not AWS's error format (a proxy
            // or load balancer answered), so the HTTP status says more.
            let Some(code) = e.code() else {
                let status = ctx.raw().status().as_u16();
                let retry_after = crate::http::retry_after(status, ctx.raw().headers().get("retry-after"));
                return EcrError::Status { call, status, retry_after, source };
            };
            let detail = redactor.clean(e.message().unwrap_or(""));
            let hint = match code {
                "ExpiredToken" | "ExpiredTokenException" => " (the AWS credentials have expired)",
                // A refused web identity is the role's trust policy, which
                // the caller names with the token's subject and audience.
                "AccessDenied" | "AccessDeniedException" if call == "sts:AssumeRoleWithWebIdentity" => "",
                "AccessDenied" | "AccessDeniedException" => {
                    " (check the IAM policy: ecr:GetAuthorizationToken, sts:AssumeRole)"
                }
                "RegionDisabledException" => " (the region is not enabled for the account)",
                _ => "",
            };
            EcrError::Service { call, code: code.to_string(), detail, hint, source }
        }
        SdkError::DispatchFailure(f) => {
            let what = if f.is_timeout() {
                "timed out"
            } else if f.is_io() {
                "could not connect"
            } else {
                "failed"
            };
            EcrError::Dispatch { call, what, source }
        }
        SdkError::TimeoutError(_) => EcrError::Timeout { call, source },
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            let retry_after = crate::http::retry_after(status, r.raw().headers().get("retry-after"));
            EcrError::Status { call, status, retry_after, source }
        }
        SdkError::ConstructionFailure(_) => EcrError::Construction { call, source },
        _ => EcrError::Other { call, source },
    }
}

fn sts_credentials(
    call: &'static str,
    creds: Option<&aws_sdk_sts::types::Credentials>,
) -> Result<Credentials, EcrError> {
    let c = creds.ok_or(EcrError::InvalidResponse { call, problem: "the response holds no credentials" })?;
    let expiry = SystemTime::try_from(*c.expiration()).ok();
    Ok(Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        expiry,
        "regcred-sts",
    ))
}

/// The AWS identity for a credential, after `assumeRole`.
async fn resolve_identity(
    auth: Option<&AwsAuth>,
    assume: Option<&AssumeRole>,
    sources: &Sources,
    sdk: &SdkConfig,
    redactor: &mut Redactor,
) -> Result<SharedCredentialsProvider, EcrError> {
    let auth = auth.cloned().unwrap_or_default();
    let sts = |creds: Option<SharedCredentialsProvider>| {
        let mut b = aws_sdk_sts::config::Builder::from(sdk);
        if let Some(c) = creds {
            b = b.credentials_provider(c);
        }
        aws_sdk_sts::Client::from_conf(b.build())
    };
    let session = |a: Option<&AssumeRole>| {
        a.and_then(|a| a.session_name.clone()).unwrap_or_else(|| DEFAULT_SESSION_NAME.to_string())
    };

    if let Some(sa) = &auth.service_account_ref {
        let audience = sa.audiences.as_ref().and_then(|a| a.first()).map(String::as_str).unwrap_or(STS_AUDIENCE);
        let token = sources.service_account_token(&sa.name, sa.namespace.as_deref(), audience).await?;
        redactor.add(token.token.expose_secret());
        let role = assume
            .map(|a| a.role_arn.clone())
            .or_else(|| token.annotations.get(ROLE_ANNOTATION).cloned())
            .ok_or_else(|| EcrError::NoRole { service_account: sa.name.clone() })?;
        const CALL: &str = "sts:AssumeRoleWithWebIdentity";
        let out = sts(None)
            .assume_role_with_web_identity()
            .role_arn(&role)
            .role_session_name(session(assume))
            .web_identity_token(token.token.expose_secret())
            .send()
            .await
            .map_err(|e| {
                let error = aws_error(CALL, &e, redactor);
                // STS does not say whom it refused; the trust policy is
                // matched against the token's `sub` and `aud`, so name them.
                let subject =
                    token_subject(token.token.expose_secret()).unwrap_or_else(|| format!("ServiceAccount {}", sa.name));
                EcrError::WebIdentity {
                    subject,
                    audience: audience.to_string(),
                    role: role.clone(),
                    source: Box::new(error),
                }
            })?;
        let creds = sts_credentials(CALL, out.credentials())?;
        redactor.add(creds.secret_access_key());
        return Ok(SharedCredentialsProvider::new(creds));
    }

    let base = if let Some(r) = &auth.secret_ref {
        let secret = sources.secret(r).await?;
        let name = format!("{}/{}", sources.namespace(), r.name);
        const EXPECTED: &str = "access-key-id and secret-access-key, optionally session-token";
        let access_key = required_value(&secret, &name, "access-key-id", Kind::Username, EXPECTED)?;
        let secret_key = required_value(&secret, &name, "secret-access-key", Kind::Secret, EXPECTED)?;
        // An empty session-token (a template's unset value) means none.
        let session_token = optional_value(&secret, &name, "session-token", Kind::Secret)?;
        redactor.add(&secret_key);
        if let Some(t) = &session_token {
            redactor.add(t);
        }
        SharedCredentialsProvider::new(Credentials::new(access_key, secret_key, session_token, None, "regcred-secret"))
    } else {
        sources.check_ambient("ECR without auth.secretRef or auth.serviceAccountRef")?;
        let chain = sdk.credentials_provider().ok_or(EcrError::NoAmbientCredentials)?;
        // Resolved here: a chain that fails inside an AWS call surfaces as
        // that call's dispatch failure ("the request failed"), without why.
        let creds = chain.provide_credentials().await.map_err(|e| ambient_error(&e, redactor))?;
        redactor.add(creds.secret_access_key());
        if let Some(token) = creds.session_token() {
            redactor.add(token);
        }
        SharedCredentialsProvider::new(creds)
    };

    let Some(role) = assume else { return Ok(base) };
    const CALL: &str = "sts:AssumeRole";
    let out = sts(Some(base))
        .assume_role()
        .role_arn(&role.role_arn)
        .role_session_name(session(Some(role)))
        .set_external_id(role.external_id.clone())
        .send()
        .await
        .map_err(|e| aws_error(CALL, &e, redactor))?;
    let creds = sts_credentials(CALL, out.credentials())?;
    redactor.add(creds.secret_access_key());
    Ok(SharedCredentialsProvider::new(creds))
}

/// Why the default credential chain gave no credentials, as the SDK says it.
fn ambient_error(e: &CredentialsError, redactor: &Redactor) -> EcrError {
    match e {
        CredentialsError::CredentialsNotLoaded(_) => EcrError::NoAmbientCredentials,
        _ => EcrError::AmbientCredentials {
            detail: redactor.clean(&crate::http::cause_chain(e)),
            timed_out: matches!(e, CredentialsError::ProviderTimedOut(_)),
        },
    }
}

/// Decodes `AWS:<password>` from an authorization token.
fn decode_token(call: &'static str, token: Option<&str>) -> Result<(String, SecretString), EcrError> {
    let invalid = |problem| EcrError::InvalidResponse { call, problem };
    let raw = STANDARD
        .decode(token.ok_or_else(|| invalid("no authorization token"))?.trim())
        .map_err(|_| invalid("the authorization token is not base64"))?;
    let text = String::from_utf8(raw).map_err(|_| invalid("the authorization token is not UTF-8"))?;
    match text.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => {
            Ok((user.to_string(), password.to_string().into()))
        }
        _ => Err(invalid("the authorization token is not user:password")),
    }
}

/// `<account>.dkr.ecr.<region>.<domain>` for another account, keeping the
/// caller's own registry's region, partition and FIPS domain.
fn registry_host(default_host: &str, account: &str) -> String {
    match default_host.split_once('.') {
        Some((_, rest)) => format!("{account}.{rest}"),
        None => default_host.to_string(),
    }
}

fn timestamp(dt: Option<&aws_sdk_ecr::primitives::DateTime>) -> Option<Timestamp> {
    dt.and_then(|d| Timestamp::from_second(d.secs()).ok())
}

/// The HTTP `Date` of AWS's answer: the clock `expiresAt` is on, against
/// which the token's lifetime is measured ([`crate::schedule::local_expiry`]),
/// so a node clock minutes off does not move the refresh.
#[derive(Clone, Debug, Default)]
struct ProviderDate(Arc<Mutex<Option<Timestamp>>>);

impl ProviderDate {
    fn get(&self) -> Option<Timestamp> {
        *self.0.lock()
    }

    /// `expires_at` on this node's clock, the token having arrived now.
    fn local_expiry(&self, expires_at: Option<Timestamp>) -> Option<Timestamp> {
        expires_at.map(|e| crate::schedule::local_expiry(Timestamp::now(), e, self.get()))
    }
}

impl aws_sdk_ecrpublic::config::Intercept for ProviderDate {
    fn name(&self) -> &'static str {
        "ProviderDate"
    }

    fn read_before_deserialization(
        &self,
        context: &aws_sdk_ecrpublic::config::interceptors::BeforeDeserializationInterceptorContextRef<'_>,
        _: &aws_sdk_ecrpublic::config::RuntimeComponents,
        _: &mut aws_sdk_ecrpublic::config::ConfigBag,
    ) -> Result<(), aws_sdk_ecrpublic::error::BoxError> {
        use aws_sdk_ecrpublic::primitives::{DateTime, DateTimeFormat};
        let date = context
            .response()
            .headers()
            .get("date")
            .and_then(|d| DateTime::from_str(d, DateTimeFormat::HttpDate).ok())
            .and_then(|d| Timestamp::from_second(d.secs()).ok());
        *self.0.lock() = date;
        Ok(())
    }
}

#[async_trait]
impl CredentialProvider for Ecr {
    async fn mint(&self, sources: &Sources) -> Result<Minted, ProviderError> {
        Ok(self.token(sources).await?)
    }
}

impl Ecr {
    /// `ecr:GetAuthorizationToken` as the credential's identity, once per
    /// region: a token is valid only in the region that issued it.
    async fn token(&self, sources: &Sources) -> Result<Minted, EcrError> {
        let regions = self.spec.region_list();
        let Some(first) = regions.first() else {
            return Err(EcrError::NoRegion);
        };
        let sdk = sdk_config(first).await;
        let mut redactor = Redactor::default();
        let creds =
            resolve_identity(self.spec.auth.as_ref(), self.spec.assume_role.as_ref(), sources, &sdk, &mut redactor)
                .await?;
        let mut auths = Vec::new();
        let mut expires_at: Option<Timestamp> = None;
        for region in &regions {
            let sdk = if region == first { sdk.clone() } else { sdk_config(region).await };
            let (mut region_auths, expiry) = self.region_token(&sdk, creds.clone(), &redactor).await?;
            auths.append(&mut region_auths);
            // The Secret lives as long as its shortest-lived token.
            expires_at = match (expires_at, expiry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(Minted { auths, expires_at, state: None })
    }

    /// One region's token: an entry for each account of `registryIds`, or
    /// for the caller's own registry.
    async fn region_token(
        &self,
        sdk: &SdkConfig,
        creds: SharedCredentialsProvider,
        redactor: &Redactor,
    ) -> Result<(Vec<RegistryAuth>, Option<Timestamp>), EcrError> {
        let date = ProviderDate::default();
        let mut conf = aws_sdk_ecr::config::Builder::from(sdk).credentials_provider(creds).interceptor(date.clone());
        if let Some(endpoint) = &self.spec.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        // One token serves every registry the principal may read in the
        // region (the registryIds parameter of the call is deprecated for
        // that reason): one call, one entry per registry.
        const CALL: &str = "ecr:GetAuthorizationToken";
        let out = aws_sdk_ecr::Client::from_conf(conf.build())
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| aws_error(CALL, &e, redactor))?;
        let data = out
            .authorization_data()
            .first()
            .ok_or(EcrError::InvalidResponse { call: CALL, problem: "no authorization data" })?;
        let (username, password) = decode_token(CALL, data.authorization_token())?;
        let default_host = data
            .proxy_endpoint()
            .map(|e| e.trim_start_matches("https://").trim_end_matches('/').to_string())
            .filter(|h| h.contains('.'))
            .ok_or(EcrError::InvalidResponse { call: CALL, problem: "no proxy endpoint" })?;
        let hosts = match &self.spec.registry_ids {
            Some(ids) if !ids.is_empty() => ids.iter().map(|id| registry_host(&default_host, id)).collect(),
            _ => vec![default_host],
        };
        let auths = hosts
            .into_iter()
            .map(|registry| RegistryAuth { registry, username: username.clone(), password: password.clone() })
            .collect();
        Ok((auths, date.local_expiry(timestamp(data.expires_at()))))
    }
}

/// A private ECR registry host, read as the upstream plugins read it:
/// `<12-digit account>.dkr.ecr[-fips].<region>.<domain>`, or the dual-stack
/// `.dkr-ecr.` form (kubernetes/cloud-provider-aws
/// `cmd/ecr-credential-provider/main.go`, `ecrPrivateHostPattern`;
/// awslabs/amazon-ecr-credential-helper `ecr-login/api/client.go`,
/// `ecrPattern`, which also lists `amazonaws.eu`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcrHost {
    pub account: String,
    pub region: String,
    pub fips: bool,
    pub dual_stack: bool,
}

/// The partition domains ECR registries live under (the same sources).
const ECR_DOMAINS: &[&str] = &[
    "amazonaws.com",
    "amazonaws.com.cn",
    "amazonaws.eu",
    "on.aws",
    "on.amazonwebservices.com.cn",
    "sc2s.sgov.gov",
    "c2s.ic.gov",
    "cloud.adc-e.uk",
    "csp.hci.ic.gov",
];

impl EcrHost {
    /// Parses a host (no port, no path); `None` when it is not an ECR
    /// private registry host.
    pub fn parse(host: &str) -> Option<EcrHost> {
        let host = host.to_ascii_lowercase();
        let (account, rest) = host.split_once('.')?;
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (dual_stack, rest) = match (rest.strip_prefix("dkr.ecr"), rest.strip_prefix("dkr-ecr")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => return None,
        };
        let (fips, rest) = match rest.strip_prefix("-fips") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let (region, domain) = rest.strip_prefix('.')?.split_once('.')?;
        let region_ok = region.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !region_ok || !ECR_DOMAINS.contains(&domain) {
            return None;
        }
        Some(EcrHost { account: account.to_string(), region: region.to_string(), fips, dual_stack })
    }
}

#[async_trait]
impl CredentialProvider for EcrPublic {
    async fn mint(&self, sources: &Sources) -> Result<Minted, ProviderError> {
        Ok(self.token(sources).await?)
    }
}

impl EcrPublic {
    /// `ecr-public:GetAuthorizationToken` as the credential's identity.
    async fn token(&self, sources: &Sources) -> Result<Minted, EcrError> {
        let sdk = sdk_config(ECR_PUBLIC_REGION).await;
        let mut redactor = Redactor::default();
        let creds =
            resolve_identity(self.spec.auth.as_ref(), self.spec.assume_role.as_ref(), sources, &sdk, &mut redactor)
                .await?;
        let date = ProviderDate::default();
        let mut conf =
            aws_sdk_ecrpublic::config::Builder::from(&sdk).credentials_provider(creds).interceptor(date.clone());
        if let Some(endpoint) = &self.spec.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        const CALL: &str = "ecr-public:GetAuthorizationToken";
        let out = aws_sdk_ecrpublic::Client::from_conf(conf.build())
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| aws_error(CALL, &e, &redactor))?;
        let data = out
            .authorization_data()
            .ok_or(EcrError::InvalidResponse { call: CALL, problem: "no authorization data" })?;
        let (username, password) = decode_token(CALL, data.authorization_token())?;
        let expires_at = date.local_expiry(data.expires_at().and_then(|d| Timestamp::from_second(d.secs()).ok()));
        Ok(Minted {
            auths: vec![RegistryAuth { registry: ECR_PUBLIC_REGISTRY.into(), username, password }],
            expires_at,
            state: None,
        })
    }
}

/// Fuzzing entry point (`fuzz/`): the ECR authorization token decoder on
/// arbitrary input; an error never echoes the token.
pub(super) fn fuzz_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // A valid base64 token (no spaces, so no message words) is never echoed.
    if let Err(e) = decode_token("ecr:GetAuthorizationToken", Some(&text))
        && text.len() >= 8
        && base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).is_ok()
    {
        assert!(!e.to_string().contains(text.as_ref()), "the error echoes the token");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_hosts_of_every_partition_and_form() {
        let h = |account: &str, region: &str, fips, dual_stack| EcrHost {
            account: account.into(),
            region: region.into(),
            fips,
            dual_stack,
        };
        for (host, want) in [
            ("123456789012.dkr.ecr.us-west-2.amazonaws.com", h("123456789012", "us-west-2", false, false)),
            ("210987654321.dkr.ecr.eu-central-1.amazonaws.com", h("210987654321", "eu-central-1", false, false)),
            ("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com", h("123456789012", "us-gov-west-1", true, false)),
            ("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", h("123456789012", "cn-north-1", false, false)),
            ("123456789012.dkr-ecr.us-east-1.on.aws", h("123456789012", "us-east-1", false, true)),
            ("123456789012.dkr-ecr-fips.us-east-1.on.aws", h("123456789012", "us-east-1", true, true)),
            (
                "123456789012.dkr-ecr.cn-northwest-1.on.amazonwebservices.com.cn",
                h("123456789012", "cn-northwest-1", false, true),
            ),
            ("123456789012.dkr.ecr.eusc-de-east-1.amazonaws.eu", h("123456789012", "eusc-de-east-1", false, false)),
            ("123456789012.dkr.ecr.us-iso-east-1.c2s.ic.gov", h("123456789012", "us-iso-east-1", false, false)),
            ("123456789012.dkr.ecr.us-isob-east-1.sc2s.sgov.gov", h("123456789012", "us-isob-east-1", false, false)),
            ("123456789012.dkr.ecr.eu-isoe-west-1.cloud.adc-e.uk", h("123456789012", "eu-isoe-west-1", false, false)),
            ("123456789012.dkr.ecr.us-isof-south-1.csp.hci.ic.gov", h("123456789012", "us-isof-south-1", false, false)),
            ("123456789012.DKR.ECR.US-WEST-2.AMAZONAWS.COM", h("123456789012", "us-west-2", false, false)),
        ] {
            assert_eq!(EcrHost::parse(host), Some(want), "{host}");
        }
        for host in [
            "12345678901.dkr.ecr.us-west-2.amazonaws.com",
            "1234567890123.dkr.ecr.us-west-2.amazonaws.com",
            "123456789012.dkr.ecr.us-west-2.amazonaws.com.evil.io",
            "123456789012.dkr.ecr.us-west-2.evil.io",
            "123456789012.dkr.ecr.amazonaws.com",
            "123456789012.ecr.us-west-2.amazonaws.com",
            "public.ecr.aws",
            "europe-docker.pkg.dev",
        ] {
            assert_eq!(EcrHost::parse(host), None, "{host}");
        }
    }

    #[test]
    fn web_identity_refusals_name_the_subject_never_the_token() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = r#"{"sub":"system:serviceaccount:team:puller","aud":["sts.amazonaws.com"]}"#;
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl", URL_SAFE_NO_PAD.encode(claims));
        assert_eq!(token_subject(&token).as_deref(), Some("system:serviceaccount:team:puller"));
        assert_eq!(token_subject("not-a-jwt"), None);
        let refused = EcrError::WebIdentity {
            subject: token_subject(&token).unwrap(),
            audience: "sts.amazonaws.com".into(),
            role: "arn:aws:iam::111122223333:role/pull".into(),
            source: Box::new(EcrError::InvalidResponse { call: "sts:AssumeRoleWithWebIdentity", problem: "x" }),
        };
        let e = ProviderError::from(refused);
        assert_eq!(e.reason, reasons::PROVIDER_RESPONSE_INVALID, "the reason is STS's");
        assert!(e.message.contains("web identity system:serviceaccount:team:puller"), "{}", e.message);
        assert!(!e.message.contains(&token));
    }

    #[test]
    fn regions_are_listed_once_in_order() {
        let spec = |v: serde_json::Value| serde_json::from_value::<EcrProvider>(v).unwrap();
        assert_eq!(spec(serde_json::json!({"region": "eu-west-1"})).region_list(), ["eu-west-1"]);
        assert_eq!(
            spec(serde_json::json!({"regions": ["us-west-2", "eu-central-1", "us-west-2"]})).region_list(),
            ["us-west-2", "eu-central-1"]
        );
    }

    #[test]
    fn decodes_aws_tokens_and_rejects_garbage_without_echoing_it() {
        let (u, p) = decode_token("c", Some(&STANDARD.encode("AWS:s3cr3t-pw"))).unwrap();
        assert_eq!((u.as_str(), p.expose_secret()), ("AWS", "s3cr3t-pw"));
        for bad in ["!!!", &STANDARD.encode("no-colon-s3cr3t"), &STANDARD.encode("AWS:")] {
            let e = ProviderError::from(decode_token("c", Some(bad)).unwrap_err());
            assert_eq!(e.reason, reasons::PROVIDER_RESPONSE_INVALID);
            assert!(!e.message.contains("s3cr3t"));
        }
        assert!(decode_token("c", None).is_err());
    }

    #[test]
    fn registry_hosts_for_other_accounts_keep_region_and_domain() {
        let own = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
        assert_eq!(registry_host(own, "111122223333"), "111122223333.dkr.ecr.eu-west-1.amazonaws.com");
        let fips = "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com";
        assert_eq!(registry_host(fips, "210987654321"), "210987654321.dkr.ecr-fips.us-gov-west-1.amazonaws.com");
    }

    #[test]
    fn a_failing_ambient_chain_is_named_as_the_sdk_says_it() {
        let r = Redactor::new(["s3cr3t-in-message"]);
        let refused = CredentialsError::provider_error("Non-success status from HTTP credential provider: 404");
        let e = ambient_error(&refused, &r);
        assert_eq!(e.reason(), reasons::PROVIDER_AUTH_FAILED);
        assert_eq!(
            e.to_string(),
            "the operator's ambient AWS credentials could not be loaded: an error occurred while loading credentials: \
             Non-success status from HTTP credential provider: 404"
        );
        let leaky = ambient_error(&CredentialsError::invalid_configuration("bad s3cr3t-in-message"), &r);
        assert!(!leaky.to_string().contains("s3cr3t"), "{leaky}");
        assert!(matches!(ambient_error(&CredentialsError::not_loaded("none"), &r), EcrError::NoAmbientCredentials));
        let slow = ambient_error(&CredentialsError::provider_timed_out(Duration::from_secs(5)), &r);
        assert_eq!(slow.reason(), reasons::PROVIDER_ERROR);
    }

    #[test]
    fn redactor_hides_known_secrets() {
        let r = Redactor::new(["AKIASECRETVALUE"]);
        assert_eq!(r.clean("bad key AKIASECRETVALUE here"), "bad key <redacted> here");
    }

    #[test]
    fn ecr_error_reasons() {
        let source = || Scrubbed::new(&std::io::Error::other("cause"), &Redactor::default());
        let call = "ecr:GetAuthorizationToken";
        let service = |code: &str| EcrError::Service {
            call,
            code: code.into(),
            detail: String::new(),
            hint: "",
            source: source(),
        };
        let status = |status: u16| EcrError::Status { call, status, retry_after: None, source: source() };
        for (e, reason) in [
            (
                EcrError::Source(SourceError::MissingKey { secret: "s".into(), key: "k".into(), expected: "e".into() }),
                reasons::SOURCE_SECRET_INVALID,
            ),
            (EcrError::NoRole { service_account: "sa".into() }, reasons::INVALID_SPEC),
            (EcrError::NoAmbientCredentials, reasons::PROVIDER_AUTH_FAILED),
            (EcrError::AmbientCredentials { detail: "x".into(), timed_out: false }, reasons::PROVIDER_AUTH_FAILED),
            (EcrError::AmbientCredentials { detail: "x".into(), timed_out: true }, reasons::PROVIDER_ERROR),
            (service("AccessDeniedException"), reasons::PROVIDER_AUTH_FAILED),
            (service("ExpiredToken"), reasons::PROVIDER_AUTH_FAILED),
            (service("InvalidIdentityToken"), reasons::PROVIDER_AUTH_FAILED),
            (service("ThrottlingException"), reasons::PROVIDER_THROTTLED),
            (service("RegionDisabledException"), reasons::INVALID_SPEC),
            (service("ValidationError"), reasons::INVALID_SPEC),
            (service("InternalFailure"), reasons::PROVIDER_ERROR),
            (status(429), reasons::PROVIDER_THROTTLED),
            (status(503), reasons::PROVIDER_ERROR),
            (status(403), reasons::PROVIDER_RESPONSE_INVALID),
            (EcrError::Dispatch { call, what: "timed out", source: source() }, reasons::PROVIDER_ERROR),
            (EcrError::Timeout { call, source: source() }, reasons::PROVIDER_ERROR),
            (EcrError::Construction { call, source: source() }, reasons::PROVIDER_AUTH_FAILED),
            (EcrError::Other { call, source: source() }, reasons::PROVIDER_ERROR),
            (EcrError::InvalidResponse { call, problem: "no proxy endpoint" }, reasons::PROVIDER_RESPONSE_INVALID),
        ] {
            assert_eq!(e.reason(), reason, "{e:?}");
            assert_eq!(ProviderError::from(e).reason, reason);
        }
        assert_eq!(status(429).to_string(), "ecr:GetAuthorizationToken: throttled (HTTP 429)");
        assert_eq!(status(502).to_string(), "ecr:GetAuthorizationToken: the endpoint answered HTTP 502");
        assert_eq!(
            status(404).to_string(),
            "ecr:GetAuthorizationToken: the response (HTTP 404) could not be understood"
        );
    }
}
