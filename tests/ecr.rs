//! AWS ECR and ECR Public against moto (ECR, STS) behind the front that
//! makes it as strict as AWS (testenv `aws_front`), and an ECR Public
//! stand-in, with the real control plane and a real registry behind the
//! token service.
//!
//! The front issues ECR tokens that live 12 hours (or a chosen lifetime)
//! and are valid only in the region that issued them, and checks web
//! identities as STS does: the control plane's ServiceAccount issuer is a
//! registered OIDC provider, and each role's trust policy names the
//! ServiceAccounts it allows.
//!
//! The operator of this test binary runs with the AWS SDK's documented
//! endpoint override for STS (`AWS_ENDPOINT_URL_STS`) and static environment
//! credentials as its ambient identity; ECR is reached through the spec's
//! `endpoint`.

mod common;

use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use regcred_testenv::aws::{ECR_TOKEN_LIFETIME, EcrPublicStandIn, EcrToken, Moto, STS_AUDIENCE};
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

/// The control plane's ServiceAccount issuer, registered with the shared
/// moto's STS as an OIDC provider (once).
fn issuer() -> &'static str {
    static ISSUER: OnceLock<String> = OnceLock::new();
    ISSUER.get_or_init(|| moto().lock().unwrap().add_oidc_provider(control_plane()).unwrap_or_else(|e| panic!("{e:#}")))
}

/// Lets `subjects` assume `role` through the control plane's issuer, with
/// IRSA's audience.
fn trust(role: &str, subjects: &[&str]) {
    let issuer = issuer();
    moto().lock().unwrap().trust_web_identity(role, issuer, STS_AUDIENCE, subjects);
}

/// What the shared moto's ECR bound `password` to.
fn ecr_token(password: &str) -> EcrToken {
    moto().lock().unwrap().ecr_token(password).expect("a password the front's ECR issued")
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

async fn create_service_account(client: &Client, ns: &str, name: &str, role: Option<&str>) {
    let annotations = match role {
        Some(role) => json!({"eks.amazonaws.com/role-arn": role}),
        None => json!({}),
    };
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), ns).create(&PostParams::default(), &sa).await.unwrap();
}

fn ecr_spec(extra: Value) -> Value {
    ecr_spec_at(&endpoint(), extra)
}

