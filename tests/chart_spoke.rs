//! The chart's fleet side (docs/fleet.md): spoke-only mode, installed with a
//! real `helm install` into a real control plane, `hack/spoke-kubeconfig.sh`
//! turning its token into the hub's kubeconfig Secret (Cluster API and Argo
//! CD formats, read back with regcred's own parser), and what that token
//! may and may not do in the spoke (Secrets, ServiceAccounts, recovery's
//! Pods and Events, the injection policy's parameters, which new Pods then
//! get); and, in hub mode, the fleet's flags and the Role its shard Leases
//! need, proven by running the Lease code as a ServiceAccount bound by that
//! Role. On 1.33 (no MutatingAdmissionPolicy API) spoke mode installs no
//! injection, and the test checks that instead.
//!
//! The control plane here is this binary's own: no CRDs (a spoke has none)
//! and no test guardrails (what refuses a write is the chart's). Its
//! controller-manager does not run the token controller, so one is started
//! next to it (`regcred_testenv::chart::start_token_controller`), as every
//! real cluster runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectRulesReview, SelfSubjectRulesReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchParams};
use kube::{Client, Resource, ResourceExt};
use regcred::clusters::{Format, Registration, registration};
use regcred::controller::fleet::shards::{self, LeaseSettings};
use regcred_testenv::chart::{
    Grant, grants, kubeconform, manifest_objects, refusal, refused_by_guardrail, rules_of, schema_location,
    start_token_controller, write_kubeconform_schemas,
};
use regcred_testenv::operator::record_secret;
use regcred_testenv::{ControlPlane, repo_root};
use serde_json::{Value, json};

const RELEASE: &str = "regcred";
/// The spoke chart's release namespace.
const NS: &str = "regcred-system";
/// The hub's identity in the spoke.
const HUB_USER: &str = "system:serviceaccount:regcred-system:regcred";
const TOKEN_SECRET: &str = "regcred-token";
const WAIT: Duration = Duration::from_secs(30);
const VAP: &str = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy";

/// What the hub does in a spoke, cluster-wide (src/controller/fleet/spoke.rs,
/// and src/controller/recovery.rs for the Pods and Events):
/// `(apiGroup, resources, verbs)`.
const SPOKE_RULES: &[(&str, &[&str], &[&str])] = &[
    ("", &["namespaces"], &["list", "watch"]),
    ("", &["secrets"], &["list", "watch", "create", "patch", "delete"]),
    ("", &["serviceaccounts"], &["get", "list", "watch", "patch"]),
];
/// Recovery's part of them (`spoke.recovery`).
const RECOVERY_RULES: &[(&str, &[&str], &[&str])] =
    &[("", &["pods"], &["get", "list", "delete"]), ("events.k8s.io", &["events"], &["create", "patch"])];
/// The spoke's injection binding, which the hub reads by name.
const INJECTION_BINDING: &str = "inject-pull-secret.fleet.regcred.dev";
/// The injection parameters, in the chart's namespace only.
/// (A forced apply that creates one needs create too: k8s.io/apiserver
/// pkg/endpoints/handlers/patch.go checks it.)
const INJECTION_NS_RULES: &[(&str, &[&str], &[&str])] = &[("", &["configmaps"], &["get", "create", "patch", "delete"])];

/// The fleet's Lease Role in hub mode (src/controller/fleet/shards.rs).
const FLEET_LEASE_RULES: &[(&str, &[&str], &[&str])] =
    &[("coordination.k8s.io", &["leases"], &["create", "get", "list", "update"])];

/// Exactly the kinds spoke mode renders (guardrails on, with the API),
/// and those of injection where the cluster serves MutatingAdmissionPolicy.
const SPOKE_KINDS: [&str; 6] = [
    "ClusterRole",
    "ClusterRoleBinding",
    "Secret",
    "ServiceAccount",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];
const INJECTION_KINDS: [&str; 4] = ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding", "Role", "RoleBinding"];

/// The kinds spoke mode installs with the MutatingAdmissionPolicy API
/// version `injection` (or none).
fn spoke_kinds(injection: Option<&str>) -> BTreeSet<String> {
    let extra: &[&str] = if injection.is_some() { &INJECTION_KINDS } else { &[] };
    SPOKE_KINDS.iter().chain(extra).map(|k| k.to_string()).collect()
}

/// The `--api-versions` that make `helm template` see the MutatingAdmissionPolicy API `version`.
fn map_api(version: &str) -> String {
    format!("admissionregistration.k8s.io/{version}/MutatingAdmissionPolicy")
}

fn cp() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    static TOKENS: OnceLock<Mutex<std::process::Child>> = OnceLock::new();
    let cp = CP.get_or_init(|| {
        ControlPlane::start(regcred_testenv::Options { crd_dir: None, guardrails: false, ..Default::default() })
            .unwrap_or_else(|e| panic!("{e:#}"))
    });
    TOKENS.get_or_init(|| Mutex::new(start_token_controller(cp).unwrap_or_else(|e| panic!("{e:#}"))));
    cp
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/regcred")
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

/// `helm template` of the chart into `namespace` with `extra` arguments.
fn template_in(namespace: &str, extra: &[&str]) -> Vec<Value> {
    let chart = chart_dir().display().to_string();
    let mut args = vec!["template", RELEASE, &chart, "--namespace", namespace];
    args.extend_from_slice(extra);
    manifest_objects(&helm_ok(&args))
}

fn template(extra: &[&str]) -> Vec<Value> {
    template_in(NS, extra)
}
fn kinds(objs: &[Value]) -> BTreeSet<String> {
    objs.iter().filter_map(|o| o["kind"].as_str().map(String::from)).collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objs.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn container(objs: &[Value]) -> &Value {
    let d = objs.iter().find(|o| o["kind"] == "Deployment").expect("a Deployment");
    &d["spec"]["template"]["spec"]["containers"][0]
}

fn args_of(objs: &[Value]) -> Vec<String> {
    container(objs)["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
}

/// The container's environment variables with a plain value.
fn env_of(objs: &[Value]) -> BTreeMap<String, String> {
    let env = container(objs)["env"].as_array().unwrap();
    env.iter().filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string()))).collect()
}

