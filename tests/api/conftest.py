from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from .support import FakeBackend, running_api


@pytest.fixture
async def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def api_url(backend: FakeBackend) -> AsyncIterator[str]:
    """Base URL of a real uvicorn server on loopback serving the app over the fake backend."""
    async with running_api(backend) as url:
        yield url


@pytest.fixture
async def client(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=10.0) as c:
        yield c
