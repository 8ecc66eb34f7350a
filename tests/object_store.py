"""An S3-compatible server for the tests of object-storage landing zones: moto's, on a free loopback
port, found through the environment exactly as a user's store is (AWS_ENDPOINT_URL_S3 and AWS_*)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec


@contextlib.contextmanager
def moto_s3() -> Iterator[tuple[object, dict[str, str]]]:
    """(an s3fs filesystem on the server, the environment that reaches it); the environment is set
    for the duration, so kiln's own s3fs instances reach the server too."""
    import pytest
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    started = time.perf_counter()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "kiln-test", "AWS_SECRET_ACCESS_KEY": "kiln-test-secret", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
    }
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            s3fs.S3FileSystem.clear_instance_cache()  # an instance made for another endpoint is not reused
            print(f"moto S3 server up in {time.perf_counter() - started:.2f} s")
            yield fsspec.filesystem("s3"), env
            s3fs.S3FileSystem.clear_instance_cache()
    finally:
        server.stop()


def upload(local: Path, fs, root: str) -> None:
    """Every file of a local landing zone as objects under `root`, each batch's `_SUCCESS` written last
    (as a batch's producer must)."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name == "_SUCCESS"):
        fs.pipe_file(f"{root}/{path.relative_to(local).as_posix()}", path.read_bytes())
