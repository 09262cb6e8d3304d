//! Injection of the pull Secret at admission (`injection.enabled`) and
//! recovery of Pods that missed it (`recovery.enabled`), against the real
//! control plane: kube-apiserver with ServiceAccount admission and the
//! MutatingAdmissionPolicy API on (`v1`, or `v1beta1` behind its gate on 1.34
//! and 1.35: `regcred_testenv::version`), the chart's policies installed from
//! `charts/regcred/files/admission/` with their bindings (regcred writes
//! none).
//!
//! No node is needed to see injection: the Pod the apiserver returns from
//! a create is the Pod after admission. Recovery is shown on Pods whose
//! status is set as a kubelet would after a failed pull (the real node
//! version is in `tests/admission_node.rs`).

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use regcred_testenv::operator::Operator;
use regcred_testenv::{ControlPlane, Options};
use serde_json::{Value, json};

const REGISTRY: &str = "registry.admission.example";

async fn policies_installed() -> Client {
    let client = setup().await;
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED.get_or_init(|| install_admission_policies(&client)).await;
    client
}

fn bindings(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", admission_api(), "MutatingAdmissionPolicyBinding");
    Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, "mutatingadmissionpolicybindings"))
}

/// Creates a Pod running as `sa` (or the default) with `own` pull
/// Secrets, and returns it as admission left it. A new namespace's
/// `default` ServiceAccount may not exist yet: ServiceAccount admission
/// refuses the Pod until it does, so that is retried.
async fn create_pod(client: &Client, ns: &str, name: &str, sa: Option<&str>, own: &[&str]) -> Pod {
    let mut spec = json!({"containers": [{"name": "app", "image": format!("{REGISTRY}/app:1")}],
        "automountServiceAccountToken": false});
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    if !own.is_empty() {
        spec["imagePullSecrets"] = json!(own.iter().map(|n| json!({"name": n})).collect::<Vec<_>>());
    }
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("Pod {ns}/{name} to be admitted"), WAIT, || async {
        match api.create(&PostParams::default(), &pod).await {
            Ok(p) => Some(p),
            Err(kube::Error::Api(e)) if e.message.contains("serviceaccount") && e.message.contains("not found") => None,
            // A create sent again after a connection error.
            Err(kube::Error::Api(e)) if e.code == 409 => api.get_opt(name).await.ok().flatten(),
            Err(kube::Error::Api(e)) => panic!("creating Pod {ns}/{name}: {e}"),
            Err(e) => {
                eprintln!("creating Pod {ns}/{name}: {e}; trying again");
                None
            }
        }
    })
    .await
}

/// Waits until the apiserver injects `secret` into a Pod of `ns` (dry-run
/// creates: admission runs, nothing is stored). The apiserver's policy
/// informers see a new binding shortly after it is written.
async fn wait_until_injecting(client: &Client, ns: &str, secret: &str) {
    wait_injecting(client, ns, secret, true).await
}

async fn wait_until_not_injecting(client: &Client, ns: &str, secret: &str) {
    wait_injecting(client, ns, secret, false).await
}

async fn wait_injecting(client: &Client, ns: &str, secret: &str, present: bool) {
    let pod: Pod = serde_json::from_value(json!({"metadata": {"generateName": "probe-"},
        "spec": {"containers": [{"name": "app", "image": format!("{REGISTRY}/app:1")}],
            "imagePullSecrets": [{"name": "probe"}], "automountServiceAccountToken": false}}))
    .unwrap();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let params = PostParams { dry_run: true, ..Default::default() };
    let started = std::time::Instant::now();
    let what = if present { "to inject" } else { "to stop injecting" };
    wait_for(&format!("the apiserver {what} {secret} in {ns}"), WAIT, || async {
        let pod = api.create(&params, &pod).await.ok()?;
        (pull_secrets_of(&pod).iter().any(|s| s == secret) == present).then_some(())
    })
    .await;
    eprintln!("{ns}: the apiserver began {what} {secret} {:?} after the condition said so", started.elapsed());
}

