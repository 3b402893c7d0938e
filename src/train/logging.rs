//! Training logs: TensorBoard event files, plain text lines (stdout and `<run>/log.txt`) and an
//! indicatif progress bar.
//!
//! - TensorBoard goes through tensorboard-rs 0.5.9 into `<run>/tb/`. Its writer thread owns the
//!   file and is joined on drop, so drop (or [`Logger::finish`]) the logger before exiting;
//!   `std::process::exit` would lose buffered events. It panics on I/O errors (no Result API).
//! - Images: `add_image` wants interleaved RGB bytes (HWC) although its doc says CHW, and it swaps
//!   the proto's height/width fields for non-square images, so [`Logger::image`] only accepts
//!   square images.
//! - The bar draws on stdout only when stdout is a terminal; otherwise it is hidden and a plain
//!   line is printed every `print_every` steps instead. `log.txt` always gets those lines.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs::File;
use std::io::{IsTerminal, LineWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tensorboard_rs::summary_writer::SummaryWriter;

pub const LOG_FILE: &str = "log.txt";
pub const TB_DIR: &str = "tb";

/// Logger settings.
#[derive(Debug, Clone, Copy)]
pub struct LoggerOptions {
    /// Write TensorBoard event files under `<run>/tb`.
    pub tensorboard: bool,
    /// Plain progress line every this many steps (and at the last step).
    pub print_every: u64,
    /// Show the progress bar; `None`: only when stdout is a terminal.
    pub progress_bar: Option<bool>,
}

impl Default for LoggerOptions {
    fn default() -> Self {
        Self {
            tensorboard: true,
            print_every: 10,
            progress_bar: None,
        }
    }
}

/// A progress bar on stdout with step/total, ETA and a metrics message; hidden when `visible`
/// is false.
pub fn progress_bar(total: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
    // The template is a constant, so this only fails on a programming error.
    let style =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} eta {eta} {msg}")
            .expect("valid progress template")
            .progress_chars("=> ");
    pb.set_style(style);
    pb
}

/// See the module docs.
pub struct Logger {
    run_dir: PathBuf,
    tb: Option<SummaryWriter>,
    file: LineWriter<File>,
    bar: ProgressBar,
    bar_visible: bool,
    print_every: u64,
    total: u64,
    start: Instant,
}

impl Logger {
    /// Opens (appends to) `<run_dir>/log.txt` and, if enabled, a new TensorBoard event file.
    pub fn new(run_dir: &Path, total_steps: u64, opts: LoggerOptions) -> Result<Self> {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let log_path = run_dir.join(LOG_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let tb = if opts.tensorboard {
            let dir = run_dir.join(TB_DIR);
            // Create it here so failures are errors, not panics inside tensorboard-rs.
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Some(SummaryWriter::new(&dir))
        } else {
            None
        };
        let bar_visible = opts
            .progress_bar
            .unwrap_or_else(|| std::io::stdout().is_terminal());
        Ok(Self {
            run_dir: run_dir.to_path_buf(),
            tb,
            file: LineWriter::new(file),
            bar: progress_bar(total_steps, bar_visible),
            bar_visible,
            print_every: opts.print_every.max(1),
            total: total_steps,
            start: Instant::now(),
        })
    }

    /// Times the lines from `start` instead of from the logger's creation (a logger opened at
    /// the end of a job still reports the job's time).
    pub fn since(mut self, start: Instant) -> Self {
        self.start = start;
        self
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn line(&mut self, msg: &str, to_stdout: bool) {
        let line = format!("[{:>9.1}s] {msg}", self.start.elapsed().as_secs_f64());
        if to_stdout {
            if self.bar_visible {
                self.bar.println(&line);
            } else {
                println!("{line}");
            }
        }
        // A failing log file must not kill a training run; report once on stderr.
        if let Err(e) = writeln!(self.file, "{line}") {
            eprintln!(
                "warning: writing {}: {e}",
                self.run_dir.join(LOG_FILE).display()
            );
        }
    }

    /// A plain line to stdout (above the bar) and `log.txt`.
    pub fn info(&mut self, msg: impl AsRef<str>) {
        self.line(msg.as_ref(), true);
    }

    /// One TensorBoard scalar (no-op without TensorBoard).
    pub fn scalar(&mut self, tag: &str, value: f64, step: u64) {
        if let Some(tb) = &mut self.tb {
            tb.add_scalar(tag, value as f32, step as usize);
        }
    }

    /// A square RGB image as interleaved HWC bytes (`side * side * 3`).
    pub fn image(&mut self, tag: &str, hwc_rgb: &[u8], side: usize, step: u64) -> Result<()> {
        if hwc_rgb.len() != side * side * 3 {
            bail!(
                "image '{tag}': {} bytes, expected {side}x{side}x3 = {}",
                hwc_rgb.len(),
                side * side * 3
            );
        }
        if let Some(tb) = &mut self.tb {
            tb.add_image(tag, hwc_rgb, &[3, side, side], step as usize);
        }
        Ok(())
    }

    /// Records the end of step `step` (1-based count of steps done): every metric goes to
    /// TensorBoard under its own tag, the bar moves, and every `print_every` steps (and at the
    /// last one) a plain line goes to `log.txt` (and stdout when the bar is hidden).
    pub fn step(&mut self, step: u64, metrics: &[(&str, f64)]) {
        for (tag, v) in metrics {
            self.scalar(tag, *v, step);
        }
        let msg = metrics
            .iter()
            .map(|(k, v)| format!("{k}={}", fmt_metric(*v)))
            .collect::<Vec<_>>()
            .join(" ");
        self.bar.set_position(step);
        self.bar.set_message(msg.clone());
        if step.is_multiple_of(self.print_every) || step == self.total {
            let line = format!("step {step}/{} {msg}", self.total);
            self.line(&line, !self.bar_visible);
        }
    }

    /// Asks the TensorBoard thread to flush and flushes `log.txt`.
    pub fn flush(&mut self) {
        if let Some(tb) = &mut self.tb {
            tb.flush();
        }
        let _ = self.file.flush();
    }

    /// Finishes the bar and closes the event file (joins the writer thread).
    pub fn finish(mut self) {
        self.close();
    }

    fn close(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish();
        }
        self.flush();
        // Dropping the writer sends Stop and joins its thread, so all events are on disk.
        self.tb = None;
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        self.close();
    }
}

fn fmt_metric(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_every_n_and_image_validation() {
        let run = std::env::temp_dir().join(format!("imgcot-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        let mut lg = Logger::new(
            &run,
            5,
            LoggerOptions {
                tensorboard: false,
                print_every: 2,
                progress_bar: Some(false),
            },
        )
        .unwrap();
        lg.info("hello");
        for s in 1..=5 {
            lg.step(s, &[("train/loss", 1.0 / s as f64), ("train/lr", 1e-4)]);
        }
        assert!(lg.image("x", &[0u8; 10], 2, 0).is_err());
        lg.image("x", &[0u8; 12], 2, 0).unwrap();
        lg.finish();
        let text = std::fs::read_to_string(run.join(LOG_FILE)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].ends_with("hello"));
        assert!(
            lines[1].ends_with("step 2/5 train/loss=0.5000 train/lr=1.000e-4"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("step 4/5"));
        assert!(lines[3].contains("step 5/5"));
        let _ = std::fs::remove_dir_all(&run);
    }
}
