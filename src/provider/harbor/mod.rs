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
//!
//! The account may be a Harbor system administrator, or (Harbor 2.12 and
//! later) a system robot holding `robot` create, read, list and delete. Such
//! a robot may not update robots (`PUT`, `PATCH` answer 403), so its
//! robots are replaced (deleted and created again, with a new secret and a
//! full lifetime) instead of refreshed. Which accounts Harbor accepts, and
//! why the others are refused, is in [`error`] and
//! `docs/providers/harbor.md`.
//!
//! Layout: this module holds the minting logic; [`client`] Harbor's API
//! and its answers; [`error`] the errors and their messages.

use async_trait::async_trait;
use k8s_openapi::jiff::Timestamp;
use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::{CredentialProvider, Minted, ProviderError, Sources};
use crate::api::HarborProvider;
use crate::reasons;
use crate::render::RegistryAuth;

mod client;
mod error;

use client::{Created, HarborApi, Published, Robot, vanished};
pub use error::HarborError;

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
            let duration = kept_duration(&robot, target.duration_days, now);
            match api.update_robot(&robot, duration, &target.projects, &names.description).await {
                // A robot account may not update robots: the published
                // robot keeps its projects until it is replaced at its
                // next rotation.
                Err(e) if e.is_forbidden() => tracing::warn!(
                    robot = %robot.name,
                    "the Harbor account may not update robots; the published robot keeps its projects until its \
                     next rotation: {e}"
                ),
                other => other?,
            }
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
/// created when missing, permissions and lifetime updated, secret
/// refreshed; replaced by a new robot when the account may not update
/// robots.
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
    match refresh(api, &robot, names, target, now).await {
        // Harbor 2.12+ lets a robot account create, read, list and delete
        // robots but never update them (goharbor/harbor
        // src/common/rbac/const.go, `NolimitProvider`; #21028), and both PUT
        // and PATCH need update (src/server/v2.0/handler/robot.go). This
        // robot is not published, so it can be replaced.
        Err(e) if e.is_forbidden() => {
            tracing::info!(
                robot = %robot.name,
                id = robot.id,
                "the Harbor account may not update robots; replacing the robot with a new one"
            );
            api.delete_robot(robot.id).await?;
            match api.create_robot(raw, target, &names.description).await? {
                Created::New(published) => Ok(published),
                Created::NameTaken(conflict) => Err(conflict),
            }
        }
        other => other,
    }
}

/// Permissions and lifetime brought up to date (`PUT`) if needed, then a
/// new secret (`PATCH`).
async fn refresh(
    api: &HarborApi,
    robot: &Robot,
    names: &Names,
    target: &Target,
    now: i64,
) -> Result<Published, HarborError> {
    let duration = wanted_duration(robot, target.duration_days, now);
    let robot = if robot.duration != duration || robot.disable || !robot.has_permissions(&target.projects) {
        api.update_robot(robot, duration, &target.projects, &names.description).await?;
        api.get_robot(robot.id).await?.ok_or_else(|| vanished(robot))?
    } else {
        robot.clone()
    };
    let secret = api.refresh_secret(&robot).await?;
    Ok(Published { id: robot.id, name: robot.name, secret, expires_at: robot.expires_at })
}

/// The `duration` (days) that makes a robot live `days` from `now`:
/// Harbor counts it from the robot's creation time. The length of a day is
/// read from the robot itself (`expires_at - creation_time` over
/// `duration`), which is 86400 seconds in Harbor. At least `days` (so
/// never 0, which Harbor refuses), and below Harbor's limit of 2^31 - 1.
fn wanted_duration(robot: &Robot, days: i64, now: i64) -> i64 {
    let Some(created) = robot.created() else {
        return days;
    };
    let day = robot.day_seconds().unwrap_or(SECONDS_PER_DAY);
    let elapsed = (now - created).max(0);
    let elapsed_days = (elapsed + day - 1) / day;
    (elapsed_days + days).min(i64::from(i32::MAX) - 1)
}

/// The `duration` to send when only a robot's permissions change: its own,
/// so its expiry stays, unless Harbor would refuse it (a robot without a
/// valid one, which a Harbor before 2.11 could hold): then
/// [`wanted_duration`].
fn kept_duration(robot: &Robot, days: i64, now: i64) -> i64 {
    if robot.duration == -1 || robot.duration > 0 { robot.duration } else { wanted_duration(robot, days, now) }
}

/// What the spec asks for, checked before Harbor is called.
pub(super) struct Target {
    pub(super) base: Url,
    registry: String,
    pub(super) projects: Vec<String>,
    pub(super) duration_days: i64,
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

/// Fuzzing entry point (`fuzz/`): Harbor's answers (robot lists, a robot,
/// a created robot, a new secret, an error body, system info) and the
/// stored provider state on arbitrary input.
pub(super) fn fuzz_parse(data: &[u8]) {
    client::fuzz_parse(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = State::parse(Some(&v));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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
    fn a_duration_of_zero_is_never_sent() {
        // Harbor 2.11+ refuses 0; before, a PUT with 0 expired the robot at
        // its creation time (src/server/v2.0/handler/robot.go).
        let created = 1_767_225_600;
        let at = |duration: i64| {
            robot(json!({"id": 1, "name": "robot$x", "duration": duration,
                "creation_time": "2026-01-01T00:00:00Z", "expires_at": created + duration * 86_400}))
        };
        // The published robot's own duration is kept when Harbor takes it...
        assert_eq!(kept_duration(&at(30), 7, created + 86_400), 30);
        assert_eq!(kept_duration(&at(-1), 7, created), -1);
        // ...and replaced when it is 0 or missing (serde's default).
        assert_eq!(kept_duration(&at(0), 7, created + 3 * 86_400), 10);
        let missing = robot(json!({"id": 1, "name": "robot$x"}));
        assert_eq!(missing.duration, 0);
        assert_eq!(kept_duration(&missing, 7, created), 7);
        for days in [1, 30, 3650] {
            for now in [created - 10, created, created + 1, created + 400 * 86_400] {
                assert!(wanted_duration(&at(30), days, now) >= days);
                assert!(kept_duration(&at(0), days, now) >= 1);
            }
        }
        assert_eq!(wanted_duration(&at(30), 3650, i64::MAX / 2), i64::from(i32::MAX) - 1, "below Harbor's limit");
    }
}