fn pull_secrets_of(pod: &Pod) -> Vec<String> {
    pod.spec.as_ref().unwrap().image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect()
}

async fn create_sa(client: &Client, ns: &str, name: &str) {
    let sa = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
}

fn cluster_spec(login: &str, pull: &str, extra: Value) -> Value {
    let mut spec = basic_spec(REGISTRY, login, pull);
    spec["injection"] = json!({"enabled": true});
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    spec
}

#[tokio::test]
async fn pods_of_selected_service_accounts_get_the_secret_and_keep_their_own() {
    let client = policies_installed().await;
    put_login(&client, CLUSTER_NS, "inj-login", "inj-user", "inj-password").await;
    create_namespace(&client, "inj-a", &[("inj", "yes")]).await;
    create_sa(&client, "inj-a", "builder").await;
    create_sa(&client, "inj-a", "other").await;
    let spec = cluster_spec(
        "inj-login",
        "inj-pull",
        json!({"namespaceSelector": {"matchLabels": {"inj": "yes"}}, "serviceAccounts": {"names": ["default", "builder"]}}),
    );
    apply_crcred(&client, "inj", spec).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let status = wait_for_condition(&crcreds, "inj", "Injection", "InjectionActive").await;
    assert_eq!(status.conditions[0].type_, "Ready", "Ready stays the first condition");
    assert!(
        status.conditions[1].message.contains("inject-pull-secret.clusterregistrycredentials.regcred.dev"),
        "the condition names the policy and its binding: {:?}",
        status.conditions[1]
    );
    wait_for_pull_secret(&client, "inj-a", "default", "inj-pull", true).await;
    wait_until_injecting(&client, "inj-a", "inj-pull").await;

    // Own pull Secrets are kept, regcred's is appended.
    let pod = create_pod(&client, "inj-a", "own", Some("builder"), &["theirs", "more"]).await;
    assert_eq!(pull_secrets_of(&pod), ["theirs", "more", "inj-pull"]);
    // A Pod that lists nothing: ServiceAccount admission copies the entry,
    // the policy does not add it twice.
    let pod = create_pod(&client, "inj-a", "plain", None, &[]).await;
    assert_eq!(pull_secrets_of(&pod), ["inj-pull"]);
    // Already listed: untouched.
    let pod = create_pod(&client, "inj-a", "listed", Some("builder"), &["inj-pull"]).await;
    assert_eq!(pull_secrets_of(&pod), ["inj-pull"]);
    // A ServiceAccount the credential does not select: untouched.
    let pod = create_pod(&client, "inj-a", "unselected", Some("other"), &["theirs"]).await;
    assert_eq!(pull_secrets_of(&pod), ["theirs"]);

    // The race: a namespace and a Pod created together, before regcred
    // has written the Secret or patched the ServiceAccount. The policy
    // reads the credential itself, so the Pod gets the entry anyway.
    create_namespace(&client, "inj-race", &[("inj", "yes")]).await;
    let pod = create_pod(&client, "inj-race", "early", None, &[]).await;
    assert_eq!(pull_secrets_of(&pod), ["inj-pull"], "the Pod created with its namespace got the Secret");
    let early_own = create_pod(&client, "inj-race", "early-own", None, &["theirs"]).await;
    assert_eq!(pull_secrets_of(&early_own), ["theirs", "inj-pull"]);
    wait_for_login(&client, "inj-race", "inj-pull", REGISTRY, "inj-user", "inj-password").await;

    // Turning injection off: new Pods are untouched.
    let spec = json!({"namespaceSelector": {"matchLabels": {"inj": "yes"}},
        "serviceAccounts": {"names": ["default", "builder"]}, "injection": {"enabled": false}});
    apply_crcred(&client, "inj", cluster_spec("inj-login", "inj-pull", spec)).await;
    let status = wait_for_reason(&crcreds, "inj", "Synced").await;
    assert!(status.conditions.iter().all(|c| c.type_ != "Injection"), "{status:?}");
    wait_until_not_injecting(&client, "inj-a", "inj-pull").await;
    let pod = create_pod(&client, "inj-a", "after-off", Some("builder"), &["theirs"]).await;
    assert_eq!(pull_secrets_of(&pod), ["theirs"]);
}

