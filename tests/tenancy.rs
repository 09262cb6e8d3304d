//! Tenancy: a namespaced `RegistryCredential` is confined to its namespace.
//! It cannot read another namespace's Secret, write outside its namespace,
//! use the operator's own cloud identity, or adopt or overwrite a Secret it
//! does not manage. Each is attempted and refused. Then no leaks: every
//! secret value used is searched for in the operator's debug log, Events,
//! status, metrics and error messages.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use serde_json::{Value, json};

const REGISTRY: &str = "registry.example.com";
const TENANT: &str = "tenant-a";
const VICTIM: &str = "tenant-b";
const VICTIM_PASSWORD: &str = "tenancy-victim-password-91c2";
const TENANT_PASSWORD: &str = "tenancy-tenant-password-5d7e";
const PLATFORM_PASSWORD: &str = "tenancy-platform-password-0b44";
const UNMANAGED_PASSWORD: &str = "tenancy-unmanaged-password-a8f1";
const FORGED_PASSWORD: &str = "tenancy-forged-password-33de";

fn rcred(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "regcred.dev/v1beta1", "kind": "RegistryCredential",
        "metadata": {"name": name, "namespace": TENANT}, "spec": spec})
}

async fn try_apply(client: &Client, obj: &Value) -> Result<RegistryCredential, kube::Error> {
    let name = obj["metadata"]["name"].as_str().unwrap();
    Api::<RegistryCredential>::namespaced(client.clone(), TENANT)
        .patch(name, &PatchParams::apply("regcred-test").force(), &Patch::Apply(obj))
        .await
}

fn refused(what: &str, result: Result<RegistryCredential, kube::Error>, needle: &str) {
    match result {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => assert!(e.to_string().contains(needle), "{what}: error does not mention {needle:?}: {e}"),
    }
}

