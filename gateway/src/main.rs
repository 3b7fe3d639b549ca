//! The `gateway` binary: parses the command line, sets up logging and the
//! runtime, and hands over to the library. Errors are printed with their
//! whole chain and end the process with a non-zero code.

use std::process::ExitCode;

use clap::Parser;
use gateway::cli::{self, Cli, Command};
use gateway::paths::InstancePaths;
use gateway::settings::LogFormat;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve => runtime.block_on(serve(&cli.target)).map(|()| 0),
        command => {
            // Admin commands print their results; only warnings go to the log.
            let _ = gateway::logging::init("cli", LogFormat::Human, "warn", None);
            runtime.block_on(cli::run_admin(&cli.target, command))
        }
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: wrapped errors
/// often repeat their source's text (a store error quoting SQLite's), and a
/// message that says the same thing four times hides what to do.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let tail = text.rsplit(": ").next().unwrap_or(&text);
        if out.contains(&text) || out.contains(tail) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn serve(target: &cli::Target) -> anyhow::Result<()> {
    let settings = cli::load_settings(target)?;
    let instance = &settings.instance;
    let paths = InstancePaths::new(&instance.data_dir, instance.name.as_str());
    // Before anything writes into the data directory, the log included: a
    // second `serve` of the same instance must change nothing.
    let lock = gateway::instance::InstanceLock::acquire(&paths, instance.name.as_str())?;
    gateway::logging::init(
        instance.name.as_str(),
        instance.log_format,
        &instance.log_level,
        Some(&paths.log_file),
    )?;
    gateway::instance::serve(settings, lock).await
}
