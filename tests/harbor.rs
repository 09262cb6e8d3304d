//! The `harbor` provider against a Harbor API stand-in
//! (`regcred_testenv::harbor_standin`) whose robots are the only valid
//! logins at a real `docker-registry` in token-auth mode behind it.
//!
//! - The provider on its own (no cluster): two robots alternate, a retired
//!   secret is refused, a robot deleted by hand is recreated, a lost status
//!   update is recovered by name, projects changes update permissions,
//!   cleanup deletes the robots; Harbor API errors become precise reasons;
//!   `caBundle` trusts a private CA.
//! - `regcred run` against the real control plane: at least 5 rotations
//!   with shortened robot lifetimes while a loop pulls with `skopeo` using
//!   the current Secret (zero authentication failures, retired secrets
//!   refused by the registry); the lifecycle (projects change, hand-deleted
//!   robot, deletion and Orphan); an outage keeps the old Secret, is
//!   reported and recovers.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use regcred::api::{ClusterRegistryCredential, Provider, RegistryCredential};
use regcred::provider::{Minted, ProviderError, Sources, for_spec};
use regcred::reasons;
use regcred_testenv::harbor_standin::{AuthMode, HarborStandin, Options, Role, User, describe};
use regcred_testenv::registry::{TEST_IMAGE, require_tool};
use regcred_testenv::tokenauth::{TokenRegistry, TokenService, start_token_registry};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "Harbor12345-admin";

fn standin(day: Duration, projects: &[&str]) -> HarborStandin {
    HarborStandin::start(Options {
        admins: vec![(ADMIN.into(), ADMIN_PASSWORD.into())],
        projects: projects.iter().map(|p| p.to_string()).collect(),
        day,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// A token service accepting what the stand-in accepts, a real registry
/// behind it with the test image, and the stand-in serving that registry
/// under its own host, as Harbor does.
fn registry_behind(harbor: &HarborStandin) -> (TokenService, TokenRegistry) {
    let started = Instant::now();
    let tokens = TokenService::start(harbor.validator()).unwrap_or_else(|e| panic!("{e:#}"));
    let registry = start_token_registry(control_plane().process_group(), &tokens, ADMIN, ADMIN_PASSWORD)
        .unwrap_or_else(|e| panic!("{e:#}"));
    harbor.proxy_registry(&registry.host);
    eprintln!("registry with the test image up after {:?}", started.elapsed());
    (tokens, registry)
}

fn harbor_spec(harbor: &HarborStandin, projects: &[&str], secret_ref: &str) -> Value {
    json!({"url": harbor.url(), "projects": projects, "auth": {"secretRef": {"name": secret_ref}}})
}

fn admin_secret(ns: &str, name: &str, username: &str, password: &str) -> Secret {
    regcred_testenv::operator::record_secret(password);
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"username": username, "password": password}
    }))
    .unwrap()
}

/// Runs the provider once outside the operator, as `regcred check` does,
/// with the state a previous mint left.
async fn mint(spec: &Value, secret: &Secret, state: Option<&Value>) -> Result<Minted, ProviderError> {
    let provider: Provider = serde_json::from_value(json!({"harbor": spec})).unwrap();
    let sources = Sources::local(vec![secret.clone()], "team-a")
        .with_owner("RegistryCredential/team-a/pull")
        .with_state(state.cloned());
    for_spec(&provider).mint(&sources).await
}

async fn cleanup(spec: &Value, secret: &Secret, state: Option<&Value>) -> Result<(), ProviderError> {
    let provider: Provider = serde_json::from_value(json!({"harbor": spec})).unwrap();
    let sources = Sources::local(vec![secret.clone()], "team-a")
        .with_owner("RegistryCredential/team-a/pull")
        .with_state(state.cloned());
    for_spec(&provider).cleanup(&sources).await
}

/// `(username, password)` of a minted credential.
fn login(m: &Minted) -> (String, String) {
    assert_eq!(m.auths.len(), 1);
    (m.auths[0].username.clone(), m.auths[0].password.expose_secret().to_string())
}

