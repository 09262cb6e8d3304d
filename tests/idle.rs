//! Idle means idle: once converged, with nothing changing, the operator makes
//! no write requests. Counted by the operator's own request counter
//! (`regcred_kube_requests_total`, every method but GET), in a test binary of
//! its own so no other test's activity can cause writes.

mod common;

use std::time::Duration;

use common::*;
use kube::api::Api;
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use serde_json::json;

#[tokio::test]
async fn a_converged_operator_makes_no_writes() {
    let client = setup().await;
    let op = operator();
    install_admission_policies(&client).await;
    put_login(&client, CLUSTER_NS, "idle-login", "idle-user", "idle-secret-pw").await;
    for i in 0..5 {
        create_namespace(&client, &format!("idle-{i}"), &[("idle", "yes")]).await;
    }
    let mut spec = basic_spec("registry.example.com", "idle-login", "idle-pull");
    spec["namespaceSelector"] = json!({"matchLabels": {"idle": "yes"}});
    spec["serviceAccounts"] = json!({"all": true});
    // Injection (read-only: the chart binds the policies) and recovery add
    // no write at idle either.
    spec["injection"] = json!({"enabled": true});
    spec["recovery"] = json!({"enabled": true});
    apply_crcred(&client, "idle", spec).await;
    put_login(&client, "idle-0", "own-login", "own-user", "own-secret-pw").await;
    let mut own = basic_spec("other.example.com", "own-login", "own-pull");
    own["injection"] = json!({"enabled": true});
    apply_rcred(&client, "idle-0", "own", own).await;

    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    wait_for_reason(&crcreds, "idle", "Synced").await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "idle-0");
    wait_for_reason(&rcreds, "own", "Synced").await;
    for i in 0..5 {
        wait_for_pull_secret(&client, &format!("idle-{i}"), "default", "idle-pull", true).await;
    }
    wait_for_pull_secret(&client, "idle-0", "default", "own-pull", true).await;
    wait_for_condition(&crcreds, "idle", "Injection", "InjectionActive").await;
    wait_for_condition(&rcreds, "own", "Injection", "InjectionActive").await;

    // Let the last watch events of our own writes arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = op.write_requests().unwrap();
    assert!(before > 0, "the counter saw none of the convergence writes");
    let reconciles_before = reconciles(op);
    // A change that concerns no credential still wakes the reconcilers (a
    // namespace event re-evaluates every cluster credential): they must
    // find nothing to do.
    label_namespace(&client, "idle-1", json!({"unrelated": "change"})).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = op.write_requests().unwrap();
    assert!(reconciles(op) > reconciles_before, "the namespace change did not trigger a reconcile");
    assert_eq!(after, before, "writes while idle:\n{}", op.metrics().unwrap());

    let log = op.log_text();
    for secret in ["idle-secret-pw", "own-secret-pw"] {
        assert!(!log.contains(secret), "the operator log contains a password");
    }
}

fn reconciles(op: &regcred_testenv::operator::Operator) -> u64 {
    op.metrics()
        .unwrap()
        .lines()
        .find(|l| l.starts_with("regcred_reconciles_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}
