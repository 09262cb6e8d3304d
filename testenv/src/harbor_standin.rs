//! A Harbor stand-in for tests: the robot account endpoints of Harbor's API
//! v2.0, as its swagger (`api/v2.0/swagger.yaml`) and its handlers define
//! them, with HTTP Basic authentication, robots kept in memory.
//!
//! - `POST /api/v2.0/robots` `{name, description, duration, level,
//!   permissions}` → `201 {id, name: "robot$NAME", secret, creation_time,
//!   expires_at}`; a taken name is `409`, an unknown project `404`, a name
//!   outside `^[a-z0-9]+(?:[._-][a-z0-9]+)*$` `400`.
//! - `GET /api/v2.0/robots?q=name=NAME` (exact) or `q=name=~PART` (fuzzy):
//!   the system robots.
//! - `GET /api/v2.0/robots/{id}` → the robot without its secret.
//! - `PUT /api/v2.0/robots/{id}` → updates description, permissions,
//!   `disable` and `duration`; name and level may not change.
//! - `PATCH /api/v2.0/robots/{id}` `{secret?}` → a new secret: generated and
//!   returned when `secret` is empty, as Harbor does.
//! - `DELETE /api/v2.0/robots/{id}`.
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
//! accepts exactly the robots' current, unexpired, enabled secrets (and the
//! admin accounts), so a refreshed or deleted robot's old secret really
//! stops working.
//!
//! Knobs: [`HarborStandin::fail_next`] answers the next API requests with
//! an error status, [`HarborStandin::set_down`] drops API connections
//! without an answer (the registry keeps serving), [`HarborStandin::calls`]
//! lists the API requests served, [`HarborStandin::delete_robot`] deletes a
//! robot "by hand". With [`Options::tls`] it serves HTTPS with a certificate
//! from its own CA ([`HarborStandin::ca_pem`]).
//!
//! Every secret it issues is recorded with
//! [`crate::operator::record_secret`] for the suite's leak check.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use k8s_openapi::jiff::Timestamp;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

use crate::standin_http::{Conn, Request, Response, Server, read_request};
use crate::tokenauth::Validator;

/// The largest request head or body read.
const MAX_REQUEST: usize = 1024 * 1024;

/// How to start a stand-in.
#[derive(Clone, Debug)]
pub struct Options {
    /// Accounts allowed to manage robots (Harbor system administrators).
    pub admins: Vec<(String, String)>,
    /// Projects that exist.
    pub projects: Vec<String>,
    /// Length of one day of robot `duration`.
    pub day: Duration,
    /// Prefix Harbor puts in front of system robot names.
    pub robot_prefix: String,
    /// Serve HTTPS with a certificate from the stand-in's own CA.
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            admins: vec![("admin".into(), "Harbor12345".into())],
            projects: vec!["library".into()],
            day: Duration::from_secs(86_400),
            robot_prefix: "robot$".into(),
            tls: false,
        }
    }
}

/// A robot as the stand-in keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RobotInfo {
    pub id: i64,
    /// The name as created, without the prefix.
    pub name: String,
    /// The login name: prefix + name.
    pub login: String,
    pub description: String,
    pub level: String,
    /// In days.
    pub duration: i64,
    pub disabled: bool,
    /// Unix seconds; -1 never.
    pub expires_at: i64,
    pub creation_time: i64,
    /// `(project, [(resource, action)])`, sorted.
    pub permissions: Vec<(String, Vec<(String, String)>)>,
}

