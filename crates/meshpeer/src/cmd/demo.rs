//! `meshpeer demo`: the embedded multi-cluster sandbox (SPEC R1).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use meshpeer::demo::client::{self, Url};
use meshpeer::demo::edit::{label, scale};
use meshpeer::demo::run::Demo;
use meshpeer::demo::scenario::{self, Runtime, read_runtime};

use super::common::{Signals, runtime};
use crate::cli::{DemoArgs, DemoCommand};

/// Log lines below this are off by default: the demo prints its own story.
const DEMO_LOG_FILTER: &str = "warn";

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        None => {
            init_demo_logging();
            runtime()?.block_on(run_demo(args))
        }
        Some(DemoCommand::Curl {
            cluster,
            url,
            include,
            headers,
            method,
            timeout,
        }) => {
            let request = client::Request::new(&method, &headers)?;
            runtime()?.block_on(curl(
                &args.state.dir,
                &cluster,
                &url,
                &request,
                include,
                timeout,
            ))
        }
        Some(DemoCommand::Scale {
            cluster,
            namespace,
            target,
            replicas,
        }) => {
            let (_, rt) = running(&args.state.dir)?;
            let c = cluster_of(&rt, &cluster)?;
            let name = target.strip_prefix("deployment/").unwrap_or(&target);
            let name = name.strip_prefix("deployments/").unwrap_or(name);
            let s = scale(&c.folder, &namespace, name, replicas)?;
            println!(
                "deployment.apps/{name} scaled ({} -> {} pods in cluster {cluster})",
                s.before, s.after
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(DemoCommand::Label {
            cluster,
            namespace,
            resource,
            mut labels,
            overwrite,
        }) => {
            let (_, rt) = running(&args.state.dir)?;
            let c = cluster_of(&rt, &cluster)?;
            let name = if resource.contains('/') || labels.is_empty() {
                None
            } else {
                Some(labels.remove(0))
            };
            let msg = label(
                &c.folder,
                &namespace,
                &resource,
                name.as_deref(),
                &labels,
                overwrite,
            )?;
            println!("{msg}");
            Ok(ExitCode::SUCCESS)
        }
        Some(DemoCommand::Env) => {
            let (_, rt) = running(&args.state.dir)?;
            println!("{}", serde_json::to_string_pretty(&rt)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_demo_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEMO_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// The running demo under `state`: its folder and runtime file.
fn running(state: &Path) -> anyhow::Result<(PathBuf, Runtime)> {
    let mut found = Vec::new();
    for s in scenario::scenarios() {
        let root = state.join(s);
        if scenario::is_running(&root) {
            found.push(root);
        }
    }
    match found.as_slice() {
        [one] => Ok((one.clone(), read_runtime(one)?)),
        [] => bail!(
            "no running demo under {} (start one with `meshpeer demo`, or say where with --state)",
            state.display()
        ),
        _ => bail!(
            "several demos under {}: {}",
            state.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn cluster_of<'a>(rt: &'a Runtime, cluster: &str) -> anyhow::Result<&'a scenario::ClusterRuntime> {
    rt.clusters.get(cluster).with_context(|| {
        format!(
            "no cluster {cluster:?} in the running demo (there are: {})",
            rt.clusters.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })
}

async fn curl(
    state: &Path,
    cluster: &str,
    url: &str,
    request: &client::Request,
    include: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let (_, rt) = running(state)?;
    let c = cluster_of(&rt, cluster)?;
    let url: Url = url.parse()?;
    match client::send(c.dns, &url, request, timeout).await {
        Ok(r) => {
            if include {
                println!("{}\n", r.head);
            }
            print!("{}", r.body);
            if !r.body.ends_with('\n') {
                println!();
            }
            Ok(if (200..400).contains(&r.status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("HTTP {} from {} ({})", r.status, url.host, r.address);
                ExitCode::from(22)
            })
        }
        Err(e) => {
            eprintln!("meshpeer demo curl: {e:#}");
            // As curl: 6 = could not resolve host, 7 = could not connect.
            let code = if e.downcast_ref::<client::LookupError>().is_some() {
                6
            } else {
                7
            };
            Ok(ExitCode::from(code))
        }
    }
}

/// A URL worth trying first for a global service.
fn sample_url(host: &str, name: &str, port: u16) -> String {
    let path = match name {
        "productpage" => "/productpage",
        _ => "/hostname",
    };
    format!("http://{host}:{port}{path}")
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install()?;
    let tty = std::io::stderr().is_terminal();
    let (layout, fresh) = scenario::prepare(&args.state.dir, &args.scenario, args.reset)?;
    if args.prepare_only {
        println!("prepared {}", layout.root.display());
        return Ok(ExitCode::SUCCESS);
    }
    let root = layout.root.clone();
    println!(
        "meshpeer demo: scenario {} in {} ({})",
        layout.scenario,
        root.display(),
        if fresh {
            "unpacked from the examples; certificates made"
        } else {
            "kept from the last run; --reset starts over"
        }
    );
    let bar = if tty {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(100));
        b
    } else {
        ProgressBar::hidden()
    };
    let mut step = |msg: &str| {
        if tty {
            bar.set_message(msg.to_owned());
        } else {
            println!("  starting {msg}");
        }
    };
    let demo = match Demo::start(layout, args.only.as_deref(), &mut step).await {
        Ok(d) => d,
        Err(e) => {
            bar.finish_and_clear();
            return Err(e);
        }
    };
    step("waiting for peering and VIP listeners");
    let ready = demo.wait_ready(Duration::from_secs(30)).await;
    bar.finish_and_clear();
    if let Err(e) = &ready {
        println!("⚠ not everything is ready after 30 s: {e:#}");
    }
    print_summary(&demo);
    let web = if args.no_web {
        None
    } else {
        match meshpeer::web::serve(args.web_listen, meshpeer::web::demo_router(&demo)).await {
            Ok((addr, task)) => {
                println!(
                    "Global services page: http://{addr}/  (JSON API: http://{addr}/api/v1/services)"
                );
                Some(task)
            }
            Err(e) => {
                println!(
                    "⚠ no Global services page: {e:#} (choose another address with --web-listen ADDR:PORT, or --no-web)"
                );
                None
            }
        }
    };
    if args.check_only {
        if let Some(web) = web {
            web.abort();
        }
        demo.shutdown().await;
        return Ok(if ready.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    println!("Live status (Ctrl-C to stop):");
    let mut last: Vec<String> = Vec::new();
    let mut views: Vec<_> = demo.clusters.iter().map(|c| c.controller.view()).collect();
    loop {
        let lines = demo.status_lines();
        if lines != last {
            let now = humantime_now();
            for l in &lines {
                println!("  [{now}] {l}");
            }
            last = lines;
        }
        let changed =
            futures_util::future::select_all(views.iter_mut().map(|v| Box::pin(v.changed())));
        tokio::select! {
            why = signals.recv() => {
                println!("{why}: stopping the demo");
                break;
            }
            _ = changed => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    if let Some(web) = web {
        web.abort();
    }
    demo.shutdown().await;
    println!("stopped; the cluster folders stay in {}", root.display());
    Ok(ExitCode::SUCCESS)
}

fn humantime_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

fn print_summary(demo: &Demo) {
    println!();
    for c in &demo.clusters {
        let view = c.controller.current();
        println!("=== {} ===", c.name);
        println!(
            "  folder   {}   (edit it; changes apply live)",
            c.runtime.folder.display()
        );
        println!(
            "  DNS      {}   gateway {}   controller API {}",
            c.runtime.dns, c.runtime.gateway, c.runtime.api
        );
        let dns = c.runtime.dns;
        for s in view.catalog.services.values() {
            let port = s.ports.first().map(|p| p.number).unwrap_or(80);
            println!(
                "  {}  ->  {}  (from {})",
                s.hostname,
                s.vip,
                s.clusters().collect::<Vec<_>>().join(", ")
            );
            println!("      dig @{} -p {} {}", dns.ip(), dns.port(), s.hostname);
            println!(
                "      meshpeer demo curl --cluster {} {}",
                c.name,
                sample_url(&s.hostname, &s.name, port)
            );
        }
        println!();
    }
}
