//! The loops that feed commands to a session: the interactive prompt (rustyline, on the
//! calling thread, talking to the async side through a runtime handle) and scripts (`-c`
//! commands or lines from a non-terminal stdin).
//!
//! This is the one part of the library that writes to the terminal: it is the shell.
//!
//! At the prompt: Tab completes, hints come from history, a download can run in the
//! background (`&`), Ctrl-C cancels the command running in the foreground (and only it),
//! and Ctrl-D or `quit` leave, asking first when background downloads are in flight.

use std::io::BufRead;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{ColorMode, CompletionType, Config, Editor};
use tokio::runtime::Handle;

use super::command::{self, Command};
use super::helper::ShellHelper;
use super::listing::{Gate, ListingView};
use super::names::RemoteNames;
use super::output::{self, OutputError};
use super::prompt;
use super::render::{self, Format, Layout};
use super::screen::Screen;
use super::session::{Batch, ListingKind, Outcome, Session};
use super::terminal::Terminal;
use super::watchstate;
use crate::peer::Streamed;
use crate::share::filter::IndexFilter;
use crate::text::escape;

/// Lines of typed history kept in `.boxsync/shell-history`.
const HISTORY_LINES: usize = 10_000;

/// Most file names an `index longlist` at the prompt keeps for Tab completion; a longer
/// listing is shown without keeping them (Tab then fetches its own list).
const NAMES_KEPT: usize = 100_000;

/// Result of one command line.
enum LineResult {
    /// The command ran (or the line was blank).
    Done,
    /// The command failed; the message was printed.
    Failed,
    /// The line was not understood (unknown command, wrong arguments); the message was
    /// printed.
    Refused,
    /// The user asked to leave.
    Quit,
    /// Standard output was closed (`| head`): stop quietly, nobody reads the rest.
    OutputClosed,
    /// Standard output cannot be written (the message was printed on stderr): stop.
    OutputFailed,
}

/// Runs lines against a session and shows what they produce.
struct Runner<'a> {
    /// The runtime the session's futures run on.
    handle: &'a Handle,
    /// The session commands go to.
    session: &'a mut Session,
    /// How results are written.
    format: Format,
    /// What the terminal can show.
    terminal: Terminal,
    /// Progress bars and announcements.
    screen: Arc<Screen>,
    /// Interactive only: the completion cache (a full listing refreshes it), and the sign
    /// that `&` starts a job rather than running the download in the foreground.
    names: Option<RemoteNames>,
    /// Interactive only: how many entries of a listing are shown before the shell asks
    /// whether to show the rest (`None`: never asks).
    ask_over: Option<usize>,
}

