//! Process-wide counters, rendered in the Prometheus text format.
//!
//! Labels are fixed strings chosen in code (a stage, an outcome, a reason), never values
//! from a request or a message.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter with a fixed name and fixed labels.
#[derive(Debug)]
pub struct Counter {
    name: &'static str,
    labels: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    /// `labels` is the inside of the braces, e.g. `stage="parse",outcome="ok"`, or "".
    pub const fn new(name: &'static str, labels: &'static str, help: &'static str) -> Self {
        Self {
            name,
            labels,
            help,
            value: AtomicU64::new(0),
        }
    }

    pub fn inc(&'static self) {
        self.add(1);
    }

    pub fn add(&'static self, n: u64) {
        if self.value.fetch_add(n, Ordering::Relaxed) == 0 {
            register(self);
        }
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

static REGISTRY: Mutex<Vec<&'static Counter>> = Mutex::new(Vec::new());

fn register(c: &'static Counter) {
    let mut all = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    if !all.iter().any(|x| std::ptr::eq(*x, c)) {
        all.push(c);
    }
}

/// Every counter that has counted at least once, in the Prometheus text format.
pub fn render() -> String {
    let mut all: Vec<&'static Counter> = REGISTRY.lock().unwrap_or_else(|p| p.into_inner()).clone();
    all.sort_by_key(|c| (c.name, c.labels));
    let mut out = String::new();
    let mut last = "";
    for c in all {
        if c.name != last {
            out.push_str(&format!(
                "# HELP {} {}\n# TYPE {} counter\n",
                c.name, c.help, c.name
            ));
            last = c.name;
        }
        if c.labels.is_empty() {
            out.push_str(&format!("{} {}\n", c.name, c.get()));
        } else {
            out.push_str(&format!("{}{{{}}} {}\n", c.name, c.labels, c.get()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    static A: Counter = Counter::new("helpr_test_total", "outcome=\"ok\"", "a test counter");
    static B: Counter = Counter::new("helpr_test_total", "outcome=\"error\"", "a test counter");

    #[test]
    fn counters_render_in_prometheus_text_format() {
        A.inc();
        A.add(2);
        B.inc();
        let text = render();
        assert!(text.contains("# TYPE helpr_test_total counter"));
        assert!(text.contains("helpr_test_total{outcome=\"ok\"} 3"));
        assert!(text.contains("helpr_test_total{outcome=\"error\"} 1"));
        assert_eq!(text.matches("# HELP helpr_test_total").count(), 1);
    }
}
