//! `regcred explain pod` (and `kubectl regcred explain pod`) against a real
//! control plane with regcred running: Pods admitted by the real
//! ServiceAccount admission, explained by the regcred binary through a
//! kubeconfig, as a user runs it. The verdict, exit code and JSON are
//! asserted for a Pod that pulls and for each cause that stops one.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use regcred_testenv::operator::record_secret;
use regcred_testenv::registry::skopeo_inspect;
use regcred_testenv::tokenauth::{FrontKind, RegistryFront, TokenService, start_token_registry};
use serde_json::{Value, json};

const REGISTRY: &str = "registry.explain.example";

async fn create_pod(client: &Client, ns: &str, name: &str, sa: Option<&str>, own: &[&str]) {
    create_pod_with(client, ns, name, &format!("{REGISTRY}/team/app:1"), sa, own).await
}

async fn create_pod_with(client: &Client, ns: &str, name: &str, image: &str, sa: Option<&str>, own: &[&str]) {
    common::create_pod(client, ns, name, pod_spec(image, sa, own)).await
}

fn reason(report: &Value) -> String {
    report["images"][0]["reason"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn explain_pod_names_what_lets_a_pod_pull_and_each_cause_that_stops_it() {
    let client = setup().await;
    put_login(&client, CLUSTER_NS, "ex-login", "ex-user", "explain-password-1").await;
    create_namespace(&client, "ex-a", &[("explain", "yes")]).await;
    let mut spec = basic_spec(REGISTRY, "ex-login", "ex-pull");
    spec["namespaceSelector"] = json!({"matchLabels": {"explain": "yes"}});
    apply_crcred(&client, "ex-fleet", spec).await;
    wait_for_pull_secret(&client, "ex-a", "default", "ex-pull", true).await;

    // Created after the patch: pulls with the credential's Secret.
    create_pod(&client, "ex-a", "good", None, &[]).await;
    let (code, report) = explain_pod_json("ex-a/good");
    assert_eq!((code, report["verdict"].as_str()), (0, Some("wouldPull")), "{report:#}");
    let secret = &report["images"][0]["secrets"][0];
    assert_eq!(secret["name"], "ex-pull");
    assert_eq!(secret["matches"], REGISTRY);
    assert_eq!(secret["credential"]["credential"], "ClusterRegistryCredential/ex-fleet");
    assert!(secret["credential"]["ready"].as_str().unwrap().starts_with("True"), "{secret:#}");

    // The text form ends with the verdict line.
    let out = regcred_explain(&["pod", "ex-a/good"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().last().unwrap().starts_with("Verdict: ex-a/good would pull all 1 image(s)"), "{text}");

    // The same through kubectl, with the binary installed as the plugin.
    let bin = control_plane().dir().join("explain-plugin");
    std::fs::create_dir_all(&bin).unwrap();
    let plugin = bin.join("kubectl-regcred");
    let _ = std::fs::remove_file(&plugin);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_regcred"), &plugin).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    // kubectl passes its own flags to no plugin: the kubeconfig comes from
    // the environment, as for a user.
    let kubectl = control_plane().kubectl().get_program().to_owned();
    let out = Command::new(kubectl)
        .args(["regcred", "explain", "pod", "ex-a/good", "-o", "json"])
        .env("PATH", path)
        .env("KUBECONFIG", control_plane().kubeconfig_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "kubectl regcred: {}", String::from_utf8_lossy(&out.stderr));
    let via_kubectl: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(via_kubectl["verdict"], "wouldPull");

    // The Pod lists its own pull Secrets: the ServiceAccount's were not added.
    create_pod(&client, "ex-a", "own", None, &["mine"]).await;
    let (code, report) = explain_pod_json("ex-a/own");
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["images"][0]["secrets"][0]["problem"], "Secret mine does not exist");
    assert!(reason(&report).contains("lists its own imagePullSecrets"), "{report:#}");

    // A ServiceAccount the credential does not select.
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "builder"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), "ex-a").create(&PostParams::default(), &sa).await.unwrap();
    create_pod(&client, "ex-a", "builder", Some("builder"), &[]).await;
    let (code, report) = explain_pod_json("ex-a/builder");
    assert_eq!(code, 1);
    assert!(
        reason(&report).contains("ServiceAccount builder is not selected by ClusterRegistryCredential/ex-fleet"),
        "{report:#}"
    );

    // A namespace the credential does not select: the label it lacks.
    create_namespace(&client, "ex-b", &[]).await;
    create_pod(&client, "ex-b", "outside", None, &[]).await;
    let (code, report) = explain_pod_json("ex-b/outside");
    assert_eq!(code, 1);
    assert!(reason(&report).contains("namespace ex-b lacks label explain=yes"), "{report:#}");
    assert!(report["fix"].as_str().unwrap().contains("label the namespace"), "{report:#}");

    // Created before regcred patched the ServiceAccount: the namespace is
    // labelled after the Pod exists.
    label_namespace(&client, "ex-b", json!({"explain": "yes"})).await;
    wait_for_pull_secret(&client, "ex-b", "default", "ex-pull", true).await;
    let (code, report) = explain_pod_json("ex-b/outside");
    assert_eq!(code, 1);
    assert!(reason(&report).contains("created before regcred added ex-pull to ServiceAccount default"), "{report:#}");
    assert!(report["fix"].as_str().unwrap().contains("recovery.enabled"), "{report:#}");

    // The credential: every target holds the Secret and the default
    // ServiceAccount lists it.
    let out = regcred_explain(&["credential", "ex-fleet", "-o", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let namespaces: Vec<&str> =
        report["targets"].as_array().unwrap().iter().map(|t| t["namespace"].as_str().unwrap()).collect();
    assert!(namespaces.contains(&"ex-a") && namespaces.contains(&"ex-b"), "{report:#}");
    assert!(report["targets"].as_array().unwrap().iter().all(|t| t["secret"] == "ok"));
    // A namespace with someone else's Secret of that name: a conflict, with
    // the status's reason.
    create_namespace(&client, "ex-c", &[]).await;
    let theirs: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(json!({"metadata": {"name": "ex-pull"}, "stringData": {"k": "v"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "ex-c")
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    label_namespace(&client, "ex-c", json!({"explain": "yes"})).await;
    let crcreds: Api<regcred::api::ClusterRegistryCredential> = Api::all(client.clone());
    wait_for_reason(&crcreds, "ex-fleet", "SecretConflict").await;
    let out = regcred_explain(&["credential", "ex-fleet", "-o", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let c = report["targets"].as_array().unwrap().iter().find(|t| t["namespace"] == "ex-c").unwrap();
    assert!(c["secret"].as_str().unwrap().starts_with("conflict"), "{c:#}");
    assert!(c["failure"].as_str().unwrap().starts_with("SecretConflict"), "{c:#}");
    let text = String::from_utf8_lossy(&regcred_explain(&["credential", "ex-fleet"]).stdout).into_owned();
    assert!(text.lines().last().unwrap().contains("first: ex-c: Secret conflict"), "{text}");

    // A registry no credential serves and no Secret: cannot tell.
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "public"},
        "spec": {"containers": [{"name": "app", "image": "quay.io/public/app:1"}], "automountServiceAccountToken": false,
                 "serviceAccountName": "builder"}}))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), "ex-a").create(&PostParams::default(), &pod).await.unwrap();
    let (code, report) = explain_pod_json("ex-a/public");
    assert_eq!((code, report["verdict"].as_str()), (2, Some("cannotTell")), "{report:#}");

    // No such Pod: cannot tell, with the reason on stderr.
    let out = regcred_explain(&["pod", "ex-a/nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Pod ex-a/nope not found"));
}

/// `--check-registry`: logs in with the Secret the kubelet would use and
/// asks for the image's manifest, on a registry that reports a pull quota
/// as Docker Hub does; the check spends none of it (HEAD), a real pull
/// does.
#[tokio::test]
async fn check_registry_reads_the_manifest_and_the_pull_quota_without_spending_it() {
    const USER: (&str, &str) = ("hub-user", "explain-hub-password");
    let client = setup().await;
    record_secret(USER.1);
    let tokens = TokenService::start(Arc::new(|u: &str, p: &str| u == USER.0 && p == USER.1)).unwrap();
    let registry = start_token_registry(control_plane().process_group(), &tokens, USER.0, USER.1).unwrap();
    let front = RegistryFront::start(FrontKind::DockerHub { limit: 100, window: 21600 }, &tokens, &registry).unwrap();
    let host = front.host();
    put_login(&client, CLUSTER_NS, "hub-login", USER.0, USER.1).await;
    create_namespace(&client, "ex-hub", &[("explain-hub", "yes")]).await;
    let mut spec = basic_spec(&host, "hub-login", "hub-pull");
    spec["namespaceSelector"] = json!({"matchLabels": {"explain-hub": "yes"}});
    apply_crcred(&client, "ex-hub", spec).await;
    wait_for_pull_secret(&client, "ex-hub", "default", "hub-pull", true).await;
    create_pod_with(&client, "ex-hub", "pulls", &format!("{host}/regcred/test:v1"), None, &[]).await;
    create_pod_with(&client, "ex-hub", "missing", &format!("{host}/regcred/missing:v1"), None, &[]).await;
    let check = |pod: &str| {
        let out = regcred_explain(&["pod", pod, "-o", "json", "--check-registry", "--plain-http"]);
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap(), report)
    };

    let (code, report) = check("ex-hub/pulls");
    assert_eq!(code, 0, "{report:#}");
    let registry_check = &report["images"][0]["registryCheck"];
    assert_eq!(registry_check["accepted"], true, "{report:#}");
    assert_eq!(registry_check["answer"], "manifest regcred/test:v1 found");
    assert_eq!(registry_check["quota"], json!({"limit": 100, "remaining": 100, "windowSeconds": 21600}));
    assert_eq!(front.pulls(), 0, "the check counted as a pull");

    // A pull (skopeo reads the manifest with GET) spends one.
    let authfile = control_plane().dir().join("hub-auth.json");
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{}:{}", USER.0, USER.1));
    std::fs::write(&authfile, json!({"auths": {host.clone(): {"auth": auth}}}).to_string()).unwrap();
    let inspected = skopeo_inspect(&authfile, &format!("{host}/regcred/test:v1")).unwrap();
    assert!(inspected.status.success(), "{}", String::from_utf8_lossy(&inspected.stderr));
    assert_eq!(front.pulls(), 1);
    let (_, report) = check("ex-hub/pulls");
    assert_eq!(report["images"][0]["registryCheck"]["quota"]["remaining"], 99);
    let out = regcred_explain(&["pod", "ex-hub/pulls", "--check-registry", "--plain-http"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("pull quota: 99 of 100 left per 21600 s"));

    // The image does not exist: the login works, the manifest is missing.
    let (code, report) = check("ex-hub/missing");
    assert_eq!(code, 1, "{report:#}");
    assert!(reason(&report).contains("accepted hub-pull's login but has no such image"), "{report:#}");

    // The login goes bad: the registry refuses it, and explain says so
    // although the credential is Ready (regcred does not verify here).
    put_login(&client, CLUSTER_NS, "hub-login", USER.0, "explain-hub-wrong-password").await;
    wait_for("the Secret to hold the new password", WAIT, || async {
        let s = get_secret(&client, "ex-hub", "hub-pull").await?;
        (login_in(&s, &host)?.1 == "explain-hub-wrong-password").then_some(())
    })
    .await;
    let (code, report) = check("ex-hub/pulls");
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["images"][0]["registryCheck"]["accepted"], false);
    assert!(reason(&report).contains("the registry refused hub-pull's login"), "{report:#}");
    let text = report.to_string();
    assert!(!text.contains("explain-hub-wrong-password") && !text.contains(USER.1), "a password in the report");
}

