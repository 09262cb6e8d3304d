//! Pods on a real node (kubelet + containerd, `regcred_testenv::node`) pull
//! private images with the Secrets regcred writes.
//!
//! For each provider, a registry that only that provider's credentials can
//! read (a real `docker-registry` in token-auth mode behind a token service
//! that accepts exactly what the provider's stand-in issued and still
//! considers valid) serves the test image under the host the credential
//! names. containerd reaches it through `hosts.toml`, so the kubelet
//! matches the pull Secret against the real-looking host (for example
//! `123456789012.dkr.ecr.us-east-1.amazonaws.com`) as it would in a cloud.
//! A Deployment running as the patched `default` ServiceAccount reaches
//! Running in a target namespace; the same Deployment in a namespace the
//! credential does not target is refused with a 401.
//!
//! Then: rotation under the kubelet (credentials living 8 s, scale-ups
//! with `Always` after each rotation, and an `IfNotPresent` Pod starting
//! from the cache after the first credential expired, because the Secret
//! kept its UID), and a pull Secret deleted under a live Deployment.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use regcred::api::RegistryCredential;
use regcred_testenv::acr_standin::AzureStandIn;
use regcred_testenv::aws::Moto;
use regcred_testenv::google_standin::GoogleStandIn;
use regcred_testenv::harbor_standin::{self, HarborStandin};
use regcred_testenv::node::workload::{
    apply_deployment, refused_for_credentials, scale, wait_pull_refused, wait_running,
};
use regcred_testenv::node::{self, Endpoint, Node, pod_events};
use regcred_testenv::operator::record_secret;
use regcred_testenv::registry::TEST_IMAGE;
use regcred_testenv::tokenauth::{TokenRegistry, TokenService, Validator, start_token_registry};
use serde_json::{Value, json};

const PUSHER: &str = "node-pusher";
const PUSH_PASS: &str = "node-push-password";
/// How long a Pod may take to start, pull included (2–4 s when idle).
const START: Duration = Duration::from_secs(90);

fn node() -> &'static Node {
    node::shared()
}

/// A registry behind a token service that accepts `validator`'s
/// credentials (and the pusher's), served to the node as `host`.
struct Private {
    tokens: TokenService,
    registry: TokenRegistry,
}

fn private_registry(validator: Validator) -> Private {
    record_secret(PUSH_PASS);
    let tokens =
        TokenService::start(Arc::new(move |u: &str, p: &str| (u == PUSHER && p == PUSH_PASS) || validator(u, p)))
            .unwrap_or_else(|e| panic!("{e:#}"));
    let registry = start_token_registry(control_plane().process_group(), &tokens, PUSHER, PUSH_PASS)
        .unwrap_or_else(|e| panic!("{e:#}"));
    Private { tokens, registry }
}

