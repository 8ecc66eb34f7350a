"""`make serve`: the release that `releases/LATEST` names, behind an OpenAI-compatible HTTP API on
127.0.0.1, served by llama.cpp through llama-cpp-python's server from the release's GGUF file.

    python -m training.release.serve   # KILN_DATA_DIR (./data), KILN_SERVE_PORT (8000), KILN_SERVE_GGUF (q8_0 | f32)

The routes (ROUTES; any other path is a 404, another method a 405):
- `POST /v1/completions` (prompt, max_tokens, temperature, stream, ...) continues a prompt, and
  `POST /v1/engines/copilot-codex/completions` (the legacy route of Codex clients) likewise;
- `GET /v1/models` lists one model named after the release version;
- `POST /v1/chat/completions` answers 400 (CHAT_REFUSAL): a kiln release is a base model.
Requests are answered one at a time in order of arrival (at most MAX_PENDING in the server; more get
503). `RequestChecks`, in front of the server, answers a bad completion request on either route with
a 400 that says what is wrong (not JSON, no prompt, max_tokens or temperature of the wrong type or
range, a prompt and max_tokens beyond the model's context: code "context_length_exceeded") and 404
for another model's name; the context is the model's own (config.json `max_position_embeddings`),
so nothing is generated past what the model was trained on.

Why llama.cpp: measured on a 2-core CPU with the tiny preset's release (20 completions of 16 tokens),
llama-cpp-python's server answered about 20 completions/s, `transformers serve` (5.23) 1.7; and
`transformers serve` lists only models in the Hugging Face cache under /v1/models (not a local
release), lets any max_tokens run past the context, and answers a negative or non-numeric max_tokens
with a 500.

The release is resolved when the server starts: after a new release, restart `make serve`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.layout import GGUF_JSON, LATEST, RELEASE_GGUF, Layout

HOST = "127.0.0.1"
"""Loopback only: the server has no authentication; put a reverse proxy in front to expose it."""
PORT_ENV, DEFAULT_PORT = "KILN_SERVE_PORT", 8000
FILE_TYPE_ENV = "KILN_SERVE_GGUF"
FILE_TYPES = ("q8_0", "f32")
"""GGUF files a release may hold, in order of preference: q8_0 answers faster on a CPU (a quarter of
the weight bytes to stream per token) and agrees with the f32 file within the release's checked
tolerance; `KILN_SERVE_GGUF=f32` serves the trained weights exactly."""


class ServeError(ValueError):
    """Nothing can be served: what is wrong, and what to do about it."""


@dataclass(frozen=True)
class Served:
    """What one `make serve` serves: the release version (the model name clients use), its GGUF file
    and the model's context length."""

    version: str
    gguf: Path
    context: int


def serve_port(value: str | None) -> int:
    """The TCP port from KILN_SERVE_PORT's value (None or empty: the default)."""
    if value is None or not value.strip():
        return DEFAULT_PORT
    try:
        port = int(value.strip())
    except ValueError:
        raise ServeError(f"{PORT_ENV} must be a port number (1-65535), not {value!r}") from None
    if not 1 <= port <= 65535:
        raise ServeError(f"{PORT_ENV} must be a port number (1-65535), not {port}")
    return port


def latest_release(data_dir: Path) -> Path:
    """The release folder `<data_dir>/releases/LATEST` names."""
    releases = Layout(Path(data_dir)).releases
    pointer = releases / LATEST
    if not pointer.is_file():
        raise ServeError(f"no release to serve: {pointer} does not exist; run `make demo` to train and release a model")
    name = pointer.read_text().strip()
    release = releases / name
    if not name or "/" in name or name in (".", "..") or not release.is_dir():
        raise ServeError(
            f"{pointer} names {name!r}, which is not a release folder in {releases}; "
            "run `make demo` to release a model, or point LATEST at an existing release"
        )
    return release


