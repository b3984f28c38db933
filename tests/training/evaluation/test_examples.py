"""The downstream example: a classifier on the backdoored demo encoder, guarded by the service."""

from __future__ import annotations

from fastapi.testclient import TestClient

from examples.guard_cifar10 import run
from service.app import create_app
from service.client import DedeClient
from service.settings import Settings
from tests.conftest import DEMO_BUNDLE, needs_cifar


@needs_cifar
def test_guard_cuts_attack_success_and_keeps_clean_accuracy() -> None:
    with TestClient(create_app(Settings(bundle=DEMO_BUNDLE))) as http:
        res = run(DedeClient("http://testserver", http=http), DEMO_BUNDLE, n=200, n_train=2000)
    assert res["clean_accuracy"] > 0.3  # the head learned something (chance is 0.1)
    assert res["attack_success_rate"] > 0.8  # the backdoor works downstream
    assert res["guarded_attack_success_rate"] < 0.5 * res["attack_success_rate"]
    assert res["clean_dropped"] < 0.05
    assert res["guarded_clean_accuracy"] >= res["clean_accuracy"] - 0.05
