#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::num::NonZeroU32;
use std::time::Instant;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

fn main() {
    let fa: i32 = std::env::var("FA").ok().and_then(|s| s.parse().ok()).unwrap_or(-1);
    let unified = std::env::var("UNIFIED").is_ok();
    let mut backend = LlamaBackend::init().unwrap();
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, palisade_llama::provision::default_model_path(), &LlamaModelParams::default()).unwrap();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(2048 * 8)).with_n_batch(512).with_n_ubatch(512).with_n_seq_max(8)
        .with_n_threads(2).with_n_threads_batch(2).with_kv_unified(unified)
        .with_flash_attention_policy(fa);
    let mut ctx = model.new_context(&backend, params).unwrap();
    let prompt = model.vocab().tokenize(b"<|im_start|>user\nWrite a long story about a dragon.<|im_end|>\n<|im_start|>assistant\n", false, true);
    for nseq in [1usize, 8, 1, 8] {
        ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(512, 1);
        for s in 0..nseq {
            for (i, t) in prompt.iter().enumerate() {
                batch.add(*t, i as i32, &[s as i32], i == prompt.len() - 1).unwrap();
            }
        }
        ctx.decode(&mut batch).unwrap();
        let mut pos = prompt.len() as i32;
        let steps = 128;
        let t0 = Instant::now();
        for _ in 0..steps {
            batch.clear();
            for s in 0..nseq {
                batch.add(LlamaToken::new(100 + s as i32), pos, &[s as i32], true).unwrap();
            }
            ctx.decode(&mut batch).unwrap();
            for s in 0..nseq { let _ = ctx.get_logits_ith(s as i32); }
            pos += 1;
        }
        let dt = t0.elapsed().as_secs_f64();
        println!("fa={fa} unified={unified} nseq={nseq}: {:.1} tok/s", (steps * nseq) as f64 / dt);
    }
}
