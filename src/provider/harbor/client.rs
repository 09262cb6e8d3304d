//! Harbor's API v2.0 as regcred uses it: the robot endpoints
//! (`/api/v2.0/robots`, `src/server/v2.0/handler/robot.go`) and, to explain
//! a refusal, `/api/v2.0/systeminfo`. HTTP Basic authentication with the
//! account from `auth.secretRef`.

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url, header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Target;
use super::error::{AuthMode, Call, Diagnosis, HarborError, ROBOT_PREFIX, Refusal, explain, is_robot, parse_version};
use crate::api::HarborProvider;
use crate::http::{BodyError, find_rustls_error, read_body, response_retry_after, transport_cause, truncate};
use crate::hygiene::Kind;
use crate::provider::{Sources, required_value};
use crate::redact::Redactor;

/// A robot as Harbor's `GET /robots/{id}` and `GET /robots` return it.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct Robot {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub duration: i64,
    #[serde(default)]
    pub disable: bool,
    #[serde(default)]
    pub expires_at: i64,
    #[serde(default)]
    pub creation_time: Option<String>,
    #[serde(default)]
    pub permissions: Option<Vec<Permission>>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) struct Permission {
    pub kind: String,
    pub namespace: String,
    #[serde(default)]
    pub access: Option<Vec<Access>>,
}

/// One right. Sent without `effect`: Harbor then stores none, which is
/// what a robot created in Harbor's UI holds too, so a robot account can
/// grant it (`isValidPermissionScope` compares the effect literally).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) struct Access {
    pub resource: String,
    pub action: String,
}

/// Pull on the repositories of each project.
pub(super) fn pull_permissions(projects: &[String]) -> Vec<Permission> {
    projects
        .iter()
        .map(|p| Permission {
            kind: "project".into(),
            namespace: p.clone(),
            access: Some(vec![Access { resource: "repository".into(), action: "pull".into() }]),
        })
        .collect()
}

impl Robot {
    /// Whether Harbor's name for the robot is `raw` (with Harbor's robot
    /// prefix, `robot$` by default, in front).
    pub fn named(&self, raw: &str) -> bool {
        self.name == raw || self.name.ends_with(raw)
    }

    pub fn has_permissions(&self, projects: &[String]) -> bool {
        let normalize = |perms: Vec<Permission>| {
            let mut perms: Vec<Permission> = perms
                .into_iter()
                .map(|mut p| {
                    if let Some(access) = p.access.as_mut() {
                        access.sort();
                        access.dedup();
                    }
                    p
                })
                .collect();
            perms.sort();
            perms
        };
        normalize(self.permissions.clone().unwrap_or_default()) == normalize(pull_permissions(projects))
    }

    /// Whether the robot may pull from `project` (or from all projects).
    fn pulls_from(&self, project: &str) -> bool {
        self.permissions.iter().flatten().any(|p| {
            p.kind == "project"
                && (p.namespace == project || p.namespace == "*")
                && p.access.iter().flatten().any(|a| a.resource == "repository" && a.action == "pull")
        })
    }

    pub fn created(&self) -> Option<i64> {
        let t: k8s_openapi::jiff::Timestamp = self.creation_time.as_deref()?.parse().ok()?;
        Some(t.as_second())
    }

    /// Seconds in a day of `duration`, from Harbor's own arithmetic.
    pub fn day_seconds(&self) -> Option<i64> {
        let created = self.created()?;
        if self.duration <= 0 || self.expires_at <= created {
            return None;
        }
        let day = ((self.expires_at - created) as f64 / self.duration as f64).round() as i64;
        (day > 0).then_some(day)
    }
}

/// A robot with a fresh secret, ready to publish.
pub(super) struct Published {
    pub id: i64,
    pub name: String,
    pub secret: SecretString,
    pub expires_at: i64,
}

impl fmt::Debug for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Published")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

pub(super) enum Created {
    New(Published),
    /// 409: a robot with this name exists.
    NameTaken(HarborError),
}

