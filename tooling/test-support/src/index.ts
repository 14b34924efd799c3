import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (tooling/test-support/src/../../..). */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** The project's shared folder (models, data): KVC_SHARED_DIR, else ../shared beside the checkout. */
export function sharedDir(): string {
  return process.env['KVC_SHARED_DIR'] ?? path.resolve(repoRoot, '../shared');
}

/**
 * Absolute path of a file in the shared folder, or null when it is missing. In CI
 * (`CI=true`) a missing file throws, so a test that needs it fails instead of skipping.
 */
export function sharedFile(relative: string): string | null {
  const p = path.join(sharedDir(), relative);
  if (existsSync(p)) return p;
  if (process.env['CI'] === 'true' || process.env['CI'] === '1') {
    throw new Error(`Shared test file ${p} is missing; CI needs ../shared (or KVC_SHARED_DIR) with ${relative}.`);
  }
  return null;
}

/** Same as sharedFile, for use with `it.skipIf(!hasShared(...))`. */
export function hasShared(...relatives: string[]): boolean {
  return relatives.every((r) => sharedFile(r) !== null);
}

/** sharedFile for a file a test has already checked with hasShared. */
export function sharedPath(relative: string): string {
  const p = sharedFile(relative);
  if (p === null) throw new Error(`missing shared file ${relative}`);
  return p;
}

/** The project's default model, committed in the repository (trained by tooling/train). */
export const defaultModelDir = path.join(repoRoot, 'models', 'kvc-20m-4k');

/** Debian's Chromium (KVC_CHROMIUM overrides): browser tests never download a browser. */
export const chromiumPath = process.env['KVC_CHROMIUM'] ?? '/usr/bin/chromium';

/**
 * Flags for headless Chromium with WebGPU on SwiftShader in a closed network: WebGPU is off
 * without --enable-unsafe-webgpu; --no-sandbox because CI runs as root.
 */
export const chromiumWebGpuArgs: readonly string[] = [
  '--enable-unsafe-webgpu',
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--use-webgpu-adapter=swiftshader',
];
