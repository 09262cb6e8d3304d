//! The `harbor` provider: Harbor robot accounts, created, rotated and deleted
//! through Harbor's API v2.0 (`/api/v2.0/robots`).
//!
//! Harbor has no token exchange for pulls: the credential is a robot account
//! whose secret Harbor generates and shows only once. regcred keeps **two**
//! system-level robots per credential, in slots `a` and `b`, and publishes
//! one of them. Each refresh works on the robot that is *not* published:
//! it is created if missing (or deleted by hand), its permissions and
//! lifetime are brought up to date (`PUT`), its secret is refreshed
//! (`PATCH`), and then it is published. The robot published before keeps its
//! secret until the refresh after next, so a Secret a kubelet read a moment
//! ago keeps working through a rotation.
//!
//! Harbor computes `expires_at` as `creation_time + duration` days and a
//! secret refresh does not move it, so a reused robot gets its `duration`
//! raised to cover `durationDays` from now. The expiry regcred reports is
//! the published robot's `expires_at`, as Harbor returns it.
//!
//! What is kept in `status.providerState` (never secret material):
//! `{"instance": "1a2b3c4d", "active": "b", "projects": [...],
//! "robots": [{"slot": "a", "id": 12, "name": "robot$regcred-..."}, ...]}`.
//! `instance` is a random part of the robot names, fixed at the first mint,
//! so two clusters with the same credential names never share robots.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;
use reqwest::{Method, StatusCode, Url, header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{CredentialProvider, Minted, ProviderError, SourceError, Sources, required_value};
use crate::api::HarborProvider;
use crate::http::{BodyError, MAX_BODY, find_rustls_error, read_body, transport_cause, truncate};
use crate::hygiene::Kind;
use crate::reasons;
use crate::redact::Redactor;
use crate::render::RegistryAuth;

/// Lifetime of a robot when `robot.durationDays` is unset.
pub const DEFAULT_DURATION_DAYS: i64 = 30;
/// First part of the robot names when `robot.namePrefix` is unset.
pub const DEFAULT_NAME_PREFIX: &str = "regcred";
const SECONDS_PER_DAY: i64 = 86_400;
/// Longest part of a robot name taken from the credential's name.
const MAX_SLUG: usize = 40;

pub struct Harbor {
    spec: HarborProvider,
}

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
    Status { status: StatusCode, message: String },
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
}

impl From<HarborError> for ProviderError {
    fn from(e: HarborError) -> Self {
        ProviderError::typed(e.reason(), e)
    }
}

impl Harbor {
    pub fn new(spec: HarborProvider) -> Self {
        Harbor { spec }
    }
}

#[async_trait]
impl CredentialProvider for Harbor {
    async fn mint(&self, sources: &Sources) -> Result<Minted, ProviderError> {
        Ok(self.rotate(sources).await?)
    }

    async fn cleanup(&self, sources: &Sources) -> Result<(), ProviderError> {
        Ok(self.delete_robots(sources).await?)
    }
}

impl Harbor {
    /// Publishes the robot that is not published, with a fresh secret.
    async fn rotate(&self, sources: &Sources) -> Result<Minted, HarborError> {
        let target = Target::from_spec(&self.spec)?;
        let api = HarborApi::connect(&self.spec, &target, sources).await?;
        let mut state = State::parse(sources.previous_state()).unwrap_or_else(State::fresh);
        let names = Names::new(&target.name_prefix, sources.owner(), &state.instance)?;
        let now = Timestamp::now().as_second();
        let next = state.active.map(Slot::other).unwrap_or(Slot::A);

        // New projects reach the robot published until now at once, not
        // only at its next rotation: a project taken out of the spec loses
        // access now.
        if state.projects != target.projects
            && let Some(published) = state.robot(next.other())
            && let Some(robot) = api.get_robot(published.id).await?
            && robot.name == published.name
            && !robot.has_permissions(&target.projects)
        {
            api.update_robot(&robot, robot.duration, &target.projects, &names.description).await?;
        }

        let robot = rotate(&api, &state, next, &names, &target, now).await?;
        tracing::info!(robot = %robot.name, id = robot.id, slot = next.as_str(), "Harbor robot secret refreshed; publishing it");
        state.set_robot(RobotRef { slot: next, id: robot.id, name: robot.name.clone() });
        state.active = Some(next);
        state.projects = target.projects.clone();
        let expires_at = (robot.expires_at > 0).then(|| Timestamp::from_second(robot.expires_at).ok()).flatten();
        Ok(Minted {
            auths: vec![RegistryAuth {
                registry: target.registry.clone(),
                username: robot.name,
                password: robot.secret,
            }],
            expires_at,
            state: Some(serde_json::to_value(&state).expect("provider state serializes")),
        })
    }

