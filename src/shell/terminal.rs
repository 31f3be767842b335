//! What the terminal the shell writes to can show: colours (following the usual
//! conventions: `NO_COLOR`, `CLICOLOR`, `CLICOLOR_FORCE`, off when not a terminal), its
//! width (tables fit it), and whether progress bars make sense.

use std::ffi::OsStr;
use std::io::IsTerminal;

/// The terminal's abilities, decided once when a shell or script starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminal {
    /// Whether to write ANSI colours and styles.
    pub colour: bool,
    /// Whether standard output is a terminal (tables are then fitted to its width).
    pub stdout_is_terminal: bool,
    /// Whether progress bars may be drawn (on standard error): both streams are terminals.
    pub bars: bool,
}

impl Terminal {
    /// Looks at the standard streams and the environment. Also tells the `console` crate
    /// (which draws the progress bars) the same colour decision, so that bars and tables
    /// agree.
    pub fn detect() -> Terminal {
        let stdout_is_terminal = std::io::stdout().is_terminal();
        let stderr_is_terminal = std::io::stderr().is_terminal();
        let env = |name| std::env::var_os(name);
        let colour = colour_wanted(
            env("NO_COLOR").as_deref(),
            env("CLICOLOR").as_deref(),
            env("CLICOLOR_FORCE").as_deref(),
            env("TERM").as_deref(),
            stdout_is_terminal,
        );
        console::set_colors_enabled(colour);
        console::set_colors_enabled_stderr(colour);
        Terminal {
            colour,
            stdout_is_terminal,
            bars: stdout_is_terminal && stderr_is_terminal,
        }
    }

    /// A terminal that shows nothing special: no colour, no width limit, no bars (pipes,
    /// `--json`, tests).
    pub fn plain() -> Terminal {
        Terminal {
            colour: false,
            stdout_is_terminal: false,
            bars: false,
        }
    }

    /// The terminal's current width in columns, or `None` when standard output is not a
    /// terminal (then nothing is truncated: scripts get whole names). Read each time, so
    /// that a resized window is followed.
    pub fn width(&self) -> Option<usize> {
        if !self.stdout_is_terminal {
            return None;
        }
        console::Term::stdout()
            .size_checked()
            .map(|(_rows, columns)| usize::from(columns))
            .filter(|columns| *columns > 0)
    }
}

/// The colour decision from the environment (<https://no-color.org>, the `CLICOLOR`
/// convention): `NO_COLOR` set and not empty turns colours off; `CLICOLOR_FORCE` other than
/// `0` turns them on; otherwise they are on for a terminal that is not `dumb`, unless
/// `CLICOLOR=0`.
pub fn colour_wanted(
    no_color: Option<&OsStr>,
    clicolor: Option<&OsStr>,
    clicolor_force: Option<&OsStr>,
    term: Option<&OsStr>,
    is_terminal: bool,
) -> bool {
    let set = |value: Option<&OsStr>| value.is_some_and(|v| !v.is_empty() && v != "0");
    if no_color.is_some_and(|v| !v.is_empty()) {
        return false;
    }
    if set(clicolor_force) {
        return true;
    }
    if clicolor.is_some_and(|v| v == "0") {
        return false;
    }
    is_terminal && term.is_none_or(|t| t != "dumb")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NO_COLOR wins over everything, CLICOLOR_FORCE over the terminal test, and a pipe or a
    /// dumb terminal gets no colour.
    #[test]
    fn colour_conventions() {
        let s = |v: &'static str| Some(OsStr::new(v));
        assert!(colour_wanted(None, None, None, s("xterm"), true));
        assert!(!colour_wanted(s("1"), None, s("1"), s("xterm"), true));
        assert!(colour_wanted(s(""), None, None, s("xterm"), true));
        assert!(!colour_wanted(None, None, None, s("xterm"), false));
        assert!(colour_wanted(None, None, s("1"), None, false));
        assert!(!colour_wanted(None, None, s("0"), None, false));
        assert!(!colour_wanted(None, None, None, s("dumb"), true));
        assert!(!colour_wanted(None, s("0"), None, s("xterm"), true));
    }
}
