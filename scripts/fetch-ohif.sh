#!/usr/bin/env bash
# Fetch the pinned OHIF viewer (the npm package @ohif/app ships a built dist/: nothing to build)
# into .cache/ohif/<version>/package/dist, for the browser test that opens our DICOM outputs in it
# (tests/integration/test_ohif.py). Needs npm and the npm registry; does nothing when present.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-3.13.2}"
target=".cache/ohif/$version"
if [ -f "$target/package/dist/index.html" ]; then
  exit 0
fi
mkdir -p "$target"
tarball=$(cd "$target" && npm pack --silent "@ohif/app@$version")
tar -xzf "$target/$tarball" -C "$target"
rm -f "$target/$tarball"
test -f "$target/package/dist/index.html"