#[tokio::test]
async fn explicit_namespaces_and_exclusions_behave_as_their_selectors_say() {
    let client = policies_installed().await;
    put_login(&client, CLUSTER_NS, "sel-login", "sel-user", "sel-password").await;
    for (ns, labels) in [
        ("sel-named", &[][..]),
        ("sel-labelled", &[("sel", "yes")][..]),
        ("sel-excluded", &[("sel", "yes")][..]),
        ("sel-neither", &[][..]),
    ] {
        create_namespace(&client, ns, labels).await;
    }
    // Both `namespaces` and `namespaceSelector`: their union, minus the
    // exclusions (the policy's CEL applies the selection).
    let both = cluster_spec(
        "sel-login",
        "sel-pull",
        json!({"namespaces": ["sel-named"], "namespaceSelector": {"matchExpressions": [{"key": "sel", "operator": "In", "values": ["yes"]}]},
               "excludeNamespaces": ["sel-excluded"]}),
    );
    apply_crcred(&client, "sel", both).await;
    // `namespaces` only.
    let by_name = cluster_spec(
        "sel-login",
        "sel-named-pull",
        json!({"namespaces": ["sel-named", "sel-excluded"], "excludeNamespaces": ["sel-excluded"]}),
    );
    apply_crcred(&client, "sel-names", by_name).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    wait_for_condition(&crcreds, "sel", "Injection", "InjectionActive").await;
    wait_for_condition(&crcreds, "sel-names", "Injection", "InjectionActive").await;
    wait_until_injecting(&client, "sel-labelled", "sel-pull").await;
    wait_until_injecting(&client, "sel-named", "sel-named-pull").await;

    let expect = [
        ("sel-named", vec!["theirs", "sel-named-pull", "sel-pull"]),
        ("sel-labelled", vec!["theirs", "sel-pull"]),
        ("sel-excluded", vec!["theirs"]),
        ("sel-neither", vec!["theirs"]),
    ];
    for (ns, want) in expect {
        let pod = create_pod(&client, ns, "probe", None, &["theirs"]).await;
        let mut got = pull_secrets_of(&pod);
        got[1..].sort();
        assert_eq!(got, want, "namespace {ns}");
    }
}

#[tokio::test]
async fn a_registry_credential_injects_only_in_its_own_namespace() {
    let client = policies_installed().await;
    create_namespace(&client, "own-a", &[]).await;
    create_namespace(&client, "own-b", &[]).await;
    put_login(&client, "own-a", "login", "own-user", "own-password").await;
    let mut spec = basic_spec(REGISTRY, "login", "own-pull");
    spec["injection"] = json!({"enabled": true});
    apply_rcred(&client, "own-a", "own", spec).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "own-a");
    wait_for_condition(&rcreds, "own", "Injection", "InjectionActive").await;

    wait_until_injecting(&client, "own-a", "own-pull").await;
    let pod = create_pod(&client, "own-a", "in", None, &["theirs"]).await;
    assert_eq!(pull_secrets_of(&pod), ["theirs", "own-pull"]);
    let pod = create_pod(&client, "own-b", "out", None, &["theirs"]).await;
    assert_eq!(pull_secrets_of(&pod), ["theirs"], "another namespace is untouched");

    // Deleted: new Pods are untouched.
    rcreds.delete("own", &DeleteParams::default()).await.unwrap();
    wait_for_no_secret(&client, "own-a", "own-pull").await;
    wait_until_not_injecting(&client, "own-a", "own-pull").await;
    let pod = create_pod(&client, "own-a", "after", None, &["theirs"]).await;
    assert_eq!(pull_secrets_of(&pod), ["theirs"]);
}

