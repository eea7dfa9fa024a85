"""Per-file figures of the last mutmut run (`make mutation`), as the table of
docs/mutation-testing.md, then the mutants left alive (survived or not reached by any test).

Reads mutmut's result files (mutants/**/*.py.meta); the exit codes are mutmut 3.7's own
(status_by_exit_code in mutmut/__main__.py).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUT = {-24, 24, 152, 255, 36}
COLUMNS = ("killed", "survived", "no tests", "timeout", "other", "not run")


def status(code: int | None) -> str:
    if code is None:
        return "not run"
    for name, codes in (
        ("killed", KILLED),
        ("survived", SURVIVED),
        ("no tests", NO_TESTS),
        ("timeout", TIMEOUT),
    ):
        if code in codes:
            return name
    return "other"


def main(root: Path) -> int:
    alive: list[str] = []
    print("| file | " + " | ".join(COLUMNS) + " | total | score |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for meta in sorted(root.glob("**/*.py.meta")):
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(status(code) for code in codes.values())
        decided = counts["killed"] + counts["timeout"] + counts["survived"] + counts["no tests"]
        score = (counts["killed"] + counts["timeout"]) / decided if decided else 0.0
        name = meta.relative_to(root).as_posix().removesuffix(".meta")
        cells = " | ".join(str(counts[column]) for column in COLUMNS)
        print(f"| {name} | {cells} | {len(codes)} | {score:.1%} |")
        alive += sorted(
            f"{status(code)}: {key}"
            for key, code in codes.items()
            if status(code) in ("survived", "no tests")
        )
    print()
    print("\n".join(alive))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "mutants")))
