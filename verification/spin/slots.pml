/*
 * llama-shm: the multi-slot worker (crates/llama-shm/src/worker/slots.rs serve_slots, with
 * batch.rs EchoBatch and sink.rs WireSink), two slots, a client on each, client deaths and a
 * cancel. Companion to protocol.pml (the three-semaphore cycle, one slot) and stream.pml (the
 * ring and the cancel word, one slot); see ../README.md.
 *
 * Each slot is a channel of its own: semaphores ready / prompts_written / response_written
 * and a region (request_seq, cancel_seq, stream_seq, response_seq, the ring's cursors, the
 * ring of CAP units, the answer's length and finish). One Waiter per slot runs the seed's
 * cycle on it (worker_ready, worker_wait with the turn watch, worker_take) and hands what it
 * took to the one Engine, which admits it, steps every running sequence once per step (one
 * piece each, EchoBatch), writes each piece through that slot's sink, ends a sequence whose
 * sink refuses more (cancelled, its client gone, a full ring past the stall limit) at once,
 * and lets the slot's Waiter go on when the answer is finished.
 *
 * Client 0 sends NREQ0 requests (default 2); a Canceller thread of its process may cancel the
 * first one at any moment (once, or never); the second must then be answered whole. Client 1
 * sends NREQ1 (default 1), streamed, never cancelled. Every answer is ANS units (default 2)
 * through a ring of CAP (default 1), so a reader that lags fills the ring and the engine
 * waits for it. At any moment one of the two clients may die (or neither): it runs no
 * further step; the kernel releases its lock on the turn; the worker's presence oracle
 * (Clients::requester_present: its pid is gone) and turn oracle (Clients::turn_abandoned: it
 * took `ready` and died before posting) say so from then on.
 *
 * Switches (all optional):
 *   -DNOSTALL        no stall limit: a full-ring wait ends only on room, a cancel or the
 *                    requester's absence. Then also "the non-cancelled requests of live
 *                    clients are answered whole (finish Stop)" is asserted.
 *   -DPREFILL        the engine may read a request's prompt for as long as it likes (a step
 *                    that pushes nothing, repeated any number of times, for ever included).
 *                    every_request_ends does not hold then (an engine that never ends a
 *                    prompt); slots_freed must still hold: a dead client's slot is freed
 *                    whatever the engine does.
 *   -DNO_FAULT0 / -DNO_FAULT1 / -DNOFAULTS / -DNOCANCEL / -DNREQ0=n / -DNREQ1=n / -DANS=n / -DCAP=n
 * Planted bugs and mutants (ci/spin.sh requires each to fail as stated):
 *   -DPLANT_WRONG_SLOT  the engine hands each piece to the other running slot's sink (a
 *                    dispatch by the wrong index): a client copies out a unit that is not its
 *                    own (assertion).
 *   -DMUTANT_REFUSAL_NOT_ABORTED  slots.rs before 5bae406: a sequence whose sink refuses more
 *                    stays in the batch until the engine pushes again (LLAMA_SHM_MUTANT
 *                    refusal-not-aborted in the loom model). Harmless with an engine that
 *                    pushes every step; with -DPREFILL a dead client's slot is never free
 *                    again (slots_freed: acceptance cycle).
 *   -DPLANT_NO_PRESENCE  the worker never asks whether a requester is still there. With the
 *                    stall limit that costs 30 s; with -DNOSTALL a client that dies mid-answer
 *                    holds the engine in its full ring for good, and the other slot's client
 *                    with it (invalid end state).
 *
 * Abstractions (as in protocol.pml and stream.pml):
 *  - Time: the stall limit is a branch always available in the full-ring wait; a poll loop is
 *    one blocking `if` whose guards are what the loop re-checks. The engine thread's idle
 *    wait for an arrival blocks (its timeout only re-checks the stop, not modelled here).
 *  - A unit's value names (slot, request, position): a unit read from the wrong slot, before
 *    it was written or after it was overwritten, is a wrong value.
 *  - Memory is sequentially consistent (the memory model is loom's part:
 *    verification/tests/loom_slots.rs runs the real serve_slots).
 *  - The stop path and shutdown requests are not modelled (protocol.pml, stream.pml and the
 *    loom models have them); nor refusals of bad requests, the deadline, max_tokens (each ends
 *    one sequence as a cancel does). The engine's per-sequence state is EchoBatch's: the
 *    sequence ends with Stop at the first step after its last piece.
 *  - A client uses one slot (production clients take any free slot's turn; a slot is a
 *    channel of its own whoever uses it).
 *  - Coarse steps. Each step of the engine is one atomic step towards the clients (a check
 *    and what it decides; a piece written and published; an answer finished and its slot
 *    released), except its wait on a full ring; each wake-up of a client is one (the wait,
 *    the loads of response_seq / stream_seq / StreamWritten, the copy, StreamRead): the order
 *    of those loads and the ring's overwrite window are stream.pml's part, and here a unit
 *    cannot change before StreamRead passes it. What a client does between two of its own
 *    steps, the engine sees only at its next check.
 *  - A death sets the process's locals to 0 (they are gone: its states are one).
 */