/// Harbor's `201` answer to `POST /robots`. Not `Debug`: it holds the secret.
#[derive(Deserialize)]
pub(super) struct CreatedWire {
    id: i64,
    name: String,
    secret: String,
    #[serde(default)]
    expires_at: i64,
}

/// Harbor's answer to `PATCH /robots/{id}`. Not `Debug`: it holds the secret.
#[derive(Deserialize)]
pub(super) struct SecretWire {
    #[serde(default)]
    secret: String,
}

/// Harbor's error body: `{"errors": [{"code": "...", "message": "..."}]}`
/// (`src/lib/errors/errors.go`).
#[derive(Deserialize)]
pub(super) struct ErrorsWire {
    #[serde(default)]
    errors: Vec<ErrorWire>,
}

#[derive(Deserialize)]
struct ErrorWire {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// The parts of `GET /api/v2.0/systeminfo` regcred reads.
#[derive(Deserialize)]
pub(super) struct SystemInfoWire {
    #[serde(default)]
    auth_mode: Option<String>,
    /// Present only for a signed-in caller.
    #[serde(default)]
    harbor_version: Option<String>,
}

/// The largest valid robot `duration` (days), below 2^31 - 1
/// (`robot.go`, `isValidDuration`).
const MAX_DURATION: i64 = i32::MAX as i64 - 1;

/// `duration` as Harbor takes it: -1 (never) or 1 to [`MAX_DURATION`]
/// days. 0 is refused from Harbor 2.11 and, before, means the default on
/// create and "expired at creation" on update, so it is never sent.
fn checked_duration(days: i64) -> Result<i64, HarborError> {
    if days == -1 || (1..=MAX_DURATION).contains(&days) {
        Ok(days)
    } else {
        Err(HarborError::InvalidSpec(format!(
            "robot.durationDays gives a robot lifetime of {days} days, which Harbor refuses (it takes -1 or 1 to \
             {MAX_DURATION})"
        )))
    }
}

/// Harbor's API, as the account from `auth.secretRef`.
pub(super) struct HarborApi {
    pub(super) client: reqwest::Client,
    pub(super) base: Url,
    pub(super) username: String,
    pub(super) password: SecretString,
    /// `namespace/name` of the account's Secret, for messages.
    pub(super) secret_name: String,
    pub(super) timeout: Duration,
}

impl fmt::Debug for HarborApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HarborApi")
            .field("base", &self.base.as_str())
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A finished HTTP exchange.
pub(super) struct Answer {
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) status: StatusCode,
    pub(super) body: Vec<u8>,
    /// Its `Retry-After`, for the pacing.
    pub(super) retry_after: Option<std::time::Duration>,
}

impl Answer {
    /// `METHOD URL`, for messages.
    pub(super) fn request(&self) -> String {
        format!("{} {}", self.method, self.url)
    }
}

