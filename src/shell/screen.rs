//! The interactive terminal as the prompt, progress bars and announcements share it, so
//! that none garbles another.
//!
//! - Progress bars (indicatif, one per transfer, on standard error) are drawn only while a
//!   foreground download or `wait` runs; at the prompt they are hidden, and `jobs` shows
//!   the background transfers' progress instead.
//! - An announcement (a background job ended) goes above the bars while they are drawn,
//!   and otherwise through rustyline's external printer, which writes it above the line
//!   being typed and redraws that line.

use std::io;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use rustyline::ExternalPrinter;
use unicode_width::UnicodeWidthStr;

use super::table;

/// Columns a file name takes next to its bar (shortened or padded, so bars line up).
const NAME_COLUMNS: usize = 28;

/// Columns left free at the end of each bar line, for the terminal's `^C` echo.
const ECHO_ROOM: u16 = 3;

/// How often bars are redrawn at most.
const BAR_REFRESH_HZ: u8 = 10;

/// The terminal shared by the prompt, the bars and the announcements.
pub struct Screen {
    /// Every transfer's bar; hidden or drawn on standard error.
    bars: MultiProgress,
    /// Whether bars may be drawn at all (a terminal, human output).
    bars_enabled: bool,
    /// Whether to colour the bars.
    colour: bool,
    /// Whether the bars are being drawn. A std `Mutex`, held briefly (never while waiting
    /// on the prompt), so that showing and announcing do not interleave.
    bars_shown: Mutex<bool>,
    /// rustyline's printer, once the prompt exists. Its own lock: printing may wait for
    /// the prompt to take the previous message, and the prompt's thread never takes this
    /// lock, so it cannot be stuck behind it.
    printer: Mutex<Option<Box<dyn ExternalPrinter + Send>>>,
}

impl Screen {
    /// A screen; with `bars_enabled` false (not a terminal, `--json`, scripts from a pipe)
    /// no bar is ever drawn.
    pub fn new(bars_enabled: bool, colour: bool) -> Arc<Screen> {
        Arc::new(Screen {
            bars: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
            bars_enabled,
            colour,
            bars_shown: Mutex::new(false),
            printer: Mutex::new(None),
        })
    }

    /// Sends announcements through rustyline's printer from now on.
    pub fn set_printer(&self, printer: Box<dyn ExternalPrinter + Send>) {
        *lock(&self.printer) = Some(printer);
    }

    /// A new bar for a transfer of `name` (shown escaped), labelled `label` (`[2]` for job
    /// 2, or empty). It disappears when dropped, however the transfer ended.
    pub fn transfer_bar(&self, label: &str, name: &str) -> TransferBar {
        let name = table::shorten_path(&crate::text::escape(name), NAME_COLUMNS);
        let name = format!(
            "{name}{}",
            " ".repeat(NAME_COLUMNS.saturating_sub(name.width()))
        );
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
            .with_style(self.bar_style(!label.is_empty()))
            .with_prefix(label.to_string())
            .with_message(name);
        let bar = self.bars.add(bar);
        TransferBar {
            bar,
            bars: self.bars.clone(),
        }
    }

    /// `name [=====>    ] 12.0 MiB/40.0 MiB 8.1 MiB/s ETA 3s`, after the job number
    /// when `labelled`.
    fn bar_style(&self, labelled: bool) -> ProgressStyle {
        let bar = if self.colour {
            "{wide_bar:.cyan/blue}"
        } else {
            "[{wide_bar}]"
        };
        let label = match (labelled, self.colour) {
            (false, _) => "",
            (true, true) => "{prefix:.bold} ",
            (true, false) => "{prefix} ",
        };
        let template = format!(
            "{label}{{msg}} {bar} {{binary_bytes}}/{{binary_total_bytes}} {{binary_bytes_per_sec}} ETA {{eta}}"
        );
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars(if self.colour { "━╸ " } else { "=> " })
    }

    /// Starts drawing the bars (a foreground download or `wait` begins).
    pub fn show_bars(&self) {
        if !self.bars_enabled {
            return;
        }
        // Under the lock, so that an announcement never sees the flag without the target.
        let mut shown = lock(&self.bars_shown);
        self.bars
            .set_draw_target(ProgressDrawTarget::term_like_with_hz(
                Box::new(BarTerminal(console::Term::stderr())),
                BAR_REFRESH_HZ,
            ));
        *shown = true;
    }

    /// Wipes the bars and stops drawing them (the command ended; the prompt comes back).
    pub fn hide_bars(&self) {
        let mut shown = lock(&self.bars_shown);
        if *shown {
            let _ = self.bars.clear();
            self.bars.set_draw_target(ProgressDrawTarget::hidden());
            *shown = false;
        }
    }

    /// Runs `write` (which prints a line) with the bars wiped, drawing them again after,
    /// so that a line printed while a transfer runs does not tear its bar.
    pub fn suspend<T>(&self, write: impl FnOnce() -> T) -> T {
        self.bars.suspend(write)
    }

    /// Shows `text` (one or more lines) without disturbing the bars or the line being
    /// typed.
    pub fn announce(&self, text: &str) {
        {
            let shown = lock(&self.bars_shown);
            if *shown {
                let _ = self.bars.println(text);
                return;
            }
        }
        match lock(&self.printer).as_mut() {
            Some(printer) => {
                if printer.print(format!("{text}\n")).is_err() {
                    super::output::print_error_line(text);
                }
            }
            None => super::output::print_error_line(text),
        }
    }
}

/// Locks a mutex, going on with the data if a panicking thread poisoned it (a flag and a
/// printer: nothing to leave half-changed).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Standard error as the bars see it: a few columns narrower than the terminal. A bar
/// that filled the line would leave no room for the `^C` the terminal echoes on Ctrl-C,
/// which would then start a new line, so that wiping the bars would wipe the wrong lines
/// and leave a stale bar on screen.
#[derive(Debug)]
struct BarTerminal(console::Term);

impl TermLike for BarTerminal {
    fn width(&self) -> u16 {
        self.0.size().1.saturating_sub(ECHO_ROOM).max(1)
    }

    fn height(&self) -> u16 {
        self.0.size().0
    }

    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_up(n)
    }

    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_down(n)
    }

    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_right(n)
    }

    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_left(n)
    }

    fn write_line(&self, s: &str) -> io::Result<()> {
        self.0.write_line(s)
    }

    fn write_str(&self, s: &str) -> io::Result<()> {
        self.0.write_str(s)
    }

    fn clear_line(&self) -> io::Result<()> {
        self.0.clear_line()
    }

    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
}

/// One transfer's bar; removed from the screen when dropped.
pub struct TransferBar {
    /// The bar.
    bar: ProgressBar,
    /// The set it belongs to, to leave it.
    bars: MultiProgress,
}

impl TransferBar {
    /// Records `done` of `total` bytes.
    pub fn update(&self, done: u64, total: u64) {
        if self.bar.length() != Some(total) {
            self.bar.set_length(total);
        }
        self.bar.set_position(done);
    }
}

impl Drop for TransferBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        self.bars.remove(&self.bar);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bars come and go without a terminal (hidden), and announcements without a printer
    /// fall back to standard error instead of failing.
    #[test]
    fn bars_without_a_terminal() {
        let screen = Screen::new(false, false);
        screen.show_bars();
        let bar = screen.transfer_bar("[1]", "music/live/2024/berlin/a long song.mp3");
        bar.update(10, 100);
        drop(bar);
        screen.hide_bars();
        screen.announce("[1] done");
    }
}
