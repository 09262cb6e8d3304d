//! Reconciling one credential: mint once, fan out, clean up, report.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{self, finalizer};
use serde_json::json;

use super::admission::{self, InjectionState};
use super::recovery;
use super::status::{self, MintOutcome};
use super::sync::{self, DesiredSecret, Report};
use super::{Context, CredentialKind, CredentialState, FIELD_MANAGER, FINALIZER, MintedEntry, backoff};
use crate::api::DeletionPolicy;
use crate::metrics::{CredentialLabels, ProviderLabels, ReasonLabels, RefreshLabels};
use crate::provider::{self, Minted, ProviderError, Sources};
use crate::schedule;
use crate::verify::{VerifyOptions, verify};
use crate::{Error, Result};

/// Reconciles a credential (both kinds), behind the cleanup finalizer.
#[tracing::instrument(skip_all, fields(credential = %obj.owner_key()))]
pub async fn reconcile<K: CredentialKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciles.inc();
    let api = obj.api(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(obj) => apply(obj, ctx.clone()).await,
            finalizer::Event::Cleanup(obj) => cleanup(obj, ctx.clone()).await,
        }
    })
    .await;
    match result {
        // Deleted while this reconcile ran: nothing is left to do.
        Err(finalizer::Error::RemoveFinalizer(kube::Error::Api(e))) if e.code == 404 => Ok(Action::await_change()),
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    }
}

/// Requeues failed reconciles with backoff.
pub fn error_policy<K: CredentialKind>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(credential = %obj.owner_key(), error = %error, "reconcile failed");
    ctx.metrics.reconcile_errors.get_or_create(&ReasonLabels { reason: error.metric_label().into() }).inc();
    let failures = {
        let mut state = ctx.state.lock().expect("not poisoned");
        let s = state.entry(obj.owner_key()).or_default();
        s.failures += 1;
        s.failures
    };
    Action::requeue(backoff(failures))
}

/// A minted credential with its timing.
struct MintResult {
    minted: Minted,
    minted_at: Timestamp,
    refresh_at: Timestamp,
}

/// Returns the cached credential while it is fresh and its inputs are
/// unchanged, and otherwise calls the provider once.
async fn mint<K: CredentialKind>(obj: &K, ctx: &Context, now: Timestamp) -> Result<MintResult, ProviderError> {
    let key = obj.owner_key();
    let spec = obj.credential();
    let generation = obj.meta().generation;
    let source_ns = obj.source_namespace(ctx)?;
    {
        let state = ctx.state.lock().expect("not poisoned");
        if let Some(entry) = state.get(&key).and_then(|s| s.minted.as_ref()) {
            let inputs_unchanged = entry
                .fingerprint
                .iter()
                .all(|(name, rv)| ctx.secret_resource_version(&source_ns, name).as_ref() == Some(rv));
            let refresh_at = refresh_at_of(entry, spec);
            if entry.generation == generation && inputs_unchanged && now < refresh_at {
                return Ok(MintResult { minted: entry.minted.clone(), minted_at: entry.minted_at, refresh_at });
            }
        }
    }
    let sources = sources_for(obj, ctx, source_ns);
    let provider_name = spec.provider.name();
    let started = std::time::Instant::now();
    let result = provider::for_spec(&spec.provider).mint(&sources).await;
    ctx.metrics
        .provider_duration
        .get_or_create(&ProviderLabels { provider: provider_name.into() })
        .observe(started.elapsed().as_secs_f64());
    let result = match result {
        Ok(minted) => verify_before_publishing(spec, minted).await,
        Err(e) => Err((e, "failure")),
    };
    let result_label = match &result {
        Ok(_) => "success",
        Err((_, label)) => label,
    };
    ctx.metrics
        .refreshes
        .get_or_create(&RefreshLabels { provider: provider_name.into(), result: (*result_label).into() })
        .inc();
    let minted = result.map_err(|(e, _)| e)?;
    let entry = MintedEntry {
        generation,
        fingerprint: sources.fingerprint(),
        minted: minted.clone(),
        minted_at: now,
        jitter: rand::random::<f64>(),
    };
    let refresh_at = refresh_at_of(&entry, spec);
    ctx.state.lock().expect("not poisoned").entry(key).or_default().minted = Some(entry);
    Ok(MintResult { minted, minted_at: now, refresh_at })
}