#[tokio::test]
async fn provider_alternates_two_robots_and_retires_each_secret_one_rotation_later() {
    let harbor = standin(Duration::from_secs(86_400), &["library", "team"]);
    let secret = admin_secret("team-a", "harbor-admin", ADMIN, ADMIN_PASSWORD);
    let spec = harbor_spec(&harbor, &["team", "library"], "harbor-admin");

    let m1 = mint(&spec, &secret, None).await.unwrap();
    let (user_a, pass1) = login(&m1);
    assert_eq!(m1.auths[0].registry, harbor.host(), "the registry host is Harbor's host");
    assert!(user_a.starts_with("robot$regcred-team-a-pull-") && user_a.ends_with("-a"), "{user_a}");
    let a = harbor.robot_by_login(&user_a).expect("robot a in Harbor");
    assert_eq!(a.level, "system");
    assert_eq!(a.duration, 30, "default durationDays");
    assert_eq!(a.projects(), ["library", "team"]);
    for project in ["library", "team"] {
        assert_eq!(a.access_in(project), [("repository".to_string(), "pull".to_string())], "pull only");
    }
    assert!(a.description.contains("RegistryCredential/team-a/pull"), "{}", a.description);
    assert_eq!(m1.expires_at.map(|t| t.as_second()), Some(a.expires_at), "expiry from expires_at");
    let s1 = m1.state.clone().unwrap();
    assert_eq!(s1["active"], "a");
    assert_eq!(s1["robots"], json!([{"slot": "a", "id": a.id, "name": user_a}]));
    assert!(!s1.to_string().contains(&pass1), "no secret in the state");

    // Second mint: the other slot's robot is created and published; the
    // first robot's secret still works (pulls in flight).
    let m2 = mint(&spec, &secret, Some(&s1)).await.unwrap();
    let (user_b, pass2) = login(&m2);
    assert!(user_b.ends_with("-b") && user_b[..user_b.len() - 1] == user_a[..user_a.len() - 1], "{user_b}");
    assert!(harbor.accepts(&user_a, &pass1) && harbor.accepts(&user_b, &pass2));
    let s2 = m2.state.clone().unwrap();
    assert_eq!(s2["active"], "b");

    // Third mint: robot a gets a new secret (PATCH), its old one is refused.
    let patches = harbor.count(&format!("PATCH /api/v2.0/robots/{}", a.id));
    let m3 = mint(&spec, &secret, Some(&s2)).await.unwrap();
    let (user, pass3) = login(&m3);
    assert_eq!(user, user_a);
    assert_eq!(harbor.count(&format!("PATCH /api/v2.0/robots/{}", a.id)), patches + 1, "{:?}", harbor.calls());
    assert!(!harbor.accepts(&user_a, &pass1), "the secret from two rotations ago is retired");
    assert!(harbor.accepts(&user_a, &pass3) && harbor.accepts(&user_b, &pass2));
    assert_eq!(harbor.robots().len(), 2, "{}", describe(&harbor));
    let s3 = m3.state.clone().unwrap();

    // The unpublished robot is deleted by hand in Harbor: recreated.
    let b = harbor.robot_by_login(&user_b).unwrap();
    assert!(harbor.delete_robot(b.id));
    let m4 = mint(&spec, &secret, Some(&s3)).await.unwrap();
    let (user, pass4) = login(&m4);
    let b2 = harbor.robot_by_login(&user_b).expect("robot b recreated");
    assert_eq!(user, user_b);
    assert_ne!(b2.id, b.id);
    assert!(harbor.accepts(&user_b, &pass4) && harbor.accepts(&user_a, &pass3));
    let s4 = m4.state.clone().unwrap();

    // A status update that was lost: the state does not know robot a's
    // latest id, and robot a exists. It is found by name, not duplicated.
    let mut lost = s4.clone();
    lost["robots"] = json!([s4["robots"][1].clone()]);
    lost["active"] = json!("b");
    let m5 = mint(&spec, &secret, Some(&lost)).await.unwrap();
    assert_eq!(login(&m5).0, user_a);
    assert_eq!(harbor.robots().len(), 2, "{}", describe(&harbor));
    let s5 = m5.state.clone().unwrap();
    assert_eq!(s5["robots"].as_array().unwrap().len(), 2, "{s5}");

    // The projects change: the published robot's permissions are updated at
    // once, the next one is published with them.
    let spec2 = harbor_spec(&harbor, &["library"], "harbor-admin");
    let m6 = mint(&spec2, &secret, Some(&s5)).await.unwrap();
    for r in harbor.robots() {
        assert_eq!(r.projects(), ["library"], "{}", describe(&harbor));
    }
    assert_eq!(login(&m6).0, user_b);
    let s6 = m6.state.clone().unwrap();
    assert_eq!(s6["projects"], json!(["library"]));

    // Deleting the credential deletes both robots.
    cleanup(&spec2, &secret, Some(&s6)).await.unwrap();
    assert!(harbor.robots().is_empty(), "{}", describe(&harbor));
    assert!(!harbor.accepts(&user_b, &login(&m6).1));
    // Nothing minted, nothing to delete; a credential whose admin Secret is
    // gone does not block deletion.
    cleanup(&spec2, &secret, None).await.unwrap();
    let provider: Provider = serde_json::from_value(json!({"harbor": spec2})).unwrap();
    for_spec(&provider).cleanup(&Sources::local(vec![], "team-a").with_state(Some(s6))).await.unwrap();
}

#[tokio::test]
async fn harbor_api_errors_become_precise_reasons() {
    let harbor = standin(Duration::from_secs(86_400), &["library"]);
    let good = admin_secret("team-a", "harbor-admin", ADMIN, ADMIN_PASSWORD);
    let spec = harbor_spec(&harbor, &["library"], "harbor-admin");
    let mut messages = Vec::new();
    let mut expect = |r: Result<Minted, ProviderError>, reason: &str, words: &[&str]| {
        let e = r.err().unwrap_or_else(|| panic!("expected {reason}"));
        assert_eq!(e.reason, reason, "{}", e.message);
        for w in words {
            assert!(e.message.contains(w), "{w:?} not in {:?}", e.message);
        }
        messages.push(e.message);
    };

    let wrong = admin_secret("team-a", "harbor-admin", ADMIN, "Wr0ng-admin-password");
    expect(
        mint(&spec, &wrong, None).await,
        reasons::PROVIDER_AUTH_FAILED,
        &["401", "account admin", "team-a/harbor-admin"],
    );
    harbor.add_user("developer", "Dev3loper-password", false);
    let dev = admin_secret("team-a", "harbor-admin", "developer", "Dev3loper-password");
    expect(
        mint(&spec, &dev, None).await,
        reasons::PROVIDER_AUTH_FAILED,
        &["403", "developer", "system robot accounts"],
    );
    let missing = harbor_spec(&harbor, &["library", "no-such-project"], "harbor-admin");
    expect(mint(&missing, &good, None).await, reasons::INVALID_SPEC, &["404", "project no-such-project not found"]);
    let endpoint = format!("POST {}/api/v2.0/robots", harbor.url());
    harbor.fail_next(1, 500);
    expect(mint(&spec, &good, None).await, reasons::PROVIDER_ERROR, &["500", &endpoint]);
    harbor.fail_next(1, 503);
    expect(mint(&spec, &good, None).await, reasons::PROVIDER_ERROR, &["503 Service Unavailable"]);
    harbor.fail_next(1, 429);
    expect(mint(&spec, &good, None).await, reasons::PROVIDER_THROTTLED, &["429"]);
    // A name clash that is not one of this credential's robots.
    harbor.fail_next(1, 409);
    expect(mint(&spec, &good, None).await, reasons::PROVIDER_ERROR, &["409", "name is taken"]);
    harbor.set_down(true);
    expect(mint(&spec, &good, None).await, reasons::PROVIDER_ERROR, &["cannot reach Harbor", &endpoint]);
    harbor.set_down(false);
    let no_password: Secret = serde_json::from_value(json!({
        "metadata": {"name": "harbor-admin", "namespace": "team-a"}, "stringData": {"username": ADMIN}
    }))
    .unwrap();
    expect(mint(&spec, &no_password, None).await, reasons::SOURCE_SECRET_INVALID, &["team-a/harbor-admin", "password"]);
    let mut bad_prefix = spec.clone();
    bad_prefix["robot"] = json!({"namePrefix": "ci--x"});
    expect(mint(&bad_prefix, &good, None).await, reasons::INVALID_SPEC, &["namePrefix"]);
    assert!(harbor.robots().is_empty(), "failed mints leave no robots: {}", describe(&harbor));
    for m in &messages {
        for secret in [ADMIN_PASSWORD, "Wr0ng-admin-password", "Dev3loper-password"] {
            assert!(!m.contains(secret), "{m}");
        }
    }

    // And it works once Harbor answers.
    let m = mint(&spec, &good, None).await.unwrap();
    assert!(harbor.accepts(&login(&m).0, &login(&m).1));
}

