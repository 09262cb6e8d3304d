//! The I/O edge of `regcred explain` (also `kubectl regcred explain`):
//! reads what [`crate::explain`] needs through the user's kubeconfig and
//! prints the answer as text or JSON.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::api::{ClusterRegistryCredential, RegistryCredential};
use crate::explain::{
    Cluster, CredentialFacts, CredentialReport, ImageReport, PodReport, RegistryCheck, Verdict, apply_registry_check,
    explain_credential, explain_pod, repository_and_reference,
};
use crate::verify::{VerifyOptions, check_manifest};

/// How `--check-registry` talks to registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryAccess {
    /// Log in and ask for each image's manifest.
    pub check: bool,
    /// Plain HTTP (test registries).
    pub plain_http: bool,
}

/// A client from `--kubeconfig`, else the usual places.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await.context("no Kubernetes configuration (kubeconfig or in-cluster)")?,
    };
    Ok(Client::try_from(config)?)
}

/// A list that may be refused (RBAC) or not served (CRDs not installed):
/// empty then, with a note on stderr.
async fn list_or_empty<K>(api: Api<K>, what: &str) -> Vec<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            eprintln!("note: cannot list {what} ({e}); explaining without them");
            Vec::new()
        }
    }
}

/// Reads the Pod `NAMESPACE/NAME` and what its pulls depend on, explains
/// it, prints it, and returns the verdict.
pub async fn pod(client: &Client, target: &str, json: bool, access: &RegistryAccess) -> Result<Verdict> {
    let Some((ns, name)) = target.split_once('/') else { bail!("name the Pod as NAMESPACE/NAME, not {target:?}") };
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .with_context(|| format!("reading Pod {target}"))?
        .with_context(|| format!("Pod {target} not found"))?;
    let namespace =
        Api::<Namespace>::all(client.clone()).get(ns).await.with_context(|| format!("reading namespace {ns}"))?;
    let labels = namespace.labels().clone();
    let sa_name = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let service_account = Api::<ServiceAccount>::namespaced(client.clone(), ns).get_opt(&sa_name).await?;
    let cluster_credentials =
        list_or_empty(Api::<ClusterRegistryCredential>::all(client.clone()), "ClusterRegistryCredentials").await;
    let credentials =
        list_or_empty(Api::<RegistryCredential>::namespaced(client.clone(), ns), "RegistryCredentials").await;
    // Only the Secrets that matter, by name (no Secret data is read beyond
    // them): the ones the Pod and its ServiceAccount name, and the ones the
    // credentials write.
    let pod_names = pod.spec.iter().flat_map(|s| s.image_pull_secrets.iter().flatten()).map(|r| r.name.clone());
    let sa_names = service_account.iter().flat_map(|sa| sa.image_pull_secrets.iter().flatten()).map(|r| r.name.clone());
    let written = cluster_credentials
        .iter()
        .map(|c| c.spec.credential.secret.name.clone())
        .chain(credentials.iter().map(|c| c.spec.credential.secret.name.clone()));
    let names: std::collections::BTreeSet<String> = pod_names.chain(sa_names).chain(written).collect();
    let secrets_api = Api::<Secret>::namespaced(client.clone(), ns);
    let mut secrets: BTreeMap<String, Secret> = BTreeMap::new();
    for n in names {
        if let Some(s) = secrets_api.get_opt(&n).await.with_context(|| format!("reading Secret {ns}/{n}"))? {
            secrets.insert(n, s);
        }
    }
    let mut report = explain_pod(&Cluster {
        pod: &pod,
        namespace_labels: &labels,
        service_account: service_account.as_ref(),
        secrets: &secrets,
        cluster_credentials: &cluster_credentials,
        credentials: &credentials,
        now: Timestamp::now(),
    });
    if access.check {
        for image in &mut report.images {
            check_registry(image, &secrets, access).await;
        }
        report.summarize();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(report.verdict)
}

/// Logs in with the Secret the kubelet would use for the image (the first
/// whose entry matches) and asks the registry for the manifest (`HEAD`:
/// counts as no pull where pulls are counted).
async fn check_registry(image: &mut ImageReport, secrets: &BTreeMap<String, Secret>, access: &RegistryAccess) {
    let Some((name, key)) = image.secrets.iter().find_map(|s| Some((s.name.clone(), s.matches.clone()?))) else {
        return;
    };
    let bytes = secrets.get(&name).and_then(|s| s.data.as_ref()?.get(".dockerconfigjson")).map(|b| b.0.clone());
    let Some(bytes) = bytes else { return };
    let mut auth = match crate::render::find_in_dockerconfigjson(&bytes, &key) {
        Ok(auth) => auth,
        Err(e) => {
            let answer = format!("its entry {key} cannot be used: {e}");
            let check = RegistryCheck { secret: name, accepted: false, answer, quota: None };
            apply_registry_check(image, check, false);
            return;
        }
    };
    auth.registry = image.registry.clone();
    let (repository, reference) = repository_and_reference(&image.image);
    let opts = VerifyOptions { plain_http: access.plain_http, ..Default::default() };
    match check_manifest(&auth, &repository, &reference, &opts).await {
        Ok(answer) => {
            let words = if answer.found {
                format!("manifest {repository}:{reference} found")
            } else {
                format!("no manifest {reference} in {repository}")
            };
            let check = RegistryCheck { secret: name, accepted: true, answer: words, quota: answer.quota };
            apply_registry_check(image, check, !answer.found);
        }
        Err(e) if e.is_rejected() => {
            let check = RegistryCheck { secret: name, accepted: false, answer: e.to_string(), quota: None };
            apply_registry_check(image, check, false);
        }
        Err(e) => {
            image.verdict = Verdict::CannotTell;
            image.reason = format!("could not ask the registry: {e}");
        }
    }
}

fn verdict_words(v: Verdict) -> &'static str {
    match v {
        Verdict::WouldPull => "would pull",
        Verdict::WouldNotPull => "would NOT pull",
        Verdict::CannotTell => "cannot tell",
    }
}

