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

    use reqwest::{StatusCode, Url};

    pub use crate::source::http::upstream_text;
    pub use crate::source::jwt::{expiry, MAX_TOKEN_LEN};
    pub use crate::source::{Issued, LogClaims, SourceError};

    /// The fields of a parsed 2xx token-endpoint answer (secrets stay
    /// [`secrecy::SecretString`]s).
    pub struct TokenAnswer {
        pub access_token: Option<secrecy::SecretString>,
        pub expires_in: Option<u64>,
        pub refresh_token: Option<secrecy::SecretString>,
        pub refresh_expires_in: Option<u64>,
        pub token_type: Option<String>,
        pub scope: Option<String>,
    }

    /// `oauth::parse_token_response`: a 2xx body as the token endpoint sent it.
    pub fn parse_token_response(
        body: &[u8],
        status: StatusCode,
    ) -> Result<TokenAnswer, SourceError> {
        crate::source::oauth::parse_token_response(body, status).map(|r| TokenAnswer {
            access_token: r.access_token,
            expires_in: r.expires_in,
            refresh_token: r.refresh_token,
            refresh_expires_in: r.refresh_expires_in,
            token_type: r.token_type,
            scope: r.scope,
        })
    }

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

    /// The source an error answer came from (what `error_from_body` needs).
    pub struct ErrorSetup {
        pub token_url: Url,
        pub client_id: String,
        pub token_exchange: bool,
        pub redirect_uri: Option<String>,
    }

    /// `oauth::error_from_body`: a non-2xx answer mapped to the error a reader's
    /// `.status` and the log show. `body` is `None` when it could not be read.
    pub fn oauth_error(setup: &ErrorSetup, status: StatusCode, body: Option<&[u8]>) -> SourceError {
        let ctx = crate::source::oauth::ErrorContext {
            token_url: &setup.token_url,
            client_id: &setup.client_id,
            token_exchange: setup.token_exchange,
            redirect_uri: setup.redirect_uri.as_deref(),
            sent: &[],
        };
        crate::source::oauth::error_from_body(&ctx, status, body)
    }

    /// `get::issued_from_body`: a GET source's 2xx body to the token served.
    pub fn get_issued(body: Vec<u8>, now: SystemTime) -> Result<Issued, SourceError> {
        crate::source::get::issued_from_body(body, now)
    }
}
