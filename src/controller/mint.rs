//! Observing a credential: the minted login, from memory while it is fresh
//! and its inputs are unchanged, from the provider once otherwise, verified
//! before anything is published.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use parking_lot::Mutex;

use super::index::Index;
use super::{Context, CredentialKind};
use crate::api::{CredentialSpec, CredentialStatus};
use crate::metrics::{ProviderLabels, RefreshLabels};
use crate::provider::{Minted, ProviderError, Sources};
use crate::reasons;
use crate::schedule;
use crate::verify::{PullQuota, VerifyPlan, verify};

/// Why there is no credential to publish. The provider's own failures carry
/// their reason; the others are the controller's.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MintError {
    /// The provider failed (its message never holds secret material).
    #[error("{}", .0.message)]
    Provider(ProviderError),
    /// A ClusterRegistryCredential, and no namespace to read sources from.
    #[error("the operator has no cluster resource namespace: set --cluster-resource-namespace or POD_NAMESPACE")]
    NoClusterResourceNamespace,
    /// The registry refused the new credential; it was not published.
    #[error("the new credential was not published: registry {registry}: {message}")]
    Verification { registry: String, message: String },
    /// Refreshing fails and the published credential has expired.
    #[error("the published credential expired at {at} and refreshing it fails: {}: {cause}", .cause.reason())]
    Expired { at: Timestamp, cause: Box<MintError> },
}

impl MintError {
    /// The condition reason (from [`crate::reasons`]).
    pub fn reason(&self) -> &'static str {
        match self {
            MintError::Provider(e) => e.reason,
            MintError::NoClusterResourceNamespace => reasons::NO_CLUSTER_RESOURCE_NAMESPACE,
            MintError::Verification { .. } => reasons::VERIFICATION_FAILED,
            MintError::Expired { .. } => reasons::CREDENTIAL_EXPIRED,
        }
    }

    /// A failure while the published credential has already expired is
    /// reported as such: pulls are failing now, not just refreshes.
    pub fn after_expiry(self, expiry: Option<Timestamp>, now: Timestamp) -> MintError {
        match expiry {
            Some(at) if at <= now => MintError::Expired { at, cause: Box::new(self) },
            _ => self,
        }
    }
}

impl From<ProviderError> for MintError {
    fn from(e: ProviderError) -> Self {
        MintError::Provider(e)
    }
}

/// A credential ready to publish.
#[derive(Clone, Debug)]
pub struct Credential {
    pub minted: Minted,
    pub minted_at: Timestamp,
    pub refresh_at: Timestamp,
    /// Minted by this reconcile (not reused from memory).
    pub fresh: bool,
    /// Pull quotas the registries reported to the verification of this
    /// mint, by registry (empty when reused or not verified).
    pub quotas: Vec<(String, PullQuota)>,
}

/// What regcred remembers about each credential between reconciles: the
/// last minted login and the consecutive failures, for backoff.
#[derive(Default)]
pub struct Memory {
    credentials: Mutex<HashMap<String, Remembered>>,
}

#[derive(Default)]
struct Remembered {
    minted: Option<MintedEntry>,
    failures: u32,
    /// The status regcred last wrote and the resourceVersion it got, kept
    /// until the watch brings a version as new.
    status: Option<(u64, CredentialStatus)>,
}

struct MintedEntry {
    generation: Option<i64>,
    /// `(name, resourceVersion)` of the source Secrets read.
    fingerprint: Vec<(String, String)>,
    minted: Minted,
    minted_at: Timestamp,
    /// Drawn once per mint, so the refresh time stays put between reconciles.
    jitter: f64,
}

impl MintedEntry {
    fn refresh_at(&self, spec: &CredentialSpec) -> Timestamp {
        schedule::refresh_at(self.minted_at, self.minted.expires_at, spec.refresh.as_ref(), self.jitter)
    }
}

impl Memory {
    /// The remembered credential, if it is fresh at `now` and minted from
    /// the same generation and source Secret versions.
    fn reusable(
        &self,
        key: &str,
        spec: &CredentialSpec,
        generation: Option<i64>,
        index: &Index,
        source_ns: &str,
        now: Timestamp,
    ) -> Option<Credential> {
        let credentials = self.credentials.lock();
        let entry = credentials.get(key)?.minted.as_ref()?;
        let inputs_unchanged = entry
            .fingerprint
            .iter()
            .all(|(name, rv)| index.secret_resource_version(source_ns, name).as_ref() == Some(rv));
        let refresh_at = entry.refresh_at(spec);
        (entry.generation == generation && inputs_unchanged && now < refresh_at).then(|| Credential {
            minted: entry.minted.clone(),
            minted_at: entry.minted_at,
            refresh_at,
            fresh: false,
            quotas: Vec::new(),
        })
    }

