"""Admin login: repeated wrong passwords lock out that user from that address (django-axes), and are logged."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture(autouse=True)
def _fast_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def lead(db):
    return get_user_model().objects.create_superuser("lead", "lead@example.com", "right-password-1")


def _login(client: Client, username: str, password: str, ip: str = "203.0.113.7", **extra: str):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=ip, **extra)


def _logged_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def test_the_right_password_works(lead):
    assert _logged_in(_login(Client(), "lead", "right-password-1"))


def test_repeated_wrong_passwords_lock_out_that_user_from_that_address(lead, settings):
    client = Client()
    answers = [_login(client, "lead", f"guess-{n}").status_code for n in range(settings.AXES_FAILURE_LIMIT + 5)]
    # The form answers the first failures, then the lockout answers 429 without checking the password.
    assert answers[: settings.AXES_FAILURE_LIMIT - 1] == [200] * (settings.AXES_FAILURE_LIMIT - 1)
    assert set(answers[settings.AXES_FAILURE_LIMIT :]) == {429}
    locked = _login(client, "lead", "right-password-1")
    assert locked.status_code == 429 and "locked" in locked.content.decode().lower()
    # Another user, or the same user from another address, is not locked out (no denial of service by guessing).
    get_user_model().objects.create_superuser("other", "o@example.com", "other-password-1")
    assert _logged_in(_login(Client(), "other", "other-password-1"))
    assert _logged_in(_login(Client(), "lead", "right-password-1", ip="198.51.100.9"))


def test_the_address_behind_the_ingress_is_the_forwarded_one(lead, settings):
    settings.TRUSTED_PROXY_HOPS = 1
    for n in range(settings.AXES_FAILURE_LIMIT):
        _login(Client(), "lead", f"guess-{n}", ip="10.0.0.5", HTTP_X_FORWARDED_FOR=f"1.2.3.4, 203.0.113.{n}")
    # Each came from a different client address (the ingress appends the one it saw last): none is locked out.
    assert _logged_in(_login(Client(), "lead", "right-password-1", ip="10.0.0.5", HTTP_X_FORWARDED_FOR="203.0.113.1"))
    for n in range(settings.AXES_FAILURE_LIMIT):
        _login(Client(), "lead", f"guess-{n}", ip="10.0.0.5", HTTP_X_FORWARDED_FOR="spoofed, 192.0.2.50")
    locked = _login(Client(), "lead", "right-password-1", ip="10.0.0.5", HTTP_X_FORWARDED_FOR="other, 192.0.2.50")
    assert locked.status_code == 429, "a spoofed left-most entry does not escape the lockout"


def test_failed_logins_are_logged_with_user_and_address_not_the_password(lead, caplog):
    with caplog.at_level(logging.INFO):
        _login(Client(), "lead", "a-wrong-secret-guess")
    failures = [r for r in caplog.records if "login failure" in r.getMessage().lower()]
    assert failures, [r.getMessage() for r in caplog.records]
    text = " ".join(r.getMessage() for r in failures)
    assert "lead" in text and "203.0.113.7" in text
    assert "a-wrong-secret-guess" not in caplog.text


def test_a_successful_login_resets_the_count(lead, settings):
    client = Client()
    for n in range(settings.AXES_FAILURE_LIMIT - 1):
        _login(client, "lead", f"guess-{n}")
    assert _logged_in(_login(client, "lead", "right-password-1"))
    client = Client()
    for n in range(settings.AXES_FAILURE_LIMIT - 1):
        _login(client, "lead", f"guess-{n}")
    assert _logged_in(_login(client, "lead", "right-password-1"))
