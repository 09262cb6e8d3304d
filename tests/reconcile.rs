//! `regcred run` against a real control plane with the `basic` provider:
//! fan-out, selection, ServiceAccounts, drift, safety, deletion, status.
//! Every test uses its own namespaces and credential names.

mod common;

use std::time::Instant;

use common::*;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use serde_json::json;

const REGISTRY: &str = "registry.example.com";

#[tokio::test]
async fn fan_out_to_50_namespaces_then_a_new_namespace_and_a_new_service_account() {
    let client = setup().await;
    put_login(&client, CLUSTER_NS, "fanout-login", "fan", "out-pass-1").await;
    for i in 0..50 {
        create_namespace(&client, &format!("fanout-{i}"), &[("fanout", "yes")]).await;
    }
    let mut spec = basic_spec(REGISTRY, "fanout-login", "fanout-pull");
    spec["namespaceSelector"] = json!({"matchLabels": {"fanout": "yes"}});
    spec["serviceAccounts"] = json!({"all": true});
    apply_crcred(&client, "fanout", spec).await;

    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let status = wait_for("50/50 synced", WAIT, || async {
        let s = crcreds.get("fanout").await.unwrap().status?;
        (s.targets.as_ref()?.synced == 50 && s.conditions.first()?.reason == "Synced").then_some(s)
    })
    .await;
    assert_eq!(status.targets.as_ref().unwrap().desired, 50);
    assert_eq!(status.targets.as_ref().unwrap().summary.as_deref(), Some("50/50"));
    assert_eq!(status.provider.as_deref(), Some("basic"));
    assert_eq!(status.registries, [REGISTRY]);
    for i in 0..50 {
        let ns = format!("fanout-{i}");
        let s = get_secret(&client, &ns, "fanout-pull").await.expect("secret in every namespace");
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
        assert_eq!(login_in(&s, REGISTRY), Some(("fan".into(), "out-pass-1".into())));
        let labels = s.metadata.labels.unwrap_or_default();
        assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("regcred"));
        let owner = s.metadata.annotations.unwrap_or_default().get("regcred.dev/owner").cloned();
        assert_eq!(owner.as_deref(), Some("ClusterRegistryCredential/fanout"));
        wait_for_pull_secret(&client, &ns, "default", "fanout-pull", true).await;
    }

    // A namespace created later gets its Secret through the watch.
    let start = Instant::now();
    create_namespace(&client, "fanout-late", &[("fanout", "yes")]).await;
    wait_for_login(&client, "fanout-late", "fanout-pull", REGISTRY, "fan", "out-pass-1").await;
    eprintln!("new namespace got its Secret after {:?}", start.elapsed());

    // A ServiceAccount created later is patched.
    let start = Instant::now();
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "builder"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), "fanout-3").create(&PostParams::default(), &sa).await.unwrap();
    wait_for_pull_secret(&client, "fanout-3", "builder", "fanout-pull", true).await;
    eprintln!("new ServiceAccount patched after {:?}", start.elapsed());
    wait_for("51/51 synced", WAIT, || async {
        let s = crcreds.get("fanout").await.unwrap().status?;
        (s.targets.as_ref()?.synced == 51).then_some(())
    })
    .await;
}

