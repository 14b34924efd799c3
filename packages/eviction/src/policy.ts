import { DuplicatePolicyError, InvalidArgumentError, UnknownPolicyError } from '@kvcompress/core';
import type { Scorer } from '@kvcompress/metrics';
import type { CheapestBlocksPlan } from './cheapest-blocks.ts';
import type { PolicyContext } from './context.ts';

/**
 * An eviction policy: given one sequence's cache (metrics, positions, per-head lengths) and
 * its budget, it marks the slots to evict through the context's verbs. The allocator then
 * compacts, so what a policy evicts is memory really freed.
 *
 * @example A custom policy in a few lines:
 * ```ts
 * registerPolicy({
 *   name: 'half-and-half',
 *   description: 'Even layers keep by KV-Compress metric, odd layers keep the most recent.',
 *   plan(ctx) {
 *     for (let u = 0; u < ctx.units; u++) {
 *       const excess = ctx.length(u) - ctx.keepPerHead;
 *       if (excess <= 0) continue;
 *       if (Math.floor(u / ctx.kvHeads) % 2 === 0) ctx.evictLowest(u, excess);
 *       else for (let i = 0, n = 0; n < excess; i++) if (!ctx.isProtected(u, i)) { ctx.evict(u, i); n++; }
 *     }
 *   },
 * });
 * ```
 */
export interface EvictionPolicy {
  /** Registry key: letters, digits, '.', '_' and '-'. */
  readonly name: string;
  readonly description?: string;
  /**
   * The importance metric the engine records for this policy. Called once per engine.
   * Default: the KV-Compress metric (squared attention, summed over the query group).
   */
  createScorer?(): Scorer;
  /** Marks the slots to evict. Must not throw for a valid context. */
  plan(ctx: PolicyContext): void;
  /**
   * Set when `plan(ctx)` is exactly `planCheapestBlocks(cheapestBlocks, ctx)` (KV-Compress's
   * block rule): a backend that keeps the metrics on the device may then make the same
   * decision there instead of downloading the metrics (see `Backend.selectEvictions`).
   */
  readonly cheapestBlocks?: CheapestBlocksPlan;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Named policies. Built-ins are registered through the same `register` a user calls. */
export class PolicyRegistry {
  readonly #policies = new Map<string, EvictionPolicy>();

  register(policy: EvictionPolicy, options: { replace?: boolean } = {}): void {
    if (policy === null || typeof policy !== 'object' || typeof policy.plan !== 'function') {
      throw new InvalidArgumentError('A policy is an object with a name and a plan(ctx) function.');
    }
    if (typeof policy.name !== 'string' || !NAME.test(policy.name)) {
      throw new InvalidArgumentError(`Policy name ${JSON.stringify(policy.name)} must match ${NAME}.`);
    }
    if (this.#policies.has(policy.name) && options.replace !== true) throw new DuplicatePolicyError(policy.name);
    this.#policies.set(policy.name, policy);
  }

  unregister(name: string): boolean {
    return this.#policies.delete(name);
  }

  has(name: string): boolean {
    return this.#policies.has(name);
  }

  get(name: string): EvictionPolicy {
    const policy = this.#policies.get(name);
    if (policy === undefined) throw new UnknownPolicyError(name, this.names());
    return policy;
  }

  names(): string[] {
    return [...this.#policies.keys()];
  }

  list(): EvictionPolicy[] {
    return [...this.#policies.values()];
  }
}
