//! A Harbor stand-in for tests: the robot account endpoints of Harbor's API
//! v2.0 and `GET /api/v2.0/systeminfo`, as Harbor's swagger
//! (`api/v2.0/swagger.yaml`) and its handlers define them, with HTTP Basic
//! authentication as Harbor's security middleware does it, robots kept in
//! memory. It behaves as Harbor 2.12 to 2.15 by default; [`Options::version`]
//! selects the older rules where they differ (noted where they apply).
//!
//! Robot endpoints (`src/server/v2.0/handler/robot.go`):
//! - `POST /api/v2.0/robots` `{name, description, duration, level,
//!   permissions}` → `201 {id, name: "robot$NAME", secret, creation_time,
//!   expires_at}`. Checked in Harbor's order: the name
//!   (`^[a-z0-9]+(?:[._-][a-z0-9]+)*$`, else `400`), the duration (`-1` or
//!   a positive number of days, else `400`), level and permissions (`400`),
//!   the caller's right to create robots at that level (`401`/`403`), a
//!   robot caller's own permissions (`403 DENIED`), the project (`404`), a
//!   taken name (`409`). A project robot is named `robot$PROJECT+NAME`.
//! - `GET /api/v2.0/robots?q=name=NAME` (exact) or `q=name=~PART` (fuzzy),
//!   optionally `Level=project,ProjectID=N`; without `Level`, the system
//!   robots.
//! - `GET /api/v2.0/robots/{id}` → the robot without its secret.
//! - `PUT /api/v2.0/robots/{id}` → updates description, permissions,
//!   `disable` and `duration` (omitted: kept); `name` (with its prefix) and
//!   `level` may not change.
//! - `PATCH /api/v2.0/robots/{id}` `{secret?}` → a new secret: generated and
//!   returned when `secret` is empty, as Harbor does.
//! - `DELETE /api/v2.0/robots/{id}`.
//!
//! Every robot call but create checks authentication first (`401`), then
//! that the robot exists (`404`), then the caller's right (`403`). Errors
//! are Harbor's body, `{"errors":[{"code":"UNAUTHORIZED"|"FORBIDDEN"|
//! "DENIED"|"BAD_REQUEST"|"NOT_FOUND"|"CONFLICT","message":...}]}`, with
//! Harbor's messages (`src/lib/errors/const.go`, `src/lib/http/error.go`).
//!
//! Who may do what (see [`Options::auth_mode`], [`User`]):
//! - Harbor's `admin` (the first of [`Options::admins`], user id 1) signs in
//!   with its database password in every auth mode
//!   (`src/core/auth/authenticator.go`, `Login`/`IsSuperUser`).
//! - Other users sign in with their database password (`db_auth`), their
//!   LDAP password (`ldap_auth`) or, in `oidc_auth`, with their CLI secret
//!   only on the paths Harbor allows it: `/service/token`, `/v2…` and a few
//!   listing calls, never the robot API
//!   (`src/server/middleware/security/oidc_cli.go`, `valid()`).
//! - A system administrator may manage every robot; a user with a project
//!   role may manage the project robots its role allows (project admin:
//!   all; maintainer, developer, guest: read and list), and no system robot
//!   (`src/common/security/local/context.go`,
//!   `src/common/rbac/project/rbac_role.go`).
//! - A robot signs in with `robot$NAME` and its secret while enabled and
//!   unexpired (`src/server/middleware/security/robot.go`); it may do what
//!   its own permissions grant (`src/common/security/robot/context.go`).
//!   From Harbor 2.12 a robot may hold `robot` create, read, list and
//!   delete, never update, and creates only robots within its own
//!   permissions (`src/common/rbac/const.go`, `NolimitProvider`).
//!
//! As in Harbor, `expires_at = creation_time + duration` days, a secret
//! refresh does not move it, and a changed `duration` is counted from the
//! creation time again. The length of a "day" is an option of the stand-in
//! ([`Options::day`]), so tests can shorten robot lifetimes; clients only
//! ever see `expires_at`.
//!
//! Like Harbor, it also serves the registry: requests under `/v2/` are
//! passed to a registry set with [`HarborStandin::proxy_registry`], so the
//! registry host of the Secrets is Harbor's own host. [`HarborStandin::validator`]
//! is a [`Validator`] for the token service in front of that registry: it
//! accepts exactly the logins Harbor's `/service/token` would (robots'
//! current, unexpired, enabled secrets; users by the auth mode's rules), so
//! a refreshed or deleted robot's old secret really stops working.
//!
//! Knobs: [`HarborStandin::fail_next`] answers the next API requests with
//! an error status, [`HarborStandin::set_down`] drops API connections
//! without an answer (the registry keeps serving), [`HarborStandin::calls`]
//! lists the API requests served, [`HarborStandin::delete_robot`] deletes a
//! robot "by hand". With [`Options::tls`] it serves HTTPS with a certificate
//! from its own CA ([`HarborStandin::ca_pem`]).
//!
//! Not modelled: Harbor locks an account for a moment after a wrong
//! password; OIDC ID tokens (Bearer) on the API; legacy (v1) robots.
//!
//! Every secret it issues is recorded with
//! [`crate::operator::record_secret`] for the suite's leak check.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::jiff::Timestamp;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

use crate::standin_http::{Conn, Request, Response, Server, read_request};
use crate::tokenauth::Validator;

/// The largest request head or body read.
const MAX_REQUEST: usize = 1024 * 1024;
/// Harbor's `robot_token_duration` default (days), which Harbor before
/// 2.11 used for `duration: 0` (`src/controller/robot/controller.go` of
/// v2.10.0).
const DEFAULT_ROBOT_DAYS: i64 = 30;

/// Harbor's `auth_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// `db_auth`: users sign in with their Harbor database password.
    #[default]
    Db,
    /// `ldap_auth`: users sign in with their LDAP password.
    Ldap,
    /// `oidc_auth`: users sign in through an OIDC provider; for the CLI and
    /// the API they have a CLI secret.
    Oidc,
}

impl AuthMode {
    /// The name `GET /api/v2.0/systeminfo` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Db => "db_auth",
            AuthMode::Ldap => "ldap_auth",
            AuthMode::Oidc => "oidc_auth",
        }
    }
}

/// A project role (`src/common/rbac/project/rbac_role.go`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    ProjectAdmin,
    Maintainer,
    Developer,
    Guest,
    LimitedGuest,
}

impl Role {
    /// Whether the role grants `action` on the project's robots:
    /// `projectAdmin` all, `maintainer`/`developer`/`guest` read and list,
    /// `limitedGuest` nothing (`src/common/rbac/project/rbac_role.go`).
    fn allows_robot(self, action: &str) -> bool {
        match self {
            Role::ProjectAdmin => matches!(action, "create" | "read" | "update" | "delete" | "list"),
            Role::Maintainer | Role::Developer | Role::Guest => matches!(action, "read" | "list"),
            Role::LimitedGuest => false,
        }
    }
}

/// A Harbor user other than `admin`.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    /// What the user signs in with: its database password (`db_auth`), its
    /// LDAP password (`ldap_auth`) or its CLI secret (`oidc_auth`).
    pub secret: String,
    /// Harbor system administrator.
    pub sysadmin: bool,
    /// Project memberships.
    pub projects: Vec<(String, Role)>,
}

/// How to start a stand-in.
#[derive(Clone, Debug)]
pub struct Options {
    /// System administrators, `(name, secret)`. The first is Harbor's
    /// `admin` (user id 1), which signs in with its database password in
    /// every auth mode; the others sign in as [`User::secret`] says.
    pub admins: Vec<(String, String)>,
    /// Other users.
    pub users: Vec<User>,
    /// Harbor's auth mode.
    pub auth_mode: AuthMode,
    /// Projects that exist.
    pub projects: Vec<String>,
    /// Length of one day of robot `duration`.
    pub day: Duration,
    /// Prefix Harbor puts in front of robot names.
    pub robot_prefix: String,
    /// The Harbor version `(2, minor)` whose rules apply where they differ:
    /// before 2.10 robot permissions are not checked, before 2.11
    /// `duration: 0` means the default lifetime, before 2.12 robots may not
    /// hold `robot` permissions.
    pub version: (u32, u32),
    /// Serve HTTPS with a certificate from the stand-in's own CA.
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            admins: vec![("admin".into(), "Harbor12345".into())],
            users: Vec::new(),
            auth_mode: AuthMode::Db,
            projects: vec!["library".into()],
            day: Duration::from_secs(86_400),
            robot_prefix: "robot$".into(),
            version: (2, 14),
            tls: false,
        }
    }
}

