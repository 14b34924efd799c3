/// <reference types="@webgpu/types" />
// The page: loads a model, runs it on WebGPU (or the CPU) through the engine, and draws what
// per-head compression does while it runs. Everything shown comes from src/runner.ts.
import { type Backend, formatBytes, InvalidArgumentError, type KvDtype, kvBytesPerToken, kvShapeOf } from '@kvcompress/core';
import { CpuBackend } from '@kvcompress/cpu';
import { type Budget, type EvictionPolicy, policies, registerPolicy } from '@kvcompress/eviction';
import { DeviceLostError, requestWebGpuDevice, WebGpuBackend, WebGpuUnavailableError } from '@kvcompress/webgpu';
import { CUSTOM_POLICY } from './custom-policy.ts';
import { sum } from './format.ts';
import { loadModelFromFiles, loadServedModel, type ModelChoice, pickedFromFile } from './model-files.ts';
import { type BuiltPrompt, buildPrompt, PROMPT_PRESETS } from './prompts.ts';
import { DemoRunner, type RunSettings, type RunView } from './runner.ts';
import { RunViews } from './views.ts';

const DEFAULT_MODEL_URL = 'models/kvc-20m-4k/';

function byId<T extends HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (e === null) throw new InvalidArgumentError(`The page has no #${id}; index.html and main.ts are out of step.`);
  return e as T;
}

const ui = {
  status: byId<HTMLElement>('status'),
  progress: byId<HTMLProgressElement>('progress'),
  banner: byId<HTMLElement>('banner'),
  form: byId<HTMLFormElement>('controls'),
  modelInfo: byId<HTMLElement>('model-info'),
  loadDefault: byId<HTMLButtonElement>('load-default'),
  pickFiles: byId<HTMLInputElement>('pick-files'),
  pickFolder: byId<HTMLInputElement>('pick-folder'),
  backend: byId<HTMLSelectElement>('backend'),
  maxContext: byId<HTMLInputElement>('max-context'),
  kvDtype: byId<HTMLSelectElement>('kv-dtype'),
  weights: byId<HTMLSelectElement>('weights'),
  blockSize: byId<HTMLSelectElement>('block-size'),
  preset: byId<HTMLSelectElement>('preset'),
  newExample: byId<HTMLButtonElement>('new-example'),
  prompt: byId<HTMLTextAreaElement>('prompt'),
  promptTokens: byId<HTMLElement>('prompt-tokens'),
  answerHint: byId<HTMLElement>('answer-hint'),
  policy: byId<HTMLSelectElement>('policy'),
  policyDescription: byId<HTMLElement>('policy-description'),
  rateRow: byId<HTMLElement>('rate-row'),
  tokensRow: byId<HTMLElement>('tokens-row'),
  rateSlider: byId<HTMLInputElement>('rate-slider'),
  rate: byId<HTMLInputElement>('rate'),
  maxCacheTokens: byId<HTMLInputElement>('max-cache-tokens'),
  protectedWindow: byId<HTMLInputElement>('protected-window'),
  sinks: byId<HTMLInputElement>('sinks'),
  interval: byId<HTMLInputElement>('interval'),
  maxTokens: byId<HTMLInputElement>('max-tokens'),
  temperature: byId<HTMLInputElement>('temperature'),
  topK: byId<HTMLInputElement>('top-k'),
  topP: byId<HTMLInputElement>('top-p'),
  seed: byId<HTMLInputElement>('seed'),
  compare: byId<HTMLInputElement>('compare'),
  generate: byId<HTMLButtonElement>('generate'),
  stop: byId<HTMLButtonElement>('stop'),
};

const views = new RunViews({
  outputs: byId('outputs'),
  divergence: byId('divergence'),
  gauge: byId('gauge'),
  grids: byId('grids'),
  importance: byId('importance'),
  perf: byId('perf'),
  rounds: byId<HTMLTableElement>('rounds').tBodies[0] as HTMLTableSectionElement,
});

type State = 'starting' | 'loading' | 'ready' | 'running' | 'done' | 'error';

