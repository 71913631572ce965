//! Fuzzing of every parser of upstream (untrusted) input, on stable Rust.
//!
//! Each target first replays its checked-in seed corpus
//! (`tests/fuzz_corpus/<target>/`: real Keycloak and Entra answers, AADSTS
//! errors, truncated JSON, huge numbers, hostile JWTs, …), then runs proptest
//! cases generated from structure-aware strategies, from byte-level mutations
//! of the corpus and from plain random bytes.
//!
//! Bounded time: `TOKENFS_FUZZ_CASES` generated cases per target (default
//! 2,000, so `cargo test` stays fast). CI can raise it for a longer run, e.g.
//! `TOKENFS_FUZZ_CASES=200000 cargo test --release --test fuzz`. Each target
//! prints how many corpus files and cases it ran (to stderr, which the test
//! harness does not capture).
//!
//! A failure prints the shrunk input; add it to the target's corpus directory
//! once the parser is fixed, so every later run replays it.
//!
//! Properties checked everywhere: no panic; no `Ok` for input that lacks what
//! the parser requires; error texts never carry a token or secret from the
//! input (only the OAuth `error`/`error_description` and Keycloak's
//! `account-link-url` are passed on by design, sanitized).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
use reqwest::{StatusCode, Url};
use secrecy::ExposeSecret;
use serde_json::Value;

use tokenfs::config::{Config, ConfigError, RawConfig};
use tokenfs::fuzzing::{
    expiry, get_issued, oauth_error, oauth_issued, parse_token_response, upstream_text,
    ErrorContext, SourceError, MAX_TOKEN_LEN,
};

// ---------------------------------------------------------------------------
// Harness: corpus replay, bounded proptest runs, reporting.

const DEFAULT_CASES: u32 = 2_000;

fn cases() -> u32 {
    match std::env::var("TOKENFS_FUZZ_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TOKENFS_FUZZ_CASES={v:?} is not a number")),
        Err(_) => DEFAULT_CASES,
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(target)
}

/// The target's seed files, sorted so runs are reproducible.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{}: a corpus needs seeds ({} files)",
        dir.display(),
        files.len()
    );
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// Replay every corpus file through `check`, then run `cases()` generated
/// inputs (which may also be built from the corpus) through it.
fn fuzz<S>(
    target: &str,
    strategy: impl FnOnce(&[Vec<u8>]) -> S,
    check: impl Fn(S::Value, &str) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: From<Vec<u8>>,
{
    let started = std::time::Instant::now();
    let seeds = corpus(target);
    for (name, bytes) in &seeds {
        let label = format!("corpus {target}/{name}");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check(S::Value::from(bytes.clone()), &label)
        }));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{label}: {e}"),
            Err(_) => panic!("{label}: panicked (see above)"),
        }
    }
    let bytes: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    let strategy = strategy(&bytes);
    let config = PtConfig {
        cases: cases(),
        // The corpus directory is the regression store; no files elsewhere.
        failure_persistence: None,
        ..PtConfig::default()
    };
    let ran = AtomicU64::new(0);
    let mut runner = TestRunner::new(config.clone());
    let result = runner.run(&strategy, |input| {
        ran.fetch_add(1, Ordering::Relaxed);
        check(input, "generated")
    });
    if let Err(e) = result {
        panic!("fuzz target {target}: {e}");
    }
    // Straight to stderr: libtest captures print!/eprint!, and CI's log
    // should show how much fuzzing each run did.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz {target}: {} corpus files, {} generated cases passed ({} runs) in {:.1?}",
        bytes.len(),
        config.cases,
        ran.load(Ordering::Relaxed),
        started.elapsed()
    );
}

/// One input to a target: its bytes plus, for generated inputs, the secret
/// planted in it (if any) and where, so the check knows what must not leak.
#[derive(Debug, Clone)]
struct Input {
    bytes: Vec<u8>,
    planted: Option<Planted>,
}

#[derive(Debug, Clone)]
struct Planted {
    secret: String,
    /// The JSON field (or part) that carries it.
    field: String,
}

impl From<Vec<u8>> for Input {
    fn from(bytes: Vec<u8>) -> Self {
        Input {
            bytes,
            planted: None,
        }
    }
}

/// Whether `body` is one JSON object (RFC 8259 grammar). Not through
/// `serde_json::Value`, which refuses a lone surrogate escape ("\ud800")
/// that the grammar allows and the parsers rightly skip in ignored members.
fn is_json_object(body: &[u8]) -> bool {
    let first = body.iter().find(|b| !b" \t\n\r".contains(b));
    first == Some(&b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// Runs of token-like characters (≥ 16, with a letter and a digit) in `text`:
/// what a secret or token in the input looks like. Used to check that an
/// error does not echo any part of a corpus file that is not passed on by
/// design.
fn tokenish(text: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(text);
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "-_.~+/=".contains(c)))
        .flat_map(|run| run.split('.'))
        .filter(|r| {
            r.len() >= 16
                && r.chars().any(|c| c.is_ascii_alphabetic())
                && r.chars().any(|c| c.is_ascii_digit())
        })
        .map(str::to_owned)
        .collect()
}

