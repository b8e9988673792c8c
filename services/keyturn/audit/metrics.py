"""Prometheus metrics of the audit worker, served on ``KEYTURN_AUDIT_METRICS_PORT``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS = Counter("keyturn_audit_records_total", "Event records appended to the audit chain", ["event_type"])
CHECKPOINTS = Counter("keyturn_audit_checkpoints_total", "Signed checkpoints appended", ["reason"])
DUPLICATES = Counter(
    "keyturn_audit_duplicate_events_total", "Events delivered again (redelivery, restart) and not recorded twice"
)
FOREIGN = Counter(
    "keyturn_audit_foreign_records_total",
    "Records found after the writer's last checkpoint at a restart, which no writer wrote (alert on any)",
)
HEAD = Gauge("keyturn_audit_chain_head_sequence", "Sequence of the last record committed to the audit topic")
LAG = Gauge(
    "keyturn_audit_lag_seconds",
    "How long the newest recorded event waited between happening and being committed to the audit",
)
COMMIT_SECONDS = Histogram("keyturn_audit_commit_seconds", "Time to commit one transaction of audit records")
