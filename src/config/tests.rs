use std::os::unix::fs::PermissionsExt;

use secrecy::ExposeSecret;

use super::*;
use crate::source::oauth::ConsentLink;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }
    fn file(&self, name: &str, content: &str, mode: u32) -> String {
        let path = self.0.path().join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    }
    fn load(&self, toml: &str) -> Result<Config, ConfigError> {
        let path = self.file("config.toml", toml, 0o600);
        Config::load(Path::new(&path))
    }
}

fn err(result: Result<Config, ConfigError>) -> String {
    result.expect_err("config should be refused").to_string()
}

const URL: &str = "https://keycloak.example.com/realms/DominoRealm/protocol/openid-connect/token";

#[test]
fn production_keycloak_example_loads() {
    let d = Dir::new();
    let secret = d.file("client-secret", "s3cret\n", 0o600);
    let offline = d.file("offline-token", "offline-abc", 0o600);
    let cfg = d
        .load(&format!(
            r#"
            [mount]
            uid = 12574
            gid = 12574
            read_timeout = "5s"

            [files.token]
            source = "oauth2"
            token_url = "{URL}"
            client_id = "domino-play"
            client_secret_file = "{secret}"
            refresh_token_file = "{offline}"
            min_valid = "45s"
            min_valid_floor = "3s"
            "#
        ))
        .unwrap();
    assert_eq!(
        cfg.owner,
        Some(Owner {
            uid: 12574,
            gid: 12574
        })
    );
    assert_eq!(cfg.read_timeout, Duration::from_secs(5));
    let file = &cfg.files[0];
    assert_eq!(file.name, "token");
    assert_eq!(file.policy.min_valid, Duration::from_secs(45));
    assert_eq!(file.policy.floor, Duration::from_secs(3));
    assert_eq!(file.policy.refresh_at, 0.8);
    let SourceConfig::OAuth(o) = &file.source else {
        panic!("expected oauth2")
    };
    assert_eq!(o.token_url, URL);
    assert_eq!(
        o.client_secret.as_ref().unwrap().expose_secret(),
        "s3cret",
        "one trailing newline trimmed"
    );
    let Grant::RefreshToken {
        refresh_token,
        rotated_file,
        ..
    } = &o.grant
    else {
        panic!("expected refresh_token grant")
    };
    assert_eq!(
        refresh_token.as_ref().unwrap().expose_secret(),
        "offline-abc"
    );
    // Not set: rotations go to the state directory, under a name of their own.
    let rotated = rotated_file.as_ref().unwrap();
    assert!(rotated.starts_with(std::env::temp_dir().join("tokenfs-unit-tests/rotated")));
    assert!(rotated
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("offline-token-"));
    assert!(
        !format!("{cfg:?}").contains("s3cret"),
        "Debug must not show secrets"
    );
}

#[test]
fn rotated_refresh_token_supersedes_the_original() {
    let d = Dir::new();
    let offline = d.file("offline", "original", 0o600);
    let rotated = d.file("rotated", "rotated-1", 0o600);
    let cfg = d
        .load(&format!(
            "[files.token]\nsource = \"oauth2\"\ntoken_url = \"{URL}\"\nclient_id = \"c\"\n\
             refresh_token_file = \"{offline}\"\nrotated_refresh_token_file = \"{rotated}\"\n"
        ))
        .unwrap();
    let SourceConfig::OAuth(o) = &cfg.files[0].source else {
        panic!()
    };
    let Grant::RefreshToken { refresh_token, .. } = &o.grant else {
        panic!()
    };
    assert_eq!(refresh_token.as_ref().unwrap().expose_secret(), "rotated-1");
}