#ifdef NOFAULTS
#define NO_FAULT0
#define NO_FAULT1
#endif
#ifndef NREQ0
#define NREQ0 2
#endif
#ifndef NREQ1
#define NREQ1 1
#endif
#ifndef ANS
#define ANS 2
#endif
#ifndef CAP
#define CAP 1
#endif
#ifdef NOSTALL
#define STALL false
#else
#define STALL true
#endif
#ifdef PLANT_NO_PRESENCE
#define GONE(j) false
#else
#define GONE(j) cgone[j]     /* Clients::requester_present(seq) == false: its pid is gone */
#endif

#define NS 2
/* The value of unit p of request s of slot k: unique, never 0 (the rings start zeroed). */
#define VAL(k, s, p) ((k) * 64 + (s) * 8 + (p) + 1)

/* WireSink::refused */
#define RF_NONE      0
#define RF_CANCELLED 1
#define RF_GONE      2   /* Refusal::ClientGone */
#define RF_STALLED   3
/* What worker_finish writes (status + finish reason). */
#define FIN_STOP     1   /* Ok, Stop: the whole answer */
#define FIN_CANCEL   2   /* Ok, Cancelled (a cancel, or a refused piece) */
#define FIN_GONE     3   /* EngineFailed, Cancelled: "the client is gone" */
#define FIN_STALLED  4   /* EngineFailed: "the client stopped reading" */

#define R_NONE     0
#define R_OPEN     1
#define R_ANSWERED 2

/* Each slot's channel: semaphores (counting, initial 0) and region words. */
byte ready[NS];
byte pw[NS];              /* prompts_written */
byte rw[NS];              /* response_written */
byte request_seq[NS];     /* RequestSeq (client); zeroed by worker_ready */
byte cancel_seq[NS];      /* CancelSeq (client) */
byte stream_seq[NS];      /* StreamSeq (worker_stream_begin) */
byte response_seq[NS];    /* ResponseSeq (worker_finish, last) */
byte sw[NS];              /* StreamWritten (worker): the published write cursor */
byte sr[NS];              /* StreamRead (client) */
byte resp_len[NS];        /* ResponseLen */
byte resp_fin[NS];        /* Status + FinishReason */
byte meta_seq[NS];        /* ghost: the request whose metadata worker_finish wrote last */
byte ring[NS * CAP];      /* slot k's ring: ring[k * CAP .. k * CAP + CAP) */

/* The clients, as the worker's oracles and the kernel see them. */
bool holds[NS];           /* took `ready` and has not posted `prompts_written` */
bool ckill[NS];
bool cgone[NS];           /* died */
byte req[NS];             /* ghost: R_OPEN while a request of client k is under way */
byte in_flight0 = 0;      /* client 0's CancelSlot::in_flight */

/* Waiter k -> Engine: (slot, seq) of what it took. Engine -> Waiter k: go on. */
chan arr = [NS] of { byte, byte };
chan go[NS] = [1] of { bit };

/* ---------------------------------------------------------------------------------------- */
/* The engine thread: slots.rs EngineLoop::serve, arrive, end, release; batch.rs EchoBatch; */
/* sink.rs WireSink::check/push/append; protocol/ worker_stream_*, worker_finish            */
/* ---------------------------------------------------------------------------------------- */

/* WireSink::check (stop is not modelled): the cancel word, then the requester's presence. */
inline check(j)
{
	if
	:: refused[j] == RF_NONE ->
		if
		:: cancel_seq[j] == cur[j] -> refused[j] = RF_CANCELLED
		:: cancel_seq[j] != cur[j] && GONE(j) -> refused[j] = RF_GONE
		:: else -> skip
		fi
	:: else -> skip
	fi
}

