// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Why the backend will not send a request (or follow a redirect): each names the rule, in
//! words a guest's author can act on.

use std::net::IpAddr;

use reqwest::Url;

use super::allow::{AllowList, Origin};

/// Most redirects one request follows.
pub(crate) const MAX_REDIRECTS: usize = 10;

/// A request the backend refuses to send.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// A character no URL needs raw, and that parsers disagree on.
    #[error("the URL holds a backslash, space, control or non-ASCII character (percent-encode it)")]
    Character,
    /// Not an `http://` or `https://` URL.
    #[error("`{0}` URLs are not fetched: only http:// and https://")]
    Scheme(String),
    /// `user[:password]@` in the URL.
    #[error("URLs with user info (`user@host`) are refused")]
    UserInfo,
    /// No entry names the host.
    #[error("host `{0}` is not on the backend's HTTP allow-list")]
    HostNotListed(String),
    /// Entries name the host, but not with this scheme and port.
    #[error(
        "{0} is not on the backend's HTTP allow-list (the scheme and port must match an entry \
         for the host)"
    )]
    OriginNotListed(Origin),
    /// A listed name resolved to an address it may not reach.
    #[error(
        "host `{name}` resolves to {addr}, which is {kind} (allow it by naming the address in \
         the allow-list, with the same scheme and port)"
    )]
    Address {
        /// The name.
        name: String,
        /// The refused address.
        addr: IpAddr,
        /// What the address is.
        kind: &'static str,
    },
    /// A redirect to a refused place.
    #[error("redirect to {to} refused: {reason}")]
    Redirect {
        /// The redirect's target: scheme, host and port only.
        to: String,
        /// Why it is refused.
        reason: Box<Refusal>,
    },
    /// Too many redirects.
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
}

impl Refusal {
    /// Whether the guest asked for something not allowed (rather than the remote
    /// misbehaving).
    pub(crate) fn is_denial(&self) -> bool {
        !matches!(self, Refusal::TooManyRedirects)
    }
}

/// The origin of `url` if `allow` lets a request go there; the URL must have been parsed
/// (any URL reqwest holds has been).
pub(crate) fn check_target(allow: &AllowList, url: &Url) -> Result<Origin, Refusal> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::UserInfo);
    }
    let origin = Origin::of(url).ok_or_else(|| Refusal::Scheme(url.scheme().to_owned()))?;
    if allow.allows(&origin) {
        Ok(origin)
    } else if allow.names_host(&origin.host) {
        Err(Refusal::OriginNotListed(origin))
    } else {
        Err(Refusal::HostNotListed(origin.host.to_string()))
    }
}

/// A URL's scheme, host and port for messages (never its path or query, which may carry
/// secrets).
pub(crate) fn origin_text(url: &Url) -> String {
    match Origin::of(url) {
        Some(origin) => origin.to_string(),
        None => format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default()),
    }
}

/// Decides one redirect hop: followed only to a place a request could go itself (its
/// addresses are checked when it connects), at most [`MAX_REDIRECTS`] in all.
pub(crate) fn redirect_policy(allow: std::sync::Arc<AllowList>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(Refusal::TooManyRedirects);
        }
        match check_target(&allow, attempt.url()) {
            Ok(_) => attempt.follow(),
            Err(reason) => {
                let to = origin_text(attempt.url());
                log::debug!("HTTP redirect to {to} refused: {reason}");
                attempt.error(Refusal::Redirect {
                    to,
                    reason: Box::new(reason),
                })
            }
        }
    })
}

/// Checks a URL a guest sent, before anything else is done with the request.
pub(crate) fn check_guest_url(allow: &AllowList, text: &str) -> Result<Url, GuestUrlError> {
    if text.bytes().any(|b| !b.is_ascii_graphic() || b == b'\\') {
        return Err(GuestUrlError::Refused(Refusal::Character));
    }
    let url = Url::parse(text).map_err(GuestUrlError::Malformed)?;
    check_target(allow, &url).map_err(GuestUrlError::Refused)?;
    Ok(url)
}

/// A guest's URL that is not sent.
#[derive(Debug)]
pub(crate) enum GuestUrlError {
    /// Not a URL.
    Malformed(url::ParseError),
    /// A URL that is refused.
    Refused(Refusal),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> AllowList {
        AllowList::parse(&[
            "http://allowed.example".to_owned(),
            "https://api.example:8443".to_owned(),
        ])
        .unwrap()
    }

    fn refusal(url: &str) -> String {
        match check_guest_url(&allow(), url) {
            Ok(_) => panic!("{url} was allowed"),
            Err(GuestUrlError::Refused(refusal)) => refusal.to_string(),
            Err(GuestUrlError::Malformed(e)) => format!("malformed: {e}"),
        }
    }

    #[test]
    fn guest_urls_are_checked() {
        assert!(check_guest_url(&allow(), "http://allowed.example/x?y=1#z").is_ok());
        assert!(check_guest_url(&allow(), "http://ALLOWED.example./").is_ok());
        assert!(check_guest_url(&allow(), "https://api.example:8443/v1").is_ok());
        for (url, why) in [
            ("http://allowed.example@127.0.0.1/", "user info"),
            ("http://user:pw@allowed.example/", "user info"),
            ("http://allowed.example\\@evil/", "backslash"),
            ("http://allowed.example /", "backslash, space"),
            ("http://allowed.example/\u{e4}", "non-ASCII"),
            ("http://allowed.example/\n", "control"),
            ("http://evil.example/", "host `evil.example` is not on"),
            ("http://127.0.0.1/", "host `127.0.0.1` is not on"),
            ("http://[::1]/", "host `[::1]` is not on"),
            (
                "http://allowed.example:8080/",
                "http://allowed.example:8080 is not on",
            ),
            (
                "https://allowed.example/",
                "https://allowed.example:443 is not on",
            ),
            (
                "http://api.example:8443/",
                "http://api.example:8443 is not on",
            ),
            ("ftp://allowed.example/", "`ftp` URLs"),
            ("file:///etc/passwd", "`file` URLs"),
            ("allowed.example/x", "malformed"),
        ] {
            let message = refusal(url);
            assert!(message.contains(why), "{url}: {message}");
        }
    }

    #[test]
    fn redirect_refusals_name_the_target_and_the_rule() {
        let reason =
            check_target(&allow(), &Url::parse("http://169.254.169.254/").unwrap()).unwrap_err();
        let refusal = Refusal::Redirect {
            to: origin_text(&Url::parse("http://169.254.169.254/latest?token=s3cret").unwrap()),
            reason: Box::new(reason),
        };
        let message = refusal.to_string();
        assert_eq!(
            message,
            "redirect to http://169.254.169.254:80 refused: host `169.254.169.254` is not on \
             the backend's HTTP allow-list"
        );
        assert!(refusal.is_denial());
        assert!(!Refusal::TooManyRedirects.is_denial());
    }
}
