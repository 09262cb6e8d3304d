//! The `basic` provider: a static login for any registry, from a Secret with
//! `username` + `password` (or `token`), or from an existing
//! `kubernetes.io/dockerconfigjson` Secret.

use async_trait::async_trait;

use super::{CredentialProvider, Minted, ProviderError, Sources, secret_text};
use crate::api::BasicProvider;
use crate::reasons;
use crate::render::{RegistryAuth, find_in_dockerconfigjson};

const DOCKERCONFIGJSON_KEY: &str = ".dockerconfigjson";

/// Largest username + password accepted: the rendered Secret holds the
/// password twice (once base64-encoded), and a Secret is at most 1 MiB.
const MAX_LOGIN_BYTES: usize = 256 * 1024;

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
        let secret = sources.secret(&self.spec.secret_ref).await?;
        let name = format!("{}/{}", sources.namespace(), self.spec.secret_ref.name);
        let invalid =
            |detail: String| ProviderError::new(reasons::SOURCE_SECRET_INVALID, format!("Secret {name} {detail}"));
        let registry = &self.spec.registry;

        let auth = if let Some(config) = secret.data.as_ref().and_then(|d| d.get(DOCKERCONFIGJSON_KEY)) {
            find_in_dockerconfigjson(&config.0, registry)
                .map_err(|e| invalid(format!("key {DOCKERCONFIGJSON_KEY} {e}")))?
        } else {
            let username = secret_text(&secret, "username");
            let password = secret_text(&secret, "password").or_else(|| secret_text(&secret, "token"));
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
        let size = auth.username.len() + secrecy::ExposeSecret::expose_secret(&auth.password).len();
        if size > MAX_LOGIN_BYTES {
            return Err(invalid(format!(
                "holds a login of {size} bytes; at most {MAX_LOGIN_BYTES} bytes fit in a pull Secret"
            )));
        }
        Ok(Minted { auths: vec![auth], ..Default::default() })
    }
}
