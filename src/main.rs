//! The `amqp-gateway` binary: parse the command line, load the config, start logging, bind,
//! and hand over to [`amqp_gateway::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use amqp_gateway::Config;
use amqp_gateway::config::{RouteAction, RouteAuth};
use amqp_gateway::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};

/// jemalloc instead of glibc malloc: it gives freed memory back to the OS (see Cargo.toml), so
/// RSS after a load peak falls back instead of staying in glibc's per-thread arenas.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "amqp-gateway", version, about = "HTTP-to-AMQP API gateway")]
struct Cli {
    /// Config file (TOML).
    #[arg(long, short, default_value = "config/gateway.toml")]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config, print the route table, exit 0 (valid) or 64 (invalid).
    Check {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the published contract of the config as JSON on stdout: AsyncAPI 3.0 (the events)
    /// or OpenAPI 3.1 (the HTTP routes); exit 64 when the config is invalid.
    Spec {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Which document.
        #[arg(long, value_enum)]
        format: amqp_gateway::spec::Format,
    },
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Exit status for a config that does not load: `EX_USAGE` (sysexits.h), so a supervisor or
/// a deploy script can tell "fix the file" from a runtime failure (1).
const EXIT_INVALID_CONFIG: u8 = 64;

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path, env).map_err(|e| {
        eprintln!("amqp-gateway: invalid config: {e}");
        ExitCode::from(EXIT_INVALID_CONFIG)
    })
}

fn print_routes(config: &Config) {
    println!(
        "{:<24} {:<22} {:<28} {:<40} AUTH",
        "ROUTE", "METHODS", "PATH", "TARGET"
    );
    for r in &config.routes {
        let methods: Vec<&str> = r.methods.iter().map(|m| m.as_str()).collect();
        let target = match &r.action {
            RouteAction::Publish(p) => format!(
                "publish {}/{} -> {}{}",
                if p.exchange.is_empty() {
                    "(default)"
                } else {
                    &p.exchange
                },
                p.routing_key,
                p.status.as_u16(),
                p.schema
                    .as_ref()
                    .map(|s| format!(" schema={}", s.file()))
                    .unwrap_or_default()
            ),
            RouteAction::Proxy(p) => format!("upstream {}", p.upstream),
        };
        let auth = match &r.auth {
            RouteAuth::Public => "public".to_owned(),
            RouteAuth::Required(p) if p.roles.is_empty() && p.scopes.is_empty() => {
                "token".to_owned()
            }
            RouteAuth::Required(p) => format!(
                "roles={:?} scopes={:?} match={}",
                p.roles,
                p.scopes,
                match p.mode {
                    amqp_gateway::config::PolicyMatch::Any => "any",
                    amqp_gateway::config::PolicyMatch::All => "all",
                }
            ),
        };
        println!(
            "{:<24} {:<22} {:<28} {:<40} {auth}",
            r.name,
            methods.join(","),
            r.path,
            target
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

#[tokio::main]
async fn main() -> ExitCode {
    amqp_gateway::tls::install_default_provider();
    let cli = Cli::parse();
    if let Some(Command::Check { config }) = &cli.command {
        return match load(config) {
            Ok(cfg) => {
                print_routes(&cfg);
                println!("{}: OK ({} routes)", config.display(), cfg.routes.len());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        };
    }
    if let Some(Command::Spec { config, format }) = &cli.command {
        return match load(config) {
            Ok(cfg) => {
                let document = amqp_gateway::spec::document(&cfg, *format);
                print!("{}", amqp_gateway::spec::to_pretty_json(&document));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        };
    }
    let config = match load(&cli.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Held until `main` returns, so queued log lines are written out at exit.
    let _log = telemetry::init(cli.log_format, env("RUST_LOG").as_deref());
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            eprintln!("amqp-gateway: cannot listen on {addr}: {e}");
            ExitCode::FAILURE
        })
    };
    let listener = match bind(config.server.listen).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let admin = match bind(config.server.admin_listen).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    match amqp_gateway::run(config, listener, admin, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amqp-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
