//! Reporting a reconcile: status, Events, metrics, and when to look again.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use serde_json::json;

use super::act::Report;
use super::admission;
use super::mint::{Credential, MintError, backoff};
use super::status::{self, MintOutcome};
use super::{Context, CredentialKind, FIELD_MANAGER};
use crate::admission::Injection;
use crate::api::CredentialStatus;
use crate::metrics::{CredentialLabels, QuotaLabels};
use crate::verify::PullQuota;
use crate::{Result, reasons};

/// How a reconcile ended, for the controller and for the one place that
/// counts failures ([`super::reconcile::reconcile`]).
pub struct Reconciled {
    pub action: Action,
    pub verdict: Verdict,
}

/// What counts of a reconcile's end.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Verdict {
    /// The `Ready` reason when the credential is not Ready.
    pub not_ready: Option<&'static str>,
    /// Something must be tried again (the provider failed, or a write):
    /// the next attempt backs off.
    pub failed: bool,
}

/// Writes the status if it changed, publishes Events for what changed,
/// sets the credential's gauges, and says when to look again.
pub async fn report<K: CredentialKind>(
    obj: &K,
    ctx: &Context,
    minted: &Result<Credential, MintError>,
    targets: usize,
    done: &Report,
    injection: &Injection,
    now: Timestamp,
) -> Result<Reconciled> {
    let spec = obj.credential();
    let failed = minted.is_err() || done.retry;
    let retry_in = backoff(ctx.memory.failures(&obj.owner_key()).saturating_add(1));
    let outcome = match minted {
        Ok(c) => MintOutcome {
            error: None,
            registries: c.minted.auths.iter().map(|a| a.registry.clone()).collect(),
            expires_at: c.minted.expires_at,
            minted_at: Some(c.minted_at),
            next_refresh: Some(c.refresh_at),
            state: c.minted.state.clone(),
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
    let generation = obj.meta().generation;
    let key = obj.owner_key();
    let written = ctx.memory.newer_status(&key, obj.meta().resource_version.as_deref());
    let previous = written.as_ref().or(obj.status());
    let mut new_status = status::build(previous, generation, spec.provider.name(), &outcome, targets, done, now);
    let condition = admission::condition(injection, K::policy_name(), &spec.secret.name);
    status::set_injection(&mut new_status, previous, condition, generation, now);
    for (type_, reason, note) in events(previous, &new_status, &spec.secret.name, done, outcome.error) {
        let event =
            KubeEvent { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
        if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an Event failed");
        }
    }
    // `clusters` belongs to the fleet's shards: it is neither compared nor
    // written here (a merge patch leaves what it does not name).
    let unchanged = previous.is_some_and(|p| CredentialStatus { clusters: None, ..p.clone() } == new_status);
    if !unchanged {
        let api = obj.api(ctx.client.clone());
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let patched =
            api.patch_status(&obj.name_any(), &params, &Patch::Merge(json!({ "status": new_status }))).await?;
        ctx.memory.status_written(&key, patched.meta().resource_version.as_deref(), new_status.clone());
    }
    let labels = credential_labels(obj);
    if let Ok(c) = minted {
        for (registry, quota) in &c.quotas {
            report_quota(obj, ctx, &labels, registry, quota).await;
        }
    }
    ctx.metrics.managed_secrets.get_or_create(&labels).set(done.synced.len() as i64);
    match new_status.expires_at.as_ref() {
        Some(t) => {
            ctx.metrics.expiry.get_or_create(&labels).set(t.0.as_second());
        }
        None => {
            ctx.metrics.expiry.remove(&labels);
        }
    }
    let refresh_at = minted.as_ref().ok().map(|c| c.refresh_at);
    let action = Action::requeue(look_again_in(refresh_at, failed, retry_in, Timestamp::now()));
    let not_ready = status::ready_reason(Some(&new_status)).filter(|r| *r != reasons::SYNCED).map(ready_reason);
    Ok(Reconciled { action, verdict: Verdict { not_ready, failed } })
}

/// A registry's pull quota, as verification read it: the gauges, and a
/// Warning Event when at most a tenth is left.
async fn report_quota<K: CredentialKind>(
    obj: &K,
    ctx: &Context,
    labels: &CredentialLabels,
    registry: &str,
    quota: &PullQuota,
) {
    let quota_labels = QuotaLabels {
        kind: labels.kind.clone(),
        namespace: labels.namespace.clone(),
        name: labels.name.clone(),
        registry: registry.to_string(),
    };
    ctx.metrics.pull_quota_remaining.get_or_create(&quota_labels).set(quota.remaining as i64);
    ctx.metrics.pull_quota_limit.get_or_create(&quota_labels).set(quota.limit as i64);
    if !quota.is_low() {
        return;
    }
    let window = quota.window_seconds.map(|w| format!(" per {w} s")).unwrap_or_default();
    let note = format!(
        "{registry} reports {} of {} pulls left{window}: Pods pulling with this credential will be refused \
         (429 Too Many Requests) once it runs out",
        quota.remaining, quota.limit
    );
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: reasons::PULL_QUOTA_LOW.into(),
        note: Some(note),
        action: "Verify".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an Event failed");
    }
}

/// When to reconcile again: after the backoff while minting fails, soon
/// (at most 5 s) after a transient failure, and otherwise at the refresh
/// time (at least 1 s from now).
pub fn look_again_in(refresh_at: Option<Timestamp>, retry: bool, retry_in: Duration, now: Timestamp) -> Duration {
    match refresh_at {
        None => retry_in,
        Some(_) if retry => retry_in.min(Duration::from_secs(5)),
        Some(at) if at <= now => Duration::from_secs(1),
        Some(at) => at.duration_since(now).unsigned_abs().max(Duration::from_secs(1)),
    }
}

pub fn credential_labels<K: CredentialKind>(obj: &K) -> CredentialLabels {
    CredentialLabels {
        kind: K::kind(&()).into_owned(),
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    }
}

/// The Events for what changed between two statuses: writes, new
/// failures, readiness, injection. None when nothing changed, so an idle
/// operator publishes no Events.
pub fn events(
    previous: Option<&CredentialStatus>,
    new_status: &CredentialStatus,
    secret: &str,
    done: &Report,
    mint_error: Option<&MintError>,
) -> Vec<(EventType, &'static str, String)> {
    let mut events = Vec::new();
    if done.created + done.updated > 0 {
        events.push((
            EventType::Normal,
            "SecretsWritten",
            format!("Secret {secret}: created in {}, updated in {} namespace(s)", done.created, done.updated),
        ));
    }
    if done.deleted > 0 {
        events.push((
            EventType::Normal,
            "SecretsRemoved",
            format!("Secret {secret}: removed from {} namespace(s)", done.deleted),
        ));
    }
    let previously_failed: BTreeSet<&str> = previous
        .and_then(|s| s.targets.as_ref())
        .map(|t| t.failed.iter().map(|f| f.namespace.as_str()).collect())
        .unwrap_or_default();
    for f in &done.failed {
        if !previously_failed.contains(f.namespace.as_str()) || f.reason == reasons::WRITE_FAILED {
            events.push((EventType::Warning, ready_reason(&f.reason), f.message.clone().unwrap_or_default()));
        }
    }
    if let Some(e) = mint_error {
        events.push((EventType::Warning, e.reason(), e.to_string()));
    }
    let was_ready = status::ready_reason(previous) == Some(reasons::SYNCED);
    let is_ready = status::ready_reason(Some(new_status)) == Some(reasons::SYNCED);
    if is_ready && !was_ready && previous.is_some() {
        events.push((EventType::Normal, reasons::SYNCED, "Ready again: every target holds the current Secret".into()));
    }
    // Injection: an Event when its state changes.
    let injection_was = status::reason_of(previous, status::INJECTION);
    if let Some(c) = new_status.conditions.iter().find(|c| c.type_ == status::INJECTION)
        && injection_was != Some(c.reason.as_str())
    {
        let type_ = if c.status == "True" { EventType::Normal } else { EventType::Warning };
        events.push((type_, ready_reason(&c.reason), c.message.clone()));
    }
    events
}

/// A reason from a status, as the `&'static str` constant of
/// [`crate::reasons`] (Event reasons and metric labels are only those).
fn ready_reason(reason: &str) -> &'static str {
    reasons::ALL.iter().copied().find(|r| *r == reason).unwrap_or(reasons::WRITE_FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TargetFailure;
    use crate::provider::ProviderError;
    use k8s_openapi::jiff::SignedDuration;

    fn status_after(previous: Option<&CredentialStatus>, done: &Report, error: Option<&MintError>) -> CredentialStatus {
        let t = Timestamp::from_second(1_000).unwrap();
        let outcome = MintOutcome {
            error,
            registries: vec!["r.example".into()],
            expires_at: None,
            minted_at: Some(t),
            next_refresh: None,
            state: None,
        };
        status::build(previous, Some(1), "basic", &outcome, 2, done, t)
    }

    fn failure(namespace: &str, reason: &str) -> TargetFailure {
        TargetFailure { namespace: namespace.into(), reason: reason.into(), message: Some(format!("{namespace}: x")) }
    }

    #[test]
    fn an_unchanged_world_gives_the_same_status_and_no_events() {
        let done = Report { synced: ["a".to_string(), "b".to_string()].into(), ..Default::default() };
        let first = status_after(None, &done, None);
        let again = status_after(Some(&first), &done, None);
        assert_eq!(first, again);
        assert!(events(Some(&first), &again, "pull", &done, None).is_empty());
        assert_eq!(status::ready_reason(Some(&again)), Some(reasons::SYNCED));
        assert_eq!(again.targets.as_ref().unwrap().summary.as_deref(), Some("2/2"));
    }

    #[test]
    fn writes_failures_and_recovery_each_get_an_event() {
        let written = Report { created: 1, updated: 1, synced: ["a".into(), "b".into()].into(), ..Default::default() };
        let first = status_after(None, &written, None);
        let reasons_of = |e: Vec<(EventType, &'static str, String)>| e.into_iter().map(|e| e.1).collect::<Vec<_>>();
        assert_eq!(reasons_of(events(None, &first, "pull", &written, None)), ["SecretsWritten"]);
        let conflict = Report { failed: vec![failure("b", reasons::SECRET_CONFLICT)], ..Default::default() };
        let broken = status_after(Some(&first), &conflict, None);
        assert_eq!(status::ready_reason(Some(&broken)), Some(reasons::SECRET_CONFLICT));
        assert_eq!(reasons_of(events(Some(&first), &broken, "pull", &conflict, None)), [reasons::SECRET_CONFLICT]);
        // The same conflict again: no new Event; a failed write again: one.
        let still = status_after(Some(&broken), &conflict, None);
        assert!(events(Some(&broken), &still, "pull", &conflict, None).is_empty());
        let write = Report { failed: vec![failure("b", reasons::WRITE_FAILED)], retry: true, ..Default::default() };
        let failing = status_after(Some(&broken), &write, None);
        assert_eq!(reasons_of(events(Some(&broken), &failing, "pull", &write, None)), [reasons::WRITE_FAILED]);
        assert_eq!(
            reasons_of(events(Some(&failing), &first, "pull", &Report::default(), None)),
            [reasons::SYNCED],
            "Ready again"
        );
    }

    #[test]
    fn a_mint_failure_keeps_the_last_good_registries_and_says_what_stays() {
        let done = Report { synced: ["a".to_string()].into(), ..Default::default() };
        let good = status_after(None, &done, None);
        let error = MintError::Provider(ProviderError::new(reasons::PROVIDER_THROTTLED, "slow down"));
        let failing = status_after(Some(&good), &done, Some(&error));
        let ready = &failing.conditions[0];
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reasons::PROVIDER_THROTTLED));
        assert_eq!(ready.message, "slow down; the last good Secret stays in place in 1 namespace(s)");
        assert_eq!(failing.registries, good.registries);
        let e = events(Some(&good), &failing, "pull", &done, Some(&error));
        assert_eq!(
            e.iter().map(|e| (e.1, e.2.as_str())).collect::<Vec<_>>(),
            [(reasons::PROVIDER_THROTTLED, "slow down")]
        );
    }

    #[test]
    fn the_next_look_follows_failure_retry_and_refresh() {
        let now = Timestamp::from_second(2_000).unwrap();
        let backoff = Duration::from_secs(40);
        assert_eq!(look_again_in(None, true, backoff, now), backoff, "minting failed: back off");
        let at = now + SignedDuration::from_secs(600);
        assert_eq!(look_again_in(Some(at), true, backoff, now), Duration::from_secs(5), "a write failed: soon");
        assert_eq!(look_again_in(Some(at), false, backoff, now), Duration::from_secs(600));
        let past = now - SignedDuration::from_secs(3);
        assert_eq!(look_again_in(Some(past), false, backoff, now), Duration::from_secs(1), "never in the past");
    }

    #[test]
    fn reasons_from_a_status_map_to_the_constants() {
        assert_eq!(ready_reason(reasons::SECRET_CONFLICT), reasons::SECRET_CONFLICT);
        assert_eq!(ready_reason(reasons::INJECTION_ACTIVE), reasons::INJECTION_ACTIVE);
        assert_eq!(ready_reason("SomethingElse"), reasons::WRITE_FAILED);
    }
}
