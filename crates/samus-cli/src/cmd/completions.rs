//! `samus completions`: a shell completion script.

use anyhow::Result;
use clap::Args;

/// Examples printed by `samus completions --help`.
pub const EXAMPLES: &str = "Examples:
  samus completions bash > ~/.local/share/bash-completion/completions/samus
  samus completions zsh > ~/.zfunc/_samus";

/// Arguments of `samus completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Prints the completion script of `command` for the chosen shell.
pub fn run(args: CompletionsArgs, command: &mut clap::Command) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, command, "samus", &mut script);
    crate::support::print_text(&script)
}
