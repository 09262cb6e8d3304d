//! `regcred explain pod`: why a Pod can or cannot pull its images, decided
//! from what the cluster holds. Pure functions; `crate::explain_cli` reads
//! the cluster and prints.
//!
//! For each image the kubelet looks through the Pod's `imagePullSecrets`
//! in order (ServiceAccount admission copied the ServiceAccount's list into
//! a Pod that named none) and uses every `auths` entry that matches the
//! image, with the keyring's rules (`k8s.io/kubernetes`
//! `pkg/credentialprovider/keyring.go`: the key's scheme and a `/v1/` or
//! `/v2/` path are dropped, hosts match label by label with `*` globs,
//! ports are equal, the key's path is a prefix of the image's; Docker Hub
//! images match `index.docker.io` keys). When nothing matches, it pulls
//! anonymously.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::api::{ClusterRegistryCredential, CredentialSpec, CredentialStatus, RegistryCredential};
use crate::targets::{NamespaceInfo, cluster_targets, selector_matches, service_account_selected};

/// The annotation naming the credential that wrote a Secret.
const OWNER_ANNOTATION: &str = "regcred.dev/owner";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "regcred");
const DOCKER_CONFIG_TYPE: &str = "kubernetes.io/dockerconfigjson";

/// The three answers, and the process's exit code for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    WouldPull,
    WouldNotPull,
    CannotTell,
}

impl Verdict {
    /// 0 would pull, 1 would not pull, 2 cannot tell.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::WouldPull => 0,
            Verdict::WouldNotPull => 1,
            Verdict::CannotTell => 2,
        }
    }

    /// The worst of two: a Pod pulls only if every image does.
    fn and(self, other: Verdict) -> Verdict {
        use Verdict::*;
        match (self, other) {
            (WouldNotPull, _) | (_, WouldNotPull) => WouldNotPull,
            (CannotTell, _) | (_, CannotTell) => CannotTell,
            _ => WouldPull,
        }
    }
}

/// What the cluster holds that matters to one Pod.
pub struct Cluster<'a> {
    pub pod: &'a Pod,
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// The Pod's ServiceAccount, if it exists.
    pub service_account: Option<&'a ServiceAccount>,
    /// Secrets of the Pod's namespace, by name: at least the ones the Pod
    /// and its ServiceAccount name, and the ones the credentials write.
    pub secrets: &'a BTreeMap<String, Secret>,
    pub cluster_credentials: &'a [ClusterRegistryCredential],
    /// RegistryCredentials of the Pod's namespace.
    pub credentials: &'a [RegistryCredential],
    pub now: Timestamp,
}

/// A credential as `explain` reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialState {
    /// `ClusterRegistryCredential/NAME` or `RegistryCredential/NS/NAME`.
    pub credential: String,
    pub ready: Option<String>,
    pub ready_message: Option<String>,
    pub expires_at: Option<String>,
    pub expired: bool,
}

/// One `imagePullSecrets` entry, looked at for one image.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretCheck {
    pub name: String,
    pub exists: bool,
    /// The ServiceAccount lists it too (ServiceAccount admission copies
    /// the ServiceAccount's list into a Pod that names none).
    pub on_service_account: bool,
    /// The `auths` keys it holds.
    pub registries: Vec<String>,
    /// The key that matches the image, if one does.
    pub matches: Option<String>,
    /// The credential that wrote it, if regcred did.
    pub credential: Option<CredentialState>,
    /// What is wrong with it for this image, if anything.
    pub problem: Option<String>,
}

/// One container image.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
    /// `containers/NAME`, `initContainers/NAME` or `ephemeralContainers/NAME`.
    pub container: String,
    pub image: String,
    pub registry: String,
    pub secrets: Vec<SecretCheck>,
    /// The Secret the kubelet would use first.
    pub uses: Option<String>,
    pub verdict: Verdict,
    /// Why, in one sentence.
    pub reason: String,
    /// What to do, if anything.
    pub fix: Option<String>,
    /// The registry's answer, with `--check-registry`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_check: Option<RegistryCheck>,
}

/// What the registry said when `--check-registry` logged in with the
/// Secret the kubelet would use and asked for the image's manifest.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCheck {
    /// The Secret whose login was used.
    pub secret: String,
    /// The login was accepted and the manifest read (or found missing).
    pub accepted: bool,
    /// The registry's answer, in words.
    pub answer: String,
    pub quota: Option<crate::verify::PullQuota>,
}

/// The whole answer for a Pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub pod: String,
    pub service_account: String,
    pub images: Vec<ImageReport>,
    pub verdict: Verdict,
    /// One line: the verdict and the first problem.
    pub summary: String,
    pub fix: Option<String>,
}

/// Normalizes an image reference as the kubelet does before matching:
/// `nginx` is `docker.io/library/nginx`, `user/app` is `docker.io/user/app`.
pub fn normalize_image(image: &str) -> String {
    let first = image.split('/').next().unwrap_or(image);
    let has_host = image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_host {
        return image.to_string();
    }
    if image.contains('/') { format!("docker.io/{image}") } else { format!("docker.io/library/{image}") }
}

/// The registry host (and port) of a normalized image.
pub fn registry_of(image: &str) -> String {
    normalize_image(image).split('/').next().unwrap_or_default().to_ascii_lowercase()
}

/// Whether an `auths` key serves `image`, by the kubelet keyring's rules.
pub fn key_matches(key: &str, image: &str) -> bool {
    let trimmed = key.trim();
    let no_scheme = trimmed.strip_prefix("https://").or_else(|| trimmed.strip_prefix("http://")).unwrap_or(trimmed);
    let (host, path) = no_scheme.split_once('/').unwrap_or((no_scheme, ""));
    let path = path.strip_prefix("v1/").or_else(|| path.strip_prefix("v2/")).unwrap_or(path);
    let path = if path == "v1" || path == "v2" { "" } else { path.trim_end_matches('/') };
    let host = host.to_ascii_lowercase();
    let image = normalize_image(image);
    // keyring.go: the Docker Hub default key serves docker.io images.
    let docker_hub = matches!(host.as_str(), "index.docker.io" | "docker.io" | "registry-1.docker.io");
    if docker_hub && registry_of(&image) == "docker.io" {
        let image_path = image.split_once('/').map(|(_, p)| p).unwrap_or_default();
        return path.is_empty() || image_path.starts_with(&format!("{path}/")) || image_path == path;
    }
    let pattern = if path.is_empty() { host } else { format!("{host}/{path}") };
    crate::standalone::config::matches(&pattern, &image)
}

