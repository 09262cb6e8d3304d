//! Harbor's errors, and the messages that say why Harbor refused a call and
//! what to change.
//!
//! Who may manage which robots (goharbor/harbor; see
//! `docs/providers/harbor.md` for the table):
//! - system robots: a system administrator (`src/common/security/local/context.go`),
//!   or from Harbor 2.12 a system robot holding `robot` create, read, list
//!   and delete, never update (`src/common/rbac/const.go`,
//!   `NolimitProvider`), which creates only robots within its own
//!   permissions (`src/server/v2.0/handler/robot.go`, `isValidPermissionScope`);
//! - a project administrator manages only its projects' robots
//!   (`src/common/rbac/project/rbac_role.go`);
//! - in OIDC mode a CLI secret is no login on the robot API
//!   (`src/server/middleware/security/oidc_cli.go`, `valid()`): Harbor
//!   answers 401 there, as for a wrong password.

use reqwest::StatusCode;

use crate::http::MAX_BODY;
use crate::provider::{ProviderError, SourceError};
use crate::reasons;

/// Why Harbor robots could not be minted or deleted. Messages name the
/// call, the URL and the status, never the account password or a robot
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum HarborError {
    /// The account Secret could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The spec cannot be used (`spec.provider.harbor.<detail>`).
    #[error("spec.provider.harbor.{0}")]
    InvalidSpec(String),
    /// `caBundle` cannot be used.
    #[error("spec.provider.harbor.caBundle: {0}")]
    CaBundle(#[source] crate::http::SetupError),
    /// No answer: timeout, TLS or connection failure.
    #[error("{message}")]
    Transport {
        message: String,
        #[source]
        source: reqwest::Error,
    },
    /// Harbor answered with a status the call does not expect.
    #[error("{message}")]
    Status {
        status: StatusCode,
        message: String,
        /// The answer's `Retry-After`, for the pacing.
        retry_after: Option<std::time::Duration>,
    },
    /// An answer too large to be one of Harbor's (`request`: method and
    /// URL).
    #[error("Harbor {request}: answer larger than {} KiB", MAX_BODY / 1024)]
    TooLarge { request: String },
    /// An answer that is not the JSON expected.
    #[error("Harbor {request} answered {status} with an unexpected body: {source}")]
    UnexpectedBody {
        request: String,
        status: StatusCode,
        #[source]
        source: serde_json::Error,
    },
    /// A successful answer without what it should hold.
    #[error("Harbor {request} answered without {missing}")]
    Incomplete { request: String, missing: &'static str },
    /// The robot being rotated was deleted meanwhile.
    #[error("Harbor robot {name} (id {id}) disappeared while it was being rotated; retrying")]
    Vanished { name: String, id: i64 },
}

impl HarborError {
    /// The condition reason ([`crate::reasons`]).
    pub fn reason(&self) -> &'static str {
        match self {
            HarborError::Source(e) => e.reason(),
            HarborError::InvalidSpec(_) | HarborError::CaBundle(_) => reasons::INVALID_SPEC,
            HarborError::Transport { .. } | HarborError::Vanished { .. } => reasons::PROVIDER_ERROR,
            HarborError::Status { status, .. } => match *status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => reasons::PROVIDER_AUTH_FAILED,
                StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                    reasons::INVALID_SPEC
                }
                StatusCode::TOO_MANY_REQUESTS => reasons::PROVIDER_THROTTLED,
                _ => reasons::PROVIDER_ERROR,
            },
            HarborError::TooLarge { .. } | HarborError::UnexpectedBody { .. } | HarborError::Incomplete { .. } => {
                reasons::PROVIDER_RESPONSE_INVALID
            }
        }
    }

    /// Harbor answered 403: the account lacks a right.
    pub(super) fn is_forbidden(&self) -> bool {
        matches!(self, HarborError::Status { status: StatusCode::FORBIDDEN, .. })
    }
}

