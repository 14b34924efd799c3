export { klDivergence, logSoftmax } from './divergence.ts';
export { hashString, SeededRandom } from './random.ts';
export { markdownReport, plotGroups, svgPlot } from './report.ts';
export type { CellResult, EvalConfig, EvalTask, TextTask } from './runner.ts';
export { ALL_TASKS, aggregate, cellKey, heldOutTokens, lowerIsBetter, runEval, TEXT_TASKS, textExampleTokens } from './runner.ts';
export type { RetrievalTask, TaskExample, TaskSource } from './tasks.ts';
export { generateExample, RETRIEVAL_TASKS, scoreAnswer, splitSentences } from './tasks.ts';
