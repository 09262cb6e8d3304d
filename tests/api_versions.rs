//! The API versions against a real kube-apiserver: `v1beta1` is the storage
//! version, `v1alpha1` is still served with the same schema and the
//! apiserver's deprecation warning, objects stored as `v1alpha1` by an
//! earlier regcred are reconciled as `v1beta1`, and `storedVersions` can
//! be migrated with the steps docs/api.md gives.

mod common;

use std::io::Write as _;
use std::process::Stdio;

use common::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use regcred_testenv::operator::Operator;
use regcred_testenv::{ControlPlane, Options};
use serde_json::{Value, json};

const REGISTRY: &str = "registry.versions.example";

fn resource(version: &str, kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("regcred.dev", version, kind))
}

/// A CRD as regcred 0.1.0 installed it: `v1alpha1` served and stored, and
/// `v1beta1` declared but not served (the same schema as today's), so that
/// a rollback to it is accepted once objects are stored as `v1beta1`.
fn crd_before_v1beta1(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for v in &mut crd.spec.versions {
        v.storage = v.name == "v1alpha1";
        v.served = v.name == "v1alpha1";
        v.deprecated = None;
        v.deprecation_warning = None;
    }
    crd
}

async fn apply_crd(client: &Client, crd: &CustomResourceDefinition) -> Result<CustomResourceDefinition, kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap();
    let mut crd = crd.clone();
    crd.metadata.resource_version = None;
    api.patch(&name, &PatchParams::apply("regcred-test").force(), &Patch::Apply(&crd)).await
}

async fn stored_versions(client: &Client, name: &str) -> Vec<String> {
    let crd = Api::<CustomResourceDefinition>::all(client.clone()).get(name).await.unwrap();
    crd.status.and_then(|s| s.stored_versions).unwrap_or_default()
}

/// Waits until the apiserver serves `version` of the group's kinds (a CRD
/// change takes a moment to reach discovery and the handlers).
async fn wait_served(client: &Client, version: &str, served: bool) {
    wait_for(&format!("regcred.dev/{version} served={served}"), WAIT, || async {
        let ok = client.list_api_group_resources(&format!("regcred.dev/{version}")).await.is_ok();
        (ok == served).then_some(())
    })
    .await;
}

#[test]
fn the_crds_serve_v1beta1_as_storage_and_v1alpha1_deprecated_with_the_same_schema() {
    for crd in regcred::crdgen::crds() {
        let names: Vec<(&str, bool, bool)> =
            crd.spec.versions.iter().map(|v| (v.name.as_str(), v.storage, v.deprecated.unwrap_or(false))).collect();
        assert_eq!(names, [("v1beta1", true, false), ("v1alpha1", false, true)]);
        let (new, old) = (&crd.spec.versions[0], &crd.spec.versions[1]);
        assert!(new.served && old.served);
        assert_eq!(new.schema, old.schema, "the same schema: no conversion needed");
        assert_eq!(new.additional_printer_columns, old.additional_printer_columns);
        assert_eq!(new.subresources, old.subresources);
        let warning = old.deprecation_warning.as_deref().unwrap();
        assert!(warning.contains("regcred.dev/v1beta1") && warning.contains("deprecated"), "{warning}");
        assert!(crd.spec.conversion.as_ref().is_none_or(|c| c.strategy == "None"));
    }
}

