"""`make serve` (`python -m training.release.serve`) over loopback with a real HTTP client: a tiny release
(a random Llama with a kiln tokenizer, its GGUF files as the gguf_model asset writes them) under
releases/LATEST, the server in a subprocess, then models, completions, bad requests, a concurrent
burst, and a new release picked up after a restart. Plus the start-up errors, as a table."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from training.release import serve
from training.config import GgufConfig, ModelConfig, TokenizerConfig
from training.release.gguf import export_and_check
from training.pretrain.model import build_model, llama_config
from training.release.package import assemble_model
from training.curriculum.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
MODEL = ModelConfig(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128, max_seq_len=64)
FIRST, SECOND = "20261123-090000-aaaaaaaa", "20261123-100000-bbbbbbbb"
READY_S = 60
"""Bound on the server's start-up (imports and model load take a few seconds)."""


def make_release(releases: Path, version: str, tokenizer_dir: Path, seed: int) -> Path:
    """A release folder as kiln writes one (the parts serving reads): the Hugging Face model and gguf/."""
    work = releases.parent / f"work-{version}"
    torch.manual_seed(seed)
    build_model(llama_config(MODEL, AutoTokenizer.from_pretrained(tokenizer_dir))).save_pretrained(work / "weights")
    release = releases / version
    assemble_model(work / "weights", tokenizer_dir, release)
    cfg = GgufConfig()
    export_and_check(release, release / "gguf", ["def main():\n    return 1", "The river ran"], cfg.file_types,
                     {t: cfg.tolerance_of(t) for t in cfg.file_types})
    (releases / "LATEST").write_text(version)
    return release


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: bytes | dict | None = None, timeout: float = 60, method: str | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Server:
    """`python -m training.release.serve` on a free loopback port, KILN_DATA_DIR = `data`."""

    def __init__(self, data: Path, log: Path):
        self.data, self.log, self.proc = data, log, None

    def start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
        env |= {"KILN_DATA_DIR": str(self.data), "KILN_SERVE_PORT": str(self.port)}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "training.release.serve"], cwd=ROOT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if request(self.url + "/v1/models", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"the server did not answer within {READY_S} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("serve")
    train_tokenizer([t for t in topics.values() if len(t) > 200], TokenizerConfig(vocab_size=512), root / "tokenizer")
    data = root / "data"
    make_release(data / "releases", FIRST, root / "tokenizer", seed=0)
    s = Server(data, root / "server.log")
    s.tokenizer_dir = root / "tokenizer"
    try:
        s.start()
        yield s
    finally:
        s.stop()


def complete(server: Server, prompt: str, max_tokens: int = 8, temperature: float = 0) -> dict:
    status, out = request(server.url + "/v1/completions", {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature})
    assert status == 200, out
    return out


@pytest.mark.slow
def test_models_lists_the_release(server):
    status, out = request(server.url + "/v1/models")
    assert status == 200
    assert [m["id"] for m in out["data"]] == [FIRST]


@pytest.mark.slow
@pytest.mark.parametrize("body", [{"prompt": "def main():"}, {"prompt": ["def main():"], "model": FIRST}], ids=["no-model", "named"])
def test_a_completion_is_answered_as_the_release_within_max_tokens(server, body):
    """A request names the release version as its model, or no model (without kiln's checks the
    server would answer with the GGUF file's path); a list of one prompt is that prompt."""
    status, out = request(server.url + "/v1/completions", body | {"max_tokens": 8, "temperature": 0})
    assert status == 200, out
    assert out["model"] == FIRST and 1 <= out["usage"]["completion_tokens"] <= 8


PROMPT = "the " * 20


def prompt_tokens(server: Server, prompt: str) -> int:
    """Tokens the model sees for `prompt`: <|begin_of_text|> and the prompt, by transformers' tokenizer."""
    return 1 + len(AutoTokenizer.from_pretrained(server.tokenizer_dir)(prompt, add_special_tokens=False)["input_ids"])


@pytest.mark.slow
@pytest.mark.parametrize("max_tokens, generated", [({}, 16), ({"max_tokens": None}, "room"), ({"max_tokens": "room"}, "room")])
def test_generation_stays_within_the_context(server, max_tokens, generated):
    """By default 16 tokens, up to the end of the context for max_tokens null, and an explicit request
    that just fits. <|end_of_text|> (id 3) is biased away: a random model could end early otherwise."""
    n = prompt_tokens(server, PROMPT)
    room = MODEL.max_seq_len - n
    assert 16 < room < MODEL.max_seq_len - 1
    body = {"prompt": PROMPT, "temperature": 0, "logit_bias": {"3": -100}} | {k: room if v == "room" else v for k, v in max_tokens.items()}
    status, out = request(server.url + "/v1/completions", body)
    assert status == 200, out
    generated = room if generated == "room" else generated
    assert out["usage"] == {"prompt_tokens": n, "completion_tokens": generated, "total_tokens": n + generated}


COMPLETION_ROUTES = ["/v1/completions", "/v1/engines/copilot-codex/completions"]


@pytest.mark.slow
@pytest.mark.parametrize("route", COMPLETION_ROUTES, ids=["completions", "copilot-codex"])
@pytest.mark.parametrize(
    "prompt, max_tokens, message",
    [
        (PROMPT * 4, 1, "the prompt is {n} tokens (with <|begin_of_text|>), the model's context 64 tokens: shorten the prompt"),
        (PROMPT, "room + 1", "the prompt ({n} tokens) and max_tokens ({m}) exceed the model's context of 64 tokens: ask for at most {room}"),
    ],
    ids=["prompt", "prompt-and-max-tokens"],
)
def test_requests_beyond_the_context_get_a_clear_400(server, route, prompt, max_tokens, message):
    """On every route that generates."""
    n = prompt_tokens(server, prompt)
    room = MODEL.max_seq_len - n
    body = {"prompt": prompt, "max_tokens": max_tokens if isinstance(max_tokens, int) else room + 1}
    status, out = request(server.url + route, body)
    assert status == 400 and out["error"]["code"] == "context_length_exceeded", out
    assert out["error"]["message"] == message.format(n=n, room=room, m=body["max_tokens"])


# Every route the server answers, and what it answers; any other path is a 404, before llama-cpp-python.
CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
REFUSED = {"model": FIRST, "messages": [{"role": "user", "content": "the " * 200}], "max_tokens": 1000}  # past the context too


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, path, body, status, code",
    [
        ("GET", "/v1/models", None, 200, None),
        ("POST", "/v1/completions", {"prompt": "def", "max_tokens": 2}, 200, None),
        ("POST", "/v1/completions/", {"prompt": "def", "max_tokens": 2}, 200, None),
        ("POST", "/v1/engines/copilot-codex/completions", {"prompt": "def", "max_tokens": 2}, 200, None),
        ("POST", "/v1/engines/copilot-codex/completions", {"prompt": "def", "max_tokens": "2"}, 400, None),
        ("POST", "/v1/engines/copilot-codex/completions", {"prompt": "def", "model": "gpt-4"}, 404, "model_not_found"),
        ("POST", "/v1/chat/completions", CHAT, 400, "base_model"),
        ("POST", "/v1/chat/completions", REFUSED, 400, "base_model"),
        ("POST", "/v1/embeddings", {"input": "def"}, 404, "not_found"),
        ("POST", "/extras/tokenize", {"input": "def"}, 404, "not_found"),
        ("POST", "/extras/tokenize/count", {"input": "def"}, 404, "not_found"),
        ("POST", "/extras/detokenize", {"tokens": [1, 2]}, 404, "not_found"),
        ("POST", "/v1/engines/davinci/completions", {"prompt": "def"}, 404, "not_found"),
        ("GET", "/docs", None, 404, "not_found"),
        ("GET", "/openapi.json", None, 404, "not_found"),
        ("GET", "/", None, 404, "not_found"),
        ("GET", "/v1/completions", None, 405, "method_not_allowed"),
        ("POST", "/v1/models", {}, 405, "method_not_allowed"),
        ("DELETE", "/v1/models", None, 405, "method_not_allowed"),
    ],
)
def test_every_route(server, method, path, body, status, code):
    got, out = request(server.url + path, body, method=method)
    assert got == status, out
    if status == 200:
        assert out.get("model", FIRST) == FIRST and ("choices" in out or "data" in out), out
    else:
        assert out["error"]["code"] == code and out["error"]["message"], out
    if code == "base_model":
        assert out["error"]["message"].startswith(f"release {FIRST} is a base model") and "POST /v1/completions" in out["error"]["message"]
    if code == "not_found":
        assert "this server answers GET /v1/models, POST /v1/completions" in out["error"]["message"]


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.mark.slow
def test_the_openai_sdk_lists_the_model_and_completes(server, client):
    assert [m.id for m in client.models.list()] == [FIRST]
    done = client.completions.create(model=FIRST, prompt="def main():", max_tokens=8, temperature=0)
    assert done.model == FIRST and 1 <= done.usage.completion_tokens <= 8 and isinstance(done.choices[0].text, str)
    # Streamed, the same text as in one answer (greedy decoding), token by token.
    parts = list(client.completions.create(model=FIRST, prompt="def main():", max_tokens=8, temperature=0, stream=True))
    assert len(parts) > 1 and "".join(p.choices[0].text for p in parts if p.choices) == done.choices[0].text


