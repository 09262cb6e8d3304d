//! Releases as users get them, on the real node: the current tree released
//! with `hack/release.sh` (what `make release` runs) into a private OCI
//! registry, its signatures and SBOM checked with cosign; the previous
//! release (built from the commit `releases.txt` records) installed from
//! the same registry with `helm install oci://…`, serving credentials and
//! Deployments; then `helm upgrade` to the current release and `helm
//! rollback`, each while a Deployment scales up and pulls, with no
//! credential leaving `Ready=True`, no Secret rewritten unless its content
//! changed, and the CRDs following; finally a fresh `helm install oci://…`
//! of the current release and a credential end to end.
//!
//! The API server listens on 127.0.0.1 and no kube-proxy runs here, so the
//! chart's `kubernetesApi` and `hostAliases` values point in-cluster
//! configuration at a relay on the node's bridge (docs/install.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::{Client, ResourceExt};
use regcred_testenv::images::{RegcredImage, write_regcred_image};
use regcred_testenv::node::workload::{apply_deployment, scale, wait_running};
use regcred_testenv::node::{Endpoint, KubeletOptions, Node};
use regcred_testenv::operator::record_secret;
use regcred_testenv::registry::Registry;
use regcred_testenv::release::{PreviousRelease, previous_release, tools_dir};
use regcred_testenv::{ControlPlane, Options, repo_root};
use serde_json::{Value, json};

const RELEASE: &str = "regcred";
const NS: &str = "regcred-system";
const PULLER: (&str, &str) = ("team", "release-node-team-password");
const PUSHER: (&str, &str) = ("ci", "release-node-ci-password");
const COSIGN_PASSWORD: &str = "release-node-cosign-key-password";
const WAIT: Duration = Duration::from_secs(120);

/// The environment one test's commands share.
struct Env {
    kubeconfig: PathBuf,
    helm_home: PathBuf,
    client: Client,
    work: PathBuf,
    registry: Registry,
    /// `--registry-config` for helm and `DOCKER_CONFIG` for cosign.
    docker_config: PathBuf,
    values: PathBuf,
    /// `cosign` (hack/release-tools.sh).
    cosign: PathBuf,
}

impl Env {
    fn helm(&self, args: &[&str]) -> Output {
        let mut cmd = regcred_testenv::chart::helm(&self.helm_home).unwrap_or_else(|e| panic!("{e:#}"));
        cmd.args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--registry-config")
            .arg(self.docker_config.join("config.json"));
        cmd.output().unwrap()
    }

    fn helm_ok(&self, args: &[&str]) -> String {
        let out = self.helm(args);
        assert!(
            out.status.success(),
            "helm {} failed:\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into()
    }

    /// `oci://HOST/rel/charts/regcred`.
    fn chart_ref(&self) -> String {
        format!("oci://{}/rel/charts/regcred", self.registry.host)
    }

    fn image_repository(&self) -> String {
        format!("{}/rel/regcred", self.registry.host)
    }

    /// Installs or upgrades to `version` of the chart in the registry.
    fn helm_to(&self, verb: &str, version: &str) -> String {
        let chart = self.chart_ref();
        let values = self.values.display().to_string();
        self.helm_ok(&[
            verb,
            RELEASE,
            &chart,
            "--version",
            version,
            "--plain-http",
            "--namespace",
            NS,
            "--values",
            &values,
            "--wait",
            "--timeout",
            "3m",
        ])
    }

    fn cosign(&self, args: &[&str]) -> Output {
        Command::new(&self.cosign)
            .args(args)
            .env("DOCKER_CONFIG", &self.docker_config)
            // Verification with a key and no transparency log reads no
            // Sigstore trust material; a TUF fetch would fail here (no
            // internet) and must not be needed.
            .env("TUF_ROOT", self.work.join("no-tuf"))
            .output()
            .unwrap()
    }
}

fn sh_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}

