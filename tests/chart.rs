//! The Helm chart (`charts/regcred`): lint, rendering checked by kubeconform
//! against strict schemas made from the real control plane, the values
//! schema, the least-privilege RBAC, and a real `helm install`, `upgrade`
//! and `uninstall`, with the operator running as the chart's ServiceAccount.
//!
//! `helm` and `kubeconform` come from `hack/helm-tools.sh` (built from their
//! Go modules, cached). The chart tests use their own control plane (one per
//! test binary) and never start the admin operator of `tests/common` (only
//! its polling helper is used). The install test removes the CRDs the
//! control plane pre-installs (the chart installs them), so no other test
//! here may rely on them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use regcred::api::{ClusterRegistryCredential, CredentialStatus, RegistryCredential};
use regcred_testenv::chart::{
    Grant, grants, helm as helm_command, kubeconform, manifest_objects, refusal, refused_by_guardrail, rules_of,
    schema_location, write_kubeconform_schemas,
};
use regcred_testenv::google_standin::GoogleStandIn;
use regcred_testenv::operator::{Operator, record_secret};
use regcred_testenv::{ControlPlane, repo_root};
use serde_json::{Value, json};

const RELEASE: &str = "regcred";
const NS: &str = "regcred-system";
const CRDS: [&str; 2] = ["clusterregistrycredentials.regcred.dev", "registrycredentials.regcred.dev"];
const WAIT: Duration = Duration::from_secs(30);

/// The ClusterRole's rules, exactly (docs/install.md lists the same):
/// `(apiGroup, resources, verbs)`.
const CLUSTER_ROLE_RULES: &[(&str, &[&str], &[&str])] = &[
    ("", &["namespaces"], &["get", "list", "watch"]),
    ("", &["secrets"], &["get", "list", "watch", "create", "patch", "delete"]),
    ("", &["serviceaccounts"], &["get", "list", "watch", "patch"]),
    ("", &["serviceaccounts/token"], &["create"]),
    ("events.k8s.io", &["events"], &["create", "patch"]),
    ("regcred.dev", &["registrycredentials", "clusterregistrycredentials"], &["get", "list", "watch", "patch"]),
    ("regcred.dev", &["registrycredentials/status", "clusterregistrycredentials/status"], &["patch"]),
    (
        "admissionregistration.k8s.io",
        &["mutatingadmissionpolicies", "mutatingadmissionpolicybindings"],
        &["list", "watch"],
    ),
    ("", &["pods"], &["get", "list", "delete"]),
];

/// Stands for the Lease name in [`ROLE_RULES`].
const LEASE: &str = "<lease>";
/// `(apiGroup, resources, verbs, resourceNames)`.
type RoleRule = (&'static str, &'static [&'static str], &'static [&'static str], &'static [&'static str]);
/// The leader-election Role's rules in the release namespace, exactly.
const ROLE_RULES: &[RoleRule] = &[
    ("coordination.k8s.io", &["leases"], &["create"], &[]),
    ("coordination.k8s.io", &["leases"], &["get", "patch"], &[LEASE]),
];

/// The chart tests' control plane: without the test environment's own
/// guardrails, so that what refuses a write here is the chart's.
fn cp() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        ControlPlane::start(regcred_testenv::Options { guardrails: false, ..Default::default() })
            .unwrap_or_else(|e| panic!("{e:#}"))
    })
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/regcred")
}

fn all_options_values() -> PathBuf {
    chart_dir().join("ci/all-options-values.yaml")
}

fn kubeconfig() -> String {
    cp().kubeconfig_path().display().to_string()
}

// ---------------------------------------------------------------------------
// helm, kubeconform

fn helm(args: &[&str]) -> Output {
    regcred_testenv::chart::run_helm(cp(), args)
}

/// Runs helm and returns its stdout; panics with its stderr on failure.
fn helm_ok(args: &[&str]) -> String {
    regcred_testenv::chart::helm_ok(cp(), args)
}

fn template(extra: &[&str]) -> String {
    let chart = chart_dir().display().to_string();
    let mut args = vec!["template", RELEASE, &chart, "--namespace", NS];
    args.extend_from_slice(extra);
    helm_ok(&args)
}
fn object<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects.iter().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The strict schemas for kubeconform, made once per test binary from the
/// control plane's /openapi/v2 and the repository's CRDs.
fn schemas() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = cp().dir().join("kubeconform-schemas");
        let out = dir.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
                write_kubeconform_schemas(cp(), &repo_root().join("crds"), &out)
                    .await
                    .unwrap_or_else(|e| panic!("{e:#}"))
            })
        })
        .join()
        .unwrap();
        dir
    })
}

/// kubeconform's verdict on a manifest.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    valid: u64,
    invalid: u64,
    errors: u64,
    skipped: u64,
}

/// `kubeconform -strict -summary` with the generated schemas (and no
/// `-ignore-missing-schemas`: a kind without a schema is an error).
fn kubeconform_check(name: &str, manifest: &str) -> (Summary, String) {
    let file = cp().dir().join(format!("{name}.yaml"));
    fs::write(&file, manifest).unwrap();
    let mut cmd = kubeconform().unwrap_or_else(|e| panic!("{e:#}"));
    let out = cmd
        .args(["-strict", "-summary", "-output", "text", "-schema-location", &schema_location(schemas())])
        .arg(&file)
        .output()
        .expect("running kubeconform");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|l| l.starts_with("Summary:")).unwrap_or_else(|| panic!("no summary:\n{text}"));
    let number = |label: &str| -> u64 {
        let rest = line.split(&format!("{label}: ")).nth(1).unwrap_or_else(|| panic!("no {label} in {line}"));
        rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let summary = Summary {
        valid: number("Valid"),
        invalid: number("Invalid"),
        errors: number("Errors"),
        skipped: number("Skipped"),
    };
    (summary, text)
}

/// Lint, render and validate the chart with `values` (a values file or
/// none); returns the rendered objects.
fn lint_and_validate(name: &str, values: Option<&Path>) -> Vec<Value> {
    let chart = chart_dir().display().to_string();
    let values = values.map(|p| p.display().to_string());
    let mut lint = vec!["lint", "--strict", &chart, "--namespace", NS];
    let mut tmpl: Vec<&str> = vec![];
    if let Some(v) = &values {
        lint.extend(["--values", v.as_str()]);
        tmpl.extend(["--values", v.as_str()]);
    }
    let lint_out = helm_ok(&lint);
    assert!(lint_out.contains("0 chart(s) failed"), "{lint_out}");
    let manifest = template(&tmpl);
    let objs = manifest_objects(&manifest);
    let (summary, text) = kubeconform_check(name, &manifest);
    eprintln!("kubeconform ({name}): {summary:?}");
    assert_eq!(summary, Summary { valid: objs.len() as u64, ..Default::default() }, "kubeconform ({name}):\n{text}");
    objs
}

/// `v` with whole floats as integers (helm's YAML round trip turns
/// `3650.0` into `3650`).
fn normalized(v: &Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => json!(f as i64),
            _ => v.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), normalized(v))).collect()),
        _ => v.clone(),
    }
}

// ---------------------------------------------------------------------------
// RBAC

