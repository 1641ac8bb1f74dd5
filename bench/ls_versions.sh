#!/usr/bin/env bash
# Runs the Label Studio contract tests against each Label Studio release pip offers from 1.20 on (or from $1), each
# installed once into its own cached venv (~/.cache/seggpt-ls/ls-VERSION, 1-2 min each), and prints a markdown
# table for docs/deployment.md. The contract: /setup, /predict and /versions (retrieve predictions), the bulk
# prediction import (bootstrap), webhooks (project events), and the interactive context (the exemplar click).
#   bash bench/ls_versions.sh [FROM]                  e.g. bash bench/ls_versions.sh 1.20.0
#   LS_VERSIONS="1.21.0 1.22.0" bash bench/ls_versions.sh   exactly these releases
set -uo pipefail
cd "$(dirname "$0")/.."
from=${1:-1.20.0}
python=${SEGGPT_VENV:-.venv}/bin/python
cache=${SEGGPT_CACHE:-$HOME/.cache/seggpt-ls}
tests=(
    "tests/test_e2e_label_studio.py::test_retrieve_predictions_end_to_end"
    "tests/test_e2e_bootstrap.py::test_bootstrap_gives_exactly_one_prediction_per_task"
    "tests/test_e2e_bootstrap.py::test_project_events_update_the_pool_and_human_work_is_kept"
    "tests/test_e2e_interactive.py::test_a_clicked_instance_returns_the_others_through_label_studio"
)
if [ -n "${LS_VERSIONS:-}" ]; then
    versions=$LS_VERSIONS
else
    # final releases only (no .post/.dev/rc), oldest first, from $from on
    versions=$("$python" -m pip index versions label-studio 2>/dev/null | sed -n 's/^Available versions: //p' | tr -d ' ' | tr ',' '\n' \
        | "$python" -c "
import sys
from_ = tuple(int(p) for p in '$from'.split('.'))
found = [v for v in sys.stdin.read().split() if v.replace('.', '').isdigit() and tuple(int(p) for p in v.split('.')) >= from_]
print(' '.join(sorted(found, key=lambda v: tuple(int(p) for p in v.split('.')))))")
fi
[ -n "$versions" ] || { echo "no Label Studio release found from $from (is the package index reachable?)" >&2; exit 2; }
rows=()
for version in $versions; do
    venv=$cache/ls-$version
    install_s=0
    if [ ! -x "$venv/bin/label-studio" ]; then
        start=$(date +%s)
        "$python" -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check "label-studio==$version" > "$cache/ls-$version-install.log" 2>&1
        install_s=$(( $(date +%s) - start ))
        if [ ! -x "$venv/bin/label-studio" ]; then
            rows+=("| $version | install failed (see $cache/ls-$version-install.log) | | |")
            continue
        fi
    fi
    start=$(date +%s)
    log=$cache/ls-$version-contract.log
    SEGGPT_LS_VENV=$venv "$python" -m pytest -q -p no:cacheprovider "${tests[@]}" > "$log" 2>&1
    code=$?
    summary=$(tail -n 1 "$log" | sed 's/=//g; s/^ *//; s/ *$//')
    verdict=$([ $code = 0 ] && echo pass || echo FAIL)
    failed=$(grep -o '^FAILED [^ ]*' "$log" | sed 's/^FAILED tests\///; s/.*:://' | tr '\n' ' ')
    rows+=("| $version | $verdict: $summary ${failed:+($failed)}| $install_s | $(( $(date +%s) - start )) |")
    echo "label-studio $version: $verdict ($summary)" >&2
done
echo "| Label Studio | contract tests | install (s) | tests (s) |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
