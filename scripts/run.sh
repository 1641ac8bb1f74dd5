#!/usr/bin/env bash
# One entry point for a fresh machine: creates or reuses a virtual environment, installs, then runs.
#   bash scripts/run.sh demo [args]   segment the bundled sample images on embedded defaults
#   bash scripts/run.sh tryout [args] Label Studio, a sample project and the backend on this machine, pre-labeled
#   bash scripts/run.sh test [args]   run the test suite (args go to pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SEGGPT_VENV:-.venv}
python=${PYTHON:-python3}

pip_install() {
    # the machine's pip config names local indexes that may be absent: drop those warnings, keep real errors
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

setup() {
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    # torch first: 2.13.0 is a local CPU build; letting a dependency pull "torch" would download a CUDA build.
    pip_install torch==2.13.0
    pip_install -e ".[test]"
}

command=${1:-}
shift || true
case "$command" in
    demo) setup; exec "$venv/bin/seggpt-ls" demo "$@" ;;
    tryout) setup; exec "$venv/bin/seggpt-ls" tryout "$@" ;;
    test)
        setup
        # the browser tests drive Debian's chromium (never `playwright install`)
        if ! command -v chromium > /dev/null; then
            if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
                (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) > /dev/null
            else
                echo "the browser tests need Debian's chromium: sudo apt-get install chromium" >&2
            fi
        fi
        exec "$venv/bin/python" -m pytest "$@" ;;
    setup) setup ;;
    *) echo "usage: bash scripts/run.sh demo|tryout|test|setup [args]" >&2; exit 2 ;;
esac
