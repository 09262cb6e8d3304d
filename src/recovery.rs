//! Recovery of Pods that missed their pull Secret: which Pods may be
//! deleted so that their controller recreates them with it, and how fast.
//! Pure functions; the controller (`controller::recovery`) does the I/O.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::api::ServiceAccountSelector;
use crate::targets::service_account_selected;

/// Owners that recreate a deleted Pod.
pub const CONTROLLERS: [&str; 4] = ["ReplicaSet", "StatefulSet", "Job", "DaemonSet"];
/// Waiting reasons of a container whose image cannot be pulled.
pub const PULL_FAILURES: [&str; 2] = ["ErrImagePull", "ImagePullBackOff"];

/// What recovery needs to know about a Pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodFacts {
    /// `spec.serviceAccountName` (`default` when empty).
    pub service_account: String,
    /// Names in `spec.imagePullSecrets`.
    pub pull_secrets: Vec<String>,
    /// Kind of the owner with `controller: true`, if any.
    pub controller: Option<String>,
    /// Being deleted already.
    pub deleting: bool,
    /// `status.phase`.
    pub phase: Option<String>,
    /// A container (init or app) has started or finished.
    pub started: bool,
    /// Images of containers waiting with [`PULL_FAILURES`].
    pub failing_images: Vec<String>,
}

impl PodFacts {
    pub fn of(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let statuses: Vec<&ContainerStatus> = status
            .into_iter()
            .flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()))
            .collect();
        let started = statuses
            .iter()
            .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some() || s.terminated.is_some()) || c.ready);
        let failing_images = statuses
            .iter()
            .filter(|c| {
                let reason = c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref());
                reason.is_some_and(|r| PULL_FAILURES.contains(&r))
            })
            .map(|c| c.image.clone())
            .collect();
        PodFacts {
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".into()),
            pull_secrets: spec
                .into_iter()
                .flat_map(|s| s.image_pull_secrets.iter().flatten())
                .map(|r| r.name.clone())
                .collect(),
            controller: pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.kind.clone()),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            phase: status.and_then(|s| s.phase.clone()),
            started,
            failing_images,
        }
    }
}

/// What recovery knows about the credential and the Pod's ServiceAccount.
pub struct Credential<'a> {
    pub secret: &'a str,
    pub service_accounts: Option<&'a ServiceAccountSelector>,
    /// Registry hosts in the credential's Secret.
    pub registries: &'a [String],
    /// Injection is in effect: a new Pod gets the Secret at admission.
    pub injection: bool,
    /// Labels of the Pod's ServiceAccount, if it exists.
    pub account_labels: Option<&'a BTreeMap<String, String>>,
    /// The Pod's ServiceAccount lists the Secret in `imagePullSecrets`.
    pub account_lists_secret: bool,
}

/// What to do with a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Delete it: its controller recreates it with the Secret.
    Recover { image: String },
    /// It may need recovery but cannot be judged yet (no pull attempt yet,
    /// or its replacement would not get the Secret yet): look again later.
    Wait(&'static str),
    /// Leave it alone, for this reason.
    Leave(&'static str),
}

/// Whether a Pod that missed the pull Secret should be deleted. Never a
/// Pod without a controller that recreates it, never one that has started.
pub fn decide(pod: &PodFacts, cred: &Credential<'_>) -> Verdict {
    if pod.deleting {
        return Verdict::Leave("being deleted");
    }
    if !pod.controller.as_deref().is_some_and(|k| CONTROLLERS.contains(&k)) {
        return Verdict::Leave("no ReplicaSet, StatefulSet, Job or DaemonSet recreates it");
    }
    if pod.pull_secrets.iter().any(|s| s == cred.secret) {
        return Verdict::Leave("lists the Secret");
    }
    let Some(labels) = cred.account_labels else {
        return Verdict::Leave("its ServiceAccount does not exist");
    };
    if !service_account_selected(cred.service_accounts, &pod.service_account, labels) {
        return Verdict::Leave("its ServiceAccount is not selected");
    }
    if pod.started || pod.phase.as_deref().is_some_and(|p| p != "Pending") {
        return Verdict::Leave("it is running or has run");
    }
    let Some(image) = pod.failing_images.iter().find(|i| cred.registries.iter().any(|r| image_on_registry(i, r)))
    else {
        return if pod.failing_images.is_empty() {
            Verdict::Wait("no failed pull yet")
        } else {
            Verdict::Leave("its failing images are on other registries")
        };
    };
    // The replacement must get the Secret, or deleting is pointless.
    if !cred.injection {
        if !pod.pull_secrets.is_empty() {
            return Verdict::Leave("it lists pull Secrets of its own and injection is off");
        }
        if !cred.account_lists_secret {
            return Verdict::Wait("its ServiceAccount does not list the Secret yet");
        }
    }
    Verdict::Recover { image: image.clone() }
}

/// The registry host of an image reference, as the kubelet matches pull
/// Secrets: the first path component when it looks like a host (has a
/// `.` or `:`, or is `localhost`), else Docker Hub.
pub fn image_host(image: &str) -> String {
    let image = image.split('@').next().unwrap_or(image);
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_ascii_lowercase()
        }
        _ => "docker.io".into(),
    }
}

