//! Authentication of the node's API, when asked for: a bearer token on `/v1` (and on
//! `/metrics` with `--auth-metrics`), AWS Signature Version 4 on the Lambda Invoke API.
//!
//! Both secrets come from files that only their owner may read (mode `0600` or stricter):
//! the token on the first line of `--auth-token-file`; lines `ACCESS_KEY_ID SECRET` in
//! `--lambda-keys-file`. Comparisons are constant-time: the token's SHA-256 digests are
//! compared whole, a signature through the HMAC's own check.
//!
//! The signature is checked as AWS does (the canonical request, the string to sign, the
//! key derived from the secret, the date, the credential scope's region and `lambda`):
//! any region is accepted, the service must be `lambda`, and `X-Amz-Date` may be at most
//! [`MAX_SKEW`] from the node's clock.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use hyper::HeaderMap;
use sha2::{Digest, Sha256};

/// The largest difference allowed between a request's `X-Amz-Date` and the node's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// What the node's API asks of its callers; nothing by default.
#[derive(Debug, Default)]
pub struct ApiAuth {
    /// The token of `/v1` (and of `/metrics` when `metrics`).
    pub bearer: Option<BearerToken>,
    /// Whether `/metrics` needs the bearer token too.
    pub metrics: bool,
    /// The keys whose SigV4 signatures the Lambda API takes.
    pub lambda: Option<std::sync::Arc<LambdaKeys>>,
}

/// Why a secrets file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file cannot be read.
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Others than its owner may read or write the file.
    #[error(
        "{0} is readable by others (mode {1:o}): make it readable by its owner only (chmod 600)"
    )]
    Exposed(PathBuf, u32),
    /// The file holds no secret.
    #[error("{0} is empty: it must hold {1}")]
    Empty(PathBuf, &'static str),
    /// A line is not of the expected form.
    #[error("{0}, line {1}: expected `ACCESS_KEY_ID SECRET`")]
    Malformed(PathBuf, usize),
}

/// Reads a secrets file, refusing one that others may read.
fn read_secret_file(path: &Path) -> Result<String, SecretFileError> {
    let io = |e| SecretFileError::Io(path.to_owned(), e);
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Exposed(path.to_owned(), mode & 0o7777));
    }
    std::fs::read_to_string(path).map_err(io)
}

/// The bearer token that `/v1` requests must carry.
pub struct BearerToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// Why a request's bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// No `Authorization: Bearer …` header (401).
    Missing,
    /// A token, not the right one (403).
    Wrong,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl BearerToken {
    /// The token `token` (whitespace around it is not part of it).
    pub fn new(token: &str) -> Option<Self> {
        let token = token.trim();
        (!token.is_empty()).then(|| Self {
            digest: sha256(token.as_bytes()),
        })
    }

    /// The token on the first line of the file `path`.
    pub fn load(path: &Path) -> Result<Self, SecretFileError> {
        let text = read_secret_file(path)?;
        Self::new(text.lines().next().unwrap_or_default())
            .ok_or_else(|| SecretFileError::Empty(path.to_owned(), "the token on its first line"))
    }

    /// Checks a request's headers.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), BearerError> {
        let given = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .ok_or(BearerError::Missing)?;
        // Digests of equal length, compared whole: the time taken says nothing of the token.
        let given = sha256(given.as_bytes());
        let diff = given
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(BearerError::Wrong)
        }
    }
}

/// The access keys allowed on the Lambda API, by id.
pub struct LambdaKeys {
    keys: HashMap<String, String>,
}

impl std::fmt::Debug for LambdaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LambdaKeys")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why a request's signature was refused, with the Lambda error it is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not a well-formed SigV4 one, or parts missing.
    Incomplete(String),
    /// The access key id is not one of the node's.
    UnknownKey,
    /// The signature does not match, the date is too far off, or the scope is wrong.
    Invalid(String),
}

impl SignatureError {
    /// The HTTP status, the `x-amzn-ErrorType` and the message of the answer.
    pub fn answer_parts(&self) -> (u16, &'static str, String) {
        match self {
            Self::Missing => (
                403,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token".into(),
            ),
            Self::Incomplete(message) => (403, "IncompleteSignatureException", message.clone()),
            Self::UnknownKey => (
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.".into(),
            ),
            Self::Invalid(message) => (403, "InvalidSignatureException", message.clone()),
        }
    }
}

/// What of a request the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// The method.
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub path: &'a str,
    /// The query as sent, if any.
    pub query: Option<&'a str>,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Debug)]
