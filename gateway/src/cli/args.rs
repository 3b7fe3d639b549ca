//! The command line's shape: every command, subcommand and flag of
//! `gateway`, as clap parses them. No behaviour lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::security::passwords;

#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    version,
    about = "Scan job gateway for multifunction devices, run as a licensed primary/secondary pair"
)]
pub struct Cli {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub command: Command,
}

/// Which instance a command is about.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Configuration file (TOML). Without it, the embedded defaults are used.
    #[arg(long, global = true, env = "SCANGW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Instance name, when the file defines several.
    #[arg(long, global = true, env = "SCANGW_INSTANCE")]
    pub instance: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the instance until SIGTERM or Ctrl-C.
    Serve,
    /// Show role, epoch, license, services, queue and version.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Activate, deactivate or show the license.
    License {
        #[command(subcommand)]
        action: LicenseAction,
    },
    /// Turn maintenance mode on or off.
    Maintenance { state: OnOff },
    /// Pause or resume the job pipeline of a running instance (intake goes on).
    Pipeline { action: PauseResume },
    /// Start, stop or show the web or data service; install or remove the systemd unit.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// The shared configuration as one TOML document (secrets as digests).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Database integrity check and schema listing.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// Rate this machine: jobs/s and MB/s into a spool.
    Rate {
        #[arg(long, default_value_t = 50)]
        jobs: u32,
        /// Size of each job, e.g. 2MiB.
        #[arg(long, default_value = "2MiB")]
        size: String,
        #[arg(long)]
        json: bool,
    },
    /// Register, approve, revoke and list devices.
    Device {
        #[command(subcommand)]
        action: DeviceAction,
    },
    /// List dead-lettered jobs and retry them.
    Job {
        #[command(subcommand)]
        action: JobAction,
    },
    /// Pair this server with the other one of the pair, show or undo it.
    Pair {
        #[command(subcommand)]
        action: PairAction,
    },
    /// Password hashes for the configuration file.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Check the configuration file and workflows without starting anything.
    CheckConfig,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PauseResume {
    Pause,
    Resume,
}

#[derive(Subcommand, Debug)]
pub enum LicenseAction {
    /// Activate a license key (03 primary, 04 secondary).
    Activate {
        #[command(flatten)]
        key: KeyInput,
    },
    /// Release the active license (the first step of a two-step promotion).
    Deactivate,
    /// Promote this secondary: release its 04 key and activate an 03 key
    /// in one step (it never stops taking jobs in between).
    Promote {
        #[command(flatten)]
        key: KeyInput,
    },
    /// Show the active license.
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Write the shared configuration as the store holds it.
    Export {
        /// Write to this file (private to its owner) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Apply a file in the shape `config export` writes, on the primary, as
    /// one new version (a digest where a secret stands keeps that secret).
    Apply {
        /// The file (`-` for standard input).
        file: PathBuf,
        /// Validate and print the diff only.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PairAction {
    /// On the primary: print a one-time pairing code (valid a few minutes).
    Init,
    /// On the secondary: pair with the primary the code names.
    Join {
        #[command(flatten)]
        code: CodeInput,
    },
    /// Show the peer, its certificate fingerprint and the link's state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The conflict report: configuration changes a replaced primary made
    /// that the new primary's configuration does not hold.
    Conflicts {
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<ConflictsAction>,
    },
    /// The history of jobs across the pair: takeovers, handovers, jobs the
    /// peer took over, possible duplicate deliveries and second copies a
    /// destination refused, newest first.
    Events {
        #[arg(long)]
        json: bool,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Forget the paired peer.
    Unpair {
        /// Unpair even if the peer holds work of this server (none is
        /// replicated over the link yet).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConflictsAction {
    /// Re-apply one conflict on this primary, after review, as a new change.
    Apply {
        /// The conflict's id (or an unambiguous prefix).
        id: String,
    },
}

/// Where a pairing code comes from: the argument, a file, or standard input.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct CodeInput {
    /// The code, or `-` to read it from standard input.
    pub code: Option<String>,
    /// Read the code from this file.
    #[arg(long)]
    pub code_file: Option<PathBuf>,
}

/// Where a license key comes from: the argument, a file, or standard input
/// (`-`), so that keys need not appear in the process list.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct KeyInput {
    /// The key itself, or `-` to read it from standard input.
    pub key: Option<String>,
    /// Read the key from this file.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ServiceName {
    Web,
    Data,
}

#[derive(Subcommand, Debug)]
pub enum ServiceAction {
    Start {
        service: ServiceName,
    },
    Stop {
        service: ServiceName,
    },
    Status {
        service: ServiceName,
    },
    /// Write a systemd unit for this instance.
    Install {
        /// Directory for the unit (default /etc/systemd/system when systemd runs).
        #[arg(long)]
        unit_dir: Option<PathBuf>,
        /// User the service runs as.
        #[arg(long)]
        user: Option<String>,
    },
    /// Remove the systemd unit of this instance.
    Uninstall {
        #[arg(long)]
        unit_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DbAction {
    /// SQLite integrity check plus spool consistency.
    Check,
    /// Tables and columns.
    Schema {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeviceAction {
    /// Pre-provision an approved device and print its token.
    Add {
        name: String,
        #[arg(long)]
        serial: Option<String>,
    },
    /// Approve a registered device (by id or name).
    Approve { device: String },
    /// Revoke a device (by id or name).
    Revoke { device: String },
    /// List devices.
    List,
}

#[derive(Subcommand, Debug)]
pub enum JobAction {
    /// List jobs in a state (default: failed, the dead-letter list).
    List {
        #[arg(long, default_value = "failed")]
        state: String,
    },
    /// Send a failed job back to the pipeline.
    Retry { job: String },
}

#[derive(Subcommand, Debug)]
pub enum UserAction {
    /// Read a password from stdin and print its hash for `[users.NAME] password_hash`.
    HashPassword {
        #[arg(long, default_value_t = passwords::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
}
