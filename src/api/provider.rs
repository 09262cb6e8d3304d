//! Provider configuration: where a credential comes from.
//!
//! `spec.provider` holds exactly one of these. The schema enforces that at
//! apply time; the operator turns each variant into a provider implementation.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where the registry credential comes from. Set exactly one provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = one_of_to_properties, extend("x-kubernetes-validations" = [{
    "rule": "[has(self.ecr), has(self.ecrPublic), has(self.google), has(self.acr), has(self.harbor), has(self.basic)].filter(x, x).size() == 1",
    "message": "exactly one provider must be set: ecr, ecrPublic, google, acr, harbor or basic"
}]))]
pub enum Provider {
    /// Amazon ECR: a 12-hour token from ecr:GetAuthorizationToken.
    Ecr(EcrProvider),
    /// Amazon ECR Public (public.ecr.aws): a token from ecr-public:GetAuthorizationToken.
    EcrPublic(EcrPublicProvider),
    /// Google Artifact Registry and Container Registry: an OAuth2 access token.
    Google(GoogleProvider),
    /// Azure Container Registry: a Microsoft Entra token exchanged for an ACR refresh token.
    Acr(AcrProvider),
    /// Harbor: robot accounts created and rotated through Harbor's API.
    Harbor(HarborProvider),
    /// A static credential for any registry (Docker Hub, GHCR, Quay, ...).
    Basic(BasicProvider),
}

impl Provider {
    /// The provider's name as written in the spec (`ecr`, `basic`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Ecr(_) => "ecr",
            Provider::EcrPublic(_) => "ecrPublic",
            Provider::Google(_) => "google",
            Provider::Acr(_) => "acr",
            Provider::Harbor(_) => "harbor",
            Provider::Basic(_) => "basic",
        }
    }

    /// Whether the provider requests ServiceAccount tokens (`serviceAccountRef`).
    pub fn uses_service_account(&self) -> bool {
        let aws = |a: &Option<AwsAuth>| a.as_ref().is_some_and(|a| a.service_account_ref.is_some());
        match self {
            Provider::Ecr(p) => aws(&p.auth),
            Provider::EcrPublic(p) => aws(&p.auth),
            Provider::Google(p) => p.auth.as_ref().is_some_and(|a| a.service_account_ref.is_some()),
            Provider::Acr(p) => p.auth.workload_identity.as_ref().is_some_and(|w| w.service_account_ref.is_some()),
            Provider::Harbor(_) | Provider::Basic(_) => false,
        }
    }

    /// Names of the source Secrets the provider reads.
    pub fn secret_names(&self) -> Vec<&str> {
        fn aws(auth: &Option<AwsAuth>) -> Option<&str> {
            auth.as_ref().and_then(|a| a.secret_ref.as_ref()).map(|r| r.name.as_str())
        }
        let refs = match self {
            Provider::Ecr(p) => vec![aws(&p.auth)],
            Provider::EcrPublic(p) => vec![aws(&p.auth)],
            Provider::Google(p) => vec![p.auth.as_ref().and_then(|a| a.secret_ref.as_ref()).map(|r| r.name.as_str())],
            Provider::Acr(p) => vec![p.auth.service_principal.as_ref().map(|s| s.secret_ref.name.as_str())],
            Provider::Harbor(p) => vec![Some(p.auth.secret_ref.name.as_str())],
            Provider::Basic(p) => vec![Some(p.secret_ref.name.as_str())],
        };
        refs.into_iter().flatten().collect()
    }
}

/// Turns the `oneOf` schemars derives for an externally tagged enum into
/// plain optional properties. "Exactly one" is then checked by the CEL rule,
/// whose message names the problem; a failed `oneOf` would instead skip the
/// CEL rules and report a generic schema error.
fn one_of_to_properties(schema: &mut schemars::Schema) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let Some(serde_json::Value::Array(variants)) = obj.remove("oneOf") else {
        return;
    };
    let mut properties = serde_json::Map::new();
    for variant in variants {
        if let Some(serde_json::Value::Object(props)) = variant.get("properties") {
            for (name, mut prop) in props.clone() {
                // The variant's doc comment describes the property.
                if let (Some(desc), Some(p)) = (variant.get("description"), prop.as_object_mut()) {
                    p.entry("description").or_insert(desc.clone());
                }
                properties.insert(name, prop);
            }
        }
    }
    obj.insert("type".into(), "object".into());
    obj.insert("properties".into(), properties.into());
}

