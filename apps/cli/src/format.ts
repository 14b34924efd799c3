/** 1536 -> "1.50 KiB". */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(2)} ${units[u]}`;
}

/** A layers × kv-heads table of block counts, one row per layer. */
export function formatHeadGrid(blocks: Int32Array, layers: number, kvHeads: number): string {
  const width = Math.max(2, ...Array.from(blocks, (b) => String(b).length));
  const lines = [`layer  ${Array.from({ length: kvHeads }, (_, h) => `h${h}`.padStart(width)).join(' ')}`];
  for (let l = 0; l < layers; l++) {
    const cells = Array.from({ length: kvHeads }, (_, h) => String(blocks[l * kvHeads + h] ?? 0).padStart(width));
    lines.push(`${String(l).padStart(5)}  ${cells.join(' ')}`);
  }
  return lines.join('\n');
}

/** Index of the first differing element, or -1 when one is a prefix of the other and both are equally long. */
export function firstDifference(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}
