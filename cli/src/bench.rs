//! `shardfs bench`: one fixed set of workloads that runs on any directory, so a shardfs
//! mount and a local directory are measured the same way, side by side.

mod fio;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use serde::Serialize;

const MIB: f64 = 1024.0 * 1024.0;
/// Size of each write and read of the sequential workloads.
const IO_SIZE: usize = 1 << 20;
/// Size of each random read.
const RANDOM_READ_SIZE: u64 = 4096;
/// Threads of the parallel random-read workload.
const READ_THREADS: usize = 4;

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    /// Size of the sequentially written and read file.
    pub file_bytes: u64,
    /// Random 4 KiB reads per random-read workload.
    pub random_reads: usize,
    /// Seconds each of fio's random-read jobs runs.
    pub fio_runtime_secs: u64,
    /// Small files, spread over `small_dirs` directories.
    pub small_files: usize,
    pub small_dirs: usize,
    pub small_file_bytes: usize,
    /// A real tree to copy, compare and remove.
    pub tree: PathBuf,
    /// The groups of workloads to run.
    pub groups: Vec<Group>,
}

/// Workloads that run together: `random` reads the file `data` writes (written untimed when
/// `data` is not selected); `fio` writes and reads its own file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Sequential write and cold read of the big file.
    Data,
    /// Random reads of the big file.
    Random,
    /// Small files: create, stat, read, delete.
    Small,
    /// Copy, compare and remove a real tree.
    Tree,
    /// The data and random workloads again, run by fio (not run unless selected).
    Fio,
}

impl Group {
    /// The groups run unless `--only` says otherwise.
    pub const DEFAULT: [Group; 4] = [Group::Data, Group::Random, Group::Small, Group::Tree];
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            file_bytes: 1 << 30,
            random_reads: 20_000,
            fio_runtime_secs: 20,
            small_files: 5_000,
            small_dirs: 50,
            small_file_bytes: 4096,
            tree: PathBuf::from("/usr/include"),
            groups: Group::DEFAULT.to_vec(),
        }
    }
}

/// The workloads, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    SeqWrite,
    SeqReadCold,
    RandomRead,
    RandomRead4Threads,
    SmallCreate,
    SmallStat,
    SmallRead,
    SmallStatCold,
    SmallReadCold,
    SmallDelete,
    TreeCopy,
    TreeDiff,
    TreeRemove,
    FioSeqWrite,
    FioSeqReadCold,
    FioRandomRead,
    FioRandomRead4Jobs,
}

impl Workload {
    pub const ALL: [Workload; 17] = [
        Workload::SeqWrite,
        Workload::SeqReadCold,
        Workload::RandomRead,
        Workload::RandomRead4Threads,
        Workload::SmallCreate,
        Workload::SmallStat,
        Workload::SmallRead,
        Workload::SmallStatCold,
        Workload::SmallReadCold,
        Workload::SmallDelete,
        Workload::TreeCopy,
        Workload::TreeDiff,
        Workload::TreeRemove,
        Workload::FioSeqWrite,
        Workload::FioSeqReadCold,
        Workload::FioRandomRead,
        Workload::FioRandomRead4Jobs,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Workload::SeqWrite => "sequential write, 1 MiB writes, fsync",
            Workload::SeqReadCold => "sequential read, page cache dropped",
            Workload::RandomRead => "random 4 KiB reads, 1 thread",
            Workload::RandomRead4Threads => "random 4 KiB reads, 4 threads",
            Workload::SmallCreate => "small files: create and write",
            Workload::SmallStat => "small files: stat",
            Workload::SmallRead => "small files: read",
            Workload::SmallStatCold => "small files: stat, caches dropped",
            Workload::SmallReadCold => "small files: read, caches dropped",
            Workload::SmallDelete => "small files: delete",
            Workload::TreeCopy => "tree: cp -a",
            Workload::TreeDiff => "tree: diff -r",
            Workload::TreeRemove => "tree: rm -rf",
            Workload::FioSeqWrite => "fio: sequential write, 1 MiB, end_fsync",
            Workload::FioSeqReadCold => "fio: sequential read, page cache dropped",
            Workload::FioRandomRead => "fio: random 4 KiB reads, 1 job",
            Workload::FioRandomRead4Jobs => "fio: random 4 KiB reads, 4 jobs",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Workload::SeqWrite
            | Workload::SeqReadCold
            | Workload::FioSeqWrite
            | Workload::FioSeqReadCold => "MiB/s",
            Workload::RandomRead
            | Workload::RandomRead4Threads
            | Workload::FioRandomRead
            | Workload::FioRandomRead4Jobs => "IOPS",
            Workload::SmallCreate
            | Workload::SmallStat
            | Workload::SmallRead
            | Workload::SmallStatCold
            | Workload::SmallReadCold
            | Workload::SmallDelete => "ops/s",
            Workload::TreeCopy | Workload::TreeDiff | Workload::TreeRemove => "s",
        }
    }

    /// Rates are better higher, times lower.
    fn is_time(self) -> bool {
        self.unit() == "s"
    }

    fn group(self) -> Group {
        match self {
            Workload::SeqWrite | Workload::SeqReadCold => Group::Data,
            Workload::RandomRead | Workload::RandomRead4Threads => Group::Random,
            Workload::SmallCreate
            | Workload::SmallStat
            | Workload::SmallRead
            | Workload::SmallStatCold
            | Workload::SmallReadCold
            | Workload::SmallDelete => Group::Small,
            Workload::TreeCopy | Workload::TreeDiff | Workload::TreeRemove => Group::Tree,
            Workload::FioSeqWrite
            | Workload::FioSeqReadCold
            | Workload::FioRandomRead
            | Workload::FioRandomRead4Jobs => Group::Fio,
        }
    }
}

