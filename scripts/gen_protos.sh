#!/usr/bin/env bash
# Regenerate the committed betterproto2 code from protos/**/*.proto.
#   scripts/gen_protos.sh          write into protos/
#   scripts/gen_protos.sh --check  fail if the committed code is stale
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mapfile -t srcs < <(cd protos && find limiquantix -name '*.proto' | sort)
(cd protos && python -m grpc_tools.protoc -I. --python_betterproto2_out="$out" \
    --python_betterproto2_opt=client_generation=async,server_generation=async "${srcs[@]}")
# The descriptors of every proto (imports included), for the gRPC server's reflection.
(cd protos && python -m grpc_tools.protoc -I. --include_imports \
    --descriptor_set_out="$out/descriptors.binpb" "${srcs[@]}")
# Generated files: every .py the compiler wrote, and the descriptor set.
mapfile -t gen < <(cd "$out" && find . -name '*.py' | sed 's|^\./||' | sort)
gen+=(descriptors.binpb)
if [[ "${1:-}" == "--check" ]]; then
    stale=0
    for f in "${gen[@]}"; do
        if ! cmp -s "$out/$f" "protos/$f"; then echo "stale: protos/$f"; stale=1; fi
    done
    if (( stale )); then echo "generated protos are stale: run 'make protos'" >&2; exit 1; fi
    echo "protos: generated code is up to date"
else
    for f in "${gen[@]}"; do
        mkdir -p "protos/$(dirname "$f")"; cp "$out/$f" "protos/$f"
    done
    echo "protos: regenerated ${#gen[@]} files"
fi
