//! Credential providers: one module per provider behind one trait.
//!
//! A provider mints the registry logins for a credential once per refresh;
//! the controller fans the result out to every target namespace. Adding a
//! provider means a module here and an arm in [`for_spec`]; nothing else.

mod acr;
mod basic;
mod ecr;
mod google;
mod harbor;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use parking_lot::Mutex;
use secrecy::SecretString;

use crate::api::{Provider, SecretRef};
use crate::render::RegistryAuth;
use crate::{hygiene, reasons};

pub use acr::AcrError;
pub use ecr::{EcrError, EcrHost};
pub use google::GoogleError;
pub use harbor::HarborError;

/// What a provider returns: one login per registry and, for short-lived
/// credentials, when they expire.
#[derive(Clone, Debug, Default)]
pub struct Minted {
    pub auths: Vec<RegistryAuth>,
    pub expires_at: Option<Timestamp>,
    /// State the provider keeps between refreshes (for example Harbor robot
    /// ids), stored in `status.providerState` and handed back through
    /// [`Sources::previous_state`]. Never secret material.
    pub state: Option<serde_json::Value>,
}

/// A provider failure, as the controller reports it. `reason` is a
/// condition reason from [`crate::reasons`]; `message` never contains secret
/// material. Providers fail with their own error types ([`SourceError`],
/// [`EcrError`], [`AcrError`], [`GoogleError`], [`HarborError`]), which
/// convert into this one keeping the typed error as the
/// [`source`](std::error::Error::source), so logs can print the whole cause
/// chain ([`crate::http::cause_chain`]). Two errors are equal when reason
/// and message are.
#[derive(Clone)]
pub struct ProviderError {
    pub reason: &'static str,
    pub message: String,
    /// How long a throttling answer asked callers to wait (its
    /// `Retry-After`), for the pacing of the endpoint ([`crate::pacing`]).
    pub retry_after: Option<std::time::Duration>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for ProviderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The typed error itself, not the `Arc` around it (which would
        // hide it from `downcast_ref`).
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl ProviderError {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        ProviderError { reason, message: message.into(), retry_after: None, source: None }
    }

    /// The same error with the `Retry-After` of the answer that caused it.
    pub fn with_retry_after(mut self, after: Option<std::time::Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// The error for a typed provider error: its reason, its message, and
    /// the error itself as the source.
    fn typed<E: std::error::Error + Send + Sync + 'static>(reason: &'static str, error: E) -> Self {
        ProviderError { reason, message: error.to_string(), retry_after: None, source: Some(Arc::new(error)) }
    }
}

impl PartialEq for ProviderError {
    fn eq(&self, other: &Self) -> bool {
        self.reason == other.reason && self.message == other.message
    }
}

impl Eq for ProviderError {}

impl fmt::Debug for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The source's Debug could be anything a library keeps; reason and
        // message say what happened.
        f.debug_struct("ProviderError")
            .field("reason", &self.reason)
            .field("message", &self.message)
            .field("has_source", &self.source.is_some())
            .finish()
    }
}

/// Why a source object (a Secret, a ServiceAccount token) could not be
/// used. Messages name the object and the key, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The spec names an object outside the source namespace.
    #[error("{what} must be in namespace {allowed} (the credential's source namespace), not {requested}")]
    NamespaceForbidden { what: String, allowed: String, requested: String },
    /// A source Secret does not exist.
    #[error("Secret {namespace}/{name} not found")]
    SecretNotFound { namespace: String, name: String },
    /// Reading a source Secret failed.
    #[error("reading Secret {namespace}/{name}: {source}")]
    ReadSecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// A key's value cannot work (see [`hygiene::clean`]).
    #[error("Secret {secret} key {key} {problem}")]
    InvalidValue { secret: String, key: String, problem: hygiene::Problem },
    /// A required key is missing.
    #[error("Secret {secret} has no key {key} (expected {expected})")]
    MissingKey { secret: String, key: String, expected: String },
    /// The Secret's content cannot work, for another reason.
    #[error("Secret {secret} {detail}")]
    Invalid { secret: String, detail: String },
    /// A namespaced credential asked for the operator's own identity.
    #[error(
        "{what} would use the operator's own identity, which a RegistryCredential may not use: \
         use secretRef or serviceAccountRef (or start the operator with --allow-namespaced-ambient-identity)"
    )]
    AmbientForbidden { what: String },
    /// No way to get a ServiceAccount token here.
    #[error(
        "serviceAccountRef {name} needs a ServiceAccount token: with regcred check, a kubeconfig; in the \
         kubelet credential provider, the Pod's token (tokenAttributes in the kubelet's \
         CredentialProviderConfig)"
    )]
    NoTokenSource { name: String },
    /// The ServiceAccount does not exist.
    #[error("ServiceAccount {namespace}/{name} not found")]
    ServiceAccountNotFound { namespace: String, name: String },
    /// Reading the ServiceAccount or requesting its token failed.
    #[error("requesting a token for ServiceAccount {namespace}/{name}: {source}")]
    TokenRequest {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// The TokenRequest API answered without a token.
    #[error("TokenRequest for {namespace}/{name} returned no token")]
    NoToken { namespace: String, name: String },
}

