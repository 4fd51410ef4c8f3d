"""Read a seed's TransferEngine info and server info over SGLang's HTTP API."""

from __future__ import annotations

import httpx


class SeedUnavailable(RuntimeError):
    """The seed did not answer, or answered something that is not SGLang's format."""


async def _get_first(client: httpx.AsyncClient, base: str, paths: list[str], params: dict | None = None) -> dict:
    last = ""
    for path in paths:
        try:
            response = await client.get(f"{base.rstrip('/')}{path}", params=params)
        except httpx.HTTPError as exc:
            raise SeedUnavailable(f"cannot reach the seed at {base}: {exc}") from exc
        if response.status_code == 404:
            last = f"{path} -> 404"
            continue  # older/newer SGLang: try the other path
        if response.status_code != 200:
            raise SeedUnavailable(f"seed {base}{path} answered HTTP {response.status_code}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError as exc:
            raise SeedUnavailable(f"seed {base}{path} did not return JSON") from exc
    raise SeedUnavailable(f"seed {base} serves none of {paths} ({last})")


async def fetch_transfer_engine_info(client: httpx.AsyncClient, seed_url: str, rank: int) -> tuple[str, dict]:
    """(session_id, manifest) of one rank; new endpoint first, deprecated one as fallback."""
    body = await _get_first(
        client, seed_url,
        ["/remote_instance_transfer_engine_info", "/get_remote_instance_transfer_engine_info"],
        params={"rank": rank},
    )
    info = body.get("remote_instance_transfer_engine_info") if isinstance(body, dict) else None
    if not (isinstance(info, (list, tuple)) and len(info) == 2 and isinstance(info[1], dict)):
        raise SeedUnavailable(
            f"seed {seed_url} rank {rank}: expected {{'remote_instance_transfer_engine_info': "
            f"[session_id, {{name: [ptr, numel, element_size]}}]}}, got {str(body)[:200]}"
        )
    return str(info[0]), info[1]


async def fetch_server_info(client: httpx.AsyncClient, seed_url: str) -> dict:
    return await _get_first(client, seed_url, ["/server_info", "/get_server_info"])
