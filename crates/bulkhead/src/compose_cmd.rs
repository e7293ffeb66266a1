//! `bulkhead compose`: a compose file's model and the communication policy derived from it.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::output::{json, table};
use crate::{Ctx, Output};

#[derive(Args, Debug)]
pub struct ComposeArgs {
    /// The compose file (default: compose.yaml, compose.yml, docker-compose.yml or
    /// docker-compose.yaml in the current directory).
    #[arg(short = 'f', long = "file")]
    file: Option<std::path::PathBuf>,
    /// The project's name (default: `name:` in the file, else the directory's name).
    #[arg(short = 'p', long = "project-name")]
    project: Option<String>,
    /// Variables for interpolation (default: `.env` beside the compose file); the environment
    /// wins over it.
    #[arg(long)]
    env_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: ComposeCommand,
}

#[derive(Subcommand, Debug)]
pub enum ComposeCommand {
    /// The resolved, validated model (interpolated, merged), as JSON or YAML.
    Config {
        #[arg(long, default_value = "yaml", value_parser = ["json", "yaml"])]
        format: String,
    },
    /// The conversations the file allows between its services, and where each comes from.
    Policy,
}

fn load(a: &ComposeArgs) -> anyhow::Result<bulkhead_compose::Project> {
    let opts = bulkhead_compose::Options {
        file: a.file.clone(),
        project: a.project.clone(),
        env_file: a.env_file.clone(),
        dir: std::env::current_dir().context("the current directory")?,
    };
    bulkhead_compose::load(&opts).map_err(|e| match (e.line(), bulkhead_compose::find_file(&opts)) {
        (Some(_), Ok(file)) => anyhow::anyhow!("{}: {e}", file.display()),
        _ => anyhow::anyhow!("{e}"),
    })
}

pub fn run(ctx: &Ctx, a: ComposeArgs) -> anyhow::Result<ExitCode> {
    let p = load(&a)?;
    let file = p.file.display().to_string();
    match &a.command {
        ComposeCommand::Config { format } => {
            if format == "json" {
                json(&serde_json::to_value(&p.model)?)?;
            } else {
                print!("{}", serde_norway::to_string(&p.model).context("writing the model")?);
            }
        }
        ComposeCommand::Policy => {
            let pol = bulkhead_compose::policy::derive(&p).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            for w in &pol.warnings {
                eprintln!("warning: {file}: {w}");
            }
            match ctx.output()? {
                Output::Json => json(&serde_json::to_value(&pol)?)?,
                Output::Table => {
                    let rows: Vec<Vec<String>> = pol
                        .allow
                        .iter()
                        .map(|r| {
                            vec![
                                r.from.clone(),
                                r.to.clone(),
                                format!("{}/{}", r.port, r.proto),
                                format!("{file}:{} {}", r.line, r.because),
                            ]
                        })
                        .collect();
                    table(&["FROM", "TO", "PORT", "BECAUSE"], &rows)?;
                    println!(
                        "everything else between the services of {} is denied{}",
                        p.name,
                        if pol.learn {
                            " (x-bulkhead policy: learn: recorded, not enforced)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
