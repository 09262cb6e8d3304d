//! Credential providers: one module per provider behind one trait.
//!
//! A provider mints the registry logins for a credential once per refresh;
//! the controller fans the result out to every target namespace. Adding a
//! provider means a module here and an arm in [`for_spec`]; nothing else.

mod basic;

use std::sync::Mutex;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};

use crate::api::{Provider, SecretRef};
use crate::reasons;
use crate::render::RegistryAuth;

/// What a provider returns: one login per registry and, for short-lived
/// credentials, when they expire.
#[derive(Clone, Debug)]
pub struct Minted {
    pub auths: Vec<RegistryAuth>,
    pub expires_at: Option<Timestamp>,
}

/// A provider failure. `reason` is a condition reason from
/// [`crate::reasons`]; `message` never contains secret material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ProviderError {
    pub reason: &'static str,
    pub message: String,
}

impl ProviderError {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        ProviderError { reason, message: message.into() }
    }
}

/// A credential provider.
#[async_trait]
pub trait CredentialProvider: Send + Sync {
    /// Mints the credential. Called once per refresh, however many
    /// namespaces the result is written to.
    async fn mint(&self, sources: &Sources) -> Result<Minted, ProviderError>;
}

/// The provider implementation for a spec.
pub fn for_spec(provider: &Provider) -> Box<dyn CredentialProvider> {
    match provider {
        Provider::Basic(spec) => Box::new(basic::Basic::new(spec.clone())),
        other => Box::new(NotImplemented(other.name())),
    }
}

/// A provider that is typed in the API but not built yet.
struct NotImplemented(&'static str);

#[async_trait]
impl CredentialProvider for NotImplemented {
    async fn mint(&self, _: &Sources) -> Result<Minted, ProviderError> {
        Err(ProviderError::new(
            reasons::PROVIDER_NOT_IMPLEMENTED,
            format!("provider {} is not implemented in this version of regcred", self.0),
        ))
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
        Sources { backend: Backend::Kube(client), namespace: namespace.into(), seen: Mutex::default() }
    }

    /// Sources taken from the given Secrets (those in `namespace`, or
    /// without a namespace).
    pub fn local(secrets: Vec<Secret>, namespace: impl Into<String>) -> Self {
        Sources { backend: Backend::Local(secrets), namespace: namespace.into(), seen: Mutex::default() }
    }

    /// The namespace sources are read from.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn check_namespace(&self, requested: Option<&str>, what: &str) -> Result<(), ProviderError> {
        match requested {
            Some(ns) if ns != self.namespace => Err(ProviderError::new(
                reasons::SOURCE_NAMESPACE_FORBIDDEN,
                format!("{what} must be in namespace {} (the credential's source namespace), not {ns}", self.namespace),
            )),
            _ => Ok(()),
        }
    }

    /// Reads a source Secret.
    pub async fn secret(&self, r: &SecretRef) -> Result<Secret, ProviderError> {
        self.check_namespace(r.namespace.as_deref(), &format!("Secret {}", r.name))?;
        let found = match &self.backend {
            Backend::Kube(client) => {
                let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
                api.get_opt(&r.name).await.map_err(|e| {
                    ProviderError::new(
                        reasons::KUBE_API_ERROR,
                        format!("reading Secret {}/{}: {e}", self.namespace, r.name),
                    )
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
        let secret = found.ok_or_else(|| {
            ProviderError::new(
                reasons::SOURCE_SECRET_NOT_FOUND,
                format!("Secret {}/{} not found", self.namespace, r.name),
            )
        })?;
        let rv = secret.metadata.resource_version.clone().unwrap_or_default();
        self.seen.lock().expect("not poisoned").push((r.name.clone(), rv));
        Ok(secret)
    }

    /// `(name, resourceVersion)` of every source Secret read so far: a
    /// minted credential is reused until one of them changes.
    pub fn fingerprint(&self) -> Vec<(String, String)> {
        let mut v = self.seen.lock().expect("not poisoned").clone();
        v.sort();
        v
    }
}

/// The value of a key in a Secret, as UTF-8 text (trailing newline
/// trimmed, as `kubectl create secret --from-file` tends to add one).
pub fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let from_data = secret.data.as_ref().and_then(|d| d.get(key)).map(|b| String::from_utf8_lossy(&b.0).into_owned());
    let from_string = || secret.string_data.as_ref().and_then(|d| d.get(key)).cloned();
    from_data.or_else(from_string).map(|s| s.trim_end_matches(['\n', '\r']).to_string()).filter(|s| !s.is_empty())
}
