//! ECR with EKS Pod Identity as the operator's ambient identity: the AWS
//! SDK's default credential chain reads `AWS_CONTAINER_CREDENTIALS_FULL_URI`
//! and `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, as the EKS webhook injects
//! them, and gets the associated role's credentials from the Pod Identity
//! Agent ([`PodIdentityAgent`], which checks the token with this control
//! plane's TokenReview and assumes the role at moto's STS).
//!
//! The operator of this binary plays a Pod of the ServiceAccount
//! `regcred-system/regcred`: its token file holds a TokenRequest token for
//! that ServiceAccount, audience `pods.eks.amazonaws.com`, bound to a Pod
//! object, as the projected volume EKS mounts. The tests change the
//! association and the file's content, so they take turns ([`turn`]).

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use common::*;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use regcred::api::ClusterRegistryCredential;
use regcred_testenv::aws::Moto;
use regcred_testenv::operator::record_secret;
use regcred_testenv::pod_identity::{AUDIENCE, PodIdentityAgent, Served, token_fingerprint};
use regcred_testenv::tokenauth::{TokenService, start_token_registry, write_authfile};
use serde_json::json;

/// The operator's ServiceAccount (in [`CLUSTER_NS`]) and the Pod its token
/// is bound to.
const OPERATOR_SA: &str = "regcred";
const OPERATOR_POD: &str = "regcred-0";
/// The role associated with the operator's ServiceAccount.
const ACCOUNT: &str = "777777777777";
const ROLE: &str = "arn:aws:iam::777777777777:role/regcred-ecr-pull";
/// How the SDK reports an agent's refusal (aws-config
/// `src/http_credential_provider.rs`, `parse_response`).
const SDK_REFUSAL: &str = "Non-success status from HTTP credential provider";

struct Fixture {
    moto: Moto,
    agent: PodIdentityAgent,
    token_file: PathBuf,
}

/// moto, the agent, and the operator's environment, once per binary.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let cp = control_plane();
        let moto = Moto::start(cp.process_group()).unwrap_or_else(|e| panic!("{e:#}"));
        let agent = PodIdentityAgent::start(cp, &moto.endpoint()).unwrap_or_else(|e| panic!("{e:#}"));
        // Removed with the control plane.
        let dir = cp.dir().join("pod-identity");
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("eks-pod-identity-token");
        let path = |p: &PathBuf| p.display().to_string();
        set_operator_env(vec![
            // What the EKS Pod Identity webhook injects (with 169.254.170.23
            // for the agent's address).
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI".into(), agent.url()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".into(), path(&token_file)),
            ("AWS_ENDPOINT_URL".into(), moto.endpoint()),
            // Nothing earlier in the chain, nothing after it.
            ("AWS_ACCESS_KEY_ID".into(), String::new()),
            ("AWS_SECRET_ACCESS_KEY".into(), String::new()),
            ("AWS_CONFIG_FILE".into(), path(&dir.join("no-config"))),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), path(&dir.join("no-credentials"))),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]);
        Fixture { moto, agent, token_file }
    })
}

/// One test at a time: they share the operator's identity.
async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// The operator running, its ServiceAccount and Pod object created.
async fn setup_operator_identity() -> Client {
    fixture();
    let client = setup().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), CLUSTER_NS);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": OPERATOR_SA}})).unwrap();
    match sas.create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating ServiceAccount {OPERATOR_SA}: {e}"),
    }
    create_operator_pod(&client, OPERATOR_POD).await;
    client
}

/// A Pod object of the operator's ServiceAccount (never scheduled: there
/// is no node), for tokens to be bound to.
async fn create_operator_pod(client: &Client, name: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"serviceAccountName": OPERATOR_SA, "containers": [{"name": "regcred", "image": "registry.invalid/regcred:test"}]}
    }))
    .unwrap();
    match Api::<Pod>::namespaced(client.clone(), CLUSTER_NS).create(&PostParams::default(), &pod).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating Pod {name}: {e}"),
    }
}

/// A token for the operator's ServiceAccount from the TokenRequest API,
/// bound to its Pod, as the kubelet writes into the projected volume.
async fn operator_token(client: &Client, audience: &str) -> String {
    pod_token(client, OPERATOR_POD, audience).await
}

