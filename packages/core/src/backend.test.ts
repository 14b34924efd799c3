import { describe, expect, it } from 'vitest';
import type { DeviceBuffer, DeviceWeight } from './backend.ts';
import { matmulEachInTurn } from './backend.ts';
import { InvalidArgumentError } from './errors.ts';

describe('matmulEachInTurn', () => {
  const buffer = (length: number): DeviceBuffer => ({ length, kind: 'f32' }) as unknown as DeviceBuffer;
  const weight = (name: string): DeviceWeight => ({ name }) as unknown as DeviceWeight;

  it('runs one matmul per matrix, in order, with its own output and bias', () => {
    const calls: [DeviceBuffer, DeviceWeight, number, DeviceWeight | undefined][] = [];
    const backend = {
      matmul: (out: DeviceBuffer, _x: DeviceBuffer, w: DeviceWeight, rows: number, bias?: DeviceWeight) => calls.push([out, w, rows, bias]),
    };
    const outs = [buffer(1), buffer(2), buffer(3)];
    const ws = [weight('q'), weight('k'), weight('v')];
    const bk = weight('bk');
    matmulEachInTurn(backend, outs, buffer(4), ws, 5, [undefined, bk, undefined]);
    expect(calls).toEqual([
      [outs[0], ws[0], 5, undefined],
      [outs[1], ws[1], 5, bk],
      [outs[2], ws[2], 5, undefined],
    ]);
  });

  it('refuses outputs and matrices of different counts, and an output that is x', () => {
    const backend = { matmul: () => {} };
    expect(() => matmulEachInTurn(backend, [buffer(1)], buffer(1), [weight('a'), weight('b')], 1)).toThrow(InvalidArgumentError);
    const x = buffer(1);
    expect(() => matmulEachInTurn(backend, [buffer(1), x], x, [weight('a'), weight('b')], 1)).toThrow(InvalidArgumentError);
  });
});
