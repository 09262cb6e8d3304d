//! AWS ECR and ECR Public against moto (ECR, STS) and an ECR Public stand-in,
//! with the real control plane and a real registry behind the token service.
//!
//! The operator of this test binary runs with the AWS SDK's documented
//! endpoint override for STS (`AWS_ENDPOINT_URL_STS`) and static environment
//! credentials as its ambient identity; ECR is reached through the spec's
//! `endpoint`.

mod common;

use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use regcred_testenv::aws::{EcrPublicStandIn, Moto};
use regcred_testenv::tokenauth::{TokenService, start_token_registry, write_authfile};
use serde_json::{Value, json};

const AMBIENT_KEY_ID: &str = "AKIAAMBIENTOPERATOR1";
const AMBIENT_SECRET: &str = "ambient-operator-secret-key";

fn moto() -> &'static Mutex<Moto> {
    static MOTO: OnceLock<Mutex<Moto>> = OnceLock::new();
    MOTO.get_or_init(|| Mutex::new(Moto::start(control_plane().process_group()).unwrap_or_else(|e| panic!("{e:#}"))))
}

fn endpoint() -> String {
    moto().lock().unwrap().endpoint()
}

async fn aws_setup() -> Client {
    let moto = endpoint();
    regcred_testenv::operator::record_secret(AMBIENT_SECRET);
    set_operator_env(vec![
        ("AWS_ENDPOINT_URL_STS".into(), moto),
        ("AWS_ACCESS_KEY_ID".into(), AMBIENT_KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), AMBIENT_SECRET.into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]);
    setup().await
}

async fn put_aws_keys(client: &Client, ns: &str, name: &str, key_id: &str, secret: &str) {
    regcred_testenv::operator::record_secret(secret);
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"access-key-id": key_id, "secret-access-key": secret}
    }))
    .unwrap();
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let pp = kube::api::PatchParams::apply("regcred-test").force();
    api.patch(name, &pp, &kube::api::Patch::Apply(&s)).await.unwrap();
}

fn ecr_spec(extra: Value) -> Value {
    let mut ecr = json!({"region": "us-east-1", "endpoint": endpoint()});
    ecr.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({"provider": {"ecr": ecr}, "secret": {"name": "ecr-pull"}})
}

fn host(account: &str) -> String {
    format!("{account}.dkr.ecr.us-east-1.amazonaws.com")
}

