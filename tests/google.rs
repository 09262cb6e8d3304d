//! The `google` provider against local stand-ins of Google's token endpoint,
//! metadata server, STS and IAM Credentials (`regcred_testenv::google_standin`),
//! the real control plane (TokenRequest for workload identity federation),
//! and a real registry behind the Docker token service that accepts exactly
//! the access tokens the stand-ins issued and still consider valid, and only
//! for the principals allowed to pull.
//!
//! The provider reaches the stand-ins only through what a real user
//! configures: `token_uri` inside the service-account key, `tokenUrl` and
//! `impersonate.endpoint` in the spec, URLs inside an external_account
//! configuration, and `GCE_METADATA_HOST` on the operator.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use regcred_testenv::google_standin::{
    AttributeCondition, Endpoint, GoogleStandIn, JwtSigner, OidcPoolProvider, federated_principal, fetch_cluster_oidc,
    generate_key,
};
use regcred_testenv::registry::skopeo_inspect;
use regcred_testenv::tokenauth::{TokenRegistry, TokenService, start_token_registry, write_authfile};
use serde_json::{Value, json};

const USERNAME: &str = "oauth2accesstoken";
const PUSHER: &str = "pusher";
const PUSH_PASS: &str = "google-test-push-pass";
const POOL: &str =
    "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/regcred-test/providers/envtest";
/// A provider of the same cluster whose attribute condition admits only the
/// ServiceAccounts of namespace `g-cond-in`.
const POOL_COND: &str = "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/regcred-test/providers/envtest-cond";
const COND_PREFIX: &str = "system:serviceaccount:g-cond-in:";
const HOUR: Duration = Duration::from_secs(3600);

/// The Google stand-ins, started before the operator (which gets
/// `GCE_METADATA_HOST` pointing at them). The pool providers trust the
/// control plane's ServiceAccount issuer with the JWK Set it publishes, as
/// Google's guide for clusters whose issuer it cannot reach sets them up.
fn google() -> &'static GoogleStandIn {
    static GOOGLE: OnceLock<GoogleStandIn> = OnceLock::new();
    GOOGLE.get_or_init(|| {
        let g = GoogleStandIn::start().unwrap_or_else(|e| panic!("{e:#}"));
        let issuer = g.add_pool_provider_for_cluster(POOL, HOUR, control_plane()).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(issuer, SA_ISSUER);
        let conditioned = OidcPoolProvider::for_cluster(control_plane(), HOUR)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .with_condition(AttributeCondition::SubjectStartsWith(vec![COND_PREFIX.into()]));
        g.add_oidc_pool_provider(POOL_COND, conditioned).unwrap_or_else(|e| panic!("{e:#}"));
        g
    })
}

/// The control plane's ServiceAccount token issuer.
const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The registry and its token service, shared by the tests of this binary.
struct Registry {
    tokens: TokenService,
    registry: TokenRegistry,
    /// Principals whose valid tokens the token service accepts.
    readers: Arc<Mutex<HashSet<String>>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let g: &'static GoogleStandIn = google();
        let readers: Arc<Mutex<HashSet<String>>> = Arc::default();
        let allowed = readers.clone();
        let tokens = TokenService::start(Arc::new(move |user: &str, pass: &str| {
            (user == PUSHER && pass == PUSH_PASS)
                || (user == USERNAME && g.principal_of(pass).is_some_and(|p| allowed.lock().unwrap().contains(&p)))
        }))
        .unwrap_or_else(|e| panic!("{e:#}"));
        let registry = start_token_registry(control_plane().process_group(), &tokens, PUSHER, PUSH_PASS)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Registry { tokens, registry, readers }
    })
}

fn allow_pull(principal: &str) {
    registry().readers.lock().unwrap().insert(principal.to_string());
}

/// The operator of this binary runs with `GCE_METADATA_HOST` set to the
/// metadata stand-in, as Google's libraries document.
async fn gsetup() -> Client {
    set_operator_env(vec![("GCE_METADATA_HOST".into(), google().metadata_host())]);
    registry();
    setup().await
}

async fn put_credentials(client: &Client, ns: &str, name: &str, credentials_json: &str) {
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"credentials.json": credentials_json}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("regcred-test").force(), &Patch::Apply(&s))
        .await
        .expect("write credentials Secret");
}

