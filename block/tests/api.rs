//! Backend behaviour one request at a time: queries, typed refusals that never reach
//! the file, sync helpers without an iothread, and locking within a process
//! (across processes: tests/lock_process.rs).

mod common;

use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use block::{
    AioMode, BlockBackend, BlockError, BlockOptions, CacheMode, DiscardMode, Op, WriteMode,
    ZeroMode,
};
use common::{image_in, seg};
use event_loop::{AioContext, IoThread};

const MIB: u64 = 1 << 20;

fn opts(aio: AioMode, cache: CacheMode) -> BlockOptions {
    BlockOptions {
        aio,
        cache,
        discard: DiscardMode::Unmap,
        ..Default::default()
    }
}

fn all_modes() -> [BlockOptions; 4] {
    [
        opts(AioMode::Threads, CacheMode::Writeback),
        opts(AioMode::IoUring, CacheMode::Writeback),
        opts(AioMode::Threads, CacheMode::None),
        opts(AioMode::IoUring, CacheMode::None),
    ]
}

#[test]
fn queries_report_geometry_and_discard() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    let img = image_in("/var/tmp", 3 * MIB);
    let ctx = AioContext::new().unwrap();
    for o in all_modes() {
        let b = BlockBackend::open(img.path(), &o, ctx.clone()).unwrap();
        assert_eq!(b.size(), 3 * MIB);
        assert!(b.logical_block_size() >= 512);
        assert!(b.physical_block_size() >= b.logical_block_size());
        assert!(b.supports_discard(), "ext4 supports hole punching");
        assert!(!b.is_readonly());
        drop(b);
    }
    let ignore = BlockOptions::default();
    let b = BlockBackend::open(img.path(), &ignore, ctx).unwrap();
    assert!(
        !b.supports_discard(),
        "discard=ignore advertises no discard"
    );
}

#[test]
fn sync_round_trip_in_every_mode_without_an_iothread() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    let img = image_in("/var/tmp", MIB);
    let ctx = AioContext::new().unwrap();
    for (i, o) in all_modes().into_iter().enumerate() {
        let b = BlockBackend::open(img.path(), &o, ctx.clone()).unwrap();
        let data: Vec<u8> = (0..8192).map(|x| (x * 7 + i) as u8).collect();
        // Offset 4096: aligned for O_DIRECT; the Vec itself is usually not 4 KiB
        // aligned, so cache=none goes through the bounce buffer.
        assert_eq!(b.pwrite(4096, &data).unwrap(), 8192);
        b.flush().unwrap();
        let mut back = vec![0u8; 8192];
        assert_eq!(b.pread(4096, &mut back).unwrap(), 8192);
        assert_eq!(back, data);
        let mut raw = vec![0u8; 8192];
        img.as_file().read_exact_at(&mut raw, 4096).unwrap();
        assert_eq!(raw, data, "the data is in the file");
    }
}

/// Polls `ctx` (lock held) until `rx` delivers a result.
fn wait_result<T>(ctx: &AioContext, rx: &mpsc::Receiver<T>) -> T {
    let _g = ctx.acquire();
    let mut result = None;
    ctx.poll_while(|| {
        result = rx.try_recv().ok();
        result.is_none()
    });
    result.unwrap()
}

#[test]
fn single_buffer_async_requests_round_trip_in_every_mode() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    let img = image_in("/var/tmp", MIB);
    let ctx = AioContext::new().unwrap();
    for (i, o) in all_modes().into_iter().enumerate() {
        let b = BlockBackend::open(img.path(), &o, ctx.clone()).unwrap();
        let mut buf = vec![0u8; 2 * 4096];
        let start = common::aligned_start(&buf, 4096);
        let data: Vec<u8> = (0..4096).map(|x| (x * 13 + i) as u8).collect();
        buf[start..start + 4096].copy_from_slice(&data);
        let (tx, rx) = mpsc::channel();
        let t = tx.clone();
        b.aio_write(8192, seg(&mut buf, start, 4096), WriteMode::Fua, move |r| {
            t.send(r.map_err(|e| e.to_string())).unwrap()
        });
        assert_eq!(wait_result(&ctx, &rx).unwrap(), 4096, "{o:?}");
        let mut raw = vec![0u8; 4096];
        img.as_file().read_exact_at(&mut raw, 8192).unwrap();
        assert_eq!(raw, data, "{o:?}: the data is in the file");
        buf.fill(0);
        b.aio_read(8192, seg(&mut buf, start, 4096), move |r| {
            tx.send(r.map_err(|e| e.to_string())).unwrap()
        });
        assert_eq!(wait_result(&ctx, &rx).unwrap(), 4096, "{o:?}");
        assert_eq!(&buf[start..start + 4096], &data[..], "{o:?}: read back");
    }
}

