//! MutatingAdmissionPolicyBindings: one per credential with
//! `injection.enabled` (see [`crate::admission`] for what they hold).
//!
//! Discovery at start decides whether the cluster serves the API. If it
//! does, the bindings regcred manages (by label) and the names of the
//! installed policies are watched into small caches, so a reconcile
//! compares and writes only what differs (no write at idle) and a binding
//! someone deletes or edits is put back. If it does not, credentials that
//! ask for injection say so in their `Injection` condition and everything
//! else works as before.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PartialObjectMeta, Patch, PatchParams,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::Value;

use super::cache::Cache;
use super::{Context, CredentialKind, FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, OWNER_ANNOTATION};
use crate::admission::{
    ADMISSION_GROUP, BINDINGS, BindingOwner, POLICIES, binding_name, comparable, desired_binding, holds, served_version,
};
use crate::reasons;

/// What is cached of a binding regcred manages.
#[derive(Clone)]
pub struct BindingEntry {
    pub resource_version: Option<u64>,
    /// [`comparable`] parts.
    pub object: Value,
}

/// The cluster's MutatingAdmissionPolicy API, as regcred uses it.
pub struct Admission {
    /// The served version (`v1` or `v1beta1`), `None` when not served.
    pub version: Option<&'static str>,
    pub bindings: Arc<Cache<BindingEntry>>,
    /// Names of the installed policies.
    pub policies: Arc<Cache<()>>,
    /// `(hash of the comparable desired object, resourceVersion)` of
    /// regcred's own last write of each binding, until the cache catches up.
    written: Mutex<HashMap<String, (u64, u64)>>,
}

impl Admission {
    pub fn unsupported() -> Self {
        Admission { version: None, bindings: Arc::default(), policies: Arc::default(), written: Mutex::default() }
    }

    fn resource(&self, kind: &str, plural: &str) -> Option<ApiResource> {
        let gvk = GroupVersionKind::gvk(ADMISSION_GROUP, self.version?, kind);
        Some(ApiResource::from_gvk_with_plural(&gvk, plural))
    }

    fn binding_resource(&self) -> Option<ApiResource> {
        self.resource("MutatingAdmissionPolicyBinding", BINDINGS)
    }

    fn policy_resource(&self) -> Option<ApiResource> {
        self.resource("MutatingAdmissionPolicy", POLICIES)
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

fn rv_of(meta: &kube::api::ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
}

/// A change seen by the watches.
pub enum Change {
    /// A binding regcred manages changed or went away.
    Binding { name: String, owner: Option<String>, deleted: bool },
    /// A policy was installed, changed or removed.
    Policy,
}

/// The watches behind the caches, if the API is served.
pub fn watches(client: &Client, admission: &Admission) -> Vec<futures::stream::BoxStream<'static, Change>> {
    let (Some(bindings_ar), Some(policies_ar)) = (admission.binding_resource(), admission.policy_resource()) else {
        return Vec::new();
    };
    let cfg = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let cache = admission.bindings.clone();
    let bindings = watch_into(
        watcher::watcher(Api::<DynamicObject>::all_with(client.clone(), &bindings_ar), cfg),
        move |event: &Event<DynamicObject>| {
            cache.apply(
                event,
                |b| (String::new(), b.name_any()),
                |b| BindingEntry {
                    resource_version: rv_of(&b.metadata),
                    object: comparable(&serde_json::to_value(b).unwrap_or_default()),
                },
            );
        },
        |b: &DynamicObject, deleted| Change::Binding {
            name: b.name_any(),
            owner: b.annotations().get(OWNER_ANNOTATION).cloned(),
            deleted,
        },
        "mutatingadmissionpolicybindings",
    );
    let cache = admission.policies.clone();
    let policies = watch_into(
        watcher::watcher(
            Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), &policies_ar),
            watcher::Config::default(),
        ),
        move |event| cache.apply(event, |p| (String::new(), p.name_any()), |_| ()),
        |_, _| Change::Policy,
        "mutatingadmissionpolicies",
    );
    vec![bindings.boxed(), policies.boxed()]
}

