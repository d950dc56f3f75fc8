"""scripts/cxx_with_torch_pch.sh, the C++ compiler make setup builds mmcv's ops with: it
must precompile the header once, from the unit's own flags, give the same object file as
the plain compiler, and compile as before where the header cannot be precompiled.

A stand-in ``torch/types.h`` (found first on the include path) keeps this to a second."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

WRAPPER = Path(__file__).resolve().parents[1] / "scripts" / "cxx_with_torch_pch.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None or shutil.which("flock") is None
    or "gcc version" not in subprocess.run(["c++", "-v"], capture_output=True, text=True).stderr,
    reason="make setup uses the wrapper only with gcc and flock")

HEADER = """#pragma once
#include <vector>
template <typename T> T scaled_sum(const std::vector<T>& v, T s) {
  T total{};
  for (const T& x : v) total += x * s;
  return total;
}
"""
UNIT = """{prelude}#include <torch/types.h>
double unit_{n}(const std::vector<double>& v) {{ return scaled_sum(v, {n}.5); }}
"""


def compile_unit(tmp: Path, n: int, wrapper: bool, pch_dir: Path, prelude: str = "",
                 extra=(), stderr: list | None = None) -> bytes:
    src = tmp / f"unit{n}.cpp"
    src.write_text(UNIT.format(n=n, prelude=prelude))
    obj = tmp / f"unit{n}{'-pch' if wrapper else ''}.o"
    cmd = [str(WRAPPER) if wrapper else "c++", "-MMD", "-MF", f"{obj}.d", "-O2", "-fPIC",
           f"-I{tmp / 'include'}", "-c", str(src), "-o", str(obj), "-std=c++20",
           "-DTORCH_EXTENSION_NAME=_ext", *extra]
    env = {**os.environ, "PART_BENCH_PCH_DIR": str(pch_dir)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    if stderr is not None:
        stderr.append(out.stderr)
    return obj.read_bytes()


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "include" / "torch").mkdir(parents=True)
    (tmp_path / "include" / "torch" / "types.h").write_text(HEADER)
    (tmp_path / "pch").mkdir()
    return tmp_path


def test_units_load_one_precompiled_header_and_give_the_same_objects(tree):
    pch = tree / "pch" / "torch_headers.h.gch"
    for n in (1, 2):
        assert compile_unit(tree, n, True, tree / "pch") == compile_unit(tree, n, False, tree / "pch")
        assert pch.is_file(), "the first unit should have precompiled the header"
        if n == 1:
            first = pch.stat().st_mtime_ns
    assert pch.stat().st_mtime_ns == first, "the header was precompiled twice"
    # gcc reads the .gch, not the text: with the text gone, the unit still compiles, and
    # gcc's include trace (-H) marks the precompiled header as used ("!")
    (tree / "pch" / "torch_headers.h").write_text("#error the precompiled header was not used\n")
    trace: list = []
    compile_unit(tree, 3, True, tree / "pch", extra=("-H",), stderr=trace)
    assert f"! {pch}" in trace[0], trace[0]


def test_a_header_that_cannot_be_precompiled_leaves_the_compile_as_it_was(tree):
    # a header that needs what its unit defines first cannot be compiled on its own
    (tree / "include" / "torch" / "types.h").write_text("#ifndef UNIT_ONLY\n#error needs UNIT_ONLY\n"
                                                        "#endif\n" + HEADER)
    prelude = "#define UNIT_ONLY 1\n"
    for n in (1, 2):
        assert (compile_unit(tree, n, True, tree / "pch", prelude)
                == compile_unit(tree, n, False, tree / "pch", prelude))
    assert not any((tree / "pch").glob("*.gch"))
    assert (tree / "pch" / "torch_headers.h.failed").is_file()


def test_what_is_not_a_compile_passes_through(tree):
    out = subprocess.run([str(WRAPPER), "-v"], capture_output=True, text=True,
                         env={**os.environ, "PART_BENCH_PCH_DIR": str(tree / "pch")})
    assert out.returncode == 0 and "gcc version" in out.stderr
    assert not any((tree / "pch").glob("*.gch"))
