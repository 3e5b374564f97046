use std::path::{Path, PathBuf};

/// Where one jail keeps its things under the state directory:
/// `<state>/jails/<name>/{data/, logs/console.log, jail.json}`.
#[derive(Clone, Debug)]
pub struct JailPaths {
    pub root: PathBuf,
}

impl JailPaths {
    pub fn new(state_dir: &Path, jail: &str) -> Self {
        JailPaths {
            root: state_dir.join("jails").join(jail),
        }
    }

    /// The jail's own files; also its working directory.
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Everything the jail writes to stdout and stderr.
    pub fn console_log(&self) -> PathBuf {
        self.logs().join("console.log")
    }

    /// The definition of a jail created at run time (by clone or restore), kept so that it
    /// survives a restart of `citadel up`.
    pub fn definition(&self) -> PathBuf {
        self.root.join("jail.json")
    }

    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.data())?;
        std::fs::create_dir_all(self.logs())
    }
}
