//! The lock-contention profile as pprof (`profile.proto` of google/pprof, gzipped), the format
//! `go tool pprof`, Parca and Grafana Pyroscope read. Sample types `contentions/count` and
//! `delay/nanoseconds`, period type `contentions/count`, as Go's contention profiles; but the
//! profile is named `kernel_lock`, never `mutex`, so no UI takes it for a Go mutex profile.
//!
//! Frames are symbolised already (one `[kernel.kallsyms]` mapping with `has_functions`), leaf
//! first, without addresses; each sample ends in a synthetic root frame naming its lock
//! (`lock:rtnl_mutex [mutex]`), so a flame graph groups by lock. Labels are low-cardinality:
//! lock, type, workload, the waiter's comm, and namespace, pod and container for pods. What the kernel dropped is said in the profile's comments.

use std::{collections::HashMap, io::Write as _};

use flate2::{write::GzEncoder, Compression};
use prost::Message;

mod proto;
pub mod user;

use proto::{Function, Label, Line, Location, Mapping, PProfile, PSample, ValueType};

use crate::core::lock_profile::{public_frame, Profile, Sample, StackSampling};

/// Strings, locations and functions, each stored once.
#[derive(Default)]
pub(super) struct Tables {
    pub(super) strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    locations: Vec<Location>,
    functions: Vec<Function>,
    location_of: HashMap<String, u64>,
}

impl Tables {
    pub(super) fn new() -> Self {
        let mut t = Self::default();
        // pprof requires string_table[0] == "".
        t.string("");
        t
    }

    pub(super) fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        id
    }

    /// The location of function `name` (one per function: frames carry no address here).
    fn location(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.location_of.get(name) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        let name_id = self.string(name);
        self.functions.push(Function {
            id,
            name: name_id,
            system_name: name_id,
            ..Function::default()
        });
        self.locations.push(Location {
            id,
            mapping_id: 1,
            line: vec![Line {
                function_id: id,
                ..Line::default()
            }],
            ..Location::default()
        });
        self.location_of.insert(name.to_owned(), id);
        id
    }
}

/// A sample's lock as the profile names it: never an address.
fn lock_label(s: &Sample) -> String {
    s.lock_name.public_label()
}

/// The root frame of a sample: its lock and type.
pub fn root_frame(s: &Sample) -> String {
    format!("lock:{} [{}]", lock_label(s), s.lock_type.name())
}

/// The profile, gzipped. `time_ns`: when it was taken (Unix time); `duration_ns`: the window it
/// covers.
pub fn encode(profile: &Profile, time_ns: i64, duration_ns: i64) -> Vec<u8> {
    // Short waits without a stack, split over their lock's sampled stacks (said in a comment).
    let profile = &profile.estimated();
    let mut t = Tables::new();
    let types = ContentionTypes::new(&mut t);
    let kernel = t.string("[kernel.kallsyms]");
    let (k_lock, k_type, k_workload) = (t.string("lock"), t.string("type"), t.string("workload"));
    let (k_comm, k_namespace, k_pod, k_container) = (
        t.string("comm"),
        t.string("namespace"),
        t.string("pod"),
        t.string("container"),
    );
    let samples = profile
        .samples
        .iter()
        .map(|s| {
            let mut location_id: Vec<u64> = s
                .stack
                .iter()
                .map(|f| t.location(&public_frame(f)))
                .collect();
            location_id.push(t.location(&root_frame(s)));
            let mut label = vec![
                Label {
                    key: k_lock,
                    str: t.string(&lock_label(s)),
                },
                Label {
                    key: k_type,
                    str: t.string(s.lock_type.name()),
                },
            ];
            let mut extra = |key: i64, value: Option<&str>| {
                if let Some(v) = value {
                    label.push(Label {
                        key,
                        str: t.string(v),
                    });
                }
            };
            extra(k_workload, s.workload.as_deref());
            extra(k_comm, s.comm.as_deref());
            if let Some(p) = &s.pod {
                extra(k_namespace, p.namespace.as_deref());
                extra(k_pod, Some(&p.pod));
                extra(k_container, p.container.as_deref());
            }
            PSample {
                location_id,
                value: vec![
                    i64::try_from(s.contended).unwrap_or(i64::MAX),
                    i64::try_from(s.total_ns).unwrap_or(i64::MAX),
                ],
                label,
            }
        })
        .collect();
    let mut comment: Vec<i64> = profile
        .drops
        .lines()
        .iter()
        .map(|l| t.string(&format!("faultline: {l}")))
        .collect();
    if profile
        .samples
        .iter()
        .any(|s| s.stack_sampling == StackSampling::Sampled)
    {
        comment.push(t.string(
            "faultline: the stacks of short waits (under 10 us) are sampled; their waits are \
             counted exactly by lock and split over their lock's sampled stacks",
        ));
    }
    let p = PProfile {
        sample_type: types.sample_type,
        sample: samples,
        mapping: vec![Mapping {
            id: 1,
            filename: kernel,
            has_functions: true,
            ..Mapping::default()
        }],
        location: t.locations,
        function: t.functions,
        string_table: t.strings,
        time_nanos: time_ns,
        duration_nanos: duration_ns,
        period_type: types.period_type,
        period: 1,
        comment,
        default_sample_type: types.default_sample_type,
    };
    gzipped(&p)
}