/* The engine thread's steps are coarse: each is one atomic step from the clients' point of
   view (a check and what it decides; a piece written and published; a finished answer and
   the release), except where it waits (a full ring). */

/* protocol/ worker_stream_publish: store64(StreamWritten), then response_written.post() */
inline publish(j)
{
	if
	:: written[j] > published[j] -> sw[j] = written[j]; published[j] = written[j]; rw[j]++
	:: else -> skip
	fi
}

/* finish_answer + worker_finish (the metadata and the final cursor, then response_seq, then
   the post), then release(slot): the slot's waiter may go on. `res` is the engine's finish.
   (One step: a client that takes an earlier post of this answer after it may still see
   response_seq name its request before it takes the final post, which the next
   client_acquire then drains.) */
inline finish(j, res)
{
	meta_seq[j] = cur[j];
	resp_len[j] = written[j];
	if
	:: refused[j] == RF_NONE -> resp_fin[j] = res
	:: refused[j] == RF_CANCELLED -> resp_fin[j] = FIN_CANCEL
	:: refused[j] == RF_GONE -> resp_fin[j] = FIN_GONE
	:: refused[j] == RF_STALLED -> resp_fin[j] = FIN_STALLED
	fi;
	sw[j] = written[j];
	response_seq[j] = cur[j];
	rw[j]++;
	cur[j] = 0; written[j] = 0; published[j] = 0; refused[j] = RF_NONE; at[j] = 0;
	go[j]!1
}

/* EngineLoop::arrive, Incoming::Request: begin_answer (worker_stream_begin: StreamWritten :=
   0, then StreamSeq := seq) and its check; "cancelled before it started": finish; else
   engine.admit. */
inline arrive(j, sq)
{
	sw[j] = 0; written[j] = 0; published[j] = 0; refused[j] = RF_NONE; at[j] = 0;
	cur[j] = sq;
	stream_seq[j] = sq;
	check(j);
	if
	:: refused[j] != RF_NONE -> finish(j, FIN_CANCEL)
	:: else ->
		running[j] = sq;
#ifdef PREFILL
		reading[j] = true
#endif
	fi
}

/* The loop's "a request whose sink refuses more leaves the batch now": engine.abort(slot),
   then end(slot, Ok(Cancelled)). */
inline leave(j)
{
	if
	:: running[j] != 0 ->
		atomic {
			check(j);
#ifndef MUTANT_REFUSAL_NOT_ABORTED
			if
			:: refused[j] != RF_NONE -> running[j] = 0; reading[j] = false; finish(j, FIN_CANCEL)
			:: else -> skip
			fi
#else
			skip
#endif
		}
	:: else -> skip
	fi
}

/* WireSink::push(piece) on slot t's sink, up to a full ring: check; worker_stream_room;
   worker_stream_write; publish (every request here streams). A full ring: publish what is
   there and wait (ringfull). */
inline push(t, u)
{
	check(t);
	if
	:: refused[t] != RF_NONE -> ok = false
	:: refused[t] == RF_NONE && written[t] - sr[t] < CAP ->
		ring[t * CAP + written[t] % CAP] = u;
		written[t]++;
		ok = true;
		publish(t)
	:: refused[t] == RF_NONE && written[t] - sr[t] >= CAP ->   /* Free(0): the ring is full */
		ringfull = true;
		publish(t)
	fi
}

/* The end of sequence j's step: EchoBatch's done(j, Cancelled) when its piece was refused. */
inline step_end(j)
{
	if
	:: !ok -> running[j] = 0; reading[j] = false; finish(j, FIN_CANCEL)
	:: else -> skip
	fi;
	u = 0; t = 0; ok = false; ringfull = false
}

/* EchoBatch::step for sequence j (Dispatch::piece hands its piece to the sink of the slot of
   the same index): at the end of the answer, done(Stop); else push a piece; refused:
   done(Cancelled). With -DPREFILL a sequence may first read its prompt, pushing nothing. */
