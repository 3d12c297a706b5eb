#!/usr/bin/env bash
# Lists the repository's Go fuzz targets, one `./<package dir>:<FuzzName>` per line, found from the code: every
# `func FuzzXxx(f *testing.F)` in a test file. `make fuzz-short` runs each of them.
set -euo pipefail
cd "$(dirname "$0")/.."
git ls-files -co --exclude-standard '*_test.go' 2>/dev/null | grep -v '^build/' | while read -r f; do
  [ -f "$f" ] || continue
  sed -nE 's/^func (Fuzz[A-Za-z0-9_]*)\(.*\*testing\.F\).*/\1/p' "$f" | while read -r name; do
    echo "./$(dirname "$f"):$name"
  done
done | sort -u
