// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! LIST, bounded in memory and time.
//!
//! A page holds at most `max` keys in ascending byte order, and finding them looks at no more
//! than the VM's scan budget ([`VmLimits::list_scan_budget`](crate::VmLimits)) of objects
//! (S3) or directory entries (file store). A page that runs out of budget ends early with a
//! continuation token for the point the walk reached, so that every key is listed exactly
//! once over the pages, in order.
//!
//! # Continuation tokens
//!
//! A token is where the next page starts ([`Resume`]): after a key (`a/b`), or after a whole
//! directory of the file store (`a/b/`, with the trailing `/` no key can have: every key
//! starting with `a/b/` is done). Only the last key of a page, or the point a walk that ran
//! out of budget reached, is ever handed out.
//!
//! # The file store's walk
//!
//! The walk visits directories depth first with siblings in key order (a directory `d` sorts
//! as `d/`), so that when it stops, everything before the point it reached has been seen. It
//! never holds a whole directory: each read of a directory keeps only the first few siblings
//! after the point it reached (a bounded set that drops the largest), and a directory with
//! more is read again after those. Directories that cannot hold keys after the token or under
//! the prefix are never opened. The budget is checked before each directory read, and only
//! once the walk has got somewhere, so every page makes progress.

use std::collections::BTreeSet;
use std::fs::{self, Metadata};
use std::io;
use std::path::Path;

use nexus_ring::limits::MAX_KEY_LEN;

use crate::tenant::{STAGING_DIR, check_key};

/// Where a listing resumes: its continuation token, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Resume {
    /// The first page.
    Start,
    /// After this key.
    AfterKey(String),
    /// After every key that starts with this directory (it ends with `/`).
    AfterDir(String),
}

impl Resume {
    /// The point a token names (`None`: the first page).
    pub(crate) fn parse(token: Option<&str>) -> Self {
        match token {
            None => Resume::Start,
            Some(dir) if dir.ends_with('/') => Resume::AfterDir(dir.to_owned()),
            Some(key) => Resume::AfterKey(key.to_owned()),
        }
    }

    /// Whether a token is well formed: a key, or a key and `/`.
    pub(crate) fn valid_token(token: &str) -> bool {
        check_key(token.strip_suffix('/').unwrap_or(token)).is_ok()
    }

    /// The key a store listing may start after (every key after the point is after it).
    pub(crate) fn start_after(&self) -> Option<&str> {
        match self {
            Resume::Start => None,
            Resume::AfterKey(key) => Some(key),
            Resume::AfterDir(dir) => Some(dir.trim_end_matches('/')),
        }
    }

    /// Whether `key` comes after this point (it is not listed yet).
    pub(crate) fn before_key(&self, key: &str) -> bool {
        match self {
            Resume::Start => true,
            Resume::AfterKey(after) => key > after.as_str(),
            Resume::AfterDir(dir) => key > dir.as_str() && !key.starts_with(dir.as_str()),
        }
    }

    /// Whether some key starting with `dir` (which ends with `/`) may come after this point.
    pub(crate) fn before_dir(&self, dir: &str) -> bool {
        match self {
            Resume::Start => true,
            Resume::AfterKey(after) => dir > after.as_str() || after.starts_with(dir),
            Resume::AfterDir(done) => {
                !dir.starts_with(done.as_str()) && (dir > done.as_str() || done.starts_with(dir))
            }
        }
    }
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListPage<T> {
    /// At most `max` entries, in ascending key order.
    pub(crate) entries: Vec<T>,
    /// The continuation token, if the listing may go on.
    pub(crate) next: Option<String>,
    /// Objects (S3) or directory entries (file store) looked at for this page.
    pub(crate) looked: u64,
}

/// Lists the objects of a file store rooted at `root` whose keys start with `prefix` and come
/// after `resume`: at most `max`, looking at about `budget` directory entries (see the module
/// docs). `entry` turns a key and its file's metadata into an entry.
pub(crate) fn walk_files<T>(
    root: &Path,
    prefix: &str,
    resume: &Resume,
    max: usize,
    budget: u64,
    entry: impl FnMut(&str, &Metadata) -> T,
) -> io::Result<ListPage<T>> {
    let base = match prefix.rfind('/') {
        Some(end) => &prefix[..=end],
        None => "",
    };
    let mut walk = FileWalk {
        root,
        prefix,
        resume,
        max,
        budget,
        looked: 0,
        held: 0,
        entries: Vec::new(),
        last_key: None,
        position: None,
        entry,
    };
    let next = match walk.dir(base)? {
        Flow::Done => None,
        Flow::Full => walk.last_key.take(),
        Flow::OutOfBudget => walk.position.take(),
    };
    Ok(ListPage {
        entries: walk.entries,
        next,
        looked: walk.looked,
    })
}

/// How a walk of a directory ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// Everything in it was seen.
    Done,
    /// The page is full and another key follows.
    Full,
    /// The budget ran out.
    OutOfBudget,
}