/// The version the tree says it is (Cargo.toml).
fn tree_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The cargo target directory this test binary was built in.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_regcred")).parent().unwrap().parent().unwrap().to_path_buf()
}

fn stripped(binary: &Path, out: &Path) -> PathBuf {
    let ok = Command::new("strip").arg("-o").arg(out).arg(binary).status().is_ok_and(|s| s.success());
    if !ok {
        std::fs::copy(binary, out).unwrap();
    }
    out.to_path_buf()
}

/// Releases the tree with `hack/release.sh` into the registry, as a
/// maintainer would (signing key, registry credentials in the
/// environment), with this build's binary in the image.
fn release_current(env: &Env, key: &Path) -> PathBuf {
    let out = env.work.join("dist");
    let started = Instant::now();
    let log = sh_ok(
        Command::new("bash")
            .arg(repo_root().join("hack/release.sh"))
            .current_dir(repo_root())
            .env("VERSION", tree_version())
            .env("REGISTRY", format!("{}/rel", env.registry.host))
            .env("REGISTRY_PLAIN_HTTP", "1")
            .env("REGISTRY_USERNAME", PUSHER.0)
            .env("REGISTRY_PASSWORD", PUSHER.1)
            .env("OUT", &out)
            .env("COSIGN_KEY", key)
            .env("COSIGN_PASSWORD", COSIGN_PASSWORD)
            // The tests run on trees with uncommitted changes too.
            .env("ALLOW_DIRTY", "1")
            .env("REGCRED_BINARY", stripped(Path::new(env!("CARGO_BIN_EXE_regcred")), &env.work.join("regcred")))
            .env("CARGO_TARGET_DIR", target_dir()),
        "hack/release.sh",
    );
    eprintln!("released {} in {:?}\n{log}", tree_version(), started.elapsed());
    out
}

/// Pushes the previous release's image and chart to the registry, as its
/// own release did (unsigned here: what is tested is the upgrade from it).
fn publish_previous(env: &Env, previous: &PreviousRelease) {
    let layout = env.work.join("previous-image");
    write_regcred_image(
        &layout,
        &RegcredImage {
            binary: &previous.binary,
            tag: &previous.version,
            version: &previous.version,
            source: "regcred",
            revision: Some(&previous.commit),
        },
    )
    .unwrap();
    sh_ok(
        Command::new("skopeo")
            .args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
            .arg(format!("--dest-creds={}:{}", PUSHER.0, PUSHER.1))
            .arg(format!("oci:{}:{}", layout.display(), previous.version))
            .arg(format!("docker://{}:{}", env.image_repository(), previous.version)),
        "skopeo copy of the previous image",
    );
    let packaged = env.work.join("previous-chart");
    let chart = previous.chart.display().to_string();
    let dest = packaged.display().to_string();
    env.helm_ok(&["package", &chart, "--destination", &dest]);
    let tgz = packaged.join(format!("regcred-{}.tgz", previous.version)).display().to_string();
    let repo = format!("oci://{}/rel/charts", env.registry.host);
    env.helm_ok(&["push", &tgz, &repo, "--plain-http"]);
}

fn credential_resource(kind: &str) -> ApiResource {
    // v1alpha1 is served by every release in this test (deprecated from
    // 0.2.0), so the watchers read through it across upgrade and rollback.
    ApiResource::from_gvk(&GroupVersionKind::gvk("regcred.dev", "v1alpha1", kind))
}

/// `kind/name: status/reason` of every credential not Ready=True.
async fn not_ready(client: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, api) in [
        (
            "ClusterRegistryCredential",
            Api::<DynamicObject>::all_with(client.clone(), &credential_resource("ClusterRegistryCredential")),
        ),
        (
            "RegistryCredential",
            Api::<DynamicObject>::all_with(client.clone(), &credential_resource("RegistryCredential")),
        ),
    ] {
        let Ok(list) = api.list(&ListParams::default()).await else { continue };
        for c in list.items {
            let ready = c.data["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map(|c| format!("{}/{}", c["status"].as_str().unwrap_or(""), c["reason"].as_str().unwrap_or("")));
            if !ready.as_deref().is_some_and(|r| r.starts_with("True/")) {
                out.push(format!("{kind}/{}: {ready:?}", c.name_any()));
            }
        }
    }
    out
}

