"""Masking of action parameters: what approvers, topics, logs and audit get to see."""

from __future__ import annotations

import json
import socket
import threading

import pytest
import spacy
from hypothesis import given, settings
from hypothesis import strategies as st

from keyturn.masking import (
    ENTITY_TYPES,
    Finding,
    ParameterMasker,
    UnmaskableParameters,
    build_analyzer,
)
from keyturn.masking.field_names import sensitive_field_entity

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZ2VudDpyZXBvcnRlciJ9.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEA7xK2c9v3b4W1n8Qz5r0tY6uJ2aLk9PmN4oS7dF3gH1jK8lZx\n"
    "cV5bN2mQ9wE4rT6yU1iO3pA7sD0fG8hJ5kL2zX4cV9bN6mQ1wE3rT8yU0iO5pA2s\n"
    "-----END RSA PRIVATE KEY-----"
)

#: One value per entity type, as an agent might send it.
EXAMPLES = {
    "EMAIL_ADDRESS": "customer.4821@example.com",
    "PHONE_NUMBER": "+1 415 555 0142",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IBAN_CODE": "DE89 3704 0044 0532 0130 00",
    "US_SSN": "536-80-4398",
    "IP_ADDRESS": "10.24.8.15",
    "AWS_ACCESS_KEY": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_KEY": "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "GCP_API_KEY": "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
    "AZURE_KEY": "AccountName=x;AccountKey=" + "A1b2C3d4" * 10 + "q1w2e3==",
    "SLACK_TOKEN": "xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "GITHUB_TOKEN": "ghp_Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2",
    "JWT": JWT,
    "PRIVATE_KEY": PEM,
    "SECRET": "postgres://report:Vx9kq2LmPz7@db.internal.example:5432/analytics",
}


@pytest.fixture(scope="module")
def masker() -> ParameterMasker:
    return ParameterMasker()


def test_every_entity_type_has_an_example():
    assert set(EXAMPLES) == set(ENTITY_TYPES)


@pytest.mark.parametrize("entity", sorted(EXAMPLES))
def test_each_entity_type_is_detected_deep_in_nested_json(masker, entity):
    value = EXAMPLES[entity]
    payload = {"request": {"items": [{"note": "first"}, {"note": f"see {value}"}]}}

    masked = masker.mask(payload)

    note = masked.parameters["request"]["items"][1]["note"]
    assert Finding("$.request.items[1].note", entity) in masked.findings
    assert value not in note
    assert note.startswith("see ")
    assert masked.parameters["request"]["items"][0]["note"] == "first"


@pytest.mark.parametrize("entity", sorted(set(EXAMPLES) - {"AWS_SECRET_KEY", "AZURE_KEY", "SECRET"}))
def test_text_around_a_finding_stays_readable(masker, entity):
    masked = masker.mask({"note": f"see {EXAMPLES[entity]} (from the last run)"})
    assert masked.parameters["note"].startswith("see ")
    assert masked.parameters["note"].endswith(" (from the last run)")


def test_a_keyword_assignment_is_masked_to_the_end_of_its_line(masker):
    # detect-secrets' config-file rule: an unquoted value runs to the end of the line, so a
    # passphrase with spaces is never half shown.
    masked = masker.mask({"cmd": "export PGPASSWORD=correct horse battery\npg_dump analytics"})
    assert masked.parameters == {"cmd": "export PGPASSWORD=<SECRET>\npg_dump analytics"}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("customer.4821@example.com", "<EMAIL_ADDRESS>"),
        ("+44 20 7946 0958", "<PHONE_NUMBER>"),
        ("GB82WEST12345698765432", "<IBAN_CODE>"),
        ("536-80-4398", "<US_SSN>"),
        ("AKIAIOSFODNN7EXAMPLE", "<AWS_ACCESS_KEY>"),
        ("xoxp-1234567890-1234567890-AbCdEfGhIjKlMnOpQrStUvWxYz012345", "<SLACK_TOKEN>"),
        ("ghp_Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2", "<GITHUB_TOKEN>"),
        (JWT, "<JWT>"),
        (PEM, "<PRIVATE_KEY>"),
        ("4111 1111 1111 1111", "****1111"),
        ("5555-5555-5555-4444", "****4444"),
    ],
)
def test_placeholders_reveal_the_type_and_cards_their_last_four(masker, value, shown):
    assert masker.mask({"value": value}).parameters == {"value": shown}


def test_high_entropy_strings_and_password_assignments_are_secrets(masker):
    masked = masker.mask(
        {
            "command": "export PGPASSWORD=Tr0ub4dor-3x && pg_dump analytics",
            "header": "sk_live_4eC39HqLyjWDarjtT1zdp7dcQ2",
            "dsn": "postgres://report:Vx9kq2LmPz7@db.internal.example:5432/analytics",
        }
    )
    assert masked.parameters == {
        "command": "export PGPASSWORD=<SECRET> && pg_dump analytics",  # the value, not the rest of its line
        "header": "<SECRET>",
        "dsn": "postgres://report:<SECRET>@db.internal.example:5432/analytics",
    }