/// The `auths` keys of a dockerconfigjson Secret (empty when it is not one
/// or cannot be read).
fn auths_keys(secret: &Secret) -> Result<Vec<String>, String> {
    if secret.type_.as_deref() != Some(DOCKER_CONFIG_TYPE) {
        return Err(format!(
            "is of type {}, not {DOCKER_CONFIG_TYPE}: the kubelet ignores it",
            secret.type_.as_deref().unwrap_or("Opaque")
        ));
    }
    let bytes = secret.data.as_ref().and_then(|d| d.get(".dockerconfigjson")).map(|b| b.0.as_slice());
    let Some(bytes) = bytes else { return Err("has no .dockerconfigjson key".into()) };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| "holds a .dockerconfigjson that is not JSON".to_string())?;
    let auths = value["auths"].as_object().ok_or("holds no auths".to_string())?;
    Ok(auths.keys().cloned().collect())
}

/// A credential of either kind, as explain needs it.
struct Cred<'a> {
    key: String,
    spec: &'a CredentialSpec,
    status: Option<&'a CredentialStatus>,
    /// Whether it selects the Pod's namespace, and if not, why.
    namespace: Result<(), String>,
}

fn credential_state(c: &Cred<'_>, now: Timestamp) -> CredentialState {
    let ready = c.status.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let expires = c.status.and_then(|s| s.expires_at.as_ref()).map(|t| t.0);
    CredentialState {
        credential: c.key.clone(),
        ready: ready.map(|r| format!("{} {}", r.status, r.reason)),
        ready_message: ready.map(|r| r.message.clone()).filter(|m| !m.is_empty()),
        expires_at: expires.map(|t| t.to_string()),
        expired: expires.is_some_and(|t| t <= now),
    }
}

/// Why a ClusterRegistryCredential does not select a namespace: the first
/// thing it lacks, in words.
fn why_not_selected(c: &ClusterRegistryCredential, ns: &str, labels: &BTreeMap<String, String>) -> String {
    let spec = &c.spec;
    if spec.exclude_namespaces.iter().flatten().any(|n| n == ns) {
        return format!("excludeNamespaces lists {ns}");
    }
    let mut wants = Vec::new();
    if let Some(sel) = &spec.namespace_selector {
        for (k, v) in sel.match_labels.iter().flatten() {
            if labels.get(k) != Some(v) {
                wants.push(format!("label {k}={v}"));
            }
        }
        for e in sel.match_expressions.iter().flatten() {
            let one = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_expressions: Some(vec![e.clone()]),
                ..Default::default()
            };
            if !selector_matches(&one, labels) {
                let values = e.values.as_deref().unwrap_or_default().join(",");
                wants.push(format!("{} {} ({values})", e.key, e.operator));
            }
        }
    }
    let names = spec.namespaces.as_deref().unwrap_or_default();
    match (wants.is_empty(), names.is_empty()) {
        (false, _) => format!(
            "namespace {ns} lacks {}{}",
            wants.join(" and "),
            if names.is_empty() { String::new() } else { format!(" and is not in namespaces {names:?}") }
        ),
        (true, false) => format!("namespace {ns} is not in namespaces {names:?} and no namespaceSelector matches it"),
        (true, true) => format!("namespace {ns} is not selected"),
    }
}

/// The credentials whose registries serve `image`.
fn credentials_for<'a>(cluster: &'a Cluster<'a>, image: &str) -> Vec<Cred<'a>> {
    let pod_ns = cluster.pod.metadata.namespace.as_deref().unwrap_or("default");
    let serves =
        |status: Option<&CredentialStatus>| status.is_some_and(|s| s.registries.iter().any(|r| key_matches(r, image)));
    let info = NamespaceInfo { name: pod_ns, labels: cluster.namespace_labels, terminating: false };
    let mut out = Vec::new();
    for c in cluster.cluster_credentials.iter().filter(|c| serves(c.status.as_ref())) {
        let name = c.metadata.name.clone().unwrap_or_default();
        let namespace = if cluster_targets(&c.spec, &info) {
            Ok(())
        } else {
            Err(why_not_selected(c, pod_ns, cluster.namespace_labels))
        };
        out.push(Cred {
            key: format!("ClusterRegistryCredential/{name}"),
            spec: &c.spec.credential,
            status: c.status.as_ref(),
            namespace,
        });
    }
    for c in cluster.credentials.iter().filter(|c| serves(c.status.as_ref())) {
        let name = c.metadata.name.clone().unwrap_or_default();
        out.push(Cred {
            key: format!("RegistryCredential/{pod_ns}/{name}"),
            spec: &c.spec.credential,
            status: c.status.as_ref(),
            namespace: Ok(()),
        });
    }
    out
}

/// The credential a managed Secret's owner annotation names.
fn owner_of<'a>(cluster: &'a Cluster<'a>, secret: &Secret) -> Option<Cred<'a>> {
    let owner = secret.metadata.annotations.as_ref()?.get(OWNER_ANNOTATION)?;
    let pod_ns = cluster.pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut parts = owner.splitn(3, '/');
    match (parts.next()?, parts.next(), parts.next()) {
        ("ClusterRegistryCredential", Some(name), None) => {
            let c = cluster.cluster_credentials.iter().find(|c| c.metadata.name.as_deref() == Some(name))?;
            Some(Cred { key: owner.clone(), spec: &c.spec.credential, status: c.status.as_ref(), namespace: Ok(()) })
        }
        ("RegistryCredential", Some(ns), Some(name)) if ns == pod_ns => {
            let c = cluster.credentials.iter().find(|c| c.metadata.name.as_deref() == Some(name))?;
            Some(Cred { key: owner.clone(), spec: &c.spec.credential, status: c.status.as_ref(), namespace: Ok(()) })
        }
        _ => None,
    }
}

