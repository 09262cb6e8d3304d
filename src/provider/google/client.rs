//! The HTTP exchanges of the `google` provider (the OAuth2 token endpoint,
//! Google STS, the metadata server and IAM Credentials) on the shared
//! client, and the parsing of their answers.

use std::fmt;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::SCOPE;
use super::error::{GoogleError, error_detail};
use crate::http::{BodyError, read_body, response_retry_after};

/// Google STS, the default `token_url`.
pub(super) const DEFAULT_STS_URL: &str = "https://sts.googleapis.com/v1/token";
const DEFAULT_IAM_CREDENTIALS: &str = "https://iamcredentials.googleapis.com";
const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// An access token and its expiry.
pub(super) struct AccessToken {
    pub(super) token: SecretString,
    pub(super) expires_at: Timestamp,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken").field("token", &"<redacted>").field("expires_at", &self.expires_at).finish()
    }
}

/// Google STS token exchange (RFC 8693).
pub(super) async fn sts_exchange(
    http: &reqwest::Client,
    token_url: &str,
    audience: &str,
    subject_token_type: &str,
    subject_token: &SecretString,
) -> Result<AccessToken, GoogleError> {
    let body = form(&[
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("audience", audience),
        ("scope", SCOPE),
        ("requested_token_type", ACCESS_TOKEN_TYPE),
        ("subject_token_type", subject_token_type),
        ("subject_token", subject_token.expose_secret()),
    ]);
    let call = Call { what: "STS token exchange", url: token_url };
    let request = http.post(token_url).header(CONTENT_TYPE, FORM).body(body);
    let response = call.send(request, &[subject_token.expose_secret()]).await?;
    call.oauth_token(&response)
}

/// The metadata server's token for the default service account (GKE
/// workload identity, or the node's service account).
pub(super) async fn metadata_token(
    http: &reqwest::Client,
    host_override: Option<&str>,
) -> Result<AccessToken, GoogleError> {
    let url = metadata_token_url(host_override);
    let call = Call { what: "metadata server token request", url: &url };
    let request = http.get(&url).header("Metadata-Flavor", "Google");
    let response = call.send(request, &[]).await?;
    call.oauth_token(&response)
}

fn metadata_token_url(host_override: Option<&str>) -> String {
    let host = host_override.map(str::trim).filter(|h| !h.is_empty()).unwrap_or(DEFAULT_METADATA_HOST);
    let base = if host.contains("://") { host.trim_end_matches('/').to_string() } else { format!("http://{host}") };
    format!("{base}{METADATA_TOKEN_PATH}")
}

/// `generateAccessToken` of the IAM Service Account Credentials API for
/// `email`, at `endpoint` (default `https://iamcredentials.googleapis.com`).
pub(super) fn impersonation_url(endpoint: Option<&str>, email: &str) -> Result<String, GoogleError> {
    let valid = email.contains('@')
        && email.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '-' | '_' | '+'));
    if !valid {
        return Err(GoogleError::InvalidSpec(format!(
            "the service account to impersonate ({email:?}) is not a service account email"
        )));
    }
    let endpoint = endpoint.unwrap_or(DEFAULT_IAM_CREDENTIALS).trim_end_matches('/');
    Ok(format!("{endpoint}/v1/projects/-/serviceAccounts/{email}:generateAccessToken"))
}

/// The service account email in a `generateAccessToken` URL.
pub(super) fn email_in_impersonation_url(url: &str) -> Option<String> {
    let rest = url.split("/serviceAccounts/").nth(1)?;
    Some(rest.trim_end_matches(":generateAccessToken").to_string()).filter(|e| e.contains('@'))
}

/// IAM Credentials `generateAccessToken` at `url` with `base` as the caller.
pub(super) async fn generate_access_token(
    http: &reqwest::Client,
    url: &str,
    base: &AccessToken,
    lifetime_secs: u64,
) -> Result<AccessToken, GoogleError> {
    let body = json!({"scope": [SCOPE], "lifetime": format!("{lifetime_secs}s")}).to_string();
    let call = Call { what: "IAM generateAccessToken", url };
    let request = http
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, format!("Bearer {}", base.token.expose_secret()))
        .body(body);
    let response = call.send(request, &[base.token.expose_secret()]).await?;
    call.iam_token(&response)
}

