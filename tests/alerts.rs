//! regcred's alerts and Grafana dashboard, shipped by the chart
//! (`charts/regcred/files/alerts/`, `files/dashboards/`; docs/operations.md,
//! "Alerts"):
//!
//! - `promtool check rules` and `promtool test rules` on the rule file and
//!   its unit tests, as the chart ships them, and a weakened copy of a rule
//!   that the unit tests must catch;
//! - every alert's `runbook_url` points at its section of
//!   docs/operations.md, and the section shows the alert's expression;
//! - every query of the rules and the dashboard names a metric and labels
//!   that a running operator exports (scraped from its `/metrics` with
//!   credentials in place), checked by a small PromQL tokenizer that is
//!   itself tested with wrong names;
//! - a real Prometheus scrapes the operator and evaluates the chart's
//!   rules: `RegcredRefreshesFailing` fires when a basic credential's source
//!   Secret is deleted and clears when it is back.
//!
//! `promtool` and `prometheus` come from the Debian package `prometheus`
//! (`hack/install-test-deps.sh`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use regcred::api::RegistryCredential;
use regcred::metrics::{CredentialLabels, VerbLabels};
use regcred_testenv::aws::EcrPublicStandIn;
use regcred_testenv::prometheus::{Prometheus, binary};
use regcred_testenv::repo_root;
use serde::Deserialize as _;
use serde_json::{Value, json};

const RUNBOOKS: &str = "https://github.com/regcred/regcred/blob/main/docs/operations.md";
const NS: &str = "alerts";

fn alerts_dir() -> PathBuf {
    repo_root().join("charts/regcred/files/alerts")
}

fn rules_file() -> PathBuf {
    alerts_dir().join("regcred.rules.yaml")
}

