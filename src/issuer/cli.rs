//! `tokenfs dev-issuer`: run the embedded realm as a standalone server.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::secret_file::write_secret_file;

use super::{store, Issuer, IssuerConfig, LinkState, RunningIssuer};

/// Run a throwaway Keycloak-compatible realm: for development and tests only, never production.
///
/// FOR DEVELOPMENT ONLY — NEVER USE IN PRODUCTION. It has no login, no user
/// database and no persistence: its signing keys are generated at start and lost at
/// exit, and it hands out tokens for any username you name on the command line.
///
/// It serves Keycloak's endpoints (discovery, JWKS, token, userinfo) under
/// /realms/REALM/..., so you can point tokenfs (or any OIDC client) at it instead of
/// a real Keycloak. Typical use:
///
///   tokenfs dev-issuer --offline-token-file /root/dev/offline --client-secret-file /root/dev/secret
///
/// then configure tokenfs with the printed token URL, the client id, and those files.
/// Stop it with Ctrl-C (or SIGTERM).
///
/// It also fakes the Azure half, for development and tests only:
/// - Keycloak's token exchange to the identity provider (--idp-alias): until the user
///   has consented it answers not_linked with an account-link-url; opening that URL
///   (browser or curl) is the consent, after which the exchange returns an Azure token.
/// - An Entra ID v2 tenant (--tenant) with its own signing key: refresh_token grant,
///   JWKS, and a consent page at the authorize URL.
/// - Admin endpoints to revoke consent (consent states: linked, revoked, unlinked;
///   Entra states: ok, invalid_grant, interaction_required, consent_required), e.g.
///
///   curl -X POST 'http://127.0.0.1:8180/dev/consent?user=dev-user&alias=azure&state=revoked'
///   curl -X POST 'http://127.0.0.1:8180/dev/entra?user=dev-user&state=consent_required'
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct DevIssuerArgs {
    /// Address to listen on (port 0 picks a free port). Keep it on loopback: anyone
    /// who can reach it can use the tokens it issues.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8180")]
    pub listen: SocketAddr,

    /// Realm name, as in https://keycloak/realms/REALM.
    #[arg(long, value_name = "NAME", default_value = "DominoRealm")]
    pub realm: String,

    /// Lifetime of the access tokens it issues (e.g. 300s, 5m, 30s). Short values
    /// exercise a client's refresh logic; at least 1s.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,

    /// Username whose offline token --offline-token-file receives. Tokens carry it as
    /// preferred_username and name, with email USER@example.com.
    #[arg(long, value_name = "NAME", default_value = crate::cli::DEV_USER)]
    pub user: String,

    /// Client id to register (public, or confidential with --client-secret-file).
    #[arg(long, value_name = "ID", default_value = "tokenfs")]
    pub client_id: String,

    /// Mint an offline (refresh) token for --user and write it to PATH (mode 0600,
    /// created or truncated, no trailing newline; a missing directory is created
    /// 0700). Use it with the refresh_token grant.
    #[arg(long, value_name = "PATH")]
    pub offline_token_file: Option<PathBuf>,

    /// Generate a random client secret, register the client as confidential, and write
    /// the secret to PATH (mode 0600; a missing directory is created 0700). Without it the client is public (no secret), and
    /// the client_credentials grant is refused, as in Keycloak.
    #[arg(long, value_name = "PATH")]
    pub client_secret_file: Option<PathBuf>,

    /// Return a new refresh token on every refresh and revoke the one presented, like
    /// Keycloak's "Revoke Refresh Token" setting. Tests that a client persists it.
    #[arg(long)]
    pub rotate_refresh_tokens: bool,

    /// Delay every token-endpoint answer (realm and Entra) by DURATION (e.g. 200ms), to
    /// make refresh races and timeouts observable. The realm endpoint waits after the
    /// grant took effect: a rotation is done before the answer leaves.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub token_delay: Duration,

    /// How long a device login's code lives (Keycloak's oauth2DeviceCodeLifespan).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub device_code_lifespan: Duration,

    /// How often a device code may be polled; a poll sooner is answered slow_down.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub device_interval: Duration,

    /// Answer the first poll of every device code slow_down.
    #[arg(long)]
    pub device_slow_down: bool,

    /// The fake Azure identity provider and Entra tenant. Boxed because clap keeps
    /// every subcommand's arguments in one enum, whose size the largest variant sets.
    #[command(flatten)]
    pub azure: Box<AzureArgs>,
}

/// Options of the fake Azure half (token exchange, account link, Entra tenant).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Fake Azure / Entra ID (development only)")]
pub struct AzureArgs {
    /// Alias of the fake Azure identity provider: the requested_issuer of the token
    /// exchange (development only).
    #[arg(long, value_name = "ALIAS", default_value = "azure")]
    pub idp_alias: String,

    /// Tenant id of the fake Entra ID tenant: the tid of its tokens and the TENANT in
    /// /TENANT/oauth2/v2.0/token (development only).
    #[arg(long, value_name = "ID", default_value = super::DEFAULT_TENANT)]
    pub tenant: String,