/// A system robot account that may manage robots (Harbor 2.12+: robot
/// create, read, list and delete; never update) and pull from `pulls`,
/// created by `admin`: `(login, secret)`.
fn robot_manager(harbor: &HarborStandin, name: &str, pulls: &[&str]) -> (String, String) {
    let mut permissions = vec![json!({"kind": "system", "namespace": "/", "access": [
        {"resource": "robot", "action": "create"}, {"resource": "robot", "action": "read"},
        {"resource": "robot", "action": "list"}, {"resource": "robot", "action": "delete"}]})];
    for p in pulls {
        permissions.push(json!({"kind": "project", "namespace": p,
            "access": [{"resource": "repository", "action": "pull"}]}));
    }
    harbor
        .create_robot_as_admin(json!({"name": name, "duration": -1, "level": "system", "permissions": permissions}))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Three mints and a cleanup with `secret`'s account: every published
/// login works at Harbor's registry, the one from two rotations ago is
/// refused, and cleanup deletes the two robots. Returns whether the third
/// mint replaced robot `a` (a new id) rather than refreshing its secret.
async fn mints_rotates_and_cleans_up(harbor: &HarborStandin, secret: &Secret, what: &str) -> bool {
    let spec = harbor_spec(harbor, &["regcred"], "harbor-admin");
    let before: BTreeSet<i64> = harbor.robots().iter().map(|r| r.id).collect();
    let ours = || harbor.robots().into_iter().filter(|r| !before.contains(&r.id)).collect::<Vec<_>>();
    let fail = |e: ProviderError| -> Minted { panic!("{what}: {}: {}", e.reason, e.message) };
    let m1 = mint(&spec, secret, None).await.unwrap_or_else(fail);
    let m2 = mint(&spec, secret, m1.state.as_ref()).await.unwrap_or_else(fail);
    let m3 = mint(&spec, secret, m2.state.as_ref()).await.unwrap_or_else(fail);
    let (l1, l2, l3) = (login(&m1), login(&m2), login(&m3));
    assert_eq!(l1.0, l3.0, "{what}: slot a is published again");
    assert_ne!(l1.0, l2.0, "{what}");
    assert!(!harbor.accepts(&l1.0, &l1.1), "{what}: the login from two rotations ago is retired");
    assert!(harbor.accepts(&l2.0, &l2.1) && harbor.accepts(&l3.0, &l3.1), "{what}: {}", describe(harbor));
    let robots = ours();
    assert_eq!(robots.len(), 2, "{what}: {}", describe(harbor));
    for r in &robots {
        assert_eq!(r.level, "system", "{what}");
        assert_eq!(r.access_in("regcred"), [("repository".to_string(), "pull".to_string())], "{what}");
        assert!(r.duration > 0, "{what}: {}", describe(harbor));
    }
    let id_of_a = |m: &Minted| m.state.as_ref().unwrap()["robots"][0]["id"].as_i64().unwrap();
    let replaced = id_of_a(&m1) != id_of_a(&m3);
    cleanup(&spec, secret, m3.state.as_ref()).await.unwrap_or_else(|e| panic!("{what}: {}", e.message));
    assert!(ours().is_empty(), "{what}: cleanup leaves {}", describe(harbor));
    assert!(!harbor.accepts(&l3.0, &l3.1), "{what}");
    replaced
}

#[tokio::test]
async fn accounts_harbor_accepts_create_rotate_and_delete_robots() {
    let start = |mode: AuthMode, admins: &[(&str, &str)]| {
        HarborStandin::start(Options {
            admins: admins.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
            auth_mode: mode,
            projects: vec!["regcred".into()],
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let secret = |u: &str, p: &str| admin_secret("team-a", "harbor-admin", u, p);

    // Database mode: the local admin and another system administrator.
    let db = start(AuthMode::Db, &[(ADMIN, ADMIN_PASSWORD), ("ops", "Ops-db-passw0rd")]);
    assert!(!mints_rotates_and_cleans_up(&db, &secret(ADMIN, ADMIN_PASSWORD), "db: admin").await);
    assert!(!mints_rotates_and_cleans_up(&db, &secret("ops", "Ops-db-passw0rd"), "db: system admin").await);

    // LDAP mode: an LDAP user who is a system administrator signs in with
    // its LDAP password; admin with its Harbor password.
    let ldap = start(AuthMode::Ldap, &[(ADMIN, ADMIN_PASSWORD), ("ldap-ops", "Ldap-ops-passw0rd")]);
    assert!(!mints_rotates_and_cleans_up(&ldap, &secret(ADMIN, ADMIN_PASSWORD), "ldap: admin").await);
    assert!(!mints_rotates_and_cleans_up(&ldap, &secret("ldap-ops", "Ldap-ops-passw0rd"), "ldap: LDAP admin").await);

    // OIDC mode: admin's password, and a system robot account that manages
    // robots. The robot may not update robots, so its robot a is replaced
    // at the third mint instead of refreshed.
    let oidc = start(AuthMode::Oidc, &[(ADMIN, ADMIN_PASSWORD)]);
    assert!(!mints_rotates_and_cleans_up(&oidc, &secret(ADMIN, ADMIN_PASSWORD), "oidc: admin").await);
    let (manager, manager_secret) = robot_manager(&oidc, "regcred-manager", &["regcred"]);
    regcred_testenv::operator::record_secret(&manager_secret);
    // The refused update is the PATCH of the secret, or the PUT before it
    // when a second has passed since the robot's creation (its duration is
    // then brought up to date first): either way one, then a replacement.
    let updates = || oidc.count("PATCH /api/v2.0/robots/") + oidc.count("PUT /api/v2.0/robots/");
    let before = updates();
    assert!(mints_rotates_and_cleans_up(&oidc, &secret(&manager, &manager_secret), "oidc: robot account").await);
    assert_eq!(updates(), before + 1, "one refused update, then a replacement");
}

#[tokio::test]
async fn accounts_harbor_refuses_get_the_precise_reason() {
    const ALICE_CLI: &str = "Alice-cli-s3cret";
    const BOB_LDAP: &str = "Bob-ldap-passw0rd";
    const CAROL_DB: &str = "Carol-db-passw0rd";
    let project_admin = |name: &str, secret: &str| User {
        name: name.into(),
        secret: secret.into(),
        sysadmin: false,
        projects: vec![("regcred".into(), Role::ProjectAdmin), ("library".into(), Role::ProjectAdmin)],
    };
    let start = |mode: AuthMode, users: Vec<User>, version: (u32, u32)| {
        HarborStandin::start(Options {
            admins: vec![(ADMIN.into(), ADMIN_PASSWORD.into())],
            users,
            auth_mode: mode,
            projects: vec!["regcred".into(), "library".into()],
            version,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let oidc_admin = User { name: "alice".into(), secret: ALICE_CLI.into(), sysadmin: true, projects: vec![] };
    let oidc = start(AuthMode::Oidc, vec![oidc_admin], (2, 14));
    let ldap = start(AuthMode::Ldap, vec![project_admin("bob", BOB_LDAP)], (2, 14));
    let db = start(AuthMode::Db, vec![project_admin("carol", CAROL_DB)], (2, 14));
    let old = start(AuthMode::Db, vec![], (2, 11));
    let puller = |h: &HarborStandin| {
        h.create_robot_as_admin(json!({"name": "puller", "duration": -1, "level": "system", "permissions": [
            {"kind": "project", "namespace": "regcred", "access": [{"resource": "repository", "action": "pull"}]}]}))
            .unwrap()
    };
    let (db_puller, db_puller_secret) = puller(&db);
    let (old_puller, old_puller_secret) = puller(&old);
    let (narrow, narrow_secret) = robot_manager(&db, "narrow", &["library"]);
    let (gone, gone_secret) = robot_manager(&db, "gone", &["regcred"]);
    assert!(db.delete_robot(db.robot_by_login(&gone).unwrap().id));
    let mut secrets = vec![ADMIN_PASSWORD, ALICE_CLI, BOB_LDAP, CAROL_DB, "Wr0ng-passw0rd"];
    secrets.extend([
        db_puller_secret.as_str(),
        old_puller_secret.as_str(),
        narrow_secret.as_str(),
        gone_secret.as_str(),
    ]);
    for s in &secrets {
        regcred_testenv::operator::record_secret(s);
    }

    struct Case<'a> {
        what: &'a str,
        harbor: &'a HarborStandin,
        user: &'a str,
        password: &'a str,
        reason: &'a str,
        words: &'a [&'a str],
        not: &'a [&'a str],
    }
    let auth = reasons::PROVIDER_AUTH_FAILED;
    let cases = [
        Case {
            what: "OIDC user with a valid CLI secret",
            harbor: &oidc,
            user: "alice",
            password: ALICE_CLI,
            reason: auth,
            words: &[
                "401",
                "account alice",
                "OIDC mode",
                "CLI secret",
                "never for managing robot accounts",
                "this CLI secret is valid",
                "local admin",
                "system robot account",
                "2.12",
            ],
            not: &["check its username and password"],
        },
        Case {
            what: "OIDC user with a wrong CLI secret",
            harbor: &oidc,
            user: "alice",
            password: "Wr0ng-passw0rd",
            reason: auth,
            words: &["401", "OIDC mode", "never for managing robot accounts"],
            not: &["is valid"],
        },
        Case {
            what: "OIDC admin with a wrong password",
            harbor: &oidc,
            user: ADMIN,
            password: "Wr0ng-passw0rd",
            reason: auth,
            words: &["401", "check admin's password"],
            not: &["CLI secret is"],
        },
        Case {
            what: "LDAP user with a wrong password",
            harbor: &ldap,
            user: "bob",
            password: "Wr0ng-passw0rd",
            reason: auth,
            words: &["401", "account bob", "LDAP mode", "LDAP password"],
            not: &[],
        },
        Case {
            what: "LDAP project admin",
            harbor: &ldap,
            user: "bob",
            password: BOB_LDAP,
            reason: auth,
            words: &[
                "403",
                "account bob may not create robot accounts",
                "system administrator",
                "project administrator",
            ],
            not: &["401"],
        },
        Case {
            what: "database project admin",
            harbor: &db,
            user: "carol",
            password: CAROL_DB,
            reason: auth,
            words: &[
                "403",
                "account carol may not create robot accounts",
                "system robot accounts",
                "system administrator",
                "project administrator",
            ],
            not: &[],
        },
        Case {
            what: "robot account without robot permissions",
            harbor: &db,
            user: &db_puller,
            password: &db_puller_secret,
            reason: auth,
            words: &[
                "403",
                "robot account robot$puller may not create robot accounts",
                "system permission robot create",
            ],
            not: &["does not let robot accounts"],
        },
        Case {
            what: "robot account on Harbor 2.11",
            harbor: &old,
            user: &old_puller,
            password: &old_puller_secret,
            reason: auth,
            words: &["403", "Harbor 2.11 does not let robot accounts manage robots"],
            not: &[],
        },
        Case {
            what: "robot account without pull on a project",
            harbor: &db,
            user: &narrow,
            password: &narrow_secret,
            reason: auth,
            words: &[
                "403",
                "robot account robot$narrow",
                "pulls from project regcred (",
                "repository pull on project regcred,",
            ],
            not: &["library, regcred"],
        },
        Case {
            what: "deleted robot account",
            harbor: &db,
            user: &gone,
            password: &gone_secret,
            reason: auth,
            words: &["401", "no enabled, unexpired robot account robot$gone"],
            not: &[],
        },
    ];
    for c in &cases {
        let robots_before = c.harbor.robots();
        let spec = harbor_spec(c.harbor, &["library", "regcred"], "harbor-admin");
        let e = mint(&spec, &admin_secret("team-a", "harbor-admin", c.user, c.password), None)
            .await
            .err()
            .unwrap_or_else(|| panic!("{}: Harbor should refuse", c.what));
        assert_eq!(e.reason, c.reason, "{}: {}", c.what, e.message);
        for w in c.words {
            assert!(e.message.contains(w), "{}: {w:?} not in {:?}", c.what, e.message);
        }
        for w in c.not {
            assert!(!e.message.contains(w), "{}: {w:?} in {:?}", c.what, e.message);
        }
        for s in &secrets {
            assert!(!e.message.contains(s), "{}: a secret in {:?}", c.what, e.message);
        }
        assert_eq!(c.harbor.robots(), robots_before, "{}: nothing created", c.what);
    }
}

#[tokio::test]
async fn ca_bundle_trusts_a_private_ca() {
    let harbor = HarborStandin::start(Options {
        admins: vec![(ADMIN.into(), ADMIN_PASSWORD.into())],
        tls: true,
        ..Default::default()
    })
    .unwrap();
    assert!(harbor.url().starts_with("https://"));
    let secret = admin_secret("team-a", "harbor-admin", ADMIN, ADMIN_PASSWORD);
    let mut spec = harbor_spec(&harbor, &["library"], "harbor-admin");

    let e = mint(&spec, &secret, None).await.expect_err("an unknown CA is refused");
    assert_eq!(e.reason, reasons::PROVIDER_ERROR);
    assert!(e.message.contains("TLS") && e.message.contains("caBundle"), "{}", e.message);

    spec["caBundle"] = json!("not a certificate");
    let e = mint(&spec, &secret, None).await.err().unwrap();
    assert_eq!(e.reason, reasons::INVALID_SPEC, "{}", e.message);
    assert!(e.message.contains("caBundle"), "{}", e.message);

    spec["caBundle"] = json!(harbor.ca_pem().unwrap());
    let m = mint(&spec, &secret, None).await.unwrap();
    let (user, pass) = login(&m);
    assert!(harbor.accepts(&user, &pass));
    assert_eq!(m.auths[0].registry, harbor.host());
}

/// `skopeo inspect` of the image with a docker config: `Ok` or the error.
async fn pull_with(config: Vec<u8>, image: String) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let file = std::env::temp_dir().join(format!("regcred-harbor-auth-{}.json", rand_suffix()));
        std::fs::write(&file, &config).map_err(|e| e.to_string())?;
        let out = regcred_testenv::registry::skopeo_inspect(&file, &image).map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&file);
        let out = out?;
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    })
    .await
    .unwrap()
}

