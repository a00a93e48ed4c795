//! Parser throughput (filled in with the extractors).
fn main() {}