async fn create_service_account(client: &Client, ns: &str, name: &str) {
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), ns).create(&PostParams::default(), &sa).await.unwrap();
}

fn google_spec(auth: Value, pull_secret: &str) -> Value {
    let mut google = json!({"registries": [registry().registry.host]});
    if !auth.is_null() {
        google["auth"] = auth;
    }
    json!({"provider": {"google": google}, "secret": {"name": pull_secret}})
}

fn impersonating(mut spec: Value, email: &str) -> Value {
    spec["provider"]["google"]["impersonate"] = json!({"serviceAccount": email, "endpoint": google().base_url()});
    spec
}

/// The login for the test registry in a pull Secret.
fn login(secret: &Secret) -> (String, String) {
    login_in(secret, &registry().registry.host).expect("a login for the registry")
}

/// Waits for `ns/name` to hold a token other than `not`, and returns it.
async fn wait_for_token(client: &Client, ns: &str, name: &str, not: Option<&str>) -> String {
    wait_for(&format!("Secret {ns}/{name} with a new token"), WAIT, || async {
        let (user, pass) = login_in(&get_secret(client, ns, name).await?, &registry().registry.host)?;
        assert_eq!(user, USERNAME);
        (Some(pass.as_str()) != not).then_some(pass)
    })
    .await
}