/// The fleet's variables in `env` (all of them REGCRED_FLEET*).
fn fleet_env(env: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    env.iter().filter(|(k, _)| k.starts_with("REGCRED_FLEET")).map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// What `regcred run` makes of the environment `env`: its stderr, run
/// against a kubeconfig that does not exist (so it stops right after
/// reading its flags).
fn regcred_run_with(env: &BTreeMap<&str, &str>) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_regcred"))
        .args(["run", "--kubeconfig", "/nonexistent/kubeconfig", "--metrics-addr", "127.0.0.1:0"])
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .expect("running regcred");
    assert!(!out.status.success());
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `kubeconform -strict` with schemas made from this control plane.
fn kubeconform_valid(name: &str, objs: &[Value]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let schemas = DIR.get_or_init(|| {
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
    });
    let file = cp().dir().join(format!("{name}.yaml"));
    let docs: Vec<String> = objs.iter().map(|o| serde_yaml::to_string(o).unwrap()).collect();
    fs::write(&file, docs.join("---\n")).unwrap();
    let out = kubeconform()
        .unwrap_or_else(|e| panic!("{e:#}"))
        .args(["-strict", "-summary", "-output", "text", "-schema-location", &schema_location(schemas)])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let want = format!("Valid: {}, Invalid: 0, Errors: 0, Skipped: 0", objs.len());
    assert!(out.status.success() && text.contains(&want), "kubeconform ({name}), want {want}:\n{text}");
}

// ---------------------------------------------------------------------------
// RBAC as sets of grants

/// Expected rules as grants.
fn grants_of(rules: &[(&str, &[&str], &[&str])]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (group, resources, verbs) in rules {
        for r in *resources {
            for v in *verbs {
                out.insert((group.to_string(), r.to_string(), v.to_string(), None));
            }
        }
    }
    out
}

/// The cluster-wide grants of the spoke ClusterRole with recovery and
/// injection on or off.
fn spoke_grants(recovery: bool, injection: bool) -> BTreeSet<Grant> {
    let mut out = grants_of(SPOKE_RULES);
    if recovery {
        out.extend(grants_of(RECOVERY_RULES));
    }
    if injection {
        out.insert((
            "admissionregistration.k8s.io".into(),
            "mutatingadmissionpolicybindings".into(),
            "get".into(),
            Some(INJECTION_BINDING.into()),
        ));
    }
    out
}
// ---------------------------------------------------------------------------
// Rendering

/// Spoke mode renders the ServiceAccount, the spoke ClusterRole with
/// exactly what the hub does and its binding, the token Secret, the
/// guardrails bound to that ServiceAccount and, where the cluster serves
/// MutatingAdmissionPolicy, the spoke's injection policy with the Role for
/// its parameters: nothing of the operator. Every other value is ignored,
/// even with every option on.
#[test]
fn spoke_mode_renders_only_what_a_hub_needs_in_a_spoke() {
    let all_options = chart_dir().join("ci/all-options-values.yaml").display().to_string();
    let served = regcred_testenv::version::k8s().admission_api();
    let api = served.map(map_api).unwrap_or_else(|| VAP.into());
    for (case, extra) in [
        ("defaults", vec!["--set", "spoke.enabled=true", "--api-versions", VAP, "--api-versions", &api]),
        (
            "every option",
            vec![
                "--values",
                &all_options,
                "--set",
                "spoke.enabled=true",
                "--api-versions",
                VAP,
                "--api-versions",
                &api,
            ],
        ),
    ] {
        let objs = template(&extra);
        assert_eq!(kinds(&objs), spoke_kinds(served), "{case}");
        // Validated against this control plane's schemas (which have the
        // MutatingAdmissionPolicy kinds only where it serves them).
        kubeconform_valid(&format!("spoke-{}", case.replace(' ', "-")), &objs);
        let fullname = if case == "defaults" { RELEASE } else { "regcred-operator" };
        let sa_name = if case == "defaults" { RELEASE } else { "regcred-operator" };

        let role = find(&objs, "ClusterRole", &format!("{fullname}-spoke")).expect("the spoke ClusterRole");
        assert_eq!(grants(&rules_of(role)), spoke_grants(true, served.is_some()), "{case}: the spoke ClusterRole");
        assert_eq!(objs.iter().filter(|o| o["kind"] == "ClusterRole").count(), 1, "{case}: no hub ClusterRole");
        let binding = find(&objs, "ClusterRoleBinding", &format!("{fullname}-spoke")).expect("its binding");
        assert_eq!(binding["roleRef"]["name"], format!("{fullname}-spoke"));
        assert_eq!(binding["subjects"], json!([{"kind": "ServiceAccount", "name": sa_name, "namespace": NS}]));

        let sa = find(&objs, "ServiceAccount", sa_name).expect("the ServiceAccount");
        assert_eq!(sa["automountServiceAccountToken"], false, "{case}: no Pod runs as the hub's ServiceAccount");
        let token_name = if case == "defaults" { format!("{sa_name}-token") } else { "hub-token".into() };
        let token = find(&objs, "Secret", &token_name).expect("the token Secret");
        assert_eq!(token["type"], "kubernetes.io/service-account-token");
        assert_eq!(token["metadata"]["annotations"]["kubernetes.io/service-account.name"], sa_name);
        assert!(token.get("data").is_none(), "the token controller fills it in");

        let identity = format!("'system:serviceaccount:{NS}:{sa_name}'");
        let policies: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "ValidatingAdmissionPolicy").collect();
        assert_eq!(policies.len(), fs::read_dir(chart_dir().join("files/guardrails")).unwrap().count());
        for p in policies {
            let text = serde_json::to_string(p).unwrap();
            assert!(text.contains(&identity) && !text.contains("REGCRED_"), "{case}: {text}");
        }
        if served.is_some() {
            let role = find(&objs, "Role", &format!("{fullname}-spoke-injection")).expect("the injection Role");
            assert_eq!(role["metadata"]["namespace"], NS);
            assert_eq!(grants(&rules_of(role)), grants_of(INJECTION_NS_RULES));
            let binding = find(&objs, "RoleBinding", &format!("{fullname}-spoke-injection")).unwrap();
            assert_eq!(binding["subjects"], json!([{"kind": "ServiceAccount", "name": sa_name, "namespace": NS}]));
        }
    }

    // The injection policy and binding are the files, in the version asked
    // for, with their parameters in the release's namespace; none where the
    // API is not served or with injection off (then no grant for them).
    for version in ["v1", "v1beta1"] {
        let objs =
            template(&["--set", "spoke.enabled=true", "--set", &format!("spoke.injection.apiVersion={version}")]);
        let want: BTreeSet<String> =
            spoke_kinds(Some(version)).into_iter().filter(|k| !k.starts_with("Validating")).collect();
        assert_eq!(kinds(&objs), want, "{version}");
        for file in ["policy.yaml", "binding.yaml"] {
            let text = fs::read_to_string(chart_dir().join("files/fleet-injection").join(file)).unwrap();
            let mut want: Value = serde_yaml::from_str(&text.replace("REGCRED_NAMESPACE", NS)).unwrap();
            want["apiVersion"] = json!(format!("admissionregistration.k8s.io/{version}"));
            let name = want["metadata"]["name"].as_str().unwrap().to_string();
            let kind = want["kind"].as_str().unwrap().to_string();
            let mut got = find(&objs, &kind, &name).unwrap_or_else(|| panic!("no {kind} {name}")).clone();
            assert_eq!(got["metadata"]["labels"]["app.kubernetes.io/instance"], RELEASE);
            got["metadata"].as_object_mut().unwrap().remove("labels");
            assert_eq!(got, want, "{file} ({version})");
        }
        let binding = find(&objs, "MutatingAdmissionPolicyBinding", INJECTION_BINDING).unwrap();
        assert_eq!(binding["spec"]["paramRef"]["namespace"], NS);
    }
    let none = template(&["--set", "spoke.enabled=true"]);
    let want: BTreeSet<String> = spoke_kinds(None).into_iter().filter(|k| !k.starts_with("Validating")).collect();
    assert_eq!(kinds(&none), want, "no MutatingAdmissionPolicy API");
    assert_eq!(grants(&rules_of(find(&none, "ClusterRole", "regcred-spoke").unwrap())), spoke_grants(true, false));
    let off = template(&[
        "--set",
        "spoke.enabled=true",
        "--set",
        "spoke.injection.install=false",
        "--api-versions",
        &map_api("v1"),
    ]);
    assert!(off.iter().all(|o| !INJECTION_KINDS.contains(&o["kind"].as_str().unwrap())), "injection off");
    assert_eq!(grants(&rules_of(find(&off, "ClusterRole", "regcred-spoke").unwrap())), spoke_grants(true, false));
    let no_recovery = template(&["--set", "spoke.enabled=true", "--set", "spoke.recovery=false"]);
    let role = find(&no_recovery, "ClusterRole", "regcred-spoke").unwrap();
    assert_eq!(grants(&rules_of(role)), spoke_grants(false, false), "spoke.recovery=false: no Pods, no Events");

    // The options of spoke mode.
    let objs = template(&["--set", "spoke.enabled=true", "--set", "spoke.tokenSecret.create=false"]);
    assert!(objs.iter().all(|o| o["kind"] != "Secret"), "no token Secret when not asked for");
    let objs = template(&["--set", "spoke.enabled=true", "--set", "spoke.tokenSecret.name=hub-login"]);
    assert!(find(&objs, "Secret", "hub-login").is_some());
    let chart = chart_dir().display().to_string();
    let out =
        helm(&["template", RELEASE, &chart, "--set", "spoke.enabled=true", "--set", "serviceAccount.create=false"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("needs serviceAccount.name"),
        "the default ServiceAccount: {stderr}"
    );
    let objs = template(&[
        "--set",
        "spoke.enabled=true",
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=hub",
    ]);
    assert!(objs.iter().all(|o| o["kind"] != "ServiceAccount"), "an existing ServiceAccount");
    assert_eq!(find(&objs, "ClusterRoleBinding", "regcred-spoke").unwrap()["subjects"][0]["name"], "hub");
    let objs = template(&["--set", "spoke.enabled=true", "--set", "rbac.create=false"]);
    assert_eq!(kinds(&objs), BTreeSet::from(["Secret".into(), "ServiceAccount".into()]), "rbac.create=false");
    let objs = template(&["--set", "spoke.enabled=true", "--set", "guardrails.enabled=false", "--api-versions", VAP]);
    assert!(objs.iter().all(|o| !o["kind"].as_str().unwrap().starts_with("ValidatingAdmission")));

    // Hub mode renders none of it.
    let hub = template(&["--api-versions", VAP, "--api-versions", &map_api("v1")]);
    assert!(find(&hub, "ClusterRole", "regcred-spoke").is_none());
    assert!(find(&hub, "MutatingAdmissionPolicy", INJECTION_BINDING).is_none());
    assert!(hub.iter().all(|o| o["kind"] != "Secret"), "no token Secret in hub mode");
    assert_eq!(find(&hub, "ServiceAccount", RELEASE).unwrap()["automountServiceAccountToken"], true);
}

/// Hub mode: the fleet's values become `regcred run`'s flags, and with
/// leader election a Role for the shard Leases in the cluster resource
/// namespace; the leader-election Role is unchanged.
#[test]
fn hub_mode_passes_the_fleet_flags_and_grants_the_shard_leases() {
    let defaults = template(&[]);
    let env = env_of(&defaults);
    let fleet = fleet_env(&env);
    assert_eq!(
        fleet,
        BTreeMap::from([
            ("REGCRED_FLEET", "true"),
            ("REGCRED_FLEET_CLEANUP_TIMEOUT_SECONDS", "120"),
            ("REGCRED_FLEET_SHARDS", "16")
        ])
    );
    assert!(!args_of(&defaults).iter().any(|a| a.starts_with("--fleet")), "the environment, not flags");
    assert!(defaults.iter().all(|o| o["kind"] != "Role"), "no Lease Role without leader election");
    // regcred reads these variables: valid, it goes on to its kubeconfig;
    // out of range, it names the flag.
    let said = regcred_run_with(&fleet);
    assert!(said.contains("/nonexistent/kubeconfig") && !said.contains("invalid value"), "{said}");
    for (name, bad, flag) in [
        ("REGCRED_FLEET", "yes", "--fleet <FLEET>"),
        ("REGCRED_FLEET_SHARDS", "0", "--fleet-shards"),
        ("REGCRED_FLEET_CLEANUP_TIMEOUT_SECONDS", "-1", "--fleet-cleanup-timeout-seconds"),
    ] {
        let mut env = fleet.clone();
        env.insert(name, bad);
        let said = regcred_run_with(&env);
        assert!(said.contains("invalid value") && said.contains(flag), "{name}={bad}: {said}");
    }

    let custom =
        template(&["--set", "fleet.shards=4", "--set", "fleet.cleanupTimeoutSeconds=30", "--set", "replicas=3"]);
    let env = env_of(&custom);
    assert_eq!(
        fleet_env(&env),
        BTreeMap::from([
            ("REGCRED_FLEET", "true"),
            ("REGCRED_FLEET_CLEANUP_TIMEOUT_SECONDS", "30"),
            ("REGCRED_FLEET_SHARDS", "4")
        ])
    );
    assert!(args_of(&custom).iter().any(|a| a == "--leader-elect"));
    let role = find(&custom, "Role", "regcred-fleet-leases").expect("the fleet's Lease Role");
    assert_eq!(role["metadata"]["namespace"], NS);
    assert_eq!(grants(&rules_of(role)), grants_of(FLEET_LEASE_RULES));
    let binding = find(&custom, "RoleBinding", "regcred-fleet-leases").expect("its binding");
    assert_eq!(binding["subjects"], json!([{"kind": "ServiceAccount", "name": RELEASE, "namespace": NS}]));
    let leader = find(&custom, "Role", "regcred-leader-election").expect("the leader-election Role");
    assert_eq!(leader["rules"].as_array().unwrap().len(), 2, "the leader-election Role is unchanged: {leader}");

    // The Leases live where the kubeconfig Secrets are.
    let elsewhere = template(&["--set", "replicas=2", "--set", "clusterResourceNamespace=fleet-sources"]);
    let role = find(&elsewhere, "Role", "regcred-fleet-leases").unwrap();
    assert_eq!(role["metadata"]["namespace"], "fleet-sources");
    assert_eq!(
        find(&elsewhere, "RoleBinding", "regcred-fleet-leases").unwrap()["metadata"]["namespace"],
        "fleet-sources"
    );

    // Every option on: the values file's fleet, its Role beside the
    // kubeconfig Secrets (clusterResourceNamespace).
    let all_options = chart_dir().join("ci/all-options-values.yaml").display().to_string();
    let all = template(&["--values", &all_options]);
    let env = env_of(&all);
    assert_eq!(
        fleet_env(&env),
        BTreeMap::from([
            ("REGCRED_FLEET", "true"),
            ("REGCRED_FLEET_CLEANUP_TIMEOUT_SECONDS", "60"),
            ("REGCRED_FLEET_SHARDS", "8")
        ])
    );
    let role = find(&all, "Role", "regcred-operator-fleet-leases").expect("the fleet's Lease Role");
    assert_eq!(role["metadata"]["namespace"], "regcred-sources");

    // Off: one variable, no Role.
    let off = template(&["--set", "fleet.enabled=false", "--set", "replicas=2"]);
    let env = env_of(&off);
    assert_eq!(fleet_env(&env), BTreeMap::from([("REGCRED_FLEET", "false")]));
    assert!(find(&off, "Role", "regcred-fleet-leases").is_none());
    kubeconform_valid("hub-fleet", &custom);
}

#[test]
fn values_schema_rejects_bad_fleet_and_spoke_values() {
    let dir = cp().dir().join("bad-values");
    fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("fleet:\n  shards: 0", "/fleet/shards"),
        ("fleet:\n  shards: 257", "/fleet/shards"),
        ("fleet:\n  shards: many", "/fleet/shards"),
        ("fleet:\n  cleanupTimeoutSeconds: -1", "/fleet/cleanupTimeoutSeconds"),
        ("fleet:\n  enabled: \"false\"", "/fleet/enabled"),
        ("fleet:\n  shard: 4", "shard"),
        ("spoke:\n  enabled: yes-please", "/spoke/enabled"),
        ("spoke:\n  token: {}", "token"),
        ("spoke:\n  tokenSecret:\n    create: true\n    name: Hub_Token", "/spoke/tokenSecret/name"),
        ("spoke:\n  tokenSecret:\n    nam: x", "nam"),
        ("spoke:\n  recovery: \"yes\"", "/spoke/recovery"),
        ("spoke:\n  injection:\n    install: true\n    apiVersion: v2", "/spoke/injection/apiVersion"),
        ("spoke:\n  injection:\n    instal: true", "instal"),
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
    let chart_lint = helm_ok(&["lint", "--strict", &chart, "--set", "spoke.enabled=true"]);
    assert!(chart_lint.contains("0 chart(s) failed"), "{chart_lint}");
}

// ---------------------------------------------------------------------------
// The script

/// `hack/spoke-kubeconfig.sh` with the control plane's kubectl.
fn script(args: &[&str]) -> Output {
    Command::new(repo_root().join("hack/spoke-kubeconfig.sh"))
        .args(args)
        .env("KUBECTL", cp().assets().join("kubectl"))
        .env_remove("KUBECONFIG")
        .output()
        .expect("running hack/spoke-kubeconfig.sh")
}

/// The script's output for `args` (against the admin kubeconfig), asserting
/// that it succeeded and that nothing it said on stderr holds the token.
fn script_ok(args: &[&str], token: &str) -> String {
    let kc = kubeconfig();
    let mut all = vec!["--kubeconfig", kc.as_str()];
    all.extend_from_slice(args);
    let out = script(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(token), "the token was written to stderr");
    assert!(out.status.success(), "spoke-kubeconfig.sh {args:?} failed: {stderr}");
    assert!(stderr.trim().is_empty(), "spoke-kubeconfig.sh {args:?} said: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// The script fails on `args` saying `says`, and never shows the token.
fn script_refuses(args: &[&str], says: &str, token: &str) {
    let kc = kubeconfig();
    let mut all = vec!["--kubeconfig", kc.as_str()];
    all.extend_from_slice(args);
    let out = script(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "spoke-kubeconfig.sh {args:?} succeeded:\n{stdout}");
    assert!(stderr.contains(says), "spoke-kubeconfig.sh {args:?}: expected {says:?}, got:\n{stderr}");
    assert!(!stderr.contains(token) && !stdout.contains(token), "spoke-kubeconfig.sh {args:?} showed the token");
}

/// The Secret the script printed, as the API would return it.
fn parse_secret(manifest: &str) -> Secret {
    serde_yaml::from_str(manifest).unwrap_or_else(|e| panic!("the script printed no Secret ({e}):\n{manifest}"))
}

fn server_of(reg: &Registration) -> (String, Option<String>, Option<String>) {
    let kc = reg.kubeconfig.as_ref().unwrap_or_else(|e| panic!("{}: {e}", reg.name));
    assert_eq!(kc.clusters.len(), 1);
    let c = kc.clusters[0].cluster.as_ref().unwrap();
    let token = kc.auth_infos[0].auth_info.as_ref().unwrap().token.as_ref().map(|t| {
        use secrecy::ExposeSecret;
        t.expose_secret().to_string()
    });
    (c.server.clone().unwrap(), c.certificate_authority_data.clone(), token)
}

/// A client as the hub makes it from a registration (src/controller/fleet/spoke.rs).
async fn hub_client(reg: Registration) -> Client {
    let kc = reg.kubeconfig.unwrap_or_else(|e| panic!("{e}"));
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("a usable kubeconfig");
    Client::try_from(config).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The CA data of the admin kubeconfig.
fn admin_ca_data() -> String {
    let kc: Value = serde_yaml::from_str(&fs::read_to_string(cp().kubeconfig_path()).unwrap()).unwrap();
    kc["clusters"][0]["cluster"]["certificate-authority-data"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------
// Polling, refusals

async fn wait_until<T, Fut>(what: &str, mut f: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create<K>(api: &Api<K>, obj: Value) -> K
where
    K: Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let obj: K = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("creating {}: {e}", obj.name_any()))
}
/// RBAC refused `what`: the hub's ClusterRole has no such verb.
fn refused_by_rbac(what: &str, result: Result<impl Sized, kube::Error>) {
    let message = refusal(what, result);
    assert!(message.contains(HUB_USER) && message.contains("cannot"), "{what}: not refused by RBAC: {message}");
    eprintln!("{what}: refused: {message}");
}
// ---------------------------------------------------------------------------
// Install in spoke mode, register, act as the hub

#[tokio::test]
async fn spoke_install_then_the_hub_token_does_what_the_hub_does_and_nothing_else() {
    let cp = cp();
    let admin = cp.client().await.unwrap();
    let kc = kubeconfig();
    let chart = chart_dir().display().to_string();

    // Install in spoke mode, as a platform team would in each spoke.
    let out = helm_ok(&[
        "install",
        RELEASE,
        &chart,
        "--namespace",
        NS,
        "--create-namespace",
        "--kubeconfig",
        &kc,
        "--set",
        "spoke.enabled=true",
    ]);
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(out.contains("spoke access is installed") && out.contains("hack/spoke-kubeconfig.sh"), "NOTES:\n{out}");
    assert!(out.contains("--format capi --name CLUSTER_NAME") && out.contains("Guardrails:"), "NOTES:\n{out}");
    assert!(!out.contains("kind: ClusterRegistryCredential"), "no operator instructions in a spoke:\n{out}");
    // Injection where this control plane serves MutatingAdmissionPolicy
    // (1.36+, or 1.34-1.35 with the beta API on, as the test environment
    // does).
    let served = regcred_testenv::version::k8s().admission_api();
    let manifest = helm_ok(&["get", "manifest", RELEASE, "--namespace", NS, "--kubeconfig", &kc]);
    assert_eq!(kinds(&manifest_objects(&manifest)), spoke_kinds(served), "installed kinds");
    if let Some(version) = served {
        assert!(out.contains(&format!("inject-pull-secret.fleet.regcred.dev ({version})")), "NOTES:\n{out}");
    }
    let crds = Api::<CustomResourceDefinition>::all(admin.clone()).list(&ListParams::default()).await.unwrap();
    assert!(crds.items.is_empty(), "a spoke gets no CRDs: {:?}", crds.items.iter().map(|c| c.name_any()));
    let installed = Api::<ClusterRole>::all(admin.clone()).get("regcred-spoke").await.unwrap();
    assert_eq!(grants(installed.rules.as_deref().unwrap_or_default()), spoke_grants(true, served.is_some()));

    // The token controller fills the token Secret in.
    let tokens: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let token = wait_until("the token controller to fill regcred-token", || async {
        let s = tokens.get(TOKEN_SECRET).await.ok()?;
        let t = s.data?.get("token")?.0.clone();
        Some(String::from_utf8(t).unwrap())
    })
    .await;
    record_secret(&token);

    // Cluster API format: the hub's parser reads it, and it works.
    let capi = script_ok(
        &[
            "--format",
            "capi",
            "--name",
            "prod-eu",
            "--labels",
            "env=prod,example.com/team=platform",
            "--namespace",
            "hub",
        ],
        &token,
    );
    assert!(!capi.contains(&token), "the token is inside the base64 data only");
    let secret = parse_secret(&capi);
    assert_eq!(secret.metadata.name.as_deref(), Some("prod-eu-kubeconfig"));
    assert_eq!(secret.metadata.namespace.as_deref(), Some("hub"));
    assert_eq!(secret.type_.as_deref(), Some("cluster.x-k8s.io/secret"));
    let reg = registration(&secret).expect("a Cluster API kubeconfig Secret");
    assert_eq!(
        (reg.name.as_str(), reg.format, reg.secret.as_str()),
        ("prod-eu", Format::ClusterApi, "prod-eu-kubeconfig")
    );
    let labels: BTreeMap<&str, &str> = reg.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        labels,
        BTreeMap::from([
            ("cluster.x-k8s.io/cluster-name", "prod-eu"),
            ("env", "prod"),
            ("example.com/team", "platform")
        ])
    );
    let (server, ca, got_token) = server_of(&reg);
    assert_eq!((server.as_str(), ca.as_deref()), (cp.server.as_str(), Some(admin_ca_data().as_str())));
    assert_eq!(got_token.as_deref(), Some(token.as_str()), "the ServiceAccount's token");

    // Applied in the hub's namespace and read back, it is the same cluster.
    let nss: Api<Namespace> = Api::all(admin.clone());
    create(&nss, json!({"metadata": {"name": "hub"}})).await;
    let file = cp.dir().join("prod-eu-kubeconfig.yaml");
    fs::write(&file, &capi).unwrap();
    let applied = cp.kubectl().args(["apply", "-f"]).arg(&file).output().unwrap();
    assert!(applied.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&applied.stderr));
    let stored = Api::<Secret>::namespaced(admin.clone(), "hub").get("prod-eu-kubeconfig").await.unwrap();
    let hub = hub_client(registration(&stored).expect("still a registration")).await;

    // Argo CD format, with the address the hub reaches the spoke at.
    let argo = script_ok(
        &["--format", "argocd", "--name", "dev-us", "--labels", "env=dev", "--server", "https://spoke.example:6443"],
        &token,
    );
    let secret = parse_secret(&argo);
    assert_eq!(secret.metadata.name.as_deref(), Some("cluster-dev-us"));
    assert!(secret.metadata.namespace.is_none(), "no --namespace, no namespace");
    let reg = registration(&secret).expect("an Argo CD cluster Secret");
    assert_eq!((reg.name.as_str(), reg.format), ("dev-us", Format::ArgoCd));
    assert_eq!(reg.labels.get("argocd.argoproj.io/secret-type").map(String::as_str), Some("cluster"));
    assert_eq!(reg.labels.get("env").map(String::as_str), Some("dev"));
    let (server, ca, got_token) = server_of(&reg);
    assert_eq!(server, "https://spoke.example:6443");
    assert_eq!(ca.as_deref(), Some(admin_ca_data().as_str()));
    assert_eq!(got_token.as_deref(), Some(token.as_str()));
    let config: Value = serde_json::from_slice(&secret.data.as_ref().unwrap()["config"].0).unwrap();
    assert_eq!(config["tlsClientConfig"]["insecure"], false);

    // Argo CD format against the real server: the hub's client works too.
    let argo = script_ok(&["--format", "argocd", "--name", "dev-eu", "--secret-name", "spoke-dev-eu"], &token);
    let secret = parse_secret(&argo);
    assert_eq!(secret.metadata.name.as_deref(), Some("spoke-dev-eu"));
    let argo_hub = hub_client(registration(&secret).unwrap()).await;
    Api::<Namespace>::all(argo_hub).list_metadata(&ListParams::default()).await.expect("the Argo CD kubeconfig works");

    // The CA: a file given, or the token Secret's ca.crt when the
    // kubeconfig has none (it trusts the server blindly, the hub will not).
    let ca_file = cp.dir().join("ca.crt");
    let out =
        script_ok(&["--format", "capi", "--name", "with-ca", "--ca-file", &ca_file.display().to_string()], &token);
    let (_, ca, _) = server_of(&registration(&parse_secret(&out)).unwrap());
    assert_eq!(ca, Some(b64(&fs::read(&ca_file).unwrap())));
    let mut blind: Value = serde_yaml::from_str(&fs::read_to_string(cp.kubeconfig_path()).unwrap()).unwrap();
    let cluster = blind["clusters"][0]["cluster"].as_object_mut().unwrap();
    cluster.remove("certificate-authority-data");
    cluster.insert("insecure-skip-tls-verify".into(), json!(true));
    let blind_file = cp.dir().join("blind.kubeconfig");
    fs::write(&blind_file, serde_yaml::to_string(&blind).unwrap()).unwrap();
    let out = script(&["--kubeconfig", &blind_file.display().to_string(), "--format", "capi", "--name", "from-secret"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&token), "the token was written to stderr");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reg = registration(&parse_secret(&String::from_utf8(out.stdout).unwrap())).unwrap();
    let ca_crt = tokens.get(TOKEN_SECRET).await.unwrap().data.unwrap()["ca.crt"].0.clone();
    assert_eq!(server_of(&reg).1, Some(b64(&ca_crt)), "the token Secret's ca.crt");
    Api::<Namespace>::all(hub_client(reg).await).list_metadata(&ListParams::default()).await.expect("verified TLS");

    // What the script refuses.
    create(&tokens, json!({"metadata": {"name": "not-a-token"}, "stringData": {"k": "v"}})).await;
    create(&Api::<ServiceAccount>::namespaced(admin.clone(), NS), json!({"metadata": {"name": "other"}})).await;
    for (args, says) in [
        (vec![], "--format is required"),
        (vec!["--format", "capi"], "--name is required"),
        (vec!["--format", "kubeconfig", "--name", "a"], "--format must be capi or argocd"),
        (vec!["--format", "capi", "--name", "Prod_EU"], "--name 'Prod_EU'"),
        (vec!["--format", "capi", "--name", "a", "--labels", "env"], "'env' is not KEY=VALUE"),
        (vec!["--format", "capi", "--name", "a", "--labels", "env=a b"], "is not a label value"),
        (vec!["--format", "capi", "--name", "a", "--labels", "cluster.x-k8s.io/cluster-name=b"], "format's own label"),
        (vec!["--format", "capi", "--name", "a", "--labels", "e=1,e=2"], "given twice"),
        (vec!["--format", "capi", "--name", "a", "--secret-name", "b"], "--secret-name is for argocd"),
        (vec!["--format", "capi", "--name", "a", "--server", "http://spoke.example"], "must be an https:// URL"),
        (
            vec!["--format", "capi", "--name", "a", "--token-secret", "missing"],
            "cannot read Secret regcred-system/missing",
        ),
        (vec!["--format", "capi", "--name", "a", "--token-secret", "not-a-token"], "of type 'Opaque'"),
        (
            vec!["--format", "capi", "--name", "a", "--service-account", "other"],
            "cannot read Secret regcred-system/other-token",
        ),
        (
            vec!["--format", "capi", "--name", "a", "--service-account", "other", "--token-secret", TOKEN_SECRET],
            "a token of ServiceAccount 'regcred', not 'other'",
        ),
        (vec!["--format", "capi", "--name", "a", "--ca-file", "/nonexistent"], "cannot be read"),
        (vec!["--format", "capi", "--name", "a", "--bogus"], "unknown argument: --bogus"),
    ] {
        script_refuses(&args, says, &token);
    }
    let help = script(&["--help"]);
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("Usage: hack/spoke-kubeconfig.sh"));

    the_hub_token_does_what_the_hub_does(&admin, &hub).await;
    if let Some(version) = served {
        the_hub_token_writes_the_injection_parameters(&admin, &hub, version).await;
    }
    the_hub_token_is_refused_everything_else(&admin, &hub).await;
    the_role_grants_nothing_beyond_the_list(&admin, &hub, served.is_some()).await;

    // A revoked token (its Secret deleted) no longer works.
    tokens.delete(TOKEN_SECRET, &DeleteParams::default()).await.unwrap();
    wait_until("the deleted token to be refused", || async {
        match Api::<Namespace>::all(hub.clone()).list_metadata(&ListParams::default()).await {
            Err(kube::Error::Api(e)) if e.code == 401 => Some(()),
            _ => None,
        }
    })
    .await;
}

/// Every request the hub makes in a spoke (src/controller/mod.rs
/// related_watches and list_contents; act.rs; accounts.rs), with the token.
async fn the_hub_token_does_what_the_hub_does(admin: &Client, hub: &Client) {
    let ns = "spoke-app";
    create(&Api::<Namespace>::all(admin.clone()), json!({"metadata": {"name": ns, "labels": {"env": "prod"}}})).await;
    create(&Api::<ServiceAccount>::namespaced(admin.clone(), ns), json!({"metadata": {"name": "app"}})).await;

    // Namespaces: list and watch, metadata only.
    let nss: Api<Namespace> = Api::all(hub.clone());
    let listed = nss.list_metadata(&ListParams::default()).await.expect("listing namespaces");
    assert!(listed.items.iter().any(|n| n.name_any() == ns));
    let rv = listed.metadata.resource_version.unwrap();
    let mut watch =
        nss.watch_metadata(&WatchParams::default().timeout(1), &rv).await.expect("watching namespaces").boxed();
    while watch.try_next().await.expect("namespace watch events").is_some() {}

    // Secrets: watch regcred's and the others' metadata, list regcred's in pages.
    let all_secrets: Api<Secret> = Api::all(hub.clone());
    for selector in ["app.kubernetes.io/managed-by=regcred", "app.kubernetes.io/managed-by!=regcred"] {
        let list = all_secrets.list_metadata(&ListParams::default().labels(selector)).await.expect(selector);
        let rv = list.metadata.resource_version.unwrap();
        let params = WatchParams::default().labels(selector).timeout(1);
        let mut w = all_secrets.watch_metadata(&params, &rv).await.expect(selector).boxed();
        while w.try_next().await.expect("Secret watch events").is_some() {}
    }
    all_secrets
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=regcred").limit(500))
        .await
        .expect("the paged list of regcred's Secrets");

    // A pull Secret: created, rotated (merge patch), repaired (forced
    // apply), deleted with its uid as a precondition.
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), ns);
    let pull = |auth: &str| {
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "regcred-pull", "namespace": ns,
                "labels": {"app.kubernetes.io/managed-by": "regcred"},
                "annotations": {"regcred.dev/owner": "ClusterRegistryCredential/ghcr"}},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": json!({"auths": {"ghcr.io": {"auth": auth}}}).to_string()}})
    };
    let params = PostParams { field_manager: Some("regcred".into()), ..Default::default() };
    let created = secrets
        .create(&params, &serde_json::from_value(pull("dTpvbmU=")).unwrap())
        .await
        .expect("creating a pull Secret");
    let data = json!({"data": {".dockerconfigjson": b64(json!({"auths": {"ghcr.io": {"auth": "dTp0d28="}}}).to_string().as_bytes())}});
    let merge = PatchParams { field_manager: Some("regcred".into()), ..Default::default() };
    secrets.patch("regcred-pull", &merge, &Patch::Merge(&data)).await.expect("rotating a pull Secret");
    let mut applied = pull("dTp0aHJlZQ==");
    applied["data"] =
        json!({".dockerconfigjson": b64(applied["stringData"][".dockerconfigjson"].as_str().unwrap().as_bytes())});
    applied.as_object_mut().unwrap().remove("stringData");
    secrets
        .patch("regcred-pull", &PatchParams::apply("regcred").force(), &Patch::Apply(&applied))
        .await
        .expect("repairing a pull Secret (forced apply)");

    // ServiceAccounts: read, list, and imagePullSecrets set conditionally.
    let sas: Api<ServiceAccount> = Api::namespaced(hub.clone(), ns);
    Api::<ServiceAccount>::all(hub.clone()).list(&ListParams::default()).await.expect("listing ServiceAccounts");
    let mut watch = Api::<ServiceAccount>::all(hub.clone())
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .expect("watching ServiceAccounts")
        .boxed();
    while watch.try_next().await.expect("ServiceAccount watch events").is_some() {}
    let app = sas.get("app").await.expect("reading a ServiceAccount");
    let patch = json!({"metadata": {"resourceVersion": app.resource_version()}, "imagePullSecrets": [{"name": "regcred-pull"}]});
    sas.patch("app", &merge, &Patch::Merge(&patch)).await.expect("setting imagePullSecrets");
    let seen = Api::<ServiceAccount>::namespaced(admin.clone(), ns).get("app").await.unwrap();
    assert_eq!(seen.image_pull_secrets.unwrap()[0].name, "regcred-pull");
    let stale = sas.patch("app", &merge, &Patch::Merge(&patch)).await;
    assert!(matches!(stale, Err(kube::Error::Api(e)) if e.code == 409), "a stale resourceVersion conflicts");
    let app = sas.get("app").await.unwrap();
    let patch = json!({"metadata": {"resourceVersion": app.resource_version()}, "imagePullSecrets": []});
    sas.patch("app", &merge, &Patch::Merge(&patch)).await.expect("removing the entry");

    let delete = DeleteParams {
        preconditions: Some(Preconditions { uid: created.uid(), resource_version: None }),
        ..Default::default()
    };
    secrets.delete("regcred-pull", &delete).await.expect("deleting a pull Secret by uid");

    // Recovery (src/controller/recovery.rs): the namespace's Pods, one read
    // again, a stuck one that its ReplicaSet recreates deleted, an Event
    // on it.
    let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "stuck"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "stuck"}},
            "template": {"metadata": {"labels": {"app": "stuck"}},
                "spec": {"automountServiceAccountToken": false,
                    "containers": [{"name": "app", "image": "r.example/stuck:1"}]}}}}))
    .unwrap();
    Api::<ReplicaSet>::namespaced(admin.clone(), ns).create(&PostParams::default(), &rs).await.unwrap();
    let admin_pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let stuck = wait_until("the ReplicaSet's Pod", || async {
        admin_pods.list(&ListParams::default().labels("app=stuck")).await.ok()?.items.into_iter().next()
    })
    .await;
    let name = stuck.name_any();
    let waiting = json!({"status": {"phase": "Pending", "containerStatuses": [{"name": "app",
        "image": "r.example/stuck:1", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ErrImagePull", "message": "401 Unauthorized"}}}]}});
    admin_pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&waiting)).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(hub.clone(), ns);
    let listed = pods.list(&ListParams::default()).await.expect("listing a namespace's Pods");
    assert!(listed.items.iter().any(|p| p.name_any() == name));
    pods.get(&name).await.expect("reading a Pod again");
    let delete = DeleteParams {
        preconditions: Some(Preconditions { uid: stuck.uid(), resource_version: None }),
        ..Default::default()
    };
    pods.delete(&name, &delete).await.expect("deleting a Pod stuck on a pull that a ReplicaSet recreates");
    let event: Event = serde_json::from_value(json!({"metadata": {"name": format!("{name}.recovered")},
        "eventTime": "2026-12-01T00:00:00.000000Z", "reportingController": "regcred",
        "reportingInstance": "hub-0", "action": "Recover", "reason": "PodRecovered", "type": "Normal",
        "note": "deleted to pull again with the new Secret",
        "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name, "uid": stuck.uid()}}))
    .unwrap();
    let events: Api<Event> = Api::namespaced(hub.clone(), ns);
    events.create(&PostParams::default(), &event).await.expect("an Event on the recovered Pod");
    let series = json!({"series": {"count": 2, "lastObservedTime": "2026-12-01T00:01:00.000000Z"}});
    events.patch(&format!("{name}.recovered"), &merge, &Patch::Merge(&series)).await.expect("its series");
    Api::<ReplicaSet>::namespaced(admin.clone(), ns).delete("stuck", &DeleteParams::default()).await.unwrap();
}

/// Injection in the spoke (src/controller/fleet/spoke.rs, sync_injection):
/// the hub reads the chart's binding by name, writes a credential's
/// parameters in the namespace it names, and Pods created there get the
/// Secret; then it removes them. And nothing else of admission.
async fn the_hub_token_writes_the_injection_parameters(admin: &Client, hub: &Client, version: &str) {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let resource = |kind: &str, plural: &str| {
        let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", version, kind);
        ApiResource::from_gvk_with_plural(&gvk, plural)
    };
    let bindings = resource("MutatingAdmissionPolicyBinding", "mutatingadmissionpolicybindings");
    let policies = resource("MutatingAdmissionPolicy", "mutatingadmissionpolicies");
    let hub_bindings = Api::<DynamicObject>::all_with(hub.clone(), &bindings);
    let binding = hub_bindings.get(INJECTION_BINDING).await.expect("reading the injection binding");
    assert_eq!(binding.data["spec"]["paramRef"]["namespace"], NS);

    let params: Api<ConfigMap> = Api::namespaced(hub.clone(), NS);
    let cm = |data: Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "regcred-inject-ghcr", "namespace": NS,
                "labels": {"regcred.dev/injection": "true", "app.kubernetes.io/managed-by": "regcred"},
                "annotations": {"regcred.dev/owner": "ClusterRegistryCredential/ghcr"}},
            "data": data})
    };
    let apply = PatchParams::apply("regcred").force();
    params.get_opt("regcred-inject-ghcr").await.expect("reading the parameters in place");
    params
        .patch(
            "regcred-inject-ghcr",
            &apply,
            &Patch::Apply(cm(json!({"secret": "regcred-pull", "ns.spoke-app": "", "sa.default": ""}))),
        )
        .await
        .expect("writing the parameters (a forced apply creates them)");

    // The chart's policy acts on them (once the apiserver has loaded it).
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "spoke-app");
    let injected = |pod: &Pod| {
        let list = pod.spec.as_ref().and_then(|s| s.image_pull_secrets.as_ref());
        list.is_some_and(|l| l.iter().any(|r| r.name == "regcred-pull"))
    };
    let new_pod = |n: u32| {
        serde_json::from_value::<Pod>(json!({"metadata": {"name": format!("injected-{n}")},
            "spec": {"automountServiceAccountToken": false,
                "containers": [{"name": "app", "image": "ghcr.io/a/app:1"}]}}))
        .unwrap()
    };
    let created = std::sync::atomic::AtomicU32::new(0);
    let create_pod = || async {
        let n = created.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        pods.create(&PostParams::default(), &new_pod(n)).await.expect("creating a Pod")
    };
    wait_until("a new Pod to get the Secret from the spoke's injection policy", || async {
        injected(&create_pod().await).then_some(())
    })
    .await;
    params.delete("regcred-inject-ghcr", &DeleteParams::default()).await.expect("removing the parameters");
    wait_until("new Pods no longer injected", || async { (!injected(&create_pod().await)).then_some(()) }).await;

    // Nothing else: no parameters elsewhere, no other binding, no writes.
    refused_by_rbac(
        "writing parameters outside the chart's namespace",
        Api::<ConfigMap>::namespaced(hub.clone(), "spoke-app")
            .patch("regcred-inject-ghcr", &apply, &Patch::Apply(cm(json!({"secret": "x"}))))
            .await,
    );
    refused_by_rbac("reading another binding", hub_bindings.get("some-other-binding").await);
    refused_by_rbac("listing the bindings", hub_bindings.list(&ListParams::default()).await);
    refused_by_rbac(
        "unbinding the injection policy",
        hub_bindings.delete(INJECTION_BINDING, &DeleteParams::default()).await,
    );
    refused_by_rbac(
        "rewriting the injection policy",
        Api::<DynamicObject>::all_with(hub.clone(), &policies)
            .patch(
                INJECTION_BINDING,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"failurePolicy": "Fail"}})),
            )
            .await,
    );
}

