//! The `fio` group of `shardfs bench`: the sequential and random workloads run by fio, so
//! the numbers are those fio users quote elsewhere, measured in the same alternating rounds
//! as the rest.
//!
//! Every job does buffered I/O (`--direct=0`: a FUSE mount has no O_DIRECT of its own) with
//! one read or write per system call (`--ioengine=psync`), and reports JSON. fio scrambles
//! each written buffer with its offset by default (`scramble_buffers`), so no two written
//! blocks are alike and deduplication cannot make the write cheaper than it is.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde::Deserialize;

use super::{BenchConfig, MIB, Workload};

/// Checks that fio runs and that the settings make sense for it.
pub(super) fn check(config: &BenchConfig) -> anyhow::Result<()> {
    let runs = Command::new("fio")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !runs {
        bail!("fio is not installed (apt-get install fio)");
    }
    if config.fio_runtime_secs == 0 {
        bail!("--fio-runtime must be at least 1 second");
    }
    Ok(())
}

/// What fio is told for `workload`, beyond what every job is told.
fn job_args(workload: Workload, config: &BenchConfig) -> Vec<String> {
    let random_reads = |jobs: usize| {
        vec![
            "--rw=randread".to_string(),
            "--bs=4k".to_string(),
            format!("--numjobs={jobs}"),
            // The jobs share the file and are reported as one.
            "--group_reporting".to_string(),
            "--time_based".to_string(),
            format!("--runtime={}", config.fio_runtime_secs),
        ]
    };
    match workload {
        Workload::FioSeqWrite => {
            ["--rw=write", "--bs=1M", "--end_fsync=1"].map(String::from).to_vec()
        }
        Workload::FioSeqReadCold => ["--rw=read", "--bs=1M"].map(String::from).to_vec(),
        Workload::FioRandomRead => random_reads(1),
        Workload::FioRandomRead4Jobs => random_reads(super::READ_THREADS),
        other => unreachable!("{other:?} is not run by fio"),
    }
}

/// Runs `workload`'s fio job on `file` (created by the write job, which comes first).
/// Returns MiB/s or IOPS, as the workload's unit says.
pub(super) fn run(workload: Workload, file: &Path, config: &BenchConfig) -> anyhow::Result<f64> {
    // fio splits file names at `:`.
    let filename = file.to_str().context("fio needs a UTF-8 path")?.replace(':', "\\:");
    let output = Command::new("fio")
        .arg(format!("--name={workload:?}"))
        .arg(format!("--filename={filename}"))
        .arg(format!("--size={}", config.file_bytes))
        .args(["--ioengine=psync", "--direct=0", "--output-format=json"])
        .args(job_args(workload, config))
        .stdin(Stdio::null())
        .output()
        .context("cannot run fio")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("fio exited with {}: {last}", output.status);
    }
    let report = parse(&output.stdout)?;
    let total = match workload {
        Workload::FioSeqWrite => report.total(|job| &job.write)?,
        _ => report.total(|job| &job.read)?,
    };
    Ok(match workload.unit() {
        "IOPS" => total.iops,
        _ => total.bw_bytes / MIB,
    })
}

/// fio's JSON report, of which only this is read.
#[derive(Debug, Deserialize)]
struct Report {
    jobs: Vec<JobReport>,
}

impl Report {
    /// The reads or the writes of every job, added up.
    fn total(&self, direction: fn(&JobReport) -> &Direction) -> anyhow::Result<Direction> {
        let mut total = Direction::default();
        for job in &self.jobs {
            if job.error != 0 {
                bail!("fio job {} failed with error {}", job.jobname, job.error);
            }
            let one = direction(job);
            total.io_bytes += one.io_bytes;
            total.bw_bytes += one.bw_bytes;
            total.iops += one.iops;
        }
        if total.io_bytes == 0 {
            bail!("fio reported no I/O");
        }
        Ok(total)
    }
}

#[derive(Debug, Deserialize)]
struct JobReport {
    jobname: String,
    error: i32,
    read: Direction,
    write: Direction,
}

#[derive(Debug, Default, Deserialize)]
struct Direction {
    io_bytes: u64,
    /// Bytes per second over the job's runtime, which includes the final fsync.
    bw_bytes: f64,
    iops: f64,
}

/// fio's JSON, after any notes it printed first.
fn parse(stdout: &[u8]) -> anyhow::Result<Report> {
    let text = String::from_utf8_lossy(stdout);
    let json = text.find('{').map_or("", |start| &text[start..]);
    serde_json::from_str(json).with_context(|| format!("cannot read fio's report: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_after_notes_is_read() {
        let stdout = br#"note: both iodepth >= 1 and synchronous I/O engine are selected
{"fio version": "fio-3.33", "jobs": [{"jobname": "x", "error": 0,
  "read": {"io_bytes": 4096, "bw_bytes": 409600, "iops": 100.0},
  "write": {"io_bytes": 0, "bw_bytes": 0, "iops": 0.0}}]}"#;
        let report = parse(stdout).unwrap();
        assert_eq!(report.jobs[0].read.iops, 100.0);
        assert!(parse(b"fio: no JSON").is_err());
    }
}
