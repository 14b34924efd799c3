/** Test helper (not part of the public API): `requireShared` in the style of vitest's ctx.skip. */
import { sharedFile } from '@kvcompress/test-support';

/**
 * Absolute path of `relPath` inside the shared folder. When it is missing, the test fails
 * under CI (sharedFile throws) and is skipped with the reason otherwise.
 */
export function requireShared(relPath: string, ctx: { skip: (note?: string) => never }): string {
  return sharedFile(relPath) ?? ctx.skip(`${relPath} is missing from the shared folder (set KVC_SHARED_DIR)`);
}
