//! The `mfd-sim` command: registers a device, submits or inspects one job,
//! runs one device's agent with the panel web client, simulates many
//! devices, or benchmarks uploads. It only parses arguments
//! into validated settings and calls the library; it must not contain
//! protocol logic.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::{Args, Parser, Subcommand, ValueEnum};
use mfd_sim::{
    agent::{self, Agent, config::AgentSettings},
    client::GatewayClient,
    failover::FailoverSettings,
    load::{self, LoadBody, LoadConfig, LoadTarget},
    multipart::{Manifest, Page},
    page_source::{PageSource, make_pages},
    pages::ScanFormat,
    progress::ProgressStyle,
    servers::ServerList,
    sim::{
        self, DeviceCredentials, RetryPolicy, SimConfig, WaitPolicy,
        fleet::{self, EventSink, FleetConfig},
    },
    transport::{Timeouts, TlsTrust},
};
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "mfd-sim",
    version,
    about = "Device side of the scan gateway pair: one device, many simulated devices, or an upload benchmark."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Seconds allowed for name resolution, the TCP connection and the TLS
    /// handshake; short, so that a server whose packets silently disappear is
    /// left quickly.
    #[arg(long, global = true, default_value_t = 1.0, value_name = "SECS")]
    connect_timeout: f64,
    /// Seconds allowed for the answer after the request is sent (and for an
    /// upload to stall); long, it covers the durable acknowledgement of a large job.
    #[arg(
        long,
        global = true,
        default_value_t = 120.0,
        value_name = "SECS",
        alias = "request-timeout"
    )]
    response_timeout: f64,
    /// Seconds a request may hear nothing (no answer, no upload progress)
    /// before the device checks, on a new connection, that the server is
    /// still there; 0: never check, wait for --response-timeout.
    #[arg(long, global = true, default_value_t = 0.25, value_name = "SECS")]
    liveness_check_after: f64,
}

