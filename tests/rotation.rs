//! Refresh scheduling, failure handling and metrics, against the real
//! control plane with the `basic` provider.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use regcred::api::RegistryCredential;
use serde_json::json;

const REGISTRY: &str = "registry.example.com";

fn counter(metrics: &str, prefix: &str) -> f64 {
    metrics.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test]
async fn refreshes_repeat_on_the_interval_and_an_outage_keeps_the_last_good_secret() {
    let client = setup().await;
    let op = operator();
    create_namespace(&client, "rot", &[]).await;
    put_login(&client, "rot", "login", "rot-user", "rot-pass-1").await;
    let mut spec = basic_spec(REGISTRY, "login", "rot-pull");
    spec["refresh"] = json!({"interval": "2s"});
    apply_rcred(&client, "rot", "cred", spec).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "rot");
    let first = wait_for_reason(&rcreds, "cred", "Synced").await;
    let t0 = first.last_refresh_time.clone().expect("lastRefreshTime").0;
    let next = first.next_refresh_time.clone().expect("nextRefreshTime").0;
    let gap = next.duration_since(t0).as_secs_f64();
    assert!(
        (1.7..=2.0).contains(&gap),
        "nextRefreshTime is {gap}s after lastRefreshTime, expected 2s minus up to 10% jitter"
    );

    // Repeated refreshes: lastRefreshTime moves on, the counter grows.
    let refreshed_before =
        counter(&op.metrics().unwrap(), "regcred_refreshes_total{provider=\"basic\",result=\"success\"}");
    wait_for("two more refreshes", WAIT, || async {
        let s = rcreds.get("cred").await.unwrap().status?;
        let t = s.last_refresh_time?.0;
        (t.duration_since(t0).as_secs_f64() >= 3.5).then_some(())
    })
    .await;
    let refreshed_after =
        counter(&op.metrics().unwrap(), "regcred_refreshes_total{provider=\"basic\",result=\"success\"}");
    assert!(refreshed_after >= refreshed_before + 2.0, "{refreshed_before} -> {refreshed_after}");

    // The source goes away: the pull Secret stays, status and an Event say why.
    Api::<Secret>::namespaced(client.clone(), "rot").delete("login", &DeleteParams::default()).await.unwrap();
    let status = wait_for_reason(&rcreds, "cred", "SourceSecretNotFound").await;
    let ready = &status.conditions[0];
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("last good Secret stays"), "{}", ready.message);
    assert_eq!(status.targets.as_ref().unwrap().synced, 1, "the kept Secret still counts as in place");
    let kept = get_secret(&client, "rot", "rot-pull").await.expect("the last good Secret was removed");
    assert_eq!(login_in(&kept, REGISTRY), Some(("rot-user".into(), "rot-pass-1".into())));
    let events = wait_for("a Warning Event", WAIT, || async {
        let ev = events_for(&client, "rot", "cred").await;
        ev.iter().any(|(t, r, _)| t == "Warning" && r == "SourceSecretNotFound").then_some(ev)
    })
    .await;
    assert!(!events.is_empty());
    let failure_count =
        || counter(&op.metrics().unwrap(), "regcred_refreshes_total{provider=\"basic\",result=\"failure\"}");
    let failures = failure_count();
    assert!(failures >= 1.0);
    // Retries follow the backoff (5s, 10s, ...), not the operator's own
    // status writes: no hot loop.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert!(failure_count() - failures <= 1.0, "{} failed refreshes in 4s", failure_count() - failures);

    // It heals by itself when the source returns.
    put_login(&client, "rot", "login", "rot-user", "rot-pass-2").await;
    wait_for_login(&client, "rot", "rot-pull", REGISTRY, "rot-user", "rot-pass-2").await;
    wait_for_reason(&rcreds, "cred", "Synced").await;
    wait_for("a Synced Event", WAIT, || async {
        let ev = events_for(&client, "rot", "cred").await;
        ev.iter().any(|(t, r, _)| t == "Normal" && r == "Synced").then_some(())
    })
    .await;
}

#[tokio::test]
async fn metrics_expose_the_documented_families() {
    let client = setup().await;
    let op = operator();
    create_namespace(&client, "metrics", &[]).await;
    put_login(&client, "metrics", "login", "m", "metrics-pass").await;
    apply_rcred(&client, "metrics", "cred", basic_spec(REGISTRY, "login", "m-pull")).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "metrics");
    wait_for_reason(&rcreds, "cred", "Synced").await;
    // A credential whose source is missing, for the error counter.
    apply_rcred(&client, "metrics", "broken", basic_spec(REGISTRY, "missing", "b-pull")).await;
    wait_for_reason(&rcreds, "broken", "SourceSecretNotFound").await;
    let text = op.metrics().unwrap();
    for family in [
        "# TYPE regcred_refreshes counter",
        "# TYPE regcred_provider_request_duration_seconds histogram",
        "# TYPE regcred_managed_secrets gauge",
        "# TYPE regcred_reconcile_errors counter",
        "# TYPE regcred_kube_requests counter",
    ] {
        assert!(text.contains(family), "missing {family:?} in\n{text}");
    }
    assert!(text.contains("regcred_reconcile_errors_total{reason=\"SourceSecretNotFound\"}"), "{text}");
    // A static credential has no expiry, so no expiry sample (the expiring
    // providers' tests assert the gauge).
    assert!(
        !text.contains("regcred_credential_expiry_timestamp_seconds{kind=\"RegistryCredential\",namespace=\"metrics\"")
    );
    assert!(
        text.contains("regcred_managed_secrets{kind=\"RegistryCredential\",namespace=\"metrics\",name=\"cred\"} 1"),
        "{text}"
    );
    assert!(text.contains("regcred_provider_request_duration_seconds_count{provider=\"basic\"}"), "{text}");
    assert!(!text.contains("metrics-pass"));
    let (code, body) = regcred_testenv::operator::http_get(&format!("{}/healthz", op.metrics_url)).unwrap();
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, _) = regcred_testenv::operator::http_get(&format!("{}/readyz", op.metrics_url)).unwrap();
    assert_eq!(code, 200);
}
