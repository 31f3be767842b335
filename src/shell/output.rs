//! Standard output for the shell's results. A reader that goes away (`boxsync -c 'index
//! longlist' | head -1`) is no error: the program stops writing and ends quietly, as `ls`
//! does, instead of panicking as `println!` would.

use std::io::{self, Write};

/// Why a line could not be written to standard output.
#[derive(Debug)]
pub enum OutputError {
    /// The reader closed the pipe (EPIPE): stop quietly, nobody reads what follows.
    Closed,
    /// Any other write failure (a full disk under `> file`): worth a message.
    Failed(io::Error),
}

/// Writes `text` and a newline to standard output and flushes it, so that a script reading
/// line by line sees each result as soon as it exists.
pub fn print_line(text: &str) -> Result<(), OutputError> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => OutputError::Closed,
            _ => OutputError::Failed(e),
        })
}

/// Writes `text` and a newline to standard error, ignoring failure: a closed standard error
/// leaves nowhere to report anything, and must not panic as `eprintln!` would.
pub fn print_error_line(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

/// Writes `text` as it is (its own newlines, or none yet: a JSON array written piece by
/// piece) to standard output and flushes it, so that a listing shows as it arrives.
pub fn print_text(text: &str) -> Result<(), OutputError> {
    if text.is_empty() {
        return Ok(());
    }
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => OutputError::Closed,
            _ => OutputError::Failed(e),
        })
}
