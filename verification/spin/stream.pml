/*
 * llama-shm: the streamed answer through the response ring, the client's cancel word, and
 * process death. Companion to protocol.pml (which has the plain three-semaphore cycle); this
 * file models what crates/llama-shm does for an extended client (the protocol code of commit
 * c9bb174, unchanged up to 3ddc9b1):
 *
 *   worker/serve.rs serve + worker/sink.rs WireSink (check / append / push), protocol/ worker_stream_begin,
 *   worker_stream_room, worker_stream_write, worker_stream_publish, worker_finish,
 *   worker_cancel_requested; client/ exchange (client_acquire, client_write,
 *   client_receive, consume, client_cancel), Canceller::cancel, shutdown_inner.
 *
 * One client, one spawned worker. The client sends NREQ requests (default 2, seq 1 and 2),
 * then shuts the worker down (seq 3). Each answer is ANS units (default 3) through a ring of
 * CAP slots (default 2), so the ring fills, the worker waits for the reader, and the ring
 * wraps. Request 1 asks for streaming (every piece published as it comes), request 2 does not
 * (published only when the ring is full, and at the end): both publication patterns, and the
 * posts a streamed answer leaves behind for the next client_acquire to drain.
 *
 * Switches (all optional):
 *   -DNODEADLINE   no client deadline (requests never time out, shutdown never kills): only
 *                  the Canceller thread cancels.
 *   -DNOSTALL      no stall limit: the worker waits on a full ring until there is room, a
 *                  stop, or a cancel. Shows the stall limit is not what ends the wait.
 *   -DNOCANCELLER  no Canceller thread (only the client's own timeout cancels).
 *   -DNO_SIGTERM / -DNO_WORKER_FAULT / -DNO_CLIENT_FAULT / -DNOFAULTS   as in protocol.pml.
 *   -DNREQ=n -DANS=n -DCAP=n
 *   Always checked: "a cancel asked for a request the worker has not finished is never
 *   withdrawn" (by a later store of another seq). The Canceller reads in_flight and stores
 *   cancel_seq under the CancelSlot lock, which the client also holds to set and clear
 *   in_flight: a Canceller can no longer store the seq of a request that already ended.
 *   -DCANCEL_UNLOCKED  the code before that fix (found by this model): read and store are two
 *                  steps, and a stale store withdraws a newer request's cancel (assertion).
 *   Also always checked: a cancel() while a call's request is written and its answer not
 *   read finds the request in flight (it is recorded before the write).
 *   -DMUTANT_CANCEL_WINDOW  the code before issue 12: in_flight recorded only after the
 *                  write and post, so a cancel() in between returns false (assertion).
 * Mutants (ci/spin.sh checks what each one does):
 *   -DMUTANT_EARLY_RELEASE  consume stores stream_read before copying the units out: the
 *                  worker may overwrite a slot the client has not read yet (assertion).
 *   -DMUTANT_FULL_NO_CHECK  the worker's full-ring wait checks neither stop nor cancel. It
 *                  passes with the stall limit (the limit is the last resort); with -DNOSTALL a
 *                  worker whose client died mid-stream waits on the ring forever.
 *
 * Abstractions (as in protocol.pml; see ../README.md):
 *  - Time: a deadline, and the stall limit, are branches that are always available in the
 *    wait they end. A poll loop (the full-ring wait: room? publish, check, stall?, pause) is
 *    one blocking `if` whose guards are what the loop re-checks.
 *  - A unit is one indivisible piece of text (a byte, a char). Its value in the ring names
 *    (request, position), so a unit read before it was written, or after it was overwritten,
 *    is a wrong value: the client asserts each unit it copies out. A unit is written / read in
 *    one step; any overlap of a write and a read of the same slot that the protocol does not
 *    order therefore shows up as an interleaving with the wrong value.
 *  - Sequential consistency: the words are SeqCst/acquire-release in Rust; the memory model
 *    itself is loom's job (verification/tests/loom_protocol.rs).
 *  - The engine produces ANS pieces of one unit each; the request deadline and max_tokens are
 *    not modelled (they end generation like a cancel, without any other party involved).
 */

