//! The chart's guardrails (`charts/regcred/files/guardrails/`), installed
//! into a test control plane so that every suite runs regcred under them:
//! ValidatingAdmissionPolicies that let regcred's identity write only what
//! it owns (docs/security.md).
//!
//! The files are applied as the chart renders them, with the identities
//! filled in: the operator the tests start ([`OPERATOR_USER`], a client
//! certificate in `system:masters`, so RBAC does not limit it but the
//! policies do) and `system:serviceaccount:regcred-system:regcred` (the
//! ServiceAccount some tests run it as). Their names get a `testenv.`
//! prefix, so that a `helm install` of the chart into the same control
//! plane installs its own beside them.

use std::fs;

use anyhow::{Context, Result};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde::Deserialize as _;
use serde_json::json;

use crate::repo_root;

/// The user name of the operator [`crate::operator::Operator::start`] runs
/// (its client certificate's common name).
pub const OPERATOR_USER: &str = "regcred-testenv-operator";

/// The identities the test control planes bind the guardrails to.
pub fn test_identities() -> Vec<String> {
    vec![OPERATOR_USER.to_string(), "system:serviceaccount:regcred-system:regcred".to_string()]
}

/// The audiences the test apiserver accepts (its `--service-account-issuer`),
/// which regcred may never request a token for.
pub const API_AUDIENCES: [&str; 2] = ["https://kubernetes.default.svc.cluster.local", "https://kubernetes.default.svc"];

fn cel_list(items: &[impl AsRef<str>]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{}'", s.as_ref())).collect();
    format!("[{}]", quoted.join(", "))
}

/// The guardrail policies as the chart renders them for `identities`
/// (`REGCRED_IDENTITIES`) and `api_audiences` (`REGCRED_API_AUDIENCES`).
pub fn policies(identities: &[String], api_audiences: &[&str]) -> Result<Vec<DynamicObject>> {
    let dir = repo_root().join("charts/regcred/files/guardrails");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = fs::read_to_string(&path)?
            .replace("REGCRED_IDENTITIES", &cel_list(identities))
            .replace("REGCRED_API_AUDIENCES", &cel_list(api_audiences));
        let value = serde_yaml::Value::deserialize(serde_yaml::Deserializer::from_str(&text))?;
        out.push(serde_yaml::from_value(value).with_context(|| format!("parsing {}", path.display()))?);
    }
    Ok(out)
}

/// Applies the guardrails and their bindings (names prefixed `testenv.`).
pub async fn install(client: &Client, identities: &[String]) -> Result<()> {
    let gvk = |kind| GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    let policy_api = Api::<DynamicObject>::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk("ValidatingAdmissionPolicy"), "validatingadmissionpolicies"),
    );
    let binding_api = Api::<DynamicObject>::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &gvk("ValidatingAdmissionPolicyBinding"),
            "validatingadmissionpolicybindings",
        ),
    );
    let params = PatchParams::apply("regcred-testenv").force();
    for mut policy in policies(identities, &API_AUDIENCES)? {
        let name = format!("testenv.{}", policy.metadata.name.clone().unwrap_or_default());
        policy.metadata.name = Some(name.clone());
        policy_api.patch(&name, &params, &Patch::Apply(&policy)).await.with_context(|| format!("applying {name}"))?;
        let binding: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"]}
        }))?;
        binding_api.patch(&name, &params, &Patch::Apply(&binding)).await.with_context(|| format!("binding {name}"))?;
    }
    Ok(())
}
