//! Provider faults for private ECR (`provider.ecr`): a fault proxy between
//! the operator and moto (behind the front that issues ECR's 12-hour,
//! region-bound tokens) injects an outage, HTTP 500, throttling, a hanging
//! response, malformed JSON, a truncated body and a huge body. Each time the
//! last good Secret stays in place, status says why, and clearing the fault
//! brings the credential back to Synced without restarting the operator.
//!
//! The published token is still valid during each fault, so the Ready
//! reason is the provider's own, with the cause in the message. A last
//! scenario lets the published token expire during an outage: then the
//! reason is `CredentialExpired`, with the provider's reason and cause.
//! Each scenario prints `RECOVERY | scenario | outcome | time`.

mod common;

#[path = "support/fault_proxy.rs"]
mod fault_proxy;

use fault_proxy::{FaultProxy, Mode};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

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
    let (user, password) = login_in(&first, &registry()).expect("a login for moto's registry");
    assert!(validator(&user, &password), "the first Secret does not hold a token of the front");
    let token = moto.ecr_token(&password).unwrap();
    assert_eq!((token.account.as_str(), token.region.as_str()), (ACCOUNT, "us-east-1"));

    // (fault, the provider's reasons, text naming the cause). The published
    // token is valid for hours, so the Ready reason is the provider's.
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
        assert!(validator(&last_login.0, &last_login.1), "the kept token is no longer valid");
        let outcome = match status {
            Some((status, reason, message)) => {
                assert_eq!(status, "False", "{mode:?}: {reason}: {message}");
                let provider_reason = provider_reasons
                    .iter()
                    .find(|r| **r == reason)
                    .unwrap_or_else(|| panic!("{mode:?}: {reason} is not one of {provider_reasons:?}: {message}"));
                assert!(message.contains(cause), "{mode:?}: {message}");
                assert!(message.contains("the last good Secret stays in place"), "{mode:?}: {message}");
                assert!(!message.contains(SECRET_KEY), "{mode:?}: the message holds the secret key");
                format!("{provider_reason} after {:.1}s, last good Secret kept", reported.as_secs_f64())
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
        assert!(validator(&login.0, &login.1), "the Secret after recovery does not hold a live token of the front");
        assert_ne!(login.1, last_login.1, "{mode:?}: no new token after recovery");
        report(&format!("ECR {mode:?}"), &format!("{outcome}, recovered"), t.elapsed());
    }

    // The published token expires during an outage: tokens of 20 s, the
    // endpoint down; once the token has expired the credential is reported
    // CredentialExpired with the provider's reason and cause, and the
    // Secret is kept (it is all there is).
    moto.set_ecr_token_lifetime(Duration::from_secs(20));
    let refreshed_before = rcreds.get("cred").await.unwrap().status.unwrap().last_refresh_time.unwrap().0;
    touch(&client, NS, "aws").await;
    let short = poll("a 20 s token", Duration::from_secs(30), || async {
        let s = common::get_secret(&client, NS, "ecr-pull").await?;
        let status = rcreds.get("cred").await.ok()?.status?;
        let (_, password) = login_in(&s, &registry())?;
        let token = moto.ecr_token(&password)?;
        let fresh = status.last_refresh_time?.0 > refreshed_before;
        (fresh && token.expires_at < SystemTime::now() + Duration::from_secs(21)).then_some((s, token))
    })
    .await
    .unwrap_or_else(|| panic!("no 20 s token was published\noperator log:\n{}", log_tail(op)));
    proxy.set(Mode::Down);
    let started = Instant::now();
    let last = Mutex::new(String::new());
    let (status, reason, message) = poll("the expiry to be reported", Duration::from_secs(120), || async {
        let (status, reason, message) = ready(&rcreds).await?;
        let seen = format!("{reason}: {message}");
        if *last.lock().unwrap() != seen {
            eprintln!("  expiry during an outage, after {:.1?}: {seen}", started.elapsed());
            *last.lock().unwrap() = seen;
        }
        (reason == "CredentialExpired").then_some((status, reason, message))
    })
    .await
    .unwrap_or_else(|| panic!("the expired token was not reported\noperator log:\n{}", log_tail(op)));
    let reported = started.elapsed();
    assert!(SystemTime::now() >= short.1.expires_at, "reported expired before the token's expiry");
    assert_eq!(status, "False", "{reason}: {message}");
    assert!(
        message.contains("refreshing it fails: ProviderError: ecr:GetAuthorizationToken: the request"),
        "{message}"
    );
    let kept = common::get_secret(&client, NS, "ecr-pull").await.unwrap();
    assert_eq!(kept.data, short.0.data, "the Secret changed during the outage");
    proxy.set(Mode::Pass);
    moto.set_ecr_token_lifetime(regcred_testenv::aws::ECR_TOKEN_LIFETIME);
    let t = Instant::now();
    // The retry comes after the backoff of three or four failures (20-40 s).
    poll("recovery from the expiry", Duration::from_secs(90), || async {
        let (_, reason, _) = ready(&rcreds).await?;
        (reason == "Synced").then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("no recovery from the expiry\noperator log:\n{}", log_tail(op)));
    let healed = common::get_secret(&client, NS, "ecr-pull").await.unwrap();
    let login = login_in(&healed, &registry()).unwrap();
    assert!(validator(&login.0, &login.1), "the Secret after recovery does not hold a live token of the front");
    report(
        "ECR token expired during an outage",
        &format!("CredentialExpired after {:.1}s of outage, last Secret kept, recovered", reported.as_secs_f64()),
        t.elapsed(),
    );
    assert!(op.metrics().is_ok(), "the operator stopped answering");
    let log = op.log_text();
    assert!(!log.contains(SECRET_KEY), "the operator log holds the secret key");
}