#ifdef NOFAULTS
#define NO_WORKER_FAULT
#define NO_CLIENT_FAULT
#define NO_SIGTERM
#endif

#ifndef NREQ
#define NREQ 2
#endif
#ifndef ANS
#define ANS 3
#endif
#ifndef CAP
#define CAP 2
#endif

#ifdef NODEADLINE
#define DEADLINE false
#else
#define DEADLINE true
#endif
#ifdef NOSTALL
#define STALL false
#else
#define STALL true
#endif

/* The value of unit k of request s: unique per (s, k), never 0 (the ring starts zeroed). */
#define VAL(s, k) ((s) * 8 + (k) + 1)

#define OK        0
#define GONE      1   /* WaitError::PeerGone */
#define TIMEDOUT  2   /* WaitError::TimedOut */

#define R_NONE     0
#define R_OPEN     1   /* Client::exchange entered */
#define R_ANSWERED 2   /* returns the worker's answer (any status, any finish reason) */
#define R_ERRORED  3   /* returns Timeout / WorkerDied / Closed */
byte req = R_NONE;

/* WireSink::refused */
#define RF_NONE      0
#define RF_STOPPING  1
#define RF_CANCELLED 2
#define RF_STALLED   3
/* what worker_finish writes (status + finish_reason) */
#define FIN_STOP     1   /* Ok, finish Stop: the whole answer */
#define FIN_CANCEL   2   /* Ok, finish Cancelled */
#define FIN_SHUTDOWN 3   /* ShuttingDown, finish Cancelled */
#define FIN_STALLED  4   /* EngineFailed, finish Error ("the client stopped reading") */

/* The three named semaphores, counting, initial 0. */
byte ready = 0;
byte prompts_written = 0;
byte response_written = 0;

/* Shared words of the extension page (wire/layout.rs Word64 / Word32). */
byte request_seq = 0;     /* RequestSeq (client); zeroed by worker_ready */
bool req_stream = 0;      /* RequestFlags & REQUEST_STREAM (client) */
bool shutdown_flag = 0;   /* seed field shutdown_requested */
byte response_seq = 0;    /* ResponseSeq (worker), stored last in worker_finish */
byte stream_seq = 0;      /* StreamSeq (worker), stored by worker_stream_begin */
byte sw = 0;              /* StreamWritten (worker): the published write cursor */
byte sr = 0;              /* StreamRead (client): what it copied out */
byte cancel_seq = 0;      /* CancelSeq (client, any thread) */
byte resp_len = 0;        /* ResponseLen (worker_finish) */
byte resp_fin = 0;        /* Status + FinishReason (worker_finish) */
byte ring[CAP];           /* the response area as a ring of CAP units */

/* Processes, as the kernel sees them (as in protocol.pml). */
bool wkill = 0;
bool wgone = 0;
bool ckill = 0;
bool sigterm = 0;
bool cgone = 0;
bool dead = 0;    /* Client::dead, set by the pidfd watcher */
bool stop = 0;    /* llama-shm worker/host.rs stop flag (also sets the engine's Cancel) */
#define W_IDLE    0
#define W_FIRED   1
#define W_STOPPED 2
byte wst = W_IDLE;

byte in_flight = 0;       /* client/ CancelSlot::in_flight */
bool call_written = 0;    /* ghost: the call's request is written and its answer not read */

/* Ghosts. */
byte wgen = 0;            /* the request the worker is generating (stream_begin .. finish) */
byte w_done = 0;          /* the last request the worker finished (posted its final answer) */
byte meta_seq = 0;        /* the request whose metadata worker_finish wrote last */

/* client_cancel(s) (and Canceller::cancel's store): store64(CancelSeq, s), with the
   claim that the store does not withdraw the cancel of a request the worker has not finished
   (cancel_seq moving from it to another value). */