def test_a_luhn_invalid_card_number_is_not_a_card(masker):
    masked = masker.mask({"value": "card 4111 1111 1111 1112"})
    assert "CREDIT_CARD" not in masked.entity_types


@pytest.mark.parametrize(
    "value",
    [
        "550e8400-e29b-41d4-a716-446655440000",
        "2024-05-01T10:00:00Z",
        "2024-05-01 10:00:00+02:00",
        "05.10.2024",
        "1714557600",
        "42",
        "1640",
        "12345678",
        "1.24.3",
        "v2.0.0-rc.1",
        "python==3.11.7",
        "https://example.com/api/v2/customers/12345/orders?limit=10&page=2",
        "s3://exports-eu/2024/q2/part-00001.parquet",
        "SELECT id FROM customers WHERE region = 'eu'",
        "SELECT id, email FROM customers WHERE created_at >= '2024-01-01' LIMIT 1000",
        "UPDATE orders SET status = 'shipped' WHERE id IN (1042, 1043, 1044)",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # sha256
        "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",  # sha1 / git commit
        "4bf92f3577b34da6a3ce929d0e0e4736",  # trace id
        "507f1f77bcf86cd799439011",  # object id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "registry.example/app@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "ORD-16847292",
        "/v1/exports/07439150-ba24-4dfd-a946-753533c03ff2",  # an action id whose first group reads as a phone
        "action 16487059-1234-5678-9abc-def012345678 ended",
        "INV-2024-0042",
        "Quarterly revenue grew 12.5% to 4,250,000 EUR",
        "api-7d9f8c6b5-x2x4z",
        "sg-0123456789abcdef0",
        "arn:aws:iam::123456789012:role/reporting",
        "customer_orders_2024_archive_table",
        "SGVsbG8gd29ybGQ=",
        "password reset requested by the account owner",
        "token_type: bearer",
    ],
)
def test_ordinary_values_stay_clear(masker, value):
    masked = masker.mask({"value": value, "nested": [{"value": f"({value})"}]})
    assert masked.findings == []
    assert masked.parameters == {"value": value, "nested": [{"value": f"({value})"}]}


@pytest.mark.parametrize(
    ("key", "entity"),
    [
        ("password", "SECRET"),
        ("DB_PASSWORD", "SECRET"),
        ("dbPassword", "SECRET"),
        ("passwd", "SECRET"),
        ("client_secret", "SECRET"),
        ("clientsecret", "SECRET"),
        ("access_token", "SECRET"),
        ("api_key", "SECRET"),
        ("apiKey", "SECRET"),
        ("X-Api-Key", "SECRET"),
        ("Authorization", "SECRET"),
        ("credentials", "SECRET"),
        ("destination_credentials", "SECRET"),
        ("private_key", "PRIVATE_KEY"),
        ("ssh_private_key_passphrase", "SECRET"),
        ("ssn", "US_SSN"),
        ("customer_ssn", "US_SSN"),
        ("card_number", "CREDIT_CARD"),
        ("cardNumber", "CREDIT_CARD"),
    ],
)
def test_fields_named_like_credentials_are_masked_whole(key, entity):
    assert sensitive_field_entity(key) == entity


@pytest.mark.parametrize(
    "key",
    [
        "secretary", "tokenizer", "classname", "passwordless", "max_tokens", "total_tokens",
        "token_type", "token_url", "secret_name", "password_expires_at", "private_key_path",
        "access_key_id", "region", "email", "key", "description",
    ],
)  # fmt: skip
def test_names_that_only_describe_a_secret_are_not_masked_by_name(key):
    assert sensitive_field_entity(key) is None


def test_a_sensitive_name_masks_any_value_type_but_leaves_null(masker):
    masked = masker.mask(
        {
            "password": "hunter2",
            "pin_secret": 4821,
            "card_number": 4111111111111111,
            "credentials": {"user": "report", "password": "hunter2"},
            "api_keys": ["k1", "k2"],
            "client_secret": None,
            "max_tokens": 1024,
        }
    )
    assert masked.parameters == {
        "password": "<SECRET>",
        "pin_secret": "<SECRET>",
        "card_number": "****1111",
        "credentials": "<SECRET>",
        "api_keys": "<SECRET>",
        "client_secret": None,
        "max_tokens": 1024,
    }
    assert [f.path for f in masked.findings] == [
        "$.password", "$.pin_secret", "$.card_number", "$.credentials", "$.api_keys",
    ]  # fmt: skip


@pytest.mark.parametrize("extra_field", ["parameters.destination.credentials", "destination.credentials"])
def test_policy_extra_fields_are_masked_whole_in_either_path_form(masker, extra_field):
    payload = {"destination": {"bucket": "s3://exports-eu/", "credentials": {"user": "x"}}}
    masked = masker.mask(payload, extra_fields=[extra_field])
    assert masked.parameters == {"destination": {"bucket": "s3://exports-eu/", "credentials": "<SECRET>"}}
    assert masked.findings == [Finding("$.destination.credentials", "SECRET")]


def test_extra_fields_see_through_lists(masker):
    payload = {"recipients": [{"name": "ops", "note": "a"}, {"name": "finance", "note": "b"}]}
    masked = masker.mask(payload, extra_fields=["recipients.note"])
    assert masked.parameters == {
        "recipients": [
            {"name": "ops", "note": "<SECRET>"},
            {"name": "finance", "note": "<SECRET>"},
        ]
    }


