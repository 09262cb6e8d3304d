//! The `acr` provider end to end: `regcred run` against the real control
//! plane, Microsoft Entra and ACR's `/oauth2/exchange` played by local
//! HTTPS stand-ins (`regcred_testenv::acr_standin`, test CA), and a real
//! `docker-registry` in token-auth mode behind the stand-in's host, whose
//! token service accepts exactly the refresh tokens the stand-in issued and
//! that have not expired. `skopeo` pulls with the written Secrets.
//!
//! The operator reaches the stand-ins only through the spec
//! (`authorityHost`, `registry`, `caBundle`) and the environment variables
//! the Azure SDKs read, given to the shared operator when it starts:
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST` for the node's IMDS (managed
//! identity as on AKS nodes: no `IDENTITY_ENDPOINT`, several user-assigned
//! identities) and `AZURE_FEDERATED_TOKEN_FILE` for its own workload
//! identity. The App Service style endpoint (`IDENTITY_ENDPOINT` /
//! `IDENTITY_HEADER`), which takes precedence over IMDS in every Azure SDK,
//! is exercised by one-shot `regcred kubelet-credential-provider` runs with
//! those variables set.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use regcred_testenv::acr_standin::{ACR_USERNAME, AzureStandIn, Endpoint, ExchangeMode, TOKEN_EXCHANGE_AUDIENCE};
use regcred_testenv::operator::record_secret;
use regcred_testenv::registry::{TEST_IMAGE, skopeo_inspect};
use regcred_testenv::tokenauth::{TokenRegistry, TokenService, start_token_registry};
use serde_json::{Value, json};

/// The `iss` of ServiceAccount tokens from the test control plane.
const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const ACR_SCOPE: &str = "https://containerregistry.azure.net/.default";
/// The tenant of the node's managed identities.
const NODE_TENANT: &str = "tenant-node";
/// The node's kubelet identity (user-assigned, granted AcrPull), as on AKS.
const KUBELET_IDENTITY: &str = "node-kubelet-identity";
/// A second user-assigned identity on the node (an add-on's), without AcrPull.
const ADDON_IDENTITY: &str = "node-addon-identity";
const PUSH_USER: &str = "acr-pusher";
const PUSH_PASS: &str = "acr-push-password";

struct Azure {
    standin: AzureStandIn,
    tokens: TokenService,
    registry: TokenRegistry,
    /// `AZURE_FEDERATED_TOKEN_FILE` of the operator.
    token_file: PathBuf,
}

/// The stand-ins and the registry, started once per test binary, before the
/// shared operator (which gets the Azure environment variables).
fn azure() -> &'static Azure {
    static AZURE: OnceLock<Azure> = OnceLock::new();
    AZURE.get_or_init(|| {
        let standin = AzureStandIn::start().unwrap_or_else(|e| panic!("starting the Azure stand-in: {e:#}"));
        let token_file = std::env::temp_dir().join(format!("regcred-acr-federated-token-{}", std::process::id()));
        // The node IMDS answers for: two user-assigned identities and no
        // system-assigned one, as an AKS node with an add-on's identity.
        standin.assign_node_identity(NODE_TENANT, Some(KUBELET_IDENTITY));
        standin.assign_node_identity(NODE_TENANT, Some(ADDON_IDENTITY));
        standin.grant_acr_pull(NODE_TENANT, KUBELET_IDENTITY);
        // The variables the Azure SDKs read, for the operator this binary starts.
        set_operator_env(vec![
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST".into(), standin.imds_authority()),
            ("AZURE_FEDERATED_TOKEN_FILE".into(), token_file.display().to_string()),
        ]);
        record_secret(PUSH_PASS);
        let valid_refresh_token = standin.validator();
        let tokens = TokenService::start(Arc::new(move |u: &str, p: &str| {
            (u == PUSH_USER && p == PUSH_PASS) || valid_refresh_token(u, p)
        }))
        .unwrap_or_else(|e| panic!("starting the token service: {e:#}"));
        let registry = start_token_registry(control_plane().process_group(), &tokens, PUSH_USER, PUSH_PASS)
            .unwrap_or_else(|e| panic!("{e:#}"));
        standin.set_upstream_registry(&registry.host);
        Azure { standin, tokens, registry, token_file }
    })
}

/// An `acr` credential spec pointed at the stand-ins.
fn acr_spec(tenant: &str, auth: Value, pull: &str) -> Value {
    let az = azure();
    json!({
        "provider": {"acr": {
            "registry": az.standin.host(),
            "tenantId": tenant,
            "auth": auth,
            "authorityHost": az.standin.authority_host(),
            "caBundle": az.standin.ca_pem(),
        }},
        "secret": {"name": pull},
    })
}

fn service_principal(secret: &str) -> Value {
    json!({"servicePrincipal": {"secretRef": {"name": secret}}})
}

/// A Secret with `client-id` and `client-secret`; `touch` changes it
/// without changing the credentials (a new resourceVersion).
async fn put_service_principal(client: &Client, ns: &str, name: &str, client_id: &str, secret: &str, touch: u32) {
    record_secret(secret);
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "annotations": {"test/touch": touch.to_string()}},
        "stringData": {"client-id": client_id, "client-secret": secret}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("regcred-test").force(), &Patch::Apply(&s))
        .await
        .expect("write service principal secret");
}

async fn create_service_account(client: &Client, ns: &str, name: &str) {
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match Api::<ServiceAccount>::namespaced(client.clone(), ns).create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating ServiceAccount {ns}/{name}: {e}"),
    }
}

/// `skopeo inspect` of the test image at the stand-in's host with the
/// Secret's `.dockerconfigjson` as the auth file, unchanged.
async fn pull_with(secret: &Secret, tag: &str) -> std::process::Output {
    let config = secret.data.as_ref().and_then(|d| d.get(".dockerconfigjson")).expect(".dockerconfigjson").0.clone();
    pull_with_config(config, tag).await
}

async fn pull_with_config(config: Vec<u8>, tag: &str) -> std::process::Output {
    let image = format!("{}/{TEST_IMAGE}", azure().standin.host());
    let path = std::env::temp_dir().join(format!("regcred-acr-auth-{}-{tag}.json", std::process::id()));
    tokio::task::spawn_blocking(move || {
        std::fs::write(&path, config).unwrap();
        let out = skopeo_inspect(&path, &image).expect("running skopeo");
        let _ = std::fs::remove_file(&path);
        out
    })
    .await
    .unwrap()
}

fn authfile_for(password: &str) -> Vec<u8> {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{ACR_USERNAME}:{password}"));
    serde_json::to_vec(&json!({"auths": {azure().standin.host(): {
        "username": ACR_USERNAME, "password": password, "auth": auth,
    }}}))
    .unwrap()
}

fn password_in(secret: &Secret) -> String {
    let (user, password) = login_in(secret, &azure().standin.host()).expect("an entry for the registry");
    assert_eq!(user, ACR_USERNAME);
    password
}

fn exp_of(password: &str) -> i64 {
    azure().standin.refresh_token_claims(password).expect("a refresh token the stand-in issued")["exp"]
        .as_i64()
        .unwrap()
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn assert_no_secret_in(message: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!message.contains(s), "a secret leaked into {message:?}");
    }
}

#[tokio::test]
async fn service_principal_mints_a_refresh_token_that_pulls() {
    let az = azure();
    let client = setup().await;
    let tenant = "tenant-sp";
    let host = az.standin.host();
    az.standin.add_service_principal(tenant, "sp-app", "sp-client-secret-1");
    az.standin.grant_acr_pull(tenant, "sp-app");
    create_namespace(&client, "acr-sp", &[]).await;
    put_service_principal(&client, "acr-sp", "sp", "sp-app", "sp-client-secret-1", 0).await;
    apply_rcred(&client, "acr-sp", "cred", acr_spec(tenant, service_principal("sp"), "acr-pull")).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "acr-sp");
    let status = wait_for_reason(&rcreds, "cred", "Synced").await;

    let secret = get_secret(&client, "acr-sp", "acr-pull").await.expect("pull Secret");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    let password = password_in(&secret);
    assert!(az.standin.refresh_token_valid(ACR_USERNAME, &password), "not a live refresh token from the exchange");
    let exp = exp_of(&password);
    assert_eq!(status.expires_at.as_ref().expect("expiresAt").0.as_second(), exp, "expiry is the JWT exp");
    assert_eq!(status.provider.as_deref(), Some("acr"));
    assert_eq!(status.registries, std::slice::from_ref(&host));

    let seen = az.standin.seen();
    assert!(
        seen.iter().any(|s| s.endpoint == Endpoint::Entra
            && s.tenant == tenant
            && s.client_id == "sp-app"
            && s.grant == "client_secret"
            && s.scope == ACR_SCOPE
            && s.status == 200),
        "no client-credentials request for the ACR scope: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.endpoint == Endpoint::Exchange
            && s.tenant == tenant
            && s.service == host
            && s.grant == "access_token"
            && s.client_id == "sp-app"
            && s.status == 200),
        "no exchange with service and tenant: {seen:?}"
    );

    let out = pull_with(&secret, "sp").await;
    assert!(out.status.success(), "skopeo could not pull with the Secret: {}", String::from_utf8_lossy(&out.stderr));

    let sample = format!(
        "regcred_credential_expiry_timestamp_seconds{{kind=\"RegistryCredential\",namespace=\"acr-sp\",name=\"cred\"}} {exp}"
    );
    let metrics = wait_for(&format!("{sample} in /metrics"), WAIT, || async {
        let text = operator().metrics().ok()?;
        text.contains(&sample).then_some(text)
    })
    .await;
    assert!(!metrics.contains(&password));
}

#[tokio::test]
async fn workload_identity_federates_a_service_account_token_from_the_token_request_api() {
    let az = azure();
    let client = setup().await;
    let tenant = "tenant-wi";
    create_namespace(&client, "acr-wi", &[]).await;
    create_service_account(&client, "acr-wi", "puller").await;
    create_service_account(&client, "acr-wi", "stranger").await;
    az.standin.add_tenant(tenant);
    az.standin.add_federated_credential(tenant, "wi-app", SA_ISSUER, "system:serviceaccount:acr-wi:puller");
    az.standin.grant_acr_pull(tenant, "wi-app");
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "acr-wi");
    let wi = |sa: &str| json!({"workloadIdentity": {"clientId": "wi-app", "serviceAccountRef": {"name": sa}}});

    apply_rcred(&client, "acr-wi", "cred", acr_spec(tenant, wi("puller"), "wi-pull")).await;
    wait_for_reason(&rcreds, "cred", "Synced").await;
    let secret = get_secret(&client, "acr-wi", "wi-pull").await.unwrap();
    assert!(az.standin.refresh_token_valid(ACR_USERNAME, &password_in(&secret)));
    let seen = az.standin.seen();
    let assertion = seen
        .iter()
        .filter(|s| s.endpoint == Endpoint::Entra && s.tenant == tenant && s.status == 200)
        .find_map(|s| s.assertion_claims.clone())
        .unwrap_or_else(|| panic!("no accepted client assertion: {seen:?}"));
    assert_eq!(assertion["sub"], "system:serviceaccount:acr-wi:puller");
    assert_eq!(assertion["iss"], SA_ISSUER);
    assert_eq!(assertion["aud"], json!([TOKEN_EXCHANGE_AUDIENCE]), "the TokenRequest audience");
    let out = pull_with(&secret, "wi").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A ServiceAccount the application does not trust.
    apply_rcred(&client, "acr-wi", "stranger", acr_spec(tenant, wi("stranger"), "stranger-pull")).await;
    let status = wait_for_reason(&rcreds, "stranger", "ProviderAuthFailed").await;
    let message = &status.conditions[0].message;
    assert!(message.contains("AADSTS70021") && message.contains("federated"), "{message}");
    assert!(message.contains("acr-wi/stranger"), "{message}");
    assert!(get_secret(&client, "acr-wi", "stranger-pull").await.is_none());

    // A ServiceAccount that does not exist.
    apply_rcred(&client, "acr-wi", "ghost", acr_spec(tenant, wi("nobody"), "ghost-pull")).await;
    wait_for_reason(&rcreds, "ghost", "ServiceAccountNotFound").await;
}

#[tokio::test]
async fn managed_and_operator_workload_identity_are_ambient_so_cluster_credentials_only() {
    let az = azure();
    let client = setup().await;
    let tenant = "tenant-mi";
    create_namespace(&client, "acr-mi-target", &[("acr-mi", "yes")]).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let cluster_spec = |tenant: &str, auth: Value, pull: &str| {
        let mut spec = acr_spec(tenant, auth, pull);
        spec["namespaceSelector"] = json!({"matchLabels": {"acr-mi": "yes"}});
        spec
    };

    // The node's user-assigned kubelet identity, through IMDS.
    apply_crcred(
        &client,
        "acr-mi",
        cluster_spec(NODE_TENANT, json!({"managedIdentity": {"clientId": KUBELET_IDENTITY}}), "mi-pull"),
    )
    .await;
    wait_for_reason(&crcreds, "acr-mi", "Synced").await;
    let secret = get_secret(&client, "acr-mi-target", "mi-pull").await.unwrap();
    let out = pull_with(&secret, "mi").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen = az.standin.seen();
    assert!(
        seen.iter().any(|s| s.endpoint == Endpoint::Imds
            && s.client_id == KUBELET_IDENTITY
            && s.scope == "https://containerregistry.azure.net"
            && s.status == 200),
        "{seen:?}"
    );

    // An identity not assigned to the node.
    apply_crcred(
        &client,
        "acr-mi-unassigned",
        cluster_spec(NODE_TENANT, json!({"managedIdentity": {"clientId": "not-assigned"}}), "unassigned-pull"),
    )
    .await;
    let status = wait_for_reason(&crcreds, "acr-mi-unassigned", "ProviderAuthFailed").await;
    let message = &status.conditions[0].message;
    assert!(message.contains("Identity not found") && message.contains("not assigned"), "{message}");

    // An identity on the node without AcrPull: IMDS gives it a token, the
    // registry refuses the exchange.
    apply_crcred(
        &client,
        "acr-mi-norole",
        cluster_spec(NODE_TENANT, json!({"managedIdentity": {"clientId": ADDON_IDENTITY}}), "norole-pull"),
    )
    .await;
    let status = wait_for_reason(&crcreds, "acr-mi-norole", "ProviderAuthFailed").await;
    let message = &status.conditions[0].message;
    assert!(message.contains("/oauth2/exchange") && message.contains("AcrPull"), "{message}");
    assert!(get_secret(&client, "acr-mi-target", "norole-pull").await.is_none());

    // The operator's own workload identity: AZURE_FEDERATED_TOKEN_FILE holds
    // a token of its ServiceAccount, as the AKS webhook projects it.
    create_service_account(&client, CLUSTER_NS, "regcred-operator").await;
    let request = TokenRequest {
        spec: TokenRequestSpec { audiences: vec![TOKEN_EXCHANGE_AUDIENCE.into()], ..Default::default() },
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client.clone(), CLUSTER_NS)
        .create_token_request("regcred-operator", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    record_secret(&token);
    std::fs::write(&az.token_file, &token).unwrap();
    az.standin.add_federated_credential(
        tenant,
        "operator-app",
        SA_ISSUER,
        &format!("system:serviceaccount:{CLUSTER_NS}:regcred-operator"),
    );
    az.standin.grant_acr_pull(tenant, "operator-app");
    apply_crcred(
        &client,
        "acr-op",
        cluster_spec(tenant, json!({"workloadIdentity": {"clientId": "operator-app"}}), "op-pull"),
    )
    .await;
    wait_for_reason(&crcreds, "acr-op", "Synced").await;
    let secret = get_secret(&client, "acr-mi-target", "op-pull").await.unwrap();
    assert!(az.standin.refresh_token_valid(ACR_USERNAME, &password_in(&secret)));

    // A namespaced credential may use neither.
    create_namespace(&client, "acr-mi-ns", &[]).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "acr-mi-ns");
    apply_rcred(
        &client,
        "acr-mi-ns",
        "mi",
        acr_spec(NODE_TENANT, json!({"managedIdentity": {"clientId": KUBELET_IDENTITY}}), "p1"),
    )
    .await;
    let status = wait_for_reason(&rcreds, "mi", "AmbientIdentityForbidden").await;
    assert!(status.conditions[0].message.contains("managedIdentity"), "{}", status.conditions[0].message);
    apply_rcred(
        &client,
        "acr-mi-ns",
        "wi",
        acr_spec(tenant, json!({"workloadIdentity": {"clientId": "operator-app"}}), "p2"),
    )
    .await;
    let status = wait_for_reason(&rcreds, "wi", "AmbientIdentityForbidden").await;
    assert!(status.conditions[0].message.contains("serviceAccountRef"), "{}", status.conditions[0].message);
    assert!(get_secret(&client, "acr-mi-ns", "p1").await.is_none());
    assert!(get_secret(&client, "acr-mi-ns", "p2").await.is_none());
}

#[tokio::test]
async fn imds_with_several_user_assigned_identities_needs_the_client_id_and_says_so() {
    let az = azure();
    let client = setup().await;
    create_namespace(&client, "acr-imds-target", &[("acr-imds", "yes")]).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let spec = |auth: Value| {
        let mut spec = acr_spec(NODE_TENANT, auth, "imds-pull");
        spec["namespaceSelector"] = json!({"matchLabels": {"acr-imds": "yes"}});
        spec
    };

    // Deliberately wrong: no clientId, on a node with two user-assigned
    // identities and no system-assigned one. IMDS cannot choose.
    apply_crcred(&client, "acr-imds", spec(json!({"managedIdentity": {}}))).await;
    let status = wait_for_reason(&crcreds, "acr-imds", "ProviderAuthFailed").await;
    let message = &status.conditions[0].message;
    for needle in [
        "the managed identity endpoint",
        &format!("{}/metadata/identity/oauth2/token", az.standin.imds_authority()),
        "HTTP 400",
        "Multiple user assigned identities exist",
        "several user-assigned managed identities are assigned to this node",
        "set auth.managedIdentity.clientId",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    assert!(!message.contains("entra-") && !message.contains("api-version"), "{message}");
    assert!(get_secret(&client, "acr-imds-target", "imds-pull").await.is_none(), "a Secret was written");
    // IMDS refused a well-formed request (Metadata header, api-version,
    // resource: the stand-in answers otherwise without them) for being
    // without an identity.
    let seen = az.standin.seen();
    assert!(
        seen.iter().any(|s| s.endpoint == Endpoint::Imds
            && s.client_id.is_empty()
            && s.api_version.as_str() >= "2018-02-01"
            && s.scope == "https://containerregistry.azure.net"
            && s.status == 400),
        "{seen:?}"
    );

    // The fix the message names: the kubelet identity's client id.
    apply_crcred(&client, "acr-imds", spec(json!({"managedIdentity": {"clientId": KUBELET_IDENTITY}}))).await;
    let status = wait_for_reason(&crcreds, "acr-imds", "Synced").await;
    let secret = get_secret(&client, "acr-imds-target", "imds-pull").await.expect("pull Secret");
    let password = password_in(&secret);
    assert!(az.standin.refresh_token_valid(ACR_USERNAME, &password), "not a live refresh token from the exchange");
    let claims = az.standin.refresh_token_claims(&password).unwrap();
    assert_eq!((claims["sub"].as_str(), claims["tenant"].as_str()), (Some(KUBELET_IDENTITY), Some(NODE_TENANT)));
    assert_eq!(status.expires_at.as_ref().expect("expiresAt").0.as_second(), exp_of(&password));
    let out = pull_with(&secret, "imds").await;
    assert!(out.status.success(), "skopeo could not pull with the Secret: {}", String::from_utf8_lossy(&out.stderr));
}

/// One run of `regcred kubelet-credential-provider` for the stand-in's host
/// with `provider` and `env`: the login's password.
fn plugin_login(name: &str, provider: Value, env: &[(&str, String)]) -> Result<String, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let az = azure();
    let dir = std::env::temp_dir().join(format!("regcred-acr-plugin-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("provider.yaml");
    let yaml = json!({"apiVersion": "regcred.dev/v1alpha1", "kind": "ProviderConfig",
        "providers": [{"match": [az.standin.host()], "provider": provider}]});
    std::fs::write(&config, serde_json::to_string(&yaml).unwrap()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_regcred"))
        .args(["kubelet-credential-provider", "--config"])
        .arg(&config)
        .env_remove("IDENTITY_ENDPOINT")
        .env_remove("IDENTITY_HEADER")
        .env_remove("MSI_ENDPOINT")
        .env_remove("AZURE_POD_IDENTITY_AUTHORITY_HOST")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let request = json!({"apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderRequest",
        "image": format!("{}/{TEST_IMAGE}", az.standin.host())});
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let login = &v["auth"][az.standin.host()];
    assert_eq!(login["username"], ACR_USERNAME);
    let password = login["password"].as_str().unwrap().to_string();
    record_secret(&password);
    Ok(password)
}

#[tokio::test]
async fn the_app_service_endpoint_takes_precedence_over_imds_as_in_the_azure_sdks() {
    let az = azure();
    let tenant = "tenant-app-service";
    az.standin.add_managed_identity(tenant, Some("app-service-mi"));
    az.standin.grant_acr_pull(tenant, "app-service-mi");
    let provider = json!({"acr": {
        "registry": az.standin.host(), "tenantId": tenant,
        "auth": {"managedIdentity": {"clientId": "app-service-mi"}},
        "authorityHost": az.standin.authority_host(), "caBundle": az.standin.ca_pem(),
    }});
    // Both are set: IDENTITY_ENDPOINT + IDENTITY_HEADER win, as in
    // azure_identity's and MSAL's source detection.
    let env = [
        ("IDENTITY_ENDPOINT", az.standin.managed_identity_endpoint()),
        ("IDENTITY_HEADER", az.standin.identity_header().to_string()),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", az.standin.imds_authority()),
    ];
    let password = tokio::task::spawn_blocking(move || plugin_login("app-service", provider, &env))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the plugin failed: {e}"));
    assert!(az.standin.refresh_token_valid(ACR_USERNAME, &password));
    assert_eq!(az.standin.refresh_token_claims(&password).unwrap()["sub"], "app-service-mi");
    let seen = az.standin.seen();
    assert!(
        seen.iter()
            .any(|s| s.endpoint == Endpoint::ManagedIdentity && s.client_id == "app-service-mi" && s.status == 200),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|s| s.endpoint == Endpoint::Imds && s.client_id == "app-service-mi"), "{seen:?}");
    let out = pull_with_config(authfile_for(&password), "app-service").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A wrong IDENTITY_HEADER is refused.
    let provider = json!({"acr": {
        "registry": az.standin.host(), "tenantId": tenant,
        "auth": {"managedIdentity": {"clientId": "app-service-mi"}},
        "authorityHost": az.standin.authority_host(), "caBundle": az.standin.ca_pem(),
    }});
    let env = [
        ("IDENTITY_ENDPOINT", az.standin.managed_identity_endpoint()),
        ("IDENTITY_HEADER", "not-the-header".to_string()),
    ];
    let err = tokio::task::spawn_blocking(move || plugin_login("app-service-bad", provider, &env))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains("ProviderAuthFailed") && err.contains("HTTP 401"), "{err}");
    assert!(!err.contains(az.standin.identity_header()), "{err}");
}

#[tokio::test]
async fn refresh_tokens_rotate_five_times_while_skopeo_keeps_pulling_and_expired_ones_are_refused() {
    let az = azure();
    let client = setup().await;
    let tenant = "tenant-rot";
    az.standin.add_service_principal(tenant, "rot-app", "rot-client-secret");
    az.standin.grant_acr_pull(tenant, "rot-app");
    az.standin.set_refresh_lifetime(tenant, Duration::from_secs(6));
    create_namespace(&client, "acr-rot", &[]).await;
    put_service_principal(&client, "acr-rot", "sp", "rot-app", "rot-client-secret", 0).await;
    apply_rcred(&client, "acr-rot", "cred", acr_spec(tenant, service_principal("sp"), "rot-pull")).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "acr-rot");
    wait_for_reason(&rcreds, "cred", "Synced").await;

    // Pull in a loop with whatever the Secret holds, until six distinct
    // refresh tokens (five rotations) have been published.
    let mut published: Vec<(String, i64)> = Vec::new();
    let mut pulls = 0;
    let start = Instant::now();
    while published.len() < 6 {
        assert!(start.elapsed() < Duration::from_secs(40), "only {} refresh tokens in 40s", published.len());
        let secret = get_secret(&client, "acr-rot", "rot-pull").await.unwrap();
        let password = password_in(&secret);
        if published.last().is_none_or(|(p, _)| *p != password) {
            let exp = exp_of(&password);
            if let Some((_, previous_exp)) = published.last() {
                assert!(now_secs() < *previous_exp, "the Secret was rotated only after the previous token expired");
            }
            published.push((password, exp));
        }
        let out = pull_with(&secret, "rot").await;
        assert!(
            out.status.success(),
            "pull {pulls} failed with refresh token #{}: {}",
            published.len(),
            String::from_utf8_lossy(&out.stderr)
        );
        pulls += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{pulls} pulls, 5 rotations in {:?}", start.elapsed());
    assert!(pulls >= 6);

    // The first refresh token has expired: the token service refuses it, so
    // the registry cannot be pulled from with it.
    let (first, first_exp) = published[0].clone();
    while now_secs() <= first_exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!az.standin.refresh_token_valid(ACR_USERNAME, &first));
    let rejected_before = az.tokens.rejected();
    let out = pull_with_config(authfile_for(&first), "expired").await;
    assert!(!out.status.success(), "an expired refresh token still pulls");
    assert!(az.tokens.rejected() > rejected_before, "the token service did not refuse it");
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains("unauthorized") || stderr.contains("401"), "{stderr}");
    // The registry's own log shows only bearer-token access, as with ACR.
    assert!(!az.registry.log().contains(&first));
}

#[tokio::test]
async fn entra_and_exchange_outages_keep_the_old_secret_are_reported_and_recover() {
    let az = azure();
    let client = setup().await;
    let op = operator();
    let tenant = "tenant-out";
    az.standin.add_service_principal(tenant, "out-app", "out-client-secret");
    az.standin.grant_acr_pull(tenant, "out-app");
    create_namespace(&client, "acr-out", &[]).await;
    put_service_principal(&client, "acr-out", "sp", "out-app", "out-client-secret", 0).await;
    apply_rcred(&client, "acr-out", "cred", acr_spec(tenant, service_principal("sp"), "out-pull")).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "acr-out");
    wait_for_reason(&rcreds, "cred", "Synced").await;
    let first = password_in(&get_secret(&client, "acr-out", "out-pull").await.unwrap());

    // Entra is down; a change to the source Secret forces a refresh now.
    az.standin.set_entra_outage(tenant, true);
    put_service_principal(&client, "acr-out", "sp", "out-app", "out-client-secret", 1).await;
    let status = wait_for_reason(&rcreds, "cred", "ProviderError").await;
    let message = &status.conditions[0].message;
    assert!(message.contains("Entra token endpoint") && message.contains("HTTP 503"), "{message}");
    assert!(message.contains(&format!("/{tenant}/oauth2/v2.0/token")), "{message}");
    assert_no_secret_in(message, &["out-client-secret", &first]);
    let kept = get_secret(&client, "acr-out", "out-pull").await.unwrap();
    assert_eq!(password_in(&kept), first, "the last good Secret was replaced during the outage");
    wait_for("a ProviderError Warning", WAIT, || async {
        let ev = events_for(&client, "acr-out", "cred").await;
        ev.iter().any(|(t, r, _)| t == "Warning" && r == "ProviderError").then_some(())
    })
    .await;

    // Entra is back: healed by the controller's own retry.
    az.standin.set_entra_outage(tenant, false);
    let second = wait_for("a new refresh token after the Entra outage", WAIT, || async {
        let p = password_in(&get_secret(&client, "acr-out", "out-pull").await?);
        (p != first).then_some(p)
    })
    .await;
    wait_for_reason(&rcreds, "cred", "Synced").await;

    // The registry's exchange is down.
    az.standin.set_exchange_mode(tenant, ExchangeMode::Unavailable);
    put_service_principal(&client, "acr-out", "sp", "out-app", "out-client-secret", 2).await;
    let status = wait_for_reason(&rcreds, "cred", "ProviderError").await;
    let message = &status.conditions[0].message;
    assert!(message.contains("/oauth2/exchange") && message.contains("HTTP 503"), "{message}");
    assert_no_secret_in(message, &["out-client-secret", &first, &second]);
    assert_eq!(password_in(&get_secret(&client, "acr-out", "out-pull").await.unwrap()), second);
    let out = pull_with(&get_secret(&client, "acr-out", "out-pull").await.unwrap(), "out").await;
    assert!(out.status.success(), "the kept Secret no longer pulls: {}", String::from_utf8_lossy(&out.stderr));

    az.standin.set_exchange_mode(tenant, ExchangeMode::Normal);
    wait_for("a new refresh token after the exchange outage", WAIT, || async {
        let p = password_in(&get_secret(&client, "acr-out", "out-pull").await?);
        (p != second).then_some(())
    })
    .await;
    wait_for_reason(&rcreds, "cred", "Synced").await;
    let failures = op
        .metrics()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("regcred_refreshes_total{provider=\"acr\",result=\"failure\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(failures >= 2.0, "failures not counted: {failures}");
}

#[tokio::test]
async fn entra_and_registry_refusals_become_precise_reasons() {
    let az = azure();
    let client = setup().await;
    let ns = "acr-err";
    create_namespace(&client, ns, &[]).await;
    let tenant = "tenant-err";
    az.standin.add_service_principal(tenant, "err-app", "err-right-secret");
    az.standin.grant_acr_pull(tenant, "err-app");
    az.standin.add_service_principal(tenant, "nopull-app", "nopull-secret");
    az.standin.add_service_principal("tenant-throttle", "thr-app", "thr-secret");
    az.standin.grant_acr_pull("tenant-throttle", "thr-app");
    az.standin.set_exchange_mode("tenant-throttle", ExchangeMode::Throttled);
    az.standin.add_service_principal("tenant-malformed", "mal-app", "mal-secret");
    az.standin.grant_acr_pull("tenant-malformed", "mal-app");
    az.standin.set_exchange_mode("tenant-malformed", ExchangeMode::MalformedToken);
    put_service_principal(&client, ns, "right", "err-app", "err-right-secret", 0).await;
    put_service_principal(&client, ns, "ghost", "ghost-app", "ghost-secret", 0).await;
    put_service_principal(&client, ns, "wrong", "err-app", "err-wrong-secret", 0).await;
    put_service_principal(&client, ns, "nopull", "nopull-app", "nopull-secret", 0).await;
    put_service_principal(&client, ns, "thr", "thr-app", "thr-secret", 0).await;
    put_service_principal(&client, ns, "mal", "mal-app", "mal-secret", 0).await;
    let half: Secret = serde_json::from_value(json!({
        "metadata": {"name": "half"}, "stringData": {"client-id": "err-app"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &half).await.unwrap();

    let mut other_ca = acr_spec(tenant, service_principal("right"), "p-ca");
    other_ca["provider"]["acr"]["caBundle"] = az.tokens.root_cert_pem().into();
    let cases: Vec<(&str, Value, &str, Vec<&str>)> = vec![
        (
            "bad-tenant",
            acr_spec("tenant-that-does-not-exist", service_principal("right"), "p1"),
            "ProviderAuthFailed",
            vec!["AADSTS90002", "tenant tenant-that-does-not-exist was not found"],
        ),
        (
            "bad-client",
            acr_spec(tenant, service_principal("ghost"), "p2"),
            "ProviderAuthFailed",
            vec!["AADSTS700016", "ghost-app"],
        ),
        (
            "bad-secret",
            acr_spec(tenant, service_principal("wrong"), "p3"),
            "ProviderAuthFailed",
            vec!["AADSTS7000215", "HTTP 401", "client secret is invalid"],
        ),
        (
            "no-role",
            acr_spec(tenant, service_principal("nopull"), "p4"),
            "ProviderAuthFailed",
            vec!["/oauth2/exchange", "HTTP 401", "AcrPull"],
        ),
        (
            "throttled",
            acr_spec("tenant-throttle", service_principal("thr"), "p5"),
            "ProviderThrottled",
            vec!["HTTP 429"],
        ),
        (
            "malformed",
            acr_spec("tenant-malformed", service_principal("mal"), "p6"),
            "ProviderResponseInvalid",
            vec!["not a usable JWT"],
        ),
        ("half", acr_spec(tenant, service_principal("half"), "p7"), "SourceSecretInvalid", vec!["client-secret"]),
        ("other-ca", other_ca, "ProviderError", vec!["could not be reached", "certificate"]),
    ];
    for (name, spec, _, _) in &cases {
        apply_rcred(&client, ns, name, spec.clone()).await;
    }
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    let secrets = ["err-right-secret", "ghost-secret", "err-wrong-secret", "nopull-secret", "thr-secret", "mal-secret"];
    for (name, spec, reason, needles) in &cases {
        let status = wait_for_reason(&rcreds, name, reason).await;
        let message = &status.conditions[0].message;
        for needle in needles {
            assert!(message.contains(needle), "{name}: {needle:?} not in {message:?}");
        }
        assert_no_secret_in(message, &secrets);
        assert!(!message.contains("entra-"), "{name}: an Entra token in {message:?}");
        let pull = spec["secret"]["name"].as_str().unwrap();
        assert!(get_secret(&client, ns, pull).await.is_none(), "{name}: a Secret was written");
    }
    wait_for("a ProviderAuthFailed Warning", WAIT, || async {
        let ev = events_for(&client, ns, "bad-secret").await;
        ev.iter()
            .any(|(t, r, n)| t == "Warning" && r == "ProviderAuthFailed" && n.contains("AADSTS7000215"))
            .then_some(())
    })
    .await;
}