    /// Deletes the credential's robots.
    async fn delete_robots(&self, sources: &Sources) -> Result<(), HarborError> {
        let Some(state) = State::parse(sources.previous_state()) else {
            return Ok(());
        };
        let target = match Target::from_spec(&self.spec) {
            Ok(t) => t,
            // A spec Harbor was never reached with created nothing.
            Err(_) => return Ok(()),
        };
        let api = match HarborApi::connect(&self.spec, &target, sources).await {
            Ok(api) => api,
            Err(HarborError::Source(e))
                if e.reason() == reasons::SOURCE_SECRET_NOT_FOUND || e.reason() == reasons::SOURCE_SECRET_INVALID =>
            {
                // Without the account nothing can be deleted; waiting would
                // keep the credential (and its namespace) from going away.
                // The robots expire by themselves.
                let robots: Vec<&str> = state.robots.iter().map(|r| r.name.as_str()).collect();
                tracing::warn!(
                    reason = e.reason(),
                    ?robots,
                    "cannot delete the Harbor robots: {e}; they stay until they expire"
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut deleted = Vec::new();
        for r in &state.robots {
            if let Some(robot) = api.get_robot(r.id).await?
                && robot.name == r.name
            {
                api.delete_robot(robot.id).await?;
                deleted.push(robot.id);
            }
        }
        // Robots with this credential's names that the state missed (a
        // status update that was lost).
        if let Ok(names) = Names::new(&target.name_prefix, sources.owner(), &state.instance) {
            for slot in [Slot::A, Slot::B] {
                for robot in api.find_robots(names.raw(slot)).await? {
                    if !deleted.contains(&robot.id) {
                        api.delete_robot(robot.id).await?;
                        deleted.push(robot.id);
                    }
                }
            }
        }
        tracing::info!(count = deleted.len(), "Harbor robots deleted");
        Ok(())
    }
}

/// Brings the robot in `slot` up to date and gives it a new secret:
/// created when missing, permissions and lifetime updated, secret refreshed.
async fn rotate(
    api: &HarborApi,
    state: &State,
    slot: Slot,
    names: &Names,
    target: &Target,
    now: i64,
) -> Result<Published, HarborError> {
    let raw = names.raw(slot);
    let existing = match state.robot(slot) {
        None => None,
        Some(known) => match api.get_robot(known.id).await? {
            Some(robot) if robot.name == known.name && robot.named(raw) => Some(robot),
            Some(robot) if robot.name == known.name => {
                // The name prefix changed: Harbor cannot rename a robot, and
                // this one is not published, so it is replaced.
                api.delete_robot(robot.id).await?;
                None
            }
            _ => {
                tracing::info!(robot = %known.name, id = known.id, "Harbor robot no longer exists; creating it again");
                None
            }
        },
    };
    let robot = match existing {
        Some(robot) => robot,
        None => match api.create_robot(raw, target, &names.description).await? {
            Created::New(published) => return Ok(published),
            Created::NameTaken(conflict) => {
                // A robot of ours whose creation the state missed (for
                // example an answer lost to a timeout): take it over.
                let mut found = api.find_robots(raw).await?;
                if found.is_empty() {
                    return Err(conflict);
                }
                found.remove(0)
            }
        },
    };
    let duration = wanted_duration(&robot, target.duration_days, now);
    let robot = if robot.duration != duration || robot.disable || !robot.has_permissions(&target.projects) {
        api.update_robot(&robot, duration, &target.projects, &names.description).await?;
        api.get_robot(robot.id).await?.ok_or_else(|| vanished(&robot))?
    } else {
        robot
    };
    let secret = api.refresh_secret(&robot).await?;
    Ok(Published { id: robot.id, name: robot.name, secret, expires_at: robot.expires_at })
}

fn vanished(robot: &Robot) -> HarborError {
    HarborError::Vanished { name: robot.name.clone(), id: robot.id }
}

/// The `duration` (days) that makes a robot live `days` from `now`:
/// Harbor counts it from the robot's creation time. The length of a day is
/// read from the robot itself (`expires_at - creation_time` over
/// `duration`), which is 86400 seconds in Harbor.
fn wanted_duration(robot: &Robot, days: i64, now: i64) -> i64 {
    let Some(created) = robot.created() else {
        return days;
    };
    let day = robot.day_seconds().unwrap_or(SECONDS_PER_DAY);
    let elapsed = (now - created).max(0);
    let elapsed_days = (elapsed + day - 1) / day;
    elapsed_days + days
}

/// What the spec asks for, checked before Harbor is called.
struct Target {
    base: Url,
    registry: String,
    projects: Vec<String>,
    duration_days: i64,
    name_prefix: String,
}

impl Target {
    fn from_spec(spec: &HarborProvider) -> Result<Target, HarborError> {
        let invalid = |detail: &str| HarborError::InvalidSpec(detail.to_string());
        let base = Url::parse(spec.url.trim()).map_err(|e| invalid(&format!("url is not a valid URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("url must start with https:// or http://"));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(invalid("url must not contain credentials: put them in the auth.secretRef Secret"));
        }
        if base.path() != "/" || base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("url must be Harbor's base URL, without a path"));
        }
        let host = base.host_str().ok_or_else(|| invalid("url has no host"))?;
        let registry = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let mut projects: Vec<String> = spec.projects.iter().map(|p| p.trim().to_string()).collect();
        projects.sort();
        projects.dedup();
        if projects.is_empty() || projects.iter().any(String::is_empty) {
            return Err(invalid("projects must name at least one project, without empty names"));
        }
        let robot = spec.robot.clone().unwrap_or_default();
        let duration_days = robot.duration_days.map(i64::from).unwrap_or(DEFAULT_DURATION_DAYS);
        if duration_days < 1 {
            return Err(invalid("robot.durationDays must be at least 1"));
        }
        let name_prefix = robot.name_prefix.unwrap_or_else(|| DEFAULT_NAME_PREFIX.to_string());
        Ok(Target { base, registry, projects, duration_days, name_prefix })
    }
}

/// Robot names: `PREFIX-CREDENTIAL-INSTANCE-SLOT`, which Harbor shows as
/// `robot$PREFIX-CREDENTIAL-INSTANCE-SLOT`.
struct Names {
    a: String,
    b: String,
    description: String,
}

impl Names {
    fn new(prefix: &str, owner: &str, instance: &str) -> Result<Names, HarborError> {
        let slug = slug(owner);
        let make = |slot: Slot| format!("{prefix}-{slug}-{instance}-{}", slot.as_str());
        let a = make(Slot::A);
        if !valid_robot_name(&a) {
            return Err(HarborError::InvalidSpec(format!(
                "robot.namePrefix {prefix:?} gives the robot name {a:?}, which Harbor refuses: use lowercase \
                 letters and digits separated by single '-', '_' or '.'"
            )));
        }
        let owner = if owner.is_empty() { "regcred check" } else { owner };
        Ok(Names { a, b: make(Slot::B), description: format!("Managed by regcred for {owner}; do not edit") })
    }

    fn raw(&self, slot: Slot) -> &str {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }
}

/// The credential's namespace and name as a robot name part:
/// `RegistryCredential/team-a/pull` gives `team-a-pull`.
fn slug(owner: &str) -> String {
    let mut parts = owner.split('/');
    let _kind = parts.next();
    let rest: Vec<&str> = parts.collect();
    let source = if rest.is_empty() { "check".to_string() } else { rest.join("-") };
    let mut out = String::new();
    for c in source.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(MAX_SLUG);
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() { "credential".into() } else { out }
}

/// Harbor's rule for robot names: `^[a-z0-9]+(?:[._-][a-z0-9]+)*$`.
fn valid_robot_name(name: &str) -> bool {
    let mut previous_separator = true;
    for c in name.chars() {
        let separator = matches!(c, '.' | '_' | '-');
        if separator && previous_separator {
            return false;
        }
        if !(separator || c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return false;
        }
        previous_separator = separator;
    }
    !name.is_empty() && !previous_separator
}

/// One of the two robots of a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Slot {
    A,
    B,
}

impl Slot {
    fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// A robot regcred created: its slot, Harbor id and login name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RobotRef {
    slot: Slot,
    id: i64,
    name: String,
}

/// The provider state kept in `status.providerState`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    instance: String,
    active: Option<Slot>,
    #[serde(default)]
    projects: Vec<String>,
    #[serde(default)]
    robots: Vec<RobotRef>,
}

impl State {
    fn fresh() -> State {
        State {
            instance: format!("{:08x}", rand::random::<u32>()),
            active: None,
            projects: Vec::new(),
            robots: Vec::new(),
        }
    }

