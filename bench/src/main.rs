fn main() {
    std::process::exit(herald_bench::cli::main());
}
