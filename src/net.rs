//! Socket options shared by the server and the peer client.

use std::io;
use std::os::fd::AsRawFd;

/// Sets the TCP congestion control algorithm of a socket (`cubic`, `bbr`, `reno`: any
/// name in `/proc/sys/net/ipv4/tcp_available_congestion_control`), like iperf3's `-C`.
pub fn set_tcp_congestion(socket: &impl AsRawFd, algorithm: &str) -> io::Result<()> {
    let name = algorithm.as_bytes();
    // SAFETY: the pointer and length describe `name`, which outlives the call; the kernel
    // only reads from it.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the kernel offers `algorithm` for TCP congestion control.
pub fn tcp_congestion_available(algorithm: &str) -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .map(|list| list.split_whitespace().any(|a| a == algorithm))
        .unwrap_or(false)
}
