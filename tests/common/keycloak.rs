//! A real Keycloak and the OpenID provider it brokers as `azure`, started by
//! `tests/keycloak/start` (CI does it once, before `cargo test`), and a real
//! browser (Chromium through Playwright) for Keycloak's own pages.

use super::*;

use std::io::Write;

use reqwest::blocking::Client;
use serde_json::{json, Value};

/// Where the client in the test realm sends the browser back: nothing listens
/// there; the browser driver answers it itself and reports the URL.
pub const CALLBACK: &str = "http://127.0.0.1:9/callback";
pub const LINKED: &str = "http://127.0.0.1:9/linked";
pub const CLIENT: &str = "domino-tokenfs";
/// Its offline sessions idle out after 15 s.
pub const SHORT_CLIENT: &str = "domino-tokenfs-short";
/// No permission to exchange tokens for the IdP's.
pub const OTHER_CLIENT: &str = "domino-other";
/// The audience of the brokered IdP's access tokens.
pub const IDP_RESOURCE: &str = "https://storage.azure.com";

/// A Keycloak started by `tests/keycloak/start`, read from its env file.
pub struct Keycloak {
    pub url: String,
    pub realm_url: String,
    pub token_url: String,
    pub idp_url: String,
    pub version: String,
    admin_password: String,
    client_secret: String,
    other_secret: String,
    http: Client,
}

fn env_file() -> PathBuf {
    std::env::var_os("TOKENFS_KEYCLOAK_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/keycloak/env"))
}

impl Keycloak {
    /// The running Keycloak, or `None` (skip) when none was started; with
    /// `TOKENFS_REQUIRE_KEYCLOAK=1` (set by CI) a missing one fails the test.
    pub fn get(test: &str) -> Option<Keycloak> {
        let path = env_file();
        let found = std::fs::read_to_string(&path).ok().map(|text| {
            let vars: std::collections::HashMap<&str, &str> =
                text.lines().filter_map(|l| l.split_once('=')).collect();
            let var = |k: &str| {
                vars.get(k)
                    .unwrap_or_else(|| panic!("{}: no {k}", path.display()))
                    .to_string()
            };
            let url = var("KEYCLOAK_URL");
            let realm_url = format!("{url}/realms/DominoRealm");
            Keycloak {
                token_url: format!("{realm_url}/protocol/openid-connect/token"),
                realm_url,
                url,
                idp_url: var("IDP_URL"),
                version: var("KEYCLOAK_VERSION"),
                admin_password: var("KEYCLOAK_ADMIN_PASSWORD"),
                client_secret: var("KEYCLOAK_CLIENT_SECRET"),
                other_secret: var("KEYCLOAK_OTHER_CLIENT_SECRET"),
                http: Client::builder()
                    .timeout(Duration::from_secs(30))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap(),
            }
        });
        let answers = found.as_ref().is_some_and(|kc| {
            kc.http
                .get(&kc.realm_url)
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        if answers {
            return found;
        }
        let why = format!(
            "{test}: no Keycloak ({} {}); start one with `bash tests/keycloak/start`",
            path.display(),
            if found.is_some() {
                "names one that does not answer"
            } else {
                "is missing"
            }
        );
        if std::env::var("TOKENFS_REQUIRE_KEYCLOAK").as_deref() == Ok("1") {
            panic!("{why}; TOKENFS_REQUIRE_KEYCLOAK=1 requires the Keycloak tests to run");
        }
        eprintln!("SKIPPED {why}");
        None
    }

    pub fn secret_of(&self, client: &str) -> &str {
        if client == OTHER_CLIENT {
            &self.other_secret
        } else {
            &self.client_secret
        }
    }

    /// POST a form to the realm's token endpoint: the status and the JSON body.
    pub fn token_request(&self, client: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let mut form = form.to_vec();
        form.push(("client_id", client));
        form.push(("client_secret", self.secret_of(client)));
        let answer = self.http.post(&self.token_url).form(&form).send().unwrap();
        let status = answer.status().as_u16();
        (status, answer.json().unwrap_or(Value::Null))
    }

    /// A user's offline token for `client`, by the password grant (the realm
    /// allows it for tests; the journey test gets one through the login page).
    pub fn offline_token(&self, client: &str, user: &str) -> String {
        let password = format!("{user}-kc-pw");
        let (status, body) = self.token_request(
            client,
            &[
                ("grant_type", "password"),
                ("username", user),
                ("password", &password),
                ("scope", "openid offline_access"),
            ],
        );
        assert_eq!(status, 200, "offline token for {user}: {body}");
        let token = body["refresh_token"].as_str().unwrap().to_owned();
        assert_eq!(jwt_claims(&token)["typ"], "Offline", "an offline token");
        token
    }

    /// Trade the code the browser brought back for the tokens, as the platform's
    /// login does; the offline token.
    pub fn redeem_code(&self, callback_url: &str) -> String {
        let url = reqwest::Url::parse(callback_url).unwrap();
        let code = url
            .query_pairs()
            .find(|(k, _)| k == "code")
            .unwrap_or_else(|| panic!("no code in {callback_url}"))
            .1
            .into_owned();
        let (status, body) = self.token_request(
            CLIENT,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
            ],
        );
        assert_eq!(status, 200, "code redemption: {body}");
        let token = body["refresh_token"].as_str().unwrap().to_owned();
        assert_eq!(jwt_claims(&token)["typ"], "Offline", "an offline token");
        token
    }

    /// The authorization URL the platform's login sends the browser to.
    pub fn login_url(&self) -> String {
        let mut url =
            reqwest::Url::parse(&format!("{}/protocol/openid-connect/auth", self.realm_url))
                .unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", CLIENT)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid offline_access")
            .append_pair("redirect_uri", CALLBACK)
            .append_pair("state", &format!("{:x}", rand::random::<u64>()));
        url.to_string()
    }