#[derive(Subcommand)]
enum Command {
    /// Registers a new device; prints its id and token (the token works once an admin approves it).
    Register {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The device's name.
        #[arg(long)]
        name: String,
        /// The device's serial number.
        #[arg(long)]
        serial: Option<String>,
    },
    /// Logs a user in, submits one job and prints the acknowledgement as JSON.
    Submit {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The device token.
        #[arg(long, env = "MFD_SIM_TOKEN", hide_env_values = true)]
        token: String,
        /// The user to log in as.
        #[arg(long)]
        user: String,
        /// The user's password.
        #[arg(long, env = "MFD_SIM_PASSWORD", hide_env_values = true)]
        password: String,
        /// The workflow the job goes to.
        #[arg(long)]
        workflow: String,
        /// Page files in order (TIFF, JPEG, PNG or PDF).
        #[arg(long = "page", value_name = "FILE", num_args = 1.., required = true)]
        pages: Vec<PathBuf>,
        /// The job id; repeat a submission with the same id to retry it safely.
        #[arg(long)]
        job_id: Option<Uuid>,
        /// Metadata entries as KEY=VALUE.
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
    },
    /// Prints one job's status as JSON.
    Status {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The device token.
        #[arg(long, env = "MFD_SIM_TOKEN", hide_env_values = true)]
        token: String,
        /// The job to show.
        job_id: Uuid,
    },
    /// Runs one device: serves the panel web client and sends its scans
    /// through the failover client and the outbox. Its timeouts come from
    /// the configuration file, not from the global options.
    Agent {
        /// The agent's TOML configuration (keys in docs/agent.md).
        #[arg(long, value_name = "FILE", env = "MFD_SIM_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Simulates many devices submitting jobs.
    Run(RunArgs),
    /// Benchmarks uploads against the gateway or a baseline web server.
    Load(LoadArgs),
}

#[derive(Args)]
struct GatewayArgs {
    /// The gateway's base URL, e.g. https://gw-a:8443.
    #[arg(long)]
    server: String,
    /// PEM file with the gateway's certificate or its CA (needed for https).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Gateway base URLs in order of preference; repeat for the secondary.
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    /// PEM file with the gateways' certificates or their CA (needed for https).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// JSON list of devices: [{"name": "...", "token": "..."}].
    #[arg(long, value_name = "FILE")]
    devices_file: PathBuf,
    /// The user who logs in at every device.
    #[arg(long)]
    user: String,
    /// That user's password.
    #[arg(long, env = "MFD_SIM_PASSWORD", hide_env_values = true)]
    password: String,
    /// The workflow every job goes to.
    #[arg(long)]
    workflow: String,
    /// Jobs in total, shared among the devices.
    #[arg(long)]
    jobs: u64,
    /// Pages per job.
    #[arg(long, default_value_t = 1)]
    pages: usize,
    /// Devices submitting at the same time (default: all of them).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Where pages come from.
    #[arg(long, value_enum, default_value_t = SourceArg::Text)]
    page_source: SourceArg,
    /// Size of each random page, e.g. 2000000, 500k, 20M, 20MiB.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "1M")]
    page_bytes: usize,
    /// File format of text pages.
    #[arg(long, value_enum, default_value_t = FormatArg::Png)]
    page_format: FormatArg,
    /// Resolution of text pages.
    #[arg(long, default_value_t = mfd_sim::pages::DEFAULT_DPI)]
    dpi: u32,
    /// Upload attempts per job before it counts as failed.
    #[arg(long, default_value_t = 6)]
    max_attempts: u32,
    /// Wait until the acknowledged jobs are done or failed (with --outbox:
    /// asked on every server, shown as the `delivered` bar).
    #[arg(long)]
    wait: bool,
    /// Seconds to wait with --wait.
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    wait_timeout: f64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Run every device the way a device agent does: through the failover
    /// client, with its own durable outbox in DIR/<device name> (jobs left
    /// there are sent first, with the same ids, by the next run).
    #[arg(long, value_name = "DIR")]
    outbox: Option<PathBuf>,
    /// With --outbox: write the summary and every job's id, server and
    /// outcome as JSON to FILE, with the reconciliation of the acknowledged
    /// jobs against every server's job list (and the --delivered folders).
    #[arg(long, value_name = "FILE", requires = "outbox")]
    report: Option<PathBuf>,
    /// With --outbox: a destination folder of the workflow, whose file names
    /// carry the job id; repeat for several. The reconciliation counts a job
    /// delivered when a file names it, and duplicated when two do.
    #[arg(long = "delivered", value_name = "DIR", requires = "outbox")]
    delivered: Vec<PathBuf>,
    /// With --outbox: append every acknowledgement and client event
    /// (failover, failback, certificate) as one JSON object per line to FILE
    /// as it happens.
    #[arg(long, value_name = "FILE", requires = "outbox")]
    events: Option<PathBuf>,
    /// With --outbox: jobs one person scans before logging out (the next
    /// person logs in for the next batch); 0: one session for all.
    #[arg(long, default_value_t = 0, value_name = "N")]
    jobs_per_session: u64,
    /// With --outbox: milliseconds between two scans of one person.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    scan_interval_ms: u64,
    /// With --outbox: milliseconds between failback probes.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    failback_probe_interval_ms: u64,
    /// With --outbox: consecutive good health answers before failing back.
    #[arg(long, default_value_t = 3)]
    failback_good_probes: u32,
    /// With --outbox: seconds of inactivity after which a session counts as ended.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    session_idle_limit_secs: u64,
}

#[derive(Args)]
struct LoadArgs {
    /// Base URL: the gateway, or a baseline location such as an nginx WebDAV directory.
    #[arg(long)]
    url: String,
    /// PEM file with the server's certificate or its CA (needed for https).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Extra header on every request, as 'Name: value'.
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = load::parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The HTTP method of every request.
    #[arg(long, default_value = "PUT")]
    method: http::Method,
    /// Page size, e.g. 2000000, 500k, 20M, 20MiB.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    size: usize,
    /// Requests in total.
    #[arg(long)]
    requests: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Send job uploads to URL/api/v1/jobs/<uuid> as this device, session and workflow.
    #[arg(
        long,
        value_name = "TOKEN,SESSION,WORKFLOW",
        env = "MFD_SIM_MULTIPART_GATEWAY",
        hide_env_values = true,
        conflicts_with = "multipart_body"
    )]
    multipart_gateway: Option<String>,
    /// Send the identical multipart job body (for WORKFLOW) to URL/<uuid>, for the baseline run.
    #[arg(long, value_name = "WORKFLOW")]
    multipart_body: Option<String>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum SourceArg {
    /// Rendered text with known content.
    Text,
    /// Exact-size PNGs of noise.
    Random,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// Lossless PNG.
    Png,
    /// Baseline JPEG.
    Jpeg,
    /// LZW-compressed TIFF.
    Tiff,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MFD_SIM_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mfd-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<()> {
    let timeouts = Timeouts {
        connect: seconds(cli.connect_timeout, "--connect-timeout")?,
        response: seconds(cli.response_timeout, "--response-timeout")?,
        liveness_check_after: if cli.liveness_check_after == 0.0 {
            None
        } else {
            Some(seconds(cli.liveness_check_after, "--liveness-check-after")?)
        },
    };
    match cli.command {
        Command::Register {
            gateway,
            name,
            serial,
        } => {
            let client = gateway.client(timeouts)?;
            let r = client
                .register(&name, serial.as_deref())
                .await
                .context("registration failed")?;
            println!(
                "device_id: {}\ntoken: {}\nstatus: {}",
                r.device_id, r.token, r.status
            );
            if r.status == "pending" {
                eprintln!(
                    "the token works once an admin approves the device: gateway device approve {}",
                    r.device_id
                );
            }
        }
        Command::Submit {
            gateway,
            token,
            user,
            password,
            workflow,
            pages,
            job_id,
            metadata,
        } => {
            let client = gateway.client(timeouts)?.with_token(&token)?;
            let mut files = Vec::with_capacity(pages.len());
            for path in &pages {
                files.push(Page::from_file(path).await?);
            }
            let mut manifest = Manifest::new(workflow, files.len());
            for entry in &metadata {
                let (k, v) = entry
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--meta `{entry}` is not KEY=VALUE"))?;
                manifest = manifest.with_metadata(k, v);
            }
            let job_id = job_id.unwrap_or_else(Uuid::new_v4);
            let session = client
                .login(&user, &password)
                .await
                .context("login failed")?;
            let result = client
                .submit_job(job_id, &session.session, &manifest, &files)
                .await;
            // The session is ended whatever happened to the upload, so the
            // device is free to fail back (R3).
            if let Err(e) = client.logout(&session.session).await {
                tracing::warn!(error = %e, "logout failed");
            }
            let submitted = result.with_context(|| format!("job {job_id} was not acknowledged; repeat with --job-id {job_id} to retry it safely"))?;
            eprintln!(
                "job {job_id}: {} by {}",
                if submitted.replayed {
                    "already acknowledged (replay)"
                } else {
                    "acknowledged"
                },
                submitted.ack.accepted_by
            );
            println!("{}", serde_json::to_string_pretty(&submitted.ack)?);
        }
        Command::Status {
            gateway,
            token,
            job_id,
        } => {
            let client = gateway.client(timeouts)?.with_token(&token)?;
            let status = client
                .job(job_id)
                .await
                .with_context(|| format!("cannot get job {job_id}"))?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        Command::Agent { config } => run_agent(&config).await?,
        Command::Run(args) => run_sim(args, timeouts).await?,
        Command::Load(args) => run_load(args, timeouts).await?,
    }
    Ok(())
}

impl GatewayArgs {
    fn client(&self, timeouts: Timeouts) -> Result<GatewayClient> {
        let trust = load_trust(self.ca.as_deref())?;
        Ok(GatewayClient::new(&self.server, trust.as_ref(), timeouts)?)
    }
}

fn load_trust(ca: Option<&Path>) -> Result<Option<TlsTrust>> {
    ca.map(TlsTrust::from_pem_file)
        .transpose()
        .map_err(Into::into)
}

/// Starts the agent, binds the panel's address, prints the panel's URL as
/// the first line on stdout (so a caller that asked for port 0 learns the
/// port) and serves until SIGINT or SIGTERM.
async fn run_agent(config: &Path) -> Result<()> {
    let settings = AgentSettings::load(config)?;
    let listen = settings.listen;
    let agent = Agent::start(settings)
        .await
        .context("the device agent cannot start")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {listen} for the panel (listen in {})",
                config.display()
            )
        })?;
    let addr = listener.local_addr()?;
    println!("panel: http://{addr}/");
    std::io::Write::flush(&mut std::io::stdout())?;
    tracing::info!(%addr, "panel listening");
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    agent::run(agent, listener, shutdown).await?;
    Ok(())
}

