//! A Pod on a real node (kubelet + containerd) in a spoke pulls a private
//! image through the Secret the hub wrote there: the hub (the shared
//! control plane and its operator) mints, the spoke (its own control plane,
//! with the node) only receives the Secret, the ServiceAccount entry, and
//! the parameters of its injection policy. A Pod stuck before the Secret
//! existed is recovered in the spoke; a Pod listing a pull Secret of its
//! own gets the hub's at admission.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use regcred_testenv::fleet;
use regcred_testenv::node::workload::{apply_deployment, refused_for_credentials, wait_pull_refused, wait_running};
use regcred_testenv::node::{Endpoint, KubeletOptions, Node};
use regcred_testenv::operator::record_secret;
use regcred_testenv::registry::TEST_IMAGE;
use regcred_testenv::tokenauth::{TokenService, start_token_registry};
use serde_json::json;

const START: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_in_a_spoke_pulls_with_the_secret_the_hub_wrote() {
    let hub = setup().await;
    let spoke = fleet::start_spoke().unwrap_or_else(|e| panic!("{e:#}"));
    let node = Node::start(&spoke, KubeletOptions::default()).unwrap_or_else(|e| panic!("starting the node: {e:#}"));
    let client = spoke.client().await.unwrap();

    // A registry only the credential's login (and the pusher) can read.
    record_secret("fleet-node-password");
    record_secret("fleet-node-push-password");
    let tokens = TokenService::start(Arc::new(|u: &str, p: &str| {
        (u == "fleet-node" && p == "fleet-node-password") || (u == "pusher" && p == "fleet-node-push-password")
    }))
    .unwrap_or_else(|e| panic!("{e:#}"));
    let registry = start_token_registry(spoke.process_group(), &tokens, "pusher", "fleet-node-push-password")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let host = "registry.fleet.regcred.test";
    node.add_registry(host, &Endpoint::Http(registry.host.clone())).unwrap();

    create_namespace(&client, "fleet-app", &[]).await;
    create_namespace(&client, "fleet-other", &[]).await;
    let kubeconfig = fleet::hub_identity(&spoke).await.unwrap();
    fleet::install_injection(&spoke).await.unwrap_or_else(|e| panic!("{e:#}"));
    // A Deployment that starts before the credential: stuck on a 401.
    let image = format!("{host}/{TEST_IMAGE}");
    apply_deployment(&client, "fleet-app", "early", &image, "Always", 1).await.unwrap();
    let why = wait_pull_refused(&client, "fleet-app", "early", START).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(refused_for_credentials(&why), "{why}");
    fleet::apply_secret(&hub, &fleet::capi_secret(CLUSTER_NS, "node-spoke", &kubeconfig, &json!({}))).await.unwrap();
    put_login(&hub, CLUSTER_NS, "fleet-node-login", "fleet-node", "fleet-node-password").await;
    let mut spec = basic_spec(host, "fleet-node-login", "fleet-node-pull");
    spec["namespaces"] = json!(["fleet-app"]);
    spec["clusters"] = json!({"local": false, "names": ["node-spoke"]});
    spec["recovery"] = json!({"enabled": true});
    spec["injection"] = json!({"enabled": true});
    apply_crcred(&hub, "fleet-node", spec).await;

    wait_for_login(&client, "fleet-app", "fleet-node-pull", host, "fleet-node", "fleet-node-password").await;
    wait_for_pull_secret(&client, "fleet-app", "default", "fleet-node-pull", true).await;
    assert!(get_secret(&hub, "fleet-app", "fleet-node-pull").await.is_none(), "local: false writes nothing here");

    // Recovery in the spoke: the stuck Pod is deleted and its Deployment's
    // new Pod pulls.
    wait_running(&client, "fleet-app", "early", 1, START).await.unwrap_or_else(|e| panic!("{e:#}"));
    let recovered = wait_for("a PodRecovered Event in the spoke", WAIT, || async {
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "fleet-app");
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("PodRecovered"))
    })
    .await;
    println!("{}", recovered.note.unwrap_or_default());
    assert!(
        events_for(&hub, "default", "fleet-node").await.iter().any(|(_, r, _)| r == "PodRecovered"),
        "the credential's Event is in the hub"
    );

    // Injection in the spoke: a Pod listing a pull Secret of its own (so
    // its ServiceAccount's are not added) gets the hub's Secret too.
    let own: Pod = serde_json::from_value(json!({
        "metadata": {"name": "own", "namespace": "fleet-app", "labels": {"app": "own"}},
        "spec": {"imagePullSecrets": [{"name": "own"}],
            "containers": [{"name": "c", "image": image, "imagePullPolicy": "Always"}]}
    }))
    .unwrap();
    let created =
        Api::<Pod>::namespaced(client.clone(), "fleet-app").create(&PostParams::default(), &own).await.unwrap();
    let listed: Vec<String> =
        created.spec.as_ref().unwrap().image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect();
    assert_eq!(listed, ["own", "fleet-node-pull"], "injected at admission in the spoke");
    wait_running(&client, "fleet-app", "own", 1, START).await.unwrap_or_else(|e| panic!("{e:#}"));

    apply_deployment(&client, "fleet-app", "app", &image, "Always", 1).await.unwrap();
    apply_deployment(&client, "fleet-other", "app", &image, "Always", 1).await.unwrap();
    let pods = wait_running(&client, "fleet-app", "app", 1, START).await.unwrap_or_else(|e| panic!("{e:#}"));
    let listed: Vec<String> =
        pods[0].spec.as_ref().unwrap().image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect();
    assert_eq!(listed, ["fleet-node-pull"], "the Pod got the hub's Secret through the patched ServiceAccount");
    let why = wait_pull_refused(&client, "fleet-other", "app", START).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(refused_for_credentials(&why), "fleet-other is not targeted: expected a refusal, got: {why}");
    drop(node);
}
