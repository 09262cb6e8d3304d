//! The two Secret-free delivery paths on the same providers:
//! - the kubelet image credential provider (`regcred
//!   kubelet-credential-provider`), driven exactly as the kubelet drives it
//!   (JSON on stdin, exec, parse stdout), against every provider's
//!   stand-in, with static identities and with a Pod's ServiceAccount token
//!   (KEP-4412); then on the real node, with the kubelet restarted to use
//!   it, Pods without imagePullSecrets pull;
//! - the credential helper (`docker-credential-regcred`), selected through
//!   `credHelpers` in an auth file, with skopeo pulling from the real
//!   token-auth registry.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use regcred_testenv::acr_standin::{ACR_USERNAME, AzureStandIn};
use regcred_testenv::aws::Moto;
use regcred_testenv::google_standin::GoogleStandIn;
use regcred_testenv::harbor_standin::{self, HarborStandin};
use regcred_testenv::node::workload::{apply_deployment, wait_pull_refused, wait_running};
use regcred_testenv::node::{CredentialProvider, Endpoint, KubeletOptions, Node, pod_events};
use regcred_testenv::operator::record_secret;
use regcred_testenv::registry::TEST_IMAGE;
use regcred_testenv::tokenauth::{TokenRegistry, TokenService, Validator, start_token_registry};
use serde_json::{Value, json};

const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const POOL: &str =
    "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/regcred-test/providers/delivery";
const HOUR: Duration = Duration::from_secs(3600);
const PUSHER: &str = "delivery-pusher";
const PUSH_PASS: &str = "delivery-push-password";

/// A scratch directory for one test (it holds test keys), removed when
/// the test ends.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("regcred-delivery-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// `dir/secrets/NAME/KEY` files, as a mounted Secret volume.
fn put_secret_files(dir: &Path, name: &str, data: &[(&str, &str)]) {
    let d = dir.join("secrets").join(name);
    std::fs::create_dir_all(&d).unwrap();
    for (k, v) in data {
        std::fs::write(d.join(k), v).unwrap();
    }
}

/// Writes a ProviderConfig with `providers` and returns its path.
fn write_config(dir: &Path, providers: Value, cache: bool) -> PathBuf {
    let mut config = json!({
        "apiVersion": "regcred.dev/v1alpha1", "kind": "ProviderConfig",
        "secretsDir": dir.join("secrets"), "providers": providers,
    });
    if cache {
        config["cacheDir"] = json!(dir.join("cache"));
    }
    let path = dir.join("provider.yaml");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// What one run of the plugin gave.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs the plugin as the kubelet does.
fn run_plugin(config: &Path, image: &str, pod: Option<(&str, Value)>, env: &[(&str, &str)]) -> Run {
    let mut request = json!({"apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderRequest",
        "image": image});
    if let Some((token, annotations)) = pod {
        request["serviceAccountToken"] = token.into();
        request["serviceAccountAnnotations"] = annotations;
    }
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_regcred"))
        .args(["kubelet-credential-provider", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        took: started.elapsed(),
    }
}

/// The response's one login: `(registry, username, password)`, after
/// checking the fields the kubelet reads.
fn login_of(run: &Run) -> (String, String, String, u64) {
    assert!(run.ok, "the plugin failed: {}", run.stderr);
    let v: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    assert_eq!(v["apiVersion"], "credentialprovider.kubelet.k8s.io/v1");
    assert_eq!(v["kind"], "CredentialProviderResponse");
    assert_eq!(v["cacheKeyType"], "Registry");
    let secs: u64 = v["cacheDuration"].as_str().unwrap().strip_suffix('s').unwrap().parse().unwrap();
    let auth = v["auth"].as_object().unwrap();
    assert_eq!(auth.len(), 1, "{auth:?}");
    let (registry, login) = auth.iter().next().unwrap();
    (registry.clone(), login["username"].as_str().unwrap().into(), login["password"].as_str().unwrap().into(), secs)
}

/// A failure: exit non-zero, exactly one line on stderr, nothing on
/// stdout, and none of `secrets` anywhere.
fn one_line_failure(run: &Run, secrets: &[&str]) -> String {
    assert!(!run.ok, "expected a failure, got {}", run.stdout);
    assert!(run.stdout.is_empty(), "stdout: {}", run.stdout);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {}", run.stderr);
    for s in secrets {
        assert!(!run.stderr.contains(s), "a secret in stderr: {}", run.stderr);
    }
    lines[0].to_string()
}

/// The AWS stand-in, trusting the control plane's ServiceAccount issuer as
/// an IAM OIDC provider (audience `sts.amazonaws.com`), as on EKS.
fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let moto = Moto::start(control_plane().process_group()).unwrap_or_else(|e| panic!("{e:#}"));
        let issuer = moto.add_oidc_provider(control_plane()).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(issuer, SA_ISSUER);
        // The roles the Pods' ServiceAccounts may assume (IRSA trust policies).
        for (role, subject) in [
            ("arn:aws:iam::777777777777:role/pod-puller", "system:serviceaccount:plugin-pods:ecr-puller"),
            ("arn:aws:iam::888888888888:role/puller", "system:serviceaccount:plugin-node:annotated"),
        ] {
            moto.trust_web_identity(role, &issuer, "sts.amazonaws.com", &[subject]);
        }
        moto
    })
}

