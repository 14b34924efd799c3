import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defaultClientConditions, defineConfig } from 'vite';
import { demoPlugin } from './vite-plugin.ts';

const here = path.dirname(fileURLToPath(import.meta.url));

export default defineConfig({
  // Relative URLs: the build works from any folder (a static host, a subpath, file servers).
  base: './',
  resolve: {
    // Workspace packages resolve to their TypeScript sources (no package build needed).
    conditions: ['source', ...defaultClientConditions],
    alias: [
      // Dawn (the `webgpu` npm package) is the Node.js WebGPU; browsers have navigator.gpu.
      { find: /^webgpu$/, replacement: path.join(here, 'src/no-dawn.ts') },
      // The ONNX peer baseline of @kvcompress/models, unused here.
      { find: /^onnxruntime-web$/, replacement: path.join(here, 'src/no-onnx.ts') },
    ],
  },
  build: {
    target: 'es2023',
    sourcemap: true,
    // One app chunk (the tokenizer libraries are most of it).
    chunkSizeWarningLimit: 4096,
  },
  plugins: [
    demoPlugin({
      modelDir: process.env['KVC_DEMO_MODEL_DIR'] ?? path.join(here, '../../models/kvc-20m-4k'),
      modelName: 'kvc-20m-4k',
      serviceWorker: path.join(here, 'src/sw.ts'),
    }),
  ],
});
