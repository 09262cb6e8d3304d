//! When to refresh: the one place that decides it.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::RefreshPolicy;

/// Refresh period of credentials without expiry when `refresh.interval` is unset.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// Never refresh sooner than this after minting: a tiny interval or a
/// lifetime of a second or two must not cause a hot loop.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// A provider that reports an expiry already in the past gets this long
/// before the next attempt, instead of an immediate retry.
pub const PAST_EXPIRY_RETRY: Duration = Duration::from_secs(60);
/// Share of the time to the refresh point that jitter may take off, so many
/// credentials minted together do not refresh in the same second.
pub const JITTER: f64 = 0.1;

/// `t` without its fraction of a second. Kubernetes stores times with
/// second precision; status built from whole seconds compares equal to what
/// the apiserver returns, so an unchanged status is not written again.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Clocks this close are taken to agree: an HTTP `Date` has whole seconds
/// and the answer takes time to arrive, so a smaller difference is noise,
/// and the expiry is kept exactly as the provider reported it.
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(5);

/// The expiry of a credential on this node's clock.
///
/// A provider that reports an absolute expiry reports it on its own clock.
/// Given the provider's time of answer (`provider_now`, the HTTP `Date`
/// header of its response), the lifetime is measured on that one clock and
/// counted from `minted_at` on this node's clock: a node clock minutes off
/// then neither puts the refresh after the real expiry nor makes a valid
/// credential look expired. A credential the provider itself sent already
/// expired stays expired (at or before `minted_at`). Without the provider's
/// time, or when the two clocks agree within [`CLOCK_TOLERANCE`], the expiry
/// as reported. Whole seconds, as Kubernetes stores times.
pub fn local_expiry(minted_at: Timestamp, expires_at: Timestamp, provider_now: Option<Timestamp>) -> Timestamp {
    let Some(provider_now) = provider_now else { return whole_seconds(expires_at) };
    let skew = minted_at.duration_since(provider_now).unsigned_abs();
    if skew <= CLOCK_TOLERANCE {
        return whole_seconds(expires_at);
    }
    let lifetime = expires_at.duration_since(provider_now);
    whole_seconds(whole_seconds(minted_at).saturating_add(lifetime).unwrap_or(expires_at))
}

