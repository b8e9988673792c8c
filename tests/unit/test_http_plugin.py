"""The http plugin's reading of where a call may go, without a server: what the allow-list opens."""

from __future__ import annotations

import pytest

from keyturn.executor.plugins.base import ExecutionFailed
from keyturn.executor.plugins.http import HttpPlugin
from keyturn.identity.keys import SigningKey

PLUGIN = HttpPlugin(
    SigningKey.generate(), allowed_hosts=frozenset({"api.example.internal", "hooks.example.internal:8443"})
)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.internal/v1/x",
        "https://api.example.internal:443/v1/x",
        "https://hooks.example.internal:8443/deploy",
    ],
)
def test_a_listed_host_is_its_https_origin_and_a_listed_port_is_that_port(url: str) -> None:
    assert PLUGIN._checked_url(url, "resource").host in {"api.example.internal", "hooks.example.internal"}


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("https://api.example.internal:8090/echo", "api.example.internal:8090"),  # any other service of that machine
        ("https://hooks.example.internal/deploy", "hooks.example.internal"),  # listed with another port only
        ("https://paste.example.net/raw", "paste.example.net"),
    ],
)
def test_another_port_of_a_listed_host_is_not_on_the_list(url: str, named: str) -> None:
    with pytest.raises(ExecutionFailed, match=f"host '{named}' is not in KEYTURN_HTTP_ALLOWED_HOSTS"):
        PLUGIN._checked_url(url, "resource")


def test_a_refused_authentication_header_is_named_in_words_masking_leaves_whole() -> None:
    from keyturn.executor.plugins.base import Command
    from keyturn.masking.protect import mask_text

    command = Command(
        "a-1",
        "http.request",
        "https://api.example.internal/v1/x",
        {"method": "GET", "headers": {"Proxy-Authorization": "Basic eA=="}},
        60,
    )
    with pytest.raises(ExecutionFailed) as refused:
        PLUGIN._request_parts(command)
    message = str(refused.value)
    assert message.endswith("may not set Proxy-Authorization") and mask_text(message) == message