impl HarborApi {
    pub(super) async fn connect(
        spec: &HarborProvider,
        target: &Target,
        sources: &Sources,
    ) -> Result<HarborApi, HarborError> {
        let secret_ref = &spec.auth.secret_ref;
        let secret = sources.secret(secret_ref).await?;
        let secret_name = format!("{}/{}", sources.namespace(), secret_ref.name);
        const EXPECTED: &str = "username and password of a Harbor account";
        let username = required_value(&secret, &secret_name, "username", Kind::Username, EXPECTED)?;
        let password = required_value(&secret, &secret_name, "password", Kind::Secret, EXPECTED)?;
        let timeout = crate::http::PROVIDER_TIMEOUT;
        let ca_bundle = spec.ca_bundle.as_deref().filter(|c| !c.trim().is_empty());
        let client = crate::http::client(ca_bundle, timeout).map_err(HarborError::CaBundle)?;
        Ok(HarborApi { client, base: target.base.clone(), username, password: password.into(), secret_name, timeout })
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("/api/v2.0/{path}"));
        url
    }

    async fn send(&self, method: Method, url: Url, body: Option<serde_json::Value>) -> Result<Answer, HarborError> {
        let mut request = self
            .client
            .request(method.clone(), url.clone())
            .basic_auth(&self.username, Some(self.password.expose_secret()))
            .header(header::ACCEPT, "application/json");
        if let Some(body) = body {
            let bytes = serde_json::to_vec(&body).expect("JSON values serialize");
            request = request.header(header::CONTENT_TYPE, "application/json").body(bytes);
        }
        let mut response = request.send().await.map_err(|e| self.transport_error(&method, &url, e))?;
        let status = response.status();
        let retry_after = response_retry_after(&response);
        let body = match read_body(&mut response).await {
            Ok(body) => body,
            Err(BodyError::Read(e)) => return Err(self.transport_error(&method, &url, e)),
            Err(BodyError::TooLarge) => return Err(HarborError::TooLarge { request: format!("{method} {url}") }),
        };
        Ok(Answer { method, url, status, body, retry_after })
    }

    fn transport_error(&self, method: &Method, url: &Url, e: reqwest::Error) -> HarborError {
        let message = if e.is_timeout() {
            format!("Harbor {method} {url} timed out after {}s", self.timeout.as_secs())
        } else if let Some(tls) = find_rustls_error(&e) {
            let hint = match tls {
                rustls::Error::InvalidCertificate(_) => {
                    "; if Harbor uses a private CA, put it in spec.provider.harbor.caBundle"
                }
                rustls::Error::InvalidMessage(_) => "; the server may speak plain HTTP",
                _ => "",
            };
            format!("TLS handshake with Harbor failed at {method} {url}: {tls}{hint}")
        } else {
            format!("cannot reach Harbor at {method} {url}: {}", transport_cause(&e))
        };
        HarborError::Transport { message: self.scrub(&message), source: e }
    }

    /// What Harbor's answer says and what regcred knows around it, without
    /// asking Harbor anything more.
    pub(super) fn refusal<'a>(&'a self, answer: &Answer, call: Call, projects: &'a [String]) -> Refusal<'a> {
        let (code, detail) = harbor_error(&answer.body);
        Refusal {
            request: answer.request(),
            status: answer.status,
            code,
            detail,
            call,
            username: &self.username,
            secret_name: &self.secret_name,
            diagnosis: None,
            projects,
            missing: None,
        }
    }

    /// The error for an answer Harbor gave with an unexpected status. For
    /// a refused login or a refused robot account it asks Harbor what would
    /// work (its auth mode and version, the account's own permissions), so
    /// the message can say what to change.
    async fn refused(&self, answer: &Answer, call: Call, projects: &[String]) -> HarborError {
        let mut refusal = self.refusal(answer, call, projects);
        // A robot account's 403 to an update is expected (robots may not
        // update robots) and handled by replacing the robot: not worth a
        // call.
        let robot_refused = refusal.status == StatusCode::FORBIDDEN
            && is_robot(&self.username)
            && !matches!(call, Call::Update | Call::RefreshSecret);
        if refusal.status == StatusCode::UNAUTHORIZED || robot_refused {
            refusal.diagnosis = self.diagnose().await;
        }
        if refusal.is_out_of_scope() {
            refusal.missing = self.projects_not_pulled(projects).await;
        }
        HarborError::Status {
            status: answer.status,
            message: self.scrub(&explain(&refusal)),
            retry_after: answer.retry_after,
        }
    }

    /// `GET /systeminfo` with the account's credentials: the auth mode, and
    /// whether they sign in there. `None` when Harbor does not say.
    async fn diagnose(&self) -> Option<Diagnosis> {
        let answer = self.send(Method::GET, self.url("systeminfo"), None).await.ok()?;
        if answer.status != StatusCode::OK {
            return None;
        }
        let info: SystemInfoWire = serde_json::from_slice(&answer.body).ok()?;
        Some(Diagnosis {
            mode: info.auth_mode.as_deref().map(AuthMode::parse),
            signed_in: info.harbor_version.is_some(),
            version: info.harbor_version.as_deref().and_then(parse_version),
        })
    }

    /// The projects the account's own robot does not pull from, read from
    /// the robot itself; `None` when it cannot be read.
    async fn projects_not_pulled(&self, projects: &[String]) -> Option<Vec<String>> {
        let own = self.username.strip_prefix(ROBOT_PREFIX)?;
        let robots = self.find_robots(own).await.ok()?;
        let me = robots.into_iter().find(|r| r.name == self.username)?;
        Some(projects.iter().filter(|p| !me.pulls_from(p)).cloned().collect())
    }

    /// Removes the account password from a message, should anything echo it.
    fn scrub(&self, message: &str) -> String {
        Redactor::new([self.password.expose_secret()]).clean(message)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, answer: &Answer) -> Result<T, HarborError> {
        serde_json::from_slice(&answer.body).map_err(|source| HarborError::UnexpectedBody {
            request: answer.request(),
            status: answer.status,
            source,
        })
    }

    /// `GET /robots/{id}`; `None` when it does not exist.
    pub(super) async fn get_robot(&self, id: i64) -> Result<Option<Robot>, HarborError> {
        let answer = self.send(Method::GET, self.url(&format!("robots/{id}")), None).await?;
        match answer.status {
            StatusCode::OK => self.parse(&answer).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.refused(&answer, Call::Read, &[]).await),
        }
    }

    /// `GET /robots?q=name=RAW`: the system robots with that name.
    pub(super) async fn find_robots(&self, raw: &str) -> Result<Vec<Robot>, HarborError> {
        let mut url = self.url("robots");
        url.query_pairs_mut().append_pair("q", &format!("name={raw}")).append_pair("page_size", "10");
        let answer = self.send(Method::GET, url, None).await?;
        if answer.status != StatusCode::OK {
            return Err(Box::pin(self.refused(&answer, Call::List, &[])).await);
        }
        let robots: Option<Vec<Robot>> = self.parse(&answer)?;
        Ok(robots.unwrap_or_default().into_iter().filter(|r| r.named(raw)).collect())
    }

    /// `POST /robots`: a system robot with pull on the projects.
    pub(super) async fn create_robot(
        &self,
        raw: &str,
        target: &Target,
        description: &str,
    ) -> Result<Created, HarborError> {
        let body = json!({
            "name": raw,
            "description": description,
            "duration": checked_duration(target.duration_days)?,
            "level": "system",
            "disable": false,
            "permissions": pull_permissions(&target.projects),
        });
        let answer = self.send(Method::POST, self.url("robots"), Some(body)).await?;
        match answer.status {
            StatusCode::CREATED | StatusCode::OK => {}
            StatusCode::CONFLICT => {
                return Ok(Created::NameTaken(self.refused(&answer, Call::Create, &target.projects).await));
            }
            _ => return Err(self.refused(&answer, Call::Create, &target.projects).await),
        }
        let wire: CreatedWire = self.parse(&answer)?;
        if wire.secret.is_empty() || wire.name.is_empty() {
            return Err(HarborError::Incomplete { request: answer.request(), missing: "the robot's name or secret" });
        }
        tracing::info!(robot = %wire.name, id = wire.id, "Harbor robot created");
        Ok(Created::New(Published {
            id: wire.id,
            name: wire.name,
            secret: wire.secret.into(),
            expires_at: wire.expires_at,
        }))
    }

    /// `PUT /robots/{id}`: permissions, lifetime, enabled. Harbor wants the
    /// full name (with its prefix) and recomputes `expires_at` from the
    /// creation time when `duration` changes.
    pub(super) async fn update_robot(
        &self,
        robot: &Robot,
        duration: i64,
        projects: &[String],
        description: &str,
    ) -> Result<(), HarborError> {
        let body = json!({
            "id": robot.id,
            "name": robot.name,
            "description": description,
            "level": robot.level.clone().unwrap_or_else(|| "system".into()),
            "duration": checked_duration(duration)?,
            "disable": false,
            "editable": true,
            "permissions": pull_permissions(projects),
        });
        let answer = self.send(Method::PUT, self.url(&format!("robots/{}", robot.id)), Some(body)).await?;
        match answer.status {
            StatusCode::OK | StatusCode::NO_CONTENT => {
                tracing::info!(robot = %robot.name, id = robot.id, duration, ?projects, "Harbor robot updated");
                Ok(())
            }
            StatusCode::NOT_FOUND if answer.body.is_empty() || harbor_error(&answer.body).1.contains("robot") => {
                Err(vanished(robot))
            }
            _ => Err(self.refused(&answer, Call::Update, projects).await),
        }
    }

    /// `PATCH /robots/{id}` with an empty secret: Harbor generates a new one.
    pub(super) async fn refresh_secret(&self, robot: &Robot) -> Result<SecretString, HarborError> {
        let answer = self.send(Method::PATCH, self.url(&format!("robots/{}", robot.id)), Some(json!({}))).await?;
        match answer.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(vanished(robot)),
            _ => return Err(self.refused(&answer, Call::RefreshSecret, &[]).await),
        }
        let wire: SecretWire = self.parse(&answer)?;
        if wire.secret.is_empty() {
            return Err(HarborError::Incomplete { request: answer.request(), missing: "a new secret" });
        }
        Ok(wire.secret.into())
    }

    /// `DELETE /robots/{id}`; a robot already gone is fine.
    pub(super) async fn delete_robot(&self, id: i64) -> Result<(), HarborError> {
        let answer = self.send(Method::DELETE, self.url(&format!("robots/{id}")), None).await?;
        match answer.status {
            StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => {
                tracing::info!(id, "Harbor robot deleted");
                Ok(())
            }
            _ => Err(self.refused(&answer, Call::Delete, &[]).await),
        }
    }
}