#[tokio::test]
async fn a_namespaced_credential_is_confined_and_nothing_leaks() {
    let client = setup().await;
    create_namespace(&client, TENANT, &[("tenancy", "yes")]).await;
    create_namespace(&client, VICTIM, &[("tenancy", "yes")]).await;
    put_login(&client, VICTIM, "victim-login", "victim", VICTIM_PASSWORD).await;
    put_login(&client, TENANT, "tenant-login", "tenant", TENANT_PASSWORD).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), TENANT);

    // 1. Reading another namespace's Secret.
    // By naming the namespace: refused at apply time.
    let mut spec = basic_spec(REGISTRY, "victim-login", "stolen-pull");
    spec["provider"]["basic"]["secretRef"]["namespace"] = json!(VICTIM);
    refused("secretRef into another namespace", try_apply(&client, &rcred("steal-ns", spec)).await, "own namespace");
    // By name alone: looked up in the tenant's own namespace only.
    try_apply(&client, &rcred("steal-name", basic_spec(REGISTRY, "victim-login", "stolen-pull"))).await.unwrap();
    let status = wait_for_reason(&rcreds, "steal-name", "SourceSecretNotFound").await;
    assert!(status.conditions[0].message.contains(&format!("{TENANT}/victim-login not found")), "{status:?}");
    assert!(get_secret(&client, TENANT, "stolen-pull").await.is_none(), "a Secret was written from another namespace");
    // A ServiceAccount of another namespace (web identity): refused at apply time.
    let sa_spec = json!({"provider": {"ecr": {"region": "eu-west-1",
        "auth": {"serviceAccountRef": {"name": "default", "namespace": VICTIM}}}}, "secret": {"name": "x"}});
    refused(
        "serviceAccountRef into another namespace",
        try_apply(&client, &rcred("steal-sa", sa_spec)).await,
        "own namespace",
    );

    // 2. Writing outside its namespace.
    let mut spec = basic_spec(REGISTRY, "tenant-login", "tenant-pull");
    spec["namespaces"] = json!([VICTIM]);
    refused("namespaces on a RegistryCredential", try_apply(&client, &rcred("spread", spec)).await, "not declared");
    let mut spec = basic_spec(REGISTRY, "tenant-login", "tenant-pull");
    spec["namespaceSelector"] = json!({});
    refused(
        "namespaceSelector on a RegistryCredential",
        try_apply(&client, &rcred("spread", spec)).await,
        "not declared",
    );
    let spec = basic_spec(REGISTRY, "tenant-login", "tenant-b/pull");
    refused(
        "a Secret name with a namespace in it",
        try_apply(&client, &rcred("spread", spec)).await,
        "spec.secret.name",
    );
    // A RegistryCredential created in one namespace claiming another in its metadata: refused by the API server.
    let mut obj = rcred("spread", basic_spec(REGISTRY, "tenant-login", "tenant-pull"));
    obj["metadata"]["namespace"] = json!(VICTIM);
    refused("metadata.namespace of another namespace", try_apply(&client, &obj).await, "does not match");
    // The legitimate one writes into its own namespace only.
    let mut spec = basic_spec(REGISTRY, "tenant-login", "tenant-pull");
    spec["serviceAccounts"] = json!({"all": true});
    try_apply(&client, &rcred("own", spec)).await.unwrap();
    wait_for_login(&client, TENANT, "tenant-pull", REGISTRY, "tenant", TENANT_PASSWORD).await;
    wait_for_pull_secret(&client, TENANT, "default", "tenant-pull", true).await;
    let status = wait_for_reason(&rcreds, "own", "Synced").await;
    assert_eq!(status.targets.as_ref().unwrap().desired, 1);
    assert!(get_secret(&client, VICTIM, "tenant-pull").await.is_none(), "a Secret was written outside the namespace");
    assert!(!pull_secret_names(&client, VICTIM, "default").await.contains(&"tenant-pull".to_string()));

    // 3. The operator's ambient cloud identity, for every cloud provider.
    let ambient: Vec<(&str, Value)> = vec![
        ("ecr-ambient", json!({"ecr": {"region": "eu-west-1", "auth": {"ambient": {}}}})),
        ("ecr-default", json!({"ecr": {"region": "eu-west-1"}})),
        ("ecr-public-ambient", json!({"ecrPublic": {"auth": {"ambient": {}}}})),
        ("google-ambient", json!({"google": {"registries": ["gcr.io"], "auth": {"ambient": {}}}})),
        ("google-default", json!({"google": {"registries": ["gcr.io"]}})),
        ("acr-managed", json!({"acr": {"registry": "r.azurecr.io", "tenantId": "t", "auth": {"managedIdentity": {}}}})),
        (
            "acr-operator-wi",
            json!({"acr": {"registry": "r.azurecr.io", "tenantId": "t", "auth": {"workloadIdentity": {"clientId": "c"}}}}),
        ),
    ];
    for (name, provider) in &ambient {
        try_apply(&client, &rcred(name, json!({"provider": provider, "secret": {"name": format!("{name}-pull")}})))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, _) in &ambient {
        let status = wait_for_reason(&rcreds, name, "AmbientIdentityForbidden").await;
        assert!(status.conditions[0].message.contains("operator's own identity"), "{name}: {status:?}");
        assert!(get_secret(&client, TENANT, &format!("{name}-pull")).await.is_none(), "{name} wrote a Secret");
    }

    // 4. Adopting or overwriting a Secret it does not manage.
    // An unmanaged Secret with the target name.
    put_login(&client, TENANT, "unmanaged", "someone", UNMANAGED_PASSWORD).await;
    try_apply(&client, &rcred("adopt", basic_spec(REGISTRY, "tenant-login", "unmanaged"))).await.unwrap();
    let status = wait_for_reason(&rcreds, "adopt", "SecretConflict").await;
    assert!(status.conditions[0].message.contains("not managed by regcred"), "{status:?}");
    // A Secret of a ClusterRegistryCredential in the tenant's namespace.
    put_login(&client, CLUSTER_NS, "tenancy-platform-login", "platform", PLATFORM_PASSWORD).await;
    let mut spec = basic_spec(REGISTRY, "tenancy-platform-login", "platform-pull");
    spec["namespaceSelector"] = json!({"matchLabels": {"tenancy": "yes"}});
    apply_crcred(&client, "tenancy-platform", spec).await;
    wait_for_login(&client, TENANT, "platform-pull", REGISTRY, "platform", PLATFORM_PASSWORD).await;
    try_apply(&client, &rcred("hijack", basic_spec(REGISTRY, "tenant-login", "platform-pull"))).await.unwrap();
    let status = wait_for_reason(&rcreds, "hijack", "SecretConflict").await;
    assert!(status.conditions[0].message.contains("managed by regcred for ClusterRegistryCredential/tenancy-platform"));
    // A Secret with a forged managed-by label but no owner annotation.
    let forged: Secret = serde_json::from_value(json!({
        "metadata": {"name": "forged", "namespace": TENANT, "labels": {"app.kubernetes.io/managed-by": "regcred"}},
        "stringData": {"username": "x", "password": FORGED_PASSWORD}
    }))
    .unwrap();
    regcred_testenv::operator::record_secret(FORGED_PASSWORD);
    Api::<Secret>::namespaced(client.clone(), TENANT)
        .patch("forged", &PatchParams::apply("regcred-test").force(), &Patch::Apply(&forged))
        .await
        .unwrap();
    try_apply(&client, &rcred("forge", basic_spec(REGISTRY, "tenant-login", "forged"))).await.unwrap();
    let status = wait_for_reason(&rcreds, "forge", "SecretConflict").await;
    assert!(status.conditions[0].message.contains("forged"), "{status:?}");
    // Nothing was overwritten, and deleting the refused credentials deletes nothing.
    for name in ["adopt", "hijack", "forge"] {
        rcreds.delete(name, &Default::default()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, pw) in [("unmanaged", UNMANAGED_PASSWORD), ("forged", FORGED_PASSWORD)] {
        let s = get_secret(&client, TENANT, name).await.unwrap_or_else(|| panic!("{name} was deleted"));
        assert_eq!(s.data.unwrap()["password"].0, pw.as_bytes(), "{name} was overwritten");
    }
    let s = get_secret(&client, TENANT, "platform-pull").await.expect("the cluster credential's Secret was deleted");
    assert_eq!(login_in(&s, REGISTRY), Some(("platform".into(), PLATFORM_PASSWORD.into())));
    wait_for_reason(&Api::<ClusterRegistryCredential>::all(client.clone()), "tenancy-platform", "Synced").await;

    // 5. No leaks.
    let secrets = [VICTIM_PASSWORD, TENANT_PASSWORD, PLATFORM_PASSWORD, UNMANAGED_PASSWORD, FORGED_PASSWORD];
    let mut places: Vec<(String, String)> = Vec::new();
    places.push(("operator log (debug)".into(), operator().log_text()));
    places.push(("metrics".into(), operator().metrics().unwrap()));
    let events = Api::<Event>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    places.push(("Events".into(), serde_json::to_string(&events.items).unwrap()));
    let all_rcreds = Api::<RegistryCredential>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    for r in &all_rcreds.items {
        places.push((
            format!("status of {}/{}", r.namespace().unwrap(), r.name_any()),
            serde_json::to_string(&r.status).unwrap(),
        ));
    }
    let all_crcreds = Api::<ClusterRegistryCredential>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    for r in &all_crcreds.items {
        places.push((format!("status of {}", r.name_any()), serde_json::to_string(&r.status).unwrap()));
    }
    assert!(events.items.len() > 3, "no Events to search: {}", events.items.len());
    assert!(places[0].1.contains("DEBUG") || places[0].1.contains("debug"), "the operator does not log at debug level");
    let mut hits = Vec::new();
    for (place, text) in &places {
        for secret in secrets {
            if text.contains(secret) {
                hits.push(format!("{place} contains {}…", &secret[..12]));
            }
        }
    }
    eprintln!("leak check: {} places searched for {} secret values", places.len(), secrets.len());
    assert!(hits.is_empty(), "{}", hits.join("\n"));
}
