//! Man pages and shell completions for handoff's binaries, generated from
//! the same clap definitions that parse their flags, so they cannot drift.
//!
//! Each binary calls [`generate_if_asked`] first thing in `main`: with
//! `HANDOFF_GENERATE_DOCS=DIR` in the environment it writes
//! `DIR/man/<name>.1` and `DIR/completions/<name>.{bash,zsh,fish}` and
//! exits, instead of running. `make man` does that for all three.
//!
//! [`parse_or_exit`] is the whole front of the master's and the worker's
//! `main`: docs if asked, else the parsed flags, else the exit status for a
//! bad command line (EX_USAGE, 64; 0 for `--help`/`--version`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::process::ExitCode;

use clap_complete::Shell;

/// The environment variable that asks a binary for its docs.
pub const ENV: &str = "HANDOFF_GENERATE_DOCS";

/// Sections a man page gets beyond what clap knows: a title (`SIGNALS`,
/// `EXIT STATUS`) and its entries, a term and what it means.
pub type ManSection = (&'static str, &'static [(&'static str, &'static str)]);

/// Renders `sections` as roff, to follow clap_mangen's page.
fn roff_sections(sections: &[ManSection]) -> String {
    let escape = |text: &str| text.replace('\\', "\\e").replace('-', "\\-");
    let mut out = String::new();
    for (title, entries) in sections {
        out.push_str(&format!(".SH \"{title}\"\n"));
        for (term, meaning) in *entries {
            out.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", escape(term), escape(meaning)));
        }
    }
    out
}

/// If [`ENV`] names a directory, writes `command`'s man page and
/// completions there and returns the exit code to end with; otherwise
/// `None` (run normally).
pub fn generate_if_asked(command: clap::Command) -> Option<ExitCode> {
    generate_if_asked_with(command, &[])
}

/// [`generate_if_asked`], the man page with `sections` added.
pub fn generate_if_asked_with(command: clap::Command, sections: &[ManSection]) -> Option<ExitCode> {
    let dir = std::env::var_os(ENV)?;
    let name = command.get_name().to_owned();
    match generate(command, Path::new(&dir), sections) {
        Ok(()) => Some(ExitCode::SUCCESS),
        Err(err) => {
            eprintln!("{name}: cannot write docs into {}: {err}", Path::new(&dir).display());
            Some(ExitCode::from(73)) // EX_CANTCREAT
        }
    }
}

fn generate(mut command: clap::Command, dir: &Path, sections: &[ManSection]) -> io::Result<()> {
    let name = command.get_name().to_owned();
    let man_dir = dir.join("man");
    let completions_dir = dir.join("completions");
    fs::create_dir_all(&man_dir)?;
    fs::create_dir_all(&completions_dir)?;
    let mut page = File::create(man_dir.join(format!("{name}.1")))?;
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    io::Write::write_all(&mut page, roff_sections(sections).as_bytes())?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut file = File::create(completions_dir.join(format!("{name}.{shell}")))?;
        clap_complete::generate(shell, &mut command, &name, &mut file);
    }
    Ok(())
}

/// Docs if asked ([`generate_if_asked`]); otherwise the parsed command
/// line, or the exit code after printing why it is bad (64, EX_USAGE) or
/// after `--help`/`--version` (0).
pub fn parse_or_exit<T: clap::Parser>() -> Result<T, ExitCode> {
    parse_or_exit_with::<T>(&[])
}

/// [`parse_or_exit`], the man page with `sections` added.
pub fn parse_or_exit_with<T: clap::Parser>(sections: &[ManSection]) -> Result<T, ExitCode> {
    if let Some(code) = generate_if_asked_with(T::command(), sections) {
        return Err(code);
    }
    T::try_parse().map_err(|err| {
        let code = if err.use_stderr() { 64 } else { 0 };
        let _ = err.print();
        ExitCode::from(code)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> clap::Command {
        clap::Command::new("handoff-test")
            .about("A test binary")
            .arg(clap::Arg::new("listen").long("listen").help("Where to listen"))
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("handoff-docgen-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn docs_are_written_only_when_asked() {
        // The only test of this binary that touches the variable.
        std::env::remove_var(ENV);
        assert!(generate_if_asked(command()).is_none());

        let dir = temp_dir("asked");
        std::env::set_var(ENV, &dir);
        let code = generate_if_asked(command());
        assert_eq!(code, Some(ExitCode::SUCCESS));
        let page = fs::read_to_string(dir.join("man/handoff-test.1")).expect("man page");
        assert!(page.contains("handoff\\-test") && page.contains("listen"), "{page}");
        for shell in ["bash", "zsh", "fish"] {
            let completion =
                fs::read_to_string(dir.join(format!("completions/handoff-test.{shell}")))
                    .expect("completion");
            assert!(completion.contains("listen"), "{shell}: {completion}");
        }

        // A directory that cannot be created: EX_CANTCREAT.
        let file = temp_dir("a-file");
        fs::write(&file, "x").expect("a plain file");
        std::env::set_var(ENV, &file);
        assert_eq!(generate_if_asked(command()), Some(ExitCode::from(73)));
        std::env::remove_var(ENV);
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_file(&file);
    }
}
