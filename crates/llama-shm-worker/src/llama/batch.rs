//! The llama.cpp engine, batched: up to [`LlamaOptions::parallel`] sequences in one context,
//! decoded together (one `llama_decode` per step for all of them), each with its own sampler,
//! position, KV cells (sequence id = slot) and prefix cache.
//!
//! A step adds, for every running sequence, either its next prompt chunk (prompts are
//! evaluated in chunks, so running generations keep flowing while a new prompt is read) or its
//! last sampled token; after the decode every sequence whose logits were asked for samples
//! one token and passes its text on.

use std::time::{Duration, Instant};

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::DecodeError;

use llama_shm::internals::worker::batch::{BatchEngine, BatchSink};
use llama_shm::{Cancel, Embeddings, EngineError, EngineRequest, Finish, Generation};

use super::engine::to_pos;
use super::*;

/// Most prompt tokens one sequence adds to a step (so a long prompt does not stall the others'
/// generation for its whole evaluation).
const PROMPT_CHUNK: usize = 128;

/// A model, one context of several sequences, and their state.
pub struct LlamaBatchEngine {
    engine: LlamaEngine,
    seqs: Vec<Option<Seq>>,
    /// Per sequence: the tokens whose KV cells it holds at positions `0..len` (its prefix
    /// cache; emptied after an error or a cancel).
    cached: Vec<Vec<LlamaToken>>,
    batch: LlamaBatch<'static>,
}

struct Seq {
    prompt: Vec<LlamaToken>,
    /// Next prompt token to evaluate (`prompt.len()`: the prompt is done).
    next: usize,
    /// The sampled token to feed at the next step.
    feed: Option<LlamaToken>,
    /// Index of this sequence's logits in the last batch.
    logits: Option<i32>,
    sampler: RequestSampler,
    text: Utf8Carry,
    piece: Vec<u8>,
    generation: Generation,
    max_tokens: Option<u32>,
    admitted: Instant,
    generating_since: Option<Instant>,
    /// Held by the worker (its client reads slower than it generates): skipped by steps.
    held: bool,
}

impl std::fmt::Debug for LlamaBatchEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaBatchEngine")
            .field("engine", &self.engine)
            .field("running", &self.seqs.iter().filter(|s| s.is_some()).count())
            .finish_non_exhaustive()
    }
}

impl LlamaBatchEngine {
    /// Loads the model of `options` with a context of `options.parallel` sequences of
    /// `options.ctx` tokens each.
    ///
    /// # Errors
    /// As [`LlamaEngine::load`].
    pub fn load(options: &LlamaOptions) -> Result<Self, LoadError> {
        let engine = LlamaEngine::load(options)?;
        let n = engine.parallel as usize;
        let n_batch = usize::try_from(engine.ctx.n_batch()).unwrap_or(1).max(1);
        Ok(Self {
            seqs: (0..n).map(|_| None).collect(),
            cached: vec![Vec::new(); n],
            batch: LlamaBatch::new(n_batch, i32::try_from(n).unwrap_or(i32::MAX)),
            engine,
        })
    }

    /// Frees what sequence `seq` holds in the KV cache after position `from` (all: 0).
    fn forget(&mut self, seq: usize, from: usize) {
        let id = u32::try_from(seq).ok();
        let p0 = u32::try_from(from).ok();
        if self.engine.ctx.clear_kv_cache_seq(id, p0, None).is_err() || from == 0 {
            let _ = self.engine.ctx.clear_kv_cache_seq(id, None, None);
            self.cached[seq].clear();
        } else {
            self.cached[seq].truncate(from);
        }
    }

    /// Ends sequence `seq` with `result`; on an error or a cancel its cache is dropped.
    fn end(&mut self, seq: usize, mut result: Result<Generation, EngineError>, out: &mut dyn BatchSink) {
        let Some(mut s) = self.seqs[seq].take() else {
            return;
        };
        if let Ok(g) = &mut result {
            s.text.finish();
            g.usage.generation_time = s.generating_since.map_or(Duration::ZERO, |t| t.elapsed());
            if g.finish == Finish::Cancelled {
                self.forget(seq, 0);
            }
        } else {
            self.forget(seq, 0);
        }
        out.done(seq, result);
    }
}

impl BatchEngine for LlamaBatchEngine {
    fn capacity(&self) -> usize {
        self.seqs.len()
    }

    fn embed(
        &mut self,
        texts: &[String],
        max_values: usize,
        cancel: &Cancel,
    ) -> Result<Embeddings, EngineError> {
        // Another context: the sequences' cells are not touched.
        self.engine.embeddings(texts, max_values, cancel)
    }

