//! What a running agent adds: the mmap_lock read holders it saw (the kernel keeps only their
//! count) and who issued each userfaultfd's ioctls. Asked once, with a short timeout: a host
//! being diagnosed may have no agent, or a stuck one.
//!
//! Where it is asked decides how much it is believed. On its Unix socket, with the server
//! checked (`peer`), its holds count as the agent's. Over TCP (`--agent ADDR`) any local user
//! could have answered first: its holds are labelled unverified and never make a deadlock
//! certain.

use std::{collections::BTreeMap, os::unix::net::UnixStream, path::Path, time::Duration};

use crate::core::{
    diagnosis::{
        snapshot::{AgentFacts, AgentHold, AgentUffd},
        Source,
    },
    event::Addr,
};
use crate::kernel::peer;

/// How long the agent has to answer.
const TIMEOUT: Duration = Duration::from_millis(500);

/// Which agent to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentAt {
    /// The agent's Unix socket in this run directory, checked before it is believed.
    RunDir(std::path::PathBuf),
    /// An address given explicitly, asked over HTTP; believed only as unverified.
    Http(String),
}

/// Asks the agent at `at`; None (after at most one warning line) when there is none to believe.
pub fn ask(at: &AgentAt) -> Option<AgentFacts> {
    match at {
        AgentAt::RunDir(dir) => ask_unix(dir),
        AgentAt::Http(addr) => {
            let facts = ask_http(addr)?;
            log::warn!(
                "the agent at {addr} answered over TCP, where any local user could have answered instead: its read holders are shown as unverified and make no deadlock certain (without --agent, diagnose asks the agent on its Unix socket and checks who answers)"
            );
            Some(facts)
        }
    }
}

/// The agent's `/api/graph` over `dir/agent.sock`, if its server is faultline run by root or
/// by the directory's owner. No socket: no agent, and nothing to say.
fn ask_unix(dir: &Path) -> Option<AgentFacts> {
    let path = dir.join(crate::sinks::unix_api::SOCKET);
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return None
        }
        Err(e) => {
            log::warn!(
                "cannot reach the agent at {} ({e}); going on without it",
                path.display()
            );
            return None;
        }
    };
    let trusted = peer::check_dir(dir).and_then(|owner| peer::check_peer(&stream, owner));
    if let Err(why) = trusted {
        log::warn!(
            "ignoring {}: {why}; going on without an agent",
            path.display()
        );
        return None;
    }
    let body = match peer::get(stream, "/api/graph", TIMEOUT) {
        Ok(b) => b,
        Err(e) => {
            log::warn!(
                "the agent at {} did not answer ({e}); going on without it",
                path.display()
            );
            return None;
        }
    };
    parse(&path.display().to_string(), &body, Trust::Verified)
}

/// The agent's `/api/graph` over HTTP, or None when it does not answer in time.
fn ask_http(addr: &str) -> Option<AgentFacts> {
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .timeout_global(Some(TIMEOUT))
            .build(),
    );
    let body = agent
        .get(&format!("http://{addr}/api/graph"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    parse(addr, &body, Trust::Unverified)
}

/// Whether the answer came from a server known to be the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    Verified,
    Unverified,
}

/// The facts diagnose uses from an `/api/graph` document.
pub fn parse(addr: &str, body: &str, trust: Trust) -> Option<AgentFacts> {
    let doc: serde_json::Value = serde_json::from_str(body).ok()?;
    let mut holders: BTreeMap<u32, Vec<AgentHold>> = BTreeMap::new();
    for e in doc["edges"].as_array()? {
        let source = match (e["reason"].as_str(), trust) {
            (Some("holds" | "holds_inferred"), Trust::Unverified) => Source::AgentUnverified,
            (Some("holds"), Trust::Verified) => Source::Agent,
            (Some("holds_inferred"), Trust::Verified) => Source::AgentInferred,
            _ => continue,
        };
        if let (Some(from), Some(to)) = (e["from"].as_u64(), e["to"].as_u64()) {
            holders.entry(from as u32).or_default().push(AgentHold {
                tid: to as u32,
                source,
            });
        }
    }
    let tids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_u64())
                    .map(|t| t as u32)
                    .collect()
            })
            .unwrap_or_default()
    };
    // Older agents do not list contexts: no ioctl evidence then. An agent that shows opaque
    // ids (its default) lists them under names diagnose cannot match to its own addresses.
    let listed = doc["uffds"].as_array().map_or(&[][..], Vec::as_slice);
    let uffds: Vec<AgentUffd> = listed
        .iter()
        .filter_map(|u| {
            let uffd: Addr = serde_json::from_value(u["uffd"].clone()).ok()?;
            Some(AgentUffd {
                uffd,
                resolvers: tids(&u["resolvers"]),
                setup: tids(&u["setup"]),
            })
        })
        .collect();
    if uffds.len() < listed.len() {
        log::warn!(
            "the agent at {addr} names userfaultfd contexts by opaque ids: its ioctl evidence is not used (an agent run with --expose-addresses on loopback shows the addresses diagnose matches)"
        );
    }
    Some(AgentFacts {
        addr: addr.to_owned(),
        holders,
        uffds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_and_uffd_ioctls_are_read_from_the_graph() {
        let body = r#"{"now_ns":1,"tasks":[],"cycles":[],
            "edges":[{"from":5,"to":6,"reason":"holds"},{"from":5,"to":7,"reason":"holds_inferred"},
                     {"from":8,"to":9,"reason":"uffd_handler"}],
            "uffds":[{"uffd":"0xabc","resolvers":[9],"setup":[9,10]}]}"#;
        let f = parse("127.0.0.1:1", body, Trust::Verified).expect("parses");
        assert_eq!(
            f.holders[&5],
            vec![
                AgentHold {
                    tid: 6,
                    source: Source::Agent
                },
                AgentHold {
                    tid: 7,
                    source: Source::AgentInferred
                }
            ]
        );
        assert!(!f.holders.contains_key(&8));
        assert_eq!(f.uffds[0].uffd, Addr(0xabc));
        assert_eq!(
            (f.uffds[0].resolvers.clone(), f.uffds[0].setup.clone()),
            (vec![9], vec![9, 10])
        );
        assert_eq!(parse("x", "not json", Trust::Verified), None);
    }

    #[test]
    fn holds_from_an_unverified_agent_are_never_certain() {
        let body = r#"{"edges":[{"from":5,"to":6,"reason":"holds"},{"from":5,"to":7,"reason":"holds_inferred"}]}"#;
        let f = parse("127.0.0.1:1", body, Trust::Unverified).expect("parses");
        assert!(
            f.holders[&5]
                .iter()
                .all(|h| h.source == Source::AgentUnverified && !h.source.is_certain()),
            "{:?}",
            f.holders
        );
    }

    #[test]
    fn opaque_context_ids_give_no_ioctl_evidence_and_holds_still_count() {
        let body = r#"{"now_ns":1,"tasks":[],"cycles":[],
            "edges":[{"from":5,"to":6,"reason":"holds"}],
            "uffds":[{"uffd":"uffd-3f9a1c2b0e4d","resolvers":[9],"setup":[9]}]}"#;
        let f = parse("127.0.0.1:1", body, Trust::Verified).expect("parses");
        assert!(f.uffds.is_empty(), "{:?}", f.uffds);
        assert_eq!(f.holders[&5].len(), 1);
    }
}
