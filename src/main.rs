//! `dockhand`: the one installed binary. A thin shell: parse arguments, load
//! the config, set up logging, and hand over to the agent library.

use clap::{Parser, Subcommand};
use dockhand_agent::config::{Config, DEFAULT_CONFIG_PATH, EXIT_CONFIG};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dockhand",
    version,
    about = "A container supervisor for Docker hosts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host agent (the systemd service runs this).
    Agent {
        /// Config file in ecs.config format.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print the effective settings.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Exit 0 if the config is valid, 78 (EX_CONFIG) with every error if not.
    Check {
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

/// Loads the config, printing every error; `None` means exit 78.
fn load(config: Option<PathBuf>) -> Option<dockhand_agent::config::Loaded> {
    let required = config.is_some();
    let path = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let env: BTreeMap<String, String> = std::env::vars().collect();
    match Config::load(&path, required, &env) {
        Ok(loaded) => Some(loaded),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("config error: {e}");
            }
            eprintln!(
                "{} configuration error(s); nothing was started",
                errors.0.len()
            );
            None
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let Some(loaded) = load(config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            let width = loaded
                .effective
                .iter()
                .map(|e| e.0.len())
                .max()
                .unwrap_or(0);
            for (key, value, source) in &loaded.effective {
                println!("{key:<width$}  {value:<32}  # {source}");
            }
            ExitCode::SUCCESS
        }
        Command::Agent { config } => {
            let Some(loaded) = load(config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            dockhand_agent::init_logging(&loaded.config);
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(cause = %e, "cannot start the async runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(dockhand_agent::run(loaded.config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(cause = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