#define CANCEL_CLAIM  assert(wgone || cancel_before <= w_done || cancel_seq == cancel_before)
#define STORE_CANCEL(s) atomic { cancel_before = cancel_seq; cancel_seq = (s); \
	CANCEL_CLAIM; cancel_before = 0 }
byte cancel_before = 0;   /* ghost: cancel_seq just before a store */

/* ---------------------------------------------------------------------------------------- */
/* Client-side waits: as protocol.pml                                                       */
/* ---------------------------------------------------------------------------------------- */
inline wait_for(sem, r)
{
	if
	:: atomic { sem > 0 -> sem--; r = OK }   /* sem.wait_until(..) == Ok(true)       */
	:: atomic { dead -> r = GONE }           /* slice over, !alive(): PeerGone       */
	:: DEADLINE -> r = TIMEDOUT              /* deadline passed: TimedOut            */
	fi
}

/* protocol/ Channel::client_acquire */
inline client_acquire(r)
{
	wait_for(ready, r);
	if
	:: r == OK && dead -> r = GONE           /* if !alive() { PeerGone } */
	:: else -> skip
	fi;
	if
	:: r == OK ->
		do                                   /* while response_written.try_wait()? {}: the */
		:: atomic { response_written > 0 -> response_written-- }   /* posts left by earlier */
		:: response_written == 0 -> break    /* answers (pieces consumed in bulk, timeouts) */
		od;
		if
		:: dead -> r = GONE                  /* if alive() { Ok } else { PeerGone } */
		:: else -> assert(response_written == 0 || dead)   /* the count is exact again */
		fi
	:: else -> skip
	fi
}

/* protocol/ Channel::consume: copy [rx, StreamWritten) out of the ring, then release it. */
inline consume()
{
	atomic {
		w = sw;                              /* let w = load64(StreamWritten) */
		/* `w < rx.read || w - rx.read > cap` is WaitError::Garbled: only a foreign writer
		   could cause it; claim it unreachable. */
		assert(w >= rx && w - rx <= CAP)
	};
#ifdef MUTANT_EARLY_RELEASE
	if
	:: w > rx -> sr = w                      /* MUTANT: store64(StreamRead, w) before the copy */
	:: else -> skip
	fi;
#endif
	do                                       /* r.read(Field::Response, pos, ..) (and the wrap) */
	:: rx < w ->
		atomic {
			/* the unit at ring position rx must be the worker's unit rx of this request */
			assert(ring[rx % CAP] == VAL(seq, rx));
			rx++;
#ifndef MUTANT_EARLY_RELEASE
			if                               /* rx.read = w; store64(StreamRead, w) */
			:: rx == w -> sr = w
			:: else -> skip
			fi
#endif
		}
	:: else -> break                         /* (n == 0: nothing to copy, no store) */
	od;
	w = 0
}

/* protocol/ Channel::client_receive(seq, ..) */
inline client_receive(r)
{
	do
	:: wait_for(response_written, r);        /* client_wait(&self.response_written, ..) */
		if
		:: r != OK ->                        /* Err(e): client_cancel(seq); return Err(e) */
			STORE_CANCEL(seq);
			break
		:: else -> skip
		fi;
		/* load64(ResponseSeq) == seq first, then load64(StreamSeq) == seq. (stream_seq
		   cannot change between the two loads: it changes only in the worker's
		   stream_begin, before any post of this request.) */
		atomic { done = (response_seq == seq); ours = (stream_seq == seq) };
		if
		:: ours -> consume()                 /* self.consume(..) */
		:: else -> skip
		fi;
		if
		:: done ->                           /* read_extended_meta: `intact` needs the answer's */
			/* length to equal what was received (and the checksum over seq, status, text) */
			atomic { assert(meta_seq == seq && resp_len == rx);
			         assert(resp_fin != FIN_STOP || rx == ANS);
			         done = 0; ours = 0; rx = 0 };
			break
		:: else -> skip
		fi;
		if
		:: dead -> r = GONE; break           /* if !alive() { PeerGone } */
		:: else -> skip                      /* a piece of ours: keep waiting for the end */
		fi
	od;
	atomic { done = 0; ours = 0; rx = 0 }
}