/// `skopeo inspect` of the test image with this login.
async fn pull(password: &str) -> Output {
    static N: AtomicUsize = AtomicUsize::new(0);
    let password = password.to_string();
    let r = registry();
    let (host, image) = (r.registry.host.clone(), r.registry.test_image());
    tokio::task::spawn_blocking(move || {
        let path = std::env::temp_dir().join(format!(
            "regcred-google-auth-{}-{}.json",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        write_authfile(&path, &host, USERNAME, &password).unwrap();
        let out = skopeo_inspect(&path, &image).unwrap_or_else(|e| panic!("{e:#}"));
        let _ = std::fs::remove_file(&path);
        out
    })
    .await
    .unwrap()
}

async fn assert_pulls(password: &str, what: &str) {
    let out = pull(password).await;
    assert!(
        out.status.success(),
        "{what}: pull failed: {}\nstand-in refusals: {:?}",
        String::from_utf8_lossy(&out.stderr),
        google().refusals()
    );
}

async fn assert_refused(password: &str, what: &str) {
    let rejected = registry().tokens.rejected();
    let out = pull(password).await;
    assert!(!out.status.success(), "{what}: the registry accepted the token");
    assert!(registry().tokens.rejected() > rejected, "{what}: the token service did not refuse it");
}

async fn warning_event(client: &Client, ns: &str, name: &str, reason: &str) {
    wait_for(&format!("a {reason} Warning Event"), WAIT, || async {
        let ev = events_for(client, ns, name).await;
        ev.iter().any(|(t, r, _)| t == "Warning" && r == reason).then_some(())
    })
    .await
}

#[tokio::test]
async fn key_tokens_rotate_five_times_while_skopeo_keeps_pulling_and_an_expired_token_is_refused() {
    let client = gsetup().await;
    let g = google();
    let email = "rotator@regcred-test.iam.gserviceaccount.com";
    let key = g.create_key(email, Duration::from_secs(6)).unwrap_or_else(|e| panic!("{e:#}"));
    allow_pull(email);
    create_namespace(&client, "g-rotate", &[]).await;
    put_credentials(&client, "g-rotate", "gsa-key", &key.json).await;
    apply_rcred(&client, "g-rotate", "gar", google_spec(json!({"secretRef": {"name": "gsa-key"}}), "gar-pull")).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "g-rotate");
    let status = wait_for_reason(&rcreds, "gar", "Synced").await;

    // The expiry is the token response's (expires_in 6).
    let refreshed = status.last_refresh_time.expect("lastRefreshTime").0;
    let expires = status.expires_at.expect("expiresAt").0;
    let lifetime = expires.duration_since(refreshed).as_secs_f64();
    assert!((5.0..=7.0).contains(&lifetime), "expiresAt is {lifetime}s after lastRefreshTime, expected about 6s");
    assert_eq!(status.provider.as_deref(), Some("google"));
    assert_eq!(
        status.provider_state,
        Some(json!({"identity": "serviceAccountKey", "serviceAccount": email})),
        "providerState"
    );

    // skopeo pulls with whatever the Secret holds, again and again, while
    // the token rotates at least 5 times. No pull may fail.
    let mut seen: Vec<String> = Vec::new();
    let mut pulls = 0;
    let deadline = Instant::now() + Duration::from_secs(45);
    while seen.len() < 6 {
        assert!(Instant::now() < deadline, "only {} rotations in 45s", seen.len().saturating_sub(1));
        let secret = get_secret(&client, "g-rotate", "gar-pull").await.expect("the pull Secret");
        let (user, pass) = login(&secret);
        assert_eq!(user, USERNAME);
        if seen.last() != Some(&pass) {
            assert!(!seen.contains(&pass), "an old token came back");
            seen.push(pass.clone());
        }
        assert_pulls(&pass, &format!("pull {pulls} with rotation {}", seen.len() - 1)).await;
        pulls += 1;
    }
    eprintln!("{pulls} pulls over {} rotations, none failed", seen.len() - 1);

    // Every published password is an access token the token endpoint issued
    // after verifying the RS256 assertion (not a self-signed JWT).
    for token in &seen {
        assert_eq!(g.issued(token), Some((email.to_string(), Endpoint::Token)));
    }
    assert!(g.grants(email) >= seen.len(), "{} grants for {} tokens", g.grants(email), seen.len());
    assert_eq!(g.token_calls(email), g.grants(email), "refused assertions: {:?}", g.refusals());

    // The first token has expired: the registry really refuses it.
    wait_for("the first token to expire", WAIT, || async { g.principal_of(&seen[0]).is_none().then_some(()) }).await;
    assert_refused(&seen[0], "an expired token").await;
}

#[tokio::test]
async fn a_token_endpoint_outage_keeps_the_last_good_secret_reports_it_and_heals() {
    let client = gsetup().await;
    let g = google();
    let email = "outage@regcred-test.iam.gserviceaccount.com";
    let key = g.create_key(email, Duration::from_secs(12)).unwrap_or_else(|e| panic!("{e:#}"));
    allow_pull(email);
    create_namespace(&client, "g-outage", &[]).await;
    put_credentials(&client, "g-outage", "gsa-key", &key.json).await;
    apply_rcred(&client, "g-outage", "gar", google_spec(json!({"secretRef": {"name": "gsa-key"}}), "gar-pull")).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "g-outage");
    wait_for_reason(&rcreds, "gar", "Synced").await;
    let good = wait_for_token(&client, "g-outage", "gar-pull", None).await;

    // The token endpoint answers 500 at the next refresh (2/3 of 12s).
    g.fail_token_endpoint(email, Some(500));
    let calls = g.token_calls(email);
    let status = wait_for_reason(&rcreds, "gar", "ProviderError").await;
    let ready = &status.conditions[0];
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("HTTP 500"), "{}", ready.message);
    assert!(ready.message.contains(&g.token_uri()), "{}", ready.message);
    assert!(ready.message.contains("last good Secret stays"), "{}", ready.message);
    assert!(g.token_calls(email) > calls);
    let kept = get_secret(&client, "g-outage", "gar-pull").await.expect("the last good Secret");
    assert_eq!(login(&kept), (USERNAME.to_string(), good.clone()));
    assert_pulls(&good, "the kept Secret during the outage").await;
    warning_event(&client, "g-outage", "gar", "ProviderError").await;

    // The endpoint recovers: the Secret heals by itself.
    g.fail_token_endpoint(email, None);
    let healed = wait_for_token(&client, "g-outage", "gar-pull", Some(&good)).await;
    assert_eq!(g.issued(&healed), Some((email.to_string(), Endpoint::Token)));
    wait_for_reason(&rcreds, "gar", "Synced").await;
    wait_for("a Synced Event", WAIT, || async {
        let ev = events_for(&client, "g-outage", "gar").await;
        ev.iter().any(|(t, r, _)| t == "Normal" && r == "Synced").then_some(())
    })
    .await;
    assert_pulls(&healed, "the healed Secret").await;
}