    fn count_tokens(&mut self, request: &EngineRequest<'_>, text: Option<&str>) -> Result<u32, EngineError> {
        self.engine.count(request, text)
    }

    fn admit(&mut self, seq: usize, request: &EngineRequest<'_>) -> Result<(), EngineError> {
        if self.seqs.get(seq).is_none_or(Option::is_some) {
            return Err(EngineError::Inference(format!(
                "sequence {seq} is busy or out of range"
            )));
        }
        let (prompt, dropped) = self.engine.fitted_prompt(request)?;
        // Before anything is evaluated: a constraint that does not compile fails here.
        let sampler = self.engine.sampler_for(request)?;
        let n_prompt = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        // The common prefix with what this sequence's cells hold is kept; the last prompt
        // token is always evaluated again (its logits start the answer).
        let common = if self.engine.prefix_cache {
            self.cached[seq]
                .iter()
                .zip(&prompt)
                .take_while(|(a, b)| a == b)
                .count()
        } else {
            0
        }
        .min(prompt.len() - 1);
        self.forget(seq, common);
        let common = self.cached[seq].len();
        let mut generation = Generation::new(Finish::Stop);
        generation.usage.prompt_tokens = n_prompt;
        generation.usage.cached_tokens = u32::try_from(common).unwrap_or(u32::MAX);
        generation.dropped_messages = dropped;
        let sampling = self.engine.sampling;
        let max_tokens = match (sampling.max_tokens, request.max_tokens) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.seqs[seq] = Some(Seq {
            prompt,
            next: common,
            feed: None,
            logits: None,
            sampler,
            text: Utf8Carry::default(),
            piece: Vec::new(),
            generation,
            max_tokens,
            admitted: Instant::now(),
            generating_since: None,
            held: false,
        });
        Ok(())
    }

    fn abort(&mut self, seq: usize) {
        if self.seqs.get_mut(seq).and_then(Option::take).is_some() {
            self.forget(seq, 0);
        }
    }

    fn hold(&mut self, seq: usize, held: bool) {
        if let Some(Some(s)) = self.seqs.get_mut(seq) {
            s.held = held;
        }
    }

    fn is_busy(&self) -> bool {
        self.seqs.iter().any(Option::is_some)
    }

    fn step(&mut self, out: &mut dyn BatchSink) {
        // Bounded: a retry follows dropping the idle caches (once) or ending a sequence.
        for _ in 0..=self.seqs.len() {
            if !self.is_busy() {
                return;
            }
            let saved: Vec<Option<(usize, Option<LlamaToken>)>> = self
                .seqs
                .iter()
                .map(|s| s.as_ref().map(|s| (s.next, s.feed)))
                .collect();
            let lens: Vec<usize> = self.cached.iter().map(Vec::len).collect();
            for (i, e) in self.fill_batch() {
                self.end(i, Err(EngineError::Inference(e)), out);
            }
            if self.batch.n_tokens() == 0 {
                return;
            }
            match self.engine.ctx.decode(&mut self.batch) {
                Ok(()) => return self.sample(out),
                // The cells the sequences share are all taken (llama.cpp left them as they
                // were): the prefix caches of idle sequences go first; when there are none,
                // the youngest held request leaves, else the youngest, so that the older ones
                // go on. The step is tried again.
                Err(DecodeError::NoKvCacheSlot) => {
                    for (i, saved) in saved.into_iter().enumerate() {
                        if let (Some(s), Some((next, feed))) = (self.seqs[i].as_mut(), saved) {
                            s.next = next;
                            s.feed = feed;
                        }
                        self.cached[i].truncate(lens[i]);
                    }
                    let idle: Vec<usize> = (0..self.seqs.len())
                        .filter(|&i| self.seqs[i].is_none() && !self.cached[i].is_empty())
                        .collect();
                    if !idle.is_empty() {
                        for i in idle {
                            self.forget(i, 0);
                        }
                        continue;
                    }
                    // A held request (its client is not reading) goes before one that is read.
                    let youngest = (0..self.seqs.len())
                        .filter_map(|i| self.seqs[i].as_ref().map(|s| (s.held, s.admitted, i)))
                        .max()
                        .map(|(_, _, i)| i);
                    if let Some(i) = youngest {
                        let message = format!(
                            "the KV cache the worker's requests share is full ({} cells); this \
                             request was ended so the others could go on: send it again, or start \
                             the worker with a larger --ctx or a smaller --parallel",
                            self.engine.ctx()
                        );
                        self.end(i, Err(EngineError::Inference(message)), out);
                    }
                }
                Err(e) => {
                    let message = format!("batched decode: {e}");
                    for i in 0..self.seqs.len() {
                        if self.seqs[i].is_some() {
                            self.end(i, Err(EngineError::Inference(message.clone())), out);
                        }
                    }
                    return;
                }
            }
        }
    }
}