impl BenchConfig {
    /// The workloads of the selected groups, in the order they run.
    pub fn workloads(&self) -> Vec<Workload> {
        Workload::ALL.into_iter().filter(|w| self.groups.contains(&w.group())).collect()
    }
}

/// Median results of one directory.
#[derive(Clone, Debug, Serialize)]
pub struct DirResults {
    pub dir: PathBuf,
    /// One value per selected workload, in [`BenchConfig::workloads`] order: the median over
    /// the rounds.
    pub medians: Vec<f64>,
    /// Every round's values.
    pub rounds: Vec<Vec<f64>>,
    /// Whether the kernel page cache could be dropped (needs root); if not, the "cold"
    /// read was warm.
    pub cache_dropped: bool,
}

/// One row of a comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub workload: Workload,
    pub unit: &'static str,
    pub value: f64,
    /// The value of each directory compared, in the order given.
    pub others: Vec<f64>,
    /// How fast `dir` is relative to each directory compared (1.0 = as fast, 0.5 = half as
    /// fast): the ratio of rates, or the inverse ratio of times.
    pub speed_ratios: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub config: BenchConfig,
    pub rounds: usize,
    pub results: DirResults,
    pub compare: Vec<DirResults>,
    pub rows: Vec<Row>,
    /// Peak resident memory of the shardfs client serving `dir`, if one was found.
    pub client_peak_rss_bytes: Option<u64>,
}

/// Runs `rounds` rounds on `dir`, alternating with the directories in `compare` (A B C A B
/// C …).
pub fn run(
    config: &BenchConfig,
    dir: &Path,
    compare: &[PathBuf],
    rounds: usize,
    progress: bool,
) -> anyhow::Result<Report> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if config.small_dirs == 0 || config.small_files < config.small_dirs {
        bail!("need at least one small file per directory");
    }
    if config.groups.is_empty() {
        bail!("no workloads selected (--only)");
    }
    if config.groups.contains(&Group::Tree) && !config.tree.is_dir() {
        bail!("{} is not a directory to copy (--tree)", config.tree.display());
    }
    if config.groups.contains(&Group::Fio) {
        fio::check(config)?;
    }
    let dirs: Vec<&Path> =
        std::iter::once(dir).chain(compare.iter().map(PathBuf::as_path)).collect();
    for d in &dirs {
        if !d.is_dir() {
            bail!("{} is not a directory", d.display());
        }
    }
    let selected = config.workloads();
    let steps = (rounds * dirs.len() * selected.len()) as u64;
    let bar = crate::progress::bar(steps, "{msg}", progress);
    let mut all: Vec<Vec<Vec<f64>>> = vec![Vec::new(); dirs.len()];
    let mut cache_dropped = vec![true; dirs.len()];
    for _ in 0..rounds {
        for (i, d) in dirs.iter().enumerate() {
            let (values, dropped) = run_round(config, d, &bar)?;
            all[i].push(values);
            cache_dropped[i] &= dropped;
        }
    }
    bar.finish_and_clear();
    let mut results =
        all.into_iter().zip(dirs).zip(cache_dropped).map(|((rounds, d), dropped)| DirResults {
            dir: d.to_path_buf(),
            medians: medians(&rounds),
            rounds,
            cache_dropped: dropped,
        });
    let results_a = results.next().expect("dir is measured");
    let compared: Vec<DirResults> = results.collect();
    let rows = selected
        .iter()
        .enumerate()
        .map(|(i, &workload)| {
            let value = results_a.medians[i];
            let others: Vec<f64> = compared.iter().map(|b| b.medians[i]).collect();
            let speed_ratios = others
                .iter()
                .map(|other| match workload.is_time() {
                    true => other / value,
                    false => value / other,
                })
                .collect();
            Row { workload, unit: workload.unit(), value, others, speed_ratios }
        })
        .collect();
    Ok(Report {
        config: config.clone(),
        rounds,
        client_peak_rss_bytes: client_peak_rss(dir),
        results: results_a,
        compare: compared,
        rows,
    })
}

