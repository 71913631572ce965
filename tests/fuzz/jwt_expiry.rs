//! Target 2: JWT expiry (`jwt::expiry`).

use super::common::*;

#[derive(Debug, Clone)]
pub struct JwtCase {
    pub input: Input,
    pub expires_in: Option<u64>,
    pub now: u64,
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

pub fn jwt_case() -> impl Strategy<Value = JwtCase> {
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

pub fn check_jwt(case: JwtCase, _label: &str) -> Result<(), TestCaseError> {
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
pub fn fuzz_jwt_expiry() {
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
