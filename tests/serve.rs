//! The node daemon end to end: a real `nexus-backend` process, a real `nexus-vmm serve`
//! process with real VMs, and HTTP over real sockets — cold then warm, several functions at
//! once, a runaway stopped at its timeout while others go on, errors and overload answered
//! with the right status, and metrics that move.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, Node, function, node, sample_text};
use serde_json::{Value, json};

#[test]
fn cold_then_warm_then_errors_and_metrics() {
    let n = node(
        &[
            ("wordcount", function("wordcount", "")),
            ("fibonacci", function("fibonacci", "timeout_ms = 20000")),
        ],
        &[],
        3_000,
    );
    let d = &n.daemon;
    let (status, health) = d.json("GET", "/healthz", "");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, list) = d.json("GET", "/v1/functions", "");
    assert_eq!(status, 200);
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fibonacci", "wordcount"]);

    // Cold, then warm on the same VM; the input object is read through the window.
    let body = json!({"input_key": "inputs/words.txt"});
    let (status, headers, text) = d.request(
        "POST",
        "/v1/functions/wordcount/invocations",
        &body.to_string(),
    );
    assert_eq!(status, 200, "{text}\n{}", d.log());
    let cold: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(cold["start"], "cold");
    assert!(headers.contains(&("x-nexus-start".into(), "cold".into())));
    assert_eq!(cold["output"], "3000\n");
    assert_eq!(cold["outcome"], "success");
    let input_len = sample_text(3_000).len() as u64;
    assert_eq!(cold["bytes_in"].as_u64(), Some(input_len));
    assert_eq!(cold["bytes_out"].as_u64(), Some(5));
    assert!(cold["vm_exits"].as_u64().unwrap() > 0);
    assert!(cold["timings_ms"]["restore"].as_f64().unwrap() > 0.0);
    let (status, warm) = d.invoke("wordcount", &body);
    assert_eq!(status, 200, "{warm}");
    assert_eq!(warm["start"], "warm");
    assert_eq!(warm["vm"], cold["vm"]);
    assert_eq!(warm["output"], "3000\n");
    assert_eq!(warm["timings_ms"]["restore"].as_f64(), Some(0.0));

    // Inline input, a stored output, and the function's own error.
    let (status, fib) = d.invoke(
        "fibonacci",
        &json!({"input": "20", "output_key": "outputs/fib"}),
    );
    assert_eq!(status, 200, "{fib}");
    assert_eq!(fib["output_key"], "outputs/fib");
    assert!(fib.get("output").is_none());
    assert_eq!(fib["output_len"], 15);
    assert_eq!(
        std::fs::read_to_string(n.store.join("outputs/fib")).unwrap(),
        "fib(20) = 6765\n"
    );
    let (status, error) = d.invoke("fibonacci", &json!({"input": "twenty"}));
    assert_eq!(status, 502, "{error}");
    assert_eq!(error["error"], "FunctionError");
    assert_eq!(error["start"], "warm");
    assert!(
        error["message"].as_str().unwrap().contains("whole number"),
        "{error}"
    );
    // The VM survives its function's error.
    let (status, again) = d.invoke("fibonacci", &json!({"input": "10"}));
    assert_eq!((status, again["start"].as_str()), (200, Some("warm")));
    assert_eq!(again["output"], "fib(10) = 55\n");

    // Requests that never reach a function.
    let (status, e) = d.invoke("nosuch", &body);
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("ResourceNotFound"))
    );
    for bad in [
        "{\"input_key\":",
        "[]",
        "",
        "{\"input_key\":\"a\",\"input\":\"b\"}",
        "{\"inptu\":\"x\"}",
    ] {
        let (status, e) = d.json("POST", "/v1/functions/wordcount/invocations", bad);
        assert_eq!(
            (status, e["error"].as_str()),
            (400, Some("InvalidRequest")),
            "{bad}: {e}"
        );
    }
    // The caller's mistakes the backend finds are 4xx too, and the VM stays parked.
    let (status, e) = d.invoke("wordcount", &json!({"input_key": "inputs/missing.txt"}));
    assert_eq!(
        (status, e["error"].as_str()),
        (404, Some("ResourceNotFound")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("inputs/missing.txt"),
        "{e}"
    );
    for bad in [
        json!({"input_key": "inputs/../words.txt"}),
        json!({"input": "x", "output_key": "outputs//x"}),
    ] {
        let (status, e) = d.invoke("wordcount", &bad);
        assert_eq!(
            (status, e["error"].as_str()),
            (400, Some("InvalidRequest")),
            "{bad}: {e}"
        );
    }
    let (status, r) = d.invoke("wordcount", &body);
    assert_eq!((status, r["start"].as_str()), (200, Some("warm")), "{r}");
    assert_eq!(r["vm"], cold["vm"]);
    // An inline input larger than a control line: it goes to the backend as raw bytes.
    let text = sample_text(40_000);
    assert!(text.len() > 64 << 10);
    let (status, r) = d.invoke("wordcount", &json!({"input": text}));
    assert_eq!(
        (status, r["output"].as_str()),
        (200, Some("40000\n")),
        "{r}"
    );
    assert_eq!(r["bytes_in"].as_u64(), Some(text.len() as u64));
    let (status, _) = d.json("DELETE", "/v1/functions", "");
    assert_eq!(status, 405);

    // The metrics moved.
    let warm_ok = d.metric(
        "nexus_invocations_total{function=\"wordcount\",outcome=\"success\",start=\"warm\"}",
    );
    assert_eq!(warm_ok, 3.0);
    assert_eq!(
        d.metric("nexus_cold_starts_total{function=\"wordcount\"}"),
        1.0
    );
    assert_eq!(
        d.metric("nexus_warm_starts_total{function=\"fibonacci\"}"),
        2.0
    );
    assert!(d.metric("nexus_vm_exits_total{function=\"wordcount\"}") > 0.0);
    assert!(
        d.metric("nexus_window_bytes_total{function=\"wordcount\",direction=\"in\"}")
            >= 2.0 * input_len as f64
    );
    assert_eq!(
        d.metric("nexus_invocation_duration_seconds_count{function=\"wordcount\",start=\"cold\"}"),
        1.0
    );
    assert_eq!(
        d.metric("nexus_requests_rejected_total{status=\"404\"}"),
        2.0
    );
    assert_eq!(
        d.metric("nexus_requests_rejected_total{status=\"400\"}"),
        7.0
    );
    assert_eq!(
        d.metric("nexus_vms{function=\"wordcount\",state=\"idle\"}"),
        1.0
    );
    assert_eq!(d.metric("nexus_backend_up"), 1.0);
    assert_eq!(d.metric("nexus_backend_vms"), 2.0);
    assert!(d.metric("nexus_vmm_resident_bytes") > 0.0);
    assert!(d.metric("nexus_backend_resident_bytes") > 0.0);
    drop(n.backend);
}

