//! Network namespaces joined to the host by a veth pair on a private /30 made for the test;
//! deleted when dropped (a panic included). The veth pair goes with its namespace.
#![allow(dead_code)]

use std::process::Command;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub struct Netns {
    pub name: String,
    host_veth: String,
    /// The host's end of the link.
    pub host_ip: String,
    /// The namespace's end of the link.
    pub ns_ip: String,
}

impl Netns {
    /// `tag` (one letter) and `index` make the names and the subnet unique per test run:
    /// 10.231.<pid-derived>.<4*index>/30.
    pub fn new(tag: char, index: u8) -> Self {
        let pid = std::process::id();
        let name = format!("fl{pid}{tag}");
        let host_veth = format!("flh{}{tag}", pid % 100_000);
        let ns_veth = format!("fln{}{tag}", pid % 100_000);
        let third = pid % 250;
        let base = u32::from(index) * 4;
        let (host_ip, ns_ip) = (
            format!("10.231.{third}.{}", base + 1),
            format!("10.231.{third}.{}", base + 2),
        );
        let ns = Self {
            name: name.clone(),
            host_veth: host_veth.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        let (host_cidr, ns_cidr) = (format!("{host_ip}/30"), format!("{ns_ip}/30"));
        let steps: [&[&str]; 7] = [
            &["netns", "add", &name],
            &[
                "link", "add", &host_veth, "type", "veth", "peer", "name", &ns_veth, "netns", &name,
            ],
            &["addr", "add", &host_cidr, "dev", &host_veth],
            &["link", "set", &host_veth, "up"],
            &["-n", &name, "addr", "add", &ns_cidr, "dev", &ns_veth],
            &["-n", &name, "link", "set", &ns_veth, "up"],
            &["-n", &name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            // `ns` is dropped on panic: what was made so far is removed.
            ip(step).unwrap_or_else(|e| panic!("setting up netns {name}: {e}"));
        }
        ns
    }

    /// The path `nsenter --net=` takes.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_veth]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
