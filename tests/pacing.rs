//! Provider call pacing (src/pacing.rs) against an endpoint that throttles:
//! 30 RegistryCredentials mint from one ECR Public stand-in behind a front
//! that answers 429 above 3 requests per second. The operator of this test
//! binary paces at 6 calls per second per endpoint, so it does get
//! throttled; the endpoint's shared backoff must bring every credential to
//! Synced, none failing, and the endpoint must never see more than the
//! operator's cap in any second.
//!
//! The AWS SDK's own retries are off here (`AWS_MAX_ATTEMPTS=1`), so every
//! request the endpoint sees is one paced call.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use regcred::api::RegistryCredential;
use regcred_testenv::aws::EcrPublicStandIn;
use regcred_testenv::throttle::ThrottlingFront;
use serde_json::json;

const NS: &str = "pacing";
const CREDENTIALS: usize = 30;
/// What the endpoint accepts per second.
const ENDPOINT_RATE: usize = 3;
/// What the operator is configured to send per second.
const OPERATOR_CAP: usize = 6;
const SECRET_KEY: &str = "pacing-aws-secret-key";

#[tokio::test]
async fn a_throttling_endpoint_slows_every_credential_and_none_fails() {
    set_operator_env(vec![
        ("REGCRED_PROVIDER_CALLS_PER_SECOND".into(), OPERATOR_CAP.to_string()),
        ("REGCRED_PROVIDER_CONCURRENCY".into(), "4".into()),
        ("AWS_MAX_ATTEMPTS".into(), "1".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]);
    let client = setup().await;
    let standin = EcrPublicStandIn::start(Duration::from_secs(3600)).unwrap();
    let front = ThrottlingFront::start(&standin.endpoint(), ENDPOINT_RATE).unwrap();
    create_namespace(&client, NS, &[]).await;
    regcred_testenv::operator::record_secret(SECRET_KEY);
    let keys: Secret = serde_json::from_value(json!({
        "metadata": {"name": "aws", "namespace": NS},
        "stringData": {"access-key-id": "AKIAPACINGKEY0000001", "secret-access-key": SECRET_KEY}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), NS).create(&PostParams::default(), &keys).await.unwrap();

    let started = Instant::now();
    for i in 0..CREDENTIALS {
        apply_rcred(
            &client,
            NS,
            &format!("cred-{i:02}"),
            json!({
                "provider": {"ecrPublic": {"auth": {"secretRef": {"name": "aws"}}, "endpoint": front.url()}},
                "secret": {"name": format!("pull-{i:02}")}
            }),
        )
        .await;
    }

    // Every credential Synced; any Ready=False seen on the way is recorded.
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), NS);
    let failed_on_the_way = std::sync::Mutex::new(BTreeMap::<String, String>::new());
    wait_for("every credential to be Synced", Duration::from_secs(180), || async {
        let list = rcreds.list(&Default::default()).await.ok()?;
        let mut synced = 0;
        for r in &list.items {
            let Some(ready) = r.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")) else {
                continue;
            };
            if ready.status == "False" {
                failed_on_the_way.lock().unwrap().insert(
                    r.metadata.name.clone().unwrap_or_default(),
                    format!("{}: {}", ready.reason, ready.message),
                );
            }
            if ready.status == "True" && ready.reason == "Synced" {
                synced += 1;
            }
        }
        (synced == CREDENTIALS).then_some(())
    })
    .await;
    let converged = started.elapsed();

    // Settle, then check the final state and what the endpoint saw.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list = rcreds.list(&Default::default()).await.unwrap();
    for r in &list.items {
        let ready = r.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True", "{:?}: {}: {}", r.metadata.name, ready.reason, ready.message);
    }
    let validator = standin.validator();
    for i in 0..CREDENTIALS {
        let secret = get_secret(&client, NS, &format!("pull-{i:02}")).await.expect("pull Secret");
        let (user, token) = login_in(&secret, "public.ecr.aws").expect("a login for public.ecr.aws");
        regcred_testenv::operator::record_secret(&token);
        assert!(validator(&user, &token), "pull-{i:02} does not hold a token the stand-in issued");
    }
    let most = front.max_in_any(Duration::from_secs(1));
    eprintln!(
        "pacing: {CREDENTIALS} credentials Synced in {:.1}s; the endpoint saw {} requests ({} answered 429, {} tokens \
         issued), at most {most} in any second (operator cap {OPERATOR_CAP}, endpoint rate {ENDPOINT_RATE}); \
         Ready=False on the way: {:?}",
        converged.as_secs_f64(),
        front.requests(),
        front.throttled(),
        standin.calls(),
        failed_on_the_way.lock().unwrap()
    );
    assert!(most <= OPERATOR_CAP, "the endpoint saw {most} requests in one second; the cap is {OPERATOR_CAP}");
    assert!(front.throttled() > 0, "the endpoint never throttled: the test did not exercise the backoff");
    // The backoff is shared: throttled requests stay a small share, not one
    // or more per credential as with each credential retrying on its own.
    assert!(
        front.throttled() < CREDENTIALS / 2,
        "{} requests throttled for {CREDENTIALS} credentials",
        front.throttled()
    );
    assert!(
        failed_on_the_way.lock().unwrap().is_empty(),
        "credentials failed: {:?}",
        failed_on_the_way.lock().unwrap()
    );
    let log = operator().log_text();
    assert!(log.contains("provider endpoint throttled"), "the operator did not log the endpoint's backoff");
    assert!(!log.contains(SECRET_KEY), "the operator log holds the secret key");
}
