//! Target 1b: token-endpoint error answers (`error_from_body`).

use super::common::*;

#[derive(Debug, Clone)]
pub struct ErrorCase {
    pub input: Input,
    pub status: u16,
    pub exchange: bool,
    pub redirect_uri: bool,
    pub unreadable: bool,
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

pub const TOKEN_URL: &str =
    "https://kc.example.com/realms/DominoRealm/protocol/openid-connect/token";
pub const REDIRECT_URI: &str = "https://domino.example.com/account/linked";

pub fn error_body_input() -> impl Strategy<Value = Input> {
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
                0 => array_text(&fields),
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

pub fn error_case() -> impl Strategy<Value = ErrorCase> {
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

pub fn check_error_body(case: ErrorCase, _label: &str) -> Result<(), TestCaseError> {
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
pub fn fuzz_error_body() {
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
