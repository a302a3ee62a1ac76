//! The Host check on a loopback listener.
//!
//! Why: a web page on any site can make the operator's browser send requests to
//! `127.0.0.1:9720` once its own DNS name is rebound to 127.0.0.1 ("DNS rebinding"); the browser
//! then treats the agent's answers as the attacker's origin and hands them to its script. What
//! the browser cannot change is the Host header, which still names the attacker's domain. So on
//! a loopback listener only the names of the loopback address itself are served. A request with
//! no Host at all (HTTP/1.0 tools) is served: a browser always sends one.

use std::net::SocketAddr;

/// The Host values a loopback listener answers to, or `None` beyond loopback (where the name
/// clients use is not known, and TLS and authentication are the guard).
pub fn allowed_hosts(local: SocketAddr) -> Option<Vec<String>> {
    if !local.ip().is_loopback() {
        return None;
    }
    let port = local.port();
    let mut names = vec![
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        local.to_string(),
    ];
    // Default ports may be left out of the Host header.
    if port == 80 || port == 443 {
        names.extend(["127.0.0.1".into(), "localhost".into(), "[::1]".into()]);
        names.push(match local {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        });
    }
    names.sort();
    names.dedup();
    Some(names)
}

/// Whether a request's Host header passes `allowed` (see the module's comment).
pub fn host_ok(allowed: &[String], host: Option<&[u8]>) -> bool {
    let Some(host) = host else {
        return true;
    };
    let host = String::from_utf8_lossy(host).to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    allowed.iter().any(|a| a == host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_answers_only_to_its_own_names() {
        let allowed = allowed_hosts("127.0.0.1:9720".parse().expect("addr")).expect("loopback");
        for ok in [
            "127.0.0.1:9720",
            "localhost:9720",
            "LOCALHOST:9720",
            "[::1]:9720",
        ] {
            assert!(host_ok(&allowed, Some(ok.as_bytes())), "{ok}");
        }
        for bad in [
            "evil.example:9720",
            "127.0.0.1:80",
            "127.0.0.1",
            "localhost.evil.example:9720",
        ] {
            assert!(!host_ok(&allowed, Some(bad.as_bytes())), "{bad}");
        }
        assert!(host_ok(&allowed, None));
        assert!(allowed_hosts("0.0.0.0:9720".parse().expect("addr")).is_none());
        assert!(allowed_hosts("10.1.2.3:9720".parse().expect("addr")).is_none());
        let v6 = allowed_hosts("[::1]:80".parse().expect("addr")).expect("loopback");
        assert!(host_ok(&v6, Some(b"[::1]")));
    }
}
