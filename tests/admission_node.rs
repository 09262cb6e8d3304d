//! The two holes of the ServiceAccount route, on a real node (kubelet +
//! containerd, `regcred_testenv::node`), and how injection and recovery
//! close them.
//!
//! A private registry (a real `docker-registry` with htpasswd) serves the
//! test image as `registry.race.regcred.test`; only the credential's login
//! can read it.
//! - Injection on: a namespace and its Deployments applied in one
//!   `kubectl apply -f` (as GitOps tools do) all reach Running, including
//!   a Deployment whose Pods list a pull Secret of their own.
//! - Injection off: Pods created before regcred patched the ServiceAccount
//!   stay in ImagePullBackOff (the documented hole). To make "before"
//!   certain, the credential's login Secret appears only after the Pods
//!   failed their first pull.
//! - Recovery on, same start: those Pods are deleted and their
//!   replacements run.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::{Client, ResourceExt};
use regcred::api::ClusterRegistryCredential;
use regcred_testenv::node::workload::{
    container_state, pods_of, refused_for_credentials, wait_pull_refused, wait_running,
};
use regcred_testenv::node::{self, Endpoint};
use regcred_testenv::registry::{Registry, TEST_IMAGE};
use serde_json::{Value, json};

const HOST: &str = "registry.race.regcred.test";
const USER: &str = "race-user";
const PASSWORD: &str = "race-registry-password";
/// How long a Pod may take to start, pull included (2–4 s when idle; a
/// Pod that first failed waits out the kubelet's back-off).
const START: Duration = Duration::from_secs(120);

/// The node, the registry behind [`HOST`], the chart's policies and the
/// login in the cluster resource namespace's sibling namespace (absent:
/// each test puts it where its credential reads it).
async fn setup_node() -> Client {
    let client = setup().await;
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(|| {
        Registry::start_htpasswd(control_plane().process_group(), &[(USER, PASSWORD)])
            .unwrap_or_else(|e| panic!("{e:#}"))
    });
    node::shared().add_registry(HOST, &Endpoint::Http(registry.host.clone())).unwrap();
    // Before 1.34 there is no API to install them into: the tests without
    // injection run there as they are (make test-matrix).
    if regcred_testenv::version::k8s().admission_api().is_some() {
        static POLICIES: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        POLICIES.get_or_init(|| install_admission_policies(&client)).await;
    }
    client
}

fn image() -> String {
    format!("{HOST}/{TEST_IMAGE}")
}

/// A ClusterRegistryCredential for the registry, reading login `login`
/// and selecting namespaces labelled `race=<label>`.
async fn credential(client: &Client, name: &str, label: &str, extra: Value) {
    let mut spec = json!({
        "provider": {"basic": {"registry": HOST, "secretRef": {"name": format!("{name}-login")}}},
        "secret": {"name": format!("{name}-pull")},
        "namespaceSelector": {"matchLabels": {"race": label}},
    });
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    apply_crcred(client, name, spec).await;
}

