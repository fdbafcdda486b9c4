//! The journal: an append-only log of the exact envelopes the node accepted and created.
//!
//! It is the source of truth; sled is an index and derived state that can be rebuilt from it.
//! Records live in segment files `NNNNNNNN.seg` (at most [`SEGMENT_MAX`] bytes each):
//!
//! ```text
//! record = "KOSJ" ‖ u32be(len) ‖ SHA-256(bytes)[..8] ‖ bytes
//! ```
//!
//! Appends are buffered by the OS; [`Journal::sync`] makes them durable (`fdatasync`). On open
//! every record is checked; an incomplete or unreadable record at the end of the last segment (a
//! torn tail, left by a crash mid-write) is truncated away and reported; a bad record elsewhere
//! is skipped (the scan resynchronises on the next valid record) and reported.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};

/// Record marker.
pub const MAGIC: [u8; 4] = *b"KOSJ";
/// Bytes before a record's payload: marker, length, checksum.
pub const HEADER_LEN: usize = 16;
/// Largest record payload (an envelope is at most 60 KiB).
pub const MAX_RECORD: usize = 1 << 20;
/// A segment is closed once it reaches this size.
pub const SEGMENT_MAX: u64 = 64 << 20;

/// Why the journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A record to append is larger than [`MAX_RECORD`].
    #[error("record of {0} bytes is larger than the journal allows")]
    TooLarge(usize),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

/// What opening the journal found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JournalReport {
    /// Valid records.
    pub records: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes cut from the end of the last segment (a torn tail).
    pub truncated_bytes: u64,
    /// Unreadable records skipped elsewhere: (segment, byte offset).
    pub bad_records: Vec<(String, u64)>,
}

/// The append-only journal of one node.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// Segment numbers, ascending.
    segments: Vec<u64>,
    file: File,
    current_len: u64,
    unsynced: bool,
}

fn checksum(bytes: &[u8]) -> [u8; 8] {
    let d = Sha256::digest(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

fn segment_name(n: u64) -> String {
    format!("{n:08}.seg")
}

/// Parses the records of one segment's bytes: the valid records' payload ranges, the offsets of
/// unreadable records, and the end of the last valid record.
fn parse(data: &[u8]) -> (Vec<(usize, usize)>, Vec<u64>, usize) {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    let mut at = 0usize;
    let mut end_of_good = 0usize;
    let mut in_bad = false;
    while at + HEADER_LEN <= data.len() {
        let ok = data[at..at + 4] == MAGIC && {
            let len = u32::from_be_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]])
                as usize;
            let start = at + HEADER_LEN;
            len <= MAX_RECORD
                && start + len <= data.len()
                && data[at + 8..at + 16] == checksum(&data[start..start + len])
        };
        if ok {
            let len = u32::from_be_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]])
                as usize;
            records.push((at + HEADER_LEN, len));
            at += HEADER_LEN + len;
            end_of_good = at;
            in_bad = false;
        } else {
            if !in_bad {
                bad.push(at as u64);
                in_bad = true;
            }
            at += 1;
        }
    }
    (records, bad, end_of_good)
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, checks every record, and truncates a torn tail.
    pub fn open(dir: &Path) -> Result<(Journal, JournalReport), JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut segments: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        segments.sort_unstable();
        let mut report = JournalReport { segments: segments.len(), ..Default::default() };
        let last = segments.last().copied();
        for &n in &segments {
            let path = dir.join(segment_name(n));
            let data = std::fs::read(&path).map_err(io(&path))?;
            let (records, bad, end) = parse(&data);
            report.records += records.len() as u64;
            let is_last = Some(n) == last;
            let mut bad = bad;
            if is_last && end < data.len() {
                // A torn tail: everything after the last good record goes.
                bad.retain(|&o| (o as usize) < end);
                report.truncated_bytes = (data.len() - end) as u64;
                let f = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
                f.set_len(end as u64).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
            }
            report.bad_records.extend(bad.into_iter().map(|o| (segment_name(n), o)));
        }
        if segments.is_empty() {
            segments.push(1);
        }
        let current = *segments.last().unwrap_or(&1);
        let path = dir.join(segment_name(current));
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        let current_len = file.metadata().map_err(io(&path))?.len();
        // Make the segment's directory entry durable too.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok((
            Journal { dir: dir.to_path_buf(), segments, file, current_len, unsynced: false },
            report,
        ))
    }

    /// Appends one record (not yet durable: see [`Journal::sync`]).
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), JournalError> {
        if bytes.len() > MAX_RECORD {
            return Err(JournalError::TooLarge(bytes.len()));
        }
        if self.current_len >= SEGMENT_MAX {
            self.roll()?;
        }
        let mut rec = Vec::with_capacity(HEADER_LEN + bytes.len());
        rec.extend_from_slice(&MAGIC);
        rec.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        rec.extend_from_slice(&checksum(bytes));
        rec.extend_from_slice(bytes);
        let path = self.current_path();
        if let Err(e) = self.file.write_all(&rec) {
            // A partial write (disk full) must not leave a torn record in the middle.
            let _ = self.file.set_len(self.current_len);
            return Err(io(&path)(e));
        }
        self.current_len += rec.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        if self.unsynced {
            let path = self.current_path();
            self.file.sync_data().map_err(io(&path))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Whether records were appended since the last [`Journal::sync`].
    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(segment_name(*self.segments.last().unwrap_or(&1)))
    }

    fn roll(&mut self) -> Result<(), JournalError> {
        self.sync()?;
        let next = self.segments.last().copied().unwrap_or(0) + 1;
        let path = self.dir.join(segment_name(next));
        self.file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        self.segments.push(next);
        self.current_len = 0;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Calls `f` with every valid record, in order, read back from disk and checked again, one
    /// segment in memory at a time.
    pub fn for_each_record<E: From<JournalError>>(
        &self,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for &n in &self.segments {
            let path = self.dir.join(segment_name(n));
            let data = match std::fs::read(&path) {
                Ok(data) => data,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e).into()),
            };
            for (start, len) in parse(&data).0 {
                f(&data[start..start + len])?;
            }
        }
        Ok(())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
