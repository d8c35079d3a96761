//! The benchmark: one interleaved run measuring the raw Docker floor and Lessl on the same
//! engine, printing medians, p90 and the ratios the performance targets are stated in, then
//! what keeping large results costs in memory (RSS while a command prints 64 MB, and after
//! keeping 6 tasks x 64 MB until their TTL), and live output's latency from a command writing
//! a line to the client reading its event.
//!
//!     cargo bench --bench lessl                # 30 rounds
//!     cargo bench --bench lessl -- --rounds 60 --daemons 500
//!     cargo bench --bench lessl -- --before /tmp/lessl-old   # and another build, interleaved
//!
//! Beside `echo hello` it times the workload users send: a 90-byte script carried as a
//! resource and run (PUT into a daemon, warm POST, cold POST), and the two byte paths (a
//! 6 MiB resource in over the PUT without it, 8 MB of stdout out over the same command writing
//! to /dev/null: what moving the bytes costs beyond the task itself). With `--before`,
//! the same script and byte figures of another `lessl` binary, in the same rounds.
//!
//! Needs the engine and images of `contrib/test-env.sh --setup`. It starts its own
//! `lessl serve` (the release build) with a unique `--instance`, and removes everything it
//! created. Figures are wall-clock on a shared machine: compare ratios within one run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use lessl::docker::models::{ContainerConfig, ExecConfig, HostConfig, LogConfig};
use lessl::docker::Docker;
use serde_json::json;
use support::{Lessl, BUSYBOX};

struct Args {
    /// Another build of `lessl` to time the script and byte paths of, in the same rounds.
    before: Option<String>,
    rounds: usize,
    daemons: usize,
    flight: usize,
    burst: usize,
}

fn args() -> Args {
    let mut a = Args {
        before: None,
        rounds: 30,
        daemons: 500,
        flight: 8,
        burst: 48,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = || argv.get(i + 1).and_then(|v| v.parse().ok());
        match argv[i].as_str() {
            "--rounds" => a.rounds = val().unwrap_or(a.rounds),
            "--daemons" => a.daemons = val().unwrap_or(a.daemons),
            "--flight" => a.flight = val().unwrap_or(a.flight),
            "--burst" => a.burst = val().unwrap_or(a.burst),
            "--before" => a.before = argv.get(i + 1).cloned(),
            _ => {} // cargo bench passes --bench; ignore what is not ours.
        }
        i += 1;
    }
    a
}

/// Milliseconds of each sample, and the order statistics we print.
#[derive(Default)]
struct Series(Vec<f64>);

impl Series {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.0.push(t.elapsed().as_secs_f64() * 1000.0);
        out
    }
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
    fn median(&self) -> f64 {
        self.pct(0.5)
    }
}

