//! Owns the device agent: one MFD's process, which serves the panel web
//! client on the device's local address and sends everything the panel
//! asks for through the [`FailoverClient`] (so the panel keeps working when
//! the primary dies, and the person stays logged in) and every scan through
//! the durable [`Outbox`] (so a scan is never lost between the press of
//! Scan and a server's acknowledgement). It must not decide failover or
//! failback (the failover client does), validate index fields for the
//! gateway (the gateway and the page do, with the same rules), or know
//! anything of the gateway's internals.
//!
//! Parts: [`config`] (the file and `MFD_SIM_AGENT_*` variables, validated
//! once), [`scan`] (where pages come from), [`server`] (the panel's HTTP
//! server and its JSON API), and here the [`Agent`] value they share and the
//! delivery task that empties the outbox.

pub mod config;
pub mod scan;
pub mod server;

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    classify::FailoverCause,
    client::GatewayClient,
    error::ClientError,
    failover::{Delivery, EventKind, FailoverClient, FailoverSettings, RequestError},
    outbox::{Outbox, OutboxError, OutboxLimits, Rejection},
    servers::ServerList,
};
use config::AgentSettings;
use scan::{ScanError, Scanner};

/// How long the panel shows the notice of a failover or failback.
pub const NOTICE_SECS: i64 = 60;

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A gateway client could not be built (a bad URL, say).
    #[error("gateway {url}: {source}")]
    Gateway {
        /// The configured URL.
        url: String,
        /// What is wrong.
        source: ClientError,
    },
    /// The outbox cannot be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The scanner cannot produce pages.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The panel's server failed.
    #[error("the panel's web server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// What became of a scan, as far as this agent knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sending {
    /// In the outbox; `None` until an attempt failed, then why, for the person.
    Waiting(Option<String>),
    /// A server acknowledged it.
    Acknowledged {
        /// That server's position in the list.
        server_index: usize,
        /// The instance that made it durable.
        accepted_by: String,
    },
    /// A server refused it for good; it is in the outbox's `rejected/`.
    Rejected(Rejection),
}

/// The failover or failback the panel tells the person about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Counts every failover and failback so far; a new one has a higher number.
    pub seq: usize,
    /// `failover` or `failback`.
    pub kind: &'static str,
    /// When (device clock).
    pub at: DateTime<Utc>,
    /// One sentence for the person at the panel.
    pub text: String,
}

/// The state the panel's server and the delivery task share.
pub struct Agent {
    failover: FailoverClient,
    outbox: Outbox,
    scanner: Scanner,
    server_urls: Vec<String>,
    user: Mutex<Option<String>>,
    sending: Mutex<BTreeMap<Uuid, Sending>>,
    deliver_now: tokio::sync::Notify,
    settings: AgentSettings,
}

impl Agent {
    /// Builds the failover client, opens the outbox and prepares the
    /// scanner. Jobs left in the outbox by an earlier run are sent first by
    /// the delivery task, with their ids. Call inside a Tokio runtime.
    pub async fn start(settings: AgentSettings) -> Result<Arc<Agent>, AgentError> {
        let mut clients = Vec::with_capacity(settings.gateways.len());
        for g in &settings.gateways {
            let gateway_error = |source| AgentError::Gateway {
                url: g.url.clone(),
                source,
            };
            let client = GatewayClient::new(&g.url, g.trust.as_ref(), settings.timeouts)
                .and_then(|c| c.with_token(&settings.token))
                .map_err(gateway_error)?;
            clients.push(client);
        }
        let server_urls = clients.iter().map(|c| c.base_url().to_owned()).collect();
        let servers = ServerList::new(clients).expect("the settings hold at least one gateway");
        let failover = FailoverClient::new(
            servers,
            FailoverSettings {
                failback_probe_interval: settings.failback_probe_interval,
                failback_good_probes: settings.failback_good_probes,
                session_idle_limit: settings.session_idle_limit,
                ..FailoverSettings::default()
            },
        );
        let (dir, scan_setting) = (settings.outbox_dir.clone(), settings.scan.clone());
        let (outbox, scanner) = tokio::task::spawn_blocking(move || {
            let outbox = Outbox::open(dir, OutboxLimits::default())?;
            let scanner = Scanner::new(&scan_setting)?;
            Ok::<_, AgentError>((outbox, scanner))
        })
        .await
        .expect("start-up task panicked")?;
        let waiting = {
            let outbox = outbox.clone();
            tokio::task::spawn_blocking(move || outbox.pending())
                .await
                .expect("outbox read panicked")?
        };
        let sending = waiting
            .iter()
            .map(|j| (j.job_id, Sending::Waiting(None)))
            .collect();
        let agent = Arc::new(Agent {
            failover,
            outbox,
            scanner,
            server_urls,
            user: Mutex::new(None),
            sending: Mutex::new(sending),
            deliver_now: tokio::sync::Notify::new(),
            settings,
        });
        tokio::spawn(delivery_loop(Arc::downgrade(&agent)));
        Ok(agent)
    }

