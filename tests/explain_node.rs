//! `regcred explain pod` on the real node: a Pod that pulls, and Pods the
//! kubelet really failed to pull for each cause `explain` names: the
//! namespace outside the credential's selection, the Pod created before
//! regcred patched its ServiceAccount, the Pod's own pull Secrets, a
//! ServiceAccount the credential does not select. The verdict, the exit
//! code and the JSON are asserted against what the kubelet did.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use regcred_testenv::node::workload::{apply_deployment, wait_running};
use regcred_testenv::node::{self, Endpoint};
use regcred_testenv::registry::{Registry, TEST_IMAGE};
use serde_json::{Value, json};

const HOST: &str = "registry.explain.regcred.test";
const USER: &str = "explain-node-user";
const PASSWORD: &str = "explain-node-registry-password";
const START: Duration = Duration::from_secs(120);

fn image() -> String {
    format!("{HOST}/{TEST_IMAGE}")
}

async fn setup_node() -> Client {
    let client = setup().await;
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(|| {
        Registry::start_htpasswd(control_plane().process_group(), &[(USER, PASSWORD)])
            .unwrap_or_else(|e| panic!("{e:#}"))
    });
    node::shared().add_registry(HOST, &Endpoint::Http(registry.host.clone())).unwrap();
    client
}

fn reason(report: &Value) -> &str {
    report["images"][0]["reason"].as_str().unwrap_or_default()
}

/// A bare Pod pulling the test image (`Always`), as `sa`, with `own` pull
/// Secrets.
async fn create_pod(client: &Client, ns: &str, name: &str, sa: &str, own: &[&str]) {
    let mut spec = pod_spec(&image(), Some(sa), own);
    spec["containers"][0]["imagePullPolicy"] = json!("Always");
    spec["terminationGracePeriodSeconds"] = json!(0);
    common::create_pod(client, ns, name, spec).await
}

/// Waits until the kubelet has failed to pull the Pod's image (the
/// container waits with ErrImagePull or ImagePullBackOff).
async fn wait_pull_failed(client: &Client, ns: &str, name: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    loop {
        let pod = api.get(name).await.unwrap();
        let waiting = pod
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.first().and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone()));
        if matches!(waiting.as_deref(), Some("ErrImagePull" | "ImagePullBackOff")) {
            return;
        }
        assert!(started.elapsed() < START, "{ns}/{name} did not fail to pull: {waiting:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The Deployment's Pod (waits for the ReplicaSet to create it; one being
/// deleted does not count).
async fn pod_of(client: &Client, ns: &str, app: &str) -> String {
    let lp = ListParams::default().labels(&format!("app={app}"));
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    wait_for(&format!("a Pod of {ns}/{app}"), WAIT, || async {
        let pods = api.list(&lp).await.ok()?.items;
        pods.into_iter().find(|p| p.metadata.deletion_timestamp.is_none()).map(|p| p.name_any())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_pod_matches_what_the_kubelet_did() {
    let client = setup_node().await;
    put_login(&client, CLUSTER_NS, "exn-login", USER, PASSWORD).await;
    let mut spec = basic_spec(HOST, "exn-login", "exn-pull");
    spec["namespaceSelector"] = json!({"matchLabels": {"explain-node": "yes"}});
    apply_crcred(&client, "exn", spec).await;

    // Pulls: created after the ServiceAccount was patched.
    create_namespace(&client, "exn-ok", &[("explain-node", "yes")]).await;
    wait_for_pull_secret(&client, "exn-ok", "default", "exn-pull", true).await;
    apply_deployment(&client, "exn-ok", "app", &image(), "Always", 1).await.unwrap();
    wait_running(&client, "exn-ok", "app", 1, START).await.unwrap_or_else(|e| panic!("{e:#}"));
    let pod = pod_of(&client, "exn-ok", "app").await;
    let (code, report) = explain_pod_json(&format!("exn-ok/{pod}"));
    assert_eq!((code, report["verdict"].as_str()), (0, Some("wouldPull")), "{report:#}");
    assert_eq!(report["images"][0]["uses"], "exn-pull");

    // Stuck: the namespace is outside the credential's selection.
    create_namespace(&client, "exn-out", &[]).await;
    apply_deployment(&client, "exn-out", "app", &image(), "Always", 1).await.unwrap();
    let stuck = pod_of(&client, "exn-out", "app").await;
    wait_pull_failed(&client, "exn-out", &stuck).await;
    let (code, report) = explain_pod_json(&format!("exn-out/{stuck}"));
    assert_eq!(code, 1, "{report:#}");
    assert!(reason(&report).contains("namespace exn-out lacks label explain-node=yes"), "{report:#}");

    // Still stuck once the namespace is selected: the Pod was created
    // before regcred patched the ServiceAccount.
    label_namespace(&client, "exn-out", json!({"explain-node": "yes"})).await;
    wait_for_pull_secret(&client, "exn-out", "default", "exn-pull", true).await;
    let (code, report) = explain_pod_json(&format!("exn-out/{stuck}"));
    assert_eq!(code, 1, "{report:#}");
    assert!(reason(&report).contains("created before regcred added exn-pull to ServiceAccount default"), "{report:#}");
    assert!(report["fix"].as_str().unwrap().contains("delete the Pod"), "{report:#}");
    // As the fix says: a new Pod pulls.
    Api::<Pod>::namespaced(client.clone(), "exn-out").delete(&stuck, &Default::default()).await.unwrap();
    wait_running(&client, "exn-out", "app", 1, START).await.unwrap_or_else(|e| panic!("{e:#}"));
    let replaced = pod_of(&client, "exn-out", "app").await;
    assert_eq!(explain_pod_json(&format!("exn-out/{replaced}")).0, 0);

    // Stuck: the Pod lists its own (missing) pull Secret, so the
    // ServiceAccount's was not added.
    create_pod(&client, "exn-ok", "own", "default", &["mine"]).await;
    wait_pull_failed(&client, "exn-ok", "own").await;
    let (code, report) = explain_pod_json("exn-ok/own");
    assert_eq!(code, 1, "{report:#}");
    assert!(reason(&report).contains("lists its own imagePullSecrets"), "{report:#}");
    assert_eq!(report["images"][0]["secrets"][0]["exists"], false);

    // Stuck: a ServiceAccount the credential does not select.
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "builder"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), "exn-ok").create(&PostParams::default(), &sa).await.unwrap();
    create_pod(&client, "exn-ok", "builder", "builder", &[]).await;
    wait_pull_failed(&client, "exn-ok", "builder").await;
    let (code, report) = explain_pod_json("exn-ok/builder");
    assert_eq!(code, 1, "{report:#}");
    assert!(
        reason(&report).contains("ServiceAccount builder is not selected by ClusterRegistryCredential/exn"),
        "{report:#}"
    );
}
