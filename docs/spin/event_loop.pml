/*
 * event_loop.pml -- Promela model of Hangar's AioContext wake-up protocol
 * (event-loop/src/{context,bh,notify,pool}.rs), step by step, in the original
 * hang scenario: an iothread running its loop (waits without the context lock),
 * a vCPU thread doing a nested blocking poll (holding the lock) that waits for
 * thread-pool completions whose BH reschedules itself, a pool worker, and a
 * thread scheduling a BH. Each step's comment names the code it stands for.
 *
 * The vCPU runs one of its jobs inline (pool.rs ThreadPool::run_inline) and
 * schedules the completion BH quietly (Shared::publish_quiet: epoch bump only,
 * no wake-up); then it either polls (poll_while, with its BH-only first pass) or
 * lets the lock go at once, so the release check (ContextGuard::drop ->
 * Shared::release_check) is what has to wake the iothread.
 *
 * Run (event-loop/tests/spin_models.rs does exactly this in CI):
 *   spin -a event_loop.pml
 *   gcc -O0 -DSAFETY -DNOCLAIM -o pan_safety pan.c && ./pan_safety -m100000
 *       -> "errors: 0": no invalid end state (no thread left waiting for a BH)
 *   gcc -O0 -o pan_ltl pan.c && ./pan_ltl -a -m100000
 *       -> "errors: 0": the LTL property `all_work_done` holds (no fairness needed)
 *   The same with `spin -DBUG_A -a event_loop.pml` (failure (a): notify skipped
 *   while "dispatching") and `spin -DBUG_B -a ...` (failure (b): the nested poll
 *   clears the notifier after its scan) and `spin -DBUG_Q -a ...` (the lock holder
 *   lets the lock go after a quiet publish without the release check) and
 *   `spin -DBUG_QW -a ...` (only a worker that delivered lets go without it,
 *   after a callback it ran published quietly): each search
 *   reports errors and writes event_loop.pml.trail; `spin -DBUG_A -t -p
 *   event_loop.pml` replays it.
 *
 * Promela is sequentially consistent: this model checks the interleavings of
 * (a) and (b). Failure (c) (store buffering around the SeqCst fences) is a
 * memory-model question and is checked by loom (tests/loom_notify.rs) and the
 * hardware litmus test (tests/litmus_sb.rs).
 *
 * Not modelled, and why it does not matter here: fd handlers and timers are
 * level-triggered epoll sources (timerfd) that no poller can consume for
 * another; cancel/delete only remove work.
 */

#ifndef VCPU_ROUNDS
#define VCPU_ROUNDS  1    /* nested polls done by the vCPU thread */
#endif
#define JOBS         2    /* pool jobs per nested poll: JOBS-1 go to the worker, one
                             runs inline (two completions can be queued at once, so
                             the completion BH reschedules itself) */
#ifndef SCHED_ROUNDS
#define SCHED_ROUNDS 1    /* BHs scheduled by the scheduler thread */
#endif

/* BH ids */
#define POOL_BH   0       /* the pool's completion BH (pool.rs) */
#define FOLLOWUP  1       /* scheduled by the vCPU's last completion */
#define USER_BH   2       /* scheduled by the scheduler thread */
#define NBH       3

/* notify.rs WakeCore */
byte sleepers = 0;        /* WakeCore::sleepers */
byte epoch = 0;           /* WakeCore::epoch */
/* context.rs Shared */
bool efd = 0;             /* notifier eventfd readable (counter > 0) */
byte dispatching = 0;     /* Shared::dispatching */
bit gen = 0;              /* AioContext::dispatch_gen (mod 2) */
byte owner = 0;           /* RecursiveLock owner: 0 free, 1 iothread, 2 vcpu, 3 worker */
bool unscanned = 0;       /* Shared::unscanned_quiet (only the lock holder touches it) */
/* bh.rs: the SCHEDULED bit (QUEUED folded in: a BH is queued iff scheduled here) */
bool sched[NBH];
byte runs[NBH];
/* pool.rs */
byte jobs = 0;            /* PoolState::queue length */
byte completions = 0;     /* PoolInner::completions length */
byte left = 0;            /* the vCPU's outstanding completions (stress test's `left`) */

