//! Secrets and credentials: password hashes, device tokens and signed user
//! sessions. Nothing here logs a secret; `Debug` output is redacted.

pub mod passwords;
pub mod sessions;
pub mod tokens;

pub use passwords::PasswordHash;
pub use sessions::{Session, SessionError, SessionKey};
