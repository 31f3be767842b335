//! Values people type, read the same way on the command line and in the shell: transfer
//! rates and peer addresses. Each refusal says what was expected.

use thiserror::Error;

/// Why a text is not a rate.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("bad rate '{0}': use bits per second like 500k, 50M or 1G, or bytes per second like 50MB")]
pub struct BadRate(pub String);

/// Why a text is not a peer address.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("bad peer address '{0}': expected HOST:PORT, like 127.0.0.1:7878")]
pub struct BadPeerAddress(pub String);

/// A rate as a person reads it: bits per second with a k/M/G suffix (`8M`), the form
/// [`parse_rate`] reads back.
pub fn format_rate(bytes_per_second: u64) -> String {
    let bits = bytes_per_second as f64 * 8.0;
    let (value, suffix) = if bits >= 1e9 {
        (bits / 1e9, "G")
    } else if bits >= 1e6 {
        (bits / 1e6, "M")
    } else if bits >= 1e3 {
        (bits / 1e3, "k")
    } else {
        (bits, "")
    };
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{suffix}")
}

/// Reads a rate: bits per second with an optional k/M/G suffix (`50M` is 50 Mbit/s), or
/// bytes per second when it ends in `B` (`50MB` is 50 megabytes/s). Returns bytes/second.
pub fn parse_rate(text: &str) -> Result<u64, BadRate> {
    let bad = || BadRate(text.to_string());
    let (number, bytes) = match text.strip_suffix('B') {
        Some(rest) => (rest, true),
        None => (text.strip_suffix("bit").unwrap_or(text), false),
    };
    let (digits, scale) = match number.char_indices().last() {
        Some((i, 'k' | 'K')) => (&number[..i], 1e3),
        Some((i, 'm' | 'M')) => (&number[..i], 1e6),
        Some((i, 'g' | 'G')) => (&number[..i], 1e9),
        _ => (number, 1.0),
    };
    let value: f64 = digits.parse().map_err(|_| bad())?;
    let bytes_per_second = value * scale / if bytes { 1.0 } else { 8.0 };
    if !bytes_per_second.is_finite() || bytes_per_second < 1.0 {
        return Err(bad());
    }
    Ok(bytes_per_second as u64)
}

/// Accepts `HOST:PORT` (and `[v6]:PORT`) with a valid port number; gives it back.
pub fn check_peer_address(addr: &str) -> Result<&str, BadPeerAddress> {
    let bad = || BadPeerAddress(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A formatted rate reads back as the same rate.
    #[test]
    fn rates_read_back() {
        for rate in [125, 100_000, 6_250_000, 125_000_000] {
            assert_eq!(parse_rate(&format_rate(rate)).unwrap(), rate);
        }
        assert_eq!(format_rate(1_000_000), "8M");
    }

    /// A peer address needs a host and a port from 1 to 65535.
    #[test]
    fn peer_addresses() {
        assert_eq!(check_peer_address("127.0.0.1:7002"), Ok("127.0.0.1:7002"));
        assert!(check_peer_address("[::1]:7002").is_ok());
        for bad in ["", "host", ":7002", "host:0", "host:70000", "host:port"] {
            assert_eq!(
                check_peer_address(bad),
                Err(BadPeerAddress(bad.to_string()))
            );
        }
    }
}