async fn run_sim(args: RunArgs, timeouts: Timeouts) -> Result<()> {
    ensure!(args.max_attempts >= 1, "--max-attempts must be at least 1");
    let trust = load_trust(args.ca.as_deref())?;
    let clients = args
        .servers
        .iter()
        .map(|s| GatewayClient::new(s, trust.as_ref(), timeouts))
        .collect::<Result<Vec<_>, _>>()?;
    let servers = ServerList::new(clients)?;
    let text = std::fs::read(&args.devices_file).with_context(|| {
        format!(
            "cannot read the devices file {}",
            args.devices_file.display()
        )
    })?;
    let devices: Vec<DeviceCredentials> = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a JSON list of {{\"name\", \"token\"}} objects",
            args.devices_file.display()
        )
    })?;
    let source = match args.page_source {
        SourceArg::Text => PageSource::Text {
            format: match args.page_format {
                FormatArg::Png => ScanFormat::Png,
                FormatArg::Jpeg => ScanFormat::Jpeg,
                FormatArg::Tiff => ScanFormat::Tiff,
            },
            dpi: args.dpi,
        },
        SourceArg::Random => PageSource::Random {
            bytes: args.page_bytes,
        },
    };
    let count = args.pages;
    let pages = tokio::task::spawn_blocking(move || make_pages(source, count)).await??;
    if let Some(outbox_root) = args.outbox.clone() {
        return run_fleet(args, servers, devices, pages, outbox_root).await;
    }
    let wait = args
        .wait
        .then(|| -> Result<WaitPolicy> {
            Ok(WaitPolicy {
                poll_interval: Duration::from_millis(500),
                timeout: seconds(args.wait_timeout, "--wait-timeout")?,
            })
        })
        .transpose()?;
    let config = SimConfig {
        servers,
        concurrency: args.concurrency.unwrap_or(devices.len()),
        devices,
        user: args.user,
        password: args.password,
        workflow: args.workflow,
        jobs: args.jobs,
        pages,
        retry: RetryPolicy {
            max_attempts: args.max_attempts,
            ..RetryPolicy::default()
        },
        wait,
    };
    let summary = sim::run(config, style(args.quiet)).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{summary}");
    }
    if !summary.all_succeeded() {
        bail!(
            "{} of {} jobs were acknowledged{}",
            summary.acknowledged,
            summary.jobs,
            summary
                .wait
                .as_ref()
                .map(|w| format!(", {} finished as done", w.done))
                .unwrap_or_default()
        );
    }
    Ok(())
}

