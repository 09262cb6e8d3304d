//! Helpers shared by the integration tests: one control plane and one
//! `regcred run` process per test binary, and small Kubernetes helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use regcred_testenv::ControlPlane;
use regcred_testenv::operator::Operator;
use serde_json::{Value, json};

/// Namespace where ClusterRegistryCredentials read their source Secrets.
pub const CLUSTER_NS: &str = "regcred-system";

pub fn control_plane() -> &'static ControlPlane {
    regcred_testenv::shared()
}

static OPERATOR_ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();

/// Environment for this test binary's operator (for example the AWS SDK's
/// endpoint overrides). Call before anything starts the operator.
pub fn set_operator_env(env: Vec<(String, String)>) {
    let _ = OPERATOR_ENV.set(env);
}

/// The shared operator, started once the cluster resource namespace exists.
pub fn operator() -> &'static Operator {
    static OPERATOR: OnceLock<Operator> = OnceLock::new();
    OPERATOR.get_or_init(|| {
        let cp = control_plane();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
                let client = cp.client().await.unwrap();
                let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": CLUSTER_NS}})).unwrap();
                match Api::<Namespace>::all(client).create(&PostParams::default(), &ns).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => panic!("creating {CLUSTER_NS}: {e}"),
                }
            })
        })
        .join()
        .unwrap();
        let env = OPERATOR_ENV.get_or_init(Vec::new);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Operator::start_with_env(cp, Path::new(env!("CARGO_BIN_EXE_regcred")), CLUSTER_NS, &[], &env)
            .unwrap_or_else(|e| panic!("{e:#}"))
    })
}

/// An admin client, with the operator running.
pub async fn setup() -> Client {
    operator();
    control_plane().client().await.expect("admin client")
}

/// Polls `f` every 100ms until it returns `Some`, or panics after `timeout`
/// with the operator's log tail.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_logged(what, timeout, Duration::from_millis(100), Some(operator()), f).await
}

/// Polls `f` every `every` until it returns `Some`, or panics after
/// `timeout` with the tail of `op`'s log, if any.
pub async fn poll_logged<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    op: Option<&Operator>,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            let log = op.map(Operator::log_text).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}\noperator log (last lines):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(every).await;
    }
}

pub const WAIT: Duration = Duration::from_secs(30);

pub async fn create_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
}

pub async fn label_namespace(client: &Client, name: &str, labels: Value) {
    Api::<Namespace>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": labels}})))
        .await
        .expect("label namespace");
}

/// A source Secret with `username` and `password`.
pub async fn put_login(client: &Client, ns: &str, name: &str, username: &str, password: &str) {
    regcred_testenv::operator::record_secret(password);
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"username": username, "password": password}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("regcred-test").force(), &Patch::Apply(&s))
        .await
        .expect("write source secret");
}

pub async fn apply_rcred(client: &Client, ns: &str, name: &str, spec: Value) -> RegistryCredential {
    let obj = json!({"apiVersion": "regcred.dev/v1beta1", "kind": "RegistryCredential",
        "metadata": {"name": name, "namespace": ns}, "spec": spec});
    Api::<RegistryCredential>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("regcred-test").force(), &Patch::Apply(&obj))
        .await
        .expect("apply RegistryCredential")
}

pub async fn apply_crcred(client: &Client, name: &str, spec: Value) -> ClusterRegistryCredential {
    let obj = json!({"apiVersion": "regcred.dev/v1beta1", "kind": "ClusterRegistryCredential",
        "metadata": {"name": name}, "spec": spec});
    Api::<ClusterRegistryCredential>::all(client.clone())
        .patch(name, &PatchParams::apply("regcred-test").force(), &Patch::Apply(&obj))
        .await
        .expect("apply ClusterRegistryCredential")
}

pub fn basic_spec(registry: &str, secret_ref: &str, pull_secret: &str) -> Value {
    json!({
        "provider": {"basic": {"registry": registry, "secretRef": {"name": secret_ref}}},
        "secret": {"name": pull_secret}
    })
}

