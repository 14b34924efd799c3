import { defaultServerConditions } from 'vite';
import { defineConfig } from 'vitest/config';

// Shared by every package's vitest.config.ts. The `source` export condition makes
// workspace packages resolve to their TypeScript sources, so tests need no build.
export default defineConfig({
  resolve: { conditions: ['source', ...defaultServerConditions] },
  ssr: { resolve: { conditions: ['source', ...defaultServerConditions] } },
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 60_000,
    // Model loading and browser start-up in beforeAll hooks; CI machines have 2 cores.
    hookTimeout: 180_000,
    pool: 'forks',
  },
});
