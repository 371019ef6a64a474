//! The `shoal` binary; everything lives in [`shoal_node::cli`].

fn main() -> std::process::ExitCode {
    shoal_node::cli::main()
}