/// Waits until the chart's guardrails are in force (the apiserver loads
/// new policies within a second or so): a probe write they refuse.
async fn wait_guardrails(admin: &Client, hub: &Client, ns: &str) {
    let probe: Secret = serde_json::from_value(json!({"metadata": {"name": "guardrail-probe",
        "labels": {"app.kubernetes.io/managed-by": "regcred"}}, "stringData": {"k": "v"}}))
    .unwrap();
    wait_until("the guardrails to be in force", || async {
        match Api::<Secret>::namespaced(hub.clone(), ns).create(&PostParams::default(), &probe).await {
            Ok(_) => {
                let _ = Api::<Secret>::namespaced(admin.clone(), ns)
                    .delete("guardrail-probe", &DeleteParams::default())
                    .await;
                None
            }
            Err(kube::Error::Api(e)) if e.code == 403 => Some(()),
            Err(e) => panic!("probing the guardrails: {e}"),
        }
    })
    .await;
}

/// A stolen hub token, in the spoke: RBAC or the guardrails refuse every
/// request the hub does not make.
async fn the_hub_token_is_refused_everything_else(admin: &Client, hub: &Client) {
    let ns = "spoke-victim";
    create(&Api::<Namespace>::all(admin.clone()), json!({"metadata": {"name": ns}})).await;
    let victim_key = "spoke-victim-database-password";
    record_secret(victim_key);
    let admin_secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    create(&admin_secrets, json!({"metadata": {"name": "db"}, "stringData": {"password": victim_key}})).await;
    create(&Api::<ServiceAccount>::namespaced(admin.clone(), ns), json!({"metadata": {"name": "app"}})).await;
    create(
        &Api::<ConfigMap>::namespaced(admin.clone(), ns),
        json!({"metadata": {"name": "settings"}, "data": {"k": "v"}}),
    )
    .await;
    let pod = json!({"metadata": {"name": "web"}, "spec": {"nodeName": "elsewhere", "automountServiceAccountToken": false,
        "containers": [{"name": "web", "image": "r.example/web:1"}]}});
    create(&Api::<Pod>::namespaced(admin.clone(), ns), pod.clone()).await;
    wait_guardrails(admin, hub, ns).await;

    let pp = PatchParams::default();
    let merge = |v: Value| Patch::Merge(v);
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), ns);
    let guard = "guard-secrets.regcred.dev";
    refused_by_rbac("reading an unmanaged Secret", secrets.get("db").await);
    let mut replaced = admin_secrets.get("db").await.unwrap();
    replaced.data = Some(BTreeMap::from([("password".into(), k8s_openapi::ByteString(b"mine".to_vec()))]));
    refused_by_rbac(
        "replacing an unmanaged Secret's data",
        secrets.replace("db", &PostParams::default(), &replaced).await,
    );
    refused_by_guardrail(
        "patching an unmanaged Secret's data",
        guard,
        secrets.patch("db", &pp, &merge(json!({"stringData": {"password": "mine"}}))).await,
    );
    refused_by_guardrail(
        "labelling an unmanaged Secret as regcred's",
        guard,
        secrets
            .patch("db", &pp, &merge(json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "regcred"}}})))
            .await,
    );
    refused_by_guardrail("deleting an unmanaged Secret", guard, secrets.delete("db", &DeleteParams::default()).await);
    let opaque: Secret = serde_json::from_value(json!({"metadata": {"name": "planted",
        "labels": {"app.kubernetes.io/managed-by": "regcred"}}, "stringData": {"k": "v"}}))
    .unwrap();
    refused_by_guardrail("creating an Opaque Secret", guard, secrets.create(&PostParams::default(), &opaque).await);
    let token: Secret = serde_json::from_value(json!({"metadata": {"name": "planted-token",
        "annotations": {"kubernetes.io/service-account.name": "app"}}, "type": "kubernetes.io/service-account-token"}))
    .unwrap();
    refused_by_guardrail("creating a token Secret", guard, secrets.create(&PostParams::default(), &token).await);
    refused_by_rbac(
        "deleting every Secret at once",
        secrets.delete_collection(&DeleteParams::default(), &ListParams::default()).await,
    );

    let sas: Api<ServiceAccount> = Api::namespaced(hub.clone(), ns);
    let guard = "guard-serviceaccounts.regcred.dev";
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
    refused_by_guardrail(
        "mounting a Secret into a ServiceAccount",
        guard,
        sas.patch("app", &pp, &merge(json!({"secrets": [{"name": "db"}]}))).await,
    );
    refused_by_rbac(
        "creating a ServiceAccount",
        sas.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "mine"}})).unwrap())
            .await,
    );
    refused_by_rbac("deleting a ServiceAccount", sas.delete("app", &DeleteParams::default()).await);
    let request: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": ["sts.amazonaws.com"]}})).unwrap();
    refused_by_rbac("a TokenRequest", sas.create_token_request("app", &PostParams::default(), &request).await);

    let pods: Api<Pod> = Api::namespaced(hub.clone(), ns);
    refused_by_guardrail(
        "deleting a Pod nothing recreates",
        "guard-pods.regcred.dev",
        pods.delete("web", &DeleteParams::default()).await,
    );
    let mut other = pod;
    other["metadata"]["name"] = json!("miner");
    refused_by_rbac(
        "creating a Pod",
        pods.create(&PostParams::default(), &serde_json::from_value(other).unwrap()).await,
    );
    refused_by_rbac("evicting a Pod", pods.evict("web", &kube::api::EvictParams::default()).await);
    refused_by_rbac(
        "changing a Pod",
        pods.patch("web", &pp, &merge(json!({"metadata": {"labels": {"owned": "yes"}}}))).await,
    );

    let cms: Api<ConfigMap> = Api::namespaced(hub.clone(), ns);
    refused_by_rbac("reading a ConfigMap", cms.get("settings").await);
    refused_by_rbac("listing ConfigMaps", cms.list(&ListParams::default()).await);

    let crb: ClusterRoleBinding = serde_json::from_value(json!({"metadata": {"name": "hub-is-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "regcred", "namespace": NS}]}))
    .unwrap();
    refused_by_rbac(
        "binding cluster-admin",
        Api::<ClusterRoleBinding>::all(hub.clone()).create(&PostParams::default(), &crb).await,
    );
    let crd: CustomResourceDefinition = serde_json::from_value(json!({"metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object"}}}]}}))
    .unwrap();
    refused_by_rbac(
        "creating a CRD",
        Api::<CustomResourceDefinition>::all(hub.clone()).create(&PostParams::default(), &crd).await,
    );
    let event: Event = serde_json::from_value(json!({"metadata": {"name": "forged"},
        "eventTime": "2026-12-01T00:00:00.000000Z", "reportingController": "regcred.dev/regcred",
        "reportingInstance": "x", "action": "Synced", "reason": "Synced", "type": "Normal",
        "regarding": {"apiVersion": "v1", "kind": "Secret", "namespace": ns, "name": "db"}}))
    .unwrap();
    refused_by_guardrail(
        "an Event about someone else's Secret",
        "guard-events.regcred.dev",
        Api::<Event>::namespaced(hub.clone(), ns).create(&PostParams::default(), &event).await,
    );
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "regcred-fleet-shard-0"}})).unwrap();
    refused_by_rbac(
        "writing a Lease",
        Api::<Lease>::namespaced(hub.clone(), NS).create(&PostParams::default(), &lease).await,
    );

    // Impersonation: the header alone is refused.
    let req =
        http::Request::get("/api/v1/namespaces").header("Impersonate-User", "system:admin").body(Vec::new()).unwrap();
    let message = refusal("impersonating an admin", hub.request_text(req).await);
    assert!(message.contains("cannot impersonate"), "impersonation: {message}");

    assert_eq!(
        admin_secrets.get("db").await.unwrap().data.unwrap()["password"].0,
        victim_key.as_bytes(),
        "the unmanaged Secret is intact"
    );
    assert!(Api::<Pod>::namespaced(admin.clone(), ns).get_opt("web").await.unwrap().is_some(), "the Pod is intact");
}

