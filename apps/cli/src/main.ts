import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { type Backend, formatBytes, KvCompressError, kvBytesPerToken, kvShapeOf } from '@kvcompress/core';
import { ALL_TASKS, type EvalTask } from '@kvcompress/eval';
import * as eviction from '@kvcompress/eviction';
import { type Budget, policies } from '@kvcompress/eviction';
import { loadModel } from '@kvcompress/models';
import { Presets, SingleBar } from 'cli-progress';
import { Command, InvalidArgumentError as CommanderArgumentError, Option } from 'commander';
import { evalCommand } from './eval.ts';
import { formatHeadGrid } from './format.ts';
import { defaultEvalModelPath, defaultEvalTextPath, defaultModelPath, NO_DEFAULT_MODEL } from './paths.ts';
import { runComparison } from './run.ts';

/**
 * The default prompt: a pass key hidden in repeated filler (the passkey test of Mohtashami &
 * Jaggi, 2023), about 450 tokens for the default model. The full cache answers it; whether a
 * compressed cache still does is what `kvc run` shows.
 */
const FILLER = 'The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ';
const DEFAULT_PROMPT =
  'There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it.\n' +
  FILLER.repeat(7) +
  'The pass key is 68214. Remember it. 68214 is the pass key. ' +
  FILLER.repeat(8) +
  '\nWhat is the pass key? The pass key is';

function number(name: string, min: number, integer = false) {
  return (value: string): number => {
    const v = Number(value);
    if (!Number.isFinite(v) || v < min || (integer && !Number.isInteger(v))) {
      throw new CommanderArgumentError(`${name} must be ${integer ? 'an integer' : 'a number'} >= ${min}, got "${value}".`);
    }
    return v;
  };
}

function resolveModelPath(given: string | undefined): string {
  if (given !== undefined) return given;
  const p = defaultModelPath();
  if (p === null) throw new KvCompressError('NO_MODEL', NO_DEFAULT_MODEL);
  return p;
}

/** WebGPU backends on one Dawn device, loaded only when asked for. */
async function webGpuBackendFactory(robustness: boolean): Promise<() => Backend> {
  const { requestWebGpuDevice, WebGpuBackend } = await import('@kvcompress/webgpu');
  const device = await requestWebGpuDevice({ robustness });
  return () => new WebGpuBackend(device);
}

const program = new Command()
  .name('kvc')
  .description('Run LLMs with a paged KV cache compressed per attention head (KV-Compress and baselines).')
  .showHelpAfterError()
  // Modules named by --import run before the command, so the policies they register run and
  // eval like the built-ins. A default-exported function is called with @kvcompress/eviction:
  // it registers into this CLI's registry even where the module cannot import the package
  // itself (the bundled CLI on the GPU machine, or another copy of the package).
  .hook('preAction', async (_program, command) => {
    const modules: string[] = command.opts()['import'] ?? [];
    for (const m of modules) {
      try {
        const mod: { default?: unknown } = await import(pathToFileURL(path.resolve(m)).href);
        if (typeof mod.default === 'function') await mod.default(eviction);
      } catch (error) {
        throw new KvCompressError('BAD_IMPORT', `--import ${m} failed to load: ${(error as Error).message}`);
      }
    }
  });

/** The --import option of the commands that use policies. */
const importOption = () =>
  new Option('--import <module...>', 'JS/TS modules to load first (e.g. one that calls registerPolicy from @kvcompress/eviction)');