fn watch_into<K: Send + 'static>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    apply: impl Fn(&Event<K>) + Send + 'static,
    changed: fn(&K, bool) -> Change,
    what: &'static str,
) -> impl Stream<Item = Change> + Send {
    stream.default_backoff().filter_map(move |event| {
        let out = match event {
            Ok(event) => {
                apply(&event);
                match &event {
                    Event::Apply(o) | Event::InitApply(o) => Some(changed(o, false)),
                    Event::Delete(o) => Some(changed(o, true)),
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

/// Where injection stands for a credential.
#[derive(Clone, Debug, PartialEq)]
pub enum InjectionState {
    /// Not asked for, and no binding left.
    Off,
    /// The binding is in place and the policy installed.
    Active { binding: String },
    /// The binding is in place; the chart's policy is not installed.
    PolicyMissing { binding: String, policy: &'static str },
    /// The cluster does not serve the API.
    Unsupported,
    /// Writing or deleting the binding failed.
    Failed(String),
}

impl InjectionState {
    /// The `Injection` condition: `(status, reason, message)`, or `None`
    /// when injection is off.
    pub fn condition(&self, secret: &str) -> Option<(bool, &'static str, String)> {
        match self {
            InjectionState::Off => None,
            InjectionState::Active { binding } => Some((
                true,
                reasons::INJECTION_ACTIVE,
                format!(
                    "MutatingAdmissionPolicyBinding {binding}: new Pods running as a ServiceAccount selected by name \
                     get {secret} in spec.imagePullSecrets"
                ),
            )),
            InjectionState::PolicyMissing { binding, policy } => Some((
                false,
                reasons::ADMISSION_POLICY_MISSING,
                format!(
                    "MutatingAdmissionPolicyBinding {binding} is in place but the MutatingAdmissionPolicy {policy} \
                     is not installed (the regcred chart installs it); nothing is injected"
                ),
            )),
            InjectionState::Unsupported => Some((
                false,
                reasons::ADMISSION_POLICY_UNSUPPORTED,
                format!(
                    "the cluster serves no MutatingAdmissionPolicy API ({ADMISSION_GROUP}/v1 from Kubernetes 1.36, \
                     v1beta1 on 1.34-1.35 where enabled); Pods get {secret} only through their ServiceAccount's \
                     imagePullSecrets"
                ),
            )),
            InjectionState::Failed(message) => Some((false, reasons::WRITE_FAILED, message.clone())),
        }
    }
}

fn content_hash(v: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// Brings a credential's binding to what its spec asks: written when
/// injection is on and it differs, deleted when injection is off.
pub async fn sync<K: CredentialKind>(obj: &K, ctx: &Context) -> InjectionState {
    let admission = &ctx.admission;
    let wanted = obj.credential().injection_enabled();
    let name = binding_name(obj.namespace().as_deref(), &obj.name_any());
    let Some(ar) = admission.binding_resource() else {
        return if wanted { InjectionState::Unsupported } else { InjectionState::Off };
    };
    let cached = admission.bindings.with("", &name, |b| b.clone());
    if !wanted {
        if cached.is_some()
            && let Err(e) = delete(ctx, &ar, &name).await
        {
            return InjectionState::Failed(e);
        }
        return InjectionState::Off;
    }
    let (namespace, kind, uid, owner_key) = (obj.namespace(), K::kind(&()), obj.uid(), obj.owner_key());
    let owner = BindingOwner {
        kind: &kind,
        name: &obj.name_any(),
        namespace: namespace.as_deref(),
        uid: uid.as_deref(),
        owner_key: &owner_key,
    };
    let mut desired = desired_binding(
        &owner,
        K::policy_name(),
        &obj.binding_namespace_selector(),
        (MANAGED_BY_LABEL, MANAGED_BY),
        OWNER_ANNOTATION,
    );
    let hash = content_hash(&comparable(&desired));
    let written = admission.written.lock().get(&name).copied();
    let in_sync = match &cached {
        Some(c) if written.is_some_and(|(h, rv)| h == hash && c.resource_version.is_none_or(|cached| cached < rv)) => {
            true
        }
        Some(c) => holds(&c.object, &comparable(&desired)),
        // Written and not in the cache yet (a deletion seen by the watch
        // forgets the write).
        None => written.is_some_and(|(h, _)| h == hash),
    };
    if !in_sync {
        desired["apiVersion"] = Value::String(ar.api_version.clone());
        let api = Api::<DynamicObject>::all_with(ctx.client.clone(), &ar);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&name, &params, &Patch::Apply(&desired)).await {
            Ok(b) => {
                if let Some(rv) = rv_of(&b.metadata) {
                    admission.written.lock().insert(name.clone(), (hash, rv));
                }
                tracing::info!(binding = %name, "MutatingAdmissionPolicyBinding written");
            }
            Err(e) => return InjectionState::Failed(format!("writing MutatingAdmissionPolicyBinding {name}: {e}")),
        }
    }
    if admission.policies.with("", K::policy_name(), |_| ()).is_some() {
        InjectionState::Active { binding: name }
    } else {
        InjectionState::PolicyMissing { binding: name, policy: K::policy_name() }
    }
}

impl Admission {
    /// Forgets regcred's own write of a binding that went away.
    pub fn forget(&self, name: &str) {
        self.written.lock().remove(name);
    }
}

async fn delete(ctx: &Context, ar: &ApiResource, name: &str) -> Result<(), String> {
    let api = Api::<DynamicObject>::all_with(ctx.client.clone(), ar);
    ctx.admission.written.lock().remove(name);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(binding = %name, "MutatingAdmissionPolicyBinding deleted");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(format!("deleting MutatingAdmissionPolicyBinding {name}: {e}")),
    }
}

/// Deletes a credential's binding (the finalizer path), if there is one.
pub async fn remove<K: CredentialKind>(obj: &K, ctx: &Context) -> Result<(), String> {
    let Some(ar) = ctx.admission.binding_resource() else { return Ok(()) };
    let name = binding_name(obj.namespace().as_deref(), &obj.name_any());
    if ctx.admission.bindings.with("", &name, |_| ()).is_none() && !obj.credential().injection_enabled() {
        return Ok(());
    }
    delete(ctx, &ar, &name).await
}