#[tokio::test]
async fn the_metadata_server_serves_cluster_credentials_and_is_refused_to_namespaced_ones() {
    let client = gsetup().await;
    let g = google();
    let node = "gke-operator@regcred-test.iam.gserviceaccount.com";
    g.set_metadata_identity(node, HOUR);
    allow_pull(node);
    create_namespace(&client, "g-amb-target", &[]).await;

    // A ClusterRegistryCredential without auth uses the metadata server.
    let mut spec = google_spec(Value::Null, "gke-pull");
    spec["namespaces"] = json!(["g-amb-target"]);
    apply_crcred(&client, "g-ambient", spec).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let status = wait_for_reason(&crcreds, "g-ambient", "Synced").await;
    assert_eq!(status.provider_state, Some(json!({"identity": "metadataServer"})));
    let token = wait_for_token(&client, "g-amb-target", "gke-pull", None).await;
    assert_eq!(g.issued(&token), Some((node.to_string(), Endpoint::Metadata)));
    assert_pulls(&token, "the metadata server's token").await;

    // A namespaced RegistryCredential may not use the operator's identity.
    create_namespace(&client, "g-amb-tenant", &[]).await;
    let metadata_calls = g.calls(Endpoint::Metadata);
    apply_rcred(&client, "g-amb-tenant", "gke", google_spec(json!({"ambient": {}}), "gke-pull")).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "g-amb-tenant");
    let status = wait_for_reason(&rcreds, "gke", "AmbientIdentityForbidden").await;
    assert!(status.conditions[0].message.contains("--allow-namespaced-ambient-identity"));
    assert!(get_secret(&client, "g-amb-tenant", "gke-pull").await.is_none());
    assert_eq!(g.calls(Endpoint::Metadata), metadata_calls, "the metadata server was asked anyway");

    // Ambient identity plus impersonation: the token is the target's.
    let target = "gar-reader@regcred-test.iam.gserviceaccount.com";
    g.allow_impersonation(node, target, HOUR);
    allow_pull(target);
    let mut spec = impersonating(google_spec(json!({"ambient": {}}), "gke-imp-pull"), target);
    spec["namespaces"] = json!(["g-amb-target"]);
    apply_crcred(&client, "g-ambient-imp", spec).await;
    let status = wait_for_reason(&crcreds, "g-ambient-imp", "Synced").await;
    assert_eq!(status.provider_state, Some(json!({"identity": "metadataServer", "impersonated": target})));
    let token = wait_for_token(&client, "g-amb-target", "gke-imp-pull", None).await;
    assert_eq!(g.issued(&token), Some((target.to_string(), Endpoint::GenerateAccessToken)));
    assert_pulls(&token, "the impersonated token").await;
}

#[tokio::test]
async fn workload_identity_federation_exchanges_the_service_account_token_and_can_impersonate() {
    let client = gsetup().await;
    let g = google();
    let ns = "g-wif";
    create_namespace(&client, ns, &[]).await;
    create_service_account(&client, ns, "puller").await;
    create_service_account(&client, ns, "stranger").await;
    let puller = federated_principal(POOL, "system:serviceaccount:g-wif:puller");
    allow_pull(&puller);
    let federation = |sa: &str| json!({"serviceAccountRef": {"name": sa, "audience": POOL, "tokenUrl": g.sts_url()}});
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);

    // The ServiceAccount's TokenRequest token, exchanged at STS.
    let sts_calls = g.calls(Endpoint::Sts);
    apply_rcred(&client, ns, "wif", google_spec(federation("puller"), "wif-pull")).await;
    let status = wait_for_reason(&rcreds, "wif", "Synced").await;
    assert_eq!(status.provider_state, Some(json!({"identity": "workloadIdentityFederation"})));
    let token = wait_for_token(&client, ns, "wif-pull", None).await;
    assert_eq!(g.issued(&token), Some((puller.clone(), Endpoint::Sts)));
    assert!(g.calls(Endpoint::Sts) > sts_calls);
    let subject = g.subjects().into_iter().find(|s| s.sub == "system:serviceaccount:g-wif:puller").expect("subject");
    assert_eq!(subject.iss, "https://kubernetes.default.svc.cluster.local", "a TokenRequest token of the apiserver");
    assert_eq!(subject.aud, [format!("https:{POOL}")]);
    assert_eq!(subject.pool_provider, POOL);
    assert_pulls(&token, "the federated token").await;

    // Another ServiceAccount gets its own principal, which may not pull.
    apply_rcred(&client, ns, "stranger", google_spec(federation("stranger"), "stranger-pull")).await;
    wait_for_reason(&rcreds, "stranger", "Synced").await;
    let theirs = wait_for_token(&client, ns, "stranger-pull", None).await;
    assert_eq!(
        g.issued(&theirs).map(|(p, _)| p),
        Some(federated_principal(POOL, "system:serviceaccount:g-wif:stranger"))
    );
    assert_refused(&theirs, "a token of a ServiceAccount without access").await;

    // Federation plus impersonation.
    let target = "wif-reader@regcred-test.iam.gserviceaccount.com";
    g.allow_impersonation(&puller, target, HOUR);
    allow_pull(target);
    apply_rcred(&client, ns, "wif-imp", impersonating(google_spec(federation("puller"), "wif-imp-pull"), target)).await;
    wait_for_reason(&rcreds, "wif-imp", "Synced").await;
    let token = wait_for_token(&client, ns, "wif-imp-pull", None).await;
    assert_eq!(g.issued(&token), Some((target.to_string(), Endpoint::GenerateAccessToken)));
    assert_pulls(&token, "the impersonated federated token").await;

    // A principal that may not impersonate the target: refused, reported.
    apply_rcred(&client, ns, "denied", impersonating(google_spec(federation("stranger"), "denied-pull"), target)).await;
    let status = wait_for_reason(&rcreds, "denied", "ProviderAuthFailed").await;
    let message = &status.conditions[0].message;
    assert!(message.contains("generateAccessToken") && message.contains("HTTP 403"), "{message}");
    assert!(message.contains("PERMISSION_DENIED"), "{message}");
    assert!(get_secret(&client, ns, "denied-pull").await.is_none());
}

