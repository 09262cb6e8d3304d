//! The Helm chart's tools and the Kubernetes JSON schemas kubeconform
//! validates it against, made without the internet.
//!
//! - [`tools_dir`]: `helm` and `kubeconform`, built from their Go modules by
//!   `hack/helm-tools.sh` and cached under `~/.cache/regcred/tools`.
//! - [`write_kubeconform_schemas`]: kubeconform normally downloads the
//!   Kubernetes JSON schemas; here they are generated from the running
//!   control plane's `/openapi/v2` (every built-in kind), from the repository's
//!   CRDs (their `openAPIV3Schema`), plus hand-written ServiceMonitor and
//!   PrometheusRule schemas.
//!   Files are named as kubeconform looks them up
//!   (`{{ .ResourceKind }}{{ .KindSuffix }}.json`: `deployment-apps-v1.json`,
//!   `service-v1.json`, `registrycredential-regcred-v1alpha1.json`), are
//!   standalone (each carries the definitions it references) and strict
//!   (`additionalProperties: false` on every object with known properties).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};

use crate::ControlPlane;

/// The directory with `helm` and `kubeconform`, from `hack/helm-tools.sh`.
pub fn tools_dir() -> Result<PathBuf> {
    static TOOLS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            crate::hack_dir(
                "helm-tools.sh",
                "helm and kubeconform are built from their Go modules, which needs Go on PATH \
                 (e.g. 'apt-get install golang') and access to the Go module proxy",
            )
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// A `helm` command whose cache, config and data directories are under
/// `home` (so tests never touch the user's Helm setup).
pub fn helm(home: &Path) -> Result<Command> {
    let mut cmd = Command::new(tools_dir()?.join("helm"));
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .env_remove("HELM_NAMESPACE")
        .env_remove("HELM_KUBECONTEXT");
    Ok(cmd)
}

/// Runs helm (its home in `cp`'s directory) with `args`.
pub fn run_helm(cp: &ControlPlane, args: &[&str]) -> std::process::Output {
    let mut cmd = helm(&cp.dir().join("helm-home")).unwrap_or_else(|e| panic!("{e:#}"));
    cmd.args(args).output().unwrap_or_else(|e| panic!("running helm {args:?}: {e}"))
}

/// Runs helm and returns its stdout; panics with its output on failure.
pub fn helm_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let out = run_helm(cp, args);
    assert!(
        out.status.success(),
        "helm {} failed ({}):\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `kubeconform` command.
pub fn kubeconform() -> Result<Command> {
    Ok(Command::new(tools_dir()?.join("kubeconform")))
}

/// Starts kube-controller-manager's token controller for `cp`, whose own
/// controller-manager runs without it. The chart's spoke mode creates a
/// `kubernetes.io/service-account-token` Secret that only this controller
/// fills in (`token`, `ca.crt`, `namespace`: kubernetes/kubernetes
/// `pkg/controller/serviceaccount/tokens_controller.go`), as it does in
/// every real cluster. It signs with the control plane's ServiceAccount key
/// (`sa.key`, whose public half kube-apiserver verifies tokens with), puts
/// the control plane's CA in `ca.crt`, and joins the control plane's
/// process group, so it stops with it. Its log is
/// `kube-controller-manager-tokens.log` in the control plane's directory.
pub fn start_token_controller(cp: &ControlPlane) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let key = cp.dir().join("sa.key");
    let ca = cp.dir().join("ca.crt");
    for file in [&key, &ca] {
        if !file.exists() {
            bail!("{} is missing: the control plane keeps its keys elsewhere", file.display());
        }
    }
    let log = fs::File::create(cp.dir().join("kube-controller-manager-tokens.log"))?;
    let kubeconfig = cp.kubeconfig_path().display().to_string();
    let mut cmd = Command::new(cp.assets().join("kube-controller-manager"));
    cmd.args([
        format!("--kubeconfig={kubeconfig}"),
        "--controllers=serviceaccount-token".into(),
        format!("--service-account-private-key-file={}", key.display()),
        format!("--root-ca-file={}", ca.display()),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={}", crate::free_port()?),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        "--v=1".into(),
    ])
    .stdin(std::process::Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log)
    .process_group(cp.process_group());
    cmd.spawn().context("starting kube-controller-manager (token controller)")
}

/// The `-schema-location` template for a directory written by
/// [`write_kubeconform_schemas`].
pub fn schema_location(dir: &Path) -> String {
    format!("{}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json", dir.display())
}

/// kubeconform's file name for a kind: `{kind}-{first label of the group}-{version}`,
/// or `{kind}-{version}` for the core group.
pub fn schema_file_name(group: &str, version: &str, kind: &str) -> String {
    let kind = kind.to_ascii_lowercase();
    match group.split('.').next().filter(|g| !g.is_empty()) {
        Some(g) => format!("{kind}-{}-{}.json", g.to_ascii_lowercase(), version.to_ascii_lowercase()),
        None => format!("{kind}-{}.json", version.to_ascii_lowercase()),
    }
}

/// Writes strict, standalone JSON schemas into `out`: one per kind served by
/// the control plane (from `/openapi/v2`), one per version of each CRD in
/// `crd_dir`, `servicemonitor-monitoring-v1.json` and
/// `prometheusrule-monitoring-v1.json`. Returns the file names written.
pub async fn write_kubeconform_schemas(cp: &ControlPlane, crd_dir: &Path, out: &Path) -> Result<Vec<String>> {
    let client = cp.client().await?;
    let req = http::Request::get("/openapi/v2").header("Accept", "application/json").body(Vec::new())?;
    let text = client.request_text(req).await.context("GET /openapi/v2")?;
    let doc: Value = serde_json::from_str(&text).context("parsing /openapi/v2")?;
    let defs = doc["definitions"].as_object().ok_or_else(|| anyhow!("/openapi/v2 has no definitions"))?;
    let converter = Converter { defs };
    fs::create_dir_all(out)?;
    let mut written = BTreeMap::new();

    for (name, def) in defs {
        let Some(gvks) = def.get("x-kubernetes-group-version-kind").and_then(Value::as_array) else {
            continue;
        };
        // Kinds served under several group-versions (DeleteOptions,
        // WatchEvent) are not objects anyone applies.
        if gvks.len() != 1 {
            continue;
        }
        let gvk = &gvks[0];
        let (group, version, kind) = (
            gvk["group"].as_str().unwrap_or_default(),
            gvk["version"].as_str().unwrap_or_default(),
            gvk["kind"].as_str().unwrap_or_default(),
        );
        // CRDs are published too; they are converted from their own files below.
        if name.starts_with("dev.regcred.") {
            continue;
        }
        let file = schema_file_name(group, version, kind);
        // Two groups sharing a first label (rare): keep the first one.
        if written.contains_key(&file) {
            continue;
        }
        let schema = converter.standalone(converter.convert(def, false), std::slice::from_ref(name))?;
        written.insert(file, schema);
    }
    if written.is_empty() {
        bail!("/openapi/v2 has no kinds");
    }

    for path in yaml_files(crd_dir)? {
        let text = fs::read_to_string(&path)?;
        let crd: Value = serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let group = crd["spec"]["group"].as_str().ok_or_else(|| anyhow!("{}: no spec.group", path.display()))?;
        let kind = crd["spec"]["names"]["kind"].as_str().ok_or_else(|| anyhow!("{}: no kind", path.display()))?;
        for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
            let v = version["name"].as_str().unwrap_or_default();
            let Some(schema) = version.pointer("/schema/openAPIV3Schema") else {
                continue;
            };
            let mut root = converter.convert(schema, true);
            let props = root
                .as_object_mut()
                .and_then(|o| o.entry("properties").or_insert_with(|| json!({})).as_object_mut())
                .ok_or_else(|| anyhow!("{}: openAPIV3Schema is not an object schema", path.display()))?;
            props.insert("apiVersion".into(), json!({"type": "string", "enum": [format!("{group}/{v}")]}));
            props.insert("kind".into(), json!({"type": "string", "enum": [kind]}));
            props.insert(
                "metadata".into(),
                json!({"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}),
            );
            root["additionalProperties"] = json!(false);
            root["required"] = json!(["apiVersion", "kind", "metadata", "spec"]);
            let schema = converter.standalone(root, &[])?;
            written.insert(schema_file_name(group, v, kind), schema);
        }
    }

    let service_monitor = converter.standalone(service_monitor_schema(), &[])?;
    written.insert(schema_file_name("monitoring.coreos.com", "v1", "ServiceMonitor"), service_monitor);
    let prometheus_rule = converter.standalone(prometheus_rule_schema(), &[])?;
    written.insert(schema_file_name("monitoring.coreos.com", "v1", "PrometheusRule"), prometheus_rule);

    for (file, schema) in &written {
        fs::write(out.join(file), serde_json::to_vec(schema)?)?;
    }
    Ok(written.into_keys().collect())
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

const REF_PREFIX: &str = "#/definitions/";

/// Turns OpenAPI (v2 definitions, or a CRD's v3 schema) into JSON schema.
struct Converter<'a> {
    defs: &'a Map<String, Value>,
}

impl Converter<'_> {
    /// Converts one schema node. `crd`: honour `nullable` (CRD schemas);
    /// built-in kinds allow no nulls, which also catches a template that
    /// renders an empty key.
    fn convert(&self, node: &Value, crd: bool) -> Value {
        let Some(obj) = node.as_object() else {
            return node.clone();
        };
        if let Some(r) = obj.get("$ref") {
            return json!({ "$ref": r });
        }
        let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
            || obj.get("format").and_then(Value::as_str) == Some("int-or-string");
        if int_or_string {
            return json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
        }
        let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        let mut out = Map::new();
        for (key, value) in obj {
            match key.as_str() {
                // Formats (int32, byte, date-time) are not JSON schema
                // assertions kubeconform should make; extensions, examples
                // and descriptions only add size.
                "format" | "description" | "example" | "nullable" => {}
                k if k.starts_with("x-") => {}
                "properties" | "patternProperties" | "definitions" => {
                    let map = value
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| (k.clone(), self.convert(v, crd))).collect())
                        .unwrap_or_default();
                    out.insert(key.clone(), Value::Object(map));
                }
                "items" | "additionalProperties" | "not" => {
                    out.insert(key.clone(), if value.is_object() { self.convert(value, crd) } else { value.clone() });
                }
                "allOf" | "anyOf" | "oneOf" => {
                    let list =
                        value.as_array().map(|l| l.iter().map(|v| self.convert(v, crd)).collect()).unwrap_or_default();
                    out.insert(key.clone(), Value::Array(list));
                }
                _ => {
                    out.insert(key.clone(), value.clone());
                }
            }
        }
        if out.contains_key("properties") && !out.contains_key("additionalProperties") && !preserve {
            out.insert("additionalProperties".into(), Value::Bool(false));
        }
        if crd
            && obj.get("nullable") == Some(&Value::Bool(true))
            && let Some(Value::String(t)) = out.get("type").cloned()
        {
            out.insert("type".into(), json!([t, "null"]));
        }
        Value::Object(out)
    }

    /// The definition `name` as JSON schema, with the quirks of a few
    /// built-in types.
    fn definition(&self, name: &str) -> Result<Value> {
        Ok(match name {
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
                json!({"oneOf": [{"type": "string"}, {"type": "integer"}]})
            }
            "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
                json!({"oneOf": [{"type": "string"}, {"type": "number"}]})
            }
            _ => self.convert(self.defs.get(name).ok_or_else(|| anyhow!("no definition {name}"))?, false),
        })
    }

    /// `root` plus every definition it references, directly or not, under
    /// `definitions`. `root_names`: definitions that are `root` itself.
    fn standalone(&self, mut root: Value, root_names: &[String]) -> Result<Value> {
        let mut done: BTreeMap<String, Value> = BTreeMap::new();
        let mut todo: BTreeSet<String> = BTreeSet::new();
        collect_refs(&root, &mut todo);
        while let Some(name) = todo.pop_first() {
            if done.contains_key(&name) {
                continue;
            }
            let def = if root_names.contains(&name) {
                let mut r = root.clone();
                r.as_object_mut().map(|o| o.remove("definitions"));
                r
            } else {
                self.definition(&name)?
            };
            let mut refs = BTreeSet::new();
            collect_refs(&def, &mut refs);
            todo.extend(refs.into_iter().filter(|r| !done.contains_key(r)));
            done.insert(name, def);
        }
        if !done.is_empty() {
            let defs = root
                .as_object_mut()
                .ok_or_else(|| anyhow!("schema root is not an object"))?
                .entry("definitions")
                .or_insert_with(|| json!({}));
            for (name, def) in done {
                defs[name] = def;
            }
        }
        Ok(root)
    }
}

