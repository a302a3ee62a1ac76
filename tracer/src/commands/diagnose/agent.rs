//! What a running agent adds: the mmap_lock read holders it saw (the kernel keeps only their
//! count) and who issued each userfaultfd's ioctls. Asked once, with a short timeout: a host
//! being diagnosed may have no agent, or a stuck one.

use std::{collections::BTreeMap, time::Duration};

use crate::core::{
    diagnosis::{
        snapshot::{AgentFacts, AgentHold, AgentUffd},
        Source,
    },
    event::Addr,
};

/// The agent's `/api/graph`, or None when it does not answer in time.
pub fn ask(addr: &str) -> Option<AgentFacts> {
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .timeout_global(Some(Duration::from_millis(500)))
            .build(),
    );
    let body = agent
        .get(&format!("http://{addr}/api/graph"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    parse(addr, &body)
}

/// The facts diagnose uses from an `/api/graph` document.
pub fn parse(addr: &str, body: &str) -> Option<AgentFacts> {
    let doc: serde_json::Value = serde_json::from_str(body).ok()?;
    let mut holders: BTreeMap<u32, Vec<AgentHold>> = BTreeMap::new();
    for e in doc["edges"].as_array()? {
        let source = match e["reason"].as_str() {
            Some("holds") => Source::Agent,
            Some("holds_inferred") => Source::AgentInferred,
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
        let f = parse("127.0.0.1:1", body).expect("parses");
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
        assert_eq!(parse("x", "not json"), None);
    }

    #[test]
    fn opaque_context_ids_give_no_ioctl_evidence_and_holds_still_count() {
        let body = r#"{"now_ns":1,"tasks":[],"cycles":[],
            "edges":[{"from":5,"to":6,"reason":"holds"}],
            "uffds":[{"uffd":"uffd-3f9a1c2b0e4d","resolvers":[9],"setup":[9]}]}"#;
        let f = parse("127.0.0.1:1", body).expect("parses");
        assert!(f.uffds.is_empty(), "{:?}", f.uffds);
        assert_eq!(f.holders[&5].len(), 1);
    }
}