/// `shown` must not contain the planted secret (unless `allowed`), nor any
/// token-like run of `input` that none of `allowed_texts` contains.
fn no_leak(
    shown: &str,
    input: &Input,
    allowed_fields: &[&str],
    allowed_texts: &[&str],
) -> Result<(), TestCaseError> {
    if let Some(p) = &input.planted {
        if !allowed_fields.contains(&p.field.as_str()) && shown.contains(&p.secret) {
            return Err(fail(format!(
                "the secret planted in {} shows in the error: {shown}",
                p.field
            )));
        }
    }
    for run in tokenish(&input.bytes) {
        if shown.contains(&run) && !allowed_texts.iter().any(|t| t.contains(&run)) {
            return Err(fail(format!(
                "input text {run:?} shows in the error: {shown}"
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Generators shared by the targets.

fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{40}"
}

/// A JSON number as raw text, including what `serde_json::Value` cannot hold
/// (1e400, 30-digit integers) and what JSON forbids (NaN, Infinity, 01).
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "-?[0-9]{1,30}(\\.[0-9]{1,8})?([eE][+-]?[0-9]{1,4})?",
        prop::sample::select(vec![
            "0",
            "-0",
            "1",
            "-1",
            "NaN",
            "-NaN",
            "Infinity",
            "-Infinity",
            "1e400",
            "-1e400",
            "1e-400",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
            "-9223372036854775808",
            "1.7976931348623157e308",
            "4e18",
            "1700000300.5",
            "01",
            "0x10",
            "1_000",
            "\"300\"",
            "\" 300 \"",
            "\"-5\"",
            "\"NaN\"",
            "\"1e3\"",
        ])
        .prop_map(str::to_owned),
    ]
}

/// A JSON string literal with hostile contents.
fn string_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        "[ -~]{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        prop::sample::select(vec![
            "\"\"",
            "\" \"",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\"a\\nb\\r\\u001b[31m\"",
            "\"\u{202e}evil\"",
            "\"Bearer\"",
            "\"bearer\"",
            "\"openid profile offline_access\"",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Any JSON value as raw text, nested a few levels.
fn value_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        number_text(),
        string_text(),
        prop::sample::select(vec!["null", "true", "false", "[]", "{}"]).prop_map(str::to_owned),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z_-]{0,12}", inner), 0..4).prop_map(|v| {
                let fields: Vec<String> = v
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap()))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// A JSON object as text from `(key, raw value)` pairs; keys may repeat.
fn object_text(fields: &[(String, String)]) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// Byte-level mutations: truncate, insert, delete, overwrite, duplicate.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    Insert(Index, u8),
    Delete(Index, u8),
    Overwrite(Index, u8),
    Duplicate(Index, Index),
    InsertText(Index, &'static str),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1..32u8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
        (
            any::<Index>(),
            prop::sample::select(vec![
                "\"",
                "\\",
                "{",
                "}",
                "[",
                "]",
                ",",
                ":",
                "null",
                "1e999",
                "-",
                ".",
                "=",
                "\n",
                "\u{0}",
                "\u{ff}",
                "é",
                "\u{feff}",
                "\"exp\":",
                "\"access_token\":\"x\",",
                "[[[[[[[[[[[[[[[[",
                "\"error\":\"not_linked\",",
                "\"\"\"",
            ]),
        )
            .prop_map(|(i, t)| Mutation::InsertText(i, t)),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = |i: &Index, len: usize| i.index(len + 1);
        match m {
            Mutation::Truncate(i) => {
                let n = at(i, bytes.len());
                bytes.truncate(n);
            }
            Mutation::Insert(i, b) => {
                let n = at(i, bytes.len());
                bytes.insert(n, *b);
            }
            Mutation::Delete(i, len) => {
                let n = at(i, bytes.len());
                let end = (n + *len as usize).min(bytes.len());
                bytes.drain(n..end);
            }
            Mutation::Overwrite(i, b) => {
                if !bytes.is_empty() {
                    let n = i.index(bytes.len());
                    bytes[n] = *b;
                }
            }
            Mutation::Duplicate(a, b) => {
                let (x, y) = (at(a, bytes.len()), at(b, bytes.len()));
                let (lo, hi) = (x.min(y), x.max(y));
                let piece = bytes[lo..hi.min(lo + 4096)].to_vec();
                bytes.splice(hi..hi, piece);
            }
            Mutation::InsertText(i, t) => {
                let n = at(i, bytes.len());
                bytes.splice(n..n, t.bytes());
            }
        }
    }
    bytes
}

/// Mutated corpus files (secrets in them are not planted: the `tokenish`
/// check covers what they carry).
fn mutated_corpus(seeds: &[Vec<u8>]) -> impl Strategy<Value = Input> {
    (
        prop::sample::select(seeds.to_vec()),
        prop::collection::vec(mutation(), 1..6),
    )
        .prop_map(|(seed, muts)| Input::from(apply(seed, &muts)))
}

fn random_bytes() -> impl Strategy<Value = Input> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        any::<String>().prop_map(String::into_bytes),
    ]
    .prop_map(Input::from)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT-looking string: header and claims as raw JSON text (so they can
/// hold 1e400 or NaN), base64url-encoded, then possibly damaged.
fn jwt_text(claims: String, header: String, signature: String, damage: u8) -> String {
    let (h, c) = (b64(header.as_bytes()), b64(claims.as_bytes()));
    match damage % 12 {
        0 => format!("{h}.{c}.!!not base64!!"),
        1 => format!("{h}.{c}=.{signature}"),
        2 => format!("{h}.{}.{signature}", c.replace(['-', '_'], "+")),
        3 => format!("{h}.{c}.{signature}.extra.part"),
        4 => format!("{h}.{c}"),
        5 => format!("{h}.{c}.{signature} "),
        6 => format!("{h}.{}.{signature}", &c[..c.len() / 2]),
        7 => format!(".{c}."),
        _ => format!("{h}.{c}.{signature}"),
    }
}

fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#.to_owned()),
        Just(r#"{"alg":"none"}"#.to_owned()),
        Just(r#"{"alg":"HS256","typ":"JWT"}"#.to_owned()),
        Just("not json".to_owned()),
        value_text(),
    ]
}

fn date_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (1_600_000_000u64..1_900_000_000).prop_map(|n| n.to_string()),
        number_text(),
        string_text(),
        Just("null".to_owned()),
    ]
}

/// Claims as raw JSON text, with the planted secret (if any) in one claim.
fn claims_text(planted: Option<String>) -> impl Strategy<Value = String> {
    (
        prop::option::of(date_text()),
        prop::option::of(date_text()),
        prop::option::of(string_text()),
        prop::option::of(value_text()),
        0..4u8,
    )
        .prop_map(move |(exp, iat, sub, extra, shape)| {
            let mut fields = Vec::new();
            if let Some(exp) = exp {
                fields.push(("exp".to_owned(), exp));
            }
            if let Some(iat) = iat {
                fields.push(("iat".to_owned(), iat));
            }
            if let Some(sub) = sub {
                fields.push(("sub".to_owned(), sub));
            }
            if let Some(extra) = extra {
                fields.push(("realm_access".to_owned(), extra));
            }
            if let Some(secret) = &planted {
                fields.push(("client_secret".to_owned(), format!("\"{secret}\"")));
            }
            match shape {
                0 => "[1,2,3]".to_owned(),
                1 => format!("{} trailing", object_text(&fields)),
                _ => object_text(&fields),
            }
        })
}

fn any_jwt(planted: Option<String>) -> impl Strategy<Value = String> {
    (
        claims_text(planted),
        header_text(),
        "[A-Za-z0-9_-]{0,86}",
        any::<u8>(),
    )
        .prop_map(|(c, h, s, d)| jwt_text(c, h, s, d))
}

