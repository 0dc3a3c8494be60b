//! The node's Lambda Invoke API end to end: a real `nexus-backend`, a real `nexus-vmm serve`
//! with real VMs, an unmodified AWS SDK client (boto3's `lambda` client, its endpoint pointed
//! at the node) and raw HTTP for the statuses and headers.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{Daemon, function, node};
use serde_json::Value;

/// How long the SDK client may take for all its calls (cold starts included).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// The boto3 client's calls; prints one JSON line per case.
const CLIENT: &str = r#"
import json, sys
try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
except ImportError as e:
    print(json.dumps({"missing": str(e)}), flush=True)
    sys.exit(3)

client = boto3.client(
    "lambda",
    endpoint_url=sys.argv[1],
    region_name="us-east-1",
    aws_access_key_id="AKIDEXAMPLE",
    aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=120),
)

def invoke(case, **kwargs):
    try:
        r = client.invoke(**kwargs)
        out = {
            "status": r["StatusCode"],
            "function_error": r.get("FunctionError"),
            "version": r.get("ExecutedVersion"),
            "request_id": r["ResponseMetadata"].get("RequestId"),
            "payload": r["Payload"].read().decode("utf-8", "replace"),
        }
    except ClientError as e:
        out = {
            "exception": type(e).__name__,
            "code": e.response["Error"]["Code"],
            "status": e.response["ResponseMetadata"]["HTTPStatusCode"],
            "message": e.response["Error"]["Message"],
            "request_id": e.response["ResponseMetadata"].get("RequestId"),
        }
    print(json.dumps({"case": case, **out}), flush=True)

invoke("sync", FunctionName="wordcount", Payload=b"one two three")
invoke("function_error", FunctionName="fibonacci", Payload=b"twenty")
invoke("missing", FunctionName="nope", Payload=b"{}")
invoke("arn", FunctionName="arn:aws:lambda:us-east-1:123456789012:function:fibonacci",
       Qualifier="$LATEST", Payload=b"10")
invoke("partial_arn", FunctionName="123456789012:function:wordcount:$LATEST", Payload=b"a b")
invoke("qualifier", FunctionName="fibonacci", Qualifier="prod", Payload=b"10")
invoke("event", FunctionName="fibonacci", InvocationType="Event", Payload=b"15")
invoke("dry_run", FunctionName="wordcount", InvocationType="DryRun")
invoke("too_large", FunctionName="wordcount", Payload=b"x" * (6 * 1024 * 1024 + 1))
"#;

/// Runs the boto3 client against `endpoint`; its output by case. Fails, saying what to
/// install, where python3 or boto3 is missing.
fn run_client(dir: &std::path::Path, endpoint: &str) -> Vec<Value> {
    const INSTALL: &str = "the Lambda API test runs boto3's lambda client: install python3 and \
                           boto3 (`python3 -m pip install boto3`, or `apt-get install \
                           python3-boto3`; .ci/run does it)";
    common::python::json_lines(dir, CLIENT, &[endpoint], CLIENT_TIMEOUT, INSTALL)
}