byte finished = 0;        /* vCPU and scheduler threads that saw all their work done */

ltl all_work_done { <> (finished == 2) }

/* context.rs Shared::publish_and_wake (caller made work pending first) */
inline publish_and_wake() {
    epoch++;                           /* notify.rs publish: S1 epoch.fetch_add(1, Release) */
                                       /* S2 fence(SeqCst): implicit, Promela is SC */
    if                                 /* S3 let sleepers = sleepers.load(Relaxed) */
    :: sleepers > 0 ->
#ifdef BUG_A
        if                             /* fault (a): "someone is dispatching, it will see it" */
        :: dispatching > 0 -> skip
        :: else -> efd = 1
        fi
#else
        efd = 1                        /* write_notifier: notifier.write(1) */
#endif
    :: else -> skip                    /* sleepers == 0: trace NotifySkipped, no syscall */
    fi
}

/* bh.rs BottomHalf::schedule_quiet (enqueue_as(idle = false, quiet = true)), by
 * the context-lock holder only */
inline schedule_quiet(b, was) {
    atomic {                           /* flags.compare_exchange_weak(old, old|SCHEDULED|QUEUED) */
        was = sched[b];
        sched[b] = 1
    }
    if                                 /* already_urgent => no publish */
    :: was -> skip
    :: else ->                         /* Shared::publish_quiet: */
        unscanned = 1;                 /* unscanned_quiet.store(true) */
        epoch++                        /* core.publish_quiet(): S1 only; no fence, no
                                          sleepers check, no eventfd write */
    fi
}

/* ContextGuard::drop of the outermost guard (held_once_by_me): release_check, then
 * ctx_lock.unlock() */
inline release() {
#ifndef BUG_Q
    if                                 /* release_check: unscanned_quiet.swap(false) */
    :: unscanned -> unscanned = 0; publish_and_wake()
    :: else -> skip
    fi;
#endif
    /* fault Q (BUG_Q): no release check; quiet work stays invisible to sleepers */
    owner = 0                          /* ctx_lock.unlock() */
}

/* bh.rs BottomHalf::enqueue(idle = false) */
inline schedule(b, was) {
    atomic {                           /* flags.compare_exchange_weak(old, old|SCHEDULED|QUEUED) */
        was = sched[b];
        sched[b] = 1
    }
    if                                 /* already_urgent => no publish */
    :: was -> skip
    :: else -> publish_and_wake()
    fi
}

/* pool.rs PoolInner::run_completions, the completion BH's body */
inline run_completions(who, got, more, was) {
    do
    :: atomic {                        /* completions.lock().pop_front(); more = !is_empty() */
           if
           :: completions > 0 -> completions--; got = 1; more = (completions > 0)
           :: else -> got = 0
           fi
       }
       if
       :: got == 0 -> break
       :: else -> skip
       fi;
       if                              /* if more { completion_bh.schedule() } */
       :: more -> schedule(POOL_BH, was)
       :: else -> skip
       fi;
       left--;                         /* done(): the stress test's completion callback */
       if                              /* last one: followup.schedule() */
       :: left == 0 ->
           if
           :: who == 3 -> schedule_quiet(FOLLOWUP, was)  /* run by a delivering worker: a
                                          callback may publish quietly (run_inline); its
                                          release check must then wake the sleepers */
           :: schedule(FOLLOWUP, was)
           fi
       :: else -> skip
       fi;
       if                              /* budget -= 1; while budget > 0: the budget is */
       :: break                        /* the queue length at the start, so any stop */
       :: skip                         /* after a delivered completion may be it */
       fi
    od
}

/* bh.rs dispatch_queue, one BH of the batch taken by take_bh_queue() */
inline dispatch_one(who, bid, queued, torun, got, more, was) {
    if
    :: queued ->
        atomic {                       /* flags.fetch_and(!(SCHEDULED|IDLE|QUEUED)) */
            torun = sched[bid];
            sched[bid] = 0
        }
        if
        :: torun ->                    /* run the callback */
            if
            :: bid == POOL_BH -> run_completions(who, got, more, was)
            :: else -> runs[bid]++     /* counting_bh: runs += 1; waiter.unpark() */
            fi
        :: else -> skip
        fi
    :: else -> skip
    fi;
    torun = 0; got = 0; more = 0; was = 0   /* dead locals (state-space hygiene) */
}