pub async fn get_secret(client: &Client, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await.unwrap()
}

/// The username and password in a pull Secret for `registry`.
pub fn login_in(secret: &Secret, registry: &str) -> Option<(String, String)> {
    let data = secret.data.as_ref()?.get(".dockerconfigjson")?;
    let v: Value = serde_json::from_slice(&data.0).ok()?;
    let e = &v["auths"][registry];
    Some((e["username"].as_str()?.to_string(), e["password"].as_str()?.to_string()))
}

/// Waits until `ns/name` holds `username`/`password` for `registry`.
pub async fn wait_for_login(
    client: &Client,
    ns: &str,
    name: &str,
    registry: &str,
    username: &str,
    password: &str,
) -> Secret {
    wait_for(&format!("Secret {ns}/{name} with {username}'s login"), WAIT, || async {
        let s = get_secret(client, ns, name).await?;
        (login_in(&s, registry) == Some((username.into(), password.into()))).then_some(s)
    })
    .await
}

pub async fn wait_for_no_secret(client: &Client, ns: &str, name: &str) {
    wait_for(&format!("Secret {ns}/{name} to be gone"), WAIT, || async {
        get_secret(client, ns, name).await.is_none().then_some(())
    })
    .await
}

pub async fn pull_secret_names(client: &Client, ns: &str, sa: &str) -> Vec<String> {
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get_opt(sa)
        .await
        .unwrap()
        .and_then(|sa| sa.image_pull_secrets)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

pub async fn wait_for_pull_secret(client: &Client, ns: &str, sa: &str, secret: &str, present: bool) {
    wait_for(
        &format!("ServiceAccount {ns}/{sa} {} {secret}", if present { "to list" } else { "not to list" }),
        WAIT,
        || async { (pull_secret_names(client, ns, sa).await.iter().any(|n| n == secret) == present).then_some(()) },
    )
    .await
}

/// Waits for the credential's Ready condition to have `reason`, and returns
/// its status.
pub async fn wait_for_reason<K>(api: &Api<K>, name: &str, reason: &str) -> regcred::api::CredentialStatus
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + StatusOf,
{
    let last_seen = std::sync::Mutex::new(String::new());
    let what = format!("{name} to be Ready with reason {reason}");
    let result = tokio::time::timeout(
        WAIT,
        wait_for(&what, WAIT + Duration::from_secs(5), || async {
            let obj = api.get_opt(name).await.unwrap()?;
            if let Some(c) = obj.status_of().and_then(|s| s.conditions.first()) {
                *last_seen.lock().unwrap() = format!("{}: {}", c.reason, c.message);
            }
            let status = obj.status_of()?.clone();
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.reason == reason && status.observed_generation == obj.meta().generation).then_some(status)
        }),
    )
    .await;
    match result {
        Ok(status) => status,
        Err(_) => panic!("timed out waiting for {what}; last Ready condition: {}", last_seen.lock().unwrap()),
    }
}

pub trait StatusOf {
    fn status_of(&self) -> Option<&regcred::api::CredentialStatus>;
}

impl StatusOf for RegistryCredential {
    fn status_of(&self) -> Option<&regcred::api::CredentialStatus> {
        self.status.as_ref()
    }
}

impl StatusOf for ClusterRegistryCredential {
    fn status_of(&self) -> Option<&regcred::api::CredentialStatus> {
        self.status.as_ref()
    }
}

pub async fn delete_namespace(client: &Client, name: &str) {
    Api::<Namespace>::all(client.clone()).delete(name, &DeleteParams::default()).await.expect("delete namespace");
}

/// Events about an object, as `(type, reason, note)`.
pub async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    use k8s_openapi::api::events::v1::Event;
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// The MutatingAdmissionPolicy API version of the release under test
/// (`v1`, or `v1beta1` on 1.34–1.35, where the control plane turns it on).
pub fn admission_api() -> &'static str {
    let v = regcred_testenv::version::k8s();
    v.admission_api().unwrap_or_else(|| {
        panic!(
            "Kubernetes {v} serves no MutatingAdmissionPolicy API regcred uses (v1 from 1.36, v1beta1 on 1.34-1.35): \
             on this release only the AdmissionPolicyUnsupported path can be tested (make test-matrix runs that)"
        )
    })
}