impl From<HarborError> for ProviderError {
    fn from(e: HarborError) -> Self {
        let retry_after = match &e {
            HarborError::Status { retry_after, .. } => *retry_after,
            _ => None,
        };
        ProviderError::typed(e.reason(), e).with_retry_after(retry_after)
    }
}

/// A call of Harbor's robot API, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Call {
    Create,
    Read,
    List,
    Update,
    RefreshSecret,
    Delete,
}

impl Call {
    /// What the call does, after "may not".
    fn what(self) -> &'static str {
        match self {
            Call::Create => "create robot accounts",
            Call::Read => "read robot accounts",
            Call::List => "list robot accounts",
            Call::Update => "update robot accounts",
            Call::RefreshSecret => "refresh robot secrets",
            Call::Delete => "delete robot accounts",
        }
    }

    /// The `robot` action Harbor checks for it (`robot.go`; a secret
    /// refresh needs `update`).
    fn action(self) -> &'static str {
        match self {
            Call::Create => "create",
            Call::Read => "read",
            Call::List => "list",
            Call::Update | Call::RefreshSecret => "update",
            Call::Delete => "delete",
        }
    }
}

/// Harbor's `auth_mode` (`GET /api/v2.0/systeminfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum AuthMode {
    Db,
    Ldap,
    Oidc,
    Other(String),
}

impl AuthMode {
    pub(super) fn parse(mode: &str) -> AuthMode {
        match mode {
            "db_auth" => AuthMode::Db,
            "ldap_auth" => AuthMode::Ldap,
            "oidc_auth" => AuthMode::Oidc,
            other => AuthMode::Other(other.to_string()),
        }
    }
}

/// What `GET /api/v2.0/systeminfo`, asked with the account's credentials,
/// tells about Harbor and the account: the auth mode (public), and whether
/// the credentials signed in there (Harbor adds `harbor_version` for a
/// signed-in caller, `src/server/v2.0/handler/systeminfo.go`). In OIDC mode
/// a CLI secret signs in on that path (`oidc_cli.go`) though not on the
/// robot API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Diagnosis {
    pub mode: Option<AuthMode>,
    pub signed_in: bool,
    /// `(major, minor)` of `harbor_version` (`v2.11.0-abcdef`).
    pub version: Option<(u32, u32)>,
}

/// `(major, minor)` of a Harbor version string such as `v2.11.0-abcdef`.
pub(super) fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().trim_start_matches('v').split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Harbor's default robot name prefix (`src/common/const.go`). Harbor
/// user names cannot take it, so an account named so is a robot.
pub(super) const ROBOT_PREFIX: &str = "robot$";

/// Whether the account is a robot account.
pub(super) fn is_robot(username: &str) -> bool {
    username.starts_with(ROBOT_PREFIX)
}

/// A refusal from Harbor and what regcred knows around it.
#[derive(Debug)]
pub(super) struct Refusal<'a> {
    /// `METHOD URL`.
    pub request: String,
    pub status: StatusCode,
    /// Harbor's error code (`FORBIDDEN`, `DENIED`, ...).
    pub code: String,
    /// Harbor's error messages, shortened.
    pub detail: String,
    pub call: Call,
    pub username: &'a str,
    /// `namespace/name` of the account's Secret.
    pub secret_name: &'a str,
    /// For a 401, or a 403 of a robot account.
    pub diagnosis: Option<Diagnosis>,
    /// For a create: the projects of the new robot.
    pub projects: &'a [String],
    /// For a robot account refused for the scope of its own permissions:
    /// the projects it does not hold `repository` `pull` on, if it could
    /// read its own permissions.
    pub missing: Option<Vec<String>>,
}

impl Refusal<'_> {
    /// Harbor refused a robot account creating a robot with permissions
    /// the account does not hold itself (`robot.go`, `CreateRobot`).
    pub(super) fn is_out_of_scope(&self) -> bool {
        self.status == StatusCode::FORBIDDEN
            && self.code == "DENIED"
            && self.call == Call::Create
            && self.detail.contains("permission scope")
    }
}

