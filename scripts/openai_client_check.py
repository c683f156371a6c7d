"""Drives `ember serve` with the official `openai` Python client.

Usage: python openai_client_check.py BASE_URL API_KEY MODEL
"""

import sys

import openai

base_url, api_key, model = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)

models = client.models.list()
assert [m.id for m in models.data] == [model], models

chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Hello"}],
    max_tokens=8,
    temperature=0,
)
choice = chat.choices[0]
assert choice.message.role == "assistant" and choice.message.content, chat
assert choice.finish_reason in ("stop", "length"), chat
assert chat.usage.completion_tokens <= 8 and chat.usage.prompt_tokens > 0, chat.usage

streamed = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Hello"}],
    max_tokens=8,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
chunks = list(streamed)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == choice.message.content, (text, choice.message.content)
assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens, chunks[-1]

full = client.completions.create(model=model, prompt="The government said", max_tokens=8, temperature=0, logprobs=2)
assert len(full.choices[0].logprobs.tokens) == full.usage.completion_tokens, full
stream = client.completions.create(model=model, prompt="The government said", max_tokens=8, temperature=0, stream=True)
assert "".join(c.choices[0].text for c in stream if c.choices) == full.choices[0].text

try:
    client.chat.completions.create(model="not-" + model, messages=[{"role": "user", "content": "Hi"}])
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError:
    pass
try:
    openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong API key was accepted")
except openai.AuthenticationError:
    pass

print(f"openai {openai.__version__}: chat {choice.message.content!r}, completion {full.choices[0].text!r}")
