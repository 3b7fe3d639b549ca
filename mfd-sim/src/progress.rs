//! Owns the progress display of long runs on stderr: one bar per counter
//! (e.g. submitted, acknowledged, delivered) redrawn in place on a terminal
//! (with indicatif under the `sim` feature, a single hand-drawn line
//! without it), plain periodic lines otherwise (logs, CI). It must not
//! compute results or slow the work it reports on: the work only bumps
//! atomic counters, and drawing happens on its own timer.

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
    /// Bars redrawn in place, several times a second.
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

/// One bar: its label, its total and the counter behind it.
#[derive(Debug, Clone)]
struct Bar {
    label: String,
    total: u64,
    counter: Counter,
}

/// A running progress display; call [`Progress::finish`] at the end.
pub struct Progress {
    bars: Vec<Bar>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts showing one bar on stderr.
    pub fn start(label: &str, total: u64, style: ProgressStyle) -> Progress {
        Self::start_bars(&[(label, total)], style)
    }

    /// Starts showing several bars on stderr, in the order given.
    pub fn start_bars(bars: &[(&str, u64)], style: ProgressStyle) -> Progress {
        #[cfg(feature = "sim")]
        if style == ProgressStyle::Terminal {
            return Self::start_indicatif(bars, style.interval());
        }
        Self::start_bars_with(bars, style, style.interval(), Box::new(std::io::stderr()))
    }

    /// Starts showing one bar on any writer, at any interval.
    pub fn start_with(
        label: &str,
        total: u64,
        style: ProgressStyle,
        interval: Duration,
        out: Box<dyn Write + Send>,
    ) -> Progress {
        Self::start_bars_with(&[(label, total)], style, interval, out)
    }

    /// Starts showing several bars as one text line on any writer, at any
    /// interval: redrawn in place for [`ProgressStyle::Terminal`], a new line
    /// each time for [`ProgressStyle::Lines`].
    pub fn start_bars_with(
        bars: &[(&str, u64)],
        style: ProgressStyle,
        interval: Duration,
        mut out: Box<dyn Write + Send>,
    ) -> Progress {
        let bars = make_bars(bars);
        if style == ProgressStyle::Off {
            return Progress {
                bars,
                stop: None,
                task: None,
            };
        }
        let (stop, mut stopped) = oneshot::channel::<()>();
        let seen = bars.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await;
            // Errors writing to stderr are ignored: progress is a courtesy,
            // and a closed stderr must not stop the run.
            let draw = |out: &mut Box<dyn Write + Send>, last: bool| {
                let line = seen
                    .iter()
                    .map(|b| render_line(&b.label, b.counter.get(), b.total, started.elapsed()))
                    .collect::<Vec<_>>()
                    .join("  |  ");
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
            bars,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Bars drawn by indicatif on stderr, one line each, fed from the
    /// counters on a timer of their own.
    #[cfg(feature = "sim")]
    fn start_indicatif(bars: &[(&str, u64)], interval: Duration) -> Progress {
        use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
        let bars = make_bars(bars);
        let width = bars.iter().map(|b| b.label.len()).max().unwrap_or(0);
        let style = indicatif::ProgressStyle::with_template(&format!(
            "{{prefix:>{width}}} [{{bar:32}}] {{pos}}/{{len}} ({{percent}}%) {{per_sec}} {{msg}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let drawn: Vec<(ProgressBar, Counter)> = bars
            .iter()
            .map(|b| {
                let bar = multi.add(ProgressBar::new(b.total));
                bar.set_style(style.clone());
                bar.set_prefix(b.label.clone());
                (bar, b.counter.clone())
            })
            .collect();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            let update = |done: bool| {
                for (bar, counter) in &drawn {
                    bar.set_position(counter.get());
                    if done {
                        bar.finish();
                    }
                }
            };
            loop {
                tokio::select! {
                    _ = ticks.tick() => update(false),
                    _ = &mut stopped => {
                        update(true);
                        break;
                    }
                }
            }
        });
        Progress {
            bars,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The counter of the first bar.
    pub fn counter(&self) -> Counter {
        self.counter_of(0)
    }

    /// The counter of bar `index` (in the order given at the start); a
    /// counter nobody draws when there is no such bar.
    pub fn counter_of(&self, index: usize) -> Counter {
        self.bars
            .get(index)
            .map(|b| b.counter.clone())
            .unwrap_or_default()
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

fn make_bars(bars: &[(&str, u64)]) -> Vec<Bar> {
    bars.iter()
        .map(|(label, total)| Bar {
            label: (*label).to_owned(),
            total: *total,
            counter: Counter::default(),
        })
        .collect()
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
    async fn several_bars_share_one_line_in_the_order_given() {
        let out = Shared::default();
        let p = Progress::start_bars_with(
            &[("submitted", 4), ("acknowledged", 4), ("delivered", 4)],
            ProgressStyle::Lines,
            Duration::from_secs(3600),
            Box::new(out.clone()),
        );
        for _ in 0..4 {
            p.counter_of(0).inc();
        }
        p.counter_of(1).inc();
        p.counter_of(7).inc();
        p.finish().await;
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let parts: Vec<&str> = text.trim_end().split("  |  ").collect();
        assert_eq!(parts.len(), 3, "{text:?}");
        assert!(parts[0].starts_with("submitted 4/4 (100%)"), "{text:?}");
        assert!(parts[1].starts_with("acknowledged 1/4 (25%)"), "{text:?}");
        assert!(parts[2].starts_with("delivered 0/4 (0%)"), "{text:?}");
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
