//! Pacing of provider calls, per provider endpoint.
//!
//! Thousands of credentials may mint from the same endpoint (one ECR region
//! of one account, one Entra tenant, one Harbor). Each endpoint gets:
//! - a cap on calls in flight ([`Config::concurrency`]);
//! - a cap on calls reaching it in any one second
//!   ([`Config::calls_per_second`]), shared by every credential using it: a
//!   call counts from its start until [`WINDOW`] after its end, so the cap
//!   holds at the endpoint however long a call takes to send its request;
//! - a shared backoff: when a call is throttled (`ProviderThrottled`, an
//!   HTTP 429 or the provider's throttling error), the whole endpoint waits
//!   (the `Retry-After` the provider gave, else 1 s, 2 s, 4 s ... up to
//!   [`Config::max_backoff`], plus up to 25 % jitter) and its per-second cap
//!   is halved, then grows back by one call per second's worth of successful
//!   calls. Every credential using the endpoint slows down, instead of each
//!   retrying on its own schedule in lockstep.
//!
//! A throttled call is retried after the endpoint's backoff (at most
//! [`Config::throttle_retries`] times and [`Config::max_throttle_wait`] in
//! all) before the throttling is reported as the credential's failure.
//!
//! Waiting callers queue in order (a FIFO gate per endpoint), so the calls
//! start spread over time rather than together when a window opens; refresh
//! points themselves carry jitter ([`crate::schedule`]).
//!
//! Pacing applies to the operator (`regcred run` calls [`configure`]);
//! `regcred check`, the kubelet plugin and the credential helper make one
//! call per process and are not paced. `basic` has no endpoint and is never
//! paced. A mint is one paced call, whatever number of HTTP requests it
//! makes (Entra then ACR; the AWS SDK's own retries); the endpoint is the
//! one the mint starts with ([`endpoint_of`]).
//!
//! The decisions ([`Window`]) are pure and take the time as an argument, so
//! they are tested without sleeping.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::api::{AzureCloud, Provider};
use crate::provider::{CredentialProvider, Minted, ProviderError, Sources};
use crate::reasons;

/// How long a finished call still counts against the per-second cap (one
/// second, and 10 ms for the clocks' granularity). A call counts from the
/// moment it may start until this long after it ends, so however long a
/// provider takes to send its request after the permit (it may read source
/// Secrets first) and however the network delays it, no two calls more
/// than the cap apart can reach the endpoint within one second.
pub const WINDOW: Duration = Duration::from_millis(1010);

/// How often a caller waiting for calls in flight to end looks again.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(20);

/// The first backoff after a throttled call without `Retry-After`.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Share of a backoff that jitter may add.
pub const BACKOFF_JITTER: f64 = 0.25;

/// Process-wide pacing settings (`regcred run --provider-*`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Calls started per endpoint in any one second.
    pub calls_per_second: u32,
    /// Calls in flight per endpoint.
    pub concurrency: usize,
    /// Retries of a throttled call, after the endpoint's backoff.
    pub throttle_retries: u32,
    /// The longest backoff, `Retry-After` included.
    pub max_backoff: Duration,
    /// The most a call waits in backoffs before its throttling is reported.
    pub max_throttle_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            calls_per_second: 10,
            concurrency: 4,
            throttle_retries: 3,
            max_backoff: Duration::from_secs(30),
            max_throttle_wait: Duration::from_secs(30),
        }
    }
}

/// The per-second cap and backoff of one endpoint: pure decisions over an
/// injected clock.
#[derive(Debug)]
pub struct Window {
    /// The configured cap.
    cap: u32,
    /// The cap in force: halved by throttling, grown back by successes.
    effective: u32,
    /// Calls started and not yet ended.
    in_flight: u32,
    /// End times of the calls that ended in the last [`WINDOW`], oldest
    /// first.
    ends: VecDeque<Instant>,
    /// No call starts before this (a backoff).
    blocked_until: Option<Instant>,
    /// Throttled calls since the last success.
    throttles: u32,
    /// Successes since the effective cap last grew.
    successes: u32,
    max_backoff: Duration,
}

impl Window {
    pub fn new(calls_per_second: u32, max_backoff: Duration) -> Self {
        let cap = calls_per_second.max(1);
        Window {
            cap,
            effective: cap,
            in_flight: 0,
            ends: VecDeque::with_capacity(cap as usize),
            blocked_until: None,
            throttles: 0,
            successes: 0,
            max_backoff,
        }
    }

