/// <reference types="@webgpu/types" />
import { InvalidArgumentError, KvCompressError } from '@kvcompress/core';

/** No WebGPU adapter: no navigator.gpu, or Dawn found no usable GPU/driver. */
export class WebGpuUnavailableError extends KvCompressError {
  constructor(detail: string) {
    super(
      'WEBGPU_UNAVAILABLE',
      `WebGPU is not available: ${detail}. In a browser, use one with WebGPU enabled; in Node.js, install the "webgpu" package and a Vulkan driver (for CPU-only machines, SwiftShader: set VK_ICD_FILENAMES to vk_swiftshader_icd.json).`,
    );
  }
}

/** The GPU entry point: navigator.gpu in browsers, Dawn (the `webgpu` npm package) in Node.js. */
async function gpu(robustness: boolean, pollMicros: number | undefined): Promise<GPU> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu !== undefined) return nav.gpu;
  let dawn: { create: (flags: string[]) => GPU; globals: Record<string, unknown> };
  try {
    dawn = (await import('webgpu')) as unknown as typeof dawn;
  } catch (error) {
    throw new WebGpuUnavailableError(`navigator.gpu is missing and the "webgpu" package could not be loaded (${(error as Error).message})`);
  }
  // GPUBufferUsage, GPUMapMode and friends, which browsers define globally.
  Object.assign(globalThis, dawn.globals);
  // KVC_DAWN_FLAGS: extra Dawn options, separated by ';' (Node only). A flag's own value may be
  // a comma list, e.g. `enable-dawn-features=disable_robustness,skip_validation`.
  const env = (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env;
  const micros = dawnPollMicrosFor(pollMicros, env?.['KVC_DAWN_POLL_US']);
  // Always applied: a later device asking for 0 turns an earlier spacing off. A negative or
  // non-numeric value throws.
  throttleImmediates(micros);
  return dawn.create(dawnFlags(env?.['KVC_DAWN_FLAGS'], robustness));
}

/**
 * The spacing of Dawn's polling turns in Node.js when neither DeviceOptions.dawnPollMicros nor
 * KVC_DAWN_POLL_US sets one. On an H200 (BENCHMARKS.md, fourteenth session), 50 µs cut the
 * collections during a pending GPU promise from 50 a second (10% of the time in pauses) to
 * none, and raised the engine's decode throughput by 8% (1B shape, 64 sequences).
 */
export const DEFAULT_DAWN_POLL_MICROS = 50;

/**
 * The polling spacing in µs: the option, else the environment variable's value (an empty one
 * counts as unset), else DEFAULT_DAWN_POLL_MICROS. 0 turns the spacing off.
 */
export function dawnPollMicrosFor(option: number | undefined, envValue: string | undefined): number {
  if (option !== undefined) return option;
  if (envValue === undefined || envValue.trim() === '') return DEFAULT_DAWN_POLL_MICROS;
  return Number(envValue);
}

/** What throttleImmediates installed on a global: the wrapper and its current interval. */
const throttled = new WeakMap<object, { wrapper: unknown; micros: number }>();

/**
 * Whether a `setImmediate` callback looks like Dawn's polling turn: Dawn's Node binding passes a
 * fresh native function each turn (Napi::Function::New: anonymous, with a `prototype`). The
 * engine's own yields pass a promise's resolve function (no `prototype`), arrow functions have
 * none either, and named callbacks have a name, so those are never spaced. Were a later Dawn to
 * pass something else, its polling would simply run unspaced again, as Dawn's own.
 */
function looksLikeDawnPoll(callback: unknown): boolean {
  return typeof callback === 'function' && callback.name === '' && Object.hasOwn(callback, 'prototype');
}

/**
 * Spaces Dawn's polling turns at least `micros` apart: it wraps `target.setImmediate`, and a
 * call whose callback looks like Dawn's (looksLikeDawnPoll) spins until `micros` have passed
 * since the last such call (DeviceOptions.dawnPollMicros; 0 spaces nothing). Dawn's Node
 * binding polls for GPU events through the global `setImmediate` while any GPU promise is
 * pending, as fast as the event loop turns (about 130,000-150,000 times a second on this
 * project's VM and on an H200 machine), and each turn leaves about 3 KB of garbage: a major
 * collection every 80-200 ms, pauses of several ms (BENCHMARKS.md, thirteenth and fourteenth
 * sessions). The polling keeps a core busy anyway, so spinning costs the host little; an await
 * on the GPU may resolve up to `micros` later. Other callbacks pass straight through;
 * `util.promisify` keeps working.
 */