fn logins(secret: &Secret) -> Vec<(String, String, String)> {
    let data = &secret.data.as_ref().unwrap()[".dockerconfigjson"].0;
    let v: Value = serde_json::from_slice(data).unwrap();
    let mut out: Vec<_> = v["auths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, e)| (k.clone(), e["username"].as_str().unwrap().into(), e["password"].as_str().unwrap().into()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn static_keys_several_registry_ids_past_expiry_and_a_real_login() {
    let client = aws_setup().await;
    create_namespace(&client, "ecr-static", &[]).await;
    put_aws_keys(&client, "ecr-static", "aws", "AKIASTATICKEY0000001", "static-secret-access-key").await;
    let spec =
        ecr_spec(json!({"auth": {"secretRef": {"name": "aws"}}, "registryIds": ["111111111111", "222222222222"]}));
    apply_rcred(&client, "ecr-static", "cred", spec).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "ecr-static");
    let status = wait_for_reason(&rcreds, "cred", "Synced").await;
    let secret = get_secret(&client, "ecr-static", "ecr-pull").await.unwrap();
    let password = Moto::ecr_password("123456789012");
    assert_eq!(
        logins(&secret),
        [
            (host("111111111111"), "AWS".to_string(), password.clone()),
            (host("222222222222"), "AWS".to_string(), password.clone())
        ]
    );
    assert_eq!(status.registries, [host("111111111111"), host("222222222222")]);

    // moto reports an expiry in 2015: no hot loop, and status says why.
    let expires = status.expires_at.as_ref().unwrap().0;
    assert_eq!(expires.as_second(), 1_420_070_400);
    let last = status.last_refresh_time.as_ref().unwrap().0;
    let next = status.next_refresh_time.as_ref().unwrap().0;
    assert!(next.duration_since(last).as_secs() >= 54, "refresh scheduled too soon after a past expiry");
    assert!(status.conditions[0].message.contains("expiry in the past"), "{}", status.conditions[0].message);
    let refreshes = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("regcred_refreshes_total{provider=\"ecr\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // This credential is not minted again within the next seconds (its own
    // lastRefreshTime; the refresh counter also counts the other tests'
    // credentials, which mint in parallel).
    let before = refreshes(&operator().metrics().unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = operator().metrics().unwrap();
    let again = rcreds.get("cred").await.unwrap().status.unwrap();
    assert_eq!(again.last_refresh_time, status.last_refresh_time, "ECR is called in a loop");
    eprintln!("ECR refreshes by every credential of this binary in 3 s: {}", refreshes(&metrics) - before);
    assert!(
        metrics.contains(
            "regcred_credential_expiry_timestamp_seconds{kind=\"RegistryCredential\",namespace=\"ecr-static\",name=\"cred\"} 1420070400"
        ),
        "{metrics}"
    );

    // Login proof: the token service accepts what moto's ECR issued, and
    // skopeo pulls with the Secret's login.
    let moto_validator = moto().lock().unwrap().validator();
    let tokens = TokenService::start(std::sync::Arc::new(move |u: &str, p: &str| {
        (u == "pusher" && p == "pusher-password") || moto_validator(u, p)
    }))
    .unwrap();
    let registry = start_token_registry(control_plane().process_group(), &tokens, "pusher", "pusher-password").unwrap();
    let dir = std::env::temp_dir().join(format!("regcred-ecr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let authfile = dir.join("auth.json");
    write_authfile(&authfile, &registry.host, "AWS", &password).unwrap();
    let out = regcred_testenv::registry::skopeo_inspect(&authfile, &registry.test_image()).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    write_authfile(&authfile, &registry.host, "AWS", "not-an-ecr-token").unwrap();
    let out = regcred_testenv::registry::skopeo_inspect(&authfile, &registry.test_image()).unwrap();
    assert!(!out.status.success(), "the token service accepted a made-up password");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn assume_role_on_top_of_static_keys_uses_the_roles_account() {
    let client = aws_setup().await;
    create_namespace(&client, "ecr-assume", &[]).await;
    put_aws_keys(&client, "ecr-assume", "aws", "AKIASTATICKEY0000002", "assume-base-secret-key").await;
    let spec = ecr_spec(json!({
        "auth": {"secretRef": {"name": "aws"}},
        "assumeRole": {"roleArn": "arn:aws:iam::333333333333:role/ecr-pull", "externalId": "ext-id-1", "sessionName": "regcred-test"}
    }));
    apply_rcred(&client, "ecr-assume", "cred", spec).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "ecr-assume");
    wait_for_reason(&rcreds, "cred", "Synced").await;
    let secret = get_secret(&client, "ecr-assume", "ecr-pull").await.unwrap();
    assert_eq!(logins(&secret), [(host("333333333333"), "AWS".into(), Moto::ecr_password("333333333333"))]);
}

#[tokio::test]
async fn service_account_ref_goes_through_token_request_and_assume_role_with_web_identity() {
    let client = aws_setup().await;
    create_namespace(&client, "ecr-irsa", &[]).await;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {
        "name": "puller", "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::444444444444:role/web-pull"}
    }}))
    .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), "ecr-irsa").create(&PostParams::default(), &sa).await.unwrap();
    apply_rcred(&client, "ecr-irsa", "cred", ecr_spec(json!({"auth": {"serviceAccountRef": {"name": "puller"}}})))
        .await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "ecr-irsa");
    wait_for_reason(&rcreds, "cred", "Synced").await;
    let secret = get_secret(&client, "ecr-irsa", "ecr-pull").await.unwrap();
    assert_eq!(logins(&secret), [(host("444444444444"), "AWS".into(), Moto::ecr_password("444444444444"))]);

    // The role in the spec wins over the annotation.
    let spec = ecr_spec(json!({
        "auth": {"serviceAccountRef": {"name": "puller"}},
        "assumeRole": {"roleArn": "arn:aws:iam::555555555555:role/spec-role"}
    }));
    apply_rcred(&client, "ecr-irsa", "cred", spec).await;
    wait_for_login(&client, "ecr-irsa", "ecr-pull", &host("555555555555"), "AWS", &Moto::ecr_password("555555555555"))
        .await;

    // A missing ServiceAccount is reported precisely.
    apply_rcred(&client, "ecr-irsa", "ghost", ecr_spec(json!({"auth": {"serviceAccountRef": {"name": "ghost"}}})))
        .await;
    let status = wait_for_reason(&rcreds, "ghost", "ServiceAccountNotFound").await;
    assert!(status.conditions[0].message.contains("ecr-irsa/ghost"));
}

#[tokio::test]
async fn ambient_identity_is_for_cluster_credentials_only() {
    let client = aws_setup().await;
    create_namespace(&client, "ecr-ambient-a", &[("ecr-ambient", "yes")]).await;
    let mut spec = ecr_spec(json!({}));
    spec["namespaceSelector"] = json!({"matchLabels": {"ecr-ambient": "yes"}});
    apply_crcred(&client, "ecr-ambient", spec).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    wait_for_reason(&crcreds, "ecr-ambient", "Synced").await;
    let secret = get_secret(&client, "ecr-ambient-a", "ecr-pull").await.unwrap();
    assert_eq!(logins(&secret), [(host("123456789012"), "AWS".into(), Moto::ecr_password("123456789012"))]);

    // A tenant may not borrow the operator's identity, implicitly or explicitly.
    create_namespace(&client, "ecr-tenant", &[]).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "ecr-tenant");
    apply_rcred(&client, "ecr-tenant", "implicit", ecr_spec(json!({}))).await;
    apply_rcred(&client, "ecr-tenant", "explicit", ecr_spec(json!({"auth": {"ambient": {}}}))).await;
    for name in ["implicit", "explicit"] {
        let status = wait_for_reason(&rcreds, name, "AmbientIdentityForbidden").await;
        assert!(status.conditions[0].message.contains("serviceAccountRef"));
    }
    assert!(get_secret(&client, "ecr-tenant", "ecr-pull").await.is_none());
}

