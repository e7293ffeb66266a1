//! `bulkhead`: the command line. Parses flags, calls the libraries, prints one clear line on error.
#![warn(clippy::undocumented_unsafe_blocks)]

mod agent_exec;
mod cluster_cmd;
mod compose_cmd;
mod container_cmd;
mod image_cmd;
mod network_cmd;
mod output;
mod registry_cmd;
mod scan_cmd;
mod service_cmd;
mod stack_cmd;
mod trust_cmd;
mod volume_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::Output;

/// A container platform whose every security feature is on by default.
#[derive(Parser, Debug)]
#[command(
    name = "bulkhead",
    version,
    about,
    propagate_version = true,
    after_help = "Trust policy: --policy FILE (or $BULKHEAD_POLICY; default <config>/policy.toml), for pull, run, create, sbom, scan and trust."
)]
struct Cli {
    /// Where bulkhead keeps its state.
    #[arg(long, global = true, env = "BULKHEAD_ROOT", default_value = "/var/lib/bulkhead")]
    root: PathBuf,
    /// Registry configuration: registries.json, certs.d/HOST/*.crt, auth.json.
    #[arg(long, global = true, env = "BULKHEAD_CONFIG", default_value = "/etc/bulkhead")]
    config: PathBuf,
    /// The trust policy (default: <config>/policy.toml). Taken by pull, run, create, sbom, scan and
    /// trust; hidden from every help but this one's after-help, so that commands that ignore it
    /// do not list it as theirs.
    #[arg(long, global = true, env = "BULKHEAD_POLICY", hide = true)]
    policy: Option<PathBuf>,
    /// Output format: table or json (commands that write other formats list them in their own help).
    #[arg(long, global = true)]
    format: Option<String>,
    /// Print only ids (listings) or nothing but the result.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    /// Give up waiting for the store's lock after this many seconds (default: wait; after a second
    /// the command says which process holds it).
    #[arg(long, global = true, env = "BULKHEAD_LOCK_TIMEOUT")]
    lock_timeout: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage images.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// Manage networks.
    #[command(subcommand)]
    Network(network_cmd::NetworkCommand),
    /// Manage named volumes.
    #[command(subcommand)]
    Volume(volume_cmd::VolumeCommand),
    /// A cluster of nodes: init, join, join tokens.
    #[command(subcommand)]
    Cluster(cluster_cmd::ClusterCommand),
    /// This node's process, and the cluster's nodes.
    #[command(subcommand)]
    Node(cluster_cmd::NodeCommand),
    /// The cluster's secrets (sealed in its store; their data is never shown).
    #[command(subcommand)]
    Secret(cluster_cmd::SecretCommand),
    /// Services on the cluster: replicated or global tasks with the hardened defaults.
    #[command(subcommand)]
    Service(Box<service_cmd::ServiceCommand>),
    /// A compose file's services on the cluster, with the conversations it allows.
    #[command(subcommand)]
    Stack(stack_cmd::StackCommand),
    /// The cluster's configs (files for services, not secret).
    #[command(subcommand)]
    Config(cluster_cmd::ConfigCommand),
    /// Applications from a compose file: its model, and the conversations it allows.
    Compose(compose_cmd::ComposeArgs),
    /// List images (same as `image ls`).
    Images(image_cmd::LsArgs),
    /// Give an image another name (same as `image tag`).
    Tag(image_cmd::TagArgs),
    /// Remove images (same as `image rm`).
    Rmi(image_cmd::RmArgs),
    /// Pull an image from a registry.
    Pull(registry_cmd::PullArgs),
    /// Push an image to a registry.
    Push(registry_cmd::PushArgs),
    /// Log in to a registry (default: Docker Hub).
    Login(registry_cmd::LoginArgs),
    /// Log out from a registry.
    Logout { server: Option<String> },
    /// Registry manifests.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Content trust: signed tags (TUF), keys, the policy that enforces them.
    Trust(trust_cmd::TrustArgs),
    /// The bill of materials of an image, layer by layer (table, json, cyclonedx-json, spdx-json).
    #[command(after_help = "--format: table (default), json, cyclonedx-json, spdx-json")]
    Sbom(scan_cmd::SbomArgs),
    /// Match an image's packages against the vulnerability database (offline).
    #[command(after_help = "--format: table (default), json, sarif, cyclonedx-json")]
    Scan(scan_cmd::ScanArgs),
    /// The vulnerability database (OSV advisories).
    #[command(subcommand)]
    Db(scan_cmd::DbCommand),
    /// Artifacts attached to images in registries (OCI referrers).
    #[command(subcommand)]
    Artifact(registry_cmd::ArtifactCommand),
    /// Run a command in a new container (in the foreground; exits with the container's status).
    Run(Box<container_cmd::RunArgs>),
    /// Create a container without starting it (same flags as run).
    Create(Box<container_cmd::RunArgs>),
    /// List a container's published ports.
    Port { container: String },
    /// Start created or stopped containers (in the background).
    Start {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop containers: their stop signal, then SIGKILL after the timeout.
    Stop {
        #[arg(required = true)]
        containers: Vec<String>,
        /// Seconds to wait before SIGKILL (default: the container's --stop-timeout, 10).
        #[arg(short, long)]
        time: Option<u64>,
    },
    /// Send a signal to containers.
    Kill {
        #[arg(required = true)]
        containers: Vec<String>,
        #[arg(short, long, default_value = "KILL")]
        signal: String,
    },
    /// Wait for containers to exit; print their exit codes.
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a command in a running container, with the same namespaces and restrictions.
    Exec(container_cmd::ExecArgs),
    /// Show the processes of a running container.
    Top { container: String },
    /// Write a container's filesystem as a tar archive.
    Export {
        container: String,
        /// Write to a file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Show a container's output, or check its log's integrity (--verify).
    Logs(container_cmd::LogsArgs),
    /// Supervise a container (started by run -d and start; not for people).
    #[command(hide = true)]
    Shim { id: String },
    /// Run a container's healthcheck on its interval (started by its shim; not for people).
    #[command(hide = true)]
    HealthLoop {
        id: String,
        #[arg(long)]
        pid: i32,
    },
    /// Start a container again for its restart policy (started by a shim's last step; not for
    /// people).
    #[command(hide = true)]
    RestartAfter {
        id: String,
        #[arg(long)]
        delay_ms: u64,
        #[arg(long)]
        after: String,
    },
    /// Records the exit of a container (executed by its shim's monitor; not for people).
    #[command(hide = true)]
    ShimFinish {
        id: String,
        #[arg(long)]
        pid: i32,
        /// The external runtime that ran it (none: the embedded executor).
        #[arg(long)]
        runtime: Option<PathBuf>,
        #[arg(long, allow_hyphen_values = true)]
        code: i32,
        #[arg(long)]
        finished: String,
        #[arg(long)]
        error: Option<String>,
    },
    /// List containers (running ones; -a for all).
    Ps {
        #[arg(short, long)]
        all: bool,
    },
    /// Remove containers.
    Rm {
        #[arg(required = true)]
        containers: Vec<String>,
        /// Kill a running container first.
        #[arg(short, long)]
        force: bool,
    },
    /// Show containers as JSON, with their effective security profile.
    Inspect {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Show what a container changed in its filesystem (A added, C changed, D deleted).
    Diff { container: String },
    /// Manage the store as a whole.
    #[command(subcommand)]
    System(SystemCommand),
}

#[derive(Subcommand, Debug)]
enum ManifestCommand {
    /// Show the manifest (or index) a reference names in its registry.
    Inspect { reference: String },
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
#[derive(Clone, Debug)]
pub struct Ctx {
    pub root: PathBuf,
    pub config: PathBuf,
    pub policy: Option<PathBuf>,
    /// `--lock-timeout`, in seconds.
    pub lock_timeout: Option<u64>,
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

    /// The store, its names signed with this machine's key (`<config>/trust/names.key`).
    pub fn store(&self) -> anyhow::Result<bulkhead_image::Store> {
        Ok(bulkhead_image::Store::open(&self.root)?
            .with_names_key(self.names_key())
            .with_lock_wait(self.lock_wait()))
    }

    /// How long commands wait for the store's lock, and the notice after a second.
    pub fn lock_wait(&self) -> bulkhead_image::store::LockWait {
        bulkhead_image::store::LockWait {
            timeout: self.lock_timeout.map(std::time::Duration::from_secs),
            notice: Some(|m: &str| eprintln!("bulkhead: notice: {m}")),
        }
    }

    /// The key that signs the store's names.
    pub fn names_key(&self) -> bulkhead_image::names::NamesKey {
        bulkhead_image::names::NamesKey::new(&self.config.join("trust"), &self.root)
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
    // A plain level applies to bulkhead's own crates; dependencies (libcontainer's notes about
    // cgroup controllers this host lacks, say) speak only at debug and trace, or when named.
    let directive = match cli.log_level.as_str() {
        l @ ("error" | "warn" | "info") => {
            format!(
                "off,bulkhead={l},bulkhead_image={l},bulkhead_runtime={l},bulkhead_registry={l},bulkhead_network={l},bulkhead_cluster={l}"
            )
        }
        other => other.to_owned(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directive).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // A closed stderr (`2>&1 | head -1`) must not panic the CLI halfway through a run, with a
        // container made and its mounts up: the lines are dropped, the run goes on.
        .log_internal_errors(false)
        .init();
    let is_run = matches!(
        cli.command,
        Command::Run(_) | Command::Shim { .. } | Command::Create(_) | Command::Exec(_)
    );
    if is_run && !bulkhead_runtime::sealed::is_sealed() {
        // Where the user's binary is, for the shim's finishing half (which need not run sealed).
        if let Ok(exe) = std::env::current_exe() {
            std::env::set_var("BULKHEAD_EXE", exe);
        }
    }
    if is_run {
        // A container must never be able to overwrite the binary that starts it (CVE-2019-5736):
        // run from a sealed, anonymous copy of ourselves.
        if let Err(e) = bulkhead_runtime::sealed::ensure_sealed() {
            eprintln!("bulkhead: error: cannot re-execute from a sealed copy: {e}");
            return ExitCode::from(container_cmd::ENGINE_ERROR);
        }
    }
    let ctx = Ctx {
        root: cli.root,
        config: cli.config,
        policy: cli.policy,
        lock_timeout: cli.lock_timeout,
        format: cli.format,
        quiet: cli.quiet,
    };
    bulkhead_runtime::hooks::install(Box::new(network_cmd::NetworkHooks {
        root: ctx.root.clone(),
        config: ctx.config.clone(),
    }));
    let result = match cli.command {
        Command::Network(c) => network_cmd::run(&ctx, c),
        Command::Volume(c) => volume_cmd::run(&ctx, c),
        Command::Cluster(c) => cluster_cmd::run(&ctx, c),
        Command::Node(c) => cluster_cmd::node(&ctx, c),
        Command::Secret(c) => cluster_cmd::secret(&ctx, c),
        Command::Service(c) => service_cmd::service(&ctx, *c),
        Command::Stack(c) => stack_cmd::stack(&ctx, c),
        Command::Config(c) => cluster_cmd::config(&ctx, c),
        Command::Compose(a) => compose_cmd::run(&ctx, a),
        Command::Image(c) => image_cmd::run(&ctx, c),
        Command::Images(a) => image_cmd::run(&ctx, image_cmd::ImageCommand::Ls(a)),
        Command::Tag(a) => image_cmd::run(&ctx, image_cmd::ImageCommand::Tag(a)),
        Command::Rmi(a) => image_cmd::run(&ctx, image_cmd::ImageCommand::Rm(a)),
        Command::System(SystemCommand::Check { repair }) => image_cmd::system_check(&ctx, repair),
        Command::Pull(a) => registry_cmd::pull(&ctx, a),
        Command::Push(a) => registry_cmd::push(&ctx, a),
        Command::Login(a) => registry_cmd::login(&ctx, a),
        Command::Logout { server } => registry_cmd::logout(&ctx, server),
        Command::Manifest(ManifestCommand::Inspect { reference }) => registry_cmd::manifest_inspect(&ctx, &reference),
        Command::Artifact(c) => registry_cmd::artifact(&ctx, c),
        Command::Trust(a) => trust_cmd::run(&ctx, a),
        Command::Sbom(a) => scan_cmd::sbom(&ctx, a),
        Command::Scan(a) => scan_cmd::scan(&ctx, a),
        Command::Db(c) => scan_cmd::db(&ctx, c),
        Command::Run(a) => container_cmd::run(&ctx, *a),
        Command::Create(a) => container_cmd::create_cmd(&ctx, *a),
        Command::Start { containers } => container_cmd::start(&ctx, &containers),
        Command::Port { container } => network_cmd::port(&ctx, &container),
        Command::Stop { containers, time } => container_cmd::stop(&ctx, &containers, time),
        Command::Kill { containers, signal } => container_cmd::kill(&ctx, &containers, &signal),
        Command::Wait { containers } => container_cmd::wait(&ctx, &containers),
        Command::Logs(a) => container_cmd::logs(&ctx, a),
        Command::Exec(a) => container_cmd::exec(&ctx, a),
        Command::Top { container } => container_cmd::top(&ctx, &container),
        Command::Export { container, output } => container_cmd::export(&ctx, &container, output.as_deref()),
        Command::Shim { id } => container_cmd::shim(&ctx, &id),
        Command::HealthLoop { id, pid } => container_cmd::health_loop(&ctx, &id, pid),
        Command::RestartAfter { id, delay_ms, after } => {
            container_cmd::restart_after(&ctx, &id, std::time::Duration::from_millis(delay_ms), &after)
        }
        Command::ShimFinish {
            id,
            pid,
            runtime,
            code,
            finished,
            error,
        } => container_cmd::shim_finish(&ctx, &id, pid, runtime, code, &finished, error),
        Command::Ps { all } => container_cmd::ps(&ctx, all),
        Command::Rm { containers, force } => container_cmd::rm(&ctx, &containers, force),
        Command::Inspect { containers } => container_cmd::inspect(&ctx, &containers),
        Command::Diff { container } => container_cmd::diff(&ctx, &container),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line a user can act on: the chain of causes, never a backtrace.
            let msg = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
            eprintln!("bulkhead: error: {}", msg.replace('\n', " "));
            if is_run {
                // Docker's statuses when the command itself cannot be run: 127 not found, 126
                // found but not executable; 125 for everything else of the engine's.
                let exec_failed = msg.contains("exec:") || msg.contains("exec failed");
                if msg.contains("not found in $PATH")
                    || msg.contains("executable not found")
                    || msg.contains("executable file not found")
                    || (exec_failed && msg.contains("no such file or directory"))
                {
                    ExitCode::from(127)
                } else if msg.contains("does not have correct permissions") || (exec_failed && msg.contains("permission denied")) {
                    ExitCode::from(126)
                } else {
                    ExitCode::from(container_cmd::ENGINE_ERROR)
                }
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