/// A sibling in a directory: its sort key (the key of a file, `key/` for a directory).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Sibling {
    sort_key: String,
    is_dir: bool,
}

struct FileWalk<'a, T, F> {
    root: &'a Path,
    prefix: &'a str,
    resume: &'a Resume,
    max: usize,
    budget: u64,
    /// Directory entries looked at.
    looked: u64,
    /// Siblings held in the windows of the directories being walked.
    held: usize,
    entries: Vec<T>,
    last_key: Option<String>,
    /// The furthest point the walk has fully covered: a key, or a directory (`d/`).
    position: Option<String>,
    entry: F,
}

impl<T, F: FnMut(&str, &Metadata) -> T> FileWalk<'_, T, F> {
    /// Most siblings one directory read keeps: about two pages' worth over all the
    /// directories being walked, and at least one.
    fn window(&self) -> usize {
        self.max
            .saturating_add(1)
            .saturating_mul(2)
            .saturating_sub(self.held)
            .max(1)
    }

    /// Walks directory `dir` (`""` or ending with `/`).
    fn dir(&mut self, dir: &str) -> io::Result<Flow> {
        let mut after: Option<String> = None;
        loop {
            if self.looked >= self.budget && self.position.is_some() {
                return Ok(Flow::OutOfBudget);
            }
            let (window, more) = self.read(dir, after.as_deref())?;
            self.held += window.len();
            let mut siblings = window.into_iter();
            while let Some(sibling) = siblings.next() {
                self.held -= 1;
                let flow = if sibling.is_dir {
                    self.dir(&sibling.sort_key)?
                } else {
                    self.file(&sibling.sort_key)
                };
                if flow != Flow::Done {
                    self.held -= siblings.len();
                    return Ok(flow);
                }
                self.position = Some(sibling.sort_key.clone());
                after = Some(sibling.sort_key);
            }
            if !more {
                return Ok(Flow::Done);
            }
        }
    }

    /// Takes the file `key` into the page, unless it is full.
    fn file(&mut self, key: &str) -> Flow {
        // Read now, not when the directory was: it may have gone or changed since.
        let Ok(meta) = fs::symlink_metadata(self.root.join(key)) else {
            return Flow::Done;
        };
        if !meta.is_file() {
            return Flow::Done;
        }
        if self.entries.len() == self.max {
            return Flow::Full;
        }
        self.entries.push((self.entry)(key, &meta));
        self.last_key = Some(key.to_owned());
        Flow::Done
    }

    /// The first siblings of `dir` after `after` that may hold keys of this listing (at most
    /// [`window`](Self::window) of them), and whether there are more.
    fn read(&mut self, dir: &str, after: Option<&str>) -> io::Result<(BTreeSet<Sibling>, bool)> {
        let mut window = BTreeSet::new();
        let mut more = false;
        let cap = self.window();
        let entries = match fs::read_dir(self.root.join(dir)) {
            Ok(entries) => entries,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok((window, false));
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            self.looked += 1;
            let (Ok(name), Ok(kind)) = (entry.file_name().into_string(), entry.file_type()) else {
                continue;
            };
            if dir.is_empty() && name == STAGING_DIR {
                continue;
            }
            let sibling = if kind.is_dir() {
                Sibling {
                    sort_key: format!("{dir}{name}/"),
                    is_dir: true,
                }
            } else if kind.is_file() {
                Sibling {
                    sort_key: format!("{dir}{name}"),
                    is_dir: false,
                }
            } else {
                continue;
            };
            if after.is_some_and(|after| sibling.sort_key.as_str() <= after)
                || !self.wanted(&sibling)
            {
                continue;
            }
            window.insert(sibling);
            if window.len() > cap {
                window.pop_last();
                more = true;
            }
        }
        Ok((window, more))
    }

    /// Whether a sibling may hold keys of this listing: under the prefix, after the resume
    /// point, and (a directory) short enough for a key below it.
    fn wanted(&self, sibling: &Sibling) -> bool {
        let key = sibling.sort_key.as_str();
        if sibling.is_dir {
            (key.starts_with(self.prefix) || self.prefix.starts_with(key))
                && key.len() < MAX_KEY_LEN as usize
                && self.resume.before_dir(key)
        } else {
            key.starts_with(self.prefix) && self.resume.before_key(key) && check_key(key).is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn touch(root: &Path, key: &str) {
        let path = root.join(key);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, key).unwrap();
    }

    /// Every page of a listing, following the tokens; the keys and the entries looked at per
    /// page.
    fn pages(root: &Path, prefix: &str, max: usize, budget: u64) -> (Vec<String>, usize) {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        let mut count = 0;
        loop {
            let page = walk_files(
                root,
                prefix,
                &Resume::parse(token.as_deref()),
                max,
                budget,
                |key, _| key.to_owned(),
            )
            .unwrap();
            count += 1;
            assert!(page.entries.len() <= max);
            assert!(page.entries.windows(2).all(|w| w[0] < w[1]), "in order");
            if let (Some(last), Some(next)) = (keys.last(), page.entries.first()) {
                assert!(last < next, "{last} then {next}: repeated or out of order");
            }
            keys.extend(page.entries);
            match page.next {
                Some(next) => {
                    assert!(Resume::valid_token(&next), "{next}");
                    assert!(next.starts_with(prefix), "{next} outside {prefix}");
                    assert_ne!(token.as_deref(), Some(next.as_str()), "no progress");
                    token = Some(next);
                }
                None => return (keys, count),
            }
            assert!(count < 100_000, "the listing does not end");
        }
    }

    #[test]
    fn resume_points() {
        let key = Resume::parse(Some("a/b"));
        assert!(key.before_key("a/b0") && key.before_key("a/b/c") && !key.before_key("a/b"));
        assert!(key.before_dir("a/b/") && key.before_dir("a/c/") && key.before_dir("a/"));
        assert!(!key.before_dir("a/a/") && !key.before_dir("0/"));
        let dir = Resume::parse(Some("a/b/"));
        assert_eq!(dir, Resume::AfterDir("a/b/".into()));
        assert!(!dir.before_key("a/b/c") && dir.before_key("a/b0") && !dir.before_key("a/b"));
        assert!(!dir.before_dir("a/b/") && !dir.before_dir("a/b/c/"));
        assert!(dir.before_dir("a/") && dir.before_dir("a/c/") && !dir.before_dir("a/a/"));
        assert_eq!(dir.start_after(), Some("a/b"));
        assert!(Resume::Start.before_dir("x/") && Resume::Start.before_key("x"));
        assert!(Resume::valid_token("a/b/") && Resume::valid_token("a/b"));
        assert!(
            !Resume::valid_token("a//") && !Resume::valid_token("/") && !Resume::valid_token("")
        );
    }

    #[test]
    fn many_keys_page_in_order_with_a_small_budget() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join(STAGING_DIR)).unwrap();
        touch(root, ".nexus-tmp/leftover");
        let mut all = BTreeSet::new();
        // A wide directory, nested ones, names that sort around `/` ('.' < '/' < '0'),
        // files beside directories of a similar name, and empty directories.
        for i in 0..2000 {
            all.insert(format!("t/flat/{i:05}"));
        }
        for a in 0..12 {
            for b in 0..12 {
                for c in 0..8 {
                    all.insert(format!("t/deep/{a}/{b}/{c}"));
                }
            }
        }
        for key in [
            "t/d-", "t/d.x", "t/d/e", "t/d0", "t/d/e.f", "t/d/e0/g", "t/da/b",
        ] {
            all.insert(key.to_owned());
        }
        for key in &all {
            touch(root, key);
        }
        for empty in 0..50 {
            fs::create_dir_all(root.join(format!("t/empty/{empty}/x"))).unwrap();
        }
        touch(root, "other/not-listed");
        let expected: Vec<String> = all.iter().cloned().collect();

        for (max, budget) in [(1000, 100_000), (1000, 50), (100, 1), (13, 300)] {
            let (keys, count) = pages(root, "t/", max, budget);
            assert_eq!(keys.len(), expected.len(), "max {max} budget {budget}");
            assert_eq!(keys, expected, "max {max} budget {budget}");
            if budget == 100_000 {
                assert_eq!(count, expected.len().div_ceil(max));
            }
        }
        // A prefix with a partial last segment.
        let (keys, _) = pages(root, "t/d", 2, 3);
        let under: Vec<String> = expected
            .iter()
            .filter(|k| k.starts_with("t/d"))
            .cloned()
            .collect();
        assert_eq!(keys, under);
        let (keys, _) = pages(root, "t/deep/1", 5, 10);
        let under: Vec<String> = expected
            .iter()
            .filter(|k| k.starts_with("t/deep/1"))
            .cloned()
            .collect();
        assert_eq!(keys, under);
        let (keys, _) = pages(root, "", 1000, 500);
        assert_eq!(
            keys.len(),
            expected.len() + 1,
            "everything but the staging directory"
        );
        assert_eq!(pages(root, "nothing/", 10, 1).0, Vec::<String>::new());
    }

    /// One page of a walk from the root: how it ended, the entries looked at, the position
    /// it reached and the keys it found.
    fn walk(
        root: &Path,
        prefix: &str,
        token: Option<&str>,
        budget: u64,
    ) -> (Flow, u64, Option<String>, Vec<String>) {
        let base = &prefix[..prefix.rfind('/').map_or(0, |end| end + 1)];
        let resume = Resume::parse(token);
        let mut walk = FileWalk {
            root,
            prefix,
            resume: &resume,
            max: 1000,
            budget,
            looked: 0,
            held: 0,
            entries: Vec::new(),
            last_key: None,
            position: None,
            entry: |key: &str, _: &Metadata| key.to_owned(),
        };
        let flow = walk.dir(base).unwrap();
        (flow, walk.looked, walk.position, walk.entries)
    }

    #[test]
    fn a_page_looks_at_about_its_budget_and_skips_what_it_cannot_list() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for a in 0..40 {
            for b in 0..40 {
                touch(root, &format!("{a:02}/{b:02}"));
            }
        }
        // The root (40 entries) then one directory at a time (40 each), until past 100.
        let (flow, looked, position, keys) = walk(root, "", None, 100);
        assert_eq!(flow, Flow::OutOfBudget);
        assert_eq!(looked, 120);
        assert_eq!(position.as_deref(), Some("01/"));
        assert_eq!(keys.len(), 80);
        // A token after a whole directory: the directories before it are not opened again.
        let (flow, looked, position, keys) = walk(root, "", Some("01/"), 45);
        assert_eq!((flow, looked), (Flow::OutOfBudget, 80));
        assert_eq!(keys.first().map(String::as_str), Some("02/00"));
        assert_eq!(position.as_deref(), Some("02/"));
        // After a key likewise: the root, `38/` and `39/`.
        let (flow, looked, _, keys) = walk(root, "", Some("38/10"), 100_000);
        assert_eq!((flow, looked), (Flow::Done, 120));
        assert_eq!(keys.len(), 29 + 40);
        assert_eq!(keys[0], "38/11");
        // Outside the prefix: the root and `07/` only, even on a budget of 1.
        let (flow, looked, _, keys) = walk(root, "07", None, 1);
        assert_eq!((flow, looked, keys.len()), (Flow::Done, 80, 40));
        // A prefix that is a directory starts there.
        let (flow, looked, _, keys) = walk(root, "07/1", None, 1);
        assert_eq!((flow, looked, keys.len()), (Flow::Done, 40, 10));
    }

    #[test]
    fn the_window_bounds_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // More empty directories than a window holds, before the only key.
        for i in 0..30 {
            fs::create_dir_all(root.join(format!("p/{i:02}"))).unwrap();
        }
        touch(root, "p/99");
        let page = walk_files(root, "p/", &Resume::Start, 2, 1000, |k, _| k.to_owned()).unwrap();
        assert_eq!(page.entries, vec!["p/99".to_owned()]);
        assert_eq!(page.next, None);
    }
}