/* context.rs AioContext::dispatch (lock held); who: 1 iothread, 2 the vCPU's
 * nested poll, 3 a worker's delivery pass (also Poller::Nested).
 * fired = 0 for poll_while's BH-only first pass (dispatch(&[], Nested)). */
inline dispatch(who, fired, torun, got, more, was, q0, q1, q2) {
    gen = 1 - gen;                     /* dispatch_gen.fetch_add(1) (mod 2 here) */
#ifdef BUG_B
    if                                 /* fault (b): the nested poll does not clear here... */
    :: who >= 2 -> skip
    :: else -> if :: fired -> efd = 0 :: else -> skip fi
    fi;
#else
    if                                 /* NOTIFIER_TOKEN => clear_notifier(): before the scan */
    :: fired -> efd = 0
    :: else -> skip
    fi;
#endif
    fired = 0;
    dispatching++;                     /* dispatching.fetch_add(1) */
    unscanned = 0;                     /* dispatch_queue: quiet_work_scanned() */
    atomic {                           /* bh.rs dispatch_queue: swap_bh_queue() */
        q0 = sched[0]; q1 = sched[1]; q2 = sched[2]
    }
    dispatch_one(who, 0, q0, torun, got, more, was);
    dispatch_one(who, 1, q1, torun, got, more, was);
    dispatch_one(who, 2, q2, torun, got, more, was);
    q0 = 0; q1 = 0; q2 = 0;
    dispatching--;                     /* dispatching.fetch_sub(1) */
#ifdef BUG_B
    if                                 /* ...it clears after the scan, eating others' wake-ups */
    :: who >= 2 -> efd = 0
    :: else -> skip
    fi
#endif
}

/* context.rs AioContext::prepare_and_wait(blocking = true) */
inline prepare_and_wait(snap, urgent, may_block, fired) {
    snap = epoch;                      /* core.snapshot(): epoch.load(Acquire) */
    atomic {                           /* pending_bhs(): scan under the queue mutex */
        urgent = sched[0] || sched[1] || sched[2]
    }
    if
    :: urgent -> fired = efd           /* timeout 0: epoll_wait(0) */
    :: else ->
        sleepers++;                    /* announce P1: sleepers.fetch_add(1) */
                                       /* announce P2 fence(SeqCst): implicit */
        may_block = (epoch == snap);   /* announce P3: epoch.load() == snapshot */
        if
        :: may_block ->
end_wait:   (efd);                     /* epoll_wait(-1): level-triggered notifier */
            fired = 1
        :: else -> fired = efd         /* epoll_wait(0) */
        fi;
        sleepers--                     /* retire(): sleepers.fetch_sub(1) */
    fi;
    snap = 0; urgent = 0; may_block = 0
}

/* iothread.rs loop: context.rs AioContext::iothread_iteration. After a dispatch
 * that left quiet work, the next passes may skip prepare_and_wait and only run
 * BHs, at most MAX_BH_ONLY_PASSES (8) in a row. Here any normal iteration may be
 * followed by up to BH_ONLY_MAX such passes, whether or not quiet work was left
 * (in this model only the vCPU publishes quietly): a superset of the trigger,
 * with a smaller bound. A pass only takes the lock, dispatches with no events
 * and releases, so more passes in a row add states of the same shape; the bound
 * must stay finite, since the LTL search has no fairness and an unbounded streak
 * is an acceptance cycle (checked once: safety still 0 errors). */
