#!/usr/bin/env bash
# Runs the pytest suite (or the tests named as arguments) under valgrind
# memcheck and reports the errors attributable to rsalloc: invalid reads and
# writes, uses of uninitialised values, invalid frees and definite leaks with
# a frame in the extension (_rsalloc*.so). CPython's own noise is kept out by
# PYTHONMALLOC=malloc and scripts/valgrind-python.supp.
#
#   scripts/memcheck.sh                       # the whole suite (minutes)
#   scripts/memcheck.sh tests/test_model.py   # a part
#
# PYTHON picks the interpreter (default: python); the log goes to
# $MEMCHECK_LOG (default target/memcheck.log). Exits 1 when rsalloc has errors.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
LOG=${MEMCHECK_LOG:-target/memcheck.log}
mkdir -p "$(dirname "$LOG")"
SUPP=(--suppressions=scripts/valgrind-python.supp)
# Debian/Ubuntu ship suppressions for their Python build too.
[ -f /usr/lib/valgrind/python3.supp ] && SUPP+=(--suppressions=/usr/lib/valgrind/python3.supp)

# pymalloc hides every object allocation from valgrind: use libc's malloc.
export PYTHONMALLOC=malloc
# The model test under valgrind: a bounded number of programs.
export RSALLOC_MODEL_EXAMPLES=${RSALLOC_MODEL_EXAMPLES:-10}

set +e
valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
    --errors-for-leak-kinds=definite --num-callers=50 --track-origins=no \
    "${SUPP[@]}" --log-file="$LOG" \
    "$PY" -m pytest -q -p no:cacheprovider "${@:-tests}"
status=$?
set -e
echo "pytest under valgrind exited with $status; log: $LOG"

"$PY" - "$LOG" <<'PYEOF'
import re
import sys
from collections import Counter

text = open(sys.argv[1]).read()
# Each error is a block of "==pid== " lines between blank "==pid==" lines.
blocks, cur = [], []
for line in text.splitlines():
    body = re.sub(r"^==\d+== ?", "", line)
    if body.strip():
        cur.append(body)
    elif cur:
        blocks.append(cur)
        cur = []
if cur:
    blocks.append(cur)

KINDS = {
    "Invalid read": "invalid read",
    "Invalid write": "invalid write",
    "Invalid free": "invalid free",
    "Mismatched free": "mismatched free",
    "Conditional jump": "uninitialised value",
    "Use of uninitialised": "uninitialised value",
    "Syscall param": "uninitialised syscall param",
    "definitely lost": "definite leak",
}
total, ours = Counter(), Counter()
shown = 0
for b in blocks:
    kind = next((k for key, k in KINDS.items() if key in b[0]), None)
    if kind is None:
        continue
    total[kind] += 1
    if any("_rsalloc" in line for line in b):
        ours[kind] += 1
        if shown < 5:
            print("\n".join(b), end="\n\n")
            shown += 1
summary = re.search(r"ERROR SUMMARY: (\d+) errors from (\d+) contexts", text)
print("valgrind:", summary.group(0) if summary else "no summary (did valgrind run?)")
print("all errors by kind:", dict(total) or "none")
print("attributable to rsalloc (_rsalloc*.so in the stack):", dict(ours) or "none")
sys.exit(1 if ours or not summary else 0)
PYEOF