impl LlamaBatchEngine {
    /// Fills the batch for one step: every generating sequence's last token, then prompt
    /// chunks in the room left. Returns the sequences that could not be added, with why.
    fn fill_batch(&mut self) -> Vec<(usize, String)> {
        let n_batch = usize::try_from(self.engine.ctx.n_batch()).unwrap_or(1).max(1);
        self.batch.clear();
        let mut failed: Vec<(usize, String)> = Vec::new();
        for s in self.seqs.iter_mut().flatten() {
            s.logits = None;
        }
        // Generating sequences first (one token each), then prompt chunks in what is left.
        let mut room = n_batch;
        for pass in [false, true] {
            for i in 0..self.seqs.len() {
                let Some(s) = self.seqs[i].as_mut() else { continue };
                let prompting = s.next < s.prompt.len();
                if prompting != pass || room == 0 || s.held {
                    continue;
                }
                let id = [i32::try_from(i).unwrap_or(i32::MAX)];
                let added = if let Some(token) = s.feed.take() {
                    let pos = self.cached[i].len();
                    to_pos(pos)
                        .and_then(|p| {
                            self.batch
                                .add(token, p, &id, true)
                                .map_err(|e| EngineError::Inference(e.to_string()))
                        })
                        .map(|()| {
                            self.cached[i].push(token);
                            room -= 1;
                            s.logits = Some(self.batch.n_tokens() - 1);
                        })
                } else if prompting {
                    let take = (s.prompt.len() - s.next).min(PROMPT_CHUNK).min(room);
                    let mut r = Ok(());
                    for k in s.next..s.next + take {
                        let last = k + 1 == s.prompt.len();
                        r = to_pos(k).and_then(|p| {
                            self.batch
                                .add(s.prompt[k], p, &id, last)
                                .map_err(|e| EngineError::Inference(e.to_string()))
                        });
                        if r.is_err() {
                            break;
                        }
                        self.cached[i].push(s.prompt[k]);
                        if last {
                            s.logits = Some(self.batch.n_tokens() - 1);
                        }
                    }
                    s.next += take;
                    room -= take;
                    r
                } else {
                    Ok(())
                };
                if let Err(e) = added {
                    failed.push((i, format!("batch: {e}")));
                }
            }
        }
        failed
    }

    /// After a decode: every sequence whose logits were asked for samples its next token,
    /// passes its text on, and ends when it is done.
    fn sample(&mut self, out: &mut dyn BatchSink) {
        let model = self.engine.model();
        let vocab = model.vocab();
        let ctx_len = usize::try_from(self.engine.ctx()).unwrap_or(usize::MAX);
        let ignore_eog = self.engine.sampling.ignore_eog;
        for i in 0..self.seqs.len() {
            let Some(s) = self.seqs[i].as_mut() else { continue };
            let Some(index) = s.logits.take() else { continue };
            if s.generating_since.is_none() {
                let now = Instant::now();
                s.generation.usage.prompt_time = now.saturating_duration_since(s.admitted);
                s.generating_since = Some(now);
            }
            if s.max_tokens == Some(0) {
                let mut g = s.generation;
                g.finish = Finish::Length;
                self.end(i, Ok(g), out);
                continue;
            }
            let token = match s.sampler.sample(&self.engine.ctx, index) {
                Ok(t) => t,
                Err(e) => {
                    self.end(i, Err(e), out);
                    continue;
                }
            };
            if !ignore_eog && vocab.is_eog(token) {
                let g = s.generation;
                self.end(i, Ok(g), out);
                continue;
            }
            s.generation.usage.generated_tokens += 1;
            s.piece.clear();
            vocab.token_to_piece_into(token, &mut s.piece, false, None);
            let chunk = s.text.push(&s.piece);
            let finish = if !chunk.is_empty() && !out.piece(i, &chunk) {
                Some(Finish::Cancelled)
            } else if s
                .max_tokens
                .is_some_and(|m| s.generation.usage.generated_tokens >= m)
                || self.cached[i].len() + 1 >= ctx_len
            {
                Some(Finish::Length)
            } else {
                s.feed = Some(token);
                None
            };
            if let Some(finish) = finish {
                let mut g = s.generation;
                g.finish = finish;
                self.end(i, Ok(g), out);
            }
        }
    }
}