#[test]
fn the_rotated_token_directory_is_created_by_prepare_or_the_config_is_refused() {
    let d = Dir::new();
    let offline = d.file("offline", "original", 0o600);
    let config = |rotated: &str| {
        format!(
            "[files.token]\nsource = \"oauth2\"\ntoken_url = \"{URL}\"\nclient_id = \"c\"\n\
             refresh_token_file = \"{offline}\"\nrotated_refresh_token_file = \"{rotated}\"\n"
        )
    };
    // Missing: loading creates nothing; prepare creates it 0700 (as `tokenfs
    // check` would before the service first ran).
    let state = d.0.path().join("var/lib/tokenfs");
    let cfg = d
        .load(&config(&format!("{}/offline-token", state.display())))
        .unwrap();
    assert!(!d.0.path().join("var").exists(), "load created nothing");
    cfg.prepare().unwrap();
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let left: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(left.is_empty(), "no file left, no lock taken: {left:?}");
    // A config that cannot work (its refresh token file is missing) writes nothing.
    let nowhere = d.0.path().join("never/offline-token");
    let missing = d.0.path().join("missing");
    let text = config(&nowhere.display().to_string())
        .replace(&offline.to_string(), &missing.display().to_string());
    let err = d.load(&text).unwrap_err().to_string();
    assert!(err.contains("files.token.refresh_token_file"), "{err}");
    assert!(!d.0.path().join("never").exists(), "nothing created");
    // Impossible (its "directory" is a file): loads, and is refused by prepare
    // before any refresh, by key.
    let cfg = d
        .load(&config(&format!("{offline}/offline-token")))
        .unwrap();
    let err = cfg.prepare().unwrap_err().to_string();
    assert!(
        err.contains("files.token.rotated_refresh_token_file") && err.contains("cannot write"),
        "{err}"
    );
}

/// Loading is pure: a config whose every saving place is missing loads, and
/// leaves the disk as it was, stale temp files included; `prepare` alone
/// creates the directories and removes the leftovers.
#[test]
fn load_creates_writes_and_removes_nothing() {
    let d = Dir::new();
    let offline = d.file("offline", "original", 0o600);
    let secret = d.file("client-secret", "s3cret", 0o600);
    let stale_dir = d.0.path().join("kept");
    std::fs::create_dir(&stale_dir).unwrap();
    std::fs::set_permissions(&stale_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(stale_dir.join(".rotated.tmp.0123456789abcdef"), "s").unwrap();
    let deep = d.0.path().join("missing/a/b");
    let text = format!(
        "[files.token]\nsource = \"oauth2\"\ntoken_url = \"{URL}\"\nclient_id = \"c\"\n\
         refresh_token_file = \"{offline}\"\nrotated_refresh_token_file = \"{}/rotated\"\n\
         [files.other]\nsource = \"oauth2\"\ntoken_url = \"{URL}\"\nclient_id = \"c\"\n\
         refresh_token_file = \"{offline}\"\nrotated_refresh_token_file = \"{}/rotated\"\n\
         [files.entra]\nsource = \"entra\"\ntenant = \"t\"\nclient_id = \"c\"\n\
         client_secret_file = \"{secret}\"\nscope = \"s\"\n\
         refresh_token_file = \"{}/none-yet\"\nrotated_refresh_token_file = \"{}/entra\"\n\
         login = \"code\"\nredirect_uri = \"http://127.0.0.1:8400/callback\"\n\
         consent_state_file = \"{}/state.json\"\n",
        deep.display(),
        stale_dir.display(),
        deep.display(),
        deep.display(),
        deep.display(),
    );
    let path = d.file("config.toml", &text, 0o600);
    let listing = || {
        let mut all = Vec::new();
        let mut todo = vec![d.0.path().to_owned()];
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    todo.push(e.path());
                }
                all.push((e.path(), meta.len(), meta.permissions().mode()));
            }
        }
        all.sort();
        all
    };
    let before = listing();
    let cfg = Config::load(Path::new(&path)).unwrap();
    Config::load(Path::new(&path)).unwrap();
    assert_eq!(listing(), before, "load changed the disk");
    cfg.prepare().unwrap();
    assert!(
        deep.is_dir(),
        "prepare created the rotated tokens' directory"
    );
    assert!(
        !stale_dir.join(".rotated.tmp.0123456789abcdef").exists(),
        "prepare removed the stale temp file"
    );
    assert!(
        !deep.join("state.json").exists(),
        "the consent state waits for a login"
    );
}

#[test]
fn http_source_with_headers() {
    let d = Dir::new();
    let key = d.file("api-key", "k3y", 0o600);
    let cfg = d
        .load(&format!(
            "[files.token]\nsource = \"http\"\nurl = \"http://127.0.0.1:8899/access-token\"\n\
             headers = {{ Accept = \"text/plain\", X-Domino-Api-Key = {{ file = \"{key}\" }} }}\n"
        ))
        .unwrap();
    let SourceConfig::Get(g) = &cfg.files[0].source else {
        panic!()
    };
    assert_eq!(g.url, "http://127.0.0.1:8899/access-token");
    let headers: Vec<_> = g
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose_secret()))
        .collect();
    assert_eq!(
        headers,
        [("Accept", "text/plain"), ("X-Domino-Api-Key", "k3y")]
    );
}

