#!/usr/bin/env bash
# Quality gates for Keyturn's Rego policies (the Makefile calls this).
#
#   opa fmt, opa check --strict, opa check --strict --schema, opa test with coverage
#   >= KEYTURN_REGO_MIN_COVERAGE (default 90), and Regal lint when a regal binary is
#   present ($REGAL or on PATH).
#
# OPA binary: $OPA, else `opa` on PATH, else .cache/bin/opa in the repository.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
dir="$(basename "$here")"
min_coverage="${KEYTURN_REGO_MIN_COVERAGE:-90}"

if [[ -n "${OPA:-}" ]]; then
	opa="$OPA"
elif command -v opa >/dev/null 2>&1; then
	opa="opa"
elif [[ -x "$repo/.cache/bin/opa" ]]; then
	opa="$repo/.cache/bin/opa"
else
	echo "check.sh: no OPA binary: set OPA=/path/to/opa, put opa on PATH, or install it to .cache/bin" >&2
	exit 2
fi

cd "$repo"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

step() { printf '== %s\n' "$*"; }

step "opa $("$opa" version | sed -n 's/^Version: //p') fmt"
if ! "$opa" fmt --fail -l "$dir"; then
	echo "check.sh: the files above are not formatted; run: $opa fmt -w $dir" >&2
	exit 1
fi

step "opa check --strict"
"$opa" check --strict "$dir"

step "opa check --strict --schema $dir/schemas"
"$opa" check --strict --schema "$dir/schemas" "$dir"

step "opa test"
"$opa" test --format json "$dir" >"$work/tests.json" || true
if ! python3 - "$work/tests.json" <<'EOF'; then
import json
import sys

results = json.load(open(sys.argv[1]))
passed = failed = 0
for result in results:
    name = f"{result['package']}.{result['name']}"
    subs = result.get("sub_results") or {}
    broken = bool(result.get("fail") or result.get("error"))
    cases = [(f"{name} / {key}", bool(sub.get("fail") or sub.get("error"))) for key, sub in subs.items()]
    if not cases or (broken and not any(bad for _, bad in cases)):
        cases.append((name, broken))
    for case, bad in cases:
        if bad:
            print(f"FAIL {case}{': ' + str(result['error']) if result.get('error') else ''}")
    failed += sum(1 for _, bad in cases if bad)
    passed += sum(1 for _, bad in cases if not bad)
print(f"rego: {passed} passed, {failed} failed")
sys.exit(1 if failed or not passed else 0)
EOF
	echo "check.sh: tests failed; for traces run: $opa test -v $dir" >&2
	exit 1
fi

step "opa test --coverage (minimum ${min_coverage}%)"
"$opa" test --coverage "$dir" >"$work/coverage.json" || true
python3 - "$work/coverage.json" "$min_coverage" <<'EOF'
import json
import sys

report = json.load(open(sys.argv[1]))
minimum = float(sys.argv[2])
coverage = float(report.get("coverage", 0))
for name, entry in sorted(report.get("files", {}).items()):
    if name.endswith("_test.rego"):
        continue
    missed = [f"{span['start']['row']}-{span['end']['row']}" for span in entry.get("not_covered", [])]
    note = f"  not covered: {', '.join(missed)}" if missed else ""
    print(f"  {entry.get('coverage', 0):6.2f}%  {name}{note}")
print(f"coverage: {coverage:.2f}%")
if coverage < minimum:
    print(f"check.sh: coverage {coverage:.2f}% is below {minimum}%", file=sys.stderr)
    sys.exit(1)
EOF

# The Go module proxy serves no Regal release that parses Rego v1 without `import rego.v1`,
# so Regal runs where a developer has one; it is not installed here.
regal="${REGAL:-$(command -v regal || true)}"
if [[ -n "$regal" ]]; then
	step "regal lint"
	# rule-name-repeats-package: the contract fixes the path data.keyturn.decision.decision.
	"$regal" lint --disable rule-name-repeats-package "$dir"
else
	step "regal lint: skipped (no regal binary; set REGAL=/path/to/regal to run it)"
fi

echo "check.sh: all policy gates passed"