/// The message for a refusal: what Harbor said, why, and what to change.
pub(super) fn explain(r: &Refusal<'_>) -> String {
    let Refusal { request, status, call, username: user, secret_name: secret, .. } = r;
    let said = if r.detail.is_empty() { String::new() } else { format!(": {}", r.detail) };
    let what = call.what();
    match *status {
        StatusCode::UNAUTHORIZED => format!(
            "Harbor refused the account {user} from Secret {secret} (401 Unauthorized) at {request}: {}",
            unauthorized(r)
        ),
        StatusCode::FORBIDDEN => forbidden(r),
        StatusCode::NOT_FOUND => format!(
            "Harbor answered 404 Not Found to {request} ({what}){said}: check that every project in \
             spec.provider.harbor.projects exists and that url points at Harbor 2.2 or later"
        ),
        StatusCode::CONFLICT => {
            format!("Harbor answered 409 Conflict to {request} ({what}){said}: the robot name is taken")
        }
        StatusCode::BAD_REQUEST if r.detail.contains("duration") => format!(
            "Harbor refused the robot lifetime in {request} (400 Bad Request{said}): Harbor takes -1 (never) or a \
             positive number of days; check spec.provider.harbor.robot.durationDays"
        ),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            format!("Harbor refused the request {request} ({what}) with {status}{said}")
        }
        StatusCode::TOO_MANY_REQUESTS => format!("Harbor throttled {request} ({what}): {status}"),
        _ => format!("Harbor answered {status} to {request} ({what}){said}"),
    }
}

/// Why a 401, from the auth mode and the kind of account.
fn unauthorized(r: &Refusal<'_>) -> String {
    let user = r.username;
    let diagnosis = r.diagnosis.clone().unwrap_or_default();
    if is_robot(user) {
        return format!(
            "Harbor has no enabled, unexpired robot account {user} with this secret; check the robot's full name \
             and its secret"
        );
    }
    match diagnosis.mode {
        Some(AuthMode::Oidc) if user == "admin" => {
            "check admin's password (Harbor is in OIDC mode, where only the local admin signs in with a password)"
                .to_string()
        }
        Some(AuthMode::Oidc) => {
            let valid = if diagnosis.signed_in { " (this CLI secret is valid)" } else { "" };
            format!(
                "Harbor is in OIDC mode, where a user's CLI secret is accepted for registry logins and a few \
                 listing calls but never for managing robot accounts{valid}; put in the Secret Harbor's local \
                 admin account, or a system robot account that may create, read, list and delete robots (Harbor \
                 2.12 or later)"
            )
        }
        Some(AuthMode::Ldap) => "check its username and password (Harbor is in LDAP mode: users sign in with their \
                                 LDAP password, the local admin with its Harbor password)"
            .to_string(),
        Some(AuthMode::Other(mode)) => format!("check its username and password (Harbor's auth mode is {mode})"),
        Some(AuthMode::Db) | None => "check its username and password".to_string(),
    }
}

