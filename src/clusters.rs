//! Clusters of a fleet, as their kubeconfig Secrets describe them. Pure: a
//! Secret in, a [`Registration`] out (docs/fleet.md).
//!
//! Two formats users already keep are read:
//! - Cluster API's `<cluster>-kubeconfig` Secret: the label
//!   `cluster.x-k8s.io/cluster-name` names the cluster and the key `value`
//!   holds a kubeconfig (Cluster API book, "Accessing workload clusters";
//!   `sigs.k8s.io/cluster-api/util/secret`: `Name(cluster, Kubeconfig)` is
//!   `<cluster>-kubeconfig`, data key `value`). The cluster's other Secrets
//!   (`-ca`, `-etcd`, `-sa`, `-proxy`) carry the same label and are skipped.
//! - Argo CD's cluster Secret: the label `argocd.argoproj.io/secret-type:
//!   cluster`, keys `name`, `server` and `config`, a JSON document with
//!   `bearerToken`, `username`/`password` and `tlsClientConfig` (`caData`,
//!   `certData`, `keyData` base64, `insecure`, `serverName`) (Argo CD
//!   "Declarative Setup", Clusters; `pkg/apis/application/v1alpha1`
//!   `ClusterConfig`).
//!
//! A kubeconfig Secret must not make the hub run a command or read a file:
//! `exec` and `auth-provider` users, token files and certificate or key
//! paths are refused (a path such as the hub's own ServiceAccount token
//! would otherwise be sent to whatever server the Secret names).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::config::Kubeconfig;
use serde::Deserialize;

/// The label naming a Cluster API cluster on its Secrets.
pub const CAPI_CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// The label that marks an Argo CD cluster Secret (value `cluster`).
pub const ARGO_SECRET_TYPE_LABEL: &str = "argocd.argoproj.io/secret-type";

/// Where a registration came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    ClusterApi,
    ArgoCd,
}

/// A cluster found in a kubeconfig Secret. No `Debug`: the kubeconfig holds
/// credentials.
pub struct Registration {
    /// The cluster's name, which credentials select by.
    pub name: String,
    /// The Secret it came from.
    pub secret: String,
    pub format: Format,
    /// The Secret's labels, which credentials select by.
    pub labels: BTreeMap<String, String>,
    /// How to reach the cluster, or why the Secret cannot say.
    pub kubeconfig: Result<Kubeconfig, String>,
}

/// The cluster a Secret registers, or `None` when it is not a kubeconfig
/// Secret of either format.
pub fn registration(secret: &Secret) -> Option<Registration> {
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    let secret_name = secret.metadata.name.clone().unwrap_or_default();
    let data = |key: &str| secret.data.as_ref().and_then(|d| d.get(key)).map(|v| v.0.as_slice());
    if labels.get(ARGO_SECRET_TYPE_LABEL).map(String::as_str) == Some("cluster") {
        let text = |key| data(key).and_then(|v| std::str::from_utf8(v).ok()).map(str::trim).filter(|v| !v.is_empty());
        let name = text("name").unwrap_or(&secret_name).to_string();
        let kubeconfig = argo_kubeconfig(&name, text("server"), data("config"));
        return Some(Registration { name, secret: secret_name, format: Format::ArgoCd, labels, kubeconfig });
    }
    let cluster = labels.get(CAPI_CLUSTER_NAME_LABEL)?;
    if secret_name != format!("{cluster}-kubeconfig") {
        return None;
    }
    let kubeconfig = match data("value") {
        None => Err("the Secret has no key `value`".to_string()),
        Some(v) => std::str::from_utf8(v)
            .map_err(|_| "the key `value` is not UTF-8 text".to_string())
            .and_then(|t| Kubeconfig::from_yaml(t).map_err(|e| shape_error("the key `value` is no kubeconfig", &e)))
            .and_then(checked),
    };
    Some(Registration { name: cluster.clone(), secret: secret_name, format: Format::ClusterApi, labels, kubeconfig })
}

/// Argo CD's `config` key.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ArgoConfig {
    bearer_token: Option<String>,
    username: Option<String>,
    password: Option<String>,
    #[serde(default)]
    tls_client_config: ArgoTls,
    aws_auth_config: Option<serde_json::Value>,
    exec_provider_config: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ArgoTls {
    #[serde(default)]
    insecure: bool,
    server_name: Option<String>,
    ca_data: Option<String>,
    cert_data: Option<String>,
    key_data: Option<String>,
}