#[test]
fn a_runaway_is_stopped_at_its_timeout_while_other_functions_go_on() {
    let n = node(
        &[
            ("wordcount", function("wordcount", "")),
            ("spin", function("fibonacci", "timeout_ms = 3000")),
        ],
        &[],
        500,
    );
    let d = &n.daemon;
    // Snapshot both first, so that the runaway's clock is not spent on set-up.
    for f in ["wordcount", "spin"] {
        let (status, warm) = d.json("POST", &format!("/v1/functions/{f}/warm"), "{\"count\":1}");
        assert_eq!(status, 200, "{warm}");
    }
    let address = d.address.clone();
    let runaway = std::thread::spawn(move || {
        let started = Instant::now();
        let mut stream = TcpStream::connect(&address).unwrap();
        let body = "{\"input\":\"70\"}";
        write!(
            stream,
            "POST /v1/functions/spin/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        (started.elapsed(), response)
    });
    // Others are served while the runaway burns its vCPU.
    let mut served = 0;
    while !runaway.is_finished() {
        let (status, r) = d.invoke("wordcount", &json!({"input_key": "inputs/words.txt"}));
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["output"], "500\n");
        served += 1;
    }
    let (elapsed, response) = runaway.join().unwrap();
    assert!(response.starts_with("HTTP/1.1 504"), "{response}");
    assert!(response.contains("FunctionTimeout"), "{response}");
    assert!(
        elapsed >= Duration::from_millis(2900),
        "stopped after {elapsed:?}"
    );
    assert!(
        served >= 3,
        "only {served} invocations were served beside the runaway"
    );
    assert_eq!(
        d.metric("nexus_vm_stops_total{function=\"spin\",reason=\"timeout\"}"),
        1.0
    );
    assert_eq!(
        d.metric("nexus_invocations_total{function=\"spin\",outcome=\"timeout\",start=\"warm\"}"),
        1.0
    );
    // The stopped VM is gone; the next invocation restores a new one.
    assert_eq!(d.metric("nexus_vms{function=\"spin\",state=\"idle\"}"), 0.0);
    let (status, r) = d.invoke("spin", &json!({"input": "12"}));
    assert_eq!((status, r["start"].as_str()), (200, Some("cold")), "{r}");
    assert_eq!(r["output"], "fib(12) = 144\n");
}

