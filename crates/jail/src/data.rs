//! Copying and archiving a jail's data: clone copies it to a new jail; archive packs the
//! definition and the data into one compressed file that restore unpacks, here or on another
//! machine.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// The name of the definition inside an archive.
const DEFINITION: &str = "citadel-jail.json";
const DATA: &str = "data";

/// Copies a directory tree byte for byte, keeping permissions and symbolic links.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<u64> {
    std::fs::create_dir_all(dst)?;
    std::fs::set_permissions(dst, std::fs::metadata(src)?.permissions())?;
    let mut bytes = 0;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if kind.is_dir() {
            bytes += copy_tree(&entry.path(), &to)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &to)?;
        } else if kind.is_file() {
            bytes += std::fs::copy(entry.path(), &to)?;
        }
        // Sockets, fifos and devices are live objects, not data: they are not copied.
    }
    Ok(bytes)
}

/// Writes `definition` and the tree under `data_dir` to a gzip-compressed tar file.
pub fn write_archive(file: &Path, definition: &[u8], data_dir: &Path) -> io::Result<()> {
    let tmp = file.with_extension("partial");
    let out = File::create(&tmp)?;
    let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    tar.follow_symlinks(false);
    let mut header = tar::Header::new_gnu();
    header.set_size(definition.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    header.set_cksum();
    tar.append_data(&mut header, DEFINITION, definition)?;
    tar.append_dir_all(DATA, data_dir)?;
    let gz = tar.into_inner()?;
    gz.finish()?.sync_all()?;
    std::fs::rename(&tmp, file)
}

pub struct ArchiveContents {
    pub definition: Vec<u8>,
}

/// Reads an archive: returns the definition, and unpacks the data into `data_dir` when given.
/// Entries that would land outside `data_dir` are refused by `tar`'s `unpack_in`.
pub fn read_archive(file: &Path, data_dir: Option<&Path>) -> io::Result<ArchiveContents> {
    let mut tar = tar::Archive::new(GzDecoder::new(File::open(file)?));
    let mut definition = None;
    if let Some(dir) = data_dir {
        std::fs::create_dir_all(dir)?;
    }
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path == Path::new(DEFINITION) {
            let mut buf = Vec::new();
            entry.by_ref().take(1 << 20).read_to_end(&mut buf)?;
            definition = Some(buf);
        } else if let (Ok(rel), Some(dir)) = (path.strip_prefix(DATA), data_dir) {
            if rel.as_os_str().is_empty() {
                continue;
            }
            entry.set_preserve_permissions(true);
            if !entry.unpack_in(dir)? {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("archive entry {} points outside the jail", path.display()),
                ));
            }
        }
    }
    // `unpack_in` keeps the `data/` prefix; move the tree up one level.
    if let Some(dir) = data_dir {
        let nested = dir.join(DATA);
        if nested.is_dir() {
            for entry in std::fs::read_dir(&nested)? {
                let entry = entry?;
                std::fs::rename(entry.path(), dir.join(entry.file_name()))?;
            }
            std::fs::remove_dir(&nested)?;
        }
    }
    let definition = definition.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a citadel jail archive (no {DEFINITION})",
                file.display()
            ),
        )
    })?;
    Ok(ArchiveContents { definition })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(dir: &Path) {
        std::fs::create_dir_all(dir.join("sub/deeper")).expect("mkdir");
        std::fs::write(
            dir.join("a.bin"),
            (0..=255u8).cycle().take(100_000).collect::<Vec<_>>(),
        )
        .expect("write");
        std::fs::write(dir.join("sub/deeper/b.txt"), b"hello").expect("write");
        std::os::unix::fs::symlink("a.bin", dir.join("link")).expect("symlink");
    }

    fn same_tree(a: &Path, b: &Path) {
        for name in ["a.bin", "sub/deeper/b.txt"] {
            assert_eq!(
                std::fs::read(a.join(name)).expect("a"),
                std::fs::read(b.join(name)).expect("b"),
                "{name}"
            );
        }
        assert_eq!(
            std::fs::read_link(b.join("link")).expect("link"),
            Path::new("a.bin")
        );
    }

    #[test]
    fn copy_and_archive_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fill(&src);
        copy_tree(&src, &tmp.path().join("copy")).expect("copy");
        same_tree(&src, &tmp.path().join("copy"));

        let file = tmp.path().join("j.tar.gz");
        write_archive(&file, b"{\"name\":\"x\"}", &src).expect("archive");
        let out = tmp.path().join("restored");
        let got = read_archive(&file, Some(&out)).expect("restore");
        assert_eq!(got.definition, b"{\"name\":\"x\"}");
        same_tree(&src, &out);
    }

    #[test]
    fn garbage_is_not_an_archive() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("bad.tar.gz");
        std::fs::write(&file, b"not a tarball").expect("write");
        assert!(read_archive(&file, None).is_err());
    }
}