#[tokio::test]
async fn a_key_with_impersonation_and_unusable_keys() {
    let client = gsetup().await;
    let g = google();
    let ns = "g-keys";
    create_namespace(&client, ns, &[]).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);

    // The key's own principal may not pull; the impersonated one may.
    let deployer = "deployer@regcred-test.iam.gserviceaccount.com";
    let target = "key-reader@regcred-test.iam.gserviceaccount.com";
    let key = g.create_key(deployer, HOUR).unwrap_or_else(|e| panic!("{e:#}"));
    g.allow_impersonation(deployer, target, HOUR);
    allow_pull(target);
    put_credentials(&client, ns, "deployer-key", &key.json).await;
    let imp_calls = g.calls(Endpoint::GenerateAccessToken);
    let spec = impersonating(google_spec(json!({"secretRef": {"name": "deployer-key"}}), "imp-pull"), target);
    apply_rcred(&client, ns, "imp", spec).await;
    let status = wait_for_reason(&rcreds, "imp", "Synced").await;
    assert_eq!(
        status.provider_state,
        Some(json!({"identity": "serviceAccountKey", "serviceAccount": deployer, "impersonated": target}))
    );
    let token = wait_for_token(&client, ns, "imp-pull", None).await;
    assert_eq!(g.issued(&token), Some((target.to_string(), Endpoint::GenerateAccessToken)));
    assert!(g.calls(Endpoint::GenerateAccessToken) > imp_calls);
    assert!(g.grants(deployer) >= 1, "the key's own token was not requested at the token endpoint");
    assert_pulls(&token, "the impersonated token").await;

    // No credentials.json.
    put_login(&client, ns, "not-google", "someone", "not-a-google-key").await;
    apply_rcred(&client, ns, "nokey", google_spec(json!({"secretRef": {"name": "not-google"}}), "nokey-pull")).await;
    let status = wait_for_reason(&rcreds, "nokey", "SourceSecretInvalid").await;
    assert!(status.conditions[0].message.contains("credentials.json"), "{}", status.conditions[0].message);

    // A private key that is not one.
    let broken = "bm90LWEtcmVhbC1wcml2YXRlLWtleQ==";
    regcred_testenv::operator::record_secret(broken);
    let json = json!({
        "type": "service_account", "client_email": "broken@regcred-test.iam.gserviceaccount.com",
        "private_key": format!("-----BEGIN PRIVATE KEY-----\n{broken}\n-----END PRIVATE KEY-----\n"),
        "token_uri": g.token_uri(),
    });
    put_credentials(&client, ns, "broken-key", &json.to_string()).await;
    apply_rcred(&client, ns, "broken", google_spec(json!({"secretRef": {"name": "broken-key"}}), "broken-pull")).await;
    let status = wait_for_reason(&rcreds, "broken", "SourceSecretInvalid").await;
    assert!(status.conditions[0].message.contains("private_key"), "{}", status.conditions[0].message);

    // A key Google does not know (deleted): the token endpoint refuses it.
    let deleted = generate_key("deleted@regcred-test.iam.gserviceaccount.com", &g.token_uri())
        .unwrap_or_else(|e| panic!("{e:#}"));
    put_credentials(&client, ns, "deleted-key", &deleted.json).await;
    apply_rcred(&client, ns, "deleted", google_spec(json!({"secretRef": {"name": "deleted-key"}}), "deleted-pull"))
        .await;
    let status = wait_for_reason(&rcreds, "deleted", "ProviderAuthFailed").await;
    let message = &status.conditions[0].message;
    assert!(message.contains("HTTP 400") && message.contains("invalid_grant"), "{message}");
    assert!(get_secret(&client, ns, "deleted-pull").await.is_none());
    warning_event(&client, ns, "deleted", "ProviderAuthFailed").await;
}