#[test]
fn several_functions_at_once_within_the_caps() {
    let n = node(
        &[
            ("wordcount", function("wordcount", "max_vms = 2")),
            ("compress", function("compress", "max_vms = 2")),
            ("fibonacci", function("fibonacci", "max_vms = 2")),
        ],
        &["--max-vms", "5"],
        20_000,
    );
    let d = &n.daemon;
    let text = sample_text(20_000);
    std::thread::scope(|scope| {
        let mut threads = Vec::new();
        for worker in 0..6 {
            let text = &text;
            threads.push(scope.spawn(move || {
                let mut starts = Vec::new();
                for round in 0..3 {
                    let (function, body) = match (worker + round) % 3 {
                        0 => ("wordcount", json!({"input_key": "inputs/words.txt"})),
                        1 => ("compress", json!({"input_key": "inputs/words.txt"})),
                        _ => ("fibonacci", json!({"input": "25"})),
                    };
                    let (status, r) = d.invoke(function, &body);
                    assert_eq!(status, 200, "{function}: {r}");
                    match function {
                        "wordcount" => assert_eq!(r["output"], "20000\n"),
                        "fibonacci" => assert_eq!(r["output"], "fib(25) = 75025\n"),
                        _ => {
                            assert_eq!(r["output_encoding"], "base64");
                            assert!(r["output_len"].as_u64().unwrap() < text.len() as u64 / 4);
                        }
                    }
                    starts.push(r["start"].as_str().unwrap().to_owned());
                }
                starts
            }));
        }
        let starts: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(starts.len(), 18);
        assert!(starts.iter().any(|s| s == "warm"), "{starts:?}");
    });
    let vms: f64 = ["wordcount", "compress", "fibonacci"]
        .iter()
        .map(|f| d.metric(&format!("nexus_vms{{function=\"{f}\",state=\"idle\"}}")))
        .sum();
    assert!((3.0..=5.0).contains(&vms), "{vms} VMs parked");
    let total: f64 = ["success"]
        .iter()
        .map(|o| {
            ["wordcount", "compress", "fibonacci"]
                .iter()
                .flat_map(|f| ["cold", "warm"].map(|s| (f, s)))
                .map(|(f, s)| {
                    d.metric(&format!(
                        "nexus_invocations_total{{function=\"{f}\",outcome=\"{o}\",start=\"{s}\"}}"
                    ))
                })
                .sum::<f64>()
        })
        .sum();
    assert_eq!(total, 18.0);
}

#[test]
fn overload_is_answered_429_and_503() {
    let n = node(
        &[(
            "spin",
            function("fibonacci", "timeout_ms = 4000\nmax_vms = 1"),
        )],
        &["--max-queue", "1", "--queue-timeout-ms", "1500"],
        10,
    );
    let d = &n.daemon;
    let (status, _) = d.json("POST", "/v1/functions/spin/warm", "{\"count\":1}");
    assert_eq!(status, 200);
    std::thread::scope(|scope| {
        let busy = scope.spawn(|| d.invoke("spin", &json!({"input": "70"})).0);
        std::thread::sleep(Duration::from_millis(300));
        let queued = scope.spawn(|| d.invoke("spin", &json!({"input": "5"})));
        std::thread::sleep(Duration::from_millis(300));
        let refused = scope.spawn(|| d.invoke("spin", &json!({"input": "5"})));
        let mut statuses = [queued.join().unwrap(), refused.join().unwrap()]
            .map(|(status, e)| (status, e["error"].as_str().unwrap_or("").to_owned()));
        statuses.sort();
        assert_eq!(
            statuses,
            [
                (429, "TooManyRequests".to_owned()),
                (503, "ServiceUnavailable".to_owned())
            ]
        );
        assert_eq!(busy.join().unwrap(), 504);
    });
    assert_eq!(
        d.metric("nexus_requests_rejected_total{status=\"429\"}"),
        1.0
    );
    assert_eq!(
        d.metric("nexus_requests_rejected_total{status=\"503\"}"),
        1.0
    );
}

#[test]
fn parked_vms_survive_or_are_replaced_after_a_backend_restart() {
    let mut n = node(&[("wordcount", function("wordcount", ""))], &[], 100);
    let (status, warm) = n
        .daemon
        .json("POST", "/v1/functions/wordcount/warm", "{\"count\":2}");
    assert_eq!(status, 200, "{warm}");
    n.backend.restart();
    // Every invocation is answered: by a parked VM that reconnected, or by a new one restored
    // in place of a VM that lost its session.
    let mut starts = Vec::new();
    for _ in 0..4 {
        let (status, r) = n
            .daemon
            .invoke("wordcount", &json!({"input_key": "inputs/words.txt"}));
        assert_eq!(status, 200, "{r}\n{}", n.daemon.log());
        assert_eq!(r["output"], "100\n");
        starts.push(r["start"].as_str().unwrap().to_owned());
    }
    eprintln!("starts after the restart: {starts:?}");
    assert_eq!(n.daemon.metric("nexus_backend_up"), 1.0);
}

