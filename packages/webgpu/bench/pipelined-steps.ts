// Decode steps timed as the engine's pipelined decode runs them, shared by the GPU benches.
import type { Backend, DeviceBuffer } from '@kvcompress/core';

/** The two id buffers pipelined steps alternate between, and a host copy of each. */
export interface PipelinedIds {
  readonly device: readonly [DeviceBuffer, DeviceBuffer];
  readonly host: readonly [Int32Array, Int32Array];
}

/**
 * `steps` decode steps of `rows` sequences as the engine's pipelined decode runs them
 * (EngineOptions.pipelineDecode): step i + 1 is recorded and submitted, fed step i's
 * device-picked ids, before step i's ids are read, so the host's recording overlaps the GPU's
 * work. `record(deviceTokens, into)` records and submits one step picking its ids into `into`
 * and returns its host milliseconds; the first step gets `deviceTokens` null (its tokens come
 * from the host). Returns the wall and host milliseconds per step.
 */
export async function timePipelinedSteps(
  backend: Pick<Backend, 'read'>,
  steps: number,
  rows: number,
  ids: PipelinedIds,
  record: (deviceTokens: DeviceBuffer | null, into: DeviceBuffer) => number,
): Promise<{ stepMs: number; hostMsPerStep: number }> {
  const t = performance.now();
  let host = 0;
  let pending: Promise<void> | null = null;
  for (let i = 0; i < steps; i++) {
    // Step i picks into one buffer while step i - 1's, in the other, feeds it.
    const into = ids.device[i % 2] as DeviceBuffer;
    const from = ids.device[(i + 1) % 2] as DeviceBuffer;
    host += record(i === 0 ? null : from, into);
    const read = backend.read(into, ids.host[i % 2] as Int32Array, 0, rows);
    if (pending !== null) await pending;
    pending = read;
  }
  await pending;
  return { stepMs: (performance.now() - t) / steps, hostMsPerStep: host / steps };
}
