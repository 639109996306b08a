//! `cargo bench -p meshpeer --bench dataplane` (or `scripts/bench-dataplane.sh`,
//! which installs haproxy first and prints the machine).
//!
//! The data plane side by side, in one run, against the same backend:
//!
//! - (a) `direct`: the client connects straight to the backend (loopback);
//! - (b) `proxy`: through cluster1's proxy (VIP listener) to a local endpoint;
//! - (c) `hbone`: through cluster1's proxy, HBONE (HTTP/2 CONNECT over mutual
//!   TLS 1.3) to cluster2's east-west gateway, then to cluster2's backend;
//! - (d) `haproxy`: haproxy in TCP mode (a separate process, when the
//!   `haproxy` binary is on PATH) doing the same hop as (b).
//!
//! Two clusters run in process (controllers, gateways and proxies of the
//! test harness, linked both ways); the backends are this bench's own tokio
//! servers on the pod addresses. Workloads, each over every path in turn:
//!
//! - upload: one TCP stream, the client writes 64 KiB chunks for `DP_SECS`,
//!   shuts its write side down; the backend counts bytes to EOF and answers
//!   the count (checked); timed until the count arrives;
//! - download: the backend writes as many bytes as that path's upload moved,
//!   in 64 KiB writes; timed until EOF (count checked);
//! - requests/s: C connections (`DP_CONCURRENCY`, default `1,16`), each
//!   sending a `DP_MSG`-byte request (1 KiB) and reading the echoed
//!   response of the same size, in a loop; counted for `DP_SECS` after
//!   `DP_WARMUP_MS`; p50/p99 of the round trips.
//!
//! Threads: the mesh (controllers, proxies, gateways) runs on its own tokio
//! runtime of 2 workers, and the load generator with the backends on
//! another of 2 workers, as if they were two processes; haproxy gets
//! `nbthread DP_HAPROXY_THREADS` (2). `DP_SHARED_RUNTIME=1` puts everything on
//! one 2-worker runtime instead. `DP_ROUNDS` (1) repeats every workload over
//! every path and reports medians. Logs are off (`TRACE=...` turns them on).
//! Throughput is in MiB/s (2^20 bytes) and Gbit/s (10^9 bits).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Mesh, namespace, service_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Size of every write of the throughput workloads.
const CHUNK: usize = 64 * 1024;
const GLOBAL: (&str, &str) = ("solo.io/service-scope", "global");
const NS: &str = "bench";

// The first byte of a connection says what the backend does.
const UPLOAD: u8 = b'U';
const DOWNLOAD: u8 = b'D';
const ECHO: u8 = b'E';

struct Settings {
    secs: Duration,
    warmup: Duration,
    concurrency: Vec<usize>,
    msg: usize,
    rounds: usize,
    haproxy_threads: u32,
    shared_runtime: bool,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let concurrency = std::env::var("DP_CONCURRENCY")
            .unwrap_or_else(|_| "1,16".to_owned())
            .split(',')
            .map(|c| {
                c.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("DP_CONCURRENCY: {c:?} is not a number"))
            })
            .filter(|c| *c > 0)
            .collect();
        Settings {
            secs: Duration::from_secs_f64(env("DP_SECS", 2.5)),
            warmup: Duration::from_millis(env("DP_WARMUP_MS", 500)),
            concurrency,
            msg: env("DP_MSG", 1024),
            rounds: env("DP_ROUNDS", 1usize).max(1),
            haproxy_threads: env("DP_HAPROXY_THREADS", 2),
            shared_runtime: std::env::var("DP_SHARED_RUNTIME").is_ok_and(|v| v != "0"),
        }
    }
}

// ---------------------------------------------------------------- backend

/// The bench's backend: one per pod address.
async fn backend(listener: TcpListener) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let _ = serve(conn).await;
        });
    }
}