async fn run_fleet(
    args: RunArgs,
    servers: ServerList,
    devices: Vec<DeviceCredentials>,
    pages: Vec<Page>,
    outbox_root: PathBuf,
) -> Result<()> {
    ensure!(
        args.failback_good_probes >= 1,
        "--failback-good-probes must be at least 1"
    );
    let events = match &args.events {
        Some(path) => Some(event_file(path)?),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone())?;
    let config = FleetConfig {
        servers,
        devices,
        user: args.user,
        password: args.password,
        workflow: args.workflow,
        jobs: args.jobs,
        pages,
        outbox_root,
        failover: FailoverSettings {
            failback_probe_interval: Duration::from_millis(args.failback_probe_interval_ms.max(1)),
            failback_good_probes: args.failback_good_probes,
            session_idle_limit: Duration::from_secs(args.session_idle_limit_secs),
            ..FailoverSettings::default()
        },
        replay_rounds: args.max_attempts,
        retry_pause: Duration::from_millis(500),
        jobs_per_session: args.jobs_per_session,
        scan_interval: Duration::from_millis(args.scan_interval_ms),
        wait: args
            .wait
            .then(|| -> Result<WaitPolicy> {
                Ok(WaitPolicy {
                    poll_interval: Duration::from_millis(500),
                    timeout: seconds(args.wait_timeout, "--wait-timeout")?,
                })
            })
            .transpose()?,
        reconcile: args.report.is_some() || !args.delivered.is_empty(),
        delivered_dirs: args.delivered.clone(),
        events,
        stop,
    };
    let summary = fleet::run_fleet(config, style(args.quiet)).await?;
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("cannot write the report {}", path.display()))?;
    }
    if args.json {
        let mut value = serde_json::to_value(&summary)?;
        if let Some(map) = value.as_object_mut() {
            map.remove("job_reports");
            map.remove("failover_ms");
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{summary}");
    }
    if !summary.all_acknowledged() {
        bail!(
            "{} of {} jobs were acknowledged; {} rejected, {} still queued in the outboxes",
            summary.jobs_acknowledged,
            summary.jobs_asked,
            summary.jobs_rejected,
            summary.jobs_queued
        );
    }
    if let Some(r) = &summary.reconciliation
        && (r.jobs_lost > 0 || r.jobs_duplicated > 0)
    {
        bail!(
            "reconciliation: {} acknowledged jobs lost (on no server, or never delivered), {} duplicated",
            r.jobs_lost,
            r.jobs_duplicated
        );
    }
    Ok(())
}