impl SourceError {
    /// The condition reason ([`crate::reasons`]).
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::NamespaceForbidden { .. } => reasons::SOURCE_NAMESPACE_FORBIDDEN,
            SourceError::SecretNotFound { .. } => reasons::SOURCE_SECRET_NOT_FOUND,
            SourceError::ReadSecret { .. } | SourceError::TokenRequest { .. } | SourceError::NoToken { .. } => {
                reasons::KUBE_API_ERROR
            }
            SourceError::InvalidValue { .. } | SourceError::MissingKey { .. } | SourceError::Invalid { .. } => {
                reasons::SOURCE_SECRET_INVALID
            }
            SourceError::AmbientForbidden { .. } => reasons::AMBIENT_IDENTITY_FORBIDDEN,
            SourceError::NoTokenSource { .. } | SourceError::ServiceAccountNotFound { .. } => {
                reasons::SERVICE_ACCOUNT_NOT_FOUND
            }
        }
    }
}

impl From<SourceError> for ProviderError {
    fn from(e: SourceError) -> Self {
        ProviderError::typed(e.reason(), e)
    }
}

/// A credential provider.
#[async_trait]
pub trait CredentialProvider: Send + Sync {
    /// Mints the credential. Called once per refresh, however many
    /// namespaces the result is written to.
    async fn mint(&self, sources: &Sources) -> Result<Minted, ProviderError>;

    /// Removes what the provider created outside Kubernetes (for example
    /// Harbor robot accounts) when the credential is deleted with
    /// `deletionPolicy: Delete`. Most providers create nothing.
    async fn cleanup(&self, _sources: &Sources) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// The provider implementation for a spec. Callers mint through
/// [`crate::pacing::paced`], which paces the calls on the provider's
/// endpoint; providers know nothing of the pacing (it sits above them).
pub fn for_spec(provider: &Provider) -> Box<dyn CredentialProvider> {
    match provider {
        Provider::Basic(spec) => Box::new(basic::Basic::new(spec.clone())),
        Provider::Ecr(spec) => Box::new(ecr::Ecr::new(spec.clone())),
        Provider::EcrPublic(spec) => Box::new(ecr::EcrPublic::new(spec.clone())),
        Provider::Acr(spec) => Box::new(acr::Acr::new(spec.clone())),
        Provider::Google(spec) => Box::new(google::Google::new(spec.clone())),
        Provider::Harbor(spec) => Box::new(harbor::Harbor::new(spec.clone())),
    }
}

/// Entry points for the `cargo fuzz` targets in `fuzz/`: each runs one
/// provider's response parsers on arbitrary bytes. Not an API.
#[doc(hidden)]
pub mod fuzz {
    pub fn ecr(data: &[u8]) {
        super::ecr::fuzz_parse(data)
    }
    pub fn acr(data: &[u8]) {
        super::acr::fuzz_parse(data)
    }
    pub fn google(data: &[u8]) {
        super::google::fuzz_parse(data)
    }
    pub fn harbor(data: &[u8]) {
        super::harbor::fuzz_parse(data)
    }
}

/// Access to a credential's source objects, confined to the one namespace
/// the credential may read from: its own for a RegistryCredential, the
/// cluster resource namespace for a ClusterRegistryCredential. Providers
/// read through this and nothing else, so a tenant cannot make the operator
/// read another namespace.
pub struct Sources {
    backend: Backend,
    namespace: String,
    seen: Mutex<Vec<(String, String)>>,
    allow_ambient: bool,
    state: Option<serde_json::Value>,
    owner: String,
    pod: Option<ServiceAccountToken>,
}

/// A token for a Kubernetes ServiceAccount, from the TokenRequest API (or,
/// in the kubelet credential provider, the Pod's own from the kubelet).
#[derive(Clone)]
pub struct ServiceAccountToken {
    pub token: SecretString,
    /// The ServiceAccount's annotations (for example
    /// `eks.amazonaws.com/role-arn`).
    pub annotations: BTreeMap<String, String>,
}

enum Backend {
    /// Read from the Kubernetes API.
    Kube(Client),
    /// Secrets given up front (`regcred check -f`).
    Local(Vec<Secret>),
}

impl Sources {
    /// Sources read from the cluster, in `namespace` only.
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        Self::with_backend(Backend::Kube(client), namespace.into())
    }

