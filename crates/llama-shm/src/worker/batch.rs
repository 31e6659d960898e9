//! Engines that decode several requests at once: the [`BatchEngine`] trait a multi-slot worker
//! drives (see [`super::slots`]), and the echo engine's batched form.
//!
//! A batch engine holds up to [`BatchEngine::capacity`] sequences. The worker admits a request
//! into a free sequence whenever one arrives and calls [`BatchEngine::step`] in a loop; each
//! step gives every running sequence at most one piece (a model: one token each, decoded in
//! one batch), so a new request joins at the next step and never waits for another to end.

use std::time::{Duration, Instant};

use super::engine::{
    echo_embed, echo_text, echo_token_count, no_embeddings, no_token_counts, Cancel, EngineError,
    EngineRequest, Generation,
};
use crate::protocol::{Embeddings, Usage};
use crate::wire::status::Finish;

/// Where a step's output goes.
pub trait BatchSink {
    /// Sequence `seq` produced `piece`. `false`: the sequence is to stop (cancelled, past its
    /// deadline, its answer full, its client gone); the engine then ends it with
    /// [`Finish::Cancelled`] (the worker says why) and frees what it holds.
    fn piece(&mut self, seq: usize, piece: &str) -> bool;
    /// Sequence `seq` ended (its slot is free again from now on).
    fn done(&mut self, seq: usize, result: Result<Generation, EngineError>);
}

/// An engine that decodes several sequences together.
pub trait BatchEngine {
    /// How many sequences it holds at most.
    fn capacity(&self) -> usize;
    /// Starts `request` in the free sequence `seq` (below [`BatchEngine::capacity`]). Its
    /// first piece comes at a later [`BatchEngine::step`].
    ///
    /// # Errors
    /// [`EngineError`] when the request cannot be started (its prompt is too long, say); the
    /// sequence stays free.
    fn admit(&mut self, seq: usize, request: &EngineRequest<'_>) -> Result<(), EngineError>;
    /// Ends sequence `seq` now, without a report (the worker answers it itself: cancelled,
    /// past its deadline, its client gone, the worker stopping), freeing what it holds.
    fn abort(&mut self, seq: usize);
    /// Holds sequence `seq` (`held`: its client reads slower than it is generated, so its
    /// text waits in the worker) or lets it go on: while held, steps give it nothing and it
    /// keeps its place.
    fn hold(&mut self, seq: usize, held: bool);
    /// Whether any sequence is running (held ones included).
    fn is_busy(&self) -> bool;
    /// One step of every running sequence; what it produced and which sequences ended go to
    /// `out`. Returns at once when nothing runs.
    fn step(&mut self, out: &mut dyn BatchSink);

    /// As [`Engine::embed`](super::Engine::embed), between steps (the running sequences wait).
    ///
    /// # Errors
    /// [`EngineError::Unsupported`] by default.
    fn embed(
        &mut self,
        texts: &[String],
        max_values: usize,
        cancel: &Cancel,
    ) -> Result<Embeddings, EngineError> {
        let _ = (texts, max_values, cancel);
        Err(no_embeddings())
    }

    /// As [`Engine::count_tokens`](super::Engine::count_tokens).
    ///
    /// # Errors
    /// [`EngineError::Unsupported`] by default.
    fn count_tokens(&mut self, request: &EngineRequest<'_>, text: Option<&str>) -> Result<u32, EngineError> {
        let _ = (request, text);
        Err(no_token_counts())
    }
}

/// The echo engine, batched: every running sequence answers `{system}\n{user}` (`repeat`
/// times) in pieces of at most 4 bytes (each one token against `max_tokens`), one piece per
/// step, with one pause of `piece_delay` per step for all of them — as a model decodes a
/// batch in about the time of one sequence.
#[derive(Debug)]
pub struct EchoBatch {
    /// Pause per step (a model's time per token).
    pub piece_delay: Duration,
    /// How many times each answer is repeated (default 1; a long answer fills the ring).
    pub repeat: u32,
    seqs: Vec<Option<EchoSeq>>,
    held: Vec<bool>,
}

#[derive(Debug)]
struct EchoSeq {
    answer: String,
    at: usize,
    pieces: u32,
    budget: u32,
    started: Instant,
}

impl EchoBatch {
    /// An echo engine of `capacity` sequences pausing `piece_delay` per step.
    pub fn new(capacity: usize, piece_delay: Duration) -> Self {
        Self {
            piece_delay,
            repeat: 1,
            seqs: (0..capacity).map(|_| None).collect(),
            held: vec![false; capacity],
        }
    }
}

impl BatchEngine for EchoBatch {
    fn capacity(&self) -> usize {
        self.seqs.len()
    }

