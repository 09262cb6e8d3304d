//! A credential the registry knows but that may not pull the repository
//! named in `verify.repositories` is not published, one test per provider:
//! `Ready=False`, reason `VerificationFailed`, a message naming the
//! repository and the registry's own reason, and no Secret (or the last
//! good one kept); granted the repository, the same credential is
//! published.
//!
//! Every registry is the real Distribution registry behind the test token
//! service, whose [`Grants`] decide what each login may pull, as a real
//! token service does (see `regcred_testenv::tokenauth`):
//! - basic, Harbor: Distribution's own refusal (401 `insufficient_scope`);
//!   Harbor's grants are the robot's project permissions in the stand-in;
//! - Google: behind a [`RegistryFront`] answering as Artifact Registry
//!   (403 `DENIED: Permission "artifactregistry.repositories.downloadArtifacts" denied ...`);
//! - ECR: behind a [`RegistryFront`] answering as ECR (Basic auth, 403
//!   `DENIED: User: ... is not authorized to perform: ecr:BatchGetImage ...`).
//!   The minted registry host is moto's `123456789012.dkr.ecr.us-east-1.amazonaws.com`;
//!   the operator of this binary reaches it through `HTTP_PROXY` (the
//!   front) with `verify.plainHTTP`, everything on loopback bypassing it
//!   (`NO_PROXY`).
//!
//! - ACR: the ACR stand-in serves the registry over HTTPS and passes `/v2/`
//!   to the real registry, whose token realm is the token service over
//!   HTTPS ([`TokenService::start_https`]; verification sends a password
//!   only to an HTTPS realm, as ACR's own `https://NAME.azurecr.io/oauth2/token`
//!   is); the refusal is Distribution's.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use regcred::api::RegistryCredential;
use regcred::reasons;
use regcred_testenv::acr_standin::{ACR_USERNAME, AzureStandIn};
use regcred_testenv::aws::Moto;
use regcred_testenv::google_standin::GoogleStandIn;
use regcred_testenv::harbor_standin::{HarborStandin, Options};
use regcred_testenv::operator::record_secret;
use regcred_testenv::tokenauth::{
    FrontKind, Grant, Grants, RegistryFront, TokenRegistry, TokenService, Validator, start_token_registry,
};
use serde_json::{Value, json};

/// The repository of the test image every registry here holds.
const REPO: &str = "regcred/test";
const PUSHER: &str = "pusher";
const PUSH_PASS: &str = "grants-push-password";
const ECR_PRINCIPAL: &str = "arn:aws:iam::123456789012:user/regcred-grants";

/// What the tested login may pull, changed by the test.
type Shared = Arc<Mutex<Vec<Grant>>>;

/// A token service accepting the pusher and what `valid` accepts; the
/// pusher may do anything, the others what `granted` holds now.
fn tokens(valid: Validator, granted: Shared) -> TokenService {
    record_secret(PUSH_PASS);
    let validator: Validator = Arc::new(move |u: &str, p: &str| (u == PUSHER && p == PUSH_PASS) || valid(u, p));
    let grants: Grants =
        Arc::new(
            move |u: &str, _: &str| {
                if u == PUSHER { vec![Grant::everything()] } else { granted.lock().unwrap().clone() }
            },
        );
    TokenService::start_with_grants(validator, grants).unwrap_or_else(|e| panic!("{e:#}"))
}

fn registry(tokens: &TokenService) -> TokenRegistry {
    start_token_registry(control_plane().process_group(), tokens, PUSHER, PUSH_PASS).unwrap_or_else(|e| panic!("{e:#}"))
}

/// moto, and the ECR front with its token service and registry, started
/// once, before the operator (whose `HTTP_PROXY` is the front).
struct Ecr {
    moto: Moto,
    granted: Shared,
    front: RegistryFront,
    _tokens: TokenService,
    _registry: TokenRegistry,
}

fn ecr() -> &'static Ecr {
    static ECR: OnceLock<Ecr> = OnceLock::new();
    ECR.get_or_init(|| {
        let moto = Moto::start(control_plane().process_group()).unwrap_or_else(|e| panic!("{e:#}"));
        let granted: Shared = Arc::default();
        let tokens = tokens(moto.validator(), granted.clone());
        let registry = registry(&tokens);
        let front = RegistryFront::start(FrontKind::Ecr { principal: ECR_PRINCIPAL.into() }, &tokens, &registry)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Ecr { moto, granted, front, _tokens: tokens, _registry: registry }
    })
}