fn rand_suffix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

fn docker_config(host: &str, user: &str, pass: &str) -> Vec<u8> {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    serde_json::to_vec(&json!({"auths": {host: {"username": user, "password": pass, "auth": auth}}})).unwrap()
}

#[tokio::test]
async fn rotation_under_load_keeps_pulls_working_and_retires_old_secrets() {
    require_tool("skopeo", "skopeo").unwrap_or_else(|e| panic!("{e:#}"));
    let client = setup().await;
    // Robot "days" of 4 seconds: a robot lives 4-8 s, rotations every ~3-5 s.
    let harbor = standin(Duration::from_secs(4), &["regcred"]);
    let (tokens, _registry) = registry_behind(&harbor);
    let host = harbor.host();
    let image = format!("{host}/{TEST_IMAGE}");
    create_namespace(&client, "harbor-rot", &[]).await;
    put_login(&client, "harbor-rot", "harbor-admin", ADMIN, ADMIN_PASSWORD).await;
    let mut provider = harbor_spec(&harbor, &["regcred"], "harbor-admin");
    provider["robot"] = json!({"durationDays": 1});
    apply_rcred(
        &client,
        "harbor-rot",
        "cred",
        json!({"provider": {"harbor": provider}, "secret": {"name": "harbor-pull"}}),
    )
    .await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "harbor-rot");
    wait_for_reason(&rcreds, "cred", "Synced").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "harbor-rot");

    // A loop pulls with whatever the Secret holds right now.
    let stop = Arc::new(AtomicBool::new(false));
    let puller = {
        let stop = stop.clone();
        let secrets = secrets.clone();
        let image = image.clone();
        tokio::spawn(async move {
            let (mut pulls, mut failures) = (0usize, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let s = secrets.get("harbor-pull").await.unwrap();
                let config = s.data.as_ref().unwrap()[".dockerconfigjson"].0.clone();
                match pull_with(config, image.clone()).await {
                    Ok(()) => pulls += 1,
                    Err(e) => failures.push(e),
                }
            }
            (pulls, failures)
        })
    };

    // Watch the Secret through at least 5 rotations.
    let mut published: Vec<(String, String)> = Vec::new();
    let start = Instant::now();
    while published.len() < 6 {
        assert!(start.elapsed() < Duration::from_secs(45), "only {} logins after 45s", published.len());
        if let Some(s) = get_secret(&client, "harbor-rot", "harbor-pull").await
            && let Some(l) = login_in(&s, &host)
            && published.last() != Some(&l)
        {
            published.push(l);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{} rotations in {:?}", published.len() - 1, start.elapsed());
    stop.store(true, Ordering::SeqCst);
    let (pulls, failures) = puller.await.unwrap();
    eprintln!("{pulls} pulls during the rotations");
    assert!(failures.is_empty(), "{} of {} pulls failed: {failures:#?}", failures.len(), pulls + failures.len());
    assert!(pulls >= 5, "only {pulls} pulls");

    // Two robots alternate.
    let users: BTreeSet<&str> = published.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(users.len(), 2, "{published:?}");
    for pair in published.windows(2) {
        assert_ne!(pair[0].0, pair[1].0, "consecutive rotations publish the other robot");
    }
    // Every secret followed by two more rotations is retired: the token
    // service refuses it and a real pull with it fails.
    let rejected_before = tokens.rejected();
    for (i, (user, pass)) in published.iter().enumerate().take(published.len() - 2) {
        assert!(!harbor.accepts(user, pass), "login {i} still valid");
        if i < 2 {
            let refused = pull_with(docker_config(&host, user, pass), image.clone()).await;
            assert!(refused.is_err(), "a pull with retired login {i} worked");
        }
    }
    assert!(tokens.rejected() >= rejected_before + 2);
    assert_eq!(harbor.robots().len(), 2, "no robot leaked: {}", describe(&harbor));

    // Status: expiry of the published robot, both robots in providerState.
    let status = rcreds.get("cred").await.unwrap().status.unwrap();
    let current = get_secret(&client, "harbor-rot", "harbor-pull").await.unwrap();
    let (user, _) = login_in(&current, &host).unwrap();
    let robot = harbor.robot_by_login(&user).unwrap();
    let state = status.provider_state.clone().unwrap();
    assert_eq!(state["robots"].as_array().unwrap().len(), 2, "{state}");
    let expires = status.expires_at.as_ref().expect("expiresAt").0.as_second();
    assert!(
        harbor.robots().iter().any(|r| r.expires_at == expires),
        "expiresAt {expires} is no robot's expires_at: {}",
        describe(&harbor)
    );
    assert!(robot.expires_at > 0);
    assert_eq!(status.registries, [host.as_str()]);
    let metrics = operator().metrics().unwrap();
    assert!(metrics.contains("regcred_refreshes_total{provider=\"harbor\",result=\"success\"}"));
    let gauge = "regcred_credential_expiry_timestamp_seconds{kind=\"RegistryCredential\",namespace=\"harbor-rot\",name=\"cred\"}";
    let gauge_value = metrics
        .lines()
        .find(|l| l.starts_with(gauge))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64);
    let robots_expiry: Vec<i64> = harbor.robots().iter().map(|r| r.expires_at).collect();

    // Deleting the credential deletes its robots.
    rcreds.delete("cred", &DeleteParams::default()).await.unwrap();
    wait_for("the robots to be deleted", WAIT, || async { harbor.robots().is_empty().then_some(()) }).await;
    wait_for_no_secret(&client, "harbor-rot", "harbor-pull").await;

    // The expiry gauge follows the published robot.
    let value = gauge_value.unwrap_or_else(|| panic!("no {gauge} in /metrics"));
    assert!(robots_expiry.contains(&value), "{gauge} = {value}, robots expire at {robots_expiry:?}");
}

