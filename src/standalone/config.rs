//! The configuration of the kubelet credential provider and the
//! Docker/Podman credential helper: image or registry patterns mapped to
//! provider specs written exactly as `spec.provider` of a credential, so
//! one set of types and validation serves all three delivery paths.
//!
//! ```yaml
//! apiVersion: regcred.dev/v1alpha1
//! kind: ProviderConfig
//! secretsDir: /etc/regcred/secrets   # secretRef NAME, key KEY -> secretsDir/NAME/KEY
//! cacheDir: /var/cache/regcred       # optional on nodes; the helper has a default
//! providers:
//!   - match: ["*.dkr.ecr.*.amazonaws.com"]
//!     provider:
//!       ecr: {region: eu-west-1}
//!     refresh: {renewBefore: 1h}      # optional, as spec.refresh
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde::{Deserialize, Serialize};

use crate::api::{Provider, RefreshPolicy};

/// `apiVersion` of the file.
pub const API_VERSION: &str = "regcred.dev/v1alpha1";
/// `kind` of the file.
pub const KIND: &str = "ProviderConfig";

/// The whole file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    pub api_version: String,
    pub kind: String,
    /// Directory holding the Secrets that `secretRef`s name, one directory
    /// per Secret and one file per key, as a mounted Secret volume is laid
    /// out.
    #[serde(default)]
    pub secrets_dir: Option<PathBuf>,
    /// Directory for minted credentials (mode 0600) kept until their
    /// refresh point.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// The first entry whose pattern matches an image (or registry) is used.
    pub providers: Vec<Entry>,
}

/// One provider and the images it serves.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    /// Image patterns, as the kubelet's `matchImages`: a host whose labels
    /// may be globs (`*.dkr.ecr.*.amazonaws.com`, `*-docker.pkg.dev`), an
    /// optional port (which must then match) and an optional path prefix.
    #[serde(rename = "match")]
    pub patterns: Vec<String>,
    /// The provider, in the same YAML as a credential's `spec.provider`.
    pub provider: Provider,
    /// When to mint again, as a credential's `spec.refresh`.
    #[serde(default)]
    pub refresh: Option<RefreshPolicy>,
}

impl ProviderConfig {
    /// Reads and checks a file. Errors name the file and the problem.
    pub fn load(path: &Path) -> Result<ProviderConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks the YAML text.
    pub fn parse(text: &str) -> Result<ProviderConfig, String> {
        // Through JSON values: serde_yaml 0.9 reads enums only from YAML tags,
        // while the provider is written as a map (`ecr: {...}`), as in a spec.
        let value: serde_json::Value = serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
        let config: ProviderConfig =
            serde_json::from_value(value.clone()).map_err(|e| format!("invalid configuration: {e}"))?;
        // The provider types accept unknown fields (the apiserver prunes
        // them from a spec); a file has no apiserver, so a typo is an error.
        let parsed = serde_json::to_value(&config).map_err(|e| e.to_string())?;
        if let Some(path) = unknown_field(&value, &parsed, String::new()) {
            return Err(format!("invalid configuration: unknown field {path}"));
        }
        if config.api_version != API_VERSION || config.kind != KIND {
            return Err(format!(
                "expected apiVersion {API_VERSION} and kind {KIND}, got {} {}",
                config.api_version, config.kind
            ));
        }
        if config.providers.is_empty() {
            return Err("no providers".into());
        }
        for (i, entry) in config.providers.iter().enumerate() {
            if entry.patterns.is_empty() {
                return Err(format!("providers[{i}] has no match patterns"));
            }
            for p in &entry.patterns {
                Pattern::parse(p).map_err(|e| format!("providers[{i}].match {p:?}: {e}"))?;
            }
            // What the CRD's CEL rule checks at apply time.
            if let Provider::Ecr(ecr) = &entry.provider
                && ecr.region.is_some() == ecr.regions.is_some()
            {
                return Err(format!("providers[{i}].provider.ecr: set exactly one of region or regions"));
            }
        }
        Ok(config)
    }