    /// Sources taken from the given Secrets (those in `namespace`, or
    /// without a namespace). Used by `regcred check`, where the user's own
    /// identity counts as ambient.
    pub fn local(secrets: Vec<Secret>, namespace: impl Into<String>) -> Self {
        Self::with_backend(Backend::Local(secrets), namespace.into()).allowing_ambient(true)
    }

    fn with_backend(backend: Backend, namespace: String) -> Self {
        Sources {
            backend,
            namespace,
            seen: Mutex::default(),
            allow_ambient: false,
            state: None,
            owner: String::new(),
            pod: None,
        }
    }

    /// The kubelet credential provider's identity (KEP-4412): every
    /// `serviceAccountRef` resolves to the Pod's ServiceAccount, whose token
    /// and annotations the kubelet passed. Its name in the spec is not used.
    pub fn with_pod_token(mut self, token: ServiceAccountToken) -> Self {
        self.pod = Some(token);
        self
    }

    /// Whether the operator's own cloud identity may be used: always for a
    /// ClusterRegistryCredential, for a RegistryCredential only when the
    /// operator was started with `--allow-namespaced-ambient-identity`.
    pub fn allowing_ambient(mut self, allow: bool) -> Self {
        self.allow_ambient = allow;
        self
    }

    /// The provider state kept in status from the last refresh.
    pub fn with_state(mut self, state: Option<serde_json::Value>) -> Self {
        self.state = state;
        self
    }

    /// The owning credential (`Kind/namespace/name`), for naming what a
    /// provider creates outside Kubernetes.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// See [`Sources::with_state`].
    pub fn previous_state(&self) -> Option<&serde_json::Value> {
        self.state.as_ref()
    }

    /// See [`Sources::with_owner`].
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Fails unless the operator's ambient identity may be used.
    pub fn check_ambient(&self, what: &str) -> Result<(), SourceError> {
        if self.allow_ambient {
            return Ok(());
        }
        Err(SourceError::AmbientForbidden { what: what.to_string() })
    }

