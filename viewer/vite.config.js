// `npm ci && npm run build` writes the viewer into the Python package (committed there, so users
// need no Node). Relative base: the page is served at /viewer/ by the BentoML service.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  build: {
    outDir: fileURLToPath(new URL('../src/secondreader/viewer/static', import.meta.url)),
    emptyOutDir: true,
    sourcemap: false,
    target: 'es2022',
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 3000,
    // The licences of every bundled package, shipped beside the bundle.
    license: { fileName: 'THIRD_PARTY_LICENSES.md' },
  },
  worker: { format: 'es' },
});