    /// The first entry matching `image` (an image reference or a registry
    /// host) and its index.
    pub fn entry_for(&self, image: &str) -> Option<(usize, &Entry)> {
        self.providers.iter().enumerate().find(|(_, e)| e.patterns.iter().any(|p| matches(p, image)))
    }

    /// The Secrets the entry's provider names, read from `secretsDir`.
    pub fn secrets_for(&self, entry: &Entry) -> Result<Vec<Secret>, String> {
        let names = entry.provider.secret_names();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let Some(dir) = &self.secrets_dir else {
            return Err(format!(
                "the {} provider reads Secret {:?}, but the configuration has no secretsDir",
                entry.provider.name(),
                names[0]
            ));
        };
        names.into_iter().map(|n| read_secret_dir(dir, n)).collect()
    }
}

/// The first key path present (and not null) in `input` but missing from
/// `parsed`, its re-serialisation.
fn unknown_field(input: &serde_json::Value, parsed: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value;
    match (input, parsed) {
        (Value::Object(i), Value::Object(p)) => i.iter().find_map(|(k, v)| {
            let at = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            match p.get(k) {
                None if !v.is_null() => Some(at),
                None => None,
                Some(pv) => unknown_field(v, pv, at),
            }
        }),
        (Value::Array(i), Value::Array(p)) => {
            i.iter().zip(p).enumerate().find_map(|(n, (iv, pv))| unknown_field(iv, pv, format!("{path}[{n}]")))
        }
        _ => None,
    }
}

/// A Secret from `dir/name/`: one key per regular file (hidden files, such
/// as a mounted volume's `..data` links, skipped).
pub fn read_secret_dir(dir: &Path, name: &str) -> Result<Secret, String> {
    let path = dir.join(name);
    let entries =
        std::fs::read_dir(&path).map_err(|e| format!("reading Secret {name} from {}: {e}", path.display()))?;
    let mut data = BTreeMap::new();
    for entry in entries.flatten() {
        let key = entry.file_name().to_string_lossy().into_owned();
        if key.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let bytes = std::fs::read(entry.path()).map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
        data.insert(key, ByteString(bytes));
    }
    let mut secret = Secret { data: Some(data), ..Default::default() };
    secret.metadata.name = Some(name.to_string());
    Ok(secret)
}

/// A parsed pattern: host labels (globs), port, path prefix.
#[derive(Debug, PartialEq)]
struct Pattern<'a> {
    labels: Vec<&'a str>,
    port: Option<&'a str>,
    path: &'a str,
}