#[test]
fn writeback_accepts_byte_granular_requests() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    let img = image_in("/var/tmp", 64 * 1024);
    let ctx = AioContext::new().unwrap();
    for aio in [AioMode::Threads, AioMode::IoUring] {
        let b =
            BlockBackend::open(img.path(), &opts(aio, CacheMode::Writeback), ctx.clone()).unwrap();
        b.pwrite(1001, b"odd bytes").unwrap();
        let mut back = [0u8; 9];
        b.pread(1001, &mut back).unwrap();
        assert_eq!(&back, b"odd bytes");
    }
}

fn expect_refused(b: &BlockBackend, img: &tempfile::NamedTempFile) {
    let before = std::fs::read(img.path()).unwrap();
    let size = b.size();
    let mut buf = vec![0x5au8; 8192];
    let err = b.pwrite(size - 4096, &buf).unwrap_err();
    assert!(
        matches!(
            err,
            BlockError::OutOfRange { op: Op::Write, .. } | BlockError::ReadOnly { .. }
        ),
        "{err:?}"
    );
    let err = b.pread(u64::MAX - 10, &mut buf).unwrap_err();
    assert!(
        matches!(err, BlockError::OutOfRange { op: Op::Read, .. }),
        "{err:?}"
    );
    let err = b.discard(size, 4096).unwrap_err();
    assert!(
        matches!(
            err,
            BlockError::OutOfRange { .. } | BlockError::ReadOnly { .. }
        ),
        "{err:?}"
    );
    assert_eq!(std::fs::read(img.path()).unwrap(), before, "file untouched");
}

#[test]
fn beyond_end_requests_fail_typed_and_never_reach_the_file() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    let img = image_in("/var/tmp", MIB);
    let ctx = AioContext::new().unwrap();
    for o in all_modes() {
        let b = BlockBackend::open(img.path(), &o, ctx.clone()).unwrap();
        expect_refused(&b, &img);
    }
}

#[test]
fn readonly_refuses_every_modification() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    let img = image_in("/var/tmp", MIB);
    img.as_file().write_all_at(b"keep", 0).unwrap();
    let ctx = AioContext::new().unwrap();
    let o = BlockOptions {
        readonly: true,
        ..opts(AioMode::IoUring, CacheMode::Writeback)
    };
    let b = BlockBackend::open(img.path(), &o, ctx).unwrap();
    assert!(b.is_readonly());
    assert!(matches!(
        b.pwrite(0, b"lost"),
        Err(BlockError::ReadOnly { op: Op::Write })
    ));
    assert!(matches!(
        b.pwrite_fua(0, b"lost"),
        Err(BlockError::ReadOnly { op: Op::Write })
    ));
    assert!(matches!(
        b.discard(0, 4096),
        Err(BlockError::ReadOnly { op: Op::Discard })
    ));
    assert!(matches!(
        b.write_zeroes(0, 4096, ZeroMode::Allocate),
        Err(BlockError::ReadOnly {
            op: Op::WriteZeroes
        })
    ));
    b.flush().expect("flush of a read-only image is harmless");
    let mut back = [0u8; 4];
    b.pread(0, &mut back).unwrap();
    assert_eq!(&back, b"keep");
}

