import { setImmediate as nodeSetImmediate } from 'node:timers';
import { promisify } from 'node:util';
import { InvalidArgumentError } from '@kvcompress/core';
import { describe, expect, it } from 'vitest';
import { dawnFlags, throttleImmediates } from './device.ts';

describe('dawnFlags', () => {
  it('passes KVC_DAWN_FLAGS through, split on ";" so a flag may hold a comma list', () => {
    expect(dawnFlags('backend=vulkan;enable-dawn-features=skip_validation,use_user_defined_labels_in_backend', true)).toEqual([
      'backend=vulkan',
      'enable-dawn-features=skip_validation,use_user_defined_labels_in_backend',
    ]);
    expect(dawnFlags(undefined, true)).toEqual([]);
    expect(dawnFlags(';;', true)).toEqual([]);
  });

  it('adds disable_robustness when robustness is off, merged into the enabled toggles', () => {
    expect(dawnFlags(undefined, false)).toEqual(['enable-dawn-features=disable_robustness']);
    expect(dawnFlags('backend=vulkan;enable-dawn-features=skip_validation', false)).toEqual([
      'backend=vulkan',
      'enable-dawn-features=skip_validation,disable_robustness',
    ]);
    expect(dawnFlags('enable-dawn-features=disable_robustness', false)).toEqual(['enable-dawn-features=disable_robustness']);
  });
});

describe('throttleImmediates', () => {
  it('spaces setImmediate calls at least the interval apart, still scheduling every callback', async () => {
    const target: { setImmediate?: unknown } = { setImmediate: nodeSetImmediate };
    throttleImmediates(500, target);
    const wrapped = target.setImmediate as typeof nodeSetImmediate;
    expect(wrapped).not.toBe(nodeSetImmediate);
    const ran: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < 5; i++) wrapped(() => ran.push(i));
    // Five calls, each at least 0.5 ms after the one before.
    expect(performance.now() - t0).toBeGreaterThanOrEqual(2);
    await new Promise((resolve) => nodeSetImmediate(resolve));
    expect(ran).toEqual([0, 1, 2, 3, 4]);
    // util.promisify finds the original's custom form.
    await expect(promisify(wrapped)(7 as never)).resolves.toBe(7);
    // A new interval updates the installed wrapper; 0 spaces nothing.
    throttleImmediates(0, target);
    expect(target.setImmediate).toBe(wrapped);
    const t1 = performance.now();
    for (let i = 0; i < 100; i++) wrapped(() => {});
    expect(performance.now() - t1).toBeLessThan(50);
  });

  it('installs nothing for 0 or where there is no setImmediate, and rejects bad intervals', () => {
    const target: { setImmediate?: unknown } = { setImmediate: nodeSetImmediate };
    throttleImmediates(0, target);
    expect(target.setImmediate).toBe(nodeSetImmediate);
    const browser: { setImmediate?: unknown } = {};
    throttleImmediates(100, browser);
    expect(browser.setImmediate).toBeUndefined();
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY])
      expect(() => throttleImmediates(bad, target)).toThrow(InvalidArgumentError);
  });
});
