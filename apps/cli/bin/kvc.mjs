#!/usr/bin/env node
// Installed entry point: runs the built CLI. In the repository, use `pnpm kvc` (runs the sources).
await import('../dist/main.js');