inline seq_step(j)
{
	if
	:: running[j] != 0 -> seq_step_running(j)
	:: else -> skip
	fi
}
inline seq_step_running(j)
{
	atomic {
		if
		:: running[j] != 0 && reading[j] ->
			if
			:: skip                                  /* still reading the prompt */
			:: reading[j] = false
			fi
		:: running[j] != 0 && !reading[j] && at[j] == ANS ->
			running[j] = 0; finish(j, FIN_STOP)
		:: running[j] != 0 && !reading[j] && at[j] < ANS ->
			u = VAL(j, cur[j], at[j]);
			at[j]++;
#ifdef PLANT_WRONG_SLOT
			t = 1 - j;
#else
			t = j;
#endif
			if
			:: running[t] != 0 -> push(t, u)
			:: else -> ok = false                    /* no sequence there: refused */
			fi;
			if
			:: !ringfull -> step_end(j)
			:: else -> skip
			fi
		:: else -> skip
		fi
	};
	if
	:: ringfull ->
		/* WireSink::append's full-ring loop: room (write, publish), the check (cancel,
		   the requester gone), the stall limit */
		if
		:: atomic { written[t] - sr[t] < CAP ->
			ring[t * CAP + written[t] % CAP] = u;
			written[t]++;
			ok = true;
			publish(t);
			step_end(j) }
		:: atomic { cancel_seq[t] == cur[t] -> refused[t] = RF_CANCELLED; ok = false; step_end(j) }
		:: atomic { cancel_seq[t] != cur[t] && GONE(t) -> refused[t] = RF_GONE; ok = false; step_end(j) }
		:: atomic { STALL -> refused[t] = RF_STALLED; ok = false; step_end(j) }
		fi
	:: else -> skip
	fi
}

/* The rest of a loop iteration after the arrivals: refused sequences leave, then one step. */
inline refuse_and_step()
{
	leave(0);
	leave(1);
	if
	:: running[0] != 0 || running[1] != 0 -> seq_step(0); seq_step(1)
	:: else -> skip
	fi
}

proctype Engine()
{
	byte k = 0;
	byte s = 0;
	byte u = 0;
	byte t = 0;
	bool ok = false;
	bool ringfull = false;
	byte running[NS];    /* the sequence running in slot k (its seq), 0: none */
	byte cur[NS];        /* the request slot k's sink answers (StreamState::seq) */
	byte at[NS];         /* EchoSeq::at: pieces produced */
	byte written[NS];    /* StreamState::written */
	byte published[NS];  /* StreamState::published */
	byte refused[NS];    /* WireSink::refused */
	bool reading[NS];    /* still reading the prompt (-DPREFILL) */
	xr arr;
end_engine:
	do
	:: if
		/* rx.recv_timeout (idle: blocks) or rx.try_recv (busy), then the rest of what
		   arrived */
		:: atomic { nempty(arr) -> arr?k,s; arrive(k, s) };
			do
			:: atomic { nempty(arr) -> arr?k,s; arrive(k, s) }
			:: atomic { empty(arr) -> k = 0; s = 0 }; break
			od
		:: (running[0] != 0 || running[1] != 0) && empty(arr) -> skip
		fi;
		refuse_and_step()
	od
}

/* slots.rs waiter: `while go.recv()`: worker_ready, worker_wait (with the turn watch:
   Clients::turn_abandoned gives back the turn of a holder that died), worker_take, send. */
proctype Waiter(byte k)
{
	byte s = 0;
end_waiter:
	do
	:: atomic { go[k]?_ -> request_seq[k] = 0; ready[k]++ };   /* go; worker_ready */
end_wait:
		do
		/* worker_wait takes prompts_written; worker_take; tx.send (the client waits for its
		   answer meanwhile: nothing of this slot changes in between) */
		:: atomic { pw[k] > 0 -> pw[k]--; s = request_seq[k]; assert(s != 0); arr!k,s; s = 0 };
			break
		:: atomic { ready[k] == 0 && pw[k] == 0 && holds[k] && cgone[k] ->
			holds[k] = false;                            /* turn_abandoned: once */
			request_seq[k] = 0; ready[k]++ }             /* worker_ready again */
		od
	od
}

/* ---------------------------------------------------------------------------------------- */
/* Clients: protocol/ client_acquire, client_write, client_receive, consume, client_cancel    */
/* ---------------------------------------------------------------------------------------- */

/* protocol/ Channel::consume: copy [rx, w) out of slot k's ring (w: StreamWritten as loaded
   when the client woke), then store64(StreamRead, w). */
inline consume()
{
	assert(w >= rx && w - rx <= CAP);                 /* WaitError::Garbled: unreachable */
	do
	:: rx < w ->
		/* the unit must be this slot's, this request's, at this position */
		assert(ring[k * CAP + rx % CAP] == VAL(k, seq, rx));
		rx++
	:: else -> break
	od;
	sr[k] = w;
	w = 0
}

