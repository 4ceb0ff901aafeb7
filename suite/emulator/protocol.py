"""OpenAI request parsing and response bodies for the emulator.

Emulated tokenizer rule: a token-id list counts exactly (one id = one token); text (string prompts, chat message
contents) counts one token per whitespace-separated word; chat templates add nothing. Output is exactly
max_tokens tokens (ignore_eos semantics); token i is the word " w<i>", so the text has as many words as tokens.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import orjson

DEFAULT_MAX_TOKENS = 16  # OpenAI's completions default, used when a request gives none


class ApiError(Exception):
    def __init__(self, message: str, status: int = 400, etype: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.etype, self.param = message, status, etype, param


def error_body(err: ApiError, style: str) -> bytes:
    """vLLM nests the error object; SGLang returns it flat with object=error."""
    inner = {"message": err.message, "type": err.etype, "param": err.param, "code": err.status}
    return orjson.dumps({"error": inner} if style == "nested" else {"object": "error", **inner})


def count_words(text: str) -> int:
    return len(text.split())


def _content_words(content) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_words(content)
    if isinstance(content, list):  # content parts
        return sum(count_words(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise ApiError("message content must be a string or a list of content parts", param="messages")


@dataclass
class Parsed:
    chat: bool
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    model: str
    body: dict


def parse_request(body: object, chat: bool, served_model: str, max_model_len: int) -> Parsed:
    if not isinstance(body, dict):
        raise ApiError("request body must be a JSON object")
    model = body.get("model", served_model)
    if model != served_model:
        raise ApiError(f"The model `{model}` does not exist.", status=404, etype="NotFoundError", param="model")
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise ApiError("messages must be a non-empty list of message objects", param="messages")
        n = sum(_content_words(m.get("content")) for m in msgs)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (list, str)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            n = count_words(prompt)
        elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            n = len(prompt)
        else:
            raise ApiError("prompt must be a string, a list of token ids, or a batch of one of those", param="prompt")
    if n < 1:
        raise ApiError("prompt must hold at least one token", param="prompt")
    mt = body.get("max_completion_tokens") if chat and body.get("max_completion_tokens") is not None \
        else body.get("max_tokens")
    if mt is None:
        mt = min(DEFAULT_MAX_TOKENS, max(1, max_model_len - n))
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        raise ApiError(f"max_tokens must be a positive integer, got {mt!r}", param="max_tokens")
    if n + mt > max_model_len:
        raise ApiError(f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                       f"{n + mt} tokens ({n} in the messages, {mt} in the completion).", param="max_tokens")
    if body.get("n", 1) != 1:
        raise ApiError("only n=1 is supported by the emulator", param="n")
    stream = bool(body.get("stream", False))
    opts = body.get("stream_options") or {}
    return Parsed(chat=chat, prompt_tokens=n, max_tokens=mt, stream=stream,
                  include_usage=bool(stream and isinstance(opts, dict) and opts.get("include_usage")),
                  model=served_model, body=body)


def token_text(i: int) -> str:
    return f" w{i}"


class Responder:
    """Builds the OpenAI chunks/bodies of one request (ids, created stamp, model fixed up front)."""

    def __init__(self, p: Parsed, request_id: str | None = None) -> None:
        self.p = p
        # vLLM's ids: cmpl-/chatcmpl- + the X-Request-Id header (a fresh uuid without one)
        self.id = ("chatcmpl-" if p.chat else "cmpl-") + (request_id or uuid.uuid4().hex)
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if p.chat else "text_completion"
        head = orjson.dumps({"id": self.id, "object": self.object, "created": self.created, "model": p.model})
        self._head = head[:-1]  # without the closing brace: chunks are appended as bytes (hot path)

    def usage(self, completion: int) -> dict:
        return {"prompt_tokens": self.p.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.p.prompt_tokens + completion}

    def chunk(self, i: int, last: bool) -> bytes:
        """SSE event for token i (chat: preceded by the assistant role delta on the first token)."""
        fin = b'"length"' if last else b"null"
        text = orjson.dumps(token_text(i))
        if self.p.chat:
            out = self.first_event() if i == 0 else b""
            return out + (b"data: " + self._head + b',"choices":[{"index":0,"delta":{"content":' + text +
                          b'},"logprobs":null,"finish_reason":' + fin + b"}]}\n\n")
        return (b"data: " + self._head + b',"choices":[{"index":0,"text":' + text +
                b',"logprobs":null,"finish_reason":' + fin + b',"stop_reason":null}]}\n\n')

    def token_template(self, last: bool) -> tuple[bytes, bytes]:
        """(pre, post) with chunk(i, last) == pre + b"%d" % i + post (chat token 0: first_event() before it).
        Lets the hot path build a token event with one bytes format instead of JSON serialisation."""
        fin = b'"length"' if last else b"null"
        if self.p.chat:
            return (b"data: " + self._head + b',"choices":[{"index":0,"delta":{"content":" w',
                    b'"},"logprobs":null,"finish_reason":' + fin + b"}]}\n\n")
        return (b"data: " + self._head + b',"choices":[{"index":0,"text":" w',
                b'","logprobs":null,"finish_reason":' + fin + b',"stop_reason":null}]}\n\n')

    def first_event(self) -> bytes:
        """What precedes token 0's event (chat: the assistant role delta)."""
        if not self.p.chat:
            return b""
        return (b"data: " + self._head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                b'"logprobs":null,"finish_reason":null}]}\n\n')

    def usage_chunk(self, completion: int) -> bytes:
        return b"data: " + self._head + b',"choices":[],"usage":' + orjson.dumps(self.usage(completion)) + b"}\n\n"

    def full(self, completion: int, extra: dict | None = None) -> dict:
        text = "".join(token_text(i) for i in range(completion))
        if self.p.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": "length"}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length", "stop_reason": None}
            obj = "text_completion"
        out = {"id": self.id, "object": obj, "created": self.created, "model": self.p.model, "choices": [choice],
               "usage": self.usage(completion)}
        return out | (extra or {})


def prompt_units(p: Parsed) -> list:
    """The prompt's tokens under the emulated tokenizer rule (ids as given, else words), for prefix hashing."""
    if p.chat:
        out: list = []
        for m in p.body["messages"]:
            c = m.get("content")
            if isinstance(c, str):
                out += c.split()
            elif isinstance(c, list):
                out += [w for part in c if isinstance(part, dict) and part.get("type") == "text"
                        for w in part.get("text", "").split()]
        return out
    prompt = p.body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (list, str)):
        prompt = prompt[0]
    return prompt.split() if isinstance(prompt, str) else list(prompt)