async fn serve(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    match conn.read_u8().await? {
        UPLOAD => {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                let n = conn.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            conn.write_all(&total.to_be_bytes()).await?;
            conn.shutdown().await
        }
        DOWNLOAD => {
            let mut left = conn.read_u64().await?;
            let buf = vec![0xa5u8; CHUNK];
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                conn.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            conn.shutdown().await
        }
        ECHO => {
            let size = conn.read_u32().await? as usize;
            let mut buf = vec![0u8; size];
            loop {
                match conn.read_exact(&mut buf).await {
                    Ok(_) => conn.write_all(&buf).await?,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown mode {other}"),
        )),
    }
}

// ---------------------------------------------------------------- clients

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let conn = TcpStream::connect(addr).await?;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// One stream up for `secs`: (bytes, elapsed until the backend's count arrived).
async fn upload(addr: SocketAddr, secs: Duration) -> io::Result<(u64, Duration)> {
    let mut conn = connect(addr).await?;
    conn.write_all(&[UPLOAD]).await?;
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let deadline = start + secs;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        conn.write_all(&buf).await?;
        sent += CHUNK as u64;
    }
    conn.shutdown().await?;
    let counted = conn.read_u64().await?;
    let elapsed = start.elapsed();
    if counted != sent {
        return Err(io::Error::other(format!(
            "sent {sent} bytes, the backend counted {counted}"
        )));
    }
    Ok((sent, elapsed))
}

/// `bytes` down one stream: elapsed from the request until EOF.
async fn download(addr: SocketAddr, bytes: u64) -> io::Result<Duration> {
    let mut conn = connect(addr).await?;
    let start = Instant::now();
    let mut req = [0u8; 9];
    req[0] = DOWNLOAD;
    req[1..].copy_from_slice(&bytes.to_be_bytes());
    conn.write_all(&req).await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let elapsed = start.elapsed();
    if got != bytes {
        return Err(io::Error::other(format!(
            "asked for {bytes} bytes, received {got}"
        )));
    }
    Ok(elapsed)
}

