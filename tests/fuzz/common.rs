//! The fuzz harness (corpus replay, bounded proptest runs, the leak check)
//! and the generators the targets share. Its `pub use`s are the targets' prelude.

pub use std::io::Write as _;
pub use std::path::{Path, PathBuf};
pub use std::sync::atomic::{AtomicU64, Ordering};
pub use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use base64::Engine as _;
pub use proptest::prelude::*;
pub use proptest::sample::Index;
pub use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
pub use reqwest::{StatusCode, Url};
pub use secrecy::zeroize::Zeroizing;
pub use secrecy::ExposeSecret;
pub use serde_json::Value;

pub use tokenfs::config::{Config, ConfigError, RawConfig};
pub use tokenfs::fuzzing::{
    expiry, get_issued, oauth_error, oauth_issued, parse_token_response, upstream_text,
    ErrorContext, SourceError, MAX_TOKEN_LEN,
};

// ---------------------------------------------------------------------------
// Harness: corpus replay, bounded proptest runs, reporting.

pub const DEFAULT_CASES: u32 = 2_000;

pub fn cases() -> u32 {
    match std::env::var("TOKENFS_FUZZ_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TOKENFS_FUZZ_CASES={v:?} is not a number")),
        Err(_) => DEFAULT_CASES,
    }
}

pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(target)
}

/// The target's seed files, sorted so runs are reproducible.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
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
pub fn fuzz<S>(
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
pub struct Input {
    pub bytes: Vec<u8>,
    pub planted: Option<Planted>,
}

#[derive(Debug, Clone)]
pub struct Planted {
    pub secret: String,
    /// The JSON field (or part) that carries it.
    pub field: String,
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
pub fn is_json_object(body: &[u8]) -> bool {
    let first = body.iter().find(|b| !b" \t\n\r".contains(b));
    first == Some(&b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

pub fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// Runs of token-like characters (≥ 16, with a letter and a digit) in `text`:
/// what a secret or token in the input looks like. Used to check that an
/// error does not echo any part of a corpus file that is not passed on by
/// design.
pub fn tokenish(text: &[u8]) -> Vec<String> {
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
pub fn no_leak(
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

pub fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{40}"
}

/// A JSON number as raw text, including what `serde_json::Value` cannot hold
/// (1e400, 30-digit integers) and what JSON forbids (NaN, Infinity, 01).
pub fn number_text() -> impl Strategy<Value = String> {
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
pub fn string_text() -> impl Strategy<Value = String> {
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
pub fn value_text() -> impl Strategy<Value = String> {
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
/// The values of `fields` as a JSON array: valid JSON, but not an object.
pub fn array_text(fields: &[(String, String)]) -> String {
    let values: Vec<&str> = fields.iter().map(|(_, v)| v.as_str()).collect();
    format!("[{}]", values.join(","))
}

pub fn object_text(fields: &[(String, String)]) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// Byte-level mutations: truncate, insert, delete, overwrite, duplicate.
#[derive(Debug, Clone)]
pub enum Mutation {
    Truncate(Index),
    Insert(Index, u8),
    Delete(Index, u8),
    Overwrite(Index, u8),
    Duplicate(Index, Index),
    InsertText(Index, &'static str),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
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

pub fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
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
pub fn mutated_corpus(seeds: &[Vec<u8>]) -> impl Strategy<Value = Input> {
    (
        prop::sample::select(seeds.to_vec()),
        prop::collection::vec(mutation(), 1..6),
    )
        .prop_map(|(seed, muts)| Input::from(apply(seed, &muts)))
}

pub fn random_bytes() -> impl Strategy<Value = Input> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        any::<String>().prop_map(String::into_bytes),
    ]
    .prop_map(Input::from)
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT-looking string: header and claims as raw JSON text (so they can
/// hold 1e400 or NaN), base64url-encoded, then possibly damaged.
pub fn jwt_text(claims: String, header: String, signature: String, damage: u8) -> String {
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

pub fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#.to_owned()),
        Just(r#"{"alg":"none"}"#.to_owned()),
        Just(r#"{"alg":"HS256","typ":"JWT"}"#.to_owned()),
        Just("not json".to_owned()),
        value_text(),
    ]
}

pub fn date_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (1_600_000_000u64..1_900_000_000).prop_map(|n| n.to_string()),
        number_text(),
        string_text(),
        Just("null".to_owned()),
    ]
}

/// Claims as raw JSON text, with the planted secret (if any) in one claim.
pub fn claims_text(planted: Option<String>) -> impl Strategy<Value = String> {
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

pub fn any_jwt(planted: Option<String>) -> impl Strategy<Value = String> {
    (
        claims_text(planted),
        header_text(),
        "[A-Za-z0-9_-]{0,86}",
        any::<u8>(),
    )
        .prop_map(|(c, h, s, d)| jwt_text(c, h, s, d))
}

/// A valid-looking JWT expiring at `exp` (optionally with `iat`).
pub fn good_jwt(exp: u64, iat: Option<u64>, sub: &str) -> String {
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

pub const NOW: u64 = 1_700_000_000;

pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Independent reading of a JWT's claims (RFC 7519: three parts, the middle
/// one base64url JSON object), to check `expiry` against.
pub fn claims_of(token: &str) -> Option<serde_json::Map<String, Value>> {
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
pub fn check_issued(
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