#[test]
fn secret_file_readable_by_others_is_refused() {
    let d = Dir::new();
    let secret = d.file("client-secret", "s3cret", 0o644);
    let msg = err(d.load(&format!(
        "[files.token]\nsource = \"oauth2\"\ntoken_url = \"{URL}\"\nclient_id = \"c\"\n\
         grant = \"client_credentials\"\nclient_secret_file = \"{secret}\"\n"
    )));
    assert!(msg.contains("files.token.client_secret_file"), "{msg}");
    assert!(msg.contains("chmod"), "says what to do: {msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
}

#[test]
fn errors_name_the_key() {
    let d = Dir::new();
    let offline = d.file("offline", "t", 0o600);
    let cases = [
        ("[files.token]\nsource = \"oauth2\"\n", "files.token.token_url: missing"),
        ("[files.token]\nsource = \"ldap\"\n", "files.token.source: unknown source"),
        ("[files.token]\n", "files.token.source: missing"),
        ("", "files: no files configured"),
        ("[mount]\nuid = 5\n[files.t]\nsource=\"http\"\nurl=\"http://h/\"\n", "mount.uid/mount.gid"),
        ("[files.token]\nsource = \"http\"\nurl = \"ftp://host/x\"\n", "files.token.url: must be an http"),
        ("[files.token]\nsource = \"http\"\nurl = \"https://u:p@host/x\"\n", "must not carry credentials"),
        ("[files.token]\nsource = \"http\"\nurl = \"http://h/\"\nclient_id = \"c\"\n", "files.token.client_id: not valid for source = \"http\""),
        ("[files.token]\nsource = \"http\"\nurl = \"http://h/\"\nrefresh_at = 1.5\n", "files.token.refresh_at"),
        ("[files.\".hidden\"]\nsource = \"http\"\nurl = \"http://h/\"\n", "reserved"),
        ("[files.\"token.consent-url\"]\nsource = \"http\"\nurl = \"http://h/\"\n", "names ending in .consent-url are reserved"),
        ("[files.\"token.expires\"]\nsource = \"http\"\nurl = \"http://h/\"\n", "names ending in .expires are reserved"),
        ("[files.token]\nsource = \"http\"\nurl = \"http://h/\"\ntimeout = \"soon\"\n", "timeout"),
        ("[files.token]\nsource = \"http\"\nurl = \"http://h/\"\nbogus = 1\n", "unknown field `bogus`"),
        (
            &format!("[files.token]\nsource = \"oauth2\"\ntoken_url = \"{URL}\"\nclient_id = \"c\"\ngrant = \"client_credentials\"\n"),
            "files.token.client_secret_file: missing",
        ),
        (
            &format!("[files.token]\nsource = \"oauth2\"\ntoken_url = \"{URL}\"\nclient_id = \"c\"\nrefresh_token_file = \"{offline}.missing\"\n"),
            "files.token.refresh_token_file",
        ),
    ];
    for (toml, expected) in cases {
        let msg = err(d.load(toml));
        assert!(
            msg.contains(expected),
            "for {toml:?}: expected {expected:?} in {msg:?}"
        );
    }
}

#[test]
fn token_exchange_of_the_token_file_for_azure() {
    let d = Dir::new();
    let secret = d.file("client-secret", "s3cret", 0o600);
    let offline = d.file("offline", "o", 0o600);
    let cfg = d
        .load(&format!(
            r#"
            [files.token]
            source = "oauth2"
            token_url = "{URL}"
            client_id = "domino-tokenfs"
            client_secret_file = "{secret}"
            refresh_token_file = "{offline}"

            [files.azure-token]
            source = "token-exchange"
            token_url = "{URL}"
            client_id = "domino-tokenfs"
            client_secret_file = "{secret}"
            subject = "token"
            requested_issuer = "azure"
            redirect_uri = "https://domino.example.com/account/linked"
            min_valid = "5m"
            "#
        ))
        .unwrap();
    let azure = cfg.files.iter().find(|f| f.name == "azure-token").unwrap();
    assert_eq!(azure.mount_subject(), Some("token"));
    assert_eq!(azure.policy.min_valid, Duration::from_secs(300));
    let SourceConfig::OAuth(o) = &azure.source else {
        panic!()
    };
    let Grant::TokenExchange(x) = &o.grant else {
        panic!("expected an exchange")
    };
    assert_eq!(x.requested_issuer.as_deref(), Some("azure"));
    assert_eq!(
        x.subject_token_type,
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(
        x.consent,
        ConsentLink::Action {
            authorization_url:
                "https://keycloak.example.com/realms/DominoRealm/protocol/openid-connect/auth"
                    .into()
        },
        "Keycloak's idp_link action by default"
    );
}

#[test]
fn token_exchange_mistakes_are_named() {
    let d = Dir::new();
    let secret = d.file("client-secret", "s3cret", 0o600);
    let base = format!("source = \"token-exchange\"\ntoken_url = \"{URL}\"\nclient_id = \"c\"\nclient_secret_file = \"{secret}\"\n");
    let cases = [
        (format!("[files.a]\n{base}subject = \"token\"\n"), "files.a.subject: no file named \"token\""),
        (format!("[files.a]\n{base}subject = \"a\"\n"), "cannot be its own subject"),
        (format!("[files.a]\n{base}"), "files.a.subject: set exactly one"),
        (format!("[files.a]\n{base}subject = \"b\"\n[files.b]\n{base}subject = \"a\"\n"), "chain at most one level"),
        (format!("[files.a]\n{base}subject_token_file = \"/x\"\nrefresh_token_file = \"/y\"\n"), "files.a.refresh_token_file: not valid for source = \"token-exchange\""),
        (format!("[files.a]\n{base}subject_token_file = \"/x\"\nrequested_issuer = \"azure\"\n"), "files.a.redirect_uri: missing: Keycloak sends the browser there"),
        (format!("[files.a]\n{base}subject_token_file = \"/x\"\nmin_valid = \"10s\"\nmin_valid_floor = \"11s\"\n"), "files.a.min_valid_floor: must be more than 0s and at most min_valid (10s)"),
        (format!("[files.a]\n{base}subject_token_file = \"/x\"\nmin_valid_floor = \"0s\"\n"), "files.a.min_valid_floor: must be more than 0s"),
        (format!("[files.a]\n{base}subject_token_file = \"/x\"\nconsent_link = \"kc_action\"\n"), "files.a.consent_link: \"kc_action\" links an identity provider"),
        (format!("[files.a]\n{base}subject_token_file = \"/x\"\nrequested_issuer = \"azure\"\nconsent_link = \"link\"\n"), "files.a.consent_link: must be"),
        (
            format!("[files.a]\nsource = \"token-exchange\"\ntoken_url = \"https://sts/token\"\nclient_id = \"c\"\nclient_secret_file = \"{secret}\"\nsubject_token_file = \"/x\"\nrequested_issuer = \"azure\"\nredirect_uri = \"https://r\"\n"),
            "files.a.consent_link: \"kc_action\" (the default) needs a Keycloak token_url",
        ),
        (
            "[files.a]\nsource = \"token-exchange\"\ntoken_url = \"https://kc/t\"\nclient_id = \"c\"\nsubject_token_file = \"/x\"\n".to_owned(),
            "files.a.client_secret_file: missing",
        ),
    ];
    for (toml, expected) in cases {
        let msg = err(d.load(&toml));
        assert!(
            msg.contains(expected),
            "for {toml:?}: expected {expected:?} in {msg:?}"
        );
    }
}

/// Loading writes nothing; the first read makes the authorize URL, and the
/// state file a platform's own redirect handler reads.
#[tokio::test]
async fn entra_direct_builds_the_token_url_and_a_code_login() {
    let d = Dir::new();
    let state = d.0.path().join("consent-state");
    let cfg = d
        .load(&format!(
            r#"
            [files.azure-token]
            source = "entra"
            tenant = "contoso.onmicrosoft.com"
            client_id = "11111111-2222-3333-4444-555555555555"
            scope = "https://storage.azure.com/.default"
            redirect_uri = "https://domino.example.com/azure/callback"
            refresh_token_file = "{}/not-yet"
            login_hint = "alice@contoso.com"
            consent_state_file = "{}"
            "#,
            d.0.path().display(),
            state.display()
        ))
        .unwrap();
    assert!(!state.exists(), "loading a config writes no consent state");
    let SourceConfig::OAuth(o) = &cfg.files[0].source else {
        panic!()
    };
    assert_eq!(
        o.token_url,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    let Grant::RefreshToken { refresh_token, .. } = &o.grant else {
        panic!()
    };
    assert!(
        refresh_token.is_none(),
        "no refresh token before consent is not an error"
    );
    let Some(crate::source::oauth::Login::Code(login)) = &o.login else {
        panic!("entra logs in by the code flow by default: {:?}", o.login)
    };
    assert_eq!(
        login.authorization_url,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"
    );
    let source = crate::source::oauth::OAuthSource::new((**o).clone()).unwrap();
    let crate::source::SourceError::ConsentRequired { url, expired, .. } =
        crate::source::Source::issue(&source).await.unwrap_err()
    else {
        panic!("consent first")
    };
    assert!(!expired);
    let consent = reqwest::Url::parse(&url).unwrap();
    let q: std::collections::HashMap<_, _> = consent.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(
        q["scope"],
        "https://storage.azure.com/.default offline_access"
    );
    assert_eq!(q["login_hint"], "alice@contoso.com");
    assert_eq!(
        q["redirect_uri"],
        "https://domino.example.com/azure/callback"
    );
    // A platform's own redirect handler finds state and verifier in the 0600 file.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["state"], q["state"].as_str());
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600
    );
    use base64::Engine as _;
    let verifier = saved["code_verifier"].as_str().unwrap();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()),
    );
    assert_eq!(q["code_challenge"], challenge);
    // The same URL until it is used or old: a second read shows it again.
    let again = crate::source::Source::issue(&source).await.unwrap_err();
    assert!(
        matches!(again, crate::source::SourceError::ConsentRequired { url: u, .. } if u == url)
    );
}

