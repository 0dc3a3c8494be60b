// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Dropping privileges (`nexus-backend --user`, `--group`): the backend starts as a user that
//! can read its secrets (S3 keys, the configuration file) and create its socket and state
//! directories, and, once it holds what it needs, becomes another user for good, so that
//! the credentials in its memory are out of reach of the VMM's user and a compromised
//! backend cannot read them again from disk.
//!
//! The order is [`run_with`](crate::run_with)'s: open the store clients (secrets read),
//! open the state directory and its journal, bind the control socket, then
//! [`drop_privileges`]: give the state directory to the new user (its journal is rewritten
//! there), `setgroups` (to the one group), `setgid`, `setuid` — glibc applies each to every
//! thread of the process — and check that the process has exactly the new IDs and that
//! `setuid(0)` now fails.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The user and group to become.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropTo {
    /// The user ID (`None`: stay the same user).
    pub uid: Option<u32>,
    /// The group ID (`None`: the user's primary group, or stay).
    pub gid: Option<u32>,
}

impl DropTo {
    /// Resolves `--user NAME|UID` and `--group NAME|GID`: a number is taken as is, a name is
    /// looked up in the host's databases; without a group, a named user's primary group.
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Self> {
        let (uid, primary) = match user {
            None => (None, None),
            Some(user) => match user.parse::<u32>() {
                Ok(uid) => (Some(uid), None),
                Err(_) => {
                    let (uid, gid) = user_ids(user).ok_or_else(|| {
                        Error::Privileges(format!("there is no user `{user}` on this host"))
                    })?;
                    (Some(uid), Some(gid))
                }
            },
        };
        let gid = match group {
            None if uid.is_some() && primary.is_none() => {
                // Keeping root's group would keep what it may read.
                return Err(Error::Privileges(
                    "a numeric --user needs --group too (the group to become)".into(),
                ));
            }
            None => primary,
            Some(group) => Some(match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => group_id(group).ok_or_else(|| {
                    Error::Privileges(format!("there is no group `{group}` on this host"))
                })?,
            }),
        };
        Ok(Self { uid, gid })
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.uid.is_none() && self.gid.is_none()
    }
}

/// Becomes `to` for good, after giving the backend's own directories `own` (its state
/// directory, the staging directories of its file stores) and what is in them to the new
/// user and group. Fails (and the backend must not go on) if any step fails, if root can be
/// regained, or if the new user cannot write in each of `own`.
pub fn drop_privileges(to: DropTo, own: &[PathBuf]) -> Result<()> {
    if to.is_empty() {
        return Ok(());
    }
    let fail =
        |what: &str| Error::Privileges(format!("{what}: {}", std::io::Error::last_os_error()));
    for dir in own {
        chown_tree(dir, to)?;
    }
    if let Some(gid) = to.gid {
        let groups = [gid as libc::gid_t];
        // SAFETY: the pointer and length describe `groups`, which outlives the call.
        if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
            return Err(fail("setgroups"));
        }
        // SAFETY: setgid(2) takes a plain integer.
        if unsafe { libc::setgid(gid) } != 0 {
            return Err(fail(&format!("setgid({gid})")));
        }
    } else if to.uid.is_some() {
        // A new user keeps no supplementary group of the old one.
        // SAFETY: no groups: a null pointer with length 0.
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            return Err(fail("setgroups"));
        }
    }
    if let Some(uid) = to.uid {
        // SAFETY: setuid(2) takes a plain integer.
        if unsafe { libc::setuid(uid) } != 0 {
            return Err(fail(&format!("setuid({uid})")));
        }
    }
    // SAFETY: these four calls cannot fail and touch no memory.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    if to.uid.is_some_and(|want| uid != want || euid != want)
        || to.gid.is_some_and(|want| gid != want || egid != want)
    {
        return Err(Error::Privileges(format!(
            "after the drop the process has uid {uid}/{euid} and gid {gid}/{egid}, not {to:?}"
        )));
    }
    if to.uid.is_some_and(|want| want != 0) {
        // SAFETY: setuid(2) takes a plain integer; it must fail here.
        if unsafe { libc::setuid(0) } == 0 {
            return Err(Error::Privileges(
                "root could be regained after the drop".into(),
            ));
        }
    }
    // The journal is rewritten in the state directory from time to time, PUTs stage files:
    // the new user must reach them (a state directory inside a `0700` socket directory of
    // root's is out of reach, say).
    for dir in own {
        let probe = dir.join(".nexus-privileges-probe");
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| {
                Error::Privileges(format!(
                    "{} is out of reach of uid {uid} after the drop ({e}): the state directory (--state-dir) and the file stores must be reachable by the new user (a state directory outside the control socket's directory)",
                    dir.display()
                ))
            })?;
    }
    log::info!("privileges dropped: now uid {uid}, gid {gid}");
    Ok(())
}