/// Installs the chart's MutatingAdmissionPolicies and their bindings
/// (`charts/regcred/files/admission/*.yaml`, as the chart ships them), by
/// server-side apply.
pub async fn install_admission_policies(client: &Client) {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    use serde::Deserialize as _;
    let dir = regcred_testenv::repo_root().join("charts/regcred/files/admission");
    let version = admission_api();
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    // Policies before their bindings.
    files.sort_by_key(|p| (p.to_string_lossy().ends_with(".binding.yaml"), p.clone()));
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let value = serde_yaml::Value::deserialize(serde_yaml::Deserializer::from_str(&text)).unwrap();
        let mut obj: DynamicObject = serde_yaml::from_value(value).unwrap();
        // The chart renders the files with the version the cluster serves.
        let types = obj.types.as_mut().unwrap();
        types.api_version = format!("admissionregistration.k8s.io/{version}");
        let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", version, &types.kind);
        let plural = match types.kind.as_str() {
            "MutatingAdmissionPolicy" => "mutatingadmissionpolicies",
            "MutatingAdmissionPolicyBinding" => "mutatingadmissionpolicybindings",
            other => panic!("{}: unexpected kind {other}", path.display()),
        };
        let api = Api::<DynamicObject>::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, plural));
        let name = obj.metadata.name.clone().unwrap();
        api.patch(&name, &PatchParams::apply("regcred-test").force(), &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("applying {}: {e}", path.display()));
    }
}

/// Waits for the credential's condition `type_` to have `reason`, and
/// returns its status.
pub async fn wait_for_condition<K>(
    api: &Api<K>,
    name: &str,
    type_: &str,
    reason: &str,
) -> regcred::api::CredentialStatus
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + StatusOf,
{
    wait_for(&format!("{name} to have {type_} with reason {reason}"), WAIT, || async {
        let obj = api.get_opt(name).await.unwrap()?;
        let status = obj.status_of()?.clone();
        let c = status.conditions.iter().find(|c| c.type_ == type_)?;
        (c.reason == reason && status.observed_generation == obj.meta().generation).then_some(status)
    })
    .await
}

/// Runs `regcred explain ARGS` against the shared control plane, as a user
/// with a kubeconfig does.
pub fn regcred_explain(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_regcred"))
        .arg("explain")
        .args(args)
        .env("KUBECONFIG", control_plane().kubeconfig_path())
        .output()
        .unwrap()
}

/// `regcred explain pod NS/NAME -o json`: (exit code, report).
pub fn explain_pod_json(pod: &str) -> (i32, Value) {
    let out = regcred_explain(&["pod", pod, "-o", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("explain {pod}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), report)
}

/// A bare Pod's spec: one container of `image`, running as `sa` (the
/// namespace's `default` when `None`), listing `own` pull Secrets.
pub fn pod_spec(image: &str, sa: Option<&str>, own: &[&str]) -> Value {
    let mut spec = json!({"containers": [{"name": "app", "image": image}], "automountServiceAccountToken": false});
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    if !own.is_empty() {
        spec["imagePullSecrets"] = json!(own.iter().map(|n| json!({"name": n})).collect::<Vec<_>>());
    }
    spec
}

/// Creates Pod `ns/name` with `spec`, again while the namespace's
/// ServiceAccount does not exist yet (a new namespace's `default`).
pub async fn create_pod(client: &Client, ns: &str, name: &str, spec: Value) {
    let pod: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    let api = Api::namespaced(client.clone(), ns);
    wait_for(&format!("Pod {ns}/{name} admitted"), WAIT, || async {
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => Some(()),
            Err(kube::Error::Api(e)) if e.message.contains("serviceaccount") => None,
            Err(e) => panic!("creating Pod {ns}/{name}: {e}"),
        }
    })
    .await;
}
