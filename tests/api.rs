//! The CRDs against a real kube-apiserver: installation, examples, schema and
//! CEL validation, `kubectl explain`, and the control plane's own behaviour
//! (RBAC, controller-manager) that later tests rely on.

use std::path::Path;

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

async fn admin() -> Client {
    regcred_testenv::shared().client().await.expect("admin client")
}

async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
}

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("regcred.dev", "v1beta1", kind))
}

/// Server-side apply with strict field validation, as `kubectl apply
/// --server-side` does.
async fn apply(client: &Client, ns: Option<&str>, obj: &Value) -> Result<DynamicObject, kube::Error> {
    let kind = obj["kind"].as_str().unwrap();
    let ar = resource(kind);
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let name = obj["metadata"]["name"].as_str().unwrap();
    api.patch(name, &PatchParams::apply("regcred-test").validation_strict(), &Patch::Apply(obj)).await
}

#[test]
fn crds_under_crds_dir_match_regcred_crd_output() {
    let dir = regcred_testenv::repo_root().join("crds");
    for (name, yaml) in regcred::crdgen::render_files() {
        let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "crds/{name} differs from `regcred crd` output: run `make crds` and commit the result"
        );
    }
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, regcred::crdgen::render_files().len(), "crds/ holds files `regcred crd` does not generate");
}

#[tokio::test]
async fn both_crds_are_established_with_status_and_printer_columns() {
    let client = admin().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for (name, scope, short) in [
        ("registrycredentials.regcred.dev", "Namespaced", "rcred"),
        ("clusterregistrycredentials.regcred.dev", "Cluster", "crcred"),
    ] {
        let crd = crds.get(name).await.unwrap();
        let established = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        assert!(established, "{name} is not Established");
        assert_eq!(crd.spec.scope, scope);
        assert_eq!(crd.spec.names.short_names.as_deref(), Some(&[short.to_string()][..]));
        let v = &crd.spec.versions[0];
        assert_eq!((v.name.as_str(), v.storage), ("v1beta1", true));
        assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{name}: no status subresource");
        let cols: Vec<&str> = v.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(cols, ["Provider", "Ready", "Expires", "Namespaces", "Age"]);
    }
}

#[tokio::test]
async fn examples_are_accepted() {
    let cp = regcred_testenv::shared();
    let client = cp.client().await.unwrap();
    create_namespace(&client, "regcred-system").await;
    let dir = regcred_testenv::repo_root().join("examples");
    let mut applied = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let out = cp
            .kubectl()
            .args(["apply", "--server-side", "--field-manager=regcred-test", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{} rejected: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        applied += 1;
    }
    assert!(applied >= 2, "no examples found in {}", dir.display());
    let rcreds: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource("RegistryCredential"));
    assert!(!rcreds.list(&ListParams::default()).await.unwrap().items.is_empty());
}

fn basic_spec() -> Value {
    json!({
        "provider": {"basic": {"registry": "registry.example.com", "secretRef": {"name": "login"}}},
        "secret": {"name": "pull"}
    })
}

fn with(mut base: Value, path: &[&str], value: Value) -> Value {
    let mut cur = &mut base;
    for key in &path[..path.len() - 1] {
        cur = cur.as_object_mut().unwrap().entry(key.to_string()).or_insert(json!({}));
    }
    cur[path[path.len() - 1]] = value;
    base
}

fn without(mut base: Value, path: &[&str]) -> Value {
    let mut cur = &mut base;
    for key in &path[..path.len() - 1] {
        cur = &mut cur[*key];
    }
    cur.as_object_mut().unwrap().remove(path[path.len() - 1]);
    base
}

fn rcred(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "regcred.dev/v1beta1", "kind": "RegistryCredential", "metadata": {"name": name}, "spec": spec})
}

