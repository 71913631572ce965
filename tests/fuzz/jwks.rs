//! Target 3: JWKS (`JwkSet` from JSON, `DecodingKey::from_jwk`, a verify).

use super::common::*;

pub fn b64_value() -> impl Strategy<Value = String> {
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

pub fn jwk_text() -> impl Strategy<Value = String> {
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

pub fn jwks_input() -> impl Strategy<Value = Input> {
    (
        prop::collection::vec(jwk_text(), 0..4),
        prop::collection::vec(mutation(), 0..2),
    )
        .prop_map(|(keys, muts)| {
            let text = format!("{{\"keys\":[{}]}}", keys.join(","));
            Input::from(apply(text.into_bytes(), &muts))
        })
}

pub fn check_jwks(input: Input, _label: &str) -> Result<(), TestCaseError> {
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
pub fn fuzz_jwks() {
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