/// The content type of form bodies.
pub(super) const FORM: &str = "application/x-www-form-urlencoded";

/// `pairs` as an `application/x-www-form-urlencoded` body.
pub(super) fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// One HTTP exchange, for precise error messages: the call, its URL and
/// the HTTP status, never a token.
pub(super) struct Call<'a> {
    pub(super) what: &'static str,
    pub(super) url: &'a str,
}

impl Call<'_> {
    fn url(&self) -> String {
        display_url(self.url)
    }

    fn invalid(&self, problem: &'static str) -> GoogleError {
        GoogleError::InvalidAnswer { what: self.what, url: self.url(), problem }
    }

    /// Sends the request; a non-2xx answer becomes an error whose reason
    /// follows the status. `sent` are the secrets in the request: an error
    /// description that echoes one is dropped.
    pub(super) async fn send(&self, request: reqwest::RequestBuilder, sent: &[&str]) -> Result<Vec<u8>, GoogleError> {
        let mut response = request.send().await.map_err(|e| GoogleError::Unreachable {
            what: self.what,
            url: self.url(),
            source: e.without_url(),
        })?;
        let status = response.status();
        let retry_after = response_retry_after(&response);
        let body = read_body(&mut response).await.map_err(|e| match e {
            BodyError::Read(source) => GoogleError::ReadAnswer { what: self.what, url: self.url(), source },
            BodyError::TooLarge => GoogleError::TooLarge { what: self.what, url: self.url() },
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let (code, description) = error_detail(&body, sent);
        let mut detail = format!("HTTP {status}");
        for part in [code.as_deref(), description.as_deref()].into_iter().flatten() {
            detail.push_str(": ");
            detail.push_str(part);
        }
        Err(GoogleError::Status {
            what: self.what,
            url: self.url(),
            status: status.as_u16(),
            code,
            detail,
            retry_after,
        })
    }

    /// `{"access_token", "expires_in"}` (OAuth2 token endpoint, STS and the
    /// metadata server).
    pub(super) fn oauth_token(&self, body: &[u8]) -> Result<AccessToken, GoogleError> {
        let invalid = |problem| self.invalid(problem);
        let json: Value = serde_json::from_slice(body).map_err(|_| invalid("the answer is not JSON"))?;
        let token = json
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid("the answer has no access_token"))?;
        let expires_in = match json.get("expires_in") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|secs| *secs > 0)
        .ok_or_else(|| invalid("the answer has no positive expires_in"))?;
        let expires_at = Timestamp::now()
            .checked_add(SignedDuration::from_secs(expires_in))
            .map_err(|_| invalid("the answer's expires_in is out of range"))?;
        Ok(AccessToken { token: token.to_string().into(), expires_at })
    }

    /// `{"accessToken", "expireTime"}` (IAM Credentials).
    pub(super) fn iam_token(&self, body: &[u8]) -> Result<AccessToken, GoogleError> {
        let invalid = |problem| self.invalid(problem);
        let json: Value = serde_json::from_slice(body).map_err(|_| invalid("the answer is not JSON"))?;
        let token = json
            .get("accessToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid("the answer has no accessToken"))?;
        let expires_at = json
            .get("expireTime")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .ok_or_else(|| invalid("the answer has no RFC 3339 expireTime"))?;
        Ok(AccessToken { token: token.to_string().into(), expires_at })
    }
}

