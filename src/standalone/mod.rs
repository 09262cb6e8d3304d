//! The two Secret-free delivery paths, on the same provider core as the
//! operator:
//! - [`kubelet`]: the kubelet's image credential provider plugin
//!   (`regcred kubelet-credential-provider`), with the Pod's own
//!   ServiceAccount token as identity when the kubelet passes one
//!   (KEP-4412);
//! - [`helper`]: a Docker/Podman/skopeo credential helper
//!   (`docker-credential-regcred`, the same binary under another name).
//!
//! Both read a [`config::ProviderConfig`] (patterns mapped to provider specs
//! in the same YAML as `spec.provider`), mint through
//! [`crate::pacing::paced`] for the requested registry host
//! ([`scope`]: an ECR image's own region, any host for Google), answer for
//! that host, and time their answers with [`crate::schedule::refresh_at`],
//! the operator's own schedule.

pub mod cache;
pub mod config;
pub mod helper;
pub mod kubelet;
pub mod scope;

use k8s_openapi::jiff::Timestamp;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::provider::{Minted, ProviderError, ServiceAccountToken, Sources};
use crate::reasons;
use cache::Cache;
use config::{Entry, ProviderConfig};

/// A credential for an image, and until when it may be used.
pub struct Login {
    pub minted: Minted,
    pub refresh_at: Timestamp,
    /// Whether it came from the disk cache (no provider call).
    pub cached: bool,
}

/// What a mint needs besides the configuration.
pub struct Identity {
    /// The Pod's ServiceAccount token and annotations, from the kubelet.
    pub pod: Option<ServiceAccountToken>,
    /// Names what the provider creates outside (Harbor robots).
    pub owner: String,
}

/// Mints (or takes from `cache`) the login of `entry`.
pub async fn login(
    config: &ProviderConfig,
    index: usize,
    entry: &Entry,
    identity: Identity,
    cache: Option<&Cache>,
) -> Result<Login, ProviderError> {
    let secrets = config.secrets_for(entry).map_err(|m| ProviderError::new(reasons::SOURCE_SECRET_NOT_FOUND, m))?;
    let key = cache_key(index, entry, &secrets, identity.pod.as_ref());
    let now = Timestamp::now();
    let previous = cache.and_then(|c| c.get(&key));
    if let Some(hit) = &previous
        && hit.refresh_at > now
        && !hit.minted.auths.is_empty()
    {
        return Ok(Login { minted: hit.minted.clone(), refresh_at: hit.refresh_at, cached: true });
    }
    let mut sources = Sources::local(secrets, "").with_owner(identity.owner);
    if let Some(pod) = identity.pod {
        sources = sources.with_pod_token(pod);
    }
    let sources = sources.with_state(previous.and_then(|p| p.minted.state));
    let minted = crate::pacing::paced(&entry.provider).mint(&sources).await?;
    let refresh_at = crate::schedule::refresh_at(now, minted.expires_at, entry.refresh.as_ref(), rand::random());
    if let Some(c) = cache
        && let Err(e) = c.put(&key, &minted, refresh_at)
    {
        // A cache that cannot be written costs a mint next time, nothing else.
        tracing::debug!(dir = %c.dir().display(), error = %e, "writing the credential cache failed");
    }
    Ok(Login { minted, refresh_at, cached: false })
}

/// The cache key: the entry, its Secrets' contents and the Pod's token, so
/// that a change to any of them mints anew and two Pods' identities never
/// share an entry.
fn cache_key(
    index: usize,
    entry: &Entry,
    secrets: &[k8s_openapi::api::core::v1::Secret],
    pod: Option<&ServiceAccountToken>,
) -> String {
    let mut h = Sha256::new();
    h.update(index.to_le_bytes());
    h.update(serde_json::to_vec(entry).unwrap_or_default());
    for s in secrets {
        h.update(serde_json::to_vec(&s.data).unwrap_or_default());
    }
    if let Some(p) = pod {
        h.update(p.token.expose_secret().as_bytes());
        h.update(serde_json::to_vec(&p.annotations).unwrap_or_default());
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// This machine's host name, for naming what a provider creates.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
