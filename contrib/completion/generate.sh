#!/bin/sh
# Write pb.bash, pb.zsh and pb.fish (Click's shell completion for pb) into a directory.
# Packagers run it at build time, against the click they ship, because Click's templates
# change between click releases; the scripts are not kept in the source tree for that reason.
#
#   contrib/completion/generate.sh [OUTDIR]                 # uses pb from PATH
#   PB="python -m pony_scheduler" contrib/completion/generate.sh build/completion
set -eu
PB=${PB:-pb}
out=${1:-.}
mkdir -p "$out"
for shell in bash zsh fish; do
    # shellcheck disable=SC2086 # PB may be a command with arguments
    _PB_COMPLETE="${shell}_source" $PB > "$out/pb.$shell.tmp"
    mv "$out/pb.$shell.tmp" "$out/pb.$shell"
done
