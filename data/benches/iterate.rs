//! Iteration throughput: a 20,000-row synthetic dataset read for one epoch in batches of 64 with
//! image decoding on 2 threads, for PNG and JPEG images. Prints rows/s and peak RSS.
//!
//! `cargo bench -p data --bench iterate` (env `DATA_BENCH_ROWS`, `DATA_BENCH_THREADS` override the
//! defaults). Take final numbers on an idle machine.

use std::time::Instant;

use data::synth::{write_split, ImageEncoding, SynthConfig};
use data::{Cursor, DatasetFiles, Loader, LoaderConfig};

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rows = env_or("DATA_BENCH_ROWS", 20_000);
    let threads = env_or("DATA_BENCH_THREADS", 2) as usize;
    let batch_size = 64;
    for encoding in [ImageEncoding::Png, ImageEncoding::Jpeg] {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = SynthConfig {
            seed: 1,
            encoding,
            ..SynthConfig::default()
        };
        let t = Instant::now();
        write_split(&cfg, dir.path(), "train", rows).expect("synthesis");
        let synth_s = t.elapsed().as_secs_f64();
        let files = DatasetFiles::locate(dir.path().to_str().expect("utf-8 path")).expect("locate");
        let config = LoaderConfig {
            batch_size,
            threads,
            ..LoaderConfig::default()
        };
        let mut loader = Loader::open(
            files.split("train").expect("train split"),
            config,
            Cursor::default(),
        )
        .expect("open");
        let rss_before = status_kib("VmRSS:");
        let t = Instant::now();
        let mut seen = 0u64;
        let mut checksum = 0u64;
        loop {
            let batch = loader.next_batch().expect("batch");
            if batch.epoch > 0 {
                break;
            }
            seen += batch.samples.len() as u64;
            checksum += batch
                .samples
                .iter()
                .map(|s| u64::from(s.image.as_raw()[0]))
                .sum::<u64>();
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{encoding:?}: synthesised {rows} rows in {synth_s:.1} s; iterated {seen} rows (batch {batch_size}, {threads} decode threads) \
             in {secs:.2} s = {:.0} rows/s; RSS before {} MiB, after {} MiB, peak {} MiB (checksum {checksum})",
            seen as f64 / secs,
            rss_before / 1024,
            status_kib("VmRSS:") / 1024,
            status_kib("VmHWM:") / 1024,
        );
    }
}
