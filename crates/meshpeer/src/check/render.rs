//! The report as text, as `istioctl multicluster check` prints it (seed
//! `002`): a section per cluster, then the checks across clusters.

use std::fmt::Write as _;

use super::diagnostics::plural;
use super::{Check, Report, Status};

impl Report {
    /// The report as text; `verbose` adds each check's detail block and
    /// every line (also the passing lines of checks across clusters).
    pub fn render(&self, verbose: bool) -> String {
        let mut out = String::new();
        for cluster in &self.clusters {
            let _ = writeln!(out, "=== Cluster: {cluster} ===");
            let checks: Vec<&Check> = self.of_cluster(cluster).collect();
            for c in &checks {
                check(&mut out, c, verbose, true);
            }
            let _ = writeln!(out, "Summary: {}", summary(&checks));
            out.push_str("====== \n\n");
        }
        for c in self.across() {
            check(&mut out, c, verbose, false);
        }
        out.push('\n');
        let all: Vec<&Check> = self.checks.iter().collect();
        let failed = all.iter().filter(|c| c.status == Status::Fail).count();
        let warned = all.iter().filter(|c| c.status == Status::Warn).count();
        let what = if self.precheck { "prechecks" } else { "checks" };
        let _ = match (failed, warned) {
            (0, 0) => writeln!(out, "{}all {what} passed", Status::Ok.mark()),
            (0, w) => writeln!(
                out,
                "{}no check failed; {} (see the → fix: lines)",
                Status::Warn.mark(),
                plural(w, "warning")
            ),
            (f, w) => writeln!(
                out,
                "{}{} failed, {} (see the → fix: lines)",
                Status::Fail.mark(),
                plural(f, "check"),
                plural(w, "warning")
            ),
        };
        out
    }
}

/// `5 passed, 1 warning, 1 failed, 1 not checked`.
fn summary(checks: &[&Check]) -> String {
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let mut parts = vec![format!("{} passed", count(Status::Ok))];
    if count(Status::Warn) > 0 {
        parts.push(plural(count(Status::Warn), "warning"));
    }
    parts.push(format!("{} failed", count(Status::Fail)));
    if count(Status::Info) > 0 {
        parts.push(format!("{} informational", count(Status::Info)));
    }
    parts.join(", ")
}

fn check(out: &mut String, c: &Check, verbose: bool, per_cluster: bool) {
    if verbose {
        let _ = writeln!(out, "--- {} ---\n", c.name);
        if !c.detail.is_empty() {
            for line in &c.detail {
                let _ = writeln!(out, "{line}");
            }
            out.push('\n');
        }
    }
    let _ = writeln!(out, "{}{}: {}", c.status.mark(), c.name, c.title);
    // An item the title already states: only its fix is left to print.
    let in_title = |text: &str| text == c.title;
    let fixes = c.fix.iter().chain(
        c.items
            .iter()
            .filter(|i| in_title(&i.text) && i.status.is_problem())
            .filter_map(|i| i.fix.as_ref()),
    );
    if c.status.is_problem() {
        for fix in fixes {
            let _ = writeln!(out, "     → fix: {fix}");
        }
    }
    for item in c.items.iter().filter(|i| !in_title(&i.text)) {
        let shown =
            verbose || item.status.is_problem() || (per_cluster && item.status != Status::Info);
        if !shown {
            continue;
        }
        let _ = writeln!(out, "     {}{}", item.status.mark(), item.text);
        if item.status.is_problem()
            && let Some(fix) = &item.fix
        {
            let _ = writeln!(out, "        → fix: {fix}");
        }
    }
    if verbose {
        out.push('\n');
    }
}