    fn remember(&self, key: &str, entry: MintedEntry) {
        self.credentials.lock().entry(key.to_string()).or_default().minted = Some(entry);
    }

    /// When the credential now published expires, if it does and is known.
    pub fn expiry(&self, key: &str) -> Option<Timestamp> {
        self.credentials.lock().get(key)?.minted.as_ref()?.minted.expires_at
    }

    /// Consecutive failed reconciles.
    pub fn failures(&self, key: &str) -> u32 {
        self.credentials.lock().get(key).map_or(0, |r| r.failures)
    }

    /// Records how a reconcile ended; returns the consecutive failures.
    pub fn record(&self, key: &str, failed: bool) -> u32 {
        let mut credentials = self.credentials.lock();
        let r = credentials.entry(key.to_string()).or_default();
        r.failures = if failed { r.failures.saturating_add(1) } else { 0 };
        r.failures
    }

    /// regcred wrote `status`; the object is now at `resource_version`.
    pub fn status_written(&self, key: &str, resource_version: Option<&str>, status: CredentialStatus) {
        let mut credentials = self.credentials.lock();
        let r = credentials.entry(key.to_string()).or_default();
        r.status = resource_version.and_then(|v| v.parse().ok()).map(|rv| (rv, status));
    }

    /// The status regcred last wrote, if the object seen (at
    /// `resource_version`) is older than that write: a reconcile woken
    /// before the watch brings the write back compares with what was
    /// written, not with the stale copy, and writes nothing twice.
    pub fn newer_status(&self, key: &str, resource_version: Option<&str>) -> Option<CredentialStatus> {
        let seen: u64 = resource_version.and_then(|v| v.parse().ok())?;
        let mut credentials = self.credentials.lock();
        let r = credentials.get_mut(key)?;
        match &r.status {
            Some((written, status)) if *written > seen => Some(status.clone()),
            _ => {
                r.status = None;
                None
            }
        }
    }

    pub fn forget(&self, key: &str) {
        self.credentials.lock().remove(key);
    }
}

/// Backoff after `failures` consecutive failures: 5s doubling to 5 minutes.
///
/// Hand-written rather than `backon`: the delay is handed to the controller
/// as a requeue, and the count lives across reconciles in [`Memory`];
/// `backon` retries a future in place.
pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(10));
    Duration::from_secs(secs.min(300))
}

/// The credential to publish now: the remembered one while it is fresh and
/// its inputs are unchanged, and otherwise the provider's, called once.
pub async fn mint<K: CredentialKind>(obj: &K, ctx: &Context, now: Timestamp) -> Result<Credential, MintError> {
    let key = obj.owner_key();
    let expiry = ctx.memory.expiry(&key).or_else(|| obj.status().and_then(|s| s.expires_at.as_ref()).map(|t| t.0));
    mint_once(obj, ctx, &key, now).await.map_err(|e| e.after_expiry(expiry, now))
}

async fn mint_once<K: CredentialKind>(
    obj: &K,
    ctx: &Context,
    key: &str,
    now: Timestamp,
) -> Result<Credential, MintError> {
    let spec = obj.credential();
    let generation = obj.meta().generation;
    let source_ns = obj.source_namespace(&ctx.settings)?;
    if let Some(reused) = ctx.memory.reusable(key, spec, generation, &ctx.index, &source_ns, now) {
        return Ok(reused);
    }
    let sources = sources_for(obj, ctx, source_ns);
    let provider_name = spec.provider.name();
    let started = std::time::Instant::now();
    let result = crate::pacing::paced(&spec.provider).mint(&sources).await;
    ctx.metrics
        .provider_duration
        .get_or_create(&ProviderLabels { provider: provider_name.into() })
        .observe(started.elapsed().as_secs_f64());
    let result = match result {
        Ok(minted) => verify_before_publishing(spec, minted).await,
        Err(e) => Err(MintError::Provider(e)),
    };
    let outcome = match &result {
        Ok(_) => "success",
        Err(MintError::Verification { .. }) => "verification_failed",
        Err(_) => "failure",
    };
    ctx.metrics
        .refreshes
        .get_or_create(&RefreshLabels { provider: provider_name.into(), result: outcome.into() })
        .inc();
    let (minted, quotas) = result?;
    let entry = MintedEntry {
        generation,
        fingerprint: sources.fingerprint(),
        minted: minted.clone(),
        minted_at: now,
        jitter: rand::random::<f64>(),
    };
    let refresh_at = entry.refresh_at(spec);
    ctx.memory.remember(key, entry);
    Ok(Credential { minted, minted_at: now, refresh_at, fresh: true, quotas })
}