/// Changes the Secret's resourceVersion, which makes regcred mint again.
async fn touch(client: &kube::Client, ns: &str, name: &str) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos().to_string();
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/touched": now}}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn lifecycle_projects_change_hand_deleted_robot_and_deletion() {
    let client = setup().await;
    let harbor = standin(Duration::from_secs(86_400), &["library", "team-a"]);
    let host = harbor.host();
    create_namespace(&client, "harbor-life", &[]).await;
    put_login(&client, CLUSTER_NS, "harbor-life-admin", ADMIN, ADMIN_PASSWORD).await;
    let spec = |projects: &[&str], policy: &str| {
        json!({
            "provider": {"harbor": harbor_spec(&harbor, projects, "harbor-life-admin")},
            "secret": {"name": "harbor-pull"},
            "namespaces": ["harbor-life"],
            "deletionPolicy": policy,
        })
    };
    apply_crcred(&client, "harbor-life", spec(&["library"], "Delete")).await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    let status = wait_for_reason(&crcreds, "harbor-life", "Synced").await;
    let s = get_secret(&client, "harbor-life", "harbor-pull").await.unwrap();
    let (user_a, pass_a) = login_in(&s, &host).expect("a login for Harbor's host");
    let a = harbor.robot_by_login(&user_a).unwrap();
    assert!(user_a.starts_with("robot$regcred-harbor-life-"), "{user_a}");
    assert_eq!(a.projects(), ["library"]);
    assert_eq!(status.expires_at.as_ref().map(|t| t.0.as_second()), Some(a.expires_at));
    assert_eq!(status.provider.as_deref(), Some("harbor"));
    assert_eq!(status.provider_state.as_ref().unwrap()["active"], "a");

    // The projects change: the next robot is published with them, and the
    // one published until now gets them too while its secret keeps working.
    apply_crcred(&client, "harbor-life", spec(&["library", "team-a"], "Delete")).await;
    let (user_b, pass_b) = wait_for("robot b to be published", WAIT, || async {
        let s = get_secret(&client, "harbor-life", "harbor-pull").await?;
        login_in(&s, &host).filter(|(u, _)| *u != user_a)
    })
    .await;
    wait_for_reason(&crcreds, "harbor-life", "Synced").await;
    for r in harbor.robots() {
        assert_eq!(r.projects(), ["library", "team-a"], "{}", describe(&harbor));
    }
    assert!(harbor.accepts(&user_a, &pass_a) && harbor.accepts(&user_b, &pass_b));

    // Robot a (not published) is deleted by hand in Harbor; the next
    // rotation recreates it.
    assert!(harbor.delete_robot(a.id));
    touch(&client, CLUSTER_NS, "harbor-life-admin").await;
    let (user, pass) = wait_for("robot a to be recreated and published", WAIT, || async {
        let s = get_secret(&client, "harbor-life", "harbor-pull").await?;
        login_in(&s, &host).filter(|(u, _)| *u == user_a)
    })
    .await;
    let recreated = harbor.robot_by_login(&user).expect("robot a exists again");
    assert_ne!(recreated.id, a.id);
    assert_eq!(recreated.projects(), ["library", "team-a"]);
    assert!(harbor.accepts(&user, &pass) && harbor.accepts(&user_b, &pass_b));
    assert!(!harbor.accepts(&user_a, &pass_a));

    // Deletion removes the robots (and the Secret).
    crcreds.delete("harbor-life", &DeleteParams::default()).await.unwrap();
    wait_for("the robots to be deleted", WAIT, || async { harbor.robots().is_empty().then_some(()) }).await;
    wait_for_no_secret(&client, "harbor-life", "harbor-pull").await;

    // With deletionPolicy Orphan the robots stay.
    apply_crcred(&client, "harbor-orphan", {
        let mut s = spec(&["library"], "Orphan");
        s["secret"] = json!({"name": "harbor-orphan-pull"});
        s
    })
    .await;
    wait_for_reason(&crcreds, "harbor-orphan", "Synced").await;
    crcreds.delete("harbor-orphan", &DeleteParams::default()).await.unwrap();
    wait_for("harbor-orphan to be gone", WAIT, || async {
        crcreds.get_opt("harbor-orphan").await.unwrap().is_none().then_some(())
    })
    .await;
    assert_eq!(harbor.robots().len(), 1, "the Orphan robot stays: {}", describe(&harbor));
}

