/*
 * llama-shm: the three-semaphore cycle between one client and one worker process, with
 * process death. One file, two variants (see README.md for the commands and results):
 *
 *   spin -a protocol.pml          the project: what crates/llama-shm does today. Every client
 *                                 wait has a deadline and a liveness check (the pidfd watcher
 *                                 wakes it when the worker dies); the worker's idle wait ends
 *                                 on a post or on `stop` (control socket hang-up, SIGTERM).
 *   spin -DSEED -a protocol.pml   the seed: plain sem_wait on every semaphore, no deadline,
 *                                 no liveness check, no watchers.
 *
 * Further switches (all optional):
 *   -DNODEADLINE  project without any deadline (request timeout and shutdown timeout
 *                 infinite): shows that death detection alone, not the deadlines, ends every
 *                 wait on a dead peer.
 *   -DNO_DRAIN    project with client_acquire as of commit 3dd5191: no drain of stale
 *                 `response_written` posts (and so no re-check after it).
 *   -DNO_SIGTERM  no SIGINT/SIGTERM to the worker.
 *   -DNO_WORKER_FAULT / -DNO_CLIENT_FAULT / -DNOFAULTS
 *                 only the client / only the worker / nobody may die (sanity: the seed
 *                 variant passes with -DNOFAULTS; each kind of death alone hangs it).
 *   -DNREQ=n      requests before shutdown (default 2).
 * Mutants (ci/spin.sh checks what each one does):
 *   -DMUTANT_NO_SLICE_ALIVE  wait_for without the alive() check at slice boundaries: only
 *                 the pidfd watcher's posts wake the client. With -DNODEADLINE this still
 *                 passes: the watcher alone ends every client wait on a dead worker.
 *   -DMUTANT_NO_RECHECK      client_acquire drains without re-checking alive() afterwards:
 *                 the drain can swallow the watcher's wake-up (with -DNODEADLINE
 *                 -DMUTANT_NO_SLICE_ALIVE the client then hangs).
 *   -DMUTANT_NO_HANGUP       the worker's stop watcher does not watch the control socket.
 *
 * Abstractions (argued in README.md):
 *  - Time is not modelled. A deadline is a branch that is always available in a wait's `if`;
 *    a wait that loops over slices (protocol/ wait_for, Channel::worker_wait) is one
 *    blocking `if` whose guards are the things a slice boundary re-checks (`alive()`,
 *    `stop()`), which is equivalent up to stuttering.
 *  - Field contents are not modelled, only the words the protocol branches on:
 *    request_seq, response_seq, shutdown_requested. The token always matches (one client,
 *    the spawning one). Prompt and response bytes are "ghost windows" (c_writing, w_taking,
 *    w_writing, c_reading) that the Monitor checks never overlap (no data race on them).
 *  - Death: a Fault process may, at any moment, kill the worker (SIGKILL, OOM, abort) and
 *    another the client. The victim's body is wrapped in `unless { killed }`, so from that
 *    moment on it runs no further step (the escape has priority over every statement,
 *    blocked or not) and is then gone for good. The worker's death makes its pidfd readable:
 *    the client's watcher thread (PidfdWatcher) fires. The client's death (or normal exit)
 *    closes the control socket: the worker's stop watcher (StopWatcher) fires.
 *  - The engine is one step; its outcome (Ok, error status, ShuttingDown after a cancel) is
 *    all "a response" to the protocol.
 *  - Only the spawned, extended-mode client is modelled (ClientBuilder::spawn), not attach()
 *    to a standalone worker nor Mode::Seed.
 */

#ifndef NREQ
#define NREQ 2
#endif

/* The deadline branch of a wait: always available unless -DNODEADLINE. */
#ifdef NODEADLINE
#define DEADLINE false
#else
#define DEADLINE true
#endif

/* Results of protocol/ wait_for / Channel::client_acquire / Channel::client_await. */
#define OK        0
#define GONE      1   /* WaitError::PeerGone */
#define TIMEDOUT  2   /* WaitError::TimedOut */