    /// The settings the agent runs with.
    pub fn settings(&self) -> &AgentSettings {
        &self.settings
    }

    /// The failover client every request goes through.
    pub fn failover(&self) -> &FailoverClient {
        &self.failover
    }

    /// The outbox every scan goes through.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The person logged in at the panel, while the session is active.
    pub fn user(&self) -> Option<String> {
        let mut user = self.user.lock().unwrap_or_else(|p| p.into_inner());
        if !self.failover.session_active() {
            *user = None;
        }
        user.clone()
    }

    fn set_user(&self, user: Option<String>) {
        *self.user.lock().unwrap_or_else(|p| p.into_inner()) = user;
    }

    /// What the agent knows of a scan it kept; `None` for a job it never had.
    pub fn sending(&self, job_id: Uuid) -> Option<Sending> {
        self.sending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&job_id)
            .cloned()
    }

    fn set_sending(&self, job_id: Uuid, state: Sending) {
        self.sending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job_id, state);
    }

    /// What the panel calls the server at `index`: `primary` for the first
    /// of the list, `secondary` for the second, `server N` further down.
    pub fn server_role(index: usize) -> String {
        match index {
            0 => "primary".to_owned(),
            1 => "secondary".to_owned(),
            n => format!("server {}", n + 1),
        }
    }

    /// The base URL of the server at `index`.
    pub fn server_url(&self, index: usize) -> &str {
        self.server_urls.get(index).map_or("", String::as_str)
    }

    /// The newest failover or failback, worded for the person, while it is
    /// recent (within [`NOTICE_SECS`]).
    pub fn notice(&self, now: DateTime<Utc>) -> Option<Notice> {
        let events = self.failover.events();
        let moves: Vec<_> = events
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EventKind::Failover { .. } | EventKind::Failback { .. }
                )
            })
            .collect();
        let last = moves.last()?;
        if (now - last.at).num_seconds() >= NOTICE_SECS {
            return None;
        }
        let current = self.failover.current_index();
        let index_of = |url: &str| self.server_urls.iter().position(|u| u == url);
        let text = match &last.kind {
            EventKind::Failover { cause, .. } => {
                let left = index_of(&last.server).map_or_else(
                    || "a server".to_owned(),
                    |i| format!("the {} server", Self::server_role(i)),
                );
                let why = cause_in_words(*cause);
                if index_of(&last.server) == Some(current) {
                    format!(
                        "{} {why}; no other server answered, so scans wait on the device until one does.",
                        capitalise(&left)
                    )
                } else {
                    format!(
                        "{} {why}: the panel switched to the {} server. You are still logged in.",
                        capitalise(&left),
                        Self::server_role(current)
                    )
                }
            }
            EventKind::Failback { .. } => format!(
                "The {} server is back: the panel uses it again.",
                Self::server_role(current)
            ),
            EventKind::CertificateRejected { .. } => unreachable!("filtered out above"),
        };
        Some(Notice {
            seq: moves.len(),
            kind: last.kind.name(),
            at: last.at,
            text,
        })
    }

    /// Logs the person in through the failover client.
    pub async fn login(&self, user: &str, password: &str) -> Result<(), RequestError> {
        self.failover.login(user, password).await?;
        self.set_user(Some(user.to_owned()));
        Ok(())
    }

    /// Ends the person's session on the device, and on the server when one
    /// answers; the error says why the server could not be told.
    pub async fn logout(&self) -> Result<(), RequestError> {
        self.set_user(None);
        self.failover.logout().await
    }

    /// Scans the pages and keeps the job durably in the outbox under the
    /// person's session, then wakes the delivery task. Returns the job id.
    pub async fn scan(
        &self,
        workflow: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<Uuid, ScanRefused> {
        let pages = self.scanner.scan().await?;
        let mut manifest = crate::multipart::Manifest::new(workflow, pages.len());
        manifest.metadata = metadata;
        let job = self.failover.scan(&self.outbox, &manifest, pages).await?;
        self.set_sending(job.job_id, Sending::Waiting(None));
        self.deliver_now.notify_one();
        Ok(job.job_id)
    }

    /// Sends what waits in the outbox, oldest first; stops at the first job
    /// no server took (the rest would meet the same).
    async fn deliver_waiting(&self) {
        let outbox = self.outbox.clone();
        let waiting = match tokio::task::spawn_blocking(move || outbox.pending()).await {
            Ok(Ok(jobs)) => jobs,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the outbox");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox read panicked");
                return;
            }
        };
        for job in waiting {
            match self.failover.deliver(&self.outbox, &job).await {
                Ok(Delivery::Acknowledged(d)) => {
                    tracing::info!(job = %job.job_id, server = d.server, "job acknowledged");
                    self.set_sending(
                        job.job_id,
                        Sending::Acknowledged {
                            server_index: d.server_index,
                            accepted_by: d.ack.accepted_by,
                        },
                    );
                }
                Ok(Delivery::Rejected(r)) => {
                    tracing::warn!(job = %job.job_id, code = ?r.code, message = r.message, "job refused");
                    self.set_sending(job.job_id, Sending::Rejected(r));
                }
                Err(e) => {
                    tracing::warn!(job = %job.job_id, error = %e, "job not sent; it stays in the outbox");
                    self.set_sending(job.job_id, Sending::Waiting(Some(e.person_message())));
                    return;
                }
            }
        }
    }
}