fn rules() -> Vec<Value> {
    let doc: Value = serde_yaml::from_str(&fs::read_to_string(rules_file()).unwrap()).unwrap();
    doc["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap().clone()).collect()
}

fn dashboard_exprs() -> Vec<String> {
    let path = repo_root().join("charts/regcred/files/dashboards/regcred.json");
    let dashboard: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = vec![];
    collect_exprs(&dashboard, &mut exprs);
    exprs
}

/// Every `expr` anywhere in the dashboard (panels, rows, variables).
fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Runs promtool with `args` in `dir`: (success, stdout + stderr).
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let bin = binary("promtool").unwrap_or_else(|e| panic!("{e:#}"));
    let out = Command::new(bin).args(args).current_dir(dir).output().expect("running promtool");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

// ---------------------------------------------------------------------------
// promtool

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let n = rules().len();
    let (ok, out) = promtool(&alerts_dir(), &["check", "rules", "regcred.rules.yaml"]);
    assert!(ok && out.contains(&format!("SUCCESS: {n} rules found")), "promtool check rules:\n{out}");
    let (ok, out) = promtool(&alerts_dir(), &["test", "rules", "regcred.rules.test.yaml"]);
    assert!(ok, "promtool test rules:\n{out}");

    // Every alert is tested both firing and silent.
    let tests: Value =
        serde_yaml::from_str(&fs::read_to_string(alerts_dir().join("regcred.rules.test.yaml")).unwrap()).unwrap();
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in tests["tests"].as_array().unwrap().iter().flat_map(|t| t["alert_rule_test"].as_array().unwrap()) {
        let name = case["alertname"].as_str().unwrap().to_string();
        if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
            firing.insert(name);
        } else {
            silent.insert(name);
        }
    }
    for rule in rules() {
        let alert = rule["alert"].as_str().unwrap();
        assert!(firing.contains(alert), "{alert}: no unit test where it fires");
        assert!(silent.contains(alert), "{alert}: no unit test where it stays silent");
    }

    // The unit tests bite: a weaker threshold or a longer `for` fails them.
    let dir = std::env::temp_dir().join(format!("regcred-alerts-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    fs::copy(alerts_dir().join("regcred.rules.test.yaml"), dir.join("regcred.rules.test.yaml")).unwrap();
    let text = fs::read_to_string(rules_file()).unwrap();
    for (from, to) in [("time() < 900", "time() < 600"), ("for: 15m", "for: 20m")] {
        assert!(text.contains(from), "{from} not in the rules");
        fs::write(dir.join("regcred.rules.yaml"), text.replacen(from, to, 1)).unwrap();
        let (ok, out) = promtool(&dir, &["test", "rules", "regcred.rules.test.yaml"]);
        assert!(!ok && out.contains("FAILED"), "the unit tests passed with {to:?} instead of {from:?}:\n{out}");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_alert_has_its_runbook_with_its_expression() {
    let docs = fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    for rule in rules() {
        let alert = rule["alert"].as_str().unwrap();
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or_default();
        assert_eq!(url, format!("{RUNBOOKS}#{}", alert.to_lowercase()), "{alert}: runbook_url");
        let heading = format!("\n### {alert}\n");
        let start = docs.find(&heading).unwrap_or_else(|| panic!("docs/operations.md has no section {heading:?}"));
        let section = &docs[start + heading.len()..];
        let section = &section[..section.find("\n#").unwrap_or(section.len())];
        let expr = rule["expr"].as_str().unwrap().trim();
        assert!(section.contains(expr), "the runbook of {alert} does not show its expression:\n{expr}");
        for part in ["**Means**", "**Check**", "**Fix**"] {
            assert!(section.contains(part), "the runbook of {alert} has no {part}");
        }
    }
}

// ---------------------------------------------------------------------------
// Metric and label names

/// The metrics a scrape shows: sample name -> label names, or `None` when
/// the family is declared (`# TYPE`) but has no series yet.
#[derive(Debug, Default)]
struct Exported {
    metrics: BTreeMap<String, Option<BTreeSet<String>>>,
}

impl Exported {
    /// From the exposition text. A counter `x` is sampled as `x_total`, a
    /// histogram as `x_bucket`, `x_sum` and `x_count`.
    fn parse(text: &str) -> Exported {
        let mut metrics: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (name, kind) = (parts.next().unwrap(), parts.next().unwrap_or_default());
                let names: Vec<String> = match kind {
                    "counter" => vec![format!("{}_total", name.trim_end_matches("_total"))],
                    "histogram" => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{name}{s}")).collect(),
                    _ => vec![name.to_string()],
                };
                for n in names {
                    metrics.entry(n).or_insert(None);
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                let name = &line[..end];
                let mut labels = BTreeSet::new();
                if line[end..].starts_with('{') {
                    let body = &line[end + 1..line.rfind('}').unwrap()];
                    for tok in lex(&format!("{{{body}}}")).unwrap_or_else(|e| panic!("{line}: {e}")) {
                        if let Tok::Matchers(ms) = tok {
                            labels.extend(ms.into_iter().map(|(l, _)| l));
                        }
                    }
                }
                metrics.entry(name.to_string()).or_insert(None).get_or_insert_with(BTreeSet::new).extend(labels);
            }
        }
        Exported { metrics }
    }
}

/// PromQL tokens (enough of the language for the rules and the dashboard).
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str,
    Num,
    /// `[5m]`, `[$__rate_interval]`, `[30m:1m]`.
    Range,
    /// `{label="v", ...}`: (label, operator).
    Matchers(Vec<(String, String)>),
    Op(String),
}

fn lex(expr: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut out = vec![];
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let read_string = |i: &mut usize| -> Result<(), String> {
        let quote = chars[*i];
        *i += 1;
        while *i < chars.len() && chars[*i] != quote {
            if chars[*i] == '\\' && quote != '`' {
                *i += 1;
            }
            *i += 1;
        }
        if *i >= chars.len() {
            return Err("unterminated string".into());
        }
        *i += 1;
        Ok(())
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || ((chars[i] == '+' || chars[i] == '-') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            out.push(Tok::Num);
        } else if c == '"' || c == '\'' || c == '`' {
            read_string(&mut i)?;
            out.push(Tok::Str);
        } else if c == '[' {
            let end = chars[i..].iter().position(|&c| c == ']').ok_or("unterminated range")? + i;
            let body: String = chars[i + 1..end].iter().collect();
            let valid = |d: &str| {
                d.starts_with("$__")
                    || (!d.is_empty()
                        && d.split_inclusive(|c: char| c.is_ascii_alphabetic()).all(|p| {
                            let unit = p.trim_start_matches(|c: char| c.is_ascii_digit());
                            p.len() > unit.len() && ["s", "m", "h", "d", "w", "y"].contains(&unit)
                        }))
            };
            let parts: Vec<&str> = body.split(':').map(str::trim).collect();
            if !(parts.len() <= 2 && valid(parts[0]) && parts.get(1).is_none_or(|p| p.is_empty() || valid(p))) {
                return Err(format!("bad range [{body}]"));
            }
            out.push(Tok::Range);
            i = end + 1;
        } else if c == '{' {
            i += 1;
            let mut matchers = vec![];
            loop {
                while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                    i += 1;
                }
                if i >= chars.len() {
                    return Err("unterminated {".into());
                }
                if chars[i] == '}' {
                    i += 1;
                    break;
                }
                let start = i;
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
                let label: String = chars[start..i].iter().collect();
                if label.is_empty() {
                    return Err(format!("expected a label name at {:?}", chars[i..].iter().collect::<String>()));
                }
                while i < chars.len() && chars[i].is_whitespace() {
                    i += 1;
                }
                let op_start = i;
                while i < chars.len() && matches!(chars[i], '=' | '!' | '~') {
                    i += 1;
                }
                let op: String = chars[op_start..i].iter().collect();
                if !["=", "!=", "=~", "!~"].contains(&op.as_str()) {
                    return Err(format!("bad matcher operator {op:?} after {label}"));
                }
                while i < chars.len() && chars[i].is_whitespace() {
                    i += 1;
                }
                if !matches!(chars.get(i), Some('"' | '\'' | '`')) {
                    return Err(format!("expected a string after {label}{op}"));
                }
                read_string(&mut i)?;
                matchers.push((label, op));
            }
            out.push(Tok::Matchers(matchers));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["==", "!=", "<=", ">=", "=~", "!~"].contains(&two.as_str()) {
                out.push(Tok::Op(two));
                i += 2;
            } else if "+-*/%^<>(),".contains(c) {
                out.push(Tok::Op(c.to_string()));
                i += 1;
            } else {
                return Err(format!("unexpected {c:?}"));
            }
        }
    }
    Ok(out)
}