/// Polls `series` until it reaches `value` (at most a minute).
fn metric_reaches(daemon: &Daemon, series: &str, value: f64) {
    let start = Instant::now();
    while daemon.metric(series) < value {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{series} stayed at {}\n{}",
            daemon.metric(series),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(daemon.metric(series), value, "{series}");
}

#[test]
fn an_aws_sdk_client_invokes_functions_unchanged() {
    let n = node(
        &[
            ("wordcount", function("wordcount", "")),
            ("fibonacci", function("fibonacci", "timeout_ms = 20000")),
        ],
        &[],
        10,
    );
    let d = &n.daemon;
    let cases = run_client(n.store.parent().unwrap(), &format!("http://{}", d.address));
    let case = |name: &str| -> &Value {
        cases
            .iter()
            .find(|c| c["case"] == name)
            .unwrap_or_else(|| panic!("no case {name} in {cases:?}"))
    };
    let uuid = |v: &Value| v.as_str().is_some_and(|id| id.len() == 36);

    let sync = case("sync");
    assert_eq!(sync["status"], 200, "{sync}");
    assert_eq!(sync["payload"], "3\n", "{sync}");
    assert_eq!(sync["function_error"], Value::Null, "{sync}");
    assert_eq!(sync["version"], "$LATEST", "{sync}");
    assert!(uuid(&sync["request_id"]), "{sync}");

    let error = case("function_error");
    assert_eq!(error["status"], 200, "{error}");
    assert_eq!(error["function_error"], "Unhandled", "{error}");
    assert!(
        error["payload"].as_str().unwrap().contains("whole number"),
        "{error}"
    );

    for (name, exception, status) in [
        ("missing", "ResourceNotFoundException", 404),
        ("qualifier", "ResourceNotFoundException", 404),
        ("too_large", "RequestTooLargeException", 413),
    ] {
        let c = case(name);
        assert_eq!(c["exception"], exception, "{c}");
        assert_eq!(c["code"], exception, "{c}");
        assert_eq!(c["status"], status, "{c}");
        assert!(uuid(&c["request_id"]), "{c}");
    }
    assert!(
        case("missing")["message"]
            .as_str()
            .unwrap()
            .contains("function:nope"),
        "{}",
        case("missing")
    );

    let arn = case("arn");
    assert_eq!(
        (arn["status"].clone(), arn["payload"].clone()),
        (200.into(), "fib(10) = 55\n".into()),
        "{arn}"
    );
    let partial = case("partial_arn");
    assert_eq!(partial["payload"], "2\n", "{partial}");
    assert_eq!(case("dry_run")["status"], 204);

    // The event was answered at once, and really ran.
    let event = case("event");
    assert_eq!(
        (event["status"].clone(), event["payload"].clone()),
        (202.into(), "".into()),
        "{event}"
    );
    metric_reaches(
        d,
        "nexus_lambda_events_done_total{function=\"fibonacci\",outcome=\"success\"}",
        1.0,
    );
    assert_eq!(
        d.metric("nexus_lambda_events_queued_total{function=\"fibonacci\"}"),
        1.0
    );
    assert_eq!(d.metric("nexus_lambda_event_queue_depth"), 0.0);
    // Two runs of fibonacci succeeded: the call by ARN and the event.
    assert_eq!(
        d.metric(
            "nexus_invocations_total{function=\"fibonacci\",outcome=\"success\",start=\"warm\"}"
        ) + d.metric(
            "nexus_invocations_total{function=\"fibonacci\",outcome=\"success\",start=\"cold\"}"
        ),
        2.0
    );
}

/// A request the API refuses: path, headers, body, status and exception.
type Refusal<'a> = (String, &'a [(&'a str, &'a str)], Vec<u8>, u16, &'a str);

/// One header of an answer.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn the_invoke_api_answers_with_lambdas_statuses_and_headers() {
    let n = node(
        &[
            ("faulty", function("faulty", "timeout_ms = 20000")),
            ("spin", function("fibonacci", "timeout_ms = 3000")),
        ],
        &[],
        10,
    );
    let d = &n.daemon;
    let path = |name: &str| format!("/2015-03-31/functions/{name}/invocations");
    let signed = [(
        "Authorization",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/lambda/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature=0000",
    )];

    // Raw bytes in, the same raw bytes out (`faulty` echoes its input).
    let input = b"\xff\x00\n{not json}\xfe".to_vec();
    let (status, headers, body) = d.request_bytes("POST", &path("faulty"), &signed, &input);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, input);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(header(&headers, "x-amz-executed-version"), Some("$LATEST"));
    assert_eq!(header(&headers, "x-amz-function-error"), None);
    let id = header(&headers, "x-amzn-requestid").unwrap().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    // An empty payload is an empty input; request ids differ.
    let (status, headers, body) = d.request_bytes("POST", &path("faulty"), &[], b"");
    assert_eq!((status, body.len()), (200, 0));
    assert_ne!(header(&headers, "x-amzn-requestid"), Some(id.as_str()));
    // A percent-encoded ARN with its qualifier in the query.
    let arn = "arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Afaulty";
    let (status, _, body) = d.request_bytes(
        "POST",
        &format!("{}?Qualifier=%24LATEST", path(arn)),
        &[],
        b"hi",
    );
    assert_eq!((status, body.as_slice()), (200, &b"hi"[..]));

    // A crash and a timeout are the function's errors, as Lambda reports them.
    let (status, headers, body) = d.request_bytes("POST", &path("faulty"), &[], b"crash");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-amz-function-error"), Some("Unhandled"));
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["errorType"], "Runtime.ExitError", "{error}");
    let (status, headers, body) = d.request_bytes("POST", &path("spin"), &[], b"70");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-amz-function-error"), Some("Unhandled"));
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["errorType"], "Sandbox.Timedout", "{error}");
    let message = error["errorMessage"].as_str().unwrap();
    let id = header(&headers, "x-amzn-requestid").unwrap();
    assert!(
        message.contains("Task timed out after 3.00 seconds") && message.contains(id),
        "{error}"
    );

    // AWS error shapes.
    let event = [("X-Amz-Invocation-Type", "Event")];
    let bogus = [("X-Amz-Invocation-Type", "Sometime")];
    let refusals: [Refusal<'_>; 5] = [
        (
            path("nope"),
            &[],
            Vec::new(),
            404,
            "ResourceNotFoundException",
        ),
        (
            path("faulty:v2"),
            &[],
            Vec::new(),
            404,
            "ResourceNotFoundException",
        ),
        (
            path("faulty"),
            &bogus,
            Vec::new(),
            400,
            "InvalidParameterValueException",
        ),
        (
            path("a%3Ab%3Ac"),
            &[],
            Vec::new(),
            400,
            "InvalidParameterValueException",
        ),
        (
            path("faulty"),
            &event,
            vec![b'x'; (256 << 10) + 1],
            413,
            "RequestTooLargeException",
        ),
    ];
    for (path, headers, body, want, kind) in refusals {
        let (status, got, text) = d.request_bytes("POST", &path, headers, &body);
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, want, "{path}: {text}");
        assert_eq!(header(&got, "x-amzn-errortype"), Some(kind), "{path}");
        assert!(header(&got, "x-amzn-requestid").is_some(), "{path}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["Type"], "User", "{error}");
        assert!(!error["message"].as_str().unwrap().is_empty(), "{error}");
    }
    let (status, _, _) = d.request_bytes("GET", &path("faulty"), &[], b"");
    assert_eq!(status, 405);

    // DryRun checks that the function exists; Event queues it and answers at once.
    let dry = [("X-Amz-Invocation-Type", "DryRun")];
    let (status, headers, body) = d.request_bytes("POST", &path("faulty"), &dry, b"x");
    assert_eq!((status, body.len()), (204, 0));
    assert!(header(&headers, "x-amzn-requestid").is_some());
    let (status, _, _) = d.request_bytes("POST", &path("nope"), &dry, b"x");
    assert_eq!(status, 404);
    let (status, headers, body) = d.request_bytes("POST", &path("faulty"), &event, b"queued");
    assert_eq!((status, body.len()), (202, 0));
    assert!(header(&headers, "x-amzn-requestid").is_some());
    metric_reaches(
        d,
        "nexus_lambda_events_done_total{function=\"faulty\",outcome=\"success\"}",
        1.0,
    );
    assert_eq!(
        d.metric("nexus_vm_stops_total{function=\"spin\",reason=\"timeout\"}"),
        1.0
    );
    assert_eq!(
        d.metric("nexus_vm_stops_total{function=\"faulty\",reason=\"crash\"}"),
        1.0
    );
}
