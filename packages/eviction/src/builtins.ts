import { createKvCompressPolicy, createKvCompressTrailingPolicy } from './policies/kv-compress.ts';
import { createAdaKvPolicy, createPyramidKvPolicy } from './policies/layered.ts';
import { createH2oPolicy, createRandomPolicy, createSnapKvPolicy, createStreamingLlmPolicy, nonePolicy } from './policies/uniform.ts';
import { PolicyRegistry } from './policy.ts';

/** Registers the built-in policies with their default options, exactly as a user registers one. */
export function registerBuiltinPolicies(registry: PolicyRegistry): PolicyRegistry {
  registry.register(createKvCompressPolicy());
  registry.register(createKvCompressTrailingPolicy());
  registry.register(createSnapKvPolicy());
  registry.register(createPyramidKvPolicy());
  registry.register(createAdaKvPolicy());
  registry.register(createH2oPolicy());
  registry.register(createStreamingLlmPolicy());
  registry.register(createRandomPolicy());
  registry.register(nonePolicy);
  return registry;
}

/** The process-wide registry, with the built-ins in it. */
export const policies: PolicyRegistry = registerBuiltinPolicies(new PolicyRegistry());

/** Adds a policy to the process-wide registry. */
export function registerPolicy(...args: Parameters<PolicyRegistry['register']>): void {
  policies.register(...args);
}

/** Looks a policy up in the process-wide registry; throws `UnknownPolicyError` with the known names. */
export function getPolicy(name: string) {
  return policies.get(name);
}
