//! The Dockerfile, reviewed by a test since no Docker engine runs here: every path it copies
//! exists and is not excluded by `.dockerignore`, the build stage has every file Cargo.toml
//! names (cargo refuses to build when a declared target is missing, even with `--bin`), and the
//! runtime image runs the agent with the config where the DaemonSet mounts it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::deploy_dir;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One Dockerfile instruction: keyword (upper case) and the rest, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty() || trimmed.is_empty() {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head.trim_end());
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push(Instruction {
            keyword: keyword.to_uppercase(),
            args: args.trim().to_string(),
        });
        current.clear();
    }
    out
}

/// `(stage, flags, sources, destination)` of each COPY.
fn copies(instructions: &[Instruction]) -> Vec<(String, Vec<String>, Vec<String>, String)> {
    let mut stage = String::new();
    let mut out = Vec::new();
    for i in instructions {
        match i.keyword.as_str() {
            "FROM" => {
                let words: Vec<&str> = i.args.split_whitespace().collect();
                stage = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                    [image] => image.to_string(),
                    _ => panic!("FROM {}", i.args),
                };
            }
            "COPY" => {
                let (flags, mut paths): (Vec<String>, Vec<String>) = i
                    .args
                    .split_whitespace()
                    .map(str::to_string)
                    .partition(|w| w.starts_with("--"));
                let destination = paths.pop().expect("COPY destination");
                out.push((stage.clone(), flags, paths, destination));
            }
            _ => {}
        }
    }
    out
}

/// The JSON array form of CMD or ENTRYPOINT.
fn exec_form(instructions: &[Instruction], keyword: &str) -> Vec<String> {
    let found: Vec<&Instruction> = instructions
        .iter()
        .filter(|i| i.keyword == keyword)
        .collect();
    assert_eq!(found.len(), 1, "one {keyword}");
    serde_json::from_str(&found[0].args)
        .unwrap_or_else(|e| panic!("{keyword} must be a JSON array (exec form): {e}"))
}

/// Files Cargo.toml names: `path = "..."` of its targets, and benches/<name>.rs for a bench
/// without a path.
fn cargo_target_files() -> Vec<PathBuf> {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let mut files = Vec::new();
    let mut section = String::new();
    let mut name = None;
    let mut path = None;
    let mut flush = |section: &str, name: &mut Option<String>, path: &mut Option<String>| match (
        section,
        path.take(),
        name.take(),
    ) {
        (_, Some(p), _) => files.push(PathBuf::from(p)),
        ("[[bench]]", None, Some(n)) => files.push(PathBuf::from(format!("benches/{n}.rs"))),
        _ => {}
    };
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            flush(&section, &mut name, &mut path);
            section = line.to_string();
            continue;
        }
        if !["[lib]", "[[bin]]", "[[test]]", "[[bench]]"].contains(&section.as_str()) {
            continue;
        }
        let value = |key: &str| {
            let rest = line.strip_prefix(key)?.trim_start().strip_prefix('=')?;
            Some(rest.trim().trim_matches('"').to_string())
        };
        if let Some(v) = value("name") {
            name = Some(v);
        }
        if let Some(v) = value("path") {
            path = Some(v);
        }
    }
    flush(&section, &mut name, &mut path);
    files
}

