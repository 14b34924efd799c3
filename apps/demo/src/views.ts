// The result views, drawn from a RunView: streamed outputs with the first divergence marked,
// the KV memory gauge, the pages grid (layers x kv-heads), per-head importance, performance
// and the compression rounds. Elements are made once per run and updated in place.
import { formatBytes } from '@kvcompress/core';
import { formatMs, sum } from './format.ts';
import { fullBlocksPerHead, fullCacheBytes, type RunView, runDivergence, type SideView, sideBytes } from './runner.ts';

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className = '', text = ''): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (className !== '') e.className = className;
  if (text !== '') e.textContent = text;
  return e;
}

interface OutputPane {
  readonly root: HTMLElement;
  readonly state: HTMLElement;
  readonly answer: HTMLElement;
  readonly text: HTMLElement;
  rendered: number;
}

interface Grid {
  readonly root: HTMLElement;
  readonly cells: HTMLElement[];
  readonly title: HTMLElement;
}

export interface ViewRoots {
  readonly outputs: HTMLElement;
  readonly divergence: HTMLElement;
  readonly gauge: HTMLElement;
  readonly grids: HTMLElement;
  readonly importance: HTMLElement;
  readonly perf: HTMLElement;
  readonly rounds: HTMLTableSectionElement;
}

/** Draws one run. `reset` when a run starts; `update` as often as the engine reports. */
export class RunViews {
  readonly #roots: ViewRoots;
  #panes: OutputPane[] = [];
  #pageGrids: Grid[] = [];
  #importanceGrids: Grid[] = [];
  #rounds = 0;
  #marked = -1;
  #answers: readonly string[] = [];

  constructor(roots: ViewRoots) {
    this.#roots = roots;
  }