    /// Lifetime of the fake Azure access tokens (e.g. 1h, 2s). Shorter than a client's
    /// minimum validity, it reproduces Keycloak's "expires_in of a few seconds".
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub azure_lifetime: Duration,

    /// Audience (aud) of the fake Azure access tokens.
    #[arg(long, value_name = "URL", default_value = "https://storage.azure.com")]
    pub azure_resource: String,

    /// The identity provider's minValidityToken: the exchange returns the stored Azure
    /// token until it has this little left, then replaces it (Keycloak's default, 5s).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub azure_min_validity: Duration,

    /// Start with --user already linked to the identity provider (consent given), so
    /// the token exchange succeeds at once. Without it the first exchange answers
    /// not_linked with the URL to open.
    #[arg(long)]
    pub linked: bool,

    /// Mint an Entra refresh token for --user and write it to PATH (mode 0600, created
    /// or truncated, no trailing newline). Use it with the Entra token URL.
    #[arg(long, value_name = "PATH")]
    pub entra_refresh_token_file: Option<PathBuf>,
}

/// Runs the dev realm until SIGINT or SIGTERM, then stops it gracefully.
pub async fn run_dev_issuer(args: DevIssuerArgs) -> anyhow::Result<()> {
    eprintln!("tokenfs dev-issuer: FOR DEVELOPMENT ONLY, never use it in production");
    // Registered before anything is printed: a harness that sends SIGTERM as soon as it
    // reads our output must get a graceful stop, not the default "die now".
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let (running, kind) = start(&args).await?;
    let banner = banner(&args, &running, kind);
    // A reader that closed our stdout must not take the server down (println! panics).
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush());
    drop(stdout);

    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("tokenfs dev-issuer: stopping");
    running.shutdown().await;
    Ok(())
}

/// What the server is and where: one `label: value` per line, URLs whole, so a
/// script can pick a line by its label or a URL by its shape.
fn banner(args: &DevIssuerArgs, running: &RunningIssuer, kind: &str) -> String {
    let mut banner = format!(
        "realm:            {}\n\
         token URL:        {}\n\
         JWKS URL:         {}\n\
         userinfo:         {}\n\
         client:           {} ({kind})\n",
        running.realm_url(),
        running.token_url(),
        running.jwks_url(),
        running.userinfo_url(),
        args.client_id
    );
    if let Some(path) = &args.client_secret_file {
        banner += &format!("secret in:        {}\n", path.display());
    }
    banner += &match &args.offline_token_file {
        Some(path) => format!("offline token for {} in: {}\n", args.user, path.display()),
        None => "no offline token minted (pass --offline-token-file to get one)\n".to_owned(),
    };
    let link = if args.azure.linked {
        "linked"
    } else {
        "not linked"
    };
    banner += &format!(
        "IdP alias:        {} ({} {link} at start)\n\
         tenant:           {}\n\
         Entra token URL:  {}\n\
         authorize URL:    {}\n\
         Azure JWKS URL:   {}\n\
         consent admin:    {}\n\
         Entra admin:      {}\n",
        args.azure.idp_alias,
        args.user,
        running.tenant(),
        running.entra_token_url(),
        running.entra_authorize_url(),
        running.azure_jwks_url(),
        running.consent_admin_url(),
        running.entra_admin_url(),
    );
    if let Some(path) = &args.azure.entra_refresh_token_file {
        banner += &format!(
            "Entra refresh token for {} in: {}\n",
            args.user,
            path.display()
        );
    }
    banner
}

