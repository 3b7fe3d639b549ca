//! The instance's SQLite store: the one place that opens the database and
//! holds SQL. Everything else calls the typed methods here. The schema comes
//! from `migrations/` (see [`migrate`]).
//!
//! The store is synchronous (rusqlite); async callers go through
//! `tokio::task::spawn_blocking`. One connection behind a mutex is enough:
//! every statement here is short, and the only slow part of a job commit is
//! the fsync, which SQLite serialises anyway.

pub mod config;
pub mod conflicts;
pub mod job_owners;
pub mod jobs;
pub mod migrate;
pub mod pair_events;
pub mod replicas;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

pub use config::{ConfigDoc, ConfigMeta, Device, DeviceStatus, DeviceUpsert};
pub use jobs::ReplicaState;

use pair_core::ServerId;

/// Where this server's id is kept (local state).
const SERVER_ID_KEY: &str = "server.id";
pub use jobs::{JobRecord, JobState, NewJob, NewPage, StepRow};

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error (I/O, disk full, constraint, ...).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer gateway.
    #[error(
        "the database has schema version {found} but this gateway knows only up to {known}: \
         run a newer gateway, or restore a backup made with this version"
    )]
    SchemaTooNew { found: u32, known: u32 },
    /// A migration that was already applied has different content now.
    #[error(
        "migration {version} ({name}) differs from the one applied to this database: \
         migrations must never be edited once released; add a new numbered file instead"
    )]
    MigrationChanged { version: u32, name: &'static str },
    /// A stored value could not be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A configuration change stamped with an epoch older than the newest
    /// one this server has seen: it comes from a primary that was replaced.
    #[error(
        "configuration change refused: it carries epoch {}, but this server has seen epoch {}; \
         a change from a replaced primary is never applied",
        offered.short(), newest.short()
    )]
    Fenced {
        offered: pair_core::Epoch,
        newest: pair_core::Epoch,
    },
    /// A replicated change whose version is not newer than the stored one.
    #[error(
        "configuration change refused: it carries version {offered}, but this server already has version {stored}"
    )]
    StaleVersion { offered: u64, stored: u64 },
    /// A primary's write granted a version that is not the next one: the
    /// protocol and the store disagree on the configuration held.
    #[error(
        "configuration write refused: it was granted version {offered}, but the stored configuration is at version {stored}; the write was not made"
    )]
    OutOfLine { offered: u64, stored: u64 },
}

impl StoreError {
    /// True when the error comes from the machine rather than from the
    /// request: the disk is full or read-only, the file vanished, an I/O
    /// error. These take the data service down (failover cause 3); the other
    /// errors are answered to the caller.
    pub fn is_environmental(&self) -> bool {
        use rusqlite::ErrorCode::*;
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                DiskFull
                    | SystemIoFailure
                    | ReadOnly
                    | CannotOpen
                    | DatabaseCorrupt
                    | NotADatabase
                    | PermissionDenied
                    | DatabaseBusy
                    | DatabaseLocked
                    | FileLockingProtocolFailed
            ),
            StoreError::Sqlite(_) => false,
            StoreError::SchemaTooNew { .. } | StoreError::MigrationChanged { .. } => true,
            StoreError::Corrupt(_) => true,
            StoreError::Fenced { .. }
            | StoreError::StaleVersion { .. }
            | StoreError::OutOfLine { .. } => false,
        }
    }
}

/// What a store error says about the database file itself, for messages
/// that name the fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileTrouble {
    /// The file or its directory cannot be written (or opened) by this user.
    NotWritable,
    DiskFull,
    /// The file is not a gateway store (or is damaged).
    NotAStore,
    Other,
}

impl StoreError {
    /// What the error says about the file.
    pub fn file_trouble(&self) -> FileTrouble {
        use rusqlite::ErrorCode::*;
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => match e.code {
                ReadOnly | PermissionDenied | CannotOpen => FileTrouble::NotWritable,
                DiskFull => FileTrouble::DiskFull,
                NotADatabase | DatabaseCorrupt => FileTrouble::NotAStore,
                _ => FileTrouble::Other,
            },
            _ => FileTrouble::Other,
        }
    }

    /// The cause in words, said once (SQLite's own message; the wrapped
    /// error's display repeats it).
    pub fn cause(&self) -> String {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, message)) => {
                message.clone().unwrap_or_else(|| e.to_string())
            }
            other => other.to_string(),
        }
    }
}

/// A table and its columns, for `gateway db schema` (which reads it back
/// from a running instance's admin channel).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct TableInfo {
    pub name: String,
    pub columns: Vec<ColumnInfo>,
}

/// One column of a table.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ColumnInfo {
    pub name: String,
    pub decl_type: String,
    pub not_null: bool,
    pub primary_key: bool,
}

