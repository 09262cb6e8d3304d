//! regcred as users run it: its own image (built with no container engine,
//! `testenv::images::write_regcred_image`, the code behind `make image`),
//! pushed to a private registry, installed with `helm install` onto the
//! real node, running as Pods under the restricted Pod Security profile.
//!
//! One scenario, in order: install; probes pass and the process runs as
//! uid 65532; a basic and a short-lived (ECR Public) credential fan out to
//! labelled namespaces whose Pods pull; metrics scraped from the Pod IP;
//! two replicas elect one leader, the leader Pod is deleted and the other
//! takes over within the Lease duration, and a credential applied after
//! that converges with each Secret written once; `helm upgrade` rolls the
//! Deployment with no credential going Ready=False and no pull failing;
//! the breadth scenario scaled to [`BREADTH`] namespaces and three
//! credentials is served within the chart's default memory limit (no
//! restart, peak RSS below the limit and printed);
//! `kubectl logs` carries no secret; `helm uninstall` leaves the CRDs and
//! the credentials.
//!
//! The API server listens on 127.0.0.1 and no kube-proxy runs here, so the
//! chart's `kubernetesApi` and `hostAliases` values point in-cluster
//! configuration at a relay on the node's bridge (docs/install.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use regcred::api::ClusterRegistryCredential;
use regcred_testenv::aws::EcrPublicStandIn;
use regcred_testenv::images::{NONROOT, RegcredImage, write_regcred_image};
use regcred_testenv::node::workload::{apply_deployment, scale, wait_running};
use regcred_testenv::node::{Endpoint, KubeletOptions, Node};
use regcred_testenv::operator::{http_get, log_dir, record_secret};
use regcred_testenv::registry::{Registry, TEST_IMAGE};
use regcred_testenv::tokenauth::{TokenService, start_token_registry};
use regcred_testenv::{ControlPlane, Options};
use serde_json::{Value, json};

const RELEASE: &str = "regcred";
const NS: &str = "regcred-system";
const PULLER: (&str, &str) = ("team", "chart-node-team-password");
const PUSHER: (&str, &str) = ("ci", "chart-node-ci-password");
/// Namespaces of the scaled breadth scenario (`make bench ARGS="--scenario
/// breadth"` runs 10,000 outside the node; docs/benchmarks.md).
const BREADTH: usize = 1000;

fn helm_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let kubeconfig = cp.kubeconfig_path().display().to_string();
    let args: Vec<&str> = args.iter().copied().chain(["--kubeconfig", kubeconfig.as_str()]).collect();
    regcred_testenv::chart::helm_ok(cp, &args)
}

async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operator's Pods, not being deleted.
async fn operator_pods(client: &Client) -> Vec<Pod> {
    let lp = ListParams::default().labels("app.kubernetes.io/name=regcred");
    Api::<Pod>::namespaced(client.clone(), NS)
        .list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `count` Ready operator Pods of one ReplicaSet: during a rollout (the
/// Pod template changes with `replicas`, which turns leader election on) a
/// Pod of the old ReplicaSet and one of the new can be Ready together.
async fn wait_ready_pods(client: &Client, count: usize) -> Vec<Pod> {
    poll(&format!("{count} Ready operator Pods"), Duration::from_secs(120), || async {
        let pods = operator_pods(client).await;
        let hash = |p: &Pod| p.labels().get("pod-template-hash").cloned();
        let one_template = pods.iter().all(|p| hash(p) == pods.first().and_then(hash));
        (pods.len() == count && one_template && pods.iter().all(ready)).then_some(pods)
    })
    .await
}

fn ready_reason(c: &ClusterRegistryCredential) -> Option<String> {
    let status = c.status.as_ref()?;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some(format!("{}/{}", ready.status, ready.reason))
}

async fn wait_synced(client: &Client, name: &str) {
    let api: Api<ClusterRegistryCredential> = Api::all(client.clone());
    poll(&format!("{name} Synced"), Duration::from_secs(90), || async {
        let c = api.get_opt(name).await.unwrap()?;
        (ready_reason(&c).as_deref() == Some("True/Synced")
            && c.status.as_ref()?.observed_generation == c.metadata.generation)
            .then_some(())
    })
    .await
}

/// The memory limit of the chart's default `resources`, in bytes.
fn chart_memory_limit() -> u64 {
    let values = std::fs::read_to_string(regcred_testenv::repo_root().join("charts/regcred/values.yaml")).unwrap();
    let values: serde_yaml::Value = serde_yaml::from_str(&values).unwrap();
    let limit = values["resources"]["limits"]["memory"].as_str().expect("resources.limits.memory in values.yaml");
    let mib: u64 = limit.strip_suffix("Mi").and_then(|n| n.parse().ok()).expect("a limit in Mi");
    mib * 1048576
}

/// The highest peak RSS (`VmHWM`, KiB) of the regcred processes the chart
/// runs on this host.
fn operator_peak_rss_kib() -> u64 {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let cmdline = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?).replace('\0', " ");
            if !(cmdline.starts_with("/usr/local/bin/regcred run") && cmdline.contains("--metrics-addr=0.0.0.0:8080")) {
                return None;
            }
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
        })
        .max()
        .expect("no regcred process on the host")
}