@pytest.mark.slow
@pytest.mark.parametrize(
    "call, error, code",
    [
        (lambda c: c.completions.create(model=FIRST, prompt=PROMPT * 4, max_tokens=4), "BadRequestError", "context_length_exceeded"),
        (lambda c: c.completions.create(model=FIRST, prompt=PROMPT, max_tokens=60, stream=True), "BadRequestError",
         "context_length_exceeded"),
        (lambda c: c.completions.create(model="gpt-3.5-turbo-instruct", prompt="def"), "NotFoundError", "model_not_found"),
        (lambda c: c.chat.completions.create(model=FIRST, messages=[{"role": "user", "content": "Hi"}]), "BadRequestError",
         "base_model"),
        (lambda c: c.embeddings.create(model=FIRST, input="def"), "NotFoundError", "not_found"),
    ],
    ids=["past-context", "past-context-streamed", "other-model", "chat", "embeddings"],
)
def test_the_openai_sdk_gets_a_clear_error(client, call, error, code):
    import openai

    with pytest.raises(openai.APIStatusError) as refused:
        call(client)
    assert type(refused.value).__name__ == error and refused.value.code == code, refused.value


@pytest.mark.slow
@pytest.mark.parametrize(
    "body, message",
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        ({"max_tokens": 4}, "prompt is required"),
        ({"prompt": 17}, "prompt must be a string"),
        ({"prompt": ["a", "b"]}, "one prompt per request"),
        ({"prompt": "a", "max_tokens": -1}, "max_tokens must be an integer from 1 to 64"),
        ({"prompt": "a", "max_tokens": "16"}, 'max_tokens must be an integer from 1 to 64 (the model\'s context length), not "16"'),
        ({"prompt": "a", "max_tokens": 1.5}, "max_tokens must be an integer"),
        ({"prompt": "a", "max_tokens": True}, "max_tokens must be an integer"),
        ({"prompt": "a", "max_tokens": 65}, "max_tokens must be an integer from 1 to 64"),
        ({"prompt": "a", "temperature": "hot"}, "temperature must be a number"),
        ({"prompt": "a", "temperature": -1}, "temperature must be a number from 0 to 2"),
        ({"prompt": "a", "top_p": "high"}, "top_p"),  # the server's own schema, reported the same way
        ({"prompt": "a", "suffix": "b"}, "suffix is not supported"),
        ({"prompt": "a", "model": "20200101-000000-00000000"}, "model '20200101-000000-00000000' is not served here"),
    ],
)
def test_bad_requests_get_a_clear_4xx(server, body, message):
    status, out = request(server.url + "/v1/completions", body)
    assert 400 <= status < 500, (status, out)
    assert message in out["error"]["message"], out


