//! tokenfs: a read-only FUSE filesystem that serves short-lived credentials as files.
//!
//! Data flows one way: upstream → [`source`] → [`cell`] → [`fs`] → kernel.
//! [`issuer`] stands apart: an embedded Keycloak-compatible realm for `--dev`,
//! reached only over HTTP. [`daemon`] (the `mount` command) wires them together.

pub mod cell;
pub mod cli;
pub mod config;
pub mod daemon;
#[cfg(feature = "dev-issuer")]
pub mod dev;
pub mod docs;
pub mod exec;
pub mod fs;
pub mod harden;
pub mod health;
pub mod holder;
#[cfg(any(test, feature = "dev-issuer"))]
pub mod issuer;
pub mod listener;
pub mod logging;
pub mod login;
pub mod metrics;
pub mod mountpoint;
pub mod notify;
pub mod ops;
pub mod random;
pub mod resolve;
pub mod secret_file;
pub mod secret_mode;
pub mod source;
pub mod status;
pub mod sync;

/// Entry points for the property/fuzz tests in `tests/fuzz.rs`: thin `pub`
/// wrappers over the crate-private parsers of upstream input, so the tests
/// call exactly the code the daemon runs.
///
/// **Not public API**: hidden from the docs, no stability promise, and only
/// what the fuzz targets need.
#[doc(hidden)]
pub mod fuzzing {
    use std::time::SystemTime;

    use reqwest::StatusCode;

    pub use crate::source::get::issued_from_body as get_issued;
    pub use crate::source::http::upstream_text;
    pub use crate::source::jwt::{expiry, MAX_TOKEN_LEN};
    pub use crate::source::oauth::{
        error_from_body as oauth_error, parse_token_response, ErrorContext, TokenResponse,
    };
    pub use crate::source::{Issued, LogClaims, SourceError};

    /// A 2xx token-endpoint body all the way to the token served, as
    /// `OAuthSource::issue` does it (parse, require `access_token`, expiry).
    pub fn oauth_issued(
        body: &[u8],
        status: StatusCode,
        now: SystemTime,
    ) -> Result<Issued, SourceError> {
        let answer = crate::source::oauth::parse_token_response(body, status)?;
        crate::source::oauth::issued_from_answer(answer, now)
    }
}