/// The kubeconfig an Argo CD cluster Secret describes.
fn argo_kubeconfig(name: &str, server: Option<&str>, config: Option<&[u8]>) -> Result<Kubeconfig, String> {
    let server = server.ok_or("the Secret has no key `server`")?;
    let config: ArgoConfig = match config {
        Some(c) => serde_json::from_slice(c).map_err(|e| {
            format!("the key `config` is not Argo CD's JSON (line {}, column {})", e.line(), e.column())
        })?,
        None => ArgoConfig::default(),
    };
    if config.aws_auth_config.is_some() || config.exec_provider_config.is_some() {
        return Err("awsAuthConfig and execProviderConfig run commands on the hub; give the cluster Secret a \
                    bearerToken or a client certificate"
            .into());
    }
    let tls = config.tls_client_config;
    let document = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": server,
            "insecure-skip-tls-verify": tls.insecure.then_some(true),
            "tls-server-name": tls.server_name,
            "certificate-authority-data": tls.ca_data,
        }}],
        "users": [{"name": name, "user": {
            "token": config.bearer_token,
            "username": config.username,
            "password": config.password,
            "client-certificate-data": tls.cert_data,
            "client-key-data": tls.key_data,
        }}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    });
    let text = serde_json::to_string(&strip_nulls(document)).expect("JSON serialises");
    Kubeconfig::from_yaml(&text)
        .map_err(|e| shape_error("the Argo CD cluster Secret makes no kubeconfig", &e))
        .and_then(checked)
}

/// `what`, without the parser's message: serde's messages quote the value
/// they choke on ("invalid type: string \"...\""), which in a kubeconfig
/// can be a token or a key. Only where, if the error says.
fn shape_error(what: &str, e: &kube::config::KubeconfigError) -> String {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(yaml) = s.downcast_ref::<serde_yaml::Error>()
            && let Some(at) = yaml.location()
        {
            return format!("{what} (line {}, column {})", at.line(), at.column());
        }
        source = s.source();
    }
    what.to_string()
}

fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// Refuses what would make the hub run a command or read a file.
fn checked(kubeconfig: Kubeconfig) -> Result<Kubeconfig, String> {
    for c in kubeconfig.clusters.iter().filter_map(|c| c.cluster.as_ref()) {
        if c.certificate_authority.is_some() {
            return Err("certificate-authority names a file on the hub; use certificate-authority-data".into());
        }
        if c.server.is_none() {
            return Err("a cluster has no server".into());
        }
    }
    for a in kubeconfig.auth_infos.iter().filter_map(|a| a.auth_info.as_ref()) {
        if a.exec.is_some() || a.auth_provider.is_some() {
            return Err(
                "exec and auth-provider users run commands on the hub; use a token or a client certificate".into()
            );
        }
        if a.token_file.is_some() || a.client_certificate.is_some() || a.client_key.is_some() {
            return Err("tokenFile, client-certificate and client-key name files on the hub; use token, \
                        client-certificate-data and client-key-data"
                .into());
        }
    }
    if kubeconfig.clusters.is_empty() {
        return Err("the kubeconfig names no cluster".into());
    }
    Ok(kubeconfig)
}

