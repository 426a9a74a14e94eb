"""Drives Palisade's /v1 API with the official `openai` Python SDK (run by
crates/palisade/tests/openai_sdk.rs with the venv of tests-fixtures/python/setup).

Usage: openai_sdk_check.py BASE_URL API_KEY CA_FILE MODEL
Prints one JSON object with what each check saw; the Rust test asserts on it.
"""
import json
import ssl
import sys

import httpx2
import openai

base_url, api_key, ca_file, model = sys.argv[1:5]


def client(key):
    return openai.OpenAI(
        base_url=base_url,
        api_key=key,
        max_retries=0,
        timeout=120,
        http_client=httpx2.Client(verify=ssl.create_default_context(cafile=ca_file)),
    )


c = client(api_key)
out = {"sdk_version": openai.__version__}

out["models"] = sorted(m.id for m in c.models.list())

r = c.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello in three words."}],
    max_tokens=12,
    temperature=0,
)
out["plain"] = {
    "object": r.object,
    "model": r.model,
    "content": r.choices[0].message.content,
    "role": r.choices[0].message.role,
    "finish_reason": r.choices[0].finish_reason,
    "prompt_tokens": r.usage.prompt_tokens,
    "completion_tokens": r.usage.completion_tokens,
    "total_tokens": r.usage.total_tokens,
}

pieces, usage, finish, chunks = [], None, None, 0
stream = c.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Count from one to five."}],
    max_completion_tokens=16,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    chunks += 1
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
out["stream"] = {"text": "".join(pieces), "usage": usage, "finish_reason": finish, "chunks": chunks}


def error_of(fn):
    try:
        fn()
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return {"class": type(e).__name__, "status": e.status_code, "code": body.get("code")}
    except Exception as e:  # noqa: BLE001 - reported, the test fails on it
        return {"class": type(e).__name__, "status": None, "code": str(e)[:200]}
    return {"class": None, "status": None, "code": None}


out["bad_key"] = error_of(
    lambda: client("pk_not_a_real_key").chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
)
out["unknown_model"] = error_of(
    lambda: c.chat.completions.create(model="gpt-99-ultra", messages=[{"role": "user", "content": "hi"}])
)
out["oversized"] = error_of(
    lambda: c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "word " * 6000}]
    )
)
out["n_2"] = error_of(
    lambda: c.chat.completions.create(model=model, n=2, messages=[{"role": "user", "content": "hi"}])
)
print(json.dumps(out))
