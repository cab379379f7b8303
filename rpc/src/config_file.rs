//! Daemon settings from a TOML file (`--config FILE`), under environment variables and
//! flags: a flag wins over its environment variable, which wins over the file, which wins
//! over the default. Each key of the file is the name of a long flag (`listen`,
//! `down-after` or `down_after`, …) and its value what the flag would take: a string, a
//! number, `true` for a flag without a value, or an array for a flag given several times.
//!
//! The file is turned into flags placed before the command line's, and parsed with the
//! command's own definition, so it is checked exactly as flags are and `--help` documents
//! both. A file setting whose environment variable is set is left out.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{CommandFactory, FromArgMatches};

/// Parses `argv` as `T`, with the settings of the `--config FILE` it names (if any).
pub fn parse<T: CommandFactory + FromArgMatches>(argv: Vec<OsString>) -> anyhow::Result<T> {
    parse_with(argv, |name| std::env::var_os(name).is_some())
}

/// [`parse`], with `is_set` telling which environment variables are set.
fn parse_with<T: CommandFactory + FromArgMatches>(
    argv: Vec<OsString>,
    is_set: impl Fn(&std::ffi::OsStr) -> bool,
) -> anyhow::Result<T> {
    let command = T::command().args_override_self(true);
    let mut merged = argv.clone();
    if let Some(file) = config_path(&argv) {
        let from_file = file_args(&command, &file, is_set)?;
        merged.splice(1..1, from_file);
    }
    let matches = command.try_get_matches_from(merged).unwrap_or_else(|e| e.exit());
    Ok(T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

/// The file `--config FILE` or `--config=FILE` names.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_str()?;
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// The flags `file`'s settings stand for, checked against `command`'s.
fn file_args(
    command: &clap::Command,
    file: &Path,
    is_set: impl Fn(&std::ffi::OsStr) -> bool,
) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read config file {}", file.display()))?;
    let table: toml::Table =
        text.parse().with_context(|| format!("{} is not valid TOML", file.display()))?;
    let mut args = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(flag.as_str()))
        else {
            bail!("{}: unknown setting {key:?} (see --help for the flags)", file.display());
        };
        if flag == "config" {
            bail!("{}: a config file cannot name another", file.display());
        }
        // The environment variable, if set, wins over the file.
        if arg.get_env().is_some_and(&is_set) {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        for value in values {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(true) if !arg.get_action().takes_values() => {
                    args.push(format!("--{flag}").into());
                    continue;
                }
                toml::Value::Boolean(false) if !arg.get_action().takes_values() => continue,
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    bail!("{}: setting {key:?} cannot be {}", file.display(), other.type_str())
                }
            };
            args.push(format!("--{flag}={text}").into());
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Args {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: String,
        #[arg(long, default_value_t = 10)]
        down_after: u64,
        #[arg(long, env = "SHARDFS_CONFIG_TEST_SECRET")]
        secret_file: Option<PathBuf>,
        #[arg(long)]
        verbose: bool,
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("daemon").chain(args.iter().copied()).map(OsString::from).collect()
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("daemon.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:7100\"\ndown_after = 30\nsecret-file = \"/from/file\"\nverbose = true\n",
        )
        .unwrap();
        let config = file.to_str().unwrap();
        let args: Args = parse(argv(&["--config", config])).unwrap();
        assert_eq!((args.listen.as_str(), args.down_after), ("0.0.0.0:7100", 30));
        assert_eq!(args.secret_file.as_deref(), Some(Path::new("/from/file")));
        assert!(args.verbose);
        let args: Args =
            parse(argv(&[&format!("--config={config}"), "--down-after", "5"])).unwrap();
        assert_eq!((args.listen.as_str(), args.down_after), ("0.0.0.0:7100", 5));
        // With its environment variable set, the file's setting is left to the environment
        // (which clap reads; here it is only said to be set, so the default shows).
        let env_set = |name: &std::ffi::OsStr| name == "SHARDFS_CONFIG_TEST_SECRET";
        let args: Args = parse_with(argv(&["--config", config]), env_set).unwrap();
        assert_eq!(args.secret_file, None);
        let args: Args = parse(argv(&["--config", config, "--secret-file", "/from/flag"])).unwrap();
        assert_eq!(args.secret_file.as_deref(), Some(Path::new("/from/flag")));
        let args: Args = parse(argv(&[])).unwrap();
        assert_eq!((args.listen.as_str(), args.down_after), ("127.0.0.1:7000", 10));
    }

    #[test]
    fn unknown_settings_and_bad_files_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("daemon.toml");
        let config = file.to_str().unwrap().to_owned();
        let error = |text: &str| {
            std::fs::write(&file, text).unwrap();
            parse::<Args>(argv(&["--config", &config])).unwrap_err().to_string()
        };
        assert!(error("lisen = \"x\"\n").contains("unknown setting \"lisen\""));
        assert!(error("listen = [\"a\", {x = 1}]\n").contains("cannot be"));
        assert!(error("listen = \n").contains("is not valid TOML"));
        assert!(error("config = \"other.toml\"\n").contains("cannot name another"));
        let missing = parse::<Args>(argv(&["--config", "/no/such.toml"])).unwrap_err();
        assert!(missing.to_string().contains("cannot read config file /no/such.toml"));
    }
}