/* Ghost: where the client's current request is (for the LTL property). */
#define R_NONE     0
#define R_OPEN     1   /* Client::send_request entered */
#define R_ANSWERED 2   /* send_request returns the worker's response (Ok or a status error) */
#define R_ERRORED  3   /* send_request returns Timeout / WorkerDied / Closed */
byte req = R_NONE;

/* The three named semaphores, counting, initial 0 (objects/ PosixChannel, os/sem.rs). */
byte ready = 0;
byte prompts_written = 0;
byte response_written = 0;

/* The shared words the protocol branches on. */
byte request_seq = 0;     /* extension page: request_seq (client), zeroed by worker_ready */
byte response_seq = 0;    /* extension page: response_seq (worker), stored last */
bool shutdown_flag = 0;   /* seed field shutdown_requested (byte 40960) */

/* Processes, as the kernel sees them. */
bool wkill = 0;   /* the worker was killed: it runs no further step */
bool wgone = 0;   /* the worker process has ended (any cause): its pidfd is readable */
bool ckill = 0;   /* the client was killed */
bool sigterm = 0; /* SIGINT/SIGTERM was sent to the worker (project variant) */
bool cgone = 0;   /* the client process has ended: the control socket has hung up */

#ifndef SEED
bool dead = 0;    /* client/ Client::dead, set by the pidfd watcher */
bool stop = 0;    /* llama-shm worker/host.rs run: the stop flag */
bool cancel = 0;  /* worker/engine.rs Cancel, set with stop */
#define W_IDLE    0
#define W_FIRED   1
#define W_STOPPED 2
byte wst = W_IDLE;   /* the client's pidfd Watcher: waiting, fired, or dropped */
#endif

/* Ghost windows on the bulk fields (prompts, response). */
bool c_writing = 0;   /* client writes the request fields (client_write / request_shutdown) */
bool w_taking = 0;    /* worker reads them (worker_take) */
bool w_writing = 0;   /* worker writes the response fields (worker_respond) */
bool c_reading = 0;   /* client reads them (read_extended_response / the seed's read) */

/* ---------------------------------------------------------------------------------------- */
/* Client-side waits (project variant)                                                      */
/* ---------------------------------------------------------------------------------------- */
#ifndef SEED
/* protocol/ wait_for: ends on a post, on `!alive()` at a slice boundary (alive_fn reads
   Client::dead), or at the deadline. */
inline wait_for(sem, r)
{
	if
	:: atomic { sem > 0 -> sem--; r = OK }   /* sem.wait_until(..) == Ok(true)       */
#ifndef MUTANT_NO_SLICE_ALIVE
	:: atomic { dead -> r = GONE }           /* slice over, !alive(): PeerGone       */
#endif
	:: DEADLINE -> r = TIMEDOUT              /* Instant::now() >= deadline: TimedOut */
	fi
}

/* protocol/ Channel::client_acquire */
inline client_acquire(r)
{
	wait_for(ready, r);                      /* wait_for(&self.ready, ..)? */
	if
	:: r == OK && dead -> r = GONE           /* if !alive() { PeerGone } */
	:: else -> skip
	fi;
#ifndef NO_DRAIN
	if
	:: r == OK ->
		do                                   /* while response_written.try_wait()? {} */
		:: atomic { response_written > 0 -> response_written-- }
		:: response_written == 0 -> break
		od;
#ifndef MUTANT_NO_RECHECK
		if
		:: dead -> r = GONE                  /* if alive() { Ok } else { PeerGone } */
		:: else ->
			/* the drain's claim: the count is exact again (nothing left over; only the
			   watcher of a worker that died meanwhile may have posted since) */
			assert(response_written == 0 || dead)
		fi
#else
		skip
#endif
	:: else -> skip
	fi
#endif
}