/// With `verify.enabled`, logs in to every registry with the new credential;
/// a credential the registry refuses is not published.
async fn verify_before_publishing(
    spec: &CredentialSpec,
    minted: Minted,
) -> Result<(Minted, Vec<(String, PullQuota)>), MintError> {
    let Some(policy) = spec.verify.as_ref().filter(|v| v.enabled) else { return Ok((minted, Vec::new())) };
    let plan = VerifyPlan::from_policy(policy);
    let registries: Vec<&str> = minted.auths.iter().map(|a| a.registry.as_str()).collect();
    if let Some(entry) = plan.unmatched(&registries).first() {
        return Err(MintError::Verification {
            registry: registries.join(", "),
            message: format!(
                "verify.repositories entry {entry} names a registry this credential does not log in to, so it \
                 cannot be checked"
            ),
        });
    }
    let mut quotas = Vec::new();
    for auth in &minted.auths {
        match verify(auth, &plan).await {
            Ok(verified) => quotas.extend(verified.quota.map(|q| (auth.registry.clone(), q))),
            Err(e) => {
                return Err(MintError::Verification { registry: auth.registry.clone(), message: e.to_string() });
            }
        }
    }
    Ok((minted, quotas))
}

/// The gate through which a provider reads this credential's sources.
pub fn sources_for<K: CredentialKind>(obj: &K, ctx: &Context, source_ns: String) -> Sources {
    Sources::new(ctx.client.clone(), source_ns)
        .allowing_ambient(obj.allows_ambient(&ctx.settings))
        .with_state(obj.status().and_then(|s| s.provider_state.clone()))
        .with_owner(obj.owner_key())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    #[test]
    fn backoff_doubles_from_5s_and_is_capped_at_5_minutes() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(0).as_secs(), 5);
        assert_eq!(backoff(u32::MAX).as_secs(), 300, "no overflow");
    }

    #[test]
    fn a_failure_after_expiry_says_the_credential_expired() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let e = MintError::Provider(ProviderError::new(reasons::SOURCE_SECRET_NOT_FOUND, "Secret a/b not found"));
        let before = e.clone().after_expiry(Some(now + SignedDuration::from_secs(60)), now);
        assert_eq!(before, e, "not expired yet: the original reason stays");
        assert_eq!(e.clone().after_expiry(None, now), e, "static credentials never expire");
        let after = e.after_expiry(Some(now - SignedDuration::from_secs(1)), now);
        assert_eq!(after.reason(), reasons::CREDENTIAL_EXPIRED);
        let message = after.to_string();
        assert!(message.contains("SourceSecretNotFound") && message.contains("Secret a/b not found"), "{message}");
    }

    #[test]
    fn reasons_that_are_not_provider_failures_are_the_controllers() {
        assert_eq!(MintError::NoClusterResourceNamespace.reason(), reasons::NO_CLUSTER_RESOURCE_NAMESPACE);
        let refused = MintError::Verification { registry: "r.example".into(), message: "401".into() };
        assert_eq!(refused.reason(), reasons::VERIFICATION_FAILED);
        assert_eq!(refused.to_string(), "the new credential was not published: registry r.example: 401");
        let throttled = MintError::from(ProviderError::new(reasons::PROVIDER_THROTTLED, "slow down"));
        assert_eq!((throttled.reason(), throttled.to_string().as_str()), (reasons::PROVIDER_THROTTLED, "slow down"));
    }

    #[test]
    fn failures_count_up_and_reset() {
        let memory = Memory::default();
        assert_eq!(memory.failures("a"), 0);
        assert_eq!(memory.record("a", true), 1);
        assert_eq!(memory.record("a", true), 2);
        assert_eq!(memory.failures("b"), 0, "per credential");
        assert_eq!(memory.record("a", false), 0);
        memory.record("a", true);
        memory.forget("a");
        assert_eq!(memory.failures("a"), 0);
    }
}