program
  .command('run')
  .description('Generate the same prompt with the full cache and with a compression policy; compare text, KV memory and speed.')
  .addOption(importOption())
  .option('-m, --model <path>', 'model: .gguf, llama2.c .bin, or a Hugging Face folder (default: models/kvc-20m-4k)')
  .option('-p, --prompt <text>', 'prompt text', DEFAULT_PROMPT)
  .addOption(new Option('--policy <name>', 'eviction policy').default('kv-compress'))
  .addOption(
    new Option('-r, --rate <x>', 'target compression rate (outside the protected window)')
      .argParser(number('--rate', 1))
      .conflicts('maxCacheTokens'),
  )
  .addOption(new Option('--max-cache-tokens <n>', 'KV budget in tokens per head').argParser(number('--max-cache-tokens', 1, true)))
  .option('--protected-window <n>', 'most recent tokens never evicted', number('--protected-window', 0, true), 64)
  .option('--sinks <n>', 'first tokens never evicted', number('--sinks', 0, true), 0)
  .option(
    '--compression-interval <n>',
    'compress every n decode steps (0 = after prefill only)',
    number('--compression-interval', 0, true),
    64,
  )
  .option('-n, --max-tokens <n>', 'tokens to generate', number('--max-tokens', 1, true), 256)
  .option('-t, --temperature <t>', 'sampling temperature (0 = greedy)', number('--temperature', 0), 0)
  .option('--top-k <k>', 'top-k sampling (0 = off)', number('--top-k', 0, true), 0)
  .option('--top-p <p>', 'top-p sampling (1 = off)', number('--top-p', 0), 1)
  .option('--seed <n>', 'sampling seed', number('--seed', 0, true), 0)
  .option('--json', 'print the report as JSON')
  .addOption(
    new Option('--backend <name>', 'cpu, or webgpu (Dawn: a Vulkan GPU, or SwiftShader via VK_ICD_FILENAMES)')
      .choices(['cpu', 'webgpu'])
      .default('cpu'),
  )
  .option(
    '--no-gpu-robustness',
    "webgpu: turn Dawn's bounds checks on shader memory accesses off (decode attention 4-11% faster on an H100; an indexing bug would then touch other GPU memory of this process)",
  )
  .action(async (opts) => {
    if (!policies.has(opts.policy))
      throw new CommanderArgumentError(`Unknown policy "${opts.policy}". Registered: ${policies.names().join(', ')}.`);
    const budget: Budget =
      opts.maxCacheTokens !== undefined ? { maxCacheTokens: opts.maxCacheTokens } : { targetCompressionRate: opts.rate ?? 4 };
    const modelPath = resolveModelPath(opts.model);
    const model = await loadModel(modelPath);
    const report = await runComparison(model, {
      prompt: opts.prompt,
      policy: opts.policy,
      budget,
      protectedWindow: opts.protectedWindow,
      sinks: opts.sinks,
      compressionInterval: opts.compressionInterval,
      maxTokens: opts.maxTokens,
      temperature: opts.temperature,
      topK: opts.topK,
      topP: opts.topP,
      seed: opts.seed,
      progress: opts.json !== true && process.stderr.isTTY === true,
      backend: opts.backend === 'webgpu' ? await webGpuBackendFactory(opts.gpuRobustness !== false) : undefined,
    });
    if (opts.json === true) {
      const side = (s: typeof report.full) => ({ ...s, blocksPerHead: Array.from(s.blocksPerHead) });
      console.log(JSON.stringify({ modelPath, ...report, full: side(report.full), compressed: side(report.compressed) }, null, 2));
      return;
    }
    const { full, compressed } = report;
    const budgetText = 'maxCacheTokens' in budget ? `${budget.maxCacheTokens} tokens/head` : `${budget.targetCompressionRate}x`;
    console.log(`model: ${modelPath} (${report.model.architecture}, ${report.model.layers} layers x ${report.model.kvHeads} kv-heads)`);
    console.log(
      `prompt: ${report.promptTokens} tokens; generating ${opts.maxTokens}; policy ${opts.policy} at ${budgetText}, protected window ${opts.protectedWindow}\n`,
    );
    console.log(`--- full cache ---\n${full.text}\n`);
    console.log(`--- ${compressed.label} ---\n${compressed.text}\n`);
    const d = report.firstDifference;
    if (d < 0) console.log(`Both outputs are identical (${full.tokens.length} tokens).`);
    else {
      const tok = model.tokenizer;
      const context = tok === null ? '' : ` after "${tok.decode(full.tokens.slice(Math.max(0, d - 8), d)).trimStart()}"`;
      console.log(`First difference at generated token ${d}${context}.`);
    }
    console.log('\n| | full cache | ' + compressed.label + ' |');
    console.log('| --- | ---: | ---: |');
    console.log(
      `| KV memory in use | ${formatBytes(full.kvBytes)} (${full.kvBytes} B) | ${formatBytes(compressed.kvBytes)} (${compressed.kvBytes} B) |`,
    );
    console.log(`| KV blocks in use | ${full.blocks} | ${compressed.blocks} |`);
    console.log(`| memory ratio | 1.00x | ${report.memoryRatio.toFixed(2)}x smaller |`);
    console.log(`| compression rounds | ${full.compressions} | ${compressed.compressions} |`);
    console.log(`| decode tokens/s | ${full.tokensPerSecond.toFixed(0)} | ${compressed.tokensPerSecond.toFixed(0)} |`);
    console.log(
      `\nThe budget applies to the tokens outside the protected window (${opts.protectedWindow}); between compression rounds (every ${opts.compressionInterval} steps) new tokens accumulate uncompressed.`,
    );
    console.log(`\nblocks per head after ${compressed.label} (full cache: ${full.blocksPerHead[0]} each):`);
    console.log(formatHeadGrid(compressed.blocksPerHead, report.model.layers, report.model.kvHeads));
  });

