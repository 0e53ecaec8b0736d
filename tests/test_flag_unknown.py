"""Unknown is a state: Unleash slow between the flip and its confirmation (a real slow HTTP proxy in
front of the real server) leaves the step 'flag state unknown', not FAILED; status shows it; the next
run or rollback reads the real state first and finishes."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from migrate import api
from unleash_eyes import app_sees_on_server, playbook_flag, unleash_playbook
from unleash_server import UnleashEndpoint
from world import World

_HOP = ("content-length", "transfer-encoding", "connection", "content-encoding")


class SlowAfterFlip:
    """An HTTP proxy on 127.0.0.1 before the real server: once a write (POST, PATCH, PUT) has gone
    through, the client API (what the SDK fetches) answers only after ``delay`` seconds."""

    def __init__(self, upstream: str, delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.flipped = threading.Event()
        self.slow = True  # turned off to let the next run confirm
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                if proxy.slow and proxy.flipped.is_set() and self.path.startswith("/api/client/"):
                    time.sleep(proxy.delay)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                skip = ("host", "content-length")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                resp = httpx.request(self.command, proxy.upstream + self.path, headers=headers, content=body)
                if self.command in ("POST", "PATCH", "PUT") and self.path.startswith("/api/admin/"):
                    proxy.flipped.set()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(resp.status_code)
                    for key, value in resp.headers.items():
                        if key.lower() not in _HOP:
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(resp.content)))
                    self.end_headers()
                    self.wfile.write(resp.content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow(unleash: UnleashEndpoint) -> Iterator[SlowAfterFlip]:
    proxy = SlowAfterFlip(unleash.url, delay=4.0)
    yield proxy
    proxy.close()


@pytest.mark.tenants("acme")
@pytest.mark.parametrize("next_command", ["run", "rollback"])
def test_a_flip_unleash_is_too_slow_to_confirm_is_unknown_and_the_next_command_reads_it_first(
    next_command: str,
    slow: SlowAfterFlip,
    unleash: UnleashEndpoint,
    world: World,
    tmp_path: Path,
) -> None:
    """The write goes through, the client API is slower than confirm_seconds: the tenant is 'flag state
    unknown' (exit 1, not FAILED) while its flag is really on; status says so and what to run; with the
    server answering again, run confirms it (reading the real state first) or rollback turns it off."""
    playbook = unleash_playbook(tmp_path, confirm_seconds=1.5)
    flag = playbook_flag(playbook)
    direct = {**world.environ, **unleash.environ()}
    api.flags_sync(playbook, environ=direct)
    environ = {**direct, "UNLEASH_URL": slow.url}
    result = api.run(playbook, ["acme"], environ=environ)
    acme = result.tenants[0]
    assert acme.outcome == "unknown" and result.exit_code == 1, acme.error
    assert acme.error is not None and "could not be confirmed" in acme.error.message
    assert app_sees_on_server(unleash, flag, "acme") is True, "the flip was made"

    slow.slow = False
    shown = api.status(playbook, environ=environ)
    assert shown.tenants[0].state == "flag state unknown"
    assert shown.tenants[0].current is not None and shown.tenants[0].current.key == "cutover/flag"
    assert shown.next is not None and shown.next.command == f"migrate run {playbook} --tenant acme"

    if next_command == "run":
        again = api.run(playbook, ["acme"], environ=environ)
        assert again.ok, again.tenants[0].error
        applied = [s.key for s in again.tenants[0].steps if s.outcome == "applied"]
        # The validation an earlier run did is done again before any flip (issue 13), then the flag.
        assert applied == ["copy/validate", "cutover/flag"], applied
        (step,) = [s for s in again.tenants[0].steps if s.key == "cutover/flag"]
        assert step.key == "cutover/flag" and step.details["found"] is True  # read before acting
        assert step.details["before"] is False  # the snapshot from before the first attempt
        assert app_sees_on_server(unleash, flag, "acme") is True
        assert api.status(playbook, environ=environ).tenants[0].state == "done"
    else:
        back = api.rollback(
            playbook, "acme", "pre-cutover", environ=environ, discard_writes_since_cutover=True
        )
        # It may have flipped: its writes discarded, the copy is reverted too, after the flag.
        assert [s.key for s in back.steps] == ["cutover/flag", "copy/validate", "copy/backfill"]
        step = back.steps[0]
        assert step.key == "cutover/flag" and step.details["found"] is True
        assert app_sees_on_server(unleash, flag, "acme") is False
        assert api.status(playbook, environ=environ).tenants[0].state == "rolled back"