    fn admin_token(&self) -> String {
        let answer: Value = self
            .http
            .post(format!(
                "{}/realms/master/protocol/openid-connect/token",
                self.url
            ))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", "admin"),
                ("password", &self.admin_password),
            ])
            .send()
            .unwrap()
            .json()
            .unwrap();
        answer["access_token"].as_str().unwrap().to_owned()
    }

    /// An admin API call under `/admin/realms/DominoRealm`; the status and body.
    pub fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(
                method,
                format!("{}/admin/realms/DominoRealm{path}", self.url),
            )
            .bearer_auth(self.admin_token());
        if let Some(body) = body {
            req = req.json(&body);
        }
        let answer = req.send().unwrap();
        let status = answer.status().as_u16();
        (status, answer.json().unwrap_or(Value::Null))
    }

    pub fn user_id(&self, user: &str) -> String {
        let (status, users) = self.admin(
            reqwest::Method::GET,
            &format!("/users?username={user}&exact=true"),
            None,
        );
        assert_eq!(status, 200, "{users}");
        users[0]["id"].as_str().unwrap().to_owned()
    }

    /// The user's links to identity providers (aliases).
    pub fn links(&self, user: &str) -> Vec<String> {
        let (status, links) = self.admin(
            reqwest::Method::GET,
            &format!("/users/{}/federated-identity", self.user_id(user)),
            None,
        );
        assert_eq!(status, 200, "{links}");
        links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["identityProvider"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Remove the user's link to `azure`, as an admin (or the user, in the
    /// account console) does.
    pub fn unlink(&self, user: &str) {
        let (status, body) = self.admin(
            reqwest::Method::DELETE,
            &format!("/users/{}/federated-identity/azure", self.user_id(user)),
            None,
        );
        assert_eq!(status, 204, "unlink {user}: {body}");
    }

    /// Revoke the user's grant to `client`, offline tokens included.
    pub fn revoke_consent(&self, user: &str, client: &str) {
        let (status, body) = self.admin(
            reqwest::Method::DELETE,
            &format!("/users/{}/consents/{client}", self.user_id(user)),
            None,
        );
        assert_eq!(status, 204, "revoke {user}'s grant to {client}: {body}");
    }

    /// Keycloak's exchange of `subject` for the user's stored `azure` token,
    /// sent directly (not through tokenfs).
    pub fn exchange(&self, client: &str, subject: &str) -> (u16, Value) {
        self.token_request(
            client,
            &[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", subject),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:access_token",
                ),
                ("requested_issuer", "azure"),
            ],
        )
    }

    /// Token requests the brokered IdP has answered with `grant_type`.
    pub fn idp_requests(&self, grant_type: &str) -> u64 {
        let stats: Value = self
            .http
            .get(format!("{}/__admin/stats", self.idp_url))
            .send()
            .unwrap()
            .json()
            .unwrap();
        stats["token_requests"][grant_type].as_u64().unwrap_or(0)
    }

    /// Revoke, at the IdP, every grant of its account `sub`: Keycloak's stored
    /// refresh token for it stops working.
    pub fn idp_revoke(&self, sub: &str) {
        let answer = self
            .http
            .post(format!("{}/__admin/revoke?sub={sub}", self.idp_url))
            .send()
            .unwrap();
        assert!(answer.status().is_success(), "{}", answer.text().unwrap());
    }

    /// The README's production config ("Production: the platform's Keycloak",
    /// and with `azure` "Azure through Keycloak" too), pointed at this Keycloak,
    /// with its secret files in `dir`; `edit` adjusts the TOML text (e.g. a
    /// shorter min_valid).
    pub fn readme_config(
        &self,
        dir: &Path,
        refresh_token: &str,
        azure: bool,
        edit: impl Fn(String) -> String,
    ) -> PathBuf {
        let secret = dir.join("client-secret");
        let offline = dir.join("offline-token");
        let state = dir.join("state");
        write_file(&secret, &self.client_secret, 0o600);
        write_file(&offline, refresh_token, 0o600);
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let mut blocks = vec![readme_toml(
            &readme,
            "### Production: the platform's Keycloak",
        )];
        if azure {
            blocks.push(readme_toml(&readme, "### Azure through Keycloak"));
        }
        let text = self.pointed_here(&blocks.join("\n"), &secret, &offline, &state);
        let config = dir.join("config.toml");
        write_file(&config, &edit(text), 0o600);
        config
    }

    /// The README's device-login config ("Logging in from the filesystem"),
    /// pointed at this Keycloak: no offline token file at all.
    pub fn readme_device_config(&self, dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
        self.readme_login_config(
            "### Logging in from the filesystem (device login)",
            dir,
            edit,
        )
    }

    /// The README's code-login config ("Logging in where the device flow is
    /// blocked"), pointed at this Keycloak, its redirect at [`CALLBACK`].
    pub fn readme_code_config(&self, dir: &Path) -> PathBuf {
        self.readme_login_config(
            "### Logging in where the device flow is blocked (code login)",
            dir,
            |t| t.replace("http://127.0.0.1:8400/callback", CALLBACK),
        )
    }

    fn readme_login_config(
        &self,
        heading: &str,
        dir: &Path,
        edit: impl Fn(String) -> String,
    ) -> PathBuf {
        let secret = dir.join("client-secret");
        write_file(&secret, &self.client_secret, 0o600);
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let block = readme_toml(&readme, heading);
        let text = self.pointed_here(
            &block,
            &secret,
            &dir.join("offline-token"),
            &dir.join("state"),
        );
        let config = dir.join("config.toml");
        write_file(&config, &edit(text), 0o600);
        config
    }

    /// The README's example URLs and paths replaced by this Keycloak's and `dir`'s.
    fn pointed_here(&self, text: &str, secret: &Path, offline: &Path, state: &Path) -> String {
        text.replace("https://keycloak.example.com", &self.url)
            .replace("/etc/tokenfs/client-secret", secret.to_str().unwrap())
            .replace("/etc/tokenfs/offline-token", offline.to_str().unwrap())
            .replace("/var/lib/tokenfs", state.to_str().unwrap())
            .replace("https://domino.example.com/account/linked", LINKED)
    }
}

