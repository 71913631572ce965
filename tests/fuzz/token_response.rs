//! Target 1a: token-endpoint 2xx answers (`parse_token_response` + expiry).

use super::common::*;

/// Keycloak/Entra-shaped answers with hostile values and a planted secret.
pub fn token_response_input() -> impl Strategy<Value = Input> {
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
                    0 => array_text(&fields),
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

pub fn check_token_response(input: Input, _label: &str) -> Result<(), TestCaseError> {
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
pub fn fuzz_token_response() {
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