/// A `[files.token]` of the http source (no secret files needed) plus `verify`.
fn with_verify(verify: &str) -> String {
    format!(
        "[files.token]\nsource = \"http\"\nurl = \"http://127.0.0.1:8899/access-token\"\n\
         [files.token.verify]\n{verify}\n"
    )
}

const CERTS: &str = "https://keycloak.example.com/realms/DominoRealm/protocol/openid-connect/certs";
const REALM: &str = "https://keycloak.example.com/realms/DominoRealm";

#[test]
fn verify_table_with_defaults_and_all_keys() {
    use crate::source::verify::JwksLocation;
    use jsonwebtoken::Algorithm;
    let d = Dir::new();
    let cfg = d
        .load(&with_verify(&format!(
            "jwks_url = \"{CERTS}\"\nissuer = \"{REALM}\""
        )))
        .unwrap();
    let v = cfg.files[0].verify.as_ref().expect("verify configured");
    assert_eq!(v.jwks, JwksLocation::Url(CERTS.into()));
    assert_eq!(v.issuer, REALM);
    assert_eq!(v.audience, None);
    assert_eq!(v.algorithms, [Algorithm::RS256]);
    assert_eq!(v.leeway, Duration::from_secs(30));

    let cfg = d
        .load(&with_verify(&format!(
            "discovery_url = \"{REALM}/.well-known/openid-configuration\"\nissuer = \"{REALM}\"\n\
             audience = \"account\"\nalgorithms = [\"RS256\", \"PS256\", \"ES256\", \"EdDSA\", \"RS256\"]\n\
             leeway = \"5s\""
        )))
        .unwrap();
    let v = cfg.files[0].verify.as_ref().unwrap();
    assert_eq!(
        v.jwks,
        JwksLocation::Discovery(format!("{REALM}/.well-known/openid-configuration"))
    );
    assert_eq!(v.audience.as_deref(), Some("account"));
    assert_eq!(
        v.algorithms,
        [
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::EdDSA
        ]
    );
    assert_eq!(v.leeway, Duration::from_secs(5));

    // Without the table, nothing is verified.
    let cfg = d
        .load("[files.token]\nsource = \"http\"\nurl = \"http://127.0.0.1:8899/t\"\n")
        .unwrap();
    assert!(cfg.files[0].verify.is_none());
}