#[tokio::test]
async fn a_deleted_credential_stops_injecting() {
    let client = policies_installed().await;
    put_login(&client, CLUSTER_NS, "gone-login", "gone-user", "gone-password").await;
    create_namespace(&client, "gone-a", &[("gone", "yes")]).await;
    apply_crcred(
        &client,
        "gone",
        cluster_spec("gone-login", "gone-pull", json!({"namespaceSelector": {"matchLabels": {"gone": "yes"}}})),
    )
    .await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    wait_for_condition(&crcreds, "gone", "Injection", "InjectionActive").await;
    wait_until_injecting(&client, "gone-a", "gone-pull").await;
    let pod = create_pod(&client, "gone-a", "before", None, &["theirs"]).await;
    assert_eq!(pull_secrets_of(&pod), ["theirs", "gone-pull"]);

    crcreds.delete("gone", &DeleteParams::default()).await.unwrap();
    wait_for("the credential to be gone", WAIT, || async {
        crcreds.get_opt("gone").await.unwrap().is_none().then_some(())
    })
    .await;
    wait_until_not_injecting(&client, "gone-a", "gone-pull").await;
    let pod = create_pod(&client, "gone-a", "after", None, &["theirs"]).await;
    assert_eq!(pull_secrets_of(&pod), ["theirs"], "no injection once the credential is gone");
}

/// The credential says whether injection is in effect as the chart's
/// policy and binding come and go; regcred itself writes no binding.
#[tokio::test]
async fn a_missing_policy_or_binding_is_reported_and_regcred_writes_none() {
    // Its own control plane: the shared one's policies stay in place.
    let cp = ControlPlane::start(Options::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let client = cp.client().await.unwrap();
    create_namespace(&client, CLUSTER_NS, &[]).await;
    let op = Operator::start(&cp, std::path::Path::new(env!("CARGO_BIN_EXE_regcred")), CLUSTER_NS, &[])
        .unwrap_or_else(|e| panic!("{e:#}"));
    create_namespace(&client, "miss-a", &[("miss", "yes")]).await;
    put_login(&client, CLUSTER_NS, "miss-login", "miss-user", "miss-password").await;
    apply_crcred(
        &client,
        "miss",
        cluster_spec("miss-login", "miss-pull", json!({"namespaceSelector": {"matchLabels": {"miss": "yes"}}})),
    )
    .await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let injection = |reason: &'static str| {
        let crcreds = crcreds.clone();
        let op = &op;
        async move {
            poll_until(op, &format!("Injection {reason}"), || async {
                let s = crcreds.get("miss").await.unwrap().status?;
                let c = s.conditions.iter().find(|c| c.type_ == "Injection")?.clone();
                (c.reason == reason).then_some(c)
            })
            .await
        }
    };
    let policy = "inject-pull-secret.clusterregistrycredentials.regcred.dev";

    // No policy yet.
    let c = injection("AdmissionPolicyMissing").await;
    assert!(c.status == "False" && c.message.contains(policy) && c.message.contains("not installed"), "{c:?}");
    poll_until(&op, "a Warning Event AdmissionPolicyMissing", || async {
        let events = events_for(&client, "default", "miss").await;
        events.iter().any(|(t, r, _)| t == "Warning" && r == "AdmissionPolicyMissing").then_some(())
    })
    .await;

    // The chart's policies and bindings installed: active.
    install_admission_policies(&client).await;
    let c = injection("InjectionActive").await;
    assert!(c.message.contains(&format!("bound by {policy}")), "{c:?}");
    wait_until_injecting(&client, "miss-a", "miss-pull").await;

    // The binding removed: said so, and nothing is injected.
    bindings(&client).delete(policy, &DeleteParams::default()).await.unwrap();
    let c = injection("AdmissionPolicyMissing").await;
    assert!(c.message.contains("no MutatingAdmissionPolicyBinding"), "{c:?}");
    wait_until_not_injecting(&client, "miss-a", "miss-pull").await;

    // Only the chart's bindings ever existed: regcred wrote none.
    let names: Vec<String> =
        bindings(&client).list(&ListParams::default()).await.unwrap().items.iter().map(|b| b.name_any()).collect();
    assert_eq!(names, ["inject-pull-secret.registrycredentials.regcred.dev"]);

    install_admission_policies(&client).await;
    injection("InjectionActive").await;
    wait_until_injecting(&client, "miss-a", "miss-pull").await;
    assert!(!op.log_text().contains("miss-password"));
}

