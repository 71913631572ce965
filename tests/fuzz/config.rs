//! Target 4: the config file (`toml` → `RawConfig` → `Config::validate`).

use super::common::*;

/// Files the generated configs point at, in a private directory: secret
/// files with a planted secret (0600 and, to be refused, 0644), a missing
/// path, a directory. Validation only ever reads these or writes inside it.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub secret: String,
}

pub fn sandbox() -> &'static Sandbox {
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

pub fn config_value(key: &'static str) -> BoxedStrategy<String> {
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

pub fn toml_string(s: &str) -> String {
    // A TOML basic string is JSON-compatible for what JSON escapes produce,
    // except \u escapes of surrogates, which serde_json never emits.
    serde_json::to_string(s).unwrap()
}

pub const FILE_KEYS: [&str; 30] = [
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

pub fn config_table() -> impl Strategy<Value = String> {
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

pub fn config_input() -> impl Strategy<Value = Input> {
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
pub fn near_valid_config() -> impl Strategy<Value = Input> {
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

pub fn check_config(input: Input, _label: &str) -> Result<(), TestCaseError> {
    let Ok(text) = std::str::from_utf8(&input.bytes) else {
        return Ok(()); // `Config::load` reads it as UTF-8 text and says so.
    };
    // Validation reads only (no directory made, nothing written), so any input
    // may name any path.
    let raw = match toml::from_str::<RawConfig>(text) {
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
pub fn fuzz_config() {
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