#[test]
fn misaligned_direct_requests_fail_typed_and_never_reach_the_file() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    let img = image_in("/var/tmp", MIB);
    let ctx = AioContext::new().unwrap();
    for aio in [AioMode::Threads, AioMode::IoUring] {
        let b = BlockBackend::open(img.path(), &opts(aio, CacheMode::None), ctx.clone()).unwrap();
        let align = b.request_alignment();
        assert!(align >= 512);
        let before = std::fs::read(img.path()).unwrap();
        let err = b.pwrite(1, &vec![1u8; align as usize]).unwrap_err();
        assert!(
            matches!(
                err,
                BlockError::Misaligned {
                    op: Op::Write,
                    offset: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = b.pwrite(0, &[1u8; 100]).unwrap_err();
        assert!(
            matches!(err, BlockError::Misaligned { len: 100, .. }),
            "{err:?}"
        );
        let mut buf = [0u8; 100];
        assert!(matches!(
            b.pread(0, &mut buf),
            Err(BlockError::Misaligned { op: Op::Read, .. })
        ));
        assert_eq!(std::fs::read(img.path()).unwrap(), before);
    }
}

#[test]
fn too_many_segments_is_refused() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    let img = image_in("/var/tmp", MIB);
    let ctx = AioContext::new().unwrap();
    let b = BlockBackend::open(img.path(), &BlockOptions::default(), ctx.clone()).unwrap();
    let mut buf = vec![0u8; block::MAX_SEGMENTS + 1];
    let iov: Vec<_> = (0..buf.len()).map(|i| seg(&mut buf, i, 1)).collect();
    let (tx, rx) = mpsc::channel();
    b.aio_writev(0, iov, WriteMode::Normal, move |r| tx.send(r).unwrap());
    assert!(matches!(
        wait_result(&ctx, &rx),
        Err(BlockError::TooManySegments {
            count: 1025,
            max: 1024,
            ..
        })
    ));
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeroes() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    let img = image_in("/var/tmp", MIB);
    let ctx = AioContext::new().unwrap();
    for o in all_modes() {
        let b = BlockBackend::open(img.path(), &o, ctx.clone()).unwrap();
        b.pwrite(0, &vec![0xabu8; 65536]).unwrap();
        assert_eq!(b.discard(4096, 8192).unwrap(), 8192);
        assert_eq!(
            b.write_zeroes(32768, 4096, ZeroMode::Allocate).unwrap(),
            4096
        );
        assert_eq!(
            b.write_zeroes(40960, 4096, ZeroMode::MayUnmap).unwrap(),
            4096
        );
        let mut back = vec![0u8; 65536];
        b.pread(0, &mut back).unwrap();
        for (i, &x) in back.iter().enumerate() {
            let zero = (4096..12288).contains(&i)
                || (32768..36864).contains(&i)
                || (40960..45056).contains(&i);
            assert_eq!(x, if zero { 0 } else { 0xab }, "byte {i} in {o:?}");
        }
    }
}

#[test]
fn discard_ignore_leaves_data_alone() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    let img = image_in("/var/tmp", MIB);
    let ctx = AioContext::new().unwrap();
    let b = BlockBackend::open(img.path(), &BlockOptions::default(), ctx).unwrap();
    b.pwrite(0, &[7u8; 4096]).unwrap();
    assert_eq!(b.discard(0, 4096).unwrap(), 4096);
    let mut back = [0u8; 4096];
    b.pread(0, &mut back).unwrap();
    assert!(back.iter().all(|&x| x == 7));
}

/// Completions run on the context with its lock held: on the iothread, or on
/// the pool worker that did the I/O when it found the lock free (aio=threads),
/// never inside the submitting call.
#[test]
fn async_completions_run_on_the_context_with_its_lock() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    let img = image_in("/var/tmp", MIB);
    let ctx = AioContext::new().unwrap();
    let iothread = IoThread::spawn("blk-test-io", ctx.clone()).unwrap();
    for o in all_modes() {
        let b = Arc::new(BlockBackend::open(img.path(), &o, ctx.clone()).unwrap());
        let (tx, rx) = mpsc::channel();
        let mut buf = vec![0u8; 3 * 4096];
        let start = common::aligned_start(&buf, 4096);
        buf.resize(start + 8192, 0);
        buf[start..].fill(0x42);
        let iov = vec![
            seg(&mut buf, start, 4096),
            seg(&mut buf, start + 4096, 4096),
        ];
        let c = ctx.clone();
        b.aio_writev(8192, iov, WriteMode::Fua, move |r| {
            let name = std::thread::current().name().map(str::to_string);
            let held = c.is_held_by_current_thread();
            tx.send((r.map_err(|e| e.to_string()), name, held, buf))
                .unwrap();
        });
        let (r, thread, held, _buf) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("completion");
        assert_eq!(r.unwrap(), 8192);
        assert!(held, "{o:?}: completion without the context lock");
        let thread = thread.unwrap_or_default();
        match o.aio {
            AioMode::IoUring => assert_eq!(thread, "blk-test-io", "{o:?}"),
            AioMode::Threads => assert!(
                thread == "blk-test-io" || thread == "pool-worker",
                "{o:?}: completion on {thread}"
            ),
        }
        let mut raw = vec![0u8; 8192];
        img.as_file().read_exact_at(&mut raw, 8192).unwrap();
        assert!(raw.iter().all(|&x| x == 0x42));
        assert_eq!(b.in_flight(), 0);
    }
    iothread.stop();
}