#ifndef BH_ONLY_MAX
#define BH_ONLY_MAX 2
#endif
active proctype IoThread() {
    byte snap, g, torun, got, more, was, q0, q1, q2, passes;
    bool urgent, may_block, fired;
    passes = BH_ONLY_MAX;              /* no pass before the first iteration */
end_loop:
    do
    :: passes < BH_ONLY_MAX ->         /* carry.quiet_left && passes < MAX */
       passes++;
       atomic { owner == 0 -> owner = 1 };                 /* ctx_lock.lock() */
       fired = 0;                      /* no events gathered */
       dispatch(1, fired, torun, got, more, was, q0, q1, q2); /* dispatch_bhs_only */
       release()
    :: g = gen;                        /* let gen = dispatch_gen.load() */
       prepare_and_wait(snap, urgent, may_block, fired);   /* without the lock */
       atomic { owner == 0 -> owner = 1 };                 /* ctx_lock.lock() */
       if                              /* gen changed: events may be stale, re-poll(0) */
       :: g != gen -> fired = efd
       :: else -> skip
       fi;
       dispatch(1, fired, torun, got, more, was, q0, q1, q2);
       g = 0;
       passes = 0;
       release()                       /* _guard dropped (depth 1) */
    od
}

/* pool.rs PoolInner::worker_loop and PoolInner::deliver. With the context lock
 * free, the worker delivers its completion itself: a quiet schedule, one BH-only
 * dispatch as a nested poller, and the release check. Either branch may be taken
 * whenever the lock is free (set_workers_deliver(false) forces the second), a
 * superset of the code; when the lock is busy only the second can. */
active proctype Worker() {
    byte was, torun, got, more, q0, q1, q2;
    bool fired;
end_idle:
    do
    :: atomic { jobs > 0 -> jobs-- };  /* queue.pop_front() */
       completions++;                  /* completions.lock().push_back(..) */
       if
       :: atomic { owner == 0 -> owner = 3 } ->        /* ctx.try_acquire() */
           schedule_quiet(POOL_BH, was);               /* completion_bh.schedule_quiet(&held) */
           fired = 0;
           dispatch(3, fired, torun, got, more, was, q0, q1, q2); /* dispatch_bhs_only(Nested) */
#ifdef BUG_QW
           owner = 0                   /* fault: the worker lets go without the release check */
#else
           release()                                   /* drop(held) */
#endif
       :: schedule(POOL_BH, was)       /* lock busy (or delivery off): completion_bh.schedule() */
       fi
    od
}

/* tests/support: the vCPU thread's nested poll, then waiting for the follow-up */
active proctype Vcpu() {
    byte round = 0, snap, torun, got, more, was, q0, q1, q2;
    bool urgent, may_block, fired;
    do
    :: round < VCPU_ROUNDS ->
        round++;
        atomic { owner == 0 -> owner = 2 };        /* ctx.acquire() */
        left = JOBS;
        if
        :: jobs = jobs + JOBS                      /* thread_pool().submit(..) x JOBS */
        :: jobs = jobs + JOBS - 1;                 /* or submit(..) x (JOBS-1) and */
                                                   /* run_inline(&held, work, done): */
           completions++;                          /*   work() here; completions.push_back */
           schedule_quiet(POOL_BH, was)            /*   completion_bh.schedule_quiet(held) */
        fi;
        if
        :: if                                      /* poll_while(|| left > 0): */
           :: left > 0 ->                          /*   if !cond() { return } */
               if                                  /*   if has_unscanned_quiet_work(): */
               :: unscanned ->                     /*   BH-only first pass dispatch(&[], Nested): */
                   dispatch(2, fired, torun, got, more, was, q0, q1, q2)  /* no epoll_wait, */
               :: else -> skip                     /*   notifier not cleared (fired is 0) */
               fi;
               do                                  /*   while cond() { poll(true) } */
               :: left > 0 ->
                   prepare_and_wait(snap, urgent, may_block, fired);  /* lock held */
                   dispatch(2, fired, torun, got, more, was, q0, q1, q2)
               :: else -> break
               od
           :: else -> skip
           fi
        :: skip                                    /* or let go without polling (a holder
                                                      whose condition was already met):
                                                      any quiet work is still unscanned */
        fi;
        release();                                 /* drop(guard), outermost */
        (runs[FOLLOWUP] >= round)                  /* wait_for(&followups, i) */
    :: else -> break
    od;
    finished++
}

/* tests/support: a scheduler thread */
active proctype Scheduler() {
    byte i = 0, was;
    do
    :: i < SCHED_ROUNDS ->
        i++;
        schedule(USER_BH, was);                    /* bh.schedule() */
        (runs[USER_BH] >= i)                       /* wait_for(&runs, i) */
    :: else -> break
    od;
    finished++
}