inline stop_watcher()
{
	atomic {
		if
		:: wst == W_IDLE -> wst = W_STOPPED
		:: else -> skip
		fi
	}
}

/* ---------------------------------------------------------------------------------------- */
/* Worker: worker/serve.rs serve, sink.rs WireSink                                                       */
/* ---------------------------------------------------------------------------------------- */

/* WireSink::check: stop, then the cancel word (then the deadline, not modelled), read in one
   step. Reading them apart only changes which of two early finishes (ShuttingDown or
   Cancelled) a request gets, which no property here distinguishes. */
inline check()
{
	if
	:: refused == RF_NONE ->
		if
		:: stop -> refused = RF_STOPPING     /* (self.stop)(): Stopping */
		:: !stop && cancel_seq == seq -> refused = RF_CANCELLED   /* worker_cancel_requested */
		:: else -> skip
		fi
	:: else -> skip                          /* if self.refused.is_some() { return } */
	fi
}

/* protocol/ Channel::worker_stream_publish */
inline publish()
{
	if
	:: written > published ->
		atomic { sw = written; published = written };  /* store64(StreamWritten); published = */
		response_written++                   /* response_written.post() */
	:: else -> skip
	fi
}

active proctype Worker()
{
	byte seq = 0;
	bool sd = 0;
	bool strm = 0;
	byte written = 0;    /* StreamState::written */
	byte published = 0;  /* StreamState::published */
	byte read_seen = 0;  /* StreamState::read_seen */
	byte refused = RF_NONE;
	byte k = 0;          /* pieces the engine produced */
	{
	do
	:: /* serve: if stop() { return Stopped }; worker_ready: store64(RequestSeq, 0);
	      ready.post(). (Nothing but this worker reads request_seq before the post.) */
		if
		:: atomic { stop -> skip }; break
		:: atomic { !stop -> request_seq = 0; ready++ }
		fi;
		if                                   /* worker_wait(idle_slice, stop) */
		:: stop -> break
		:: atomic { prompts_written > 0 -> prompts_written-- };
			if
			:: stop -> break                 /* Ok(!stop()) */
			:: else -> skip
			fi
		fi;
		/* worker_take: the request words, copied once. (The client writes them in one step
		   too: a take that could overlap a write would read request_seq == 0.) */
		atomic {
			sd = shutdown_flag; seq = request_seq; strm = req_stream;
			assert(seq != 0)                 /* the token refusal never fires for our client */
		};
		if
		:: sd -> break                       /* Incoming::Shutdown */
		:: else -> skip
		fi;
		/* worker_stream_begin(seq, params): the cursor is reset before stream_seq names us;
		   then "cancelled before it started" (sink.check()): no work. */
		atomic {
			sw = 0; written = 0; published = 0; read_seen = 0; refused = RF_NONE; k = 0;
			stream_seq = seq; wgen = seq;
			check()
		};
		do                                   /* engine.generate: push(piece) per piece */
		:: refused != RF_NONE || k == ANS -> break
		:: else ->
			atomic { check() };              /* WireSink::push: if self.check().is_some() */
			if
			:: refused != RF_NONE -> break
			:: else -> skip
			fi;
			/* WireSink::append: wait for ring space, then write the unit */
			do
			:: atomic { written - sr < CAP ->            /* worker_stream_room: Free(n > 0) */
				assert(sr >= read_seen && sr <= published);   /* Room::Garbled unreachable */
				read_seen = sr;
				ring[written % CAP] = VAL(seq, written);      /* worker_stream_write */
				written++; k++ };
				break
			:: atomic { written - sr >= CAP ->           /* Free(0): the ring is full */
				assert(sr >= read_seen && sr <= published);
				read_seen = sr };
				publish();                   /* let the client see what is there */
				if                           /* check(); stall limit; pause; loop */
				:: written - sr < CAP -> skip            /* the client read: room again */
#ifndef MUTANT_FULL_NO_CHECK
				:: stop -> refused = RF_STOPPING; break
				:: cancel_seq == seq -> refused = RF_CANCELLED; break
#endif
				:: STALL -> refused = RF_STALLED; break  /* since.elapsed() >= stall_limit */
				fi
			od;
			if
			:: refused == RF_NONE && strm -> publish()   /* is_streaming(): publish each piece */
			:: else -> skip
			fi
		od;
		/* worker_finish: status, lengths, finish reason, checksum (nobody reads them before
		   response_seq names this request) and the final cursor; then response_seq; post. */
		atomic {
			meta_seq = seq;
			resp_len = written;
			if
			:: refused == RF_NONE -> resp_fin = FIN_STOP
			:: refused == RF_CANCELLED -> resp_fin = FIN_CANCEL
			:: refused == RF_STOPPING -> resp_fin = FIN_SHUTDOWN
			:: refused == RF_STALLED -> resp_fin = FIN_STALLED
			fi;
			sw = written                     /* store64(StreamWritten, st.written) */
		};
		response_seq = seq;                  /* store64(ResponseSeq, st.seq): last */
		atomic {
			response_written++;              /* response_written.post() */
			w_done = seq; wgen = 0;
			seq = 0; written = 0; published = 0; read_seen = 0; refused = RF_NONE; k = 0; strm = 0
		}
	od;
	wgone = true
	} unless { atomic { wkill -> wgone = true } }
}

