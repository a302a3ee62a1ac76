//! `faultline record`: every event from the live kernel into a trace file (format v1).

use std::{
    fs::File,
    io::BufWriter,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    core::trace::TraceWriter,
    kernel::probes::{ProbeOptions, Probes},
    kernel::stats,
    kernel::stream::EventStream,
};

pub struct RecordOptions {
    pub output: PathBuf,
    pub duration: Option<Duration>,
    pub probes: ProbeOptions,
}

/// What a recording produced.
#[derive(Debug)]
pub struct RecordReport {
    pub written: u64,
    /// Records the kernel dropped because the ring buffer was full.
    pub lost: u64,
    /// Records that did not decode (a build mismatch or corruption); skipped.
    pub decode_errors: u64,
}

fn create(path: &Path) -> Result<TraceWriter<BufWriter<File>>> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(TraceWriter::new(BufWriter::with_capacity(1 << 20, file)))
}

pub async fn run(opts: RecordOptions) -> Result<RecordReport> {
    // A trace is for replay, which wants every acquisition and release: record everything.
    let probe_opts = ProbeOptions {
        record_all: true,
        detail: crate::kernel::probes::Detail::Full,
        // Nothing here scans for userfaultfds, and a trace should miss no ioctl.
        uffd_ioctls: crate::kernel::probes::IoctlHooks::Always,
        ..opts.probes.clone()
    };
    let mut probes = Probes::load(&probe_opts)?;
    // Created only once the probes are up, so a failed start leaves no empty trace behind.
    let mut writer = create(&opts.output)?;
    let before = stats::snapshot(&probes)?;
    let mut stream = EventStream::new(probes.take_events()?).context("ring buffer")?;
    eprintln!(
        "faultline: recording to {} (probes: {}){}",
        opts.output.display(),
        probes.attached(),
        opts.duration
            .map(|d| format!(" for {}", humantime::format_duration(d)))
            .unwrap_or_else(|| ", Ctrl-C to stop".into())
    );

    let mut decode_errors = 0u64;
    let mut io_error: Option<std::io::Error> = None;
    let mut handle =
        |r: Result<crate::kernel::decode::Decoded, crate::kernel::decode::DecodeError>| match r {
            Ok(d) => {
                if io_error.is_none() {
                    if let Err(e) = writer.write(&d.event) {
                        io_error = Some(e);
                    }
                }
            }
            Err(e) => {
                decode_errors += 1;
                if decode_errors <= 3 {
                    log::warn!("skipping record: {e}");
                }
            }
        };

    let deadline = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    loop {
        tokio::select! {
            r = stream.next_batch(&mut handle) => { r.context("reading the ring buffer")?; }
            _ = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Everything still buffered belongs to the trace: drain in bounded batches until empty.
    while stream.drain_now(&mut handle) > 0 {}
    if let Some(e) = io_error {
        return Err(e).with_context(|| format!("writing {}", opts.output.display()));
    }
    let written = writer.written();
    writer
        .finish()
        .with_context(|| format!("flushing {}", opts.output.display()))?;
    let lost = stats::snapshot(&probes)?.since(&before).lost();
    drop(probes);
    Ok(RecordReport {
        written,
        lost,
        decode_errors,
    })
}
