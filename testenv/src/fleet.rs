//! Spokes of a fleet for tests and the benchmark: a control plane, the
//! hub's least-privilege identity in it, and the kubeconfig Secrets that
//! register it with the hub in Cluster API's and Argo CD's formats.

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::{ControlPlane, Options};

/// Namespace of the hub's ServiceAccount in a spoke.
pub const SPOKE_NS: &str = "regcred-spoke";
/// The hub's ServiceAccount in a spoke.
pub const HUB_SA: &str = "regcred-hub";

/// A spoke control plane (no regcred CRDs: spokes need none).
pub fn start_spoke() -> Result<ControlPlane> {
    ControlPlane::start(Options { crd_dir: None, ..Options::default() })
}

/// The rules of the hub's ClusterRole in a spoke: what regcred does there
/// and nothing more (the chart's spoke mode grants the same).
pub fn spoke_rules() -> Value {
    json!([
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch", "create", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "delete"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingadmissionpolicybindings"],
         "resourceNames": ["inject-pull-secret.fleet.regcred.dev"], "verbs": ["get"]}
    ])
}

/// The rules of the hub's Role in the spoke's regcred namespace: the
/// injection parameters (ConfigMaps) it writes there.
pub fn spoke_namespace_rules() -> Value {
    json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch", "delete"]}])
}

/// Installs the spoke's injection policy and its binding (the chart's
/// spoke mode installs the same files), with parameters in [`SPOKE_NS`].
pub async fn install_injection(spoke: &ControlPlane) -> Result<()> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    use serde::Deserialize as _;
    let version = crate::version::k8s()
        .admission_api()
        .ok_or_else(|| anyhow!("this Kubernetes release serves no MutatingAdmissionPolicy API"))?;
    let client = spoke.client().await?;
    let dir = crate::repo_root().join("charts/regcred/files/fleet-injection");
    for file in ["policy.yaml", "binding.yaml"] {
        let text = std::fs::read_to_string(dir.join(file))?.replace("REGCRED_NAMESPACE", SPOKE_NS);
        let value = serde_yaml::Value::deserialize(serde_yaml::Deserializer::from_str(&text))?;
        let mut obj: DynamicObject = serde_yaml::from_value(value)?;
        let types = obj.types.as_mut().ok_or_else(|| anyhow!("{file}: no kind"))?;
        types.api_version = format!("admissionregistration.k8s.io/{version}");
        let plural = match types.kind.as_str() {
            "MutatingAdmissionPolicy" => "mutatingadmissionpolicies",
            _ => "mutatingadmissionpolicybindings",
        };
        let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", version, &types.kind);
        let api = Api::<DynamicObject>::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, plural));
        let name = obj.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply("regcred-test").force(), &Patch::Apply(&obj))
            .await
            .with_context(|| format!("applying {file}"))?;
    }
    Ok(())
}

/// Creates (or keeps) the hub's ServiceAccount, ClusterRole and binding in
/// `spoke` and returns a kubeconfig (YAML) with a fresh token for it.
pub async fn hub_identity(spoke: &ControlPlane) -> Result<String> {
    let client = spoke.client().await?;
    create_or_keep(&Api::<Namespace>::all(client.clone()), json!({"metadata": {"name": SPOKE_NS}})).await?;
    create_or_keep(&Api::<ServiceAccount>::namespaced(client.clone(), SPOKE_NS), json!({"metadata": {"name": HUB_SA}}))
        .await?;
    create_or_keep(
        &Api::<ClusterRole>::all(client.clone()),
        json!({"metadata": {"name": "regcred-spoke"}, "rules": spoke_rules()}),
    )
    .await?;
    create_or_keep(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        json!({"metadata": {"name": "regcred-spoke"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "regcred-spoke"},
            "subjects": [{"kind": "ServiceAccount", "name": HUB_SA, "namespace": SPOKE_NS}]}),
    )
    .await?;
    create_or_keep(
        &Api::<Role>::namespaced(client.clone(), SPOKE_NS),
        json!({"metadata": {"name": "regcred-spoke"}, "rules": spoke_namespace_rules()}),
    )
    .await?;
    create_or_keep(
        &Api::<RoleBinding>::namespaced(client.clone(), SPOKE_NS),
        json!({"metadata": {"name": "regcred-spoke"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "regcred-spoke"},
            "subjects": [{"kind": "ServiceAccount", "name": HUB_SA, "namespace": SPOKE_NS}]}),
    )
    .await?;
    let kubeconfig = spoke.service_account_kubeconfig(SPOKE_NS, HUB_SA).await?;
    crate::operator::record_secret(&token_of(&kubeconfig)?);
    Ok(kubeconfig)
}

async fn create_or_keep<K>(api: &Api<K>, obj: Value) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let obj: K = serde_json::from_value(obj)?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", obj.name_any())),
    }
}

fn token_of(kubeconfig: &str) -> Result<String> {
    use secrecy::ExposeSecret;
    let kc = Kubeconfig::from_yaml(kubeconfig)?;
    let user = kc.auth_infos.first().and_then(|a| a.auth_info.as_ref()).ok_or_else(|| anyhow!("no user"))?;
    Ok(user.token.as_ref().ok_or_else(|| anyhow!("no token"))?.expose_secret().to_string())
}

fn with_labels(base: Value, labels: &Value) -> Value {
    let mut all = base;
    if let (Some(all), Some(extra)) = (all.as_object_mut(), labels.as_object()) {
        all.extend(extra.clone());
    }
    all
}

/// Cluster API's kubeconfig Secret: `<cluster>-kubeconfig`, label
/// `cluster.x-k8s.io/cluster-name`, key `value`.
pub fn capi_secret(namespace: &str, cluster: &str, kubeconfig: &str, labels: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("{cluster}-kubeconfig"), "namespace": namespace,
            "labels": with_labels(json!({"cluster.x-k8s.io/cluster-name": cluster}), labels)},
        "type": "cluster.x-k8s.io/secret", "stringData": {"value": kubeconfig}})
}

/// Argo CD's cluster Secret: label `argocd.argoproj.io/secret-type:
/// cluster`, keys `name`, `server` and `config` (bearerToken, caData).
pub fn argo_secret(namespace: &str, cluster: &str, kubeconfig: &str, labels: &Value) -> Result<Value> {
    let kc = Kubeconfig::from_yaml(kubeconfig)?;
    let c = kc.clusters.first().and_then(|c| c.cluster.as_ref()).ok_or_else(|| anyhow!("no cluster"))?;
    let config = json!({"bearerToken": token_of(kubeconfig)?,
        "tlsClientConfig": {"insecure": false, "caData": c.certificate_authority_data}});
    Ok(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("cluster-{cluster}"), "namespace": namespace,
            "labels": with_labels(json!({"argocd.argoproj.io/secret-type": "cluster"}), labels)},
        "stringData": {"name": cluster, "server": c.server, "config": config.to_string()}}))
}

/// Writes a Secret manifest by server-side apply.
pub async fn apply_secret(client: &Client, secret: &Value) -> Result<Secret> {
    let ns = secret["metadata"]["namespace"].as_str().ok_or_else(|| anyhow!("no namespace"))?;
    let name = secret["metadata"]["name"].as_str().ok_or_else(|| anyhow!("no name"))?;
    Ok(Api::<Secret>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("regcred-test").force(), &Patch::Apply(secret))
        .await?)
}
