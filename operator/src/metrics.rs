//! Reconcile counters in the Prometheus text format. Labels are the controller and an
//! error category chosen in code, never an object's name.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters of one operator process.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    ready: AtomicBool,
}

impl Metrics {
    /// A reconcile started.
    pub fn reconcile(&self) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
    }

    /// A reconcile failed with `category` (a [`crate::tenant::TenantError::category`]).
    pub fn failure(&self, category: &'static str) {
        if let Ok(mut failures) = self.failures.lock() {
            *failures.entry(category).or_default() += 1;
        }
    }

    /// Total reconciles so far.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }

    /// Failures of `category` so far.
    pub fn failures(&self, category: &str) -> u64 {
        self.failures
            .lock()
            .ok()
            .and_then(|f| f.get(category).copied())
            .unwrap_or(0)
    }

    /// The controller has listed its objects once (readiness).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Whether [`Metrics::set_ready`] was called.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP helpr_operator_reconciles_total Reconciles started.\n");
        out.push_str("# TYPE helpr_operator_reconciles_total counter\n");
        let _ = writeln!(
            out,
            "helpr_operator_reconciles_total{{controller=\"tenant\"}} {}",
            self.reconciles()
        );
        out.push_str(
            "# HELP helpr_operator_reconcile_failures_total Failed reconciles by error category.\n",
        );
        out.push_str("# TYPE helpr_operator_reconcile_failures_total counter\n");
        if let Ok(failures) = self.failures.lock() {
            for (category, count) in failures.iter() {
                let _ = writeln!(
                    out,
                    "helpr_operator_reconcile_failures_total{{controller=\"tenant\",category=\"{category}\"}} {count}"
                );
            }
        }
        out.push_str(
            "# HELP helpr_operator_ready Whether the controllers have synced their caches.\n",
        );
        out.push_str("# TYPE helpr_operator_ready gauge\n");
        let _ = writeln!(out, "helpr_operator_ready {}", u8::from(self.is_ready()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_category_without_object_names() {
        let m = Metrics::default();
        m.reconcile();
        m.reconcile();
        m.failure("KMSUnavailable");
        let text = m.render();
        assert!(text.contains("helpr_operator_reconciles_total{controller=\"tenant\"} 2"));
        assert!(text.contains("category=\"KMSUnavailable\"} 1"));
        assert!(text.contains("helpr_operator_ready 0"));
        assert_eq!(m.failures("KMSUnavailable"), 1);
    }
}
