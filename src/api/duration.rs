use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A positive Kubernetes-style duration such as `90s`, `30m` or `12h`.
///
/// Serialized exactly like `metav1.Duration` (Go's `time.ParseDuration`
/// syntax). The schema rejects malformed, zero and negative durations at apply
/// time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "kube::core::Duration", into = "kube::core::Duration")]
pub struct Duration(std::time::Duration);

impl Duration {
    /// The duration as a standard library duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl TryFrom<kube::core::Duration> for Duration {
    type Error = String;

    fn try_from(d: kube::core::Duration) -> Result<Self, Self::Error> {
        if d.is_negative() || std::time::Duration::from(d).is_zero() {
            return Err(format!("duration {d} must be positive"));
        }
        Ok(Duration(d.into()))
    }
}

impl From<Duration> for kube::core::Duration {
    fn from(d: Duration) -> Self {
        d.0.into()
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d: kube::core::Duration = s.parse().map_err(|e| format!("invalid duration {s:?}: {e}"))?;
        d.try_into()
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&kube::core::Duration::from(self.0), f)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 64,
            "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$",
            "x-kubernetes-validations": [{
                "rule": "duration(self) > duration('0s')",
                "message": "must be a positive duration such as 90s, 30m or 12h"
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_durations() {
        assert_eq!("90s".parse::<Duration>().unwrap().get().as_secs(), 90);
        assert_eq!("1h30m".parse::<Duration>().unwrap().get().as_secs(), 5400);
        assert!("0s".parse::<Duration>().is_err());
        assert!("-5m".parse::<Duration>().is_err());
        assert!("5".parse::<Duration>().is_err());
    }

    #[test]
    fn round_trips_through_json() {
        let d: Duration = serde_json::from_str("\"12h\"").unwrap();
        assert_eq!(d.get().as_secs(), 12 * 3600);
        let back = serde_json::to_string(&d).unwrap();
        let again: Duration = serde_json::from_str(&back).unwrap();
        assert_eq!(d, again);
        assert!(serde_json::from_str::<Duration>("\"-1s\"").is_err());
    }
}
