//! `dockhand`: the one installed binary. A thin shell: parse arguments, load
//! the config, set up logging, and hand over to the agent library.

mod client;

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
    /// Run the control endpoint: the ECS API (`aws ecs --endpoint-url`),
    /// the scheduler and the deployments of a cluster of hosts.
    Control {
        /// Config file (KEY=VALUE), default /etc/dockhand/control.conf.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<ControlCommand>,
    },
    /// Validate the configuration and print the effective settings.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Services, tasks, health, and for anything not right, why.
    Status {
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Print the agent's /v1/services and /v1/tasks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a service file, install it atomically, and follow the
    /// rollout: exit 0 when the new revision runs healthy, non-zero with the
    /// reason when it fails or times out.
    Deploy {
        /// A service file (ECS CreateService JSON with the task definition inline).
        file: PathBuf,
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// How long to follow the rollout, e.g. 90s, 5m.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    dockhand_agent::config::parse_duration(s)
}

#[derive(Subcommand)]
enum ControlCommand {
    /// Access keys of the control endpoint.
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Exit 0 if the config is valid, 78 (EX_CONFIG) with every error if
    /// not; print the effective settings.
    Check,
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Append a fresh key to the credentials file (mode 0600) and print
    /// its profile, ready for ~/.aws/credentials or ecs.config.
    New {
        /// `operator` (every operation) or `instance` (what an agent does).
        #[arg(long, value_parser = ["operator", "instance"])]
        role: String,
        /// The cluster an instance key may join (repeat for several).
        #[arg(long = "cluster", value_name = "NAME")]
        clusters: Vec<String>,
        /// The profile name (default: operator, or CLUSTER-instances).
        #[arg(long)]
        profile: Option<String>,
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
    Config::load(&path, required, &env)
        .map_err(|e| print_config_errors(&e))
        .ok()
}

/// Prints every configuration error, and that nothing was started.
fn print_config_errors(errors: &dockhand_model::conf::ConfigErrors) {
    for e in &errors.0 {
        eprintln!("config error: {e}");
    }
    eprintln!(
        "{} configuration error(s); nothing was started",
        errors.0.len()
    );
}

/// `config check`: the warnings, then each key's effective value and
/// where it came from.
fn print_check(warnings: &[String], effective: &[(&str, String, dockhand_model::conf::Source)]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let width = effective.iter().map(|e| e.0.len()).max().unwrap_or(0);
    for (key, value, source) in effective {
        println!("{key:<width$}  {value:<32}  # {source}");
    }
}

/// Loads the control endpoint's config, printing every error.
fn load_control(config: Option<PathBuf>) -> Option<dockhand_control::config::Loaded> {
    let required = config.is_some();
    let path =
        config.unwrap_or_else(|| PathBuf::from(dockhand_control::config::DEFAULT_CONFIG_PATH));
    let env: BTreeMap<String, String> = std::env::vars().collect();
    dockhand_control::config::Config::load(&path, required, &env)
        .map_err(|e| print_config_errors(&e))
        .ok()
}

/// The agent's and the control endpoint's runtime. The proxy serves
/// clients on threads of its own (DOCKHAND_PROXY_THREADS, proxy/src/shard.rs).
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            None
        }
    }
}

fn control(config: Option<PathBuf>, command: Option<ControlCommand>) -> ExitCode {
    use dockhand_control::credentials::{append_new, Role};
    let Some(loaded) = load_control(config) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let cfg = loaded.config;
    match command {
        Some(ControlCommand::Check) => {
            print_check(&loaded.warnings, &loaded.effective);
            ExitCode::SUCCESS
        }
        Some(ControlCommand::Credentials {
            command:
                CredentialsCommand::New {
                    role,
                    clusters,
                    profile,
                },
        }) => {
            let role = if role == "operator" {
                if !clusters.is_empty() {
                    eprintln!("dockhand control credentials new: --cluster is for instance keys (operator keys may act on every cluster)");
                    return ExitCode::from(EXIT_CONFIG);
                }
                Role::Operator
            } else {
                if clusters.is_empty() {
                    eprintln!("dockhand control credentials new: an instance key needs --cluster NAME (the cluster its hosts join; * for any)");
                    return ExitCode::from(EXIT_CONFIG);
                }
                Role::Instance {
                    clusters: clusters.clone(),
                }
            };
            let profile = profile.unwrap_or_else(|| match &role {
                Role::Operator => "operator".to_string(),
                Role::Instance { clusters } => {
                    format!("{}-instances", clusters[0].replace('*', "any"))
                }
            });
            match append_new(&cfg.credentials, &profile, &role) {
                Ok(text) => {
                    eprintln!(
                        "appended profile [{profile}] to {}",
                        cfg.credentials.display()
                    );
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dockhand control credentials new: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(ControlCommand::Migrate) => {
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(dockhand_control::migrate(&cfg)) {
                Ok(v) => {
                    println!("schema version {v}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dockhand control migrate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            dockhand_control::init_logging(&cfg);
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(dockhand_control::run(cfg, async {
                shutdown_signal().await;
            })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Control { config, command } => control(config, command),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let Some(loaded) = load(config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            print_check(&loaded.warnings, &loaded.effective);
            ExitCode::SUCCESS
        }
        Command::Status { config, json } => {
            let Some(loaded) = load(config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let api = loaded.config.api_listen;
            let got = client::get_json(api, "/v1/services").and_then(|s| {
                let t = client::get_json(api, "/v1/tasks")?;
                let m = client::get_json(api, "/v1/metadata")?;
                Ok((s, t, m))
            });
            match got {
                Ok((services, tasks, metadata)) if json => {
                    let both = serde_json::json!({"Metadata": metadata, "Services": services["Services"], "Tasks": tasks["Tasks"]});
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&both).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Ok((services, tasks, metadata)) => {
                    print!("{}", client::render_control(&metadata));
                    print!("{}", client::render_status(&services, &tasks));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dockhand status: {e}");
                    ExitCode::from(client::EXIT_UNAVAILABLE)
                }
            }
        }
        Command::Deploy {
            file,
            config,
            timeout,
        } => {
            let Some(loaded) = load(config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let cfg = &loaded.config;
            match client::deploy(&file, &cfg.services_dir, cfg.api_listen, timeout, |line| {
                eprintln!("{line}")
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("dockhand deploy: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Agent { config } => {
            let Some(loaded) = load(config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            dockhand_agent::init_logging(&loaded.config);
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(dockhand_agent::run(loaded.config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    match e {
                        // A CA file or certificate that cannot be read is a
                        // config error: exit 78 so systemd does not retry in
                        // a loop.
                        dockhand_agent::AgentError::ControlClient(_)
                        | dockhand_agent::AgentError::Tls(_) => ExitCode::from(EXIT_CONFIG),
                        _ => ExitCode::FAILURE,
                    }
                }
            }
        }
    }
}

/// Resolves on SIGTERM (a stop that may drain the host) or SIGINT (stop
/// now).
async fn shutdown_signal() -> dockhand_agent::Stop {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(cause = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM received");
            dockhand_agent::Stop::Drain
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT received");
            dockhand_agent::Stop::Now
        }
    }
}
