// An example of a policy registered by the demo itself, through the same registry as the
// built-ins: it appears in the policy picker like them. Copy this file to try your own
// (apps/demo/README.md, "Your own policy").
import { registerPolicy } from '@kvcompress/eviction';

/** Registered name of the example policy. */
export const CUSTOM_POLICY = 'first-layer-full';

registerPolicy(
  {
    name: CUSTOM_POLICY,
    description: 'Custom (src/custom-policy.ts): layer 0 keeps every token; the other layers give up their cheapest pages.',
    plan(ctx) {
      const deeper = Array.from({ length: ctx.units - ctx.kvHeads }, (_, i) => ctx.kvHeads + i);
      ctx.freeCheapestBlocks(Math.max(0, ctx.plannedBlocks() - ctx.targetBlocks), { units: deeper });
    },
  },
  // Vite's hot reload runs this module again: replace the earlier registration.
  { replace: true },
);