/// Binds, then writes the files: once a file exists, the server it is for answers,
/// so a script may wait for the file and use it at once.
async fn start(args: &DevIssuerArgs) -> anyhow::Result<(RunningIssuer, &'static str)> {
    let issuer = Issuer::new(IssuerConfig {
        realm: args.realm.clone(),
        lifetime: args.lifetime,
        rotate_refresh_tokens: args.rotate_refresh_tokens,
        token_delay: args.token_delay,
        idp_alias: args.azure.idp_alias.clone(),
        tenant: args.azure.tenant.clone(),
        azure_lifetime: args.azure.azure_lifetime,
        azure_resource: args.azure.azure_resource.clone(),
        azure_min_validity: args.azure.azure_min_validity,
        device_lifespan: args.device_code_lifespan,
        device_interval: args.device_interval,
        device_slow_down: args.device_slow_down,
        device_user: args.user.clone(),
    })?;
    if args.azure.linked {
        issuer.set_link(&args.user, &args.azure.idp_alias, LinkState::Linked);
    }
    let running = issuer.clone().bind(args.listen).await?;

    let kind = match &args.client_secret_file {
        Some(path) => {
            let secret = store::random_secret();
            write_secret_file(path, &secret)
                .with_context(|| format!("writing the client secret to {}", path.display()))?;
            issuer.add_client(&args.client_id, Some(secret));
            "confidential"
        }
        None => {
            issuer.add_client(&args.client_id, None);
            "public"
        }
    };
    if let Some(path) = &args.offline_token_file {
        let token = issuer.mint_offline_token(&args.user, &args.client_id);
        write_secret_file(path, &token)
            .with_context(|| format!("writing the offline token to {}", path.display()))?;
    }
    if let Some(path) = &args.azure.entra_refresh_token_file {
        let token = issuer.mint_entra_refresh_token(&args.user);
        write_secret_file(path, &token)
            .with_context(|| format!("writing the Entra refresh token to {}", path.display()))?;
    }
    Ok((running, kind))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use secrecy::SecretString;

    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: DevIssuerArgs,
    }

    #[derive(clap::Parser)]
    struct Top {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        DevIssuer(DevIssuerArgs),
    }

    #[test]
    fn help_warns_it_is_for_development_only() {
        use clap::CommandFactory as _;
        let mut top = Top::command();
        let sub = top.find_subcommand_mut("dev-issuer").unwrap();
        let short = sub.render_help().to_string();
        let long = sub.render_long_help().to_string();
        if std::env::var_os("SHOW_HELP").is_some() {
            println!("{short}\n-----\n{long}");
        }
        assert!(short.contains("tests only, never production"), "{short}");
        assert!(long.contains("NEVER USE IN PRODUCTION"), "{long}");
    }

    #[test]
    fn defaults_and_durations() {
        let cli = Cli::parse_from(["x", "--token-delay", "50ms"]);
        let a = cli.args;
        assert_eq!(a.listen, "127.0.0.1:8180".parse().unwrap());
        assert_eq!(
            (a.realm.as_str(), a.user.as_str(), a.client_id.as_str()),
            ("DominoRealm", "dev-user", "tokenfs")
        );
        assert_eq!(a.lifetime, Duration::from_secs(300));
        assert_eq!(a.token_delay, Duration::from_millis(50));
        assert!(!a.rotate_refresh_tokens && a.offline_token_file.is_none());
        let z = a.azure;
        assert_eq!(
            (
                z.idp_alias.as_str(),
                z.tenant.as_str(),
                z.azure_resource.as_str()
            ),
            (
                "azure",
                super::super::DEFAULT_TENANT,
                "https://storage.azure.com"
            )
        );
        assert_eq!(z.azure_lifetime, Duration::from_secs(3600));
        assert!(!z.linked && z.entra_refresh_token_file.is_none());
        let cli = Cli::parse_from(["x", "--azure-lifetime", "2s", "--tenant", "t1", "--linked"]);
        let z = cli.args.azure;
        assert_eq!(
            (z.azure_lifetime, z.tenant.as_str(), z.linked),
            (Duration::from_secs(2), "t1", true)
        );
    }

    #[test]
    fn secret_file_is_private_and_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "old, longer content").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret_file(&path, &SecretString::from("abc")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "abc");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn files_work_against_the_running_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let (token_file, secret_file) = (dir.path().join("offline"), dir.path().join("secret"));
        let entra_file = dir.path().join("entra");
        let cli = Cli::parse_from([
            "x".as_ref(),
            "--listen=127.0.0.1:0".as_ref(),
            "--offline-token-file".as_ref(),
            token_file.as_os_str(),
            "--client-secret-file".as_ref(),
            secret_file.as_os_str(),
            "--linked".as_ref(),
            "--entra-refresh-token-file".as_ref(),
            entra_file.as_os_str(),
        ]);
        let (running, kind) = start(&cli.args).await.unwrap();
        assert_eq!(kind, "confidential");
        let token = std::fs::read_to_string(&token_file).unwrap();
        let secret = std::fs::read_to_string(&secret_file).unwrap();
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let resp = reqwest::Client::new()
            .post(running.token_url())
            .basic_auth("tokenfs", Some(&secret))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        let body: serde_json::Value = resp.json().await.unwrap();
        let claims = body["access_token"]
            .as_str()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap()
            .to_owned();
        let claims =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims)
                .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(claims["preferred_username"], "dev-user");

        // --linked: the exchange succeeds at once.
        let access = body["access_token"].as_str().unwrap();
        let resp = reqwest::Client::new()
            .post(running.token_url())
            .basic_auth("tokenfs", Some(&secret))
            .form(&[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", access),
                ("requested_issuer", "azure"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK);

        let entra = std::fs::read_to_string(&entra_file).unwrap();
        let mode = std::fs::metadata(&entra_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let resp = reqwest::Client::new()
            .post(running.entra_token_url())
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", "app"),
                ("refresh_token", &entra),
                ("scope", "https://storage.azure.com/.default"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK);

        let banner = banner(&cli.args, &running, kind);
        for (label, url) in [
            ("Entra token URL:", running.entra_token_url()),
            ("authorize URL:", running.entra_authorize_url()),
            ("consent admin:", running.consent_admin_url()),
        ] {
            let line = banner.lines().find(|l| l.starts_with(label));
            let value = line.and_then(|l| l.strip_prefix(label)).map(str::trim);
            assert_eq!(value, Some(url.as_str()), "{banner}");
        }
        running.shutdown().await;
    }
}
