//! Leader election with two operator processes against the real control
//! plane: only the leader writes; killing it hands over within the Lease
//! duration without a write storm; a leader that loses its Lease exits.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use regcred_testenv::operator::Operator;
use serde_json::json;

const NS: &str = "regcred-system";
const LEASE_SECONDS: u64 = 6;

fn start(name: &str) -> Operator {
    let cp = regcred_testenv::shared();
    let args = [
        "--leader-elect",
        "--leader-election-namespace",
        NS,
        "--lease-duration-seconds",
        "6",
        "--log-level",
        "info,regcred=debug,kube_lease_manager=debug",
    ];
    Operator::start_with_env(cp, Path::new(env!("CARGO_BIN_EXE_regcred")), NS, &args, &[("POD_NAME", name)])
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn is_leader(op: &Operator) -> bool {
    op.metrics().is_ok_and(|m| m.lines().any(|l| l == "regcred_leader 1"))
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

async fn setup(client: &Client) {
    for (name, labels) in [(NS, json!({})), ("fo-a", json!({"fo": "yes"})), ("fo-b", json!({"fo": "yes"}))] {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    }
    regcred_testenv::operator::record_secret("failover-password");
    let login: Secret = serde_json::from_value(json!({
        "metadata": {"name": "login", "namespace": NS},
        "stringData": {"username": "fo", "password": "failover-password"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), NS).create(&PostParams::default(), &login).await.unwrap();
    let cred = json!({
        "apiVersion": "regcred.dev/v1beta1", "kind": "ClusterRegistryCredential",
        "metadata": {"name": "failover"},
        "spec": {
            "provider": {"basic": {"registry": "registry.example.com", "secretRef": {"name": "login"}}},
            "secret": {"name": "fo-pull"},
            "namespaceSelector": {"matchLabels": {"fo": "yes"}}
        }
    });
    let api: Api<regcred::api::ClusterRegistryCredential> = Api::all(client.clone());
    api.patch("failover", &PatchParams::apply("regcred-test"), &Patch::Apply(&cred)).await.unwrap();
}

async fn resource_versions(client: &Client) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for ns in ["fo-a", "fo-b"] {
        let s = Api::<Secret>::namespaced(client.clone(), ns).get_opt("fo-pull").await.unwrap();
        out.push(s.and_then(|s| s.metadata.resource_version));
    }
    out
}

#[tokio::test]
async fn only_the_leader_writes_and_a_standby_takes_over() {
    let cp = regcred_testenv::shared();
    let client = cp.client().await.unwrap();
    setup(&client).await;
    let first = start("replica-one");
    wait_until("replica-one to lead", Duration::from_secs(30), || is_leader(&first)).await;
    let second = start("replica-two");

    // The leader converges; the standby stays out of it.
    let rvs = {
        let client = client.clone();
        let mut synced = false;
        for _ in 0..300 {
            if resource_versions(&client).await.iter().all(Option::is_some) {
                synced = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(synced, "the leader did not write the Secrets:\n{}", first.log_text());
        tokio::time::sleep(Duration::from_secs(2)).await;
        resource_versions(&client).await
    };
    let standby_writes = second.write_requests().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!is_leader(&second));
    assert_eq!(second.write_requests().unwrap(), standby_writes, "the standby wrote");
    assert_eq!(
        second.write_requests().unwrap(),
        0,
        "the standby wrote something (the Lease is held, so it should only read it)"
    );

    // The leader dies: the standby takes over within the Lease duration.
    let killed = Instant::now();
    drop(first);
    wait_until("replica-two to take over", Duration::from_secs(4 * LEASE_SECONDS), || is_leader(&second)).await;
    let handover = killed.elapsed();
    eprintln!("handover after {handover:?} (Lease duration {LEASE_SECONDS}s)");
    assert!(
        handover <= Duration::from_secs(LEASE_SECONDS + 3),
        "handover took {handover:?}, more than the Lease duration"
    );

    // No write storm: the new leader finds everything in place.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(resource_versions(&client).await, rvs, "the new leader rewrote Secrets that were in place");
    let writes = second.write_requests().unwrap();
    assert!(writes <= 6, "{writes} writes after takeover (Lease renewals and a status update expected)");

    // A leader whose Lease is taken away exits at once instead of writing on,
    // and a standby does not take a Lease someone else holds.
    let third = start("replica-three");
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let mut second = second;
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now());
    let steal = json!({"spec": {"holderIdentity": "thief", "renewTime": now, "leaseDurationSeconds": 3600}});
    leases.patch("regcred", &PatchParams::default(), &Patch::Merge(&steal)).await.unwrap();
    wait_until("the robbed leader to exit", Duration::from_secs(3 * LEASE_SECONDS), || !second.is_running()).await;
    assert!(second.log_text().contains("lost the leader Lease"), "{}", second.log_text());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!is_leader(&third), "replica-three took a Lease held by someone else");
}