/// What a managed Secret holds (type, labels, annotations, data) and its
/// resourceVersion, by `namespace/name`.
async fn managed_secrets(client: &Client) -> BTreeMap<String, (String, Value)> {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=regcred");
    Api::<Secret>::all(client.clone())
        .list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| {
            let content = json!({"type": s.type_, "labels": s.metadata.labels, "annotations": s.metadata.annotations,
                "data": s.data});
            (
                format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()),
                (s.resource_version().unwrap(), content),
            )
        })
        .collect()
}

/// The storage version and the served versions of a CRD.
async fn crd_versions(client: &Client, name: &str) -> (String, Vec<String>) {
    let crd = Api::<CustomResourceDefinition>::all(client.clone()).get(name).await.unwrap();
    let storage = crd.spec.versions.iter().find(|v| v.storage).unwrap().name.clone();
    let served = crd.spec.versions.iter().filter(|v| v.served).map(|v| v.name.clone()).collect();
    (storage, served)
}

/// The image of the operator's running Pods.
async fn operator_images(client: &Client) -> Vec<String> {
    let lp = ListParams::default().labels("app.kubernetes.io/name=regcred");
    Api::<Pod>::namespaced(client.clone(), NS)
        .list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.spec.unwrap().containers[0].image.clone().unwrap_or_default())
        .collect()
}

