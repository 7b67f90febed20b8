#!/usr/bin/env bash
# Check the viewer's result types against src/secondreader/result.schema.json (npm run typecheck).
# Rebuild the viewer from viewer/src (npm ci, then vite build) into a temporary folder, and fail if
# the bundle shipped in src/secondreader/viewer/static differs: viewer/src and what users run cannot
# drift apart. The build is reproducible (content-hashed file names, no timestamps), so any
# difference is a change to viewer/ that was not rebuilt, or a hand edit of the bundle.
set -euo pipefail
cd "$(dirname "$0")/../viewer"
npm ci --no-audit --no-fund --prefer-offline --loglevel=error
# The viewer's result types (src/result.d.ts) are what contract 2's JSON Schema generates, and the
# code that reads results type-checks against them (tsc): a field the viewer reads that the schema
# renamed or dropped fails here.
npm run --silent typecheck
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
npx vite build --outDir "$out/static" --emptyOutDir --logLevel error
if ! diff -rq "$out/static" ../src/secondreader/viewer/static; then
  echo "viewer: the shipped bundle is not what viewer/src builds to; run (cd viewer && npm ci && npm run build) and commit src/secondreader/viewer/static" >&2
  exit 1
fi
echo "viewer: the shipped bundle is what viewer/src builds to"
