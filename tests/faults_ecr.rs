//! Provider faults for private ECR (`provider.ecr`): a fault proxy between
//! the operator and moto injects an outage, HTTP 500, throttling, a hanging
//! response, malformed JSON, a truncated body and a huge body. Each time the
//! last good Secret stays in place, status says why, and clearing the fault
//! brings the credential back to Synced without restarting the operator.
//!
//! moto's tokens carry an expiry in 2015, so a failing refresh is reported as
//! `CredentialExpired` with the provider's reason and cause in the message.
//! Each scenario prints `RECOVERY | scenario | outcome | time`.

mod common;

#[path = "support/fault_proxy.rs"]
mod fault_proxy;

use fault_proxy::{FaultProxy, Mode};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{create_namespace, login_in};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use regcred::api::RegistryCredential;
use regcred_testenv::aws::Moto;
use regcred_testenv::operator::Operator;
use serde_json::json;

const NS: &str = "faults-ecr-private";
const SECRET_KEY: &str = "faults-ecr-private-secret-key";
const ACCOUNT: &str = "123456789012";
fn registry() -> String {
    format!("{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com")
}

async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if start.elapsed() > timeout {
            eprintln!("  gave up after {timeout:?} waiting for {what}");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The last lines of the operator's log.
fn log_tail(op: &Operator) -> String {
    let log = op.log_text();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn report(scenario: &str, outcome: &str, took: Duration) {
    eprintln!("RECOVERY | {scenario} | {outcome} | {:.1}s", took.as_secs_f64());
}

/// Changes an annotation on a source Secret, which makes a refresh due.
async fn touch(client: &Client, ns: &str, name: &str) {
    let patch = json!({"metadata": {"annotations": {"faults/touched": format!("{:?}", Instant::now())}}});
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// The Ready condition's reason and message.
async fn ready(rcreds: &Api<RegistryCredential>) -> Option<(String, String, String)> {
    let s = rcreds.get("cred").await.ok()?.status?;
    let c = s.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn ecr_faults_keep_the_last_good_secret_and_recover_without_a_restart() {
    common::set_operator_env(vec![("AWS_EC2_METADATA_DISABLED".into(), "true".into())]);
    let client = common::setup().await;
    let op = common::operator();
    let moto = Moto::start(common::control_plane().process_group()).unwrap_or_else(|e| panic!("{e:#}"));
    let validator = moto.validator();
    let proxy = FaultProxy::start(moto.endpoint().trim_start_matches("http://").to_string());
    create_namespace(&client, NS, &[]).await;
    regcred_testenv::operator::record_secret(SECRET_KEY);
    let keys: Secret = serde_json::from_value(json!({
        "metadata": {"name": "aws", "namespace": NS},
        "stringData": {"access-key-id": "AKIAFAULTSPRIVATE001", "secret-access-key": SECRET_KEY}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), NS).create(&PostParams::default(), &keys).await.unwrap();
    common::apply_rcred(
        &client,
        NS,
        "cred",
        json!({
            "provider": {"ecr": {"region": "us-east-1", "auth": {"secretRef": {"name": "aws"}}, "endpoint": proxy.url()}},
            "secret": {"name": "ecr-pull"}
        }),
    )
    .await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), NS);
    common::wait_for_reason(&rcreds, "cred", "Synced").await;
    let first = common::get_secret(&client, NS, "ecr-pull").await.unwrap();
    assert_eq!(
        login_in(&first, &registry()),
        Some(("AWS".to_string(), Moto::ecr_password(ACCOUNT))),
        "the first Secret does not hold moto's token"
    );

    // (fault, the provider's reason, text naming the cause). The published
    // token expired in 2015, so the Ready reason is CredentialExpired and
    // the provider's reason and cause follow in the message.
    let cases: Vec<(Mode, &[&str], &str)> = vec![
        (Mode::Down, &["ProviderError"], "ecr:GetAuthorizationToken: the request"),
        (Mode::Status500, &["ProviderError"], "ecr:GetAuthorizationToken: the endpoint answered HTTP 500"),
        (Mode::Throttled, &["ProviderThrottled"], "ecr:GetAuthorizationToken: throttled (HTTP 429)"),
        (Mode::Hang, &["ProviderError"], "ecr:GetAuthorizationToken"),
        (Mode::Malformed, &["ProviderResponseInvalid"], "ecr:GetAuthorizationToken"),
        (Mode::Truncated, &["ProviderError", "ProviderResponseInvalid"], "ecr:GetAuthorizationToken"),
        (Mode::Huge, &["ProviderResponseInvalid", "ProviderError"], "ecr:GetAuthorizationToken"),
    ];
    for (mode, provider_reasons, cause) in cases {
        let last_good = common::get_secret(&client, NS, "ecr-pull").await.unwrap();
        let last_login = login_in(&last_good, &registry()).expect("a login for moto's registry");
        proxy.set(mode);
        let started = Instant::now();
        let refreshed_before = rcreds.get("cred").await.unwrap().status.unwrap().last_refresh_time.unwrap().0;
        touch(&client, NS, "aws").await;
        // A hanging endpoint fails at the provider's operation timeout (30 s).
        let limit = Duration::from_secs(45);
        let last = Mutex::new(String::new());
        let status = poll(&format!("{mode:?} to be reported"), limit, || async {
            let (status, reason, message) = ready(&rcreds).await?;
            let seen = format!("{reason}: {message}");
            if *last.lock().unwrap() != seen {
                eprintln!("  {mode:?} after {:.1?}: {seen}", started.elapsed());
                *last.lock().unwrap() = seen;
            }
            (reason != "Synced").then_some((status, reason, message))
        })
        .await;
        let reported = started.elapsed();
        let kept = common::get_secret(&client, NS, "ecr-pull").await.unwrap();
        assert_eq!(kept.resource_version(), last_good.resource_version(), "{mode:?}: the Secret was rewritten");
        assert_eq!(kept.data, last_good.data, "{mode:?}: the last good Secret was not kept");
        assert!(validator(&last_login.0, &last_login.1), "the kept token is not one moto issues");
        let outcome = match status {
            Some((status, reason, message)) => {
                assert_eq!(status, "False", "{mode:?}: {reason}: {message}");
                assert_eq!(reason, "CredentialExpired", "{mode:?}: {message}");
                let provider_reason = provider_reasons
                    .iter()
                    .find(|r| message.contains(&format!("refreshing it fails: {r}: ")))
                    .unwrap_or_else(|| panic!("{mode:?}: not one of {provider_reasons:?}: {message}"));
                assert!(message.contains(cause), "{mode:?}: {message}");
                assert!(!message.contains(SECRET_KEY), "{mode:?}: the message holds the secret key");
                format!("{reason} ({provider_reason}) after {:.1}s, last good Secret kept", reported.as_secs_f64())
            }
            None => panic!("{mode:?} was not reported within {limit:?}\noperator log:\n{}", log_tail(op)),
        };
        proxy.set(Mode::Pass);
        let t = Instant::now();
        // Recovered: Synced by a refresh newer than the last good one (for a
        // hang, the one that was hanging completes first).
        poll(&format!("recovery from {mode:?}"), Duration::from_secs(90), || async {
            let s = rcreds.get("cred").await.ok()?.status?;
            let refreshed = s.last_refresh_time.as_ref()?.0;
            let synced = s.conditions.iter().find(|c| c.type_ == "Ready")?.reason == "Synced";
            (synced && refreshed > refreshed_before).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("no recovery from {mode:?}\noperator log:\n{}", log_tail(op)));
        let now = common::get_secret(&client, NS, "ecr-pull").await.unwrap();
        let login = login_in(&now, &registry()).unwrap();
        assert!(validator(&login.0, &login.1), "the Secret after recovery does not hold moto's token");
        report(&format!("ECR {mode:?}"), &format!("{outcome}, recovered"), t.elapsed());
    }
    assert!(op.metrics().is_ok(), "the operator stopped answering");
    let log = op.log_text();
    assert!(!log.contains(SECRET_KEY), "the operator log holds the secret key");
}