impl Runner<'_> {
    fn layout(&self) -> Layout {
        match self.format {
            Format::Json => Layout::default(),
            Format::Human => Layout {
                width: self.terminal.width(),
                colour: self.terminal.colour,
            },
        }
    }

    /// Runs one line: parse, execute (cancelled by Ctrl-C), print the outcome or the error.
    /// `ask` puts a yes/no question to the person at the prompt (none in scripts).
    fn run_line(&mut self, line: &str, ask: Option<&mut dyn FnMut(&str) -> bool>) -> LineResult {
        let command = match command::parse(line) {
            Ok(Some(command)) => command,
            Ok(None) => return LineResult::Done,
            Err(e) => {
                return match self.fail(&e.to_string()) {
                    LineResult::Failed => LineResult::Refused,
                    stopped => stopped,
                };
            }
        };
        let command = match command {
            // Scripts run everything in order: a background job would outlive the script.
            Command::Background(inner) if self.names.is_none() => *inner,
            Command::Background(inner) => return self.start_job(*inner),
            other => other,
        };
        if let Some(kind) = ListingKind::of(&command) {
            return self.run_listing(&kind, ask);
        }
        let draws_bars = matches!(
            command.unrooted(),
            Command::Download { .. } | Command::DownloadMany { .. } | Command::Wait
        );
        let waits = matches!(command, Command::Wait);
        let waits_for_round = matches!(command, Command::Sync(command::SyncAction::Now));
        let bar = match command.unrooted() {
            Command::Download { name, .. } => Some(self.screen.transfer_bar("", name.as_str())),
            Command::DownloadMany { selection, .. } => {
                Some(self.screen.transfer_bar("", &selection.line_word()))
            }
            _ => None,
        };
        // Each file of a set gets its line as it ends, above the bar; the first output
        // failure is kept for after the command.
        let (format, layout, screen) = (self.format, self.layout(), Arc::clone(&self.screen));
        let unwritten: std::sync::Mutex<Option<OutputError>> = std::sync::Mutex::new(None);
        let report =
            |name: &crate::share::RelPath,
             result: &Result<crate::transfer::Downloaded, crate::peer::PeerError>| {
                let line = render::file_line(name, result, format);
                let written = screen.suspend(|| match (format, result) {
                    (Format::Human, Err(_)) => {
                        output::print_error_line(&render::error_with(&line, format, layout));
                        Ok(())
                    }
                    _ => output::print_line(&line),
                });
                if let Err(e) = written {
                    let mut kept = unwritten.lock().unwrap_or_else(|e| e.into_inner());
                    kept.get_or_insert(e);
                }
            };
        if draws_bars {
            self.screen.show_bars();
        }
        let session = &mut *self.session;
        let result = self.handle.block_on(async {
            let mut progress = |done: u64, total: u64| {
                if let Some(bar) = &bar {
                    bar.update(done, total);
                }
            };
            tokio::select! {
                result = session.execute_with(command, &mut progress, &report) => Some(result),
                _ = tokio::signal::ctrl_c() => None,
            }
        });
        drop(bar);
        self.screen.hide_bars();
        match result {
            None if waits => {
                output::print_error_line(
                    "stopped waiting; the downloads go on ('jobs' lists them)",
                );
                LineResult::Done
            }
            None if waits_for_round => {
                output::print_error_line(
                    "stopped waiting; the round goes on ('sync status' shows how it goes)",
                );
                LineResult::Done
            }
            None => self.fail("cancelled"),
            _ if unwritten.lock().is_ok_and(|kept| kept.is_some()) => {
                let kept = unwritten.lock().ok().and_then(|mut kept| kept.take());
                written(kept.map_or(Ok(()), Err), LineResult::Done)
            }
            Some(Ok(Outcome::Quit)) => LineResult::Quit,
            Some(Ok(Outcome::DownloadedMany(summary))) if !summary.failed.is_empty() => {
                match self.show(&Outcome::DownloadedMany(summary)) {
                    LineResult::Done => LineResult::Failed,
                    stopped => stopped,
                }
            }
            Some(Ok(outcome)) => self.show(&outcome),
            Some(Err(e)) => self.fail(&e.to_string()),
        }
    }

    /// Runs a listing command, writing each batch as it arrives ([`ListingView`]): the
    /// shell holds one batch at a time. With `ask` (the interactive prompt, human output)
    /// and a threshold, it asks once before showing more than [`Runner::ask_over`]
    /// entries; no (or Enter, Ctrl-C, Ctrl-D) stops the listing: the request's stream is
    /// dropped, which ends the peer's answer, and the count shown is said. Ctrl-C while
    /// the listing streams cancels it, as any command.
    fn run_listing(
        &mut self,
        kind: &ListingKind,
        mut ask: Option<&mut dyn FnMut(&str) -> bool>,
    ) -> LineResult {
        let mut view = ListingView::new(kind, self.format, self.layout());
        let limit = match (self.format, &ask) {
            (Format::Human, Some(_)) => self.ask_over,
            _ => None,
        };
        let mut gate = Gate::new(limit);
        // A complete `index longlist` at the prompt refreshes Tab's names, as long as it
        // is not so long that keeping its names would defeat the bounded memory.
        let mut names = match (&self.names, kind) {
            (Some(_), ListingKind::Entries(IndexFilter::Longlist)) => Some(Vec::new()),
            _ => None,
        };
        let mut output = Ok(());
        let mut show = |part: Batch| {
            if let (Some(kept), Batch::Entries(entries)) = (&mut names, &part) {
                kept.extend(entries.iter().map(super::names::completion_name));
                if kept.len() > NAMES_KEPT {
                    names = None;
                }
            }
            match output::print_text(&view.batch(&part)) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    output = Err(e);
                    ControlFlow::Break(())
                }
            }
        };
        let each = |mut batch: Batch| {
            let room = gate.room(batch.len());
            let rest = (room < batch.len()).then(|| batch.split_off(room));
            if show(batch).is_break() {
                return ControlFlow::Break(());
            }
            let Some(rest) = rest else {
                return ControlFlow::Continue(());
            };
            // The prompt's thread waits for the answer; the peer's next batches wait in
            // the stream's window meanwhile (the peer gives up after its stall limit).
            let yes = ask.as_mut().is_some_and(|ask| ask(&gate.question()));
            if !yes {
                return ControlFlow::Break(());
            }
            gate.open();
            show(rest)
        };
        let session = &*self.session;
        let result = self.handle.block_on(async {
            tokio::select! {
                result = session.list(kind, each) => Some(result),
                _ = tokio::signal::ctrl_c() => None,
            }
        });
        let complete = matches!(result, Some(Ok(Streamed::Complete)));
        let shown = view.shown();
        if let Err(e) = output {
            return written(Err(e), LineResult::Done);
        }
        let ended = written(output::print_text(&view.finish(complete)), LineResult::Done);
        if !matches!(ended, LineResult::Done) {
            return ended;
        }
        match result {
            None => self.fail("cancelled"),
            Some(Err(e)) => self.fail(&e.to_string()),
            // Only the person's no stops it here (a closed output returned above).
            Some(Ok(Streamed::Stopped)) => written(
                output::print_line(&format!(
                    "stopped: showed {shown} entries of the peer's listing; the rest was not fetched"
                )),
                LineResult::Done,
            ),
            Some(Ok(Streamed::Complete)) => {
                if let (Some(cache), Some(files)) = (&self.names, names)
                    && let Some(peer) = self.session.current_peer()
                {
                    cache.offer_names(peer.addr(), files);
                }
                LineResult::Done
            }
        }
    }

    /// Starts a download as a background job with its own (hidden until shown) bar.
    fn start_job(&mut self, command: Command) -> LineResult {
        let name = match command.unrooted() {
            Command::Download { name, .. } => name.to_string(),
            Command::DownloadMany { selection, .. } => selection.line_word(),
            _ => String::new(),
        };
        let screen = Arc::clone(&self.screen);
        let started = {
            let _runtime = self.handle.enter();
            self.session.spawn_job(command, |job| {
                let bar = screen.transfer_bar(&format!("[{}]", job.id), &name);
                Box::new(move |done, total| bar.update(done, total))
            })
        };
        match started {
            Ok(job) => self.show(&Outcome::Started(job)),
            Err(e) => self.fail(&e.to_string()),
        }
    }

    /// Prints a command's result on stdout.
    fn show(&self, outcome: &Outcome) -> LineResult {
        let text = render::outcome_with(outcome, self.format, self.layout());
        if text.is_empty() {
            return LineResult::Done;
        }
        written(output::print_line(&text), LineResult::Done)
    }

    /// Prints why a command failed: on stderr, or in JSON mode on stdout with the other
    /// documents.
    fn fail(&self, message: &str) -> LineResult {
        let text = render::error_with(message, self.format, self.layout());
        match self.format {
            Format::Json => written(output::print_line(&text), LineResult::Failed),
            Format::Human => {
                output::print_error_line(&text);
                LineResult::Failed
            }
        }
    }
}

