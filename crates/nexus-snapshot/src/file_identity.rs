// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The identity of a snapshot file — device, inode, size and modification time — recorded
//! from `fstat` of the descriptor it was opened with, and compared again before every restore.
//!
//! A snapshot keeps its memory file open and maps it (`MAP_PRIVATE` for lazy restores, shared
//! and read-only for the userfaultfd handlers). Were that file truncated, a page past its new
//! end would fault with `SIGBUS` when touched; were it rewritten, restored guests would see a
//! mix of two snapshots. A restore therefore refuses to start from a file whose identity
//! differs from the one recorded when the snapshot was opened
//! ([`Error::FileChanged`](crate::Error::FileChanged)), naming the file and the change.

use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::{Error, Result};

/// What changed about a snapshot file since the snapshot was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FileChange {
    /// No file is at the path any more.
    #[error("it was removed")]
    Removed,
    /// Another file is at the path (another device or inode): it was replaced.
    #[error(
        "it was replaced: inode {was_inode} on device {was_device:#x} is now inode {inode} on device {device:#x}"
    )]
    Replaced {
        /// The device recorded at open.
        was_device: u64,
        /// The inode recorded at open.
        was_inode: u64,
        /// The device found now.
        device: u64,
        /// The inode found now.
        inode: u64,
    },
    /// The file's size differs: it was truncated or extended.
    #[error("its size changed from {was} to {now} bytes")]
    Resized {
        /// The size recorded at open.
        was: u64,
        /// The size found now.
        now: u64,
    },
    /// Same file and size, but written to since (its modification time differs).
    #[error("it was modified (its modification time changed)")]
    Modified,
}

/// Device, inode, size and modification time of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    device: u64,
    inode: u64,
    pub(crate) size: u64,
    mtime: (i64, i64),
}

impl FileIdentity {
    pub(crate) fn of(meta: &Metadata) -> Self {
        FileIdentity {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }

    /// `fstat` of an open file.
    pub(crate) fn of_file(file: &File, path: &Path) -> Result<Self> {
        file.metadata()
            .map(|m| Self::of(&m))
            .map_err(|e| Error::io("stat", path, e))
    }

    /// What differs in `now` from `self`, the most telling change first.
    pub(crate) fn change(&self, now: &FileIdentity) -> Option<FileChange> {
        if (self.device, self.inode) != (now.device, now.inode) {
            Some(FileChange::Replaced {
                was_device: self.device,
                was_inode: self.inode,
                device: now.device,
                inode: now.inode,
            })
        } else if self.size != now.size {
            Some(FileChange::Resized {
                was: self.size,
                now: now.size,
            })
        } else if self.mtime != now.mtime {
            Some(FileChange::Modified)
        } else {
            None
        }
    }

    /// Fails with [`Error::FileChanged`] unless `file` (`fstat`) still has this identity.
    pub(crate) fn check_file(&self, file: &File, path: &Path) -> Result<()> {
        let now = Self::of_file(file, path)?;
        self.changed(path, self.change(&now))
    }

    /// Fails with [`Error::FileChanged`] unless the file at `path` (a fresh `stat`) still has
    /// this identity.
    pub(crate) fn check_path(&self, path: &Path) -> Result<()> {
        let change = match std::fs::metadata(path) {
            Ok(meta) => self.change(&Self::of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(FileChange::Removed),
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        self.changed(path, change)
    }

    fn changed(&self, path: &Path, change: Option<FileChange>) -> Result<()> {
        match change {
            None => Ok(()),
            Some(change) => Err(Error::FileChanged {
                path: path.to_path_buf(),
                change,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, SystemTime};

    fn changed(result: Result<()>) -> FileChange {
        match result {
            Err(Error::FileChanged { change, .. }) => change,
            other => panic!("expected FileChanged, got {other:?}"),
        }
    }

    #[test]
    fn truncation_replacement_writes_and_removal_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.mem");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let file = File::open(&path).unwrap();
        let id = FileIdentity::of_file(&file, &path).unwrap();
        id.check_file(&file, &path).unwrap();
        id.check_path(&path).unwrap();

        // Truncated in place: the descriptor sees it.
        let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        writer.set_len(4096).unwrap();
        let err = id.check_file(&file, &path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(
            changed(Err(err)),
            FileChange::Resized {
                was: 8192,
                now: 4096
            }
        );
        assert!(matches!(
            changed(id.check_path(&path)),
            FileChange::Resized { now: 4096, .. }
        ));

        // Back to its size, but written to: modified (pin the times so that the change does
        // not depend on the clock's granularity).
        writer.set_len(8192).unwrap();
        writer.write_all_at(&[7u8; 4096], 4096).unwrap();
        writer
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
            .unwrap();
        assert_eq!(changed(id.check_file(&file, &path)), FileChange::Modified);

        // Replaced by another file renamed over it: only the path shows it.
        let id = FileIdentity::of_file(&file, &path).unwrap();
        let other = dir.path().join("vm.mem.tmp");
        std::fs::write(&other, vec![7u8; 8192]).unwrap();
        std::fs::rename(&other, &path).unwrap();
        id.check_file(&file, &path).unwrap();
        assert!(matches!(
            changed(id.check_path(&path)),
            FileChange::Replaced { was_inode, inode, .. } if was_inode != inode
        ));

        std::fs::remove_file(&path).unwrap();
        assert_eq!(changed(id.check_path(&path)), FileChange::Removed);
    }
}