/// A Pod owned by a real ReplicaSet, with the status a kubelet writes after
/// a refused pull (no node runs here).
async fn set_waiting(client: &Client, ns: &str, pod: &str, reason: &str) {
    let image = format!("{REGISTRY}/app:1");
    let status = match reason {
        "Running" => json!({"phase": "Running", "containerStatuses": [{"name": "app", "image": image, "imageID": "",
            "ready": true, "restartCount": 0, "started": true, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}),
        _ => json!({"phase": "Pending", "containerStatuses": [{"name": "app", "image": image, "imageID": "",
            "ready": false, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": "401 Unauthorized"}}}]}),
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(pod, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
        .await
        .expect("set the Pod's status");
}

async fn replica_set(client: &Client, ns: &str, name: &str) -> Pod {
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"automountServiceAccountToken": false,
                    "containers": [{"name": "app", "image": format!("{REGISTRY}/app:1")}]}}}
    }))
    .unwrap();
    Api::<ReplicaSet>::namespaced(client.clone(), ns).create(&PostParams::default(), &rs).await.unwrap();
    pods_of(client, ns, name, 1).await.remove(0)
}

async fn pods_of(client: &Client, ns: &str, app: &str, n: usize) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("{n} Pod(s) of {ns}/{app}"), WAIT, || async {
        let pods = api.list(&ListParams::default().labels(&format!("app={app}"))).await.unwrap().items;
        let live: Vec<Pod> = pods.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        (live.len() == n).then_some(live)
    })
    .await
}

#[tokio::test]
async fn recovery_deletes_only_stuck_pods_that_a_controller_recreates() {
    let client = policies_installed().await;
    create_namespace(&client, "rec", &[]).await;
    // Before any credential: Pods created without the Secret.
    let stuck = replica_set(&client, "rec", "stuck").await;
    set_waiting(&client, "rec", &stuck.name_any(), "ImagePullBackOff").await;
    let running = replica_set(&client, "rec", "running").await;
    set_waiting(&client, "rec", &running.name_any(), "Running").await;
    let bare = create_pod(&client, "rec", "bare", None, &[]).await;
    set_waiting(&client, "rec", "bare", "ErrImagePull").await;
    assert!(pull_secrets_of(&bare).is_empty());

    put_login(&client, "rec", "login", "rec-user", "rec-password").await;
    let mut spec = basic_spec(REGISTRY, "login", "rec-pull");
    spec["recovery"] = json!({"enabled": true});
    apply_rcred(&client, "rec", "rec", spec).await;

    // The stuck ReplicaSet Pod is replaced by one with the Secret (from
    // the patched ServiceAccount).
    let replaced = wait_for("the stuck Pod to be replaced", Duration::from_secs(60), || async {
        let pods = pods_of(&client, "rec", "stuck", 1).await;
        (pods[0].uid() != stuck.uid()).then(|| pods[0].clone())
    })
    .await;
    assert_eq!(pull_secrets_of(&replaced), ["rec-pull"]);
    // Never a Pod without a controller, never a running one.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "rec");
    assert_eq!(pods.get("bare").await.unwrap().uid(), bare.uid(), "a Pod no controller recreates stays");
    assert_eq!(pods_of(&client, "rec", "running", 1).await[0].uid(), running.uid(), "a running Pod stays");

    let events = events_for(&client, "rec", &stuck.name_any()).await;
    assert!(
        events.iter().any(|(t, r, n)| t == "Normal" && r == "PodRecovered" && n.contains("rec-pull")),
        "{events:?}"
    );
    let events = events_for(&client, "rec", "rec").await;
    assert!(
        events.iter().any(|(t, r, n)| t == "Normal" && r == "PodRecovered" && n.contains(&stuck.name_any())),
        "{events:?}"
    );
    let metrics = operator().metrics().unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("regcred_pods_recovered_total{") && l.contains("name=\"rec\"") && l.ends_with(" 1")),
        "{metrics}"
    );
}

