//! The layers of `tracer/src` depend downwards only: kernel adapters know nothing of sinks or
//! commands, sinks nothing of commands (the core is a crate of its own, so its rule is its
//! Cargo.toml). A path that reaches up a layer fails here, naming the file and the line.

use std::path::Path;

/// Every `crate::<layer>` path in the `.rs` files under `dir`, as "file:line: text".
fn upward_paths(dir: &Path, forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source file");
            // `use crate::{a::b, c::d}` groups span lines: look at whole statements too.
            let flat = text.replace('\n', " ");
            for layer in forbidden {
                let direct = format!("crate::{layer}::");
                let grouped = flat.split("use crate::{").skip(1).any(|g| {
                    g.split("};").next().is_some_and(|g| {
                        g.split(',')
                            .any(|item| item.trim().starts_with(&format!("{layer}::")))
                    })
                });
                for (n, line) in text.lines().enumerate() {
                    if line.contains(&direct) {
                        found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
                if grouped {
                    found.push(format!(
                        "{}: a `use crate::{{..}}` group names {layer}",
                        path.display()
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn kernel_adapters_and_sinks_do_not_reach_up_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = upward_paths(&src.join("kernel"), &["sinks", "commands"]);
    wrong.extend(upward_paths(&src.join("sinks"), &["commands"]));
    assert!(
        wrong.is_empty(),
        "paths that reach up a layer:\n{}",
        wrong.join("\n")
    );
}
