use tokenfs::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_args();
    tokenfs::logging::init(cli.log_format);
    if let Err(e) = tokenfs::harden::harden() {
        eprintln!("tokenfs: error: cannot harden the process (no core dumps, not dumpable): {e}");
        return std::process::ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Mount(args) => tokenfs::daemon::run(args).map(|()| 0),
        // Its own exit codes (0/1/2) and messages.
        Command::Status(args) => return std::process::ExitCode::from(tokenfs::ops::status(args)),
        Command::Check(args) => tokenfs::ops::check(args),
        Command::Login(args) => tokenfs::ops::login(args),
        Command::Consent(args) => tokenfs::ops::consent(args),
        Command::Unmount(args) => tokenfs::ops::unmount(args).map_err(anyhow::Error::from),
        Command::Wait(args) => tokenfs::ops::wait(args),
        Command::Exec(args) => tokenfs::exec::run(args),
        #[cfg(feature = "dev-issuer")]
        Command::DevIssuer(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(tokenfs::issuer::run_dev_issuer(args)))
            .map(|()| 0),
        #[cfg(not(feature = "dev-issuer"))]
        Command::DevIssuer(_) => Err(anyhow::anyhow!(tokenfs::cli::NO_DEV_ISSUER)),
        Command::Completions(args) => tokenfs::docs::completions(args)
            .map(|()| 0)
            .map_err(anyhow::Error::from),
        Command::Man(args) => tokenfs::docs::man(args)
            .map(|()| 0)
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("tokenfs: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
