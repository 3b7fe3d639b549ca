//! Owns the ordered list of gateway addresses of R13 and the walk down it to
//! the first server that accepts jobs; it must not keep global state, retry
//! jobs, or remember a choice between calls (the failover client above it
//! decides when to walk again).

use std::fmt;

use crate::{
    api::Health,
    classify::{Classification, classify_error, classify_health},
    client::GatewayClient,
    error::ClientError,
};

/// Gateway addresses in order of preference: the primary first.
#[derive(Debug, Clone)]
pub struct ServerList {
    servers: Vec<GatewayClient>,
}

/// A server passed over by [`ServerList::first_accepting`], and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Its position in the list.
    pub index: usize,
    /// Its base URL.
    pub server: String,
    /// The classified cause; [`Classification::NotFailover`] when the answer
    /// fits none of the four causes (something else answers at that address).
    pub classification: Classification,
    /// What was seen, for the log.
    pub detail: String,
}

/// The server that accepts jobs and the ones passed over to reach it.
#[derive(Debug, Clone)]
pub struct Accepting<'a> {
    /// Its position in the list.
    pub index: usize,
    /// Its client.
    pub client: &'a GatewayClient,
    /// Its health answer.
    pub health: Health,
    /// The servers before it, in order.
    pub skipped: Vec<Skipped>,
}

/// No server in the list accepts jobs right now.
#[derive(Debug, Clone, thiserror::Error)]
pub struct NoServerAccepting {
    /// Every server, in order, with what was seen.
    pub skipped: Vec<Skipped>,
}

impl fmt::Display for NoServerAccepting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no server accepts jobs")?;
        for s in &self.skipped {
            let cause = s
                .classification
                .cause()
                .map_or("not a gateway answer", |c| c.as_str());
            write!(f, "; {} ({cause}): {}", s.server, s.detail)?;
        }
        Ok(())
    }
}

/// A server list needs at least one server.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the server list is empty; give at least one gateway address")]
pub struct EmptyServerList;

impl ServerList {
    /// A list in order of preference.
    pub fn new(servers: Vec<GatewayClient>) -> Result<Self, EmptyServerList> {
        if servers.is_empty() {
            return Err(EmptyServerList);
        }
        Ok(ServerList { servers })
    }

    /// The same servers, acting as the device with this token.
    pub fn with_token(&self, token: &str) -> Result<Self, ClientError> {
        let servers = self
            .servers
            .iter()
            .map(|s| s.with_token(token))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ServerList { servers })
    }

    /// How many servers there are.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Never true: a list is not built empty.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The server at a position.
    pub fn get(&self, index: usize) -> Option<&GatewayClient> {
        self.servers.get(index)
    }

    /// The servers in order.
    pub fn iter(&self) -> impl Iterator<Item = &GatewayClient> {
        self.servers.iter()
    }

    /// Asks each server's `/health` in order and returns the first that says
    /// `accepting: true`, with the classified cause for every server passed
    /// over. The servers are asked one after another, not in parallel,
    /// because the order is the preference: a later server must not win just
    /// by answering faster. Each question is bounded by the client's connect
    /// and request timeouts, so the walk is bounded by their sum over the list.
    pub async fn first_accepting(&self) -> Result<Accepting<'_>, NoServerAccepting> {
        let mut skipped = Vec::new();
        for (index, client) in self.servers.iter().enumerate() {
            let (classification, detail) = match client.health().await {
                Ok(health) => match classify_health(&health) {
                    Classification::NotFailover => {
                        return Ok(Accepting {
                            index,
                            client,
                            health,
                            skipped,
                        });
                    }
                    other => (
                        other,
                        format!(
                            "{} is not accepting jobs (reason: {})",
                            health.instance,
                            health.reason.as_deref().unwrap_or("none given")
                        ),
                    ),
                },
                Err(e) => (classify_error(&e), e.to_string()),
            };
            tracing::info!(server = client.base_url(), ?classification, %detail, "skipping server");
            skipped.push(Skipped {
                index,
                server: client.base_url().to_owned(),
                classification,
                detail,
            });
        }
        Err(NoServerAccepting { skipped })
    }
}
