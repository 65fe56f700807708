//! Store throughput bench (being written).
fn main() {}