impl RobotInfo {
    /// Projects the robot has any access to.
    pub fn projects(&self) -> Vec<String> {
        self.permissions.iter().map(|(p, _)| p.clone()).collect()
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

#[derive(Default)]
struct Data {
    users: BTreeMap<String, (String, bool)>,
    projects: BTreeSet<String>,
    robots: BTreeMap<i64, Robot>,
    next_id: i64,
    fail: VecDeque<u16>,
    down: bool,
    calls: Vec<String>,
    upstream: Option<String>,
}

struct Shared {
    data: Mutex<Data>,
    day_secs: i64,
    prefix: String,
    rng: SystemRandom,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Shared {
    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn valid(&self, user: &str, pass: &str) -> bool {
        let data = self.data();
        if data.users.get(user).is_some_and(|(p, _)| p == pass) {
            return true;
        }
        let now = now();
        data.robots.values().any(|r| {
            r.info.login == user
                && r.secret == pass
                && !r.info.disabled
                && (r.info.expires_at == -1 || now < r.info.expires_at)
        })
    }

    /// A secret as Harbor makes them: 32 characters with at least one
    /// lowercase letter, uppercase letter and digit.
    fn new_secret(&self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        loop {
            let mut bytes = [0u8; 32];
            self.rng.fill(&mut bytes).expect("randomness");
            let s: String = bytes.iter().map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char).collect();
            if s.chars().any(|c| c.is_ascii_lowercase())
                && s.chars().any(|c| c.is_ascii_uppercase())
                && s.chars().any(|c| c.is_ascii_digit())
            {
                crate::operator::record_secret(&s);
                return s;
            }
        }
    }
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
        let (tls, ca_pem) = if options.tls {
            let (config, ca) = tls_config()?;
            (Some(Arc::new(config)), Some(ca))
        } else {
            (None, None)
        };
        let day_secs = i64::try_from(options.day.as_secs()).unwrap_or(86_400).max(1);
        let data = Data {
            users: options.admins.iter().map(|(u, p)| (u.clone(), (p.clone(), true))).collect(),
            projects: options.projects.iter().cloned().collect(),
            next_id: 1,
            ..Default::default()
        };
        for (_, p) in &options.admins {
            crate::operator::record_secret(p);
        }
        let shared = Arc::new(Shared {
            data: Mutex::new(data),
            day_secs,
            prefix: options.robot_prefix.clone(),
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

    /// A token-service validator accepting exactly the robots' current,
    /// unexpired secrets and the admin accounts.
    pub fn validator(&self) -> Validator {
        let shared = self.shared.clone();
        Arc::new(move |user: &str, pass: &str| shared.valid(user, pass))
    }

    /// Whether `user`/`pass` would be accepted at the registry now.
    pub fn accepts(&self, user: &str, pass: &str) -> bool {
        self.shared.valid(user, pass)
    }

    /// Adds an account; `admin: false` gets 403 on the robot endpoints.
    pub fn add_user(&self, name: &str, password: &str, admin: bool) {
        crate::operator::record_secret(password);
        self.shared.data().users.insert(name.into(), (password.into(), admin));
    }

    /// Creates a project.
    pub fn add_project(&self, name: &str) {
        self.shared.data().projects.insert(name.into());
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

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A CA and a serving certificate for 127.0.0.1 signed by it:
/// (server configuration, CA PEM).
fn tls_config() -> Result<(rustls::ServerConfig, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "regcred-test-harbor-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])?;
    leaf.distinguished_name.push(DnType::CommonName, "harbor-standin");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, ca_cert.pem()))
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

/// Harbor's error body.
fn error(status: u16, message: &str) -> Response {
    let code = match status {
        400 => "BAD_REQUEST",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        409 => "CONFLICT",
        429 => "TOO_MANY_REQUESTS",
        _ => "UNKNOWN",
    };
    Response::json(status, &json!({"errors": [{"code": code, "message": message}]}))
}

fn handle(shared: &Shared, data: &mut Data, req: &Request) -> Response {
    let Some(rest) = req.path.strip_prefix("/api/v2.0/") else {
        return error(404, "not found");
    };
    let user = req.basic_credentials().and_then(|(u, p)| data.users.get(&u).filter(|(want, _)| *want == p).map(|_| u));
    let Some(user) = user else {
        return error(401, "unauthorized");
    };
    let admin = data.users.get(&user).is_some_and(|(_, admin)| *admin);
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        ["robots"] | ["robots", _] if !admin => error(403, &format!("{user} has no permission on system robots")),
        ["robots"] => match req.method.as_str() {
            "POST" => create(shared, data, req),
            "GET" => list(data, req),
            _ => error(405, "method not allowed"),
        },
        ["robots", id] => {
            let Ok(id) = id.parse::<i64>() else {
                return error(400, "robot_id must be an integer");
            };
            if !data.robots.contains_key(&id) {
                return error(404, &format!("robot {id} not found"));
            }
            match req.method.as_str() {
                "GET" => Response::json(200, &robot_json(&data.robots[&id].info)),
                "PUT" => update(shared, data, id, req),
                "PATCH" => refresh(shared, data, id, req),
                "DELETE" => {
                    data.robots.remove(&id);
                    Response::empty(200)
                }
                _ => error(405, "method not allowed"),
            }
        }
        _ => error(404, "not found"),
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
        "permissions": r.permissions.iter().map(|(ns, access)| json!({
            "kind": "project",
            "namespace": ns,
            "access": access.iter().map(|(res, act)| json!({"resource": res, "action": act, "effect": "allow"})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn rfc3339(unix: i64) -> String {
    Timestamp::from_second(unix).map(|t| t.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string()).unwrap_or_default()
}

/// Harbor's check of robot names.
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

/// The permissions of a request body, checked as Harbor does.
type Permissions = Vec<(String, Vec<(String, String)>)>;

fn permissions_of(data: &Data, body: &Value) -> Result<Permissions, Response> {
    let Some(perms) = body["permissions"].as_array().filter(|p| !p.is_empty()) else {
        return Err(error(400, "bad request empty permission"));
    };
    let mut out: Permissions = Vec::new();
    for p in perms {
        let kind = p["kind"].as_str().unwrap_or_default();
        let ns = p["namespace"].as_str().unwrap_or_default();
        if kind != "project" {
            return Err(error(400, &format!("permission kind {kind:?} is not supported by this stand-in")));
        }
        if !data.projects.contains(ns) {
            return Err(error(404, &format!("project {ns} not found")));
        }
        let mut access: Vec<(String, String)> = p["access"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        (
                            x["resource"].as_str().unwrap_or_default().to_string(),
                            x["action"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if access.is_empty() {
            return Err(error(400, "bad request empty access"));
        }
        access.sort();
        access.dedup();
        out.push((ns.to_string(), access));
    }
    out.sort();
    Ok(out)
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

fn create(shared: &Shared, data: &mut Data, req: &Request) -> Response {
    let body = match parse_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let name = body["name"].as_str().unwrap_or_default().to_string();
    if !valid_name(&name) {
        return error(400, "robot name is not in lower case or contains illegal characters");
    }
    let level = body["level"].as_str().unwrap_or_default().to_string();
    if level != "system" {
        return error(400, &format!("bad request error level input: {level}"));
    }
    let Some(duration) = body["duration"].as_i64().filter(|d| *d >= -1) else {
        return error(400, "bad request error duration input");
    };
    let permissions = match permissions_of(data, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if data.robots.values().any(|r| r.info.name == name) {
        return error(409, &format!("robot account {name} already exists"));
    }
    let id = data.next_id;
    data.next_id += 1;
    let created = now();
    let duration = if duration == 0 { 30 } else { duration };
    let info = RobotInfo {
        id,
        login: format!("{}{name}", shared.prefix),
        name,
        description: body["description"].as_str().unwrap_or_default().to_string(),
        level,
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

fn list(data: &Data, req: &Request) -> Response {
    let q = form_urlencoded::parse(req.query.as_bytes()).find(|(k, _)| k == "q").map(|(_, v)| v.into_owned());
    let mut robots: Vec<&RobotInfo> = data.robots.values().map(|r| &r.info).filter(|r| r.level == "system").collect();
    if let Some(q) = q {
        for term in q.split(',').filter(|t| !t.is_empty()) {
            let Some((key, value)) = term.split_once('=') else {
                return error(400, &format!("invalid query {term:?}"));
            };
            if key != "name" {
                return error(400, &format!("query key {key:?} is not supported by this stand-in"));
            }
            robots.retain(|r| match value.strip_prefix('~') {
                Some(part) => r.name.contains(part),
                None => r.name == value,
            });
        }
    }
    let body: Vec<Value> = robots.iter().map(|r| robot_json(r)).collect();
    let mut response = Response::json(200, &Value::Array(body));
    response.headers.push(("X-Total-Count", robots.len().to_string()));
    response
}

fn update(shared: &Shared, data: &mut Data, id: i64, req: &Request) -> Response {
    let body = match parse_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(duration) = body["duration"].as_i64().filter(|d| *d >= -1) else {
        return error(400, "bad request error duration input");
    };
    let permissions = match permissions_of(data, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let robot = data.robots.get_mut(&id).expect("checked by the caller");
    if body["level"].as_str() != Some(robot.info.level.as_str()) || body["name"].as_str() != Some(&robot.info.login) {
        return error(400, "cannot update the level or name of robot");
    }
    if duration != robot.info.duration {
        robot.info.duration = if duration == 0 { 30 } else { duration };
        robot.info.expires_at = expiry(shared, robot.info.creation_time, robot.info.duration);
    }
    robot.info.description = body["description"].as_str().unwrap_or_default().to_string();
    robot.info.disabled = body["disable"].as_bool().unwrap_or(false);
    robot.info.permissions = permissions;
    Response::empty(200)
}

fn refresh(shared: &Shared, data: &mut Data, id: i64, req: &Request) -> Response {
    let body = match parse_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let robot = data.robots.get_mut(&id).expect("checked by the caller");
    match body["secret"].as_str().filter(|s| !s.is_empty()) {
        Some(given) => {
            let valid = given.len() >= 8
                && given.chars().any(|c| c.is_ascii_lowercase())
                && given.chars().any(|c| c.is_ascii_uppercase())
                && given.chars().any(|c| c.is_ascii_digit());
            if !valid {
                return error(
                    400,
                    "the secret must longer than 8 chars with at least 1 uppercase letter, 1 lowercase letter and 1 number",
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
                "{} {} projects={:?} duration={} expires_at={}",
                r.id,
                r.login,
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

    #[test]
    fn robots_follow_harbors_semantics() -> Result<()> {
        let standin = HarborStandin::start(Options { day: Duration::from_secs(10), ..Default::default() })?;
        let admin = Some(("admin", "Harbor12345"));
        let new = json!({"name": "ci", "duration": 2, "level": "system", "permissions": [
            {"kind": "project", "namespace": "library", "access": [{"resource": "repository", "action": "pull"}]}]});
        assert_eq!(call(&standin, "POST", "/api/v2.0/robots", None, Some(new.clone())).0, 401);
        let (status, created) = call(&standin, "POST", "/api/v2.0/robots", admin, Some(new.clone()));
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["name"], "robot$ci");
        let first = created["secret"].as_str().unwrap().to_string();
        let created_at = standin.robots()[0].creation_time;
        assert_eq!(created["expires_at"], created_at + 20);
        assert!(standin.accepts("robot$ci", &first));
        assert_eq!(call(&standin, "POST", "/api/v2.0/robots", admin, Some(new.clone())).0, 409);

        let (status, refreshed) = call(&standin, "PATCH", "/api/v2.0/robots/1", admin, Some(json!({})));
        assert_eq!(status, 200);
        let second = refreshed["secret"].as_str().unwrap().to_string();
        assert!(!standin.accepts("robot$ci", &first) && standin.accepts("robot$ci", &second));
        assert_eq!(standin.robots()[0].expires_at, created_at + 20, "a refresh does not move the expiry");

        let (_, mut robot) = call(&standin, "GET", "/api/v2.0/robots/1", admin, None);
        robot["duration"] = json!(5);
        assert_eq!(call(&standin, "PUT", "/api/v2.0/robots/1", admin, Some(robot.clone())).0, 200);
        assert_eq!(standin.robots()[0].expires_at, created_at + 50, "counted from the creation time");
        robot["name"] = json!("robot$other");
        assert_eq!(call(&standin, "PUT", "/api/v2.0/robots/1", admin, Some(robot)).0, 400);

        let (status, found) = call(&standin, "GET", "/api/v2.0/robots?q=name%3Dci", admin, None);
        assert_eq!((status, found.as_array().unwrap().len()), (200, 1));
        let (_, none) = call(&standin, "GET", "/api/v2.0/robots?q=name%3Dc", admin, None);
        assert!(none.as_array().unwrap().is_empty());

        let mut missing = new.clone();
        missing["name"] = json!("other");
        missing["permissions"][0]["namespace"] = json!("nope");
        assert_eq!(call(&standin, "POST", "/api/v2.0/robots", admin, Some(missing)).0, 404);
        standin.add_user("dev", "DevPassw0rd", false);
        assert_eq!(call(&standin, "GET", "/api/v2.0/robots/1", Some(("dev", "DevPassw0rd")), None).0, 403);
        standin.fail_next(1, 503);
        assert_eq!(call(&standin, "GET", "/api/v2.0/robots/1", admin, None).0, 503);
        assert_eq!(call(&standin, "DELETE", "/api/v2.0/robots/1", admin, None).0, 200);
        assert!(!standin.accepts("robot$ci", &second));
        assert_eq!(call(&standin, "GET", "/api/v2.0/robots/1", admin, None).0, 404);
        assert!(standin.count("POST /api/v2.0/robots") >= 3);
        Ok(())
    }

    #[test]
    fn expired_robots_are_refused() -> Result<()> {
        let standin = HarborStandin::start(Options { day: Duration::from_secs(1), ..Default::default() })?;
        let new = json!({"name": "short", "duration": 1, "level": "system", "permissions": [
            {"kind": "project", "namespace": "library", "access": [{"resource": "repository", "action": "pull"}]}]});
        let (_, created) = call(&standin, "POST", "/api/v2.0/robots", Some(("admin", "Harbor12345")), Some(new));
        let secret = created["secret"].as_str().unwrap();
        assert!(standin.accepts("robot$short", secret));
        std::thread::sleep(Duration::from_millis(2100));
        assert!(!standin.accepts("robot$short", secret));
        Ok(())
    }

    #[test]
    fn names_are_checked_like_harbor() {
        assert!(valid_name("regcred-ns-x-0a1b2c3d-a"));
        assert!(!valid_name("a--b") && !valid_name("A") && !valid_name("a+b") && !valid_name("-a"));
    }
}