async fn grants_setup() -> Client {
    let proxy = ecr().front.proxy_url();
    set_operator_env(vec![
        ("HTTP_PROXY".into(), proxy.clone()),
        ("http_proxy".into(), proxy),
        ("NO_PROXY".into(), "127.0.0.1,localhost".into()),
        ("no_proxy".into(), "127.0.0.1,localhost".into()),
    ]);
    setup().await
}

fn verify_repo() -> Value {
    json!({"enabled": true, "plainHTTP": true, "repositories": [REPO]})
}

/// Waits for `VerificationFailed` and checks its message: the repository,
/// the registry's reason, none of `secrets`.
async fn assert_refused(api: &Api<RegistryCredential>, name: &str, reason_part: &str, secrets: &[&str]) {
    let status = wait_for_reason(api, name, reasons::VERIFICATION_FAILED).await;
    let ready = &status.conditions[0];
    assert_eq!(ready.status, "False");
    let message = &ready.message;
    assert!(message.contains(&format!("may not pull repository \"{REPO}\"")), "{message}");
    assert!(message.contains(reason_part), "{message}");
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(!message.contains(s), "a secret in {message:?}");
    }
}

/// The single login of a pull Secret.
fn only_login(secret: &Secret) -> (String, String, String) {
    let data = &secret.data.as_ref().unwrap()[".dockerconfigjson"].0;
    let v: Value = serde_json::from_slice(data).unwrap();
    let auths = v["auths"].as_object().unwrap();
    assert_eq!(auths.len(), 1, "{auths:?}");
    let (host, e) = auths.iter().next().unwrap();
    (host.clone(), e["username"].as_str().unwrap().into(), e["password"].as_str().unwrap().into())
}