@pytest.mark.parametrize("extra_field", ["parameters..x", "", "x."])
def test_a_malformed_extra_field_is_refused(masker, extra_field):
    with pytest.raises(ValueError, match="dotted path"):
        masker.mask({"x": 1}, extra_fields=[extra_field])


def test_shape_numbers_booleans_and_keys_are_kept(masker):
    payload = {
        "customer.4821@example.com": {"count": 3, "ratio": 0.5, "ok": True, "none": None},
        "rows": [[1, 2], ["a", ["b", {"c": "customer.4821@example.com"}]]],
        "empty": {},
        "nothing": [],
        "blank": "",
    }
    masked = masker.mask(payload)
    assert masked.parameters == {
        "customer.4821@example.com": {"count": 3, "ratio": 0.5, "ok": True, "none": None},
        "rows": [[1, 2], ["a", ["b", {"c": "<EMAIL_ADDRESS>"}]]],
        "empty": {},
        "nothing": [],
        "blank": "",
    }
    assert masked.findings == [Finding("$.rows[1][1][1].c", "EMAIL_ADDRESS")]


def test_a_card_number_sent_as_a_json_number_is_masked(masker):
    masked = masker.mask({"card": 4111111111111111, "as_float": 4111350348166445.0, "order": 1234567890123, "n": 42})

    assert masked.parameters == {"card": "****1111", "as_float": "****6445", "order": 1234567890123, "n": 42}
    assert masked.findings == [Finding("$.card", "CREDIT_CARD"), Finding("$.as_float", "CREDIT_CARD")]


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "reference"])
def test_a_phone_number_sent_as_a_json_number_is_masked_as_its_text_is(masker, fast_path):
    if not fast_path:
        masker = ParameterMasker(masker._analyzer, fast_path=False)
    sent = {
        "phone": 14155550199,
        "as_text": "14155550199",
        "negative": -14155550199,
        "as_float": 14155550199.0,
        "rows": [{"n": 14155550199, "id": 7}],  # a query's answer: SELECT 14155550199 AS n
    }
    masked = masker.mask(sent)
    assert masked.parameters == {
        "phone": "<PHONE_NUMBER>",
        "as_text": "<PHONE_NUMBER>",
        "negative": "<PHONE_NUMBER>",
        "as_float": "<PHONE_NUMBER>",
        "rows": [{"n": "<PHONE_NUMBER>", "id": 7}],
    }
    assert [finding.path for finding in masked.findings] == [
        "$.phone",
        "$.as_text",
        "$.negative",
        "$.as_float",
        "$.rows[0].n",
    ]
    assert masker.mask(masked.parameters).parameters == masked.parameters


def test_numbers_whose_text_masking_keeps_are_kept_as_numbers(masker):
    numbers = {
        "count": 42,
        "bytes": 104857600,
        "unix_s": 1712843946,
        "unix_ms": 1712843946123,
        "order": 1234567890123,
        "day": 20240501,
        "ratio": 14155550199.5,  # a fraction: a measurement, not a number anyone dials
        "big": 10**30,
    }
    masked = masker.mask(numbers)
    assert masked.parameters == numbers and masked.findings == []


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("leak%40example-corp.com", "<EMAIL_ADDRESS>"),
        ("4111%201111%201111%201111", "****1111"),
        ("ssn%3D536-71-1234", "ssn=<US_SSN>"),
        ("alice\uff20example.com", "<EMAIL_ADDRESS>"),  # a full-width at sign
        ("https://example.com/a%20b?q=1", "https://example.com/a%20b?q=1"),  # nothing in it: shown as sent
        ("alice%2540example.com", "<EMAIL_ADDRESS>"),  # percent-encoded twice
        ("alice&#64;example.com", "<EMAIL_ADDRESS>"),  # an HTML character reference
        ("alice&#x40;example.com", "<EMAIL_ADDRESS>"),
        ("alice\\u0040example.com", "<EMAIL_ADDRESS>"),  # a JSON-style escape, written out
        ("".join(f"\\u{ord(c):04x}" for c in "4111111111111111"), "****1111"),
        ("NDExMSAxMTExIDExMTEgMTExMQ==", "****1111"),  # base64 of a card number
        ("key QUtJQUlPU0ZPRE5ON0VYQU1QTEU= here", "key <AWS_ACCESS_KEY> here"),  # base64 of an AWS key
        ("R0I4MiBXRVNUIDEyMzQgNTY5OCA3NjU0IDMy", "<IBAN_CODE>"),  # base64 of an IBAN
        ("ABCDEFGHIJKLMNOPQRSTUVWX", "ABCDEFGHIJKLMNOPQRSTUVWX"),  # base64 of no text: left as sent
        ("staging/analytics/orders", "staging/analytics/orders"),
    ],
)
def test_what_a_disguise_a_reader_sees_through_hides_is_masked(masker, sent, shown):
    assert masker.mask({"v": sent}).parameters == {"v": shown}


