//! Rendering and parsing `kubernetes.io/dockerconfigjson` content.
//!
//! Pure functions: no I/O. The password of a [`RegistryAuth`] never appears in
//! its `Debug` output.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Docker Hub's key in a docker config, as `docker login` writes it.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// One registry login.
#[derive(Clone)]
pub struct RegistryAuth {
    /// Registry host with optional port, as written in the spec.
    pub registry: String,
    /// User name presented to the registry.
    pub username: String,
    /// Password or token.
    pub password: SecretString,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl PartialEq for RegistryAuth {
    fn eq(&self, other: &Self) -> bool {
        self.registry == other.registry
            && self.username == other.username
            && self.password.expose_secret() == other.password.expose_secret()
    }
}

/// The key a registry gets under `auths`. Docker Hub is spelled the way the
/// Docker CLI and the kubelet expect it.
pub fn config_key(registry: &str) -> String {
    match normalize_host(registry).as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_KEY.to_string(),
        host => host.to_string(),
    }
}

/// `https://Host:port/v1/` → `host:port`.
fn normalize_host(key: &str) -> String {
    let s = key.trim();
    let s = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    s.to_ascii_lowercase()
}

/// Whether a docker config key designates `registry`.
fn key_matches(key: &str, registry: &str) -> bool {
    config_key(&normalize_host(key)) == config_key(registry)
}

#[derive(Serialize, Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Serialize, Deserialize, Default)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
}

/// Renders a docker config with one entry per registry. Output is
/// deterministic, so equal inputs give equal bytes.
pub fn dockerconfigjson(auths: &[RegistryAuth]) -> Vec<u8> {
    let mut config = DockerConfig::default();
    for a in auths {
        let password = a.password.expose_secret();
        config.auths.insert(
            config_key(&a.registry),
            AuthEntry {
                username: Some(a.username.clone()),
                password: Some(password.to_string()),
                auth: Some(STANDARD.encode(format!("{}:{}", a.username, password))),
            },
        );
    }
    serde_json::to_vec(&config).expect("a docker config always serializes")
}

/// Why a docker config could not be used. Messages never contain secrets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON, or not shaped like a docker config.
    #[error("is not a valid docker config JSON: {0}")]
    Malformed(String),
    /// No `auths` object at all.
    #[error("has no auths object (a docker config holds {{\"auths\": {{\"REGISTRY\": {{\"auth\": ...}}}}}})")]
    NoAuths,
    /// No entry for the registry.
    #[error("has no entry for registry {0}")]
    NoEntry(String),
    /// The entry has neither username/password nor a decodable `auth`.
    #[error("entry for registry {0} {1}")]
    NoCredentials(String, &'static str),
}

/// The parsing side of [`DockerConfig`]: `auths` must be there.
#[derive(Deserialize)]
struct ParsedConfig {
    auths: Option<BTreeMap<String, AuthEntry>>,
}

/// Finds the login for `registry` in a docker config (`.dockerconfigjson`).
/// The values are returned as found; the caller checks them (see
/// [`crate::hygiene`]).
pub fn find_in_dockerconfigjson(bytes: &[u8], registry: &str) -> Result<RegistryAuth, ParseError> {
    let config: ParsedConfig = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's messages quote no input, only positions and types.
        ParseError::Malformed(format!("line {} column {}: {}", e.line(), e.column(), classify(&e)))
    })?;
    let auths = config.auths.ok_or(ParseError::NoAuths)?;
    let entry = auths
        .iter()
        .find(|(k, _)| key_matches(k, registry))
        .map(|(_, v)| v)
        .ok_or_else(|| ParseError::NoEntry(registry.to_string()))?;
    let no_credentials = |detail| ParseError::NoCredentials(registry.to_string(), detail);
    let (username, password) = match (&entry.username, &entry.password, &entry.auth) {
        (Some(u), Some(p), _) if !u.is_empty() && !p.is_empty() => (u.clone(), p.clone()),
        (_, _, Some(auth)) if !auth.trim().is_empty() => {
            let decoded = STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| no_credentials("has an auth that is not base64 of UTF-8 text"))?;
            match decoded.split_once(':') {
                Some((u, p)) if !u.is_empty() && !p.is_empty() => (u.to_string(), p.to_string()),
                _ => return Err(no_credentials("has an auth that is not base64 of username:password")),
            }
        }
        _ => return Err(no_credentials("has neither auth nor username and password")),
    };
    Ok(RegistryAuth { registry: registry.to_string(), username, password: password.into() })
}

