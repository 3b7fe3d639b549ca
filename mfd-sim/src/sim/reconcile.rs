//! Owns the reconciliation at the end of a fleet run: every job a server
//! acknowledged is looked up on every server of the list (the device API,
//! with the device's token) and counted in the destination folders (files
//! whose names carry the job id). A job is `lost` when no server holds it
//! or it was never delivered, `duplicated` when the folders hold it more
//! than once; a job delivered by either server counts once. It must not
//! submit anything or change what it looks at.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
};

use serde::Serialize;
use uuid::Uuid;

use crate::{error::ClientError, servers::ServerList};

/// What the reconciliation found.
#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    /// The servers asked, in the order of the list.
    pub servers: Vec<String>,
    /// The destination folders counted.
    pub delivered_dirs: Vec<PathBuf>,
    /// How a job counted as delivered: `files` (a file in a destination
    /// folder names it) or `state` (a server reports it `done`).
    pub delivered_by: String,
    /// Acknowledged jobs checked.
    pub jobs_checked: u64,
    /// Of those, delivered.
    pub jobs_delivered: u64,
    /// Acknowledged jobs on no server, or never delivered.
    pub jobs_lost: u64,
    /// Jobs with more than one file in the destination folders.
    pub jobs_duplicated: u64,
    /// The lost jobs.
    pub lost: Vec<Uuid>,
    /// The duplicated jobs, with their file counts.
    pub duplicated: BTreeMap<Uuid, u64>,
    /// Acknowledged jobs each server was seen to hold (in any state; a
    /// server that could not be asked, or refused to say, counts none).
    pub held_by_server: BTreeMap<String, u64>,
    /// Files in the destination folders that name no job of this run.
    pub other_files: u64,
}

impl fmt::Display for Reconciliation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "reconciled    {} acknowledged: {} delivered (by {}), {} lost, {} duplicated",
            self.jobs_checked,
            self.jobs_delivered,
            self.delivered_by,
            self.jobs_lost,
            self.jobs_duplicated
        )?;
        for (server, n) in &self.held_by_server {
            writeln!(f, "  held by     {server}: {n}")?;
        }
        for id in &self.lost {
            writeln!(f, "  lost        {id}")?;
        }
        for (id, n) in &self.duplicated {
            writeln!(f, "  duplicated  {id} ({n} files)")?;
        }
        Ok(())
    }
}

/// What the reconciliation found for one job.
#[derive(Debug, Clone)]
pub(super) struct JobCheck {
    /// The job's state on each server (`received`, `processing`, `done`,
    /// `failed`, `absent` or `unreachable`).
    pub(super) on_servers: BTreeMap<String, String>,
    /// Files naming the job in the destination folders, when there are any.
    pub(super) files: Option<u64>,
    /// `ok`, `lost` or `duplicated`.
    pub(super) verdict: &'static str,
}

/// Looks up every acknowledged job, given as its id and its device's
/// server list (with the device's token), on every server and in
/// `delivered_dirs`.
pub(super) async fn reconcile(
    jobs: &[(Uuid, &ServerList)],
    delivered_dirs: &[PathBuf],
) -> (Reconciliation, HashMap<Uuid, JobCheck>) {
    let urls: Vec<String> = jobs
        .first()
        .map(|(_, list)| list.iter().map(|c| c.base_url().to_owned()).collect())
        .unwrap_or_default();
    let by_files = !delivered_dirs.is_empty();
    let (files, other_files) = if by_files {
        let dirs = delivered_dirs.to_vec();
        let known: Vec<Uuid> = jobs.iter().map(|(id, _)| *id).collect();
        tokio::task::spawn_blocking(move || count_files(&dirs, &known))
            .await
            .expect("counting files panicked")
    } else {
        (HashMap::new(), 0)
    };
    let mut out = Reconciliation {
        servers: urls.clone(),
        delivered_dirs: delivered_dirs.to_vec(),
        delivered_by: if by_files { "files" } else { "state" }.to_owned(),
        jobs_checked: 0,
        jobs_delivered: 0,
        jobs_lost: 0,
        jobs_duplicated: 0,
        lost: Vec::new(),
        duplicated: BTreeMap::new(),
        held_by_server: urls.iter().map(|u| (u.clone(), 0)).collect(),
        other_files,
    };
    let mut checks = HashMap::new();
    for (job_id, servers) in jobs {
        out.jobs_checked += 1;
        let mut states = BTreeMap::new();
        for (index, client) in servers.iter().enumerate() {
            let url = urls.get(index).cloned().unwrap_or_default();
            let answer = client.job(*job_id).await;
            if let Err(e) = &answer {
                tracing::info!(server = url, job = %job_id, error = %e, "job lookup failed");
            }
            let state = state_on(answer);
            if is_state(&state) {
                *out.held_by_server.entry(url.clone()).or_default() += 1;
            }
            states.insert(url, state);
        }
        let n = files.get(job_id).copied().unwrap_or(0);
        let delivered = if by_files {
            n > 0
        } else {
            states.values().any(|s| s == "done")
        };
        // Lost: every server says it does not have the job (a server that
        // cannot be asked says nothing), or it never reached a destination.
        let on_no_server = states.values().all(|s| s == "absent");
        let verdict = if by_files && n > 1 {
            out.jobs_duplicated += 1;
            out.duplicated.insert(*job_id, n);
            "duplicated"
        } else if on_no_server || !delivered {
            out.jobs_lost += 1;
            out.lost.push(*job_id);
            "lost"
        } else {
            "ok"
        };
        if delivered {
            out.jobs_delivered += 1;
        }
        checks.insert(
            *job_id,
            JobCheck {
                on_servers: states,
                files: by_files.then_some(n),
                verdict,
            },
        );
    }
    (out, checks)
}