/// `then` when the line was written; otherwise the stop that a closed or broken standard
/// output calls for.
fn written(result: Result<(), OutputError>, then: LineResult) -> LineResult {
    match result {
        Ok(()) => then,
        Err(OutputError::Closed) => LineResult::OutputClosed,
        Err(OutputError::Failed(e)) => {
            output::print_error_line(&format!("boxsync: cannot write the output: {e}"));
            LineResult::OutputFailed
        }
    }
}

/// How a script's commands went, for its exit status; the worst line decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ScriptStatus {
    /// Every command succeeded.
    Succeeded,
    /// A command failed: the peer refused it, or the network did.
    Failed,
    /// A line was not understood (unknown command, wrong arguments): a usage error.
    Refused,
}

/// Runs `lines` in order (stopping at `quit`); returns how they went.
///
/// For `-c` commands: a download shows a progress bar when the output is a terminal and
/// not JSON. A trailing `&` is ignored (commands run in order).
pub fn run_script(
    handle: &Handle,
    session: &mut Session,
    lines: impl IntoIterator<Item = String>,
    format: Format,
) -> ScriptStatus {
    run_lines(handle, session, lines, format, true)
}

/// Runs the commands read from standard input, one per line, until end of input; never
/// draws progress bars (batch output).
pub fn run_stdin(handle: &Handle, session: &mut Session, format: Format) -> ScriptStatus {
    let lines = std::io::stdin().lock().lines().map_while(Result::ok);
    run_lines(handle, session, lines, format, false)
}