fn is_managed(secret: &Secret) -> bool {
    secret.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0)).is_some_and(|v| v == MANAGED_BY.1)
}

/// Every container image of the Pod: `(where, image)`.
fn images(pod: &Pod) -> Vec<(String, String)> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    let mut out = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        out.push((format!("initContainers/{}", c.name), c.image.clone().unwrap_or_default()));
    }
    for c in &spec.containers {
        out.push((format!("containers/{}", c.name), c.image.clone().unwrap_or_default()));
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        out.push((format!("ephemeralContainers/{}", c.name), c.image.clone().unwrap_or_default()));
    }
    out
}

/// The containers (as [`images`] names them) whose image the kubelet has
/// pulled: their status carries an `imageID`.
fn pulled_containers(pod: &Pod) -> Vec<String> {
    let Some(status) = pod.status.as_ref() else { return Vec::new() };
    let mut out = Vec::new();
    for (kind, statuses) in [
        ("initContainers", &status.init_container_statuses),
        ("containers", &status.container_statuses),
        ("ephemeralContainers", &status.ephemeral_container_statuses),
    ] {
        for s in statuses.iter().flatten().filter(|s| !s.image_id.is_empty()) {
            out.push(format!("{kind}/{}", s.name));
        }
    }
    out
}

/// Explains every image of the Pod.
pub fn explain_pod(cluster: &Cluster<'_>) -> PodReport {
    let pod = cluster.pod;
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let spec = pod.spec.as_ref();
    let sa_name =
        spec.and_then(|s| s.service_account_name.clone()).filter(|s| !s.is_empty()).unwrap_or("default".into());
    let pod_secrets: Vec<String> =
        spec.and_then(|s| s.image_pull_secrets.clone()).unwrap_or_default().into_iter().map(|r| r.name).collect();
    let sa_secrets: Vec<String> = cluster
        .service_account
        .and_then(|sa| sa.image_pull_secrets.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    let pulled = pulled_containers(pod);
    let mut reports = Vec::new();
    for (container, image) in images(pod) {
        let was_pulled = pulled.contains(&container);
        reports.push(explain_image(cluster, &sa_name, &pod_secrets, &sa_secrets, container, image, was_pulled));
    }
    let mut report = PodReport {
        pod: format!("{ns}/{}", pod.metadata.name.clone().unwrap_or_default()),
        service_account: sa_name,
        fix: None,
        images: reports,
        verdict: Verdict::WouldPull,
        summary: String::new(),
    };
    report.summarize();
    report
}

impl PodReport {
    /// The Pod's verdict, summary line and fix from its images' (again,
    /// after a registry check changed some).
    pub fn summarize(&mut self) {
        self.verdict = self.images.iter().fold(Verdict::WouldPull, |v, r| v.and(r.verdict));
        let first_bad = self.images.iter().find(|r| r.verdict != Verdict::WouldPull);
        self.fix = first_bad.and_then(|r| r.fix.clone());
        self.summary = match first_bad {
            None => format!("{} would pull all {} image(s)", self.pod, self.images.len()),
            Some(r) => format!(
                "{} {} {}: {}",
                self.pod,
                if r.verdict == Verdict::WouldNotPull { "would not pull" } else { "may not pull" },
                r.image,
                r.reason
            ),
        };
    }
}

fn explain_image(
    cluster: &Cluster<'_>,
    sa_name: &str,
    pod_secrets: &[String],
    sa_secrets: &[String],
    container: String,
    image: String,
    pulled: bool,
) -> ImageReport {
    let registry = registry_of(&image);
    let mut checks = Vec::new();
    for name in pod_secrets {
        let mut check = SecretCheck {
            name: name.clone(),
            exists: false,
            on_service_account: sa_secrets.contains(name),
            registries: Vec::new(),
            matches: None,
            credential: None,
            problem: None,
        };
        match cluster.secrets.get(name) {
            None => check.problem = Some(format!("Secret {name} does not exist")),
            Some(secret) => {
                check.exists = true;
                check.credential = owner_of(cluster, secret).map(|c| credential_state(&c, cluster.now));
                match auths_keys(secret) {
                    Err(e) => check.problem = Some(format!("Secret {name} {e}")),
                    Ok(keys) => {
                        check.matches = keys.iter().find(|k| key_matches(k, &image)).cloned();
                        if check.matches.is_none() {
                            check.problem =
                                Some(format!("Secret {name} has no auths entry for {registry} (it has {keys:?})"));
                        }
                        check.registries = keys;
                    }
                }
                if check.problem.is_none()
                    && let Some(c) = &check.credential
                    && c.expired
                {
                    check.problem = Some(format!(
                        "Secret {name} holds a login that expired at {} ({} is {})",
                        c.expires_at.as_deref().unwrap_or("?"),
                        c.credential,
                        c.ready.as_deref().unwrap_or("not reported")
                    ));
                }
            }
        }
        checks.push(check);
    }
    let usable = checks.iter().find(|c| c.problem.is_none());
    let (verdict, reason, fix) = match usable {
        Some(c) => match &c.credential {
            Some(state) if state.ready.as_deref().is_some_and(|r| r.starts_with("True")) => (
                Verdict::WouldPull,
                format!("{} has a current login for {registry} from {}", c.name, state.credential),
                None,
            ),
            Some(state) => (
                Verdict::WouldPull,
                format!(
                    "{} has a login for {registry} from {} that has not expired, but the credential is {} ({})",
                    c.name,
                    state.credential,
                    state.ready.as_deref().unwrap_or("not reported"),
                    state.ready_message.as_deref().unwrap_or("no message")
                ),
                Some(format!("kubectl describe {}", kind_and_name(&state.credential))),
            ),
            None => (
                Verdict::CannotTell,
                format!(
                    "{} has an entry for {registry} but regcred did not write it, so whether the registry accepts it \
                     is unknown (--check-registry logs in with it)",
                    c.name
                ),
                None,
            ),
        },
        // The kubelet pulled it with no Secret that serves it: a credential
        // provider plugin on the node answered, or the registry let it pull
        // anonymously; neither is visible through the API.
        None if pulled => (
            Verdict::CannotTell,
            format!(
                "the kubelet pulled {image} without a pull Secret for {registry}: a kubelet credential provider \
                 plugin on the node (--image-credential-provider-config) or an anonymous pull; which one is not \
                 visible through the API, and another node may not have it"
            ),
            None,
        ),
        None => no_usable_secret(cluster, sa_name, pod_secrets, sa_secrets, &image, &registry, &checks),
    };
    ImageReport {
        container,
        image,
        registry,
        uses: usable.map(|c| c.name.clone()),
        secrets: checks,
        verdict,
        reason,
        fix,
        registry_check: None,
    }
}

/// Why no Secret of the Pod serves the image, from the credentials that
/// serve its registry.
fn no_usable_secret(
    cluster: &Cluster<'_>,
    sa_name: &str,
    pod_secrets: &[String],
    sa_secrets: &[String],
    image: &str,
    registry: &str,
    checks: &[SecretCheck],
) -> (Verdict, String, Option<String>) {
    let ns = cluster.pod.metadata.namespace.as_deref().unwrap_or("default");
    let creds = credentials_for(cluster, image);
    if creds.is_empty() {
        let first = checks.iter().find_map(|c| c.problem.clone());
        return match first {
            Some(problem) => (Verdict::WouldNotPull, problem, None),
            None => (
                Verdict::CannotTell,
                format!(
                    "no pull Secret and no regcred credential serves {registry}: the kubelet pulls anonymously, or \
                     through a kubelet credential provider plugin on the node"
                ),
                Some(format!("create a credential for {registry}, or check the node's credential provider")),
            ),
        };
    }
    // A credential that serves this namespace comes first.
    let selected: Vec<&Cred<'_>> = creds.iter().filter(|c| c.namespace.is_ok()).collect();
    let Some(cred) = selected.first() else {
        let closest = &creds[0];
        let why = closest.namespace.clone().err().unwrap_or_default();
        return (
            Verdict::WouldNotPull,
            format!("no credential for {registry} selects namespace {ns}: {} ({why})", closest.key),
            Some(format!("label the namespace or change {}'s namespace selection", closest.key)),
        );
    };
    let secret = &cred.spec.secret.name;
    let sa_labels = cluster.service_account.and_then(|sa| sa.metadata.labels.clone()).unwrap_or_default();
    let state = credential_state(cred, cluster.now);
    let in_namespace = cluster.secrets.get(secret);
    if in_namespace.is_none_or(|s| !is_managed(s)) {
        let what = match in_namespace {
            Some(_) => {
                format!("Secret {ns}/{secret} exists but is not regcred's (a conflict: regcred leaves it alone)")
            }
            None => format!("Secret {ns}/{secret} that {} should write is missing", cred.key),
        };
        return (
            Verdict::WouldNotPull,
            format!("{what}; {} is {}", cred.key, state.ready.as_deref().unwrap_or("not reported")),
            Some(format!("kubectl describe {} (its Ready condition says why)", kind_and_name(&cred.key))),
        );
    }
    if !service_account_selected(cred.spec.service_accounts.as_ref(), sa_name, &sa_labels) {
        return (
            Verdict::WouldNotPull,
            format!(
                "ServiceAccount {sa_name} is not selected by {} (serviceAccounts), so it does not list {secret}",
                cred.key
            ),
            Some(format!(
                "add {sa_name} to {}'s serviceAccounts.names, or list {secret} in the Pod's imagePullSecrets",
                cred.key
            )),
        );
    }
    let sa_lists = sa_secrets.iter().any(|s| s == secret);
    // ServiceAccount admission copies the ServiceAccount's list only into
    // a Pod that names none: entries the ServiceAccount does not have are
    // the Pod's own.
    let lists_own = pod_secrets.iter().any(|p| !sa_secrets.contains(p));
    if sa_lists && lists_own {
        let injection = if cred.spec.injection_enabled() { "" } else { ", or set injection.enabled on the credential" };
        return (
            Verdict::WouldNotPull,
            format!(
                "the Pod lists its own imagePullSecrets {pod_secrets:?}, so ServiceAccount admission did not add \
                 {sa_name}'s {secret}"
            ),
            Some(format!("add {secret} to the Pod's imagePullSecrets{injection}")),
        );
    }
    if sa_lists {
        let recovery = if cred.spec.recovery_enabled() || cred.spec.injection_enabled() {
            ""
        } else {
            "; set recovery.enabled (regcred replaces such Pods) or injection.enabled (new Pods get it at admission)"
        };
        return (
            Verdict::WouldNotPull,
            format!(
                "the Pod was created before regcred added {secret} to ServiceAccount {sa_name}, so it does not list it"
            ),
            Some(format!("delete the Pod so its controller recreates it{recovery}")),
        );
    }
    (
        Verdict::WouldNotPull,
        format!(
            "ServiceAccount {sa_name} does not list {secret} yet ({} is {})",
            cred.key,
            state.ready.as_deref().unwrap_or("not reported")
        ),
        Some(format!("kubectl describe {}", kind_and_name(&cred.key))),
    )
}

/// The repository and the reference (tag, or digest) of an image, as the
/// registry's API names them: `nginx` is `library/nginx` and `latest`.
pub fn repository_and_reference(image: &str) -> (String, String) {
    let normalized = normalize_image(image);
    let path = normalized.split_once('/').map(|(_, p)| p).unwrap_or_default();
    if let Some((repo, digest)) = path.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    match path.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (path.to_string(), "latest".to_string()),
    }
}