    /// A token for a ServiceAccount in the source namespace, with one
    /// audience, through the TokenRequest API.
    pub async fn service_account_token(
        &self,
        name: &str,
        namespace: Option<&str>,
        audience: &str,
    ) -> Result<ServiceAccountToken, SourceError> {
        if let Some(pod) = &self.pod {
            return Ok(pod.clone());
        }
        self.check_namespace(namespace, &format!("ServiceAccount {name}"))?;
        let Backend::Kube(client) = &self.backend else {
            return Err(SourceError::NoTokenSource { name: name.to_string() });
        };
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &self.namespace);
        let not_found =
            || SourceError::ServiceAccountNotFound { namespace: self.namespace.clone(), name: name.to_string() };
        let kube_error = |source: kube::Error| SourceError::TokenRequest {
            namespace: self.namespace.clone(),
            name: name.to_string(),
            source,
        };
        let sa = api.get_opt(name).await.map_err(kube_error)?.ok_or_else(not_found)?;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_string()],
                expiration_seconds: Some(600),
                ..Default::default()
            },
            ..Default::default()
        };
        let response = api.create_token_request(name, &Default::default(), &request).await.map_err(kube_error)?;
        let token = response
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| SourceError::NoToken { namespace: self.namespace.clone(), name: name.to_string() })?;
        Ok(ServiceAccountToken { token: token.into(), annotations: sa.metadata.annotations.unwrap_or_default() })
    }

    /// The namespace sources are read from.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn check_namespace(&self, requested: Option<&str>, what: &str) -> Result<(), SourceError> {
        match requested {
            Some(ns) if ns != self.namespace => Err(SourceError::NamespaceForbidden {
                what: what.to_string(),
                allowed: self.namespace.clone(),
                requested: ns.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Reads a source Secret.
    pub async fn secret(&self, r: &SecretRef) -> Result<Secret, SourceError> {
        self.check_namespace(r.namespace.as_deref(), &format!("Secret {}", r.name))?;
        let found = match &self.backend {
            Backend::Kube(client) => {
                let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
                api.get_opt(&r.name).await.map_err(|source| SourceError::ReadSecret {
                    namespace: self.namespace.clone(),
                    name: r.name.clone(),
                    source,
                })?
            }
            Backend::Local(secrets) => secrets
                .iter()
                .find(|s| {
                    s.metadata.name.as_deref() == Some(r.name.as_str())
                        && s.metadata.namespace.as_deref().is_none_or(|ns| ns == self.namespace)
                })
                .cloned(),
        };
        let secret = found
            .ok_or_else(|| SourceError::SecretNotFound { namespace: self.namespace.clone(), name: r.name.clone() })?;
        let rv = secret.metadata.resource_version.clone().unwrap_or_default();
        self.seen.lock().push((r.name.clone(), rv));
        Ok(secret)
    }

    /// `(name, resourceVersion)` of every source Secret read so far: a
    /// minted credential is reused until one of them changes.
    pub fn fingerprint(&self) -> Vec<(String, String)> {
        let mut v = self.seen.lock().clone();
        v.sort();
        v
    }
}

/// The `sub` claim of a ServiceAccount token (`system:serviceaccount:NS:NAME`),
/// read without verification, only to name it in an error: it is what a
/// cloud's token exchange matches its trust rules against (an IAM role's
/// trust policy, a workload identity pool's attribute condition).
pub(crate) fn token_subject(token: &str) -> Option<String> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let sub = claims.get("sub")?.as_str()?;
    // A name, never anything token-like.
    (sub.len() <= 320 && sub.bytes().all(|b| b.is_ascii_graphic())).then(|| sub.to_string())
}

/// The raw bytes of a key in a Secret (`data`, or `stringData` for Secrets
/// given to `regcred check`), if present.
fn raw_value<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    let from_data = secret.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.as_slice());
    from_data.or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key)).map(|s| s.as_bytes()))
}

/// The value of `key` in the source Secret `secret_name` (`namespace/name`),
/// cleaned and checked by [`hygiene::clean`]: `Ok(None)` when the key is
/// absent, `SourceSecretInvalid` naming the Secret, the key and the problem
/// (never the value) when it cannot work.
pub fn source_value(
    secret: &Secret,
    secret_name: &str,
    key: &str,
    kind: hygiene::Kind,
) -> Result<Option<String>, SourceError> {
    let Some(raw) = raw_value(secret, key) else { return Ok(None) };
    hygiene::clean(raw, kind).map(Some).map_err(|problem| SourceError::InvalidValue {
        secret: secret_name.to_string(),
        key: key.to_string(),
        problem,
    })
}

/// Like [`source_value`], for an optional key that a template may leave
/// blank: an empty value counts as absent.
pub fn optional_value(
    secret: &Secret,
    secret_name: &str,
    key: &str,
    kind: hygiene::Kind,
) -> Result<Option<String>, SourceError> {
    match raw_value(secret, key) {
        Some(raw) if hygiene::clean(raw, kind) == Err(hygiene::Problem::Empty) => Ok(None),
        _ => source_value(secret, secret_name, key, kind),
    }
}

