"""Break one line of a method on purpose and check that a test notices.

    .venv/bin/python scripts/mutation_check.py

Each mutation replaces one line of the code (MAE's masking, PART's targets, DropPos's
loss mask, the cross-attention head), runs the tests that guard it, prints whether they
failed, and puts the file back. Every mutation must be caught: exit status 1 otherwise.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MUTATIONS = [
    ("MAE masking keeps the wrong tokens", "methods/layers/masking.py",
     "ids_keep = ids_shuffle[:, :keep]", "ids_keep = ids_restore[:, :keep]",
     ["tests/test_mae_droppos.py"]),
    ("PART targets point the wrong way", "methods/part.py",
     "shift = (tgt_centre - ref_centre) / ref_size", "shift = (ref_centre - tgt_centre) / ref_size",
     ["tests/test_part.py"]),
    ("DropPos loss on the kept positions", "methods/droppos.py",
     "ce = torch.where(dropped, ce, torch.zeros_like(ce))",
     "ce = torch.where(~dropped, ce, torch.zeros_like(ce))",
     ["tests/test_mae_droppos.py"]),
    ("cross-attention head ignores the target patch", "methods/heads.py",
     "logits_tgt = q_tgt @ keys.transpose(-1, -2)", "logits_tgt = q_ref @ keys.transpose(-1, -2)",
     ["tests/test_part.py"]),
]


def main() -> int:
    missed = 0
    for what, rel, old, new, tests in MUTATIONS:
        path = REPO / rel
        original = path.read_text()
        if original.count(old) != 1:
            print(f"[mutation] {what}: the line to break is not in {rel} exactly once")
            return 2
        try:
            path.write_text(original.replace(old, new))
            run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:warnings",
                                  *tests], cwd=REPO, capture_output=True, text=True)
        finally:
            path.write_text(original)
        failed = [ln for ln in run.stdout.splitlines() if ln.startswith("FAILED")]
        caught = run.returncode != 0
        missed += not caught
        print(f"[mutation] {what} ({rel}): {'caught by ' + failed[0][7:] if failed else 'NOT CAUGHT'}"
              if caught else f"[mutation] {what} ({rel}): NOT CAUGHT")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