#: Characters that show nothing, which a reader skips and a recognizer does not.
INVISIBLE = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u180e", "\u034f", "\u2062")


@pytest.mark.parametrize("invisible", INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("dana.seed@example.org", "<EMAIL_ADDRESS>"),
        ("4111 1111 1111 1111", "****1111"),
        ("AKIAIOSFODNN7EXAMPLE", "<AWS_ACCESS_KEY>"),
        ("ghp_1O4lABCDEFGHIJKLMNOPQRSTUVWXYZ012345", "<GITHUB_TOKEN>"),
    ],
)
def test_a_value_with_invisible_characters_in_it_is_masked(masker, invisible, value, shown):
    middle = len(value) // 2
    once = value[:middle] + invisible + value[middle:]
    everywhere = invisible.join(value.replace(" ", ""))
    masked = masker.mask({"once": once, "everywhere": everywhere, "text": f"mail {once} today"})
    assert masked.parameters == {"once": shown, "everywhere": shown, "text": f"mail {shown} today"}
    assert {finding.path for finding in masked.findings} == {"$.once", "$.everywhere", "$.text"}


@pytest.mark.parametrize(
    "sent",
    ["\U0001f469\u200d\U0001f4bb on call", "co\u00adoperation with finance", "\ufeffquarterly report"],
)
def test_invisible_characters_alone_hide_nothing_and_the_text_is_shown_as_sent(masker, sent):
    masked = masker.mask({"v": sent})
    assert masked.parameters == {"v": sent} and masked.findings == []


def test_the_invisible_code_points_are_unicodes_format_and_default_ignorable_ones():
    import sys

    import regex

    from keyturn.masking.masker import INVISIBLE_RANGES

    listed = {code for first, last in INVISIBLE_RANGES for code in range(first, last + 1)}
    unicode = regex.compile(r"[\p{Cf}\p{Default_Ignorable_Code_Point}]")
    assert listed == {code for code in range(sys.maxunicode + 1) if unicode.match(chr(code))}


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("AKIAQ7G01BSFCFMGSDYQ547", "<AWS_ACCESS_KEY>547"),
        ("U0AKIAQWERTYUIOP123456", "U0<AWS_ACCESS_KEY>"),
        ("x" + "ghp_" + "a1" * 18 + "_tail", "x<GITHUB_TOKEN>_tail"),
    ],
)
def test_a_token_glued_to_other_text_is_still_masked(masker, sent, shown):
    assert masker.mask({"v": sent}).parameters == {"v": shown}


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        # a password behind an empty user name, as Redis URLs and webhooks spell it
        ("redis://:s3cretPW@cache.internal:6379/0", "redis://:<SECRET>@cache.internal:6379/0"),
        ("https://:CBPW105x@hooks.example.internal/cb", "https://:<SECRET>@hooks.example.internal/cb"),
        # a password holding what a URL must encode (%2F, %40), or an @ left unencoded
        ("redis://:ab%2FP4TAILxyz@host", "redis://:<SECRET>@host"),
        ("postgres://app:ab%40P4TAIL@db/x", "postgres://app:<SECRET>@db/x"),
        ("redis://:ab@TAIL@h", "redis://:<SECRET>@h"),
        ("redis://:ab#P5T21@cache.internal:6379", "redis://:<SECRET>@cache.internal:6379"),
        ("postgres://app:ab/P5T22@db/x", "postgres://app:<SECRET>@db/x"),
        ("redis://:ab?P5T23@h", "redis://:<SECRET>@h"),
        # a card with any common separator between its groups
        ("4539_0001_5897_3711", "****3711"),
        ("4539:0001:5897:3711", "****3711"),
        ("4539/0001/5897/3711", "****3711"),
        ("4539 - 0001 - 5897 - 3711", "****3711"),
        ("4111 \u2013 1111 \u2013 1111 \u2013 1111", "****1111"),  # en dashes
        ("4111|1111|1111|1111", "****1111"),
        ("4111__1111__1111__1111", "****1111"),
        ("4111\t1111\t1111\t1111", "****1111"),
        # a card glued to a word, or in dotted groups
        ("acct4977308558031926", "acct****1926"),
        ("x_4977200290096004", "x_****6004"),
        ("4977.3085.5803.1926", "****1926"),
        # an SSN without dashes after its name
        ("ssn:219099999", "ssn:<US_SSN>"),
        ("social security number: 219099999", "social security number: <US_SSN>"),
        # service tokens known by their prefix, whatever their randomness
        ("glpat-abcdefghij1234567890", "<SECRET>"),
        ("sk_live_" + "abcdefghijklmnopqrstuvwx", "<SECRET>"),
        # an Authorization header's credentials written out
        ("Authorization: Basic dXNlcjpodW50ZXIy", "Authorization: Basic <SECRET>"),
        ("Authorization: Bearer abc123def456ghi789", "Authorization: Bearer <SECRET>"),
    ],
)
def test_secrets_and_personal_data_in_their_less_usual_spellings_are_masked(masker, sent, shown):
    assert masker.mask({"v": sent}).parameters == {"v": shown}


