//! The history of what admins were told about jobs across the pair
//! (`pair_events`): takeovers, handovers, jobs the peer took over, possible
//! duplicate deliveries and second copies a destination refused. Kept as
//! history; this module only records and reads it.

use chrono::{DateTime, Utc};
use rusqlite::params;
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreError, parse_time, time_text};

/// One entry of the history of what admins were told.
#[derive(Debug, Clone, Serialize)]
pub struct PairEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub job_id: Option<Uuid>,
    pub peer: Option<String>,
    pub detail: String,
}

impl Store {
    /// Records what admins were told.
    pub fn record_pair_event(
        &self,
        at: DateTime<Utc>,
        kind: &str,
        job: Option<Uuid>,
        peer: Option<&str>,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO pair_events (at, kind, job_id, peer, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                time_text(at),
                kind,
                job.map(|j| j.to_string()),
                peer,
                detail
            ],
        )?;
        Ok(())
    }

    /// The newest `limit` events, newest first.
    pub fn pair_events(&self, limit: u32) -> Result<Vec<PairEvent>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, at, kind, job_id, peer, detail FROM pair_events ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, kind, job, peer, detail) = row?;
            out.push(PairEvent {
                id,
                at: parse_time(&at)?,
                kind,
                job_id: job
                    .map(|j| {
                        Uuid::parse_str(&j)
                            .map_err(|e| StoreError::Corrupt(format!("event job id `{j}`: {e}")))
                    })
                    .transpose()?,
                peer,
                detail,
            });
        }
        Ok(out)
    }

    /// How many events of each kind were recorded.
    pub fn pair_event_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT kind, count(*) FROM pair_events GROUP BY kind ORDER BY kind")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_kept_newest_first_and_counted() {
        let store = Store::open_in_memory().unwrap();
        let job = Uuid::new_v4();
        store
            .record_pair_event(Utc::now(), "takeover", None, Some("gw-a"), "took 3")
            .unwrap();
        store
            .record_pair_event(
                Utc::now(),
                "possible_duplicate",
                Some(job),
                None,
                "mail twice",
            )
            .unwrap();
        let events = store.pair_events(10).unwrap();
        assert_eq!(events[0].kind, "possible_duplicate");
        assert_eq!(events[0].job_id, Some(job));
        assert_eq!(
            store.pair_event_counts().unwrap(),
            vec![("possible_duplicate".into(), 1), ("takeover".into(), 1)]
        );
    }
}