const app = {
  choice: null as ModelChoice | null,
  runner: null as DemoRunner | null,
  device: null as GPUDevice | null,
  adapter: '',
  abort: null as AbortController | null,
  lastView: null as RunView | null,
  presetIndex: 0,
  built: null as BuiltPrompt | null,
};

function setState(state: State, message?: string): void {
  document.body.dataset['state'] = state;
  if (message !== undefined) ui.status.textContent = message;
  const busy = state === 'loading' || state === 'running' || state === 'starting';
  ui.generate.disabled = busy || app.runner === null;
  ui.stop.disabled = state !== 'running';
  for (const b of [ui.loadDefault, ui.pickFiles, ui.pickFolder, ui.backend]) b.disabled = busy;
}

function showError(error: unknown): void {
  const e = error instanceof Error ? error : new Error(String(error));
  ui.banner.hidden = false;
  ui.banner.textContent = e.message;
  ui.banner.dataset['code'] = (e as { code?: string }).code ?? e.name;
  console.error(e);
}

function clearError(): void {
  ui.banner.hidden = true;
  ui.banner.textContent = '';
}

function progress(loaded: number, total: number): void {
  ui.progress.hidden = false;
  ui.progress.value = total > 0 ? loaded / total : 0;
  ui.status.textContent = `Loading model: ${formatBytes(loaded)} of ${formatBytes(total)}`;
}

// ---------------------------------------------------------------------------------------
// Backend

const hasWebGpu = (navigator as Navigator & { gpu?: GPU }).gpu !== undefined;

async function webGpuDevice(): Promise<GPUDevice> {
  if (app.device !== null) return app.device;
  const device = await requestWebGpuDevice();
  app.device = device;
  const info = (device as GPUDevice & { adapterInfo?: GPUAdapterInfo }).adapterInfo;
  app.adapter = [info?.vendor, info?.architecture, info?.description].filter((s) => s !== undefined && s !== '').join(' ');
  void device.lost.then(() => {
    if (app.device === device) app.device = null;
  });
  return device;
}

/** Makes the runner for the loaded model with the chosen backend and engine settings. */
async function makeRunner(choice: ModelChoice): Promise<void> {
  let createBackend: () => Backend;
  if (ui.backend.value === 'webgpu') {
    const device = await webGpuDevice();
    const weightStore = ui.weights.value as 'auto' | 'f32' | 'f16' | 'q8';
    createBackend = () => new WebGpuBackend(device, { weightStore });
  } else {
    createBackend = () => new CpuBackend();
  }
  const runner = new DemoRunner(choice.model, createBackend, {
    maxContext: Math.max(64, Number(ui.maxContext.value) || 4096),
    kvDtype: ui.kvDtype.value as KvDtype,
    blockSize: Number(ui.blockSize.value),
  });
  app.runner?.dispose();
  app.runner = runner;
  app.choice = choice;
  describeModel();
}

function describeModel(): void {
  const choice = app.choice;
  const runner = app.runner;
  if (choice === null || runner === null) return;
  const c = choice.model.config;
  const shape = kvShapeOf(c);
  const params = [...choice.model.tensors.values()].reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
  const perToken = kvBytesPerToken(shape, runner.settings.kvDtype);
  ui.modelInfo.textContent =
    `${choice.label} (${choice.model.format}): ${(params / 1e6).toFixed(1)}M parameters, ${c.numLayers} layers, ` +
    `${c.numHeads} query heads sharing ${c.numKvHeads} kv-heads of ${c.headDim}, vocabulary ${c.vocabSize}, ` +
    `context ${runner.settings.maxContext}. Full KV cache: ${formatBytes(perToken)} per token.`;
  ui.modelInfo.dataset['layers'] = String(c.numLayers);
  ui.modelInfo.dataset['kvHeads'] = String(c.numKvHeads);
}

// ---------------------------------------------------------------------------------------
// Model