#[tokio::test]
async fn selector_change_exclude_list_and_namespace_deletion() {
    let client = setup().await;
    put_login(&client, CLUSTER_NS, "sel-login", "sel", "sel-password").await;
    create_namespace(&client, "sel-a1", &[("sel", "a")]).await;
    create_namespace(&client, "sel-a2", &[("sel", "a")]).await;
    create_namespace(&client, "sel-b1", &[("sel", "b")]).await;
    create_namespace(&client, "sel-named", &[]).await;
    let mut spec = basic_spec(REGISTRY, "sel-login", "sel-pull");
    spec["namespaceSelector"] = json!({"matchLabels": {"sel": "a"}});
    spec["namespaces"] = json!(["sel-named"]);
    apply_crcred(&client, "sel", spec.clone()).await;
    for ns in ["sel-a1", "sel-a2", "sel-named"] {
        wait_for_login(&client, ns, "sel-pull", REGISTRY, "sel", "sel-password").await;
    }
    assert!(get_secret(&client, "sel-b1", "sel-pull").await.is_none());

    // Excluding a namespace removes its Secret and its ServiceAccount entry.
    wait_for_pull_secret(&client, "sel-a2", "default", "sel-pull", true).await;
    spec["excludeNamespaces"] = json!(["sel-a2"]);
    apply_crcred(&client, "sel", spec.clone()).await;
    wait_for_no_secret(&client, "sel-a2", "sel-pull").await;
    wait_for_pull_secret(&client, "sel-a2", "default", "sel-pull", false).await;

    // A namespace that starts matching gets it; one that stops loses it.
    label_namespace(&client, "sel-b1", json!({"sel": "a"})).await;
    wait_for_login(&client, "sel-b1", "sel-pull", REGISTRY, "sel", "sel-password").await;
    label_namespace(&client, "sel-a1", json!({"sel": "c"})).await;
    wait_for_no_secret(&client, "sel-a1", "sel-pull").await;

    // Changing the selector itself.
    spec["namespaceSelector"] = json!({"matchExpressions": [{"key": "sel", "operator": "In", "values": ["c"]}]});
    apply_crcred(&client, "sel", spec).await;
    wait_for_login(&client, "sel-a1", "sel-pull", REGISTRY, "sel", "sel-password").await;
    wait_for_no_secret(&client, "sel-b1", "sel-pull").await;

    // Deleting a target namespace: it drops out of the targets, no failure.
    delete_namespace(&client, "sel-named").await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let status = wait_for("targets without sel-named", WAIT, || async {
        let s = crcreds.get("sel").await.unwrap().status?;
        (s.targets.as_ref()?.desired == 1).then_some(s)
    })
    .await;
    let targets = status.targets.unwrap();
    assert_eq!(targets.synced, 1);
    assert!(targets.failed.is_empty(), "{:?}", targets.failed);
    assert_eq!(status.conditions[0].reason, "Synced");
}

