//! How results reach a person or a program: aligned tables, JSON, progress.

use std::io::{IsTerminal, Write};

use bulkhead_image::import::Progress;

/// Output format chosen with `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// Prints rows under a header, columns aligned like `docker images`.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut tw = tabwriter::TabWriter::new(std::io::stdout().lock()).padding(3);
    writeln!(tw, "{}", header.join("\t"))?;
    for r in rows {
        writeln!(tw, "{}", r.join("\t"))?;
    }
    tw.flush()?;
    Ok(())
}

pub fn json(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Bytes as Docker prints them (decimal units).
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{:.3}", v).trim_end_matches('0').trim_end_matches('.').to_string() + units[u]
    }
}

/// "3 days ago", as `docker images` shows creation times.
pub fn ago(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let Some(t) = t else { return "N/A".into() };
    let s = (chrono::Utc::now() - t).num_seconds().max(0);
    let (n, unit) = match s {
        0..=59 => (s, "second"),
        60..=3599 => (s / 60, "minute"),
        3600..=86399 => (s / 3600, "hour"),
        86400..=2_591_999 => (s / 86400, "day"),
        2_592_000..=31_535_999 => (s / 2_592_000, "month"),
        _ => (s / 31_536_000, "year"),
    };
    if n == 1 {
        format!("1 {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

/// Shows import progress: bars on a terminal, plain lines otherwise, nothing with `-q`.
pub struct Reporter {
    quiet: bool,
    bars: Option<indicatif::MultiProgress>,
    current: std::cell::RefCell<Option<indicatif::ProgressBar>>,
}

impl Reporter {
    pub fn new(quiet: bool) -> Self {
        let bars = (!quiet && std::io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
        Reporter {
            quiet,
            bars,
            current: Default::default(),
        }
    }

    pub fn event(&self, p: Progress) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some(m) => match p {
                Progress::Copying { digest, size } => {
                    let pb = m.add(indicatif::ProgressBar::new_spinner());
                    pb.set_message(format!("{}: copying {}", digest.short(), human_size(size)));
                    pb.enable_steady_tick(std::time::Duration::from_millis(120));
                    *self.current.borrow_mut() = Some(pb);
                }
                Progress::Unpacking { digest } => {
                    if let Some(pb) = &*self.current.borrow() {
                        pb.set_message(format!("{}: unpacking", digest.short()));
                    }
                }
                Progress::Unpacked { digest, bytes } => {
                    if let Some(pb) = self.current.borrow_mut().take() {
                        pb.finish_with_message(format!("{}: done ({})", digest.short(), human_size(bytes)));
                    }
                }
            },
            None => match p {
                Progress::Copying { digest, size } => eprintln!("Storing blob {} ({})", digest.short(), human_size(size)),
                Progress::Unpacking { .. } => {}
                Progress::Unpacked { digest, bytes } => eprintln!("Unpacked layer {} ({})", digest.short(), human_size(bytes)),
            },
        }
    }
}

/// Prints, one `warning:` line each, what an imported or pulled image keeps that can raise
/// privilege and what was left out of it.
pub fn warn_findings(store: &bulkhead_image::Store, rec: &bulkhead_image::ImageRecord) {
    if let Ok(info) = store.info(rec) {
        for line in info.findings() {
            eprintln!("bulkhead: warning: {line}");
        }
    }
}
