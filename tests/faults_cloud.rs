//! Provider faults for Google and Azure ACR (issue 12; Harbor and ECR Public
//! are in tests/faults.rs): the provider is down, answers 500, 429 with
//! `Retry-After`, hangs for 60 s, answers malformed JSON, a truncated or a
//! huge body, or hands out a token that has already expired. Each time the
//! status says precisely what failed, the last good Secret is kept, and the
//! credential recovers without restarting the operator.
//!
//! Google's token endpoint is reached through a plain-HTTP fault proxy (the
//! key's `token_uri`); the ACR stand-in is HTTPS with a test CA, so its
//! registry exchange has fault modes of its own. The two tests run
//! concurrently, so their 60 s hangs overlap. Each scenario prints
//! `RECOVERY | scenario | outcome | time` like tests/faults.rs.

mod common;

#[path = "support/fault_proxy.rs"]
mod fault_proxy;

use fault_proxy::{FaultProxy, HANG, Mode};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{apply_rcred, create_namespace, get_secret, login_in, wait_for_reason};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use regcred::api::RegistryCredential;
use regcred_testenv::acr_standin::{ACR_USERNAME, AzureStandIn, Endpoint, ExchangeMode};
use regcred_testenv::google_standin::GoogleStandIn;
use regcred_testenv::operator::{Operator, record_secret};
use serde_json::{Value, json};

/// The Google registry in the pull Secret (nothing contacts it).
const GAR: &str = "europe-docker.pkg.dev";

fn report(scenario: &str, outcome: &str, took: Duration) {
    eprintln!("RECOVERY | {scenario} | {outcome} | {:.1}s", took.as_secs_f64());
}

/// Polls every 250 ms (the checks list many objects), failing with the
/// operator's log tail.
async fn poll<T, Fut>(what: &str, timeout: Duration, op: &Operator, f: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    common::poll_logged(what, timeout, Duration::from_millis(250), Some(op), f).await
}

