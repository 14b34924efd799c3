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

/** Milliseconds as "850 ms" or "12.3 s". */
export function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return '–';
  return ms < 1000 ? `${ms.toFixed(ms < 10 ? 1 : 0)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/**
 * Index of the first generated token where two outputs differ, or -1 while they agree.
 * When both are finished and one is a prefix of the other, the divergence is where the
 * shorter one stopped.
 */
export function firstDivergence(a: readonly number[], b: readonly number[], bothFinished: boolean): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return bothFinished && a.length !== b.length ? n : -1;
}

/** Sum of an Int32Array. */
export function sum(values: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i] as number;
  return s;
}
