//! `regcred check -f credential.yaml [--verify]`: mint a credential once,
//! outside the operator, and print a redacted summary.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use crate::api::{ClusterRegistryCredential, CredentialSpec, RegistryCredential};
use crate::provider::Sources;
use crate::verify::{VerifyPlan, verify};

/// What `check` needs from the command line.
pub struct CheckOptions<'a> {
    pub file: &'a Path,
    pub verify: bool,
    /// Namespace of a ClusterRegistryCredential's sources.
    pub cluster_resource_namespace: Option<String>,
    pub kubeconfig: Option<&'a Path>,
}

/// The manifest's credential and the Secrets that came with it.
struct Manifest {
    spec: CredentialSpec,
    kind: &'static str,
    name: String,
    source_namespace: Option<String>,
    secrets: Vec<Secret>,
}

fn read_manifest(path: &Path, cluster_ns: Option<String>) -> Result<Manifest> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut credential = None;
    let mut secrets = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).context("parsing YAML")?;
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        match kind.as_str() {
            "" if value.is_null() => continue,
            "Secret" => secrets.push(serde_yaml::from_value(value).context("parsing a Secret")?),
            "RegistryCredential" => {
                let c: RegistryCredential = serde_yaml::from_value(value).context("parsing the RegistryCredential")?;
                let ns = c.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                credential = Some((c.spec.credential, "RegistryCredential", c.metadata.name, Some(ns)));
            }
            "ClusterRegistryCredential" => {
                let c: ClusterRegistryCredential =
                    serde_yaml::from_value(value).context("parsing the ClusterRegistryCredential")?;
                credential =
                    Some((c.spec.credential, "ClusterRegistryCredential", c.metadata.name, cluster_ns.clone()));
            }
            other => bail!("{}: unexpected kind {other:?}", path.display()),
        }
    }
    let (spec, kind, name, source_namespace) = credential
        .with_context(|| format!("{} holds no RegistryCredential or ClusterRegistryCredential", path.display()))?;
    Ok(Manifest { spec, kind, name: name.unwrap_or_default(), source_namespace, secrets })
}

/// `********` plus the length: enough to tell two passwords apart by size,
/// nothing more.
fn redact(secret: &str) -> String {
    format!("<redacted, {} characters>", secret.chars().count())
}

/// Runs the check and prints the summary. Errors carry a precise message and
/// never a secret.
pub async fn run(opts: CheckOptions<'_>) -> Result<()> {
    use secrecy::ExposeSecret;
    let m = read_manifest(opts.file, opts.cluster_resource_namespace.clone())?;
    let namespace = match &m.source_namespace {
        Some(ns) => ns.clone(),
        None if m.spec.provider.secret_names().is_empty() => String::new(),
        None => bail!(
            "a ClusterRegistryCredential reads sources from the cluster resource namespace: pass --cluster-resource-namespace"
        ),
    };
    let needs_cluster = !m.spec.provider.secret_names().is_empty() || m.spec.provider.uses_service_account();
    let sources = if m.secrets.is_empty() && needs_cluster {
        let config = match opts.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
            }
            None => kube::Config::infer()
                .await
                .context("no Secrets in the file and no Kubernetes configuration to read them from")?,
        };
        Sources::new(kube::Client::try_from(config)?, namespace)
    } else {
        Sources::local(m.secrets, namespace)
    };
    println!("{} {} (provider {})", m.kind, m.name, m.spec.provider.name());
    let minted = crate::pacing::paced(&m.spec.provider)
        .mint(&sources)
        .await
        .map_err(|e| anyhow::anyhow!("minting failed: {}: {}", e.reason, e.message))?;
    match minted.expires_at {
        Some(t) => println!("expires:  {t}"),
        None => println!("expires:  never (static credential)"),
    }
    let policy = m.spec.verify.clone().unwrap_or_default();
    let mut failed = false;
    for auth in &minted.auths {
        println!("registry: {}", auth.registry);
        println!("  username: {}", auth.username);
        println!("  password: {}", redact(auth.password.expose_secret()));
        if opts.verify {
            let plan = VerifyPlan::from_policy(&policy);
            let repositories = plan.repositories_for(&auth.registry).unwrap_or_default();
            match verify(auth, &plan).await {
                Ok(_) if repositories.is_empty() => println!("  verify:   ok (logged in to the registry)"),
                Ok(verified) => {
                    println!("  verify:   ok (logged in; may pull {})", repositories.join(", "));
                    if let Some(q) = verified.quota {
                        let window = q.window_seconds.map(|w| format!(" per {w} s")).unwrap_or_default();
                        println!("  pull quota: {} of {} left{window}", q.remaining, q.limit);
                    }
                }
                Err(e) => {
                    println!("  verify:   FAILED: {e}");
                    failed = true;
                }
            }
        }
    }
    if failed {
        bail!("the registry refused the credential");
    }
    Ok(())
}
