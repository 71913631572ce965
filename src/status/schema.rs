//! The `.status` schema, defined once: the daemon renders these types and
//! `tokenfs status`/`wait`/`consent` read them back. A leaf: the cell builds
//! [`CellStatus`] from its state, so nothing here may depend on the cell.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    /// Never read yet: issue is lazy.
    Empty,
    /// The first (or a post-expiry) request is in flight.
    Fetching,
    /// A valid token is served.
    Fresh,
    /// A valid token is served, but the last refresh failed.
    Degraded,
    /// No valid token; the last request failed.
    Failed,
    /// No valid token; the user must grant consent.
    ConsentRequired,
    /// The token expired and nobody asked for a new one yet.
    Expired,
}

/// A state as read back from a mount (missing: unknown): a daemon of another version may report
/// one this build does not know, which must not make the whole document
/// unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ReportedState {
    Known(StateName),
    Unknown(String),
}

impl ReportedState {
    /// The state as `.status` spells it.
    pub fn as_str(&self) -> &str {
        match self {
            ReportedState::Known(s) => s.as_str(),
            ReportedState::Unknown(s) => s,
        }
    }
}

impl Default for ReportedState {
    fn default() -> Self {
        ReportedState::Unknown("unknown".to_owned())
    }
}

impl StateName {
    /// The state as `.status` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Empty => "empty",
            StateName::Fetching => "fetching",
            StateName::Fresh => "fresh",
            StateName::Degraded => "degraded",
            StateName::Failed => "failed",
            StateName::ConsentRequired => "consent_required",
            StateName::Expired => "expired",
        }
    }
}

/// Time rendered as RFC 3339 in `.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Timestamp(t)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&rfc3339(self.0))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text)
            .map(Timestamp)
            .map_err(serde::de::Error::custom)
    }
}

/// `t` in RFC 3339, clamped to the format's last second (9999-12-31T23:59:59Z):
/// humantime panics past it, and no rendering may fail.
pub fn rfc3339(t: SystemTime) -> String {
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    let t = t.min(std::time::UNIX_EPOCH + LAST);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One file's entry in `.status`. `S` is [`StateName`] where the daemon
/// renders it and [`ReportedState`] where a command reads it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(deserialize = "S: Deserialize<'de> + Default"))]
pub struct CellStatus<S = StateName> {
    #[serde(default)]
    pub state: S,
    #[serde(default)]
    pub generation: u64,
    pub expires_at: Option<Timestamp>,
    pub obtained_at: Option<Timestamp>,
    pub refresh_at: Option<Timestamp>,
    pub sub: Option<String>,
    pub jti: Option<String>,
    pub last_attempt: Option<Timestamp>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Timestamp>,
    pub retry_at: Option<Timestamp>,
    #[serde(default)]
    pub fetches: u64,
    #[serde(default)]
    pub failures: u64,
    /// Why the refresh token the upstream last rotated in could not be saved
    /// (it is lost when tokenfs restarts), while that lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsaved_refresh_token: Option<String>,
    /// Why the token served now has less than `min_valid` left, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_min_valid: Option<String>,
}

/// One file of the mount, as `.status` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(deserialize = "S: Deserialize<'de> + Default"))]
pub struct FileStatus<S = StateName> {
    #[serde(default = "unnamed")]
    pub name: String,
    #[serde(default)]
    pub upstream: String,
    #[serde(flatten)]
    pub cell: CellStatus<S>,
}

fn unnamed() -> String {
    "?".to_owned()
}

/// The whole `.status` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(deserialize = "S: Deserialize<'de> + Default"))]
pub struct Document<S = StateName> {
    #[serde(default)]
    pub version: String,
    /// Where `tokenfs consent` hands a code login's redirect to this daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_socket: Option<PathBuf>,
    #[serde(default)]
    pub files: Vec<FileStatus<S>>,
}

/// A `.status` document as a command reads it from a mount.
pub type Reported = Document<ReportedState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_as_it_was_rendered() {
        use StateName::*;
        for s in [
            Empty,
            Fetching,
            Fresh,
            Degraded,
            Failed,
            ConsentRequired,
            Expired,
        ] {
            let json = serde_json::to_value(s).unwrap();
            assert_eq!(json, s.as_str());
            let back: ReportedState = serde_json::from_value(json).unwrap();
            assert_eq!(back, ReportedState::Known(s));
        }
        let other: ReportedState = serde_json::from_value("warming".into()).unwrap();
        assert_eq!(other, ReportedState::Unknown("warming".into()));
    }

    #[test]
    fn a_rendered_document_reads_back_typed() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let doc = Document {
            version: "1".into(),
            login_socket: Some("/run/x.sock".into()),
            files: vec![FileStatus {
                name: "token".into(),
                upstream: "https://idp".into(),
                cell: CellStatus {
                    state: StateName::Degraded,
                    generation: 3,
                    expires_at: Some(t.into()),
                    obtained_at: None,
                    refresh_at: None,
                    sub: Some("alice".into()),
                    jti: None,
                    last_attempt: None,
                    last_error: Some("upstream unavailable".into()),
                    last_error_at: Some(t.into()),
                    retry_at: None,
                    fetches: 4,
                    failures: 1,
                    unsaved_refresh_token: None,
                    below_min_valid: None,
                },
            }],
        };
        let back: Reported = serde_json::from_slice(&serde_json::to_vec(&doc).unwrap()).unwrap();
        let f = &back.files[0];
        assert_eq!(f.name, "token");
        assert_eq!(f.cell.state, ReportedState::Known(StateName::Degraded));
        assert_eq!(f.cell.expires_at, Some(Timestamp(t)));
        assert_eq!(f.cell.fetches, 4);
        assert_eq!(back.login_socket.as_deref(), Some("/run/x.sock".as_ref()));
    }
}