fn raw_config(cmd: &[&str], logs: bool) -> ContainerConfig {
    ContainerConfig {
        image: BUSYBOX.into(),
        entrypoint: Vec::new(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        working_dir: None,
        user: None,
        labels: [("lessl.bench".to_string(), "raw".to_string())].into(),
        volumes: Default::default(),
        network_disabled: true,
        open_stdin: false,
        stdin_once: false,
        attach_stdin: false,
        attach_stdout: false,
        attach_stderr: false,
        host_config: HostConfig {
            network_mode: "none".into(),
            cap_drop: Vec::new(),
            security_opt: Vec::new(),
            memory: 512 << 20,
            memory_swap: 512 << 20,
            nano_cpus: 1_000_000_000,
            pids_limit: 256,
            binds: Vec::new(),
            log_config: LogConfig {
                kind: if logs { "json-file" } else { "none" }.into(),
            },
            readonly_rootfs: false,
            storage_opt: Default::default(),
            runtime: None,
        },
    }
}

/// The best raw Engine API sequence for one task: create, start, wait, logs, delete.
async fn raw_floor(docker: &Docker) -> String {
    let c = docker
        .create_container(None, &raw_config(&["echo", "hello"], true))
        .await
        .unwrap();
    docker.start_container(&c.id).await.unwrap();
    docker.wait_container(&c.id).await.unwrap();
    let logs = docker.container_logs(&c.id).await.unwrap();
    docker.remove_container(&c.id).await.unwrap();
    String::from_utf8_lossy(&logs).into_owned()
}

/// One `echo hello` exec into a running container: create, start (read to the end), inspect.
async fn raw_exec(docker: &Docker, id: &str) {
    use http_body_util::BodyExt;
    let exec = docker
        .create_exec(
            id,
            &ExecConfig {
                cmd: vec!["echo".into(), "hello".into()],
                env: Vec::new(),
                working_dir: None,
                attach_stdin: false,
                attach_stdout: true,
                attach_stderr: true,
                tty: false,
            },
        )
        .await
        .unwrap();
    let body = docker.start_exec(&exec.id).await.unwrap();
    body.collect().await.unwrap();
    docker.inspect_exec(&exec.id).await.unwrap();
}

fn docker_run_rm() {
    let out = std::process::Command::new("docker")
        .args(["run", "--rm", "--network", "none", BUSYBOX, "echo", "hello"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
}

fn post_echo(lessl: &Lessl) {
    let v = lessl
        .post(&json!({"image": BUSYBOX, "cmd": ["echo hello"]}).to_string())
        .expect(201)
        .json();
    assert_eq!(v["results"][0]["stdout"], "hello\n", "{v}");
}

/// The script users carry: 90 bytes of shell, run as /opt/job.sh.
const SCRIPT: &str = "#!/bin/sh\n# a job users send: a script resource, then run\nset -e\necho \"job $1 ran\"\nexit 0\n";
/// Bytes of the resource of the bytes-in path, and of stdout of the bytes-out path.
const BYTES_IN: usize = 6 << 20;
const BYTES_OUT: usize = 8_000_000;

fn script_body(image: bool) -> String {
    let mut v = json!({"resources": [{"content_type": "text/x-sh", "data": SCRIPT,
        "dest": "/opt/job.sh", "mode": "0755"}], "cmd": ["/opt/job.sh hello"]});
    if image {
        v["image"] = json!(BUSYBOX);
    }
    v.to_string()
}

fn check_script(v: &serde_json::Value) {
    assert_eq!(v["results"][0]["stdout"], "job hello ran\n", "{v}");
}

/// One build of Lessl under test: a Lessl, a pooled one, and a daemon task in the first.
struct Build {
    lessl: Lessl,
    warm: Lessl,
    daemon: String,
    /// Bodies of the byte paths, made once.
    bytes_in: String,
    bytes_out: String,
    /// PUT, warm POST, cold POST, each without then with the script; PUT with 6 MiB in; PUT
    /// with 8 MB out.
    /// The same command as `bytes_out` with its output to /dev/null: the task's own cost.
    bytes_null: String,
    /// Answers of the byte paths are read into this, reused.
    raw: Vec<u8>,
    s: [Series; 9],
}

impl Build {
    fn start(bin: Option<&str>, flight: usize) -> Build {
        let pool = format!("{BUSYBOX}={flight}");
        let start = |extra: &[&str]| match bin {
            Some(b) => Lessl::start_binary(b, extra),
            None => Lessl::start(extra),
        };
        let lessl = start(&["--max-daemons", "2000", "--max-running", "64"]);
        let warm = start(&["--max-running", "64", "--warm", &pool]);
        let daemon = lessl
            .post(&json!({"image": BUSYBOX, "daemon": true, "ttl": 3600}).to_string())
            .expect(201)
            .json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        use base64::Engine as _;
        let data: Vec<u8> = (0..BYTES_IN).map(|i| (i * 31 % 256) as u8).collect();
        let bytes_in = json!({"resources": [{"content_type": "application/octet-stream",
            "data": base64::engine::general_purpose::STANDARD.encode(&data), "dest": "/tmp/in.bin"}],
            "cmd": ["echo hello"]})
        .to_string();
        let bytes_out = json!({"limits": {"output_bytes": 16 << 20},
            "cmd": [format!("yes | head -c {BYTES_OUT}")]})
        .to_string();
        let bytes_null =
            json!({"cmd": [format!("yes | head -c {BYTES_OUT} > /dev/null")]}).to_string();
        Build {
            lessl,
            warm,
            daemon,
            bytes_in,
            bytes_out,
            bytes_null,
            raw: Vec::with_capacity(16 << 20),
            s: Default::default(),
        }
    }

    /// First-use costs of this Lessl (its agent volume, connections) are not the figures.
    fn round_warmup(&self) {
        post_echo(&self.lessl);
        check_script(&self.lessl.post(&script_body(true)).expect(201).json());
    }

    fn pool_full(&self, flight: usize) -> bool {
        pooled(&self.warm) >= flight
    }

    /// One round of every series, on a machine as quiet as the rounds make it.
    fn round(&mut self, flight: usize) {
        let Build {
            lessl,
            warm,
            daemon,
            bytes_in,
            bytes_out,
            bytes_null,
            raw,
            s,
        } = self;
        let [put, put_s, hot, hot_s, cold, cold_s, put_in, put_out, put_null] = s;
        // The PUTs on a quiet machine: the last round's warm POSTs are refilled and its
        // containers removed (both off the answers' paths, but on the same two cores).
        support::wait_until(Duration::from_secs(10), || pooled(warm) >= flight);
        std::thread::sleep(Duration::from_millis(300));
        // The first request after a pause pays for waking everything up: not timed.
        lessl.put(daemon, r#"{"cmd": ["true"]}"#).expect(200);
        let put_echo = || {
            let v = lessl
                .put(daemon, r#"{"cmd": ["echo hello"]}"#)
                .expect(200)
                .json();
            assert_eq!(v["results"][0]["stdout"], "hello\n");
        };
        put.time(put_echo);
        put_s.time(|| check_script(&lessl.put(daemon, &script_body(false)).expect(200).json()));
        // The byte paths time Lessl's answer read into a buffer kept across rounds, as a
        // client that moves megabytes would; parsing its JSON is the client's cost, not timed.
        let path = format!("/tasks/{daemon}");
        let mut put_raw = |series: &mut Series, body: &str| {
            let headers = [("Content-Type", "application/json")];
            let body = Some(body.as_bytes());
            series.time(|| support::send(&lessl.addr, "PUT", &path, body, &headers, raw));
            support::parse_response(raw).expect(200).json()
        };
        let v = put_raw(put_in, bytes_in);
        assert_eq!(v["results"][0]["stdout"], "hello\n");
        let v = put_raw(put_out, bytes_out);
        assert_eq!(
            v["results"][0]["stdout"].as_str().map(str::len),
            Some(BYTES_OUT)
        );
        let v = put_raw(put_null, bytes_null);
        assert_eq!(v["results"][0]["exit_code"], 0);
        // Each cold POST on a quiet engine: the container of the one before is removed in
        // the background, and that removal would be timed in the next one's start (the
        // second of a pair was 10-18% slower for it, script or not).
        let removed = || {
            support::wait_until(Duration::from_secs(10), || lessl.containers().len() <= 1);
        };
        removed();
        cold.time(|| post_echo(lessl));
        removed();
        cold_s.time(|| check_script(&lessl.post(&script_body(true)).expect(201).json()));
        support::wait_until(Duration::from_secs(10), || pooled(warm) >= flight);
        hot.time(|| post_echo(warm));
        support::wait_until(Duration::from_secs(10), || pooled(warm) >= flight);
        hot_s.time(|| check_script(&warm.post(&script_body(true)).expect(201).json()));
    }

    fn report(&self, label: &str) {
        let [put, put_s, hot, hot_s, cold, cold_s, put_in, put_out, put_null] = &self.s;
        println!("\n{label}: a 90-byte script resource run as /opt/job.sh, and bytes moved");
        println!(
            "{:<34} {:>10} {:>10} {:>8}",
            "", "without ms", "with ms", "ratio"
        );
        for (name, without, with, goal) in [
            ("PUT into a daemon", put, put_s, "<= 2"),
            ("warm POST", hot, hot_s, "<= 2"),
            ("cold POST", cold, cold_s, "<= 1.1"),
        ] {
            println!(
                "{name:<34} {:>10.1} {:>10.1} {:>8.2}   (target {goal})",
                without.median(),
                with.median(),
                with.median() / without.median()
            );
        }
        // Beyond the cost of the task itself: bytes in against `echo hello` (the command
        // the resource comes with), bytes out against the same command writing to /dev/null.
        let rate = |bytes: usize, with: &Series, task: &Series| {
            let extra = (with.median() - task.median()).max(0.01) / 1000.0;
            bytes as f64 / 1e6 / extra
        };
        println!(
            "bytes in: PUT with 6 MiB resource  {:>8.1} ms   {:>7.0} MB/s (target >= 150)",
            put_in.median(),
            rate(BYTES_IN, put_in, put)
        );
        println!(
            "bytes out: PUT printing 8 MB       {:>8.1} ms   {:>7.0} MB/s (target >= 150; the same to /dev/null: {:.1} ms)",
            put_out.median(),
            rate(BYTES_OUT, put_out, put_null),
            put_null.median()
        );
    }

    fn finish(self) {
        self.lessl.delete(&self.daemon).expect(204);
        self.lessl.finish();
        self.warm.finish();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `n` jobs with `flight` at once; returns jobs per second.
fn throughput(n: usize, flight: usize, job: impl Fn() + Sync) -> f64 {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..flight {
            s.spawn(|| {
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
                    job()
                }
            });
        }
    });
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let docker = Docker::new("/var/run/docker.sock", Duration::from_secs(60));
    let lessl = Lessl::start(&["--max-daemons", "2000", "--max-running", "64"]);
    let warm_pool = format!("{BUSYBOX}={}", a.flight);
    let warm = Lessl::start(&["--max-running", "64", "--warm", &warm_pool]);
    let binary = std::fs::metadata(env!("CARGO_BIN_EXE_lessl"))
        .map(|m| m.len())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(lessl.pid());

    // Warm-up: first-use costs (image layers in page cache, connection pools) are not
    // what the figures are about.
    docker_run_rm();
    rt.block_on(raw_floor(&docker));
    post_echo(&lessl);

    let running = rt
        .block_on(docker.create_container(None, &raw_config(&["sleep", "3600"], false)))
        .unwrap()
        .id;
    rt.block_on(docker.start_container(&running)).unwrap();
    let daemon = lessl
        .post(&json!({"image": BUSYBOX, "daemon": true, "ttl": 3600}).to_string())
        .expect(201)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut builds = vec![("this build", Build::start(None, a.flight))];
    if let Some(bin) = &a.before {
        builds.push(("before (--before)", Build::start(Some(bin), a.flight)));
    }
    let pool_full = || pooled(&warm) >= a.flight;
    support::wait_until(Duration::from_secs(60), pool_full);
    for (_, b) in &builds {
        support::wait_until(Duration::from_secs(60), || b.pool_full(a.flight));
        b.round_warmup();
    }
    let mut s: [Series; 6] = Default::default();
    let [run_rm, floor, exec, cold, put, hot] = &mut s;
    for _ in 0..a.rounds {
        run_rm.time(docker_run_rm);
        floor.time(|| rt.block_on(raw_floor(&docker)));
        exec.time(|| rt.block_on(raw_exec(&docker, &running)));
        // Right after raw exec, on the same quiet machine: no removal or refill running.
        // The engine is awake from the calls just timed; Lessl's first request after a
        // round of others pays for waking it up (as in each build's rounds): not timed.
        lessl.put(&daemon, r#"{"cmd": ["true"]}"#).expect(200);
        put.time(|| {
            let v = lessl
                .put(&daemon, r#"{"cmd": ["echo hello"]}"#)
                .expect(200)
                .json();
            assert_eq!(v["results"][0]["stdout"], "hello\n");
        });
        cold.time(|| post_echo(&lessl));
        // A pooled container taken now was refilled since the last round.
        support::wait_until(Duration::from_secs(10), pool_full);
        hot.time(|| post_echo(&warm));
        support::wait_until(Duration::from_secs(10), pool_full);
        for (_, b) in &mut builds {
            b.round(a.flight);
        }
    }

    println!(
        "\nLessl benchmark: {} interleaved rounds, busybox `echo hello`\n",
        a.rounds
    );
    println!("{:<34} {:>10} {:>10}", "", "median ms", "p90 ms");
    for (name, s) in [
        ("docker run --rm", &*run_rm),
        ("raw API floor (NetworkDisabled)", &*floor),
        ("raw API exec", &*exec),
        ("lessl cold POST", &*cold),
        ("lessl warm POST", &*hot),
        ("lessl PUT (one command)", &*put),
    ] {
        println!("{name:<34} {:>10.1} {:>10.1}", s.median(), s.pct(0.9));
    }
    println!();
    println!(
        "cold POST / raw API floor        {:>6.2}   (target <= 1.05)",
        cold.median() / floor.median()
    );
    println!(
        "PUT / raw exec                   {:>6.2}   (target <= 0.10)",
        put.median() / exec.median()
    );
    println!(
        "cold POST / docker run --rm      {:>6.2}",
        cold.median() / run_rm.median()
    );
    println!(
        "warm POST / docker run --rm      {:>6.3}   (target <= 0.05)",
        hot.median() / run_rm.median()
    );
    for (label, b) in &builds {
        b.report(label);
    }

    let raw_tps = throughput(a.burst, a.flight, || {
        rt.block_on(raw_floor(&docker));
    });
    let cold_tps = throughput(a.burst, a.flight, || post_echo(&lessl));
    support::wait_until(Duration::from_secs(60), pool_full);
    let warm_tps = throughput(a.burst, a.flight, || post_echo(&warm));
    println!("\nthroughput, {} in flight, {} tasks:", a.flight, a.burst);
    println!("  raw API floor   {raw_tps:>6.1} tasks/s");
    println!(
        "  lessl cold      {cold_tps:>6.1} tasks/s   ratio {:.2} (target >= 0.95)",
        cold_tps / raw_tps
    );
    println!(
        "  lessl warm      {warm_tps:>6.1} tasks/s   ratio {:.2} (a pool of {} refilling meanwhile)",
        warm_tps / raw_tps,
        a.flight
    );

    // Many live daemon tasks: memory and listing cost.
    let ids = std::sync::Mutex::new(Vec::new());
    let made = std::sync::atomic::AtomicUsize::new(0);
    throughput(a.daemons, a.flight, || {
        if made.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= a.daemons {
            return;
        }
        let v = lessl
            .post(&json!({"image": BUSYBOX, "daemon": true, "ttl": 3600}).to_string())
            .expect(201)
            .json();
        ids.lock()
            .unwrap()
            .push(v["id"].as_str().unwrap().to_string());
    });
    let busy_rss = rss_kib(lessl.pid());
    let mut list = Series::default();
    for _ in 0..20 {
        list.time(|| lessl.get("/tasks").expect(200));
    }
    println!("\nmemory and size:");
    println!(
        "  idle RSS                         {:>8.1} MiB (target <= 8)",
        idle_rss as f64 / 1024.0
    );
    println!(
        "  RSS with {} live daemon tasks   {:>8.1} MiB",
        a.daemons + 1,
        busy_rss as f64 / 1024.0
    );
    println!(
        "  GET /tasks with {} live tasks    p50 {:>6.1} ms (target <= 20)",
        a.daemons + 1,
        list.median()
    );
    println!(
        "  binary                           {:>8.2} MiB (target <= 6)",
        binary as f64 / 1048576.0
    );

    kept_output(&lessl);
    files_out(&lessl);
    stdin_cost(&lessl);

    let latency = live_latency(&lessl, 40);
    println!("\nlive output (Accept: application/x-ndjson), 40 lines 50 ms apart:");
    println!(
        "  line written -> its event read   median {:>5.1} ms, p90 {:>5.1} ms (target <= 20)",
        latency.median(),
        latency.pct(0.9)
    );

    followers(&lessl, 16);

    let ids = ids.into_inner().unwrap();
    let next = std::sync::atomic::AtomicUsize::new(0);
    throughput(ids.len(), a.flight, || {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        lessl.delete(&ids[i]).expect(204);
    });
    lessl.delete(&daemon).expect(204);
    rt.block_on(docker.remove_container(&running)).unwrap();
    lessl.finish();
    warm.finish();
    for (_, b) in builds {
        b.finish();
    }
}

/// RSS while one run prints 4 x 16 MiB (sampled every 10 ms: the peak), then after keeping
/// six such results: output spills to the state directory past a small budget, and kept
/// results live there, so neither should grow with the output.
fn kept_output(lessl: &Lessl) {
    let sixteen = 16 << 20;
    let body = json!({"image": BUSYBOX, "limits": {"output_bytes": sixteen},
        "cmd": vec![format!("yes | head -c {sixteen}"); 4]})
    .to_string();
    let post_big = || {
        let v = lessl.post(&body).expect(201).json();
        assert_eq!(
            v["results"][3]["stdout"].as_str().map(str::len),
            Some(sixteen)
        );
        v["id"].as_str().unwrap().to_string()
    };
    let before = rss_kib(lessl.pid());
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut ids = Vec::new();
    let mut run = Series::default();
    let peak = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(rss_kib(lessl.pid()));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        ids.push(run.time(post_big));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        sampler.join().unwrap()
    });
    let after_one = rss_kib(lessl.pid());
    for _ in 0..5 {
        ids.push(run.time(post_big));
    }
    let after_six = rss_kib(lessl.pid());
    let mut get = Series::default();
    for id in ids.iter().take(3) {
        get.time(|| lessl.get(&format!("/tasks/{id}")).expect(200));
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("\nkept output (4 commands x 16 MiB per task, results in the state directory):");
    println!(
        "  RSS before                       {:>8.1} MiB",
        mib(before)
    );
    println!(
        "  RSS peak while a run printed 64 MiB {:>6.1} MiB (+{:.1})",
        mib(peak),
        mib(peak.saturating_sub(before))
    );
    println!(
        "  RSS after that run               {:>8.1} MiB (+{:.1})",
        mib(after_one),
        mib(after_one.saturating_sub(before))
    );
    println!(
        "  RSS after keeping 6 x 64 MiB     {:>8.1} MiB (+{:.1}, target < +96)",
        mib(after_six),
        mib(after_six.saturating_sub(before))
    );
    println!(
        "  POST with 64 MiB of output       median {:>7.0} ms; GET of it median {:>5.0} ms",
        run.median(),
        get.median()
    );
    for id in ids {
        lessl.delete(&id).expect(204);
    }
}

/// Files out: a 64 MiB file read from a live task by `GET .../files/...` (throughput, and the
/// RSS peak while it streams), and a run that collects 8 MiB (its POST against one that does
/// not collect).
fn files_out(lessl: &Lessl) {
    let size = 64 << 20;
    let name = format!("bench-files-{}", std::process::id());
    let body = json!({"image": BUSYBOX, "daemon": true, "task_name": name,
        "limits": {"disk_mb": 512},
        "cmd": [format!("yes | head -c {size} > /big && head -c {} /big > /eight", 8 << 20)]})
    .to_string();
    lessl.post(&body).expect(201);
    let before = rss_kib(lessl.pid());
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut get = Series::default();
    let peak = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(rss_kib(lessl.pid()));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        for _ in 0..3 {
            let r = get.time(|| lessl.get(&format!("/tasks/{name}/files/big")).expect(200));
            assert_eq!(r.body.len(), size);
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        sampler.join().unwrap()
    });
    let put = |collect: bool| {
        let mut b = json!({"cmd": ["true"]});
        if collect {
            b["collect"] = json!(["/eight"]);
        }
        lessl.put(&name, &b.to_string()).expect(200)
    };
    let (mut plain, mut collecting) = (Series::default(), Series::default());
    for _ in 0..5 {
        plain.time(|| put(false));
        collecting.time(|| put(true));
    }
    println!("\nfiles out:");
    println!(
        "  GET of a 64 MiB file             median {:>7.0} ms ({:.0} MiB/s); RSS peak +{:.1} MiB",
        get.median(),
        64.0 / (get.median() / 1000.0),
        peak.saturating_sub(before) as f64 / 1024.0
    );
    println!(
        "  PUT `true`                       median {:>7.1} ms; collecting 8 MiB median {:>7.1} ms",
        plain.median(),
        collecting.median()
    );
    lessl.delete(&name).expect(204);
}

/// What a command's stdin costs: PUTs into a daemon task of `wc -c` given 0, 1 and 8 MiB
/// of stdin, over the attach stream and by exec (a second Lessl with `--runner exec`).
fn stdin_cost(lessl: &Lessl) {
    use base64::Engine as _;
    let exec = Lessl::start(&["--runner", "exec"]);
    println!("\ncommands with stdin (PUT of `wc -c` into a daemon, 7 rounds each):");
    for (path, l) in [("attach", lessl), ("exec", &exec)] {
        let d = l
            .post(
                &json!({"image": BUSYBOX, "daemon": true, "limits": {"memory_mb": 256}})
                    .to_string(),
            )
            .expect(201)
            .json();
        let id = d["id"].as_str().unwrap().to_string();
        for mib in [0usize, 1, 8] {
            let size = mib << 20;
            let cmd = if size == 0 {
                json!("wc -c")
            } else {
                let b64 = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; size]);
                json!({"run": "wc -c", "stdin_base64": b64})
            };
            let body = json!({ "cmd": [cmd] }).to_string();
            let mut put = Series::default();
            for _ in 0..7 {
                let v = put.time(|| l.put(&id, &body).expect(200).json());
                assert_eq!(
                    v["results"][0]["stdout"].as_str().map(str::trim),
                    Some(size.to_string().as_str())
                );
            }
            println!(
                "  {path:<6} stdin {mib} MiB                median {:>7.1} ms, p90 {:>7.1} ms",
                put.median(),
                put.pct(0.9)
            );
        }
        l.delete(&id).expect(204);
    }
    exec.finish();
}

/// Live output's latency: a command prints, every 50 ms, the time it read from the kernel
/// (`adjtimex`, microseconds; containers share the host's clock) and the client notes when
/// that line's `stdout` event arrived. The gap is an upper bound of "written to read": it also
/// holds the shell's `grep` exiting between reading the clock and `echo` writing the line.
fn live_latency(lessl: &Lessl, lines: usize) -> Series {
    use std::io::{BufRead, BufReader, Read, Write};
    let cmd = format!(
        "for i in $(seq {lines}); do set -- $(adjtimex | grep tv_); echo \"$2 $4\"; sleep 0.05; done"
    );
    let body = json!({"image": BUSYBOX, "cmd": [cmd]}).to_string();
    let mut s = std::net::TcpStream::connect(&lessl.addr).unwrap();
    write!(
        s,
        "POST /tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: application/x-ndjson\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while r.read_line(&mut line).unwrap() > 2 {
        line.clear();
    }
    let mut series = Series::default();
    let mut partial = Vec::new();
    loop {
        // Chunked: a size line, the chunk, CRLF.
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).unwrap();
        let arrived = std::time::SystemTime::now();
        partial.extend_from_slice(&chunk[..n]);
        while let Some(p) = partial.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = partial.drain(..=p).collect();
            let e: serde_json::Value = serde_json::from_slice(&l).unwrap();
            if e["event"] != "stdout" {
                continue;
            }
            for printed in e["data"].as_str().unwrap().lines() {
                let (sec, usec) = printed.split_once(' ').unwrap();
                let at = std::time::UNIX_EPOCH
                    + Duration::from_secs(sec.parse().unwrap())
                    + Duration::from_micros(usec.parse().unwrap());
                let gap = arrived.duration_since(at).unwrap_or_default();
                series.0.push(gap.as_secs_f64() * 1000.0);
            }
        }
    }
    assert_eq!(series.0.len(), lines, "every line arrived");
    series
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name; USER_HZ is 100.
    (ticks(11) + ticks(12)) / 100.0
}

