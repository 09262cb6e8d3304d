//! The node itself: a Pod pulls a private image with an imagePullSecret, a
//! Pod without one is refused with a 401, and teardown leaves nothing
//! behind.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use regcred_testenv::node::workload::{apply_deployment, wait_pull_refused, wait_running};
use regcred_testenv::node::{Endpoint, KubeletOptions, Node};
use regcred_testenv::registry::Registry;
use regcred_testenv::{ControlPlane, Options};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn pods_pull_with_a_pull_secret_and_teardown_leaves_nothing() {
    let cp = ControlPlane::start(Options { crd_dir: None, ..Options::default() }).unwrap();
    let node = Node::start(&cp, KubeletOptions::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let registry = Registry::start_htpasswd(cp.process_group(), &[("puller", "node-test-password")]).unwrap();
    node.add_registry(&registry.host, &Endpoint::Http(registry.host.clone())).unwrap();
    let client = cp.client().await.unwrap();

    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "puller:node-test-password");
    let config = json!({"auths": {registry.host.clone(): {"auth": auth}}}).to_string();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "pull"}, "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "default").create(&PostParams::default(), &secret).await.unwrap();
    let image = registry.test_image();

    // Without the Secret: refused by the registry.
    apply_deployment(&client, "default", "refused", &image, "Always", 1).await.unwrap();
    let why = wait_pull_refused(&client, "default", "refused", Duration::from_secs(60)).await.unwrap();
    assert!(regcred_testenv::node::workload::refused_for_credentials(&why), "{why}");

    // With it: runs.
    let d = json!({"spec": {"template": {"spec": {"imagePullSecrets": [{"name": "pull"}]}}}});
    apply_deployment(&client, "default", "pulls", &image, "Always", 1).await.unwrap();
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), "default")
        .patch("pulls", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(d))
        .await
        .unwrap();
    let pods =
        wait_running(&client, "default", "pulls", 1, Duration::from_secs(90)).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!pods.is_empty());

    let dir = node.dir().to_path_buf();
    let (bridge, cgroup) = (node.bridge.clone(), node.cgroup_root.clone());
    drop(node);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.to_str().unwrap()), "mounts left under {}", dir.display());
    assert!(!dir.exists(), "{} left behind", dir.display());
    let links = Command::new("ip").args(["link", "show", &bridge]).output().unwrap();
    assert!(!links.status.success(), "bridge {bridge} left behind");
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap() {
        assert!(!h.unwrap().path().join(&cgroup).exists(), "cgroup {cgroup} left behind");
    }
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(!ps.lines().any(|l| l.contains(dir.to_str().unwrap())), "processes left behind:\n{ps}");
}
