import { type CellResult, type EvalTask, lowerIsBetter } from './runner.ts';

function groups(cells: readonly CellResult[]): Map<string, CellResult[]> {
  const out = new Map<string, CellResult[]>();
  for (const c of cells) {
    const k = `${c.model}|${c.task}|${c.context}`;
    const g = out.get(k);
    if (g === undefined) out.set(k, [c]);
    else g.push(c);
  }
  return out;
}

function format(task: EvalTask, v: number): string {
  if (task === 'perplexity') return v.toFixed(3);
  if (task === 'kl') return v.toFixed(4);
  return `${(100 * v).toFixed(1)}%`;
}

/** One Markdown table per (model, task, context): a row per policy, a column per rate. */
export function markdownReport(cells: readonly CellResult[]): string {
  const parts: string[] = [];
  for (const group of groups(cells).values()) {
    const first = group[0] as CellResult;
    const rates = [...new Set(group.map((c) => c.rate))].sort((a, b) => a - b);
    const policies = [...new Set(group.map((c) => c.policy))];
    const unit =
      first.task === 'perplexity'
        ? 'perplexity, lower is better'
        : first.task === 'kl'
          ? 'KL(full || compressed), nats/token, lower is better'
          : 'score, higher is better';
    parts.push(`### ${first.task}, ${first.context} tokens (${first.model}; ${unit}; ${first.examples} examples, seed ${first.seed})\n`);
    parts.push(`| policy | ${rates.map((r) => (r === 1 ? 'full' : `${r}x`)).join(' | ')} |`);
    parts.push(`| --- | ${rates.map(() => '---:').join(' | ')} |`);
    for (const p of policies) {
      const row = rates.map((r) => {
        const c = group.find((x) => x.policy === p && x.rate === r);
        return c === undefined ? '' : format(c.task, c.score);
      });
      parts.push(`| ${p} | ${row.join(' | ')} |`);
    }
    parts.push('');
  }
  return parts.join('\n');
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f'];

/**
 * A line chart of score against compression rate (log2 axis), one line per policy, as SVG.
 * Hand-written: a few dozen lines of SVG need no plotting library.
 */
export function svgPlot(cells: readonly CellResult[]): string {
  const first = cells[0];
  if (first === undefined) return '<svg xmlns="http://www.w3.org/2000/svg"/>';
  const W = 640;
  const H = 400;
  const m = { l: 64, r: 150, t: 36, b: 48 };
  const rates = [...new Set(cells.map((c) => c.rate))].sort((a, b) => a - b);
  const policies = [...new Set(cells.map((c) => c.policy))];
  const values = cells.map((c) => c.score).filter(Number.isFinite);
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (first.task !== 'perplexity' && first.task !== 'kl') {
    lo = 0;
    hi = Math.max(1, hi);
  }
  if (hi - lo < 1e-9) hi = lo + 1;
  const lx = (r: number) => Math.log2(r);
  const xMax = Math.max(1, lx(rates[rates.length - 1] as number));
  const x = (r: number) => m.l + ((W - m.l - m.r) * lx(r)) / xMax;
  const y = (v: number) => H - m.b - ((H - m.t - m.b) * (v - lo)) / (hi - lo);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<title>${first.task} against compression rate, ${first.context} tokens, ${first.model}</title>`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${m.l}" y="20" font-size="14">${first.task}, ${first.context} tokens: ${lowerIsBetter(first.task) ? 'lower' : 'higher'} is better</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="black"/>`,
    `<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="black"/>`,
  ];
  for (const r of rates) {
    out.push(`<text x="${x(r).toFixed(1)}" y="${H - m.b + 16}" text-anchor="middle">${r === 1 ? 'full' : `${r}x`}</text>`);
  }
  for (let k = 0; k <= 4; k++) {
    const v = lo + ((hi - lo) * k) / 4;
    out.push(`<text x="${m.l - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end">${format(first.task, v)}</text>`);
    out.push(`<line x1="${m.l}" y1="${y(v).toFixed(1)}" x2="${W - m.r}" y2="${y(v).toFixed(1)}" stroke="#ddd"/>`);
  }
  out.push(`<text x="${(m.l + W - m.r) / 2}" y="${H - 12}" text-anchor="middle">compression rate (equal KV memory per policy)</text>`);
  policies.forEach((p, i) => {
    const color = COLORS[i % COLORS.length] as string;
    const pts = rates
      .map((r) => cells.find((c) => c.policy === p && c.rate === r))
      .filter((c): c is CellResult => c !== undefined && Number.isFinite(c.score))
      .map((c) => `${x(c.rate).toFixed(1)},${y(c.score).toFixed(1)}`);
    out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.join(' ')}"/>`);
    out.push(`<text x="${W - m.r + 10}" y="${m.t + 16 * i + 10}" fill="${color}">${p}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}

/** The (model, task, context) groups of a run, for one plot each. */
export function plotGroups(cells: readonly CellResult[]): CellResult[][] {
  return [...groups(cells).values()];
}
