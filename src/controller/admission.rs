//! Admission-time injection as the controller sees it: whether the
//! cluster serves the MutatingAdmissionPolicy API, and whether the chart's
//! policies and their bindings are in place (see [`crate::admission`]).
//!
//! Discovery at start decides whether the API is served. If it is, the
//! policies (names) and bindings (the policy each binds) are watched into
//! small caches; a change wakes the credentials that ask for injection, so
//! their `Injection` condition follows. regcred reads these objects and
//! never writes them. If the API is not served, credentials that ask for
//! injection say so and everything else works as before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};

use super::cache::Cache;
use super::{Context, CredentialKind};
use crate::admission::{ADMISSION_GROUP, BINDINGS, BindingInfo, Injection, POLICIES, injection, served_version};
use crate::reasons;

/// The cluster's MutatingAdmissionPolicy API, as regcred uses it.
pub struct Admission {
    /// The served version (`v1` or `v1beta1`), `None` when not served.
    pub version: Option<&'static str>,
    /// Every binding, by name.
    pub bindings: Arc<Cache<BindingInfo>>,
    /// Names of the installed policies.
    pub policies: Arc<Cache<()>>,
}

impl Admission {
    pub fn unsupported() -> Self {
        Admission { version: None, bindings: Arc::default(), policies: Arc::default() }
    }

    fn resource(&self, kind: &str, plural: &str) -> Option<ApiResource> {
        let gvk = GroupVersionKind::gvk(ADMISSION_GROUP, self.version?, kind);
        Some(ApiResource::from_gvk_with_plural(&gvk, plural))
    }
}

/// Asks discovery which version of the API the cluster serves. A failure
/// other than "not served" is retried a few times, then counts as not
/// served (logged).
pub async fn discover(client: &Client) -> Admission {
    let mut lists: HashMap<&str, Option<Vec<String>>> = HashMap::new();
    for version in crate::admission::VERSIONS {
        let gv = format!("{ADMISSION_GROUP}/{version}");
        let mut attempt = 0;
        let names = loop {
            match client.list_api_group_resources(&gv).await {
                Ok(list) => break Some(list.resources.into_iter().map(|r| r.name).collect::<Vec<_>>()),
                Err(kube::Error::Api(e)) if e.code == 404 => break None,
                Err(e) if attempt < 4 => {
                    attempt += 1;
                    tracing::warn!(error = %e, "discovery of {gv} failed; retrying");
                    tokio::time::sleep(Duration::from_secs(attempt)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "discovery of {gv} failed; taking it as not served");
                    break None;
                }
            }
        };
        lists.insert(version, names);
    }
    let version = served_version(|v| lists.get(v).and_then(|n| n.as_deref()));
    match version {
        Some(v) => {
            tracing::info!("the cluster serves {ADMISSION_GROUP}/{v} MutatingAdmissionPolicies: injection available")
        }
        None => tracing::info!(
            "the cluster serves no MutatingAdmissionPolicy API ({ADMISSION_GROUP} v1 or v1beta1): \
             credentials asking for injection report {}",
            reasons::ADMISSION_POLICY_UNSUPPORTED
        ),
    }
    Admission { version, ..Admission::unsupported() }
}

/// The watches behind the caches, if the API is served. Each yields `()`
/// when a policy or binding changed.
pub fn watches(client: &Client, admission: &Admission) -> Vec<futures::stream::BoxStream<'static, ()>> {
    let (Some(bindings_ar), Some(policies_ar)) = (
        admission.resource("MutatingAdmissionPolicyBinding", BINDINGS),
        admission.resource("MutatingAdmissionPolicy", POLICIES),
    ) else {
        return Vec::new();
    };
    let cache = admission.bindings.clone();
    let bindings = watch_into(
        watcher::watcher(Api::<DynamicObject>::all_with(client.clone(), &bindings_ar), watcher::Config::default()),
        move |event: &Event<DynamicObject>| {
            cache.apply(event, |b| (String::new(), b.name_any()), |b| BindingInfo::of(&b.data));
        },
        BINDINGS,
    );
    let cache = admission.policies.clone();
    let policies = watch_into(
        watcher::watcher(
            Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), &policies_ar),
            watcher::Config::default(),
        ),
        move |event| cache.apply(event, |p| (String::new(), p.name_any()), |_| ()),
        POLICIES,
    );
    vec![bindings.boxed(), policies.boxed()]
}

fn watch_into<K: Send + 'static>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    apply: impl Fn(&Event<K>) + Send + 'static,
    what: &'static str,
) -> impl Stream<Item = ()> + Send {
    stream.default_backoff().filter_map(move |event| {
        let out = match event {
            Ok(event) => {
                apply(&event);
                match &event {
                    Event::Apply(_) | Event::InitApply(_) | Event::Delete(_) => Some(()),
                    Event::Init | Event::InitDone => None,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching {what} failed; retrying");
                None
            }
        };
        futures::future::ready(out)
    })
}

/// The `Injection` condition: `(status, reason, message)`, or `None` when
/// injection is off.
pub fn condition(state: &Injection, policy: &str, secret: &str) -> Option<(bool, &'static str, String)> {
    match state {
        Injection::Off => None,
        Injection::Active { bindings } => Some((
            true,
            reasons::INJECTION_ACTIVE,
            format!(
                "MutatingAdmissionPolicy {policy} (bound by {}): new Pods running as a ServiceAccount selected by \
                 name get {secret} in spec.imagePullSecrets",
                bindings.join(", ")
            ),
        )),
        Injection::PolicyMissing => Some((
            false,
            reasons::ADMISSION_POLICY_MISSING,
            format!(
                "the MutatingAdmissionPolicy {policy} is not installed (the regcred chart installs it and its \
                 binding); nothing is injected"
            ),
        )),
        Injection::BindingMissing => Some((
            false,
            reasons::ADMISSION_POLICY_MISSING,
            format!(
                "the MutatingAdmissionPolicy {policy} is installed but no MutatingAdmissionPolicyBinding passes \
                 credentials to it (paramRef.selector; the regcred chart installs one named {policy}); nothing \
                 is injected"
            ),
        )),
        Injection::Unsupported => Some((
            false,
            reasons::ADMISSION_POLICY_UNSUPPORTED,
            format!(
                "the cluster serves no MutatingAdmissionPolicy API ({ADMISSION_GROUP}/v1 from Kubernetes 1.36, \
                 v1beta1 on 1.34-1.35 where enabled); Pods get {secret} only through their ServiceAccount's \
                 imagePullSecrets"
            ),
        )),
    }
}

/// Where injection stands for a credential, from the caches.
pub fn state<K: CredentialKind>(obj: &K, ctx: &Context) -> Injection {
    let admission = &ctx.admission;
    let policy = K::policy_name();
    let installed = admission.policies.with("", policy, |_| ()).is_some();
    admission.bindings.with_all(|all| {
        injection(
            obj.credential().injection_enabled(),
            admission.version.is_some(),
            policy,
            installed,
            all.map(|(_, name, b)| (name, b)),
        )
    })
}
