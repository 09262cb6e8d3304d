//! `docker-credential-regcred`: a credential helper for Docker, Podman,
//! Buildah and skopeo (the same binary under that name, or
//! `regcred credential-helper`).
//!
//! Selected per registry through `credHelpers` in `~/.docker/config.json`
//! or a containers `auth.json` (`{"credHelpers": {"HOST": "regcred"}}`).
//! The tools run it with one verb:
//! - `get`: the registry on stdin (`HOST` or `https://HOST`); prints
//!   `{"ServerURL", "Username", "Secret"}` from the first provider whose
//!   pattern matches, minted or served from the on-disk cache (mode 0600)
//!   until its refresh point, so a run of pulls mints once. A registry no
//!   provider matches gets Docker's "credentials not found in native
//!   keychain", which the tools take as "pull anonymously".
//! - `list`: the configured patterns (with empty user names: those come
//!   from the providers at `get`).
//! - `store` and `erase`: refused, as read-only helpers
//!   (docker-credential-ecr-login, -gcr) do: logins come from the providers.
//!
//! Configuration: `$REGCRED_CREDENTIAL_HELPER_CONFIG`, else
//! `$XDG_CONFIG_HOME/regcred/credential-helper.yaml` (default
//! `~/.config/...`). Cache: the file's `cacheDir`, else
//! `$XDG_CACHE_HOME/regcred/credential-helper` (default `~/.cache/...`).

use std::io::Read;
use std::path::PathBuf;

use secrecy::ExposeSecret;
use serde_json::json;

use super::cache::Cache;
use super::config::{Entry, ProviderConfig};
use super::{Identity, hostname, login, scope};

/// What Docker's credential helpers answer for an unknown registry.
pub const NOT_FOUND: &str = "credentials not found in native keychain";

/// The configuration file the helper reads.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("REGCRED_CREDENTIAL_HELPER_CONFIG").filter(|p| !p.is_empty()) {
        return p.into();
    }
    base_dir("XDG_CONFIG_HOME", ".config").join("regcred/credential-helper.yaml")
}

fn default_cache_dir() -> PathBuf {
    base_dir("XDG_CACHE_HOME", ".cache").join("regcred/credential-helper")
}

fn base_dir(var: &str, home_relative: &str) -> PathBuf {
    match std::env::var_os(var).filter(|p| !p.is_empty()) {
        Some(p) => p.into(),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into())).join(home_relative),
    }
}

/// Runs one verb with `input` as stdin. `Ok` is printed on stdout with exit
/// 0; `Err` is printed on stdout (where the tools read a helper's error)
/// with exit 1.
pub async fn run(verb: &str, input: &mut impl Read) -> Result<String, String> {
    let mut raw = String::new();
    input.take(64 * 1024).read_to_string(&mut raw).map_err(|e| format!("reading stdin: {e}"))?;
    match verb {
        "get" => get(raw.trim()).await,
        "list" => list(),
        "store" | "erase" => Err(format!(
            "regcred: {verb} is not supported: logins for these registries are minted by the providers in {}",
            config_path().display()
        )),
        other => Err(format!("regcred: unknown credential helper verb {other:?} (expected get, list, store or erase)")),
    }
}

async fn get(server_url: &str) -> Result<String, String> {
    let path = config_path();
    let config = ProviderConfig::load(&path).map_err(|e| format!("regcred: {e}"))?;
    let host = scope::image_host(server_url);
    let Some((index, entry)) = config.entry_for(host) else {
        return Err(NOT_FOUND.into());
    };
    let failed = |message: String| format!("regcred: {} provider for {host}: {message}", entry.provider.name());
    let entry = Entry { provider: scope::narrow(&entry.provider, host).map_err(failed)?, ..entry.clone() };
    let cache = Cache::new(config.cache_dir.clone().unwrap_or_else(default_cache_dir));
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let identity = Identity { pod: None, owner: format!("user/{user}@{}", hostname()) };
    let login = login(&config, index, &entry, identity, Some(&cache))
        .await
        .map_err(|e| failed(format!("{}: {}", e.reason, e.message)))?;
    let auth = scope::login_for(&entry.provider, host, &login.minted.auths).map_err(failed)?;
    Ok(json!({"ServerURL": server_url, "Username": auth.username, "Secret": auth.password.expose_secret()}).to_string())
}

fn list() -> Result<String, String> {
    let config = ProviderConfig::load(&config_path()).map_err(|e| format!("regcred: {e}"))?;
    let mut out = serde_json::Map::new();
    for entry in &config.providers {
        for p in &entry.patterns {
            out.insert(p.clone(), json!(""));
        }
    }
    Ok(serde_json::Value::Object(out).to_string())
}
