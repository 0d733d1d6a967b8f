//! Bad command lines and bad firmware files: one-line error naming the problem,
//! non-zero exit, no file changed. These checks run before any VM exists, so
//! they hold on every host.

use std::path::Path;
use std::process::{Command, Output};

fn hangar(args: &[&str], state: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("XDG_STATE_HOME", state)
        .output()
        .expect("run hangar")
}

fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "exit status {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(lines[0].starts_with("hangar: "), "{stderr}");
    assert!(
        stderr.contains(needle),
        "{stderr:?} does not mention {needle:?}"
    );
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vars.fd"), vec![0x5au8; 64 << 10]).unwrap();
        Files { dir }
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
    /// `hangar run --firmware <dir>/CODE --vars <dir>/VARS`.
    fn run(&self, code: &str, vars: &str) -> Output {
        hangar(
            &[
                "run",
                "--firmware",
                &self.path(code),
                "--vars",
                &self.path(vars),
            ],
            self.dir.path(),
        )
    }
    fn vars_unchanged(&self) {
        assert_eq!(
            std::fs::read(self.dir.path().join("vars.fd")).unwrap(),
            vec![0x5au8; 64 << 10]
        );
    }
}

#[test]
fn empty_firmware_file_is_refused() {
    let f = Files::new();
    std::fs::write(f.path("code.fd"), b"").unwrap();
    let out = f.run("code.fd", "vars.fd");
    assert_one_line_error(&out, "is empty");
    f.vars_unchanged();
}

#[test]
fn firmware_larger_than_the_flash_bank_is_refused() {
    let f = Files::new();
    let big = std::fs::File::create(f.path("code.fd")).unwrap();
    big.set_len((64 << 20) + 1).unwrap();
    let out = f.run("code.fd", "vars.fd");
    assert_one_line_error(&out, "more than the");
    f.vars_unchanged();
}

#[test]
fn missing_firmware_file_is_named() {
    let f = Files::new();
    let out = f.run("nope.fd", "vars.fd");
    assert_one_line_error(&out, "nope.fd");
    f.vars_unchanged();
}

#[test]
fn unreadable_firmware_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = Files::new();
    std::fs::write(f.path("code.fd"), vec![0u8; 4096]).unwrap();
    std::fs::set_permissions(f.path("code.fd"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = f.run("code.fd", "vars.fd");
    assert_one_line_error(&out, "not readable");
    f.vars_unchanged();
}

#[test]
fn vars_in_a_missing_directory_is_refused_and_not_created() {
    let f = Files::new();
    std::fs::write(f.path("code.fd"), vec![0u8; 4096]).unwrap();
    let vars = f.path("no/such/dir/vars.fd");
    let out = hangar(
        &["run", "--firmware", &f.path("code.fd"), "--vars", &vars],
        f.dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no/such/dir"), "{stderr}");
    assert!(!Path::new(&vars).exists());
}

#[test]
fn oversized_vars_file_is_refused() {
    let f = Files::new();
    std::fs::write(f.path("code.fd"), vec![0u8; 4096]).unwrap();
    let big = std::fs::File::create(f.path("bigvars.fd")).unwrap();
    big.set_len((64 << 20) + 4096).unwrap();
    let out = f.run("code.fd", "bigvars.fd");
    assert_one_line_error(&out, "bigvars.fd");
    assert_eq!(
        std::fs::metadata(f.path("bigvars.fd")).unwrap().len(),
        (64 << 20) + 4096
    );
}

#[test]
fn bad_sizes_and_counts_name_the_option() {
    let f = Files::new();
    for (args, needle) in [
        (vec!["run", "--memory", "lots"], "--memory"),
        (vec!["run", "--memory", "64M"], "at least 128"),
        (vec!["run", "--cpus", "0"], "--cpus 0"),
        (vec!["run", "--serial", "tcp:1"], "tcp:1"),
        (vec!["run", "--disk", "path=x.img,aio=magic"], "aio"),
        (
            vec!["run", "--iothread-poll-max-us", "20000"],
            "--iothread-poll-max-us 20000",
        ),
    ] {
        let out = hangar(&args, f.dir.path());
        assert_one_line_error(&out, needle);
    }
}

#[test]
fn help_documents_every_run_option_with_defaults() {
    let out = hangar(&["run", "--help"], Path::new("/nonexistent"));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--cpus",
        "--memory",
        "--firmware",
        "--vars",
        "--serial",
        "--disk",
        "--iothread-poll-max-us",
        "[default: 512M]",
        "[default: auto]",
        "Examples:",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
}
