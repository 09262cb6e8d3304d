//! Bad input: a table of invalid or hostile credentials and source Secrets.
//! Each is rejected at apply time with a message naming the problem, or
//! reported as `Ready=False` with the precise reason, while a good cluster
//! credential and a good namespaced credential keep working throughout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use regcred::api::{ClusterRegistryCredential, RegistryCredential};
use serde_json::{Value, json};

const REGISTRY: &str = "registry.example.com";
const NS: &str = "bad-input";
const GOOD_PASSWORD: &str = "bad-input-good-password-7f3a";

/// A good cluster credential (to `bad-good-*`) and a good namespaced one in
/// [`NS`]; returns once both are Synced.
async fn good_credentials(client: &Client) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        create_namespace(client, NS, &[]).await;
        for i in 0..3 {
            create_namespace(client, &format!("bad-good-{i}"), &[("bad-input-good", "yes")]).await;
        }
        put_login(client, CLUSTER_NS, "bad-good-login", "good-user", GOOD_PASSWORD).await;
        let mut spec = basic_spec(REGISTRY, "bad-good-login", "bad-good-pull");
        spec["namespaceSelector"] = json!({"matchLabels": {"bad-input-good": "yes"}});
        apply_crcred(client, "bad-good", spec).await;
        put_login(client, NS, "good-login", "good-user", GOOD_PASSWORD).await;
        apply_rcred(client, NS, "good", basic_spec(REGISTRY, "good-login", "good-pull")).await;
        wait_for_reason(&Api::<ClusterRegistryCredential>::all(client.clone()), "bad-good", "Synced").await;
        wait_for_reason(&Api::<RegistryCredential>::namespaced(client.clone(), NS), "good", "Synced").await;
    })
    .await;
}

/// The good credentials are still Synced and their Secrets hold the login.
async fn assert_good_still_working(client: &Client) {
    wait_for_reason(&Api::<ClusterRegistryCredential>::all(client.clone()), "bad-good", "Synced").await;
    wait_for_reason(&Api::<RegistryCredential>::namespaced(client.clone(), NS), "good", "Synced").await;
    for i in 0..3 {
        wait_for_login(client, &format!("bad-good-{i}"), "bad-good-pull", REGISTRY, "good-user", GOOD_PASSWORD).await;
    }
    wait_for_login(client, NS, "good-pull", REGISTRY, "good-user", GOOD_PASSWORD).await;
    assert!(operator().metrics().is_ok(), "the operator stopped answering");
}

fn rcred(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "regcred.dev/v1beta1", "kind": "RegistryCredential",
        "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

fn crcred(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "regcred.dev/v1beta1", "kind": "ClusterRegistryCredential",
        "metadata": {"name": name}, "spec": spec})
}

fn set(mut base: Value, path: &[&str], value: Value) -> Value {
    let mut cur = &mut base;
    for p in path {
        cur = &mut cur[*p];
    }
    *cur = value;
    base
}

async fn try_apply(client: &Client, obj: &Value) -> Result<(), kube::Error> {
    let name = obj["metadata"]["name"].as_str().unwrap();
    let pp = PatchParams::apply("regcred-test").force();
    if obj["kind"] == "RegistryCredential" {
        Api::<RegistryCredential>::namespaced(client.clone(), NS).patch(name, &pp, &Patch::Apply(obj)).await.map(|_| ())
    } else {
        Api::<ClusterRegistryCredential>::all(client.clone()).patch(name, &pp, &Patch::Apply(obj)).await.map(|_| ())
    }
}

