//! Reconciling one credential, in four steps: observe (the minted login and
//! the index), plan (a pure function), act (writes, bounded), report
//! (status, Events, metrics, requeue). Failures are counted once, in
//! [`reconcile`].

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use parking_lot::Mutex;

use super::admission;
use super::mint::{self, Credential, backoff};
use super::plan::{self, DesiredSecret};
use super::report::{self, Reconciled, Verdict, credential_labels};
use super::{Context, CredentialKind, FINALIZER, act, fleet, recovery};
use crate::admission::Injection;
use crate::api::ClusterRegistryCredential;
use crate::api::DeletionPolicy;
use crate::metrics::ReasonLabels;
use crate::schedule;
use crate::targets::selects_spokes;
use crate::{Error, Result, reasons};
use k8s_openapi::jiff::SignedDuration;
use kube::Resource;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::ObjectRef;

/// Reconciles a credential (both kinds), behind the cleanup finalizer, and
/// counts how it ended: the one place failures are counted.
#[tracing::instrument(skip_all, fields(credential = %obj.owner_key()))]
pub async fn reconcile<K: CredentialKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let key = obj.owner_key();
    let api = obj.api(ctx.client.clone());
    let verdict = Mutex::new(None::<Verdict>);
    let result = match with_finalizer(&api, obj).await {
        Ok(obj) => {
            finalizer(&api, FINALIZER, obj, |event| async {
                match event {
                    finalizer::Event::Apply(obj) => {
                        let Reconciled { action, verdict: v } = apply(obj, ctx.clone()).await?;
                        *verdict.lock() = Some(v);
                        Ok(action)
                    }
                    finalizer::Event::Cleanup(obj) => cleanup(obj, ctx.clone()).await,
                }
            })
            .await
        }
        // Changed since the cache saw it: look again once the watch has
        // brought the newer version (not a failure).
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::requeue(std::time::Duration::from_secs(1))),
        Err(e) => Err(finalizer::Error::AddFinalizer(e)),
    };
    let result = match result {
        // Deleted while this reconcile ran: nothing is left to do.
        Err(finalizer::Error::RemoveFinalizer(kube::Error::Api(e))) if e.code == 404 => Ok(Action::await_change()),
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    };
    let verdict = match &result {
        Err(e) => Some(Verdict { not_ready: Some(e.reason()), failed: true }),
        // A finished cleanup has forgotten the credential.
        Ok(_) => verdict.into_inner(),
    };
    if let Some(verdict) = verdict {
        ctx.memory.record(&key, verdict.failed);
        if let Some(reason) = verdict.not_ready {
            ctx.metrics.reconcile_errors.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
        }
    }
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    result
}

/// The credential with the cleanup finalizer: added here, by a patch
/// guarded by the resourceVersion, and the reconcile goes on with the
/// object the patch returned. (The finalizer helper alone would return
/// after adding it and wait for the watch to bring the patch back: a round
/// trip more before a new credential's first Secret.)
async fn with_finalizer<K: CredentialKind>(api: &kube::Api<K>, obj: Arc<K>) -> Result<Arc<K>, kube::Error> {
    let meta = obj.meta();
    let has = meta.finalizers.iter().flatten().any(|f| f == FINALIZER);
    if has || meta.deletion_timestamp.is_some() {
        return Ok(obj);
    }
    let mut finalizers = meta.finalizers.clone().unwrap_or_default();
    finalizers.push(FINALIZER.into());
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": meta.resource_version }
    });
    let params = kube::api::PatchParams::default();
    let patched = api.patch(&kube::ResourceExt::name_any(&*obj), &params, &kube::api::Patch::Merge(patch)).await?;
    Ok(Arc::new(patched))
}

/// Requeues a failed reconcile (already counted) with backoff.
pub fn error_policy<K: CredentialKind>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(credential = %obj.owner_key(), error = %error, "reconcile failed");
    Action::requeue(backoff(ctx.memory.failures(&obj.owner_key())))
}

async fn apply<K: CredentialKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Reconciled> {
    let owner = obj.owner_key();
    let spec = obj.credential();
    let now = schedule::whole_seconds(Timestamp::now());

    // Observe: the login to publish (remembered, or minted once), and the
    // cluster as the index has it.
    let minted = mint::mint(&*obj, &ctx, now).await;
    if let Ok(c) = &minted
        && c.fresh
    {
        tracing::info!(expires_at = ?c.minted.expires_at, refresh_at = %c.refresh_at, "minted a new credential");
    }
    let desired = minted.as_ref().ok().map(|c| Arc::new(DesiredSecret::new(spec, &owner, &c.minted)));

    // Plan: what this credential needs written, removed and patched.
    let plan = plan::plan(&ctx.index, &*obj, desired.as_deref());
    let targets = plan.targets.len();

    // Act: the writes, a bounded number at once; then recovery of Pods
    // that missed the Secret (which leaves alone Pods that admission-time
    // injection serves).
    let done = act::act(&ctx.local, &owner, desired.clone(), plan).await;
    // The fleet's clusters get what was minted through the carrier Secret.
    if let (Some(c), Some(ns)) = (obj.as_cluster(), ctx.settings.cluster_resource_namespace.as_deref()) {
        fleet::publish_carrier(&ctx.client, &ctx.index, ns, c, desired.as_deref()).await?;
    }
    let injection = admission::state(&*obj, &ctx);
    if let (true, Ok(c)) = (spec.recovery_enabled(), &minted) {
        start_recovery(&*obj, &ctx, c, &done.created_in, &injection);
    }

    // Report.
    report::report(&*obj, &ctx, &minted, targets, &done, &injection, now).await
}

