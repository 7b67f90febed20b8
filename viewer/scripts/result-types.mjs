// The viewer's types of contract 2 (the study result and the answers built from it), generated from
// the committed JSON Schema, ../src/secondreader/result.schema.json (itself generated from the
// Python models, secondreader.schema), into src/result.d.ts. The code that reads results declares
// them with JSDoc and `npm run typecheck` (tsc, checkJs) checks it against them, so a field renamed
// or removed in the schema fails the check instead of showing blanks in the viewer.
//
//   npm run types            rewrite src/result.d.ts
//   npm run types -- --check fail if src/result.d.ts is not what the schema generates
import { readFileSync, writeFileSync } from 'node:fs';
import { compile } from 'json-schema-to-typescript';

const SCHEMA = new URL('../../src/secondreader/result.schema.json', import.meta.url);
const TYPES = new URL('../src/result.d.ts', import.meta.url);

const schema = JSON.parse(readFileSync(SCHEMA, 'utf8'));
// The schema's root is a $ref to $defs/StudyResult: typed as it stands, the root would be a second
// copy of StudyResult. Here StudyResult is the root, and the references to it point at the root.
const { StudyResult, ...defs } = schema.$defs;
const root = JSON.parse(JSON.stringify({ ...StudyResult, $defs: defs }).replaceAll('"#/$defs/StudyResult"', '"#"'));

const text = await compile(root, 'StudyResult', {
  bannerComment: '/* Generated from src/secondreader/result.schema.json by `npm run types` '
    + '(viewer/scripts/result-types.mjs): do not edit. */',
  unreachableDefinitions: true,
  unknownAny: true,
  additionalProperties: false,
  style: { singleQuote: true, printWidth: 120 },
});

if (process.argv.includes('--check')) {
  let current = '';
  try {
    current = readFileSync(TYPES, 'utf8');
  } catch {
    // missing: stale
  }
  if (current !== text) {
    console.error('viewer: src/result.d.ts is not what result.schema.json generates; run (cd viewer && npm run types)');
    process.exit(1);
  }
  console.log('viewer: src/result.d.ts is what result.schema.json generates');
} else {
  writeFileSync(TYPES, text);
}