#[test]
fn second_opener_is_refused_while_first_holds_the_image() {
    let _wd = common::deadline(std::time::Duration::from_secs(30));
    let img = image_in("/var/tmp", MIB);
    let ctx = AioContext::new().unwrap();
    let first = BlockBackend::open(img.path(), &BlockOptions::default(), ctx.clone()).unwrap();
    let err = BlockBackend::open(img.path(), &BlockOptions::default(), ctx.clone()).err();
    assert!(matches!(err, Some(BlockError::Locked { .. })), "{err:?}");
    let ro = BlockOptions {
        readonly: true,
        ..Default::default()
    };
    assert!(matches!(
        BlockBackend::open(img.path(), &ro, ctx.clone()),
        Err(BlockError::Locked { .. })
    ));
    drop(first);
    let _r1 = BlockBackend::open(img.path(), &ro, ctx.clone()).unwrap();
    let _r2 = BlockBackend::open(img.path(), &ro, ctx).expect("readers share");
}

/// An io_uring backend dropped while the iothread busy-polls its completion queue
/// releases the image at once: the readiness check, which the spinning iothread
/// may be running at that moment, holds only the ring, never the file.
#[test]
fn an_image_dropped_under_a_spinning_iothread_reopens_at_once() {
    let _wd = common::deadline(std::time::Duration::from_secs(60));
    let img = image_in("/dev/shm", MIB);
    let ctx = AioContext::new().unwrap();
    let iothread = IoThread::spawn("reopen-spin", ctx.clone()).unwrap();
    let options = opts(AioMode::IoUring, CacheMode::Writeback);
    let mut buf = vec![0u8; 8 * 4096];
    for round in 0..200 {
        let backend = BlockBackend::open(img.path(), &options, ctx.clone())
            .unwrap_or_else(|e| panic!("round {round}: reopen refused: {e}"));
        // Async reads complete on the iothread and keep its window open.
        let (tx, rx) = mpsc::channel();
        for i in 0..8u64 {
            let tx = tx.clone();
            let iov = seg(&mut buf, i as usize * 4096, 4096);
            backend.aio_readv(i * 4096, vec![iov], move |r| {
                tx.send(r.map(|_| ())).unwrap();
            });
        }
        for _ in 0..8 {
            rx.recv().unwrap().unwrap();
        }
        drop(backend);
    }
    iothread.stop();
}

/// The synchronous helpers of aio=threads run their request on the waiting thread
/// and collect the completion in their own nested poll: no pool worker is started
/// and the idle iothread sleeping on the same context is never woken (no eventfd
/// write). The data still reaches the file.
#[test]
fn sync_writes_run_inline_without_waking_the_iothread() {
    let img = image_in("/var/tmp", MIB);
    let path = img.path();
    let ctx = AioContext::new().unwrap();
    let options = opts(AioMode::Threads, CacheMode::Writeback);
    let backend = BlockBackend::open(path, &options, ctx.clone()).unwrap();
    let iothread = IoThread::spawn("test-idle-io", ctx.clone()).unwrap();
    // Let the iothread reach its wait, announced as a sleeper.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ctx.sleepers() == 0 {
        assert!(std::time::Instant::now() < deadline, "iothread never slept");
        std::thread::sleep(Duration::from_millis(1));
    }
    let writes_before = ctx.eventfd_writes();
    for i in 0..200u64 {
        let buf = [i as u8; 4096];
        assert_eq!(backend.pwrite(i * 4096, &buf).unwrap(), 4096);
    }
    backend.flush().unwrap();
    assert_eq!(
        ctx.eventfd_writes(),
        writes_before,
        "a synchronous request woke the iothread"
    );
    assert_eq!(ctx.thread_pool().workers(), 0, "a pool worker was started");
    let file = std::fs::File::open(path).unwrap();
    let mut got = [0u8; 4096];
    for i in [0u64, 77, 199] {
        file.read_exact_at(&mut got, i * 4096).unwrap();
        assert!(
            got.iter().all(|&b| b == i as u8),
            "block {i} not in the file"
        );
    }
    iothread.stop();
}

