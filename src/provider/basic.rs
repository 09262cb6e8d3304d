//! The `basic` provider: a static login for any registry, from a Secret with
//! `username` + `password` (or `token`), or from an existing
//! `kubernetes.io/dockerconfigjson` Secret.

use async_trait::async_trait;
use secrecy::ExposeSecret;

use super::{CredentialProvider, Minted, ProviderError, SourceError, Sources, raw_value, source_value};
use crate::api::BasicProvider;
use crate::hygiene::{self, Kind};
use crate::render::{RegistryAuth, find_in_dockerconfigjson};

const DOCKERCONFIGJSON_KEY: &str = ".dockerconfigjson";

pub struct Basic {
    spec: BasicProvider,
}

impl Basic {
    pub fn new(spec: BasicProvider) -> Self {
        Basic { spec }
    }
}

#[async_trait]
impl CredentialProvider for Basic {
    async fn mint(&self, sources: &Sources) -> Result<Minted, ProviderError> {
        Ok(self.login(sources).await?)
    }
}

impl Basic {
    /// The login from the source Secret.
    async fn login(&self, sources: &Sources) -> Result<Minted, SourceError> {
        let secret = sources.secret(&self.spec.secret_ref).await?;
        let name = format!("{}/{}", sources.namespace(), self.spec.secret_ref.name);
        let invalid = |detail: String| SourceError::Invalid { secret: name.clone(), detail };
        let registry = &self.spec.registry;

        let auth = if raw_value(&secret, DOCKERCONFIGJSON_KEY).is_some() {
            let config = source_value(&secret, &name, DOCKERCONFIGJSON_KEY, Kind::Document)?.unwrap_or_default();
            let found = find_in_dockerconfigjson(config.as_bytes(), registry)
                .map_err(|e| invalid(format!("key {DOCKERCONFIGJSON_KEY} {e}")))?;
            // The entry's values obey the same rules as separate keys.
            let check = |what: &str, value: &str, kind| {
                hygiene::clean(value.as_bytes(), kind).map_err(|problem| {
                    invalid(format!(
                        "key {DOCKERCONFIGJSON_KEY}: the {what} of the entry for registry {registry} {problem}"
                    ))
                })
            };
            let username = check("username", &found.username, Kind::Username)?;
            let password = check("password", found.password.expose_secret(), Kind::Secret)?;
            RegistryAuth { registry: registry.clone(), username, password: password.into() }
        } else {
            let username = source_value(&secret, &name, "username", Kind::Username)?;
            let password = match source_value(&secret, &name, "password", Kind::Secret)? {
                Some(p) => Some(p),
                None => source_value(&secret, &name, "token", Kind::Secret)?,
            };
            match (username, password) {
                (Some(username), Some(password)) => {
                    RegistryAuth { registry: registry.clone(), username, password: password.into() }
                }
                (None, _) => {
                    return Err(invalid(format!(
                        "has no key username (expected username and password or token, or {DOCKERCONFIGJSON_KEY})"
                    )));
                }
                (Some(_), None) => return Err(invalid("has no key password or token".into())),
            }
        };
        Ok(Minted { auths: vec![auth], ..Default::default() })
    }
}