/* protocol/ Channel::client_await (extended mode) */
inline client_await(s, r)
{
	do
	:: wait_for(response_written, r);        /* wait_for(&self.response_written, ..)? */
		if
		:: r != OK -> break
		:: else -> skip
		fi;
		if
		:: response_seq == s ->              /* load64(ResponseSeq) == seq */
			c_reading = true;                /* read_extended_response */
			c_reading = false;
			break
		:: else -> skip
		fi;
		if
		:: dead -> r = GONE; break           /* if !alive() { PeerGone } */
		:: else -> stale_skipped = true      /* stale post: keep waiting for ours */
		fi
	od
}

/* Drop for Watcher (os/process.rs): stop the pidfd watcher thread and join it. */
inline stop_watcher()
{
	atomic {
		if
		:: wst == W_IDLE -> wst = W_STOPPED
		:: else -> skip
		fi
	}
}

bool stale_skipped = 0;   /* ghost: the stale-post branch of client_await was taken */
#endif

/* ---------------------------------------------------------------------------------------- */
/* Worker: llama-shm worker/serve.rs serve (project) / the seed's chatbot loop (seed)             */
/* ---------------------------------------------------------------------------------------- */
active proctype Worker()
{
	byte seq = 0;
	bool sd = 0;
	{
	do
	::
#ifndef SEED
		/* worker/serve.rs serve: loop { .. } */
		request_seq = 0;                     /* protocol/ Channel::worker_ready: store64(RequestSeq, 0) */
#endif
		ready++;                             /* worker_ready: ready.post() */
#ifdef SEED
		atomic { prompts_written > 0 -> prompts_written-- };   /* seed: sem_wait(prompts_written) */
#else
		/* protocol/ Channel::worker_wait: loop { if stop() {false};
		   if prompts_written.wait_until(now + idle_slice) { !stop() } } */
		if
		:: stop -> break                     /* Ok(false): serve returns ServeEnd::Stopped */
		:: atomic { prompts_written > 0 -> prompts_written-- };
			if
			:: stop -> break                 /* woken by the stop watcher: Ok(!stop()) */
			:: else -> skip
			fi
		fi;
#endif
		/* protocol/ Channel::worker_take (seed: the shutdown byte, then the prompts) */
		w_taking = true;
		sd = shutdown_flag;                  /* region.read(Field::Shutdown) */
#ifndef SEED
		seq = request_seq;                   /* load64(RequestSeq) */
		/* token check: seq == 0 would be Incoming::Refused(Unauthorized), answered with
		   response_seq 0, which no client takes for its own. The spawning client always
		   writes seq >= 1 while holding the turn: claim the refusal is unreachable. */
		assert(seq != 0);
#endif
		if
		:: sd -> w_taking = false; break      /* Incoming::Shutdown: ServeEnd::ShutdownRequested */
		:: else -> skip
		fi;
		w_taking = false;                    /* prompts copied out (take(SystemPrompt/UserPrompt)) */
		skip;                                /* worker/serve.rs serve: engine.generate(.., cancel) */
		/* protocol/ Channel::worker_respond */
		w_writing = true;                    /* write_text(Response), error, status, lengths, */
		w_writing = false;                   /*   flags, usage, finish (store32/store64)      */
#ifndef SEED
		response_seq = seq;                  /* store64(ResponseSeq, seq): last, release */
#endif
		response_written++                   /* response_written.post() */
	od;
	wgone = true                             /* serve returned: host::run returns, exit */
	} unless { atomic { wkill -> wgone = true; w_taking = false; w_writing = false } }
}