/// Runs `change` (a helm upgrade or rollback) while checking, every quarter
/// second, that every credential stays Ready=True, and scales `app-a/web`
/// to `replicas` as it starts; then asserts that the Deployment runs them
/// all (each new Pod pulled through the written Secret), that no credential
/// left Ready=True and that no Secret was rewritten with the same content.
async fn across(env: &Env, what: &str, replicas: i32, change: impl FnOnce() -> String) {
    let client = &env.client;
    let before = managed_secrets(client).await;
    assert!(!before.is_empty());
    let watching = Arc::new(AtomicBool::new(true));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let checker = {
        let (client, watching, seen) = (client.clone(), watching.clone(), seen.clone());
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                let bad = not_ready(&client).await;
                seen.lock().unwrap().extend(bad);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    scale(client, "app-a", "web", replicas).await.unwrap();
    let started = Instant::now();
    let out = tokio::task::block_in_place(change);
    eprintln!("{what}: helm done in {:?}\n{out}", started.elapsed());
    wait_running(client, "app-a", "web", replicas as usize, WAIT).await.unwrap_or_else(|e| panic!("{what}: {e:#}"));
    // The new operator has looked at everything (a full resync would show
    // a rewrite now, not later).
    tokio::time::sleep(Duration::from_secs(5)).await;
    watching.store(false, Ordering::Relaxed);
    checker.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.is_empty(), "{what}: credentials left Ready=True: {seen:?}");
    let after = managed_secrets(client).await;
    for (key, (rv, content)) in &before {
        let (rv_after, content_after) = after.get(key).unwrap_or_else(|| panic!("{what}: {key} is gone"));
        assert!(
            rv_after == rv || content_after != content,
            "{what}: {key} was rewritten with the same content (resourceVersion {rv} -> {rv_after})"
        );
    }
    eprintln!("{what}: {} Secrets, none rewritten; app-a/web scaled to {replicas} and running", before.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_release_installs_from_the_registry_and_upgrades_and_rolls_back_in_use() {
    let previous = previous_release().unwrap_or_else(|e| panic!("{e:#}"));
    assert_ne!(previous.version, tree_version(), "releases.txt's previous release is the tree's own version");
    let tools = tools_dir().unwrap_or_else(|e| panic!("{e:#}"));

    let cp = ControlPlane::start(Options { crd_dir: None, ..Options::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    let node = Node::start(&cp, KubeletOptions::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let client = cp.client().await.unwrap();
    let work = cp.dir().join("release-node");
    std::fs::create_dir_all(&work).unwrap();
    let registry = Registry::start_htpasswd(cp.process_group(), &[PUSHER, PULLER]).unwrap();
    node.add_registry(&registry.host, &Endpoint::Http(registry.host.clone())).unwrap();
    for secret in [PULLER.1, PUSHER.1, COSIGN_PASSWORD] {
        record_secret(secret);
    }
    let auth = |(user, pass): (&str, &str)| {
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{pass}"))
    };
    let docker_config = work.join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    std::fs::write(
        docker_config.join("config.json"),
        json!({"auths": {registry.host.clone(): {"auth": auth(PUSHER)}}}).to_string(),
    )
    .unwrap();

    // The operator's namespace, the image pull Secret, the API relay.
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS,
        "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}))
    .unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    let pull: Secret = serde_json::from_value(json!({"metadata": {"name": "regcred-image", "namespace": NS},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": json!({"auths": {registry.host.clone(): {"auth": auth(PULLER)}}}).to_string()}}))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), NS).create(&PostParams::default(), &pull).await.unwrap();
    let api_port = cp.server.rsplit(':').next().unwrap().to_string();
    let api_relay = node.relay(&format!("127.0.0.1:{api_port}")).unwrap();
    let values = work.join("values.yaml");
    std::fs::write(
        &values,
        serde_yaml::to_string(&json!({
            "image": {"repository": format!("{}/rel/regcred", registry.host)},
            "imagePullSecrets": [{"name": "regcred-image"}],
            "kubernetesApi": {"host": "kubernetes.default.svc", "port": api_relay.port().to_string()},
            "hostAliases": [{"ip": node.gateway(), "hostnames": ["kubernetes.default.svc"]}],
        }))
        .unwrap(),
    )
    .unwrap();
    let env = Env {
        kubeconfig: cp.kubeconfig_path().to_path_buf(),
        helm_home: cp.dir().join("helm-home"),
        client: client.clone(),
        work: work.clone(),
        registry,
        docker_config,
        values,
        cosign: tools.join("cosign"),
    };

    // 1. The current tree, released and signed; a second key pair that
    // must not verify.
    for prefix in ["cosign", "wrong"] {
        sh_ok(
            Command::new(&env.cosign)
                .args(["generate-key-pair", "--output-key-prefix", prefix])
                .current_dir(&work)
                .env("COSIGN_PASSWORD", COSIGN_PASSWORD),
            "cosign generate-key-pair",
        );
    }
    let dist = release_current(&env, &work.join("cosign.key"));
    let version = tree_version();
    let image = format!("{}:{version}", env.image_repository());
    let chart = format!("{}/rel/charts/regcred:{version}", env.registry.host);
    let public_key = dist.join("cosign.pub").display().to_string();
    let wrong_key = work.join("wrong.pub").display().to_string();
    for reference in [&image, &chart] {
        let ok =
            env.cosign(&["verify", "--key", &public_key, "--insecure-ignore-tlog", "--allow-http-registry", reference]);
        assert!(ok.status.success(), "cosign verify {reference}: {}", String::from_utf8_lossy(&ok.stderr));
        let refused =
            env.cosign(&["verify", "--key", &wrong_key, "--insecure-ignore-tlog", "--allow-http-registry", reference]);
        assert!(!refused.status.success(), "cosign verify {reference} accepted the wrong key");
    }
    let attestation = env.cosign(&[
        "verify-attestation",
        "--key",
        &public_key,
        "--insecure-ignore-tlog",
        "--allow-http-registry",
        "--type",
        "cyclonedx",
        &image,
    ]);
    assert!(attestation.status.success(), "the SBOM attestation: {}", String::from_utf8_lossy(&attestation.stderr));
    let sbom = sbom_components(&String::from_utf8_lossy(&attestation.stdout));
    for krate in ["kube", "k8s-openapi", "tokio", "rustls"] {
        assert!(sbom.iter().any(|c| c == krate), "the SBOM does not list {krate}: {} components", sbom.len());
    }
    eprintln!("cosign: image and chart verified, wrong key refused; SBOM attestation lists {} crates", sbom.len());

    // 2. The previous release, as its users have it: installed from the
    // registry, serving a ClusterRegistryCredential and a
    // RegistryCredential (v1alpha1, the only version it knows) to
    // Deployments that pull with them.
    publish_previous(&env, &previous);
    env.helm_to("install", &previous.version);
    assert_eq!(operator_images(&client).await, [format!("{}:{}", env.image_repository(), previous.version)]);
    put_login(&client, NS, "team-login").await;
    for ns in ["app-a", "app-b"] {
        let n: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"regcred.dev/release-node": "yes"}}}))
                .unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &n).await.unwrap();
    }
    put_login(&client, "app-b", "own-login").await;
    let basic = json!({"basic": {"registry": env.registry.host, "secretRef": {"name": "team-login"}}});
    create_v1alpha1(
        &client,
        None,
        json!({"kind": "ClusterRegistryCredential", "metadata": {"name": "fleet"},
            "spec": {"provider": basic, "secret": {"name": "team-pull"},
                     "namespaceSelector": {"matchLabels": {"regcred.dev/release-node": "yes"}}}}),
    )
    .await;
    let own = json!({"basic": {"registry": env.registry.host, "secretRef": {"name": "own-login"}}});
    create_v1alpha1(
        &client,
        Some("app-b"),
        json!({"kind": "RegistryCredential", "metadata": {"name": "own"},
            "spec": {"provider": own, "secret": {"name": "own-pull"}, "serviceAccounts": {"names": ["builder"]}}}),
    )
    .await;
    let builder = serde_json::from_value(json!({"metadata": {"name": "builder"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), "app-b")
        .create(&PostParams::default(), &builder)
        .await
        .unwrap();
    wait_for("every credential Ready=True", || async {
        let bad = not_ready(&client).await;
        let count = Api::<DynamicObject>::all_with(client.clone(), &credential_resource("RegistryCredential"))
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len();
        (bad.is_empty() && count == 1).then_some(())
    })
    .await;
    apply_deployment(&client, "app-a", "web", &env.registry.test_image(), "Always", 1).await.unwrap();
    wait_running(&client, "app-a", "web", 1, WAIT).await.unwrap_or_else(|e| panic!("{e:#}"));

    // 3. helm upgrade to the signed release.
    let crds = ["registrycredentials.regcred.dev", "clusterregistrycredentials.regcred.dev"];
    for name in crds {
        assert_eq!(crd_versions(&client, name).await, ("v1alpha1".into(), vec!["v1alpha1".to_string()]));
    }
    across(&env, "helm upgrade", 3, || env.helm_to("upgrade", &version)).await;
    assert_eq!(operator_images(&client).await, std::slice::from_ref(&image));
    for name in crds {
        let (storage, mut served) = crd_versions(&client, name).await;
        served.sort();
        assert_eq!((storage.as_str(), served), ("v1beta1", vec!["v1alpha1".to_string(), "v1beta1".to_string()]));
    }
    // The objects created as v1alpha1 read and reconcile as v1beta1.
    let fleet = Api::<regcred::api::ClusterRegistryCredential>::all(client.clone()).get("fleet").await.unwrap();
    assert_eq!(fleet.spec.credential.secret.name, "team-pull");
    let own = Api::<regcred::api::RegistryCredential>::namespaced(client.clone(), "app-b").get("own").await.unwrap();
    assert_eq!(own.status.unwrap().conditions[0].status, "True");

    // 4. helm rollback to the previous release.
    across(&env, "helm rollback", 5, || {
        env.helm_ok(&["rollback", RELEASE, "1", "--namespace", NS, "--wait", "--timeout", "3m"])
    })
    .await;
    assert_eq!(operator_images(&client).await, [format!("{}:{}", env.image_repository(), previous.version)]);
    // The previous release's CRDs, which declare v1beta1 without serving
    // it: the apiserver accepted them although objects are stored as
    // v1beta1, and reads those through v1alpha1.
    for name in crds {
        assert_eq!(crd_versions(&client, name).await, ("v1alpha1".into(), vec!["v1alpha1".to_string()]));
    }

    // 5. A fresh install of the signed release, as a new user would: the
    // CRDs (kept by the uninstall) follow, and a new credential serves a
    // new namespace.
    env.helm_ok(&["uninstall", RELEASE, "--namespace", NS, "--wait"]);
    env.helm_to("install", &version);
    assert_eq!(operator_images(&client).await, std::slice::from_ref(&image));
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": "app-c"}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &n).await.unwrap();
    put_login(&client, "app-c", "new-login").await;
    let fresh = json!({"basic": {"registry": env.registry.host, "secretRef": {"name": "new-login"}}});
    let rcreds = Api::<regcred::api::RegistryCredential>::namespaced(client.clone(), "app-c");
    rcreds
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "regcred.dev/v1beta1", "kind": "RegistryCredential",
                "metadata": {"name": "fresh"}, "spec": {"provider": fresh, "secret": {"name": "fresh-pull"},
                    "injection": {"enabled": true}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    // Ready, the ServiceAccount patched, and injection in effect (the
    // release's admission policies and bindings).
    wait_for("fresh Ready and injecting", || async {
        let status = rcreds.get("fresh").await.ok()?.status?;
        let reason = |t: &str| status.conditions.iter().find(|c| c.type_ == t).map(|c| c.reason.clone());
        let sa = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), "app-c")
            .get("default")
            .await
            .ok()?;
        let listed = sa.image_pull_secrets.unwrap_or_default().iter().any(|r| r.name == "fresh-pull");
        (reason("Ready").as_deref() == Some("Synced")
            && reason("Injection").as_deref() == Some("InjectionActive")
            && listed)
            .then_some(())
    })
    .await;
    apply_deployment(&client, "app-c", "web", &env.registry.test_image(), "Always", 2).await.unwrap();
    wait_running(&client, "app-c", "web", 2, WAIT).await.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("fresh install of {version}: app-c/web pulled with fresh-pull");
    drop(env);
    drop(node);
}

/// The component names of the CycloneDX SBOM in a `cosign
/// verify-attestation` output (one DSSE envelope per line, its payload an
/// in-toto statement whose predicate is the SBOM).
fn sbom_components(out: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in out.lines().filter(|l| l.trim_start().starts_with('{')) {
        let Ok(envelope) = serde_json::from_str::<Value>(line) else { continue };
        let Some(payload) = envelope["payload"].as_str() else { continue };
        let Ok(bytes) = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, payload) else { continue };
        let Ok(statement) = serde_json::from_slice::<Value>(&bytes) else { continue };
        for c in statement["predicate"]["components"].as_array().into_iter().flatten() {
            names.extend(c["name"].as_str().map(String::from));
        }
    }
    names
}

async fn put_login(client: &Client, ns: &str, name: &str) {
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": name},
        "stringData": {"username": PULLER.0, "password": PULLER.1}}))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &secret).await.unwrap();
}

async fn create_v1alpha1(client: &Client, ns: Option<&str>, mut obj: Value) {
    obj["apiVersion"] = json!("regcred.dev/v1alpha1");
    let ar = credential_resource(obj["kind"].as_str().unwrap());
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.create(&PostParams::default(), &serde_json::from_value(obj).unwrap()).await.unwrap();
}

async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
