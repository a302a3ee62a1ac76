//! Which addresses the agent lets out: opaque ids by default, raw with `--expose-addresses`,
//! and only to a listener nobody off the host can reach.

use std::net::SocketAddr;

use crate::core::exposure::{AddrKey, Exposure};

#[derive(Debug, thiserror::Error)]
pub enum ExposureError {
    #[error("--expose-addresses needs a loopback --listen (127.0.0.0/8 or [::1]), not {0}: raw kernel addresses defeat KASLR for anyone who can reach the API")]
    NotLoopback(SocketAddr),
    #[error("cannot draw the key of the opaque address ids from the OS: {0}")]
    NoRandom(getrandom::Error),
}

/// Whether `listen` is reachable only from this host.
pub fn is_loopback(listen: &SocketAddr) -> bool {
    // `::ffff:127.0.0.1` is IPv4 loopback too.
    listen.ip().to_canonical().is_loopback()
}

/// The exposure of everything the agent hands out (API, alerts, incidents, log lines): raw
/// addresses when asked and the listener is loopback, else opaque ids under a key drawn now,
/// which lives as long as the agent (ids join across endpoints within one run, and mean
/// nothing after it).
pub fn choose(expose_addresses: bool, listen: &SocketAddr) -> Result<Exposure, ExposureError> {
    if expose_addresses {
        return if is_loopback(listen) {
            Ok(Exposure::Raw)
        } else {
            Err(ExposureError::NotLoopback(*listen))
        };
    }
    let mut key = [0u8; 16];
    getrandom::fill(&mut key).map_err(ExposureError::NoRandom)?;
    Ok(Exposure::Opaque(AddrKey::new(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn raw_addresses_are_served_on_loopback_only() {
        for ok in [
            "127.0.0.1:9720",
            "127.1.2.3:1",
            "[::1]:9720",
            "[::ffff:127.0.0.1]:9",
        ] {
            assert_eq!(choose(true, &at(ok)).expect(ok), Exposure::Raw, "{ok}");
        }
        for refused in [
            "0.0.0.0:9720",
            "[::]:9720",
            "10.0.0.5:9720",
            "[::ffff:10.0.0.5]:1",
        ] {
            let e = choose(true, &at(refused)).expect_err(refused).to_string();
            assert!(
                e.contains("--expose-addresses") && e.contains(refused) && !e.contains('\n'),
                "{e}"
            );
        }
    }

    #[test]
    fn by_default_every_run_draws_its_own_key() {
        let a = choose(false, &at("0.0.0.0:9720")).expect("opaque");
        let b = choose(false, &at("127.0.0.1:9720")).expect("opaque");
        assert!(!a.is_raw() && !b.is_raw());
        assert_ne!(a, b, "two runs share a key");
    }
}