/// A reference to a Secret holding source material.
///
/// For a RegistryCredential the Secret is always in the credential's own
/// namespace, and `namespace` must be omitted. For a ClusterRegistryCredential
/// it is in the operator's cluster resource namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Namespace of the Secret. ClusterRegistryCredential only, and only the
    /// cluster resource namespace (the default) is accepted; a
    /// RegistryCredential may not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// A Kubernetes ServiceAccount whose token (from the TokenRequest API) is
/// exchanged with the cloud provider, so the credential gets exactly that
/// ServiceAccount's cloud permissions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// Name of the ServiceAccount.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the ServiceAccount. ClusterRegistryCredential only, and
    /// only the cluster resource namespace (the default) is accepted; a
    /// RegistryCredential may not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Audiences requested for the ServiceAccount token. Defaults to the
    /// provider's audience (`sts.amazonaws.com` for AWS,
    /// `api://AzureADTokenExchange` for Azure, the workload identity pool
    /// provider for Google).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub audiences: Option<Vec<String>>,
}

/// Use the operator's own identity (for example IRSA, EKS Pod Identity, GKE
/// workload identity or an Azure managed identity). Allowed for
/// ClusterRegistryCredential; a RegistryCredential may use it only when the
/// operator runs with `--allow-namespaced-ambient-identity`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Ambient {}

/// AWS identity used to call ECR. Set at most one; omitted means `ambient`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.secretRef), has(self.serviceAccountRef), has(self.ambient)].filter(x, x).size() <= 1",
    "message": "set at most one of secretRef, serviceAccountRef or ambient"
}]))]
pub struct AwsAuth {
    /// A Secret with keys `access-key-id`, `secret-access-key` and optionally
    /// `session-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// A ServiceAccount whose token is exchanged through
    /// sts:AssumeRoleWithWebIdentity. The role is `assumeRole.roleArn`, or the
    /// ServiceAccount's `eks.amazonaws.com/role-arn` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_ref: Option<ServiceAccountRef>,
    /// The operator's own AWS identity, from the default credential chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ambient: Option<Ambient>,
}

/// An IAM role assumed on top of the base identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssumeRole {
    /// ARN of the role, for example `arn:aws:iam::123456789012:role/ecr-pull`.
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$"), length(max = 2048))]
    pub role_arn: String,
    /// External ID required by the role's trust policy, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1224))]
    pub external_id: Option<String>,
    /// Session name recorded in CloudTrail. Defaults to `regcred`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 64), regex(pattern = r"^[\w+=,.@-]+$"))]
    pub session_name: Option<String>,
}

/// Amazon ECR (private registries).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.region) != has(self.regions)",
    "message": "set exactly one of region or regions"
}]))]
pub struct EcrProvider {
    /// AWS region of the registries, for example `eu-west-1`. An ECR token
    /// is valid only in the region that issued it. In the kubelet credential
    /// provider and the credential helper, the region of the image's host
    /// is used and this is the default for hosts that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"), length(max = 32))]
    pub region: Option<String>,
    /// Several AWS regions, instead of `region`: one
    /// ecr:GetAuthorizationToken call per region and refresh, and one
    /// Secret with an entry per region (and account). In the kubelet
    /// credential provider and the credential helper, the regions images may
    /// come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), inner(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"), length(max = 32)))]
    pub regions: Option<Vec<String>>,
    /// AWS account IDs whose registries get an entry, in every region.
    /// Defaults to the caller's own account. In the kubelet credential
    /// provider and the credential helper, the accounts images may come
    /// from (default: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(regex(pattern = r"^[0-9]{12}$")))]
    pub registry_ids: Option<Vec<String>>,
    /// Identity used to call ECR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AwsAuth>,
    /// A role to assume before calling ECR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assume_role: Option<AssumeRole>,
    /// Override of the ECR API endpoint URL (VPC endpoints, FIPS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub endpoint: Option<String>,
}

