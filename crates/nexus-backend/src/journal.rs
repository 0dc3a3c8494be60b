// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The upload journal: the backend's record of the write-behind uploads it acknowledged and
//! has not yet seen through, so that a restarted backend knows which were lost.
//!
//! A write-behind PUT is acknowledged to the guest before it is durable; the upload lives only
//! in the backend's memory until then. If the backend dies (a crash, `SIGKILL`) the upload is
//! gone — and the guest must not be told otherwise. So before the acknowledgement the backend
//! appends `A <id> <vm> <key>` to `<state dir>/uploads.journal`, and once the upload is durable
//! (or its failure was reported to the guest) it appends `D <id>`. Each record is one
//! `write(2)` to a file opened `O_APPEND`: it survives the death of the process (the kernel has
//! it), without an `fsync` on the acknowledgement's path. (A crash of the machine takes the
//! VMs with it; their uploads cannot be reported to anyone.)
//!
//! On start the journal is read: every `A` without its `D` is an upload a guest was told was
//! taken care of and that no one will finish. Those are handed back per VM
//! ([`UploadJournal::open`]) — the backend reports them to the VM's next `FLUSH` (or the
//! completion of its invocation) as failed uploads naming the object, and logs each — and the
//! journal is rewritten to hold only them.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::sync::lock;

/// The journal's file name in the state directory.
pub(crate) const JOURNAL_FILE: &str = "uploads.journal";
/// The journal is rewritten (keeping only what is still open) once it has this many records.
const COMPACT_AFTER: u64 = 100_000;

/// An upload a previous run of the backend acknowledged and never finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LostUpload {
    /// The VM it was acknowledged to.
    pub(crate) vm: String,
    /// The object.
    pub(crate) key: String,
}

/// The journal (see the module docs).
#[derive(Debug)]
pub(crate) struct UploadJournal {
    path: PathBuf,
    state: Mutex<JournalState>,
}

#[derive(Debug)]
struct JournalState {
    file: File,
    next_id: u64,
    /// Open records: id → (vm, key).
    open: BTreeMap<u64, (String, String)>,
    /// Records written since the last rewrite.
    written: u64,
}

impl UploadJournal {
    /// Opens the journal in `dir` (created `0700` if missing), returning it and the uploads a
    /// previous run left open. Those stay open in the journal until [`close`](Self::close)d.
    pub(crate) fn open(dir: &Path) -> io::Result<(Self, Vec<(u64, LostUpload)>)> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let path = dir.join(JOURNAL_FILE);
        let open = match File::open(&path) {
            Ok(file) => read_records(BufReader::new(file))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        let next_id = open.keys().next_back().map_or(1, |id| id + 1);
        let file = rewrite(&path, &open)?;
        let lost = open
            .iter()
            .map(|(id, (vm, key))| {
                (
                    *id,
                    LostUpload {
                        vm: vm.clone(),
                        key: key.clone(),
                    },
                )
            })
            .collect();
        Ok((
            Self {
                path,
                state: Mutex::new(JournalState {
                    file,
                    next_id,
                    written: open.len() as u64,
                    open,
                }),
            },
            lost,
        ))
    }

    /// Records an upload about to be acknowledged to `vm`; its id, for [`close`](Self::close).
    pub(crate) fn record(&self, vm: &str, key: &str) -> io::Result<u64> {
        let mut state = lock(&self.state);
        let id = state.next_id;
        state.next_id += 1;
        let line = format!("A {id} {vm} {key}\n");
        state.file.write_all(line.as_bytes())?;
        state.open.insert(id, (vm.to_owned(), key.to_owned()));
        state.written += 1;
        Ok(id)
    }

    /// The upload `id` is over: durable, or its failure reported to the guest.
    pub(crate) fn close(&self, id: u64) {
        let mut state = lock(&self.state);
        if state.open.remove(&id).is_none() {
            return;
        }
        if let Err(e) = state.file.write_all(format!("D {id}\n").as_bytes()) {
            log::warn!("cannot write the upload journal: {e}");
        }
        state.written += 1;
        if state.written >= COMPACT_AFTER.max(2 * state.open.len() as u64) {
            match rewrite(&self.path, &state.open) {
                Ok(file) => {
                    state.file = file;
                    state.written = state.open.len() as u64;
                }
                Err(e) => log::warn!("cannot rewrite the upload journal: {e}"),
            }
        }
    }