    /// Starts a call at `now` if the cap and the backoff allow it (the
    /// caller then reports its end with [`Window::ended`]); otherwise how
    /// long to wait before asking again.
    pub fn try_start(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(until) = self.blocked_until {
            if now < until {
                return Err(until - now);
            }
            self.blocked_until = None;
        }
        while self.ends.front().is_some_and(|t| *t + WINDOW <= now) {
            self.ends.pop_front();
        }
        let effective = self.effective as usize;
        let counted = self.in_flight as usize + self.ends.len();
        if counted < effective {
            self.in_flight += 1;
            return Ok(());
        }
        // Wait until enough ended calls have left the window, or, if the
        // calls in flight alone fill it, look again shortly.
        let must_leave = counted - effective + 1;
        match self.ends.get(must_leave - 1) {
            Some(end) => Err((*end + WINDOW).saturating_duration_since(now).max(Duration::from_millis(1))),
            None => Err(IN_FLIGHT_POLL),
        }
    }

    /// A call started by [`Window::try_start`] ended at `now`.
    pub fn ended(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.ends.push_back(now);
    }

    /// A call was throttled at `now`: the endpoint backs off (for
    /// `retry_after` if the provider said, else exponentially), and its cap
    /// is halved. `jitter` in `[0, 1)` adds up to [`BACKOFF_JITTER`] of the
    /// backoff. Returns the backoff.
    pub fn throttled(&mut self, now: Instant, retry_after: Option<Duration>, jitter: f64) -> Duration {
        if let Some(until) = self.blocked_until.filter(|until| now < *until) {
            // A call that started before this backoff: the same episode,
            // which neither doubles the backoff nor halves the cap again.
            let asked = retry_after.map(|after| now + after.min(self.max_backoff));
            let until = asked.map_or(until, |asked| asked.max(until));
            self.blocked_until = Some(until);
            return until - now;
        }
        let exponential = FIRST_BACKOFF.saturating_mul(1u32 << self.throttles.min(16));
        let base = retry_after.unwrap_or(exponential).min(self.max_backoff);
        let backoff = base.mul_f64(1.0 + BACKOFF_JITTER * jitter.clamp(0.0, 1.0));
        let until = now + backoff;
        self.blocked_until = Some(self.blocked_until.map_or(until, |t| t.max(until)));
        self.throttles = self.throttles.saturating_add(1);
        self.effective = (self.effective / 2).max(1);
        self.successes = 0;
        backoff
    }

    /// A call succeeded: the backoff sequence restarts, and after a
    /// second's worth of successes the cap grows by one, up to the
    /// configured cap.
    pub fn succeeded(&mut self) {
        self.throttles = 0;
        if self.effective < self.cap {
            self.successes += 1;
            if self.successes >= self.effective {
                self.effective += 1;
                self.successes = 0;
            }
        }
    }

    /// The cap in force.
    pub fn effective_cap(&self) -> u32 {
        self.effective
    }
}

