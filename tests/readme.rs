//! The documentation against the code: every relative link leads to a
//! file, every `make` target and command the README shows exists, and
//! every field of `info` and `workers` is named in docs/operating.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The Markdown pages a reader can reach: the README, ARCHITECTURE,
/// CHANGELOG and docs/*.md.
fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> =
        ["README.md", "ARCHITECTURE.md", "CHANGELOG.md"].iter().map(|p| repo().join(p)).collect();
    for entry in std::fs::read_dir(repo().join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages
}

/// The targets of `[text](target)` links in `text` (not images' alt text).
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].to_owned());
        }
    }
    targets
}

#[test]
fn every_relative_link_leads_to_a_file() {
    let mut broken = Vec::new();
    for page in pages() {
        let dir = page.parent().expect("dir").to_owned();
        for target in link_targets(&read(&page)) {
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            if path.is_empty() || path.contains(' ') {
                continue;
            }
            if !dir.join(path).exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links to nothing:\n{}", broken.join("\n"));
}

/// The Makefile's targets (`name: ...` at the start of a line).
fn make_targets() -> BTreeSet<String> {
    read(&repo().join("Makefile"))
        .lines()
        .filter_map(|line| {
            let (name, _) = line.split_once(':')?;
            (!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                .then(|| name.to_owned())
        })
        .collect()
}

/// Words that follow `prefix` in `text` (`make run` → `run`).
fn words_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        rest = &rest[at + prefix.len()..];
        let word: String =
            rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        if !word.is_empty() {
            words.insert(word);
        }
    }
    words
}

#[test]
fn every_make_target_and_command_the_readme_shows_exists() {
    let readme = read(&repo().join("README.md"));
    let targets = make_targets();
    for target in words_after(&readme, "make ") {
        // Prose such as "make sure" is not a target; targets are what the
        // README shows in code (`make x`, or on a line of its own).
        if !readme.contains(&format!("`make {target}"))
            && !readme.contains(&format!("\nmake {target}"))
        {
            continue;
        }
        assert!(targets.contains(&target), "`make {target}` is in the README, not in the Makefile");
    }
    assert!(readme.contains("make test"), "the README says how to test");
    // handoff-ctl's subcommands, as the README shows them (in code, or
    // run from target/release; not prose).
    let shown: BTreeSet<String> = words_after(&readme, "`handoff-ctl ")
        .into_iter()
        .chain(words_after(&readme, "release/handoff-ctl "))
        .collect();
    assert!(shown.contains("workers"), "{shown:?}");
    for sub in shown {
        if sub.starts_with('-') {
            continue;
        }
        let output = Command::new(bin("handoff-ctl")).args([&sub, "--help"]).output().expect("ctl");
        assert!(output.status.success(), "`handoff-ctl {sub}` is in the README: {output:?}");
    }
    // The master's flags the README shows.
    let help = Command::new(bin("handoff-master")).arg("--help").output().expect("master --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for flag in words_after(&readme, "--") {
        if !readme.contains(&format!("`--{flag}")) || flag.len() < 3 {
            continue;
        }
        let known = help.contains(&format!("--{flag}"))
            || ["json", "nocapture", "workspace", "bins", "smoke", "quick"]
                .contains(&flag.as_str());
        let worker_or_bench = ["work-us", "delay-ms", "capacity"].contains(&flag.as_str());
        assert!(
            known || worker_or_bench,
            "`--{flag}` is in the README, not in handoff-master --help"
        );
    }
}

/// The keys of a JSON object.
fn keys(value: &serde_json::Value) -> Vec<String> {
    value.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn every_field_of_info_and_workers_is_named_in_docs_operating() {
    let scratch = Scratch::new();
    let master =
        Master::start(&scratch, &["--workers", "1", "--mode", "reuseport", "--policy", "least"]);
    master.wait_for_log("worker registered", 1);
    let mut control = Control::connect(&master.run_dir);
    let info = control.ask("info");
    let rows = control.ask("workers");
    let row = rows["workers"].get(0).cloned().expect("a worker row");
    let doc = read(&repo().join("docs/operating.md"));
    let missing: Vec<String> = keys(&info)
        .into_iter()
        .chain(keys(&row))
        .filter(|key| !doc.contains(&format!("`{key}`")))
        .collect();
    assert!(missing.is_empty(), "fields docs/operating.md does not name: {missing:?}");
    assert!(keys(&info).len() > 40 && keys(&row).len() > 20, "{info}\n{row}");
}

/// `rust-version` in Cargo.toml is what the build really needs: at least
/// the highest `rust-version` of every locked dependency (read from the
/// sources cargo downloaded to build them).
#[test]
fn the_declared_rust_version_covers_every_dependency() {
    fn version(text: &str) -> Vec<u32> {
        text.split('.').filter_map(|part| part.parse().ok()).collect()
    }
    fn rust_version(manifest: &str) -> Option<String> {
        manifest.lines().find_map(|line| {
            let value = line.strip_prefix("rust-version")?.trim_start().strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
    }
    let declared = rust_version(&read(&repo().join("Cargo.toml"))).expect("rust-version");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    let sources: Vec<PathBuf> = std::fs::read_dir(cargo_home.join("registry/src"))
        .expect("cargo's registry sources (the build downloaded them)")
        .flatten()
        .map(|entry| entry.path())
        .collect();
    let lock = read(&repo().join("Cargo.lock"));
    let mut needs: Vec<(Vec<u32>, String)> = Vec::new();
    let mut checked = 0;
    for package in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            package.lines().find_map(|line| {
                line.strip_prefix(key)?
                    .trim_start()
                    .strip_prefix("= ")?
                    .trim()
                    .strip_prefix('"')?
                    .strip_suffix('"')
                    .map(str::to_owned)
            })
        };
        let (Some(name), Some(ver), Some(_)) = (field("name"), field("version"), field("source"))
        else {
            continue;
        };
        let Some(manifest) = sources
            .iter()
            .map(|dir| dir.join(format!("{name}-{ver}")).join("Cargo.toml"))
            .find(|path| path.exists())
        else {
            continue;
        };
        checked += 1;
        if let Some(needed) = rust_version(&read(&manifest)) {
            needs.push((version(&needed), format!("{name} {ver} needs {needed}")));
        }
    }
    assert!(checked > 50, "only {checked} dependencies found in {}", cargo_home.display());
    let highest = needs.iter().max().expect("some dependency states its rust-version");
    assert!(
        version(&declared) >= highest.0,
        "Cargo.toml says rust-version {declared}, but {}",
        highest.1
    );
}