/// An event sink appending one JSON object per line to `path`, each line
/// written whole and flushed at once, so a reader following the file sees
/// events as they happen.
fn event_file(path: &Path) -> Result<EventSink> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the events file {}", path.display()))?;
    let file = std::sync::Mutex::new(file);
    Ok(EventSink::new(move |event| {
        let mut line = event.to_string();
        line.push('\n');
        let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = std::io::Write::write_all(&mut *file, line.as_bytes()) {
            tracing::warn!(error = %e, "cannot write to the events file");
        }
    }))
}

/// SIGINT (Ctrl-C) or SIGTERM stops the scanning: what is queued is still
/// delivered and the summary printed. A second signal ends the process.
fn stop_on_signals(stop: Arc<AtomicBool>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::spawn(async move {
        for round in 0..2 {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if round == 0 {
                eprintln!(
                    "mfd-sim: stopping the scans; delivering what is queued (signal again to quit)"
                );
                stop.store(true, Ordering::Relaxed);
            } else {
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

async fn run_load(args: LoadArgs, timeouts: Timeouts) -> Result<()> {
    ensure!(args.requests >= 1, "--requests must be at least 1");
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let (target, body) = match (&args.multipart_gateway, &args.multipart_body) {
        (Some(spec), _) => {
            let parts: Vec<&str> = spec.splitn(3, ',').collect();
            let [token, session, workflow] = parts[..] else {
                bail!("--multipart-gateway must be TOKEN,SESSION,WORKFLOW");
            };
            (
                LoadTarget::gateway(token, session)?,
                LoadBody::job(workflow, args.size)?,
            )
        }
        (None, Some(workflow)) => (LoadTarget::Plain, LoadBody::job(workflow, args.size)?),
        (None, None) => (LoadTarget::Plain, LoadBody::page(args.size)?),
    };
    let config = LoadConfig {
        url: args.url,
        trust: load_trust(args.ca.as_deref())?,
        timeouts,
        method: args.method,
        headers: args.headers,
        target,
        body,
        requests: args.requests,
        concurrency: args.concurrency,
    };
    let summary = load::run(config, style(args.quiet)).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{summary}");
    }
    ensure!(
        summary.failed == 0,
        "{} of {} requests failed",
        summary.failed,
        summary.requests
    );
    Ok(())
}

fn style(quiet: bool) -> ProgressStyle {
    if quiet {
        ProgressStyle::Off
    } else {
        ProgressStyle::for_stderr()
    }
}

fn seconds(value: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow!("{flag} must be a positive number of seconds, not {value}"))
}

/// Parses `2000000`, `500k`, `20M`, `1G` (powers of 1000) or `64KiB`,
/// `20MiB`, `1GiB` (powers of 1024); a trailing `B` is optional.
fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 20M or 1500000"))?;
    let factor: usize = match unit.trim().to_ascii_lowercase().trim_end_matches('b') {
        "" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit in `{text}`; use k, M, G, KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1500000"), Ok(1_500_000));
        assert_eq!(parse_size("500k"), Ok(500_000));
        assert_eq!(parse_size("20M"), Ok(20_000_000));
        assert_eq!(parse_size("20MB"), Ok(20_000_000));
        assert_eq!(parse_size("20MiB"), Ok(20 << 20));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert!(parse_size("twenty").is_err());
        assert!(parse_size("20X").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
