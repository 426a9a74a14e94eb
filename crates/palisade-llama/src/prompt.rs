//! Building the prompt: the model's own chat template, tokenization that keeps user text from
//! forging control tokens, and dropping the oldest history turns to fit the context window.
//!
//! The template is rendered with unique placeholder strings instead of the message contents.
//! The template's own text (role markers such as `<|im_start|>`) is tokenized with special-token
//! parsing; every message content is tokenized as plain text, so a user typing `<|im_end|>`
//! cannot end their turn or open a system turn.

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use palisade_core::provider::{PromptMessage, ProviderError, Role};

/// Contents larger than this are refused outright (llama.cpp tokenizes at most 2 GiB).
const MAX_CONTENT_BYTES: usize = 1 << 30;

const SENTINEL_OPEN: char = '\u{E000}';
const SENTINEL_CLOSE: char = '\u{E001}';

/// A tokenized prompt ready for the scheduler.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    pub tokens: Vec<LlamaToken>,
    /// Oldest history messages dropped to make it fit.
    pub truncated_turns: u32,
}

/// Renders conversations with the model's chat template.
#[derive(Debug, Clone)]
pub struct PromptFormatter {
    template: LlamaChatTemplate,
}

impl PromptFormatter {
    /// Uses the template from the GGUF metadata, or ChatML when the model has none or llama.cpp
    /// does not support it.
    pub fn for_model(model: &LlamaModel) -> Result<Self, String> {
        let from_model = match model.chat_template(None) {
            Ok(t) if Self::probe(model, &t) => Some(t),
            Ok(_) => {
                tracing::warn!(
                    "llama.cpp does not support the model's chat template; using ChatML"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "the model has no chat template; using ChatML");
                None
            }
        };
        let template = match from_model {
            Some(t) => t,
            None => LlamaChatTemplate::new("chatml").map_err(|e| e.to_string())?,
        };
        Ok(Self { template })
    }

    fn probe(model: &LlamaModel, template: &LlamaChatTemplate) -> bool {
        let msgs: Vec<LlamaChatMessage> = [("system", "s"), ("user", "u"), ("assistant", "a")]
            .iter()
            .filter_map(|(r, c)| LlamaChatMessage::new((*r).into(), (*c).into()).ok())
            .collect();
        model.apply_chat_template(template, &msgs, true).is_ok()
    }

    /// Tokenizes `messages`, dropping the oldest non-system turns (never the last message) until
    /// the prompt plus `reserve` output tokens fit in `context` tokens.
    pub fn prepare(
        &self,
        model: &LlamaModel,
        messages: &[PromptMessage],
        context: u32,
        reserve: u32,
    ) -> Result<PreparedPrompt, ProviderError> {
        let Some(last) = messages.len().checked_sub(1) else {
            return Err(ProviderError::InvalidRequest(
                "the conversation has no messages".into(),
            ));
        };
        if messages.iter().any(|m| m.content.len() > MAX_CONTENT_BYTES) {
            return Err(ProviderError::InvalidRequest(
                "a message is too large".into(),
            ));
        }
        let budget = context.saturating_sub(reserve) as usize;
        let mut tok = Tokenizer::new(model, messages);

        // Fast refusal: even the system prompt(s) and the last message do not fit.
        let minimal: Vec<usize> = (0..messages.len())
            .filter(|&i| i == last || messages[i].role == Role::System)
            .collect();
        let minimal_tokens = self.build(model, messages, &minimal, &mut tok)?;
        if minimal_tokens.len() > budget {
            return Err(ProviderError::ContextOverflow {
                tokens: saturating_u32(minimal_tokens.len()),
                limit: saturating_u32(budget),
            });
        }
        if minimal.len() == messages.len() {
            return Ok(PreparedPrompt {
                tokens: minimal_tokens,
                truncated_turns: 0,
            });
        }

        let droppable: Vec<usize> = (0..last)
            .filter(|&i| messages[i].role != Role::System)
            .collect();
        let mut dropped = vec![false; messages.len()];
        let mut next = 0;
        loop {
            if next >= droppable.len() {
                return Ok(PreparedPrompt {
                    tokens: minimal_tokens,
                    truncated_turns: saturating_u32(droppable.len()),
                });
            }
            let kept: Vec<usize> = (0..messages.len()).filter(|&i| !dropped[i]).collect();
            let tokens = self.build(model, messages, &kept, &mut tok)?;
            if tokens.len() <= budget {
                return Ok(PreparedPrompt {
                    tokens,
                    truncated_turns: saturating_u32(next),
                });
            }
            dropped[droppable[next]] = true;
            next += 1;
            // Keep the remaining history starting with a user turn.
            while next < droppable.len() && messages[droppable[next]].role == Role::Assistant {
                dropped[droppable[next]] = true;
                next += 1;
            }
        }
    }