/// One permission of a robot: `kind` `system` (namespace `/`) or `project`
/// (namespace a project name, or `*` for all projects).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub kind: String,
    pub namespace: String,
    /// `(resource, action, effect)`, sorted; `effect` as given (often empty).
    pub access: Vec<(String, String, String)>,
}

/// A robot as the stand-in keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RobotInfo {
    pub id: i64,
    /// The name as Harbor stores it, without the prefix (`PROJECT+NAME` for
    /// a project robot).
    pub name: String,
    /// The login name: prefix + name.
    pub login: String,
    pub description: String,
    /// `system` or `project`.
    pub level: String,
    /// The project of a project robot; 0 for a system robot.
    pub project_id: i64,
    /// In days.
    pub duration: i64,
    pub disabled: bool,
    /// Unix seconds; -1 never.
    pub expires_at: i64,
    pub creation_time: i64,
    /// Sorted.
    pub permissions: Vec<Permission>,
}

impl RobotInfo {
    /// Projects the robot has any access to.
    pub fn projects(&self) -> Vec<String> {
        self.permissions.iter().filter(|p| p.kind == "project").map(|p| p.namespace.clone()).collect()
    }

    /// `(resource, action)` the robot holds in `namespace`.
    pub fn access_in(&self, namespace: &str) -> Vec<(String, String)> {
        self.permissions
            .iter()
            .filter(|p| p.namespace == namespace)
            .flat_map(|p| p.access.iter().map(|(r, a, _)| (r.clone(), a.clone())))
            .collect()
    }
}

struct Robot {
    info: RobotInfo,
    secret: String,
}

impl std::fmt::Debug for Robot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Robot").field("info", &self.info).field("secret", &"<redacted>").finish()
    }
}

/// A user account.
struct Account {
    /// 1 is Harbor's `admin`.
    id: i64,
    secret: String,
    sysadmin: bool,
    /// Project id → role.
    roles: BTreeMap<i64, Role>,
}

/// Who a request is, as Harbor's security middleware decides it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Principal {
    Anonymous,
    User(String),
    Robot(i64),
}

/// Where an action applies: Harbor's system namespace or a project (by id;
/// 0 for a project that does not exist).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    System,
    Project(i64),
}

#[derive(Default)]
struct Data {
    users: BTreeMap<String, Account>,
    /// Project name → id.
    projects: BTreeMap<String, i64>,
    robots: BTreeMap<i64, Robot>,
    next_id: i64,
    next_user_id: i64,
    fail: VecDeque<u16>,
    down: bool,
    calls: Vec<String>,
    upstream: Option<String>,
}

impl Data {
    fn project_id(&self, name: &str) -> Option<i64> {
        self.projects.get(name).copied()
    }
}

struct Shared {
    data: Mutex<Data>,
    day_secs: i64,
    prefix: String,
    mode: AuthMode,
    version: (u32, u32),
    rng: SystemRandom,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Shared {
    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who Basic credentials on `method path` are, trying Harbor's security
    /// context generators in their order (`src/server/middleware/security/security.go`).
    fn principal(&self, data: &Data, method: &str, path: &str, creds: Option<(String, String)>) -> Principal {
        let Some((user, pass)) = creds else {
            return Principal::Anonymous;
        };
        // oidc_cli.go: a CLI secret, only on the paths `valid()` lists, and
        // not for `admin` (which has no OIDC identity).
        if self.mode == AuthMode::Oidc
            && oidc_cli_path(method, path)
            && !user.starts_with(&self.prefix)
            && data.users.get(&user).is_some_and(|a| a.id != 1 && a.secret == pass)
        {
            return Principal::User(user);
        }
        // robot.go: `robot$NAME`, enabled, unexpired, its secret.
        if let Some(name) = user.strip_prefix(&self.prefix) {
            let now = now();
            return data
                .robots
                .values()
                .find(|r| r.info.name == name)
                .filter(|r| {
                    r.secret == pass && !r.info.disabled && (r.info.expires_at == -1 || r.info.expires_at > now)
                })
                .map(|r| Principal::Robot(r.info.id))
                .unwrap_or(Principal::Anonymous);
        }
        // basic_auth.go → auth.Login: `admin` always against the database;
        // others by the auth mode, where OIDC has no password login.
        match data.users.get(&user) {
            Some(a) if (a.id == 1 || self.mode != AuthMode::Oidc) && a.secret == pass => Principal::User(user),
            _ => Principal::Anonymous,
        }
    }

    /// Whether a login would be accepted at the registry's token service
    /// (`/service/token`) now.
    fn valid(&self, user: &str, pass: &str) -> bool {
        let data = self.data();
        self.principal(&data, "GET", "/service/token", Some((user.to_string(), pass.to_string())))
            != Principal::Anonymous
    }

    /// A secret as Harbor makes them: 32 characters with at least one
    /// lowercase letter, uppercase letter and digit.
    fn new_secret(&self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        loop {
            let mut bytes = [0u8; 32];
            self.rng.fill(&mut bytes).expect("randomness");
            let s: String = bytes.iter().map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char).collect();
            if valid_secret(&s) {
                crate::operator::record_secret(&s);
                return s;
            }
        }
    }

    fn at_least(&self, minor: u32) -> bool {
        self.version >= (2, minor)
    }
}

/// The paths on which Harbor accepts an OIDC user's CLI secret
/// (`src/server/middleware/security/oidc_cli.go`, `valid()`).
fn oidc_cli_path(method: &str, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    if path == "/service/token" || path.starts_with("/v2") {
        return true;
    }
    // The regular expressions of oidc_cli.go, `^/api/v2.0/projects/.*/repositories$` and the like.
    let in_project = path.strip_prefix("/api/v2.0/projects/");
    let repos = in_project.is_some_and(|r| r.ends_with("/repositories"));
    let artifacts = in_project.is_some_and(|r| r.contains("/repositories/") && r.ends_with("/artifacts"));
    let tags =
        in_project.is_some_and(|r| r.contains("/repositories/") && r.contains("/artifacts/") && r.contains("/tags/"));
    match method {
        "POST" => path == "/api/v2.0/projects",
        "GET" => {
            matches!(path, "/api/v2.0/projects" | "/api/v2.0/systeminfo" | "/api/version" | "/api/v2.0/labels")
                || repos
                || artifacts
        }
        "DELETE" => tags,
        _ => false,
    }
}

/// Harbor's rule for robot secrets set by hand: 8 to 128 characters with a
/// lowercase letter, an uppercase letter and a digit
/// (`src/controller/robot/controller.go`, `IsValidSec`).
fn valid_secret(s: &str) -> bool {
    (8..=128).contains(&s.len())
        && s.chars().any(|c| c.is_ascii_lowercase())
        && s.chars().any(|c| c.is_ascii_uppercase())
        && s.chars().any(|c| c.is_ascii_digit())
}

/// A running stand-in on `127.0.0.1`, served from its own threads (no async
/// runtime). Dropping it stops the listener.
pub struct HarborStandin {
    scheme: &'static str,
    ca_pem: Option<String>,
    shared: Arc<Shared>,
    server: Server,
}

