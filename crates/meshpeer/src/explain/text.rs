//! The account as an operator reads it.

use std::fmt::Write as _;

use meshpeer_model::Reach;

use super::{Explanation, Line};

pub(super) fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let target = match e.port {
        Some(p) => format!("{}:{p}", e.host),
        None => e.host.clone(),
    };
    let _ = writeln!(out, "{target} from {}", e.from);
    let _ = writeln!(out, "  (from {})", e.source);
    let verdict = if e.resolves {
        "resolves"
    } else {
        "does not resolve"
    };
    let _ = writeln!(out, "\n{} {verdict} in {}:", e.host, e.from);
    for line in &e.why {
        let _ = writeln!(out, "  {}", line_text(line));
    }
    if let Some(d) = &e.distribution {
        let _ = writeln!(
            out,
            "\nTraffic distribution: {} [{}]\n  from {}",
            d.value, d.rule, d.source
        );
    }
    if e.resolves {
        let client = e.client.as_deref().unwrap_or("unknown");
        if e.tiers.is_empty() {
            let _ = writeln!(
                out,
                "\nNo endpoint to send to from {} ({client}): connections are refused [T6]",
                e.from
            );
        } else {
            let _ = writeln!(
                out,
                "\nWhere a connection from {} ({client}) goes, tier by tier (the next tier only when no endpoint of this one is healthy) [T2-T6]:",
                e.from
            );
            if let Some(h) = &e.health {
                let _ = writeln!(out, "  (passive health live from {h})");
            }
        }
        for (i, tier) in e.tiers.iter().enumerate() {
            for (j, g) in tier.groups.iter().enumerate() {
                let head = if j == 0 {
                    format!("{:>3}.", i + 1)
                } else {
                    "    ".to_owned()
                };
                let locality = if g.locality.is_empty() {
                    "locality unknown".to_owned()
                } else {
                    g.locality.clone()
                };
                let how = match g.reach {
                    Reach::Local => "local".to_owned(),
                    Reach::Direct => "same network, direct".to_owned(),
                    Reach::Gateway => format!("through {} (HBONE)", g.via.join(", ")),
                };
                let _ = writeln!(
                    out,
                    "{head} {} ({}, {locality}), {how}: {} ready{}",
                    g.cluster,
                    g.network,
                    g.ready,
                    ejected(g.ejected_ms, "through this gateway")
                );
                for ep in &g.endpoints {
                    let port = ep.port.map(|p| format!(":{p}")).unwrap_or_default();
                    let name = if ep.name.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", ep.name)
                    };
                    let _ = writeln!(
                        out,
                        "         {}{port}{name}{}",
                        ep.address,
                        ejected(ep.ejected_ms, "")
                    );
                }
            }
        }
    }
    if let Some(r) = &e.routes {
        routes(r, &mut out);
    }
    out
}

fn routes(r: &super::RouteAccount, out: &mut String) {
    let _ = writeln!(
        out,
        "\nL7 routes of {}, tried in this order [L3] (requests on this port follow them; each backend picks its endpoint by its own tiers: explain the backend's name for them):",
        r.frontend
    );
    for (i, rule) in r.rules.iter().enumerate() {
        let mark = if r.matched == Some(i) { "➜" } else { " " };
        let _ = writeln!(
            out,
            "  {mark} {}#{}: {}",
            rule.route, rule.rule, rule.matches
        );
    }
    match r.matched {
        None => {
            let _ = writeln!(out, "{} matches no rule: 404 [L3]", r.request);
        }
        Some(i) => {
            let rule = &r.rules[i];
            let _ = writeln!(out, "{} takes {}#{}", r.request, rule.route, rule.rule);
            for f in &r.filters {
                let _ = writeln!(out, "  {f} [L4]");
            }
            for b in &r.backends {
                let why = match &b.unresolved {
                    Some(w) => format!(" ❌ does not resolve, its share gets 500: {w}"),
                    None => String::new(),
                };
                let _ = writeln!(
                    out,
                    "  -> {} weight {} ({}%){why} [L2]",
                    b.name, b.weight, b.percent
                );
            }
        }
    }
}

/// ` ⚠ ejected for 12.3 s more (passive health, T6)`, or nothing.
fn ejected(ms: Option<u64>, what: &str) -> String {
    match ms {
        Some(ms) => {
            let what = if what.is_empty() {
                String::new()
            } else {
                format!(" {what}")
            };
            format!(
                " ⚠ ejected{what} for {:.1} s more (passive health: skipped while a healthy destination is left) [T6]",
                ms as f64 / 1000.0
            )
        }
        None => String::new(),
    }
}

fn line_text(l: &Line) -> String {
    let mark = if l.ok { "✅" } else { "❌" };
    let rule = l.rule.map(|r| format!(" [{r}]")).unwrap_or_default();
    let mut at = Vec::new();
    if let Some(o) = &l.object {
        at.push(o.clone());
    }
    if let Some(f) = &l.field {
        at.push(match &l.value {
            Some(v) => format!("{f}={v}"),
            None => f.clone(),
        });
    }
    let at = if at.is_empty() || l.ok {
        String::new()
    } else {
        format!("\n       at {}", at.join(", "))
    };
    format!("{mark} {}{rule}{at}", l.text)
}