/// Gives `dir` and its entries (one level: the journal and its temporary files) to `to`.
fn chown_tree(dir: &Path, to: DropTo) -> Result<()> {
    let give = |path: &Path| {
        std::os::unix::fs::chown(path, to.uid, to.gid).map_err(|e| {
            Error::Privileges(format!(
                "cannot give {} to the new user: {e}",
                path.display()
            ))
        })
    };
    give(dir)?;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Privileges(format!("cannot read {}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        give(&entry.path())?;
    }
    Ok(())
}

/// The user ID and primary group of user `name`, from the host's user database.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    // SAFETY: `getpwnam_r` takes exactly the arguments `lookup` passes (name, entry, buffer,
    // its length, result).
    lookup(name, |n, e, b, l, r| unsafe {
        libc::getpwnam_r(n, e, b, l, r)
    })
    .map(|p: libc::passwd| (p.pw_uid, p.pw_gid))
}

/// The ID of group `name`, from the host's group database.
pub(crate) fn group_id(name: &str) -> Option<u32> {
    // SAFETY: `getgrnam_r` takes exactly the arguments `lookup` passes.
    lookup(name, |n, e, b, l, r| unsafe {
        libc::getgrnam_r(n, e, b, l, r)
    })
    .map(|g: libc::group| g.gr_gid)
}

/// An entry of the host's user or group database: a plain C struct for which all zeroes is
/// a valid value.
trait Entry {}
impl Entry for libc::passwd {}
impl Entry for libc::group {}

/// One `get*nam_r` look-up of `name`: the entry, if there is one. The buffer for the entry's
/// strings grows (up to 1 MiB) while the call answers `ERANGE`; only the entry's plain
/// fields are read by the callers, never its pointers into the buffer.
fn lookup<T: Entry>(
    name: &str,
    call: impl Fn(
        *const libc::c_char,
        *mut T,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut T,
    ) -> libc::c_int,
) -> Option<T> {
    let name = CString::new(name).ok()?;
    let mut buffer: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: `T` is an `Entry` (`passwd` or `group`): all zeroes is a valid value; it
        // is only read after the call filled it.
        let mut entry: T = unsafe { std::mem::zeroed() };
        let mut result: *mut T = std::ptr::null_mut();
        // Every pointer is valid for the call: a NUL-terminated name, the entry and result
        // out-pointers on our stack, and a buffer of the length given.
        let rc = call(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        );
        if rc == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        return (rc == 0 && !result.is_null()).then_some(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_resolve() {
        assert_eq!(
            DropTo::resolve(Some("65534"), Some("65534")).unwrap(),
            DropTo {
                uid: Some(65534),
                gid: Some(65534)
            }
        );
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-here"), None);
        let root = DropTo::resolve(Some("root"), None).unwrap();
        assert_eq!(
            root,
            DropTo {
                uid: Some(0),
                gid: Some(0)
            }
        );
        assert_eq!(
            DropTo::resolve(None, Some("root")).unwrap(),
            DropTo {
                uid: None,
                gid: Some(0)
            }
        );
        assert!(DropTo::resolve(None, None).unwrap().is_empty());
        let error = DropTo::resolve(Some("no-such-user-here"), None).unwrap_err();
        assert!(error.to_string().contains("no-such-user-here"), "{error}");
        assert!(DropTo::resolve(None, Some("no-such-group-here")).is_err());
        let error = DropTo::resolve(Some("65534"), None).unwrap_err();
        assert!(error.to_string().contains("--group"), "{error}");
    }
}