/// A URL without user info, for messages.
fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => "(invalid URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ProviderError;
    use crate::reasons;

    #[test]
    fn oauth_token_answers_are_parsed_with_their_expiry() {
        let call = Call { what: "token request", url: "http://127.0.0.1:1/token" };
        let before = Timestamp::now();
        let t =
            call.oauth_token(br#"{"access_token":"ya29.abcdefgh","expires_in":3599,"token_type":"Bearer"}"#).unwrap();
        assert_eq!(t.token.expose_secret(), "ya29.abcdefgh");
        let lifetime = t.expires_at.duration_since(before).as_secs();
        assert!((3598..=3600).contains(&lifetime), "{lifetime}");
        let t = call.oauth_token(br#"{"access_token":"ya29.abcdefgh","expires_in":"60"}"#).unwrap();
        assert!(t.expires_at.duration_since(before).as_secs() <= 61);

        for (body, want) in [
            (&b"<html>oops</html>"[..], "not JSON"),
            (br#"{"expires_in":60}"#, "no access_token"),
            (br#"{"access_token":"ya29.abcdefgh"}"#, "no positive expires_in"),
            (br#"{"access_token":"ya29.abcdefgh","expires_in":0}"#, "no positive expires_in"),
        ] {
            let e = ProviderError::from(call.oauth_token(body).unwrap_err());
            assert_eq!(e.reason, reasons::PROVIDER_RESPONSE_INVALID);
            assert!(e.message.contains(want) && e.message.contains("http://127.0.0.1:1/token"), "{e}");
            assert!(!e.message.contains("ya29"), "{e}");
        }
    }

    #[test]
    fn iam_answers_are_parsed_with_their_expiry() {
        let call = Call { what: "IAM generateAccessToken", url: "https://iamcredentials.googleapis.com/x" };
        let t = call
            .iam_token(br#"{"accessToken":"ya29.impersonated","expireTime":"2030-01-02T03:04:05.123456Z"}"#)
            .unwrap();
        assert_eq!(t.token.expose_secret(), "ya29.impersonated");
        assert_eq!(t.expires_at.as_second(), "2030-01-02T03:04:05Z".parse::<Timestamp>().unwrap().as_second());
        let e = ProviderError::from(
            call.iam_token(br#"{"accessToken":"ya29.impersonated","expireTime":"soon"}"#).unwrap_err(),
        );
        assert_eq!(e.reason, reasons::PROVIDER_RESPONSE_INVALID);
        assert!(!e.message.contains("ya29"), "{e}");
    }

    #[test]
    fn urls_in_messages_lose_their_user_info() {
        assert_eq!(
            display_url("https://user:pw-12345678@sts.example.com/v1/token"),
            "https://sts.example.com/v1/token"
        );
        assert_eq!(display_url("not a url"), "(invalid URL)");
    }

    #[test]
    fn metadata_host_follows_gce_metadata_host() {
        let path = METADATA_TOKEN_PATH;
        assert_eq!(metadata_token_url(None), format!("http://metadata.google.internal{path}"));
        assert_eq!(metadata_token_url(Some("")), format!("http://metadata.google.internal{path}"));
        assert_eq!(metadata_token_url(Some("127.0.0.1:8080")), format!("http://127.0.0.1:8080{path}"));
        assert_eq!(metadata_token_url(Some("http://169.254.169.254/")), format!("http://169.254.169.254{path}"));
    }

    #[test]
    fn impersonation_urls() {
        assert_eq!(
            impersonation_url(None, "puller@proj.iam.gserviceaccount.com").unwrap(),
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/puller@proj.iam.gserviceaccount.com:generateAccessToken"
        );
        assert_eq!(
            impersonation_url(Some("http://127.0.0.1:9/"), "a@b.c").unwrap(),
            "http://127.0.0.1:9/v1/projects/-/serviceAccounts/a@b.c:generateAccessToken"
        );
        let e = ProviderError::from(impersonation_url(None, "a@b.c/../../x").unwrap_err());
        assert_eq!(e.reason, reasons::INVALID_SPEC);
        assert_eq!(
            email_in_impersonation_url(
                "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/x@p.iam.gserviceaccount.com:generateAccessToken"
            )
            .as_deref(),
            Some("x@p.iam.gserviceaccount.com")
        );
    }

    #[test]
    fn debug_output_is_redacted() {
        let token = AccessToken { token: "ya29.very-secret-token".to_string().into(), expires_at: Timestamp::now() };
        assert!(!format!("{token:?}").contains("very-secret"));
        let assertion = SecretString::from("eyJ.assertion.value");
        assert!(!format!("{assertion:?}").contains("assertion.value"));
    }
}