/// A completion callback may make a synchronous request, also one that fails its
/// checks and so completes through the same pool completion BH that is running
/// the callback: the nested wait must get its error, not spin.
#[test]
fn a_failed_requests_callback_may_wait_for_another_failed_request() {
    let img = image_in("/var/tmp", MIB);
    let ctx = AioContext::new().unwrap();
    let options = opts(AioMode::Threads, CacheMode::Writeback);
    let backend = Arc::new(BlockBackend::open(img.path(), &options, ctx.clone()).unwrap());
    let (tx, rx) = mpsc::channel();
    let inner = Arc::clone(&backend);
    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&answered);
    // Beyond the end: refused before the file, completed through the pool's completion BH.
    backend.aio_readv(2 * MIB, Vec::new(), move |outer| {
        let nested = inner.pwrite(2 * MIB, &[0u8; 512]);
        let _ = tx.send((outer.is_err(), nested.is_err()));
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let c = ctx.clone();
    // The poller gives up after a while so that a failure ends the test.
    std::thread::spawn(move || {
        let _g = c.acquire();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !answered.load(std::sync::atomic::Ordering::SeqCst)
            && std::time::Instant::now() < deadline
        {
            c.poll(false);
        }
    });
    let got = rx.recv_timeout(Duration::from_secs(5));
    assert_eq!(
        got,
        Ok((true, true)),
        "nested synchronous request never completed"
    );
}

/// Two requests refused by their checks (beyond the end) wait in the same
/// pool completion batch; the first one's callback waits for the second.
fn refused_callback_waits_for_sibling(in_callback: fn(&mut Option<Arc<BlockBackend>>)) {
    callback_waits_for_siblings(
        "/var/tmp",
        Siblings {
            count: 2,
            waiter: 0,
            refused: true,
        },
        in_callback,
    );
}

/// A refused request's callback drains the backend while a sibling refused
/// request waits behind it in the same batch.
#[test]
fn a_refused_requests_callback_may_drain_the_backend() {
    refused_callback_waits_for_sibling(|b| b.as_ref().expect("backend").drain());
}

/// A refused request's callback drops the backend's last reference (whose drop
/// waits for the requests in flight) while a sibling waits behind it.
#[test]
fn a_refused_requests_callback_may_drop_the_backend() {
    refused_callback_waits_for_sibling(|b| drop(b.take()));
}

/// aio=threads on a memory-backed file (tmpfs): small async writes that a
/// context-lock holder submits in one go run on the submitter while they are
/// few; from four on, a worker's copier job takes part of them. Every
/// callback still runs later, from the holder's poll, never inside `submit`. A
/// request above the inline limit, and any request on a disk file, goes to a
/// worker.
#[test]
fn memory_backed_small_requests_run_on_the_submitter() {
    let _wd = common::deadline(Duration::from_secs(30));
    assert_eq!(
        write_batch("/dev/shm", 3, 4096),
        0,
        "tmpfs, 3 writes: all inline"
    );
    assert_eq!(
        write_batch("/dev/shm", 64, 4096),
        1,
        "tmpfs, 64 writes: one copier job"
    );
    assert_eq!(
        write_batch("/dev/shm", 1, MIB as usize),
        1,
        "tmpfs, 1 MiB: a worker"
    );
    assert!(write_batch("/var/tmp", 3, 4096) >= 1, "disk: workers");
}

/// With two tmpfs disks on one context, the first small request of a dispatch
/// runs inline on each of them (the count is per backend); a second one on the
/// same disk waits for the dispatch's end.
#[test]
fn the_first_small_request_of_a_dispatch_runs_inline_on_each_disk() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let _wd = common::deadline(Duration::from_secs(30));
    let imgs = [image_in("/dev/shm", MIB), image_in("/dev/shm", MIB)];
    let ctx = AioContext::new().unwrap();
    let options = opts(AioMode::Threads, CacheMode::Writeback);
    let disks: Vec<BlockBackend> = imgs
        .iter()
        .map(|img| BlockBackend::open(img.path(), &options, ctx.clone()).unwrap())
        .collect();
    let mut bufs = [vec![0xa1u8; 4096], vec![0xb2u8; 4096], vec![0xc3u8; 4096]];
    let done = Arc::new(AtomicUsize::new(0));
    let first_byte = |i: usize, offset: u64| {
        let mut b = [0u8; 1];
        std::fs::File::open(imgs[i].path())
            .unwrap()
            .read_exact_at(&mut b, offset)
            .unwrap();
        b[0]
    };
    let _lock = ctx.acquire();
    // One dispatch: disk 0, disk 1, disk 0 again.
    for (n, (disk, offset)) in [(0usize, 0u64), (1, 0), (0, 4096)].into_iter().enumerate() {
        let d = done.clone();
        let iov = seg(&mut bufs[n], 0, 4096);
        disks[disk].aio_writev(offset, vec![iov], WriteMode::Normal, move |r| {
            r.unwrap();
            d.fetch_add(1, Ordering::AcqRel);
        });
    }
    assert_eq!(
        first_byte(0, 0),
        0xa1,
        "disk 0's first write did not run inline"
    );
    assert_eq!(
        first_byte(1, 0),
        0xb2,
        "disk 1's first write did not run inline"
    );
    assert_eq!(
        first_byte(0, 4096),
        0,
        "disk 0's second write ran before the dispatch's end"
    );
    ctx.poll_while(|| done.load(Ordering::Acquire) < 3);
    assert_eq!(first_byte(0, 4096), 0xc3);
}