/// The instance's database.
pub struct Store {
    conn: Mutex<Connection>,
    /// A second connection for the intake's hot lookups (device, seat,
    /// session, job), so they do not queue behind a commit's fsync on the
    /// writing connection: WAL lets a reader in beside the writer, and it
    /// sees every committed write. `None` for an in-memory store.
    reader: Option<Mutex<Connection>>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, in WAL mode with
    /// full fsync on commit, and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        make_private(path);
        let mut conn = Connection::open(path)?;
        Self::configure(&mut conn)?;
        let reader = Connection::open(path)?;
        reader.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")?;
        Ok(Store {
            conn: Mutex::new(conn),
            reader: Some(Mutex::new(reader)),
            path: path.to_owned(),
        })
    }

    /// Opens an existing database for reading only: no migration, no mode
    /// change, no write of any kind. For looking at another instance's
    /// store (which may be running: WAL mode lets a reader in beside its
    /// writer) without disturbing it.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Store {
            conn: Mutex::new(conn),
            reader: None,
            path: path.to_owned(),
        })
    }

    /// An in-memory store, for tests and the `rate` self-benchmark.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        Self::configure(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
            reader: None,
            path: PathBuf::from(":memory:"),
        })
    }

    fn configure(conn: &mut Connection) -> Result<(), StoreError> {
        // synchronous=FULL: a commit returns only after the WAL is on disk,
        // which is what lets the intake acknowledge a job as durable.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )?;
        migrate::apply(conn)?;
        Ok(())
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (statements are atomic), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection for the intake's hot lookups: reads only, of what
    /// is committed.
    pub(crate) fn reader(&self) -> MutexGuard<'_, Connection> {
        match &self.reader {
            Some(reader) => reader.lock().unwrap_or_else(|p| p.into_inner()),
            None => self.conn(),
        }
    }

    /// A cheap write that proves the database accepts writes right now.
    pub fn probe_write(&self) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO local_state (key, value) VALUES ('probe', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [now_text()],
        )?;
        Ok(())
    }

    // ----- local state: never replicated -------------------------------------------

    /// Reads one local-state value.
    pub fn local_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM local_state WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Writes (or with `None`, deletes) one local-state value.
    pub fn local_set(&self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        let conn = self.conn();
        match value {
            Some(v) => conn.execute(
                "INSERT INTO local_state (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, v],
            )?,
            None => conn.execute("DELETE FROM local_state WHERE key = ?1", [key])?,
        };
        Ok(())
    }

    /// This server's id: the one stored, or `fresh` stored now when there is
    /// none (the first start). Made once and kept for the store's life.
    pub fn server_id_or_init(&self, fresh: ServerId) -> Result<ServerId, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO local_state (key, value) VALUES (?1, ?2)",
            params![SERVER_ID_KEY, fresh.to_string()],
        )?;
        let text: String = conn.query_row(
            "SELECT value FROM local_state WHERE key = ?1",
            [SERVER_ID_KEY],
            |r| r.get(0),
        )?;
        text.parse()
            .map_err(|e| StoreError::Corrupt(format!("the stored server id: {e}")))
    }

    /// Records that a session was ended (logout), with how many jobs the
    /// device says it scanned (`None`: it did not say). Records of sessions
    /// that expired more than `keep_secs` before `now` are dropped: nothing
    /// can be replayed under them any more.
    pub fn end_session(
        &self,
        session_id: &str,
        expires_at: i64,
        jobs_scanned: Option<u64>,
        now: DateTime<Utc>,
        keep_secs: u64,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO ended_sessions (session_id, expires_at, jobs_scanned) VALUES (?1, ?2, ?3)",
            params![session_id, expires_at, jobs_scanned.map(|n| n as i64)],
        )?;
        conn.execute(
            "DELETE FROM ended_sessions WHERE expires_at < ?1",
            [now.timestamp() - keep_secs as i64],
        )?;
        Ok(())
    }

    /// Every ended session still remembered, as `(session id, expires_at,
    /// jobs scanned)`: what the pair exchanges so that a logout on one
    /// server ends the session on both.
    pub fn ended_sessions(&self) -> Result<Vec<(String, i64, Option<u64>)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT session_id, expires_at, jobs_scanned FROM ended_sessions ORDER BY expires_at",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?.map(|n| n as u64),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether a session was ended by logout, and if so how many jobs the
    /// device said it scanned.
    pub fn session_end(&self, session_id: &str) -> Result<Option<Option<u64>>, StoreError> {
        Ok(self
            .reader()
            .prepare_cached("SELECT jobs_scanned FROM ended_sessions WHERE session_id = ?1")?
            .query_row([session_id], |r| r.get::<_, Option<i64>>(0))
            .optional()?
            .map(|n| n.map(|n| n as u64)))
    }

    /// Whether a session was ended by logout.
    pub fn session_ended(&self, session_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM ended_sessions WHERE session_id = ?1",
                [session_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    // ----- administration ---------------------------------------------------------

    /// SQLite's own integrity and foreign-key checks; empty when all is well.
    pub fn integrity_problems(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut problems = Vec::new();
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let row = row?;
            if row != "ok" {
                problems.push(row);
            }
        }
        let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
        for row in stmt.query_map([], |r| {
            Ok(format!(
                "row {} of table {} points to a missing row of {}",
                r.get::<_, i64>(1)?,
                r.get::<_, String>(0)?,
                r.get::<_, String>(2)?
            ))
        })? {
            problems.push(row?);
        }
        Ok(problems)
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self.conn().query_row(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?)
    }

    /// Tables and columns, for `gateway db schema`.
    pub fn schema(&self) -> Result<Vec<TableInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut tables = Vec::new();
        for name in names {
            let mut stmt =
                conn.prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1)")?;
            let columns = stmt
                .query_map([&name], |r| {
                    Ok(ColumnInfo {
                        name: r.get(0)?,
                        decl_type: r.get(1)?,
                        not_null: r.get::<_, i64>(2)? != 0,
                        primary_key: r.get::<_, i64>(3)? != 0,
                    })
                })?
                .collect::<Result<_, _>>()?;
            tables.push(TableInfo { name, columns });
        }
        Ok(tables)
    }
}

