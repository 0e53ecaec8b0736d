"""Eyes on a real Unleash server of the tests' own, independent of the provider under test.

What the application would see (a plain ``UnleashClient``, configured as an app configures
it), what the Admin API stores for a flag, and the provider's settings for the server.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

# The SDK re-exports its client without __all__, which strict mypy reads as private.
from UnleashClient import UnleashClient  # type: ignore[attr-defined]
from UnleashClient.utils import InstanceAllowType

from migrate.adapters.unleash import UnleashSettings
from unleash_server import UnleashEndpoint
from world import DEMO


def unleash_settings(unleash: UnleashEndpoint, **overrides: Any) -> UnleashSettings:
    values: dict[str, Any] = {
        "url": unleash.url,
        "admin_token": SecretStr(unleash.admin_token),
        "client_token": SecretStr(unleash.client_token),
        "environment": unleash.environment,
        "confirm_seconds": 10.0,
        **overrides,
    }
    return UnleashSettings(**values)


def wait_served(unleash: UnleashEndpoint, flag: str, timeout: float = 10.0) -> None:
    """Wait until the client API serves the flag's newest change (it publishes once a second)."""
    events = httpx.get(
        f"{unleash.url}/api/admin/search/events",
        params={"feature": f"IS:{flag}", "limit": "1"},
        headers={"Authorization": unleash.admin_token},
        timeout=10,
    ).json()["events"]
    newest = max((e["id"] for e in events), default=0)
    deadline = time.monotonic() + timeout
    while True:
        served = httpx.get(
            f"{unleash.url}/api/client/features", headers={"Authorization": unleash.client_token}, timeout=10
        ).json()
        if served["meta"]["revisionId"] >= newest or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def app_sees_on_server(unleash: UnleashEndpoint, flag: str, tenant: str) -> bool:
    """A plain SDK client, as an application configures it, with a throwaway cache directory."""
    wait_served(unleash, flag)
    with tempfile.TemporaryDirectory() as cache_dir:
        client = UnleashClient(
            f"{unleash.url}/api",
            "conformance-app",
            custom_headers={"Authorization": unleash.client_token},
            cache_directory=cache_dir,
            disable_metrics=True,
            disable_registration=True,
            multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
        )
        client.initialize_client()
        try:
            assert flag in client.feature_definitions(), "the app's SDK could not fetch the flag"
            return bool(client.is_enabled(flag, {"tenantId": tenant}))
        finally:
            client.destroy()


def environment_state(unleash: UnleashEndpoint, flag: str) -> dict[str, Any]:
    """The flag's environment from the Admin API: on/off and every strategy, as JSON."""
    resp = httpx.get(
        f"{unleash.url}/api/admin/projects/default/features/{flag}",
        headers={"Authorization": unleash.admin_token},
        timeout=10,
    )
    resp.raise_for_status()
    (env,) = [e for e in resp.json()["environments"] if e["name"] == unleash.environment]
    return {"enabled": env["enabled"], "strategies": env["strategies"]}


DEFINITIONS = Path(__file__).resolve().parent.parent / "flags" / "demo.json"


def unleash_playbook(tmp_path: Path, *, confirm_seconds: float = 10) -> Path:
    """The demo playbook with its flags on Unleash instead of a file."""
    text = DEMO.read_text()
    start, end = text.index("flags:\n"), text.index("phases:\n")
    flags = (
        "flags:\n"
        "  provider: unleash\n"
        "  url_env: UNLEASH_URL\n"
        "  admin_token_env: UNLEASH_ADMIN_TOKEN\n"
        "  client_token_env: UNLEASH_CLIENT_TOKEN\n"
        "  environment_env: UNLEASH_ENVIRONMENT\n"
        f"  definitions: {DEFINITIONS}\n"
        f"  confirm_seconds: {confirm_seconds}\n\n"
    )
    path = tmp_path / "unleash.yaml"
    # A flag name of its own: the server is shared by the whole session.
    flag = f"tm-run-{uuid.uuid4().hex[:10]}"
    definitions = json.loads(DEFINITIONS.read_text())
    definitions["features"][0]["name"] = flag
    definitions["features"][0]["strategies"][0]["parameters"]["groupId"] = flag
    own = tmp_path / "definitions.json"
    own.write_text(json.dumps(definitions))
    path.write_text(
        (text[:start] + flags + text[end:])
        .replace(str(DEFINITIONS), str(own))
        .replace("flag: tenant-shared-db", f"flag: {flag}")
    )
    return path


def playbook_flag(playbook: Path) -> str:
    return next(
        line.split(":", 1)[1].strip() for line in playbook.read_text().splitlines() if "flag: " in line
    )
