//! Target 5: the GET source's body (`get::issued_from_body`).

use super::common::*;

pub fn get_body_input() -> impl Strategy<Value = Input> {
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

pub fn check_get_body(input: Input, _label: &str) -> Result<(), TestCaseError> {
    match get_issued(Zeroizing::new(input.bytes.clone()), at(NOW)) {
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
pub fn fuzz_get_body() {
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
