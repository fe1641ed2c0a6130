fn main() -> std::process::ExitCode {
    dsocr::cli::main()
}