/// `kubectl apply -f` of a namespace labelled `race=<label>` and two
/// Deployments: `app` (3 replicas) and `own` (1 replica, listing a pull
/// Secret of its own that does not exist), both as the `default`
/// ServiceAccount.
fn apply_namespace_and_deployments(ns: &str, label: &str) {
    let deployment = |name: &str, replicas: i32, own: bool| {
        let mut pod = json!({"terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": image(), "imagePullPolicy": "Always"}]});
        if own {
            pod["imagePullSecrets"] = json!([{"name": "their-own"}]);
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": pod}}})
    };
    let docs = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"race": label}}}),
        deployment("app", 3, false),
        deployment("own", 1, true),
    ];
    let manifest: String = docs.iter().map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap())).collect();
    let path = control_plane().dir().join(format!("{ns}.yaml"));
    std::fs::write(&path, manifest).unwrap();
    let out = control_plane().kubectl().args(["apply", "-f"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
}

fn pull_secrets_of(pod: &Pod) -> Vec<String> {
    pod.spec.as_ref().unwrap().image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect()
}

async fn live_pods(client: &Client, ns: &str, app: &str) -> Vec<Pod> {
    pods_of(client, ns, app).await.unwrap().into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_injection_a_namespace_and_its_deployments_applied_together_all_run() {
    admission_api();
    let client = setup_node().await;
    put_login(&client, CLUSTER_NS, "inject-login", USER, PASSWORD).await;
    credential(&client, "inject", "inject", json!({"injection": {"enabled": true}})).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    wait_for_condition(&crcreds, "inject", "Injection", "InjectionActive").await;
    // The apiserver's param informers see a new credential within about a
    // second; in real use the credential exists long before the namespace.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let started = Instant::now();
    apply_namespace_and_deployments("race-inject", "inject");
    let pods = wait_running(&client, "race-inject", "app", 3, START).await.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("race-inject: 3 Pods running {:?} after the one-shot apply", started.elapsed());
    for pod in &pods {
        assert!(
            pull_secrets_of(pod).contains(&"inject-pull".to_string()),
            "{}: {:?}",
            pod.name_any(),
            pull_secrets_of(pod)
        );
    }
    let own = wait_running(&client, "race-inject", "own", 1, START).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(pull_secrets_of(&own[0]), ["their-own", "inject-pull"], "its own entry kept, regcred's appended");
}

/// Applies the namespace and Deployments for `name`'s credential before
/// its login exists, waits until the Pods failed to pull (401), then
/// writes the login, so that regcred serves the namespace after the Pods
/// were created. Returns the Pods as they were.
async fn pods_created_before_the_secret(client: &Client, name: &str, ns: &str) -> Vec<Pod> {
    apply_namespace_and_deployments(ns, name);
    let why = wait_pull_refused(client, ns, "app", START).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(refused_for_credentials(&why), "{ns}: expected the registry's refusal, got: {why}");
    let before = wait_for(&format!("3 Pods of {ns}/app"), WAIT, || async {
        let pods = live_pods(client, ns, "app").await;
        (pods.len() == 3).then_some(pods)
    })
    .await;
    for pod in &before {
        assert!(pull_secrets_of(pod).is_empty(), "created before the Secret: {:?}", pull_secrets_of(pod));
    }
    put_login(client, CLUSTER_NS, &format!("{name}-login"), USER, PASSWORD).await;
    wait_for_login(client, ns, &format!("{name}-pull"), HOST, USER, PASSWORD).await;
    wait_for_pull_secret(client, ns, "default", &format!("{name}-pull"), true).await;
    before
}

#[tokio::test(flavor = "multi_thread")]
async fn without_injection_pods_created_before_the_service_account_patch_stay_stuck() {
    let client = setup_node().await;
    credential(&client, "stuck", "stuck", json!({})).await;
    let before = pods_created_before_the_secret(&client, "stuck", "race-stuck").await;

    // The documented hole: the ServiceAccount lists the Secret now, but
    // the Pods created before keep failing; nothing replaces them.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let now = live_pods(&client, "race-stuck", "app").await;
    let uids = |pods: &[Pod]| {
        let mut u: Vec<String> = pods.iter().map(|p| p.uid().unwrap()).collect();
        u.sort();
        u
    };
    assert_eq!(uids(&now), uids(&before), "the same Pods");
    for pod in &now {
        let state = container_state(pod);
        assert!(state == "ImagePullBackOff" || state == "ErrImagePull", "{}: {state}", pod.name_any());
        assert!(pull_secrets_of(pod).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_recovery_the_pods_that_missed_the_secret_are_replaced_and_run() {
    let client = setup_node().await;
    credential(&client, "recover", "recover", json!({"recovery": {"enabled": true}})).await;
    let before = pods_created_before_the_secret(&client, "recover", "race-recover").await;

    let started = Instant::now();
    let pods = wait_running(&client, "race-recover", "app", 3, START).await.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("race-recover: 3 Pods running {:?} after the login appeared", started.elapsed());
    for pod in &pods {
        assert!(before.iter().all(|b| b.uid() != pod.uid()), "{} is a replacement", pod.name_any());
        assert_eq!(pull_secrets_of(pod), ["recover-pull"]);
    }
    // The Pod that lists a pull Secret of its own is left alone: without
    // injection its replacement would not get regcred's Secret either.
    let own = live_pods(&client, "race-recover", "own").await;
    assert_eq!(pull_secrets_of(&own[0]), ["their-own"]);
    let recovered = operator()
        .metrics()
        .unwrap()
        .lines()
        .find(|l| l.starts_with("regcred_pods_recovered_total{") && l.contains("name=\"recover\""))
        .map(String::from);
    assert!(recovered.as_deref().is_some_and(|l| l.ends_with(" 3")), "{recovered:?}");
    for pod in &before {
        let events = events_for(&client, "race-recover", &pod.name_any()).await;
        assert!(
            events.iter().any(|(t, r, n)| t == "Normal" && r == "PodRecovered" && n.contains("recover-pull")),
            "{events:?}"
        );
    }
    // On the credential, repeated Events of one reason form one series.
    let events = events_for(&client, "default", "recover").await;
    assert!(events.iter().any(|(t, r, _)| t == "Normal" && r == "PodRecovered"), "{events:?}");
}
