//! Tab completion, as a pure function of the line, the cursor and what is known (the peer's
//! file names, the known peers, the job numbers): command words, subcommands, transports,
//! remote file names (a folder at a time, quoted when they hold spaces), help topics.
//!
//! The line is split as [`super::command::parse`] will split it, so a name completed inside
//! quotes comes out the same when the line runs.

use super::command::{ALIASES, COMMANDS, canonical, subcommands};

/// What completion may draw on besides the line. Remote names are asked for only when
/// the cursor is where a remote file name goes (getting them may wait on the peer).
pub trait Sources {
    /// The peer's names (relative paths; folders end with `/`, see
    /// [`super::names::completion_name`]).
    fn remote_files(&self) -> Vec<String>;
    /// The known peer addresses.
    fn peers(&self) -> Vec<String>;
    /// The numbers of the background jobs in flight.
    fn jobs(&self) -> Vec<u32>;
    /// The current remote folder (`cd`), which names complete relative to; `None`: the
    /// root.
    fn remote_folder(&self) -> Option<String> {
        None
    }
}

/// One completion: what the list shows and what replaces the word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Shown in the list of choices.
    pub display: String,
    /// Replaces the word under the cursor (from [`Completion::start`]).
    pub replacement: String,
}

/// The completions of the word under the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Byte offset in the line where the word being completed starts.
    pub start: usize,
    /// The choices, sorted.
    pub candidates: Vec<Candidate>,
}

