//! crdgen: writes the CustomResourceDefinitions of helpr vault as YAML, one file per CRD, into
//! `crds/yaml/` and `charts/helpr/crds/` of the workspace, removing stale `.yaml` files there.
//!
//! `crdgen --check` writes nothing and exits 1 naming every file that differs from the types.
//! `--root DIR` works on another checkout than the one crdgen was built from.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::{Context, bail};
use helpr_crds::manifests::{self, Drift, OUTPUT_DIRS};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("crdgen: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let mut check = false;
    let mut root = manifests::workspace_root();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--root" => match args.next() {
                Some(dir) => root = dir.into(),
                None => bail!("--root needs a directory"),
            },
            "-h" | "--help" => {
                println!(
                    "usage: crdgen [--check] [--root DIR]\n\nwrites one yaml file per crd into {} (relative to the workspace root);\n--check writes nothing and fails naming the files that differ",
                    OUTPUT_DIRS.join(" and ")
                );
                return Ok(ExitCode::SUCCESS);
            }
            other => bail!("unknown argument {other:?} (usage: crdgen [--check] [--root DIR])"),
        }
    }
    let files = manifests::files().context("render crds")?;
    let drifts = manifests::drift(&root, &files).context("read checked-in crds")?;

    if check {
        if drifts.is_empty() {
            println!(
                "crdgen: {} crds up to date in {}",
                files.len(),
                OUTPUT_DIRS.join(" and ")
            );
            return Ok(ExitCode::SUCCESS);
        }
        for drift in &drifts {
            eprintln!("crdgen: {drift}");
        }
        eprintln!("crdgen: run `cargo run -p helpr-crds --bin crdgen` and commit the result");
        return Ok(ExitCode::from(1));
    }

    for dir in OUTPUT_DIRS {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        for file in &files {
            let path = dir.join(&file.file_name);
            std::fs::write(&path, &file.contents)
                .with_context(|| format!("write {}", path.display()))?;
        }
    }
    for drift in &drifts {
        match drift {
            Drift::Stale(path) => {
                std::fs::remove_file(path).with_context(|| format!("remove {}", path.display()))?;
                println!("crdgen: removed {}", path.display());
            }
            Drift::Missing(path) | Drift::Differs(path) => {
                println!("crdgen: wrote {}", path.display())
            }
        }
    }
    if drifts.is_empty() {
        println!("crdgen: {} crds already up to date", files.len());
    }
    Ok(ExitCode::SUCCESS)
}
