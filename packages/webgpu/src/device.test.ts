import { setImmediate as nodeSetImmediate } from 'node:timers';
import { promisify } from 'node:util';
import { InvalidArgumentError } from '@kvcompress/core';
import { describe, expect, it } from 'vitest';
import { DEFAULT_DAWN_POLL_MICROS, dawnFlags, dawnPollMicrosFor, throttleImmediates } from './device.ts';

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

describe('dawnPollMicrosFor', () => {
  it('takes the option, else the environment variable, else the default of 50 µs', () => {
    expect(DEFAULT_DAWN_POLL_MICROS).toBe(50);
    expect(dawnPollMicrosFor(undefined, undefined)).toBe(50);
    expect(dawnPollMicrosFor(undefined, '')).toBe(50);
    expect(dawnPollMicrosFor(undefined, ' ')).toBe(50);
    expect(dawnPollMicrosFor(undefined, '0')).toBe(0);
    expect(dawnPollMicrosFor(undefined, '20')).toBe(20);
    expect(dawnPollMicrosFor(0, '20')).toBe(0);
    expect(dawnPollMicrosFor(200, undefined)).toBe(200);
    // Garbage passes through as NaN for throttleImmediates to refuse.
    expect(dawnPollMicrosFor(undefined, 'fast')).toBeNaN();
    expect(() => throttleImmediates(dawnPollMicrosFor(undefined, 'fast'), { setImmediate: nodeSetImmediate })).toThrow(
      InvalidArgumentError,
    );
  });
});

describe('throttleImmediates', () => {
  it("spaces callbacks that look like Dawn's polling turns, and only those", async () => {
    const target: { setImmediate?: unknown } = { setImmediate: nodeSetImmediate };
    throttleImmediates(500, target);
    const wrapped = target.setImmediate as typeof nodeSetImmediate;
    expect(wrapped).not.toBe(nodeSetImmediate);
    const ran: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < 5; i++) {
      // An anonymous function with a prototype, as Dawn's native callback is.
      // biome-ignore lint/complexity/useArrowFunction: the shape of Dawn's callback is the point
      wrapped(function () {
        ran.push(i);
      });
    }
    // Five calls, each at least 0.5 ms after the one before.
    expect(performance.now() - t0).toBeGreaterThanOrEqual(2);
    await new Promise((resolve) => nodeSetImmediate(resolve));
    expect(ran).toEqual([0, 1, 2, 3, 4]);
    // Arrow functions, promise resolvers (the engine's yield) and named functions pass straight
    // through: these 300 calls would take 150 ms if spaced.
    const t1 = performance.now();
    const named = function named() {};
    for (let i = 0; i < 100; i++) wrapped(() => {});
    for (let i = 0; i < 100; i++) wrapped(named);
    await Promise.all(Array.from({ length: 100 }, () => new Promise((resolve) => wrapped(resolve))));
    expect(performance.now() - t1).toBeLessThan(75);
    // util.promisify finds the original's custom form.
    await expect(promisify(wrapped)(7 as never)).resolves.toBe(7);
    // Extra arguments reach the callback.
    await expect(new Promise((resolve) => wrapped((a: number, b: number) => resolve(a + b), 2, 3))).resolves.toBe(5);
    // A new interval updates the installed wrapper; 0 spaces nothing.
    throttleImmediates(0, target);
    expect(target.setImmediate).toBe(wrapped);
    // 200 Dawn-shaped calls would take 100 ms if still spaced.
    const t2 = performance.now();
    // biome-ignore lint/complexity/useArrowFunction: the shape of Dawn's callback is the point
    for (let i = 0; i < 200; i++) wrapped(function () {});
    expect(performance.now() - t2).toBeLessThan(50);
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