fn run_lines(
    handle: &Handle,
    session: &mut Session,
    lines: impl IntoIterator<Item = String>,
    format: Format,
    bars: bool,
) -> ScriptStatus {
    let terminal = match format {
        Format::Json => Terminal::plain(),
        Format::Human => Terminal::detect(),
    };
    let mut runner = Runner {
        handle,
        session,
        format,
        terminal,
        screen: Screen::new(bars && terminal.bars, terminal.colour),
        names: None,
        ask_over: None,
    };
    let mut status = ScriptStatus::Succeeded;
    for line in lines {
        let line_status = match runner.run_line(&line, None) {
            LineResult::Done => ScriptStatus::Succeeded,
            LineResult::Failed => ScriptStatus::Failed,
            LineResult::Refused => ScriptStatus::Refused,
            LineResult::Quit | LineResult::OutputClosed => break,
            LineResult::OutputFailed => return status.max(ScriptStatus::Failed),
        };
        status = status.max(line_status);
    }
    status
}

/// The interactive prompt; returns when the user quits or presses Ctrl-D. Typed lines are
/// kept in `history_file` across runs. A listing longer than `ask_over` entries asks
/// before it shows the rest (`None` or 0: never; [`super::listing::ASK_OVER`] by default). Background downloads still in flight when it
/// returns are cancelled.
pub fn run_interactive(
    handle: &Handle,
    session: &mut Session,
    history_file: PathBuf,
    ask_over: Option<usize>,
) -> Result<(), ReadlineError> {
    let terminal = Terminal::detect();
    let screen = Screen::new(terminal.bars, terminal.colour);
    let names = RemoteNames::new(handle.clone());
    let mut editor = editor(terminal, session, &names)?;
    let _ = editor.load_history(&history_file);
    if let Ok(printer) = editor.create_external_printer() {
        screen.set_printer(Box::new(printer));
    }
    watch_interrupts(handle);
    announce_jobs(session, &screen, terminal);
    announce_sync(session, &screen);
    // The prompt's marks change by themselves while sync runs: each change is said above
    // the prompt, which redraws it. Dropping `_stop_watching` ends the watcher.
    let current_peer = Arc::new(Mutex::new(session.current_peer().cloned()));
    let (_stop_watching, stop) = std::sync::mpsc::channel::<()>();
    if let Some(sync) = session.sync() {
        watchstate::watch(
            sync.clone(),
            Arc::clone(&current_peer),
            Arc::clone(&screen),
            stop,
        );
    }
    let mut runner = Runner {
        handle,
        session,
        format: Format::Human,
        terminal,
        screen,
        names: Some(names),
        ask_over,
    };
    loop {
        let session = &*runner.session;
        *current_peer.lock().unwrap_or_else(|e| e.into_inner()) = session.current_peer().cloned();
        let prompt = prompt::LivePrompt::new(
            session.current_peer().cloned(),
            session.sync().cloned(),
            session
                .remote_folder()
                .map(|f| super::remote::display_folder(Some(f))),
            terminal.colour,
        );
        if let Some(helper) = editor.helper_mut() {
            helper.peer = session.current_peer().cloned();
            helper.peers = session.peer_addrs();
            helper.folder = session.remote_folder().map(|f| f.to_string());
        }
        match editor.readline(&prompt) {
            Ok(line) => {
                remember(&mut editor, &line, &history_file);
                let mut ask = |question: &str| ask_yes(&mut editor, question);
                let result = runner.run_line(&line, Some(&mut ask));
                if let Some(helper) = editor.helper_mut() {
                    let succeeded = !matches!(result, LineResult::Failed | LineResult::Refused);
                    helper.note_result(&line, succeeded);
                }
                match result {
                    LineResult::Quit if confirm_quit(&mut editor, runner.session) => break,
                    LineResult::OutputClosed | LineResult::OutputFailed => break,
                    _ => {}
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => {
                if confirm_quit(&mut editor, runner.session) {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    runner.session.jobs().kill_all();
    Ok(())
}

/// The line editor: history kept without duplicates or lines typed with a leading
/// space, completion listed on a second Tab, colours as the terminal allows.
fn editor(
    terminal: Terminal,
    session: &Session,
    names: &RemoteNames,
) -> Result<Editor<ShellHelper, FileHistory>, ReadlineError> {
    let config = Config::builder()
        .max_history_size(HISTORY_LINES)?
        .history_ignore_dups(true)?
        .history_ignore_space(true)
        .auto_add_history(false)
        .completion_type(CompletionType::List)
        .color_mode(if terminal.colour {
            ColorMode::Enabled
        } else {
            ColorMode::Disabled
        })
        .build();
    let mut editor = Editor::with_config(config)?;
    editor.set_helper(Some(ShellHelper::new(
        session.jobs().clone(),
        names.clone(),
        terminal.colour,
    )));
    Ok(editor)
}

/// Adds a typed line to the history and appends it to the history file at once, so that a
/// crash loses nothing and two shells on one box merge their lines.
fn remember(editor: &mut Editor<ShellHelper, FileHistory>, line: &str, file: &Path) {
    if line.trim().is_empty() {
        return;
    }
    let _ = editor.add_history_entry(line);
    if let Err(e) = editor.append_history(file) {
        tracing::warn!(error = %e, file = %file.display(), "cannot save the shell history");
    }
}

/// With background downloads in flight, asks before leaving (they would be cancelled).
/// Ctrl-D answers yes, Ctrl-C no.
fn confirm_quit(editor: &mut Editor<ShellHelper, FileHistory>, session: &Session) -> bool {
    let count = session.jobs().count();
    if count == 0 {
        return true;
    }
    let question = match count {
        1 => "1 background download in flight; quit and cancel it? [y/N] ".to_string(),
        n => format!("{n} background downloads in flight; quit and cancel them? [y/N] "),
    };
    match editor.readline(&question) {
        Ok(answer) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
        Err(ReadlineError::Eof) => true,
        Err(_) => false,
    }
}

/// Puts a yes/no question to the person at the prompt; only `y` or `yes` is yes (Enter,
/// Ctrl-C and Ctrl-D are no).
fn ask_yes(editor: &mut Editor<ShellHelper, FileHistory>, question: &str) -> bool {
    match editor.readline(question) {
        Ok(answer) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
        Err(_) => false,
    }
}

/// Makes sure Ctrl-C never kills the shell: tokio installs its SIGINT handler on the first
/// listener and keeps it for the life of the process, so a Ctrl-C outside the prompt is
/// seen only by the foreground command waiting for it (at the prompt, rustyline reads it
/// as a key).
fn watch_interrupts(handle: &Handle) {
    let _runtime = handle.enter();
    if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
        tracing::warn!(error = %e, "cannot watch for Ctrl-C");
    }
}

/// Announces each background job that ends, from a thread of its own (announcing may wait
/// for the prompt to take the message).
/// Prints sync activity above the prompt, leaving the line being typed intact.
fn announce_sync(session: &Session, screen: &Arc<Screen>) {
    let Some(sync) = session.sync() else {
        return;
    };
    let mut events = sync.events();
    let screen = Arc::clone(screen);
    let spawned = std::thread::Builder::new()
        .name("boxsync-sync-feed".into())
        .spawn(move || {
            loop {
                match events.blocking_recv() {
                    // Sync's lines quote the peers' file names and errors: escaped.
                    Ok(event) if event.peer.is_empty() => {
                        screen.announce(&format!("sync: {}", escape(&event.message)));
                    }
                    Ok(event) => screen.announce(&format!(
                        "sync [{}] {}",
                        escape(&event.peer),
                        escape(&event.message)
                    )),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        screen.announce(&format!("sync: and {missed} more changes"));
                    }
                    Err(_) => break,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the sync announcer");
    }
}

fn announce_jobs(session: &Session, screen: &Arc<Screen>, terminal: Terminal) {
    let Some(mut events) = session.jobs().take_events() else {
        return;
    };
    let screen = Arc::clone(screen);
    let spawned = std::thread::Builder::new()
        .name("boxsync-jobs".into())
        .spawn(move || {
            while let Some(event) = events.blocking_recv() {
                let layout = Layout {
                    width: terminal.width(),
                    colour: terminal.colour,
                };
                screen.announce(&render::job_event(&event, layout));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the job announcer");
    }
}