/// A cluster that does not serve the MutatingAdmissionPolicy API (as
/// before 1.34, or 1.34–1.35 without the beta): the credential says so in
/// its Injection condition and an Event, and its Secrets are written as
/// always.
#[tokio::test]
async fn clusters_without_the_api_report_it_and_everything_else_works() {
    let cp = ControlPlane::start(Options {
        // The resources of the version this release would serve are off,
        // and so is the admission plugin, which waits for the informers of
        // the API it serves, as on clusters that predate it. On 1.33 this
        // is the cluster as it comes (the API there is alpha, v1alpha1).
        admission_api: false,
        ..Options::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let client = cp.client().await.unwrap();
    for version in ["v1", "v1beta1", "v1alpha1"] {
        let Ok(gv) = client.list_api_group_resources(&format!("admissionregistration.k8s.io/{version}")).await else {
            continue;
        };
        assert!(
            gv.resources.iter().all(|r| !r.name.starts_with("mutatingadmissionpolic")),
            "the control plane still serves the API in {version}: {:?}",
            gv.resources.iter().map(|r| &r.name).collect::<Vec<_>>()
        );
    }
    create_namespace(&client, CLUSTER_NS, &[]).await;
    let op = Operator::start(&cp, std::path::Path::new(env!("CARGO_BIN_EXE_regcred")), CLUSTER_NS, &[])
        .unwrap_or_else(|e| panic!("{e:#}"));
    create_namespace(&client, "old-a", &[("old", "yes")]).await;
    put_login(&client, CLUSTER_NS, "old-login", "old-user", "old-password").await;
    apply_crcred(
        &client,
        "old",
        cluster_spec(
            "old-login",
            "old-pull",
            json!({"namespaceSelector": {"matchLabels": {"old": "yes"}}, "recovery": {"enabled": true}}),
        ),
    )
    .await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let status = poll_until(&op, "the Injection condition", || async {
        let s = crcreds.get("old").await.unwrap().status?;
        let c = s.conditions.iter().find(|c| c.type_ == "Injection")?.clone();
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready")?.reason.clone();
        (ready == "Synced").then_some((c, s))
    })
    .await;
    let (injection, status) = status;
    assert_eq!((injection.status.as_str(), injection.reason.as_str()), ("False", "AdmissionPolicyUnsupported"));
    assert!(injection.message.contains("1.36"), "{}", injection.message);
    assert_eq!(status.targets.unwrap().synced, 1, "the Secret is written as always");
    let secret = get_secret(&client, "old-a", "old-pull").await.expect("the pull Secret");
    assert_eq!(login_in(&secret, REGISTRY), Some(("old-user".into(), "old-password".into())));
    poll_until(&op, "old-a/default to list old-pull", || async {
        pull_secret_names(&client, "old-a", "default").await.contains(&"old-pull".to_string()).then_some(())
    })
    .await;
    poll_until(&op, "a Warning Event AdmissionPolicyUnsupported", || async {
        let events = events_for(&client, "default", "old").await;
        events.iter().any(|(t, r, _)| t == "Warning" && r == "AdmissionPolicyUnsupported").then_some(())
    })
    .await;
    assert!(!op.log_text().contains("old-password"));
}

async fn poll_until<T, Fut>(op: &Operator, what: &str, f: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_logged(what, WAIT, Duration::from_millis(200), Some(op), f).await
}