pub(super) fn vanished(robot: &Robot) -> HarborError {
    HarborError::Vanished { name: robot.name.clone(), id: robot.id }
}

/// The first code and the messages of Harbor's error body, short. Empty
/// for a body that is not Harbor's (a proxy's HTML is not quoted).
fn harbor_error(body: &[u8]) -> (String, String) {
    let Ok(wire) = serde_json::from_slice::<ErrorsWire>(body) else {
        return (String::new(), String::new());
    };
    let code = wire.errors.first().map(|e| e.code.clone()).unwrap_or_default();
    let text = wire
        .errors
        .iter()
        .map(|e| if e.message.is_empty() { e.code.clone() } else { e.message.clone() })
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    (code, truncate(&text, 300))
}

/// Harbor's answers on arbitrary input, for [`super::fuzz_parse`].
pub(super) fn fuzz_parse(data: &[u8]) {
    if let Ok(robots) = serde_json::from_slice::<Option<Vec<Robot>>>(data) {
        for r in robots.iter().flatten() {
            let _ = r.named("regcred-x-a");
            let _ = r.day_seconds();
            let _ = r.pulls_from("library");
        }
    }
    if let Ok(r) = serde_json::from_slice::<Robot>(data) {
        let _ = r.day_seconds();
    }
    let _ = serde_json::from_slice::<CreatedWire>(data);
    let _ = serde_json::from_slice::<SecretWire>(data);
    let _ = harbor_error(data);
    if let Ok(info) = serde_json::from_slice::<SystemInfoWire>(data) {
        let _ = info.auth_mode.as_deref().map(AuthMode::parse);
        let _ = info.harbor_version.as_deref().and_then(parse_version);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::provider::ProviderError;
    use crate::reasons;

    fn robot(json: serde_json::Value) -> Robot {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn permissions_compare_as_sets() {
        let r = robot(json!({"id": 1, "name": "robot$x", "permissions": [
            {"kind": "project", "namespace": "b", "access": [{"resource": "repository", "action": "pull", "effect": "allow"}]},
            {"kind": "project", "namespace": "a", "access": [{"resource": "repository", "action": "pull"}]},
        ]}));
        assert!(r.has_permissions(&["a".into(), "b".into()]));
        assert!(!r.has_permissions(&["a".into()]));
        assert!(!r.has_permissions(&["a".into(), "b".into(), "c".into()]));
        let pushy = robot(json!({"id": 1, "name": "robot$x", "permissions": [
            {"kind": "project", "namespace": "a", "access": [
                {"resource": "repository", "action": "pull"}, {"resource": "repository", "action": "push"}]},
        ]}));
        assert!(!pushy.has_permissions(&["a".into()]), "extra rights are taken away");
        assert!(!robot(json!({"id": 1, "name": "robot$x", "permissions": null})).has_permissions(&["a".into()]));
        assert!(r.named("x") && !r.named("y"));
        let all = robot(json!({"id": 1, "name": "robot$m", "permissions": [
            {"kind": "system", "namespace": "/", "access": [{"resource": "robot", "action": "create"}]},
            {"kind": "project", "namespace": "*", "access": [{"resource": "repository", "action": "pull"}]},
        ]}));
        assert!(all.pulls_from("anything") && r.pulls_from("a") && !r.pulls_from("c"));
    }

    #[test]
    fn durations_harbor_refuses_are_never_sent() {
        for ok in [-1, 1, 30, MAX_DURATION] {
            assert_eq!(checked_duration(ok).unwrap(), ok);
        }
        for bad in [0, -2, MAX_DURATION + 1] {
            let e = ProviderError::from(checked_duration(bad).unwrap_err());
            assert_eq!(e.reason, reasons::INVALID_SPEC);
            assert!(e.message.contains("durationDays"), "{}", e.message);
        }
    }

    pub(in crate::provider::harbor) fn api() -> HarborApi {
        HarborApi {
            client: crate::http::client(None, Duration::from_secs(30)).unwrap(),
            base: Url::parse("https://harbor.example.com").unwrap(),
            username: "admin".into(),
            password: "S3cretAdminPass".to_string().into(),
            secret_name: "ns/harbor-admin".into(),
            timeout: Duration::from_secs(30),
        }
    }

    pub(in crate::provider::harbor) fn answer(status: u16, body: &str) -> Answer {
        Answer {
            method: Method::POST,
            url: Url::parse("https://harbor.example.com/api/v2.0/robots").unwrap(),
            status: StatusCode::from_u16(status).unwrap(),
            body: body.as_bytes().to_vec(),
            retry_after: None,
        }
    }

    #[test]
    fn harbor_errors_become_precise_reasons_without_secrets() {
        let api = api();
        let body = r#"{"errors":[{"code":"X","message":"echo S3cretAdminPass"}]}"#;
        for (status, reason, words) in [
            (401, reasons::PROVIDER_AUTH_FAILED, &["account admin", "ns/harbor-admin", "401"][..]),
            (403, reasons::PROVIDER_AUTH_FAILED, &["admin", "403", "system robot accounts"][..]),
            (404, reasons::INVALID_SPEC, &["404", "projects"][..]),
            (409, reasons::PROVIDER_ERROR, &["409", "name is taken"][..]),
            (400, reasons::INVALID_SPEC, &["400"][..]),
            (429, reasons::PROVIDER_THROTTLED, &["throttled"][..]),
            (
                500,
                reasons::PROVIDER_ERROR,
                &["500 Internal Server Error", "POST https://harbor.example.com/api/v2.0/robots"][..],
            ),
            (503, reasons::PROVIDER_ERROR, &["503"][..]),
        ] {
            let refusal = api.refusal(&answer(status, body), Call::Create, &[]);
            let e = ProviderError::from(HarborError::Status {
                status: refusal.status,
                message: api.scrub(&explain(&refusal)),
                retry_after: None,
            });
            assert_eq!(e.reason, reason, "{status}: {}", e.message);
            for w in words {
                assert!(e.message.contains(w), "{status}: {w:?} not in {}", e.message);
            }
            assert!(!e.message.contains("S3cretAdminPass"), "{}", e.message);
        }
        let refusal = api.refusal(&answer(502, "<html>bad gateway</html>"), Call::Create, &[]);
        assert!(!explain(&refusal).contains("html"), "non-JSON bodies are not quoted");
        assert_eq!(harbor_error(br#"{"errors":[{"code":"DENIED","message":"m"}]}"#), ("DENIED".into(), "m".into()));
    }

    #[test]
    fn debug_output_is_redacted() {
        let api = api();
        assert!(!format!("{api:?}").contains("S3cretAdminPass"));
        let p =
            Published { id: 1, name: "robot$x".into(), secret: "R0botSecretValue".to_string().into(), expires_at: 0 };
        assert!(!format!("{p:?}").contains("R0botSecretValue"));
    }
}
