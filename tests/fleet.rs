//! The fleet against real control planes: the shared hub (with its
//! operator) and two spoke control planes, one registered as a Cluster API
//! kubeconfig Secret and one as an Argo CD cluster Secret. One credential is
//! minted once and written to every selected cluster; a spoke that stops,
//! revokes the hub's identity, changes its kubeconfig or leaves the
//! selection is its own problem; deleting the credential with a spoke down
//! ends within the configured bound.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use regcred::api::ClusterRegistryCredential;
use regcred_testenv::ControlPlane;
use regcred_testenv::fleet::{self, HUB_SA, SPOKE_NS};
use serde_json::{Value, json};

const REGISTRY: &str = "fleet.registry.example";
const CREDENTIAL: &str = "fleet";
const PULL: &str = "fleet-pull";
/// How long the finalizer waits for unreachable clusters (the operator's
/// env below).
const CLEANUP_TIMEOUT_SECONDS: u64 = 15;

fn start_spoke() -> ControlPlane {
    fleet::start_spoke().unwrap_or_else(|e| panic!("{e:#}"))
}

async fn hub_identity(spoke: &ControlPlane) -> String {
    fleet::hub_identity(spoke).await.unwrap_or_else(|e| panic!("{e:#}"))
}

async fn register_capi(hub: &Client, cluster: &str, kubeconfig: &str, labels: Value) {
    fleet::apply_secret(hub, &fleet::capi_secret(CLUSTER_NS, cluster, kubeconfig, &labels)).await.unwrap();
}

async fn register_argo(hub: &Client, cluster: &str, kubeconfig: &str, labels: Value) {
    let secret = fleet::argo_secret(CLUSTER_NS, cluster, kubeconfig, &labels).unwrap();
    fleet::apply_secret(hub, &secret).await.unwrap();
}

async fn label_secret(hub: &Client, name: &str, labels: Value) {
    Api::<Secret>::namespaced(hub.clone(), CLUSTER_NS)
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": labels}})))
        .await
        .expect("label kubeconfig Secret");
}

/// The credential's clusters status summed over shards: (desired, synced).
async fn clusters_status(hub: &Client) -> Option<(i32, i32, Vec<(String, String)>)> {
    let obj = Api::<ClusterRegistryCredential>::all(hub.clone()).get_opt(CREDENTIAL).await.unwrap()?;
    let shards = obj.status?.clusters?;
    let desired = shards.values().map(|s| s.desired).sum();
    let synced = shards.values().map(|s| s.synced).sum();
    let failed = shards.values().flat_map(|s| s.failed.iter().map(|f| (f.cluster.clone(), f.reason.clone()))).collect();
    Some((desired, synced, failed))
}

