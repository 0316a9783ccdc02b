use std::process::ExitCode;

fn main() -> ExitCode {
    match ids::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ids: {e:#}");
            ExitCode::FAILURE
        }
    }
}
