//! Help texts: one line per command for `help`, details and examples for `help <command>`.

use super::command::canonical;

/// One line per command, then the keys worth knowing.
const OVERVIEW: &str = "\
commands (keywords are case-insensitive; quote names with spaces: \"my file.txt\"):
  index longlist                  every entry of the peer's folder
  index shortlist <start> <end>   entries modified between start and end (inclusive)
  index regex <pattern>           entries whose path matches a regular expression
  index glob <pattern>            entries whose path matches a glob
  hash verify <file>              MD5, SHA-256 and mtime of one file on the peer
  hash checkall                   the same for every file on the peer
  download tcp <file>             fetch a file over TCP into the local folder, verified
  download udp <file>             fetch a file over UDP (fast on lossy long links)
  download tcp '*.txt' | music/   several files: those a pattern picks, a whole folder
  download ... &                  the same in the background (or: bg download ...)
  ls [-l] [PATH|PATTERN]          the peer's current folder (sftp style; -l: details)
  cd [FOLDER] | pwd               change or show the current folder on the peer
  get NAME|PATTERN|FOLDER         sftp's name for 'download tcp'
  jobs                            background downloads in flight, with their progress
  kill <job>                      cancel a background download
  wait                            wait for the background downloads, with progress bars
  history [N] [WORD]              requests this box made and served, newest last
  peer [HOST:PORT]                show the current peer, or switch to another
  sync status|now|on|off          auto-sync: state per peer, sync at once, resume, pause
  sync allow-deletes              let the deletions the mass-delete guard stopped through
  trash [list [PATH]]             what sync replaced or deleted here, kept 30 days
  trash restore PATH [--version N]  put a kept version back
  help [command]                  this list, or details and examples for one command
  quit | exit                     leave (Ctrl-D too)
keys: Tab completes commands and the peer's file names; Up and Ctrl-R search the
  history of typed lines; Ctrl-C cancels the running command (or clears the line).
aliases from the original assignment: IndexGet, FileHash, FileDownload";