#[tokio::test]
async fn an_external_account_configuration_in_a_secret() {
    let client = gsetup().await;
    let g = google();
    // The subject token: a TokenRequest token in a file of the operator's
    // machine, as a projected volume would hold it.
    create_service_account(&client, CLUSTER_NS, "ext-source").await;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![format!("https:{POOL}")],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let subject = Api::<ServiceAccount>::namespaced(client.clone(), CLUSTER_NS)
        .create_token_request("ext-source", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    regcred_testenv::operator::record_secret(&subject);
    let file = std::env::temp_dir().join(format!("regcred-google-subject-{}.jwt", std::process::id()));
    std::fs::write(&file, &subject).unwrap();

    let target = "ext-reader@regcred-test.iam.gserviceaccount.com";
    g.allow_impersonation(&federated_principal(POOL, "system:serviceaccount:regcred-system:ext-source"), target, HOUR);
    allow_pull(target);
    let config = json!({
        "type": "external_account",
        "audience": POOL,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": g.sts_url(),
        "service_account_impersonation_url": g.generate_access_token_url(target),
        "credential_source": {"file": file.display().to_string(), "format": {"type": "text"}},
    })
    .to_string();

    put_credentials(&client, CLUSTER_NS, "ext-config", &config).await;
    create_namespace(&client, "g-ext-target", &[]).await;
    let mut spec = google_spec(json!({"secretRef": {"name": "ext-config"}}), "ext-pull");
    spec["namespaces"] = json!(["g-ext-target"]);
    apply_crcred(&client, "g-ext", spec).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let status = wait_for_reason(&crcreds, "g-ext", "Synced").await;
    assert_eq!(status.provider_state, Some(json!({"identity": "externalAccount", "impersonated": target})));
    let token = wait_for_token(&client, "g-ext-target", "ext-pull", None).await;
    assert_eq!(g.issued(&token), Some((target.to_string(), Endpoint::GenerateAccessToken)));
    assert_pulls(&token, "the external account's token").await;

    // A file source reads the operator's files: not for a namespaced credential.
    create_namespace(&client, "g-ext-tenant", &[]).await;
    put_credentials(&client, "g-ext-tenant", "ext-config", &config).await;
    apply_rcred(&client, "g-ext-tenant", "ext", google_spec(json!({"secretRef": {"name": "ext-config"}}), "ext-pull"))
        .await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "g-ext-tenant");
    wait_for_reason(&rcreds, "ext", "AmbientIdentityForbidden").await;
    assert!(get_secret(&client, "g-ext-tenant", "ext-pull").await.is_none());
    let _ = std::fs::remove_file(&file);
}

/// Writes a subject token where an external_account's file source reads it
/// (a projected volume on the operator's machine).
fn subject_file(name: &str, token: &str) -> PathBuf {
    let file = std::env::temp_dir().join(format!("regcred-google-{name}-{}.jwt", std::process::id()));
    std::fs::write(&file, token).unwrap();
    file
}

/// An external_account configuration exchanging the token in `file` at
/// `POOL`, without impersonation.
fn external_account(file: &Path) -> String {
    json!({
        "type": "external_account",
        "audience": POOL,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": google().sts_url(),
        "credential_source": {"file": file.display().to_string(), "format": {"type": "text"}},
    })
    .to_string()
}

