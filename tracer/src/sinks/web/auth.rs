//! Basic authentication against bcrypt hashes, and the rate limit on wrong credentials.
//!
//! bcrypt is slow on purpose (tens of milliseconds of CPU at cost 10), which makes every
//! password check a way to spend the agent's CPU. So: a check that succeeded once is
//! remembered (by a SHA-256 of user, password and hash, never the password itself) until the
//! config changes, so a scraper costs one bcrypt per config; checks run on the blocking pool,
//! at most two at a time; and each client that sent wrong credentials spends a token from a
//! bucket (10, refilled one a second), after which it gets 429 with Retry-After, without any
//! bcrypt, until a token is back. Known good credentials pass even then, so a scraper sharing
//! an address with a guesser keeps scraping.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine as _;

/// Credentials remembered as good, at most; past that the memory starts over.
const MAX_REMEMBERED: usize = 256;

/// The configured users and what was already checked.
pub struct Users {
    hashes: BTreeMap<String, String>,
    verified: Mutex<HashSet<[u8; 32]>>,
}

/// `user:password` from an `Authorization: Basic …` header.
pub fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

impl Users {
    pub fn new(hashes: BTreeMap<String, String>) -> Self {
        Self {
            hashes,
            verified: Mutex::new(HashSet::new()),
        }
    }

    fn key(&self, user: &str, pass: &str) -> Option<[u8; 32]> {
        let hash = self.hashes.get(user)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [user, pass, hash] {
            ctx.update(part.as_bytes());
            ctx.update(&[0]);
        }
        ctx.finish().as_ref().try_into().ok()
    }

    /// Whether these credentials were already found good (cheap).
    pub fn remembered(&self, user: &str, pass: &str) -> bool {
        self.key(user, pass).is_some_and(|k| {
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&k)
        })
    }

    /// The bcrypt check (slow: call it off the async workers). An unknown user is checked
    /// against a known user's hash anyway, so the answer takes as long and does not tell which
    /// user names exist.
    pub fn verify(&self, user: &str, pass: &str) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(h) => (h, true),
            None => match self.hashes.values().next() {
                Some(h) => (h, false),
                None => return false,
            },
        };
        let good = bcrypt::verify(pass, hash).unwrap_or(false) && known;
        if good {
            if let Some(k) = self.key(user, pass) {
                let mut set = self.verified.lock().unwrap_or_else(|e| e.into_inner());
                if set.len() >= MAX_REMEMBERED {
                    set.clear();
                }
                set.insert(k);
            }
        }
        good
    }
}

/// Wrong-credential tokens per client.
pub struct Limiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    burst: f64,
    per_second: f64,
}

/// Clients tracked at most; past that, those whose bucket is full again are forgotten.
const MAX_CLIENTS: usize = 4096;

/// The bucket a client address spends from: IPv6 clients by their /64, which one host
/// usually holds whole.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new(10.0, 1.0)
    }
}

impl Limiter {
    pub fn new(burst: f64, per_second: f64) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            burst,
            per_second,
        }
    }

    fn level(&self, tokens: f64, at: Instant, now: Instant) -> f64 {
        (tokens + now.saturating_duration_since(at).as_secs_f64() * self.per_second).min(self.burst)
    }

    /// `Err(wait)` when the client has no token left: how long until it has one.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.get(&client_key(ip)) {
            Some(&(tokens, at)) => {
                let level = self.level(tokens, at, now);
                if level >= 1.0 {
                    Ok(())
                } else {
                    Err(Duration::from_secs_f64((1.0 - level) / self.per_second))
                }
            }
            None => Ok(()),
        }
    }

    /// The client sent wrong credentials: one token spent.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_CLIENTS {
            buckets.retain(|_, (t, at)| self.level(*t, *at, now) < self.burst);
            if buckets.len() >= MAX_CLIENTS {
                // Everyone is guessing: start over rather than grow.
                buckets.clear();
            }
        }
        let entry = buckets.entry(client_key(ip)).or_insert((self.burst, now));
        let level = self.level(entry.0, entry.1, now);
        *entry = ((level - 1.0).max(0.0), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded_and_others_are_not() {
        // "alice:s3cr:et"
        assert_eq!(
            basic_credentials(b"Basic YWxpY2U6czNjcjpldA=="),
            Some(("alice".into(), "s3cr:et".into()))
        );
        assert_eq!(basic_credentials(b"Bearer YWxpY2U6czNjcjpldA=="), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
    }

    #[test]
    fn good_credentials_are_remembered_and_unknown_users_fail() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let users = Users::new(BTreeMap::from([("alice".to_owned(), hash)]));
        assert!(!users.remembered("alice", "s3cret"));
        assert!(users.verify("alice", "s3cret"));
        assert!(users.remembered("alice", "s3cret"));
        assert!(!users.verify("alice", "wrong"));
        assert!(!users.remembered("alice", "wrong"));
        assert!(!users.verify("bob", "s3cret"));
    }

    #[test]
    fn a_client_runs_out_of_tokens_and_others_do_not() {
        let l = Limiter::new(3.0, 0.5);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(l.check(a).is_ok());
            l.failed(a);
        }
        let wait = l.check(a).expect_err("out of tokens");
        assert!(
            wait > Duration::from_millis(1000) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert!(l.check(b).is_ok());
        // One /64 is one client.
        let v6a: IpAddr = "2001:db8::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8::2".parse().expect("ip");
        for _ in 0..3 {
            l.failed(v6a);
        }
        assert!(l.check(v6b).is_err());
    }
}