impl HarborStandin {
    pub fn start(options: Options) -> Result<HarborStandin> {
        if options.admins.is_empty() {
            bail!("a Harbor stand-in needs its admin account (Options::admins)");
        }
        let (tls, ca_pem) = if options.tls {
            let (config, ca) = crate::standin_http::loopback_tls("regcred-test-harbor-ca", "harbor-standin")?;
            (Some(Arc::new(config)), Some(ca))
        } else {
            (None, None)
        };
        let day_secs = i64::try_from(options.day.as_secs()).unwrap_or(86_400).max(1);
        let mut data = Data { next_id: 1, next_user_id: 1, ..Default::default() };
        for (i, p) in options.projects.iter().enumerate() {
            data.projects.insert(p.clone(), i as i64 + 1);
        }
        let admins = options.admins.iter().map(|(name, secret)| User {
            name: name.clone(),
            secret: secret.clone(),
            sysadmin: true,
            projects: Vec::new(),
        });
        for user in admins.chain(options.users.iter().cloned()) {
            add_account(&mut data, &user)?;
        }
        let shared = Arc::new(Shared {
            data: Mutex::new(data),
            day_secs,
            prefix: options.robot_prefix.clone(),
            mode: options.auth_mode,
            version: options.version,
            rng: SystemRandom::new(),
            tls,
        });
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the Harbor stand-in")?;
        let server = {
            let shared = shared.clone();
            Server::spawn(listener, "harbor-standin", "harbor-standin-conn", move |tcp| serve_connection(&shared, tcp))?
        };
        Ok(HarborStandin { scheme: if options.tls { "https" } else { "http" }, ca_pem, shared, server })
    }

    /// `http://127.0.0.1:PORT` (or `https://`): Harbor's URL.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.server.port())
    }

    /// `127.0.0.1:PORT`: the registry host of Secrets for this Harbor.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port())
    }

    /// PEM of the CA that signed the HTTPS certificate ([`Options::tls`]).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Pass `/v2/` requests to the registry at `host` (`127.0.0.1:PORT`).
    pub fn proxy_registry(&self, host: &str) {
        self.shared.data().upstream = Some(host.to_string());
    }

    /// A token-service validator accepting exactly the logins Harbor's
    /// `/service/token` accepts now.
    pub fn validator(&self) -> Validator {
        let shared = self.shared.clone();
        Arc::new(move |user: &str, pass: &str| shared.valid(user, pass))
    }

    /// Whether `user`/`pass` would be accepted at the registry now.
    pub fn accepts(&self, user: &str, pass: &str) -> bool {
        self.shared.valid(user, pass)
    }

    /// Adds a user; `admin: false` has no project role, so it gets 403 on
    /// every robot endpoint.
    pub fn add_user(&self, name: &str, secret: &str, admin: bool) {
        let user = User { name: name.into(), secret: secret.into(), sysadmin: admin, projects: Vec::new() };
        add_account(&mut self.shared.data(), &user).expect("projects exist");
    }

    /// Adds a user with project roles.
    pub fn add_account(&self, user: &User) -> Result<()> {
        add_account(&mut self.shared.data(), user)
    }

    /// Creates a project.
    pub fn add_project(&self, name: &str) {
        let mut data = self.shared.data();
        let id = data.projects.len() as i64 + 1;
        data.projects.entry(name.into()).or_insert(id);
    }

    /// Creates a robot as `admin` would through `POST /api/v2.0/robots`,
    /// with Harbor's checks: `(login, secret)`.
    pub fn create_robot_as_admin(&self, body: Value) -> Result<(String, String)> {
        let mut data = self.shared.data();
        let admin = data.users.iter().find(|(_, a)| a.id == 1).map(|(n, _)| n.clone()).expect("admin");
        let req = Request {
            method: "POST".into(),
            target: "/api/v2.0/robots".into(),
            path: "/api/v2.0/robots".into(),
            query: String::new(),
            head: String::new(),
            headers: Vec::new(),
            body: serde_json::to_vec(&body)?,
        };
        let response = create(&self.shared, &mut data, &req, &Principal::User(admin));
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.status != 201 {
            bail!("creating the robot: {} {answer}", response.status);
        }
        let field = |k: &str| answer[k].as_str().map(str::to_string).ok_or_else(|| anyhow!("no {k} in {answer}"));
        Ok((field("name")?, field("secret")?))
    }

    /// Answers the next `n` API requests with `status` and a Harbor error body.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut data = self.shared.data();
        data.fail.extend(std::iter::repeat_n(status, n));
    }

    /// While down, API connections are closed without an answer.
    pub fn set_down(&self, down: bool) {
        self.shared.data().down = down;
    }

    /// The API requests received, as `METHOD /path?query`, oldest first.
    pub fn calls(&self) -> Vec<String> {
        self.shared.data().calls.clone()
    }

    /// How many API requests start with `prefix` (`"PATCH /api/v2.0/robots/"`).
    pub fn count(&self, prefix: &str) -> usize {
        self.shared.data().calls.iter().filter(|c| c.starts_with(prefix)).count()
    }

    /// The robots, by id.
    pub fn robots(&self) -> Vec<RobotInfo> {
        self.shared.data().robots.values().map(|r| r.info.clone()).collect()
    }

    /// The robot with this login name.
    pub fn robot_by_login(&self, login: &str) -> Option<RobotInfo> {
        self.robots().into_iter().find(|r| r.login == login)
    }

    /// Deletes a robot as an administrator would in Harbor's UI.
    pub fn delete_robot(&self, id: i64) -> bool {
        self.shared.data().robots.remove(&id).is_some()
    }
}