fn ecr_spec_at(endpoint: &str, extra: Value) -> Value {
    let mut ecr = json!({"region": "us-east-1", "endpoint": endpoint});
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

/// Waits until `ns/ecr-pull` holds, for `registry`, user `AWS` and a live
/// token of the shared moto issued to `account`, and returns the token.
async fn wait_for_ecr_login(client: &Client, ns: &str, registry: &str, account: &str) -> EcrToken {
    wait_for(&format!("{ns}/ecr-pull to hold a token of account {account} for {registry}"), WAIT, || async {
        let secret = get_secret(client, ns, "ecr-pull").await?;
        let (user, password) = login_in(&secret, registry)?;
        let token = moto().lock().unwrap().ecr_token(&password)?;
        (user == "AWS" && token.account == account && token.is_live()).then_some(token)
    })
    .await
}

/// Seconds from `a` to `b`.
fn secs_between(
    a: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    b: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> i64 {
    b.0.as_second() - a.0.as_second()
}

#[tokio::test]
async fn static_keys_several_registry_ids_twelve_hours_and_a_real_login() {
    let client = aws_setup().await;
    create_namespace(&client, "ecr-static", &[]).await;
    put_aws_keys(&client, "ecr-static", "aws", "AKIASTATICKEY0000001", "static-secret-access-key").await;
    let spec =
        ecr_spec(json!({"auth": {"secretRef": {"name": "aws"}}, "registryIds": ["111111111111", "222222222222"]}));
    apply_rcred(&client, "ecr-static", "cred", spec).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "ecr-static");
    let status = wait_for_reason(&rcreds, "cred", "Synced").await;
    let secret = get_secret(&client, "ecr-static", "ecr-pull").await.unwrap();
    let found = logins(&secret);
    assert_eq!(found.len(), 2, "{:?}", found.iter().map(|l| &l.0).collect::<Vec<_>>());
    let password = found[0].2.clone();
    assert_eq!(
        found.iter().map(|(r, u, p)| (r.as_str(), u.as_str(), p == &password)).collect::<Vec<_>>(),
        [(host("111111111111").as_str(), "AWS", true), (host("222222222222").as_str(), "AWS", true)],
        "one token, one entry per registry"
    );
    assert_eq!(status.registries, [host("111111111111"), host("222222222222")]);
    // The token is the front's: issued in the request's region to the
    // caller of the static keys (moto's account for unknown keys).
    let token = ecr_token(&password);
    assert_eq!(
        (token.account.as_str(), token.region.as_str(), token.access_key_id.as_str(), token.principal_arn.as_deref()),
        ("123456789012", "us-east-1", "AKIASTATICKEY0000001", None)
    );

    // ECR's 12 hours: status carries the real expiry, and the refresh is at
    // 2/3 of the lifetime (less up to 10% jitter).
    let (last, expires, next) = (
        status.last_refresh_time.as_ref().unwrap(),
        status.expires_at.as_ref().unwrap(),
        status.next_refresh_time.as_ref().unwrap(),
    );
    let lifetime = ECR_TOKEN_LIFETIME.as_secs() as i64;
    assert!(
        (lifetime - 5..=lifetime + 1).contains(&secs_between(last, expires)),
        "expiresAt {expires:?}, last {last:?}"
    );
    let wait = secs_between(last, next);
    assert!(
        (lifetime * 2 / 3 * 9 / 10 - 2..=lifetime * 2 / 3 + 1).contains(&wait),
        "next refresh {wait}s after the last"
    );
    assert!(status.conditions[0].message.starts_with("Secret synced"), "{}", status.conditions[0].message);
    let metrics = operator().metrics().unwrap();
    let expiry_line = format!(
        "regcred_credential_expiry_timestamp_seconds{{kind=\"RegistryCredential\",namespace=\"ecr-static\",name=\"cred\"}} {}",
        expires.0.as_second()
    );
    assert!(metrics.contains(&expiry_line), "{expiry_line} not in the metrics");

    // Login proof: the token service accepts what the front's ECR issued
    // in us-east-1, and skopeo pulls with the Secret's login.
    let moto_validator = moto().lock().unwrap().validator_for("us-east-1");
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
    for wrong in ["not-an-ecr-token", "123456789012-auth-token"] {
        write_authfile(&authfile, &registry.host, "AWS", wrong).unwrap();
        let out = regcred_testenv::registry::skopeo_inspect(&authfile, &registry.test_image()).unwrap();
        assert!(!out.status.success(), "the token service accepted a made-up password");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // A token is valid only in the region that issued it.
    assert!(!moto().lock().unwrap().validator_for("eu-west-1")("AWS", &password));
}

#[tokio::test]
async fn a_token_issued_already_expired_is_retried_without_a_hot_loop() {
    let client = aws_setup().await;
    // A moto of its own, whose ECR issues tokens that expired an hour ago
    // (a provider with a wrong clock).
    let own = Moto::start(control_plane().process_group()).unwrap();
    own.set_ecr_expired(true);
    create_namespace(&client, "ecr-expired", &[]).await;
    put_aws_keys(&client, "ecr-expired", "aws", "AKIASTATICKEY0000006", "expired-secret-key").await;
    apply_rcred(
        &client,
        "ecr-expired",
        "cred",
        ecr_spec_at(&own.endpoint(), json!({"auth": {"secretRef": {"name": "aws"}}})),
    )
    .await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "ecr-expired");
    let status = wait_for_reason(&rcreds, "cred", "Synced").await;
    assert!(status.conditions[0].message.contains("expiry in the past"), "{}", status.conditions[0].message);
    let (last, next) = (status.last_refresh_time.as_ref().unwrap(), status.next_refresh_time.as_ref().unwrap());
    assert!(secs_between(last, next) >= 54, "refresh scheduled too soon after a past expiry");
    // Not minted again within the next seconds.
    let calls = own.ecr_calls();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = rcreds.get("cred").await.unwrap().status.unwrap();
    assert_eq!(again.last_refresh_time, status.last_refresh_time, "ECR is called in a loop");
    assert_eq!(own.ecr_calls(), calls, "ECR is called in a loop");
    let expires = status.expires_at.as_ref().unwrap().0.as_second();
    let metrics = operator().metrics().unwrap();
    assert!(
        metrics.contains(&format!(
            "regcred_credential_expiry_timestamp_seconds{{kind=\"RegistryCredential\",namespace=\"ecr-expired\",name=\"cred\"}} {expires}"
        )),
        "the expiry metric does not show {expires}"
    );
}

#[tokio::test]
async fn rotation_follows_the_real_expiry_of_ecr_tokens() {
    let client = aws_setup().await;
    // Tokens that live 30 s: the refresh comes at 2/3 of that (18-20 s with
    // jitter), and a new token replaces the old in the Secret.
    let own = Moto::start(control_plane().process_group()).unwrap();
    own.set_ecr_token_lifetime(Duration::from_secs(30));
    create_namespace(&client, "ecr-rotation", &[]).await;
    put_aws_keys(&client, "ecr-rotation", "aws", "AKIASTATICKEY0000007", "rotation-secret-key").await;
    apply_rcred(
        &client,
        "ecr-rotation",
        "cred",
        ecr_spec_at(&own.endpoint(), json!({"auth": {"secretRef": {"name": "aws"}}})),
    )
    .await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "ecr-rotation");
    let status = wait_for_reason(&rcreds, "cred", "Synced").await;
    let first = get_secret(&client, "ecr-rotation", "ecr-pull").await.unwrap();
    let (_, first_password) = login_in(&first, &host("123456789012")).unwrap();
    let first_token = own.ecr_token(&first_password).expect("the front's token");
    let (last, expires, next) = (
        status.last_refresh_time.clone().unwrap(),
        status.expires_at.clone().unwrap(),
        status.next_refresh_time.clone().unwrap(),
    );
    let issued = first_token.issued_at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((expires.0.as_second() - issued - 30).abs() <= 1, "expiresAt is not the token's: {expires:?}");
    assert!((29..=31).contains(&secs_between(&last, &expires)), "expiresAt {expires:?}, last {last:?}");
    let wait = secs_between(&last, &next);
    assert!((17..=21).contains(&wait), "refresh {wait}s after minting, not at 2/3 of 30 s");
    let calls = own.ecr_calls();

    // The rotation: a new token, minted at the announced time, in place.
    let started = Instant::now();
    // The Secret is written before the status: wait for both.
    let (rotated, now_status) = wait_for("the 30 s token to be rotated", Duration::from_secs(45), || async {
        let s = get_secret(&client, "ecr-rotation", "ecr-pull").await?;
        let (_, password) = login_in(&s, &host("123456789012"))?;
        let status = rcreds.get("cred").await.ok()?.status?;
        let refreshed = status.last_refresh_time.as_ref()?.0 > last.0;
        (password != first_password && refreshed).then_some(((s, password), status))
    })
    .await;
    let elapsed = started.elapsed();
    let refreshed = now_status.last_refresh_time.clone().unwrap();
    assert!(
        refreshed.0.as_second() >= next.0.as_second() - 1,
        "rotated at {refreshed:?}, before the announced {next:?}"
    );
    assert!(refreshed.0.as_second() < expires.0.as_second(), "rotated only after the old token expired");
    assert_eq!(rotated.0.metadata.uid, first.metadata.uid, "the Secret is updated in place");
    let second = own.ecr_token(&rotated.1).expect("the front's token");
    assert!(second.is_live());
    assert!(own.ecr_calls() > calls, "no ECR call for the rotation");
    assert!((29..=31).contains(&secs_between(&refreshed, now_status.expires_at.as_ref().unwrap())));
    eprintln!("30 s ECR token rotated after {:.1}s of waiting", elapsed.as_secs_f64());
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
    let token = wait_for_ecr_login(&client, "ecr-assume", &host("333333333333"), "333333333333").await;
    assert_eq!(token.role_arn().as_deref(), Some("arn:aws:iam::333333333333:role/ecr-pull"));
    assert!(token.principal_arn.as_deref().unwrap().ends_with("/regcred-test"), "{:?}", token.principal_arn);
    let secret = get_secret(&client, "ecr-assume", "ecr-pull").await.unwrap();
    assert_eq!(logins(&secret).iter().map(|l| l.0.clone()).collect::<Vec<_>>(), [host("333333333333")]);
}