fn google() -> &'static GoogleStandIn {
    static G: OnceLock<GoogleStandIn> = OnceLock::new();
    G.get_or_init(|| {
        let g = GoogleStandIn::start().unwrap_or_else(|e| panic!("{e:#}"));
        g.add_pool_provider_for_cluster(POOL, HOUR, control_plane()).unwrap_or_else(|e| panic!("{e:#}"));
        g
    })
}

fn azure() -> &'static AzureStandIn {
    static A: OnceLock<AzureStandIn> = OnceLock::new();
    A.get_or_init(|| AzureStandIn::start().unwrap_or_else(|e| panic!("{e:#}")))
}

/// A ServiceAccount token for `ns/name` with `audience`, as the kubelet
/// gets one for a Pod; the ServiceAccount is created with `annotations`.
async fn pod_token(ns: &str, name: &str, audience: &str, annotations: Value) -> String {
    let client = control_plane().client().await.unwrap();
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
        .await;
    let sas: Api<ServiceAccount> = Api::namespaced(client, ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}})).unwrap();
    let _ = sas.create(&PostParams::default(), &sa).await;
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = sas.create_token_request(name, &PostParams::default(), &req).await.unwrap().status.unwrap().token;
    record_secret(&token);
    token
}

fn aws_env() -> Vec<(&'static str, String)> {
    vec![("AWS_ENDPOINT_URL_STS", moto().endpoint()), ("AWS_EC2_METADATA_DISABLED", "true".into())]
}