@pytest.mark.parametrize(
    "token",
    [
        "glpat-" + "Ab3dEf6hIj9kLm2nOp5q",
        "GR1348941" + "Ab3dEf6hIj9kLm2nOp5q",
        "glcbt-" + "7f_" + "Ab3dEf6hIj9kLm2nOp5q",
        "sk_live_" + "Ab3dEf6hIj9kLm2nOp5qRs8t",
        "rk_live_" + "Ab3dEf6hIj9kLm2nOp5qRs8t",
        "sk-" + "Ab3dEf6hIj9kLm2nOp5q" + "T3BlbkFJ" + "Ab3dEf6hIj9kLm2nOp5q",
        "pypi-AgEIcHlwaS5vcmc" + "Ab3dEf6hIj" * 7,
        "SG." + "Ab3dEf6hIj9kLm2nOp5qRs" + "." + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zA7bC0dE3fG6h",
        "sq0csp-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zA7bC0dE3fG6h",
        "123456789:" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zA7b",
        "0123456789abcdef0123456789abcdef-us12",
    ],
)
def test_service_tokens_known_by_their_prefix_are_masked_inside_any_text(masker, token):
    from keyturn.masking.recognizers.secrets import _PREFIXED_TOKEN_MARK

    assert _PREFIXED_TOKEN_MARK.search(token), "the cheap check must let every such token through"
    masked = masker.mask({"v": f"deploy with {token} today"}).parameters["v"]
    assert token not in masked and "<SECRET>" in masked and masked.startswith("deploy with "), masked


def test_a_hexadecimal_id_is_never_read_as_a_number() -> None:
    """Digits glued to letters may be a card (``acct4977…``), but a UUID's or a digest's digits
    imitate phones and cards often enough to refuse an agent's own ``sdk-<uuid>`` key."""
    import hashlib
    import uuid

    from keyturn.masking.protect import hidden_in_name

    masker = ParameterMasker()
    seen = [
        "sdk-72ea5b6f-0668-4779-9682-fb41b547df6e",  # its groups read as a phone number
        "sdk-431a2817-65e7-412c-b875-d358070397c0",  # its last group as an SSN glued to a letter
        *(f"sdk-{uuid.UUID(int=n * 0x9E3779B97F4A7C15 % 2**128)}" for n in range(1, 3000)),
        *(hashlib.sha256(str(n).encode()).hexdigest() for n in range(1000)),
    ]
    # in requests of a thousand: a call checks at most PHONE_CORES_CHECKED_PER_CALL phone-like
    # digit runs one by one (these 4,000 hold 2,071), and masks the digits of any further wholesale
    for first in range(0, len(seen), 1000):
        parameters = {str(n): value for n, value in enumerate(seen[first : first + 1000])}
        assert masker.mask(parameters).parameters == parameters
    # as an idempotency key, a name that travels in clear, none is refused either
    assert [key for key in seen if hidden_in_name(key)] == []


@pytest.mark.parametrize(
    "kept",
    [
        "a basic idea",
        "the bearer of good news",
        "bearer 2024-01-01",
        "v1.2.3.4",
        "order 20241231123456",
        "no. 219099999",
    ],
)
def test_words_near_those_spellings_are_kept(masker, kept):
    assert masker.mask({"v": kept}).parameters == {"v": kept}


def test_odd_keys_are_quoted_in_finding_paths(masker):
    masked = masker.mask({"odd key": {'q"uote': "customer.4821@example.com"}})
    assert masked.findings == [Finding('$["odd key"]["q\\"uote"]', "EMAIL_ADDRESS")]


def test_findings_carry_paths_and_types_never_values(masker):
    values = [EXAMPLES[e] for e in ("EMAIL_ADDRESS", "US_SSN", "SLACK_TOKEN", "JWT")]
    masked = masker.mask({"notes": values, "password": "hunter2"})
    rendered = json.dumps([list(f) for f in masked.findings]) + repr(masked.findings)
    for value in [*values, "hunter2"]:
        assert value not in rendered
        assert value not in json.dumps(masked.parameters)


def test_masking_a_masked_payload_changes_nothing(masker):
    payload = {
        "note": " ".join(EXAMPLES.values()),
        "password": "hunter2",
        "card_number": "4111 1111 1111 1111",
        "items": [{"contact": EXAMPLES["PHONE_NUMBER"]}],
        "destination": {"credentials": "x"},
    }
    once = masker.mask(payload, extra_fields=["destination.credentials"]).parameters
    twice = masker.mask(once, extra_fields=["destination.credentials"]).parameters
    assert twice == once


def test_the_input_is_not_modified(masker):
    payload = {"a": [{"email": "customer.4821@example.com"}], "password": "hunter2"}
    before = json.dumps(payload)
    masker.mask(payload)
    assert json.dumps(payload) == before


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (["not", "an", "object"], "must be a JSON object"),
        ({"blob": b"\x00\x01"}, r"\$\.blob holds a bytes"),
        ({"when": {1, 2}}, r"\$\.when holds a set"),
    ],
)
def test_non_json_input_is_refused_with_the_path(masker, payload, message):
    with pytest.raises(UnmaskableParameters, match=message):
        masker.mask(payload)


def test_absurdly_deep_nesting_is_refused(masker):
    payload: dict = {}
    node = payload
    for _ in range(100):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(UnmaskableParameters, match="nests deeper"):
        masker.mask(payload)