fn expected_cluster_grants() -> BTreeSet<Grant> {
    let rules: Vec<PolicyRule> = CLUSTER_ROLE_RULES
        .iter()
        .map(|(g, res, verbs)| PolicyRule {
            api_groups: Some(vec![g.to_string()]),
            resources: Some(res.iter().map(|s| s.to_string()).collect()),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .collect();
    grants(&rules)
}

fn expected_role_grants(lease: &str) -> BTreeSet<Grant> {
    let rules: Vec<PolicyRule> = ROLE_RULES
        .iter()
        .map(|(g, res, verbs, names)| PolicyRule {
            api_groups: Some(vec![g.to_string()]),
            resources: Some(res.iter().map(|s| s.to_string()).collect()),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            resource_names: Some(
                names.iter().map(|n| if *n == LEASE { lease.to_string() } else { n.to_string() }).collect(),
            ),
            ..Default::default()
        })
        .collect();
    grants(&rules)
}
// ---------------------------------------------------------------------------
// Tests without a cluster write

/// One license, said the same way everywhere a user or a scanner looks:
/// the LICENSE file (in the repository and in the packaged chart), the
/// crates, the chart's Artifact Hub annotation and the image's OCI label.
#[test]
fn the_license_is_apache_2_and_declared_everywhere() {
    let license = fs::read_to_string(repo_root().join("LICENSE")).expect("a LICENSE file");
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
    assert!(license.contains("END OF TERMS AND CONDITIONS"), "the whole license text");
    assert_eq!(fs::read_to_string(chart_dir().join("LICENSE")).unwrap(), license, "the chart ships the same LICENSE");
    for manifest in ["Cargo.toml", "testenv/Cargo.toml"] {
        let text = fs::read_to_string(repo_root().join(manifest)).unwrap();
        assert!(text.lines().any(|l| l == r#"license = "Apache-2.0""#), "{manifest}");
    }
    assert_eq!(chart_yaml()["annotations"]["artifacthub.io/license"], "Apache-2.0");
    let images = fs::read_to_string(repo_root().join("testenv/src/images.rs")).unwrap();
    assert!(images.contains(r#""org.opencontainers.image.licenses": "Apache-2.0""#));
    let dockerfile = fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("org.opencontainers.image.licenses=\"Apache-2.0\""), "Dockerfile label");
}

#[test]
fn chart_crds_are_exact_copies_of_crds_dir() {
    let names = |dir: &Path| -> BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".yaml"))
            .collect()
    };
    let crds = repo_root().join("crds");
    let copies = chart_dir().join("files/crds");
    assert_eq!(names(&crds), names(&copies), "charts/regcred/files/crds differs from crds/: run `make chart-crds`");
    for name in names(&crds) {
        assert!(
            fs::read(crds.join(&name)).unwrap() == fs::read(copies.join(&name)).unwrap(),
            "charts/regcred/files/crds/{name} differs from crds/{name}: run `make chart-crds`"
        );
    }
}

#[test]
fn lint_and_kubeconform_default_values() {
    let objs = lint_and_validate("default-values", None);
    let kinds: BTreeSet<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Service",
            "ServiceAccount"
        ]),
        "one replica: no leader election, so no Role; optional objects off"
    );

    // The CRDs are the repository's, kept on uninstall.
    for crd in objs.iter().filter(|o| o["kind"] == "CustomResourceDefinition") {
        assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
        let name = crd["metadata"]["name"].as_str().unwrap();
        let file: Value =
            serde_yaml::from_str(&fs::read_to_string(repo_root().join(format!("crds/{name}.yaml"))).unwrap()).unwrap();
        assert!(normalized(&crd["spec"]) == normalized(&file["spec"]), "{name}: rendered spec differs from crds/");
    }

    // Restricted Pod security, probes, resources, downward API.
    let deploy = object(&objs, "Deployment");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["serviceAccountName"], RELEASE);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["livenessProbe"]["httpGet"], json!({"path": "/healthz", "port": "metrics"}));
    assert_eq!(c["readinessProbe"]["httpGet"], json!({"path": "/readyz", "port": "metrics"}));
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["resources"], json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}));
    assert_eq!(c["image"], format!("regcred/regcred:{}", chart_yaml()["appVersion"].as_str().unwrap()));
    let env: BTreeMap<&str, &Value> =
        c["env"].as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap(), e)).collect();
    assert_eq!(env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(
        args,
        [
            "run",
            "--metrics-addr=0.0.0.0:8080",
            "--cluster-resource-namespace=regcred-system",
            "--log-level=info",
            "--log-format=json",
            "--concurrency=16",
            "--write-concurrency=32",
            "--provider-calls-per-second=10",
            "--provider-concurrency=4"
        ]
    );
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate", "one writer at a time without leader election");

    let service = object(&objs, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
}

#[test]
fn lint_and_kubeconform_with_every_option_on() {
    let objs = lint_and_validate("all-options", Some(&all_options_values()));
    let kinds: BTreeSet<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in
        ["ServiceMonitor", "PrometheusRule", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy", "Role", "RoleBinding"]
    {
        assert!(kinds.contains(kind), "{kind} not rendered with every option on: {kinds:?}");
    }
    let c = &object(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    for arg in [
        "--leader-elect",
        "--leader-election-namespace=regcred-system",
        "--leader-election-lease-name=regcred-leader",
        "--lease-duration-seconds=20",
        "--allow-namespaced-ambient-identity",
        "--cluster-resource-namespace=regcred-sources",
        "--metrics-addr=0.0.0.0:9090",
        "--provider-calls-per-second=5",
        "--provider-concurrency=2",
    ] {
        assert!(args.contains(&arg), "{arg} missing from {args:?}");
    }
    assert!(c["env"].as_array().unwrap().iter().any(|e| e["name"] == "HTTPS_PROXY"));
    let role = object(&objs, "Role");
    assert_eq!(grants(&rules_of(role)), expected_role_grants("regcred-leader"));

    // The validation is strict: an unknown field or a wrong type is caught,
    // in built-in kinds as in regcred's own.
    let mut bad = object(&objs, "Deployment").clone();
    bad["spec"]["template"]["spec"]["containers"][0]["securityContex"] = json!({});
    let (summary, text) = kubeconform_check("bad-deployment", &serde_yaml::to_string(&bad).unwrap());
    assert_eq!(summary.invalid, 1, "an unknown container field passed:\n{text}");
    let mut bad = object(&objs, "PrometheusRule").clone();
    bad["spec"]["groups"][0]["rules"][0]["fo"] = json!("5m");
    let (summary, text) = kubeconform_check("bad-prometheusrule", &serde_yaml::to_string(&bad).unwrap());
    assert_eq!(summary.invalid, 1, "an unknown rule field passed:\n{text}");
    let credential = |spec: Value| {
        serde_yaml::to_string(&json!({"apiVersion": "regcred.dev/v1beta1", "kind": "ClusterRegistryCredential",
            "metadata": {"name": "ghcr"}, "spec": spec}))
        .unwrap()
    };
    let good = json!({"provider": {"basic": {"registry": "ghcr.io", "secretRef": {"name": "ghcr-login"}}},
        "secret": {"name": "ghcr-pull"}, "serviceAccounts": {"all": true},
        "namespaceSelector": {"matchLabels": {"regcred.dev/pull": "ghcr"}}});
    let (summary, text) = kubeconform_check("good-credential", &credential(good.clone()));
    assert_eq!(summary, Summary { valid: 1, ..Default::default() }, "{text}");
    let mut typo = good;
    typo["serviceAccount"] = json!({"all": true});
    let (summary, text) = kubeconform_check("bad-credential", &credential(typo));
    assert_eq!(summary.invalid, 1, "an unknown spec field passed:\n{text}");
}

#[test]
fn values_schema_rejects_bad_values() {
    let dir = cp().dir().join("bad-values");
    fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("replicas: two", "/replicas"),
        ("replicas: 0", "/replicas"),
        ("replica: 2", "replica"),
        ("logFormat: xml", "/logFormat"),
        ("image:\n  repository: regcred\n  tag: 1\n  pullPolicy: IfNotPresent", "/image/tag"),
        ("image:\n  registry: example.com", "registry"),
        ("resources: 128Mi", "/resources"),
        ("leaderElection:\n  enabled: yes-please", "/leaderElection/enabled"),
        ("crds:\n  keep: \"false\"", "/crds/keep"),
        ("prometheusRule:\n  enabled: true\n  alerts:\n    RegcredTypo: {for: 5m}", "RegcredTypo"),
        ("prometheusRule:\n  enabled: true\n  alerts:\n    RegcredNotReady: {threshold: 1}", "threshold"),
        ("prometheusRule:\n  enabled: true\n  alerts:\n    RegcredRefreshesFailing: {for: soon}", "/for"),
        ("grafanaDashboard:\n  enabled: true\n  label: {}", "label"),
    ];
    let chart = chart_dir().display().to_string();
    for (i, (values, mentions)) in cases.iter().enumerate() {
        let file = dir.join(format!("bad-{i}.yaml"));
        fs::write(&file, values).unwrap();
        let out = helm(&["template", RELEASE, &chart, "--values", &file.display().to_string()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "values {values:?} were accepted");
        assert!(
            stderr.contains("values don't meet the specifications of the schema") && stderr.contains(mentions),
            "values {values:?}: expected a schema error about {mentions}, got:\n{stderr}"
        );
    }
}

#[test]
fn rendered_rbac_is_exactly_the_documented_set() {
    let objs = manifest_objects(&template(&["--set", "replicas=2"]));
    assert_eq!(grants(&rules_of(object(&objs, "ClusterRole"))), expected_cluster_grants());
    assert_eq!(grants(&rules_of(object(&objs, "Role"))), expected_role_grants(RELEASE));
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        assert_eq!(
            object(&objs, kind)["subjects"],
            json!([{"kind": "ServiceAccount", "name": RELEASE, "namespace": NS}]),
            "{kind} binds the chart's ServiceAccount only"
        );
    }
    let args = &object(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(args.as_array().unwrap().iter().any(|a| a == "--leader-elect"), "replicas > 1 turns leader election on");
}

/// The chart's MutatingAdmissionPolicies and their bindings are the files
/// the admission tests apply (`files/admission/`), in the API version asked
/// for, with the chart's labels; none is rendered when the cluster serves
/// neither version (`helm template`'s default capabilities here).
#[test]
fn rendered_admission_policies_are_the_tested_files() {
    let is_admission =
        |o: &&Value| o["kind"] == "MutatingAdmissionPolicy" || o["kind"] == "MutatingAdmissionPolicyBinding";
    let files: Vec<_> = fs::read_dir(chart_dir().join("files/admission")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 4, "a policy and its binding per credential kind: {files:?}");
    for version in ["v1", "v1beta1"] {
        let objs = manifest_objects(&template(&["--set", &format!("admissionPolicies.apiVersion={version}")]));
        let rendered: Vec<&Value> = objs.iter().filter(is_admission).collect();
        assert_eq!(rendered.len(), files.len());
        for path in &files {
            let mut want: Value = serde_yaml::from_str(&fs::read_to_string(path).unwrap()).unwrap();
            want["apiVersion"] = json!(format!("admissionregistration.k8s.io/{version}"));
            let got = rendered
                .iter()
                .find(|o| o["kind"] == want["kind"] && o["metadata"]["name"] == want["metadata"]["name"])
                .unwrap_or_else(|| panic!("{} not rendered", path.display()));
            let mut got = (*got).clone();
            assert_eq!(got["metadata"]["labels"]["app.kubernetes.io/instance"], RELEASE);
            got["metadata"].as_object_mut().unwrap().remove("labels");
            assert_eq!(got, want, "{}", path.display());
        }
        // Each policy has its binding, passing every credential as params.
        for policy in rendered.iter().filter(|o| o["kind"] == "MutatingAdmissionPolicy") {
            let name = &policy["metadata"]["name"];
            assert!(
                rendered.iter().any(|b| b["kind"] == "MutatingAdmissionPolicyBinding"
                    && b["spec"]["policyName"] == *name
                    && b["spec"]["paramRef"]["selector"] == json!({})),
                "no binding of {name}"
            );
        }
    }
    let objs = manifest_objects(&template(&[]));
    assert!(!objs.iter().any(|o| is_admission(&o)), "no policy for a cluster without the API");
    let objs = manifest_objects(&template(&[
        "--set",
        "admissionPolicies.install=false",
        "--set",
        "admissionPolicies.apiVersion=v1",
    ]));
    assert!(!objs.iter().any(|o| is_admission(&o)));
}

/// The PrometheusRule carries `files/alerts/regcred.rules.yaml` (the rules
/// tests/alerts.rs unit-tests and evaluates) and the dashboard ConfigMap
/// `files/dashboards/regcred.json`, exactly; per-alert values change only
/// what they name; neither is rendered by default.
#[test]
fn rendered_alerts_and_dashboard_are_the_files() {
    let rules: Value =
        serde_yaml::from_str(&fs::read_to_string(chart_dir().join("files/alerts/regcred.rules.yaml")).unwrap())
            .unwrap();
    let dashboard = fs::read_to_string(chart_dir().join("files/dashboards/regcred.json")).unwrap();
    let objs = manifest_objects(&template(&[
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "grafanaDashboard.enabled=true",
    ]));
    let rule = object(&objs, "PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], NS);
    assert_eq!(rule["metadata"]["labels"]["app.kubernetes.io/instance"], RELEASE);
    assert_eq!(normalized(&rule["spec"]), normalized(&rules), "the PrometheusRule is the rules file");
    let map = object(&objs, "ConfigMap");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1", "the Grafana sidecar's label");
    assert_eq!(map["data"]["regcred.json"].as_str(), Some(dashboard.as_str()), "the ConfigMap is the dashboard file");

    // Per-alert overrides, from the all-options values.
    let objs = manifest_objects(&template(&["--values", &all_options_values().display().to_string()]));
    let rule = object(&objs, "PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], "monitoring");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let mut want = rules.clone();
    let want_rules = want["groups"][0]["rules"].as_array_mut().unwrap();
    want_rules.retain(|r| r["alert"] != "RegcredPullQuotaLow");
    for r in want_rules.iter_mut() {
        match r["alert"].as_str().unwrap() {
            "RegcredCredentialExpiringSoon" => {
                let expr = r["expr"].as_str().unwrap().trim().to_string();
                assert!(expr.ends_with("< 900"), "{expr}");
                r["expr"] = json!(expr.replace("< 900", "< 1800"));
                r["for"] = json!("5m");
            }
            "RegcredRefreshesFailing" => {
                r["expr"] = json!(r["expr"].as_str().unwrap().replace("[10m]", "[20m]"));
                r["labels"]["severity"] = json!("critical");
            }
            _ => {}
        }
    }
    assert_eq!(normalized(&rule["spec"]), normalized(&want), "only the overridden fields change");
    let map = object(&objs, "ConfigMap");
    assert_eq!(map["metadata"]["namespace"], "monitoring");
    assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "Platform");
    assert_eq!(map["data"]["regcred.json"].as_str(), Some(dashboard.as_str()));

    let objs = manifest_objects(&template(&[]));
    assert!(!objs.iter().any(|o| o["kind"] == "PrometheusRule" || o["kind"] == "ConfigMap"), "off by default");
}

/// The chart's guardrails are the files the test environment installs
/// (`files/guardrails/`, `regcred_testenv::guardrails::policies`), bound to
/// the release's ServiceAccount and the configured API audiences, each with
/// a Deny binding; none is rendered without the ValidatingAdmissionPolicy
/// API or with `guardrails.enabled=false`.
#[test]
fn rendered_guardrails_are_the_tested_files() {
    const VAP: &str = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy";
    let objs =
        manifest_objects(&template(&["--api-versions", VAP, "--set", "guardrails.apiAudiences={https://api.example}"]));
    let identity = format!("system:serviceaccount:{NS}:{RELEASE}");
    let want =
        regcred_testenv::guardrails::policies(std::slice::from_ref(&identity), &["https://api.example"]).unwrap();
    let rendered: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "ValidatingAdmissionPolicy").collect();
    assert_eq!(rendered.len(), want.len(), "one policy per file");
    assert!(want.len() >= 5, "secrets, serviceaccounts, pods, events, tokenrequests");
    for want in want {
        let name = want.metadata.name.clone().unwrap();
        let got = rendered.iter().find(|p| p["metadata"]["name"] == name.as_str()).expect(&name);
        let mut got = (*got).clone();
        assert_eq!(got["metadata"]["labels"]["app.kubernetes.io/instance"], RELEASE);
        got["metadata"].as_object_mut().unwrap().remove("labels");
        assert_eq!(got, serde_json::to_value(&want).unwrap(), "{name}");
        let text = serde_json::to_string(&got).unwrap();
        assert!(text.contains(&format!("'{identity}'")) && !text.contains("REGCRED_"), "{name}: {text}");
        let binding = objs
            .iter()
            .find(|o| o["kind"] == "ValidatingAdmissionPolicyBinding" && o["metadata"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no binding for {name}"));
        assert_eq!(binding["spec"], json!({"policyName": name, "validationActions": ["Deny"]}));
    }
    let tokens = serde_json::to_string(&objs).unwrap();
    assert!(tokens.contains("'https://api.example'"), "the API audiences are filled in");
    for off in [template(&[]), template(&["--api-versions", VAP, "--set", "guardrails.enabled=false"])] {
        assert!(manifest_objects(&off).iter().all(|o| o["kind"] != "ValidatingAdmissionPolicy"), "{off}");
    }
}

/// The image cannot be built here (no container engine), but its recipe
/// is checked: multi-stage, the locked release build, a non-root runtime,
/// and a build context (after .dockerignore) from which Cargo resolves the
/// workspace offline.
#[test]
fn image_recipe_is_multi_stage_non_root_and_its_context_is_enough() {
    let root = repo_root();
    let dockerfile = fs::read_to_string(root.join("Dockerfile")).unwrap();
    let ignore = fs::read_to_string(root.join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert!(ignored.contains(&"target/") && ignored.contains(&".git/"), ".dockerignore: {ignored:?}");
    let froms: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage: {froms:?}");
    assert!(froms[1].contains("distroless") && froms[1].contains("nonroot"), "{}", froms[1]);
    assert!(dockerfile.contains("cargo build --release --locked --bin regcred"));
    let user = dockerfile.lines().rfind(|l| l.starts_with("USER ")).expect("a USER line");
    assert_eq!(user, "USER 65532:65532", "the chart's runAsUser");

    let excluded = |path: &str| {
        ignored.iter().any(|p| match p.strip_prefix("*") {
            Some(suffix) => path.ends_with(suffix),
            None => {
                let p = p.trim_start_matches("**/").trim_end_matches('/');
                path == p || path.starts_with(&format!("{p}/"))
            }
        })
    };
    let ctx = std::env::temp_dir().join(format!("regcred-image-context-{}", std::process::id()));
    let _ = fs::remove_dir_all(&ctx);
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from=")) {
        let parts: Vec<&str> = line.split_whitespace().skip(1).collect();
        let (_, sources) = parts.split_last().unwrap();
        for src in sources {
            assert!(root.join(src).exists(), "COPY {src}: no such path");
            assert!(!excluded(src), "COPY {src}, but .dockerignore excludes it");
            if root.join(src).is_dir() {
                copy_dir(&root.join(src), &ctx.join(src));
            } else {
                fs::create_dir_all(ctx.join(src).parent().unwrap()).unwrap();
                fs::copy(root.join(src), ctx.join(src)).unwrap();
            }
        }
    }
    for pattern in ignored.iter().filter(|p| !p.contains('*')) {
        let _ = fs::remove_dir_all(ctx.join(pattern.trim_end_matches('/')));
    }
    let _ = fs::remove_dir_all(ctx.join("testenv/target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Only this platform's packages: a Linux build never downloads
    // Windows-only ones (anstyle-wincon and the like), so a fresh machine's
    // registry cache does not hold them.
    let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host");
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--locked", "--offline", "--format-version", "1", "--filter-platform", &host])
        .current_dir(&ctx)
        .output()
        .unwrap();
    let _ = fs::remove_dir_all(&ctx);
    assert!(
        out.status.success(),
        "cargo metadata in the image's build context:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The permissions table between `<!-- marker -->` and `<!-- /marker -->`
/// in docs/install.md, as rules: the backquoted words of the API group,
/// resources, verbs and (if present) resource names columns.
fn documented_rules(marker: &str, lease: &str) -> Vec<PolicyRule> {
    let doc = fs::read_to_string(repo_root().join("docs/install.md")).unwrap();
    let start = doc.find(&format!("<!-- {marker} -->")).unwrap_or_else(|| panic!("no {marker} table"));
    let end = doc.find(&format!("<!-- /{marker} -->")).unwrap_or_else(|| panic!("no end of the {marker} table"));
    let quoted = |cell: &str| -> Vec<String> {
        cell.split('`').skip(1).step_by(2).map(|w| if w == "\"\"" { String::new() } else { w.to_string() }).collect()
    };
    doc[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let names =
                if cells.len() > 6 && cells[4].contains("leaseName") { vec![lease.to_string()] } else { vec![] };
            PolicyRule {
                api_groups: Some(quoted(cells[1])),
                resources: Some(quoted(cells[2])),
                verbs: quoted(cells[3]),
                resource_names: Some(names),
                ..Default::default()
            }
        })
        .collect()
}

#[test]
fn docs_list_exactly_the_tested_permissions() {
    assert_eq!(grants(&documented_rules("clusterrole-rules", RELEASE)), expected_cluster_grants());
    assert_eq!(grants(&documented_rules("role-rules", RELEASE)), expected_role_grants(RELEASE));
}

// ---------------------------------------------------------------------------
// Install, run as the ServiceAccount, upgrade, uninstall

/// Polls `f` every 100ms until it returns `Some`; panics after `WAIT`
/// with the tail of `op`'s log, if any.
async fn wait_until<T, Fut>(what: &str, op: Option<&Operator>, f: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    common::poll_logged(what, WAIT, Duration::from_millis(100), op, f).await
}

async fn create<K>(api: &Api<K>, obj: Value)
where
    K: Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let obj: K = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("creating {}: {e}", obj.name_any()));
}

async fn apply<K>(api: &Api<K>, name: &str, obj: Value)
where
    K: Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    api.patch(name, &PatchParams::apply("regcred-chart-test").force(), &Patch::Apply(&obj))
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

async fn put_login(client: &Client, ns: &str, name: &str, username: &str, password: &str) {
    record_secret(password);
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let obj = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
        "stringData": {"username": username, "password": password}});
    apply(&api, name, obj).await;
}

/// The `(username, password)` for `registry` in a pull Secret.
fn login_in(secret: &Secret, registry: &str) -> Option<(String, String)> {
    let data = secret.data.as_ref()?.get(".dockerconfigjson")?;
    let v: Value = serde_json::from_slice(&data.0).ok()?;
    let e = &v["auths"][registry];
    Some((e["username"].as_str()?.to_string(), e["password"].as_str()?.to_string()))
}

async fn pull_secrets(client: &Client, ns: &str, sa: &str) -> Vec<String> {
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), ns).get_opt(sa).await.unwrap();
    sa.and_then(|sa| sa.image_pull_secrets).unwrap_or_default().into_iter().map(|r| r.name).collect()
}

fn ready_reason(status: Option<&CredentialStatus>) -> Option<String> {
    status?.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.reason.clone())
}

/// Operator log lines that show an authorization failure: "forbidden"
/// anywhere, or a 403 status (resourceVersions are left out, which may
/// contain the digits 403).
fn authorization_failures(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            lower.contains("forbidden")
                || strip_resource_versions(&lower).split(|c: char| !c.is_ascii_alphanumeric()).any(|t| t == "403")
        })
        .map(str::to_string)
        .collect()
}