program
  .command('inspect')
  .description('Show a model: architecture, shapes, tokenizer, KV bytes per token.')
  .argument('[model]', 'model path (default: models/kvc-20m-4k)')
  .option('--json', 'print JSON')
  .action(async (given: string | undefined, opts) => {
    const modelPath = resolveModelPath(given);
    const model = await loadModel(modelPath);
    const c = model.config;
    const shape = kvShapeOf(c);
    let params = 0;
    const dtypes = new Map<string, number>();
    for (const t of model.tensors.values()) {
      const n = t.shape.reduce((a, b) => a * b, 1);
      params += n;
      dtypes.set(t.dtype, (dtypes.get(t.dtype) ?? 0) + 1);
    }
    const info = {
      path: modelPath,
      format: model.format,
      config: c,
      parameters: params,
      tensors: model.tensors.size,
      tensorTypes: Object.fromEntries(dtypes),
      tokenizer:
        model.tokenizer === null
          ? null
          : {
              vocabSize: model.tokenizer.vocabSize,
              bos: model.tokenizer.bosTokenId,
              eos: model.tokenizer.eosTokenIds,
              chatTemplate: model.tokenizer.chatTemplate !== null,
            },
      kvBytesPerToken: { f16: kvBytesPerToken(shape, 'f16'), f32: kvBytesPerToken(shape, 'f32') },
    };
    if (opts.json === true) {
      console.log(JSON.stringify(info, null, 2));
      return;
    }
    console.log(`${modelPath}`);
    console.log(`format        ${model.format}, ${model.tensors.size} tensors (${[...dtypes].map(([k, v]) => `${v} ${k}`).join(', ')})`);
    console.log(`architecture  ${c.architecture}, ${params.toLocaleString('en-US')} parameters`);
    console.log(
      `shape         hidden ${c.hiddenSize}, ffn ${c.intermediateSize}, ${c.numLayers} layers, ${c.numHeads} heads / ${c.numKvHeads} kv-heads of ${c.headDim}`,
    );
    console.log(
      `context       ${c.maxContext}; RoPE theta ${c.ropeTheta}, ${c.ropeLayout}${c.ropeScaling ? `, ${c.ropeScaling.type} scaling` : ''}`,
    );
    console.log(`embeddings    ${c.tiedEmbeddings ? 'tied' : 'separate classifier'}; vocab ${c.vocabSize}; QKV bias ${c.attentionBias}`);
    if (info.tokenizer !== null) {
      console.log(
        `tokenizer     ${info.tokenizer.vocabSize} tokens, BOS ${info.tokenizer.bos}, EOS ${info.tokenizer.eos.join(',')}, chat template: ${info.tokenizer.chatTemplate ? 'yes' : 'no'}`,
      );
    } else console.log('tokenizer     none');
    console.log(`KV per token  ${formatBytes(info.kvBytesPerToken.f16)} in f16, ${formatBytes(info.kvBytesPerToken.f32)} in f32`);
  });

