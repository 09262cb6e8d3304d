//! Minted credentials kept on disk until their refresh point, so that a run
//! of `docker pull`s (or kubelet pulls) mints once.
//!
//! One file per key (a SHA-256 of the provider entry and the identity),
//! written with mode 0600 in a directory of mode 0700, replaced atomically.
//! A file that does not parse is ignored and rewritten. Provider state (for
//! example Harbor's robot ids) outlives the credential in the same file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::provider::Minted;
use crate::render::RegistryAuth;

/// What a cache file holds.
#[derive(Deserialize, Serialize)]
struct Record {
    /// Registry, username, password.
    auths: Vec<(String, String, String)>,
    expires_at: Option<Timestamp>,
    refresh_at: Timestamp,
    #[serde(default)]
    state: Option<serde_json::Value>,
}

/// A cached credential.
pub struct Cached {
    pub minted: Minted,
    pub refresh_at: Timestamp,
}

/// A directory of cache files.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The entry for `key`, whether or not it is still fresh; `None` when
    /// missing or unreadable.
    pub fn get(&self, key: &str) -> Option<Cached> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        let r: Record = serde_json::from_slice(&bytes).ok()?;
        let auths = r
            .auths
            .into_iter()
            .map(|(registry, username, password)| RegistryAuth { registry, username, password: password.into() })
            .collect();
        Some(Cached { minted: Minted { auths, expires_at: r.expires_at, state: r.state }, refresh_at: r.refresh_at })
    }

    /// Stores `minted` until `refresh_at`, with mode 0600.
    pub fn put(&self, key: &str, minted: &Minted, refresh_at: Timestamp) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let record = Record {
            auths: minted
                .auths
                .iter()
                .map(|a| (a.registry.clone(), a.username.clone(), a.password.expose_secret().to_string()))
                .collect(),
            expires_at: minted.expires_at,
            refresh_at,
            state: minted.state.clone(),
        };
        let body = SecretString::from(serde_json::to_string(&record).map_err(std::io::Error::other)?);
        let tmp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(body.expose_secret().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.path(key))
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_mode_and_corruption() {
        let dir = std::env::temp_dir().join(format!("regcred-cache-test-{}", std::process::id()));
        let cache = Cache::new(&dir);
        assert!(cache.get("k").is_none());
        let minted = Minted {
            auths: vec![RegistryAuth {
                registry: "r.io".into(),
                username: "u".into(),
                password: "p".to_string().into(),
            }],
            expires_at: Some(Timestamp::from_second(2_000_000_000).unwrap()),
            state: Some(serde_json::json!({"robot": 1})),
        };
        let at = Timestamp::from_second(1_900_000_000).unwrap();
        cache.put("k", &minted, at).unwrap();
        let mode = std::fs::metadata(dir.join("k.json")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let got = cache.get("k").unwrap();
        assert_eq!(got.refresh_at, at);
        assert_eq!(got.minted.auths[0].password.expose_secret(), "p");
        assert_eq!(got.minted.state, minted.state);
        std::fs::write(dir.join("k.json"), b"{not json").unwrap();
        assert!(cache.get("k").is_none(), "a corrupted file is ignored");
        cache.put("k", &minted, at).unwrap();
        assert!(cache.get("k").is_some(), "and rewritten");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
