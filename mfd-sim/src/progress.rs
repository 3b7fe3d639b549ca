//! Owns the progress display of long runs on stderr: one line redrawn in
//! place on a terminal, plain periodic lines otherwise (logs, CI). It must
//! not compute results or slow the work it reports on: the work only bumps
//! an atomic counter, and drawing happens on its own timer.

use std::{
    io::{IsTerminal, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::oneshot, task::JoinHandle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressStyle {
    /// One line redrawn in place, several times a second.
    Terminal,
    /// A new line every few seconds, for logs.
    Lines,
    /// Nothing (tests, `--quiet`).
    Off,
}

impl ProgressStyle {
    /// [`ProgressStyle::Terminal`] when stderr is a terminal, else
    /// [`ProgressStyle::Lines`].
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            ProgressStyle::Terminal
        } else {
            ProgressStyle::Lines
        }
    }

    fn interval(self) -> Duration {
        match self {
            ProgressStyle::Terminal => Duration::from_millis(250),
            ProgressStyle::Lines | ProgressStyle::Off => Duration::from_secs(5),
        }
    }
}

/// The counter the work advances; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Counts one finished item.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Items finished so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A running progress display; call [`Progress::finish`] at the end.
pub struct Progress {
    counter: Counter,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts showing progress on stderr.
    pub fn start(label: &str, total: u64, style: ProgressStyle) -> Progress {
        Self::start_with(
            label,
            total,
            style,
            style.interval(),
            Box::new(std::io::stderr()),
        )
    }

    /// Starts showing progress on any writer, at any interval.
    pub fn start_with(
        label: &str,
        total: u64,
        style: ProgressStyle,
        interval: Duration,
        mut out: Box<dyn Write + Send>,
    ) -> Progress {
        let counter = Counter::default();
        if style == ProgressStyle::Off {
            return Progress {
                counter,
                stop: None,
                task: None,
            };
        }
        let (stop, mut stopped) = oneshot::channel::<()>();
        let label = label.to_owned();
        let seen = counter.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await;
            // Errors writing to stderr are ignored: progress is a courtesy,
            // and a closed stderr must not stop the run.
            let draw = |out: &mut Box<dyn Write + Send>, last: bool| {
                let line = render_line(&label, seen.get(), total, started.elapsed());
                let _ = match (style, last) {
                    (ProgressStyle::Terminal, false) => write!(out, "\r\x1b[2K{line}"),
                    (ProgressStyle::Terminal, true) => writeln!(out, "\r\x1b[2K{line}"),
                    _ => writeln!(out, "{line}"),
                };
                let _ = out.flush();
            };
            loop {
                tokio::select! {
                    _ = ticks.tick() => draw(&mut out, false),
                    _ = &mut stopped => {
                        draw(&mut out, true);
                        break;
                    }
                }
            }
        });
        Progress {
            counter,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The counter to advance.
    pub fn counter(&self) -> Counter {
        self.counter.clone()
    }

    /// Draws the final state and stops.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// `jobs 120/1000 (12%)  34.2/s  ETA 25s`, with the rate averaged over the
/// whole run so far.
pub fn render_line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let percent = done.saturating_mul(100).checked_div(total).unwrap_or(100);
    let rate = crate::stats::per_second(done, elapsed);
    let eta = if done >= total {
        "done".to_owned()
    } else if rate > 0.0 {
        format!(
            "ETA {}",
            short_duration(Duration::from_secs_f64((total - done) as f64 / rate))
        )
    } else {
        "ETA --".to_owned()
    };
    format!("{label} {done}/{total} ({percent}%)  {rate:.1}/s  {eta}")
}

/// `45s`, `3m05s`, `2h07m`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn lines_say_done_total_rate_and_eta() {
        assert_eq!(
            render_line("jobs", 100, 1000, Duration::from_secs(10)),
            "jobs 100/1000 (10%)  10.0/s  ETA 1m30s"
        );
        assert_eq!(
            render_line("jobs", 0, 10, Duration::ZERO),
            "jobs 0/10 (0%)  0.0/s  ETA --"
        );
        assert_eq!(
            render_line("jobs", 10, 10, Duration::from_secs(2)),
            "jobs 10/10 (100%)  5.0/s  done"
        );
        assert_eq!(short_duration(Duration::from_secs(7322)), "2h02m");
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn plain_lines_end_with_the_final_count() {
        let out = Shared::default();
        let p = Progress::start_with(
            "jobs",
            3,
            ProgressStyle::Lines,
            Duration::from_secs(3600),
            Box::new(out.clone()),
        );
        for _ in 0..3 {
            p.counter().inc();
        }
        p.finish().await;
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with("done\n"), "{text:?}");
        assert!(text.starts_with("jobs 3/3 (100%)"), "{text:?}");
        assert!(!text.contains('\r'));
    }

    #[tokio::test]
    async fn terminal_style_redraws_one_line() {
        let out = Shared::default();
        let p = Progress::start_with(
            "up",
            2,
            ProgressStyle::Terminal,
            Duration::from_millis(5),
            Box::new(out.clone()),
        );
        p.counter().inc();
        tokio::time::sleep(Duration::from_millis(30)).await;
        p.counter().inc();
        p.finish().await;
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.matches("\r\x1b[2K").count() >= 2, "{text:?}");
        assert_eq!(
            text.matches('\n').count(),
            1,
            "only the final draw ends the line: {text:?}"
        );
        assert!(
            text.contains("up 2/2 (100%)") && text.ends_with("done\n"),
            "{text:?}"
        );
    }

    #[tokio::test]
    async fn off_draws_nothing_but_still_counts() {
        let p = Progress::start("x", 1, ProgressStyle::Off);
        p.counter().inc();
        assert_eq!(p.counter().get(), 1);
        p.finish().await;
    }
}
