//! `gateway rate`: a short self-benchmark of this machine's intake path —
//! page bytes streamed into a spool in the data directory's file system,
//! fsynced and committed to a scratch database, exactly as the intake does —
//! reported as jobs/s and MB/s. It does not touch the instance's own data.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;
use uuid::Uuid;

use crate::commit::Committer;
use crate::spool::JobSpool;
use crate::store::{NewJob, NewPage, Store};

/// What the self-benchmark measured.
#[derive(Debug, Serialize)]
pub struct Rating {
    pub jobs: u32,
    pub job_bytes: u64,
    pub seconds: f64,
    pub jobs_per_second: f64,
    pub megabytes_per_second: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

/// Writes `jobs` jobs of `job_bytes` each under `scratch` (removed after).
pub async fn rate(scratch: &Path, jobs: u32, job_bytes: u64) -> anyhow::Result<Rating> {
    let dir = scratch.join(format!("rate-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = run(&dir, jobs, job_bytes).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(dir: &Path, jobs: u32, job_bytes: u64) -> anyhow::Result<Rating> {
    let spool = JobSpool::open(&dir.join("spool"))?;
    let store = std::sync::Arc::new(Store::open(&dir.join("rate.sqlite"))?);
    let committer = Committer::start(store, spool.clone())?;
    let chunk = vec![0x5Au8; 64 * 1024];
    let mut latencies = Vec::with_capacity(jobs as usize);
    let started = Instant::now();
    for _ in 0..jobs {
        let t = Instant::now();
        let id = Uuid::new_v4();
        let mut upload = spool.begin(id);
        let mut page = upload.page(1, "png");
        let mut left = job_bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            page.write(&chunk[..n]).await?;
            left -= n as u64;
        }
        let page = page.finish().await?;
        let job = NewJob {
            id,
            device_id: Uuid::nil(),
            user: "rate".into(),
            workflow: "rate".into(),
            manifest: "{}".into(),
            manifest_sha256: String::new(),
            bytes: page.bytes,
            accepted_by: "rate".into(),
            acceptor: pair_core::ServerId::NONE,
            accepted_role: "primary".into(),
            accepted_epoch: 0,
            client_addr: None,
            received_at: Utc::now(),
            pages: vec![NewPage {
                seq: 1,
                file_name: page.file_name,
                format: "png".into(),
                bytes: page.bytes,
                sha256: page.sha256,
            }],
        };
        committer.commit(upload, job, None).await?;
        latencies.push(t.elapsed());
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| -> f64 {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies
            .get(i)
            .copied()
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
            * 1000.0
    };
    Ok(Rating {
        jobs,
        job_bytes,
        seconds,
        jobs_per_second: f64::from(jobs) / seconds,
        megabytes_per_second: (f64::from(jobs) * job_bytes as f64) / seconds / 1e6,
        p50_ms: pct(0.5),
        p95_ms: pct(0.95),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rating_measures_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let r = rate(dir.path(), 3, 100_000).await.unwrap();
        assert_eq!(r.jobs, 3);
        assert!(r.jobs_per_second > 0.0 && r.megabytes_per_second > 0.0);
        assert!(r.p95_ms >= r.p50_ms);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "scratch removed"
        );
    }
}
