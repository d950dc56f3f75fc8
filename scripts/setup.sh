#!/usr/bin/env bash
# Builds .venv with everything the suite needs, including mmcv 2.1.0 with its
# compiled ops. mmcv has no wheel on the registry: it is built once from its sdist and
# the wheel is cached, keyed by torch version (and CUDA when nvcc exists), so later
# runs and CI reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH=2.14.1
TORCHVISION=0.29.1
TORCHAUDIO=2.11.0
MMCV=2.1.0
CACHE=${PART_BENCH_CACHE:-$HOME/.cache/part-bench}

step() { printf '\n[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV"
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip wheel "setuptools<82"

step "installing torch $TORCH, torchvision $TORCHVISION, torchaudio $TORCHAUDIO"
$PIP install -q "torch==$TORCH" "torchvision==$TORCHVISION" "torchaudio==$TORCHAUDIO"

step "installing part-bench and its pinned dependencies"
$PIP install -q -e .

# mmcv: one wheel per (torch, cuda) pair
# CUDA ops where a CUDA toolkit AND a GPU exist (a toolkit alone, as on CPU CI
# machines, would only make the build slower). PART_BENCH_MMCV_CUDA=1 builds them from
# the toolkit alone (a cluster's login node without a GPU); PART_BENCH_CPU_ONLY=1 never.
if command -v nvcc >/dev/null 2>&1 && [ "${PART_BENCH_CPU_ONLY:-0}" != 1 ] \
    && { [ "${PART_BENCH_MMCV_CUDA:-0}" = 1 ] || "$VENV/bin/python" -c \
         "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }; then
    FLAVOUR="cuda$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
    export FORCE_CUDA=1
else
    FLAVOUR=cpu
fi
WHEELS="$CACHE/wheels/torch-$TORCH-$FLAVOUR"
mkdir -p "$WHEELS"
if "$VENV/bin/python" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV'" 2>/dev/null; then
    step "mmcv $MMCV with ops already installed"
else
    WHEEL=$(ls "$WHEELS"/mmcv-$MMCV-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$WHEEL" ]; then
        step "building mmcv $MMCV with compiled ops ($FLAVOUR); about 4 minutes on 2 cores, once"
        BUILD=$(mktemp -d)
        trap 'rm -rf "$BUILD"' EXIT
        $PIP download -q --no-deps --no-build-isolation --no-binary :all: "mmcv==$MMCV" -d "$BUILD"
        tar -xzf "$BUILD"/mmcv-$MMCV.tar.gz -C "$BUILD"
        SRC="$BUILD/mmcv-$MMCV"
        # torch >= 2.10 headers need C++20; mmcv's setup.py hard-codes C++17 after
        # any flags from the environment, so the flag itself is rewritten.
        sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
        # No debug information: setuptools replaces Python's own CFLAGS (-g -O3 -DNDEBUG
        # ...) by $CFLAGS when it is set, and torch's cpp_extension puts those flags on
        # every host compile line of mmcv's ops. The same flags with -g0 instead of -g
        # keep the optimisation and the ops as they were; without DWARF for torch's
        # headers in every translation unit the compiler and assembler do less work and
        # the objects are a fraction of the size. -s strips the linked library as well.
        # Measured on one op here (cpu/roi_align.cpp, 1 of 77 translation units, under
        # load): 38 s -> 20 s of compiler CPU time, object 4.6 MB -> 0.09 MB; the
        # library of a build with debug information is 82 MB, 2.0 MB without it.
        NODEBUG="$("$VENV/bin/python" -c \
            'import sysconfig; print(" ".join(f for f in (sysconfig.get_config_var("CFLAGS") or "").split() if not f.startswith("-g")))') -g0"
        # torch's headers parsed once for all 77 units, through a precompiled header
        # (scripts/cxx_with_torch_pch.sh says how; gcc only, and only where flock exists).
        # Measured on cpu/roi_align.cpp: 18.4 s -> 6.3 s, the object byte-identical.
        if [ -z "${CXX:-}" ] && command -v flock >/dev/null 2>&1 \
            && c++ -v 2>&1 | grep -q '^gcc version'; then
            export CXX="$PWD/scripts/cxx_with_torch_pch.sh" PART_BENCH_PCH_DIR="$BUILD"
        fi
        (
            cd "$SRC"
            CFLAGS="$NODEBUG" CXXFLAGS="$NODEBUG" LDFLAGS="${LDFLAGS:-} -s" \
            MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
                "$OLDPWD/$VENV/bin/python" -m pip wheel --no-build-isolation --no-deps -v . -w "$WHEELS" 2>&1 \
                | sed -unE -e 's#^ *(\[[0-9]+/[0-9]+\]) .* -c \S*/(mmcv/ops/csrc/\S+) -o .*#\1 \2#p' \
                          -e '/Building wheel|Created wheel|error|Winvalid-pch/p' || true
        )
        WHEEL=$(ls "$WHEELS"/mmcv-$MMCV-*.whl 2>/dev/null | head -n 1 || true)
        [ -n "$WHEEL" ] || { echo "[setup] error: mmcv $MMCV build failed (see above)" >&2; exit 1; }
    fi
    step "installing $(basename "$WHEEL")"
    $PIP install -q --no-deps "$WHEEL"
fi

step "checking mmcv's compiled ops against hand-computed answers (make doctor)"
"$VENV/bin/python" -m benchmarks.doctor

step "done: activate with 'source $VENV/bin/activate', check with 'make doctor'"