/// Changes an annotation on a source Secret, which makes a refresh due.
async fn touch(client: &Client, ns: &str, name: &str) {
    let patch = json!({"metadata": {"annotations": {"faults/touched": format!("{:?}", Instant::now())}}});
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// The Ready condition once its reason is one of `reasons`.
async fn reported(
    rcreds: &Api<RegistryCredential>,
    op: &Operator,
    what: &str,
    reasons: &[&str],
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let last = Mutex::new(String::new());
    poll(&format!("{what} to be reported"), HANG + Duration::from_secs(30), op, || async {
        let s = rcreds.get("cred").await.ok()?.status?;
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
        let seen = format!("{}: {}", ready.reason, ready.message);
        if *last.lock().unwrap() != seen {
            eprintln!("  {what}: {seen}");
            *last.lock().unwrap() = seen;
        }
        reasons.contains(&ready.reason.as_str()).then_some(ready)
    })
    .await
}

/// Waits for Ready=Synced without any change to the credential (the retry
/// backoff brings it back).
async fn recovered(rcreds: &Api<RegistryCredential>, op: &Operator, what: &str) {
    poll(&format!("recovery from {what}"), Duration::from_secs(90), op, || async {
        let s = rcreds.get("cred").await.ok()?.status?;
        (s.conditions.iter().find(|c| c.type_ == "Ready")?.reason == "Synced").then_some(())
    })
    .await
}

// --------------------------------------------------------------- Google --

#[tokio::test]
async fn google_token_endpoint_faults_keep_the_last_good_secret_and_recover_without_a_restart() {
    let client = common::setup().await;
    let op = common::operator();
    let g = GoogleStandIn::start().unwrap_or_else(|e| panic!("{e:#}"));
    let proxy = FaultProxy::start(g.base_url().trim_start_matches("http://").to_string());
    let token_uri = format!("{}/token", proxy.url());
    g.accept_token_uri(&token_uri);
    let email = "faults@regcred-test.iam.gserviceaccount.com";
    let key = g.create_key(email, Duration::from_secs(3600)).unwrap_or_else(|e| panic!("{e:#}"));
    let mut key_json: Value = serde_json::from_str(&key.json).unwrap();
    record_secret(key_json["private_key"].as_str().unwrap());
    key_json["token_uri"] = json!(token_uri);
    let ns = "faults-google";
    create_namespace(&client, ns, &[]).await;
    let source: Secret = serde_json::from_value(json!({
        "metadata": {"name": "gsa-key", "namespace": ns},
        "stringData": {"credentials.json": key_json.to_string()}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &source).await.unwrap();
    apply_rcred(
        &client,
        ns,
        "cred",
        json!({
            "provider": {"google": {"registries": [GAR], "auth": {"secretRef": {"name": "gsa-key"}}}},
            "secret": {"name": "gar-pull"},
        }),
    )
    .await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    wait_for_reason(&rcreds, "cred", "Synced").await;
    let proxy_host = format!("127.0.0.1:{}", proxy.port);

    // (fault, accepted reasons, a part of the message).
    let cases: Vec<(Mode, &[&str], &str)> = vec![
        (Mode::Down, &["ProviderError"], &proxy_host),
        (Mode::Status500, &["ProviderError"], "500"),
        (Mode::Throttled, &["ProviderThrottled"], "429"),
        (Mode::Hang, &["ProviderError"], &proxy_host),
        (Mode::Malformed, &["ProviderResponseInvalid"], "not JSON"),
        (Mode::Truncated, &["ProviderError", "ProviderResponseInvalid"], &proxy_host),
        (Mode::Huge, &["ProviderResponseInvalid"], "larger than"),
    ];
    for (mode, reasons, needle) in cases {
        let what = format!("Google {mode:?}");
        let last_good = get_secret(&client, ns, "gar-pull").await.unwrap();
        let last_login = login_in(&last_good, GAR).expect("a login for the registry");
        record_secret(&last_login.1);
        proxy.set(mode);
        let started = Instant::now();
        touch(&client, ns, "gsa-key").await;
        let status = reported(&rcreds, op, &what, reasons).await;
        let took = started.elapsed();
        assert_eq!(status.status, "False");
        assert!(status.message.contains(needle), "{what}: {:?} lacks {needle:?}", status.message);
        assert!(!status.message.contains(&last_login.1), "{what}: the message holds the token");
        let kept = get_secret(&client, ns, "gar-pull").await.unwrap();
        assert_eq!(login_in(&kept, GAR), Some(last_login.clone()), "{what}: the last good Secret was not kept");
        assert!(g.principal_of(&last_login.1).is_some(), "{what}: the kept token is no longer valid");
        proxy.set(Mode::Pass);
        let t = Instant::now();
        recovered(&rcreds, op, &what).await;
        let now = get_secret(&client, ns, "gar-pull").await.unwrap();
        let login = login_in(&now, GAR).unwrap();
        record_secret(&login.1);
        assert_ne!(login.1, last_login.1, "{what}: no new token after recovery");
        assert_eq!(g.principal_of(&login.1).as_deref(), Some(email), "{what}: the new token is not the stand-in's");
        report(
            &what,
            &format!("{} after {:.1}s, last good Secret kept, recovered", status.reason, took.as_secs_f64()),
            t.elapsed(),
        );
    }

    // A token that expired an hour ago: no hot loop.
    let what = "Google token that expired an hour ago";
    proxy.set(Mode::Expired);
    let calls_before = g.token_calls(email);
    touch(&client, ns, "gsa-key").await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = g.token_calls(email) - calls_before;
    let status = rcreds.get("cred").await.unwrap().status.unwrap();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    eprintln!("  {what}: {calls} call(s) in 10 s, Ready {}: {}", ready.reason, ready.message);
    assert!(calls >= 1, "{what}: the touch did not refresh");
    assert!(calls <= 2, "{what}: {calls} token calls in 10 s: a hot loop");
    proxy.set(Mode::Pass);
    let before = login_in(&get_secret(&client, ns, "gar-pull").await.unwrap(), GAR).unwrap();
    touch(&client, ns, "gsa-key").await;
    let t2 = Instant::now();
    poll("a fresh token after the expired one", Duration::from_secs(90), op, || async {
        let s = rcreds.get("cred").await.ok()?.status?;
        let login = login_in(&get_secret(&client, ns, "gar-pull").await?, GAR)?;
        let synced = s.conditions.iter().find(|c| c.type_ == "Ready")?.reason == "Synced";
        (synced && login != before && s.expires_at?.0.as_second() > unix_now()).then_some(())
    })
    .await;
    report(what, &format!("{calls} token call(s) in 10 s, no hot loop, recovered"), t.elapsed().max(t2.elapsed()));

    assert!(op.metrics().is_ok(), "the operator stopped answering");
    let log = op.log_text();
    assert!(!log.contains(key_json["private_key"].as_str().unwrap()), "the operator log holds the private key");
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

// ------------------------------------------------------------------ ACR --

#[tokio::test]
async fn acr_exchange_faults_keep_the_last_good_secret_and_recover_without_a_restart() {
    let client = common::setup().await;
    let op = common::operator();
    let az = AzureStandIn::start().unwrap_or_else(|e| panic!("{e:#}"));
    let tenant = "tenant-faults";
    let sp_secret = "faults-acr-client-secret";
    record_secret(sp_secret);
    az.add_service_principal(tenant, "faults-app", sp_secret);
    az.grant_acr_pull(tenant, "faults-app");
    let ns = "faults-acr";
    let host = az.host();
    create_namespace(&client, ns, &[]).await;
    let source: Secret = serde_json::from_value(json!({
        "metadata": {"name": "sp", "namespace": ns},
        "stringData": {"client-id": "faults-app", "client-secret": sp_secret}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &source).await.unwrap();
    apply_rcred(
        &client,
        ns,
        "cred",
        json!({
            "provider": {"acr": {
                "registry": host,
                "tenantId": tenant,
                "auth": {"servicePrincipal": {"secretRef": {"name": "sp"}}},
                "authorityHost": az.authority_host(),
                "caBundle": az.ca_pem(),
            }},
            "secret": {"name": "acr-pull"},
        }),
    )
    .await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    wait_for_reason(&rcreds, "cred", "Synced").await;

    let cases: Vec<(ExchangeMode, &[&str], &str)> = vec![
        (ExchangeMode::Down, &["ProviderError"], "/oauth2/exchange"),
        (ExchangeMode::Status500, &["ProviderError"], "HTTP 500"),
        (ExchangeMode::ThrottledRetryAfter, &["ProviderThrottled"], "429"),
        (ExchangeMode::Hang, &["ProviderError"], "/oauth2/exchange"),
        (ExchangeMode::MalformedJson, &["ProviderResponseInvalid"], "/oauth2/exchange"),
        (ExchangeMode::Truncated, &["ProviderError", "ProviderResponseInvalid"], "/oauth2/exchange"),
        (ExchangeMode::Huge, &["ProviderResponseInvalid"], "larger than"),
    ];
    for (mode, reasons, needle) in cases {
        let what = format!("ACR {mode:?}");
        let last_good = get_secret(&client, ns, "acr-pull").await.unwrap();
        let last_login = login_in(&last_good, &host).expect("a login for the registry");
        record_secret(&last_login.1);
        az.set_exchange_mode(tenant, mode);
        let started = Instant::now();
        touch(&client, ns, "sp").await;
        let status = reported(&rcreds, op, &what, reasons).await;
        let took = started.elapsed();
        assert_eq!(status.status, "False");
        assert!(status.message.contains(needle), "{what}: {:?} lacks {needle:?}", status.message);
        for secret in [sp_secret, last_login.1.as_str()] {
            assert!(!status.message.contains(secret), "{what}: the message holds a secret");
        }
        let kept = get_secret(&client, ns, "acr-pull").await.unwrap();
        assert_eq!(login_in(&kept, &host), Some(last_login.clone()), "{what}: the last good Secret was not kept");
        assert!(az.refresh_token_valid(ACR_USERNAME, &last_login.1), "{what}: the kept token is no longer valid");
        az.set_exchange_mode(tenant, ExchangeMode::Normal);
        let t = Instant::now();
        recovered(&rcreds, op, &what).await;
        let login = login_in(&get_secret(&client, ns, "acr-pull").await.unwrap(), &host).unwrap();
        record_secret(&login.1);
        assert_ne!(login.1, last_login.1, "{what}: no new token after recovery");
        assert!(az.refresh_token_valid(ACR_USERNAME, &login.1), "{what}: the new token is not valid");
        report(
            &what,
            &format!("{} after {:.1}s, last good Secret kept, recovered", status.reason, took.as_secs_f64()),
            t.elapsed(),
        );
    }

    // A refresh token that expired an hour ago: no hot loop.
    let what = "ACR refresh token that expired an hour ago";
    let exchanges = || {
        az.seen().iter().filter(|s| s.endpoint == Endpoint::Exchange && s.tenant == tenant && s.status == 200).count()
    };
    az.set_exchange_mode(tenant, ExchangeMode::Expired);
    let calls_before = exchanges();
    touch(&client, ns, "sp").await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = exchanges() - calls_before;
    let status = rcreds.get("cred").await.unwrap().status.unwrap();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    eprintln!("  {what}: {calls} exchange(s) in 10 s, Ready {}: {}", ready.reason, ready.message);
    assert!(calls >= 1, "{what}: the touch did not refresh");
    assert!(calls <= 2, "{what}: {calls} exchanges in 10 s: a hot loop");
    az.set_exchange_mode(tenant, ExchangeMode::Normal);
    touch(&client, ns, "sp").await;
    let t2 = Instant::now();
    poll("a valid refresh token after the expired one", Duration::from_secs(90), op, || async {
        let s = rcreds.get("cred").await.ok()?.status?;
        let login = login_in(&get_secret(&client, ns, "acr-pull").await?, &host)?;
        let synced = s.conditions.iter().find(|c| c.type_ == "Ready")?.reason == "Synced";
        (synced && az.refresh_token_valid(ACR_USERNAME, &login.1)).then_some(())
    })
    .await;
    report(what, &format!("{calls} exchange(s) in 10 s, no hot loop, recovered"), t.elapsed().max(t2.elapsed()));

    assert!(op.metrics().is_ok(), "the operator stopped answering");
    let log = op.log_text();
    assert!(!log.contains(sp_secret), "the operator log holds the client secret");
}