fn collect_refs(node: &Value, refs: &mut BTreeSet<String>) {
    match node {
        Value::Object(o) => {
            if let Some(name) = o.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix(REF_PREFIX)) {
                refs.insert(name.to_string());
            }
            o.values().for_each(|v| collect_refs(v, refs));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, refs)),
        _ => {}
    }
}

/// A minimal, hand-written schema for the Prometheus Operator's
/// `monitoring.coreos.com/v1` ServiceMonitor (its CRD is not installed in
/// the test control plane): the fields of `spec` and of an endpoint that
/// the chart can render, strictly, plus the other common endpoint fields.
/// A strict schema for a `monitoring.coreos.com/v1` object of `kind` whose
/// `spec` follows `spec`.
fn monitoring_object(kind: &str, spec: Value) -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string", "enum": ["monitoring.coreos.com/v1"]},
            "kind": {"type": "string", "enum": [kind]},
            "metadata": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
            "spec": spec
        }
    })
}

fn service_monitor_schema() -> Value {
    let duration = json!({"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"});
    let relabel = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "sourceLabels": {"type": "array", "items": {"type": "string"}},
            "separator": {"type": "string"},
            "targetLabel": {"type": "string"},
            "regex": {"type": "string"},
            "modulus": {"type": "integer", "minimum": 0},
            "replacement": {"type": "string"},
            "action": {"type": "string", "enum": [
                "replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
                "dropequal", "DropEqual"
            ]}
        }
    });
    let endpoint = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "port": {"type": "string"},
            "targetPort": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "path": {"type": "string"},
            "scheme": {"type": "string", "enum": ["http", "https", "HTTP", "HTTPS"]},
            "params": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
            "interval": duration,
            "scrapeTimeout": duration,
            "honorLabels": {"type": "boolean"},
            "honorTimestamps": {"type": "boolean"},
            "trackTimestampsStaleness": {"type": "boolean"},
            "followRedirects": {"type": "boolean"},
            "enableHttp2": {"type": "boolean"},
            "filterRunning": {"type": "boolean"},
            "proxyUrl": {"type": "string"},
            "tlsConfig": {"type": "object"},
            "basicAuth": {"type": "object"},
            "authorization": {"type": "object"},
            "oauth2": {"type": "object"},
            "bearerTokenSecret": {"type": "object"},
            "relabelings": {"type": "array", "items": relabel},
            "metricRelabelings": {"type": "array", "items": relabel}
        }
    });
    monitoring_object(
        "ServiceMonitor",
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["selector"],
            "properties": {
                "selector": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}}
                    }
                },
                "endpoints": {"type": "array", "items": endpoint},
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "targetLimit": {"type": "integer", "minimum": 0},
                "scrapeProtocols": {"type": "array", "items": {"type": "string"}},
                "labelLimit": {"type": "integer", "minimum": 0},
                "labelNameLengthLimit": {"type": "integer", "minimum": 0},
                "labelValueLengthLimit": {"type": "integer", "minimum": 0},
                "attachMetadata": {"type": "object"}
            }
        }),
    )
}