#[test]
fn verify_mistakes_are_named() {
    let d = Dir::new();
    let base = format!("jwks_url = \"{CERTS}\"\nissuer = \"{REALM}\"");
    for (verify, want) in [
        (
            format!("{base}\nalgorithms = [\"HS256\"]"),
            "config: files.token.verify.algorithms: \"HS256\" is not allowed (HMAC",
        ),
        (
            format!("{base}\nalgorithms = [\"RS256\", \"none\"]"),
            "config: files.token.verify.algorithms: \"none\" is not allowed (unsigned",
        ),
        (
            format!("{base}\nalgorithms = [\"RS999\"]"),
            "config: files.token.verify.algorithms: \"RS999\" is not allowed (unknown",
        ),
        (
            format!("{base}\nalgorithms = []"),
            "config: files.token.verify.algorithms: must name at least one",
        ),
        (
            format!("issuer = \"{REALM}\""),
            "config: files.token.verify.jwks_url: set exactly one of",
        ),
        (
            format!("{base}\ndiscovery_url = \"{REALM}/.well-known/openid-configuration\""),
            "config: files.token.verify.jwks_url: set exactly one of",
        ),
        (
            format!("jwks_url = \"{CERTS}\""),
            "config: files.token.verify.issuer: missing",
        ),
        (
            format!("jwks_url = \"{CERTS}\"\nissuer = \"\""),
            "config: files.token.verify.issuer: must not be empty",
        ),
        (
            format!("jwks_url = \"file:///etc/jwks.json\"\nissuer = \"{REALM}\""),
            "config: files.token.verify.jwks_url: must be an http:// or https:// URL",
        ),
        (
            format!("discovery_url = \"not a url\"\nissuer = \"{REALM}\""),
            "config: files.token.verify.discovery_url: not a URL",
        ),
        (
            format!("{base}\nleeway = \"10m\""),
            "config: files.token.verify.leeway: must be at most 5m",
        ),
        (
            format!("{base}\naudience = \"\""),
            "config: files.token.verify.audience: must not be empty",
        ),
    ] {
        let e = err(d.load(&with_verify(&verify)));
        assert!(e.starts_with(want), "{verify}\n=> {e}");
    }
    // Unknown keys inside the table are refused by name.
    let e = err(d.load(&with_verify(&format!("{base}\nalgorithm = \"RS256\""))));
    assert!(e.contains("unknown field `algorithm`"), "{e}");
}