/// A stripped copy of this build's regcred (the image recipe is the same
/// as `make image`'s; the release build is what `make image` puts in).
fn stripped_binary(dir: &Path) -> PathBuf {
    let out = dir.join("regcred");
    let status = Command::new("strip").arg("-o").arg(&out).arg(env!("CARGO_BIN_EXE_regcred")).status();
    if !status.is_ok_and(|s| s.success()) {
        std::fs::copy(env!("CARGO_BIN_EXE_regcred"), &out).unwrap();
    }
    out
}

fn apply_yaml(cp: &ControlPlane, yaml: &str) {
    let path = cp.dir().join(format!("apply-{}.yaml", rand_suffix()));
    std::fs::write(&path, yaml).unwrap();
    let out = cp.kubectl().args(["apply", "-f"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn credential(name: &str, provider: Value, secret: &str) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "regcred.dev/v1beta1", "kind": "ClusterRegistryCredential",
        "metadata": {"name": name},
        "spec": {"provider": provider, "secret": {"name": secret},
                 "namespaceSelector": {"matchLabels": {"regcred.dev/chart-node": "yes"}}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_runs_regcred_pods_from_its_own_image_on_the_real_node() {
    let cp = ControlPlane::start(Options { crd_dir: None, ..Options::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    let node = Node::start(&cp, KubeletOptions::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let client = cp.client().await.unwrap();
    let work = cp.dir().join("chart-node");
    std::fs::create_dir_all(&work).unwrap();

    // The image, into a private registry that also serves the workloads'
    // test image.
    let registry = Registry::start_htpasswd(cp.process_group(), &[PUSHER, PULLER]).unwrap();
    node.add_registry(&registry.host, &Endpoint::Http(registry.host.clone())).unwrap();
    let started = Instant::now();
    let summary = write_regcred_image(
        &work.join("image"),
        &RegcredImage {
            binary: &stripped_binary(&work),
            tag: "test",
            version: "0.1.0-test",
            source: "regcred",
            revision: None,
        },
    )
    .unwrap();
    let image = format!("{}/regcred/regcred:test", registry.host);
    let push = Command::new("skopeo")
        .args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
        .arg(format!("--dest-creds={}:{}", PUSHER.0, PUSHER.1))
        .arg(format!("oci:{}:test", work.join("image").display()))
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", String::from_utf8_lossy(&push.stderr));
    eprintln!(
        "image built and pushed in {:?}: {:.1} MiB compressed, paths {:?}",
        started.elapsed(),
        summary.compressed_bytes as f64 / 1048576.0,
        summary.paths
    );
    for p in &summary.paths {
        assert!(
            p.starts_with("etc/")
                || p.starts_with("lib")
                || p.starts_with("usr/")
                || p.starts_with("home/")
                || p == "tmp/",
            "unexpected path in the image: {p}"
        );
    }

    // The operator's namespace enforces the restricted profile; the image
    // pull Secret and the API location are the only non-default values.
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS,
        "labels": {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}}))
    .unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    record_secret(PULLER.1);
    record_secret(PUSHER.1);
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{}:{}", PUSHER.0, PUSHER.1));
    let pull: Secret = serde_json::from_value(json!({"metadata": {"name": "regcred-image", "namespace": NS},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": json!({"auths": {registry.host.clone(): {"auth": auth}}}).to_string()}}))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), NS).create(&PostParams::default(), &pull).await.unwrap();
    let api_port = cp.server.rsplit(':').next().unwrap().to_string();
    let api_relay = node.relay(&format!("127.0.0.1:{api_port}")).unwrap();
    let values = work.join("values.yaml");
    std::fs::write(
        &values,
        serde_yaml::to_string(&json!({
            "image": {"repository": format!("{}/regcred/regcred", registry.host), "tag": "test"},
            "imagePullSecrets": [{"name": "regcred-image"}],
            "kubernetesApi": {"host": "kubernetes.default.svc", "port": api_relay.port().to_string()},
            "hostAliases": [{"ip": node.gateway(), "hostnames": ["kubernetes.default.svc"]}],
        }))
        .unwrap(),
    )
    .unwrap();
    let chart = regcred_testenv::repo_root().join("charts/regcred").display().to_string();
    let values_arg = values.display().to_string();
    let installed = Instant::now();
    helm_ok(&cp, &["install", RELEASE, &chart, "--namespace", NS, "--values", &values_arg]);
    let pods = wait_ready_pods(&client, 1).await;
    eprintln!("helm install: operator Pod Ready {:?} after install", installed.elapsed());
    let pod = &pods[0];
    let status = pod.status.as_ref().unwrap();
    assert_eq!(status.container_statuses.as_ref().unwrap()[0].restart_count, 0, "probes passed without restarts");
    // The process on the host runs as the image's non-root user.
    let uid_of_operator = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.starts_with("/usr/local/bin/regcred run") && cmdline.contains("--metrics-addr=0.0.0.0:8080"))
                .then(|| std::fs::read_to_string(e.path().join("status")).ok())?
        })
        .filter_map(|s| s.lines().find(|l| l.starts_with("Uid:")).map(String::from))
        .collect::<Vec<_>>();
    assert!(!uid_of_operator.is_empty(), "no regcred process on the host");
    for line in &uid_of_operator {
        assert!(line.split_whitespace().skip(1).all(|u| u == NONROOT.to_string()), "{line}");
    }

    // Workloads: a basic credential and a short-lived ECR Public one (the
    // operator Pod reaches the stand-in through a relay on the bridge).
    let ecr = EcrPublicStandIn::start(Duration::from_secs(45)).unwrap();
    let ecr_relay = node.relay(&format!("127.0.0.1:{}", ecr.port)).unwrap();
    let tokens = TokenService::start({
        let valid = ecr.validator();
        Arc::new(move |u: &str, p: &str| (u == PUSHER.0 && p == PUSHER.1) || valid(u, p))
    })
    .unwrap();
    let ecr_registry = start_token_registry(cp.process_group(), &tokens, PUSHER.0, PUSHER.1).unwrap();
    node.add_registry("public.ecr.aws", &Endpoint::Http(ecr_registry.host.clone())).unwrap();
    apply_yaml(
        &cp,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: team-login, namespace: {NS}}}\nstringData: {{username: {}, password: {}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: aws-keys, namespace: {NS}}}\nstringData: {{access-key-id: AKIACHARTNODE0000001, secret-access-key: chart-node-aws-secret}}\n---\n{}\n---\n{}\n",
            PULLER.0,
            PULLER.1,
            credential(
                "basic",
                json!({"basic": {"registry": registry.host, "secretRef": {"name": "team-login"}}}),
                "team-pull"
            ),
            credential(
                "short-lived",
                json!({"ecrPublic": {"endpoint": format!("http://{}", ecr_relay.addr), "auth": {"secretRef": {"name": "aws-keys"}}}}),
                "ecr-pull"
            ),
        ),
    );
    record_secret("chart-node-aws-secret");
    for ns in ["app-a", "app-b"] {
        let n: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"regcred.dev/chart-node": "yes"}}}))
                .unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &n).await.unwrap();
    }
    wait_synced(&client, "basic").await;
    wait_synced(&client, "short-lived").await;
    for ns in ["app-a", "app-b"] {
        poll(&format!("default in {ns} to list both Secrets"), Duration::from_secs(30), || async {
            let sa = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
                .get_opt("default")
                .await
                .ok()??;
            let names: Vec<String> = sa.image_pull_secrets.unwrap_or_default().into_iter().map(|r| r.name).collect();
            (names.contains(&"team-pull".to_string()) && names.contains(&"ecr-pull".to_string())).then_some(())
        })
        .await;
        apply_deployment(&client, ns, "basic-app", &registry.test_image(), "Always", 1).await.unwrap();
        apply_deployment(&client, ns, "ecr-app", &format!("public.ecr.aws/{TEST_IMAGE}"), "Always", 1).await.unwrap();
    }
    for ns in ["app-a", "app-b"] {
        for app in ["basic-app", "ecr-app"] {
            wait_running(&client, ns, app, 1, Duration::from_secs(90)).await.unwrap_or_else(|e| panic!("{e:#}"));
        }
    }

    // Metrics, from the Pod IP (no Service proxy runs here).
    let pod_ip = pods[0].status.as_ref().unwrap().pod_ip.clone().unwrap();
    let (code, metrics) =
        tokio::task::spawn_blocking(move || http_get(&format!("http://{pod_ip}:8080/metrics")).unwrap()).await.unwrap();
    assert_eq!(code, 200);
    for family in ["regcred_kube_requests_total", "regcred_credential_expiry_timestamp_seconds"] {
        assert!(metrics.contains(family), "{family} missing from /metrics:\n{}", &metrics[..metrics.len().min(2000)]);
    }

    // Two replicas: exactly one leader; delete it, the other takes over.
    helm_ok(&cp, &["upgrade", RELEASE, &chart, "--namespace", NS, "--values", &values_arg, "--set", "replicas=2"]);
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let pods = wait_ready_pods(&client, 2).await;
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    let leader = poll("a leader among the two Pods", Duration::from_secs(60), || async {
        let holder = leases.get_opt(RELEASE).await.ok()??.spec?.holder_identity?;
        names.contains(&holder).then_some(holder)
    })
    .await;
    let lease_seconds = leases.get(RELEASE).await.unwrap().spec.unwrap().lease_duration_seconds.unwrap_or(15);
    // Exactly one Pod says it leads (regcred_leader 1), the other stands by.
    let mut leading = Vec::new();
    for p in &pods {
        let ip = p.status.as_ref().unwrap().pod_ip.clone().unwrap();
        let (_, text) =
            tokio::task::spawn_blocking(move || http_get(&format!("http://{ip}:8080/metrics")).unwrap()).await.unwrap();
        let value = text.lines().find(|l| l.starts_with("regcred_leader ")).and_then(|l| l.split_whitespace().nth(1));
        if value == Some("1") {
            leading.push(p.name_any());
        }
    }
    assert_eq!(leading, std::slice::from_ref(&leader), "exactly the Lease holder reports regcred_leader 1");
    let before: BTreeMap<String, String> = managed_versions(&client, "team-pull").await;
    assert_eq!(before.len(), 2);
    // Watch regcred's Secrets from now on, to count writes per Secret.
    let events: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let watch = tokio::spawn(record_secret_events(client.clone(), events.clone()));
    let killed = Instant::now();
    Api::<Pod>::namespaced(client.clone(), NS).delete(&leader, &DeleteParams::default().grace_period(0)).await.unwrap();
    // The standby, or the Pod the Deployment starts in the leader's place.
    let new_leader = poll("another Pod to take the Lease", Duration::from_secs(60), || async {
        let holder = leases.get_opt(RELEASE).await.ok()??.spec?.holder_identity?;
        (holder != leader && !holder.is_empty()).then_some(holder)
    })
    .await;
    let takeover = killed.elapsed();
    let standby = if names.contains(&new_leader) { "the standby" } else { "the replacement Pod" };
    eprintln!(
        "leader {leader} deleted; {new_leader} ({standby}) took the Lease after {takeover:?} (Lease {lease_seconds}s)"
    );
    assert!(takeover <= Duration::from_secs(lease_seconds as u64 + 5), "takeover took {takeover:?}");
    apply_yaml(
        &cp,
        &credential(
            "after-failover",
            json!({"basic": {"registry": registry.host, "secretRef": {"name": "team-login"}}}),
            "late-pull",
        ),
    );
    wait_synced(&client, "after-failover").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch.abort();
    let seen = events.lock().unwrap().clone();
    for ns in ["app-a", "app-b"] {
        let writes: Vec<&(String, String)> = seen.iter().filter(|(n, _)| n == &format!("{ns}/late-pull")).collect();
        assert_eq!(writes.len(), 1, "{ns}/late-pull written once after the failover: {writes:?}");
    }
    assert_eq!(managed_versions(&client, "team-pull").await, before, "the takeover rewrote no existing Secret");

    // helm upgrade that changes a value rolls the Deployment; meanwhile no
    // credential goes Ready=False and a scale-up still pulls.
    let old_pods: Vec<String> = operator_pods(&client).await.iter().map(|p| p.name_any()).collect();
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let not_ready: Arc<Mutex<Vec<String>>> = Arc::default();
    let checker = {
        let (client, watching, not_ready) = (client.clone(), watching.clone(), not_ready.clone());
        tokio::spawn(async move {
            let api: Api<ClusterRegistryCredential> = Api::all(client);
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                for c in api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
                    if let Some(r) = ready_reason(&c).filter(|r| !r.starts_with("True")) {
                        not_ready.lock().unwrap().push(format!("{}: {r}", c.name_any()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    helm_ok(
        &cp,
        &[
            "upgrade",
            RELEASE,
            &chart,
            "--namespace",
            NS,
            "--values",
            &values_arg,
            "--set",
            "replicas=2",
            "--set",
            "logLevel=debug",
        ],
    );
    scale(&client, "app-a", "ecr-app", 3).await.unwrap();
    scale(&client, "app-b", "basic-app", 3).await.unwrap();
    let rolled = poll("the Deployment to roll", Duration::from_secs(120), || async {
        let pods = operator_pods(&client).await;
        (pods.len() == 2 && pods.iter().all(|p| ready(p) && !old_pods.contains(&p.name_any()))).then_some(pods)
    })
    .await;
    wait_running(&client, "app-a", "ecr-app", 3, Duration::from_secs(90)).await.unwrap_or_else(|e| panic!("{e:#}"));
    wait_running(&client, "app-b", "basic-app", 3, Duration::from_secs(90)).await.unwrap_or_else(|e| panic!("{e:#}"));
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    checker.await.unwrap();
    assert!(
        not_ready.lock().unwrap().is_empty(),
        "credentials not Ready during the upgrade: {:?}",
        not_ready.lock().unwrap()
    );
    let args = rolled[0].spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    assert!(args.iter().any(|a| a == "--log-level=debug"), "{args:?}");

    // Breadth, scaled: BREADTH more labelled namespaces and a third
    // credential, with the chart's default resources.
    let limit = chart_memory_limit();
    let started = Instant::now();
    apply_yaml(
        &cp,
        &credential(
            "breadth",
            json!({"basic": {"registry": registry.host, "secretRef": {"name": "team-login"}}}),
            "breadth-pull",
        ),
    );
    futures::stream::iter(0..BREADTH)
        .for_each_concurrent(16, |i| {
            let client = client.clone();
            async move {
                let n: Namespace = serde_json::from_value(
                    json!({"metadata": {"name": format!("wide-{i}"), "labels": {"regcred.dev/chart-node": "yes"}}}),
                )
                .unwrap();
                Api::<Namespace>::all(client).create(&PostParams::default(), &n).await.unwrap();
            }
        })
        .await;
    let want = BREADTH + 2;
    for name in ["basic", "short-lived", "breadth"] {
        let api: Api<ClusterRegistryCredential> = Api::all(client.clone());
        poll(&format!("{name}: {want} namespaces synced"), Duration::from_secs(240), || async {
            let c = api.get_opt(name).await.unwrap()?;
            let targets = c.status.as_ref()?.targets.clone()?;
            (ready_reason(&c).as_deref() == Some("True/Synced") && targets.synced == want as i32).then_some(())
        })
        .await;
    }
    for pod in operator_pods(&client).await {
        let container = &pod.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0];
        assert_eq!(container.restart_count, 0, "the operator restarted serving {want} namespaces: {container:?}");
    }
    let peak = operator_peak_rss_kib();
    eprintln!(
        "breadth on the node: {want} namespaces x 3 credentials converged in {:?}; peak RSS {:.1} MiB of the chart's {:.0} MiB limit",
        started.elapsed(),
        peak as f64 / 1024.0,
        limit as f64 / 1048576.0
    );
    assert!(peak * 1024 < limit, "peak RSS {peak} KiB is not below the memory limit {limit} bytes");
    // The third credential goes again, taking its Secrets with it
    // (deletionPolicy Delete) before the finalizer lets it go.
    let credentials: Api<ClusterRegistryCredential> = Api::all(client.clone());
    credentials.delete("breadth", &DeleteParams::default()).await.unwrap();
    poll("the breadth credential's cleanup", Duration::from_secs(240), || async {
        credentials.get_opt("breadth").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(managed_versions(&client, "breadth-pull").await.is_empty(), "its Secrets went with it");

    // Pod logs carry no secret (and join the suite's leak check).
    let mut secrets = vec![PULLER.1.to_string(), PUSHER.1.to_string(), "chart-node-aws-secret".into()];
    for ns in ["app-a", "app-b"] {
        if let Some(s) = Api::<Secret>::namespaced(client.clone(), ns).get_opt("ecr-pull").await.unwrap() {
            let config: Value = serde_json::from_slice(&s.data.unwrap()[".dockerconfigjson"].0).unwrap();
            for (_, e) in config["auths"].as_object().unwrap() {
                secrets.push(e["password"].as_str().unwrap().to_string());
            }
        }
    }
    for p in operator_pods(&client).await {
        let out = cp.kubectl().args(["logs", "-n", NS, &p.name_any()]).output().unwrap();
        assert!(out.status.success(), "kubectl logs: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("\"level\""), "JSON logs expected from {}", p.name_any());
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "a secret in {}'s log", p.name_any());
        }
        if let Some(dir) = log_dir() {
            std::fs::write(
                dir.join(format!("regcred-pod-{}-{}.log", std::process::id(), p.name_any())),
                text.as_bytes(),
            )
            .unwrap();
        }
    }
    for s in &secrets {
        record_secret(s);
    }

    // Uninstall leaves the CRDs and the credentials.
    helm_ok(&cp, &["uninstall", RELEASE, "--namespace", NS]);
    poll("the operator Pods to go", Duration::from_secs(60), || async {
        operator_pods(&client).await.is_empty().then_some(())
    })
    .await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(crds.get_opt("clusterregistrycredentials.regcred.dev").await.unwrap().is_some());
    let left: Vec<String> = Api::<ClusterRegistryCredential>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    drop(ecr_relay);
    drop(api_relay);
    drop(node);
}

/// `namespace -> resourceVersion` of the regcred Secrets named `name`.
async fn managed_versions(client: &Client, name: &str) -> BTreeMap<String, String> {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=regcred");
    Api::<Secret>::all(client.clone())
        .list(&lp)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.name_any() == name)
        .map(|s| (s.namespace().unwrap_or_default(), s.resource_version().unwrap_or_default()))
        .collect()
}

/// Records `(namespace/name, event type)` of every change to a regcred
/// Secret from now on.
async fn record_secret_events(client: Client, out: Arc<Mutex<Vec<(String, String)>>>) {
    let api: Api<Secret> = Api::all(client);
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=regcred");
    let rv = api.list_metadata(&lp).await.unwrap().metadata.resource_version.unwrap_or_default();
    let wp = WatchParams::default().labels("app.kubernetes.io/managed-by=regcred");
    let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
    while let Some(Ok(event)) = stream.next().await {
        let (kind, s) = match event {
            WatchEvent::Added(s) => ("ADDED", s),
            WatchEvent::Modified(s) => ("MODIFIED", s),
            WatchEvent::Deleted(s) => ("DELETED", s),
            _ => continue,
        };
        out.lock().unwrap().push((format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()), kind.into()));
    }
}
