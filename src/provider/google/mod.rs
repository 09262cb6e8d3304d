//! The `google` provider: Google Artifact Registry and Container Registry.
//!
//! Once per refresh it gets one OAuth2 access token and writes one login per
//! host in `registries`, with the user name `oauth2accesstoken` (what
//! `gcloud auth configure-docker` and docker-credential-gcr use). The expiry
//! is the one the token endpoint answers with.
//!
//! Identities:
//! - `auth.secretRef`: a Secret whose `credentials.json` is
//!   - a service-account key: the OAuth2 JWT-bearer grant (RFC 7523) at the
//!     key's `token_uri`, which answers with a real access token (never a
//!     self-signed JWT, which the registries' docker login is not documented
//!     to accept);
//!   - an `external_account` configuration (workload identity federation):
//!     its subject token, exchanged at its `token_url` (Google STS), then
//!     its `service_account_impersonation_url` if set. File and URL subject
//!     token sources read the operator's own environment, so they count as
//!     ambient identity;
//! - `auth.serviceAccountRef`: workload identity federation from a
//!   Kubernetes ServiceAccount: a TokenRequest token exchanged at Google STS;
//! - `auth.ambient` (or no `auth`): the metadata server (GKE workload
//!   identity), at `$GCE_METADATA_HOST` when set, as Google's libraries do;
//! - `impersonate.serviceAccount` on top of any of these: IAM Credentials
//!   `generateAccessToken` with the base token.
//!
//! Why no library: `google-cloud-auth` (Google's crate) turns a
//! service-account key into a self-signed JWT and never calls `token_uri`,
//! does not expose a token's expiry (`AccessToken` is the string only), and
//! its impersonation endpoint cannot be set for programmatic sources.
//! `gcp_auth` does the JWT-bearer grant, but covers nothing else here, drops
//! the HTTP status of a failure (every error is "token request failed"), and
//! brings its own HTTP client without timeouts. What is left are four
//! documented HTTP exchanges on the shared client ([`crate::http`]), with
//! RS256 signing by `ring`, the crypto provider rustls already uses here.
//!
//! The code is split by concern: [`client`] holds the HTTP exchanges and
//! the parsing of their answers, [`credentials`] the `credentials.json`
//! formats (service-account keys, `external_account` configurations),
//! [`federation`] workload identity federation from a ServiceAccount, and
//! [`error`] the error type and how answers map to reasons. This module
//! holds the provider and the minting.

mod client;
mod credentials;
mod error;
mod federation;

use async_trait::async_trait;
use serde_json::json;

use self::client::{
    Call, email_in_impersonation_url, generate_access_token, impersonation_url, metadata_token, sts_exchange,
};
use self::credentials::Credentials;
pub use self::error::GoogleError;
use self::federation::federate;
use super::{CredentialProvider, Minted, ProviderError, Sources, required_value};
use crate::api::GoogleProvider;
use crate::hygiene::Kind;
use crate::render::RegistryAuth;

/// The user name Google's registries expect with an access token.
pub const USERNAME: &str = "oauth2accesstoken";
/// The OAuth2 scope requested: Artifact Registry and GCR accept it.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The key of the source Secret holding the credential JSON.
pub const CREDENTIALS_KEY: &str = "credentials.json";
/// Google's documented override of the metadata server's `host[:port]`.
pub const METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";

/// Lifetime asked of `generateAccessToken` (Google's default maximum).
const IMPERSONATION_LIFETIME_SECS: u64 = 3600;

/// The `google` provider.
pub struct Google {
    spec: GoogleProvider,
}

impl Google {
    pub fn new(spec: GoogleProvider) -> Self {
        Google { spec }
    }
}

/// What minted the base token, for `status.providerState` (never secret).
#[derive(Default)]
struct Identity {
    kind: &'static str,
    service_account: Option<String>,
    /// A service account to impersonate that the identity itself names (an
    /// external_account's `service_account_impersonation_url`).
    impersonate: Option<Impersonation>,
    /// The federated ServiceAccount's `iam.gke.io/gcp-service-account`
    /// annotation, for `impersonate` without a `serviceAccount`.
    annotated_target: Option<String>,
}

/// The ServiceAccount annotation that names the Google service account a
/// Kubernetes ServiceAccount acts as (GKE workload identity's key).
pub const GSA_ANNOTATION: &str = "iam.gke.io/gcp-service-account";

/// An external_account's exact `service_account_impersonation_url`.
struct Impersonation {
    url: String,
    lifetime_secs: u64,
}

