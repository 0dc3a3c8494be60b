//! The node's API behind authentication, end to end with a real `nexus-backend` and a real
//! `nexus-vmm serve`: the bearer token on `/v1` (and `/metrics` when asked), the probes left
//! open; SigV4 on the Lambda Invoke API, signed by an unmodified boto3 client; secrets files
//! that others may read refused at start.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{function, node};
use serde_json::Value;

const TOKEN: &str = "n0de-t0ken-0123456789";
const KEY_ID: &str = "AKIDNEXUSTEST";
const SECRET: &str = "s3cr3t/Key+For/The+Lambda/API";

/// Writes `text` to `dir/name` with `mode`.
fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn the_bearer_token_guards_v1_and_metrics_not_the_probes() {
    let secrets = tempfile::tempdir().unwrap();
    let token = secret_file(secrets.path(), "token", &format!("{TOKEN}\n"), 0o600);
    let n = node(
        &[("wordcount", function("wordcount", ""))],
        &[
            "--auth-token-file",
            token.to_str().unwrap(),
            "--auth-metrics",
        ],
        5,
    );
    let d = &n.daemon;
    let invoke = |headers: &[(&str, &str)]| {
        let (status, headers, body) = d.request_bytes(
            "POST",
            "/v1/functions/wordcount/invocations",
            headers,
            br#"{"input_key":"inputs/words.txt"}"#,
        );
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, headers, body)
    };
    let (status, headers, body) = invoke(&[]);
    assert_eq!(status, 401, "{body}");
    assert_eq!(header(&headers, "www-authenticate"), Some("Bearer"));
    assert_eq!(body["error"], "Unauthorized", "{body}");
    let (status, _, body) = invoke(&[("Authorization", "Bearer not-the-token")]);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "Forbidden", "{body}");
    let (status, _, body) = invoke(&[("Authorization", &format!("Basic {TOKEN}"))]);
    assert_eq!(status, 401, "{body}");
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, body) = invoke(&[("Authorization", &bearer)]);
    assert_eq!(status, 200, "{body}\n{}", d.log());
    assert_eq!(body["output"], "5\n", "{body}");

    // The other /v1 routes too; the probes stay open.
    let (status, _, _) = d.request("GET", "/v1/functions", "");
    assert_eq!(status, 401);
    let (status, _, _) =
        d.request_bytes("GET", "/v1/functions", &[("Authorization", &bearer)], b"");
    assert_eq!(status, 200);
    for probe in ["/healthz", "/readyz"] {
        let (status, _, body) = d.request("GET", probe, "");
        assert_eq!(status, 200, "{probe}: {body}");
    }
    // --auth-metrics: /metrics needs the token.
    let (status, _, _) = d.request("GET", "/metrics", "");
    assert_eq!(status, 401);
    let (status, _, body) = d.request_bytes("GET", "/metrics", &[("Authorization", &bearer)], b"");
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&body).contains("nexus_"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn secrets_files_others_may_read_are_refused_at_start() {
    let secrets = tempfile::tempdir().unwrap();
    let exposed = secret_file(secrets.path(), "token", TOKEN, 0o644);
    let empty = secret_file(secrets.path(), "empty", "\n", 0o600);
    let keys = secret_file(
        secrets.path(),
        "keys",
        &format!("{KEY_ID} {SECRET}\n"),
        0o640,
    );
    for (flag, path, expected) in [
        ("--auth-token-file", &exposed, "readable by others"),
        ("--auth-token-file", &empty, "is empty"),
        ("--lambda-keys-file", &keys, "readable by others"),
    ] {
        let out = Command::new(common::nexus_vmm())
            .args(["serve", "--listen", "127.0.0.1:0", "--backend"])
            .arg(secrets.path().join("no-backend.sock"))
            .arg("--functions")
            .arg(secrets.path())
            .arg(flag)
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {}: {stderr}", path.display());
        assert!(stderr.contains(expected), "{flag}: {stderr}");
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
}

/// The boto3 client's calls with the key given on its command line; one JSON line per case.
const CLIENT: &str = r#"
import json, sys
try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
except ImportError as e:
    print(json.dumps({"missing": str(e)}), flush=True)
    sys.exit(3)

def client(key_id, secret):
    return boto3.client(
        "lambda",
        endpoint_url=sys.argv[1],
        region_name="eu-west-3",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=120),
    )

def invoke(case, c, **kwargs):
    try:
        r = c.invoke(**kwargs)
        out = {"status": r["StatusCode"], "payload": r["Payload"].read().decode("utf-8", "replace")}
    except ClientError as e:
        out = {
            "exception": type(e).__name__,
            "code": e.response["Error"]["Code"],
            "status": e.response["ResponseMetadata"]["HTTPStatusCode"],
        }
    print(json.dumps({"case": case, **out}), flush=True)

key_id, secret = sys.argv[2], sys.argv[3]
good = client(key_id, secret)
invoke("signed", good, FunctionName="wordcount", Payload=b"one two three")
invoke("arn", good, FunctionName="arn:aws:lambda:us-east-1:123456789012:function:wordcount",
       Qualifier="$LATEST", Payload=b"a b")
invoke("wrong_secret", client(key_id, secret + "x"), FunctionName="wordcount", Payload=b"x")
invoke("unknown_key", client("AKIDUNKNOWN", secret), FunctionName="wordcount", Payload=b"x")
"#;

/// Runs the boto3 client against `endpoint`; its output by case. Fails, saying what to
/// install, where python3 or boto3 is missing.
fn run_client(dir: &Path, endpoint: &str) -> Vec<Value> {
    const INSTALL: &str = "the SigV4 test signs with boto3's lambda client: install python3 and \
                           boto3 (`python3 -m pip install boto3`, or `apt-get install \
                           python3-boto3`)";
    common::python::json_lines(
        dir,
        CLIENT,
        &[endpoint, KEY_ID, SECRET],
        Duration::from_secs(300),
        INSTALL,
    )
}

#[test]
fn lambda_calls_must_carry_a_valid_sigv4_signature() {
    let secrets = tempfile::tempdir().unwrap();
    let keys = secret_file(
        secrets.path(),
        "keys",
        &format!("# id secret\nAKIDOTHER other-secret\n{KEY_ID} {SECRET}\n"),
        0o600,
    );
    let n = node(
        &[("wordcount", function("wordcount", ""))],
        &["--lambda-keys-file", keys.to_str().unwrap()],
        5,
    );
    let d = &n.daemon;
    let started = Instant::now();
    let cases = run_client(secrets.path(), &format!("http://{}", d.address));
    eprintln!("boto3 calls took {:?}", started.elapsed());
    let case = |name: &str| -> &Value {
        cases
            .iter()
            .find(|c| c["case"] == name)
            .unwrap_or_else(|| panic!("no case {name} in {cases:?}\n{}", d.log()))
    };
    let signed = case("signed");
    assert_eq!(signed["status"], 200, "{signed}");
    assert_eq!(signed["payload"], "3\n", "{signed}");
    // A path with encoded colons and a query: signed over the path as sent.
    let arn = case("arn");
    assert_eq!(arn["status"], 200, "{arn}");
    assert_eq!(arn["payload"], "2\n", "{arn}");
    for (name, code) in [
        ("wrong_secret", "InvalidSignatureException"),
        ("unknown_key", "UnrecognizedClientException"),
    ] {
        let c = case(name);
        assert_eq!(c["exception"], "ClientError", "{c}");
        assert_eq!(c["code"], code, "{c}");
        assert_eq!(c["status"], 403, "{c}");
    }

    // Unsigned: refused before the function is even looked up.
    for function in ["wordcount", "nope"] {
        let (status, headers, body) = d.request(
            "POST",
            &format!("/2015-03-31/functions/{function}/invocations"),
            "x",
        );
        assert_eq!(status, 403, "{body}");
        assert_eq!(
            header(&headers, "x-amzn-errortype"),
            Some("MissingAuthenticationTokenException"),
            "{headers:?}"
        );
    }
    // /v1 is not behind SigV4 (only a bearer token guards it).
    let (status, _, body) = d.request(
        "POST",
        "/v1/functions/wordcount/invocations",
        r#"{"input":"a b c d"}"#,
    );
    assert_eq!(status, 200, "{body}");
}