fn ecr_host(account: &str) -> String {
    format!("{account}.dkr.ecr.us-east-1.amazonaws.com")
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_answers_for_every_provider_with_static_identities() {
    let dir = scratch("static");
    // basic
    record_secret("plugin-basic-pass");
    put_secret_files(&dir, "basic", &[("username", "plugin-user"), ("password", "plugin-basic-pass\n")]);
    // ECR static keys
    record_secret("plugin-ecr-secret-key");
    put_secret_files(
        &dir,
        "aws",
        &[("access-key-id", "AKIAPLUGINSTATIC0001"), ("secret-access-key", "plugin-ecr-secret-key")],
    );
    // Google key
    let g = google();
    let key = g.create_key("plugin@regcred-test.iam.gserviceaccount.com", HOUR).unwrap();
    put_secret_files(&dir, "gsa", &[("credentials.json", &key.json)]);
    // ACR service principal
    let az = azure();
    az.add_service_principal("plugin-tenant", "plugin-app", "plugin-sp-secret");
    az.grant_acr_pull("plugin-tenant", "plugin-app");
    record_secret("plugin-sp-secret");
    put_secret_files(&dir, "sp", &[("client-id", "plugin-app"), ("client-secret", "plugin-sp-secret")]);
    // Harbor admin
    let harbor = HarborStandin::start(harbor_standin::Options {
        admins: vec![("admin".into(), "plugin-harbor-admin".into())],
        projects: vec!["regcred".into()],
        ..Default::default()
    })
    .unwrap();
    record_secret("plugin-harbor-admin");
    put_secret_files(&dir, "harbor", &[("username", "admin"), ("password", "plugin-harbor-admin")]);

    let config = write_config(
        &dir,
        json!([
            {"match": ["registry.basic.test"], "provider": {"basic": {"registry": "registry.basic.test", "secretRef": {"name": "basic"}}}},
            {"match": ["*.dkr.ecr.*.amazonaws.com"], "provider": {"ecr": {"region": "us-east-1", "endpoint": moto().endpoint(), "auth": {"secretRef": {"name": "aws"}}}}},
            {"match": ["europe-docker.pkg.dev"], "provider": {"google": {"registries": ["europe-docker.pkg.dev"], "auth": {"secretRef": {"name": "gsa"}}}}},
            {"match": [az.host()], "provider": {"acr": {"registry": az.host(), "tenantId": "plugin-tenant",
                "auth": {"servicePrincipal": {"secretRef": {"name": "sp"}}}, "authorityHost": az.authority_host(), "caBundle": az.ca_pem()}}},
            {"match": [harbor.host()], "provider": {"harbor": {"url": harbor.url(), "projects": ["regcred"], "auth": {"secretRef": {"name": "harbor"}}}}},
        ]),
        false,
    );

    let (r, u, p, secs) = login_of(&run_plugin(&config, "registry.basic.test/team/app:v1", None, &[]));
    assert_eq!((r.as_str(), u.as_str(), p.as_str()), ("registry.basic.test", "plugin-user", "plugin-basic-pass"));
    assert!((3000..=3600).contains(&secs), "a static login is cached for the refresh interval (1h, jitter): {secs}");

    let (r, u, p, secs) = login_of(&run_plugin(&config, &format!("{}/app:v1", ecr_host("123456789012")), None, &[]));
    assert_eq!(r, ecr_host("123456789012"));
    assert!(moto().validator()(&u, &p), "the ECR stand-in's token");
    // A 12 h token, cached to 2/3 of its lifetime (8 h, less jitter).
    assert!((6 * 3600..=8 * 3600).contains(&secs), "refresh point of a 12 h ECR token: {secs}");

    let (r, u, p, secs) = login_of(&run_plugin(&config, "europe-docker.pkg.dev/p/r/i:1", None, &[]));
    assert_eq!((r.as_str(), u.as_str()), ("europe-docker.pkg.dev", "oauth2accesstoken"));
    assert_eq!(g.principal_of(&p).as_deref(), Some("plugin@regcred-test.iam.gserviceaccount.com"));
    assert!((2100..=2400).contains(&secs), "1h token, refresh at 2/3: {secs}");

    let (r, u, p, _) = login_of(&run_plugin(&config, &format!("{}/{TEST_IMAGE}", az.host()), None, &[]));
    assert_eq!((r, u.as_str()), (az.host(), ACR_USERNAME));
    assert!(az.refresh_token_valid(&u, &p));

    let (r, u, p, _) = login_of(&run_plugin(&config, &format!("{}/regcred/app:v1", harbor.host()), None, &[]));
    assert_eq!(r, harbor.host());
    assert!(harbor.accepts(&u, &p), "a live Harbor robot");

    // No provider for the image.
    let line = one_line_failure(&run_plugin(&config, "quay.io/org/app:v1", None, &[]), &[]);
    assert!(line.contains("no provider") && line.contains("quay.io/org/app:v1"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_answers_for_the_images_own_registry_across_regions_accounts_and_hosts() {
    let dir = scratch("keys");
    record_secret("plugin-keys-ecr-secret");
    put_secret_files(
        &dir,
        "aws",
        &[("access-key-id", "AKIAPLUGINKEYS000001"), ("secret-access-key", "plugin-keys-ecr-secret")],
    );
    let g = google();
    let email = "plugin-keys@regcred-test.iam.gserviceaccount.com";
    let key = g.create_key(email, HOUR).unwrap();
    put_secret_files(&dir, "gsa", &[("credentials.json", &key.json)]);
    let ecr = |extra: Value| {
        let mut spec = json!({"endpoint": moto().endpoint(), "auth": {"secretRef": {"name": "aws"}}});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"ecr": spec})
    };
    let config = write_config(
        &dir,
        json!([
            // Limited to two accounts and two regions.
            {"match": ["*.dkr.ecr.*.amazonaws.com.cn", "*.dkr-ecr.*.on.aws"],
             "provider": ecr(json!({"regions": ["cn-north-1", "ap-south-1"], "registryIds": ["123456789012", "210987654321"]}))},
            // One region named, a default: the image's own region is used.
            {"match": ["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr-fips.*.amazonaws.com", "ecr-alias.registry.test"],
             "provider": ecr(json!({"region": "us-east-1"}))},
            // Lists neither host the images below come from.
            {"match": ["*-docker.pkg.dev"], "provider": {"google": {"registries": ["europe-docker.pkg.dev"], "auth": {"secretRef": {"name": "gsa"}}}}},
        ]),
        true,
    );

    for (host, region) in [
        ("123456789012.dkr.ecr.us-west-2.amazonaws.com", "us-west-2"),
        ("210987654321.dkr.ecr.eu-central-1.amazonaws.com", "eu-central-1"),
        ("123456789012.dkr.ecr-fips.us-east-2.amazonaws.com", "us-east-2"),
        ("210987654321.dkr-ecr.ap-south-1.on.aws", "ap-south-1"),
        ("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        ("ecr-alias.registry.test", "us-east-1"),
    ] {
        let (r, u, p, secs) = login_of(&run_plugin(&config, &format!("{host}/team/app:v1"), None, &[]));
        assert_eq!(r, host, "keyed by the image's own registry");
        let token = moto().ecr_token(&p).unwrap_or_else(|| panic!("{host}: not a token the ECR stand-in issued"));
        assert_eq!((u.as_str(), token.region.as_str()), ("AWS", region), "{host}: minted in the image's region");
        assert!(moto().validator_for(region)(&u, &p), "{host}: valid in its region");
        assert!(region == "us-east-1" || !moto().validator_for("us-east-1")(&u, &p), "{host}: not in another");
        assert!(secs > 60, "{host}: a 12 h token is cached until its refresh point, got {secs} s");
    }
    // The same region again is served from the cache, whatever the account.
    let calls = moto().ecr_calls();
    let (r, _, _, _) = login_of(&run_plugin(&config, "333333333333.dkr.ecr.us-west-2.amazonaws.com/x:1", None, &[]));
    assert_eq!(r, "333333333333.dkr.ecr.us-west-2.amazonaws.com");
    assert_eq!(moto().ecr_calls(), calls, "one token per region serves every account there");

    // Outside what the entry permits: one line, no provider call.
    for (image, says) in [
        (
            "999999999999.dkr.ecr.cn-north-1.amazonaws.com.cn/x:1",
            "account 999999999999 is not in the ecr provider's registryIds",
        ),
        (
            "123456789012.dkr-ecr.eu-west-1.on.aws/x:1",
            "region eu-west-1 is not in the ecr provider's regions (cn-north-1, ap-south-1)",
        ),
    ] {
        let line = one_line_failure(&run_plugin(&config, image, None, &[]), &[]);
        assert!(line.starts_with("regcred: ecr provider for ") && line.contains(says), "{line}");
    }
    assert_eq!(moto().ecr_calls(), calls);

    // Google: any regional host the pattern matched, with the one token.
    for host in ["us-central1-docker.pkg.dev", "asia-east1-docker.pkg.dev"] {
        let (r, u, p, _) = login_of(&run_plugin(&config, &format!("{host}/p/r/i:1"), None, &[]));
        assert_eq!((r.as_str(), u.as_str()), (host, "oauth2accesstoken"));
        assert_eq!(g.principal_of(&p).as_deref(), Some(email));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_uses_the_pods_service_account_token() {
    let dir = scratch("token");
    let az = azure();
    az.add_tenant("pod-tenant");
    az.add_federated_credential("pod-tenant", "pod-app", SA_ISSUER, "system:serviceaccount:plugin-pods:acr-puller");
    az.grant_acr_pull("pod-tenant", "pod-app");
    let config = write_config(
        &dir,
        json!([
            {"match": ["*.dkr.ecr.*.amazonaws.com"], "provider": {"ecr": {"region": "us-east-1", "endpoint": moto().endpoint(),
                "auth": {"serviceAccountRef": {"name": "pod"}}}}},
            {"match": ["asia-docker.pkg.dev"], "provider": {"google": {"registries": ["asia-docker.pkg.dev"],
                "auth": {"serviceAccountRef": {"name": "pod", "audience": POOL, "tokenUrl": google().sts_url()}},
                "impersonate": {"endpoint": google().base_url()}}}},
            {"match": ["*-docker.pkg.dev"], "provider": {"google": {"registries": ["us-docker.pkg.dev"],
                "auth": {"serviceAccountRef": {"name": "pod", "audience": POOL, "tokenUrl": google().sts_url()}}}}},
            {"match": [az.host()], "provider": {"acr": {"registry": az.host(), "tenantId": "pod-tenant",
                "auth": {"workloadIdentity": {"serviceAccountRef": {"name": "pod"}}}, "authorityHost": az.authority_host(), "caBundle": az.ca_pem()}}},
        ]),
        false,
    );
    let env: Vec<(&str, String)> = aws_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // AWS: AssumeRoleWithWebIdentity with the role from the annotation.
    let role = json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::777777777777:role/pod-puller"});
    let token = pod_token("plugin-pods", "ecr-puller", "sts.amazonaws.com", role.clone()).await;
    let image = format!("{}/app:v1", ecr_host("777777777777"));
    let (r, u, p, _) = login_of(&run_plugin(&config, &image, Some((&token, role.clone())), &env));
    assert_eq!((r, u.as_str()), (ecr_host("777777777777"), "AWS"));
    assert_eq!(moto().ecr_token(&p).map(|t| (t.account, t.region)), Some(("777777777777".into(), "us-east-1".into())));
    // Another ServiceAccount with the same annotation: outside the role's
    // trust policy, refused by STS, and the line names the subject.
    let other = pod_token("plugin-pods", "ecr-intruder", "sts.amazonaws.com", role.clone()).await;
    let line = one_line_failure(&run_plugin(&config, &image, Some((&other, role)), &env), &[&other]);
    assert!(line.contains("AccessDenied") && line.contains("system:serviceaccount:plugin-pods:ecr-intruder"), "{line}");
    // Without the annotation: one precise line.
    let line = one_line_failure(&run_plugin(&config, &image, Some((&token, json!({}))), &env), &[&token]);
    assert!(line.contains("eks.amazonaws.com/role-arn"), "{line}");
    // Without any token (tokenAttributes not configured).
    let line = one_line_failure(&run_plugin(&config, &image, None, &env), &[]);
    assert!(line.contains("tokenAttributes"), "{line}");

    // Google: STS exchange of the Pod's token (the stand-in checks aud).
    let token = pod_token("plugin-pods", "gar-puller", &format!("https:{POOL}"), json!({})).await;
    let (r, u, p, _) = login_of(&run_plugin(&config, "us-docker.pkg.dev/p/r/i:1", Some((&token, json!({}))), &[]));
    assert_eq!((r.as_str(), u.as_str()), ("us-docker.pkg.dev", "oauth2accesstoken"));
    assert!(google().principal_of(&p).unwrap().ends_with("/subject/system:serviceaccount:plugin-pods:gar-puller"));
    // Impersonation of the service account the Pod's ServiceAccount names.
    let target = "impersonated@regcred-test.iam.gserviceaccount.com";
    let gsa = json!({"iam.gke.io/gcp-service-account": target});
    let token = pod_token("plugin-pods", "gar-impersonator", &format!("https:{POOL}"), gsa.clone()).await;
    let source = regcred_testenv::google_standin::federated_principal(
        POOL,
        "system:serviceaccount:plugin-pods:gar-impersonator",
    );
    google().allow_impersonation(&source, target, HOUR);
    let (_, _, p, _) = login_of(&run_plugin(&config, "asia-docker.pkg.dev/p/r/i:1", Some((&token, gsa)), &[]));
    assert_eq!(google().principal_of(&p).as_deref(), Some(target));
    let line = one_line_failure(
        &run_plugin(&config, "asia-docker.pkg.dev/p/r/i:1", Some((&token, json!({}))), &[]),
        &[&token],
    );
    assert!(line.contains("iam.gke.io/gcp-service-account"), "{line}");
    // A token for another audience is refused by STS.
    let wrong = pod_token("plugin-pods", "gar-puller", "sts.amazonaws.com", json!({})).await;
    let line =
        one_line_failure(&run_plugin(&config, "us-docker.pkg.dev/p/r/i:1", Some((&wrong, json!({}))), &[]), &[&wrong]);
    assert!(line.contains("google provider") && line.contains("us-docker.pkg.dev"), "{line}");

    // Azure: client assertion with the client id from the annotation.
    let annotations = json!({"azure.workload.identity/client-id": "pod-app"});
    let token = pod_token("plugin-pods", "acr-puller", "api://AzureADTokenExchange", annotations.clone()).await;
    let image = format!("{}/{TEST_IMAGE}", az.host());
    let (_, u, p, _) = login_of(&run_plugin(&config, &image, Some((&token, annotations)), &[]));
    assert!(az.refresh_token_valid(&u, &p));
    let line = one_line_failure(&run_plugin(&config, &image, Some((&token, json!({}))), &[]), &[&token]);
    assert!(line.contains("azure.workload.identity/client-id"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_reports_a_provider_outage_in_one_line_and_answers_fast_from_its_cache() {
    let dir = scratch("outage");
    let g = google();
    let email = "outage@regcred-test.iam.gserviceaccount.com";
    let key = g.create_key(email, HOUR).unwrap();
    put_secret_files(&dir, "gsa", &[("credentials.json", &key.json)]);
    let config = write_config(
        &dir,
        json!([{"match": ["gcr.io"], "provider": {"google": {"registries": ["gcr.io"], "auth": {"secretRef": {"name": "gsa"}}}}}]),
        true,
    );
    g.fail_token_endpoint(email, Some(503));
    let line = one_line_failure(&run_plugin(&config, "gcr.io/p/i:1", None, &[]), &[]);
    assert!(line.starts_with("regcred: google provider for gcr.io/p/i:1: ") && line.contains("503"), "{line}");
    g.fail_token_endpoint(email, None);

    let cold = run_plugin(&config, "gcr.io/p/i:1", None, &[]);
    let (_, _, first, _) = login_of(&cold);
    let calls = g.token_calls(email);
    let mut warm = Vec::new();
    for _ in 0..5 {
        let run = run_plugin(&config, "gcr.io/p/i:1", None, &[]);
        assert_eq!(login_of(&run).2, first, "served from the cache");
        warm.push(run.took);
    }
    assert_eq!(g.token_calls(email), calls, "no provider call on the warm path");
    warm.sort();
    eprintln!("plugin: cold {:?} (a token grant), warm median {:?}, max {:?}", cold.took, warm[2], warm[4]);
}

/// A token registry accepting `validator`'s credentials.
fn private_registry(validator: Validator) -> (TokenService, TokenRegistry) {
    record_secret(PUSH_PASS);
    let tokens =
        TokenService::start(Arc::new(move |u: &str, p: &str| (u == PUSHER && p == PUSH_PASS) || validator(u, p)))
            .unwrap();
    let registry = start_token_registry(control_plane().process_group(), &tokens, PUSHER, PUSH_PASS).unwrap();
    (tokens, registry)
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_without_pull_secrets_pull_through_the_plugin_on_the_real_node() {
    let client = control_plane().client().await.unwrap();
    let dir = scratch("node");
    // Registries: ECR in three regions, each accepting only its region's
    // tokens (static keys, and a Pod's role in us-east-1), and Google.
    let (_t1, ecr_registry) = private_registry(moto().validator_for("us-east-1"));
    let (_t5, ecr_west) = private_registry(moto().validator_for("us-west-2"));
    let (_t6, ecr_central) = private_registry(moto().validator_for("eu-central-1"));
    let g = google();
    let email = "node-plugin@regcred-test.iam.gserviceaccount.com";
    let (_t2, gar_registry) = private_registry(Arc::new(move |u: &str, p: &str| {
        u == "oauth2accesstoken" && g.principal_of(p).as_deref() == Some(email)
    }));
    let key = g.create_key(email, HOUR).unwrap();
    put_secret_files(&dir, "gsa", &[("credentials.json", &key.json)]);
    record_secret("node-plugin-ecr-secret");
    put_secret_files(
        &dir,
        "aws",
        &[("access-key-id", "AKIANODEPLUGIN000001"), ("secret-access-key", "node-plugin-ecr-secret")],
    );
    // One ECR entry for every region (us-east-1 is only its default) and one
    // Google entry that lists neither regional host pulled below.
    let static_config = write_config(
        &dir,
        json!([
            {"match": ["*.dkr.ecr.*.amazonaws.com"], "provider": {"ecr": {"region": "us-east-1", "endpoint": moto().endpoint(), "auth": {"secretRef": {"name": "aws"}}}}},
            {"match": ["*-docker.pkg.dev"], "provider": {"google": {"registries": ["europe-docker.pkg.dev"], "auth": {"secretRef": {"name": "gsa"}}}}},
        ]),
        false,
    );
    let west = "123456789012.dkr.ecr.us-west-2.amazonaws.com".to_string();
    let central = "210987654321.dkr.ecr.eu-central-1.amazonaws.com".to_string();
    let pod_dir = scratch("node-pod");
    let pod_config = write_config(
        &pod_dir,
        json!([{"match": ["*.dkr.ecr.*.amazonaws.com"], "provider": {"ecr": {"region": "us-east-1", "endpoint": moto().endpoint(),
            "auth": {"serviceAccountRef": {"name": "pod"}}}}}]),
        false,
    );
    // The executables the kubelet runs are named after the providers.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_regcred"), bin.join("regcred-pod-identity")).unwrap();
    // `regcred` is regcred behind a wrapper that notes, per request, the
    // image and the keys of the answer (never the logins), so the test sees
    // what the kubelet was given.
    let keys_log = dir.join("answer-keys.log");
    assert!(
        Path::new("/usr/bin/python3").exists(),
        "the kubelet plugin wrapper needs /usr/bin/python3 (apt-get install python3)"
    );
    let note_keys = r#"import json, os
try:
    keys = sorted(json.loads(os.environ["OUT"])["auth"])
except Exception:
    keys = None
print(json.dumps({"image": json.loads(os.environ["REQ"])["image"], "keys": keys}))"#;
    let wrapper = format!(
        "#!/bin/sh\nreq=$(cat)\nout=$(printf '%s' \"$req\" | {} \"$@\")\nrc=$?\nREQ=\"$req\" OUT=\"$out\" /usr/bin/python3 -c '{note_keys}' >> {}\nprintf '%s' \"$out\"\nexit $rc\n",
        env!("CARGO_BIN_EXE_regcred"),
        keys_log.display()
    );
    std::fs::write(bin.join("regcred"), wrapper).unwrap();
    std::fs::set_permissions(bin.join("regcred"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let kubelet_config = dir.join("credential-providers.yaml");
    // Per-Pod identity (tokenAttributes, KEP-4412) is beta from 1.34; the
    // 1.33 kubelet refuses the field unless an alpha gate is on, and
    // docs/compatibility.md does not support it there.
    let pod_tokens = regcred_testenv::version::k8s().kubelet_pod_tokens();
    let mut kubelet_yaml = json!({
        "apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
        "providers": [
            {"name": "regcred", "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
             "matchImages": [ecr_host("123456789012"), west, central, "*-docker.pkg.dev"], "defaultCacheDuration": "1m",
             "args": ["kubelet-credential-provider", "--config", static_config]},
            {"name": "regcred-pod-identity", "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
             "matchImages": [ecr_host("888888888888")], "defaultCacheDuration": "1m",
             "args": ["kubelet-credential-provider", "--config", pod_config],
             "env": [{"name": "AWS_ENDPOINT_URL_STS", "value": moto().endpoint()}, {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"}],
             "tokenAttributes": {"serviceAccountTokenAudience": "sts.amazonaws.com", "cacheType": "ServiceAccount",
                 "requireServiceAccount": true, "optionalServiceAccountAnnotationKeys": ["eks.amazonaws.com/role-arn"]}},
        ]
    });
    if !pod_tokens {
        kubelet_yaml["providers"].as_array_mut().unwrap().pop();
    }
    std::fs::write(&kubelet_config, serde_yaml::to_string(&kubelet_yaml).unwrap()).unwrap();

    let mut node = Node::start(control_plane(), KubeletOptions::default()).unwrap_or_else(|e| panic!("{e:#}"));
    for (host, r) in [
        (ecr_host("123456789012"), &ecr_registry),
        (ecr_host("888888888888"), &ecr_registry),
        (west.clone(), &ecr_west),
        (central.clone(), &ecr_central),
        ("europe-docker.pkg.dev".into(), &gar_registry),
        ("us-central1-docker.pkg.dev".into(), &gar_registry),
        ("asia-east1-docker.pkg.dev".into(), &gar_registry),
    ] {
        node.add_registry(&host, &Endpoint::Http(r.host.clone())).unwrap();
    }
    let started = Instant::now();
    node.restart_kubelet(
        &client,
        KubeletOptions { credential_provider: Some(CredentialProvider { config: kubelet_config, bin_dir: bin }) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("kubelet restarted with regcred as its credential provider in {:?}", started.elapsed());

    create_namespace(&client, "plugin-node", &[]).await;
    let images = [
        ("ecr", format!("{}/{TEST_IMAGE}", ecr_host("123456789012"))),
        ("ecr-west", format!("{west}/{TEST_IMAGE}")),
        ("ecr-central", format!("{central}/{TEST_IMAGE}")),
        ("gar", format!("europe-docker.pkg.dev/{TEST_IMAGE}")),
        ("gar-us", format!("us-central1-docker.pkg.dev/{TEST_IMAGE}")),
        ("gar-asia", format!("asia-east1-docker.pkg.dev/{TEST_IMAGE}")),
    ];
    for (app, image) in &images {
        apply_deployment(&client, "plugin-node", app, image, "Always", 1).await.unwrap();
    }
    for (app, _) in &images {
        let pods = match wait_running(&client, "plugin-node", app, 1, Duration::from_secs(90)).await {
            Ok(pods) => pods,
            Err(e) => panic!(
                "{e:#}\nkubelet log:\n{}",
                node.kubelet_log().lines().rev().take(40).collect::<Vec<_>>().join("\n")
            ),
        };
        assert!(pods[0].spec.as_ref().unwrap().image_pull_secrets.is_none(), "no Secret involved");
        // `regcred explain pod` sees no Secret, and that the kubelet pulled
        // anyway: a plugin (or an anonymous pull), which it cannot tell apart.
        let name = pods[0].metadata.name.clone().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcred"))
            .args(["explain", "pod", &format!("plugin-node/{name}"), "-o", "json"])
            .env("KUBECONFIG", control_plane().kubeconfig_path())
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(2), "{app}: {report:#}");
        let reason = report["images"][0]["reason"].as_str().unwrap();
        assert!(reason.contains("without a pull Secret") && reason.contains("credential provider plugin"), "{reason}");
    }
    // Every answer the kubelet got was keyed by the image's own registry.
    let noted = std::fs::read_to_string(&keys_log).unwrap_or_default();
    for (app, image) in &images {
        let host = image.split('/').next().unwrap();
        let answers: Vec<Value> = noted
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["image"].as_str().is_some_and(|i| i.starts_with(&format!("{host}/"))))
            .collect();
        assert!(!answers.is_empty(), "{app}: the kubelet never asked for {image}:\n{noted}");
        for a in &answers {
            assert_eq!(a["keys"], json!([host]), "{app}: the answer's keys");
        }
    }

    if !pod_tokens {
        eprintln!("Kubernetes {}: no per-Pod identity (1.34+)", regcred_testenv::version::k8s());
        drop(node);
        return;
    }
    // Per-Pod identity: the annotated ServiceAccount pulls, the other not.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "plugin-node");
    for (name, annotations) in [
        ("annotated", json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::888888888888:role/puller"})),
        ("plain", json!({})),
    ] {
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}})).unwrap();
        sas.create(&PostParams::default(), &sa).await.unwrap();
    }
    let image = format!("{}/{TEST_IMAGE}", ecr_host("888888888888"));
    for app in ["annotated", "plain"] {
        apply_deployment(&client, "plugin-node", app, &image, "Always", 1).await.unwrap();
        let patch = json!({"spec": {"template": {"spec": {"serviceAccountName": app}}}});
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), "plugin-node")
            .patch(app, &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(patch))
            .await
            .unwrap();
    }
    wait_running(&client, "plugin-node", "annotated", 1, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let refused = wait_pull_refused(&client, "plugin-node", "plain", Duration::from_secs(90)).await.unwrap();
    assert!(regcred_testenv::node::workload::refused_for_credentials(&refused), "{refused}");
    // The kubelet logs the plugin's line and pulls anonymously; the Pod's
    // Events show the registry's refusal, not the plugin's words.
    let log = node.kubelet_log();
    let plugin_line = log.lines().find(|l| {
        l.contains("regcred-pod-identity") && l.contains("no role") && l.contains("eks.amazonaws.com/role-arn")
    });
    assert!(plugin_line.is_some(), "the plugin's one line is in the kubelet's log");
    let pods = regcred_testenv::node::workload::pods_of(&client, "plugin-node", "plain").await.unwrap();
    let events = pod_events(&client, "plugin-node", pods[0].metadata.name.as_deref().unwrap()).await;
    eprintln!("unannotated ServiceAccount: Pod Events: {events:?}\nkubelet log: {plugin_line:?}");
    drop(node);
}

/// Runs skopeo with `authfile` (whose credHelpers select regcred), the
/// helper found on PATH as `docker-credential-regcred`.
fn skopeo_with_helper(
    bin: &Path,
    config: &Path,
    cache_home: &Path,
    authfile: &Path,
    image: &str,
) -> std::process::Output {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--authfile"])
        .arg(authfile)
        .arg(format!("docker://{image}"))
        .env("PATH", path)
        .env("REGCRED_CREDENTIAL_HELPER_CONFIG", config)
        .env("XDG_CACHE_HOME", cache_home)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_helper_serves_skopeo_from_every_provider_and_caches_on_disk() {
    let dir = scratch("helper");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_regcred"), bin.join("docker-credential-regcred")).unwrap();

    // ECR (moto), Google, ACR (through its stand-in's /v2/), Harbor (same).
    let (_t1, ecr) = private_registry(moto().validator());
    let g = google();
    let email = "helper@regcred-test.iam.gserviceaccount.com";
    let (_t2, gar) = private_registry(Arc::new(move |u: &str, p: &str| {
        u == "oauth2accesstoken" && g.principal_of(p).as_deref() == Some(email)
    }));
    let az = azure();
    let (_t3, acr_upstream) = private_registry(az.validator());
    az.set_upstream_registry(&acr_upstream.host);
    az.add_service_principal("helper-tenant", "helper-app", "helper-sp-secret");
    az.grant_acr_pull("helper-tenant", "helper-app");
    let harbor = HarborStandin::start(harbor_standin::Options {
        admins: vec![("admin".into(), "helper-harbor-admin".into())],
        projects: vec!["regcred".into()],
        ..Default::default()
    })
    .unwrap();
    let (_t4, harbor_upstream) = private_registry(harbor.validator());
    harbor.proxy_registry(&harbor_upstream.host);

    record_secret("helper-ecr-secret");
    record_secret("helper-sp-secret");
    record_secret("helper-harbor-admin");
    put_secret_files(
        &dir,
        "aws",
        &[("access-key-id", "AKIAHELPER0000000001"), ("secret-access-key", "helper-ecr-secret")],
    );
    let key = g.create_key(email, HOUR).unwrap();
    put_secret_files(&dir, "gsa", &[("credentials.json", &key.json)]);
    put_secret_files(&dir, "sp", &[("client-id", "helper-app"), ("client-secret", "helper-sp-secret")]);
    put_secret_files(&dir, "harbor", &[("username", "admin"), ("password", "helper-harbor-admin")]);
    let config = write_config(
        &dir,
        json!([
            {"match": [ecr.host, "*.dkr.ecr.*.amazonaws.com"], "provider": {"ecr": {"region": "us-east-1", "endpoint": moto().endpoint(), "auth": {"secretRef": {"name": "aws"}}}}},
            {"match": [gar.host], "provider": {"google": {"registries": [gar.host], "auth": {"secretRef": {"name": "gsa"}}}}},
            {"match": [az.host()], "provider": {"acr": {"registry": az.host(), "tenantId": "helper-tenant",
                "auth": {"servicePrincipal": {"secretRef": {"name": "sp"}}}, "authorityHost": az.authority_host(), "caBundle": az.ca_pem()}}},
            {"match": [harbor.host()], "provider": {"harbor": {"url": harbor.url(), "projects": ["regcred"], "auth": {"secretRef": {"name": "harbor"}}}}},
        ]),
        false,
    );
    let hosts = [ecr.host.clone(), gar.host.clone(), az.host(), harbor.host()];
    let helpers: serde_json::Map<String, Value> = hosts.iter().map(|h| (h.clone(), json!("regcred"))).collect();
    let authfile = dir.join("auth.json");
    std::fs::write(&authfile, json!({"credHelpers": helpers}).to_string()).unwrap();
    let cache_home = dir.join("cache-home");

    for host in &hosts {
        let out = skopeo_with_helper(&bin, &config, &cache_home, &authfile, &format!("{host}/{TEST_IMAGE}"));
        assert!(
            out.status.success(),
            "{host}: skopeo through the helper failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Without the helper, the same pulls are refused.
    let bare = dir.join("bare.json");
    std::fs::write(&bare, "{}").unwrap();
    let out = skopeo_with_helper(&bin, &config, &cache_home, &bare, &format!("{}/{TEST_IMAGE}", gar.host));
    assert!(!out.status.success(), "an anonymous pull worked");

    // The cache: one file per provider, 0600, and a second get makes no
    // provider call.
    let cache_dir = cache_home.join("regcred/credential-helper");
    let files: Vec<PathBuf> = std::fs::read_dir(&cache_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 4, "{files:?}");
    for f in &files {
        assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
    }
    assert_eq!(std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777, 0o700);
    let calls = g.token_calls(email);
    let out = skopeo_with_helper(&bin, &config, &cache_home, &authfile, &format!("{}/{TEST_IMAGE}", gar.host));
    assert!(out.status.success());
    assert_eq!(g.token_calls(email), calls, "the second pull minted nothing");

    // A corrupted cache file is ignored and rewritten.
    for f in &files {
        std::fs::write(f, b"{\"auths\": [[\"truncated").unwrap();
    }
    let out = skopeo_with_helper(&bin, &config, &cache_home, &authfile, &format!("{}/{TEST_IMAGE}", gar.host));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(g.token_calls(email), calls + 1, "minted again");
    let rewritten =
        files.iter().filter(|f| serde_json::from_slice::<Value>(&std::fs::read(f).unwrap()).is_ok()).count();
    assert_eq!(rewritten, 1, "the Google entry was rewritten");

    // The helper verbs themselves.
    let helper = |verb: &str, input: &str| {
        let mut child = Command::new(bin.join("docker-credential-regcred"))
            .arg(verb)
            .env("REGCRED_CREDENTIAL_HELPER_CONFIG", &config)
            .env("XDG_CACHE_HOME", &cache_home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let got = helper("get", &format!("https://{}", gar.host));
    assert!(got.status.success());
    let v: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(v["Username"], "oauth2accesstoken");
    assert_eq!(v["ServerURL"], format!("https://{}", gar.host));
    // An ECR registry in another region and account: a login minted there.
    let got = helper("get", "https://210987654321.dkr.ecr.eu-central-1.amazonaws.com");
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stdout));
    let v: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(
        (v["ServerURL"].as_str(), v["Username"].as_str()),
        (Some("https://210987654321.dkr.ecr.eu-central-1.amazonaws.com"), Some("AWS"))
    );
    let token = moto().ecr_token(v["Secret"].as_str().unwrap()).expect("a token the ECR stand-in issued");
    assert_eq!(token.region, "eu-central-1");
    let list = helper("list", "");
    let v: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(hosts.iter().all(|h| v.get(h).is_some()), "{v}");
    let unknown = helper("get", "quay.io");
    assert!(!unknown.status.success());
    assert_eq!(String::from_utf8_lossy(&unknown.stdout).trim(), "credentials not found in native keychain");
    for verb in ["store", "erase"] {
        let out = helper(verb, r#"{"ServerURL":"x","Username":"u","Secret":"s"}"#);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stdout).contains("not supported"), "{verb}");
    }
}
