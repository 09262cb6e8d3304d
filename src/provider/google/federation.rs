//! Workload identity federation from a Kubernetes ServiceAccount: a
//! TokenRequest token exchanged at Google STS.

use super::client::{AccessToken, DEFAULT_STS_URL, sts_exchange};
use secrecy::ExposeSecret;

use super::error::{GoogleError, federation_hint};
use super::{GSA_ANNOTATION, Identity};
use crate::api::GoogleFederation;
use crate::provider::{Sources, token_subject};

const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Workload identity federation from a Kubernetes ServiceAccount.
pub(super) async fn federate(
    sources: &Sources,
    federation: &GoogleFederation,
    http: &reqwest::Client,
) -> Result<(AccessToken, Identity), GoogleError> {
    let audience = federation.token_audience.clone().unwrap_or_else(|| default_token_audience(&federation.audience));
    let sa = sources.service_account_token(&federation.name, federation.namespace.as_deref(), &audience).await?;
    let token_url = federation.token_url.as_deref().unwrap_or(DEFAULT_STS_URL);
    let token = sts_exchange(http, token_url, &federation.audience, JWT_TOKEN_TYPE, &sa.token).await.map_err(|e| {
        let hint = match &e {
            GoogleError::Status { detail, .. } => federation_hint(detail),
            _ => return e,
        };
        // Google does not say whose token it refused; name it and the
        // provider whose rules refused it.
        GoogleError::Federation {
            subject: token_subject(sa.token.expose_secret())
                .unwrap_or_else(|| format!("of ServiceAccount {}", federation.name)),
            token_audience: audience.clone(),
            provider: federation.audience.clone(),
            hint,
            source: Box::new(e),
        }
    })?;
    let annotated_target = sa.annotations.get(GSA_ANNOTATION).cloned().filter(|s| !s.is_empty());
    Ok((token, Identity { kind: "workloadIdentityFederation", annotated_target, ..Default::default() }))
}

/// The audience of the Kubernetes token when `tokenAudience` is unset: the
/// default allowed audience of a workload identity pool provider, which is
/// its resource name as an `https:` URL.
fn default_token_audience(pool_provider: &str) -> String {
    if pool_provider.starts_with("//") { format!("https:{pool_provider}") } else { pool_provider.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federation_token_audience_defaults_to_the_pool_provider_url() {
        let pool = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s";
        assert_eq!(default_token_audience(pool), format!("https:{pool}"));
        assert_eq!(default_token_audience("my-audience"), "my-audience");
    }
}