/// A valid-looking JWT expiring at `exp` (optionally with `iat`).
fn good_jwt(exp: u64, iat: Option<u64>, sub: &str) -> String {
    let mut claims = serde_json::json!({"exp": exp, "sub": sub, "jti": "j-1"});
    if let Some(iat) = iat {
        claims["iat"] = iat.into();
    }
    format!(
        "{}.{}.c2ln",
        b64(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

const NOW: u64 = 1_700_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Independent reading of a JWT's claims (RFC 7519: three parts, the middle
/// one base64url JSON object), to check `expiry` against.
fn claims_of(token: &str) -> Option<serde_json::Map<String, Value>> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

/// `expiry`'s contract, shared by the JWT, token-response and GET targets.
fn check_issued(
    token: &str,
    expires_in: Option<u64>,
    now: SystemTime,
    expires_at: SystemTime,
    issued_at: SystemTime,
    sub: Option<&str>,
    jti: Option<&str>,
) -> Result<(), TestCaseError> {
    prop_assert!(
        expires_at > issued_at,
        "exp {expires_at:?} <= iat {issued_at:?}"
    );
    prop_assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN);
    prop_assert!(
        token.bytes().all(|b| b.is_ascii_graphic()),
        "a token with whitespace, control or non-ASCII bytes was accepted"
    );
    prop_assert!(sub.is_none_or(|s| s.chars().count() <= 256));
    prop_assert!(jti.is_none_or(|s| s.chars().count() <= 256));
    match claims_of(token) {
        Some(claims) => {
            let exp = claims.get("exp").and_then(Value::as_f64);
            prop_assert!(exp.is_some(), "a JWT without a numeric exp was accepted");
            let got = expires_at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
            let want = exp.unwrap();
            prop_assert!(
                (got - want).abs() <= want.abs() * 1e-9 + 1e-6,
                "exp {want} but expires_at {got}"
            );
        }
        None => {
            // Opaque: the answer's expires_in decides, from now. (jsonwebtoken
            // may accept a claims part our strict reader refuses, e.g. with
            // padding; then its exp was used and only exp > iat is checked.)
            if let Some(secs) = expires_in {
                if token.split('.').count() != 3 {
                    prop_assert_eq!(expires_at, now + Duration::from_secs(secs));
                    prop_assert_eq!(issued_at, now);
                }
            } else {
                prop_assert!(
                    token.split('.').count() == 3,
                    "an opaque token without expires_in was accepted"
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Target 1a: token-endpoint 2xx answers (`parse_token_response` + expiry).

/// Keycloak/Entra-shaped answers with hostile values and a planted secret.
fn token_response_input() -> impl Strategy<Value = Input> {
    let field = (
        prop::sample::select(vec![
            "access_token",
            "refresh_token",
            "id_token",
            "session_state",
            "client_secret",
            "error_description",
            "scope",
            "token_type",
        ]),
        secret(),
    );
    (
        prop::option::of(prop_oneof![
            (1_600_000_000u64..1_900_000_000)
                .prop_map(|e| format!("\"{}\"", good_jwt(e, Some(e - 300), "alice"))),
            any_jwt(None).prop_map(|t| serde_json::to_string(&t).unwrap()),
            "[A-Za-z0-9._~+/-]{1,64}".prop_map(|t| format!("\"{t}\"")),
            value_text(),
        ]),
        prop::option::of(number_text()),
        prop::option::of(value_text()),
        prop::option::of(number_text()),
        prop::option::of(string_text()),
        field,
        prop::collection::vec(mutation(), 0..3),
        0..8u8,
    )
        .prop_map(
            |(
                access,
                expires_in,
                refresh,
                refresh_expires_in,
                token_type,
                (field, secret),
                muts,
                shape,
            )| {
                let mut fields = Vec::new();
                let mut push = |k: &str, v: Option<String>| {
                    if let Some(v) = v {
                        fields.push((k.to_owned(), v));
                    }
                };
                if field != "access_token" {
                    push("access_token", access);
                }
                push("expires_in", expires_in);
                if field != "refresh_token" {
                    push("refresh_token", refresh);
                }
                push("refresh_expires_in", refresh_expires_in);
                push("token_type", token_type);
                push("not-before-policy", Some("0".into()));
                fields.push((field.to_owned(), format!("\"{secret}\"")));
                let mut text = match shape {
                    0 => format!(
                        "[{}]",
                        fields
                            .iter()
                            .map(|(_, v)| v.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                    1 => format!("{} {}", object_text(&fields), object_text(&fields)),
                    _ => object_text(&fields),
                };
                if shape == 2 {
                    text = format!("{{\"nested\":{text}}}");
                }
                Input {
                    bytes: apply(text.into_bytes(), &muts),
                    planted: Some(Planted {
                        secret,
                        field: field.to_owned(),
                    }),
                }
            },
        )
}

fn check_token_response(input: Input, _label: &str) -> Result<(), TestCaseError> {
    let body = &input.bytes;
    let status = StatusCode::OK;
    let now = at(NOW);
    // The field-level parser alone.
    match parse_token_response(body, status) {
        Ok(answer) => {
            // RFC 6749 §5.1: a JSON object.
            prop_assert!(
                is_json_object(body),
                "accepted a token response that is not a JSON object: {:?}",
                String::from_utf8_lossy(body)
            );
            let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
                return Ok(()); // a lone surrogate escape: see `is_json_object`
            };
            let field = |name: &str| {
                obj.get(name)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            };
            prop_assert_eq!(
                answer.access_token.as_ref().map(|s| s.expose_secret()),
                field("access_token")
            );
            prop_assert_eq!(
                answer.refresh_token.as_ref().map(|s| s.expose_secret()),
                field("refresh_token")
            );
            if let Some(Value::Number(n)) = obj.get("expires_in") {
                prop_assert_eq!(answer.expires_in, n.as_u64());
            }
        }
        Err(e) => {
            prop_assert!(matches!(e, SourceError::Malformed(_)), "{e:?}");
            no_leak(&e.to_string(), &input, &[], &[])?;
        }
    }
    // The whole 2xx path of `OAuthSource::issue`.
    match oauth_issued(body, status, now) {
        Ok(issued) => {
            let token = issued.token.expose_secret();
            let Ok(json) = serde_json::from_slice::<Value>(body) else {
                // Checked above: an object with a lone surrogate escape.
                return Ok(());
            };
            prop_assert_eq!(
                json.get("access_token").and_then(Value::as_str),
                Some(token)
            );
            let expires_in = json.get("expires_in").and_then(|v| match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            });
            check_issued(
                token,
                expires_in,
                now,
                issued.expires_at,
                issued.issued_at,
                issued.claims.sub.as_deref(),
                issued.claims.jti.as_deref(),
            )?;
        }
        Err(e) => {
            prop_assert!(matches!(e, SourceError::Malformed(_)), "{e:?}");
            no_leak(&e.to_string(), &input, &[], &[])?;
        }
    }
    Ok(())
}

#[test]
fn fuzz_token_response() {
    fuzz(
        "token_response",
        |seeds| {
            prop_oneof![
                5 => token_response_input(),
                3 => mutated_corpus(seeds),
                1 => random_bytes(),
            ]
        },
        check_token_response,
    );
}

// ---------------------------------------------------------------------------
// Target 1b: token-endpoint error answers (`error_from_body`).

#[derive(Debug, Clone)]
struct ErrorCase {
    input: Input,
    status: u16,
    exchange: bool,
    redirect_uri: bool,
    unreadable: bool,
}

impl From<Vec<u8>> for ErrorCase {
    /// A corpus file: a 400 from a Keycloak exchange with a `redirect_uri`
    /// (the path where most of the body is used); the generated cases vary it.
    fn from(bytes: Vec<u8>) -> Self {
        ErrorCase {
            input: Input::from(bytes),
            status: 400,
            exchange: true,
            redirect_uri: true,
            unreadable: false,
        }
    }
}

const TOKEN_URL: &str = "https://kc.example.com/realms/DominoRealm/protocol/openid-connect/token";
const REDIRECT_URI: &str = "https://domino.example.com/account/linked";

fn error_body_input() -> impl Strategy<Value = Input> {
    let code = prop_oneof![
        prop::sample::select(vec![
            "invalid_grant",
            "interaction_required",
            "consent_required",
            "not_linked",
            "token_expired",
            "invalid_client",
            "unauthorized_client",
            "access_denied",
            " not_linked ",
            "NOT_LINKED",
            "not_linked\n",
            "",
        ])
        .prop_map(|c| serde_json::to_string(c).unwrap()),
        value_text(),
    ];
    let link = prop_oneof![
        Just(format!(
            "\"{}/broker/azure/link?client_id=x&nonce=n&hash=h\"",
            &TOKEN_URL[..41]
        )),
        prop::sample::select(vec![
            "\"not a url\"",
            "\"javascript:alert(1)\"",
            "\"http://a/\\n\\nX-Injected: 1\"",
            "\"http://a/b c\"",
            "\"\"",
            "\"http://[::1\"",
            "\"file:///etc/shadow\"",
        ])
        .prop_map(str::to_owned),
        value_text(),
    ];
    let description = prop_oneof![
        Just("\"AADSTS700082: The refresh token has expired due to inactivity.\\r\\nTrace ID: 0000\"".to_owned()),
        string_text(),
        value_text(),
    ];
    (
        prop::option::of(code),
        prop::option::of(description),
        prop::option::of(link),
        prop::sample::select(vec![
            "access_token",
            "refresh_token",
            "id_token",
            "error_description",
            "error",
            "account-link-url",
            "error_uri",
            "trace_id",
            "correlation_id",
        ]),
        secret(),
        prop::collection::vec(mutation(), 0..3),
        0..6u8,
    )
        .prop_map(|(code, description, link, field, secret, muts, shape)| {
            let mut fields = Vec::new();
            // The planted secret may replace a field or sit next to the code,
            // embedded in text (an upstream echoing what it was sent).
            let embed = |v: Option<String>, f: &str| {
                if f == field {
                    Some(format!("\"rejected {secret} as invalid\""))
                } else {
                    v
                }
            };
            for (k, v) in [
                ("error", embed(code, "error")),
                ("error_description", embed(description, "error_description")),
                ("account-link-url", embed(link, "account-link-url")),
                ("error_codes", Some("[700082]".to_owned())),
            ] {
                if let Some(v) = v {
                    fields.push((k.to_owned(), v));
                }
            }
            if !["error", "error_description", "account-link-url"].contains(&field) {
                fields.push((field.to_owned(), format!("\"{secret}\"")));
            }
            let text = match shape {
                0 => format!(
                    "[{}]",
                    fields
                        .iter()
                        .map(|(_, v)| v.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                1 => format!("<html><body>{}</body></html>", object_text(&fields)),
                _ => object_text(&fields),
            };
            Input {
                bytes: apply(text.into_bytes(), &muts),
                planted: Some(Planted {
                    secret,
                    field: field.to_owned(),
                }),
            }
        })
}

fn error_case() -> impl Strategy<Value = ErrorCase> {
    (
        prop_oneof![
            prop::sample::select(vec![400u16, 401, 403, 404, 429, 500, 502, 503, 302]),
            100u16..1000,
        ],
        any::<(bool, bool)>(),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(status, (exchange, redirect_uri), unreadable)| ErrorCase {
            input: Input::from(Vec::new()),
            status,
            exchange,
            redirect_uri,
            unreadable,
        })
}

fn check_error_body(case: ErrorCase, _label: &str) -> Result<(), TestCaseError> {
    let token_url = Url::parse(TOKEN_URL).unwrap();
    let setup = ErrorContext {
        token_url: &token_url,
        client_id: "domino-tokenfs",
        token_exchange: case.exchange,
        redirect_uri: case.redirect_uri.then_some(REDIRECT_URI),
        sent: &[],
    };
    let status = StatusCode::from_u16(case.status).unwrap();
    let body = (!case.unreadable).then_some(case.input.bytes.as_slice());
    let err = oauth_error(&setup, status, body);
    let shown = err.to_string();

    // What the mapping may use (RFC 6749 §5.2): a JSON object whose `error`,
    // `error_description` and `account-link-url` are strings; one with a
    // repeated or wrongly typed member is not used at all.
    #[derive(serde::Deserialize)]
    struct Strict {
        error: Option<String>,
        error_description: Option<String>,
        #[serde(rename = "account-link-url")]
        link: Option<String>,
    }
    let strict = body
        .filter(|b| is_json_object(b))
        .and_then(|b| serde_json::from_slice::<Strict>(b).ok());
    let text = |k: &str| {
        strict.as_ref().and_then(|s| match k {
            "error" => s.error.as_deref(),
            "error_description" => s.error_description.as_deref(),
            _ => s.link.as_deref(),
        })
    };
    let code = text("error")
        .map(|c| upstream_text(c.trim(), &[]))
        .filter(|c| !c.is_empty());
    let description = text("error_description")
        .map(str::trim)
        .filter(|d| !d.is_empty());
    let link = text("account-link-url");

    match &err {
        SourceError::ConsentRequired { url, expired, .. } => {
            let code = code.as_deref();
            match code {
                Some("not_linked" | "token_expired") if link.is_some() => {
                    prop_assert_eq!(*expired, code == Some("token_expired"));
                    // Only an http(s) link is a consent URL, re-serialized.
                    let want = Url::parse(link.unwrap())
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https"));
                    prop_assert!(
                        want.is_some(),
                        "a link that is no http(s) URL was served: {url:?}"
                    );
                    let mut want = want.unwrap();
                    if case.redirect_uri {
                        want.query_pairs_mut()
                            .append_pair("redirect_uri", REDIRECT_URI);
                    }
                    prop_assert_eq!(url, &want.to_string());
                }
                _ => {
                    return Err(fail(format!(
                        "consent asked for without a consent answer: {shown}"
                    )))
                }
            }
            // The consent URL is served as a file and logged on one line.
            prop_assert!(
                !url.chars().any(char::is_control),
                "control characters in the consent URL: {url:?}"
            );
        }
        SourceError::Rejected(m) | SourceError::Unavailable(m) => {
            let retry = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
            prop_assert_eq!(
                matches!(err, SourceError::Unavailable(_)),
                retry,
                "{:?}",
                err
            );
            prop_assert!(
                !m.chars().any(char::is_control),
                "control characters in {m:?}"
            );
            // The OAuth code and description are passed on, sanitized and capped.
            match (&code, description) {
                (Some(code), Some(d)) if !(status == StatusCode::FORBIDDEN && case.exchange) => {
                    let want = format!("{code}: {}", upstream_text(d, &[]));
                    prop_assert!(m.contains(&want), "{m:?} lacks {want:?}");
                }
                (Some(code), None) if !(status == StatusCode::FORBIDDEN && case.exchange) => {
                    prop_assert!(m.contains(code.as_str()), "{m:?} lacks {code:?}");
                }
                _ => {}
            }
            prop_assert!(
                m.chars().count() <= 300 + 2 * 301 + TOKEN_URL.len(),
                "{} chars",
                m.chars().count()
            );
        }
        other => return Err(fail(format!("unexpected kind: {other:?}"))),
    }
    // Only `error`, `error_description` and `account-link-url` may show.
    let mut allowed: Vec<String> = [TOKEN_URL, REDIRECT_URI, "domino-tokenfs"]
        .map(str::to_owned)
        .to_vec();
    allowed.extend(
        ["error", "error_description", "account-link-url"]
            .iter()
            .filter_map(|k| text(k))
            .map(str::to_owned),
    );
    let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
    no_leak(
        &shown,
        &case.input,
        &["error", "error_description", "account-link-url"],
        &allowed,
    )
}

#[test]
fn fuzz_error_body() {
    fuzz(
        "error_body",
        |seeds| {
            let body = prop_oneof![
                5 => error_body_input(),
                3 => mutated_corpus(seeds),
                1 => random_bytes(),
            ];
            (body, error_case()).prop_map(|(input, case)| ErrorCase { input, ..case })
        },
        check_error_body,
    );
}

// ---------------------------------------------------------------------------
// Target 2: JWT expiry (`jwt::expiry`).

#[derive(Debug, Clone)]
struct JwtCase {
    input: Input,
    expires_in: Option<u64>,
    now: u64,
}

impl From<Vec<u8>> for JwtCase {
    /// A corpus file is one token (trailing newline removed), read at NOW
    /// with no expires_in and, in the check, again with one.
    fn from(mut bytes: Vec<u8>) -> Self {
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        JwtCase {
            input: Input::from(bytes),
            expires_in: None,
            now: NOW,
        }
    }
}

fn jwt_case() -> impl Strategy<Value = JwtCase> {
    let token = prop_oneof![
        4 => secret().prop_flat_map(|s| any_jwt(Some(s.clone())).prop_map(move |t| Input {
            bytes: t.into_bytes(),
            planted: Some(Planted { secret: s.clone(), field: "claims".into() }),
        })),
        2 => (1_600_000_000u64..1_900_000_000, prop::option::of(1_500_000_000u64..2_000_000_000), "[ -~]{0,300}")
            .prop_map(|(e, i, sub)| Input::from(good_jwt(e, i, &sub).into_bytes())),
        1 => secret().prop_map(|s| Input {
            bytes: s.clone().into_bytes(),
            planted: Some(Planted { secret: s, field: "token".into() }),
        }),
        1 => (secret(), 0..3usize, any::<u8>()).prop_map(|(s, n, b)| {
            // Around MAX_TOKEN_LEN, sometimes with one bad byte at the end.
            let mut t = s.repeat(MAX_TOKEN_LEN / 40 + 1);
            t.truncate(MAX_TOKEN_LEN - 1 + n);
            let mut bytes = t.into_bytes();
            if b % 4 == 0 {
                *bytes.last_mut().unwrap() = b;
            }
            Input { bytes, planted: Some(Planted { secret: s, field: "token".into() }) }
        }),
        1 => random_bytes(),
    ];
    (
        token,
        prop_oneof![
            Just(None),
            Just(Some(0)),
            Just(Some(u64::MAX)),
            (1u64..100_000).prop_map(Some),
            any::<u64>().prop_map(Some),
        ],
        prop_oneof![Just(NOW), 0u64..(1 << 40)],
    )
        .prop_map(|(input, expires_in, now)| JwtCase {
            input,
            expires_in,
            now,
        })
}

fn check_jwt(case: JwtCase, _label: &str) -> Result<(), TestCaseError> {
    // Tokens reach `expiry` as &str; other bytes never get this far.
    let Ok(token) = std::str::from_utf8(&case.input.bytes) else {
        return Ok(());
    };
    let now = UNIX_EPOCH + Duration::from_secs(case.now);
    for expires_in in [case.expires_in, case.expires_in.or(Some(300))] {
        match expiry(token, expires_in, now) {
            Ok((exp, iat, claims)) => check_issued(
                token,
                expires_in,
                now,
                exp,
                iat,
                claims.sub.as_deref(),
                claims.jti.as_deref(),
            )?,
            Err(e) => {
                prop_assert!(matches!(e, SourceError::Malformed(_)), "{e:?}");
                let shown = e.to_string();
                if token.len() >= 8 {
                    prop_assert!(
                        !shown.contains(token),
                        "the token shows in the error: {shown}"
                    );
                }
                no_leak(&shown, &case.input, &[], &[])?;
                if token.len() > MAX_TOKEN_LEN {
                    prop_assert!(shown.contains("limit"), "{shown}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_jwt_expiry() {
    fuzz(
        "jwt",
        |seeds| {
            prop_oneof![
                6 => jwt_case(),
                2 => (mutated_corpus(seeds), any::<Option<u32>>()).prop_map(|(input, e)| JwtCase {
                    input,
                    expires_in: e.map(u64::from),
                    now: NOW,
                }),
            ]
        },
        check_jwt,
    );
}

// ---------------------------------------------------------------------------
// Target 5: the GET source's body (`get::issued_from_body`).

fn get_body_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        (
            1_700_000_100u64..1_900_000_000,
            prop::sample::select(vec![
                "", "\n", "\r\n", " \t", "\n\n", "\u{b}", "\u{a0}", "\u{feff}"
            ]),
            prop::sample::select(vec!["", "\n", " ", "\u{0}", "\u{feff}"]),
        )
            .prop_map(|(exp, after, before)| Input::from(
                format!("{before}{}{after}", good_jwt(exp, None, "alice")).into_bytes()
            )),
        secret().prop_flat_map(|s| any_jwt(Some(s.clone())).prop_map(move |t| Input {
            bytes: format!("{t}\n").into_bytes(),
            planted: Some(Planted {
                secret: s.clone(),
                field: "claims".into()
            }),
        })),
        secret().prop_map(|s| Input {
            bytes: format!("{{\"access_token\":\"{s}\",\"expires_in\":300}}").into_bytes(),
            planted: Some(Planted {
                secret: s,
                field: "access_token".into()
            }),
        }),
    ]
}

fn check_get_body(input: Input, _label: &str) -> Result<(), TestCaseError> {
    match get_issued(input.bytes.clone(), at(NOW)) {
        Ok(issued) => {
            let token = issued.token.expose_secret();
            let text = std::str::from_utf8(&input.bytes).unwrap();
            prop_assert_eq!(token, text.trim_ascii());
            prop_assert!(
                token.split('.').count() == 3,
                "a GET body that is not a JWT was accepted"
            );
            check_issued(
                token,
                None,
                at(NOW),
                issued.expires_at,
                issued.issued_at,
                issued.claims.sub.as_deref(),
                issued.claims.jti.as_deref(),
            )?;
        }
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(matches!(e, SourceError::Malformed(_)), "{e:?}");
            no_leak(&shown, &input, &[], &[])?;
        }
    }
    Ok(())
}

#[test]
fn fuzz_get_body() {
    fuzz(
        "get_body",
        |seeds| {
            prop_oneof![
                4 => get_body_input(),
                3 => mutated_corpus(seeds),
                1 => random_bytes(),
            ]
        },
        check_get_body,
    );
}

// ---------------------------------------------------------------------------
// Target 3: JWKS (`JwkSet` from JSON, `DecodingKey::from_jwk`, a verify).

fn b64_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| format!("\"{}\"", b64(&b))),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| format!(
            "\"{}\"",
            base64::engine::general_purpose::STANDARD.encode(b)
        )),
        Just("\"AQAB\"".to_owned()),
        Just("\"AA\"".to_owned()),
        Just(format!("\"{}\"", "_".repeat(20_000))),
        string_text(),
        value_text(),
    ]
}

fn jwk_text() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            prop::sample::select(vec!["RSA", "EC", "OKP", "oct", "rsa", ""])
                .prop_map(|s| format!("\"{s}\"")),
            value_text(),
        ],
        prop::sample::select(vec![
            "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "HS256", "none",
            "RSA-OAEP",
        ]),
        prop::sample::select(vec![
            "P-256",
            "P-384",
            "P-521",
            "Ed25519",
            "X25519",
            "secp256k1",
            "",
        ]),
        (b64_value(), b64_value(), b64_value(), b64_value()),
        prop::option::of(value_text()),
        0..4u8,
    )
        .prop_map(|(kty, alg, crv, (n, e, x, y), extra, shape)| {
            let mut f = vec![
                ("kty".to_owned(), kty),
                ("kid".to_owned(), "\"k1\"".to_owned()),
                ("use".to_owned(), "\"sig\"".to_owned()),
            ];
            if shape != 0 {
                f.push(("alg".to_owned(), format!("\"{alg}\"")));
            }
            f.push(("crv".to_owned(), format!("\"{crv}\"")));
            f.extend([
                ("n".into(), n),
                ("e".into(), e),
                ("x".into(), x.clone()),
                ("y".into(), y),
                ("k".into(), x),
            ]);
            if let Some(extra) = extra {
                f.push(("x5c".to_owned(), extra));
            }
            object_text(&f)
        })
}

fn jwks_input() -> impl Strategy<Value = Input> {
    (
        prop::collection::vec(jwk_text(), 0..4),
        prop::collection::vec(mutation(), 0..2),
    )
        .prop_map(|(keys, muts)| {
            let text = format!("{{\"keys\":[{}]}}", keys.join(","));
            Input::from(apply(text.into_bytes(), &muts))
        })
}

fn check_jwks(input: Input, _label: &str) -> Result<(), TestCaseError> {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let Ok(set) = serde_json::from_slice::<JwkSet>(&input.bytes) else {
        return Ok(());
    };
    let _ = set.find("k1");
    for jwk in &set.keys {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        // What verification does next: check a signature with the key, for
        // every algorithm (a JWKS may lie about `alg`; the token's header
        // picks it).
        for alg in [
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
            Algorithm::HS256,
        ] {
            let header = format!("{{\"alg\":\"{alg:?}\",\"kid\":\"k1\"}}");
            let token = format!(
                "{}.{}.{}",
                b64(header.as_bytes()),
                b64(br#"{"exp":4000000000}"#),
                b64(&[7u8; 64])
            );
            let mut validation = Validation::new(alg);
            validation.validate_aud = false;
            let verified = jsonwebtoken::decode::<Value>(&token, &key, &validation);
            prop_assert!(
                verified.is_err(),
                "a made-up signature verified with {alg:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn fuzz_jwks() {
    fuzz(
        "jwks",
        |seeds| {
            prop_oneof![
                5 => jwks_input(),
                3 => mutated_corpus(seeds),
                1 => random_bytes(),
            ]
        },
        check_jwks,
    );
}

// ---------------------------------------------------------------------------
// Target 4: the config file (`toml` → `RawConfig` → `Config::validate`).

/// Files the generated configs point at, in a private directory: secret
/// files with a planted secret (0600 and, to be refused, 0644), a missing
/// path, a directory. Validation only ever reads these or writes inside it.
struct Sandbox {
    dir: tempfile::TempDir,
    secret: String,
}

fn sandbox() -> &'static Sandbox {
    use std::os::unix::fs::PermissionsExt;
    static SANDBOX: std::sync::OnceLock<Sandbox> = std::sync::OnceLock::new();
    SANDBOX.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let secret = "Zq3vN8wLx2KpR7tYb5HmC1dFgJ6sUe4aWo9iTn0E".to_owned();
        for (name, mode) in [("secret", 0o600), ("open-secret", 0o644)] {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("{secret}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::write(dir.path().join("empty"), "").unwrap();
        std::fs::set_permissions(
            dir.path().join("empty"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("a-dir")).unwrap();
        Sandbox { dir, secret }
    })
}

fn config_value(key: &'static str) -> BoxedStrategy<String> {
    let d = sandbox().dir.path().display().to_string();
    let quoted = |v: &str| toml_string(v);
    let paths: Vec<String> = [
        "secret",
        "open-secret",
        "empty",
        "a-dir",
        "missing",
        "state.json",
    ]
    .iter()
    .map(|n| quoted(&format!("{d}/{n}")))
    .collect();
    let junk = prop_oneof![
        Just("\"\"".to_owned()),
        "[ -~]{0,30}".prop_map(|s| toml_string(&s)),
        any::<String>().prop_map(|s| toml_string(&s)),
        prop::sample::select(vec![
            "0",
            "-1",
            "1e400",
            "nan",
            "inf",
            "true",
            "[]",
            "{}",
            "1979-05-27T07:32:00Z",
            "4294967296",
            "18446744073709551615",
        ])
        .prop_map(str::to_owned),
    ];
    match key {
        "source" => prop_oneof![
            4 => prop::sample::select(vec!["oauth2", "token-exchange", "entra", "http", "OAuth2", "ldap"]).prop_map(quoted),
            1 => junk,
        ]
        .boxed(),
        "grant" => prop_oneof![
            prop::sample::select(vec!["refresh_token", "client_credentials", "password"]).prop_map(quoted),
            junk,
        ]
        .boxed(),
        "token_url" | "url" | "authority" | "redirect_uri" => prop_oneof![
            4 => prop::sample::select(vec![
                "https://kc.example.com/realms/R/protocol/openid-connect/token",
                "http://127.0.0.1:1/t",
                "https://user:pw@kc.example.com/t",
                "ftp://kc.example.com/",
                "https://",
                "not a url",
                "http://[::1]:8080/",
                "https://kc.example.com/t?secret=Zq3vN8wLx2KpR7tYb5HmC1dFgJ6sUe4aWo9iTn0E",
            ])
            .prop_map(quoted),
            1 => junk,
        ]
        .boxed(),
        "client_secret_file" | "refresh_token_file" | "rotated_refresh_token_file"
        | "subject_token_file" | "consent_state_file" | "ca_file" => prop_oneof![
            4 => prop::sample::select(paths),
            1 => junk,
        ]
        .boxed(),
        "subject" => prop_oneof![
            prop::sample::select(vec!["token", "azure-token", "missing", ""]).prop_map(quoted),
            junk,
        ]
        .boxed(),
        "tenant" => prop_oneof![
            prop::sample::select(vec!["contoso.onmicrosoft.com", "00000000-0000-4000-8000-000000000000", "a/b", "ü"])
                .prop_map(quoted),
            junk,
        ]
        .boxed(),
        "headers" => {
            let secret_path = toml_string(&format!("{d}/secret"));
            let plain = sandbox().secret.clone();
            prop_oneof![
                Just(format!("{{ Accept = \"text/plain\", X-Api-Key = {{ file = {secret_path} }} }}")),
                Just(format!("{{ X-Api-Key = \"{plain}\" }}")),
                Just(format!("{{ \"bad name\" = \"{plain}\" }}")),
                Just(format!("{{ X-Api-Key = {{ path = \"{plain}\" }} }}")),
                junk,
            ]
            .boxed()
        }
        "min_valid" | "timeout" | "connect_timeout" | "read_timeout" => prop_oneof![
            prop::sample::select(vec!["30s", "0s", "5m", "1h", "100000000000y", "-1s", "1 fortnight", "", "1.5s"])
                .prop_map(quoted),
            junk,
        ]
        .boxed(),
        "refresh_at" => prop_oneof![any::<f64>().prop_map(|f| format!("{f:?}")), junk].boxed(),
        "max_body" | "uid" | "gid" => prop_oneof![any::<i64>().prop_map(|n| n.to_string()), junk].boxed(),
        _ => prop_oneof![
            prop::sample::select(vec!["tokenfs", "azure", "openid offline_access", "urn:ietf:params:oauth:token-type:jwt"])
                .prop_map(quoted),
            junk,
        ]
        .boxed(),
    }
}

fn toml_string(s: &str) -> String {
    // A TOML basic string is JSON-compatible for what JSON escapes produce,
    // except \u escapes of surrogates, which serde_json never emits.
    serde_json::to_string(s).unwrap()
}

const FILE_KEYS: [&str; 30] = [
    "source",
    "token_url",
    "grant",
    "client_id",
    "client_secret_file",
    "refresh_token_file",
    "rotated_refresh_token_file",
    "scope",
    "subject",
    "subject_token_file",
    "subject_token_type",
    "requested_issuer",
    "requested_token_type",
    "audience",
    "redirect_uri",
    "tenant",
    "authority",
    "login_hint",
    "consent_state_file",
    "url",
    "headers",
    "min_valid",
    "refresh_at",
    "connect_timeout",
    "timeout",
    "max_body",
    "ca_file",
    "source",
    "client_id",
    "bogus_key",
];

fn config_table() -> impl Strategy<Value = String> {
    let entry = prop::sample::select(FILE_KEYS.to_vec())
        .prop_flat_map(|k| config_value(k).prop_map(move |v| format!("{k} = {v}\n")));
    (
        prop::sample::select(vec![
            "token",
            "azure-token",
            ".status",
            "x.consent-url",
            "a/b",
            "",
            "ü",
            "token",
        ]),
        prop::collection::vec(entry, 0..10),
    )
        .prop_map(|(name, entries)| format!("[files.{}]\n{}", toml_string(name), entries.concat()))
}

fn config_input() -> impl Strategy<Value = Input> {
    let mount = prop::collection::vec(
        prop::sample::select(vec!["uid", "gid", "read_timeout", "bogus"])
            .prop_flat_map(|k| config_value(k).prop_map(move |v| format!("{k} = {v}\n"))),
        0..3,
    )
    .prop_map(|e| format!("[mount]\n{}", e.concat()));
    (
        prop::option::of(mount),
        prop::collection::vec(config_table(), 0..4),
        prop::collection::vec(mutation(), 0..2),
    )
        .prop_map(|(mount, tables, muts)| {
            let text = format!("{}\n{}", mount.unwrap_or_default(), tables.join("\n"));
            Input {
                bytes: apply(text.into_bytes(), &muts),
                planted: Some(Planted {
                    secret: sandbox().secret.clone(),
                    field: "secret files and header values".into(),
                }),
            }
        })
}

/// A valid config (sandbox secret files) with one or two keys replaced,
/// dropped or added: reaches deep validation far more often than random
/// tables do.
fn near_valid_config() -> impl Strategy<Value = Input> {
    let d = sandbox().dir.path().display().to_string();
    let secret = toml_string(&format!("{d}/secret"));
    let kc = "\"https://kc.example.com/realms/R/protocol/openid-connect/token\"";
    let templates: Vec<Vec<(&'static str, String)>> = vec![
        vec![
            ("source", "\"oauth2\"".into()),
            ("token_url", kc.into()),
            ("client_id", "\"tokenfs\"".into()),
            ("client_secret_file", secret.clone()),
            ("refresh_token_file", secret.clone()),
        ],
        vec![
            ("source", "\"token-exchange\"".into()),
            ("token_url", kc.into()),
            ("client_id", "\"tokenfs\"".into()),
            ("client_secret_file", secret.clone()),
            ("subject_token_file", secret.clone()),
            ("requested_issuer", "\"azure\"".into()),
        ],
        vec![
            ("source", "\"entra\"".into()),
            ("tenant", "\"contoso.onmicrosoft.com\"".into()),
            ("client_id", "\"c\"".into()),
            ("scope", "\"https://storage.azure.com/.default\"".into()),
            ("redirect_uri", "\"https://domino.example.com/cb\"".into()),
            ("refresh_token_file", secret.clone()),
        ],
        vec![
            ("source", "\"http\"".into()),
            ("url", "\"http://127.0.0.1:8899/access-token\"".into()),
        ],
    ];
    let edit = prop::sample::select(FILE_KEYS.to_vec())
        .prop_flat_map(|k| (Just(k), config_value(k), any::<bool>()));
    (
        prop::sample::select(templates),
        prop::collection::vec(edit, 1..3),
    )
        .prop_map(|(mut table, edits)| {
            for (key, value, drop) in edits {
                table.retain(|(k, _)| *k != key);
                if !drop {
                    table.push((key, value));
                }
            }
            let body: String = table.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            Input {
                bytes: format!("[files.token]\n{body}").into_bytes(),
                planted: None,
            }
        })
}

/// Point every path that validation would write (`consent_state_file`, the
/// rotated refresh token's file) into
/// the sandbox, so no input can make the test write elsewhere.
fn confine(raw: &mut RawConfig) {
    let dir = sandbox().dir.path();
    for file in raw.files.values_mut() {
        // Else the default, in the host's state directory.
        if file.rotated_refresh_token_file.is_none() {
            file.rotated_refresh_token_file = Some(dir.join("rotated"));
        }
        if let Some(p) = &mut file.consent_state_file {
            // A directory stays, to reach the failed-write path.
            if *p != dir.join("a-dir") {
                *p = dir.join("state.json");
            }
        }
    }
}

fn check_config(input: Input, _label: &str) -> Result<(), TestCaseError> {
    let Ok(text) = std::str::from_utf8(&input.bytes) else {
        return Ok(()); // `Config::load` reads it as UTF-8 text and says so.
    };
    let mut raw = match toml::from_str::<RawConfig>(text) {
        Ok(raw) => raw,
        Err(e) => {
            // A parse error: the daemon wraps it as `config file PATH: …`.
            let shown = ConfigError::Parse {
                path: "/etc/tokenfs/config.toml".into(),
                message: e.to_string(),
            }
            .to_string();
            prop_assert!(shown.starts_with("config file /etc/tokenfs/config.toml: "));
            prop_assert!(!e.to_string().trim().is_empty());
            return Ok(());
        }
    };
    confine(&mut raw);
    match Config::validate(raw) {
        Ok(config) => {
            prop_assert!(!config.files.is_empty());
            prop_assert!(!config.read_timeout.is_zero());
            for f in &config.files {
                prop_assert!(
                    !f.name.is_empty() && !f.name.starts_with('.') && !f.name.contains('/')
                );
                prop_assert!(!f.name.ends_with(".consent-url"));
            }
        }
        Err(e) => {
            let shown = e.to_string();
            match &e {
                ConfigError::Invalid { key, problem } => {
                    prop_assert!(
                        key.starts_with("files") || key.starts_with("mount."),
                        "the error names no key: {shown}"
                    );
                    prop_assert!(!problem.trim().is_empty(), "{shown}");
                    prop_assert_eq!(&shown, &format!("config: {key}: {problem}"));
                }
                other => {
                    return Err(fail(format!(
                        "validate returned a non-key error: {other:?}"
                    )))
                }
            }
            // Secrets come from files and header values; errors name keys.
            let secret = &sandbox().secret;
            prop_assert!(
                !shown.contains(secret.as_str()),
                "a secret shows in: {shown}"
            );
            prop_assert!(!shown.contains("pw@"), "URL credentials show in: {shown}");
        }
    }
    Ok(())
}

#[test]
fn fuzz_config() {
    fuzz(
        "config",
        |seeds| {
            prop_oneof![
                4 => config_input(),
                3 => near_valid_config(),
                2 => mutated_corpus(seeds),
                1 => random_bytes(),
            ]
        },
        check_config,
    );
}