/// The help for `topic` (a command word), or the overview.
pub fn text(topic: Option<&str>) -> String {
    let Some(topic) = topic else {
        return OVERVIEW.to_string();
    };
    match canonical(topic).as_str() {
        "index" => "\
index longlist
    Every entry of the peer's shared folder, recursively: name, size, last-modified
    time and type (a MIME type, or 'directory').
index shortlist <start> <end>
    Only entries modified between start and end, both inclusive. A timestamp covers
    the span it names: '2026-11-21' as an end means the whole day.
    Forms: 2026-11-21T10:00:00Z | '2026-11-21 10:00[:00]' | 2026-11-21 (local time)
           @1763719200 (Unix seconds) | 2026/11/21/10/00/00 (any prefix)
index regex <pattern>
    Entries whose relative path contains a match (Rust regex syntax).
index glob <pattern>
    Entries whose relative path matches the glob; without a '/', the pattern matches
    the file name at any depth.
Rows show as they arrive. Past 10,000 entries the shell asks once whether to show
the rest; no stops the listing there (--ask-over N changes the threshold).
examples:
    index longlist
    index shortlist '2026-11-21 09:00' '2026-11-21 18:00'
    index regex '\\.txt$'
    index glob 'docs/**/*.md'"
            .to_string(),
        "hash" => "\
hash verify <file>
    MD5, SHA-256 and last-modified time of one file on the peer.
hash checkall
    The same for every file on the peer. Unchanged files are answered from the
    peer's hash cache without reading them again. Long listings ask as index does.
examples:
    hash verify notes/todo.md
    hash verify \"music/song one.mp3\"
    hash checkall"
            .to_string(),
        "download" => "\
download tcp <file>
    Fetches the file into the local shared folder at the same relative path, with
    the peer's last-modified time and permissions. The bytes are verified against
    the peer's BLAKE3 before the file appears; a replaced local version is kept in
    .boxsync/trash/. Shows name, size, last-modified time and MD5.
download udp <file> [--max-rate RATE]
    The same over UDP: paced datagrams, selective resends, rate control that does not
    mistake random loss for congestion. Also shows how many datagrams were resent.
    RATE is bits per second (500k, 50M, 1G) or bytes per second with a B (50MB).
    If no UDP datagram gets through within 3 s, the file comes over TCP instead.
download tcp|udp <pattern>
    Every file whose path matches the glob, relative to the current folder ('cd'):
    '*' and '?' stay within a folder ('*.txt' is the current folder's text files),
    '**' crosses folders ('**/*.txt' takes them at any depth), [abc] is a class.
    Quote the pattern. Folders a pattern matches are not taken: name them instead.
download tcp|udp <folder>/ (or a name that is a folder on the peer)
    Every file under the folder, at any depth, keeping the layout; empty folders too.
Several files download 4 at a time, with one bar for the whole set; a line for each
file says how it ended (up to date: already here as on the peer, nothing fetched),
then a summary: 'downloaded 12 files (3.4 MiB), 1 up to date, 1 failed'. A file that
fails does not stop the others; the command then fails (exit status 1 with -c).
download ... &
    Runs the download in the background: the prompt comes back at once, 'jobs' shows
    its progress, 'kill <job>' cancels it (and the rest of a set), and a line above
    the prompt says when it ended. 'bg download ...' is the same.
While a download runs in the foreground a progress bar shows bytes, rate and time
left; Ctrl-C cancels it and leaves no partial file.
examples:
    download tcp notes/todo.md
    FileDownload TCP \"music/song one.mp3\"
    download udp data/big.bin --max-rate 50M
    download tcp data/big.bin &
    download tcp '*.txt'
    download udp music/ --max-rate 50M"
            .to_string(),
        "get" => "\
get <file> | get <pattern> | get <folder>
    sftp's name for 'download tcp' (see 'help download'): one file, the files a
    pattern picks ('*' within a folder, '**' across folders), or a folder with
    everything under it. Names are relative to the current folder ('cd').
examples:
    get notes/todo.md
    get '*.mp3'
    get music
    get 'docs/**/*.md' &"
            .to_string(),
        "ls" => "\
ls [-l] [path|pattern]
    The entries directly inside the peer's current folder ('cd'), as sftp shows them:
    names relative to it, folders ending with '/'. A folder's path lists inside it,
    a file's shows the file, a pattern shows what it picks ('*' within a folder).
    -l adds mode, size and last-modified time. Hidden names (.x) are shown too.
examples:
    ls
    ls -l music
    ls '*.txt'"
            .to_string(),
        "cd" => "\
cd [folder]
    Changes the current folder on the peer, which names in ls, get, download and
    hash verify are relative to, and which the prompt shows. '..' goes up, a name
    starting with '/' starts from the top of the peer's shared folder, and 'cd' or
    'cd /' goes back there. A folder the peer does not have is refused, and nothing
    leads outside the shared folder. Each peer keeps its own current folder.
examples:
    cd music/live
    cd ..
    cd"
        .to_string(),
        "pwd" => "\
pwd
    Shows the current folder on the peer, from the top of its shared folder ('/').
example:
    pwd"
        .to_string(),
        "jobs" => "\
jobs
    The background downloads in flight: job number, bytes so far and in all, mean
    rate, time left at that rate, and the command.
example:
    jobs"
            .to_string(),
        "kill" => "\
kill <job>
    Cancels background download <job> (the number 'jobs' shows; %<job> works too).
    Nothing partial is left; a previous local version of the file is untouched.
examples:
    kill 1
    kill %2"
            .to_string(),
        "wait" => "\
wait
    Waits until every background download has ended, showing a progress bar for each,
    then prints how each ended. Ctrl-C stops waiting; the downloads go on.
example:
    wait"
            .to_string(),
        "bg" => "\
bg download tcp|udp <file> [--max-rate RATE]
download tcp|udp <file> [--max-rate RATE] &
bg get <file|pattern|folder>
    Runs a download in the background; see 'help download' and 'help jobs'.
examples:
    bg download udp data/big.bin
    download tcp \"music/song one.mp3\" &"
            .to_string(),
        "history" => "\
history [N] [WORD]
    The requests this box has made (to peers) and served (to peers), oldest first,
    with their time, whether this box made or served each, the peer and the result.
    Kept across restarts in .boxsync/history.jsonl. N shows only the last N; WORD only
    those that mention it (in the request, the peer, the result, or 'made'/'served'),
    ignoring case; both together give the last N of those.
examples:
    history
    history 20
    history download
    history served 5"
            .to_string(),
        "peer" => "\
peer
    Shows the current peer, as ID@HOST:PORT.
peer ID@HOST:PORT
    Switches the current peer (the next command connects to it). ID is the peer's
    box ID (`boxsync id` on it prints it): the connection is refused unless that box
    answers, and this box trusts it for this run.
examples:
    peer
    peer XRWFKWX-TW6XBBF-RUTRGDZ-QFEVMHM-MLRLERD-ZXHX5RS-5S6CRQQ-TBLGNAH@127.0.0.1:7002"
            .to_string(),
        "peers" => "\
peers
    The peers of this session (* marks the current one) and every box this box
    trusts: kept (`boxsync trust ID`) or for this run only (--peer, --trust).
example:
    peers"
            .to_string(),
        "sync" => "\
sync status (or: sync)
    Auto-sync's state: on or paused, and for each peer its last round, what it
    brought and sent, conflicts and the last error; then each file being received:
    bytes done of its size, rate and time left. (From another terminal:
    boxsync status -d DIR.)
sync now
    Starts a round with every peer at once instead of at the next rescan, waits for
    it (30 s at most; Ctrl-C stops waiting, the round goes on) and says what it did
    with each peer: files received, moved and deleted here, conflicts, failures, or
    nothing to do. (What this box changed, each peer pulls in its own rounds.) While
    sync is paused it runs nothing and says so.
sync on
    Resumes auto-sync (a round starts at once).
sync off
    Pauses auto-sync: no round runs until 'sync on'. The shell's own commands still
    work. 'sync on' and 'sync off' then show the state, as 'sync status' does.
sync allow-deletes
    When a folder lost most of what was in sync at once, sync pauses (an unmounted
    disk must not empty the peers). If the deletions are meant, this lets the next
    round carry them out, once; the peers are told, and their guard lets them too.
Auto-sync runs only with peers given by --peer and a --sync period other than 0.
examples:
    sync
    sync now
    sync off"
            .to_string(),
        "trash" => "\
trash
    How many versions the trash holds here, and their size. Everything sync replaces
    or deletes goes there first, for --trash-days (30 by default).
trash list [PATH]
    The versions kept, of one file or of everything in a folder: path, version
    (1 is the newest), when it went to the trash (UTC) and its size.
trash restore PATH [--version N]
    Puts version N (1, the newest, by default) back at its name; what is there now
    goes to the trash first, so nothing is lost. Sync then carries it to the peers.
examples:
    trash
    trash list docs
    trash restore docs/report.txt --version 2"
            .to_string(),
        "help" => "\
help [command]
    The list of commands, or details and examples for one.
examples:
    help
    help download"
            .to_string(),
        "quit" => "\
quit | exit
    Leaves the shell (Ctrl-D too); the box's server stops with it. With background
    downloads in flight, asks first (they are cancelled).
example:
    quit"
            .to_string(),
        other => format!("no help for '{other}'; type 'help' for the list of commands"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::command::COMMANDS;

    /// Every command the overview lists has its own help (`help sync` once had none).
    #[test]
    fn every_command_has_help() {
        for (word, _) in COMMANDS {
            let help = text(Some(word));
            assert!(!help.starts_with("no help"), "{word}: {help}");
            assert!(help.starts_with(word), "{word}: {help}");
        }
        assert!(text(Some("sync")).contains("sync now"));
        assert!(text(Some("nonsense")).starts_with("no help for 'nonsense'"));
    }
}