async function useModel(load: () => Promise<ModelChoice>, keepMessage = false): Promise<void> {
  if (app.runner?.running === true) return;
  if (!keepMessage) clearError();
  setState('loading', 'Loading model…');
  try {
    const choice = await load();
    ui.status.textContent = 'Preparing the engine (uploading weights)…';
    await makeRunner(choice);
    app.presetIndex = 0;
    refreshPrompt();
    // Make the engine now, so the first Generate starts at once (and a problem shows early).
    app.runner?.engineFor(readSettings());
    setState('ready', `Ready: ${choice.label} on ${backendLabel()}.`);
  } catch (error) {
    showError(error);
    const current = app.choice;
    if (app.runner === null || current === null) setState('error', 'No model loaded.');
    else setState('ready', `${current.label} is loaded; the last step failed (see the message).`);
  } finally {
    ui.progress.hidden = true;
  }
}

function backendLabel(): string {
  return ui.backend.value === 'webgpu' ? `WebGPU${app.adapter !== '' ? ` (${app.adapter})` : ''}` : 'the CPU';
}

async function pickedFiles(input: HTMLInputElement): Promise<void> {
  const files = [...(input.files ?? [])];
  input.value = '';
  if (files.length === 0) return;
  await useModel(() => loadModelFromFiles(files.map(pickedFromFile), progress));
}

// ---------------------------------------------------------------------------------------
// Controls

function refreshPolicies(): void {
  const current = ui.policy.value;
  const list: EvictionPolicy[] = policies.list();
  ui.policy.replaceChildren(
    ...list.map((p) => {
      const o = document.createElement('option');
      o.value = p.name;
      o.textContent = p.name === CUSTOM_POLICY ? `${p.name} (custom)` : p.name;
      o.title = p.description ?? '';
      return o;
    }),
  );
  ui.policy.value = list.some((p) => p.name === current) ? current : 'kv-compress';
  describePolicy();
}

function describePolicy(): void {
  const p = policies.has(ui.policy.value) ? policies.get(ui.policy.value) : null;
  ui.policyDescription.textContent = p?.description ?? '';
}

function refreshPresets(): void {
  ui.preset.replaceChildren(
    ...PROMPT_PRESETS.map((p) => {
      const o = document.createElement('option');
      o.value = p.id;
      o.textContent = p.label;
      return o;
    }),
  );
  ui.preset.value = 'passkey-512';
}

function refreshPrompt(): void {
  const tokenizer = app.choice?.model.tokenizer;
  const preset = PROMPT_PRESETS.find((p) => p.id === ui.preset.value);
  if (tokenizer === undefined || tokenizer === null || preset === undefined) return;
  try {
    app.built = buildPrompt(preset, tokenizer, app.presetIndex);
  } catch (error) {
    showError(error);
    return;
  }
  ui.prompt.value = app.built.prompt;
  ui.maxTokens.value = String(app.built.maxNewTokens);
  countPrompt();
}

function countPrompt(): void {
  const n = app.runner?.countTokens(ui.prompt.value) ?? 0;
  ui.promptTokens.textContent = String(n);
  const answers = app.built !== null && ui.prompt.value === app.built.prompt ? app.built.answers : [];
  ui.answerHint.textContent = answers.length > 0 ? ` · the right answer contains ${answers.join(', ')}` : '';
}

function readNumber(input: HTMLInputElement, name: string, min: number): number {
  const v = Number(input.value);
  if (input.value.trim() === '' || !Number.isFinite(v) || v < min) {
    throw new InvalidArgumentError(`${name} must be a number of at least ${min}; it is "${input.value}".`);
  }
  return v;
}

function readInteger(input: HTMLInputElement, name: string, min: number): number {
  const v = readNumber(input, name, min);
  if (!Number.isInteger(v)) throw new InvalidArgumentError(`${name} must be a whole number; it is ${v}.`);
  return v;
}

function budgetKind(): 'rate' | 'tokens' {
  const checked = ui.form.querySelector<HTMLInputElement>('input[name="budget-kind"]:checked');
  return checked?.value === 'tokens' ? 'tokens' : 'rate';
}

