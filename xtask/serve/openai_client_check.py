"""Drives a running `llmjp serve` with the official `openai` Python client.

    llmjp serve --model DIR --port 8080 [--api-key KEY] &
    python3 xtask/serve/openai_client_check.py http://127.0.0.1:8080/v1 [KEY]

Checks chat (whole and streamed, with usage), completions, models and the error mapping
(the client raises the typed exceptions OpenAI's API would). Needs `pip install openai`.
"""

import sys

import openai
from openai import OpenAI

base_url = sys.argv[1]
key = sys.argv[2] if len(sys.argv) > 2 else "unused"
client = OpenAI(base_url=base_url, api_key=key, max_retries=0)

models = client.models.list()
model = models.data[0].id
print("models:", [m.id for m in models.data])

messages = [{"role": "user", "content": "自然言語処理とは何か"}]
answer = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
text = answer.choices[0].message.content
assert answer.object == "chat.completion" and answer.choices[0].finish_reason in ("stop", "length")
assert answer.usage.completion_tokens <= 8 and answer.usage.total_tokens == (
    answer.usage.prompt_tokens + answer.usage.completion_tokens
)
print("chat:", repr(text), answer.usage)

streamed, usage = "", None
for chunk in client.chat.completions.create(
    model=model, messages=messages, max_tokens=8, temperature=0, stream=True,
    stream_options={"include_usage": True},
):
    if chunk.choices:
        streamed += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
assert streamed == text, (streamed, text)
assert usage is not None and usage.completion_tokens == answer.usage.completion_tokens
print("stream: same text; cached prompt tokens:", usage.prompt_tokens_details.cached_tokens)

completion = client.completions.create(model=model, prompt="昔々", max_tokens=5, temperature=0,
                                       extra_body={"repetition_penalty": 1.0, "top_k": 0})
print("completion:", repr(completion.choices[0].text), completion.usage)

for call, expected in [
    (lambda: client.chat.completions.create(model="other", messages=messages), openai.NotFoundError),
    (lambda: client.chat.completions.create(model=model, messages=messages, temperature=5),
     openai.BadRequestError),
    (lambda: client.chat.completions.create(model=model, messages=messages, n=2), openai.BadRequestError),
]:
    try:
        call()
    except expected as e:
        print("error:", type(e).__name__, e.status_code, e.body.get("code") if isinstance(e.body, dict) else e.body)
    else:
        raise AssertionError(f"expected {expected.__name__}")

if len(sys.argv) > 2:
    try:
        OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    except openai.AuthenticationError as e:
        print("error:", type(e).__name__, e.status_code)
    else:
        raise AssertionError("expected AuthenticationError")
print("ok")