/// Submits `count` writes of `len` bytes under the lock on a fresh context,
/// polls until all completed, checks the file, and returns the pool workers
/// started.
fn write_batch(dir: &str, count: usize, len: usize) -> usize {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let img = image_in(dir, 4 * MIB);
    let ctx = AioContext::new().unwrap();
    let options = opts(AioMode::Threads, CacheMode::Writeback);
    let b = BlockBackend::open(img.path(), &options, ctx.clone()).unwrap();
    let completed = Arc::new(AtomicUsize::new(0));
    let in_submit = Arc::new(AtomicBool::new(false));
    let mut bufs: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8 + 1; len]).collect();
    {
        let _g = ctx.acquire();
        for (i, buf) in bufs.iter_mut().enumerate() {
            let iov = vec![seg(buf, 0, len)];
            let (done, nested) = (Arc::clone(&completed), Arc::clone(&in_submit));
            in_submit.store(true, Ordering::SeqCst);
            b.aio_writev((i * len) as u64, iov, WriteMode::Normal, move |r| {
                assert!(!nested.load(Ordering::SeqCst), "callback ran inside submit");
                assert_eq!(r.unwrap(), len);
                done.fetch_add(1, Ordering::SeqCst);
            });
            in_submit.store(false, Ordering::SeqCst);
        }
        ctx.poll_while(|| completed.load(Ordering::SeqCst) < count);
    }
    for i in [0, count / 2, count - 1] {
        let mut got = vec![0u8; len];
        img.as_file()
            .read_exact_at(&mut got, (i * len) as u64)
            .unwrap();
        assert!(got.iter().all(|&x| x == i as u8 + 1), "{dir}: write {i}");
    }
    drop(bufs);
    ctx.thread_pool().workers()
}

/// A lock holder that submits small tmpfs reads inline and lets the lock go
/// without polling: the completions it queued quietly must not stay stranded;
/// the release wakes the sleeping iothread, which runs them. With the release
/// check switched off (fault q) they do stay stranded: the control shows the test
/// can see the failure.
#[test]
fn inline_requests_left_unpolled_complete_on_the_iothread() {
    let (done, on_iothread, workers) = inline_reads_then_release(3, false, Duration::from_secs(10));
    assert_eq!(done, 3, "stranded completions");
    assert_eq!(on_iothread, 3);
    assert_eq!(workers, 0, "reads went to a worker");
    let (stranded_done, _, _) = inline_reads_then_release(3, true, Duration::from_millis(300));
    assert_eq!(
        stranded_done, 0,
        "control: without the release check nothing wakes the iothread"
    );
}

/// The same with 8 reads, enough for the share step: the plugged seven wait for
/// the share BH, scheduled quietly, which the woken iothread runs; it starts
/// a copier on a worker, which it leaves the oldest of them. All complete; with fault (q) none does.
#[test]
fn a_shared_batch_left_unpolled_completes() {
    let (done, _, workers) = inline_reads_then_release(8, false, Duration::from_secs(10));
    assert_eq!(done, 8, "stranded completions");
    assert!(workers >= 1, "the share step gave no job to a worker");
    let (stranded_done, _, _) = inline_reads_then_release(8, true, Duration::from_millis(300));
    assert_eq!(
        stranded_done, 0,
        "control: without the release check nothing wakes the iothread"
    );
}