/// A chatty task (about 1 MB/s for 8 s) run alone, then with `n` followers reading it live
/// through `GET /tasks/{id}/events`: Lessl's CPU time and RSS peak for each, and every
/// follower's bytes.
fn followers(lessl: &Lessl, n: usize) {
    use std::io::{Read, Write};
    let cmd = "for i in $(seq 80); do head -c 100000 /dev/zero | tr '\\0' x; sleep 0.1; done";
    let body =
        json!({"image": BUSYBOX, "cmd": [cmd], "limits": {"output_bytes": 16 << 20}}).to_string();
    let run = |followers: usize| {
        let (cpu0, rss0) = (cpu_s(lessl.pid()), rss_kib(lessl.pid()));
        let v = lessl
            .request_with("POST", "/tasks?wait=false", Some(&body), &[])
            .expect(202)
            .json();
        let id = v["id"].as_str().unwrap().to_string();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (peak, got) = std::thread::scope(|s| {
            let sampler = s.spawn(|| {
                let mut peak = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    peak = peak.max(rss_kib(lessl.pid()));
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak
            });
            let readers: Vec<_> = (0..followers)
                .map(|_| {
                    s.spawn(|| {
                        let mut c = std::net::TcpStream::connect(&lessl.addr).unwrap();
                        write!(
                            c,
                            "GET /tasks/{id}/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                        )
                        .unwrap();
                        let mut all = Vec::new();
                        c.read_to_end(&mut all).unwrap();
                        all.len()
                    })
                })
                .collect();
            let got: Vec<usize> = readers.into_iter().map(|r| r.join().unwrap()).collect();
            // Without followers, wait for the run's end by reading the task.
            while lessl.get(&format!("/tasks/{id}")).json()["state"] == "running" {
                std::thread::sleep(Duration::from_millis(100));
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (sampler.join().unwrap(), got)
        });
        let cpu = cpu_s(lessl.pid()) - cpu0;
        let _ = lessl.delete(&id);
        (cpu, peak.saturating_sub(rss0), got)
    };
    let (cpu_alone, rss_alone, _) = run(0);
    let (cpu_followed, rss_followed, got) = run(n);
    println!("\n{n} followers of a task printing about 1 MB/s for 8 s (GET /tasks/{{id}}/events):");
    println!(
        "  Lessl CPU   alone {cpu_alone:>5.2} s, followed {cpu_followed:>5.2} s; RSS peak growth alone +{:.1} MiB, followed +{:.1} MiB",
        rss_alone as f64 / 1024.0,
        rss_followed as f64 / 1024.0
    );
    println!(
        "  each follower read {:.1} MB (min {:.1})",
        got.iter().max().copied().unwrap_or(0) as f64 / 1e6,
        got.iter().min().copied().unwrap_or(0) as f64 / 1e6
    );
}

/// Idle pooled containers of a Lessl.
fn pooled(lessl: &Lessl) -> usize {
    support::docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=lessl.instance={}", lessl.instance),
        "--filter",
        "label=lessl.pool",
    ])
    .lines()
    .count()
}