    /// The state in status, if it is one of ours.
    fn parse(value: Option<&serde_json::Value>) -> Option<State> {
        let state: State = serde_json::from_value(value?.clone()).ok()?;
        let ok = !state.instance.is_empty()
            && state.instance.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && state.instance.len() <= 16;
        ok.then_some(state)
    }

    fn robot(&self, slot: Slot) -> Option<&RobotRef> {
        self.robots.iter().find(|r| r.slot == slot)
    }

    fn set_robot(&mut self, robot: RobotRef) {
        self.robots.retain(|r| r.slot != robot.slot);
        self.robots.push(robot);
        self.robots.sort_by_key(|r| r.slot.as_str());
    }
}

/// A robot as Harbor's `GET /robots/{id}` and `GET /robots` return it.
#[derive(Clone, Debug, Deserialize)]
struct Robot {
    id: i64,
    name: String,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    duration: i64,
    #[serde(default)]
    disable: bool,
    #[serde(default)]
    expires_at: i64,
    #[serde(default)]
    creation_time: Option<String>,
    #[serde(default)]
    permissions: Option<Vec<Permission>>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Permission {
    kind: String,
    namespace: String,
    #[serde(default)]
    access: Option<Vec<Access>>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Access {
    resource: String,
    action: String,
}

/// Pull on the repositories of each project.
fn pull_permissions(projects: &[String]) -> Vec<Permission> {
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
    fn named(&self, raw: &str) -> bool {
        self.name == raw || self.name.ends_with(raw)
    }

    fn has_permissions(&self, projects: &[String]) -> bool {
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

    fn created(&self) -> Option<i64> {
        let t: Timestamp = self.creation_time.as_deref()?.parse().ok()?;
        Some(t.as_second())
    }

    /// Seconds in a day of `duration`, from Harbor's own arithmetic.
    fn day_seconds(&self) -> Option<i64> {
        let created = self.created()?;
        if self.duration <= 0 || self.expires_at <= created {
            return None;
        }
        let day = ((self.expires_at - created) as f64 / self.duration as f64).round() as i64;
        (day > 0).then_some(day)
    }
}

/// A robot with a fresh secret, ready to publish.
struct Published {
    id: i64,
    name: String,
    secret: SecretString,
    expires_at: i64,
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

enum Created {
    New(Published),
    /// 409: a robot with this name exists.
    NameTaken(HarborError),
}

/// Harbor's `201` answer to `POST /robots`. Not `Debug`: it holds the secret.
#[derive(Deserialize)]
struct CreatedWire {
    id: i64,
    name: String,
    secret: String,
    #[serde(default)]
    expires_at: i64,
}

/// Harbor's answer to `PATCH /robots/{id}`. Not `Debug`: it holds the secret.
#[derive(Deserialize)]
struct SecretWire {
    #[serde(default)]
    secret: String,
}

/// Harbor's error body: `{"errors": [{"code": "...", "message": "..."}]}`.
#[derive(Deserialize)]
struct ErrorsWire {
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

/// Harbor's API, as the account from `auth.secretRef`.
struct HarborApi {
    client: reqwest::Client,
    base: Url,
    username: String,
    password: SecretString,
    /// `namespace/name` of the account's Secret, for messages.
    secret_name: String,
    timeout: Duration,
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
struct Answer {
    method: Method,
    url: Url,
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    /// `METHOD URL`, for messages.
    fn request(&self) -> String {
        format!("{} {}", self.method, self.url)
    }
}

impl HarborApi {
    async fn connect(spec: &HarborProvider, target: &Target, sources: &Sources) -> Result<HarborApi, HarborError> {
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
        let body = match read_body(&mut response).await {
            Ok(body) => body,
            Err(BodyError::Read(e)) => return Err(self.transport_error(&method, &url, e)),
            Err(BodyError::TooLarge) => return Err(HarborError::TooLarge { request: format!("{method} {url}") }),
        };
        Ok(Answer { method, url, status, body })
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

    /// The error for an answer Harbor gave with an unexpected status.
    fn status_error(&self, answer: &Answer, what: &str) -> HarborError {
        let Answer { method, url, status, .. } = answer;
        let detail = self.harbor_message(&answer.body);
        let said = if detail.is_empty() { String::new() } else { format!(": {detail}") };
        let message = match *status {
            StatusCode::UNAUTHORIZED => format!(
                "Harbor refused the account {} from Secret {} (401 Unauthorized) at {method} {url}: \
                 check its username and password",
                self.username, self.secret_name
            ),
            StatusCode::FORBIDDEN => format!(
                "Harbor account {} may not {what} (403 Forbidden at {method} {url}){said}: it needs to manage \
                 system robot accounts (Harbor system administrator)",
                self.username
            ),
            StatusCode::NOT_FOUND => format!(
                "Harbor answered 404 Not Found to {method} {url} ({what}){said}: check that every project in \
                 spec.provider.harbor.projects exists and that url points at Harbor 2.x"
            ),
            StatusCode::CONFLICT => {
                format!("Harbor answered 409 Conflict to {method} {url} ({what}){said}: the robot name is taken")
            }
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                format!("Harbor refused the request {method} {url} ({what}) with {status}{said}")
            }
            StatusCode::TOO_MANY_REQUESTS => format!("Harbor throttled {method} {url} ({what}): {status}"),
            _ => format!("Harbor answered {status} to {method} {url} ({what}){said}"),
        };
        HarborError::Status { status: *status, message: self.scrub(&message) }
    }

    /// The messages of Harbor's error body, short, without secrets.
    fn harbor_message(&self, body: &[u8]) -> String {
        let Ok(wire) = serde_json::from_slice::<ErrorsWire>(body) else {
            return String::new();
        };
        let text = wire
            .errors
            .iter()
            .map(|e| if e.message.is_empty() { e.code.clone() } else { e.message.clone() })
            .filter(|m| !m.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        truncate(&text, 300)
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
    async fn get_robot(&self, id: i64) -> Result<Option<Robot>, HarborError> {
        let answer = self.send(Method::GET, self.url(&format!("robots/{id}")), None).await?;
        match answer.status {
            StatusCode::OK => self.parse(&answer).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_error(&answer, "read robot accounts")),
        }
    }

    /// `GET /robots?q=name=RAW`: the system robots with that name.
    async fn find_robots(&self, raw: &str) -> Result<Vec<Robot>, HarborError> {
        let mut url = self.url("robots");
        url.query_pairs_mut().append_pair("q", &format!("name={raw}")).append_pair("page_size", "10");
        let answer = self.send(Method::GET, url, None).await?;
        if answer.status != StatusCode::OK {
            return Err(self.status_error(&answer, "list robot accounts"));
        }
        let robots: Option<Vec<Robot>> = self.parse(&answer)?;
        Ok(robots.unwrap_or_default().into_iter().filter(|r| r.named(raw)).collect())
    }

    /// `POST /robots`: a system robot with pull on the projects.
    async fn create_robot(&self, raw: &str, target: &Target, description: &str) -> Result<Created, HarborError> {
        let body = json!({
            "name": raw,
            "description": description,
            "duration": target.duration_days,
            "level": "system",
            "disable": false,
            "permissions": pull_permissions(&target.projects),
        });
        let answer = self.send(Method::POST, self.url("robots"), Some(body)).await?;
        match answer.status {
            StatusCode::CREATED | StatusCode::OK => {}
            StatusCode::CONFLICT => return Ok(Created::NameTaken(self.status_error(&answer, "create robot accounts"))),
            _ => return Err(self.status_error(&answer, "create robot accounts")),
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

    /// `PUT /robots/{id}`: permissions, lifetime, enabled.
    async fn update_robot(
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
            "duration": duration,
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
            StatusCode::NOT_FOUND if answer.body.is_empty() || self.harbor_message(&answer.body).contains("robot") => {
                Err(vanished(robot))
            }
            _ => Err(self.status_error(&answer, "update robot accounts")),
        }
    }

    /// `PATCH /robots/{id}` with an empty secret: Harbor generates a new one.
    async fn refresh_secret(&self, robot: &Robot) -> Result<SecretString, HarborError> {
        let answer = self.send(Method::PATCH, self.url(&format!("robots/{}", robot.id)), Some(json!({}))).await?;
        match answer.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(vanished(robot)),
            _ => return Err(self.status_error(&answer, "refresh robot secrets")),
        }
        let wire: SecretWire = self.parse(&answer)?;
        if wire.secret.is_empty() {
            return Err(HarborError::Incomplete { request: answer.request(), missing: "a new secret" });
        }
        Ok(wire.secret.into())
    }

    /// `DELETE /robots/{id}`; a robot already gone is fine.
    async fn delete_robot(&self, id: i64) -> Result<(), HarborError> {
        let answer = self.send(Method::DELETE, self.url(&format!("robots/{id}")), None).await?;
        match answer.status {
            StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => {
                tracing::info!(id, "Harbor robot deleted");
                Ok(())
            }
            _ => Err(self.status_error(&answer, "delete robot accounts")),
        }
    }
}

/// Fuzzing entry point (`fuzz/`): Harbor's answers (robot lists, a robot,
/// a created robot, a new secret, an error body) and the stored provider
/// state on arbitrary input.
pub(super) fn fuzz_parse(data: &[u8]) {
    if let Ok(robots) = serde_json::from_slice::<Option<Vec<Robot>>>(data) {
        for r in robots.iter().flatten() {
            let _ = r.named("regcred-x-a");
            let _ = r.day_seconds();
        }
    }
    if let Ok(r) = serde_json::from_slice::<Robot>(data) {
        let _ = r.day_seconds();
    }
    let _ = serde_json::from_slice::<CreatedWire>(data);
    let _ = serde_json::from_slice::<SecretWire>(data);
    let _ = serde_json::from_slice::<ErrorsWire>(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = State::parse(Some(&v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HarborAuth, HarborRobot, SecretRef};

    fn spec(url: &str) -> HarborProvider {
        HarborProvider {
            url: url.into(),
            projects: vec!["b".into(), "a".into(), "b".into()],
            robot: None,
            auth: HarborAuth { secret_ref: SecretRef { name: "harbor-admin".into(), namespace: None } },
            ca_bundle: None,
        }
    }

    fn robot(json: serde_json::Value) -> Robot {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn registry_host_projects_and_defaults_come_from_the_spec() {
        let t = Target::from_spec(&spec("https://harbor.example.com")).unwrap();
        assert_eq!(t.registry, "harbor.example.com");
        assert_eq!(t.projects, ["a", "b"], "sorted, without repeats");
        assert_eq!(t.duration_days, DEFAULT_DURATION_DAYS);
        assert_eq!(t.name_prefix, DEFAULT_NAME_PREFIX);
        assert_eq!(Target::from_spec(&spec("http://127.0.0.1:8085/")).unwrap().registry, "127.0.0.1:8085");
        assert_eq!(Target::from_spec(&spec("https://harbor.example.com:443")).unwrap().registry, "harbor.example.com");
        let mut s = spec("https://h.example.com");
        s.robot = Some(HarborRobot { name_prefix: Some("ci".into()), duration_days: Some(7) });
        let t = Target::from_spec(&s).unwrap();
        assert_eq!((t.duration_days, t.name_prefix.as_str()), (7, "ci"));
    }

    #[test]
    fn urls_with_credentials_or_paths_are_refused_without_echoing_them() {
        let e = ProviderError::from(
            Target::from_spec(&spec("https://admin:Hunter2pass@harbor.example.com")).err().unwrap(),
        );
        assert_eq!(e.reason, reasons::INVALID_SPEC);
        assert!(!e.message.contains("Hunter2pass"), "{}", e.message);
        let e = ProviderError::from(Target::from_spec(&spec("https://harbor.example.com/api")).err().unwrap());
        assert_eq!(e.reason, reasons::INVALID_SPEC);
        let e = ProviderError::from(Target::from_spec(&spec("ftp://harbor.example.com")).err().unwrap());
        assert_eq!(e.reason, reasons::INVALID_SPEC);
    }

    #[test]
    fn robot_names_follow_harbors_rule() {
        let n = Names::new("regcred", "RegistryCredential/team-a/pull.secret", "0a1b2c3d").unwrap();
        assert_eq!(n.raw(Slot::A), "regcred-team-a-pull-secret-0a1b2c3d-a");
        assert_eq!(n.raw(Slot::B), "regcred-team-a-pull-secret-0a1b2c3d-b");
        assert!(n.description.contains("RegistryCredential/team-a/pull.secret"));
        let n = Names::new("regcred", "ClusterRegistryCredential/ghcr", "ff").unwrap();
        assert_eq!(n.raw(Slot::A), "regcred-ghcr-ff-a");
        assert_eq!(Names::new("regcred", "", "ff").unwrap().raw(Slot::B), "regcred-check-ff-b");
        let long = format!("RegistryCredential/{}/x", "n".repeat(63));
        let n = Names::new("p", &long, "ff").unwrap();
        assert!(valid_robot_name(n.raw(Slot::A)) && n.raw(Slot::A).len() <= 2 + MAX_SLUG + 5, "{}", n.raw(Slot::A));
        let e = ProviderError::from(Names::new("bad--prefix", "ClusterRegistryCredential/x", "ff").err().unwrap());
        assert_eq!(e.reason, reasons::INVALID_SPEC);
        for (name, ok) in
            [("a", true), ("a-b.c_d", true), ("-a", false), ("a-", false), ("a--b", false), ("A", false), ("", false)]
        {
            assert_eq!(valid_robot_name(name), ok, "{name}");
        }
    }

    #[test]
    fn state_round_trips_and_foreign_state_is_ignored() {
        let mut s = State::fresh();
        assert_eq!(s.instance.len(), 8);
        s.set_robot(RobotRef { slot: Slot::B, id: 7, name: "robot$x-b".into() });
        s.set_robot(RobotRef { slot: Slot::A, id: 3, name: "robot$x-a".into() });
        s.set_robot(RobotRef { slot: Slot::B, id: 9, name: "robot$x-b".into() });
        s.active = Some(Slot::B);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["active"], "b");
        assert_eq!(v["robots"][0]["slot"], "a");
        assert_eq!(v["robots"][1]["id"], 9);
        assert_eq!(State::parse(Some(&v)), Some(s));
        assert_eq!(State::parse(None), None);
        assert_eq!(State::parse(Some(&json!({"robots": "what"}))), None);
        assert_eq!(State::parse(Some(&json!({"instance": "../x", "active": null}))), None);
    }

    #[test]
    fn lifetime_is_extended_from_the_creation_time_in_harbors_days() {
        // Harbor: expires_at = creation_time + duration days.
        let r = robot(json!({
            "id": 1, "name": "robot$x", "duration": 30,
            "creation_time": "2026-01-01T00:00:00.123Z",
            "expires_at": Timestamp::from_second(1_767_225_600 + 30 * 86_400).unwrap().as_second(),
        }));
        assert_eq!(r.day_seconds(), Some(86_400));
        let created = r.created().unwrap();
        assert_eq!(wanted_duration(&r, 30, created), 30, "fresh: unchanged");
        assert_eq!(wanted_duration(&r, 30, created + 20 * 86_400), 50);
        assert_eq!(wanted_duration(&r, 30, created + 20 * 86_400 + 1), 51, "whole days, rounded up");
        // A Harbor whose days are short (a test stand-in): the same rule.
        let r = robot(json!({"id": 1, "name": "robot$x", "duration": 2,
            "creation_time": "2026-01-01T00:00:00Z", "expires_at": 1_767_225_600 + 8}));
        assert_eq!(r.day_seconds(), Some(4));
        assert_eq!(wanted_duration(&r, 1, 1_767_225_600 + 5), 3);
        // Without a usable creation time or duration: 86400-second days.
        let r = robot(json!({"id": 1, "name": "robot$x", "duration": -1, "expires_at": -1}));
        assert_eq!(r.day_seconds(), None);
        assert_eq!(wanted_duration(&r, 7, 0), 7);
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
    }

    fn api() -> HarborApi {
        HarborApi {
            client: crate::http::client(None, Duration::from_secs(30)).unwrap(),
            base: Url::parse("https://harbor.example.com").unwrap(),
            username: "admin".into(),
            password: "S3cretAdminPass".to_string().into(),
            secret_name: "ns/harbor-admin".into(),
            timeout: Duration::from_secs(30),
        }
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            method: Method::POST,
            url: Url::parse("https://harbor.example.com/api/v2.0/robots").unwrap(),
            status: StatusCode::from_u16(status).unwrap(),
            body: body.as_bytes().to_vec(),
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
            let e = ProviderError::from(api.status_error(&answer(status, body), "create robot accounts"));
            assert_eq!(e.reason, reason, "{status}: {}", e.message);
            for w in words {
                assert!(e.message.contains(w), "{status}: {w:?} not in {}", e.message);
            }
            assert!(!e.message.contains("S3cretAdminPass"), "{}", e.message);
        }
        let e =
            ProviderError::from(api.status_error(&answer(502, "<html>bad gateway</html>"), "create robot accounts"));
        assert!(!e.message.contains("html"), "non-JSON bodies are not quoted: {}", e.message);
    }

    #[test]
    fn debug_output_is_redacted() {
        let api = api();
        assert!(!format!("{api:?}").contains("S3cretAdminPass"));
        let p =
            Published { id: 1, name: "robot$x".into(), secret: "R0botSecretValue".to_string().into(), expires_at: 0 };
        assert!(!format!("{p:?}").contains("R0botSecretValue"));
    }

    #[tokio::test]
    async fn harbor_error_reasons() {
        let request = || "GET https://harbor.example.com/api/v2.0/robots".to_string();
        let status =
            |code: u16| HarborError::Status { status: StatusCode::from_u16(code).unwrap(), message: String::new() };
        // A transport error of a real request: nothing listens on port 1.
        let refused = crate::http::client(None, Duration::from_secs(5))
            .unwrap()
            .get("http://127.0.0.1:1/")
            .send()
            .await
            .unwrap_err();
        let body_error = serde_json::from_slice::<Robot>(b"{}").unwrap_err();
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
            request: answer(200, "").request(),
            missing: "a new secret",
        });
        assert_eq!(e.message, "Harbor POST https://harbor.example.com/api/v2.0/robots answered without a new secret");
    }
}