/// Completes the word that ends at byte `pos` of `line`.
pub fn complete(line: &str, pos: usize, sources: &dyn Sources) -> Completion {
    let pos = floor_char_boundary(line, pos);
    let lexed = lex(&line[..pos]);
    let mut words: Vec<&str> = lexed.words.iter().map(String::as_str).collect();
    // `bg download ...` completes like `download ...`.
    if words.first().is_some_and(|w| canonical(w) == "bg") {
        words.remove(0);
    }
    let partial = lexed.partial.as_str();
    let candidates = match words.as_slice() {
        [] => command_words(partial, true),
        [command] => match canonical(command).as_str() {
            "help" => command_words(partial, false),
            "peer" => plain_words(partial, sources.peers()),
            "kill" => plain_words(partial, sources.jobs().iter().map(u32::to_string).collect()),
            "ls" if partial.starts_with('-') => keywords(partial, &["-l"]),
            "get" | "ls" | "cd" => {
                let folders_only = canonical(command) == "cd";
                return remote_names(&lexed, relative_files(sources), folders_only);
            }
            command => keywords(partial, subcommands(command)),
        },
        [command, sub] => match (canonical(command).as_str(), keyword(sub).as_str()) {
            ("download", "udp") if partial.starts_with('-') => keywords(partial, &["--max-rate"]),
            ("hash", "verify") | ("download", "tcp" | "udp") | ("ls", "-l") => {
                return remote_names(&lexed, relative_files(sources), false);
            }
            _ => Vec::new(),
        },
        [command, sub, _file] => match (canonical(command).as_str(), keyword(sub).as_str()) {
            ("download", "udp") => keywords(partial, &["--max-rate"]),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    Completion {
        start: lexed.start,
        candidates,
    }
}

/// Whether the cursor is where a remote file name goes, so that the caller fetches the
/// peer's names only then.
pub fn wants_remote_names(line: &str, pos: usize) -> bool {
    let pos = floor_char_boundary(line, pos);
    let lexed = lex(&line[..pos]);
    let mut words: Vec<&str> = lexed.words.iter().map(String::as_str).collect();
    if words.first().is_some_and(|w| canonical(w) == "bg") {
        words.remove(0);
    }
    match words.as_slice() {
        [command] => matches!(canonical(command).as_str(), "get" | "ls" | "cd"),
        [command, sub] => matches!(
            (canonical(command).as_str(), keyword(sub).as_str()),
            ("hash", "verify") | ("download", "tcp" | "udp") | ("ls", "-l")
        ),
        _ => false,
    }
}

/// The peer's file names as typed from the current remote folder: those inside it, with
/// its path taken off.
fn relative_files(sources: &dyn Sources) -> Vec<String> {
    let files = sources.remote_files();
    match sources.remote_folder() {
        None => files,
        Some(folder) => {
            let prefix = format!("{folder}/");
            files
                .iter()
                .filter_map(|name| name.strip_prefix(&prefix).map(str::to_string))
                .collect()
        }
    }
}

/// A subcommand as the parser reads it: case-insensitive, `--` prefix allowed.
fn keyword(word: &str) -> String {
    word.trim_start_matches("--").to_ascii_lowercase()
}

/// Command words starting with `partial` (case-insensitive). The assignment's aliases
/// (`FileHash`) are offered only when no command word matches, so that `ind<TAB>` gives
/// `index` rather than a choice with `IndexGet`.
fn command_words(partial: &str, with_aliases: bool) -> Vec<Candidate> {
    let lower = partial.to_ascii_lowercase();
    let matching = |words: &mut dyn Iterator<Item = &'static str>| -> Vec<&'static str> {
        words
            .filter(|w| w.to_ascii_lowercase().starts_with(&lower))
            .collect()
    };
    let mut words = matching(&mut COMMANDS.iter().map(|(name, _)| *name));
    if words.is_empty() && with_aliases {
        words = matching(&mut ALIASES.iter().copied());
    }
    let mut candidates: Vec<Candidate> = words
        .into_iter()
        .map(|w| word_candidate(w.to_string()))
        .collect();
    candidates.sort_by(|a, b| a.display.cmp(&b.display));
    candidates
}

/// Subcommand keywords starting with `partial`, keeping a typed `--` prefix
/// (`IndexGet --l<TAB>` gives `--longlist`).
fn keywords(partial: &str, words: &[&str]) -> Vec<Candidate> {
    let dashes = if partial.starts_with("--") && !words.iter().any(|w| w.starts_with("--")) {
        "--"
    } else {
        ""
    };
    let lower = partial.trim_start_matches(dashes).to_ascii_lowercase();
    words
        .iter()
        .filter(|w| w.starts_with(&lower))
        .map(|w| word_candidate(format!("{dashes}{w}")))
        .collect()
}

/// Words (peer addresses, job numbers) starting with `partial`, as they are; none holding a
/// control or bidi character (see [`remote_names`]).
fn plain_words(partial: &str, words: Vec<String>) -> Vec<Candidate> {
    let mut candidates: Vec<Candidate> = words
        .into_iter()
        .filter(|w| w.starts_with(partial) && crate::text::is_plain(w))
        .map(word_candidate)
        .collect();
    candidates.sort_by(|a, b| a.display.cmp(&b.display));
    candidates
}

fn word_candidate(word: String) -> Candidate {
    Candidate {
        replacement: format!("{word} "),
        display: word,
    }
}

/// Remote names that start with the word typed so far, one folder level at a time:
/// `mu<TAB>` gives `music/`, and `music/<TAB>` the names inside. A file's completion ends
/// the word (closing quote, space); a folder's leaves it open for the next Tab.
///
/// A choice holding a control or bidi character is never offered: rustyline would show it
/// raw in the list and echo it raw on the line, where it would act on the terminal.
/// With `folders_only` (`cd`), only folders are offered.
fn remote_names(lexed: &Lexed, files: Vec<String>, folders_only: bool) -> Completion {
    let prefix = lexed.partial.as_str();
    let mut choices: Vec<(String, bool)> = files
        .iter()
        .filter_map(|name| {
            let rest = name.strip_prefix(prefix)?;
            // A folder's own entry (`music/`) once its name is typed: what is in it follows.
            if rest.is_empty() && name.ends_with('/') {
                return None;
            }
            Some(match rest.find('/') {
                Some(slash) => (format!("{prefix}{}", &rest[..=slash]), false),
                None => (name.clone(), true),
            })
        })
        .filter(|(choice, is_file)| crate::text::is_plain(choice) && !(folders_only && *is_file))
        .collect();
    choices.sort();
    choices.dedup();
    // One quoting for every choice, so that their common prefix is something to insert.
    let quote = lexed.open_quote.or_else(|| {
        choices
            .iter()
            .any(|(name, _)| needs_quotes(name))
            .then_some('"')
    });
    Completion {
        start: lexed.start,
        candidates: choices
            .into_iter()
            .map(|(name, is_file)| Candidate {
                replacement: quoted(&name, quote, is_file),
                display: name,
            })
            .collect(),
    }
}

/// Whether a name must be quoted to survive the parser as one word (and not look like a
/// trailing `&` or a comment).
fn needs_quotes(name: &str) -> bool {
    name.chars()
        .any(|c| c.is_whitespace() || matches!(c, '\'' | '"' | '\\' | '&' | '#'))
}

/// `name` written for the parser with `quote` (`None`: bare); `complete` closes the quote
/// and adds a space (the word is done).
fn quoted(name: &str, quote: Option<char>, complete: bool) -> String {
    let end = if complete { " " } else { "" };
    match quote {
        None => format!("{name}{end}"),
        Some('\'') if !name.contains('\'') => {
            format!("'{name}{}", if complete { "' " } else { "" })
        }
        Some(_) => {
            let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{escaped}{}", if complete { "\" " } else { "" })
        }
    }
}

