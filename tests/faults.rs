//! Faults: the control plane and the operator fail under regcred while it
//! fans out and rotates, and it converges afterwards with nothing lost,
//! duplicated or orphaned, without a crash loop.
//!
//! Runs on a control plane of its own (the faults would disturb other
//! tests). The fan-out is 100 namespaces by default and 500 with
//! `REGCRED_LONG_TESTS=1` (see docs/security.md). Each scenario prints
//! `RECOVERY | scenario | outcome | time` for the table in the docs.

mod common;

#[path = "support/fault_proxy.rs"]
mod fault_proxy;

use fault_proxy::{FaultProxy, Mode};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{CLUSTER_NS, apply_crcred, basic_spec, create_namespace, login_in, put_login};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use regcred::api::ClusterRegistryCredential;
use regcred_testenv::operator::Operator;
use regcred_testenv::{ControlPlane, Options};
use serde_json::json;

const REGISTRY: &str = "registry.example.com";
const PULL: &str = "faults-pull";
const CONVERGE: Duration = Duration::from_secs(180);

fn long_tests() -> bool {
    std::env::var("REGCRED_LONG_TESTS").is_ok_and(|v| v == "1")
}

fn start_operator(cp: &ControlPlane) -> Operator {
    Operator::start(cp, Path::new(env!("CARGO_BIN_EXE_regcred")), CLUSTER_NS, &["--write-concurrency=1"])
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Polls every 250 ms (the checks list many objects), failing with the
/// operator's log tail.
async fn poll<T, Fut>(what: &str, timeout: Duration, op: &Operator, f: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    common::poll_logged(what, timeout, Duration::from_millis(250), Some(op), f).await
}

/// Every Secret regcred manages, by namespace/name.
async fn managed_secrets(client: &Client) -> Option<BTreeMap<String, Secret>> {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=regcred");
    let list = Api::<Secret>::all(client.clone()).list(&lp).await.ok()?;
    Some(
        list.items
            .into_iter()
            .map(|s| (format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()), s))
            .collect(),
    )
}

/// Waits until each of the `n` namespaces holds exactly one managed Secret
/// with `password`, nothing else is managed anywhere, every `default`
/// ServiceAccount lists it and the status says n/n Synced. Returns how long
/// it took.
async fn converged(client: &Client, op: &Operator, n: usize, password: &str) -> Duration {
    let start = Instant::now();
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    poll(&format!("{n} Secrets with the current password"), CONVERGE, op, || async {
        let secrets = managed_secrets(client).await?;
        let good = secrets
            .iter()
            .filter(|(_, s)| login_in(s, REGISTRY).is_some_and(|(_, p)| p == password))
            .filter(|(_, s)| {
                s.annotations().get("regcred.dev/owner").map(String::as_str) == Some("ClusterRegistryCredential/faults")
            })
            .count();
        (good == n && secrets.len() == n).then_some(())
    })
    .await;
    let secrets_took = start.elapsed();
    poll(&format!("status {n}/{n} Synced"), CONVERGE, op, || async {
        let s = crcreds.get("faults").await.ok()?.status?;
        let t = s.targets.as_ref()?;
        (t.desired == n as i32 && t.synced == n as i32 && s.conditions.first()?.reason == "Synced").then_some(())
    })
    .await;
    poll("every ServiceAccount patched", CONVERGE, op, || async {
        let sas = Api::<ServiceAccount>::all(client.clone()).list(&ListParams::default()).await.ok()?;
        let patched = sas
            .items
            .iter()
            .filter(|sa| sa.namespace().is_some_and(|ns| ns.starts_with("faults-")) && sa.name_any() == "default")
            .filter(|sa| sa.image_pull_secrets.iter().flatten().filter(|r| r.name == PULL).count() == 1)
            .count();
        (patched == n).then_some(())
    })
    .await;
    let took = start.elapsed();
    eprintln!("  Secrets after {secrets_took:.1?}, status and ServiceAccounts after {took:.1?}");
    // No duplicates or orphans: exactly one managed Secret per target
    // namespace, and none elsewhere.
    let secrets = managed_secrets(client).await.unwrap();
    let expected: Vec<String> = (0..n).map(|i| format!("faults-{i}/{PULL}")).collect();
    let mut actual: Vec<String> = secrets.keys().cloned().collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    actual.sort();
    assert_eq!(actual, expected_sorted, "managed Secrets other than one per target namespace");
    took
}

/// How many managed Secrets hold `password`.
async fn rotated(client: &Client, password: &str) -> usize {
    managed_secrets(client)
        .await
        .unwrap_or_default()
        .values()
        .filter(|s| login_in(s, REGISTRY).is_some_and(|(_, p)| p == password))
        .count()
}

fn report(scenario: &str, outcome: &str, took: Duration) {
    eprintln!("RECOVERY | {scenario} | {outcome} | {:.1}s", took.as_secs_f64());
}

