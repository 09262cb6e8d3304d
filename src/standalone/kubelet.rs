//! `regcred kubelet-credential-provider --config FILE`: the kubelet's image
//! credential provider plugin.
//!
//! The kubelet runs the executable named after the provider in its
//! `CredentialProviderConfig` for an image that matches `matchImages`, with
//! a `CredentialProviderRequest` on stdin, and reads a
//! `CredentialProviderResponse` from stdout:
//!
//! ```json
//! {"apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderResponse",
//!  "cacheKeyType": "Registry", "cacheDuration": "28800s",
//!  "auth": {"123456789012.dkr.ecr.eu-west-1.amazonaws.com": {"username": "AWS", "password": "..."}}}
//! ```
//!
//! The one `auth` key is the image's registry host, with a login valid
//! there ([`super::scope`]): an ECR image is minted for in its own region,
//! a Google token serves any host the pattern matched; a host the provider
//! does not cover (an account outside `registryIds`, a region outside
//! `regions`, another ACR or Harbor) is refused in one line.
//!
//! `cacheDuration` runs until the refresh point regcred's schedule picks
//! (2/3 of the credential's lifetime, or `refresh`). With the kubelet's
//! `tokenAttributes` (KEP-4412) the request carries the Pod's
//! ServiceAccount token and the annotations the kubelet was told to pass;
//! every `serviceAccountRef` of the provider then means that ServiceAccount.
//! A failure exits non-zero with one line on stderr; no token ever reaches
//! stderr, and stdout holds nothing but the response.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::cache::Cache;
use super::config::{Entry, ProviderConfig};
use super::{Identity, hostname, login, scope};
use crate::provider::ServiceAccountToken;

/// The request, as the kubelet sends it (any of v1, v1beta1, v1alpha1).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    api_version: String,
    kind: String,
    image: String,
    #[serde(default)]
    service_account_token: Option<String>,
    #[serde(default)]
    service_account_annotations: BTreeMap<String, String>,
}

/// Reads the request from `input`, answers on stdout. Errors are one line,
/// for the kubelet's log and the Pod's Events.
pub async fn run(config_path: &Path, input: &mut impl Read) -> Result<String, String> {
    let mut raw = Vec::new();
    input.take(1 << 20).read_to_end(&mut raw).map_err(|e| format!("reading the request from stdin: {e}"))?;
    let request: Request = serde_json::from_slice(&raw).map_err(|e| {
        // serde's message may quote the input, which holds the token.
        format!("the request on stdin is not a CredentialProviderRequest (line {}, column {})", e.line(), e.column())
    })?;
    if request.kind != "CredentialProviderRequest"
        || !request.api_version.starts_with("credentialprovider.kubelet.k8s.io/")
    {
        return Err(format!(
            "expected a credentialprovider.kubelet.k8s.io CredentialProviderRequest, got {} {}",
            request.api_version, request.kind
        ));
    }
    let token: Option<SecretString> = request.service_account_token.filter(|t| !t.is_empty()).map(Into::into);
    let config = ProviderConfig::load(config_path)?;
    let (index, entry) = config
        .entry_for(&request.image)
        .ok_or_else(|| format!("no provider in {} matches image {}", config_path.display(), request.image))?;
    let pod = token.map(|token| ServiceAccountToken { token, annotations: request.service_account_annotations });
    if entry.provider.uses_service_account() && pod.is_none() {
        return Err(format!(
            "the {} provider for {} uses serviceAccountRef, which needs the Pod's ServiceAccount token: set \
             tokenAttributes in the kubelet's CredentialProviderConfig",
            entry.provider.name(),
            request.image
        ));
    }
    let host = scope::image_host(&request.image);
    let failed = |message: String| format!("{} provider for {}: {message}", entry.provider.name(), request.image);
    let entry = Entry { provider: scope::narrow(&entry.provider, host).map_err(failed)?, ..entry.clone() };
    let cache = config.cache_dir.as_ref().map(Cache::new);
    let owner = format!("node/{}", hostname());
    let login = login(&config, index, &entry, Identity { pod, owner }, cache.as_ref())
        .await
        .map_err(|e| failed(format!("{}: {}", e.reason, e.message)))?;
    let auth = scope::login_for(&entry.provider, host, &login.minted.auths).map_err(failed)?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let seconds = login.refresh_at.duration_since(now).as_secs().max(0);
    // Keyed by the image's own registry: the kubelet uses only the keys
    // that match the image.
    let auth = json!({host: {"username": auth.username, "password": auth.password.expose_secret()}});
    let response = json!({
        "apiVersion": request.api_version,
        "kind": "CredentialProviderResponse",
        "cacheKeyType": "Registry",
        "cacheDuration": format!("{seconds}s"),
        "auth": auth,
    });
    Ok(response.to_string())
}