const AGGREGATIONS: &[&str] =
    &["sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"];
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log2",
    "log10",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "time",
    "timestamp",
    "vector",
    "year",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// What is wrong with `expr` against `exported`: unknown functions,
/// metrics, or label names (in matchers, and in `by`/`on`/... lists, which
/// must name a label of a metric of the expression).
fn check(expr: &str, exported: &Exported) -> Vec<String> {
    let toks = match lex(expr) {
        Ok(t) => t,
        Err(e) => return vec![format!("{expr}: {e}")],
    };
    let mut errors = vec![];
    let mut labels_in_expr: BTreeSet<String> = BTreeSet::new();
    let mut grouping: Vec<String> = vec![];
    let mut i = 0;
    while i < toks.len() {
        let next_is_paren = toks.get(i + 1) == Some(&Tok::Op("(".into()));
        // `sum by (x) (...)`: the grouping may come before the arguments.
        let grouped_aggregation = matches!((&toks[i], toks.get(i + 1)),
            (Tok::Ident(id), Some(Tok::Ident(g))) if AGGREGATIONS.contains(&id.as_str()) && (g == "by" || g == "without"));
        match &toks[i] {
            Tok::Ident(id) if LABEL_LISTS.contains(&id.as_str()) => {
                if next_is_paren {
                    i += 2;
                    while i < toks.len() && toks[i] != Tok::Op(")".into()) {
                        match &toks[i] {
                            Tok::Ident(l) => grouping.push(l.clone()),
                            Tok::Op(c) if c == "," => {}
                            t => errors.push(format!("{expr}: unexpected {t:?} in {id}(...)")),
                        }
                        i += 1;
                    }
                } else if !id.starts_with("group_") {
                    errors.push(format!("{expr}: {id} without a label list"));
                }
            }
            Tok::Ident(id) if next_is_paren || grouped_aggregation => {
                let known = AGGREGATIONS.contains(&id.as_str()) || FUNCTIONS.contains(&id.as_str());
                errors.extend((!known).then(|| format!("{expr}: unknown function {id}")));
            }
            Tok::Ident(id) if KEYWORDS.contains(&id.to_ascii_lowercase().as_str()) => {}
            Tok::Ident(metric) => match exported.metrics.get(metric) {
                None => errors.push(format!("{expr}: {metric} is not exported")),
                Some(known) => {
                    if let Some(known) = known {
                        labels_in_expr.extend(known.iter().cloned());
                    }
                    if let Some(Tok::Matchers(ms)) = toks.get(i + 1) {
                        for (label, _) in ms {
                            match known {
                                Some(k) if k.contains(label) => {}
                                Some(_) => errors.push(format!("{expr}: {metric} has no label {label}")),
                                None => errors.push(format!(
                                    "{expr}: {metric} has no series in the scrape to check label {label} against"
                                )),
                            }
                        }
                        i += 1;
                    }
                }
            },
            Tok::Matchers(_) => errors.push(format!("{expr}: label matchers without a metric name")),
            _ => {}
        }
        i += 1;
    }
    for label in grouping {
        if !labels_in_expr.contains(&label) {
            errors.push(format!("{expr}: no metric of the expression has label {label}"));
        }
    }
    errors
}

