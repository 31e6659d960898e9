//! Requests through the request area: conversations, embeddings and token counts.

use super::{Client, RequestError, RequestOptions, Response};
use crate::protocol::{AreaRequest, Embeddings, Message, Prompts};
use crate::wire::layout::{KIND_CHAT, KIND_COUNT, KIND_EMBED};

/// What a request carries.
#[derive(Debug, Clone, Copy)]
pub(super) enum Body<'a> {
    /// Two prompts in the seed's fields.
    Prompts(Prompts<'a>),
    /// Records of a request of `KIND_*` in the request area.
    Area(u32, &'a AreaRequest),
}

impl Client {
    /// Answers the conversation `messages` (system, user and assistant messages, as many
    /// turns as the model's context holds), rendered with the model's chat template. A worker
    /// that keeps its prefix cache evaluates only what is new since the last turn (see
    /// [`Usage::cached_tokens`](crate::Usage::cached_tokens)).
    ///
    /// ```no_run
    /// use llama_shm::{Client, Message, RequestOptions};
    /// let mut client = Client::builder().spawn()?;
    /// let mut history = vec![Message::system("Be brief."), Message::user("Name a colour.")];
    /// let r = client.chat(&history, &RequestOptions::default())?;
    /// history.push(Message::assistant(r.text));
    /// history.push(Message::user("Another one."));
    /// let r = client.chat(&history, &RequestOptions::default())?;
    /// println!("{} ({} of {} prompt tokens cached)", r.text, r.usage.cached_tokens, r.usage.prompt_tokens);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Client::send_request`]; [`RequestError::PromptTooLong`] when the conversation does
    /// not fit (by [`RequestError::tokens_over`] tokens) unless
    /// [`RequestOptions::drop_oldest`] is set; [`RequestError::InvalidConstraint`] for a schema
    /// or grammar the worker cannot compile; [`RequestError::RequestTooLarge`] when the
    /// conversation does not fit the request area; [`RequestError::Unsupported`] from a worker
    /// without a request area.
    pub fn chat(&mut self, messages: &[Message], opts: &RequestOptions) -> Result<Response, RequestError> {
        let mut text = String::new();
        let mut r = self.send_chat(messages, opts, false, &mut |chunk| text.push_str(chunk))?;
        r.text = text;
        Ok(r)
    }

    /// [`Client::chat`] handing the answer to `on_chunk` piece by piece as it is generated.
    ///
    /// # Errors
    /// As [`Client::chat`].
    pub fn chat_stream(
        &mut self,
        messages: &[Message],
        opts: &RequestOptions,
        mut on_chunk: impl FnMut(&str),
    ) -> Result<Response, RequestError> {
        let mut text = String::new();
        let mut r = self.send_chat(messages, opts, true, &mut |chunk| {
            text.push_str(chunk);
            on_chunk(chunk);
        })?;
        r.text = text;
        Ok(r)
    }

    fn send_chat(
        &mut self,
        messages: &[Message],
        opts: &RequestOptions,
        stream: bool,
        on_chunk: &mut dyn FnMut(&str),
    ) -> Result<Response, RequestError> {
        let request = AreaRequest::chat(messages, opts.constraint.as_ref());
        self.exchange_body(Body::Area(KIND_CHAT, &request), opts, stream, on_chunk)
    }

    /// One vector per text, from the worker's embedding model (its own model unless it was
    /// started with another for embeddings), pooled as the model defines (mean over the
    /// tokens for a model that defines none) and L2-normalised. As many requests as the
    /// vectors need go out (each result must fit the request area).
    ///
    /// # Errors
    /// As [`Client::send_request`]; [`RequestError::Unsupported`] from an engine without
    /// embeddings or a worker without a request area; [`RequestError::RequestTooLarge`] for
    /// one text larger than the area; [`RequestError::Corrupt`] for a result that does not
    /// decode.
    pub fn embed(&mut self, texts: &[&str]) -> Result<Embeddings, RequestError> {
        let mut all = Embeddings::default();
        let mut next = 0;
        while next < texts.len() {
            // As many texts as the area takes (at least one: a text too large fails alone).
            let mut request = AreaRequest::default();
            let mut used = 0;
            for t in &texts[next..] {
                let len = t.len() + 8;
                if !request.texts.is_empty() && used + len > crate::wire::layout::AREA_LEN {
                    break;
                }
                used += len;
                request.texts.push((*t).to_owned());
            }
            self.exchange_body(
                Body::Area(KIND_EMBED, &request),
                &RequestOptions::default(),
                false,
                &mut |_| {},
            )?;
            let got = Embeddings::decode(&self.result).map_err(|_| RequestError::Corrupt)?;
            if got.count() == 0 || got.count() > request.texts.len() || (all.dim != 0 && got.dim != all.dim) {
                return Err(RequestError::Corrupt);
            }
            next += got.count();
            all.dim = got.dim;
            all.values.extend_from_slice(&got.values);
        }
        Ok(all)
    }

    /// How many tokens `text` is for the worker's model (no template, no special tokens).
    ///
    /// # Errors
    /// As [`Client::embed`].
    pub fn count_tokens(&mut self, text: &str) -> Result<u32, RequestError> {
        let request = AreaRequest {
            texts: vec![text.to_owned()],
            ..AreaRequest::default()
        };
        self.count(&request)
    }

    /// How many prompt tokens `messages` takes through the model's chat template (what
    /// [`Client::chat`] would evaluate), so a frontend can budget before it sends.
    ///
    /// # Errors
    /// As [`Client::embed`].
    pub fn count_conversation_tokens(&mut self, messages: &[Message]) -> Result<u32, RequestError> {
        self.count(&AreaRequest::chat(messages, None))
    }

    fn count(&mut self, request: &AreaRequest) -> Result<u32, RequestError> {
        let r = self.exchange_body(
            Body::Area(KIND_COUNT, request),
            &RequestOptions::default(),
            false,
            &mut |_| {},
        )?;
        Ok(r.usage.prompt_tokens)
    }
}