fn strip_resource_versions(line: &str) -> String {
    const KEY: &str = "resourceversion=";
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find(KEY) {
        out.push_str(&rest[..i]);
        rest = rest[i + KEY.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

/// The test control plane installs crds/ at start; a user's cluster has no
/// CRDs before `helm install`. Remove them so that the chart installs its own.
async fn remove_preinstalled_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        match crds.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("deleting CRD {name}: {e}"),
        }
    }
    for name in CRDS {
        wait_until(&format!("CRD {name} to be gone"), None, || async {
            crds.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
}

async fn wait_crds_established(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        wait_until(&format!("CRD {name} Established"), None, || async {
            let crd = crds.get_opt(name).await.unwrap()?;
            let conds = crd.status?.conditions?;
            conds.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
        })
        .await;
    }
}

/// The chart's Chart.yaml.
fn chart_yaml() -> Value {
    serde_yaml::from_str(&fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap()).unwrap()
}

/// A copy of the chart as its next version: the next patch version, whose
/// CRDs carry a changed printer-column description.
fn next_chart_version() -> PathBuf {
    let dir = cp().dir().join("chart-next/regcred");
    let _ = fs::remove_dir_all(&dir);
    copy_dir(&chart_dir(), &dir);
    let version = chart_yaml()["version"].as_str().unwrap().to_string();
    let (major_minor, patch) = version.rsplit_once('.').unwrap();
    let next = format!("{major_minor}.{}", patch.parse::<u32>().unwrap() + 1);
    let text = fs::read_to_string(dir.join("Chart.yaml")).unwrap();
    let chart_yaml = text.replace(&format!("version: {version}"), &format!("version: {next}"));
    assert_ne!(chart_yaml, text);
    fs::write(dir.join("Chart.yaml"), chart_yaml).unwrap();
    for name in CRDS {
        let path = dir.join(format!("files/crds/{name}.yaml"));
        let text = fs::read_to_string(&path).unwrap();
        const COLUMN: &str = "\n    - description: ";
        assert!(text.contains(COLUMN), "{name}: no printer column description to change");
        fs::write(&path, text.replacen(COLUMN, &format!("{COLUMN}{NEXT} "), 1)).unwrap();
    }
    dir
}

/// Marks the CRDs of [`next_chart_version`].
const NEXT: &str = "(chart 0.1.1)";

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn first_column_description(crd: &CustomResourceDefinition) -> String {
    let columns = crd.spec.versions[0].additional_printer_columns.as_deref().unwrap_or_default();
    columns.first().and_then(|c| c.description.clone()).unwrap_or_default()
}

#[tokio::test]
async fn helm_install_then_the_operator_runs_as_the_charts_service_account_then_upgrade_and_uninstall() {
    let cp = cp();
    let client = cp.client().await.unwrap();
    let kc = kubeconfig();
    let chart = chart_dir().display().to_string();
    remove_preinstalled_crds(&client).await;

    // Install, as a user would (leader election on, as with replicas > 1).
    let started = Instant::now();
    let out = helm_ok(&[
        "install",
        RELEASE,
        &chart,
        "--namespace",
        NS,
        "--create-namespace",
        "--kubeconfig",
        &kc,
        "--wait=false",
        "--set",
        "leaderElection.enabled=true",
    ]);
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(out.contains("kind: ClusterRegistryCredential"), "NOTES tell what to apply next:\n{out}");
    assert!(out.contains("Guardrails: ValidatingAdmissionPolicies"), "NOTES name the guardrails:\n{out}");
    eprintln!("helm install took {:?}", started.elapsed());
    wait_crds_established(&client).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let deploy = deployments.get(RELEASE).await.expect("the Deployment");
    let pod = deploy.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(RELEASE));
    assert!(pod.containers[0].args.as_ref().unwrap().iter().any(|a| a == "--leader-elect"));

    // RBAC is minimal: the installed rules are exactly the documented set.
    let cluster_role = Api::<ClusterRole>::all(client.clone()).get(RELEASE).await.expect("the ClusterRole");
    assert_eq!(grants(cluster_role.rules.as_deref().unwrap_or_default()), expected_cluster_grants());
    let role_name = format!("{RELEASE}-leader-election");
    let role = Api::<Role>::namespaced(client.clone(), NS).get(&role_name).await.expect("the leader-election Role");
    assert_eq!(grants(role.rules.as_deref().unwrap_or_default()), expected_role_grants(RELEASE));
    let crb = Api::<ClusterRoleBinding>::all(client.clone()).get(RELEASE).await.unwrap();
    let rb = Api::<RoleBinding>::namespaced(client.clone(), NS).get(&role_name).await.unwrap();
    for subjects in [crb.subjects.unwrap(), rb.subjects.unwrap()] {
        assert_eq!(subjects.len(), 1);
        assert_eq!((subjects[0].kind.as_str(), subjects[0].name.as_str()), ("ServiceAccount", RELEASE));
        assert_eq!(subjects[0].namespace.as_deref(), Some(NS));
    }

    // RBAC is sufficient: regcred authenticated as the chart's ServiceAccount
    // (a TokenRequest token), with leader election, does everything.
    let sa_kubeconfig = cp.dir().join("regcred-sa.kubeconfig");
    fs::write(&sa_kubeconfig, cp.service_account_kubeconfig(NS, RELEASE).await.unwrap()).unwrap();
    let google = GoogleStandIn::start().unwrap();
    const POOL: &str = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/chart/providers/envtest";
    google.add_pool_provider_for_cluster(POOL, Duration::from_secs(3600), cp).unwrap_or_else(|e| panic!("{e:#}"));
    let op = Operator::start_as(
        cp,
        Path::new(env!("CARGO_BIN_EXE_regcred")),
        &sa_kubeconfig,
        NS,
        &["--leader-elect", "--leader-election-namespace", NS, "--leader-election-lease-name", RELEASE],
        &[("POD_NAME", "regcred-chart-test")],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let op = &op;
    run_scenario(&client, op, &google, POOL).await;
    let lease = Api::<Lease>::namespaced(client.clone(), NS).get(RELEASE).await.expect("the Lease");
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("regcred-chart-test"));
    let failures = authorization_failures(&op.log_text());
    assert!(failures.is_empty(), "the operator was refused something:\n{}", failures.join("\n"));
    drop(google);

    // A thief with the chart's ServiceAccount token: the chart's guardrails
    // refuse every write outside what regcred owns.
    let thief = cp.service_account_client(NS, RELEASE).await.unwrap();
    a_thief_with_the_token_is_refused(&client, &thief).await;

    // Upgrade to the chart's next version: the CRDs follow, the optional
    // objects appear.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        assert!(!first_column_description(&crds.get(name).await.unwrap()).starts_with(NEXT));
    }
    // A version a newer regcred would have added, with an object stored in
    // it: the chart, which does not know it, keeps it served (else the
    // apiserver refuses the CRD and `helm rollback` fails).
    let mut crd = crds.get(CRDS[1]).await.unwrap();
    let mut newer = crd.spec.versions[0].clone();
    newer.name = "v1".into();
    for v in &mut crd.spec.versions {
        v.storage = false;
    }
    crd.spec.versions.push(newer);
    crds.replace(CRDS[1], &PostParams::default(), &crd).await.expect("a newer stored version");
    let newer_rcreds = Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        "chart-a",
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("regcred.dev", "v1", "RegistryCredential")),
    );
    let from_the_future = json!({"apiVersion": "regcred.dev/v1", "kind": "RegistryCredential",
        "metadata": {"name": "from-the-future", "namespace": "chart-a"},
        "spec": {"provider": {"basic": {"registry": "future.example", "secretRef": {"name": "x"}}}, "secret": {"name": "future-pull"}}});
    wait_until("regcred.dev/v1 served", None, || async {
        newer_rcreds
            .create(&PostParams::default(), &serde_json::from_value(from_the_future.clone()).unwrap())
            .await
            .ok()
    })
    .await;
    let next = next_chart_version().display().to_string();
    let out = helm_ok(&[
        "upgrade",
        RELEASE,
        &next,
        "--namespace",
        NS,
        "--kubeconfig",
        &kc,
        "--wait=false",
        "--set",
        "replicas=2",
        "--set",
        "podDisruptionBudget.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
    ]);
    assert!(out.contains("STATUS: deployed") && out.contains("REVISION: 2"), "{out}");
    for name in CRDS {
        let crd = crds.get(name).await.unwrap();
        assert!(first_column_description(&crd).starts_with(NEXT), "helm upgrade did not update CRD {name}");
        assert_eq!(crd.annotations().get("helm.sh/resource-policy").map(String::as_str), Some("keep"));
    }
    let crd = crds.get(CRDS[1]).await.unwrap();
    let versions: Vec<(&str, bool, bool)> =
        crd.spec.versions.iter().map(|v| (v.name.as_str(), v.served, v.storage)).collect();
    assert!(versions.contains(&("v1", true, false)), "the stored newer version was dropped: {versions:?}");
    assert!(newer_rcreds.get("from-the-future").await.is_ok(), "an object in the kept version is readable");
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "chart-a");
    rcreds.delete("from-the-future", &DeleteParams::default()).await.unwrap();
    wait_until("from-the-future deleted (finalizer)", None, || async {
        rcreds.get_opt("from-the-future").await.unwrap().is_none().then_some(())
    })
    .await;
    let deploy = deployments.get(RELEASE).await.unwrap();
    assert_eq!(deploy.spec.as_ref().unwrap().replicas, Some(2));
    let kinds = helm_ok(&["get", "manifest", RELEASE, "--namespace", NS, "--kubeconfig", &kc]);
    for kind in ["kind: PodDisruptionBudget", "kind: NetworkPolicy", "kind: Role"] {
        assert!(kinds.contains(kind), "{kind} missing after the upgrade");
    }

    // Uninstall: everything goes but the CRDs, and so users' credentials.
    let survivor = json!({"apiVersion": "regcred.dev/v1beta1", "kind": "RegistryCredential",
        "metadata": {"name": "survivor", "namespace": "chart-a"},
        "spec": {"provider": {"basic": {"registry": "survivor.example", "secretRef": {"name": "x"}}}, "secret": {"name": "survivor-pull"}}});
    create(&rcreds, survivor).await;
    let out = helm_ok(&["uninstall", RELEASE, "--namespace", NS, "--kubeconfig", &kc]);
    assert!(out.contains("kept due to the resource policy"), "{out}");
    for name in CRDS {
        assert!(crds.get_opt(name).await.unwrap().is_some(), "helm uninstall deleted CRD {name}");
    }
    assert!(rcreds.get_opt("survivor").await.unwrap().is_some(), "the RegistryCredential is gone");
    assert!(deployments.get_opt(RELEASE).await.unwrap().is_none());
    assert!(Api::<ClusterRole>::all(client.clone()).get_opt(RELEASE).await.unwrap().is_none());
    assert!(Api::<ServiceAccount>::namespaced(client.clone(), NS).get_opt(RELEASE).await.unwrap().is_none());
}