/// With `verify.enabled`, logs in to every registry with the new credential;
/// a credential the registry refuses is not published.
async fn verify_before_publishing(
    spec: &crate::api::CredentialSpec,
    minted: Minted,
) -> Result<Minted, (ProviderError, &'static str)> {
    let Some(policy) = spec.verify.as_ref().filter(|v| v.enabled) else { return Ok(minted) };
    let options = VerifyOptions::from_policy(policy);
    for auth in &minted.auths {
        if let Err(e) = verify(auth, &options).await {
            let error = ProviderError::new(
                crate::reasons::VERIFICATION_FAILED,
                format!("the new credential was not published: registry {}: {e}", auth.registry),
            );
            return Err((error, "verification_failed"));
        }
    }
    Ok(minted)
}

/// The gate through which a provider reads this credential's sources.
fn sources_for<K: CredentialKind>(obj: &K, ctx: &Context, source_ns: String) -> Sources {
    Sources::new(ctx.client.clone(), source_ns)
        .allowing_ambient(obj.allows_ambient(ctx))
        .with_state(obj.status().and_then(|s| s.provider_state.clone()))
        .with_owner(obj.owner_key())
}

/// When the credential now in place expires, if it does.
fn last_expiry<K: CredentialKind>(obj: &K, ctx: &Context) -> Option<Timestamp> {
    let state = ctx.state.lock().expect("not poisoned");
    let cached = state.get(&obj.owner_key()).and_then(|s| s.minted.as_ref()).and_then(|m| m.minted.expires_at);
    cached.or_else(|| obj.status().and_then(|s| s.expires_at.as_ref()).map(|t| t.0))
}

/// A failure while the published credential has already expired is
/// reported as such: pulls are failing now, not just refreshes.
fn expired_while_failing(e: ProviderError, expiry: Option<Timestamp>, now: Timestamp) -> ProviderError {
    match expiry {
        Some(at) if at <= now => ProviderError::new(
            crate::reasons::CREDENTIAL_EXPIRED,
            format!("the published credential expired at {at} and refreshing it fails: {}: {}", e.reason, e.message),
        ),
        _ => e,
    }
}

fn refresh_at_of(entry: &MintedEntry, spec: &crate::api::CredentialSpec) -> Timestamp {
    schedule::refresh_at(entry.minted_at, entry.minted.expires_at, spec.refresh.as_ref(), entry.jitter)
}