#[tokio::test]
async fn drift_is_repaired() {
    let client = setup().await;
    create_namespace(&client, "drift", &[]).await;
    put_login(&client, "drift", "login", "drifter", "pw-drift").await;
    apply_rcred(&client, "drift", "drift", basic_spec(REGISTRY, "login", "drift-pull")).await;
    let original = wait_for_login(&client, "drift", "drift-pull", REGISTRY, "drifter", "pw-drift").await;
    wait_for_pull_secret(&client, "drift", "default", "drift-pull", true).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "drift");

    // Deleted: restored.
    secrets.delete("drift-pull", &DeleteParams::default()).await.unwrap();
    let restored = wait_for_login(&client, "drift", "drift-pull", REGISTRY, "drifter", "pw-drift").await;
    assert_ne!(restored.metadata.uid, original.metadata.uid);

    // Edited (by another field manager): restored.
    let edit = json!({"data": {".dockerconfigjson": "eyJhdXRocyI6e319"}});
    secrets.patch("drift-pull", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    wait_for_login(&client, "drift", "drift-pull", REGISTRY, "drifter", "pw-drift").await;

    // imagePullSecrets entry removed, others kept: put back, others untouched.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "drift");
    let patch = json!({"imagePullSecrets": [{"name": "someone-elses"}]});
    sas.patch("default", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for_pull_secret(&client, "drift", "default", "drift-pull", true).await;
    let names = pull_secret_names(&client, "drift", "default").await;
    assert!(names.contains(&"someone-elses".to_string()), "another entry was dropped: {names:?}");
}

#[tokio::test]
async fn an_unmanaged_secret_is_left_alone_and_reported_and_others_still_sync() {
    let client = setup().await;
    put_login(&client, CLUSTER_NS, "clash-login", "clash", "clash-password").await;
    create_namespace(&client, "clash-taken", &[("clash", "yes")]).await;
    create_namespace(&client, "clash-free", &[("clash", "yes")]).await;
    let theirs: Secret = serde_json::from_value(json!({
        "metadata": {"name": "clash-pull"}, "stringData": {"mine": "do-not-touch"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "clash-taken").create(&PostParams::default(), &theirs).await.unwrap();

    let mut spec = basic_spec(REGISTRY, "clash-login", "clash-pull");
    spec["namespaceSelector"] = json!({"matchLabels": {"clash": "yes"}});
    apply_crcred(&client, "clash", spec).await;
    wait_for_login(&client, "clash-free", "clash-pull", REGISTRY, "clash", "clash-password").await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let status = wait_for_reason(&crcreds, "clash", "SecretConflict").await;
    let targets = status.targets.unwrap();
    assert_eq!((targets.desired, targets.synced), (2, 1));
    assert_eq!(targets.failed.len(), 1);
    assert_eq!(targets.failed[0].namespace, "clash-taken");
    assert_eq!(targets.failed[0].reason, "SecretConflict");
    let untouched = get_secret(&client, "clash-taken", "clash-pull").await.unwrap();
    assert_eq!(untouched.type_.as_deref(), Some("Opaque"));
    assert_eq!(untouched.data.unwrap()["mine"].0, b"do-not-touch");
    assert!(untouched.metadata.labels.is_none_or(|l| !l.contains_key("app.kubernetes.io/managed-by")));
    assert!(
        !pull_secret_names(&client, "clash-taken", "default").await.contains(&"clash-pull".to_string()),
        "a ServiceAccount was pointed at a Secret regcred does not manage"
    );
    let events = wait_for("a SecretConflict Warning event", WAIT, || async {
        let ev = events_for(&client, "default", "clash").await;
        ev.iter().any(|(t, r, _)| t == "Warning" && r == "SecretConflict").then_some(ev)
    })
    .await;
    assert!(events.iter().any(|(_, _, note)| note.contains("clash-taken")), "{events:?}");

    // Two credentials claiming one Secret name: the second is refused.
    create_namespace(&client, "clash-two", &[]).await;
    put_login(&client, "clash-two", "login", "first", "first-password").await;
    apply_rcred(&client, "clash-two", "first", basic_spec(REGISTRY, "login", "shared-pull")).await;
    wait_for_login(&client, "clash-two", "shared-pull", REGISTRY, "first", "first-password").await;
    apply_rcred(&client, "clash-two", "second", basic_spec("other.example.com", "login", "shared-pull")).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "clash-two");
    let status = wait_for_reason(&rcreds, "second", "SecretConflict").await;
    let msg = &status.targets.unwrap().failed[0].message.clone().unwrap();
    assert!(msg.contains("RegistryCredential/clash-two/first"), "{msg}");
    let kept = get_secret(&client, "clash-two", "shared-pull").await.unwrap();
    assert_eq!(login_in(&kept, REGISTRY), Some(("first".into(), "first-password".into())));
}

#[tokio::test]
async fn deletion_removes_or_orphans_per_policy() {
    let client = setup().await;
    for (ns, policy) in [("del-delete", "Delete"), ("del-orphan", "Orphan")] {
        create_namespace(&client, ns, &[]).await;
        put_login(&client, ns, "login", "u", "delete-password").await;
        let mut spec = basic_spec(REGISTRY, "login", "del-pull");
        spec["deletionPolicy"] = json!(policy);
        apply_rcred(&client, ns, "cred", spec).await;
        wait_for_login(&client, ns, "del-pull", REGISTRY, "u", "delete-password").await;
        wait_for_pull_secret(&client, ns, "default", "del-pull", true).await;
        let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
        let cred = rcreds.get("cred").await.unwrap();
        assert!(cred.metadata.finalizers.unwrap_or_default().contains(&"regcred.dev/cleanup".to_string()));
        rcreds.delete("cred", &DeleteParams::default()).await.unwrap();
        wait_for("credential gone", WAIT, || async { rcreds.get_opt("cred").await.unwrap().is_none().then_some(()) })
            .await;
    }
    assert!(get_secret(&client, "del-delete", "del-pull").await.is_none());
    assert!(!pull_secret_names(&client, "del-delete", "default").await.contains(&"del-pull".to_string()));
    assert!(get_secret(&client, "del-orphan", "del-pull").await.is_some());
    assert!(pull_secret_names(&client, "del-orphan", "default").await.contains(&"del-pull".to_string()));

    // The cluster kind cleans up every namespace it fanned out to.
    put_login(&client, CLUSTER_NS, "del-login", "u", "cluster-delete-password").await;
    create_namespace(&client, "del-c1", &[("del", "c")]).await;
    create_namespace(&client, "del-c2", &[("del", "c")]).await;
    let mut spec = basic_spec(REGISTRY, "del-login", "del-cluster-pull");
    spec["namespaceSelector"] = json!({"matchLabels": {"del": "c"}});
    apply_crcred(&client, "del-cluster", spec).await;
    for ns in ["del-c1", "del-c2"] {
        wait_for_login(&client, ns, "del-cluster-pull", REGISTRY, "u", "cluster-delete-password").await;
    }
    Api::<ClusterRegistryCredential>::all(client.clone())
        .delete("del-cluster", &DeleteParams::default())
        .await
        .unwrap();
    for ns in ["del-c1", "del-c2"] {
        wait_for_no_secret(&client, ns, "del-cluster-pull").await;
        wait_for_pull_secret(&client, ns, "default", "del-cluster-pull", false).await;
    }
}

#[tokio::test]
async fn source_secret_update_missing_and_malformed() {
    let client = setup().await;
    create_namespace(&client, "src", &[]).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "src");

    // Missing: reported, then healed when it appears.
    apply_rcred(&client, "src", "cred", basic_spec(REGISTRY, "login", "src-pull")).await;
    let status = wait_for_reason(&rcreds, "cred", "SourceSecretNotFound").await;
    assert_eq!(status.conditions[0].status, "False");
    assert!(status.conditions[0].message.contains("src/login"), "{}", status.conditions[0].message);
    put_login(&client, "src", "login", "src-user", "first-pass").await;
    wait_for_login(&client, "src", "src-pull", REGISTRY, "src-user", "first-pass").await;
    wait_for_reason(&rcreds, "cred", "Synced").await;

    // Updated: rolled out.
    put_login(&client, "src", "login", "src-user", "second-pass").await;
    wait_for_login(&client, "src", "src-pull", REGISTRY, "src-user", "second-pass").await;

    // Malformed: reported, the last good Secret stays.
    let broken: Secret = serde_json::from_value(json!({
        "metadata": {"name": "login", "namespace": "src"}, "stringData": {"user": "x", "pass": "y"}
    }))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "src");
    secrets.delete("login", &DeleteParams::default()).await.unwrap();
    secrets.create(&PostParams::default(), &broken).await.unwrap();
    let status = wait_for_reason(&rcreds, "cred", "SourceSecretInvalid").await;
    assert!(status.conditions[0].message.contains("username"), "{}", status.conditions[0].message);
    assert!(status.conditions[0].message.contains("last good Secret"), "{}", status.conditions[0].message);
    let kept = get_secret(&client, "src", "src-pull").await.unwrap();
    assert_eq!(login_in(&kept, REGISTRY), Some(("src-user".into(), "second-pass".into())));
    let events = events_for(&client, "src", "cred").await;
    assert!(events.iter().any(|(t, r, _)| t == "Warning" && r == "SourceSecretInvalid"), "{events:?}");

    // An existing dockerconfigjson Secret works as a source too.
    let dockercfg = json!({"auths": {REGISTRY: {"username": "cfg-user", "password": "cfg-pass"}}}).to_string();
    let cfg: Secret = serde_json::from_value(json!({
        "metadata": {"name": "login", "namespace": "src"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": dockercfg}
    }))
    .unwrap();
    secrets.delete("login", &DeleteParams::default()).await.unwrap();
    secrets.create(&PostParams::default(), &cfg).await.unwrap();
    wait_for_login(&client, "src", "src-pull", REGISTRY, "cfg-user", "cfg-pass").await;
    wait_for_reason(&rcreds, "cred", "Synced").await;
}

#[tokio::test]
async fn a_namespaced_credential_reads_only_its_own_namespace() {
    let client = setup().await;
    create_namespace(&client, "tenant-a", &[]).await;
    create_namespace(&client, "tenant-b", &[]).await;
    put_login(&client, "tenant-b", "b-login", "b-user", "b-secret-pass").await;
    // Naming the namespace is rejected by the schema (see tests/api.rs); a
    // bare name resolves in the credential's own namespace only.
    apply_rcred(&client, "tenant-a", "steal", basic_spec(REGISTRY, "b-login", "stolen")).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "tenant-a");
    let status = wait_for_reason(&rcreds, "steal", "SourceSecretNotFound").await;
    assert!(status.conditions[0].message.contains("tenant-a/b-login"), "{}", status.conditions[0].message);
    assert!(get_secret(&client, "tenant-a", "stolen").await.is_none());
    assert!(get_secret(&client, "tenant-b", "stolen").await.is_none());
}

#[tokio::test]
async fn a_pod_gets_image_pull_secrets_from_the_patched_service_account() {
    let client = setup().await;
    create_namespace(&client, "podns", &[]).await;
    put_login(&client, "podns", "login", "u", "pod-password").await;
    apply_rcred(&client, "podns", "cred", basic_spec(REGISTRY, "login", "pod-pull")).await;
    wait_for_pull_secret(&client, "podns", "default", "pod-pull", true).await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {"containers": [{"name": "app", "image": format!("{REGISTRY}/app:1")}]}
    }))
    .unwrap();
    let created = Api::<Pod>::namespaced(client.clone(), "podns").create(&PostParams::default(), &pod).await.unwrap();
    let names: Vec<String> =
        created.spec.unwrap().image_pull_secrets.unwrap_or_default().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["pod-pull"], "ServiceAccount admission did not copy the entry");
}

