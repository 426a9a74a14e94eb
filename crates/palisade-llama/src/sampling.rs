//! Per-sequence token sampling: a greedy fast path and llama.cpp sampler chains
//! (top-k → top-p → temperature → seeded distribution).

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

/// The sampling parameters of one request, after validation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingSpec {
    /// 0 (or below) means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub seed: u32,
}

impl SamplingSpec {
    /// True when decoding is deterministic argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// The sampler owned by one sequence.
pub enum Sampler {
    /// Argmax straight from the logits row (no candidate array).
    Greedy,
    /// A llama.cpp sampler chain with its own RNG state.
    Chain(LlamaSampler),
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sampler::Greedy => f.write_str("Greedy"),
            Sampler::Chain(_) => f.write_str("Chain"),
        }
    }
}

impl Sampler {
    pub fn new(spec: &SamplingSpec) -> Self {
        if spec.is_greedy() {
            return Sampler::Greedy;
        }
        let mut stages = Vec::with_capacity(4);
        if spec.top_k > 0 {
            stages.push(LlamaSampler::top_k(
                i32::try_from(spec.top_k).unwrap_or(i32::MAX),
            ));
        }
        if spec.top_p > 0.0 && spec.top_p < 1.0 {
            stages.push(LlamaSampler::top_p(spec.top_p, 1));
        }
        stages.push(LlamaSampler::temp(spec.temperature));
        stages.push(LlamaSampler::dist(spec.seed));
        Sampler::Chain(LlamaSampler::chain(stages, true))
    }

    /// Samples the next token from the logits of batch position `idx` of the last decode.
    pub fn sample(&mut self, ctx: &LlamaContext<'_>, idx: i32) -> LlamaToken {
        match self {
            Sampler::Greedy => LlamaToken::new(argmax(ctx.get_logits_ith(idx))),
            // `llama_sampler_sample` also records the token in the chain's state.
            Sampler::Chain(chain) => chain.sample(ctx, idx),
        }
    }
}

/// Index of the largest value (the first one on ties), as llama.cpp's greedy sampler does.
pub fn argmax(logits: &[f32]) -> i32 {
    let mut best = 0usize;
    let mut best_val = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_val {
            best_val = v;
            best = i;
        }
    }
    i32::try_from(best).unwrap_or(0)
}

/// A seed for requests that did not give one.
pub fn random_seed() -> u32 {
    // u32::MAX means "random" inside llama.cpp; avoid it so the seed we report is the one used.
    loop {
        let seed = rand::random::<u32>();
        if seed != u32::MAX {
            return seed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_first_max() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn greedy_detection() {
        let spec = SamplingSpec {
            temperature: 0.0,
            top_p: 0.9,
            top_k: 40,
            seed: 1,
        };
        assert!(spec.is_greedy());
        assert!(SamplingSpec {
            temperature: 0.7,
            top_k: 1,
            ..spec
        }
        .is_greedy());
        assert!(!SamplingSpec {
            temperature: 0.7,
            ..spec
        }
        .is_greedy());
    }
}
