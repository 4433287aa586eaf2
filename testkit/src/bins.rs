//! The binaries under test: `exchange-agent`, `exchange-hub` and `exchange-demo`.
//!
//! A test package cannot use `CARGO_BIN_EXE_*` of other packages, so the binaries are found
//! next to the test executable: `target/<profile>/deps/<test>` → `target/<profile>/<bin>`.
//! Once per test process they are (re)built with `cargo build -p exchange-agent -p exchange-hub
//! -p exchange-demo --bins` into that same target directory and profile, so a test never runs a stale binary;
//! when they are up to date this takes a second. Cargo's own lock serializes concurrent builds.
//!
//! `EXCHANGE_TEST_BIN_DIR=<dir>` uses the binaries in `<dir>` as they are, without building.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where the binaries are, after the one build of this process.
static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The `exchange-agent` binary.
pub fn agent() -> PathBuf {
    bin("exchange-agent")
}

/// The `exchange-hub` binary.
pub fn hub() -> PathBuf {
    bin("exchange-hub")
}

/// The `exchange-demo` binary.
pub fn demo() -> PathBuf {
    bin("exchange-demo")
}

fn bin(name: &str) -> PathBuf {
    let dir = BIN_DIR.get_or_init(locate_or_build);
    match dir {
        Ok(dir) => {
            let path = dir.join(name);
            assert!(
                path.is_file(),
                "{} does not exist (EXCHANGE_TEST_BIN_DIR or the build did not produce it)",
                path.display()
            );
            path
        }
        Err(e) => panic!("{e}"),
    }
}

fn locate_or_build() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("EXCHANGE_TEST_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let layout = Layout::of_this_test()?;
    build(&layout)?;
    Ok(layout.profile_dir)
}

/// Where the running test executable sits in cargo's target directory.
struct Layout {
    /// `target/<profile>`: where cargo puts the binaries of this profile.
    profile_dir: PathBuf,
    /// `target`: the target directory the build uses.
    target_dir: PathBuf,
    /// The profile's name as `cargo build --profile` takes it (`dev` for `debug`).
    profile: String,
}

impl Layout {
    /// The layout around the test executable, `target/<profile>/deps/<test-binary>`.
    fn of_this_test() -> Result<Layout, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find the test executable: {e}"))?;
        let unexpected = || format!("unexpected test executable location {}", exe.display());
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or_else(unexpected)?
            .to_owned();
        let target_dir = profile_dir.parent().ok_or_else(unexpected)?.to_owned();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_owned(),
            Some(other) => other.to_owned(),
            None => {
                return Err(format!(
                    "unexpected profile directory {}",
                    profile_dir.display()
                ));
            }
        };
        Ok(Layout {
            profile_dir,
            target_dir,
            profile,
        })
    }
}

/// `cargo`, without the variables `cargo test` sets for the test's own package.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // `cargo test` gives the test process the variables of the test's own package
    // (CARGO_MANIFEST_DIR, CARGO_PKG_NAME …). Passed on, they make the build see a changed
    // environment (ring's build tracks CARGO_MANIFEST_DIR) and rebuild half the dependency
    // tree, and the next plain `cargo build` rebuild it back: minutes per test binary.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            )
        {
            command.env_remove(&*name);
        }
    }
    command
}

/// Builds the binaries under test into `layout`'s target directory and profile.
fn build(layout: &Layout) -> Result<(), String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut command = cargo();
    let output = command
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&layout.target_dir)
        .args(["--profile", &layout.profile])
        .args([
            "-p",
            "exchange-agent",
            "-p",
            "exchange-hub",
            "-p",
            "exchange-demo",
            "--bins",
        ])
        .output()
        .map_err(|e| {
            format!(
                "cannot run `{}` to build the binaries under test: {e}",
                command.get_program().to_string_lossy()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "building exchange-agent, exchange-hub and exchange-demo failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}
