//! Prints the CRDs as multi-document YAML, or with `--out-dir DIR` writes one file per CRD.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Generate the wpex CustomResourceDefinitions")]
struct Args {
    /// Write one file per CRD into this directory instead of printing.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let documents = wpex_operator::crd_documents().context("rendering the CRDs")?;
    match args.out_dir {
        None => {
            for (_, yaml) in documents {
                print!("---\n{yaml}");
            }
        }
        Some(dir) => {
            for (file, yaml) in documents {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