#[tokio::test]
async fn outage_keeps_the_old_secret_is_reported_and_recovers() {
    require_tool("skopeo", "skopeo").unwrap_or_else(|e| panic!("{e:#}"));
    let client = setup().await;
    let harbor = standin(Duration::from_secs(86_400), &["regcred"]);
    let (_tokens, _registry) = registry_behind(&harbor);
    let host = harbor.host();
    let image = format!("{host}/{TEST_IMAGE}");
    create_namespace(&client, "harbor-out", &[]).await;
    put_login(&client, "harbor-out", "harbor-admin", ADMIN, ADMIN_PASSWORD).await;
    // With verification: every new robot logs in through Harbor's registry
    // before it is published.
    apply_rcred(
        &client,
        "harbor-out",
        "cred",
        json!({
            "provider": {"harbor": harbor_spec(&harbor, &["regcred"], "harbor-admin")},
            "secret": {"name": "harbor-pull"},
            "verify": {"enabled": true, "plainHTTP": true},
        }),
    )
    .await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "harbor-out");
    wait_for_reason(&rcreds, "cred", "Synced").await;
    let first = get_secret(&client, "harbor-out", "harbor-pull").await.unwrap();
    let first_login = login_in(&first, &host).unwrap();

    // Harbor's API goes down and a refresh is due (the source changed).
    harbor.set_down(true);
    touch(&client, "harbor-out", "harbor-admin").await;
    let status = wait_for_reason(&rcreds, "cred", reasons::PROVIDER_ERROR).await;
    let ready = &status.conditions[0];
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("cannot reach Harbor") && ready.message.contains(&harbor.url()),
        "{}",
        ready.message
    );
    assert!(ready.message.contains("last good Secret stays"), "{}", ready.message);
    let kept = get_secret(&client, "harbor-out", "harbor-pull").await.unwrap();
    assert_eq!(login_in(&kept, &host).as_ref(), Some(&first_login), "the old Secret stays");
    let config = kept.data.as_ref().unwrap()[".dockerconfigjson"].0.clone();
    pull_with(config, image.clone()).await.expect("the kept Secret still pulls");
    wait_for("a ProviderError Warning", WAIT, || async {
        let ev = events_for(&client, "harbor-out", "cred").await;
        ev.iter().any(|(t, r, _)| t == "Warning" && r == reasons::PROVIDER_ERROR).then_some(())
    })
    .await;

    // Harbor returns: regcred recovers by itself.
    harbor.set_down(false);
    let second = wait_for("a new robot after the outage", Duration::from_secs(45), || async {
        let s = get_secret(&client, "harbor-out", "harbor-pull").await?;
        login_in(&s, &host).filter(|l| *l != first_login)
    })
    .await;
    wait_for_reason(&rcreds, "cred", "Synced").await;
    assert!(harbor.accepts(&second.0, &second.1) && harbor.accepts(&first_login.0, &first_login.1));
    wait_for("a Synced Event", WAIT, || async {
        let ev = events_for(&client, "harbor-out", "cred").await;
        ev.iter().any(|(t, r, _)| t == "Normal" && r == "Synced").then_some(())
    })
    .await;

    // The account's password is wrong: a precise reason, no password in it.
    put_login(&client, "harbor-out", "harbor-admin", ADMIN, "Not-the-admin-passw0rd").await;
    let status = wait_for_reason(&rcreds, "cred", reasons::PROVIDER_AUTH_FAILED).await;
    let message = &status.conditions[0].message;
    assert!(message.contains("account admin") && message.contains("401"), "{message}");
    assert!(!message.contains("Not-the-admin-passw0rd") && !message.contains(ADMIN_PASSWORD), "{message}");
    put_login(&client, "harbor-out", "harbor-admin", ADMIN, ADMIN_PASSWORD).await;
    wait_for_reason(&rcreds, "cred", "Synced").await;
    let now = get_secret(&client, "harbor-out", "harbor-pull").await.unwrap();
    let config = now.data.as_ref().unwrap()[".dockerconfigjson"].0.clone();
    pull_with(config, image).await.expect("the current Secret pulls");
    rcreds.delete("cred", &DeleteParams::default()).await.unwrap();
    wait_for("the robots to be deleted", WAIT, || async { harbor.robots().is_empty().then_some(()) }).await;
}