async fn apply<K: CredentialKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let owner = obj.owner_key();
    let spec = obj.credential();
    let now = schedule::whole_seconds(Timestamp::now());
    let last_expiry = last_expiry(&*obj, &ctx);
    let minted = mint(&*obj, &ctx, now).await.map_err(|e| expired_while_failing(e, last_expiry, now));
    let targets: BTreeSet<String> = obj.target_namespaces(&ctx);

    let mut report = Report::default();
    match &minted {
        Ok(m) => {
            let desired = Arc::new(DesiredSecret::new(spec, &owner, &m.minted));
            sync::write_secrets(&ctx, &owner, &desired, &targets, &mut report).await;
        }
        // The provider failed: what is in place stays untouched.
        Err(_) => sync::count_in_place(&ctx, &owner, &spec.secret.name, &targets, &mut report),
    }
    let name = spec.secret.name.as_str();
    sync::remove_secrets(&ctx, &owner, |ns, n| n == name && targets.contains(ns), &mut report).await;
    sync::sync_service_accounts(&ctx, spec, &mut report);
    let injection = admission::sync(&*obj, &ctx).await;
    if matches!(injection, InjectionState::Failed(_)) {
        report.retry = true;
    }
    if let (true, Ok(m)) = (spec.recovery_enabled(), &minted) {
        start_recovery(&*obj, &ctx, &m.minted, &report.created_in, &injection);
    }

    let failures = {
        let mut state = ctx.state.lock().expect("not poisoned");
        let s: &mut CredentialState = state.entry(owner.clone()).or_default();
        if minted.is_ok() && !report.retry {
            s.failures = 0
        } else {
            s.failures += 1
        }
        s.failures
    };
    let retry_in = backoff(failures);
    let outcome = match &minted {
        Ok(m) => MintOutcome {
            error: None,
            registries: m.minted.auths.iter().map(|a| a.registry.clone()).collect(),
            expires_at: m.minted.expires_at,
            minted_at: Some(m.minted_at),
            next_refresh: Some(m.refresh_at),
            state: m.minted.state.clone(),
        },
        Err(e) => MintOutcome {
            error: Some(e),
            registries: vec![],
            expires_at: None,
            minted_at: None,
            next_refresh: Some(now + retry_in),
            state: None,
        },
    };
    let mut new_status =
        status::build(obj.status(), obj.meta().generation, spec.provider.name(), &outcome, targets.len(), &report, now);
    let injection_condition = injection.condition(&spec.secret.name);
    status::set_injection(&mut new_status, obj.status(), injection_condition, obj.meta().generation, now);
    publish_events(&*obj, &ctx, &new_status, &report, outcome.error).await;
    if obj.status() != Some(&new_status) {
        let api = obj.api(ctx.client.clone());
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        api.patch_status(&obj.name_any(), &params, &Patch::Merge(json!({ "status": new_status }))).await?;
    }
    let labels = credential_labels(&*obj);
    ctx.metrics.managed_secrets.get_or_create(&labels).set(report.synced.len() as i64);
    match new_status.expires_at.as_ref() {
        Some(t) => {
            ctx.metrics.expiry.get_or_create(&labels).set(t.0.as_second());
        }
        None => {
            ctx.metrics.expiry.remove(&labels);
        }
    }
    if let Some(e) = outcome.error {
        ctx.metrics.reconcile_errors.get_or_create(&ReasonLabels { reason: e.reason.into() }).inc();
    }

    let action = match &minted {
        Err(_) => Action::requeue(retry_in),
        Ok(_) if report.retry => Action::requeue(retry_in.min(Duration::from_secs(5))),
        Ok(m) => {
            let wait = m.refresh_at.duration_since(Timestamp::now()).unsigned_abs();
            Action::requeue(wait.max(Duration::from_secs(1)))
        }
    };
    Ok(action)
}

fn credential_labels<K: CredentialKind>(obj: &K) -> CredentialLabels {
    CredentialLabels {
        kind: K::kind(&()).into_owned(),
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    }
}

/// Events for what changed: writes, new failures, recovery. Nothing when
/// nothing changed, so an idle operator publishes no Events.
async fn publish_events<K: CredentialKind>(
    obj: &K,
    ctx: &Context,
    new_status: &crate::api::CredentialStatus,
    report: &Report,
    mint_error: Option<&ProviderError>,
) {
    let secret = &obj.credential().secret.name;
    let mut events = Vec::new();
    if report.created + report.updated > 0 {
        events.push((
            EventType::Normal,
            "SecretsWritten",
            format!("Secret {secret}: created in {}, updated in {} namespace(s)", report.created, report.updated),
        ));
    }
    if report.deleted > 0 {
        events.push((
            EventType::Normal,
            "SecretsRemoved",
            format!("Secret {secret}: removed from {} namespace(s)", report.deleted),
        ));
    }
    let previously_failed: BTreeSet<&str> = obj
        .status()
        .and_then(|s| s.targets.as_ref())
        .map(|t| t.failed.iter().map(|f| f.namespace.as_str()).collect())
        .unwrap_or_default();
    for f in &report.failed {
        if !previously_failed.contains(f.namespace.as_str()) || f.reason == crate::reasons::WRITE_FAILED {
            events.push((EventType::Warning, failure_reason(&f.reason), f.message.clone().unwrap_or_default()));
        }
    }
    if let Some(e) = mint_error {
        events.push((EventType::Warning, e.reason, e.message.clone()));
    }
    let was_ready = status::ready_reason(obj.status()) == Some(crate::reasons::SYNCED);
    let is_ready = status::ready_reason(Some(new_status)) == Some(crate::reasons::SYNCED);
    if is_ready && !was_ready && obj.status().is_some() {
        events.push((
            EventType::Normal,
            crate::reasons::SYNCED,
            "Ready again: every target holds the current Secret".into(),
        ));
    }
    // Injection: an Event when its state changes (or a write fails again).
    let injection_was = status::reason_of(obj.status(), status::INJECTION);
    if let Some(c) = new_status.conditions.iter().find(|c| c.type_ == status::INJECTION)
        && (injection_was != Some(c.reason.as_str()) || c.reason == crate::reasons::WRITE_FAILED)
    {
        let type_ = if c.status == "True" { EventType::Normal } else { EventType::Warning };
        events.push((type_, injection_reason(&c.reason), c.message.clone()));
    }
    let reference = obj.object_ref(&());
    for (type_, reason, note) in events {
        let event =
            KubeEvent { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, "publishing an Event failed");
        }
    }
}

