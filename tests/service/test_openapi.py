"""Property-based tests generated from the service's own OpenAPI schema (schemathesis): every operation,
with generated bodies, answers with a status and a body its schema declares, and never a 5xx."""

from __future__ import annotations

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from service.app import create_app
from service.settings import Settings
from tests.conftest import DEMO_BUNDLE

app = create_app(Settings(bundle=DEMO_BUNDLE))
_client = TestClient(app)
_client.__enter__()  # run the lifespan once: load the bundle for every generated request
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_schema(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, response.text
    # a schema-valid binary body is not necessarily a decodable image, so a 4xx for it is correct: skip
    # only the "schema-valid data must be accepted" check; statuses, headers and bodies are all validated
    case.validate_response(response, excluded_checks=[schemathesis.checks.positive_data_acceptance])