/// The pull Secret stays away for a few seconds more (retries included).
async fn assert_no_secret_for_a_while(client: &Client, ns: &str, name: &str) {
    for _ in 0..20 {
        assert!(get_secret(client, ns, name).await.is_none(), "{ns}/{name} was published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn basic_login_without_the_repository_is_not_published_and_the_last_good_secret_stays() {
    let client = grants_setup().await;
    // puller's grants change; puller2 may pull other/* only.
    let granted: Shared = Arc::new(Mutex::new(vec![Grant::pull("other/*")]));
    let logins = [("puller", "puller-pass-1"), ("puller2", "puller2-pass-2"), (PUSHER, PUSH_PASS)];
    let tokens = {
        let granted = granted.clone();
        TokenService::start_with_grants(
            Arc::new(move |u: &str, p: &str| logins.iter().any(|(lu, lp)| *lu == u && *lp == p)),
            Arc::new(move |u: &str, _: &str| match u {
                PUSHER => vec![Grant::everything()],
                "puller" => granted.lock().unwrap().clone(),
                _ => vec![Grant::pull("other/*")],
            }),
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let registry = registry(&tokens);
    let ns = "grants-basic";
    create_namespace(&client, ns, &[]).await;
    put_login(&client, ns, "login", "puller", "puller-pass-1").await;
    let mut spec = basic_spec(&registry.host, "login", "basic-pull");
    spec["verify"] = verify_repo();
    apply_rcred(&client, ns, "cred", spec).await;
    let api: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);

    // The login works (GET /v2/), the repository is not granted.
    assert_refused(&api, "cred", "UNAUTHORIZED: authentication required (insufficient_scope)", &["puller-pass-1"])
        .await;
    assert_no_secret_for_a_while(&client, ns, "basic-pull").await;
    assert!(tokens.narrowed() > 0, "the token service never narrowed a token");

    // Granted: the same credential is published at the next retry.
    *granted.lock().unwrap() = vec![Grant::pull("regcred/*")];
    wait_for_reason(&api, "cred", "Synced").await;
    let secret = get_secret(&client, ns, "basic-pull").await.expect("published");
    assert_eq!(only_login(&secret), (registry.host.clone(), "puller".into(), "puller-pass-1".into()));

    // The source now holds a login that may not pull the repository:
    // refused, and the last good Secret stays as it was.
    put_login(&client, ns, "login", "puller2", "puller2-pass-2").await;
    assert_refused(&api, "cred", "insufficient_scope", &["puller2-pass-2", "puller-pass-1"]).await;
    let kept = get_secret(&client, ns, "basic-pull").await.expect("the last good Secret");
    assert_eq!(only_login(&kept), (registry.host.clone(), "puller".into(), "puller-pass-1".into()));
    assert_eq!(kept.metadata.resource_version, secret.metadata.resource_version, "the Secret was rewritten");
}

#[tokio::test]
async fn harbor_robot_without_the_project_is_not_published_and_with_it_is() {
    let client = grants_setup().await;
    let harbor = Arc::new(
        HarborStandin::start(Options {
            admins: vec![(PUSHER.into(), PUSH_PASS.into())],
            projects: vec!["library".into(), "regcred".into()],
            day: Duration::from_secs(86_400),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e:#}")),
    );
    // Harbor grants a robot what its project permissions hold
    // (goharbor/harbor src/core/service/token/creator.go, repositoryFilter):
    // `repository` actions in PROJECT, for PROJECT/*.
    let grants: Grants = {
        let harbor = harbor.clone();
        Arc::new(move |user: &str, _: &str| {
            let Some(robot) = harbor.robot_by_login(user) else { return vec![Grant::everything()] };
            robot
                .projects()
                .into_iter()
                .map(|p| {
                    let actions: Vec<String> =
                        robot.access_in(&p).into_iter().filter(|(r, _)| r == "repository").map(|(_, a)| a).collect();
                    let pattern = if p == "*" { "*".to_string() } else { format!("{p}/*") };
                    Grant { pattern, actions }
                })
                .collect()
        })
    };
    let tokens = TokenService::start_with_grants(harbor.validator(), grants).unwrap_or_else(|e| panic!("{e:#}"));
    let registry = registry(&tokens);
    harbor.proxy_registry(&registry.host);

    let ns = "grants-harbor";
    create_namespace(&client, ns, &[]).await;
    put_login(&client, ns, "harbor-admin", PUSHER, PUSH_PASS).await;
    let spec = |projects: &[&str]| {
        json!({
            "provider": {"harbor": {"url": harbor.url(), "projects": projects, "auth": {"secretRef": {"name": "harbor-admin"}}}},
            "secret": {"name": "harbor-pull"},
            "verify": verify_repo(),
        })
    };
    apply_rcred(&client, ns, "cred", spec(&["library"])).await;
    let api: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    assert_refused(&api, "cred", "UNAUTHORIZED: authentication required (insufficient_scope)", &[PUSH_PASS]).await;
    assert_no_secret_for_a_while(&client, ns, "harbor-pull").await;
    for robot in harbor.robots() {
        assert!(!robot.projects().contains(&"regcred".to_string()), "{robot:?}");
    }

    // The robot gets the project: published.
    apply_rcred(&client, ns, "cred", spec(&["library", "regcred"])).await;
    wait_for_reason(&api, "cred", "Synced").await;
    let secret = get_secret(&client, ns, "harbor-pull").await.expect("published");
    let (host, user, _) = only_login(&secret);
    assert_eq!(host, harbor.host());
    let robot = harbor.robot_by_login(&user).expect("the published robot");
    assert!(robot.projects().contains(&"regcred".to_string()), "{robot:?}");
}

#[tokio::test]
async fn google_identity_without_the_reader_role_gets_artifact_registrys_403() {
    let client = grants_setup().await;
    let google = Arc::new(GoogleStandIn::start().unwrap_or_else(|e| panic!("{e:#}")));
    let granted: Shared = Arc::default();
    let tokens = {
        let google = google.clone();
        tokens(
            Arc::new(move |u: &str, p: &str| u == "oauth2accesstoken" && google.principal_of(p).is_some()),
            granted.clone(),
        )
    };
    let registry = registry(&tokens);
    let front = RegistryFront::start(FrontKind::ArtifactRegistry { location: "europe".into() }, &tokens, &registry)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let email = "grants-reader@regcred-test.iam.gserviceaccount.com";
    let key = google.create_key(email, Duration::from_secs(3600)).unwrap_or_else(|e| panic!("{e:#}"));

    let ns = "grants-google";
    create_namespace(&client, ns, &[]).await;
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "gsa-key", "namespace": ns},
        "stringData": {"credentials.json": key.json}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch("gsa-key", &PatchParams::apply("regcred-test").force(), &Patch::Apply(&s))
        .await
        .unwrap();
    apply_rcred(
        &client,
        ns,
        "gar",
        json!({
            "provider": {"google": {"registries": [front.host()], "auth": {"secretRef": {"name": "gsa-key"}}}},
            "secret": {"name": "gar-pull"},
            "verify": verify_repo(),
        }),
    )
    .await;
    let api: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    assert_refused(
        &api,
        "gar",
        "403 Forbidden: user \"oauth2accesstoken\" may not pull repository \"regcred/test\"; the registry says: \
         DENIED: Permission \"artifactregistry.repositories.downloadArtifacts\" denied on resource \
         \"projects/regcred/locations/europe/repositories/test\" (or it may not exist)",
        &[],
    )
    .await;
    assert_no_secret_for_a_while(&client, ns, "gar-pull").await;
    assert!(front.refused() > 0);

    // The reader role on the repository: published.
    *granted.lock().unwrap() = vec![Grant::pull("regcred/test")];
    wait_for_reason(&api, "gar", "Synced").await;
    let secret = get_secret(&client, ns, "gar-pull").await.expect("published");
    let (host, user, token) = only_login(&secret);
    assert_eq!((host.as_str(), user.as_str()), (front.host().as_str(), "oauth2accesstoken"));
    assert_eq!(google.principal_of(&token).as_deref(), Some(email));
}

#[tokio::test]
async fn ecr_principal_without_the_repository_gets_ecrs_403_denied() {
    let client = grants_setup().await;
    let ecr = ecr();
    let ns = "grants-ecr";
    create_namespace(&client, ns, &[]).await;
    record_secret("grants-ecr-secret-access-key");
    let keys: Secret = serde_json::from_value(json!({
        "metadata": {"name": "aws", "namespace": ns},
        "stringData": {"access-key-id": "AKIAGRANTSTEST000001", "secret-access-key": "grants-ecr-secret-access-key"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch("aws", &PatchParams::apply("regcred-test").force(), &Patch::Apply(&keys))
        .await
        .unwrap();
    apply_rcred(
        &client,
        ns,
        "cred",
        json!({
            "provider": {"ecr": {"region": "us-east-1", "endpoint": ecr.moto.endpoint(), "auth": {"secretRef": {"name": "aws"}}}},
            "secret": {"name": "ecr-pull"},
            "verify": verify_repo(),
        }),
    )
    .await;
    let api: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    let host = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
    assert_refused(
        &api,
        "cred",
        &format!(
            "http://{host}/v2/regcred/test/manifests/latest answered 403 Forbidden: user \"AWS\" may not pull \
             repository \"regcred/test\"; the registry says: DENIED: User: {ECR_PRINCIPAL} is not authorized to \
             perform: ecr:BatchGetImage on resource: arn:aws:ecr:us-east-1:123456789012:repository/regcred/test \
             because no resource-based policy allows the ecr:BatchGetImage action"
        ),
        &[],
    )
    .await;
    assert_no_secret_for_a_while(&client, ns, "ecr-pull").await;
    assert!(ecr.front.refused() > 0, "verification did not reach the ECR front");

    // A policy allowing ecr:BatchGetImage on the repository: published.
    *ecr.granted.lock().unwrap() = vec![Grant::pull("regcred/*")];
    wait_for_reason(&api, "cred", "Synced").await;
    let secret = get_secret(&client, ns, "ecr-pull").await.expect("published");
    let (published_host, user, _) = only_login(&secret);
    assert_eq!((published_host.as_str(), user.as_str()), (host, "AWS"));
}

#[tokio::test]
async fn acr_refresh_token_without_the_repository_is_not_published_and_with_it_is() {
    let client = grants_setup().await;
    let azure = Arc::new(AzureStandIn::start().unwrap_or_else(|e| panic!("{e:#}")));
    let granted: Shared = Arc::default();
    let tokens = {
        let valid = azure.validator();
        let granted = granted.clone();
        record_secret(PUSH_PASS);
        TokenService::start_https(
            Arc::new(move |u: &str, p: &str| (u == PUSHER && p == PUSH_PASS) || valid(u, p)),
            Arc::new(
                move |u: &str, _: &str| {
                    if u == PUSHER { vec![Grant::everything()] } else { granted.lock().unwrap().clone() }
                },
            ),
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let registry = registry(&tokens);
    azure.set_upstream_registry(&registry.host);
    let tenant = "tenant-grants";
    azure.add_service_principal(tenant, "grants-app", "grants-client-secret");
    azure.grant_acr_pull(tenant, "grants-app");

    let ns = "grants-acr";
    create_namespace(&client, ns, &[]).await;
    let sp: Secret = serde_json::from_value(json!({
        "metadata": {"name": "sp", "namespace": ns},
        "stringData": {"client-id": "grants-app", "client-secret": "grants-client-secret"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch("sp", &PatchParams::apply("regcred-test").force(), &Patch::Apply(&sp))
        .await
        .unwrap();
    let ca_bundle = format!("{}\n{}", azure.ca_pem(), tokens.tls_ca_pem().unwrap());
    apply_rcred(
        &client,
        ns,
        "cred",
        json!({
            "provider": {"acr": {
                "registry": azure.host(),
                "tenantId": tenant,
                "auth": {"servicePrincipal": {"secretRef": {"name": "sp"}}},
                "authorityHost": azure.authority_host(),
                "caBundle": azure.ca_pem(),
            }},
            "secret": {"name": "acr-pull"},
            "verify": {"enabled": true, "caBundle": ca_bundle, "repositories": [REPO]},
        }),
    )
    .await;
    let api: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    assert_refused(
        &api,
        "cred",
        "401 Unauthorized: user \"00000000-0000-0000-0000-000000000000\" may not pull repository \"regcred/test\"; \
         the registry says: UNAUTHORIZED: authentication required (insufficient_scope)",
        &["grants-client-secret"],
    )
    .await;
    assert_no_secret_for_a_while(&client, ns, "acr-pull").await;

    // A role on the repository: published.
    *granted.lock().unwrap() = vec![Grant::pull(REPO)];
    wait_for_reason(&api, "cred", "Synced").await;
    let secret = get_secret(&client, ns, "acr-pull").await.expect("published");
    let (host, user, password) = only_login(&secret);
    assert_eq!((host.as_str(), user.as_str()), (azure.host().as_str(), ACR_USERNAME));
    assert!(azure.refresh_token_valid(ACR_USERNAME, &password));
}

#[tokio::test]
async fn repositories_without_verification_or_malformed_are_refused_at_apply() {
    let client = grants_setup().await;
    let ns = "grants-schema";
    create_namespace(&client, ns, &[]).await;
    let api: Api<RegistryCredential> = Api::namespaced(client.clone(), ns);
    let refused = |verify: Value| {
        let api = api.clone();
        async move {
            let mut spec = basic_spec("registry.example", "login", "pull");
            spec["verify"] = verify;
            let obj = json!({"apiVersion": "regcred.dev/v1beta1", "kind": "RegistryCredential",
                "metadata": {"name": "cred", "namespace": ns}, "spec": spec});
            match api.patch("cred", &PatchParams::apply("regcred-test").force(), &Patch::Apply(&obj)).await {
                Err(kube::Error::Api(e)) => e.message,
                other => panic!("accepted: {other:?}"),
            }
        }
    };
    let message = refused(json!({"repositories": [REPO]})).await;
    assert!(message.contains("verify.repositories needs verify.enabled: true"), "{message}");
    let message = refused(json!({"enabled": false, "repositories": [REPO]})).await;
    assert!(message.contains("verify.repositories needs verify.enabled: true"), "{message}");
    for bad in ["Team/App", "team/app:v1", "team//app", ""] {
        let message = refused(json!({"enabled": true, "repositories": [bad]})).await;
        assert!(message.contains("repositories"), "{bad:?}: {message}");
    }
    let many: Vec<String> = (0..17).map(|i| format!("team/app{i}")).collect();
    let message = refused(json!({"enabled": true, "repositories": many})).await;
    assert!(message.contains("repositories"), "{message}");
    // The valid forms pass.
    let mut spec = basic_spec("registry.example", "login", "pull");
    spec["verify"] = json!({"enabled": true, "repositories": ["team/app", "ghcr.io/org/tool", "127.0.0.1:5000/a_b/c"]});
    apply_rcred(&client, ns, "ok", spec).await;
}