/// Applies `spec` as RegistryCredential `cred` in `ns` (which holds its
/// source Secrets), waits until it is Synced and `default` lists its
/// Secret, then shows a Deployment of `image` running there and refused
/// with a 401 in `NS-other`, which the credential does not target.
async fn prove_pods_pull(client: &Client, ns: &str, spec: Value, image: &str) {
    node();
    let other = format!("{ns}-other");
    create_namespace(client, &other, &[]).await;
    let pull = spec["secret"]["name"].as_str().unwrap().to_string();
    apply_rcred(client, ns, "cred", spec).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    wait_for_reason(&rcreds, "cred", "Synced").await;
    wait_for_pull_secret(client, ns, "default", &pull, true).await;

    let started = Instant::now();
    apply_deployment(client, ns, "app", image, "Always", 1).await.unwrap();
    apply_deployment(client, &other, "app", image, "Always", 1).await.unwrap();
    let pods = wait_running(client, ns, "app", 1, START).await.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{ns}: a Pod pulling {image} ran {:?} after the Deployment was applied", started.elapsed());
    let spec = pods[0].spec.as_ref().unwrap();
    let listed: Vec<&str> = spec.image_pull_secrets.iter().flatten().map(|r| r.name.as_str()).collect();
    assert_eq!(listed, [pull.as_str()], "the Pod got the Secret from its ServiceAccount");
    let why = wait_pull_refused(client, &other, "app", START).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(refused_for_credentials(&why), "{other}: expected the registry's refusal, got: {why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_credential_pods_pull() {
    let client = setup().await;
    record_secret("node-basic-password");
    let r = private_registry(Arc::new(|u: &str, p: &str| u == "node-basic" && p == "node-basic-password"));
    // A Docker Hub-like name for the registry, served by the local one.
    let host = "registry.basic.regcred.test";
    node().add_registry(host, &Endpoint::Http(r.registry.host.clone())).unwrap();
    create_namespace(&client, "node-basic", &[]).await;
    put_login(&client, "node-basic", "login", "node-basic", "node-basic-password").await;
    let spec = json!({"provider": {"basic": {"registry": host, "secretRef": {"name": "login"}}},
        "secret": {"name": "basic-pull"}});
    prove_pods_pull(&client, "node-basic", spec, &format!("{host}/{TEST_IMAGE}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_credential_pods_pull() {
    let client = setup().await;
    let moto = Moto::start(control_plane().process_group()).unwrap_or_else(|e| panic!("{e:#}"));
    let r = private_registry(moto.validator());
    let host = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
    node().add_registry(host, &Endpoint::Http(r.registry.host.clone())).unwrap();
    create_namespace(&client, "node-ecr", &[]).await;
    record_secret("node-ecr-secret-access-key");
    let keys = json!({"access-key-id": "AKIANODETEST00000001", "secret-access-key": "node-ecr-secret-access-key"});
    put_secret(&client, "node-ecr", "aws", keys).await;
    let spec = json!({"provider": {"ecr": {"region": "us-east-1", "endpoint": moto.endpoint(),
        "auth": {"secretRef": {"name": "aws"}}}}, "secret": {"name": "ecr-pull"}});
    prove_pods_pull(&client, "node-ecr", spec, &format!("{host}/{TEST_IMAGE}")).await;
}

fn google() -> &'static GoogleStandIn {
    static GOOGLE: OnceLock<GoogleStandIn> = OnceLock::new();
    GOOGLE.get_or_init(|| GoogleStandIn::start().unwrap_or_else(|e| panic!("{e:#}")))
}

/// A registry accepting `oauth2accesstoken` with a live token of `email`,
/// served to the node as `host`; and a Secret `gsa-key` in `ns` with a key
/// of `email` whose tokens live `lifetime`.
async fn google_setup(client: &Client, ns: &str, email: &'static str, host: &str, lifetime: Duration) -> Private {
    let g = google();
    let r = private_registry(Arc::new(move |u: &str, p: &str| {
        u == "oauth2accesstoken" && g.principal_of(p).is_some_and(|who| who == email)
    }));
    node().add_registry(host, &Endpoint::Http(r.registry.host.clone())).unwrap();
    let key = g.create_key(email, lifetime).unwrap_or_else(|e| panic!("{e:#}"));
    create_namespace(client, ns, &[]).await;
    put_secret(client, ns, "gsa-key", json!({"credentials.json": key.json})).await;
    r
}

fn google_spec(host: &str, pull: &str) -> Value {
    json!({"provider": {"google": {"registries": [host], "auth": {"secretRef": {"name": "gsa-key"}}}},
        "secret": {"name": pull}})
}

#[tokio::test(flavor = "multi_thread")]
async fn google_credential_pods_pull() {
    let client = setup().await;
    let host = "europe-docker.pkg.dev";
    let _r = google_setup(&client, "node-google", "puller@regcred-test.iam.gserviceaccount.com", host, HOUR).await;
    prove_pods_pull(&client, "node-google", google_spec(host, "gar-pull"), &format!("{host}/{TEST_IMAGE}")).await;
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread")]
async fn acr_credential_pods_pull() {
    let client = setup().await;
    // The stand-in serves Entra, the exchange and, over HTTPS with its own
    // CA, the registry's /v2/ (proxied to the token-auth registry).
    let az = AzureStandIn::start().unwrap_or_else(|e| panic!("{e:#}"));
    let r = private_registry(az.validator());
    az.set_upstream_registry(&r.registry.host);
    let host = az.host();
    node().add_registry(&host, &Endpoint::Https { host: host.clone(), ca_pem: az.ca_pem().to_string() }).unwrap();
    let tenant = "tenant-node";
    az.add_service_principal(tenant, "node-app", "node-sp-secret");
    az.grant_acr_pull(tenant, "node-app");
    create_namespace(&client, "node-acr", &[]).await;
    record_secret("node-sp-secret");
    put_secret(&client, "node-acr", "sp", json!({"client-id": "node-app", "client-secret": "node-sp-secret"})).await;
    let spec = json!({"provider": {"acr": {
        "registry": host, "tenantId": tenant,
        "auth": {"servicePrincipal": {"secretRef": {"name": "sp"}}},
        "authorityHost": az.authority_host(), "caBundle": az.ca_pem(),
    }}, "secret": {"name": "acr-pull"}});
    prove_pods_pull(&client, "node-acr", spec, &format!("{host}/{TEST_IMAGE}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn harbor_credential_pods_pull() {
    let client = setup().await;
    let harbor = HarborStandin::start(harbor_standin::Options {
        admins: vec![("admin".into(), "node-harbor-admin-password".into())],
        projects: vec!["regcred".into()],
        tls: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let r = private_registry(harbor.validator());
    harbor.proxy_registry(&r.registry.host);
    let host = harbor.host();
    let ca = harbor.ca_pem().expect("a CA for the HTTPS stand-in").to_string();
    node().add_registry(&host, &Endpoint::Https { host: host.clone(), ca_pem: ca.clone() }).unwrap();
    create_namespace(&client, "node-harbor", &[]).await;
    put_login(&client, "node-harbor", "harbor-admin", "admin", "node-harbor-admin-password").await;
    let spec = json!({"provider": {"harbor": {"url": harbor.url(), "projects": ["regcred"],
        "auth": {"secretRef": {"name": "harbor-admin"}}, "caBundle": ca}}, "secret": {"name": "harbor-pull"}});
    prove_pods_pull(&client, "node-harbor", spec, &format!("{host}/{TEST_IMAGE}")).await;
}

/// Server-side applies a source Secret with `string_data`.
async fn put_secret(client: &Client, ns: &str, name: &str, string_data: Value) {
    let s: Secret =
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "stringData": string_data}))
            .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("regcred-test").force(), &Patch::Apply(&s))
        .await
        .unwrap();
}

/// The password of the pull Secret's only entry.
fn password_of(secret: &Secret) -> String {
    let data = &secret.data.as_ref().unwrap()[".dockerconfigjson"].0;
    let v: Value = serde_json::from_slice(data).unwrap();
    let (_, entry) = v["auths"].as_object().unwrap().iter().next().unwrap();
    entry["password"].as_str().unwrap().to_string()
}

/// Whether the kubelet started the Pod's container from its cache, as its
/// Events say ("already present on machine"), rather than pulling.
async fn started_from_cache(client: &Client, ns: &str, pod: &str) -> bool {
    let events = pod_events(client, ns, pod).await;
    let cached = events.iter().any(|e| e.contains("already present on machine"));
    assert!(cached || events.iter().any(|e| e.starts_with("Pulling:")), "{ns}/{pod}: {events:?}");
    cached
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_keep_pulling_across_rotations_and_start_from_cache_after_expiry() {
    let client = setup().await;
    let ns = "node-rotate";
    let host = "us-docker.pkg.dev";
    let lifetime = Duration::from_secs(8);
    let r = google_setup(&client, ns, "rotating@regcred-test.iam.gserviceaccount.com", host, lifetime).await;
    apply_rcred(&client, ns, "cred", google_spec(host, "rot-pull")).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    wait_for_reason(&rcreds, "cred", "Synced").await;
    wait_for_pull_secret(&client, ns, "default", "rot-pull", true).await;
    let first = get_secret(&client, ns, "rot-pull").await.unwrap();
    let uid = first.metadata.uid.clone().unwrap();
    let first_token = password_of(&first);
    let first_seen = Instant::now();
    let image = format!("{host}/{TEST_IMAGE}");
    apply_deployment(&client, ns, "app", &image, "Always", 1).await.unwrap();
    wait_running(&client, ns, "app", 1, START).await.unwrap_or_else(|e| panic!("{e:#}"));

    // After each rotation, one more Pod, pulling again (Always).
    let mut token = first_token.clone();
    for round in 1..=3 {
        token = wait_for(&format!("rotation {round} of {ns}/rot-pull"), WAIT, || async {
            let s = get_secret(&client, ns, "rot-pull").await?;
            assert_eq!(s.metadata.uid.as_deref(), Some(uid.as_str()), "rotation replaced the Secret");
            let t = password_of(&s);
            (t != token).then_some(t)
        })
        .await;
        let started = Instant::now();
        let asked = r.tokens.requests();
        scale(&client, ns, "app", 1 + round).await.unwrap();
        wait_running(&client, ns, "app", 1 + round as usize, START).await.unwrap_or_else(|e| panic!("{e:#}"));
        assert!(r.tokens.requests() > asked, "the new Pod's pull logged in to the token service");
        eprintln!(
            "rotation {round}: Pod {} pulled with the new token and ran after {:?}",
            1 + round,
            started.elapsed()
        );
    }
    assert!(first_seen.elapsed() > lifetime, "the first token has expired by now");
    assert!(google().principal_of(&first_token).is_none(), "the stand-in no longer accepts the first token");

    // IfNotPresent on a node that has the image: starts from the cache,
    // because the kubelet recognises the Secret (same UID) that pulled it.
    let asked = r.tokens.requests();
    apply_deployment(&client, ns, "cached", &image, "IfNotPresent", 1).await.unwrap();
    let pods = wait_running(&client, ns, "cached", 1, START).await.unwrap_or_else(|e| panic!("{e:#}"));
    let name = pods[0].metadata.name.clone().unwrap();
    assert!(started_from_cache(&client, ns, &name).await, "the IfNotPresent Pod pulled again");
    assert_eq!(r.tokens.requests(), asked, "no login: the image came from the node's cache");
    assert_eq!(r.tokens.rejected(), 0, "every login of this test's Pods was accepted");
    let last = get_secret(&client, ns, "rot-pull").await.unwrap();
    assert_eq!(last.metadata.uid.as_deref(), Some(uid.as_str()), "the Secret kept its UID across rotations");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_pull_secret_under_a_live_deployment_is_restored_and_pods_run() {
    let client = setup().await;
    let ns = "node-drift";
    record_secret("node-drift-password");
    let r = private_registry(Arc::new(|u: &str, p: &str| u == "drift" && p == "node-drift-password"));
    let host = "registry.drift.regcred.test";
    node().add_registry(host, &Endpoint::Http(r.registry.host.clone())).unwrap();
    create_namespace(&client, ns, &[]).await;
    put_login(&client, ns, "login", "drift", "node-drift-password").await;
    apply_rcred(
        &client,
        ns,
        "cred",
        json!({"provider": {"basic": {"registry": host, "secretRef": {"name": "login"}}},
        "secret": {"name": "drift-pull"}}),
    )
    .await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    wait_for_reason(&rcreds, "cred", "Synced").await;
    wait_for_pull_secret(&client, ns, "default", "drift-pull", true).await;
    let image = format!("{host}/{TEST_IMAGE}");
    apply_deployment(&client, ns, "app", &image, "Always", 1).await.unwrap();
    wait_running(&client, ns, "app", 1, START).await.unwrap_or_else(|e| panic!("{e:#}"));

    // Delete the Secret and scale up at once.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let deleted = Instant::now();
    secrets.delete("drift-pull", &DeleteParams::default()).await.unwrap();
    scale(&client, ns, "app", 4).await.unwrap();
    wait_for("the pull Secret to be restored", WAIT, || async { get_secret(&client, ns, "drift-pull").await }).await;
    let restored = deleted.elapsed();
    let pods = wait_running(&client, ns, "app", 4, START).await.unwrap_or_else(|e| panic!("{e:#}"));
    let all_running = deleted.elapsed();
    let mut refused = 0;
    for p in &pods {
        let events = pod_events(&client, ns, p.metadata.name.as_deref().unwrap()).await;
        if events.iter().any(|e| e.starts_with("Failed:")) {
            refused += 1;
        }
    }
    eprintln!(
        "drift: Secret restored {restored:?} after its deletion; {refused} of the 3 new Pods failed a pull first and recovered by themselves; all 4 Running {all_running:?} after the deletion"
    );
}
