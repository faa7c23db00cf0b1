//! The command line as a whole: every subcommand explains itself, and bad flags are
//! one-line errors with a non-zero exit, never a usage dump or a panic.

mod common;

use common::{assert_clean_failure, samus, stderr};

const SUBCOMMANDS: [&[&str]; 14] = [
    &["demo"],
    &["segment"],
    &["auto"],
    &["data", "check"],
    &["metrics"],
    &["synth"],
    &["train"],
    &["eval"],
    &["convert"],
    &["info"],
    &["bench"],
    &["completions"],
    &["data"],
    &[],
];

#[test]
fn every_subcommand_has_help_with_examples() {
    for sub in SUBCOMMANDS
        .iter()
        .filter(|s| !s.is_empty() && **s != ["data"])
    {
        let mut args = sub.to_vec();
        args.push("--help");
        let out = samus(&args);
        assert!(out.status.success(), "{sub:?}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Examples:"),
            "{sub:?} --help has no examples:\n{text}"
        );
    }
    let version = samus(&["--version"]);
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("samus "));
}

#[test]
fn bad_flags_are_one_line_errors() {
    for sub in SUBCOMMANDS {
        let mut args = sub.to_vec();
        args.push("--no-such-flag");
        assert_clean_failure(&samus(&args), "--no-such-flag");
    }
    assert_clean_failure(&samus(&["train"]), "--data");
    assert_clean_failure(&samus(&["demo", "--minutes", "abc"]), "abc");
}