fn normalize_registry(key: &str) -> String {
    let s = key.trim();
    let s = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// Whether `image` is served by `registry` (a key of the credential's
/// docker config: a host, `https://index.docker.io/v1/`, or a `*.` glob
/// for one label as the kubelet accepts).
pub fn image_on_registry(image: &str, registry: &str) -> bool {
    let host = normalize_registry(&image_host(image));
    let registry = normalize_registry(registry);
    match registry.strip_prefix("*.") {
        Some(suffix) => host.split_once('.').is_some_and(|(_, rest)| rest == suffix),
        None => host == registry,
    }
}

/// A token bucket: at most `burst` deletions at once, then one per
/// `every`.
#[derive(Debug)]
pub struct Bucket {
    burst: f64,
    every: Duration,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(burst: u32, every: Duration, now: Instant) -> Self {
        Bucket { burst: burst as f64, every, tokens: burst as f64, last: now }
    }

    /// Takes a token, or says how long to wait for one.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() / self.every.as_secs_f64();
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.every.mul_f64(1.0 - self.tokens))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stuck() -> PodFacts {
        PodFacts {
            service_account: "default".into(),
            pull_secrets: vec![],
            controller: Some("ReplicaSet".into()),
            deleting: false,
            phase: Some("Pending".into()),
            started: false,
            failing_images: vec!["registry.example.com/app:1".into()],
        }
    }

    fn cred<'a>(labels: &'a BTreeMap<String, String>, registries: &'a [String]) -> Credential<'a> {
        Credential {
            secret: "pull",
            service_accounts: None,
            registries,
            injection: false,
            account_labels: Some(labels),
            account_lists_secret: true,
        }
    }

    #[test]
    fn a_stuck_pod_of_a_controller_is_recovered() {
        let labels = BTreeMap::new();
        let regs = vec!["registry.example.com".to_string()];
        assert_eq!(
            decide(&stuck(), &cred(&labels, &regs)),
            Verdict::Recover { image: "registry.example.com/app:1".into() }
        );
        for kind in CONTROLLERS {
            let pod = PodFacts { controller: Some(kind.into()), ..stuck() };
            assert!(matches!(decide(&pod, &cred(&labels, &regs)), Verdict::Recover { .. }), "{kind}");
        }
    }

    #[test]
    fn never_a_pod_without_controller_or_one_that_runs() {
        let labels = BTreeMap::new();
        let regs = vec!["registry.example.com".to_string()];
        let c = cred(&labels, &regs);
        for pod in [
            PodFacts { controller: None, ..stuck() },
            PodFacts { controller: Some("Node".into()), ..stuck() },
            PodFacts { controller: Some("Deployment".into()), ..stuck() },
            PodFacts { phase: Some("Running".into()), ..stuck() },
            PodFacts { started: true, ..stuck() },
            PodFacts { phase: Some("Failed".into()), ..stuck() },
            PodFacts { deleting: true, ..stuck() },
        ] {
            assert!(matches!(decide(&pod, &c), Verdict::Leave(_)), "{pod:?}");
        }
    }

    #[test]
    fn only_pods_that_miss_the_secret_for_a_selected_account_and_fail_on_our_registry() {
        let labels = BTreeMap::new();
        let regs = vec!["registry.example.com".to_string()];
        let c = cred(&labels, &regs);
        let has = PodFacts { pull_secrets: vec!["pull".into()], ..stuck() };
        assert_eq!(decide(&has, &c), Verdict::Leave("lists the Secret"));
        let other_sa = PodFacts { service_account: "builder".into(), ..stuck() };
        assert_eq!(decide(&other_sa, &c), Verdict::Leave("its ServiceAccount is not selected"));
        let other_registry = PodFacts { failing_images: vec!["quay.io/x/y".into()], ..stuck() };
        assert_eq!(decide(&other_registry, &c), Verdict::Leave("its failing images are on other registries"));
        let not_yet = PodFacts { failing_images: vec![], ..stuck() };
        assert_eq!(decide(&not_yet, &c), Verdict::Wait("no failed pull yet"));
        let no_account = Credential { account_labels: None, ..cred(&labels, &regs) };
        assert!(matches!(decide(&stuck(), &no_account), Verdict::Leave(_)));
        let selector = ServiceAccountSelector { names: Some(vec!["builder".into()]), ..Default::default() };
        let by_name = Credential { service_accounts: Some(&selector), ..cred(&labels, &regs) };
        assert!(matches!(decide(&other_sa, &by_name), Verdict::Recover { .. }));
    }

    #[test]
    fn the_replacement_must_get_the_secret() {
        let labels = BTreeMap::new();
        let regs = vec!["registry.example.com".to_string()];
        let not_patched = Credential { account_lists_secret: false, ..cred(&labels, &regs) };
        assert_eq!(decide(&stuck(), &not_patched), Verdict::Wait("its ServiceAccount does not list the Secret yet"));
        let own = PodFacts { pull_secrets: vec!["theirs".into()], ..stuck() };
        assert!(matches!(decide(&own, &cred(&labels, &regs)), Verdict::Leave(_)), "the SA's entry would not be copied");
        let injected = Credential { injection: true, account_lists_secret: false, ..cred(&labels, &regs) };
        assert!(matches!(decide(&own, &injected), Verdict::Recover { .. }));
        assert!(matches!(decide(&stuck(), &injected), Verdict::Recover { .. }));
    }

    #[test]
    fn images_match_registries_as_the_kubelet_does() {
        assert_eq!(image_host("nginx"), "docker.io");
        assert_eq!(image_host("library/nginx:1"), "docker.io");
        assert_eq!(image_host("ghcr.io/org/app@sha256:abc"), "ghcr.io");
        assert_eq!(image_host("127.0.0.1:5000/app"), "127.0.0.1:5000");
        assert_eq!(image_host("localhost/app"), "localhost");
        assert!(image_on_registry("nginx", "https://index.docker.io/v1/"));
        assert!(image_on_registry("docker.io/library/nginx", "https://index.docker.io/v1/"));
        assert!(image_on_registry("GHCR.io/org/app", "ghcr.io"));
        assert!(!image_on_registry("ghcr.io.evil.com/app", "ghcr.io"));
        assert!(image_on_registry("r.azurecr.io/app", "*.azurecr.io"));
        assert!(!image_on_registry("a.b.azurecr.io/app", "*.azurecr.io"));
        assert!(!image_on_registry("127.0.0.1:5001/app", "127.0.0.1:5000"));
    }

    #[test]
    fn facts_are_read_from_the_pod() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "2", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "r.example/app"}], "imagePullSecrets": [{"name": "theirs"}]},
            "status": {"phase": "Pending", "containerStatuses": [
                {"name": "c", "image": "r.example/app", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}
        }))
        .unwrap();
        let f = PodFacts::of(&pod);
        assert_eq!(f.service_account, "default");
        assert_eq!(f.controller.as_deref(), Some("ReplicaSet"));
        assert_eq!(f.pull_secrets, ["theirs"]);
        assert_eq!(f.failing_images, ["r.example/app"]);
        assert!(!f.started && !f.deleting);
    }

    #[test]
    fn the_bucket_allows_a_burst_then_a_steady_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2, Duration::from_secs(1), t0);
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900), "{wait:?}");
        assert!(b.take(t0 + Duration::from_millis(500)).is_err());
        assert!(b.take(t0 + Duration::from_millis(1100)).is_ok());
        assert!(b.take(t0 + Duration::from_secs(100)).is_ok());
        assert!(b.take(t0 + Duration::from_secs(100)).is_ok());
        assert!(b.take(t0 + Duration::from_secs(100)).is_err(), "the burst is capped");
    }
}
