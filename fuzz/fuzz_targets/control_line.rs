//! Feeds arbitrary bytes to the control socket's line parser.
//!
//! Checks: no panic; a line longer than `MAX_COMMAND_LEN` is rejected as
//! `TooLong { len }`, and nothing shorter is; an accepted line is UTF-8 whose
//! first word is the command's name or an alias, in any case; blank lines are
//! `Empty`, invalid UTF-8 is `NotText`; names quoted back in errors are
//! non-empty and cut to 64 characters; a trailing `\r\n` never changes the
//! result. Written against the variants every version has (`_` for the rest)
//! so it keeps compiling as commands are added.
#![no_main]

use std::mem::discriminant;

use handoff_proto::control::{parse_command, CommandError, COMMANDS, MAX_COMMAND_LEN};
use libfuzzer_sys::fuzz_target;

fn is_short_name(name: &str) -> bool {
    !name.is_empty() && name.chars().count() <= 64
}

fuzz_target!(|line: &[u8]| {
    let parsed = parse_command(line);
    if line.len() > MAX_COMMAND_LEN {
        assert_eq!(parsed, Err(CommandError::TooLong { len: line.len() }));
        return;
    }
    let text = std::str::from_utf8(line);
    match &parsed {
        Ok(command) => {
            let text = text.expect("an accepted line is UTF-8");
            let first = text.split_whitespace().next().expect("an accepted line has a word");
            let first = first.to_ascii_lowercase();
            let (_, name, aliases, _) = COMMANDS
                .iter()
                .find(|(c, ..)| discriminant(c) == discriminant(command))
                .expect("every command is in COMMANDS");
            assert!(
                *name == first || aliases.contains(&first.as_str()),
                "{command:?} accepted from {text:?}"
            );
        }
        Err(CommandError::TooLong { len }) => {
            panic!("a {}-byte line was called too long ({len})", line.len())
        }
        Err(CommandError::Empty) => {
            assert!(
                text.expect("an empty line is UTF-8").trim().is_empty(),
                "{text:?} called empty"
            )
        }
        Err(CommandError::NotText) => assert!(text.is_err()),
        Err(CommandError::Unknown { name }) => assert!(is_short_name(name), "name {name:?}"),
        Err(CommandError::UnexpectedArgument { argument, .. }) => {
            assert!(is_short_name(argument), "argument {argument:?}")
        }
        #[allow(unreachable_patterns)]
        Err(_) => {}
    }
    if line.len() + 2 <= MAX_COMMAND_LEN {
        let mut crlf = line.to_vec();
        crlf.extend_from_slice(b"\r\n");
        assert_eq!(parse_command(&crlf), parsed, "a trailing \\r\\n changed the result");
    }
});