fn crcred(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "regcred.dev/v1beta1", "kind": "ClusterRegistryCredential", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_a_message_naming_the_problem() {
    let client = admin().await;
    let ns = "invalid";
    create_namespace(&client, ns).await;
    let cluster_ok = with(basic_spec(), &["namespaceSelector"], json!({"matchLabels": {"team": "a"}}));
    let cases: Vec<(&str, Value, &[&str])> = vec![
        ("no provider", rcred("no-provider", with(basic_spec(), &["provider"], json!({}))), &["exactly one provider"]),
        (
            "two providers",
            rcred("two-providers", with(basic_spec(), &["provider", "ecr"], json!({"region": "eu-west-1"}))),
            &["exactly one provider"],
        ),
        (
            "secret name not a DNS-1123 subdomain",
            rcred("bad-secret-name", with(basic_spec(), &["secret", "name"], json!("Pull_Secret"))),
            &["spec.secret.name"],
        ),
        (
            "empty secret name",
            rcred("empty-secret-name", with(basic_spec(), &["secret", "name"], json!(""))),
            &["spec.secret.name"],
        ),
        (
            "negative interval",
            rcred("negative-interval", with(basic_spec(), &["refresh", "interval"], json!("-5m"))),
            &["spec.refresh.interval"],
        ),
        (
            "zero renewBefore",
            rcred("zero-renew", with(basic_spec(), &["refresh", "renewBefore"], json!("0s"))),
            &["spec.refresh.renewBefore", "positive duration"],
        ),
        (
            "malformed duration",
            rcred("bad-duration", with(basic_spec(), &["refresh", "interval"], json!("ten minutes"))),
            &["spec.refresh.interval"],
        ),
        (
            "namespaced source Secret in another namespace",
            rcred(
                "foreign-secret",
                with(basic_spec(), &["provider", "basic", "secretRef", "namespace"], json!("kube-system")),
            ),
            &["spec.provider.basic.secretRef", "reads only from its own namespace"],
        ),
        (
            "namespaced ServiceAccount in another namespace",
            rcred(
                "foreign-sa",
                json!({
                    "provider": {"ecr": {"region": "eu-west-1", "auth": {"serviceAccountRef": {"name": "puller", "namespace": "other"}}}},
                    "secret": {"name": "pull"}
                }),
            ),
            &["serviceAccountRef", "reads only from its own namespace"],
        ),
        (
            "cluster-only field on the namespaced kind",
            rcred("cluster-field", with(basic_spec(), &["namespaceSelector"], json!({}))),
            &["spec.namespaceSelector", "not declared in schema"],
        ),
        (
            "cluster credential without target namespaces",
            crcred("no-targets", basic_spec()),
            &["namespaceSelector or namespaces"],
        ),
        (
            "bad registry host",
            rcred(
                "bad-registry",
                with(basic_spec(), &["provider", "basic", "registry"], json!("https://registry.example.com/")),
            ),
            &["spec.provider.basic.registry"],
        ),
        (
            "reserved managed-by label",
            rcred(
                "reserved-label",
                with(basic_spec(), &["secret", "labels"], json!({"app.kubernetes.io/managed-by": "me"})),
            ),
            &["app.kubernetes.io/managed-by is reserved"],
        ),
        (
            "ECR with both region and regions",
            rcred(
                "two-region-forms",
                json!({"provider": {"ecr": {"region": "eu-west-1", "regions": ["us-west-2"]}}, "secret": {"name": "pull"}}),
            ),
            &["set exactly one of region or regions"],
        ),
        (
            "ECR without a region",
            rcred("no-region", json!({"provider": {"ecr": {}}, "secret": {"name": "pull"}})),
            &["set exactly one of region or regions"],
        ),
        (
            "ECR with a malformed region in regions",
            rcred(
                "bad-regions",
                json!({"provider": {"ecr": {"regions": ["eu-west-1", "Mars"]}}, "secret": {"name": "pull"}}),
            ),
            &["spec.provider.ecr.regions[1]"],
        ),
        (
            "two AWS identities",
            rcred(
                "two-identities",
                json!({
                    "provider": {"ecr": {"region": "eu-west-1", "auth": {"ambient": {}, "secretRef": {"name": "aws"}}}},
                    "secret": {"name": "pull"}
                }),
            ),
            &["at most one of secretRef, serviceAccountRef or ambient"],
        ),
        (
            "ACR without identity",
            rcred(
                "acr-no-identity",
                json!({
                    "provider": {"acr": {"registry": "r.azurecr.io", "tenantId": "t", "auth": {}}},
                    "secret": {"name": "pull"}
                }),
            ),
            &["exactly one of workloadIdentity, managedIdentity or servicePrincipal"],
        ),
        (
            "ServiceAccount all with names",
            rcred("sa-all-and-names", with(basic_spec(), &["serviceAccounts"], json!({"all": true, "names": ["x"]}))),
            &["all: true cannot be combined"],
        ),
        (
            "unknown deletion policy",
            rcred("bad-policy", with(basic_spec(), &["deletionPolicy"], json!("Keep"))),
            &["spec.deletionPolicy", "Unsupported value"],
        ),
        (
            "missing secret",
            rcred("missing-secret", without(basic_spec(), &["secret"])),
            &["spec.secret", "Required value"],
        ),
        (
            "bad namespace name in cluster list",
            crcred("bad-ns-list", with(cluster_ok.clone(), &["excludeNamespaces"], json!(["Kube_System"]))),
            &["spec.excludeNamespaces"],
        ),
        (
            "harbor without projects",
            rcred(
                "harbor-no-projects",
                json!({
                    "provider": {"harbor": {"url": "https://harbor.example.com", "projects": [], "auth": {"secretRef": {"name": "h"}}}},
                    "secret": {"name": "pull"}
                }),
            ),
            &["spec.provider.harbor.projects"],
        ),
    ];
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for (what, obj, needles) in &cases {
        let scope = (obj["kind"] == "RegistryCredential").then_some(ns);
        match apply(&client, scope, obj).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(e) => {
                let msg = e.to_string();
                for needle in needles.iter() {
                    if !msg.contains(needle) {
                        failures.push(format!("{what}: error does not mention {needle:?}: {msg}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The same objects made valid are accepted, so the rejections above are
    // about the named problem and nothing else.
    apply(&client, Some(ns), &rcred("valid", basic_spec())).await.expect("valid RegistryCredential");
    apply(
        &client,
        None,
        &crcred(
            "valid-cluster",
            with(cluster_ok, &["provider", "basic", "secretRef", "namespace"], json!("regcred-system")),
        ),
    )
    .await
    .expect("valid ClusterRegistryCredential");
}

#[test]
fn kubectl_explain_prints_the_field_docs() {
    let cp = regcred_testenv::shared();
    // The apiserver publishes a new CRD's OpenAPI schema shortly after the
    // CRD is Established.
    let mut out = cp.kubectl().args(["explain", "registrycredential.spec.provider"]).output().unwrap();
    for _ in 0..60 {
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        out = cp.kubectl().args(["explain", "registrycredential.spec.provider"]).output().unwrap();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kubectl explain failed: {}", String::from_utf8_lossy(&out.stderr));
    for needle in ["Set exactly one provider", "ecr", "ecrPublic", "google", "acr", "harbor", "basic", "Amazon ECR"] {
        assert!(text.contains(needle), "kubectl explain output lacks {needle:?}:\n{text}");
    }
    let out = cp.kubectl().args(["explain", "clusterregistrycredential.spec.namespaceSelector"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("matches"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test]
async fn rbac_is_enforced_for_service_account_clients() {
    let cp = regcred_testenv::shared();
    let client = cp.client().await.unwrap();
    create_namespace(&client, "rbac").await;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "tenant"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), "rbac").create(&PostParams::default(), &sa).await.unwrap();
    let tenant = cp.service_account_client("rbac", "tenant").await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(tenant.clone(), "rbac");
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("expected 403 before any Role, got {other:?}"),
    }
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "read-secrets", "namespace": "rbac"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "read-secrets", "namespace": "rbac"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": "rbac"}]
    });
    let pp = PatchParams::apply("regcred-test");
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), "rbac");
    roles.patch("read-secrets", &pp, &Patch::Apply(&role)).await.unwrap();
    let rbs: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(client.clone(), "rbac");
    rbs.patch("read-secrets", &pp, &Patch::Apply(&binding)).await.unwrap();
    // RBAC changes propagate through the authorizer's cache.
    let mut ok = false;
    for _ in 0..50 {
        if secrets.list(&ListParams::default()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the RoleBinding did not grant list secrets");
    let other: Api<Secret> = Api::namespaced(tenant, "default");
    assert!(other.list(&ListParams::default()).await.is_err(), "the Role leaked outside its namespace");
}

#[tokio::test]
async fn controller_manager_creates_default_service_accounts_and_finishes_namespace_deletion() {
    let client = admin().await;
    create_namespace(&client, "kcm").await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "kcm");
    let mut found = false;
    for _ in 0..100 {
        if sas.get_opt("default").await.unwrap().is_some() {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found, "no default ServiceAccount appeared: is kube-controller-manager running?");
    let namespaces: Api<Namespace> = Api::all(client);
    namespaces.delete("kcm", &DeleteParams::default()).await.unwrap();
    let mut gone = false;
    for _ in 0..300 {
        if namespaces.get_opt("kcm").await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "namespace kcm stayed Terminating");
}

#[test]
fn envtest_assets_script_prints_a_directory_with_all_binaries() {
    let dir = regcred_testenv::assets_dir().unwrap();
    for b in ["kube-apiserver", "etcd", "kubectl", "kube-controller-manager"] {
        assert!(Path::new(&dir).join(b).exists(), "{b} missing in {}", dir.display());
    }
}
