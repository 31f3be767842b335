//! The interactive shell driven through a pseudo-terminal, as a person would use it.

use std::process::Command;

use crate::util::{TestBox, binary};

/// Typing commands at the prompt shows tables; errors keep the prompt alive; quit leaves.
#[tokio::test(flavor = "multi_thread")]
async fn interactive_shell_through_a_pty() {
    let b = TestBox::start().await;
    b.write("notes/hello world.txt", b"hello");
    let dir = tempfile::tempdir().unwrap();
    let peer = b.addr.to_string();
    let dir_path = dir.path().display().to_string();
    let result = tokio::task::spawn_blocking(move || -> Result<(), rexpect::error::Error> {
        let mut command = Command::new(binary());
        // Auto-sync off: this test downloads by hand.
        command.args([
            "-d",
            &dir_path,
            "-l",
            "127.0.0.1:0",
            "-p",
            &peer,
            "--sync",
            "0",
        ]);
        command.env("NO_COLOR", "1");
        let mut shell = rexpect::session::spawn_command(command, Some(15_000))?;
        shell.exp_string(&format!("boxsync [{peer}]> "))?;
        // Once a request has reached the peer, the prompt says so. (rexpect reads the
        // pty byte by byte, so the needle is spelled the same way.)
        let prompt = crate::util::as_pty_bytes(&format!("boxsync [{peer} ✓]> "));
        shell.send_line("index longlist")?;
        shell.exp_string("NAME")?;
        shell.exp_string("notes/hello world.txt")?;
        shell.exp_string(&prompt)?;
        shell.send_line("frobnicate")?;
        shell.exp_string("unknown command 'frobnicate'")?;
        shell.exp_string(&prompt)?;
        shell.send_line("download tcp \"notes/hello world.txt\"")?;
        shell.exp_string("MD5")?;
        shell.exp_string("5d41402abc4b2a76b9719d911017c592")?;
        shell.exp_string(&prompt)?;
        shell.send_line("quit")?;
        shell.exp_eof()?;
        Ok(())
    })
    .await
    .unwrap();
    result.expect("shell session");
    assert_eq!(
        std::fs::read(dir.path().join("notes/hello world.txt")).unwrap(),
        b"hello"
    );
}

/// With auto-sync on, the prompt shows its state, `sync status` shows the peer, and a file
/// of the peer's arrives by itself.
#[tokio::test(flavor = "multi_thread")]
async fn prompt_shows_sync_state() {
    let b = TestBox::start().await;
    b.write("arrives.txt", b"by itself");
    let dir = tempfile::tempdir().unwrap();
    let peer = b.addr.to_string();
    let dir_path = dir.path().display().to_string();
    let local = dir.path().join("arrives.txt");
    let result = tokio::task::spawn_blocking(move || -> Result<(), rexpect::error::Error> {
        let mut command = Command::new(binary());
        command.args(["-d", &dir_path, "-l", "127.0.0.1:0", "-p", &peer]);
        command.env("NO_COLOR", "1");
        let mut shell = rexpect::session::spawn_command(command, Some(15_000))?;
        shell.exp_string("boxsync [")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !local.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        shell.send_line("sync status")?;
        shell.exp_string("auto-sync on")?;
        shell.exp_string(&peer)?;
        shell.exp_string(&crate::util::as_pty_bytes(&format!(
            "boxsync [{peer} ✓ sync ✓]> "
        )))?;
        shell.send_line("quit")?;
        shell.exp_eof()?;
        Ok(())
    })
    .await
    .unwrap();
    result.expect("shell session");
    assert_eq!(
        std::fs::read(dir.path().join("arrives.txt")).unwrap(),
        b"by itself"
    );
}
