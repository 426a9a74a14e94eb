//! The decoders of what model servers send: the OpenAI-compatible SSE body and Ollama's NDJSON
//! body, on arbitrary bytes cut into chunks of a size the input chooses. Nothing panics, and
//! every stream ends in exactly one terminal event (done or a typed error) with nothing after.
#![no_main]

use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use palisade_core::provider::{GenerationEvent, GenerationStream};

fn check(stream: GenerationStream) {
    let events: Vec<_> = futures::executor::block_on(stream.collect::<Vec<_>>());
    let terminal = |e: &Result<GenerationEvent, _>| {
        matches!(e, Err(_) | Ok(GenerationEvent::Done { .. }))
    };
    let last = events.last().expect("a stream always ends with an event");
    assert!(terminal(last), "the stream ended without done or an error");
    assert_eq!(
        events.iter().filter(|e| terminal(e)).count(),
        1,
        "more than one terminal event"
    );
}

fn chunks(data: &[u8], size: usize) -> Vec<Result<bytes::Bytes, std::io::Error>> {
    data.chunks(size.max(1))
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, body)) = data.split_first() else {
        return;
    };
    let size = usize::from(knob % 32) + 1;
    check(palisade_llm::openai::decode_stream(futures::stream::iter(chunks(body, size))));
    check(palisade_llm::ollama::decode_stream(futures::stream::iter(chunks(body, size))));
    // A transport error after the bytes: still one terminal event.
    let mut broken = chunks(body, size);
    broken.push(Err(std::io::Error::other("connection reset")));
    check(palisade_llm::openai::decode_stream(futures::stream::iter(broken)));
});