function readSettings(): RunSettings {
  const budget: Budget =
    budgetKind() === 'rate'
      ? { targetCompressionRate: readNumber(ui.rate, 'Compression rate', 1) }
      : { maxCacheTokens: readInteger(ui.maxCacheTokens, 'Max cache tokens per head', 1) };
  const topK = readInteger(ui.topK, 'Top-k', 0);
  return {
    prompt: ui.prompt.value,
    policy: ui.policy.value,
    budget,
    protectedWindow: readInteger(ui.protectedWindow, 'Protected window', 0),
    sinks: readInteger(ui.sinks, 'Sinks', 0),
    compressionInterval: readInteger(ui.interval, 'Compression interval', 1),
    maxTokens: readInteger(ui.maxTokens, 'Max new tokens', 1),
    sampling: {
      temperature: readNumber(ui.temperature, 'Temperature', 0),
      topK,
      topP: readNumber(ui.topP, 'Top-p', 0),
      seed: readInteger(ui.seed, 'Seed', 0),
    },
    compare: ui.compare.checked,
  };
}

function syncBudgetKind(): void {
  const rate = budgetKind() === 'rate';
  ui.rateRow.hidden = !rate;
  ui.tokensRow.hidden = rate;
}

// ---------------------------------------------------------------------------------------
// Generation

let frame = 0;
function scheduleRender(view: RunView): void {
  app.lastView = view;
  if (frame !== 0) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    views.update(view);
  });
}

async function generate(): Promise<void> {
  const runner = app.runner;
  if (runner === null || runner.running) return;
  clearError();
  let settings: RunSettings;
  try {
    settings = readSettings();
  } catch (error) {
    showError(error);
    return;
  }
  const abort = new AbortController();
  app.abort = abort;
  setState('running', 'Generating…');
  let started = false;
  const answers = app.built !== null && settings.prompt === app.built.prompt ? app.built.answers : [];
  try {
    const view = await runner.run(
      settings,
      (v) => {
        if (!started) {
          started = true;
          views.reset(v, answers);
        }
        scheduleRender(v);
      },
      abort.signal,
    );
    cancelAnimationFrame(frame);
    frame = 0;
    views.update(view);
    app.lastView = view;
    if (view.error !== null) throw view.error;
    const perSequence = view.decodeMs > 0 ? (view.decodeSteps / view.decodeMs) * 1000 : 0;
    setState(
      'done',
      `Done: ${view.sides.map((s) => `${s.label} ${s.done?.reason ?? ''}`).join(' · ')} · ${perSequence.toFixed(1)} tokens/s.`,
    );
  } catch (error) {
    showError(error);
    if (error instanceof DeviceLostError) {
      app.device = null;
      runner.reset();
      const choice = app.choice;
      if (choice !== null) await makeRunner(choice).catch(showError);
    }
    setState('done', 'Stopped with an error (see above).');
  } finally {
    app.abort = null;
  }
}

// ---------------------------------------------------------------------------------------
// Console and test access

/** What the console (and the end-to-end test) can reach as `window.kvcDemo`. */
const kvcDemo = {
  /** Registers an eviction policy and shows it in the picker. */
  registerPolicy(policy: EvictionPolicy, options?: { replace?: boolean }): void {
    registerPolicy(policy, options);
    refreshPolicies();
  },
  policies: (): string[] => policies.names(),
  state: (): string => document.body.dataset['state'] ?? '',
  adapter: (): string => app.adapter,
  /** The last run as the engine reported it (done events and the engine's stats). */
  lastRun() {
    const view = app.lastView;
    const engine = app.runner?.engine ?? null;
    if (view === null || engine === null) return null;
    return {
      backend: view.backend,
      layers: view.layers,
      kvHeads: view.kvHeads,
      blockSize: view.blockSize,
      promptTokens: view.promptTokens,
      engine: { ...engine.stats(), bytesPerBlock: engine.allocator.bytesPerBlock(engine.kvDtype), policy: engine.policy.name },
      decodeSteps: view.decodeSteps,
      decodeMs: view.decodeMs,
      compressionMs: view.compressionMs,
      compressionRounds: view.compressionRounds,
      elapsedMs: view.elapsedMs,
      sides: view.sides.map((s) => ({
        role: s.role,
        policy: s.policy,
        text: s.done?.text ?? s.pieces.join(''),
        tokens: [...s.tokens],
        reason: s.done?.reason ?? null,
        error: s.done?.error?.message ?? null,
        blocksPerHead: s.done === null ? null : Array.from(s.done.blocksPerHead),
        blocks: s.done === null ? null : sum(s.done.blocksPerHead),
        tokensPerSecond: s.done?.tokensPerSecond ?? null,
        compressions: s.compressions.length,
      })),
    };
  },
};
(globalThis as unknown as { kvcDemo: typeof kvcDemo }).kvcDemo = kvcDemo;