/// Timestamps are stored as RFC 3339 text in UTC with milliseconds, so they
/// sort as text and read well in `sqlite3`.
pub fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A moment as the store keeps it (to the millisecond): a value answered
/// before it is read back must be this, so it equals the stored one.
pub fn stored_time(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound;
    t.trunc_subsecs(3)
}

pub(crate) fn now_text() -> String {
    time_text(Utc::now())
}

pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp `{s}`: {e}")))
}

/// Makes the database file private to the service user (0600) before
/// SQLite opens it: it holds the session signing key and the license, and
/// SQLite would create it under the process umask (usually 0644). SQLite
/// gives its `-wal` and `-shm` files the database file's mode, so they
/// follow. An existing file is tightened too, when this user may.
fn make_private(path: &Path) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let private = std::fs::Permissions::from_mode(plugins::fsutil::PRIVATE_FILE_MODE);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(plugins::fsutil::PRIVATE_FILE_MODE)
        .open(path)
    {
        // Created 0600 (the umask can only take bits away); set outright in
        // case it took the owner's too.
        Ok(file) => {
            let _ = file.set_permissions(private);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Someone other than the owner (an admin command run by another
            // user) cannot change the mode; SQLite's own check of access
            // decides whether that user may open it.
            for suffix in ["", "-wal", "-shm"] {
                let mut name = path.as_os_str().to_owned();
                name.push(suffix);
                let _ = std::fs::set_permissions(PathBuf::from(name), private.clone());
            }
        }
        // Let SQLite report a missing directory or a permission problem in
        // its own words, as before.
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_is_wal_with_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        let conn = store.conn();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[test]
    fn local_state_round_trip_and_delete() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.local_get("maintenance").unwrap(), None);
        store.local_set("maintenance", Some("on")).unwrap();
        store.local_set("maintenance", Some("off")).unwrap();
        assert_eq!(
            store.local_get("maintenance").unwrap().as_deref(),
            Some("off")
        );
        store.local_set("maintenance", None).unwrap();
        assert_eq!(store.local_get("maintenance").unwrap(), None);
    }

    #[test]
    fn the_server_id_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let first = ServerId::from_u128(11);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.server_id_or_init(first).unwrap(), first);
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.server_id_or_init(ServerId::from_u128(12)).unwrap(),
            first
        );
    }

    #[test]
    fn ended_sessions_are_remembered_until_they_would_have_expired() {
        let store = Store::open_in_memory().unwrap();
        let now = Utc::now();
        let exp = now.timestamp() + 60;
        assert!(!store.session_ended("s1").unwrap());
        store.end_session("s1", exp, Some(3), now, 0).unwrap();
        store.end_session("s1", exp, Some(3), now, 0).unwrap();
        assert!(store.session_ended("s1").unwrap());
        assert_eq!(store.session_end("s1").unwrap(), Some(Some(3)));
        assert_eq!(store.session_end("nope").unwrap(), None);
        // Kept while replays may come (here 100 s past expiry), then gone.
        store
            .end_session(
                "s2",
                exp + 600,
                None,
                now + chrono::Duration::seconds(61),
                100,
            )
            .unwrap();
        assert!(store.session_ended("s1").unwrap());
        store
            .end_session(
                "s3",
                exp + 600,
                None,
                now + chrono::Duration::seconds(161),
                100,
            )
            .unwrap();
        assert!(!store.session_ended("s1").unwrap());
        assert_eq!(store.session_end("s2").unwrap(), Some(None));
    }

    #[test]
    fn integrity_check_of_fresh_store_is_clean() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.integrity_problems().unwrap().is_empty());
        assert_eq!(store.schema_version().unwrap(), migrate::latest_version());
    }
}