  /** `answers`: what a right answer to the prompt contains (retrieval presets), to check each output. */
  reset(view: RunView, answers: readonly string[] = []): void {
    const r = this.#roots;
    this.#answers = answers;
    r.outputs.replaceChildren();
    r.grids.replaceChildren();
    r.importance.replaceChildren();
    r.rounds.replaceChildren();
    this.#rounds = 0;
    this.#marked = -1;
    r.outputs.dataset['sides'] = String(view.sides.length);
    this.#panes = view.sides.map((side) => {
      const root = el('article', `output ${side.role}`);
      root.dataset['role'] = side.role;
      const head = el('header');
      head.append(el('strong', '', side.label), ' ');
      const state = el('span', 'muted small', 'waiting…');
      const answer = el('span', 'answer');
      head.append(state, answer);
      const text = el('div', 'text');
      root.append(head, text);
      r.outputs.append(root);
      return { root, state, answer, text, rendered: 0 };
    });
    this.#pageGrids = view.sides.map((side) => this.#grid(r.grids, view, side, 'pages'));
    this.#importanceGrids = view.sides.map((side) => this.#grid(r.importance, view, side, 'importance'));
    this.update(view);
  }

  update(view: RunView): void {
    view.sides.forEach((side, i) => {
      const pane = this.#panes[i];
      if (pane !== undefined) this.#updatePane(pane, side, view);
      const pages = this.#pageGrids[i];
      if (pages !== undefined) this.#updatePages(pages, view, side);
      const importance = this.#importanceGrids[i];
      if (importance !== undefined) this.#updateImportance(importance, view, side);
    });
    this.#updateDivergence(view);
    this.#updateGauge(view);
    this.#updatePerf(view);
    this.#updateRounds(view);
  }

  #updatePane(pane: OutputPane, side: SideView, view: RunView): void {
    for (; pane.rendered < side.pieces.length; pane.rendered++) {
      const span = el('span', 'tok', side.pieces[pane.rendered] ?? '');
      span.dataset['index'] = String(pane.rendered);
      pane.text.append(span);
    }
    const done = side.done;
    let state = side.tokens.length === 0 ? (view.finished ? '' : 'prefilling…') : `${side.tokens.length} tokens`;
    if (done !== null) state = `${side.tokens.length} tokens, ${done.reason}${done.error !== undefined ? `: ${done.error.message}` : ''}`;
    pane.state.textContent = state;
    pane.root.dataset['done'] = String(done !== null);
    if (this.#answers.length > 0) {
      const text = done?.text ?? side.pieces.join('');
      const missing = this.#answers.filter((a) => !text.includes(a));
      const found = missing.length === 0;
      // Undecided while generating and the answer is not there yet.
      if (found || done !== null) {
        pane.answer.dataset['found'] = String(found);
        pane.answer.textContent = found ? `✓ answer ${this.#answers.join(', ')}` : `✗ missed ${missing.join(', ')}`;
      }
    }
  }

  #updateDivergence(view: RunView): void {
    const p = this.#roots.divergence;
    const hasFull = view.sides.some((s) => s.role === 'full');
    const hasCompressed = view.sides.some((s) => s.role === 'compressed');
    const d = runDivergence(view);
    p.dataset['index'] = String(d);
    if (!hasFull || !hasCompressed) {
      p.textContent = 'One output: turn on the full-cache comparison (with a compressing policy) to see where they differ.';
    } else if (d < 0) {
      p.textContent = view.finished ? 'Identical: the compressed cache generated exactly what the full cache did.' : 'Identical so far.';
    } else {
      p.textContent = `First divergence at generated token ${d + 1} (marked).`;
    }
    if (d === this.#marked) return;
    for (const pane of this.#panes) {
      for (const s of pane.text.querySelectorAll('.diverged')) s.classList.remove('diverged');
      if (d >= 0) pane.text.querySelector(`[data-index="${d}"]`)?.classList.add('diverged');
    }
    // Mark again on a later update if a pane has not drawn that token yet.
    if (this.#panes.every((pane) => d < 0 || pane.rendered > d || pane.root.dataset['done'] === 'true')) this.#marked = d;
  }

  #grid(parent: HTMLElement, view: RunView, side: SideView, kind: 'pages' | 'importance'): Grid {
    const root = el('figure', `grid ${kind}`);
    root.dataset['role'] = side.role;
    const title = el('figcaption', '', side.label);
    const table = el('div', 'cells');
    table.style.setProperty('--kv-heads', String(view.kvHeads));
    table.append(el('span', 'corner', 'layer'));
    for (let h = 0; h < view.kvHeads; h++) table.append(el('span', 'col-head', `kv ${h}`));
    const cells: HTMLElement[] = [];
    for (let l = 0; l < view.layers; l++) {
      table.append(el('span', 'row-head', String(l)));
      for (let h = 0; h < view.kvHeads; h++) {
        const cell = el('div', 'cell');
        cell.dataset['layer'] = String(l);
        cell.dataset['head'] = String(h);
        if (kind === 'pages') {
          const pages = el('div', 'page-bar');
          pages.append(el('div', 'page-fill'));
          cell.append(pages, el('span', 'count'));
        } else {
          cell.append(el('span', 'count'));
        }
        table.append(cell);
        cells.push(cell);
      }
    }
    root.append(title, table);
    parent.append(root);
    return { root, cells, title };
  }

  #updatePages(grid: Grid, view: RunView, side: SideView): void {
    const full = fullBlocksPerHead(side.tokensSeen, view.blockSize);
    grid.title.textContent = `${side.label}: ${sum(side.blocksPerHead)} pages of ${full * view.layers * view.kvHeads} uncompressed`;
    grid.root.dataset['blocks'] = Array.from(side.blocksPerHead).join(',');
    grid.cells.forEach((cell, u) => {
      const blocks = side.blocksPerHead[u] ?? 0;
      const total = Math.max(full, blocks, 1);
      if (cell.dataset['blocks'] === String(blocks) && cell.dataset['total'] === String(total)) return;
      cell.dataset['blocks'] = String(blocks);
      cell.dataset['total'] = String(total);
      cell.style.setProperty('--used', String(blocks));
      cell.style.setProperty('--total', String(total));
      cell.style.setProperty('--share', (blocks / total).toFixed(3));
      const count = cell.querySelector('.count');
      if (count !== null) count.textContent = `${blocks}/${total}`;
      const kept = side.lengthsPerHead[u] ?? 0;
      cell.title = `layer ${cell.dataset['layer']}, kv-head ${cell.dataset['head']}: ${blocks} of ${total} pages (${formatBytes(blocks * view.bytesPerBlock)}); ${kept} tokens kept at the last step`;
    });
  }

  #updateImportance(grid: Grid, view: RunView, side: SideView): void {
    const summaries = side.importance;
    grid.root.dataset['ready'] = String(summaries !== null);
    if (summaries === null) {
      grid.title.textContent = `${side.label}: no compression yet`;
      return;
    }
    grid.title.textContent = `${side.label}: as of compression round ${view.sides.find((s) => s.role === 'compressed')?.compressions.length ?? 0}`;
    let max = 0;
    for (const h of summaries) max = Math.max(max, h.effectiveTokens);
    grid.cells.forEach((cell, u) => {
      const h = summaries[u];
      if (h === undefined) return;
      cell.style.setProperty('--share', max > 0 ? (h.effectiveTokens / max).toFixed(3) : '0');
      const count = cell.querySelector('.count');
      if (count !== null) count.textContent = h.effectiveTokens.toFixed(0);
      cell.dataset['effective'] = h.effectiveTokens.toFixed(2);
      cell.title = `layer ${h.layer}, kv-head ${h.kvHead}: attends to ~${h.effectiveTokens.toFixed(1)} of its ${h.length} cached tokens; the top 10% of them hold ${(100 * h.top10Share).toFixed(0)}% of its importance`;
    });
  }

  #updateGauge(view: RunView): void {
    const g = this.#roots.gauge;
    const full = view.sides.find((s) => s.role === 'full');
    const compressed = view.sides.find((s) => s.role === 'compressed');
    const reference = full ?? compressed;
    if (reference === undefined) return;
    const rows: { label: string; bytes: number; blocks: number; role: string; computed: boolean }[] = [];
    if (full !== undefined) {
      rows.push({ label: 'full cache', bytes: sideBytes(view, full), blocks: sum(full.blocksPerHead), role: 'full', computed: false });
    } else if (compressed !== undefined) {
      const bytes = fullCacheBytes(view, compressed);
      rows.push({ label: 'full cache (computed)', bytes, blocks: bytes / view.bytesPerBlock, role: 'full', computed: true });
    }
    if (compressed !== undefined) {
      rows.push({
        label: compressed.label,
        bytes: sideBytes(view, compressed),
        blocks: sum(compressed.blocksPerHead),
        role: 'compressed',
        computed: false,
      });
    }
    const max = Math.max(1, ...rows.map((r) => r.bytes));
    g.replaceChildren();
    for (const r of rows) {
      const row = el('div', `gauge-row ${r.role}`);
      row.dataset['role'] = r.role;
      row.dataset['bytes'] = String(r.bytes);
      row.dataset['blocks'] = String(r.blocks);
      row.dataset['computed'] = String(r.computed);
      const bar = el('div', 'bar');
      const fill = el('div', 'bar-fill');
      fill.style.width = `${((100 * r.bytes) / max).toFixed(2)}%`;
      bar.append(fill);
      row.append(el('span', 'gauge-label', r.label), bar, el('span', 'gauge-value', `${formatBytes(r.bytes)} · ${r.blocks} pages`));
      g.append(row);
    }
    const [a, b] = rows;
    if (a !== undefined && b !== undefined && b.bytes > 0) {
      const ratio = el(
        'p',
        'ratio',
        `${(a.bytes / b.bytes).toFixed(2)}× smaller: the policy holds ${((100 * b.bytes) / a.bytes).toFixed(0)}% of the full cache's KV bytes.`,
      );
      ratio.dataset['ratio'] = (a.bytes / b.bytes).toFixed(4);
      g.append(ratio);
    }
    g.append(
      el(
        'p',
        'muted small',
        `Engine pool: ${view.usedBlocks} of ${view.totalBlocks} pages in use (${formatBytes(view.usedBlocks * view.bytesPerBlock)} of ${formatBytes(view.totalBlocks * view.bytesPerBlock)}), ${view.kvDtype} K and V, ${view.blockSize} tokens a page.`,
      ),
    );
  }

  #updatePerf(view: RunView): void {
    const perSequence = view.decodeMs > 0 ? (view.decodeSteps / view.decodeMs) * 1000 : 0;
    const batch = view.decodeMs > 0 ? (view.decodeRows / view.decodeMs) * 1000 : 0;
    const share = view.elapsedMs > 0 ? (100 * view.compressionMs) / view.elapsedMs : 0;
    const items: [string, string, string][] = [
      [
        'decode',
        perSequence > 0 ? `${perSequence.toFixed(1)} tokens/s per sequence · ${batch.toFixed(1)} tokens/s in all` : '–',
        perSequence.toFixed(3),
      ],
      ['prefill', `${view.promptTokens} prompt tokens × ${view.sides.length} · ${formatMs(view.prefillMs)}`, view.prefillMs.toFixed(1)],
      ['first token', view.firstTokenMs === null ? '–' : formatMs(view.firstTokenMs), String(view.firstTokenMs ?? '')],
      [
        'compression',
        `${view.compressionRounds} rounds · ${formatMs(view.compressionMs)} planning and compacting (${share.toFixed(1)}% of the run)`,
        view.compressionMs.toFixed(3),
      ],
      ['run', `${formatMs(view.elapsedMs)} on ${view.backend}${view.finished ? '' : '…'}`, view.elapsedMs.toFixed(0)],
    ];
    const dl = this.#roots.perf;
    dl.replaceChildren();
    for (const [term, value, raw] of items) {
      const dt = el('dt', '', term);
      const dd = el('dd', '', value);
      dd.dataset['key'] = term;
      dd.dataset['value'] = raw;
      dl.append(dt, dd);
    }
  }

  #updateRounds(view: RunView): void {
    const compressed = view.sides.find((s) => s.role === 'compressed');
    if (compressed === undefined) return;
    for (; this.#rounds < compressed.compressions.length; this.#rounds++) {
      const c = compressed.compressions[this.#rounds];
      if (c === undefined) break;
      const tr = el('tr');
      const when = c.atToken === 0 ? 'after prefill' : `token ${c.atToken}`;
      for (const text of [
        when,
        c.reason,
        `${c.blocksBefore} → ${c.blocksAfter}`,
        `${c.targetBlocks}`,
        `${c.freedBlocks}`,
        formatMs(c.ms),
      ]) {
        tr.append(el('td', '', text));
      }
      this.#roots.rounds.append(tr);
    }
  }
}