struct Authorization<'a> {
    key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, SignatureError> {
    let incomplete =
        |what: &str| SignatureError::Incomplete(format!("Authorization header {what}"));
    let rest = value
        .trim()
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or_else(|| incomplete("must use AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let credential = credential.ok_or_else(|| incomplete("lacks Credential"))?;
    let signed = signed.ok_or_else(|| incomplete("lacks SignedHeaders"))?;
    let signature = signature.ok_or_else(|| incomplete("lacks Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = scope.as_slice() else {
        return Err(incomplete(
            "has a malformed Credential: expected AKID/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    Ok(Authorization {
        key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

/// Percent-encodes `text` as SigV4 does: everything but the unreserved characters (and `/`
/// when `keep_slash`), in upper-case hex.
fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hmac(key: &[u8], data: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac
}

/// The canonical request of SigV4 (the path encoded once more, as every service but S3).
fn canonical_request(
    request: &SignedRequest<'_>,
    signed_headers: &[&str],
) -> Result<String, SignatureError> {
    let mut query: Vec<(&str, &str)> = request
        .query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    query.sort_unstable();
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = request
            .headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(SignatureError::Incomplete(format!(
                "the signed header {name} is not in the request"
            )));
        }
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let payload = match request
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        Some(hash) => hash.to_owned(),
        None => hex(&sha256(request.body)),
    };
    let path = if request.path.is_empty() {
        "/"
    } else {
        request.path
    };
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        uri_encode(path, true),
        query.join("&"),
        headers,
        signed_headers.join(";"),
        payload
    ))
}

/// Seconds since the epoch of a `YYYYMMDDTHHMMSSZ` time.
fn parse_amz_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Verifies `request`'s SigV4 signature with `secret` for `service`, at time `now`.
fn verify_with(
    request: &SignedRequest<'_>,
    auth: &Authorization<'_>,
    secret: &str,
    service: &str,
    now: SystemTime,
) -> Result<(), SignatureError> {
    if auth.service != service {
        return Err(SignatureError::Invalid(format!(
            "Credential should be scoped to correct service: '{service}'."
        )));
    }
    let amz_date = request
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| SignatureError::Incomplete("the request lacks X-Amz-Date".into()))?;
    let when = parse_amz_date(amz_date)
        .ok_or_else(|| SignatureError::Incomplete(format!("malformed X-Amz-Date {amz_date}")))?;
    if amz_date.get(..8) != Some(auth.date) {
        return Err(SignatureError::Invalid(
            "the Credential's date is not X-Amz-Date's".into(),
        ));
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if when.abs_diff(now) > MAX_SKEW.as_secs() {
        return Err(SignatureError::Invalid(format!(
            "Signature expired: {amz_date} is more than {} minutes from the server's time",
            MAX_SKEW.as_secs() / 60
        )));
    }
    if !auth.signed_headers.contains(&"host") {
        return Err(SignatureError::Incomplete(
            "SignedHeaders must include host".into(),
        ));
    }
    let canonical = canonical_request(request, &auth.signed_headers)?;
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}/{}/{}/aws4_request\n{}",
        auth.date,
        auth.region,
        auth.service,
        hex(&sha256(canonical.as_bytes()))
    );
    let key = hmac(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes()).finalize();
    let key = hmac(&key.into_bytes(), auth.region.as_bytes()).finalize();
    let key = hmac(&key.into_bytes(), auth.service.as_bytes()).finalize();
    let key = hmac(&key.into_bytes(), b"aws4_request").finalize();
    let mac = hmac(&key.into_bytes(), to_sign.as_bytes());
    let invalid = || {
        SignatureError::Invalid(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method."
                .into(),
        )
    };
    let given = unhex(auth.signature).ok_or_else(invalid)?;
    // Constant-time.
    mac.verify_slice(&given).map_err(|_| invalid())
}

impl LambdaKeys {
    /// The keys of the file `path`: lines `ACCESS_KEY_ID SECRET` (blank lines and `#`
    /// comments skipped).
    pub fn load(path: &Path) -> Result<Self, SecretFileError> {
        let text = read_secret_file(path)?;
        let mut keys = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(id), Some(secret), None) => {
                    keys.insert(id.to_owned(), secret.to_owned());
                }
                _ => return Err(SecretFileError::Malformed(path.to_owned(), number + 1)),
            }
        }
        if keys.is_empty() {
            return Err(SecretFileError::Empty(
                path.to_owned(),
                "lines `ACCESS_KEY_ID SECRET`",
            ));
        }
        Ok(Self { keys })
    }

    /// Verifies a Lambda request's signature at time `now`.
    pub fn verify(
        &self,
        request: &SignedRequest<'_>,
        now: SystemTime,
    ) -> Result<(), SignatureError> {
        let value = request
            .headers
            .get(hyper::header::AUTHORIZATION)
            .ok_or(SignatureError::Missing)?
            .to_str()
            .map_err(|_| SignatureError::Incomplete("malformed Authorization header".into()))?;
        let auth = parse_authorization(value)?;
        let secret = self
            .keys
            .get(auth.key_id)
            .ok_or(SignatureError::UnknownKey)?;
        verify_with(request, &auth, secret, "lambda", now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    /// AWS's "get-vanilla" example of the SigV4 test suite: `GET /` to
    /// example.amazonaws.com, service `service`, us-east-1, 2015-08-30 12:36:00 UTC, with
    /// the documentation's example key.
    fn vanilla(signature: &str) -> (HeaderMap, String) {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        headers.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature={signature}"
        );
        (headers, authorization)
    }

    const VANILLA_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const VANILLA_SIGNATURE: &str =
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// 2015-08-30T12:36:00Z.
    const VANILLA_TIME: u64 = 1_440_938_160;

    #[test]
    fn amz_dates_parse_to_epoch_seconds() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(
            parse_amz_date("20150830T123600Z"),
            Some(VANILLA_TIME as i64)
        );
        assert_eq!(parse_amz_date("20240229T235959Z"), Some(1_709_251_199));
        assert_eq!(parse_amz_date("2015-08-30T12:36"), None);
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
    }

    #[test]
    fn get_vanilla_canonical_request_and_signature() {
        let (headers, authorization) = vanilla(VANILLA_SIGNATURE);
        let request = SignedRequest {
            method: "GET",
            path: "/",
            query: None,
            headers: &headers,
            body: b"",
        };
        assert_eq!(
            canonical_request(&request, &["host", "x-amz-date"]).unwrap(),
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
             host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let auth = parse_authorization(&authorization).unwrap();
        assert_eq!(auth.key_id, "AKIDEXAMPLE");
        assert_eq!(auth.region, "us-east-1");
        verify_with(&request, &auth, VANILLA_SECRET, "service", at(VANILLA_TIME)).unwrap();
        // Another secret, another service, a stale clock: refused.
        assert!(matches!(
            verify_with(&request, &auth, "another", "service", at(VANILLA_TIME)),
            Err(SignatureError::Invalid(_))
        ));
        assert!(matches!(
            verify_with(&request, &auth, VANILLA_SECRET, "lambda", at(VANILLA_TIME)),
            Err(SignatureError::Invalid(_))
        ));
        assert!(matches!(
            verify_with(
                &request,
                &auth,
                VANILLA_SECRET,
                "service",
                at(VANILLA_TIME + 16 * 60)
            ),
            Err(SignatureError::Invalid(_))
        ));
        verify_with(
            &request,
            &auth,
            VANILLA_SECRET,
            "service",
            at(VANILLA_TIME + 14 * 60),
        )
        .unwrap();
        // One bit of the signature changed.
        let (_, tampered) = vanilla(&VANILLA_SIGNATURE.replacen('5', "4", 1));
        let tampered = parse_authorization(&tampered).unwrap();
        assert!(matches!(
            verify_with(
                &request,
                &tampered,
                VANILLA_SECRET,
                "service",
                at(VANILLA_TIME)
            ),
            Err(SignatureError::Invalid(_))
        ));
    }

    #[test]
    fn paths_are_encoded_once_more() {
        assert_eq!(
            uri_encode("/2015-03-31/functions/arn%3Aaws%3Alambda/invocations", true),
            "/2015-03-31/functions/arn%253Aaws%253Alambda/invocations"
        );
        assert_eq!(uri_encode("a b~/", false), "a%20b~%2F");
    }

    #[test]
    fn lambda_keys_refuse_missing_and_unknown_keys() {
        let keys = LambdaKeys {
            keys: HashMap::from([("AKIDEXAMPLE".into(), VANILLA_SECRET.into())]),
        };
        let (mut headers, _) = vanilla(VANILLA_SIGNATURE);
        let request = |headers: &HeaderMap| {
            keys.verify(
                &SignedRequest {
                    method: "GET",
                    path: "/",
                    query: None,
                    headers,
                    body: b"",
                },
                at(VANILLA_TIME),
            )
        };
        assert_eq!(request(&headers), Err(SignatureError::Missing));
        headers.insert(
            "authorization",
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=OTHER/20150830/us-east-1/lambda/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=00",
            ),
        );
        assert_eq!(request(&headers), Err(SignatureError::UnknownKey));
        headers.insert("authorization", HeaderValue::from_static("Bearer x"));
        assert!(matches!(
            request(&headers),
            Err(SignatureError::Incomplete(_))
        ));
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let token = BearerToken::new("s3cret\n").unwrap();
        assert!(BearerToken::new("  \n").is_none());
        let mut headers = HeaderMap::new();
        assert_eq!(token.check(&headers), Err(BearerError::Missing));
        headers.insert("authorization", HeaderValue::from_static("Basic s3cret"));
        assert_eq!(token.check(&headers), Err(BearerError::Missing));
        headers.insert("authorization", HeaderValue::from_static("Bearer s3cre"));
        assert_eq!(token.check(&headers), Err(BearerError::Wrong));
        headers.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
        assert_eq!(token.check(&headers), Ok(()));
    }

    #[test]
    fn secret_files_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "t0ken\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            BearerToken::load(&path),
            Err(SecretFileError::Exposed(_, 0o644))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        BearerToken::load(&path).unwrap();
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            BearerToken::load(&path),
            Err(SecretFileError::Empty(..))
        ));
        std::fs::write(&path, "AKID SECRET\nAKID2\n").unwrap();
        assert!(matches!(
            LambdaKeys::load(&path),
            Err(SecretFileError::Malformed(_, 2))
        ));
    }
}