fn add_account(data: &mut Data, user: &User) -> Result<()> {
    crate::operator::record_secret(&user.secret);
    let mut roles = BTreeMap::new();
    for (project, role) in &user.projects {
        let id = data.project_id(project).ok_or_else(|| anyhow!("no project {project} for {}", user.name))?;
        roles.insert(id, *role);
    }
    let id = data.users.get(&user.name).map(|a| a.id).unwrap_or_else(|| {
        let id = data.next_user_id;
        data.next_user_id += 1;
        id
    });
    data.users.insert(user.name.clone(), Account { id, secret: user.secret.clone(), sysadmin: user.sysadmin, roles });
    Ok(())
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn serve_connection(shared: &Shared, tcp: TcpStream) {
    let timeout = Duration::from_secs(30);
    let mut conn = match &shared.tls {
        Some(config) => match Conn::tls(tcp, timeout, config) {
            Some(conn) => conn,
            None => return,
        },
        None => {
            let mut conn = Conn::plain(tcp, timeout);
            // A TLS ClientHello on plain HTTP (clients with TLS verification
            // off try HTTPS first): answer as Go's server does, so the client
            // falls back to HTTP at once instead of waiting for a timeout.
            let mut first = [0u8; 1];
            if conn.tcp().peek(&mut first).is_ok_and(|n| n == 1) && first[0] == 0x16 {
                let _ = conn
                    .write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n");
                conn.close();
                return;
            }
            conn
        }
    };
    let req = match read_request(&mut conn, MAX_REQUEST) {
        Ok(req) => req,
        Err(_) => {
            // A TLS client that refused the certificate ends up here too.
            conn.close();
            return;
        }
    };
    if req.path == "/v2" || req.path.starts_with("/v2/") {
        proxy(shared, &req, &mut conn);
        conn.close();
        return;
    }
    let response = {
        let mut data = shared.data();
        data.calls.push(if req.query.is_empty() {
            format!("{} {}", req.method, req.path)
        } else {
            format!("{} {}?{}", req.method, req.path, req.query)
        });
        if data.down {
            None
        } else if let Some(status) = data.fail.pop_front() {
            Some(error(status, "injected failure"))
        } else {
            Some(handle(shared, &mut data, &req))
        }
    };
    if let Some(response) = response {
        let _ = conn.write_all(&response.to_bytes());
    }
    conn.close();
}

/// Passes a registry request to the upstream registry and its answer back.
fn proxy(shared: &Shared, req: &Request, conn: &mut Conn) {
    let Some(upstream) = shared.data().upstream.clone() else {
        let _ = conn.write_all(&error(404, "no registry behind this Harbor stand-in").to_bytes());
        return;
    };
    let Ok(mut up) = TcpStream::connect(&upstream) else {
        let _ = conn.write_all(&error(502, "registry unreachable").to_bytes());
        return;
    };
    let _ = up.set_read_timeout(Some(Duration::from_secs(30)));
    // One request per connection: the registry closes after answering.
    let mut head = String::new();
    for (i, line) in req.head.split("\r\n").enumerate() {
        let name = line.split_once(':').map(|(n, _)| n.trim().to_ascii_lowercase()).unwrap_or_default();
        if i > 0 && matches!(name.as_str(), "connection" | "keep-alive" | "proxy-connection") {
            continue;
        }
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    if up.write_all(head.as_bytes()).and_then(|_| up.write_all(&req.body)).is_err() {
        let _ = conn.write_all(&error(502, "registry unreachable").to_bytes());
        return;
    }
    let _ = io::copy(&mut up, conn);
}

/// Harbor's error body: the code of the status as `src/lib/http/error.go`
/// maps them (`DENIED` is a 403 with its own code).
fn error(status: u16, message: &str) -> Response {
    let code = match status {
        400 => "BAD_REQUEST",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        409 => "CONFLICT",
        429 => "TOO_MANY_REQUEST",
        _ => "UNKNOWN",
    };
    coded(status, code, message)
}

fn coded(status: u16, code: &str, message: &str) -> Response {
    Response::json(status, &json!({"errors": [{"code": code, "message": message}]}))
}

fn handle(shared: &Shared, data: &mut Data, req: &Request) -> Response {
    let Some(rest) = req.path.strip_prefix("/api/v2.0/") else {
        return error(404, "not found");
    };
    let who = shared.principal(data, &req.method, &req.path, req.basic_credentials());
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match (segments.as_slice(), req.method.as_str()) {
        (["systeminfo"], "GET") => systeminfo(shared, &who),
        (["robots"], "POST") => create(shared, data, req, &who),
        (["robots"], "GET") => list(data, req, &who),
        (["robots", id], method) if matches!(method, "GET" | "PUT" | "PATCH" | "DELETE") => {
            // Every handler but create starts with RequireAuthenticated,
            // then reads the robot (robot.go).
            if who == Principal::Anonymous {
                return error(401, "unauthorized");
            }
            let Ok(id) = id.parse::<i64>() else {
                return error(400, "robot_id must be an integer");
            };
            let Some(robot) = data.robots.get(&id) else {
                return error(404, &format!("robot {id} not found"));
            };
            let scope = robot_scope(&robot.info);
            match method {
                "GET" => match require(data, &who, "read", scope) {
                    Ok(()) => Response::json(200, &robot_json(&data.robots[&id].info)),
                    Err(r) => r,
                },
                "PUT" => update(shared, data, id, req, &who),
                "PATCH" => refresh(shared, data, id, req, &who),
                _ => match require(data, &who, "delete", scope) {
                    Ok(()) => {
                        data.robots.remove(&id);
                        Response::empty(200)
                    }
                    Err(r) => r,
                },
            }
        }
        (["robots"] | ["robots", _], _) => error(405, "method not allowed"),
        _ => error(404, "not found"),
    }
}

/// `GET /api/v2.0/systeminfo`: public for anyone, the protected part
/// (`harbor_version` and more) for a signed-in caller
/// (`src/server/v2.0/handler/systeminfo.go`).
fn systeminfo(shared: &Shared, who: &Principal) -> Response {
    let mut info = json!({
        "auth_mode": shared.mode.as_str(),
        "primary_auth_mode": false,
        "self_registration": false,
        "banner_message": "",
        "oidc_provider_name": if shared.mode == AuthMode::Oidc { "standin-idp" } else { "" },
    });
    if *who != Principal::Anonymous {
        info["harbor_version"] = json!(format!("v{}.{}.0-standin", shared.version.0, shared.version.1));
        info["has_ca_root"] = json!(false);
        info["read_only"] = json!(false);
        info["project_creation_restriction"] = json!("everyone");
    }
    Response::json(200, &info)
}

/// The scope in which a robot is managed: the system for system robots,
/// its project for project robots (robot.go, `requireAccess`).
fn robot_scope(r: &RobotInfo) -> Scope {
    if r.level == "system" { Scope::System } else { Scope::Project(r.project_id) }
}

/// Whether `who` may do `action` on robots in `scope`.
fn can(data: &Data, who: &Principal, action: &str, scope: Scope) -> bool {
    match who {
        Principal::Anonymous => false,
        Principal::User(name) => {
            let Some(account) = data.users.get(name) else {
                return false;
            };
            // local/context.go: a system administrator may do everything;
            // others only what their project roles give.
            account.sysadmin
                || match scope {
                    Scope::System => false,
                    Scope::Project(id) => account.roles.get(&id).is_some_and(|role| role.allows_robot(action)),
                }
        }
        Principal::Robot(id) => {
            let Some(robot) = data.robots.get(id) else {
                return false;
            };
            // robot/context.go: the robot's own policies; a project robot
            // has only project ones, for its project. An explicit "deny"
            // wins over "allow".
            let matching: Vec<&str> = robot
                .info
                .permissions
                .iter()
                .filter(|p| match scope {
                    Scope::System => p.kind == "system" && robot.info.level == "system",
                    Scope::Project(pid) => {
                        p.kind == "project"
                            && ((p.namespace == "*" && robot.info.level == "system")
                                || data.project_id(&p.namespace) == Some(pid))
                    }
                })
                .flat_map(|p| p.access.iter())
                .filter(|(res, act, _)| res == "robot" && (act == action || act == "*"))
                .map(|(_, _, effect)| effect.as_str())
                .collect();
            !matching.is_empty() && !matching.contains(&"deny")
        }
    }
}

/// base.go, `RequireSystemAccess`/`RequireProjectAccess`: 401 for an
/// anonymous caller; 403 naming the caller at system level, a bare
/// "forbidden" at project level.
fn require(data: &Data, who: &Principal, action: &str, scope: Scope) -> Result<(), Response> {
    if can(data, who, action, scope) {
        return Ok(());
    }
    match (who, scope) {
        (Principal::Anonymous, _) => Err(error(401, "unauthorized")),
        (Principal::User(name), Scope::System) => Err(error(403, name)),
        (Principal::Robot(id), Scope::System) => Err(error(403, &data.robots[id].info.login)),
        (_, Scope::Project(_)) => Err(error(403, "forbidden")),
    }
}

fn robot_json(r: &RobotInfo) -> Value {
    json!({
        "id": r.id,
        "name": r.login,
        "description": r.description,
        "level": r.level,
        "duration": r.duration,
        "disable": r.disabled,
        "editable": true,
        "expires_at": r.expires_at,
        "creation_time": rfc3339(r.creation_time),
        "update_time": rfc3339(r.creation_time),
        "permissions": r.permissions.iter().map(|p| json!({
            "kind": p.kind,
            "namespace": p.namespace,
            "access": p.access.iter().map(|(res, act, effect)| {
                let mut a = json!({"resource": res, "action": act});
                if !effect.is_empty() {
                    a["effect"] = json!(effect);
                }
                a
            }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn rfc3339(unix: i64) -> String {
    Timestamp::from_second(unix).map(|t| t.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string()).unwrap_or_default()
}

/// Harbor's check of robot names (robot.go, `validateName`).
fn valid_name(name: &str) -> bool {
    let mut previous_separator = true;
    for c in name.chars() {
        let separator = matches!(c, '.' | '_' | '-');
        if (separator && previous_separator) || !(separator || c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return false;
        }
        previous_separator = separator;
    }
    !name.is_empty() && !previous_separator
}

/// What robots may be granted, by permission kind: Harbor's
/// `PoliciesMap` plus the `NolimitProvider` additions from 2.12
/// (`src/common/rbac/const.go`), as `resource:action`.
const SYSTEM_ACCESS: &[&str] = &[
    "audit-log:list",
    "preheat-instance:read",
    "preheat-instance:create",
    "preheat-instance:delete",
    "preheat-instance:list",
    "preheat-instance:update",
    "project:list",
    "project:create",
    "replication-policy:read",
    "replication-policy:create",
    "replication-policy:delete",
    "replication-policy:list",
    "replication-policy:update",
    "replication:read",
    "replication:create",
    "replication:list",
    "replication-adapter:list",
    "registry:read",
    "registry:create",
    "registry:delete",
    "registry:list",
    "registry:update",
    "scan-all:read",
    "scan-all:update",
    "scan-all:stop",
    "scan-all:create",
    "system-volumes:read",
    "garbage-collection:read",
    "garbage-collection:create",
    "garbage-collection:list",
    "garbage-collection:update",
    "garbage-collection:stop",
    "purge-audit:read",
    "purge-audit:create",
    "purge-audit:list",
    "purge-audit:update",
    "purge-audit:stop",
    "jobservice-monitor:list",
    "jobservice-monitor:stop",
    "scanner:read",
    "scanner:create",
    "scanner:delete",
    "scanner:list",
    "scanner:update",
    "label:read",
    "label:create",
    "label:delete",
    "label:update",
    "security-hub:read",
    "security-hub:list",
    "catalog:read",
    "quota:read",
    "quota:list",
];
const SYSTEM_ACCESS_2_12: &[&str] = &[
    "robot:create",
    "robot:read",
    "robot:list",
    "robot:delete",
    "user:create",
    "user:read",
    "user:update",
    "user:list",
    "user:delete",
    "ldap-user:create",
    "ldap-user:list",
    "quota:update",
    "user-group:create",
    "user-group:read",
    "user-group:update",
    "user-group:list",
    "user-group:delete",
];
const PROJECT_ACCESS: &[&str] = &[
    "log:list",
    "project:read",
    "project:delete",
    "project:update",
    "metadata:read",
    "metadata:create",
    "metadata:delete",
    "metadata:list",
    "metadata:update",
    "repository:read",
    "repository:update",
    "repository:delete",
    "repository:list",
    "repository:pull",
    "repository:push",
    "artifact:read",
    "artifact:create",
    "artifact:list",
    "artifact:delete",
    "scan:create",
    "scan:read",
    "scan:stop",
    "sbom:create",
    "sbom:stop",
    "sbom:read",
    "tag:create",
    "tag:list",
    "tag:delete",
    "accessory:list",
    "artifact-addition:read",
    "artifact-label:create",
    "artifact-label:delete",
    "scanner:create",
    "scanner:read",
    "preheat-policy:read",
    "preheat-policy:create",
    "preheat-policy:delete",
    "preheat-policy:list",
    "preheat-policy:update",
    "immutable-tag:create",
    "immutable-tag:delete",
    "immutable-tag:list",
    "immutable-tag:update",
    "notification-policy:read",
    "notification-policy:create",
    "notification-policy:delete",
    "notification-policy:list",
    "notification-policy:update",
    "tag-retention:read",
    "tag-retention:create",
    "tag-retention:delete",
    "tag-retention:list",
    "tag-retention:update",
    "label:read",
    "label:create",
    "label:delete",
    "label:list",
    "label:update",
    "quota:read",
];
const PROJECT_ACCESS_2_12: &[&str] = &[
    "robot:create",
    "robot:read",
    "robot:list",
    "robot:delete",
    "export-cve:create",
    "export-cve:read",
    "member:create",
    "member:read",
    "member:update",
    "member:list",
    "member:delete",
];

/// The permissions of a request body, as Harbor reads them.
fn permissions_in(body: &Value) -> Vec<Permission> {
    let mut out: Vec<Permission> = body["permissions"]
        .as_array()
        .map(|perms| {
            perms
                .iter()
                .map(|p| {
                    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                    let mut access: Vec<(String, String, String)> = p["access"]
                        .as_array()
                        .map(|a| {
                            a.iter().map(|x| (text(&x["resource"]), text(&x["action"]), text(&x["effect"]))).collect()
                        })
                        .unwrap_or_default();
                    access.sort();
                    access.dedup();
                    Permission { kind: text(&p["kind"]), namespace: text(&p["namespace"]), access }
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// robot.go, `validate()`: duration, level and permissions, in Harbor's
/// order and words, by version.
fn validate(shared: &Shared, duration: i64, level: &str, body: &Value, perms: &[Permission]) -> Result<(), Response> {
    // `isValidDuration`: from 2.11 (#19829) -1 or 1..2^31-1; before, any
    // value from -1 (0 meaning the default lifetime).
    let valid = if shared.at_least(11) {
        duration == -1 || (duration > 0 && duration < i64::from(i32::MAX))
    } else {
        duration >= -1 && duration < i64::from(i32::MAX)
    };
    if !valid {
        return Err(error(
            400,
            &format!(
                "bad request error duration input: {duration}, duration must be either -1(Never) or a positive integer"
            ),
        ));
    }
    if level != "system" && level != "project" {
        return Err(error(400, &format!("bad request error level input: {level}")));
    }
    let raw = body["permissions"].as_array();
    if raw.is_none_or(|p| p.is_empty() || p.iter().any(Value::is_null)) {
        return Err(error(400, "bad request empty permission"));
    }
    if perms.iter().any(|p| p.access.is_empty()) {
        return Err(error(400, "bad request empty access"));
    }
    if level == "project" && perms.len() > 1 {
        return Err(error(400, "bad request permission"));
    }
    // The access check came with 2.10 (#19598); `robot` and a few more
    // with 2.12 (#20754), without `robot:update` (#21028).
    if shared.at_least(10) {
        for p in perms {
            let (base, extra) = match p.kind.as_str() {
                "system" => (SYSTEM_ACCESS, SYSTEM_ACCESS_2_12),
                "project" => (PROJECT_ACCESS, PROJECT_ACCESS_2_12),
                kind => return Err(error(400, &format!("bad request permission level: {kind}"))),
            };
            for (res, act, _) in &p.access {
                let key = format!("{res}:{act}");
                let allowed = base.contains(&key.as_str()) || (shared.at_least(12) && extra.contains(&key.as_str()));
                if !allowed {
                    return Err(error(400, &format!("bad request permission: {key}")));
                }
            }
        }
    }
    Ok(())
}

/// robot.go, `isValidPermissionScope`: every permission of the new robot
/// must be held by the creating robot, for the same project (or all
/// projects), `resource:action:effect` for `resource:action:effect`.
fn within_scope(creating: &[Permission], creator: &[Permission]) -> bool {
    creating.iter().all(|p| {
        let held = creator
            .iter()
            .find(|c| c.kind == p.kind && c.namespace == p.namespace)
            .or_else(|| creator.iter().find(|c| c.kind == p.kind && c.namespace == "*"));
        held.is_some_and(|c| p.access.iter().all(|a| c.access.contains(a)))
    })
}

/// The scopes Harbor stores for permissions (controller.go, `toScope`):
/// `system` needs namespace `/`, a project must exist.
fn check_scopes(data: &Data, perms: &[Permission]) -> Result<(), Response> {
    for p in perms {
        match p.kind.as_str() {
            "system" if p.namespace == "/" => {}
            "system" => return Err(error(400, "unknown namespace")),
            "project" if p.namespace == "*" || data.project_id(&p.namespace).is_some() => {}
            "project" => return Err(error(404, &format!("project {} not found", p.namespace))),
            _ => return Err(error(400, "unknown robot kind")),
        }
    }
    Ok(())
}

fn parse_body(req: &Request) -> Result<Value, Response> {
    if req.body.is_empty() {
        return Err(error(400, "request body is required"));
    }
    serde_json::from_slice(&req.body).map_err(|e| error(400, &format!("invalid JSON: {e}")))
}

fn expiry(shared: &Shared, created: i64, duration: i64) -> i64 {
    if duration == -1 { -1 } else { created + duration * shared.day_secs }
}

fn create(shared: &Shared, data: &mut Data, req: &Request, who: &Principal) -> Response {
    let body = match parse_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let name = body["name"].as_str().unwrap_or_default().to_string();
    if !valid_name(&name) {
        return error(400, "robot name is not in lower case or contains illegal characters");
    }
    let level = body["level"].as_str().unwrap_or_default().to_string();
    let duration = body["duration"].as_i64().unwrap_or(0);
    let permissions = permissions_in(&body);
    if let Err(r) = validate(shared, duration, &level, &body, &permissions) {
        return r;
    }
    // The first permission's namespace names the project of a project robot.
    let first = body["permissions"][0]["namespace"].as_str().unwrap_or_default();
    let project_id = if level == "project" { data.project_id(first).unwrap_or(0) } else { 0 };
    let scope = if level == "system" { Scope::System } else { Scope::Project(project_id) };
    if let Err(r) = require(data, who, "create", scope) {
        return r;
    }
    if let Principal::Robot(creator) = who
        && shared.at_least(12)
    {
        let creator = &data.robots[creator].info;
        if !within_scope(&permissions, &creator.permissions) {
            return coded(
                403,
                "DENIED",
                &format!(
                    "permission scope is invalid. It must be equal to or more restrictive than the creator robot's \
                     permissions: {}",
                    creator.login
                ),
            );
        }
    }
    if level == "project" && project_id == 0 {
        return error(404, &format!("project {first} not found"));
    }
    let stored = if level == "project" { format!("{first}+{name}") } else { name };
    if data.robots.values().any(|r| r.info.name == stored) {
        return error(409, &format!("robot account {project_id}:{stored} already exists"));
    }
    if let Err(r) = check_scopes(data, &permissions) {
        return r;
    }
    let id = data.next_id;
    data.next_id += 1;
    let created = now();
    let duration = if duration == 0 { DEFAULT_ROBOT_DAYS } else { duration };
    let info = RobotInfo {
        id,
        login: format!("{}{stored}", shared.prefix),
        name: stored,
        description: body["description"].as_str().unwrap_or_default().to_string(),
        level,
        project_id,
        duration,
        disabled: body["disable"].as_bool().unwrap_or(false),
        expires_at: expiry(shared, created, duration),
        creation_time: created,
        permissions,
    };
    let secret = shared.new_secret();
    let answer = json!({
        "id": id,
        "name": info.login,
        "secret": secret,
        "creation_time": rfc3339(created),
        "expires_at": info.expires_at,
    });
    data.robots.insert(id, Robot { info, secret });
    let mut response = Response::json(201, &answer);
    response.headers.push(("Location", format!("/api/v2.0/robots/{id}")));
    response
}

fn list(data: &Data, req: &Request, who: &Principal) -> Response {
    if *who == Principal::Anonymous {
        return error(401, "unauthorized");
    }
    let q = form_urlencoded::parse(req.query.as_bytes()).find(|(k, _)| k == "q").map(|(_, v)| v.into_owned());
    let mut terms: BTreeMap<String, String> = BTreeMap::new();
    for term in q.iter().flat_map(|q| q.split(',')).filter(|t| !t.is_empty()) {
        match term.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                terms.insert(k.to_string(), v.to_string());
            }
            _ => return error(400, r#"the query string must contain "=" and the key/value cannot be empty"#),
        }
    }
    if let Some(key) = terms.keys().find(|k| !matches!(k.as_str(), "name" | "Level" | "ProjectID")) {
        return error(400, &format!("query key {key:?} is not supported by this stand-in"));
    }
    // robot.go, `ListRobot`: system robots unless `Level=project` with a
    // `ProjectID`.
    let scope = match terms.get("Level").map(String::as_str) {
        None | Some("system") => Scope::System,
        Some("project") => match terms.get("ProjectID").map(|p| p.parse::<i64>()) {
            None => return error(400, "must with project ID when to query project robots"),
            Some(Ok(id)) if id > 0 => Scope::Project(id),
            Some(_) => return error(400, "ProjectID must be a positive integer"),
        },
        Some(_) => return error(400, "bad request error level input"),
    };
    if let Err(r) = require(data, who, "list", scope) {
        return r;
    }
    let robots: Vec<&RobotInfo> = data
        .robots
        .values()
        .map(|r| &r.info)
        .filter(|r| robot_scope(r) == scope)
        .filter(|r| match terms.get("name").map(|n| (n.strip_prefix('~'), n)) {
            None => true,
            Some((Some(part), _)) => r.name.contains(part),
            Some((None, exact)) => r.name == *exact,
        })
        .collect();
    let body: Vec<Value> = robots.iter().map(|r| robot_json(r)).collect();
    let mut response = Response::json(200, &Value::Array(body));
    response.headers.push(("X-Total-Count", robots.len().to_string()));
    response
}

/// robot.go, `UpdateRobot`/`updateV2Robot`.
fn update(shared: &Shared, data: &mut Data, id: i64, req: &Request, who: &Principal) -> Response {
    let body = match parse_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let current = data.robots[&id].info.clone();
    // From 2.11 an omitted duration keeps the robot's; before, it is 0.
    let duration = match body["duration"].as_i64() {
        Some(d) => d,
        None if shared.at_least(11) => current.duration,
        None => 0,
    };
    let level = body["level"].as_str().unwrap_or_default();
    let permissions = permissions_in(&body);
    if let Err(r) = validate(shared, duration, level, &body, &permissions) {
        return r;
    }
    let first = body["permissions"][0]["namespace"].as_str().unwrap_or_default();
    let scope = if current.level == "system" {
        Scope::System
    } else {
        match data.project_id(first) {
            Some(pid) if pid == current.project_id => Scope::Project(pid),
            Some(_) => return error(400, "cannot update the project id of robot"),
            None => return error(404, &format!("project {first} not found")),
        }
    };
    if let Err(r) = require(data, who, "update", scope) {
        return r;
    }
    if level != current.level || body["name"].as_str() != Some(current.login.as_str()) {
        return error(400, "cannot update the level or name of robot");
    }
    if let Err(r) = check_scopes(data, &permissions) {
        return r;
    }
    let robot = data.robots.get_mut(&id).expect("checked by the caller");
    if duration != robot.info.duration {
        robot.info.duration = duration;
        robot.info.expires_at = expiry(shared, robot.info.creation_time, duration);
    }
    robot.info.description = body["description"].as_str().unwrap_or_default().to_string();
    robot.info.disabled = body["disable"].as_bool().unwrap_or(false);
    robot.info.permissions = permissions;
    Response::empty(200)
}

/// robot.go, `RefreshSec`: needs the `update` right on the robot.
fn refresh(shared: &Shared, data: &mut Data, id: i64, req: &Request, who: &Principal) -> Response {
    let body = match parse_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = require(data, who, "update", robot_scope(&data.robots[&id].info)) {
        return r;
    }
    let robot = data.robots.get_mut(&id).expect("checked by the caller");
    match body["secret"].as_str().filter(|s| !s.is_empty()) {
        Some(given) => {
            if !valid_secret(given) {
                return error(
                    400,
                    "the secret must be 8-128, inclusively, characters long with at least 1 uppercase letter, 1 \
                     lowercase letter and 1 number",
                );
            }
            crate::operator::record_secret(given);
            robot.secret = given.to_string();
            Response::json(200, &json!({"secret": ""}))
        }
        None => {
            let secret = shared.new_secret();
            robot.secret = secret.clone();
            Response::json(200, &json!({"secret": secret}))
        }
    }
}

/// The robots, one line each, for failure messages.
pub fn describe(standin: &HarborStandin) -> String {
    standin
        .robots()
        .iter()
        .map(|r| {
            format!(
                "{} {} level={} projects={:?} duration={} expires_at={}",
                r.id,
                r.login,
                r.level,
                r.projects(),
                r.duration,
                r.expires_at
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    fn call(
        standin: &HarborStandin,
        method: &str,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut s = TcpStream::connect(standin.host()).unwrap();
        let body = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
        let auth = auth
            .map(|(u, p)| format!("Authorization: Basic {}\r\n", STANDARD.encode(format!("{u}:{p}"))))
            .unwrap_or_default();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n", body.len()).unwrap();
        s.write_all(&body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    fn code(answer: &Value) -> (&str, &str) {
        (
            answer["errors"][0]["code"].as_str().unwrap_or_default(),
            answer["errors"][0]["message"].as_str().unwrap_or_default(),
        )
    }

    fn pull_robot(name: &str, level: &str, project: &str, duration: i64) -> Value {
        json!({"name": name, "duration": duration, "level": level, "permissions": [
            {"kind": "project", "namespace": project, "access": [{"resource": "repository", "action": "pull"}]}]})
    }

    #[test]
    fn robots_follow_harbors_semantics() -> Result<()> {
        let standin = HarborStandin::start(Options { day: Duration::from_secs(10), ..Default::default() })?;
        let admin = Some(("admin", "Harbor12345"));
        let new = pull_robot("ci", "system", "library", 2);
        assert_eq!(call(&standin, "POST", "/api/v2.0/robots", None, Some(new.clone())).0, 401);
        let (status, created) = call(&standin, "POST", "/api/v2.0/robots", admin, Some(new.clone()));
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["name"], "robot$ci");
        let first = created["secret"].as_str().unwrap().to_string();
        let created_at = standin.robots()[0].creation_time;
        assert_eq!(created["expires_at"], created_at + 20);
        assert!(standin.accepts("robot$ci", &first));
        let (status, taken) = call(&standin, "POST", "/api/v2.0/robots", admin, Some(new.clone()));
        assert_eq!((status, code(&taken)), (409, ("CONFLICT", "robot account 0:ci already exists")));

        let (status, refreshed) = call(&standin, "PATCH", "/api/v2.0/robots/1", admin, Some(json!({})));
        assert_eq!(status, 200);
        let second = refreshed["secret"].as_str().unwrap().to_string();
        assert!(!standin.accepts("robot$ci", &first) && standin.accepts("robot$ci", &second));
        assert_eq!(standin.robots()[0].expires_at, created_at + 20, "a refresh does not move the expiry");

        let (_, mut robot) = call(&standin, "GET", "/api/v2.0/robots/1", admin, None);
        robot["duration"] = json!(5);
        assert_eq!(call(&standin, "PUT", "/api/v2.0/robots/1", admin, Some(robot.clone())).0, 200);
        assert_eq!(standin.robots()[0].expires_at, created_at + 50, "counted from the creation time");
        let mut without = robot.clone();
        without.as_object_mut().unwrap().remove("duration");
        assert_eq!(call(&standin, "PUT", "/api/v2.0/robots/1", admin, Some(without)).0, 200);
        assert_eq!(standin.robots()[0].duration, 5, "an omitted duration is kept (2.11+)");
        let mut zero = robot.clone();
        zero["duration"] = json!(0);
        let (status, refused) = call(&standin, "PUT", "/api/v2.0/robots/1", admin, Some(zero));
        assert_eq!((status, code(&refused).0), (400, "BAD_REQUEST"));
        assert!(code(&refused).1.contains("duration input: 0"), "{refused}");
        let mut renamed = robot.clone();
        renamed["name"] = json!("ci");
        let (status, refused) = call(&standin, "PUT", "/api/v2.0/robots/1", admin, Some(renamed));
        assert_eq!(
            (status, code(&refused).1),
            (400, "cannot update the level or name of robot"),
            "name needs the prefix"
        );

        let (status, found) = call(&standin, "GET", "/api/v2.0/robots?q=name%3Dci", admin, None);
        assert_eq!((status, found.as_array().unwrap().len()), (200, 1));
        let (_, none) = call(&standin, "GET", "/api/v2.0/robots?q=name%3Dc", admin, None);
        assert!(none.as_array().unwrap().is_empty());
        let (_, fuzzy) = call(&standin, "GET", "/api/v2.0/robots?q=name%3D~c", admin, None);
        assert_eq!(fuzzy.as_array().unwrap().len(), 1);

        let mut missing = new.clone();
        missing["name"] = json!("other");
        missing["permissions"][0]["namespace"] = json!("nope");
        let (status, answer) = call(&standin, "POST", "/api/v2.0/robots", admin, Some(missing));
        assert_eq!((status, code(&answer)), (404, ("NOT_FOUND", "project nope not found")));
        let mut zero = new.clone();
        zero["name"] = json!("zero");
        zero["duration"] = json!(0);
        let (status, answer) = call(&standin, "POST", "/api/v2.0/robots", admin, Some(zero));
        assert_eq!(
            (status, code(&answer)),
            (
                400,
                (
                    "BAD_REQUEST",
                    "bad request error duration input: 0, duration must be either -1(Never) or a positive integer"
                )
            )
        );
        standin.add_user("dev", "DevPassw0rd", false);
        let (status, answer) = call(&standin, "GET", "/api/v2.0/robots/1", Some(("dev", "DevPassw0rd")), None);
        assert_eq!((status, code(&answer)), (403, ("FORBIDDEN", "dev")), "403 names the account at system level");
        let (status, answer) = call(&standin, "GET", "/api/v2.0/robots/1", Some(("dev", "nope")), None);
        assert_eq!((status, code(&answer)), (401, ("UNAUTHORIZED", "unauthorized")));
        standin.fail_next(1, 503);
        assert_eq!(call(&standin, "GET", "/api/v2.0/robots/1", admin, None).0, 503);
        assert_eq!(call(&standin, "DELETE", "/api/v2.0/robots/1", admin, None).0, 200);
        assert!(!standin.accepts("robot$ci", &second));
        assert_eq!(call(&standin, "GET", "/api/v2.0/robots/1", admin, None).0, 404);
        assert!(standin.count("POST /api/v2.0/robots") >= 3);
        Ok(())
    }

    #[test]
    fn body_checks_come_before_authentication_on_create() -> Result<()> {
        // robot.go checks name, duration and permissions before it looks at
        // the caller.
        let standin = HarborStandin::start(Options::default())?;
        let wrong = Some(("admin", "wrong"));
        let (status, answer) =
            call(&standin, "POST", "/api/v2.0/robots", wrong, Some(pull_robot("x", "system", "library", 0)));
        assert_eq!((status, code(&answer).0), (400, "BAD_REQUEST"));
        let (status, _) =
            call(&standin, "POST", "/api/v2.0/robots", wrong, Some(pull_robot("x", "system", "library", 1)));
        assert_eq!(status, 401);
        Ok(())
    }

    #[test]
    fn project_admins_manage_only_their_projects_robots() -> Result<()> {
        let standin = HarborStandin::start(Options {
            projects: vec!["team".into(), "other".into()],
            users: vec![User {
                name: "lead".into(),
                secret: "Lead-passw0rd".into(),
                sysadmin: false,
                projects: vec![("team".into(), Role::ProjectAdmin), ("other".into(), Role::Developer)],
            }],
            ..Default::default()
        })?;
        let lead = Some(("lead", "Lead-passw0rd"));
        let (status, answer) =
            call(&standin, "POST", "/api/v2.0/robots", lead, Some(pull_robot("sys", "system", "team", 1)));
        assert_eq!((status, code(&answer)), (403, ("FORBIDDEN", "lead")), "no system robots");
        let (status, created) =
            call(&standin, "POST", "/api/v2.0/robots", lead, Some(pull_robot("ci", "project", "team", 1)));
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["name"], "robot$team+ci");
        let id = created["id"].as_i64().unwrap();
        assert_eq!(call(&standin, "PATCH", &format!("/api/v2.0/robots/{id}"), lead, Some(json!({}))).0, 200);
        let (status, answer) =
            call(&standin, "POST", "/api/v2.0/robots", lead, Some(pull_robot("ci", "project", "other", 1)));
        assert_eq!((status, code(&answer)), (403, ("FORBIDDEN", "forbidden")), "a developer may not create");
        let (status, listed) = call(&standin, "GET", "/api/v2.0/robots?q=Level%3Dproject,ProjectID%3D1", lead, None);
        assert_eq!((status, listed.as_array().map(Vec::len)), (200, Some(1)));
        assert_eq!(call(&standin, "GET", "/api/v2.0/robots", lead, None).0, 403, "system robots are not listed");
        let (status, answer) = call(
            &standin,
            "POST",
            "/api/v2.0/robots",
            Some(("admin", "Harbor12345")),
            Some(json!({"name": "two", "duration": 1, "level": "project", "permissions": [
                {"kind": "project", "namespace": "team", "access": [{"resource": "repository", "action": "pull"}]},
                {"kind": "project", "namespace": "other", "access": [{"resource": "repository", "action": "pull"}]}]})),
        );
        assert_eq!((status, code(&answer).1), (400, "bad request permission"), "one project per project robot");
        assert_eq!(call(&standin, "DELETE", &format!("/api/v2.0/robots/{id}"), lead, None).0, 200);
        Ok(())
    }

    #[test]
    fn robots_manage_robots_from_2_12_without_update_and_within_their_scope() -> Result<()> {
        let manager = json!({"name": "manager", "duration": -1, "level": "system", "permissions": [
            {"kind": "system", "namespace": "/", "access": [
                {"resource": "robot", "action": "create"}, {"resource": "robot", "action": "read"},
                {"resource": "robot", "action": "list"}, {"resource": "robot", "action": "delete"}]},
            {"kind": "project", "namespace": "library", "access": [{"resource": "repository", "action": "pull"}]}]});
        let standin =
            HarborStandin::start(Options { projects: vec!["library".into(), "team".into()], ..Default::default() })?;
        let (login, secret) = standin.create_robot_as_admin(manager.clone())?;
        assert_eq!(login, "robot$manager");
        let me = Some((login.as_str(), secret.as_str()));
        let (status, created) =
            call(&standin, "POST", "/api/v2.0/robots", me, Some(pull_robot("ci", "system", "library", 3)));
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_i64().unwrap();
        assert_eq!(call(&standin, "GET", &format!("/api/v2.0/robots/{id}"), me, None).0, 200);
        assert_eq!(call(&standin, "GET", "/api/v2.0/robots?q=name%3Dci", me, None).0, 200);
        let (status, answer) = call(&standin, "PATCH", &format!("/api/v2.0/robots/{id}"), me, Some(json!({})));
        assert_eq!((status, code(&answer)), (403, ("FORBIDDEN", "robot$manager")), "no robot update for robots");
        let (status, answer) =
            call(&standin, "POST", "/api/v2.0/robots", me, Some(pull_robot("other", "system", "team", 3)));
        assert_eq!((status, code(&answer).0), (403, "DENIED"), "team is outside its own permissions");
        assert!(code(&answer).1.contains("robot$manager"), "{answer}");
        assert_eq!(call(&standin, "DELETE", &format!("/api/v2.0/robots/{id}"), me, None).0, 200);
        let mut updater = manager.clone();
        updater["name"] = json!("updater");
        updater["permissions"][0]["access"][0]["action"] = json!("update");
        let e = standin.create_robot_as_admin(updater).unwrap_err().to_string();
        assert!(e.contains("bad request permission: robot:update"), "{e}");

        // Before 2.12 robots may not hold robot permissions at all.
        let old = HarborStandin::start(Options { version: (2, 11), ..Default::default() })?;
        let e = old.create_robot_as_admin(manager).unwrap_err().to_string();
        assert!(e.contains("bad request permission: robot:create"), "{e}");
        Ok(())
    }

    #[test]
    fn auth_modes_decide_who_signs_in_where() -> Result<()> {
        let users =
            vec![User { name: "alice".into(), secret: "Alice-s3cret".into(), sysadmin: true, projects: vec![] }];
        let new = pull_robot("ci", "system", "library", 1);
        for mode in [AuthMode::Db, AuthMode::Ldap, AuthMode::Oidc] {
            let standin =
                HarborStandin::start(Options { users: users.clone(), auth_mode: mode, ..Default::default() })?;
            let (_, info) = call(&standin, "GET", "/api/v2.0/systeminfo", None, None);
            assert_eq!(info["auth_mode"], mode.as_str());
            assert!(info.get("harbor_version").is_none(), "public part only");
            let alice = Some(("alice", "Alice-s3cret"));
            let (_, info) = call(&standin, "GET", "/api/v2.0/systeminfo", alice, None);
            assert!(info["harbor_version"].is_string(), "{mode:?}: signed in on systeminfo");
            let (status, answer) = call(&standin, "POST", "/api/v2.0/robots", alice, Some(new.clone()));
            if mode == AuthMode::Oidc {
                // oidc_cli.go: a CLI secret is no login on the robot API,
                // even for a system administrator.
                assert_eq!((status, code(&answer)), (401, ("UNAUTHORIZED", "unauthorized")));
            } else {
                assert_eq!(status, 201, "{mode:?}: {answer}");
            }
            assert!(standin.accepts("alice", "Alice-s3cret"), "{mode:?}: a registry login works");
            // `admin` signs in with its database password in every mode.
            let (status, answer) = call(&standin, "GET", "/api/v2.0/robots", Some(("admin", "Harbor12345")), None);
            assert_eq!(status, 200, "{mode:?}: {answer}");
        }
        Ok(())
    }

    #[test]
    fn duration_zero_meant_the_default_before_2_11() -> Result<()> {
        let standin = HarborStandin::start(Options { version: (2, 10), ..Default::default() })?;
        let admin = Some(("admin", "Harbor12345"));
        let (status, created) =
            call(&standin, "POST", "/api/v2.0/robots", admin, Some(pull_robot("old", "system", "library", 0)));
        assert_eq!(status, 201, "{created}");
        assert_eq!(standin.robots()[0].duration, DEFAULT_ROBOT_DAYS);
        // A PUT without duration sets it to 0: the robot expires at once.
        let (_, mut robot) = call(&standin, "GET", "/api/v2.0/robots/1", admin, None);
        robot.as_object_mut().unwrap().remove("duration");
        assert_eq!(call(&standin, "PUT", "/api/v2.0/robots/1", admin, Some(robot)).0, 200);
        let r = &standin.robots()[0];
        assert_eq!((r.duration, r.expires_at), (0, r.creation_time));
        Ok(())
    }

    #[test]
    fn expired_robots_are_refused() -> Result<()> {
        let standin = HarborStandin::start(Options { day: Duration::from_secs(1), ..Default::default() })?;
        let (_, created) = call(
            &standin,
            "POST",
            "/api/v2.0/robots",
            Some(("admin", "Harbor12345")),
            Some(pull_robot("short", "system", "library", 1)),
        );
        let secret = created["secret"].as_str().unwrap();
        assert!(standin.accepts("robot$short", secret));
        std::thread::sleep(Duration::from_millis(2100));
        assert!(!standin.accepts("robot$short", secret));
        Ok(())
    }

    #[test]
    fn names_and_cli_paths_are_checked_like_harbor() {
        assert!(valid_name("regcred-ns-x-0a1b2c3d-a"));
        assert!(!valid_name("a--b") && !valid_name("A") && !valid_name("a+b") && !valid_name("-a"));
        for (method, path, ok) in [
            ("GET", "/service/token", true),
            ("GET", "/v2/", true),
            ("GET", "/api/v2.0/systeminfo", true),
            ("GET", "/api/v2.0/projects", true),
            ("POST", "/api/v2.0/projects", true),
            ("GET", "/api/v2.0/projects/p/repositories", true),
            ("GET", "/api/v2.0/projects/p/repositories/r/artifacts", true),
            ("DELETE", "/api/v2.0/projects/p/repositories/r/artifacts/d/tags/t", true),
            ("GET", "/api/v2.0/robots", false),
            ("POST", "/api/v2.0/robots", false),
            ("PATCH", "/api/v2.0/robots/1", false),
            ("GET", "/api/v2.0/projects/p", false),
        ] {
            assert_eq!(oidc_cli_path(method, path), ok, "{method} {path}");
        }
    }
}