def gguf_file(release: Path, file_type: str | None = None) -> Path:
    """The release's GGUF file of `file_type`, or of the first of FILE_TYPES it holds."""
    if file_type is not None and file_type not in FILE_TYPES:
        raise ServeError(f"{FILE_TYPE_ENV} must be one of {', '.join(FILE_TYPES)}, not {file_type!r}")
    record = release / RELEASE_GGUF / GGUF_JSON
    if not record.is_file():
        raise ServeError(
            f"release {release.name} has no GGUF files ({record} is missing): it predates kiln's GGUF export; "
            "run `make demo` for a release that has them"
        )
    try:
        files = {f["file_type"]: name for name, f in json.loads(record.read_text())["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ServeError(f"{record} is unreadable ({type(e).__name__}: {e})") from e
    for wanted in [file_type] if file_type else FILE_TYPES:
        if wanted in files and (path := release / RELEASE_GGUF / files[wanted]).is_file():
            return path
    wanted = file_type or " or ".join(FILE_TYPES)
    raise ServeError(f"release {release.name} has no {wanted} GGUF file in {release / RELEASE_GGUF} (it lists {sorted(files)})")


def context_length(release: Path) -> int:
    try:
        return int(json.loads((release / "config.json").read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ServeError(f"{release}/config.json gives no context length ({type(e).__name__}: {e})") from e


def resolve(data_dir: Path, file_type: str | None = None) -> Served:
    release = latest_release(data_dir)
    return Served(version=release.name, gguf=gguf_file(release, file_type), context=context_length(release))


MAX_BODY_BYTES = 1 << 20
"""Largest request body read: a prompt longer than any kiln context fits many times over."""
DEFAULT_MAX_TOKENS = 16
"""max_tokens when a request names none (OpenAI's default), cut to the room the prompt leaves."""
MAX_PENDING = 32
"""Requests in the server at once (answered one at a time, the rest waiting): beyond it the server
answers 503 at once rather than queueing without bound."""


def completion_problem(body: object, context: int) -> str | None:
    """Why a decoded /v1/completions request body is not one kiln serves, or None. Stricter than the
    server's own schema where it would accept a mistake silently (no prompt: it completes ""; "16" or
    true as max_tokens: taken as numbers) or fail with a 500 (several prompts)."""
    if not isinstance(body, dict):
        return f"the request body must be a JSON object, not {type(body).__name__}"
    if "prompt" not in body:
        return "prompt is required: the text to continue"
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        return "prompt must be a string (one prompt per request)"
    if body.get("suffix") is not None:
        return "suffix is not supported: a kiln model continues its prompt, it does not fill in the middle"
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= context):
        return f"max_tokens must be an integer from 1 to {context} (the model's context length), not {json.dumps(max_tokens)}"
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2
    ):
        return f"temperature must be a number from 0 to 2, not {json.dumps(temperature)}"
    return None


def generation_budget(body: dict, prompt_tokens: int, context: int) -> int | str:
    """Tokens to generate for a request that passed `completion_problem`, whose prompt is
    `prompt_tokens` tokens (<|begin_of_text|> included), or why it does not fit the model's context.
    max_tokens null: up to the end of the context; none given: DEFAULT_MAX_TOKENS or what fits.
    Always a number the server gets: llama.cpp rounds its context up to a multiple of 256 tokens, and
    llama-cpp-python would otherwise generate into that padding, past what the model was trained on."""
    room = context - prompt_tokens
    if room < 1:
        return f"the prompt is {prompt_tokens} tokens (with <|begin_of_text|>), the model's context {context} tokens: shorten the prompt"
    if "max_tokens" not in body:
        return min(DEFAULT_MAX_TOKENS, room)
    wanted = body["max_tokens"]
    if wanted is None:
        return room
    if wanted > room:
        return (f"the prompt ({prompt_tokens} tokens) and max_tokens ({wanted}) exceed the model's context of "
                f"{context} tokens: ask for at most {room}")
    return wanted


COMPLETION, CHAT, MODELS = "completion", "chat", "models"
ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/v1/models"): MODELS,
    ("POST", "/v1/completions"): COMPLETION,
    # The legacy engine route OpenAI's Codex clients (and editor plug-ins) call: llama-cpp-python
    # answers it with the same completion, so it gets the same checks.
    ("POST", "/v1/engines/copilot-codex/completions"): COMPLETION,
    # Answered with a 400 that says why, never generated: see CHAT_REFUSAL.
    ("POST", "/v1/chat/completions"): CHAT,
}
"""Every route the server answers (a trailing slash is the same route). Any other path is a 404 and
another method on these paths a 405, before llama-cpp-python sees the request: its embeddings (the
model is not loaded for them), tokenizer extras and FastAPI's /docs and /openapi.json are not served."""
CHAT_REFUSAL = (
    "release {version} is a base model: it continues text, it does not chat, and it has no chat template; "
    "send the text to continue as the prompt of POST /v1/completions"
)
"""What POST /v1/chat/completions answers (400, code "base_model"). A kiln release is a base model
trained on documents; llama-cpp-python would otherwise wrap the messages in another model family's
chat template (Llama 2's) the model never saw and answer with text that only looks like a reply."""


class RequestChecks:
    """ASGI middleware in front of the server. Only ROUTES reach it (404 or 405 for the rest). A
    completion request (both completion routes) has its body read (at most MAX_BODY_BYTES) and is
    answered 400 with an OpenAI-style error when it is not JSON, fails `completion_problem` or the
    server's own request schema (`schema`, a pydantic model), 404 when it names another model than the
    release served, 400 when it does not fit the context (`generation_budget`, the prompt counted by
    `count_tokens`), and otherwise handed on with the model and max_tokens set (without a model,
    llama-cpp-python would answer with the GGUF file's path as the model name). A chat request gets
    CHAT_REFUSAL; GET /v1/models goes straight through."""

    def __init__(self, app, served: Served, schema, count_tokens: Callable[[str], int]) -> None:
        self.app, self.served, self.schema, self.count_tokens = app, served, schema, count_tokens

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":  # the server's start-up and shutdown
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # websockets: nothing is served over them
            return await send({"type": "websocket.close", "code": 1008})
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        route = ROUTES.get((method, path))
        if route is None:
            allowed = sorted(m for m, p in ROUTES if p == path)
            if allowed:
                return await _error(send, 405, f"{method} is not served on {path}: use {' or '.join(allowed)}",
                                    "method_not_allowed", [(b"allow", ", ".join(allowed).encode())])
            served = ", ".join(f"{m} {p}" for m, p in ROUTES)
            return await _error(send, 404, f"no route {method} {scope['path']}: this server answers {served}", "not_found")
        scope = dict(scope, path=path, raw_path=path.encode())
        if route == MODELS:
            return await self.app(scope, receive, send)
        if route == CHAT:
            return await _error(send, 400, CHAT_REFUSAL.format(version=self.served.version), "base_model")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY_BYTES:
                return await _error(send, 413, f"the request body exceeds {MAX_BODY_BYTES} bytes")
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw)
            problem = completion_problem(body, self.served.context)
        except ValueError as e:  # UnicodeDecodeError is one too
            problem = f"the request body is not valid JSON ({e})"
        if problem is None:
            problem = self._schema_problem(raw)
        if problem is not None:
            return await _error(send, 400, problem)
        if body.setdefault("model", self.served.version) not in (None, self.served.version):
            message = f"model {body['model']!r} is not served here: this server serves release {self.served.version}"
            return await _error(send, 404, message, "model_not_found")
        body["model"] = self.served.version
        if isinstance(body["prompt"], list):
            body["prompt"] = body["prompt"][0]
        budget = generation_budget(body, self.count_tokens(body["prompt"]), self.served.context)
        if isinstance(budget, str):
            return await _error(send, 400, budget, "context_length_exceeded")
        body["max_tokens"] = budget
        raw = json.dumps(body).encode()

        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await self.app(scope, replay, send)

    def _schema_problem(self, raw: bytes) -> str | None:
        from pydantic import ValidationError

        try:
            self.schema.model_validate_json(raw)
        except ValidationError as e:
            return "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        return None


