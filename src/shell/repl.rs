//! The loops that feed commands to a session: the interactive prompt (rustyline, on the
//! calling thread, talking to the async side through a runtime handle) and scripts (`-c`
//! commands or lines from a non-terminal stdin).
//!
//! This is the one part of the library that writes to the terminal: it is the shell.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use tokio::runtime::Handle;

use super::command;
use super::render::{self, Format};
use super::session::{Outcome, Session};

/// Result of one command line.
enum LineResult {
    /// The command ran (or the line was blank).
    Done,
    /// The command failed; the message was printed.
    Failed,
    /// The user asked to leave.
    Quit,
}

/// Runs one line: parse, execute (cancelled by Ctrl-C), print the outcome or the error.
fn run_line(handle: &Handle, session: &mut Session, line: &str, format: Format) -> LineResult {
    let command = match command::parse(line) {
        Ok(Some(command)) => command,
        Ok(None) => return LineResult::Done,
        Err(e) => {
            print_error(&e.to_string(), format);
            return LineResult::Failed;
        }
    };
    let result = handle.block_on(async {
        let mut progress = |_done: u64, _total: u64| {};
        tokio::select! {
            result = session.execute(command, &mut progress) => Some(result),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    match result {
        None => {
            print_error("cancelled", format);
            LineResult::Failed
        }
        Some(Ok(Outcome::Quit)) => LineResult::Quit,
        Some(Ok(outcome)) => {
            let text = render::outcome(&outcome, format);
            if !text.is_empty() {
                println!("{text}");
            }
            let _ = std::io::stdout().flush();
            LineResult::Done
        }
        Some(Err(e)) => {
            print_error(&e.to_string(), format);
            LineResult::Failed
        }
    }
}

fn print_error(message: &str, format: Format) {
    match format {
        // In JSON mode the error document goes to stdout with the others.
        Format::Json => println!("{}", render::error(message, format)),
        Format::Human => eprintln!("{}", render::error(message, format)),
    }
    let _ = std::io::stdout().flush();
}

/// Runs `lines` in order (stopping at `quit`); returns whether every command succeeded.
pub fn run_script(
    handle: &Handle,
    session: &mut Session,
    lines: impl IntoIterator<Item = String>,
    format: Format,
) -> bool {
    let mut all_ok = true;
    for line in lines {
        match run_line(handle, session, &line, format) {
            LineResult::Done => {}
            LineResult::Failed => all_ok = false,
            LineResult::Quit => break,
        }
    }
    all_ok
}

/// Runs the commands read from standard input, one per line, until end of input.
pub fn run_stdin(handle: &Handle, session: &mut Session, format: Format) -> bool {
    let lines = std::io::stdin().lock().lines().map_while(Result::ok);
    run_script(handle, session, lines, format)
}

/// The interactive prompt; returns when the user quits or presses Ctrl-D.
///
/// Ctrl-C on the prompt clears the line; during a command it cancels the command.
pub fn run_interactive(
    handle: &Handle,
    session: &mut Session,
    history_file: PathBuf,
) -> Result<(), ReadlineError> {
    let mut editor = DefaultEditor::new()?;
    let _ = editor.load_history(&history_file);
    // Sync activity is printed above the prompt, leaving the line being typed intact.
    let feed = match (session.sync(), editor.create_external_printer()) {
        (Some(sync), Ok(mut printer)) => {
            let mut events = sync.events();
            Some(handle.spawn(async move {
                use rustyline::ExternalPrinter;
                loop {
                    match events.recv().await {
                        Ok(event) => {
                            let _ =
                                printer.print(format!("sync [{}] {}", event.peer, event.message));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            let _ = printer.print(format!("sync: {missed} more changes"));
                        }
                        Err(_) => break,
                    }
                }
            }))
        }
        _ => None,
    };
    loop {
        let prompt = match session.current_peer() {
            Some(peer) => format!("boxsync [{}]> ", peer.addr()),
            None => "boxsync [no peer]> ".to_string(),
        };
        match editor.readline(&prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                    let _ = editor.save_history(&history_file);
                }
                if let LineResult::Quit = run_line(handle, session, &line, Format::Human) {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e),
        }
    }
    let _ = editor.save_history(&history_file);
    if let Some(feed) = feed {
        feed.abort();
    }
    Ok(())
}
