//! Why a Google access token could not be minted, and which condition
//! reason an answer of Google's maps to.

use serde_json::Value;

use super::CREDENTIALS_KEY;
use crate::http::{MAX_BODY, cause_chain};
use crate::provider::{ProviderError, SourceError};
use crate::reasons;

/// Why a Google access token could not be minted. Messages name the call
/// and its URL (without user info) and the HTTP status, never a token, an
/// assertion or a key.
#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    /// The credentials Secret or the ServiceAccount token could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The HTTP client could not be set up.
    #[error("setting up HTTP: {0}")]
    Setup(#[source] crate::http::SetupError),
    /// `credentials.json` is not a usable credential (the detail names the
    /// field at fault, never a value).
    #[error("Secret {secret} key {CREDENTIALS_KEY} {detail}")]
    InvalidCredentials { secret: String, detail: String },
    /// The spec cannot be used.
    #[error("{0}")]
    InvalidSpec(String),
    /// Signing the JWT-bearer assertion failed.
    #[error("signing the service-account assertion failed")]
    Signing,
    /// An external_account's subject token file could not be read.
    #[error("reading the external_account subject token file {path}: {}", .source.kind())]
    SubjectTokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An external_account's subject token is not what its format says.
    #[error("the external_account subject token is not JSON with a string field \"{0}\"")]
    SubjectTokenField(String),
    /// An external_account's subject token is empty.
    #[error("the external_account subject token is empty")]
    EmptySubjectToken,
    /// A call got no answer.
    #[error("{what} to {url}: {}", cause_chain(.source))]
    Unreachable {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The answer could not be read to its end.
    #[error("{what} to {url}: reading the answer: {}", cause_chain(.source))]
    ReadAnswer {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// An answer too large to be a token answer.
    #[error("{what} to {url}: the answer is larger than {} KiB", MAX_BODY / 1024)]
    TooLarge { what: &'static str, url: String },
    /// A call answered with an error status (`detail`: the status, and the
    /// OAuth2 error code and description when there are).
    #[error("{what} to {url}: {detail}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
        code: Option<String>,
        detail: String,
        /// The answer's `Retry-After`, for the pacing.
        retry_after: Option<std::time::Duration>,
    },
    /// A successful answer without a usable token.
    #[error("{what} to {url}: {problem}")]
    InvalidAnswer { what: &'static str, url: String, problem: &'static str },
    /// Google STS refused a ServiceAccount's token: `subject` is the token's
    /// `sub`, `provider` the pool provider, `hint` empty or what to change
    /// (starting with "; ").
    #[error("{source} (ServiceAccount token {subject}, audience {token_audience}, pool provider {provider}{hint})")]
    Federation {
        subject: String,
        token_audience: String,
        provider: String,
        hint: &'static str,
        #[source]
        source: Box<GoogleError>,
    },
}

impl GoogleError {
    /// The condition reason ([`crate::reasons`]).
    pub fn reason(&self) -> &'static str {
        match self {
            GoogleError::Source(e) => e.reason(),
            GoogleError::Setup(_)
            | GoogleError::Signing
            | GoogleError::SubjectTokenFile { .. }
            | GoogleError::Unreachable { .. }
            | GoogleError::ReadAnswer { .. } => reasons::PROVIDER_ERROR,
            GoogleError::InvalidCredentials { .. } => reasons::SOURCE_SECRET_INVALID,
            GoogleError::InvalidSpec(_) => reasons::INVALID_SPEC,
            GoogleError::SubjectTokenField(_)
            | GoogleError::EmptySubjectToken
            | GoogleError::TooLarge { .. }
            | GoogleError::InvalidAnswer { .. } => reasons::PROVIDER_RESPONSE_INVALID,
            GoogleError::Status { status, code, .. } => reason_for(*status, code.as_deref()),
            GoogleError::Federation { source, .. } => source.reason(),
        }
    }

    /// The `Retry-After` of the answer behind the error.
    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            GoogleError::Status { retry_after, .. } => *retry_after,
            GoogleError::Federation { source, .. } => source.retry_after(),
            _ => None,
        }
    }
}

/// What to change for one of Google STS's refusals of a federated token
/// (texts as Google answers them: cloud.google.com/iam/docs/troubleshooting-workload-identity-federation,
/// google-github-actions/auth `docs/TROUBLESHOOTING.md`).
pub(super) fn federation_hint(detail: &str) -> &'static str {
    if detail.contains("does not match the expected audience") {
        "; set serviceAccountRef.tokenAudience to one of the provider's allowed audiences"
    } else if detail.contains("The issuer in ID Token") {
        "; the provider's issuer URI must be the cluster's --service-account-issuer"
    } else if detail.contains("Error connecting to the given credential's issuer")
        || detail.contains("Unable to verify the ID Token signature")
    {
        "; if the cluster's issuer is not public, upload its current keys (kubectl get --raw /openid/v1/jwks) to \
         the provider"
    } else if detail.contains("attribute condition") {
        "; the provider's attribute condition does not admit this ServiceAccount"
    } else if detail.contains("stale to sign-in") {
        "; the cluster's clock and Google's differ by more than a minute"
    } else {
        ""
    }
}