fn classify(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "I/O error",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected structure",
        Category::Eof => "unexpected end of input",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(registry: &str, user: &str, pass: &str) -> RegistryAuth {
        RegistryAuth { registry: registry.into(), username: user.into(), password: pass.to_string().into() }
    }

    #[test]
    fn renders_one_entry_per_registry_with_auth_field() {
        let out = dockerconfigjson(&[auth("registry.example.com:5000", "bot", "s3cret")]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let e = &v["auths"]["registry.example.com:5000"];
        assert_eq!(e["username"], "bot");
        assert_eq!(e["password"], "s3cret");
        assert_eq!(e["auth"], STANDARD.encode("bot:s3cret"));
    }

    #[test]
    fn docker_hub_uses_the_cli_key() {
        let out = dockerconfigjson(&[auth("docker.io", "u", "p")]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["auths"][DOCKER_HUB_KEY].is_object());
    }

    #[test]
    fn rendering_is_deterministic() {
        let a = [auth("b.example", "u", "p"), auth("a.example", "u", "p")];
        let b = [auth("a.example", "u", "p"), auth("b.example", "u", "p")];
        assert_eq!(dockerconfigjson(&a), dockerconfigjson(&b));
    }

    #[test]
    fn finds_entries_by_host_in_any_spelling() {
        let cfg = br#"{"auths":{"https://Registry.Example.com/v2/":{"username":"u","password":"p"}}}"#;
        let a = find_in_dockerconfigjson(cfg, "registry.example.com").unwrap();
        assert_eq!(a, auth("registry.example.com", "u", "p"));
        let hub = format!(r#"{{"auths":{{"{DOCKER_HUB_KEY}":{{"auth":"{}"}}}}}}"#, STANDARD.encode("me:tok"));
        assert_eq!(find_in_dockerconfigjson(hub.as_bytes(), "docker.io").unwrap(), auth("docker.io", "me", "tok"));
    }

    #[test]
    fn parse_errors_are_precise_and_quote_no_secret() {
        assert!(matches!(find_in_dockerconfigjson(b"{not json", "r"), Err(ParseError::Malformed(_))));
        assert_eq!(
            find_in_dockerconfigjson(br#"{"auths":{"other":{"username":"u","password":"p"}}}"#, "r"),
            Err(ParseError::NoEntry("r".into()))
        );
        assert!(matches!(
            find_in_dockerconfigjson(br#"{"auths":{"r":{"auth":"!!notbase64"}}}"#, "r"),
            Err(ParseError::NoCredentials(r, _)) if r == "r"
        ));
        assert_eq!(find_in_dockerconfigjson(br#"{"credsStore":"desktop"}"#, "r"), Err(ParseError::NoAuths));
        assert_eq!(find_in_dockerconfigjson(br#"{"auths":null}"#, "r"), Err(ParseError::NoAuths));
        let e = find_in_dockerconfigjson(br#"{"auths":{"r":{"email":"a@b"}}}"#, "r").unwrap_err();
        assert_eq!(e.to_string(), "entry for registry r has neither auth nor username and password");
        let e = find_in_dockerconfigjson(br#"{"auths":{"r":{"auth":"aHVudGVyMg=="}}}"#, "r").unwrap_err();
        assert_eq!(e.to_string(), "entry for registry r has an auth that is not base64 of username:password");
        let e = find_in_dockerconfigjson(br#"{"auths":{"r":{"username":"hunter2"}}}"#, "r").unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
        let e = find_in_dockerconfigjson(br#"{"auths": "hunter2"}"#, "r").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn debug_output_is_redacted() {
        let s = format!("{:?}", auth("r", "u", "topsecret"));
        assert!(!s.contains("topsecret"));
        assert!(s.contains("<redacted>"));
    }
}