/// When a credential minted at `minted_at` should be refreshed.
///
/// - Without expiry: after `refresh.interval` (default 1h).
/// - With expiry: `refresh.renewBefore` before it, by default at 2/3 of the
///   lifetime.
///
/// `jitter` in `[0, 1)` moves the point earlier by up to [`JITTER`] of the
/// wait; the result is never earlier than [`MIN_REFRESH`] after minting.
pub fn refresh_at(
    minted_at: Timestamp,
    expires_at: Option<Timestamp>,
    policy: Option<&RefreshPolicy>,
    jitter: f64,
) -> Timestamp {
    let wait = match expires_at {
        None => policy.and_then(|p| p.interval).map(|d| d.get()).unwrap_or(DEFAULT_INTERVAL),
        Some(exp) if exp <= minted_at => PAST_EXPIRY_RETRY,
        Some(exp) => {
            let lifetime = exp.duration_since(minted_at).unsigned_abs();
            let before = policy.and_then(|p| p.renew_before).map(|d| d.get()).unwrap_or(lifetime / 3);
            lifetime.saturating_sub(before)
        }
    };
    let wait = wait.mul_f64(1.0 - JITTER * jitter.clamp(0.0, 1.0));
    // Whole seconds (rounded up), as Kubernetes stores times.
    let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(MIN_REFRESH.as_secs());
    let wait = SignedDuration::from_secs(i64::try_from(secs).unwrap_or(i64::MAX));
    whole_seconds(minted_at).saturating_add(wait).unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn policy(json: &str) -> RefreshPolicy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn static_credentials_use_the_interval() {
        assert_eq!(refresh_at(ts(0), None, None, 0.0), ts(3600));
        assert_eq!(refresh_at(ts(0), None, Some(&policy(r#"{"interval":"90s"}"#)), 0.0), ts(90));
    }

    #[test]
    fn expiring_credentials_renew_at_two_thirds_or_renew_before() {
        assert_eq!(refresh_at(ts(0), Some(ts(12 * 3600)), None, 0.0), ts(8 * 3600));
        let p = policy(r#"{"renewBefore":"1h"}"#);
        assert_eq!(refresh_at(ts(0), Some(ts(12 * 3600)), Some(&p), 0.0), ts(11 * 3600));
    }

    #[test]
    fn past_or_tiny_expiry_does_not_hot_loop() {
        assert_eq!(refresh_at(ts(0), Some(ts(-3600)), None, 0.0), ts(60), "past expiry waits");
        assert_eq!(refresh_at(ts(0), Some(ts(0)), None, 0.5), ts(57), "expiry at mint time is past");
        assert_eq!(refresh_at(ts(0), Some(ts(3)), None, 0.0), ts(2), "3s lifetime renews at 2/3");
        assert_eq!(refresh_at(ts(0), Some(ts(1)), None, 0.0), ts(1), "floor of 1s");
        let p = policy(r#"{"renewBefore":"24h"}"#);
        assert_eq!(refresh_at(ts(0), Some(ts(3600)), Some(&p), 0.0), ts(1), "renewBefore beyond the lifetime");
        let tiny = policy(r#"{"interval":"1ms"}"#);
        assert_eq!(refresh_at(ts(0), None, Some(&tiny), 0.0), ts(1), "tiny interval");
    }

    #[test]
    fn lifetimes_are_measured_on_the_providers_clock() {
        // The provider's clock is 10 minutes ahead of this node's, or behind
        // it: a 15-minute credential still lives 15 minutes from the mint.
        for skew in [-600, 600] {
            let local = local_expiry(ts(0), ts(skew + 900), Some(ts(skew)));
            assert_eq!(local, ts(900), "skew {skew}s");
            assert_eq!(refresh_at(ts(0), Some(local), None, 0.0), ts(600), "skew {skew}s: renew at 2/3");
        }
        // Without the provider's time the reported expiry is taken as is:
        // a node 10 minutes ahead would see a 5-minute credential expired.
        assert_eq!(local_expiry(ts(0), ts(-300), None), ts(-300));
        // Sent already expired, by the provider's own clock: stays expired,
        // whatever the skew, and so is retried on PAST_EXPIRY_RETRY.
        let dead = local_expiry(ts(0), ts(600 - 3600), Some(ts(600)));
        assert!(dead <= ts(0));
        assert_eq!(refresh_at(ts(0), Some(dead), None, 0.0), ts(60));
        // Sub-second times are cut to whole seconds.
        let minted = Timestamp::from_millisecond((1_800_000_000 * 1000) + 700).unwrap();
        assert_eq!(local_expiry(minted, ts(100), Some(ts(40))), ts(60));
        // Clocks within the tolerance agree: the expiry as reported, not
        // moved by a second of rounding or latency.
        assert_eq!(local_expiry(ts(1), ts(900), Some(ts(0))), ts(900));
        assert_eq!(local_expiry(ts(0), ts(900), Some(ts(5))), ts(900));
        assert_eq!(local_expiry(ts(0), ts(900), Some(ts(6))), ts(894));
    }

    #[test]
    fn jitter_only_moves_earlier_and_within_bounds() {
        let base = refresh_at(ts(0), Some(ts(3000)), None, 0.0);
        for j in [0.0, 0.25, 0.5, 0.999] {
            let t = refresh_at(ts(0), Some(ts(3000)), None, j);
            assert!(t <= base);
            assert!(t >= ts(2000 - 200), "{t} earlier than 10% of the wait");
        }
    }
}
