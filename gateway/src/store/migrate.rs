//! Schema migrations: the numbered SQL files of `migrations/`, embedded in the
//! binary at build time and applied in order at start-up. Only this module
//! changes the schema.

use rusqlite::{Connection, OptionalExtension, params};

use super::{StoreError, now_text};

/// One numbered migration file.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration this binary knows, in order. A test checks that this list
/// and the files in `migrations/` agree, so a new file cannot be forgotten.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial.sql",
        sql: include_str!("../../../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_epochs_and_job_ownership.sql",
        sql: include_str!("../../../migrations/0002_epochs_and_job_ownership.sql"),
    },
    Migration {
        version: 3,
        name: "0003_interrupted_step_attempts.sql",
        sql: include_str!("../../../migrations/0003_interrupted_step_attempts.sql"),
    },
    Migration {
        version: 4,
        name: "0004_session_job_counts.sql",
        sql: include_str!("../../../migrations/0004_session_job_counts.sql"),
    },
    Migration {
        version: 5,
        name: "0005_config_lineage_and_conflicts.sql",
        sql: include_str!("../../../migrations/0005_config_lineage_and_conflicts.sql"),
    },
    Migration {
        version: 6,
        name: "0006_replica_progress.sql",
        sql: include_str!("../../../migrations/0006_replica_progress.sql"),
    },
    Migration {
        version: 7,
        name: "0007_superseded_jobs.sql",
        sql: include_str!("../../../migrations/0007_superseded_jobs.sql"),
    },
    Migration {
        version: 8,
        name: "0008_job_ownership_and_takeover.sql",
        sql: include_str!("../../../migrations/0008_job_ownership_and_takeover.sql"),
    },
    Migration {
        version: 9,
        name: "0009_unreplicated_jobs.sql",
        sql: include_str!("../../../migrations/0009_unreplicated_jobs.sql"),
    },
];

/// The newest schema version this binary understands.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

fn checksum(sql: &str) -> String {
    crate::security::sha256_hex(sql.as_bytes())
}

/// Applies every migration the database has not seen yet, each in its own
/// transaction, and refuses a database written by a newer binary or one whose
/// applied migrations were edited afterwards.
pub fn apply(conn: &mut Connection) -> Result<Vec<u32>, StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             sha256     TEXT NOT NULL,
             applied_at TEXT NOT NULL
         ) STRICT;",
    )?;
    let newest: Option<u32> = conn
        .query_row("SELECT max(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .optional()?
        .flatten();
    if let Some(newest) = newest
        && newest > latest_version()
    {
        return Err(StoreError::SchemaTooNew {
            found: newest,
            known: latest_version(),
        });
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        let recorded: Option<String> = conn
            .query_row(
                "SELECT sha256 FROM schema_migrations WHERE version = ?1",
                [migration.version],
                |r| r.get(0),
            )
            .optional()?;
        let sum = checksum(migration.sql);
        match recorded {
            Some(found) if found == sum => continue,
            Some(_) => {
                return Err(StoreError::MigrationChanged {
                    version: migration.version,
                    name: migration.name,
                });
            }
            None => {}
        }
        let tx = conn.transaction()?;
        tx.execute_batch(migration.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, sha256, applied_at) VALUES (?1, ?2, ?3, ?4)",
            params![migration.version, migration.name, sum, now_text()],
        )?;
        tx.commit()?;
        applied.push(migration.version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_matches_the_migrations_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("migrations directory")
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(
            files, embedded,
            "every file in migrations/ must be listed in MIGRATIONS, in order"
        );
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "versions are consecutive from 1");
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "file name starts with its number"
            );
            let on_disk = std::fs::read_to_string(dir.join(m.name)).unwrap();
            assert_eq!(on_disk, m.sql);
        }
    }

    #[test]
    fn fresh_database_gets_every_table() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(
            apply(&mut conn).unwrap(),
            (1..=latest_version()).collect::<Vec<_>>()
        );
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap();
        let tables: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        drop(stmt);
        assert_eq!(
            tables,
            [
                "config_conflicts",
                "config_docs",
                "config_lineage",
                "config_meta",
                "devices",
                "ended_sessions",
                "job_pages",
                "job_steps",
                "jobs",
                "local_state",
                "pair_events",
                "schema_migrations"
            ]
        );
        // Applying again is a no-op.
        assert!(apply(&mut conn).unwrap().is_empty());
    }

    #[test]
    fn newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        apply(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO schema_migrations VALUES (99, '0099_future.sql', 'x', '2030-01-01T00:00:00Z')",
            [],
        )
        .unwrap();
        let err = apply(&mut conn).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::SchemaTooNew { found: 99, known } if known == latest_version()
            ),
            "{err}"
        );
        assert!(err.to_string().contains("newer gateway"), "{err}");
    }

    /// 0003 rebuilds job_steps to allow `interrupted`: the rows of a store
    /// at version 2 come through unchanged, and the new outcome is allowed
    /// while other words still are not.
    #[test]
    fn step_attempts_survive_the_rebuild_that_allows_interrupted() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
        let tx = conn.transaction().unwrap();
        for m in &MIGRATIONS[..2] {
            tx.execute_batch(m.sql).unwrap();
        }
        tx.execute_batch(
            "INSERT INTO jobs (id, device_id, user_name, workflow, manifest, manifest_sha256, page_count, bytes,
                               accepted_by, accepted_role, accepted_epoch, state, received_at, updated_at)
             VALUES ('j1', 'd1', 'ann', 'w', '{}', 'x', 1, 1, 'gw', 'primary', 1, 'processing', 't', 't');
             INSERT INTO job_steps (job_id, step, attempt, plugin, started_at, finished_at, outcome, reason)
             VALUES ('j1', 0, 1, 'ocr', 't0', 't1', 'retry', 'busy'), ('j1', 0, 2, 'ocr', 't2', NULL, NULL, NULL);",
        )
        .unwrap();
        tx.commit().unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[2].sql).unwrap();
        tx.commit().unwrap();
        let rows: Vec<(u32, Option<String>)> = conn
            .prepare("SELECT attempt, outcome FROM job_steps WHERE job_id = 'j1' ORDER BY attempt")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows, vec![(1, Some("retry".into())), (2, None)]);
        conn.execute(
            "UPDATE job_steps SET outcome = 'interrupted' WHERE attempt = 2",
            [],
        )
        .unwrap();
        assert!(
            conn.execute(
                "UPDATE job_steps SET outcome = 'gone' WHERE attempt = 2",
                []
            )
            .is_err()
        );
        // Still removed with its job.
        conn.execute("DELETE FROM jobs WHERE id = 'j1'", [])
            .unwrap();
        let left: u32 = conn
            .query_row("SELECT count(*) FROM job_steps", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn edited_migration_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        apply(&mut conn).unwrap();
        conn.execute(
            "UPDATE schema_migrations SET sha256 = 'edited' WHERE version = 1",
            [],
        )
        .unwrap();
        let err = apply(&mut conn).unwrap_err();
        assert!(
            matches!(err, StoreError::MigrationChanged { version: 1, .. }),
            "{err}"
        );
    }
}
