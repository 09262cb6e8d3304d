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
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::jiff::Timestamp;
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};

use super::{CredentialProvider, Minted, ProviderError, SourceError, Sources, optional_value, required_value};
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
    /// The operator's default credential chain found nothing.
    #[error("the operator has no ambient AWS credentials")]
    NoAmbientCredentials,
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
            EcrError::NoRole { .. } => reasons::INVALID_SPEC,
            EcrError::NoAmbientCredentials | EcrError::Construction { .. } => reasons::PROVIDER_AUTH_FAILED,
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
        ProviderError::typed(e.reason(), e)
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
                crate::http::note_retry_after(status, ctx.raw().headers().get("retry-after"));
                return EcrError::Status { call, status, source };
            };
            let detail = redactor.clean(e.message().unwrap_or(""));
            let hint = match code {
                "ExpiredToken" | "ExpiredTokenException" => " (the AWS credentials have expired)",
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
        SdkError::ResponseError(r) => EcrError::Status { call, status: r.raw().status().as_u16(), source },
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
            .map_err(|e| aws_error(CALL, &e, redactor))?;
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
        sdk.credentials_provider().ok_or(EcrError::NoAmbientCredentials)?
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
    /// `ecr:GetAuthorizationToken` as the credential's identity.
    async fn token(&self, sources: &Sources) -> Result<Minted, EcrError> {
        let sdk = sdk_config(&self.spec.region).await;
        let mut redactor = Redactor::default();
        let creds =
            resolve_identity(self.spec.auth.as_ref(), self.spec.assume_role.as_ref(), sources, &sdk, &mut redactor)
                .await?;
        let date = ProviderDate::default();
        let mut conf = aws_sdk_ecr::config::Builder::from(&sdk).credentials_provider(creds).interceptor(date.clone());
        if let Some(endpoint) = &self.spec.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        // One token serves every registry the principal may read (the
        // registryIds parameter of the call is deprecated for that reason):
        // one call, one entry per registry.
        const CALL: &str = "ecr:GetAuthorizationToken";
        let out = aws_sdk_ecr::Client::from_conf(conf.build())
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| aws_error(CALL, &e, &redactor))?;
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
        let expires_at = date.local_expiry(timestamp(data.expires_at()));
        Ok(Minted { auths, expires_at, state: None })
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
        let status = |status: u16| EcrError::Status { call, status, source: source() };
        for (e, reason) in [
            (
                EcrError::Source(SourceError::MissingKey { secret: "s".into(), key: "k".into(), expected: "e".into() }),
                reasons::SOURCE_SECRET_INVALID,
            ),
            (EcrError::NoRole { service_account: "sa".into() }, reasons::INVALID_SPEC),
            (EcrError::NoAmbientCredentials, reasons::PROVIDER_AUTH_FAILED),
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
