"""HTTPChatLM against a stub OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lmrec.errors import ConfigError, LmrecError
from lmrec.llm.http import HTTPChatLM, LLMUnavailable
from lmrec.llm.lm import Generation

KEY = "sk-secret-123"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Next movie?"}]
COMPLETION = {
    "id": "cmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Heat (1995)"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
}


@dataclass
class Stub:
    """What the server answers next, and every request it received."""

    url: str
    status: int = 200
    body: bytes = json.dumps(COMPLETION).encode()
    delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def stub() -> Iterator[Stub]:
    state: Stub

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(raw)})
            if state.delay:
                state.release.wait(state.delay)
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = Stub(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_request_body_headers_and_generation(stub: Stub) -> None:
    lm = HTTPChatLM(stub.url, "qwen2.5-0.5b", api_key=KEY)
    out = lm.chat(MESSAGES, max_new_tokens=20, temperature=0.3)
    assert isinstance(out, Generation)
    assert out.text == "Heat (1995)" and out.tokens == 5 and 0 <= out.seconds < 5
    [request] = stub.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["body"] == {"model": "qwen2.5-0.5b", "messages": MESSAGES, "max_tokens": 20, "temperature": 0.3}
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert lm.name == f"qwen2.5-0.5b@{stub.url}"
    assert KEY not in repr(lm)


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_base_url_with_or_without_v1(stub: Stub, suffix: str) -> None:
    HTTPChatLM(stub.url + suffix, "m").chat(MESSAGES)
    assert [r["path"] for r in stub.requests] == ["/v1/chat/completions"]
    assert "Authorization" not in stub.requests[0]["headers"]  # no key, no header


def test_tokens_fall_back_to_words_without_usage(stub: Stub) -> None:
    stub.body = json.dumps({"choices": [{"message": {"content": "The Matrix  (1999)"}}]}).encode()
    out = HTTPChatLM(stub.url, "m").chat(MESSAGES)
    assert out.text == "The Matrix  (1999)" and out.tokens == 3


def test_client_error_is_config_error_with_server_message(stub: Stub) -> None:
    stub.status = 401
    stub.body = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}", "type": "auth"}}).encode()
    with pytest.raises(ConfigError, match="401") as raised:
        HTTPChatLM(stub.url, "m", api_key=KEY).chat(MESSAGES)
    assert "Incorrect API key provided" in str(raised.value)
    assert KEY not in str(raised.value)


def test_client_error_detail_shape(stub: Stub) -> None:
    stub.status = 404
    stub.body = json.dumps({"detail": "model 'nope' not found"}).encode()
    with pytest.raises(ConfigError, match="model 'nope' not found"):
        HTTPChatLM(stub.url, "nope").chat(MESSAGES)


def test_server_error_is_unavailable_naming_url_not_key(stub: Stub) -> None:
    stub.status = 500
    stub.body = b"internal error"
    with pytest.raises(LLMUnavailable) as raised:
        HTTPChatLM(stub.url, "m", api_key=KEY).chat(MESSAGES)
    message = str(raised.value)
    assert stub.url in message and "500" in message and KEY not in message
    assert isinstance(raised.value, LmrecError)


def test_closed_port_is_unavailable_naming_url_not_key() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(LLMUnavailable, match="cannot reach") as raised:
        HTTPChatLM(url, "m", api_key=KEY, timeout=2).chat(MESSAGES)
    assert url in str(raised.value) and KEY not in str(raised.value)


def test_timeout_is_unavailable(stub: Stub) -> None:
    stub.delay = 2.0
    with pytest.raises(LLMUnavailable, match=r"did not answer within 0\.2 s") as raised:
        HTTPChatLM(stub.url, "m", api_key=KEY, timeout=0.2).chat(MESSAGES)
    assert stub.url in str(raised.value) and KEY not in str(raised.value)


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        (b"<html>oops</html>", "not JSON"),
        (b'{"choices": []}', "choices[0].message.content"),
        (b'{"choices": [{"message": {}}]}', "choices[0].message.content"),
        (b'{"choices": [{"message": {"content": null}}]}', "choices[0].message.content"),
        (b"[1, 2]", "choices[0].message.content"),
    ],
)
def test_malformed_response_is_unavailable(stub: Stub, body: bytes, missing: str) -> None:
    stub.body = body
    with pytest.raises(LLMUnavailable, match=re.escape(missing)):
        HTTPChatLM(stub.url, "m").chat(MESSAGES)


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "file:///etc/passwd", "ftp://host/v1"])
def test_bad_base_url_is_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="http"):
        HTTPChatLM(url, "m")
