//! The JWKS cache of a [`Verifier`]: the issuer's keys, fetched at first
//! use, fetched again when a set grows old or a token names an unknown `kid`,
//! and never more often than the refetch interval allows.

use std::time::Instant;

use jsonwebtoken::jwk::Jwk;
use reqwest::Url;
use serde_json::Value;

use super::{quote, Verifier, VerifyError};
use crate::source::http::{self, map_send_error, read_body, redact_url, status_error};
use crate::source::SourceError;

/// The keys of one JWKS fetch, with when it happened.
pub(super) struct Cache {
    /// Resolved from the discovery document on first use, then kept.
    jwks_url: Option<Url>,
    keys: Option<Vec<Jwk>>,
    /// Last successful fetch.
    fetched_at: Option<Instant>,
    /// Last fetch attempt, successful or not: what the rate limit counts.
    attempted_at: Option<Instant>,
}

impl Cache {
    /// Empty; `jwks_url` is `None` while it is still to be discovered.
    pub(super) fn new(jwks_url: Option<Url>) -> Cache {
        Cache {
            jwks_url,
            keys: None,
            fetched_at: None,
            attempted_at: None,
        }
    }
}

impl Verifier {
    /// The JWKS entry for `kid`, fetching or refetching the set as needed.
    pub(super) async fn key_for(&self, kid: &str) -> Result<Jwk, VerifyError> {
        let mut cache = self.cache.lock().await;
        let mut fetched = false;
        if cache.keys.is_none() {
            // Nothing to verify with yet: every attempt may fetch. The cell's
            // backoff already spaces out the issues that get here.
            self.fetch(&mut cache).await?;
            fetched = true;
        } else if cache
            .fetched_at
            .is_some_and(|t| t.elapsed() >= self.max_age)
            && self.may_refetch(&cache)
        {
            // An old set is still better than none: keep it if the IdP is down.
            fetched = true;
            if let Err(e) = self.fetch(&mut cache).await {
                tracing::warn!(error = %e, "refreshing the JWKS failed; using the cached keys");
            }
        }
        if let Some(jwk) = find(&cache, kid) {
            return Ok(jwk);
        }
        // An unknown kid usually means the IdP rotated its key: fetch again,
        // but rate-limited, so tokens with made-up kids cannot hammer the IdP.
        if !fetched && self.may_refetch(&cache) {
            tracing::info!(kid = %quote(kid), "unknown kid; fetching the JWKS again");
            self.fetch(&mut cache).await?;
            if let Some(jwk) = find(&cache, kid) {
                return Ok(jwk);
            }
        }
        Err(VerifyError::UnknownKid(quote(kid)))
    }

    fn may_refetch(&self, cache: &Cache) -> bool {
        cache
            .attempted_at
            .is_none_or(|t| t.elapsed() >= self.refetch_interval)
    }

    async fn fetch(&self, cache: &mut Cache) -> Result<(), VerifyError> {
        cache.attempted_at = Some(Instant::now());
        let url = match &cache.jwks_url {
            Some(url) => url.clone(),
            None => {
                let url = self.resolve_jwks_url().await?;
                cache.jwks_url = Some(url.clone());
                url
            }
        };
        let doc = self.get_json(&url, "JWKS").await?;
        let keys = parse_jwks(&doc).map_err(|why| {
            VerifyError::JwksUnavailable(format!("the JWKS at {}: {why}", redact_url(&url)))
        })?;
        tracing::debug!(url = %redact_url(&url), keys = keys.len(), "JWKS fetched");
        cache.keys = Some(keys);
        cache.fetched_at = Some(Instant::now());
        Ok(())
    }

    /// The `jwks_uri` of the discovery document, which must name this issuer:
    /// a discovery URL for another realm would otherwise fail every token with
    /// a confusing "unknown kid".
    async fn resolve_jwks_url(&self) -> Result<Url, VerifyError> {
        let where_ = redact_url(&self.location);
        let doc = self.get_json(&self.location, "discovery document").await?;
        let bad = |why: String| {
            VerifyError::JwksUnavailable(format!("the discovery document at {where_}: {why}"))
        };
        if let Some(issuer) = doc.get("issuer").and_then(Value::as_str) {
            if issuer != self.cfg.issuer {
                return Err(bad(format!(
                    "issuer is {:?}, not the configured {:?}",
                    quote(issuer),
                    self.cfg.issuer
                )));
            }
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no jwks_uri".into()))?;
        let url = http::parse_url("jwks_uri", uri).map_err(|e| bad(e.to_string()))?;
        // Keys fetched over plain HTTP would let anyone on the path choose them.
        if self.location.scheme() == "https" && url.scheme() != "https" {
            return Err(bad("jwks_uri is not https".into()));
        }
        Ok(url)
    }

    async fn get_json(&self, url: &Url, what: &str) -> Result<Value, VerifyError> {
        let unavailable = |e: SourceError| {
            VerifyError::JwksUnavailable(format!("fetching the {what} failed: {e}"))
        };
        let resp = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| unavailable(map_send_error(e, &self.http)))?;
        if !resp.status().is_success() {
            return Err(unavailable(status_error(resp.status(), url, None)));
        }
        let body = read_body(resp, &self.http).await.map_err(unavailable)?;
        serde_json::from_slice(&body).map_err(|_| {
            VerifyError::JwksUnavailable(format!("the {what} at {} is not JSON", redact_url(url)))
        })
    }
}

fn find(cache: &Cache, kid: &str) -> Option<Jwk> {
    cache
        .keys
        .as_ref()?
        .iter()
        .find(|k| k.common.key_id.as_deref() == Some(kid))
        .cloned()
}

/// The usable keys of a JWKS. Entries that do not parse (key types this
/// library does not know) are skipped rather than failing the whole set:
/// Keycloak, for one, also publishes an RSA-OAEP encryption key.
fn parse_jwks(doc: &Value) -> Result<Vec<Jwk>, String> {
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    let keys: Vec<Jwk> = keys
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter(|k| k.common.key_id.is_some())
        .collect();
    if keys.is_empty() {
        return Err("no usable key with a kid".into());
    }
    Ok(keys)
}