impl From<GoogleError> for ProviderError {
    fn from(e: GoogleError) -> Self {
        let retry_after = e.retry_after();
        ProviderError::typed(e.reason(), e).with_retry_after(retry_after)
    }
}

/// The reason for a failed HTTP answer.
fn reason_for(status: u16, code: Option<&str>) -> &'static str {
    const AUTH_CODES: [&str; 5] =
        ["invalid_grant", "invalid_client", "unauthorized_client", "access_denied", "unauthorized"];
    match status {
        401 | 403 => reasons::PROVIDER_AUTH_FAILED,
        400 if code.is_some_and(|c| AUTH_CODES.contains(&c)) => reasons::PROVIDER_AUTH_FAILED,
        // STS: a pool provider that does not exist or is disabled, an
        // audience or subject that cannot work: the spec, not an outage.
        400 if code.is_some_and(|c| c == "invalid_target" || c == "invalid_request") => reasons::INVALID_SPEC,
        429 => reasons::PROVIDER_THROTTLED,
        _ => reasons::PROVIDER_ERROR,
    }
}

/// The error code and description of an OAuth2 (`{"error",
/// "error_description"}`) or Google API (`{"error": {"status",
/// "message"}}`) error answer. A description that contains anything that was
/// sent is dropped; both are cut short and stripped of control characters.
pub(super) fn error_detail(body: &[u8], sent: &[&str]) -> (Option<String>, Option<String>) {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let (code, description) = match json.get("error") {
        Some(Value::String(code)) => (Some(code.as_str()), json.get("error_description").and_then(Value::as_str)),
        Some(Value::Object(e)) => (e.get("status").and_then(Value::as_str), e.get("message").and_then(Value::as_str)),
        _ => (None, None),
    };
    let code = code
        .filter(|c| !c.is_empty() && c.len() <= 64)
        .filter(|c| c.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.')))
        .map(str::to_string);
    let description = description
        .filter(|d| !sent.iter().any(|s| !s.is_empty() && d.contains(s)))
        .map(|d| d.chars().filter(|c| !c.is_control()).take(300).collect::<String>())
        .filter(|d| !d.trim().is_empty());
    (code, description)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federation_refusals_name_the_token_and_say_what_to_change() {
        let refused = |detail: &str| GoogleError::Status {
            what: "STS token exchange",
            url: "https://sts.googleapis.com/v1/token".into(),
            status: 400,
            code: Some("invalid_grant".into()),
            detail: format!("HTTP 400: invalid_grant: {detail}"),
            retry_after: None,
        };
        for (detail, says) in [
            ("The audience in ID Token [sts.amazonaws.com] does not match the expected audience.", "tokenAudience"),
            (
                "The issuer in ID Token https://x does not match the expected one in config: https://y",
                "--service-account-issuer",
            ),
            ("Error connecting to the given credential's issuer.", "/openid/v1/jwks"),
            ("Unable to verify the ID Token signature.", "/openid/v1/jwks"),
            ("The given credential is rejected by the attribute condition.", "attribute condition does not admit"),
            ("ID Token issued at 1 is stale to sign-in.", "clock"),
        ] {
            let e = GoogleError::Federation {
                subject: "system:serviceaccount:team:puller".into(),
                token_audience: "https://iam.googleapis.com/p".into(),
                provider: "//iam.googleapis.com/p".into(),
                hint: federation_hint(detail),
                source: Box::new(refused(detail)),
            };
            let p = ProviderError::from(e);
            assert_eq!(p.reason, reasons::PROVIDER_AUTH_FAILED);
            assert!(p.message.contains(detail) && p.message.contains(says), "{}", p.message);
            assert!(p.message.contains("ServiceAccount token system:serviceaccount:team:puller"), "{}", p.message);
        }
        assert_eq!(federation_hint("HTTP 500"), "");
        assert_eq!(reason_for(400, Some("invalid_target")), reasons::INVALID_SPEC, "no such pool provider");
        assert_eq!(reason_for(400, Some("invalid_request")), reasons::INVALID_SPEC);
    }

    #[test]
    fn failed_answers_map_to_reasons_and_never_echo_what_was_sent() {
        assert_eq!(reason_for(400, Some("invalid_grant")), reasons::PROVIDER_AUTH_FAILED);
        assert_eq!(reason_for(400, Some("invalid_request")), reasons::INVALID_SPEC, "retrying cannot help");
        assert_eq!(reason_for(401, None), reasons::PROVIDER_AUTH_FAILED);
        assert_eq!(reason_for(403, Some("PERMISSION_DENIED")), reasons::PROVIDER_AUTH_FAILED);
        assert_eq!(reason_for(429, None), reasons::PROVIDER_THROTTLED);
        assert_eq!(reason_for(500, None), reasons::PROVIDER_ERROR);
        assert_eq!(reason_for(503, None), reasons::PROVIDER_ERROR);

        let oauth = br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#;
        assert_eq!(
            error_detail(oauth, &["assertion-value"]),
            (Some("invalid_grant".into()), Some("Invalid JWT Signature.".into()))
        );
        let google =
            br#"{"error":{"code":403,"message":"Permission denied on sa@p.iam","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(
            error_detail(google, &[]),
            (Some("PERMISSION_DENIED".into()), Some("Permission denied on sa@p.iam".into()))
        );
        let echo = br#"{"error":"invalid_request","error_description":"bad subject_token eyJsecret-subject"}"#;
        assert_eq!(error_detail(echo, &["eyJsecret-subject"]), (Some("invalid_request".into()), None));
        let weird = br#"{"error":"not a code\n with spaces"}"#;
        assert_eq!(error_detail(weird, &[]), (None, None));
        assert_eq!(error_detail(b"Internal Server Error", &[]), (None, None));
    }

    #[tokio::test]
    async fn google_error_reasons() {
        let refused = || async {
            crate::http::client(None, std::time::Duration::from_secs(5))
                .unwrap()
                .get("http://127.0.0.1:1/")
                .send()
                .await
                .unwrap_err()
        };
        let url = || "https://oauth2.googleapis.com/token".to_string();
        let what = "token request";
        let status = |status: u16, code: Option<&str>| GoogleError::Status {
            what,
            url: url(),
            status,
            code: code.map(Into::into),
            detail: String::new(),
            retry_after: None,
        };
        for (e, reason) in [
            (
                GoogleError::Source(SourceError::AmbientForbidden { what: "x".into() }),
                reasons::AMBIENT_IDENTITY_FORBIDDEN,
            ),
            (GoogleError::Setup(crate::http::SetupError::Tls("x".into())), reasons::PROVIDER_ERROR),
            (
                GoogleError::InvalidCredentials { secret: "ns/s".into(), detail: "is not JSON".into() },
                reasons::SOURCE_SECRET_INVALID,
            ),
            (GoogleError::InvalidSpec("x".into()), reasons::INVALID_SPEC),
            (GoogleError::Signing, reasons::PROVIDER_ERROR),
            (
                GoogleError::SubjectTokenFile { path: "/x".into(), source: std::io::ErrorKind::NotFound.into() },
                reasons::PROVIDER_ERROR,
            ),
            (GoogleError::SubjectTokenField("f".into()), reasons::PROVIDER_RESPONSE_INVALID),
            (GoogleError::EmptySubjectToken, reasons::PROVIDER_RESPONSE_INVALID),
            (GoogleError::Unreachable { what, url: url(), source: refused().await }, reasons::PROVIDER_ERROR),
            (GoogleError::ReadAnswer { what, url: url(), source: refused().await }, reasons::PROVIDER_ERROR),
            (GoogleError::TooLarge { what, url: url() }, reasons::PROVIDER_RESPONSE_INVALID),
            (status(400, Some("invalid_grant")), reasons::PROVIDER_AUTH_FAILED),
            (status(400, Some("invalid_request")), reasons::INVALID_SPEC),
            (status(403, None), reasons::PROVIDER_AUTH_FAILED),
            (status(429, None), reasons::PROVIDER_THROTTLED),
            (status(503, None), reasons::PROVIDER_ERROR),
            (
                GoogleError::InvalidAnswer { what, url: url(), problem: "the answer is not JSON" },
                reasons::PROVIDER_RESPONSE_INVALID,
            ),
        ] {
            assert_eq!(e.reason(), reason, "{e:?}");
            assert_eq!(ProviderError::from(e).reason, reason);
        }
        let e = GoogleError::SubjectTokenFile { path: "/t".into(), source: std::io::ErrorKind::NotFound.into() };
        assert_eq!(e.to_string(), "reading the external_account subject token file /t: entity not found");
        let e = GoogleError::Unreachable { what, url: url(), source: refused().await.without_url() };
        assert!(
            e.to_string().starts_with("token request to https://oauth2.googleapis.com/token: error sending request"),
            "{e}"
        );
    }
}