/// One endpoint's shared state.
struct Endpoint {
    window: Mutex<Window>,
    /// Callers waiting for the window, in order: one at a time sleeps until
    /// the window opens, so a window opening does not release a herd.
    gate: tokio::sync::Mutex<()>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Endpoint {
    async fn acquire(&self) -> tokio::sync::OwnedSemaphorePermit {
        let permit = self.in_flight.clone().acquire_owned().await.expect("the semaphore is never closed");
        let _turn = self.gate.lock().await;
        loop {
            let wait = self.window.lock().try_start(now());
            match wait {
                Ok(()) => return permit,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

/// The endpoints of a process, created as credentials first use them.
pub struct Pacer {
    config: Config,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
}

impl Pacer {
    pub fn new(config: Config) -> Self {
        Pacer { config, endpoints: Mutex::default() }
    }

    pub fn config(&self) -> Config {
        self.config
    }

    fn endpoint(&self, key: &str) -> Arc<Endpoint> {
        let mut endpoints = self.endpoints.lock();
        endpoints
            .entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(Endpoint {
                    window: Mutex::new(Window::new(self.config.calls_per_second, self.config.max_backoff)),
                    gate: tokio::sync::Mutex::new(()),
                    in_flight: Arc::new(tokio::sync::Semaphore::new(self.config.concurrency.max(1))),
                })
            })
            .clone()
    }

    /// Runs `call` paced on `endpoint`, retrying it while it is throttled
    /// (see the module documentation).
    pub async fn run<T, F, Fut>(&self, endpoint: &str, mut call: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let ep = self.endpoint(endpoint);
        let mut retries = 0;
        let mut waited = Duration::ZERO;
        loop {
            let permit = ep.acquire().await;
            let result = call().await;
            ep.window.lock().ended(now());
            drop(permit);
            match result {
                Err(e) if e.reason == reasons::PROVIDER_THROTTLED => {
                    let retry_after = e.retry_after.or_else(|| retry_after_in(&e.message));
                    let backoff = ep.window.lock().throttled(now(), retry_after, rand::random::<f64>());
                    let give_up =
                        retries >= self.config.throttle_retries || waited + backoff > self.config.max_throttle_wait;
                    tracing::warn!(
                        endpoint,
                        backoff_ms = backoff.as_millis() as u64,
                        retry = !give_up,
                        "provider endpoint throttled; every credential using it backs off: {}",
                        e.message
                    );
                    if give_up {
                        return Err(e);
                    }
                    retries += 1;
                    waited += backoff;
                }
                Err(e) => return Err(e),
                Ok(v) => {
                    ep.window.lock().succeeded();
                    return Ok(v);
                }
            }
        }
    }
}

/// The time, from tokio's clock (so tests can pause it).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A `Retry-After` (delay in seconds) named in an error message:
/// `Retry-After: 3`, `retry after 3s`, `retry after 3 seconds`.
pub fn retry_after_in(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    for needle in ["retry-after:", "retry-after", "retry after"] {
        if let Some(i) = lower.find(needle) {
            let rest = lower[i + needle.len()..].trim_start_matches([' ', ':', '=']);
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(secs) = digits.parse::<u64>() {
                return Some(Duration::from_secs(secs));
            }
        }
    }
    None
}

static PACER: OnceLock<Pacer> = OnceLock::new();

/// Turns pacing on for this process with `config`. The first call wins;
/// returns whether this one did.
pub fn configure(config: Config) -> bool {
    PACER.set(Pacer::new(config)).is_ok()
}

/// The process's pacer, once [`configure`]d.
pub fn pacer() -> Option<&'static Pacer> {
    PACER.get()
}

/// The endpoint a provider's mint starts with, as a key shared by every
/// credential using it: the ECR API of the region (or the `endpoint`
/// override), ECR Public's, the Entra authority host and tenant, the Google
/// token endpoint, the Harbor URL. `None` for `basic`, which calls nothing.
pub fn endpoint_of(provider: &Provider) -> Option<String> {
    let host = |url: &str| match url::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => url.to_string(),
        },
        Err(_) => url.trim_end_matches('/').to_string(),
    };
    Some(match provider {
        Provider::Basic(_) => return None,
        Provider::Ecr(p) => match &p.endpoint {
            Some(e) => format!("ecr/{}", host(e)),
            // Several regions: paced on the first; each is one call.
            None => format!("ecr/api.ecr.{}.amazonaws.com", p.region_list().first().copied().unwrap_or_default()),
        },
        Provider::EcrPublic(p) => match &p.endpoint {
            Some(e) => format!("ecrPublic/{}", host(e)),
            None => "ecrPublic/api.ecr-public.us-east-1.amazonaws.com".to_string(),
        },
        Provider::Acr(p) => {
            let authority = match (&p.authority_host, p.cloud.unwrap_or_default()) {
                (Some(h), _) => host(h),
                (None, AzureCloud::AzurePublic) => "login.microsoftonline.com".to_string(),
                (None, AzureCloud::AzureChina) => "login.chinacloudapi.cn".to_string(),
                (None, AzureCloud::AzureUSGovernment) => "login.microsoftonline.us".to_string(),
            };
            if p.auth.managed_identity.is_some() {
                // The node's identity endpoint, not Entra, is called first.
                "acr/managed-identity".to_string()
            } else {
                // Entra throttles token issuance per tenant (and app), so
                // one tenant's throttling does not hold back another's.
                format!("acr/{authority}/{}", p.tenant_id)
            }
        }
        Provider::Google(p) => {
            let auth = p.auth.as_ref();
            if let Some(f) = auth.and_then(|a| a.service_account_ref.as_ref()) {
                format!("google/{}", host(f.token_url.as_deref().unwrap_or("https://sts.googleapis.com")))
            } else if auth.is_some_and(|a| a.secret_ref.is_some()) {
                "google/oauth2.googleapis.com".to_string()
            } else {
                "google/metadata".to_string()
            }
        }
        Provider::Harbor(p) => format!("harbor/{}", host(&p.url)),
    })
}

