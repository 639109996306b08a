//! Two clusters in two Linux network namespaces (SPEC R1, D2, D3): each
//! runs as its own `meshpeer demo --only` process inside its namespace,
//! with its own loopback (VIPs, DNS, pods). The namespaces are joined by one
//! veth pair carrying only the east-west gateways' addresses
//! (192.168.77.1 and .2): peering (15012) and HBONE (15008) go there, and
//! nothing else can.
//!
//! Needs root (CAP_NET_ADMIN). It fails, not skips, when it cannot set up
//! the namespaces: CI runs it as root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(40);
const BIN: &str = env!("CARGO_BIN_EXE_meshpeer");

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `ip` (iproute2): {e}; this test needs root and iproute2")
    });
    assert!(
        out.status.success(),
        "ip {}: {}\nthis test needs root (CAP_NET_ADMIN) to make network namespaces",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Net {
    ns: [String; 2],
}

impl Net {
    fn new() -> Net {
        let id = std::process::id() % 100_000;
        let ns = [format!("mpt{id}a"), format!("mpt{id}b")];
        let veth = [format!("mpv{id}a"), format!("mpv{id}b")];
        let net = Net { ns: ns.clone() };
        for n in &ns {
            ip(&["netns", "add", n]);
        }
        ip(&[
            "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
        ]);
        for (i, n) in ns.iter().enumerate() {
            ip(&["link", "set", &veth[i], "netns", n]);
            let addr = format!("192.168.77.{}/24", i + 1);
            ip(&["-n", n, "addr", "add", &addr, "dev", &veth[i]]);
            ip(&["-n", n, "link", "set", &veth[i], "up"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        net
    }

    /// `meshpeer ARGS` inside namespace `i`.
    fn cmd(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns[i], BIN]).args(args);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// A `meshpeer demo --only` process; SIGTERM on drop.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn wait_line(&self, text: &str) {
        let deadline = Instant::now() + WITHIN;
        let mut seen = Vec::new();
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) if l.contains(text) => return,
                Ok(l) => seen.push(l),
                Err(e) => panic!("no {text:?} ({e}); saw:\n{}", seen.join("\n")),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
    }
}

fn spawn(mut c: Command) -> Running {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    Running { child, lines }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Moves the examples' gateway addresses (loopback) onto the veth.
fn regateway(dir: &Path) {
    for c in ["cluster1", "cluster2"] {
        let p = dir.join(c).join("eastwest.yaml");
        let t = std::fs::read_to_string(&p).unwrap();
        let t = t
            .replace("127.0.1.1", "192.168.77.1")
            .replace("127.0.2.1", "192.168.77.2");
        std::fs::write(&p, t).unwrap();
    }
}

fn hostname(o: &Output) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    Some(v["hostname"].as_str()?.to_owned())
}

#[test]
fn r1_d2_clusters_in_separate_network_namespaces_talk_only_through_the_gateways() {
    let net = Net::new();
    let tmp = tempfile::tempdir().unwrap();
    let state: PathBuf = tmp.path().to_owned();
    let s = state.to_str().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "httpbin", "--prepare-only", "--state", s])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    regateway(&state.join("httpbin"));

    let a = spawn(net.cmd(0, &["demo", "httpbin", "--only", "cluster1", "--state", s]));
    let b = spawn(net.cmd(1, &["demo", "httpbin", "--only", "cluster2", "--state", s]));
    a.wait_line("Live status");
    b.wait_line("Live status");

    let curl = |i: usize, cluster: &str, url: &str| {
        net.cmd(
            i,
            &["demo", "curl", "--cluster", cluster, url, "--state", s],
        )
        .output()
        .unwrap()
    };
    let mesh = "http://in-ambient.httpbin.mesh.internal:8000/hostname";

    // Peering across the namespaces worked: cluster1 sees cluster2's
    // endpoints, and its own pod answers first (PreferNetwork).
    let o = curl(0, "cluster1", mesh);
    assert_eq!(
        hostname(&o).as_deref(),
        Some("in-ambient-5c64bb49cd-m9kwm"),
        "{}",
        text(&o)
    );

    // cluster2's pod address: alive in its namespace, unreachable from cluster1's.
    let pod2 = "http://127.202.0.21:8080/hostname";
    let o = curl(1, "cluster2", pod2);
    assert_eq!(
        hostname(&o).as_deref(),
        Some("in-ambient-b86fbcb48-6rvhp"),
        "{}",
        text(&o)
    );
    let o = curl(0, "cluster1", pod2);
    assert!(
        !o.status.success(),
        "cluster1 reached cluster2's pod directly: {}",
        text(&o)
    );
    // Nor is anything but the gateway ports open on cluster2's veth address.
    let o = curl(0, "cluster1", "http://192.168.77.2:8080/hostname");
    assert!(!o.status.success(), "{}", text(&o));

    // Scale cluster1's pod away: traffic crosses to cluster2, necessarily
    // through its east-west gateway (the only way between the namespaces).
    let o = Command::new(BIN)
        .args([
            "demo",
            "scale",
            "--cluster",
            "cluster1",
            "-n",
            "httpbin",
            "deployment/in-ambient",
            "--replicas",
            "0",
            "--state",
            s,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let deadline = Instant::now() + WITHIN;
    loop {
        let o = curl(0, "cluster1", mesh);
        if hostname(&o).as_deref() == Some("in-ambient-b86fbcb48-6rvhp") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reached cluster2: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..5 {
        let o = curl(0, "cluster1", mesh);
        assert_eq!(
            hostname(&o).as_deref(),
            Some("in-ambient-b86fbcb48-6rvhp"),
            "{}",
            text(&o)
        );
    }
    drop(a);
    drop(b);
}