impl EcrProvider {
    /// The regions to mint in, in the order written, without repeats
    /// (`region`, or `regions`).
    pub fn region_list(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let all = self.region.iter().chain(self.regions.iter().flatten());
        for r in all {
            if !out.contains(&r.as_str()) {
                out.push(r);
            }
        }
        out
    }
}

/// Amazon ECR Public (`public.ecr.aws`). Its API lives in us-east-1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EcrPublicProvider {
    /// Identity used to call ECR Public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AwsAuth>,
    /// A role to assume before calling ECR Public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assume_role: Option<AssumeRole>,
    /// Override of the ECR Public API endpoint URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub endpoint: Option<String>,
}

/// Google identity used to get an access token. Set at most one; omitted means `ambient`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.secretRef), has(self.serviceAccountRef), has(self.ambient)].filter(x, x).size() <= 1",
    "message": "set at most one of secretRef, serviceAccountRef or ambient"
}]))]
pub struct GoogleAuth {
    /// A Secret whose key `credentials.json` holds a service-account key or
    /// an `external_account` credential configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Workload identity federation: this ServiceAccount's token is exchanged
    /// at Google's STS for an access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_ref: Option<GoogleFederation>,
    /// The operator's own identity from the metadata server (GKE workload
    /// identity); `$GCE_METADATA_HOST` overrides the metadata server's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ambient: Option<Ambient>,
}

/// Workload identity federation from a Kubernetes ServiceAccount.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GoogleFederation {
    /// Name of the ServiceAccount.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the ServiceAccount. ClusterRegistryCredential only (the
    /// cluster resource namespace); a RegistryCredential may not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// The workload identity pool provider, for example
    /// `//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/k8s`.
    #[schemars(length(min = 1, max = 1024))]
    pub audience: String,
    /// Google STS token endpoint. Defaults to `https://sts.googleapis.com/v1/token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub token_url: Option<String>,
    /// Audience of the ServiceAccount token requested through the
    /// TokenRequest API. Defaults to `https:` followed by `audience`, the
    /// default allowed audience of a workload identity pool provider; set it
    /// when the pool provider lists other allowed audiences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub token_audience: Option<String>,
}

/// Short-lived tokens for another Google service account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GoogleImpersonation {
    /// Email of the service account to impersonate. Omitted with
    /// `auth.serviceAccountRef`: the ServiceAccount's
    /// `iam.gke.io/gcp-service-account` annotation (in the kubelet credential
    /// provider, the Pod's ServiceAccount's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^@\s]+@[^@\s]+$"), length(max = 320))]
    pub service_account: Option<String>,
    /// Base URL of the IAM Service Account Credentials API that serves
    /// `generateAccessToken`. Defaults to `https://iamcredentials.googleapis.com`;
    /// set it for a Private Service Connect endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub endpoint: Option<String>,
}

/// Google Artifact Registry and Container Registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GoogleProvider {
    /// Registry hosts that get an entry, for example `gcr.io` or
    /// `europe-docker.pkg.dev`.
    #[schemars(
        length(min = 1, max = 64),
        inner(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$"), length(max = 253))
    )]
    pub registries: Vec<String>,
    /// Identity used to get the access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<GoogleAuth>,
    /// Impersonate another service account with the identity above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonate: Option<GoogleImpersonation>,
}

/// Azure identity used to get a Microsoft Entra token. Set exactly one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.workloadIdentity), has(self.managedIdentity), has(self.servicePrincipal)].filter(x, x).size() == 1",
    "message": "set exactly one of workloadIdentity, managedIdentity or servicePrincipal"
}]))]
pub struct AcrAuth {
    /// Microsoft Entra workload identity: a federated ServiceAccount token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<AzureWorkloadIdentity>,
    /// The managed identity of the node or Pod (ambient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<AzureManagedIdentity>,
    /// A service principal: a Secret with keys `client-id` and `client-secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_principal: Option<AzureServicePrincipal>,
}

