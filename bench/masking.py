"""Throughput of parameter masking, fast path against the always-Presidio baseline.

    python bench/masking.py [--seconds N] [--json out.json] [--seed S]

Generates realistic ~1 KB action payloads (database exports, HTTP calls, role changes,
deployments, refunds, e-mails, file shares): about 70% clean and 30% carrying one to three
sensitive values (contacts, cards, IBANs, SSNs, cloud keys, chat and repository tokens,
JWTs, PEM keys, passwords in URLs and commands), placed in free text or in neutrally named
fields so only value detection can find them. Payloads are generated in chunks outside the
timed section and never repeat, so the cache only helps where real traffic repeats too
(template strings, table names, reasons). Both modes run in this one process on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "services"))

from keyturn.masking import ParameterMasker, build_analyzer

CHUNK = 500
SENSITIVE_SHARE = 0.3

REASONS = (
    "Quarterly churn analysis for the finance review",
    "Customer asked for a copy of their data under the access request process",
    "Investigating failed payouts reported by support",
    "Routine rotation of the reporting replica",
    "Backfill after the ingestion incident last week",
    "Preparing the board pack, numbers needed by Friday",
    "Audit sample requested by compliance",
)
REGIONS = ("eu", "us", "apac", "uk")
TABLES = ("customers", "orders", "invoices", "payouts", "sessions", "subscriptions")
COLUMNS = ("id", "created_at", "region", "plan", "status", "amount", "currency", "country")
TEAMS = ("finance", "support", "data-platform", "payments", "growth")


def _ts(rng: random.Random) -> str:
    return (
        f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
    )


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


PROMPTS = (
    "Pull last quarter's churn numbers for the finance review and share them",
    "Refund the duplicate charge the customer complained about this morning",
    "Give the reporting service access to the new billing tables",
    "Roll out the payments fix to production after the canary looked fine",
    "Remind customers with invoices overdue for more than thirty days",
    "Share the quarterly summary with the finance and growth teams",
)


def _agent(rng: random.Random) -> dict:
    return {
        "name": rng.choice(("reporter", "ops-assistant", "billing-bot")),
        "version": f"{rng.randint(1, 3)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}",
        "run_id": _uuid(rng),
        "trace": {"trace_id": _hex(rng, 32), "span_id": _hex(rng, 16)},
        "session": {
            "conversation_id": _uuid(rng),
            "turn": rng.randint(1, 40),
            "prompt_summary": rng.choice(PROMPTS),
            "model": rng.choice(("planner-large", "planner-small")),
        },
        "client": {
            "sdk": "keyturn-python",
            "sdk_version": f"0.{rng.randint(1, 9)}.{rng.randint(0, 9)}",
            "host": f"worker-{rng.randint(1, 40)}.{rng.choice(REGIONS)}.internal",
        },
        "labels": {
            "environment": rng.choice(("production", "staging")),
            "cost_center": f"CC-{rng.randint(1000, 9999)}",
            "team": rng.choice(TEAMS),
        },
    }


def db_export(rng: random.Random) -> dict:
    table = rng.choice(TABLES)
    region = rng.choice(REGIONS)
    return {
        "action": "db.export",
        "requested_at": _ts(rng),
        "request_id": _uuid(rng),
        "target": {"database": "analytics", "schema": "public", "table": table},
        "query": f"SELECT {', '.join(rng.sample(COLUMNS, 4))} FROM {table} "
        f"WHERE region = '{region}' AND created_at >= '2024-0{rng.randint(1, 9)}-01' "
        f"ORDER BY created_at LIMIT {rng.choice((100, 1000, 5000))}",
        "options": {"format": rng.choice(("csv", "parquet")), "compress": True,
                    "max_rows": rng.choice((10_000, 50_000)), "columns": list(COLUMNS[:5])},
        "destination": {"bucket": f"s3://exports-{region}/{table}/", "ttl_hours": 24},
        "reason": rng.choice(REASONS),
        "ticket": f"INC-{rng.randint(10000, 99999)}",
        "tags": rng.sample(TEAMS, 2),
        "agent": _agent(rng),
    }  # fmt: skip


def http_request(rng: random.Random) -> dict:
    customer = rng.randint(10000, 99999)
    return {
        "action": "http.request",
        "requested_at": _ts(rng),
        "method": "POST",
        "url": f"https://api.internal.example/v2/customers/{customer}/refunds",
        "headers": {"Content-Type": "application/json", "Accept": "application/json",
                    "X-Request-Id": _uuid(rng), "User-Agent": "keyturn-executor/1.0"},
        "body": {"order_id": f"ORD-{rng.randint(100000, 999999)}",
                 "amount": round(rng.uniform(5, 500), 2), "currency": rng.choice(("EUR", "USD")),
                 "reason": rng.choice(("duplicate", "fraudulent", "requested_by_customer")),
                 "note": rng.choice(REASONS)},
        "timeout_seconds": 30,
        "retries": 2,
        "agent": _agent(rng),
    }  # fmt: skip


def role_change(rng: random.Random) -> dict:
    return {
        "action": "iam.role_change",
        "requested_at": _ts(rng),
        "subject": {"user": f"u-{rng.randint(1000, 9999)}", "display": "Reporting service"},
        "role_from": "viewer",
        "role_to": rng.choice(("editor", "admin", "billing-admin")),
        "groups": rng.sample(TEAMS, 3),
        "justification": rng.choice(REASONS),
        "expires_at": _ts(rng),
        "conditions": {"mfa_required": True, "ip_allowlist_enforced": rng.random() < 0.5,
                       "max_session_hours": 8},
        "change_ref": f"CHG-{rng.randint(10000, 99999)}",
        "agent": _agent(rng),
    }  # fmt: skip


def deploy(rng: random.Random) -> dict:
    return {
        "action": "k8s.rollout",
        "requested_at": _ts(rng),
        "cluster": f"prod-{rng.choice(REGIONS)}-west-1",
        "namespace": rng.choice(TEAMS),
        "deployment": rng.choice(("api", "worker", "scheduler")),
        "replicas": rng.randint(2, 12),
        "image": f"registry.internal.example/{rng.choice(TEAMS)}/api:"
        f"1.{rng.randint(0, 40)}.{rng.randint(0, 9)}",
        "commit": _hex(rng, 40),
        "strategy": {"type": "RollingUpdate", "max_surge": "25%", "max_unavailable": 0},
        "checks": [{"name": "readiness", "path": "/healthz", "period_seconds": 10},
                   {"name": "smoke", "path": "/v2/ping", "period_seconds": 30}],
        "reason": rng.choice(REASONS),
        "agent": _agent(rng),
    }  # fmt: skip


def email_send(rng: random.Random) -> dict:
    invoice = f"INV-2024-{rng.randint(1, 9999):04d}"
    return {
        "action": "email.send",
        "requested_at": _ts(rng),
        "template": "invoice_reminder",
        "locale": rng.choice(("en-GB", "de-DE", "fr-FR")),
        "subject": f"Your invoice {invoice} is due",
        "variables": {"invoice": invoice, "total": f"{rng.randint(10, 9999)}.00",
                      "due_date": f"2024-0{rng.randint(1, 9)}-28", "plan": "Business"},
        "send_at": _ts(rng),
        "audience": {"segment": "overdue-30d", "region": rng.choice(REGIONS)},
        "reason": rng.choice(REASONS),
        "agent": _agent(rng),
    }  # fmt: skip


def file_share(rng: random.Random) -> dict:
    return {
        "action": "files.share",
        "requested_at": _ts(rng),
        "path": f"/finance/reports/2024/Q{rng.randint(1, 4)}/summary.xlsx",
        "share_with": [f"group:{team}" for team in rng.sample(TEAMS, 2)],
        "permission": rng.choice(("read", "comment")),
        "expires_in_days": 7,
        "message": rng.choice(REASONS),
        "checksum": _hex(rng, 64),
        "labels": {"classification": "internal", "retention": "1y"},
        "agent": _agent(rng),
    }  # fmt: skip


TEMPLATES = (db_export, http_request, role_change, deploy, email_send, file_share)


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randint(0, 9) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    digits.append((10 - total % 10) % 10)
    card = "".join(map(str, digits))
    return " ".join(card[i : i + 4] for i in range(0, 16, 4))


def _iban(rng: random.Random) -> str:
    bban = "".join(rng.choice(string.digits) for _ in range(18))
    number = int(bban + "131400")  # DE → 13 14, check digits 00
    check = 98 - number % 97
    return f"DE{check:02d}{bban}"


def _token(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits):
    return "".join(rng.choice(alphabet) for _ in range(n))


SENSITIVE_VALUES = {
    "email": lambda r: f"user{r.randint(100, 99999)}@mail.example.com",
    "phone": lambda r: f"+1 415 555 {r.randint(1000, 9999)}",
    "card": _luhn_card,
    "iban": _iban,
    "ssn": lambda r: f"{r.randint(100, 665)}-{r.randint(10, 99)}-{r.randint(1000, 9999)}",
    "aws_key": lambda r: "AKIA" + _token(r, 16, string.ascii_uppercase + string.digits),
    "slack": lambda r: f"xoxb-{r.randint(10**10, 10**11)}-{_token(r, 24)}",
    "github": lambda r: "ghp_" + _token(r, 36),
    "jwt": lambda r: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI" + _token(r, 20) + "In0." + _token(r, 43),
    "pem": lambda r: (
        "-----BEGIN RSA PRIVATE KEY-----\n"
        + "\n".join(_token(r, 64, string.ascii_letters + string.digits + "+/") for _ in range(4))
        + "\n-----END RSA PRIVATE KEY-----"
    ),
    "dsn": lambda r: f"postgres://report:{_token(r, 14)}@db.internal.example:5432/analytics",
    "ip": lambda r: f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
}
NEUTRAL_FIELDS = ("contact", "value", "detail", "extra", "context", "reference")


def add_sensitive(payload: dict, rng: random.Random) -> None:
    """Place one to three sensitive values where only value detection can find them."""
    for kind in rng.sample(sorted(SENSITIVE_VALUES), rng.randint(1, 3)):
        value = SENSITIVE_VALUES[kind](rng)
        if rng.random() < 0.5:
            field = rng.choice([k for k, v in payload.items() if isinstance(v, str)])
            payload[field] = f"{payload[field]} (see {value})"
        else:
            payload.setdefault("details", {})[rng.choice(NEUTRAL_FIELDS)] = value


def generate(rng: random.Random, count: int) -> list[dict]:
    """``count`` fresh payloads, about 30% of them carrying sensitive values."""
    payloads = []
    for _ in range(count):
        payload = rng.choice(TEMPLATES)(rng)
        if rng.random() < SENSITIVE_SHARE:
            add_sensitive(payload, rng)
        payloads.append(payload)
    return payloads


def measure(masker: ParameterMasker, rng: random.Random, seconds: float) -> dict:
    """Mask fresh payloads for ``seconds`` of wall time; generation is not timed.

    CPU time of this process is reported next to wall time: on a shared machine it is the
    steadier measure of what one core does.
    """
    masked = 0
    wall = cpu = 0.0
    size = 0
    while wall < seconds:
        chunk = generate(rng, CHUNK)
        done = 0
        started, started_cpu = time.perf_counter(), time.process_time()
        for payload in chunk:
            masker.mask(payload)
            done += 1
            if time.perf_counter() - started + wall >= seconds:
                break
        wall += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
        masked += done
        size += sum(len(json.dumps(payload)) for payload in chunk[:done])
    return {"payloads": masked, "wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
            "payloads_per_second": round(masked / wall, 1),
            "payloads_per_cpu_second": round(masked / cpu, 1),
            "ms_per_payload": round(1000 * wall / masked, 3),
            "mean_payload_bytes": round(size / masked)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="masking time per mode")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    analyzer = build_analyzer()
    fast = ParameterMasker(analyzer)
    build_seconds = time.perf_counter() - started
    baseline = ParameterMasker(analyzer, fast_path=False)

    results = {
        "fast_path": measure(fast, random.Random(args.seed), args.seconds),
        "always_presidio": measure(baseline, random.Random(args.seed), args.seconds),
    }
    fast_row, base_row = results["fast_path"], results["always_presidio"]
    ratio = fast_row["payloads_per_second"] / base_row["payloads_per_second"]
    cpu_ratio = fast_row["payloads_per_cpu_second"] / base_row["payloads_per_cpu_second"]
    hits, misses = fast.cache_stats
    report = {
        "build_seconds": round(build_seconds, 3),
        "modes": results,
        "speedup": round(ratio, 1),
        "speedup_cpu": round(cpu_ratio, 1),
        "cache": {"hits": hits, "misses": misses},
        "sensitive_share": SENSITIVE_SHARE,
        "seconds_per_mode": args.seconds,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }

    print(f"masker build {build_seconds:.2f} s; payloads of ~{fast_row['mean_payload_bytes']} B "
          f"JSON, {SENSITIVE_SHARE:.0%} with sensitive values; load average "
          f"{report['load_average'][0]} on {report['cpus']} CPUs")  # fmt: skip
    print(f"{'mode':<17}{'payloads':>9}{'wall s':>8}{'payloads/s':>12}"
          f"{'ms/payload':>12}{'payloads/cpu-s':>16}")  # fmt: skip
    for mode, row in results.items():
        print(f"{mode:<17}{row['payloads']:>9}{row['wall_seconds']:>8.2f}"
              f"{row['payloads_per_second']:>12.1f}{row['ms_per_payload']:>12.3f}"
              f"{row['payloads_per_cpu_second']:>16.1f}")  # fmt: skip
    print(f"speed-up (fast path / always-Presidio): {ratio:.1f}x wall, {cpu_ratio:.1f}x CPU; "
          f"cache hits {hits}, misses {misses}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