async def _error(send, status: int, message: str, code: str | None = None, headers: list | None = None) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_app(served: Served, threads: int | None = None):
    """llama-cpp-python's FastAPI app for `served` (model loaded), behind RequestChecks.
    `threads`: llama.cpp's threads for prompt and generation (default: every core; llama-cpp-python's
    own default is half of them)."""
    from llama_cpp import Llama
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings
    from llama_cpp.server.types import CreateCompletionRequest

    threads = threads or os.cpu_count() or 1
    os.environ.pop("CONFIG_FILE", None)  # would make create_app serve another model than the release
    model = ModelSettings(
        model=str(served.gguf),
        model_alias=served.version,  # the name /v1/models lists and completions answer with
        n_ctx=served.context,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    app = create_app(server_settings=ServerSettings(host=HOST), model_settings=[model])
    # The vocabulary alone (no weights), to count prompts as the server will: <|begin_of_text|> first.
    vocab = Llama(str(served.gguf), vocab_only=True, verbose=False)

    def count_tokens(text: str) -> int:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=True, special=True)) if text else 1

    return RequestChecks(app, served, CreateCompletionRequest, count_tokens)


def main() -> None:
    try:
        port = serve_port(os.environ.get(PORT_ENV))
        served = resolve(Path(os.environ.get("KILN_DATA_DIR", "data")), os.environ.get(FILE_TYPE_ENV) or None)
        if importlib.util.find_spec("llama_cpp") is None:
            raise ServeError("llama-cpp-python is not installed in this environment: run `make serve`, which installs kiln")
    except ServeError as e:
        sys.exit(f"kiln serve: {e}")
    import uvicorn

    app = build_app(served)
    print(
        f"kiln serve: release {served.version} ({served.gguf.name}, context {served.context} tokens) on "
        f"http://{HOST}:{port}/v1 ({', '.join(f'{m} {p}' for m, p in ROUTES)})",
        flush=True,
    )
    # Host and port from here only: llama-cpp-python's own entry point lets HOST and PORT in the
    # environment override them, which could expose the server beyond loopback.
    uvicorn.run(app, host=HOST, port=port, limit_concurrency=MAX_PENDING, log_level="info")


if __name__ == "__main__":
    main()