#[test]
fn a_crashed_or_exited_guest_is_answered_and_replaced() {
    let n = node(
        &[("faulty", function("faulty", "timeout_ms = 20000"))],
        &[],
        10,
    );
    let d = &n.daemon;
    let (status, r) = d.invoke("faulty", &json!({"input": "hello"}));
    assert_eq!((status, r["start"].as_str()), (200, Some("cold")), "{r}");
    assert_eq!(r["output"], "hello");
    let first_vm = r["vm"].clone();

    // A guest that crashes during its invocation: 502 at once, not at the timeout.
    let started = Instant::now();
    let (status, r) = d.invoke("faulty", &json!({"input": "crash"}));
    assert_eq!(
        (status, r["error"].as_str()),
        (502, Some("FunctionCrashed")),
        "{r}"
    );
    assert!(
        r["message"].as_str().unwrap().contains("triple fault"),
        "{r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        d.metric("nexus_vm_stops_total{function=\"faulty\",reason=\"crash\"}"),
        1.0
    );
    assert_eq!(
        d.metric("nexus_vms{function=\"faulty\",state=\"idle\"}"),
        0.0
    );

    // The next invocation gets a new VM.
    let (status, r) = d.invoke("faulty", &json!({"input": "again"}));
    assert_eq!((status, r["start"].as_str()), (200, Some("cold")), "{r}");
    assert_ne!(r["vm"], first_vm);

    // A guest that exits with the invocation in flight is a crash too, for the caller.
    let (status, r) = d.invoke("faulty", &json!({"input": "exit"}));
    assert_eq!(
        (status, r["error"].as_str()),
        (502, Some("FunctionCrashed")),
        "{r}"
    );
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("exited with code 0"),
        "{r}"
    );
    let (status, r) = d.invoke("faulty", &json!({"input": "still here"}));
    assert_eq!(
        (status, r["output"].as_str()),
        (200, Some("still here")),
        "{r}"
    );
    assert_eq!(
        d.metric("nexus_vm_stops_total{function=\"faulty\",reason=\"crash\"}"),
        2.0
    );
}

#[test]
fn a_restarted_daemon_reuses_its_snapshots_unless_the_function_changed() {
    let Node {
        _dir: dir,
        store: _,
        backend,
        daemon,
    } = node(&[("wordcount", function("wordcount", ""))], &[], 50);
    let body = json!({"input_key": "inputs/words.txt"});
    let boots = "nexus_vm_starts_total{function=\"wordcount\",how=\"boot\"}";
    let (status, r) = daemon.invoke("wordcount", &body);
    assert_eq!((status, r["start"].as_str()), (200, Some("cold")), "{r}");
    assert_eq!(daemon.metric(boots), 1.0);
    drop(daemon);

    // Same state directory, same function: the snapshot on disk is restored at once.
    let daemon = Daemon::start(
        dir.path(),
        &backend,
        &[("wordcount", function("wordcount", ""))],
        &[],
    );
    let (status, r) = daemon.invoke("wordcount", &body);
    assert_eq!((status, r["output"].as_str()), (200, Some("50\n")), "{r}");
    assert_eq!(daemon.metric(boots), 0.0);
    assert!(
        daemon.log().contains("reusing the snapshot"),
        "{}",
        daemon.log()
    );
    drop(daemon);

    // A different memory size: a new snapshot.
    let changed = "guest = \"wordcount\"\nmemory_mib = 48\nwindow_mib = 16\n".to_owned();
    let daemon = Daemon::start(dir.path(), &backend, &[("wordcount", changed)], &[]);
    let (status, r) = daemon.invoke("wordcount", &body);
    assert_eq!((status, r["output"].as_str()), (200, Some("50\n")), "{r}");
    assert_eq!(daemon.metric(boots), 1.0);
}