/// The checker itself: right names pass, each kind of wrong name fails.
#[test]
fn the_name_check_refuses_unknown_functions_metrics_and_labels() {
    let exported = Exported::parse(
        "# TYPE regcred_refreshes counter\n\
         regcred_refreshes_total{provider=\"basic\",result=\"success\"} 1\n\
         # TYPE regcred_provider_request_duration_seconds histogram\n\
         regcred_provider_request_duration_seconds_bucket{provider=\"basic\",le=\"0.1\"} 1\n\
         # TYPE regcred_kube_throttled counter\n\
         # EOF\n",
    );
    let ok = [
        r#"sum by (provider) (increase(regcred_refreshes_total{result="failure"}[10m])) > 0"#,
        "histogram_quantile(0.95, sum by (provider, le) (rate(regcred_provider_request_duration_seconds_bucket[$__rate_interval])))",
        "sum(rate(regcred_kube_throttled_total[15m])) > 0 or vector(0)",
    ];
    for expr in ok {
        assert_eq!(check(expr, &exported), Vec::<String>::new(), "{expr}");
    }
    let bad = [
        (r#"increase(regcred_refresh_total[10m])"#, "regcred_refresh_total is not exported"),
        (r#"regcred_refreshes_total{reslt="failure"}"#, "has no label reslt"),
        (r#"sum by (provder) (regcred_refreshes_total)"#, "no metric of the expression has label provder"),
        (r#"rat(regcred_refreshes_total[5m])"#, "unknown function rat"),
        (r#"regcred_kube_throttled_total{method="PUT"}"#, "no series in the scrape"),
        (r#"regcred_refreshes_total[5x]"#, "bad range"),
        (r#"regcred_refreshes_total{result=failure}"#, "expected a string"),
    ];
    for (expr, says) in bad {
        let errors = check(expr, &exported);
        assert!(errors.iter().any(|e| e.contains(says)), "{expr}: expected an error saying {says:?}, got {errors:?}");
    }
}

/// One operator for the test binary, with what an ECR Public credential
/// needs to mint from the stand-in.
async fn start() -> kube::Client {
    set_operator_env(vec![
        ("AWS_MAX_ATTEMPTS".into(), "1".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]);
    let client = setup().await;
    static NAMESPACE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    NAMESPACE.get_or_init(|| async { create_namespace(&client, NS, &[]).await }).await;
    client
}

/// Every query of the rules and the dashboard names metrics and labels the
/// operator exports, scraped with credentials in place: a basic one
/// (Synced), an ECR Public one (an expiry) and one whose source Secret is
/// missing (a reconcile error).
#[tokio::test]
async fn every_query_names_an_exported_metric_and_label() {
    let client = start().await;
    let standin = EcrPublicStandIn::start(Duration::from_secs(3600)).unwrap();
    const KEY: &str = "alerts-aws-secret-key";
    regcred_testenv::operator::record_secret(KEY);
    let keys: Secret = serde_json::from_value(json!({
        "metadata": {"name": "aws", "namespace": NS},
        "stringData": {"access-key-id": "AKIAALERTSKEY0000001", "secret-access-key": KEY}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), NS).create(&PostParams::default(), &keys).await.unwrap();
    put_login(&client, NS, "names-login", "robot", "alerts-names-password").await;
    apply_rcred(&client, NS, "names-basic", basic_spec("registry.example.com", "names-login", "names-pull")).await;
    let ecr = |secret: &str, pull: &str| {
        json!({"provider": {"ecrPublic": {"auth": {"secretRef": {"name": secret}}, "endpoint": standin.endpoint()}},
               "secret": {"name": pull}})
    };
    apply_rcred(&client, NS, "names-ecr", ecr("aws", "names-ecr-pull")).await;
    apply_rcred(&client, NS, "names-broken", ecr("no-such-secret", "names-broken-pull")).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), NS);
    wait_for_reason(&rcreds, "names-basic", "Synced").await;
    wait_for_reason(&rcreds, "names-ecr", "Synced").await;
    wait_for_reason(&rcreds, "names-broken", "SourceSecretNotFound").await;

    let text = operator().metrics().unwrap();
    let mut exported = Exported::parse(&text);
    // Families with no series are not in a scrape at all; some need what
    // this test cannot cause cheaply (apiserver 429s, a Pod recovered on a
    // real node, a registry reporting a pull quota: tests/explain.rs shows
    // those gauges on a live operator). A series of each is made in
    // regcred's own registry, with its own label types, and encoded by its
    // own encoder.
    let made = regcred::metrics::Metrics::default();
    made.kube_throttled.get_or_create(&VerbLabels { method: "PATCH".into() }).inc();
    let credential = CredentialLabels { kind: "RegistryCredential".into(), namespace: NS.into(), name: "n".into() };
    made.pods_recovered.get_or_create(&credential).inc();
    let quota = regcred::metrics::QuotaLabels {
        kind: "RegistryCredential".into(),
        namespace: NS.into(),
        name: "n".into(),
        registry: "docker.io".into(),
    };
    made.pull_quota_remaining.get_or_create(&quota).set(1);
    made.pull_quota_limit.get_or_create(&quota).set(10);
    // A spoke of the fleet (tests/fleet.rs shows the gauge on a live hub).
    made.cluster_up.get_or_create(&regcred::metrics::ClusterLabels { cluster: "east".into() }).set(0);
    const MADE: [&str; 5] = [
        "regcred_kube_throttled_total",
        "regcred_pods_recovered_total",
        "regcred_registry_pull_quota_remaining",
        "regcred_registry_pull_quota_limit",
        "regcred_cluster_up",
    ];
    for (name, labels) in Exported::parse(&made.encode()).metrics {
        if MADE.contains(&name.as_str()) {
            exported.metrics.entry(name).or_insert(labels);
        }
    }
    for family in [
        "regcred_credential_expiry_timestamp_seconds",
        "regcred_managed_secrets",
        "regcred_refreshes_total",
        "regcred_reconcile_errors_total",
        "regcred_provider_request_duration_seconds_bucket",
    ] {
        assert!(matches!(exported.metrics.get(family), Some(Some(_))), "no series of {family} in:\n{text}");
    }
    // The dashboard is made of exported metrics only.
    let mut errors: Vec<String> = dashboard_exprs().iter().flat_map(|e| check(e, &exported)).collect();
    for rule in rules() {
        errors.extend(check(rule["expr"].as_str().unwrap(), &exported));
    }
    assert!(errors.is_empty(), "queries naming what regcred does not export:\n{}", errors.join("\n"));
    eprintln!(
        "checked {} dashboard queries and {} rules against {} metrics",
        dashboard_exprs().len(),
        rules().len(),
        exported.metrics.len()
    );
}

// ---------------------------------------------------------------------------
// A real Prometheus

/// The chart's rules as a rule file, rendered with `overrides` (helm
/// `--set` arguments).
fn rendered_rules(dir: &Path, overrides: &[&str]) -> PathBuf {
    let home = dir.join("helm-home");
    let chart = repo_root().join("charts/regcred").display().to_string();
    let mut args = vec!["template", "regcred", &chart, "--set", "prometheusRule.enabled=true"];
    for o in overrides {
        args.extend(["--set", o]);
    }
    let out = regcred_testenv::chart::helm(&home).unwrap_or_else(|e| panic!("{e:#}")).args(&args).output().unwrap();
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    let manifest = String::from_utf8(out.stdout).unwrap();
    let rule = serde_yaml::Deserializer::from_str(&manifest)
        .map(|d| Value::deserialize(d).unwrap())
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    let path = dir.join("regcred.rules.yaml");
    fs::write(&path, serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    let (ok, out) = promtool(dir, &["check", "rules", "regcred.rules.yaml"]);
    assert!(ok, "the rendered rules:\n{out}");
    path
}

/// The basic provider's RegcredRefreshesFailing alert, if pending or firing: its state.
fn refreshes_failing(prometheus: &Prometheus) -> Option<String> {
    let alerts = prometheus.alerts().unwrap_or_else(|e| panic!("{e:#}\n{}", prometheus.log_text()));
    alerts
        .iter()
        .find(|a| a["labels"]["alertname"] == "RegcredRefreshesFailing" && a["labels"]["provider"] == "basic")
        .map(|a| a["state"].as_str().unwrap_or_default().to_string())
}

/// A real Prometheus scrapes the operator every second and evaluates the
/// chart's rules, rendered with `for: 0s` and a 30-second window for
/// RegcredRefreshesFailing (values the chart offers; the shipped defaults
/// are 15m and 10m). Deleting a basic credential's source Secret makes its
/// refreshes fail (SourceSecretNotFound) and the alert fire; putting it back
/// clears it.
#[tokio::test]
async fn a_real_prometheus_fires_and_clears_refreshes_failing() {
    let client = start().await;
    let cp = control_plane();
    let dir = cp.dir().join("prometheus");
    fs::create_dir_all(&dir).unwrap();
    let rules = rendered_rules(
        &dir,
        &[
            "prometheusRule.alerts.RegcredRefreshesFailing.for=0s",
            "prometheusRule.alerts.RegcredRefreshesFailing.window=30s",
        ],
    );
    let target = operator().metrics_url.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(
        &dir.join("server"),
        cp.process_group(),
        "regcred",
        &[&target],
        &[rules],
        Duration::from_secs(1),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    poll_logged("Prometheus to scrape the operator", WAIT, Duration::from_millis(250), Some(operator()), || async {
        prometheus.targets().ok()?.iter().any(|(_, health, _)| health == "up").then_some(())
    })
    .await;

    put_login(&client, NS, "prom-login", "robot", "alerts-prometheus-password").await;
    apply_rcred(&client, NS, "prom-basic", basic_spec("registry.example.com", "prom-login", "prom-pull")).await;
    let rcreds: Api<RegistryCredential> = Api::namespaced(client.clone(), NS);
    wait_for_reason(&rcreds, "prom-basic", "Synced").await;
    // Some scrapes and evaluations of the healthy credential first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(refreshes_failing(&prometheus), None, "the alert before any failure");

    let broke = Instant::now();
    Api::<Secret>::namespaced(client.clone(), NS).delete("prom-login", &DeleteParams::default()).await.unwrap();
    wait_for_reason(&rcreds, "prom-basic", "SourceSecretNotFound").await;
    poll_logged(
        "RegcredRefreshesFailing to fire",
        Duration::from_secs(120),
        Duration::from_millis(500),
        Some(operator()),
        || async { (refreshes_failing(&prometheus).as_deref() == Some("firing")).then_some(()) },
    )
    .await;
    let fired = broke.elapsed();

    let fixed = Instant::now();
    put_login(&client, NS, "prom-login", "robot", "alerts-prometheus-password").await;
    wait_for_reason(&rcreds, "prom-basic", "Synced").await;
    poll_logged(
        "RegcredRefreshesFailing to clear",
        Duration::from_secs(120),
        Duration::from_millis(500),
        Some(operator()),
        || async { refreshes_failing(&prometheus).is_none().then_some(()) },
    )
    .await;
    eprintln!(
        "RegcredRefreshesFailing fired {:.1}s after the source Secret was deleted and cleared {:.1}s after it was back",
        fired.as_secs_f64(),
        fixed.elapsed().as_secs_f64()
    );
}