def test_an_address_after_a_slash_is_masked(masker):
    # the local part may hold "/"; its domain alone decides whether it is an address
    assert masker.mask_text("users/canary-q1@example.com")[0] == "<EMAIL_ADDRESS>"
    assert masker.mask_text("see users/canary-q1@example.com now")[0] == "see <EMAIL_ADDRESS> now"
    assert masker.mask_text("users/someone@host.v1")[0] == "users/someone@host.v1"  # no mail domain ends so


@pytest.mark.parametrize(
    "text",
    ["ask ops.lead@example.internal", "x.person@corp.local", "a@mail.corp", "someone@host.invalidsuffix"],
)
def test_an_address_on_a_private_domain_is_masked_like_any_other(masker, text):
    # an organisation's own mail (.internal, .local, .corp, …) names a person as much as a public one
    masked, kinds = masker.mask_text(text)
    assert "@" not in masked and kinds == ["EMAIL_ADDRESS"]


@pytest.mark.parametrize("text", ["lodash@4.17.21", "image@sha256", "pkg@1.2"])
def test_a_version_or_digest_after_an_at_is_no_address(masker, text):
    assert masker.mask_text(text) == (text, [])


def test_a_url_password_is_masked_and_its_host_stays(masker):
    # "pw@db.corp.internal" reads as an address too; the host is no one's mailbox
    assert masker.mask_text("postgres://report:Pw0rd@db.corp.internal:5432/x")[0] == (
        "postgres://report:<SECRET>@db.corp.internal:5432/x"
    )


@pytest.mark.parametrize(
    "text, shown",
    [
        ("rotate: access_token=a8f3k29dk3mf93kdm3kd93kd", "rotate: access_token=<SECRET>"),
        ("pw: Zq7-Lm2-Rt9-Wx4-Pk ask", "pw: <SECRET> ask"),
        ("auth_token=abc123 passphrase=horse", "auth_token=<SECRET> passphrase=<SECRET>"),
        ('credentials=xyz;token: "q1w2e3r4"', 'credentials=<SECRET>;token: "<SECRET>"'),
        ("https://x.example.com/cb?token=deadbeefcafe&x=1", "https://x.example.com/cb?token=<SECRET>&x=1"),
        ("spring.datasource.password=s3cret", "spring.datasource.password=<SECRET>"),
        ("db_pass = hunter2", "db_pass = <SECRET>"),
        ("Authorization: Token abcdef123456", "Authorization: Token <SECRET>"),
        ("clientSecret:xyz", "clientSecret:<SECRET>"),
        # a password holding signs is masked whole, up to a space or a quote
        ("pw=Tr0ub4dor&3-SEED-C1", "pw=<SECRET>"),
        ("pw: Tr0ub4dor&3-SEED-C1 ask", "pw: <SECRET> ask"),
        ("password=a;b,c&d(e) end", "password=<SECRET> end"),
        ('{"password": "Tr0ub4dor&3;x,y", "user": "bob"}', '{"password": "<SECRET>", "user": "bob"}'),
        # but the next name=value of a query string or a list is no part of it
        (
            "https://x.example.com/login?password=hunter2&user=bob",
            "https://x.example.com/login?password=<SECRET>&user=bob",
        ),
        ("apikey=Ab12&cd=34", "apikey=<SECRET>&cd=34"),
    ],
)
def test_a_value_after_a_secrets_name_is_masked_in_text_as_in_a_field(masker, text, shown):
    assert masker.mask_text(text)[0] == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("password Tr0ub4dor&3-SEED-C1", "password <SECRET>"),
        ("the db password is Tr0ub4dor&3-SEED-C1 ok", "the db password is <SECRET> ok"),
        ("pw Tr0ub4dor&3-SEED-C1", "pw <SECRET>"),
        ("Password was Summer2024! today", "Password was <SECRET> today"),
        ("api_token 'x7Kq2mZp9' for the job", "api_token '<SECRET>' for the job"),
    ],
)
def test_a_generated_looking_value_after_a_secrets_name_and_a_space_is_masked(masker, text, shown):
    assert masker.mask_text(text)[0] == shown


@pytest.mark.parametrize(
    "text",
    [
        "password reset for bob",
        "password changed for user-42 yesterday",
        "reset the password via https://id.example.com/reset",
        "token expires 2024-05-01T10:00:00Z",
        "secret santa list",
        "our key Abc123!x",  # ``key`` alone names no secret
        # a secret reference's name, as the executor's messages give it
        "nothing was changed on the target in secret 'crash-ref-5b3bf2ce'",
    ],
)
def test_a_sentence_about_a_password_stays_readable(masker, text):
    assert masker.mask_text(text) == (text, [])


@pytest.mark.parametrize(
    "text",
    [
        "max_tokens=100 token_type=bearer",
        "time: 12:30 key: value",
        "token=${TOKEN}",
        "access_token=<SECRET>",
        "the secret is out",
        "bypass=true",
    ],
)
def test_a_name_about_a_secret_or_a_placeholder_keeps_its_value(masker, text):
    assert masker.mask_text(text) == (text, [])


