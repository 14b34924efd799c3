// Build-time pieces of the demo (Node.js):
// - the default model: served from the repository's models/ folder by the dev server, and
//   copied into the build (never into git) with a manifest of names, sizes and hashes;
// - the service worker: src/sw.ts compiled to sw.js with the list of the build's files, so
//   the app opens offline once it has been loaded.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { copyFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { type Plugin, transformWithOxc } from 'vite';
import { isHfLoaderFile, type ModelManifest } from './src/model-manifest.ts';

export interface DemoPluginOptions {
  /** Folder of the default model (a Hugging Face folder). */
  readonly modelDir: string;
  /** URL folder the model is published under, relative to the app: `models/<name>/`. */
  readonly modelName: string;
  /** The service worker's TypeScript source. */
  readonly serviceWorker: string;
}

/**
 * Names, sizes and SHA-256 of the files the loader reads in a model folder. (A plain Error:
 * this runs while Vite loads its config, before workspace packages resolve; hooks pass the
 * message to Vite's `this.error`.)
 */
export function modelManifest(dir: string, name: string): ModelManifest {
  if (!existsSync(path.join(dir, 'config.json'))) {
    throw new Error(
      `The demo's default model is missing: ${dir} has no config.json. Restore models/ from git (it is committed), or point KVC_DEMO_MODEL_DIR at a Hugging Face model folder.`,
    );
  }
  const files = readdirSync(dir)
    .filter(isHfLoaderFile)
    .sort()
    .map((file) => {
      const bytes = readFileSync(path.join(dir, file));
      return { name: file, size: bytes.byteLength, sha256: createHash('sha256').update(bytes).digest('hex') };
    });
  return { name, files };
}

export function demoPlugin(options: DemoPluginOptions): Plugin {
  const prefix = `models/${options.modelName}/`;
  let manifest: ModelManifest | null = null;
  let outDir = 'dist';
  const getManifest = () => {
    manifest ??= modelManifest(options.modelDir, options.modelName);
    return manifest;
  };
  return {
    name: 'kvc-demo',
    enforce: 'post',
    configResolved(config) {
      outDir = path.resolve(config.root, config.build.outDir);
    },
    configureServer(server) {
      // The dev server reads the model straight from the repository.
      server.middlewares.use((req, res, next) => {
        const url = new URL(req.url ?? '/', 'http://localhost');
        const at = url.pathname.indexOf(`/${prefix}`);
        if (at < 0) return next();
        const file = decodeURIComponent(url.pathname.slice(at + prefix.length + 1));
        let m: ModelManifest;
        try {
          if (file === 'manifest.json') manifest = null; // the model may have changed while the server ran
          m = getManifest();
        } catch (error) {
          server.config.logger.error((error as Error).message);
          res.statusCode = 404;
          res.end((error as Error).message);
          return;
        }
        if (file === 'manifest.json') {
          res.setHeader('content-type', 'application/json');
          res.end(JSON.stringify(m));
          return;
        }
        if (!m.files.some((f) => f.name === file)) {
          res.statusCode = 404;
          res.end();
          return;
        }
        const full = path.join(options.modelDir, file);
        res.setHeader('content-length', String(statSync(full).size));
        res.setHeader('content-type', file.endsWith('.json') ? 'application/json' : 'application/octet-stream');
        createReadStream(full).pipe(res);
      });
    },
    async generateBundle(_, bundle) {
      let m: ModelManifest;
      try {
        m = getManifest();
      } catch (error) {
        this.error((error as Error).message);
      }
      this.emitFile({ type: 'asset', fileName: `${prefix}manifest.json`, source: JSON.stringify(m, null, 1) });
      // The app shell to precache: every emitted file but the model (cached as it loads).
      const shell = ['./', ...Object.keys(bundle).filter((f) => !f.startsWith('models/') && !f.endsWith('.map'))].sort();
      const hash = createHash('sha256');
      for (const b of Object.values(bundle)) hash.update(b.fileName).update(b.type === 'chunk' ? b.code : b.source);
      const version = hash.digest('hex').slice(0, 16);
      const source = readFileSync(options.serviceWorker, 'utf8');
      const { code } = await transformWithOxc(source, options.serviceWorker, { lang: 'ts' });
      const header = `const SHELL = ${JSON.stringify(shell)};\nconst VERSION = ${JSON.stringify(version)};\n`;
      this.emitFile({ type: 'asset', fileName: 'sw.js', source: header + code });
    },
    async writeBundle() {
      const target = path.join(outDir, prefix);
      await mkdir(target, { recursive: true });
      for (const f of getManifest().files) await copyFile(path.join(options.modelDir, f.name), path.join(target, f.name));
    },
  };
}