/// Like [`source_value`], for a key that must be present: its absence is
/// `SourceSecretInvalid` "has no key KEY (EXPECTED)".
pub fn required_value(
    secret: &Secret,
    secret_name: &str,
    key: &str,
    kind: hygiene::Kind,
    expected: &str,
) -> Result<String, SourceError> {
    source_value(secret, secret_name, key, kind)?.ok_or_else(|| SourceError::MissingKey {
        secret: secret_name.to_string(),
        key: key.to_string(),
        expected: expected.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(pairs.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn source_values_name_the_secret_key_and_problem_never_the_value() {
        let s = secret(&[("username", &b"nl:user"[..]), ("password", b"hunter2\n"), ("token", b"hunter2\0")]);
        let e = ProviderError::from(source_value(&s, "ns/src", "username", hygiene::Kind::Username).unwrap_err());
        assert_eq!(e.reason, reasons::SOURCE_SECRET_INVALID);
        assert!(e.message.starts_with("Secret ns/src key username contains ':'"), "{}", e.message);
        assert_eq!(source_value(&s, "ns/src", "password", hygiene::Kind::Secret).unwrap().as_deref(), Some("hunter2"));
        let e = ProviderError::from(source_value(&s, "ns/src", "token", hygiene::Kind::Secret).unwrap_err());
        assert!(e.message.contains("key token contains a NUL byte") && !e.message.contains("hunter2"), "{}", e.message);
        assert!(matches!(source_value(&s, "ns/src", "absent", hygiene::Kind::Secret), Ok(None)));
        let e =
            ProviderError::from(required_value(&s, "ns/src", "absent", hygiene::Kind::Secret, "a and b").unwrap_err());
        assert_eq!(e.message, "Secret ns/src has no key absent (expected a and b)");
    }

    #[test]
    fn string_data_is_read_when_data_lacks_the_key() {
        let s = Secret {
            string_data: Some([("username".to_string(), "bot\r\n".to_string())].into()),
            ..Default::default()
        };
        assert_eq!(source_value(&s, "x", "username", hygiene::Kind::Username).unwrap().as_deref(), Some("bot"));
    }

    #[test]
    fn source_error_reasons() {
        let kube_error = || kube::Error::LinesCodecMaxLineLengthExceeded;
        let s = String::new;
        for (e, reason) in [
            (
                SourceError::NamespaceForbidden { what: s(), allowed: s(), requested: s() },
                reasons::SOURCE_NAMESPACE_FORBIDDEN,
            ),
            (SourceError::SecretNotFound { namespace: s(), name: s() }, reasons::SOURCE_SECRET_NOT_FOUND),
            (SourceError::ReadSecret { namespace: s(), name: s(), source: kube_error() }, reasons::KUBE_API_ERROR),
            (
                SourceError::InvalidValue { secret: s(), key: s(), problem: hygiene::Problem::Empty },
                reasons::SOURCE_SECRET_INVALID,
            ),
            (SourceError::MissingKey { secret: s(), key: s(), expected: s() }, reasons::SOURCE_SECRET_INVALID),
            (SourceError::Invalid { secret: s(), detail: s() }, reasons::SOURCE_SECRET_INVALID),
            (SourceError::AmbientForbidden { what: s() }, reasons::AMBIENT_IDENTITY_FORBIDDEN),
            (SourceError::NoTokenSource { name: s() }, reasons::SERVICE_ACCOUNT_NOT_FOUND),
            (SourceError::ServiceAccountNotFound { namespace: s(), name: s() }, reasons::SERVICE_ACCOUNT_NOT_FOUND),
            (SourceError::TokenRequest { namespace: s(), name: s(), source: kube_error() }, reasons::KUBE_API_ERROR),
            (SourceError::NoToken { namespace: s(), name: s() }, reasons::KUBE_API_ERROR),
        ] {
            assert_eq!(e.reason(), reason, "{e:?}");
        }
    }

    #[test]
    fn provider_errors_keep_the_typed_error_as_their_source() {
        let e = ProviderError::from(SourceError::ReadSecret {
            namespace: "ns".into(),
            name: "src".into(),
            source: kube::Error::LinesCodecMaxLineLengthExceeded,
        });
        assert_eq!(e.reason, reasons::KUBE_API_ERROR);
        assert!(e.message.starts_with("reading Secret ns/src: "), "{}", e.message);
        assert_eq!(e.to_string(), format!("{}: {}", e.reason, e.message));
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.downcast_ref::<SourceError>().is_some());
        assert_eq!(crate::http::cause_chain(&e), format!("{}: {}", e.reason, e.message));
        // Equality is reason and message; a clone shares the source.
        assert_eq!(e.clone(), ProviderError::new(e.reason, e.message.clone()));
        assert!(std::error::Error::source(&e.clone()).is_some());
        assert!(ProviderError::new("R", "m").to_string() == "R: m");
        assert!(!format!("{e:?}").contains("LinesCodec"), "{e:?}");
    }
}