/// Microsoft Entra workload identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureWorkloadIdentity {
    /// Client ID of the application or user-assigned managed identity that
    /// trusts the ServiceAccount. Omitted: the ServiceAccount's
    /// `azure.workload.identity/client-id` annotation (with
    /// `serviceAccountRef`, or the Pod's ServiceAccount in the kubelet
    /// credential provider), else `$AZURE_CLIENT_ID` (the operator's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub client_id: Option<String>,
    /// The ServiceAccount whose token (audience `api://AzureADTokenExchange`)
    /// is federated. Omitted means the operator's own federated token file
    /// (ambient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_ref: Option<ServiceAccountRef>,
}

/// An Azure managed identity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureManagedIdentity {
    /// Client ID of a user-assigned identity. Omitted: the node's default
    /// identity (the system-assigned one, else the only user-assigned one);
    /// required on nodes with several user-assigned identities (AKS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub client_id: Option<String>,
}

/// An Azure service principal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureServicePrincipal {
    /// A Secret with keys `client-id` and `client-secret`.
    pub secret_ref: SecretRef,
}

/// Azure cloud whose Microsoft Entra authority is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AzureCloud {
    /// Azure public cloud (`login.microsoftonline.com`).
    #[default]
    AzurePublic,
    /// Azure operated by 21Vianet (`login.chinacloudapi.cn`).
    AzureChina,
    /// Azure US Government (`login.microsoftonline.us`).
    AzureUSGovernment,
}

/// Azure Container Registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcrProvider {
    /// Login server of the registry, for example `myregistry.azurecr.io`.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$"), length(max = 253))]
    pub registry: String,
    /// Microsoft Entra tenant ID.
    #[schemars(length(min = 1, max = 64))]
    pub tenant_id: String,
    /// Identity used to get the Entra token.
    pub auth: AcrAuth,
    /// Azure cloud. Defaults to `AzurePublic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<AzureCloud>,
    /// Custom Microsoft Entra authority host URL, for private set-ups.
    /// Overrides `cloud`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https://"), length(max = 2048))]
    pub authority_host: Option<String>,
    /// PEM CA certificates trusted for the registry and the authority host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub ca_bundle: Option<String>,
}

/// Robot accounts regcred creates in Harbor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HarborRobot {
    /// Prefix of the robot names regcred creates. Defaults to `regcred`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"), length(max = 64))]
    pub name_prefix: Option<String>,
    /// Lifetime of a robot secret in days. Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub duration_days: Option<i32>,
}

/// Credentials regcred uses to manage robots in Harbor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HarborAuth {
    /// A Secret with keys `username` and `password` of a Harbor account that
    /// may manage system robot accounts: a Harbor system administrator (in
    /// OIDC mode the local `admin`: Harbor refuses CLI secrets on the robot
    /// API), or from Harbor 2.12 a system robot with robot
    /// create/read/list/delete permissions and pull on the projects.
    pub secret_ref: SecretRef,
}

/// Harbor robot accounts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HarborProvider {
    /// Base URL of Harbor, for example `https://harbor.example.com`. The
    /// registry host is this URL's host.
    #[schemars(regex(pattern = r"^https?://[^/\s]+/?$"), length(max = 2048))]
    pub url: String,
    /// Projects the robot may pull from.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 255)))]
    pub projects: Vec<String>,
    /// Robot account settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robot: Option<HarborRobot>,
    /// The account regcred manages robots with.
    pub auth: HarborAuth,
    /// PEM CA certificates trusted for Harbor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub ca_bundle: Option<String>,
}

/// A static credential for any registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicProvider {
    /// Registry host, with an optional port: `docker.io`, `ghcr.io`,
    /// `quay.io`, `registry.example.com:5000`.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$"), length(max = 253))]
    pub registry: String,
    /// A Secret with keys `username` and `password` (or `token`), or an
    /// existing `kubernetes.io/dockerconfigjson` Secret with an entry for
    /// `registry`.
    pub secret_ref: SecretRef,
}
