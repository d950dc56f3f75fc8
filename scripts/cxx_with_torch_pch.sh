#!/usr/bin/env bash
# The C++ compiler for mmcv's ops when scripts/setup.sh builds them (CXX=this script).
# Every one of mmcv's 77 translation units starts by parsing torch's headers (ATen, c10),
# which is most of its compile time here (cpu/roi_align.cpp: 18 s, 6 s without the
# parse). So the headers are parsed once, into a precompiled header built from the first
# unit's own command line (the same flags, defines and include paths), and every unit
# loads it. gcc uses a precompiled header only where the flags allow it, otherwise it
# parses the headers as before (-Winvalid-pch then says why). The code is the same, not
# always the same bytes: in a few functions gcc picks other registers or another order
# (mmcv's whole library: 195 of 308,742 instructions; the ops' outputs identical, README).
# Anything that is not a C++ compile (linking, -v) passes through.
set -euo pipefail
real=${PART_BENCH_REAL_CXX:-c++}
dir=${PART_BENCH_PCH_DIR:?set PART_BENCH_PCH_DIR to a writable folder}

# The unit's command line without its source, object and dependency-file arguments.
source_file=""
header_args=()
skip_next=0
for arg in "$@"; do
    if [ "$skip_next" = 1 ]; then skip_next=0; continue; fi
    case $arg in
        -c|-MMD|-MD) ;;
        -o|-MF) skip_next=1 ;;
        *.cpp|*.cc|*.cxx) source_file=$arg ;;
        *) header_args+=("$arg") ;;
    esac
done
[ -n "$source_file" ] || exec "$real" "$@"

header=$dir/torch_headers.h
(
    flock 9
    if [ ! -e "$header.gch" ] && [ ! -e "$header.failed" ]; then
        printf '#include <torch/types.h>\n' > "$header"
        if "$real" "${header_args[@]}" -x c++-header "$header" -o "$header.gch.partial" 2>/dev/null; then
            mv "$header.gch.partial" "$header.gch"
        else
            # No precompiled header: every unit parses the headers itself, as without
            # this wrapper.
            touch "$header.failed"
        fi
    fi
) 9>"$dir/lock"
if [ -e "$header.gch" ]; then
    exec "$real" -include "$header" -Winvalid-pch "$@"
fi
exec "$real" "$@"