/// Subject tokens the apiserver never issued reach STS through an
/// external_account file source: one signed by another key under the
/// apiserver's `kid`, one by an unknown key, one of another issuer signed by
/// the apiserver's own key. STS refuses each with Google's `invalid_grant`
/// text, which reaches Ready=False; the same claims signed by the
/// apiserver's key for its own issuer are exchanged and pull.
#[tokio::test]
async fn sts_refuses_subject_tokens_of_another_key_or_issuer_with_googles_reason() {
    let client = gsetup().await;
    let g = google();
    let cluster = fetch_cluster_oidc(control_plane()).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(cluster.issuer, SA_ISSUER);
    let kid = cluster.jwks["keys"][0]["kid"].as_str().expect("the apiserver's key has a kid").to_string();
    // The apiserver's own signing key (`--service-account-signing-key-file`).
    let sa_key = std::fs::read_to_string(control_plane().dir().join("sa.key")).expect("the apiserver's signing key");
    let apiserver = JwtSigner::from_pkcs8_pem(&sa_key, Some(&kid)).unwrap_or_else(|e| panic!("{e:#}"));
    let other_key = JwtSigner::generate_es256(Some(&kid)).unwrap_or_else(|e| panic!("{e:#}"));
    let unknown_key = JwtSigner::generate_rs256(Some("forger")).unwrap_or_else(|e| panic!("{e:#}"));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let subject = |name: &str| format!("system:serviceaccount:{CLUSTER_NS}:{name}");
    let claims = |iss: &str, name: &str| json!({"iss": iss, "sub": subject(name), "aud": [format!("https:{POOL}")], "iat": now, "exp": now + 600});
    let other_issuer = "https://issuer.example.invalid";
    let cases = [
        ("g-sign-control", apiserver.sign(&claims(SA_ISSUER, "g-sign-control")), None),
        (
            "g-sign-other-key",
            other_key.sign(&claims(SA_ISSUER, "g-sign-other-key")),
            Some("Unable to verify the ID Token signature.".to_string()),
        ),
        (
            "g-sign-unknown-kid",
            unknown_key.sign(&claims(SA_ISSUER, "g-sign-unknown-kid")),
            Some("Error connecting to the given credential's issuer.".to_string()),
        ),
        (
            "g-sign-other-issuer",
            apiserver.sign(&claims(other_issuer, "g-sign-other-issuer")),
            Some(format!(
                "The issuer in ID Token {other_issuer} does not match the expected one in config: {SA_ISSUER}"
            )),
        ),
    ];
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let mut files = Vec::new();
    for (name, token, _) in &cases {
        let token = token.as_ref().unwrap_or_else(|e| panic!("{e:#}"));
        regcred_testenv::operator::record_secret(token);
        let file = subject_file(name, token);
        put_credentials(&client, CLUSTER_NS, name, &external_account(&file)).await;
        files.push(file);
        create_namespace(&client, name, &[]).await;
        let mut spec = google_spec(json!({"secretRef": {"name": name}}), "forged-pull");
        spec["namespaces"] = json!([name]);
        apply_crcred(&client, name, spec).await;
    }
    for (name, _, refusal) in &cases {
        let principal = federated_principal(POOL, &subject(name));
        let Some(description) = refusal else {
            // The control: the checks pass a token the apiserver's key signed
            // for its issuer, and its federated token really pulls.
            allow_pull(&principal);
            wait_for_reason(&crcreds, name, "Synced").await;
            let token = wait_for_token(&client, name, "forged-pull", None).await;
            assert_eq!(g.issued(&token), Some((principal, Endpoint::Sts)));
            assert_pulls(&token, "the federated token of the control").await;
            continue;
        };
        let status = wait_for_reason(&crcreds, name, "ProviderAuthFailed").await;
        let ready = &status.conditions[0];
        assert_eq!(ready.status, "False");
        let message = &ready.message;
        assert!(message.contains("STS token exchange") && message.contains(&g.sts_url()), "{message}");
        assert!(message.contains("HTTP 400") && message.contains("invalid_grant"), "{message}");
        assert!(message.contains(description.as_str()), "{name}: {message}");
        assert!(g.refusals().iter().any(|r| r.contains(description.as_str())), "{name}: {:?}", g.refusals());
        assert!(!g.subjects().iter().any(|s| s.sub == subject(name)), "{name} was exchanged");
        assert!(get_secret(&client, name, "forged-pull").await.is_none(), "{name}: a Secret was written");
    }
    for file in files {
        let _ = std::fs::remove_file(file);
    }
}