/// Takes the registry's answer into an image's verdict: what the registry
/// says overrides what the cluster suggests.
pub fn apply_registry_check(report: &mut ImageReport, check: RegistryCheck, not_found: bool) {
    let secret = check.secret.clone();
    if check.accepted && !not_found {
        report.verdict = Verdict::WouldPull;
        report.reason = format!("the registry accepted {secret}'s login and has the image ({})", check.answer);
        report.fix = None;
    } else if check.accepted {
        report.verdict = Verdict::WouldNotPull;
        report.reason = format!("the registry accepted {secret}'s login but has no such image ({})", check.answer);
        report.fix = Some("check the image name and tag".into());
    } else {
        report.verdict = Verdict::WouldNotPull;
        report.reason = format!("the registry refused {secret}'s login for this image: {}", check.answer);
        if report.fix.is_none() {
            report.fix =
                Some(match report.secrets.iter().find(|s| s.name == secret).and_then(|s| s.credential.as_ref()) {
                    Some(c) => format!(
                        "kubectl describe {} (its Ready condition and the registry's reason)",
                        kind_and_name(&c.credential)
                    ),
                    None => format!("replace the login in Secret {secret}"),
                });
        }
    }
    report.registry_check = Some(check);
}

/// A target namespace as `explain credential` sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetReport {
    pub namespace: String,
    /// `ok`, `missing`, or what stands in the way.
    pub secret: String,
    /// Selected ServiceAccounts that list the Secret.
    pub service_accounts_patched: Vec<String>,
    /// Selected ServiceAccounts that do not list it (yet).
    pub service_accounts_missing: Vec<String>,
    /// What the credential's status says went wrong there, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// The answer for a credential.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialReport {
    pub credential: String,
    pub secret: String,
    pub ready: Option<String>,
    pub ready_message: Option<String>,
    pub registries: Vec<String>,
    pub expires_at: Option<String>,
    pub next_refresh: Option<String>,
    pub targets: Vec<TargetReport>,
    /// The other clusters of a fleet, as the shards report them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clusters: Option<ClustersReport>,
    /// Every target holds the Secret and every selected ServiceAccount
    /// lists it (in every selected cluster of a fleet).
    pub complete: bool,
    pub summary: String,
}