/* ---------------------------------------------------------------------------------------- */
/* Client: client/ ClientBuilder::spawn, Client::send_request x NREQ, shutdown_inner      */
/* ---------------------------------------------------------------------------------------- */
active proctype Client()
{
	byte i = 0;
	byte r = OK;
#ifndef SEED
	byte seq = 0;
	byte next_seq = 1;                       /* Client::next_seq */
	bool holding = 0;                        /* Client::holding_turn */
	bool closed = 0;                         /* Client::closed.is_some() */
	bool was_dead = 0;
	bool turn = 0;
#endif
	{
#ifdef SEED
	/* The seed's client: sem_wait(ready), write the prompts, sem_post(prompts_written),
	   sem_wait(response_written), read; no deadline, nothing notices a dead peer. */
	do
	:: i < NREQ ->
		i++;
		req = R_OPEN;
		atomic { ready > 0 -> ready-- };     /* sem_wait(ready) */
		c_writing = true;                    /* write system_prompt, user_prompt */
		c_writing = false;
		prompts_written++;                   /* sem_post(prompts_written) */
		atomic { response_written > 0 -> response_written-- };   /* sem_wait(response_written) */
		c_reading = true;                    /* read response */
		c_reading = false;
		req = R_ANSWERED
	:: else -> break
	od;
	/* The seed's shutdown (the order client/ shutdown_inner copies): set the flag, post,
	   wait for the worker's exit. */
	shutdown_flag = 1;
	prompts_written++;
	wgone;
#else
	/* ClientBuilder::spawn: objects, worker started, token sent, "attached", names
	   unlinked, start_watcher (PidfdWatcher runs from the start), then: */
	client_acquire(r);                       /* client/ ClientBuilder::spawn: client_acquire(start-up deadline) */
	if
	:: r == OK -> holding = true             /* Ok(client), client.holding_turn = true */
	:: r == GONE -> goto spawn_failed        /* SpawnError::WorkerExited (fail(): reaped) */
	:: r == TIMEDOUT ->                      /* SpawnError::StartupTimeout: */
		wkill = true;                        /*   p.kill(): SIGKILL ... */
		wgone;                               /*   ... child.wait() */
		goto spawn_failed
	fi;

	do
	:: i < NREQ ->
		i++;
		req = R_OPEN;                        /* client/ Client::send_request */
		if
		:: closed -> req = R_ERRORED; goto next_req    /* RequestError::Closed */
		:: else -> skip
		fi;
		if
		:: !holding ->
			client_acquire(r);               /* protocol/ Channel::client_acquire(Some(deadline)) */
			if
			:: r == GONE -> closed = true; req = R_ERRORED; goto next_req   /* died(WaitingReady) */
			:: r == TIMEDOUT -> req = R_ERRORED; goto next_req              /* Timeout{WaitingReady} */
			:: r == OK -> skip
			fi
		:: else -> skip
		fi;
		holding = false;                     /* self.holding_turn = false */
		seq = next_seq;                      /* let seq = self.next_seq */
		next_seq++;
		/* protocol/ Channel::client_write */
		c_writing = true;                    /* auth_token, client_pid */
		request_seq = seq;                   /* store64(RequestSeq, seq) */
		shutdown_flag = 0;                   /* prompts, then shutdown := 0 */
		c_writing = false;
		prompts_written++;                   /* prompts_written.post() */
		client_await(seq, r);                /* protocol/ Channel::client_await(seq, Some(deadline)) */
		if
		:: r == OK -> req = R_ANSWERED                       /* Ok(Response) or the status' error */
		:: r == GONE -> closed = true; req = R_ERRORED       /* died(WaitingResponse) */
		:: r == TIMEDOUT -> req = R_ERRORED                  /* Timeout{WaitingResponse}; stays usable */
		fi;
next_req:
		skip
	:: else -> break
	od;

	/* client/ Client::shutdown_inner */
	was_dead = dead;                         /* self.dead.load() */
	closed = true;
	if
	:: !was_dead ->
		if
		:: holding -> turn = true            /* self.holding_turn || .. */
		:: else ->
			client_acquire(r);               /* client_acquire(Some(deadline)).is_ok() */
			turn = (r == OK)
		fi;
		holding = false;
		if
		:: turn ->
			seq = next_seq;
			next_seq++;
			/* protocol/ Channel::client_request_shutdown */
			c_writing = true;
			request_seq = seq;               /* store64(RequestSeq, seq) */
			shutdown_flag = 1;               /* write(Shutdown, [1]) */
			c_writing = false;
			prompts_written++                /* prompts_written.post() */
		:: else -> skip
		fi
	:: else -> skip
	fi;
	stop_watcher();                          /* self.watcher = None */
	if                                       /* ChildProc::wait_until(deadline) */
	:: wgone -> skip                         /* Some(exit): the worker has ended */
	:: DEADLINE ->                           /* None: proc.kill() */
		wkill = true;
		wgone
	fi;
	goto client_exit;
spawn_failed:
	stop_watcher();                          /* the Client is dropped (child already taken) */
client_exit:
#endif
	cgone = true                             /* exit: ChildProc dropped, control socket hangs up */
	} unless { atomic { ckill -> cgone = true; c_writing = false; c_reading = false } }
}