/// Hands the namespaces this reconcile served for the first time to Pod
/// recovery.
fn start_recovery<K: CredentialKind>(
    obj: &K,
    ctx: &Arc<Context>,
    credential: &Credential,
    namespaces: &[String],
    injection: &Injection,
) {
    let spec = obj.credential();
    for namespace in namespaces {
        let job = recovery::Job {
            reference: obj.object_ref(&()),
            labels: credential_labels(obj),
            namespace: namespace.clone(),
            secret: spec.secret.name.clone(),
            service_accounts: spec.service_accounts.clone(),
            registries: credential.minted.auths.iter().map(|a| a.registry.clone()).collect(),
            injection: matches!(injection, Injection::Active { .. }),
        };
        recovery::start(ctx.recovery.clone(), job);
    }
}

/// Waits, at most `fleet_cleanup_timeout` after the deletion, until every
/// shard of the fleet reports that its clusters hold no Secret of the
/// credential (`deletionPolicy: Delete`); past that, tells in an Event which
/// clusters still do (they are cleaned up when they come back) and lets the
/// deletion go on.
async fn wait_for_fleet(obj: &ClusterRegistryCredential, ctx: &Context) {
    if !selects_spokes(obj.spec.clusters.as_ref()) || obj.spec.credential.deletion_policy != DeletionPolicy::Delete {
        return;
    }
    let deleted_at = obj.metadata.deletion_timestamp.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now);
    let timeout =
        SignedDuration::try_from(ctx.settings.fleet_cleanup_timeout).unwrap_or(SignedDuration::from_secs(120));
    let deadline = deleted_at.checked_add(timeout).unwrap_or(deleted_at);
    let reference = ObjectRef::from_obj(obj);
    loop {
        let Some(current) = ctx.index.credentials.cluster.get(&reference) else { return };
        let shards = current.status.as_ref().and_then(|s| s.clusters.clone()).unwrap_or_default();
        if shards.values().all(|s| s.cleanup_pending == Some(0)) {
            return;
        }
        if Timestamp::now() >= deadline {
            let pending: i32 = shards.values().map(|s| s.cleanup_pending.unwrap_or(s.desired)).sum();
            let mut named: Vec<String> = shards
                .values()
                .flat_map(|s| s.failed.iter().map(|f| format!("{} ({})", f.cluster, f.reason)))
                .collect();
            named.sort();
            let note = format!(
                "stopped waiting after {}s for {pending} clusters to remove this credential's Secrets: {}; they are removed when those clusters are served again",
                ctx.settings.fleet_cleanup_timeout.as_secs(),
                if named.is_empty() { "no shard reported them".to_string() } else { named.join(", ") }
            );
            tracing::warn!("{note}");
            let event = KubeEvent {
                type_: EventType::Warning,
                reason: reasons::FLEET_CLEANUP_INCOMPLETE.into(),
                note: Some(note.chars().take(1000).collect()),
                action: "Cleanup".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
                tracing::warn!(error = %e, "publishing an Event failed");
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The finalizer's path: with `deletionPolicy: Delete` the written
/// Secrets (and their ServiceAccount entries) and what the provider created
/// outside the cluster go. (Injection needs nothing removed: the chart's
/// binding passes only existing credentials to the policy.)
async fn cleanup<K: CredentialKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let owner = obj.owner_key();
    if let Some(c) = obj.as_cluster() {
        wait_for_fleet(c, &ctx).await;
        if let Some(ns) = ctx.settings.cluster_resource_namespace.as_deref() {
            fleet::publish_carrier(&ctx.client, &ctx.index, ns, c, None).await?;
        }
    }
    let plan = plan::plan_deletion(&ctx.index, &*obj);
    if obj.credential().deletion_policy == DeletionPolicy::Delete {
        let removed = act::remove_secrets(&ctx.local, plan.removals).await;
        if let Some((_, Err(message))) = removed.iter().find(|(_, r)| r.is_err()) {
            return Err(Error::Cleanup { reason: reasons::WRITE_FAILED, message: message.clone() });
        }
        // What the provider created outside the cluster (Harbor robots).
        match obj.source_namespace(&ctx.settings) {
            Ok(ns) => {
                let sources = mint::sources_for(&*obj, &ctx, ns);
                crate::pacing::paced(&obj.credential().provider).cleanup(&sources).await.map_err(|e| {
                    Error::Cleanup { reason: e.reason, message: format!("{}: {}", e.reason, e.message) }
                })?;
            }
            Err(e) => tracing::warn!(reason = e.reason(), "cannot clean up provider resources: {e}"),
        }
        tracing::info!(removed = removed.len(), "credential deleted; its Secrets were removed");
    } else {
        tracing::info!("credential deleted; its Secrets stay (deletionPolicy Orphan)");
    }
    ctx.memory.forget(&owner);
    ctx.metrics.managed_secrets.remove(&credential_labels(&*obj));
    ctx.metrics.expiry.remove(&credential_labels(&*obj));
    // The quota gauges, one per registry the credential logged in to.
    let labels = credential_labels(&*obj);
    for registry in obj.status().map(|s| s.registries.clone()).unwrap_or_default() {
        let q = crate::metrics::QuotaLabels {
            kind: labels.kind.clone(),
            namespace: labels.namespace.clone(),
            name: labels.name.clone(),
            registry,
        };
        ctx.metrics.pull_quota_remaining.remove(&q);
        ctx.metrics.pull_quota_limit.remove(&q);
    }
    Ok(Action::await_change())
}