/// The fleet's clusters of a credential, summed over its shards.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClustersReport {
    pub desired: i32,
    pub synced: i32,
    pub namespaces: i32,
    /// `cluster: reason: message`, by cluster.
    pub failed: Vec<String>,
}

/// The clusters report of a status, if the credential has fleet clusters.
fn clusters_report(status: Option<&CredentialStatus>) -> Option<ClustersReport> {
    let shards = status?.clusters.as_ref().filter(|s| !s.is_empty())?;
    let mut r = ClustersReport::default();
    for s in shards.values() {
        r.desired += s.desired;
        r.synced += s.synced;
        r.namespaces += s.namespaces;
        r.failed.extend(
            s.failed.iter().map(|f| format!("{}: {}: {}", f.cluster, f.reason, f.message.as_deref().unwrap_or(""))),
        );
    }
    r.failed.sort();
    Some(r)
}

/// What the cluster holds for one credential's targets.
pub struct CredentialFacts<'a> {
    /// `ClusterRegistryCredential/NAME` or `RegistryCredential/NS/NAME`.
    pub key: String,
    pub spec: &'a CredentialSpec,
    pub status: Option<&'a CredentialStatus>,
    /// The namespaces it selects now.
    pub targets: Vec<String>,
    /// The Secret of the credential's `secret.name`, by namespace.
    pub secrets: &'a BTreeMap<String, Secret>,
    /// The ServiceAccounts of each target namespace.
    pub service_accounts: &'a BTreeMap<String, Vec<ServiceAccount>>,
}

/// Explains a credential: for each target, the Secret and the
/// ServiceAccounts, and what the status says went wrong.
pub fn explain_credential(f: &CredentialFacts<'_>) -> CredentialReport {
    let secret_name = &f.spec.secret.name;
    let failures: BTreeMap<&str, String> = f
        .status
        .and_then(|s| s.targets.as_ref())
        .map(|t| {
            t.failed
                .iter()
                .map(|x| (x.namespace.as_str(), format!("{}: {}", x.reason, x.message.as_deref().unwrap_or(""))))
                .collect()
        })
        .unwrap_or_default();
    let mut targets = Vec::new();
    for ns in &f.targets {
        let secret = match f.secrets.get(ns) {
            None => "missing".to_string(),
            Some(s) if !is_managed(s) => "conflict: a Secret of that name exists and is not regcred's".to_string(),
            Some(s) => {
                let owner = s.metadata.annotations.as_ref().and_then(|a| a.get(OWNER_ANNOTATION));
                match owner {
                    Some(o) if *o == f.key => "ok".to_string(),
                    Some(o) => format!("conflict: written by {o}"),
                    None => "ok".to_string(),
                }
            }
        };
        let (mut patched, mut missing) = (Vec::new(), Vec::new());
        for sa in f.service_accounts.get(ns).into_iter().flatten() {
            let name = sa.metadata.name.clone().unwrap_or_default();
            let labels = sa.metadata.labels.clone().unwrap_or_default();
            if !service_account_selected(f.spec.service_accounts.as_ref(), &name, &labels) {
                continue;
            }
            let lists = sa.image_pull_secrets.iter().flatten().any(|r| &r.name == secret_name);
            if lists { patched.push(name) } else { missing.push(name) }
        }
        targets.push(TargetReport {
            namespace: ns.clone(),
            secret,
            service_accounts_patched: patched,
            service_accounts_missing: missing,
            failure: failures.get(ns.as_str()).cloned(),
        });
    }
    let bad: Vec<&TargetReport> =
        targets.iter().filter(|t| t.secret != "ok" || !t.service_accounts_missing.is_empty()).collect();
    let ready = f.status.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let clusters = clusters_report(f.status);
    let clusters_behind = clusters.as_ref().filter(|c| c.synced < c.desired);
    let summary = match bad.first() {
        None if let Some(c) = clusters_behind => format!(
            "{}: {} of {} target namespace(s) here hold {secret_name}; {} of {} other cluster(s) do{}",
            f.key,
            targets.len(),
            targets.len(),
            c.synced,
            c.desired,
            c.failed.first().map(|x| format!("; first failing: {x}")).unwrap_or_default()
        ),
        None => format!("{}: {} of {} target namespace(s) hold {secret_name}", f.key, targets.len(), targets.len()),
        Some(t) => format!(
            "{}: {} of {} target namespace(s) are missing something; first: {}: Secret {}{}",
            f.key,
            bad.len(),
            targets.len(),
            t.namespace,
            t.secret,
            if t.service_accounts_missing.is_empty() {
                String::new()
            } else {
                format!(", ServiceAccounts without it: {}", t.service_accounts_missing.join(", "))
            }
        ),
    };
    CredentialReport {
        credential: f.key.clone(),
        secret: secret_name.clone(),
        ready: ready.map(|r| format!("{} {}", r.status, r.reason)),
        ready_message: ready.map(|r| r.message.clone()).filter(|m| !m.is_empty()),
        registries: f.status.map(|s| s.registries.clone()).unwrap_or_default(),
        expires_at: f.status.and_then(|s| s.expires_at.as_ref()).map(|t| t.0.to_string()),
        next_refresh: f.status.and_then(|s| s.next_refresh_time.as_ref()).map(|t| t.0.to_string()),
        complete: bad.is_empty() && clusters_behind.is_none(),
        targets,
        clusters,
        summary,
    }
}

