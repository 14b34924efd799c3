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
