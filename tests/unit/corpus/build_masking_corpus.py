"""Writes ``masking_corpus.json``: seeded sensitive values and decoys in nested JSON.

    python tests/unit/corpus/build_masking_corpus.py

Deterministic (fixed seed): running it again rewrites the same file. Every sensitive value
is synthetic: documentation example keys, test card numbers, IBANs with valid check digits
for made-up accounts, tokens of random characters, keys of random base64.
"""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

SEED = 20240501
OUT = Path(__file__).with_name("masking_corpus.json")
_ALNUM = string.ascii_letters + string.digits


def _random(rng: random.Random, n: int, alphabet: str = _ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(rng: random.Random, claims: dict) -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{_b64url(rng.randbytes(32))}"


def _pem(rng: random.Random, label: str, lines: int, headers: str = "") -> str:
    body = base64.b64encode(rng.randbytes(48 * lines)).decode()
    wrapped = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {label}-----\n{headers}{wrapped}\n-----END {label}-----"


def _iban(country: str, bban: str) -> str:
    digits = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{country}{98 - int(digits) % 97:02d}{bban}"


def sensitive_values(rng: random.Random) -> dict[str, list[str]]:
    """Seeded values by the entity type masking must report for them."""
    return {
        "EMAIL_ADDRESS": [
            "customer.4821@example.com",
            "ops+alerts@mail.example.co.uk",
            "a.b-c_d@corp.example.org",
            "billing@example.io",
        ],
        "PHONE_NUMBER": [
            "+1 415 555 0142",
            "(415) 555-0199",
            "+44 20 7946 0958",
            "+49 30 901820",
            "+33 1 42 68 53 00",
            "+91 98765 43210",
            "+55 11 91234-5678",
            "020 7946 0958",
        ],
        "CREDIT_CARD": [
            "4111 1111 1111 1111",
            "5555555555554444",
            "4012-8888-8888-1881",
            "3782 822463 10005",
            "6011 1111 1111 1117",
            "3530111333300000",
        ],
        "IBAN_CODE": [
            "DE89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
            _iban("FR", "20041010050500013M02606"),
            _iban("NL", "ABNA0417164300"),
            _iban("ES", "21000418450200051332"),
        ],
        "US_SSN": ["536-80-4398", "457 55 5462", "219-09-9999", "665.12.3456"],
        "IP_ADDRESS": ["10.24.8.15", "192.168.10.25", "2001:db8::8a2e:370:7334", "203.0.113.77"],
        "AWS_ACCESS_KEY": [
            "AKIAIOSFODNN7EXAMPLE",
            "ASIA" + _random(rng, 16, string.ascii_uppercase + string.digits),
            "AKIA" + _random(rng, 16, string.ascii_uppercase + string.digits),
        ],
        "AWS_SECRET_KEY": [
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            _random(rng, 40, _ALNUM + "+/"),
        ],
        "GCP_API_KEY": ["AIza" + _random(rng, 35, _ALNUM + "-_")],
        "AZURE_KEY": [base64.b64encode(rng.randbytes(64)).decode()],
        "SLACK_TOKEN": [
            f"xoxb-{rng.randint(10**9, 10**10)}-{rng.randint(10**12, 10**13)}-{_random(rng, 24)}",
            f"xoxp-{rng.randint(10**9, 10**10)}-{rng.randint(10**9, 10**10)}-{_random(rng, 32)}",
            f"https://hooks.slack.com/services/T{_random(rng, 8, string.ascii_uppercase)}"
            f"/B{_random(rng, 8, string.ascii_uppercase)}/{_random(rng, 24)}",
        ],
        "GITHUB_TOKEN": [
            "ghp_" + _random(rng, 36),
            "gho_" + _random(rng, 36),
            "github_pat_" + _random(rng, 22) + "_" + _random(rng, 59),
        ],
        "JWT": [
            _jwt(rng, {"sub": "agent:reporter", "iat": 1714557600, "scope": "db.export"}),
            _jwt(rng, {"sub": "u-4821", "exp": 1714561200, "aud": "keyturn"}),
        ],
        "PRIVATE_KEY": [
            _pem(rng, "RSA PRIVATE KEY", 6),
            _pem(rng, "EC PRIVATE KEY", 3),
            _pem(rng, "OPENSSH PRIVATE KEY", 5),
            _pem(rng, "PRIVATE KEY", 4),
            _pem(
                rng,
                "RSA PRIVATE KEY",
                4,
                "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC," + _random(rng, 32, "0123456789ABCDEF") + "\n\n",
            ),
        ],
        "SECRET": [_random(rng, 14), "sk_live_" + _random(rng, 24), "Tr0ub4dor-3x"],
    }


#: How a value of each type is written into a leaf; ``{v}`` is the value.
CONTEXTS = {
    "AWS_SECRET_KEY": ["aws_secret_access_key = {v}", "AWS_SECRET_KEY: {v}"],
    "AZURE_KEY": [
        "DefaultEndpointsProtocol=https;AccountName=exportseu;AccountKey={v};EndpointSuffix=core.example.net"
    ],
    # A bare short password in a neutrally named field is undetectable by design (field
    # names catch those), so passwords appear where a detector can see them.
    "SECRET": [
        "postgres://report:{v}@db.internal.example:5432/analytics",
        "export PGPASSWORD={v}",
        "db_password: {v}",
    ],
}
SENTENCES = [
    "{v}",
    "{v}",
    "Reach the customer at {v} before noon",
    "Copied from the ticket: {v}",
    "see {v} (from the previous run)",
]

DECOYS = [
    "550e8400-e29b-41d4-a716-446655440000",
    "2024-05-01T10:00:00Z",
    "2024-05-01",
    "2024-05-01 10:00:00+02:00",
    "Mon, 01 May 2024 10:00:00 GMT",
    "10/05/2024",
    "05.10.2024",
    "1714557600",
    "42",
    "1640",
    "2024",
    "12345678",
    "1.24.3",
    "v2.0.0-rc.1",
    "python==3.11.7",
    "node:20.11.1-alpine",
    "https://example.com/api/v2/customers/12345/orders?limit=10&page=2",
    "https://docs.example.org/Guides/Setup2024/Index",
    "s3://exports-eu/2024/q2/part-00001.parquet",
    "/var/log/app/2024-05-01.log",
    "SELECT id FROM customers WHERE region = 'eu'",
    "SELECT id, email FROM customers WHERE created_at >= '2024-01-01' LIMIT 1000",
    "UPDATE orders SET status = 'shipped' WHERE id IN (1042, 1043, 1044)",
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
    "4bf92f3577b34da6a3ce929d0e0e4736",
    "00f067aa0ba902b7",
    "507f1f77bcf86cd799439011",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "registry.example/app@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "ORD-16847292",
    "INV-2024-0042",
    "CHG-10234",
    "1,250.00",
    "EUR 49.99",
    "Quarterly revenue grew 12.5% to 4,250,000 EUR",
    "Processed 1,204 rows in 3.2 seconds",
    "eu-west-1",
    "api-7d9f8c6b5-x2x4z",
    "sg-0123456789abcdef0",
    "arn:aws:iam::123456789012:role/reporting",
    "customer_orders_2024_archive_table",
    "getCustomerOrdersByRegion2024",
    "SGVsbG8gd29ybGQ=",
    "0 */6 * * *",
    "PT15M",
    "#ff8800",
    "user_id=48213",
    "The export finished; 3 files, 12 MB in total.",
    "Rotate the reporting replica credentials next week",
    "password reset requested by the account owner",
    "token_type: bearer",
    # A known false positive, kept so the precision figure stays honest: a four-part build
    # number is also a valid IPv4 address.
    "build 2.1.0.7",
]
KEYS = ["contact", "note", "detail", "reference", "entry", "comment", "text", "summary",
        "origin", "info", "record", "value"]  # fmt: skip
GROUPS = ["request", "details", "context"]
LISTS = ["notes", "items"]


def _leaf(rng: random.Random, entity: str | None, value: str) -> str:
    if entity is None:
        template = rng.choice(["{v}", "{v}", "{v}", "Checked {v} twice"])
    else:
        template = rng.choice(CONTEXTS.get(entity, SENTENCES))
    return template.replace("{v}", value)


def _document(rng: random.Random, leaves: list[tuple[str | None, str]]) -> dict:
    """One nested payload holding ``leaves``, each labelled with its JSON path."""
    payload: dict = {}
    labels = []
    for index, (entity, value) in enumerate(leaves):
        key = f"{rng.choice(KEYS)}_{index}"
        text = _leaf(rng, entity, value)
        shape = rng.choice(("top", "group", "list", "records"))
        if shape == "top":
            payload[key] = text
            path: list = [key]
        elif shape == "group":
            group = rng.choice(GROUPS)
            payload.setdefault(group, {})[key] = text
            path = [group, key]
        elif shape == "list":
            name = rng.choice(LISTS)
            items = payload.setdefault(name, [])
            items.append(text)
            path = [name, len(items) - 1]
        else:
            records = payload.setdefault("records", [])
            records.append({"fields": {key: text}, "position": len(records)})
            path = ["records", len(records) - 1, "fields", key]
        labels.append({"path": path, "entity_type": entity, "value": value})
    return {"payload": payload, "labels": labels}


def build() -> dict:
    """The corpus: documents whose leaves are labelled with what masking must find."""
    rng = random.Random(SEED)
    sensitive = sensitive_values(rng)
    seeded = [(entity, value) for entity, values in sensitive.items() for value in values]
    pool = seeded * 2 + [(None, decoy) for decoy in DECOYS] * 3
    rng.shuffle(pool)
    documents = []
    while pool:
        size = rng.randint(3, 8)
        documents.append(_document(rng, pool[:size]))
        pool = pool[size:]
    return {
        "description": "Seeded masking corpus; see build_masking_corpus.py.",
        "seed": SEED,
        "sensitive": sensitive,
        "decoys": DECOYS,
        "documents": documents,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")