/// A TokenRequest token for the operator's ServiceAccount bound to `pod`.
async fn pod_token(client: &Client, pod: &str, audience: &str) -> String {
    let pod = Api::<Pod>::namespaced(client.clone(), CLUSTER_NS).get(pod).await.unwrap();
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_string()],
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client.clone(), CLUSTER_NS)
        .create_token_request(OPERATOR_SA, &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    record_secret(&token);
    token
}

/// Replaces the token file's content the way the kubelet does (a new file
/// renamed over the old), and returns the token's fingerprint.
fn write_token_file(token: &str) -> String {
    let file = &fixture().token_file;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, file).unwrap();
    token_fingerprint(token)
}

/// A fresh token for the operator in the token file; its fingerprint.
async fn rotate_token(client: &Client) -> String {
    write_token_file(&operator_token(client, AUDIENCE).await)
}

fn host() -> String {
    format!("{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com")
}

/// A ClusterRegistryCredential with ambient ECR auth for the namespaces
/// labelled `pod-identity: <name>`; `round` changes the spec (a new
/// generation mints again).
async fn apply_ambient(client: &Client, name: &str, round: u32) {
    let spec = json!({
        "provider": {"ecr": {"region": "us-east-1", "auth": {"ambient": {}}}},
        "secret": {"name": "ecr-pull", "labels": {"round": round.to_string()}},
        "namespaceSelector": {"matchLabels": {"pod-identity": name}}
    });
    apply_crcred(client, name, spec).await;
}

async fn delete_crcred(client: &Client, name: &str) {
    let _ = Api::<ClusterRegistryCredential>::all(client.clone()).delete(name, &DeleteParams::default()).await;
}

/// The agent's answers to requests carrying the token `fingerprint`.
fn served_with(fingerprint: &str) -> Vec<Served> {
    fixture().agent.served().into_iter().filter(|s| s.token.as_deref() == Some(fingerprint)).collect()
}

fn login(secret: &Secret) -> (String, String) {
    login_in(secret, &host()).unwrap_or_else(|| {
        panic!("no login for {} in {:?}", host(), secret.data.as_ref().map(|d| d.keys().collect::<Vec<_>>()))
    })
}