/* ---------------------------------------------------------------------------------------- */
/* Client: ClientBuilder::spawn, Client::exchange x NREQ, shutdown_inner                    */
/* ---------------------------------------------------------------------------------------- */
active proctype Client()
{
	byte i = 0;
	byte r = OK;
	byte seq = 0;
	byte next_seq = 1;
	bool holding = 0;
	bool closed = 0;
	bool was_dead = 0;
	bool turn = 0;
	byte rx = 0;          /* Receiver::read */
	byte w = 0;
	bool done = 0;
	bool ours = 0;
	{
	client_acquire(r);                       /* ClientBuilder::spawn */
	if
	:: r == OK -> holding = true
	:: r == GONE -> goto spawn_failed
	:: r == TIMEDOUT -> wkill = true; wgone; goto spawn_failed
	fi;

	do
	:: i < NREQ ->
		atomic { i++; req = R_OPEN };        /* Client::exchange */
		if
		:: closed -> req = R_ERRORED; goto next_req
		:: else -> skip
		fi;
		if
		:: !holding ->
			client_acquire(r);
			if
			:: r == GONE -> closed = true; req = R_ERRORED; goto next_req
			:: r == TIMEDOUT -> req = R_ERRORED; goto next_req
			:: r == OK -> skip
			fi
		:: else -> skip
		fi;
		seq = next_seq;
		next_seq++;
#ifndef MUTANT_CANCEL_WINDOW
		/* client/ exchange: the request is in flight for cancel() (under the CancelSlot
		   lock) *before* it is written, so a cancel() during the call is never lost. */
		in_flight = seq;
#endif
		/* protocol/ Channel::client_write: StreamRead := 0, RequestFlags (request 1
		   streams, request 2 does not: both publication patterns), RequestSeq, prompts,
		   shutdown := 0, then prompts_written.post(). */
		atomic {
			holding = false;
			sr = 0;
			req_stream = (seq == 1);
			request_seq = seq;
			shutdown_flag = 0;
			call_written = true
		};
		prompts_written++;
#ifdef MUTANT_CANCEL_WINDOW
		/* Before issue 12: in_flight recorded only after client_write returned. */
		in_flight = seq;
#endif
		client_receive(r);
		atomic { in_flight = 0; call_written = false }   /* cancel_slot.in_flight.store(0) */
		if
		:: r == OK -> req = R_ANSWERED
		:: r == GONE -> closed = true; req = R_ERRORED
		:: r == TIMEDOUT -> req = R_ERRORED
		fi;
next_req:
		skip
	:: else -> break
	od;

	/* client/ Client::shutdown_inner */
	atomic { was_dead = dead; closed = true };
	if
	:: !was_dead ->
		if
		:: holding -> turn = true
		:: else ->
			client_acquire(r);               /* client_acquire(Some(half), ..).is_ok() */
			turn = (r == OK)
		fi;
		holding = false;
		if
		:: turn ->
			atomic {                         /* client_request_shutdown */
				seq = next_seq;
				next_seq++;
				request_seq = seq;
				shutdown_flag = 1
			};
			prompts_written++
		:: else ->
			sigterm = true                   /* no turn: kill(worker, SIGTERM) */
		fi
	:: else -> skip
	fi;
	stop_watcher();                          /* self.watcher = None */
	if                                       /* ChildProc::wait_until(deadline) */
	:: wgone -> skip
	:: DEADLINE -> wkill = true; wgone       /* proc.kill() */
	fi;
	goto client_exit;
spawn_failed:
	stop_watcher();
client_exit:
	cgone = true
	} unless { atomic { ckill -> cgone = true } }
}