#[test]
fn inline_header_values_need_a_private_config() {
    let d = Dir::new();
    let toml = "[files.token]\nsource = \"http\"\nurl = \"http://127.0.0.1:1/t\"\nheaders = { X-Api-Key = \"k3y\" }\n";
    let path = d.file("config.toml", toml, 0o644);
    let msg = Config::load(Path::new(&path)).unwrap_err().to_string();
    assert!(
        msg.contains("files.token.headers.X-Api-Key") && msg.contains("chmod 600"),
        "{msg}"
    );
    assert!(!msg.contains("k3y"), "{msg}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(Config::load(Path::new(&path)).is_ok());
}

#[test]
fn a_relative_path_is_refused_before_anything_is_read_or_written() {
    let d = Dir::new();
    let secret = d.file("secret", "s", 0o600);
    for (setting, extra) in [
        ("refresh_token_file", "refresh_token_file = \"offline\""),
        (
            "rotated_refresh_token_file",
            "refresh_token_file = \"/nonexistent/offline\"\nrotated_refresh_token_file = \"state/rt\"",
        ),
    ] {
        let e = err(d.load(&format!(
            "[files.token]\nsource = \"oauth2\"\ntoken_url = \"https://kc/realms/R/protocol/openid-connect/token\"\n\
             client_id = \"c\"\nclient_secret_file = \"{secret}\"\n{extra}\n"
        )));
        assert!(
            e.contains(&format!("files.token.{setting}")) && e.contains("relative path"),
            "{e}"
        );
    }
    let e = err(d.load(
        "[files.token]\nsource = \"http\"\nurl = \"http://127.0.0.1:1/t\"\nheaders = { K = { file = \"key\" } }\n",
    ));
    assert!(
        e.contains("files.token.headers.K.file") && e.contains("relative path"),
        "{e}"
    );
    assert!(
        !std::path::Path::new("state").exists(),
        "nothing created in the working directory"
    );
}
