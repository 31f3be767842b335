//! Socket options shared by the server and the peer client.

use std::io;
use std::os::fd::AsFd;

/// Sets the TCP congestion control algorithm of a socket (`cubic`, `bbr`, `reno`: any
/// name in `/proc/sys/net/ipv4/tcp_available_congestion_control`), like iperf3's `-C`.
pub fn set_tcp_congestion(socket: &impl AsFd, algorithm: &str) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_tcp_congestion(socket, algorithm)?)
}

/// Whether the kernel offers `algorithm` for TCP congestion control.
pub fn tcp_congestion_available(algorithm: &str) -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .map(|list| list.split_whitespace().any(|a| a == algorithm))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The algorithm asked for is the one the socket then uses; a name the kernel does not
    /// know is refused with the kernel's error, as `setsockopt` gave it.
    #[test]
    fn sets_the_congestion_control_of_a_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let available =
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").unwrap();
        let algorithm = available.split_whitespace().next().unwrap();
        assert!(tcp_congestion_available(algorithm));
        set_tcp_congestion(&stream, algorithm).unwrap();
        assert_eq!(
            rustix::net::sockopt::tcp_congestion(&stream).unwrap(),
            algorithm
        );
        let refused = set_tcp_congestion(&stream, "no-such-algorithm").unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ENOENT));
    }
}
