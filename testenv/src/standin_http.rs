//! The small HTTP/1.1 server the stand-ins share: an accept loop with a
//! thread per connection, one request per connection (answers carry
//! `Connection: close`), over plain TCP or TLS.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// An accept loop on a thread of its own. Dropping it stops the loop.
pub(crate) struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Accepts connections on `listener` in a thread named `name`, and
    /// passes each to `serve` in a new thread named `conn_name`.
    pub(crate) fn spawn(
        listener: TcpListener,
        name: &str,
        conn_name: &str,
        serve: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> Result<Server> {
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        let conn_name = conn_name.to_string();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new().name(name.into()).spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let serve = serve.clone();
                    let _ = std::thread::Builder::new().name(conn_name.clone()).spawn(move || serve(conn));
                }
            })?
        };
        Ok(Server { port, stop, thread: Some(thread) })
    }

    /// The port listened on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client connection, plain or TLS.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Conn {
    /// A plain connection whose reads and writes time out after `timeout`.
    pub(crate) fn plain(tcp: TcpStream, timeout: Duration) -> Conn {
        set_timeouts(&tcp, timeout);
        Conn::Plain(tcp)
    }

    /// A TLS connection with `config` whose reads and writes time out after
    /// `timeout`; `None` if rustls refuses to start one.
    pub(crate) fn tls(tcp: TcpStream, timeout: Duration, config: &Arc<rustls::ServerConfig>) -> Option<Conn> {
        set_timeouts(&tcp, timeout);
        let server = rustls::ServerConnection::new(config.clone()).ok()?;
        Some(Conn::Tls(Box::new(rustls::StreamOwned::new(server, tcp))))
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    /// Flushes, sends a TLS `close_notify` if it is TLS, and shuts the
    /// socket down.
    pub(crate) fn close(mut self) {
        let _ = self.flush();
        if let Conn::Tls(s) = &mut self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

fn set_timeouts(tcp: &TcpStream, timeout: Duration) {
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Reads one request from `conn`, writes the response `answer` makes of it
/// (or of the error reading it) and closes the connection.
pub(crate) fn answer_once(mut conn: Conn, max_request: usize, answer: impl FnOnce(Result<Request>) -> Response) {
    let response = answer(read_request(&mut conn, max_request));
    let _ = conn.write_all(&response.to_bytes());
    conn.close();
}

/// A parsed HTTP/1.1 request.
pub(crate) struct Request {
    pub(crate) method: String,
    /// The request target as sent (path and query).
    pub(crate) target: String,
    pub(crate) path: String,
    pub(crate) query: String,
    /// The request line and header lines as received.
    pub(crate) head: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The form fields of the query and of the body; a field of the body
    /// wins over the query's, a later one over an earlier.
    pub(crate) fn form(&self) -> HashMap<String, String> {
        let mut out: HashMap<String, String> = parse_form(&self.query).into_iter().collect();
        out.extend(self.body_form());
        out
    }

    /// The form fields of the body; a later one wins over an earlier.
    pub(crate) fn body_form(&self) -> HashMap<String, String> {
        parse_form(&String::from_utf8_lossy(&self.body)).into_iter().collect()
    }

    /// The credentials of an `Authorization: Basic ...` header.
    pub(crate) fn basic_credentials(&self) -> Option<(String, String)> {
        let (scheme, encoded) = self.header("authorization")?.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        Some((user.to_string(), pass.to_string()))
    }
}

/// Reads a request head and the `Content-Length` bytes of body that follow
/// (fewer if the peer closes first). A head or body over `max` bytes is an
/// error.
pub(crate) fn read_request(conn: &mut impl Read, max: usize) -> Result<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > max {
            bail!("request head too large");
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the request head ended");
        }
        buf.extend_from_slice(&chunk[..n]);
        // A TLS handshake record (0x16) on a plain HTTP port, as clients
        // that try HTTPS first send (skopeo with --tls-verify=false): answer
        // at once, so that they fall back to HTTP instead of waiting for a
        // head that never comes.
        if buf.first() == Some(&0x16) {
            bail!("a TLS handshake on a plain HTTP port");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split_whitespace();
    let method = parts.next().context("no method")?.to_string();
    let target = parts.next().context("no request target")?.to_string();
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let (path, query) = (path.to_string(), query.to_string());
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    let mut req = Request { method, target, path, query, head, headers, body: buf[head_end + 4..].to_vec() };
    let length: usize = req.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    if length > max {
        bail!("request body too large");
    }
    while req.body.len() < length {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        req.body.extend_from_slice(&chunk[..n]);
    }
    req.body.truncate(length);
    Ok(req)
}

/// An answer; [`Response::to_bytes`] adds `Content-Length` and
/// `Connection: close` after `headers`.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn new(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response { status, headers: vec![("Content-Type", content_type.to_string())], body }
    }

    /// No body and no `Content-Type`.
    pub(crate) fn empty(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    /// `text` and a newline, as `text/plain`.
    pub(crate) fn text(status: u16, text: &str) -> Response {
        Response::new(status, "text/plain; charset=utf-8", format!("{text}\n").into_bytes())
    }

    pub(crate) fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(status, "application/json", serde_json::to_vec(value).unwrap_or_default())
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// The reason phrase of a status the stand-ins send.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Decodes an `application/x-www-form-urlencoded` string (a query or a form
/// body) into its pairs, in order; keys may repeat.
pub(crate) fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `+` is a space and `%XX` a byte; a `%` without two hex digits stays.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `req` to `upstream` (`HOST:PORT`) as it came, on a connection of
/// its own (`Connection: close`, hop-by-hop headers dropped), and returns
/// the raw answer: the stand-ins that sit in front of a real server (moto,
/// a registry) relay through it.
pub fn forward(upstream: &str, req: &Request, timeout: Duration) -> Result<Vec<u8>> {
    let mut up = TcpStream::connect(upstream).with_context(|| format!("connecting to {upstream}"))?;
    up.set_read_timeout(Some(timeout))?;
    up.set_write_timeout(Some(timeout))?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (name, value) in &req.headers {
        if !["connection", "keep-alive", "proxy-connection"].iter().any(|h| name.eq_ignore_ascii_case(h)) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    up.write_all(head.as_bytes())?;
    up.write_all(&req.body)?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw)?;
    Ok(raw)
}

/// A test CA named `ca_name` and a serving certificate for 127.0.0.1 and
/// localhost (`server_name`) signed by it, for the stand-ins that speak
/// HTTPS: (server configuration, CA PEM).
pub fn loopback_tls(ca_name: &str, server_name: &str) -> Result<(rustls::ServerConfig, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])?;
    leaf.distinguished_name.push(DnType::CommonName, server_name);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer)?;
    #[allow(deprecated)] // the ring provider, as src/http.rs
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_decoded() {
        assert_eq!(
            parse_form("service=s&scope=repository%3Aa%2Fb%3Apull%2Cpush&scope=x+y&bad=%zz&end=%4"),
            vec![
                ("service".to_string(), "s".to_string()),
                ("scope".into(), "repository:a/b:pull,push".into()),
                ("scope".into(), "x y".into()),
                ("bad".into(), "%zz".into()),
                ("end".into(), "%4".into()),
            ]
        );
        assert_eq!(
            parse_form("a=b%2Fc&d=e+f&g=%zz&h=%4"),
            vec![
                ("a".to_string(), "b/c".to_string()),
                ("d".into(), "e f".into()),
                ("g".into(), "%zz".into()),
                ("h".into(), "%4".into()),
            ]
        );
    }

    #[test]
    fn requests_are_parsed() {
        let raw = b"POST /t?a=1&b=2 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dTpwOnE=\r\n\
                    content-length: 7\r\n\r\nb=3&c=4 and more";
        let req = read_request(&mut &raw[..], 1024).unwrap();
        assert_eq!((req.method.as_str(), req.target.as_str()), ("POST", "/t?a=1&b=2"));
        assert_eq!((req.path.as_str(), req.query.as_str()), ("/t", "a=1&b=2"));
        assert!(req.head.starts_with("POST /t?a=1&b=2 HTTP/1.1\r\nHost: x\r\n"));
        assert_eq!(req.header("CONTENT-LENGTH"), Some("7"));
        assert_eq!(req.body, b"b=3&c=4");
        assert_eq!(req.form().get("b").map(String::as_str), Some("3"));
        assert_eq!(req.body_form().get("a"), None);
        assert_eq!(req.basic_credentials(), Some(("u".to_string(), "p:q".to_string())));
        assert!(read_request(&mut &b"GET / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n"[..], 1024).is_err());
        assert!(read_request(&mut &b"GET / HTTP/1.1\r\n"[..], 1024).is_err());
    }

    #[test]
    fn responses_are_serialised() {
        let mut response = Response::json(201, &serde_json::json!({"a": 1}));
        response.headers.push(("Location", "/x".into()));
        assert_eq!(
            String::from_utf8(response.to_bytes()).unwrap(),
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nLocation: /x\r\n\
             Content-Length: 7\r\nConnection: close\r\n\r\n{\"a\":1}"
        );
        assert_eq!(
            String::from_utf8(Response::empty(418).to_bytes()).unwrap(),
            "HTTP/1.1 418 Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
}