/// Which right is missing, for whom, and who has it.
fn forbidden(r: &Refusal<'_>) -> String {
    let Refusal { request, call, username: user, .. } = r;
    let what = call.what();
    if r.is_out_of_scope() {
        let projects = match &r.missing {
            Some(missing) if !missing.is_empty() => missing.join(", "),
            _ => r.projects.join(", "),
        };
        return format!(
            "Harbor robot account {user} may not create a robot that pulls from project {projects} (403 Forbidden \
             at {request}: {}): Harbor lets a robot create only robots whose permissions it holds itself; give \
             {user} repository pull on project {projects}, or on all projects",
            r.detail
        );
    }
    if is_robot(user) {
        let old = match r.diagnosis.as_ref().and_then(|d| d.version) {
            Some((major, minor)) if (major, minor) < (2, 12) => {
                format!("; Harbor {major}.{minor} does not let robot accounts manage robots (2.12 and later do)")
            }
            _ => String::new(),
        };
        return format!(
            "Harbor robot account {user} may not {what} (403 Forbidden at {request}): it lacks the system \
             permission robot {}{old}; regcred needs a system robot with robot create, read, list and delete, and \
             repository pull on the projects",
            call.action()
        );
    }
    // Harbor's 403 at system level says only the account name.
    let said = if r.detail.is_empty() || r.detail == *user { String::new() } else { format!(": {}", r.detail) };
    format!(
        "Harbor account {user} may not {what} (403 Forbidden at {request}){said}: regcred manages system robot \
         accounts, which takes a Harbor system administrator (a project administrator manages only its own \
         projects' robots) or a system robot account with robot permissions (Harbor 2.12 or later)"
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn refusal<'a>(status: u16, code: &str, detail: &str, call: Call, user: &'a str) -> Refusal<'a> {
        Refusal {
            request: "POST https://harbor.example.com/api/v2.0/robots".into(),
            status: StatusCode::from_u16(status).unwrap(),
            code: code.into(),
            detail: detail.into(),
            call,
            username: user,
            secret_name: "ns/harbor-admin",
            diagnosis: None,
            projects: &[],
            missing: None,
        }
    }

    fn assert_words(message: &str, words: &[&str]) {
        for w in words {
            assert!(message.contains(w), "{w:?} not in {message:?}");
        }
    }

    #[test]
    fn a_401_says_what_the_auth_mode_accepts() {
        let mut r = refusal(401, "UNAUTHORIZED", "unauthorized", Call::Create, "alice");
        assert_words(&explain(&r), &["account alice", "ns/harbor-admin", "401", "check its username and password"]);
        r.diagnosis = Some(Diagnosis { mode: Some(AuthMode::Ldap), ..Default::default() });
        assert_words(&explain(&r), &["LDAP mode", "LDAP password"]);
        r.diagnosis = Some(Diagnosis { mode: Some(AuthMode::Oidc), signed_in: true, version: Some((2, 14)) });
        let m = explain(&r);
        assert_words(&m, &["OIDC mode", "CLI secret", "never for managing robot", "this CLI secret is valid", "admin"]);
        assert!(!m.contains("check its username and password"), "{m}");
        r.diagnosis = Some(Diagnosis { mode: Some(AuthMode::Oidc), signed_in: false, version: None });
        assert!(!explain(&r).contains("is valid"));
        let mut admin = refusal(401, "UNAUTHORIZED", "unauthorized", Call::Create, "admin");
        admin.diagnosis = Some(Diagnosis { mode: Some(AuthMode::Oidc), ..Default::default() });
        assert_words(&explain(&admin), &["check admin's password"]);
        let robot = refusal(401, "UNAUTHORIZED", "unauthorized", Call::Read, "robot$ci");
        assert_words(&explain(&robot), &["no enabled, unexpired robot account robot$ci"]);
        let mut other = refusal(401, "UNAUTHORIZED", "", Call::Read, "u");
        other.diagnosis = Some(Diagnosis { mode: Some(AuthMode::parse("uaa_auth")), ..Default::default() });
        assert_words(&explain(&other), &["auth mode is uaa_auth"]);
    }

    #[test]
    fn a_403_names_the_missing_right_and_who_has_it() {
        let m = explain(&refusal(403, "FORBIDDEN", "dev", Call::Create, "dev"));
        assert_words(&m, &["account dev may not create robot accounts", "403", "system administrator", "project"]);
        assert!(!m.contains(": dev"), "Harbor's message is only the name: {m}");
        let mut robot = refusal(403, "FORBIDDEN", "robot$ci", Call::Delete, "robot$ci");
        assert_words(&explain(&robot), &["robot account robot$ci may not delete", "system permission robot delete"]);
        robot.diagnosis = Some(Diagnosis { version: Some((2, 11)), ..Default::default() });
        assert_words(&explain(&robot), &["Harbor 2.11 does not let robot accounts manage robots"]);
        let projects = ["a".to_string(), "b".to_string()];
        let mut scope = refusal(
            403,
            "DENIED",
            "permission scope is invalid. It must be equal to or more restrictive than the creator robot's \
             permissions: robot$ci",
            Call::Create,
            "robot$ci",
        );
        scope.projects = &projects;
        assert!(scope.is_out_of_scope());
        assert_words(&explain(&scope), &["pulls from project a, b", "repository pull on project a, b"]);
        scope.missing = Some(vec!["b".into()]);
        assert_words(&explain(&scope), &["pulls from project b ", "repository pull on project b,"]);
    }

    #[test]
    fn a_400_on_the_duration_names_the_field() {
        let m = explain(&refusal(
            400,
            "BAD_REQUEST",
            "bad request error duration input: 0, duration must be either -1(Never) or a positive integer",
            Call::Update,
            "admin",
        ));
        assert_words(&m, &["robot lifetime", "durationDays", "duration input: 0"]);
        assert_eq!(
            HarborError::Status { status: StatusCode::BAD_REQUEST, message: m, retry_after: None }.reason(),
            reasons::INVALID_SPEC
        );
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("v2.11.0-abc123"), Some((2, 11)));
        assert_eq!(parse_version("v2.14.1"), Some((2, 14)));
        assert_eq!(parse_version("dev"), None);
    }

    #[tokio::test]
    async fn harbor_error_reasons() {
        let request = || "GET https://harbor.example.com/api/v2.0/robots".to_string();
        let status = |code: u16| HarborError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            message: String::new(),
            retry_after: None,
        };
        // A transport error of a real request: nothing listens on port 1.
        let refused = crate::http::client(None, Duration::from_secs(5))
            .unwrap()
            .get("http://127.0.0.1:1/")
            .send()
            .await
            .unwrap_err();
        let body_error = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        for (e, reason) in [
            (
                HarborError::Source(SourceError::SecretNotFound { namespace: "ns".into(), name: "n".into() }),
                reasons::SOURCE_SECRET_NOT_FOUND,
            ),
            (HarborError::InvalidSpec("url".into()), reasons::INVALID_SPEC),
            (HarborError::CaBundle(crate::http::SetupError::InvalidCaBundle("x".into())), reasons::INVALID_SPEC),
            (HarborError::Transport { message: "m".into(), source: refused }, reasons::PROVIDER_ERROR),
            (status(401), reasons::PROVIDER_AUTH_FAILED),
            (status(403), reasons::PROVIDER_AUTH_FAILED),
            (status(404), reasons::INVALID_SPEC),
            (status(400), reasons::INVALID_SPEC),
            (status(422), reasons::INVALID_SPEC),
            (status(409), reasons::PROVIDER_ERROR),
            (status(429), reasons::PROVIDER_THROTTLED),
            (status(500), reasons::PROVIDER_ERROR),
            (status(302), reasons::PROVIDER_ERROR),
            (HarborError::TooLarge { request: request() }, reasons::PROVIDER_RESPONSE_INVALID),
            (
                HarborError::UnexpectedBody { request: request(), status: StatusCode::OK, source: body_error },
                reasons::PROVIDER_RESPONSE_INVALID,
            ),
            (
                HarborError::Incomplete { request: request(), missing: "a new secret" },
                reasons::PROVIDER_RESPONSE_INVALID,
            ),
            (HarborError::Vanished { name: "robot$x".into(), id: 1 }, reasons::PROVIDER_ERROR),
        ] {
            assert_eq!(e.reason(), reason, "{e:?}");
            let p = ProviderError::from(e);
            assert_eq!(p.reason, reason);
            assert!(std::error::Error::source(&p).is_some_and(|s| s.downcast_ref::<HarborError>().is_some()));
        }
        let e = HarborError::TooLarge { request: request() };
        assert_eq!(e.to_string(), "Harbor GET https://harbor.example.com/api/v2.0/robots: answer larger than 1024 KiB");
        let e = ProviderError::from(HarborError::Incomplete {
            request: crate::provider::harbor::client::tests::answer(200, "").request(),
            missing: "a new secret",
        });
        assert_eq!(e.message, "Harbor POST https://harbor.example.com/api/v2.0/robots answered without a new secret");
    }
}