fn injection_reason(reason: &str) -> &'static str {
    use crate::reasons::*;
    [INJECTION_ACTIVE, ADMISSION_POLICY_UNSUPPORTED, ADMISSION_POLICY_MISSING]
        .into_iter()
        .find(|r| *r == reason)
        .unwrap_or(WRITE_FAILED)
}

/// Hands the namespaces this reconcile served for the first time to Pod
/// recovery.
fn start_recovery<K: CredentialKind>(
    obj: &K,
    ctx: &Arc<Context>,
    minted: &Minted,
    namespaces: &[String],
    injection: &InjectionState,
) {
    let spec = obj.credential();
    for namespace in namespaces {
        let job = recovery::Job {
            reference: obj.object_ref(&()),
            labels: credential_labels(obj),
            namespace: namespace.clone(),
            secret: spec.secret.name.clone(),
            service_accounts: spec.service_accounts.clone(),
            registries: minted.auths.iter().map(|a| a.registry.clone()).collect(),
            injection: matches!(injection, InjectionState::Active { .. }),
        };
        recovery::start(ctx.clone(), job);
    }
}

/// Event reasons are `&'static str` from [`crate::reasons`]; failures in the
/// report carry them as Strings.
fn failure_reason(reason: &str) -> &'static str {
    match reason {
        crate::reasons::SECRET_CONFLICT => crate::reasons::SECRET_CONFLICT,
        _ => crate::reasons::WRITE_FAILED,
    }
}

async fn cleanup<K: CredentialKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let owner = obj.owner_key();
    // The binding goes whatever the deletion policy: without its
    // credential it would do nothing anyway.
    admission::remove(&*obj, &ctx).await.map_err(Error::Cleanup)?;
    if obj.credential().deletion_policy == DeletionPolicy::Delete {
        let mut report = Report::default();
        sync::remove_secrets(&ctx, &owner, |_, _| false, &mut report).await;
        if let Some(f) = report.failed.first() {
            return Err(Error::Cleanup(f.message.clone().unwrap_or_default()));
        }
        // What the provider created outside the cluster (Harbor robots).
        match obj.source_namespace(&ctx) {
            Ok(ns) => {
                let sources = sources_for(&*obj, &ctx, ns);
                provider::for_spec(&obj.credential().provider)
                    .cleanup(&sources)
                    .await
                    .map_err(|e| Error::Cleanup(format!("{}: {}", e.reason, e.message)))?;
            }
            Err(e) => tracing::warn!(reason = e.reason, "cannot clean up provider resources: {}", e.message),
        }
        tracing::info!(removed = report.deleted, "credential deleted; its Secrets were removed");
    } else {
        tracing::info!("credential deleted; its Secrets stay (deletionPolicy Orphan)");
    }
    ctx.state.lock().expect("not poisoned").remove(&owner);
    ctx.metrics.managed_secrets.remove(&credential_labels(&*obj));
    ctx.metrics.expiry.remove(&credential_labels(&*obj));
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    #[test]
    fn a_failure_after_expiry_says_the_credential_expired() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let e = ProviderError::new(crate::reasons::SOURCE_SECRET_NOT_FOUND, "Secret a/b not found");
        let before = expired_while_failing(e.clone(), Some(now + SignedDuration::from_secs(60)), now);
        assert_eq!(before, e, "not expired yet: the original reason stays");
        assert_eq!(expired_while_failing(e.clone(), None, now), e, "static credentials never expire");
        let after = expired_while_failing(e, Some(now - SignedDuration::from_secs(1)), now);
        assert_eq!(after.reason, crate::reasons::CREDENTIAL_EXPIRED);
        assert!(after.message.contains("SourceSecretNotFound") && after.message.contains("Secret a/b not found"));
    }
}
