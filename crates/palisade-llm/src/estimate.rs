//! Token estimates for remote models (whose tokenizers we don't have) and fitting a
//! conversation into a context window: system messages and the newest turn always stay, the
//! oldest turns go first.

use palisade_core::provider::{PromptMessage, ProviderError, Role};

/// Per-message overhead of chat templates (role markers, separators).
const MESSAGE_OVERHEAD: u32 = 4;

/// A conservative estimate of the tokens in `text`: about four characters per token for
/// Latin text, one per character for scripts without spaces (CJK and the like).
pub fn estimate_text(text: &str) -> u32 {
    let mut ascii = 0u32;
    let mut other = 0u32;
    for c in text.chars() {
        if c.is_ascii() {
            ascii = ascii.saturating_add(1);
        } else {
            other = other.saturating_add(1);
        }
    }
    ascii.div_ceil(4).saturating_add(other)
}

/// Estimated tokens of a whole prompt.
pub fn estimate_messages(messages: &[PromptMessage]) -> u32 {
    messages
        .iter()
        .map(|m| estimate_text(&m.content).saturating_add(MESSAGE_OVERHEAD))
        .fold(2u32, u32::saturating_add)
}

/// Drops the oldest non-system turns until the prompt leaves `reserve` tokens of `context`
/// for the answer. Returns the number of messages dropped. Leading system messages and the
/// last message are always kept; when even they do not fit, the prompt is refused.
pub fn fit(
    messages: &mut Vec<PromptMessage>,
    context: u32,
    reserve: u32,
) -> Result<u32, ProviderError> {
    let budget = context.saturating_sub(reserve);
    let mut dropped = 0u32;
    loop {
        let tokens = estimate_messages(messages);
        if tokens <= budget {
            return Ok(dropped);
        }
        let first_turn = messages
            .iter()
            .position(|m| m.role != Role::System)
            .unwrap_or(messages.len());
        // Only the system messages and the newest turn are left.
        if first_turn + 1 >= messages.len() {
            return Err(ProviderError::ContextOverflow {
                tokens,
                limit: budget,
            });
        }
        messages.remove(first_turn);
        dropped += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: Role, n: usize) -> PromptMessage {
        PromptMessage {
            role,
            content: "abcd".repeat(n),
        }
    }

    #[test]
    fn estimates() {
        assert_eq!(estimate_text(""), 0);
        assert_eq!(estimate_text("abcd"), 1);
        assert_eq!(estimate_text("abcde"), 2);
        assert_eq!(estimate_text("日本語"), 3);
    }

    #[test]
    fn oldest_turns_go_first_and_the_newest_stays() {
        let mut msgs = vec![
            m(Role::System, 10),
            m(Role::User, 100),
            m(Role::Assistant, 100),
            m(Role::User, 10),
        ];
        let dropped = fit(&mut msgs, 100, 40).unwrap_or(99);
        assert_eq!(dropped, 2);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].role, Role::System);
        assert_eq!(msgs[1].content.len(), 40);
        // Untouched when it fits.
        let mut small = vec![m(Role::User, 1)];
        assert_eq!(fit(&mut small, 100, 10).ok(), Some(0));
        // Refused when the newest turn alone is too long.
        let mut huge = vec![m(Role::System, 1), m(Role::User, 1000)];
        assert!(matches!(
            fit(&mut huge, 100, 10),
            Err(ProviderError::ContextOverflow { .. })
        ));
    }
}
