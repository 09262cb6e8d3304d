//! A Pod on a real node (kubelet + containerd) in a spoke pulls a private
//! image through the Secret the hub wrote there: the hub (the shared
//! control plane and its operator) mints, the spoke (its own control plane,
//! with the node) only receives the Secret and the ServiceAccount entry.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
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
    fleet::apply_secret(&hub, &fleet::capi_secret(CLUSTER_NS, "node-spoke", &kubeconfig, &json!({}))).await.unwrap();
    put_login(&hub, CLUSTER_NS, "fleet-node-login", "fleet-node", "fleet-node-password").await;
    let mut spec = basic_spec(host, "fleet-node-login", "fleet-node-pull");
    spec["namespaces"] = json!(["fleet-app"]);
    spec["clusters"] = json!({"local": false, "names": ["node-spoke"]});
    apply_crcred(&hub, "fleet-node", spec).await;

    wait_for_login(&client, "fleet-app", "fleet-node-pull", host, "fleet-node", "fleet-node-password").await;
    wait_for_pull_secret(&client, "fleet-app", "default", "fleet-node-pull", true).await;
    assert!(get_secret(&hub, "fleet-app", "fleet-node-pull").await.is_none(), "local: false writes nothing here");

    let image = format!("{host}/{TEST_IMAGE}");
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
