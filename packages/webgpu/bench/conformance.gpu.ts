// The kernel conformance suite (test/conformance-cases.ts) on a real GPU through Dawn: every
// case against the CPU reference, with and without subgroup kernels, under a validation
// error scope. CI runs the same cases in Chromium on SwiftShader; this checks the GPU's own
// compiler and subgroup size. Prints one JSON line per case; exits 1 if any fails.
/// <reference types="@webgpu/types" />
import { CpuBackend } from '@kvcompress/cpu';
import { requestWebGpuDevice } from '../src/device.ts';
import { WebGpuBackend } from '../src/webgpu-backend.ts';
import { cases, maxRelError } from '../test/conformance-cases.ts';

const device = await requestWebGpuDevice();
setInterval(() => {}, 1000);
let failed = 0;
for (const subgroups of [true, false]) {
  for (const c of cases) {
    const expected = await c.run(new CpuBackend());
    device.pushErrorScope('validation');
    const backend = new WebGpuBackend(device, { weightStore: c.weightStore ?? 'f32', subgroups });
    const actual = await c.run(backend);
    const error = await device.popErrorScope();
    let worst = 0;
    expected.forEach((e, i) => {
      worst = Math.max(worst, maxRelError(actual[i] as Float32Array, e));
    });
    const ok = error === null && worst < c.tolerance;
    if (!ok) failed++;
    console.log(
      JSON.stringify({
        kind: 'conformance',
        case: c.name,
        subgroups: backend.subgroups,
        worst,
        tolerance: c.tolerance,
        ok,
        validation: error?.message ?? null,
      }),
    );
    backend.destroyBuffers();
  }
}
console.log(JSON.stringify({ kind: 'conformance-summary', cases: cases.length * 2, failed }));
process.exit(failed === 0 ? 0 : 1);