    fn admit(&mut self, seq: usize, request: &EngineRequest<'_>) -> Result<(), EngineError> {
        let slot = self
            .seqs
            .get_mut(seq)
            .ok_or_else(|| EngineError::Inference(format!("sequence {seq} is out of range")))?;
        if slot.is_some() {
            return Err(EngineError::Inference(format!("sequence {seq} is busy")));
        }
        if request.constraint.is_some() {
            return Err(EngineError::Unsupported(
                "the echo engine cannot constrain its answer to a schema or grammar".into(),
            ));
        }
        self.held[seq] = false;
        *slot = Some(EchoSeq {
            answer: echo_text(request).repeat(self.repeat.max(1) as usize),
            at: 0,
            pieces: 0,
            budget: request.max_tokens.unwrap_or(u32::MAX),
            started: Instant::now(),
        });
        Ok(())
    }

    fn abort(&mut self, seq: usize) {
        if let Some(s) = self.seqs.get_mut(seq) {
            *s = None;
        }
        self.hold(seq, false);
    }

    fn hold(&mut self, seq: usize, held: bool) {
        if let Some(h) = self.held.get_mut(seq) {
            *h = held;
        }
    }

    fn is_busy(&self) -> bool {
        self.seqs.iter().any(Option::is_some)
    }

    fn step(&mut self, out: &mut dyn BatchSink) {
        if !self.is_busy() {
            return;
        }
        if !self.piece_delay.is_zero() {
            std::thread::sleep(self.piece_delay);
        }
        for (i, slot) in self.seqs.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            if self.held[i] {
                continue;
            }
            let ended = |finish, s: &EchoSeq| Generation {
                finish,
                usage: Usage {
                    generated_tokens: s.pieces,
                    generation_time: s.started.elapsed(),
                    ..Usage::default()
                },
                dropped_messages: 0,
            };
            let finish = if s.at == s.answer.len() {
                Some(Finish::Stop)
            } else if s.pieces >= s.budget {
                Some(Finish::Length)
            } else {
                let rest = &s.answer[s.at..];
                let mut cut = rest.len().min(4);
                while !rest.is_char_boundary(cut) {
                    cut += 1;
                }
                s.at += cut;
                s.pieces += 1;
                (!out.piece(i, &rest[..cut])).then_some(Finish::Cancelled)
            };
            if let Some(finish) = finish {
                let g = ended(finish, s);
                *slot = None;
                self.held[i] = false;
                out.done(i, Ok(g));
            }
        }
    }

    fn embed(
        &mut self,
        texts: &[String],
        max_values: usize,
        _cancel: &Cancel,
    ) -> Result<Embeddings, EngineError> {
        echo_embed(texts, max_values)
    }

    fn count_tokens(&mut self, request: &EngineRequest<'_>, text: Option<&str>) -> Result<u32, EngineError> {
        Ok(echo_token_count(request, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        text: Vec<String>,
        done: Vec<(usize, Finish, u32)>,
        stop_after: Option<(usize, usize)>,
    }

    impl BatchSink for Collect {
        fn piece(&mut self, seq: usize, piece: &str) -> bool {
            self.text[seq].push_str(piece);
            self.stop_after
                .is_none_or(|(s, n)| s != seq || self.text[seq].len() < n)
        }
        fn done(&mut self, seq: usize, result: Result<Generation, EngineError>) {
            let g = result.unwrap();
            self.done.push((seq, g.finish, g.usage.generated_tokens));
        }
    }

    fn request<'a>(system: &'a str, user: &'a str, max_tokens: Option<u32>) -> EngineRequest<'a> {
        EngineRequest {
            system,
            user,
            max_tokens,
            ..EngineRequest::default()
        }
    }

    /// Sequences admitted at different steps run side by side, each with exactly its own
    /// answer; one that joins late does not wait for the others to end; a budget and a
    /// refused piece end only their own sequence.
    #[test]
    fn sequences_interleave_with_their_own_answers() {
        let mut e = EchoBatch::new(3, Duration::ZERO);
        let mut out = Collect {
            text: vec![String::new(); 3],
            stop_after: Some((2, 4)),
            ..Collect::default()
        };
        e.admit(0, &request("s0", "first answer", None)).unwrap();
        e.step(&mut out);
        assert_eq!(out.text[0], "s0\nf");
        e.admit(1, &request("s1", "é€ second", Some(2))).unwrap();
        assert!(e.admit(1, &request("x", "y", None)).is_err(), "a busy sequence");
        assert!(e.admit(3, &request("x", "y", None)).is_err(), "out of range");
        e.admit(2, &request("", "cut me short please", None)).unwrap();
        e.step(&mut out);
        assert_eq!(
            out.text[1], "s1\né",
            "the late one's first piece at the next step"
        );
        while e.is_busy() {
            e.step(&mut out);
        }
        assert_eq!(out.text[0], "s0\nfirst answer");
        assert_eq!(out.text[1], "s1\né€ ", "two pieces: its budget");
        assert_eq!(out.text[2], "\ncut");
        let mut done = out.done.clone();
        done.sort_by_key(|d| d.0);
        assert_eq!(
            done,
            [
                (0, Finish::Stop, 4),
                (1, Finish::Length, 2),
                (2, Finish::Cancelled, 1)
            ]
        );
        e.admit(2, &request("again", "", None)).unwrap();
    }
}
