//! `bulkhead`: the command line. Parses flags, calls the libraries, prints one clear line on error.

mod image_cmd;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::Output;

/// A container platform whose every security feature is on by default.
#[derive(Parser, Debug)]
#[command(name = "bulkhead", version, about, propagate_version = true)]
struct Cli {
    /// Where bulkhead keeps its state.
    #[arg(long, global = true, env = "BULKHEAD_ROOT", default_value = "/var/lib/bulkhead")]
    root: PathBuf,
    /// Output format: table or json (for `image save`: oci, oci-dir or docker-archive).
    #[arg(long, global = true)]
    format: Option<String>,
    /// Print only ids (listings) or nothing but the result.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage images.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// List images (same as `image ls`).
    Images(image_cmd::LsArgs),
    /// Give an image another name (same as `image tag`).
    Tag(image_cmd::TagArgs),
    /// Remove images (same as `image rm`).
    Rmi(image_cmd::RmArgs),
    /// Manage the store as a whole.
    #[command(subcommand)]
    System(SystemCommand),
}

#[derive(Subcommand, Debug)]
enum SystemCommand {
    /// Verify every blob, layer, image record and reference; `--repair` fixes what it finds.
    Check {
        #[arg(long)]
        repair: bool,
    },
}

/// What every command gets: the store location and output choices.
pub struct Ctx {
    pub root: PathBuf,
    pub format: Option<String>,
    pub quiet: bool,
}

impl Ctx {
    /// The listing format; `--format` values meant for `image save` are refused here.
    pub fn output(&self) -> anyhow::Result<Output> {
        match self.format.as_deref() {
            None | Some("table") => Ok(Output::Table),
            Some("json") => Ok(Output::Json),
            Some(f) => anyhow::bail!("unknown --format {f:?} for this command (table or json)"),
        }
    }

    pub fn store(&self) -> anyhow::Result<bulkhead_image::Store> {
        Ok(bulkhead_image::Store::open(&self.root)?)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(125) } else { ExitCode::SUCCESS };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let ctx = Ctx {
        root: cli.root,
        format: cli.format,
        quiet: cli.quiet,
    };
    let result = match cli.command {
        Command::Image(c) => image_cmd::run(&ctx, c),
        Command::Images(a) => image_cmd::run(&ctx, image_cmd::ImageCommand::Ls(a)),
        Command::Tag(a) => image_cmd::run(&ctx, image_cmd::ImageCommand::Tag(a)),
        Command::Rmi(a) => image_cmd::run(&ctx, image_cmd::ImageCommand::Rm(a)),
        Command::System(SystemCommand::Check { repair }) => image_cmd::system_check(&ctx, repair),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line a user can act on: the chain of causes, never a backtrace.
            let msg = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
            eprintln!("bulkhead: error: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
