//! When a token expires, decided the same way for every source.
//!
//! A JWT carries its own `exp`, which is what the resource servers check, so it
//! wins over an `expires_in` next to it (the two disagree when the upstream's
//! clock or cache is off). An opaque token has only `expires_in`. Signatures are
//! not checked here: the token is passed on, not trusted, and the consumers
//! verify it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::{LogClaims, SourceError};

/// Longest token accepted. Keycloak tokens with many roles reach a few KiB;
/// far more means the upstream answered something else.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Longest `sub`/`jti` kept for logs, so a hostile claim cannot flood them.
const MAX_LOG_CLAIM: usize = 256;

/// Validate `token` and work out `(expires_at, issued_at, claims)`.
///
/// - JWT (three dot-separated parts whose middle one is a base64url JSON
///   object): `exp` is required; `issued_at` is `iat`, else `now`.
/// - Anything else is opaque: `expires_in` is required; `issued_at` is `now`.
///
/// Rejected as [`SourceError::Malformed`]: empty tokens, tokens over
/// [`MAX_TOKEN_LEN`], tokens with anything but printable ASCII (readers put the
/// bytes straight into an `Authorization` header), and a lifetime that is not
/// positive (`exp <= issued_at`, `expires_in == 0`). Messages never include
/// the token.
pub fn expiry(
    token: &str,
    expires_in: Option<u64>,
    now: SystemTime,
) -> Result<(SystemTime, SystemTime, LogClaims), SourceError> {
    check_shape(token)?;
    let (expires_at, issued_at, claims) = match jwt_claims(token) {
        Some(claims) => jwt_expiry(&claims, now)?,
        None => {
            let secs = expires_in.ok_or_else(|| {
                SourceError::Malformed(
                    "the token is not a JWT and the answer has no expires_in, so its expiry is unknown"
                        .into(),
                )
            })?;
            if secs == 0 {
                return Err(SourceError::Malformed("expires_in is 0".into()));
            }
            let expires_at = now.checked_add(Duration::from_secs(secs)).ok_or_else(|| {
                SourceError::Malformed(format!("expires_in {secs} is out of range"))
            })?;
            (expires_at, now, LogClaims::default())
        }
    };
    if expires_at > now + MAX_LIFETIME {
        return Err(SourceError::Malformed(format!(
            "the token claims to stay valid until {} (unix time), over {} years from now: \
             no short-lived credential does; the upstream's answer is wrong",
            unix_secs(expires_at),
            MAX_LIFETIME.as_secs() / YEAR.as_secs()
        )));
    }
    Ok((expires_at, issued_at, claims))
}

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest lifetime accepted: beyond it an expiry is a broken or hostile
/// answer (a year-10000 `exp` once overflowed every date formatter downstream).
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn check_shape(token: &str) -> Result<(), SourceError> {
    if token.is_empty() {
        return Err(SourceError::Malformed("the token is empty".into()));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(SourceError::Malformed(format!(
            "the token is {} bytes, over the {MAX_TOKEN_LEN}-byte limit",
            token.len()
        )));
    }
    if let Some(pos) = token.bytes().position(|b| !b.is_ascii_graphic()) {
        return Err(SourceError::Malformed(format!(
            "the token contains whitespace, a control or a non-ASCII character (at byte {pos})"
        )));
    }
    Ok(())
}

/// The `preferred_username` of a JWT (Keycloak's login name), for prefilling a
/// login form; `None` if absent or not a plain short name.
pub fn username(token: &str) -> Option<String> {
    let name = jwt_claims(token)?
        .get("preferred_username")?
        .as_str()?
        .to_owned();
    (!name.is_empty() && name.len() <= MAX_LOG_CLAIM && name.bytes().all(|b| b.is_ascii_graphic()))
        .then_some(name)
}

/// The claims object if `token` is a JWT, `None` if it is opaque.
fn jwt_claims(token: &str) -> Option<Map<String, Value>> {
    // jsonwebtoken only splits on the last two dots; insist on exactly three
    // parts so a JWE (five parts) or a dotted opaque token is not misread.
    if token.split('.').count() != 3 {
        return None;
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token).ok()
}