proctype Client(byte k)
{
	byte n = 0;
	byte seq = 0;
	byte rx = 0;
	byte w = 0;
	bool done = false;
	bool ours = false;
	{
	do
	:: (k == 0 && n < NREQ0) || (k == 1 && n < NREQ1) ->
		atomic { n++; seq = n; req[k] = R_OPEN };
		/* client_acquire: take the turn, then drain the response_written posts earlier
		   answers left (one step: the worker posts nothing on this slot between releasing
		   it, which precedes the waiter's `ready`, and taking the next request) */
		atomic { ready[k] > 0 -> ready[k]--; holds[k] = true; rw[k] = 0 };
		/* exchange: in flight for cancel() before it is written (a cancel in between is, to
		   the worker, one made before the post); client_write: StreamRead := 0, RequestSeq,
		   prompts; then the post */
		atomic {
			if
			:: k == 0 -> in_flight0 = seq
			:: else -> skip
			fi;
			sr[k] = 0; request_seq[k] = seq
		};
		atomic { pw[k]++; holds[k] = false };
		/* client_receive: each wake-up is one step: the wait; load64(ResponseSeq) == seq,
		   load64(StreamSeq) == seq; consume (StreamWritten, the copy, StreamRead); at the
		   end read_extended_meta. (The order of those loads and the ring's overwrite window
		   are stream.pml's part: a unit here cannot change before StreamRead passes it.) */
		do
		:: atomic { rw[k] > 0 -> rw[k]--;
			done = (response_seq[k] == seq); ours = (stream_seq[k] == seq); w = sw[k];
			if
			:: ours -> consume()
			:: else -> skip
			fi;
			ours = false;
			if
			:: done ->
				/* its own answer, as long as what arrived */
				assert(meta_seq[k] == seq && resp_len[k] == rx);
				assert(resp_fin[k] != FIN_STOP || rx == ANS);
#ifdef NOSTALL
				/* a live client's request is answered whole unless it was cancelled */
				assert(resp_fin[k] == FIN_STOP ||
				       (k == 0 && seq == 1 && resp_fin[k] == FIN_CANCEL));
#endif
				rx = 0;
				/* cancel_slot in_flight := 0; the call returns */
				if
				:: k == 0 -> in_flight0 = 0
				:: else -> skip
				fi;
				req[k] = R_ANSWERED
			:: else -> skip                      /* a piece of ours: wait for the end */
			fi };
			if
			:: done -> done = false; break
			:: else -> skip
			fi
		od
	:: else -> break
	od
	} unless { atomic { ckill[k] -> cgone[k] = true;
		/* a dead process's locals are gone (so its states are one) */
		n = 0; seq = 0; rx = 0; w = 0; done = false; ours = false;
		if
		:: k == 0 -> in_flight0 = 0
		:: else -> skip
		fi } }
}

#ifndef NOCANCEL
/* client 0's Canceller::cancel, once, at any moment (or never), of its first request:
   in_flight and cancel_seq under the CancelSlot lock (one step). */
proctype Canceller()
{
end_cancel:
	{
	if
	:: atomic { in_flight0 == 1 -> cancel_seq[0] = 1 }
	:: skip
	fi
	} unless { cgone[0] }
}
#endif

/* At most one death per run, at any moment (or none). */
proctype Env()
{
	if
#ifndef NO_FAULT0
	:: ckill[0] = true
#endif
#ifndef NO_FAULT1
	:: ckill[1] = true
#endif
	:: skip
	fi
}

init
{
	atomic {
		run Engine();
		run Waiter(0);
		run Waiter(1);
		run Client(0);
		run Client(1);
#ifndef NOCANCEL
		run Canceller();
#endif
		run Env();
		go[0]!1;                                     /* serve_slots: the first go */
		go[1]!1
	}
}

/* Every request ends (answered) unless its client dies. */
ltl every_request_ends {
	[] ((req[0] == R_OPEN -> <> (req[0] != R_OPEN || cgone[0])) &&
	    (req[1] == R_OPEN -> <> (req[1] != R_OPEN || cgone[1])))
}
/* A dead client's slot is free again: its waiter offers the turn (posts `ready`), whatever
   the client was doing when it died, and (with -DPREFILL) whatever the engine does. */
ltl slots_freed {
	[] ((cgone[0] -> <> (ready[0] > 0)) && (cgone[1] -> <> (ready[1] > 0)))
}
