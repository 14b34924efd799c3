/** Bytes for people: 1536 -> "1.50 KiB" (binary units). */
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

/**
 * Index of the first generated token where two outputs differ, or -1 while they agree.
 * When both are finished and one is a prefix of the other, the divergence is where the
 * shorter one stopped (while they are still streaming, a shorter prefix is not a difference).
 */
export function firstDivergence(a: readonly number[], b: readonly number[], bothFinished: boolean): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return bothFinished && a.length !== b.length ? n : -1;
}