fn jwt_expiry(
    claims: &Map<String, Value>,
    now: SystemTime,
) -> Result<(SystemTime, SystemTime, LogClaims), SourceError> {
    let exp = match claims.get("exp") {
        None => {
            return Err(SourceError::Malformed(
                "the JWT has no exp claim, so its expiry is unknown".into(),
            ))
        }
        Some(v) => numeric_date(v, "exp")?,
    };
    let issued_at = match claims.get("iat") {
        None | Some(Value::Null) => now,
        Some(v) => numeric_date(v, "iat")?,
    };
    if exp <= issued_at {
        let what = if claims.contains_key("iat") {
            "iat"
        } else {
            "now (check the clocks)"
        };
        return Err(SourceError::Malformed(format!(
            "the JWT expires (exp {}) no later than it was issued ({what} {})",
            unix_secs(exp),
            unix_secs(issued_at)
        )));
    }
    let log_claim = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .map(|s| printable(&s.chars().take(MAX_LOG_CLAIM).collect::<String>()))
    };
    Ok((
        exp,
        issued_at,
        LogClaims {
            sub: log_claim("sub"),
            jti: log_claim("jti"),
        },
    ))
}

/// `s` with control characters escaped (`\u{1b}`, `\r`): a claim printed on an
/// operator's terminal or in a log line cannot move the cursor or forge a line.
pub fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A JWT NumericDate: seconds since the epoch, possibly fractional (RFC 7519 §2).
fn numeric_date(v: &Value, name: &str) -> Result<SystemTime, SourceError> {
    let bad = || SourceError::Malformed(format!("the JWT {name} claim is not a valid date"));
    let secs = v
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(bad)?;
    let d = Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
    UNIX_EPOCH.checked_add(d).ok_or_else(bad)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine as _;

    /// An unsigned test JWT; nothing here checks signatures.
    pub(crate) fn make_jwt(claims: &serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims.to_string())
        )
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn an_expiry_past_ten_years_is_malformed_and_claims_are_printable() {
        let now = at(1_800_000_000);
        let far = make_jwt(&serde_json::json!({"exp": 253_402_300_800u64, "sub": "a"}));
        let err = expiry(&far, None, now).unwrap_err();
        assert!(err.to_string().contains("over 10 years"), "{err}");
        let err = expiry("opaque", Some(u64::MAX / 2), now).unwrap_err();
        assert!(matches!(err, SourceError::Malformed(_)), "{err}");
        let err = expiry("opaque", Some(MAX_LIFETIME.as_secs() + 1), now).unwrap_err();
        assert!(err.to_string().contains("over 10 years"), "{err}");
        assert!(expiry("opaque", Some(MAX_LIFETIME.as_secs()), now).is_ok());

        let forged = make_jwt(&serde_json::json!({
            "exp": 1_800_000_600u64, "sub": "x\u{1b}[2K\rOK   token", "jti": "é\n"
        }));
        let (_, _, claims) = expiry(&forged, None, now).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("x\\u{1b}[2K\\rOK   token"));
        assert_eq!(claims.jti.as_deref(), Some("é\\n"));
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn jwt_exp_wins_over_expires_in() {
        let t = make_jwt(&serde_json::json!({
            "exp": NOW + 300, "iat": NOW - 5, "sub": "alice", "jti": "j-1", "aud": ["x"]
        }));
        let (exp, iat, claims) = expiry(&t, Some(9999), at(NOW)).unwrap();
        assert_eq!(exp, at(NOW + 300));
        assert_eq!(iat, at(NOW - 5));
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert_eq!(claims.jti.as_deref(), Some("j-1"));
    }

    #[test]
    fn jwt_without_iat_is_issued_now() {
        let t = make_jwt(&serde_json::json!({ "exp": NOW + 60 }));
        let (exp, iat, claims) = expiry(&t, None, at(NOW)).unwrap();
        assert_eq!((exp, iat), (at(NOW + 60), at(NOW)));
        assert_eq!(claims, LogClaims::default());
    }

    #[test]
    fn jwt_fractional_dates_are_accepted() {
        let t = make_jwt(&serde_json::json!({ "exp": NOW as f64 + 60.5, "iat": NOW }));
        let (exp, _, _) = expiry(&t, None, at(NOW)).unwrap();
        assert_eq!(exp, at(NOW + 60) + Duration::from_millis(500));
    }

    #[test]
    fn jwt_without_exp_is_malformed_even_with_expires_in() {
        let t = make_jwt(&serde_json::json!({ "iat": NOW, "sub": "alice" }));
        let err = expiry(&t, Some(300), at(NOW)).unwrap_err();
        assert!(
            matches!(&err, SourceError::Malformed(m) if m.contains("no exp")),
            "{err}"
        );
    }

    #[test]
    fn jwt_with_bad_dates_is_malformed() {
        for claims in [
            serde_json::json!({ "exp": NOW, "iat": NOW }),
            serde_json::json!({ "exp": NOW - 1, "iat": NOW }),
            serde_json::json!({ "exp": NOW - 1 }),
            serde_json::json!({ "exp": "soon" }),
            serde_json::json!({ "exp": -5 }),
            serde_json::json!({ "exp": 1e300 }),
            serde_json::json!({ "exp": NOW + 60, "iat": "x" }),
        ] {
            let t = make_jwt(&claims);
            assert!(
                matches!(expiry(&t, None, at(NOW)), Err(SourceError::Malformed(_))),
                "{claims}"
            );
        }
    }

    #[test]
    fn opaque_token_uses_expires_in() {
        let (exp, iat, claims) = expiry("opaque-abc_123", Some(300), at(NOW)).unwrap();
        assert_eq!((exp, iat), (at(NOW + 300), at(NOW)));
        assert_eq!(claims, LogClaims::default());
    }

    #[test]
    fn opaque_token_needs_positive_expires_in() {
        assert!(matches!(
            expiry("opaque", None, at(NOW)),
            Err(SourceError::Malformed(_))
        ));
        assert!(matches!(
            expiry("opaque", Some(0), at(NOW)),
            Err(SourceError::Malformed(_))
        ));
        assert!(matches!(
            expiry("opaque", Some(u64::MAX), at(NOW)),
            Err(SourceError::Malformed(_))
        ));
    }

    #[test]
    fn dotted_but_not_jwt_is_opaque() {
        // Three parts but the middle is not base64url JSON; five parts (JWE).
        for t in ["a.b.c", "a.b.c.d.e", "x..y"] {
            let (exp, _, _) = expiry(t, Some(10), at(NOW)).unwrap();
            assert_eq!(exp, at(NOW + 10), "{t}");
        }
        // A JSON claims part that is not an object is not a JWT either.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let t = format!("{}.{}.sig", b64.encode("{}"), b64.encode("42"));
        assert!(expiry(&t, Some(10), at(NOW)).is_ok());
    }

    #[test]
    fn rejects_bad_shapes_without_echoing_the_token() {
        for t in [
            String::new(),
            "secret token".into(),
            "secret\ntoken".into(),
            "secret\u{7f}".into(),
            "sécret".into(),
            "s".repeat(MAX_TOKEN_LEN + 1),
        ] {
            let err = expiry(&t, Some(60), at(NOW)).unwrap_err();
            assert!(matches!(err, SourceError::Malformed(_)));
            if !t.is_empty() {
                assert!(!err.to_string().contains("secret"), "{err}");
            }
        }
        assert!(expiry(&"s".repeat(MAX_TOKEN_LEN), Some(60), at(NOW)).is_ok());
    }

    #[test]
    fn long_log_claims_are_cut() {
        let t =
            make_jwt(&serde_json::json!({ "exp": NOW + 60, "sub": "a".repeat(1000), "jti": 7 }));
        let (_, _, claims) = expiry(&t, None, at(NOW)).unwrap();
        assert_eq!(claims.sub.unwrap().len(), MAX_LOG_CLAIM);
        assert_eq!(claims.jti, None);
    }
}