/// What `client` may do in `ns`, as the apiserver reports it
/// (SelfSubjectRulesReview: what `kubectl auth can-i --list` shows).
async fn rules_review(client: &Client, ns: &str) -> BTreeSet<Grant> {
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec { namespace: Some(ns.into()) },
        ..Default::default()
    };
    let got = Api::<SelfSubjectRulesReview>::all(client.clone()).create(&PostParams::default(), &review).await.unwrap();
    let status = got.status.unwrap();
    assert!(!status.incomplete, "{ns}: the rules review is complete");
    let rules: Vec<PolicyRule> = status
        .resource_rules
        .into_iter()
        .map(|r| PolicyRule {
            api_groups: r.api_groups,
            resources: r.resources,
            resource_names: r.resource_names,
            verbs: r.verbs,
            ..Default::default()
        })
        .collect();
    grants(&rules)
}

/// What the token may do, asked two ways: the rules the apiserver reports
/// for it are the list plus what every ServiceAccount may do on this
/// Kubernetes version (measured on a ServiceAccount bound to nothing: the
/// self-reviews, and ClusterTrustBundle reads where that API is served);
/// and a SubjectAccessReview of every verb on every resource the apiserver
/// serves (subresources included), in the spoke's namespaces and
/// cluster-wide, allows exactly those.
async fn the_role_grants_nothing_beyond_the_list(admin: &Client, hub: &Client, injection: bool) {
    create(&Api::<ServiceAccount>::namespaced(admin.clone(), NS), json!({"metadata": {"name": "bound-to-nothing"}}))
        .await;
    let nobody = cp().service_account_client(NS, "bound-to-nothing").await.unwrap();
    let baseline = rules_review(&nobody, NS).await;
    let selfreview = ("authorization.k8s.io".into(), "selfsubjectrulesreviews".into(), "create".into(), None);
    assert!(baseline.contains(&selfreview), "the baseline is measured: {baseline:?}");
    assert!(baseline.is_disjoint(&spoke_grants(true, true)), "every ServiceAccount may already: {baseline:?}");
    eprintln!("what every ServiceAccount may do here: {baseline:?}");
    let mut allowed = spoke_grants(true, injection);
    allowed.extend(baseline);
    // The injection parameters, in the chart's namespace only.
    let in_ns = if injection { grants_of(INJECTION_NS_RULES) } else { BTreeSet::new() };
    for ns in [NS, "spoke-app", "kube-system"] {
        let mut want = allowed.clone();
        if ns == NS {
            want.extend(in_ns.clone());
        }
        assert_eq!(rules_review(hub, ns).await, want, "{ns}: `kubectl auth can-i --list`");
    }
    // The injection binding by name, and no other.
    let binding = |name: &str| SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(HUB_USER.into()),
            groups: Some(vec!["system:serviceaccounts".into(), "system:authenticated".into()]),
            resource_attributes: Some(ResourceAttributes {
                group: Some("admissionregistration.k8s.io".into()),
                resource: Some("mutatingadmissionpolicybindings".into()),
                verb: Some("get".into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let sars: Api<SubjectAccessReview> = Api::all(admin.clone());
    for (name, want) in
        [(INJECTION_BINDING, injection), ("inject-pull-secret.clusterregistrycredentials.regcred.dev", false)]
    {
        let got = sars.create(&PostParams::default(), &binding(name)).await.unwrap().status.unwrap().allowed;
        assert_eq!(got, want, "get binding {name}");
    }

    // Every served resource and subresource, every verb.
    let mut resources: Vec<(String, String, bool)> = Vec::new();
    for r in admin.list_core_api_resources("v1").await.unwrap().resources {
        resources.push((String::new(), r.name, r.namespaced));
    }
    for g in admin.list_api_groups().await.unwrap().groups {
        let Some(gv) = g.preferred_version else { continue };
        for r in admin.list_api_group_resources(&gv.group_version).await.unwrap().resources {
            resources.push((g.name.clone(), r.name, r.namespaced));
        }
    }
    assert!(resources.len() > 50, "discovery found {} resources", resources.len());
    const VERBS: [&str; 8] = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"];
    let mut asks: Vec<(String, String, String, Option<String>)> = Vec::new();
    for (group, name, namespaced) in &resources {
        let namespaces: Vec<Option<String>> =
            if *namespaced { vec![Some(NS.into()), Some("spoke-app".into()), None] } else { vec![None] };
        for verb in VERBS {
            for ns in &namespaces {
                asks.push((group.clone(), name.clone(), verb.to_string(), ns.clone()));
            }
        }
    }
    // The verbs that are not reads or writes of an object.
    for (group, name, verb) in [
        ("", "users", "impersonate"),
        ("", "groups", "impersonate"),
        ("", "serviceaccounts", "impersonate"),
        ("authentication.k8s.io", "uids", "impersonate"),
        ("authentication.k8s.io", "userextras/scopes", "impersonate"),
        ("rbac.authorization.k8s.io", "clusterroles", "bind"),
        ("rbac.authorization.k8s.io", "clusterroles", "escalate"),
        ("rbac.authorization.k8s.io", "roles", "bind"),
        ("certificates.k8s.io", "signers", "sign"),
        ("certificates.k8s.io", "signers", "approve"),
        ("", "nodes", "proxy"),
        ("*", "*", "*"),
    ] {
        asks.push((group.into(), name.into(), verb.into(), None));
    }
    let sars: Api<SubjectAccessReview> = Api::all(admin.clone());
    let wrong: Vec<String> = futures::stream::iter(asks)
        .map(|(group, name, verb, ns)| {
            let sars = sars.clone();
            let (allowed, in_ns) = (&allowed, &in_ns);
            async move {
                let (resource, subresource) = match name.split_once('/') {
                    Some((r, s)) => (r.to_string(), Some(s.to_string())),
                    None => (name.clone(), None),
                };
                let review = SubjectAccessReview {
                    spec: SubjectAccessReviewSpec {
                        user: Some(HUB_USER.into()),
                        groups: Some(vec![
                            "system:serviceaccounts".into(),
                            format!("system:serviceaccounts:{NS}"),
                            "system:authenticated".into(),
                        ]),
                        resource_attributes: Some(ResourceAttributes {
                            group: Some(group.clone()),
                            resource: Some(resource),
                            subresource,
                            verb: Some(verb.clone()),
                            namespace: ns.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let got = sars.create(&PostParams::default(), &review).await.unwrap().status.unwrap().allowed;
                let grant = (group.clone(), name.clone(), verb.clone(), None);
                let want = allowed.contains(&grant) || (ns.as_deref() == Some(NS) && in_ns.contains(&grant));
                (got != want).then(|| format!("{verb} {group}/{name} in {ns:?}: allowed={got}, want {want}"))
            }
        })
        .buffer_unordered(16)
        .filter_map(futures::future::ready)
        .collect()
        .await;
    assert!(wrong.is_empty(), "the hub's token in a spoke:\n{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------
// Hub mode: the shard Leases, run as a ServiceAccount the chart's Role binds

/// The fleet's Lease code (shards.rs), authenticated as a ServiceAccount
/// bound only by the chart's rendered fleet Role: two replicas share the
/// shards. The same code in a namespace the Role does not cover gets none.
#[tokio::test]
async fn the_fleet_lease_role_is_enough_for_the_shard_leases() {
    let cp = cp();
    let admin = cp.client().await.unwrap();
    let ns = "fleet-hub";
    create(&Api::<Namespace>::all(admin.clone()), json!({"metadata": {"name": ns}})).await;
    create(&Api::<Namespace>::all(admin.clone()), json!({"metadata": {"name": "fleet-elsewhere"}})).await;
    create(&Api::<ServiceAccount>::namespaced(admin.clone(), ns), json!({"metadata": {"name": RELEASE}})).await;
    let rendered = template_in(
        ns,
        &["--set", "replicas=2", "--show-only", "templates/role.yaml", "--show-only", "templates/rolebinding.yaml"],
    );
    let fleet: Vec<Value> = rendered.into_iter().filter(|o| o["metadata"]["name"] == "regcred-fleet-leases").collect();
    assert_eq!(fleet.len(), 2, "the fleet's Role and RoleBinding");
    let file = cp.dir().join("fleet-leases.yaml");
    fs::write(&file, fleet.iter().map(|o| serde_yaml::to_string(o).unwrap()).collect::<Vec<_>>().join("---\n"))
        .unwrap();
    let applied = cp.kubectl().args(["apply", "-f"]).arg(&file).output().unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));

    let run = |namespace: &str, identity: &str| {
        let settings = LeaseSettings {
            namespace: namespace.into(),
            identity: identity.into(),
            shards: 4,
            duration: Duration::from_secs(5),
        };
        let (tx, rx) = tokio::sync::watch::channel(BTreeSet::new());
        let task = async move {
            let client = cp.service_account_client(ns, RELEASE).await.unwrap();
            shards::run(client, settings, tx).await;
        };
        (tokio::spawn(task), rx)
    };
    let (a, a_owned) = run(ns, "replica-a");
    wait_until("replica-a to hold every shard", || async { (a_owned.borrow().len() == 4).then_some(()) }).await;
    let (b, b_owned) = run(ns, "replica-b");
    wait_until("the two replicas to share the shards", || async {
        let (x, y) = (a_owned.borrow().clone(), b_owned.borrow().clone());
        (x.len() == 2 && y.len() == 2 && x.is_disjoint(&y)).then_some(())
    })
    .await;
    let leases = Api::<Lease>::namespaced(admin.clone(), ns)
        .list(&ListParams::default().labels(shards::LEASE_LABEL))
        .await
        .unwrap();
    assert_eq!(leases.items.len(), 6, "4 shard Leases and 2 member Leases");

    // Without the Role (another namespace), no Lease is written.
    let (c, c_owned) = run("fleet-elsewhere", "replica-c");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(c_owned.borrow().is_empty(), "shards held without the Role: {:?}", c_owned.borrow());
    let none = Api::<Lease>::namespaced(admin.clone(), "fleet-elsewhere").list(&ListParams::default()).await.unwrap();
    assert!(none.items.is_empty());
    for t in [a, b, c] {
        t.abort();
    }
}

#[test]
fn the_script_is_strict_bash() {
    let path = repo_root().join("hack/spoke-kubeconfig.sh");
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("#!/usr/bin/env bash\n"), "bash");
    assert!(text.contains("\nset -euo pipefail\n"), "set -euo pipefail");
    assert!(!text.contains("set -x"), "no tracing: it would print the token");
    use std::os::unix::fs::PermissionsExt;
    assert!(fs::metadata(&path).unwrap().permissions().mode() & 0o111 != 0, "executable");
    let syntax = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(syntax.status.success(), "{}", String::from_utf8_lossy(&syntax.stderr));
}
