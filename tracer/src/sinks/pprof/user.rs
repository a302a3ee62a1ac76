//! The user-lock profile as pprof, with the kernel-lock profile's conventions (sample types
//! `contentions/count` and `delay/nanoseconds`, a synthetic root frame naming the lock, low-
//! cardinality labels), named `user_lock`. User frames are symbolised already (function, file,
//! line) and keep their module as a mapping with its build id and the frame's file offset as
//! the address: a remote symboliser (Parca, Pyroscope) can do better where debug information
//! was missing here, and no address in the process (its layout) leaves the host. Kernel frames
//! follow the user ones under `[kernel.kallsyms]`, by name.

use std::collections::HashMap;

use super::{
    gzipped,
    proto::{Function, Label, Line, Location, Mapping, PProfile, PSample},
    ContentionTypes, Tables,
};
use crate::core::user_profile::{op_name, UserFrame, UserProfile};

/// Locations by (mapping, offset, function, file, line), mappings by (module, build id).
#[derive(Default)]
struct Places {
    mappings: Vec<Mapping>,
    mapping_of: HashMap<(String, String), u64>,
    locations: Vec<Location>,
    location_of: HashMap<(u64, u64, String, String, u32), u64>,
    functions: Vec<Function>,
    function_of: HashMap<(String, String), u64>,
}

impl Places {
    fn mapping(&mut self, t: &mut Tables, module: &str, build_id: &str, frames: bool) -> u64 {
        let key = (module.to_owned(), build_id.to_owned());
        if let Some(&id) = self.mapping_of.get(&key) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        self.mappings.push(Mapping {
            id,
            // Addresses are file offsets: the mapping spans the whole file from offset 0.
            memory_start: 0,
            memory_limit: if frames { u64::MAX } else { 0 },
            file_offset: 0,
            filename: t.string(module),
            build_id: t.string(build_id),
            has_functions: true,
            has_filenames: frames,
            has_line_numbers: frames,
        });
        self.mapping_of.insert(key, id);
        id
    }

    fn function(&mut self, t: &mut Tables, name: &str, file: &str) -> u64 {
        let key = (name.to_owned(), file.to_owned());
        if let Some(&id) = self.function_of.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let name_id = t.string(name);
        self.functions.push(Function {
            id,
            name: name_id,
            system_name: name_id,
            filename: t.string(file),
        });
        self.function_of.insert(key, id);
        id
    }

    fn location(&mut self, t: &mut Tables, mapping: u64, f: &UserFrame) -> u64 {
        let file = f.file.clone().unwrap_or_default();
        let line = f.line.unwrap_or(0);
        let address = f.offset.unwrap_or(0);
        let key = (mapping, address, f.function.clone(), file.clone(), line);
        if let Some(&id) = self.location_of.get(&key) {
            return id;
        }
        let function_id = self.function(t, &f.function, &file);
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location {
            id,
            mapping_id: mapping,
            address,
            line: vec![Line {
                function_id,
                line: i64::from(line),
            }],
        });
        self.location_of.insert(key, id);
        id
    }
}

/// The profile, gzipped. `time_ns`: when it was taken (Unix time); `duration_ns`: the window.
pub fn encode(profile: &UserProfile, time_ns: i64, duration_ns: i64) -> Vec<u8> {
    let mut t = Tables::new();
    let mut p = Places::default();
    let types = ContentionTypes::new(&mut t);
    let kernel = p.mapping(&mut t, "[kernel.kallsyms]", "", false);
    let synthetic = p.mapping(&mut t, "[faultline]", "", false);
    let (k_lock, k_op, k_comm, k_pid) = (
        t.string("lock"),
        t.string("op"),
        t.string("comm"),
        t.string("pid"),
    );
    let samples = profile
        .samples
        .iter()
        .map(|s| {
            let mut location_id: Vec<u64> = s
                .user_stack
                .iter()
                .map(|f| {
                    let m = match &f.module {
                        Some(module) => {
                            let build_id = f.build_id.clone().unwrap_or_default();
                            p.mapping(&mut t, module, &build_id, true)
                        }
                        None => synthetic,
                    };
                    p.location(&mut t, m, f)
                })
                .collect();
            // Leaf first: the kernel frames (where the task sleeps) come before user space's.
            let kernel_ids: Vec<u64> = s
                .kernel_stack
                .iter()
                .map(|name| {
                    p.location(
                        &mut t,
                        kernel,
                        &UserFrame {
                            function: name.clone(),
                            ..UserFrame::default()
                        },
                    )
                })
                .collect();
            location_id.splice(0..0, kernel_ids);
            let root = UserFrame {
                function: s.root_frame(),
                ..UserFrame::default()
            };
            location_id.push(p.location(&mut t, synthetic, &root));
            let mut label = vec![Label {
                key: k_op,
                str: t.string(op_name(s.op)),
            }];
            if let Some(lock) = &s.lock {
                label.push(Label {
                    key: k_lock,
                    str: t.string(lock),
                });
            }
            if let Some(comm) = &s.comm {
                label.push(Label {
                    key: k_comm,
                    str: t.string(comm),
                });
            }
            label.push(Label {
                key: k_pid,
                str: t.string(&s.key.pid.to_string()),
            });
            PSample {
                location_id,
                value: vec![
                    i64::try_from(s.count).unwrap_or(i64::MAX),
                    i64::try_from(s.total_ns).unwrap_or(i64::MAX),
                ],
                label,
            }
        })
        .collect();
    let mut comment = vec![t.string(
        "faultline: every lock-shaped futex sleep that ended (a PI futex, or a wait expecting what a lock waiter expects: pthread mutexes and rwlocks, runtimes' futex locks); user stacks by frame pointers: code built without them shows few frames; a sleep's kernel frames are taken 1 in 64 per CPU and futex command, the others show the last ones taken",
    )];
    if profile.table_full > 0 {
        comment.push(t.string(&format!(
            "faultline: {} sleeps left out: the profile's table was full",
            profile.table_full
        )));
    }
    if profile.no_stack > 0 {
        comment.push(t.string(&format!(
            "faultline: {} stacks could not be captured or stored",
            profile.no_stack
        )));
    }
    let msg = PProfile {
        sample_type: types.sample_type,
        sample: samples,
        mapping: p.mappings,
        location: p.locations,
        function: p.functions,
        string_table: t.strings,
        time_nanos: time_ns,
        duration_nanos: duration_ns,
        period_type: types.period_type,
        period: 1,
        comment,
        default_sample_type: types.default_sample_type,
    };
    gzipped(&msg)
}