/// Mints counted by the hub's operator (`regcred_refreshes_total`, basic).
fn mints() -> u64 {
    let metrics = operator().metrics().unwrap();
    metrics
        .lines()
        .find(|l| {
            l.starts_with("regcred_refreshes_total{") && l.contains("provider=\"basic\"") && l.contains("success")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

async fn wait_everywhere(clients: &[(&str, &Client)], namespaces: &[&str], password: &str) {
    for (cluster, client) in clients {
        for ns in namespaces {
            let s = wait_for_login(client, ns, PULL, REGISTRY, "fleet", password).await;
            assert_eq!(
                s.annotations().get("regcred.dev/owner").map(String::as_str),
                Some("ClusterRegistryCredential/fleet"),
                "{cluster}/{ns}"
            );
            wait_for_pull_secret(client, ns, "default", PULL, true).await;
        }
    }
}

#[tokio::test]
async fn one_mint_reaches_every_cluster_and_a_spoke_in_trouble_stays_its_own_problem() {
    set_operator_env(vec![("REGCRED_FLEET_CLEANUP_TIMEOUT_SECONDS".into(), CLEANUP_TIMEOUT_SECONDS.to_string())]);
    let hub = setup().await;
    let spoke_a = start_spoke();
    let mut spoke_b = start_spoke();
    let a = spoke_a.client().await.unwrap();
    let b = spoke_b.client().await.unwrap();
    for (client, names) in [(&hub, ["hub-1", "hub-2"]), (&a, ["team-1", "team-2"]), (&b, ["team-1", "team-2"])] {
        for ns in names {
            create_namespace(client, ns, &[("fleet", "yes")]).await;
        }
    }
    // A namespace the selection leaves out, in a spoke.
    create_namespace(&a, "other", &[]).await;
    let kubeconfig_a = hub_identity(&spoke_a).await;
    let kubeconfig_b = hub_identity(&spoke_b).await;
    register_capi(&hub, "spoke-a", &kubeconfig_a, json!({"env": "prod"})).await;
    register_argo(&hub, "spoke-b", &kubeconfig_b, json!({"env": "prod"})).await;

    put_login(&hub, CLUSTER_NS, "fleet-login", "fleet", "fleet-password-1").await;
    let mut spec = basic_spec(REGISTRY, "fleet-login", PULL);
    spec["namespaceSelector"] = json!({"matchLabels": {"fleet": "yes"}});
    spec["clusters"] = json!({"selector": {"matchLabels": {"env": "prod"}}});
    apply_crcred(&hub, CREDENTIAL, spec.clone()).await;

    // Both formats, the local cluster and every selected namespace; minted once.
    let all = [("hub", &hub), ("spoke-a", &a), ("spoke-b", &b)];
    wait_everywhere(&all[..1], &["hub-1", "hub-2"], "fleet-password-1").await;
    wait_everywhere(&all[1..], &["team-1", "team-2"], "fleet-password-1").await;
    assert!(get_secret(&a, "other", PULL).await.is_none(), "the namespace selection applies inside each cluster");
    wait_for("status.clusters: 2 of 2 synced", WAIT, || async {
        clusters_status(&hub).await.filter(|(d, s, f)| (*d, *s) == (2, 2) && f.is_empty())
    })
    .await;
    assert_eq!(mints(), 1, "one provider call for three clusters and six namespaces");

    // Drift in a spoke is corrected: a deleted Secret comes back.
    Api::<Secret>::namespaced(a.clone(), "team-1").delete(PULL, &DeleteParams::default()).await.unwrap();
    wait_for_login(&a, "team-1", PULL, REGISTRY, "fleet", "fleet-password-1").await;
    // A new namespace in a spoke gets its Secret.
    create_namespace(&b, "team-3", &[("fleet", "yes")]).await;
    wait_for_login(&b, "team-3", PULL, REGISTRY, "fleet", "fleet-password-1").await;

    // The carrier deleted by hand is written again at once.
    let carriers = Api::<Secret>::namespaced(hub.clone(), CLUSTER_NS);
    let before = carriers.get("regcred-fleet-fleet").await.unwrap().metadata.uid;
    carriers.delete("regcred-fleet-fleet", &DeleteParams::default()).await.unwrap();
    wait_for("the carrier written again", WAIT, || async {
        let now = carriers.get_opt("regcred-fleet-fleet").await.unwrap()?;
        (now.metadata.uid != before).then_some(())
    })
    .await;

    // Spoke A hangs (its apiserver stopped with SIGSTOP: connections are
    // accepted and never answered): a rotation still reaches the hub and
    // spoke B at once, and A once it answers again.
    let pid = spoke_a.pid("kube-apiserver").expect("the spoke's apiserver");
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    };
    signal("-STOP");
    put_login(&hub, CLUSTER_NS, "fleet-login", "fleet", "fleet-password-1b").await;
    let rotated = std::time::Instant::now();
    wait_for_login(&hub, "hub-1", PULL, REGISTRY, "fleet", "fleet-password-1b").await;
    for ns in ["team-1", "team-2", "team-3"] {
        wait_for_login(&b, ns, PULL, REGISTRY, "fleet", "fleet-password-1b").await;
    }
    println!("with spoke A hanging, the rotation reached the hub and spoke B in {:?}", rotated.elapsed());
    signal("-CONT");
    for ns in ["team-1", "team-2"] {
        wait_for_login(&a, ns, PULL, REGISTRY, "fleet", "fleet-password-1b").await;
    }

    // Spoke B stops mid-run: a rotation reaches the hub and spoke A at once.
    let stopped = spoke_b.kill_apiserver().unwrap();
    put_login(&hub, CLUSTER_NS, "fleet-login", "fleet", "fleet-password-2").await;
    wait_for_login(&hub, "hub-1", PULL, REGISTRY, "fleet", "fleet-password-2").await;
    wait_for_login(&a, "team-1", PULL, REGISTRY, "fleet", "fleet-password-2").await;
    wait_for_login(&a, "team-2", PULL, REGISTRY, "fleet", "fleet-password-2").await;
    let failed = wait_for("spoke-b reported unreachable", Duration::from_secs(60), || async {
        clusters_status(&hub).await.filter(|(_, s, f)| *s == 1 && f.iter().any(|(c, _)| c == "spoke-b")).map(|s| s.2)
    })
    .await;
    assert_eq!(failed[0].1, "ClusterUnreachable", "{failed:?}");
    wait_for("a ClusterUnreachable Event", WAIT, || async {
        events_for(&hub, "default", CREDENTIAL)
            .await
            .into_iter()
            .find(|(_, r, n)| r == "ClusterUnreachable" && n.contains("spoke-b"))
    })
    .await;
    let metrics = operator().metrics().unwrap();
    assert!(metrics.contains("regcred_cluster_up{cluster=\"spoke-b\"} 0"), "cluster_up of spoke-b");
    assert!(metrics.contains("regcred_cluster_up{cluster=\"spoke-a\"} 1"), "cluster_up of spoke-a");
    // Spoke B returns and converges.
    spoke_b.start_again(stopped).await.unwrap();
    let b = spoke_b.client().await.unwrap();
    for ns in ["team-1", "team-2", "team-3"] {
        wait_for_login(&b, ns, PULL, REGISTRY, "fleet", "fleet-password-2").await;
    }
    wait_for("2 of 2 synced again", Duration::from_secs(60), || async {
        clusters_status(&hub).await.filter(|(d, s, f)| (*d, *s) == (2, 2) && f.is_empty())
    })
    .await;
    assert_eq!(mints(), 3, "one provider call per rotation, whatever the clusters' state");

    // Spoke A revokes the hub's identity (its ServiceAccount is deleted:
    // its tokens stop working): reported, and B is unaffected.
    Api::<ServiceAccount>::namespaced(a.clone(), SPOKE_NS).delete(HUB_SA, &DeleteParams::default()).await.unwrap();
    // kube-apiserver caches a successful token authentication for 10 s
    // (k8s.io/kubernetes pkg/kubeapiserver/options/authentication.go,
    // TokenSuccessCacheTTL): the token works that long after the deletion.
    tokio::time::sleep(Duration::from_secs(11)).await;
    put_login(&hub, CLUSTER_NS, "fleet-login", "fleet", "fleet-password-3").await;
    wait_for_login(&b, "team-1", PULL, REGISTRY, "fleet", "fleet-password-3").await;
    let failed = wait_for("spoke-a reported unauthorized", Duration::from_secs(60), || async {
        clusters_status(&hub).await.and_then(|(_, _, f)| f.into_iter().find(|(c, _)| c == "spoke-a"))
    })
    .await;
    assert!(["ClusterUnauthorized", "WriteFailed"].contains(&failed.1.as_str()), "{failed:?}");
    assert_eq!(
        login_in(&get_secret(&a, "team-1", PULL).await.unwrap(), REGISTRY).unwrap().1,
        "fleet-password-2",
        "spoke A keeps its last good Secret"
    );
    // The kubeconfig Secret is rotated with a new identity: picked up
    // without a restart.
    let kubeconfig_a = hub_identity(&spoke_a).await;
    register_capi(&hub, "spoke-a", &kubeconfig_a, json!({"env": "prod"})).await;
    wait_for_login(&a, "team-1", PULL, REGISTRY, "fleet", "fleet-password-3").await;
    wait_for("2 of 2 synced after the rotation", Duration::from_secs(60), || async {
        clusters_status(&hub).await.filter(|(d, s, f)| (*d, *s) == (2, 2) && f.is_empty())
    })
    .await;

    // Spoke A leaves the selection: its Secrets and ServiceAccount entries go.
    label_secret(&hub, "spoke-a-kubeconfig", json!({"env": "dev"})).await;
    for ns in ["team-1", "team-2"] {
        wait_for_no_secret(&a, ns, PULL).await;
        wait_for_pull_secret(&a, ns, "default", PULL, false).await;
    }
    assert!(get_secret(&b, "team-1", PULL).await.is_some(), "spoke B keeps its Secret");
    label_secret(&hub, "spoke-a-kubeconfig", json!({"env": "prod"})).await;
    wait_for_login(&a, "team-1", PULL, REGISTRY, "fleet", "fleet-password-3").await;

    // The credential is deleted while spoke B is down: the deletion ends
    // within the bound, with an Event, and B is cleaned up on return.
    let stopped = spoke_b.kill_apiserver().unwrap();
    let started = std::time::Instant::now();
    Api::<ClusterRegistryCredential>::all(hub.clone()).delete(CREDENTIAL, &DeleteParams::default()).await.unwrap();
    wait_for("the credential gone", Duration::from_secs(CLEANUP_TIMEOUT_SECONDS + 30), || async {
        Api::<ClusterRegistryCredential>::all(hub.clone()).get_opt(CREDENTIAL).await.unwrap().is_none().then_some(())
    })
    .await;
    let took = started.elapsed();
    println!("credential deleted with a spoke down in {took:?} (bound {CLEANUP_TIMEOUT_SECONDS}s)");
    assert!(took >= Duration::from_secs(CLEANUP_TIMEOUT_SECONDS - 2), "it waited for the spoke: {took:?}");
    let incomplete = events_for(&hub, "default", CREDENTIAL).await;
    assert!(
        incomplete.iter().any(|(_, r, n)| r == "FleetCleanupIncomplete" && n.contains("spoke-b")),
        "{incomplete:?}"
    );
    for ns in ["team-1", "team-2"] {
        wait_for_no_secret(&a, ns, PULL).await;
    }
    wait_for_no_secret(&hub, "hub-1", PULL).await;
    spoke_b.start_again(stopped).await.unwrap();
    let b = spoke_b.client().await.unwrap();
    for ns in ["team-1", "team-2", "team-3"] {
        wait_for_no_secret(&b, ns, PULL).await;
        wait_for_pull_secret(&b, ns, "default", PULL, false).await;
    }
    // The carrier went with the credential.
    assert!(get_secret(&hub, CLUSTER_NS, "regcred-fleet-fleet").await.is_none());
}