def test_mask_text_masks_a_single_string(masker):
    text, types = masker.mask_text("mail customer.4821@example.com or call +1 415 555 0142")
    assert text == "mail <EMAIL_ADDRESS> or call <PHONE_NUMBER>"
    assert types == ["EMAIL_ADDRESS", "PHONE_NUMBER"]


def test_masking_is_the_same_from_many_threads(masker):
    payloads = [
        {"i": i, "note": f"{EXAMPLES[e]} #{i}", "other": [f"ORD-{i:08d}"]} for i, e in enumerate(sorted(EXAMPLES) * 4)
    ]
    expected = [masker.mask(p) for p in payloads]
    results: dict[int, list] = {}

    def work(worker: int) -> None:
        results[worker] = [masker.mask(p) for p in payloads]

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[w] == expected for w in range(4))


def test_building_and_masking_never_touch_the_network_or_load_a_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network or model access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(spacy, "load", refuse)
    monkeypatch.setattr(spacy.cli, "download", refuse)

    masker = ParameterMasker(build_analyzer())
    masked = masker.mask({"note": "mail someone.else@example.net", "n": "+1 415 555 0142"})
    assert masked.parameters == {"note": "mail <EMAIL_ADDRESS>", "n": "<PHONE_NUMBER>"}


def test_memory_does_not_grow_with_unique_values(masker):
    vocab = masker._analyzer.nlp_engine.nlp["en"].vocab
    before = len(vocab)
    for i in range(300):
        masker.mask({"note": f"ticket {i:06x}{i * 7919:x} for customer.{i}@example.com"})
    assert len(vocab) == before


def test_a_text_of_many_digit_groups_is_masked_wholesale_not_checked_one_by_one(masker):
    from keyturn.masking.masker import PHONE_CORES_CHECKED

    # each possible phone number costs python-phonenumbers a millisecond per region: past a few
    # dozen in one string, every digit group is masked as one (over, never under)
    many = " ".join(f"+1 415 555 {1000 + n}" for n in range(PHONE_CORES_CHECKED + 1))
    masked, kinds = masker.mask_text(f"call {many} or mail ops@example.com")
    assert not any(ch.isdigit() for ch in masked) and "ops@example.com" not in masked
    assert set(kinds) == {"PHONE_NUMBER", "EMAIL_ADDRESS"}
    few = " ".join(f"+1 415 555 {1000 + n}" for n in range(3))  # checked one by one, as always
    assert masker.mask_text(f"order 12 of {few}")[0] == "order 12 of <PHONE_NUMBER> <PHONE_NUMBER> <PHONE_NUMBER>"


def test_phone_numbers_are_checked_one_by_one_only_up_to_a_limit_per_call(masker, monkeypatch):
    from keyturn.masking import masker as masker_module

    # each string under the per-string limit, but a request of 60,000 of them cost 54 CPU-s:
    # past the call's limit, the digit groups of every further string are masked wholesale
    monkeypatch.setattr(masker_module, "PHONE_CORES_CHECKED_PER_CALL", 8)
    numbers = [f"+1 415 555 {1000 + n}" for n in range(8)]
    build = "build 7305518"  # seven digits python-phonenumbers does not take for a phone number
    assert masker.mask({"build": build}).parameters == {"build": build}  # checked: stays clear
    masked = masker.mask({"numbers": numbers, "later": ["build 7305519", "order 12"]})
    assert masked.parameters["numbers"] == ["<PHONE_NUMBER>"] * len(numbers)
    assert masked.parameters["later"] == ["build <PHONE_NUMBER>", "order 12"]  # over, never under
    # what the call's limit masked is not remembered as that string's own outcome
    assert masker.mask({"build": "build 7305519"}).parameters == {"build": "build 7305519"}
    # a request within the limit is checked one by one, as always
    few = masker.mask({"numbers": numbers[:3], "build": build}).parameters
    assert few == {"numbers": ["<PHONE_NUMBER>"] * 3, "build": build}


_KEYWORD_LINE_PIECES = [
    "password",
    "api_key",
    "Secret",
    "pwd",
    "=",
    "==",
    ":",
    ";",
    "!=",
    "'",
    '"',
    "`",
    " ",
    ",",
    "\v",
    "\t",
    "x",
    "hunter2",
    "<SECRET>",
    "$HOME",
    "${v}",
    "]",
    "get_secret()",
    "é",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_KEYWORD_LINE_PIECES), max_size=24))
def test_the_keyword_regexes_without_their_no_op_lookahead_match_as_detect_secrets_own(pieces):
    from detect_secrets.plugins.keyword import CONFIG_DENYLIST_REGEX_TO_GROUP

    from keyturn.masking.recognizers.secrets import _NO_OP_LOOKAHEAD, _keyword_regexes

    line = "".join(pieces)
    ours = _keyword_regexes()
    assert len(ours) == len(CONFIG_DENYLIST_REGEX_TO_GROUP)
    for (theirs, group), (mine, my_group) in zip(CONFIG_DENYLIST_REGEX_TO_GROUP.items(), ours, strict=True):
        # the lookahead read on to the line's end at every keyword tried: a line of many
        # ``password=<SECRET>`` cost the square of its length
        assert _NO_OP_LOOKAHEAD in theirs.pattern and _NO_OP_LOOKAHEAD not in mine.pattern
        assert group == my_group
        found = [(m.span(), m.groups()) for m in theirs.finditer(line)]
        assert [(m.span(), m.groups()) for m in mine.finditer(line)] == found


