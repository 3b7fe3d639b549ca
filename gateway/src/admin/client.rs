//! The command line's side of the admin channel: one HTTP request over the
//! instance's Unix socket.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminCallError {
    /// Nothing listens on the socket (the instance is not running, or its
    /// socket file is being bound again).
    #[error("instance is not running (no admin socket at {0})")]
    NotRunning(PathBuf),
    /// The socket (or the data directory holding it) is not this user's.
    #[error("permission denied on the admin socket {0}: run as the service user or root")]
    PermissionDenied(PathBuf),
    /// The instance refused the operation.
    #[error("{message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The channel broke.
    #[error("admin channel failed: {0}")]
    Channel(String),
}

/// A connection to a running instance.
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    /// Connects if the instance is running.
    pub async fn connect(socket: &Path) -> Result<AdminClient, AdminCallError> {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(_) => Ok(AdminClient {
                socket: socket.to_owned(),
            }),
            Err(e) => Err(connect_error(socket, &e)),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, AdminCallError> {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, AdminCallError> {
        self.call("POST", path, Some(body)).await
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminCallError> {
        let channel = |e: &dyn std::fmt::Display| AdminCallError::Channel(e.to_string());
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| connect_error(&self.socket, &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| channel(&e))?;
        tokio::spawn(conn);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "admin")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| channel(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| channel(&e))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| channel(&e))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| channel(&e))?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(AdminCallError::Refused {
                status,
                code: value["error"]["code"].as_str().unwrap_or("").to_owned(),
                message: value["error"]["message"]
                    .as_str()
                    .unwrap_or("the instance refused")
                    .to_owned(),
            })
        }
    }
}

/// A failed connection: a permission problem is said as such, never taken
/// for "not running".
fn connect_error(socket: &Path, e: &std::io::Error) -> AdminCallError {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        AdminCallError::PermissionDenied(socket.to_owned())
    } else {
        AdminCallError::NotRunning(socket.to_owned())
    }
}