/// A hash of a kubeconfig Secret's data, to see it rotated (its labels
/// change which credentials select the cluster, not how to reach it).
pub fn fingerprint(secret: &Secret) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (k, v) in secret.data.iter().flatten() {
        k.hash(&mut h);
        v.0.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
            ..Default::default()
        }
    }

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: w\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority-data: Q0E=\nusers:\n- name: u\n  user:\n    token: abc\ncontexts:\n- name: c\n  context: {cluster: w, user: u}\ncurrent-context: c\n";

    #[test]
    fn cluster_api_secrets_are_read_by_label_and_name() {
        let s = secret(
            "prod-eu-kubeconfig",
            &[(CAPI_CLUSTER_NAME_LABEL, "prod-eu"), ("env", "prod")],
            &[("value", KUBECONFIG)],
        );
        let r = registration(&s).expect("a cluster");
        assert_eq!((r.name.as_str(), r.format), ("prod-eu", Format::ClusterApi));
        assert_eq!(r.labels.get("env").map(String::as_str), Some("prod"));
        let kc = r.kubeconfig.expect("valid");
        assert_eq!(kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(), Some("https://10.0.0.1:6443"));
        // The cluster's CA Secret carries the same label and is no kubeconfig.
        assert!(
            registration(&secret("prod-eu-ca", &[(CAPI_CLUSTER_NAME_LABEL, "prod-eu")], &[("tls.crt", "x")])).is_none()
        );
        assert!(registration(&secret("other", &[("env", "prod")], &[("value", KUBECONFIG)])).is_none());
        let broken =
            registration(&secret("b-kubeconfig", &[(CAPI_CLUSTER_NAME_LABEL, "b")], &[("value", "{not yaml")]));
        assert!(broken.unwrap().kubeconfig.unwrap_err().contains("no kubeconfig"));
    }

    #[test]
    fn argo_cd_secrets_become_a_kubeconfig() {
        let config = r#"{"bearerToken":"tok","tlsClientConfig":{"insecure":false,"caData":"Q0E=","serverName":"api"}}"#;
        let s = secret(
            "cluster-10.0.0.2",
            &[(ARGO_SECRET_TYPE_LABEL, "cluster"), ("env", "dev")],
            &[("name", "dev-us"), ("server", "https://10.0.0.2:6443"), ("config", config)],
        );
        let r = registration(&s).expect("a cluster");
        assert_eq!((r.name.as_str(), r.format, r.secret.as_str()), ("dev-us", Format::ArgoCd, "cluster-10.0.0.2"));
        let kc = r.kubeconfig.expect("valid");
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.2:6443"));
        assert_eq!(cluster.tls_server_name.as_deref(), Some("api"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0E="));
        assert!(kc.auth_infos[0].auth_info.as_ref().unwrap().token.is_some());
        // No name key: the Secret's name.
        let unnamed =
            secret("c2", &[(ARGO_SECRET_TYPE_LABEL, "cluster")], &[("server", "https://h"), ("config", "{}")]);
        assert_eq!(registration(&unnamed).unwrap().name, "c2");
        let no_server = secret("c3", &[(ARGO_SECRET_TYPE_LABEL, "cluster")], &[("config", "{}")]);
        assert!(registration(&no_server).unwrap().kubeconfig.unwrap_err().contains("server"));
        let exec = secret(
            "c4",
            &[(ARGO_SECRET_TYPE_LABEL, "cluster")],
            &[("server", "https://h"), ("config", r#"{"execProviderConfig":{"command":"sh"}}"#)],
        );
        assert!(registration(&exec).unwrap().kubeconfig.unwrap_err().contains("run commands"));
        // Repository Secrets of Argo CD are not clusters.
        assert!(registration(&secret("repo", &[(ARGO_SECRET_TYPE_LABEL, "repository")], &[])).is_none());
    }

    #[test]
    fn a_malformed_kubeconfig_is_refused_without_quoting_it() {
        let leaky = "apiVersion: v1\nclusters: s3cr3t-token-value\nusers: []\ncontexts: []\n";
        let s = secret("x-kubeconfig", &[(CAPI_CLUSTER_NAME_LABEL, "x")], &[("value", leaky)]);
        let Err(err) = registration(&s).unwrap().kubeconfig else { panic!("accepted") };
        assert!(err.starts_with("the key `value` is no kubeconfig"), "{err}");
        assert!(!err.contains("s3cr3t"), "the error quotes the Secret: {err}");
        let argo = secret(
            "c",
            &[(ARGO_SECRET_TYPE_LABEL, "cluster")],
            &[("server", "https://h"), ("config", r#"{"bearerToken": 12, "tlsClientConfig": "s3cr3t-key"}"#)],
        );
        let Err(err) = registration(&argo).unwrap().kubeconfig else { panic!("accepted") };
        assert!(!err.contains("s3cr3t"), "the error quotes the Secret: {err}");
    }

    #[test]
    fn kubeconfigs_that_run_commands_or_read_files_are_refused() {
        for (user, what) in [
            ("exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}", "run commands"),
            ("tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token", "files"),
            ("client-certificate: /etc/hub.crt", "files"),
        ] {
            let text = KUBECONFIG.replace("token: abc", user);
            let s = secret("x-kubeconfig", &[(CAPI_CLUSTER_NAME_LABEL, "x")], &[("value", &text)]);
            let err = registration(&s).unwrap().kubeconfig.err().unwrap_or_else(|| panic!("{user} accepted"));
            assert!(err.contains(what), "{user}: {err}");
        }
        let ca_file = KUBECONFIG.replace("certificate-authority-data: Q0E=", "certificate-authority: /etc/ca.crt");
        let s = secret("x-kubeconfig", &[(CAPI_CLUSTER_NAME_LABEL, "x")], &[("value", &ca_file)]);
        assert!(registration(&s).unwrap().kubeconfig.is_err());
    }
}
