"""A :class:`~lmrec.llm.lm.ChatLM` served over HTTP by any OpenAI-compatible server.

vLLM (``vllm serve``), the llama.cpp server and Ollama all answer ``POST /v1/chat/completions``.
Only the standard library is used, so this needs no extra. Errors say which URL failed and never
carry the API key.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any

from lmrec.errors import ConfigError, LmrecError
from lmrec.llm.lm import Generation, Messages

#: Client errors that mean "try again later" rather than "fix the request".
_TRANSIENT_4XX = (408, 429)


class LLMUnavailable(LmrecError):
    """The LLM server could not be reached, failed, or answered with something unusable."""


class HTTPChatLM:
    """Chat completions from an OpenAI-compatible server at ``base_url`` (with or without ``/v1``)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        base = base_url.strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"LLM server URL {base_url!r} must start with http:// or https://")
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, not {timeout}")
        root = base[: -len("/v1")] if base.endswith("/v1") else base
        self.base_url, self.model, self.timeout = base, model, float(timeout)
        self.url = f"{root}/v1/chat/completions"
        self.name = f"{model}@{base}"
        self._api_key = api_key or None
        self._opener = urllib.request.build_opener()

    def __repr__(self) -> str:
        return f"HTTPChatLM({self.base_url!r}, {self.model!r})"  # no key

    def chat(self, messages: Messages, max_new_tokens: int = 64, temperature: float = 0.0) -> Generation:
        body = {"model": self.model, "messages": messages, "max_tokens": max_new_tokens, "temperature": temperature}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        started = time.perf_counter()
        raw = self._post(request)
        seconds = time.perf_counter() - started
        text, tokens = self._parse(raw)
        return Generation(text, tokens, seconds)

    def _post(self, request: urllib.request.Request) -> bytes:
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as e:
            detail = self._redact(_server_message(e))
            if 400 <= e.code < 500 and e.code not in _TRANSIENT_4XX:
                raise ConfigError(f"LLM server at {self.url} rejected the request (HTTP {e.code}): {detail}") from None
            raise LLMUnavailable(f"LLM server at {self.url} failed (HTTP {e.code}): {detail}") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise LLMUnavailable(f"LLM server at {self.url} did not answer within {self.timeout:g} s") from None
            raise LLMUnavailable(f"cannot reach LLM server at {self.url}: {self._redact(str(e.reason))}") from None
        except TimeoutError:
            raise LLMUnavailable(f"LLM server at {self.url} did not answer within {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as e:
            raise LLMUnavailable(f"LLM server at {self.url} broke the connection: {self._redact(repr(e))}") from None

    def _parse(self, raw: bytes) -> tuple[str, int]:
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            snippet = self._redact(raw[:200].decode("utf-8", "replace"))
            raise LLMUnavailable(
                f"LLM server at {self.url} answered with a body that is not JSON: {snippet!r}"
            ) from None
        try:
            text = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
        if not isinstance(text, str):
            raise LLMUnavailable(f"LLM server at {self.url} answered without choices[0].message.content")
        usage = payload.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            tokens = len(text.split())
        return text, tokens

    def _redact(self, text: str) -> str:
        """``text`` without the API key (servers sometimes echo a rejected key)."""
        return text.replace(self._api_key, "***") if self._api_key else text


def _server_message(error: urllib.error.HTTPError) -> str:
    """The error message in an HTTP error's body: OpenAI, vLLM, llama.cpp and Ollama shapes, else the text."""
    try:
        raw = error.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    text = raw.decode("utf-8", "replace").strip()
    try:
        payload: Any = json.loads(text)
    except json.JSONDecodeError:
        payload = None
    if isinstance(payload, dict):
        for key in ("error", "message", "detail"):
            value = payload.get(key)
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return str(value["message"])
            if isinstance(value, str):
                return value
    return text[:500] or str(error.reason)