/// A pool provider whose attribute condition admits one namespace: its
/// ServiceAccounts are exchanged and pull; a ServiceAccount of another
/// namespace is refused with Google's `unauthorized_client`, although the
/// registry would let its principal pull and the provider without a
/// condition exchanges its token. A token for another audience is refused
/// with Google's audience text.
#[tokio::test]
async fn the_attribute_condition_refuses_service_accounts_outside_it() {
    let client = gsetup().await;
    let g = google();
    for ns in ["g-cond-in", "g-cond-out"] {
        create_namespace(&client, ns, &[]).await;
        create_service_account(&client, ns, "puller").await;
    }
    let federation = |audience: &str| json!({"serviceAccountRef": {"name": "puller", "audience": audience, "tokenUrl": g.sts_url()}});
    let inside = federated_principal(POOL_COND, &format!("{COND_PREFIX}puller"));
    let outside_sub = "system:serviceaccount:g-cond-out:puller";
    allow_pull(&inside);
    allow_pull(&federated_principal(POOL_COND, outside_sub));
    allow_pull(&federated_principal(POOL, outside_sub));

    // Inside the condition.
    apply_rcred(&client, "g-cond-in", "wif", google_spec(federation(POOL_COND), "wif-pull")).await;
    let rcreds_in: Api<RegistryCredential> = Api::namespaced(client.clone(), "g-cond-in");
    wait_for_reason(&rcreds_in, "wif", "Synced").await;
    let token = wait_for_token(&client, "g-cond-in", "wif-pull", None).await;
    assert_eq!(g.issued(&token), Some((inside, Endpoint::Sts)));
    assert_pulls(&token, "the token of a ServiceAccount the condition admits").await;

    // Outside it.
    apply_rcred(&client, "g-cond-out", "wif", google_spec(federation(POOL_COND), "wif-pull")).await;
    let rcreds_out: Api<RegistryCredential> = Api::namespaced(client.clone(), "g-cond-out");
    let status = wait_for_reason(&rcreds_out, "wif", "ProviderAuthFailed").await;
    let message = &status.conditions[0].message;
    assert!(message.contains("HTTP 400") && message.contains("unauthorized_client"), "{message}");
    assert!(message.contains("The given credential is rejected by the attribute condition."), "{message}");
    // Google does not say whose token; regcred names it, the provider, and
    // what to change.
    assert!(
        message.contains(&format!("ServiceAccount token {outside_sub}"))
            && message.contains(&format!("pool provider {POOL_COND}"))
            && message.contains("attribute condition does not admit this ServiceAccount"),
        "{message}"
    );
    assert!(get_secret(&client, "g-cond-out", "wif-pull").await.is_none());
    assert!(!g.subjects().iter().any(|s| s.sub == outside_sub && s.pool_provider == POOL_COND));
    // The same ServiceAccount at the provider without a condition: exchanged.
    apply_rcred(&client, "g-cond-out", "wif-open", google_spec(federation(POOL), "wif-open-pull")).await;
    wait_for_reason(&rcreds_out, "wif-open", "Synced").await;
    let token = wait_for_token(&client, "g-cond-out", "wif-open-pull", None).await;
    assert_eq!(g.issued(&token), Some((federated_principal(POOL, outside_sub), Endpoint::Sts)));

    // A token requested for another audience than the provider's.
    let mut wrong = federation(POOL_COND);
    wrong["serviceAccountRef"]["tokenAudience"] = json!("sts.amazonaws.com");
    apply_rcred(&client, "g-cond-in", "wrong-aud", google_spec(wrong, "wrong-aud-pull")).await;
    let status = wait_for_reason(&rcreds_in, "wrong-aud", "ProviderAuthFailed").await;
    let message = &status.conditions[0].message;
    assert!(
        message.contains("The audience in ID Token [sts.amazonaws.com] does not match the expected audience."),
        "{message}"
    );
    assert!(get_secret(&client, "g-cond-in", "wrong-aud-pull").await.is_none());
}