#[tokio::test]
async fn the_associated_role_is_the_ambient_identity_and_its_login_works() {
    let _turn = turn().await;
    let client = setup_operator_identity().await;
    let fx = fixture();
    fx.agent.associate(CLUSTER_NS, OPERATOR_SA, ROLE);
    let token = rotate_token(&client).await;
    create_namespace(&client, "pod-identity-a", &[("pod-identity", "pod-identity-a")]).await;
    apply_ambient(&client, "pod-identity-a", 1).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let status = wait_for_reason(&crcreds, "pod-identity-a", "Synced").await;
    assert_eq!(status.registries, [host()], "the registry is the associated role's account's");

    // The SDK presented the token file's content; the agent took it for the
    // operator's ServiceAccount and answered with the role's credentials.
    let served = served_with(&token);
    assert!(
        served.iter().any(|s| s.status == 200 && s.subject.as_deref() == Some("regcred-system/regcred")),
        "{served:?}"
    );

    // The login is moto's ECR token for that account, and a registry behind
    // the token service accepts it: skopeo pulls with it.
    let secret = get_secret(&client, "pod-identity-a", "ecr-pull").await.unwrap();
    let (user, password) = login(&secret);
    record_secret(&password);
    assert_eq!(user, "AWS");
    let moto_validator = fx.moto.validator();
    assert!(moto_validator("AWS", &password), "moto did not issue the published password");
    let tokens = TokenService::start(Arc::new(move |u: &str, p: &str| {
        (u == "pusher" && p == "pusher-password") || moto_validator(u, p)
    }))
    .unwrap();
    let registry = start_token_registry(control_plane().process_group(), &tokens, "pusher", "pusher-password").unwrap();
    let dir = std::env::temp_dir().join(format!("regcred-pod-identity-login-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let authfile = dir.join("auth.json");
    write_authfile(&authfile, &registry.host, &user, &password).unwrap();
    let out = regcred_testenv::registry::skopeo_inspect(&authfile, &registry.test_image()).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    write_authfile(&authfile, &registry.host, "AWS", "not-an-ecr-token").unwrap();
    let out = regcred_testenv::registry::skopeo_inspect(&authfile, &registry.test_image()).unwrap();
    assert!(!out.status.success(), "the token service accepted a made-up password");
    std::fs::remove_dir_all(&dir).unwrap();
    delete_crcred(&client, "pod-identity-a").await;
}

#[tokio::test]
async fn a_service_account_without_association_is_reported_with_the_sdks_cause() {
    let _turn = turn().await;
    let client = setup_operator_identity().await;
    let fx = fixture();
    fx.agent.disassociate(CLUSTER_NS, OPERATOR_SA);
    // A token the agent has not cached credentials for.
    let token = rotate_token(&client).await;
    create_namespace(&client, "pod-identity-none", &[("pod-identity", "pod-identity-none")]).await;
    apply_ambient(&client, "pod-identity-none", 1).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let status = wait_for_reason(&crcreds, "pod-identity-none", "ProviderAuthFailed").await;
    let message = &status.conditions[0].message;
    // The SDK reports the agent's status only (not its body): 404 is EKS
    // Auth's ResourceNotFoundException, no association.
    assert!(message.contains(SDK_REFUSAL) && message.contains("404"), "{message}");
    let served = served_with(&token);
    assert!(
        served.iter().all(|s| s.status == 404
            && s.error_code.as_deref() == Some("ResourceNotFoundException")
            && s.subject.as_deref() == Some("regcred-system/regcred")),
        "{served:?}"
    );
    assert!(!served.is_empty(), "the agent was not asked");
    assert!(get_secret(&client, "pod-identity-none", "ecr-pull").await.is_none());

    // The association appears: the next mint succeeds with the same token.
    fx.agent.associate(CLUSTER_NS, OPERATOR_SA, ROLE);
    apply_ambient(&client, "pod-identity-none", 2).await;
    wait_for_reason(&crcreds, "pod-identity-none", "Synced").await;
    let secret = get_secret(&client, "pod-identity-none", "ecr-pull").await.unwrap();
    assert_eq!(login(&secret).0, "AWS");
    delete_crcred(&client, "pod-identity-none").await;
}

#[tokio::test]
async fn the_token_file_is_read_again_for_every_mint() {
    let _turn = turn().await;
    let client = setup_operator_identity().await;
    let fx = fixture();
    fx.agent.associate(CLUSTER_NS, OPERATOR_SA, ROLE);
    let first = rotate_token(&client).await;
    create_namespace(&client, "pod-identity-rotate", &[("pod-identity", "pod-identity-rotate")]).await;
    apply_ambient(&client, "pod-identity-rotate", 1).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    wait_for_reason(&crcreds, "pod-identity-rotate", "Synced").await;
    assert!(served_with(&first).iter().any(|s| s.status == 200));

    // The kubelet rotates the projected token: the next mint sends the new one.
    let second = rotate_token(&client).await;
    assert_ne!(first, second);
    assert!(served_with(&second).is_empty());
    apply_ambient(&client, "pod-identity-rotate", 2).await;
    wait_for_reason(&crcreds, "pod-identity-rotate", "Synced").await;
    let served = served_with(&second);
    assert!(served.iter().any(|s| s.status == 200 && !s.cached), "{served:?}");
    let last = fx.agent.served().last().cloned().unwrap();
    assert_eq!(last.token.as_deref(), Some(second.as_str()), "a later request used another token");
    delete_crcred(&client, "pod-identity-rotate").await;
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused_and_the_last_good_secret_stays() {
    let _turn = turn().await;
    let client = setup_operator_identity().await;
    let fx = fixture();
    fx.agent.associate(CLUSTER_NS, OPERATOR_SA, ROLE);
    rotate_token(&client).await;
    create_namespace(&client, "pod-identity-aud", &[("pod-identity", "pod-identity-aud")]).await;
    apply_ambient(&client, "pod-identity-aud", 1).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    wait_for_reason(&crcreds, "pod-identity-aud", "Synced").await;
    let good = get_secret(&client, "pod-identity-aud", "ecr-pull").await.unwrap();

    // IRSA's audience in the file: the agent passes it on (it parses and
    // has not expired), EKS Auth refuses it.
    let foreign = write_token_file(&operator_token(&client, "sts.amazonaws.com").await);
    apply_ambient(&client, "pod-identity-aud", 2).await;
    let status = wait_for_reason(&crcreds, "pod-identity-aud", "ProviderAuthFailed").await;
    let message = &status.conditions[0].message;
    assert!(message.contains(SDK_REFUSAL) && message.contains("400"), "{message}");
    let served = served_with(&foreign);
    assert!(
        !served.is_empty() && served.iter().all(|s| s.error_code.as_deref() == Some("InvalidTokenException")),
        "{served:?}"
    );
    // Refused for its audience, by the control plane's own check.
    let cause = served[0].cause.clone().unwrap_or_default();
    assert!(cause.contains("token audiences") && cause.contains(AUDIENCE), "{cause}");
    let kept = get_secret(&client, "pod-identity-aud", "ecr-pull").await.unwrap();
    assert_eq!(kept.data, good.data, "the last good Secret changed");

    // A good token again: healed.
    rotate_token(&client).await;
    apply_ambient(&client, "pod-identity-aud", 3).await;
    wait_for_reason(&crcreds, "pod-identity-aud", "Synced").await;
    delete_crcred(&client, "pod-identity-aud").await;
}

/// A projected token is bound to its Pod: once the Pod is deleted, EKS Auth
/// (here the apiserver's TokenReview) no longer accepts it.
#[tokio::test]
async fn a_token_of_a_deleted_pod_is_refused() {
    let _turn = turn().await;
    let client = setup_operator_identity().await;
    let fx = fixture();
    fx.agent.associate(CLUSTER_NS, OPERATOR_SA, ROLE);
    create_operator_pod(&client, "regcred-gone").await;
    let token = pod_token(&client, "regcred-gone", AUDIENCE).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), CLUSTER_NS);
    pods.delete("regcred-gone", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    wait_for("Pod regcred-gone to be gone", WAIT, || async {
        pods.get_opt("regcred-gone").await.unwrap().is_none().then_some(())
    })
    .await;
    let fingerprint = write_token_file(&token);
    create_namespace(&client, "pod-identity-gone", &[("pod-identity", "pod-identity-gone")]).await;
    apply_ambient(&client, "pod-identity-gone", 1).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let status = wait_for_reason(&crcreds, "pod-identity-gone", "ProviderAuthFailed").await;
    let message = &status.conditions[0].message;
    assert!(message.contains(SDK_REFUSAL) && message.contains("400"), "{message}");
    let served = served_with(&fingerprint);
    assert!(
        !served.is_empty() && served.iter().all(|s| s.error_code.as_deref() == Some("InvalidTokenException")),
        "{served:?}"
    );
    let cause = served[0].cause.clone().unwrap_or_default();
    assert!(cause.contains("token has been invalidated"), "{cause}");
    delete_crcred(&client, "pod-identity-gone").await;
}

/// The SDK itself refuses a plain-http credentials endpoint that is not
/// loopback, 169.254.170.2, 169.254.170.23 or fd00:ec2::23 (aws-config
/// `src/ecs.rs`, `validate_full_uri`), before any request: `regcred check`
/// says so rather than blaming ECR.
#[test]
fn a_credentials_endpoint_the_sdk_does_not_allow_is_named() {
    let dir = std::env::temp_dir().join(format!("regcred-pod-identity-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("eks-pod-identity-token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJwb2RzLmVrcy5hbWF6b25hd3MuY29tIn0.c2ln").unwrap();
    let manifest = dir.join("cred.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: regcred.dev/v1beta1\nkind: ClusterRegistryCredential\nmetadata: {name: pod-identity}\n\
         spec:\n  provider: {ecr: {region: us-east-1, auth: {ambient: {}}}}\n  secret: {name: pull}\n  namespaces: [a]\n",
    )
    .unwrap();
    // TEST-NET-1: never routed, and never contacted.
    let uri = "http://192.0.2.23/v1/credentials";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcred"))
        .args(["check", "-f"])
        .arg(&manifest)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", &dir)
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri)
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file)
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("ProviderAuthFailed"), "{text}");
    assert!(text.contains("URI did not refer to an allowed IP address") && text.contains(uri), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
