//! The command line: `serve`, `check-config` and `new-key`.

use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    config::{Config, LogFormat},
    server::Gateway,
};

#[derive(Parser)]
#[command(
    name = "sidetrace",
    version,
    about = "Reverse-proxy LLM gateway: usage, cost and traces on the side"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (embedded defaults when no config file is given).
    Serve {
        /// TOML config file.
        #[arg(long, env = "SIDETRACE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a config file and the provider files, print the routes, and exit.
    CheckConfig {
        #[arg(long, env = "SIDETRACE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Make a gateway key for a client: prints the key (give it to the client, once) and the
    /// `[[keys]]` entry with its SHA-256 (the config keeps only that).
    NewKey {
        /// The key's name in the config, on spans and on metrics.
        #[arg(long, default_value = "my-app")]
        name: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => check_config(config),
        Command::NewKey { name } => new_key(&name),
    }
}

fn new_key(name: &str) -> ExitCode {
    match crate::proxy::keys::generate() {
        Ok((key, sha256)) => print_out(&format!(
            "key (give it to the client; it is not kept anywhere):\n  {key}\n\n\
             config entry:\n[[keys]]\nname = {name:?}\nsha256 = \"{sha256}\"\n"
        )),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for warning in &config.env_warnings {
        eprintln!("warning: {warning}");
    }
    match crate::server::check_config(&config) {
        Ok(registry) => {
            let mut out = format!(
                "config ok: listen {} admin {}\n",
                config.listen, config.admin_listen
            );
            for p in registry.providers() {
                out.push_str(&format!(
                    "  {:<12} {:<20} -> {:<48} {}\n",
                    p.name,
                    p.prefix,
                    p.upstream_url(),
                    p.gen_ai_provider
                ));
            }
            print_out(&out)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Writes `text` to stdout. A reader that stopped early (`| head -1`) is no error; `println!`
/// panicked there.
fn print_out(text: &str) -> ExitCode {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    for warning in &config.env_warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path_for_reload = path.clone();
    let code = runtime.block_on(async move {
        let path = path_for_reload;
        let mut signals = Signals::listen();
        let gateway = match Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        wait_for_shutdown(&gateway, path.as_deref(), &mut signals).await;
        tracing::info!("shutdown requested");
        let report = gateway.shutdown().await;
        tracing::info!(drained = report.drained, "stopped");
        ExitCode::SUCCESS
    });
    // Dropping a runtime waits for every blocking task without limit; one stuck on a failed
    // disk must not keep the process alive after shutdown has done what it could.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_WAIT);
    code
}

/// How long exit waits for blocking tasks still running after shutdown.
const RUNTIME_SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The signals the gateway answers, listened for before it starts: one that comes while its
/// listeners are already up (a SIGHUP right after start) is handled, not left to its default
/// action, which ends the process.
struct Signals {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn listen() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                hup: signal(SignalKind::hangup()).ok(),
                term: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }
}

/// Waits for SIGTERM or Ctrl-C; on SIGHUP, reloads the prices from the config file and the
/// listeners' TLS certificate from its files.
async fn wait_for_shutdown(
    gateway: &Gateway,
    path: Option<&std::path::Path>,
    signals: &mut Signals,
) {
    #[cfg(unix)]
    {
        if let Some(mut hup) = signals.hup.take() {
            let stop = wait_for_signal(signals);
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = hup.recv() => {
                        match Config::load(path) {
                            Ok(config) => {
                                if let Err(e) = gateway.reload_prices(&config) {
                                    tracing::error!(error = %e, "reload refused; the old prices stay");
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "reload refused; the old prices stay"),
                        }
                        // The same certificate files, read again (a renewed certificate).
                        if let Err(e) = gateway.reload_tls() {
                            tracing::error!(error = %e, "TLS reload refused; the old certificate stays");
                        }
                    }
                }
            }
        }
    }
    wait_for_signal(signals).await;
}

async fn wait_for_signal(signals: &mut Signals) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match signals.term.as_mut() {
            Some(term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            None => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = signals;
        let _ = ctrl_c.await;
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