fn image_text(out: &mut String, r: &ImageReport) {
    out.push_str(&format!("  {}  {}  (registry {})\n", r.container, r.image, r.registry));
    if r.secrets.is_empty() {
        out.push_str("    no imagePullSecrets\n");
    }
    for (i, s) in r.secrets.iter().enumerate() {
        let mut facts = vec![if s.exists { "exists".to_string() } else { "MISSING".to_string() }];
        if s.on_service_account {
            facts.push("also on the ServiceAccount".into());
        }
        if let Some(m) = &s.matches {
            facts.push(format!("entry {m} matches"));
        }
        if let Some(c) = &s.credential {
            facts.push(format!(
                "written by {}: Ready {}{}",
                c.credential,
                c.ready.as_deref().unwrap_or("not reported"),
                c.expires_at.as_deref().map(|e| format!(", expires {e}")).unwrap_or_default()
            ));
        } else if s.exists {
            facts.push("not regcred's".into());
        }
        out.push_str(&format!("    {}. {}: {}\n", i + 1, s.name, facts.join("; ")));
        if let Some(p) = &s.problem {
            out.push_str(&format!("       problem: {p}\n"));
        }
    }
    if let Some(c) = &r.registry_check {
        out.push_str(&format!("    registry, with {}'s login: {}\n", c.secret, c.answer));
        if let Some(q) = &c.quota {
            let window = q.window_seconds.map(|w| format!(" per {w} s")).unwrap_or_default();
            out.push_str(&format!("    pull quota: {} of {} left{window}\n", q.remaining, q.limit));
        }
    }
    out.push_str(&format!("    => {}: {}\n", verdict_words(r.verdict), r.reason));
    if let Some(f) = &r.fix {
        out.push_str(&format!("       fix: {f}\n"));
    }
}

/// The report as text: each image, its Secrets in the kubelet's order,
/// and a last line with the verdict and the fix.
pub fn text(r: &PodReport) -> String {
    let mut out = format!("Pod {} (ServiceAccount {})\n", r.pod, r.service_account);
    for image in &r.images {
        image_text(&mut out, image);
    }
    out.push_str(&format!(
        "Verdict: {}{}\n",
        r.summary,
        r.fix.as_deref().map(|f| format!(". Fix: {f}")).unwrap_or_default()
    ));
    out
}

