//! Fault injection: every rule reaches the caller as the right typed error, failed
//! requests never touch the file, and nothing reported written is missing from it.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use block::{
    AioMode, BlockBackend, BlockError, BlockOptions, DiscardMode, FaultInjector, FaultRule,
    InjectedError, Op, WriteMode,
};
use common::{image_in, seg, watch, DumpDepth};
use event_loop::{AioContext, IoThread};

const MIB: u64 = 1 << 20;

fn open(aio: AioMode, img: &tempfile::NamedTempFile) -> (BlockBackend, Arc<FaultInjector>) {
    let ctx = AioContext::new().unwrap();
    let faults = FaultInjector::new();
    let options = BlockOptions {
        aio,
        discard: DiscardMode::Unmap,
        ..Default::default()
    };
    let b = BlockBackend::open_with_faults(img.path(), &options, ctx, faults.clone()).unwrap();
    (b, faults)
}

fn is_errno(err: &BlockError, op: Op, errno: i32) -> bool {
    matches!(err, BlockError::Io { op: o, source, .. } if *o == op && source.raw_os_error() == Some(errno))
}

fn each_rule_maps_to_its_typed_error(aio: AioMode) {
    let img = image_in("/var/tmp", MIB);
    let (b, faults) = open(aio, &img);

    let eio_range = faults
        .add_rule(FaultRule::fail(Some(Op::Write), InjectedError::Eio).in_range(65536..131072));
    let err = b.pwrite(65536 + 100, b"never").unwrap_err();
    assert!(is_errno(&err, Op::Write, libc::EIO), "{err:?}");
    b.pwrite(0, b"fine").expect("outside the range");
    assert_eq!(faults.fired(eio_range), 1);
    let mut raw = [0u8; 5];
    img.as_file().read_exact_at(&mut raw, 65536 + 100).unwrap();
    assert_eq!(raw, [0; 5], "a failed write never reached the file");

    let nospc =
        faults.add_rule(FaultRule::fail(Some(Op::Write), InjectedError::Enospc).every_nth(3));
    let results: Vec<_> = (0..6).map(|i| b.pwrite(4096 * i, b"x")).collect();
    let failed: Vec<bool> = results.iter().map(|r| r.is_err()).collect();
    assert_eq!(failed, [false, false, true, false, false, true]);
    assert!(matches!(
        results[2],
        Err(BlockError::NoSpace {
            op: Op::Write,
            offset: 8192
        })
    ));
    assert_eq!(faults.fired(nospc), 2);
    faults.clear();

    faults.add_rule(FaultRule::fail(Some(Op::Flush), InjectedError::Eio).times(1));
    let err = b.flush().unwrap_err();
    assert!(is_errno(&err, Op::Flush, libc::EIO), "{err:?}");
    b.flush().expect("the rule fired once only");

    faults.add_rule(FaultRule::fail(Some(Op::Read), InjectedError::Eio).in_range(0..512));
    let mut buf = [0u8; 512];
    let err = b.pread(0, &mut buf).unwrap_err();
    assert!(is_errno(&err, Op::Read, libc::EIO), "{err:?}");

    faults.add_rule(FaultRule::fail(Some(Op::Discard), InjectedError::Enospc));
    assert!(matches!(
        b.discard(0, 4096),
        Err(BlockError::NoSpace {
            op: Op::Discard,
            ..
        })
    ));
    faults.clear();

    faults.add_rule(FaultRule::delay(Some(Op::Read), Duration::from_millis(60)));
    let start = Instant::now();
    b.pread(4096, &mut buf)
        .expect("a delayed read still succeeds");
    assert!(start.elapsed() >= Duration::from_millis(60));
    assert_eq!(&buf[..1], b"x");
}

#[test]
fn each_rule_maps_to_its_typed_error_threads() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    each_rule_maps_to_its_typed_error(AioMode::Threads);
}

#[test]
fn each_rule_maps_to_its_typed_error_io_uring() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    each_rule_maps_to_its_typed_error(AioMode::IoUring);
}

/// Many concurrent writes with failures mixed in: every write reported done is in
/// the file; every failed one left its range untouched.
fn reported_writes_are_in_the_file(aio: AioMode) {
    const WRITES: u64 = 256;
    let img = image_in("/var/tmp", WRITES * 4096);
    let (b, faults) = open(aio, &img);
    faults.add_rule(FaultRule::fail(Some(Op::Write), InjectedError::Eio).every_nth(5));
    faults.add_rule(FaultRule::fail(Some(Op::Write), InjectedError::Enospc).every_nth(7));
    faults.add_rule(FaultRule::delay(Some(Op::Write), Duration::from_millis(1)).every_nth(3));
    let ctx = b.context().clone();
    let iothread = IoThread::spawn("faults-io", ctx.clone()).unwrap();
    let outcomes: Arc<Mutex<Vec<(u64, bool)>>> = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    {
        let _g = ctx.acquire();
        for i in 0..WRITES {
            let mut buf = vec![(i % 251 + 1) as u8; 4096];
            let iov = vec![seg(&mut buf, 0, 4096)];
            let (outcomes, done) = (outcomes.clone(), done.clone());
            b.aio_writev(i * 4096, iov, WriteMode::Normal, move |r| {
                drop(buf);
                if let Err(e) = &r {
                    assert!(matches!(
                        e,
                        BlockError::Io { .. } | BlockError::NoSpace { .. }
                    ));
                }
                outcomes.lock().unwrap().push((i, r.is_ok()));
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
    }
    watch(
        &ctx,
        &[("completed writes", &done)],
        || done.load(Ordering::Relaxed) == WRITES,
        Duration::from_secs(5),
        Duration::from_secs(30),
        DumpDepth::Backtraces,
    )
    .unwrap_or_else(|h| panic!("hung: {}", h.report));
    iothread.stop();
    let outcomes = outcomes.lock().unwrap();
    let failures = outcomes.iter().filter(|(_, ok)| !ok).count();
    assert!(failures > 40, "the rules fired ({failures} failures)");
    let file = std::fs::read(img.path()).unwrap();
    for &(i, ok) in outcomes.iter() {
        let block = &file[(i * 4096) as usize..((i + 1) * 4096) as usize];
        let expect = if ok { (i % 251 + 1) as u8 } else { 0 };
        assert!(block.iter().all(|&x| x == expect), "write {i} (ok={ok})");
    }
}

#[test]
fn reported_writes_are_in_the_file_threads() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    reported_writes_are_in_the_file(AioMode::Threads);
}

#[test]
fn reported_writes_are_in_the_file_io_uring() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    reported_writes_are_in_the_file(AioMode::IoUring);
}