#[tokio::test]
async fn control_plane_and_operator_faults_during_fan_out_and_rotation() {
    let n = if long_tests() { 500 } else { 100 };
    let mut cp = ControlPlane::start(Options::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let client = cp.client().await.unwrap();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": CLUSTER_NS}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    let mut op = start_operator(&cp);
    put_login(&client, CLUSTER_NS, "faults-login", "faults", "faults-password-1").await;
    let start = Instant::now();
    for i in 0..n {
        create_namespace(&client, &format!("faults-{i}"), &[("faults", "yes")]).await;
    }
    eprintln!("created {n} namespaces in {:?}", start.elapsed());
    let mut spec = basic_spec(REGISTRY, "faults-login", PULL);
    spec["namespaceSelector"] = json!({"matchLabels": {"faults": "yes"}});
    apply_crcred(&client, "faults", spec).await;

    // 1. kube-apiserver SIGKILLed during the fan-out, down for 5 s.
    poll("the fan-out to start", CONVERGE, &op, || async {
        managed_secrets(&client).await.is_some_and(|s| !s.is_empty()).then_some(())
    })
    .await;
    let written_before = managed_secrets(&client).await.unwrap().len();
    let stopped = cp.kill_apiserver().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    cp.start_again(stopped).await.unwrap();
    let client = cp.client().await.unwrap();
    let took = converged(&client, &op, n, "faults-password-1").await;
    assert!(op.is_running(), "the operator exited when kube-apiserver went away:\n{}", op.log_text());
    eprintln!("{written_before}/{n} Secrets were written when kube-apiserver was killed");
    report(&format!("kube-apiserver SIGKILL + restart during a {n}-namespace fan-out"), "converged", took);

    // 2. kube-apiserver SIGKILLed during a rotation (the source changes).
    put_login(&client, CLUSTER_NS, "faults-login", "faults", "faults-password-2").await;
    poll("the rotation to start", CONVERGE, &op, || async {
        (rotated(&client, "faults-password-2").await > 0).then_some(())
    })
    .await;
    eprintln!("kube-apiserver killed with {}/{n} Secrets rotated", rotated(&client, "faults-password-2").await);
    let stopped = cp.kill_apiserver().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    cp.start_again(stopped).await.unwrap();
    let client = cp.client().await.unwrap();
    let took = converged(&client, &op, n, "faults-password-2").await;
    assert!(op.is_running(), "the operator exited:\n{}", op.log_text());
    report("kube-apiserver SIGKILL + restart during a rotation", "converged", took);

    // 3. etcd SIGKILLed and restarted on the same data; then a rotation and
    //    a new namespace.
    cp.restart_etcd().await.unwrap();
    let client = cp.client().await.unwrap();
    let t = Instant::now();
    put_login(&client, CLUSTER_NS, "faults-login", "faults", "faults-password-3").await;
    let took = converged(&client, &op, n, "faults-password-3").await;
    assert!(op.is_running(), "the operator exited:\n{}", op.log_text());
    report("etcd SIGKILL + restart, then a rotation", "converged", t.elapsed().max(took));
    create_namespace(&client, &format!("faults-{n}"), &[("faults", "yes")]).await;
    let n = n + 1;
    let t = Instant::now();
    poll("the new namespace's default ServiceAccount", CONVERGE, &op, || async {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &format!("faults-{}", n - 1));
        sas.get_opt("default").await.ok()?.map(|_| ())
    })
    .await;
    eprintln!("  kube-controller-manager created the default ServiceAccount after {:.1?}", t.elapsed());
    let took = converged(&client, &op, n, "faults-password-3").await;
    report("a new namespace after the etcd restart", "converged", took);

    // 4. The operator SIGKILLed mid-rotation and started again.
    put_login(&client, CLUSTER_NS, "faults-login", "faults", "faults-password-4").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let partial = rotated(&client, "faults-password-4").await;
    drop(op); // SIGKILL
    eprintln!("operator killed with {partial}/{n} Secrets rotated");
    let t = Instant::now();
    let mut op = start_operator(&cp);
    let took = converged(&client, &op, n, "faults-password-4").await;
    report("operator SIGKILL mid-rotation + restart", "converged", t.elapsed().max(took));

    // The restarted operator stays up, and the whole run leaked no password.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(op.is_running(), "the restarted operator exited:\n{}", op.log_text());
    let log = op.log_text();
    for pw in ["faults-password-1", "faults-password-2", "faults-password-3", "faults-password-4"] {
        assert!(!log.contains(pw), "the operator log contains a password");
    }
}