/// Slow or idle HTTP clients cannot hold the node's connections: headers and bodies have
/// deadlines, and connections beyond the cap wait in the backlog until a slot frees.
#[test]
fn slow_clients_are_cut_off_and_connections_are_capped() {
    let n = node(
        &[("wordcount", function("wordcount", ""))],
        &[
            "--max-connections",
            "2",
            "--header-timeout-ms",
            "500",
            "--body-timeout-ms",
            "500",
        ],
        10,
    );
    let connect = || {
        let stream = TcpStream::connect(&n.daemon.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    };
    // A client that never finishes its headers is closed at the header deadline.
    let mut slow_headers = connect();
    slow_headers
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A client whose body never comes is answered 408 at the body deadline.
    let mut slow_body = connect();
    slow_body
        .write_all(
            b"POST /v1/functions/wordcount/invocations HTTP/1.1\r\nHost: x\r\n\
              Content-Length: 100\r\n\r\n{\"input\":",
        )
        .unwrap();
    // Both slots are taken: a third client is not served until one frees.
    let start = std::time::Instant::now();
    let (status, _, _) = n.daemon.request("GET", "/healthz", "");
    assert_eq!(status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "served before a slot freed ({:?})",
        start.elapsed()
    );
    let mut answer = String::new();
    let _ = slow_headers.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    let mut answer = String::new();
    slow_body.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    // The node still serves.
    let (status, body) = n.daemon.invoke(
        "wordcount",
        &serde_json::json!({"input_key": "inputs/words.txt"}),
    );
    assert_eq!(status, 200, "{body}");
}

/// A function written in a crate of its own (`tests/fixtures/hello-function`, as
/// docs/writing-functions.md describes), built with cargo, registered by the path of its ELF
/// and served: inline input, an output key (stored by the function's runtime), its own error.
#[test]
fn a_function_from_its_own_crate_is_built_registered_and_served() {
    let (target, _) = nexus::guests::target_profile();
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hello-function/Cargo.toml");
    let elf = nexus::guests::build_guest_package(
        &manifest,
        "hello-function",
        &target.join("fixtures"),
        Duration::from_secs(600),
    )
    .unwrap();
    let toml = format!(
        "guest = \"{}\"\nmemory_mib = 32\nwindow_mib = 8\n",
        elf.display()
    );
    let n = node(&[("hello", toml)], &[], 10);
    let d = &n.daemon;

    let (status, cold) = d.invoke("hello", &json!({"input": "Nexus"}));
    assert_eq!(status, 200, "{cold}\n{}", d.log());
    assert_eq!(
        (cold["start"].as_str(), cold["output"].as_str()),
        (Some("cold"), Some("Hello, Nexus!\n"))
    );
    assert_eq!(cold["outcome"], "success");

    // With an output key: the object appears in the store, durably, before the answer.
    let (status, stored) = d.invoke(
        "hello",
        &json!({"input": " world ", "output_key": "outputs/hello.txt"}),
    );
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["start"], "warm");
    assert_eq!(stored["output_key"], "outputs/hello.txt");
    assert_eq!(stored["output_len"], 14);
    assert!(stored.get("output").is_none(), "{stored}");
    assert_eq!(
        std::fs::read(n.store.join("outputs/hello.txt")).unwrap(),
        b"Hello, world!\n"
    );
    // Stored by the function's runtime (a write-behind PUT), not by the node afterwards.
    assert_eq!(
        stored["timings_ms"]["output_store"].as_f64(),
        Some(0.0),
        "{stored}"
    );

    // The function's own error, and the VM goes on.
    let (status, error) = d.invoke("hello", &json!({"input": "  "}));
    assert_eq!(status, 502, "{error}");
    assert_eq!(error["error"], "FunctionError");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("tell me who to greet"),
        "{error}"
    );
    let (status, again) = d.invoke("hello", &json!({"input": "again"}));
    assert_eq!((status, again["start"].as_str()), (200, Some("warm")));
    assert_eq!(again["output"], "Hello, again!\n");
    assert_eq!(again["vm"], cold["vm"]);

    // The same function through the Lambda Invoke API: raw payload in, raw result out, and
    // its own error as Lambda reports one.
    let lambda = "/2015-03-31/functions/hello/invocations";
    let (status, headers, body) = d.request_bytes("POST", lambda, &[], b"Lambda");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"Hello, Lambda!\n");
    let header = |headers: &[(String, String)], name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert!(
        header(&headers, "x-amzn-requestid").is_some(),
        "{headers:?}"
    );
    assert_eq!(header(&headers, "x-amz-function-error"), None);
    let (status, headers, body) = d.request_bytes(
        "POST",
        "/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:function:hello/invocations",
        &[],
        b"   ",
    );
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "x-amz-function-error").as_deref(),
        Some("Unhandled")
    );
    assert!(
        String::from_utf8_lossy(&body).contains("tell me who to greet"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn warm_input_moves_the_first_invocations_page_faults_to_parking() {
    let primed = "guest = \"wordcount\"\nmemory_mib = 32\nwindow_mib = 16\n\
                  warm_input = \"warm up the pages\"\n\n[limits]\nmax_vms = 2\n";
    let failing = "guest = \"fibonacci\"\nmemory_mib = 32\nwindow_mib = 16\n\
                   warm_input = \"not a number\"\n\n[limits]\nmax_vms = 2\n";
    let n = node(
        &[
            ("plain", function("wordcount", "max_vms = 2")),
            ("primed", primed.to_owned()),
            ("failing", failing.to_owned()),
        ],
        &[],
        300,
    );
    let d = &n.daemon;
    let body = json!({"input_key": "inputs/words.txt"});
    // First and second invocation of one VM parked ahead of demand (the pool picks the most
    // recently used VM, so both go to the same one).
    let mut exits = Vec::new();
    for f in ["plain", "primed"] {
        let (status, warm) = d.json("POST", &format!("/v1/functions/{f}/warm"), "{\"count\":1}");
        assert_eq!(status, 200, "{warm}\n{}", d.log());
        let (_, first) = d.invoke(f, &body);
        let (_, second) = d.invoke(f, &body);
        for r in [&first, &second] {
            assert_eq!(r["start"], "warm", "{r}");
            assert_eq!(r["output"], "300\n", "{r}");
        }
        assert_eq!(first["vm"], second["vm"]);
        // The warm-up is not an invocation: the first real one is the VM's first.
        assert!(
            first["request_id"].as_str().unwrap().ends_with("-1"),
            "{first}"
        );
        exits.push((
            first["vm_exits"].as_u64().unwrap(),
            second["vm_exits"].as_u64().unwrap(),
        ));
    }
    let [(plain_first, plain_second), (primed_first, primed_second)] = exits[..] else {
        unreachable!()
    };
    // Without a warm-up the first invocation maps the guest pages its path touches (one
    // exit each); with it, the first costs what the second does.
    assert!(
        plain_first > plain_second + 10,
        "plain: {plain_first} then {plain_second} exits"
    );
    assert!(
        primed_first <= primed_second + 5,
        "primed: {primed_first} then {primed_second} exits"
    );
    assert_eq!(
        d.metric("nexus_invocations_total{function=\"primed\",outcome=\"success\",start=\"warm\"}"),
        2.0,
        "{}",
        d.log()
    );

    // A warm-up the function fails refuses the warm request, naming why.
    let (status, answer) = d.json("POST", "/v1/functions/failing/warm", "{\"count\":1}");
    assert!(status >= 500, "{status} {answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("warm_input"),
        "{answer}"
    );
}

/// Descriptors a parked nexus-io VM holds in the daemon: its vCPU, its kick and call eventfds,
/// and its vhost-user connection. Its lazily restored RAM maps the snapshot's memory file
/// through the one descriptor every VM of the function shares, its window is in a memfd
/// shared by up to 64 windows, its control connection is the daemon's one, the VM's own
/// descriptor is closed once its vCPU runs, and its vCPU statistics are open only during an
/// invocation.
const MAX_FDS_PER_PARKED_VM: usize = 4;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Names of the threads of process `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

/// Threads of process `pid` that the VMM runs, outside the control plane's runtime (whose
/// threads, named `nexus-node`, come and go with its blocking work): vCPU threads, the vCPU
/// pool's, the device monitor's. Not counted either: KVM's own worker per VM
/// (`kvm-nx-lpage-recovery`, a kernel task listed among the process's threads).
fn vmm_threads(pid: u32) -> usize {
    thread_names(pid)
        .iter()
        .filter(|name| !name.starts_with("nexus-node") && !name.starts_with("kvm-"))
        .count()
}

#[test]
fn a_parked_vm_woken_after_its_neighbours_were_reaped_still_answers() {
    // Two functions of one window size, so that their windows share slabs of 4: `brief`'s
    // VMs are reaped after a second, `keep`'s stay.
    let n = node(
        &[
            ("keep", function("wordcount", "keep_alive_s = 3600")),
            ("brief", function("wordcount", "keep_alive_s = 1")),
        ],
        &["--windows-per-slab", "4", "--pick", "lru"],
        100,
    );
    let d = &n.daemon;
    let warm = |f: &str, count: usize| {
        let (status, r) = d.json(
            "POST",
            &format!("/v1/functions/{f}/warm"),
            &format!("{{\"count\":{count}}}"),
        );
        assert_eq!(status, 200, "{r}\n{}", d.log());
    };
    let invoke = |f: &str| {
        let (status, r) = d.invoke(f, &json!({"input_key": "inputs/words.txt"}));
        assert_eq!(status, 200, "{r}\n{}", d.log());
        assert_eq!(r["output"], "100\n", "{r}");
        r
    };
    warm("keep", 2);
    warm("brief", 5);
    // `brief`'s VMs go; their slots are punched out of the slabs `keep`'s windows are in.
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.metric("nexus_vms{function=\"brief\",state=\"idle\"}") > 0.0 {
        assert!(Instant::now() < deadline, "brief's VMs were not reaped");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both of `keep`'s parked VMs answer (least recently used first: each in turn).
    let mut vms = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r = invoke("keep");
        assert_eq!(r["start"], "warm", "{r}");
        vms.insert(r["vm"].to_string());
    }
    assert_eq!(vms.len(), 2, "{vms:?}");
    // New windows in the freed slots start clean: their VMs answer too.
    warm("brief", 5);
    for _ in 0..5 {
        let r = invoke("brief");
        assert_eq!(r["start"], "warm", "{r}");
    }
    invoke("keep");
}

#[test]
fn a_parked_vm_costs_few_descriptors() {
    let n = node(
        &[(
            "wordcount",
            function("wordcount", "max_vms = 64\nkeep_alive_s = 3600"),
        )],
        // The warm-up burst grows the vCPU pool (one worker per VM starting at once, up to
        // four at a time on a host with four cores or more): its extra workers retire soon.
        &["--pick", "lru", "--vcpu-idle-retire-ms", "200"],
        100,
    );
    let d = &n.daemon;
    let warm = |count: usize| {
        let (status, r) = d.json(
            "POST",
            "/v1/functions/wordcount/warm",
            &format!("{{\"count\":{count}}}"),
        );
        assert_eq!(status, 200, "{r}\n{}", d.log());
    };
    // The baseline: the snapshot taken, one VM parked, the backend connection open.
    warm(1);
    let (status, r) = d.invoke("wordcount", &json!({"input_key": "inputs/words.txt"}));
    assert_eq!(status, 200, "{r}");
    let base = open_fds(d.pid());
    let base_threads = vmm_threads(d.pid());
    const MORE: usize = 32;
    warm(1 + MORE);
    // The warm request's HTTP connection may be closed a moment after its answer: give such
    // a passing descriptor up to 5 s to go before counting.
    let deadline = Instant::now() + Duration::from_secs(5);
    let parked = loop {
        let open = open_fds(d.pid());
        if open.saturating_sub(base) <= MAX_FDS_PER_PARKED_VM * MORE || Instant::now() > deadline {
            break open;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let per_vm = parked.saturating_sub(base) as f64 / MORE as f64;
    eprintln!(
        "{base} descriptors with one VM, {parked} with {}: {per_vm:.2} per VM",
        1 + MORE
    );
    assert!(
        parked.saturating_sub(base) <= MAX_FDS_PER_PARKED_VM * MORE,
        "{per_vm:.2} descriptors per parked VM ({base} -> {parked})"
    );
    // Parked, they hold no thread: once the burst's workers have retired, the vCPU pool
    // keeps at most its two spare workers whatever the number of VMs (the baseline counts
    // one or two); a thread per vCPU would be 32 more.
    const POOL_SLACK: usize = 2;
    let deadline = Instant::now() + Duration::from_secs(10);
    let threads = loop {
        let threads = vmm_threads(d.pid());
        if threads <= base_threads + POOL_SLACK || Instant::now() > deadline {
            break threads;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        threads <= base_threads + POOL_SLACK,
        "{MORE} more parked VMs: {base_threads} -> {threads} threads: {:?}",
        thread_names(d.pid())
    );
    // They all still answer, and their exits are still counted (from statistics opened for
    // each invocation).
    let exits = d.metric("nexus_vm_exits_total{function=\"wordcount\"}");
    for _ in 0..(1 + MORE) {
        let (status, r) = d.invoke("wordcount", &json!({"input_key": "inputs/words.txt"}));
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["output"], "100\n");
    }
    let more_exits = d.metric("nexus_vm_exits_total{function=\"wordcount\"}") - exits;
    assert!(more_exits >= (1 + MORE) as f64, "{more_exits} exits");
    // Invocations leave no descriptor open (the server may close the last HTTP
    // connection a moment after its answer).
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_fds(d.pid()) > parked {
        assert!(
            Instant::now() < deadline,
            "{} descriptors",
            open_fds(d.pid())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_hundred_parked_vms_invoked_in_random_order_all_answer() {
    const VMS: usize = 200;
    let n = node(
        &[(
            "wordcount",
            format!(
                "guest = \"wordcount\"\nmemory_mib = 16\nwindow_mib = 8\n\n[limits]\n\
                 max_vms = {VMS}\nkeep_alive_s = 3600\n"
            ),
        )],
        &["--pick", "random", "--max-vms", "400"],
        50,
    );
    let d = &n.daemon;
    let (status, r) = d.json(
        "POST",
        "/v1/functions/wordcount/warm",
        &format!("{{\"count\":{VMS}}}"),
    );
    assert_eq!(status, 200, "{r}\n{}", d.log());
    assert_eq!(r["idle"].as_u64(), Some(VMS as u64), "{r}");
    let mut vms = std::collections::BTreeSet::new();
    for i in 0..(VMS + VMS / 2) {
        let (status, r) = d.invoke("wordcount", &json!({"input_key": "inputs/words.txt"}));
        assert_eq!(status, 200, "invocation {i}: {r}\n{}", d.log());
        assert_eq!(r["start"], "warm", "invocation {i}: {r}");
        assert_eq!(r["output"], "50\n", "invocation {i}: {r}");
        vms.insert(r["vm"].as_str().unwrap().to_owned());
    }
    // 300 random draws from 200 VMs reach about 155 of them; far fewer means the pick is
    // not spreading over the pool.
    assert!(vms.len() >= 100, "{} VMs answered", vms.len());
}

#[test]
fn reset_isolation_gives_every_invocation_the_snapshots_vm() {
    let file = |guest: &str, isolation: &str| {
        format!(
            "guest = \"{guest}\"\nmemory_mib = 32\nwindow_mib = 16\nisolation = \"{isolation}\"\n\n[limits]\nmax_vms = 1\n"
        )
    };
    let n = node(
        &[
            ("counter-reuse", file("counter", "reuse")),
            ("counter-reset", file("counter", "reset")),
            ("wordcount-reset", file("wordcount", "reset")),
        ],
        &[],
        3_000,
    );
    let d = &n.daemon;
    // Reused: the count goes up and the previous input (kept on the heap) is readable.
    let mut vms = Vec::new();
    let mut reuse_windows = Vec::new();
    for i in 1..=4 {
        let (status, r) = d.invoke("counter-reuse", &json!({"input": format!("secret-{i}")}));
        assert_eq!(status, 200, "{r}\n{}", d.log());
        let previous = match i {
            1 => "none".to_string(),
            i => format!("secret-{}", i - 1),
        };
        assert!(
            r["output"]
                .as_str()
                .unwrap()
                .starts_with(&format!("count={i} previous={previous} window=")),
            "{r}"
        );
        reuse_windows.push(r["output"].clone());
        vms.push(r["vm"].clone());
    }
    assert!(vms.iter().all(|vm| *vm == vms[0]), "{vms:?}");
    // The window buffer of each reused invocation lands where the previous one's result
    // was: the window leaks it.
    for (i, output) in reuse_windows.iter().enumerate().skip(1) {
        let leaked = format!("window=count={i} previous");
        assert!(output.as_str().unwrap().contains(&leaked), "{output}");
    }
    // Reset: every invocation, on the same VM, finds the snapshot's state.
    let mut vms = Vec::new();
    for i in 1..=4 {
        let (status, r) = d.invoke("counter-reset", &json!({"input": format!("secret-{i}")}));
        assert_eq!(status, 200, "{r}\n{}", d.log());
        // As the first invocation of a VM of the same snapshot: the window holds the
        // snapshot's bytes there, not an earlier result.
        assert_eq!(r["output"], reuse_windows[0], "{}", d.log());
        assert_eq!(
            r["start"],
            if i == 1 { "cold" } else { "warm" },
            "{}",
            d.log()
        );
        vms.push(r["vm"].clone());
    }
    assert!(vms.iter().all(|vm| *vm == vms[0]), "{vms:?}");
    // A function that reads its input through the window, an error (a missing object) in
    // between: each reset VM answers as the first did.
    let body = json!({"input_key": "inputs/words.txt"});
    for i in 0..4 {
        if i == 2 {
            let (status, r) = d.invoke("wordcount-reset", &json!({"input_key": "inputs/none"}));
            assert_eq!(status, 404, "{r}");
        }
        let (status, r) = d.invoke("wordcount-reset", &body);
        assert_eq!(status, 200, "{r}\n{}", d.log());
        assert_eq!(r["output"], "3000\n");
        assert_eq!(r["start"], if i == 0 { "cold" } else { "warm" });
    }
    // One reset per invocation of a reset function (the refused one included). A successful
    // invocation's reset runs after its answer: the last one may still be running.
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.metric("nexus_vm_reset_duration_seconds_count") < 9.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(d.metric("nexus_vm_reset_duration_seconds_count"), 9.0);
    assert_eq!(
        d.metric("nexus_vm_starts_total{function=\"counter-reset\",how=\"restore\"}"),
        1.0
    );
}
