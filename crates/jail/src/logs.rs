//! A jail's console log: what it writes to stdout and stderr, in a file that rotates by size.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: File,
    written: u64,
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl RotatingLog {
    pub fn open(path: PathBuf, max_bytes: u64, keep: usize) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let written = file.metadata()?.len();
        Ok(RotatingLog {
            path,
            max_bytes,
            keep,
            file,
            written,
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.written > 0 && self.written + bytes.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..self.keep).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        if self.keep > 0 {
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

/// The last `lines` lines of a log, reaching into the newest rotated file when the current one
/// holds fewer.
pub fn tail_log(path: &Path, lines: usize) -> io::Result<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut have = 0;
    for candidate in
        std::iter::once(path.to_path_buf()).chain((1..=crate::LOG_KEEP).map(|n| rotated(path, n)))
    {
        let Ok(bytes) = std::fs::read(&candidate) else {
            break;
        };
        have += bytes.iter().filter(|b| **b == b'\n').count();
        chunks.push(bytes);
        if have > lines {
            break;
        }
    }
    let all: Vec<u8> = chunks.into_iter().rev().flatten().collect();
    let mut newlines = 0;
    let mut start = 0;
    for (i, b) in all.iter().enumerate().rev() {
        if *b == b'\n' && i + 1 != all.len() {
            newlines += 1;
            if newlines == lines {
                start = i + 1;
                break;
            }
        }
    }
    if lines == 0 {
        start = all.len();
    }
    Ok(all[start..].to_vec())
}

/// Copies what is appended to a log to `out` until `out` fails (the reader went away), following
/// the log across rotations.
pub async fn follow_log(path: &Path, mut out: impl Write) -> io::Result<()> {
    let mut file = File::open(path)?;
    let mut pos = file.seek(SeekFrom::End(0))?;
    let mut ino = file.metadata()?.ino();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n > 0 {
            pos += n as u64;
            out.write_all(&buf[..n])?;
            out.flush()?;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        match std::fs::metadata(path) {
            Ok(meta) if meta.ino() != ino || meta.len() < pos => {
                file = File::open(path)?;
                ino = file.metadata()?.ino();
                pos = 0;
            }
            Ok(_) => {}
            // Between rotation's rename and create the file is briefly missing; a log whose
            // directory is gone (its jail was destroyed) has nothing more to say.
            Err(_) if path.parent().is_some_and(|dir| !dir.exists()) => return Ok(()),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_tails_across_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let mut log = RotatingLog::open(path.clone(), 100, 2).expect("open");
        for i in 0..40 {
            log.write(format!("line {i:02}\n").as_bytes())
                .expect("write");
        }
        assert!(std::fs::metadata(&path).expect("log").len() <= 100);
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
        let tail = String::from_utf8(tail_log(&path, 15).expect("tail")).expect("utf8");
        let want: String = (25..40).map(|i| format!("line {i:02}\n")).collect();
        assert_eq!(tail, want);
    }
}