#[tokio::test]
async fn the_rendered_secret_pulls_from_a_real_registry_and_a_wrong_password_does_not() {
    let client = setup().await;
    let registry = regcred_testenv::registry::Registry::start_htpasswd(
        control_plane().process_group(),
        &[("puller", "correct-horse-battery")],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    create_namespace(&client, "pull", &[]).await;
    let dir = std::env::temp_dir().join(format!("regcred-pull-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (cred, password, should_pull) in [("good", "correct-horse-battery", true), ("bad", "wrong-password", false)] {
        put_login(&client, "pull", &format!("{cred}-login"), "puller", password).await;
        let secret_name = format!("{cred}-pull");
        apply_rcred(&client, "pull", cred, basic_spec(&registry.host, &format!("{cred}-login"), &secret_name)).await;
        let secret = wait_for_login(&client, "pull", &secret_name, &registry.host, "puller", password).await;
        let authfile = dir.join(format!("{cred}.json"));
        std::fs::write(&authfile, &secret.data.unwrap()[".dockerconfigjson"].0).unwrap();
        let out = regcred_testenv::registry::skopeo_inspect(&authfile, &registry.test_image()).unwrap();
        assert_eq!(
            out.status.success(),
            should_pull,
            "skopeo inspect with the {cred} Secret: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A ServiceAccount the apiserver refuses to update (a ValidatingAdmissionPolicy
/// stands in for a webhook or a policy engine): the credential reports
/// WriteFailed naming it, with a Warning Event, the other ServiceAccount and
/// the Secret are still served, and once the policy is gone it recovers.
#[tokio::test]
async fn a_service_account_that_cannot_be_patched_is_reported_and_recovers() {
    use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
    let client = setup().await;
    let ns = "sa-denied";
    create_namespace(&client, ns, &[]).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let locked: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "locked"}})).unwrap();
    sas.create(&PostParams::default(), &locked).await.unwrap();
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let policy = serde_json::from_value(json!({
        "metadata": {"name": "sa-denied-lock"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["UPDATE"], "resources": ["serviceaccounts"]}]},
            "validations": [{"expression": "object.metadata.name != 'locked'", "message": "this ServiceAccount is locked"}]
        }
    }))
    .unwrap();
    policies.create(&PostParams::default(), &policy).await.unwrap();
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let binding = serde_json::from_value(json!({
        "metadata": {"name": "sa-denied-lock"},
        "spec": {"policyName": "sa-denied-lock", "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}}
    }))
    .unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    // The policy takes effect once the apiserver has loaded it.
    let probe = json!({"metadata": {"labels": {"probe": "yes"}}});
    wait_for("the policy to refuse updates of the locked ServiceAccount", WAIT, || async {
        sas.patch("locked", &PatchParams::default(), &Patch::Merge(&probe)).await.is_err().then_some(())
    })
    .await;

    put_login(&client, ns, "login", "denied-user", "pw-sa-denied").await;
    let mut spec = basic_spec(REGISTRY, "login", "denied-pull");
    spec["serviceAccounts"] = json!({"all": true});
    apply_rcred(&client, ns, "denied", spec).await;
    let api: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    let status = wait_for_reason(&api, "denied", "WriteFailed").await;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("ServiceAccount sa-denied/locked"), "message: {}", ready.message);
    wait_for_login(&client, ns, "denied-pull", REGISTRY, "denied-user", "pw-sa-denied").await;
    wait_for_pull_secret(&client, ns, "default", "denied-pull", true).await;
    assert!(!pull_secret_names(&client, ns, "locked").await.contains(&"denied-pull".to_string()));
    let events = events_for(&client, ns, "denied").await;
    assert!(
        events.iter().any(|(t, r, note)| t == "Warning" && r == "WriteFailed" && note.contains("sa-denied/locked")),
        "no Warning Event naming the ServiceAccount: {events:?}"
    );

    bindings.delete("sa-denied-lock", &DeleteParams::default()).await.unwrap();
    policies.delete("sa-denied-lock", &DeleteParams::default()).await.unwrap();
    wait_for_pull_secret(&client, ns, "locked", "denied-pull", true).await;
    wait_for_reason(&api, "denied", "Synced").await;
}