@pytest.mark.slow
def test_a_concurrent_burst_is_answered(server):
    prompts = ["def main():", "The river", "import os", "class A:", "for i in", "x = 1", "Once", "return"]
    expected = [complete(server, p)["choices"][0]["text"] for p in prompts]
    start = time.monotonic()
    with ThreadPoolExecutor(len(prompts)) as pool:
        burst = list(pool.map(lambda p: request(server.url + "/v1/completions",
                                                {"prompt": p, "max_tokens": 8, "temperature": 0}, timeout=60), prompts))
    assert time.monotonic() - start < 60  # a bound against a hang, not a speed claim
    assert [status for status, _ in burst] == [200] * len(prompts)
    # Each answer is its own prompt's, as when asked one at a time.
    assert [out["choices"][0]["text"] for _, out in burst] == expected


@pytest.mark.slow
def test_a_new_release_is_served_after_restart(server):
    server.stop()
    make_release(server.data / "releases", SECOND, server.tokenizer_dir, seed=1)
    server.start()
    assert [m["id"] for m in request(server.url + "/v1/models")[1]["data"]] == [SECOND]
    assert complete(server, "def main():")["model"] == SECOND


@pytest.mark.parametrize(
    "value, expected",
    [(None, 8000), ("", 8000), ("8123", 8123), (" 9000 ", 9000), ("65535", 65535), ("1", 1),
     ("http", "must be a port number (1-65535), not 'http'"), ("80.5", "not '80.5'"),
     ("0", "not 0"), ("65536", "not 65536"), ("-1", "not -1")],
)
def test_serve_port(value, expected):
    if isinstance(expected, int):
        assert serve.serve_port(value) == expected
    else:
        with pytest.raises(serve.ServeError, match=f"^KILN_SERVE_PORT .*{re.escape(expected)}$"):
            serve.serve_port(value)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    "layout, error",
    [
        ({}, "no release to serve: .*releases/LATEST does not exist; run `make demo`"),
        ({"releases/LATEST": "20261123-090000-aaaaaaaa"}, "names '20261123-090000-aaaaaaaa', which is not a release folder.*make demo"),
        ({"releases/LATEST": "\n"}, "names '', which is not a release folder"),
        ({"releases/LATEST": "..", "x": ""}, "names '..', which is not a release folder"),
        ({"releases/LATEST": "v1", "releases/v1/config.json": "{}"}, "release v1 has no GGUF files .*gguf.json is missing.*make demo"),
        ({"releases/LATEST": "v1", "releases/v1/gguf/gguf.json": "{"}, "gguf.json is unreadable"),
        ({"releases/LATEST": "v1", "releases/v1/gguf/gguf.json": '{"files": {"kiln-f32.gguf": {"file_type": "f32"}}}'},
         "release v1 has no q8_0 or f32 GGUF file"),  # listed, but the file is not there
        ({"releases/LATEST": "v1", "releases/v1/gguf/gguf.json": '{"files": {"kiln-f32.gguf": {"file_type": "f32"}}}',
          "releases/v1/gguf/kiln-f32.gguf": "GGUF"}, "v1/config.json gives no context length"),
    ],
)
def test_release_resolution_errors(tmp_path, layout, error):
    for rel, text in layout.items():
        _write(tmp_path / rel, text)
    with pytest.raises(serve.ServeError, match=error):
        serve.resolve(tmp_path)


