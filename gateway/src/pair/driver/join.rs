//! Pairing, both sides: the secondary joins with the primary's one-time
//! code (verifying the primary by the code's fingerprint and proving the
//! secret), the primary checks the attempt, and both pin each other.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::Driver;
use crate::pair::connection::HANDSHAKE_TIMEOUT;
use crate::pair::frame;
use crate::pair::identity::fingerprint_text;
use crate::pair::pairing::{JoinAnswer, JoinRequest, PairingCode, PeerRecord};
use crate::pair::trust;

impl Driver {
    pub(super) fn set_pairing_open(&mut self, open: bool) {
        self.trust
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .pairing_open = open;
        self.update_status();
    }

    /// The secondary's side of pairing: connect to the configured peer,
    /// verify it by the code's fingerprint, prove the secret, pin it.
    pub(super) async fn join(&mut self, code: PairingCode) -> Result<PeerRecord, String> {
        let role = self.core.role.snapshot().role;
        if role == crate::role::ServerRole::Primary {
            return Err("this server is the primary: pairing is joined from the secondary (`gateway pair join` there)".into());
        }
        if let Some(peer) = &self.peer {
            return Err(format!(
                "this server is already paired with {}; run `gateway pair unpair` first to pair with another server",
                peer.instance
            ));
        }
        if self.core.clock.now() > code.expires_at {
            return Err(
                "the pairing code expired; run `gateway pair init` on the primary for a new one"
                    .into(),
            );
        }
        let config = trust::client_config(&self.identity, code.primary_fingerprint)
            .map_err(|e| format!("TLS set-up failed: {e}"))?;
        let stream =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(&self.settings.peer))
                .await
                .map_err(|_| {
                    format!(
                        "the primary's pair port {} did not answer",
                        self.settings.peer
                    )
                })?
                .map_err(|e| {
                    format!(
                        "cannot reach the primary's pair port {}: {e}",
                        self.settings.peer
                    )
                })?;
        let name = rustls_pki_types::ServerName::try_from("pairing.pair.invalid")
            .expect("a valid name")
            .to_owned();
        let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsConnector::from(config).connect(name, stream))
            .await
            .map_err(|_| "the TLS handshake with the primary timed out".to_string())?
            .map_err(|e| format!(
                "the primary at {} could not be verified ({e}); check that the code is from that server and that [pair] peer points to it",
                self.settings.peer
            ))?;
        let request = JoinRequest {
            proof: code.proof(&self.identity.fingerprint),
            server: self.me,
            instance: self.core.name().to_owned(),
        };
        frame::write(&mut tls, &request)
            .await
            .map_err(|e| format!("sending the pairing request: {e}"))?;
        let answer: JoinAnswer = tokio::time::timeout(HANDSHAKE_TIMEOUT, frame::read(&mut tls))
            .await
            .map_err(|_| "the primary did not answer the pairing request".to_string())?
            .map_err(|e| {
                // TLS 1.3 reports the server's refusal of this server's
                // certificate on the first read, not in the handshake.
                if e.to_string().contains("AccessDenied") {
                    "the primary refused this server's certificate: no pairing code is open there \
                     (a code works once and for a few minutes); run `gateway pair init` on the primary for a new one"
                        .to_string()
                } else {
                    format!("reading the primary's answer: {e}")
                }
            })?
            .ok_or("the primary closed the connection without an answer")?;
        match answer {
            JoinAnswer::Refused { reason } => Err(format!("the primary refused: {reason}")),
            JoinAnswer::Accepted { server, instance } => {
                let record = PeerRecord {
                    server,
                    instance,
                    fingerprint: fingerprint_text(&code.primary_fingerprint),
                    paired_at: self.core.clock.now(),
                };
                self.pin(record.clone()).await?;
                Ok(record)
            }
        }
    }

    /// Keeps `record` as the paired peer and starts talking to it.
    pub(super) async fn pin(&mut self, record: PeerRecord) -> Result<(), String> {
        if record.server == self.me {
            return Err("the other end has this server's own id: it is this server".into());
        }
        let saved = record.clone();
        self.core
            .data
            .run(move |store| saved.save(store))
            .await
            .map_err(|e| format!("recording the peer: {e}"))?;
        tracing::warn!(peer = record.instance, server = %record.server, fingerprint = record.fingerprint, "paired");
        self.trust.write().unwrap_or_else(|p| p.into_inner()).pinned = record.fingerprint_bytes();
        self.peer = Some(record);
        self.rebuild_node().await;
        self.refresh_dial();
        self.update_status();
        Ok(())
    }

    /// The primary's side of pairing.
    pub(super) async fn on_join_attempt(
        &mut self,
        request: JoinRequest,
        fp: [u8; 32],
        from: SocketAddr,
    ) -> JoinAnswer {
        let now = self.core.clock.now();
        let checked = match self.open_code.as_mut() {
            None => Err(
                "no pairing code is open on the primary; run `gateway pair init` there".to_string(),
            ),
            Some(open) => open.accept(&request.proof, &fp, now),
        };
        if let Err(reason) = checked {
            tracing::warn!(%from, instance = request.instance, reason, "pairing refused");
            return JoinAnswer::Refused { reason };
        }
        // A code opens once, used or refused for being used.
        self.open_code = None;
        self.set_pairing_open(false);
        let record = PeerRecord {
            server: request.server,
            instance: request.instance,
            fingerprint: fingerprint_text(&fp),
            paired_at: now,
        };
        match self.pin(record).await {
            Ok(()) => JoinAnswer::Accepted {
                server: self.me,
                instance: self.core.name().to_owned(),
            },
            Err(reason) => JoinAnswer::Refused { reason },
        }
    }
}
