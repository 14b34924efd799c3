import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type CellResult, type EvalConfig, markdownReport, plotGroups, runEval, svgPlot } from '@kvcompress/eval';
import { loadModel } from '@kvcompress/models';

/** The grid as `runEval` takes it, with files instead of a loaded model and text. */
export interface EvalCommandOptions
  extends Pick<
    EvalConfig,
    | 'policies'
    | 'rates'
    | 'contexts'
    | 'tasks'
    | 'examples'
    | 'seed'
    | 'continuationTokens'
    | 'protectedWindow'
    | 'onProgress'
    | 'backend'
    | 'batch'
  > {
  readonly modelPath: string;
  /** Recorded in the results (default: the path). */
  readonly modelName?: string;
  readonly textPath: string;
  readonly outDir: string;
}

/**
 * `kvc eval`: runs the grid, appending each finished cell to <out>/cells.jsonl (so an
 * interrupted run resumes where it stopped), then writes results.json, results.md and one
 * SVG plot per (task, context).
 */
export async function evalCommand(o: EvalCommandOptions): Promise<{ cells: CellResult[]; files: string[] }> {
  mkdirSync(o.outDir, { recursive: true });
  const cellsFile = join(o.outDir, 'cells.jsonl');
  const previous: CellResult[] = existsSync(cellsFile)
    ? readFileSync(cellsFile, 'utf8')
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l) as CellResult)
    : [];
  const model = await loadModel(o.modelPath);
  const cells = await runEval({
    modelName: o.modelName ?? o.modelPath,
    model,
    policies: o.policies,
    rates: o.rates,
    contexts: o.contexts,
    tasks: o.tasks,
    examples: o.examples,
    seed: o.seed,
    text: readFileSync(o.textPath, 'utf8'),
    continuationTokens: o.continuationTokens,
    protectedWindow: o.protectedWindow,
    backend: o.backend,
    batch: o.batch,
    previous,
    onCell: (c) => appendFileSync(cellsFile, `${JSON.stringify(c)}\n`),
    onProgress: o.onProgress,
  });
  const files = [join(o.outDir, 'results.json'), join(o.outDir, 'results.md')];
  writeFileSync(files[0] as string, `${JSON.stringify(cells, null, 1)}\n`);
  writeFileSync(files[1] as string, markdownReport(cells));
  for (const group of plotGroups(cells)) {
    const first = group[0] as CellResult;
    const file = join(o.outDir, `plot-${first.task}-${first.context}.svg`);
    writeFileSync(file, svgPlot(group));
    files.push(file);
  }
  return { cells, files };
}