#[tokio::test]
async fn service_account_ref_goes_through_token_request_and_assume_role_with_web_identity() {
    let client = aws_setup().await;
    create_namespace(&client, "ecr-irsa", &[]).await;
    trust("arn:aws:iam::444444444444:role/web-pull", &["system:serviceaccount:ecr-irsa:puller"]);
    trust("arn:aws:iam::555555555555:role/spec-role", &["system:serviceaccount:ecr-irsa:pull*"]);
    create_service_account(&client, "ecr-irsa", "puller", Some("arn:aws:iam::444444444444:role/web-pull")).await;
    apply_rcred(&client, "ecr-irsa", "cred", ecr_spec(json!({"auth": {"serviceAccountRef": {"name": "puller"}}})))
        .await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "ecr-irsa");
    wait_for_reason(&rcreds, "cred", "Synced").await;
    let token = wait_for_ecr_login(&client, "ecr-irsa", &host("444444444444"), "444444444444").await;
    assert_eq!(token.role_arn().as_deref(), Some("arn:aws:iam::444444444444:role/web-pull"));
    let calls = moto().lock().unwrap().web_identity_calls();
    let call = calls
        .iter()
        .find(|c| c.role_arn.ends_with("role/web-pull") && c.error.is_none())
        .expect("an accepted AssumeRoleWithWebIdentity");
    assert_eq!(
        (call.subject.as_str(), call.audiences.as_slice()),
        ("system:serviceaccount:ecr-irsa:puller", &[STS_AUDIENCE.to_string()][..])
    );
    assert_eq!(call.issuer, issuer());

    // The role in the spec wins over the annotation.
    let spec = ecr_spec(json!({
        "auth": {"serviceAccountRef": {"name": "puller"}},
        "assumeRole": {"roleArn": "arn:aws:iam::555555555555:role/spec-role"}
    }));
    apply_rcred(&client, "ecr-irsa", "cred", spec).await;
    let token = wait_for_ecr_login(&client, "ecr-irsa", &host("555555555555"), "555555555555").await;
    assert_eq!(token.role_arn().as_deref(), Some("arn:aws:iam::555555555555:role/spec-role"));

    // A missing ServiceAccount is reported precisely.
    apply_rcred(&client, "ecr-irsa", "ghost", ecr_spec(json!({"auth": {"serviceAccountRef": {"name": "ghost"}}})))
        .await;
    let status = wait_for_reason(&rcreds, "ghost", "ServiceAccountNotFound").await;
    assert!(status.conditions[0].message.contains("ecr-irsa/ghost"));
}

