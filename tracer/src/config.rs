//! The agent's config file (TOML). Every key is also a flag and an environment variable; the
//! file only fills what neither set: flag > environment > file > default. It is applied by
//! exporting each key as its `FAULTLINE_*` variable before the command line is parsed, so clap
//! keeps one definition of every setting, its type and its validation.

use std::{ffi::OsString, fs, path::PathBuf};

/// Config keys and their environment variables (each also a `--flag` with dashes).
pub const KEYS: [(&str, &str); 28] = [
    ("attach", "FAULTLINE_ATTACH"),
    ("wait_threshold", "FAULTLINE_WAIT_THRESHOLD"),
    ("hold_threshold", "FAULTLINE_HOLD_THRESHOLD"),
    ("max_tasks", "FAULTLINE_MAX_TASKS"),
    ("mmap_lock_only", "FAULTLINE_MMAP_LOCK_ONLY"),
    ("stall_threshold", "FAULTLINE_STALL_THRESHOLD"),
    ("rwr_threshold", "FAULTLINE_RWR_THRESHOLD"),
    ("deadlock_confirm", "FAULTLINE_DEADLOCK_CONFIRM"),
    ("listen", "FAULTLINE_LISTEN"),
    ("web_config_file", "FAULTLINE_WEB_CONFIG_FILE"),
    ("state_dir", "FAULTLINE_STATE_DIR"),
    ("max_incidents", "FAULTLINE_MAX_INCIDENTS"),
    ("snapshot_interval", "FAULTLINE_SNAPSHOT_INTERVAL"),
    ("summary_interval", "FAULTLINE_SUMMARY_INTERVAL"),
    ("profile_idle_after", "FAULTLINE_PROFILE_IDLE_AFTER"),
    ("max_log_lines", "FAULTLINE_MAX_LOG_LINES"),
    ("detail", "FAULTLINE_DETAIL"),
    ("ring_buffer_size", "FAULTLINE_RING_BUFFER_SIZE"),
    ("self_metrics", "FAULTLINE_SELF_METRICS"),
    ("scope", "FAULTLINE_SCOPE"),
    ("uffd_ioctl_hooks", "FAULTLINE_UFFD_IOCTL_HOOKS"),
    ("record", "FAULTLINE_RECORD"),
    ("expose_addresses", "FAULTLINE_EXPOSE_ADDRESSES"),
    ("profile_entries", "FAULTLINE_PROFILE_ENTRIES"),
    ("profile_stacks", "FAULTLINE_PROFILE_STACKS"),
    ("profile_short_stacks", "FAULTLINE_PROFILE_SHORT_STACKS"),
    ("no_lock_profile", "FAULTLINE_NO_LOCK_PROFILE"),
    ("no_user_locks", "FAULTLINE_NO_USER_LOCKS"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    Read { path: String, message: String },
    #[error("config file {path}: unknown key `{key}` (known: {known})")]
    UnknownKey {
        path: String,
        key: String,
        known: String,
    },
    #[error("config file {path}: key `{key}` must be a string, number or boolean")]
    BadValue { path: String, key: String },
}

/// The config file named by `--config FILE`, `--config=FILE` or `FAULTLINE_CONFIG`.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("FAULTLINE_CONFIG").map(PathBuf::from)
}

/// The (environment variable, value) pairs a config file text sets.
pub fn parse(path: &str, text: &str) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Read {
            path: path.into(),
            message: e.message().to_owned(),
        })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let Some((_, env)) = KEYS.iter().find(|(k, _)| *k == key) else {
            return Err(ConfigError::UnknownKey {
                path: path.into(),
                known: KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
                key,
            });
        };
        let v = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            _ => {
                return Err(ConfigError::BadValue {
                    path: path.into(),
                    key,
                })
            }
        };
        out.push((*env, v));
    }
    Ok(out)
}

/// Reads the config file, if any, and exports what it sets that the environment does not.
/// Call before parsing the command line, while the process is single-threaded.
pub fn apply(args: &[OsString]) -> Result<(), ConfigError> {
    let Some(path) = config_path(args) else {
        return Ok(());
    };
    let shown = path.display().to_string();
    let text = fs::read_to_string(&path).map_err(|e| ConfigError::Read {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    for (env, value) in parse(&shown, &text)? {
        if std::env::var_os(env).is_none() {
            std::env::set_var(env, value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_their_environment_variables() {
        let pairs = parse(
            "f.toml",
            "listen = \"127.0.0.1:9999\"\nmax_tasks = 4096\nmmap_lock_only = true\nstall_threshold = \"2s\"\n",
        )
        .expect("parse");
        assert!(pairs.contains(&("FAULTLINE_LISTEN", "127.0.0.1:9999".into())));
        assert!(pairs.contains(&("FAULTLINE_MAX_TASKS", "4096".into())));
        assert!(pairs.contains(&("FAULTLINE_MMAP_LOCK_ONLY", "true".into())));
        assert!(pairs.contains(&("FAULTLINE_STALL_THRESHOLD", "2s".into())));
    }

    #[test]
    fn unknown_keys_and_bad_syntax_are_errors_naming_the_file() {
        let e = parse("f.toml", "stall_treshold = \"1s\"").expect_err("typo");
        assert!(
            e.to_string().contains("unknown key `stall_treshold`"),
            "{e}"
        );
        let e = parse("f.toml", "listen = ").expect_err("syntax");
        assert!(e.to_string().starts_with("config file f.toml:"), "{e}");
        let e = parse("f.toml", "listen = [1]").expect_err("array");
        assert!(e.to_string().contains("`listen`"), "{e}");
    }

    #[test]
    fn the_shipped_example_documents_and_sets_every_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/faultline.toml");
        let text = fs::read_to_string(path).expect("example config");
        // Every key appears, commented out, with a line of documentation above it.
        for (key, env) in KEYS {
            assert!(text.contains(&format!("# {key} = ")), "{key} is documented");
            assert!(
                text.contains(env),
                "{key} names its environment variable {env}"
            );
        }
        // Uncommented, the example is a valid config.
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# ").filter(|l| l.contains(" = ")))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse(path, &uncommented).expect("valid").len(), KEYS.len());
    }

    #[test]
    fn the_config_path_comes_from_the_flag_in_either_form() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&args(&["faultline", "agent", "--config", "/etc/f.toml"])),
            Some(PathBuf::from("/etc/f.toml"))
        );
        assert_eq!(
            config_path(&args(&["faultline", "agent", "--config=/x.toml"])),
            Some(PathBuf::from("/x.toml"))
        );
    }
}