impl<'a> Pattern<'a> {
    fn parse(s: &'a str) -> Result<Pattern<'a>, String> {
        let s = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
        let (hostport, path) = s.split_once('/').unwrap_or((s, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
            Some(_) => return Err("the port is not a number".into()),
            None => (hostport, None),
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let labels: Vec<&str> = host.split('.').collect();
        if labels.iter().any(|l| l.is_empty()) {
            return Err("an empty host label".into());
        }
        Ok(Pattern { labels, port, path: path.trim_end_matches('/') })
    }
}

/// Whether `image` (`host[:port]/path[:tag|@digest]`, or a bare host, or a
/// `https://host` URL as Docker hands helpers) matches `pattern`, with the
/// kubelet's `matchImages` rules: the same number of host labels, each
/// matching its glob; equal ports; the pattern's path a prefix of the
/// image's, segment by segment.
pub fn matches(pattern: &str, image: &str) -> bool {
    let (Ok(p), Ok(i)) = (Pattern::parse(pattern), Pattern::parse(image)) else {
        return false;
    };
    if p.labels.len() != i.labels.len() || p.port != i.port {
        return false;
    }
    if !p.labels.iter().zip(&i.labels).all(|(g, l)| glob(g, &l.to_ascii_lowercase())) {
        return false;
    }
    if p.path.is_empty() {
        return true;
    }
    let image_path = i.path.split(['@', ':']).next().unwrap_or_default();
    image_path == p.path || image_path.starts_with(&format!("{}/", p.path))
}

/// `*` matches any run of characters within one label; everything else
/// matches itself (case-insensitively).
fn glob(pattern: &str, text: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_the_kubelet_does() {
        let ecr = "*.dkr.ecr.*.amazonaws.com";
        assert!(matches(ecr, "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:v1"));
        assert!(matches(ecr, "123456789012.dkr.ecr.eu-west-1.amazonaws.com"));
        assert!(!matches(ecr, "dkr.ecr.eu-west-1.amazonaws.com/app"), "label count differs");
        assert!(!matches(ecr, "123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.io/app"));
        assert!(matches("*-docker.pkg.dev", "europe-docker.pkg.dev/p/r/i:1"));
        assert!(!matches("*-docker.pkg.dev", "europe-docker.pkg.dev.evil.io/x"));
        assert!(matches("gcr.io", "GCR.io/p/i"));
        assert!(matches("https://gcr.io", "gcr.io"), "Docker hands helpers URLs");
    }

    #[test]
    fn ports_and_paths_must_agree() {
        assert!(matches("127.0.0.1:5000", "127.0.0.1:5000/regcred/test:v1"));
        assert!(!matches("127.0.0.1:5000", "127.0.0.1:5001/regcred/test:v1"));
        assert!(!matches("127.0.0.1", "127.0.0.1:5000/x"), "a port in the image needs one in the pattern");
        assert!(matches("registry.io/team", "registry.io/team/app:v1"));
        assert!(matches("registry.io/team", "registry.io/team@sha256:00"));
        assert!(!matches("registry.io/team", "registry.io/teammate/app"));
        assert!(!matches("registry.io/team", "registry.io/other/app"));
    }

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("a*c", "abc") && glob("a*c", "ac") && !glob("a*c", "ab"));
        assert!(glob("*b*", "abc") && !glob("*x*", "abc"));
        assert!(!glob("ab*ba", "aba"), "prefix and suffix may not overlap");
    }

    #[test]
    fn files_are_checked() {
        let good = r#"
apiVersion: regcred.dev/v1alpha1
kind: ProviderConfig
secretsDir: /etc/regcred/secrets
providers:
  - match: ["*.dkr.ecr.*.amazonaws.com"]
    provider: {ecr: {region: eu-west-1}}
  - match: [ghcr.io]
    provider: {basic: {registry: ghcr.io, secretRef: {name: ghcr}}}
    refresh: {interval: 30m}
"#;
        let c = ProviderConfig::parse(good).unwrap();
        assert_eq!(c.entry_for("ghcr.io/org/app:1").unwrap().0, 1);
        assert_eq!(c.entry_for("1.dkr.ecr.x.amazonaws.com/a").unwrap().0, 0);
        assert!(c.entry_for("quay.io/a").is_none());
        for (bad, says) in [
            (good.replace("kind: ProviderConfig", "kind: Other"), "expected apiVersion"),
            (good.replace("[ghcr.io]", "[]"), "providers[1] has no match patterns"),
            (good.replace("[ghcr.io]", "[\"ghcr.io:x\"]"), "port is not a number"),
            (
                good.replace("{region: eu-west-1}", "{region: eu-west-1, regoin: x}"),
                "unknown field providers[0].provider.ecr.regoin",
            ),
            (good.replace("secretsDir", "secretDir"), "unknown field"),
            (
                good.replace("{region: eu-west-1}", "{}"),
                "providers[0].provider.ecr: set exactly one of region or regions",
            ),
            (
                good.replace("{region: eu-west-1}", "{region: eu-west-1, regions: [us-west-2]}"),
                "set exactly one of region or regions",
            ),
        ] {
            let e = ProviderConfig::parse(&bad).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