def test_release_resolution_picks_the_file_type(tmp_path):
    files = {"kiln-f32.gguf": {"file_type": "f32"}, "kiln-q8_0.gguf": {"file_type": "q8_0"}}
    _write(tmp_path / "releases/LATEST", "v1\n")
    _write(tmp_path / "releases/v1/config.json", json.dumps({"max_position_embeddings": 256}))
    _write(tmp_path / "releases/v1/gguf/gguf.json", json.dumps({"files": files}))
    for name in files:
        _write(tmp_path / "releases/v1/gguf" / name, "GGUF")
    default = serve.resolve(tmp_path)
    assert (default.version, default.gguf.name, default.context) == ("v1", f"kiln-{serve.FILE_TYPES[0]}.gguf", 256)
    assert serve.resolve(tmp_path, "f32").gguf.name == "kiln-f32.gguf"
    with pytest.raises(serve.ServeError, match="KILN_SERVE_GGUF must be one of q8_0, f32, not 'f16'"):
        serve.resolve(tmp_path, "f16")


@pytest.mark.slow
@pytest.mark.parametrize(
    "env, message",
    [({}, "run `make demo`"), ({"KILN_SERVE_PORT": "eighty"}, "KILN_SERVE_PORT must be a port number")],
)
def test_make_serve_refuses_to_start_with_a_clear_message(tmp_path, env, message):
    base = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    proc = subprocess.run([sys.executable, "-m", "training.release.serve"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=base | {"KILN_DATA_DIR": str(tmp_path)} | env)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