/// The line up to the cursor, split into words as the parser splits it.
#[derive(Debug, PartialEq, Eq)]
struct Lexed {
    /// The words before the one under the cursor, unquoted.
    words: Vec<String>,
    /// Byte offset where the word under the cursor starts (its opening quote included).
    start: usize,
    /// The word under the cursor so far, unquoted.
    partial: String,
    /// The quote still open at the cursor, if any.
    open_quote: Option<char>,
}

/// Splits like a POSIX shell without expansions (as `shell-words` does): whitespace
/// separates words, single quotes keep everything, double quotes keep everything but `\"`
/// and `\\`, and a backslash outside quotes escapes the next character.
fn lex(line: &str) -> Lexed {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut start = line.len();
    let mut quote: Option<char> = None;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some('\'') => match c {
                '\'' => quote = None,
                _ => current.push(c),
            },
            Some(_) => match c {
                '"' => quote = None,
                '\\' => match chars.peek() {
                    Some(&(_, next)) if matches!(next, '"' | '\\' | '$' | '`') => {
                        current.push(next);
                        chars.next();
                    }
                    _ => current.push('\\'),
                },
                _ => current.push(c),
            },
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            None => {
                if !in_word {
                    in_word = true;
                    start = i;
                }
                match c {
                    '\'' | '"' => quote = Some(c),
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            current.push(next);
                        }
                    }
                    _ => current.push(c),
                }
            }
        }
    }
    if !in_word {
        start = line.len();
    }
    Lexed {
        words,
        start,
        partial: current,
        open_quote: quote,
    }
}

