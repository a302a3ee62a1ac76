//! Benchmarks: each reports ratios measured side by side in one run.

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {}

pub fn run(_args: &BenchArgs) -> Result<()> {
    Ok(())
}