/// `ClusterRegistryCredential/x` → `clusterregistrycredential x`;
/// `RegistryCredential/ns/x` → `registrycredential x -n ns`.
fn kind_and_name(key: &str) -> String {
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        [kind, name] => format!("{} {name}", kind.to_ascii_lowercase()),
        [kind, ns, name] => format!("{} {name} -n {ns}", kind.to_ascii_lowercase()),
        _ => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const REG: &str = "registry.example.com";

    #[test]
    fn keys_match_images_as_the_kubelet_keyring_does() {
        assert!(key_matches("registry.example.com", "registry.example.com/team/app:1"));
        assert!(key_matches("https://registry.example.com/v2/", "registry.example.com/team/app"));
        assert!(key_matches("registry.example.com/team", "registry.example.com/team/app@sha256:00"));
        assert!(!key_matches("registry.example.com/team", "registry.example.com/teammate/app"));
        assert!(!key_matches("registry.example.com", "registry.example.com:5000/app"), "ports must be equal");
        assert!(key_matches("127.0.0.1:5000", "127.0.0.1:5000/regcred/test:v1"));
        assert!(key_matches("*.dkr.ecr.eu-west-1.amazonaws.com", "1.dkr.ecr.eu-west-1.amazonaws.com/app"));
        assert!(!key_matches("registry.example.com", "registry.example.com.evil.io/app"));
        assert!(key_matches("https://index.docker.io/v1/", "nginx"));
        assert!(key_matches("https://index.docker.io/v1/", "docker.io/library/nginx:1"));
        assert!(key_matches("docker.io", "team/app"));
        assert!(!key_matches("https://index.docker.io/v1/", "ghcr.io/team/app"));
        assert_eq!(normalize_image("nginx"), "docker.io/library/nginx");
        assert_eq!(normalize_image("team/app:1"), "docker.io/team/app:1");
        assert_eq!(normalize_image("localhost/app"), "localhost/app");
        assert_eq!(registry_of("Registry.Example.com:443/a"), "registry.example.com:443");
    }

    fn docker_config(keys: &[&str]) -> Value {
        let auths: serde_json::Map<String, Value> =
            keys.iter().map(|k| (k.to_string(), json!({"auth": "dTpw"}))).collect();
        let bytes = serde_json::to_vec(&json!({"auths": auths})).unwrap();
        json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes))
    }

    fn secret(name: &str, keys: &[&str], owner: Option<&str>) -> Secret {
        let mut s = json!({"metadata": {"name": name, "namespace": "team"}, "type": DOCKER_CONFIG_TYPE,
            "data": {".dockerconfigjson": docker_config(keys)}});
        if let Some(owner) = owner {
            s["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "regcred"});
            s["metadata"]["annotations"] = json!({OWNER_ANNOTATION: owner});
        }
        serde_json::from_value(s).unwrap()
    }

    fn fleet(extra: Value, ready: &str, expires: &str) -> ClusterRegistryCredential {
        let mut spec = json!({"provider": {"basic": {"registry": REG, "secretRef": {"name": "login"}}},
            "secret": {"name": "team-pull"}, "namespaceSelector": {"matchLabels": {"pull": "yes"}}});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(json!({"apiVersion": "regcred.dev/v1beta1", "kind": "ClusterRegistryCredential",
            "metadata": {"name": "fleet"}, "spec": spec,
            "status": {"registries": [REG], "expiresAt": expires, "conditions": [{"type": "Ready", "status": ready,
                "reason": if ready == "True" { "Synced" } else { "ProviderAuthFailed" }, "message": "m",
                "lastTransitionTime": "2026-12-01T00:00:00Z"}]}}))
        .unwrap()
    }

    fn pod(sa: Option<&str>, pull_secrets: &[&str]) -> Pod {
        let mut spec = json!({"containers": [{"name": "app", "image": format!("{REG}/team/app:1")}]});
        if let Some(sa) = sa {
            spec["serviceAccountName"] = json!(sa);
        }
        spec["imagePullSecrets"] = json!(pull_secrets.iter().map(|n| json!({"name": n})).collect::<Vec<_>>());
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "team"}, "spec": spec})).unwrap()
    }

    fn account(name: &str, pull_secrets: &[&str]) -> ServiceAccount {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "team"},
            "imagePullSecrets": pull_secrets.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()}))
        .unwrap()
    }

    struct Case {
        pod: Pod,
        labels: BTreeMap<String, String>,
        sa: ServiceAccount,
        secrets: Vec<Secret>,
        creds: Vec<ClusterRegistryCredential>,
    }

    impl Case {
        fn new(pod: Pod, sa: ServiceAccount) -> Self {
            Case {
                pod,
                labels: BTreeMap::from([("pull".to_string(), "yes".to_string())]),
                sa,
                secrets: vec![secret("team-pull", &[REG], Some("ClusterRegistryCredential/fleet"))],
                creds: vec![fleet(json!({}), "True", "2099-01-01T00:00:00Z")],
            }
        }

        fn run(&self) -> PodReport {
            let secrets = self.secrets.iter().map(|s| (s.metadata.name.clone().unwrap(), s.clone())).collect();
            explain_pod(&Cluster {
                pod: &self.pod,
                namespace_labels: &self.labels,
                service_account: Some(&self.sa),
                secrets: &secrets,
                cluster_credentials: &self.creds,
                credentials: &[],
                now: "2026-12-07T00:00:00Z".parse().unwrap(),
            })
        }
    }

    fn assert_verdict(r: &PodReport, verdict: Verdict, words: &str) {
        assert_eq!(r.verdict, verdict, "{r:#?}");
        let reason = &r.images[0].reason;
        assert!(reason.contains(words), "{words:?} not in {reason:?}");
        assert!(r.summary.contains(&r.images[0].image) || verdict == Verdict::WouldPull, "{}", r.summary);
    }

    #[test]
    fn a_pod_with_a_current_secret_would_pull() {
        let r = Case::new(pod(None, &["team-pull"]), account("default", &["team-pull"])).run();
        assert_verdict(
            &r,
            Verdict::WouldPull,
            "current login for registry.example.com from ClusterRegistryCredential/fleet",
        );
        assert_eq!(r.images[0].uses.as_deref(), Some("team-pull"));
        let s = &r.images[0].secrets[0];
        assert!(s.exists && s.on_service_account && s.matches.as_deref() == Some(REG));
        assert_eq!(Verdict::WouldPull.exit_code(), 0);
    }

    #[test]
    fn each_cause_is_named() {
        // The listed Secret is gone.
        let mut c = Case::new(pod(None, &["team-pull"]), account("default", &["team-pull"]));
        c.secrets.clear();
        let r = c.run();
        assert_verdict(
            &r,
            Verdict::WouldNotPull,
            "Secret team/team-pull that ClusterRegistryCredential/fleet should write is missing",
        );
        assert_eq!(r.images[0].secrets[0].problem.as_deref(), Some("Secret team-pull does not exist"));

        // A Secret for another registry.
        let mut c = Case::new(pod(None, &["other"]), account("default", &["other"]));
        c.secrets.push(secret("other", &["ghcr.io"], None));
        c.labels.clear();
        let r = c.run();
        assert_eq!(
            r.images[0].secrets[0].problem.as_deref().unwrap(),
            r#"Secret other has no auths entry for registry.example.com (it has ["ghcr.io"])"#
        );
        // ...in a namespace the credential does not select: the label it lacks.
        assert_verdict(&r, Verdict::WouldNotPull, "lacks label pull=yes");
        assert!(r.fix.as_deref().unwrap().contains("label the namespace"));

        // Excluded by name.
        let mut c = Case::new(pod(None, &[]), account("default", &[]));
        c.creds = vec![fleet(json!({"excludeNamespaces": ["team"]}), "True", "2099-01-01T00:00:00Z")];
        assert_verdict(&c.run(), Verdict::WouldNotPull, "excludeNamespaces lists team");

        // A ServiceAccount the credential does not select.
        let c = Case::new(pod(Some("builder"), &[]), account("builder", &[]));
        assert_verdict(
            &c.run(),
            Verdict::WouldNotPull,
            "ServiceAccount builder is not selected by ClusterRegistryCredential/fleet",
        );

        // Created before the ServiceAccount was patched.
        let c = Case::new(pod(None, &[]), account("default", &["team-pull"]));
        let r = c.run();
        assert_verdict(&r, Verdict::WouldNotPull, "created before regcred added team-pull to ServiceAccount default");
        assert!(r.fix.as_deref().unwrap().contains("recovery.enabled"), "{:?}", r.fix);

        // The Pod lists its own Secrets, so the ServiceAccount's were not copied.
        let mut c = Case::new(pod(None, &["mine"]), account("default", &["team-pull"]));
        c.secrets.push(secret("mine", &["ghcr.io"], None));
        let r = c.run();
        assert_verdict(&r, Verdict::WouldNotPull, "lists its own imagePullSecrets");
        assert!(r.fix.as_deref().unwrap().contains("injection.enabled"));

        // The login expired (the credential cannot refresh).
        let mut c = Case::new(pod(None, &["team-pull"]), account("default", &["team-pull"]));
        c.creds = vec![fleet(json!({}), "False", "2026-12-06T00:00:00Z")];
        let r = c.run();
        let problem = r.images[0].secrets[0].problem.clone().unwrap();
        assert!(problem.contains("expired at 2026-12-06") && problem.contains("False ProviderAuthFailed"), "{problem}");
        assert_eq!(r.verdict, Verdict::WouldNotPull);

        // Not Ready but not expired yet: pulls, with a warning.
        let mut c = Case::new(pod(None, &["team-pull"]), account("default", &["team-pull"]));
        c.creds = vec![fleet(json!({}), "False", "2099-01-01T00:00:00Z")];
        assert_verdict(&c.run(), Verdict::WouldPull, "not expired, but the credential is False ProviderAuthFailed");
    }

    #[test]
    fn what_regcred_did_not_write_cannot_be_judged() {
        let mut c = Case::new(pod(None, &["hand-made"]), account("default", &[]));
        c.secrets = vec![secret("hand-made", &[REG], None)];
        assert_verdict(&c.run(), Verdict::CannotTell, "regcred did not write it");
        let mut c = Case::new(pod(None, &[]), account("default", &[]));
        c.creds.clear();
        c.secrets.clear();
        let r = c.run();
        assert_verdict(&r, Verdict::CannotTell, "pulls anonymously, or through a kubelet credential provider");
        assert_eq!(r.verdict.exit_code(), 2);
    }

    #[test]
    fn every_container_counts_and_the_worst_wins() {
        let mut p = pod(None, &["team-pull"]);
        let spec = p.spec.as_mut().unwrap();
        spec.init_containers =
            Some(vec![serde_json::from_value(json!({"name": "init", "image": "ghcr.io/x/y"})).unwrap()]);
        spec.ephemeral_containers =
            Some(vec![serde_json::from_value(json!({"name": "debug", "image": format!("{REG}/debug")})).unwrap()]);
        let mut c = Case::new(p, account("default", &["team-pull"]));
        c.creds.push({
            let mut g = fleet(json!({}), "True", "2099-01-01T00:00:00Z");
            g.metadata.name = Some("ghcr".into());
            g.status.as_mut().unwrap().registries = vec!["ghcr.io".into()];
            g.spec.credential.secret.name = "ghcr-pull".into();
            g
        });
        let r = c.run();
        let containers: Vec<&str> = r.images.iter().map(|i| i.container.as_str()).collect();
        assert_eq!(containers, ["initContainers/init", "containers/app", "ephemeralContainers/debug"]);
        assert_eq!(r.verdict, Verdict::WouldNotPull, "the init container's registry has no Secret");
        assert!(r.summary.contains("ghcr.io/x/y"), "{}", r.summary);
        assert_eq!(Verdict::WouldNotPull.exit_code(), 1);
    }

    #[test]
    fn a_credential_names_each_target_missing_something() {
        let fleet =
            fleet(json!({"serviceAccounts": {"names": ["default", "builder"]}}), "True", "2099-01-01T00:00:00Z");
        let secrets: BTreeMap<String, Secret> = [
            ("a".to_string(), secret("team-pull", &[REG], Some("ClusterRegistryCredential/fleet"))),
            ("b".to_string(), secret("team-pull", &[REG], None)),
            ("d".to_string(), secret("team-pull", &[REG], Some("ClusterRegistryCredential/other"))),
        ]
        .into();
        let sas: BTreeMap<String, Vec<ServiceAccount>> = [
            ("a".to_string(), vec![account("default", &["team-pull"]), account("builder", &[]), account("other", &[])]),
            ("b".to_string(), vec![account("default", &[])]),
        ]
        .into();
        let facts = CredentialFacts {
            key: "ClusterRegistryCredential/fleet".into(),
            spec: &fleet.spec.credential,
            status: fleet.status.as_ref(),
            targets: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            secrets: &secrets,
            service_accounts: &sas,
        };
        let r = explain_credential(&facts);
        let by_ns: BTreeMap<&str, &TargetReport> = r.targets.iter().map(|t| (t.namespace.as_str(), t)).collect();
        assert_eq!(by_ns["a"].secret, "ok");
        assert_eq!(by_ns["a"].service_accounts_patched, ["default"]);
        assert_eq!(by_ns["a"].service_accounts_missing, ["builder"], "`other` is not selected");
        assert!(by_ns["b"].secret.starts_with("conflict: a Secret of that name exists and is not regcred's"));
        assert_eq!(by_ns["c"].secret, "missing");
        assert_eq!(by_ns["d"].secret, "conflict: written by ClusterRegistryCredential/other");
        assert!(!r.complete);
        assert!(r.summary.contains("4 of 4 target namespace(s) are missing something; first: a"), "{}", r.summary);
        assert_eq!(r.ready.as_deref(), Some("True Synced"));
    }

    #[test]
    fn a_credential_says_which_clusters_of_the_fleet_lack_its_secret() {
        let mut fleet = fleet(json!({}), "True", "2099-01-01T00:00:00Z");
        let shard = |desired, synced, failed: serde_json::Value| {
            serde_json::from_value::<crate::api::ShardStatus>(json!({
                "desired": desired, "synced": synced, "namespaces": synced * 3, "failed": failed
            }))
            .unwrap()
        };
        fleet.status.as_mut().unwrap().clusters = Some(BTreeMap::from([
            ("0".to_string(), shard(1, 1, json!([]))),
            (
                "5".to_string(),
                shard(
                    1,
                    0,
                    json!([{"cluster": "east", "reason": "ClusterUnreachable", "message": "connection refused"}]),
                ),
            ),
        ]));
        let secrets: BTreeMap<String, Secret> =
            [("a".to_string(), secret("team-pull", &[REG], Some("ClusterRegistryCredential/fleet")))].into();
        let sas: BTreeMap<String, Vec<ServiceAccount>> =
            [("a".to_string(), vec![account("default", &["team-pull"])])].into();
        let facts = CredentialFacts {
            key: "ClusterRegistryCredential/fleet".into(),
            spec: &fleet.spec.credential,
            status: fleet.status.as_ref(),
            targets: vec!["a".into()],
            secrets: &secrets,
            service_accounts: &sas,
        };
        let r = explain_credential(&facts);
        let c = r.clusters.as_ref().expect("a fleet report");
        assert_eq!((c.desired, c.synced, c.namespaces), (2, 1, 3));
        assert_eq!(c.failed, ["east: ClusterUnreachable: connection refused"]);
        assert!(!r.complete, "a cluster of the fleet lacks the Secret");
        assert!(r.summary.contains("1 of 2 other cluster(s) do; first failing: east"), "{}", r.summary);
        let mut no_fleet = fleet.status.clone().unwrap();
        no_fleet.clusters = None;
        let facts = CredentialFacts { status: Some(&no_fleet), ..facts };
        assert!(explain_credential(&facts).complete, "no fleet: the local targets decide");
    }

    #[test]
    fn an_image_pulled_without_a_secret_was_pulled_by_a_plugin_or_anonymously() {
        let mut p = pod(None, &[]);
        p.status = Some(
            serde_json::from_value(json!({"containerStatuses": [{"name": "app", "image": "x", "imageID": "sha256:00",
                "ready": true, "restartCount": 0}]}))
            .unwrap(),
        );
        let mut c = Case::new(p, account("default", &[]));
        c.labels.clear();
        let r = c.run();
        assert_verdict(&r, Verdict::CannotTell, "kubelet credential provider plugin");
        // Not pulled yet: the Secret analysis stands.
        let mut c = Case::new(pod(None, &[]), account("default", &[]));
        c.labels.clear();
        assert_verdict(&c.run(), Verdict::WouldNotPull, "lacks label pull=yes");
    }
}