/// Reads a credential (`NAME` for a ClusterRegistryCredential,
/// `NAMESPACE/NAME` for a RegistryCredential), its target namespaces, its
/// Secret there and their ServiceAccounts, explains and prints it. The
/// verdict is "would pull" when every target is complete.
pub async fn credential(client: &Client, target: &str, json: bool) -> Result<Verdict> {
    let (key, spec, status, targets, secrets_api, sa_api) = match target.split_once('/') {
        Some((ns, name)) => {
            let c = Api::<RegistryCredential>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .with_context(|| format!("reading RegistryCredential {target}"))?
                .with_context(|| format!("RegistryCredential {target} not found"))?;
            (
                format!("RegistryCredential/{ns}/{name}"),
                c.spec.credential,
                c.status,
                vec![ns.to_string()],
                Api::<Secret>::namespaced(client.clone(), ns),
                Api::<ServiceAccount>::namespaced(client.clone(), ns),
            )
        }
        None => {
            let c = Api::<ClusterRegistryCredential>::all(client.clone())
                .get_opt(target)
                .await
                .with_context(|| format!("reading ClusterRegistryCredential {target}"))?
                .with_context(|| format!("ClusterRegistryCredential {target} not found"))?;
            let namespaces = Api::<Namespace>::all(client.clone()).list(&ListParams::default()).await?.items;
            let infos: Vec<(String, BTreeMap<String, String>, bool)> = namespaces
                .iter()
                .map(|n| (n.name_any(), n.labels().clone(), n.metadata.deletion_timestamp.is_some()))
                .collect();
            let targets = crate::targets::cluster_target_set(
                &c.spec,
                infos.iter().map(|(name, labels, terminating)| crate::targets::NamespaceInfo {
                    name,
                    labels,
                    terminating: *terminating,
                }),
            );
            (
                format!("ClusterRegistryCredential/{target}"),
                c.spec.credential,
                c.status,
                targets.into_iter().collect(),
                Api::<Secret>::all(client.clone()),
                Api::<ServiceAccount>::all(client.clone()),
            )
        }
    };
    let by_name = ListParams::default().fields(&format!("metadata.name={}", spec.secret.name));
    let secrets: BTreeMap<String, Secret> = secrets_api
        .list(&by_name)
        .await
        .context("listing the credential's Secrets")?
        .items
        .into_iter()
        .map(|s| (s.namespace().unwrap_or_default(), s))
        .collect();
    let mut service_accounts: BTreeMap<String, Vec<ServiceAccount>> = BTreeMap::new();
    for sa in sa_api.list(&ListParams::default()).await.context("listing ServiceAccounts")?.items {
        service_accounts.entry(sa.namespace().unwrap_or_default()).or_default().push(sa);
    }
    let report = explain_credential(&CredentialFacts {
        key,
        spec: &spec,
        status: status.as_ref(),
        targets,
        secrets: &secrets,
        service_accounts: &service_accounts,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", credential_text(&report));
    }
    Ok(if report.complete { Verdict::WouldPull } else { Verdict::WouldNotPull })
}

/// The credential report as text.
pub fn credential_text(r: &CredentialReport) -> String {
    let mut out = format!(
        "{} (Secret {}): Ready {}{}\n",
        r.credential,
        r.secret,
        r.ready.as_deref().unwrap_or("not reported"),
        r.ready_message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
    );
    out.push_str(&format!(
        "  registries {:?}; expires {}; next refresh {}\n",
        r.registries,
        r.expires_at.as_deref().unwrap_or("never"),
        r.next_refresh.as_deref().unwrap_or("not scheduled")
    ));
    for t in &r.targets {
        let patched = if t.service_accounts_patched.is_empty() {
            "none".to_string()
        } else {
            t.service_accounts_patched.join(", ")
        };
        let missing = if t.service_accounts_missing.is_empty() {
            String::new()
        } else {
            format!("; not yet: {}", t.service_accounts_missing.join(", "))
        };
        let failure = t.failure.as_deref().map(|f| format!("; status: {f}")).unwrap_or_default();
        out.push_str(&format!(
            "  {}: Secret {}; ServiceAccounts listing it: {patched}{missing}{failure}\n",
            t.namespace, t.secret
        ));
    }
    if let Some(c) = &r.clusters {
        out.push_str(&format!(
            "  other clusters: {} of {} hold it ({} namespaces)\n",
            c.synced, c.desired, c.namespaces
        ));
        for f in &c.failed {
            out.push_str(&format!("    {f}\n"));
        }
    }
    out.push_str(&format!("Verdict: {}\n", r.summary));
    out
}
