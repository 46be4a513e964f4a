//! Headless Chromium (Debian's `chromium` package) for tests that need a real browser.
//!
//! Each run gets a fresh profile directory and no background networking, so the only
//! requests the browser makes are those of the page it loads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

/// Environment variable naming the Chromium binary, if not `chromium` on the PATH.
pub const CHROMIUM_ENV: &str = "HELPR_CHROMIUM";

/// The Chromium binary: `$HELPR_CHROMIUM`, else `chromium` or `chromium-browser` on the PATH.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(explicit) = std::env::var_os(CHROMIUM_ENV) {
        let path = PathBuf::from(explicit);
        if path.is_file() {
            return Ok(path);
        }
        bail!("{CHROMIUM_ENV}={} is not a file", path.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "chromium not found on the PATH (set {CHROMIUM_ENV} or install it: \
         apt-get install -y --no-install-recommends chromium; scripts/test-all does)"
    )
}

/// Loads `url` in headless Chromium, lets `virtual_time_budget` of page time pass (timers
/// run fast-forwarded; pending network requests hold it), and returns the serialized DOM
/// of the top document.
pub async fn dump_dom(
    chromium: &Path,
    url: &str,
    virtual_time_budget: Duration,
    timeout: Duration,
) -> anyhow::Result<String> {
    let profile = tempfile::tempdir().context("create chromium profile dir")?;
    let mut command = Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            "--window-size=1280,2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!(
            "--virtual-time-budget={}",
            virtual_time_budget.as_millis()
        ))
        .arg("--dump-dom")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .with_context(|| format!("chromium did not finish within {timeout:?}"))?
        .context("run chromium")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        bail!(
            "chromium exited with {}: {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    String::from_utf8(output.stdout).context("chromium output is not utf-8")
}
