"""The service tests' client: the app on the committed demo bundle, with small limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import DEMO_BUNDLE


def demo_client(**settings: Any) -> TestClient:
    """A TestClient (use it as a context manager: start-up and shutdown run) on the demo bundle."""
    return TestClient(create_app(Settings(bundle=DEMO_BUNDLE, **settings)))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with demo_client(max_upload_bytes=2_000_000, max_batch_images=4, max_image_pixels=4_000_000) as c:
        yield c