/// The first ```toml block after `heading` in the README.
pub fn readme_toml(readme: &str, heading: &str) -> String {
    let at = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let rest = &readme[at..];
    let start = rest.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let len = rest[start..].find("```").expect("the block's end");
    rest[start..start + len].to_owned()
}

/// The claims of a JWT, unverified (the test checks its shape, tokenfs verifies).
pub fn jwt_claims(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode_claims(token).expect("a JWT")
}

/// A Chromium session (its cookies kept in a state file between commands),
/// driven by `tests/keycloak/browser/browser.mjs`.
pub struct Browser {
    state: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        let tmp = tempfile::tempdir().unwrap();
        Browser {
            state: tmp.path().join("state.json"),
            _tmp: tmp,
        }
    }

    /// Run a browser command; its JSON result and whether it succeeded (an
    /// error page is a failure, with `error` saying which).
    pub fn try_run(&self, command: &str, args: Value) -> (bool, Value) {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/keycloak/browser/browser.mjs"
        );
        // The arguments (passwords among them) go on stdin, not the command line.
        let mut child = Command::new("node")
            .args([
                script,
                command,
                "-",
                "--state",
                self.state.to_str().unwrap(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run node");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(args.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let result: Value = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| {
                panic!(
                    "browser {command}: {} and no JSON result\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        (out.status.success(), result)
    }

    fn run(&self, command: &str, args: Value) -> Value {
        let (ok, result) = self.try_run(command, args);
        assert!(ok, "browser {command}: {result}");
        result
    }

    /// Log `user` in at Keycloak's login page; the URL the browser came back to.
    pub fn login(&self, url: &str, user: &str) -> String {
        let result = self.run(
            "login",
            json!({"url": url, "username": user, "password": format!("{user}-kc-pw"),
                   "callback_prefix": CALLBACK}),
        );
        result["url"].as_str().unwrap().to_owned()
    }

    /// Open a consent URL: log in at Keycloak (if asked) and at the IdP as
    /// `user`, and consent; its result ([`Browser::try_run`]).
    pub fn try_consent(&self, url: &str, user: &str) -> (bool, Value) {
        self.try_run(
            "consent",
            json!({"url": url, "kc_username": user, "kc_password": format!("{user}-kc-pw"),
                   "idp_username": user, "idp_password": format!("{user}-idp-pw"),
                   "callback_prefix": LINKED}),
        )
    }

    /// A device login's verification URL: log in as `user`, then approve (or
    /// decline) the grant; `"approved"` or `"denied"`.
    pub fn device(&self, url: &str, user: &str, approve: bool) -> String {
        let result = self.run(
            "device",
            json!({"url": url, "username": user, "password": format!("{user}-kc-pw"),
                   "approve": approve}),
        );
        result["outcome"].as_str().unwrap().to_owned()
    }

    /// A device login at the brokered IdP (oidc-provider): confirm the code, log
    /// in there as `user`, consent; `"approved"`.
    pub fn device_at_idp(&self, url: &str, user: &str) -> String {
        let result = self.run(
            "device",
            json!({"url": url, "idp_username": user, "idp_password": format!("{user}-idp-pw"),
                   "approve": true}),
        );
        result["outcome"].as_str().unwrap().to_owned()
    }

    /// [`Browser::try_consent`], which must end at the redirect URI.
    pub fn consent(&self, url: &str, user: &str) -> Value {
        let (ok, result) = self.try_consent(url, user);
        assert!(ok, "consent: {result}");
        result
    }
}
