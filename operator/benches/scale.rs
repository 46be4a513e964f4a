//! Operator scale benchmark (a bench binary, not a timed test).
//!
//! `cargo bench -p helpr-operator --bench scale` runs the real `helpr-operator` binary
//! against the fake apiserver of `helpr_tests::kube_fake` (which also plays the Deployment
//! controller: sync pods are available at once), a real OpenBao dev server (every tenant
//! gets its transit key, policy and Kubernetes-auth role) and the real control API over
//! PostgreSQL. It applies `HELPR_SCALE_TENANTS` Tenants (default 1,000, one namespace each)
//! with `HELPR_SCALE_INBOXES_PER_TENANT` Inboxes each (default 10, so 10,000) at once and
//! reports:
//!
//! - time until every Tenant and Inbox is Ready at its generation (converged);
//! - CPU seconds (user + system) used from the first apply until convergence by the
//!   operator, by OpenBao and by this process (the fake apiserver and the control API run
//!   in it; PostgreSQL's backends are not counted), and the machine's 1-minute load
//!   average meanwhile (mean and highest);
//! - the operator process's peak RSS (VmHWM) at convergence and after an idle period;
//! - the time for one changed Tenant to be Ready again once everything has converged;
//! - requests the operator made to the apiserver, per verb and collection.
//!
//! Targets (issue 5): converge in under 60 s, RSS under 150 MiB.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use helpr_tests::operator_env::{
    INBOXES, OperatorEnv, TENANTS, condition, cpu_seconds, is_ready, load_average,
};
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours means "not me".
    if std::env::args()
        .skip(1)
        .any(|a| a != "--bench" && !a.starts_with('-') && a != "scale")
    {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let tenants = env_usize("HELPR_SCALE_TENANTS", 1_000);
    let per_tenant = env_usize("HELPR_SCALE_INBOXES_PER_TENANT", 10);
    let inboxes = tenants * per_tenant;
    let mut env = OperatorEnv::start(Path::new(env!("CARGO_BIN_EXE_helpr-operator")))
        .await
        .unwrap();
    env.wait_for("the operator to be ready", Duration::from_secs(60), |env| {
        std::net::TcpStream::connect(&env.http).is_ok()
    })
    .await
    .unwrap();
    let idle_rss = env.peak_rss_kib().unwrap();
    println!(
        "operator scale: {tenants} tenants, {inboxes} inboxes (pid {}, idle peak RSS {:.1} MiB)",
        env.pid(),
        idle_rss as f64 / 1024.0
    );

    // CPU seconds of the operator, OpenBao and this process.
    let cpu = |env: &OperatorEnv| {
        let of = |pid: Option<u32>| pid.and_then(|pid| cpu_seconds(pid).ok()).unwrap_or(0.0);
        [
            of(Some(env.pid())),
            of(env.bao.pid()),
            of(Some(std::process::id())),
        ]
    };
    let cpu_before = cpu(&env);
    let mut loads = Vec::new();
    let start = Instant::now();
    for t in 0..tenants {
        let ns = format!("tenant-{t:04}");
        env.vault_secret(&ns);
        env.api.put(TENANTS, &ns, env.tenant(&ns, &ns, "Retain"));
        for i in 0..per_tenant {
            env.api.put(
                INBOXES,
                &ns,
                json!({
                    "apiVersion": "mail.helpr.dev/v1alpha1", "kind": "Inbox",
                    "metadata": {"name": format!("inbox-{i:02}"), "namespace": ns},
                    "spec": {
                        "tenantRef": {"name": ns},
                        "gmailAddress": format!("inbox-{i:02}@{ns}.example"),
                        "visibility": "Org",
                        "pubSub": {"topic": format!("projects/helpr-test/topics/{ns}-{i}"), "pushAudience": "https://ingest.example/push"},
                    },
                }),
            );
        }
    }
    let applied = start.elapsed();
    // Poll readiness every 250 ms: counting 11,000 objects takes the fake apiserver's lock,
    // so polling much faster would slow down the apiserver being measured.
    let mut last_report = Instant::now();
    let converged = loop {
        let ready_tenants = env.api.count(TENANTS, is_ready);
        let ready_inboxes = env.api.count(INBOXES, is_ready);
        loads.extend(load_average());
        if ready_tenants == tenants && ready_inboxes == inboxes {
            break start.elapsed();
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "  {:>6.1} s: {ready_tenants}/{tenants} tenants, {ready_inboxes}/{inboxes} inboxes ready",
                start.elapsed().as_secs_f64()
            );
            // Why the first one that is not Ready is not.
            for collection in [TENANTS, INBOXES] {
                if let Some(waiting) = env.api.list(collection).into_iter().find(|o| !is_ready(o)) {
                    let ready = condition(&waiting, "Ready").cloned().unwrap_or_default();
                    println!(
                        "           e.g. {}/{}: {} {}",
                        waiting["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or_default(),
                        waiting["metadata"]["name"].as_str().unwrap_or_default(),
                        ready["reason"].as_str().unwrap_or("no status yet"),
                        ready["message"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(1_800),
            "not converged after 30 min; operator log:\n{}",
            env.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let cpu_after = cpu(&env);
    let rss_converged = env.peak_rss_kib().unwrap();
    println!(
        "converged in {:.1} s (objects applied in {:.1} s): {:.0} objects/s; operator peak RSS {:.1} MiB",
        converged.as_secs_f64(),
        applied.as_secs_f64(),
        (tenants + inboxes) as f64 / converged.as_secs_f64(),
        rss_converged as f64 / 1024.0
    );
    let used = |i: usize| cpu_after[i] - cpu_before[i];
    println!(
        "CPU until converged: operator {:.1} s, OpenBao {:.1} s, bench process (fake apiserver, control API) {:.1} s",
        used(0),
        used(1),
        used(2)
    );
    if !loads.is_empty() {
        println!(
            "load average (1 min) while converging: mean {:.2}, highest {:.2}",
            loads.iter().sum::<f64>() / loads.len() as f64,
            loads.iter().copied().fold(0.0, f64::max)
        );
    }

    // One change once everything has converged: how long until it is Ready again.
    let ns = "tenant-0000";
    let mut tenant = env.tenant(ns, ns, "Retain");
    tenant["spec"]["displayName"] = "Renamed".into();
    env.api.put(TENANTS, ns, tenant);
    let one = env
        .wait_for(
            "the changed tenant to be Ready",
            Duration::from_secs(120),
            |env| {
                env.api.get(TENANTS, ns, ns).is_some_and(|t| {
                    is_ready(&t) && t["status"]["observedGeneration"] == t["metadata"]["generation"]
                })
            },
        )
        .await
        .unwrap();
    println!(
        "one changed tenant Ready again after {:.0} ms",
        one.as_secs_f64() * 1_000.0
    );

    tokio::time::sleep(Duration::from_secs(
        env_usize("HELPR_SCALE_IDLE_SECS", 20) as u64
    ))
    .await;
    let rss_idle = env.peak_rss_kib().unwrap();
    println!(
        "operator peak RSS after {} s idle: {:.1} MiB",
        env_usize("HELPR_SCALE_IDLE_SECS", 20),
        rss_idle as f64 / 1024.0
    );
    let requests = env.api.requests();
    let total: u64 = requests.values().sum();
    println!("apiserver requests: {total}");
    for (what, n) in &requests {
        println!("  {n:>8}  {what}");
    }
    let clean = env.shutdown().await.unwrap();
    println!("operator stopped cleanly on SIGTERM: {clean}");
}