    /// Renders and tokenizes the messages at indices `kept`.
    fn build(
        &self,
        model: &LlamaModel,
        messages: &[PromptMessage],
        kept: &[usize],
        tok: &mut Tokenizer<'_>,
    ) -> Result<Vec<LlamaToken>, ProviderError> {
        let chat = kept
            .iter()
            .map(|&i| {
                LlamaChatMessage::new(
                    messages[i].role.as_str().to_string(),
                    tok.sentinel(i).to_string(),
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ProviderError::Internal(format!("chat message: {e}")))?;
        let rendered = model
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| ProviderError::Internal(format!("chat template: {e}")))?;

        let mut out = Vec::with_capacity(tok.content_token_estimate(kept) + 16 * kept.len());
        for segment in split_segments(&rendered, &tok.sentinel_prefix) {
            match segment {
                Segment::Template(text) => tok.template_tokens(text, &mut out),
                Segment::Content(i) if i < messages.len() => out.extend_from_slice(tok.content(i)),
                Segment::Content(_) => {
                    return Err(ProviderError::Internal(
                        "chat template produced an unknown placeholder".into(),
                    ))
                }
            }
        }
        if tok.add_bos && out.first() != Some(&tok.bos) {
            out.insert(0, tok.bos);
        }
        Ok(out)
    }
}

/// Per-request tokenization state: message contents are tokenized once and cached.
struct Tokenizer<'a> {
    model: &'a LlamaModel,
    messages: &'a [PromptMessage],
    sentinel_prefix: String,
    sentinels: Vec<String>,
    contents: Vec<Option<Vec<LlamaToken>>>,
    add_bos: bool,
    bos: LlamaToken,
}

impl<'a> Tokenizer<'a> {
    fn new(model: &'a LlamaModel, messages: &'a [PromptMessage]) -> Self {
        let nonce: u64 = rand::random();
        let sentinel_prefix = format!("{SENTINEL_OPEN}{nonce:016x}#");
        let sentinels = (0..messages.len())
            .map(|i| format!("{sentinel_prefix}{i}{SENTINEL_CLOSE}"))
            .collect();
        let vocab = model.vocab();
        Self {
            model,
            messages,
            sentinel_prefix,
            sentinels,
            contents: vec![None; messages.len()],
            add_bos: vocab.should_add_bos(),
            bos: vocab.bos(),
        }
    }

    fn sentinel(&self, i: usize) -> &str {
        self.sentinels.get(i).map_or("", String::as_str)
    }

    fn content(&mut self, i: usize) -> &[LlamaToken] {
        let model = self.model;
        let text = self.messages.get(i).map_or("", |m| m.content.as_str());
        match self.contents.get_mut(i) {
            Some(slot) => slot
                .get_or_insert_with(|| model.vocab().tokenize(text.as_bytes(), false, false))
                .as_slice(),
            None => &[],
        }
    }

    fn content_token_estimate(&self, kept: &[usize]) -> usize {
        kept.iter()
            .filter_map(|&i| self.contents.get(i).and_then(Option::as_ref))
            .map(Vec::len)
            .sum()
    }

    fn template_tokens(&self, text: &str, out: &mut Vec<LlamaToken>) {
        if !text.is_empty() {
            self.model
                .vocab()
                .tokenize_into(text.as_bytes(), out, false, true);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Segment<'a> {
    Template(&'a str),
    Content(usize),
}

/// Splits a rendered template into template text and content placeholders.
fn split_segments<'a>(rendered: &'a str, prefix: &str) -> Vec<Segment<'a>> {
    let mut out = Vec::new();
    let mut rest = rendered;
    while let Some(start) = rest.find(prefix) {
        let after = &rest[start + prefix.len()..];
        let Some(end) = after.find(SENTINEL_CLOSE) else {
            break;
        };
        let Ok(index) = after[..end].parse::<usize>() else {
            break;
        };
        if start > 0 {
            out.push(Segment::Template(&rest[..start]));
        }
        out.push(Segment::Content(index));
        rest = &after[end + SENTINEL_CLOSE.len_utf8()..];
    }
    if !rest.is_empty() {
        out.push(Segment::Template(rest));
    }
    out
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_split_around_placeholders() {
        let p = "\u{E000}00ab#";
        let rendered =
            format!("<|im_start|>system\n{p}0\u{E001}<|im_end|>\n<|im_start|>user\n{p}1\u{E001}<|im_end|>\n");
        assert_eq!(
            split_segments(&rendered, p),
            vec![
                Segment::Template("<|im_start|>system\n"),
                Segment::Content(0),
                Segment::Template("<|im_end|>\n<|im_start|>user\n"),
                Segment::Content(1),
                Segment::Template("<|im_end|>\n"),
            ]
        );
    }

    #[test]
    fn segments_without_placeholders() {
        assert_eq!(
            split_segments("abc", "\u{E000}x#"),
            vec![Segment::Template("abc")]
        );
        assert_eq!(split_segments("", "\u{E000}x#"), vec![]);
    }
}
