use std::os::unix::fs::PermissionsExt;

use secrecy::ExposeSecret;

use super::*;

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
    } = &o.grant
    else {
        panic!("expected refresh_token grant")
    };
    assert_eq!(refresh_token.expose_secret(), "offline-abc");
    assert!(rotated_file.is_none());
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
    assert_eq!(refresh_token.expose_secret(), "rotated-1");
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