#[tokio::test]
async fn an_aws_outage_keeps_the_last_good_secret_and_heals() {
    let client = aws_setup().await;
    // A moto of its own: the other tests keep theirs running.
    let mut own = Moto::start(control_plane().process_group()).unwrap();
    create_namespace(&client, "ecr-outage", &[]).await;
    put_aws_keys(&client, "ecr-outage", "aws", "AKIASTATICKEY0000003", "outage-secret-key-1").await;
    let spec = json!({
        "provider": {"ecr": {"region": "us-east-1", "endpoint": own.endpoint(), "auth": {"secretRef": {"name": "aws"}}}},
        "secret": {"name": "ecr-pull"}
    });
    apply_rcred(&client, "ecr-outage", "cred", spec).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "ecr-outage");
    wait_for_reason(&rcreds, "cred", "Synced").await;
    let good = get_secret(&client, "ecr-outage", "ecr-pull").await.unwrap();

    own.stop();
    // New keys force a refresh while AWS is down.
    put_aws_keys(&client, "ecr-outage", "aws", "AKIASTATICKEY0000004", "outage-secret-key-2").await;
    // moto's tokens carry a 2015 expiry, so the failure is reported as the
    // published credential having expired, with the cause.
    let status = wait_for_reason(&rcreds, "cred", "CredentialExpired").await;
    let message = &status.conditions[0].message;
    assert!(message.contains("could not connect"), "{message}");
    assert!(message.contains("ecr:GetAuthorizationToken") && message.contains("last good Secret"), "{message}");
    assert!(!message.contains("outage-secret-key"), "{message}");
    let kept = get_secret(&client, "ecr-outage", "ecr-pull").await.unwrap();
    assert_eq!(kept.data, good.data, "the last good Secret changed during the outage");

    own.resume().unwrap();
    wait_for_reason(&rcreds, "cred", "Synced").await;
}

#[tokio::test]
async fn ecr_public_through_its_json_api() {
    let client = aws_setup().await;
    let standin = EcrPublicStandIn::start(Duration::from_secs(3600)).unwrap();
    create_namespace(&client, "ecr-public", &[]).await;
    put_aws_keys(&client, "ecr-public", "aws", "AKIASTATICKEY0000005", "public-secret-key").await;
    let spec = json!({
        "provider": {"ecrPublic": {"auth": {"secretRef": {"name": "aws"}}, "endpoint": standin.endpoint()}},
        "secret": {"name": "public-pull"}
    });
    apply_rcred(&client, "ecr-public", "cred", spec).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "ecr-public");
    let status = wait_for_reason(&rcreds, "cred", "Synced").await;
    assert_eq!(status.registries, ["public.ecr.aws"]);
    assert_eq!(standin.calls(), 1);
    let secret = get_secret(&client, "ecr-public", "public-pull").await.unwrap();
    let (registry, user, token) = logins(&secret).remove(0);
    regcred_testenv::operator::record_secret(&token);
    assert_eq!((registry.as_str(), user.as_str()), ("public.ecr.aws", "AWS"));
    let expires = status.expires_at.unwrap().0;
    let lifetime = expires.duration_since(status.last_refresh_time.unwrap().0).as_secs();
    assert!((3590..=3610).contains(&lifetime), "expiry not taken from the response: {lifetime}s");
    let validator = standin.validator();
    assert!(validator("AWS", &token), "the published token is not the one the stand-in issued");
}

#[test]
fn check_uses_web_identity_from_a_token_file_as_ambient_identity() {
    // The default credential chain (IRSA): AWS_WEB_IDENTITY_TOKEN_FILE and
    // AWS_ROLE_ARN, exchanged at STS.
    let moto = endpoint();
    let dir = std::env::temp_dir().join(format!("regcred-ecr-webid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJzdHMuYW1hem9uYXdzLmNvbSJ9.c2ln").unwrap();
    let manifest = dir.join("cred.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: regcred.dev/v1alpha1\nkind: ClusterRegistryCredential\nmetadata: {{name: irsa}}\n\
             spec:\n  provider: {{ecr: {{region: us-east-1, endpoint: \"{moto}\"}}}}\n  secret: {{name: pull}}\n  namespaces: [a]\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_regcred"))
        .args(["check", "-f"])
        .arg(&manifest)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
        .env("AWS_ROLE_ARN", "arn:aws:iam::666666666666:role/irsa")
        .env("AWS_ROLE_SESSION_NAME", "regcred-check")
        .env("AWS_ENDPOINT_URL_STS", &moto)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("HOME", &dir)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("registry: {}", host("666666666666"))), "{text}");
    assert!(text.contains("username: AWS") && text.contains("<redacted"), "{text}");
    assert!(!text.contains("666666666666-auth-token"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