/// The largest char boundary at or before `pos` (rustyline gives byte positions).
fn floor_char_boundary(line: &str, pos: usize) -> usize {
    let mut pos = pos.min(line.len());
    while !line.is_char_boundary(pos) {
        pos -= 1;
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed peer for the tests.
    struct Fixed;

    impl Sources for Fixed {
        fn remote_files(&self) -> Vec<String> {
            [
                "hello.txt",
                "music/song one.mp3",
                "music/song two.mp3",
                "music/live/a.mp3",
                "notes/todo.md",
                "it's.txt",
                // Folders come as the index lists them, an empty one too.
                "music/",
                "music/live/",
                "notes/",
                "empty/",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        }
        fn peers(&self) -> Vec<String> {
            vec!["127.0.0.1:7002".into(), "10.0.0.2:7002".into()]
        }
        fn jobs(&self) -> Vec<u32> {
            vec![1, 3]
        }
    }

    /// A peer whose names hold escape sequences.
    struct Hostile;

    impl Sources for Hostile {
        fn remote_files(&self) -> Vec<String> {
            [
                "ok.txt",
                "evil\x1b]0;x\x07.txt",
                "dir\u{202e}/a.txt",
                "clean/b\x1b[2J.txt",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        }
        fn peers(&self) -> Vec<String> {
            vec!["h:1\x1b[2J".into()]
        }
        fn jobs(&self) -> Vec<u32> {
            Vec::new()
        }
    }

    /// Names (and folders) with control or bidi characters are never offered; a clean
    /// folder holding only such names still is.
    #[test]
    fn hostile_names_are_not_offered() {
        let offered = |line: &str| -> Vec<String> {
            complete(line, line.len(), &Hostile)
                .candidates
                .into_iter()
                .map(|c| c.replacement)
                .collect()
        };
        assert_eq!(offered("download tcp "), vec!["clean/", "ok.txt "]);
        assert!(offered("download tcp clean/").is_empty());
        assert!(offered("peer ").is_empty());
    }

    /// The fixed peer seen from its `music` folder (`cd music`).
    struct InMusic;

    impl Sources for InMusic {
        fn remote_files(&self) -> Vec<String> {
            Fixed.remote_files()
        }
        fn peers(&self) -> Vec<String> {
            Vec::new()
        }
        fn jobs(&self) -> Vec<u32> {
            Vec::new()
        }
        fn remote_folder(&self) -> Option<String> {
            Some("music".into())
        }
    }

    /// `get`, `ls` and `cd` complete the peer's names (`cd` folders only), relative to the
    /// current remote folder, and `ls -` its flag; the cursor there wants the names.
    #[test]
    fn sftp_names_complete() {
        assert_eq!(replacements("g"), vec!["get "]);
        assert_eq!(replacements("get h"), vec!["hello.txt "]);
        assert_eq!(replacements("ls mu"), vec!["music/"]);
        assert_eq!(replacements("ls -"), vec!["-l "]);
        assert_eq!(replacements("ls -l no"), vec!["notes/"]);
        assert_eq!(replacements("cd "), vec!["empty/", "music/", "notes/"]);
        assert_eq!(replacements("cd music/"), vec!["music/live/"]);
        let offered = |line: &str| -> Vec<String> {
            complete(line, line.len(), &InMusic)
                .candidates
                .into_iter()
                .map(|c| c.replacement)
                .collect()
        };
        assert_eq!(offered("get l"), vec!["live/"]);
        assert_eq!(offered("download tcp live/"), vec!["live/a.mp3 "]);
        assert_eq!(offered("cd "), vec!["live/"]);
        assert!(wants_remote_names("get ", 4));
        assert!(wants_remote_names("cd mu", 5));
        assert!(wants_remote_names("ls -l ", 6));
        assert!(!wants_remote_names("pwd ", 4));
    }

    fn replacements(line: &str) -> Vec<String> {
        complete(line, line.len(), &Fixed)
            .candidates
            .into_iter()
            .map(|c| c.replacement)
            .collect()
    }

    /// Command words, their subcommands and transports complete, ignoring case.
    #[test]
    fn commands_and_subcommands() {
        assert_eq!(replacements("ind"), vec!["index "]);
        assert_eq!(complete("ind", 3, &Fixed).start, 0);
        assert_eq!(replacements("index l"), vec!["longlist "]);
        assert_eq!(complete("index l", 7, &Fixed).start, 6);
        assert_eq!(replacements("download u"), vec!["udp "]);
        assert_eq!(replacements("hash "), vec!["verify ", "checkall "]);
        assert_eq!(
            replacements("sync "),
            vec!["status ", "now ", "on ", "off ", "allow-deletes "]
        );
        assert_eq!(replacements("sync o"), vec!["on ", "off "]);
        assert_eq!(replacements("SYNC n"), vec!["now "]);
        assert_eq!(replacements("FileH"), vec!["FileHash "]);
        assert_eq!(replacements("fil"), vec!["FileDownload ", "FileHash "]);
        assert_eq!(replacements("ex"), vec!["exit "]);
        assert_eq!(replacements("IndexGet --l"), vec!["--longlist "]);
        assert_eq!(replacements("h"), vec!["hash ", "help ", "history "]);
        assert_eq!(replacements("help do"), vec!["download "]);
        assert_eq!(replacements("kill "), vec!["1 ", "3 "]);
        assert_eq!(replacements("peer 127"), vec!["127.0.0.1:7002 "]);
        assert_eq!(replacements("bg down"), vec!["download "]);
        assert!(replacements("index longlist ").is_empty());
    }

    /// Remote names complete a folder at a time, quoted when any choice needs it, and
    /// keep the quote the user opened.
    #[test]
    fn remote_names_are_quoted() {
        assert_eq!(replacements("download tcp hel"), vec!["hello.txt "]);
        assert_eq!(replacements("download tcp mu"), vec!["music/"]);
        assert_eq!(
            replacements("download tcp music/"),
            vec![
                "\"music/live/",
                "\"music/song one.mp3\" ",
                "\"music/song two.mp3\" "
            ]
        );
        assert_eq!(
            replacements("download udp \"music/song o"),
            vec!["\"music/song one.mp3\" "]
        );
        assert_eq!(
            replacements("hash verify 'music/song t"),
            vec!["'music/song two.mp3' "]
        );
        assert_eq!(replacements("hash verify it"), vec!["\"it's.txt\" "]);
        assert_eq!(replacements("bg download tcp no"), vec!["notes/"]);
        assert_eq!(replacements("download udp big.iso --"), vec!["--max-rate "]);
        let completion = complete("download tcp \"music/so", 22, &Fixed);
        assert_eq!(completion.start, 13);
    }

    /// What the completer produces parses back to the name.
    #[test]
    fn completed_names_parse() {
        for line in ["download tcp \"music/song o", "hash verify it"] {
            let completion = complete(line, line.len(), &Fixed);
            let mut completed = line[..completion.start].to_string();
            completed.push_str(&completion.candidates[0].replacement);
            let command = crate::shell::command::parse(&completed)
                .expect("parses")
                .expect("a command");
            let name = match command {
                crate::shell::command::Command::Download { name, .. }
                | crate::shell::command::Command::HashVerify(name) => name,
                other => panic!("{other:?}"),
            };
            assert_eq!(name.as_str(), completion.candidates[0].display);
        }
    }

    /// Remote names are wanted only where a file name goes.
    #[test]
    fn remote_names_only_where_a_file_goes() {
        assert!(wants_remote_names("download tcp ", 13));
        assert!(wants_remote_names("hash verify \"a b", 16));
        assert!(!wants_remote_names("download ", 9));
        assert!(!wants_remote_names("index longlist ", 15));
        assert!(!wants_remote_names("download tcp a.txt ", 19));
    }

    /// The splitter agrees with the parser on quotes and escapes.
    #[test]
    fn lexing() {
        let lexed = lex(r#"download "a \"b\"" c\ d 'e f"#);
        assert_eq!(lexed.words, vec!["download", "a \"b\"", "c d"]);
        assert_eq!(lexed.partial, "e f");
        assert_eq!(lexed.open_quote, Some('\''));
        assert_eq!(lexed.start, 24);
        let lexed = lex("index ");
        assert_eq!((lexed.start, lexed.partial.as_str()), (6, ""));
    }
}