/// Submits `count` small reads under the lock with the iothread asleep, lets the
/// lock go, and counts the completions within `window`: (completed, of those on
/// the iothread, pool workers started). Then stops the iothread and drops the
/// backend, whose drop runs whatever is still stranded, before the buffers go.
fn inline_reads_then_release(
    count: usize,
    fault_q: bool,
    window: Duration,
) -> (usize, usize, usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let _wd = common::deadline(Duration::from_secs(30));
    let img = image_in("/dev/shm", MIB);
    img.as_file().write_all_at(&[0x3c; 4096], 0).unwrap();
    let ctx = AioContext::new().unwrap();
    let options = opts(AioMode::Threads, CacheMode::Writeback);
    let b = BlockBackend::open(img.path(), &options, ctx.clone()).unwrap();
    let iothread = IoThread::spawn("blk-inline-io", ctx.clone()).unwrap();
    let asleep_by = std::time::Instant::now() + Duration::from_secs(5);
    while ctx.sleepers() == 0 {
        assert!(
            std::time::Instant::now() < asleep_by,
            "iothread never slept"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    ctx.set_fault(event_loop::Fault::QuietReleaseSkipsWake, fault_q);
    let good = Arc::new(AtomicUsize::new(0));
    let on_iothread = Arc::new(AtomicUsize::new(0));
    // With three, one runs at once and two wait for the dispatch's end (too few
    // to share with a worker), so everything stays on the submitter and the
    // iothread; from four on the share step starts a copier on a worker.
    let mut bufs: Vec<Vec<u8>> = (0..count).map(|_| vec![0u8; 4096]).collect();
    {
        let _g = ctx.acquire();
        for buf in bufs.iter_mut() {
            let iov = vec![seg(buf, 0, 4096)];
            let (good, on_io) = (Arc::clone(&good), Arc::clone(&on_iothread));
            let ptr = buf.as_ptr() as usize;
            b.aio_readv(0, iov, move |r| {
                assert_eq!(r.unwrap(), 4096);
                // SAFETY: the buffer lives until every completion ran (the
                // iothread is stopped, running what is left, before `bufs` goes).
                let data = unsafe { std::slice::from_raw_parts(ptr as *const u8, 4096) };
                if data.iter().all(|&x| x == 0x3c) {
                    good.fetch_add(1, Ordering::SeqCst);
                }
                if std::thread::current().name() == Some("blk-inline-io") {
                    on_io.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        assert_eq!(
            good.load(Ordering::SeqCst),
            0,
            "a callback ran inside submit"
        );
    }
    let deadline = std::time::Instant::now() + window;
    while good.load(Ordering::SeqCst) < count && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let result = (
        good.load(Ordering::SeqCst),
        on_iothread.load(Ordering::SeqCst),
        ctx.thread_pool().workers(),
    );
    ctx.set_fault(event_loop::Fault::QuietReleaseSkipsWake, false);
    iothread.stop();
    // Dropping the backend polls until nothing of it is in flight: stranded
    // completions are late, never lost.
    drop(b);
    assert_eq!(good.load(Ordering::SeqCst), count, "a completion was lost");
    drop(bufs);
    result
}

/// Which requests `callback_waits_for_siblings` submits.
struct Siblings {
    count: usize,
    /// The request whose callback runs `in_callback`.
    waiter: usize,
    /// Beyond the end (refused, completed through the pool's completion BH), or 4 KiB reads.
    refused: bool,
}

/// Submits `which.count` reads under the lock and lets request `which.waiter`'s
/// callback run `in_callback`, which waits for the backend's other requests
/// (draining it, or dropping its last reference). Those must stay deliverable
/// from the nested poll: fails (instead of hanging) after 5 s.
fn callback_waits_for_siblings(
    dir: &str,
    which: Siblings,
    in_callback: fn(&mut Option<Arc<BlockBackend>>),
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let img = image_in(dir, 4 * MIB);
    let (tx, rx) = mpsc::channel();
    let completed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&completed);
    let path = img.path().to_path_buf();
    let Siblings {
        count,
        waiter,
        refused,
    } = which;
    std::thread::spawn(move || {
        let ctx = AioContext::new().unwrap();
        let options = opts(AioMode::Threads, CacheMode::Writeback);
        let b = Arc::new(BlockBackend::open(&path, &options, ctx.clone()).unwrap());
        let slot: Arc<Mutex<Option<Arc<BlockBackend>>>> = Arc::new(Mutex::new(None));
        {
            let _g = ctx.acquire();
            for i in 0..count {
                let (done, slot) = (Arc::clone(&counter), Arc::clone(&slot));
                let callback = move |r: block::IoResult| {
                    assert_eq!(r.is_err(), refused, "request {i}: {r:?}");
                    done.fetch_add(1, Ordering::SeqCst);
                    if i == waiter {
                        let mut held = slot.lock().unwrap().take();
                        in_callback(&mut held);
                    }
                };
                if refused {
                    b.aio_readv(8 * MIB, Vec::new(), callback);
                } else {
                    // Leaked: the buffers must outlive a test that may have failed.
                    let buf: &'static mut [u8] = Box::leak(vec![0u8; 4096].into_boxed_slice());
                    b.aio_readv((i * 4096) as u64, vec![seg(buf, 0, 4096)], callback);
                }
            }
            *slot.lock().unwrap() = Some(b);
            ctx.poll_while(|| counter.load(Ordering::SeqCst) < count);
        }
        tx.send(()).unwrap();
    });
    let r = rx.recv_timeout(Duration::from_secs(5));
    assert!(
        r.is_ok(),
        "hang: {} of {count} completed",
        completed.load(std::sync::atomic::Ordering::SeqCst)
    );
}

/// 8 small tmpfs reads (one runs at once, seven are plugged; the share step
/// starts a copier, which takes the oldest, and leaves it the last 16, here
/// all of them); request 1, the oldest plugged and so the copier's, waits for the
/// others.
fn shared_batch_callback_waits_for_siblings(in_callback: fn(&mut Option<Arc<BlockBackend>>)) {
    callback_waits_for_siblings(
        "/dev/shm",
        Siblings {
            count: 8,
            waiter: 1,
            refused: false,
        },
        in_callback,
    );
}

/// A callback in the copier's part of a shared batch drains the backend.
#[test]
fn a_shared_batch_callback_may_drain_the_backend() {
    shared_batch_callback_waits_for_siblings(|b| b.as_ref().expect("backend").drain());
}

/// A callback in the copier's part of a shared batch drops the last reference
/// to the backend, whose drop waits for every request in flight.
#[test]
fn a_shared_batch_callback_may_drop_the_backend() {
    shared_batch_callback_waits_for_siblings(|b| drop(b.take()));
}

/// A steady deep load on tmpfs keeps the copier busy, yet with the pool
/// capped at one worker another job (a discard) still runs soon: the copier
/// hands over to a new job behind it after a bounded turn. The end-to-end
/// property; the unit test `a_copier_hands_over_after_its_turn` pins the
/// mechanism (here the copier's queue also empties now and then, which lets
/// the discard through even without the turn).
#[test]
fn a_busy_copier_lets_other_pool_jobs_run() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Instant;
    const DEPTH: usize = 32;
    let _wd = common::deadline(Duration::from_secs(30));
    let img = image_in("/dev/shm", 4 * MIB);
    let ctx = AioContext::new().unwrap();
    ctx.thread_pool().set_max_workers(1);
    let options = BlockOptions {
        discard: block::DiscardMode::Unmap,
        ..opts(AioMode::Threads, CacheMode::Writeback)
    };
    let b = Arc::new(BlockBackend::open(img.path(), &options, ctx.clone()).unwrap());
    struct Load {
        b: Arc<BlockBackend>,
        bufs: Vec<std::sync::Mutex<Vec<u8>>>,
        stop: AtomicBool,
        done: AtomicU64,
        live: AtomicU64,
    }
    fn issue(load: &Arc<Load>, slot: usize) {
        if load.stop.load(Ordering::SeqCst) {
            load.live.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let mut buf = load.bufs[slot].lock().unwrap();
        let iov = seg(&mut buf, 0, 4096);
        let me = Arc::clone(load);
        let offset = (slot as u64 % 1024) * 4096;
        load.b.aio_read(offset, iov, move |r| {
            assert_eq!(r.unwrap(), 4096);
            me.done.fetch_add(1, Ordering::SeqCst);
            issue(&me, slot);
        });
    }
    let load = Arc::new(Load {
        b: Arc::clone(&b),
        bufs: (0..DEPTH)
            .map(|_| std::sync::Mutex::new(vec![0u8; 4096]))
            .collect(),
        stop: AtomicBool::new(false),
        done: AtomicU64::new(0),
        live: AtomicU64::new(DEPTH as u64),
    });
    let iothread = IoThread::spawn("blk-copier-load", ctx.clone()).unwrap();
    {
        let _g = ctx.acquire();
        for slot in 0..DEPTH {
            issue(&load, slot);
        }
    }
    // Well into the load: the copier is running.
    while load.done.load(Ordering::SeqCst) < 20_000 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let discarded = Arc::new(AtomicBool::new(false));
    let d = Arc::clone(&discarded);
    let before = load.done.load(Ordering::SeqCst);
    let asked = Instant::now();
    {
        let _g = ctx.acquire();
        b.aio_discard(0, 4096, move |r| {
            r.unwrap();
            d.store(true, Ordering::SeqCst);
        });
    }
    while !discarded.load(Ordering::SeqCst) && asked.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let during = load.done.load(Ordering::SeqCst) - before;
    load.stop.store(true, Ordering::SeqCst);
    while load.live.load(Ordering::SeqCst) > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    iothread.stop();
    assert!(
        discarded.load(Ordering::SeqCst),
        "the discard starved behind the copier ({during} reads ran meanwhile)"
    );
}