/// A hand-written, strict schema for the Prometheus Operator's
/// `monitoring.coreos.com/v1` PrometheusRule (its CRD is not installed in
/// the test control plane either), after the CRD's `spec.groups[]` and
/// `rules[]` (prometheus-operator `pkg/apis/monitoring/v1/prometheusrule_types.go`):
/// a rule group has a `name` and `rules`, a rule an `expr` and either
/// `alert` or `record`; durations use the operator's pattern.
fn prometheus_rule_schema() -> Value {
    let duration = json!({"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"});
    let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let rule = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["expr"],
        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
        "properties": {
            "alert": {"type": "string", "minLength": 1},
            "record": {"type": "string", "minLength": 1},
            "expr": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "integer"}]},
            "for": duration,
            "keep_firing_for": duration,
            "labels": strings,
            "annotations": strings
        }
    });
    let group = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "interval": duration,
            "query_offset": duration,
            "limit": {"type": "integer"},
            "partial_response_strategy": {"type": "string", "enum": ["", "abort", "warn", "Abort", "Warn"]},
            "rules": {"type": "array", "items": rule}
        }
    });
    monitoring_object(
        "PrometheusRule",
        json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {"groups": {"type": "array", "items": group}}
        }),
    )
}

// ---------------------------------------------------------------------------
// Rendered manifests, RBAC rules and refusals, shared by the chart tests