struct Rr {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// `conns` connections exchanging `msg`-byte requests and responses.
async fn request_response(
    addr: SocketAddr,
    conns: usize,
    msg: usize,
    warmup: Duration,
    secs: Duration,
) -> io::Result<Rr> {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut conn = connect(addr).await?;
        let mut hello = vec![ECHO];
        hello.extend_from_slice(&(msg as u32).to_be_bytes());
        conn.write_all(&hello).await?;
        streams.push(conn);
    }
    let from = Instant::now() + warmup;
    let until = from + secs;
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            tokio::spawn(async move {
                let req: Vec<u8> = (0..msg).map(|b| (b + i) as u8).collect();
                let mut resp = vec![0u8; msg];
                let mut samples: Vec<Duration> = Vec::new();
                loop {
                    let t0 = Instant::now();
                    conn.write_all(&req).await?;
                    conn.read_exact(&mut resp).await?;
                    let t1 = Instant::now();
                    if resp != req {
                        return Err(io::Error::other("the echo differs from the request"));
                    }
                    if t0 >= from && t1 <= until {
                        samples.push(t1 - t0);
                    }
                    if t1 >= until {
                        return Ok::<_, io::Error>(samples);
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task")?);
    }
    if all.is_empty() {
        return Err(io::Error::other("no request completed"));
    }
    all.sort_unstable();
    Ok(Rr {
        per_sec: all.len() as f64 / secs.as_secs_f64(),
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn median_duration(values: &[Duration]) -> Duration {
    let mut secs: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    Duration::from_secs_f64(median(&mut secs))
}

// ---------------------------------------------------------------- haproxy

/// haproxy as a child process; killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    version: String,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts haproxy in TCP mode in front of `backend`, or says why not.
fn start_haproxy(backend: SocketAddr, threads: u32) -> Result<Haproxy, String> {
    let version = match Command::new("haproxy").arg("-v").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        _ => return Err("not installed (apt-get install haproxy)".to_owned()),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // No `log` line anywhere: haproxy logs nothing.
    let config = format!(
        "global\n    nbthread {threads}\n    maxconn 4096\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n\
         frontend bench\n    bind {addr}\n    default_backend endpoint\n\n\
         backend endpoint\n    server pod {backend}\n"
    );
    let cfg = dir.path().join("haproxy.cfg");
    let errors = dir.path().join("stderr");
    std::fs::write(&cfg, config).map_err(|e| e.to_string())?;
    let stderr = std::fs::File::create(&errors).map_err(|e| e.to_string())?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let mut h = Haproxy {
        child,
        addr,
        version,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = h.child.try_wait() {
            let said = std::fs::read_to_string(&errors).unwrap_or_default();
            return Err(format!("exited at start ({status}): {said}"));
        }
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(h);
        }
        if Instant::now() > deadline {
            return Err(format!("not listening on {addr} after 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- the run

struct Path {
    name: &'static str,
    what: &'static str,
    addr: SocketAddr,
    up: Vec<f64>,
    down: Vec<f64>,
    /// Per concurrency: req/s, p50, p99 per round.
    rr: Vec<(Vec<f64>, Vec<Duration>, Vec<Duration>)>,
}

impl Path {
    fn new(name: &'static str, what: &'static str, addr: SocketAddr, levels: usize) -> Path {
        Path {
            name,
            what,
            addr,
            up: vec![],
            down: vec![],
            rr: (0..levels).map(|_| (vec![], vec![], vec![])).collect(),
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64()
}

async fn measure(paths: &mut [Path], s: &Settings) {
    // Warm every path once (HBONE: the pooled connection's TLS handshake).
    for p in paths.iter() {
        request_response(p.addr, 1, s.msg, Duration::ZERO, Duration::from_millis(50))
            .await
            .unwrap_or_else(|e| panic!("{} ({}): {e}", p.name, p.addr));
    }
    for round in 1..=s.rounds {
        let tag = if s.rounds > 1 {
            format!("round {round}: ")
        } else {
            String::new()
        };
        for p in paths.iter_mut() {
            let (bytes, elapsed) = upload(p.addr, s.secs)
                .await
                .unwrap_or_else(|e| panic!("upload through {}: {e}", p.name));
            let up = rate(bytes, elapsed);
            eprintln!("{tag}upload   {:8} {:8.0} MiB/s", p.name, up / MIB);
            p.up.push(up);
            let elapsed = download(p.addr, bytes)
                .await
                .unwrap_or_else(|e| panic!("download through {}: {e}", p.name));
            let down = rate(bytes, elapsed);
            eprintln!("{tag}download {:8} {:8.0} MiB/s", p.name, down / MIB);
            p.down.push(down);
        }
        for (i, &c) in s.concurrency.iter().enumerate() {
            for p in paths.iter_mut() {
                let r = request_response(p.addr, c, s.msg, s.warmup, s.secs)
                    .await
                    .unwrap_or_else(|e| panic!("req/s through {}: {e}", p.name));
                eprintln!(
                    "{tag}req/s c={c:<3} {:8} {:8.0}  p50 {:?}  p99 {:?}",
                    p.name, r.per_sec, r.p50, r.p99
                );
                p.rr[i].0.push(r.per_sec);
                p.rr[i].1.push(r.p50);
                p.rr[i].2.push(r.p99);
            }
        }
    }
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn report(paths: &mut [Path], s: &Settings, haproxy: &str) -> String {
    let mut out = String::new();
    let up: Vec<f64> = paths.iter_mut().map(|p| median(&mut p.up)).collect();
    let down: Vec<f64> = paths.iter_mut().map(|p| median(&mut p.down)).collect();
    let rr: Vec<Vec<(f64, Duration, Duration)>> = paths
        .iter_mut()
        .map(|p| {
            p.rr.iter_mut()
                .map(|(r, p50, p99)| (median(r), median_duration(p50), median_duration(p99)))
                .collect()
        })
        .collect();
    let gbit = |b: f64| b * 8.0 / 1e9;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "One TCP stream, {:.1} s, 64 KiB writes (download: the same number of bytes back); MiB/s and Gbit/s:",
        s.secs.as_secs_f64()
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "| path | upload | x direct | download | x direct |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (i, p) in paths.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} {} | {:.0} MiB/s ({:.1} Gbit/s) | {:.2} | {:.0} MiB/s ({:.1} Gbit/s) | {:.2} |",
            p.name,
            p.what,
            up[i] / MIB,
            gbit(up[i]),
            up[i] / up[0],
            down[i] / MIB,
            gbit(down[i]),
            down[i] / down[0],
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{} B request -> {} B response, {:.1} s after {:.1} s warm-up; c = connections; latency p50/p99 in µs:",
        s.msg,
        s.msg,
        s.secs.as_secs_f64(),
        s.warmup.as_secs_f64()
    );
    let _ = writeln!(out);
    let mut head = "| path |".to_owned();
    let mut rule = "|---|".to_owned();
    for c in &s.concurrency {
        let _ = write!(head, " req/s c={c} | x direct | p50/p99 µs |");
        rule.push_str("---|---|---|");
    }
    let _ = writeln!(out, "{head}");
    let _ = writeln!(out, "{rule}");
    for (i, p) in paths.iter().enumerate() {
        let mut line = format!("| {} |", p.name);
        for (j, (per_sec, p50, p99)) in rr[i].iter().enumerate() {
            let _ = write!(
                line,
                " {:.0} | {:.2} | {}/{} |",
                per_sec,
                per_sec / rr[0][j].0,
                us(*p50),
                us(*p99)
            );
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out);
    let proxy = paths.iter().position(|p| p.name == "proxy");
    let ha = paths.iter().position(|p| p.name == "haproxy");
    match (proxy, ha) {
        (Some(b), Some(d)) => {
            let mut line = format!(
                "proxy / haproxy: upload {:.2}, download {:.2}",
                up[b] / up[d],
                down[b] / down[d]
            );
            for (j, c) in s.concurrency.iter().enumerate() {
                let _ = write!(line, ", req/s c={c} {:.2}", rr[b][j].0 / rr[d][j].0);
            }
            let _ = writeln!(out, "{line}");
        }
        _ => {
            let _ = writeln!(out, "proxy / haproxy: no haproxy ({haproxy})");
        }
    }
    out
}

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    if std::env::var("TRACE").is_ok() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_ansi(false)
            .init();
    }
    let s = Settings::from_env();
    let mesh_rt = runtime("mesh");
    let load_rt = (!s.shared_runtime).then(|| runtime("load"));
    let load = load_rt.as_ref().unwrap_or(&mesh_rt);

    // Two clusters linked both ways: `local` only in cluster1, `remote`
    // only in cluster2, each with one pod.
    let (mesh, local_pod, remote_pod, local_vip, remote_vip) = mesh_rt.block_on(async {
        let mut mesh = Mesh::new(&["cluster1", "cluster2"]);
        mesh.start().await;
        mesh.start_dataplane().await;
        mesh.link_all().await;
        let c1 = mesh.cluster("cluster1");
        let c2 = mesh.cluster("cluster2");
        let local_ip = c1.pod_ip(1);
        let remote_ip = c2.pod_ip(1);
        for c in [c1, c2] {
            c.write("bench-ns.yaml", &namespace(NS, &[]));
        }
        c1.write(
            "local.yaml",
            &service_with(NS, "local", &[GLOBAL], &[], &[("local-0", &local_ip, &[])]),
        );
        c2.write(
            "remote.yaml",
            &service_with(
                NS,
                "remote",
                &[GLOBAL],
                &[],
                &[("remote-0", &remote_ip, &[])],
            ),
        );
        let local_pod: SocketAddr = format!("{local_ip}:8080").parse().unwrap();
        let remote_pod: SocketAddr = format!("{remote_ip}:8080").parse().unwrap();
        c2.wait_caller("cluster1").await;
        let local_vip = c1
            .wait_route(&format!("local.{NS}.mesh.internal"), 8000, &["cluster1"])
            .await;
        let remote_vip = c1
            .wait_route(&format!("remote.{NS}.mesh.internal"), 8000, &["cluster2"])
            .await;
        (mesh, local_pod, remote_pod, local_vip, remote_vip)
    });
    load.block_on(async {
        for pod in [local_pod, remote_pod] {
            let listener = TcpListener::bind(pod).await.unwrap();
            tokio::spawn(backend(listener));
        }
    });

    let levels = s.concurrency.len();
    let mut paths = vec![
        Path::new("direct", "(a) client -> backend", local_pod, levels),
        Path::new("proxy", "(b) proxy -> local endpoint", local_vip, levels),
        Path::new(
            "hbone",
            "(c) proxy -> HBONE -> gateway -> endpoint",
            remote_vip,
            levels,
        ),
    ];
    let haproxy = start_haproxy(local_pod, s.haproxy_threads);
    let haproxy_note = match &haproxy {
        Ok(h) => {
            paths.push(Path::new(
                "haproxy",
                "(d) haproxy TCP mode -> local endpoint",
                h.addr,
                levels,
            ));
            format!("{}, nbthread {}", h.version, s.haproxy_threads)
        }
        Err(why) => {
            println!("haproxy: {why}");
            why.clone()
        }
    };
    println!(
        "threads: {}; haproxy: {haproxy_note}",
        if s.shared_runtime {
            "mesh, load generator and backends on one tokio runtime of 2 workers"
        } else {
            "mesh on a tokio runtime of 2 workers, load generator and backends on another of 2"
        }
    );
    for p in &paths {
        println!("{:8} {} at {}", p.name, p.what, p.addr);
    }

    // Every measurement runs on the load runtime's workers.
    let settings = std::sync::Arc::new(s);
    let s2 = settings.clone();
    let mut paths = load
        .block_on(load.spawn(async move {
            measure(&mut paths, &s2).await;
            paths
        }))
        .unwrap();
    print!("{}", report(&mut paths, &settings, &haproxy_note));

    drop(haproxy);
    mesh_rt.block_on(mesh.shutdown());
}