/// A scan the agent could not keep.
#[derive(Debug, thiserror::Error)]
pub enum ScanRefused {
    /// The scanner produced no pages.
    #[error(transparent)]
    Scanner(#[from] ScanError),
    /// No session, or the outbox could not keep it.
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// The four causes of R1 in the panel's words: what happened to the server.
pub fn cause_in_words(cause: FailoverCause) -> &'static str {
    match cause {
        FailoverCause::Network => "could not be reached",
        FailoverCause::WebServiceDown => "is not answering (its web service is down)",
        FailoverCause::DataServiceDown => "cannot store jobs (its data service is down)",
        FailoverCause::Maintenance => "is in maintenance",
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_uppercase().collect::<String>() + chars.as_str()
    })
}

/// Sends the outbox's jobs whenever a scan wakes it, and again every
/// `delivery_retry_interval` while any wait; ends with the agent.
async fn delivery_loop(agent: std::sync::Weak<Agent>) {
    loop {
        let Some(a) = agent.upgrade() else {
            return;
        };
        a.deliver_waiting().await;
        // The agent is held while waiting, so it ends at most one interval
        // after the last other holder let go.
        let interval = a.settings.delivery_retry_interval;
        let _ = tokio::time::timeout(interval, a.deliver_now.notified()).await;
    }
}

/// Runs the panel's server on `listener` until `shutdown` completes.
pub async fn run(
    agent: Arc<Agent>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    axum::serve(listener, server::app(agent))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(AgentError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_read_as_sentences() {
        assert_eq!(
            capitalise(&format!(
                "the primary server {}",
                cause_in_words(FailoverCause::Network)
            )),
            "The primary server could not be reached"
        );
        assert_eq!(Agent::server_role(0), "primary");
        assert_eq!(Agent::server_role(1), "secondary");
        assert_eq!(Agent::server_role(2), "server 3");
    }
}