    /// Uploads recorded and not yet closed.
    #[cfg(test)]
    pub(crate) fn open_count(&self) -> usize {
        lock(&self.state).open.len()
    }
}

/// The open records of a journal: `A` lines whose `D` never came. Malformed lines, and a last
/// line without its newline (a record cut short, as by a full disk), are skipped.
fn read_records(mut reader: impl BufRead) -> io::Result<BTreeMap<u64, (String, String)>> {
    let mut open = BTreeMap::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let Some(complete) = line.strip_suffix(b"\n") else {
            continue;
        };
        let Ok(line) = std::str::from_utf8(complete) else {
            continue;
        };
        let mut fields = line.splitn(4, ' ');
        match (
            fields.next(),
            fields.next().and_then(|id| id.parse::<u64>().ok()),
        ) {
            (Some("A"), Some(id)) => {
                if let (Some(vm), Some(key)) = (fields.next(), fields.next()) {
                    if !vm.is_empty() && !key.is_empty() {
                        open.insert(id, (vm.to_owned(), key.to_owned()));
                    }
                }
            }
            (Some("D"), Some(id)) => {
                open.remove(&id);
            }
            _ => {}
        }
    }
    Ok(open)
}

/// Writes a fresh journal holding `open` (atomically, by rename) and opens it for appending.
fn rewrite(path: &Path, open: &BTreeMap<u64, (String, String)>) -> io::Result<File> {
    let fresh = path.with_extension("journal.new");
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&fresh)?;
        let mut text = String::new();
        for (id, (vm, key)) in open {
            text.push_str(&format!("A {id} {vm} {key}\n"));
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&fresh, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_run_leaves_open_the_next_run_gets_back() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, lost) = UploadJournal::open(dir.path()).unwrap();
        assert!(lost.is_empty());
        let a = journal.record("vm-1", "out/a b").unwrap();
        let b = journal.record("vm-1", "out/b").unwrap();
        let c = journal.record("vm-2", "out/c").unwrap();
        journal.close(b);
        journal.close(b);
        assert_eq!(journal.open_count(), 2);
        // The process dies here: nothing else is written.
        drop(journal);
        let (journal, lost) = UploadJournal::open(dir.path()).unwrap();
        let lost: Vec<_> = lost.into_iter().map(|(id, l)| (id, l.vm, l.key)).collect();
        assert_eq!(
            lost,
            [
                (a, "vm-1".into(), "out/a b".into()),
                (c, "vm-2".into(), "out/c".into())
            ]
        );
        // New ids never collide with the lost ones; closing a lost one forgets it for good.
        let d = journal.record("vm-3", "out/d").unwrap();
        assert!(d > c);
        journal.close(a);
        drop(journal);
        let (_, lost) = UploadJournal::open(dir.path()).unwrap();
        let ids: Vec<u64> = lost.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [c, d]);
    }

    #[test]
    fn a_record_cut_short_is_skipped() {
        let records = "A 1 vm-1 out/a\nA 2 vm-1 out/b\nD 1\nA 3 vm\nD x\nA 4 vm-2 ou";
        let open = read_records(records.as_bytes()).unwrap();
        let ids: Vec<u64> = open.keys().copied().collect();
        assert_eq!(ids, [2], "the record without its newline is not taken");
        assert_eq!(open[&2], ("vm-1".into(), "out/b".into()));
    }

    #[test]
    fn the_journal_is_rewritten_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = UploadJournal::open(dir.path()).unwrap();
        for _ in 0..(COMPACT_AFTER / 2 + 10) {
            let id = journal.record("vm", "k").unwrap();
            journal.close(id);
        }
        let len = std::fs::metadata(dir.path().join(JOURNAL_FILE))
            .unwrap()
            .len();
        assert!(len < 1 << 20, "the journal holds {len} bytes");
    }
}
