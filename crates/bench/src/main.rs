//! `handoff-bench`: placeholder, being written (issue 4).
fn main() {}
