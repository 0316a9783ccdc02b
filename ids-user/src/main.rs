use std::process::ExitCode;

fn main() -> ExitCode {
    match ids::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ids: {}", ids::error_text::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
