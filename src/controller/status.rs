//! Building the status and Events from what a reconcile found.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::act::Report;
use super::mint::MintError;
use crate::api::{CredentialStatus, TargetStatus};
use crate::reasons;

/// At most this many failed namespaces are listed in status.
const MAX_FAILED_LISTED: usize = 50;

/// The outcome of minting, as status needs it.
pub struct MintOutcome<'a> {
    pub error: Option<&'a MintError>,
    pub registries: Vec<String>,
    pub expires_at: Option<Timestamp>,
    pub minted_at: Option<Timestamp>,
    pub next_refresh: Option<Timestamp>,
    /// Provider state to keep; `None` keeps the previous one.
    pub state: Option<serde_json::Value>,
}

/// The `Ready` condition's status, reason and message.
pub fn ready(mint: &MintOutcome<'_>, desired: usize, report: &Report) -> (bool, String, String) {
    if let Some(e) = mint.error {
        let kept = report.synced.len();
        let message = if kept > 0 {
            format!("{e}; the last good Secret stays in place in {kept} namespace(s)")
        } else {
            e.to_string()
        };
        return (false, e.reason().to_string(), message);
    }
    if !report.failed.is_empty() {
        let all_conflicts = report.failed.iter().all(|f| f.reason == reasons::SECRET_CONFLICT);
        let reason = if all_conflicts { reasons::SECRET_CONFLICT } else { reasons::WRITE_FAILED };
        let first = report.failed[0].message.clone().unwrap_or_default();
        let message = format!("{} of {desired} namespace(s) failed; first: {first}", report.failed.len());
        return (false, reason.to_string(), message);
    }
    let mut message = format!("Secret synced to {} of {desired} namespace(s)", report.synced.len());
    if let (Some(exp), Some(minted)) = (mint.expires_at, mint.minted_at)
        && exp <= minted
    {
        message.push_str(&format!(
            "; the provider reported an expiry in the past ({exp}), so it is refreshed every {}s",
            crate::schedule::PAST_EXPIRY_RETRY.as_secs()
        ));
    }
    (true, reasons::SYNCED.to_string(), message)
}

/// The new status. Fields that did not change keep their old values, so an
/// unchanged world gives an equal status and no write.
pub fn build(
    previous: Option<&CredentialStatus>,
    generation: Option<i64>,
    provider: &str,
    mint: &MintOutcome<'_>,
    desired: usize,
    report: &Report,
    now: Timestamp,
) -> CredentialStatus {
    let previous = previous.cloned().unwrap_or_default();
    let (ok, reason, message) = ready(mint, desired, report);
    let status = if ok { "True" } else { "False" };
    let old = previous.conditions.iter().find(|c| c.type_ == "Ready");
    let transition = match old {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let mut failed = report.failed.clone();
    failed.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    failed.truncate(MAX_FAILED_LISTED);
    let synced = report.synced.len() as i32;
    CredentialStatus {
        observed_generation: generation,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason,
            message,
            last_transition_time: transition,
            observed_generation: generation,
        }],
        provider: Some(provider.into()),
        registries: if mint.error.is_none() { mint.registries.clone() } else { previous.registries },
        expires_at: mint.expires_at.map(Time).or(if mint.error.is_some() { previous.expires_at } else { None }),
        last_refresh_time: mint.minted_at.map(Time).or(previous.last_refresh_time),
        next_refresh_time: mint.next_refresh.map(Time),
        provider_state: mint.state.clone().or(previous.provider_state),
        targets: Some(TargetStatus {
            desired: desired as i32,
            synced,
            summary: Some(format!("{synced}/{desired}")),
            failed,
        }),
        // Written by the fleet's shards, each its own entry; never here.
        clusters: None,
    }
}

/// Type of the condition about admission-time injection.
pub const INJECTION: &str = "Injection";

/// Sets (or, with `None`, removes) the `Injection` condition after
/// `Ready`, keeping its transition time while its status stays.
pub fn set_injection(
    status: &mut CredentialStatus,
    previous: Option<&CredentialStatus>,
    condition: Option<(bool, &str, String)>,
    generation: Option<i64>,
    now: Timestamp,
) {
    status.conditions.retain(|c| c.type_ != INJECTION);
    let Some((ok, reason, message)) = condition else { return };
    let value = if ok { "True" } else { "False" };
    let old = previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == INJECTION));
    let transition = match old {
        Some(c) if c.status == value => c.last_transition_time.clone(),
        _ => Time(now),
    };
    status.conditions.push(Condition {
        type_: INJECTION.into(),
        status: value.into(),
        reason: reason.into(),
        message,
        last_transition_time: transition,
        observed_generation: generation,
    });
}

/// The reason of a condition of `type_` in a status.
pub fn reason_of<'a>(status: Option<&'a CredentialStatus>, type_: &str) -> Option<&'a str> {
    status?.conditions.iter().find(|c| c.type_ == type_).map(|c| c.reason.as_str())
}

/// The Ready condition's reason in a status.
pub fn ready_reason(status: Option<&CredentialStatus>) -> Option<&str> {
    status?.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_injection_condition_follows_ready_and_keeps_its_transition_time() {
        let t1 = Timestamp::from_second(1_000).unwrap();
        let t2 = Timestamp::from_second(2_000).unwrap();
        let ready = Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: reasons::SYNCED.into(),
            message: String::new(),
            last_transition_time: Time(t1),
            observed_generation: Some(1),
        };
        let mut first = CredentialStatus { conditions: vec![ready.clone()], ..Default::default() };
        set_injection(&mut first, None, Some((true, reasons::INJECTION_ACTIVE, "m".into())), Some(1), t1);
        assert_eq!(first.conditions.len(), 2);
        assert_eq!(first.conditions[0].type_, "Ready", "Ready stays first");
        assert_eq!(reason_of(Some(&first), INJECTION), Some(reasons::INJECTION_ACTIVE));

        let mut again = CredentialStatus { conditions: vec![ready.clone()], ..Default::default() };
        set_injection(&mut again, Some(&first), Some((true, reasons::INJECTION_ACTIVE, "m".into())), Some(1), t2);
        assert_eq!(again, first, "an unchanged world gives an equal status");

        let mut failed = CredentialStatus { conditions: vec![ready.clone()], ..Default::default() };
        set_injection(&mut failed, Some(&first), Some((false, reasons::WRITE_FAILED, "x".into())), Some(1), t2);
        assert_eq!(failed.conditions[1].last_transition_time, Time(t2));

        let mut off = CredentialStatus { conditions: vec![ready], ..Default::default() };
        set_injection(&mut off, Some(&first), None, Some(1), t2);
        assert_eq!(off.conditions.len(), 1, "injection off: no condition");
    }
}
