// The kernel conformance suite (test/conformance-cases.ts) on a real GPU through Dawn: every
// case against the CPU reference, with and without subgroup kernels, and the K/V cases with
// the pool in 2-4 chunk buffers, under a validation error scope. CI runs the same cases in
// Chromium on SwiftShader; this checks the GPU's own compiler and subgroup size. Prints one
// JSON line per case; exits 1 if any fails.
/// <reference types="@webgpu/types" />
import { requestWebGpuDevice } from '../src/device.ts';
import { cases } from '../test/conformance-cases.ts';
import { runConformanceCase } from '../test/run-case.ts';

// ROBUSTNESS=0: Dawn's bounds-checking transform off (DeviceOptions.robustness).
const device = await requestWebGpuDevice({ robustness: process.env['ROBUSTNESS'] !== '0' });
setInterval(() => {}, 1000);
let failed = 0;
for (const subgroups of [true, false]) {
  for (const c of cases) {
    const r = await runConformanceCase(device, c, subgroups);
    const ok = r.validation === null && r.worst < r.tolerance;
    if (!ok) failed++;
    console.log(JSON.stringify({ kind: 'conformance', case: c.name, ...r, ok }));
  }
}
// The K/V cases again with the pool forced into 2-4 chunk buffers (as CI does on SwiftShader).
const kvCases = cases.filter((c) => /attention|cache moves|append/.test(c.name));
for (const [i, c] of kvCases.entries()) {
  const r = await runConformanceCase(device, c, true, 2 + (i % 3));
  const ok = r.validation === null && r.worst < r.tolerance && r.kvChunks >= 2;
  if (!ok) failed++;
  console.log(JSON.stringify({ kind: 'conformance', case: c.name, chunked: true, ...r, ok }));
}
console.log(JSON.stringify({ kind: 'conformance-summary', cases: cases.length * 2 + kvCases.length, failed }));
process.exit(failed === 0 ? 0 : 1);