/// The documents of a rendered manifest, empty ones skipped.
pub fn manifest_objects(manifest: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(manifest)
        .map(|doc| serde_json::Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The `rules` of a rendered Role or ClusterRole.
pub fn rules_of(obj: &serde_json::Value) -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    serde_json::from_value(obj["rules"].clone()).expect("rules")
}

/// One permission: `(apiGroup, resource, verb, resourceName)`.
pub type Grant = (String, String, String, Option<String>);

/// Rules flattened to grants, so that comparisons ignore order and
/// grouping; no rule may name non-resource URLs.
pub fn grants(rules: &[k8s_openapi::api::rbac::v1::PolicyRule]) -> std::collections::BTreeSet<Grant> {
    let mut out = std::collections::BTreeSet::new();
    for r in rules {
        assert!(r.non_resource_urls.as_ref().is_none_or(Vec::is_empty), "nonResourceURLs in {r:?}");
        let names: Vec<Option<String>> = match r.resource_names.as_deref() {
            Some(n) if !n.is_empty() => n.iter().cloned().map(Some).collect(),
            _ => vec![None],
        };
        for g in r.api_groups.as_deref().unwrap_or_default() {
            for res in r.resources.as_deref().unwrap_or_default() {
                for v in &r.verbs {
                    for n in &names {
                        out.insert((g.clone(), res.clone(), v.clone(), n.clone()));
                    }
                }
            }
        }
    }
    out
}

/// The apiserver's message for a request it must have refused with 403.
pub fn refusal<T>(what: &str, result: Result<T, kube::Error>) -> String {
    match result {
        Ok(_) => panic!("{what}: the apiserver allowed it"),
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{what}: {e:?}");
            e.message
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Asserts that guardrail `policy` refused the request.
pub fn refused_by_guardrail(what: &str, policy: &str, result: Result<impl Sized, kube::Error>) {
    let message = refusal(what, result);
    assert!(
        message.contains(&format!("'{policy}'")) && message.contains("regcred may"),
        "{what}: not refused by {policy}: {message}"
    );
    eprintln!("{what}: refused: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_kubeconform() {
        assert_eq!(schema_file_name("apps", "v1", "Deployment"), "deployment-apps-v1.json");
        assert_eq!(schema_file_name("", "v1", "Service"), "service-v1.json");
        assert_eq!(schema_file_name("rbac.authorization.k8s.io", "v1", "ClusterRole"), "clusterrole-rbac-v1.json");
        assert_eq!(
            schema_file_name("regcred.dev", "v1alpha1", "RegistryCredential"),
            "registrycredential-regcred-v1alpha1.json"
        );
    }

    #[test]
    fn objects_become_strict_and_crd_nulls_allowed() {
        let defs = Map::new();
        let c = Converter { defs: &defs };
        let v = c.convert(
            &json!({"type": "object", "properties": {"a": {"type": "string", "nullable": true, "format": "byte"}}}),
            true,
        );
        assert_eq!(
            v,
            json!({"type": "object", "additionalProperties": false, "properties": {"a": {"type": ["string", "null"]}}})
        );
        let v =
            c.convert(&json!({"type": "object", "properties": {}, "x-kubernetes-preserve-unknown-fields": true}), true);
        assert_eq!(v, json!({"type": "object", "properties": {}}));
        let v = c.convert(&json!({"x-kubernetes-int-or-string": true, "anyOf": []}), true);
        assert_eq!(v, json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}));
    }
}
