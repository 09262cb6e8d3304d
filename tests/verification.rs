//! `verify.enabled`: a new credential is tried against the registry before it
//! is published. Real registries: htpasswd mode and token-auth mode behind the
//! test token service.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;
use kube::api::Api;
use regcred::api::RegistryCredential;
use regcred_testenv::registry::Registry;
use regcred_testenv::tokenauth::{TokenService, start_token_registry};
use serde_json::json;

fn verified_spec(registry: &str, secret_ref: &str, pull: &str) -> serde_json::Value {
    let mut spec = basic_spec(registry, secret_ref, pull);
    spec["verify"] = json!({"enabled": true, "plainHTTP": true});
    spec
}

#[tokio::test]
async fn htpasswd_registry_good_credential_published_bad_one_refused_and_old_secret_kept() {
    let client = setup().await;
    let registry = Registry::start_htpasswd(control_plane().process_group(), &[("verifier", "right-password")])
        .unwrap_or_else(|e| panic!("{e:#}"));
    create_namespace(&client, "verify-h", &[]).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "verify-h");

    put_login(&client, "verify-h", "login", "verifier", "right-password").await;
    apply_rcred(&client, "verify-h", "cred", verified_spec(&registry.host, "login", "v-pull")).await;
    wait_for_reason(&rcreds, "cred", "Synced").await;
    wait_for_login(&client, "verify-h", "v-pull", &registry.host, "verifier", "right-password").await;

    // The source changes to a password the registry refuses: not published.
    put_login(&client, "verify-h", "login", "verifier", "wrong-password").await;
    let status = wait_for_reason(&rcreds, "cred", "VerificationFailed").await;
    let message = &status.conditions[0].message;
    assert!(message.contains("not published") && message.contains(&registry.host), "{message}");
    assert!(!message.contains("wrong-password"));
    let kept = get_secret(&client, "verify-h", "v-pull").await.unwrap();
    assert_eq!(login_in(&kept, &registry.host), Some(("verifier".into(), "right-password".into())));
    wait_for("a VerificationFailed Warning", WAIT, || async {
        let ev = events_for(&client, "verify-h", "cred").await;
        ev.iter().any(|(t, r, _)| t == "Warning" && r == "VerificationFailed").then_some(())
    })
    .await;

    // A credential refused from the start is never written.
    put_login(&client, "verify-h", "bad-login", "verifier", "never-right").await;
    apply_rcred(&client, "verify-h", "bad", verified_spec(&registry.host, "bad-login", "bad-pull")).await;
    wait_for_reason(&rcreds, "bad", "VerificationFailed").await;
    assert!(get_secret(&client, "verify-h", "bad-pull").await.is_none());
}

#[tokio::test]
async fn token_auth_registry_accepts_only_credentials_the_token_service_considers_valid() {
    let client = setup().await;
    let valid: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    valid.lock().unwrap().insert("pusher".into(), "push-pass".into());
    valid.lock().unwrap().insert("robot".into(), "robot-pass-1".into());
    regcred_testenv::operator::record_secret("robot-pass-1");
    let check = valid.clone();
    let tokens = TokenService::start(Arc::new(move |u: &str, p: &str| {
        check.lock().unwrap().get(u).is_some_and(|want| want == p)
    }))
    .unwrap();
    let registry = start_token_registry(control_plane().process_group(), &tokens, "pusher", "push-pass")
        .unwrap_or_else(|e| panic!("{e:#}"));
    create_namespace(&client, "verify-t", &[]).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "verify-t");

    put_login(&client, "verify-t", "login", "robot", "robot-pass-1").await;
    apply_rcred(&client, "verify-t", "cred", verified_spec(&registry.host, "login", "t-pull")).await;
    wait_for_reason(&rcreds, "cred", "Synced").await;
    wait_for_login(&client, "verify-t", "t-pull", &registry.host, "robot", "robot-pass-1").await;
    let served = tokens.requests();
    assert!(served >= 1, "verification did not go through the token service");

    // The token service stops accepting the robot's password (rotated away):
    // a refresh with it is refused at verification.
    valid.lock().unwrap().insert("robot".into(), "robot-pass-2".into());
    put_login(&client, "verify-t", "login", "robot", "robot-pass-3").await;
    wait_for_reason(&rcreds, "cred", "VerificationFailed").await;
    assert!(tokens.rejected() >= 1);
    let kept = get_secret(&client, "verify-t", "t-pull").await.unwrap();
    assert_eq!(login_in(&kept, &registry.host), Some(("robot".into(), "robot-pass-1".into())));

    // The right new password is verified and published.
    put_login(&client, "verify-t", "login", "robot", "robot-pass-2").await;
    wait_for_login(&client, "verify-t", "t-pull", &registry.host, "robot", "robot-pass-2").await;
    wait_for_reason(&rcreds, "cred", "Synced").await;
}