program
  .command('eval')
  .description('Score eviction policies against the full cache at equal KV memory: retrieval tasks, perplexity, KL, greedy agreement.')
  .addOption(importOption())
  .option('-m, --model <path>', 'model with a tokenizer (default: models/kvc-20m-4k)')
  .option(
    '--text <path>',
    'held-out text: haystacks and scored text (default: ../shared Alice in Wonderland, held out of the default model)',
  )
  .option(
    '--policies <names>',
    'comma-separated registered policies',
    'kv-compress,kv-compress-trailing,snapkv,pyramidkv,ada-kv,h2o,streaming-llm,random',
  )
  .option('--rates <list>', 'compression rates (1 = full cache)', '1,2,4,8,16,32,64')
  .option('--contexts <list>', 'context lengths in tokens', '512')
  .option('--tasks <list>', `tasks: ${ALL_TASKS.join(', ')}`, 'perplexity,kl,greedy-agreement')
  .option('--examples <n>', 'examples per (task, context)', number('examples', 1, true), 8)
  .option('--seed <n>', 'seed of the generated examples', number('seed', 0, true), 1)
  .option('--continuation <n>', 'tokens scored after each text context', number('continuation', 1, true), 64)
  .option('--window <n>', 'protected recent window', number('window', 0, true), 16)
  .option('-o, --out <dir>', 'output folder (an existing cells.jsonl there is resumed)', 'eval-out')
  .option('--batch <n>', 'examples of a cell generated together (faster on a GPU)', number('batch', 1, true), 1)
  .addOption(
    new Option('--backend <name>', 'cpu, or webgpu (Dawn: a Vulkan GPU, or SwiftShader via VK_ICD_FILENAMES)')
      .choices(['cpu', 'webgpu'])
      .default('cpu'),
  )
  .option(
    '--no-gpu-robustness',
    "webgpu: turn Dawn's bounds checks on shader memory accesses off (decode attention 4-11% faster on an H100; an indexing bug would then touch other GPU memory of this process)",
  )
  .action(async (opts) => {
    const list = (s: string) =>
      s
        .split(',')
        .map((x) => x.trim())
        .filter((x) => x !== '');
    const numbers = (name: string, s: string) => list(s).map((x) => number(name, 1)(x));
    const tasks = list(opts.tasks) as EvalTask[];
    for (const t of tasks)
      if (!ALL_TASKS.includes(t)) throw new CommanderArgumentError(`Unknown task "${t}"; tasks: ${ALL_TASKS.join(', ')}.`);
    for (const p of list(opts.policies)) if (!policies.has(p)) throw new CommanderArgumentError(`Unknown policy "${p}"; see kvc policies.`);
    const bar = new SingleBar({ format: 'eval [{bar}] {value}/{total} {label}', hideCursor: true }, Presets.shades_classic);
    let started = false;
    const { files } = await evalCommand({
      modelPath: opts.model ?? defaultEvalModelPath(),
      modelName: path.basename(opts.model ?? defaultEvalModelPath()),
      textPath: opts.text ?? defaultEvalTextPath(),
      policies: list(opts.policies),
      rates: numbers('rates', opts.rates),
      contexts: numbers('contexts', opts.contexts),
      tasks,
      examples: opts.examples,
      seed: opts.seed,
      continuationTokens: opts.continuation,
      protectedWindow: opts.window,
      outDir: opts.out,
      batch: opts.batch,
      backend: opts.backend === 'webgpu' ? await webGpuBackendFactory(opts.gpuRobustness !== false) : undefined,
      onProgress: (done, total, label) => {
        if (!started) {
          bar.start(total, 0, { label });
          started = true;
        }
        bar.update(done, { label });
      },
    });
    bar.stop();
    for (const f of files) console.log(f);
  });

program
  .command('policies')
  .description('List the registered eviction policies.')
  .addOption(importOption())
  .action(() => {
    for (const p of policies.list()) console.log(`${p.name.padEnd(14)} ${p.description ?? ''}`);
  });

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof KvCompressError) {
    console.error(`kvc: ${error.message}`);
    process.exit(2);
  }
  throw error;
}