#[tokio::test]
async fn hostile_specs_are_rejected_at_apply_time() {
    let client = setup().await;
    good_credentials(&client).await;
    let base = basic_spec(REGISTRY, "good-login", "pull");
    let cluster = set(base.clone(), &["namespaceSelector"], json!({"matchLabels": {"x": "y"}}));
    let many_labels: serde_json::Map<String, Value> = (0..65).map(|i| (format!("l{i}"), json!("v"))).collect();
    let many_names: Vec<String> = (0..257).map(|i| format!("sa-{i}")).collect();
    let cases: Vec<(&str, Value, &[&str])> = vec![
        ("unknown field in spec", rcred("a1", set(base.clone(), &["foo"], json!(1))), &["spec.foo", "not declared"]),
        (
            "unknown field in provider",
            rcred("a2", set(base.clone(), &["provider", "basic", "insecure"], json!(true))),
            &["insecure", "not declared"],
        ),
        (
            "unknown provider kind",
            rcred("a3", set(base.clone(), &["provider"], json!({"dockerhub": {"registry": "docker.io"}}))),
            &["dockerhub", "not declared"],
        ),
        (
            "provider of the wrong type",
            rcred("a4", set(base.clone(), &["provider"], json!("basic"))),
            &["spec.provider"],
        ),
        ("secret name a number", rcred("a5", set(base.clone(), &["secret", "name"], json!(5))), &["spec.secret.name"]),
        (
            "serviceAccounts.all a string",
            rcred("a6", set(base.clone(), &["serviceAccounts"], json!({"all": "yes"}))),
            &["spec.serviceAccounts.all"],
        ),
        (
            "namespaces a string",
            crcred("a7", set(cluster.clone(), &["namespaces"], json!("kube-system"))),
            &["spec.namespaces"],
        ),
        (
            "secret name of 254 characters",
            rcred("a8", set(base.clone(), &["secret", "name"], json!("a".repeat(254)))),
            &["spec.secret.name", "253"],
        ),
        (
            "65 labels on the pull Secret",
            rcred("a9", set(base.clone(), &["secret", "labels"], Value::Object(many_labels))),
            &["spec.secret.labels", "64"],
        ),
        (
            "reserved owner annotation",
            rcred("a10", set(base.clone(), &["secret", "annotations"], json!({"regcred.dev/owner": "x"}))),
            &["annotations under regcred.dev/ are reserved"],
        ),
        (
            "registry host with a space",
            rcred("a11", set(base.clone(), &["provider", "basic", "registry"], json!("registry .example.com"))),
            &["spec.provider.basic.registry"],
        ),
        (
            "empty registry host",
            rcred("a12", set(base.clone(), &["provider", "basic", "registry"], json!(""))),
            &["spec.provider.basic.registry"],
        ),
        (
            "registry host in upper case",
            rcred("a13", set(base.clone(), &["provider", "basic", "registry"], json!("Registry.Example.com"))),
            &["spec.provider.basic.registry"],
        ),
        (
            "registry host with a path",
            rcred("a14", set(base.clone(), &["provider", "basic", "registry"], json!("registry.example.com/team"))),
            &["spec.provider.basic.registry"],
        ),
        (
            "basic provider without secretRef",
            rcred("a15", set(base.clone(), &["provider", "basic"], json!({"registry": REGISTRY}))),
            &["spec.provider.basic.secretRef", "Required value"],
        ),
        (
            "secretRef name not a DNS name",
            rcred("a16", set(base.clone(), &["provider", "basic", "secretRef", "name"], json!("../kube-system/x"))),
            &["spec.provider.basic.secretRef.name"],
        ),
        (
            "caBundle over 256 KiB",
            rcred("a17", set(base.clone(), &["verify"], json!({"enabled": true, "caBundle": "A".repeat(262_145)}))),
            &["spec.verify.caBundle"],
        ),
        (
            "257 ServiceAccount names",
            rcred("a18", set(base.clone(), &["serviceAccounts"], json!({"names": many_names}))),
            &["spec.serviceAccounts.names"],
        ),
        (
            "ECR region not a region",
            rcred(
                "a19",
                json!({"provider": {"ecr": {"region": "EU_WEST", "auth": {"secretRef": {"name": "aws"}}}}, "secret": {"name": "pull"}}),
            ),
            &["spec.provider.ecr.region"],
        ),
        (
            "ECR roleArn not an ARN",
            rcred(
                "a20",
                json!({"provider": {"ecr": {"region": "eu-west-1", "auth": {"secretRef": {"name": "aws"}},
                    "assumeRole": {"roleArn": "arn:aws:s3:::bucket"}}}, "secret": {"name": "pull"}}),
            ),
            &["roleArn"],
        ),
        (
            "Harbor URL with another scheme",
            rcred(
                "a21",
                json!({"provider": {"harbor": {"url": "ftp://harbor.example.com", "projects": ["p"],
                    "auth": {"secretRef": {"name": "h"}}}}, "secret": {"name": "pull"}}),
            ),
            &["spec.provider.harbor.url"],
        ),
        (
            "duration in years",
            rcred("a22", set(base.clone(), &["refresh", "interval"], json!("1y"))),
            &["spec.refresh.interval"],
        ),
        (
            "namespaced credential reading kube-system",
            rcred("a23", set(base.clone(), &["provider", "basic", "secretRef", "namespace"], json!("kube-system"))),
            &["reads only from its own namespace"],
        ),
        (
            "namespaced credential selecting namespaces",
            rcred("a24", set(base.clone(), &["namespaceSelector"], json!({}))),
            &["spec.namespaceSelector", "not declared"],
        ),
    ];
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (what, obj, needles) in &cases {
        match try_apply(&client, obj).await {
            Ok(()) => failures.push(format!("{what}: accepted")),
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
    assert_good_still_working(&client).await;
}

/// A source Secret from raw `data` values (base64-encoded here).
async fn put_raw_secret(client: &Client, ns: &str, name: &str, type_: &str, data: &[(&str, &[u8])]) {
    use base64::Engine;
    let data: serde_json::Map<String, Value> =
        data.iter().map(|(k, v)| (k.to_string(), json!(base64::engine::general_purpose::STANDARD.encode(v)))).collect();
    let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
        "type": type_, "data": data});
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("regcred-test").force(), &Patch::Apply(&s))
        .await
        .expect("write source secret");
}