#[tokio::test]
async fn harbor_faults_keep_the_last_good_secret_and_recover_without_a_restart() {
    use regcred::api::RegistryCredential;
    use regcred_testenv::harbor_standin::{HarborStandin, Options as HarborOptions};
    let client = common::setup().await;
    let op = common::operator();
    let harbor = HarborStandin::start(HarborOptions {
        admins: vec![("admin".into(), "faults-harbor-admin-pw".into())],
        projects: vec!["regcred".into()],
        day: Duration::from_secs(86_400),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let proxy = FaultProxy::start(harbor.url().trim_start_matches("http://").to_string());
    let host = format!("127.0.0.1:{}", proxy.port);
    create_namespace(&client, "faults-harbor", &[]).await;
    put_login(&client, "faults-harbor", "harbor-admin", "admin", "faults-harbor-admin-pw").await;
    common::apply_rcred(
        &client,
        "faults-harbor",
        "cred",
        json!({
            "provider": {"harbor": {"url": proxy.url(), "projects": ["regcred"], "auth": {"secretRef": {"name": "harbor-admin"}}}},
            "secret": {"name": "harbor-pull"},
        }),
    )
    .await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "faults-harbor");
    common::wait_for_reason(&rcreds, "cred", "Synced").await;

    let hang = Duration::from_secs(60);
    let cases: Vec<(Mode, &[&str], &str)> = vec![
        (Mode::Down, &["ProviderError"], "cannot reach Harbor"),
        (Mode::Status500, &["ProviderError"], "500"),
        (Mode::Throttled, &["ProviderThrottled"], "throttled"),
        (Mode::Hang, &["ProviderError"], "Harbor"),
        (Mode::Malformed, &["ProviderResponseInvalid"], "Harbor"),
        (Mode::Truncated, &["ProviderError", "ProviderResponseInvalid"], "Harbor"),
        (Mode::Huge, &["ProviderResponseInvalid"], "larger than"),
    ];
    for (mode, reasons, needle) in cases {
        let last_good = common::get_secret(&client, "faults-harbor", "harbor-pull").await.unwrap();
        let last_login = login_in(&last_good, &host).expect("a login for the proxy's host");
        proxy.set(mode);
        let started = Instant::now();
        touch(&client, "faults-harbor", "harbor-admin").await;
        let status = poll(&format!("{mode:?} to be reported"), hang + Duration::from_secs(30), op, || async {
            let s = rcreds.get("cred").await.ok()?.status?;
            let ready = s.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
            reasons.contains(&ready.reason.as_str()).then_some(ready)
        })
        .await;
        let reported = started.elapsed();
        assert_eq!(status.status, "False");
        assert!(status.message.contains(needle), "{mode:?}: {}", status.message);
        assert!(!status.message.contains("faults-harbor-admin-pw"), "{mode:?}: the message holds the password");
        let kept = common::get_secret(&client, "faults-harbor", "harbor-pull").await.unwrap();
        assert_eq!(login_in(&kept, &host), Some(last_login.clone()), "{mode:?}: the last good Secret was not kept");
        assert!(harbor.accepts(&last_login.0, &last_login.1), "the kept robot no longer works");
        // Recovery without a restart or any change: the retry backoff brings it back.
        proxy.set(Mode::Pass);
        let t = Instant::now();
        poll(&format!("recovery from {mode:?}"), Duration::from_secs(90), op, || async {
            let s = rcreds.get("cred").await.ok()?.status?;
            (s.conditions.iter().find(|c| c.type_ == "Ready")?.reason == "Synced").then_some(())
        })
        .await;
        let now = common::get_secret(&client, "faults-harbor", "harbor-pull").await.unwrap();
        let login = login_in(&now, &host).unwrap();
        assert!(harbor.accepts(&login.0, &login.1), "the Secret after recovery does not log in");
        report(
            &format!("Harbor {mode:?}"),
            &format!("{} after {:.1}s, last good Secret kept, recovered", status.reason, reported.as_secs_f64()),
            t.elapsed(),
        );
    }
    assert!(op.metrics().is_ok(), "the operator stopped answering");
}

/// Changes an annotation on a source Secret, which makes a refresh due.
async fn touch(client: &Client, ns: &str, name: &str) {
    use kube::api::{Patch, PatchParams};
    let patch = json!({"metadata": {"annotations": {"faults/touched": format!("{:?}", Instant::now())}}});
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn ecr_public_faults_keep_the_last_good_secret_and_an_expired_token_does_not_hot_loop() {
    use regcred::api::RegistryCredential;
    use regcred_testenv::aws::EcrPublicStandIn;
    let client = common::setup().await;
    let op = common::operator();
    let standin = EcrPublicStandIn::start(Duration::from_secs(3600)).unwrap();
    let proxy = FaultProxy::start(standin.endpoint().trim_start_matches("http://").to_string());
    create_namespace(&client, "faults-ecr", &[]).await;
    regcred_testenv::operator::record_secret("faults-ecr-secret-key");
    let keys: Secret = serde_json::from_value(json!({
        "metadata": {"name": "aws", "namespace": "faults-ecr"},
        "stringData": {"access-key-id": "AKIAFAULTSKEY0000001", "secret-access-key": "faults-ecr-secret-key"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "faults-ecr").create(&PostParams::default(), &keys).await.unwrap();
    common::apply_rcred(
        &client,
        "faults-ecr",
        "cred",
        json!({
            "provider": {"ecrPublic": {"auth": {"secretRef": {"name": "aws"}}, "endpoint": proxy.url()}},
            "secret": {"name": "public-pull"}
        }),
    )
    .await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "faults-ecr");
    common::wait_for_reason(&rcreds, "cred", "Synced").await;
    let validator = standin.validator();

    // (fault, accepted reasons).
    let cases: Vec<(Option<Mode>, &[&str])> = vec![
        (Some(Mode::Down), &["ProviderError"]),
        (Some(Mode::Status500), &["ProviderError"]),
        (Some(Mode::Throttled), &["ProviderThrottled", "ProviderError"]),
        (Some(Mode::Malformed), &["ProviderResponseInvalid", "ProviderError"]),
        (Some(Mode::Truncated), &["ProviderError", "ProviderResponseInvalid"]),
    ];
    for (mode, reasons) in cases {
        let what = mode.map_or("already-expired token".to_string(), |m| format!("{m:?}"));
        let last_good = common::get_secret(&client, "faults-ecr", "public-pull").await.unwrap();
        let last_login = login_in(&last_good, "public.ecr.aws").unwrap();
        regcred_testenv::operator::record_secret(&last_login.1);
        match mode {
            Some(m) => proxy.set(m),
            None => standin.set_expired(true),
        }
        let started = Instant::now();
        touch(&client, "faults-ecr", "aws").await;
        let last = std::sync::Mutex::new(String::new());
        let status = poll(&format!("{what} to be reported"), Duration::from_secs(90), op, || async {
            let s = rcreds.get("cred").await.ok()?.status?;
            let ready = s.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
            let seen = format!("{}: {}", ready.reason, ready.message);
            if *last.lock().unwrap() != seen {
                eprintln!("  {what}: {seen}");
                *last.lock().unwrap() = seen;
            }
            reasons.contains(&ready.reason.as_str()).then_some(ready)
        })
        .await;
        let reported = started.elapsed();
        assert_eq!(status.status, "False");
        assert!(!status.message.contains("faults-ecr-secret-key"), "the message holds the secret key");
        let kept = common::get_secret(&client, "faults-ecr", "public-pull").await.unwrap();
        assert_eq!(login_in(&kept, "public.ecr.aws"), Some(last_login.clone()), "{what}: last good Secret not kept");
        assert!(validator(&last_login.0, &last_login.1), "the kept token is no longer valid");
        proxy.set(Mode::Pass);
        standin.set_expired(false);
        let t = Instant::now();
        poll(&format!("recovery from {what}"), Duration::from_secs(90), op, || async {
            let s = rcreds.get("cred").await.ok()?.status?;
            (s.conditions.iter().find(|c| c.type_ == "Ready")?.reason == "Synced").then_some(())
        })
        .await;
        let now = common::get_secret(&client, "faults-ecr", "public-pull").await.unwrap();
        let login = login_in(&now, "public.ecr.aws").unwrap();
        regcred_testenv::operator::record_secret(&login.1);
        assert!(validator(&login.0, &login.1), "the Secret after recovery is not valid");
        report(
            &format!("ECR Public {what}"),
            &format!("{} after {:.1}s, last good Secret kept, recovered", status.reason, reported.as_secs_f64()),
            t.elapsed(),
        );
    }

    // A token that expired an hour ago (a provider with a wrong clock): as
    // documented (docs/operations.md), it is published with its expiry and
    // refreshed 60 s later, not in a hot loop.
    standin.set_expired(true);
    touch(&client, "faults-ecr", "aws").await;
    let calls_before = standin.calls();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let calls = standin.calls() - calls_before;
    assert!(calls <= 2, "{calls} provider calls in 15 s with an expired token: a hot loop");
    let status = rcreds.get("cred").await.unwrap().status.unwrap();
    let expires = status.expires_at.as_ref().map(|t| t.0);
    eprintln!("  expired token: {calls} call(s) in 15 s, expiresAt {expires:?}, Ready {}", status.conditions[0].reason);
    standin.set_expired(false);
    report(
        "ECR Public token that expired an hour ago",
        &format!("{calls} provider call(s) in 15 s, no hot loop"),
        t.elapsed(),
    );
    assert!(op.metrics().is_ok(), "the operator stopped answering");
    let log = op.log_text();
    assert!(!log.contains("faults-ecr-secret-key"), "the operator log holds the secret key");
}