/// The state a server reports for a job, as a word: the API's state,
/// `absent` for `404`, the API's error code (`maintenance`, say) or
/// `http_<status>` for another refusal, `unreachable` without an answer.
fn state_on(answer: Result<crate::api::JobStatus, ClientError>) -> String {
    match answer {
        Ok(status) => serde_json::to_value(status.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned()),
        Err(ClientError::Http(h)) if h.status == http::StatusCode::NOT_FOUND => "absent".to_owned(),
        Err(ClientError::Http(h)) => h
            .code
            .clone()
            .unwrap_or_else(|| format!("http_{}", h.status.as_u16())),
        Err(_) => "unreachable".to_owned(),
    }
}

/// True for a word of [`state_on`] that is a job state: the server holds
/// the job.
fn is_state(word: &str) -> bool {
    matches!(
        word,
        "received" | "processing" | "done" | "failed" | "unknown"
    )
}

/// Counts, under every folder, the files whose names carry each of `known`
/// job ids (hidden files, such as a delivery's temporary name, are not
/// documents); also the files that name none of them.
fn count_files(dirs: &[PathBuf], known: &[Uuid]) -> (HashMap<Uuid, u64>, u64) {
    let mut counts: HashMap<Uuid, u64> = known.iter().map(|id| (*id, 0)).collect();
    let mut other = 0;
    for dir in dirs {
        let mut files = Vec::new();
        walk(dir, &mut files);
        for name in files {
            let ids = uuids_in(&name);
            let mut matched = false;
            for id in ids {
                if let Some(n) = counts.get_mut(&id) {
                    *n += 1;
                    matched = true;
                }
            }
            if !matched {
                other += 1;
            }
        }
    }
    (counts, other)
}

/// The names of the regular, not hidden files under `dir`, recursively.
fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&entry.path(), out),
            Ok(t) if t.is_file() => out.push(name),
            _ => {}
        }
    }
}

/// Every UUID written in its hyphenated form in `text`.
pub fn uuids_in(text: &str) -> Vec<Uuid> {
    const LEN: usize = 36;
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + LEN <= bytes.len() {
        let candidate = &text.get(i..i + LEN);
        match candidate.and_then(|c| (c.as_bytes()[8] == b'-').then(|| Uuid::try_parse(c).ok())?) {
            Some(id) => {
                out.push(id);
                i += LEN;
            }
            None => i += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_found_in_file_names() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        assert_eq!(uuids_in(&format!("{a}.pdf")), [a]);
        assert_eq!(
            uuids_in(&format!("mfd-01-demo-{a}-x-{b}.pdf")),
            [a, b],
            "every id in the name"
        );
        assert!(uuids_in("report-2026-12-01.pdf").is_empty());
        assert!(
            uuids_in(&a.simple().to_string()).is_empty(),
            "only the hyphenated form"
        );
        assert!(uuids_in("é").is_empty());
    }

    #[test]
    fn files_are_counted_per_job_and_hidden_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let day = dir.path().join("2026-12-01");
        std::fs::create_dir(&day).unwrap();
        std::fs::write(day.join(format!("{a}.pdf")), b"1").unwrap();
        std::fs::write(dir.path().join(format!("mfd-{b}.pdf")), b"1").unwrap();
        std::fs::write(day.join(format!("again-{b}.pdf")), b"1").unwrap();
        std::fs::write(day.join(format!(".{c}.pdf.x1.partial")), b"1").unwrap();
        std::fs::write(day.join("notes.txt"), b"1").unwrap();
        let (counts, other) = count_files(&[dir.path().to_owned()], &[a, b, c]);
        assert_eq!((counts[&a], counts[&b], counts[&c], other), (1, 2, 0, 1));
    }
}