const OPAQUE: &str = "Opaque";
const DOCKER: &str = "kubernetes.io/dockerconfigjson";

#[tokio::test]
async fn bad_sources_are_reported_with_a_precise_reason_and_others_keep_working() {
    let client = setup().await;
    good_credentials(&client).await;
    let start = Instant::now();

    // Source Secrets, each bad in its own way. Secret values are recorded
    // for the suite-wide leak check.
    let huge = "h".repeat(300 * 1024);
    regcred_testenv::operator::record_secret("bad-input-pw-1");
    let good_auth = |user: &str, pass: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    };
    let other_registry_config = json!({"auths": {"other.example.com": {"auth": good_auth("u", "bad-input-pw-1")}}});
    type RawSecret<'a> = (&'a str, &'a str, Vec<(&'a str, Vec<u8>)>);
    let raw: Vec<RawSecret> = vec![
        ("src-no-username", OPAQUE, vec![("password", b"bad-input-pw-1".to_vec())]),
        ("src-no-password", OPAQUE, vec![("username", b"u".to_vec())]),
        ("src-wrong-keys", OPAQUE, vec![("user", b"u".to_vec()), ("pass", b"bad-input-pw-1".to_vec())]),
        ("src-empty-username", OPAQUE, vec![("username", b"".to_vec()), ("password", b"bad-input-pw-1".to_vec())]),
        ("src-blank-password", OPAQUE, vec![("username", b"u".to_vec()), ("password", b"\n".to_vec())]),
        ("src-huge", OPAQUE, vec![("username", b"u".to_vec()), ("password", huge.as_bytes().to_vec())]),
        ("src-config-malformed", OPAQUE, vec![(".dockerconfigjson", b"{\"auths\": {".to_vec())]),
        (
            "src-config-other-registry",
            DOCKER,
            vec![(".dockerconfigjson", other_registry_config.to_string().into_bytes())],
        ),
        ("src-config-auths-array", OPAQUE, vec![(".dockerconfigjson", br#"{"auths": []}"#.to_vec())]),
        (
            "src-config-auth-not-base64",
            OPAQUE,
            vec![(
                ".dockerconfigjson",
                format!(r#"{{"auths": {{"{REGISTRY}": {{"auth": "%%%not base64%%%"}}}}}}"#).into_bytes(),
            )],
        ),
        ("src-config-not-json", OPAQUE, vec![(".dockerconfigjson", vec![0xff, 0xfe, 0x00, 0x01])]),
        ("src-tls", "kubernetes.io/tls", vec![("tls.crt", b"x".to_vec()), ("tls.key", b"bad-input-pw-1".to_vec())]),
        ("src-aws-no-secret-key", OPAQUE, vec![("access-key-id", b"AKIAEXAMPLE".to_vec())]),
        ("src-google-bad-json", OPAQUE, vec![("credentials.json", b"{\"type\": \"service_account\"".to_vec())]),
        ("src-google-no-key", OPAQUE, vec![("key.json", b"{}".to_vec())]),
        ("src-acr-no-client-secret", OPAQUE, vec![("client-id", b"c".to_vec())]),
        ("src-harbor-no-password", OPAQUE, vec![("username", b"admin".to_vec())]),
    ];
    for (name, type_, data) in &raw {
        let data: Vec<(&str, &[u8])> = data.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        put_raw_secret(&client, NS, name, type_, &data).await;
    }
    // An unmanaged Secret in the way, and the target that is its own source.
    put_login(&client, NS, "unmanaged-pull", "someone", "bad-input-unmanaged-pw").await;
    put_login(&client, NS, "self-source", "someone", "bad-input-self-pw").await;

    let basic = |src: &str, pull: &str| basic_spec(REGISTRY, src, pull);
    let ecr = |auth: Value| json!({"provider": {"ecr": {"region": "eu-west-1", "auth": auth}}, "secret": {"name": "ecr-pull"}});
    let google = |src: &str| {
        json!({"provider": {"google": {"registries": ["europe-docker.pkg.dev"], "auth": {"secretRef": {"name": src}}}},
            "secret": {"name": "google-pull"}})
    };
    let cases: Vec<(&str, Value, &str, &[&str])> = vec![
        ("source Secret missing", basic("src-missing", "p1"), "SourceSecretNotFound", &["src-missing not found"]),
        ("no username key", basic("src-no-username", "p2"), "SourceSecretInvalid", &["has no key username"]),
        ("no password key", basic("src-no-password", "p3"), "SourceSecretInvalid", &["has no key password or token"]),
        ("wrong keys", basic("src-wrong-keys", "p4"), "SourceSecretInvalid", &["has no key username"]),
        ("empty username", basic("src-empty-username", "p5"), "SourceSecretInvalid", &["key username is empty"]),
        ("blank password", basic("src-blank-password", "p6"), "SourceSecretInvalid", &["key password is empty"]),
        ("huge password", basic("src-huge", "p7"), "SourceSecretInvalid", &["src-huge", "bytes"]),
        (
            "malformed .dockerconfigjson",
            basic("src-config-malformed", "p8"),
            "SourceSecretInvalid",
            &["src-config-malformed", ".dockerconfigjson"],
        ),
        (
            ".dockerconfigjson without the registry",
            basic("src-config-other-registry", "p9"),
            "SourceSecretInvalid",
            &["src-config-other-registry", REGISTRY],
        ),
        (
            ".dockerconfigjson auths of the wrong type",
            basic("src-config-auths-array", "p10"),
            "SourceSecretInvalid",
            &["src-config-auths-array", ".dockerconfigjson"],
        ),
        (
            ".dockerconfigjson auth not base64",
            basic("src-config-auth-not-base64", "p11"),
            "SourceSecretInvalid",
            &["src-config-auth-not-base64", ".dockerconfigjson"],
        ),
        (
            ".dockerconfigjson not JSON at all",
            basic("src-config-not-json", "p12"),
            "SourceSecretInvalid",
            &["src-config-not-json", ".dockerconfigjson"],
        ),
        ("a TLS Secret as source", basic("src-tls", "p13"), "SourceSecretInvalid", &["has no key username"]),
        (
            "target held by an unmanaged Secret",
            basic("good-login", "unmanaged-pull"),
            "SecretConflict",
            &["unmanaged-pull", "not managed by regcred"],
        ),
        (
            "target is its own source Secret",
            basic("self-source", "self-source"),
            "SecretConflict",
            &["self-source", "left alone"],
        ),
        (
            "second credential fighting over good-pull",
            basic("good-login", "good-pull"),
            "SecretConflict",
            &["good-pull", "managed by regcred for RegistryCredential/bad-input/good"],
        ),
        (
            "AWS keys without the secret key",
            ecr(json!({"secretRef": {"name": "src-aws-no-secret-key"}})),
            "SourceSecretInvalid",
            &["has no key secret-access-key"],
        ),
        (
            "namespaced ECR with the operator's identity",
            ecr(json!({"ambient": {}})),
            "AmbientIdentityForbidden",
            &["operator's own identity"],
        ),
        (
            "namespaced ECR with no auth at all",
            ecr(json!({})),
            "AmbientIdentityForbidden",
            &["operator's own identity"],
        ),
        (
            "ECR web identity of a missing ServiceAccount",
            ecr(json!({"serviceAccountRef": {"name": "nobody"}})),
            "ServiceAccountNotFound",
            &["nobody not found"],
        ),
        ("Google key that is not JSON", google("src-google-bad-json"), "SourceSecretInvalid", &["credentials.json"]),
        (
            "Google Secret without credentials.json",
            google("src-google-no-key"),
            "SourceSecretInvalid",
            &["has no key credentials.json"],
        ),
        (
            "ACR service principal without client-secret",
            json!({"provider": {"acr": {"registry": "r.azurecr.io", "tenantId": "t",
                "auth": {"servicePrincipal": {"secretRef": {"name": "src-acr-no-client-secret"}}}}},
                "secret": {"name": "acr-pull"}}),
            "SourceSecretInvalid",
            &["client-secret"],
        ),
        (
            "Harbor admin Secret without password",
            json!({"provider": {"harbor": {"url": "https://harbor.invalid", "projects": ["p"],
                "auth": {"secretRef": {"name": "src-harbor-no-password"}}}}, "secret": {"name": "harbor-pull"}}),
            "SourceSecretInvalid",
            &["password"],
        ),
    ];
    for (i, (_, spec, _, _)) in cases.iter().enumerate() {
        apply_rcred(&client, NS, &format!("case-{i}"), spec.clone()).await;
    }
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), NS);
    let mut failures = Vec::new();
    for (i, (what, _, reason, needles)) in cases.iter().enumerate() {
        let status = wait_for_reason(&rcreds, &format!("case-{i}"), reason).await;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False", "{what}");
        let text = format!("{} {}", ready.message, serde_json::to_string(&status.targets).unwrap());
        for needle in needles.iter() {
            if !text.contains(needle) {
                failures.push(format!("{what}: {reason} message does not mention {needle:?}: {text}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{} bad sources reported after {:?}", cases.len(), start.elapsed());

    // Nothing was written over: the unmanaged Secrets and the good one are intact.
    for (name, user, pw) in
        [("unmanaged-pull", "someone", "bad-input-unmanaged-pw"), ("self-source", "someone", "bad-input-self-pw")]
    {
        let s = get_secret(&client, NS, name).await.unwrap();
        let data = s.data.unwrap_or_default();
        assert_eq!(data.get("username").map(|b| b.0.as_slice()), Some(user.as_bytes()), "{name} was changed");
        assert_eq!(data.get("password").map(|b| b.0.as_slice()), Some(pw.as_bytes()), "{name} was changed");
        assert!(!s.metadata.labels.unwrap_or_default().contains_key("app.kubernetes.io/managed-by"));
    }
    // No failed credential produced a pull Secret.
    for pull in ["p1", "p2", "p7", "p8", "p9", "ecr-pull", "google-pull", "acr-pull", "harbor-pull"] {
        assert!(get_secret(&client, NS, pull).await.is_none(), "{pull} was written by a failing credential");
    }
    // No huge value reached the status or the log.
    let status_text = serde_json::to_string(&rcreds.list(&Default::default()).await.unwrap()).unwrap();
    assert!(!status_text.contains(&huge[..1024]));
    assert!(!operator().log_text().contains(&huge[..1024]), "the huge password is in the operator log");
    assert_good_still_working(&client).await;

    // Fixing a bad source recovers without a restart.
    put_login(&client, NS, "src-no-username", "fixed-user", "bad-input-fixed-pw").await;
    wait_for_reason(&rcreds, "case-1", "Synced").await;
    wait_for_login(&client, NS, "p2", REGISTRY, "fixed-user", "bad-input-fixed-pw").await;

    for i in 0..cases.len() {
        rcreds.delete(&format!("case-{i}"), &DeleteParams::default()).await.unwrap();
    }
    assert_good_still_working(&client).await;
}

#[tokio::test]
async fn a_selector_matching_everything_including_kube_system_leaves_unmanaged_secrets_alone() {
    let client = setup().await;
    good_credentials(&client).await;
    // kube-system holds a Secret of the same name that regcred does not manage.
    put_login(&client, "kube-system", "everywhere-pull", "system", "bad-input-system-pw").await;
    put_login(&client, CLUSTER_NS, "everywhere-login", "every", "bad-input-every-pw").await;
    let mut spec = basic_spec(REGISTRY, "everywhere-login", "everywhere-pull");
    spec["namespaceSelector"] = json!({});
    apply_crcred(&client, "everywhere", spec).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let status = wait_for_reason(&crcreds, "everywhere", "SecretConflict").await;
    let targets = status.targets.clone().unwrap();
    assert!(
        targets.failed.iter().any(|f| f.namespace == "kube-system" && f.reason == "SecretConflict"),
        "{:?}",
        targets.failed
    );
    assert_eq!(targets.failed.len(), 1, "{:?}", targets.failed);
    assert!(targets.desired >= 5, "a selector {{}} should match every namespace: {targets:?}");
    assert_eq!(targets.synced + 1, targets.desired);
    let message = &status.conditions[0].message;
    assert!(message.contains("kube-system/everywhere-pull"), "{message}");
    let s = get_secret(&client, "kube-system", "everywhere-pull").await.unwrap();
    assert_eq!(s.data.unwrap()["password"].0, b"bad-input-system-pw", "kube-system's Secret was overwritten");
    wait_for_login(&client, "default", "everywhere-pull", REGISTRY, "every", "bad-input-every-pw").await;
    assert_good_still_working(&client).await;
    crcreds.delete("everywhere", &DeleteParams::default()).await.unwrap();
    wait_for_no_secret(&client, "default", "everywhere-pull").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        get_secret(&client, "kube-system", "everywhere-pull").await.is_some(),
        "cleanup deleted kube-system's Secret"
    );
}

/// Values that cannot work as a login, the hygiene rules of
/// `regcred::hygiene` end to end: each is `Ready=False` /
/// `SourceSecretInvalid` naming the Secret, the key and the problem (never
/// the value), nothing is published, a good Secret in place stays, and
/// healthy credentials are unaffected.
#[tokio::test]
async fn source_values_that_cannot_work_are_refused_and_trailing_newlines_stripped() {
    let client = setup().await;
    good_credentials(&client).await;

    // The case a hidden run found: a ClusterRegistryCredential fanning out
    // to two namespaces from 4 KiB of random bytes as username and password.
    for i in 0..2 {
        create_namespace(&client, &format!("hyg-{i}"), &[("bad-input-hygiene", "yes")]).await;
    }
    let random: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let random_pw: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    {
        use base64::Engine;
        for r in [&random, &random_pw] {
            regcred_testenv::operator::record_secret(&base64::engine::general_purpose::STANDARD.encode(r));
        }
    }
    put_raw_secret(
        &client,
        CLUSTER_NS,
        "hyg-random-src",
        OPAQUE,
        &[("username", &random[..]), ("password", &random_pw[..])],
    )
    .await;
    regcred_testenv::operator::record_secret("hyg-colon-pw-5d1e");
    put_login(&client, CLUSTER_NS, "hyg-colon-src", "nl:user", "hyg-colon-pw-5d1e").await;
    let cluster = |src: &str, pull: &str| {
        let mut spec = basic_spec(REGISTRY, src, pull);
        spec["namespaceSelector"] = json!({"matchLabels": {"bad-input-hygiene": "yes"}});
        spec
    };
    apply_crcred(&client, "hyg-random", cluster("hyg-random-src", "hyg-random-pull")).await;
    apply_crcred(&client, "hyg-colon", cluster("hyg-colon-src", "hyg-colon-pull")).await;

    // Namespaced cases, one Secret each.
    const PW: &str = "hyg-pw-93c1";
    regcred_testenv::operator::record_secret(PW);
    let long_pw = "L".repeat(5000);
    let config = |entry: Value| json!({"auths": {REGISTRY: entry}}).to_string().into_bytes();
    type RawSecret<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>);
    let raw: Vec<RawSecret> = vec![
        ("hyg-nul-user", vec![("username", b"us\0er".to_vec()), ("password", PW.into())]),
        ("hyg-esc-pw", vec![("username", b"u".to_vec()), ("password", format!("{PW}\x1b[0m").into_bytes())]),
        ("hyg-two-lines", vec![("username", b"u".to_vec()), ("password", format!("{PW}\nsecond line\n").into_bytes())]),
        ("hyg-binary-token", vec![("username", b"u".to_vec()), ("token", vec![0xc3, 0x28, 0xff, 0x00, 0x9f])]),
        ("hyg-empty-pw", vec![("username", b"u".to_vec()), ("password", Vec::new())]),
        ("hyg-long-pw", vec![("username", b"u".to_vec()), ("password", long_pw.clone().into_bytes())]),
        ("hyg-config-no-auths", vec![(".dockerconfigjson", br#"{"credsStore": "desktop"}"#.to_vec())]),
        ("hyg-config-empty-entry", vec![(".dockerconfigjson", config(json!({"email": "a@example.com"})))]),
        ("hyg-config-colon", vec![(".dockerconfigjson", config(json!({"username": "nl:user", "password": PW})))]),
        (
            "hyg-config-nul",
            vec![(".dockerconfigjson", [&config(json!({"username": "u", "password": PW}))[..], b"\0"].concat())],
        ),
        ("hyg-harbor-colon", vec![("username", b"ad:min".to_vec()), ("password", PW.into())]),
        ("hyg-acr-nul", vec![("client-id", b"c".to_vec()), ("client-secret", format!("{PW}\0").into_bytes())]),
        ("hyg-aws-two-lines", vec![("access-key-id", b"AKIA\nEXAMPLE".to_vec()), ("secret-access-key", PW.into())]),
        ("hyg-aws-binary", vec![("access-key-id", b"AKIAEXAMPLE".to_vec()), ("secret-access-key", vec![0xfe, 0xff])]),
        ("hyg-google-binary", vec![("credentials.json", vec![b'{', 0xff, 0xfe, b'}'])]),
    ];
    for (name, data) in &raw {
        let data: Vec<(&str, &[u8])> = data.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        put_raw_secret(&client, NS, name, OPAQUE, &data).await;
    }
    let basic = |src: &str| basic_spec(REGISTRY, src, &format!("{src}-pull"));
    let cases: Vec<(&str, Value, &[&str])> = vec![
        ("NUL in the username", basic("hyg-nul-user"), &["hyg-nul-user", "key username contains a NUL byte"]),
        ("escape sequence in the password", basic("hyg-esc-pw"), &["key password contains a control character"]),
        ("password of two lines", basic("hyg-two-lines"), &["key password contains a line break"]),
        ("token not UTF-8", basic("hyg-binary-token"), &["key token is not UTF-8"]),
        ("empty password", basic("hyg-empty-pw"), &["key password is empty"]),
        ("password of 5000 bytes", basic("hyg-long-pw"), &["key password is 5000 bytes long", "at most 4096"]),
        ("docker config without auths", basic("hyg-config-no-auths"), &["key .dockerconfigjson has no auths"]),
        (
            "docker config entry without a login",
            basic("hyg-config-empty-entry"),
            &[".dockerconfigjson", "has neither auth nor username and password"],
        ),
        (
            "docker config username with ':'",
            basic("hyg-config-colon"),
            &[".dockerconfigjson", "username of the entry for registry", "contains ':'"],
        ),
        ("docker config with a NUL byte", basic("hyg-config-nul"), &["key .dockerconfigjson contains a NUL byte"]),
        (
            "Harbor admin username with ':'",
            json!({"provider": {"harbor": {"url": "https://harbor.invalid", "projects": ["p"],
                "auth": {"secretRef": {"name": "hyg-harbor-colon"}}}}, "secret": {"name": "hyg-harbor-pull"}}),
            &["hyg-harbor-colon", "key username contains ':'"],
        ),
        (
            "ACR client secret with a NUL byte",
            json!({"provider": {"acr": {"registry": "r.azurecr.io", "tenantId": "t",
                "auth": {"servicePrincipal": {"secretRef": {"name": "hyg-acr-nul"}}}}},
                "secret": {"name": "hyg-acr-pull"}}),
            &["key client-secret contains a NUL byte"],
        ),
        (
            "AWS access key id of two lines",
            json!({"provider": {"ecr": {"region": "eu-west-1", "auth": {"secretRef": {"name": "hyg-aws-two-lines"}}}},
                "secret": {"name": "hyg-ecr-pull"}}),
            &["key access-key-id contains a line break"],
        ),
        (
            "AWS secret key not UTF-8",
            json!({"provider": {"ecr": {"region": "eu-west-1", "auth": {"secretRef": {"name": "hyg-aws-binary"}}}},
                "secret": {"name": "hyg-ecr-pull-2"}}),
            &["key secret-access-key is not UTF-8"],
        ),
        (
            "Google credentials.json not UTF-8",
            json!({"provider": {"google": {"registries": ["europe-docker.pkg.dev"],
                "auth": {"secretRef": {"name": "hyg-google-binary"}}}}, "secret": {"name": "hyg-google-pull"}}),
            &["key credentials.json is not UTF-8"],
        ),
    ];
    for (i, (_, spec, _)) in cases.iter().enumerate() {
        apply_rcred(&client, NS, &format!("hyg-{i}"), spec.clone()).await;
    }

    // Sloppy but usable: trailing newlines are stripped, as
    // `docker login --password-stdin` does.
    regcred_testenv::operator::record_secret("hyg-newline-pw-11aa");
    regcred_testenv::operator::record_secret("hyg-crlf-pw-22bb");
    put_raw_secret(
        &client,
        NS,
        "hyg-newline",
        OPAQUE,
        &[("username", &b"nl-user"[..]), ("password", &b"hyg-newline-pw-11aa\n"[..])],
    )
    .await;
    put_raw_secret(
        &client,
        NS,
        "hyg-crlf",
        OPAQUE,
        &[("username", &b"crlf-user\r\n"[..]), ("token", &b"hyg-crlf-pw-22bb\r\n"[..])],
    )
    .await;
    apply_rcred(&client, NS, "hyg-newline", basic("hyg-newline")).await;
    apply_rcred(&client, NS, "hyg-crlf", basic("hyg-crlf")).await;

    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), NS);
    let mut failures = Vec::new();
    let mut check = |what: &str, status: &regcred::api::CredentialStatus, needles: &[&str]| {
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        if ready.status != "False" {
            failures.push(format!("{what}: Ready={}", ready.status));
        }
        for needle in needles {
            if !ready.message.contains(needle) {
                failures.push(format!("{what}: message does not mention {needle:?}: {}", ready.message));
            }
        }
    };
    let status = wait_for_reason(&crcreds, "hyg-random", "SourceSecretInvalid").await;
    check("4 KiB of random bytes", &status, &["regcred-system/hyg-random-src", "key username"]);
    let status = wait_for_reason(&crcreds, "hyg-colon", "SourceSecretInvalid").await;
    check("nl:user", &status, &["regcred-system/hyg-colon-src", "key username contains ':'"]);
    for (i, (what, _, needles)) in cases.iter().enumerate() {
        let status = wait_for_reason(&rcreds, &format!("hyg-{i}"), "SourceSecretInvalid").await;
        check(what, &status, needles);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    wait_for_login(&client, NS, "hyg-newline-pull", REGISTRY, "nl-user", "hyg-newline-pw-11aa").await;
    wait_for_login(&client, NS, "hyg-crlf-pull", REGISTRY, "crlf-user", "hyg-crlf-pw-22bb").await;
    wait_for_reason(&rcreds, "hyg-newline", "Synced").await;

    // Nothing was published for a value that cannot work.
    for i in 0..2 {
        for pull in ["hyg-random-pull", "hyg-colon-pull"] {
            assert!(get_secret(&client, &format!("hyg-{i}"), pull).await.is_none(), "{pull} written to hyg-{i}");
        }
    }
    for (name, _) in &raw {
        assert!(get_secret(&client, NS, &format!("{name}-pull")).await.is_none(), "{name}-pull was written");
    }
    // No value reached status or the log.
    let status_text = format!(
        "{} {}",
        serde_json::to_string(&rcreds.list(&Default::default()).await.unwrap()).unwrap(),
        serde_json::to_string(&crcreds.list(&Default::default()).await.unwrap()).unwrap()
    );
    let log = operator().log_text();
    for value in [PW, "hyg-colon-pw-5d1e", &long_pw[..64], "nl:user", "ad:min", "AKIA\nEXAMPLE"] {
        assert!(!status_text.contains(value), "{value:?} is in a status");
        assert!(!log.contains(value), "{value:?} is in the operator log");
    }
    let random_text = String::from_utf8_lossy(&random[..64]).into_owned();
    assert!(!log.contains(&random_text) && !status_text.contains(&random_text), "random bytes leaked");

    // The last good Secret stays when its source turns bad, and the
    // credential recovers when it is fixed.
    regcred_testenv::operator::record_secret("hyg-last-good-pw-3c3c");
    put_login(&client, NS, "hyg-last-good", "last-good", "hyg-last-good-pw-3c3c").await;
    apply_rcred(&client, NS, "hyg-last-good", basic("hyg-last-good")).await;
    wait_for_login(&client, NS, "hyg-last-good-pull", REGISTRY, "last-good", "hyg-last-good-pw-3c3c").await;
    put_login(&client, NS, "hyg-last-good", "nl:user", "hyg-last-good-pw-3c3c").await;
    let status = wait_for_reason(&rcreds, "hyg-last-good", "SourceSecretInvalid").await;
    assert!(status.conditions[0].message.contains("key username contains ':'"), "{:?}", status.conditions);
    let kept = get_secret(&client, NS, "hyg-last-good-pull").await.expect("the last good Secret was removed");
    assert_eq!(
        login_in(&kept, REGISTRY),
        Some(("last-good".to_string(), "hyg-last-good-pw-3c3c".to_string())),
        "the last good Secret was changed"
    );
    put_login(&client, NS, "hyg-last-good", "fixed-user", "hyg-last-good-pw-3c3c").await;
    wait_for_login(&client, NS, "hyg-last-good-pull", REGISTRY, "fixed-user", "hyg-last-good-pw-3c3c").await;
    wait_for_reason(&rcreds, "hyg-last-good", "Synced").await;

    assert_good_still_working(&client).await;
    for name in ["hyg-random", "hyg-colon"] {
        crcreds.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for i in 0..cases.len() {
        rcreds.delete(&format!("hyg-{i}"), &DeleteParams::default()).await.unwrap();
    }
    for name in ["hyg-newline", "hyg-crlf", "hyg-last-good"] {
        rcreds.delete(name, &DeleteParams::default()).await.unwrap();
    }
}