/// A provider whose calls are paced on its endpoint.
struct Paced {
    endpoint: String,
    pacer: &'static Pacer,
    inner: Box<dyn CredentialProvider>,
}

#[async_trait]
impl CredentialProvider for Paced {
    async fn mint(&self, sources: &Sources) -> Result<Minted, ProviderError> {
        self.pacer.run(&self.endpoint, || self.inner.mint(sources)).await
    }

    async fn cleanup(&self, sources: &Sources) -> Result<(), ProviderError> {
        self.pacer.run(&self.endpoint, || self.inner.cleanup(sources)).await
    }
}

/// The provider for `spec` ([`crate::provider::for_spec`]), paced on its
/// endpoint when pacing is configured and the provider has one.
pub fn paced(spec: &Provider) -> Box<dyn CredentialProvider> {
    wrap(spec, crate::provider::for_spec(spec))
}

/// `inner`, paced on `provider`'s endpoint when pacing is configured and
/// the provider has one.
pub fn wrap(provider: &Provider, inner: Box<dyn CredentialProvider>) -> Box<dyn CredentialProvider> {
    match (pacer(), endpoint_of(provider)) {
        (Some(pacer), Some(endpoint)) => Box::new(Paced { endpoint, pacer, inner }),
        _ => inner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The most starts in any window of `len` among sorted `times`.
    fn max_in_window(times: &[Instant], len: Duration) -> usize {
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..times.len() {
            while times[hi] >= times[lo] + len {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }

    /// Drives a window with callers always wanting to call, each call
    /// taking `takes`, for `total`, and returns the start and end times.
    fn saturate(w: &mut Window, t0: Instant, total: Duration, takes: Duration) -> (Vec<Instant>, Vec<Instant>) {
        let mut now = t0;
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        while now < t0 + total {
            match w.try_start(now) {
                Ok(()) => {
                    starts.push(now);
                    ends.push(now + takes);
                    w.ended(now + takes);
                }
                Err(wait) => now += wait,
            }
        }
        (starts, ends)
    }

    #[test]
    fn never_more_than_the_cap_in_any_second() {
        let t0 = Instant::now();
        let mut w = Window::new(5, Duration::from_secs(30));
        let (starts, _) = saturate(&mut w, t0, Duration::from_secs(20), Duration::ZERO);
        assert_eq!(max_in_window(&starts, Duration::from_secs(1)), 5);
        // And the cap is used: about 5 per 1.01 s.
        assert!(starts.len() >= 95, "{} calls in 20 s", starts.len());
        // Calls that take a while: wherever in its call a provider sends its
        // request, no second sees more than the cap. The worst case is the
        // first calls sending theirs at the end, the next at the start.
        let mut w = Window::new(5, Duration::from_secs(30));
        let (starts, ends) = saturate(&mut w, t0, Duration::from_secs(20), ms(300));
        let mut worst: Vec<Instant> =
            starts.iter().zip(&ends).enumerate().map(|(i, (s, e))| if i % 10 < 5 { *e } else { *s }).collect();
        worst.sort();
        assert!(max_in_window(&worst, Duration::from_secs(1)) <= 5);
    }

    #[test]
    fn waits_say_when_the_window_opens() {
        let t0 = Instant::now();
        let mut w = Window::new(2, Duration::from_secs(30));
        assert_eq!(w.try_start(t0), Ok(()));
        assert_eq!(w.try_start(t0 + ms(100)), Ok(()));
        // Both in flight: look again shortly.
        assert_eq!(w.try_start(t0 + ms(150)), Err(IN_FLIGHT_POLL));
        w.ended(t0 + ms(150));
        w.ended(t0 + ms(200));
        assert_eq!(w.try_start(t0 + ms(200)), Err(WINDOW - ms(50)));
        assert_eq!(w.try_start(t0 + ms(150) + WINDOW), Ok(()));
        assert_eq!(w.try_start(t0 + ms(150) + WINDOW), Err(ms(50)));
    }

    #[test]
    fn throttling_blocks_the_endpoint_and_backs_off_exponentially() {
        let mut t = Instant::now();
        let mut w = Window::new(64, Duration::from_secs(30));
        assert_eq!(w.throttled(t, None, 0.0), Duration::from_secs(1));
        assert_eq!(w.try_start(t + ms(400)), Err(ms(600)));
        // Calls that started before the backoff and are throttled during it
        // belong to the same episode.
        assert_eq!(w.throttled(t + ms(400), None, 0.0), ms(600));
        assert_eq!(w.effective_cap(), 32);
        t += Duration::from_secs(1);
        assert_eq!(w.throttled(t, None, 0.0), Duration::from_secs(2));
        t += Duration::from_secs(2);
        assert_eq!(w.throttled(t, None, 0.0), Duration::from_secs(4));
        assert_eq!(w.effective_cap(), 8);
        // Capped at max_backoff, and jitter adds at most a quarter.
        for _ in 0..10 {
            t += w.throttled(t, None, 0.0);
        }
        assert_eq!(w.effective_cap(), 1);
        assert_eq!(w.throttled(t, None, 0.0), Duration::from_secs(30));
        t += Duration::from_secs(30);
        assert_eq!(w.throttled(t, None, 0.999_999).as_secs(), 37);
        t += Duration::from_secs(38);
        // A success restarts the sequence.
        w.succeeded();
        assert_eq!(w.throttled(t, None, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_is_honoured_but_bounded() {
        let t0 = Instant::now();
        let mut w = Window::new(8, Duration::from_secs(30));
        assert_eq!(w.throttled(t0, Some(Duration::from_secs(7)), 0.0), Duration::from_secs(7));
        assert_eq!(w.try_start(t0 + Duration::from_secs(6)), Err(Duration::from_secs(1)));
        assert_eq!(w.try_start(t0 + Duration::from_secs(7)), Ok(()));
        let t1 = t0 + Duration::from_secs(7);
        assert_eq!(w.throttled(t1, Some(Duration::from_secs(3600)), 0.0), Duration::from_secs(30));
        // A shorter backoff never shortens one in force; a longer one
        // extends it.
        let mut w = Window::new(8, Duration::from_secs(30));
        w.throttled(t0, Some(Duration::from_secs(10)), 0.0);
        assert_eq!(w.throttled(t0, Some(Duration::from_secs(1)), 0.0), Duration::from_secs(10));
        assert_eq!(w.throttled(t0, Some(Duration::from_secs(12)), 0.0), Duration::from_secs(12));
        assert!(w.try_start(t0 + Duration::from_secs(11)).is_err());
    }

    #[test]
    fn the_cap_halves_on_throttling_and_grows_back_with_successes() {
        let t0 = Instant::now();
        let mut w = Window::new(8, Duration::from_secs(30));
        w.throttled(t0, Some(Duration::ZERO), 0.0);
        assert_eq!(w.effective_cap(), 4);
        let (starts, _) = saturate(&mut w, t0, Duration::from_secs(3), Duration::ZERO);
        assert_eq!(max_in_window(&starts, Duration::from_secs(1)), 4);
        // 4 successes grow it to 5, 5 more to 6, ... back to 8, no further.
        for expected in [4, 4, 4, 5, 5, 5, 5, 5, 6] {
            w.succeeded();
            assert_eq!(w.effective_cap(), expected);
        }
        for _ in 0..100 {
            w.succeeded();
        }
        assert_eq!(w.effective_cap(), 8);
    }

    #[test]
    fn retry_after_is_read_from_messages() {
        assert_eq!(retry_after_in("throttled (HTTP 429, Retry-After: 3)"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after_in("please retry after 12s"), Some(Duration::from_secs(12)));
        assert_eq!(retry_after_in("Retry-After 5 seconds"), Some(Duration::from_secs(5)));
        assert_eq!(retry_after_in("throttled (HTTP 429)"), None);
        assert_eq!(retry_after_in("retry after a while"), None);
    }

    #[test]
    fn endpoints_are_shared_by_what_is_called() {
        let p = |v: serde_json::Value| -> Provider { serde_json::from_value(v).unwrap() };
        let ecr = |region: &str| p(serde_json::json!({"ecr": {"region": region}}));
        assert_eq!(endpoint_of(&ecr("eu-west-1")).as_deref(), Some("ecr/api.ecr.eu-west-1.amazonaws.com"));
        assert_ne!(endpoint_of(&ecr("eu-west-1")), endpoint_of(&ecr("us-east-1")));
        let public = p(serde_json::json!({"ecrPublic": {"endpoint": "http://127.0.0.1:4566/"}}));
        assert_eq!(endpoint_of(&public).as_deref(), Some("ecrPublic/127.0.0.1:4566"));
        let acr = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"registry": "r.azurecr.io", "tenantId": "t",
                "auth": {"servicePrincipal": {"secretRef": {"name": "sp"}}}});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            p(serde_json::json!({ "acr": v }))
        };
        assert_eq!(endpoint_of(&acr(serde_json::json!({}))).as_deref(), Some("acr/login.microsoftonline.com/t"));
        assert_eq!(
            endpoint_of(&acr(serde_json::json!({"cloud": "AzureChina"}))).as_deref(),
            Some("acr/login.chinacloudapi.cn/t")
        );
        assert_eq!(
            endpoint_of(&acr(serde_json::json!({"authorityHost": "https://login.example.internal/"}))).as_deref(),
            Some("acr/login.example.internal/t")
        );
        assert_ne!(
            endpoint_of(&acr(serde_json::json!({}))),
            endpoint_of(&acr(serde_json::json!({"tenantId": "other"})))
        );
        let harbor = p(serde_json::json!({"harbor": {"url": "https://harbor.example.com", "projects": ["a"],
            "auth": {"secretRef": {"name": "h"}}}}));
        assert_eq!(endpoint_of(&harbor).as_deref(), Some("harbor/harbor.example.com"));
        let google = p(serde_json::json!({"google": {"registries": ["gcr.io"],
            "auth": {"serviceAccountRef": {"name": "sa", "audience": "aud"}}}}));
        assert_eq!(endpoint_of(&google).as_deref(), Some("google/sts.googleapis.com"));
        let basic = p(serde_json::json!({"basic": {"registry": "ghcr.io", "secretRef": {"name": "b"}}}));
        assert_eq!(endpoint_of(&basic), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_call_is_retried_after_the_backoff_and_slows_the_endpoint() {
        let pacer = Pacer::new(Config { calls_per_second: 4, ..Config::default() });
        let calls = AtomicUsize::new(0);
        let t0 = tokio::time::Instant::now();
        let result = pacer
            .run("e", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    // As a provider hands back a throttling answer's Retry-After.
                    Err(ProviderError::new(reasons::PROVIDER_THROTTLED, "throttled (HTTP 429)")
                        .with_retry_after(crate::http::retry_after(429, Some("2"))))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(result, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Two backoffs of 2 s (the Retry-After), each with at most 25 % jitter.
        let took = t0.elapsed();
        assert!(took >= Duration::from_secs(4) && took <= Duration::from_secs(5), "{took:?}");
        // 4 halved twice, then grown by the success.
        assert_eq!(pacer.endpoint("e").window.lock().effective_cap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_reported_after_the_retries() {
        let pacer = Pacer::new(Config { throttle_retries: 2, ..Config::default() });
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = pacer
            .run("e", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ProviderError::new(reasons::PROVIDER_THROTTLED, "throttled"))
            })
            .await;
        assert_eq!(result.unwrap_err().reason, reasons::PROVIDER_THROTTLED);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Other failures are not retried.
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = pacer
            .run("other", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ProviderError::new(reasons::PROVIDER_ERROR, "down"))
            })
            .await;
        assert_eq!(result.unwrap_err().reason, reasons::PROVIDER_ERROR);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_cap_and_the_in_flight_limit() {
        let pacer = Arc::new(Pacer::new(Config { calls_per_second: 3, concurrency: 2, ..Config::default() }));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let (pacer, starts, in_flight, most) = (pacer.clone(), starts.clone(), in_flight.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                pacer
                    .run("shared", || async {
                        starts.lock().push(now());
                        let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        tokio::time::sleep(ms(50)).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, ProviderError>(())
                    })
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let mut starts = starts.lock().clone();
        starts.sort();
        assert_eq!(starts.len(), 12);
        assert!(max_in_window(&starts, Duration::from_secs(1)) <= 3);
        assert!(most.load(Ordering::SeqCst) <= 2);
    }
}