#[tokio::test]
async fn web_identities_outside_the_trust_policy_are_refused() {
    let client = aws_setup().await;
    let ns = "ecr-irsa-denied";
    create_namespace(&client, ns, &[]).await;
    let role = "arn:aws:iam::888888888888:role/only-puller";
    trust(role, &["system:serviceaccount:ecr-irsa-denied:puller"]);
    create_service_account(&client, ns, "puller", Some(role)).await;
    create_service_account(&client, ns, "outsider", Some(role)).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    // Each credential writes a Secret of its own name.
    let spec = |name: &str, sa: Value| {
        let mut s = ecr_spec(json!({"auth": {"serviceAccountRef": sa}}));
        s["secret"]["name"] = json!(format!("pull-{name}"));
        s
    };

    // The trusted ServiceAccount works, so what follows is the policy's
    // doing, not the setup's.
    apply_rcred(&client, ns, "trusted", spec("trusted", json!({"name": "puller"}))).await;
    wait_for_reason(&rcreds, "trusted", "Synced").await;

    // A ServiceAccount the trust policy does not name: STS's AccessDenied,
    // and the condition says which ServiceAccount was refused.
    apply_rcred(&client, ns, "outsider", spec("outsider", json!({"name": "outsider"}))).await;
    let status = wait_for_reason(&rcreds, "outsider", "ProviderAuthFailed").await;
    let message = &status.conditions[0].message;
    assert!(message.contains("sts:AssumeRoleWithWebIdentity") && message.contains("AccessDenied"), "{message}");
    assert!(message.contains("Not authorized to perform sts:AssumeRoleWithWebIdentity"), "{message}");
    eprintln!("outsider: {message}");
    assert!(
        message.contains("ecr-irsa-denied") && message.contains("outsider"),
        "the ServiceAccount is not named: {message}"
    );

    // A token for another audience: the provider's client ids do not list
    // it, so STS refuses the token itself.
    apply_rcred(
        &client,
        ns,
        "audience",
        spec("audience", json!({"name": "puller", "audiences": ["vault.example.com"]})),
    )
    .await;
    let status = wait_for_reason(&rcreds, "audience", "ProviderAuthFailed").await;
    let message = &status.conditions[0].message;
    eprintln!("wrong audience: {message}");
    assert!(message.contains("InvalidIdentityToken") && message.contains("Incorrect token audience"), "{message}");

    // A role whose trust policy lists no web identity at all.
    let mut no_policy = spec("no-policy", json!({"name": "puller"}));
    no_policy["provider"]["ecr"]["assumeRole"] = json!({"roleArn": "arn:aws:iam::888888888888:role/no-trust"});
    apply_rcred(&client, ns, "no-policy", no_policy).await;
    let status = wait_for_reason(&rcreds, "no-policy", "ProviderAuthFailed").await;
    assert!(status.conditions[0].message.contains("AccessDenied"), "{}", status.conditions[0].message);

    // What STS saw: the refusals, with STS's codes.
    let calls = moto().lock().unwrap().web_identity_calls();
    let outcome = |sub: &str, role: &str| {
        calls
            .iter()
            .filter(|c| c.subject == format!("system:serviceaccount:{ns}:{sub}") && c.role_arn == role)
            .map(|c| c.error.clone())
            .collect::<Vec<_>>()
    };
    assert!(outcome("outsider", role).iter().all(|e| e.as_deref() == Some("AccessDenied")));
    assert!(!outcome("outsider", role).is_empty());
    assert!(outcome("puller", role).contains(&None));
    assert!(outcome("puller", role).contains(&Some("InvalidIdentityToken".into())));
    for name in ["outsider", "audience", "no-policy"] {
        assert!(get_secret(&client, ns, &format!("pull-{name}")).await.is_none(), "{name}: a Secret was written");
    }
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
    let token = wait_for_ecr_login(&client, "ecr-ambient-a", &host("123456789012"), "123456789012").await;
    assert_eq!(token.access_key_id, AMBIENT_KEY_ID, "not the operator's own identity");

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
    assert!(std::net::TcpStream::connect(own.endpoint().trim_start_matches("http://")).is_err(), "still reachable");
    // New keys force a refresh while AWS is down. The published token lives
    // 12 hours, so the failure is the provider's, with the cause, and the
    // last good Secret stays.
    put_aws_keys(&client, "ecr-outage", "aws", "AKIASTATICKEY0000004", "outage-secret-key-2").await;
    let status = wait_for_reason(&rcreds, "cred", "ProviderError").await;
    let message = &status.conditions[0].message;
    assert!(message.contains("could not connect"), "{message}");
    assert!(message.contains("ecr:GetAuthorizationToken") && message.contains("last good Secret"), "{message}");
    assert!(!message.contains("outage-secret-key"), "{message}");
    let kept = get_secret(&client, "ecr-outage", "ecr-pull").await.unwrap();
    assert_eq!(kept.data, good.data, "the last good Secret changed during the outage");
    let (_, kept_password) = login_in(&kept, &host("123456789012")).unwrap();
    assert!(own.validator()("AWS", &kept_password), "the kept token is no longer valid");

    own.resume().unwrap();
    wait_for_reason(&rcreds, "cred", "Synced").await;
    let healed = get_secret(&client, "ecr-outage", "ecr-pull").await.unwrap();
    let (_, password) = login_in(&healed, &host("123456789012")).unwrap();
    assert_eq!(own.ecr_token(&password).map(|t| t.access_key_id), Some("AKIASTATICKEY0000004".to_string()));
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
    // AWS_ROLE_ARN, exchanged at STS, with a real ServiceAccount token of
    // the control plane, as EKS projects one into a Pod.
    let sts = endpoint();
    let token = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let client = control_plane().client().await.unwrap();
            let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": "ecr-check"}})).unwrap(),
                )
                .await;
            let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "ecr-check");
            let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "irsa"}})).unwrap();
            let _ = sas.create(&PostParams::default(), &sa).await;
            let req = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![STS_AUDIENCE.into()],
                    expiration_seconds: Some(600),
                    ..Default::default()
                },
                ..Default::default()
            };
            sas.create_token_request("irsa", &PostParams::default(), &req).await.unwrap().status.unwrap().token
        })
    })
    .join()
    .unwrap();
    regcred_testenv::operator::record_secret(&token);
    trust("arn:aws:iam::666666666666:role/irsa", &["system:serviceaccount:ecr-check:irsa"]);
    let dir = std::env::temp_dir().join(format!("regcred-ecr-webid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token).unwrap();
    let manifest = dir.join("cred.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: regcred.dev/v1beta1\nkind: ClusterRegistryCredential\nmetadata: {{name: irsa}}\n\
             spec:\n  provider: {{ecr: {{region: us-east-1, endpoint: \"{sts}\"}}}}\n  secret: {{name: pull}}\n  namespaces: [a]\n"
        ),
    )
    .unwrap();
    let check = |role: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_regcred"))
            .args(["check", "-f"])
            .arg(&manifest)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
            .env("AWS_ROLE_ARN", role)
            .env("AWS_ROLE_SESSION_NAME", "regcred-check")
            .env("AWS_ENDPOINT_URL_STS", &sts)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("HOME", &dir)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!text.contains(&token), "the web identity token was printed");
        (out.status.success(), text)
    };
    let calls_before = moto().lock().unwrap().ecr_calls();
    let (ok, text) = check("arn:aws:iam::666666666666:role/irsa");
    assert!(ok, "{text}");
    assert!(text.contains(&format!("registry: {}", host("666666666666"))), "{text}");
    assert!(text.contains("username: AWS") && text.contains("<redacted"), "{text}");
    assert!(moto().lock().unwrap().ecr_calls() > calls_before, "no ECR token was issued");

    // The same token for a role whose trust policy does not name it: STS
    // refuses it, and no ECR token is issued.
    let calls_before = moto().lock().unwrap().ecr_calls();
    let (ok, text) = check("arn:aws:iam::666666666666:role/someone-else");
    assert!(!ok, "a role that does not trust the ServiceAccount was assumed: {text}");
    assert_eq!(moto().lock().unwrap().ecr_calls(), calls_before, "an ECR token was issued: {text}");
    let refused = moto().lock().unwrap().web_identity_calls().into_iter().any(|c| {
        c.role_arn.ends_with("role/someone-else")
            && c.subject == "system:serviceaccount:ecr-check:irsa"
            && c.error.as_deref() == Some("AccessDenied")
    });
    assert!(refused, "STS did not refuse the web identity: {text}");
    // The refusal reaches the user as the SDK's chain reports it: STS's
    // code, not an ECR call that "failed".
    assert!(text.contains("ambient AWS credentials could not be loaded") && text.contains("AccessDenied"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One ECR provider, several regions (`provider.ecr.regions`): one
/// GetAuthorizationToken call per region and refresh, one Secret with an
/// entry per region and account, each holding its own region's token,
/// proven by pulls from a registry per region.
#[tokio::test]
async fn one_secret_serves_several_regions_and_accounts_with_one_call_per_region() {
    let client = aws_setup().await;
    let ns = "ecr-regions";
    create_namespace(&client, ns, &[]).await;
    regcred_testenv::operator::record_secret("regions-secret-access-key");
    let keys: Secret = serde_json::from_value(json!({
        "metadata": {"name": "aws", "namespace": ns},
        "stringData": {"access-key-id": "AKIAREGIONS000000001", "secret-access-key": "regions-secret-access-key"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&Default::default(), &keys).await.unwrap();

    let calls = moto().lock().unwrap().ecr_calls();
    let spec = json!({
        "provider": {"ecr": {"regions": ["us-west-2", "eu-central-1"], "registryIds": ["111111111111", "222222222222"],
            "endpoint": endpoint(), "auth": {"secretRef": {"name": "aws"}}}},
        "secret": {"name": "ecr-pull"},
    });
    apply_rcred(&client, ns, "cred", spec).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    let status = wait_for_reason(&rcreds, "cred", "Synced").await;
    assert_eq!(moto().lock().unwrap().ecr_calls() - calls, 2, "one call per region");

    let secret = get_secret(&client, ns, "ecr-pull").await.unwrap();
    let logins = logins(&secret);
    let hosts: Vec<&str> = logins.iter().map(|(h, _, _)| h.as_str()).collect();
    assert_eq!(
        hosts,
        [
            "111111111111.dkr.ecr.eu-central-1.amazonaws.com",
            "111111111111.dkr.ecr.us-west-2.amazonaws.com",
            "222222222222.dkr.ecr.eu-central-1.amazonaws.com",
            "222222222222.dkr.ecr.us-west-2.amazonaws.com",
        ]
    );
    for (host, user, password) in &logins {
        let region = host.split('.').nth(3).unwrap();
        let token = moto()
            .lock()
            .unwrap()
            .ecr_token(password)
            .unwrap_or_else(|| panic!("{host}: not a token the stand-in issued"));
        assert_eq!((user.as_str(), token.region.as_str()), ("AWS", region), "{host} holds its own region's token");
    }
    let mut registries = status.registries.clone();
    registries.sort();
    assert_eq!(registries, hosts);
    // The Secret lives as long as its shortest-lived token (12 h each).
    let expires = status.expires_at.as_ref().unwrap().0;
    let last = status.last_refresh_time.as_ref().unwrap().0;
    let lifetime = expires.duration_since(last).as_secs();
    assert!((11 * 3600..=12 * 3600 + 5).contains(&lifetime), "expiresAt {lifetime} s after the refresh");

    // Pulls: a registry per region accepting only that region's tokens;
    // each region's entry pulls from its own and not from the other's.
    let dir = std::env::temp_dir().join(format!("regcred-ecr-regions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let authfile = dir.join("auth.json");
    for (region, other) in [("us-west-2", "eu-central-1"), ("eu-central-1", "us-west-2")] {
        let valid = moto().lock().unwrap().validator_for(region);
        let tokens = TokenService::start(std::sync::Arc::new(move |u: &str, p: &str| {
            (u == "pusher" && p == "pusher-password") || valid(u, p)
        }))
        .unwrap();
        let registry =
            start_token_registry(control_plane().process_group(), &tokens, "pusher", "pusher-password").unwrap();
        for (from, works) in [(region, true), (other, false)] {
            let (_, user, password) =
                logins.iter().find(|(h, _, _)| h == &format!("111111111111.dkr.ecr.{from}.amazonaws.com")).unwrap();
            write_authfile(&authfile, &registry.host, user, password).unwrap();
            let out = regcred_testenv::registry::skopeo_inspect(&authfile, &registry.test_image()).unwrap();
            assert_eq!(
                out.status.success(),
                works,
                "{region}'s registry with {from}'s token: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