_ID_LINE_PIECES = ["_id", "_ids", "id", "myid", "userids", "Id", "s", " ", "-", ":", "=", "x", "_", "k3Y9aQ"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_ID_LINE_PIECES), max_size=16), st.sampled_from(["k3Y9aQ", "x", "id", "s"]))
def test_the_id_name_check_answers_as_detect_secrets_own_for_every_value_of_a_line(pieces, value):
    from detect_secrets.filters.heuristic import is_likely_id_string
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString

    from keyturn.masking.recognizers.secrets import _IdNames

    line = "".join(pieces) + value
    ids = _IdNames(line)  # asked once per line, then for each value, as the recognizer does
    for start in range(len(line)):
        for end in range(start + 1, len(line) + 1):
            found = line[start:end]
            expected = is_likely_id_string(found, line, Base64HighEntropyString())
            assert ids.before(line.index(found)) == expected, (line, found)


def test_a_line_of_many_masked_assignments_is_masked_again_unchanged(masker):
    line = " ".join(f"password=x{n}" for n in range(2000))
    masked, kinds = masker.mask_text(line)
    assert masked == " ".join(["password=<SECRET>"] * 2000) and kinds == ["SECRET"] * 2000
    assert masker.mask_text(masked) == (masked, [])


def test_a_keyword_assignment_masks_its_value_and_leaves_the_sentence_approvers_read(masker):
    reason = "password=HxAbc12345 was exposed in ticket INC-4411; delete the stale note for project apollo"
    assert masker.mask_text(reason)[0] == (
        "password=<SECRET> was exposed in ticket INC-4411; delete the stale note for project apollo"
    )
    assert masker.mask_text("secret='a b c' rest")[0] == "secret='<SECRET>' rest"  # a quoted value, whole


def test_the_keys_of_a_result_are_masked_like_its_values() -> None:
    from keyturn.executor.results import ResultShaper

    rows = [{"j": {"AKIAXNVFIH2HWLUXVCPZ": 1, "kim.tltjrg@gmail.com": 2, "bob@example.org": 3, "id": 4}}]
    shaped = ResultShaper(10).shape({"row_count": 1, "rows": rows}, ())
    assert shaped["rows"] == [{"j": {"<AWS_ACCESS_KEY>": 1, "<EMAIL_ADDRESS>": 2, "<EMAIL_ADDRESS> (2)": 3, "id": 4}}]


@pytest.mark.parametrize(
    "sent",
    [
        "\uff58\uff4f\uff58\uff42\uff0d126741456618\uff0d448721926020\uff0dmldgRmRUtWiktW3Oz19wRXi2",
        "xoxb\u2010126741456618\u2010448721926020\u2010mldgRmRUtWiktW3Oz19wRXi2",
    ],
)
def test_a_token_in_full_width_or_unicode_dashes_is_masked_whole(masker, sent):
    assert "mldgRmRU" not in masker.mask_text(sent)[0]


def test_a_secret_reference_shows_its_name_masked_as_text_never_a_value(masker):
    # the field says a secret goes there, but a reference only names one: approvers need to know which
    masked = masker.mask(
        {"connection_string": {"secret": "ledger-db"}, "password": {"secret": "AKIAIOSFODNN7EXAMPLE"}, "api_key": "k1"},
        ["parameters.connection_string"],
    )
    assert masked.parameters == {
        "connection_string": {"secret": "ledger-db"},
        "password": {"secret": "<AWS_ACCESS_KEY>"},  # a name holding a key is masked as any text is
        "api_key": "<SECRET>",
    }


def test_a_name_found_clean_is_answered_again_and_a_name_holding_a_secret_is_never_kept():
    from keyturn.masking import protect

    clean = "postgres://staging/analytics/memo-check"
    holding = "deploy-for-jane.doe@example.com"
    assert protect.hidden_in_name(clean) == set()
    assert clean in protect.shared_masker().clean_names
    assert protect.hidden_in_name(clean) == set()  # from the memo, the same answer
    for _ in range(2):  # asked again, it is found again: a refused name is not remembered as clean
        assert protect.hidden_in_name(holding) == {"EMAIL_ADDRESS"}
    assert holding not in protect.shared_masker().clean_names


def test_the_memo_of_clean_names_stays_bounded(monkeypatch):
    from keyturn.masking import protect
    from keyturn.masking.masker import CleanTexts

    memo = CleanTexts(50, 2048)
    monkeypatch.setattr(protect.shared_masker(), "clean_names", memo)
    for n in range(120):
        assert protect.hidden_in_name(f"read.table.part{chr(97 + n % 26)}{chr(97 + n // 26)}") == set()
    assert 0 < len(memo) <= 50
    assert protect.hidden_in_name("x" * (memo.chars + 1)) == set()
    assert "x" * (memo.chars + 1) not in memo
