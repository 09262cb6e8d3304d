//! Recovery of Pods that missed the pull Secret (`recovery.enabled`).
//!
//! When a credential first writes its Secret into a namespace, the Pods
//! already there were created without it: before the ServiceAccount was
//! patched, or listing pull Secrets of their own. regcred lists that
//! namespace's Pods once (no Pod watch) and deletes, rate-limited, those
//! [`crate::recovery::decide`] picks; their controller recreates them and
//! the new Pods get the Secret. Pods that cannot be judged yet (no pull
//! attempted yet, or a ServiceAccount patch still in flight) are read
//! again one by one a few times over the next three minutes.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource, ResourceExt};

use kube::Client;
use kube::runtime::events::Recorder;

use super::index::Index;
use crate::api::ServiceAccountSelector;
use crate::metrics::{CredentialLabels, Metrics};
use crate::reasons;
use crate::recovery::{Bucket, Credential, PodFacts, Verdict, decide};

/// Pod deletions at once, then one per [`EVERY`], over all credentials.
const BURST: u32 = 10;
const EVERY: Duration = Duration::from_millis(500);
/// Time for the namespace's ServiceAccount patch to land before the list.
const FIRST_LOOK: Duration = Duration::from_secs(2);
/// Waits before reading undecided Pods again.
const LOOK_AGAIN: [u64; 6] = [5, 10, 20, 30, 60, 60];

/// Namespaces whose Pods are read at once (a credential that starts
/// serving thousands of namespaces does not list them all together).
const READERS: usize = 4;

/// The limits shared by every recovery.
pub struct Recovery {
    bucket: Mutex<Bucket>,
    readers: tokio::sync::Semaphore,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            bucket: Mutex::new(Bucket::new(BURST, EVERY, Instant::now())),
            readers: tokio::sync::Semaphore::new(READERS),
        }
    }
}

impl Recovery {
    async fn wait_turn(&self) {
        loop {
            let wait = match self.bucket.lock().take(Instant::now()) {
                Ok(()) => return,
                Err(wait) => wait,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Where recovery runs: the cluster holding the Pods (the local one or a
/// spoke of the fleet), its index and limits, and where Events go.
pub struct Site {
    pub client: Client,
    pub index: Arc<Index>,
    pub limits: Recovery,
    pub metrics: Arc<Metrics>,
    /// Events about a Pod, in the Pod's cluster.
    pub pod_events: Recorder,
    /// Events about the credential, in the cluster regcred runs in.
    pub credential_events: Recorder,
}

/// One namespace to look at for one credential.
pub struct Job {
    pub reference: ObjectReference,
    pub labels: CredentialLabels,
    pub namespace: String,
    pub secret: String,
    pub service_accounts: Option<ServiceAccountSelector>,
    pub registries: Vec<String>,
    /// Injection is in effect for the credential.
    pub injection: bool,
}

/// Looks at the namespace's Pods in the background.
pub fn start(ctx: Arc<Site>, job: Job) {
    tokio::spawn(async move {
        tokio::time::sleep(FIRST_LOOK).await;
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &job.namespace);
        let permit = ctx.limits.readers.acquire().await.expect("never closed");
        let listed = api.list(&ListParams::default()).await;
        drop(permit);
        let pods = match listed {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(namespace = %job.namespace, error = %e, "listing Pods for recovery failed");
                return;
            }
        };
        let mut undecided = handle(&ctx, &job, &api, pods).await;
        for secs in LOOK_AGAIN {
            if undecided.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let mut pods = Vec::new();
            for name in undecided {
                match api.get_opt(&name).await {
                    Ok(Some(pod)) => pods.push(pod),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(namespace = %job.namespace, pod = %name, error = %e, "reading a Pod failed")
                    }
                }
            }
            undecided = handle(&ctx, &job, &api, pods).await;
        }
    });
}

/// Decides about each Pod, recovers those to recover, and returns the
/// names of those to look at again.
async fn handle(ctx: &Site, job: &Job, api: &Api<Pod>, pods: Vec<Pod>) -> Vec<String> {
    let mut undecided = Vec::new();
    for pod in pods {
        let facts = PodFacts::of(&pod);
        let account = ctx.index.service_accounts.with(&job.namespace, &facts.service_account, |a| {
            (a.labels.clone(), a.image_pull_secrets.contains(&job.secret))
        });
        let credential = Credential {
            secret: &job.secret,
            service_accounts: job.service_accounts.as_ref(),
            registries: &job.registries,
            injection: job.injection,
            account_labels: account.as_ref().map(|(labels, _)| labels),
            account_lists_secret: account.as_ref().is_some_and(|(_, listed)| *listed),
        };
        let name = pod.name_any();
        match decide(&facts, &credential) {
            Verdict::Recover { image } => recover(ctx, job, api, &pod, &image).await,
            Verdict::Wait(why) => {
                tracing::debug!(namespace = %job.namespace, pod = %name, "recovery: look again: {why}");
                undecided.push(name);
            }
            Verdict::Leave(why) => tracing::debug!(namespace = %job.namespace, pod = %name, "recovery: left: {why}"),
        }
    }
    undecided
}

async fn recover(ctx: &Site, job: &Job, api: &Api<Pod>, pod: &Pod, image: &str) {
    ctx.limits.wait_turn().await;
    let name = pod.name_any();
    let owner =
        pod.owner_references().iter().find(|o| o.controller == Some(true)).map(|o| format!("{} {}", o.kind, o.name));
    let owner = owner.unwrap_or_default();
    // Exactly the Pod that was judged: a Pod that changed since (started,
    // or replaced) is left alone.
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: pod.uid(), resource_version: pod.resource_version() }),
        ..Default::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
            tracing::debug!(namespace = %job.namespace, pod = %name, "recovery: the Pod changed or went away first");
            return;
        }
        Err(e) => {
            tracing::warn!(namespace = %job.namespace, pod = %name, error = %e, "deleting a stuck Pod failed");
            return;
        }
    }
    tracing::info!(namespace = %job.namespace, pod = %name, %image, %owner, "recovered a Pod that missed the pull Secret");
    ctx.metrics.pods_recovered.get_or_create(&job.labels).inc();
    let secret = &job.secret;
    let on_pod = format!(
        "Deleted by regcred: it was created without pull Secret {secret} and cannot pull {image}; {owner} recreates it with the Secret"
    );
    let on_credential = format!(
        "Pod {}/{name} missed Secret {secret} and could not pull {image}; deleted so that {owner} recreates it",
        job.namespace
    );
    let targets = [
        (on_pod, pod.object_ref(&()), &ctx.pod_events),
        (on_credential, job.reference.clone(), &ctx.credential_events),
    ];
    for (note, reference, recorder) in targets {
        let event = KubeEvent {
            type_: EventType::Normal,
            reason: reasons::POD_RECOVERED.into(),
            note: Some(note),
            action: "Recover".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, "publishing an Event failed");
        }
    }
}