/// Fan-out with ServiceAccount patching, rotation, a namespace leaving the
/// selector, a namespaced credential, a serviceAccountRef (TokenRequest),
/// Events, and cleanup: every kind of request the operator makes.
async fn run_scenario(client: &Client, op: &Operator, google: &GoogleStandIn, pool: &str) {
    const REGISTRY: &str = "registry.chart.example";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in ["chart-a", "chart-b", "chart-c"] {
        create(&namespaces, json!({"metadata": {"name": ns, "labels": {"regcred.dev/pull": "chart"}}})).await;
    }
    create(&Api::<ServiceAccount>::namespaced(client.clone(), "chart-a"), json!({"metadata": {"name": "builder"}}))
        .await;

    // Fan-out to three namespaces, every ServiceAccount patched.
    put_login(client, NS, "chart-login", "chart-user", "chart-pass-1").await;
    let crcreds: Api<ClusterRegistryCredential> = Api::all(client.clone());
    apply(
        &crcreds,
        "chart-fanout",
        json!({"apiVersion": "regcred.dev/v1beta1", "kind": "ClusterRegistryCredential",
            "metadata": {"name": "chart-fanout"},
            "spec": {"provider": {"basic": {"registry": REGISTRY, "secretRef": {"name": "chart-login"}}},
                "secret": {"name": "chart-pull"}, "serviceAccounts": {"all": true},
                "injection": {"enabled": true}, "recovery": {"enabled": true},
                "namespaceSelector": {"matchLabels": {"regcred.dev/pull": "chart"}}}}),
    )
    .await;
    let expect_login = |password: &'static str| async move {
        for ns in ["chart-a", "chart-b", "chart-c"] {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
            wait_until(&format!("{ns}/chart-pull with {password}"), Some(op), || async {
                let s = secrets.get_opt("chart-pull").await.unwrap()?;
                (login_in(&s, REGISTRY) == Some(("chart-user".into(), password.into()))).then_some(())
            })
            .await;
        }
    };
    expect_login("chart-pass-1").await;
    for (ns, sa) in [("chart-a", "default"), ("chart-a", "builder"), ("chart-b", "default"), ("chart-c", "default")] {
        wait_until(&format!("{ns}/{sa} to list chart-pull"), Some(op), || async {
            pull_secrets(client, ns, sa).await.contains(&"chart-pull".to_string()).then_some(())
        })
        .await;
    }
    wait_until("chart-fanout Ready 3/3", Some(op), || async {
        let s = crcreds.get("chart-fanout").await.unwrap().status?;
        (ready_reason(Some(&s)).as_deref() == Some("Synced") && s.targets.as_ref()?.synced == 3).then_some(())
    })
    .await;
    // Injection: the chart installed the policies and their bindings,
    // regcred sees them (list, watch on both); recovery
    // listed the new namespaces' Pods (list on pods).
    wait_until("chart-fanout InjectionActive", Some(op), || async {
        let s = crcreds.get("chart-fanout").await.unwrap().status?;
        let c = s.conditions.iter().find(|c| c.type_ == "Injection")?;
        (c.reason == "InjectionActive").then_some(())
    })
    .await;

    // Rotation: a new password reaches every namespace.
    put_login(client, NS, "chart-login", "chart-user", "chart-pass-2").await;
    expect_login("chart-pass-2").await;

    // A namespace leaving the selector loses the Secret and the entry.
    apply(
        &namespaces,
        "chart-c",
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "chart-c", "labels": {"regcred.dev/pull": "no"}}}),
    )
    .await;
    wait_until("chart-c/chart-pull removed", Some(op), || async {
        Api::<Secret>::namespaced(client.clone(), "chart-c")
            .get_opt("chart-pull")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    wait_until("chart-c/default without chart-pull", Some(op), || async {
        (!pull_secrets(client, "chart-c", "default").await.contains(&"chart-pull".to_string())).then_some(())
    })
    .await;

    // A namespaced RegistryCredential with a basic login from its namespace.
    put_login(client, "chart-b", "team-login", "team-user", "team-pass-1").await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), "chart-b");
    apply(
        &rcreds,
        "team",
        json!({"apiVersion": "regcred.dev/v1beta1", "kind": "RegistryCredential",
            "metadata": {"name": "team", "namespace": "chart-b"},
            "spec": {"provider": {"basic": {"registry": "team.chart.example", "secretRef": {"name": "team-login"}}},
                "secret": {"name": "team-pull"}, "serviceAccounts": {"names": ["default"]}}}),
    )
    .await;
    wait_until("chart-b/team Ready", Some(op), || async {
        let r = rcreds.get("team").await.unwrap();
        (ready_reason(r.status.as_ref()).as_deref() == Some("Synced")).then_some(())
    })
    .await;
    let team_pull = Api::<Secret>::namespaced(client.clone(), "chart-b").get("team-pull").await.unwrap();
    assert_eq!(login_in(&team_pull, "team.chart.example"), Some(("team-user".into(), "team-pass-1".into())));
    wait_until("chart-b/default to list team-pull", Some(op), || async {
        pull_secrets(client, "chart-b", "default").await.contains(&"team-pull".to_string()).then_some(())
    })
    .await;

    // serviceAccountRef: a TokenRequest for a ServiceAccount in the
    // credential's namespace, exchanged at the (stand-in) Google STS.
    create(&Api::<ServiceAccount>::namespaced(client.clone(), "chart-b"), json!({"metadata": {"name": "puller"}}))
        .await;
    apply(
        &rcreds,
        "federated",
        json!({"apiVersion": "regcred.dev/v1beta1", "kind": "RegistryCredential",
            "metadata": {"name": "federated", "namespace": "chart-b"},
            "spec": {"provider": {"google": {"registries": ["europe-docker.pkg.dev"],
                "auth": {"serviceAccountRef": {"name": "puller", "audience": pool, "tokenUrl": google.sts_url()}}}},
                "secret": {"name": "federated-pull"}}}),
    )
    .await;
    wait_until("chart-b/federated Ready", Some(op), || async {
        let r = rcreds.get("federated").await.unwrap();
        (ready_reason(r.status.as_ref()).as_deref() == Some("Synced")).then_some(())
    })
    .await;
    let federated = Api::<Secret>::namespaced(client.clone(), "chart-b").get("federated-pull").await.unwrap();
    let (_, token) = login_in(&federated, "europe-docker.pkg.dev").expect("a login for europe-docker.pkg.dev");
    record_secret(&token);
    assert!(google.issued(&token).is_some(), "the token was not issued by the STS stand-in");

    // Events were published (events.k8s.io create).
    let events: Api<Event> = Api::namespaced(client.clone(), "chart-b");
    wait_until("an Event about chart-b/team", Some(op), || async {
        let list = events.list(&Default::default()).await.unwrap();
        list.items.iter().any(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("team")).then_some(())
    })
    .await;

    // Cleanup: deleting the credentials removes their Secrets and entries,
    // and the finalizers let them go.
    crcreds.delete("chart-fanout", &DeleteParams::default()).await.unwrap();
    rcreds.delete("team", &DeleteParams::default()).await.unwrap();
    rcreds.delete("federated", &DeleteParams::default()).await.unwrap();
    for (ns, name) in
        [("chart-a", "chart-pull"), ("chart-b", "chart-pull"), ("chart-b", "team-pull"), ("chart-b", "federated-pull")]
    {
        wait_until(&format!("{ns}/{name} removed"), Some(op), || async {
            Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    for (ns, sa) in [("chart-a", "default"), ("chart-a", "builder"), ("chart-b", "default")] {
        wait_until(&format!("{ns}/{sa} without regcred's entries"), Some(op), || async {
            let names = pull_secrets(client, ns, sa).await;
            names.iter().all(|n| n != "chart-pull" && n != "team-pull").then_some(())
        })
        .await;
    }
    wait_until("the credentials to be deleted", Some(op), || async {
        let gone = crcreds.get_opt("chart-fanout").await.unwrap().is_none()
            && rcreds.get_opt("team").await.unwrap().is_none()
            && rcreds.get_opt("federated").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
}

#[test]
fn authorization_failures_are_found_and_resource_versions_ignored() {
    let log = "GET /api/v1/secrets?resourceVersion=1403&watch=true\n\
               list failed: ApiError: secrets is forbidden: User cannot list\n\
               request failed status=403\n\
               GET /api/v1/namespaces?resourceVersion=403\n\
               2026-01-01T00:00:00.403Z INFO ok";
    assert_eq!(authorization_failures(log).len(), 2, "{:?}", authorization_failures(log));
}
/// The chart's `kubeVersion` admits every supported minor (hack/versions.env,
/// docs/compatibility.md), cloud-suffixed versions included, and Helm
/// refuses to install on the minor before the oldest.
#[test]
fn the_chart_installs_on_the_supported_minors_only() {
    let chart = regcred_testenv::repo_root().join("charts/regcred").display().to_string();
    let matrix = regcred_testenv::version::matrix();
    let oldest = matrix[0];
    let mut accepted: Vec<String> = matrix.iter().map(|v| v.to_string()).collect();
    accepted.push(format!("v1.{}.5-eks-1", oldest.minor));
    accepted.push(format!("v1.{}.0-gke.100", matrix.last().unwrap().minor));
    for v in &accepted {
        helm_ok(&["template", RELEASE, &chart, "--namespace", NS, "--kube-version", v]);
    }
    let older = format!("1.{}.9", oldest.minor - 1);
    let out = helm(&["template", RELEASE, &chart, "--namespace", NS, "--kube-version", &older]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("requires kubeVersion"), "{older}: {stderr}");
}

/// Asserts that RBAC refused `what` (regcred's role has no such verb).
fn refused_by_rbac(what: &str, result: Result<impl Sized, kube::Error>) {
    let message = refusal(what, result);
    assert!(message.contains("cannot"), "{what}: not refused by RBAC: {message}");
    eprintln!("{what}: refused: {message}");
}

/// Acting with regcred's own ServiceAccount token (`thief`), as someone who
/// stole it would, every write outside what regcred owns is refused by the
/// apiserver; what regcred needs still works.
async fn a_thief_with_the_token_is_refused(admin: &Client, thief: &Client) {
    let ns = "chart-victim";
    create(&Api::<Namespace>::all(admin.clone()), json!({"metadata": {"name": ns}})).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let stolen_secrets: Api<Secret> = Api::namespaced(thief.clone(), ns);
    let tls_key = "victim-tls-key-material";
    record_secret(tls_key);
    create(&secrets, json!({"metadata": {"name": "db"}, "stringData": {"password": tls_key}})).await;
    let pull_cfg = json!({"auths": {"r.example": {"auth": "dTpw"}}}).to_string();
    create(
        &secrets,
        json!({"metadata": {"name": "pull", "labels": {"app.kubernetes.io/managed-by": "regcred"}},
               "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": pull_cfg}}),
    )
    .await;
    let guard = "guard-secrets.regcred.dev";
    let merge = |v: Value| Patch::Merge(v);
    let pp = PatchParams::default();
    refused_by_guardrail(
        "overwriting an unmanaged Secret",
        guard,
        stolen_secrets.patch("db", &pp, &merge(json!({"stringData": {"password": "mine"}}))).await,
    );
    refused_by_guardrail(
        "labelling an unmanaged Secret as regcred's",
        guard,
        stolen_secrets
            .patch("db", &pp, &merge(json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "regcred"}}})))
            .await,
    );
    refused_by_guardrail(
        "deleting an unmanaged Secret",
        guard,
        stolen_secrets.delete("db", &DeleteParams::default()).await,
    );
    let opaque: Secret = serde_json::from_value(json!({"metadata": {"name": "planted",
        "labels": {"app.kubernetes.io/managed-by": "regcred"}}, "stringData": {"k": "v"}}))
    .unwrap();
    refused_by_guardrail(
        "creating an Opaque Secret",
        guard,
        stolen_secrets.create(&PostParams::default(), &opaque).await,
    );
    let unlabelled: Secret = serde_json::from_value(json!({"metadata": {"name": "planted"},
        "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": pull_cfg}}))
    .unwrap();
    refused_by_guardrail(
        "creating an unlabelled pull Secret",
        guard,
        stolen_secrets.create(&PostParams::default(), &unlabelled).await,
    );
    refused_by_guardrail(
        "stripping the label off a pull Secret",
        guard,
        stolen_secrets
            .patch("pull", &pp, &merge(json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}})))
            .await,
    );
    assert_eq!(
        secrets.get("db").await.unwrap().data.unwrap()["password"].0,
        tls_key.as_bytes(),
        "the victim's Secret is intact"
    );
    // What regcred does is still allowed: a labelled pull Secret's data.
    stolen_secrets
        .patch("pull", &pp, &merge(json!({"stringData": {".dockerconfigjson": pull_cfg}})))
        .await
        .expect("regcred may update a pull Secret it manages");

    // ServiceAccounts: only imagePullSecrets.
    let sas: Api<ServiceAccount> = Api::namespaced(thief.clone(), ns);
    create(&Api::<ServiceAccount>::namespaced(admin.clone(), ns), json!({"metadata": {"name": "app"}})).await;
    let guard = "guard-serviceaccounts.regcred.dev";
    refused_by_guardrail(
        "adding a Secret to a ServiceAccount's secrets",
        guard,
        sas.patch("app", &pp, &merge(json!({"secrets": [{"name": "db"}]}))).await,
    );
    refused_by_guardrail(
        "setting automountServiceAccountToken",
        guard,
        sas.patch("app", &pp, &merge(json!({"automountServiceAccountToken": true}))).await,
    );
    refused_by_guardrail(
        "annotating a ServiceAccount with a cloud role",
        guard,
        sas.patch(
            "app",
            &pp,
            &merge(json!({"metadata": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/admin"}}})),
        )
        .await,
    );
    sas.patch("app", &pp, &merge(json!({"imagePullSecrets": [{"name": "pull"}]})))
        .await
        .expect("regcred may set imagePullSecrets");

    // Pods: only one stuck on a pull that a controller recreates.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(admin.clone(), ns);
    let pod = json!({"metadata": {"name": "web"}, "spec": {"nodeName": "elsewhere", "automountServiceAccountToken": false,
        "containers": [{"name": "web", "image": "r.example/web:1"}]}});
    create(&pods, pod).await;
    pods.patch_status(
        "web",
        &pp,
        &merge(json!({"status": {"phase": "Running", "containerStatuses": [{"name": "web", "image": "r.example/web:1",
            "imageID": "", "ready": true, "restartCount": 0, "started": true,
            "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}}}]}})),
    )
    .await
    .unwrap();
    refused_by_guardrail(
        "deleting a running Pod",
        "guard-pods.regcred.dev",
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(thief.clone(), ns)
            .delete("web", &DeleteParams::default())
            .await,
    );

    // Credentials: only regcred's own finalizer; never the spec (what a
    // credential mints and where it writes), never someone else's
    // finalizer, no deletion.
    let admin_rcreds: Api<RegistryCredential> = Api::namespaced(admin.clone(), ns);
    create(
        &admin_rcreds,
        json!({"metadata": {"name": "victim-cred", "finalizers": ["example.com/keep"]},
               "spec": {"provider": {"basic": {"registry": "r.example", "secretRef": {"name": "login"}}},
                        "secret": {"name": "victim-pull"}}}),
    )
    .await;
    let stolen_rcreds: Api<RegistryCredential> = Api::namespaced(thief.clone(), ns);
    let guard = "guard-credentials.regcred.dev";
    refused_by_guardrail(
        "changing a credential's spec",
        guard,
        stolen_rcreds.patch("victim-cred", &pp, &merge(json!({"spec": {"secret": {"name": "kube-proxy"}}}))).await,
    );
    refused_by_guardrail(
        "removing someone else's finalizer",
        guard,
        stolen_rcreds
            .patch("victim-cred", &pp, &merge(json!({"metadata": {"finalizers": ["regcred.dev/cleanup"]}})))
            .await,
    );
    refused_by_rbac("deleting a credential", stolen_rcreds.delete("victim-cred", &DeleteParams::default()).await);
    stolen_rcreds
        .patch(
            "victim-cred",
            &pp,
            &merge(json!({"metadata": {"finalizers": ["example.com/keep", "regcred.dev/cleanup"]}})),
        )
        .await
        .expect("regcred may add its own finalizer");
    admin_rcreds
        .patch("victim-cred", &pp, &merge(json!({"metadata": {"finalizers": ["regcred.dev/cleanup"]}})))
        .await
        .unwrap();

    // Events: only about regcred's credentials and Pods.
    let forged: Event = serde_json::from_value(json!({"metadata": {"name": "forged"},
        "eventTime": "2026-12-01T00:00:00.000000Z", "reportingController": "regcred.dev/regcred",
        "reportingInstance": "x", "action": "Rotated", "reason": "Rotated", "type": "Normal",
        "regarding": {"apiVersion": "v1", "kind": "Secret", "namespace": ns, "name": "db"}}))
    .unwrap();
    refused_by_guardrail(
        "an Event about someone else's Secret",
        "guard-events.regcred.dev",
        Api::<Event>::namespaced(thief.clone(), ns).create(&PostParams::default(), &forged).await,
    );

    // Admission configuration: kube-apiserver runs no admission policy on
    // admissionregistration.k8s.io's policies and bindings, so regcred gets
    // no write access to them at all (RBAC refuses): the thief can neither
    // bind another policy, nor unbind the chart's injection, nor turn the
    // guardrails off.
    let gvk = kube::api::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", "MutatingAdmissionPolicyBinding");
    let mapbs: Api<kube::api::DynamicObject> = Api::all_with(
        thief.clone(),
        &kube::api::ApiResource::from_gvk_with_plural(&gvk, "mutatingadmissionpolicybindings"),
    );
    let foreign: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": "regcred.crcred.looks-like-ours"},
        "spec": {"policyName": "someone-elses-policy", "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"}}}))
    .unwrap();
    refused_by_rbac(
        "binding a MutatingAdmissionPolicy that is not regcred's",
        mapbs.create(&PostParams::default(), &foreign).await,
    );
    let chart_binding = "inject-pull-secret.clusterregistrycredentials.regcred.dev";
    assert!(mapbs.get_opt(chart_binding).await.is_err(), "regcred may list and watch bindings, not get one");
    refused_by_rbac(
        "deleting the chart's injection binding",
        mapbs.delete(chart_binding, &DeleteParams::default()).await,
    );
    let vapbs: Api<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding> =
        Api::all(thief.clone());
    refused_by_rbac("unbinding a guardrail", vapbs.delete("guard-secrets.regcred.dev", &DeleteParams::default()).await);

    // Tokens: never one the Kubernetes API accepts.
    let kube_system: Api<ServiceAccount> = Api::namespaced(thief.clone(), "kube-system");
    let token_request = |audiences: Option<Vec<&str>>| {
        serde_json::from_value::<k8s_openapi::api::authentication::v1::TokenRequest>(json!({
            "spec": {"audiences": audiences.map(|a| a.iter().map(|s| s.to_string()).collect::<Vec<_>>())}}))
        .unwrap()
    };
    create(&Api::<ServiceAccount>::namespaced(admin.clone(), "kube-system"), json!({"metadata": {"name": "powerful"}}))
        .await;
    let guard = "guard-tokenrequests.regcred.dev";
    refused_by_guardrail(
        "a token for the API (default audiences)",
        guard,
        kube_system.create_token_request("powerful", &PostParams::default(), &token_request(None)).await,
    );
    refused_by_guardrail(
        "a token for the API's audience",
        guard,
        kube_system
            .create_token_request(
                "powerful",
                &PostParams::default(),
                &token_request(Some(vec!["sts.amazonaws.com", "https://kubernetes.default.svc.cluster.local"])),
            )
            .await,
    );
    kube_system
        .create_token_request("powerful", &PostParams::default(), &token_request(Some(vec!["sts.amazonaws.com"])))
        .await
        .expect("a token for a cloud's audience (what serviceAccountRef needs)");
}

/// On a cluster that serves no ValidatingAdmissionPolicy API (before 1.30,
/// or with it turned off, as here), `helm install` installs the RBAC alone,
/// no guardrail, and its NOTES say what that leaves open.
#[tokio::test]
async fn without_the_validating_policy_api_the_chart_installs_rbac_alone_and_says_so() {
    let cp = ControlPlane::start(regcred_testenv::Options {
        crd_dir: None,
        controller_manager: false,
        guardrails: false,
        apiserver_args: vec![
            "--runtime-config=admissionregistration.k8s.io/v1/validatingadmissionpolicies=false,\
             admissionregistration.k8s.io/v1/validatingadmissionpolicybindings=false"
                .into(),
            // The plugin waits for the informers of the API it serves.
            "--disable-admission-plugins=ValidatingAdmissionPolicy".into(),
        ],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let client = cp.client().await.unwrap();
    let gv = client.list_api_group_resources("admissionregistration.k8s.io/v1").await.unwrap();
    assert!(gv.resources.iter().all(|r| !r.name.starts_with("validatingadmissionpolic")), "the API is still served");
    let home = cp.dir().join("helm-home");
    let mut helm = helm_command(&home).unwrap_or_else(|e| panic!("{e:#}"));
    let kc = cp.kubeconfig_path().display().to_string();
    let chart = chart_dir().display().to_string();
    let out = helm
        .args(["install", RELEASE, &chart, "--namespace", NS, "--create-namespace", "--kubeconfig", &kc])
        .args(["--wait=false"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("the guardrails are NOT installed"), "NOTES say so:\n{stdout}");
    assert!(Api::<ClusterRole>::all(client.clone()).get_opt(RELEASE).await.unwrap().is_some(), "RBAC installed");
    let manifest = helm_command(&home)
        .unwrap()
        .args(["get", "manifest", RELEASE, "--namespace", NS, "--kubeconfig", &kc])
        .output()
        .unwrap();
    let manifest = String::from_utf8_lossy(&manifest.stdout);
    assert!(manifest.contains("kind: ClusterRole") && !manifest.contains("ValidatingAdmissionPolicy"), "{manifest}");
}