/// A request in `v1alpha1` is answered, with the apiserver's `Warning`
/// header; the object is the same one `v1beta1` reads.
#[tokio::test]
async fn a_v1alpha1_request_gets_the_deprecation_warning_and_the_same_object() {
    let client = setup().await;
    create_namespace(&client, "versions-warn", &[]).await;
    let body = json!({"apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential",
        "metadata": {"name": "old-style"}, "spec": basic_spec(REGISTRY, "login", "pull")});
    let request = http::Request::post(
        "/apis/regcred.dev/v1alpha1/namespaces/versions-warn/registrycredentials?fieldManager=regcred-test",
    )
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&body).unwrap())
    .unwrap();
    let response = client.send(request.map(Into::into)).await.expect("a v1alpha1 create");
    assert_eq!(response.status(), 201);
    let warnings: Vec<String> =
        response.headers().get_all("warning").iter().map(|v| v.to_str().unwrap_or_default().to_string()).collect();
    assert!(
        warnings.iter().any(|w| w.contains("regcred.dev/v1alpha1 RegistryCredential is deprecated")
            && w.contains("regcred.dev/v1beta1")),
        "no deprecation warning: {warnings:?}"
    );
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "versions-warn");
    let read = rcreds.get("old-style").await.expect("read as v1beta1");
    assert_eq!(read.spec.credential.secret.name, "pull");
    assert!(stored_versions(&client, "registrycredentials.regcred.dev").await.contains(&"v1beta1".to_string()));
}