#ifndef SEED
/* client/connect.rs start_watcher: a thread polling the worker's pidfd; fires once. Part of the
   client process: dies with it. */
active proctype PidfdWatcher()
{
end_watch:
	atomic {
		wgone && wst == W_IDLE && !ckill ->
		dead = true;                         /* dead.store(true) */
		ready++;                             /* channel.ready.post() */
		response_written++;                  /* channel.response_written.post() */
		wst = W_FIRED
	}
}

/* llama-shm worker/host.rs start_stop_watcher: the stop Watcher (SIGINT/SIGTERM self-pipe, control
   socket POLLRDHUP); fires once. Part of the worker process: dies with it. */
active proctype StopWatcher()
{
end_stop:
	if
#ifndef MUTANT_NO_HANGUP
	:: atomic { cgone && !wkill && !wgone -> /* "spawning client is gone" */
		stop = true; cancel = true; prompts_written++ }
#endif
#ifndef NO_SIGTERM
	:: atomic { sigterm && !wkill && !wgone ->   /* "signal received" */
		stop = true; cancel = true; prompts_written++ }
#endif
#if defined(MUTANT_NO_HANGUP) && defined(NO_SIGTERM)
	:: false                                 /* nothing left to watch */
#endif
	fi
}
#endif

#ifdef NOFAULTS
#define NO_WORKER_FAULT
#define NO_CLIENT_FAULT
#endif

#ifndef NO_WORKER_FAULT
/* The worker may die at any moment: SIGKILL, the OOM killer, an abort in llama.cpp. */
active proctype WorkerFault()
{
	if
	:: atomic { !wgone -> wkill = true }
	:: skip
	fi
}
#endif

#if !defined(SEED) && !defined(NO_SIGTERM)
/* Someone (systemd, a user) may send the worker SIGTERM, once, at any moment, or never.
   One-shot like the faults: a signal that can always still come would hide a hang. */
active proctype Signal()
{
	if
	:: atomic { !wgone -> sigterm = true }
	:: skip
	fi
}
#endif

#ifndef NO_CLIENT_FAULT
/* The client may die at any moment (its watcher thread with it). */
active proctype ClientFault()
{
	if
	:: atomic { !cgone -> ckill = true }
	:: skip
	fi
}
#endif

/* No data race on the bulk fields: the turn (ready -> prompts_written) keeps the client's
   writes apart from the worker's reads, and response_written (plus response_seq) the
   worker's writes from the client's reads. */
active proctype Monitor()
{
end_monitor:
	atomic { (c_writing && w_taking) || (w_writing && c_reading) -> assert(false) }
}

/* Every request ends: with the worker's response or an error returned to the caller
   (unless the client process itself was killed, leaving nobody to return to). */
#define requested     (req == R_OPEN)
#define answered      (req == R_ANSWERED)
#define errored       (req == R_ERRORED)
#define client_killed (ckill)
ltl every_request_ends { [] (requested -> <> (answered || errored || client_killed)) }

/* No orphan: once the client process is gone, the worker process ends too. */
ltl worker_follows_client { [] (cgone -> <> wgone) }