/// The value types of every faultline profile: how many waits (the default, and the period:
/// each is counted, not sampled) and how long they took.
struct ContentionTypes {
    sample_type: Vec<ValueType>,
    period_type: Option<ValueType>,
    /// An index into the string table, like every name in a profile.
    default_sample_type: i64,
}

impl ContentionTypes {
    fn new(t: &mut Tables) -> Self {
        let mut count = || ValueType {
            r#type: t.string("contentions"),
            unit: t.string("count"),
        };
        let (sample_count, period) = (count(), count());
        Self {
            sample_type: vec![
                sample_count,
                ValueType {
                    r#type: t.string("delay"),
                    unit: t.string("nanoseconds"),
                },
            ],
            period_type: Some(period),
            default_sample_type: t.string("contentions"),
        }
    }
}

/// The profile as served: the protobuf, gzipped (what `go tool pprof` and the
/// `/debug/pprof/` convention expect).
fn gzipped(p: &PProfile) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(&p.encode_to_vec());
    gz.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::core::{
        event::LockType,
        lock_profile::{Drops, LockName, Naming},
    };

    #[test]
    fn samples_carry_both_values_their_frames_and_a_root_per_lock() {
        let profile = Profile {
            samples: vec![Sample {
                lock: 0xffff_8881_0000_0010,
                lock_name: LockName {
                    name: "rtnl_lock".into(),
                    naming: Naming::Caller,
                },
                lock_type: LockType::Mutex,
                stack: vec!["rtnl_lock+0x5".into(), "dummy_init+0x10 [dummy]".into()],
                cgroup: None,
                workload: Some("systemd:a.service".into()),
                task: None,
                owner: None,
                contended: 3,
                total_ns: 3000,
                max_ns: 2000,
                stack_sampling: Default::default(),
                comm: None,
                pod: None,
            }],
            drops: Drops {
                waits: 4,
                table_full: 1,
                ..Drops::default()
            },
        };
        let mut profile = profile;
        // An unnamed lock and a frame kallsyms could not name: neither lets its address out.
        profile.samples.push(Sample {
            lock_name: LockName {
                name: "0xffff888100000020".into(),
                naming: Naming::Unnamed,
            },
            stack: vec!["0xffffffffc0400000".into()],
            ..profile.samples[0].clone()
        });
        let gz = encode(&profile, 1, 2);
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .expect("gzip");
        let p = PProfile::decode(&raw[..]).expect("protobuf");
        assert_eq!(p.string_table[0], "");
        let s = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(
            (s(p.sample_type[1].r#type), s(p.sample_type[1].unit)),
            ("delay", "nanoseconds")
        );
        assert_eq!(p.sample[0].value, vec![3, 3000]);
        let names: Vec<&str> = p.sample[0]
            .location_id
            .iter()
            .map(|id| s(p.function[*id as usize - 1].name))
            .collect();
        assert_eq!(
            names,
            vec![
                "rtnl_lock",
                "dummy_init [dummy]",
                "lock:caller:rtnl_lock [mutex]"
            ]
        );
        assert!(p
            .comment
            .iter()
            .any(|c| s(*c).contains("profile table was full")));
        // No address anywhere: not the unnamed lock's, not the unknown frame's.
        assert!(
            !p.string_table.iter().any(|x| x.contains("0xffff")),
            "{:?}",
            p.string_table
        );
        assert!(p.string_table.iter().any(|x| x == "lock:unnamed [mutex]"));
        assert!(p.string_table.iter().any(|x| x == "[unknown]"));
    }
}