/// Runs `kubectl get <resource> -A -o json | kubectl replace -f -`, the
/// rewrite docs/api.md gives, and returns kubectl's output.
fn rewrite_all(cp: &ControlPlane, resource: &str) -> String {
    let got = cp.kubectl().args(["get", resource, "--all-namespaces", "-o", "json"]).output().unwrap();
    assert!(got.status.success(), "kubectl get {resource}: {}", String::from_utf8_lossy(&got.stderr));
    let mut replace: std::process::Child = cp
        .kubectl()
        .args(["replace", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    replace.stdin.take().unwrap().write_all(&got.stdout).unwrap();
    let out = replace.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl replace {resource}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    let out: std::process::Output = cp.kubectl().args(args).output().unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Objects an earlier regcred stored as `v1alpha1` are read and reconciled
/// as `v1beta1` once the new CRDs are applied; then, following docs/api.md,
/// every object is rewritten in the storage version and `v1alpha1` leaves
/// `storedVersions`, after which the CRD could drop it (the apiserver
/// refuses that before, and would fail to read objects left unmigrated).
#[tokio::test]
async fn objects_stored_as_v1alpha1_are_reconciled_as_v1beta1_and_storage_can_be_migrated() {
    let cp = ControlPlane::start(Options { crd_dir: None, ..Options::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    let client = cp.client().await.unwrap();
    let new_crds = regcred::crdgen::crds();
    for crd in &new_crds {
        apply_crd(&client, &crd_before_v1beta1(crd.clone())).await.unwrap();
    }
    wait_served(&client, "v1alpha1", true).await;

    // Before the upgrade: credentials written as v1alpha1.
    create_namespace(&client, CLUSTER_NS, &[]).await;
    create_namespace(&client, "versions-a", &[("versions", "yes")]).await;
    put_login(&client, CLUSTER_NS, "cluster-login", "cluster-user", "versions-cluster-pw").await;
    put_login(&client, "versions-a", "own-login", "own-user", "versions-own-pw").await;
    let old_rcreds = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        "versions-a",
        &resource("v1alpha1", "RegistryCredential"),
    );
    let old_crcreds =
        Api::<DynamicObject>::all_with(client.clone(), &resource("v1alpha1", "ClusterRegistryCredential"));
    let object = |kind: &str, name: &str, spec: Value| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "regcred.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name}, "spec": spec}))
        .unwrap()
    };
    old_rcreds
        .create(
            &PostParams::default(),
            &object("RegistryCredential", "own", basic_spec(REGISTRY, "own-login", "own-pull")),
        )
        .await
        .unwrap();
    let mut cluster = basic_spec(REGISTRY, "cluster-login", "cluster-pull");
    cluster["namespaceSelector"] = json!({"matchLabels": {"versions": "yes"}});
    old_crcreds.create(&PostParams::default(), &object("ClusterRegistryCredential", "fleet", cluster)).await.unwrap();

    // The upgrade: the new CRDs, then regcred (which speaks v1beta1).
    for crd in &new_crds {
        apply_crd(&client, crd).await.unwrap();
    }
    wait_served(&client, "v1beta1", true).await;
    for name in ["registrycredentials.regcred.dev", "clusterregistrycredentials.regcred.dev"] {
        assert_eq!(stored_versions(&client, name).await, ["v1alpha1", "v1beta1"]);
    }
    let op = Operator::start(&cp, std::path::Path::new(env!("CARGO_BIN_EXE_regcred")), CLUSTER_NS, &[])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "versions-a");
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    wait_for_reason(&rcreds, "own", "Synced").await;
    wait_for_reason(&crcreds, "fleet", "Synced").await;
    wait_for_login(&client, "versions-a", "own-pull", REGISTRY, "own-user", "versions-own-pw").await;
    wait_for_login(&client, "versions-a", "cluster-pull", REGISTRY, "cluster-user", "versions-cluster-pw").await;

    // A rollback to the 0.1.0 CRDs (as `helm rollback` applies them) is
    // accepted although objects are now stored as v1beta1, because 0.1.0
    // declares v1beta1, and they read through v1alpha1; then forward again.
    rcreds.get("own").await.unwrap();
    let stored = rcreds.get_status("own").await.unwrap();
    assert!(stored.status.is_some(), "written by regcred through v1beta1");
    for crd in &new_crds {
        apply_crd(&client, &crd_before_v1beta1(crd.clone())).await.expect("the 0.1.0 CRDs over v1beta1-stored objects");
    }
    wait_served(&client, "v1beta1", false).await;
    let old_read = old_rcreds.get("own").await.expect("a v1beta1-stored object read through v1alpha1");
    assert_eq!(old_read.data["spec"]["secret"]["name"], "own-pull");
    assert!(old_crcreds.get("fleet").await.is_ok());
    for crd in &new_crds {
        apply_crd(&client, crd).await.unwrap();
    }
    wait_served(&client, "v1beta1", true).await;

    // v1alpha1 cannot be dropped while objects may be stored in it.
    let mut without_alpha = new_crds[0].clone();
    without_alpha.spec.versions.retain(|v| v.name == "v1beta1");
    let refused = apply_crd(&client, &without_alpha).await.expect_err("dropping a stored version");
    assert!(refused.to_string().contains("storedVersions"), "{refused}");

    // The migration, as docs/api.md says it: rewrite every object through
    // the API (stored again in v1beta1), then record that only v1beta1 is
    // stored.
    for resource in ["registrycredentials.regcred.dev", "clusterregistrycredentials.regcred.dev"] {
        let out = rewrite_all(&cp, resource);
        assert!(out.contains("replaced"), "{out}");
        kubectl(
            &cp,
            &[
                "patch",
                "crd",
                resource,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"storedVersions":["v1beta1"]}}"#,
            ],
        );
        assert_eq!(stored_versions(&client, resource).await, ["v1beta1"]);
    }

    // Now v1alpha1 can go, and every object still reads (it would not if
    // one were still stored as v1alpha1: the apiserver cannot decode a
    // version the CRD no longer has).
    for crd in &new_crds {
        let mut crd = crd.clone();
        crd.spec.versions.retain(|v| v.name == "v1beta1");
        apply_crd(&client, &crd).await.expect("v1alpha1 dropped after the migration");
    }
    wait_served(&client, "v1alpha1", false).await;
    assert_eq!(rcreds.get("own").await.unwrap().spec.credential.secret.name, "own-pull");
    assert_eq!(crcreds.get("fleet").await.unwrap().spec.credential.secret.name, "cluster-pull");
    // And regcred keeps serving them: a new password reaches the Secret.
    put_login(&client, "versions-a", "own-login", "own-user", "versions-own-pw-2").await;
    wait_for_login(&client, "versions-a", "own-pull", REGISTRY, "own-user", "versions-own-pw-2").await;
    assert!(!op.log_text().contains("versions-own-pw"));
}