#ifndef NOCANCELLER
/* client/ Canceller::cancel, from another thread of the client process, once, at any
   moment (or never): load in_flight, and if a request is in flight, client_cancel(seq). */
active proctype Canceller()
{
	byte s = 0;
end_cancel:
	{
	if
#ifdef CANCEL_UNLOCKED
	:: atomic { in_flight != 0 -> s = in_flight };   /* in_flight.load(SeqCst) */
		STORE_CANCEL(s)                      /* channel.client_cancel(seq), later */
#else
	/* under the CancelSlot lock: load in_flight and store cancel_seq in one step with
	   respect to the client's updates of in_flight (also under the lock) */
	:: atomic { in_flight != 0 -> s = in_flight; STORE_CANCEL(s) }
#endif
	/* A cancel() while the call is under way, its request written, finding nothing in
	   flight would return false and be lost. */
	:: atomic { call_written && in_flight == 0 -> assert(false) }
	:: skip                                  /* never called (or while nothing was in flight) */
	fi
	} unless { cgone }
}
#endif

/* client/connect.rs start_watcher: fires once when the worker's pidfd becomes readable. */
active proctype PidfdWatcher()
{
end_watch:
	atomic {
		wgone && wst == W_IDLE && !ckill ->
		dead = true;
		ready++;
		response_written++;
		wst = W_FIRED
	}
}

/* llama-shm-worker's stop watcher: control socket hang-up or SIGTERM: stop, cancel, post. */
active proctype StopWatcher()
{
end_stop:
	if
	:: atomic { (cgone || sigterm) && !wkill && !wgone -> stop = true; prompts_written++ }
	fi
}


/* The environment: at most one event per run, at any moment (or none): the worker dies
   (SIGKILL, OOM, a crash), the client dies (its threads with it), or the worker gets
   SIGINT/SIGTERM from outside. (protocol.pml combines independent faults on the plain cycle;
   here a second event after the first adds nothing the survivor has to handle: a second death
   removes a process whose waits then end trivially, and a death after a SIGTERM meets a
   worker that is leaving anyway. See ../README.md.) */
active proctype Env()
{
	if
#ifndef NO_WORKER_FAULT
	:: atomic { !wgone -> wkill = true }
#endif
#ifndef NO_CLIENT_FAULT
	:: atomic { !cgone -> ckill = true }
#endif
#ifndef NO_SIGTERM
	:: atomic { !wgone -> sigterm = true }
#endif
	:: skip
	fi
}

#define requested     (req == R_OPEN)
#define answered      (req == R_ANSWERED)
#define errored       (req == R_ERRORED)
ltl every_request_ends { [] (requested -> <> (answered || errored || ckill)) }
ltl worker_follows_client { [] (cgone -> <> wgone) }
/* The worker ends every request it starts (final post, then ready) unless it dies: no full
   ring holds it forever. */
ltl worker_ends_requests { [] (wgen != 0 -> <> (wgen == 0 || wgone)) }