#[test]
fn dockerfile_builds_from_what_exists_and_runs_what_the_daemonset_expects() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let instructions = instructions(&text);
    let copies = copies(&instructions);
    let ignored: Vec<String> = std::fs::read_to_string(root().join(".dockerignore"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();

    // Sources from the build context exist and are not ignored.
    for (_, flags, sources, _) in &copies {
        if flags.iter().any(|f| f.starts_with("--from")) {
            continue;
        }
        for source in sources {
            assert!(root().join(source).exists(), "COPY {source}: no such path");
            assert!(
                !ignored
                    .iter()
                    .any(|i| source == i || source.starts_with(&format!("{i}/"))),
                "COPY {source} is excluded by .dockerignore"
            );
        }
    }

    // The build stage holds every target Cargo.toml declares.
    let (build_stage, ..) = copies.first().expect("a COPY");
    let copied: Vec<&String> = copies
        .iter()
        .filter(|(stage, flags, ..)| stage == build_stage && flags.is_empty())
        .flat_map(|(_, _, sources, _)| sources)
        .collect();
    let targets = cargo_target_files();
    assert!(targets.len() >= 4, "Cargo.toml targets: {targets:?}");
    for target in &targets {
        assert!(
            root().join(target).is_file(),
            "Cargo.toml names {}",
            target.display()
        );
        assert!(
            copied.iter().any(|c| target.starts_with(c.as_str())),
            "the build stage does not copy {} (cargo needs every declared target)",
            target.display()
        );
    }
    for needed in ["Cargo.toml", "Cargo.lock"] {
        assert!(
            copied.iter().any(|c| *c == needed),
            "the build stage copies {needed}"
        );
    }

    // The runtime image: the binary at the ENTRYPOINT, the default config at the CMD's path,
    // and the CMD equal to the DaemonSet's args (which mount the ConfigMap there).
    let entrypoint = exec_form(&instructions, "ENTRYPOINT");
    assert_eq!(entrypoint.len(), 1, "ENTRYPOINT is the binary alone");
    let runtime: Vec<_> = copies
        .iter()
        .filter(|(stage, ..)| stage != build_stage)
        .collect();
    assert!(
        runtime.iter().any(|(_, flags, _, dest)| flags
            .iter()
            .any(|f| f == &format!("--from={build_stage}"))
            && *dest == entrypoint[0]),
        "the binary is copied from the build stage to {}",
        entrypoint[0]
    );
    let cmd = exec_form(&instructions, "CMD");
    let config_path = match cmd.as_slice() {
        [run, flag, path] if run == "run" && flag == "--config" => path.clone(),
        _ => panic!("CMD must be run --config PATH, got {cmd:?}"),
    };
    assert!(
        runtime
            .iter()
            .any(|(_, flags, sources, dest)| flags.is_empty()
                && sources == &["config/meshtap.yaml".to_string()]
                && *dest == config_path),
        "the documented defaults (config/meshtap.yaml) are copied to {config_path}"
    );
    let daemonset = super::yaml_documents(&deploy_dir().join("agent/daemonset.yaml"))
        .into_iter()
        .next()
        .unwrap();
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container.get("command").is_none(),
        "the DaemonSet keeps the ENTRYPOINT"
    );
    assert_eq!(
        container["args"],
        Value::from(cmd.clone()),
        "DaemonSet args = Dockerfile CMD"
    );
    let mounted = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| Path::new(&config_path).parent() == m["mountPath"].as_str().map(Path::new));
    assert!(
        mounted,
        "the DaemonSet mounts a volume at {config_path}'s directory"
    );

    // Non-root unless told otherwise (the DaemonSet says so explicitly, see daemonset.yaml).
    let users: Vec<&Instruction> = instructions
        .iter()
        .filter(|i| i.keyword == "USER")
        .collect();
    let user = users.last().expect("a USER instruction");
    let uid = user.args.split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "USER {}", user.args);
}

#[test]
fn the_dockerfile_parser_sees_continuations_and_stages() {
    let text = "FROM a AS build\n# note\nCOPY x ./x\nRUN one \\\n  two\nFROM b\nCOPY --from=build /o /p\nCMD [\"run\"]\n";
    let i = instructions(text);
    assert_eq!(i.len(), 6);
    assert_eq!(i[2].args, "one two");
    let c = copies(&i);
    assert_eq!(c[0].0, "build");
    assert_eq!(
        c[1],
        (
            "b".into(),
            vec!["--from=build".into()],
            vec!["/o".into()],
            "/p".into()
        )
    );
    assert_eq!(exec_form(&i, "CMD"), vec!["run".to_string()]);
}