#[tokio::test]
async fn operator_serves_the_accounts_harbor_accepts_and_explains_the_refused_ones() {
    require_tool("skopeo", "skopeo").unwrap_or_else(|e| panic!("{e:#}"));
    const ALICE_CLI: &str = "Alice-cli-s3cret-operator";
    let client = setup().await;
    // OIDC mode, the common case where users have no password for the API.
    let harbor = HarborStandin::start(Options {
        admins: vec![(ADMIN.into(), ADMIN_PASSWORD.into())],
        users: vec![User { name: "alice".into(), secret: ALICE_CLI.into(), sysadmin: true, projects: vec![] }],
        auth_mode: AuthMode::Oidc,
        projects: vec!["regcred".into()],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let (_tokens, _registry) = registry_behind(&harbor);
    let host = harbor.host();
    let image = format!("{host}/{TEST_IMAGE}");
    let (manager, manager_secret) = robot_manager(&harbor, "regcred-manager", &["regcred"]);
    let ns = "harbor-accounts";
    create_namespace(&client, ns, &[]).await;
    put_login(&client, ns, "admin-login", ADMIN, ADMIN_PASSWORD).await;
    put_login(&client, ns, "robot-login", &manager, &manager_secret).await;
    put_login(&client, ns, "oidc-login", "alice", ALICE_CLI).await;
    let spec = |login: &str, pull: &str| json!({"provider": {"harbor": harbor_spec(&harbor, &["regcred"], login)}, "secret": {"name": pull}});
    apply_rcred(&client, ns, "by-admin", spec("admin-login", "admin-pull")).await;
    apply_rcred(&client, ns, "by-robot", spec("robot-login", "robot-pull")).await;
    apply_rcred(&client, ns, "by-oidc-user", spec("oidc-login", "oidc-pull")).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    let config = |s: &Secret| s.data.as_ref().unwrap()[".dockerconfigjson"].0.clone();

    // Accepted: a robot made, the Secret written, a real pull with it.
    for (name, pull) in [("by-admin", "admin-pull"), ("by-robot", "robot-pull")] {
        wait_for_reason(&rcreds, name, "Synced").await;
        let s = get_secret(&client, ns, pull).await.unwrap_or_else(|| panic!("{name}: no Secret"));
        let (user, pass) = login_in(&s, &host).unwrap();
        assert!(harbor.accepts(&user, &pass), "{name}");
        pull_with(config(&s), image.clone()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    // The robot account rotates by replacing its robots: two more refreshes
    // bring slot a back with a new robot; its old login is refused.
    let first = login_in(&get_secret(&client, ns, "robot-pull").await.unwrap(), &host).unwrap();
    let first_id = harbor.robot_by_login(&first.0).unwrap().id;
    touch(&client, ns, "robot-login").await;
    let second = wait_for("robot b to be published", WAIT, || async {
        login_in(&get_secret(&client, ns, "robot-pull").await?, &host).filter(|l| l.0 != first.0)
    })
    .await;
    touch(&client, ns, "robot-login").await;
    let third = wait_for("robot a to be replaced and published", WAIT, || async {
        login_in(&get_secret(&client, ns, "robot-pull").await?, &host).filter(|l| l.0 == first.0 && *l != first)
    })
    .await;
    wait_for_reason(&rcreds, "by-robot", "Synced").await;
    assert_ne!(harbor.robot_by_login(&third.0).unwrap().id, first_id, "replaced, not refreshed");
    assert!(!harbor.accepts(&first.0, &first.1) && harbor.accepts(&second.0, &second.1));
    let now = get_secret(&client, ns, "robot-pull").await.unwrap();
    pull_with(config(&now), image.clone()).await.expect("the replaced robot pulls");

    // Refused: an OIDC user's CLI secret. The reason says so and no Secret
    // is written.
    let status = wait_for_reason(&rcreds, "by-oidc-user", reasons::PROVIDER_AUTH_FAILED).await;
    let message = &status.conditions[0].message;
    for w in ["OIDC mode", "CLI secret", "never for managing robot accounts", "this CLI secret is valid"] {
        assert!(message.contains(w), "{w:?} not in {message}");
    }
    assert!(get_secret(&client, ns, "oidc-pull").await.is_none(), "nothing written for a refused account");

    // A working credential whose account becomes one Harbor refuses keeps
    // its last good Secret, which still pulls.
    let kept = get_secret(&client, ns, "admin-pull").await.unwrap();
    put_login(&client, ns, "admin-login", "alice", ALICE_CLI).await;
    let status = wait_for_reason(&rcreds, "by-admin", reasons::PROVIDER_AUTH_FAILED).await;
    assert!(status.conditions[0].message.contains("OIDC mode"), "{}", status.conditions[0].message);
    let still = get_secret(&client, ns, "admin-pull").await.unwrap();
    assert_eq!(login_in(&still, &host), login_in(&kept, &host), "the last good Secret stays");
    pull_with(config(&still), image.clone()).await.expect("the kept Secret still pulls");
    for s in [ALICE_CLI, ADMIN_PASSWORD, manager_secret.as_str()] {
        for c in rcreds.list(&Default::default()).await.unwrap() {
            let m = c.status.map(|s| s.conditions[0].message.clone()).unwrap_or_default();
            assert!(!m.contains(s), "a secret in {m}");
        }
    }

    // Deleting the credentials deletes their robots; the account robot stays.
    put_login(&client, ns, "admin-login", ADMIN, ADMIN_PASSWORD).await;
    wait_for_reason(&rcreds, "by-admin", "Synced").await;
    for name in ["by-admin", "by-robot", "by-oidc-user"] {
        rcreds.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_for("the credentials' robots to be deleted", WAIT, || async {
        (harbor.robots().iter().map(|r| r.login.as_str()).collect::<Vec<_>>() == [manager.as_str()]).then_some(())
    })
    .await;
}