#[async_trait]
impl CredentialProvider for Google {
    async fn mint(&self, sources: &Sources) -> Result<Minted, ProviderError> {
        Ok(self.token(sources).await?)
    }
}

impl Google {
    /// The access token, for every registry of the spec.
    async fn token(&self, sources: &Sources) -> Result<Minted, GoogleError> {
        // A bad impersonation target fails before any call is made.
        if let Some(i) = &self.spec.impersonate
            && let Some(email) = &i.service_account
        {
            impersonation_url(i.endpoint.as_deref(), email)?;
        }
        let http = crate::http::client(None, crate::http::PROVIDER_TIMEOUT).map_err(GoogleError::Setup)?;
        let auth = self.spec.auth.clone().unwrap_or_default();
        let (base, identity) = if let Some(secret_ref) = &auth.secret_ref {
            let secret = sources.secret(secret_ref).await?;
            let name = format!("{}/{}", sources.namespace(), secret_ref.name);
            let text = required_value(
                &secret,
                &name,
                CREDENTIALS_KEY,
                Kind::Document,
                "a service-account key or an external_account configuration",
            )?;
            let credentials =
                Credentials::parse(&text).map_err(|detail| GoogleError::InvalidCredentials { secret: name, detail })?;
            match credentials {
                Credentials::ServiceAccount(key) => {
                    let token = key.access_token(&http).await?;
                    let identity = Identity {
                        kind: "serviceAccountKey",
                        service_account: Some(key.client_email.clone()),
                        ..Default::default()
                    };
                    (token, identity)
                }
                Credentials::ExternalAccount(config) => {
                    let subject = config.subject_token(sources, &http).await?;
                    let token =
                        sts_exchange(&http, &config.token_url, &config.audience, &config.subject_token_type, &subject)
                            .await?;
                    let impersonate = config.impersonation_url.map(|url| Impersonation {
                        url,
                        lifetime_secs: config.impersonation_lifetime_secs.unwrap_or(IMPERSONATION_LIFETIME_SECS),
                    });
                    (token, Identity { kind: "externalAccount", impersonate, ..Default::default() })
                }
            }
        } else if let Some(federation) = &auth.service_account_ref {
            federate(sources, federation, &http).await?
        } else {
            sources.check_ambient("provider.google without secretRef or serviceAccountRef (the metadata server)")?;
            let token = metadata_token(&http, std::env::var(METADATA_HOST_ENV).ok().as_deref()).await?;
            (token, Identity { kind: "metadataServer", ..Default::default() })
        };

        let mut state = json!({"identity": identity.kind});
        if let Some(sa) = &identity.service_account {
            state["serviceAccount"] = sa.clone().into();
        }
        // The spec's impersonation wins over one the identity names.
        let impersonation = match &self.spec.impersonate {
            Some(i) => {
                let email = i.service_account.clone().or(identity.annotated_target.clone()).ok_or_else(|| {
                    GoogleError::InvalidSpec(format!(
                        "impersonate has no serviceAccount, and the identity names none: set \
                         impersonate.serviceAccount, or the ServiceAccount's {GSA_ANNOTATION} annotation \
                         (with auth.serviceAccountRef)"
                    ))
                })?;
                let url = impersonation_url(i.endpoint.as_deref(), &email)?;
                Some((Some(email), url, IMPERSONATION_LIFETIME_SECS))
            }
            None => identity.impersonate.map(|i| (email_in_impersonation_url(&i.url), i.url, i.lifetime_secs)),
        };
        let token = match impersonation {
            None => base,
            Some((email, url, lifetime_secs)) => {
                if let Some(email) = email {
                    state["impersonated"] = email.into();
                }
                generate_access_token(&http, &url, &base, lifetime_secs).await?
            }
        };

        let auths = self
            .spec
            .registries
            .iter()
            .map(|registry| RegistryAuth {
                registry: registry.clone(),
                username: USERNAME.into(),
                password: token.token.clone(),
            })
            .collect();
        Ok(Minted { auths, expires_at: Some(token.expires_at), state: Some(state) })
    }
}

/// Fuzzing entry point (`fuzz/`): the credential file parser and the token
/// answer parsers on arbitrary input.
pub(super) fn fuzz_parse(data: &[u8]) {
    let _ = Credentials::parse(&String::from_utf8_lossy(data));
    let call = Call { what: "fuzz", url: "https://oauth2.googleapis.com/token" };
    let _ = call.oauth_token(data);
    let _ = call.iam_token(data);
}