export function throttleImmediates(micros: number, target: { setImmediate?: unknown } = globalThis): void {
  if (!(micros >= 0 && Number.isFinite(micros)))
    throw new InvalidArgumentError(`dawnPollMicros (or KVC_DAWN_POLL_US) must be a finite number >= 0, got ${micros}.`);
  const have = throttled.get(target);
  if (have !== undefined && target.setImmediate === have.wrapper) {
    have.micros = micros;
    return;
  }
  const original = target.setImmediate;
  if (typeof original !== 'function' || micros === 0) return;
  const state = { wrapper: undefined as unknown, micros };
  const call = original as (this: unknown, ...a: unknown[]) => unknown;
  let last = 0;
  const wrapper = function setImmediate(this: unknown, callback: unknown, ...args: unknown[]): unknown {
    const ms = state.micros / 1000;
    if (ms > 0 && looksLikeDawnPoll(callback)) {
      let now = performance.now();
      while (now - last < ms) now = performance.now();
      last = now;
    }
    // Every polling turn passes here: no spread where there are no extra arguments (Dawn's case).
    return args.length === 0 ? call.call(this, callback) : call.call(this, callback, ...args);
  };
  // util.promisify.custom and the like.
  Object.defineProperties(wrapper, Object.getOwnPropertyDescriptors(original));
  state.wrapper = wrapper;
  throttled.set(target, state);
  target.setImmediate = wrapper;
}

/**
 * The flags for Dawn's `create()`: KVC_DAWN_FLAGS (';'-separated), plus the device toggle
 * `disable_robustness` when robustness is off, merged into an `enable-dawn-features` list the
 * user gave (Dawn keeps one value per flag).
 */
export function dawnFlags(env: string | undefined, robustness: boolean): string[] {
  const flags = env ? env.split(';').filter((f) => f.length > 0) : [];
  if (robustness) return flags;
  const at = flags.findIndex((f) => f.startsWith('enable-dawn-features='));
  if (at === -1) flags.push('enable-dawn-features=disable_robustness');
  else if (!(flags[at] as string).slice('enable-dawn-features='.length).split(',').includes('disable_robustness'))
    flags[at] += ',disable_robustness';
  return flags;
}

/**
 * The GPU entry points and adapters handed out, referenced for the life of the process: in
 * Dawn's Node binding, a collected GPU object destroys the native instance under devices
 * still in use (heap corruption: segfaults, "futex facility returned an unexpected error
 * code", pthread mutex assertions, at the first submit after a garbage collection).
 */
const keptAlive: unknown[] = [];

export interface DeviceOptions {
  readonly powerPreference?: GPUPowerPreference;
  /** Request the `subgroups` feature when the adapter has it (default true): faster kernels. */
  readonly subgroups?: boolean;
  /** Request `timestamp-query` when the adapter has it (default false): WebGpuBackendOptions.profile. */
  readonly timestamps?: boolean;
  /**
   * Bounds checks on every shader memory access (default true). `false`, in Node.js (Dawn), turns
   * Dawn's robustness transform off (`disable_robustness`): paged decode attention read 4-11%
   * faster on an H100 (BENCHMARKS.md). The kernels keep their own bounds (tested on
   * SwiftShader against the CPU backend), but an out-of-range index would then read or write
   * other GPU memory of this process instead of being clamped. Browsers ignore it.
   */
  readonly robustness?: boolean;
  /**
   * Node.js (Dawn) only: the least time in µs between two turns of Dawn's event polling
   * (default: the KVC_DAWN_POLL_US environment variable, else DEFAULT_DAWN_POLL_MICROS, 50; 0
   * polls as fast as the event loop turns, Dawn's own behaviour). See throttleImmediates: fewer
   * garbage collections, up to this much latency per await. Process-wide (it wraps the global
   * `setImmediate`). Browsers ignore it.
   */
  readonly dawnPollMicros?: number;
}

/**
 * Requests an adapter and a device with the adapter's larger storage and workgroup limits
 * (the defaults cap a storage binding at 128 MiB).
 */
export async function requestWebGpuDevice(options: DeviceOptions = {}): Promise<GPUDevice> {
  const entry = await gpu(options.robustness ?? true, options.dawnPollMicros);
  const adapter = await entry.requestAdapter({ powerPreference: options.powerPreference ?? 'high-performance' });
  if (adapter === null) throw new WebGpuUnavailableError('requestAdapter() returned null');
  keptAlive.push(entry, adapter);
  const L = adapter.limits;
  const features: GPUFeatureName[] = [];
  if ((options.subgroups ?? true) && adapter.features.has('subgroups')) features.push('subgroups' as GPUFeatureName);
  if (options.timestamps === true && adapter.features.has('timestamp-query')) features.push('timestamp-query');
  return adapter.requestDevice({
    requiredFeatures: features,
    requiredLimits: {
      maxStorageBufferBindingSize: L.maxStorageBufferBindingSize,
      maxBufferSize: L.maxBufferSize,
      maxComputeWorkgroupStorageSize: L.maxComputeWorkgroupStorageSize,
      maxStorageBuffersPerShaderStage: Math.min(L.maxStorageBuffersPerShaderStage, 16),
    },
  });
}