/// regcred's own verification reads the pull quota where the registry
/// reports one: exported per credential and registry, and a Warning Event
/// when at most a tenth is left. Verification spends none of it.
#[tokio::test]
async fn verification_exports_the_pull_quota_and_warns_when_it_runs_low() {
    const USER: (&str, &str) = ("quota-user", "explain-quota-password");
    let client = setup().await;
    record_secret(USER.1);
    let tokens = TokenService::start(Arc::new(|u: &str, p: &str| u == USER.0 && p == USER.1)).unwrap();
    let registry = start_token_registry(control_plane().process_group(), &tokens, USER.0, USER.1).unwrap();
    let front = RegistryFront::start(FrontKind::DockerHub { limit: 10, window: 21600 }, &tokens, &registry).unwrap();
    let host = front.host();
    put_login(&client, CLUSTER_NS, "quota-login", USER.0, USER.1).await;
    create_namespace(&client, "ex-quota", &[("explain-quota", "yes")]).await;
    let mut spec = basic_spec(&host, "quota-login", "quota-pull");
    spec["namespaceSelector"] = json!({"matchLabels": {"explain-quota": "yes"}});
    spec["verify"] = json!({"enabled": true, "plainHTTP": true, "repositories": ["regcred/test"]});
    apply_crcred(&client, "ex-quota", spec.clone()).await;
    let crcreds: Api<regcred::api::ClusterRegistryCredential> = Api::all(client.clone());
    wait_for_reason(&crcreds, "ex-quota", "Synced").await;
    let gauge = |metrics: &str, name: &str| -> Option<i64> {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(name) && l.contains("name=\"ex-quota\"") && l.contains(&format!("registry=\"{host}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let metrics = operator().metrics().unwrap();
    assert_eq!(gauge(&metrics, "regcred_registry_pull_quota_remaining"), Some(10), "{metrics}");
    assert_eq!(gauge(&metrics, "regcred_registry_pull_quota_limit"), Some(10));
    assert_eq!(front.pulls(), 0, "verification counted as a pull");

    // Nine pulls later, a new mint (the spec changed) reads 1 left of 10.
    let authfile = control_plane().dir().join("quota-auth.json");
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{}:{}", USER.0, USER.1));
    std::fs::write(&authfile, json!({"auths": {host.clone(): {"auth": auth}}}).to_string()).unwrap();
    while front.pulls() < 9 {
        let out = skopeo_inspect(&authfile, &format!("{host}/regcred/test:v1")).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    spec["secret"]["labels"] = json!({"remint": "yes"});
    apply_crcred(&client, "ex-quota", spec).await;
    wait_for("a PullQuotaLow Warning", WAIT, || async {
        let events = events_for(&client, "default", "ex-quota").await;
        events.into_iter().find(|(t, r, _)| t == "Warning" && r == "PullQuotaLow").map(|(_, _, note)| note)
    })
    .await;
    let note =
        events_for(&client, "default", "ex-quota").await.into_iter().find(|(_, r, _)| r == "PullQuotaLow").unwrap().2;
    assert!(note.contains(&format!("{host} reports 1 of 10 pulls left per 21600 s")), "{note}");
    assert_eq!(gauge(&operator().metrics().unwrap(), "regcred_registry_pull_quota_remaining"), Some(1));
    assert_eq!(front.pulls(), 9, "verification counted as a pull");
}