fn medians(rounds: &[Vec<f64>]) -> Vec<f64> {
    (0..rounds[0].len())
        .map(|i| {
            let mut values: Vec<f64> = rounds.iter().map(|r| r[i]).collect();
            values.sort_by(f64::total_cmp);
            let mid = values.len() / 2;
            match values.len() % 2 {
                1 => values[mid],
                _ => (values[mid - 1] + values[mid]) / 2.0,
            }
        })
        .collect()
}

/// One round of every workload in a fresh work directory under `dir`, removed after.
/// Returns the values and whether the page cache could be dropped.
fn run_round(
    config: &BenchConfig,
    dir: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<(Vec<f64>, bool)> {
    let work = dir.join(format!("shardfs-bench-{}", std::process::id()));
    fs::create_dir(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let result = workloads(config, &work, bar);
    let cleanup = fs::remove_dir_all(&work);
    let result = result?;
    cleanup.with_context(|| format!("cannot remove {}", work.display()))?;
    Ok(result)
}

fn workloads(
    config: &BenchConfig,
    work: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<(Vec<f64>, bool)> {
    let mut values = Vec::new();
    let mut dropped = true;
    let runs = |group: Group| config.groups.contains(&group);
    let mut step = |workload: Workload, value: anyhow::Result<f64>| -> anyhow::Result<()> {
        let value =
            value.with_context(|| format!("{} in {}", workload.describe(), work.display()))?;
        values.push(value);
        bar.inc(1);
        Ok(())
    };
    let announce = |workload: Workload| {
        bar.set_message(format!("{}: {}", work.display(), workload.describe()))
    };

    let big = work.join("big");
    if runs(Group::Data) {
        announce(Workload::SeqWrite);
        step(Workload::SeqWrite, sequential_write(&big, config.file_bytes))?;
        announce(Workload::SeqReadCold);
        dropped &= drop_page_cache();
        step(Workload::SeqReadCold, sequential_read(&big))?;
    } else if runs(Group::Random) {
        sequential_write(&big, config.file_bytes)?;
    }
    if runs(Group::Random) {
        for (workload, threads) in
            [(Workload::RandomRead, 1), (Workload::RandomRead4Threads, READ_THREADS)]
        {
            announce(workload);
            dropped &= drop_page_cache();
            step(workload, random_reads(&big, config.file_bytes, config.random_reads, threads))?;
        }
    }
    if runs(Group::Data) || runs(Group::Random) {
        fs::remove_file(&big)?;
    }
    if runs(Group::Small) {
        dropped &= small_files(config, work, &mut step, &announce)?;
    }
    if runs(Group::Tree) {
        let tree = work.join("tree");
        for (workload, args) in [
            (Workload::TreeCopy, vec!["cp".into(), "-a".into(), config.tree.clone(), tree.clone()]),
            (
                Workload::TreeDiff,
                vec!["diff".into(), "-r".into(), config.tree.clone(), tree.clone()],
            ),
            (Workload::TreeRemove, vec!["rm".into(), "-rf".into(), tree.clone()]),
        ] {
            announce(workload);
            step(workload, timed_command(&args))?;
        }
    }
    if runs(Group::Fio) {
        let file = work.join("fio");
        for workload in config.workloads().into_iter().filter(|w| w.group() == Group::Fio) {
            announce(workload);
            // Every read starts cold; the write makes the file the reads read.
            if workload != Workload::FioSeqWrite {
                dropped &= drop_page_cache();
            }
            step(workload, fio::run(workload, &file, config))?;
        }
        fs::remove_file(&file)?;
    }
    Ok((values, dropped))
}

/// Creates, stats, reads and deletes the small files; stats and reads them again after
/// dropping the kernel's caches. Returns whether the caches could be dropped.
fn small_files(
    config: &BenchConfig,
    work: &Path,
    step: &mut impl FnMut(Workload, anyhow::Result<f64>) -> anyhow::Result<()>,
    announce: &impl Fn(Workload),
) -> anyhow::Result<bool> {
    let small = work.join("small");
    let paths = small_file_paths(&small, config);
    let stat_all = || paths.iter().try_for_each(|p| fs::metadata(p).map(drop));
    let read_all = || paths.iter().try_for_each(|p| fs::read(p).map(drop));
    let mut dropped = true;
    announce(Workload::SmallCreate);
    step(Workload::SmallCreate, small_create(&small, config, &paths))?;
    for (workload, cold, run) in [
        (Workload::SmallStat, false, &stat_all as &dyn Fn() -> std::io::Result<()>),
        (Workload::SmallRead, false, &read_all),
        (Workload::SmallStatCold, true, &stat_all),
        (Workload::SmallReadCold, true, &read_all),
    ] {
        announce(workload);
        if cold {
            dropped &= drop_page_cache();
        }
        step(workload, per_second(paths.len(), run))?;
    }
    announce(Workload::SmallDelete);
    step(
        Workload::SmallDelete,
        per_second(paths.len(), || paths.iter().try_for_each(fs::remove_file)),
    )?;
    Ok(dropped)
}

/// Fills `buf` with data no other buffer of the run repeats, so deduplication cannot make
/// writes cheaper than they are.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for word in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
}

fn sequential_write(path: &Path, bytes: u64) -> anyhow::Result<f64> {
    let mut buf = vec![0u8; IO_SIZE];
    let started = Instant::now();
    let mut file = File::create(path)?;
    let mut written = 0u64;
    while written < bytes {
        let n = (bytes - written).min(IO_SIZE as u64) as usize;
        fill(&mut buf[..n], written / IO_SIZE as u64 + 1);
        file.write_all(&buf[..n])?;
        written += n as u64;
    }
    file.sync_all()?;
    drop(file);
    Ok(written as f64 / MIB / started.elapsed().as_secs_f64())
}

fn sequential_read(path: &Path) -> anyhow::Result<f64> {
    let mut buf = vec![0u8; IO_SIZE];
    let started = Instant::now();
    let mut file = File::open(path)?;
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    Ok(read as f64 / MIB / started.elapsed().as_secs_f64())
}

/// `count` reads of 4 KiB at random aligned offsets of the file, over `threads` threads.
fn random_reads(path: &Path, file_bytes: u64, count: usize, threads: usize) -> anyhow::Result<f64> {
    let blocks = (file_bytes / RANDOM_READ_SIZE).max(1);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> std::io::Result<()> {
                    let file = File::open(path)?;
                    let mut buf = [0u8; RANDOM_READ_SIZE as usize];
                    let mut x = (t as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
                    for _ in 0..count / threads {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        file.read_exact_at(&mut buf, (x % blocks) * RANDOM_READ_SIZE)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().expect("reader thread panicked"))
    })?;
    Ok((count / threads * threads) as f64 / started.elapsed().as_secs_f64())
}

fn small_file_paths(dir: &Path, config: &BenchConfig) -> Vec<PathBuf> {
    (0..config.small_files)
        .map(|i| dir.join(format!("d{}", i % config.small_dirs)).join(format!("f{i}")))
        .collect()
}

fn small_create(dir: &Path, config: &BenchConfig, paths: &[PathBuf]) -> anyhow::Result<f64> {
    let mut buf = vec![0u8; config.small_file_bytes];
    let started = Instant::now();
    fs::create_dir(dir)?;
    for d in 0..config.small_dirs {
        fs::create_dir(dir.join(format!("d{d}")))?;
    }
    for (i, path) in paths.iter().enumerate() {
        fill(&mut buf, (i as u64 + 1) << 32);
        OpenOptions::new().write(true).create_new(true).open(path)?.write_all(&buf)?;
    }
    Ok(paths.len() as f64 / started.elapsed().as_secs_f64())
}

fn per_second(ops: usize, run: impl FnOnce() -> std::io::Result<()>) -> anyhow::Result<f64> {
    let started = Instant::now();
    run()?;
    Ok(ops as f64 / started.elapsed().as_secs_f64())
}

/// Runs a command; returns its wall time in seconds.
fn timed_command(args: &[PathBuf]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new(&args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", args[0].display()))?;
    if !status.success() {
        bail!("{} exited with {status}", args[0].display());
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Drops the kernel's page cache, dentries and inodes (needs root). Returns whether it could.
fn drop_page_cache() -> bool {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", b"3").is_ok()
}

/// Peak resident memory (VmHWM) of the shardfs process serving the mount that holds `dir`.
fn client_peak_rss(dir: &Path) -> Option<u64> {
    let dir = dir.canonicalize().ok()?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    // The deepest shardfs mount point containing `dir`.
    let mountpoint = mountinfo
        .lines()
        .filter(|line| line.contains(" - fuse.shardfs "))
        .filter_map(|line| line.split(' ').nth(4).map(PathBuf::from))
        .filter(|point| dir.starts_with(point))
        .max_by_key(|point| point.components().count())?;
    let me = std::process::id().to_string();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        // Processes only (not `self`, which is this very process and names the mount point
        // too).
        let name = entry.file_name();
        if name == me.as_str()
            || !name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_shardfs = args.first().is_some_and(|a| a.ends_with(b"shardfs"));
        // Arguments are resolved from that process's working directory.
        let Ok(cwd) = fs::read_link(entry.path().join("cwd")) else { continue };
        let serves = args.iter().filter(|a| !a.is_empty()).any(|a| {
            cwd.join(std::ffi::OsStr::from_bytes(a)).canonicalize().is_ok_and(|p| p == mountpoint)
        });
        if is_shardfs && serves {
            let status = fs::read_to_string(entry.path().join("status")).ok()?;
            let kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            return Some(kib * 1024);
        }
    }
    None
}

/// The report as a table for people.
pub fn print(report: &Report) {
    let a = &report.results;
    // The settings of the groups run.
    let config = &report.config;
    let runs = |group: Group| config.groups.contains(&group);
    let mut settings = vec![format!("{} rounds", report.rounds)];
    if runs(Group::Data) || runs(Group::Random) || runs(Group::Fio) {
        settings.push(format!("file {} MiB", config.file_bytes >> 20));
    }
    if runs(Group::Random) {
        settings.push(format!("{} random reads", config.random_reads));
    }
    if runs(Group::Small) {
        settings.push(format!(
            "{} small files of {} bytes in {} dirs",
            config.small_files, config.small_file_bytes, config.small_dirs
        ));
    }
    if runs(Group::Tree) {
        settings.push(format!("tree {}", config.tree.display()));
    }
    if runs(Group::Fio) {
        settings.push(format!("fio random reads for {} s each", config.fio_runtime_secs));
    }
    println!("shardfs bench: {}", settings.join(", "));
    let compared = &report.compare;
    let mut heading = format!("{:<40} {:>6} {:>12}", "workload (median)", "unit", truncate(&a.dir));
    for b in compared {
        heading.push_str(&format!(" {:>12}", truncate(&b.dir)));
    }
    for n in 1..=compared.len() {
        heading.push_str(&format!(" {:>7}", speed_heading(n, compared.len())));
    }
    println!("{}", heading.trim_end());
    // Times in milliseconds' precision, rates to a tenth.
    let show = |v: f64, unit: &str| match unit {
        "s" => format!("{v:.3}"),
        _ => format!("{v:.1}"),
    };
    for row in &report.rows {
        let mut line = format!(
            "{:<40} {:>6} {:>12}",
            row.workload.describe(),
            row.unit,
            show(row.value, row.unit)
        );
        for other in &row.others {
            line.push_str(&format!(" {:>12}", show(*other, row.unit)));
        }
        for ratio in &row.speed_ratios {
            line.push_str(&format!(" {:>7}", format!("{ratio:.2}")));
        }
        println!("{line}");
    }
    match compared.len() {
        0 => {}
        1 => println!(
            "speed: how fast the first directory is relative to the second (1.00 = as fast)"
        ),
        _ => println!(
            "speed N: how fast the first directory is relative to directory N+1 (1.00 = as fast)"
        ),
    }
    if let Some(rss) = report.client_peak_rss_bytes {
        println!("shardfs client peak RSS: {} MiB", rss >> 20);
    }
    for r in std::iter::once(a).chain(compared) {
        if !r.cache_dropped {
            println!(
                "note: could not drop the page cache (not root): cold reads of {} were warm",
                r.dir.display()
            );
        }
    }
}

/// The heading of the speed column against the `n`th of `of` directories compared.
fn speed_heading(n: usize, of: usize) -> String {
    match of {
        1 => "speed".to_string(),
        _ => format!("speed {n}"),
    }
}

/// The last 12 characters of `path`, for a column heading.
fn truncate(path: &Path) -> String {
    let text = path.display().to_string();
    let count = text.chars().count();
    match count > 12 {
        true => format!("…{}", text.chars().skip(count - 11).collect::<String>()),
        false => text,
    }
}