// ---------------------------------------------------------------------------------------
// Wiring

ui.form.addEventListener('submit', (e) => {
  e.preventDefault();
  void generate();
});
ui.stop.addEventListener('click', () => app.abort?.abort());
ui.loadDefault.addEventListener('click', () => void useModel(() => loadServedModel(DEFAULT_MODEL_URL, progress)));
ui.pickFiles.addEventListener('change', () => void pickedFiles(ui.pickFiles));
ui.pickFolder.addEventListener('change', () => void pickedFiles(ui.pickFolder));
for (const input of [ui.backend, ui.maxContext, ui.kvDtype, ui.weights, ui.blockSize]) {
  input.addEventListener('change', () => {
    if (app.choice === null || app.runner?.running === true) return;
    const choice = app.choice;
    void useModel(async () => choice);
  });
}
ui.preset.addEventListener('change', () => {
  app.presetIndex = 0;
  refreshPrompt();
});
ui.newExample.addEventListener('click', () => {
  app.presetIndex++;
  refreshPrompt();
});
ui.prompt.addEventListener('input', countPrompt);
ui.prompt.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    if (!ui.generate.disabled) void generate();
  }
});
// A policy registered elsewhere (the console, another module) shows up when the picker opens.
ui.policy.addEventListener('pointerdown', () => {
  if (policies.names().length !== ui.policy.options.length) refreshPolicies();
});
ui.policy.addEventListener('focus', () => {
  if (policies.names().length !== ui.policy.options.length) refreshPolicies();
});
ui.policy.addEventListener('change', describePolicy);
for (const radio of ui.form.querySelectorAll<HTMLInputElement>('input[name="budget-kind"]'))
  radio.addEventListener('change', syncBudgetKind);
ui.rateSlider.addEventListener('input', () => {
  ui.rate.value = String(Number((2 ** Number(ui.rateSlider.value)).toFixed(2)));
});
ui.rate.addEventListener('input', () => {
  const v = Number(ui.rate.value);
  if (Number.isFinite(v) && v >= 1) ui.rateSlider.value = String(Math.log2(v));
});

async function start(): Promise<void> {
  refreshPresets();
  refreshPolicies();
  syncBudgetKind();
  if ('serviceWorker' in navigator && import.meta.env.PROD) {
    navigator.serviceWorker.register('./sw.js').catch((error: unknown) => console.warn('No offline support:', error));
  }
  if (!hasWebGpu) {
    ui.backend.value = 'cpu';
    const webgpu = ui.backend.querySelector<HTMLOptionElement>('option[value="webgpu"]');
    if (webgpu !== null) webgpu.disabled = true;
    showError(
      new WebGpuUnavailableError(
        'this browser has no navigator.gpu. Use a recent Chrome or Edge (or Firefox or Safari with WebGPU turned on), over https or on localhost. Meanwhile the demo runs on the CPU, slowly',
      ),
    );
  }
  let loaded: ModelChoice | null = null;
  // Without WebGPU, keep saying so while the model loads on the CPU.
  await useModel(async () => {
    loaded = await loadServedModel(DEFAULT_MODEL_URL, progress);
    return loaded;
  }, !hasWebGpu);
  const choice: ModelChoice | null = loaded;
  if (app.runner === null && ui.backend.value === 'webgpu' && choice !== null) {
    // WebGPU exists but gave no device: fall back to the CPU, keeping the message.
    ui.backend.value = 'cpu';
    await useModel(async () => choice, true);
  }
}

void start();
