import { InvalidArgumentError } from './errors.ts';

/** Throws `InvalidArgumentError` unless `value` is an integer in [min, max]. */
export function assertInteger(name: string, value: number, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in [${min}, ${max}]`;
    throw new InvalidArgumentError(`${name} must be an integer ${range}, got ${String(value)}.`);
  }
}

/** Throws `InvalidArgumentError` unless `value` is a finite number in [min, max]. */
export function assertFinite(name: string, value: number, min = -Infinity, max = Infinity): void {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw new InvalidArgumentError(`${name} must be a finite number in [${min}, ${max}], got ${String(value)}.`);
  }
}
